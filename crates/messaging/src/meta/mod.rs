//! Meta's WhatsApp Cloud API: the Graph API send and the webhooks.

pub mod webhook;

pub use webhook::{
    HandshakeError, SIGNATURE_HEADER, SignatureError, WebhookEvent, WebhookItem, parse_webhook,
    signature_header, verify_handshake, verify_signature,
};

use crate::http::{self, ConfigError, HttpTimeouts};
use crate::provider::{PermanentCause, Provider, ProviderId, SendError, SendFuture, Sent};
use crate::secret::Secret;
use crate::types::{Address, Form, MessageChannel, OutboundMessage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::{Duration, SystemTime};

pub const DEFAULT_API_BASE: &str = "https://graph.facebook.com";
pub const DEFAULT_API_VERSION: &str = "v23.0";

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_owned()
}

/// One WhatsApp business number on Meta's Cloud API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaConfig {
    pub id: ProviderId,
    /// A system user access token (bearer).
    pub access_token: Secret,
    /// The business number's id: messages are sent from it, and webhooks
    /// name it in `metadata.phone_number_id`.
    pub phone_number_id: String,
    /// Keys `X-Hub-Signature-256`.
    pub app_secret: Secret,
    /// Our half of the GET handshake.
    pub verify_token: Secret,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Operator configuration (a test stand-in), not tenant input.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default)]
    pub timeouts: HttpTimeouts,
}

/// Sends through `POST {base}/{version}/{phone_number_id}/messages`.
pub struct MetaWhatsAppProvider {
    id: ProviderId,
    endpoint: String,
    access_token: Secret,
    client: reqwest::Client,
}

const CHANNELS: &[MessageChannel] = &[MessageChannel::Whatsapp];

impl MetaWhatsAppProvider {
    pub fn new(cfg: &MetaConfig) -> Result<Self, ConfigError> {
        Self::with_client(cfg, http::client_builder(&cfg.timeouts))
    }

    /// Like [`Self::new`], on a client the caller set up further (e.g. a DNS
    /// resolver that refuses private addresses at connect time).
    pub fn with_client(
        cfg: &MetaConfig,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self, ConfigError> {
        let base = http::base_url(&cfg.api_base, "api_base")?;
        let version = http::path_segment(&cfg.api_version, "api_version")?;
        let number = http::path_segment(&cfg.phone_number_id, "phone_number_id")?;
        if cfg.access_token.is_empty() {
            return Err(ConfigError::Empty {
                field: "access_token",
            });
        }
        Ok(MetaWhatsAppProvider {
            id: cfg.id.clone(),
            endpoint: format!("{base}/{version}/{number}/messages"),
            access_token: cfg.access_token.clone(),
            client: builder.build().map_err(|_| ConfigError::Client)?,
        })
    }

    async fn send_inner(&self, msg: &OutboundMessage) -> Result<Sent, SendError> {
        if msg.channel != MessageChannel::Whatsapp {
            return Err(SendError::permanent(
                PermanentCause::Provider,
                None,
                format!("{} carries WhatsApp only, not {}", self.id, msg.channel),
            ));
        }
        let body = request_body(msg)?;
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.access_token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport_error("Meta", &e))?;
        let status = resp.status().as_u16();
        let retry_after = http::retry_after(resp.headers(), SystemTime::now());
        let body = http::read_capped(resp).await;
        classify_response(status, retry_after, body.as_deref().ok())
    }
}

impl Provider for MetaWhatsAppProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }

    fn channels(&self) -> &[MessageChannel] {
        CHANNELS
    }

    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.send_inner(msg))
    }
}

