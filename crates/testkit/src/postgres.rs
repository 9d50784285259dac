//! A PostgreSQL cluster of the test's own.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::{Reaper, free_port, log_tail, run};

/// The superuser `initdb` creates; it logs in without a password (`trust`,
/// from 127.0.0.1 only).
const USER: &str = "continuum";

/// How many times a first start tries fresh ports when another process took
/// the free port first.
const PORT_ATTEMPTS: usize = 3;

/// A PostgreSQL server of the test's own: a fresh cluster (`initdb`) in a
/// temporary directory, listening on a free port of 127.0.0.1, superuser
/// `continuum` without a password. Dropping it stops the server
/// (`pg_ctl stop -m immediate`) and removes the directory.
///
/// When the tests run as root, `initdb`, `pg_ctl` and `postgres` run as the
/// `postgres` user (or `nobody`), which then owns the directory.
pub struct Postgres {
    bin_dir: PathBuf,
    psql: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    running: bool,
    /// Stops the server and removes `dir` should this process exit without
    /// dropping `self`. Dropped (killed) before the server is stopped here.
    reaper: Option<Reaper>,
    /// Last: removed once the server is stopped.
    dir: TempDir,
}

/// Settings for [`Postgres`] before it starts: `Postgres::builder()`.
#[derive(Debug, Clone)]
pub struct PostgresBuilder {
    fsync: bool,
    settings: Vec<(String, String)>,
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            fsync: true,
            settings: Vec::new(),
        }
    }
}

