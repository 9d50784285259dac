//! RTP-level forwarding from one published track to one subscriber: which
//! simulcast layer to pass, and the rewriting that keeps the subscriber's
//! stream continuous across layer switches (sequence numbers, timestamps, VP8
//! picture ids). Pure state, no IO: fed packets' metadata, returns verdicts.

use std::time::Instant;
use str0m::format::Codec;
use str0m::media::{MediaKind, Rid};
use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// Up to this many simulcast layers per track (browsers send at most 3).
pub const MAX_LAYERS: usize = 4;

/// The layers a publisher currently sends for one track, lowest bitrate
/// first, with their measured rates. Copied into every forwarded packet's
/// metadata, so subscribers choose layers without shared state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layers {
    pub len: u8,
    pub rids: [Option<Rid>; MAX_LAYERS],
    /// Measured bitrate, bits/s (0 until the first second is measured, and
    /// while the layer is paused or stopped).
    pub bps: [u32; MAX_LAYERS],
    /// The last non-zero measured bitrate: what the layer costs when it runs
    /// (it orders the layers, and prices a paused layer a subscriber wants).
    pub known: [u32; MAX_LAYERS],
}

impl Layers {
    pub fn iter(&self) -> impl Iterator<Item = (Option<Rid>, u32)> + '_ {
        (0..self.len as usize).map(|i| (self.rids[i], self.bps[i]))
    }

    pub fn index_of(&self, rid: Option<Rid>) -> Option<usize> {
        (0..self.len as usize).find(|i| self.rids[*i] == rid)
    }

    pub fn is_simulcast(&self) -> bool {
        self.len > 1
    }

    /// Every layer has run long enough to be priced.
    pub fn all_known(&self) -> bool {
        self.known[..self.len as usize].iter().all(|k| *k > 0)
    }
}

/// Measures each layer of a published track and keeps them ordered by rate.
#[derive(Debug, Default)]
pub struct LayerMeter {
    pub layers: Layers,
    bytes: [u64; MAX_LAYERS],
    since: Option<Instant>,
}

impl LayerMeter {
    /// Accounts a packet; returns the layer's index, or `None` when the track
    /// already has [`MAX_LAYERS`] other layers.
    pub fn observe(&mut self, rid: Option<Rid>, bytes: usize, now: Instant) -> Option<usize> {
        let l = &mut self.layers;
        let i = match l.index_of(rid) {
            Some(i) => i,
            None if (l.len as usize) < MAX_LAYERS => {
                l.rids[l.len as usize] = rid;
                l.len += 1;
                l.len as usize - 1
            }
            None => return None,
        };
        self.bytes[i] += bytes as u64;
        let since = *self.since.get_or_insert(now);
        let secs = now.saturating_duration_since(since).as_secs_f64();
        if secs >= 1.0 {
            for j in 0..l.len as usize {
                l.bps[j] = (self.bytes[j] as f64 * 8.0 / secs).min(u32::MAX as f64) as u32;
                if l.bps[j] > 0 {
                    l.known[j] = l.bps[j];
                }
                self.bytes[j] = 0;
            }
            self.since = Some(now);
            self.sort();
        }
        self.layers.index_of(rid)
    }

    /// Lowest rate first, by the rate a layer has when it runs: a paused
    /// layer keeps its place (subscribers' layer indices stay meaningful),
    /// and [`Forwarder::choose`] passes over it while its rate is 0.
    fn sort(&mut self) {
        let l = &mut self.layers;
        let n = l.len as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| l.known[*i]);
        let (rids, bps, known, bytes) = (l.rids, l.bps, l.known, self.bytes);
        for (to, from) in order.into_iter().enumerate() {
            l.rids[to] = rids[from];
            l.bps[to] = bps[from];
            l.known[to] = known[from];
            self.bytes[to] = bytes[from];
        }
    }
}

/// Whether an RTP payload starts a keyframe, for the codecs we negotiate.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => Vp8Descriptor::parse(payload).is_ok_and(|d| d.starts_keyframe(payload)),
        Codec::Vp9 => vp9_starts_keyframe(payload),
        Codec::H264 => h264_has_idr(payload),
        _ => false,
    }
}

