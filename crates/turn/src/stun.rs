//! STUN (RFC 8489) messages and TURN (RFC 8656) ChannelData: a zero-copy
//! parser (attributes are offsets into the received buffer, no allocation)
//! and a builder that writes straight into one `Vec`.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER: usize = 20;
/// Attributes kept per message; more than this is refused as malformed.
const MAX_ATTRS: usize = 32;

pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    /// RFC 6062 (TCP allocations).
    pub const CONNECT: u16 = 0x00A;
    pub const CONNECTION_BIND: u16 = 0x00B;
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// RFC 6062: names a peer data connection of a TCP allocation.
    pub const CONNECTION_ID: u16 = 0x002A;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Comprehension-required attributes this server understands; any other
    /// in 0x0000–0x7FFF gets a 420 (RFC 8489 §14).
    pub fn understood(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | CONNECTION_ID
                | PRIORITY
                | USE_CANDIDATE
        ) || t >= 0x8000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("shorter than a STUN header")]
    Short,
    #[error("not a STUN message (leading bits or magic cookie)")]
    NotStun,
    #[error("length field {0} does not match the datagram")]
    Length(usize),
    #[error("attribute runs past the end of the message")]
    Truncated,
    #[error("more than {MAX_ATTRS} attributes")]
    TooManyAttributes,
    #[error("FINGERPRINT does not match")]
    Fingerprint,
    #[error("malformed {0} attribute")]
    BadAttribute(&'static str),
}

/// Is this the start of a STUN message (vs ChannelData, RTP, DTLS…)?
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER
        && buf[0] & 0xC0 == 0
        && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) == MAGIC_COOKIE
}

/// Channel numbers accepted: RFC 8656 narrowed them to 0x4000–0x4FFF, but
/// RFC 5766 clients still use its range, 0x4000 through 0x7FFF (coturn's own
/// client picks at random from all of it, and coturn accepts all of it), and
/// the first two bits (01) keep ChannelData distinct from STUN either way.
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// Is this ChannelData?
pub fn is_channel_data(buf: &[u8]) -> bool {
    buf.len() >= 4 && CHANNELS.contains(&u16::from_be_bytes([buf[0], buf[1]]))
}

/// A parsed ChannelData message.
pub fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if !is_channel_data(buf) {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    buf.get(4..4 + len).map(|d| (channel, d))
}

/// Length of the STUN message or (padded) ChannelData frame at the start of
/// a TCP stream buffer, once its header is there.
pub fn stream_frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if buf[0] & 0xC0 == 0 {
        Some(HEADER + len)
    } else {
        // ChannelData over TCP is padded to a multiple of 4 (RFC 8656 §12.5).
        Some(4 + len.div_ceil(4) * 4)
    }
}

pub fn encode_channel_data(channel: u16, data: &[u8], pad: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    if pad {
        out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
    }
}

/// A received STUN message; attribute values borrow from the datagram.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    pub class: Class,
    pub method: u16,
    pub transaction: [u8; 12],
    attrs: [(u16, u16, u16); MAX_ATTRS],
    n_attrs: usize,
    /// Offset of MESSAGE-INTEGRITY, if present.
    integrity_at: Option<usize>,
}

