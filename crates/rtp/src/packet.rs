//! RTP (RFC 3550 §5) and RTCP (§6: SR, RR, SDES, BYE) codecs.
//!
//! RTP parsing is zero-copy (a view into the datagram) because it runs for
//! every packet; RTCP is parsed into owned values because it arrives every
//! few seconds and is easier to use that way.

use thiserror::Error;

pub const RTP_VERSION: u8 = 2;
const RTP_HEADER_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    #[error("RTP/RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("CSRC list runs past the datagram")]
    CsrcOverflow,
    #[error("header extension runs past the datagram")]
    ExtensionOverflow,
    #[error("padding length {0} is zero or runs past the payload")]
    BadPadding(u8),
    #[error("RTCP packet length runs past the datagram")]
    RtcpLength,
    #[error("RTCP compound packet must start with SR or RR (found type {0})")]
    RtcpNotReport(u8),
    #[error("malformed RTCP {0} packet")]
    RtcpMalformed(&'static str),
    #[error("too many entries ({0}) for a 5-bit count")]
    TooMany(usize),
}

/// Whether a datagram that is RTP or RTCP is RTCP (RFC 5761 §4: the second
/// byte's low 7 bits are 64..=95 for RTCP types 192..=223; RTP payload types
/// there are forbidden when muxing).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (64..=95).contains(&(buf[1] & 0x7f))
}

/// A parsed RTP packet, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    csrc: &'a [u8],
    /// Profile-defined id and the extension's data (RFC 3550 §5.3.1).
    pub extension: Option<(u16, &'a [u8])>,
    pub payload: &'a [u8],
    /// Padding bytes that followed the payload (0 if none).
    pub padding: u8,
}

impl<'a> RtpPacket<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, PacketError> {
        if buf.len() < RTP_HEADER_LEN {
            return Err(PacketError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != RTP_VERSION {
            return Err(PacketError::BadVersion(version));
        }
        let has_padding = buf[0] & 0x20 != 0;
        let has_extension = buf[0] & 0x10 != 0;
        let csrc_count = usize::from(buf[0] & 0x0f);
        let mut at = RTP_HEADER_LEN;
        let csrc = buf
            .get(at..at + 4 * csrc_count)
            .ok_or(PacketError::CsrcOverflow)?;
        at += csrc.len();
        let extension = if has_extension {
            let head = buf.get(at..at + 4).ok_or(PacketError::ExtensionOverflow)?;
            let id = u16::from_be_bytes([head[0], head[1]]);
            let words = usize::from(u16::from_be_bytes([head[2], head[3]]));
            at += 4;
            let data = buf
                .get(at..at + 4 * words)
                .ok_or(PacketError::ExtensionOverflow)?;
            at += data.len();
            Some((id, data))
        } else {
            None
        };
        let mut end = buf.len();
        let mut padding = 0;
        if has_padding {
            // The last byte counts the padding, itself included.
            padding = buf[end - 1];
            if padding == 0 || usize::from(padding) > end - at {
                return Err(PacketError::BadPadding(padding));
            }
            end -= usize::from(padding);
        }
        Ok(RtpPacket {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: be32(&buf[4..]),
            ssrc: be32(&buf[8..]),
            csrc,
            extension,
            payload: &buf[at..end],
            padding,
        })
    }

    /// The contributing sources, in order.
    pub fn csrcs(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.csrc.chunks_exact(4).map(be32)
    }
}

/// The header fields of an RTP packet to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrcs: Vec<u32>,
    /// Profile id and data; the data is zero-padded to a 32-bit boundary.
    pub extension: Option<(u16, Vec<u8>)>,
    /// Padding bytes to append (0 for none), e.g. to hide payload sizes.
    pub padding: u8,
}

