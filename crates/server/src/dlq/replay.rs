//! Replay: dead letters sent through a running pipeline again, exactly as they first came in (the
//! same body, session, priority and key). An entry leaves the queue only when its replay
//! succeeds; a failed replay stays, with the count of failed replays and the latest error.

use futures_util::stream::{self, StreamExt};
use metrics::counter;
use serde::Serialize;
use tokio_prompt_orchestrator::Priority;

use super::entry::DeadLetter;
use super::queue::DeadLetterQueue;
use super::store::{DlqError, ListFilter};
use crate::gateway::admit::{Origin, admit};
use crate::gateway::live::Live;
use crate::gateway::outcome::Outcome;
use crate::gateway::{Format, Hints};
use crate::stored::{StoredResponses, continue_turn};

/// Counter of replays, by `outcome` (`succeeded`, `failed`).
pub const DLQ_REPLAYED: &str = "orchestrator_dlq_replayed_total";
/// Replays in flight at once; the pipeline's admission gate bounds them further.
const CONCURRENCY: usize = 32;
/// Entries read from the queue at a time.
const PAGE: usize = 256;

/// Which entries to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<u64>),
    All,
    /// Entries recorded at or after this unix time in milliseconds.
    Since(u64),
}

/// What a replay run did, entry by entry.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Replayed and removed from the queue, with the response the caller would have had.
    pub replayed: Vec<Replayed>,
    /// Still in the queue.
    pub failed: Vec<ReplayFailure>,
    /// Asked for by id but not in the queue.
    pub missing: Vec<u64>,
    /// Being replayed by another node of the cluster at the same time: left to it.
    pub claimed_elsewhere: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct Replayed {
    pub id: u64,
    pub response: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct ReplayFailure {
    pub id: u64,
    pub error: String,
}

/// Replays the selected entries through `live`'s pipeline, each read and answered by `format`
/// (the shape of the API it first came in on).
///
/// # Errors
/// When the dead-letter file cannot be read or written.
pub async fn replay(
    live: &Live,
    format: &dyn Format,
    responses: Option<&StoredResponses>,
    store: &DeadLetterQueue,
    selection: Selection,
) -> Result<ReplayReport, DlqError> {
    let mut report = ReplayReport::default();
    let since_ms = match selection {
        Selection::Ids(ids) => {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                match store.get(id).await? {
                    Some(entry) => found.push(entry),
                    None => report.missing.push(id),
                }
            }
            run_all(live, format, responses, store, found, &mut report).await;
            return Ok(finish(report));
        }
        Selection::All => None,
        Selection::Since(since_ms) => Some(since_ms),
    };
    // A page at a time, so a queue of any size is replayed in bounded memory.
    let mut after_id = None;
    loop {
        let page = store
            .list(ListFilter {
                since_ms,
                limit: Some(PAGE),
                after_id,
            })
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after_id = Some(last.id);
        run_all(live, format, responses, store, page, &mut report).await;
    }
    Ok(finish(report))
}

/// Replays `entries`, [`CONCURRENCY`] at a time, into `report`.
async fn run_all(
    live: &Live,
    format: &dyn Format,
    responses: Option<&StoredResponses>,
    store: &DeadLetterQueue,
    entries: Vec<DeadLetter>,
    report: &mut ReplayReport,
) {
    let mut runs = stream::iter(entries)
        .map(|entry| replay_one(live, format, responses, store, entry))
        .buffer_unordered(CONCURRENCY);
    while let Some(ran) = runs.next().await {
        match ran {
            Ran::Replayed(done) => report.replayed.push(done),
            Ran::Failed(failure) => report.failed.push(failure),
            Ran::ClaimedElsewhere(id) => report.claimed_elsewhere.push(id),
        }
    }
}

/// Sorts the report and logs it in one line.
fn finish(mut report: ReplayReport) -> ReplayReport {
    report.claimed_elsewhere.sort_unstable();
    report.replayed.sort_by_key(|r| r.id);
    report.failed.sort_by_key(|f| f.id);
    // One line for the run: a replay of thousands of entries must not be thousands of lines.
    let (replayed, missing) = (report.replayed.len(), report.missing.len());
    match report.failed.first() {
        None => tracing::info!(replayed, missing, "Dead letters replayed and removed."),
        Some(first) => tracing::warn!(
            replayed,
            failed = report.failed.len(),
            missing,
            first_failed = first.id,
            first_error = %first.error,
            "Dead letters replayed; those that failed again stay in the queue."
        ),
    }
    report
}

