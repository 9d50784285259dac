//! The context snapshot's reasoning: from a conversation's recent history, work
//! out what is still waiting on staff. When a video call drops to the phone, the
//! clinician who answers sees these items first.

use crate::channel::Channel;
use crate::conversation::ConversationState;
use crate::event::{ActorType, EventKind};
use serde::Serialize;

/// The parts of a timeline event the pending-item rules look at.
#[derive(Debug, Clone)]
pub struct EventFacts<'a> {
    pub seq: i64,
    pub at: &'a str,
    pub channel: Channel,
    pub kind: EventKind,
    pub actor_type: ActorType,
    pub meta: &'a serde_json::Map<String, serde_json::Value>,
}

/// Something the next person must act on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PendingItem {
    /// Nobody owns the conversation yet.
    AwaitingAssignment { state: ConversationState },
    /// Patient messages since staff last replied.
    UnansweredMessages {
        count: usize,
        since_seq: i64,
        since: String,
        channels: Vec<Channel>,
    },
    /// The patient asked for a call back and no call has started since.
    CallbackRequested {
        seq: i64,
        at: String,
        channel: Channel,
    },
    /// An outbound message did not reach the patient.
    DeliveryFailed {
        seq: i64,
        at: String,
        channel: Channel,
    },
    /// A media session that dropped or failed and has not been re-established.
    CallFailed {
        seq: i64,
        at: String,
        channel: Channel,
        session_id: Option<String>,
    },
}

fn meta_str<'a>(
    meta: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a str> {
    meta.get(key).and_then(|v| v.as_str())
}