impl RtpHeader {
    /// Appends the packet to `out`.
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), PacketError> {
        if self.csrcs.len() > 15 {
            return Err(PacketError::TooMany(self.csrcs.len()));
        }
        let words = self
            .extension
            .as_ref()
            .map_or(0, |(_, d)| d.len().div_ceil(4));
        if words > usize::from(u16::MAX) {
            return Err(PacketError::ExtensionOverflow);
        }
        let b0 = (RTP_VERSION << 6)
            | (u8::from(self.padding > 0) << 5)
            | (u8::from(self.extension.is_some()) << 4)
            | self.csrcs.len() as u8;
        out.push(b0);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        for c in &self.csrcs {
            out.extend_from_slice(&c.to_be_bytes());
        }
        if let Some((id, data)) = &self.extension {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(words as u16).to_be_bytes());
            out.extend_from_slice(data);
            out.resize(out.len() + (4 * words - data.len()), 0);
        }
        out.extend_from_slice(payload);
        if self.padding > 0 {
            out.resize(out.len() + usize::from(self.padding) - 1, 0);
            out.push(self.padding);
        }
        Ok(())
    }

    pub fn to_vec(&self, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
        let mut out = Vec::with_capacity(RTP_HEADER_LEN + payload.len() + 4 * self.csrcs.len());
        self.write(payload, &mut out)?;
        Ok(out)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

// ---- RTCP ----

pub const RTCP_SR: u8 = 200;
pub const RTCP_RR: u8 = 201;
pub const RTCP_SDES: u8 = 202;
pub const RTCP_BYE: u8 = 203;
const SDES_CNAME: u8 = 1;

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_sequence: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        /// 64-bit NTP timestamp (seconds since 1900 in the high 32 bits).
        ntp: u64,
        rtp_timestamp: u32,
        packet_count: u32,
        octet_count: u32,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    /// Source descriptions; only CNAME is kept (the rest is informational).
    SourceDescription(Vec<(u32, Option<String>)>),
    Bye {
        ssrcs: Vec<u32>,
        reason: Option<String>,
    },
    /// A type we do not interpret (APP, feedback, XR...), skipped whole.
    Other { packet_type: u8 },
}

