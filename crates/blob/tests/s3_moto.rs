//! The S3 backend against a real S3-compatible server: moto in server mode,
//! from `.venv-peers` (tests/peers/requirements.txt; scripts/test installs it).
#![cfg(feature = "s3")]

use bytes::Bytes;
use continuum_blob::{
    BlobError, BlobKey, BlobStore, IngestError, Kind, Limits, ObjectStoreBackend, S3Config,
    SealKey, ingest,
};
use futures::{TryStreamExt, stream};
use object_store::ObjectStoreExt;
use rand::{RngCore, SeedableRng};

const ID: &[u8] = b"tenant-1/att-1";
mod moto;
use moto::{BUCKET, Moto, moto};

fn backend(moto: &Moto) -> ObjectStoreBackend {
    let cfg = S3Config {
        endpoint: Some(format!("http://{}", moto.addr)),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        prefix: Some("attachments".into()),
        allow_http: true,
        part_size: 5 << 20,
        ..S3Config::default()
    };
    cfg.build().unwrap()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn pieces(data: &[u8], n: usize) -> Vec<Result<Bytes, std::io::Error>> {
    data.chunks(n)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

async fn read_all(store: &BlobStore, key: &BlobKey, seal: &SealKey) -> Result<Vec<u8>, BlobError> {
    let parts: Vec<Bytes> = store.get(key, seal, ID).await?.try_collect().await?;
    Ok(parts.concat())
}

#[tokio::test]
async fn s3_put_get_delete_against_moto() {
    let moto = moto().await;
    let backend = backend(&moto);
    let store = BlobStore::new(backend.clone());
    let seal = SealKey::generate();

    // One PUT (under a part) and a three-part multipart upload.
    for (name, len) in [("t/small", 300_000usize), ("t/large", 12 << 20)] {
        let key = BlobKey::new(name).unwrap();
        let data = random(len, len as u64);
        let info = store
            .put(&key, &seal, ID, stream::iter(pieces(&data, 65_536)))
            .await
            .unwrap();
        assert_eq!(info.plaintext_len, len as u64);
        assert_eq!(read_all(&store, &key, &seal).await.unwrap(), data);
        // Under the prefix, at the sealed size.
        let loc = backend.location(&key);
        assert_eq!(loc.as_ref(), format!("attachments/{name}"));
        let meta = backend.store().head(&loc).await.unwrap();
        assert_eq!(meta.size, info.sealed_len);
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.get(&key, &seal, ID).await.err(),
            Some(BlobError::NotFound { .. })
        ));
        store.delete(&key).await.unwrap();
    }

    // A body that breaks off after the first part: the upload is aborted and
    // no object appears.
    let key = BlobKey::new("t/broken").unwrap();
    let mut items = pieces(&random(7 << 20, 3), 65_536);
    items.push(Err(std::io::Error::other("client went away")));
    let e = store
        .put(&key, &seal, ID, stream::iter(items))
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::Body(_)), "{e}");
    assert!(matches!(
        store.get(&key, &seal, ID).await.err(),
        Some(BlobError::NotFound { .. })
    ));
}

#[tokio::test]
async fn ingest_into_s3_refuses_and_stores() {
    let moto = moto().await;
    let store = BlobStore::new(backend(&moto));
    let seal = SealKey::generate();
    let key = BlobKey::new("tenant-1/att-1").unwrap();

    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(100_000, 0);
    let e = ingest(
        stream::iter(pieces(&elf, 4096)),
        &Limits::default(),
        &store,
        &key,
        &seal,
        ID,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, IngestError::TypeNotAllowed { .. }), "{e}");
    assert!(matches!(
        store.get(&key, &seal, ID).await.err(),
        Some(BlobError::NotFound { .. })
    ));

    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.extend_from_slice(&random(6 << 20, 4));
    let got = ingest(
        stream::iter(pieces(&pdf, 65_536)),
        &Limits::default(),
        &store,
        &key,
        &seal,
        ID,
    )
    .await
    .unwrap();
    assert_eq!((got.content_type, got.size), (Kind::Pdf, pdf.len() as u64));
    assert_eq!(read_all(&store, &key, &seal).await.unwrap(), pdf);
}
