//! Timeline events: the append-only record of everything that happened with a
//! patient, across every channel.

use crate::channel::Channel;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! event_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, system_only = $sys:literal; )*) => {
        /// What happened. Serialized as the dotted name (`call.started`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind { $( $(#[$doc])* $variant, )* }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$variant => $name,)* }
            }

            /// Kinds only the engine itself may write (clients get a clear error).
            pub fn is_system_only(self) -> bool {
                match self { $(EventKind::$variant => $sys,)* }
            }
        }
    };
}

event_kinds! {
    /// A text message (chat, SMS, WhatsApp) in either direction.
    Message = "message", system_only = false;
    /// A file or image reference (store-and-forward).
    Attachment = "attachment", system_only = false;
    /// A video room or voice call began; `meta.session_id` names it.
    CallStarted = "call.started", system_only = false;
    /// A media session ended normally; `meta.session_id` names it.
    CallEnded = "call.ended", system_only = false;
    /// A media session failed (could not connect, dropped).
    CallFailed = "call.failed", system_only = false;
    /// The conversation moved from one channel to another (`meta.from`, `meta.to`, `meta.reason`).
    ChannelSwitched = "channel.switched", system_only = false;
    ParticipantJoined = "participant.joined", system_only = false;
    ParticipantLeft = "participant.left", system_only = false;
    /// Media quality crossed a threshold for long enough to matter.
    QualityDegraded = "quality.degraded", system_only = false;
    /// Quality is back under the thresholds for the hold time.
    QualityRecovered = "quality.recovered", system_only = false;
    /// Digits or speech captured by the IVR.
    IvrInput = "ivr.input", system_only = false;
    /// The IVR routed the caller somewhere (`meta.queue`).
    IvrRoute = "ivr.route", system_only = false;
    /// The IVR moved on: a node entered, a TwiML verb started, a menu timed
    /// out or was exhausted (`meta.node`, `meta.verb`, `meta.outcome`).
    IvrStep = "ivr.step", system_only = true;
    /// The IVR could not go on as written (`meta.error`: why, e.g. TwiML
    /// that is not XML, an unsupported verb, a webhook that timed out).
    IvrError = "ivr.error", system_only = true;
    /// Queue routing (`meta.action`: queued, reserved, timed_out, rejected,
    /// overflowed, abandoned, voicemail, callback, completed, transferred;
    /// `meta.queue`, `meta.agent`, `meta.task_id`).
    Routing = "routing", system_only = true;
    /// Outcome of triage (`meta.level`, `meta.summary`); the context shows the latest.
    TriageResult = "triage.result", system_only = false;
    /// Delivery receipt for an outbound message (`meta.status`: sent, delivered, failed, read).
    DeliveryStatus = "delivery.status", system_only = false;
    /// An internal note by staff, never shown to the patient.
    Note = "note", system_only = false;
    /// The patient asked to be called back; pending until a call starts.
    CallbackRequested = "callback.requested", system_only = false;
    ConsentGranted = "consent.granted", system_only = false;
    ConsentRevoked = "consent.revoked", system_only = false;
    /// The patient opted out of a channel (`meta.channel`).
    OptOut = "opt_out", system_only = false;
    OptIn = "opt_in", system_only = false;
    /// The conversation changed state (`meta.from`, `meta.to`, `meta.reason`).
    StateChanged = "state.changed", system_only = true;
    /// The conversation was (re)assigned (`meta.assignee`, `meta.queue`).
    Assigned = "assigned", system_only = true;
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown event kind `{0}`")]
pub struct UnknownKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EventKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(EventKind::ALL.iter().map(|k| k.as_str())))
            .into()
    }
}
#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EventKind {}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ActorType {
    Patient,
    Staff,
    /// Automation: IVR, bots, reminders.
    Bot,
    System,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::Patient => "patient",
            ActorType::Staff => "staff",
            ActorType::Bot => "bot",
            ActorType::System => "system",
        }
    }
}

