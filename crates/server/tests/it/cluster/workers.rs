//! Remote workers: real `orchestrator worker` processes taking jobs from a real nats-server for a
//! gateway whose model is `kind = "cluster"`, each worker in front of a mock upstream of its own
//! (whose counters say what each worker ran).

use std::time::Duration;

use orchestrator_mock::{Behaviour, RunningMock};
use serde_json::{Value, json};

use super::{ECHO, Nats, cluster_section, cluster_view, eventually, get_json, metrics_text, node};
use crate::binary::{Binary, next_log, spawn_command};
use crate::gateway_mock::mock;
use crate::otlp::{hex, http_collector, text};
use crate::sdk::sdk_checks;
use crate::shutdown::terminate;
use crate::support::{Frame, SseReader, client, expect_error};

/// Worker `name` serving model `m` from `mock`, with `[worker]` settings `worker`.
async fn worker(nats: &Nats, name: &str, mock: &RunningMock, worker: &str) -> Binary {
    let config = format!(
        "[worker]\n{worker}\n\n[[backends]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{}\"\nmodel = \"mock\"\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"up\"]\n\n{}",
        mock.url("/v1"),
        cluster_section(nats, name)
    );
    spawn_command("worker", &config, &["--listen", "127.0.0.1:0"], &[]).await
}

/// A gateway whose model `m` runs on the workers, with `backend` settings.
async fn gateway(nats: &Nats, backend: &str) -> Binary {
    gateway_with(nats, "", backend).await
}

/// A gateway whose model `m` runs on the workers, with `sections` of its own before.
async fn gateway_with(nats: &Nats, sections: &str, backend: &str) -> Binary {
    let config = format!(
        "{sections}\n[[backends]]\nkind = \"cluster\"\nname = \"workers\"\n{backend}\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"workers\"]\n"
    );
    node(nats, "gw", &config).await
}

/// Waits until `gateway` lists `names` as workers, then a few heartbeats more, so that every
/// worker has seen the others and the partitions have settled.
async fn workers_listed(gateway: &Binary, names: &[&str]) {
    eventually("the workers are listed", || async {
        let (_, view) = cluster_view(gateway).await;
        let mut workers: Vec<String> = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] == "worker")
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect();
        workers.sort();
        workers == names
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
}

/// A chat request for model `m` from `session`.
pub fn chat(session: &str, stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        "user": session,
    })
}

/// [`chat`] to `gateway`, with `session` as its session id too.
pub async fn post(gateway: &Binary, session: &str, stream: bool) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .header("x-session-id", session)
        .json(&chat(session, stream))
        .send()
        .await
        .unwrap()
}

/// One request of `session` to the gateway at `base` (with `X-Priority: priority` when given),
/// not streamed, in a task of its own: its status and body.
fn asked(
    base: &str,
    session: String,
    priority: Option<&'static str>,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{base}/v1/chat/completions");
    tokio::spawn(async move {
        let mut request = client().post(url).json(&chat(&session, false));
        if let Some(priority) = priority {
            request = request.header("x-priority", priority);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    })
}

/// The message of a 503 that asks the client to come back in a second.
async fn unavailable(response: reqwest::Response) -> String {
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body = expect_error(response, 503).await;
    body["message"].as_str().unwrap().to_owned()
}

/// How a streamed answer ended.
#[derive(Debug, PartialEq)]
enum Ending {
    Complete,
    ErrorEvent,
}

/// One streamed request of `session` to the gateway at `base`, read to its end.
async fn streamed(base: String, session: String) -> Ending {
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(&session, true))
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    let error = has_error_event(&frames);
    let done = frames.last() == Some(&Frame::Data("[DONE]".into()));
    assert!(error || done, "neither [DONE] nor an error event: {frames:?}");
    if error {
        Ending::ErrorEvent
    } else {
        Ending::Complete
    }
}

/// Whether `frames` hold an error event.
pub fn has_error_event(frames: &[Frame]) -> bool {
    frames.iter().any(|f| match f {
        Frame::Event(name, _) => name == "error",
        Frame::Data(data) => data.contains("\"error\""),
        Frame::Comment(_) => false,
    })
}

/// A mock upstream that streams `tokens` tokens at 10 a second.
pub async fn streaming_mock(tokens: u64) -> RunningMock {
    mock(Behaviour {
        tokens,
        tokens_per_second: 10.0,
        ..Behaviour::default()
    })
    .await
}

