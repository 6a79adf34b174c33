//! Which partitions of each model this worker owns: rendezvous hashing over the live workers that
//! serve the model, read from membership every heartbeat. Every worker computes the same owners
//! from the same records, with no coordination; when a worker joins or leaves, only the
//! partitions it gains or loses move.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::cluster::jobs::PARTITIONS;
use crate::cluster::membership::{Member, Role};

/// The (model index, partition) pairs this worker owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned(HashSet<(usize, u32)>);

impl Owned {
    pub fn contains(&self, model: usize, partition: u32) -> bool {
        self.0.contains(&(model, partition))
    }

    /// How many partitions, over all models.
    pub fn count(&self) -> usize {
        self.0.len()
    }
}

/// The partitions `me` owns of each of `models`, among the workers in `members` (and `me`, whose
/// own record may not be written yet). A draining worker owns nothing.
pub fn owned(members: &[Member], models: &[String], me: &str, draining: bool) -> Owned {
    let mut owned = HashSet::new();
    if draining {
        return Owned(owned);
    }
    for (index, model) in models.iter().enumerate() {
        let mut workers: Vec<&str> = members
            .iter()
            .filter(|m| {
                m.record.role == Role::Worker && !m.record.draining && m.record.models.contains(model)
            })
            .map(|m| m.record.name.as_str())
            .collect();
        if !workers.contains(&me) {
            workers.push(me);
        }
        for partition in 0..PARTITIONS {
            let owner = workers.iter().max_by_key(|w| score(w, model, partition)).copied();
            if owner == Some(me) {
                owned.insert((index, partition));
            }
        }
    }
    Owned(owned)
}

/// Each (worker, model, partition) has its own score; the highest scoring worker owns it.
fn score(worker: &str, model: &str, partition: u32) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{worker}\u{0}{model}\u{0}{partition}").as_bytes())
}

/// Recomputes the owned partitions every heartbeat until `stop`; a membership read that fails
/// keeps the last answer.
pub async fn follow(
    cluster: Arc<Cluster>,
    models: Vec<String>,
    draining: watch::Receiver<bool>,
    owned_tx: watch::Sender<Owned>,
    stop: CancellationToken,
) {
    let mut beats = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = beats.tick() => {}
        }
        match cluster.members().live().await {
            Ok((members, _)) => {
                let now = owned(&members, &models, &cluster.node, *draining.borrow());
                owned_tx.send_if_modified(|current| {
                    let changed = *current != now;
                    if changed {
                        tracing::info!(partitions = now.count(), "This worker's partitions changed.");
                        *current = now;
                    }
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "Cannot read membership; partitions stay as they were."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_one_owner_and_a_leaver_moves_only_its_own() {
        let models = vec!["m".to_owned()];
        let three = [
            Member::worker("a", &["m"]),
            Member::worker("b", &["m"]),
            Member::worker("c", &["m"]),
        ];
        let owners = |members: &[Member], names: &[&str]| {
            names
                .iter()
                .map(|n| owned(members, &models, n, false))
                .collect::<Vec<_>>()
        };
        let before = owners(&three, &["a", "b", "c"]);
        for partition in 0..PARTITIONS {
            assert_eq!(before.iter().filter(|o| o.contains(0, partition)).count(), 1);
        }
        assert!(
            before.iter().all(|o| o.count() >= 4),
            "each owns a share: {before:?}"
        );
        // c leaves: a and b keep what they had, and share c's.
        let after = owners(&three[..2], &["a", "b"]);
        for (was, is) in before.iter().zip(&after) {
            assert!(was.0.is_subset(&is.0));
        }
        assert_eq!(after[0].count() + after[1].count(), PARTITIONS as usize);
    }

    #[test]
    fn workers_of_other_models_and_draining_ones_own_nothing_here() {
        let models = vec!["m".to_owned()];
        let mut draining = Member::worker("d", &["m"]);
        draining.record.draining = true;
        let members = [
            Member::worker("a", &["m"]),
            Member::worker("x", &["other"]),
            draining,
        ];
        assert_eq!(owned(&members, &models, "a", false).count(), PARTITIONS as usize);
        assert_eq!(owned(&members, &models, "a", true).count(), 0);
    }
}
