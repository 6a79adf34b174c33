//! The one-screen summary `orchestrator validate` prints for a valid config: the listener, the
//! stages with their queues, and each model with the backends behind it (and, for llama-servers,
//! which chat template formats its chat requests).

use std::fmt::Write;

use tokio_prompt_orchestrator::{Stage, WhenFull};

use super::{BackendConfig, Config, RuntimeMode};

impl Config {
    /// What this config runs, in a few lines.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        let server = &self.server;
        writeln!(
            out,
            "listen {}  max_body_bytes {}  shutdown_grace_ms {}",
            server.listen, server.max_body_bytes, server.shutdown_grace_ms
        )?;
        let keys = self.auth.keys.len();
        match keys {
            0 => writeln!(out, "auth off (no keys)")?,
            n => writeln!(
                out,
                "auth {n} key(s){}",
                if self.auth.protect_metrics {
                    ", /metrics protected"
                } else {
                    ""
                }
            )?,
        }
        let admission = &self.admission;
        writeln!(
            out,
            "admission: {} in flight, {} queued by priority, starvation bound {}",
            admission.max_in_flight, admission.max_queued, admission.starvation_bound
        )?;
        match &self.dlq {
            None => writeln!(out, "dead-letter queue off")?,
            Some(dlq) => {
                let record: Vec<&str> = dlq.record.iter().map(|r| r.as_str()).collect();
                writeln!(
                    out,
                    "dead-letter queue {} (keeps {})",
                    dlq.path.display(),
                    record.join(", ")
                )?;
            }
        }
        if let Some(cluster) = &self.cluster {
            writeln!(
                out,
                "cluster at {} as {} (heartbeat {} ms, a node silent {} ms has left)",
                cluster.nats_url,
                cluster.node_name(),
                cluster.heartbeat_ms,
                cluster.node_timeout_ms
            )?;
        }
        let runtime = &self.runtime;
        match runtime.mode {
            RuntimeMode::WorkStealing => {
                writeln!(out, "runtime: work-stealing, {} thread(s)", runtime.threads())?
            }
            RuntimeMode::PerCore => writeln!(
                out,
                "runtime: per-core, {} core thread(s){}",
                runtime.threads(),
                if runtime.pin { ", pinned" } else { "" }
            )?,
        }
        let pipeline = &self.pipeline;
        writeln!(out, "pipeline: {} shard(s)", pipeline.shards)?;
        for stage in Stage::ALL {
            let config = pipeline.stage(stage);
            let policy = match config.queue.when_full {
                WhenFull::Shed => "shed",
                WhenFull::Block => "block",
            };
            writeln!(
                out,
                "  {:<10} queue {:>5} ({policy:<5})  concurrency {}",
                stage.as_str(),
                config.queue.capacity,
                config.concurrency
            )?;
        }
        if !self.stages.is_empty() {
            writeln!(out, "stages:")?;
            for stage in &self.stages {
                let inputs = if stage.inputs.is_empty() {
                    "(entry)".to_string()
                } else {
                    stage.inputs.join(", ")
                };
                let kind = format!("{:?}", stage.kind).to_lowercase();
                write!(out, "  {} [{kind}] <- {inputs}", stage.name)?;
                if !stage.models.is_empty() {
                    write!(out, "  models: {}", stage.models.join(", "))?;
                }
                writeln!(out)?;
            }
        }
        writeln!(out, "models:")?;
        let assemble = self.compile_graph().assemble_config(&self.assemble);
        for model in &self.models {
            write!(out, "  {} -> {}", model.name, model.backends.join(", "))?;
            if !model.fallback.is_empty() {
                write!(out, "; fallback {}", model.fallback.join(", "))?;
            }
            write!(
                out,
                "  [{}, {} retries]",
                model.balancing.as_str(),
                model.retries.max
            )?;
            // Which template formats a chat for a llama-server is otherwise invisible, and a model
            // sent a chat without its format may answer nothing.
            let names = model.backends.iter().chain(&model.fallback);
            let on_llamacpp = names
                .filter_map(|name| self.backends.iter().find(|b| b.name() == name))
                .any(|b| matches!(b, BackendConfig::Llamacpp(_)));
            if on_llamacpp {
                let settings = assemble.models.get(&model.name);
                let templated = settings
                    .and_then(|s| s.prompt.as_ref())
                    .or(assemble.default.prompt.as_ref());
                write!(
                    out,
                    "  llamacpp chat: {}",
                    if templated.is_some() {
                        "the [assemble] prompt template, to /completion"
                    } else {
                        "the model's own template, to /v1/chat/completions"
                    }
                )?;
            }
            writeln!(out)?;
        }
        writeln!(out, "backends:")?;
        for backend in &self.backends {
            let (kind, target) = match backend {
                BackendConfig::Echo { .. } => ("echo", String::new()),
                BackendConfig::Openai(c) => ("openai", c.base_url.clone()),
                BackendConfig::Vllm(c) => ("vllm", c.base_url.clone()),
                BackendConfig::Llamacpp(c) => ("llamacpp", format!("{} ({} slots)", c.base_url, c.slots)),
                BackendConfig::Grpc(c) => ("grpc", c.url.clone()),
                BackendConfig::Cluster(c) => (
                    "cluster",
                    format!(
                        "workers of {}",
                        c.model.as_deref().unwrap_or("the requested model")
                    ),
                ),
            };
            let line = format!("  {:<16} {kind:<8} {target}", backend.name());
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_summary_names_every_stage_model_and_backend() {
        let summary = Config::default().summary();
        assert!(summary.starts_with("listen 127.0.0.1:8080"), "{summary}");
        assert!(summary.contains("auth off"), "{summary}");
        assert!(summary.contains("  rag        queue  1024 (shed )"), "{summary}");
        assert!(
            summary.contains("  inference  queue   512 (block)  concurrency 256"),
            "{summary}"
        );
        assert!(
            summary.contains("  echo -> echo  [session_affinity, 2 retries]"),
            "{summary}"
        );
        assert!(summary.contains("  echo             echo"), "{summary}");
        assert!(!summary.contains("llamacpp chat"), "{summary}");
    }

    #[test]
    fn a_model_on_a_llama_server_says_which_template_formats_its_chat() {
        let text = |assemble: &str| {
            format!(
                "{assemble}\n[[backends]]\nkind = \"llamacpp\"\nname = \"llama\"\n\
                 base_url = \"http://127.0.0.1:8081\"\n\n[[models]]\nname = \"m\"\nbackends = [\"llama\"]\n\n\
                 [[models]]\nname = \"other\"\nbackends = [\"llama\"]\n"
            )
        };
        let summary = Config::parse(&text(""), "t.toml").unwrap().summary();
        assert!(
            summary.contains(
                "  m -> llama  [session_affinity, 2 retries]  llamacpp chat: the model's own template, \
                 to /v1/chat/completions\n"
            ),
            "{summary}"
        );
        let per_model =
            "[assemble.models.m]\nprompt = \"{% for m in messages %}{{ m.content }}{% endfor %}\"";
        let summary = Config::parse(&text(per_model), "t.toml").unwrap().summary();
        assert!(
            summary.contains("  m -> llama  [session_affinity, 2 retries]  llamacpp chat: the [assemble] prompt template, to /completion\n"),
            "{summary}"
        );
        assert!(
            summary
                .contains("  other -> llama  [session_affinity, 2 retries]  llamacpp chat: the model's own"),
            "{summary}"
        );
    }
}
