//! `GET /admin/stats` (the node's latest snapshot as JSON) and `GET /admin/stats/stream` (a
//! snapshot every half second as server-sent events, the first with the last few minutes'
//! history); `GET /dashboard`, the page that draws them.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::stream;

use super::error::ApiError;
use super::json_body;
use crate::gateway::Gateway;

/// The dashboard: one page with its styles and scripts inline, so it works offline.
const DASHBOARD: &str = include_str!("../stats/dashboard.html");

/// `GET /admin/stats`.
pub async fn latest(State(state): State<Arc<Gateway>>) -> Response {
    match state.stats.latest() {
        Some(latest) => json_body(latest.json().to_string()),
        None => ApiError::stats_not_ready().into_response(),
    }
}

/// `GET /admin/stats/stream`. Ends when the node starts draining.
pub async fn stream(State(state): State<Arc<Gateway>>) -> Response {
    let rx = state.stats.subscribe();
    let events = stream::unfold((rx, state, true), |(mut rx, state, first)| async move {
        rx.changed().await.ok()?;
        let latest = rx.borrow_and_update().clone()?;
        // Every viewer's event is copied from the one JSON text of the snapshot.
        let data: Arc<str> = if first {
            state.stats.with_history(&latest).into()
        } else {
            latest.json()
        };
        Some((
            Ok::<_, Infallible>(Event::default().data(data)),
            (rx, state, false),
        ))
    });
    let mut response = Sse::new(events).into_response();
    // Proxies must pass each event on as it comes.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `GET /dashboard`. The page holds no data: the feed it reads asks for the admin key.
pub async fn dashboard() -> Response {
    Html(DASHBOARD).into_response()
}
