//! The router with scripted backends, under paused time: retries only before the first token,
//! fallback groups, circuit breakers, Retry-After, per-backend limits, session affinity, active
//! health checks, and the error that names every backend tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use orchestrator_backends::routing::balance::Balancing;
use orchestrator_backends::routing::breaker::{BreakerConfig, BreakerState};
use orchestrator_backends::routing::health::{self, HealthConfig, HealthProbe};
use orchestrator_backends::routing::replica::{Replica, ReplicaConfig};
use orchestrator_backends::routing::retry::RetryConfig;
use orchestrator_backends::routing::{Group, Route, Router};
use tokio::sync::Semaphore;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId, TokenStream,
    WorkerChunk, WorkerError,
};

/// What a scripted backend does with its next call.
#[derive(Clone)]
enum Script {
    /// Answers "ok from NAME".
    Answer,
    /// Fails before any token.
    Fail(WorkerError),
    /// One token, then the stream breaks.
    CutAfterFirst,
    /// A token once `gate` lets it through (holds the call open).
    Held(Arc<Semaphore>),
}

struct Scripted {
    name: &'static str,
    calls: AtomicUsize,
    /// When each call came (paused time).
    times: Mutex<Vec<tokio::time::Instant>>,
    script: Mutex<Script>,
}

impl Scripted {
    fn new(name: &'static str, script: Script) -> Arc<Self> {
        Arc::new(Self {
            name,
            calls: AtomicUsize::new(0),
            times: Mutex::new(Vec::new()),
            script: Mutex::new(script),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }
}

#[async_trait]
impl ModelWorker for Scripted {
    async fn infer(&self, _prompt: &str) -> Result<Vec<String>, WorkerError> {
        Ok(vec![format!("ok from {}", self.name)])
    }

    async fn infer_stream(&self, _call: InferenceCall) -> Result<TokenStream, WorkerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.times.lock().unwrap().push(tokio::time::Instant::now());
        let script = self.script.lock().unwrap().clone();
        let name = self.name;
        match script {
            Script::Answer => Ok(stream::iter([Ok(WorkerChunk::Token(format!("ok from {name}")))]).boxed()),
            Script::Fail(e) => Err(e),
            Script::CutAfterFirst => Ok(stream::iter([
                Ok(WorkerChunk::Token("first".into())),
                Err(WorkerError::new(format!("{name}: connection reset"))),
            ])
            .boxed()),
            Script::Held(gate) => Ok(stream::once(async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                Ok(WorkerChunk::Token(format!("ok from {name}")))
            })
            .boxed()),
        }
    }
}

fn unavailable(name: &str) -> Script {
    Script::Fail(WorkerError::retryable(format!("{name}: answered 503: overloaded")).with_status(503))
}

fn replica(worker: &Arc<Scripted>, config: ReplicaConfig) -> Arc<Replica> {
    Arc::new(Replica::new(worker.name, worker.clone(), config))
}

fn no_breaker() -> ReplicaConfig {
    ReplicaConfig {
        breaker: BreakerConfig {
            consecutive_failures: 0,
            error_rate: 0.0,
            ..BreakerConfig::default()
        },
        ..ReplicaConfig::default()
    }
}

fn router(groups: Vec<Vec<Arc<Replica>>>, balancing: Balancing, retries: u32) -> Router {
    let retry = RetryConfig {
        max: retries,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
    };
    router_with(groups, balancing, retry)
}

fn router_with(groups: Vec<Vec<Arc<Replica>>>, balancing: Balancing, retry: RetryConfig) -> Router {
    let mut router = Router::new();
    let groups = groups.into_iter().map(|g| Group::new(g, balancing)).collect();
    router.insert("m", Route::new(groups, retry));
    router
}

fn call(session: &str) -> InferenceCall {
    let request =
        InferenceRequest::chat(SessionId::new(session), vec![ChatMessage::user("hi")]).with_model("m");
    InferenceCall::new(RequestId(1), request, "hi")
}

