use super::*;
use crate::goertzel::power;
use crate::packet::RtpPacket;
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const SDP: &str = "192.0.2.10:4000";
const NAT: &str = "198.51.100.7:31000";

fn session(t0: Instant, ssrc: u32, remote: &str) -> MediaSession {
    let mut cfg = SessionConfig::new(addr(remote), ssrc);
    cfg.initial_sequence = 65530;
    cfg.initial_timestamp = 1000;
    cfg.wall_clock = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    MediaSession::new(cfg, t0)
}

fn outputs(s: &mut MediaSession) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn transmits(s: &mut MediaSession) -> Vec<Transmit> {
    outputs(s)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn rtp(seq: u16, ts: u32, ssrc: u32, pt: u8) -> Vec<u8> {
    RtpHeader {
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
        ..Default::default()
    }
    .to_vec(&[0xff; 160])
    .unwrap()
}

fn sine(start: usize, freq: f64) -> [i16; 160] {
    let mut f = [0i16; 160];
    for (i, s) in f.iter_mut().enumerate() {
        let n = (start + i) as f64;
        *s = (8000.0 * (2.0 * std::f64::consts::PI * freq * n / 8000.0).sin()) as i16;
    }
    f
}

#[test]
fn packetizes_with_timestamps_sequence_and_marker() {
    let t0 = Instant::now();
    let mut s = session(t0, 0x1111, SDP);
    for i in 0..10 {
        s.push_pcm(t0 + ms(20 * i), &[0; 160]);
    }
    // A pause: the next packet starts a talkspurt and the clock caught up.
    s.push_pcm(t0 + ms(20 * 20), &[0; 160]);
    let tx = transmits(&mut s);
    assert_eq!(tx.len(), 11);
    let parsed: Vec<_> = tx
        .iter()
        .map(|t| RtpPacket::parse(&t.bytes).unwrap())
        .collect();
    assert!(
        tx.iter()
            .all(|t| t.dest == addr(SDP) && t.socket == Socket::Rtp)
    );
    assert!(parsed[0].marker);
    assert!(parsed[1..10].iter().all(|p| !p.marker));
    for (i, p) in parsed[..10].iter().enumerate() {
        assert_eq!(p.sequence, 65530u16.wrapping_add(i as u16));
        assert_eq!(p.timestamp, 1000 + 160 * i as u32);
        assert_eq!(p.payload_type, 0);
        assert_eq!(p.payload, &[0xff; 160]);
        assert_eq!(p.ssrc, 0x1111);
    }
    assert!(parsed[10].marker);
    assert_eq!(parsed[10].sequence, 65530u16.wrapping_add(10));
    assert_eq!(parsed[10].timestamp, 1000 + 160 * 20);
    assert_eq!(s.stats().rtp_out, 11);
}

#[test]
fn latches_to_the_first_valid_source_and_drops_others() {
    let t0 = Instant::now();
    let mut s = session(t0, 1, SDP);
    // Wrong payload type does not latch.
    s.handle_datagram(t0, addr("203.0.113.5:9"), &rtp(1, 0, 99, 96));
    assert_eq!(s.remote(), addr(SDP));
    assert_eq!(s.stats().unknown_payload, 1);
    s.handle_datagram(t0, addr(NAT), &rtp(1, 0, 42, 0));
    assert_eq!(s.remote(), addr(NAT));
    assert_eq!(
        outputs(&mut s),
        [Output::Event(Event::Latched { addr: addr(NAT) })]
    );
    // The same SSRC, and another one, from elsewhere: dropped.
    s.handle_datagram(t0, addr("203.0.113.5:9"), &rtp(2, 160, 42, 0));
    s.handle_datagram(t0, addr("203.0.113.5:9"), &rtp(2, 160, 43, 0));
    assert_eq!(s.stats().wrong_source, 2);
    assert_eq!(s.stats().rtp_in, 1);
    s.push_pcm(t0, &[0; 160]);
    assert_eq!(transmits(&mut s)[0].dest, addr(NAT));
    // Garbage is counted, not fatal.
    s.handle_datagram(t0, addr(NAT), &[1, 2, 3]);
    assert_eq!(s.stats().malformed, 1);
}

#[test]
fn relatches_to_a_new_stream_once_the_old_source_is_quiet() {
    let t0 = Instant::now();
    let mut s = session(t0, 1, SDP);
    s.handle_datagram(t0, addr(NAT), &rtp(1, 0, 42, 0));
    outputs(&mut s);
    let moved = addr("198.51.100.8:40000");
    // While the old source still talks, the new one is refused.
    for i in 0..10u16 {
        let now = t0 + ms(20 * u64::from(i));
        s.handle_datagram(now, addr(NAT), &rtp(2 + i, 160, 42, 0));
        s.handle_datagram(now, moved, &rtp(500 + i, 0, 77, 0));
    }
    assert_eq!(s.remote(), addr(NAT));
    // The old source stops; after the quiet time and a few packets in
    // sequence, the new stream takes over.
    let mut relatched = None;
    for i in 10..60u16 {
        let now = t0 + ms(200 + 20 * u64::from(i));
        s.handle_datagram(now, moved, &rtp(500 + i, 160 * u32::from(i), 77, 0));
        if relatched.is_none() && s.remote() == moved {
            relatched = Some(i);
        }
    }
    assert!(relatched.is_some());
    assert!(outputs(&mut s).contains(&Output::Event(Event::Relatched {
        from: addr(NAT),
        to: moved
    })));
    // And the old one is now the stranger.
    s.handle_datagram(t0 + ms(5000), addr(NAT), &rtp(100, 0, 42, 0));
    assert_eq!(s.remote(), moved);
}

#[test]
fn dtmf_end_to_end_one_digit_each() {
    let t0 = Instant::now();
    let mut a = session(t0, 1, "10.0.0.2:5000");
    let mut b = session(t0, 2, "10.0.0.1:5000");
    a.send_dtmf(t0, '5', ms(100)).unwrap();
    a.send_dtmf(t0, '#', ms(80)).unwrap();
    assert_eq!(
        a.send_dtmf(t0, 'x', ms(80)),
        Err(SessionError::Dtmf(dtmf::DtmfError::NotADigit('x')))
    );
    let mut digits = Vec::new();
    let mut now = t0;
    for _ in 0..30 {
        a.push_pcm(now, &[0; 160]);
        a.handle_timeout(now);
        for t in transmits(&mut a) {
            if t.socket == Socket::Rtp {
                // Every packet twice: duplicates must not double digits.
                b.handle_datagram(now, addr("10.0.0.1:5000"), &t.bytes);
                b.handle_datagram(now, addr("10.0.0.1:5000"), &t.bytes);
            }
        }
        b.handle_timeout(now);
        for o in outputs(&mut b) {
            if let Output::Dtmf(d) = o {
                digits.push(d);
            }
        }
        now += ms(20);
    }
    let got: Vec<_> = digits.iter().map(|d| d.digit.unwrap()).collect();
    assert_eq!(got, ['5', '#']);
    assert_eq!(digits[0].duration, ms(100));
    assert_eq!(a.stats().dtmf_out, 2);
    assert_eq!(b.stats().dtmf_in, 2);
}

#[test]
fn dtmf_pauses_audio_and_shares_the_clock() {
    let t0 = Instant::now();
    let mut a = session(t0, 1, SDP);
    a.push_pcm(t0, &[0; 160]);
    a.send_dtmf(t0 + ms(10), '1', ms(60)).unwrap();
    let mut now = t0 + ms(20);
    for _ in 0..10 {
        a.handle_timeout(now);
        a.push_pcm(now, &[0; 160]);
        now += ms(20);
    }
    let pts: Vec<(u8, bool, u32)> = transmits(&mut a)
        .iter()
        .filter(|t| t.socket == Socket::Rtp)
        .map(|t| {
            let p = RtpPacket::parse(&t.bytes).unwrap();
            (p.payload_type, p.marker, p.timestamp)
        })
        .collect();
    // Audio, then the event (start marked, one timestamp), then audio again
    // as a new talkspurt with the clock having run on.
    assert_eq!(pts[0], (0, true, 1000));
    assert_eq!(pts[1], (101, true, 1160));
    let event: Vec<_> = pts.iter().filter(|p| p.0 == 101).collect();
    assert!(event.len() >= 4 && event.iter().all(|p| p.2 == 1160));
    let resumed = pts.iter().find(|p| p.0 == 0 && p.2 > 1000).unwrap();
    assert!(resumed.1 && resumed.2 > 1160 + 480);
}

#[test]
fn hold_sends_nothing_and_resume_marks_a_talkspurt() {
    let t0 = Instant::now();
    let mut s = session(t0, 1, SDP);
    s.push_pcm(t0, &[0; 160]);
    s.set_direction(t0, Direction::RecvOnly);
    assert_eq!(s.send_dtmf(t0, '1', ms(100)), Err(SessionError::NotSending));
    for i in 1..5 {
        s.push_pcm(t0 + ms(20 * i), &[0; 160]);
    }
    assert_eq!(transmits(&mut s).len(), 1);
    s.set_direction(t0, Direction::SendRecv);
    s.push_pcm(t0 + ms(100), &[0; 160]);
    let tx = transmits(&mut s);
    let p = RtpPacket::parse(&tx[0].bytes).unwrap();
    assert!(p.marker);
    assert_eq!(p.timestamp, 1000 + 5 * 160);
    assert_eq!(p.sequence, 65531);
    // Put on hold the other way: decoded audio is silence.
    s.set_direction(t0, Direction::SendOnly);
    assert_eq!(s.pull_decoded(t0 + ms(120)), [0; 160]);
}

#[test]
fn media_timeout_then_resumed() {
    let t0 = Instant::now();
    let mut s = session(t0, 1, SDP);
    s.handle_datagram(t0, addr(NAT), &rtp(1, 0, 42, 0));
    outputs(&mut s);
    let mut now = t0;
    let mut events = Vec::new();
    while now < t0 + Duration::from_secs(40) {
        now = s.poll_timeout().unwrap().max(now);
        s.handle_timeout(now);
        events.extend(outputs(&mut s).into_iter().filter_map(|o| match o {
            Output::Event(e) => Some((now, e)),
            _ => None,
        }));
        now += ms(1);
    }
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0],
        (t0 + Duration::from_secs(30), Event::MediaTimeout)
    );
    s.handle_datagram(now, addr(NAT), &rtp(2, 160, 42, 0));
    assert_eq!(outputs(&mut s), [Output::Event(Event::MediaResumed)]);
    // On hold (they stop sending): no timeout.
    s.set_direction(now, Direction::SendOnly);
    s.handle_timeout(now + Duration::from_secs(60));
    assert!(
        outputs(&mut s)
            .iter()
            .all(|o| !matches!(o, Output::Event(_)))
    );
}

