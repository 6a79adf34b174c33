//! Hot reload (SIGHUP, `POST /admin/reload`): read and validate the config file again; if it
//! has problems, keep the running pipeline and report every one; otherwise start the new
//! pipeline, send new requests to it, and let the old one drain what it admitted and stop.
//!
//! Nothing is lost or duplicated: a request is admitted by exactly one pipeline, and the old one
//! closes its intake only after the last request that was being admitted there has its handle
//! (see [`crate::live`]). The listener stays: a new `server.listen` needs a restart.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::gateway::live::Live;
use crate::gateway::{Gateway, Readiness};
use crate::models::build_router;

/// A reload that took effect.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    /// Changes that need a restart to apply.
    pub warnings: Vec<String>,
    /// What now runs, as `orchestrator validate` prints it.
    pub summary: String,
}

/// Why a reload did not take effect; the running pipeline is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("the server was started without --config: there is no file to reload")]
    NoFile,
    #[error("the server is draining for shutdown")]
    Draining,
}

/// Reloads the config file into `state`.
///
/// # Errors
/// When the file has problems, there is no file, or the server is shutting down.
pub async fn reload(state: &Arc<Gateway>) -> Result<Reloaded, ReloadError> {
    let _one_at_a_time = state.reload_lock.lock().await;
    if state.readiness() == Readiness::Draining {
        return Err(ReloadError::Draining);
    }
    let path = state.config_path().ok_or(ReloadError::NoFile)?;
    let config = Config::load(path).map_err(ReloadError::Invalid)?;
    apply(state, config, &path.display().to_string(), None).await
}

/// Puts `config` (already validated; `source` names it) in place of the running one, as a reload
/// of the file does; `revision` is the cluster config it is, when it came from the cluster.
///
/// # Errors
/// When its backends or pipeline cannot be started, or the server is shutting down.
pub async fn reload_with(
    state: &Arc<Gateway>,
    config: Config,
    source: &str,
    revision: u64,
) -> Result<Reloaded, ReloadError> {
    let _one_at_a_time = state.reload_lock.lock().await;
    if state.readiness() == Readiness::Draining {
        return Err(ReloadError::Draining);
    }
    apply(state, config, source, Some(revision)).await
}

/// The reload itself; the caller holds the reload lock.
async fn apply(
    state: &Arc<Gateway>,
    mut config: Config,
    source: &str,
    cluster_revision: Option<u64>,
) -> Result<Reloaded, ReloadError> {
    let current = state.live();
    let mut warnings = Vec::new();
    let listening = current.config.server.listen;
    if config.server.listen != listening {
        warnings.push(format!(
            "server.listen is {} in the file; the listener stays on {listening} until a restart",
            config.server.listen
        ));
        config.server.listen = listening;
    }
    // `[cluster]` is read at start only; a file without it (the node joined with --cluster)
    // is not a change.
    if config.cluster.is_some() && config.cluster != current.config.cluster {
        warnings.push(
            "[cluster] differs in the file; the node stays in the cluster it joined until a restart".into(),
        );
    }
    config.cluster.clone_from(&current.config.cluster);
    if config.telemetry != current.config.telemetry {
        warnings.push(
            "[telemetry] differs in the file; metrics and traces go where they went until a restart".into(),
        );
        config.telemetry.clone_from(&current.config.telemetry);
    }
    if config.runtime != current.config.runtime {
        warnings.push("[runtime] differs in the file; the gateway keeps its threads until a restart".into());
        config.runtime = current.config.runtime;
    }
    if config.responses != current.config.responses {
        warnings.push(
            "[responses] differs in the file; stored responses stay where they are until a restart".into(),
        );
        config.responses.clone_from(&current.config.responses);
    }
    // A backend that cannot be built (its key variable vanished since validation) is a problem
    // of the file too.
    let late_problem = |path: &str, message| {
        ReloadError::Invalid(ConfigError {
            source_name: path.to_string(),
            problems: vec![crate::config::Problem {
                path: String::new(),
                message,
                location: None,
            }],
        })
    };
    let source = source.to_owned();
    let models = build_router(&config, state.cluster.as_ref()).map_err(|m| late_problem(&source, m))?;
    let generation = current.generation + 1;
    let cluster = state.cluster.clone();
    // Starting may open (and on its first start, fill) the index and warm the tokenizer: file
    // work that must not hold up the requests this thread serves meanwhile.
    let mut live = tokio::task::spawn_blocking(move || {
        let layout = current.layout.clone();
        Live::start(
            config,
            models,
            generation,
            Some(&current),
            cluster.as_deref(),
            layout,
        )
    })
    .await
    .map_err(|e| late_problem(&source, format!("starting the new config failed: {e}")))?
    .map_err(|m| late_problem(&source, m))?;
    live.cluster_revision = cluster_revision;
    let summary = live.config.summary();
    // The old `Live` goes when its last admitting request lets go; its pipeline then drains.
    drop(state.replace(live));
    for warning in &warnings {
        tracing::warn!(%warning, "Reload: not applied.");
    }
    tracing::info!(generation, source = %source, "Config reloaded; new requests go to the new pipeline.");
    Ok(Reloaded {
        generation,
        warnings,
        summary,
    })
}
