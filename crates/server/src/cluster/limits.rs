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
//! rate after that, the same as one node alone. A node leases again only when half its slice is
//! gone, so it holds at most one and a half slices, and cells it leaves unused for two heartbeats
//! go back to the cluster: it neither holds back what others need nor saves cells up for a later
//! burst (at most a slice, handed out up to two heartbeats after it was leased). Tokens are charged after
//! the answer: a charge beyond what the node holds moves `tat` on directly (the debt is the
//! cluster's); a reservation larger than the answer gives the rest back.
//!
//! Without NATS the buckets fail open to each node's own limiter (the key gets the limit on
//! every node): serving on matters more than the shared count while the broker is away.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use metrics::counter;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::link::Link;
use super::store::{BucketSpec, decode};
use crate::gateway::gcra::{Gcra, now_us};

/// One value per limited key and kind, kept as long as the bucket: a token budget's state must
/// outlive its period (a day, say) however long the key stays idle.
pub const LIMITS: BucketSpec = BucketSpec::new(
    "orchestrator_limits",
    "tokio-prompt-orchestrator rate-limit buckets, layout 1",
    Duration::ZERO,
);

/// Leases of cells from the cluster's buckets, by `path` (`request`: a request waited for it;
/// `background`) and `outcome` (`granted`, `empty`, `unavailable`) (counter).
pub const CLUSTER_LEASES: &str = "orchestrator_cluster_leases_total";

/// Compare-and-set attempts before a lease gives up (and the request is let through).
const CAS_ATTEMPTS: usize = 16;
/// The longest a request waits for a lease before it goes on uncounted (the lease carries on and
/// credits the node): a slow or partitioned broker must not hold requests up.
const LEASE_WAIT: Duration = Duration::from_millis(500);
/// Leases a request may wait for in a row, when others on this node take the cells first.
const LEASE_TRIES: usize = 3;

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
    gcra: Gcra,
    /// Cells asked for per lease.
    slice: f64,
    store: kv::Store,
    link: Arc<Link>,
    local: Mutex<Local>,
    /// One lease at a time: requests that find the node out of cells wait for the lease under
    /// way rather than each leasing a slice.
    leasing: tokio::sync::Mutex<()>,
}

/// What this node holds of the bucket.
#[derive(Default)]
struct Local {
    /// Cells leased and not yet handed out.
    permits: f64,
    /// When a cell was last handed out or given back: idle cells go back to the cluster.
    used_at: Option<Instant>,
    /// The bucket had fewer than this many cells at the last lease: requests needing as many
    /// are refused locally until then.
    refused: Option<(Instant, f64)>,
    /// A lease is under way in the background.
    refilling: bool,
}

/// Whether a take was counted in the cluster's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// From cells this node leased.
    Counted,
    /// Let through uncounted: NATS is away or slow (the node's own limits still apply).
    Uncounted,
}

/// Why a lease gave no cells.
enum LeaseError {
    /// The bucket has too little until this long from now.
    Empty(Duration),
    /// The broker could not be asked.
    Broker,
}

/// The cluster's buckets in use on this node, so that idle cells go back (see [`return_idle`]).
#[derive(Default)]
pub struct Buckets(Mutex<Vec<Weak<SharedBucket>>>);

