//! SRTP and SRTCP (RFC 3711) for SDES-keyed calls (RFC 4568): the two
//! suites every carrier and softphone offers, `AES_CM_128_HMAC_SHA1_80` and
//! `AES_CM_128_HMAC_SHA1_32`, with key derivation rate 0, no MKI.
//!
//! One [`SrtpContext`] per direction and master key: ours protects what we
//! send, the peer's unprotects what we receive. Receiving tracks each
//! source's rollover counter (RFC 3711 §3.3.1 index estimation) and keeps a
//! 64-packet replay window per source, for SRTP and for SRTCP; nothing about
//! a source is learnt from a packet that failed authentication.
//!
//! Built on the RustCrypto block cipher (`aes`: AES-CM is a counter mode on
//! a 16-byte IV, written out here in a few lines) and `hmac`/`sha1`; tags
//! are compared in constant time (`subtle`). Keys are zeroized on drop and
//! never printed (`Debug` is redacted).

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::collections::HashMap;
use std::fmt;
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Master key length (AES-128).
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length.
pub const MASTER_SALT_LEN: usize = 14;
/// The `inline:` key material of SDES: key || salt.
pub const KEY_MATERIAL_LEN: usize = MASTER_KEY_LEN + MASTER_SALT_LEN;
/// SRTCP's tag is 80 bits in both suites (RFC 4568 §6.2).
const SRTCP_TAG_LEN: usize = 10;
const AUTH_KEY_LEN: usize = 20;
const RTP_HEADER_LEN: usize = 12;
/// RTCP header and sender SSRC: sent in the clear.
const RTCP_CLEAR_LEN: usize = 8;
const REPLAY_WINDOW: u64 = 64;
/// Sources tracked per receiving context (a call has one or two; only
/// authenticated packets create one, so this bounds an authorised peer).
/// A full table refuses new sources rather than forget an old one: a
/// forgotten source's replay window would let its old packets in again
/// (found by the `srtp_unprotect` fuzz target).
const MAX_SOURCES: usize = 16;

const LABEL_RTP_ENCRYPTION: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_ENCRYPTION: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SrtpError {
    #[error("packet too short for SRTP/SRTCP ({0} bytes)")]
    TooShort(usize),
    #[error("not an RTP/RTCP version 2 packet")]
    BadVersion,
    #[error("RTP header runs past the packet")]
    BadHeader,
    #[error("authentication failed")]
    AuthFailed,
    #[error("replayed packet")]
    Replayed,
    #[error("packet too old for the replay window")]
    TooOld,
    #[error("too many SRTP sources in this call (at most {MAX_SOURCES})")]
    TooManySources,
    #[error("SRTCP packet is not encrypted (E bit clear)")]
    NotEncrypted,
    #[error("key material must be {KEY_MATERIAL_LEN} bytes (got {0})")]
    KeyLength(usize),
}

/// An SDES crypto suite (RFC 4568 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suites we speak, in our order of preference.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The SRTP authentication tag length in bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// A master key and salt (SDES `inline:` material). Zeroized on drop;
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    bytes: [u8; KEY_MATERIAL_LEN],
}

impl MasterKey {
    pub fn new(bytes: [u8; KEY_MATERIAL_LEN]) -> Self {
        MasterKey { bytes }
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, SrtpError> {
        let bytes: [u8; KEY_MATERIAL_LEN] = bytes
            .try_into()
            .map_err(|_| SrtpError::KeyLength(bytes.len()))?;
        Ok(MasterKey { bytes })
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; KEY_MATERIAL_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        MasterKey { bytes }
    }

    /// Key || salt, for the SDP `inline:` parameter.
    pub fn as_bytes(&self) -> &[u8; KEY_MATERIAL_LEN] {
        &self.bytes
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..MASTER_KEY_LEN]
    }

