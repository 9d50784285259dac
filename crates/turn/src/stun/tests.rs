use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 5769 §2.1: sample request (short-term credentials).
#[test]
fn rfc5769_sample_request() {
    let m = hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
         00 24 00 04 6e 00 01 ff
         80 29 00 08 93 2f f9 b1 51 26 3b 36
         00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
         00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
         80 28 00 04 e5 7a 3b cf");
    let msg = Message::parse(&m).expect("valid, fingerprint checked");
    assert_eq!((msg.class, msg.method), (Class::Request, method::BINDING));
    assert_eq!(msg.str_attr(attr::USERNAME), Some("evtj:h6vY"));
    assert_eq!(msg.str_attr(attr::SOFTWARE), Some("STUN test client"));
    assert!(msg.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    assert!(!msg.verify_integrity(b"wrong"));
    // One flipped bit anywhere breaks the fingerprint.
    let mut bad = m.clone();
    bad[30] ^= 1;
    assert_eq!(Message::parse(&bad).unwrap_err(), StunError::Fingerprint);
}

/// RFC 5769 §2.2 and §2.3: responses with IPv4 and IPv6 XOR-MAPPED-ADDRESS.
#[test]
fn rfc5769_responses() {
    let v4 = hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 08 00 01 a1 47 e1 12 a6 43
         00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
         80 28 00 04 c0 7d 4c 96");
    let m = Message::parse(&v4).unwrap();
    assert_eq!(m.class, Class::Success);
    let a = m
        .xor_address(m.attr(attr::XOR_MAPPED_ADDRESS).unwrap())
        .unwrap();
    assert_eq!(a, "192.0.2.1:32853".parse().unwrap());
    assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));

    let v6 = hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
         00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
         80 28 00 04 c8 fb 0b 4c");
    let m = Message::parse(&v6).unwrap();
    let a = m
        .xor_address(m.attr(attr::XOR_MAPPED_ADDRESS).unwrap())
        .unwrap();
    assert_eq!(
        a,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap()
    );
    assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
}

/// RFC 5769 §2.4: long-term credentials (key = MD5(user:realm:password)).
#[test]
fn rfc5769_long_term_request() {
    let m = hex(
        "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
         00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66",
    );
    let msg = Message::parse(&m).unwrap();
    assert_eq!(msg.str_attr(attr::USERNAME), Some("マトリックス"));
    assert_eq!(msg.str_attr(attr::REALM), Some("example.org"));
    assert_eq!(
        msg.str_attr(attr::NONCE),
        Some("f//499k954d6OL34oL9FSTvy64sA")
    );
    let key = crate::auth::long_term_key("マトリックス", "example.org", "TheMatrIX");
    assert!(msg.verify_integrity(&key));
}

#[test]
fn built_messages_parse_back() {
    let tx = [7u8; 12];
    let key = b"secret";
    let m = Builder::new(Class::Success, method::ALLOCATE, tx)
        .xor_address(
            attr::XOR_RELAYED_ADDRESS,
            "203.0.113.5:50000".parse().unwrap(),
        )
        .xor_address(
            attr::XOR_MAPPED_ADDRESS,
            "[2001:db8::1]:4000".parse().unwrap(),
        )
        .u32_attr(attr::LIFETIME, 600)
        .error(486, "Allocation Quota Reached")
        .integrity(key)
        .fingerprint();
    let p = Message::parse(&m).unwrap();
    assert_eq!(
        (p.class, p.method, p.transaction),
        (Class::Success, method::ALLOCATE, tx)
    );
    assert_eq!(p.u32_attr(attr::LIFETIME), Some(600));
    assert_eq!(
        p.xor_address(p.attr(attr::XOR_MAPPED_ADDRESS).unwrap())
            .unwrap(),
        "[2001:db8::1]:4000".parse().unwrap()
    );
    assert!(p.verify_integrity(key));
    for class in [
        Class::Request,
        Class::Indication,
        Class::Success,
        Class::Error,
    ] {
        for method in [1u16, 3, 4, 6, 7, 8, 9, 0xfff] {
            let b = Builder::new(class, method, tx).finish();
            let p = Message::parse(&b).unwrap();
            assert_eq!((p.class, p.method), (class, method));
        }
    }
}

#[test]
fn channel_data_frames() {
    let mut out = Vec::new();
    encode_channel_data(0x4001, b"hello", true, &mut out);
    assert_eq!(out.len(), 12, "padded to 4 for TCP");
    assert_eq!(stream_frame_len(&out), Some(12));
    assert_eq!(parse_channel_data(&out), Some((0x4001, &b"hello"[..])));
    assert!(
        parse_channel_data(&[0x40, 0x01, 0, 9, 1]).is_none(),
        "truncated"
    );
    assert!(
        is_channel_data(&[0x7f, 0xff, 0, 0]),
        "0x7FFF is RFC 5766's last channel (coturn's client picks it)"
    );
    assert!(!is_channel_data(&[0x80, 0x00, 0, 0]), "RTP is not");
}

proptest! {
    /// Anything at all: parse never panics, and what parses re-encodes.
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::parse(&data);
        let _ = parse_channel_data(&data);
        let _ = stream_frame_len(&data);
    }

    /// Valid messages with random attributes survive an encode/parse round trip.
    #[test]
    fn round_trip(
        method in 0u16..0x1000,
        tx in any::<[u8; 12]>(),
        attrs in proptest::collection::vec((0x8030u16..0xffff, proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
        port in any::<u16>(),
        ip in any::<[u8; 16]>(),
    ) {
        let peer = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port);
        let mut b = Builder::new(Class::Request, method, tx).xor_address(attr::XOR_PEER_ADDRESS, peer);
        for (k, v) in &attrs {
            b = b.attr(*k, v);
        }
        let bytes = b.integrity(b"k").fingerprint();
        let m = Message::parse(&bytes).unwrap();
        prop_assert_eq!(m.method, method);
        prop_assert_eq!(m.xor_address(m.attr(attr::XOR_PEER_ADDRESS).unwrap()).unwrap(), peer);
        for (k, v) in &attrs {
            prop_assert!(m.attrs(*k).any(|x| x == &v[..]));
        }
        prop_assert!(m.verify_integrity(b"k"));
    }
}
