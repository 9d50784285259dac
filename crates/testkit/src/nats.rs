//! A NATS server with JetStream of the test's own.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::{PollError, Reaper, free_ports, log_tail, poll_until};

/// How long a start may take before it fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a clean stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a first start tries fresh ports when another process took
/// a free port first.
const PORT_ATTEMPTS: usize = 3;

/// The server's name; fixed so JetStream finds its data after a restart.
const SERVER_NAME: &str = "continuum-testkit";

/// A `nats-server -js` of the test's own, on free ports of 127.0.0.1 (clients
/// and HTTP monitoring), its JetStream store in a temporary directory, no
/// authentication. Dropping it kills the server and removes the directory.
pub struct Nats {
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
    /// Kills the server and removes `dir` should this process exit without
    /// dropping `self`.
    reaper: Option<Reaper>,
    /// Last: removed once the server is gone.
    dir: TempDir,
}

impl Nats {
    /// Starts `nats-server -js` and waits (30 s at most) until it accepts
    /// clients with JetStream on (`"jetstream":true` in its `INFO`) and its
    /// `/healthz` says ok. Takes a few tens of milliseconds.
    ///
    /// Needs Debian's `nats-server` package (`nats-server` on PATH or in
    /// `/usr/sbin`).
    pub fn start() -> Result<Nats> {
        let bin = find_nats_server()?;
        let dir = tempfile::Builder::new()
            .prefix("continuum-nats-")
            .tempdir()
            .context("creating a temporary directory for nats-server")?;
        let mut nats = Nats {
            bin,
            port: 0,
            monitor_port: 0,
            child: None,
            reaper: None,
            dir,
        };
        nats.reaper = Some(Reaper::spawn(
            r#"[ -f "$1" ] && kill -9 "$(cat "$1")"; rm -rf "$2""#,
            &[nats.pid_path().as_os_str(), nats.dir.path().as_os_str()],
            |_| {},
        )?);
        let mut attempt = 1;
        loop {
            [nats.port, nats.monitor_port] = free_ports::<2>()?;
            match nats.launch() {
                Ok(()) => return Ok(nats),
                Err(_) if attempt < PORT_ATTEMPTS && nats.lost_port_race() => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (127.0.0.1): `/varz`, `/jsz`, `/healthz`, ...
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `http://127.0.0.1:MONITOR_PORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The JetStream store directory (`-sd`); it survives
    /// [`stop`](Self::stop) and [`start_again`](Self::start_again).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's log (stdout and stderr, kept across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The last lines of the server's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 40)
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's `INFO {...}` line, read from a fresh client connection.
    pub fn info(&self) -> Result<String> {
        read_info(self.port)
    }

    /// Stops the server cleanly (SIGTERM, then waits up to 30 s; killed if it
    /// takes longer, and that is an error). The store and the ports stay for
    /// [`start_again`](Self::start_again).
    pub fn stop(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("nats-server on port {} is not running", self.port))?;
        let pid = libc::pid_t::try_from(child.id()).context("nats-server's pid")?;
        // SAFETY: kill has no memory-safety preconditions; `child` has not
        // been waited for, so the pid is still its own.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let stopped = poll_until(STOP_TIMEOUT, || Ok(child.try_wait()?.is_some()));
        let _ = fs::remove_file(self.pid_path());
        if stopped.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "nats-server on port {} did not stop within {} s of SIGTERM; killed it. The end of its log:\n{}",
                self.port,
                STOP_TIMEOUT.as_secs(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Kills the server (SIGKILL), like a crash.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("nats-server on port {} is not running", self.port))?;
        child.kill().context("killing nats-server")?;
        child.wait().context("waiting for nats-server")?;
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }

    /// Starts the stopped server again on the same ports with the same
    /// JetStream store. Fails (with the server's log) should another process
    /// have taken a port meanwhile.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("nats-server on port {} is already running", self.port);
        }
        self.launch().map_err(|e| {
            if self.lost_port_race() {
                e.context(format!(
                    "another process took port {} or {} while nats-server was stopped (free ports are only free when picked)",
                    self.port, self.monitor_port
                ))
            } else {
                e
            }
        })
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.pid")
    }

    /// Spawns the server on `self.port` and waits until it is ready.
    fn launch(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-P")
            .arg(self.pid_path())
            .args(["--server_name", SERVER_NAME])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {}: install Debian's nats-server package (apt-get install nats-server; scripts/test does)",
                self.bin.display()
            )
        })?;
        self.child = Some(child);

        let (port, monitor_port) = (self.port, self.monitor_port);
        let child = self.child.as_mut().expect("just set");
        let waited = poll_until(READY_TIMEOUT, || {
            if let Some(status) = child.try_wait()? {
                bail!("nats-server exited ({status})");
            }
            Ok(jetstream_ready(port, monitor_port))
        });
        let failure = match waited {
            Ok(()) => return Ok(()),
            Err(PollError::Failed(e)) => e,
            Err(PollError::TimedOut) => anyhow!(
                "nats-server did not get ready within {} s (a client connection whose INFO says \"jetstream\":true, and GET /healthz answering ok)",
                READY_TIMEOUT.as_secs()
            ),
        };
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(failure.context(format!(
            "starting nats-server on 127.0.0.1:{port} (monitoring {monitor_port}, store {}); the end of its log {}:\n{}",
            self.store_dir().display(),
            self.log_path().display(),
            self.log_tail()
        )))
    }

    /// Whether the last start failed because a port was taken.
    fn lost_port_race(&self) -> bool {
        log_tail(&self.log_path(), 20).contains("address already in use")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.reaper = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `dir` is removed when the fields drop.
    }
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.url())
            .field("monitor_url", &self.monitor_url())
            .field("store_dir", &self.store_dir())
            .field("running", &self.is_running())
            .finish()
    }
}

fn connect(port: u16) -> Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// The first line a NATS server sends a new client: `INFO {...}`.
fn read_info(port: u16) -> Result<String> {
    let mut stream = connect(port).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.ends_with(b"\r\n") {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("reading INFO from 127.0.0.1:{port}"))?;
        if n == 0 {
            bail!("127.0.0.1:{port} closed the connection before its INFO line");
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > 64 * 1024 {
            bail!("127.0.0.1:{port} sent 64 KiB without a line end: not a NATS server?");
        }
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_string();
    if !line.starts_with("INFO ") {
        bail!("127.0.0.1:{port} did not greet with INFO: {line}");
    }
    Ok(line)
}

/// An HTTP/1.0 GET over a plain TcpStream: (status code, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = connect(port)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Clients are accepted with JetStream on, and `/healthz` (which in 2.9
/// also checks JetStream) says ok.
fn jetstream_ready(port: u16, monitor_port: u16) -> bool {
    let info_ok = read_info(port).is_ok_and(|info| info.contains(r#""jetstream":true"#));
    info_ok
        && http_get(monitor_port, "/healthz")
            .is_ok_and(|(status, body)| status == 200 && body.contains(r#""ok""#))
}

/// `nats-server` on PATH, else in `/usr/sbin` (Debian's package puts it
/// there, and a non-root PATH may lack it).
fn find_nats_server() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/sbin"), Path::new("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            anyhow!(
                "nats-server not found on PATH nor in /usr/sbin: install Debian's nats-server package (apt-get install nats-server; scripts/test does)"
            )
        })
}
