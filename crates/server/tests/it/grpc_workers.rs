//! gRPC workers: real `orchestrator worker --grpc-listen` processes (no broker), each in front of
//! a mock upstream of its own, called by a gateway whose backends are `kind = "grpc"`; and fake
//! workers in this process for what a real one never sends.

use futures_util::stream::{self, BoxStream, StreamExt};
use orchestrator_grpc::pb::worker_client::WorkerClient;
use orchestrator_grpc::pb::worker_server::{Worker, WorkerServer};
use orchestrator_grpc::pb::{self, infer_reply::Event};
use orchestrator_mock::{Behaviour, RunningMock};
use serde_json::Value;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::binary::{Binary, spawn_binary_with, spawn_command};
use crate::cluster::workers::{chat, has_error_event, post, streaming_mock};
use crate::cluster::{eventually, get_json};
use crate::gateway_mock::mock;
use crate::sdk::sdk_checks;
use crate::shutdown::terminate;
use crate::support::{Frame, SseReader, client, expect_error};

/// A worker serving gRPC only, named `name`, with `[worker]` settings `settings` and `models`
/// (its backends and models); its gRPC address is `grpc_url(&worker)`.
async fn grpc_worker(name: &str, settings: &str, models: &str, env: &[(&str, &str)]) -> Binary {
    let config = format!("[worker]\nname = \"{name}\"\n{settings}\n\n{models}");
    spawn_command(
        "worker",
        &config,
        &["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
        env,
    )
    .await
}

/// Model `m` on `upstream`.
fn upstream_model(upstream: &RunningMock) -> String {
    format!(
        "[[backends]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{}\"\nmodel = \"mock\"\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"up\"]\n",
        upstream.url("/v1")
    )
}

/// Worker `name` serving model `m` from `upstream` with `slots`.
async fn worker_on(name: &str, upstream: &RunningMock, slots: usize) -> Binary {
    grpc_worker(name, &format!("slots = {slots}"), &upstream_model(upstream), &[]).await
}

fn grpc_address(worker: &Binary) -> String {
    worker.ready["fields"]["grpc"].as_str().unwrap().to_owned()
}

/// A `kind = "grpc"` backend `name` for `worker`, with `settings` of its own.
fn grpc_backend(name: &str, address: &str, settings: &str) -> String {
    format!("[[backends]]\nkind = \"grpc\"\nname = \"{name}\"\nurl = \"http://{address}\"\n{settings}\n\n")
}

/// A gateway serving model `m` on `worker` alone (its backend named `name`), with `sections`.
async fn gateway_to(name: &str, worker: &Binary, sections: &str) -> Binary {
    let declared = grpc_backend(name, &grpc_address(worker), "");
    gateway(&declared, "m", &format!("backends = [\"{name}\"]"), sections).await
}

/// A gateway serving model `model` on `backends` (names), declared in `declared`, with
/// `sections` of its own.
async fn gateway(declared: &str, model: &str, backends: &str, sections: &str) -> Binary {
    let config = format!("{sections}\n{declared}[[models]]\nname = \"{model}\"\n{backends}\n");
    spawn_binary_with(&config, &["--listen", "127.0.0.1:0"], &[]).await
}

#[tokio::test]
async fn the_official_sdk_gets_answers_from_grpc_workers_streamed_and_not() {
    let echo =
        "[[backends]]\nkind = \"echo\"\nname = \"e\"\n\n[[models]]\nname = \"echo\"\nbackends = [\"e\"]\n";
    let w1 = grpc_worker("w1", "slots = 8", echo, &[]).await;
    let w2 = grpc_worker("w2", "slots = 8", echo, &[]).await;
    let declared = grpc_backend("w1", &grpc_address(&w1), "") + &grpc_backend("w2", &grpc_address(&w2), "");
    let gw = gateway(&declared, "echo", "backends = [\"w1\", \"w2\"]", "").await;
    let stdout = sdk_checks(&format!("{}/v1", gw.base)).await;
    assert!(stdout.contains("ok: stream usage"), "{stdout}");
}

#[tokio::test]
async fn a_session_stays_on_one_grpc_worker() {
    let mocks = [mock(Behaviour::default()).await, mock(Behaviour::default()).await];
    let w0 = worker_on("w0", &mocks[0], 4).await;
    let w1 = worker_on("w1", &mocks[1], 4).await;
    let declared = grpc_backend("w0", &grpc_address(&w0), "") + &grpc_backend("w1", &grpc_address(&w1), "");
    let gw = gateway(&declared, "m", "backends = [\"w0\", \"w1\"]", "").await;
    let counts = || {
        mocks
            .iter()
            .map(|m| m.handle().stats().chat_completions)
            .collect::<Vec<_>>()
    };
    let mut used = [false; 2];
    for s in 0..16 {
        let before = counts();
        for stream in [false, true, false, true] {
            let response = post(&gw, &format!("session-{s}"), stream).await;
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
        let grown: Vec<u64> = counts().iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(
            grown.contains(&4),
            "session-{s}'s four requests on one worker: {grown:?}"
        );
        used[grown.iter().position(|g| *g == 4).unwrap()] = true;
    }
    assert_eq!(used, [true, true], "sessions spread over both workers");
}

#[tokio::test]
async fn a_grpc_worker_killed_before_the_first_token_leaves_its_calls_to_the_other() {
    let stuck = mock(Behaviour {
        latency_ms: 60_000,
        ..Behaviour::default()
    })
    .await;
    let fine = mock(Behaviour::default()).await;
    let mut a = worker_on("a", &stuck, 16).await;
    let b = worker_on("b", &fine, 16).await;
    let declared = grpc_backend("a", &grpc_address(&a), "") + &grpc_backend("b", &grpc_address(&b), "");
    let gw = gateway(&declared, "m", "backends = [\"a\", \"b\"]", "").await;
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let url = format!("{}/v1/chat/completions", gw.base);
            tokio::spawn(async move {
                let response = client()
                    .post(url)
                    .json(&chat(&format!("s{i}"), false))
                    .send()
                    .await
                    .unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap(),
                )
            })
        })
        .collect();
    eventually("a holds some calls and b has answered the others", || async {
        let on_a = stuck.handle().stats().chat_completions;
        on_a > 0 && on_a + fine.handle().stats().chat_completions == 12
    })
    .await;
    let on_a = stuck.handle().stats().chat_completions;
    a.child.start_kill().unwrap();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    }
    assert_eq!(
        fine.handle().stats().chat_completions,
        12,
        "a's {on_a} calls ran again on b"
    );
}

