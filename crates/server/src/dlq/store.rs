//! The dead-letter queue's file: a redb database of [`DeadLetter`]s by id, written by one thread
//! that commits queued changes in batches, read directly by read transactions.
//!
//! The gateway records a failed request with [`DlqStore::append`]; the admin API and the
//! `orchestrator dlq` command read, replay and remove entries through the same type.

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::entry::DeadLetter;

/// Entries recorded (counter).
pub const DLQ_ENTRIES_ADDED: &str = "orchestrator_dlq_entries_added_total";
/// Entries in the file (gauge), set at open and after every change.
pub const DLQ_SIZE: &str = "orchestrator_dlq_size";
/// Entries not recorded because the writer's queue was full (counter); see
/// [`DlqStore::try_append`].
pub const DLQ_ENTRIES_DROPPED: &str = "orchestrator_dlq_entries_dropped_total";

/// Entry id -> the entry as JSON. JSON rather than a binary format so that an entry written by
/// an older gateway still reads after fields are added (with serde defaults), and so that the
/// stored form is the one operators see.
const ENTRIES: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("entries");
/// Small counters that must outlive the entries, such as the next id.
const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
/// The id the next append gets. Kept apart from the entries so that a purge does not reset it.
const NEXT_ID: &str = "next_id";
const FIRST_ID: u64 = 1;

/// Changes waiting for the writer. When full, `append` (and the other changes) wait: a failed
/// request is never dropped from the record, and the wait pushes back on whoever is failing
/// thousands of requests a second.
const QUEUE_CAPACITY: usize = 1024;
/// Most changes committed in one transaction. Each commit costs an fsync, so under a burst this
/// turns thousands of fsyncs a second into a few; the bound keeps a commit's latency, which every
/// change in it waits for, to a few milliseconds.
const MAX_BATCH: usize = 256;
/// redb's page cache. Its default (1 GiB) suits a primary database, not a side file read
/// mostly by operators.
const CACHE_BYTES: usize = 16 << 20;

/// Which entries [`DlqStore::list`] returns, oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only entries recorded at or after this unix time in milliseconds.
    pub since_ms: Option<u64>,
    /// At most this many entries.
    pub limit: Option<usize>,
    /// Only entries with a larger id: the last id of the previous page, to page through.
    pub after_id: Option<u64>,
}

/// What can go wrong with the dead-letter file. Cheap to clone, because one failed commit is
/// reported to every change that was in it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DlqError {
    /// The file is locked by another `DlqStore`, most likely a running gateway's.
    #[error(
        "the dead-letter file `{}` is open in another process (a running gateway?); \
         use its admin API: GET /admin/dlq, POST /admin/dlq/replay",
        .path.display()
    )]
    InUse { path: PathBuf },
    /// The file is damaged, not a redb database, or could not be read.
    #[error("cannot open the dead-letter file `{}`: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: Arc<redb::DatabaseError>,
    },
    /// The directory of the file could not be created, or the writer thread not started.
    #[error("cannot open the dead-letter file `{}`: {source}", .path.display())]
    Io { path: PathBuf, source: Arc<io::Error> },
    /// A read or a commit failed. After a failed commit, redb refuses further changes until
    /// the file is opened again.
    #[error("the dead-letter file `{}` failed: {source}", .path.display())]
    Storage { path: PathBuf, source: Arc<redb::Error> },
    /// A stored entry is not a `DeadLetter` this version can read.
    #[error("dead-letter entry {id} in `{}` cannot be read: {source}", .path.display())]
    Decode {
        path: PathBuf,
        id: u64,
        source: Arc<serde_json::Error>,
    },
    /// An entry could not be turned into JSON.
    #[error("the dead-letter entry cannot be stored: {0}")]
    Encode(Arc<serde_json::Error>),
    /// `update` of an entry that is not (or no longer) there.
    #[error("no dead-letter entry with id {id}")]
    NotFound { id: u64 },
    /// The writer thread is gone (it panicked), or the runtime is shutting down.
    #[error("the dead-letter store has stopped")]
    Closed,
    /// The cluster's shared dead-letter stream could not be read or written.
    #[error("the cluster's dead-letter stream: {0}")]
    Shared(String),
}

