//! An inbound message from any provider onto the timeline: the patient by
//! binding, their conversation, de-duplication by provider message id, the
//! WhatsApp window, opt-out keywords (with their one confirmation) and
//! reminder replies. Receipts onto the message they concern.

use super::MessagingService;
use continuum_core::{Actor, ActorType, BindingKind, Channel};
use continuum_messaging::keywords::{self, Keyword};
use continuum_messaging::{DeliveryStatus, InboundMessage, MediaSource, MessageChannel};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Receipts waiting for their message's provider id, at most.
const MAX_LATE_RECEIPTS: usize = 10_000;

use continuum_store::{
    ConsentChange, Event, InboundRecord, MessageRef, MessageState, NewOutboundMessage,
    ReminderReplyKind, StoreError,
};

/// What an inbound message did.
#[derive(Debug)]
pub struct Received {
    pub conversation_id: String,
    pub event: Event,
    /// False when the provider re-sent a message already stored.
    pub created: bool,
    pub keyword: Option<Keyword>,
}

pub(crate) fn channel_of(c: MessageChannel) -> Channel {
    match c {
        MessageChannel::Sms => Channel::Sms,
        MessageChannel::Whatsapp => Channel::Whatsapp,
    }
}

/// A provider's delivery status as the outbox's state.
pub fn state_of(s: DeliveryStatus) -> MessageState {
    match s {
        DeliveryStatus::Queued => MessageState::Queued,
        DeliveryStatus::Sent => MessageState::Sent,
        DeliveryStatus::Delivered => MessageState::Delivered,
        DeliveryStatus::Read => MessageState::Read,
        DeliveryStatus::Undelivered => MessageState::Undelivered,
        DeliveryStatus::Failed => MessageState::Failed,
    }
}

