//! One table row per (load, system), and its markdown and JSON forms.

use crate::load::{Load, Measured};
use crate::procs::ProcSample;
use crate::stats::{Added, Percentiles};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The figures of one system under one load.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "upstream alone", "gateway", "litellm".
    pub system: String,
    /// "500 req/s" or "c=32".
    pub load: String,
    pub offered_rps: Option<f64>,
    pub concurrency: Option<usize>,
    pub stream: bool,
    /// From the run's start until its last request finished.
    pub elapsed_s: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub status_errors: BTreeMap<u16, u64>,
    pub connect_errors: u64,
    pub timeouts: u64,
    pub other_errors: u64,
    /// Successful requests per second of `elapsed_s`.
    pub throughput_rps: f64,
    /// Latency of successful requests (open loop: from the scheduled start).
    pub latency: Option<Percentiles>,
    pub ttft: Option<Percentiles>,
    pub itl: Option<Percentiles>,
    /// Open loop: how late requests left the generator; a high tail means the generator lagged.
    pub send_lag: Option<Percentiles>,
    /// This row's latency minus the upstream-alone row's under the same load.
    pub added_vs_upstream: Option<Added>,
    /// The system's process, when the harness started it.
    pub process: Option<ProcFigures>,
    /// The harness's own CPU seconds per 1,000 requests sent, during this row.
    pub harness_cpu_s_per_1k: Option<f64>,
}

/// CPU and memory of a started process over one row.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcFigures {
    pub pid: u32,
    /// VmHWM at the end of the row (reset before it when the kernel allows: `peak_reset`).
    pub peak_rss_mib: f64,
    pub peak_reset: bool,
    pub rss_after_mib: f64,
    pub cpu_s: f64,
    pub cpu_s_per_1k_requests: f64,
}

impl ProcFigures {
    pub fn between(pid: u32, before: ProcSample, after: ProcSample, requests: u64, peak_reset: bool) -> Self {
        let cpu_s = after.cpu_s - before.cpu_s;
        Self {
            pid,
            peak_rss_mib: after.hwm_mib,
            peak_reset,
            rss_after_mib: after.rss_mib,
            cpu_s,
            cpu_s_per_1k_requests: per_1k(cpu_s, requests),
        }
    }
}

/// `seconds` per 1,000 of `requests` (0 when there were none).
pub fn per_1k(seconds: f64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        seconds * 1_000.0 / requests as f64
    }
}

/// The label of a load in the table.
pub fn load_label(load: Load) -> String {
    match load {
        Load::Rate(r) => format!("{r} req/s"),
        Load::Concurrency(c) => format!("c={c}"),
    }
}

impl Row {
    pub fn new(system: &str, load: Load, stream: bool, m: &Measured) -> Self {
        let r = &m.rec;
        let elapsed_s = m.elapsed.as_secs_f64();
        Self {
            system: system.to_owned(),
            load: load_label(load),
            offered_rps: match load {
                Load::Rate(r) => Some(r),
                Load::Concurrency(_) => None,
            },
            concurrency: match load {
                Load::Concurrency(c) => Some(c),
                Load::Rate(_) => None,
            },
            stream,
            elapsed_s,
            sent: r.sent,
            ok: r.ok,
            errors: r.errors(),
            status_errors: r.status_errors.clone(),
            connect_errors: r.connect_errors,
            timeouts: r.timeouts,
            other_errors: r.other_errors,
            throughput_rps: if elapsed_s > 0.0 {
                r.ok as f64 / elapsed_s
            } else {
                0.0
            },
            latency: Percentiles::of(&r.latency),
            ttft: Percentiles::of(&r.ttft),
            itl: Percentiles::of(&r.itl),
            send_lag: Percentiles::of(&r.send_lag),
            added_vs_upstream: None,
            process: None,
            harness_cpu_s_per_1k: None,
        }
    }