impl FromStr for ActorType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "patient" => Ok(ActorType::Patient),
            "staff" => Ok(ActorType::Staff),
            "bot" => Ok(ActorType::Bot),
            "system" => Ok(ActorType::System),
            other => Err(format!("unknown actor type `{other}`")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor {
    #[serde(rename = "type")]
    pub actor_type: ActorType,
    /// Identity within the tenant (staff id, contact id, bot name); optional for `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            actor_type: ActorType::System,
            id: None,
        }
    }
}

/// Limits that keep one event small enough to fan out and render.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_META_BYTES: usize = 16 * 1024;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
pub const MAX_ACTOR_ID_LEN: usize = 128;

/// An event as a client asks to append it, before the engine assigns `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub channel: Channel,
    pub kind: EventKind,
    pub actor: Actor,
    pub body: Option<String>,
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EventValidationError {
    #[error("event kind `{0}` is written by Continuum itself and cannot be appended by clients")]
    SystemOnlyKind(EventKind),
    #[error("body is {0} bytes; the limit is {MAX_BODY_BYTES}")]
    BodyTooLarge(usize),
    #[error("meta is {0} bytes of JSON; the limit is {MAX_META_BYTES}")]
    MetaTooLarge(usize),
    #[error("idempotency_key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters")]
    BadIdempotencyKey,
    #[error("actor.id must be 1..={MAX_ACTOR_ID_LEN} characters")]
    BadActorId,
    #[error("`{kind}` events need meta.{field}")]
    MissingMeta {
        kind: EventKind,
        field: &'static str,
    },
    #[error("`message` events need a non-empty body")]
    EmptyMessage,
    /// NUL ends strings for C APIs (SQLite's text functions among them),
    /// log pipelines and SMS gateways: what the patient or the next reader
    /// sees would silently differ from what was stored.
    #[error("body must not contain NUL characters (U+0000)")]
    NulInBody,
    #[error("meta must not contain NUL characters (U+0000)")]
    NulInMeta,
}

impl NewEvent {
    /// Checks a client-supplied event. System-only kinds are refused here; the
    /// engine builds those itself.
    pub fn validate_client(&self) -> Result<(), EventValidationError> {
        if self.kind.is_system_only() {
            return Err(EventValidationError::SystemOnlyKind(self.kind));
        }
        self.validate_shape()
    }

    pub fn validate_shape(&self) -> Result<(), EventValidationError> {
        if let Some(body) = &self.body
            && body.len() > MAX_BODY_BYTES
        {
            return Err(EventValidationError::BodyTooLarge(body.len()));
        }
        let meta_len = serde_json::to_vec(&self.meta).map(|v| v.len()).unwrap_or(0);
        if meta_len > MAX_META_BYTES {
            return Err(EventValidationError::MetaTooLarge(meta_len));
        }
        if self.body.as_deref().is_some_and(|b| b.contains('\0')) {
            return Err(EventValidationError::NulInBody);
        }
        if meta_has_nul(&self.meta) {
            return Err(EventValidationError::NulInMeta);
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY_LEN
                || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(EventValidationError::BadIdempotencyKey);
        }
        if let Some(id) = &self.actor.id
            && (id.is_empty() || id.chars().count() > MAX_ACTOR_ID_LEN)
        {
            return Err(EventValidationError::BadActorId);
        }
        if self.kind == EventKind::Message && self.body.as_deref().is_none_or(str::is_empty) {
            return Err(EventValidationError::EmptyMessage);
        }
        let needs_session = matches!(
            self.kind,
            EventKind::CallStarted | EventKind::CallEnded | EventKind::CallFailed
        );
        if needs_session && !self.meta.get("session_id").is_some_and(|v| v.is_string()) {
            return Err(EventValidationError::MissingMeta {
                kind: self.kind,
                field: "session_id",
            });
        }
        if self.kind == EventKind::ChannelSwitched
            && !self.meta.get("to").is_some_and(|v| v.is_string())
        {
            return Err(EventValidationError::MissingMeta {
                kind: self.kind,
                field: "to",
            });
        }
        Ok(())
    }

    /// Inbound means the patient reached out; a closed conversation reopens on it.
    pub fn is_inbound(&self) -> bool {
        self.actor.actor_type == ActorType::Patient
    }
}

