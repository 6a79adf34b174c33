//! Property tests: under random interleavings, sizes and timings nothing is lost and each
//! session's outputs keep their submission order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio_prompt_orchestrator::{PipelineBuilder, PromptRequest, SessionId};

use crate::support::{ProbeWorker, blocking_config};

#[derive(Debug, Clone)]
struct Req {
    session: usize,
    words: usize,
    /// Submitted with a handle instead of fire-and-forget.
    with_handle: bool,
}

fn requests() -> impl Strategy<Value = Vec<Req>> {
    prop::collection::vec(
        (0..6usize, 1..6usize, any::<bool>()).prop_map(|(session, words, with_handle)| Req {
            session,
            words,
            with_handle,
        }),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn nothing_is_lost_and_session_order_is_kept(
        reqs in requests(),
        shards in 1..4usize,
        capacity in 1..6usize,
        concurrency in 1..6usize,
        delay_us in 0..500u64,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let worker = ProbeWorker::with_delay(Duration::from_micros(delay_us));
            let mut handles = PipelineBuilder::new(Arc::new(worker))
                .config(blocking_config(shards, capacity, concurrency))
                .spawn();
            let sender = handles.input_tx.clone();
            let submitted = reqs.clone();
            let producer = tokio::spawn(async move {
                let mut waiting = Vec::new();
                for (i, r) in submitted.iter().enumerate() {
                    let text = format!("r{i}{}", " w".repeat(r.words));
                    let session = SessionId::new(format!("s{}", r.session));
                    if r.with_handle {
                        let request = crate::support::chat(session.as_str(), &text);
                        let handle = sender.submit(request).await.expect("admitted");
                        // Read each handle concurrently so none holds the pipeline back.
                        waiting.push(tokio::spawn(handle.into_response()));
                    } else {
                        let request = PromptRequest { session, input: text, meta: Default::default() };
                        sender.send(request).await.expect("admitted");
                    }
                }
                let mut texts = Vec::new();
                for w in waiting {
                    texts.push(w.await.expect("task").expect("completes").text);
                }
                texts
            });
            drop(handles.input_tx);

            let mut per_session: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            let mut outputs = 0;
            while let Some(o) = handles.output_rx.recv().await {
                let text = o.result.expect("completes").text;
                let i: usize = text.split(' ').next().and_then(|w| w[1..].parse().ok()).expect("r<i>");
                per_session.entry(o.session.to_string()).or_default().push(i);
                outputs += 1;
            }
            let handle_texts = producer.await.expect("producer");
            handles.pipeline.join().await;

            let fire_and_forget = reqs.iter().filter(|r| !r.with_handle).count();
            assert_eq!(outputs, fire_and_forget, "one output per fire-and-forget request");
            assert_eq!(handle_texts.len(), reqs.len() - fire_and_forget, "one answer per handle");
            for ids in per_session.values() {
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "session order kept: {ids:?}");
            }
            let stats = handles.pipeline.stats();
            assert_eq!(stats.admitted, reqs.len() as u64);
            assert_eq!(stats.completed, reqs.len() as u64);
            assert_eq!(stats.in_flight, 0);
            assert_eq!(handles.pipeline.tracked_sessions(), 0);
        });
    }
}
