//! Backend verdicts, shared: each node's membership record lists the backends it finds down
//! (failing their health checks, or their breaker open), and every node passes over a backend
//! that another live node lists, while another replica can take the call. The nodes then agree on
//! the healthy set, so a session's requests reach the same replica whichever node they arrive at
//! (rendezvous hashing over the same set gives the same answer).
//!
//! One node's view never takes a model out of service: a backend down elsewhere is still tried
//! when no other replica can take a call. Without NATS each node goes by its own view.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::gateway::Gateway;

/// 1 while another node of the cluster finds the backend down (gauge, by `backend`).
pub const BACKEND_DOWN_ELSEWHERE: &str = "orchestrator_backend_down_elsewhere";

/// Every heartbeat until `stop`, marks the running config's backends that other live nodes find
/// down.
pub async fn follow(cluster: Arc<Cluster>, gateway: Arc<Gateway>, stop: CancellationToken) {
    let beat = Duration::from_millis(cluster.config.heartbeat_ms);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(beat) => {}
        }
        let members = if cluster.link.connected() {
            let members = cluster.members();
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                read = members.live() => read.ok(),
            }
        } else {
            None
        };
        let down: HashSet<String> = members
            .into_iter()
            .flat_map(|(members, _)| members)
            .filter(|m| m.record.name != cluster.node)
            .flat_map(|m| m.record.down_backends)
            .collect();
        for replica in gateway.live().models.replicas() {
            let down_elsewhere = down.contains(replica.name());
            if replica.down_elsewhere() != down_elsewhere {
                replica.set_down_elsewhere(down_elsewhere);
                gauge!(BACKEND_DOWN_ELSEWHERE, "backend" => replica.name().to_owned())
                    .set(if down_elsewhere { 1.0 } else { 0.0 });
                if down_elsewhere {
                    tracing::info!(
                        backend = replica.name(),
                        "Another node finds this backend down; sessions move off it here too."
                    );
                } else {
                    tracing::info!(
                        backend = replica.name(),
                        "No node finds this backend down any more."
                    );
                }
            }
        }
    }
}
