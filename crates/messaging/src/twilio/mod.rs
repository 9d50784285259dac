//! Twilio (and Twilio-compatible) SMS/MMS and WhatsApp: the REST send, the
//! webhook signature and the webhook parsers.

pub mod signature;
pub mod webhook;

pub use signature::{
    Algorithm, SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, SignatureError,
    algorithm_from_settings, public_url, signature, signature_with, validate, validate_with,
};
pub use webhook::{TwilioWebhook, parse_form, parse_inbound, parse_status, parse_webhook};

use crate::http::{self, ConfigError, HttpTimeouts};
use crate::provider::{PermanentCause, Provider, ProviderId, SendError, SendFuture, Sent};
use crate::secret::Secret;
use crate::types::{Address, Form, MessageChannel, OutboundMessage};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_channels() -> Vec<MessageChannel> {
    vec![MessageChannel::Sms]
}

/// One Twilio account of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwilioConfig {
    pub id: ProviderId,
    pub account_sid: String,
    /// Basic auth password for the REST API and the key of
    /// `X-Twilio-Signature`.
    pub auth_token: Secret,
    /// Another Twilio-compatible endpoint, or a test stand-in. Operator
    /// configuration, not tenant input: requests carry the credentials.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Sends through a messaging service (sender pool) when a message names
    /// no `from` and there is no `default_from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The number (E.164, or a short code) used when a message names none.
    #[serde(default)]
    pub default_from: Option<String>,
    #[serde(default = "default_channels")]
    pub channels: Vec<MessageChannel>,
    #[serde(default)]
    pub timeouts: HttpTimeouts,
}

/// Sends through `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`.
pub struct TwilioProvider {
    id: ProviderId,
    channels: Vec<MessageChannel>,
    endpoint: String,
    account_sid: String,
    auth_token: Secret,
    messaging_service_sid: Option<String>,
    default_from: Option<String>,
    client: reqwest::Client,
}

impl TwilioProvider {
    pub fn new(cfg: &TwilioConfig) -> Result<Self, ConfigError> {
        Self::with_client(cfg, http::client_builder(&cfg.timeouts))
    }

