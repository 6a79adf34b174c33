//! The per-host overrides of the environment: `ORCHESTRATOR_LISTEN` sets the binary's listen
//! address, over the config file's `server.listen`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::client;

/// A port nothing listens on: the OS picks it, and the listener is closed again.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn orchestrator_listen_sets_the_listen_address_of_the_binary() {
    // The file's address stays taken by this test: a binary that used it could not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_file = taken.local_addr().unwrap().port();
    let wanted = free_port();
    let wanted = format!("127.0.0.1:{wanted}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[server]\nlisten = \"127.0.0.1:{in_file}\"\n\n[[backends]]\nkind = \"echo\"\nname = \"echo\"\n\n\
             [[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n"
        ),
    )
    .unwrap();
    // No --listen: the variable is what moves the listener off the file's address.
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(file.path())
        .env("ORCHESTRATOR_LISTEN", &wanted)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let logged = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the binary logs its address")
            .unwrap()
            .expect("the binary exited before listening");
        let log: Value = serde_json::from_str(&line).unwrap();
        if let Some(addr) = log["fields"]["addr"].as_str() {
            break addr.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(logged, wanted);

    let health = client()
        .get(format!("http://{wanted}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    drop(taken);
}