/// The dead-letter queue, backed by one redb file. Cheap to clone; the file closes, and the
/// writer thread ends, when the last clone is dropped.
///
/// Changes (`append`, `update`, `remove`, `purge`) are async: they queue for the writer thread
/// and return once the transaction holding them has committed with immediate durability (an
/// fsync), so an acknowledged change survives a crash. A change whose caller stops waiting
/// (the future is dropped) after it was queued is still made.
///
/// Reads come twice: `*_blocking` methods that read directly, for callers already on a blocking
/// thread (the CLI, tests), and async ones that do the same on `spawn_blocking`, for handlers.
#[derive(Clone)]
pub struct DlqStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    /// Declared before `_writer`, because fields drop in order: closing the queue first ends the
    /// writer's loop (after it has committed what is queued), then `_writer` joins it, so the
    /// file is closed when the last `DlqStore` is gone and may be opened again at once.
    changes: mpsc::Sender<Change>,
    _writer: JoinOnDrop,
}

struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // Bounded: the queue is closed, so the writer commits at most QUEUE_CAPACITY queued
            // changes (a few batches) and stops. A panic in it has been reported to its callers.
            let _ = handle.join();
        }
    }
}

/// One queued change and where its outcome goes. Every change answers with a number (the new
/// id, 1 or 0 removed, the count purged), so one reply type serves them all.
struct Change {
    op: Op,
    /// `None` for a change nobody waits for ([`DlqStore::try_append`]): the writer reports its
    /// failure itself.
    reply: Option<oneshot::Sender<Result<u64, DlqError>>>,
}

enum Op {
    Append(Box<DeadLetter>),
    Update(Box<DeadLetter>),
    Remove(u64),
    Purge,
}

