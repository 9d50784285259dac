//! The upload pipeline with real images (made with the `image` crate, metadata
//! added by hand) and the refusals the issue names.

use std::io::Cursor;

use bytes::Bytes;
use continuum_blob::strip::jpeg::orientation_app1;
use continuum_blob::{
    BlobError, BlobKey, BlobStore, IngestError, Kind, Limits, LocalDir, SealKey, ingest,
};
use futures::{Stream, TryStreamExt, stream};
use image::ImageDecoder;
use sha2::{Digest, Sha256};

const ID: &[u8] = b"tenant-1/att-1";

struct Env {
    _tmp: tempfile::TempDir,
    dir: LocalDir,
    store: BlobStore,
    seal: SealKey,
    key: BlobKey,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalDir::open(tmp.path().join("blobs")).unwrap();
    Env {
        store: BlobStore::new(dir.clone()),
        dir,
        _tmp: tmp,
        seal: SealKey::generate(),
        key: BlobKey::new("tenant-1/att-1").unwrap(),
    }
}

impl Env {
    async fn ingest(
        &self,
        data: &[u8],
        limits: &Limits,
    ) -> Result<continuum_blob::Ingested, IngestError> {
        ingest(
            body(data, 1000),
            limits,
            &self.store,
            &self.key,
            &self.seal,
            ID,
        )
        .await
    }

    async fn download(&self) -> Vec<u8> {
        let s = self.store.get(&self.key, &self.seal, ID).await.unwrap();
        let parts: Vec<Bytes> = s.try_collect().await.unwrap();
        parts.concat()
    }

    /// Nothing under the key and no temp file left.
    async fn assert_nothing_stored(&self) {
        assert!(matches!(
            self.store.get(&self.key, &self.seal, ID).await.err(),
            Some(BlobError::NotFound { .. })
        ));
        assert_eq!(
            std::fs::read_dir(self.dir.root().join(".tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}

/// `data` as an HTTP body arrives: in pieces.
fn body(
    data: &[u8],
    piece: usize,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    let pieces: Vec<_> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

fn picture() -> image::RgbImage {
    image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    })
}

/// A TIFF (little-endian) with Make, Orientation 6 and a GPS IFD with latitude
/// 48°51'24"N and longitude 2°21'9"E.
fn exif_tiff() -> Vec<u8> {
    fn entry(t: &mut Vec<u8>, tag: u16, typ: u16, count: u32, value: u32) {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&typ.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value.to_le_bytes());
    }
    let (ifd0, gps, make, lat, lon) = (8u32, 50u32, 104u32, 114u32, 138u32);
    let mut t = b"II\x2a\0".to_vec();
    t.extend_from_slice(&ifd0.to_le_bytes());
    t.extend_from_slice(&3u16.to_le_bytes());
    entry(&mut t, 0x010F, 2, 10, make);
    entry(&mut t, 0x0112, 3, 1, 6);
    entry(&mut t, 0x8825, 4, 1, gps);
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len() as u32, gps);
    t.extend_from_slice(&4u16.to_le_bytes());
    entry(&mut t, 1, 2, 2, u32::from_le_bytes(*b"N\0\0\0"));
    entry(&mut t, 2, 5, 3, lat);
    entry(&mut t, 3, 2, 2, u32::from_le_bytes(*b"E\0\0\0"));
    entry(&mut t, 4, 5, 3, lon);
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len() as u32, make);
    t.extend_from_slice(b"Continuum\0");
    t.extend_from_slice(&latitude());
    for (n, d) in [(2u32, 1u32), (21, 1), (900, 100)] {
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&d.to_le_bytes());
    }
    t
}

fn latitude() -> Vec<u8> {
    [(48u32, 1u32), (51, 1), (2400, 100)]
        .iter()
        .flat_map(|(n, d)| [n.to_le_bytes(), d.to_le_bytes()].concat())
        .collect()
}

fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0xFF, marker];
    v.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A real JPEG with an Exif APP1 (GPS) right after SOI, an XMP APP1 and a
/// comment.
fn jpeg_with_gps() -> Vec<u8> {
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90)
        .encode_image(&picture())
        .unwrap();
    [
        &plain[..2],
        &segment(0xE1, &[b"Exif\0\0".as_slice(), &exif_tiff()].concat()),
        &segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><exif:GPSLatitude>48,51.4N</exif:GPSLatitude></x:xmpmeta>"),
        &segment(0xFE, b"taken at home"),
        &plain[2..],
    ]
    .concat()
}

fn decoder(bytes: &[u8]) -> Box<dyn ImageDecoder + '_> {
    Box::new(
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap(),
    )
}

