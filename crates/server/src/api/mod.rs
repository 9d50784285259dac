//! The REST API under `/v1`, with its OpenAPI document generated from the
//! handlers' annotations.

pub mod access;
pub mod attachments;
pub mod audit;
pub mod chat;
pub mod contacts;
pub mod conversations;
pub mod doc;
pub mod inbox;
pub mod ivr;
pub mod messaging;
pub mod provider_hooks;
pub mod queues;
pub mod reminders;
pub mod rtc;
pub mod signal;
pub mod timeline;
pub mod visits;
pub mod voice;
pub mod webhooks;
pub mod whip;
pub mod work;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::Router;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Continuum API", description = "Self-hosted real-time patient communication: one continuous, encrypted, audited conversation per patient across every channel. Errors are `{\"error\": {\"code\", \"message\"}}`; the message names the field and the reason."),
    modifiers(&Security),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "access", description = "Access tokens, API keys, staff"),
        (name = "contacts", description = "Patients and their channel bindings"),
        (name = "conversations", description = "Conversations and their lifecycle"),
        (name = "timeline", description = "Events from every channel, live streams and the context snapshot"),
        (name = "audit", description = "The tamper-evident audit chain"),
        (name = "webhooks", description = "Signed outbound webhooks"),
        (name = "video", description = "Video rooms (media sessions of a conversation) and WebRTC signaling"),
        (name = "voice", description = "SIP trunks, dispatch rules and phone calls (dial-out, PSTN fallback)"),
        (name = "queues", description = "Queues, agents, reservations and tasks: the routing engine"),
        (name = "ivr", description = "IVR flows (YAML) and TwiML webhooks"),
        (name = "console", description = "The staff console: who am I, the inbox (live)"),
        (name = "attachments", description = "Store-and-forward: uploads (sniffed, metadata stripped, sealed), audited downloads, the review queue"),
        (name = "chat", description = "Secure chat on a conversation: the chat WebSocket, the chat view of the timeline, receipts and typing"),
        (name = "messaging", description = "SMS and WhatsApp: providers (the failover chain), outbound messages and their delivery, provider webhooks"),
        (name = "reminders", description = "Appointment reminders: settings (quiet hours), templates, appointments and bulk imports"),
    )
)]
struct ApiDoc;

use doc::Security;

