use super::*;
use crate::packet::RtpHeader;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key(k: &str, salt: &str) -> MasterKey {
    let mut b = hex(k);
    b.extend(hex(salt));
    MasterKey::from_slice(&b).unwrap()
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    RtpHeader {
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
        ..Default::default()
    }
    .to_vec(payload)
    .unwrap()
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let cipher = Aes128::new_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
    let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
    let mut stream = vec![0u8; 48];
    aes_cm(&cipher, iv, &mut stream);
    assert_eq!(
        stream,
        hex("E03EAD0935C95E80E166B16DD92B4EB4
             D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0")
    );
}

#[test]
fn rfc3711_b3_key_derivation() {
    let master = key(
        "E1F97A0D3E018BE0D64FA32C06DE4139",
        "0EC675AD498AFEEBB6960B3AABE6",
    );
    let prf = Aes128::new_from_slice(master.key()).unwrap();
    let mut enc = [0u8; 16];
    derive(&prf, master.salt(), LABEL_RTP_ENCRYPTION, &mut enc);
    assert_eq!(enc.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let keys = SessionKeys::derive(&master, [0, 1, 2]);
    assert_eq!(keys.salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    assert_eq!(
        keys.auth.to_vec(),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
}

/// Packets protected by another implementation (webrtc-rs's SRTP test
/// cases: AES_CM_128_HMAC_SHA1_80, SSRC 0, payload 00..05). Their header's
/// first byte is 0 (version unset), which our packet path refuses, so the
/// tag is checked on that header through the session keys.
#[test]
fn matches_an_independent_implementation() {
    let master = key(
        "0dcd213e4cbcf28f017f6994401e2889",
        "62776038c06dc9419f6dd9433e7c",
    );
    let cases = [
        (5000, "6dd37ed599b72d28b1f3a1f00cfbfd08"),
        (5001, "da470b2a745365bd2febdc4b6d23f3de"),
        (5002, "6ea7698d246ddcbfec021cd16076c10e"),
        (5003, "247e96c87d33a2928d138de0769f08dc"),
        (5004, "754328e43a77599b2edf7b12680b5749"),
        (65535, "aff7c2703720839c2c6385150e44ca36"),
    ];
    let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    for (seq, expected) in cases {
        let header = RtpHeader {
            sequence: seq,
            ..Default::default()
        };
        let plain = header.to_vec(&[0, 1, 2, 3, 4, 5]).unwrap();
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        let expected = hex(expected);
        assert_eq!(p[12..18], expected[..6], "seq {seq}: the payload");
        assert_eq!(rx.unprotect_rtp(&p).unwrap(), plain);
        let mut theirs = p[..18].to_vec();
        theirs[0] = 0;
        let mut tag = [0u8; 10];
        tx.rtp.tag(&[&theirs, &0u32.to_be_bytes()], &mut tag);
        assert_eq!(tag[..], expected[6..], "seq {seq}: the tag");
    }
}

/// An SRTCP packet from the same test suite, decrypted.
#[test]
fn srtcp_from_an_independent_implementation() {
    let master = key(
        "fda62595d7f6926f7d9c024cc9209f34",
        "a9651985540b47be2f27a8b88123",
    );
    let encrypted = hex(
        "80c8000666ef91ffcd34c578b28be16bc509d577e4ce5f208021bd667465e95f49e5f5c0684ee56a78077546ed90f6dc9def3bdff279a9d880000001 60c0aeb56f40880e28ba",
    );
    let decrypted = hex(
        "80c8000666ef91ffdf4880dd61a62ed3d8bcdebe000000090000160481ca000666ef91ff0110526e5435436d4a687a7965744178772b0000",
    );
    let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    assert_eq!(rx.unprotect_rtcp(&encrypted).unwrap(), decrypted);
    // Replayed: refused.
    assert_eq!(rx.unprotect_rtcp(&encrypted), Err(SrtpError::Replayed));
}

#[test]
fn both_suites_round_trip_and_tags_have_their_length() {
    for suite in Suite::ALL {
        let master = MasterKey::random();
        let mut tx = SrtpContext::new(suite, &master);
        let mut rx = SrtpContext::new(suite, &master);
        let plain = rtp(7, 0x1234, &[0x55; 160]);
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p.len(), plain.len() + suite.rtp_tag_len());
        assert_ne!(p[12..172], plain[12..], "the payload is encrypted");
        assert_eq!(p[..12], plain[..12], "the header is not");
        assert_eq!(rx.unprotect_rtp(&p).unwrap(), plain);
        let rtcp = hex("80c90001 00001234");
        let mut c = rtcp.clone();
        tx.protect_rtcp(&mut c).unwrap();
        assert_eq!(
            c.len(),
            rtcp.len() + 4 + 10,
            "{suite:?}: SRTCP has an 80-bit tag"
        );
        assert_eq!(rx.unprotect_rtcp(&c).unwrap(), rtcp);
    }
}

#[test]
fn replay_window() {
    let master = MasterKey::random();
    let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    let packets: Vec<Vec<u8>> = (0..200u16)
        .map(|s| {
            let mut p = rtp(s, 9, b"abcd");
            tx.protect_rtp(&mut p).unwrap();
            p
        })
        .collect();
    assert!(rx.unprotect_rtp(&packets[100]).is_ok());
    assert_eq!(rx.unprotect_rtp(&packets[100]), Err(SrtpError::Replayed));
    // Reordered within the window: fine once, then a replay.
    assert!(rx.unprotect_rtp(&packets[40]).is_ok());
    assert_eq!(rx.unprotect_rtp(&packets[40]), Err(SrtpError::Replayed));
    // Older than 64 behind the highest: too old.
    assert_eq!(rx.unprotect_rtp(&packets[36]), Err(SrtpError::TooOld));
    assert!(rx.unprotect_rtp(&packets[199]).is_ok());
    assert_eq!(rx.unprotect_rtp(&packets[120]), Err(SrtpError::TooOld));
    assert!(rx.unprotect_rtp(&packets[150]).is_ok());
    assert_eq!(rx.stats().replayed, 4);
    assert_eq!(rx.stats().auth_failed, 0);
}

#[test]
fn tampering_and_wrong_keys_fail_authentication_and_teach_nothing() {
    let master = MasterKey::random();
    let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_32, &master);
    let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_32, &master);
    let mut p = rtp(1000, 5, &[1; 160]);
    tx.protect_rtp(&mut p).unwrap();
    for i in 0..p.len() {
        let mut bad = p.clone();
        bad[i] ^= 0x01;
        assert!(rx.unprotect_rtp(&bad).is_err(), "a flipped bit {i} passes");
    }
    let mut other = SrtpContext::new(Suite::AesCm128HmacSha1_32, &MasterKey::random());
    assert_eq!(other.unprotect_rtp(&p), Err(SrtpError::AuthFailed));
    // A forged packet far ahead does not move the window: the real one still passes.
    let mut forged = rtp(40_000, 5, &[1; 160]);
    forged.extend_from_slice(&[0; 4]);
    assert_eq!(rx.unprotect_rtp(&forged), Err(SrtpError::AuthFailed));
    assert!(rx.unprotect_rtp(&p).is_ok());
    assert!(rx.stats().auth_failed >= 2);
    let mut c = hex("80c90001 00000005");
    tx.protect_rtcp(&mut c).unwrap();
    let n = c.len();
    c[n - 1] ^= 0x80;
    assert_eq!(rx.unprotect_rtcp(&c), Err(SrtpError::AuthFailed));
    // Short and garbage input: errors, not panics.
    for junk in [&[][..], &[0x80; 5], &[0x90; 20], &[0x8f; 30]] {
        assert!(rx.unprotect_rtp(junk).is_err());
        assert!(rx.unprotect_rtcp(junk).is_err());
    }
}

#[test]
fn rollover_counter_follows_sequence_wrap() {
    let master = MasterKey::random();
    let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    // Four times around the sequence space, with a packet reordered
    // across each wrap.
    let mut seq = 65_000u16;
    let mut held: Option<Vec<u8>> = None;
    for i in 0..200_000u32 {
        let mut p = rtp(seq, 77, &i.to_be_bytes());
        tx.protect_rtp(&mut p).unwrap();
        if seq == 65_535 {
            held = Some(p);
        } else {
            let plain = rx.unprotect_rtp(&p).unwrap_or_else(|e| panic!("{i}: {e}"));
            assert_eq!(&plain[12..], &i.to_be_bytes());
            if seq == 3 {
                assert!(
                    rx.unprotect_rtp(&held.take().unwrap()).is_ok(),
                    "late across the wrap"
                );
            }
        }
        seq = seq.wrapping_add(1);
    }
    assert_eq!(tx.tx[&77].roc, 4);
    assert_eq!(rx.rx[&77].rtp.unwrap().highest >> 16, 4);
}

#[test]
fn estimate_roc_cases() {
    assert_eq!(estimate_roc(5, 100, 101), 5);
    assert_eq!(estimate_roc(5, 100, 65_000), 4, "late from before a wrap");
    assert_eq!(estimate_roc(5, 65_000, 10), 6, "after a wrap");
    assert_eq!(estimate_roc(5, 65_000, 64_000), 5);
    assert_eq!(estimate_roc(0, 100, 65_000), 0, "nothing before ROC 0");
}

#[test]
fn keys_never_print() {
    let master = MasterKey::new([0xab; 30]);
    let ctx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
    for text in [format!("{master:?}"), format!("{ctx:?}")] {
        assert!(!text.to_lowercase().contains("ab, "), "{text}");
        assert!(!text.contains("171"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}

proptest! {
    #[test]
    fn protect_unprotect_round_trip(
        suite in prop_oneof![Just(Suite::AesCm128HmacSha1_80), Just(Suite::AesCm128HmacSha1_32)],
        key in proptest::array::uniform30(any::<u8>()),
        start in any::<u16>(),
        ssrc in any::<u32>(),
        csrcs in proptest::collection::vec(any::<u32>(), 0..4),
        ext in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
    ) {
        let master = MasterKey::new(key);
        let mut tx = SrtpContext::new(suite, &master);
        let mut rx = SrtpContext::new(suite, &master);
        for (i, payload) in payloads.iter().enumerate() {
            let plain = RtpHeader {
                sequence: start.wrapping_add(i as u16),
                ssrc,
                csrcs: csrcs.clone(),
                extension: ext.clone().map(|e| (0xbede, e)),
                ..Default::default()
            }
            .to_vec(payload)
            .unwrap();
            let mut p = plain.clone();
            tx.protect_rtp(&mut p).unwrap();
            prop_assert_eq!(rx.unprotect_rtp(&p).unwrap(), plain.clone());
            let mut c = plain.clone();
            c[1] = 200; // any bytes with version 2 make an SRTCP body
            let rtcp = c.clone();
            tx.protect_rtcp(&mut c).unwrap();
            prop_assert_eq!(rx.unprotect_rtcp(&c).unwrap(), rtcp);
        }
    }

    #[test]
    fn unprotect_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &MasterKey::new([1; 30]));
        let _ = rx.unprotect_rtp(&bytes);
        let _ = rx.unprotect_rtcp(&bytes);
    }
}

#[test]
fn a_full_source_table_refuses_newcomers_and_keeps_every_replay_window() {
    let master = MasterKey::new([7; 30]);
    let suite = Suite::AesCm128HmacSha1_80;
    let (mut tx, mut rx) = (
        SrtpContext::new(suite, &master),
        SrtpContext::new(suite, &master),
    );
    let mut first = rtp(100, 0, b"first source");
    tx.protect_rtp(&mut first).unwrap();
    rx.unprotect_rtp(&first).unwrap();
    // Fifteen more sources fill the table (SRTCP from them, as the fuzzer did).
    for ssrc in 1..MAX_SOURCES as u32 {
        let mut rtcp = vec![0x80, 200, 0, 6];
        rtcp.extend_from_slice(&ssrc.to_be_bytes());
        rtcp.extend_from_slice(&[0; 20]);
        tx.protect_rtcp(&mut rtcp).unwrap();
        rx.unprotect_rtcp(&rtcp).unwrap();
    }
    // A seventeenth authenticated source is refused, not let in by evicting one.
    let mut newcomer = rtp(1, 99, b"one too many");
    tx.protect_rtp(&mut newcomer).unwrap();
    assert!(matches!(
        rx.unprotect_rtp(&newcomer),
        Err(SrtpError::TooManySources)
    ));
    // The first source's window is still there: its packet is still a replay.
    assert!(matches!(rx.unprotect_rtp(&first), Err(SrtpError::Replayed)));
}
