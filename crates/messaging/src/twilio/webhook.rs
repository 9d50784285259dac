//! Twilio's form-encoded webhooks: inbound messages (SMS, MMS, WhatsApp)
//! and status callbacks. Check the signature first
//! ([`super::signature::validate`]) over the same decoded parameters.

use crate::types::{
    Address, AddressError, DeliveryStatus, InboundMessage, MAX_BODY_BYTES, MAX_FIELD_BYTES, Media,
    MediaSource, MessageChannel, StatusUpdate,
};

/// Twilio sends at most 10 media per MMS; more is not Twilio.
pub const MAX_MEDIA: usize = 10;

/// More form parameters than any Twilio webhook carries (an inbound MMS with
/// ten media has about 45).
pub const MAX_PARAMS: usize = 256;

/// Largest form body accepted, in bytes.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("form body of {len} bytes exceeds the {limit}-byte limit")]
    BodyTooLarge { len: usize, limit: usize },
    #[error("form body has more than {limit} parameters")]
    TooManyParams { limit: usize },
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("{field} is longer than {limit} bytes")]
    TooLong { field: &'static str, limit: usize },
    #[error("{field} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("NumMedia is {count}; Twilio sends at most {limit}")]
    TooMuchMedia { count: usize, limit: usize },
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("MessageStatus `received` is an inbound message, not a status callback")]
    NotAStatus,
    #[error(
        "MessageStatus `{0}` is not one of accepted, scheduled, queued, sending, sent, delivered, undelivered, failed, read, canceled"
    )]
    UnknownStatus(String),
}

/// Decodes an `application/x-www-form-urlencoded` body into its pairs, in
/// order, repeated names kept: what the signature is computed over.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    if body.len() > MAX_FORM_BYTES {
        return Err(ParseError::BodyTooLarge {
            len: body.len(),
            limit: MAX_FORM_BYTES,
        });
    }
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.len() == MAX_PARAMS {
            return Err(ParseError::TooManyParams { limit: MAX_PARAMS });
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

/// What a Twilio messaging webhook is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioWebhook {
    Inbound(InboundMessage),
    Status(StatusUpdate),
}

/// Inbound messages carry `SmsStatus`/`MessageStatus` `received`; status
/// callbacks carry the status of a message we sent.
pub fn parse_webhook<K: AsRef<str>, V: AsRef<str>>(
    params: &[(K, V)],
) -> Result<TwilioWebhook, ParseError> {
    match status_param(params) {
        Some(s) if !is_inbound_status(s) => parse_status(params).map(TwilioWebhook::Status),
        _ => parse_inbound(params).map(TwilioWebhook::Inbound),
    }
}

fn status_param<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> Option<&str> {
    get(params, "MessageStatus").or_else(|| get(params, "SmsStatus"))
}

fn is_inbound_status(s: &str) -> bool {
    matches!(s, "received" | "receiving")
}

/// An inbound SMS, MMS or WhatsApp message: `From`, `To`, `Body`,
/// `MessageSid`, `NumMedia`, `MediaUrl{N}`, `MediaContentType{N}`; WhatsApp
/// adds `WaId`, `ProfileName` and `whatsapp:` addresses.
pub fn parse_inbound<K: AsRef<str>, V: AsRef<str>>(
    params: &[(K, V)],
) -> Result<InboundMessage, ParseError> {
    let from = Address::parse_twilio(required(params, "From")?, "From")?;
    let to = Address::parse_twilio(required(params, "To")?, "To")?;
    let channel = from.channel();
    if to.channel() != channel {
        return Err(ParseError::Invalid {
            field: "To",
            reason: "From and To are on different channels",
        });
    }
    let provider_message_id = message_sid(params)?;
    let body = bounded(params, "Body", MAX_BODY_BYTES)?.unwrap_or_default();

    let num_media = match get(params, "NumMedia") {
        None | Some("") => 0,
        Some(n) => n.trim().parse::<usize>().map_err(|_| ParseError::Invalid {
            field: "NumMedia",
            reason: "not a number",
        })?,
    };
    if num_media > MAX_MEDIA {
        return Err(ParseError::TooMuchMedia {
            count: num_media,
            limit: MAX_MEDIA,
        });
    }
    let mut media = Vec::with_capacity(num_media);
    for i in 0..num_media {
        let url = required(params, &format!("MediaUrl{i}"))
            .map_err(|_| ParseError::Missing { field: "MediaUrl" })?;
        if url.len() > MAX_FIELD_BYTES {
            return Err(ParseError::TooLong {
                field: "MediaUrl",
                limit: MAX_FIELD_BYTES,
            });
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ParseError::Invalid {
                field: "MediaUrl",
                reason: "not an http(s) URL",
            });
        }
        let content_type = get(params, &format!("MediaContentType{i}"))
            .filter(|t| !t.is_empty() && t.len() <= 255)
            .map(str::to_owned);
        media.push(Media {
            source: MediaSource::Url(url.to_owned()),
            content_type,
            filename: None,
        });
    }

    let whatsapp = channel == MessageChannel::Whatsapp;
    Ok(InboundMessage {
        channel,
        from,
        to,
        body,
        provider_message_id,
        media,
        profile_name: if whatsapp {
            bounded(params, "ProfileName", MAX_FIELD_BYTES)?
        } else {
            None
        },
        wa_id: if whatsapp {
            bounded(params, "WaId", 32)?
        } else {
            None
        },
        wa_user_id: None,
        in_reply_to: sid(params, "OriginalRepliedMessageSid")?,
        button_payload: bounded(params, "ButtonPayload", MAX_FIELD_BYTES)?,
        at: None,
    })
}

