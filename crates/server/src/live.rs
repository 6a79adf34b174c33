//! What a config runs: its pipeline in front of its models, with its keys and limits. The
//! server holds the current one and swaps in a new one on reload.
//!
//! A request takes the current `Live` only while it is admitted; once it has its handle it no
//! longer needs it. When the last request holding a replaced `Live` has been admitted, the `Live`
//! is dropped, its sender with it, which closes that pipeline's intake: everything it admitted
//! drains there, and nothing is ever submitted to a closed pipeline because of a reload.

use std::sync::Arc;

use orchestrator_backends::Router;
use orchestrator_backends::dedup::Dedup;
use tokio_prompt_orchestrator::{Pipeline, PipelineBuilder, PostProcessor, PriorityGate, RequestSender};

use crate::auth::ApiKeys;
use crate::config::Config;
use crate::dlq::DlqStore;

pub struct Live {
    /// Counts reloads: 0 for the config the server started with.
    pub generation: u64,
    pub sender: RequestSender,
    pub pipeline: Pipeline,
    pub models: Arc<Router>,
    /// `None` when no keys are configured: the API is open.
    pub keys: Option<ApiKeys>,
    /// Requests inside the pipeline at once; the rest wait here, higher priority first.
    pub gate: PriorityGate,
    /// Where failed requests are kept, when `[dlq]` is configured.
    pub dlq: Option<DlqStore>,
    pub config: Config,
}

impl Live {
    /// Starts `config`'s pipeline, with its post-processors, in front of `models`. Must be called
    /// inside a tokio runtime. The dead-letter file stays open across reloads that keep its path
    /// (`previous` is the running `Live`); a file can be open in one place only.
    ///
    /// # Errors
    /// When a post-processor cannot be built (validation has normally caught it), or the
    /// dead-letter file cannot be opened.
    pub fn start(
        config: Config,
        models: Router,
        generation: u64,
        previous: Option<&Live>,
    ) -> Result<Self, String> {
        let dlq = match (&config.dlq, previous) {
            (None, _) => None,
            (
                Some(wanted),
                Some(Live {
                    dlq: Some(store),
                    config: old,
                    ..
                }),
            ) if old.dlq.as_ref().is_some_and(|d| d.path == wanted.path) => Some(store.clone()),
            (Some(wanted), _) => Some(DlqStore::open(&wanted.path).map_err(|e| format!("dlq.path: {e}"))?),
        };
        let models = Arc::new(models);
        let sharing = config.models.iter().filter(|m| m.dedup).map(|m| m.name.clone());
        let worker = Arc::new(Dedup::new(models.clone(), sharing));
        let mut builder = PipelineBuilder::new(worker).config(config.pipeline.clone());
        for (post, models) in config.compile_graph().post {
            let processor: Arc<dyn PostProcessor> = post.build_for(&models)?;
            builder = builder.post_processor(processor);
        }
        let handles = builder.spawn();
        // The HTTP API only submits (handles); fire-and-forget outputs are not used.
        drop(handles.output_rx);
        Ok(Self {
            generation,
            sender: handles.input_tx,
            pipeline: handles.pipeline,
            models,
            keys: ApiKeys::from_config(&config.auth),
            gate: PriorityGate::new(config.admission),
            dlq,
            config,
        })
    }
}
