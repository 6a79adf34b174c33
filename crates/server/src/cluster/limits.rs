//! Cluster-wide rate limits: each limited key's bucket (requests per second, tokens per minute)
//! lives once in the KV bucket `orchestrator_limits`, as GCRA's one number, the theoretical
//! arrival time (`tat`): a bucket of `capacity` cells refilled at one cell per `per_cell`, full
//! when `tat` is in the past.
//!
//! A node does not ask the broker per request. It leases a slice of cells at once (a
//! compare-and-set that moves `tat` on by the slice), hands them out locally, and leases the next
//! slice in the background when half is gone; so the common request costs a lock, not a round
//! trip. Near the limit slices shrink to what is left, so what the nodes lease together never
//! exceeds the bucket: across the cluster a key gets at most `capacity` at once and the refill
//! rate after that, the same as one node alone. A leased cell not used within one refill period
//! is dropped, so a node cannot save cells up for a burst. Tokens are charged after the answer:
//! a charge beyond what the node holds moves `tat` on directly (the debt is the cluster's).
//!
//! Without NATS the buckets fail open to each node's own limiter (the key gets the limit on
//! every node): serving on matters more than the shared count while the broker is away.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::link::Link;
use super::store::BucketSpec;

/// One value per limited key and kind; a value untouched for an hour is a full bucket anyway.
pub const LIMITS: BucketSpec = BucketSpec {
    name: "orchestrator_limits",
    layout: "tokio-prompt-orchestrator rate-limit buckets, layout 1",
    history: 1,
    max_age: Duration::from_secs(3600),
};

/// Compare-and-set attempts before a lease gives up (and the request is let through).
const CAS_ATTEMPTS: usize = 16;

/// The stored state of one bucket.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    /// Theoretical arrival time, microseconds since the epoch.
    tat_us: u64,
}

/// One key's limit of one kind, shared by every node.
pub struct SharedBucket {
    /// The KV key.
    key: String,
    capacity: f64,
    per_cell_us: f64,
    /// Cells asked for per lease.
    slice: f64,
    store: kv::Store,
    link: Arc<Link>,
    local: Mutex<Local>,
}

/// What this node holds of the bucket.
#[derive(Default)]
struct Local {
    /// Cells leased and not yet handed out.
    permits: f64,
    /// When they were leased: unused past one refill period, they are dropped.
    leased_at: Option<Instant>,
    /// The bucket was empty at the last lease: refuse locally until then.
    refused_until: Option<Instant>,
    /// A lease is under way in the background.
    refilling: bool,
}

/// Why a lease gave no cells.
enum LeaseError {
    /// The bucket has too little until this long from now.
    Empty(Duration),
    /// The broker could not be asked.
    Broker,
}