#[test]
fn rtcp_reports_both_ways_and_rtt() {
    let t0 = Instant::now();
    let a_addr = addr("10.0.0.1:5000");
    let b_addr = addr("10.0.0.2:6000");
    let mut a = session(t0, 0xaaaa, "10.0.0.2:6000");
    let mut b = session(t0, 0xbbbb, "10.0.0.1:5000");
    let mut now = t0;
    let mut a_reports = 0;
    for i in 0..1000u32 {
        // One way of the path takes 30 ms: both reports and media. Loss on
        // every 20th packet from a.
        a.push_pcm(now, &sine(160 * i as usize, 440.0));
        b.push_pcm(now, &[0; 160]);
        a.handle_timeout(now);
        b.handle_timeout(now);
        for t in transmits(&mut a) {
            if t.socket == Socket::Rtcp {
                assert_eq!(t.dest, addr("10.0.0.2:6001"));
                a_reports += 1;
                let rtcp = RtcpPacket::parse_compound(&t.bytes).unwrap();
                assert!(matches!(rtcp[0], RtcpPacket::SenderReport { .. }));
                assert!(matches!(rtcp[1], RtcpPacket::SourceDescription(_)));
                b.handle_datagram(now + ms(30), addr("10.0.0.1:5001"), &t.bytes);
            } else if i % 20 != 7 {
                b.handle_datagram(now + ms(30), a_addr, &t.bytes);
            }
        }
        for t in transmits(&mut b) {
            let src = if t.socket == Socket::Rtcp {
                addr("10.0.0.2:6001")
            } else {
                b_addr
            };
            a.handle_datagram(now + ms(30), src, &t.bytes);
        }
        b.pull_decoded(now);
        a.pull_decoded(now);
        now += ms(20);
    }
    // 20 s at about one report per 5 s.
    assert!((3..=7).contains(&a_reports), "{a_reports}");
    let sa = a.stats();
    let rtt = sa.rtt.expect("rtt from b's report");
    // 2 × 30 ms path; up to 20 ms of it is the loop's own granularity.
    assert!(rtt >= ms(40) && rtt <= ms(90), "{rtt:?}");
    let fraction = sa.remote_fraction_lost.unwrap();
    assert!((8..=20).contains(&fraction), "{fraction}"); // 5 % ≈ 13/256
    let sb = b.stats();
    assert_eq!(sb.lost, 50);
    assert!(sb.rtcp_in >= 3 && sa.rtcp_in >= 3);
    // Close: an RTCP BYE that b reports.
    a.close(now);
    for t in transmits(&mut a) {
        b.handle_datagram(now, addr("10.0.0.1:5001"), &t.bytes);
    }
    assert!(outputs(&mut b).contains(&Output::Event(Event::RemoteBye { reason: None })));
    assert_eq!(a.poll_timeout(), None);
}

