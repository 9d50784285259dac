use std::path::PathBuf;

use crate::seal::{OpenError, SealError};

/// A boxed error from the caller's body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the blob stores. Keys are ids (never PHI), so they are named.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob key {key:?} {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("blob {key} not found")]
    NotFound { key: String },
    #[error("blob store could not {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "s3")]
    #[error("object store could not {op} blob {key}: {source}")]
    ObjectStore {
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("blob store config {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("sealing blob {key}: {source}")]
    Seal {
        key: String,
        #[source]
        source: SealError,
    },
    #[error("opening blob {key}: {source}")]
    Open {
        key: String,
        #[source]
        source: OpenError,
    },
    /// The body stream handed to `put` failed; nothing was stored.
    #[error("blob body stream failed: {0}")]
    Body(#[source] BoxError),
}

impl BlobError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BlobError {
        let path = path.into();
        move |source| BlobError::Io { op, path, source }
    }
}
