//! Content type from the first bytes of an upload, never from its name or
//! headers.
//!
//! The types we accept are recognised by our own table (exact magic numbers,
//! ISO-BMFF brands, MPEG audio frame headers): it is short, and `infer`'s
//! matchers are looser than we want for an allowlist (its WebP check ignores
//! the RIFF tag, its MP3 check misses most frame headers, it has no 3GP).
//! Everything else is refused, and `infer` only helps to name what was
//! refused, after our checks for executables, scripts, HTML and SVG.

use std::borrow::Cow;

/// Bytes of an upload read before deciding its type (fewer if it is shorter).
pub const SNIFF_LEN: usize = 4096;

/// A type we know how to recognise and may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Jpeg,
    Png,
    Gif,
    Webp,
    Heic,
    Heif,
    Pdf,
    Mp4,
    ThreeGpp,
    /// Apple's `.mov`: recognised, but not in [`Kind::DEFAULT_ALLOWED`]
    /// (the issue asks for plain MP4/3GP); add it to the allowlist to take
    /// iPhone videos as they are.
    QuickTime,
    Wav,
    Ogg,
    Mp3,
    Amr,
    M4a,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Jpeg,
        Kind::Png,
        Kind::Gif,
        Kind::Webp,
        Kind::Heic,
        Kind::Heif,
        Kind::Pdf,
        Kind::Mp4,
        Kind::ThreeGpp,
        Kind::QuickTime,
        Kind::Wav,
        Kind::Ogg,
        Kind::Mp3,
        Kind::Amr,
        Kind::M4a,
    ];

    /// What the issue lists: photos, PDF, plain MP4/3GP video, voice notes.
    pub const DEFAULT_ALLOWED: &'static [Kind] = &[
        Kind::Jpeg,
        Kind::Png,
        Kind::Gif,
        Kind::Webp,
        Kind::Heic,
        Kind::Heif,
        Kind::Pdf,
        Kind::Mp4,
        Kind::ThreeGpp,
        Kind::Wav,
        Kind::Ogg,
        Kind::Mp3,
        Kind::Amr,
        Kind::M4a,
    ];

    /// The media type to store and serve.
    pub fn mime(self) -> &'static str {
        match self {
            Kind::Jpeg => "image/jpeg",
            Kind::Png => "image/png",
            Kind::Gif => "image/gif",
            Kind::Webp => "image/webp",
            Kind::Heic => "image/heic",
            Kind::Heif => "image/heif",
            Kind::Pdf => "application/pdf",
            Kind::Mp4 => "video/mp4",
            Kind::ThreeGpp => "video/3gpp",
            Kind::QuickTime => "video/quicktime",
            Kind::Wav => "audio/wav",
            Kind::Ogg => "audio/ogg",
            Kind::Mp3 => "audio/mpeg",
            Kind::Amr => "audio/amr",
            Kind::M4a => "audio/mp4",
        }
    }

    /// Parses a media type as [`Kind::mime`] writes it (for config files).
    pub fn from_mime(mime: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.mime().eq_ignore_ascii_case(mime))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mime())
    }
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    Kind(Kind),
    /// Something we never accept, named as well as we can (a media type, or
    /// "unknown"), for the error message.
    Other(Cow<'static, str>),
}

/// Decides the type of an upload from its first bytes (up to [`SNIFF_LEN`];
/// pass everything when the upload is shorter).
pub fn sniff(head: &[u8]) -> Sniffed {
    match known(head) {
        Some(Ok(kind)) => Sniffed::Kind(kind),
        Some(Err(name)) => Sniffed::Other(name),
        None => Sniffed::Other(name_other(head)),
    }
}

