//! An inbound message from any provider onto the timeline: the patient by
//! binding, their conversation, de-duplication by provider message id, the
//! WhatsApp window, opt-out keywords (with their one confirmation) and
//! reminder replies. Receipts onto the message they concern.

use super::MessagingService;
use continuum_core::{Actor, ActorType, BindingKind, Channel};
use continuum_messaging::keywords::{self, Keyword};
use continuum_messaging::{DeliveryStatus, InboundMessage, MediaSource, MessageChannel};
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
        if out.created
            && let Some(k) = keyword
        {
            self.on_keyword(tenant_id, &conversation_id, channel, &from, &to, k)
                .await?;
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
        self.store
            .apply_receipt(tenant_id, by, state_of(status), detail)
            .await
    }
}
