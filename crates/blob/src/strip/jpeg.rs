//! JPEG metadata filter. Marker segments before the image data are read one
//! at a time (each is at most 64 KiB); application segments are kept only if
//! they are known to carry no personal data and to matter for display. The
//! entropy-coded data is scanned for markers with `memchr` and passed on as
//! slices; a marker that is not a restart or a stuffed 0xFF (tables between
//! progressive scans, another SOS, EOI) goes back through segment handling.
//! Everything after EOI is dropped.

use bytes::Bytes;

use super::{Fill, StripError};

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const APP14: u8 = 0xEE;
const COM: u8 = 0xFE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Marker,
    Entropy,
}

#[derive(Debug)]
enum State {
    Soi(Fill<2>),
    /// Expecting 0xFF.
    Marker,
    /// After 0xFF: the marker code (more 0xFF are fill).
    Code,
    Length(u8, Fill<2>),
    Pass {
        remaining: usize,
        next: Next,
    },
    Skip {
        remaining: usize,
    },
    Collect {
        marker: u8,
        remaining: usize,
    },
    Entropy,
    /// Entropy data ended a piece with 0xFF.
    EntropyFf,
    Done,
}

#[derive(Debug)]
pub struct JpegFilter {
    state: State,
    /// A segment being read whole (application segments only).
    segment: Vec<u8>,
    offset: u64,
    stripped: bool,
    orientation_kept: bool,
    seen_sos: bool,
}

impl Default for JpegFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl JpegFilter {
    pub fn new() -> Self {
        JpegFilter {
            state: State::Soi(Fill::new()),
            segment: Vec::new(),
            offset: 0,
            stripped: false,
            orientation_kept: false,
            seen_sos: false,
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
            format: "JPEG",
            offset: self.offset + at as u64,
            reason: reason.into(),
        }
    }

