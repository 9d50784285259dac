//! A tenant's failover chain as live objects: each configured provider built
//! once (its HTTP client or SMPP bind inside) and instrumented (health and
//! metrics, `continuum_messaging::health`), with its rate limit and
//! in-flight cap.

use super::MessagingService;
use continuum_core::Channel;
use continuum_messaging::smpp::SmppProvider;
use continuum_messaging::{
    Instrumented, OutboundMessage as WireMessage, Provider, ProviderId, ProviderSet, SendError,
    Sent,
};
use continuum_store::{ProviderKind, ProviderWithSecret};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub struct ChainEntry {
    pub id: ProviderId,
    pub kind: ProviderKind,
    pub channels: Vec<Channel>,
    pub senders: Vec<String>,
    limiter: Option<DefaultDirectRateLimiter>,
    in_flight: Semaphore,
}

/// A tenant's chain, first tried first, and its instrumented providers.
pub struct Chain {
    pub entries: Vec<ChainEntry>,
    pub providers: ProviderSet,
    /// SMPP binds of the chain, to unbind when it is replaced.
    pub links: Vec<Arc<SmppProvider>>,
}

impl Chain {
    /// The providers that carry `channel` (from `sender`, when one is set), in order.
    pub fn carriers(&self, channel: Channel, sender: Option<&str>) -> Vec<&ChainEntry> {
        self.entries
            .iter()
            .filter(|e| e.channels.contains(&channel))
            .filter(|e| {
                sender.is_none_or(|s| e.senders.is_empty() || e.senders.iter().any(|x| x == s))
            })
            .collect()
    }

    /// Providers down right now (every recent request failed).
    pub fn unhealthy(&self) -> Vec<ProviderId> {
        self.providers.unhealthy(Instant::now())
    }

    /// Sends through `entry` under its rate limit and in-flight cap. A
    /// request that outlives `timeout_secs` is unconfirmed: it was sent and
    /// may have been acted on.
    pub async fn send(
        &self,
        entry: &ChainEntry,
        msg: &WireMessage,
        timeout_secs: u64,
    ) -> Result<Sent, SendError> {
        let provider: &Instrumented = self
            .providers
            .get(&entry.id)
            .expect("every entry's provider is in the set");
        let _slot = entry.in_flight.acquire().await.expect("never closed");
        if let Some(l) = &entry.limiter {
            l.until_ready().await;
        }
        let result = match tokio::time::timeout(
            Duration::from_secs(timeout_secs.max(1)),
            provider.send(msg),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                metrics::counter!("continuum_messaging_provider_requests_total", "provider" => entry.id.to_string(), "outcome" => "timeout").increment(1);
                Err(SendError::Unconfirmed {
                    reason: format!(
                        "no answer within messaging.request_timeout_secs ({timeout_secs} s)"
                    ),
                })
            }
        };
        // The rolling error rate failover reads, for dashboards too.
        let health = provider.health().snapshot(Instant::now());
        metrics::gauge!("continuum_messaging_provider_error_rate", "provider" => entry.id.to_string())
            .set(health.error_rate.unwrap_or(0.0));
        result
    }
}

impl Chain {
    /// Unbinds the chain's SMPP links (in the background).
    pub fn unbind(&self) {
        for link in self.links.clone() {
            tokio::spawn(async move { link.shutdown().await });
        }
    }
}

impl ChainEntry {
    /// Where Twilio should post receipts for message `id`: our id in the
    /// URL, so a receipt finds its message even when the send was unconfirmed.
    pub fn status_callback(&self, public_base: &str, message_id: &str) -> Option<String> {
        (self.kind == ProviderKind::Twilio).then(|| {
            format!(
                "{public_base}/v1/messaging/twilio/{}/status?message={message_id}",
                self.id
            )
        })
    }
}

fn spec_u32(p: &ProviderWithSecret, field: &str) -> Option<NonZeroU32> {
    p.provider
        .spec
        .get(field)
        .and_then(|v| v.as_u64())
        .and_then(|n| NonZeroU32::new(n.min(u32::MAX as u64) as u32))
}

impl MessagingService {
    /// The tenant's chain, built on first use and kept until it changes.
    pub(crate) async fn chain(&self, tenant_id: &str) -> Result<Arc<Chain>, String> {
        if let Some(c) = self.chains.lock().get(tenant_id) {
            return Ok(c.clone());
        }
        let configured = self
            .store
            .messaging_chain(tenant_id)
            .await
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::with_capacity(configured.len());
        let mut built: Vec<Arc<dyn Provider>> = Vec::with_capacity(configured.len());
        let mut links = Vec::new();
        for p in &configured {
            let b = super::providers::build(p, &self.config)
                .map_err(|e| format!("provider `{}`: {e}", p.provider.name))?;
            if let Some((link, incoming)) = b.smpp {
                links.push(link);
                let me = self.me.clone();
                let (tenant, provider) = (tenant_id.to_owned(), p.provider.id.clone());
                tokio::spawn(super::inbound::consume_smpp(me, tenant, provider, incoming));
            }
            built.push(b.provider);
            entries.push(ChainEntry {
                id: ProviderId::new(p.provider.id.clone()),
                kind: p.provider.kind,
                channels: p.provider.channels.clone(),
                senders: p.provider.senders.clone(),
                limiter: spec_u32(p, "max_per_second")
                    .map(|n| RateLimiter::direct(Quota::per_second(n))),
                in_flight: Semaphore::new(
                    spec_u32(p, "max_in_flight").map_or(16, |n| n.get() as usize),
                ),
            });
        }
        let providers = ProviderSet::new(built).map_err(|e| e.to_string())?;
        let chain = Arc::new(Chain {
            entries,
            providers,
            links,
        });
        let replaced = self
            .chains
            .lock()
            .insert(tenant_id.to_owned(), chain.clone());
        if let Some(old) = replaced {
            // Built twice at once: keep one set of binds.
            old.unbind();
        }
        Ok(chain)
    }
}