/// Whether any key or string value anywhere in `meta` contains NUL. Walks
/// with an explicit stack rather than recursion: nesting costs heap, not
/// stack.
fn meta_has_nul(meta: &serde_json::Map<String, serde_json::Value>) -> bool {
    use serde_json::Value;
    let nul = |s: &str| s.contains('\0');
    let mut stack: Vec<&Value> = Vec::new();
    for (k, v) in meta {
        if nul(k) {
            return true;
        }
        stack.push(v);
    }
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if nul(s) => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, v) in map {
                    if nul(k) {
                        return true;
                    }
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> NewEvent {
        NewEvent {
            channel: Channel::Chat,
            kind,
            actor: Actor::system(),
            body: Some("hi".into()),
            meta: Default::default(),
            idempotency_key: None,
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), *k);
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), *k);
        }
        assert!("call.exploded".parse::<EventKind>().is_err());
    }

    #[test]
    fn clients_cannot_forge_state_changes() {
        assert_eq!(
            ev(EventKind::StateChanged).validate_client(),
            Err(EventValidationError::SystemOnlyKind(
                EventKind::StateChanged
            ))
        );
    }

    #[test]
    fn call_events_need_a_session_id() {
        let mut e = ev(EventKind::CallStarted);
        assert!(matches!(
            e.validate_client(),
            Err(EventValidationError::MissingMeta { .. })
        ));
        e.meta.insert("session_id".into(), "room-1".into());
        assert!(e.validate_client().is_ok());
    }

    #[test]
    fn oversized_bodies_and_bad_keys_are_refused() {
        let mut e = ev(EventKind::Message);
        e.body = Some("x".repeat(MAX_BODY_BYTES + 1));
        assert!(matches!(
            e.validate_client(),
            Err(EventValidationError::BodyTooLarge(_))
        ));
        let mut e = ev(EventKind::Message);
        e.idempotency_key = Some("has space".into());
        assert_eq!(
            e.validate_client(),
            Err(EventValidationError::BadIdempotencyKey)
        );
        let mut e = ev(EventKind::Message);
        e.body = Some(String::new());
        assert_eq!(e.validate_client(), Err(EventValidationError::EmptyMessage));
    }

    #[test]
    fn nul_in_the_body_is_refused() {
        for body in ["\0", "hi\0", "\0hi", "h\0i", "line one\n\0line two"] {
            for kind in [EventKind::Message, EventKind::Note] {
                let mut e = ev(kind);
                e.body = Some(body.into());
                assert_eq!(
                    e.validate_client(),
                    Err(EventValidationError::NulInBody),
                    "{body:?}"
                );
                assert_eq!(e.validate_shape(), Err(EventValidationError::NulInBody));
            }
        }
        assert_eq!(
            EventValidationError::NulInBody.to_string(),
            "body must not contain NUL characters (U+0000)"
        );
        // Other control characters (line breaks, tabs) are ordinary text.
        let mut e = ev(EventKind::Message);
        e.body = Some("line one\r\n\tline two".into());
        assert_eq!(e.validate_client(), Ok(()));
    }

    #[test]
    fn nul_anywhere_in_meta_is_refused() {
        use serde_json::json;
        for meta in [
            json!({"k": "v\0"}),
            json!({"k\0": "v"}),
            json!({"a": {"b": {"c\0": 1}}}),
            json!({"a": [1, "ok", ["deep", "\0"]]}),
            json!({"a": [{"b": [{"c": "x\0y"}]}]}),
        ] {
            let mut e = ev(EventKind::Note);
            e.meta = meta.as_object().unwrap().clone();
            assert_eq!(
                e.validate_client(),
                Err(EventValidationError::NulInMeta),
                "{meta}"
            );
        }
        assert_eq!(
            EventValidationError::NulInMeta.to_string(),
            "meta must not contain NUL characters (U+0000)"
        );
        // The same shapes without NUL are fine, and so is the escaped text
        // `\u0000` (six printable characters).
        let mut e = ev(EventKind::Note);
        e.meta =
            json!({"a": [{"b": [{"c": "x y", "n": null, "t": true, "f": 1.5}]}], "esc": "\\u0000"})
                .as_object()
                .unwrap()
                .clone();
        assert_eq!(e.validate_client(), Ok(()));
    }
}
