//! The served models: each model name maps to the worker of its backend, and the registry itself
//! is the pipeline's `ModelWorker`, routing every call by the request's model.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orchestrator_backends::OpenAiWorker;
use orchestrator_backends::openai::BuildError;
use tokio_prompt_orchestrator::{EchoWorker, InferenceCall, ModelWorker, TokenStream, WorkerError};

use crate::config::{BackendConfig, Config};

/// Model name -> worker, in the order the config declares the models.
pub struct ModelRegistry {
    names: Vec<String>,
    workers: HashMap<String, Arc<dyn ModelWorker>>,
}

impl ModelRegistry {
    /// The models of a validated config, each with its backend's worker.
    ///
    /// # Errors
    /// When a backend cannot be built (e.g. its API key variable vanished since validation).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut backends: HashMap<&str, Arc<dyn ModelWorker>> = HashMap::new();
        for backend in &config.backends {
            let worker = build_backend(backend).map_err(|e| format!("backend {}: {e}", backend.name()))?;
            backends.insert(backend.name(), worker);
        }
        let mut registry = Self::new();
        for model in &config.models {
            // Validation has checked that every model names a declared backend.
            if let Some(worker) = backends.get(model.backend.as_str()) {
                registry.insert(&model.name, worker.clone());
            }
        }
        Ok(registry)
    }

    pub fn new() -> Self {
        Self {
            names: Vec::new(),
            workers: HashMap::new(),
        }
    }

    /// Serves `name` with `worker` (replacing an earlier worker for the same name).
    pub fn insert(&mut self, name: &str, worker: Arc<dyn ModelWorker>) {
        if self.workers.insert(name.to_string(), worker).is_none() {
            self.names.push(name.to_string());
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.workers.contains_key(name)
    }

    /// Model names, in declaration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Default for ModelRegistry {
    fn default() -> Self {
        Self::new()
    }
}

fn build_backend(config: &BackendConfig) -> Result<Arc<dyn ModelWorker>, BuildError> {
    Ok(match config {
        BackendConfig::Echo { token_delay_ms, .. } => Arc::new(if *token_delay_ms == 0 {
            EchoWorker::new()
        } else {
            EchoWorker::with_token_delay(Duration::from_millis(*token_delay_ms))
        }),
        BackendConfig::Openai(c) => Arc::new(OpenAiWorker::new(c)?),
    })
}

fn unknown_model(name: &str) -> WorkerError {
    WorkerError {
        message: format!("the model `{name}` does not exist"),
        retryable: false,
        status: Some(404),
    }
}

#[async_trait]
impl ModelWorker for ModelRegistry {
    /// The one-shot form has no model name; it goes to the first declared model.
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let worker = self
            .names
            .first()
            .and_then(|name| self.workers.get(name))
            .ok_or_else(|| unknown_model(""))?;
        worker.infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        // The HTTP layer answers 404 before submitting; this guards other callers.
        let worker = self
            .workers
            .get(&call.request.model)
            .ok_or_else(|| unknown_model(&call.request.model))?;
        worker.infer_stream(call).await
    }
}
