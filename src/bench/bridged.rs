//! `continuum bench voice --bridged N`: the gateway's media work for N phone
//! calls bridged into rooms, both directions, at real time on one thread (the
//! gateway's media clock is one thread).
//!
//! Per call: a synthetic phone (a second [`MediaSession`], sending G.711 RTP
//! of a tone), our phone-side [`MediaSession`], our [`RoomLeg`] joined to a
//! room of an in-process SFU [`Worker`], and a stand-in clinician (another
//! `RoomLeg`, publishing a real Opus tone; it does not decode what it hears).
//! Every 20 ms tick, per call, as the gateway's tick does: the phone's RTP in,
//! `pull_decoded` → `push_phone`, `pull_room` → `push_pcm`; then datagrams
//! move in memory between the legs and the worker (no sockets) and the
//! legs' str0m timers run.
//!
//! Each part's time is measured around its calls, so the gateway's share
//! (phone `MediaSession` + its `RoomLeg`, including the leg's handling of the
//! SFU's datagrams) is separated from the stand-ins (phone, clinician) and
//! the SFU worker. A call-frame is late when its `push_pcm` finished after
//! its tick's deadline (or its tick was skipped: the thread fell behind).

use crate::alloc::live_bytes;
use anyhow::Context as _;
use continuum_rtp::{MediaSession, Output, SessionConfig};
use continuum_sfu::{JoinRequest, Mode, ParticipantId, SfuOutput, Worker, WorkerConfig};
use continuum_voice::room::{FRAME, RoomLeg};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(20);
/// Rounds of datagram exchange per tick at most (signalling bursts).
const EXCHANGE_ROUNDS: usize = 20;

fn sfu_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 3478))
}

/// `net`.x.y:port for call `i`: one address per endpoint, as on a network.
fn addr(net: u8, i: usize, port: u16) -> SocketAddr {
    let ip = Ipv4Addr::new(10, net, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::from((ip, port))
}

/// One second (50 frames) of a tone at an integer frequency: loops seamlessly.
fn tone_table(freq: f64, amp: f64) -> Vec<[i16; FRAME]> {
    (0..50)
        .map(|f| {
            let mut frame = [0i16; FRAME];
            for (i, s) in frame.iter_mut().enumerate() {
                let n = (f * FRAME + i) as f64;
                *s = (amp * (2.0 * std::f64::consts::PI * freq * n / 8_000.0).sin()) as i16;
            }
            frame
        })
        .collect()
}

/// Ours: what the gateway holds per bridged call.
struct Gateway {
    media: MediaSession,
    leg: RoomLeg,
    leg_addr: SocketAddr,
    /// The synthetic phone's RTP address (where our RTP goes).
    phone_addr: SocketAddr,
}

/// Not ours: the far ends of the call.
struct StandIns {
    phone: MediaSession,
    clinician: RoomLeg,
    clinician_addr: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Gateway,
    Clinician,
}

#[derive(Default, Clone, Copy)]
struct Times {
    gateway: Duration,
    clinician: Duration,
    phone: Duration,
    sfu: Duration,
}

struct Bridge {
    worker: Worker,
    gateways: Vec<Gateway>,
    stand_ins: Vec<StandIns>,
    by_addr: HashMap<SocketAddr, (usize, Side)>,
    by_id: HashMap<ParticipantId, (usize, Side)>,
    /// Datagrams for the SFU: (source, bytes).
    to_sfu: Vec<(SocketAddr, Vec<u8>)>,
    phone_tone: Vec<[i16; FRAME]>,
    clinician_tone: Vec<[i16; FRAME]>,
    frame_no: usize,
    times: Times,
    /// Datagrams our media session sent the phone (dropped: the phone's
    /// receiving is not our cost).
    to_phone: u64,
}

fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    *acc += t.elapsed();
    r
}

