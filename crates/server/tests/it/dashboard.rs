//! The dashboard in a real browser: headless Chromium (Debian's, with its chromedriver, installed
//! by `scripts/setup-ui.sh`) loads `/dashboard` while a load runs, is asked for the admin key,
//! and shows the numbers moving and the sheds. A screenshot is kept under `target/tmp/`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use orchestrator_server::Config;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::support::{TestServer, chat_body, client, eventually};

/// Four places in the pipeline and one waiting; three are held by the `gated` model, so bursts of
/// requests to `echo` complete one at a time and the rest are shed.
const CONFIG: &str = r#"
    [admission]
    max_in_flight = 4
    max_queued = 1
    [[auth.keys]]
    name = "ops"
    sha256 = "c391959605db2757d87bf45d5f4c9bda42b68e95dcd157bf4f2473516c2bc9bb" # sk-ops
    admin = true
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "echo"
    backends = ["echo"]
    [[models]]
    name = "gated"
    backends = ["echo"]
"#;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one headless Chromium session; both end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    async fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: run scripts/setup-ui.sh (scripts/test.sh does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
        };
        let ready = format!("{}/status", browser.base);
        for _ in 0..200 {
            if client().get(&ready).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // This machine's network is closed: background fetches would only fail.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ];
        let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created = browser.call("POST", "/session", capabilities).await;
        browser.session = created["sessionId"].as_str().expect("a session").to_string();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => client().post(url).json(&body),
            "DELETE" => client().delete(url),
            _ => client().get(url),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn open(&self, url: &str) {
        self.session("POST", "/url", json!({"url": url})).await;
    }

    /// Runs `script` in the page and returns what it returns.
    async fn run(&self, script: &str) -> Value {
        self.session("POST", "/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// The page's numbers the test reads, as JSON.
    async fn numbers(&self) -> Value {
        self.run(
            "const t = id => document.getElementById(id).textContent; \
             const inference = document.getElementById('stage-inference'); \
             return {snapshots: Number(document.body.dataset.snapshots || 0), \
                     completed: Number(t('total-completed')), shed: Number(t('total-shed')), \
                     rate: Number(t('rate')), \
                     inference_in_flight: Number(inference.querySelector('.in-flight').textContent), \
                     key_form_hidden: document.getElementById('key-form').hidden};",
        )
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self.session("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a PNG in base64"))
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Bursts of four `echo` requests until stopped: with one place free and one queue place, each
/// burst completes some and sheds the others.
fn load(server: &TestServer) -> JoinHandle<()> {
    let url = server.url("/v1/chat/completions");
    tokio::spawn(async move {
        loop {
            let burst = (0..4).map(|i| {
                client()
                    .post(&url)
                    .bearer_auth("sk-ops")
                    .json(&chat_body("echo", &format!("load {i}")))
                    .send()
            });
            futures_util::future::join_all(burst).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_running_load_and_its_sheds() {
    let server = TestServer::start(Config::parse(CONFIG, "dashboard.toml").unwrap()).await;
    // Three requests held in Inference for the whole test.
    let mut held = Vec::new();
    for i in 0..3 {
        let request = client()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth("sk-ops")
            .json(&chat_body("gated", &format!("held {i}")));
        held.push(tokio::spawn(request.send()));
    }
    let worker = server.worker.clone();
    eventually("three requests reach the model", move || worker.started() == 3).await;
    let load = load(&server);

    let browser = Browser::start().await;
    browser.open(&server.url("/dashboard")).await;
    // The feed needs the admin key: the page asks for it.
    for _ in 0..200 {
        if browser.numbers().await["key_form_hidden"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        browser.numbers().await["key_form_hidden"],
        false,
        "the page asks for a key"
    );
    browser
        .run(
            "document.getElementById('key-input').value = 'sk-ops'; \
             document.getElementById('key-submit').click(); return true;",
        )
        .await;

    // Snapshots arrive and the numbers move.
    let mut first: Option<Value> = None;
    let mut moved = None;
    for _ in 0..400 {
        let numbers = browser.numbers().await;
        let snapshots = numbers["snapshots"].as_u64().unwrap();
        match &first {
            None if snapshots >= 1 => first = Some(numbers),
            Some(earlier)
                if snapshots >= earlier["snapshots"].as_u64().unwrap() + 3
                    && numbers["completed"].as_u64() > earlier["completed"].as_u64()
                    && numbers["shed"].as_u64().unwrap() > 0
                    && numbers["rate"].as_f64().unwrap() > 0.0 =>
            {
                moved = Some(numbers);
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = moved.unwrap_or_else(|| panic!("the numbers did not move and show a shed: {first:?}"));
    assert_eq!(moved["key_form_hidden"], true);
    assert_eq!(moved["inference_in_flight"], 3, "the held requests: {moved}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(&shot, png).unwrap();
    browser.session("DELETE", "", Value::Null).await;

    load.abort();
    server.worker.release(1000);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
}
