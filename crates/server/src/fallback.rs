//! PSTN fallback: when a patient's video fails (their media stalls, or
//! quality stays degraded), or a clinician asks, Continuum calls the phone
//! bound to the patient's contact through the tenant's outbound trunk, into
//! the same room. The conversation, its assignee and its timeline carry on:
//! the timeline gets `call.failed` (video, with the reason) and
//! `channel.switched` video→voice at once, then the call's own
//! `call.started` / `call.ended`; staff in the room get the context snapshot
//! over signaling (`patient_on_phone`).
//!
//! Triggers come from the media glue over a channel, so neither side waits
//! for the other; one fallback per conversation at a time.

use crate::lobby::{Lobby, LobbyNotice, RoomKey};
use crate::voice::{DialRequest, VoiceService};
use continuum_core::{Actor, Channel, EventKind, NewEvent};
use continuum_store::{Call, Store};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Why a fallback starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Nothing arrives from the patient's device (browser or network gone).
    MediaStalled,
    /// The patient's signaling connection dropped and did not come back
    /// within `rtc.resume_grace_secs`.
    SignalingLost,
    /// Nothing ever arrived from the patient's device after it joined
    /// (`rtc.connect_timeout_secs`): ICE or DTLS never got through.
    ConnectFailed,
    /// The patient's quality stayed degraded this long.
    Degraded { held_secs: u64 },
    /// A clinician pressed "Call the patient's phone" (or the API was called).
    Requested { by: String },
    /// Not a reason to call: the degraded quality recovered.
    Recovered,
}

impl Reason {
    fn as_str(&self) -> &'static str {
        match self {
            Reason::MediaStalled => "media_stalled",
            Reason::SignalingLost => "signaling_lost",
            Reason::ConnectFailed => "media_never_connected",
            Reason::Degraded { .. } => "quality_degraded",
            Reason::Requested { .. } => "requested",
            Reason::Recovered => "recovered",
        }
    }

    fn automatic(&self) -> bool {
        !matches!(self, Reason::Requested { .. })
    }
}

/// A trigger from the media glue, about one participant (a patient).
#[derive(Debug, Clone)]
pub struct Trigger {
    pub room: RoomKey,
    pub conversation_id: String,
    pub participant: String,
    pub reason: Reason,
}

/// Why a fallback did not dial (each says what to fix).
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("a call to the patient's phone is already being placed for this conversation")]
    InProgress,
    #[error("the patient has no phone number: add one to their contact (bindings.phone)")]
    NoPhone,
    #[error("this node runs no SIP gateway (sip.enabled = false)")]
    NoGateway,
    #[error("{0}")]
    Dial(String),
    /// The tenant's setup is missing something (an outbound trunk).
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] continuum_store::StoreError),
}

pub struct Fallback {
    store: Store,
    lobby: Lobby,
    voice: Option<Arc<VoiceService>>,
    /// Conversations with a fallback under way, until when.
    in_flight: Mutex<HashMap<(String, String), Instant>>,
    /// Patients whose quality is degraded now (by room and participant), since when.
    degraded: Mutex<HashMap<(RoomKey, String), Instant>>,
    hold: Duration,
    /// Texts the patient a link back when the call fails.
    handoffs: Arc<crate::handoff::Handoffs>,
}

/// The sending side the media glue holds.
pub type Triggers = mpsc::UnboundedSender<Trigger>;

impl Fallback {
    pub fn new(
        store: Store,
        lobby: Lobby,
        voice: Option<Arc<VoiceService>>,
        ring_timeout: Duration,
        handoffs: Arc<crate::handoff::Handoffs>,
    ) -> Arc<Self> {
        Arc::new(Fallback {
            handoffs,
            store,
            lobby,
            voice,
            in_flight: Mutex::new(HashMap::new()),
            degraded: Mutex::new(HashMap::new()),
            // Long enough for the call to ring out and be answered.
            hold: ring_timeout + Duration::from_secs(30),
        })
    }