impl Bridge {
    fn new(calls: usize, now: Instant) -> anyhow::Result<Bridge> {
        let mut cfg = WorkerConfig::new(sfu_addr());
        cfg.max_participants_per_room = 4;
        let mut b = Bridge {
            worker: Worker::new(cfg),
            gateways: Vec::with_capacity(calls),
            stand_ins: Vec::with_capacity(calls),
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            to_sfu: Vec::new(),
            phone_tone: tone_table(440.0, 6_000.0),
            clinician_tone: tone_table(1_000.0, 6_000.0),
            frame_no: 0,
            times: Times::default(),
            to_phone: 0,
        };
        for i in 0..calls {
            let room = format!("visit-{i}");
            let mut join = |identity: &str, offer: String| {
                b.worker
                    .join(
                        now,
                        JoinRequest {
                            room: room.clone(),
                            identity: identity.into(),
                            offer_sdp: offer,
                            mode: Mode::Full,
                            max_participants: None,
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("joining {room}: {e}"))
            };
            let leg_addr = addr(1, i, 4000);
            let (mut leg, offer) = RoomLeg::new(now, leg_addr, format!("phone-{i}"))?;
            let (leg_id, answer) = join("phone", offer)?;
            leg.accept_answer(&answer)?;
            let clinician_addr = addr(2, i, 4000);
            let (mut clinician, offer) =
                RoomLeg::new(now, clinician_addr, format!("clinician-{i}"))?;
            let (clinician_id, answer) = join("clinician", offer)?;
            clinician.accept_answer(&answer)?;
            let phone_addr = addr(3, i, 5000);
            let media_addr = addr(4, i, 6000);
            let session = |remote: SocketAddr, ssrc: u32| {
                let mut c = SessionConfig::new(remote, ssrc);
                c.rtcp_mux = true;
                c.initial_sequence = (ssrc >> 16) as u16;
                c.initial_timestamp = ssrc.rotate_left(7);
                MediaSession::new(c, now)
            };
            b.by_addr.insert(leg_addr, (i, Side::Gateway));
            b.by_addr.insert(clinician_addr, (i, Side::Clinician));
            b.by_id.insert(leg_id, (i, Side::Gateway));
            b.by_id.insert(clinician_id, (i, Side::Clinician));
            b.gateways.push(Gateway {
                media: session(phone_addr, 0x1000_0000 + i as u32),
                leg,
                leg_addr,
                phone_addr,
            });
            b.stand_ins.push(StandIns {
                phone: session(media_addr, 0x2000_0000 + i as u32),
                clinician,
                clinician_addr,
            });
        }
        Ok(b)
    }

    /// Every leg connected and hearing the other side's track.
    fn all_connected(&self) -> bool {
        self.gateways
            .iter()
            .all(|g| g.leg.connected() && g.leg.tracks() == 1)
            && self
                .stand_ins
                .iter()
                .all(|s| s.clinician.connected() && s.clinician.tracks() == 1)
    }

    /// One 20 ms tick at `now`; returns how many calls' frames were done
    /// (their `push_pcm` returned) after `deadline`.
    fn tick(&mut self, now: Instant, deadline: Instant) -> u64 {
        let f = self.frame_no % 50;
        self.frame_no += 1;
        let mut late = 0;
        let mut rtp = Vec::new();
        let times = &mut self.times;
        for (g, s) in self.gateways.iter_mut().zip(&mut self.stand_ins) {
            // The phone says its 20 ms (G.711 RTP, and RTCP now and then).
            timed(&mut times.phone, || {
                s.phone.push_pcm(now, &self.phone_tone[f]);
                if s.phone.poll_timeout().is_some_and(|t| t <= now) {
                    s.phone.handle_timeout(now);
                }
                while let Some(o) = s.phone.poll_output() {
                    if let Output::Transmit(t) = o {
                        rtp.push(t.bytes);
                    }
                }
            });
            // Ours: the gateway's tick for this call.
            timed(&mut times.gateway, || {
                for bytes in rtp.drain(..) {
                    g.media.handle_datagram(now, g.phone_addr, &bytes);
                }
                if g.media.poll_timeout().is_some_and(|t| t <= now) {
                    g.media.handle_timeout(now);
                }
                let heard = g.media.pull_decoded(now);
                let mut frame = [0i16; FRAME];
                if g.leg.connected() {
                    let _ = g.leg.push_phone(now, &heard);
                    frame = g.leg.pull_room(now);
                }
                g.media.push_pcm(now, &frame);
                if Instant::now() > deadline {
                    late += 1;
                }
                while let Some(o) = g.media.poll_output() {
                    if let Output::Transmit(_) = o {
                        self.to_phone += 1;
                    }
                }
                if g.leg.poll_timeout().is_some_and(|t| t <= now) {
                    g.leg.handle_timeout(now);
                }
                while let Some((_, bytes)) = g.leg.poll_transmit() {
                    self.to_sfu.push((g.leg_addr, bytes));
                }
            });
            // The clinician's browser says its 20 ms (real Opus).
            timed(&mut times.clinician, || {
                let _ = s.clinician.push_phone(now, &self.clinician_tone[f]);
                if s.clinician.poll_timeout().is_some_and(|t| t <= now) {
                    s.clinician.handle_timeout(now);
                }
                while let Some((_, bytes)) = s.clinician.poll_transmit() {
                    self.to_sfu.push((s.clinician_addr, bytes));
                }
            });
        }
        self.exchange(now);
        late
    }

    /// Moves datagrams and signalling between the legs and the SFU until
    /// nothing is in flight.
    fn exchange(&mut self, now: Instant) {
        let sfu = sfu_addr();
        for _ in 0..EXCHANGE_ROUNDS {
            let mut outputs = Vec::new();
            let to_sfu = std::mem::take(&mut self.to_sfu);
            timed(&mut self.times.sfu, || {
                for (source, bytes) in &to_sfu {
                    self.worker.handle_datagram(now, *source, sfu, bytes);
                }
                self.worker.drive(now);
                while let Some(o) = self.worker.poll_output() {
                    outputs.push(o);
                }
            });
            if outputs.is_empty() {
                break;
            }
            let mut sent = Vec::new();
            for o in outputs {
                match o {
                    SfuOutput::Transmit {
                        destination,
                        contents,
                    } => {
                        let Some(&(i, side)) = self.by_addr.get(&destination) else {
                            continue;
                        };
                        let (leg, from, acc) = self.leg(i, side);
                        timed(acc, || {
                            leg.handle_datagram(now, sfu, &contents);
                            while let Some((_, bytes)) = leg.poll_transmit() {
                                sent.push((from, bytes));
                            }
                        });
                    }
                    SfuOutput::Offer { participant, sdp } => {
                        let Some(&(i, side)) = self.by_id.get(&participant) else {
                            continue;
                        };
                        let (leg, from, acc) = self.leg(i, side);
                        let answer = timed(acc, || {
                            let answer = leg.accept_offer(&sdp);
                            while let Some((_, bytes)) = leg.poll_transmit() {
                                sent.push((from, bytes));
                            }
                            answer
                        });
                        if let Ok(answer) = answer {
                            timed(&mut self.times.sfu, || {
                                let _ = self.worker.answer(participant, &answer);
                            });
                        }
                    }
                    _ => {}
                }
            }
            self.to_sfu.append(&mut sent);
        }
    }

    fn leg(&mut self, i: usize, side: Side) -> (&mut RoomLeg, SocketAddr, &mut Duration) {
        match side {
            Side::Gateway => {
                let g = &mut self.gateways[i];
                (&mut g.leg, g.leg_addr, &mut self.times.gateway)
            }
            Side::Clinician => {
                let s = &mut self.stand_ins[i];
                (
                    &mut s.clinician,
                    s.clinician_addr,
                    &mut self.times.clinician,
                )
            }
        }
    }
}

/// This process's CPU time (user + system), seconds.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's load average (1, 5, 15 min), as /proc/loadavg gives it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[derive(Serialize, Clone)]
pub struct BridgedResult {
    pub calls: usize,
    pub seconds: f64,
    pub call_frames: u64,
    pub late_frames: u64,
    pub late_pct: f64,
    /// Ticks not run at all (the thread fell a whole tick behind): their
    /// call-frames count as late.
    pub skipped_ticks: u64,
    /// Processing time of a whole tick (all calls, exchange included).
    pub tick_p50_ms: f64,
    pub tick_p99_ms: f64,
    pub tick_max_ms: f64,
    /// The gateway's part of a tick (all calls).
    pub gateway_tick_p50_ms: f64,
    pub gateway_tick_p99_ms: f64,
    /// Process CPU time over the run per call, as % of one core (over the
    /// call-frames run: what one call costs at the full 20 ms cadence).
    pub cpu_per_call_pct: f64,
    /// Time in each part per call, as % of one core (the same way).
    pub gateway_cpu_per_call_pct: f64,
    pub clinician_cpu_per_call_pct: f64,
    pub phone_cpu_per_call_pct: f64,
    pub sfu_cpu_per_call_pct: f64,
    /// Live heap after setup (everything: gateway, stand-ins, SFU) per call.
    pub heap_per_call_bytes: u64,
    /// Of which the gateway's (what dropping its sessions and legs frees).
    pub gateway_heap_per_call_bytes: u64,
    /// Per call-frame over the run: room frames the gateway leg decoded,
    /// and phone frames it sent to the room (≈ 1 each when media flows).
    pub room_frames_decoded_per_call_frame: f64,
    pub phone_frames_sent_per_call_frame: f64,
    pub load_average: String,
}

/// N bridged calls for `seconds` of real time, after connecting them.
pub fn run_bridged(calls: usize, seconds: u64) -> anyhow::Result<BridgedResult> {
    let heap_before = live_bytes();
    let mut b = Bridge::new(calls, Instant::now()).context("setting up the calls")?;
    // Connect at the real cadence (ICE, DTLS, renegotiation), then settle.
    let connect_by = Instant::now() + Duration::from_secs(20 + calls as u64 / 10);
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        let now = Instant::now();
        b.tick(now, now + TICK);
        next += TICK;
        if next < Instant::now() {
            next = Instant::now();
        }
        if b.all_connected() {
            break;
        }
        anyhow::ensure!(
            now < connect_by,
            "{calls} calls: not all legs connected in time ({} of {} gateway legs)",
            b.gateways.iter().filter(|g| g.leg.connected()).count(),
            calls
        );
    }
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        b.tick(now, now + TICK);
        next = (next + TICK).max(Instant::now());
    }
    let heap_setup = live_bytes().saturating_sub(heap_before);

    // Measure.
    let legs_before: Vec<_> = b.gateways.iter().map(|g| g.leg.stats()).collect();
    b.times = Times::default();
    let mut tick_h = Histogram::<u64>::new(3)?;
    let mut gw_h = Histogram::<u64>::new(3)?;
    let (mut late, mut frames, mut skipped) = (0u64, 0u64, 0u64);
    let cpu_before = process_cpu_seconds();
    let start = Instant::now() + TICK;
    let end = start + Duration::from_secs(seconds);
    let mut slot = start;
    while slot < end {
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
        let began = Instant::now();
        let gw_before = b.times.gateway;
        let deadline = slot + TICK;
        late += b.tick(began, deadline);
        frames += calls as u64;
        tick_h.record(began.elapsed().as_micros() as u64)?;
        gw_h.record((b.times.gateway - gw_before).as_micros() as u64)?;
        // The next slot on the grid; whole slots missed are frames lost.
        slot = deadline;
        while slot + TICK <= Instant::now() && slot < end {
            slot += TICK;
            skipped += 1;
            late += calls as u64;
            frames += calls as u64;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    let (mut decoded, mut sent) = (0u64, 0u64);
    for (g, s0) in b.gateways.iter().zip(&legs_before) {
        let s = g.leg.stats();
        decoded += s.frames_decoded - s0.frames_decoded;
        sent += s.frames_sent - s0.frames_sent;
    }
    let times = b.times;
    // The gateway's heap: what dropping its sessions and legs gives back.
    let with_all = live_bytes();
    let gateways = std::mem::take(&mut b.gateways);
    drop(gateways);
    let gateway_heap = with_all.saturating_sub(live_bytes());
    drop(b);

    let n = calls.max(1) as f64;
    // Per call at full cadence: time over the call-frames actually run (an
    // overloaded run skips ticks, which would otherwise flatter the figure),
    // as a share of their 20 ms each.
    let processed = (frames - skipped * calls as u64).max(1) as f64;
    let share = |secs: f64| secs / (processed * TICK.as_secs_f64()) * 100.0;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(BridgedResult {
        calls,
        seconds: wall,
        call_frames: frames,
        late_frames: late,
        late_pct: late as f64 * 100.0 / frames.max(1) as f64,
        skipped_ticks: skipped,
        tick_p50_ms: ms(&tick_h, 0.5),
        tick_p99_ms: ms(&tick_h, 0.99),
        tick_max_ms: tick_h.max() as f64 / 1000.0,
        gateway_tick_p50_ms: ms(&gw_h, 0.5),
        gateway_tick_p99_ms: ms(&gw_h, 0.99),
        cpu_per_call_pct: share(cpu),
        gateway_cpu_per_call_pct: share(times.gateway.as_secs_f64()),
        clinician_cpu_per_call_pct: share(times.clinician.as_secs_f64()),
        phone_cpu_per_call_pct: share(times.phone.as_secs_f64()),
        sfu_cpu_per_call_pct: share(times.sfu.as_secs_f64()),
        heap_per_call_bytes: (heap_setup as f64 / n) as u64,
        gateway_heap_per_call_bytes: (gateway_heap as f64 / n) as u64,
        room_frames_decoded_per_call_frame: decoded as f64 / frames.max(1) as f64,
        phone_frames_sent_per_call_frame: sent as f64 / frames.max(1) as f64,
        load_average: load_average(),
    })
}

pub fn print_result(label: &str, r: &BridgedResult) {
    println!(
        "{label}{:>4} calls {:>4.0} s: late {:>6.2}% ({} skipped ticks); tick p50/p99/max {:.2}/{:.2}/{:.2} ms \
         (gateway p50/p99 {:.2}/{:.2}); CPU/call: process {:.3}%, gateway {:.3}%, clinician {:.3}%, \
         phone {:.3}%, SFU {:.3}%; heap/call {:.0} KiB (gateway {:.0} KiB); room frames decoded/sent per \
         frame {:.2}/{:.2}; load {}",
        r.calls,
        r.seconds,
        r.late_pct,
        r.skipped_ticks,
        r.tick_p50_ms,
        r.tick_p99_ms,
        r.tick_max_ms,
        r.gateway_tick_p50_ms,
        r.gateway_tick_p99_ms,
        r.cpu_per_call_pct,
        r.gateway_cpu_per_call_pct,
        r.clinician_cpu_per_call_pct,
        r.phone_cpu_per_call_pct,
        r.sfu_cpu_per_call_pct,
        r.heap_per_call_bytes as f64 / 1024.0,
        r.gateway_heap_per_call_bytes as f64 / 1024.0,
        r.room_frames_decoded_per_call_frame,
        r.phone_frames_sent_per_call_frame,
        r.load_average,
    );
}