    fn salt(&self) -> &[u8] {
        &self.bytes[MASTER_KEY_LEN..]
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Session keys for RTP or RTCP (RFC 3711 §4.3).
struct SessionKeys {
    /// AES-128 with the session encryption key (zeroized on drop by `aes`).
    cipher: Aes128,
    auth: Zeroizing<[u8; AUTH_KEY_LEN]>,
    salt: Zeroizing<[u8; MASTER_SALT_LEN]>,
}

impl SessionKeys {
    fn derive(master: &MasterKey, labels: [u8; 3]) -> Self {
        let prf = Aes128::new_from_slice(master.key()).expect("16-byte key");
        let mut enc = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        let mut auth = Zeroizing::new([0u8; AUTH_KEY_LEN]);
        let mut salt = Zeroizing::new([0u8; MASTER_SALT_LEN]);
        derive(&prf, master.salt(), labels[0], &mut enc[..]);
        derive(&prf, master.salt(), labels[1], &mut auth[..]);
        derive(&prf, master.salt(), labels[2], &mut salt[..]);
        SessionKeys {
            cipher: Aes128::new_from_slice(&enc[..]).expect("16-byte key"),
            auth,
            salt,
        }
    }

    /// XORs the AES-CM keystream for (`ssrc`, `index`) into `data`
    /// (RFC 3711 §4.1.1: IV = salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16).
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt[..]);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        aes_cm(&self.cipher, iv, data);
    }

    fn tag(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.auth[..]).expect("any key length");
        for p in parts {
            mac.update(p);
        }
        let full = mac.finalize().into_bytes();
        out.copy_from_slice(&full[..out.len()]);
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut expected = [0u8; AUTH_KEY_LEN];
        let expected = &mut expected[..tag.len()];
        self.tag(parts, expected);
        bool::from(expected.ct_eq(tag))
    }
}

/// AES in counter mode from `iv` (the low 16 bits count blocks).
fn aes_cm(cipher: &Aes128, iv: [u8; 16], data: &mut [u8]) {
    let base = u128::from_be_bytes(iv);
    for (i, chunk) in data.chunks_mut(16).enumerate() {
        let mut block = Array::from(base.wrapping_add(i as u128).to_be_bytes());
        cipher.encrypt_block(&mut block);
        for (d, k) in chunk.iter_mut().zip(block.iter()) {
            *d ^= k;
        }
    }
}

/// RFC 3711 §4.3.1 with key derivation rate 0: x = label·2^48 ⊕ salt, and
/// the key is AES-CM keystream from IV x·2^16.
fn derive(prf: &Aes128, salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(salt);
    iv[7] ^= label;
    out.fill(0);
    aes_cm(prf, iv, out);
}

/// A 64-packet sliding window over 48-bit (SRTP) or 31-bit (SRTCP) indexes.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    highest: u64,
    /// Bit n: `highest - n` was received.
    mask: u64,
}

impl ReplayWindow {
    fn new(first: u64) -> Self {
        ReplayWindow {
            highest: first,
            mask: 1,
        }
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let age = self.highest - index;
        if age >= REPLAY_WINDOW {
            return Err(SrtpError::TooOld);
        }
        if self.mask & (1 << age) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.mask = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.mask << shift
            };
            self.mask |= 1;
            self.highest = index;
        } else {
            self.mask |= 1 << (self.highest - index);
        }
    }
}

/// What a receiver knows about one source's SRTP stream.
#[derive(Debug, Clone, Copy)]
struct RxStream {
    /// SRTP indexes seen from this source (the highest is ROC·2^16 + s_l).
    rtp: Option<ReplayWindow>,
    /// SRTCP indexes seen from this source.
    rtcp: Option<ReplayWindow>,
}

/// What a sender knows about one of its sources.
#[derive(Debug, Clone, Copy)]
struct TxStream {
    roc: u32,
    last_seq: u16,
}

/// Per-direction counters; `Debug`-printable (no key material).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpStats {
    pub auth_failed: u64,
    pub replayed: u64,
}

