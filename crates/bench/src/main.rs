//! `orchestrator-bench`: parse the options, start what is needed, measure, report, stop.

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use orchestrator_bench::harness::{self, Plan, Target, UPSTREAM};
use orchestrator_bench::load::{self, Load};
use orchestrator_bench::procs::Server;
use orchestrator_bench::{chart, config, report};
use reqwest::header::{HeaderMap, HeaderValue};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

mod cli;
use cli::{Args, Mode, Peer};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Ctrl-C drops `run`, and with it every started server (kill_on_drop).
    let result = tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; started servers stopped")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Open files the harness asks for: 10,000 streams through a gateway hold 10,000 sockets here,
/// 20,000 in the gateway (client and upstream sides) and 10,000 in the mock, which inherit this
/// process's limits.
const WANTED_OPEN_FILES: u64 = 65_536;

/// Raises the open files limit to [`WANTED_OPEN_FILES`] (the hard limit too when privileged,
/// else as far as the hard limit); returns the soft limit now.
fn raise_file_limit() -> u64 {
    use rlimit::Resource;
    if let Ok((soft, hard)) = Resource::NOFILE.get()
        && Resource::NOFILE
            .set(soft.max(WANTED_OPEN_FILES), hard.max(WANTED_OPEN_FILES))
            .is_err()
    {
        let _ = rlimit::increase_nofile_limit(WANTED_OPEN_FILES);
    }
    Resource::NOFILE.get().map_or(0, |(soft, _)| soft)
}

async fn run(args: Args) -> Result<()> {
    let open_files = raise_file_limit();
    eprintln!("== open files limit: {open_files}");
    let out = args.out.clone().unwrap_or_else(cli::default_out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let needs_bin = args.upstream_url.is_none() || args.gateway_url.is_empty();
    let bin = if needs_bin {
        Some(cli::orchestrator_bin(&args)?)
    } else {
        None
    };

    let mut servers: Vec<Server> = Vec::new();
    let upstream = match (&args.upstream_url, &bin) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(_)) => {
            eprintln!("== starting the mock upstream");
            let s = cli::start_mock(&cli::mock_bin()?, &args, &out).await?;
            let url = s.base_url.clone();
            servers.push(s);
            url
        }
        (None, None) => unreachable!("needs_bin covers a missing upstream URL"),
    };
    let mut targets = vec![Target::new(
        UPSTREAM,
        upstream.clone(),
        servers.first().map(|s| s.pid),
    )];
    let mut gateway_headers = HeaderMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?}: expected `NAME: VALUE`"))?;
        gateway_headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            HeaderValue::from_str(value.trim())?,
        );
    }
    let gateway_headers = Arc::new(gateway_headers);
    match &bin {
        _ if !args.gateway_url.is_empty() => {
            for given in &args.gateway_url {
                let (name, urls) = given.split_once('=').unwrap_or(("gateway", given));
                let mut target = Target::new(name, "", None);
                target.base_urls = urls
                    .split('+')
                    .map(|u| u.trim_end_matches('/').to_owned())
                    .collect();
                target.headers = gateway_headers.clone();
                targets.push(target);
            }
        }
        Some(bin) => {
            eprintln!("== starting the gateway");
            let s = cli::start_gateway(bin, &args, &upstream, &out).await?;
            let mut target = Target::new("gateway", s.base_url.clone(), Some(s.pid));
            target.headers = gateway_headers.clone();
            targets.push(target);
            servers.push(s);
        }
        None => unreachable!("needs_bin covers a missing gateway URL"),
    }
    for peer in &args.peer {
        let mut headers = HeaderMap::new();
        let s = match peer {
            Peer::Litellm => {
                eprintln!("== starting litellm ({})", args.litellm_bin.display());
                cli::start_litellm(&args, &upstream, &out).await?
            }
            Peer::Portkey => {
                eprintln!("== starting portkey ({})", args.portkey_server.display());
                for (name, value) in config::portkey_headers(&upstream) {
                    headers.insert(name, HeaderValue::from_str(&value)?);
                }
                cli::start_portkey(&args, &out).await?
            }
            Peer::Forwarder => {
                eprintln!("== starting the forwarder");
                cli::start_forwarder(&upstream, &out).await?
            }
        };
        let mut target = Target::new(s.name, s.base_url.clone(), Some(s.pid));
        target.headers = Arc::new(headers);
        targets.push(target);
        servers.push(s);
    }
    for target in &mut targets {
        target.max_rate = args
            .max_rate
            .iter()
            .find(|(system, _)| *system == target.system)
            .map(|&(_, rate)| rate);
    }

    let loads: Vec<Load> = match args.mode {
        Mode::Rate => args.rates.iter().map(|&r| Load::Rate(r)).collect(),
        Mode::Concurrency => args.concurrency.iter().map(|&c| Load::Concurrency(c)).collect(),
    };
    let plan = Plan {
        loads,
        duration: args.duration,
        warmup: args.warmup,
        stream: args.stream,
        body: Bytes::from(config::request_body(&args.model, args.stream)),
        max_in_flight: args.max_in_flight,
        timeout: args.timeout,
    };
    let client = load::client(args.max_in_flight)?;
    check_targets(&client, &targets, &plan).await?;

    eprintln!("== waiting for {} (held while measuring)", args.lock.display());
    let lock = lock_file(&args.lock).await?;
    let bar = ProgressBar::new(plan.runs(&targets));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let rows = harness::measure(&client, &targets, &plan, &bar).await;
    bar.finish_and_clear();
    drop(lock);

    for s in servers {
        s.stop().await;
    }
    write_results(&args, &out, &targets, &rows)
}

