//! The gateway in front of mock upstreams (real HTTP on both sides): tokens relayed as the
//! upstream produces them, cancellation reaching the upstream, a mid-stream cut, retries before
//! the first token, fallback and `Retry-After`, circuit breakers, per-backend limits, backend
//! call metrics, session affinity across replicas, and pass-through fields. (`kind = "llamacpp"`:
//! `llamacpp.rs`.)

use std::time::Duration;

use orchestrator_backends::OpenAiConfig;
use orchestrator_backends::routing::balance::Balancing;
use orchestrator_backends::routing::breaker::BreakerConfig;
use orchestrator_mock::{Behaviour, MockConfig, MockUpstream, RunningMock};
use orchestrator_server::config::{BackendConfig, Config, ModelConfig};
use serde_json::json;

use crate::support::{Frame, SseReader, client, json, serve};

pub async fn mock(behaviour: Behaviour) -> RunningMock {
    let mut config = MockConfig::ephemeral();
    config.behaviour = behaviour;
    MockUpstream::start(config).await.unwrap()
}

/// An OpenAI-compatible backend named `name` in front of `mock`.
pub fn openai_backend(name: &str, mock: &RunningMock) -> OpenAiConfig {
    OpenAiConfig {
        name: name.into(),
        base_url: mock.url("/v1"),
        api_key_env: None,
        model: Some("mock".into()),
        headers: Default::default(),
        timeouts: Default::default(),
        routing: Default::default(),
        health_check: None,
    }
}

/// A gateway serving model `m` from `mocks` (backends `up0`, `up1`, ...) with `balancing`.
async fn gateway(mocks: &[&RunningMock], balancing: Balancing) -> String {
    let backends = mocks
        .iter()
        .enumerate()
        .map(|(i, mock)| BackendConfig::Openai(openai_backend(&format!("up{i}"), mock)))
        .collect();
    gateway_of(backends, balancing).await
}

/// A gateway serving model `m` from every one of `backends`, with `balancing`.
pub async fn gateway_of(backends: Vec<BackendConfig>, balancing: Balancing) -> String {
    let mut config = Config::default();
    config.models.clear();
    let mut model = ModelConfig::single("m", "up0");
    model.backends = backends.iter().map(|b| b.name().to_string()).collect();
    model.balancing = balancing;
    model.retries.initial_backoff_ms = 1;
    config.models.push(model);
    config.backends = backends;
    serve(config).await
}

fn stream_body() -> serde_json::Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

fn content(frame: &Frame) -> Option<String> {
    json(frame)["choices"][0]["delta"]["content"]
        .as_str()
        .map(String::from)
}

#[tokio::test]
async fn tokens_arrive_as_the_upstream_makes_them_and_a_disconnect_reaches_it() {
    // Two tokens a second: the whole answer would take eight seconds.
    let upstream = mock(Behaviour {
        tokens: 16,
        tokens_per_second: 2.0,
        ..Behaviour::default()
    })
    .await;
    let base = gateway(&[&upstream], Balancing::RoundRobin).await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    reader.next().await.unwrap(); // role
    let first = reader.next().await.unwrap();
    assert_eq!(content(&first).unwrap(), "tok0");
    // The upstream's fingerprint came alone in its opening chunk and rides on the first token.
    assert!(json(&first)["system_fingerprint"].is_string(), "{first:?}");
    let stats = upstream.handle().stats();
    assert_eq!(
        (stats.streams_started, stats.streams_completed),
        (1, 0),
        "the upstream is still generating"
    );

    drop(reader);
    let handle = upstream.handle();
    tokio::time::timeout(
        Duration::from_secs(10),
        handle.wait_until(|s| s.streams_abandoned == 1),
    )
    .await
    .expect("the upstream sees its stream abandoned");
}

#[tokio::test]
async fn a_cut_upstream_stream_ends_with_an_error_event_and_is_not_retried() {
    let upstream = mock(Behaviour {
        tokens: 10,
        cut_after: Some(3),
        ..Behaviour::default()
    })
    .await;
    let base = gateway(&[&upstream], Balancing::RoundRobin).await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    // After the role chunk, the tokens.
    let tokens: Vec<String> = frames[1..]
        .iter()
        .filter(|f| matches!(f, Frame::Data(_)))
        .filter_map(content)
        .collect();
    assert_eq!(tokens, ["tok0", " tok1", " tok2"]);
    let Some(Frame::Event(name, data)) = frames.last() else {
        panic!("expected an error event last: {frames:#?}");
    };
    assert_eq!(name, "error");
    assert!(data.contains("up0: the stream"), "{data}");
    assert_eq!(
        upstream.handle().stats().chat_completions,
        1,
        "no retry after the first token"
    );
}

#[tokio::test]
async fn failures_before_the_first_token_are_retried_on_another_replica() {
    let broken = mock(Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    })
    .await;
    let healthy = mock(Behaviour::default()).await;
    let base = gateway(&[&broken, &healthy], Balancing::RoundRobin).await;
    for i in 0..6 {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("q{i}")}]});
        let response = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(
        broken.handle().stats().errors_injected > 0,
        "round robin sent calls to the broken replica"
    );
    assert_eq!(
        healthy.handle().stats().chat_completions,
        6,
        "each of them was retried on the healthy one"
    );
}

