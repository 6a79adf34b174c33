//! The feed `top` draws: one task follows the gateway's `GET /admin/stats/stream` and publishes the
//! last snapshot, the rate history and the connection's state in a `watch`, reconnecting every
//! second when the connection fails or drops.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use orchestrator_backends::sse::decode::Decoder;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Client, Response, StatusCode, Url};
use tokio::sync::watch;

use crate::stats::snapshot::Snapshot;

/// How many rates the sparkline keeps: five minutes at the feed's half-second interval (what the
/// gateway's own history holds), wider than any terminal.
pub const HISTORY: usize = 600;

/// The pause between a failed attempt and the next.
const RETRY: Duration = Duration::from_secs(1);
/// Bounds a connection attempt to a gateway that does not answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// With an event every half second, this long without a byte means the connection is gone (a peer
/// that vanished without closing it, or a proxy buffering the stream).
const STALL: Duration = Duration::from_secs(5);
/// Bounds reading a refusal's body for its message.
const REFUSAL_READ: Duration = Duration::from_secs(2);

/// What the screen shows.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The last snapshot received, without its history: kept on screen while reconnecting.
    pub snapshot: Option<Snapshot>,
    /// When it came, to say how old it is while the feed is down.
    pub received: Option<Instant>,
    /// Requests per second by snapshot time (Unix ms), oldest first: the stream's first event's
    /// history, then one per event, at most [`HISTORY`].
    pub rates: VecDeque<(u64, f64)>,
    pub link: Link,
}

/// The state of the connection to the feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Link {
    /// The first attempt is under way.
    #[default]
    Connecting,
    Connected,
    /// The last attempt failed or the stream ended, for this reason; another follows in a second.
    Reconnecting(String),
    /// The gateway refused the key (401 or 403), with its status and message: `top` ends, since
    /// asking again with the same key cannot help.
    Refused(String),
}

impl View {
    /// Takes in one event's snapshot.
    pub fn absorb(&mut self, mut snapshot: Snapshot) {
        let history = std::mem::take(&mut snapshot.history);
        if !history.is_empty() {
            // A new stream's first event: the gateway's record of the last minutes replaces
            // ours, which has a gap where the connection was down.
            self.rates = history.iter().map(|p| (p.at_ms, p.rate)).collect();
        }
        // The history already holds the snapshot it came with; a point is added once.
        if self.rates.back().is_none_or(|&(at, _)| snapshot.at_ms > at) {
            self.rates.push_back((snapshot.at_ms, snapshot.requests.rate));
        }
        while self.rates.len() > HISTORY {
            self.rates.pop_front();
        }
        self.snapshot = Some(snapshot);
        self.received = Some(Instant::now());
        self.link = Link::Connected;
    }
}

/// The feed's URL under the gateway's base `url`.
///
/// # Errors
/// When `url` is not an absolute http(s) URL.
pub fn stream_url(url: &str) -> Result<Url, String> {
    let base = Url::parse(url.trim_end_matches('/'))
        .map_err(|e| format!("--url {url}: {e} (give the gateway's base URL, as http://127.0.0.1:8080)"))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(format!("--url {url}: not an http or https URL"));
    }
    Url::parse(&format!(
        "{}/admin/stats/stream",
        base.as_str().trim_end_matches('/')
    ))
    .map_err(|e| format!("--url {url}: {e}"))
}

