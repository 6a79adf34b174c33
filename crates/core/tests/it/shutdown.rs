//! Closing the input drains every admitted request; a shutdown deadline aborts what is left.

use std::sync::Arc;
use std::time::Duration;

use tokio_prompt_orchestrator::{
    EchoWorker, ModelWorker, PipelineBuilder, PipelineError, PromptRequest, ResponseEvent, SessionId,
};

use crate::support::{ProbeWorker, blocking_config, chat, small_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_input_drains_every_admitted_request_under_load() {
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::new());
    let handles = PipelineBuilder::new(worker)
        .config(small_config(2, 64, 32))
        .spawn();

    // Eight producers: half fire-and-forget, half submitted with handles. The input sheds when
    // full, so some are refused; every admitted one must reach exactly one final event.
    let mut producers = Vec::new();
    for p in 0..8 {
        let sender = handles.input_tx.clone();
        producers.push(tokio::spawn(async move {
            let (mut admitted, mut finals) = (0u64, 0u64);
            for i in 0..500 {
                let session = SessionId::new(format!("p{p}-s{}", i % 7));
                if p % 2 == 0 {
                    let request = PromptRequest {
                        session,
                        input: format!("hello {i}"),
                        meta: Default::default(),
                    };
                    match sender.send(request).await {
                        Ok(_) => admitted += 1,
                        Err(PipelineError::Overloaded { .. }) => tokio::task::yield_now().await,
                        Err(e) => panic!("unexpected {e}"),
                    }
                } else {
                    match sender.submit(chat(session.as_str(), "hi there")).await {
                        Ok(mut handle) => {
                            admitted += 1;
                            let mut seen = 0;
                            while let Some(event) = handle.recv().await {
                                seen += usize::from(event.is_final());
                            }
                            assert_eq!(seen, 1, "exactly one final event");
                            finals += 1;
                        }
                        Err(PipelineError::Overloaded { .. }) => tokio::task::yield_now().await,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }
            (admitted, finals)
        }));
    }
    drop(handles.input_tx);
    let mut output_rx = handles.output_rx;
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(o) = output_rx.recv().await {
            assert!(o.result.is_ok());
            n += 1;
        }
        n
    });
    let (mut admitted, mut finals) = (0, 0);
    for p in producers {
        let (a, f) = p.await.expect("producer");
        admitted += a;
        finals += f;
    }
    finals += reader.await.expect("reader");
    handles.pipeline.join().await;

    let stats = handles.pipeline.stats();
    assert_eq!(finals, admitted, "events received == requests admitted");
    assert_eq!(stats.admitted, admitted);
    assert_eq!(stats.completed, admitted);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.admitted + stats.shed, 4_000);
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_what_is_left_at_the_deadline_and_reports_it() {
    let (worker, _gate) = ProbeWorker::gated(1);
    let probe = worker.probe.clone();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(2, 16, 16))
        .spawn();

    let mut running = Vec::new();
    for i in 0..5 {
        running.push(
            handles
                .input_tx
                .submit(chat(&format!("s{i}"), "never finishes"))
                .await
                .expect("admitted"),
        );
    }
    probe.started.wait_for(5).await;

    let report = handles.pipeline.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.aborted, report.drained), (5, 0));
    for mut handle in running {
        assert_eq!(handle.recv().await, Some(ResponseEvent::Token("never ".into())));
        assert_eq!(
            handle.recv().await,
            Some(ResponseEvent::Error(Box::new(PipelineError::Shutdown)))
        );
        assert_eq!(handle.recv().await, None);
    }
    probe.cancelled.wait_for(5).await;
    assert_eq!(
        handles.input_tx.submit(chat("late", "hello")).await.unwrap_err(),
        PipelineError::Closed
    );
    let stats = handles.pipeline.stats();
    assert_eq!((stats.cancelled, stats.in_flight), (5, 0));
}

#[tokio::test(start_paused = true)]
async fn close_refuses_new_requests_but_finishes_admitted_ones() {
    let worker = ProbeWorker::with_delay(Duration::from_millis(50));
    let mut handles = PipelineBuilder::new(Arc::new(worker))
        .config(blocking_config(2, 64, 4))
        .spawn();
    for i in 0..30 {
        let request = PromptRequest {
            session: SessionId::new(format!("s{}", i % 3)),
            input: format!("request {i}"),
            meta: Default::default(),
        };
        handles.input_tx.send(request).await.expect("admitted");
    }
    // The sender is still alive: closing must not depend on it being dropped.
    let report = handles.pipeline.shutdown(Duration::from_secs(3600)).await;
    assert_eq!(report.aborted, 0);
    assert_eq!(handles.pipeline.stats().completed, 30);
    assert_eq!(
        handles
            .input_tx
            .send(PromptRequest {
                session: SessionId::new("late"),
                input: "x".into(),
                meta: Default::default(),
            })
            .await
            .unwrap_err(),
        PipelineError::Closed
    );
    let mut n = 0;
    while let Ok(o) = handles.output_rx.try_recv() {
        assert!(o.result.is_ok());
        n += 1;
    }
    assert_eq!(n, 30);
}
