//! Webhook delivery: drains the durable outbox, signs each payload
//! (`Continuum-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! Stripe-style so receivers can reject replays by `t`), retries with capped
//! exponential backoff and jitter, and records every attempt.
//!
//! SSRF: targets are checked when registered and again at connect time by a
//! resolver that refuses special-purpose addresses, so DNS rebinding cannot
//! point a webhook at the internal network.

use crate::config::WebhookConfig;
use continuum_core::netpolicy::is_special_purpose;
use continuum_store::{DueDelivery, Store};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a webhook URL before it is accepted: https (deliveries carry PHI),
/// plain http only to hosts listed in `allow_http_hosts`.
pub async fn check_target(
    url: &str,
    allow_private: bool,
    allow_http_hosts: &[String],
) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("webhook url must be https".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("webhook url must not carry credentials; verify our signature instead".into());
    }
    let host = parsed.host_str().ok_or("webhook url needs a host")?;
    if parsed.scheme() == "http"
        && !allow_http_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']')))
    {
        return Err(format!(
            "webhook url must be https: deliveries carry patient data; to allow plain http to `{host}` \
             (e.g. inside a private network) list it in webhooks.allow_http_hosts"
        ));
    }
    if allow_private {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        if is_special_purpose(ip) {
            return Err(format!(
                "webhook target {ip} is a private or special-purpose address; set webhooks.allow_private_targets = true to allow it (testing only)"
            ));
        }
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
    for a in addrs {
        if is_special_purpose(a.ip()) {
            return Err(format!(
                "`{host}` resolves to {}, a private or special-purpose address; set webhooks.allow_private_targets = true to allow it (testing only)",
                a.ip()
            ));
        }
    }
    Ok(())
}

/// Resolves names and drops special-purpose answers (checked at connect time).
pub(crate) struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_special_purpose(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "`{host}` has no public address (special-purpose addresses are refused)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

pub struct Dispatcher {
    store: Store,
    cfg: WebhookConfig,
    client: reqwest::Client,
}

impl Dispatcher {
    pub fn new(store: Store, cfg: WebhookConfig) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Continuum-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !cfg.allow_private_targets {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let client = builder.build().expect("building the webhook HTTP client");
        Dispatcher { store, cfg, client }
    }

    /// Delay before attempt `attempts + 1`: base·2^attempts, capped, ±20% jitter.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let base = self.cfg.backoff_base_ms as f64 * 2f64.powi(attempts.clamp(0, 30) as i32);
        let capped = base.min(self.cfg.backoff_max_secs as f64 * 1000.0);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        Duration::from_millis((capped * jitter) as u64)
    }

    /// Runs until `shutdown` flips to true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Deliveries this node leased before it stopped (PostgreSQL) go out
        // now, not when their lease ends.
        match self.store.release_my_deliveries().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "took back the webhook deliveries leased before a restart"
            ),
            Err(e) => tracing::warn!(error = %e, "could not take back leased webhook deliveries"),
        }
        let notify = self.store.outbox_ready();
        let this = Arc::new(self);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let batch = match this.store.due_deliveries(64).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let full = batch.len() == 64;
            futures::stream::iter(batch)
                .for_each_concurrent(this.cfg.concurrency.max(1), |d| {
                    let this = this.clone();
                    async move { this.deliver(d).await }
                })
                .await;
            if full {
                continue;
            }
            let wait = match this.store.next_delivery_due().await {
                Ok(Some(due)) => {
                    let now = continuum_core::clock::unix_micros();
                    Duration::from_micros((due - now).max(0) as u64).min(Duration::from_secs(30))
                }
                _ => Duration::from_secs(30),
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn deliver(&self, d: DueDelivery) {
        let started = Instant::now();
        let ts = continuum_core::clock::unix_secs();
        let result = self
            .client
            .post(&d.url)
            .header("content-type", "application/json")
            .header("continuum-signature", sign(&d.secret, ts, &d.body))
            .header("continuum-event-type", &d.event_type)
            .header("continuum-delivery", d.outbox_id.to_string())
            .body(d.body.clone())
            .send()
            .await;
        let elapsed = started.elapsed().as_millis() as i64;
        let (status, error) = match result {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
            Ok(r) => (
                Some(r.status().as_u16()),
                Some(format!("endpoint answered {}", r.status())),
            ),
            Err(e) => (None, Some(format!("{e}"))),
        };
        let ok = error.is_none();
        let attempts = d.attempts + 1;
        let next = if ok || attempts >= self.cfg.max_attempts as i64 {
            None
        } else {
            let backoff = i64::try_from(self.backoff(d.attempts).as_micros()).unwrap_or(i64::MAX);
            Some(continuum_core::clock::unix_micros().saturating_add(backoff))
        };
        let outcome = if ok {
            "delivered"
        } else if next.is_some() {
            "retry"
        } else {
            "dead"
        };
        metrics::counter!("continuum_webhook_attempts_total", "outcome" => outcome).increment(1);
        if !ok {
            tracing::info!(webhook = %d.webhook_id, attempt = attempts, error = error.as_deref().unwrap_or(""), outcome, "webhook delivery failed");
        }
        if let Err(e) = self
            .store
            .record_delivery(&d, status, error, elapsed, next)
            .await
        {
            tracing::warn!(error = %e, "could not record a webhook delivery attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_a_known_vector() {
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test`
        assert_eq!(
            sign("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        let http: Vec<String> = [
            "127.0.0.1",
            "10.1.2.3",
            "::ffff:c0a8:1",
            "::ffff:0:7f00:1",
            "169.254.169.254",
            "example.com",
        ]
        .map(String::from)
        .to_vec();
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/",
            "http://[::ffff:192.168.0.1]/",
            "http://[::ffff:0:7f00:1]/",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let err = check_target(url, false, &http).await.unwrap_err();
            assert!(err.contains("allow_private_targets"), "{url}: {err}");
            assert!(check_target(url, true, &http).await.is_ok());
        }
        assert!(
            check_target("ftp://example.com/", true, &http)
                .await
                .is_err()
        );
        assert!(
            check_target("http://user:pw@example.com/", true, &http)
                .await
                .is_err()
        );
        assert!(check_target("not a url", true, &http).await.is_err());
    }

    #[tokio::test]
    async fn plain_http_only_to_listed_hosts() {
        let err = check_target("http://203.0.113.10/hook", true, &[])
            .await
            .unwrap_err();
        assert!(
            err.contains("https") && err.contains("allow_http_hosts"),
            "{err}"
        );
        let listed = vec!["203.0.113.10".to_owned()];
        assert!(
            check_target("http://203.0.113.10/hook", true, &listed)
                .await
                .is_ok()
        );
        assert!(
            check_target("https://203.0.113.10/hook", true, &[])
                .await
                .is_ok()
        );
    }
}
