//! Chunked sealing: the STREAM construction (Hoang, Reyhanitabar, Rogaway and
//! Vizár, "Online Authenticated-Encryption and its Nonce-Reuse
//! Misuse-Resistance", 2015) over XChaCha20-Poly1305, through RustCrypto's
//! `aead::stream::StreamBE32`.
//!
//! A sealed blob is a header followed by chunks:
//!
//! ```text
//! header  = "CBLB" | version u8 (1) | chunk_len u32 BE | salt [32] | nonce_prefix [19]
//! chunk i = XChaCha20-Poly1305(key = HKDF(tenant key, salt),
//!                              nonce = nonce_prefix | i as u32 BE | last as u8,
//!                              aad = header | identity,
//!                              plaintext bytes [i*chunk_len .. (i+1)*chunk_len]) (+16-byte tag)
//! ```
//!
//! Why each part:
//! - Fixed plaintext chunks let both sides work with one chunk in memory
//!   whatever the blob's size, and every chunk is authenticated before its
//!   plaintext is released.
//! - The chunk index in the nonce makes reordered chunks fail; the "last" flag
//!   in the nonce makes a blob cut at a chunk boundary fail (its final chunk
//!   was sealed as not-last) and one with chunks appended fail too.
//! - A random salt per blob gives every blob its own key (HKDF-SHA256 of the
//!   caller's tenant key), so the nonce prefix could never repeat under one key
//!   even if the random source were weak; the random prefix is belt and braces.
//! - The header and the caller's identity (e.g. `tenant/attachment`) are the
//!   associated data of every chunk: a sealed blob copied under another
//!   attachment's name, or with an edited header, does not open.
//!
//! Both halves are sans-IO: they are fed bytes in pieces of any size and hand
//! back whole sealed (or verified plaintext) chunks as [`Bytes`].

use bytes::Bytes;
use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Version byte written in every header; openers refuse others.
pub const FORMAT_VERSION: u8 = 1;
/// Plaintext bytes per chunk written by [`Sealer::new`].
pub const DEFAULT_CHUNK_LEN: usize = 64 * 1024;
/// Largest chunk an opener accepts from a header. The header is read before
/// anything is authenticated, so this caps what a forged header can make the
/// opener allocate.
pub const MAX_CHUNK_LEN: usize = 4 << 20;
/// Poly1305 tag after every chunk.
pub const TAG_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"CBLB";
const SALT_LEN: usize = 32;
/// 24-byte XChaCha nonce less STREAM's 4-byte counter and 1-byte last flag.
const PREFIX_LEN: usize = 19;
/// Bytes before the first chunk.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 4 + SALT_LEN + PREFIX_LEN;
const KDF_INFO: &[u8] = b"continuum blob v1 chunk key";

type Stream = StreamBE32<XChaCha20Poly1305>;

/// The caller's 32-byte key for sealing blobs (the server derives it from the
/// tenant's data key). Wiped on drop; never printed.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl SealKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        SealKey(Zeroizing::new(bytes))
    }

    /// A random key (tests, benchmarks).
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        SealKey(k)
    }

    /// The per-blob key: HKDF-SHA256 with the blob's salt.
    fn cipher(&self, salt: &[u8; SALT_LEN]) -> XChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(salt), self.0.as_ref());
        let mut k = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so
        // `expand` cannot fail; an all-zero key would only make opens fail.
        let _ = hk.expand(KDF_INFO, k.as_mut());
        XChaCha20Poly1305::new(k.as_ref().into())
    }
}

