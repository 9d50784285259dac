//! `continuum bench ivr`: how many calls the IVR handles at once on this
//! machine, with sipp (Debian `sip-tester`) as the callers. Each call runs
//! the example flow (examples/ivr/healthcare.yaml, business hours taken
//! out): the emergency notice and the menu are spoken (espeak-ng, cached),
//! the caller keys 1 with RFC 4733 events from sipp's own capture, hears
//! "please hold" and waits in the nurse queue (hold messages) until it
//! hangs up. A call counts as handled when sipp saw it through and the
//! server queued it with its triage; the media clock's lateness says
//! whether the prompts played smoothly under the load.

use super::server::ServerProcess;
use super::voice::{free_port, summary};
use anyhow::{Context as _, bail};
use clap::Args;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct IvrArgs {
    /// Calls placed in all.
    #[arg(long, default_value_t = 400)]
    calls: u64,
    /// Calls up at once (sipp's limit).
    #[arg(long, default_value_t = 250)]
    concurrent: u64,
    /// New calls per second.
    #[arg(long, default_value_t = 25)]
    rate: u64,
    /// Seconds a caller stays in the queue after keying 1.
    #[arg(long, default_value_t = 15)]
    hold: u64,
}

const FLOW: &str = include_str!("../../examples/ivr/healthcare.yaml");

