//! The signaling protocol's server messages, typed (docs/signaling.md is
//! their reference): one enum, so every message the server can send is in
//! one place and serialised one way.

use crate::chat::{ChatMessage, ReceiptNotice, Typing};
use crate::lobby::{Member, Muted, Waiter};
use continuum_core::Role;
use continuum_store::ChatReceipt;
use serde::Serialize;

/// The signaling protocol's version, in `welcome`, `joined` and `resumed`
/// (the path's `/v1` names the API; this changes only if messages change
/// incompatibly, and new message types are added without it: clients ignore
/// types they do not know).
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        protocol: u32,
        identity: String,
        name: Option<String>,
        role: Role,
        expires_at: u64,
        ice_servers: serde_json::Value,
    },
    Waiting {
        ticket: String,
        message: &'static str,
    },
    /// The room is hosted by another media node of the cluster: reconnect
    /// to `url` (with the same token) and send the `join` there.
    Redirect {
        room: String,
        node: String,
        url: String,
    },
    Joined {
        protocol: u32,
        resume: String,
        participant: String,
        conversation: String,
        sdp: String,
        ice_servers: serde_json::Value,
    },
    Resumed {
        protocol: u32,
        participant: String,
        ice_servers: serde_json::Value,
    },
    Roster {
        participants: Vec<Member>,
    },
    ParticipantJoined {
        participant: String,
        identity: String,
        name: Option<String>,
        role: Role,
        muted: Muted,
        /// On a phone call bridged into the room.
        phone: bool,
    },
    ParticipantLeft {
        participant: String,
    },
    WaitingRoom {
        waiting: Vec<Waiter>,
    },
    VisitEnded {
        by: String,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    TrackPublished {
        participant: String,
        identity: String,
        kind: &'static str,
        track: String,
    },
    TrackUnpublished {
        participant: String,
        track: String,
    },
    PublishLayers {
        mid: String,
        paused: Vec<String>,
    },
    Quality {
        participant: String,
        identity: String,
        rating: &'static str,
        loss: Option<f32>,
        rtt_ms: Option<u64>,
        jitter_ms: Option<u64>,
    },
    Speaker {
        participant: Option<String>,
        identity: Option<String>,
    },
    Muted {
        participant: String,
        identity: String,
        kind: String,
        muted: bool,
    },
    Left,
    /// To staff: the patient's video failed and their phone is being called
    /// into this room; `context` is the conversation's context snapshot
    /// (what was just discussed), `call` the call record.
    PatientOnPhone {
        #[serde(flatten)]
        details: serde_json::Value,
    },
    Refreshed {
        expires_at: u64,
    },
    TokenExpired {
        message: &'static str,
    },
    Error {
        code: &'static str,
        message: String,
    },
    /// The conversation chat WebSocket's first message (`/v1/conversations/{id}/chat`).
    #[serde(rename = "welcome")]
    ChatWelcome {
        protocol: u32,
        identity: String,
        name: Option<String>,
        role: Role,
        expires_at: u64,
        conversation: String,
    },
    /// A chat message (also the sender's ack: it carries the sender's `client_id`).
    Chat {
        #[serde(flatten)]
        message: ChatMessage,
    },
    /// Someone started or stopped typing (ephemeral).
    Typing {
        #[serde(flatten)]
        typing: Typing,
    },
    /// Someone's delivered/read markers moved.
    ChatReceipt {
        #[serde(flatten)]
        receipt: ReceiptNotice,
    },
    /// Everyone's markers in the conversation (on joining, and after falling behind).
    ChatReceipts {
        conversation: String,
        receipts: Vec<ChatReceipt>,
    },
    /// The chat WebSocket replayed what it had to: live from here on.
    ChatSynced {
        conversation: String,
        last_seq: i64,
        /// Older messages exist than those replayed (`GET …/chat/messages?before=`).
        earlier: bool,
    },
    /// A chat message was refused: which one (`client_id`) and why.
    #[serde(rename = "error")]
    ChatError {
        code: &'static str,
        message: String,
        client_id: Option<String>,
    },
    Pong,
}

impl ServerMsg {
    /// The refusal `code` with its `message` (the field and the reason).
    pub fn error(code: &'static str, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            code,
            message: message.into(),
        }
    }

    /// The message as the WebSocket text frame.
    pub fn text(&self) -> String {
        serde_json::to_string(self).expect("signaling messages serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type_and_keep_absent_values_as_null() {
        let v: serde_json::Value = serde_json::from_str(
            &ServerMsg::Speaker {
                participant: None,
                identity: None,
            }
            .text(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "speaker", "participant": null, "identity": null})
        );
        assert_eq!(ServerMsg::Left.text(), r#"{"type":"left"}"#);
        assert_eq!(
            ServerMsg::error("not_joined", "join a room first").text(),
            r#"{"type":"error","code":"not_joined","message":"join a room first"}"#
        );
    }
}
