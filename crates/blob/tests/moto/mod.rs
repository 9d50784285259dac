//! moto in server mode (an S3-compatible server from PyPI, installed into
//! `.venv-peers` by scripts/test) as a child process with a bucket ready.
//! Also used by the root package's end-to-end tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub const BUCKET: &str = "continuum-attachments";

pub struct Moto {
    _child: Child,
    pub addr: String,
}

/// Starts `moto_server` on a port of its choosing and waits for the line
/// where it says which (werkzeug's "Running on http://127.0.0.1:PORT").
pub async fn moto() -> Moto {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("tests/peers/requirements.txt").exists())
        .expect("the workspace root above the manifest directory")
        .to_path_buf();
    let bin = root.join(".venv-peers/bin/moto_server");
    assert!(
        bin.exists(),
        "{} missing: run scripts/test (it installs moto into .venv-peers)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Both pipes are drained for the server's whole life so it never blocks
    // on a full pipe; the lines go to the test output.
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for pipe in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("moto: {line}");
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            if let Some(at) = line.find("Running on http://") {
                let rest = &line[at + "Running on http://".len()..];
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_string();
            }
        }
        panic!("moto_server exited before listening");
    })
    .await
    .expect("moto_server did not start listening within 60 s");
    // The line is printed once the socket is bound; create the bucket
    // (object_store does not create buckets).
    let status = http(&addr, &format!("PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).await;
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "create bucket: {status}"
    );
    Moto {
        _child: child,
        addr,
    }
}

async fn http(addr: &str, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp.lines().next().unwrap_or_default().to_string()
}
