//! Stored responses in a redb file, for a node alone: the answers by id, and their order of
//! storing, so that the oldest (and the expired) go first when the bound is reached.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{StoredResponse, decode, encode};
use crate::config::ResponsesConfig;
use crate::dlq::entry::unix_ms;

/// Id -> the stored answer as JSON.
const ANSWERS: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("answers");
/// (stored at, id) -> (): the answers oldest first.
const ORDER: TableDefinition<'static, (u64, &'static str), ()> = TableDefinition::new("order");
/// A side file read once per turn: a small page cache is plenty.
const CACHE_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct FileStore {
    db: Arc<Database>,
    path: PathBuf,
    ttl: Duration,
    max_entries: u64,
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
        Ok(Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
            ttl: Duration::from_secs(config.ttl_s),
            max_entries: config.max_entries,
        })
    }

    pub async fn put(&self, id: &str, stored: &StoredResponse) -> Result<(), String> {
        let (store, id, bytes) = (self.clone(), id.to_owned(), encode(stored));
        let stored_ms = stored.stored_ms;
        self.blocking(move || {
            let txn = store.db.begin_write()?;
            {
                let mut answers = txn.open_table(ANSWERS)?;
                let mut order = txn.open_table(ORDER)?;
                answers.insert(id.as_str(), bytes.as_slice())?;
                order.insert((stored_ms, id.as_str()), ())?;
                // The oldest go when over the bound, and the expired whatever the count.
                let expired_before = store.expired_before();
                loop {
                    let over = order.len()? > store.max_entries;
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
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredResponse>, String> {
        let (store, key) = (self.clone(), id.to_owned());
        let bytes = self
            .blocking(move || {
                let txn = store.db.begin_read()?;
                let answers = txn.open_table(ANSWERS)?;
                Ok(answers.get(key.as_str())?.map(|v| v.value().to_vec()))
            })
            .await?;
        let Some(bytes) = bytes else { return Ok(None) };
        let stored = decode(id, &bytes)?;
        // Expired answers are removed by the next put; until then they are not served.
        Ok((stored.stored_ms >= self.expired_before()).then_some(stored))
    }

    pub async fn delete(&self, id: &str) -> Result<bool, String> {
        let (store, id) = (self.clone(), id.to_owned());
        self.blocking(move || {
            let txn = store.db.begin_write()?;
            let found = {
                let mut answers = txn.open_table(ANSWERS)?;
                let removed = answers.remove(id.as_str())?.map(|v| decode(&id, v.value()));
                match removed {
                    Some(Ok(stored)) => {
                        txn.open_table(ORDER)?.remove((stored.stored_ms, id.as_str()))?;
                        true
                    }
                    Some(Err(_)) => true,
                    None => false,
                }
            };
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    /// Answers stored before this unix time in milliseconds have expired.
    fn expired_before(&self) -> u64 {
        unix_ms(SystemTime::now()).saturating_sub(self.ttl.as_millis() as u64)
    }

    /// Runs `work` off the runtime's threads: redb reads and commits block.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, String> {
        let path = self.path.display().to_string();
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{path}: {e}")),
            Err(e) => Err(format!("{path}: {e}")),
        }
    }
}
