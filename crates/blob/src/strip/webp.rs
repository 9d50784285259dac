//! WebP metadata filter. The RIFF header (with the file's size) comes first,
//! and the format puts EXIF and XMP chunks after the image data, so a
//! streaming filter cannot shrink the file without holding all of it. Instead
//! each EXIF/XMP chunk is turned into a `JUNK` chunk of the same size filled
//! with zeros (readers skip unknown chunks), the VP8X "has Exif/XMP" flags are
//! cleared, and anything after the RIFF end is dropped. The RIFF size stays
//! right without rewriting the header.

use bytes::Bytes;

use super::{Fill, StripError};

/// VP8X flags byte: Exif (bit 3) and XMP (bit 2) present.
const VP8X_META_FLAGS: u8 = 0x08 | 0x04;
static ZEROS: [u8; 8192] = [0; 8192];

#[derive(Debug)]
enum State {
    Riff(Fill<12>),
    Header(Fill<8>),
    Flags { remaining: u64 },
    Pass { remaining: u64 },
    Zero { remaining: u64 },
    Done,
}

#[derive(Debug)]
pub struct WebpFilter {
    state: State,
    /// Bytes of chunks still to come inside the RIFF.
    riff_left: u64,
    offset: u64,
    stripped: bool,
}

impl Default for WebpFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl WebpFilter {
    pub fn new() -> Self {
        WebpFilter {
            state: State::Riff(Fill::new()),
            riff_left: 0,
            offset: 0,
            stripped: false,
        }
    }

    pub fn stripped(&self) -> bool {
        self.stripped
    }

    /// An error `back` bytes before `input[at]` (a header may have started
    /// in an earlier piece).
    fn err_back(&self, at: usize, back: u64, reason: impl Into<String>) -> StripError {
        StripError {
            offset: (self.offset + at as u64).saturating_sub(back),
            ..self.err(0, reason)
        }
    }

    fn err(&self, at: usize, reason: impl Into<String>) -> StripError {
        StripError {
            format: "WebP",
            offset: self.offset + at as u64,
            reason: reason.into(),
        }
    }

    fn after_chunk(&self) -> State {
        if self.riff_left == 0 {
            State::Done
        } else {
            State::Header(Fill::new())
        }
    }