/// The sum of the Prometheus samples at `base` whose line starts with `prefix`.
async fn metric_sum(base: &str, prefix: &str) -> f64 {
    metrics_text(base)
        .await
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The jobs the broker holds (waiting, or taken and not yet answered).
async fn jobs_held(nats: &Nats) -> u64 {
    let js = nats.jetstream().await;
    let mut stream = js.get_stream("ORCHESTRATOR_JOBS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn the_official_sdk_gets_answers_from_workers_streamed_and_not() {
    let nats = Nats::start().await;
    let echo_worker = format!("[worker]\nslots = 4\n\n{ECHO}\n{}", cluster_section(&nats, "w1"));
    let _w1 = spawn_command("worker", &echo_worker, &["--listen", "127.0.0.1:0"], &[]).await;
    let gw = node(
        &nats,
        "gw",
        "[[backends]]\nkind = \"cluster\"\nname = \"workers\"\n\n[[models]]\nname = \"echo\"\nbackends = [\"workers\"]\n",
    )
    .await;
    workers_listed(&gw, &["w1"]).await;
    let stdout = sdk_checks(&format!("{}/v1", gw.base)).await;
    assert!(stdout.contains("ok: stream usage"), "{stdout}");
}

#[tokio::test]
async fn a_session_stays_on_one_worker() {
    let nats = Nats::start().await;
    let mocks = [
        mock(Behaviour::default()).await,
        mock(Behaviour::default()).await,
        mock(Behaviour::default()).await,
    ];
    let mut workers = Vec::new();
    for (i, m) in mocks.iter().enumerate() {
        workers.push(worker(&nats, &format!("w{i}"), m, "slots = 4").await);
    }
    let gw = gateway(&nats, "").await;
    workers_listed(&gw, &["w0", "w1", "w2"]).await;
    let counts = || {
        mocks
            .iter()
            .map(|m| m.handle().stats().chat_completions)
            .collect::<Vec<_>>()
    };
    let (mut on_one, mut total, mut used) = (0, 0, [false; 3]);
    for s in 0..20 {
        let before = counts();
        for _ in 0..5 {
            let response = post(&gw, &format!("session-{s}"), false).await;
            assert_eq!(response.status(), 200);
        }
        let grown: Vec<u64> = counts().iter().zip(&before).map(|(a, b)| a - b).collect();
        on_one += grown.iter().max().unwrap();
        total += grown.iter().sum::<u64>();
        used[grown.iter().position(|g| *g > 0).unwrap()] = true;
    }
    assert_eq!(total, 100, "every request ran once");
    assert!(on_one >= 99, "{on_one} of 100 requests on their session's worker");
    assert!(
        used.iter().all(|u| *u),
        "sessions spread over the three workers: {used:?}"
    );
}

#[tokio::test]
async fn a_worker_killed_before_the_first_token_hands_its_jobs_to_another() {
    let nats = Nats::start().await;
    let stuck = mock(Behaviour {
        latency_ms: 60_000,
        ..Behaviour::default()
    })
    .await;
    let fine = mock(Behaviour::default()).await;
    let mut a = worker(&nats, "a", &stuck, "slots = 5").await;
    let gw = gateway(&nats, "").await;
    workers_listed(&gw, &["a"]).await;
    let calls: Vec<_> = (0..5).map(|i| asked(&gw.base, format!("s{i}"), None)).collect();
    eventually("worker a has taken the five jobs", || async {
        stuck.handle().stats().chat_completions == 5
    })
    .await;
    a.child.start_kill().unwrap();
    let _b = worker(&nats, "b", &fine, "slots = 5").await;
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    }
    assert_eq!(
        fine.handle().stats().chat_completions,
        5,
        "each job ran once more, on b"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_nothing_and_runs_nothing_twice() {
    let nats = Nats::start().await;
    // A stream runs for ten seconds: a's ten are still running when it is killed.
    let slow = streaming_mock(100).await;
    let others = [mock(Behaviour::default()).await, mock(Behaviour::default()).await];
    let mut a = worker(&nats, "a", &slow, "slots = 10").await;
    let dir = tempfile::tempdir().unwrap();
    let dlq = format!(
        "[dlq]\npath = {:?}\n",
        dir.path().join("gw.redb").display().to_string()
    );
    let gw = gateway_with(&nats, &dlq, "queue_timeout_ms = 60000").await;
    workers_listed(&gw, &["a"]).await;
    let calls: Vec<_> = (0..60)
        .map(|i| tokio::spawn(streamed(gw.base.clone(), format!("s{i}"))))
        .collect();
    eventually("a runs ten streams and fifty jobs wait", || async {
        slow.handle().stats().streams_started == 10 && jobs_held(&nats).await == 50
    })
    .await;
    a.child.start_kill().unwrap();
    let _b = worker(&nats, "b", &others[0], "slots = 10").await;
    let _c = worker(&nats, "c", &others[1], "slots = 10").await;
    let mut endings = Vec::new();
    for call in calls {
        endings.push(call.await.unwrap());
    }
    let complete = endings.iter().filter(|e| **e == Ending::Complete).count() as u64;
    let errors = endings.iter().filter(|e| **e == Ending::ErrorEvent).count();
    assert_eq!(
        complete, 50,
        "every queued job completed elsewhere ({errors} error events)"
    );
    assert_eq!(errors, 10, "every stream a was running ended with an error event");
    let ran_elsewhere: u64 = others.iter().map(|m| m.handle().stats().streams_completed).sum();
    assert_eq!(ran_elsewhere, complete, "no job ran twice to completion");
    assert_eq!(slow.handle().stats().streams_completed, 0);
    assert_eq!(jobs_held(&nats).await, 0);
    eventually("the ten cut requests are dead letters", || async {
        let listed = get_json(format!("{}/admin/dlq", gw.base)).await;
        listed["data"].as_array().is_some_and(|d| d.len() == 10)
    })
    .await;
}

#[tokio::test]
async fn a_full_job_queue_refuses_new_jobs_with_503() {
    let nats = Nats::start().await;
    let gw = gateway_with(
        &nats,
        "[cluster.jobs]\nmax_queued = 2\n",
        "queue_timeout_ms = 60000",
    )
    .await;
    let waiting: Vec<_> = (0..2)
        .map(|i| tokio::spawn(streamed(gw.base.clone(), format!("s{i}"))))
        .collect();
    eventually("two jobs wait", || async { jobs_held(&nats).await == 2 }).await;
    let response = post(&gw, "s3", false).await;
    let message = unavailable(response).await;
    assert!(
        message.contains("cannot queue the job for model `m` in NATS JetStream: the job queue is full"),
        "{message}"
    );
    let upstream = mock(Behaviour::default()).await;
    let _w = worker(&nats, "w", &upstream, "slots = 2").await;
    for call in waiting {
        assert_eq!(call.await.unwrap(), Ending::Complete, "the queued jobs were kept");
    }
}

#[tokio::test]
async fn queued_jobs_survive_a_restart_of_nats() {
    let mut nats = Nats::start().await;
    let upstream = mock(Behaviour::default()).await;
    let gw = gateway(&nats, "queue_timeout_ms = 60000").await;
    let calls: Vec<_> = (0..5)
        .map(|i| tokio::spawn(streamed(gw.base.clone(), format!("s{i}"))))
        .collect();
    eventually("five jobs wait", || async { jobs_held(&nats).await == 5 }).await;
    eventually("the gateway shows them in its metrics", || async {
        metric_sum(&gw.base, "orchestrator_jobs_queued{model=\"m\"").await == 5.0
    })
    .await;
    nats.restart().await;
    eventually("the jobs are still there", || async {
        jobs_held(&nats).await == 5
    })
    .await;
    let _w = worker(&nats, "w", &upstream, "slots = 2").await;
    for call in calls {
        assert_eq!(call.await.unwrap(), Ending::Complete);
    }
    assert_eq!(upstream.handle().stats().streams_completed, 5);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_job_queued_or_running() {
    let nats = Nats::start().await;
    let upstream = streaming_mock(100).await;
    let gw = gateway(&nats, "queue_timeout_ms = 60000").await;
    // Queued: no worker yet; the client gives up while the job waits.
    let gone = client()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&chat("leaver", false))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(gone.is_err());
    eventually("the job has left the queue", || async {
        jobs_held(&nats).await == 0
    })
    .await;
    let _w = worker(&nats, "w", &upstream, "slots = 2").await;
    workers_listed(&gw, &["w"]).await;
    // Running: the client reads the first tokens and leaves.
    let mut reader = SseReader::new(post(&gw, "reader", true).await);
    for _ in 0..3 {
        reader.next().await.unwrap();
    }
    drop(reader);
    eventually("the upstream saw the stream abandoned", || async {
        upstream.handle().stats().streams_abandoned == 1
    })
    .await;
    let stats = upstream.handle().stats();
    assert_eq!(stats.chat_completions, 1, "the queued job never ran: {stats:?}");
}

#[tokio::test]
async fn jobs_that_cannot_run_get_clear_errors() {
    let nats = Nats::start().await;
    let upstream = mock(Behaviour::default()).await;
    let _w = worker(&nats, "w", &upstream, "slots = 2").await;
    // No worker serves the model the backend names: 503 with Retry-After once the job's wait
    // is over.
    let gw = node(
        &nats,
        "gw",
        "[server]\nmax_body_bytes = 4000000\n[pipeline]\ndefault_timeout_ms = 1500\n\n\
         [[backends]]\nkind = \"cluster\"\nname = \"workers\"\nmodel = \"nope\"\nqueue_timeout_ms = 500\n\n\
         [[backends]]\nkind = \"cluster\"\nname = \"patient\"\nmodel = \"nope\"\nqueue_timeout_ms = 60000\n\n\
         [[backends]]\nkind = \"cluster\"\nname = \"real\"\nmodel = \"m\"\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"workers\"]\n\n[[models]]\nname = \"late\"\nbackends = [\"patient\"]\n\n\
         [[models]]\nname = \"big\"\nbackends = [\"real\"]\n",
    )
    .await;
    let response = post(&gw, "s", false).await;
    let message = unavailable(response).await;
    assert!(
        message.contains("model `nope`: no worker serving it took the job"),
        "{message}"
    );
    // The same when the request's deadline comes first: 503 (not a bare timeout) just before it.
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "late", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let body = expect_error(response, 503).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("no worker serving it took the job"), "{message}");
    // A job over the broker's largest message: 413, naming the limit.
    let huge = json!({"model": "big", "messages": [{"role": "user", "content": "x".repeat(1_200_000)}]});
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&huge)
        .send()
        .await
        .unwrap();
    let body = expect_error(response, 413).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("max_payload"), "{message}");
    // Jobs a worker cannot read, published by hand: a clear error on the reply subject.
    let nc = async_nats::connect(&nats.url).await.unwrap();
    let mut replies = nc.subscribe("test.replies").await.unwrap();
    nc.flush().await.unwrap();
    let js = async_nats::jetstream::new(nc.clone());
    let bad = [
        json!({"protocol": 1, "id": "j1", "reply_to": "test.replies", "model": 5}),
        json!({"protocol": 2, "id": "j2", "reply_to": "test.replies"}),
    ];
    for (job, wanted) in bad.iter().zip([
        "cannot read job j1",
        "speaks job protocol 1, and job j2 is protocol 2",
    ]) {
        js.publish("orchestrator.jobs.m.normal.0", job.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
        nc.publish("orchestrator.ring.m", "normal.0".into())
            .await
            .unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut replies),
        )
        .await
        .unwrap()
        .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        let error = &reply["event"]["failed"];
        assert_eq!(error["status"], 400, "{reply}");
        assert!(error["message"].as_str().unwrap().contains(wanted), "{reply}");
    }
    assert_eq!(jobs_held(&nats).await, 0, "refused jobs leave the queue");
}

