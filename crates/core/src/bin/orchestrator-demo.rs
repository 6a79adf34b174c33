//! `orchestrator-demo`: ten requests from three sessions through all five stages with
//! `EchoWorker`, each answer printed as it arrives, then where the time went, stage by stage.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_prompt_orchestrator::{
    EchoWorker, ModelWorker, PromptRequest, SessionId, Stage, StageTimings, spawn_pipeline,
};

const PROMPTS: [(&str, &str); 10] = [
    ("alice", "Hello! What can this pipeline do?"),
    ("bob", "Summarise the RAG stage in one line."),
    ("carol", "Tell me a short story about a queue."),
    ("alice", "And how does backpressure work?"),
    ("bob", "Which stage renders the prompt?"),
    ("alice", "What happens when a queue is full?"),
    ("carol", "Once upon a time there was a bounded channel."),
    ("bob", "Does a session keep its order?"),
    ("carol", "The end."),
    ("alice", "Thanks, goodbye!"),
];

#[tokio::main]
async fn main() -> ExitCode {
    // 2 ms per token: slow enough that the streaming stages visibly overlap.
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::with_token_delay(Duration::from_millis(2)));
    let mut handles = spawn_pipeline(worker);

    for (session, input) in PROMPTS {
        let request = PromptRequest {
            session: SessionId::new(session),
            input: input.to_string(),
            meta: Default::default(),
        };
        if let Err(error) = handles.input_tx.send(request).await {
            eprintln!("request refused: {error}");
            return ExitCode::FAILURE;
        }
    }
    // Closing the input lets everything admitted drain; the output stream then ends.
    drop(handles.input_tx);

    let mut timings = Vec::new();
    let mut failures = 0;
    while let Some(output) = handles.output_rx.recv().await {
        match output.result {
            Ok(response) => {
                println!(
                    "{:>6} {:<7} {:?} ({}, {} tokens)",
                    output.id.to_string(),
                    output.session.as_str(),
                    response.text,
                    format!("{:?}", response.completion.finish_reason).to_lowercase(),
                    response.completion.usage.completion_tokens
                );
                timings.push(response.completion.timings);
            }
            Err(error) => {
                failures += 1;
                println!(
                    "{:>6} {:<7} error: {error}",
                    output.id.to_string(),
                    output.session.as_str()
                );
            }
        }
    }
    handles.pipeline.join().await;

    print_summary(&timings);
    let stats = handles.pipeline.stats();
    println!(
        "\nadmitted {}, completed {}, failed {}, in flight {}",
        stats.admitted, stats.completed, stats.failed, stats.in_flight
    );
    if failures == 0 && stats.completed == PROMPTS.len() as u64 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_summary(timings: &[StageTimings]) {
    println!(
        "\nper-stage latency over {} requests (median / max):",
        timings.len()
    );
    println!("{:<10} {:>22} {:>22}", "stage", "queued", "active");
    for stage in Stage::ALL {
        let queued: Vec<Duration> = timings.iter().map(|t| t.stage(stage).queued).collect();
        let active: Vec<Duration> = timings.iter().map(|t| t.stage(stage).active).collect();
        println!(
            "{:<10} {:>22} {:>22}",
            stage.as_str(),
            median_max(queued),
            median_max(active)
        );
    }
    let total: Vec<Duration> = timings.iter().map(|t| t.total).collect();
    let overhead: Vec<Duration> = timings.iter().map(StageTimings::overhead).collect();
    println!("{:<10} {:>22}", "total", median_max(total));
    println!(
        "{:<10} {:>22}  (total minus model time)",
        "overhead",
        median_max(overhead)
    );
}

fn median_max(mut values: Vec<Duration>) -> String {
    values.sort();
    match (values.get(values.len() / 2), values.last()) {
        (Some(median), Some(max)) => format!("{median:.1?} / {max:.1?}"),
        _ => "-".to_string(),
    }
}