impl DlqStore {
    /// Opens the dead-letter file at `path`, creating it (and its directory) if missing, checks
    /// its integrity, and starts the writer thread.
    ///
    /// Blocking: it reads the whole file. Call it at startup or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`DlqError::InUse`] when another process (or another `DlqStore` in this one) has the
    /// file open; [`DlqError::Open`] when it is damaged or not a dead-letter file; both name
    /// the path.
    pub fn open(path: &Path) -> Result<DlqStore, DlqError> {
        let io_error = |e: io::Error| DlqError::Io {
            path: path.to_path_buf(),
            source: Arc::new(e),
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // A plain open trusts the file and may panic on one damaged outside redb; with the
            // check, damage is an error naming the file. The file is small, the open rare.
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let size = create_tables(&db).map_err(|e| storage_error(path, e))?;
        metrics::gauge!(DLQ_SIZE).set(size as f64);

        let db = Arc::new(db);
        let (changes, queue) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("dlq-writer".into())
            .spawn({
                let db = Arc::clone(&db);
                let path = path.to_path_buf();
                move || write_loop(&db, &path, queue)
            })
            .map_err(io_error)?;
        Ok(DlqStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                changes,
                _writer: JoinOnDrop(Some(writer)),
            }),
        })
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records `entry` under a new id (its `id` field is ignored) and returns the id once the
    /// entry is on disk. Waits while the writer's queue is full; never drops the entry.
    ///
    /// # Errors
    /// [`DlqError::Storage`] when the commit failed: the entry may or may not be on disk, and
    /// redb refuses further changes until the file is opened again;
    /// [`DlqError::Closed`] when the writer is gone.
    pub async fn append(&self, entry: DeadLetter) -> Result<u64, DlqError> {
        self.change(Op::Append(Box::new(entry))).await
    }

    /// Queues `entry` for the writer without waiting for room or for the commit, for callers
    /// that must answer at once (a refused request). When the queue is full the entry is not
    /// recorded: it is counted in `orchestrator_dlq_entries_dropped_total` and `false` is
    /// returned. A commit that fails is logged by the writer.
    pub fn try_append(&self, entry: DeadLetter) -> bool {
        let change = Change {
            op: Op::Append(Box::new(entry)),
            reply: None,
        };
        let queued = self.inner.changes.try_send(change).is_ok();
        if !queued {
            metrics::counter!(DLQ_ENTRIES_DROPPED).increment(1);
        }
        queued
    }

    /// Replaces the entry with `entry.id` (to count a failed replay, say).
    ///
    /// # Errors
    /// [`DlqError::NotFound`] when there is no such entry (it was removed meanwhile); nothing is
    /// written then. Otherwise as [`append`](Self::append).
    pub async fn update(&self, entry: &DeadLetter) -> Result<(), DlqError> {
        self.change(Op::Update(Box::new(entry.clone()))).await.map(drop)
    }

    /// Removes entry `id`; `false` when there was none.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub async fn remove(&self, id: u64) -> Result<bool, DlqError> {
        self.change(Op::Remove(id)).await.map(|removed| removed > 0)
    }

    /// Removes every entry and returns how many there were. Ids keep counting from where they
    /// were, so an id is never reused.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub async fn purge(&self) -> Result<u64, DlqError> {
        self.change(Op::Purge).await
    }

    async fn change(&self, op: Op) -> Result<u64, DlqError> {
        let (reply, outcome) = oneshot::channel();
        let reply = Some(reply);
        self.inner
            .changes
            .send(Change { op, reply })
            .await
            .map_err(|_| DlqError::Closed)?;
        // The writer drops the reply unanswered only by panicking.
        outcome.await.map_err(|_| DlqError::Closed)?
    }

    /// The entry with `id`, if any. Runs [`get_blocking`](Self::get_blocking) on
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`DlqError::Storage`] or [`DlqError::Decode`] when the entry cannot be read.
    pub async fn get(&self, id: u64) -> Result<Option<DeadLetter>, DlqError> {
        self.blocking(move |store| store.get_blocking(id)).await
    }

    /// The entries `filter` selects, oldest (smallest id) first. Runs
    /// [`list_blocking`](Self::list_blocking) on `spawn_blocking`.
    ///
    /// # Errors
    /// As [`get`](Self::get): one unreadable entry fails the whole list.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<DeadLetter>, DlqError> {
        self.blocking(move |store| store.list_blocking(filter)).await
    }

    /// How many entries the file holds. Runs [`len_blocking`](Self::len_blocking) on
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`DlqError::Storage`] when the file cannot be read.
    pub async fn len(&self) -> Result<u64, DlqError> {
        self.blocking(|store| store.len_blocking()).await
    }

    /// Whether the file holds no entries. Runs on `spawn_blocking`.
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub async fn is_empty(&self) -> Result<bool, DlqError> {
        self.len().await.map(|len| len == 0)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&DlqStore) -> Result<T, DlqError> + Send + 'static,
    ) -> Result<T, DlqError> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || read(&store)).await {
            Ok(result) => result,
            // A panic in a read is a defect: let it carry on in the caller.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(DlqError::Closed),
        }
    }

    /// [`get`](Self::get), on the calling thread.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_blocking(&self, id: u64) -> Result<Option<DeadLetter>, DlqError> {
        let txn = self.inner.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.storage(e))?;
        let Some(bytes) = table.get(id).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        self.decode(id, bytes.value()).map(Some)
    }

    /// [`list`](Self::list), on the calling thread.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub fn list_blocking(&self, filter: ListFilter) -> Result<Vec<DeadLetter>, DlqError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let txn = self.inner.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.storage(e))?;
        let start = filter.after_id.map_or(Bound::Unbounded, Bound::Excluded);
        let range = table
            .range::<u64>((start, Bound::Unbounded))
            .map_err(|e| self.storage(e))?;
        for item in range {
            let (id, bytes) = item.map_err(|e| self.storage(e))?;
            let entry = self.decode(id.value(), bytes.value())?;
            // Ids follow the order of recording, but the times are the recorder's clock, which
            // may step back; so every entry is checked rather than searching for the first.
            if filter.since_ms.is_some_and(|since| entry.recorded_at_ms < since) {
                continue;
            }
            found.push(entry);
            if found.len() == limit {
                break;
            }
        }
        Ok(found)
    }

    /// [`len`](Self::len), on the calling thread.
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub fn len_blocking(&self) -> Result<u64, DlqError> {
        let txn = self.inner.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.storage(e))?;
        table.len().map_err(|e| self.storage(e))
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<DeadLetter, DlqError> {
        let mut entry: DeadLetter = serde_json::from_slice(bytes).map_err(|e| DlqError::Decode {
            path: self.inner.path.clone(),
            id,
            source: Arc::new(e),
        })?;
        // The key is the truth; the copy inside the JSON is for people reading it.
        entry.id = id;
        Ok(entry)
    }

    fn storage(&self, e: impl Into<redb::Error>) -> DlqError {
        storage_error(&self.inner.path, e)
    }
}