/// VP9 payload descriptor (RFC 9628 §4.2): P=0 (not inter-predicted) and
/// B=1 (first packet of a frame).
fn vp9_starts_keyframe(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// H.264 (RFC 6184): an IDR NAL unit (type 5) alone, inside a STAP-A, or at
/// the start of an FU-A. (str0m has this detector but does not export it.)
fn h264_has_idr(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR => true,
        24 => {
            // STAP-A: 16-bit size, then the NAL unit, repeated.
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| h & 0x1f == IDR) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        // FU-A: start bit set and the fragmented NAL unit is an IDR.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

/// One incoming packet, as the forwarder sees it.
#[derive(Debug, Clone, Copy)]
pub struct InPacket<'a> {
    pub rid: Option<Rid>,
    /// Extended (rollover-free) sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub arrival: Instant,
    pub keyframe: bool,
    /// The payload, for VP8 descriptor rewriting.
    pub payload: &'a [u8],
    pub codec: Codec,
}

/// What to do with a packet for this subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Write {
        seq: u64,
        timestamp: u32,
        vp8: Option<Vp8Patch>,
        /// True when this packet switched the subscriber to another layer.
        switched: bool,
    },
}

/// Per subscriber, per track forwarding state.
#[derive(Debug)]
pub struct Forwarder {
    kind: MediaKind,
    /// The layer being forwarded (`None` until the first packet passes).
    current: Option<Option<Rid>>,
    /// The layer the subscriber should get (chosen by [`Forwarder::choose`]).
    pub target: Option<Rid>,
    /// The publisher's layers, as of the last packet seen.
    pub layers: Layers,
    /// Highest layer index the subscriber asked for (its rendered size).
    pub max_layer: usize,
    /// The layer index it would take if every layer ran (paused ones
    /// priced at their known rate): what the publisher must keep sending.
    pub want: usize,
    seq_delta: u64,
    ts_delta: u32,
    /// Packets of the current layer older than the switch point are dropped:
    /// their rewritten numbers would collide with the previous layer's.
    floor: u64,
    last_out: Option<(u64, u32, Instant)>,
    vp8_pic: Option<Vp8State>,
    pub switches: u64,
    /// The subscriber unsubscribed: nothing passes.
    paused: bool,
    /// Resumed video restarts at a keyframe (its decoder missed frames).
    need_keyframe: bool,
}

#[derive(Debug, Clone, Copy)]
struct Vp8State {
    pic_delta: u16,
    tl0_delta: u8,
    last_pic: u16,
    last_tl0: u8,
}

