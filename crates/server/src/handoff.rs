//! Channel handoffs: moving a patient from one channel to another without
//! losing the conversation. A visit link texted to the patient (a phone call
//! upgraded to video), and a text after a fallback call nobody answered.
//! Each is an outbound message whose timeline event carries `meta.handoff`,
//! so the context snapshot shows the latest one.

use crate::api::messaging::{Resolved, resolve};
use crate::auth::{About, TokenIssuer};
use crate::error::ApiError;
use continuum_core::{Actor, Channel, Grants, Role};
use continuum_store::{NewOutboundMessage, OutboundMessage, Store};
use std::sync::Arc;
use std::time::Duration;

/// What a handoff is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffKind {
    /// Staff sent the patient a link into the conversation's video room.
    VisitLink,
    /// The fallback call was not answered: the patient gets a text with a
    /// link back into the visit.
    AfterFailedCall,
}

impl HandoffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffKind::VisitLink => "visit_link",
            HandoffKind::AfterFailedCall => "after_failed_call",
        }
    }
}

/// A sent handoff.
pub struct SentHandoff {
    pub message: OutboundMessage,
    pub room_id: String,
    /// When the link stops working (unix seconds).
    pub link_expires_at: u64,
}

pub struct Handoffs {
    pub store: Store,
    pub tokens: Arc<TokenIssuer>,
    pub public_base: String,
    pub max_participants: i64,
}

impl Handoffs {
    /// Texts the patient a link into `room_id` (or the conversation's open
    /// room, or a new one). The link carries a patient token for that room
    /// and conversation only, valid `ttl`.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_visit_link(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        room_id: Option<String>,
        channel: Option<Channel>,
        text: Option<String>,
        kind: HandoffKind,
        ttl: Duration,
        actor: Actor,
        audit_actor: &str,
    ) -> Result<SentHandoff, ApiError> {
        let Resolved { channel, to, from } = resolve(
            &self.store,
            tenant_id,
            conversation_id,
            channel,
            None,
            audit_actor,
        )
        .await?;
        if channel == Channel::Whatsapp {
            let last = self
                .store
                .last_inbound_at(tenant_id, Channel::Whatsapp, &to)
                .await?;
            if !crate::messaging::whatsapp_window_open(last) {
                return Err(ApiError::invalid(
                    "channel: the patient has not written on WhatsApp in the last 24 hours, so a \
                     link can only go by WhatsApp template; send it by sms instead",
                ));
            }
        }
        let room = match room_id {
            Some(id) => {
                let room = self.store.get_room(tenant_id, &id).await?;
                if room.conversation_id != conversation_id {
                    return Err(ApiError::not_found("room"));
                }
                if room.ended_at.is_some() {
                    return Err(ApiError::invalid(
                        "room_id: that visit has ended; omit room_id to open a new one",
                    ));
                }
                room
            }
            None => match self
                .store
                .latest_open_room(tenant_id, conversation_id)
                .await?
            {
                Some(r) => r,
                None => {
                    let waiting = self.store.visit_settings(tenant_id).await?.waiting_room;
                    self.store
                        .create_room(
                            tenant_id,
                            conversation_id,
                            self.max_participants,
                            waiting,
                            audit_actor,
                        )
                        .await?
                }
            },
        };
        let (token, expires_at) = self
            .patient_token(tenant_id, conversation_id, Some(&room.id), ttl, audit_actor)
            .await?;
        // The token rides in the fragment: never sent to a server, never in
        // access logs; the page removes it from the address bar.
        let link = format!(
            "{}/visit?room={}&conversation={}#token={token}",
            self.public_base, room.id, conversation_id
        );
        let lead = text.unwrap_or_else(|| match kind {
            HandoffKind::VisitLink => "Join your video visit:".into(),
            HandoffKind::AfterFailedCall => {
                "We could not reach you by phone. Rejoin your visit by video:".into()
            }
        });
        let mut meta = serde_json::Map::new();
        meta.insert("handoff".into(), kind.as_str().into());
        meta.insert("room_id".into(), room.id.as_str().into());
        meta.insert("link_expires_at".into(), expires_at.into());
        let new = NewOutboundMessage {
            channel,
            to,
            from,
            body: Some(format!("{lead} {link}")),
            media_urls: vec![],
            template: None,
            idempotency_key: None,
            actor,
            meta,
            compliance: false,
        };
        let (message, _) = self
            .store
            .enqueue_message(tenant_id, conversation_id, new, audit_actor)
            .await?;
        metrics::counter!("continuum_handoffs_total", "kind" => kind.as_str()).increment(1);
        Ok(SentHandoff {
            message,
            room_id: room.id,
            link_expires_at: expires_at,
        })
    }

    /// A token for the conversation's patient: this conversation (and
    /// `room`) only, valid `ttl`; with its expiry (unix seconds).
    async fn patient_token(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        room: Option<&str>,
        ttl: Duration,
        audit_actor: &str,
    ) -> Result<(String, u64), ApiError> {
        let conv = self
            .store
            .get_conversation(tenant_id, conversation_id)
            .await?;
        let contact = self
            .store
            .get_contact(tenant_id, &conv.contact_id, audit_actor)
            .await?;
        let grants = Grants {
            conversations: vec![conversation_id.to_owned()],
            rooms: room.map(str::to_owned).into_iter().collect(),
            contacts: vec![],
        };
        Ok(self.tokens.mint(
            tenant_id,
            &format!("contact:{}", contact.id),
            Role::Patient,
            grants,
            About {
                name: Some(contact.display_name.clone()),
                region: None,
                key_id: None,
            },
            ttl,
        ))
    }

    /// Texts the patient a link to the conversation's chat page (between
    /// visits; a patient token for this conversation only, valid `ttl`).
    pub async fn send_chat_link(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        ttl: Duration,
        audit_actor: &str,
    ) -> Result<(), ApiError> {
        let (token, _) = self
            .patient_token(tenant_id, conversation_id, None, ttl, audit_actor)
            .await?;
        let link = format!(
            "{}/chat?conversation={conversation_id}#token={token}",
            self.public_base
        );
        self.send_text(
            tenant_id,
            conversation_id,
            format!("Your care team's messages: {link}"),
            audit_actor,
        )
        .await
    }

    /// Texts the patient `body` on their messaging channel.
    pub async fn send_text(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        body: String,
        audit_actor: &str,
    ) -> Result<(), ApiError> {
        let Resolved { channel, to, from } = resolve(
            &self.store,
            tenant_id,
            conversation_id,
            Some(Channel::Sms),
            None,
            audit_actor,
        )
        .await?;
        let new = NewOutboundMessage {
            channel,
            to,
            from,
            body: Some(body),
            media_urls: vec![],
            template: None,
            idempotency_key: None,
            actor: Actor::system(),
            meta: serde_json::Map::new(),
            compliance: false,
        };
        self.store
            .enqueue_message(tenant_id, conversation_id, new, audit_actor)
            .await?;
        Ok(())
    }
}
