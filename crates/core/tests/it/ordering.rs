//! A session's requests keep their submission order through every stage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_prompt_orchestrator::PipelineBuilder;

use crate::support::{ProbeWorker, blocking_config, outputs, send_numbered, sequence};

#[tokio::test(start_paused = true)]
async fn each_session_keeps_its_order_at_the_model_and_at_the_output() {
    const SESSIONS: usize = 40;
    const PER_SESSION: usize = 25;
    // Every token takes 1 ms, and prompts differ in length, so later requests often finish first.
    let worker = ProbeWorker::with_delay(Duration::from_millis(1));
    let probe = worker.probe.clone();
    let mut handles = PipelineBuilder::new(Arc::new(worker))
        .config(blocking_config(4, 64, 16))
        .spawn();

    let producer = tokio::spawn(send_numbered(handles.input_tx.clone(), SESSIONS, PER_SESSION));
    drop(handles.input_tx);
    let got = outputs(&mut handles.output_rx, SESSIONS * PER_SESSION + 1).await;
    producer.await.expect("producer");
    handles.pipeline.join().await;
    assert_eq!(
        got.len(),
        SESSIONS * PER_SESSION,
        "every request has exactly one output"
    );

    let mut at_output: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for o in got {
        let text = o.result.expect("completes").text;
        at_output
            .entry(o.session.to_string())
            .or_default()
            .push(sequence(&text));
    }
    let mut at_model: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (session, prompt) in probe.calls() {
        at_model.entry(session).or_default().push(sequence(&prompt));
    }
    let expected: Vec<usize> = (0..PER_SESSION).collect();
    for s in 0..SESSIONS {
        let key = format!("session-{s}");
        assert_eq!(at_model[&key], expected, "{key}: order of model calls");
        assert_eq!(at_output[&key], expected, "{key}: order of outputs");
    }
    assert_eq!(
        handles.pipeline.tracked_sessions(),
        0,
        "no per-session state is left behind"
    );
}