    /// Like [`Self::new`], on a client the caller set up further (e.g. a DNS
    /// resolver that refuses private addresses at connect time).
    pub fn with_client(
        cfg: &TwilioConfig,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self, ConfigError> {
        let base = http::base_url(&cfg.api_base, "api_base")?;
        let account_sid = http::path_segment(&cfg.account_sid, "account_sid")?;
        if cfg.auth_token.is_empty() {
            return Err(ConfigError::Empty {
                field: "auth_token",
            });
        }
        if let Some(from) = &cfg.default_from {
            Address::parse_twilio(from, "default_from").map_err(|_| ConfigError::Invalid {
                field: "default_from",
                reason: "not an E.164 number or short code",
            })?;
        }
        if cfg.channels.is_empty() {
            return Err(ConfigError::Empty { field: "channels" });
        }
        Ok(TwilioProvider {
            id: cfg.id.clone(),
            channels: cfg.channels.clone(),
            endpoint: format!("{base}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            account_sid,
            auth_token: cfg.auth_token.clone(),
            messaging_service_sid: cfg.messaging_service_sid.clone(),
            default_from: cfg.default_from.clone(),
            client: builder.build().map_err(|_| ConfigError::Client)?,
        })
    }

    /// The form Twilio's Messages resource takes. Public so the server can
    /// log the field names of a send without sending it.
    pub fn form(&self, msg: &OutboundMessage) -> Result<Vec<(&'static str, String)>, SendError> {
        if let Address::WhatsappUser(_) = msg.to {
            return Err(crate::meta::unsupported_recipient());
        }
        let spell = |a: &Address| match msg.channel {
            // The channel decides the prefix, whatever the address variant.
            MessageChannel::Whatsapp => format!("whatsapp:{}", a.number()),
            MessageChannel::Sms => a.number().to_owned(),
        };
        let mut form = vec![("To", spell(&msg.to))];
        match (&msg.from, &self.default_from, &self.messaging_service_sid) {
            (Some(from), _, _) => form.push(("From", spell(from))),
            (None, Some(from), _) => {
                let number = from.strip_prefix("whatsapp:").unwrap_or(from);
                let from = match msg.channel {
                    MessageChannel::Whatsapp => format!("whatsapp:{number}"),
                    MessageChannel::Sms => number.to_owned(),
                };
                form.push(("From", from));
            }
            (None, None, Some(service)) => form.push(("MessagingServiceSid", service.clone())),
            (None, None, None) => {
                return Err(SendError::permanent(
                    PermanentCause::Provider,
                    None,
                    "no sender: the message has no from and the provider no default_from or messaging_service_sid",
                ));
            }
        }
        let template = msg.channel == MessageChannel::Whatsapp && msg.form == Form::Template;
        if template {
            let Some(t) = &msg.template else {
                return Err(SendError::permanent(
                    PermanentCause::Content,
                    None,
                    "form is template but the message has no template",
                ));
            };
            form.push(("ContentSid", t.name.clone()));
            if !t.params.is_empty() {
                let vars: serde_json::Map<String, serde_json::Value> = t
                    .params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ((i + 1).to_string(), p.clone().into()))
                    .collect();
                form.push((
                    "ContentVariables",
                    serde_json::Value::Object(vars).to_string(),
                ));
            }
        } else {
            if msg.body.is_empty() && msg.media_urls.is_empty() {
                return Err(SendError::permanent(
                    PermanentCause::Content,
                    None,
                    "the message has neither body nor media",
                ));
            }
            if !msg.body.is_empty() {
                form.push(("Body", msg.body.clone()));
            }
            for url in &msg.media_urls {
                form.push(("MediaUrl", url.clone()));
            }
        }
        if let Some(cb) = &msg.status_callback {
            form.push(("StatusCallback", cb.clone()));
        }
        Ok(form)
    }

    async fn send_inner(&self, msg: &OutboundMessage) -> Result<Sent, SendError> {
        if !self.channels.contains(&msg.channel) {
            return Err(SendError::permanent(
                PermanentCause::Provider,
                None,
                format!("{} is not configured for {}", self.id, msg.channel),
            ));
        }
        let form = self.form(msg)?;
        let resp = self
            .client
            .post(&self.endpoint)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| http::transport_error("Twilio", &e))?;
        let status = resp.status().as_u16();
        let retry_after = http::retry_after(resp.headers(), SystemTime::now());
        let body = http::read_capped(resp).await;
        classify_response(status, retry_after, body.as_deref().ok())
    }
}

impl Provider for TwilioProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }

    fn channels(&self) -> &[MessageChannel] {
        &self.channels
    }

    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.send_inner(msg))
    }
}

/// Maps Twilio's answer. `body` is `None` when it could not be read.
fn classify_response(
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: Option<&[u8]>,
) -> Result<Sent, SendError> {
    let json = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
    if (200..300).contains(&status) {
        let sid = json
            .as_ref()
            .and_then(|j| j.get("sid"))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 64);
        return match sid {
            Some(sid) => Ok(Sent {
                provider_message_id: sid.to_owned(),
            }),
            // Twilio took it (2xx) but we cannot tell which message it is.
            None => Err(SendError::unconfirmed(format!(
                "Twilio answered {status} without a message sid"
            ))),
        };
    }
    let code = json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(|c| c.as_u64());
    if let Some(code) = code
        && let Some(e) = classify_code(code, retry_after)
    {
        return Err(e);
    }
    let code_s = code.map(|c| c.to_string());
    Err(match status {
        429 => SendError::Retryable {
            reason: "Twilio is rate limiting (HTTP 429)".into(),
            retry_after,
        },
        500..=599 => SendError::Retryable {
            reason: format!("Twilio answered HTTP {status}"),
            retry_after,
        },
        401 | 403 => SendError::permanent(
            PermanentCause::Provider,
            code_s,
            format!("Twilio refused the credentials (HTTP {status})"),
        ),
        404 => SendError::permanent(
            PermanentCause::Provider,
            code_s,
            "Twilio does not know the account (HTTP 404): check account_sid and api_base",
        ),
        // An error we have no rule for: this provider refuses it; the next
        // in the chain may not, and an exhausted chain dead-letters.
        _ => SendError::permanent(
            PermanentCause::Provider,
            code_s,
            format!("Twilio refused the message (HTTP {status})"),
        ),
    })
}