impl RtcpPacket {
    /// Parses a compound RTCP packet. RFC 3550 §6.1 requires it to start with
    /// SR or RR; anything else is refused, which also screens out most noise.
    pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, PacketError> {
        let mut out = Vec::new();
        let mut rest = buf;
        if rest.is_empty() {
            return Err(PacketError::TooShort(0));
        }
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(PacketError::TooShort(rest.len()));
            }
            let version = rest[0] >> 6;
            if version != RTP_VERSION {
                return Err(PacketError::BadVersion(version));
            }
            let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
            if len > rest.len() {
                return Err(PacketError::RtcpLength);
            }
            let (packet, next) = rest.split_at(len);
            if out.is_empty() && !matches!(packet[1], RTCP_SR | RTCP_RR) {
                return Err(PacketError::RtcpNotReport(packet[1]));
            }
            out.push(Self::parse_one(packet)?);
            rest = next;
        }
        Ok(out)
    }

    fn parse_one(p: &[u8]) -> Result<RtcpPacket, PacketError> {
        let count = usize::from(p[0] & 0x1f);
        let mut end = p.len();
        if p[0] & 0x20 != 0 {
            let pad = usize::from(p[end - 1]);
            if pad == 0 || pad > end - 4 {
                return Err(PacketError::BadPadding(p[end - 1]));
            }
            end -= pad;
        }
        let body = &p[4..end];
        Ok(match p[1] {
            RTCP_SR => {
                if body.len() < 24 + 24 * count {
                    return Err(PacketError::RtcpMalformed("SR"));
                }
                RtcpPacket::SenderReport {
                    ssrc: be32(body),
                    ntp: (u64::from(be32(&body[4..])) << 32) | u64::from(be32(&body[8..])),
                    rtp_timestamp: be32(&body[12..]),
                    packet_count: be32(&body[16..]),
                    octet_count: be32(&body[20..]),
                    reports: report_blocks(&body[24..], count),
                }
            }
            RTCP_RR => {
                if body.len() < 4 + 24 * count {
                    return Err(PacketError::RtcpMalformed("RR"));
                }
                RtcpPacket::ReceiverReport {
                    ssrc: be32(body),
                    reports: report_blocks(&body[4..], count),
                }
            }
            RTCP_SDES => RtcpPacket::SourceDescription(sdes_chunks(body, count)?),
            RTCP_BYE => {
                let ssrcs_len = 4 * count;
                let ssrcs = body
                    .get(..ssrcs_len)
                    .ok_or(PacketError::RtcpMalformed("BYE"))?;
                let reason = match body.get(ssrcs_len) {
                    Some(&n) => {
                        let text = body
                            .get(ssrcs_len + 1..ssrcs_len + 1 + usize::from(n))
                            .ok_or(PacketError::RtcpMalformed("BYE"))?;
                        Some(String::from_utf8_lossy(text).into_owned())
                    }
                    None => None,
                };
                RtcpPacket::Bye {
                    ssrcs: ssrcs.chunks_exact(4).map(be32).collect(),
                    reason,
                }
            }
            other => RtcpPacket::Other { packet_type: other },
        })
    }

    /// Appends the packet to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let start = out.len();
        let (count, packet_type) = match self {
            RtcpPacket::SenderReport { reports, .. } => (reports.len(), RTCP_SR),
            RtcpPacket::ReceiverReport { reports, .. } => (reports.len(), RTCP_RR),
            RtcpPacket::SourceDescription(chunks) => (chunks.len(), RTCP_SDES),
            RtcpPacket::Bye { ssrcs, .. } => (ssrcs.len(), RTCP_BYE),
            RtcpPacket::Other { .. } => return Err(PacketError::RtcpMalformed("unknown")),
        };
        if count > 31 {
            return Err(PacketError::TooMany(count));
        }
        out.extend_from_slice(&[(RTP_VERSION << 6) | count as u8, packet_type, 0, 0]);
        match self {
            RtcpPacket::SenderReport {
                ssrc,
                ntp,
                rtp_timestamp,
                packet_count,
                octet_count,
                reports,
            } => {
                for v in [*ssrc, (ntp >> 32) as u32, *ntp as u32, *rtp_timestamp] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&packet_count.to_be_bytes());
                out.extend_from_slice(&octet_count.to_be_bytes());
                write_blocks(reports, out);
            }
            RtcpPacket::ReceiverReport { ssrc, reports } => {
                out.extend_from_slice(&ssrc.to_be_bytes());
                write_blocks(reports, out);
            }
            RtcpPacket::SourceDescription(chunks) => {
                for (ssrc, cname) in chunks {
                    out.extend_from_slice(&ssrc.to_be_bytes());
                    if let Some(cname) = cname {
                        let text = truncate_utf8(cname, 255);
                        out.push(SDES_CNAME);
                        out.push(text.len() as u8);
                        out.extend_from_slice(text.as_bytes());
                    }
                    // The item list ends with a null octet, then the chunk
                    // is zero-padded to a 32-bit boundary.
                    out.push(0);
                    while !(out.len() - start).is_multiple_of(4) {
                        out.push(0);
                    }
                }
            }
            RtcpPacket::Bye { ssrcs, reason } => {
                for s in ssrcs {
                    out.extend_from_slice(&s.to_be_bytes());
                }
                if let Some(reason) = reason {
                    let text = truncate_utf8(reason, 255);
                    out.push(text.len() as u8);
                    out.extend_from_slice(text.as_bytes());
                    while !(out.len() - start).is_multiple_of(4) {
                        out.push(0);
                    }
                }
            }
            RtcpPacket::Other { .. } => unreachable!("refused above"),
        }
        let words = (out.len() - start) / 4 - 1;
        out[start + 2..start + 4].copy_from_slice(&(words as u16).to_be_bytes());
        Ok(())
    }

    /// Writes a compound packet.
    pub fn write_compound(packets: &[RtcpPacket]) -> Result<Vec<u8>, PacketError> {
        let mut out = Vec::with_capacity(128);
        for p in packets {
            p.write(&mut out)?;
        }
        Ok(out)
    }
}