/// The text of a call's stream, or its error.
async fn run(router: &Router, session: &str) -> Result<Vec<Result<String, String>>, WorkerError> {
    let stream = router.infer_stream(call(session)).await?;
    Ok(stream
        .map(|item| match item {
            Ok(WorkerChunk::Token(t)) => Ok(t),
            Ok(other) => Ok(format!("{other:?}")),
            Err(e) => Err(e.message),
        })
        .collect()
        .await)
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_first_token_is_retried_on_another_replica() {
    let a = Scripted::new("a", unavailable("a"));
    let b = Scripted::new("b", Script::Answer);
    let router = router(
        vec![vec![replica(&a, no_breaker()), replica(&b, no_breaker())]],
        Balancing::RoundRobin,
        2,
    );
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from b".to_string())]);
    assert_eq!((a.calls(), b.calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn no_retry_after_the_first_token() {
    let a = Scripted::new("a", Script::CutAfterFirst);
    let b = Scripted::new("b", Script::Answer);
    let router = router(
        vec![vec![replica(&a, no_breaker()), replica(&b, no_breaker())]],
        Balancing::RoundRobin,
        2,
    );
    assert_eq!(
        run(&router, "s").await.unwrap(),
        [Ok("first".to_string()), Err("a: connection reset".to_string())]
    );
    assert_eq!(b.calls(), 0, "output reached the caller: nothing is retried");
}

#[tokio::test(start_paused = true)]
async fn exhausted_groups_fall_back_and_the_error_names_every_backend() {
    let a = Scripted::new("a", unavailable("a"));
    let b = Scripted::new("b", unavailable("b"));
    let c = Scripted::new("c", Script::Answer);
    let router = router(
        vec![
            vec![replica(&a, no_breaker()), replica(&b, no_breaker())],
            vec![replica(&c, no_breaker())],
        ],
        Balancing::RoundRobin,
        1,
    );
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from c".to_string())]);
    assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 1));

    c.set(unavailable("c"));
    let error = run(&router, "s").await.unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.status, Some(503));
    // Round robin started this time at b.
    assert_eq!(
        error.message,
        "Every backend of model `m` failed: b: answered 503: overloaded; a: answered 503: overloaded; \
         c: answered 503: overloaded, 2 times"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_wait_their_backoff_and_a_cancel_ends_the_wait() {
    let a = Scripted::new("a", unavailable("a"));
    let retry = RetryConfig {
        max: 2,
        initial_backoff_ms: 10_000,
        max_backoff_ms: 15_000,
    };
    let router = router_with(
        vec![vec![replica(&a, no_breaker())]],
        Balancing::RoundRobin,
        retry,
    );
    assert!(run(&router, "s").await.is_err());
    let times = a.times.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "the first call and two retries");
    // Full jitter: each wait is drawn up to its bound (10 s, then 15 s, capped from 20 s).
    let waits = [times[1] - times[0], times[2] - times[1]];
    assert!(waits[0] <= Duration::from_secs(10), "{waits:?}");
    assert!(waits[1] <= Duration::from_secs(15), "{waits:?}");
    // Both draws at zero is a chance of about one in 10^8.
    assert!(waits[0] + waits[1] > Duration::ZERO, "{waits:?}");

    // A caller that goes away while the router waits to retry ends the wait.
    let call = call("s");
    let cancel = call.cancel.clone();
    let waiting = tokio::spawn({
        let router = Arc::new(router);
        async move { router.infer_stream(call).await.err().unwrap() }
    });
    while a.calls() < 4 {
        tokio::task::yield_now().await;
    }
    // (A wait drawn at zero lets a retry through before the cancel: count from here.)
    let calls_at_cancel = a.calls();
    cancel.cancel();
    let error = waiting.await.unwrap();
    assert_eq!(error.message, "cancelled while waiting to retry");
    assert_eq!(a.calls(), calls_at_cancel, "no retry after the cancel");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let a = Scripted::new(
        "a",
        Script::Fail(WorkerError::new("a: answered 400: bad prompt").with_status(400)),
    );
    let b = Scripted::new("b", Script::Answer);
    let router = router(
        vec![vec![replica(&a, no_breaker()), replica(&b, no_breaker())]],
        Balancing::RoundRobin,
        2,
    );
    let error = run(&router, "s").await.unwrap_err();
    assert_eq!(error.status, Some(400));
    assert_eq!(error.message, "a: answered 400: bad prompt");
    assert_eq!(b.calls(), 0);

    // After a retryable failure elsewhere, the final error still names every backend tried.
    b.set(unavailable("b"));
    let error = run(&router, "s").await.unwrap_err();
    assert_eq!(error.status, Some(400));
    assert_eq!(
        error.message,
        "a: answered 400: bad prompt (tried before: b: answered 503: overloaded)"
    );
    let tried: Vec<_> = error.attempts.iter().map(|t| t.backend.as_str()).collect();
    assert_eq!(tried, ["b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_skips_and_probes_after_the_cooldown() {
    let a = Scripted::new("a", unavailable("a"));
    let b = Scripted::new("b", Script::Answer);
    let config = ReplicaConfig {
        breaker: BreakerConfig {
            consecutive_failures: 2,
            error_rate: 0.0,
            window: 10,
            cooldown_ms: 5_000,
        },
        ..ReplicaConfig::default()
    };
    let ra = replica(&a, config);
    // One replica per group, so every call tries a first, then falls back to b.
    let router = router(
        vec![vec![ra.clone()], vec![replica(&b, config)]],
        Balancing::RoundRobin,
        0,
    );
    for _ in 0..2 {
        assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from b".to_string())]);
    }
    assert_eq!(ra.breaker_state(), BreakerState::Open);
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from b".to_string())]);
    assert_eq!(a.calls(), 2, "an open breaker keeps calls away");

    tokio::time::advance(Duration::from_millis(5_000)).await;
    a.set(Script::Answer);
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from a".to_string())]);
    assert_eq!(ra.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn retry_after_keeps_a_backend_out_for_that_long() {
    let a = Scripted::new(
        "a",
        Script::Fail(WorkerError {
            retry_after: Some(Duration::from_secs(30)),
            ..WorkerError::retryable("a: answered 429: slow down").with_status(429)
        }),
    );
    let b = Scripted::new("b", Script::Answer);
    let router = router(
        vec![vec![replica(&a, no_breaker())], vec![replica(&b, no_breaker())]],
        Balancing::RoundRobin,
        0,
    );
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from b".to_string())]);
    a.set(Script::Answer);
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from b".to_string())]);
    assert_eq!(a.calls(), 1, "resting");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(run(&router, "s").await.unwrap(), [Ok("ok from a".to_string())]);
}

#[tokio::test(start_paused = true)]
async fn a_full_backend_is_passed_over_and_waited_for_when_all_are_full() {
    let gate = Arc::new(Semaphore::new(0));
    let a = Scripted::new("a", Script::Held(gate.clone()));
    let b = Scripted::new("b", Script::Held(gate.clone()));
    let one = ReplicaConfig {
        max_in_flight: 1,
        ..no_breaker()
    };
    let router = Arc::new(router(
        vec![vec![replica(&a, one), replica(&b, one)]],
        Balancing::RoundRobin,
        0,
    ));
    // Two held calls fill both backends (the router waits for each first token).
    let first = tokio::spawn({
        let router = router.clone();
        async move { run(&router, "s1").await }
    });
    let second = tokio::spawn({
        let router = router.clone();
        async move { run(&router, "s2").await }
    });
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        (a.calls(), b.calls()),
        (1, 1),
        "the second call went to the free backend"
    );
    // A third call finds both full and waits rather than failing.
    let third = tokio::spawn({
        let router = router.clone();
        async move { run(&router, "s3").await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!third.is_finished());
    assert_eq!(a.calls() + b.calls(), 2);
    gate.add_permits(3);
    for task in [first, second, third] {
        assert!(task.await.unwrap().unwrap()[0].is_ok());
    }
    assert_eq!(a.calls() + b.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn sessions_keep_their_replica() {
    let workers: Vec<Arc<Scripted>> = ["r0", "r1", "r2"]
        .into_iter()
        .map(|n| Scripted::new(n, Script::Answer))
        .collect();
    let replicas = workers.iter().map(|w| replica(w, no_breaker())).collect();
    let router = router(vec![replicas], Balancing::SessionAffinity, 0);
    for s in 0..30 {
        let session = format!("user-{s}");
        let first = run(&router, &session).await.unwrap();
        for _ in 0..3 {
            assert_eq!(run(&router, &session).await.unwrap(), first);
        }
    }
    assert!(
        workers.iter().all(|w| w.calls() > 0),
        "sessions spread over every replica"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_sharing_a_prompt_prefix_meet_on_one_replica_whatever_their_session() {
    let workers: Vec<Arc<Scripted>> = ["r0", "r1", "r2"]
        .into_iter()
        .map(|n| Scripted::new(n, Script::Answer))
        .collect();
    let replicas = workers.iter().map(|w| replica(w, no_breaker())).collect();
    let router = router(vec![replicas], Balancing::PrefixAffinity, 0);
    let answer = |session: &str, prefix_key: Option<u64>| {
        let mut call = call(session);
        call.prefix_key = prefix_key;
        let router = &router;
        async move {
            let stream = router.infer_stream(call).await.unwrap();
            stream
                .map(|item| format!("{:?}", item.unwrap()))
                .collect::<Vec<_>>()
                .await
        }
    };
    let mut replicas_used = std::collections::HashSet::new();
    for prefix in 0..20u64 {
        let first = answer("session-0", Some(prefix)).await;
        for s in 1..5 {
            assert_eq!(answer(&format!("session-{s}"), Some(prefix)).await, first);
        }
        replicas_used.insert(first);
    }
    assert!(replicas_used.len() > 1, "prefixes spread over the replicas");
    // Without a prefix key, the session decides, as with session affinity.
    let by_session = answer("user-7", None).await;
    assert_eq!(answer("user-7", None).await, by_session);
}

#[tokio::test(start_paused = true)]
async fn unknown_models_are_404() {
    let router = Router::new();
    let error = router.infer_stream(call("s")).await.err().unwrap();
    assert_eq!(error.status, Some(404));
    assert_eq!(error.message, "the model `m` does not exist");
}

/// A health probe whose answer a test sets.
struct ScriptedProbe {
    answer: Mutex<Result<Option<usize>, String>>,
    probes: AtomicUsize,
}

impl ScriptedProbe {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(Ok(None)),
            probes: AtomicUsize::new(0),
        })
    }

    fn set(&self, answer: Result<Option<usize>, String>) {
        *self.answer.lock().unwrap() = answer;
    }
}

#[async_trait]
impl HealthProbe for ScriptedProbe {
    async fn probe(&self) -> Result<Option<usize>, String> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.answer.lock().unwrap().clone()
    }
}

const CHECKS: HealthConfig = HealthConfig {
    interval_ms: 1_000,
    timeout_ms: 500,
    unhealthy_after: 2,
    healthy_after: 3,
};

/// Lets the first probes (at once when checks start) run, and moves to the middle of an
/// interval, so that later waits never end on the instant a probe is due.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(CHECKS.interval_ms / 2)).await;
}

/// Lets the check loop run its probe at each of the next `n` ticks.
async fn ticks(n: u64) {
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(CHECKS.interval_ms)).await;
    }
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn failing_health_checks_take_a_replica_out_and_passing_ones_bring_it_back() {
    let a = Scripted::new("a", Script::Answer);
    let b = Scripted::new("b", Script::Answer);
    let (ra, rb) = (replica(&a, no_breaker()), replica(&b, no_breaker()));
    let probe = ScriptedProbe::new();
    let task = health::watch(&ra, probe.clone(), CHECKS).expect("checks are on");
    settle().await;
    let router = router(vec![vec![ra.clone(), rb]], Balancing::SessionAffinity, 0);
    // Find a session that prefers a.
    let session = (0..100)
        .map(|i| format!("s{i}"))
        .find(|s| {
            let before = a.calls();
            futures_util::FutureExt::now_or_never(run(&router, s)).is_some() && a.calls() > before
        })
        .expect("some session prefers a");

    probe.set(Err("GET /health answered 503: Loading model".into()));
    ticks(1).await;
    assert!(ra.health().is_healthy(), "one failed probe is not enough");
    ticks(1).await;
    assert!(!ra.health().is_healthy());
    let before = a.calls();
    assert_eq!(
        run(&router, &session).await.unwrap(),
        [Ok("ok from b".to_string())]
    );
    assert_eq!(a.calls(), before, "an unhealthy replica gets no calls");

    probe.set(Ok(None));
    ticks(2).await;
    assert!(!ra.health().is_healthy(), "two good probes of three needed");
    ticks(1).await;
    assert!(ra.health().is_healthy());
    assert_eq!(
        run(&router, &session).await.unwrap(),
        [Ok("ok from a".to_string())]
    );

    // The checks end with the replica.
    drop(router);
    drop(ra);
    ticks(1).await;
    assert!(task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn when_every_replica_is_unhealthy_the_error_says_why() {
    let a = Scripted::new("a", Script::Answer);
    let ra = replica(&a, no_breaker());
    let probe = ScriptedProbe::new();
    probe.set(Err("GET http://a/health failed: connection refused".into()));
    health::watch(&ra, probe.clone(), CHECKS);
    let router = router(vec![vec![ra]], Balancing::RoundRobin, 0);
    settle().await;
    ticks(1).await;
    let error = run(&router, "s").await.unwrap_err();
    assert_eq!(error.status, Some(503));
    assert!(error.retryable);
    assert_eq!(
        error.message,
        "Every backend of model `m` failed: a: skipped: failing its health checks \
         (GET http://a/health failed: connection refused)"
    );
    assert_eq!(a.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_counts_as_failed() {
    struct Hangs;
    #[async_trait]
    impl HealthProbe for Hangs {
        async fn probe(&self) -> Result<Option<usize>, String> {
            std::future::pending().await
        }
    }
    let a = Scripted::new("a", Script::Answer);
    let ra = replica(&a, no_breaker());
    health::watch(&ra, Arc::new(Hangs), CHECKS);
    settle().await;
    ticks(2).await;
    assert!(!ra.health().is_healthy());
    assert_eq!(ra.health().problem().as_deref(), Some("no answer within 500 ms"));
}

#[tokio::test(start_paused = true)]
async fn least_outstanding_counts_the_upstream_queue_its_probe_reports() {
    let a = Scripted::new("a", Script::Answer);
    let b = Scripted::new("b", Script::Answer);
    let (ra, rb) = (replica(&a, no_breaker()), replica(&b, no_breaker()));
    let (pa, pb) = (ScriptedProbe::new(), ScriptedProbe::new());
    pa.set(Ok(Some(40)));
    pb.set(Ok(Some(0)));
    health::watch(&ra, pa, CHECKS);
    health::watch(&rb, pb.clone(), CHECKS);
    let router = router(vec![vec![ra.clone(), rb.clone()]], Balancing::LeastOutstanding, 0);
    settle().await;
    assert_eq!(ra.health().waiting(), 40);
    for i in 0..20 {
        run(&router, &format!("s{i}")).await.unwrap();
    }
    assert_eq!((a.calls(), b.calls()), (0, 20), "a's own queue is long");

    pb.set(Ok(Some(100)));
    ticks(1).await;
    for i in 0..20 {
        run(&router, &format!("t{i}")).await.unwrap();
    }
    assert_eq!(a.calls(), 20, "now b's queue is the longer one");
}

#[test]
fn health_checks_can_be_turned_off() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = Scripted::new("a", Script::Answer);
        let ra = replica(&a, no_breaker());
        assert!(health::watch(&ra, ScriptedProbe::new(), HealthConfig::off()).is_none());
    });
}

#[tokio::test(start_paused = true)]
async fn a_hung_backend_leaves_its_fallback_a_share_of_the_deadline() {
    let hung = Scripted::new("hung", Script::Held(Arc::new(Semaphore::new(0))));
    let spare = Scripted::new("spare", Script::Answer);
    let router = router(
        vec![
            vec![replica(&hung, no_breaker())],
            vec![replica(&spare, no_breaker())],
        ],
        Balancing::RoundRobin,
        2,
    );
    let started = tokio::time::Instant::now();
    let mut call = call("s");
    call.deadline = Some(started + Duration::from_secs(60));
    // Bounded by the deadline itself: without a share for the fallback, the hung backend
    // would hold the call until then.
    let answer = tokio::time::timeout_at(started + Duration::from_secs(60), async {
        let stream = router.infer_stream(call).await.expect("the fallback answers");
        stream.collect::<Vec<_>>().await
    })
    .await
    .expect("answered before the deadline");
    assert_eq!(answer.len(), 1);
    assert!(matches!(&answer[0], Ok(WorkerChunk::Token(t)) if t == "ok from spare"));
    assert_eq!((hung.calls(), spare.calls()), (1, 1));
    // Two attempts could be made: the hung one had half the time.
    let tried_spare_at = spare.times.lock().unwrap()[0] - started;
    assert_eq!(tried_spare_at, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_is_bounded_by_the_deadline_alone() {
    let hung = Scripted::new("hung", Script::Held(Arc::new(Semaphore::new(0))));
    let router = router(vec![vec![replica(&hung, no_breaker())]], Balancing::RoundRobin, 0);
    let mut call = call("s");
    call.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(60));
    // No budget of its own: the pipeline's deadline ends it, not the router.
    let outcome = tokio::time::timeout(Duration::from_secs(3600), router.infer_stream(call)).await;
    assert!(
        outcome.is_err(),
        "the only attempt waits for as long as the request does"
    );
}