/// Computes pending items from events in chronological order.
pub fn build_pending_items(
    state: ConversationState,
    assignee: Option<&str>,
    events: &[EventFacts<'_>],
) -> Vec<PendingItem> {
    let mut items = Vec::new();
    if matches!(state, ConversationState::Open | ConversationState::Queued) && assignee.is_none() {
        items.push(PendingItem::AwaitingAssignment { state });
    }
    if state == ConversationState::Closed {
        return items;
    }

    // Unanswered: patient messages after the last staff/bot message.
    let last_reply = events.iter().rposition(|e| {
        e.kind == EventKind::Message && matches!(e.actor_type, ActorType::Staff | ActorType::Bot)
    });
    let unanswered: Vec<&EventFacts> = events[last_reply.map_or(0, |i| i + 1)..]
        .iter()
        .filter(|e| {
            matches!(e.kind, EventKind::Message | EventKind::Attachment)
                && e.actor_type == ActorType::Patient
        })
        .collect();
    if let Some(first) = unanswered.first() {
        let mut channels: Vec<Channel> = Vec::new();
        for e in &unanswered {
            if !channels.contains(&e.channel) {
                channels.push(e.channel);
            }
        }
        items.push(PendingItem::UnansweredMessages {
            count: unanswered.len(),
            since_seq: first.seq,
            since: first.at.to_owned(),
            channels,
        });
    }

    // Callback requested and no call started since.
    if let Some(i) = events
        .iter()
        .rposition(|e| e.kind == EventKind::CallbackRequested)
    {
        let called_since = events[i + 1..]
            .iter()
            .any(|e| e.kind == EventKind::CallStarted);
        if !called_since {
            let e = &events[i];
            items.push(PendingItem::CallbackRequested {
                seq: e.seq,
                at: e.at.to_owned(),
                channel: e.channel,
            });
        }
    }

    // Failed deliveries after the last successful staff message on the same channel.
    for (i, e) in events.iter().enumerate() {
        if e.kind == EventKind::DeliveryStatus && meta_str(e.meta, "status") == Some("failed") {
            let resent_ok = events[i + 1..].iter().any(|later| {
                later.kind == EventKind::DeliveryStatus
                    && later.channel == e.channel
                    && matches!(meta_str(later.meta, "status"), Some("delivered" | "read"))
            });
            if !resent_ok {
                items.push(PendingItem::DeliveryFailed {
                    seq: e.seq,
                    at: e.at.to_owned(),
                    channel: e.channel,
                });
            }
        }
    }

    // The last failed call, unless a call started after it.
    if let Some(i) = events.iter().rposition(|e| e.kind == EventKind::CallFailed) {
        let recovered = events[i + 1..]
            .iter()
            .any(|e| e.kind == EventKind::CallStarted);
        if !recovered {
            let e = &events[i];
            items.push(PendingItem::CallFailed {
                seq: e.seq,
                at: e.at.to_owned(),
                channel: e.channel,
                session_id: meta_str(e.meta, "session_id").map(str::to_owned),
            });
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn unanswered_patient_messages_across_channels() {
        let empty = Map::new();
        let evs = [
            EventFacts {
                seq: 1,
                at: "t1",
                channel: Channel::Chat,
                kind: EventKind::Message,
                actor_type: ActorType::Staff,
                meta: &empty,
            },
            EventFacts {
                seq: 2,
                at: "t2",
                channel: Channel::Sms,
                kind: EventKind::Message,
                actor_type: ActorType::Patient,
                meta: &empty,
            },
            EventFacts {
                seq: 3,
                at: "t3",
                channel: Channel::Whatsapp,
                kind: EventKind::Message,
                actor_type: ActorType::Patient,
                meta: &empty,
            },
        ];
        let items = build_pending_items(ConversationState::Active, Some("dr"), &evs);
        assert_eq!(
            items,
            vec![PendingItem::UnansweredMessages {
                count: 2,
                since_seq: 2,
                since: "t2".into(),
                channels: vec![Channel::Sms, Channel::Whatsapp]
            }]
        );
    }

    #[test]
    fn callback_is_pending_until_a_call_starts() {
        let empty = Map::new();
        let session = m(json!({"session_id": "r1"}));
        let mut evs = vec![EventFacts {
            seq: 1,
            at: "t1",
            channel: Channel::Ivr,
            kind: EventKind::CallbackRequested,
            actor_type: ActorType::Patient,
            meta: &empty,
        }];
        assert!(matches!(
            build_pending_items(ConversationState::Queued, Some("a"), &evs)[0],
            PendingItem::CallbackRequested { seq: 1, .. }
        ));
        evs.push(EventFacts {
            seq: 2,
            at: "t2",
            channel: Channel::Voice,
            kind: EventKind::CallStarted,
            actor_type: ActorType::Staff,
            meta: &session,
        });
        assert!(build_pending_items(ConversationState::Active, Some("a"), &evs).is_empty());
    }

    #[test]
    fn failed_call_and_delivery_show_until_recovered() {
        let failed = m(json!({"status": "failed"}));
        let delivered = m(json!({"status": "delivered"}));
        let session = m(json!({"session_id": "room-9"}));
        let evs = vec![
            EventFacts {
                seq: 1,
                at: "t1",
                channel: Channel::Sms,
                kind: EventKind::DeliveryStatus,
                actor_type: ActorType::System,
                meta: &failed,
            },
            EventFacts {
                seq: 2,
                at: "t2",
                channel: Channel::Video,
                kind: EventKind::CallFailed,
                actor_type: ActorType::System,
                meta: &session,
            },
        ];
        let items = build_pending_items(ConversationState::Active, Some("a"), &evs);
        assert_eq!(items.len(), 2);
        let mut evs = evs;
        evs.push(EventFacts {
            seq: 3,
            at: "t3",
            channel: Channel::Sms,
            kind: EventKind::DeliveryStatus,
            actor_type: ActorType::System,
            meta: &delivered,
        });
        evs.push(EventFacts {
            seq: 4,
            at: "t4",
            channel: Channel::Voice,
            kind: EventKind::CallStarted,
            actor_type: ActorType::Staff,
            meta: &session,
        });
        assert!(build_pending_items(ConversationState::Active, Some("a"), &evs).is_empty());
    }

    #[test]
    fn unassigned_open_conversations_wait_for_assignment() {
        let items = build_pending_items(ConversationState::Queued, None, &[]);
        assert_eq!(
            items,
            vec![PendingItem::AwaitingAssignment {
                state: ConversationState::Queued
            }]
        );
        assert!(build_pending_items(ConversationState::Closed, None, &[]).is_empty());
    }
}
