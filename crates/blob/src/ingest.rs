//! The upload pipeline the HTTP handler calls:
//!
//! ```text
//! request body ─▶ size limit ─▶ sniff (first 4 KiB) ─▶ metadata filter ─▶ SHA-256 ─▶ seal ─▶ backend
//! ```
//!
//! Everything streams: the body is read piece by piece, and at any moment the
//! pipeline holds one piece, the sniffing prefix at the start, and one sealed
//! chunk, whatever the upload's size. The type is decided from the content
//! before anything is stored. Any failure (the client's stream breaking off,
//! the size limit, a refused type, a file that does not parse as its type)
//! stores nothing under the key and returns a typed error.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::error::BoxError;
use crate::sniff::{Kind, SNIFF_LEN, Sniffed, sniff};
use crate::strip::{Filter, StripError};
use crate::{BlobError, BlobKey, BlobStore, SealKey};

/// 25 MiB: a phone photo or a short clip; configurable per deployment.
pub const DEFAULT_MAX_SIZE: u64 = 25 << 20;

/// What an upload may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest upload accepted, in bytes as received (before stripping).
    pub max_size: u64,
    /// Types accepted (sniffed from the content).
    pub allowed: Vec<Kind>,
    /// Strip JPEG/PNG/WebP metadata (Exif with GPS, XMP, IPTC, comments).
    pub strip_metadata: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: DEFAULT_MAX_SIZE,
            allowed: Kind::DEFAULT_ALLOWED.to_vec(),
            strip_metadata: true,
        }
    }
}

impl Limits {
    /// Refuses a declared `Content-Length` over the limit before reading the
    /// body (the limit is enforced while streaming either way).
    pub fn check_declared_len(&self, content_length: Option<u64>) -> Result<(), IngestError> {
        match content_length {
            Some(n) if n > self.max_size => Err(IngestError::TooLarge {
                limit: self.max_size,
            }),
            Some(0) => Err(IngestError::Empty),
            _ => Ok(()),
        }
    }
}

/// A stored attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Sniffed from the content.
    pub content_type: Kind,
    /// Bytes stored (after stripping); what a download returns.
    pub size: u64,
    /// Bytes received from the client.
    pub received: u64,
    /// SHA-256 of the bytes stored.
    pub sha256: [u8; 32],
    /// Whether metadata was removed (Exif/GPS, text chunks, trailers).
    pub stripped_metadata: bool,
    /// Bytes the backend holds.
    pub sealed_len: u64,
}

impl Ingested {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("attachment is empty")]
    Empty,
    #[error("attachment is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("attachment type {detected} is not allowed")]
    TypeNotAllowed { detected: String },
    #[error("attachment upload broke off after {received} bytes: {source}")]
    Truncated {
        received: u64,
        #[source]
        source: BoxError,
    },
    #[error("attachment content: {0}")]
    Malformed(#[from] StripError),
    #[error("attachment storage: {0}")]
    Store(#[from] BlobError),
}

impl IngestError {
    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            IngestError::Empty | IngestError::Truncated { .. } => 400,
            IngestError::TooLarge { .. } => 413,
            IngestError::TypeNotAllowed { .. } => 415,
            IngestError::Malformed(_) => 422,
            IngestError::Store(_) => 500,
        }
    }

    /// A stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Empty => "attachment_empty",
            IngestError::TooLarge { .. } => "attachment_too_large",
            IngestError::TypeNotAllowed { .. } => "attachment_type_not_allowed",
            IngestError::Truncated { .. } => "attachment_truncated",
            IngestError::Malformed(_) => "attachment_malformed",
            IngestError::Store(_) => "attachment_storage",
        }
    }
}