    pub fn push(&mut self, input: Bytes, out: &mut impl Extend<Bytes>) -> Result<(), StripError> {
        let mut i = 0;
        let n = input.len();
        while i < n {
            match &mut self.state {
                State::Soi(fill) => {
                    if let Some(soi) = fill.fill(&input, &mut i) {
                        if soi != [0xFF, SOI] {
                            return Err(self.err_back(i, 2, "does not start with SOI (FF D8)"));
                        }
                        out.extend(Some(Bytes::from_static(&[0xFF, SOI])));
                        self.state = State::Marker;
                    }
                }
                State::Marker => {
                    if input[i] != 0xFF {
                        return Err(
                            self.err(i, format!("expected a marker, found 0x{:02X}", input[i]))
                        );
                    }
                    i += 1;
                    self.state = State::Code;
                }
                State::Code => {
                    let code = input[i];
                    i += 1;
                    match code {
                        0xFF => {} // fill byte
                        0x00 => return Err(self.err(i - 1, "stuffed 0xFF 00 outside image data")),
                        SOI => return Err(self.err(i - 1, "second SOI")),
                        EOI => {
                            if !self.seen_sos {
                                return Err(self.err(i - 1, "EOI before any image data (SOS)"));
                            }
                            out.extend(Some(Bytes::from_static(&[0xFF, EOI])));
                            self.state = State::Done;
                        }
                        // Standalone markers: TEM, RST0-7 (odd here but harmless).
                        0x01 | 0xD0..=0xD7 => {
                            out.extend(Some(Bytes::copy_from_slice(&[0xFF, code])));
                            self.state = State::Marker;
                        }
                        m => self.state = State::Length(m, Fill::new()),
                    }
                }
                State::Length(marker, fill) => {
                    let marker = *marker;
                    if let Some(len) = fill.fill(&input, &mut i) {
                        let len = u16::from_be_bytes(len) as usize;
                        if len < 2 {
                            return Err(
                                self.err(i, format!("marker 0x{marker:02X} has length {len}"))
                            );
                        }
                        let remaining = len - 2;
                        self.state = match marker {
                            APP0 | APP1 | APP2 | APP14 => {
                                self.segment.clear();
                                State::Collect { marker, remaining }
                            }
                            0xE3..=0xEF | COM => {
                                self.stripped = true;
                                State::Skip { remaining }
                            }
                            _ => {
                                let mut head = [0xFF, marker, 0, 0];
                                head[2..].copy_from_slice(&(len as u16).to_be_bytes());
                                out.extend(Some(Bytes::copy_from_slice(&head)));
                                let next = if marker == SOS {
                                    self.seen_sos = true;
                                    Next::Entropy
                                } else {
                                    Next::Marker
                                };
                                State::Pass { remaining, next }
                            }
                        };
                        self.settle();
                    }
                }
                State::Pass { remaining, next } => {
                    let take = (*remaining).min(n - i);
                    out.extend(Some(input.slice(i..i + take)));
                    i += take;
                    *remaining -= take;
                    let next = *next;
                    if *remaining == 0 {
                        self.state = match next {
                            Next::Marker => State::Marker,
                            Next::Entropy => State::Entropy,
                        };
                    }
                }
                State::Skip { remaining } => {
                    let take = (*remaining).min(n - i);
                    i += take;
                    *remaining -= take;
                    if *remaining == 0 {
                        self.state = State::Marker;
                    }
                }
                State::Collect { marker, remaining } => {
                    let take = (*remaining).min(n - i);
                    self.segment.extend_from_slice(&input[i..i + take]);
                    i += take;
                    *remaining -= take;
                    if *remaining == 0 {
                        let marker = *marker;
                        self.decide(marker, out);
                        self.state = State::Marker;
                    }
                }
                State::Entropy => {
                    let start = i;
                    loop {
                        match memchr::memchr(0xFF, &input[i..]) {
                            None => {
                                i = n;
                                out.extend(Some(input.slice(start..n)));
                                break;
                            }
                            Some(p) => {
                                let ff = i + p;
                                // A stuffed 0xFF or a restart marker is image data.
                                if ff + 1 < n && matches!(input[ff + 1], 0x00 | 0xD0..=0xD7) {
                                    i = ff + 2;
                                    continue;
                                }
                                if ff > start {
                                    out.extend(Some(input.slice(start..ff)));
                                }
                                i = ff + 1;
                                self.state = State::EntropyFf;
                                break;
                            }
                        }
                    }
                }
                State::EntropyFf => match input[i] {
                    0x00 | 0xD0..=0xD7 => {
                        // The byte itself starts the next run.
                        out.extend(Some(Bytes::from_static(&[0xFF])));
                        self.state = State::Entropy;
                    }
                    0xFF => i += 1,
                    // A marker between scans: handled like any other.
                    _ => self.state = State::Code,
                },
                State::Done => {
                    // Trailers after EOI: MPF images with their own Exif,
                    // makers' data, appended payloads.
                    self.stripped = true;
                    i = n;
                }
            }
        }
        self.offset += n as u64;
        Ok(())
    }

    /// Zero-length Pass/Skip/Collect states complete at once.
    fn settle(&mut self) {
        match self.state {
            State::Pass { remaining: 0, next } => {
                self.state = match next {
                    Next::Marker => State::Marker,
                    Next::Entropy => State::Entropy,
                }
            }
            State::Skip { remaining: 0 } => self.state = State::Marker,
            _ => {}
        }
        // Collect with nothing to read is decided on the next byte by `push`
        // or in `finish`; an empty APPn is dropped there.
        if let State::Collect { remaining: 0, .. } = self.state {
            self.segment.clear();
            self.stripped = true;
            self.state = State::Marker;
        }
    }