/// One direction's SRTP/SRTCP state under one master key.
pub struct SrtpContext {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    rx: HashMap<u32, RxStream>,
    tx: HashMap<u32, TxStream>,
    srtcp_index: u32,
    stats: SrtpStats,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .field("keys", &"<redacted>")
            .field("sources", &self.rx.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl SrtpContext {
    pub fn new(suite: Suite, master: &MasterKey) -> Self {
        SrtpContext {
            suite,
            rtp: SessionKeys::derive(
                master,
                [LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT],
            ),
            rtcp: SessionKeys::derive(
                master,
                [LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT],
            ),
            rx: HashMap::new(),
            tx: HashMap::new(),
            srtcp_index: 0,
            stats: SrtpStats::default(),
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn stats(&self) -> SrtpStats {
        self.stats
    }

    /// Encrypts and authenticates an RTP packet in place (the tag is appended).
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let header = rtp_header_len(packet)?;
        let ssrc = be32(&packet[8..12]);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let tx = self.tx.entry(ssrc).or_insert(TxStream {
            roc: 0,
            last_seq: seq,
        });
        // A sequence number far below the last one wrapped around.
        if seq < tx.last_seq && tx.last_seq - seq > 0x8000 {
            tx.roc = tx.roc.wrapping_add(1);
        }
        if seq > tx.last_seq || tx.last_seq - seq > 0x8000 {
            tx.last_seq = seq;
        }
        let roc = tx.roc;
        let index = (u64::from(roc) << 16) | u64::from(seq);
        self.rtp.apply_keystream(ssrc, index, &mut packet[header..]);
        let mut tag = [0u8; AUTH_KEY_LEN];
        let tag = &mut tag[..self.suite.rtp_tag_len()];
        self.rtp.tag(&[packet, &roc.to_be_bytes()], tag);
        packet.extend_from_slice(tag);
        Ok(())
    }

    /// Authenticates and decrypts an SRTP packet; returns the RTP packet.
    /// A packet that fails is counted and changes nothing.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let result = self.unprotect_rtp_inner(packet);
        self.count(&result);
        result
    }

    fn unprotect_rtp_inner(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        if packet.len() < RTP_HEADER_LEN + tag_len {
            return Err(SrtpError::TooShort(packet.len()));
        }
        let (body, tag) = packet.split_at(packet.len() - tag_len);
        let header = rtp_header_len(body)?;
        let ssrc = be32(&body[8..12]);
        let seq = u16::from_be_bytes([body[2], body[3]]);
        let window = self.rx.get(&ssrc).and_then(|s| s.rtp);
        let roc = match &window {
            Some(w) => estimate_roc((w.highest >> 16) as u32, w.highest as u16, seq),
            // SDES signals no ROC: a new source starts at 0.
            None => 0,
        };
        let index = (u64::from(roc) << 16) | u64::from(seq);
        if let Some(w) = &window {
            w.check(index)?;
        }
        if !self.rtp.verify(&[body, &roc.to_be_bytes()], tag) {
            return Err(SrtpError::AuthFailed);
        }
        self.room_for(ssrc)?;
        let mut out = body.to_vec();
        self.rtp.apply_keystream(ssrc, index, &mut out[header..]);
        match self.rx.get_mut(&ssrc) {
            Some(s) => match &mut s.rtp {
                Some(w) => w.accept(index),
                None => s.rtp = Some(ReplayWindow::new(index)),
            },
            None => self.add_source(
                ssrc,
                RxStream {
                    rtp: Some(ReplayWindow::new(index)),
                    rtcp: None,
                },
            ),
        }
        Ok(out)
    }

    /// Encrypts and authenticates a compound RTCP packet in place (E bit,
    /// SRTCP index and the 80-bit tag are appended).
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < RTCP_CLEAR_LEN {
            return Err(SrtpError::TooShort(packet.len()));
        }
        if packet[0] >> 6 != 2 {
            return Err(SrtpError::BadVersion);
        }
        let ssrc = be32(&packet[4..8]);
        let index = self.srtcp_index;
        self.srtcp_index = (self.srtcp_index + 1) & 0x7fff_ffff;
        self.rtcp
            .apply_keystream(ssrc, u64::from(index), &mut packet[RTCP_CLEAR_LEN..]);
        packet.extend_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let mut tag = [0u8; SRTCP_TAG_LEN];
        self.rtcp.tag(&[packet], &mut tag);
        packet.extend_from_slice(&tag);
        Ok(())
    }

    /// Authenticates and decrypts an SRTCP packet; returns the RTCP packet.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let result = self.unprotect_rtcp_inner(packet);
        self.count(&result);
        result
    }