/// Reads `body` (an HTTP request body as a stream of pieces), checks size and
/// type, strips metadata, and stores it sealed under `key` with `identity` as
/// associated data (see [`BlobStore::put`]). `key` should be fresh (a new
/// attachment id): on failure it is deleted.
pub async fn ingest<S, E>(
    body: S,
    limits: &Limits,
    store: &BlobStore,
    key: &BlobKey,
    seal: &SealKey,
    identity: &[u8],
) -> Result<Ingested, IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    let mut body: Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send + '_>> =
        Box::pin(body.map(|r| r.map_err(Into::into)));

    // The first SNIFF_LEN bytes decide the type; nothing is stored before.
    let mut head: VecDeque<Bytes> = VecDeque::new();
    let mut head_len = 0usize;
    let mut received = 0u64;
    while head_len < SNIFF_LEN {
        match body.next().await {
            Some(Ok(piece)) => {
                received += piece.len() as u64;
                if received > limits.max_size {
                    return Err(IngestError::TooLarge {
                        limit: limits.max_size,
                    });
                }
                if !piece.is_empty() {
                    head_len += piece.len();
                    head.push_back(piece);
                }
            }
            Some(Err(source)) => return Err(IngestError::Truncated { received, source }),
            None => break,
        }
    }
    if head_len == 0 {
        return Err(IngestError::Empty);
    }
    let mut prefix = Vec::with_capacity(head_len.min(SNIFF_LEN));
    for piece in &head {
        let take = (SNIFF_LEN - prefix.len()).min(piece.len());
        prefix.extend_from_slice(&piece[..take]);
    }
    let kind = match sniff(&prefix) {
        Sniffed::Kind(k) if limits.allowed.contains(&k) => k,
        Sniffed::Kind(k) => {
            return Err(IngestError::TypeNotAllowed {
                detected: k.mime().to_string(),
            });
        }
        Sniffed::Other(name) => {
            return Err(IngestError::TypeNotAllowed {
                detected: name.into_owned(),
            });
        }
    };

    let mut stats = Stats {
        received,
        stripped: false,
    };
    let pipe = Pipeline {
        head,
        body,
        filter: if limits.strip_metadata {
            Filter::for_kind(kind)
        } else {
            Filter::Pass
        },
        limit: limits.max_size,
        out: VecDeque::new(),
        done: false,
        stats: &mut stats,
    };
    match store.put(key, seal, identity, pipe).await {
        Ok(info) => Ok(Ingested {
            content_type: kind,
            size: info.plaintext_len,
            received: stats.received,
            sha256: info.sha256,
            stripped_metadata: stats.stripped,
            sealed_len: info.sealed_len,
        }),
        Err(e) => {
            let err = match e {
                BlobError::Body(b) => match b.downcast::<IngestError>() {
                    Ok(ours) => *ours,
                    Err(other) => IngestError::Store(BlobError::Body(other)),
                },
                other => IngestError::Store(other),
            };
            // Backends store nothing on a failed put; this removes anything a
            // misbehaving one might have left.
            if let Err(de) = store.delete(key).await {
                tracing::warn!(%key, error = %de, "could not delete a failed upload's blob");
            }
            Err(err)
        }
    }
}

struct Stats {
    received: u64,
    stripped: bool,
}

struct Pipeline<'a> {
    head: VecDeque<Bytes>,
    body: Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send + 'a>>,
    filter: Filter,
    limit: u64,
    out: VecDeque<Bytes>,
    done: bool,
    stats: &'a mut Stats,
}

impl Stream for Pipeline<'_> {
    type Item = Result<Bytes, IngestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let next = match this.head.pop_front() {
                Some(piece) => Some(Ok(piece)),
                None => match this.body.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(next) => {
                        if let Some(Ok(piece)) = &next {
                            this.stats.received += piece.len() as u64;
                            if this.stats.received > this.limit {
                                return this.fail(IngestError::TooLarge { limit: this.limit });
                            }
                        }
                        next
                    }
                },
            };
            match next {
                Some(Ok(piece)) => {
                    if let Err(e) = this.filter.push(piece, &mut this.out) {
                        return this.fail(e.into());
                    }
                }
                Some(Err(source)) => {
                    let received = this.stats.received;
                    return this.fail(IngestError::Truncated { received, source });
                }
                None => {
                    this.done = true;
                    if let Err(e) = this.filter.finish() {
                        return this.fail(e.into());
                    }
                    this.stats.stripped = this.filter.stripped();
                }
            }
        }
    }
}

impl Pipeline<'_> {
    fn fail(&mut self, e: IngestError) -> Poll<Option<Result<Bytes, IngestError>>> {
        self.done = true;
        self.out.clear();
        Poll::Ready(Some(Err(e)))
    }
}
