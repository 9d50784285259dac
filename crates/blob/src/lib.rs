//! Store-and-forward attachments: the upload pipeline ([`ingest()`]), content
//! sniffing ([`sniff`]), metadata stripping ([`strip`]), chunked sealing
//! ([`seal`]) and sealed blob storage ([`BlobStore`] over a [`LocalDir`] or,
//! with the `s3` feature, an S3-compatible bucket).

pub mod backend;
pub mod bench;
mod error;
pub mod ingest;
mod key;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;
pub mod seal;
pub mod sniff;
mod store;
pub mod strip;

pub use backend::{Backend, ByteStream};
pub use error::{BlobError, BoxError};
pub use ingest::{IngestError, Ingested, Limits, ingest};
pub use key::BlobKey;
pub use local::LocalDir;
#[cfg(feature = "s3")]
pub use s3::{ObjectStoreBackend, S3Config};
pub use seal::SealKey;
pub use sniff::Kind;
pub use store::{BlobStore, PlainStream, PutInfo};
