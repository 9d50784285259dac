//! A small audio SDP (RFC 4566) for offer/answer (RFC 3264) with trunks:
//! G.711 (PCMU 0, PCMA 8) and telephone-event (RFC 4733), over plain RTP
//! (`RTP/AVP`) or SDES-keyed SRTP (`RTP/SAVP` with RFC 4568 `a=crypto`).
//! Other media lines are kept only so an answer can refuse them with port
//! 0, as RFC 3264 6 requires (same number and order of m-lines).
//!
//! SDES keys travel in the SDP text: nothing here prints them (parsed keys
//! are [`MasterKey`]s, whose `Debug` is redacted, and [`Negotiated`]'s
//! `Debug` leaves its SDP out).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use continuum_rtp::SrtpKeys;
use continuum_rtp::srtp::{KEY_MATERIAL_LEN, MasterKey, Suite};
use std::fmt::Write as _;
use std::net::IpAddr;
use thiserror::Error;
use zeroize::Zeroizing;

/// The tag of the crypto line in our SDES offers.
const OFFER_CRYPTO_TAG: u32 = 1;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("bad SDP line: {0}")]
    BadLine(&'static str),
    #[error("no connection address for audio")]
    NoConnection,
    #[error("no audio stream")]
    NoAudio,
    /// Neither PCMU nor PCMA offered: the endpoint answers 488.
    #[error("no common codec")]
    NoCommonCodec,
    /// `RTP/SAVP` without a crypto line we can use (488).
    #[error(
        "no supported SDES crypto suite (AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32 with an inline key, no MKI or session parameters)"
    )]
    NoCryptoSuite,
    /// DTLS-SRTP (`UDP/TLS/RTP/SAVP`) or another transport we do not speak (488).
    #[error("unsupported media transport {0} (RTP/AVP or RTP/SAVP with SDES only)")]
    Transport(String),
}

