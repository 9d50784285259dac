//! [`BlobStore`]: seals on the way in, verifies on the way out, over any
//! [`Backend`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, ByteStream};
use crate::error::BoxError;
use crate::seal::{Opener, SealKey, SealSummary, Sealer};
use crate::{BlobError, BlobKey};

/// What [`BlobStore::put`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutInfo {
    /// Plaintext bytes stored (what `get` gives back).
    pub plaintext_len: u64,
    /// Bytes the backend holds (header, chunks, tags).
    pub sealed_len: u64,
    /// SHA-256 of the plaintext as stored.
    pub sha256: [u8; 32],
}

/// Verified plaintext of a stored blob, chunk by chunk.
pub type PlainStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send + 'static>>;

/// Sealed blob storage; cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Arc<dyn Backend>,
}

impl BlobStore {
    pub fn new(backend: impl Backend) -> Self {
        BlobStore {
            backend: Arc::new(backend),
        }
    }

    pub fn from_arc(backend: Arc<dyn Backend>) -> Self {
        BlobStore { backend }
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Seals `body` as it streams (one chunk of plaintext held at a time),
    /// hashes the plaintext and stores it under `key`. `identity` (e.g.
    /// `tenant/attachment`) is bound into every chunk and must be given again
    /// to [`BlobStore::get`]. A body error stores nothing and comes back as
    /// [`BlobError::Body`].
    pub async fn put<S, E>(
        &self,
        key: &BlobKey,
        seal: &SealKey,
        identity: &[u8],
        body: S,
    ) -> Result<PutInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BoxError>,
    {
        let mut state = SealState {
            sealer: Some(Sealer::new(seal, identity)),
            summary: None,
            hasher: Sha256::new(),
            key,
        };
        let sealed = SealStream {
            body: Box::pin(body.map(|r| r.map_err(Into::into))),
            state: &mut state,
            queue: VecDeque::new(),
            done: false,
        };
        let stored = self.backend.put(key, sealed.boxed()).await?;
        match state.summary {
            Some(s) if s.sealed_len == stored => Ok(PutInfo {
                plaintext_len: s.plaintext_len,
                sealed_len: s.sealed_len,
                sha256: state.hasher.finalize().into(),
            }),
            // A backend that returns before the end of the body (or miscounts)
            // broke the `put` contract: refuse to call the blob stored.
            _ => Err(BlobError::Io {
                op: "store all of",
                path: key.as_str().into(),
                source: std::io::Error::other("the backend did not store the whole sealed body"),
            }),
        }
    }

    /// The blob's plaintext; each chunk is authenticated before it is yielded.
    /// A stream that ends with `Ok` chunks only was complete and authentic; an
    /// `Err` item (tampering, truncation, I/O) ends it.
    pub async fn get(
        &self,
        key: &BlobKey,
        seal: &SealKey,
        identity: &[u8],
    ) -> Result<PlainStream, BlobError> {
        let sealed = self.backend.get(key).await?;
        Ok(Box::pin(OpenStream {
            sealed,
            opener: Opener::new(seal, identity),
            queue: VecDeque::new(),
            error: None,
            done: false,
            key: key.to_string(),
        }))
    }

    pub async fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        self.backend.delete(key).await
    }
}

struct SealState<'k> {
    sealer: Option<Sealer>,
    summary: Option<SealSummary>,
    hasher: Sha256,
    key: &'k BlobKey,
}

struct SealStream<'a, 'k> {
    body: Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send + 'a>>,
    state: &'a mut SealState<'k>,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl Stream for SealStream<'_, '_> {
    type Item = Result<Bytes, BlobError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let seal_err = |source| BlobError::Seal {
                key: this.state.key.to_string(),
                source,
            };
            match this.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(piece))) => {
                    this.state.hasher.update(&piece);
                    if let Some(s) = this.state.sealer.as_mut()
                        && let Err(e) = s.push(&piece, &mut this.queue)
                    {
                        this.done = true;
                        return Poll::Ready(Some(Err(seal_err(e))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(BlobError::Body(e))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(s) = this.state.sealer.take() {
                        match s.finish(&mut this.queue) {
                            Ok(summary) => this.state.summary = Some(summary),
                            Err(e) => return Poll::Ready(Some(Err(seal_err(e)))),
                        }
                    }
                }
            }
        }
    }
}

struct OpenStream {
    sealed: ByteStream<'static>,
    opener: Opener,
    queue: VecDeque<Bytes>,
    error: Option<BlobError>,
    done: bool,
    key: String,
}

impl Stream for OpenStream {
    type Item = Result<Bytes, BlobError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if let Some(e) = this.error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let step = match this.sealed.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(piece))) => this.opener.push(&piece, &mut this.queue),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.opener.finish(&mut this.queue).map(|_| ())
                }
            };
            if let Err(source) = step {
                // Chunks queued before the failure were authenticated: they go
                // out first, then the error.
                this.done = true;
                this.error = Some(BlobError::Open {
                    key: this.key.clone(),
                    source,
                });
            }
        }
    }
}
