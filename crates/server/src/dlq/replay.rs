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

/// Counter of replays, by `outcome` (`succeeded`, `failed`).
pub const DLQ_REPLAYED: &str = "orchestrator_dlq_replayed_total";
/// Replays in flight at once; the pipeline's admission gate bounds them further.
const CONCURRENCY: usize = 32;

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
    store: &DeadLetterQueue,
    selection: Selection,
) -> Result<ReplayReport, DlqError> {
    let mut report = ReplayReport::default();
    let entries = match selection {
        Selection::All => store.list(ListFilter::default()).await?,
        Selection::Since(since_ms) => {
            store
                .list(ListFilter {
                    since_ms: Some(since_ms),
                    ..ListFilter::default()
                })
                .await?
        }
        Selection::Ids(ids) => {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                match store.get(id).await? {
                    Some(entry) => found.push(entry),
                    None => report.missing.push(id),
                }
            }
            found
        }
    };
    let mut runs = stream::iter(entries)
        .map(|entry| replay_one(live, format, store, entry))
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = runs.next().await {
        match result? {
            Ran::Replayed(done) => report.replayed.push(done),
            Ran::Failed(failure) => report.failed.push(failure),
            Ran::ClaimedElsewhere(id) => report.claimed_elsewhere.push(id),
        }
    }
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
    Ok(report)
}

/// What became of one entry.
enum Ran {
    Replayed(Replayed),
    Failed(ReplayFailure),
    ClaimedElsewhere(u64),
}

/// One entry: removed when it succeeds, its failure noted in it when not; left alone when
/// another node of the cluster is replaying it.
async fn replay_one(
    live: &Live,
    format: &dyn Format,
    store: &DeadLetterQueue,
    mut entry: DeadLetter,
) -> Result<Ran, DlqError> {
    let id = entry.id;
    if !store.claim(id).await? {
        return Ok(Ran::ClaimedElsewhere(id));
    }
    let ran = async {
        // Read again under the claim: another node may have replayed and removed it since it
        // was listed.
        let Some(current) = store.get(id).await? else {
            return Ok(Ran::ClaimedElsewhere(id));
        };
        entry.replays = current.replays;
        match run(live, format, &entry).await {
            Ok(response) => {
                store.remove(id).await?;
                counter!(DLQ_REPLAYED, "outcome" => "succeeded").increment(1);
                tracing::debug!(id, "Dead letter replayed and removed.");
                Ok(Ran::Replayed(Replayed { id, response }))
            }
            Err(error) => {
                entry.replays += 1;
                entry.last_replay_error = Some(error.clone());
                store.record_failed_replay(&entry).await?;
                counter!(DLQ_REPLAYED, "outcome" => "failed").increment(1);
                tracing::debug!(id, %error, "Dead letter replay failed; it stays in the queue.");
                Ok(Ran::Failed(ReplayFailure { id, error }))
            }
        }
    }
    .await;
    store.release(id).await;
    ran
}

/// Sends the entry's request through the pipeline and returns the whole answer.
async fn run(live: &Live, format: &dyn Format, entry: &DeadLetter) -> Result<serde_json::Value, String> {
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
    let (request, delivery) = format
        .prepare(live, &entry.endpoint, &body, &origin)
        .map_err(|e| e.message)?;
    // A failed replay updates this entry rather than adding another.
    let mut outcome = Outcome::default();
    let handle = admit(live, request, &mut outcome).await.map_err(|e| e.message)?;
    let response = handle.into_response().await.map_err(|e| e.to_string())?;
    outcome.completed(&response.completion);
    Ok(format.answer(&entry.endpoint, &request_id, delivery, &response))
}