impl SharedBucket {
    /// A bucket of `capacity` cells refilled at `per_second` cells a second, under `key`,
    /// registered in `buckets`.
    pub fn new(cluster: &Cluster, key: String, capacity: f64, per_second: f64) -> Arc<Self> {
        // A tenth of the bucket per lease: few round trips, little held back by any one node.
        let slice = (capacity / 10.0).max(1.0);
        let bucket = Arc::new(Self {
            key,
            gcra: Gcra::new(capacity, per_second),
            slice,
            store: cluster.limits.clone(),
            link: cluster.link.clone(),
            local: Mutex::new(Local::default()),
            leasing: tokio::sync::Mutex::new(()),
        });
        let mut buckets = cluster.buckets.0.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.retain(|b| b.strong_count() > 0);
        buckets.push(Arc::downgrade(&bucket));
        bucket
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `cells` (0: only checks that the bucket is not in debt), or says how long to wait.
    /// Asks the broker only when this node holds too few cells, and then in a task of its own,
    /// so that cells leased for a request that goes away meanwhile are not lost; a request waits
    /// for it at most [`LEASE_WAIT`], then goes on uncounted.
    ///
    /// # Errors
    /// The wait, when the cluster's bucket cannot cover `cells`.
    pub async fn take(self: &Arc<Self>, cells: f64) -> Result<Taken, Duration> {
        if !self.link.connected() {
            return Ok(Taken::Uncounted);
        }
        let need = cells.max(f64::MIN_POSITIVE);
        for _ in 0..LEASE_TRIES {
            if let Some(answer) = self.take_held(cells, need) {
                return answer.map(|()| Taken::Counted);
            }
            let bucket = self.clone();
            let lease = tokio::spawn(async move { bucket.fill(need, "request").await });
            match tokio::time::timeout(LEASE_WAIT, lease).await {
                Ok(Ok(Err(LeaseError::Empty(wait)))) => {
                    return match self.take_held(cells, need) {
                        Some(answer) => answer.map(|()| Taken::Counted),
                        None => Err(wait),
                    };
                }
                Ok(Ok(Ok(()))) => {}
                // The broker failed, or is slow: this request is not held up for it.
                Ok(Ok(Err(LeaseError::Broker)) | Err(_)) | Err(_) => return Ok(Taken::Uncounted),
            }
        }
        // Others on this node took each lease's cells first: as busy as this, the bucket is
        // about empty.
        Err(Duration::from_micros(self.gcra.per_cell_us.max(1.0) as u64))
    }

    /// Takes `cells` from what this node holds, or refuses while the cluster's bucket is known
    /// to be too low for `need`; `None` when a lease is needed.
    fn take_held(self: &Arc<Self>, cells: f64, need: f64) -> Option<Result<(), Duration>> {
        let now = Instant::now();
        let mut local = self.local();
        if local.permits >= need {
            local.permits -= cells;
            local.used_at = Some(now);
            self.refill_if_low(&mut local);
            return Some(Ok(()));
        }
        match local.refused {
            Some((until, refused)) if until > now && need >= refused => Some(Err(until - now)),
            _ => None,
        }
    }

    /// One lease at a time: leases enough for `need` (a slice, or more when `need` is larger)
    /// unless the node already holds it, and credits the node.
    async fn fill(&self, need: f64, path: &'static str) -> Result<(), LeaseError> {
        let _one_lease = self.leasing.lock().await;
        // The lease before this one may have answered already: enough cells, or none to have.
        let held = {
            let local = self.local();
            match local.refused {
                Some((until, refused)) if need >= refused && until > Instant::now() => {
                    return Err(LeaseError::Empty(until - Instant::now()));
                }
                _ => local.permits.max(0.0),
            }
        };
        if held >= need {
            return Ok(());
        }
        match self
            .lease(need.ceil() - held.floor(), self.slice.max(need), path)
            .await
        {
            Ok(granted) => {
                let mut local = self.local();
                local.permits += granted;
                local.used_at = Some(Instant::now());
                local.refused = None;
                Ok(())
            }
            Err(LeaseError::Empty(wait)) => {
                let mut local = self.local();
                // The smallest need refused is what later requests are compared with.
                let refused = local.refused.map_or(need, |(_, r)| r.min(need));
                local.refused = Some((Instant::now() + wait, refused));
                Err(LeaseError::Empty(wait))
            }
            Err(e) => Err(e),
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
        tokio::spawn(async move {
            let gcra = bucket.gcra;
            let _ = bucket
                .update(|tat, now| Ok((gcra.force(tat, now, debt), debt)))
                .await;
        });
    }

    /// Gives back `cells` taken and not used (a reservation larger than the answer): this node
    /// hands them out again, or returns them to the cluster when it stays idle.
    pub fn give_back(&self, cells: f64) {
        if cells > 0.0 {
            let mut local = self.local();
            local.permits += cells;
            local.used_at = Some(Instant::now());
        }
    }

    /// Returns the cells this node has not used for `idle` to the cluster, so that a node that
    /// stopped asking does not hold back what another needs.
    async fn return_idle(&self, idle: Duration) {
        let cells = {
            let mut local = self.local();
            if local.permits < 1.0 || local.used_at.is_some_and(|at| at.elapsed() < idle) || local.refilling {
                return;
            }
            let cells = local.permits.floor();
            local.permits -= cells;
            cells
        };
        let gcra = self.gcra;
        if self
            .update(|tat, now| Ok((gcra.give_back(tat, now, cells), cells)))
            .await
            .is_err()
        {
            // Not returned: keep them here rather than lose them.
            self.local().permits += cells;
        }
    }

    /// Starts a lease in the background when half the node's cells are gone.
    fn refill_if_low(self: &Arc<Self>, local: &mut Local) {
        if local.refilling || local.permits >= self.slice / 2.0 {
            return;
        }
        local.refilling = true;
        let bucket = self.clone();
        tokio::spawn(async move {
            let _ = bucket.fill(bucket.slice / 2.0, "background").await;
            bucket.local().refilling = false;
        });
    }

    /// Leases up to `want` cells, at least `need` (fewer are refused with the wait). `path` says
    /// whether a request waits for it (`request`) or not (`background`), for the metric.
    async fn lease(&self, need: f64, want: f64, path: &'static str) -> Result<f64, LeaseError> {
        let gcra = self.gcra;
        let leased = self
            .update(|tat, now| {
                gcra.take(tat, now, need.max(1.0), want)
                    .map_err(LeaseError::Empty)
            })
            .await;
        let outcome = match &leased {
            Ok(_) => "granted",
            Err(LeaseError::Empty(_)) => "empty",
            Err(LeaseError::Broker) => "unavailable",
        };
        counter!(CLUSTER_LEASES, "path" => path, "outcome" => outcome).increment(1);
        leased
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
                Some(e) if e.operation == kv::Operation::Put => {
                    // A malformed value is reported and taken as a full bucket; this write
                    // replaces it.
                    let tat = decode::<State>(LIMITS.name, &self.key, &e.value)
                        .map_err(
                            |problem| tracing::error!(%problem, "A shared rate-limit value is malformed."),
                        )
                        .map_or(0.0, |s| s.tat_us as f64);
                    (tat, e.revision)
                }
                Some(e) => (0.0, e.revision),
                None => (0.0, 0),
            };
            let (new_tat, result) = step(tat_us, now_us())?;
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

/// Every heartbeat until `stop`, returns to the cluster what this node's buckets have held
/// unused for two heartbeats.
pub async fn return_idle(cluster: Arc<Cluster>, stop: CancellationToken) {
    let beat = Duration::from_millis(cluster.config.heartbeat_ms);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(beat) => {}
        }
        let buckets: Vec<Arc<SharedBucket>> = cluster
            .buckets
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for bucket in buckets {
            bucket.return_idle(beat * 2).await;
        }
    }
}

/// `id` as a KV key's part: kept when it is letters, digits, `-` and `_`, else hex-encoded
/// after a `=`, which no kept name contains, so two ids never share a part.
pub fn key_part(id: &str) -> String {
    if !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        id.to_owned()
    } else {
        format!("={}", hex::encode(id))
    }
}
