//! The head-read timeout: a connection that has not sent a whole request head
//! `header_read_timeout_ms` after it opened, or after its last response ended, is closed.
//!
//! Hyper can do this itself, but it arms a timer for every request head, which made the timer
//! a measurable part of a request's CPU time. Here a request only swaps one atomic when it starts
//! and when its response ends; one sweeper task per server looks at every open connection a few
//! times per timeout and cuts those idle for too long, so a connection is closed at most a
//! quarter of the timeout (and never more than a second) late.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A connection's state while a request is being answered on it.
const BUSY: u64 = u64::MAX;
/// A connection the sweeper has cut.
const EXPIRED: u64 = u64::MAX - 1;

/// Every open connection of one server, and how long each may wait for a request head.
pub struct Watch {
    /// `None`: no limit; connections are not watched.
    limit: Option<Duration>,
    epoch: Instant,
    connections: Mutex<Vec<Weak<Connection>>>,
}

/// One connection's clock: `BUSY`, `EXPIRED`, or the time (ms since the watch's epoch) it began
/// waiting for a request head.
pub struct Connection {
    state: AtomicU64,
    epoch: Instant,
    /// Cancelled when the server closes its connections, or when the sweeper cuts this one.
    pub cut: CancellationToken,
}

impl Watch {
    pub fn new(limit: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            epoch: Instant::now(),
            connections: Mutex::new(Vec::new()),
        })
    }

    /// Starts watching a connection that has just opened. Its `cut` is cancelled with
    /// `closing` (shutdown) or when it has waited too long for a head.
    pub fn open(&self, closing: &CancellationToken) -> Arc<Connection> {
        let cut = match self.limit {
            Some(_) => closing.child_token(),
            None => closing.clone(),
        };
        let connection = Arc::new(Connection {
            state: AtomicU64::new(millis_since(self.epoch)),
            epoch: self.epoch,
            cut,
        });
        if self.limit.is_some() {
            self.lock().push(Arc::downgrade(&connection));
        }
        connection
    }

    /// Sweeps the connections until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(limit) = self.limit else { return };
        let period = (limit / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.sweep(),
            }
        }
    }

    /// Cuts every connection that has waited for a head longer than the limit, and forgets the
    /// ones that have closed.
    fn sweep(&self) {
        let Some(limit) = self.limit else { return };
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let now = millis_since(self.epoch);
        self.lock().retain(|weak| {
            let Some(connection) = weak.upgrade() else {
                return false;
            };
            let since = connection.state.load(Ordering::Relaxed);
            let waited_too_long = since < EXPIRED && now.saturating_sub(since) >= limit;
            // A request that began meanwhile wins: the swap fails and the connection stays.
            if waited_too_long
                && connection
                    .state
                    .compare_exchange(since, EXPIRED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                connection.cut.cancel();
                return false;
            }
            true
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Connection>>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Connection {
    /// Whether the sweeper cut this connection.
    pub fn expired(&self) -> bool {
        self.state.load(Ordering::Relaxed) == EXPIRED
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A request being answered: the connection is busy until this is dropped (with the response
/// body, once hyper has written it), and then waits for the next head.
struct Busy(Arc<Connection>);

impl Busy {
    fn begin(connection: &Arc<Connection>) -> Self {
        // Once cut, the connection stays cut.
        let _ = connection
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s != EXPIRED).then_some(BUSY)
            });
        Self(connection.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let idle_since = millis_since(self.0.epoch);
        let _ = self
            .0
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s != EXPIRED).then_some(idle_since)
            });
    }
}

/// A connection's service, marking the connection busy from each request's head to the end of
/// its response.
pub struct Watched<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, connection: Arc<Connection>) -> Self {
        Self { inner, connection }
    }
}

impl<S, B> Service<Request<Incoming>> for Watched<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<BusyBody<B>>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        Answer {
            busy: Some(Busy::begin(&self.connection)),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The service's answer to one request; its body carries the request's [`Busy`].
    pub struct Answer<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for Answer<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<BusyBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let busy = this.busy.take();
        Poll::Ready(Ok(response.map(|body| BusyBody { body, _busy: busy })))
    }
}

pin_project! {
    /// A response body that keeps its connection busy until hyper drops it.
    pub struct BusyBody<B> {
        #[pin]
        body: B,
        _busy: Option<Busy>,
    }
}

impl<B: Body> Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_a_connection_idle_past_the_limit_is_cut() {
        let watch = Watch::new(Some(Duration::from_secs(5)));
        let closing = CancellationToken::new();
        let idle = watch.open(&closing);
        let answering = watch.open(&closing);
        let busy = Busy::begin(&answering);

        tokio::time::advance(Duration::from_secs(4)).await;
        watch.sweep();
        assert!(!idle.cut.is_cancelled());

        tokio::time::advance(Duration::from_secs(2)).await;
        watch.sweep();
        assert!(idle.cut.is_cancelled() && idle.expired());
        assert!(
            !answering.cut.is_cancelled(),
            "a connection answering a request is never cut"
        );

        // The clock starts again when the response ends.
        drop(busy);
        tokio::time::advance(Duration::from_secs(4)).await;
        watch.sweep();
        assert!(!answering.cut.is_cancelled());
        tokio::time::advance(Duration::from_secs(1)).await;
        watch.sweep();
        assert!(answering.cut.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_connections_are_forgotten() {
        let watch = Watch::new(Some(Duration::from_secs(5)));
        let closing = CancellationToken::new();
        let open = watch.open(&closing);
        drop(watch.open(&closing));
        watch.sweep();
        assert_eq!(watch.lock().len(), 1);
        drop(open);
        watch.sweep();
        assert!(watch.lock().is_empty());
    }
}