    /// Keeps an application segment, drops it, or for Exif replaces it by the
    /// orientation alone.
    fn decide(&mut self, marker: u8, out: &mut impl Extend<Bytes>) {
        let seg = std::mem::take(&mut self.segment);
        let keep = match marker {
            APP0 => true,
            APP2 => seg.starts_with(b"ICC_PROFILE\0"),
            APP14 => seg.starts_with(b"Adobe"),
            _ => false,
        };
        if keep {
            let mut v = Vec::with_capacity(seg.len() + 4);
            v.extend_from_slice(&[0xFF, marker]);
            v.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
            v.extend_from_slice(&seg);
            out.extend(Some(Bytes::from(v)));
        } else {
            self.stripped = true;
            if marker == APP1
                && !self.orientation_kept
                && let Some(o) = exif_orientation(&seg)
            {
                self.orientation_kept = true;
                out.extend(Some(Bytes::copy_from_slice(&orientation_app1(o))));
            }
        }
    }

    pub fn finish(&mut self) -> Result<(), StripError> {
        // `err` adds its argument to the bytes seen so far: 0 is the end.
        match self.state {
            State::Done => Ok(()),
            State::Entropy | State::EntropyFf => {
                Err(self.err(0, "ends before EOI (truncated image data)"))
            }
            _ => Err(self.err(0, "ends inside the headers, before the image data")),
        }
    }
}