/// A 440 Hz tone through encode → RTP → 5 % loss and jitter → jitter
/// buffer → decode → PLC keeps its energy at 440 Hz.
#[test]
fn tone_survives_loss_and_jitter() {
    let t0 = Instant::now();
    let mut tx = session(t0, 1, "10.0.0.2:6000");
    let mut rx = session(t0, 2, "10.0.0.1:5000");
    let mut in_flight: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut rng = 12345u32;
    let mut heard = Vec::new();
    let mut sent = Vec::new();
    for i in 0..500usize {
        let now = t0 + ms(20 * i as u64);
        let frame = sine(160 * i, 440.0);
        sent.extend_from_slice(&frame);
        tx.push_pcm(now, &frame);
        for t in transmits(&mut tx) {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            if t.socket == Socket::Rtp && rng % 100 >= 5 {
                // 0..40 ms of network delay.
                in_flight.push((now + ms(u64::from(rng % 41)), t.bytes));
            }
        }
        in_flight.sort_by_key(|f| f.0);
        let due = in_flight.partition_point(|f| f.0 <= now);
        for (at, bytes) in in_flight.drain(..due) {
            rx.handle_datagram(at, addr("10.0.0.1:5000"), &bytes);
        }
        heard.extend_from_slice(&rx.pull_decoded(now));
    }
    let st = rx.stats();
    assert!(st.playout.concealed > 5, "{st:?}");
    let tail = &heard[heard.len() - 8000 * 8..];
    let tone = power(tail, 440.0, 8000.0);
    let reference = power(&sent[sent.len() - 8000 * 8..], 440.0, 8000.0);
    assert!(tone > 0.7 * reference, "tone {tone} vs {reference}");
    for other in [300.0, 700.0, 1000.0, 2000.0] {
        let p = power(tail, other, 8000.0);
        assert!(p < tone / 100.0, "{other} Hz: {p} vs {tone}");
    }
}

