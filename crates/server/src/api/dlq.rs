//! The dead-letter queue's admin endpoints (an admin key when auth is on):
//! `GET /admin/dlq` lists entries, `GET /admin/dlq/{id}` shows one, `POST /admin/dlq/replay`
//! sends entries through the running pipeline again, `DELETE /admin/dlq` purges. In cluster mode
//! they work on the stream every node shares, from any node.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::body::parse_json;
use super::error::ApiError;
use super::format::ByPath;
use crate::dlq::cli::parse_since;
use crate::dlq::entry::unix_ms;
use crate::dlq::replay::{Selection, replay};
use crate::dlq::{DeadLetterQueue, DlqError, ListFilter};
use crate::gateway::Gateway;
use crate::gateway::live::Live;

/// Longest page `GET /admin/dlq` returns.
const MAX_PAGE: usize = 1000;

/// `GET /admin/dlq` query: `since` (RFC 3339 or an age like `2h`), `after` (an id, for the next
/// page), `limit` (at most 1000, the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    since: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `POST /admin/dlq/replay` body: exactly one of `ids`, `all: true`, `since`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    ids: Option<Vec<u64>>,
    #[serde(default)]
    all: bool,
    since: Option<String>,
}

pub async fn list(
    State(state): State<Arc<Gateway>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let live = state.live();
    let result = async {
        let store = queue(&state, &live)?;
        let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
        let since_ms = query.since.as_deref().map(|s| since_ms("since", s)).transpose()?;
        let limit = query.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let filter = ListFilter {
            since_ms,
            limit: Some(limit),
            after_id: query.after,
        };
        let entries = store.list(filter).await.map_err(storage)?;
        let total = store.count().await.map_err(storage)?;
        let next = (entries.len() == limit)
            .then(|| entries.last().map(|e| e.id))
            .flatten();
        Ok::<_, ApiError>(Json(json!({
            "object": "list",
            "data": entries,
            "total": total,
            "next_after": next,
        })))
    };
    result.await.into_response()
}

pub async fn show(State(state): State<Arc<Gateway>>, id: Result<Path<u64>, PathRejection>) -> Response {
    let live = state.live();
    let result = async {
        let Ok(Path(id)) = id else {
            return Err(ApiError::invalid(
                "id",
                "a dead-letter id is a whole number, as GET /admin/dlq lists them",
            ));
        };
        match queue(&state, &live)?.get(id).await.map_err(storage)? {
            Some(entry) => Ok(Json(entry)),
            None => Err(ApiError::not_found(
                "id",
                format!("no dead-letter entry with id {id}"),
            )),
        }
    };
    result.await.into_response()
}

pub async fn replay_entries(State(state): State<Arc<Gateway>>, body: Bytes) -> Response {
    let live = state.live();
    let result = async {
        let store = queue(&state, &live)?;
        let body: ReplayBody = parse_json(&body)?;
        let selection = match (body.ids, body.all, body.since) {
            (Some(ids), false, None) if !ids.is_empty() => Selection::Ids(ids),
            (None, true, None) => Selection::All,
            (None, false, Some(since)) => Selection::Since(since_ms("since", &since)?),
            _ => {
                return Err(ApiError::invalid(
                    "ids",
                    "send exactly one of `ids` (a non-empty list), `all: true` or `since`",
                ));
            }
        };
        let report = replay(&live, &ByPath, state.responses.as_ref(), &store, selection)
            .await
            .map_err(storage)?;
        let remaining = store.count().await.map_err(storage)?;
        Ok(Json(json!({
            "replayed": report.replayed,
            "failed": report.failed,
            "missing": report.missing,
            "claimed_elsewhere": report.claimed_elsewhere,
            "remaining": remaining,
        })))
    };
    result.await.into_response()
}

pub async fn purge(State(state): State<Arc<Gateway>>) -> Response {
    let live = state.live();
    let result = async {
        let purged = queue(&state, &live)?.purge().await.map_err(storage)?;
        Ok::<_, ApiError>(Json(json!({ "purged": purged })))
    };
    result.await.into_response()
}

/// The shared stream in cluster mode, else this node's file.
fn queue(state: &Gateway, live: &Live) -> Result<DeadLetterQueue, ApiError> {
    if let Some(cluster) = &state.cluster {
        return Ok(DeadLetterQueue::Shared(cluster.dlq.clone()));
    }
    live.dlq.clone().map(DeadLetterQueue::File).ok_or_else(|| {
        ApiError::not_found(
            "dlq",
            "the dead-letter queue is off; add a [dlq] section with a `path` to the config",
        )
    })
}

fn since_ms(param: &str, value: &str) -> Result<u64, ApiError> {
    let time = parse_since(value).map_err(|message| ApiError::invalid(param, message))?;
    Ok(unix_ms(time))
}

fn storage(error: DlqError) -> ApiError {
    match error {
        DlqError::Shared(_) => ApiError::cluster_unavailable(error.to_string()),
        error => ApiError::internal(format!("the dead-letter file: {error}")),
    }
}
