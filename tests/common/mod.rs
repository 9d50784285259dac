//! Runs the real `continuum` binary for end-to-end tests.
#![allow(dead_code)]

pub mod phone;
pub mod providers;
pub mod sipp;
pub mod sse;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_continuum");

/// `CONTINUUM_TEST_BACKEND=postgres`: every server of this test binary keeps
/// its state in PostgreSQL and joins a NATS bus (both started here, once per
/// binary), so the suite runs against the cluster backends. Otherwise the
/// embedded SQLite store, as a newcomer runs it.
pub fn on_postgres() -> bool {
    std::env::var("CONTINUUM_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The master key of a PostgreSQL-backed test server: one per data
/// directory, as each SQLite server generates its own (tests rely on two
/// servers not trusting each other's tokens).
fn pg_master_key(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("{:016x}", h.finish()).repeat(4)
}

struct Backends {
    pg: continuum_testkit::Postgres,
    nats: continuum_testkit::Nats,
    /// Data directory → its database (a server restarted on the same data
    /// directory finds its data again, as with SQLite).
    databases: std::collections::HashMap<PathBuf, String>,
}

fn backends() -> &'static std::sync::Mutex<Backends> {
    static B: std::sync::OnceLock<std::sync::Mutex<Backends>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        std::sync::Mutex::new(Backends {
            pg: continuum_testkit::Postgres::start().expect("starting the test PostgreSQL"),
            nats: continuum_testkit::Nats::start().expect("starting the test nats-server"),
            databases: Default::default(),
        })
    })
}

/// The environment that points a server (or the CLI) for `data_dir` at
/// PostgreSQL and NATS, when the suite runs on them.
pub fn backend_env(data_dir: &Path) -> Vec<(String, String)> {
    if !on_postgres() {
        return Vec::new();
    }
    let mut b = backends().lock().unwrap();
    let n = b.databases.len();
    let url = match b.databases.get(data_dir) {
        Some(url) => url.clone(),
        None => {
            let url =
                b.pg.create_database(&format!("t{}_{n}", std::process::id()))
                    .expect("creating a test database");
            b.databases.insert(data_dir.to_owned(), url.clone());
            url
        }
    };
    // Each server (data directory) is its own deployment: its own database,
    // and its own namespace on the shared NATS.
    let cluster = url.rsplit('/').next().unwrap_or("t").to_owned();
    vec![
        ("CONTINUUM_STORE__URL".into(), url),
        ("CONTINUUM_STORE__POOL_SIZE".into(), "8".into()),
        ("CONTINUUM_BUS__URL".into(), b.nats.url()),
        ("CONTINUUM_BUS__CLUSTER".into(), cluster),
        (
            "CONTINUUM_SECURITY__MASTER_KEY".into(),
            pg_master_key(data_dir),
        ),
    ]
}

pub struct Visit {
    pub conv: String,
    pub room: String,
    pub tokens: Vec<String>,
}

pub struct Server {
    pub child: Child,
    pub base: String,
    /// The dev tenant's key, printed on first start only.
    pub key: Option<String>,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
}

