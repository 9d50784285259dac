//! S3-compatible storage (and any other `object_store` backend) for sealed
//! blobs.
//!
//! Small blobs (under one part) go up in a single PUT. Larger ones stream as a
//! multipart upload in `part_size` parts with at most `max_concurrency` parts
//! in flight, so memory is about `(max_concurrency + 1) * part_size` whatever
//! the blob's size; the object appears only when the upload completes. A body
//! error aborts the upload. If the process dies mid-upload the parts stay
//! invisible but billed until a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) removes them: configure one.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::backend::{Backend, ByteStream};
use crate::{BlobError, BlobKey};

/// S3 refuses parts under 5 MiB (all but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
pub const DEFAULT_MAX_CONCURRENCY: usize = 2;

/// Settings for an S3-compatible bucket (AWS, MinIO, Ceph RGW, Garage, moto).
#[derive(Clone, Default)]
pub struct S3Config {
    /// `https://s3.eu-central-1.amazonaws.com`, `http://127.0.0.1:9000`; AWS's
    /// endpoint for `region` when `None`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Objects go under `<prefix>/<key>`.
    pub prefix: Option<String>,
    /// Plain HTTP endpoints (local test servers); refused otherwise.
    pub allow_http: bool,
    /// `https://<bucket>.<endpoint>` addressing instead of `<endpoint>/<bucket>`.
    pub virtual_hosted_style: bool,
    /// Multipart part size; 0 means [`DEFAULT_PART_SIZE`].
    pub part_size: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| ".."),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| ".."))
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Config {
    pub fn build(&self) -> Result<ObjectStoreBackend, BlobError> {
        if self.bucket.is_empty() {
            return Err(BlobError::Config {
                field: "bucket",
                reason: "is empty".into(),
            });
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(self.virtual_hosted_style);
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(t);
        }
        let store = b.build().map_err(|e| BlobError::Config {
            field: "s3",
            reason: e.to_string(),
        })?;
        let mut backend = ObjectStoreBackend::new(Arc::new(store));
        if let Some(p) = &self.prefix {
            backend = backend.with_prefix(p)?;
        }
        if self.part_size != 0 {
            backend = backend.with_part_size(self.part_size)?;
        }
        Ok(backend)
    }
}

/// A [`Backend`] over any `object_store` store (S3 through [`S3Config`]; the
/// in-memory store in tests).
#[derive(Debug, Clone)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    part_size: usize,
    max_concurrency: usize,
}

impl ObjectStoreBackend {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreBackend {
            store,
            prefix: None,
            part_size: DEFAULT_PART_SIZE,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }

    /// Objects go under `<prefix>/<key>`; the prefix follows [`BlobKey`]'s rules.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, BlobError> {
        let p = prefix.trim_matches('/');
        BlobKey::new(p).map_err(|e| BlobError::Config {
            field: "prefix",
            reason: e.to_string(),
        })?;
        self.prefix = Some(p.to_string());
        Ok(self)
    }

    pub fn with_part_size(mut self, part_size: usize) -> Result<Self, BlobError> {
        if part_size < MIN_PART_SIZE {
            return Err(BlobError::Config {
                field: "part_size",
                reason: format!("{part_size} is below S3's minimum part of {MIN_PART_SIZE} bytes"),
            });
        }
        self.part_size = part_size;
        Ok(self)
    }

    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// The underlying store (operations this crate does not wrap, tests).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where `key` lives in the store.
    pub fn location(&self, key: &BlobKey) -> Path {
        match &self.prefix {
            Some(p) => p.split('/').chain(key.segments()).collect(),
            None => key.segments().collect(),
        }
    }

    fn err(op: &'static str, key: &BlobKey) -> impl FnOnce(object_store::Error) -> BlobError {
        let key = key.to_string();
        move |source| match source {
            object_store::Error::NotFound { .. } => BlobError::NotFound { key },
            source => BlobError::ObjectStore {
                op,
                key,
                source: Box::new(source),
            },
        }
    }

    async fn put_object(&self, key: &BlobKey, mut body: ByteStream<'_>) -> Result<u64, BlobError> {
        let loc = self.location(key);
        // Gather up to one part: a blob that fits goes up in one PUT.
        let mut first: Vec<Bytes> = Vec::new();
        let mut first_len = 0usize;
        let mut ended = true;
        while let Some(piece) = body.next().await {
            let piece = piece?;
            first_len += piece.len();
            first.push(piece);
            if first_len >= self.part_size {
                ended = false;
                break;
            }
        }
        if ended {
            self.store
                .put(&loc, first.into_iter().collect::<PutPayload>())
                .await
                .map_err(Self::err("put", key))?;
            return Ok(first_len as u64);
        }
        let upload = self
            .store
            .put_multipart(&loc)
            .await
            .map_err(Self::err("start multipart upload of", key))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut len = first_len as u64;
        for piece in first {
            w.put(piece);
        }
        loop {
            if let Err(e) = w.wait_for_capacity(self.max_concurrency).await {
                let _ = w.abort().await;
                return Err(Self::err("upload a part of", key)(e));
            }
            match body.next().await {
                Some(Ok(piece)) => {
                    len += piece.len() as u64;
                    w.put(piece);
                }
                Some(Err(e)) => {
                    if let Err(abort) = w.abort().await {
                        tracing::warn!(%key, error = %abort, "aborting a failed multipart upload failed; a lifecycle rule must clean its parts");
                    }
                    return Err(e);
                }
                None => break,
            }
        }
        w.finish()
            .await
            .map_err(Self::err("complete multipart upload of", key))?;
        Ok(len)
    }

    async fn get_object(&self, key: &BlobKey) -> Result<ByteStream<'static>, BlobError> {
        let loc = self.location(key);
        let got = self.store.get(&loc).await.map_err(Self::err("get", key))?;
        let key = key.clone();
        Ok(got
            .into_stream()
            .map_err(move |e| Self::err("read", &key)(e))
            .boxed())
    }

    async fn delete_object(&self, key: &BlobKey) -> Result<(), BlobError> {
        match self.store.delete(&self.location(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::err("delete", key)(e)),
        }
    }
}

impl Backend for ObjectStoreBackend {
    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        body: ByteStream<'a>,
    ) -> BoxFuture<'a, Result<u64, BlobError>> {
        Box::pin(self.put_object(key, body))
    }

    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
    ) -> BoxFuture<'a, Result<ByteStream<'static>, BlobError>> {
        Box::pin(self.get_object(key))
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(self.delete_object(key))
    }
}
