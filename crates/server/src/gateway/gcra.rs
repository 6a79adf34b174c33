//! GCRA's arithmetic, shared by the buckets that keep it here (a key's token budget on a node
//! alone) and in the cluster's KV store ([`crate::cluster::limits`]): a bucket of `capacity`
//! cells refilled at one cell every `per_cell_us` microseconds is one number, the theoretical
//! arrival time `tat`; it is full when `tat` is in the past, and has room for `n` cells when
//! `tat + n * per_cell_us` is no more than one full bucket ahead of now.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gcra {
    pub capacity: f64,
    pub per_cell_us: f64,
}

impl Gcra {
    /// A bucket of `capacity` cells refilled at `per_second` cells a second.
    pub fn new(capacity: f64, per_second: f64) -> Self {
        Self {
            capacity,
            per_cell_us: 1e6 / per_second,
        }
    }

    /// Takes up to `want` cells, but at least `need`: the new `tat` and the cells taken, or how
    /// long until `need` cells are free.
    ///
    /// # Errors
    /// The wait, when fewer than `need` cells are free.
    pub fn take(&self, tat_us: f64, now_us: f64, need: f64, want: f64) -> Result<(f64, f64), Duration> {
        let base = tat_us.max(now_us);
        let full_us = self.capacity * self.per_cell_us;
        let room = ((full_us - (base - now_us)) / self.per_cell_us).floor();
        if room < need {
            let wait_us = base + need * self.per_cell_us - full_us - now_us;
            return Err(Duration::from_micros(wait_us.max(1.0) as u64));
        }
        let cells = want.max(need).min(room);
        Ok((base + cells * self.per_cell_us, cells))
    }

    /// `tat` after `cells` are spent whatever is left (a charge already incurred).
    pub fn force(&self, tat_us: f64, now_us: f64, cells: f64) -> f64 {
        tat_us.max(now_us) + cells * self.per_cell_us
    }

    /// `tat` after `cells` taken earlier are given back unused.
    pub fn give_back(&self, tat_us: f64, now_us: f64, cells: f64) -> f64 {
        (tat_us - cells * self.per_cell_us).max(now_us)
    }

    /// Cells free now.
    pub fn free(&self, tat_us: f64, now_us: f64) -> f64 {
        let full_us = self.capacity * self.per_cell_us;
        ((full_us - (tat_us.max(now_us) - now_us)) / self.per_cell_us).max(0.0)
    }
}

/// Microseconds since the epoch, the time `tat` is counted in.
pub fn now_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_capacity_then_the_rate() {
        let gcra = Gcra::new(10.0, 2.0);
        let now = 1e12;
        let (tat, cells) = gcra.take(0.0, now, 1.0, 100.0).unwrap();
        assert_eq!(cells, 10.0, "a full bucket, and no more");
        assert_eq!(gcra.take(tat, now, 1.0, 1.0), Err(Duration::from_micros(500_000)));
        // Half a second later, one cell has come back.
        let (tat, cells) = gcra.take(tat, now + 500_000.0, 1.0, 5.0).unwrap();
        assert_eq!(cells, 1.0);
        assert_eq!(gcra.free(tat, now + 500_000.0), 0.0);
        // Given back, cells are free again, but never more than a full bucket.
        assert_eq!(
            gcra.free(gcra.give_back(tat, now + 500_000.0, 4.0), now + 500_000.0),
            4.0
        );
        assert_eq!(gcra.free(gcra.give_back(tat, now, 1000.0), now), 10.0);
        // A forced charge goes into debt.
        let debt = gcra.force(0.0, now, 15.0);
        assert_eq!(gcra.free(debt, now), 0.0);
        assert_eq!(
            gcra.take(debt, now, 1.0, 1.0),
            Err(Duration::from_micros(3_000_000))
        );
    }
}
