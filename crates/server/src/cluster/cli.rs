//! `orchestrator cluster status|push`: the cluster's nodes, and its config, read and written in
//! the broker directly, so they work from any machine that reaches NATS, whether or not a node
//! runs there.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::config::ClusterConfig;
use super::membership::{Member, Members, Role};
use super::{connect, pushed, store};
use crate::config::Config;

/// Exit status of a refused or mistaken command (as clap's own usage errors).
const USAGE: u8 = 2;

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The NATS server, as `serve --cluster` takes it.
    #[arg(long, value_name = "NATS_URL", env = "ORCHESTRATOR_CLUSTER", global = true)]
    pub cluster: Option<String>,
    /// A config whose `[cluster]` section says where NATS is and how to log in.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// List the live nodes: version, config generation, load, models.
    Status {
        /// One JSON object per node, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Validate FILE and make it the config of every node: each reloads it as on SIGHUP (keeping
    /// its own `server.listen` and `[cluster]`). A file with problems is refused with every
    /// one (exit 2) and nothing changes.
    Push {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Exit status of a file with problems, as `validate` and `serve` use it.
const INVALID_CONFIG: u8 = 2;

/// `[cluster]` from `--config`, with `--cluster` overriding its address.
fn cluster_config(args: &ClusterArgs) -> Result<ClusterConfig, String> {
    let from_file = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?.cluster,
        None => None,
    };
    ClusterConfig::with_url(from_file, args.cluster.as_deref()).ok_or_else(|| match &args.config {
        Some(path) => format!(
            "{} has no [cluster] section; give --cluster NATS_URL",
            path.display()
        ),
        None => "give --cluster NATS_URL (or --config FILE with a [cluster] section)".into(),
    })
}

/// Runs `orchestrator cluster ...`: 0 on success, 1 when the cluster cannot be read, 2 for a
/// mistaken command.
pub async fn run(args: &ClusterArgs) -> ExitCode {
    let config = match cluster_config(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(USAGE);
        }
    };
    match &args.command {
        ClusterCommand::Status { json } => match status(&config).await {
            Ok((members, problems)) => {
                for problem in problems {
                    eprintln!("warning: {problem}");
                }
                let text = if *json {
                    as_json_lines(&members)
                } else {
                    table(&members)
                };
                // A closed pipe (`| head`) is not worth a panic.
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        },
        ClusterCommand::Push { file } => {
            // Checked here, where the operator sees the problems, before any node does.
            let source = file.display().to_string();
            let text = match Config::load(file) {
                Ok(_) => std::fs::read_to_string(file).unwrap_or_default(),
                Err(e) => {
                    eprintln!("{e}\nNothing was pushed.");
                    return ExitCode::from(INVALID_CONFIG);
                }
            };
            match push(&config, text, source).await {
                Ok(revision) => {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "Pushed {} as the cluster's config, revision {revision}. Every node \
                         reloads it; `orchestrator cluster status` shows the revision each runs, \
                         and why a node could not apply it.",
                        file.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn push(config: &ClusterConfig, text: String, source: String) -> Result<u64, String> {
    let (jetstream, _) = connect(config, "cluster-push").await.map_err(|e| e.to_string())?;
    let bucket = store::open_bucket(&jetstream, &pushed::CONFIG)
        .await
        .map_err(|e| e.to_string())?;
    pushed::push(&bucket, text, source)
        .await
        .map_err(|e| e.to_string())
}

async fn status(config: &ClusterConfig) -> Result<(Vec<Member>, Vec<store::StoreError>), String> {
    let (jetstream, _) = connect(config, "cluster-status")
        .await
        .map_err(|e| e.to_string())?;
    let bucket = store::open_bucket(&jetstream, &store::NODES)
        .await
        .map_err(|e| e.to_string())?;
    Members::new(&bucket, config)
        .live()
        .await
        .map_err(|e| e.to_string())
}

fn as_json_lines(members: &[Member]) -> String {
    let mut out = String::new();
    for member in members {
        let _ = writeln!(out, "{}", serde_json::to_string(member).unwrap_or_default());
    }
    out
}

fn table(members: &[Member]) -> String {
    let mut out = format!("{} live node(s)\n", members.len());
    if members.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<8} {:>10} {:>8} {:>9} {:>6} {:>5} {:>5} {:>9}  {:<21} MODELS",
        "NODE",
        "ROLE",
        "VERSION",
        "GENERATION",
        "REVISION",
        "IN-FLIGHT",
        "QUEUED",
        "SLOTS",
        "LOAD",
        "LAST SEEN",
        "ADDRESS"
    );
    for Member {
        record: r,
        last_seen_ms_ago,
    } in members
    {
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<8} {:>10} {:>8} {:>9} {:>6} {:>5} {:>5.2} {:>7.1} s  {:<21} {}",
            r.name,
            match (r.role, r.draining) {
                (Role::Gateway, _) => "gateway",
                (Role::Worker, false) => "worker",
                (Role::Worker, true) => "draining",
            },
            r.version,
            r.generation,
            r.config_revision.map_or("-".into(), |r| r.to_string()),
            r.in_flight,
            r.queued,
            if r.slots == 0 {
                "-".to_owned()
            } else {
                r.slots.to_string()
            },
            r.load,
            *last_seen_ms_ago as f64 / 1000.0,
            r.address,
            r.models.join(", ")
        );
    }
    for r in members.iter().map(|m| &m.record) {
        if let Some(error) = &r.config_error {
            let _ = writeln!(
                out,
                "\n{} does not run the latest pushed config:\n{error}",
                r.name
            );
        }
    }
    out
}
