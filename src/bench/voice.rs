//! `continuum bench voice`: the SIP gateway's signalling capacity, with sipp
//! (Debian `sip-tester`) as the load. Each run places `--calls` calls at an
//! offered `--rate` (INVITE, 200, ACK, BYE, 200; no hold), first against
//! sipp's own UAS (the peer: how fast the load and the loopback are), then
//! against a real `continuum serve` child routing every call by trunk and
//! dispatch rule onto a conversation (call record, timeline events, audit).
//! Then `--hold` calls are held up at once for the memory per call.
//!
//! Then the media: `--bridged` phone calls bridged into SFU rooms at real
//! time on one thread (see `bridged.rs`): late frames, tick time, CPU and
//! memory per call, the gateway's share apart from the stand-in far ends and
//! the SFU; and a ramp to the most calls with under 1% late frames.
//! `--out FILE` writes the results as JSON for `continuum plan --capacity`
//! (`voice_calls_per_core_estimate`).

use super::bridged::{self, BridgedResult};
use super::server::ServerProcess;
use anyhow::{Context as _, bail};
use clap::Args;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct VoiceArgs {
    /// Calls per run.
    #[arg(long, default_value_t = 3_000)]
    pub calls: u64,
    /// Offered call rate (calls/s); sipp keeps at most `--limit` calls open.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 400)]
    pub limit: u64,
    /// Calls held up together for the memory figure.
    #[arg(long, default_value_t = 300)]
    pub hold: u64,
    /// Phone calls bridged into rooms for the media run (0: none).
    #[arg(long, default_value_t = 100)]
    pub bridged: usize,
    /// Seconds of media in the `--bridged` run (after connecting; ramp
    /// steps run at most 5 s each).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The ramp for the most bridged calls under 1% late frames: this many
    /// more calls per step (0: no ramp) ...
    #[arg(long, default_value_t = 50)]
    pub ramp_step: usize,
    /// ... up to this many.
    #[arg(long, default_value_t = 600)]
    pub ramp_max: usize,
    /// Only the bridged media runs (no sipp, no server).
    #[arg(long)]
    pub bridged_only: bool,
    /// Write the results as JSON here too (feeds `continuum plan --capacity`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A UAC from a known patient's number that hangs up after `pause_ms`.
fn scenario(pause_ms: u64) -> String {
    let head = |method: &str, cseq: &str, tag: bool| {
        format!(
            "{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\nFrom: <sip:+14155550123@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\nTo: <sip:[service]@[remote_ip]:[remote_port]>{}\nCall-ID: [call_id]\nCSeq: {cseq}\nMax-Forwards: 70\nContact: <sip:+14155550123@[local_ip]:[local_port]>\n",
            if tag { "[peer_tag_param]" } else { "" }
        )
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="continuum bench">
<send retrans="500"><![CDATA[
{invite}Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
]]></send>
<recv response="100" optional="true"/>
<recv response="180" optional="true"/>
<recv response="200" rtd="true"/>
<send><![CDATA[
{ack}Content-Length: 0
]]></send>
<pause milliseconds="{pause_ms}"/>
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

struct Run {
    successful: u64,
    failed: u64,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.successful as f64 / self.elapsed.as_secs_f64()
    }
}

/// The last number on sipp's summary line `name` (its cumulative column).
pub(super) fn summary(out: &str, name: &str) -> u64 {
    out.lines()
        .rev()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sipp_uac(
    dir: &Path,
    target: &str,
    calls: u64,
    rate: u64,
    limit: u64,
    pause_ms: u64,
) -> anyhow::Result<Run> {
    let file = dir.join(format!("uac-{pause_ms}.xml"));
    std::fs::write(&file, scenario(pause_ms))?;
    let started = Instant::now();
    let out = Command::new("sipp")
        .arg(target)
        .args([
            "-sf",
            file.to_str().unwrap_or_default(),
            "-s",
            "+14155550100",
            "-i",
            "127.0.0.1",
        ])
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
        .args([
            "-nostdin",
            "-timeout",
            "120s",
            "-max_recv_loops",
            "10000",
            "-max_sched_loops",
            "10000",
        ])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .context("running sipp (apt-get install sip-tester)")?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Run {
        successful: summary(&text, "Successful call"),
        failed: summary(&text, "Failed call"),
        elapsed,
    })
}

pub fn run(args: VoiceArgs) -> anyhow::Result<()> {
    let mut report = if args.bridged_only {
        serde_json::json!({"bench": "voice"})
    } else {
        signalling(&args)?
    };
    if args.bridged > 0 {
        bridged_runs(&args, &mut report)?;
    }
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("results written to {}", out.display());
    }
    Ok(())
}

/// The bridged media run at `--bridged` calls, then the ramp; adds their
/// figures to `report`.
fn bridged_runs(args: &VoiceArgs, report: &mut serde_json::Value) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bridged calls: phone (G.711 RTP) ↔ gateway (MediaSession + RoomLeg) ↔ in-process SFU ↔ \
         clinician stand-in (RoomLeg, Opus tone), one thread, real 20 ms ticks; {cores} cores, load {}",
        bridged::load_average()
    );
    let main = bridged::run_bridged(args.bridged, args.seconds)?;
    bridged::print_result("run:  ", &main);
    let mut ramp: Vec<BridgedResult> = Vec::new();
    let mut max_under = None;
    if args.ramp_step > 0 {
        let secs = args.seconds.min(5);
        let mut n = args.ramp_step;
        while n <= args.ramp_max {
            let r = if n == main.calls && secs == main.seconds.round() as u64 {
                main.clone()
            } else {
                bridged::run_bridged(n, secs)?
            };
            bridged::print_result("ramp: ", &r);
            let ok = r.late_pct < 1.0;
            ramp.push(r);
            if !ok {
                break;
            }
            max_under = Some(n);
            n += args.ramp_step;
        }
        match max_under {
            Some(n)
                if n + args.ramp_step > args.ramp_max
                    && ramp.last().is_some_and(|r| r.late_pct < 1.0) =>
            {
                println!("most bridged calls under 1% late: ≥ {n} (the ramp's cap)")
            }
            Some(n) => println!("most bridged calls under 1% late: {n}"),
            None => println!(
                "most bridged calls under 1% late: fewer than {}",
                args.ramp_step
            ),
        }
    }
    // One core of the gateway, by its measured share (linear, as `bench sfu`'s
    // visits per core): what `continuum plan` takes as voice_calls_per_core.
    let per_core = 100.0 / main.gateway_cpu_per_call_pct.max(1e-9);
    println!(
        "gateway CPU per bridged call {:.3}% of a core (process total {:.3}%): ≈ {per_core:.0} bridged calls per core of gateway time; \
         heap per call {:.0} KiB (gateway {:.0} KiB)",
        main.gateway_cpu_per_call_pct,
        main.cpu_per_call_pct,
        main.heap_per_call_bytes as f64 / 1024.0,
        main.gateway_heap_per_call_bytes as f64 / 1024.0,
    );
    let obj = report
        .as_object_mut()
        .context("the report is a JSON object")?;
    obj.insert("bench".into(), "voice".into());
    obj.insert("cores".into(), cores.into());
    obj.insert("load_average".into(), bridged::load_average().into());
    obj.insert(
        "bridged_calls_max_under_1pct_late".into(),
        serde_json::to_value(max_under)?,
    );
    obj.insert(
        "gateway_cpu_per_bridged_call_pct".into(),
        main.gateway_cpu_per_call_pct.into(),
    );
    obj.insert(
        "cpu_per_bridged_call_pct".into(),
        main.cpu_per_call_pct.into(),
    );
    obj.insert(
        "heap_per_bridged_call_bytes".into(),
        main.heap_per_call_bytes.into(),
    );
    obj.insert(
        "gateway_heap_per_bridged_call_bytes".into(),
        main.gateway_heap_per_call_bytes.into(),
    );
    obj.insert("voice_calls_per_core_estimate".into(), per_core.into());
    obj.insert("bridged".into(), serde_json::to_value(&main)?);
    obj.insert("bridged_ramp".into(), serde_json::to_value(&ramp)?);
    obj.insert(
        "method".into(),
        "bridged: in-process SFU worker and str0m legs, in-memory datagrams, one thread, real 20 ms ticks; \
         gateway time measured around its calls; voice_calls_per_core_estimate = 100 / gateway_cpu_per_bridged_call_pct"
            .into(),
    );
    Ok(())
}

