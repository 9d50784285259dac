//! `continuum bench sfu`: the SFU worker forwarding real SRTP between many
//! str0m-based synthetic peers (Opus audio + 3-layer VP8 simulcast at real
//! packet sizes and rates), every datagram through UDP sockets on loopback.
//!
//! Peers and worker share one thread, so the worker's cost is measured as
//! the time spent inside its calls (and its socket calls), not wall time:
//! "per core" figures are packets per second of worker time. Forwarding
//! delay is measured end to end (publisher write → subscriber read, payload
//! timestamps), so it includes the other peers' work in the same round: an
//! upper bound on the SFU's share. Memory is the heap the worker frees when
//! dropped, divided by participants.

use crate::alloc::live_bytes;
use anyhow::Context as _;
use clap::Args;
use continuum_sfu::sim::{MediaSpec, SimNet};
use continuum_sfu::{Worker, WorkerConfig};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct SfuArgs {
    /// 1:1 visits (two participants, each publishing camera + microphone).
    #[arg(long, default_value_t = 20)]
    pub visits: usize,
    /// Subscribers of one publisher in the fan-out run (a large group / webinar).
    #[arg(long, default_value_t = 40)]
    pub fanout: usize,
    /// Datagrams the worker takes before it is driven and its output sent
    /// (the production loop's batch is 32): larger batches trade delay for CPU.
    #[arg(long, default_value_t = continuum_sfu::sim::RECV_BATCH)]
    pub batch: usize,
    /// Initial bandwidth estimate per subscriber, kbit/s (default as in
    /// production; a high value pins subscribers to the top layer they ask for).
    #[arg(long)]
    pub initial_bwe_kbps: Option<u64>,
    /// Seconds of media per run (after a 3 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Write the results as JSON here too (feeds `continuum plan --capacity`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct RunResult {
    scenario: String,
    participants: usize,
    seconds: f64,
    /// RTP packets the SFU sent subscribers (forwarded + retransmitted/padding).
    egress_rtp_packets: u64,
    egress_rtp_packets_per_sec: f64,
    /// Worker time (its calls and socket IO) as a share of one core.
    worker_core_share: f64,
    /// Egress RTP packets per second of worker time: the per-core capacity.
    egress_rtp_packets_per_core_sec: f64,
    ingress_packets_per_sec: f64,
    /// Participant services (time + poll) per second, and per egress packet.
    services_per_sec: f64,
    egress_per_service: f64,
    timer_services_per_sec: f64,
    /// Timer services per second by str0m's reason.
    timer_services_by_reason: std::collections::BTreeMap<&'static str, f64>,
    /// Of the egress: retransmissions and BWE padding.
    rtx_and_padding_per_sec: f64,
    /// Subscribers' loss: 1 − received / expected by sequence ranges.
    loss: f64,
    /// SFU forwarding delay: a media datagram's receive to the moment all
    /// output of its receive batch was sent (upper bound per packet).
    forward_p50_ms: f64,
    forward_p99_ms: f64,
    /// Publisher write → subscriber read, including the other peers' work in
    /// the same bench round: an upper bound of what a receiver sees.
    end_to_end_p50_ms: f64,
    end_to_end_p99_ms: f64,
    worker_heap_bytes_per_participant: u64,
}