/// The JSON Meta's `/messages` takes: a template outside the window, text
/// or one media with the body as caption inside it.
pub fn request_body(msg: &OutboundMessage) -> Result<serde_json::Value, SendError> {
    if let Address::WhatsappUser(_) = msg.to {
        return Err(unsupported_recipient());
    }
    let to = msg.to.to_wa_id();
    let content = |what: &str| SendError::permanent(PermanentCause::Content, None, what);
    if msg.form == Form::Template {
        let t = msg
            .template
            .as_ref()
            .ok_or_else(|| content("form is template but the message has no template"))?;
        let mut template = json!({
            "name": t.name,
            "language": { "code": t.language },
        });
        if !t.params.is_empty() {
            let parameters: Vec<_> = t
                .params
                .iter()
                .map(|p| json!({ "type": "text", "text": p }))
                .collect();
            template["components"] = json!([{ "type": "body", "parameters": parameters }]);
        }
        return Ok(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": template,
        }));
    }
    match msg.media_urls.as_slice() {
        [] if msg.body.is_empty() => Err(content("the message has neither body nor media")),
        [] => Ok(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": { "preview_url": false, "body": msg.body },
        })),
        [url] => {
            let kind = media_kind(url);
            let mut media = json!({ "link": url });
            if !msg.body.is_empty() {
                media["caption"] = msg.body.clone().into();
            }
            let mut body = json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": kind,
            });
            body[kind] = media;
            Ok(body)
        }
        _ => Err(content(
            "WhatsApp carries one media per message: split the message",
        )),
    }
}

/// Sending to a business-scoped user id is not implemented: a recipient
/// error, so the message is dead-lettered rather than failed over.
pub(crate) fn unsupported_recipient() -> SendError {
    SendError::permanent(
        PermanentCause::Recipient,
        None,
        "sending to a WhatsApp business-scoped user id (no number) is not supported yet",
    )
}

/// Meta's media type from the URL's extension; anything else goes as a
/// document, which WhatsApp shows for any file.
fn media_kind(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" | "png" => "image",
        "mp4" | "3gp" => "video",
        _ => "document",
    }
}

fn classify_response(
    status: u16,
    retry_after: Option<Duration>,
    body: Option<&[u8]>,
) -> Result<Sent, SendError> {
    let json = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
    if (200..300).contains(&status) {
        let id = json
            .as_ref()
            .and_then(|j| j.pointer("/messages/0/id"))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty() && s.len() <= crate::types::MAX_FIELD_BYTES);
        return match id {
            Some(id) => Ok(Sent {
                provider_message_id: id.to_owned(),
            }),
            None => Err(SendError::unconfirmed(format!(
                "Meta answered {status} without a message id"
            ))),
        };
    }
    let code = json
        .as_ref()
        .and_then(|j| j.pointer("/error/code"))
        .and_then(|c| c.as_u64());
    if let Some(code) = code
        && let Some(e) = classify_code(code, retry_after)
    {
        return Err(e);
    }
    let code_s = code.map(|c| c.to_string());
    Err(match status {
        429 => SendError::Retryable {
            reason: "Meta is rate limiting (HTTP 429)".into(),
            retry_after,
        },
        500..=599 => SendError::Retryable {
            reason: format!("Meta answered HTTP {status}"),
            retry_after,
        },
        401 | 403 => SendError::permanent(
            PermanentCause::Provider,
            code_s,
            format!("Meta refused the access token (HTTP {status})"),
        ),
        _ => SendError::permanent(
            PermanentCause::Provider,
            code_s,
            format!("Meta refused the message (HTTP {status})"),
        ),
    })
}

