//! Message text on the wire: the GSM 03.38 default alphabet and its
//! extension table, UCS-2, the choice between them, splitting a long text
//! into concatenated segments (UDH, 3GPP TS 23.040 section 9.2.3.24.1) and
//! decoding what an SMSC delivers.
//!
//! GSM-7 text goes in short_message **unpacked, one septet per octet**
//! (data_coding 0x00): that is how SMPP carries the default alphabet to
//! nearly every SMSC, which packs it for the air interface itself. So a
//! 160-septet message is 160 octets of short_message, and a concatenated
//! segment is 6 octets of UDH plus up to 153 septet-octets; on the air the
//! same segment packs into 140 octets (see [`air_octets`]).

use thiserror::Error;

/// data_coding for the SMSC default alphabet (GSM-7 here).
pub const DCS_DEFAULT: u8 = 0x00;
pub const DCS_IA5: u8 = 0x01;
pub const DCS_LATIN1: u8 = 0x03;
pub const DCS_UCS2: u8 = 0x08;

/// Septets in a single GSM-7 message / per segment of a concatenated one
/// (160 minus the 7 septets an 8-bit-reference UDH takes).
pub const GSM_SINGLE: usize = 160;
pub const GSM_SEGMENT: usize = 153;
/// UTF-16 code units in a single UCS-2 message / per segment.
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_SEGMENT: usize = 67;
/// The UDH of a concatenated segment with an 8-bit reference:
/// `05 00 03 ref total seq`.
pub const CONCAT_UDH_LEN: usize = 6;
/// The escape to the extension table.
const ESC: u8 = 0x1B;

/// The GSM 03.38 default alphabet; 0x1B is the escape, never a character.
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (septet after the escape, character).
const EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

fn basic_septet(c: char) -> Option<u8> {
    match c {
        'A'..='Z' | 'a'..='z' | '0'..='9' => Some(c as u8),
        '\u{1B}' => None,
        _ => BASIC.iter().position(|&b| b == c).map(|i| i as u8),
    }
}

fn extension_septet(c: char) -> Option<u8> {
    EXTENSION.iter().find(|(_, e)| *e == c).map(|(s, _)| *s)
}

/// The septets of `text` (an extension character is two: escape and
/// code), or `None` if a character is not in the GSM alphabet.
pub fn gsm_encode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if let Some(s) = basic_septet(c) {
            out.push(s);
        } else {
            out.extend_from_slice(&[ESC, extension_septet(c)?]);
        }
    }
    Some(out)
}

/// Decodes unpacked septets. An escape followed by a code the extension
/// table lacks shows the default-alphabet character (23.038 6.2.1.1); a
/// trailing escape is dropped. The top bit of each octet is ignored.
pub fn gsm_decode(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut iter = septets.iter().map(|b| b & 0x7F);
    while let Some(s) = iter.next() {
        if s != ESC {
            out.push(BASIC[s as usize]);
            continue;
        }
        match iter.next() {
            Some(ESC) => out.push(' '),
            Some(code) => out.push(
                EXTENSION
                    .iter()
                    .find(|(e, _)| *e == code)
                    .map(|(_, c)| *c)
                    .unwrap_or(BASIC[code as usize]),
            ),
            None => {}
        }
    }
    out
}

/// How a message's text is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// GSM 03.38 default alphabet, unpacked (data_coding 0x00).
    Gsm7,
    /// UCS-2 / UTF-16BE (data_coding 0x08); characters outside the BMP go
    /// as surrogate pairs, which handsets show.
    Ucs2,
}

impl Coding {
    pub fn data_coding(self) -> u8 {
        match self {
            Coding::Gsm7 => DCS_DEFAULT,
            Coding::Ucs2 => DCS_UCS2,
        }
    }
}

/// A text ready for submit_sm: one short_message per segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    pub coding: Coding,
    /// Each segment's short_message, UDH included when [`Segments::udh`].
    pub parts: Vec<Vec<u8>>,
    /// Whether the parts start with a concatenation UDH (esm_class UDHI).
    pub udh: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    #[error("text: needs {needed} segments, more than the limit of {max}")]
    TooManySegments { needed: usize, max: usize },
}

/// GSM-7 when every character is in the default alphabet or its extension
/// table, UCS-2 otherwise.
pub fn choose_coding(text: &str) -> Coding {
    if text
        .chars()
        .all(|c| basic_septet(c).is_some() || extension_septet(c).is_some())
    {
        Coding::Gsm7
    } else {
        Coding::Ucs2
    }
}

