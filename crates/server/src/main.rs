//! `orchestrator`: parse the command line, load the config, serve until SIGTERM/SIGINT (reloading
//! the config on SIGHUP), drain;
//! or check a config (`orchestrator validate`), fill the retrieval index (`orchestrator ingest`),
//! or inspect the dead-letter queue (`orchestrator dlq`); or run jobs from the cluster
//! (`orchestrator worker`); or watch a running gateway (`orchestrator top`).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use orchestrator_context::index::Progress;
use orchestrator_server::cli::{Cli, Command, IngestArgs, ServeArgs, ValidateArgs};
use orchestrator_server::config::ClusterConfig;
use orchestrator_server::logsink;
use orchestrator_server::telemetry::init_logging;
use orchestrator_server::{Config, Server, ServerHandle};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// mimalloc rather than the system allocator: glibc's malloc and free took a large share of the
/// gateway's CPU time per request (BENCHMARKS.md). Building without the `mimalloc`
/// feature keeps the system allocator, for heap profilers.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Access-log lines wait in a buffer: write them out before a panic's message and on exit.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        logsink::flush();
        report_panic(info);
    }));
    raise_file_limit();
    let code = match cli.serve_args() {
        // The gateway's runtime is the config's `[runtime]`: read the config first.
        Some(args) => serve(args),
        None => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run(&cli)),
            Err(e) => {
                eprintln!("cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        },
    };
    logsink::flush();
    code
}

/// Every open connection is a file descriptor, and a proxied stream holds two: the usual soft
/// limit (1,024) would refuse connections long before `server.max_connections`. Raised to the
/// hard limit, as far as the system allows.
fn raise_file_limit() {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "Could not raise the open files limit; `ulimit -n` bounds the connections.");
    }
}

async fn run(cli: &Cli) -> ExitCode {
    match &cli.command {
        Some(Command::Validate(args)) => validate(args),
        Some(Command::Ingest(args)) => ingest(args),
        Some(Command::Cluster(args)) => orchestrator_server::cluster::cli::run(args).await,
        Some(Command::Top(args)) => orchestrator_server::stats::top::run(args).await,
        Some(Command::Worker(args)) => {
            let shutdown = shutdown_signal();
            tokio::spawn(refuse_sighup(signal(SignalKind::hangup())));
            orchestrator_server::worker::run(args, shutdown).await
        }
        Some(Command::Dlq(args)) => {
            orchestrator_server::dlq::cli::run(args, &orchestrator_server::api::format::ByPath).await
        }
        // `main` serves on the runtime the config asks for, not on this one.
        None | Some(Command::Serve(_)) => ExitCode::SUCCESS,
    }
}

/// Exit status of a config with problems, for `serve` and `validate` alike.
const INVALID_CONFIG: u8 = 2;

fn validate(args: &ValidateArgs) -> ExitCode {
    let (config, name) = match args.file.as_ref().or(args.config.as_ref()) {
        Some(path) => match Config::load(path) {
            Ok(config) => (config, path.display().to_string()),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(INVALID_CONFIG);
            }
        },
        None => (Config::builtin(), "the built-in default config".to_string()),
    };
    // A closed pipe (`| head`) is not worth a panic.
    let _ = write!(std::io::stdout().lock(), "{name}: valid\n{}", config.summary());
    ExitCode::SUCCESS
}

/// `orchestrator ingest PATH...`: adds files to the config's index (changed files are replaced,
/// unchanged ones skipped).
fn ingest(args: &IngestArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(INVALID_CONFIG);
            }
        },
        None => Config::builtin(),
    };
    let Some(rag) = &config.rag else {
        eprintln!(
            "the config has no [rag] section; add one with [rag.index] path = \"DIR\" to say where the index goes"
        );
        return ExitCode::from(INVALID_CONFIG);
    };
    match orchestrator_context::index::ingest(&rag.index, &args.paths, Progress::auto()) {
        Ok(summary) => {
            let _ = writeln!(std::io::stdout().lock(), "{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, then serves it on the runtime its `[runtime]` asks for.
fn serve(args: &ServeArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(INVALID_CONFIG);
            }
        },
        None => Config::builtin(),
    };
    match config.runtime.build() {
        Ok(runtime) => runtime.block_on(serve_config(args, config)),
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_config(args: &ServeArgs, mut config: Config) -> ExitCode {
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    config.cluster = ClusterConfig::with_url(config.cluster.take(), args.cluster.as_deref());
    let models = config
        .models
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut server = match Server::bind(config.clone()).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(listen = %config.server.listen, error = %e, "Cannot start.");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.config {
        server = server.reload_from(path.clone());
    }
    // Signals are registered before "Listening" is logged: a signal that arrives before its
    // handler exists would end the process the default way (no reload, no drain).
    let shutdown = shutdown_signal();
    tokio::spawn(reload_on_sighup(server.handle(), signal(SignalKind::hangup())));
    match server.local_addr() {
        Ok(addr) => tracing::info!(%addr, models, "Listening; OpenAI base_url is http://{addr}/v1"),
        Err(e) => tracing::warn!(error = %e, "Listening on an unknown address."),
    }
    match server.run(shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "The HTTP server failed.");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the config on every SIGHUP; a file with problems is logged and changes nothing.
async fn reload_on_sighup(server: ServerHandle, hangups: io::Result<Signal>) {
    let mut hangups = match hangups {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP; reload with POST /admin/reload.");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the config.");
        if let Err(e) = server.reload().await {
            tracing::error!("Reload refused; the running config stays.\n{e}");
        }
    }
}

/// A worker reads its config at start only; SIGHUP, which would otherwise end the process, says
/// so instead.
async fn refuse_sighup(hangups: io::Result<Signal>) {
    let Ok(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::warn!(
            "SIGHUP received: a worker reads its config at start only; restart it to apply a new one (SIGTERM drains it first)."
        );
    }
}

/// Listens for SIGTERM and SIGINT (Ctrl-C) from now on; the future completes on the first.
/// Registering before the server says it listens means no early signal ends the process the
/// default way, skipping the drain.
fn shutdown_signal() -> impl Future<Output = ()> {
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    let received = |signal: io::Result<Signal>, name: &'static str| async move {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
                tracing::info!("{name} received.");
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for {name}.");
                std::future::pending::<()>().await;
            }
        }
    };
    async move {
        tokio::select! {
            () = received(terminate, "SIGTERM") => {}
            () = received(interrupt, "SIGINT") => {}
        }
    }
}
