//! One measurement plan over several targets: for each load level, each target in turn (the
//! upstream alone first), a warm-up run and then the measured run, with the same settings, so
//! that every row of a load level comes from the same minutes of the same machine.

use crate::load::{self, Load, RunSpec};
use crate::procs;
use crate::report::{ProcFigures, Row, fill_added, per_1k};
use bytes::Bytes;
use indicatif::ProgressBar;
use reqwest::header::HeaderMap;
use std::sync::Arc;
use std::time::Duration;

/// The name of the base row that added latency is taken against.
pub const UPSTREAM: &str = "upstream alone";

/// A system to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// The row's label: [`UPSTREAM`], "gateway", "forwarder", "litellm", "portkey".
    pub system: String,
    /// `http://host:port`; requests go to `{base_url}/v1/chat/completions`, taking the URLs in
    /// turn when there are several (the nodes of a cluster).
    pub base_urls: Vec<String>,
    /// Its process, when the harness started it (for CPU and memory figures).
    pub pid: Option<u32>,
    /// Sent with every request: a gateway that routes by headers (Portkey) needs them.
    pub headers: Arc<HeaderMap>,
    /// Open loop: rates above this are not offered to this target. A peer far slower than the
    /// gateway would spend every such run queueing to the timeout, measuring nothing new.
    pub max_rate: Option<f64>,
}

impl Target {
    /// A target without extra headers or a rate cap.
    pub fn new(system: impl Into<String>, base_url: impl Into<String>, pid: Option<u32>) -> Self {
        Self {
            system: system.into(),
            base_urls: vec![base_url.into()],
            pid,
            headers: Arc::default(),
            max_rate: None,
        }
    }

    /// Whether `load` is offered to this target (see [`Target::max_rate`]).
    pub fn takes(&self, load: Load) -> bool {
        match (load, self.max_rate) {
            (Load::Rate(rate), Some(max)) => rate <= max,
            _ => true,
        }
    }
}

/// What to run against every target.
#[derive(Debug, Clone)]
pub struct Plan {
    pub loads: Vec<Load>,
    pub duration: Duration,
    /// Run before each measured run, same load, results discarded.
    pub warmup: Duration,
    pub stream: bool,
    pub body: Bytes,
    pub max_in_flight: usize,
    pub timeout: Duration,
}

impl Plan {
    /// How many runs (warm-ups included) [`measure`] makes over `targets`.
    pub fn runs(&self, targets: &[Target]) -> u64 {
        let per = if self.warmup.is_zero() { 1 } else { 2 };
        let pairs = self
            .loads
            .iter()
            .map(|&load| targets.iter().filter(|t| t.takes(load)).count())
            .sum::<usize>();
        (pairs * per) as u64
    }
}

/// Measures every target under every load of `plan` that it takes ([`Target::takes`]); rows in
/// order of load, then target.
pub async fn measure(
    client: &reqwest::Client,
    targets: &[Target],
    plan: &Plan,
    bar: &ProgressBar,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for &load in &plan.loads {
        for target in targets.iter().filter(|t| t.takes(load)) {
            let spec = |duration| RunSpec {
                urls: target
                    .base_urls
                    .iter()
                    .map(|base| format!("{base}/v1/chat/completions"))
                    .collect(),
                turn: Arc::default(),
                headers: target.headers.clone(),
                body: plan.body.clone(),
                stream: plan.stream,
                load,
                duration,
                max_in_flight: plan.max_in_flight,
                timeout: plan.timeout,
            };
            let label = format!("{} {}", target.system, crate::report::load_label(load));
            if !plan.warmup.is_zero() {
                bar.set_message(format!("{label}: warm-up"));
                load::run(client, &spec(plan.warmup)).await;
                bar.inc(1);
            }
            bar.set_message(format!("{label}: measuring"));
            let peak_reset = target.pid.is_some_and(procs::reset_peak);
            let before = target.pid.and_then(procs::sample);
            let me_before = procs::sample(std::process::id());
            let measured = load::run(client, &spec(plan.duration)).await;
            let me_after = procs::sample(std::process::id());
            let after = target.pid.and_then(procs::sample);
            bar.inc(1);
            let mut row = Row::new(&target.system, load, plan.stream, &measured);
            if let (Some(pid), Some(b), Some(a)) = (target.pid, before, after) {
                row.process = Some(ProcFigures::between(pid, b, a, measured.rec.sent, peak_reset));
            }
            if let (Some(b), Some(a)) = (me_before, me_after) {
                row.harness_cpu_s_per_1k = Some(per_1k(a.cpu_s - b.cpu_s, measured.rec.sent));
            }
            rows.push(row);
        }
    }
    fill_added(&mut rows, UPSTREAM);
    rows
}
