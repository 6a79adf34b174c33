//! Session -> shard mapping: a stable hash, so one session always lands on the same lane.
//!
//! XXH3 is a fixed, documented algorithm (unlike `std`'s hasher), so every node of a mesh maps a
//! session to the same shard.

use crate::request::SessionId;

/// The shard of `session` among `shards` (which must be at least 1).
pub fn shard_for(session: &SessionId, shards: usize) -> usize {
    let hash = xxhash_rust::xxh3::xxh3_64(session.as_str().as_bytes());
    // Lemire's multiply-shift maps the hash onto 0..shards without the bias-prone modulo of a
    // power-of-two-unfriendly count.
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_session_same_shard() {
        let s = SessionId::new("user-123");
        assert_eq!(shard_for(&s, 8), shard_for(&s, 8));
        assert!(shard_for(&s, 8) < 8);
        assert_eq!(shard_for(&s, 1), 0);
    }
}
