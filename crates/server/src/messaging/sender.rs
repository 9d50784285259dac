//! The outbox sender: claims due messages (committed as `sending` before any
//! request leaves), sends each down its tenant's failover chain with
//! per-provider rate limits and in-flight caps, and records the outcome.

use super::chain::{Chain, ChainEntry};
use super::{MessagingService, WHATSAPP_WINDOW_MICROS};
use continuum_core::Channel;
use continuum_messaging::{
    Address, Attempt, DeadLetterReason, Failure, FailureClass, Form, MessageChannel, Next,
    OutboundMessage as WireMessage, PermanentCause, ProviderId, SendError, Template,
};
use continuum_store::{ClaimedMessage, FailedAttempt, OutboundMessage, SendOutcome};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, watch};

impl MessagingService {
    /// Runs until `stop` flips: claims what is due, sends it, sleeps until
    /// the next message is due or one is queued.
    pub async fn run_sender(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        match self.store.recover_claimed_messages().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                messages = n,
                "messages were being sent when the server stopped; marked unconfirmed (not re-sent)"
            ),
            Err(e) => tracing::error!(error = %e, "cannot recover claimed messages"),
        }
        if self.store.backend() == "postgres" {
            // Other nodes' abandoned claims (their node died mid-send) are
            // found by age, so look now and then, not only at start.
            let store = self.store.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    if let Ok(n) = store.recover_claimed_messages().await
                        && n > 0
                    {
                        tracing::warn!(
                            messages = n,
                            "messages claimed by a node that stopped; marked unconfirmed (not re-sent)"
                        );
                    }
                }
            });
        }
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let ready = self.store.messages_ready();
        loop {
            if *stop.borrow() {
                break;
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self.store.claim_due_messages(free.min(256)).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim due messages");
                        Vec::new()
                    }
                }
            };
            let n = claimed.len();
            for c in claimed {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let me = self.clone();
                tokio::spawn(async move {
                    me.send_one(c).await;
                    drop(permit);
                });
            }
            if n > 0 && slots.available_permits() > 0 {
                continue;
            }
            let wait = match self.store.next_message_due().await {
                Ok(Some(at)) => {
                    let now = continuum_core::clock::unix_micros();
                    Duration::from_micros((at - now).clamp(0, 1_000_000) as u64)
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = ready.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(if n > 0 { 5 } else { 0 }))) => {}
                _ = stop.changed() => {}
            }
        }
        // Let requests in flight finish and be recorded: one cut short here
        // would be `unconfirmed` at the next start.
        let all = self.config.concurrency.max(1) as u32;
        let grace = Duration::from_secs(self.config.request_timeout_secs + 1);
        let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    }

    async fn send_one(&self, c: ClaimedMessage) {
        let m = &c.message;
        let outcome = match self.chain(&c.tenant_id).await {
            Ok(chain) => self.attempt(&c.tenant_id, &chain, m).await,
            Err(e) => SendOutcome::Retry {
                provider_id: m.provider_id.clone().unwrap_or_default(),
                at: continuum_core::clock::unix_micros() + 5_000_000,
                error: format!("cannot load the tenant's providers: {e}"),
                failed: None,
            },
        };
        if let Err(e) = self
            .store
            .record_send_outcome(&c.tenant_id, &m.id, outcome)
            .await
        {
            tracing::error!(error = %e, message = %m.id, "cannot record a send outcome");
        }
    }

    async fn attempt(&self, tenant_id: &str, chain: &Chain, m: &OutboundMessage) -> SendOutcome {
        let carriers = chain.carriers(m.channel, m.from.as_deref());
        let ids: Vec<ProviderId> = carriers.iter().map(|e| e.id.clone()).collect();
        let unhealthy = chain.unhealthy();
        // The provider the last retry or failover named, if still in the
        // chain; else the first that is not down.
        let chosen = m
            .provider_id
            .as_deref()
            .and_then(|id| ids.iter().find(|x| x.as_str() == id).cloned())
            .or_else(|| self.policy.first(&ids, &unhealthy));
        let Some(chosen) = chosen else {
            return SendOutcome::Failed {
                provider_id: None,
                error: format!(
                    "no provider of this tenant carries {} from {}",
                    m.channel,
                    m.from.as_deref().unwrap_or("any sender")
                ),
                failed: None,
            };
        };
        let entry = carriers
            .iter()
            .find(|e| e.id == chosen)
            .expect("chosen from the carriers");
        let wire = match self.wire_message(tenant_id, entry, m).await {
            Ok(w) => w,
            Err(e) => {
                return SendOutcome::Failed {
                    provider_id: Some(chosen.to_string()),
                    error: e,
                    failed: None,
                };
            }
        };
        let error = match chain
            .send(entry, &wire, self.config.request_timeout_secs)
            .await
        {
            Ok(sent) => {
                return SendOutcome::Sent {
                    provider_id: chosen.to_string(),
                    provider_message_id: sent.provider_message_id,
                };
            }
            Err(e) => e,
        };
        if matches!(
            &error,
            SendError::Permanent {
                cause: PermanentCause::OptedOut,
                ..
            }
        ) {
            self.provider_opt_out(tenant_id, m).await;
        }
        let earlier: Vec<Attempt> = m
            .attempt_log
            .iter()
            .filter_map(|a| {
                Some(Attempt {
                    provider: ProviderId::new(a.provider.clone()),
                    failure: a.failure.parse::<FailureClass>().ok()?,
                })
            })
            .collect();
        let to_system = |micros: i64| UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
        let failure = Failure {
            chain: &ids,
            earlier: &earlier,
            provider: &chosen,
            error: &error,
            has_template: m.template.is_some(),
            enqueued_at: to_system(m.created_at.0),
            now: SystemTime::now(),
            unhealthy: &unhealthy,
        };
        let next = self.policy.next(&failure, &mut rand::thread_rng());
        let logged = Some(FailedAttempt {
            provider: chosen.to_string(),
            failure: FailureClass::of(&error).as_str().to_owned(),
        });
        let micros = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        };
        match next {
            Next::RetryAt { provider, at } => SendOutcome::Retry {
                provider_id: provider.to_string(),
                at: micros(at),
                error: error.to_string(),
                failed: logged,
            },
            Next::Failover { provider, at } => SendOutcome::Retry {
                provider_id: provider.to_string(),
                at: micros(at),
                error: format!("{error}; failing over from {chosen}"),
                failed: logged,
            },
            Next::DeadLetter {
                reason: DeadLetterReason::Unconfirmed,
            } => SendOutcome::Unconfirmed {
                provider_id: chosen.to_string(),
                error: error.to_string(),
            },
            Next::DeadLetter { reason } => SendOutcome::Failed {
                provider_id: Some(chosen.to_string()),
                error: format!("{reason}: {error}"),
                failed: logged,
            },
        }
    }

    /// The provider says the patient opted out there (e.g. Twilio 21610):
    /// record it, so every later send is suppressed here too.
    async fn provider_opt_out(&self, tenant_id: &str, m: &OutboundMessage) {
        let Some(sender) = m.from.clone() else { return };
        let change = continuum_store::ConsentChange {
            channel: m.channel,
            sender,
            recipient: m.to.clone(),
            opted_out: true,
            source: "provider".into(),
            actor: continuum_core::Actor::system(),
        };
        if let Err(e) = self
            .store
            .set_consent(tenant_id, &m.conversation_id, change, "system:messaging")
            .await
        {
            tracing::warn!(error = %e, "cannot record a provider-reported opt-out");
        }
    }

    /// The message in the provider crate's terms, with the WhatsApp form
    /// chosen now (the window may have closed since it was queued).
    async fn wire_message(
        &self,
        tenant_id: &str,
        entry: &ChainEntry,
        m: &OutboundMessage,
    ) -> Result<WireMessage, String> {
        let channel = match m.channel {
            Channel::Whatsapp => MessageChannel::Whatsapp,
            _ => MessageChannel::Sms,
        };
        let address = |n: &str, field: &'static str| match channel {
            MessageChannel::Whatsapp => Address::whatsapp(n, field),
            MessageChannel::Sms => Address::phone(n, field),
        };
        let to = address(&m.to, "to").map_err(|e| e.to_string())?;
        let from = match &m.from {
            Some(f) => Some(address(f, "from").map_err(|e| e.to_string())?),
            None => None,
        };
        let template: Option<Template> = m
            .template
            .as_ref()
            .and_then(|t| serde_json::from_value::<TemplateJson>(t.clone()).ok())
            .map(|t| Template {
                name: t.name,
                language: t.language.unwrap_or_else(|| "en".into()),
                params: t.params,
            });
        let form = if channel == MessageChannel::Whatsapp {
            let last = self
                .store
                .last_inbound_at(tenant_id, Channel::Whatsapp, &m.to)
                .await
                .map_err(|e| e.to_string())?;
            let open = last
                .is_some_and(|t| continuum_core::clock::unix_micros() - t < WHATSAPP_WINDOW_MICROS);
            match (open, template.is_some()) {
                (true, _) if m.body.is_some() => Form::Session,
                (_, true) => Form::Template,
                _ => {
                    return Err(
                        "WhatsApp's 24-hour window closed before it was sent, and the message has no template"
                            .into(),
                    );
                }
            }
        } else {
            Form::Session
        };
        Ok(WireMessage {
            id: m.id.clone(),
            channel,
            from,
            to,
            body: m.body.clone().unwrap_or_default(),
            media_urls: m.media_urls.clone(),
            template,
            form,
            status_callback: entry.status_callback(&self.public_base, &m.id),
        })
    }
}

#[derive(serde::Deserialize)]
struct TemplateJson {
    name: String,
    language: Option<String>,
    #[serde(default)]
    params: Vec<String>,
}