#[tokio::test]
async fn high_priority_jobs_are_pulled_first() {
    let nats = Nats::start().await;
    // Streams run for ten seconds; answers not streamed come at once.
    let upstream = streaming_mock(100).await;
    let _w = worker(&nats, "w", &upstream, "slots = 1").await;
    let gw = gateway(&nats, "queue_timeout_ms = 60000").await;
    workers_listed(&gw, &["w"]).await;
    // A stream holds the worker's one slot while the others queue up in the broker.
    let mut holder = SseReader::new(post(&gw, "holder", true).await);
    holder.next().await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls: Vec<_> = ["low", "low", "normal", "normal", "high", "high"]
        .into_iter()
        .enumerate()
        .map(|(i, priority)| {
            let (call, order) = (
                asked(&gw.base, format!("{priority}-{i}"), Some(priority)),
                order.clone(),
            );
            tokio::spawn(async move {
                assert_eq!(call.await.unwrap().0, 200);
                order.lock().unwrap().push(priority);
            })
        })
        .collect();
    eventually("six jobs wait", || async { jobs_held(&nats).await == 6 }).await;
    // The holder leaves: its job is cancelled, and the slot goes to the waiting jobs one by one.
    drop(holder);
    for call in calls {
        call.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, ["high", "high", "normal", "normal", "low", "low"]);
}

