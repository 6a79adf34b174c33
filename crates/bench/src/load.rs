//! The load generator: one run against one URL, open loop (fixed rate, latency from each
//! request's scheduled instant) or closed loop (N workers, each sending its next request when
//! the previous one ends).
//!
//! Outcomes go into one shared [`Recorder`] behind a mutex, held only to add a few numbers.

use crate::schedule::Schedule;
use crate::sse::StreamTimer;
use crate::stats::{Recorder, record};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop at this many requests/s.
    Rate(f64),
    /// Closed loop with this many requests in flight.
    Concurrency(usize),
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The full URLs to POST to (…/v1/chat/completions), taken in turn.
    pub urls: Arc<[String]>,
    /// Which URL the next request takes.
    pub turn: Arc<AtomicUsize>,
    /// Headers sent besides content-type (shared: the spec is cloned for every request).
    pub headers: Arc<HeaderMap>,
    /// The JSON request body.
    pub body: Bytes,
    /// Whether the body asks for a stream (SSE): TTFT and ITL are then measured.
    pub stream: bool,
    pub load: Load,
    pub duration: Duration,
    /// Open loop: at most this many requests in flight; a request over it waits for a slot,
    /// and that wait counts in its latency (it is measured from the scheduled instant).
    pub max_in_flight: usize,
    /// Per-request deadline; a request over it counts as a timeout.
    pub timeout: Duration,
}

/// An HTTP client sized for load: HTTP/1.1, keep-alive, TCP_NODELAY (small SSE frames would
/// otherwise wait on Nagle's algorithm), an idle pool as large as the in-flight bound.
///
/// # Errors
/// When reqwest cannot build a client (its TLS backend failed to initialise).
pub fn client(max_in_flight: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_in_flight)
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
}

/// What a run recorded, and how long it took from its start until its last request finished.
#[derive(Debug)]
pub struct Measured {
    pub rec: Recorder,
    pub elapsed: Duration,
}

/// Runs `spec` and returns what it recorded; ends when every started request has finished
/// (each is bounded by `spec.timeout`).
pub async fn run(client: &reqwest::Client, spec: &RunSpec) -> Measured {
    let start = Instant::now();
    let rec = run_inner(client, spec).await;
    Measured {
        rec,
        elapsed: start.elapsed(),
    }
}

async fn run_inner(client: &reqwest::Client, spec: &RunSpec) -> Recorder {
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    match spec.load {
        Load::Rate(rate) => open_loop(client, spec, rate, &recorder).await,
        Load::Concurrency(n) => closed_loop(client, spec, n, &recorder).await,
    }
    // Every task holding a clone has been joined above.
    match Arc::try_unwrap(recorder) {
        Ok(m) => m.into_inner().unwrap_or_else(PoisonError::into_inner),
        Err(shared) => std::mem::take(&mut *lock(&shared)),
    }
}

fn lock(r: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    // A panicking request task cannot leave the counters half-updated in a harmful way.
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn open_loop(client: &reqwest::Client, spec: &RunSpec, rate: f64, rec: &Arc<Mutex<Recorder>>) {
    let Some(schedule) = Schedule::new(rate, spec.duration) else {
        return;
    };
    let slots = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let mut next = 0;
    while next < schedule.count() {
        let due = schedule.due(start.elapsed());
        while next < due {
            let at = start + schedule.offset(next);
            let (client, spec, rec, slots) = (client.clone(), spec.clone(), rec.clone(), slots.clone());
            tasks.spawn(async move {
                // Closed only if dropped, which this function never does while tasks run.
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let lag = Instant::now().saturating_duration_since(at);
                let outcome = one(&client, &spec, at).await;
                let mut r = lock(&rec);
                record(&mut r.send_lag, lag);
                outcome.add_to(&mut r);
            });
            next += 1;
        }
        lock(rec).sent = next;
        // Finished tasks are reaped as we go so the set does not hold every result to the end.
        while tasks.try_join_next().is_some() {}
        if next < schedule.count() {
            tokio::time::sleep_until(start + schedule.offset(next)).await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(client: &reqwest::Client, spec: &RunSpec, workers: usize, rec: &Arc<Mutex<Recorder>>) {
    let end = Instant::now() + spec.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers.max(1) {
        let (client, spec, rec) = (client.clone(), spec.clone(), rec.clone());
        tasks.spawn(async move {
            while Instant::now() < end {
                lock(&rec).sent += 1;
                let outcome = one(&client, &spec, Instant::now()).await;
                outcome.add_to(&mut lock(&rec));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    Ok {
        latency: Duration,
        ttft: Option<Duration>,
        itl: Vec<Duration>,
    },
    Status(u16),
    Connect,
    Timeout,
    Other,
}

impl Outcome {
    fn add_to(self, r: &mut Recorder) {
        match self {
            Outcome::Ok { latency, ttft, itl } => {
                r.ok += 1;
                record(&mut r.latency, latency);
                if let Some(ttft) = ttft {
                    record(&mut r.ttft, ttft);
                }
                for gap in itl {
                    record(&mut r.itl, gap);
                }
            }
            Outcome::Status(s) => *r.status_errors.entry(s).or_default() += 1,
            Outcome::Connect => r.connect_errors += 1,
            Outcome::Timeout => r.timeouts += 1,
            Outcome::Other => r.other_errors += 1,
        }
    }
}

/// Sends one request; latency and TTFT are measured from `start`.
async fn one(client: &reqwest::Client, spec: &RunSpec, start: Instant) -> Outcome {
    match tokio::time::timeout(spec.timeout, exchange(client, spec, start)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) if e.is_connect() => Outcome::Connect,
        Ok(Err(e)) if e.is_timeout() => Outcome::Timeout,
        Ok(Err(_)) => Outcome::Other,
        Err(_) => Outcome::Timeout,
    }
}

async fn exchange(client: &reqwest::Client, spec: &RunSpec, start: Instant) -> reqwest::Result<Outcome> {
    let url = &spec.urls[spec.turn.fetch_add(1, Ordering::Relaxed) % spec.urls.len()];
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(spec.body.clone());
    if !spec.headers.is_empty() {
        request = request.headers((*spec.headers).clone());
    }
    let response = request.send().await?;
    let status = response.status();
    if !status.is_success() {
        // Read the body so the connection can be reused.
        let _ = response.bytes().await;
        return Ok(Outcome::Status(status.as_u16()));
    }
    if !spec.stream {
        response.bytes().await?;
        return Ok(Outcome::Ok {
            latency: start.elapsed(),
            ttft: None,
            itl: Vec::new(),
        });
    }
    let mut timer = StreamTimer::new(start.into_std());
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        timer.on_bytes(std::time::Instant::now(), &chunk);
    }
    if !timer.done {
        return Ok(Outcome::Other);
    }
    Ok(Outcome::Ok {
        latency: start.elapsed(),
        ttft: timer.ttft(),
        itl: timer.itl,
    })
}