impl Forwarder {
    pub fn new(kind: MediaKind) -> Self {
        Forwarder {
            kind,
            current: None,
            target: None,
            layers: Layers::default(),
            max_layer: MAX_LAYERS - 1,
            want: MAX_LAYERS - 1,
            seq_delta: 0,
            ts_delta: 0,
            floor: 0,
            last_out: None,
            vp8_pic: None,
            switches: 0,
            paused: false,
            need_keyframe: false,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stops (unsubscribe) or restarts (subscribe) the track for this
    /// subscriber. On restart the numbering continues where it stopped, as on
    /// a layer switch, so the subscriber sees a jump in timestamps, not a
    /// burst of losses to NACK; video waits for a keyframe.
    pub fn set_paused(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        if !paused {
            self.restart();
        }
    }

    /// Starts the track over for this subscriber (after a pause, or with
    /// another publisher behind it): numbering continues where it stopped,
    /// video waits for a keyframe.
    pub fn restart(&mut self) {
        self.current = None;
        self.need_keyframe = self.kind == MediaKind::Video;
    }

    pub fn current(&self) -> Option<Option<Rid>> {
        self.current
    }

    /// Waiting for a keyframe of the target layer (the publisher should be asked).
    pub fn awaiting_keyframe(&self) -> bool {
        self.kind == MediaKind::Video
            && !self.paused
            && (self.need_keyframe
                || (self.layers.is_simulcast() && self.current != Some(self.target)))
    }

    /// Picks the target layer: the highest the subscriber wants whose rate
    /// fits `budget_bps` (its share of the bandwidth estimate), else the
    /// lowest. Upswitches need 15% headroom so the choice does not flap.
    /// Also notes [`Forwarder::want`]: the same choice as if paused layers ran.
    pub fn choose(&mut self, budget_bps: Option<u64>) -> Option<Rid> {
        if !self.layers.is_simulcast() {
            self.target = self.layers.rids[0];
            self.want = 0;
            return self.target;
        }
        let top = self.max_layer.min(self.layers.len as usize - 1);
        let current = self.current.and_then(|c| self.layers.index_of(c));
        let fits = |i: usize, bps: u32| match budget_bps {
            None => true,
            Some(b) if Some(i) <= current => bps as u64 <= b,
            Some(b) => bps as u64 * 115 / 100 <= b,
        };
        let (mut pick, mut want) = (0, 0);
        for i in 0..=top {
            let (bps, known) = (self.layers.bps[i], self.layers.known[i]);
            if fits(i, bps) && (bps > 0 || i == 0) {
                pick = i;
            }
            if fits(i, known.max(bps)) {
                want = i;
            }
        }
        self.want = want;
        self.target = self.layers.rids[pick];
        self.target
    }

    /// Decides one packet's fate and rewrites its numbers.
    pub fn forward(&mut self, p: &InPacket, layers: Layers) -> Verdict {
        self.layers = layers;
        if self.paused {
            return Verdict::Drop;
        }
        if self.kind == MediaKind::Video && layers.is_simulcast() && self.target.is_none() {
            // No choice made yet (first packets): start at the lowest layer.
            self.target = layers.rids[0];
        }
        let mut switched = false;
        if self.current != Some(p.rid) {
            let wanted =
                !layers.is_simulcast() || self.kind == MediaKind::Audio || p.rid == self.target;
            let can_start = (!layers.is_simulcast() && !self.need_keyframe) || p.keyframe;
            if !(wanted && can_start) {
                return Verdict::Drop;
            }
            self.start_layer(p);
            self.need_keyframe = false;
            switched = true;
        } else if p.seq < self.floor {
            return Verdict::Drop;
        }
        let seq = p.seq.wrapping_add(self.seq_delta);
        let timestamp = p.timestamp.wrapping_add(self.ts_delta);
        let vp8 = self.rewrite_vp8(p);
        match self.last_out {
            Some((s, _, _)) if s >= seq => {}
            _ => self.last_out = Some((seq, timestamp, p.arrival)),
        }
        Verdict::Write {
            seq,
            timestamp,
            vp8,
            switched,
        }
    }

    /// Continues the outgoing numbering from where the previous layer left off.
    fn start_layer(&mut self, p: &InPacket) {
        let (out_seq, out_ts) = match self.last_out {
            None => (p.seq, p.timestamp),
            Some((seq, ts, at)) => {
                let clock = if self.kind == MediaKind::Audio {
                    48
                } else {
                    90
                };
                let elapsed = p.arrival.saturating_duration_since(at).as_millis() as u32;
                (seq + 1, ts.wrapping_add((elapsed * clock).max(1)))
            }
        };
        if self.current.is_some() {
            self.switches += 1;
        }
        self.seq_delta = out_seq.wrapping_sub(p.seq);
        self.ts_delta = out_ts.wrapping_sub(p.timestamp);
        self.floor = p.seq;
        self.current = Some(p.rid);
        if p.codec == Codec::Vp8
            && let Ok(d) = Vp8Descriptor::parse(p.payload)
            && let (Some(pic), Some(prev)) = (d.picture_id(), self.vp8_pic)
        {
            let tl0 = d.tl0_pic_idx().unwrap_or(0);
            self.vp8_pic = Some(Vp8State {
                pic_delta: prev.last_pic.wrapping_add(1).wrapping_sub(pic),
                tl0_delta: prev.last_tl0.wrapping_add(1).wrapping_sub(tl0),
                ..prev
            });
        }
    }

    /// Keeps VP8 picture ids (and TL0PICIDX) continuous across layer switches.
    fn rewrite_vp8(&mut self, p: &InPacket) -> Option<Vp8Patch> {
        if p.codec != Codec::Vp8 {
            return None;
        }
        let d = Vp8Descriptor::parse(p.payload).ok()?;
        let pic = d.picture_id()?;
        let state = self.vp8_pic.get_or_insert(Vp8State {
            pic_delta: 0,
            tl0_delta: 0,
            last_pic: pic,
            last_tl0: d.tl0_pic_idx().unwrap_or(0),
        });
        // 15-bit ids wrap at 2^15; a 7-bit descriptor keeps its width (2^7).
        let mut out_pic = pic.wrapping_add(state.pic_delta) & 0x7fff;
        if d.patch().picture_id(out_pic).build().is_err() {
            out_pic &= 0x7f;
        }
        state.last_pic = out_pic;
        let mut b = d.patch();
        if state.pic_delta != 0 {
            b = b.picture_id(out_pic);
        }
        if let Some(tl0) = d.tl0_pic_idx() {
            let out = tl0.wrapping_add(state.tl0_delta);
            state.last_tl0 = out;
            if state.tl0_delta != 0 {
                b = b.tl0_pic_idx(out);
            }
        }
        if state.pic_delta == 0 && state.tl0_delta == 0 {
            return None;
        }
        b.build().ok()
    }
}

#[cfg(test)]
mod tests;