    /// Serves the media glue's triggers.
    pub fn serve(self: &Arc<Self>, mut triggers: mpsc::UnboundedReceiver<Trigger>) {
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(t) = triggers.recv().await {
                let this = this.clone();
                let key = (t.room.clone(), t.participant.clone());
                match t.reason {
                    Reason::Recovered => {
                        this.degraded.lock().remove(&key);
                    }
                    Reason::Degraded { held_secs } => {
                        this.degraded.lock().insert(key.clone(), Instant::now());
                        tokio::spawn(
                            async move { this.when_still_degraded(t, key, held_secs).await },
                        );
                    }
                    reason => {
                        tokio::spawn(async move {
                            if let Err(e) = this
                                .start(&t.room, &t.conversation_id, Some(&t.participant), reason)
                                .await
                            {
                                tracing::info!(error = %e, "no PSTN fallback");
                            }
                        });
                    }
                }
            }
        });
    }

    /// Quality degraded for `held_secs` already: falls back once it has been
    /// for the tenant's `degraded_secs`, unless it recovers first.
    async fn when_still_degraded(&self, t: Trigger, key: (RoomKey, String), held_secs: u64) {
        let Ok(settings) = self.store.visit_settings(&t.room.tenant_id).await else {
            return;
        };
        let wanted = settings.fallback.degraded_secs as u64;
        if wanted == 0 {
            return;
        }
        if wanted > held_secs {
            tokio::time::sleep(Duration::from_secs(wanted - held_secs)).await;
        }
        if !self.degraded.lock().contains_key(&key) {
            return; // it recovered
        }
        let reason = Reason::Degraded {
            held_secs: held_secs.max(wanted),
        };
        if let Err(e) = self
            .start(&t.room, &t.conversation_id, Some(&t.participant), reason)
            .await
        {
            tracing::info!(error = %e, "no PSTN fallback");
        }
    }

    /// Starts a fallback: records the switch, dials the patient, tells staff.
    /// `participant`: the patient's seat whose video failed, if known (pages
    /// mark its tile).
    pub async fn start(
        &self,
        room: &RoomKey,
        conversation_id: &str,
        participant: Option<&str>,
        reason: Reason,
    ) -> Result<Call, FallbackError> {
        let tenant = room.tenant_id.as_str();
        if reason.automatic() {
            let policy = self.store.visit_settings(tenant).await?.fallback;
            let wanted = policy.automatic
                && match &reason {
                    Reason::MediaStalled | Reason::SignalingLost | Reason::ConnectFailed => {
                        policy.on_media_failure
                    }
                    Reason::Degraded { held_secs } => {
                        policy.degraded_secs > 0 && *held_secs >= policy.degraded_secs as u64
                    }
                    Reason::Requested { .. } => true,
                    Reason::Recovered => false,
                };
            if !wanted {
                return Err(FallbackError::Dial(
                    "the tenant's fallback policy does not ask for it".into(),
                ));
            }
        }
        let key = (tenant.to_owned(), conversation_id.to_owned());
        {
            let mut in_flight = self.in_flight.lock();
            let now = Instant::now();
            in_flight.retain(|_, until| *until > now);
            if in_flight.contains_key(&key) {
                return Err(FallbackError::InProgress);
            }
            in_flight.insert(key.clone(), now + self.hold);
        }
        let result = self.dial(room, conversation_id, participant, &reason).await;
        if result.is_err() {
            self.in_flight.lock().remove(&key);
        }
        result
    }

    async fn dial(
        &self,
        room: &RoomKey,
        conversation_id: &str,
        participant: Option<&str>,
        reason: &Reason,
    ) -> Result<Call, FallbackError> {
        let tenant = room.tenant_id.as_str();
        let voice = self.voice.clone().ok_or(FallbackError::NoGateway)?;
        // A tenant with no way to call out is a setup problem, said to the
        // caller (or the log): nothing goes on the timeline for it.
        if let Err(e) = voice.outbound_trunk(tenant, None).await {
            return Err(match e {
                crate::voice::DialError::Invalid(m) => FallbackError::Setup(m),
                other => FallbackError::Dial(other.to_string()),
            });
        }
        let conversation = self.store.get_conversation(tenant, conversation_id).await?;
        let contact = self
            .store
            .get_contact(tenant, &conversation.contact_id, "system:fallback")
            .await?;
        let Some(phone) = contact.bindings.phone.clone() else {
            self.append(
                tenant,
                conversation_id,
                Channel::Voice,
                EventKind::CallFailed,
                serde_json::json!({
                    "session_id": room.room_id, "reason": "no_phone_number", "fallback": true,
                }),
            )
            .await;
            return Err(FallbackError::NoPhone);
        };
        // The switch first: whoever reads the timeline sees why the phone rings.
        let mut failed = serde_json::json!({"session_id": room.room_id, "reason": reason.as_str(), "fallback": true});
        if let Reason::Degraded { held_secs } = reason {
            failed["held_secs"] = serde_json::json!(held_secs);
        }
        self.append(
            tenant,
            conversation_id,
            Channel::Video,
            EventKind::CallFailed,
            failed,
        )
        .await;
        let mut switched = serde_json::json!({"from": "video", "to": "voice", "reason": reason.as_str(), "session_id": room.room_id});
        if let Reason::Requested { by } = reason {
            switched["requested_by"] = serde_json::json!(by);
        }
        self.append(
            tenant,
            conversation_id,
            Channel::Voice,
            EventKind::ChannelSwitched,
            switched,
        )
        .await;
        let dial = DialRequest {
            conversation_id: conversation_id.to_owned(),
            to: phone,
            trunk_id: None,
            room_id: Some(room.room_id.clone()),
        };
        // Subscribed before dialling: the call's outcome cannot slip past.
        let outcomes = self.store.subscribe();
        let call = match voice.dial(tenant, dial).await {
            Ok(call) => call,
            Err(crate::voice::DialError::Invalid(m)) => return Err(FallbackError::Setup(m)),
            Err(e) => {
                self.append(tenant, conversation_id, Channel::Voice, EventKind::CallFailed, serde_json::json!({
                    "session_id": room.room_id, "reason": "dial_failed", "detail": e.to_string(), "fallback": true,
                }))
                .await;
                self.text_after_failed_call(tenant, conversation_id, &room.room_id, "dial_failed")
                    .await;
                return Err(FallbackError::Dial(e.to_string()));
            }
        };
        {
            let (this, tenant, conv, room_id, call_id) = (
                self.handoffs.clone(),
                tenant.to_owned(),
                conversation_id.to_owned(),
                room.room_id.clone(),
                call.id.clone(),
            );
            let store = self.store.clone();
            let wait = self.hold;
            tokio::spawn(async move {
                if let Some(reason) = call_outcome(outcomes, &tenant, &conv, &call_id, wait).await {
                    text_after(&store, &this, &tenant, &conv, &room_id, &reason).await;
                }
            });
        }
        // Staff in the room: what was just discussed, beside the news.
        let context = self
            .store
            .context(tenant, conversation_id, 20, "system:fallback")
            .await
            .ok()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or(serde_json::Value::Null);
        let details = serde_json::json!({
            "reason": reason.as_str(),
            "participant": participant,
            "call": call,
            "context": context,
        });
        self.lobby
            .announce(room, LobbyNotice::MovedToPhone(Arc::new(details)));
        Ok(call)
    }

    async fn text_after_failed_call(
        &self,
        tenant: &str,
        conversation_id: &str,
        room_id: &str,
        reason: &str,
    ) {
        text_after(
            &self.store,
            &self.handoffs,
            tenant,
            conversation_id,
            room_id,
            reason,
        )
        .await;
    }

    async fn append(
        &self,
        tenant: &str,
        conversation_id: &str,
        channel: Channel,
        kind: EventKind,
        meta: serde_json::Value,
    ) {
        let ev = NewEvent {
            channel,
            kind,
            actor: Actor::system(),
            body: None,
            meta: meta.as_object().cloned().unwrap_or_default(),
            idempotency_key: None,
        };
        if let Err(e) = self
            .store
            .append_event(tenant, conversation_id, ev, "system:fallback")
            .await
        {
            tracing::warn!(error = %e, "could not record the fallback on the timeline");
        }
    }
}