/// The API routes and the OpenAPI document describing them.
pub fn router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(access::mint_token))
        .routes(routes!(access::revoke_token))
        .routes(routes!(access::create_key, access::list_keys))
        .routes(routes!(access::revoke_key))
        .routes(routes!(access::create_staff, access::list_staff))
        .routes(routes!(contacts::create, contacts::list))
        .routes(routes!(contacts::get, contacts::update))
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(conversations::get))
        .routes(routes!(conversations::enqueue))
        .routes(routes!(conversations::assign))
        .routes(routes!(conversations::close))
        .routes(routes!(conversations::reopen))
        .routes(routes!(timeline::append, timeline::page))
        .routes(routes!(timeline::stream))
        .routes(routes!(timeline::context))
        .routes(routes!(chat::socket))
        .routes(routes!(chat::messages))
        .routes(routes!(chat::receipts, chat::mark_receipt))
        .routes(routes!(chat::typing))
        .routes(routes!(audit::list))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(rtc::create_room))
        .routes(routes!(visits::get_settings, visits::set_settings))
        .routes(routes!(visits::get_room))
        .routes(routes!(visits::end_room))
        .routes(routes!(visits::link_help))
        .routes(routes!(rtc::signaling))
        .routes(routes!(whip::whip))
        .routes(routes!(whip::whep))
        .routes(routes!(whip::end, whip::trickle))
        .routes(routes!(voice::create_trunk, voice::list_trunks))
        .routes(routes!(voice::get_trunk, voice::delete_trunk))
        .routes(routes!(
            voice::create_dispatch_rule,
            voice::list_dispatch_rules
        ))
        .routes(routes!(voice::delete_dispatch_rule))
        .routes(routes!(voice::get_call))
        .routes(routes!(voice::create_call))
        .routes(routes!(voice::hangup_call))
        .routes(routes!(voice::send_dtmf))
        .routes(routes!(voice::hold_call))
        .routes(routes!(voice::transfer_call))
        .routes(routes!(voice::start_fallback))
        .routes(routes!(voice::list_calls))
        .routes(routes!(
            messaging::create_provider,
            messaging::list_providers
        ))
        .routes(routes!(messaging::delete_provider))
        .routes(routes!(messaging::send, messaging::list))
        .routes(routes!(messaging::get))
        .routes(routes!(messaging::send_visit_link))
        .routes(routes!(attachments::upload))
        .routes(routes!(attachments::list))
        .routes(routes!(attachments::get))
        .routes(routes!(attachments::download))
        .routes(routes!(attachments::review))
        .routes(routes!(reminders::get_settings, reminders::set_settings))
        .routes(routes!(
            reminders::create_template,
            reminders::list_templates
        ))
        .routes(routes!(
            reminders::get_template,
            reminders::replace_template,
            reminders::delete_template
        ))
        .routes(routes!(
            reminders::create_appointment,
            reminders::list_appointments
        ))
        .routes(routes!(
            reminders::get_appointment,
            reminders::update_appointment
        ))
        .routes(routes!(reminders::import))
        .routes(routes!(queues::list_queues))
        .routes(routes!(
            queues::put_queue,
            queues::get_queue,
            queues::delete_queue
        ))
        .routes(routes!(queues::list_agents))
        .routes(routes!(queues::put_agent, queues::delete_agent))
        .routes(routes!(ivr::list_flows))
        .routes(routes!(ivr::put_flow, ivr::get_flow, ivr::delete_flow))
        .routes(routes!(ivr::check_flow))
        .routes(routes!(ivr::list_calendars))
        .routes(routes!(
            ivr::put_calendar,
            ivr::get_calendar,
            ivr::delete_calendar
        ))
        .routes(routes!(ivr::signing_key))
        .routes(routes!(work::get_me))
        .routes(routes!(work::set_state))
        .routes(routes!(work::events))
        .routes(routes!(work::accept))
        .routes(routes!(work::reject))
        .routes(routes!(work::create_task))
        .routes(routes!(work::get_task))
        .routes(routes!(work::complete_task))
        .routes(routes!(work::transfer_task))
        .routes(routes!(work::get_stats))
        .routes(routes!(work::stream_stats))
        .routes(routes!(inbox::me))
        .routes(routes!(inbox::inbox))
        .routes(routes!(inbox::stream))
        .routes(routes!(provider_hooks::twilio_webhook))
        .routes(routes!(
            provider_hooks::meta_verify,
            provider_hooks::meta_webhook
        ))
        .split_for_parts();
    let (router, mut doc) = (router, doc);
    doc::StandardResponses.modify(&mut doc);
    (router, doc)
}

/// Validates a `limit` query parameter.
pub(crate) fn limit(asked: Option<usize>, default: usize, max: usize) -> ApiResult<usize> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(format!(
            "limit {n} is out of range 1..={max}"
        ))),
    }
}

/// Validates a `cursor` that is an object id (as list endpoints hand out in
/// `next_cursor`): a UUID, or a clear error rather than a silent full list.
pub(crate) fn id_cursor(cursor: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(cursor)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            ApiError::invalid(
                "cursor is not a cursor this endpoint handed out: pass `next_cursor` from the previous page unchanged",
            )
        })
}

/// Staff and participant identities: 1..=128 of letters, digits and
/// `. _ : @ + -` (ids and e-mail addresses; never free text).
pub(crate) fn check_identity(field: &str, v: &str) -> ApiResult<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be 1..=128 letters, digits and . _ : @ + -"
        )))
    }
}