/// Meta's documented Cloud API error codes that decide the outcome
/// (developers.facebook.com WhatsApp error codes). `None`: by HTTP status.
pub fn classify_code(code: u64, retry_after: Option<Duration>) -> Option<SendError> {
    use PermanentCause::*;
    let permanent = |cause, what: &str| {
        Some(SendError::permanent(
            cause,
            Some(code.to_string()),
            format!("Meta {code}: {what}"),
        ))
    };
    let retry = |what: &str| {
        Some(SendError::Retryable {
            reason: format!("Meta {code}: {what}"),
            retry_after,
        })
    };
    match code {
        // Throughput, per-app, per-account, pair and spam rate limits.
        4 | 80007 | 130429 | 131048 | 131056 => retry("rate limited"),
        1 | 2 | 131000 | 131016 | 133004 => retry("service temporarily unavailable"),
        131026 => permanent(
            Recipient,
            "message undeliverable (not on WhatsApp, or an old client)",
        ),
        131021 => permanent(Recipient, "the recipient is the sender"),
        131030 => permanent(
            Recipient,
            "the recipient is not in the test number's allowed list",
        ),
        131049 | 130472 => permanent(Recipient, "Meta chose not to deliver to this user"),
        131050 => permanent(OptedOut, "the user stopped marketing messages"),
        131047 => permanent(
            WindowClosed,
            "more than 24 hours since the user last wrote: a template is needed",
        ),
        100 | 131008 | 131009 | 131051 | 131052 | 131053 => {
            permanent(Content, "the message or its media is invalid")
        }
        132000..=132069 => permanent(Content, "the template or its parameters are invalid"),
        0 | 3 | 10 | 190 | 200..=299 | 368 | 131005 | 131031 | 131042 | 131045 | 130497 => {
            permanent(Provider, "the token, account or number cannot send")
        }
        133000..=133010 => permanent(Provider, "the business number is not registered"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Template;

    fn msg() -> OutboundMessage {
        OutboundMessage {
            id: "m1".into(),
            channel: MessageChannel::Whatsapp,
            from: None,
            to: Address::Whatsapp("+16505551234".into()),
            body: "See you tomorrow".into(),
            media_urls: vec![],
            template: None,
            form: Form::Session,
            status_callback: None,
        }
    }

    #[test]
    fn text_media_and_template_bodies() {
        let b = request_body(&msg()).unwrap();
        assert_eq!(
            b,
            json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"16505551234","type":"text","text":{"preview_url":false,"body":"See you tomorrow"}})
        );
        let mut m = msg();
        m.media_urls = vec!["https://cdn.example/x/scan.PDF?sig=1".into()];
        let b = request_body(&m).unwrap();
        assert_eq!(b["type"], "document");
        assert_eq!(
            b["document"]["link"],
            "https://cdn.example/x/scan.PDF?sig=1"
        );
        assert_eq!(b["document"]["caption"], "See you tomorrow");
        m.media_urls = vec!["https://cdn.example/a.jpg".into()];
        assert_eq!(request_body(&m).unwrap()["type"], "image");
        m.media_urls.push("https://cdn.example/b.jpg".into());
        assert!(request_body(&m).is_err());

        let mut m = msg();
        m.form = Form::Template;
        m.template = Some(Template {
            name: "appointment_reminder".into(),
            language: "en_US".into(),
            params: vec!["Ana".into(), "9:00".into()],
        });
        let b = request_body(&m).unwrap();
        assert_eq!(b["type"], "template");
        assert_eq!(b["template"]["name"], "appointment_reminder");
        assert_eq!(b["template"]["language"]["code"], "en_US");
        assert_eq!(
            b["template"]["components"],
            json!([{"type":"body","parameters":[{"type":"text","text":"Ana"},{"type":"text","text":"9:00"}]}])
        );
    }

    #[test]
    fn error_mapping() {
        let err = |status, code: u64| {
            classify_response(
                status,
                None,
                Some(
                    json!({"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":code,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},"fbtrace_id":"Az8or2yhqkZfEZ-_4Qn_Bam"}})
                        .to_string()
                        .as_bytes(),
                ),
            )
            .unwrap_err()
        };
        assert!(matches!(
            err(400, 131047),
            SendError::Permanent {
                cause: PermanentCause::WindowClosed,
                ..
            }
        ));
        assert!(matches!(err(400, 130429), SendError::Retryable { .. }));
        assert!(matches!(
            err(400, 131026),
            SendError::Permanent {
                cause: PermanentCause::Recipient,
                ..
            }
        ));
        assert!(matches!(
            err(401, 190),
            SendError::Permanent {
                cause: PermanentCause::Provider,
                ..
            }
        ));
        assert!(matches!(err(500, 999_999), SendError::Retryable { .. }));
        assert_eq!(
            classify_response(
                200,
                None,
                Some(br#"{"messaging_product":"whatsapp","contacts":[{"input":"16505551234","wa_id":"16505551234"}],"messages":[{"id":"wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA","message_status":"accepted"}]}"#)
            ),
            Ok(Sent {
                provider_message_id: "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA".into()
            })
        );
        assert!(matches!(
            classify_response(200, None, Some(b"{}")),
            Err(SendError::Unconfirmed { .. })
        ));
    }
}
