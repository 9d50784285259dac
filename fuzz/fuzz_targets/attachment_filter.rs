//! Uploads from patients: the sniffer and the metadata filters see any bytes,
//! cut anywhere. Never panics; the output does not depend on where the input
//! was cut; and whatever a filter accepts carries none of the metadata it
//! promises to remove.
#![no_main]
use bytes::Bytes;
use continuum_blob::Kind;
use continuum_blob::sniff::{Sniffed, sniff};
use continuum_blob::strip::jpeg::orientation_app1;
use continuum_blob::strip::{Filter, StripError};
use libfuzzer_sys::fuzz_target;

fn run(kind: Kind, data: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), StripError> {
    let mut f = Filter::for_kind(kind);
    let mut out: Vec<Bytes> = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        f.push(Bytes::copy_from_slice(&data[at..c]), &mut out)?;
        at = c;
    }
    f.finish()?;
    Ok((out.concat(), f.stripped()))
}

/// Walks the marker segments before the first SOS.
fn check_jpeg(out: &[u8]) {
    assert!(out.starts_with(&[0xFF, 0xD8]) && out.ends_with(&[0xFF, 0xD9]));
    let mut i = 2;
    while i + 4 <= out.len() {
        assert_eq!(out[i], 0xFF);
        let m = out[i + 1];
        if matches!(m, 0x01 | 0xD0..=0xD7) {
            i += 2;
            continue;
        }
        if m == 0xD9 || m == 0xDA {
            break;
        }
        let len = u16::from_be_bytes([out[i + 2], out[i + 3]]) as usize;
        let seg = &out[i..i + 2 + len];
        match m {
            0xE1 => {
                assert_eq!(seg.len(), 36, "an APP1 other than the orientation survived");
                assert_eq!(
                    seg,
                    &orientation_app1(u16::from_be_bytes([seg[28], seg[29]]))[..]
                );
            }
            0xE2 => assert!(seg[4..].starts_with(b"ICC_PROFILE\0")),
            0xEE => assert!(seg[4..].starts_with(b"Adobe")),
            0xE3..=0xED | 0xEF | 0xFE => panic!("APPn/COM 0x{m:02X} survived"),
            _ => {}
        }
        i += 2 + len;
    }
}

/// Walks the chunks.
fn check_png(out: &[u8]) {
    let mut i = 8;
    while i + 8 <= out.len() {
        let len = u32::from_be_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]) as usize;
        let kind = &out[i + 4..i + 8];
        assert!(![&b"eXIf"[..], b"tEXt", b"zTXt", b"iTXt", b"tIME"].contains(&kind));
        i += 12 + len;
        if kind == b"IEND" {
            assert_eq!(i, out.len(), "bytes after IEND");
        }
    }
}

/// Walks the RIFF chunks.
fn check_webp(out: &[u8]) {
    let mut i = 12;
    while i + 8 <= out.len() {
        let fourcc = &out[i..i + 4];
        let size = u32::from_le_bytes([out[i + 4], out[i + 5], out[i + 6], out[i + 7]]) as usize;
        assert!(fourcc != b"EXIF" && fourcc != b"XMP ");
        if fourcc == b"VP8X" && size > 0 {
            assert_eq!(out[i + 8] & 0x0C, 0);
        }
        i += 8 + size + (size & 1);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let _ = sniff(rest);
    // Make the magic number right so the filters get past it most of the time.
    let (kind, magic): (Kind, &[u8]) = match sel % 3 {
        0 => (Kind::Jpeg, b"\xFF\xD8"),
        1 => (Kind::Png, b"\x89PNG\r\n\x1a\n"),
        _ => (Kind::Webp, b"RIFF"),
    };
    let data = [magic, rest].concat();
    if let Sniffed::Kind(k) = sniff(&data) {
        assert!(Kind::ALL.contains(&k));
    }
    let cuts: Vec<usize> = rest
        .iter()
        .take(6)
        .map(|&b| b as usize * data.len() / 256)
        .collect();
    let whole = run(kind, &data, &[]);
    let pieces = run(kind, &data, &cuts);
    assert_eq!(whole, pieces);
    if let Ok((out, _)) = whole {
        match kind {
            Kind::Jpeg => check_jpeg(&out),
            Kind::Png => check_png(&out),
            _ => check_webp(&out),
        }
    }
});