fn pixels(bytes: &[u8]) -> Vec<u8> {
    image::load_from_memory(bytes).unwrap().to_rgb8().into_raw()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_jpeg_with_gps_comes_back_without_it() {
    let env = env();
    let original = jpeg_with_gps();
    // The fixture really carries GPS, as a decoder sees it.
    let exif = decoder(&original).exif_metadata().unwrap().unwrap();
    assert!(find(&exif, &latitude()));
    assert!(find(&original, b"GPSLatitude"));

    let got = env.ingest(&original, &Limits::default()).await.unwrap();
    assert_eq!(got.content_type, Kind::Jpeg);
    assert!(got.stripped_metadata);
    assert_eq!(got.received, original.len() as u64);

    let stored = env.download().await;
    assert_eq!(got.size, stored.len() as u64);
    assert_eq!(got.sha256, <[u8; 32]>::from(Sha256::digest(&stored)));
    assert_eq!(got.sha256_hex(), hex::encode(Sha256::digest(&stored)));
    // No GPS, no XMP, no comment, no Make anywhere in the file...
    for gone in [
        &latitude()[..],
        b"GPSLatitude",
        b"taken at home",
        b"Continuum",
        b"http://ns.adobe.com",
    ] {
        assert!(
            !find(&stored, gone),
            "{:?} survived",
            String::from_utf8_lossy(gone)
        );
    }
    // ...only the orientation is left, and decoders still see it.
    assert!(find(&stored, &orientation_app1(6)));
    let mut d = decoder(&stored);
    assert_eq!(
        d.orientation().unwrap(),
        image::metadata::Orientation::Rotate90
    );
    let exif = d.exif_metadata().unwrap().unwrap();
    assert_eq!(exif, orientation_app1(6)[10..].to_vec());
    // The image itself is untouched.
    assert_eq!(pixels(&stored), pixels(&original));
}

#[tokio::test]
async fn stripping_can_be_turned_off() {
    let env = env();
    let original = jpeg_with_gps();
    let limits = Limits {
        strip_metadata: false,
        ..Limits::default()
    };
    let got = env.ingest(&original, &limits).await.unwrap();
    assert!(!got.stripped_metadata);
    assert_eq!(env.download().await, original);
}

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(data);
    v.extend_from_slice(&crc32(&[kind.as_slice(), data].concat()).to_be_bytes());
    v
}

#[tokio::test]
async fn png_text_exif_and_time_are_dropped() {
    let env = env();
    let mut plain = Vec::new();
    picture()
        .write_to(&mut Cursor::new(&mut plain), image::ImageFormat::Png)
        .unwrap();
    // Signature (8) + IHDR (25), then the metadata.
    let original = [
        &plain[..33],
        &png_chunk(b"eXIf", &exif_tiff()),
        &png_chunk(b"tEXt", b"Comment\0taken at home"),
        &png_chunk(b"tIME", &[0x07, 0xE9, 3, 14, 9, 26, 53]),
        &plain[33..],
    ]
    .concat();
    assert!(decoder(&original).exif_metadata().unwrap().is_some());

    let got = env.ingest(&original, &Limits::default()).await.unwrap();
    assert_eq!(got.content_type, Kind::Png);
    assert!(got.stripped_metadata);
    let stored = env.download().await;
    assert_eq!(stored, plain);
    assert!(decoder(&stored).exif_metadata().unwrap().is_none());
    assert_eq!(pixels(&stored), pixels(&original));
}