/// Splits `text` into segments: one without a UDH if it fits a single
/// message (160 septets / 70 UTF-16 units), otherwise 153-septet /
/// 67-unit segments, each behind `05 00 03 reference total seq`. An escape
/// pair or a surrogate pair is never cut in two (that segment is one unit
/// shorter). More than `max_segments` (or 255) segments is an error.
pub fn split(text: &str, reference: u8, max_segments: usize) -> Result<Segments, SplitError> {
    let coding = choose_coding(text);
    let chunks: Vec<Vec<u8>> = match coding {
        Coding::Gsm7 => {
            let septets = gsm_encode(text).unwrap_or_default();
            if septets.len() <= GSM_SINGLE {
                vec![septets]
            } else {
                cut(&septets, GSM_SEGMENT, |s, end| {
                    s[end - 1] == ESC && !escaped(s, end - 1)
                })
            }
        }
        Coding::Ucs2 => {
            let units: Vec<u16> = text.encode_utf16().collect();
            let chunks = if units.len() <= UCS2_SINGLE {
                vec![units]
            } else {
                cut(&units, UCS2_SEGMENT, |u, end| {
                    (0xD800..0xDC00).contains(&u[end - 1])
                })
            };
            chunks
                .into_iter()
                .map(|c| c.iter().flat_map(|u| u.to_be_bytes()).collect())
                .collect()
        }
    };
    let max = max_segments.min(255);
    if chunks.len() > max {
        return Err(SplitError::TooManySegments {
            needed: chunks.len(),
            max,
        });
    }
    if chunks.len() == 1 {
        return Ok(Segments {
            coding,
            parts: chunks,
            udh: false,
        });
    }
    let total = chunks.len() as u8;
    let parts = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut part = Vec::with_capacity(CONCAT_UDH_LEN + chunk.len());
            part.extend_from_slice(&[0x05, 0x00, 0x03, reference, total, i as u8 + 1]);
            part.extend_from_slice(&chunk);
            part
        })
        .collect();
    Ok(Segments {
        coding,
        parts,
        udh: true,
    })
}

/// Whether the septet at `i` is the code of an escape pair (preceded by an
/// escape that is itself not a code).
fn escaped(s: &[u8], i: usize) -> bool {
    let mut n = 0;
    let mut j = i;
    while j > 0 && s[j - 1] == ESC {
        n += 1;
        j -= 1;
    }
    n % 2 == 1
}

/// Cuts `units` into chunks of at most `size`, ending a chunk one unit
/// early where `splits_pair(units, end)` says the cut would separate a
/// pair.
fn cut<T: Copy>(
    units: &[T],
    size: usize,
    splits_pair: impl Fn(&[T], usize) -> bool,
) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < units.len() {
        let mut end = (start + size).min(units.len());
        if end < units.len() && end - start > 1 && splits_pair(units, end) {
            end -= 1;
        }
        chunks.push(units[start..end].to_vec());
        start = end;
    }
    chunks
}

/// The octets a segment takes on the air interface: GSM-7 is packed, with
/// the UDH padded to a septet boundary; UCS-2 and 8-bit go as they are.
pub fn air_octets(coding: Coding, short_message: &[u8], udh: bool) -> usize {
    match coding {
        Coding::Ucs2 => short_message.len(),
        Coding::Gsm7 => {
            let udh_len = if udh {
                short_message.first().map_or(0, |&l| l as usize + 1)
            } else {
                0
            }
            .min(short_message.len());
            let udh_septets = (udh_len * 8).div_ceil(7);
            let septets = udh_septets + short_message.len() - udh_len;
            (septets * 7).div_ceil(8)
        }
    }
}

/// A concatenation header found in a UDH (8- or 16-bit reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Concat {
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