impl PostgresBuilder {
    /// `fsync(false)` trades durability for speed: `fsync`,
    /// `synchronous_commit` and `full_page_writes` off (a crash of the
    /// machine, not of PostgreSQL, may then lose or corrupt data). On by
    /// default, so benchmarks measure durable commits.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Another `postgresql.conf` line, `name = value`, written as given
    /// (quote string values yourself: `.setting("log_statement", "'all'")`).
    /// Later lines override the testkit's own settings.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Creates the cluster and starts it: see [`Postgres::start`].
    pub fn start(self) -> Result<Postgres> {
        let bin_dir = find_bin_dir()?;
        let psql = bin_dir.join("psql");
        let psql = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let run_as = RunAs::for_postgres()?;
        let dir = temp_dir(run_as.as_ref())?;
        let mut pg = Postgres {
            bin_dir,
            psql,
            run_as,
            port: 0,
            running: false,
            reaper: None,
            dir,
        };
        pg.initdb()?;
        pg.reaper = Some(pg.spawn_reaper()?);
        let mut attempt = 1;
        loop {
            pg.port = free_port()?;
            pg.write_settings(&self)?;
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(_) if attempt < PORT_ATTEMPTS && pg.lost_port_race() => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Postgres {
    /// Creates a fresh cluster in a temporary directory and starts it on a
    /// free port of 127.0.0.1, with settings for tests: `max_connections =
    /// 300`, `shared_buffers = 128MB`, `fsync` on (see
    /// [`PostgresBuilder::fsync`]), locale C, encoding UTF8. Takes about a
    /// second (mostly `initdb`).
    ///
    /// Needs Debian's `postgresql` package: `initdb`, `pg_ctl`, `postgres` and
    /// `psql` are looked up on PATH, then in the newest
    /// `/usr/lib/postgresql/*/bin`.
    pub fn start() -> Result<Postgres> {
        PostgresBuilder::default().start()
    }

    /// Settings before the start: `Postgres::builder().fsync(false).start()`.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://continuum@127.0.0.1:PORT/postgres`: the cluster's default
    /// database. Tests usually want [`create_database`](Self::create_database).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// `postgres://continuum@127.0.0.1:PORT/DBNAME` (the database need not
    /// exist).
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Creates database `name` (letters, digits, `_` and `-`) and returns its
    /// URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!(
                "database name {name:?}: use 1 to 63 ASCII letters, digits, '_' or '-' (it goes into a URL unescaped)"
            );
        }
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.url_for(name))
    }

    /// Runs `sql` in database `dbname` with `psql` (stop at the first error,
    /// unaligned, tuples only) and returns its output, trimmed: `"1"` for
    /// `select 1`.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(&self.psql);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-U", USER, "-d", dbname, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
        let output = run(&mut cmd, "psql").map_err(|e| {
            if self.running {
                e
            } else {
                e.context("the server is stopped: call start_again() first")
            }
        })?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The `psql` this cluster uses (the one next to its `initdb`), for tests
    /// that run it themselves.
    pub fn psql_path(&self) -> &Path {
        &self.psql
    }

    /// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql`, ...
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file (kept across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The last lines of the server's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 40)
    }

    /// The user the server runs as when the tests run as root.
    pub fn os_user(&self) -> Option<&str> {
        self.run_as.as_ref().map(|u| u.name.as_str())
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: clients are
    /// disconnected, a checkpoint is written). The directory and the port
    /// stay for [`start_again`](Self::start_again).
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`: no
    /// checkpoint; the next start replays the WAL).
    pub fn kill(&mut self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Starts the stopped server again on the same port with the same data.
    /// Fails (with the server's log) should another process have taken the
    /// port meanwhile.
    pub fn start_again(&mut self) -> Result<()> {
        if self.running {
            bail!("PostgreSQL on port {} is already running", self.port);
        }
        self.pg_ctl_start().map_err(|e| {
            if self.lost_port_race() {
                e.context(format!(
                    "another process took port {} while PostgreSQL was stopped (free ports are only free when picked)",
                    self.port
                ))
            } else {
                e
            }
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        // initdb and postgres warn when they cannot return to the working
        // directory, which the postgres user may not be allowed into.
        cmd.current_dir(self.dir.path());
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid).gid(user.gid).env("HOME", self.dir.path());
        }
        cmd
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut cmd, "initdb").map_err(|e| {
            e.context(format!(
                "creating a PostgreSQL cluster in {}{}",
                self.data_dir().display(),
                match &self.run_as {
                    Some(u) => format!(" as user {} (PostgreSQL refuses to run as root)", u.name),
                    None => String::new(),
                }
            ))
        })?;
        Ok(())
    }

    fn write_settings(&self, builder: &PostgresBuilder) -> Result<()> {
        let data = self.data_dir();
        let conf = data.join("continuum-testkit.conf");
        let mut text = format!(
            "# Written by continuum-testkit; included from postgresql.conf.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 300\n\
             shared_buffers = 128MB\n\
             fsync = {fsync}\n\
             synchronous_commit = {fsync}\n\
             full_page_writes = {fsync}\n",
            port = self.port,
            socket_dir = self.socket_dir(),
            fsync = if builder.fsync { "on" } else { "off" },
        );
        for (name, value) in &builder.settings {
            text.push_str(&format!("{name} = {value}\n"));
        }
        fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        self.give_to_user(&conf)?;

        let main = data.join("postgresql.conf");
        let include = "include 'continuum-testkit.conf'";
        let current =
            fs::read_to_string(&main).with_context(|| format!("reading {}", main.display()))?;
        if !current.contains(include) {
            fs::OpenOptions::new()
                .append(true)
                .open(&main)
                .and_then(|mut f| writeln!(f, "\n{include}"))
                .with_context(|| format!("appending to {}", main.display()))?;
        }
        Ok(())
    }

    /// The temporary directory, unless a socket path in it would be too long
    /// for a Unix socket (108 bytes); then no socket at all (`psql` and the
    /// URLs use TCP anyway).
    fn socket_dir(&self) -> String {
        let dir = self.dir.path().to_string_lossy().into_owned();
        if dir.len() + "/.s.PGSQL.65535.lock".len() < 100 && !dir.contains('\'') {
            dir
        } else {
            String::new()
        }
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"]);
        match run(&mut cmd, "pg_ctl start") {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "starting PostgreSQL on 127.0.0.1:{} (data {}); the end of its log {}:\n{}",
                self.port,
                self.data_dir().display(),
                self.log_path().display(),
                self.log_tail()
            ))),
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<()> {
        if !self.running {
            bail!("PostgreSQL on port {} is not running", self.port);
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        run(&mut cmd, "pg_ctl stop").map_err(|e| {
            e.context(format!(
                "stopping PostgreSQL on port {}; the end of its log:\n{}",
                self.port,
                self.log_tail()
            ))
        })?;
        self.running = false;
        Ok(())
    }

    /// Whether the last start failed because the port was taken.
    fn lost_port_race(&self) -> bool {
        let tail = log_tail(&self.log_path(), 20);
        tail.contains("Address already in use") || tail.contains("could not bind")
    }

    fn spawn_reaper(&self) -> Result<Reaper> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let data = self.data_dir();
        let run_as = self.run_as.clone();
        Reaper::spawn(
            r#""$1" -D "$2" -m immediate -w -t 30 stop; rm -rf "$3""#,
            &[
                pg_ctl.as_os_str(),
                data.as_os_str(),
                self.dir.path().as_os_str(),
            ],
            |cmd| {
                if let Some(user) = run_as {
                    cmd.uid(user.uid).gid(user.gid);
                }
            },
        )
    }

    fn give_to_user(&self, path: &Path) -> Result<()> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("giving {} to user {}", path.display(), user.name))?;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.reaper = None;
        if self.running {
            let _ = self.pg_ctl_stop("immediate");
        }
        // `dir` is removed when the fields drop.
    }
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url())
            .field("data_dir", &self.data_dir())
            .field("running", &self.running)
            .field("os_user", &self.os_user())
            .finish()
    }
}

/// The unprivileged user PostgreSQL runs as when the tests run as root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` unless running as root; then `postgres` (Debian's package
    /// creates it) or else `nobody`.
    fn for_postgres() -> Result<Option<RunAs>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        for name in ["postgres", "nobody"] {
            if let (Some(uid), Some(gid)) = (id(name, "-u"), id(name, "-g")) {
                return Ok(Some(RunAs {
                    name: name.to_string(),
                    uid,
                    gid,
                }));
            }
        }
        bail!(
            "running as root, and PostgreSQL refuses to: found neither a `postgres` nor a `nobody` user to run it as (install Debian's postgresql package, which creates `postgres`, or run the tests as a normal user)"
        )
    }
}

