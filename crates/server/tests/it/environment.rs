//! The per-host overrides of the environment: `ORCHESTRATOR_LISTEN` sets the binary's listen
//! address, over the config file's `server.listen`.

use crate::binary::{Binary, spawn_binary_with};
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
    let wanted = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{in_file}\"\n\n[[backends]]\nkind = \"echo\"\nname = \"echo\"\n\n\
         [[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n"
    );
    // No --listen: the variable is what moves the listener off the file's address.
    let Binary {
        base,
        child: _child,
        file: _file,
        logs: _logs,
        ..
    } = spawn_binary_with(&config, &[], &[("ORCHESTRATOR_LISTEN", &wanted)]).await;
    assert_eq!(base, format!("http://{wanted}"));
    let health = client().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(taken);
}