fn known(b: &[u8]) -> Option<Result<Kind, Cow<'static, str>>> {
    let k = |kind| Some(Ok(kind));
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return k(Kind::Jpeg);
    }
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return k(Kind::Png);
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return k(Kind::Gif);
    }
    if b.len() >= 12 && b.starts_with(b"RIFF") {
        match &b[8..12] {
            b"WEBP" => return k(Kind::Webp),
            b"WAVE" => return k(Kind::Wav),
            _ => {}
        }
    }
    if b.starts_with(b"%PDF-") {
        return k(Kind::Pdf);
    }
    if b.starts_with(b"OggS") {
        return k(Kind::Ogg);
    }
    // Before the shebang check below: AMR files start with "#!AMR".
    if b.starts_with(b"#!AMR\n") || b.starts_with(b"#!AMR-WB\n") {
        return k(Kind::Amr);
    }
    if let Some(r) = iso_bmff(b) {
        return Some(r);
    }
    if is_mp3(b) {
        return k(Kind::Mp3);
    }
    None
}

/// ISO base media files (MP4, 3GP, M4A, HEIF, QuickTime): a `ftyp` box whose
/// major brand (then compatible brands) says what the file is.
fn iso_bmff(b: &[u8]) -> Option<Result<Kind, Cow<'static, str>>> {
    if b.len() < 12 || &b[4..8] != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let major: [u8; 4] = [b[8], b[9], b[10], b[11]];
    // Compatible brands run from byte 16 to the box end (or what we have).
    let compat: Vec<[u8; 4]> = b
        .get(16..size.min(b.len()).max(16))
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let has = |brand: &[u8; 4]| compat.iter().any(|c| c == brand);
    let kind = match &major {
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"hevm" | b"hevs" => Kind::Heic,
        b"avif" | b"avis" => return Some(Err("image/avif".into())),
        b"mif1" | b"msf1" | b"mif2" => {
            if has(b"avif") || has(b"avis") {
                return Some(Err("image/avif".into()));
            }
            if has(b"heic") || has(b"heix") || has(b"hevc") || has(b"hevx") {
                Kind::Heic
            } else {
                Kind::Heif
            }
        }
        [b'3', b'g', ..] => Kind::ThreeGpp,
        b"M4A " | b"M4B " => Kind::M4a,
        b"qt  " => Kind::QuickTime,
        b"isom" | b"iso2" | b"iso3" | b"iso4" | b"iso5" | b"iso6" | b"iso7" | b"iso8" | b"iso9"
        | b"mp41" | b"mp42" | b"mp71" | b"avc1" | b"mmp4" | b"dash" | b"MSNV" | b"M4V "
        | b"M4VH" | b"M4VP" | b"f4v " | b"NDAS" | b"NDSC" | b"NDSH" | b"NDSM" | b"NDSP"
        | b"NDSS" | b"NDXC" | b"NDXH" | b"NDXM" | b"NDXP" | b"NDXS" => Kind::Mp4,
        b"crx " => return Some(Err("image/x-canon-cr3".into())),
        other => {
            let brand: String = other
                .iter()
                .map(|&c| {
                    if c.is_ascii_graphic() || c == b' ' {
                        c as char
                    } else {
                        '?'
                    }
                })
                .collect();
            return Some(Err(format!("ISO media with unknown brand {brand:?}").into()));
        }
    };
    Some(Ok(kind))
}

/// An ID3v2 tag, or an MPEG-1/2/2.5 Layer III frame header with a valid
/// bitrate and sample rate (AAC's ADTS header has layer 0 and does not match).
fn is_mp3(b: &[u8]) -> bool {
    if b.len() >= 10 && b.starts_with(b"ID3") && b[3] != 0xFF && b[4] != 0xFF {
        return true;
    }
    if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
        return false;
    }
    let version = (b[1] >> 3) & 3; // 1 is reserved
    let layer = (b[1] >> 1) & 3; // 1 is Layer III
    let bitrate = b[2] >> 4; // 0 is "free", 15 is invalid
    let rate = (b[2] >> 2) & 3; // 3 is reserved
    version != 1 && layer == 1 && bitrate != 0 && bitrate != 15 && rate != 3
}

