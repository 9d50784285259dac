//! The OpenAPI document: the annotations on each handler, plus what every
//! operation shares, added here in one place so no operation forgets it:
//! 401 and 429 on every secured operation, 403 where a role can be refused,
//! 400/413/415/422 where a JSON body is read, 400 where query parameters are,
//! 404 where a path names an object.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Header, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, PartialSchema};

/// Security schemes: the header everywhere, a query token where browsers
/// cannot set headers.
pub struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A tenant API key (`ck_...`) or an access token from POST /v1/tokens",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "signalingToken",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "An access token with a room grant (browsers cannot set headers on WebSockets); never an API key",
            ))),
        );
        components.add_security_scheme(
            "streamToken",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "An access token (EventSource cannot set headers); never an API key",
            ))),
        );
    }
}

/// Operations whose handlers never refuse by role (ownership is checked
/// instead, answering 404).
const NO_ROLE_CHECK: &[&str] = &["endMediaSession", "trickleMediaSession", "revokeToken"];
/// Operations that read a JSON body without requiring its content type.
const LENIENT_BODY: &[&str] = &[
    "enqueueConversation",
    "assignConversation",
    "closeConversation",
    "reopenConversation",
];

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
}

fn too_many() -> RefOr<Response> {
    let mut r = ResponseBuilder::new()
        .description("rate limited: too many requests from this source or credential")
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build();
    let mut h = Header::new(u64::schema());
    h.description = Some("seconds to wait before retrying".into());
    r.headers.insert("Retry-After".into(), h);
    r.into()
}

/// Adds the responses every operation of a kind shares.
pub struct StandardResponses;

impl Modify for StandardResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                standard(path, op);
            }
        }
    }
}

fn standard(path: &str, op: &mut Operation) {
    let id = op.operation_id.clone().unwrap_or_default();
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, r: RefOr<Response>| {
        responses.entry(status.to_owned()).or_insert(r);
    };
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add(
            "401",
            error("missing, malformed, expired or revoked credentials (or an API key in a URL)"),
        );
        add("429", too_many());
        if !NO_ROLE_CHECK.contains(&id.as_str()) {
            add(
                "403",
                error("this credential's role or grants do not allow it"),
            );
        }
    }
    if path.contains('{') {
        add(
            "404",
            error("no such object in this tenant, or outside the credential's grants"),
        );
    }
    let json_body = op
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    if json_body {
        add("400", error("the body is not well-formed JSON"));
        add(
            "413",
            error("the body is larger than server.max_body_bytes"),
        );
        if !LENIENT_BODY.contains(&id.as_str()) {
            add(
                "415",
                error("the body is not sent as `Content-Type: application/json`"),
            );
        }
        add(
            "422",
            error("a field is missing, unknown or invalid (the message names it)"),
        );
    }
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    if has_query {
        add(
            "400",
            error("a query parameter has the wrong type or an unknown value"),
        );
    }
}

/// The event kinds a client may append (the rest are written by the engine).
pub fn appendable_event_kinds() -> utoipa::openapi::schema::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "What happened; the kinds the engine writes itself (`state.changed`, `assigned`) are refused",
        ))
        .enum_values(Some(
            continuum_core::EventKind::ALL
                .iter()
                .filter(|k| !k.is_system_only())
                .map(|k| k.as_str()),
        ))
        .build()
}