pub fn run(args: SfuArgs) -> anyhow::Result<()> {
    println!(
        "SFU benchmark: str0m peers over UDP loopback, {} s per run (+3 s warm-up)",
        args.seconds
    );
    let mut results = Vec::new();
    let join_visits = |net: &mut SimNet, now: Instant| -> Result<(), String> {
        for v in 0..args.visits {
            for _ in 0..2 {
                net.join(
                    &format!("t/visit-{v}"),
                    MediaSpec::camera_and_microphone(),
                    now,
                )?;
            }
        }
        Ok(())
    };
    let visits = scenario(
        &format!("{} 1:1 visits (A+V simulcast each way)", args.visits),
        &args,
        false,
        join_visits,
    )?;
    // The same visits with each side shown small (a grid, a phone in
    // portrait): subscribers ask for the lowest layer, and dynacast pauses
    // the publishers' upper layers.
    let thumbnails = scenario(
        &format!("{} 1:1 visits, thumbnails (dynacast)", args.visits),
        &args,
        true,
        join_visits,
    )?;
    let fanout = scenario(
        &format!("1 publisher → {} subscribers", args.fanout),
        &args,
        false,
        |net, now| {
            net.join("t/webinar", MediaSpec::camera_and_microphone(), now)?;
            for _ in 0..args.fanout {
                net.join("t/webinar", MediaSpec::nothing(), now)?;
            }
            Ok(())
        },
    )?;
    let visits_per_core = args.visits as f64 / visits.worker_core_share.max(1e-9);
    let thumbnail_visits_per_core = args.visits as f64 / thumbnails.worker_core_share.max(1e-9);
    results.push(visits);
    results.push(fanout);
    results.push(thumbnails);

    println!();
    println!(
        "{:<40} {:>9} {:>7} {:>13} {:>6} {:>15} {:>15} {:>10}",
        "scenario",
        "egress/s",
        "core",
        "egress/core-s",
        "loss",
        "fwd p50/p99 ms",
        "e2e p50/p99 ms",
        "heap/part"
    );
    for r in &results {
        println!(
            "{:<40} {:>9.0} {:>6.1}% {:>13.0} {:>5.2}% {:>7.2}/{:<7.2} {:>7.2}/{:<7.2} {:>6.0} KiB",
            r.scenario,
            r.egress_rtp_packets_per_sec,
            r.worker_core_share * 100.0,
            r.egress_rtp_packets_per_core_sec,
            r.loss * 100.0,
            r.forward_p50_ms,
            r.forward_p99_ms,
            r.end_to_end_p50_ms,
            r.end_to_end_p99_ms,
            r.worker_heap_bytes_per_participant as f64 / 1024.0,
        );
    }
    println!(
        "1:1 visits one core holds (worker share {:.1}% for {} visits, linear): ≈ {:.0}",
        results[0].worker_core_share * 100.0,
        args.visits,
        visits_per_core
    );
    println!(
        "                  … shown as thumbnails (worker share {:.1}%): ≈ {:.0}",
        results[2].worker_core_share * 100.0,
        thumbnail_visits_per_core
    );
    println!(
        "timer wake-ups per participant per second, by str0m's reason (services per egress packet):"
    );
    for r in &results {
        let per_participant = |v: f64| v / r.participants.max(1) as f64;
        let reasons: Vec<String> = r
            .timer_services_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", per_participant(*v)))
            .collect();
        println!(
            "  {:<40} {} ({:.2})",
            r.scenario,
            reasons.join(", "),
            r.services_per_sec / r.egress_rtp_packets_per_sec.max(1.0)
        );
    }
    let report = serde_json::json!({
        "runs": results,
        "visits_per_core_estimate": visits_per_core,
        "thumbnail_visits_per_core_estimate": thumbnail_visits_per_core,
        "method": "in-process str0m peers, UDP loopback, worker time measured per call",
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("results written to {}", out.display());
    }
    Ok(())
}

/// Runs the simulation in real time for `seconds`, unmeasured, ticking the bar.
fn step_for(net: &mut SimNet, bar: &ProgressBar, last_tick: &mut Instant, seconds: u64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        net.step(Instant::now());
        if last_tick.elapsed() >= Duration::from_secs(1) {
            *last_tick = Instant::now();
            bar.inc(1);
        }
    }
}