#[tokio::test]
async fn a_session_stays_on_one_replica() {
    let mocks = [
        mock(Behaviour::default()).await,
        mock(Behaviour::default()).await,
        mock(Behaviour::default()).await,
    ];
    let base = gateway(&[&mocks[0], &mocks[1], &mocks[2]], Balancing::SessionAffinity).await;
    for session in ["alice", "bob", "carol", "dave"] {
        let before: Vec<u64> = mocks
            .iter()
            .map(|m| m.handle().stats().chat_completions)
            .collect();
        for _ in 0..5 {
            let response = client()
                .post(format!("{base}/v1/chat/completions"))
                .header("x-session-id", session)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let grew: Vec<u64> = mocks
            .iter()
            .zip(&before)
            .map(|(m, b)| m.handle().stats().chat_completions - b)
            .collect();
        assert_eq!(grew.iter().filter(|&&n| n > 0).count(), 1, "{session}: {grew:?}");
        assert_eq!(grew.iter().sum::<u64>(), 5);
    }
}

#[tokio::test]
async fn fields_the_gateway_does_not_act_on_reach_the_upstream() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&[&upstream], Balancing::RoundRobin).await;
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi", "name": "ann"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        "response_format": {"type": "json_object"},
        "presence_penalty": 0.5,
    });
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent = upstream.handle().last_request().unwrap().json();
    assert_eq!(sent["tools"], body["tools"]);
    assert_eq!(sent["response_format"], body["response_format"]);
    assert_eq!(sent["presence_penalty"], 0.5);
    assert_eq!(sent["messages"][0]["name"], "ann");
    assert_eq!(sent["model"], "mock");
}

/// A mock that refuses every request with 429 and a Retry-After of a minute.
async fn rate_limited_mock() -> RunningMock {
    mock(Behaviour {
        error_rate: 1.0,
        error_status: axum::http::StatusCode::TOO_MANY_REQUESTS,
        retry_after_secs: Some(60),
        ..Behaviour::default()
    })
    .await
}