impl<'a> Message<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, StunError> {
        if buf.len() < HEADER {
            return Err(StunError::Short);
        }
        if !is_stun(buf) {
            return Err(StunError::NotStun);
        }
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if !len.is_multiple_of(4) || HEADER + len != buf.len() {
            return Err(StunError::Length(len));
        }
        let t = u16::from_be_bytes([buf[0], buf[1]]);
        let class = match ((t >> 8) & 1, (t >> 4) & 1) {
            (0, 0) => Class::Request,
            (0, 1) => Class::Indication,
            (1, 0) => Class::Success,
            _ => Class::Error,
        };
        let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&buf[8..20]);
        let mut m = Message {
            buf,
            class,
            method,
            transaction,
            attrs: [(0, 0, 0); MAX_ATTRS],
            n_attrs: 0,
            integrity_at: None,
        };
        let mut at = HEADER;
        while at < buf.len() {
            if at + 4 > buf.len() {
                return Err(StunError::Truncated);
            }
            let kind = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let alen = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
            let value = at + 4;
            if value + alen > buf.len() {
                return Err(StunError::Truncated);
            }
            // After MESSAGE-INTEGRITY only FINGERPRINT counts (RFC 8489 §14.5).
            let after_integrity = m.integrity_at.is_some();
            if !after_integrity || kind == attr::FINGERPRINT {
                if m.n_attrs == MAX_ATTRS {
                    return Err(StunError::TooManyAttributes);
                }
                m.attrs[m.n_attrs] = (kind, value as u16, alen as u16);
                m.n_attrs += 1;
            }
            if kind == attr::MESSAGE_INTEGRITY && !after_integrity {
                if alen != 20 {
                    return Err(StunError::BadAttribute("MESSAGE-INTEGRITY"));
                }
                m.integrity_at = Some(at);
            }
            if kind == attr::FINGERPRINT {
                if alen != 4 || value + 4 != buf.len() {
                    return Err(StunError::BadAttribute("FINGERPRINT"));
                }
                let expected = crc32fast::hash(&buf[..at]) ^ 0x5354_554e;
                let got = u32::from_be_bytes([
                    buf[value],
                    buf[value + 1],
                    buf[value + 2],
                    buf[value + 3],
                ]);
                if expected != got {
                    return Err(StunError::Fingerprint);
                }
            }
            at = value + alen.div_ceil(4) * 4;
        }
        Ok(m)
    }

    pub fn attr(&self, kind: u16) -> Option<&'a [u8]> {
        self.attrs[..self.n_attrs]
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, at, len)| &self.buf[*at as usize..(*at + *len) as usize])
    }

    /// Every value of a repeatable attribute (e.g. XOR-PEER-ADDRESS).
    pub fn attrs(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs[..self.n_attrs]
            .iter()
            .filter(move |(k, _, _)| *k == kind)
            .map(|(_, at, len)| &self.buf[*at as usize..(*at + *len) as usize])
    }

    /// Comprehension-required attributes we do not understand (answer 420).
    pub fn unknown_required(&self) -> Vec<u16> {
        self.attrs[..self.n_attrs]
            .iter()
            .map(|(k, _, _)| *k)
            .filter(|k| !attr::understood(*k))
            .collect()
    }

    pub fn has(&self, kind: u16) -> bool {
        self.attr(kind).is_some()
    }

    pub fn str_attr(&self, kind: u16) -> Option<&'a str> {
        self.attr(kind).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn u32_attr(&self, kind: u16) -> Option<u32> {
        let v = self.attr(kind)?;
        (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    /// An XOR-*-ADDRESS value.
    pub fn xor_address(&self, value: &[u8]) -> Result<SocketAddr, StunError> {
        decode_xor_address(value, &self.transaction)
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) under `key`; false when absent.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Some(tag) = self.buf.get(at + 4..at + 24) else {
            return false;
        };
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
        // The length field counts up to and including MESSAGE-INTEGRITY.
        let len = (at + 24 - HEADER) as u16;
        mac.update(&self.buf[0..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&self.buf[4..at]);
        mac.verify_slice(tag).is_ok()
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }
}

fn decode_xor_address(v: &[u8], transaction: &[u8; 12]) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttribute("XOR address"));
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ cookie[i];
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { transaction[i - 4] };
                o[i] = v[4 + i] ^ k;
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => Err(StunError::BadAttribute("XOR address")),
    }
}

/// Builds one STUN message in place.
pub struct Builder {
    buf: Vec<u8>,
    transaction: [u8; 12],
}

impl Builder {
    pub fn new(class: Class, method: u16, transaction: [u8; 12]) -> Self {
        let c = match class {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        };
        let t = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | c;
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&t.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        Builder { buf, transaction }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .resize(self.buf.len() + (4 - value.len() % 4) % 4, 0);
        self
    }

    pub fn u32_attr(self, kind: u16, v: u32) -> Self {
        self.attr(kind, &v.to_be_bytes())
    }

    pub fn xor_address(self, kind: u16, addr: SocketAddr) -> Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let mut v = Vec::with_capacity(20);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.extend_from_slice(&[0, 0x01]);
                v.extend_from_slice(&port.to_be_bytes());
                for (i, b) in ip.octets().iter().enumerate() {
                    v.push(b ^ cookie[i]);
                }
            }
            IpAddr::V6(ip) => {
                v.extend_from_slice(&[0, 0x02]);
                v.extend_from_slice(&port.to_be_bytes());
                for (i, b) in ip.octets().iter().enumerate() {
                    let k = if i < 4 {
                        cookie[i]
                    } else {
                        self.transaction[i - 4]
                    };
                    v.push(b ^ k);
                }
            }
        }
        self.attr(kind, &v)
    }

    pub fn error(self, code: u16, reason: &str) -> Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 under `key`).
    pub fn integrity(mut self, key: &[u8]) -> Self {
        let at = self.buf.len();
        // The length covers the attribute being added.
        let len = (at + 24 - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// Appends FINGERPRINT and returns the message.
    pub fn fingerprint(mut self) -> Vec<u8> {
        let at = self.buf.len();
        let len = (at + 8 - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&self.buf) ^ 0x5354_554e;
        let mut b = self.attr(attr::FINGERPRINT, &crc.to_be_bytes());
        b.set_len();
        b.buf
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.set_len();
        self.buf
    }
}

#[cfg(test)]
mod tests;
