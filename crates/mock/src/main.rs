//! `mock-upstream [FLAGS]`: the mock model server on its own, for benchmarks and for trying the
//! gateway without a GPU. Stops on SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use orchestrator_mock::{MockArgs, MockConfig, MockUpstream};
use tokio::signal::unix::{SignalKind, signal};

/// A fake OpenAI-compatible and llama.cpp model server (tests, benchmarks, no GPU).
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version)]
struct Cli {
    /// Log lines as JSON objects (for scripts that read the bound address from the log).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    args: MockArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let config = MockConfig::from(cli.args);
    let listen = config.listen;
    let mock = match MockUpstream::bind(config).await {
        Ok(mock) => mock,
        Err(e) => {
            tracing::error!(%listen, error = %e, "Cannot listen.");
            return ExitCode::FAILURE;
        }
    };
    let addr = mock.local_addr().map_or(listen, |addr| addr);
    tracing::info!(%addr, "Mock upstream listening; OpenAI base_url is http://{addr}/v1");
    match mock.run(stopped()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "The mock upstream failed.");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn stopped() {
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
