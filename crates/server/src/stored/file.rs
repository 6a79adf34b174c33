//! Stored responses in a redb file, for a node alone: the answers by id, and their order of
//! storing, so that the oldest (and the expired) go first when the bound is reached.
//!
//! Puts and deletes go to one writer thread that commits what is queued in one transaction: each
//! commit costs an fsync, so under load many responses share one instead of waiting in turn for
//! their own. A put returns once its commit is on disk. Reads are direct read transactions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::ResponsesConfig;
use crate::dlq::entry::unix_ms;

/// Id -> when it was stored (unix milliseconds) and the stored answer as JSON.
const ANSWERS: TableDefinition<'static, &'static str, (u64, &'static [u8])> = TableDefinition::new("answers");
/// (stored at, id) -> (): the answers oldest first.
const ORDER: TableDefinition<'static, (u64, &'static str), ()> = TableDefinition::new("order");
/// A side file read once per turn: a small page cache is plenty.
const CACHE_BYTES: usize = 16 << 20;
/// Changes waiting for the writer; when full, a put waits, and with it the end of its answer.
const QUEUE_CAPACITY: usize = 1024;
/// Most changes in one commit, which every change in it waits for.
const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct FileStore {
    db: Arc<Database>,
    path: PathBuf,
    ttl: Duration,
    changes: mpsc::Sender<Change>,
}

/// One change for the writer, and where its outcome goes.
struct Change {
    op: Op,
    reply: oneshot::Sender<Result<(), String>>,
}

enum Op {
    Put {
        id: String,
        stored_ms: u64,
        bytes: Vec<u8>,
    },
    Delete {
        id: String,
    },
}

impl FileStore {
    /// # Errors
    /// When the file cannot be made or opened, naming it.
    pub fn open(path: &Path, config: &ResponsesConfig) -> Result<Self, String> {
        let failed =
            |e: &dyn std::fmt::Display| format!("responses.path: cannot open {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| failed(&e))?;
        let txn = db.begin_write().map_err(|e| failed(&e))?;
        txn.open_table(ANSWERS).map_err(|e| failed(&e))?;
        txn.open_table(ORDER).map_err(|e| failed(&e))?;
        txn.commit().map_err(|e| failed(&e))?;
        let db = Arc::new(db);
        let (changes, queue) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            db: db.clone(),
            ttl: Duration::from_secs(config.ttl_s),
            max_entries: config.max_entries,
        };
        // Ends when every handle is gone and the queue is empty.
        std::thread::Builder::new()
            .name("responses-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| failed(&e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            ttl: Duration::from_secs(config.ttl_s),
            changes,
        })
    }

    pub async fn put(&self, id: &str, stored_ms: u64, bytes: Vec<u8>) -> Result<(), String> {
        let id = id.to_owned();
        self.change(Op::Put { id, stored_ms, bytes }).await
    }

    pub async fn read(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let (db, key) = (self.db.clone(), id.to_owned());
        let expired_before = expired_before(self.ttl);
        let read = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, redb::Error> {
            let txn = db.begin_read()?;
            let answers = txn.open_table(ANSWERS)?;
            let Some(found) = answers.get(key.as_str())? else {
                return Ok(None);
            };
            let (stored_ms, bytes) = found.value();
            // Expired answers are removed by a later put; until then they are not served.
            Ok((stored_ms >= expired_before).then(|| bytes.to_vec()))
        });
        match read.await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(format!("{}: {e}", self.path.display())),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), String> {
        self.change(Op::Delete { id: id.to_owned() }).await
    }

    async fn change(&self, op: Op) -> Result<(), String> {
        let gone = || format!("{}: the writer has stopped", self.path.display());
        let (reply, outcome) = oneshot::channel();
        self.changes
            .send(Change { op, reply })
            .await
            .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }
}

/// Answers stored before this unix time in milliseconds have expired.
fn expired_before(ttl: Duration) -> u64 {
    unix_ms(SystemTime::now()).saturating_sub(ttl.as_millis() as u64)
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    ttl: Duration,
    max_entries: u64,
}

impl Writer {
    /// Takes what is queued, commits it in one transaction, answers each change.
    fn run(self, mut queue: mpsc::Receiver<Change>) {
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
            let outcome = self.commit(&batch).map_err(|e| e.to_string());
            for change in batch.drain(..) {
                let _ = change.reply.send(outcome.clone());
            }
        }
    }

    /// Applies `batch` in one transaction, drops the oldest and the expired, and commits.
    fn commit(&self, batch: &[Change]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        for change in batch {
            apply(&txn, &change.op)?;
        }
        self.evict(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Removes the oldest answers beyond the bound, and the expired whatever the count.
    fn evict(&self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut answers = txn.open_table(ANSWERS)?;
        let mut order = txn.open_table(ORDER)?;
        let expired_before = expired_before(self.ttl);
        loop {
            let over = order.len()? > self.max_entries;
            let Some(first) = order.first()? else { break };
            let (at, oldest) = first.0.value();
            if !over && at >= expired_before {
                break;
            }
            let oldest = oldest.to_owned();
            drop(first);
            order.remove((at, oldest.as_str()))?;
            answers.remove(oldest.as_str())?;
        }
        Ok(())
    }
}

/// One change.
fn apply(txn: &WriteTransaction, op: &Op) -> Result<(), redb::Error> {
    let mut answers = txn.open_table(ANSWERS)?;
    let mut order = txn.open_table(ORDER)?;
    match op {
        Op::Put { id, stored_ms, bytes } => {
            answers.insert(id.as_str(), (*stored_ms, bytes.as_slice()))?;
            order.insert((*stored_ms, id.as_str()), ())?;
        }
        Op::Delete { id } => {
            let removed = answers.remove(id.as_str())?.map(|v| v.value().0);
            if let Some(stored_ms) = removed {
                order.remove((stored_ms, id.as_str()))?;
            }
        }
    }
    Ok(())
}