fn report_blocks(b: &[u8], count: usize) -> Vec<ReportBlock> {
    b.chunks_exact(24)
        .take(count)
        .map(|r| {
            // Sign-extend the 24-bit cumulative count.
            let cumulative = (be32(&r[4..]) << 8) as i32 >> 8;
            ReportBlock {
                ssrc: be32(r),
                fraction_lost: r[4],
                cumulative_lost: cumulative,
                highest_sequence: be32(&r[8..]),
                jitter: be32(&r[12..]),
                last_sr: be32(&r[16..]),
                delay_since_last_sr: be32(&r[20..]),
            }
        })
        .collect()
}

fn write_blocks(reports: &[ReportBlock], out: &mut Vec<u8>) {
    for r in reports {
        out.extend_from_slice(&r.ssrc.to_be_bytes());
        let lost = (r.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
        out.extend_from_slice(&((u32::from(r.fraction_lost) << 24) | lost).to_be_bytes());
        for v in [
            r.highest_sequence,
            r.jitter,
            r.last_sr,
            r.delay_since_last_sr,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn sdes_chunks(body: &[u8], count: usize) -> Result<Vec<(u32, Option<String>)>, PacketError> {
    let malformed = PacketError::RtcpMalformed("SDES");
    let mut chunks = Vec::with_capacity(count.min(31));
    let mut at = 0;
    for _ in 0..count {
        let ssrc = be32(body.get(at..at + 4).ok_or(malformed)?);
        at += 4;
        let mut cname = None;
        loop {
            let kind = *body.get(at).ok_or(malformed)?;
            if kind == 0 {
                // End of items; skip to the next 32-bit boundary.
                at = (at + 4) & !3;
                break;
            }
            let n = usize::from(*body.get(at + 1).ok_or(malformed)?);
            let text = body.get(at + 2..at + 2 + n).ok_or(malformed)?;
            if kind == SDES_CNAME {
                cname = Some(String::from_utf8_lossy(text).into_owned());
            }
            at += 2 + n;
        }
        chunks.push((ssrc, cname));
    }
    Ok(chunks)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_known_packet() {
        // V=2, P=0, X=0, CC=0, M=1, PT=0, seq 0x1234, ts 0xdeadbeef, ssrc 1
        let bytes = [
            0x80, 0x80, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 0xff, 0xfe,
        ];
        let p = RtpPacket::parse(&bytes).unwrap();
        assert!(p.marker);
        assert_eq!(p.payload_type, 0);
        assert_eq!(p.sequence, 0x1234);
        assert_eq!(p.timestamp, 0xdead_beef);
        assert_eq!(p.ssrc, 1);
        assert_eq!(p.payload, &[0xff, 0xfe]);
        assert_eq!(p.csrcs().count(), 0);
        assert!(!is_rtcp(&bytes));
    }

    #[test]
    fn round_trips_csrc_extension_padding() {
        let h = RtpHeader {
            marker: false,
            payload_type: 101,
            sequence: 65535,
            timestamp: 7,
            ssrc: 0xcafe_babe,
            csrcs: vec![1, 2, 3],
            extension: Some((0xbede, vec![1, 2, 3, 4, 5])),
            padding: 3,
        };
        let bytes = h.to_vec(b"hello").unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.payload_type, 101);
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(p.extension, Some((0xbede, &[1, 2, 3, 4, 5, 0, 0, 0][..])));
        assert_eq!(p.payload, b"hello");
        assert_eq!(p.padding, 3);
    }

    #[test]
    fn typed_errors() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(PacketError::TooShort(5)));
        let mut b = [0u8; 12];
        b[0] = 0x40;
        assert_eq!(RtpPacket::parse(&b), Err(PacketError::BadVersion(1)));
        b[0] = 0x81; // one CSRC, none present
        assert_eq!(RtpPacket::parse(&b), Err(PacketError::CsrcOverflow));
        b[0] = 0x90;
        assert_eq!(RtpPacket::parse(&b), Err(PacketError::ExtensionOverflow));
        let mut b = [0u8; 13];
        b[0] = 0xa0;
        b[12] = 2; // two bytes of padding in a one-byte payload area
        assert_eq!(RtpPacket::parse(&b), Err(PacketError::BadPadding(2)));
        b[12] = 0;
        assert_eq!(RtpPacket::parse(&b), Err(PacketError::BadPadding(0)));
    }

    #[test]
    fn rtcp_compound_round_trip() {
        let block = ReportBlock {
            ssrc: 9,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_sequence: 70_000,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        };
        let packets = vec![
            RtcpPacket::SenderReport {
                ssrc: 1,
                ntp: 0x0102_0304_0506_0708,
                rtp_timestamp: 160,
                packet_count: 10,
                octet_count: 1600,
                reports: vec![block],
            },
            RtcpPacket::SourceDescription(vec![(1, Some("call-7@continuum".into()))]),
            RtcpPacket::Bye {
                ssrcs: vec![1],
                reason: Some("hangup".into()),
            },
        ];
        let bytes = RtcpPacket::write_compound(&packets).unwrap();
        assert!(is_rtcp(&bytes));
        assert_eq!(RtcpPacket::parse_compound(&bytes).unwrap(), packets);

        let rr = vec![
            RtcpPacket::ReceiverReport {
                ssrc: 5,
                reports: vec![],
            },
            RtcpPacket::SourceDescription(vec![(5, Some("abc".into())), (6, None)]),
        ];
        let bytes = RtcpPacket::write_compound(&rr).unwrap();
        assert_eq!(RtcpPacket::parse_compound(&bytes).unwrap(), rr);
    }

    #[test]
    fn rtcp_must_start_with_a_report() {
        let bye = RtcpPacket::write_compound(&[RtcpPacket::Bye {
            ssrcs: vec![1],
            reason: None,
        }])
        .unwrap();
        assert_eq!(
            RtcpPacket::parse_compound(&bye),
            Err(PacketError::RtcpNotReport(RTCP_BYE))
        );
        // An RR whose length field claims more than the datagram has.
        let mut rr = RtcpPacket::write_compound(&[RtcpPacket::ReceiverReport {
            ssrc: 1,
            reports: vec![],
        }])
        .unwrap();
        rr[3] = 9;
        assert_eq!(
            RtcpPacket::parse_compound(&rr),
            Err(PacketError::RtcpLength)
        );
    }

    proptest! {
        #[test]
        fn rtp_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = RtpPacket::parse(&bytes) {
                prop_assert!(p.payload.len() <= bytes.len());
                let _ = p.csrcs().count();
            }
        }

        #[test]
        fn rtcp_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RtcpPacket::parse_compound(&bytes);
        }

        #[test]
        fn rtp_round_trip(
            marker in any::<bool>(), pt in 0u8..128, seq in any::<u16>(), ts in any::<u32>(),
            ssrc in any::<u32>(), csrcs in proptest::collection::vec(any::<u32>(), 0..16),
            ext in proptest::option::of((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..12))),
            padding in 0u8..8, payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let h = RtpHeader { marker, payload_type: pt, sequence: seq, timestamp: ts, ssrc,
                csrcs: csrcs.clone(), extension: ext.clone(), padding };
            let bytes = h.to_vec(&payload).unwrap();
            let p = RtpPacket::parse(&bytes).unwrap();
            prop_assert_eq!((p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc),
                (marker, pt, seq, ts, ssrc));
            prop_assert_eq!(p.csrcs().collect::<Vec<_>>(), csrcs);
            prop_assert_eq!(p.payload, &payload[..]);
            prop_assert_eq!(p.extension.map(|(id, d)| (id, d.len())),
                ext.map(|(id, d)| (id, d.len().div_ceil(4) * 4)));
        }
    }
}
