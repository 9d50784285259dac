//! Meta's WhatsApp Cloud API webhooks: the GET verification handshake, the
//! `X-Hub-Signature-256` check over the raw body (before any parsing), and
//! the `messages` payload: `messages[]` from patients and `statuses[]` of
//! what we sent, in any order.

use crate::types::{
    Address, DeliveryStatus, InboundMessage, MAX_BODY_BYTES, MAX_FIELD_BYTES, Media, MediaSource,
    MessageChannel, StatusUpdate,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// The header carrying `sha256=<hex HMAC of the raw body>`.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// Largest webhook body accepted, in bytes (Meta batches, but a batch of
/// text messages is far smaller).
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("hub.mode is missing or not `subscribe`")]
    Mode,
    #[error("hub.verify_token does not match the configured verify token")]
    Token,
    #[error("hub.challenge is missing, longer than 256 bytes, or not letters, digits, `-` and `_`")]
    Challenge,
}

/// The GET handshake Meta makes when a webhook URL is registered:
/// `hub.mode=subscribe`, `hub.verify_token` (ours, compared in constant
/// time), `hub.challenge` (answered as the response body, `text/plain`).
/// The challenge is restricted to a safe alphabet since it is reflected.
pub fn verify_handshake<K: AsRef<str>, V: AsRef<str>>(
    query: &[(K, V)],
    expected_token: &str,
) -> Result<String, HandshakeError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    };
    if get("hub.mode") != Some("subscribe") {
        return Err(HandshakeError::Mode);
    }
    let token = get("hub.verify_token").ok_or(HandshakeError::Token)?;
    if expected_token.is_empty() || !bool::from(token.as_bytes().ct_eq(expected_token.as_bytes())) {
        return Err(HandshakeError::Token);
    }
    let challenge = get("hub.challenge").ok_or(HandshakeError::Challenge)?;
    let ok = !challenge.is_empty()
        && challenge.len() <= 256
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(challenge.to_owned())
    } else {
        Err(HandshakeError::Challenge)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("X-Hub-Signature-256 header is missing")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` and 64 hex digits")]
    Malformed,
    #[error(
        "X-Hub-Signature-256 does not match the body (wrong app secret, or the body was altered)"
    )]
    Mismatch,
    /// Anyone can compute an HMAC keyed with nothing.
    #[error("no app secret is configured to check X-Hub-Signature-256: every request is refused")]
    NoSecret,
}

/// HMAC-SHA256 of the raw body, keyed with the app secret, against
/// `sha256=<hex>`. Run it on the bytes as received, before parsing: JSON
/// re-serialisation changes them.
pub fn verify_signature(
    app_secret: &str,
    raw_body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    if app_secret.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex_part = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let given = hex::decode(hex_part)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or(SignatureError::Malformed)?;
    if bool::from(sign(app_secret, raw_body).ct_eq(&given)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The `X-Hub-Signature-256` value Meta sends for `raw_body` (for tests and
/// stand-ins).
pub fn signature_header(app_secret: &str, raw_body: &[u8]) -> String {
    format!("sha256={}", hex::encode(sign(app_secret, raw_body)))
}

fn sign(app_secret: &str, raw_body: &[u8]) -> Vec<u8> {
    let Ok(mut m) =
        <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(app_secret.as_bytes())
    else {
        unreachable!("HMAC takes keys of any length")
    };
    m.update(raw_body);
    m.finalize().into_bytes().to_vec()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("webhook body of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    /// serde's message is not echoed: it can quote the payload.
    #[error("webhook body is not a WhatsApp Business Account JSON payload")]
    NotJson,
    #[error("object is `{0}`, not `whatsapp_business_account`")]
    Object(String),
}

/// One thing a webhook reported, with the business number it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `metadata.phone_number_id`: which configured number (and so which
    /// tenant and provider) this belongs to.
    pub phone_number_id: Option<String>,
    pub item: WebhookItem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookItem {
    Inbound(InboundMessage),
    Status(StatusUpdate),
    /// A message of a type we do not carry (location, contacts, reaction,
    /// order, system, `unsupported`…). Kept so the conversation can say
    /// "the patient sent something we cannot show", not dropped.
    Unsupported {
        kind: String,
        provider_message_id: Option<String>,
        from: Option<Address>,
    },
    /// An entry we could not read (a field missing or malformed). Meta
    /// retries non-2xx answers for days, so one bad item must not fail the
    /// whole batch: it is reported here for logging.
    Invalid {
        reason: String,
    },
    /// `value.errors[]`: an error Meta reports outside any message.
    Error {
        code: Option<String>,
    },
}

/// Parses a `messages` webhook. Changes of other fields (template status,
/// account updates) yield nothing.
pub fn parse_webhook(raw: &[u8]) -> Result<Vec<WebhookEvent>, ParseError> {
    if raw.len() > MAX_WEBHOOK_BYTES {
        return Err(ParseError::TooLarge {
            len: raw.len(),
            limit: MAX_WEBHOOK_BYTES,
        });
    }
    let payload: Payload = serde_json::from_slice(raw).map_err(|_| ParseError::NotJson)?;
    if let Some(o) = payload.object.as_deref()
        && o != "whatsapp_business_account"
    {
        return Err(ParseError::Object(o.chars().take(40).collect()));
    }
    let mut out = Vec::new();
    for change in payload.entry.into_iter().flat_map(|e| e.changes) {
        if change.field.as_deref().is_some_and(|f| f != "messages") {
            continue;
        }
        let Some(value) = change.value else { continue };
        let value: Value = match serde_json::from_value(value) {
            Ok(v) => v,
            Err(_) => {
                out.push(WebhookEvent {
                    phone_number_id: None,
                    item: invalid("value is not a messages object"),
                });
                continue;
            }
        };
        let phone_number_id = value
            .metadata
            .as_ref()
            .and_then(|m| m.phone_number_id.clone());
        let business = value
            .metadata
            .as_ref()
            .and_then(|m| m.display_phone_number.as_deref())
            .map(|n| n.chars().filter(char::is_ascii_digit).collect::<String>())
            .and_then(|d| Address::whatsapp(&d, "display_phone_number").ok());
        let push = |out: &mut Vec<WebhookEvent>, item| {
            out.push(WebhookEvent {
                phone_number_id: phone_number_id.clone(),
                item,
            })
        };
        for m in value.messages {
            let item = inbound(m, &value.contacts, business.as_ref());
            push(&mut out, item);
        }
        for s in value.statuses {
            push(&mut out, status(s));
        }
        for e in value.errors {
            push(
                &mut out,
                WebhookItem::Error {
                    code: e.code.map(|c| c.to_string()),
                },
            );
        }
    }
    Ok(out)
}

fn invalid(reason: &str) -> WebhookItem {
    WebhookItem::Invalid {
        reason: reason.to_owned(),
    }
}

fn inbound(
    raw: serde_json::Value,
    contacts: &[Contact],
    business: Option<&Address>,
) -> WebhookItem {
    let Ok(m) = serde_json::from_value::<Msg>(raw) else {
        return invalid("a message lacks id or type");
    };
    // A user with a username may withhold the number: then only the
    // business-scoped user id names them.
    let from = match (&m.from, &m.from_user_id) {
        (Some(n), _) => Address::whatsapp(n, "messages[].from"),
        (None, Some(u)) => Address::whatsapp_user(u, "messages[].from_user_id"),
        (None, None) => return invalid("a message has neither from nor from_user_id"),
    };
    let Ok(from) = from else {
        return invalid("messages[].from is not a WhatsApp number or user id");
    };
    let wa_user_id = m
        .from_user_id
        .clone()
        .filter(|u| Address::whatsapp_user(u, "from_user_id").is_ok());
    if !bounded_id(&m.id) {
        return invalid("messages[].id is empty or too long");
    }
    let Some(to) = business.cloned() else {
        return invalid("metadata.display_phone_number is missing or not a number");
    };
    let contact = contacts.iter().find(|c| {
        (m.from.is_some() && c.wa_id == m.from)
            || (m.from_user_id.is_some() && c.user_id == m.from_user_id)
    });
    let body;
    let mut media = Vec::new();
    let mut button_payload = None;
    let media_of = |o: &MediaObj| {
        o.id.as_deref().filter(|id| bounded_id(id)).map(|id| Media {
            source: MediaSource::MetaId(id.to_owned()),
            content_type: o.mime_type.clone().filter(|t| t.len() <= 255),
            filename: o.filename.clone().filter(|f| f.len() <= 255),
        })
    };
    match m.kind.as_str() {
        "text" => body = m.text.and_then(|t| t.body).unwrap_or_default(),
        "image" | "video" | "audio" | "document" | "sticker" => {
            let obj = match m.kind.as_str() {
                "image" => m.image,
                "video" => m.video,
                "audio" => m.audio,
                "document" => m.document,
                _ => m.sticker,
            };
            let Some(obj) = obj else {
                return invalid("a media message lacks its media object");
            };
            let Some(item) = media_of(&obj) else {
                return invalid("a media message lacks a media id");
            };
            media.push(item);
            body = obj.caption.unwrap_or_default();
        }
        // A template's quick-reply button (e.g. a reminder's "Confirm").
        "button" => {
            let b = m.button.unwrap_or_default();
            body = b.text.unwrap_or_default();
            button_payload = b.payload;
        }
        "interactive" => {
            let i = m.interactive.unwrap_or_default();
            let Some(reply) = i.button_reply.or(i.list_reply) else {
                return WebhookItem::Unsupported {
                    kind: "interactive".into(),
                    provider_message_id: Some(m.id),
                    from: Some(from),
                };
            };
            body = reply.title.unwrap_or_default();
            button_payload = reply.id;
        }
        other => {
            return WebhookItem::Unsupported {
                kind: other.chars().take(32).collect(),
                provider_message_id: Some(m.id),
                from: Some(from),
            };
        }
    }
    if body.len() > MAX_BODY_BYTES {
        return invalid("a message body exceeds the size limit");
    }
    if button_payload
        .as_ref()
        .is_some_and(|p| p.len() > MAX_FIELD_BYTES)
    {
        return invalid("a button payload exceeds the size limit");
    }
    WebhookItem::Inbound(InboundMessage {
        channel: MessageChannel::Whatsapp,
        from,
        to,
        body,
        provider_message_id: m.id,
        media,
        profile_name: contact
            .and_then(|c| c.profile.as_ref())
            .and_then(|p| p.name.clone())
            .filter(|n| n.len() <= MAX_FIELD_BYTES),
        wa_id: contact.and_then(|c| c.wa_id.clone()),
        wa_user_id,
        in_reply_to: m.context.and_then(|c| c.id).filter(|id| bounded_id(id)),
        button_payload,
        at: m.timestamp.as_deref().and_then(unix_time),
    })
}

fn status(raw: serde_json::Value) -> WebhookItem {
    let Ok(s) = serde_json::from_value::<Status>(raw) else {
        return invalid("a status lacks id or status");
    };
    if !bounded_id(&s.id) {
        return invalid("statuses[].id is empty or too long");
    }
    let status = match s.status.as_str() {
        "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        // `played`: a voice message was listened to, which is more than read.
        "read" | "played" => DeliveryStatus::Read,
        "failed" => DeliveryStatus::Failed,
        _ => return invalid("statuses[].status is not sent, delivered, read, played or failed"),
    };
    WebhookItem::Status(StatusUpdate {
        provider_message_id: s.id,
        status,
        error_code: s.errors.iter().find_map(|e| e.code).map(|c| c.to_string()),
        at: s.timestamp.as_deref().and_then(unix_time),
        recipient: s
            .recipient_id
            .as_deref()
            .and_then(|r| Address::whatsapp(r, "recipient_id").ok())
            .or_else(|| {
                s.recipient_user_id
                    .as_deref()
                    .and_then(|u| Address::whatsapp_user(u, "recipient_user_id").ok())
            }),
    })
}

fn bounded_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_FIELD_BYTES
}

/// Meta's timestamps: Unix seconds as a string.
fn unix_time(s: &str) -> Option<SystemTime> {
    let secs = s.trim().parse::<u64>().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[derive(Deserialize)]
struct Payload {
    object: Option<String>,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    field: Option<String>,
    value: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Value {
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
    #[serde(default)]
    errors: Vec<ErrorObj>,
}

#[derive(Deserialize)]
struct Metadata {
    display_phone_number: Option<String>,
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct Contact {
    profile: Option<Profile>,
    wa_id: Option<String>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct Profile {
    name: Option<String>,
}

#[derive(Deserialize)]
struct ErrorObj {
    code: Option<i64>,
}

#[derive(Deserialize)]
struct Msg {
    from: Option<String>,
    from_user_id: Option<String>,
    id: String,
    timestamp: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    text: Option<Text>,
    image: Option<MediaObj>,
    video: Option<MediaObj>,
    audio: Option<MediaObj>,
    document: Option<MediaObj>,
    sticker: Option<MediaObj>,
    button: Option<Button>,
    interactive: Option<Interactive>,
    context: Option<Context>,
}

#[derive(Deserialize)]
struct Text {
    body: Option<String>,
}

#[derive(Deserialize)]
struct MediaObj {
    id: Option<String>,
    mime_type: Option<String>,
    caption: Option<String>,
    filename: Option<String>,
}

#[derive(Deserialize, Default)]
struct Button {
    payload: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize, Default)]
struct Interactive {
    button_reply: Option<Reply>,
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    id: Option<String>,
    title: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    timestamp: Option<String>,
    recipient_id: Option<String>,
    recipient_user_id: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorObj>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake() {
        let q = |mode: &str, tok: &str, ch: &str| {
            vec![
                ("hub.mode".to_string(), mode.to_string()),
                ("hub.verify_token".to_string(), tok.to_string()),
                ("hub.challenge".to_string(), ch.to_string()),
            ]
        };
        assert_eq!(
            verify_handshake(&q("subscribe", "s3cret", "1158201444"), "s3cret").as_deref(),
            Ok("1158201444")
        );
        assert_eq!(
            verify_handshake(&q("subscribe", "wrong", "1"), "s3cret"),
            Err(HandshakeError::Token)
        );
        assert_eq!(
            verify_handshake(&q("unsubscribe", "s3cret", "1"), "s3cret"),
            Err(HandshakeError::Mode)
        );
        assert_eq!(
            verify_handshake(&q("subscribe", "s3cret", "<script>"), "s3cret"),
            Err(HandshakeError::Challenge)
        );
        assert_eq!(
            verify_handshake(&q("subscribe", "", "1"), ""),
            Err(HandshakeError::Token),
            "an unset verify token never matches"
        );
    }

    #[test]
    fn signature() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let h = signature_header("appsecret", body);
        assert!(h.starts_with("sha256=") && h.len() == 7 + 64);
        assert_eq!(verify_signature("appsecret", body, Some(&h)), Ok(()));
        assert_eq!(
            verify_signature("appsecret", b"{}", Some(&h)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("other", body, Some(&h)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("appsecret", body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature("", body, Some(&signature_header("", body))),
            Err(SignatureError::NoSecret)
        );
        for bad in [
            "",
            "sha1=00",
            "sha256=zz",
            &h[..h.len() - 2],
            &h.replace("sha256=", ""),
        ] {
            assert_eq!(
                verify_signature("appsecret", body, Some(bad)),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn non_json_and_other_objects() {
        assert_eq!(parse_webhook(b"not json"), Err(ParseError::NotJson));
        assert_eq!(
            parse_webhook(br#"{"object":"page","entry":[]}"#),
            Err(ParseError::Object("page".into()))
        );
        assert_eq!(
            parse_webhook(br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"message_template_status_update","value":{"event":"APPROVED"}}]}]}"#),
            Ok(vec![])
        );
    }
}