#[tokio::test]
async fn a_busy_owner_hands_its_jobs_to_a_free_worker_after_the_wait() {
    let nats = Nats::start().await;
    // a's one slot stays busy for the whole test: the jobs of its partitions can only be run by
    // b, once they have waited `handoff_ms`.
    let stuck = mock(Behaviour {
        latency_ms: 60_000,
        ..Behaviour::default()
    })
    .await;
    let fast = mock(Behaviour::default()).await;
    let _a = worker(&nats, "a", &stuck, "slots = 1\nhandoff_ms = 200").await;
    let b = worker(&nats, "b", &fast, "slots = 8\nhandoff_ms = 200").await;
    let gw = gateway(&nats, "queue_timeout_ms = 60000").await;
    workers_listed(&gw, &["a", "b"]).await;
    let calls: Vec<_> = (0..16)
        .map(|i| asked(&gw.base, format!("session-{i}"), None))
        .collect();
    eventually("b has answered every job but the one a holds", || async {
        fast.handle().stats().chat_completions == 15
    })
    .await;
    assert_eq!(stuck.handle().stats().chat_completions, 1);
    let handed = metric_sum(&b.base, "orchestrator_worker_handoffs_total{model=\"m\"}").await;
    assert!(handed >= 1.0, "b counted the jobs it took from a: {handed}");
    // Its one job is still on a: the test ends without it.
    calls.iter().for_each(tokio::task::JoinHandle::abort);
}

