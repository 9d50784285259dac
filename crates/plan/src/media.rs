//! Media sizing: packets and bandwidth per session from the simulcast layer
//! bitrates, session slots (Erlang B), SFU / TURN / voice-gateway nodes with
//! redundancy, SIP trunk channels, per region.

use crate::capacity::Capacity;
use crate::demand::Demand;
use crate::erlang::{ErlangError, servers_for_blocking};
use crate::profile::{Profile, Redundancy, Video};
use serde::Serialize;

/// RTP payload per packet before a frame is split (as str0m peers in
/// `continuum bench sfu` packetise).
pub const MTU_PAYLOAD: f64 = 1_100.0;
/// IPv4 20 + UDP 8 + RTP 12 + SRTP tag 10 + header extensions ~10 bytes.
pub const PACKET_OVERHEAD_BYTES: f64 = 60.0;
/// Opus at 20 ms frames.
pub const AUDIO_PPS: f64 = 50.0;
/// G.711 at 20 ms: 160 bytes payload + 40 bytes IP/UDP/RTP, 50 packets/s.
pub const G711_BPS: f64 = 80_000.0;

/// A media stream: packets/s and bits/s on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Flow {
    pub pps: f64,
    pub bps: f64,
}

impl Flow {
    fn times(self, k: f64) -> Flow {
        Flow {
            pps: self.pps * k,
            bps: self.bps * k,
        }
    }
    fn plus(self, o: Flow) -> Flow {
        Flow {
            pps: self.pps + o.pps,
            bps: self.bps + o.bps,
        }
    }
}

/// One simulcast layer: every frame is at least one packet.
pub fn layer_flow(kbps: f64, fps: f64) -> Flow {
    let frame_bytes = kbps * 1000.0 / 8.0 / fps;
    let pps = fps * (frame_bytes / MTU_PAYLOAD).ceil().max(1.0);
    Flow {
        pps,
        bps: kbps * 1000.0 + pps * PACKET_OVERHEAD_BYTES * 8.0,
    }
}

pub fn audio_flow(v: &Video) -> Flow {
    Flow {
        pps: AUDIO_PPS,
        bps: v.audio_kbps * 1000.0 + AUDIO_PPS * PACKET_OVERHEAD_BYTES * 8.0,
    }
}

/// What one session costs the SFU.
#[derive(Debug, Clone, Serialize)]
pub struct SessionMedia {
    pub channel: &'static str,
    pub participants: u32,
    /// Into the SFU (every publisher sends all its simulcast layers).
    pub ingress: Flow,
    /// Out of the SFU (each subscriber gets one layer per other camera).
    pub egress: Flow,
}

/// Per-session media for each SFU channel of the profile (app voice is the
/// non-PSTN part of `voice`).
pub fn session_media(p: &Profile) -> Vec<SessionMedia> {
    let v = &p.media;
    let audio = audio_flow(v);
    let all_layers = v
        .layers_kbps
        .iter()
        .map(|k| layer_flow(*k, v.fps))
        .fold(Flow::default(), Flow::plus);
    let publisher = audio.plus(all_layers);
    let mut out = Vec::new();
    if p.video.is_some() {
        let recv = audio.plus(layer_flow(v.layers_kbps[v.one_to_one_layer], v.fps));
        out.push(SessionMedia {
            channel: "video",
            participants: 2,
            ingress: publisher.times(2.0),
            egress: recv.times(2.0),
        });
    }
    if let Some(g) = &p.group_video {
        let n = g.participants.unwrap_or(4);
        let recv = audio.plus(layer_flow(v.layers_kbps[v.group_layer], v.fps));
        out.push(SessionMedia {
            channel: "group_video",
            participants: n,
            ingress: publisher.times(n as f64),
            egress: recv.times((n * (n - 1)) as f64),
        });
    }
    if let Some(c) = &p.voice
        && c.pstn_share.unwrap_or(1.0) < 1.0
    {
        out.push(SessionMedia {
            channel: "app_voice",
            participants: 2,
            ingress: audio.times(2.0),
            egress: audio.times(2.0),
        });
    }
    out
}

/// The node shape being planned with (from the price book's instance).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodeShape {
    pub vcpus: f64,
    pub network_gbps: f64,
}

