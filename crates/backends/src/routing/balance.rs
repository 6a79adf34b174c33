//! Balancing: the order in which a group's replicas are tried for one request.

use serde::Deserialize;

/// How a model's requests spread over its replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    /// Rendezvous hashing on the session key: a session keeps landing on the same replica (its
    /// prefix/KV cache stays warm), and adding or removing one of N replicas moves about 1/N of
    /// the sessions.
    #[default]
    SessionAffinity,
    /// Rendezvous hashing on the prompt's prefix key (system prompt, tools, documents; made by
    /// the Assemble stage): requests that start alike meet the backend that has that prefix
    /// cached, whatever their session. Without a prefix key, the session key.
    PrefixAffinity,
    /// Power of two choices on the number of calls in flight.
    LeastOutstanding,
    RoundRobin,
    /// Random, in proportion to each replica's `weight`.
    Weighted,
}

impl Balancing {
    /// The name as configs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Balancing::SessionAffinity => "session_affinity",
            Balancing::PrefixAffinity => "prefix_affinity",
            Balancing::LeastOutstanding => "least_outstanding",
            Balancing::RoundRobin => "round_robin",
            Balancing::Weighted => "weighted",
        }
    }
}

/// What balancing needs to know of a replica.
pub trait Candidate {
    fn name(&self) -> &str;
    fn outstanding(&self) -> usize;
    fn weight(&self) -> u32;
}

/// The indexes of `replicas` in the order to try them: the first is the pick, the rest are
/// where retries go. `affinity` is the key the affinity policies hash: the session key, or the
/// prefix key for `prefix_affinity`.
pub fn order<C: Candidate>(policy: Balancing, replicas: &[C], affinity: &str, turn: usize) -> Vec<usize> {
    let session = affinity;
    let n = replicas.len();
    let mut order: Vec<usize> = (0..n).collect();
    match policy {
        Balancing::SessionAffinity | Balancing::PrefixAffinity => {
            // Highest score first; each replica's score depends only on (session, replica).
            order.sort_by_key(|&i| std::cmp::Reverse(rendezvous_score(session, replicas[i].name())));
        }
        Balancing::RoundRobin => order.rotate_left(turn % n.max(1)),
        Balancing::LeastOutstanding => {
            if n >= 2 {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let pick = if replicas[b].outstanding() < replicas[a].outstanding() {
                    b
                } else {
                    a
                };
                order.swap(0, pick);
            }
        }
        Balancing::Weighted => {
            let total: u64 = replicas.iter().map(|r| u64::from(r.weight())).sum();
            if total > 0 {
                let mut ticket = fastrand::u64(..total);
                let pick = replicas
                    .iter()
                    .position(|r| {
                        let w = u64::from(r.weight());
                        if ticket < w {
                            true
                        } else {
                            ticket -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                order.swap(0, pick);
            }
        }
    }
    order
}

fn rendezvous_score(session: &str, replica: &str) -> u64 {
    let mut key = Vec::with_capacity(session.len() + replica.len() + 1);
    key.extend_from_slice(session.as_bytes());
    // A separator no session or name contains keeps ("ab","c") and ("a","bc") apart.
    key.push(0);
    key.extend_from_slice(replica.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(String, usize, u32);

    impl Candidate for R {
        fn name(&self) -> &str {
            &self.0
        }
        fn outstanding(&self) -> usize {
            self.1
        }
        fn weight(&self) -> u32 {
            self.2
        }
    }

    fn replicas(n: usize) -> Vec<R> {
        (0..n).map(|i| R(format!("vllm-{i}"), 0, 1)).collect()
    }

    fn pick(policy: Balancing, replicas: &[R], session: &str) -> String {
        replicas[order(policy, replicas, session, 0)[0]].0.clone()
    }

    #[test]
    fn a_session_stays_on_its_replica() {
        let r = replicas(4);
        for s in 0..100 {
            let session = format!("s{s}");
            assert_eq!(
                pick(Balancing::SessionAffinity, &r, &session),
                pick(Balancing::SessionAffinity, &r, &session)
            );
        }
    }

    #[test]
    fn adding_a_replica_moves_about_one_in_n_sessions() {
        let before = replicas(4);
        let after = replicas(5);
        let sessions = 10_000;
        let moved = (0..sessions)
            .filter(|s| {
                let session = format!("user-{s}");
                pick(Balancing::SessionAffinity, &before, &session)
                    != pick(Balancing::SessionAffinity, &after, &session)
            })
            .count();
        // Ideal: 1/5 of sessions move (to the new replica), and only those.
        let share = moved as f64 / sessions as f64;
        assert!((0.17..0.23).contains(&share), "{share}");
        // Every session that moved went to the new replica.
        for s in 0..sessions {
            let session = format!("user-{s}");
            let (b, a) = (
                pick(Balancing::SessionAffinity, &before, &session),
                pick(Balancing::SessionAffinity, &after, &session),
            );
            assert!(a == b || a == "vllm-4");
        }
    }

    #[test]
    fn sessions_spread_evenly() {
        let r = replicas(4);
        let mut counts = std::collections::HashMap::new();
        for s in 0..10_000 {
            *counts
                .entry(pick(Balancing::SessionAffinity, &r, &format!("s{s}")))
                .or_insert(0) += 1;
        }
        assert!(counts.values().all(|&c| (2000..3000).contains(&c)), "{counts:?}");
    }

    #[test]
    fn removing_a_replica_moves_only_its_own_sessions() {
        let before = replicas(5);
        // vllm-2 goes away.
        let after: Vec<R> = replicas(5).into_iter().filter(|r| r.0 != "vllm-2").collect();
        let sessions = 10_000;
        let mut moved = 0;
        for s in 0..sessions {
            let session = format!("user-{s}");
            let (b, a) = (
                pick(Balancing::SessionAffinity, &before, &session),
                pick(Balancing::SessionAffinity, &after, &session),
            );
            if a != b {
                moved += 1;
                assert_eq!(b, "vllm-2", "{session} moved off a replica that stayed");
            }
        }
        // Ideal: the removed replica's 1/5 of sessions, spread over the other four.
        let share = f64::from(moved) / f64::from(sessions);
        assert!((0.17..0.23).contains(&share), "{share}");
    }

    #[test]
    fn least_outstanding_avoids_the_busy_replica() {
        let r = vec![R("a".into(), 100, 1), R("b".into(), 0, 1)];
        for _ in 0..50 {
            assert_eq!(pick(Balancing::LeastOutstanding, &r, ""), "b");
        }
    }

    #[test]
    fn round_robin_rotates() {
        let r = replicas(3);
        let firsts: Vec<usize> = (0..6)
            .map(|t| order(Balancing::RoundRobin, &r, "", t)[0])
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_set_the_shares() {
        let r = vec![R("a".into(), 0, 3), R("b".into(), 0, 1)];
        let a = (0..4000)
            .filter(|_| pick(Balancing::Weighted, &r, "") == "a")
            .count();
        assert!((2700..3300).contains(&a), "{a}");
    }

    #[test]
    fn every_order_is_a_permutation() {
        let r = replicas(5);
        for policy in [
            Balancing::SessionAffinity,
            Balancing::LeastOutstanding,
            Balancing::RoundRobin,
            Balancing::Weighted,
        ] {
            let mut o = order(policy, &r, "s", 7);
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2, 3, 4]);
        }
    }
}
