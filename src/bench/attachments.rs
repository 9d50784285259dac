//! `continuum bench attachments`: uploads over HTTP to a real `continuum
//! serve` (sniffed, metadata-stripped, hashed, sealed in chunks, written to
//! the local blob directory with fsync), at several sizes: throughput, and
//! the server's peak memory, which must not grow with the file.

use super::server::ServerProcess;
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct AttachmentsArgs {
    /// Upload sizes in MiB, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16u64, 256, 1024])]
    pub sizes_mib: Vec<u64>,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    size_mib: u64,
    upload_mb_per_sec: f64,
    download_mb_per_sec: f64,
    server_peak_rss_mib: f64,
    server_cpu_secs: f64,
}

/// A well-formed JPEG of `size` bytes (Exif, tables, then scan data),
/// produced while it is sent: the client holds one piece at a time.
fn body(size: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(continuum_blob::bench::jpeg_body(size))
}

/// VmHWM (peak resident memory) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

pub fn run(args: AttachmentsArgs) -> anyhow::Result<()> {
    if args.sizes_mib.is_empty() || args.sizes_mib.contains(&0) {
        bail!("--sizes-mib needs positive sizes, e.g. --sizes-mib 16,256,1024");
    }
    let largest = *args.sizes_mib.iter().max().unwrap_or(&1) << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    println!(
        "continuum bench attachments — {} cores; upload → sniff → strip → SHA-256 → seal (XChaCha20-Poly1305, 64 KiB chunks) → fsync'd file",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for &mib in &args.sizes_mib {
        // A fresh server per size: its peak memory is this upload's alone.
        let dir = tempfile::Builder::new()
            .prefix("continuum-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        let server = ServerProcess::start_with(
            dir.path(),
            &[(
                "CONTINUUM_ATTACHMENTS__MAX_BYTES",
                (largest + 1).to_string(),
            )],
        )?;
        let key = server.api_key.clone().context("no dev API key printed")?;
        let base = server.base.clone();
        let size = mib << 20;
        let row = rt.block_on(async {
            let post = |path: &str, body: Value| {
                client
                    .post(format!("{base}{path}"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
            };
            let c: Value = post(
                "/v1/contacts",
                json!({"display_name": "Bench", "phone": "+14155550100"}),
            )
            .await?
            .json()
            .await?;
            let conv: Value = post("/v1/conversations", json!({"contact_id": c["id"]}))
                .await?
                .json()
                .await?;
            let conv = conv["id"]
                .as_str()
                .context("no conversation id")?
                .to_owned();
            let cpu0 = server.cpu_seconds();
            let started = Instant::now();
            let r = client
                .post(format!("{base}/v1/conversations/{conv}/attachments"))
                .bearer_auth(&key)
                .header("content-length", size)
                .body(body(size))
                .send()
                .await?;
            let up = started.elapsed().as_secs_f64();
            if !r.status().is_success() {
                bail!(
                    "upload answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
            let a: Value = r.json().await?;
            let id = a["id"].as_str().context("no attachment id")?.to_owned();
            let started = Instant::now();
            let mut resp = client
                .get(format!("{base}/v1/attachments/{id}/content"))
                .bearer_auth(&key)
                .send()
                .await?;
            let mut got = 0u64;
            while let Some(chunk) = resp.chunk().await? {
                got += chunk.len() as u64;
            }
            let down = started.elapsed().as_secs_f64();
            // Stored = uploaded minus the stripped metadata.
            let stored = a["size"].as_u64().unwrap_or_default();
            if got != stored {
                bail!("downloaded {got} bytes of the {stored} stored");
            }
            anyhow::Ok(Row {
                size_mib: mib,
                upload_mb_per_sec: size as f64 / 1e6 / up,
                download_mb_per_sec: size as f64 / 1e6 / down,
                server_peak_rss_mib: peak_rss(server.pid()) as f64 / (1024.0 * 1024.0),
                server_cpu_secs: server.cpu_seconds() - cpu0,
            })
        })?;
        println!(
            "  {:>6} MiB: upload {:>6.0} MB/s, download {:>6.0} MB/s, server peak RSS {:>6.1} MiB, server CPU {:.2} s",
            row.size_mib,
            row.upload_mb_per_sec,
            row.download_mb_per_sec,
            row.server_peak_rss_mib,
            row.server_cpu_secs
        );
        rows.push(row);
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