#[tokio::test]
async fn a_grpc_worker_killed_mid_stream_ends_the_stream_with_an_error_and_a_dead_letter() {
    let slow = streaming_mock(100).await;
    let mut a = worker_on("a", &slow, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let dlq = format!(
        "[dlq]\npath = {:?}\n",
        dir.path().join("gw.redb").display().to_string()
    );
    let gw = gateway_to("a", &a, &dlq).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut reader = SseReader::new(post(&gw, &format!("s{i}"), true).await);
        // The role chunk, then the first token: the caller has output.
        for _ in 0..2 {
            assert!(matches!(reader.next().await, Some(Frame::Data(_))));
        }
        readers.push(reader);
    }
    a.child.start_kill().unwrap();
    for mut reader in readers {
        let frames = reader.rest().await;
        assert!(has_error_event(&frames), "{frames:?}");
    }
    assert_eq!(slow.handle().stats().streams_completed, 0);
    eventually("the three cut requests are dead letters", || async {
        let listed = get_json(format!("{}/admin/dlq", gw.base)).await;
        listed["data"].as_array().is_some_and(|d| d.len() == 3)
    })
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_stops_the_upstream_call_through_the_grpc_worker() {
    let upstream = streaming_mock(100).await;
    let w = worker_on("w", &upstream, 2).await;
    let gw = gateway_to("w", &w, "").await;
    let mut reader = SseReader::new(post(&gw, "reader", true).await);
    for _ in 0..3 {
        reader.next().await.unwrap();
    }
    drop(reader);
    eventually("the upstream saw the stream abandoned", || async {
        upstream.handle().stats().streams_abandoned == 1
    })
    .await;
    eventually("the worker's slot is free again", || async {
        let ready = get_json(format!("{}/readyz", w.base)).await;
        ready["running"] == 0
    })
    .await;
    assert_eq!(upstream.handle().stats().chat_completions, 1);
}

#[tokio::test]
async fn a_grpc_worker_at_its_slot_limit_refuses_at_once_and_the_gateway_goes_elsewhere() {
    let slow = streaming_mock(100).await;
    let spare = mock(Behaviour::default()).await;
    let a = worker_on("a", &slow, 1).await;
    let b = worker_on("b", &spare, 1).await;
    let declared = grpc_backend("a", &grpc_address(&a), "") + &grpc_backend("b", &grpc_address(&b), "");
    // Only `a`: a second call while its one slot is taken is refused, with the reason.
    let alone = gateway(&declared, "m", "backends = [\"a\"]", "").await;
    let mut first = SseReader::new(post(&alone, "s", true).await);
    first.next().await.unwrap();
    let refused = post(&alone, "s", false).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let error = expect_error(refused, 503).await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("worker a: all 1 slots are busy"), "{message}");
    // With `b` as the fallback, the call goes there instead.
    let with_fallback = gateway(&declared, "m", "backends = [\"a\"]\nfallback = [\"b\"]", "").await;
    let answered = post(&with_fallback, "s", false).await;
    assert_eq!(answered.status(), 200);
    assert_eq!(spare.handle().stats().chat_completions, 1);
    assert_eq!(slow.handle().stats().chat_completions, 1, "nothing queued on a");
    drop(first);
}