/// Splits a short_message sent with UDHI into its UDH's concatenation
/// element (if any) and the text after the UDH. A UDH longer than the
/// message gives `(None, &[])`.
pub fn parse_udh(short_message: &[u8]) -> (Option<Concat>, &[u8]) {
    let Some(&udhl) = short_message.first() else {
        return (None, &[]);
    };
    let end = 1 + udhl as usize;
    let Some(udh) = short_message.get(1..end) else {
        return (None, &[]);
    };
    let payload = &short_message[end..];
    let mut i = 0;
    let mut concat = None;
    while i + 2 <= udh.len() {
        let iei = udh[i];
        let len = udh[i + 1] as usize;
        let Some(data) = udh.get(i + 2..i + 2 + len) else {
            break;
        };
        match (iei, data) {
            (0x00, &[r, total, seq]) => {
                concat = Some(Concat {
                    reference: r as u16,
                    total,
                    seq,
                })
            }
            (0x08, &[r1, r2, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from_be_bytes([r1, r2]),
                    total,
                    seq,
                })
            }
            _ => {}
        }
        i += 2 + len;
    }
    (concat, payload)
}

/// Decodes a short_message (after any UDH) by its data_coding: GSM-7
/// unpacked for 0x00 and the GSM message-class group, ASCII for IA5,
/// UTF-16BE for UCS-2 (an odd last octet is dropped, a lone surrogate
/// becomes U+FFFD), Latin-1 for everything else (8-bit data included).
pub fn decode(data_coding: u8, bytes: &[u8]) -> String {
    match data_coding {
        DCS_DEFAULT => gsm_decode(bytes),
        DCS_IA5 => bytes
            .iter()
            .map(|&b| if b < 0x80 { b as char } else { '\u{FFFD}' })
            .collect(),
        DCS_UCS2 => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        // Message class group: bit 2 says 8-bit data, else default alphabet.
        0xF0..=0xFF if data_coding & 0x04 == 0 => gsm_decode(bytes),
        _ => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// The text of segments made by [`split`] (the receiving side's job; here
/// for tests and tools).
pub fn join(segments: &Segments) -> String {
    let payloads = segments.parts.iter().map(|p| {
        if segments.udh {
            parse_udh(p).1
        } else {
            p.as_slice()
        }
    });
    match segments.coding {
        Coding::Gsm7 => gsm_decode(&payloads.flatten().copied().collect::<Vec<_>>()),
        Coding::Ucs2 => decode(DCS_UCS2, &payloads.flatten().copied().collect::<Vec<_>>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_basic_character_roundtrips() {
        for (i, &c) in BASIC.iter().enumerate() {
            if i == ESC as usize {
                assert_eq!(gsm_encode("\u{1B}"), None);
                continue;
            }
            let s = c.to_string();
            assert_eq!(gsm_encode(&s), Some(vec![i as u8]), "{c:?}");
            assert_eq!(gsm_decode(&[i as u8]), s);
        }
        for (code, c) in EXTENSION {
            let s = c.to_string();
            assert_eq!(gsm_encode(&s), Some(vec![ESC, code]));
            assert_eq!(gsm_decode(&[ESC, code]), s);
        }
        // An unknown extension code shows the default character.
        assert_eq!(gsm_decode(&[ESC, b'A']), "A");
        assert_eq!(gsm_decode(&[b'a', ESC]), "a");
    }

    #[test]
    fn coding_is_chosen_per_message() {
        assert_eq!(choose_coding("Hello {world} €5 @ ü"), Coding::Gsm7);
        assert_eq!(choose_coding("Привет"), Coding::Ucs2);
        assert_eq!(choose_coding("ok 👍"), Coding::Ucs2);
        // ç is not in the default alphabet (Ç is).
        assert_eq!(choose_coding("ç"), Coding::Ucs2);
    }

    #[test]
    fn single_message_limits() {
        let s = split(&"a".repeat(160), 7, 10).unwrap();
        assert_eq!((s.parts.len(), s.udh, s.coding), (1, false, Coding::Gsm7));
        // Extension characters count twice: 80 € is 160 septets.
        assert_eq!(split(&"€".repeat(80), 7, 10).unwrap().parts.len(), 1);
        assert_eq!(split(&"€".repeat(81), 7, 10).unwrap().parts.len(), 2);
        assert_eq!(split(&"я".repeat(70), 7, 10).unwrap().parts.len(), 1);
        assert_eq!(split(&"я".repeat(71), 7, 10).unwrap().parts.len(), 2);
    }

    #[test]
    fn long_gsm_text_has_concatenation_headers() {
        let text = "x".repeat(400);
        let s = split(&text, 0x2A, 10).unwrap();
        assert_eq!(s.parts.len(), 3);
        for (i, p) in s.parts.iter().enumerate() {
            assert_eq!(&p[..6], &[5, 0, 3, 0x2A, 3, i as u8 + 1]);
        }
        assert_eq!(s.parts[0].len(), 6 + 153);
        assert_eq!(s.parts[2].len(), 6 + 400 - 306);
        assert_eq!(air_octets(s.coding, &s.parts[0], true), 140);
        assert_eq!(join(&s), text);
    }

    #[test]
    fn an_escape_pair_is_never_split() {
        // 152 plain septets, then '€' at septets 153-154.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let s = split(&text, 1, 10).unwrap();
        assert_eq!(s.parts[0].len(), 6 + 152);
        assert_eq!(&s.parts[1][6..8], &[ESC, 0x65]);
        assert_eq!(join(&s), text);
    }

    #[test]
    fn a_surrogate_pair_is_never_split() {
        let text = format!("{}😀{}", "я".repeat(66), "ж".repeat(10));
        let s = split(&text, 1, 10).unwrap();
        assert_eq!(s.parts[0].len(), 6 + 66 * 2);
        assert_eq!(join(&s), text);
        assert!(s.parts.iter().all(|p| p.len() <= 140));
    }

    #[test]
    fn too_many_segments_is_a_typed_error() {
        let err = split(&"a".repeat(153 * 10 + 1), 1, 10).unwrap_err();
        assert_eq!(
            err,
            SplitError::TooManySegments {
                needed: 11,
                max: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "text: needs 11 segments, more than the limit of 10"
        );
    }

    #[test]
    fn udh_parsing() {
        let (c, rest) = parse_udh(&[5, 0, 3, 9, 2, 1, b'h', b'i']);
        assert_eq!(
            c,
            Some(Concat {
                reference: 9,
                total: 2,
                seq: 1
            })
        );
        assert_eq!(rest, b"hi");
        let (c, rest) = parse_udh(&[6, 8, 4, 1, 2, 3, 1, b'x']);
        assert_eq!(c.unwrap().reference, 0x0102);
        assert_eq!(rest, b"x");
        assert_eq!(parse_udh(&[9, 0, 3]), (None, &[][..]));
        assert_eq!(parse_udh(&[]), (None, &[][..]));
    }

    #[test]
    fn decoding_by_data_coding() {
        assert_eq!(decode(DCS_LATIN1, &[0x63, 0xE9]), "cé");
        assert_eq!(decode(DCS_IA5, b"ab\x80"), "ab\u{FFFD}");
        assert_eq!(decode(DCS_UCS2, &[0x04, 0x3F, 0x00]), "п");
        assert_eq!(decode(0xF0, &[0x00]), "@");
        assert_eq!(decode(DCS_DEFAULT, &[0x00, 0x11]), "@_");
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            // GSM-only text, extension characters included.
            proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(
                        BASIC
                            .iter()
                            .copied()
                            .filter(|&c| c != '\u{1B}')
                            .collect::<Vec<_>>()
                    ),
                    proptest::sample::select(EXTENSION.iter().map(|e| e.1).collect::<Vec<_>>()),
                ],
                0..800
            )
            .prop_map(|v| v.into_iter().collect()),
            // Anything (emoji and every script).
            proptest::collection::vec(any::<char>(), 0..400).prop_map(|v| v.into_iter().collect()),
            // Mostly GSM with the odd character beyond it.
            proptest::collection::vec(
                prop_oneof![9 => proptest::char::range('a', 'z'), 1 => Just('😀'), 1 => Just('€')],
                0..700
            )
            .prop_map(|v| v.into_iter().collect()),
        ]
    }

    proptest! {
        #[test]
        fn split_then_join_gives_the_text(text in any_text(), reference in any::<u8>()) {
            let Ok(s) = split(&text, reference, 255) else {
                return Ok(());
            };
            prop_assert_eq!(join(&s), text);
            let total = s.parts.len();
            for (i, p) in s.parts.iter().enumerate() {
                prop_assert!(p.len() <= crate::pdu::MAX_SHORT_MESSAGE);
                prop_assert!(air_octets(s.coding, p, s.udh) <= 140, "segment {} of {}: {} octets on the air", i, total, air_octets(s.coding, p, s.udh));
                if s.udh {
                    prop_assert_eq!(&p[..6], &[5, 0, 3, reference, total as u8, i as u8 + 1]);
                }
                if s.coding == Coding::Ucs2 {
                    prop_assert!(p.len() <= 140);
                }
            }
        }

        #[test]
        fn decoding_never_panics(dcs in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(dcs, &bytes);
            let _ = parse_udh(&bytes);
        }
    }
}
