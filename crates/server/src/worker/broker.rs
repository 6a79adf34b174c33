//! A worker's side of the cluster's broker: its membership record, the cancellations it hears,
//! the partitions it owns, and the pull loop that takes jobs into free slots.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Shared, cancels, ownership, pull};
use crate::cluster::Cluster;
use crate::cluster::membership::{self, NodeRecord, Role};

/// The tasks that take jobs from the broker.
pub struct Broker {
    stop_pulling: CancellationToken,
    pulling: JoinHandle<()>,
    /// Run until the worker leaves: it stays a member (and hears cancellations) while it drains.
    staying: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Joins in as a member serving at `address`, and starts pulling; the member tasks run until
    /// `leave`.
    pub async fn start(
        shared: &Arc<Shared>,
        cluster: &Arc<Cluster>,
        address: String,
        started_at_ms: u64,
        starvation_bound: u32,
        leave: &CancellationToken,
    ) -> Self {
        let record = {
            let shared = shared.clone();
            let cluster = cluster.clone();
            move || worker_record(&shared, &cluster, &address, started_at_ms)
        };
        let heartbeat = tokio::spawn(membership::heartbeat(cluster.clone(), record, leave.clone()));
        let cancels = tokio::spawn(cancels::hear_cancels(
            shared.clone(),
            cluster.clone(),
            leave.clone(),
        ));
        let (owned_tx, owned_rx) = watch::channel(ownership::Owned::default());
        // The first owners are known before the first pull, so a joining worker does not take its
        // neighbours' jobs while it learns who they are.
        if let Ok((members, _)) = cluster.members().live().await {
            owned_tx.send_replace(ownership::owned(&members, &shared.models, &cluster.node, false));
        }
        let owners = tokio::spawn(ownership::follow(
            cluster.clone(),
            shared.models.clone(),
            shared.draining.subscribe(),
            owned_tx,
            leave.clone(),
        ));
        let stop_pulling = CancellationToken::new();
        let puller = pull::Puller::new(shared.clone(), cluster.clone(), owned_rx, starvation_bound);
        let pulling = tokio::spawn(puller.run(stop_pulling.clone()));
        Self {
            stop_pulling,
            pulling,
            staying: vec![heartbeat, cancels, owners],
        }
    }

    /// Takes no more jobs; returns once the pull loop has stopped.
    pub async fn stop_pulling(&mut self) {
        self.stop_pulling.cancel();
        let _ = (&mut self.pulling).await;
    }

    /// Waits for the member tasks, which end at the worker's `leave`.
    pub async fn left(self) {
        for task in self.staying {
            let _ = task.await;
        }
    }
}

fn worker_record(shared: &Shared, cluster: &Cluster, address: &str, started_at_ms: u64) -> NodeRecord {
    let slots = shared.config.slots.get();
    let running = shared.running.load(Ordering::Relaxed);
    NodeRecord {
        name: cluster.node.clone(),
        instance: cluster.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        address: address.to_owned(),
        started_at_ms,
        models: shared.models.clone(),
        generation: 0,
        config_revision: None,
        config_error: None,
        in_flight: running,
        queued: 0,
        load: running as f64 / slots as f64,
        down_backends: Vec::new(),
        role: Role::Worker,
        slots,
        draining: *shared.draining.borrow(),
    }
}