#[tokio::test]
async fn a_deadline_travels_to_the_grpc_worker_and_stops_its_upstream_call() {
    let stuck = mock(Behaviour {
        latency_ms: 60_000,
        ..Behaviour::default()
    })
    .await;
    let w = worker_on("w", &stuck, 2).await;
    let gw = gateway_to("w", &w, "[pipeline]\ndefault_timeout_ms = 1000\n").await;
    let response = post(&gw, "s", false).await;
    expect_error(response, 504).await;
    eventually("the upstream saw the call abandoned", || async {
        stuck.handle().stats().requests_abandoned == 1
    })
    .await;
    // The worker keeps the deadline itself: its call ends at the `grpc-timeout` even while the
    // caller waits on.
    let mut client = WorkerClient::connect(format!("http://{}", grpc_address(&w)))
        .await
        .unwrap();
    let mut request = Request::new(text_call(1));
    request.set_timeout(std::time::Duration::from_millis(500));
    let mut replies = client.infer(request).await.unwrap().into_inner();
    let started = replies.message().await.unwrap().unwrap();
    assert!(matches!(started.event, Some(Event::Started(_))), "{started:?}");
    let ended = replies.message().await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(ended.message(), "the call's deadline passed on worker w");
    eventually("the upstream saw the second call abandoned", || async {
        stuck.handle().stats().requests_abandoned == 2
    })
    .await;
}

/// A call of protocol revision `protocol` for model `m`, as a gateway would send it.
fn text_call(protocol: u32) -> pb::InferRequest {
    pb::InferRequest {
        protocol,
        model: "m".into(),
        input: Some(pb::infer_request::Input::Text("hi".into())),
        ..Default::default()
    }
}

/// What a fake worker answers to every call.
#[derive(Clone)]
enum Fake {
    /// `started` with this protocol revision, then a token.
    Protocol(u32),
    /// These replies after a good `started`.
    After(Vec<pb::InferReply>),
}

#[tonic::async_trait]
impl Worker for Fake {
    type InferStream = BoxStream<'static, Result<pb::InferReply, Status>>;

    async fn infer(&self, _: Request<pb::InferRequest>) -> Result<Response<Self::InferStream>, Status> {
        let started = |protocol| pb::InferReply {
            event: Some(Event::Started(pb::Started {
                protocol,
                worker: "fake".into(),
            })),
        };
        let replies = match self.clone() {
            Fake::Protocol(protocol) => vec![
                started(protocol),
                pb::InferReply {
                    event: Some(Event::Token("hi".into())),
                },
            ],
            Fake::After(replies) => [vec![started(orchestrator_grpc::PROTOCOL)], replies].concat(),
        };
        Ok(Response::new(stream::iter(replies.into_iter().map(Ok)).boxed()))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::WorkerStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `fake` on a free port; its address.
async fn fake_worker(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServer::new(fake))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    address
}

/// A reply as a broken worker writes it: `token` as bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct BrokenReply {
    #[prost(message, optional, tag = "1")]
    started: Option<pb::Started>,
    #[prost(bytes = "vec", optional, tag = "2")]
    token: Option<Vec<u8>>,
}

