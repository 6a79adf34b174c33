//! The servers the harness starts (mock upstream, gateway, LiteLLM): spawning with output to a
//! log file, waiting until they answer, reading their CPU time and peak memory from /proc, and
//! stopping them.
//!
//! Each child is spawned with `kill_on_drop`, so an error or Ctrl-C that drops the harness's
//! state kills it; the normal path stops it with SIGTERM first ([`Server::stop`]).

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A server process started by the harness.
#[derive(Debug)]
pub struct Server {
    pub name: &'static str,
    pub pid: u32,
    /// `http://host:port`.
    pub base_url: String,
    child: Child,
}

/// Starts `cmd` with stdout and stderr appended to `log`.
///
/// # Errors
/// When the log file cannot be created or the program cannot be started.
pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<(Child, u32)> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
    let pid = child.id().context("the child has no pid")?;
    Ok((child, pid))
}

/// Waits for an `orchestrator` process (started with `--log-format json --listen 127.0.0.1:0`)
/// to log the address it bound (the `"addr"` field of its listening line).
///
/// # Errors
/// When the process exits or logs no address within `within`; the error holds its log.
pub async fn bound_addr(name: &str, child: &mut Child, log: &Path, within: Duration) -> Result<SocketAddr> {
    let deadline = Instant::now() + within;
    loop {
        let text = tokio::fs::read_to_string(log).await.unwrap_or_default();
        if let Some(addr) = find_addr(&text) {
            return Ok(addr);
        }
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited ({status}) before listening; its log:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("{name} did not log its address within {within:?}; its log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first `"addr":"…"` in JSON log lines.
pub fn find_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = &line[line.find("\"addr\":\"")? + 8..];
        rest[..rest.find('"')?].parse().ok()
    })
}

impl Server {
    pub fn new(name: &'static str, child: Child, pid: u32, base_url: String) -> Self {
        Self {
            name,
            pid,
            base_url,
            child,
        }
    }

    /// Polls `GET {base_url}{path}` until it answers 2xx, then hands the server over.
    ///
    /// # Errors
    /// When the process exits or `within` passes first (the process is then killed).
    pub async fn ready(mut self, path: &str, log: &Path, within: Duration) -> Result<Self> {
        let url = format!("{}{path}", self.base_url);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(self);
            }
            if let Some(status) = self.child.try_wait()? {
                let text = tokio::fs::read_to_string(log).await.unwrap_or_default();
                bail!(
                    "{} exited ({status}) before it was ready; its log:\n{text}",
                    self.name
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready at {url} within {within:?} (log: {})",
                    self.name,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGTERM)
            };
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A process's CPU time and memory, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, MiB.
    pub rss_mib: f64,
    /// VmHWM (peak resident set since start or since [`reset_peak`]), MiB.
    pub hwm_mib: f64,
}

/// Reads `/proc/PID/{stat,status}`; `None` if the process is gone or this is not Linux.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc(&stat, &status, clock_ticks())
}

/// Parses /proc/PID/stat (utime and stime are fields 14 and 15, counted after the `(comm)`,
/// which may itself hold spaces) and /proc/PID/status (VmRSS, VmHWM in kB).
pub fn parse_proc(stat: &str, status: &str, ticks_per_s: f64) -> Option<ProcSample> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the comm, field 3 (state) is index 0, so utime (14) is index 11 and stime index 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let kb = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(ProcSample {
        cpu_s: (utime + stime) / ticks_per_s,
        rss_mib: kb("VmRSS:")? / 1024.0,
        hwm_mib: kb("VmHWM:")? / 1024.0,
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Resets the process's VmHWM to its current RSS (writes 5 to /proc/PID/clear_refs), so the
/// next peak is the peak of one row; false if the kernel refused.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A free local port, for servers that cannot be told to bind port 0 and report it (LiteLLM).
/// Another process could take it between this call and the server's bind; unlikely on a
/// benchmark machine, and the server's start would then fail loudly.
///
/// # Errors
/// When no local port can be bound.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bound_address_in_json_logs() {
        let log = "{\"level\":\"INFO\",\"fields\":{\"message\":\"starting\"}}\n\
                   {\"level\":\"INFO\",\"fields\":{\"addr\":\"127.0.0.1:41234\",\"message\":\"Listening\"}}\n";
        assert_eq!(find_addr(log), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(find_addr("no address yet"), None);
    }

    #[test]
    fn parses_cpu_and_memory_from_proc() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    12345 1000000 2000 18446744073709551615";
        let status = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        let s = parse_proc(stat, status, 100.0).unwrap();
        assert_eq!(
            s,
            ProcSample {
                cpu_s: 3.0,
                rss_mib: 10.0,
                hwm_mib: 20.0
            }
        );
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_mib > 0.0 && s.hwm_mib >= s.rss_mib);
    }
}
