//! Meta WhatsApp Cloud API webhooks with payloads shaped like Meta's
//! documented examples (the messages webhook reference): the signature over
//! the raw body, inbound text/media/button messages, unsupported types, and
//! statuses arriving out of order.

use continuum_messaging::meta::{
    SignatureError, WebhookItem, parse_webhook, signature_header, verify_signature,
};
use continuum_messaging::types::{Address, DeliveryStatus, MediaSource, MessageChannel};
use std::time::{Duration, SystemTime};

/// Meta's documented text-message example, byte for byte as it would arrive.
const TEXT: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}]},"field":"messages"}]}]}"#;
const APP_SECRET: &str = "6d1a6bd5e4a0f0c3a1a2b3c4d5e6f708";
/// HMAC-SHA256 of `TEXT` keyed with `APP_SECRET`, computed independently
/// with Python's `hmac` module.
const TEXT_SIGNATURE: &str =
    "sha256=37819f3d560a467f7b4cf5e9b11a5d5c28551e9711a396f73c820c2cb76bb9e2";

fn at(secs: u64) -> Option<SystemTime> {
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[test]
fn signature_is_checked_over_the_raw_body() {
    assert_eq!(
        signature_header(APP_SECRET, TEXT.as_bytes()),
        TEXT_SIGNATURE
    );
    assert_eq!(
        verify_signature(APP_SECRET, TEXT.as_bytes(), Some(TEXT_SIGNATURE)),
        Ok(())
    );
    // Same JSON, different bytes (a re-serialisation adds a space): refused.
    let reformatted = TEXT.replacen(r#""object":"#, r#""object": "#, 1);
    assert_eq!(
        verify_signature(APP_SECRET, reformatted.as_bytes(), Some(TEXT_SIGNATURE)),
        Err(SignatureError::Mismatch)
    );
    let tampered = TEXT.replace("another color", "another colour");
    assert_eq!(
        verify_signature(APP_SECRET, tampered.as_bytes(), Some(TEXT_SIGNATURE)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature("another-app", TEXT.as_bytes(), Some(TEXT_SIGNATURE)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(APP_SECRET, TEXT.as_bytes(), None),
        Err(SignatureError::Missing)
    );
    let upper = TEXT_SIGNATURE.to_uppercase().replace("SHA256=", "sha256=");
    assert_eq!(
        verify_signature(APP_SECRET, TEXT.as_bytes(), Some(&upper)),
        Ok(()),
        "hex case does not matter"
    );
}

#[test]
fn documented_text_message() {
    let events = parse_webhook(TEXT.as_bytes()).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].phone_number_id.as_deref(),
        Some("106540352242922")
    );
    let WebhookItem::Inbound(m) = &events[0].item else {
        panic!("{:?}", events[0].item)
    };
    assert_eq!(m.channel, MessageChannel::Whatsapp);
    assert_eq!(m.from, Address::Whatsapp("+16505551234".into()));
    assert_eq!(m.to, Address::Whatsapp("+15550783881".into()));
    assert_eq!(m.body, "Does it come in another color?");
    assert_eq!(m.profile_name.as_deref(), Some("Sheena Nelson"));
    assert_eq!(m.wa_id.as_deref(), Some("16505551234"));
    assert_eq!(m.at, at(1_749_416_383));
    assert!(
        m.provider_message_id
            .starts_with("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA")
    );
}

fn envelope(value: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},{value}}},"field":"messages"}}]}}]}}"#
    )
}