/// A status callback: `MessageSid` and `MessageStatus` (queued, sent,
/// delivered, undelivered, failed, read…), with `ErrorCode` on failures.
pub fn parse_status<K: AsRef<str>, V: AsRef<str>>(
    params: &[(K, V)],
) -> Result<StatusUpdate, ParseError> {
    let provider_message_id = message_sid(params)?;
    let raw = status_param(params).ok_or(ParseError::Missing {
        field: "MessageStatus",
    })?;
    let status = match raw {
        "accepted" | "scheduled" | "queued" => DeliveryStatus::Queued,
        "sending" | "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "undelivered" => DeliveryStatus::Undelivered,
        // A canceled scheduled message was never sent: as final as a failure.
        "failed" | "canceled" => DeliveryStatus::Failed,
        "read" => DeliveryStatus::Read,
        s if is_inbound_status(s) => return Err(ParseError::NotAStatus),
        other => {
            return Err(ParseError::UnknownStatus(
                other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(32)
                    .collect(),
            ));
        }
    };
    let error_code = match get(params, "ErrorCode").map(str::trim) {
        None | Some("") => None,
        Some(c) if c.len() <= 10 && c.bytes().all(|b| b.is_ascii_digit()) => Some(c.to_owned()),
        Some(_) => {
            return Err(ParseError::Invalid {
                field: "ErrorCode",
                reason: "not a number",
            });
        }
    };
    Ok(StatusUpdate {
        provider_message_id,
        status,
        error_code,
        at: None,
        // Informational only: a malformed To must not lose the update.
        recipient: get(params, "To").and_then(|t| Address::parse_twilio(t, "To").ok()),
    })
}

/// The first value of `name`.
pub fn get<'a, K: AsRef<str>, V: AsRef<str>>(params: &'a [(K, V)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.as_ref() == name)
        .map(|(_, v)| v.as_ref())
}

fn required<'a, K: AsRef<str>, V: AsRef<str>>(
    params: &'a [(K, V)],
    name: &str,
) -> Result<&'a str, ParseError> {
    match get(params, name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ParseError::Missing {
            field: static_name(name),
        }),
    }
}

/// Error variants carry `&'static str` field names; the dynamic ones
/// (`MediaUrl3`) are reported by their family.
fn static_name(name: &str) -> &'static str {
    match name {
        "From" => "From",
        "To" => "To",
        "MessageSid" => "MessageSid",
        _ => "parameter",
    }
}