    fn unprotect_rtcp_inner(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if packet.len() < RTCP_CLEAR_LEN + 4 + SRTCP_TAG_LEN {
            return Err(SrtpError::TooShort(packet.len()));
        }
        if packet[0] >> 6 != 2 {
            return Err(SrtpError::BadVersion);
        }
        let (authed, tag) = packet.split_at(packet.len() - SRTCP_TAG_LEN);
        let (body, e_index) = authed.split_at(authed.len() - 4);
        let e_index = be32(e_index);
        let index = u64::from(e_index & 0x7fff_ffff);
        let ssrc = be32(&body[4..8]);
        if let Some(w) = self.rx.get(&ssrc).and_then(|s| s.rtcp) {
            w.check(index)?;
        }
        if !self.rtcp.verify(&[authed], tag) {
            return Err(SrtpError::AuthFailed);
        }
        self.room_for(ssrc)?;
        if e_index & 0x8000_0000 == 0 {
            // Authenticated but sent in the clear: not what SDES-SRTP
            // negotiates (RFC 3711 makes SRTCP encryption the default).
            return Err(SrtpError::NotEncrypted);
        }
        let mut out = body.to_vec();
        self.rtcp
            .apply_keystream(ssrc, index, &mut out[RTCP_CLEAR_LEN..]);
        match self.rx.get_mut(&ssrc) {
            Some(s) => match &mut s.rtcp {
                Some(w) => w.accept(index),
                None => s.rtcp = Some(ReplayWindow::new(index)),
            },
            None => self.add_source(
                ssrc,
                RxStream {
                    rtp: None,
                    rtcp: Some(ReplayWindow::new(index)),
                },
            ),
        }
        Ok(out)
    }

    /// A packet from `ssrc` may create its source (checked before any
    /// state changes).
    fn room_for(&self, ssrc: u32) -> Result<(), SrtpError> {
        if self.rx.len() >= MAX_SOURCES && !self.rx.contains_key(&ssrc) {
            return Err(SrtpError::TooManySources);
        }
        Ok(())
    }

    fn add_source(&mut self, ssrc: u32, stream: RxStream) {
        self.rx.insert(ssrc, stream);
    }

    fn count<T>(&mut self, result: &Result<T, SrtpError>) {
        match result {
            Err(SrtpError::AuthFailed) => self.stats.auth_failed += 1,
            Err(SrtpError::Replayed | SrtpError::TooOld) => self.stats.replayed += 1,
            _ => {}
        }
    }
}

/// RFC 3711 §3.3.1: the ROC of a packet with sequence number `seq`, given
/// the highest sequence number `s_l` received so far and its ROC. (With
/// ROC 0 nothing came before, so a packet "from before the wrap" is one far
/// ahead.)
fn estimate_roc(roc: u32, s_l: u16, seq: u16) -> u32 {
    if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            // Before the wrap; with ROC 0 there is no "before": a jump ahead.
            roc.checked_sub(1).unwrap_or(roc)
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc.wrapping_add(1)
    } else {
        roc
    }
}

/// Header length (fixed part, CSRCs and extension) of an RTP packet.
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER_LEN {
        return Err(SrtpError::TooShort(packet.len()));
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::BadVersion);
    }
    let mut len = RTP_HEADER_LEN + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len..len + 4).ok_or(SrtpError::BadHeader)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if len > packet.len() {
        return Err(SrtpError::BadHeader);
    }
    Ok(len)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests;
