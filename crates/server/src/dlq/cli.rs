//! `orchestrator dlq list|show|replay|purge`: the dead-letter file from the command line, for
//! when no gateway has it open (a running gateway answers the same questions at `/admin/dlq`),
//! or the cluster's shared queue (`--cluster`, or a config with `[cluster]`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use tokio_prompt_orchestrator::Layout;

use super::entry::{DeadLetter, unix_ms};
use super::queue::DeadLetterQueue;
use super::replay::{Selection, replay};
use super::store::{DlqStore, ListFilter};
use crate::cluster::config::ClusterConfig;
use crate::cluster::connect;
use crate::cluster::dlq::SharedDlq;
use crate::config::Config;
use crate::gateway::Format;
use crate::gateway::live::Live;
use crate::models::build_router;

/// Exit status of a refused or mistaken command (as clap's own usage errors).
const USAGE: u8 = 2;
/// Longest part of an error message `list` shows in its table.
const ERROR_CHARS: usize = 60;

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// Pipeline configuration file; its `[dlq] path` names the dead-letter file.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The dead-letter file; overrides the config's `[dlq] path`.
    #[arg(long, value_name = "DLQ_FILE", global = true, conflicts_with = "cluster")]
    pub file: Option<PathBuf>,
    /// The cluster's shared queue at this NATS server, instead of a file (a config with
    /// `[cluster]` selects it too).
    #[arg(long, value_name = "NATS_URL", env = "ORCHESTRATOR_CLUSTER", global = true)]
    pub cluster: Option<String>,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List entries, oldest first: a table, or JSON lines with --json.
    List(ListArgs),
    /// Print one entry as JSON; exit 1 when there is none with that id.
    Show {
        /// The entry's id, as `list` shows it.
        id: u64,
    },
    /// Send entries through a pipeline built from --config again (its backends, not a running
    /// gateway's); each entry that succeeds leaves the queue. Exit 1 if any failed.
    Replay(ReplayArgs),
    /// Remove every entry (ids are not reused afterwards).
    Purge {
        /// Really remove them; without it, nothing is removed and the exit status is 2.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only entries recorded since TIME: RFC 3339 in UTC (2026-11-29T10:00:00Z), or an age
    /// such as 30m, 2h or 1d meaning that long ago.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<SystemTime>,
    /// At most N entries (the oldest N that match).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ReplayArgs {
    /// The entries' ids, as `list` shows them.
    #[arg(value_name = "ID")]
    pub ids: Vec<u64>,
    /// Every entry.
    #[arg(long)]
    pub all: bool,
    /// Entries recorded since TIME (as for `list`).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<SystemTime>,
}

impl ReplayArgs {
    fn selection(&self) -> Selection {
        match (self.all, self.since) {
            (true, _) => Selection::All,
            (false, Some(since)) => Selection::Since(unix_ms(since)),
            (false, None) => Selection::Ids(self.ids.clone()),
        }
    }
}

/// Parses `--since`: an RFC 3339 UTC time, or an age counted back from now.
pub fn parse_since(value: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339(value) {
        return Ok(time);
    }
    match humantime::parse_duration(value) {
        // An age further back than 1970 means "everything".
        Ok(age) => Ok(SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)),
        Err(_) => Err(format!(
            "expected an RFC 3339 UTC time such as 2026-11-29T10:00:00Z, or an age such as \
             30m, 2h or 1d; got `{value}`"
        )),
    }
}

