//! Store-and-forward attachments: the upload pipeline ([`ingest()`]), content
//! sniffing ([`sniff`]), metadata stripping ([`strip`]), chunked sealing
//! ([`seal`]) and sealed blob storage ([`BlobStore`] over a [`LocalDir`] or,
//! with the `s3` feature, an S3-compatible bucket).
//!
//! # What the HTTP handler does
//!
//! ```
//! use bytes::Bytes;
//! use continuum_blob::{BlobKey, BlobStore, IngestError, Kind, Limits, LocalDir, SealKey, ingest};
//! use futures::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let data_dir = tempfile::tempdir()?;
//! // Once, at startup (or `S3Config { .. }.build()?` for a bucket).
//! let store = BlobStore::new(LocalDir::open(data_dir.path().join("attachments"))?);
//!
//! // Per upload. The server derives the key from the tenant's data key, e.g.
//! // `SealKey::new(*tenant_keys.data.derive("attachments").as_bytes())`.
//! let seal = SealKey::generate();
//! let key = BlobKey::new("tenant-7/0197c7a4-5b1e-7c2e-9a0f-3d2c1b0a9f8e")?;
//! let identity = key.as_str().as_bytes(); // binds the sealed bytes to this attachment
//! let limits = Limits::default();
//! // `Content-Length`, if the client sent one, is refused before reading.
//! limits.check_declared_len(Some(14))?;
//! // axum: `request.into_body().into_data_stream()`.
//! let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"%PDF-1.7\n%%EOF"))]);
//! match ingest(body, &limits, &store, &key, &seal, identity).await {
//!     Ok(att) => {
//!         // Record att.content_type.mime(), att.size, att.sha256_hex(),
//!         // att.stripped_metadata with the attachment row.
//!         assert_eq!((att.content_type, att.size), (Kind::Pdf, 14));
//!     }
//!     // Answer e.http_status() with e.code() and e.to_string().
//!     Err(e) => panic!("{} {}: {e}", e.http_status(), e.code()),
//! }
//!
//! // Download: verified plaintext, chunk by chunk; axum: `Body::from_stream(plain)`
//! // with the recorded type and size as Content-Type and Content-Length.
//! let plain = store.get(&key, &seal, identity).await?;
//! let bytes: Vec<Bytes> = plain.try_collect().await?;
//! assert_eq!(bytes.concat(), b"%PDF-1.7\n%%EOF");
//! # let _: Option<IngestError> = None;
//! # Ok(())
//! # }
//! ```

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