/// The example flow open around the clock (a benchmark runs at any hour).
fn flow_always_open() -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in FLOW.lines() {
        if line.starts_with("hours:") {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with(' ') || line.is_empty()) {
            skipping = !line.is_empty();
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A caller from a distinct number per call: INVITE (PCMA, telephone
/// events), listens to the notice, keys 1 during the menu, holds, hangs up.
fn scenario(hold_ms: u64) -> String {
    let head = |method: &str, cseq: &str, tag: bool| {
        format!(
            "{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\nFrom: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\nTo: <sip:[service]@[remote_ip]:[remote_port]>{}\nCall-ID: [call_id]\nCSeq: {cseq}\nMax-Forwards: 70\nContact: <sip:caller@[local_ip]:[local_port]>\n",
            if tag { "[peer_tag_param]" } else { "" }
        )
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="continuum ivr bench">
<send retrans="500"><![CDATA[
{invite}Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
]]></send>
<recv response="100" optional="true"/>
<recv response="180" optional="true"/>
<recv response="200" rtd="true"/>
<send><![CDATA[
{ack}Content-Length: 0
]]></send>
<pause milliseconds="9000"/>
<nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_1.pcap"/></action></nop>
<pause milliseconds="{hold_ms}"/>
<send retrans="500"><![CDATA[
{bye}Content-Length: 0
]]></send>
<recv response="200" crlf="true"/>
</scenario>
"#,
        invite = head("INVITE", "1 INVITE", false),
        ack = head("ACK", "1 ACK", true),
        bye = head("BYE", "2 BYE", true),
    )
}

/// A sample's value in Prometheus text (`name{labels} value`), summed over
/// the lines that start with `series`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    match client.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub fn run(a: IvrArgs) -> anyhow::Result<()> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp is not installed: apt-get install sip-tester");
    }
    if Command::new("espeak-ng").arg("--version").output().is_err() {
        bail!("espeak-ng is not installed (the IVR speaks with it): apt-get install espeak-ng");
    }
    let dir = tempfile::tempdir()?;
    let sip_port = free_port()?;
    let data = dir.path().join("server");
    let server = ServerProcess::start_with(
        &data,
        &[
            ("CONTINUUM_SIP__UDP_LISTEN", format!("127.0.0.1:{sip_port}")),
            ("CONTINUUM_SIP__RTP_PORT_MIN", "30000".into()),
            ("CONTINUUM_SIP__RTP_PORT_MAX", "39999".into()),
            ("CONTINUUM_SIP__TRUNK_KEEPALIVE_SECS", "0".into()),
            ("CONTINUUM_IVR__HOLD_EVERY_SECS", "10".into()),
            (
                "CONTINUUM_SECURITY__REQUESTS_PER_SECOND_PER_API_KEY",
                "0".into(),
            ),
        ],
    )?;
    let key = server
        .api_key
        .clone()
        .context("the fresh server printed no dev API key")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    rt.block_on(async {
        let put = |path: &str, body: serde_json::Value| {
            client.put(format!("{}{path}", server.base)).bearer_auth(&key).json(&body).send()
        };
        for (path, body) in [
            ("/v1/queues/nurse", serde_json::json!({"skills": ["triage"]})),
            ("/v1/queues/front-desk", serde_json::json!({})),
        ] {
            let r = put(path, body).await?;
            if !r.status().is_success() {
                bail!("setting up {path}: {}", r.text().await.unwrap_or_default());
            }
        }
        let r = client
            .put(format!("{}/v1/ivr/flows/front-door", server.base))
            .bearer_auth(&key)
            .body(flow_always_open())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("uploading the flow: {}", r.text().await.unwrap_or_default());
        }
        let post = |path: &str, body: serde_json::Value| {
            client.post(format!("{}{path}", server.base)).bearer_auth(&key).json(&body).send()
        };
        for (path, body) in [
            ("/v1/sip/trunks", serde_json::json!({"name": "bench", "direction": "inbound", "numbers": ["+14155550100"], "allowed_sources": ["127.0.0.1/32"]})),
            ("/v1/sip/dispatch-rules", serde_json::json!({"number": "+14155550100", "action": {"type": "ivr", "flow": "front-door"}})),
        ] {
            let r = post(path, body).await?;
            if !r.status().is_success() {
                bail!("setting up {path}: {}", r.text().await.unwrap_or_default());
            }
        }
        anyhow::Ok(())
    })?;
    // The prompts render in the background after the upload; one call
    // through the flow makes sure they are cached before the load.
    eprintln!("ivr: warming up (one call through the flow)…");
    sipp(dir.path(), sip_port, 1, 1, 1, a.hold * 1000)?;
    let before = rt.block_on(scrape(&client, &server.base));
    let cpu_before = server.cpu_seconds();
    eprintln!(
        "ivr: {} calls, {} at once, {}/s, each ~{} s (notice, menu, key 1, queue, hold)…",
        a.calls,
        a.concurrent,
        a.rate,
        9 + a.hold
    );
    // Peaks while sipp runs: calls in the IVR or queue, server RSS.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let sampler = {
        let (base, pid) = (server.base.clone(), server.pid());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let client = reqwest::Client::new();
            let (mut active, mut rss) = (0f64, 0u64);
            while stop_rx.recv_timeout(Duration::from_millis(500)).is_err() {
                let text = rt.block_on(scrape(&client, &base));
                active = active.max(metric(&text, "continuum_ivr_calls_active"));
                rss = rss.max(super::server::rss_of(pid));
            }
            (active, rss)
        })
    };
    let started = Instant::now();
    let text = sipp(
        dir.path(),
        sip_port,
        a.calls,
        a.rate,
        a.concurrent,
        a.hold * 1000,
    )?;
    let elapsed = started.elapsed();
    let _ = stop_tx.send(());
    let (peak_active, peak_rss) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let cpu = server.cpu_seconds() - cpu_before;
    let after = rt.block_on(scrape(&client, &server.base));
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    let ok = summary(&text, "Successful call");
    let failed = summary(&text, "Failed call");
    let queued = delta("continuum_routing_tasks_total{channel=\"voice\"}");
    let triaged = delta("continuum_ivr_triage_total");
    let errors = delta("continuum_ivr_errors_total");
    // The media clock: wake-ups later than a frame mean a stutter.
    let ticks = delta("continuum_sip_timer_lateness_seconds_count");
    let within = |le: &str| {
        delta(&format!(
            "continuum_sip_timer_lateness_seconds_bucket{{le=\"{le}\"}}"
        ))
    };
    let late_10ms = 1.0 - within("0.01") / ticks.max(1.0);
    let late_25ms = 1.0 - within("0.025") / ticks.max(1.0);
    println!(
        "ivr: {ok} calls handled ({failed} failed) in {:.0} s; {} reached the nurse queue with triage ({} triage results), {} IVR errors",
        elapsed.as_secs_f64(),
        queued,
        triaged,
        errors
    );
    println!(
        "ivr: peak {:.0} calls in the IVR or queue at once (goal ≥ 200); media clock late > 10 ms on {:.2}% of wake-ups, > 25 ms on {:.2}%",
        peak_active,
        late_10ms * 100.0,
        late_25ms * 100.0
    );
    println!(
        "ivr: server CPU {:.1} s ({:.0} ms per call, {:.0}% of one core while loaded); peak RSS {:.0} MiB",
        cpu,
        cpu * 1000.0 / ok.max(1) as f64,
        cpu / elapsed.as_secs_f64() * 100.0,
        peak_rss as f64 / 1048576.0
    );
    let report = serde_json::json!({
        "bench": "ivr", "calls": a.calls, "concurrent_limit": a.concurrent, "rate": a.rate,
        "handled": ok, "failed": failed, "queued": queued, "triaged": triaged, "ivr_errors": errors,
        "peak_active": peak_active, "late_10ms_share": late_10ms, "late_25ms_share": late_25ms,
        "cpu_seconds": cpu, "peak_rss_bytes": peak_rss, "elapsed_secs": elapsed.as_secs_f64(),
    });
    println!("{report}");
    server.stop()?;
    Ok(())
}

fn sipp(
    dir: &Path,
    port: u16,
    calls: u64,
    rate: u64,
    limit: u64,
    hold_ms: u64,
) -> anyhow::Result<String> {
    let file = dir.join("ivr-caller.xml");
    std::fs::write(&file, scenario(hold_ms))?;
    // A patient of their own per call (one open task per conversation).
    let numbers = dir.join("callers.csv");
    let mut csv = String::from("SEQUENTIAL\n");
    for i in 0..calls.max(1) {
        csv.push_str(&format!("+1415{:07}\n", 2_000_000 + i));
    }
    std::fs::write(&numbers, csv)?;
    let out = Command::new("sipp")
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-sf",
            file.to_str().unwrap_or_default(),
            "-s",
            "+14155550100",
            "-i",
            "127.0.0.1",
        ])
        .args(["-inf", numbers.to_str().unwrap_or_default()])
        .args([
            "-p",
            &free_port()?.to_string(),
            "-mp",
            &free_port()?.to_string(),
        ])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-l",
            &limit.to_string(),
        ])
        .args(["-nostdin", "-timeout", "600s", "-max_recv_loops", "10000"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .context("running sipp (apt-get install sip-tester)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