/// `orchestrator.worker.v1.Worker/Infer` answering `started`, then a reply that does not decode.
#[derive(Clone)]
struct Undecodable;

impl tonic::server::NamedService for Undecodable {
    const NAME: &'static str = "orchestrator.worker.v1.Worker";
}

impl tower::Service<http::Request<tonic::body::Body>> for Undecodable {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        struct Replies;
        impl tonic::server::ServerStreamingService<pb::InferRequest> for Replies {
            type Response = BrokenReply;
            type ResponseStream = BoxStream<'static, Result<BrokenReply, Status>>;
            type Future =
                futures_util::future::BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

            fn call(&mut self, _: Request<pb::InferRequest>) -> Self::Future {
                let started = BrokenReply {
                    started: Some(pb::Started {
                        protocol: orchestrator_grpc::PROTOCOL,
                        worker: "broken".into(),
                    }),
                    token: None,
                };
                let broken = BrokenReply {
                    started: None,
                    token: Some(vec![0xff, 0xfe]),
                };
                Box::pin(async move { Ok(Response::new(stream::iter([Ok(started), Ok(broken)]).boxed())) })
            }
        }
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<BrokenReply, pb::InferRequest>::default();
            Ok(tonic::server::Grpc::new(codec)
                .server_streaming(Replies, request)
                .await)
        })
    }
}

#[tokio::test]
async fn a_worker_of_another_protocol_or_sending_malformed_replies_gets_a_clear_error() {
    let no_checks = "health_check = { interval_ms = 0 }";
    let cases = [
        (
            Fake::Protocol(2),
            "speaks worker protocol 2 and this gateway speaks 1: run gateways and workers of one version",
        ),
        (
            Fake::After(vec![pb::InferReply { event: None }]),
            "the worker sent a malformed reply: a reply without an event",
        ),
        (
            Fake::After(vec![pb::InferReply {
                event: Some(Event::Passthrough(pb::Passthrough {
                    message: "[1]".into(),
                    ..Default::default()
                })),
            }]),
            "the worker sent a malformed reply: passthrough.message is not a JSON object",
        ),
    ];
    let mut workers = Vec::new();
    for (fake, expected) in cases {
        workers.push((fake_worker(fake).await, expected));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    workers.push((
        listener.local_addr().unwrap().to_string(),
        "the worker sent a malformed message: failed to decode Protobuf message",
    ));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Undecodable)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    for (address, expected) in workers {
        let gw = gateway(
            &grpc_backend("f", &address, no_checks),
            "m",
            "backends = [\"f\"]",
            "",
        )
        .await;
        for stream in [false, true] {
            let response = post(&gw, "s", stream).await;
            let error = expect_error(response, 502).await;
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(expected), "{message}");
        }
    }
    // A worker told of a newer revision refuses the call, naming both.
    let upstream = mock(Behaviour::default()).await;
    let w = worker_on("w", &upstream, 1).await;
    let mut client = WorkerClient::connect(format!("http://{}", grpc_address(&w)))
        .await
        .unwrap();
    let refused = client.infer(text_call(2)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "worker w speaks worker protocol 1 and the gateway sent protocol 2: run gateways and workers of one version"
    );
    assert_eq!(upstream.handle().stats().chat_completions, 0);
}