#[tokio::test]
async fn sigterm_drains_a_worker_it_finishes_its_jobs_takes_no_more_and_exits_0() {
    let nats = Nats::start().await;
    let slow = streaming_mock(50).await;
    let other = mock(Behaviour::default()).await;
    let mut a = worker(&nats, "a", &slow, "slots = 2").await;
    let healthy = client().get(format!("{}/healthz", a.base)).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    let ready = client().get(format!("{}/readyz", a.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        (ready["role"].as_str(), ready["slots"].as_u64()),
        (Some("worker"), Some(2)),
        "{ready}"
    );
    let gw = gateway(&nats, "queue_timeout_ms = 60000").await;
    workers_listed(&gw, &["a"]).await;
    let (_, view) = cluster_view(&gw).await;
    let listed = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        (listed["slots"].as_u64(), listed["models"].clone()),
        (Some(2), json!(["m"])),
        "{listed}"
    );
    let running = tokio::spawn(streamed(gw.base.clone(), "s1".into()));
    eventually("a runs the stream", || async {
        slow.handle().stats().streams_started == 1
    })
    .await;
    let pid = a.child.id().unwrap().to_string();
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success()
    };
    // SIGHUP neither ends a worker nor reloads it: it says so.
    assert!(signal("-HUP"));
    next_log(&mut a.logs, |log| {
        log["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("reads its config at start only"))
    })
    .await;
    assert!(signal("-TERM"));
    eventually("a says it drains", || async {
        let ready = client().get(format!("{}/readyz", a.base)).send().await.unwrap();
        ready.status() == 503 && ready.json::<Value>().await.unwrap()["status"] == "draining"
    })
    .await;
    // Sent while a drains: it waits for another worker.
    let queued = tokio::spawn(streamed(gw.base.clone(), "s2".into()));
    eventually("the new job waits", || async { jobs_held(&nats).await == 1 }).await;
    assert_eq!(
        running.await.unwrap(),
        Ending::Complete,
        "the running job finished"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), a.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let _b = worker(&nats, "b", &other, "slots = 2").await;
    assert_eq!(queued.await.unwrap(), Ending::Complete);
    assert_eq!(
        (
            slow.handle().stats().streams_completed,
            other.handle().stats().streams_completed
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn a_worker_that_cannot_serve_is_refused_at_start_naming_why() {
    let nats = Nats::start().await;
    let refused = |config: String| async move {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), config).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["worker", "--listen", "127.0.0.1:0", "--config"])
            .arg(file.path())
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cluster = cluster_section(&nats, "w");
    let no_models = refused(format!("[worker]\nslots = 2\n\n{cluster}")).await;
    assert!(
        no_models.contains("models: declare at least one [[models]] entry"),
        "{no_models}"
    );
    let remote = format!(
        "[[backends]]\nkind = \"cluster\"\nname = \"workers\"\n\n[[models]]\nname = \"m\"\nbackends = [\"workers\"]\n\n{cluster}"
    );
    let loop_back = refused(remote).await;
    assert!(loop_back.contains("workers is kind = \"cluster\""), "{loop_back}");
    let no_work = refused(ECHO.to_owned()).await;
    assert!(
        no_work.contains(
            "a worker needs a way to get work: [cluster] with nats_url (or --cluster \
             nats://HOST:PORT) to take jobs from the broker, and/or [worker.grpc] listen (or \
             --grpc-listen HOST:PORT) to serve gateways directly"
        ),
        "{no_work}"
    );
    let no_address = refused(format!("[worker.grpc]\nsecret_env = \"X\"\n\n{ECHO}")).await;
    assert!(
        no_address.contains(
            "worker.grpc: no address to serve gRPC on: set listen, or start the worker with --grpc-listen"
        ),
        "{no_address}"
    );
    let named_twice = refused(format!("[worker]\nname = \"x\"\n\n{ECHO}\n{cluster}")).await;
    assert!(
        named_twice.contains("worker.name: in a cluster the worker is named by cluster.node_name"),
        "{named_twice}"
    );
}

#[tokio::test]
async fn a_traced_request_carries_its_context_through_the_worker_to_the_upstream() {
    let nats = Nats::start().await;
    let upstream = mock(Behaviour::default()).await;
    let _w = worker(&nats, "w", &upstream, "slots = 2").await;
    let (collector, received) = http_collector().await;
    let otlp = format!("[telemetry.otlp]\nendpoint = \"{collector}\"\nprotocol = \"http\"\n");
    let gw = gateway_with(&nats, &otlp, "").await;
    workers_listed(&gw, &["w"]).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&chat("traced", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The gateway exports what it holds as it stops.
    terminate(gw).await;
    let spans = received.at_least(7).await;
    let call = spans
        .iter()
        .find(|s| s.kind == 3)
        .expect("the call to the workers");
    assert_eq!(text(call, "orchestrator.backend"), "workers");
    // The worker passed the gateway's call span on to its model server.
    let seen = upstream.handle().last_request().unwrap().traceparent;
    let expected = format!("00-{trace_id}-{}-01", hex(&call.span_id));
    assert_eq!(seen.as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn a_worker_takes_jobs_from_the_broker_and_grpc_calls_side_by_side() {
    let nats = Nats::start().await;
    let upstream = mock(Behaviour::default()).await;
    let config = format!(
        "[worker]\nslots = 4\n\n[[backends]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{}\"\nmodel = \"mock\"\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"up\"]\n\n{}",
        upstream.url("/v1"),
        cluster_section(&nats, "both")
    );
    let w = spawn_command(
        "worker",
        &config,
        &["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
        &[],
    )
    .await;
    let through_broker = gateway(&nats, "").await;
    workers_listed(&through_broker, &["both"]).await;
    let direct = crate::binary::spawn_binary(&format!(
        "[[backends]]\nkind = \"grpc\"\nname = \"both\"\nurl = \"http://{}\"\n\n[[models]]\nname = \"m\"\nbackends = [\"both\"]\n",
        w.ready["fields"]["grpc"].as_str().unwrap()
    ))
    .await;
    for gateway in [&through_broker, &direct] {
        for stream in [false, true] {
            let response = post(gateway, "s", stream).await;
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
    }
    assert_eq!(upstream.handle().stats().chat_completions, 4);
    let ready = get_json(format!("{}/readyz", w.base)).await;
    assert_eq!(ready["name"], "both");
    assert_eq!(ready["cluster"]["connected"], true);
}
