//! Delivery receipts: deliver_sm with the receipt bit in esm_class. The
//! text follows the de-facto format of SMPP 3.4 Appendix B
//! (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`),
//! read leniently: keys in any order and any case. The TLVs
//! receipted_message_id and message_state, when present, win over the text.

use crate::pdu::{Sm, esm, tag};
use crate::text;

/// Where a submitted message ended up (3.4 section 5.2.28, and the `stat:`
/// words of Appendix B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageState {
    Enroute,
    Delivered,
    Expired,
    Deleted,
    Undeliverable,
    Accepted,
    Unknown,
    Rejected,
}

impl MessageState {
    /// From the message_state TLV.
    pub fn from_tlv(value: u8) -> MessageState {
        match value {
            1 => MessageState::Enroute,
            2 => MessageState::Delivered,
            3 => MessageState::Expired,
            4 => MessageState::Deleted,
            5 => MessageState::Undeliverable,
            6 => MessageState::Accepted,
            8 => MessageState::Rejected,
            _ => MessageState::Unknown,
        }
    }

    /// From a `stat:` word, by its first five letters so that spellings
    /// such as `DELIVERED` or `REJECTED` match too.
    pub fn from_stat(stat: &str) -> MessageState {
        let s = stat.trim().to_ascii_uppercase();
        let head = s.get(..5).unwrap_or(&s);
        match head {
            "DELIV" => MessageState::Delivered,
            "EXPIR" => MessageState::Expired,
            "DELET" => MessageState::Deleted,
            "UNDEL" | "FAILE" => MessageState::Undeliverable,
            "ACCEP" => MessageState::Accepted,
            "REJEC" => MessageState::Rejected,
            "ENROU" => MessageState::Enroute,
            _ => MessageState::Unknown,
        }
    }

    /// Whether no further receipt is expected for the message.
    pub fn is_final(self) -> bool {
        !matches!(self, MessageState::Enroute | MessageState::Accepted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Enroute => "enroute",
            MessageState::Delivered => "delivered",
            MessageState::Expired => "expired",
            MessageState::Deleted => "deleted",
            MessageState::Undeliverable => "undeliverable",
            MessageState::Accepted => "accepted",
            MessageState::Unknown => "unknown",
            MessageState::Rejected => "rejected",
        }
    }
}

/// The fields of a receipt's text; each is `None` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptText {
    pub id: Option<String>,
    pub sub: Option<String>,
    pub dlvrd: Option<String>,
    pub submit_date: Option<String>,
    pub done_date: Option<String>,
    pub stat: Option<String>,
    pub err: Option<String>,
    pub text: Option<String>,
}

/// The receipt keys, longest spelling first where one is a prefix of
/// another.
const KEYS: [&str; 10] = [
    "submit date",
    "submit_date",
    "done date",
    "done_date",
    "dlvrd",
    "stat",
    "text",
    "err",
    "sub",
    "id",
];

/// Parses a receipt's text. A key counts where it starts the text or
/// follows whitespace, and is followed by `:` (spaces allowed before it);
/// its value runs to the next key.
pub fn parse_text(s: &str) -> ReceiptText {
    let lower = s.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    // (key start, key, value start)
    let mut found: Vec<(usize, &str, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if i == 0 || bytes[i - 1].is_ascii_whitespace() {
            for key in KEYS {
                if bytes[i..].starts_with(key.as_bytes()) {
                    let mut j = i + key.len();
                    while j < bytes.len() && bytes[j] == b' ' {
                        j += 1;
                    }
                    if bytes.get(j) == Some(&b':') {
                        found.push((i, key, j + 1));
                        i = j;
                        break;
                    }
                }
            }
        }
        i += 1;
    }
    let mut out = ReceiptText::default();
    for (n, &(_, key, start)) in found.iter().enumerate() {
        let end = found.get(n + 1).map_or(s.len(), |next| next.0);
        // `s` and `lower` have the same byte offsets (ASCII lowering).
        let value = s.get(start..end).unwrap_or("").trim().to_owned();
        let slot = match key {
            "id" => &mut out.id,
            "sub" => &mut out.sub,
            "dlvrd" => &mut out.dlvrd,
            "submit date" | "submit_date" => &mut out.submit_date,
            "done date" | "done_date" => &mut out.done_date,
            "stat" => &mut out.stat,
            "err" => &mut out.err,
            _ => &mut out.text,
        };
        slot.get_or_insert(value);
    }
    out
}

/// A delivery receipt for one submitted segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message_id the SMSC gave in submit_sm_resp.
    pub message_id: String,
    pub state: MessageState,
    /// The `err:` code (network or SMSC specific), if any and not `000`.
    pub error: Option<String>,
}

/// Whether a deliver_sm is a receipt (or another SMSC notification about
/// a message we sent) rather than a message from a handset.
pub fn is_receipt(sm: &Sm) -> bool {
    sm.esm_class & esm::MESSAGE_TYPE_MASK != 0
}