/// SDES-SRTP both ways: a tone and RTCP pass encrypted; a stranger's RTP,
/// a forged packet and a replay are dropped and counted without latching.
#[test]
fn srtp_sessions_carry_a_tone_and_drop_what_does_not_authenticate() {
    use crate::srtp::{MasterKey, Suite};
    let t0 = Instant::now();
    let (ka, kb) = (MasterKey::random(), MasterKey::random());
    let keyed = |ssrc, remote, local: &MasterKey, peer: &MasterKey| {
        let mut cfg = SessionConfig::new(addr(remote), ssrc);
        cfg.wall_clock = SystemTime::UNIX_EPOCH;
        cfg.srtp = Some(SrtpKeys {
            suite: Suite::AesCm128HmacSha1_32,
            local: local.clone(),
            remote: peer.clone(),
        });
        MediaSession::new(cfg, t0)
    };
    let mut a = keyed(0xa, "10.0.0.2:6000", &ka, &kb);
    let mut b = keyed(0xb, "10.0.0.1:5000", &kb, &ka);
    let mut plain = session(t0, 0xc, "10.0.0.2:6000");
    assert!(!format!("{a:?}").contains(&format!("{:?}", &ka.as_bytes()[..4])));
    let mut heard = Vec::new();
    let mut replay = None;
    for i in 0..300usize {
        let now = t0 + ms(20 * i as u64);
        a.push_pcm(now, &sine(160 * i, 440.0));
        a.handle_timeout(now);
        for t in transmits(&mut a) {
            assert!(
                RtpPacket::parse(&t.bytes).map_or(true, |p| p.payload.len() != 160),
                "the wire carries tags"
            );
            let src = if t.socket == Socket::Rtcp {
                "10.0.0.1:5001"
            } else {
                "10.0.0.1:5000"
            };
            if i == 10 && t.socket == Socket::Rtp {
                replay = Some(t.bytes.clone());
            }
            b.handle_datagram(now, addr(src), &t.bytes);
        }
        // Plain RTP from a stranger, first thing: must not latch.
        plain.push_pcm(now, &[1000; 160]);
        for t in transmits(&mut plain) {
            if t.socket == Socket::Rtp && i < 5 {
                b.handle_datagram(now, addr("203.0.113.9:7000"), &t.bytes);
            }
        }
        heard.extend_from_slice(&b.pull_decoded(now));
    }
    b.handle_datagram(t0, addr("10.0.0.1:5000"), &replay.unwrap());
    let st = b.stats();
    assert_eq!(
        b.remote(),
        addr("10.0.0.1:5000"),
        "latched to a, not the stranger"
    );
    assert_eq!(st.auth_failed, 5, "{st:?}");
    assert_eq!(st.replayed, 1, "{st:?}");
    assert!(st.rtp_in >= 295 && st.rtcp_in >= 1, "{st:?}");
    let tail = &heard[heard.len() - 8000 * 4..];
    let tone = power(tail, 440.0, 8000.0);
    assert!(
        tone > power(tail, 1000.0, 8000.0) * 100.0 && tone > 1e6,
        "{tone}"
    );
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(
        datagrams in proptest::collection::vec(
            (0u8..3, proptest::collection::vec(any::<u8>(), 0..200)), 0..40)
    ) {
        let t0 = Instant::now();
        let mut s = session(t0, 1, SDP);
        let sources = [addr(SDP), addr(NAT), addr("192.0.2.10:4001")];
        for (i, (src, mut bytes)) in datagrams.into_iter().enumerate() {
            let now = t0 + ms(10 * i as u64);
            if bytes.len() > 1 && i % 2 == 0 {
                bytes[0] = 0x80; // make RTP more likely
            }
            s.handle_datagram(now, sources[usize::from(src)], &bytes);
            s.handle_timeout(now);
            let _ = s.pull_decoded(now);
            while s.poll_output().is_some() {}
        }
    }
}

#[test]
fn a_codec_change_applies_from_the_next_frame() {
    let t0 = Instant::now();
    let mut s = session(t0, 0x2222, SDP);
    s.push_pcm(t0, &sine(0, 440.0));
    s.set_codec(8, Law::A, Some(101));
    s.push_pcm(t0 + ms(20), &sine(160, 440.0));
    let pts: Vec<u8> = transmits(&mut s)
        .iter()
        .map(|t| RtpPacket::parse(&t.bytes).unwrap().payload_type)
        .collect();
    assert_eq!(pts, vec![0, 8], "PCMU, then PCMA after the re-INVITE");
    // What arrives is decoded as the new codec; the old one is unknown now.
    s.handle_datagram(t0 + ms(40), addr(SDP), &rtp(1, 160, 0x9999, 8));
    s.handle_datagram(t0 + ms(60), addr(SDP), &rtp(2, 320, 0x9999, 0));
    assert_eq!(s.stats().unknown_payload, 1, "{:?}", s.stats());
}