#[test]
fn media_buttons_replies_and_unsupported_types() {
    let body = envelope(
        r#""contacts":[{"profile":{"name":"Ana"},"wa_id":"16505551234","user_id":"US.13491208655302741918"}],
        "messages":[
          {"from":"16505551234","id":"wamid.IMG","timestamp":"1749416400","type":"image",
           "image":{"caption":"my rash","mime_type":"image/jpeg","sha256":"HgLfxk0GeE9pIXvSB3Ss9IXNPHl2dzWT/3pMG5Vd0Jo=","id":"1003383421387256"}},
          {"from":"16505551234","id":"wamid.DOC","timestamp":"1749416401","type":"document",
           "document":{"filename":"referral.pdf","mime_type":"application/pdf","sha256":"abc","id":"1003383421387257"}},
          {"from":"16505551234","id":"wamid.AUD","timestamp":"1749416402","type":"audio",
           "audio":{"mime_type":"audio/ogg; codecs=opus","sha256":"abc","id":"1003383421387258","voice":true}},
          {"context":{"from":"15550783881","id":"wamid.REMINDER"},"from":"16505551234","id":"wamid.BTN","timestamp":"1749416403","type":"button",
           "button":{"payload":"confirm-appt-42","text":"Confirm"}},
          {"context":{"from":"15550783881","id":"wamid.MENU"},"from":"16505551234","id":"wamid.INT","timestamp":"1749416404","type":"interactive",
           "interactive":{"type":"button_reply","button_reply":{"id":"resched-42","title":"Reschedule"}}},
          {"from":"16505551234","id":"wamid.LOC","timestamp":"1749416405","type":"location",
           "location":{"latitude":37.48,"longitude":-122.15,"name":"Clinic"}},
          {"from":"16505551234","id":"wamid.UNS","timestamp":"1749416406","type":"unsupported",
           "errors":[{"code":131051,"title":"Message type unknown","message":"Message type unknown","error_data":{"details":"Message type is currently not supported."}}],
           "unsupported":{"type":"edit"}},
          {"from_user_id":"US.13491208655302741918","id":"wamid.BSU","timestamp":"1749416407","type":"text","text":{"body":"C"}},
          {"id":"wamid.BAD","timestamp":"1749416408","type":"text","text":{"body":"no sender"}}
        ]"#,
    );
    let events = parse_webhook(body.as_bytes()).unwrap();
    let items: Vec<&WebhookItem> = events.iter().map(|e| &e.item).collect();
    assert_eq!(items.len(), 9);

    let WebhookItem::Inbound(img) = items[0] else {
        panic!("{:?}", items[0])
    };
    assert_eq!(img.body, "my rash");
    assert_eq!(
        img.media[0].source,
        MediaSource::MetaId("1003383421387256".into())
    );
    assert_eq!(img.media[0].content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(img.wa_user_id, None, "from_user_id not sent on this one");

    let WebhookItem::Inbound(doc) = items[1] else {
        panic!()
    };
    assert_eq!(doc.media[0].filename.as_deref(), Some("referral.pdf"));
    assert_eq!(doc.body, "");

    let WebhookItem::Inbound(audio) = items[2] else {
        panic!()
    };
    assert_eq!(
        audio.media[0].content_type.as_deref(),
        Some("audio/ogg; codecs=opus")
    );

    let WebhookItem::Inbound(btn) = items[3] else {
        panic!()
    };
    assert_eq!(btn.body, "Confirm");
    assert_eq!(btn.button_payload.as_deref(), Some("confirm-appt-42"));
    assert_eq!(btn.in_reply_to.as_deref(), Some("wamid.REMINDER"));

    let WebhookItem::Inbound(int) = items[4] else {
        panic!()
    };
    assert_eq!(int.body, "Reschedule");
    assert_eq!(int.button_payload.as_deref(), Some("resched-42"));

    assert_eq!(
        items[5],
        &WebhookItem::Unsupported {
            kind: "location".into(),
            provider_message_id: Some("wamid.LOC".into()),
            from: Some(Address::Whatsapp("+16505551234".into())),
        }
    );
    assert!(matches!(items[6], WebhookItem::Unsupported { kind, .. } if kind == "unsupported"));

    // A username user who withheld the number: known by the BSUID only.
    let WebhookItem::Inbound(bsu) = items[7] else {
        panic!("{:?}", items[7])
    };
    assert_eq!(
        bsu.from,
        Address::WhatsappUser("US.13491208655302741918".into())
    );
    assert_eq!(bsu.wa_user_id.as_deref(), Some("US.13491208655302741918"));
    assert_eq!(
        bsu.profile_name.as_deref(),
        Some("Ana"),
        "matched by user_id"
    );

    // One bad item does not fail the batch.
    assert!(matches!(items[8], WebhookItem::Invalid { .. }));
}

#[test]
fn statuses_out_of_order() {
    // One message's statuses in one batch, newest first, plus a failure of
    // another message with Meta's error object.
    let body = envelope(
        r#""statuses":[
          {"id":"wamid.OUT1","status":"read","timestamp":"1749416500","recipient_id":"16505551234"},
          {"id":"wamid.OUT1","status":"delivered","timestamp":"1749416450","recipient_id":"16505551234",
           "conversation":{"id":"c1","origin":{"type":"utility"}},"pricing":{"billable":true,"pricing_model":"PMP","category":"utility"}},
          {"id":"wamid.OUT1","status":"sent","timestamp":"1749416440","recipient_id":"16505551234",
           "conversation":{"id":"c1","expiration_timestamp":"1749502840","origin":{"type":"utility"}}},
          {"id":"wamid.OUT2","status":"failed","timestamp":"1749416460","recipient_id":"16505551299",
           "errors":[{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{"details":"Message Undeliverable."}}]},
          {"id":"wamid.OUT3","status":"sent","timestamp":"1749416470","recipient_user_id":"US.13491208655302741918"},
          {"id":"wamid.OUT4","status":"deleted","timestamp":"1749416480","recipient_id":"16505551234"}
        ]"#,
    );
    let events = parse_webhook(body.as_bytes()).unwrap();
    let statuses: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.item {
            WebhookItem::Status(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.len(), 5);
    assert!(
        matches!(events[5].item, WebhookItem::Invalid { .. }),
        "an unknown status is reported, not fatal"
    );

    // The outbox applies them as they come; the strongest wins.
    let out1: Vec<_> = statuses
        .iter()
        .filter(|s| s.provider_message_id == "wamid.OUT1")
        .collect();
    let mut stored = out1[0].clone();
    for s in &out1[1..] {
        if s.supersedes(&stored) {
            stored = (*s).clone();
        }
    }
    assert_eq!(stored.status, DeliveryStatus::Read);
    assert_eq!(stored.at, at(1_749_416_500));
    assert_eq!(
        stored.recipient,
        Some(Address::Whatsapp("+16505551234".into()))
    );

    let failed = &statuses[3];
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.error_code.as_deref(), Some("131026"));
    assert_eq!(
        statuses[4].recipient,
        Some(Address::WhatsappUser("US.13491208655302741918".into()))
    );
}

#[test]
fn batches_of_several_entries_and_hostile_input() {
    let one = envelope(r#""statuses":[{"id":"wamid.A","status":"sent","timestamp":"1"}]"#);
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    let mut batch = v.clone();
    batch["entry"]
        .as_array_mut()
        .unwrap()
        .push(v["entry"][0].clone());
    let events = parse_webhook(batch.to_string().as_bytes()).unwrap();
    assert_eq!(events.len(), 2);

    for hostile in [
        "",
        "null",
        "[]",
        r#"{"entry":"x"}"#,
        r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":[]}]}]}"#,
        r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messages":[1,2,3]}}]}]}"#,
    ] {
        // Never panics; errors or invalid items only.
        if let Ok(events) = parse_webhook(hostile.as_bytes()) {
            assert!(
                events
                    .iter()
                    .all(|e| matches!(e.item, WebhookItem::Invalid { .. })),
                "{hostile}: {events:?}"
            );
        }
    }
    let huge = vec![b' '; continuum_messaging::meta::webhook::MAX_WEBHOOK_BYTES + 1];
    assert!(parse_webhook(&huge).is_err());
}