/// Starts following the feed at `url` (from [`stream_url`]); the task ends when the last receiver
/// is dropped, or after a refusal.
///
/// # Errors
/// When no HTTP client can be built (TLS set-up).
pub fn spawn(url: Url, key: Option<String>) -> Result<watch::Receiver<View>, String> {
    let client = Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(STALL)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
    let (tx, rx) = watch::channel(View::default());
    tokio::spawn(async move {
        loop {
            // Either ends the attempt: `top` quitting drops the receiver, and then nobody is
            // left to read what the feed would say.
            let failure = tokio::select! {
                () = tx.closed() => return,
                failure = follow(&client, &url, key.as_deref(), &tx) => failure,
            };
            let refused = matches!(failure, Link::Refused(_));
            tx.send_modify(|view| view.link = failure);
            if refused {
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    });
    Ok(rx)
}

/// One connection: reads snapshots into `tx` until it fails, and says how.
async fn follow(client: &Client, url: &Url, key: Option<&str>, tx: &watch::Sender<View>) -> Link {
    let mut request = client.get(url.clone()).header(ACCEPT, "text/event-stream");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Link::Reconnecting(describe(&e)),
    };
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Link::Refused(format!("{url} answered {status}{}", message(response).await));
    }
    if !status.is_success() {
        return Link::Reconnecting(format!("{status}{}", message(response).await));
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("text/event-stream") {
        return Link::Reconnecting(format!(
            "not an event stream (content-type {content_type:?}): is --url the gateway?"
        ));
    }
    // `Connected` waits for the first snapshot: a gateway (or a proxy) that answers and then
    // sends nothing is no better than one that does not answer.
    let mut body = response.bytes_stream();
    let mut events = Decoder::default();
    loop {
        match events.next_event() {
            Ok(true) if events.data().is_empty() => continue,
            Ok(true) => match serde_json::from_str::<Snapshot>(events.data()) {
                Ok(snapshot) => tx.send_modify(|view| view.absorb(snapshot)),
                Err(e) => {
                    return Link::Reconnecting(format!(
                        "a snapshot this top cannot read ({e}): is the gateway a matching version?"
                    ));
                }
            },
            Ok(false) => match body.next().await {
                Some(Ok(bytes)) => events.push(&bytes),
                Some(Err(e)) => return Link::Reconnecting(describe(&e)),
                None => return Link::Reconnecting("the gateway ended the feed".into()),
            },
            Err(e) => return Link::Reconnecting(format!("the feed is not valid SSE ({e})")),
        }
    }
}

/// `: MESSAGE` from an error response's body (the API's `{"error": {"message"}}`, or its first
/// line of text), or nothing.
async fn message(response: Response) -> String {
    let Ok(Ok(body)) = tokio::time::timeout(REFUSAL_READ, response.text()).await else {
        return String::new();
    };
    let from_json = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned));
    let text = from_json.unwrap_or_else(|| body.lines().next().unwrap_or_default().trim().to_owned());
    if text.is_empty() {
        return String::new();
    }
    format!(": {}", text.chars().take(200).collect::<String>())
}

/// A transport error in a few words: what failed, and the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if e.is_timeout() {
        format!("no data for {}s", STALL.as_secs())
    } else if e.is_connect() {
        format!("cannot connect ({cause})")
    } else {
        cause.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::snapshot::{Point, Requests};

    fn snapshot(at_ms: u64, rate: f64, history: &[(u64, f64)]) -> Snapshot {
        Snapshot {
            at_ms,
            requests: Requests {
                rate,
                ..Requests::default()
            },
            history: history
                .iter()
                .map(|&(at_ms, rate)| Point {
                    at_ms,
                    rate,
                    ..Point::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn history_starts_the_rates_and_each_event_adds_one() {
        let mut view = View::default();
        view.absorb(snapshot(1000, 3.0, &[(0, 1.0), (500, 2.0), (1000, 3.0)]));
        view.absorb(snapshot(1500, 4.0, &[]));
        let rates: Vec<_> = view.rates.iter().map(|&(_, r)| r).collect();
        assert_eq!(rates, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(view.link, Link::Connected);
        assert!(view.snapshot.unwrap().history.is_empty());
    }

    #[test]
    fn a_new_streams_history_replaces_the_rates_and_they_stay_bounded() {
        let mut view = View::default();
        for i in 0..HISTORY as u64 + 10 {
            view.absorb(snapshot(i, 1.0, &[]));
        }
        assert_eq!(view.rates.len(), HISTORY);
        view.absorb(snapshot(9_000, 5.0, &[(8_500, 4.0)]));
        assert_eq!(view.rates, [(8_500, 4.0), (9_000, 5.0)]);
    }

    #[test]
    fn the_stream_url_is_under_the_base() {
        let url = stream_url("http://127.0.0.1:8080/").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/admin/stats/stream");
        let url = stream_url("https://gw.example/prefix").unwrap();
        assert_eq!(url.as_str(), "https://gw.example/prefix/admin/stats/stream");
        assert!(stream_url("127.0.0.1:8080").is_err());
        assert!(stream_url("ftp://h/").is_err());
    }
}