/// The receipt a deliver_sm carries; `None` when it names no message.
pub fn from_deliver_sm(sm: &Sm) -> Option<Receipt> {
    let body = if sm.short_message.is_empty() {
        sm.tlv(tag::MESSAGE_PAYLOAD).unwrap_or(&[])
    } else {
        &sm.short_message
    };
    // Receipt text is ASCII; decode it as such whatever data_coding says,
    // unless it is UCS-2.
    let text = if sm.data_coding == text::DCS_UCS2 {
        text::decode(text::DCS_UCS2, body)
    } else {
        body.iter().map(|&b| b as char).collect()
    };
    let parsed = parse_text(&text);
    let tlv_id = sm.tlv(tag::RECEIPTED_MESSAGE_ID).map(|v| {
        let v = v.split(|&b| b == 0).next().unwrap_or(&[]);
        v.iter().map(|&b| b as char).collect::<String>()
    });
    let message_id = tlv_id
        .filter(|id| !id.is_empty())
        .or(parsed.id)
        .filter(|id| !id.is_empty())?;
    let state = match sm.tlv(tag::MESSAGE_STATE) {
        Some(&[v]) => MessageState::from_tlv(v),
        _ => parsed
            .stat
            .as_deref()
            .map_or(MessageState::Unknown, MessageState::from_stat),
    };
    let error = parsed
        .err
        .filter(|e| !e.is_empty() && e.bytes().any(|b| b != b'0'));
    Some(Receipt {
        message_id,
        state,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Tlv;
    use proptest::prelude::*;

    #[test]
    fn the_appendix_b_format() {
        let r = parse_text(
            "id:0123456789 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 text:Hello world",
        );
        assert_eq!(r.id.as_deref(), Some("0123456789"));
        assert_eq!(r.sub.as_deref(), Some("001"));
        assert_eq!(r.submit_date.as_deref(), Some("2401011200"));
        assert_eq!(r.done_date.as_deref(), Some("2401011201"));
        assert_eq!(r.stat.as_deref(), Some("DELIVRD"));
        assert_eq!(r.err.as_deref(), Some("000"));
        assert_eq!(r.text.as_deref(), Some("Hello world"));
    }

    #[test]
    fn any_order_and_case() {
        let r = parse_text("STAT:undeliv  ERR:034 Id: ab-12 Text:x Done_Date:2401011201");
        assert_eq!(r.id.as_deref(), Some("ab-12"));
        assert_eq!(r.stat.as_deref(), Some("undeliv"));
        assert_eq!(r.err.as_deref(), Some("034"));
        assert_eq!(r.done_date.as_deref(), Some("2401011201"));
        assert_eq!(
            MessageState::from_stat("undeliv"),
            MessageState::Undeliverable
        );
        // "id" inside a word is not a key.
        let r = parse_text("stat:DELIVRD valid:3 id:7");
        assert_eq!(r.id.as_deref(), Some("7"));
    }

    #[test]
    fn stat_words() {
        for (word, state) in [
            ("DELIVRD", MessageState::Delivered),
            ("EXPIRED", MessageState::Expired),
            ("DELETED", MessageState::Deleted),
            ("UNDELIV", MessageState::Undeliverable),
            ("ACCEPTD", MessageState::Accepted),
            ("UNKNOWN", MessageState::Unknown),
            ("REJECTD", MessageState::Rejected),
            ("ENROUTE", MessageState::Enroute),
            ("rejected", MessageState::Rejected),
            ("", MessageState::Unknown),
        ] {
            assert_eq!(MessageState::from_stat(word), state, "{word}");
        }
        assert_eq!(MessageState::from_tlv(2), MessageState::Delivered);
        assert_eq!(MessageState::from_tlv(8), MessageState::Rejected);
        assert_eq!(MessageState::from_tlv(99), MessageState::Unknown);
    }

    fn receipt_sm(text: &str, tlvs: Vec<Tlv>) -> Sm {
        Sm {
            esm_class: esm::DELIVERY_RECEIPT,
            short_message: text.as_bytes().to_vec(),
            tlvs,
            ..Sm::default()
        }
    }

    #[test]
    fn tlvs_win_over_the_text() {
        let sm = receipt_sm(
            "id:111 sub:001 dlvrd:000 stat:DELIVRD err:000",
            vec![
                Tlv {
                    tag: tag::RECEIPTED_MESSAGE_ID,
                    value: b"abc\0".to_vec(),
                },
                Tlv {
                    tag: tag::MESSAGE_STATE,
                    value: vec![5],
                },
            ],
        );
        assert!(is_receipt(&sm));
        let r = from_deliver_sm(&sm).unwrap();
        assert_eq!(r.message_id, "abc");
        assert_eq!(r.state, MessageState::Undeliverable);
        assert_eq!(r.error, None);
    }

    #[test]
    fn text_only_receipt() {
        let r = from_deliver_sm(&receipt_sm("id:42 stat:EXPIRED err:012", vec![])).unwrap();
        assert_eq!(
            r,
            Receipt {
                message_id: "42".into(),
                state: MessageState::Expired,
                error: Some("012".into())
            }
        );
        assert_eq!(from_deliver_sm(&receipt_sm("stat:DELIVRD", vec![])), None);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,200}") {
            let _ = parse_text(&s);
        }

        #[test]
        fn fields_come_back_in_any_order(
            id in "[0-9a-f]{1,20}",
            stat in proptest::sample::select(vec!["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD"]),
            err in "[0-9]{3}",
            order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        ) {
            let fields = [format!("id:{id}"), format!("stat:{stat}"), format!("err:{err}"), "sub:001".to_string()];
            let text: Vec<&str> = order.iter().map(|&i| fields[i].as_str()).collect();
            let r = parse_text(&text.join(" "));
            prop_assert_eq!(r.id.as_deref(), Some(id.as_str()));
            prop_assert_eq!(r.stat.as_deref(), Some(stat));
            prop_assert_eq!(r.err.as_deref(), Some(err.as_str()));
        }
    }
}