/// Nodes of one service in one region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceNodes {
    pub packets_per_sec: f64,
    pub cores: f64,
    /// The busier direction, bits/s.
    pub network_bps: f64,
    pub nodes_for_cpu: u64,
    pub nodes_for_network: u64,
    pub nodes_needed: u64,
    /// With spares and zone spread.
    pub nodes: u64,
}

impl ServiceNodes {
    fn new(
        pps: f64,
        cores: f64,
        network_bps: f64,
        c: &Capacity,
        n: NodeShape,
        r: &Redundancy,
    ) -> Self {
        let u = c.target_utilization;
        let nodes_for_cpu = (cores / (n.vcpus * u) - 1e-9).ceil().max(0.0) as u64;
        let nodes_for_network = (network_bps / (n.network_gbps * 1e9 * u) - 1e-9)
            .ceil()
            .max(0.0) as u64;
        let nodes_needed = nodes_for_cpu.max(nodes_for_network);
        ServiceNodes {
            packets_per_sec: pps,
            cores,
            network_bps,
            nodes_for_cpu,
            nodes_for_network,
            nodes_needed,
            nodes: with_redundancy(nodes_needed, r),
        }
    }
}

/// Nodes to run for `need` at the peak: survive a zone loss if asked
/// (`zones × ⌈need / (zones − 1)⌉`), plus `spare_nodes`, spread evenly over
/// the zones (rounded up to a multiple of `zones`). Zero stays zero.
pub fn with_redundancy(need: u64, r: &Redundancy) -> u64 {
    if need == 0 {
        return 0;
    }
    let z = r.zones.max(1) as u64;
    let base = if r.survive_zone_loss && z >= 2 {
        z * need.div_ceil(z - 1)
    } else {
        need
    };
    (base + r.spare_nodes as u64).div_ceil(z) * z
}

