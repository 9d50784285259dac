//! Runs a real `continuum serve` child process for benchmarks, so memory and
//! CPU are the server's own and the client's cost is visible separately.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    pub base: String,
    pub api_key: Option<String>,
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> anyhow::Result<ServerProcess> {
        Self::start_with(data_dir, &[])
    }

    /// With extra environment (configuration) for the child.
    pub fn start_with(data_dir: &Path, env: &[(&str, String)]) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("locating the continuum binary")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("CONTINUUM_LOG", "warn")
            .env("CONTINUUM_RTC__UDP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_TURN__UDP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_TURN__TCP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_SIP__TCP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_SIP__UDP_LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("CONTINUUM_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting `continuum serve`")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut api_key = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            if Instant::now() > deadline {
                bail!("the server did not report its address within 60 s");
            }
            let Some(line) = lines.next() else {
                bail!("the server exited before listening (see its log above)")
            };
            let line = line?;
            if let Some(k) = line.trim().strip_prefix("export CONTINUUM_KEY=") {
                api_key = Some(k.to_owned());
            }
            if let Some(rest) = line.strip_prefix("Continuum listening on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess {
            child,
            base,
            api_key,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid())
    }

    /// Process CPU time (user + system) in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid(), false).unwrap_or(0.0)
    }

    /// SIGTERM and wait: the graceful path, which checkpoints the WAL.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("the server did not stop within 60 s of SIGTERM")
    }
}

/// The fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// A process's CPU time (user + system) in seconds; with `children`, also
/// that of its children it has waited for (exited ones).
pub fn proc_cpu_seconds(pid: u32, children: bool) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut t = ticks(11) + ticks(12);
    if children {
        t += ticks(13) + ticks(14);
    }
    // USER_HZ: 100 on every Linux we run on.
    Some(t / 100.0)
}

/// A process's parent.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