fn name_other(b: &[u8]) -> Cow<'static, str> {
    if b.starts_with(b"MZ") {
        return "application/vnd.microsoft.portable-executable".into();
    }
    if b.starts_with(b"\x7fELF") {
        return "application/x-executable (ELF)".into();
    }
    if b.len() >= 4
        && matches!(
            [b[0], b[1], b[2], b[3]],
            [0xFE, 0xED, 0xFA, 0xCE | 0xCF]
                | [0xCE | 0xCF, 0xFA, 0xED, 0xFE]
                | [0xCA, 0xFE, 0xBA, 0xBE]
        )
    {
        // 0xCAFEBABE is also a Java class file; both are code.
        return "application/x-mach-binary".into();
    }
    if b.starts_with(b"#!") {
        return "text/x-shellscript".into();
    }
    if let Some(markup) = markup(b) {
        return markup.into();
    }
    match infer::get(b) {
        Some(t) => t.mime_type().into(),
        None if looks_like_text(b) => "text/plain".into(),
        None => "unknown".into(),
    }
}

/// HTML, SVG or other XML, after a byte-order mark and white space; SVG is
/// recognised behind an XML declaration, comments or a doctype.
fn markup(b: &[u8]) -> Option<&'static str> {
    let mut t = b;
    for bom in [&b"\xEF\xBB\xBF"[..], b"\xFE\xFF", b"\xFF\xFE"] {
        if let Some(rest) = t.strip_prefix(bom) {
            t = rest;
            break;
        }
    }
    let t = t.trim_ascii_start();
    if t.first() != Some(&b'<') {
        return None;
    }
    let lower: Vec<u8> = t
        .iter()
        .take(SNIFF_LEN)
        .map(u8::to_ascii_lowercase)
        .collect();
    if memchr::memmem::find(&lower, b"<svg").is_some() {
        return Some("image/svg+xml");
    }
    if infer::is(t, "html")
        || lower.starts_with(b"<!doctype html")
        || memchr::memmem::find(&lower, b"<html").is_some()
        || memchr::memmem::find(&lower, b"<script").is_some()
    {
        return Some("text/html");
    }
    if lower.starts_with(b"<?xml") {
        return Some("text/xml");
    }
    Some("text/html")
}