impl From<Zeroizing<[u8; 32]>> for SealKey {
    fn from(k: Zeroizing<[u8; 32]>) -> Self {
        SealKey(k)
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("chunk_len {0} is outside 1..={MAX_CHUNK_LEN}")]
    ChunkLen(usize),
    #[error("blob is too long to seal: STREAM counts at most 2^32 chunks")]
    TooLong,
    #[error("XChaCha20-Poly1305 refused to seal chunk {0}")]
    Cipher(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed blob header field {field}: {reason}")]
    Header { field: &'static str, reason: String },
    #[error("sealed blob is truncated: it ends inside its header ({len} of {HEADER_LEN} bytes)")]
    ShortHeader { len: usize },
    #[error(
        "sealed blob is truncated: final chunk {index} is {len} bytes, shorter than its {TAG_LEN}-byte tag"
    )]
    ShortChunk { index: u64, len: usize },
    #[error(
        "sealed blob is truncated: it ends after chunk {index}, which was not sealed as the last"
    )]
    Truncated { index: u64 },
    #[error("sealed blob is extended: data follows chunk {index}, which was sealed as the last")]
    Extended { index: u64 },
    #[error(
        "sealed blob chunk {index} failed authentication (altered bytes, reordered chunks, or sealed under another key or identity)"
    )]
    Chunk { index: u64 },
    #[error("sealed blob opener used after it finished or failed")]
    Closed,
}

/// What a finished [`Sealer`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealSummary {
    pub plaintext_len: u64,
    pub sealed_len: u64,
}

/// Sealed size of `plaintext_len` bytes in `chunk_len` chunks (an empty blob
/// still has one, empty, final chunk).
pub fn sealed_len(plaintext_len: u64, chunk_len: usize) -> u64 {
    let chunks = plaintext_len.div_ceil(chunk_len as u64).max(1);
    HEADER_LEN as u64 + plaintext_len + chunks * TAG_LEN as u64
}

fn aad_for(header: &[u8; HEADER_LEN], identity: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + identity.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(identity);
    aad
}

/// Seals a stream of plaintext pieces. Holds at most one chunk of plaintext:
/// a full chunk is sealed when more data arrives (so it is not the last) or in
/// [`Sealer::finish`] (as the last).
pub struct Sealer {
    stream: Stream,
    aad: Vec<u8>,
    header: Option<[u8; HEADER_LEN]>,
    buf: Vec<u8>,
    chunk_len: usize,
    index: u32,
    plaintext_len: u64,
    sealed_len: u64,
}

impl Sealer {
    /// A sealer with [`DEFAULT_CHUNK_LEN`] chunks, a random salt and nonce prefix.
    pub fn new(key: &SealKey, identity: &[u8]) -> Sealer {
        Self::build(key, identity, DEFAULT_CHUNK_LEN)
    }

    pub fn with_chunk_len(
        key: &SealKey,
        identity: &[u8],
        chunk_len: usize,
    ) -> Result<Sealer, SealError> {
        if chunk_len == 0 || chunk_len > MAX_CHUNK_LEN {
            return Err(SealError::ChunkLen(chunk_len));
        }
        Ok(Self::build(key, identity, chunk_len))
    }

    fn build(key: &SealKey, identity: &[u8], chunk_len: usize) -> Sealer {
        let mut salt = [0u8; SALT_LEN];
        let mut prefix = [0u8; PREFIX_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4] = FORMAT_VERSION;
        // chunk_len <= MAX_CHUNK_LEN (checked by the callers) fits in u32.
        header[5..9].copy_from_slice(&(chunk_len as u32).to_be_bytes());
        header[9..9 + SALT_LEN].copy_from_slice(&salt);
        header[9 + SALT_LEN..].copy_from_slice(&prefix);
        Sealer {
            stream: Stream::from_aead(key.cipher(&salt), GenericArray::from_slice(&prefix)),
            aad: aad_for(&header, identity),
            header: Some(header),
            buf: Vec::with_capacity(chunk_len + TAG_LEN),
            chunk_len,
            index: 0,
            plaintext_len: 0,
            sealed_len: 0,
        }
    }

    fn emit_header(&mut self, out: &mut impl Extend<Bytes>) {
        if let Some(h) = self.header.take() {
            self.sealed_len += HEADER_LEN as u64;
            out.extend(Some(Bytes::copy_from_slice(&h)));
        }
    }