/// The server's live heap as its counting allocator sees it
/// (`continuum_process_heap_bytes` on /metrics), and SQLite's own memory
/// (`continuum_store_sqlite_memory_bytes`). SQLite allocates with libc's
/// malloc, not through the Rust global allocator, so its page caches (which
/// grow with the database up to their bound) are not part of the first: the
/// two are reported side by side, never subtracted.
async fn heap_gauges(base: &str) -> (u64, u64) {
    let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
        return (0, 0);
    };
    let text = r.text().await.unwrap_or_default();
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            .max(0.0) as u64
    };
    (
        gauge("continuum_process_heap_bytes"),
        gauge("continuum_store_sqlite_memory_bytes"),
    )
}

/// The SIP signalling runs (sipp against its own UAS and against a server).
fn signalling(args: &VoiceArgs) -> anyhow::Result<serde_json::Value> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp is not installed: apt-get install sip-tester (or `--bridged-only`)");
    }
    let dir = tempfile::tempdir()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "continuum bench voice — {cores} cores, {} calls at {}/s offered (at most {} open)",
        args.calls, args.rate, args.limit
    );

    // The peer: sipp's UAS answering sipp's UAC on the same loopback.
    let uas_port = free_port()?;
    let mut uas = Command::new("sipp")
        .args([
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-nostdin",
        ])
        .args(["-max_recv_loops", "10000"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sipp's UAS")?;
    std::thread::sleep(Duration::from_millis(500));
    let peer = sipp_uac(
        dir.path(),
        &format!("127.0.0.1:{uas_port}"),
        args.calls,
        args.rate,
        args.limit,
        0,
    )?;
    let _ = uas.kill();
    let _ = uas.wait();
    println!(
        "sipp UAS (peer):   {:>7.0} calls/s  ({} ok, {} failed)",
        peer.rate(),
        peer.successful,
        peer.failed
    );

    // Continuum: a real server, a trunk and a dispatch rule onto a conversation.
    let sip_port = free_port()?;
    let rtp = free_port()? & !1;
    let data = dir.path().join("server");
    let server = ServerProcess::start_with(
        &data,
        &[
            ("CONTINUUM_SIP__UDP_LISTEN", format!("127.0.0.1:{sip_port}")),
            (
                "CONTINUUM_SIP__RTP_PORT_MIN",
                rtp.saturating_sub(4000).max(10_000).to_string(),
            ),
            (
                "CONTINUUM_SIP__RTP_PORT_MAX",
                rtp.saturating_sub(4000)
                    .max(10_000)
                    .saturating_add(3_999)
                    .to_string(),
            ),
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
    rt.block_on(async {
        let client = reqwest::Client::new();
        let post = |path: &str, body: serde_json::Value| {
            client.post(format!("{}{path}", server.base)).bearer_auth(&key).json(&body).send()
        };
        for (path, body) in [
            ("/v1/sip/trunks", serde_json::json!({"name": "bench", "direction": "inbound", "numbers": ["+14155550100"], "allowed_sources": ["127.0.0.1/32"]})),
            ("/v1/sip/dispatch-rules", serde_json::json!({"number": "+14155550100", "action": {"type": "conversation"}})),
            ("/v1/contacts", serde_json::json!({"display_name": "Bench Patient", "phone": "+14155550123"})),
        ] {
            let r = post(path, body).await?;
            if !r.status().is_success() {
                bail!("setting up {path}: {}", r.text().await.unwrap_or_default());
            }
        }
        anyhow::Ok(())
    })?;
    // Warm-up: the first call creates the conversation.
    let target = format!("127.0.0.1:{sip_port}");
    sipp_uac(dir.path(), &target, 1, 1, 1, 0)?;
    let gauges = |rt: &tokio::runtime::Runtime| rt.block_on(heap_gauges(&server.base));
    let heap = |rt: &tokio::runtime::Runtime| gauges(rt).0;

    // Memory per held call, on a fresh server (after a burst, RSS keeps the
    // allocator's high-water mark): `--hold` calls up at once.
    let (idle_rss, (idle_heap, idle_sqlite)) = (server.rss_bytes(), gauges(&rt));
    let hold_ms = 4_000 + args.hold * 1000 / 100;
    let holder = {
        let (d, t, h) = (dir.path().to_owned(), target.clone(), args.hold);
        std::thread::spawn(move || sipp_uac(&d, &t, h, 100, h, hold_ms))
    };
    std::thread::sleep(Duration::from_millis(args.hold * 1000 / 100 + 2_000));
    let (peak_rss, peak_heap) = (server.rss_bytes(), heap(&rt));
    let held = holder
        .join()
        .map_err(|_| anyhow::anyhow!("the holding run panicked"))??;
    let per_call = |peak: u64, idle: u64| peak.saturating_sub(idle) / args.hold.max(1);
    println!(
        "held {} calls ({} ok, {} failed): RSS {:.1} → {:.1} MiB, {:.1} KiB per call; live heap {:.1} → {:.1} MiB, {:.1} KiB per call",
        args.hold,
        held.successful,
        held.failed,
        idle_rss as f64 / 1048576.0,
        peak_rss as f64 / 1048576.0,
        per_call(peak_rss, idle_rss) as f64 / 1024.0,
        idle_heap as f64 / 1048576.0,
        peak_heap as f64 / 1048576.0,
        per_call(peak_heap, idle_heap) as f64 / 1024.0,
    );

    let cpu_before = server.cpu_seconds();
    let ours = sipp_uac(dir.path(), &target, args.calls, args.rate, args.limit, 0)?;
    let cpu = server.cpu_seconds() - cpu_before;
    println!(
        "continuum gateway: {:>7.0} calls/s  ({} ok, {} failed); {:.2} ms CPU per call; ratio to the peer {:.2}",
        ours.rate(),
        ours.successful,
        ours.failed,
        cpu * 1000.0 / ours.successful.max(1) as f64,
        ours.rate() / peer.rate().max(1.0),
    );
    // Every call has ended: once the transactions' linger timers (Timer J,
    // 32 s on UDP) have run, the live heap should be back near idle (a leak
    // would show as bytes per call here). The gauge ticks each second.
    let settle_from = Instant::now();
    let (mut after_heap, mut after_sqlite) = gauges(&rt);
    while after_heap > idle_heap + (1 << 20) && settle_from.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_secs(2));
        (after_heap, after_sqlite) = gauges(&rt);
    }
    println!(
        "after {} calls and {:.0} s: live heap {:.1} MiB ({:+.2} KiB per call since idle), SQLite (outside it) {:.1} → {:.1} MiB, RSS {:.1} MiB",
        ours.successful + held.successful,
        settle_from.elapsed().as_secs_f64(),
        after_heap as f64 / 1048576.0,
        (after_heap as f64 - idle_heap as f64)
            / 1024.0
            / (ours.successful + held.successful).max(1) as f64,
        idle_sqlite as f64 / 1048576.0,
        after_sqlite as f64 / 1048576.0,
        server.rss_bytes() as f64 / 1048576.0,
    );
    let report = serde_json::json!({
        "bench": "voice", "cores": cores,
        "peer_sipp_uas_calls_per_sec": peer.rate(), "calls_per_sec": ours.rate(),
        "failed": ours.failed, "cpu_ms_per_call": cpu * 1000.0 / ours.successful.max(1) as f64,
        "rss_per_held_call_bytes": per_call(peak_rss, idle_rss),
        "heap_per_held_call_bytes": per_call(peak_heap, idle_heap),
        "heap_growth_after_calls_bytes": after_heap.saturating_sub(idle_heap),
        "sqlite_growth_after_calls_bytes": after_sqlite.saturating_sub(idle_sqlite),
    });
    server.stop()?;
    Ok(report)
}