#[tokio::test]
async fn a_grpc_worker_reports_its_status_and_health_and_drains_on_sigterm() {
    let slow = streaming_mock(20).await;
    let w = worker_on("w", &slow, 3).await;
    let address = format!("http://{}", grpc_address(&w));
    let mut client = WorkerClient::connect(address.clone()).await.unwrap();
    let status = client.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            status.protocol,
            status.worker.as_str(),
            status.models,
            status.slots,
            status.free_slots,
            status.draining
        ),
        (1, "w", vec!["m".to_owned()], 3, 3, false)
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let check = || tonic_health::pb::HealthCheckRequest {
        service: "orchestrator.worker.v1.Worker".into(),
    };
    let serving = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists what the worker serves, so grpcurl needs no .proto.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::ListServicesResponse(listed)) = answer else {
        panic!("{answer:?}");
    };
    let mut services: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    services.sort();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "orchestrator.worker.v1.Worker"
        ]
    );

    // A call under way when SIGTERM comes finishes; new calls are refused meanwhile.
    let gw = gateway_to("w", &w, "").await;
    let mut running = SseReader::new(post(&gw, "s", true).await);
    running.next().await.unwrap();
    let pid = w.child.id().unwrap().to_string();
    let drained = tokio::spawn(terminate(w));
    eventually("the worker reports NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            health.check(check()).await.map(|r| r.into_inner().status).ok()
                == Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
        }
    })
    .await;
    let whole = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(
        health.check(whole).await.unwrap().into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
        "the server as a whole too"
    );
    let refused = client.infer(text_call(1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{pid}: {refused:?}");
    let frames = running.rest().await;
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())), "{frames:?}");
    let logged = drained.await.unwrap();
    assert!(logged.iter().any(|l| l["fields"]["message"] == "Worker stopped."));
    assert_eq!(slow.handle().stats().streams_completed, 1);
}

#[tokio::test]
async fn a_worker_with_a_secret_serves_only_gateways_that_send_it() {
    let upstream = mock(Behaviour::default()).await;
    let worker_secret = [("ORCHESTRATOR_TEST_GRPC_WORKER_SECRET", "s3cret-of-the-worker")];
    let w = grpc_worker(
        "w",
        "[worker.grpc]\nsecret_env = \"ORCHESTRATOR_TEST_GRPC_WORKER_SECRET\"",
        &upstream_model(&upstream),
        &worker_secret,
    )
    .await;
    let address = grpc_address(&w);
    let checks_off = "health_check = { interval_ms = 0 }";
    let with_secret = format!("{checks_off}\nsecret_env = \"ORCHESTRATOR_TEST_GRPC_SECRET\"");
    for (settings, secret, expected) in [
        (
            checks_off,
            None,
            Err("worker w needs a secret: set secret_env on the gateway's backend"),
        ),
        (&with_secret, Some("wrong"), Err("worker w refused the secret")),
        (&with_secret, Some("s3cret-of-the-worker"), Ok(())),
    ] {
        let config = format!(
            "{}[[models]]\nname = \"m\"\nbackends = [\"w\"]\n",
            grpc_backend("w", &address, settings)
        );
        let env: Vec<(&str, &str)> = secret
            .map(|s| ("ORCHESTRATOR_TEST_GRPC_SECRET", s))
            .into_iter()
            .collect();
        let gw = spawn_binary_with(&config, &["--listen", "127.0.0.1:0"], &env).await;
        let response = post(&gw, "s", false).await;
        match expected {
            Ok(()) => assert_eq!(response.status(), 200),
            Err(expected) => {
                let error = expect_error(response, 502).await;
                let message = error["message"].as_str().unwrap();
                assert!(message.contains(expected), "{message}");
            }
        }
    }
    assert_eq!(
        upstream.handle().stats().chat_completions,
        1,
        "only the right secret got through"
    );
}

/// A CA, and PEM files in `dir`: the CA's certificate, and a certificate and key it signed for
/// each of `names` (`<name>.pem`, `<name>.key`), valid for 127.0.0.1 and localhost.
fn certificates(dir: &std::path::Path, names: &[&str]) -> std::path::PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    for name in names {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, *name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    ca_path
}