    /// Takes plaintext; appends the sealed chunks it completes (the header
    /// first) to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut impl Extend<Bytes>) -> Result<(), SealError> {
        self.emit_header(out);
        while !data.is_empty() {
            if self.buf.len() == self.chunk_len {
                // More plaintext follows, so this chunk is not the last.
                let next = Vec::with_capacity(self.chunk_len + TAG_LEN);
                let chunk = std::mem::replace(&mut self.buf, next);
                self.seal(chunk, false, out)?;
            }
            let take = (self.chunk_len - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            self.plaintext_len += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// Seals what is buffered as the last chunk (possibly empty).
    pub fn finish(mut self, out: &mut impl Extend<Bytes>) -> Result<SealSummary, SealError> {
        self.emit_header(out);
        let chunk = std::mem::take(&mut self.buf);
        self.seal(chunk, true, out)?;
        Ok(SealSummary {
            plaintext_len: self.plaintext_len,
            sealed_len: self.sealed_len,
        })
    }

    fn seal(
        &mut self,
        mut chunk: Vec<u8>,
        last: bool,
        out: &mut impl Extend<Bytes>,
    ) -> Result<(), SealError> {
        // u32::MAX is left for a last chunk only, as aead's Encryptor does.
        if !last && self.index == u32::MAX {
            return Err(SealError::TooLong);
        }
        self.stream
            .encrypt_in_place(self.index, last, &self.aad, &mut chunk)
            .map_err(|_| SealError::Cipher(self.index))?;
        self.index = self.index.wrapping_add(1);
        self.sealed_len += chunk.len() as u64;
        out.extend(Some(Bytes::from(chunk)));
        Ok(())
    }
}

/// Opens a sealed blob fed in pieces of any size; hands out each chunk's
/// plaintext only once that chunk is authenticated. The whole blob is
/// authentic only once [`Opener::finish`] returns `Ok`; anything handed out
/// before an error is authentic but incomplete.
pub struct Opener {
    key: SealKey,
    identity: Vec<u8>,
    state: OpenState,
    plaintext_len: u64,
}

enum OpenState {
    Header(Vec<u8>),
    Body(Box<Body>),
    Closed,
}

struct Body {
    stream: Stream,
    aad: Vec<u8>,
    sealed_chunk_len: usize,
    buf: Vec<u8>,
    index: u64,
}

impl Opener {
    pub fn new(key: &SealKey, identity: &[u8]) -> Opener {
        Opener {
            key: key.clone(),
            identity: identity.to_vec(),
            state: OpenState::Header(Vec::with_capacity(HEADER_LEN)),
            plaintext_len: 0,
        }
    }

    /// Takes sealed bytes; appends the plaintext of every chunk it could
    /// authenticate to `out`. After an error the opener is closed.
    pub fn push(&mut self, data: &[u8], out: &mut impl Extend<Bytes>) -> Result<(), OpenError> {
        let r = self.push_inner(data, out);
        if r.is_err() {
            self.state = OpenState::Closed;
        }
        r
    }

    fn push_inner(
        &mut self,
        mut data: &[u8],
        out: &mut impl Extend<Bytes>,
    ) -> Result<(), OpenError> {
        if let OpenState::Header(h) = &mut self.state {
            let take = (HEADER_LEN - h.len()).min(data.len());
            h.extend_from_slice(&data[..take]);
            data = &data[take..];
            if h.len() < HEADER_LEN {
                return Ok(());
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(h);
            self.state = OpenState::Body(Box::new(self.parse_header(&header)?));
        }
        let body = match &mut self.state {
            OpenState::Body(b) => b,
            OpenState::Header(_) => return Ok(()),
            OpenState::Closed => return Err(OpenError::Closed),
        };
        while !data.is_empty() {
            if body.buf.len() == body.sealed_chunk_len {
                // More follows, so this chunk must not be the last.
                let next = Vec::with_capacity(body.sealed_chunk_len);
                let chunk = std::mem::replace(&mut body.buf, next);
                self.plaintext_len += body.open(chunk, false, out)?;
            }
            let take = (body.sealed_chunk_len - body.buf.len()).min(data.len());
            body.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    fn parse_header(&self, h: &[u8; HEADER_LEN]) -> Result<Body, OpenError> {
        if h[..4] != MAGIC {
            return Err(OpenError::Header {
                field: "magic",
                reason: "not a Continuum sealed blob".into(),
            });
        }
        if h[4] != FORMAT_VERSION {
            return Err(OpenError::Header {
                field: "version",
                reason: format!(
                    "{} is not supported (this build reads {FORMAT_VERSION})",
                    h[4]
                ),
            });
        }
        let chunk_len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
        if chunk_len == 0 || chunk_len > MAX_CHUNK_LEN {
            return Err(OpenError::Header {
                field: "chunk_len",
                reason: format!("{chunk_len} is outside 1..={MAX_CHUNK_LEN}"),
            });
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&h[9..9 + SALT_LEN]);
        let prefix = &h[9 + SALT_LEN..];
        let sealed_chunk_len = chunk_len + TAG_LEN;
        Ok(Body {
            stream: Stream::from_aead(self.key.cipher(&salt), GenericArray::from_slice(prefix)),
            aad: aad_for(h, &self.identity),
            sealed_chunk_len,
            // Grown as bytes arrive rather than sized from the unauthenticated header.
            buf: Vec::new(),
            index: 0,
        })
    }

    /// The input ended: opens the buffered bytes as the last chunk. Returns the
    /// blob's plaintext length.
    pub fn finish(&mut self, out: &mut impl Extend<Bytes>) -> Result<u64, OpenError> {
        let state = std::mem::replace(&mut self.state, OpenState::Closed);
        match state {
            OpenState::Header(h) => Err(OpenError::ShortHeader { len: h.len() }),
            OpenState::Closed => Err(OpenError::Closed),
            OpenState::Body(mut body) => {
                if body.buf.len() < TAG_LEN {
                    return Err(OpenError::ShortChunk {
                        index: body.index,
                        len: body.buf.len(),
                    });
                }
                let chunk = std::mem::take(&mut body.buf);
                self.plaintext_len += body.open(chunk, true, out)?;
                Ok(self.plaintext_len)
            }
        }
    }
}

impl Body {
    fn open(
        &mut self,
        mut chunk: Vec<u8>,
        last: bool,
        out: &mut impl Extend<Bytes>,
    ) -> Result<u64, OpenError> {
        let index = self.index;
        // Past u32::MAX chunks no nonce exists, so nothing there can be authentic.
        let Ok(position) = u32::try_from(index) else {
            return Err(OpenError::Chunk { index });
        };
        if self
            .stream
            .decrypt_in_place(position, last, &self.aad, &mut chunk)
            .is_ok()
        {
            self.index += 1;
            let n = chunk.len() as u64;
            if n > 0 {
                out.extend(Some(Bytes::from(chunk)));
            }
            return Ok(n);
        }
        // Failure path only: tell truncation and extension apart from
        // tampering by trying the other last-flag. Poly1305 is checked before
        // anything is decrypted, so `chunk` still holds the ciphertext.
        let other = self
            .stream
            .decrypt_in_place(position, !last, &self.aad, &mut chunk)
            .is_ok();
        Err(match (other, last) {
            (true, true) => OpenError::Truncated { index },
            (true, false) => OpenError::Extended { index },
            (false, _) => OpenError::Chunk { index },
        })
    }
}

/// Seals `plaintext` in one call (tests, small blobs).
pub fn seal_all(
    key: &SealKey,
    identity: &[u8],
    chunk_len: usize,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut s = Sealer::with_chunk_len(key, identity, chunk_len)?;
    let mut out = Vec::new();
    s.push(plaintext, &mut out)?;
    s.finish(&mut out)?;
    Ok(out.concat())
}

/// Opens a whole sealed blob in one call (tests, small blobs).
pub fn open_all(key: &SealKey, identity: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut o = Opener::new(key, identity);
    let mut out = Vec::new();
    o.push(sealed, &mut out)?;
    o.finish(&mut out)?;
    Ok(out.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &[u8] = b"tenant-1/attachment-1";

    /// Splits `data` at the given cut points (any order, any duplicates).
    fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts {
            out.push(&data[at..c]);
            at = c;
        }
        out.push(&data[at..]);
        out
    }

    fn seal_pieces(key: &SealKey, chunk_len: usize, parts: &[&[u8]]) -> Vec<u8> {
        let mut s = Sealer::with_chunk_len(key, ID, chunk_len).unwrap();
        let mut out = Vec::new();
        for p in parts {
            s.push(p, &mut out).unwrap();
        }
        let summary = s.finish(&mut out).unwrap();
        let sealed = out.concat();
        assert_eq!(summary.sealed_len, sealed.len() as u64);
        sealed
    }

    fn open_pieces(key: &SealKey, parts: &[&[u8]]) -> Result<Vec<u8>, OpenError> {
        let mut o = Opener::new(key, ID);
        let mut out: Vec<Bytes> = Vec::new();
        for p in parts {
            o.push(p, &mut out)?;
        }
        let n = o.finish(&mut out)?;
        let plain = out.concat();
        assert_eq!(n, plain.len() as u64);
        Ok(plain)
    }

    #[test]
    fn empty_and_exact_multiples_round_trip() {
        let k = SealKey::generate();
        for len in [0usize, 1, 15, 16, 17, 32, 48] {
            let msg: Vec<u8> = (0..len as u8).collect();
            let sealed = seal_all(&k, ID, 16, &msg).unwrap();
            assert_eq!(sealed.len() as u64, sealed_len(len as u64, 16), "len {len}");
            assert_eq!(open_all(&k, ID, &sealed).unwrap(), msg, "len {len}");
        }
    }

    #[test]
    fn truncation_at_a_chunk_boundary_is_named() {
        let k = SealKey::generate();
        let sealed = seal_all(&k, ID, 16, &[7u8; 40]).unwrap();
        // Header + two whole chunks of 16+16: the third (last) is cut off.
        let cut = &sealed[..HEADER_LEN + 2 * 32];
        assert_eq!(
            open_all(&k, ID, cut),
            Err(OpenError::Truncated { index: 1 })
        );
        assert_eq!(
            open_all(&k, ID, &sealed[..HEADER_LEN + 5]),
            Err(OpenError::ShortChunk { index: 0, len: 5 })
        );
        assert_eq!(
            open_all(&k, ID, &sealed[..HEADER_LEN - 1]),
            Err(OpenError::ShortHeader {
                len: HEADER_LEN - 1
            })
        );
    }

    #[test]
    fn appended_chunks_are_named() {
        let k = SealKey::generate();
        // A full last chunk followed by more data is recognised as such...
        let sealed = seal_all(&k, ID, 16, &[7u8; 32]).unwrap();
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert_eq!(
            open_all(&k, ID, &longer),
            Err(OpenError::Extended { index: 1 })
        );
        // ...a short one merges with what follows and simply fails.
        let sealed = seal_all(&k, ID, 16, &[7u8; 20]).unwrap();
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert_eq!(
            open_all(&k, ID, &longer),
            Err(OpenError::Chunk { index: 1 })
        );
    }

    #[test]
    fn reordered_chunks_fail() {
        let k = SealKey::generate();
        let sealed = seal_all(&k, ID, 16, &(0..64u8).collect::<Vec<_>>()).unwrap();
        let (h, body) = sealed.split_at(HEADER_LEN);
        let c: Vec<&[u8]> = body.chunks(32).collect();
        let swapped = [h, c[1], c[0], c[2], c[3]].concat();
        assert_eq!(
            open_all(&k, ID, &swapped),
            Err(OpenError::Chunk { index: 0 })
        );
    }

    #[test]
    fn header_fields_are_checked() {
        let k = SealKey::generate();
        let sealed = seal_all(&k, ID, 16, b"hello").unwrap();
        let mut bad = sealed.clone();
        bad[0] = b'X';
        assert!(matches!(
            open_all(&k, ID, &bad),
            Err(OpenError::Header { field: "magic", .. })
        ));
        let mut bad = sealed.clone();
        bad[4] = 9;
        let e = open_all(&k, ID, &bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sealed blob header field version: 9 is not supported (this build reads 1)"
        );
        let mut bad = sealed.clone();
        bad[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            open_all(&k, ID, &bad),
            Err(OpenError::Header {
                field: "chunk_len",
                ..
            })
        ));
        // A different (valid) chunk length changes the AAD: authentication fails.
        let mut bad = sealed.clone();
        bad[5..9].copy_from_slice(&8u32.to_be_bytes());
        assert!(matches!(
            open_all(&k, ID, &bad),
            Err(OpenError::Chunk { .. })
        ));
    }

    #[test]
    fn other_key_or_identity_fails() {
        let k = SealKey::generate();
        let sealed = seal_all(&k, ID, 16, b"x-ray of the left wrist").unwrap();
        assert_eq!(
            open_all(&SealKey::generate(), ID, &sealed),
            Err(OpenError::Chunk { index: 0 })
        );
        assert_eq!(
            open_all(&k, b"tenant-1/attachment-2", &sealed),
            Err(OpenError::Chunk { index: 0 })
        );
    }

    #[test]
    fn a_failed_opener_stays_closed() {
        let k = SealKey::generate();
        let mut o = Opener::new(&k, ID);
        let mut out: Vec<Bytes> = Vec::new();
        assert!(o.push(&[0u8; 100], &mut out).is_err());
        assert_eq!(o.push(b"more", &mut out), Err(OpenError::Closed));
        assert_eq!(o.finish(&mut out), Err(OpenError::Closed));
    }

    #[test]
    fn bad_chunk_len_is_refused() {
        let k = SealKey::generate();
        assert_eq!(
            Sealer::with_chunk_len(&k, ID, 0).err(),
            Some(SealError::ChunkLen(0))
        );
        assert!(Sealer::with_chunk_len(&k, ID, MAX_CHUNK_LEN + 1).is_err());
    }

    proptest! {
        #[test]
        fn round_trips_with_any_boundaries(
            msg in proptest::collection::vec(any::<u8>(), 0..3000),
            chunk_len in 1usize..300,
            seal_cuts in proptest::collection::vec(any::<usize>(), 0..12),
            open_cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let k = SealKey::generate();
            let sealed = seal_pieces(&k, chunk_len, &pieces(&msg, &seal_cuts));
            prop_assert_eq!(sealed.len() as u64, sealed_len(msg.len() as u64, chunk_len));
            prop_assert_eq!(open_pieces(&k, &pieces(&sealed, &open_cuts)).unwrap(), msg);
        }

        #[test]
        fn any_bit_flip_fails(
            msg in proptest::collection::vec(any::<u8>(), 0..600),
            chunk_len in 1usize..100,
            at in any::<usize>(),
            bit in 0u8..8,
        ) {
            let k = SealKey::generate();
            let mut sealed = seal_all(&k, ID, chunk_len, &msg).unwrap();
            let at = at % sealed.len();
            sealed[at] ^= 1 << bit;
            prop_assert!(open_all(&k, ID, &sealed).is_err());
        }

        #[test]
        fn any_truncation_or_extension_fails(
            msg in proptest::collection::vec(any::<u8>(), 0..600),
            chunk_len in 1usize..100,
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            let k = SealKey::generate();
            let sealed = seal_all(&k, ID, chunk_len, &msg).unwrap();
            let cut = cut % sealed.len();
            prop_assert!(open_all(&k, ID, &sealed[..cut]).is_err());
            let mut longer = sealed.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(open_all(&k, ID, &longer).is_err());
        }

        #[test]
        fn garbage_never_panics(
            garbage in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let _ = open_pieces(&SealKey::generate(), &pieces(&garbage, &cuts));
        }
    }
}
