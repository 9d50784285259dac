use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn vp8(keyframe: bool, pic: u16) -> Vec<u8> {
    // X=1, S=1, PID=0; I=1 (15-bit picture id); then the VP8 payload header
    // whose bit 0 is 0 for a keyframe.
    vec![
        0x90,
        0x80,
        0x80 | (pic >> 8) as u8,
        pic as u8,
        if keyframe { 0x00 } else { 0x01 },
        0,
        0,
    ]
}

fn layers(rids: &[&str], bps: &[u32]) -> Layers {
    let mut l = Layers::default();
    for (i, r) in rids.iter().enumerate() {
        l.rids[i] = Some((*r).into());
        l.bps[i] = bps[i];
        l.known[i] = bps[i];
    }
    l.len = rids.len() as u8;
    l
}

struct Feed {
    t0: Instant,
}

impl Feed {
    fn pkt<'a>(
        &self,
        rid: Option<&str>,
        seq: u64,
        ms: u64,
        kf: bool,
        payload: &'a [u8],
    ) -> InPacket<'a> {
        InPacket {
            rid: rid.map(Into::into),
            seq,
            timestamp: (ms * 90) as u32,
            arrival: self.t0 + Duration::from_millis(ms),
            keyframe: kf,
            payload,
            codec: Codec::Vp8,
        }
    }
}

#[test]
fn keyframes_are_recognised_per_codec() {
    assert!(starts_keyframe(Codec::Vp8, &vp8(true, 5)));
    assert!(!starts_keyframe(Codec::Vp8, &vp8(false, 5)));
    assert!(!starts_keyframe(Codec::Vp8, &[]));
    // H.264: IDR alone, inside a STAP-A (after an SPS), FU-A start.
    assert!(starts_keyframe(Codec::H264, &[0x65, 1, 2]));
    assert!(starts_keyframe(
        Codec::H264,
        &[0x78, 0, 2, 0x67, 1, 0, 2, 0x65, 9]
    ));
    assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 1]));
    assert!(
        !starts_keyframe(Codec::H264, &[0x7c, 0x05, 1]),
        "FU-A continuation"
    );
    assert!(!starts_keyframe(Codec::H264, &[0x41, 1]), "non-IDR slice");
    assert!(
        !starts_keyframe(Codec::H264, &[0x78, 0, 9, 0x67]),
        "truncated STAP-A"
    );
    // VP9: first packet of a non-predicted frame.
    assert!(starts_keyframe(Codec::Vp9, &[0x08 | 0x80]));
    assert!(!starts_keyframe(Codec::Vp9, &[0x48]));
}

#[test]
fn a_single_layer_passes_through_unchanged() {
    let f = Feed { t0: Instant::now() };
    let mut fwd = Forwarder::new(MediaKind::Video);
    let one = Layers {
        len: 1,
        ..Default::default()
    };
    let p = vp8(false, 1);
    for seq in 100..110 {
        let v = fwd.forward(&f.pkt(None, seq, seq, false, &p), one);
        assert!(
            matches!(v, Verdict::Write { seq: s, vp8: None, .. } if s == seq),
            "{v:?}"
        );
    }
}