impl SharedBucket {
    /// A bucket of `capacity` cells refilled at `per_second` cells a second, under `key`.
    pub fn new(store: kv::Store, link: Arc<Link>, key: String, capacity: f64, per_second: f64) -> Arc<Self> {
        // A tenth of the bucket per lease: few round trips, little held back by any one node.
        let slice = (capacity / 10.0).max(1.0);
        Arc::new(Self {
            key,
            capacity,
            per_cell_us: 1e6 / per_second,
            slice,
            store,
            link,
            local: Mutex::new(Local::default()),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long leased cells stay usable: the time the bucket takes to refill one slice.
    fn slice_life(&self) -> Duration {
        Duration::from_micros((self.slice * self.per_cell_us) as u64).max(Duration::from_millis(100))
    }

    /// Takes `cells` (0: only checks that the bucket is not in debt), or says how long to wait.
    /// Asks the broker only when this node holds too few cells.
    ///
    /// # Errors
    /// The wait, when the cluster's bucket is empty.
    pub async fn take(self: &Arc<Self>, cells: f64) -> Result<(), Duration> {
        if !self.link.connected() {
            return Ok(());
        }
        let need = cells.max(f64::MIN_POSITIVE);
        let now = Instant::now();
        {
            let mut local = self.local();
            if local
                .leased_at
                .is_some_and(|at| now.duration_since(at) > self.slice_life())
            {
                local.permits = local.permits.min(0.0);
                local.leased_at = None;
            }
            if local.permits >= need {
                local.permits -= cells;
                self.refill_if_low(&mut local);
                return Ok(());
            }
            if let Some(until) = local.refused_until.filter(|until| *until > now) {
                return Err(until - now);
            }
        }
        // Out of cells: this request waits for a lease.
        match self.lease(self.slice.max(need)).await {
            Ok(granted) => {
                let mut local = self.local();
                local.permits += granted;
                local.leased_at = Some(Instant::now());
                local.refused_until = None;
                if local.permits >= need {
                    local.permits -= cells;
                    Ok(())
                } else {
                    Err(Duration::from_micros(self.per_cell_us as u64))
                }
            }
            Err(LeaseError::Empty(wait)) => {
                self.local().refused_until = Some(Instant::now() + wait);
                Err(wait)
            }
            Err(LeaseError::Broker) => Ok(()),
        }
    }

    /// Charges `cells` used beyond what was taken (tokens, known after the answer).
    pub fn charge(self: &Arc<Self>, cells: f64) {
        if !self.link.connected() || cells <= 0.0 {
            return;
        }
        let debt = {
            let mut local = self.local();
            local.permits -= cells;
            if local.permits >= 0.0 {
                self.refill_if_low(&mut local);
                return;
            }
            let debt = -local.permits;
            local.permits = 0.0;
            debt
        };
        let bucket = self.clone();
        tokio::spawn(async move { bucket.force(debt).await });
    }

    /// Starts a lease in the background when half the node's cells are gone.
    fn refill_if_low(self: &Arc<Self>, local: &mut Local) {
        if local.refilling || local.permits >= self.slice / 2.0 {
            return;
        }
        local.refilling = true;
        let bucket = self.clone();
        tokio::spawn(async move {
            let leased = bucket.lease(bucket.slice).await;
            let mut local = bucket.local();
            local.refilling = false;
            match leased {
                Ok(granted) => {
                    local.permits += granted;
                    local.leased_at = Some(Instant::now());
                }
                Err(LeaseError::Empty(wait)) => local.refused_until = Some(Instant::now() + wait),
                Err(LeaseError::Broker) => {}
            }
        });
    }

    /// Leases up to `want` cells (fewer when fewer are left, none when less than one is).
    async fn lease(&self, want: f64) -> Result<f64, LeaseError> {
        let full_us = self.capacity * self.per_cell_us;
        self.update(|tat_us, now_us| {
            let base = tat_us.max(now_us);
            let room = ((full_us - (base - now_us)) / self.per_cell_us).floor();
            let cells = want.min(room);
            if cells < 1.0 {
                let wait_us = base + self.per_cell_us - full_us - now_us;
                return Err(LeaseError::Empty(Duration::from_micros(wait_us.max(1.0) as u64)));
            }
            Ok((base + cells * self.per_cell_us, cells))
        })
        .await
    }

    /// Moves `tat` on by `cells` whatever is left: a charge already incurred.
    async fn force(&self, cells: f64) {
        let _ = self
            .update(|tat_us, now_us| Ok((tat_us.max(now_us) + cells * self.per_cell_us, cells)))
            .await;
    }

    /// Reads `tat`, computes the new one with `step` (from `tat` and now, in microseconds), and
    /// writes it if nobody wrote in between; otherwise reads again.
    async fn update(
        &self,
        step: impl Fn(f64, f64) -> Result<(f64, f64), LeaseError>,
    ) -> Result<f64, LeaseError> {
        for _ in 0..CAS_ATTEMPTS {
            let entry = self
                .store
                .entry(&self.key)
                .await
                .map_err(|_| LeaseError::Broker)?;
            let (tat_us, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<State>(&e.value).map_or(0.0, |s| s.tat_us as f64),
                    e.revision,
                ),
                Some(e) => (0.0, e.revision),
                None => (0.0, 0),
            };
            let now_us = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_micros() as f64);
            let (new_tat, result) = step(tat_us, now_us)?;
            let value = serde_json::to_vec(&State {
                tat_us: new_tat as u64,
            })
            .unwrap_or_default();
            match self.store.update(&self.key, value.into(), revision).await {
                Ok(_) => return Ok(result),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(_) => return Err(LeaseError::Broker),
            }
        }
        Err(LeaseError::Broker)
    }
}

/// `id` as a KV key's part: kept when it is letters, digits, `-` and `_`, else hex-encoded.
pub fn key_part(id: &str) -> String {
    if !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        id.to_owned()
    } else {
        format!("x{}", hex::encode(id))
    }
}