#[tokio::test]
async fn a_tls_worker_with_client_certificates_serves_only_gateways_that_show_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certificates(dir.path(), &["worker", "gateway"]);
    let path = |file: &str| dir.path().join(file).display().to_string();
    let upstream = mock(Behaviour::default()).await;
    let w = grpc_worker(
        "w",
        &format!(
            "[worker.grpc]\ntls = {{ cert = {:?}, key = {:?}, client_ca = {:?} }}",
            path("worker.pem"),
            path("worker.key"),
            ca.display().to_string()
        ),
        &upstream_model(&upstream),
        &[],
    )
    .await;
    let url = format!("https://{}", grpc_address(&w));
    let backend = |tls: String| {
        format!(
            "[[backends]]\nkind = \"grpc\"\nname = \"w\"\nurl = \"{url}\"\nhealth_check = {{ interval_ms = 0 }}\n{tls}\n\n\
             [[models]]\nname = \"m\"\nbackends = [\"w\"]\n"
        )
    };
    let ca_only = format!("tls = {{ ca = {:?} }}", ca.display().to_string());
    let gw = spawn_binary_with(&backend(ca_only), &["--listen", "127.0.0.1:0"], &[]).await;
    let error = expect_error(post(&gw, "s", false).await, 502).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(
            "if the worker asks for the gateway's own certificate (mTLS), set tls.cert and tls.key"
        ),
        "{message}"
    );
    let untrusting = spawn_binary_with(&backend(String::new()), &["--listen", "127.0.0.1:0"], &[]).await;
    let error = expect_error(post(&untrusting, "s", false).await, 502).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("not signed by a CA the gateway trusts (tls.ca)"),
        "{message}"
    );
    let mutual = format!(
        "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}",
        ca.display().to_string(),
        path("gateway.pem"),
        path("gateway.key")
    );
    let gw = spawn_binary_with(&backend(mutual), &["--listen", "127.0.0.1:0"], &[]).await;
    for stream in [false, true] {
        let response = post(&gw, "s", stream).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.handle().stats().chat_completions, 2);
}

#[tokio::test]
async fn the_trace_context_travels_through_the_grpc_worker_to_the_upstream() {
    let upstream = mock(Behaviour::default()).await;
    let w = worker_on("w", &upstream, 2).await;
    let gw = gateway_to("w", &w, "").await;
    // Untraced here: the client's context is passed on unchanged.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("traceparent", traceparent)
        .json(&chat("traced", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.handle().last_request().unwrap().traceparent;
    assert_eq!(seen.as_deref(), Some(traceparent));
}

#[tokio::test]
async fn health_checks_take_a_grpc_worker_that_cannot_serve_the_model_out_of_rotation() {
    let upstream = mock(Behaviour::default()).await;
    let w = worker_on("w", &upstream, 2).await;
    let checks =
        "model = \"other\"\nhealth_check = { interval_ms = 50, unhealthy_after = 1, healthy_after = 1 }";
    let gw = gateway(
        &grpc_backend("w", &grpc_address(&w), checks),
        "m",
        "backends = [\"w\"]",
        "",
    )
    .await;
    let expected =
        "w: skipped: failing its health checks (worker w does not serve the model `other` (it serves m))";
    eventually("the health checks found the worker unfit", || async {
        let response = post(&gw, "s", false).await;
        let body: Value = response.json().await.unwrap();
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(expected))
    })
    .await;
    assert_eq!(upstream.handle().stats().chat_completions, 0);
}

#[tokio::test]
async fn a_worker_whose_certificate_cannot_be_used_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    let start = |cert: &std::path::Path| {
        let config = format!(
            "[worker.grpc]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}\n\n\
             [[backends]]\nkind = \"echo\"\nname = \"e\"\n\n[[models]]\nname = \"m\"\nbackends = [\"e\"]\n",
            cert.display().to_string(),
            garbage.display().to_string()
        );
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, config).unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["worker", "--listen", "127.0.0.1:0", "--config"])
            .arg(file)
            .env_remove("ORCHESTRATOR_CLUSTER")
            .output()
    };
    let unreadable = start(&missing).await.unwrap();
    assert_eq!(unreadable.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    assert!(stderr.contains("worker.grpc.tls.cert: cannot read"), "{stderr}");
    let unusable = start(&garbage).await.unwrap();
    assert_eq!(unusable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unusable.stderr);
    assert!(
        stderr.contains("worker.grpc.tls: the certificate or key cannot be used"),
        "{stderr}"
    );
}
