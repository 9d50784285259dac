//! Network input to the API: JSON bodies into requests, then the domain's
//! validation and normalisation. Must never panic.
#![no_main]
use continuum_core::{BindingKind, NewEvent};
use continuum_server::api::timeline::AppendEventRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<AppendEventRequest>(data) {
        let ev = NewEvent {
            channel: req.channel,
            kind: req.kind,
            actor: req.actor.unwrap_or_else(continuum_core::Actor::system),
            body: req.body,
            meta: req.meta,
            idempotency_key: req.idempotency_key,
        };
        let _ = ev.validate_client();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for kind in BindingKind::ALL {
            if let Ok(n) = kind.normalize(text) {
                // Normalisation is idempotent.
                assert_eq!(kind.normalize(&n).unwrap(), n);
            }
        }
        let _ = text.parse::<continuum_core::ConversationState>();
        let _ = continuum_store::Timestamp::parse_rfc3339(text);
    }
});