/// One request to each target before measuring, so a wrong URL or model fails fast.
async fn check_targets(client: &reqwest::Client, targets: &[Target], plan: &Plan) -> Result<()> {
    for (t, base) in targets
        .iter()
        .flat_map(|t| t.base_urls.iter().map(move |b| (t, b)))
    {
        let url = format!("{base}/v1/chat/completions");
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .headers((*t.headers).clone())
            .body(plan.body.clone())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("{}: POST {url}", t.system))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "{}: POST {url} answered {status}: {text}",
            t.system
        );
    }
    Ok(())
}

/// Takes an exclusive flock on `path` (the same lock scripts/bench-gateway.sh uses); released
/// when the file is dropped.
async fn lock_file(path: &std::path::Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let file = tokio::task::spawn_blocking(move || {
        // SAFETY: flock on a file descriptor this function owns.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            Ok(file)
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await??;
    Ok(file)
}

fn write_results(args: &Args, out: &std::path::Path, targets: &[Target], rows: &[report::Row]) -> Result<()> {
    let table = report::markdown(rows);
    let mut header = format!(
        "mode {:?}, duration {:?}, warm-up {:?}, stream {}, mock tokens {}, {} cores shared by the harness and every server\n\n",
        args.mode,
        args.duration,
        args.warmup,
        args.stream,
        args.mock_tokens,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    header.push_str(&table);
    print!("{header}");
    std::fs::write(out.join("summary.md"), &header)?;
    let json = serde_json::json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "args": format!("{args:?}"),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "targets": targets.iter().map(|t| serde_json::json!({"system": t.system, "base_urls": t.base_urls, "pid": t.pid, "max_rate": t.max_rate})).collect::<Vec<_>>(),
        "rows": rows,
    });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    if !args.no_chart && args.mode == Mode::Rate {
        match chart::draw(rows, &out.join("latency.png")) {
            Ok(()) => eprintln!("chart: {}", out.join("latency.png").display()),
            Err(e) => eprintln!("no chart: {e:#}"),
        }
    }
    eprintln!("results: {}", out.display());
    Ok(())
}
