//! `orchestrator top` in a real terminal: run under tmux against a gateway with load on it, it
//! draws every stage and a non-zero request rate, and `q` quits with status 0.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::support::{TestServer, chat_body, client};

/// How often, and how many times, the screen is read before the test gives up: a poll for a
/// condition (the first snapshots arriving), not a timing assertion.
const POLL: Duration = Duration::from_millis(100);
const ATTEMPTS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_draws_a_loaded_gateway_and_q_quits_with_status_0() {
    let gateway = TestServer::default().await;
    let load = load(&gateway);

    let mut tmux = Tmux::start().await;
    let exit_file = tempfile::NamedTempFile::new().unwrap();
    let command = format!(
        "{} top --url {}; echo $? > {}",
        quote(env!("CARGO_BIN_EXE_orchestrator")),
        quote(&gateway.base),
        quote(&exit_file.path().display().to_string()),
    );
    tmux.new_session(160, 50, &command).await;

    let mut screen = String::new();
    for _ in 0..ATTEMPTS {
        screen = tmux.capture().await;
        if shows_every_stage(&screen) && requests_per_second(&screen).is_some_and(|rate| rate > 0.0) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(
        shows_every_stage(&screen),
        "not every stage is on the screen:\n{screen}"
    );
    let rate = requests_per_second(&screen);
    assert!(
        rate.is_some_and(|rate| rate > 0.0),
        "requests/s is {rate:?}:\n{screen}"
    );

    tmux.run(&["send-keys", "-t", "top", "q"]).await;
    let status = exit_status(exit_file.path()).await;
    assert_eq!(
        status.as_deref(),
        Some("0"),
        "top's exit status; last screen:\n{screen}"
    );
    load.abort();
}

/// Requests to `echo`, one after another, until aborted.
fn load(gateway: &TestServer) -> JoinHandle<()> {
    let url = gateway.url("/v1/chat/completions");
    tokio::spawn(async move {
        loop {
            let _ = client().post(&url).json(&chat_body("echo", "load")).send().await;
        }
    })
}

/// A tmux server of the test's own (`-L`), so that neither a user's server nor a parallel test
/// sees it; killed when dropped, on failure too.
struct Tmux {
    socket: String,
    /// The socket's file, known once the server runs: tmux leaves it behind when it ends.
    socket_path: Option<String>,
}

impl Tmux {
    async fn start() -> Self {
        match Command::new("tmux").arg("-V").output().await {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!("tmux -V failed: {}", String::from_utf8_lossy(&output.stderr)),
            Err(e) => panic!(
                "tmux is not installed ({e}): scripts/setup-ui.sh installs it (scripts/test.sh runs it)"
            ),
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        Self {
            socket: format!("orchestrator-top-test-{}-{nanos}", std::process::id()),
            socket_path: None,
        }
    }

    /// Starts the server with the session `top`, a `width`x`height` terminal running `command`.
    async fn new_session(&mut self, width: u16, height: u16, command: &str) {
        let (width, height) = (width.to_string(), height.to_string());
        // `sh -c` rather than tmux's default shell, which is the user's (`echo $?` is no fish).
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width,
            "-y",
            &height,
            "sh",
            "-c",
            command,
        ])
        .await;
        let output = self.run(&["display-message", "-p", "#{socket_path}"]).await;
        self.socket_path = Some(String::from_utf8_lossy(&output.stdout).trim().to_owned());
    }

    /// Runs one tmux command on this server; panics if it fails.
    async fn run(&self, args: &[&str]) -> Output {
        // `-f /dev/null`: a user's ~/.tmux.conf must not change the screen.
        let output = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The pane's text now.
    async fn capture(&self) -> String {
        let output = self.run(&["capture-pane", "-p", "-t", "top"]).await;
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Blocking, as Drop must be; `kill-server` returns at once. Fails harmlessly when the
        // server already ended with its last session.
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Each stage begins a row of the stages table (`│rag   0/512 ...`): a name elsewhere, as
/// `stream` in the footer's URL, does not count.
fn shows_every_stage(screen: &str) -> bool {
    ["rag", "assemble", "inference", "post", "stream"]
        .iter()
        .all(|stage| {
            screen
                .lines()
                .any(|line| line.trim_start_matches('│').starts_with(&format!("{stage} ")))
        })
}

/// The headline's `812.5 req/s`.
fn requests_per_second(screen: &str) -> Option<f64> {
    screen.lines().find_map(|line| {
        let at = line.find(" req/s")?;
        line[..at].split_whitespace().last()?.parse().ok()
    })
}

/// What the command wrote to `path` once top has exited: polled, as the shell writes it just
/// after `q`.
async fn exit_status(path: &Path) -> Option<String> {
    for _ in 0..ATTEMPTS {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with('\n') {
            return Some(text.trim().to_owned());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// `s` as one single-quoted word for tmux's shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn the_screen_readers_find_the_headline_and_the_stage_rows() {
    let screen = "● connected  gw\n812.5 req/s   in flight 41\n│stage   queue\n│rag  0/512\n\
                  │assemble 0/512\n│inference 1/2\n│post 0/1\n│stream 0/1\n q  quit   http://h/admin/stats/stream\n";
    assert!(shows_every_stage(screen));
    assert_eq!(requests_per_second(screen), Some(812.5));
    assert!(!shows_every_stage(" q  quit   http://h/admin/stats/stream\n"));
    assert_eq!(requests_per_second("○ connecting to http://h\n"), None);
}
