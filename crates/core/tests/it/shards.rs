//! Sessions spread evenly over shards.

use tokio_prompt_orchestrator::SessionId;
use tokio_prompt_orchestrator::shard::shard_for;

#[test]
fn ten_thousand_random_sessions_are_balanced() {
    // A fixed xorshift sequence: random-looking session keys, the same every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let sessions: Vec<SessionId> = (0..10_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            SessionId::new(format!("user-{state:x}"))
        })
        .collect();
    for shards in [2, 3, 4, 8, 16] {
        let mut counts = vec![0usize; shards];
        for s in &sessions {
            counts[shard_for(s, shards)] += 1;
        }
        let mean = sessions.len() as f64 / shards as f64;
        let max = *counts.iter().max().expect("non-empty") as f64;
        assert!(
            max <= 1.2 * mean,
            "{shards} shards: {counts:?} (max {max} > 1.2 x mean {mean})"
        );
    }
}

#[test]
fn sequential_session_names_are_balanced_too() {
    let shards = 8;
    let mut counts = vec![0usize; shards];
    for i in 0..10_000 {
        counts[shard_for(&SessionId::new(format!("session-{i}")), shards)] += 1;
    }
    let mean = 10_000.0 / shards as f64;
    assert!(counts.iter().all(|&c| c as f64 <= 1.2 * mean), "{counts:?}");
}