/// The orientation (1..=8) in an Exif APP1 payload's first IFD, if any.
pub fn exif_orientation(app1: &[u8]) -> Option<u16> {
    let tiff = app1.strip_prefix(b"Exif\0\0")?;
    let big = match tiff.get(0..2)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |o: usize| {
        let b = tiff.get(o..o.checked_add(2)?)?;
        Some(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| {
        let b = tiff.get(o..o.checked_add(4)?)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    };
    if u16_at(2)? != 42 {
        return None;
    }
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    for k in 0..count {
        let e = ifd.checked_add(2 + 12 * k)?;
        if u16_at(e)? == 0x0112 {
            // SHORT, count 1: the value sits in the first two bytes of the field.
            if u16_at(e + 2)? != 3 || u32_at(e + 4)? != 1 {
                return None;
            }
            let v = u16_at(e + 8)?;
            return (2..=8).contains(&v).then_some(v);
        }
    }
    None
}

/// A minimal APP1 Exif segment holding only the orientation.
pub fn orientation_app1(orientation: u16) -> [u8; 36] {
    let mut s = [0u8; 36];
    s[..4].copy_from_slice(&[0xFF, APP1, 0, 34]);
    s[4..10].copy_from_slice(b"Exif\0\0");
    // Big-endian TIFF header, IFD0 at offset 8.
    s[10..18].copy_from_slice(&[b'M', b'M', 0, 42, 0, 0, 0, 8]);
    // One entry: tag 0x0112, type SHORT, count 1, value; then no next IFD.
    s[18..20].copy_from_slice(&[0, 1]);
    s[20..28].copy_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    s[28..30].copy_from_slice(&orientation.to_be_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::Kind;
    use crate::strip::strip_all;
    use crate::strip::test_util::strip_pieces;
    use proptest::prelude::*;

    fn seg(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, marker];
        v.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn exif(orientation: u16, gps: bool) -> Vec<u8> {
        // II TIFF, IFD0 with orientation (+ a GPS IFD pointer), GPS IFD with latitude ref.
        let mut t = b"II\x2a\0\x08\0\0\0".to_vec();
        let n: u16 = if gps { 2 } else { 1 };
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]);
        t.extend_from_slice(&orientation.to_le_bytes());
        t.extend_from_slice(&[0, 0]);
        if gps {
            let gps_at = 8 + 2 + 12 * 2 + 4;
            t.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0]);
            t.extend_from_slice(&(gps_at as u32).to_le_bytes());
        }
        t.extend_from_slice(&[0, 0, 0, 0]);
        if gps {
            t.extend_from_slice(&[1, 0, 0x01, 0, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0, 0, 0, 0, 0]);
        }
        [b"Exif\0\0".as_slice(), &t].concat()
    }

    fn sample() -> Vec<u8> {
        [
            vec![0xFF, 0xD8],
            seg(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
            seg(0xE1, &exif(6, true)),
            seg(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"),
            seg(0xE2, b"ICC_PROFILE\0\x01\x01fake"),
            seg(0xE2, b"MPF\0fake"),
            seg(0xED, b"Photoshop 3.0\0IPTC"),
            seg(0xFE, b"shot at 12 Main St"),
            seg(0xDB, &[0u8; 65]),
            seg(0xC0, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56],
            vec![0xFF, 0xD9],
            b"trailing MPF image with Exif".to_vec(),
        ]
        .concat()
    }

    #[test]
    fn drops_metadata_and_keeps_image_and_orientation() {
        let (out, stripped) = strip_all(Kind::Jpeg, &sample()).unwrap();
        assert!(stripped);
        let expected = [
            vec![0xFF, 0xD8],
            seg(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
            orientation_app1(6).to_vec(),
            seg(0xE2, b"ICC_PROFILE\0\x01\x01fake"),
            seg(0xDB, &[0u8; 65]),
            seg(0xC0, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56],
            vec![0xFF, 0xD9],
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(exif_orientation(&orientation_app1(6)[4..]), Some(6));
    }

    #[test]
    fn markers_between_progressive_scans_are_filtered_too() {
        let data = [
            vec![0xFF, 0xD8],
            seg(0xC2, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![1, 2, 3],
            seg(0xFE, b"comment between scans"),
            seg(0xC4, &[0u8; 17]),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![4, 5, 0xFF, 0xFF, 0xD9],
        ]
        .concat();
        let (out, stripped) = strip_all(Kind::Jpeg, &data).unwrap();
        assert!(stripped);
        let expected = [
            vec![0xFF, 0xD8],
            seg(0xC2, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![1, 2, 3],
            seg(0xC4, &[0u8; 17]),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![4, 5, 0xFF, 0xD9],
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn clean_files_pass_unchanged() {
        let data = [
            vec![0xFF, 0xD8],
            seg(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
            seg(0xDA, &[1, 1, 0, 0, 0x3F, 0]),
            vec![9, 9, 0xFF, 0, 9],
            vec![0xFF, 0xD9],
        ]
        .concat();
        assert_eq!(strip_all(Kind::Jpeg, &data).unwrap(), (data, false));
    }

    #[test]
    fn malformed_files_are_errors() {
        let e = strip_all(Kind::Jpeg, b"\xFF\xD8\x00").unwrap_err();
        assert_eq!(
            e.to_string(),
            "JPEG is malformed at byte 2: expected a marker, found 0x00"
        );
        assert!(strip_all(Kind::Jpeg, b"\xFF\xD8\xFF\xE1\x00\x10Exif").is_err());
        assert!(strip_all(Kind::Jpeg, b"\xFF\xD8\xFF\xDB\x00\x01").is_err());
        let truncated = &sample()[..sample().len() - 31];
        let e = strip_all(Kind::Jpeg, truncated).unwrap_err();
        assert!(e.reason.contains("before EOI"), "{e}");
        assert!(strip_all(Kind::Jpeg, b"\xFF\xD8\xFF\xD9").is_err());
    }

    #[test]
    fn orientation_parsing_is_defensive() {
        assert_eq!(exif_orientation(&exif(3, false)), Some(3));
        assert_eq!(exif_orientation(&exif(1, false)), None);
        assert_eq!(exif_orientation(&exif(9, false)), None);
        let mut big = exif(3, false);
        big[10..14].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F]);
        assert_eq!(exif_orientation(&big), None);
        assert_eq!(exif_orientation(b"Exif\0\0MM"), None);
    }

    proptest! {
        #[test]
        fn any_piece_boundaries_give_the_same_output(cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
            let whole = strip_all(Kind::Jpeg, &sample()).unwrap();
            prop_assert_eq!(strip_pieces(Kind::Jpeg, &sample(), &cuts).unwrap(), whole);
        }

        #[test]
        fn garbage_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let data = [&[0xFF, 0xD8][..], &tail].concat();
            let _ = strip_pieces(Kind::Jpeg, &data, &cuts);
        }
    }
}