/// Twilio's documented error codes that decide the outcome
/// (twilio.com/docs/api/errors). `None`: decide by HTTP status.
pub fn classify_code(code: u64, retry_after: Option<std::time::Duration>) -> Option<SendError> {
    use PermanentCause::*;
    let permanent = |cause, what: &str| {
        Some(SendError::permanent(
            cause,
            Some(code.to_string()),
            format!("Twilio {code}: {what}"),
        ))
    };
    match code {
        20429 => Some(SendError::Retryable {
            reason: "Twilio 20429: too many requests".into(),
            retry_after,
        }),
        63018 => Some(SendError::Retryable {
            reason: "Twilio 63018: WhatsApp rate limit exceeded".into(),
            retry_after,
        }),
        21211 => permanent(Recipient, "invalid To number"),
        21214 => permanent(Recipient, "To number cannot be reached"),
        21614 => permanent(Recipient, "To is not a mobile number"),
        63003 | 63024 => permanent(Recipient, "not a reachable WhatsApp recipient"),
        63032 => permanent(Recipient, "WhatsApp will not deliver to this user"),
        21610 => permanent(OptedOut, "the recipient has unsubscribed (replied STOP)"),
        63016 => permanent(
            WindowClosed,
            "outside the WhatsApp 24-hour window: a template is needed",
        ),
        21602 | 21619 => permanent(Content, "a body or media is required"),
        21617 => permanent(Content, "the body exceeds 1600 characters"),
        21620 | 21623 => permanent(Content, "a media URL is invalid"),
        21656 | 63027 | 63028 => permanent(Content, "the template or its variables are invalid"),
        20003 | 20005 => permanent(
            Provider,
            "authentication failed or the account is not active",
        ),
        20404 => permanent(Provider, "the account or resource does not exist"),
        21212 | 21606 | 21659 | 21660 | 63007 => {
            permanent(Provider, "the sender is not valid for this account")
        }
        21408 | 21612 => permanent(
            Provider,
            "this account cannot reach the number (region or route)",
        ),
        21703..=21705 => permanent(Provider, "the messaging service is misconfigured"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(channel: MessageChannel) -> OutboundMessage {
        OutboundMessage {
            id: "m1".into(),
            channel,
            from: None,
            to: Address::Phone("+14155550100".into()),
            body: "Your appointment is tomorrow at 9".into(),
            media_urls: vec![
                "https://cdn.example/a.png".into(),
                "https://cdn.example/b.png".into(),
            ],
            template: None,
            form: Form::Session,
            status_callback: Some("https://care.example/webhooks/twilio/status".into()),
        }
    }

    fn provider(default_from: Option<&str>, service: Option<&str>) -> TwilioProvider {
        TwilioProvider::new(&TwilioConfig {
            id: "twilio".into(),
            account_sid: "AC123".into(),
            auth_token: "tok".into(),
            api_base: DEFAULT_API_BASE.into(),
            messaging_service_sid: service.map(Into::into),
            default_from: default_from.map(Into::into),
            channels: vec![MessageChannel::Sms, MessageChannel::Whatsapp],
            timeouts: HttpTimeouts::default(),
        })
        .unwrap()
    }

    #[test]
    fn sms_form() {
        let p = provider(Some("+14155550199"), None);
        let f = p.form(&msg(MessageChannel::Sms)).unwrap();
        assert_eq!(
            f,
            vec![
                ("To", "+14155550100".to_owned()),
                ("From", "+14155550199".to_owned()),
                ("Body", "Your appointment is tomorrow at 9".to_owned()),
                ("MediaUrl", "https://cdn.example/a.png".to_owned()),
                ("MediaUrl", "https://cdn.example/b.png".to_owned()),
                (
                    "StatusCallback",
                    "https://care.example/webhooks/twilio/status".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn whatsapp_template_form() {
        let p = provider(None, Some("MG1"));
        let mut m = msg(MessageChannel::Whatsapp);
        m.form = Form::Template;
        m.template = Some(crate::types::Template {
            name: "HX0123".into(),
            language: "en".into(),
            params: vec!["Ana".into(), "9:00".into()],
        });
        let f = p.form(&m).unwrap();
        assert_eq!(f[0], ("To", "whatsapp:+14155550100".to_owned()));
        assert_eq!(f[1], ("MessagingServiceSid", "MG1".to_owned()));
        assert_eq!(f[2], ("ContentSid", "HX0123".to_owned()));
        assert_eq!(
            f[3],
            ("ContentVariables", r#"{"1":"Ana","2":"9:00"}"#.to_owned())
        );
        assert!(f.iter().all(|(k, _)| *k != "Body"));
        m.template = None;
        assert!(matches!(
            p.form(&m),
            Err(SendError::Permanent {
                cause: PermanentCause::Content,
                ..
            })
        ));
    }

    #[test]
    fn no_sender_is_a_provider_error() {
        let p = provider(None, None);
        assert!(matches!(
            p.form(&msg(MessageChannel::Sms)),
            Err(SendError::Permanent {
                cause: PermanentCause::Provider,
                ..
            })
        ));
    }

    #[test]
    fn response_mapping() {
        let ra = Some(Duration::from_secs(3));
        assert_eq!(
            classify_response(201, None, Some(br#"{"sid":"SM1","status":"queued"}"#)),
            Ok(Sent {
                provider_message_id: "SM1".into()
            })
        );
        assert!(matches!(
            classify_response(201, None, Some(b"garbage")),
            Err(SendError::Unconfirmed { .. })
        ));
        assert!(matches!(
            classify_response(201, None, None),
            Err(SendError::Unconfirmed { .. })
        ));
        assert_eq!(
            classify_response(
                429,
                ra,
                Some(br#"{"code":20429,"message":"Too Many Requests"}"#)
            ),
            Err(SendError::Retryable {
                reason: "Twilio 20429: too many requests".into(),
                retry_after: ra
            })
        );
        assert!(matches!(
            classify_response(503, ra, None),
            Err(SendError::Retryable { retry_after, .. }) if retry_after == ra
        ));
        let e = classify_response(
            400,
            None,
            Some(br#"{"code":21211,"message":"The 'To' number +15005550001 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#),
        )
        .unwrap_err();
        assert!(
            matches!(&e, SendError::Permanent { cause: PermanentCause::Recipient, code: Some(c), .. } if c == "21211")
        );
        assert!(
            !e.to_string().contains("+1500"),
            "the provider's text (with the number) is not copied: {e}"
        );
        assert!(matches!(
            classify_response(400, None, Some(br#"{"code":21610}"#)),
            Err(SendError::Permanent {
                cause: PermanentCause::OptedOut,
                ..
            })
        ));
        assert!(matches!(
            classify_response(401, None, Some(br#"{"code":20003}"#)),
            Err(SendError::Permanent {
                cause: PermanentCause::Provider,
                ..
            })
        ));
        assert!(matches!(
            classify_response(400, None, Some(br#"{"code":99999}"#)),
            Err(SendError::Permanent { cause: PermanentCause::Provider, code: Some(c), .. }) if c == "99999"
        ));
        assert!(matches!(
            classify_response(418, None, Some(b"<html>")),
            Err(SendError::Permanent {
                cause: PermanentCause::Provider,
                code: None,
                ..
            })
        ));
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut cfg = TwilioConfig {
            id: "t".into(),
            account_sid: "../AC1".into(),
            auth_token: "x".into(),
            api_base: DEFAULT_API_BASE.into(),
            messaging_service_sid: None,
            default_from: None,
            channels: default_channels(),
            timeouts: HttpTimeouts::default(),
        };
        assert_eq!(
            TwilioProvider::new(&cfg).err(),
            Some(ConfigError::PathSegment {
                field: "account_sid"
            })
        );
        cfg.account_sid = "AC1".into();
        cfg.default_from = Some("call me".into());
        assert!(TwilioProvider::new(&cfg).is_err());
        cfg.default_from = None;
        cfg.api_base = "gopher://x".into();
        assert_eq!(
            TwilioProvider::new(&cfg).err(),
            Some(ConfigError::BaseUrl { field: "api_base" })
        );
    }
}
