//! Unit tests of the dead-letter store: what each operation does, ids, reopening.

use serde_json::json;

use super::*;
use crate::dlq::entry::{Attempt, Reason};

fn letter(n: u64) -> DeadLetter {
    DeadLetter {
        id: 0,
        recorded_at_ms: 1_000 + n,
        received_at_ms: 900 + n,
        endpoint: "/v1/chat/completions".into(),
        model: format!("model-{n}"),
        key: Some("team-a".into()),
        priority: "normal".into(),
        session: n.is_multiple_of(2).then(|| format!("s{n}")),
        request: json!({"model": format!("model-{n}"), "messages": [{"role": "user", "content": "hi"}]}),
        reason: Reason::Failed,
        stage: Some("inference".into()),
        error: format!("upstream failed {n}"),
        error_kind: "worker".into(),
        attempts: vec![Attempt {
            backend: "vllm-a".into(),
            error: "502".into(),
        }],
        replays: 0,
        last_replay_error: None,
    }
}

fn with_id(mut entry: DeadLetter, id: u64) -> DeadLetter {
    entry.id = id;
    entry
}

fn open(dir: &tempfile::TempDir) -> DlqStore {
    DlqStore::open(&dir.path().join("dlq.redb")).unwrap()
}

#[tokio::test]
async fn append_assigns_increasing_ids_and_get_reads_the_entry_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut entry = letter(1);
    entry.id = 77; // ignored
    assert_eq!(store.append(entry).await.unwrap(), 1);
    assert_eq!(store.append(letter(2)).await.unwrap(), 2);
    assert_eq!(store.get(1).await.unwrap(), Some(with_id(letter(1), 1)));
    assert_eq!(store.get(2).await.unwrap(), Some(with_id(letter(2), 2)));
    assert_eq!(store.get(3).await.unwrap(), None);
    assert_eq!(store.len().await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_appends_get_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append(letter(n)).await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    assert_eq!(store.len().await.unwrap(), 200);
}

#[tokio::test]
async fn list_filters_by_time_and_id_and_limits_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for n in 1..=5 {
        store.append(letter(n)).await.unwrap();
    }
    let ids = |entries: Vec<DeadLetter>| entries.iter().map(|e| e.id).collect::<Vec<_>>();
    let all = store.list(ListFilter::default()).await.unwrap();
    assert_eq!(all, (1..=5).map(|n| with_id(letter(n), n)).collect::<Vec<_>>());
    let since = ListFilter {
        since_ms: Some(1_003),
        ..ListFilter::default()
    };
    assert_eq!(ids(store.list(since).await.unwrap()), [3, 4, 5]);
    let page = ListFilter {
        after_id: Some(1),
        limit: Some(2),
        ..ListFilter::default()
    };
    assert_eq!(ids(store.list(page).await.unwrap()), [2, 3]);
    let next = ListFilter {
        after_id: Some(3),
        limit: Some(2),
        since_ms: Some(1_005),
    };
    assert_eq!(ids(store.list(next).await.unwrap()), [5]);
    let none = ListFilter {
        limit: Some(0),
        ..ListFilter::default()
    };
    assert!(store.list(none).await.unwrap().is_empty());
    let past_the_end = ListFilter {
        after_id: Some(u64::MAX),
        ..ListFilter::default()
    };
    assert!(store.list(past_the_end).await.unwrap().is_empty());
}

#[tokio::test]
async fn remove_and_update_change_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for n in 1..=3 {
        store.append(letter(n)).await.unwrap();
    }
    assert!(store.remove(2).await.unwrap());
    assert!(!store.remove(2).await.unwrap());
    assert_eq!(store.get(2).await.unwrap(), None);
    assert_eq!(store.len().await.unwrap(), 2);

    let mut entry = store.get(3).await.unwrap().unwrap();
    entry.replays += 1;
    entry.last_replay_error = Some("still down".into());
    store.update(&entry).await.unwrap();
    assert_eq!(store.get(3).await.unwrap(), Some(entry));

    let missing = with_id(letter(2), 2);
    let err = store.update(&missing).await.unwrap_err();
    assert!(matches!(err, DlqError::NotFound { id: 2 }), "{err:?}");
    assert_eq!(err.to_string(), "no dead-letter entry with id 2");
    assert_eq!(store.get(2).await.unwrap(), None, "update must not insert");
}

#[tokio::test]
async fn purge_empties_the_file_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for n in 1..=3 {
        store.append(letter(n)).await.unwrap();
    }
    assert_eq!(store.purge().await.unwrap(), 3);
    assert_eq!(store.len().await.unwrap(), 0);
    assert!(store.list(ListFilter::default()).await.unwrap().is_empty());
    assert_eq!(store.purge().await.unwrap(), 0);
    assert_eq!(store.append(letter(4)).await.unwrap(), 4);
    drop(store);

    // Nor after reopening: the next id is stored, not derived from the entries.
    let store = open(&dir);
    store.purge().await.unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.append(letter(5)).await.unwrap(), 5);
}

#[tokio::test]
async fn reopening_keeps_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for n in 1..=3 {
        store.append(letter(n)).await.unwrap();
    }
    store.remove(1).await.unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.list(ListFilter::default()).await.unwrap(),
        [with_id(letter(2), 2), with_id(letter(3), 3)]
    );
    assert_eq!(store.len_blocking().unwrap(), 2);
    assert_eq!(store.append(letter(4)).await.unwrap(), 4);
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/dlq.redb");
    let store = DlqStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    assert_eq!(store.len_blocking().unwrap(), 0);
}

#[test]
fn a_second_open_of_the_same_file_says_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.redb");
    let _first = DlqStore::open(&path).unwrap();
    let err = DlqStore::open(&path).err().unwrap();
    assert!(matches!(err, DlqError::InUse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("open in another process"), "{message}");
}

#[test]
fn a_file_that_is_not_a_dead_letter_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = DlqStore::open(&path).err().unwrap();
    assert!(matches!(err, DlqError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[tokio::test]
async fn a_damaged_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.redb");
    let store = DlqStore::open(&path).unwrap();
    for n in 0..20 {
        store.append(letter(n)).await.unwrap();
    }
    drop(store);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = DlqStore::open(&path).err().unwrap();
    assert!(matches!(err, DlqError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[tokio::test]
async fn try_append_never_waits_and_what_it_queued_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Holding a write transaction stalls the writer at its next commit, as a slow disk would.
    let stall = store.inner.db.begin_write().unwrap();
    let tries = 2 * (QUEUE_CAPACITY + MAX_BATCH);
    let queued = (0..tries as u64).filter(|&n| store.try_append(letter(n))).count();
    assert!(queued >= QUEUE_CAPACITY, "{queued}");
    assert!(
        queued <= QUEUE_CAPACITY + MAX_BATCH,
        "{queued}: the queue is bounded"
    );
    drop(stall);
    // Every entry it took is written; an append that waits comes after them.
    let last = store.append(letter(0)).await.unwrap();
    assert_eq!(last, queued as u64 + 1);
    assert_eq!(store.len().await.unwrap(), queued as u64 + 1);
}
