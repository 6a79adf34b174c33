//! What a config runs: its pipeline in front of its models, with its keys and limits. The
//! server holds the current one and swaps in a new one on reload.
//!
//! A request takes the current `Live` only while it is admitted; once it has its handle it no
//! longer needs it. When the last request holding a replaced `Live` has been admitted, the `Live`
//! is dropped, its sender with it, which closes that pipeline's intake: everything it admitted
//! drains there, and nothing is ever submitted to a closed pipeline because of a reload.

use std::collections::HashSet;
use std::sync::Arc;

use orchestrator_backends::Router;
use orchestrator_backends::batch::Batcher;
use orchestrator_backends::dedup::Dedup;
use orchestrator_context::assemble::{AssembleConfig, Encoding, TemplateAssembler};
use orchestrator_context::index::{IndexRetriever, ensure_indexed};
use tokio_prompt_orchestrator::{
    Layout, Pipeline, PipelineBuilder, PostProcessor, PriorityGate, RequestSender,
};

use crate::cluster::Cluster;
use crate::config::{Config, ModelKind, RagConfig};
use crate::dlq::DlqStore;
use crate::gateway::auth::ApiKeys;
use crate::gateway::cache::ResponseCache;

pub struct Live {
    /// Counts reloads: 0 for the config the server started with.
    pub generation: u64,
    /// The revision of the cluster's config this is, when it came from `orchestrator cluster
    /// push`; `None` for a file of this node's own.
    pub cluster_revision: Option<u64>,
    pub sender: RequestSender,
    pub pipeline: Pipeline,
    pub models: Arc<Router>,
    /// `None` when no keys are configured: the API is open.
    pub keys: Option<ApiKeys>,
    /// Requests inside the pipeline at once; the rest wait here, higher priority first.
    pub gate: PriorityGate,
    /// Where failed requests are kept, when `[dlq]` is configured.
    pub dlq: Option<DlqStore>,
    /// The models of `kind = "embedding"`, served by `/v1/embeddings` alone.
    pub embedding_models: HashSet<String>,
    /// The answers of models with `cache`; started afresh by each reload.
    pub cache: ResponseCache,
    /// Where the pipeline's lanes run; a reload's pipeline runs there too.
    pub layout: Layout,
    pub config: Config,
}

impl Live {
    /// Starts `config`'s pipeline, with its post-processors, in front of `models`, its lanes
    /// where `layout` says. Must be called inside a tokio runtime. In cluster mode (`cluster`), the keys' limits count across nodes.
    /// The dead-letter file stays open across reloads that keep its path
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
        cluster: Option<&Cluster>,
        layout: Layout,
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
        let batches = config
            .models
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.embedding_batch()?)));
        let batcher = Arc::new(Batcher::new(models.clone(), batches));
        let worker = Arc::new(Dedup::new(batcher, sharing));
        let mut builder = PipelineBuilder::new(worker)
            .config(config.pipeline.clone())
            .layout(layout.clone());
        let graph = config.compile_graph();
        let auth = &config.auth;
        let budgets = auth
            .keys
            .iter()
            .filter_map(|k| k.rate_limit)
            .chain(auth.rate_limit);
        if budgets
            .into_iter()
            .any(|r| r.tokens_per_minute.is_some() || r.token_budget.is_some())
        {
            // Token budgets count prompts with a tokenizer that takes ~0.2 s to load: load it now,
            // not in the first limited request.
            std::thread::spawn(|| Encoding::O200kBase.count_tokens(""));
        }
        if let Some(rag) = &config.rag {
            builder = builder.retriever(Arc::new(open_index(rag, &graph.without_rag)?));
        }
        let assemble = graph.assemble_config(&config.assemble);
        // Without settings, the core's own assembly does the same, without a tokenizer.
        if assemble != AssembleConfig::default() {
            let assembler = TemplateAssembler::new(assemble).map_err(|e| format!("assemble: {e}"))?;
            builder = builder.assembler(Arc::new(assembler));
        }
        for (post, models) in graph.post {
            let processor: Arc<dyn PostProcessor> = post.build_for(&models)?;
            builder = builder.post_processor(processor);
        }
        let handles = builder.try_spawn().map_err(|e| format!("runtime: {e}"))?;
        // The HTTP API only submits (handles); fire-and-forget outputs are not used.
        drop(handles.output_rx);
        Ok(Self {
            generation,
            cluster_revision: None,
            sender: handles.input_tx,
            pipeline: handles.pipeline,
            models,
            keys: ApiKeys::from_config(&config.auth, cluster, previous.and_then(|p| p.keys.as_ref())),
            gate: PriorityGate::new(config.admission),
            dlq,
            embedding_models: config
                .models
                .iter()
                .filter(|m| m.kind == ModelKind::Embedding)
                .map(|m| m.name.clone())
                .collect(),
            cache: ResponseCache::new(
                config
                    .models
                    .iter()
                    .filter_map(|m| Some((m.name.as_str(), m.cache?))),
            ),
            layout,
            config,
        })
    }
}

/// Opens the index, first ingesting `ingest_on_start` if the index is still empty.
fn open_index(rag: &RagConfig, without_rag: &[String]) -> Result<IndexRetriever, String> {
    if !rag.ingest_on_start.is_empty() {
        match ensure_indexed(&rag.index, &rag.ingest_on_start) {
            Ok(Some(summary)) => tracing::info!(%summary, "Indexed the configured corpus on first start."),
            Ok(None) => {}
            Err(e) => return Err(format!("rag.ingest_on_start: {e}")),
        }
    }
    IndexRetriever::open(&rag.index, rag.search, rag.per_model(without_rag))
        .map_err(|e| format!("rag.index: {e}"))
}