/// What became of one entry.
enum Ran {
    Replayed(Replayed),
    Failed(ReplayFailure),
    ClaimedElsewhere(u64),
}

/// One entry: removed when it succeeds, its failure noted in it when not; left alone when
/// another node of the cluster is replaying it. A failure to read or write the queue is this
/// entry's failure, not the run's.
async fn replay_one(
    live: &Live,
    format: &dyn Format,
    responses: Option<&StoredResponses>,
    store: &DeadLetterQueue,
    mut entry: DeadLetter,
) -> Ran {
    let id = entry.id;
    let failed = |error: DlqError| {
        Ran::Failed(ReplayFailure {
            id,
            error: error.to_string(),
        })
    };
    let claim = match store.claim(id).await {
        Ok(true) => Claim {
            store,
            id,
            held: true,
        },
        Ok(false) => return Ran::ClaimedElsewhere(id),
        Err(e) => return failed(e),
    };
    // Read again under the claim: another node may have replayed and removed it since it was
    // listed.
    let current = match store.get(id).await {
        Ok(Some(current)) => current,
        Ok(None) => return Ran::ClaimedElsewhere(id),
        Err(e) => return failed(e),
    };
    entry.replays = current.replays;
    let ran = match run(live, format, responses, &entry).await {
        Ok(response) => match store.remove(id).await {
            Ok(_) => {
                counter!(DLQ_REPLAYED, "outcome" => "succeeded").increment(1);
                tracing::debug!(id, "Dead letter replayed and removed.");
                Ran::Replayed(Replayed { id, response })
            }
            Err(e) => failed(e),
        },
        Err(error) => {
            entry.replays += 1;
            entry.last_replay_error = Some(error.clone());
            counter!(DLQ_REPLAYED, "outcome" => "failed").increment(1);
            tracing::debug!(id, %error, "Dead letter replay failed; it stays in the queue.");
            match store.record_failed_replay(&entry).await {
                Ok(()) => Ran::Failed(ReplayFailure { id, error }),
                Err(e) => failed(e),
            }
        }
    };
    claim.release().await;
    ran
}

/// A replay's claim on an entry of the shared queue, let go when the replay ends, or, if the
/// replay is abandoned midway (its caller went away), from a task of its own.
struct Claim<'q> {
    store: &'q DeadLetterQueue,
    id: u64,
    held: bool,
}

impl Claim<'_> {
    async fn release(mut self) {
        self.held = false;
        self.store.release(self.id).await;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.held {
            let (store, id) = (self.store.clone(), self.id);
            tokio::spawn(async move { store.release(id).await });
        }
    }
}

/// Sends the entry's request through the pipeline and returns the whole answer.
async fn run(
    live: &Live,
    format: &dyn Format,
    responses: Option<&StoredResponses>,
    entry: &DeadLetter,
) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(&entry.request).map_err(|e| e.to_string())?;
    let hints = Hints {
        session: entry.session.clone(),
        priority: entry.priority.parse::<Priority>().ok(),
        ..Hints::default()
    };
    let request_id = format!("dlq-{}", entry.id);
    let origin = Origin {
        hints: &hints,
        key: entry.key.as_deref(),
        default_priority: Priority::Normal,
        request_id: &request_id,
    };
    let (mut request, mut delivery) = format
        .prepare(live, &entry.endpoint, &body, &origin)
        .map_err(|e| e.message)?;
    continue_turn(responses, origin.key, &hints, &mut delivery, &mut request)
        .await
        .map_err(|e| e.message)?;
    // A failed replay updates this entry rather than adding another.
    let mut outcome = Outcome::default();
    let handle = admit(live, request, &mut outcome).await.map_err(|e| e.message)?;
    let response = handle.into_response().await.map_err(|e| e.to_string())?;
    outcome.completed(&response.completion);
    Ok(format.answer(&entry.endpoint, &request_id, delivery, &response))
}