/// Waits for the fallback call's fate: `Some(reason)` if it failed (no
/// answer, busy, rejected), `None` once it is answered or after `wait`.
async fn call_outcome(
    mut events: tokio::sync::broadcast::Receiver<Arc<continuum_store::Event>>,
    tenant: &str,
    conversation_id: &str,
    call_id: &str,
    wait: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let e = match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return None,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) => return None,
            Ok(Ok(e)) => e,
        };
        if e.tenant_id != tenant
            || e.conversation_id != conversation_id
            || e.meta.get("session_id").and_then(|v| v.as_str()) != Some(call_id)
        {
            continue;
        }
        match e.kind {
            EventKind::CallStarted => return None,
            EventKind::CallFailed => {
                return Some(
                    e.meta
                        .get("reason")
                        .and_then(|v| v.as_str())
                        .unwrap_or("failed")
                        .to_owned(),
                );
            }
            EventKind::CallEnded => return None,
            _ => {}
        }
    }
}

/// The tenant's policy permitting, texts the patient a link back into the visit.
async fn text_after(
    store: &Store,
    handoffs: &crate::handoff::Handoffs,
    tenant: &str,
    conversation_id: &str,
    room_id: &str,
    reason: &str,
) {
    match store.visit_settings(tenant).await {
        Ok(s) if s.fallback.text_on_failure => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the fallback policy");
            return;
        }
    }
    let sent = handoffs
        .send_visit_link(
            tenant,
            conversation_id,
            Some(room_id.to_owned()),
            None,
            None,
            crate::handoff::HandoffKind::AfterFailedCall,
            Duration::from_secs(3600),
            Actor::system(),
            "system:fallback",
        )
        .await;
    match sent {
        Ok(_) => tracing::info!(
            reason,
            "fallback call failed: texted the patient a link back"
        ),
        Err(e) => {
            tracing::info!(reason, error = %e.message, "fallback call failed and no text could be sent")
        }
    }
}