    pub fn push(&mut self, input: Bytes, out: &mut impl Extend<Bytes>) -> Result<(), StripError> {
        let mut i = 0;
        let n = input.len();
        while i < n {
            match &mut self.state {
                State::Riff(fill) => {
                    if let Some(h) = fill.fill(&input, &mut i) {
                        if &h[..4] != b"RIFF" || &h[8..] != b"WEBP" {
                            return Err(self.err_back(i, 12, "not a RIFF WEBP header"));
                        }
                        let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as u64;
                        if size < 4 + 8 {
                            let reason = format!("RIFF size {size} leaves no room for a chunk");
                            return Err(self.err_back(i, 8, reason));
                        }
                        self.riff_left = size - 4;
                        out.extend(Some(Bytes::copy_from_slice(&h)));
                        self.state = State::Header(Fill::new());
                    }
                }
                State::Header(fill) => {
                    if let Some(h) = fill.fill(&input, &mut i) {
                        let fourcc = [h[0], h[1], h[2], h[3]];
                        let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as u64;
                        // Chunks are padded to an even size.
                        let payload = size + (size & 1);
                        if 8 + payload > self.riff_left {
                            return Err(self.err_back(
                                i,
                                8,
                                format!(
                                    "chunk {:?} of {size} bytes runs past the RIFF end",
                                    String::from_utf8_lossy(&fourcc)
                                ),
                            ));
                        }
                        self.riff_left -= 8 + payload;
                        match &fourcc {
                            b"EXIF" | b"XMP " => {
                                self.stripped = true;
                                let mut junk = h;
                                junk[..4].copy_from_slice(b"JUNK");
                                out.extend(Some(Bytes::copy_from_slice(&junk)));
                                self.state = State::Zero { remaining: payload };
                            }
                            b"VP8X" => {
                                out.extend(Some(Bytes::copy_from_slice(&h)));
                                self.state = State::Flags { remaining: payload };
                            }
                            _ => {
                                out.extend(Some(Bytes::copy_from_slice(&h)));
                                self.state = State::Pass { remaining: payload };
                            }
                        }
                        if let State::Zero { remaining: 0 }
                        | State::Pass { remaining: 0 }
                        | State::Flags { remaining: 0 } = self.state
                        {
                            self.state = self.after_chunk();
                        }
                    }
                }
                State::Flags { remaining } => {
                    let flags = input[i];
                    if flags & VP8X_META_FLAGS != 0 {
                        self.stripped = true;
                    }
                    out.extend(Some(Bytes::copy_from_slice(&[flags & !VP8X_META_FLAGS])));
                    i += 1;
                    let remaining = *remaining - 1;
                    self.state = if remaining == 0 {
                        self.after_chunk()
                    } else {
                        State::Pass { remaining }
                    };
                }
                State::Pass { remaining } => {
                    let take = (*remaining).min((n - i) as u64) as usize;
                    out.extend(Some(input.slice(i..i + take)));
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = self.after_chunk();
                    }
                }
                State::Zero { remaining } => {
                    let take = (*remaining).min((n - i) as u64).min(ZEROS.len() as u64) as usize;
                    out.extend(Some(Bytes::from_static(&ZEROS[..take])));
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = self.after_chunk();
                    }
                }
                State::Done => {
                    self.stripped = true;
                    i = n;
                }
            }
        }
        self.offset += n as u64;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), StripError> {
        match &self.state {
            State::Done => Ok(()),
            _ => Err(self.err(
                0,
                "ends before the RIFF end its header announces (truncated image)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sniff::Kind;
    use crate::strip::strip_all;
    use crate::strip::test_util::strip_pieces;
    use proptest::prelude::*;

    fn chunk(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = fourcc.to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        if data.len() % 2 == 1 {
            v.push(0);
        }
        v
    }

    fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
        let body = chunks.concat();
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
        v.extend_from_slice(b"WEBP");
        v.extend(body);
        v
    }

    #[test]
    fn blanks_exif_and_xmp_in_place() {
        let vp8x = |flags: u8| chunk(b"VP8X", &[flags, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let input = riff(&[
            vp8x(0x2C),
            chunk(b"ICCP", b"icc"),
            chunk(b"VP8L", &[0x2F; 21]),
            chunk(b"EXIF", b"MM\0*GPS 51.5N"),
            chunk(b"XMP ", b"<x:xmpmeta/>"),
        ]);
        let (out, stripped) = strip_all(Kind::Webp, &input).unwrap();
        assert!(stripped);
        let expected = riff(&[
            vp8x(0x20),
            chunk(b"ICCP", b"icc"),
            chunk(b"VP8L", &[0x2F; 21]),
            chunk(b"JUNK", &[0; 13]),
            chunk(b"JUNK", &[0; 12]),
        ]);
        assert_eq!(out, expected);
        assert_eq!(out.len(), input.len());
        let mut trailing = input.clone();
        trailing.extend_from_slice(b"appended");
        assert_eq!(strip_all(Kind::Webp, &trailing).unwrap().0, expected);
        let clean = riff(&[chunk(b"VP8L", &[0x2F; 21])]);
        assert_eq!(
            strip_all(Kind::Webp, &clean).unwrap(),
            (clean.clone(), false)
        );
    }

    #[test]
    fn malformed_files_are_errors() {
        let clean = riff(&[chunk(b"VP8L", &[0x2F; 21])]);
        assert!(strip_all(Kind::Webp, &clean[..clean.len() - 1]).is_err());
        let mut long = clean.clone();
        long[16..20].copy_from_slice(&1000u32.to_le_bytes());
        let e = strip_all(Kind::Webp, &long).unwrap_err();
        assert!(e.to_string().contains("runs past the RIFF end"), "{e}");
        assert!(strip_all(Kind::Webp, b"RIFF\x04\0\0\0WEBP").is_err());
    }

    proptest! {
        #[test]
        fn any_piece_boundaries_give_the_same_output(cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
            let input = riff(&[
                chunk(b"VP8X", &[0x0C, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                chunk(b"VP8L", &[0x2F; 21]),
                chunk(b"EXIF", &[1u8; 9000]),
            ]);
            prop_assert_eq!(strip_pieces(Kind::Webp, &input, &cuts).unwrap(), strip_all(Kind::Webp, &input).unwrap());
        }

        #[test]
        fn garbage_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let data = [&b"RIFF\xff\0\0\0WEBP"[..], &tail].concat();
            let _ = strip_pieces(Kind::Webp, &data, &cuts);
        }
    }
}
