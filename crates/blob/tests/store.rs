//! BlobStore over the local directory and the in-memory object store.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use continuum_blob::seal::{self, DEFAULT_CHUNK_LEN, OpenError};
use continuum_blob::{BlobError, BlobKey, BlobStore, LocalDir, SealKey};
use futures::{StreamExt, TryStreamExt, stream};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const ID: &[u8] = b"tenant-1/att-1";

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `data` in pieces of random sizes (1..=100_000 bytes).
fn pieces(data: &[u8], seed: u64) -> Vec<Result<Bytes, std::io::Error>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = rng.gen_range(1..=100_000).min(data.len() - at);
        out.push(Ok(Bytes::copy_from_slice(&data[at..at + n])));
        at += n;
    }
    out
}

async fn read_all(
    store: &BlobStore,
    key: &BlobKey,
    seal: &SealKey,
    id: &[u8],
) -> Result<Vec<u8>, BlobError> {
    let s = store.get(key, seal, id).await?;
    let parts: Vec<Bytes> = s.try_collect().await?;
    Ok(parts.concat())
}

fn tmp_entries(dir: &LocalDir) -> usize {
    std::fs::read_dir(dir.root().join(".tmp")).unwrap().count()
}

#[tokio::test]
async fn local_round_trip_with_permissions_and_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("blobs");
    let dir = LocalDir::open(&root).unwrap();
    let store = BlobStore::new(dir.clone());
    let seal = SealKey::generate();
    let key = BlobKey::new("tenant-1/att-1/original").unwrap();
    for (len, seed) in [(0usize, 1u64), (1, 2), (DEFAULT_CHUNK_LEN, 3), (700_001, 4)] {
        let data = random(len, seed);
        let info = store
            .put(&key, &seal, ID, stream::iter(pieces(&data, seed)))
            .await
            .unwrap();
        assert_eq!(info.plaintext_len, len as u64);
        assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(
            info.sealed_len,
            seal::sealed_len(len as u64, DEFAULT_CHUNK_LEN)
        );
        let path = dir.path_of(&key);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), info.sealed_len);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Sealed: the plaintext does not appear on disk.
        if len > 64 {
            let on_disk = std::fs::read(&path).unwrap();
            assert!(!on_disk.windows(64).any(|w| w == &data[..64]));
        }
        assert_eq!(read_all(&store, &key, &seal, ID).await.unwrap(), data);
    }
    for d in [&root, &root.join("tenant-1"), &root.join("tenant-1/att-1")] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    assert_eq!(tmp_entries(&dir), 0);
}