/// The config `--config` names, or the built-in default.
fn config(args: &DlqArgs) -> Result<Config, String> {
    match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// The dead-letter file to open: `--file`, else the config's `[dlq] path`.
fn dlq_path(args: &DlqArgs, config: &Config) -> Result<PathBuf, String> {
    match (&args.file, &config.dlq) {
        (Some(file), _) => Ok(file.clone()),
        (None, Some(dlq)) => Ok(dlq.path.clone()),
        (None, None) => Err(match &args.config {
            Some(path) => format!("{} has no [dlq] section; give --file DLQ_FILE", path.display()),
            None => "give --config FILE (with a [dlq] section) or --file DLQ_FILE".into(),
        }),
    }
}

/// The cluster whose shared queue to use: `--cluster`, else the config's `[cluster]`; none when
/// `--file` names a file.
fn cluster(args: &DlqArgs, config: &Config) -> Option<ClusterConfig> {
    if args.file.is_some() {
        return None;
    }
    ClusterConfig::with_url(config.cluster.clone(), args.cluster.as_deref())
}

/// The queue the command works on: the cluster's stream, or the file.
async fn open_queue(args: &DlqArgs, config: &Config) -> Result<DeadLetterQueue, String> {
    if let Some(cluster) = cluster(args, config) {
        let (jetstream, _) = connect(&cluster, "dlq-command")
            .await
            .map_err(|e| e.to_string())?;
        let shared = SharedDlq::open(&jetstream, None, "dlq-command")
            .await
            .map_err(|e| e.to_string())?;
        return Ok(DeadLetterQueue::Shared(Arc::new(shared)));
    }
    let path = dlq_path(args, config)?;
    // Blocking, but this runtime runs nothing else, so no one waits for it.
    DlqStore::open(&path)
        .map(DeadLetterQueue::File)
        .map_err(|e| e.to_string())
}

/// Runs `orchestrator dlq ...`: 0 on success, 1 when the queue cannot be used or `show` finds
/// nothing, 2 for a refused or incomplete command. `format` reads and answers replayed requests.
pub async fn run(args: &DlqArgs, format: &dyn Format) -> ExitCode {
    let config = match config(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(USAGE);
        }
    };
    if cluster(args, &config).is_none()
        && let Err(message) = dlq_path(args, &config)
    {
        eprintln!("{message}");
        return ExitCode::from(USAGE);
    }
    if let DlqCommand::Purge { yes: false } = args.command {
        eprintln!("purge removes every entry of the dead-letter queue; add --yes to do it");
        return ExitCode::from(USAGE);
    }
    let result = match open_queue(args, &config).await {
        Err(message) => Err(message),
        Ok(queue) => match &args.command {
            DlqCommand::List(list) => list_entries(&queue, list).await,
            DlqCommand::Show { id } => show(&queue, *id).await,
            DlqCommand::Replay(replay) => replay_entries(config, queue, replay, format).await,
            DlqCommand::Purge { .. } => purge(&queue).await,
        },
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn list_entries(store: &DeadLetterQueue, args: &ListArgs) -> Result<ExitCode, String> {
    let filter = ListFilter {
        since_ms: args.since.map(unix_ms),
        limit: args.limit,
        after_id: None,
    };
    let entries = store.list(filter).await.map_err(|e| e.to_string())?;
    if entries.is_empty() {
        eprintln!("no dead-letter entries");
        return Ok(ExitCode::SUCCESS);
    }
    let out = if args.json {
        let mut out = String::new();
        for entry in &entries {
            let line = serde_json::to_string(entry).map_err(|e| e.to_string())?;
            out.push_str(&line);
            out.push('\n');
        }
        out
    } else {
        table(&entries)
    };
    // A closed pipe (`| head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// One line per entry, columns as wide as their longest value.
fn table(entries: &[DeadLetter]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|entry| {
            [
                entry.id.to_string(),
                rfc3339(entry.recorded_at_ms),
                entry.reason.to_string(),
                entry.model.clone(),
                entry.error_kind.clone(),
                one_line_prefix(&entry.error, ERROR_CHARS),
            ]
        })
        .collect();
    let header = ["ID", "RECORDED", "REASON", "MODEL", "KIND", "ERROR"].map(String::from);
    let mut widths = [0; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let [id, rest @ ..] = row;
        let _ = write!(out, "{id:>w$}", w = widths[0]);
        for (cell, width) in rest.iter().zip(&widths[1..]) {
            let _ = write!(out, "  {cell:<width$}");
        }
        // The last column is padded too; trimmed so lines do not end in spaces.
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// The first `chars` characters of `text`, on one line.
fn one_line_prefix(text: &str, chars: usize) -> String {
    text.chars()
        .take(chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

async fn show(store: &DeadLetterQueue, id: u64) -> Result<ExitCode, String> {
    match store.get(id).await.map_err(|e| e.to_string())? {
        Some(entry) => {
            let json = serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?;
            let _ = writeln!(std::io::stdout().lock(), "{json}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no dead-letter entry with id {id}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Starts the config's pipeline in front of its backends, replays, and drains it again. The
/// queue is open already: the pipeline keeps no dead letters of its own (a failed replay stays
/// in the queue, with its count).
async fn replay_entries(
    mut config: Config,
    store: DeadLetterQueue,
    args: &ReplayArgs,
    format: &dyn Format,
) -> Result<ExitCode, String> {
    config.dlq = None;
    // Offline replay runs in this process alone: `kind = "cluster"` backends are refused (replay
    // through a running node, `POST /admin/dlq/replay`, reaches the workers).
    let models = build_router(&config, None)?;
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let live = Live::start(config, models, 0, None, None, Layout::WorkStealing)?;
    let report = replay(&live, format, None, &store, args.selection())
        .await
        .map_err(|e| e.to_string());
    live.pipeline.shutdown(grace).await;
    let report = report?;
    let mut out = std::io::stdout().lock();
    for done in &report.replayed {
        let _ = writeln!(out, "replayed {}: removed from the queue", done.id);
    }
    for failure in &report.failed {
        let _ = writeln!(
            out,
            "failed {}: {} (still in the queue)",
            failure.id, failure.error
        );
    }
    for id in &report.missing {
        let _ = writeln!(out, "missing {id}: no such entry");
    }
    for id in &report.claimed_elsewhere {
        let _ = writeln!(out, "skipped {id}: another node is replaying it");
    }
    let _ = writeln!(
        out,
        "{} replayed, {} failed, {} missing",
        report.replayed.len(),
        report.failed.len(),
        report.missing.len()
    );
    Ok(if report.failed.is_empty() && report.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn purge(store: &DeadLetterQueue) -> Result<ExitCode, String> {
    let removed = store.purge().await.map_err(|e| e.to_string())?;
    let _ = writeln!(
        std::io::stdout().lock(),
        "removed {removed} dead-letter entries from {}",
        store.describe()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::entry::Reason;

    #[test]
    fn since_takes_rfc3339_or_an_age() {
        assert_eq!(
            parse_since("2026-11-29T10:00:00Z").map(unix_ms),
            Ok(1_795_946_400_000)
        );
        let two_hours_ago = unix_ms(parse_since("2h").unwrap());
        let expected = unix_ms(SystemTime::now()) - 2 * 3_600_000;
        assert!(
            two_hours_ago.abs_diff(expected) < 60_000,
            "{two_hours_ago} vs {expected}"
        );
        assert!(parse_since("1d").is_ok() && parse_since("30m").is_ok());
        assert_eq!(parse_since("100000000y").map(unix_ms), Ok(0));
        let err = parse_since("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339") && err.contains("30m, 2h or 1d"), "{err}");
    }

    #[test]
    fn the_table_aligns_columns_and_cuts_long_errors() {
        let entry = DeadLetter {
            id: 12,
            recorded_at_ms: 1_795_946_400_123,
            received_at_ms: 0,
            endpoint: "/v1/completions".into(),
            model: "m".into(),
            key: None,
            priority: "low".into(),
            session: None,
            request: serde_json::json!({}),
            reason: Reason::Timeout,
            stage: None,
            error: format!("line one\n{}", "x".repeat(100)),
            error_kind: "timeout".into(),
            attempts: Vec::new(),
            replays: 0,
            last_replay_error: None,
        };
        let table = table(&[entry]);
        let error = format!("line one {}", "x".repeat(51));
        assert_eq!(
            table,
            format!(
                "ID  RECORDED              REASON   MODEL  KIND     ERROR\n\
                 12  2026-11-29T10:00:00Z  timeout  m      timeout  {error}\n"
            )
        );
    }
}