impl MessagingService {
    /// Stores `m` (received by provider `provider_id` of `tenant_id`) and acts
    /// on keywords. Idempotent per provider message id.
    pub async fn receive(
        &self,
        tenant_id: &str,
        provider_id: &str,
        m: &InboundMessage,
    ) -> Result<Received, StoreError> {
        let channel = channel_of(m.channel);
        let from = m.from.number().to_owned();
        let to = m.to.number().to_owned();
        let kind = match channel {
            Channel::Whatsapp => BindingKind::Whatsapp,
            _ => BindingKind::Phone,
        };
        let conversation_id = crate::routing::conversation_for(
            &self.store,
            tenant_id,
            kind,
            Some(&from),
            m.profile_name
                .as_deref()
                .map(|n| n.chars().filter(|c| !c.is_control()).take(100).collect())
                .filter(|n: &String| !n.trim().is_empty()),
            None,
            "system:messaging",
        )
        .await?;
        let keyword = keywords::classify(&m.body);
        let reply = keywords::reminder_reply(&m.body);
        let mut meta = serde_json::Map::new();
        if !m.media.is_empty() {
            let media: Vec<serde_json::Value> = m
                .media
                .iter()
                .map(|x| {
                    let (kind, value) = match &x.source {
                        MediaSource::Url(u) => ("url", u.as_str()),
                        MediaSource::MetaId(i) => ("meta_id", i.as_str()),
                    };
                    serde_json::json!({ "source": kind, "ref": value, "content_type": x.content_type })
                })
                .collect();
            meta.insert("media".into(), media.into());
        }
        if let Some(k) = keyword {
            meta.insert("keyword".into(), k.as_str().into());
        }
        if let Some(r) = reply {
            meta.insert(
                "reminder_reply".into(),
                match r {
                    keywords::ReminderReply::Confirm => "confirm",
                    keywords::ReminderReply::Reschedule => "reschedule",
                }
                .into(),
            );
        }
        if let Some(id) = &m.in_reply_to {
            meta.insert("in_reply_to".into(), id.as_str().into());
        }
        let record = InboundRecord {
            provider_id: provider_id.to_owned(),
            provider_message_id: m.provider_message_id.clone(),
            channel,
            from: from.clone(),
            to: to.clone(),
            body: Some(m.body.clone()).filter(|b| !b.is_empty()),
            meta,
        };
        let out = self
            .store
            .record_inbound_message(tenant_id, &conversation_id, record, "system:messaging")
            .await?;
        metrics::counter!("continuum_messaging_inbound_total", "channel" => channel.as_str(), "duplicate" => if out.created { "false" } else { "true" }).increment(1);
        if out.created && !m.media.is_empty() {
            self.fetch_media(tenant_id, provider_id, &conversation_id, channel, m);
        }
        if out.created
            && let Some(k) = keyword
        {
            self.on_keyword(tenant_id, &conversation_id, channel, &from, &to, k)
                .await?;
        }
        // A text on a conversation waiting in a queue (and not yet anyone's)
        // is work for that queue's agents.
        if out.created
            && keyword.is_none()
            && let Some(q) = self.queues.get()
        {
            q.route_conversation(tenant_id, &conversation_id, channel.as_str())
                .await;
        }
        // A reply to an appointment reminder: the appointment it answers
        // is confirmed (or marked for rescheduling) with a note on the
        // timeline. The message itself is on the timeline already, and
        // stays there for staff whatever this finds.
        if out.created
            && keyword.is_none()
            && let Some(r) = reply
        {
            let kind = match r {
                keywords::ReminderReply::Confirm => ReminderReplyKind::Confirm,
                keywords::ReminderReply::Reschedule => ReminderReplyKind::Reschedule,
            };
            match self
                .store
                .apply_reminder_reply(
                    tenant_id,
                    &conversation_id,
                    kind,
                    out.event.seq,
                    "system:messaging",
                )
                .await
            {
                Ok(Some(a)) => {
                    metrics::counter!("continuum_reminder_replies_total", "status" => a.status.as_str()).increment(1);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot apply a reminder reply"),
            }
        }
        Ok(Received {
            conversation_id,
            event: out.event,
            created: out.created,
            keyword,
        })
    }

    /// Fetches each media item of an inbound message (in the background:
    /// the provider's webhook is answered at once) into the sealed
    /// attachment store, on the same conversation. A fetch that fails is
    /// said on the timeline (a staff note), not dropped silently.
    fn fetch_media(
        &self,
        tenant_id: &str,
        provider_id: &str,
        conversation_id: &str,
        channel: Channel,
        m: &InboundMessage,
    ) {
        let Some(attachments) = self.attachments.clone() else {
            return;
        };
        let (store, tenant, provider, conv) = (
            self.store.clone(),
            tenant_id.to_owned(),
            provider_id.to_owned(),
            conversation_id.to_owned(),
        );
        let media = m.media.clone();
        let caption = Some(m.body.clone()).filter(|b| !b.is_empty());
        tokio::spawn(async move {
            let p = match store.messaging_provider(&provider).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "media arrived for a provider that is gone");
                    return;
                }
            };
            let secret = |f: &str| {
                p.secret
                    .get(f)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let spec = |f: &str| {
                p.provider
                    .spec
                    .get(f)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let source = match channel {
                Channel::Whatsapp => "whatsapp",
                _ => "mms",
            };
            for item in media {
                let result = match &item.source {
                    MediaSource::Url(url) => {
                        let auth = crate::attachments::MediaAuth::Basic(
                            spec("account_sid").unwrap_or_default(),
                            secret("auth_token"),
                        );
                        attachments
                            .fetch_and_store(
                                &tenant,
                                &conv,
                                url,
                                auth,
                                source,
                                channel,
                                caption.clone(),
                            )
                            .await
                    }
                    MediaSource::MetaId(id) => {
                        let base = spec("base_url").unwrap_or_else(|| {
                            continuum_messaging::meta::DEFAULT_API_BASE.to_owned()
                        });
                        let version = spec("api_version").unwrap_or_else(|| {
                            continuum_messaging::meta::DEFAULT_API_VERSION.to_owned()
                        });
                        let token = secret("access_token");
                        match attachments
                            .meta_media_url(&base, &version, id, &token)
                            .await
                        {
                            Ok(url) => {
                                attachments
                                    .fetch_and_store(
                                        &tenant,
                                        &conv,
                                        &url,
                                        crate::attachments::MediaAuth::Bearer(token.clone()),
                                        source,
                                        channel,
                                        caption.clone(),
                                    )
                                    .await
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "inbound media not stored");
                    metrics::counter!("continuum_attachments_fetch_failed_total").increment(1);
                    let ev = continuum_core::NewEvent {
                        channel,
                        kind: continuum_core::EventKind::Note,
                        actor: Actor::system(),
                        body: Some(format!(
                            "The patient sent a file{} that could not be stored: {e}",
                            item.content_type
                                .as_deref()
                                .map(|t| format!(" ({t})"))
                                .unwrap_or_default()
                        )),
                        meta: serde_json::Map::from_iter([(
                            "media_failed".to_owned(),
                            serde_json::Value::Bool(true),
                        )]),
                        idempotency_key: None,
                    };
                    if let Err(e) = store
                        .append_event(&tenant, &conv, ev, "system:messaging")
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record a media failure");
                    }
                }
            }
        });
    }

    /// STOP / START change consent (on the timeline) and get one reply;
    /// HELP gets one reply. A repeated STOP (already opted out) changes
    /// nothing and is not answered again.
    async fn on_keyword(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        channel: Channel,
        patient: &str,
        sender: &str,
        k: Keyword,
    ) -> Result<(), StoreError> {
        let opted_out = self
            .store
            .is_suppressed(tenant_id, channel, sender, patient)
            .await?;
        let (change, reply) = match k {
            Keyword::OptOut => (Some(true).filter(|_| !opted_out), &self.config.stop_reply),
            Keyword::OptIn => (Some(false).filter(|_| opted_out), &self.config.start_reply),
            Keyword::Help => (None, &self.config.help_reply),
        };
        if k != Keyword::Help && change.is_none() {
            return Ok(());
        }
        if let Some(opted_out) = change {
            let c = ConsentChange {
                channel,
                sender: sender.to_owned(),
                recipient: patient.to_owned(),
                opted_out,
                source: k.as_str().to_owned(),
                actor: Actor {
                    actor_type: ActorType::Patient,
                    id: None,
                },
            };
            self.store
                .set_consent(tenant_id, conversation_id, c, "system:messaging")
                .await?;
        }
        let mut meta = serde_json::Map::new();
        meta.insert("auto_reply".into(), k.as_str().into());
        let new = NewOutboundMessage {
            channel,
            to: patient.to_owned(),
            from: Some(sender.to_owned()),
            body: Some(reply.clone()),
            media_urls: vec![],
            template: None,
            idempotency_key: None,
            actor: Actor {
                actor_type: ActorType::Bot,
                id: Some("keywords".into()),
            },
            meta,
            compliance: true,
        };
        self.store
            .enqueue_message(tenant_id, conversation_id, new, "system:messaging")
            .await?;
        Ok(())
    }

    /// A receipt: our id when the callback URL carried it, else the provider's.
    pub async fn receipt(
        &self,
        tenant_id: &str,
        provider_id: &str,
        ours: Option<&str>,
        provider_message_id: &str,
        status: DeliveryStatus,
        error_code: Option<&str>,
    ) -> Result<Option<Event>, StoreError> {
        let by = match ours {
            Some(id) => MessageRef::Ours(id.to_owned()),
            None => MessageRef::Provider {
                provider_id: provider_id.to_owned(),
                provider_message_id: provider_message_id.to_owned(),
            },
        };
        let mut detail = serde_json::Map::new();
        detail.insert("provider".into(), provider_id.into());
        detail.insert("provider_message_id".into(), provider_message_id.into());
        if let Some(c) = error_code {
            detail.insert("error_code".into(), c.into());
        }
        metrics::counter!("continuum_messaging_receipts_total", "status" => status.as_str())
            .increment(1);
        let result = self
            .store
            .apply_receipt(tenant_id, by.clone(), state_of(status), detail.clone())
            .await;
        // A receipt can beat the send's own answer to us (an SMSC sends it
        // right after submit_sm_resp; Meta's status can race the API reply):
        // the provider's id is not stored yet. Try again a few times.
        if matches!(result, Err(StoreError::NotFound(_)))
            && matches!(by, MessageRef::Provider { .. })
        {
            if self.late_receipts.fetch_add(1, Ordering::Relaxed) < MAX_LATE_RECEIPTS {
                let (store, tenant, me) =
                    (self.store.clone(), tenant_id.to_owned(), self.me.clone());
                tokio::spawn(async move {
                    for wait_ms in [200u64, 500, 1000, 2000, 4000] {
                        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                        match store
                            .apply_receipt(&tenant, by.clone(), state_of(status), detail.clone())
                            .await
                        {
                            Err(StoreError::NotFound(_)) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot apply a late receipt");
                                break;
                            }
                            Ok(_) => break,
                        }
                    }
                    if let Some(me) = me.upgrade() {
                        me.late_receipts.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            } else {
                self.late_receipts.fetch_sub(1, Ordering::Relaxed);
            }
        }
        result
    }
}

/// Stores what arrives on an SMPP bind: handset messages (no provider id in
/// SMPP: each gets a fresh one, so a re-delivered deliver_sm is stored
/// again) and receipts (found by the submit's message id).
pub(crate) async fn consume_smpp(
    me: std::sync::Weak<MessagingService>,
    tenant_id: String,
    provider_id: String,
    mut incoming: tokio::sync::mpsc::Receiver<continuum_smpp::Incoming>,
) {
    use continuum_messaging::Address;
    use continuum_messaging::smpp::receipt_status;
    while let Some(item) = incoming.recv().await {
        let Some(me) = me.upgrade() else { return };
        match item {
            continuum_smpp::Incoming::Message(m) => {
                let plus = |n: &str| {
                    if n.starts_with('+') {
                        n.to_owned()
                    } else {
                        format!("+{n}")
                    }
                };
                let from = Address::phone(&plus(&m.from), "source_addr");
                let to = Address::parse_twilio(&m.to, "destination_addr")
                    .or_else(|_| Address::phone(&plus(&m.to), "destination_addr"));
                let (Ok(from), Ok(to)) = (from, to) else {
                    tracing::warn!(provider = %provider_id, "SMPP message with an unusable address dropped");
                    continue;
                };
                let msg = InboundMessage {
                    channel: MessageChannel::Sms,
                    from,
                    to,
                    body: m.text,
                    provider_message_id: format!("smpp-{}", uuid::Uuid::now_v7()),
                    media: vec![],
                    profile_name: None,
                    wa_id: None,
                    wa_user_id: None,
                    in_reply_to: None,
                    button_payload: None,
                    at: None,
                };
                if let Err(e) = me.receive(&tenant_id, &provider_id, &msg).await {
                    tracing::error!(provider = %provider_id, error = %e, "cannot store an SMPP message");
                }
            }
            continuum_smpp::Incoming::Receipt(r) => {
                let Some(status) = receipt_status(r.state) else {
                    continue;
                };
                match me
                    .receipt(
                        &tenant_id,
                        &provider_id,
                        None,
                        &r.message_id,
                        status,
                        r.error.as_deref(),
                    )
                    .await
                {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::error!(provider = %provider_id, error = %e, "cannot store an SMPP receipt")
                    }
                }
            }
        }
    }
}
