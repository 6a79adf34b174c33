//! The dead-letter file: acknowledged entries survive the writer being killed mid-write, and
//! `orchestrator dlq list|show|purge` reads and empties it.
//!
//! The crash test kills a real process, so it needs a writer process without a hidden command in
//! the shipped binary: it runs this test binary again, selecting only `writer_child`, which
//! writes only when `CRASH_FILE` names a file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orchestrator_server::dlq::{Attempt, DeadLetter, DlqStore, ListFilter, Reason};
use serde_json::json;

/// Set only for the writer process: the dead-letter file it writes to.
const CRASH_FILE: &str = "ORCHESTRATOR_DLQ_CRASH_FILE";
/// Acknowledgements the parent waits for before it kills the writer.
const ACKS_BEFORE_KILL: usize = 200;
/// The writer stops by itself after this many entries, should its parent be gone.
const CHILD_MAX_ENTRIES: u64 = 100_000;

/// Entry number `n`, the same in both processes, so the parent knows what each acknowledged id
/// must hold. `n` is in the model name too, so that any entry can be checked.
fn letter(n: u64) -> DeadLetter {
    DeadLetter {
        id: 0,
        recorded_at_ms: 1_704_067_200_000 + n,
        received_at_ms: 1_704_067_199_000 + n,
        endpoint: "/v1/chat/completions".into(),
        model: format!("model-{n}"),
        key: n.is_multiple_of(3).then(|| "team-a".into()),
        priority: ["high", "normal", "low"][(n % 3) as usize].into(),
        session: n.is_multiple_of(2).then(|| format!("session-{n}")),
        request: json!({
            "model": format!("model-{n}"),
            "messages": [{"role": "user", "content": "x".repeat((n % 500) as usize)}],
        }),
        reason: Reason::Failed,
        stage: Some("inference".into()),
        error: format!("every backend failed for request {n}"),
        error_kind: "worker".into(),
        attempts: vec![Attempt {
            backend: "vllm-a".into(),
            error: format!("503 ({n})"),
        }],
        replays: 0,
        last_replay_error: None,
    }
}

fn with_id(mut entry: DeadLetter, id: u64) -> DeadLetter {
    entry.id = id;
    entry
}