    /// Errors in short: `0`, or e.g. `503:4 conn:1 timeout:2 other:3`.
    pub fn errors_label(&self) -> String {
        let mut parts: Vec<String> = self
            .status_errors
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect();
        for (label, n) in [
            ("conn", self.connect_errors),
            ("timeout", self.timeouts),
            ("other", self.other_errors),
        ] {
            if n > 0 {
                parts.push(format!("{label}:{n}"));
            }
        }
        if parts.is_empty() {
            "0".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Fills in each row's latency added over the "upstream alone" row with the same load.
pub fn fill_added(rows: &mut [Row], base_system: &str) {
    let bases: Vec<(String, Percentiles)> = rows
        .iter()
        .filter(|r| r.system == base_system)
        .filter_map(|r| Some((r.load.clone(), r.latency?)))
        .collect();
    for row in rows.iter_mut().filter(|r| r.system != base_system) {
        let base = bases.iter().find(|(load, _)| *load == row.load).map(|(_, p)| p);
        row.added_vs_upstream = match (row.latency, base) {
            (Some(l), Some(b)) => Some(Added::between(&l, b)),
            _ => None,
        };
    }
}

fn ms(v: f64) -> String {
    format!("{v:.2}")
}

fn pair(p: Option<Percentiles>) -> String {
    p.map_or("-".to_owned(), |p| format!("{} / {}", ms(p.p50_ms), ms(p.p99_ms)))
}

/// The markdown table of `rows`; stream columns only when a row streamed.
pub fn markdown(rows: &[Row]) -> String {
    let stream = rows.iter().any(|r| r.stream);
    let mut out = String::from(
        "| load | system | req/s | ok | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 / p99 ms |",
    );
    let mut rule = String::from("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    if stream {
        out.push_str(" TTFT p50 / p99 ms | ITL p50 / p99 ms |");
        rule.push_str("---:|---:|");
    }
    out.push_str(" peak RSS MiB | CPU s / 1k req | harness CPU s / 1k | send lag p99 ms |\n");
    rule.push_str("---:|---:|---:|---:|\n");
    out.push_str(&rule);
    for r in rows {
        let lat = |f: fn(&Percentiles) -> f64| r.latency.as_ref().map_or("-".to_owned(), |p| ms(f(p)));
        let _ = write!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.load,
            r.system,
            r.throughput_rps,
            r.ok,
            r.errors_label(),
            lat(|p| p.p50_ms),
            lat(|p| p.p90_ms),
            lat(|p| p.p99_ms),
            lat(|p| p.p999_ms),
            r.added_vs_upstream
                .map_or("-".to_owned(), |a| format!("{:+.2} / {:+.2}", a.p50_ms, a.p99_ms)),
        );
        if stream {
            let _ = write!(out, " {} | {} |", pair(r.ttft), pair(r.itl));
        }
        let _ = writeln!(
            out,
            " {} | {} | {} | {} |",
            r.process
                .map_or("-".to_owned(), |p| format!("{:.1}", p.peak_rss_mib)),
            r.process
                .map_or("-".to_owned(), |p| format!("{:.3}", p.cpu_s_per_1k_requests)),
            r.harness_cpu_s_per_1k
                .map_or("-".to_owned(), |c| format!("{c:.3}")),
            r.send_lag.map_or("-".to_owned(), |p| ms(p.p99_ms)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Recorder, histogram, record};
    use std::time::Duration;

    fn row(system: &str, load: Load, latencies_ms: &[u64]) -> Row {
        let mut rec = Recorder {
            sent: latencies_ms.len() as u64,
            ok: latencies_ms.len() as u64,
            ..Default::default()
        };
        rec.latency = histogram();
        for &l in latencies_ms {
            record(&mut rec.latency, Duration::from_millis(l));
        }
        Row::new(
            system,
            load,
            false,
            &Measured {
                rec,
                elapsed: Duration::from_secs(2),
            },
        )
    }

    #[test]
    fn added_latency_is_taken_against_the_upstream_row_of_the_same_load() {
        let mut rows = vec![
            row("upstream alone", Load::Rate(500.0), &[1, 2]),
            row("gateway", Load::Rate(500.0), &[3, 5]),
            row("upstream alone", Load::Rate(2000.0), &[10, 10]),
            row("gateway", Load::Rate(2000.0), &[11, 12]),
            row("litellm", Load::Concurrency(4), &[9]),
        ];
        fill_added(&mut rows, "upstream alone");
        assert!(rows[0].added_vs_upstream.is_none());
        // HDR buckets are exact to 3 significant digits.
        let near = |got: f64, want: f64| (got - want).abs() < 0.02;
        let a = rows[1].added_vs_upstream.unwrap();
        assert!(near(a.p50_ms, 2.0) && near(a.p99_ms, 3.0), "{a:?}");
        let a = rows[3].added_vs_upstream.unwrap();
        assert!(near(a.p50_ms, 1.0) && near(a.p99_ms, 2.0), "{a:?}");
        assert!(rows[4].added_vs_upstream.is_none(), "no upstream row under c=4");
        assert_eq!(rows[1].throughput_rps, 1.0);
    }

    #[test]
    fn markdown_has_one_line_per_row_and_labels_errors() {
        let mut r = row("gateway", Load::Concurrency(32), &[1]);
        r.status_errors.insert(503, 4);
        r.connect_errors = 1;
        assert_eq!(r.errors_label(), "503:4 conn:1");
        let md = markdown(&[row("upstream alone", Load::Concurrency(32), &[1]), r]);
        assert_eq!(md.lines().count(), 4);
        assert!(md.contains("| c=32 | gateway | 0 | 1 | 503:4 conn:1 |"), "{md}");
        assert!(!md.contains("TTFT"));
    }

    #[test]
    fn cpu_per_thousand_requests() {
        assert_eq!(per_1k(2.5, 5_000), 0.5);
        assert_eq!(per_1k(1.0, 0), 0.0);
    }
}
