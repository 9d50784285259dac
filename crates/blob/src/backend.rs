//! Where sealed bytes live. A backend stores opaque bytes under a key; it
//! never sees plaintext or keys (sealing is done above it, in
//! [`crate::BlobStore`]).

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::{BlobError, BlobKey};

pub type ByteStream<'a> = BoxStream<'a, Result<bytes::Bytes, BlobError>>;

/// Storage of sealed blobs.
///
/// `put` contract: consume `body` to its end and make the blob appear under
/// `key` atomically (whole or not at all, replacing any previous one). If
/// `body` yields an error, store nothing and return that error unchanged. If
/// the future is dropped mid-way, nothing appears under `key` either.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Returns the number of bytes stored.
    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        body: ByteStream<'a>,
    ) -> BoxFuture<'a, Result<u64, BlobError>>;

    /// The stored bytes, or [`BlobError::NotFound`].
    fn get<'a>(&'a self, key: &'a BlobKey)
    -> BoxFuture<'a, Result<ByteStream<'static>, BlobError>>;

    /// Removes the blob; removing a missing blob is not an error.
    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<(), BlobError>>;
}
