//! The job queue's depth as gauges: `orchestrator_jobs_queued{model, priority, partition}`, read
//! from the broker every heartbeat by each node that sends work to workers. A count covers the
//! jobs waiting and those a worker has taken but not yet answered (the broker holds both).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

/// Updates the gauges every heartbeat until `stop`.
pub async fn watch(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut beats = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = beats.tick() => {}
        }
        let stream = &cluster.jobs.stream;
        let counts = async {
            let info = stream
                .info_with_subjects("orchestrator.jobs.>")
                .await
                .map_err(|e| e.to_string())?;
            info.try_collect::<Vec<(String, usize)>>()
                .await
                .map_err(|e| e.to_string())
        };
        let counts = match counts.await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot read the job queue's depth.");
                continue;
            }
        };
        let mut now_shown = HashSet::new();
        for (subject, count) in counts {
            set(&subject, count as f64);
            now_shown.insert(subject);
        }
        for gone in shown.difference(&now_shown) {
            set(gone, 0.0);
        }
        shown = now_shown;
    }
}

/// Sets the gauge of one job subject (`orchestrator.jobs.<model>.<priority>.<partition>`).
fn set(subject: &str, value: f64) {
    let mut parts = subject.split('.').skip(2);
    let (Some(model), Some(priority), Some(partition)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let model = model
        .strip_prefix('=')
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| model.to_owned());
    metrics::gauge!(
        "orchestrator_jobs_queued",
        "model" => model,
        "priority" => priority.to_owned(),
        "partition" => partition.to_owned()
    )
    .set(value);
}
