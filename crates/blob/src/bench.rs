//! Upload throughput measurement: [`upload`] pushes a generated JPEG of any
//! size through the whole [`crate::ingest()`] pipeline (sniff, metadata strip,
//! SHA-256, sealing, the backend's write and fsync) and reads it back through
//! [`BlobStore::get`]. The generator holds a fixed 1 MiB pool of image-like
//! data and hands out slices of it, so the source costs neither time nor
//! memory that grows with the size. `benches/upload.rs` runs it for several
//! sizes and reports peak heap next to throughput.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use rand::{RngCore, SeedableRng};

use crate::ingest::{IngestError, Limits, ingest};
use crate::{BlobError, BlobKey, BlobStore, SealKey};

/// Size of the pieces the generated body arrives in (like HTTP/1.1 frames).
pub const PIECE: usize = 64 * 1024;
const POOL: usize = 1 << 20;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bytes uploaded.
    pub size: u64,
    /// Bytes stored (after stripping the Exif block).
    pub stored: u64,
    pub upload: Duration,
    pub download: Duration,
}

impl Report {
    pub fn upload_mb_s(&self) -> f64 {
        self.size as f64 / 1e6 / self.upload.as_secs_f64()
    }

    pub fn download_mb_s(&self) -> f64 {
        self.stored as f64 / 1e6 / self.download.as_secs_f64()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench upload: {0}")]
    Ingest(#[from] IngestError),
    #[error("bench download: {0}")]
    Download(#[from] BlobError),
    #[error("bench download returned {got} bytes, {want} were stored")]
    Length { got: u64, want: u64 },
}

/// Uploads a generated `size`-byte JPEG (Exif with GPS, then scan data) into
/// `store`, downloads it, deletes it.
pub async fn upload(size: u64, store: &BlobStore) -> Result<Report, BenchError> {
    let seal = SealKey::generate();
    let key = BlobKey::new("bench/upload")?;
    let limits = Limits {
        max_size: size,
        ..Limits::default()
    };
    let started = Instant::now();
    let got = ingest(
        jpeg_body(size),
        &limits,
        store,
        &key,
        &seal,
        b"bench/upload",
    )
    .await?;
    let upload = started.elapsed();

    let started = Instant::now();
    let mut body = store.get(&key, &seal, b"bench/upload").await?;
    let mut read = 0u64;
    while let Some(piece) = body.next().await {
        read += piece?.len() as u64;
    }
    let download = started.elapsed();
    store.delete(&key).await?;
    if read != got.size {
        return Err(BenchError::Length {
            got: read,
            want: got.size,
        });
    }
    Ok(Report {
        size,
        stored: got.size,
        upload,
        download,
    })
}

/// A JPEG-shaped body of exactly `size` bytes (at least the headers' size):
/// SOI, JFIF, an Exif APP1 with a GPS block, tables, SOS, then scan data
/// with every 0xFF stuffed, then EOI; in [`PIECE`]-byte pieces.
pub fn jpeg_body(size: u64) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut head = vec![0xFF, 0xD8];
    let seg = |head: &mut Vec<u8>, marker: u8, payload: &[u8]| {
        head.extend_from_slice(&[0xFF, marker]);
        head.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        head.extend_from_slice(payload);
    };
    seg(&mut head, 0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    let mut exif =
        b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x88\x25\0\x04\0\0\0\x01\0\0\0\x1a\0\0\0\0".to_vec();
    exif.resize(4096, 0x47);
    seg(&mut head, 0xE1, &exif);
    seg(&mut head, 0xDB, &[0u8; 65]);
    seg(&mut head, 0xC0, &[8, 0x0F, 0xA0, 0x0B, 0xB8, 1, 1, 0x11, 0]);
    seg(&mut head, 0xDA, &[1, 1, 0, 0, 0x3F, 0]);
    let tail: &[u8] = &[0xFF, 0xD9];
    let scan = size.saturating_sub((head.len() + tail.len()) as u64);
    let pool = scan_pool();
    let head = Bytes::from(head);
    let mut pieces = vec![head];
    let mut at = 0usize;
    let mut left = scan;
    let body = stream::iter(std::iter::from_fn(move || {
        if let Some(h) = pieces.pop() {
            return Some(h);
        }
        if left == 0 {
            return None;
        }
        let n = (PIECE as u64).min(left) as usize;
        if at + n > pool.len() {
            at = 0;
        }
        let piece = pool.slice(at..at + n);
        at += n;
        left -= n as u64;
        // Never end the scan on a lone 0xFF.
        if left == 0 && piece.last() == Some(&0xFF) {
            let mut v = piece.to_vec();
            if let Some(last) = v.last_mut() {
                *last = 0x42;
            }
            return Some(Bytes::from(v));
        }
        Some(piece)
    }))
    .chain(stream::once(async move { Bytes::from_static(tail) }));
    body.map(Ok)
}

/// Random bytes with each 0xFF followed by a stuffed 0x00, as in real scan
/// data, [`POOL`] long (a multiple of [`PIECE`], so the generator wraps
/// around only at its end). Consecutive slices form valid scan data; the end
/// is fixed so that wrapping around does not put 0xFF before the first byte.
fn scan_pool() -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut pool = Vec::with_capacity(POOL + 2 * 4096);
    let mut block = [0u8; 4096];
    while pool.len() < POOL {
        rng.fill_bytes(&mut block);
        for &b in &block {
            pool.push(b);
            if b == 0xFF {
                pool.push(0);
            }
        }
    }
    pool.truncate(POOL);
    // Truncation may have cut a 0xFF from its stuffed 0x00.
    if let [.., last] = pool.as_mut_slice()
        && *last == 0xFF
    {
        *last = 0x42;
    }
    Bytes::from(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_run_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(crate::LocalDir::open(tmp.path()).unwrap());
        let r = upload(3 << 20, &store).await.unwrap();
        assert_eq!(r.size, 3 << 20);
        // The Exif block went.
        assert!(r.stored < r.size - 4000);
        assert!(r.upload_mb_s() > 0.0 && r.download_mb_s() > 0.0);
    }

    #[tokio::test]
    async fn the_body_has_the_exact_size() {
        for size in [10_000u64, PIECE as u64 * 3, (POOL as u64) * 2 + 7] {
            let total: usize = jpeg_body(size)
                .map(|p| p.unwrap().len())
                .fold(0, |a, b| async move { a + b })
                .await;
            assert_eq!(total as u64, size);
        }
    }
}
