//! Cluster mode against a real nats-server (JetStream, a temporary store) and real `orchestrator`
//! processes: each test starts its own broker on a free port and stops it.

mod dead_letters;
mod limits;
mod membership;
mod pushed;
mod verdicts;
pub mod workers;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::binary::{Binary, next_log, spawn_binary_with};

/// A nats-server with JetStream, its store in a temporary directory; killed when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    store: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        // A port free now; the server takes it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            store: tempfile::tempdir().unwrap(),
        };
        nats.run().await;
        nats
    }

    async fn run(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "nats-server is not installed: scripts/setup-nats.sh installs it (scripts/test.sh runs it)",
            );
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not listen on port {} within 5 s", self.port);
    }

    /// Kills the server (its store stays, as a crashed broker's would).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Shuts the server down as an operator would (SIGTERM), and waits until it has gone.
    pub async fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().unwrap().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
            assert!(sent.success());
            child.wait().await.unwrap();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    /// A client of the test's own, to look into (or tamper with) what the nodes stored.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap())
    }
}

/// Stops `nats` and waits until `node` says it lost it.
pub async fn stop_nats_seen_by(nats: &mut Nats, node: &mut Binary) {
    nats.stop().await;
    lost_nats(node).await;
}

/// Waits until `node` says it lost NATS.
pub async fn lost_nats(node: &mut Binary) {
    next_log(&mut node.logs, |log| {
        log["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Lost NATS"))
    })
    .await;
}

/// `[cluster]` for node `name`, with a short heartbeat so that tests see membership change fast.
pub fn cluster_section(nats: &Nats, name: &str) -> String {
    format!(
        "[cluster]\nnats_url = \"{}\"\nnode_name = \"{name}\"\nheartbeat_ms = 200\nnode_timeout_ms = 1000\n",
        nats.url
    )
}

/// One echo model, `echo`.
pub const ECHO: &str =
    "[[backends]]\nkind = \"echo\"\nname = \"e\"\n\n[[models]]\nname = \"echo\"\nbackends = [\"e\"]\n";

/// Node `name` of the cluster at `nats`, serving `config` (which must not have a [cluster]).
pub async fn node(nats: &Nats, name: &str, config: &str) -> Binary {
    let config = format!("{config}\n{}", cluster_section(nats, name));
    spawn_binary_with(&config, &["--listen", "127.0.0.1:0"], &[]).await
}

/// The tests' HTTP client: a node that never answers fails the test, naming the call, rather
/// than hanging the suite.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET url` with [`http`].
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// The JSON answer to `GET url`.
pub async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    get(url).await.unwrap().json().await.unwrap()
}

/// `GET /admin/cluster` of `node`.
pub async fn cluster_view(node: &Binary) -> (u16, Value) {
    let response = get(format!("{}/admin/cluster", node.base)).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The names of the live nodes `node` lists.
pub async fn member_names(node: &Binary) -> Vec<String> {
    let (status, view) = cluster_view(node).await;
    assert_eq!(status, 200, "{view}");
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `orchestrator ARGS...`, which must succeed; its standard output's JSON lines.
pub async fn command_json_lines(args: &[&str]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `orchestrator serve ARGS...`, which must fail to start (exit status 1); its standard error.
pub async fn refused_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The Prometheus text of the process at `base`.
pub async fn metrics_text(base: &str) -> String {
    get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `check` until it holds; the bound only turns a hang into a failure.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}
