//! The development front page: one click creates a demo visit in the `dev`
//! tenant so a newcomer can try a call in two tabs. Only routed when the
//! server listens on loopback (see `app::build`).

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use continuum_core::{Grants, Role};
use continuum_store::{ContactInput, NewConversation};
use serde_json::{Value, json};
use std::time::Duration;

pub async fn index() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../../web/index.html"))
}

pub async fn demo_visit(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let tenant = s
        .store
        .find_tenant("dev")
        .await
        .map_err(|_| ApiError::not_found("the `dev` tenant (start on an empty data dir, or create it: `continuum tenant create dev`)"))?;
    let actor = "system:dev-demo";
    let contact = s
        .store
        .create_contact(
            &tenant.id,
            ContactInput {
                display_name: Some("Demo Patient".into()),
                ..Default::default()
            },
            actor,
        )
        .await?;
    let conv = s
        .store
        .create_conversation(
            &tenant.id,
            NewConversation {
                contact_id: contact.id,
                subject: Some("Demo visit".into()),
                queue: None,
                tags: vec!["demo".into()],
            },
            actor,
        )
        .await?;
    let room = s
        .store
        .create_room(
            &tenant.id,
            &conv.id,
            s.config.rtc.max_participants_per_room as i64,
            actor,
        )
        .await?;
    let grants = Grants {
        conversations: vec![conv.id.clone()],
        rooms: vec![room.id.clone()],
    };
    let hour = Duration::from_secs(s.config.security.token_max_ttl_secs.min(3600));
    let (clinician, _) = s.tokens.mint(
        &tenant.id,
        "demo-clinician",
        Role::Clinician,
        grants.clone(),
        crate::auth::About {
            name: Some("Dr. Demo".into()),
            region: None,
        },
        hour,
    );
    let (patient, _) = s.tokens.mint(
        &tenant.id,
        "demo-patient",
        Role::Patient,
        grants,
        crate::auth::About {
            name: Some("Demo Patient".into()),
            region: None,
        },
        hour,
    );
    let url = |token: &str| {
        format!(
            "/visit?token={token}&room={}&conversation={}",
            room.id, conv.id
        )
    };
    Ok(Json(json!({
        "conversation_id": conv.id,
        "room_id": room.id,
        "clinician_url": url(&clinician),
        "patient_url": url(&patient),
    })))
}
