//! Store-and-forward glue: uploads and inbound media (MMS, WhatsApp) into
//! the sealed blob store (`continuum-blob`: sniffed type, size limit,
//! metadata stripped, sealed in chunks with the tenant's key), recorded as
//! attachments on the conversation (`continuum-store`).

use crate::config::AttachmentsConfig;
use bytes::Bytes;
use continuum_blob::{BlobKey, BlobStore, IngestError, Kind, Limits, LocalDir, SealKey, ingest};
use continuum_core::{Actor, Channel};
use continuum_store::{Attachment, NewAttachment, Store};
use futures::Stream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct Attachments {
    pub store: Store,
    pub blobs: BlobStore,
    pub limits: Limits,
    /// For inbound media: no redirects, public addresses only (unless
    /// `attachments.allow_private_media`), bounded time.
    fetcher: reqwest::Client,
}

/// Why an attachment could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] continuum_store::StoreError),
    #[error("{0}")]
    Fetch(String),
}

impl Attachments {
    pub fn open(
        cfg: &AttachmentsConfig,
        data_dir: &Path,
        store: Store,
    ) -> anyhow::Result<Attachments> {
        use anyhow::Context;
        let blobs = match &cfg.s3 {
            Some(s3) => {
                let backend = continuum_blob::S3Config {
                    endpoint: s3.endpoint.clone(),
                    bucket: s3.bucket.clone(),
                    region: s3.region.clone(),
                    access_key_id: s3.access_key_id.clone(),
                    secret_access_key: s3.secret_access_key.clone(),
                    session_token: None,
                    prefix: s3.prefix.clone(),
                    allow_http: s3.allow_http,
                    virtual_hosted_style: false,
                    part_size: 0,
                }
                .build()
                .context("attachments.s3")?;
                BlobStore::new(backend)
            }
            None => {
                let dir = cfg
                    .dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("attachments"));
                if store.backend() == "postgres" {
                    // The rows are shared, the files would not be: an
                    // upload through this node would not open on another.
                    tracing::warn!(
                        dir = %dir.display(),
                        "attachments are kept in a directory while the store is shared (PostgreSQL): unless every node mounts this same directory, set attachments.s3 so each node can read what another stored"
                    );
                }
                BlobStore::new(LocalDir::open(&dir).with_context(|| {
                    format!("opening the attachments directory {}", dir.display())
                })?)
            }
        };
        let mut allowed = Vec::new();
        for (i, t) in cfg.allowed_types.iter().enumerate() {
            allowed.push(Kind::from_mime(t).with_context(|| {
                format!(
                    "attachments.allowed_types[{i}]: `{t}` is not a type Continuum can recognise"
                )
            })?);
        }
        let limits = Limits {
            max_size: cfg.max_bytes,
            allowed: if allowed.is_empty() {
                Kind::DEFAULT_ALLOWED.to_vec()
            } else {
                allowed
            },
            strip_metadata: cfg.strip_metadata,
        };
        let mut fetcher = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.fetch_timeout_secs.max(1)))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("Continuum-Media/", env!("CARGO_PKG_VERSION")));
        if !cfg.allow_private_media {
            fetcher = fetcher.dns_resolver(Arc::new(crate::dispatch::PublicOnlyResolver));
        }
        Ok(Attachments {
            store,
            blobs,
            limits,
            fetcher: fetcher.build().context("building the media HTTP client")?,
        })
    }

    /// Streams `body` into the blob store and records it on the
    /// conversation. Nothing is recorded (and nothing kept) when it fails.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_stream<S, E>(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        body: S,
        filename: Option<String>,
        source: &str,
        channel: Channel,
        caption: Option<String>,
        actor: Actor,
        audit_actor: &str,
    ) -> Result<Attachment, AttachmentError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let id = uuid::Uuid::now_v7().to_string();
        let key = BlobKey::new(format!("{tenant_id}/{id}")).map_err(IngestError::Store)?;
        let seal = SealKey::new(*self.store.attachment_key(tenant_id).await?.as_bytes());
        let identity = key.as_str().as_bytes().to_vec();
        let started = std::time::Instant::now();
        let got = ingest(body, &self.limits, &self.blobs, &key, &seal, &identity).await;
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                metrics::counter!("continuum_attachments_refused_total", "code" => e.code())
                    .increment(1);
                return Err(e.into());
            }
        };
        metrics::counter!("continuum_attachments_stored_total", "source" => source.to_owned())
            .increment(1);
        metrics::counter!("continuum_attachments_bytes_total").increment(got.size);
        metrics::histogram!("continuum_attachments_ingest_seconds")
            .record(started.elapsed().as_secs_f64());
        let new = NewAttachment {
            id,
            blob_key: key.as_str().to_owned(),
            content_type: got.content_type.mime().to_owned(),
            size: got.size as i64,
            sha256: got.sha256_hex(),
            filename,
            metadata_stripped: got.stripped_metadata,
            source: source.to_owned(),
            channel,
            actor,
            caption,
        };
        match self
            .store
            .record_attachment(tenant_id, conversation_id, new, audit_actor)
            .await
        {
            Ok((a, _)) => Ok(a),
            Err(e) => {
                // Stored but not recorded: nobody could reach it, so it goes.
                let _ = self.blobs.delete(&key).await;
                Err(e.into())
            }
        }
    }

    /// The plaintext of a stored attachment, verified chunk by chunk.
    pub async fn open_stream(
        &self,
        tenant_id: &str,
        a: &Attachment,
    ) -> Result<continuum_blob::PlainStream, AttachmentError> {
        let key = BlobKey::new(a.blob_key.clone()).map_err(IngestError::Store)?;
        let seal = SealKey::new(*self.store.attachment_key(tenant_id).await?.as_bytes());
        let identity = key.as_str().as_bytes().to_vec();
        self.blobs
            .get(&key, &seal, &identity)
            .await
            .map_err(|e| AttachmentError::Ingest(IngestError::Store(e)))
    }

    /// Fetches a provider's media URL (through the SSRF guard) and stores it.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_and_store(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        url: &str,
        auth: MediaAuth,
        source: &str,
        channel: Channel,
        caption: Option<String>,
    ) -> Result<Attachment, AttachmentError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| AttachmentError::Fetch(format!("media URL: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(AttachmentError::Fetch("media URL must be http(s)".into()));
        }
        let mut req = self.fetcher.get(parsed);
        req = match auth {
            MediaAuth::None => req,
            MediaAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
            MediaAuth::Bearer(t) => req.bearer_auth(t),
        };
        let resp = req.send().await.map_err(|e| {
            AttachmentError::Fetch(format!("fetching the media failed: {}", without_url(&e)))
        })?;
        if !resp.status().is_success() {
            return Err(AttachmentError::Fetch(format!(
                "the provider answered {} for the media",
                resp.status()
            )));
        }
        if let Some(n) = resp.content_length() {
            self.limits.check_declared_len(Some(n))?;
        }
        let body = resp.bytes_stream();
        let patient = Actor {
            actor_type: continuum_core::ActorType::Patient,
            id: None,
        };
        self.store_stream(
            tenant_id,
            conversation_id,
            body,
            None,
            source,
            channel,
            caption,
            patient,
            "system:messaging",
        )
        .await
    }

    /// For Meta: resolves a media id to its (short-lived) download URL.
    pub async fn meta_media_url(
        &self,
        base: &str,
        version: &str,
        media_id: &str,
        token: &str,
    ) -> Result<String, AttachmentError> {
        if !media_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(AttachmentError::Fetch(
                "Meta media id has unexpected characters".into(),
            ));
        }
        let v: serde_json::Value = self
            .fetcher
            .get(format!(
                "{}/{version}/{media_id}",
                base.trim_end_matches('/')
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| {
                AttachmentError::Fetch(format!(
                    "resolving the media id failed: {}",
                    without_url(&e)
                ))
            })?
            .json()
            .await
            .map_err(|_| AttachmentError::Fetch("Meta's media answer is not JSON".into()))?;
        v["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| AttachmentError::Fetch("Meta's media answer has no url".into()))
    }
}

/// How a media fetch authenticates.
pub enum MediaAuth {
    None,
    Basic(String, String),
    Bearer(String),
}

/// reqwest errors print the URL, which can carry tokens: leave it out.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    kind.to_owned()
}