#[tokio::test]
async fn webp_exif_and_xmp_are_blanked() {
    let env = env();
    let mut simple = Vec::new();
    picture()
        .write_to(&mut Cursor::new(&mut simple), image::ImageFormat::WebP)
        .unwrap();
    assert_eq!(&simple[12..16], b"VP8L");
    let chunk = |fourcc: &[u8; 4], data: &[u8]| {
        let mut v = fourcc.to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        if data.len() % 2 == 1 {
            v.push(0);
        }
        v
    };
    let mut vp8x = vec![0x08 | 0x04, 0, 0, 0];
    vp8x.extend_from_slice(&(64u32 - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(48u32 - 1).to_le_bytes()[..3]);
    let chunks = [
        chunk(b"VP8X", &vp8x),
        simple[12..].to_vec(),
        chunk(b"EXIF", &exif_tiff()),
        chunk(b"XMP ", b"<x:xmpmeta>GPS</x:xmpmeta>"),
    ]
    .concat();
    let mut original = b"RIFF".to_vec();
    original.extend_from_slice(&(chunks.len() as u32 + 4).to_le_bytes());
    original.extend_from_slice(b"WEBP");
    original.extend_from_slice(&chunks);
    assert!(find(
        &decoder(&original).exif_metadata().unwrap().unwrap(),
        &latitude()
    ));

    let got = env.ingest(&original, &Limits::default()).await.unwrap();
    assert_eq!(got.content_type, Kind::Webp);
    assert!(got.stripped_metadata);
    let stored = env.download().await;
    assert_eq!(stored.len(), original.len());
    assert!(!find(&stored, &latitude()) && !find(&stored, b"<x:xmpmeta>"));
    assert!(decoder(&stored).exif_metadata().unwrap().is_none());
    assert_eq!(pixels(&stored), pixels(&original));
}

#[tokio::test]
async fn an_executable_named_jpg_is_refused_by_content() {
    // ingest has no parameter for the client's file name or Content-Type:
    // only the bytes decide.
    let env = env();
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(4096, 0x90);
    let e = env.ingest(&elf, &Limits::default()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "attachment type application/x-executable (ELF) is not allowed"
    );
    assert_eq!(
        (e.http_status(), e.code()),
        (415, "attachment_type_not_allowed")
    );
    env.assert_nothing_stored().await;

    for (bytes, named) in [
        (
            &b"MZ\x90\0\x03\0\0\0\x04\0"[..],
            "application/vnd.microsoft.portable-executable",
        ),
        (b"#!/bin/sh\ncurl evil | sh\n", "text/x-shellscript"),
        (
            b"<!DOCTYPE html><html><script>steal()</script>",
            "text/html",
        ),
        (
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"steal()\"/>",
            "image/svg+xml",
        ),
        (b"\0\0\0\x14ftypqt  \0\0\0\0qt  ", "video/quicktime"),
        (b"\x01\x02\x03\x04garbage", "unknown"),
    ] {
        match env.ingest(bytes, &Limits::default()).await {
            Err(IngestError::TypeNotAllowed { detected }) => assert_eq!(detected, named),
            other => panic!("{named}: {other:?}"),
        }
        env.assert_nothing_stored().await;
    }
}

#[tokio::test]
async fn an_oversized_upload_is_cut_off_early() {
    let env = env();
    let limits = Limits {
        max_size: 100_000,
        ..Limits::default()
    };
    let mut data = b"%PDF-1.7\n".to_vec();
    data.resize(10_000_000, b'x');
    // Count how much of the body the pipeline pulled.
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = pulled.clone();
    let src = futures::StreamExt::inspect(body(&data, 16_384), move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let e = ingest(src, &limits, &env.store, &env.key, &env.seal, ID)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "attachment is larger than the limit of 100000 bytes"
    );
    assert_eq!(e.http_status(), 413);
    assert!(pulled.load(std::sync::atomic::Ordering::Relaxed) <= 100_000 / 16_384 + 1);
    env.assert_nothing_stored().await;
    // The declared length is checked before reading anything.
    assert!(matches!(
        limits.check_declared_len(Some(100_001)),
        Err(IngestError::TooLarge { .. })
    ));
    assert!(limits.check_declared_len(Some(100_000)).is_ok());
    // Exactly at the limit is fine.
    let at_limit = &data[..100_000];
    assert_eq!(env.ingest(at_limit, &limits).await.unwrap().size, 100_000);
}

#[tokio::test]
async fn a_truncated_upload_is_an_error_and_stores_nothing() {
    let env = env();
    let jpeg = jpeg_with_gps();
    // The connection breaks mid-body (hyper yields an error item).
    let mut items: Vec<Result<Bytes, std::io::Error>> = jpeg[..jpeg.len() / 2]
        .chunks(700)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    items.push(Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "connection closed before message completed",
    )));
    let e = ingest(
        stream::iter(items),
        &Limits::default(),
        &env.store,
        &env.key,
        &env.seal,
        ID,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "attachment upload broke off after {} bytes: connection closed before message completed",
            jpeg.len() / 2
        )
    );
    assert_eq!((e.http_status(), e.code()), (400, "attachment_truncated"));
    env.assert_nothing_stored().await;

    // A body that ends cleanly but mid-image is caught by the format.
    let e = env
        .ingest(&jpeg[..jpeg.len() - 10], &Limits::default())
        .await
        .unwrap_err();
    assert!(matches!(e, IngestError::Malformed(_)), "{e}");
    assert!(e.to_string().contains("before EOI"), "{e}");
    assert_eq!(e.http_status(), 422);
    env.assert_nothing_stored().await;

    // And an empty one.
    let e = env.ingest(b"", &Limits::default()).await.unwrap_err();
    assert!(matches!(e, IngestError::Empty));
}

#[tokio::test]
async fn other_types_pass_through_byte_for_byte() {
    let env = env();
    let mut mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0isommp42".to_vec();
    let mut noise = vec![0u8; 3 << 20];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
    mp4.extend_from_slice(&noise);
    let got = env.ingest(&mp4, &Limits::default()).await.unwrap();
    assert_eq!(
        (got.content_type, got.stripped_metadata),
        (Kind::Mp4, false)
    );
    assert_eq!(got.content_type.mime(), "video/mp4");
    assert_eq!(got.size, mp4.len() as u64);
    assert_eq!(got.sha256, <[u8; 32]>::from(Sha256::digest(&mp4)));
    assert_eq!(env.download().await, mp4);

    // A type outside a narrower allowlist.
    let only_images = Limits {
        allowed: vec![Kind::Jpeg, Kind::Png],
        ..Limits::default()
    };
    let e = env.ingest(&mp4, &only_images).await.unwrap_err();
    assert_eq!(e.to_string(), "attachment type video/mp4 is not allowed");
}

#[test]
fn the_handler_futures_are_send() {
    // axum needs handler futures to be Send.
    fn send<T: Send>(_: &T) {}
    let env = env();
    let limits = Limits::default();
    let up = ingest(body(b"x", 1), &limits, &env.store, &env.key, &env.seal, ID);
    send(&up);
    let down = env.store.get(&env.key, &env.seal, ID);
    send(&down);
    let gone = env.store.delete(&env.key);
    send(&gone);
}