impl SdpError {
    /// The SIP Warning (RFC 3261 20.43) for a 488 refusing the offer.
    pub fn warning(&self) -> (u16, String) {
        let code = match self {
            SdpError::Transport(_) => 302,
            SdpError::NoCommonCodec | SdpError::NoAudio => 305,
            SdpError::NoCryptoSuite => 399,
            _ => 399,
        };
        (code, self.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for an offered one (RFC 3264 6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
}

/// `a=crypto` (RFC 4568 SDES). `Debug` shows no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    /// The first `inline:` key||salt, when it decodes to 30 bytes.
    pub key: Option<MasterKey>,
    /// Whether a key carries an MKI (`|n:len`; we use none).
    pub mki: bool,
    /// More than one key, or session parameters (KDR, UNENCRYPTED_SRTP...).
    pub extra: bool,
}

impl Crypto {
    /// The suite, when this line is one we can use.
    pub fn usable(&self) -> Option<Suite> {
        let suite = Suite::from_name(&self.suite)?;
        (self.key.is_some() && !self.mki && !self.extra).then_some(suite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    pub port: u16,
    pub proto: String,
    /// Payload types in the offerer's preference order.
    pub payload_types: Vec<u8>,
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` by payload type (telephone-event's `0-15`).
    pub fmtp: Vec<(u8, String)>,
    pub direction: Direction,
    pub ptime: Option<u32>,
    pub crypto: Vec<Crypto>,
    /// `a=rtcp` port (RFC 3605), when not port + 1.
    pub rtcp_port: Option<u16>,
    /// Media-level `c=`, else the session's.
    pub connection: Option<IpAddr>,
}

impl Audio {
    /// The encoding name of a payload type (static types by number).
    pub fn encoding(&self, pt: u8) -> Option<String> {
        if let Some(m) = self.rtpmaps.iter().find(|m| m.payload_type == pt) {
            return Some(m.encoding.to_ascii_uppercase());
        }
        match pt {
            0 => Some("PCMU".into()),
            8 => Some("PCMA".into()),
            _ => None,
        }
    }

    /// The telephone-event payload type at 8 kHz, if offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.rtpmaps
            .iter()
            .find(|m| m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000)
            .map(|m| m.payload_type)
            .filter(|pt| self.payload_types.contains(pt))
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// The `o=` line's value: a changed version means a new offer, the same
    /// one a session refresh.
    pub origin: String,
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// The first audio stream.
    pub audio: Option<Audio>,
    /// Every m-line's media and index (to refuse non-audio ones).
    pub media: Vec<String>,
}

impl Sdp {
    pub fn parse(bytes: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SdpError::NotUtf8)?;
        let mut sdp = Sdp {
            origin: String::new(),
            connection: None,
            audio: None,
            media: Vec::new(),
        };
        // Inside the audio stream we took (attributes go to it).
        let mut in_audio = false;
        // A session-level direction is the default for the media (RFC 4566).
        let mut session_direction = Direction::SendRecv;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (kind, value) = line.split_once('=').ok_or(SdpError::BadLine("no '='"))?;
            match kind {
                "o" => sdp.origin = value.to_string(),
                "c" => {
                    let addr = parse_connection(value)?;
                    match (&mut sdp.audio, in_audio) {
                        (Some(a), true) => a.connection = Some(addr),
                        _ if sdp.media.is_empty() => sdp.connection = Some(addr),
                        _ => {}
                    }
                }
                "m" => {
                    let mut parts = value.split_whitespace();
                    let media = parts.next().ok_or(SdpError::BadLine("m= without media"))?;
                    sdp.media.push(media.to_string());
                    in_audio = false;
                    if media == "audio" && sdp.audio.is_none() {
                        let port = parts
                            .next()
                            .and_then(|p| p.split('/').next())
                            .and_then(|p| p.parse::<u16>().ok())
                            .ok_or(SdpError::BadLine("m= port"))?;
                        let proto = parts.next().ok_or(SdpError::BadLine("m= proto"))?;
                        let payload_types = parts
                            .map(|p| {
                                p.parse::<u8>()
                                    .map_err(|_| SdpError::BadLine("m= payload type"))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        sdp.audio = Some(Audio {
                            port,
                            proto: proto.to_string(),
                            payload_types,
                            rtpmaps: Vec::new(),
                            fmtp: Vec::new(),
                            direction: session_direction,
                            ptime: None,
                            crypto: Vec::new(),
                            rtcp_port: None,
                            connection: None,
                        });
                        in_audio = true;
                    }
                }
                "a" => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    let direction = match name {
                        "sendrecv" => Some(Direction::SendRecv),
                        "sendonly" => Some(Direction::SendOnly),
                        "recvonly" => Some(Direction::RecvOnly),
                        "inactive" => Some(Direction::Inactive),
                        _ => None,
                    };
                    let Some(audio) = sdp.audio.as_mut().filter(|_| in_audio) else {
                        if sdp.media.is_empty()
                            && let Some(d) = direction
                        {
                            session_direction = d;
                        }
                        continue;
                    };
                    if let Some(d) = direction {
                        audio.direction = d;
                        continue;
                    }
                    parse_audio_attribute(audio, name, arg)?;
                }
                _ => {}
            }
        }
        Ok(sdp)
    }

    /// The audio stream's remote address (media `c=` else session `c=`).
    pub fn audio_addr(&self) -> Option<(IpAddr, u16)> {
        let audio = self.audio.as_ref()?;
        Some((audio.connection.or(self.connection)?, audio.port))
    }

    /// On hold: the remote sends only or nothing, or the old RFC 2543
    /// `c=0.0.0.0` form.
    pub fn is_hold(&self) -> bool {
        let Some(audio) = &self.audio else {
            return false;
        };
        matches!(audio.direction, Direction::SendOnly | Direction::Inactive)
            || audio
                .connection
                .or(self.connection)
                .is_some_and(|a| a.is_unspecified())
    }
}

fn parse_audio_attribute(audio: &mut Audio, name: &str, arg: &str) -> Result<(), SdpError> {
    match name {
        "rtpmap" => {
            let (pt, enc) = arg.split_once(' ').ok_or(SdpError::BadLine("rtpmap"))?;
            let pt = pt
                .parse::<u8>()
                .map_err(|_| SdpError::BadLine("rtpmap payload type"))?;
            let mut parts = enc.trim().split('/');
            let encoding = parts.next().unwrap_or("").to_string();
            let clock_rate = parts
                .next()
                .and_then(|r| r.parse::<u32>().ok())
                .ok_or(SdpError::BadLine("rtpmap clock rate"))?;
            audio.rtpmaps.push(RtpMap {
                payload_type: pt,
                encoding,
                clock_rate,
            });
        }
        "fmtp" => {
            let (pt, params) = arg.split_once(' ').ok_or(SdpError::BadLine("fmtp"))?;
            let pt = pt
                .parse::<u8>()
                .map_err(|_| SdpError::BadLine("fmtp payload type"))?;
            audio.fmtp.push((pt, params.trim().to_string()));
        }
        "ptime" => {
            audio.ptime = Some(arg.trim().parse().map_err(|_| SdpError::BadLine("ptime"))?);
        }
        "rtcp" => {
            let port = arg.split_whitespace().next().unwrap_or("");
            audio.rtcp_port = Some(port.parse().map_err(|_| SdpError::BadLine("rtcp"))?);
        }
        "crypto" => {
            // a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY[|lifetime][|MKI:len][;inline:...] [params]
            let mut parts = arg.split_whitespace();
            let tag = parts
                .next()
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or(SdpError::BadLine("crypto tag"))?;
            let suite = parts.next().ok_or(SdpError::BadLine("crypto suite"))?;
            let key_params = parts.next().ok_or(SdpError::BadLine("crypto key params"))?;
            let mut keys = key_params.split(';');
            let first = keys
                .next()
                .and_then(|k| k.strip_prefix("inline:"))
                .ok_or(SdpError::BadLine("crypto key params"))?;
            let mut fields = first.split('|');
            let key = fields.next().and_then(decode_key);
            // After the key: an optional lifetime ("2^31" or a number), then
            // an optional MKI ("1:4", with a colon).
            let mki = fields.any(|f| f.contains(':'));
            audio.crypto.push(Crypto {
                tag,
                suite: suite.to_string(),
                key,
                mki,
                extra: keys.next().is_some() || parts.next().is_some(),
            });
        }
        _ => {}
    }
    Ok(())
}

/// The 30 bytes of an `inline:` key||salt (base64), if it is that.
fn decode_key(text: &str) -> Option<MasterKey> {
    let bytes = Zeroizing::new(BASE64.decode(text).ok()?);
    (bytes.len() == KEY_MATERIAL_LEN)
        .then(|| MasterKey::from_slice(&bytes).ok())
        .flatten()
}

fn encode_key(key: &MasterKey) -> Zeroizing<String> {
    Zeroizing::new(BASE64.encode(key.as_bytes()))
}

/// Whether `proto` is SRTP; an error for transports we do not speak.
fn secure(proto: &str) -> Result<bool, SdpError> {
    match proto.to_ascii_uppercase().as_str() {
        "RTP/AVP" | "RTP/AVPF" => Ok(false),
        "RTP/SAVP" | "RTP/SAVPF" => Ok(true),
        _ => Err(SdpError::Transport(proto.chars().take(40).collect())),
    }
}

fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SdpError::BadLine("c="));
    };
    addr.split('/')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| SdpError::BadLine("c= address"))
}

/// Our side of the media: where we receive RTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    pub addr: IpAddr,
    pub port: u16,
    /// `o=` session id, fixed for the call.
    pub session_id: u64,
    /// `o=` version: bump it for every new offer/answer that changes.
    pub version: u64,
    pub direction: Direction,
    pub ptime: Option<u32>,
}

/// The negotiated result of an answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// PCMU (0) or PCMA (8).
    pub codec: u8,
    pub telephone_event: Option<u8>,
    /// SDES-SRTP keys when the offer was `RTP/SAVP`.
    pub srtp: Option<SrtpKeys>,
    /// The SDP text to send (with our key when SRTP: never log it).
    pub sdp: String,
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiated")
            .field("codec", &self.codec)
            .field("telephone_event", &self.telephone_event)
            .field("srtp", &self.srtp)
            .field("sdp", &format_args!("<{} bytes>", self.sdp.len()))
            .finish()
    }
}

fn ip_kind(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IP4" } else { "IP6" }
}

fn session_head(local: &LocalMedia) -> String {
    let ip = ip_kind(local.addr);
    format!(
        "v=0\r\no=continuum {} {} IN {ip} {}\r\ns=-\r\nc=IN {ip} {}\r\nt=0 0\r\n",
        local.session_id, local.version, local.addr, local.addr
    )
}

/// An offered crypto line we can use: its tag, suite and the offerer's key.
type OfferedCrypto = (u32, Suite, MasterKey);

/// What an offer's audio can be answered with: the codec, and for
/// `RTP/SAVP` the first crypto line we can use (offer order).
fn choose(offer: &Sdp) -> Result<(u8, Option<OfferedCrypto>), SdpError> {
    let audio = offer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    let secure = secure(&audio.proto)?;
    let codec = audio
        .payload_types
        .iter()
        .copied()
        .find(|pt| matches!(audio.encoding(*pt).as_deref(), Some("PCMU") | Some("PCMA")))
        .filter(|_| audio.port != 0)
        .ok_or(SdpError::NoCommonCodec)?;
    if !secure {
        return Ok((codec, None));
    }
    let crypto = audio
        .crypto
        .iter()
        .find_map(|c| Some((c.tag, c.usable()?, c.key.clone()?)))
        .ok_or(SdpError::NoCryptoSuite)?;
    Ok((codec, Some(crypto)))
}

/// Whether [`answer`] can answer `offer` (no keys are made): the reason
/// for a 488 when not.
pub fn check_offer(offer: &Sdp) -> Result<(), SdpError> {
    choose(offer).map(|_| ())
}

/// Answers `offer`: G.711 in the offerer's order, telephone-event (0-15)
/// when offered, the mirrored direction unless `local.direction` asks for
/// less (our hold). An `RTP/SAVP` offer is answered with the first usable
/// crypto line's tag and suite and a fresh key of ours.
pub fn answer(offer: &Sdp, local: &LocalMedia) -> Result<Negotiated, SdpError> {
    answer_with_key(offer, local, None)
}

/// [`answer`], keeping our SRTP key `key` (a re-INVITE) instead of a new one.
pub fn answer_with_key(
    offer: &Sdp,
    local: &LocalMedia,
    key: Option<&MasterKey>,
) -> Result<Negotiated, SdpError> {
    let (codec, crypto) = choose(offer)?;
    let audio = offer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    let te = audio.telephone_event();
    let srtp = crypto.map(|(tag, suite, remote)| {
        let local = key.cloned().unwrap_or_else(MasterKey::random);
        (
            tag,
            SrtpKeys {
                suite,
                local,
                remote,
            },
        )
    });
    let direction = combine(audio.direction.answer(), local.direction);
    let mut sdp = session_head(local);
    for media in &offer.media {
        if media == "audio" {
            break;
        }
        let _ = write!(sdp, "m={media} 0 RTP/AVP 0\r\n");
    }
    let mut pts = vec![codec];
    pts.extend(te);
    let list: Vec<String> = pts.iter().map(u8::to_string).collect();
    let _ = write!(
        sdp,
        "m=audio {} {} {}\r\n",
        local.port,
        audio.proto,
        list.join(" ")
    );
    write_audio_attrs(&mut sdp, codec, te, local.ptime, direction);
    if let Some((tag, keys)) = &srtp {
        write_crypto(&mut sdp, *tag, keys.suite, &keys.local);
    }
    let mut seen_audio = false;
    for media in &offer.media {
        if media == "audio" && !seen_audio {
            seen_audio = true;
            continue;
        }
        if seen_audio {
            let _ = write!(sdp, "m={media} 0 RTP/AVP 0\r\n");
        }
    }
    Ok(Negotiated {
        codec,
        telephone_event: te,
        srtp: srtp.map(|(_, k)| k),
        sdp,
    })
}

fn write_crypto(sdp: &mut String, tag: u32, suite: Suite, key: &MasterKey) {
    let _ = write!(
        sdp,
        "a=crypto:{tag} {} inline:{}\r\n",
        suite.name(),
        encode_key(key).as_str()
    );
}

/// The weaker of two directions (ours may put an offered sendrecv on hold).
fn combine(a: Direction, b: Direction) -> Direction {
    let send = matches!(a, Direction::SendRecv | Direction::SendOnly)
        && matches!(b, Direction::SendRecv | Direction::SendOnly);
    let recv = matches!(a, Direction::SendRecv | Direction::RecvOnly)
        && matches!(b, Direction::SendRecv | Direction::RecvOnly);
    match (send, recv) {
        (true, true) => Direction::SendRecv,
        (true, false) => Direction::SendOnly,
        (false, true) => Direction::RecvOnly,
        (false, false) => Direction::Inactive,
    }
}

fn write_audio_attrs(
    sdp: &mut String,
    codec: u8,
    te: Option<u8>,
    ptime: Option<u32>,
    dir: Direction,
) {
    let name = if codec == 0 { "PCMU" } else { "PCMA" };
    let _ = write!(sdp, "a=rtpmap:{codec} {name}/8000\r\n");
    if let Some(te) = te {
        let _ = write!(
            sdp,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
        );
    }
    if let Some(p) = ptime {
        let _ = write!(sdp, "a=ptime:{p}\r\n");
    }
    let _ = write!(sdp, "a={}\r\n", dir.attribute());
}

/// An offer: PCMU, PCMA and telephone-event 101 over plain RTP.
pub fn offer(local: &LocalMedia) -> String {
    offer_with(local, None)
}

/// An SDES-SRTP offer (`RTP/SAVP`, one `AES_CM_128_HMAC_SHA1_80` crypto
/// line with `key`); check the answer with [`accept_sdes_answer`].
pub fn offer_sdes(local: &LocalMedia, key: &MasterKey) -> String {
    offer_with(local, Some(key))
}

fn offer_with(local: &LocalMedia, key: Option<&MasterKey>) -> String {
    offer_g711(local, &[0, 8], true, key)
}

/// An offer of the G.711 payload types in `codecs` (0 PCMU, 8 PCMA, in
/// that order; anything else is left out, and an empty list offers both),
/// with telephone-event 101 when `telephone_event`, over SDES-SRTP with
/// `key`: a B2BUA's second leg offers what its caller offered.
pub fn offer_g711(
    local: &LocalMedia,
    codecs: &[u8],
    telephone_event: bool,
    key: Option<&MasterKey>,
) -> String {
    let mut pts: Vec<u8> = Vec::with_capacity(3);
    for pt in codecs {
        if matches!(pt, 0 | 8) && !pts.contains(pt) {
            pts.push(*pt);
        }
    }
    if pts.is_empty() {
        pts = vec![0, 8];
    }
    let mut sdp = session_head(local);
    let proto = if key.is_some() { "RTP/SAVP" } else { "RTP/AVP" };
    let mut list: Vec<String> = pts.iter().map(u8::to_string).collect();
    if telephone_event {
        list.push("101".into());
    }
    let _ = write!(sdp, "m=audio {} {proto} {}\r\n", local.port, list.join(" "));
    for pt in &pts {
        let name = if *pt == 0 { "PCMU" } else { "PCMA" };
        let _ = write!(sdp, "a=rtpmap:{pt} {name}/8000\r\n");
    }
    if telephone_event {
        let _ = write!(
            sdp,
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
        );
    }
    if let Some(p) = local.ptime {
        let _ = write!(sdp, "a=ptime:{p}\r\n");
    }
    let _ = write!(sdp, "a={}\r\n", local.direction.attribute());
    if let Some(key) = key {
        write_crypto(&mut sdp, OFFER_CRYPTO_TAG, Suite::AesCm128HmacSha1_80, key);
    }
    sdp
}

/// Checks an answer to our SDES offer ([`offer_sdes`] with `key`): the
/// codec, and the keys (the answer must be `RTP/SAVP` and accept our crypto
/// line, with its own key).
pub fn accept_sdes_answer(answer: &Sdp, key: &MasterKey) -> Result<(u8, SrtpKeys), SdpError> {
    let codec = accept_answer(answer)?;
    let audio = answer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    if !secure(&audio.proto)? {
        return Err(SdpError::NoCryptoSuite);
    }
    let (suite, remote) = audio
        .crypto
        .iter()
        .filter(|c| c.tag == OFFER_CRYPTO_TAG)
        .find_map(|c| Some((c.usable()?, c.key.clone()?)))
        .filter(|(suite, _)| *suite == Suite::AesCm128HmacSha1_80)
        .ok_or(SdpError::NoCryptoSuite)?;
    Ok((
        codec,
        SrtpKeys {
            suite,
            local: key.clone(),
            remote,
        },
    ))
}

/// Checks an answer to our offer: the codec it chose (one we offered).
pub fn accept_answer(answer: &Sdp) -> Result<u8, SdpError> {
    let audio = answer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    audio
        .payload_types
        .iter()
        .copied()
        .find(|pt| matches!(audio.encoding(*pt).as_deref(), Some("PCMU") | Some("PCMA")))
        .ok_or(SdpError::NoCommonCodec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\ns=-\r\nc=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=rtcp:49180\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4\r\na=sendrecv\r\nm=video 51372 RTP/AVP 31\r\n";

    fn local() -> LocalMedia {
        LocalMedia {
            addr: "203.0.113.5".parse().unwrap(),
            port: 30000,
            session_id: 7,
            version: 1,
            direction: Direction::SendRecv,
            ptime: Some(20),
        }
    }

    #[test]
    fn parses_offer() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let audio = sdp.audio.as_ref().unwrap();
        assert_eq!(
            sdp.audio_addr(),
            Some(("192.0.2.101".parse().unwrap(), 49172))
        );
        assert_eq!(audio.payload_types, vec![8, 0, 101]);
        assert_eq!(audio.telephone_event(), Some(101));
        assert_eq!(audio.fmtp, vec![(101, "0-15".to_string())]);
        assert_eq!(audio.ptime, Some(20));
        assert_eq!(audio.rtcp_port, Some(49180));
        assert_eq!(audio.crypto[0].suite, "AES_CM_128_HMAC_SHA1_80");
        assert_eq!(
            audio.crypto[0]
                .key
                .as_ref()
                .map(|k| BASE64.encode(k.as_bytes())),
            Some("PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR".to_string())
        );
        assert!(audio.crypto[0].mki, "|1:4 is an MKI");
        assert_eq!(audio.crypto[0].usable(), None);
        assert!(!format!("{sdp:?}").contains("PS1uQ"), "keys never print");
        assert!(!sdp.is_hold());
        assert_eq!(sdp.media, vec!["audio", "video"]);
    }

    #[test]
    fn answer_keeps_offerer_order_and_refuses_video() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let ans = answer(&sdp, &local()).unwrap();
        assert_eq!(ans.codec, 8, "PCMA first in the offer");
        assert_eq!(ans.telephone_event, Some(101));
        assert!(ans.sdp.contains("m=audio 30000 RTP/AVP 8 101\r\n"));
        assert!(ans.sdp.contains("a=fmtp:101 0-15\r\n"));
        assert!(ans.sdp.ends_with("m=video 0 RTP/AVP 0\r\n"));
        let back = Sdp::parse(ans.sdp.as_bytes()).unwrap();
        assert_eq!(accept_answer(&back), Ok(8));
    }

    #[test]
    fn hold_forms_and_answer_direction() {
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        let sdp = Sdp::parse(hold.as_bytes()).unwrap();
        assert!(sdp.is_hold());
        let ans = answer(&sdp, &local()).unwrap();
        assert!(ans.sdp.contains("a=recvonly\r\n"));
        let old = OFFER.replace("c=IN IP4 192.0.2.101", "c=IN IP4 0.0.0.0");
        assert!(Sdp::parse(old.as_bytes()).unwrap().is_hold());
        let inactive = OFFER.replace("a=sendrecv", "a=inactive");
        assert!(Sdp::parse(inactive.as_bytes()).unwrap().is_hold());
    }

    #[test]
    fn no_g711_is_no_common_codec() {
        let g729 = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        let sdp = Sdp::parse(g729.as_bytes()).unwrap();
        assert_eq!(answer(&sdp, &local()), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn offer_round_trips() {
        let text = offer(&local());
        let sdp = Sdp::parse(text.as_bytes()).unwrap();
        assert_eq!(sdp.audio.unwrap().payload_types, vec![0, 8, 101]);
    }

    #[test]
    fn a_g711_offer_keeps_the_callers_codecs_and_order() {
        let text = offer_g711(&local(), &[8, 18, 0, 8], false, None);
        let audio = Sdp::parse(text.as_bytes()).unwrap().audio.unwrap();
        assert_eq!(audio.payload_types, vec![8, 0]);
        assert_eq!(audio.telephone_event(), None);
        let text = offer_g711(&local(), &[0], true, None);
        let audio = Sdp::parse(text.as_bytes()).unwrap().audio.unwrap();
        assert_eq!(audio.payload_types, vec![0, 101]);
        assert_eq!(audio.telephone_event(), Some(101));
        assert!(!text.contains("PCMA"), "{text}");
        let text = offer_g711(&local(), &[18], true, None);
        let audio = Sdp::parse(text.as_bytes()).unwrap().audio.unwrap();
        assert_eq!(audio.payload_types, vec![0, 8, 101], "nothing left: both");
    }

    const KEY_A: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    fn savp(crypto: &str) -> Sdp {
        let text = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}"
        );
        Sdp::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn savp_answer_takes_the_first_usable_suite_with_a_key_of_ours() {
        let offer = savp(&format!(
            "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_A}{KEY_A}\r\na=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^20|1:4\r\na=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{KEY_A}|2^31\r\na=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}\r\n"
        ));
        assert_eq!(check_offer(&offer), Ok(()));
        let n = answer(&offer, &local()).unwrap();
        let keys = n.srtp.clone().expect("SRTP negotiated");
        assert_eq!(
            keys.suite,
            Suite::AesCm128HmacSha1_32,
            "tag 3: the first usable"
        );
        assert_eq!(BASE64.encode(keys.remote.as_bytes()), KEY_A);
        assert_ne!(keys.local, keys.remote, "our own key");
        assert!(
            n.sdp.contains("m=audio 30000 RTP/SAVP 0 101\r\n"),
            "{}",
            n.sdp
        );
        let ours = format!(
            "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
            BASE64.encode(keys.local.as_bytes())
        );
        assert!(n.sdp.contains(&ours));
        assert_eq!(n.sdp.matches("a=crypto").count(), 1);
        assert!(!format!("{n:?}").contains(&BASE64.encode(keys.local.as_bytes())));
        // A re-INVITE answer keeps our key.
        let again = answer_with_key(&offer, &local(), Some(&keys.local)).unwrap();
        assert_eq!(again.srtp.unwrap().local, keys.local);
        // Fresh keys differ call to call.
        assert_ne!(
            answer(&offer, &local()).unwrap().srtp.unwrap().local,
            keys.local
        );
    }

    #[test]
    fn savp_without_a_usable_crypto_line_or_dtls_is_refused() {
        for crypto in [
            String::new(),
            format!("a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_A}{KEY_A}\r\n"),
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n".to_string(),
            format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A} KDR=1\r\n"),
            format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^20|1:4\r\n"),
        ] {
            let offer = savp(&crypto);
            assert_eq!(
                answer(&offer, &local()),
                Err(SdpError::NoCryptoSuite),
                "{crypto}"
            );
            assert_eq!(check_offer(&offer), Err(SdpError::NoCryptoSuite));
        }
        let (code, text) = SdpError::NoCryptoSuite.warning();
        assert_eq!(code, 399);
        assert!(text.contains("AES_CM_128_HMAC_SHA1_80"));
        let dtls = OFFER.replace("RTP/AVP 8 0 101", "UDP/TLS/RTP/SAVP 8 0 101");
        let sdp = Sdp::parse(dtls.as_bytes()).unwrap();
        assert!(matches!(
            answer(&sdp, &local()),
            Err(SdpError::Transport(_))
        ));
        assert_eq!(check_offer(&sdp).unwrap_err().warning().0, 302);
    }

    #[test]
    fn sdes_offer_and_answer_agree_on_keys() {
        let ours = MasterKey::random();
        let text = offer_sdes(&local(), &ours);
        assert!(text.contains("m=audio 30000 RTP/SAVP 0 8 101\r\n"));
        assert!(text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        let sdes = Sdp::parse(text.as_bytes()).unwrap();
        let answered = answer(&sdes, &local()).unwrap();
        let theirs = answered.srtp.clone().unwrap();
        assert_eq!(theirs.remote, ours);
        let (codec, keys) =
            accept_sdes_answer(&Sdp::parse(answered.sdp.as_bytes()).unwrap(), &ours).unwrap();
        assert_eq!(codec, 0);
        assert_eq!(keys.local, ours);
        assert_eq!(keys.remote, theirs.local);
        // A plain answer to an SDES offer is refused.
        let plain = answer(&Sdp::parse(offer(&local()).as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!(
            accept_sdes_answer(&Sdp::parse(plain.sdp.as_bytes()).unwrap(), &ours),
            Err(SdpError::NoCryptoSuite)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "m=audio x RTP/AVP 0",
            "c=IN IP4",
            "a=rtpmap:300 x/1",
            "\u{0}",
        ] {
            let text = format!("v=0\r\nm=audio 1 RTP/AVP 0\r\n{bad}\r\n");
            let _ = Sdp::parse(text.as_bytes());
        }
        assert!(Sdp::parse(&[0xff, 0xfe]).is_err());
    }
}