fn id(user: &str, flag: &str) -> Option<u32> {
    let output = Command::new("id").arg(flag).arg(user).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// A temporary directory for the cluster, owned by the user it runs as. That
/// user must be able to reach it: when `$TMPDIR` sits under a directory it
/// may not enter (root's home, say), `/tmp` is used instead.
fn temp_dir(run_as: Option<&RunAs>) -> Result<TempDir> {
    let mut base = std::env::temp_dir();
    if run_as.is_some() && !reachable_by_others(&base) {
        base = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix("continuum-pg-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
    if let Some(user) = run_as {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
            .with_context(|| format!("giving {} to user {}", dir.path().display(), user.name))?;
    }
    Ok(dir)
}

/// Whether every directory from `/` to `path` lets others through (`o+x`).
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().all(|dir| {
        fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// The directory with `initdb`, `pg_ctl`, `postgres`: `initdb`'s on PATH
/// (symlinks resolved), else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !initdb.is_file() {
                continue;
            }
            if let Some(real) = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                && complete(&real)
            {
                return Ok(real);
            }
            if complete(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = version_key(&name)?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!(
            "initdb not found (with pg_ctl and postgres) on PATH nor in /usr/lib/postgresql/*/bin: install Debian's postgresql package (apt-get install postgresql; scripts/test does)"
        )
    })
}

/// `"15"` -> `[15]`, `"9.6"` -> `[9, 6]`; `None` for other names.
fn version_key(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            version_key(OsStr::new("9.6")).unwrap(),
            version_key(OsStr::new("15")).unwrap(),
            version_key(OsStr::new("10")).unwrap(),
        ];
        v.sort();
        assert_eq!(v, [vec![9, 6], vec![10], vec![15]]);
        assert_eq!(version_key(OsStr::new("main")), None);
    }

    #[test]
    fn bad_database_names_are_refused_before_psql_runs() {
        // No server needed: the name check comes first.
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres {
            bin_dir: PathBuf::from("/nonexistent"),
            psql: PathBuf::from("/nonexistent/psql"),
            run_as: None,
            port: 1,
            running: false,
            reaper: None,
            dir,
        };
        let err = pg.create_database("a b").unwrap_err().to_string();
        assert!(err.contains("database name"), "{err}");
        assert!(pg.create_database("").is_err());
    }
}
