//! The `orchestrator` binary as a child process: started on a config file, its address read from
//! its JSON log, its log lines forwarded for tests to wait on.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A running binary. Dropping `child` kills the process (so bind it, not `..` past it).
pub struct Binary {
    pub child: Child,
    /// `http://host:port`.
    pub base: String,
    /// The config file, which reloads read again.
    pub file: tempfile::NamedTempFile,
    /// Every log line, parsed (`{"raw": line}` when it is not JSON).
    pub logs: mpsc::UnboundedReceiver<Value>,
    /// The log line that gave the address (a worker's also names its gRPC address, `grpc`).
    pub ready: Value,
}

/// `orchestrator serve --listen 127.0.0.1:0` on `config`.
pub async fn spawn_binary(config: &str) -> Binary {
    spawn_binary_with(config, &["--listen", "127.0.0.1:0"], &[]).await
}

/// `orchestrator serve` on `config` with `args` and the environment `env` added.
pub async fn spawn_binary_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> Binary {
    spawn_command("serve", config, args, env).await
}

/// `orchestrator COMMAND` on `config` with `args` and the environment `env` added; the command
/// must log the address it listens on (`addr`).
pub async fn spawn_command(command: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Binary {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), crate::support::toml_in_suite_runtime(config)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg(command)
        .args(args)
        .args(["--log-format", "json", "--config"])
        .arg(file.path())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, mut logs) = mpsc::unbounded_channel();
    // Forwarding every line also keeps the child from blocking on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let log: Value = serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line}));
            // Read on when nobody listens any more: a full pipe would block the child.
            let _ = tx.send(log);
        }
    });
    let log = next_log(&mut logs, |log| log["fields"]["addr"].is_string()).await;
    let addr = log["fields"]["addr"].as_str().unwrap().to_string();
    Binary {
        child,
        base: format!("http://{addr}"),
        file,
        logs,
        ready: log,
    }
}

/// The next log line for which `wanted` holds (bounded: the binary logs within seconds).
pub async fn next_log(logs: &mut mpsc::UnboundedReceiver<Value>, wanted: impl Fn(&Value) -> bool) -> Value {
    let found = async {
        while let Some(log) = logs.recv().await {
            if wanted(&log) {
                return log;
            }
        }
        panic!("the binary exited before logging what was expected");
    };
    tokio::time::timeout(Duration::from_secs(60), found)
        .await
        .expect("the expected log line never came")
}