#[tokio::test]
async fn a_failing_body_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalDir::open(tmp.path()).unwrap();
    let store = BlobStore::new(dir.clone());
    let seal = SealKey::generate();
    let key = BlobKey::new("t/broken").unwrap();
    let mut items = pieces(&random(300_000, 5), 5);
    items.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "client went away",
    )));
    let err = store
        .put(&key, &seal, ID, stream::iter(items))
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Body(_)), "{err}");
    assert_eq!(err.to_string(), "blob body stream failed: client went away");
    assert!(!dir.path_of(&key).exists());
    assert_eq!(tmp_entries(&dir), 0);
    assert!(matches!(
        store.get(&key, &seal, ID).await.err(),
        Some(BlobError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_blob_is_invisible_until_complete_and_a_dropped_put_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalDir::open(tmp.path()).unwrap();
    let store = BlobStore::new(dir.clone());
    let seal = SealKey::generate();
    let key = BlobKey::new("t/slow").unwrap();

    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    let task = {
        let (store, key, seal) = (store.clone(), key.clone(), seal.clone());
        tokio::spawn(async move { store.put(&key, &seal, ID, rx).await })
    };
    tx.unbounded_send(Ok(Bytes::from(random(200_000, 6))))
        .unwrap();
    // Wait (bounded) until the upload is under way in its temp file.
    let mut spins = 0;
    while tmp_entries(&dir) == 0 {
        spins += 1;
        assert!(spins < 1_000_000, "put never created its temp file");
        tokio::task::yield_now().await;
    }
    assert!(!dir.path_of(&key).exists());
    // The client disconnects and the handler's future is dropped.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // The writer thread sees its queue close without a commit and removes
    // the temp file.
    let mut spins = 0;
    while tmp_entries(&dir) != 0 {
        spins += 1;
        assert!(spins < 1_000_000, "the temp file of a dropped put stayed");
        tokio::task::yield_now().await;
    }
    assert!(!dir.path_of(&key).exists());
}

#[tokio::test]
async fn tampering_truncation_and_wrong_identity_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalDir::open(tmp.path()).unwrap();
    let store = BlobStore::new(dir.clone());
    let seal = SealKey::generate();
    let key = BlobKey::new("t/x").unwrap();
    let data = random(3 * DEFAULT_CHUNK_LEN + 10, 7);
    store
        .put(&key, &seal, ID, stream::iter(pieces(&data, 7)))
        .await
        .unwrap();
    let path = dir.path_of(&key);
    let good = std::fs::read(&path).unwrap();

    // Another identity (the blob copied under another attachment).
    let e = read_all(&store, &key, &seal, b"tenant-1/att-2")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BlobError::Open {
                source: OpenError::Chunk { index: 0 },
                ..
            }
        ),
        "{e}"
    );

    // A flipped bit in chunk 2: chunks 0 and 1 come out, then the error.
    let mut bad = good.clone();
    bad[seal::HEADER_LEN + 2 * (DEFAULT_CHUNK_LEN + 16) + 5] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    let mut s = store.get(&key, &seal, ID).await.unwrap();
    let mut ok = 0;
    let err = loop {
        match s.next().await {
            Some(Ok(b)) => ok += b.len(),
            Some(Err(e)) => break e,
            None => panic!("tampered blob read to the end"),
        }
    };
    assert_eq!(ok, 2 * DEFAULT_CHUNK_LEN);
    assert_eq!(
        err.to_string(),
        "opening blob t/x: sealed blob chunk 2 failed authentication (altered bytes, reordered chunks, or sealed under another key or identity)"
    );

    // Cut at a chunk boundary.
    std::fs::write(
        &path,
        &good[..seal::HEADER_LEN + 3 * (DEFAULT_CHUNK_LEN + 16)],
    )
    .unwrap();
    let e = read_all(&store, &key, &seal, ID).await.unwrap_err();
    assert!(
        matches!(
            e,
            BlobError::Open {
                source: OpenError::Truncated { index: 2 },
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn keys_delete_and_stale_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalDir::open(tmp.path()).unwrap();
    let store = BlobStore::new(dir.clone());
    let seal = SealKey::generate();
    assert!(BlobKey::new("../etc/passwd").is_err());
    let key = BlobKey::new("t/gone").unwrap();
    store.delete(&key).await.unwrap(); // missing: fine
    store
        .put(
            &key,
            &seal,
            ID,
            stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]),
        )
        .await
        .unwrap();
    store.delete(&key).await.unwrap();
    assert!(matches!(
        store.get(&key, &seal, ID).await.err(),
        Some(BlobError::NotFound { .. })
    ));

    let stale = dir.root().join(".tmp/crashed.part");
    let fresh = dir.root().join(".tmp/uploading.part");
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&fresh, b"half").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 24 * 3600))
        .unwrap();
    LocalDir::open(dir.root()).unwrap();
    assert!(!stale.exists());
    assert!(fresh.exists());
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn object_store_backend_streams_multipart() {
    use continuum_blob::ObjectStoreBackend;
    use object_store::memory::InMemory;
    use std::sync::Arc;
    let mem = Arc::new(InMemory::new());
    let backend = ObjectStoreBackend::new(mem.clone())
        .with_prefix("attachments")
        .unwrap()
        .with_part_size(5 << 20)
        .unwrap();
    let store = BlobStore::new(backend);
    let seal = SealKey::generate();
    let key = BlobKey::new("t/big").unwrap();
    let data = random(12 << 20, 8);
    let info = store
        .put(&key, &seal, ID, stream::iter(pieces(&data, 8)))
        .await
        .unwrap();
    assert_eq!(info.plaintext_len, data.len() as u64);
    let listed: Vec<_> = object_store::ObjectStore::list(&*mem, None)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location.as_ref(), "attachments/t/big");
    assert_eq!(listed[0].size, info.sealed_len);
    assert_eq!(read_all(&store, &key, &seal, ID).await.unwrap(), data);

    // A body that fails after the first part: the multipart upload is aborted.
    let key2 = BlobKey::new("t/broken").unwrap();
    let mut items = pieces(&random(7 << 20, 9), 9);
    items.push(Err(std::io::Error::other("reset")));
    let e = store
        .put(&key2, &seal, ID, stream::iter(items))
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::Body(_)), "{e}");
    assert!(matches!(
        store.get(&key2, &seal, ID).await.err(),
        Some(BlobError::NotFound { .. })
    ));

    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert!(matches!(
        store.get(&key, &seal, ID).await.err(),
        Some(BlobError::NotFound { .. })
    ));
}

#[test]
fn keys_are_validated_once() {
    let e = BlobKey::new("a/../b").unwrap_err();
    assert_eq!(
        e.to_string(),
        "blob key \"a/../b\" has a segment starting with '.'"
    );
}
