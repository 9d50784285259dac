//! PNG metadata filter: chunk by chunk, dropping the ones that carry text,
//! Exif or timestamps, and anything after IEND. Chunk data streams through as
//! slices, so an IDAT of any size costs nothing extra. CRCs are passed on, not
//! checked: decoders check them, and a dropped chunk's CRC goes with it.

use bytes::Bytes;

use super::{Fill, StripError};

const SIGNATURE: [u8; 8] = *b"\x89PNG\r\n\x1a\n";
/// eXIf: Exif (GPS); tEXt/zTXt/iTXt: free text (author, comments, XMP);
/// tIME: last modification time.
const DROP: [&[u8; 4]; 5] = [b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"];

#[derive(Debug)]
enum State {
    Signature(Fill<8>),
    Header(Fill<8>),
    Pass { remaining: u64, end: bool },
    Skip { remaining: u64 },
    Done,
}

#[derive(Debug)]
pub struct PngFilter {
    state: State,
    offset: u64,
    stripped: bool,
}

impl Default for PngFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl PngFilter {
    pub fn new() -> Self {
        PngFilter {
            state: State::Signature(Fill::new()),
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
            format: "PNG",
            offset: self.offset + at as u64,
            reason: reason.into(),
        }
    }

    pub fn push(&mut self, input: Bytes, out: &mut impl Extend<Bytes>) -> Result<(), StripError> {
        let mut i = 0;
        let n = input.len();
        while i < n {
            match &mut self.state {
                State::Signature(fill) => {
                    if let Some(sig) = fill.fill(&input, &mut i) {
                        if sig != SIGNATURE {
                            return Err(self.err_back(i, 8, "bad signature"));
                        }
                        out.extend(Some(Bytes::from_static(&SIGNATURE)));
                        self.state = State::Header(Fill::new());
                    }
                }
                State::Header(fill) => {
                    if let Some(h) = fill.fill(&input, &mut i) {
                        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                        let kind: [u8; 4] = [h[4], h[5], h[6], h[7]];
                        if len > i32::MAX as u32 {
                            return Err(self.err_back(
                                i,
                                8,
                                format!("chunk length {len} exceeds 2^31-1"),
                            ));
                        }
                        if !kind.iter().all(u8::is_ascii_alphabetic) {
                            return Err(self.err_back(
                                i,
                                4,
                                "chunk type is not four ASCII letters",
                            ));
                        }
                        // Data and CRC.
                        let remaining = len as u64 + 4;
                        if DROP.contains(&&kind) {
                            self.stripped = true;
                            self.state = State::Skip { remaining };
                        } else {
                            out.extend(Some(Bytes::copy_from_slice(&h)));
                            self.state = State::Pass {
                                remaining,
                                end: &kind == b"IEND",
                            };
                        }
                    }
                }
                State::Pass { remaining, end } => {
                    let take = (*remaining).min((n - i) as u64) as usize;
                    out.extend(Some(input.slice(i..i + take)));
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = if *end {
                            State::Done
                        } else {
                            State::Header(Fill::new())
                        };
                    }
                }
                State::Skip { remaining } => {
                    let take = (*remaining).min((n - i) as u64) as usize;
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::Header(Fill::new());
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
            _ => Err(self.err(0, "ends before IEND (truncated image)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sniff::Kind;
    use crate::strip::strip_all;
    use crate::strip::test_util::strip_pieces;
    use proptest::prelude::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(data);
        v.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD]);
        v
    }

    fn sample(with_meta: bool) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        v.extend(chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]));
        if with_meta {
            v.extend(chunk(b"eXIf", b"MM\0*GPS"));
            v.extend(chunk(b"tEXt", b"Author\0Dr X"));
        }
        v.extend(chunk(b"iCCP", b"icc"));
        v.extend(chunk(b"IDAT", &[7u8; 300]));
        if with_meta {
            v.extend(chunk(b"tIME", &[7, 0xE9, 1, 1, 0, 0, 0]));
            v.extend(chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x/>"));
            v.extend(chunk(b"zTXt", b"Comment\0\0zz"));
        }
        v.extend(chunk(b"IDAT", &[8u8; 10]));
        v.extend(chunk(b"IEND", &[]));
        v
    }

    #[test]
    fn drops_text_exif_and_time() {
        let (out, stripped) = strip_all(Kind::Png, &sample(true)).unwrap();
        assert!(stripped);
        assert_eq!(out, sample(false));
        assert_eq!(
            strip_all(Kind::Png, &sample(false)).unwrap(),
            (sample(false), false)
        );
        let mut trailing = sample(false);
        trailing.extend_from_slice(b"<html>polyglot</html>");
        assert_eq!(
            strip_all(Kind::Png, &trailing).unwrap(),
            (sample(false), true)
        );
    }

    #[test]
    fn malformed_files_are_errors() {
        let s = sample(false);
        let e = strip_all(Kind::Png, &s[..s.len() - 3]).unwrap_err();
        assert!(e.to_string().contains("before IEND"), "{e}");
        let mut bad = s.clone();
        bad[12] = b'1';
        assert!(strip_all(Kind::Png, &bad).is_err());
        let mut huge = s.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(strip_all(Kind::Png, &huge).is_err());
    }

    proptest! {
        #[test]
        fn any_piece_boundaries_give_the_same_output(cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
            prop_assert_eq!(strip_pieces(Kind::Png, &sample(true), &cuts).unwrap(), (sample(false), true));
        }

        #[test]
        fn garbage_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let data = [&b"\x89PNG\r\n\x1a\n"[..], &tail].concat();
            let _ = strip_pieces(Kind::Png, &data, &cuts);
        }
    }
}