#[tokio::test]
async fn exhausted_backends_fall_back_honour_retry_after_and_count_every_call() {
    let refusing = rate_limited_mock().await;
    let healthy = mock(Behaviour::default()).await;
    let mut config = Config::default();
    config.models.clear();
    let mut model = ModelConfig::single("m", "metered-primary");
    model.fallback = vec!["metered-fallback".into()];
    model.retries.initial_backoff_ms = 1;
    config.models.push(model);
    config.backends = vec![
        BackendConfig::Openai(openai_backend("metered-primary", &refusing)),
        BackendConfig::Openai(openai_backend("metered-fallback", &healthy)),
    ];
    let base = serve(config).await;
    assert_eq!(chat_status(&base, "first").await, 200);
    // The primary asked for a minute's rest: the next request goes straight to the fallback.
    assert_eq!(chat_status(&base, "second").await, 200);
    assert_eq!(refusing.handle().stats().chat_completions, 1);
    assert_eq!(healthy.handle().stats().chat_completions, 2);

    let metrics = metrics_text(&base).await;
    for line in [
        "orchestrator_backend_calls_total{backend=\"metered-primary\",outcome=\"failure\"} 1",
        // Passed over resting: on the first request's retry, and on the second request.
        "orchestrator_backend_calls_total{backend=\"metered-primary\",outcome=\"skipped\"} 2",
        "orchestrator_backend_calls_total{backend=\"metered-fallback\",outcome=\"success\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn when_every_backend_is_rate_limited_the_client_is_told_when_to_come_back() {
    let refusing = rate_limited_mock().await;
    let base = gateway(&[&refusing], Balancing::RoundRobin).await;
    let ask = || {
        client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // The upstream's own 429 and its Retry-After reach the client.
    let response = ask().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    let error = crate::support::expect_error(response, 429).await;
    assert_eq!(error["code"], "upstream_rate_limited");
    // While the backend rests, requests are not sent to it; the client hears when it is back.
    let response = ask().await.unwrap();
    assert_eq!(response.status(), 503);
    let seconds: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    let error = crate::support::expect_error(response, 503).await;
    assert_eq!(error["code"], "upstream_unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("up0: skipped: waiting out its Retry-After"),
        "{error}"
    );
    assert_eq!(refusing.handle().stats().chat_completions, 1);
}

/// The gateway's `/metrics` text.
async fn metrics_text(base: &str) -> String {
    let response = client().get(format!("{base}/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

/// Sends one non-streamed chat request to model `m` and returns its status.
async fn chat_status(base: &str, text: &str) -> u16 {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_failing_backend_trips_its_breaker_and_is_let_back_after_a_good_probe() {
    let failing = mock(Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    })
    .await;
    let healthy = mock(Behaviour::default()).await;
    let mut a = openai_backend("breaker-a", &failing);
    a.routing.breaker = BreakerConfig {
        consecutive_failures: 2,
        error_rate: 0.0,
        window: 20,
        cooldown_ms: 3_000,
    };
    let b = openai_backend("breaker-b", &healthy);
    let base = gateway_of(
        vec![BackendConfig::Openai(a), BackendConfig::Openai(b)],
        Balancing::RoundRobin,
    )
    .await;
    // Every request is answered (retried on b when a fails). Round robin tries a first on every
    // other request, five times: after its second failure in a row the breaker opens and a is
    // passed over (a probe after a cool-down would fail and reopen it).
    for i in 0..10 {
        assert_eq!(chat_status(&base, &format!("q{i}")).await, 200);
    }
    let tripped = failing.handle().stats().chat_completions;
    assert!((2..5).contains(&tripped), "a was called {tripped} times");
    let metrics = metrics_text(&base).await;
    assert!(
        metrics.contains("orchestrator_backend_calls_total{backend=\"breaker-a\",outcome=\"skipped\"}"),
        "a was never passed over:\n{metrics}"
    );

    // a recovers. After the cool-down one probe goes through; it succeeds and closes the breaker.
    failing.handle().update(|b| b.error_rate = 0.0);
    let mut asked = 0;
    while failing.handle().stats().chat_completions == tripped {
        assert_eq!(chat_status(&base, "probe?").await, 200);
        asked += 1;
        assert!(asked < 1_000, "the breaker never let a probe through");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closed again: a takes its turn in the rotation.
    let before = failing.handle().stats().chat_completions;
    for i in 0..4 {
        assert_eq!(chat_status(&base, &format!("after {i}")).await, 200);
    }
    assert_eq!(failing.handle().stats().chat_completions - before, 2);
}

#[tokio::test]
async fn a_backend_at_its_max_in_flight_is_passed_over() {
    // a holds each stream for ten minutes; b answers at once.
    let slow = mock(Behaviour {
        tokens: 1_200,
        tokens_per_second: 2.0,
        ..Behaviour::default()
    })
    .await;
    let fast = mock(Behaviour::default()).await;
    let mut a = openai_backend("limited-a", &slow);
    a.routing.max_in_flight = 1;
    let b = openai_backend("limited-b", &fast);
    let base = gateway_of(
        vec![BackendConfig::Openai(a), BackendConfig::Openai(b)],
        Balancing::RoundRobin,
    )
    .await;
    // The first request (a's turn) takes a's one place and keeps it while it streams.
    let held = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let mut held = SseReader::new(held);
    assert!(held.next().await.is_some());
    // Four more: on a's turns it is full, so they go to b at once.
    for i in 0..4 {
        assert_eq!(chat_status(&base, &format!("q{i}")).await, 200);
    }
    assert_eq!(slow.handle().stats().chat_completions, 1);
    assert_eq!(fast.handle().stats().chat_completions, 4);
    let metrics = metrics_text(&base).await;
    let line = "orchestrator_backend_calls_total{backend=\"limited-a\",outcome=\"skipped\"} 2";
    assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    // The held stream is still going.
    assert!(held.next().await.is_some());
}

/// The sample of `name{labels}` on the gateway's `/metrics` page, if there is one.
async fn sample(base: &str, series: &str) -> Option<String> {
    let page = client().get(format!("{base}/metrics")).send().await.unwrap();
    let page = page.text().await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_owned()))
}

#[tokio::test]
async fn backend_calls_ended_by_a_client_or_by_max_tokens_are_counted_as_such() {
    let upstream = mock(Behaviour {
        tokens: 16,
        tokens_per_second: 2.0,
        ..Behaviour::default()
    })
    .await;
    let base = gateway_of(
        vec![BackendConfig::Openai(openai_backend("counted", &upstream))],
        Balancing::RoundRobin,
    )
    .await;
    // A client that leaves after the first token.
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    reader.next().await.unwrap(); // role
    reader.next().await.unwrap(); // tok0
    drop(reader);
    let handle = upstream.handle();
    tokio::time::timeout(
        Duration::from_secs(10),
        handle.wait_until(|s| s.streams_abandoned == 1),
    )
    .await
    .expect("the upstream sees its stream abandoned");
    let cancelled = "orchestrator_backend_calls_total{backend=\"counted\",outcome=\"cancelled\"}";
    assert_eq!(sample(&base, cancelled).await.as_deref(), Some("1"));
    let success = "orchestrator_backend_calls_total{backend=\"counted\",outcome=\"success\"}";
    assert_eq!(sample(&base, success).await, None);

    // A stream the model ends at the client's max_tokens: a success, with the model's usage.
    handle.update(|b| b.tokens_per_second = 0.0);
    let body = json!({"model": "m", "stream": true, "max_tokens": 3, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "one two three four five"}]});
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    let usage = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(_)))
        .map(json)
        .find(|chunk| chunk["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone();
    // The mock counts a prompt's words: these are its numbers, not an estimate of ours.
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&json!(5), &json!(3))
    );
    assert_eq!(sample(&base, success).await.as_deref(), Some("1"));
}