fn scenario(
    name: &str,
    args: &SfuArgs,
    thumbnails: bool,
    setup: impl FnOnce(&mut SimNet, Instant) -> Result<(), String>,
) -> anyhow::Result<RunResult> {
    let sfu: SocketAddr = "10.255.0.1:7401".parse()?;
    let (seconds, batch) = (args.seconds, args.batch);
    let mut cfg = WorkerConfig::new(sfu);
    cfg.max_participants_per_room = 1_000;
    if let Some(k) = args.initial_bwe_kbps {
        cfg.initial_bwe_bps = k * 1000;
    }
    let heap_before = live_bytes();
    let mut net = SimNet::new(Worker::new(cfg), sfu)
        .with_loopback()
        .context("binding loopback UDP sockets")?;
    net.recv_batch = batch;
    setup(&mut net, Instant::now()).map_err(|e| anyhow::anyhow!("joining: {e}"))?;
    let participants = net.peers.len();

    // Thumbnails: 5 s more warm-up, for dynacast's hold (3 s) to pass.
    let extra_warmup = if thumbnails { 5 } else { 0 };
    let bar = ProgressBar::new(seconds + 3 + extra_warmup);
    bar.set_style(ProgressStyle::with_template(
        "{msg:42} [{bar:30}] {pos}/{len} s",
    )?);
    bar.set_message(name.to_owned());
    // Warm-up: ICE, DTLS, first keyframes, layer choice.
    let mut last_tick = Instant::now();
    step_for(&mut net, &bar, &mut last_tick, 3);
    let connected = net.peers.iter().filter(|p| p.connected).count();
    anyhow::ensure!(
        connected == participants,
        "only {connected} of {participants} peers connected during the warm-up"
    );
    if thumbnails {
        for i in 0..participants {
            if let Some(id) = net.participant(i) {
                net.worker
                    .set_max_layer(id, None, 0)
                    .map_err(|e| anyhow::anyhow!("thumbnail request: {e}"))?;
            }
        }
        step_for(&mut net, &bar, &mut last_tick, extra_warmup);
    }
    // Measure from here.
    for p in &mut net.peers {
        p.delays_us.clear();
    }
    net.sfu_delays_us.clear();
    let rx_before: Vec<(u64, u64)> = net
        .peers
        .iter()
        .map(|p| p.received_and_expected())
        .collect();
    let stats_before = net.worker.stats;
    net.worker_time = Duration::ZERO;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        net.step(Instant::now());
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            bar.inc(1);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let s = net.worker.stats;
    let egress = (s.packets_forwarded - stats_before.packets_forwarded)
        + (s.rtx_sent - stats_before.rtx_sent);
    let ingress = s.datagrams_in - stats_before.datagrams_in;
    let worker_secs = net.worker_time.as_secs_f64();
    let (mut got, mut expected) = (0u64, 0u64);
    for (p, (g0, e0)) in net.peers.iter().zip(rx_before) {
        let (g, e) = p.received_and_expected();
        got += g - g0;
        expected += e - e0;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for p in &net.peers {
        for d in &p.delays_us {
            h.record(*d as u64)?;
        }
    }
    let mut fwd = Histogram::<u64>::new(3)?;
    for d in &net.sfu_delays_us {
        fwd.record(*d as u64)?;
    }
    // The worker's heap: what dropping it gives back.
    let heap_with_all = live_bytes();
    let SimNet { worker, peers, .. } = net;
    drop(worker);
    let worker_heap = heap_with_all.saturating_sub(live_bytes());
    drop(peers);
    let _ = heap_before;
    Ok(RunResult {
        scenario: name.to_owned(),
        participants,
        seconds: wall,
        egress_rtp_packets: egress,
        egress_rtp_packets_per_sec: egress as f64 / wall,
        worker_core_share: worker_secs / wall,
        egress_rtp_packets_per_core_sec: egress as f64 / worker_secs.max(1e-9),
        ingress_packets_per_sec: ingress as f64 / wall,
        services_per_sec: (s.services - stats_before.services) as f64 / wall,
        timer_services_per_sec: (s.timer_services - stats_before.timer_services) as f64 / wall,
        timer_services_by_reason: continuum_sfu::TIMER_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = s.timer_reasons[i] - stats_before.timer_reasons[i];
                (*r, n as f64 / wall)
            })
            .filter(|(_, v)| *v > 0.0)
            .collect(),
        egress_per_service: egress as f64 / (s.services - stats_before.services).max(1) as f64,
        rtx_and_padding_per_sec: (s.rtx_sent - stats_before.rtx_sent) as f64 / wall,
        loss: if expected == 0 {
            0.0
        } else {
            1.0 - got as f64 / expected as f64
        },
        forward_p50_ms: fwd.value_at_quantile(0.5) as f64 / 1000.0,
        forward_p99_ms: fwd.value_at_quantile(0.99) as f64 / 1000.0,
        end_to_end_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        end_to_end_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        worker_heap_bytes_per_participant: (worker_heap / participants.max(1)) as u64,
    })
}