#[test]
fn simulcast_starts_at_a_keyframe_and_switches_without_gaps() {
    let f = Feed { t0: Instant::now() };
    let mut fwd = Forwarder::new(MediaKind::Video);
    let l = layers(&["q", "h"], &[150_000, 500_000]);
    let (delta, key) = (vp8(false, 10), vp8(true, 10));
    // Lowest layer first, and only from its keyframe.
    assert_eq!(
        fwd.forward(&f.pkt(Some("q"), 1000, 0, false, &delta), l),
        Verdict::Drop
    );
    assert_eq!(
        fwd.forward(&f.pkt(Some("h"), 5000, 0, true, &key), l),
        Verdict::Drop
    );
    let Verdict::Write { seq: first, .. } = fwd.forward(&f.pkt(Some("q"), 1001, 0, true, &key), l)
    else {
        panic!("keyframe of the target layer starts forwarding");
    };
    assert_eq!(first, 1001);
    assert!(matches!(
        fwd.forward(&f.pkt(Some("q"), 1002, 33, false, &delta), l),
        Verdict::Write { seq: 1002, .. }
    ));
    // Plenty of bandwidth: the target moves up, but the switch waits for a keyframe of "h".
    assert_eq!(fwd.choose(Some(2_000_000)), Some("h".into()));
    assert!(fwd.awaiting_keyframe());
    assert_eq!(
        fwd.forward(&f.pkt(Some("h"), 5001, 33, false, &delta), l),
        Verdict::Drop
    );
    let v = fwd.forward(&f.pkt(Some("h"), 5002, 66, true, &vp8(true, 300)), l);
    let Verdict::Write {
        seq,
        timestamp,
        vp8: patch,
        switched,
    } = v
    else {
        panic!("{v:?}")
    };
    assert_eq!(
        seq, 1003,
        "continues right after the last packet of the old layer"
    );
    assert!(
        switched && patch.is_some(),
        "picture id rewritten to continue"
    );
    assert!(timestamp > (33 * 90) as u32);
    // The old layer is dropped now; late packets of the new one from before the switch too.
    assert_eq!(
        fwd.forward(&f.pkt(Some("q"), 1003, 66, false, &delta), l),
        Verdict::Drop
    );
    assert_eq!(
        fwd.forward(&f.pkt(Some("h"), 5000, 66, false, &delta), l),
        Verdict::Drop
    );
    assert!(matches!(
        fwd.forward(&f.pkt(Some("h"), 5003, 99, false, &delta), l),
        Verdict::Write { seq: 1004, .. }
    ));
    assert!(!fwd.awaiting_keyframe());
    assert_eq!(fwd.switches, 1);
}

#[test]
fn layer_choice_follows_the_budget_and_the_requested_size() {
    let mut fwd = Forwarder::new(MediaKind::Video);
    fwd.layers = layers(&["q", "h", "f"], &[150_000, 500_000, 1_500_000]);
    assert_eq!(
        fwd.choose(None),
        Some("f".into()),
        "no estimate: best layer"
    );
    assert_eq!(fwd.choose(Some(1_000_000)), Some("h".into()));
    assert_eq!(
        fwd.choose(Some(100_000)),
        Some("q".into()),
        "lowest even when nothing fits"
    );
    // Upswitch needs headroom: 1.5 Mbit/s does not fit a budget of 1.6 (1.5 × 1.15 > 1.6).
    assert_eq!(fwd.choose(Some(1_600_000)), Some("h".into()));
    fwd.max_layer = 0;
    assert_eq!(
        fwd.choose(Some(10_000_000)),
        Some("q".into()),
        "thumbnail requested"
    );
}

#[test]
fn the_meter_orders_layers_by_measured_rate() {
    let t0 = Instant::now();
    let mut m = LayerMeter::default();
    for i in 0..100u64 {
        let at = t0 + Duration::from_millis(i * 11);
        m.observe(Some("f".into()), 1200, at);
        m.observe(Some("q".into()), 200, at);
    }
    assert_eq!(m.layers.len, 2);
    assert_eq!(m.layers.rids[0], Some("q".into()));
    assert!(m.layers.bps[1] > m.layers.bps[0] * 4);
}

proptest! {
    /// Whatever the interleaving of layers, keyframes and targets, the
    /// subscriber never sees a sequence number twice.
    #[test]
    fn rewritten_sequence_numbers_never_repeat(
        steps in proptest::collection::vec((0usize..3, any::<bool>(), 0usize..4, 0u8..8), 1..400)
    ) {
        let t0 = Instant::now();
        let l = layers(&["q", "h", "f"], &[100, 200, 300]);
        let mut fwd = Forwarder::new(MediaKind::Video);
        let mut next = [100u64, 30_000, 65_000];
        let mut owner = std::collections::HashMap::new();
        for (i, (layer, kf, retarget, skip)) in steps.into_iter().enumerate() {
            if retarget < 3 {
                fwd.target = l.rids[retarget];
            }
            // Occasionally reorder: step a layer backwards.
            let seq = if skip == 0 { next[layer].saturating_sub(2) } else { next[layer] };
            next[layer] += 1;
            let payload = vp8(kf, i as u16);
            let p = InPacket {
                rid: l.rids[layer],
                seq,
                timestamp: i as u32 * 3000,
                arrival: t0 + Duration::from_millis(i as u64),
                keyframe: kf,
                payload: &payload,
                codec: Codec::Vp8,
            };
            if let Verdict::Write { seq, .. } = fwd.forward(&p, l) {
                // A duplicate input may repeat its number; distinct inputs must not collide.
                let first = *owner.entry(seq).or_insert((layer, p.seq));
                prop_assert_eq!(first, (layer, p.seq), "sequence number {} written for two packets", seq);
            }
        }
    }
}