/// The writer process of `acknowledged_entries_survive_sigkill`; returns at once in a normal run.
/// Eight tasks append until killed, printing `acked <id> <n>` after each acknowledged append.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writer_child() {
    let Some(path) = std::env::var_os(CRASH_FILE) else {
        return;
    };
    let store = DlqStore::open(Path::new(&path)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (store, counter) = (store.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if n >= CHILD_MAX_ENTRIES {
                        return;
                    }
                    let id = store.append(letter(n)).await.unwrap();
                    // One write of one whole line: a pipe write this small is atomic, so a kill
                    // cannot leave half a line that reads as another id.
                    let line = format!("acked {id} {n}\n");
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(line.as_bytes()).unwrap();
                    stdout.flush().unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Reads `acked <id> <n>` lines into `acked`; anything else (libtest's own lines) is skipped.
/// Returns false at the end of the output.
fn read_ack(out: &mut impl BufRead, acked: &mut BTreeMap<u64, u64>) -> bool {
    let mut line = String::new();
    if out.read_line(&mut line).unwrap_or(0) == 0 {
        return false;
    }
    // Only whole lines count.
    let Some(line) = line.strip_suffix('\n') else {
        return true;
    };
    if let Some(rest) = line.strip_prefix("acked ") {
        let (id, n) = rest.split_once(' ').unwrap();
        let previous = acked.insert(id.parse().unwrap(), n.parse().unwrap());
        assert_eq!(previous, None, "id {id} acknowledged twice");
    }
    true
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "dlq::writer_child", "--nocapture"])
        .env(CRASH_FILE, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = BTreeMap::new();
    while acked.len() < ACKS_BEFORE_KILL && read_ack(&mut out, &mut acked) {}
    // SIGKILL on unix: no destructor, no flush, the writer stops wherever it is.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    // Acknowledgements already in the pipe count too; the pipe ends with the process.
    while read_ack(&mut out, &mut acked) {}
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "the writer exited ({status}) after {} acknowledgements",
        acked.len()
    );

    // Reopening repairs the file after the crash; every acknowledged entry must be there.
    let store = DlqStore::open(&path).unwrap();
    for (&id, &n) in &acked {
        assert_eq!(
            store.get_blocking(id).unwrap(),
            Some(with_id(letter(n), id)),
            "acknowledged id {id}"
        );
    }
    // And the file is consistent: what is listed is what is counted, and each entry is whole
    // (some were committed but not yet acknowledged when the kill came).
    let listed = store.list_blocking(ListFilter::default()).unwrap();
    assert_eq!(store.len_blocking().unwrap(), listed.len() as u64);
    assert!(listed.len() >= acked.len());
    for entry in &listed {
        let n = entry.model.strip_prefix("model-").unwrap().parse().unwrap();
        assert_eq!(*entry, with_id(letter(n), entry.id));
    }
    assert!(listed.windows(2).all(|pair| pair[0].id < pair[1].id));
    // Ids go on after the largest one used before the crash.
    let last = listed.last().unwrap().id;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let id = runtime.block_on(store.append(letter(0))).unwrap();
    assert!(id > last, "{id} after {last}");
}

/// Runs `orchestrator dlq ARGS`: exit status, stdout, stderr.
fn dlq(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("dlq")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A dead-letter file holding `letter(1)` and `letter(2)` as ids 1 and 2, closed again.
async fn file_with_two_entries(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("dlq.redb");
    let store = DlqStore::open(&path).unwrap();
    store.append(letter(1)).await.unwrap();
    store.append(letter(2)).await.unwrap();
    drop(store);
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn list_shows_every_entry_as_a_table_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_two_entries(&dir).await;
    let (status, stdout, stderr) = dlq(&["--file", &file, "list"]);
    assert_eq!((status, stderr.as_str()), (0, ""));
    assert_eq!(
        stdout,
        "ID  RECORDED              REASON  MODEL    KIND    ERROR\n\
         \x201  2024-01-01T00:00:00Z  failed  model-1  worker  every backend failed for request 1\n\
         \x202  2024-01-01T00:00:00Z  failed  model-2  worker  every backend failed for request 2\n"
    );

    // The options may also come after the subcommand.
    let (status, stdout, _) = dlq(&["list", "--json", "--file", &file]);
    assert_eq!(status, 0);
    let entries: Vec<DeadLetter> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries, [with_id(letter(1), 1), with_id(letter(2), 2)]);

    let (_, stdout, _) = dlq(&["--file", &file, "list", "--limit", "1", "--json"]);
    assert_eq!(stdout.lines().count(), 1);
    let (status, stdout, stderr) = dlq(&["--file", &file, "list", "--since", "1h"]);
    assert_eq!((status, stdout.as_str()), (0, ""), "recorded in 2024: {stderr}");
    let (_, stdout, _) = dlq(&["--file", &file, "list", "--since", "2023-12-31T00:00:00Z"]);
    assert_eq!(stdout.lines().count(), 3);
}

#[tokio::test]
async fn show_prints_one_entry_and_exits_1_for_an_unknown_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_two_entries(&dir).await;
    let (status, stdout, _) = dlq(&["--file", &file, "show", "2"]);
    assert_eq!(status, 0);
    let entry: DeadLetter = serde_json::from_str(&stdout).unwrap();
    assert_eq!(entry, with_id(letter(2), 2));

    let (status, stdout, stderr) = dlq(&["--file", &file, "show", "99"]);
    assert_eq!((status, stdout.as_str()), (1, ""));
    assert_eq!(stderr, "no dead-letter entry with id 99\n");
}

#[tokio::test]
async fn purge_needs_yes_and_then_empties_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_two_entries(&dir).await;
    let (status, stdout, stderr) = dlq(&["--file", &file, "purge"]);
    assert_eq!((status, stdout.as_str()), (2, ""));
    assert!(stderr.contains("add --yes"), "{stderr}");
    assert_eq!(DlqStore::open(Path::new(&file)).unwrap().len().await.unwrap(), 2);

    let (status, stdout, _) = dlq(&["--file", &file, "purge", "--yes"]);
    assert_eq!(status, 0);
    assert!(stdout.starts_with("removed 2 dead-letter entries"), "{stdout}");
    let (status, stdout, stderr) = dlq(&["--file", &file, "list"]);
    assert_eq!((status, stdout.as_str()), (0, ""));
    assert_eq!(stderr, "no dead-letter entries\n");
}

#[tokio::test]
async fn a_file_held_by_another_process_is_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_two_entries(&dir).await;
    // This process plays the running gateway; the command is the other process.
    let _gateway = DlqStore::open(Path::new(&file)).unwrap();
    let (status, _, stderr) = dlq(&["--file", &file, "list"]);
    assert_eq!(status, 1);
    assert_eq!(
        stderr,
        format!(
            "the dead-letter file `{file}` is open in another process (a running gateway?); \
             use its admin API: GET /admin/dlq, POST /admin/dlq/replay\n"
        )
    );
}

#[test]
fn mistakes_in_the_command_exit_2_with_a_hint() {
    let (status, _, stderr) = dlq(&["list"]);
    assert_eq!(status, 2);
    assert_eq!(
        stderr,
        "give --config FILE (with a [dlq] section) or --file DLQ_FILE\n"
    );
    let (status, _, stderr) = dlq(&["--file", "unused.redb", "list", "--since", "yesterday"]);
    assert_eq!(status, 2);
    assert!(
        stderr.contains("2026-11-29T10:00:00Z") && stderr.contains("30m, 2h or 1d"),
        "{stderr}"
    );
}