fn looks_like_text(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace() || c >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(b: &[u8]) -> Kind {
        match sniff(b) {
            Sniffed::Kind(k) => k,
            Sniffed::Other(o) => panic!("{o}"),
        }
    }

    fn other(b: &[u8]) -> String {
        match sniff(b) {
            Sniffed::Other(o) => o.into_owned(),
            Sniffed::Kind(k) => panic!("detected {k:?}"),
        }
    }

    fn ftyp(major: &[u8; 4], compat: &[&[u8; 4]]) -> Vec<u8> {
        let size = 16 + 4 * compat.len();
        let mut v = (size as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(major);
        v.extend_from_slice(&[0, 0, 0, 0]);
        for c in compat {
            v.extend_from_slice(*c);
        }
        v.extend_from_slice(&[0; 16]);
        v
    }

    #[test]
    fn accepted_types() {
        assert_eq!(kind(b"\xFF\xD8\xFF\xE0\0\x10JFIF"), Kind::Jpeg);
        assert_eq!(kind(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Kind::Png);
        assert_eq!(kind(b"GIF89a\x01\0\x01\0"), Kind::Gif);
        assert_eq!(kind(b"RIFF\x24\0\0\0WEBPVP8 "), Kind::Webp);
        assert_eq!(kind(b"RIFF\x24\0\0\0WAVEfmt "), Kind::Wav);
        assert_eq!(kind(b"%PDF-1.7\n"), Kind::Pdf);
        assert_eq!(kind(b"OggS\0\x02"), Kind::Ogg);
        assert_eq!(kind(b"#!AMR\n\x3c"), Kind::Amr);
        assert_eq!(kind(b"#!AMR-WB\n\x3c"), Kind::Amr);
        assert_eq!(kind(b"ID3\x04\0\0\0\0\0\x21"), Kind::Mp3);
        assert_eq!(kind(&[0xFF, 0xFB, 0x90, 0x64]), Kind::Mp3);
        assert_eq!(kind(&[0xFF, 0xF3, 0x48, 0xC4]), Kind::Mp3);
        assert_eq!(kind(&ftyp(b"heic", &[b"mif1", b"heic"])), Kind::Heic);
        assert_eq!(kind(&ftyp(b"mif1", &[b"mif1", b"heic"])), Kind::Heic);
        assert_eq!(kind(&ftyp(b"mif1", &[b"mif1"])), Kind::Heif);
        assert_eq!(
            kind(&ftyp(b"isom", &[b"isom", b"iso2", b"avc1", b"mp41"])),
            Kind::Mp4
        );
        assert_eq!(kind(&ftyp(b"mp42", &[])), Kind::Mp4);
        assert_eq!(kind(&ftyp(b"3gp4", &[b"3gp4"])), Kind::ThreeGpp);
        assert_eq!(kind(&ftyp(b"3g2a", &[])), Kind::ThreeGpp);
        assert_eq!(kind(&ftyp(b"M4A ", &[b"isom"])), Kind::M4a);
        assert_eq!(kind(&ftyp(b"qt  ", &[b"qt  "])), Kind::QuickTime);
        assert!(!Kind::DEFAULT_ALLOWED.contains(&Kind::QuickTime));
    }

    #[test]
    fn refused_types_are_named() {
        assert_eq!(
            other(b"MZ\x90\0\x03\0\0\0"),
            "application/vnd.microsoft.portable-executable"
        );
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        assert_eq!(other(&elf), "application/x-executable (ELF)");
        assert_eq!(
            other(&[0xCF, 0xFA, 0xED, 0xFE, 7, 0, 0, 1]),
            "application/x-mach-binary"
        );
        assert_eq!(other(b"#!/bin/sh\nrm -rf /\n"), "text/x-shellscript");
        assert_eq!(other(b"  <!DOCTYPE html><html><body>"), "text/html");
        assert_eq!(other(b"<script>alert(1)</script>"), "text/html");
        assert_eq!(
            other(b"\xEF\xBB\xBF<svg xmlns='http://www.w3.org/2000/svg'>"),
            "image/svg+xml"
        );
        assert_eq!(
            other(b"<?xml version=\"1.0\"?>\n<!-- x -->\n<svg onload=\"alert(1)\"/>"),
            "image/svg+xml"
        );
        assert_eq!(other(b"<?xml version=\"1.0\"?><note/>"), "text/xml");
        assert_eq!(other(b"PK\x03\x04\x14\0\0\0"), "application/zip");
        assert_eq!(other(&ftyp(b"avif", &[])), "image/avif");
        assert_eq!(other(&ftyp(b"mif1", &[b"avif"])), "image/avif");
        assert_eq!(other(b"hello, doctor"), "text/plain");
        assert_eq!(other(&[0x00, 0x01, 0x02, 0x03]), "unknown");
        assert_eq!(other(b""), "unknown");
        // ADTS AAC shares the sync word with MP3 but is layer 0.
        assert_ne!(sniff(&[0xFF, 0xF1, 0x50, 0x80]), Sniffed::Kind(Kind::Mp3));
    }

    #[test]
    fn short_prefixes_never_panic() {
        for n in 0..40 {
            let _ = sniff(&ftyp(b"heic", &[b"mif1"])[..n.min(32)]);
            let _ = sniff(&b"RIFF\x24\0\0\0WEBPVP8 "[..n.min(16)]);
        }
        // A ftyp size larger than the prefix.
        let mut v = ftyp(b"mif1", &[b"heic"]);
        v[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(kind(&v), Kind::Heic);
    }

    #[test]
    fn mime_round_trips() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_mime(k.mime()), Some(*k));
        }
    }
}
