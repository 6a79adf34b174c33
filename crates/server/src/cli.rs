//! The command line: `orchestrator [serve] [--listen ADDR] [--config FILE] [--log-format FORMAT]`,
//! `orchestrator validate [FILE]`, `orchestrator ingest`, `orchestrator dlq [--file FILE]
//! list|show|purge|replay`, the dead-letter queue, `orchestrator cluster status`,
//! `orchestrator worker`, and `orchestrator top [--url URL] [--key KEY]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cluster::cli::ClusterArgs;
use crate::dlq::cli::DlqArgs;
use crate::stats::top::TopArgs;
use crate::telemetry::LogFormat;
use crate::worker::WorkerArgs;

/// An OpenAI-compatible gateway that runs every request through a staged, backpressured
/// pipeline (RAG -> Assemble -> Inference -> Post -> Stream).
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, the default command.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log line format on stderr (the level comes from RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Check a pipeline config: print every problem and exit 2, or a summary and exit 0.
    Validate(ValidateArgs),
    /// Add files (.txt, .md, .jsonl; directories are walked) to the config's full-text index:
    /// changed files are re-indexed, unchanged ones skipped.
    Ingest(IngestArgs),
    /// Inspect or empty the dead-letter queue's file while no gateway has it open (a running
    /// gateway serves the same at /admin/dlq).
    Dlq(DlqArgs),
    /// The cluster of nodes sharing a NATS server (`[cluster]`): `status` lists its nodes.
    Cluster(ClusterArgs),
    /// Run inference jobs from the cluster's broker on this machine's model servers.
    Worker(WorkerArgs),
    /// Watch a running gateway live in the terminal: requests, stages, backends, admission and
    /// the cluster, from its /admin/stats/stream (q quits).
    Top(TopArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The file to check; without one, the built-in default config.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The same, named as `serve` and `ingest` name it.
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Pipeline configuration file; its `[rag.index]` says where the index is and how to chunk.
    /// Without one, the built-in config (the sample index under target/).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Files and directories to ingest.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on; overrides `server.listen` [default: 127.0.0.1:8080].
    #[arg(long, env = "ORCHESTRATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Pipeline configuration file. Without one, a built-in config serves the model `echo`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Join the cluster at this NATS server (JetStream enabled); overrides `cluster.nats_url`.
    #[arg(long, value_name = "NATS_URL", env = "ORCHESTRATOR_CLUSTER")]
    pub cluster: Option<String>,
}

impl Cli {
    /// The `serve` options, whether given with or without the subcommand.
    pub fn serve_args(&self) -> Option<&ServeArgs> {
        match &self.command {
            None => Some(&self.serve),
            Some(Command::Serve(args)) => Some(args),
            Some(
                Command::Validate(_)
                | Command::Ingest(_)
                | Command::Dlq(_)
                | Command::Cluster(_)
                | Command::Worker(_)
                | Command::Top(_),
            ) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_the_default() {
        let cli = Cli::try_parse_from(["orchestrator", "--listen", "127.0.0.1:9"]).unwrap();
        assert_eq!(
            cli.serve_args().unwrap().listen,
            Some("127.0.0.1:9".parse().unwrap())
        );
        let cli = Cli::try_parse_from([
            "orchestrator",
            "serve",
            "--config",
            "p.toml",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.serve_args().unwrap().config, Some(PathBuf::from("p.toml")));
        assert_eq!(cli.log_format, LogFormat::Json);
    }

    #[test]
    fn serve_joins_a_cluster_and_cluster_status_takes_the_broker() {
        let cli = Cli::try_parse_from(["orchestrator", "--cluster", "nats://n:4222"]).unwrap();
        assert_eq!(
            cli.serve_args().unwrap().cluster.as_deref(),
            Some("nats://n:4222")
        );
        let cli =
            Cli::try_parse_from(["orchestrator", "cluster", "status", "--cluster", "nats://n:4222"]).unwrap();
        let Some(Command::Cluster(args)) = cli.command else {
            panic!("not cluster: {cli:?}");
        };
        assert_eq!(args.cluster.as_deref(), Some("nats://n:4222"));
    }

    #[test]
    fn validate_takes_an_optional_file() {
        let cli = Cli::try_parse_from(["orchestrator", "validate", "p.toml"]).unwrap();
        let Some(Command::Validate(args)) = cli.command else {
            panic!("not validate: {cli:?}");
        };
        assert_eq!(args.file, Some(PathBuf::from("p.toml")));
        let cli = Cli::try_parse_from(["orchestrator", "validate"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Validate(ValidateArgs {
                file: None,
                config: None
            }))
        ));
        let cli = Cli::try_parse_from(["orchestrator", "validate", "--config", "p.toml"]).unwrap();
        let Some(Command::Validate(args)) = cli.command else {
            panic!("not validate: {cli:?}");
        };
        assert_eq!(args.config, Some(PathBuf::from("p.toml")));
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn dlq_takes_its_file_before_or_after_the_subcommand() {
        use crate::dlq::cli::DlqCommand;
        for args in [
            &["orchestrator", "dlq", "--file", "d.redb", "show", "7"][..],
            &["orchestrator", "dlq", "show", "7", "--file", "d.redb"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Some(Command::Dlq(dlq)) = cli.command else {
                panic!("not dlq: {cli:?}");
            };
            assert_eq!(dlq.file, Some(PathBuf::from("d.redb")));
            assert!(matches!(dlq.command, DlqCommand::Show { id: 7 }));
        }
        let cli = Cli::try_parse_from(["orchestrator", "dlq", "purge"]).unwrap();
        assert!(cli.serve_args().is_none());
        assert!(Cli::try_parse_from(["orchestrator", "dlq"]).is_err());
    }
}
