//! The SMSC stand-in (`tests/peers/smsc.mjs`, on the npm package `smpp`)
//! as a child process: its JSON lines come in through a channel, commands
//! go to its stdin.

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(15);

/// The workspace root (this module is also used by the root package's
/// end-to-end tests, whose manifest directory is the root itself).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("tests/peers/smsc.mjs").exists())
        .expect("tests/peers/smsc.mjs above the manifest directory")
        .to_path_buf()
}

pub struct Smsc {
    pub port: u16,
    _child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line so far.
    pub seen: Vec<Value>,
    /// Lines before this index were matched (or skipped) by `wait_for`.
    cursor: usize,
}

impl Smsc {
    pub async fn start(args: &[&str]) -> Smsc {
        let root = repo_root();
        assert!(
            root.join("tests/browser/node_modules/smpp").exists(),
            "run scripts/test (it installs the npm smpp package into tests/browser)"
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/peers/smsc.mjs"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the SMSC stand-in");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("smsc: {line}"),
                }
            }
        });
        let mut smsc = Smsc {
            port: 0,
            _child: child,
            stdin,
            lines,
            seen: Vec::new(),
            cursor: 0,
        };
        let listening = smsc
            .wait_for("listening", |v| v["event"] == "listening")
            .await;
        smsc.port = listening["port"].as_u64().unwrap() as u16;
        smsc
    }

    /// The next line after the last match that satisfies `pred`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while self.cursor < self.seen.len() {
                let v = &self.seen[self.cursor];
                self.cursor += 1;
                if pred(v) {
                    return v.clone();
                }
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => self.seen.push(v),
                Ok(None) => panic!(
                    "the SMSC stand-in exited waiting for {what}: {:#?}",
                    self.seen
                ),
                Err(_) => panic!(
                    "no {what} from the SMSC stand-in within {WAIT:?}; it said: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Takes in what has arrived so far.
    pub fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
    }

    /// Every line so far with `event: "pdu"` and this command.
    pub fn pdus(&mut self, command: &str) -> Vec<Value> {
        self.drain();
        self.seen
            .iter()
            .filter(|v| v["event"] == "pdu" && v["command"] == command)
            .cloned()
            .collect()
    }

    /// Sends a command and waits for the stand-in to take it.
    pub async fn command(&mut self, cmd: Value) {
        let name = cmd["cmd"].as_str().unwrap().to_owned();
        self.drain();
        let cursor = self.cursor;
        self.cursor = self.seen.len();
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        // The wait for the acknowledgement leaves the cursor where it was.
        self.wait_for(&format!("ok for {name}"), |v| {
            v["event"] == "ok" && v["cmd"] == json!(name)
        })
        .await;
        self.cursor = cursor;
    }
}