fn storage_error(path: &Path, e: impl Into<redb::Error>) -> DlqError {
    DlqError::Storage {
        path: path.to_path_buf(),
        source: Arc::new(e.into()),
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> DlqError {
    match e {
        // A version mismatch means another process holds it too, with another redb.
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            DlqError::InUse {
                path: path.to_path_buf(),
            }
        }
        e => DlqError::Open {
            path: path.to_path_buf(),
            source: Arc::new(e),
        },
    }
}

/// Creates the tables on first use, so that reads never meet a missing table, and returns the
/// number of entries.
fn create_tables(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_write()?;
    let size = {
        txn.open_table(META)?;
        txn.open_table(ENTRIES)?.len()?
    };
    txn.commit()?;
    Ok(size)
}

/// The writer thread: takes what is queued, commits it in one transaction, answers each change.
/// Ends when every `DlqStore` is gone and the queue is empty.
fn write_loop(db: &Database, path: &Path, mut queue: mpsc::Receiver<Change>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // A plain thread, not a runtime worker, so blocking on the queue is its job.
    while let Some(change) = queue.blocking_recv() {
        batch.push(change);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        match commit(db, &mut batch) {
            Ok((outcomes, committed)) => {
                // Metrics only once the changes are on disk, so they never count a lost batch.
                metrics::counter!(DLQ_ENTRIES_ADDED).increment(committed.added);
                metrics::gauge!(DLQ_SIZE).set(committed.size as f64);
                for (change, outcome) in batch.drain(..).zip(outcomes) {
                    answer(change, outcome);
                }
            }
            Err(e) => {
                let e = storage_error(path, e);
                for change in batch.drain(..) {
                    answer(change, Err(e.clone()));
                }
            }
        }
    }
}

/// Tells a change's caller how it went; a change nobody waits for reports its failure here.
fn answer(change: Change, outcome: Result<u64, DlqError>) {
    match (change.reply, outcome) {
        // A caller that stopped waiting is told nothing; its change is made anyway.
        (Some(reply), outcome) => {
            let _ = reply.send(outcome);
        }
        (None, Err(error)) => {
            tracing::error!(%error, "A failed request could not be kept in the dead-letter queue.");
        }
        (None, Ok(_)) => {}
    }
}

struct Committed {
    added: u64,
    size: u64,
}

/// Applies `batch` in order in one transaction and commits it. An `Err` (storage) fails the
/// whole batch; each change's own outcome (e.g. `NotFound`) does not stop the others.
fn commit(
    db: &Database,
    batch: &mut [Change],
) -> Result<(Vec<Result<u64, DlqError>>, Committed), redb::Error> {
    let mut txn = db.begin_write()?;
    // redb's default, stated because the whole design rests on it: commit returns after fsync.
    txn.set_durability(Durability::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut added = 0;
    let size = {
        let mut entries = txn.open_table(ENTRIES)?;
        let mut meta = txn.open_table(META)?;
        let mut next_id = meta.get(NEXT_ID)?.map_or(FIRST_ID, |id| id.value());
        for change in batch.iter_mut() {
            let outcome = match &mut change.op {
                Op::Append(entry) => {
                    entry.id = next_id;
                    let outcome = store_entry(&mut entries, entry)?.map(|()| next_id);
                    if outcome.is_ok() {
                        next_id += 1;
                        added += 1;
                    }
                    outcome
                }
                Op::Update(entry) => {
                    if entries.get(entry.id)?.is_some() {
                        store_entry(&mut entries, entry)?.map(|()| 1)
                    } else {
                        Err(DlqError::NotFound { id: entry.id })
                    }
                }
                Op::Remove(id) => Ok(u64::from(entries.remove(*id)?.is_some())),
                Op::Purge => {
                    let removed = entries.len()?;
                    entries.retain(|_, _| false)?;
                    Ok(removed)
                }
            };
            outcomes.push(outcome);
        }
        meta.insert(NEXT_ID, next_id)?;
        entries.len()?
    };
    txn.commit()?;
    Ok((outcomes, Committed { added, size }))
}

/// Writes `entry` under its id: `Err` for storage (fails the batch), `Ok(Err)` for an entry that
/// cannot be encoded (fails only that change).
fn store_entry(
    entries: &mut redb::Table<'_, u64, &[u8]>,
    entry: &DeadLetter,
) -> Result<Result<(), DlqError>, redb::Error> {
    let bytes = match serde_json::to_vec(entry) {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Err(DlqError::Encode(Arc::new(e)))),
    };
    entries.insert(entry.id, bytes.as_slice())?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests;