fn bounded<K: AsRef<str>, V: AsRef<str>>(
    params: &[(K, V)],
    field: &'static str,
    limit: usize,
) -> Result<Option<String>, ParseError> {
    match get(params, field) {
        None | Some("") => Ok(None),
        Some(v) if v.len() > limit => Err(ParseError::TooLong { field, limit }),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// Twilio SIDs: two letters and 32 hex digits; accepted loosely (letters
/// and digits, at most 64) so a format change does not drop messages.
fn sid<K: AsRef<str>, V: AsRef<str>>(
    params: &[(K, V)],
    field: &'static str,
) -> Result<Option<String>, ParseError> {
    match get(params, field) {
        None | Some("") => Ok(None),
        Some(v) if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Ok(Some(v.to_owned()))
        }
        Some(_) => Err(ParseError::Invalid {
            field,
            reason: "not a Twilio SID",
        }),
    }
}

fn message_sid<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> Result<String, ParseError> {
    sid(params, "MessageSid")?
        .or(sid(params, "SmsMessageSid")?)
        .ok_or(ParseError::Missing {
            field: "MessageSid",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn inbound_mms() {
        let params = p(&[
            ("ToCountry", "US"),
            ("SmsMessageSid", "MM0123456789abcdef0123456789abcdef"),
            ("NumMedia", "2"),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("Body", "Here is my rash"),
            ("MessageSid", "MM0123456789abcdef0123456789abcdef"),
            ("SmsStatus", "received"),
            (
                "MediaUrl0",
                "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
            ),
            ("MediaContentType0", "image/jpeg"),
            (
                "MediaUrl1",
                "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2",
            ),
            ("MediaContentType1", "application/pdf"),
        ]);
        let TwilioWebhook::Inbound(m) = parse_webhook(&params).unwrap() else {
            panic!("not inbound");
        };
        assert_eq!(m.channel, MessageChannel::Sms);
        assert_eq!(m.from, Address::Phone("+14155550100".into()));
        assert_eq!(m.body, "Here is my rash");
        assert_eq!(m.media.len(), 2);
        assert_eq!(m.media[1].content_type.as_deref(), Some("application/pdf"));
        assert_eq!(m.profile_name, None);
    }

    #[test]
    fn inbound_whatsapp() {
        let params = p(&[
            ("From", "whatsapp:+14155550100"),
            ("To", "whatsapp:+14155238886"),
            ("Body", "C"),
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("NumMedia", "0"),
            ("WaId", "14155550100"),
            ("ProfileName", "Ana ✨"),
            ("ButtonPayload", "confirm-42"),
        ]);
        let m = parse_inbound(&params).unwrap();
        assert_eq!(m.channel, MessageChannel::Whatsapp);
        assert_eq!(m.from, Address::Whatsapp("+14155550100".into()));
        assert_eq!(m.wa_id.as_deref(), Some("14155550100"));
        assert_eq!(m.profile_name.as_deref(), Some("Ana ✨"));
        assert_eq!(m.button_payload.as_deref(), Some("confirm-42"));
    }

    #[test]
    fn inbound_refusals() {
        let base = [
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("MessageSid", "SM1"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = p(&base);
            v.extend(p(extra));
            v
        };
        assert!(parse_inbound(&with(&[])).is_ok());
        assert_eq!(
            parse_inbound(&with(&[("NumMedia", "11")])),
            Err(ParseError::TooMuchMedia {
                count: 11,
                limit: 10
            })
        );
        assert_eq!(
            parse_inbound(&with(&[("NumMedia", "1")])),
            Err(ParseError::Missing { field: "MediaUrl" })
        );
        assert!(parse_inbound(&with(&[("NumMedia", "-1")])).is_err());
        assert!(
            parse_inbound(&with(&[
                ("NumMedia", "1"),
                ("MediaUrl0", "file:///etc/passwd")
            ]))
            .is_err()
        );
        let long = "x".repeat(MAX_BODY_BYTES + 1);
        let mut v = with(&[]);
        v.push(("Body".into(), long));
        assert_eq!(
            parse_inbound(&v),
            Err(ParseError::TooLong {
                field: "Body",
                limit: MAX_BODY_BYTES
            })
        );
        assert_eq!(
            parse_inbound(&p(&[("From", "+14155550100"), ("To", "+14155550199")])),
            Err(ParseError::Missing {
                field: "MessageSid"
            })
        );
        assert!(
            parse_inbound(&p(&[
                ("From", "whatsapp:+14155550100"),
                ("To", "+14155550199"),
                ("MessageSid", "SM1")
            ]))
            .is_err()
        );
        let e = parse_inbound(&p(&[
            ("From", "nope"),
            ("To", "+14155550199"),
            ("MessageSid", "SM1"),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("From "), "{e}");
    }

    #[test]
    fn status_callbacks() {
        for (raw, want) in [
            ("queued", DeliveryStatus::Queued),
            ("sent", DeliveryStatus::Sent),
            ("delivered", DeliveryStatus::Delivered),
            ("undelivered", DeliveryStatus::Undelivered),
            ("failed", DeliveryStatus::Failed),
            ("read", DeliveryStatus::Read),
        ] {
            let params = p(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", raw),
                ("To", "+14155550100"),
            ]);
            let TwilioWebhook::Status(s) = parse_webhook(&params).unwrap() else {
                panic!("not a status");
            };
            assert_eq!(s.status, want);
            assert_eq!(s.provider_message_id, "SM1");
        }
        let s = parse_status(&p(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
        ]))
        .unwrap();
        assert_eq!(s.error_code.as_deref(), Some("30003"));
        assert_eq!(
            parse_status(&p(&[("MessageSid", "SM1"), ("MessageStatus", "received")])),
            Err(ParseError::NotAStatus)
        );
        assert!(matches!(
            parse_status(&p(&[("MessageSid", "SM1"), ("MessageStatus", "weird<script>")])),
            Err(ParseError::UnknownStatus(s)) if s == "weirdscript"
        ));
    }

    #[test]
    fn form_decoding_keeps_order_and_repeats() {
        let f = parse_form(b"Body=Hello+there%21&MediaUrl=a&MediaUrl=b&Empty=").unwrap();
        assert_eq!(
            f,
            p(&[
                ("Body", "Hello there!"),
                ("MediaUrl", "a"),
                ("MediaUrl", "b"),
                ("Empty", "")
            ])
        );
        let many = "a=1&".repeat(MAX_PARAMS + 1);
        assert_eq!(
            parse_form(many.as_bytes()),
            Err(ParseError::TooManyParams { limit: MAX_PARAMS })
        );
    }
}
