//! Cluster mode: several gateway nodes that act as one through NATS JetStream, an existing
//! broker. The cluster's state lives there, never in a protocol of our own:
//!
//! - [`membership`]: each node's record in a KV bucket, written every heartbeat; a node whose
//!   heartbeat stops drops out;
//! - [`link`]: the connection's state, which `/readyz`, logs and metrics report; a node that loses
//!   NATS keeps serving with its local state and rejoins by itself (the client reconnects);
//! - [`limits`]: each limited key's rate limits, counted once for the whole cluster;
//! - [`dlq`]: the dead-letter queue every node shares, a JetStream stream;
//! - [`pushed`]: the config `orchestrator cluster push` stores, which every node follows;
//! - [`verdicts`]: the backends a node finds down, avoided by every node, so sessions do not split;
//! - [`jobs`]: inference jobs for `orchestrator worker` processes (backend `kind = "cluster"`);
//! - [`store`]: the buckets and streams, each made with a layout version that a node checks;
//! - [`cli`]: `orchestrator cluster status`.
//!
//! Without `[cluster]` none of this runs and no broker is needed.

pub mod cli;
pub mod config;
pub mod dlq;
pub mod jobs;
pub mod limits;
pub mod link;
pub mod membership;
pub mod pushed;
pub mod store;
pub mod verdicts;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{ConnectOptions, ServerAddr};

use self::config::ClusterConfig;
use self::link::Link;
use self::membership::Members;

/// A node's place in the cluster: its connection, its name, and the cluster's buckets.
pub struct Cluster {
    /// This node's name, unique among live nodes.
    pub node: String,
    /// Tells this run of the node from an earlier one of the same name.
    pub instance: String,
    pub config: ClusterConfig,
    pub link: Arc<Link>,
    pub jetstream: jetstream::Context,
    /// One record per node (see [`membership`]).
    pub nodes: kv::Store,
    /// The pushed config (see [`pushed`]), and what this node made of it.
    pub pushed: kv::Store,
    pub following: pushed::Following,
    /// The dead letters of every node.
    pub dlq: Arc<dlq::SharedDlq>,
    /// The rate-limit buckets of every limited key, and those this node uses.
    pub limits: kv::Store,
    pub buckets: limits::Buckets,
    /// The queue of jobs for workers, and the replies to this node's jobs.
    pub jobs: jobs::Jobs,
}

/// Why a node could not join at start: it then exits, as nothing it would serve could be shared.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "cannot reach NATS at {url} (cluster.nats_url): {reason}. Start nats-server with \
         JetStream (`nats-server -js`), or fix the URL"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "NATS at {url} answers, but not for JetStream: {reason}. Start nats-server with `-js` \
         (or `jetstream: enabled` in its config)"
    )]
    NoJetStream { url: String, reason: String },
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error(
        "the node name {name} is in use by a live node (its heartbeat keeps coming); give this \
         node another cluster.node_name"
    )]
    NameTaken { name: String },
    #[error(
        "joining the cluster at {url} took longer than cluster.connect_timeout_ms ({ms} ms); is \
         NATS reachable and JetStream enabled?"
    )]
    TimedOut { url: String, ms: u64 },
}

impl Cluster {
    /// Connects to NATS, checks that JetStream answers and opens (or makes) the cluster's buckets,
    /// within `cluster.connect_timeout_ms`, then claims this node's name.
    ///
    /// # Errors
    /// When NATS is unreachable, has no JetStream, holds buckets of another layout, or a live
    /// node has this name.
    pub async fn join(config: &ClusterConfig) -> Result<Arc<Self>, JoinError> {
        let budget = Duration::from_millis(config.connect_timeout_ms);
        let cluster = tokio::time::timeout(budget, Self::open(config))
            .await
            .map_err(|_| JoinError::TimedOut {
                url: config.nats_url.clone(),
                ms: config.connect_timeout_ms,
            })??;
        // Not within the connect timeout: a restarted node may wait out its earlier run's record
        // (at most `node_timeout_ms` and a heartbeat).
        cluster.members().claim(&cluster.node, &cluster.instance).await?;
        tracing::info!(node = %cluster.node, nats = %config.nats_url, "Joined the cluster.");
        Ok(Arc::new(cluster))
    }

    /// Connects and opens the cluster's buckets and stream.
    async fn open(config: &ClusterConfig) -> Result<Self, JoinError> {
        let node = config.node_name();
        let (jetstream, link) = connect(config, &node).await?;
        let nodes = store::open_bucket(&jetstream, &store::NODES).await?;
        let pushed = store::open_bucket(&jetstream, &pushed::CONFIG).await?;
        let limits = store::open_bucket(&jetstream, &limits::LIMITS).await?;
        let dlq = Arc::new(dlq::SharedDlq::open(&jetstream, Some(config.dlq), &node).await?);
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let jobs = jobs::Jobs::open(&jetstream, config.jobs, &instance).await?;
        let cluster = Self {
            node,
            instance,
            config: config.clone(),
            link,
            jetstream,
            nodes,
            pushed,
            following: pushed::Following::default(),
            dlq,
            limits,
            buckets: limits::Buckets::default(),
            jobs,
        };
        Ok(cluster)
    }

    /// The nodes of the cluster, as their records say.
    pub fn members(&self) -> Members<'_> {
        Members::new(&self.nodes, &self.config)
    }
}

/// Connects to NATS as `node` and checks that JetStream answers (what `join` and the operator's
/// commands share).
///
/// # Errors
/// When NATS is unreachable or has no JetStream.
pub async fn connect(
    config: &ClusterConfig,
    node: &str,
) -> Result<(jetstream::Context, Arc<Link>), JoinError> {
    let url = config.nats_url.clone();
    let unreachable = |reason: String| JoinError::Unreachable {
        url: url.clone(),
        reason,
    };
    let addrs = config
        .nats_url
        .split(',')
        .map(|u| u.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreachable(format!("not a NATS address: {e}")))?;
    let link = Arc::new(Link::new(node));
    let client = options(config, node, &link)
        .map_err(unreachable)?
        .connect(addrs)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let jetstream = jetstream::new(client);
    // Any stream's info answers whether JetStream is there: "not found" is an answer.
    match jetstream.get_stream(format!("KV_{}", store::NODES.name)).await {
        Err(e) if !store::is_not_found(&e) => {
            return Err(JoinError::NoJetStream {
                url: url.clone(),
                reason: e.to_string(),
            });
        }
        _ => {}
    }
    Ok((jetstream, link))
}

/// The client's options: name, credentials from the environment, connection events to `link`.
fn options(config: &ClusterConfig, node: &str, link: &Arc<Link>) -> Result<ConnectOptions, String> {
    let secret = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the environment variable {var} is not set or empty"))
    };
    let mut options = ConnectOptions::new()
        .name(format!("orchestrator {node}"))
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms));
    if let Some(var) = &config.token_env {
        options = options.token(secret(var)?);
    }
    if let (Some(user), Some(var)) = (&config.user, &config.password_env) {
        options = options.user_and_password(user.clone(), secret(var)?);
    }
    let link = link.clone();
    Ok(options.event_callback(move |event| {
        let link = link.clone();
        async move { link.observe(&event) }
    }))
}