#[derive(Debug, Clone, Serialize)]
pub struct Slots {
    pub channel: &'static str,
    pub erlangs: f64,
    /// Concurrent sessions admitted with blocking ≤ targets.session_blocking.
    pub slots: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionSizing {
    pub region: String,
    pub share: f64,
    pub slots: Vec<Slots>,
    pub sfu: ServiceNodes,
    pub sfu_ingress_bps: f64,
    pub sfu_egress_bps: f64,
    pub turn: ServiceNodes,
    pub trunk_erlangs: f64,
    pub trunk_channels: u64,
    pub gateway: ServiceNodes,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaSizing {
    pub per_session: Vec<SessionMedia>,
    pub regions: Vec<RegionSizing>,
    pub session_slots: u64,
    pub trunk_channels: u64,
    pub sfu_nodes: u64,
    pub turn_nodes: u64,
    pub gateway_nodes: u64,
    pub sfu_egress_bps: f64,
    pub sfu_ingress_bps: f64,
    /// Through TURN, each way.
    pub turn_relay_bps: f64,
    /// To the SIP trunk provider, each way.
    pub pstn_bps: f64,
    /// 1:1 visits per core at this profile's bitrates (compare with the
    /// benchmark's `sfu_visits_per_core`).
    pub visits_per_core: Option<f64>,
}

const SLOT_FIELDS: &str =
    "volume.visits_per_day (or the arrivals), channels.*.share and channels.*.mean_minutes";

pub fn size(
    p: &Profile,
    d: &Demand,
    c: &Capacity,
    node: NodeShape,
) -> Result<MediaSizing, ErlangError> {
    let per_session = session_media(p);
    let pstn_share = p
        .voice
        .as_ref()
        .map_or(0.0, |v| v.pstn_share.unwrap_or(1.0));
    let mut regions = Vec::new();
    for (region, share) in &p.regions {
        let mut slots = Vec::new();
        let (mut ingress, mut egress) = (Flow::default(), Flow::default());
        for m in &per_session {
            let (source, k) = match m.channel {
                "app_voice" => ("voice", 1.0 - pstn_share),
                other => (other, 1.0),
            };
            let a = d.channel(source).map_or(0.0, |x| x.sizing_erlangs) * k * share;
            let n =
                servers_for_blocking("session slots", SLOT_FIELDS, a, p.targets.session_blocking)?;
            ingress = ingress.plus(m.ingress.times(n as f64));
            egress = egress.plus(m.egress.times(n as f64));
            slots.push(Slots {
                channel: m.channel,
                erlangs: a,
                slots: n,
            });
        }
        let r = &p.redundancy;
        let sfu = ServiceNodes::new(
            egress.pps,
            egress.pps / c.sfu_egress_packets_per_core,
            egress.bps.max(ingress.bps),
            c,
            node,
            r,
        );
        // Relayed participants' packets pass through TURN once each way.
        let relay = ingress.plus(egress).times(p.relay_share);
        let turn = ServiceNodes::new(
            relay.pps,
            relay.pps * c.turn_cpu_us_per_packet / 1e6,
            relay.bps,
            c,
            node,
            r,
        );
        let trunk_erlangs =
            d.channel("voice").map_or(0.0, |x| x.sizing_erlangs) * pstn_share * share;
        let trunk_channels = servers_for_blocking(
            "SIP trunk channels",
            "volume.visits_per_day (or the arrivals), channels.voice.share, .pstn_share and .mean_minutes",
            trunk_erlangs,
            p.targets.trunk_blocking,
        )?;
        // Trunk leg and agent leg, both G.711.
        let pstn_bps = trunk_channels as f64 * G711_BPS * 2.0;
        let gateway = ServiceNodes::new(
            trunk_channels as f64 * AUDIO_PPS * 4.0,
            trunk_channels as f64 / c.voice_calls_per_core,
            pstn_bps,
            c,
            node,
            r,
        );
        regions.push(RegionSizing {
            region: region.clone(),
            share: *share,
            slots,
            sfu_ingress_bps: ingress.bps,
            sfu_egress_bps: egress.bps,
            sfu,
            turn,
            trunk_erlangs,
            trunk_channels,
            gateway,
        });
    }
    let sum = |f: &dyn Fn(&RegionSizing) -> f64| regions.iter().map(f).sum::<f64>();
    let sumu = |f: &dyn Fn(&RegionSizing) -> u64| regions.iter().map(f).sum::<u64>();
    let visits_per_core = per_session
        .iter()
        .find(|m| m.channel == "video")
        .map(|m| c.sfu_egress_packets_per_core / m.egress.pps);
    Ok(MediaSizing {
        session_slots: sumu(&|r| r.slots.iter().map(|s| s.slots).sum()),
        trunk_channels: sumu(&|r| r.trunk_channels),
        sfu_nodes: sumu(&|r| r.sfu.nodes),
        turn_nodes: sumu(&|r| r.turn.nodes),
        gateway_nodes: sumu(&|r| r.gateway.nodes),
        sfu_egress_bps: sum(&|r| r.sfu_egress_bps),
        sfu_ingress_bps: sum(&|r| r.sfu_ingress_bps),
        turn_relay_bps: sum(&|r| r.turn.network_bps),
        pstn_bps: sum(&|r| r.gateway.network_bps) / 2.0,
        visits_per_core,
        per_session,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_packets_match_the_bench_peers() {
        // crates/sfu/src/sim.rs: 1,500 kbit/s at 30 fps = 6,250 B/frame = 6 packets.
        assert_eq!(layer_flow(1500.0, 30.0).pps, 180.0);
        assert_eq!(layer_flow(500.0, 30.0).pps, 60.0);
        assert_eq!(layer_flow(150.0, 30.0).pps, 30.0);
    }

    #[test]
    fn redundancy() {
        let r = |spare, zones, survive| Redundancy {
            spare_nodes: spare,
            zones,
            survive_zone_loss: survive,
        };
        assert_eq!(with_redundancy(0, &r(1, 2, true)), 0);
        assert_eq!(with_redundancy(1, &r(1, 2, false)), 2);
        assert_eq!(with_redundancy(3, &r(1, 2, false)), 4);
        assert_eq!(with_redundancy(4, &r(1, 2, false)), 6);
        assert_eq!(with_redundancy(4, &r(0, 1, false)), 4);
        // Two zones, each must hold the whole peak.
        assert_eq!(with_redundancy(4, &r(0, 2, true)), 8);
        // Three zones: any two hold the peak.
        assert_eq!(with_redundancy(4, &r(0, 3, true)), 6);
    }
}