/// Options for one server process.
#[derive(Default, Clone)]
pub struct Opts {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Write the server's log (stderr) to this file instead of the test's stderr.
    pub log_file: Option<PathBuf>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, Opts::default())
    }

    pub fn start_with(data_dir: &Path, opts: Opts) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        if !opts.args.iter().any(|a| a == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(&opts.args)
            .env("CONTINUUM_LOG", "warn")
            .env("CONTINUUM_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
            .env(
                "CONTINUUM_WEBHOOKS__ALLOW_HTTP_HOSTS",
                r#"["127.0.0.1", "localhost"]"#,
            )
            .env("CONTINUUM_RTC__UDP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_TURN__UDP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_TURN__TCP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_SIP__UDP_LISTEN", "127.0.0.1:0")
            .env("CONTINUUM_SIP__TCP_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in backend_env(data_dir) {
            cmd.env(k, v);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(path) = &opts.log_file {
            cmd.stderr(std::fs::File::create(path).expect("creating the log file"));
        }
        let mut child = cmd.spawn().expect("starting continuum serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut key = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(k) = line.trim().strip_prefix("export CONTINUUM_KEY=") {
                    key = Some(k.to_owned());
                }
                if let Some(rest) = line.strip_prefix("Continuum listening on ") {
                    let base = rest.split_whitespace().next().unwrap().to_owned();
                    let _ = tx.send((base, key.take()));
                }
            }
        });
        let (base, key) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not report its listen address within 30 s");
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        Server {
            child,
            base,
            key,
            data_dir: data_dir.to_owned(),
            client,
        }
    }

    pub fn key(&self) -> &str {
        self.key.as_deref().expect("dev key printed on first start")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(m, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, token, body).await;
        assert!((200..300).contains(&s), "{method} {path} answered {s}: {v}");
        v
    }

    /// A contact and a conversation with it; returns (contact id, conversation id).
    pub async fn patient_conversation(&self, token: &str, phone: &str) -> (String, String) {
        let c = self
            .ok(
                "POST",
                "/v1/contacts",
                token,
                Some(json!({"display_name": "Test Patient", "phone": phone})),
            )
            .await;
        let cid = c["id"].as_str().unwrap().to_owned();
        let conv = self
            .ok(
                "POST",
                "/v1/conversations",
                token,
                Some(json!({"contact_id": cid})),
            )
            .await;
        (cid, conv["id"].as_str().unwrap().to_owned())
    }

    /// A patient conversation with a visit room, and access tokens granting both
    /// for each `(identity, role)`.
    pub async fn visit(&self, key: &str, phone: &str, people: &[(&str, &str)]) -> Visit {
        let (_, conv) = self.patient_conversation(key, phone).await;
        let room = self
            .ok(
                "POST",
                &format!("/v1/conversations/{conv}/rooms"),
                key,
                Some(json!({"waiting_room": false})),
            )
            .await;
        let room = room["id"].as_str().unwrap().to_owned();
        let mut tokens = Vec::new();
        for (identity, role) in people {
            let grants = json!({"conversations": [conv], "rooms": [room]});
            let body = json!({"identity": identity, "role": role, "grants": grants});
            tokens.push(
                self.ok("POST", "/v1/tokens", key, Some(body)).await["token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        Visit { conv, room, tokens }
    }

    pub async fn mint(
        &self,
        key: &str,
        identity: &str,
        role: &str,
        conversations: &[&str],
    ) -> String {
        let v = self
            .ok("POST", "/v1/tokens", key, Some(json!({"identity": identity, "role": role, "grants": {"conversations": conversations}})))
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with arguments against a data dir; returns (exit code, stdout).
pub fn cli(data_dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(backend_env(data_dir))
        .env("CONTINUUM_LOG", "warn")
        .output()
        .expect("running continuum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Creates another tenant with the CLI; returns its API key.
pub fn second_tenant(dir: &Path, name: &str) -> String {
    let (code, out) = cli(dir, &["tenant", "create", name]);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .find_map(|l| l.strip_prefix("API key (shown once): "))
        .expect("the CLI prints the new tenant's API key")
        .trim()
        .to_owned()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("continuum-test-")
        .tempdir()
        .unwrap()
}

/// A minimal, valid WHIP offer: one Opus track, as an encoder would send.
pub fn audio_offer() -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", i * 7 % 256))
        .collect::<Vec<_>>()
        .join(":");
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS s",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:wXyZ",
        "a=ice-pwd:Zm9vYmFyYmF6cXV4cXV1eHh5",
        &format!("a=fingerprint:sha-256 {fingerprint}"),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=msid:s t",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1234 cname:enc",
        "",
    ]
    .join("\r\n")
}

pub type Signaling =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the signaling WebSocket at `url` and reads the server's first
/// message, `welcome` (who we are, the ICE servers), which it returns.
pub async fn connect_signaling(url: impl AsRef<str>) -> (Signaling, Value) {
    use futures::StreamExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_ref())
        .await
        .expect("signaling connects");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a welcome within 10 s")
        .expect("the socket stays open")
        .expect("a frame");
    let welcome: Value = serde_json::from_str(first.to_text().expect("text")).expect("JSON");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// Browser scenarios of one test binary take turns: two or three Chromiums
/// encoding video already fill a 2-core runner, and a starved encoder is a
/// bandwidth estimate that never ramps up (a flaky test, not a finding).
pub async fn browsers() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Runs the browser scenario `tests/browser/<script>` with `args` (taking
/// the browsers' turn), prints what it reports, and asserts it succeeded and
/// reported each of `checks` ok. Returns its output.
pub async fn browser_scenario(script: &str, args: &[&str], checks: &[String]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let _browsers = browsers().await;
    let out = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .output()
        .await
        .expect("node runs the browser scenario");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in checks {
        assert!(
            stdout.contains(&format!("\"check\":\"{check}\",\"ok\":true")),
            "missing check {check}:\n{stdout}"
        );
    }
    stdout
}

/// Uploads an IVR flow (YAML); the status and the answer.
pub async fn put_flow(s: &Server, key: &str, name: &str, yaml: &str) -> (u16, Value) {
    let resp = s
        .client
        .put(s.url(&format!("/v1/ivr/flows/{name}")))
        .bearer_auth(key)
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
