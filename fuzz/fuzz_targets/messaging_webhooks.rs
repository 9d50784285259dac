//! Provider webhooks come from the network (after their signature check,
//! but a provider can be wrong or compromised): Twilio's form parser and
//! webhook reader, Meta's JSON reader and the signature checks themselves
//! must refuse garbage with an error, never panic.
#![no_main]
use continuum_messaging::{keywords, meta, twilio};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = twilio::parse_form(data) {
        let _ = twilio::parse_webhook(&params);
        let _ = twilio::validate("token", "https://example.org/hook?a=1", &params, Some("x"));
    }
    let _ = meta::parse_webhook(data);
    let _ = meta::verify_signature("secret", data, std::str::from_utf8(data).ok());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keywords::classify(text);
        let _ = keywords::reminder_reply(text);
    }
});
