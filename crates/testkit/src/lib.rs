//! Real servers for tests: a PostgreSQL ([`Postgres`]) and a NATS JetStream
//! ([`Nats`]) of the test's own, each on free loopback ports in a temporary
//! directory, stopped and removed on drop.
//!
//! ```no_run
//! let pg = continuum_testkit::Postgres::start()?;
//! let url = pg.create_database("app")?; // postgres://continuum@127.0.0.1:PORT/app
//! let nats = continuum_testkit::Nats::start()?;
//! let nats_url = nats.url(); // nats://127.0.0.1:PORT
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Both need their Debian packages (`postgresql`, `nats-server`); `scripts/test`
//! installs them. PostgreSQL refuses to run as root: when the tests run as root
//! the cluster runs as the `postgres` user (or `nobody` when there is none).
//!
//! Free ports are found by binding `127.0.0.1:0` and closing the socket again,
//! so another process could take the port before the server binds it (a small
//! race). A first start that loses it tries again on fresh ports; a
//! `start_again` that loses it fails with the server's log.
//!
//! Cleanup: dropping a server stops it and removes its directory. A server
//! that is never dropped (held in a `static`, or the test process is killed)
//! is stopped and removed by a small watcher process (`sh`) once the test
//! process has exited: the watcher waits for end-of-file on a pipe that only
//! the test process holds open.

mod nats;
mod postgres;

pub use nats::Nats;
pub use postgres::{Postgres, PostgresBuilder};

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A loopback TCP port that was free a moment ago: binds `127.0.0.1:0`, reads
/// the port the kernel picked and closes the socket. Another process may take
/// it before the caller binds it; callers that can retry on fresh ports do.
pub fn free_port() -> Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct free loopback ports (all bound at once, so they differ).
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0")
            .context("binding 127.0.0.1:0 to find a free port (is the loopback interface up?)")?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// The last `lines` lines of a log file (at most the last 64 KiB of it), or a
/// note saying why there is none.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(could not read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        format!("(log {} is empty)", path.display())
    } else {
        tail
    }
}

/// Runs a command to completion, capturing its output; a failure (could not
/// start, or a non-zero exit) names the command and carries its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {:?} {:?}\n{}",
            output.status,
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            output_text(&output)
        );
    }
    Ok(output)
}

/// A command's stdout and stderr, for error messages.
pub(crate) fn output_text(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match (stdout.trim().is_empty(), stderr.trim().is_empty()) {
        (true, true) => "(no output)".to_string(),
        (false, true) => stdout.trim_end().to_string(),
        (true, false) => stderr.trim_end().to_string(),
        (false, false) => format!("{}\n{}", stdout.trim_end(), stderr.trim_end()),
    }
}

/// Polls `ready` every 20 ms until it returns `Ok(true)` or `timeout` passes.
/// `ready` returning an error stops the wait at once (the server died).
pub(crate) fn poll_until(
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<(), PollError> {
    let deadline = Instant::now() + timeout;
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(PollError::Failed(e)),
        }
        if Instant::now() >= deadline {
            return Err(PollError::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) enum PollError {
    TimedOut,
    Failed(anyhow::Error),
}

/// A watcher process that runs a cleanup script once the test process is
/// gone. Its stdin is a pipe whose write end only this process holds (std
/// opens pipes close-on-exec, so no other child inherits it); when this
/// process exits, however it exits, the watcher reads end-of-file and runs
/// the script. Dropping the `Reaper` kills the watcher without running it.
pub(crate) struct Reaper {
    child: Child,
}

impl Reaper {
    /// Spawns `sh -c 'cat >/dev/null; SCRIPT' reaper ARGS...` in a process
    /// group of its own (so a Ctrl-C to the tests does not kill it first).
    pub(crate) fn spawn(
        script: &str,
        args: &[&std::ffi::OsStr],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("cat >/dev/null; {script}"))
            .arg("continuum-testkit-reaper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .process_group(0);
        configure(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting the cleanup watcher (sh): is /bin/sh there?")?;
        Ok(Reaper { child })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // SIGKILL first: waiting closes the pipe, which would run the script.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
