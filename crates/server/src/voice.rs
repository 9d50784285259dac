//! Glue between the voice gateway (`continuum_voice::io`, which runs SIP and
//! call media) and conversations: `[sip]` settings to the host's, incoming
//! calls routed by trunk and dispatch rule to a conversation, dial-out for
//! the API, and call events onto the timeline and the call records.

use crate::config::SipConfig;
use continuum_core::{
    Actor, ActorType, BindingKind, Channel, EventKind, NewEvent, normalize_phone,
};
use continuum_store::{
    CallDirection, CallState, DispatchAction, NewCall, SipTransport, Store, Timestamp, TrunkSpec,
    TrunkStatus, TrunkWithSecret,
};
use continuum_voice::io::{Decision, DialTarget, HostConfig, KeepaliveTarget, Outcome, Voice};
use continuum_voice::{
    CallEvent, CallId, GatewayConfig, Incoming, MediaEncryption, TransportKind, TrunkCheck,
    TrunkProbe,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the gateway carries for each call: where its events go.
#[derive(Debug, Clone)]
pub struct CallTag {
    pub tenant_id: String,
    /// The call record's id.
    pub call_id: String,
    pub conversation_id: String,
    pub direction: CallDirection,
    /// The video room the call joins once answered.
    pub room: Option<crate::lobby::RoomKey>,
    /// The other party (a number or URI), for the room's roster.
    pub remote: String,
    /// A dial-in waiting for its room's PIN (DTMF): no call record until
    /// the PIN names a room (`call_id` is provisional until then).
    pub awaiting_pin: bool,
    /// A call bridged to a dispatch rule's target (B2BUA): the target's
    /// name, noted on the call's timeline events.
    pub bridged_to: Option<String>,
    /// A call the IVR answers (a flow or a TwiML webhook drives it).
    pub ivr: Option<crate::ivr::IvrCall>,
}

/// Digits in a room's dial-in PIN, and wrong PINs before hanging up.
const PIN_DIGITS: usize = 6;
const PIN_ATTEMPTS: u32 = 3;

/// The running gateway and the calls it has up, by call record id.
pub struct VoiceService {
    pub voice: Voice<CallTag>,
    active: Mutex<HashMap<String, CallId>>,
    /// The SFU on this node, for calls in video rooms.
    media: Option<crate::media::Media>,
    /// Calls in a room: their participant there, by call record id.
    in_rooms: Mutex<HashMap<String, continuum_sfu::ParticipantId>>,
    store: Store,
    cfg: SipConfig,
    /// What the OPTIONS keepalive says of each outbound trunk, by trunk id.
    health: Mutex<HashMap<String, TrunkHealth>>,
    /// Wakes the keepalive refresh (a trunk was added or removed).
    trunks_changed: tokio::sync::Notify,
    /// Runs IVR flows on answered calls (set once the server is wired).
    ivr: std::sync::OnceLock<Arc<crate::ivr::IvrHost>>,
}

/// An outbound trunk's keepalive state, for the API and dial-out.
#[derive(Debug, Clone)]
pub struct TrunkHealth {
    pub tenant_id: String,
    pub status: TrunkStatus,
    pub last_checked: Option<Timestamp>,
}

/// Why a dial-out was refused (each names the fix).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] continuum_store::StoreError),
}

/// Where to call.
pub struct DialRequest {
    pub conversation_id: String,
    /// An E.164 number (through an outbound trunk) or a `sip:` URI (direct).
    pub to: String,
    pub trunk_id: Option<String>,
    pub room_id: Option<String>,
}

impl VoiceService {
    pub async fn start(
        cfg: &SipConfig,
        store: Store,
        nonce_key: [u8; 32],
        media: Option<crate::media::Media>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut sip = continuum_sip::Config::new("continuum", Vec::new());
        sip.realm = Some("continuum".into());
        sip.nonce_key = nonce_key;
        let tls_listen = match (cfg.tls_listen, &cfg.tls_cert, &cfg.tls_key) {
            (None, _, _) => None,
            (Some(addr), Some(cert), Some(key)) => {
                Some((addr, continuum_voice::io::tls_server_config(cert, key)?))
            }
            (Some(_), _, _) => anyhow::bail!(
                "sip.tls_listen needs sip.tls_cert and sip.tls_key (PEM files): set them, or unset sip.tls_listen"
            ),
        };
        let tls_client = continuum_voice::io::tls_client_config(cfg.tls_ca.as_deref())?;
        let keepalive =
            (cfg.trunk_keepalive_secs > 0).then(|| Duration::from_secs(cfg.trunk_keepalive_secs));
        let host = HostConfig {
            gateway: GatewayConfig {
                sip,
                ring_timeout: Duration::from_secs(cfg.ring_timeout_secs),
                media_timeout: Duration::from_secs(cfg.media_timeout_secs),
                trunk_keepalive: keepalive,
            },
            udp_listen: cfg.udp_listen,
            tcp_listen: cfg.tcp_listen,
            tls_listen,
            tls_client: Some(tls_client),
            public_ip: cfg.public_ip,
            rtp_ports: cfg.rtp_port_min..=cfg.rtp_port_max,
        };
        let (voice, outcomes) = Voice::start(host).await?;
        tracing::info!(udp = ?voice.udp_addr, tcp = ?voice.tcp_addr, tls = ?voice.tls_addr, "SIP gateway listening");
        let service = Arc::new(VoiceService {
            voice,
            active: Mutex::new(HashMap::new()),
            media,
            in_rooms: Mutex::new(HashMap::new()),
            store,
            cfg: cfg.clone(),
            health: Mutex::new(HashMap::new()),
            trunks_changed: tokio::sync::Notify::new(),
            ivr: std::sync::OnceLock::new(),
        });
        tokio::spawn(service.clone().run(outcomes));
        if let Some(every) = keepalive {
            tokio::spawn(service.clone().keep_trunks_alive(every));
        }
        Ok(service)
    }

    /// Tells the gateway which outbound trunks to probe: all of them, every
    /// keepalive interval (addresses may move in DNS) and whenever one is
    /// added or removed.
    async fn keep_trunks_alive(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.trunks_changed.notified() => {}
            }
            if let Err(e) = self.refresh_trunks().await {
                tracing::warn!(error = %e, "could not list the outbound trunks for their keepalive");
            }
        }
    }

    /// A trunk was added or removed: probe the new set now.
    pub fn trunks_changed(&self) {
        self.trunks_changed.notify_one();
    }

    async fn refresh_trunks(&self) -> Result<(), continuum_store::StoreError> {
        let trunks = self.store.all_outbound_trunks().await?;
        let mut targets = Vec::with_capacity(trunks.len());
        let mut tenants = HashMap::with_capacity(trunks.len());
        for (tenant, trunk) in trunks {
            let TrunkSpec::Outbound {
                address, transport, ..
            } = &trunk.spec
            else {
                continue;
            };
            tenants.insert(trunk.id.clone(), tenant);
            let kind = transport_kind(*transport);
            match self.resolve(address, kind).await {
                Ok(destination) => targets.push(KeepaliveTarget {
                    probe: TrunkProbe {
                        trunk: trunk.id.clone(),
                        destination,
                        transport: kind,
                    },
                    server_name: tls_name(address),
                }),
                // Unresolvable now: not probed (its status stays as it was).
                Err(e) => {
                    tracing::debug!(trunk = %trunk.id, error = %e, "no keepalive for a trunk")
                }
            }
        }
        {
            let mut health = self.health.lock();
            health.retain(|id, _| tenants.contains_key(id));
            for (id, tenant_id) in tenants {
                health.entry(id).or_insert(TrunkHealth {
                    tenant_id,
                    status: TrunkStatus::Unknown,
                    last_checked: None,
                });
            }
        }
        let _ = self.voice.set_trunks(targets);
        Ok(())
    }

    /// A keepalive result: the trunks' status, their gauge, a log line on change.
    fn trunk_checked(&self, check: TrunkCheck) {
        let status = match check.status {
            continuum_voice::TrunkStatus::Up => TrunkStatus::Up,
            continuum_voice::TrunkStatus::Down => TrunkStatus::Down,
            continuum_voice::TrunkStatus::Unknown => TrunkStatus::Unknown,
        };
        // The core's clock is monotonic; the API's is the wall clock.
        let at = SystemTime::now()
            .checked_sub(Instant::now().saturating_duration_since(check.checked_at))
            .unwrap_or_else(SystemTime::now);
        let micros = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut health = self.health.lock();
        for trunk in &check.trunks {
            let Some(h) = health.get_mut(trunk) else {
                continue; // removed meanwhile
            };
            let before = h.status;
            h.status = status;
            h.last_checked = Some(Timestamp(micros));
            if status != TrunkStatus::Unknown {
                let up = if status == TrunkStatus::Up { 1.0 } else { 0.0 };
                metrics::gauge!("continuum_sip_trunk_up", "tenant" => h.tenant_id.clone(), "trunk" => trunk.clone())
                    .set(up);
            }
            if before != status && status != TrunkStatus::Unknown {
                tracing::info!(tenant = %h.tenant_id, trunk = %trunk, status = check.status.as_str(),
                    sip_status = ?check.sip_status, "SIP trunk {}", check.status.as_str());
            }
        }
    }

    /// An outbound trunk's keepalive status and when it was last checked.
    pub fn trunk_health(&self, trunk_id: &str) -> (TrunkStatus, Option<Timestamp>) {
        self.health
            .lock()
            .get(trunk_id)
            .map_or((TrunkStatus::Unknown, None), |h| (h.status, h.last_checked))
    }

    async fn run(
        self: Arc<Self>,
        mut outcomes: tokio::sync::mpsc::UnboundedReceiver<Outcome<CallTag>>,
    ) {
        // Each call's events are recorded in order by a task of its own, so
        // calls do not wait for each other's durable writes.
        let mut recorders: HashMap<String, tokio::sync::mpsc::UnboundedSender<CallEvent>> =
            HashMap::new();
        while let Some(outcome) = outcomes.recv().await {
            match outcome {
                Outcome::Trunk(check) => self.trunk_checked(check),
                Outcome::Incoming { call, reply } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let id = call.call;
                        let (decision, tag) = this.route(call).await;
                        if let Some(tag) = &tag {
                            this.active.lock().insert(tag.call_id.clone(), id);
                        }
                        let _ = reply.send((decision, tag));
                    });
                }
                Outcome::Event { tag, event } => {
                    let last = matches!(event, CallEvent::Failed { .. } | CallEvent::Ended { .. });
                    let tx = recorders.entry(tag.call_id.clone()).or_insert_with(|| {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        let (this, mut tag) = (self.clone(), tag.clone());
                        tokio::spawn(async move {
                            let mut answered_at = None;
                            let (mut digits, mut attempts) = (String::new(), 0u32);
                            let mut ivr: Option<tokio::sync::mpsc::UnboundedSender<CallEvent>> = None;
                            while let Some(event) = rx.recv().await {
                                // The IVR hears digits, the end of its prompts and
                                // recordings, and the end of the call.
                                if let Some(tx) = &ivr
                                    && matches!(
                                        event,
                                        CallEvent::Dtmf { .. }
                                            | CallEvent::PlaybackFinished { .. }
                                            | CallEvent::Recorded { .. }
                                            | CallEvent::Ended { .. }
                                            | CallEvent::Failed { .. }
                                    )
                                {
                                    let _ = tx.send(event.clone());
                                }
                                if tag.awaiting_pin {
                                    match &event {
                                        // Digits after the last wrong PIN (the
                                        // hang-up is on its way) look nothing up:
                                        // a DTMF storm costs at most PIN_ATTEMPTS lookups.
                                        CallEvent::Dtmf { digit, .. }
                                            if digit.is_ascii_digit()
                                                && attempts < PIN_ATTEMPTS =>
                                        {
                                            digits.push(*digit);
                                            if digits.len() == PIN_DIGITS {
                                                attempts += 1;
                                                let pin = std::mem::take(&mut digits);
                                                if this.join_by_pin(&mut tag, &pin).await {
                                                    answered_at = Some(Instant::now());
                                                } else if attempts >= PIN_ATTEMPTS
                                                    && let Some(call) = this.active(&tag.call_id)
                                                {
                                                    let _ = this.voice.hangup(call).await;
                                                }
                                            }
                                        }
                                        // `#` or `*` starts the PIN over.
                                        CallEvent::Dtmf { .. } => digits.clear(),
                                        CallEvent::Failed { .. } | CallEvent::Ended { .. } => {
                                            this.active.lock().remove(&tag.call_id);
                                            metrics::counter!(
                                                "continuum_sip_pin_calls_unmatched_total"
                                            )
                                            .increment(1);
                                        }
                                        _ => {}
                                    }
                                    continue;
                                }
                                let answered = matches!(event, CallEvent::Answered { .. })
                                    && answered_at.is_none();
                                let last = matches!(
                                    event,
                                    CallEvent::Failed { .. } | CallEvent::Ended { .. }
                                );
                                let call = match &event {
                                    CallEvent::Answered { call } => Some(*call),
                                    _ => None,
                                };
                                this.record(&tag, event, &mut answered_at).await;
                                if answered
                                    && let (Some(spec), Some(host), Some(call)) =
                                        (tag.ivr.clone(), this.ivr.get(), call)
                                {
                                    match host.start(this.clone(), tag.clone(), call, spec).await {
                                        Ok(tx) => ivr = Some(tx),
                                        Err(e) => {
                                            tracing::warn!(error = %e, "the IVR could not start; hanging up");
                                            let _ = this.voice.hangup(call).await;
                                        }
                                    }
                                }
                                if answered
                                    && tag.room.is_some()
                                    && let Err(e) = this.bridge(&tag).await
                                {
                                    tracing::warn!(error = %e, "the call could not join its room");
                                }
                                if last
                                    && let Some(pid) = this.in_rooms.lock().remove(&tag.call_id)
                                    && let Some(media) = &this.media
                                {
                                    media.leave(pid);
                                }
                            }
                        });
                        tx
                    });
                    let _ = tx.send(event);
                    if last {
                        recorders.remove(&tag.call_id);
                        // A burst's peak is not kept for good (the calls'
                        // own entries leave `active` as they are recorded).
                        continuum_sip::endpoint::shrink_sparse(&mut recorders);
                        continuum_sip::endpoint::shrink_sparse(&mut self.active.lock());
                    }
                }
            }
        }
    }

    /// Where an incoming call goes: its trunk (by called number), the source
    /// and credentials the trunk allows, then its dispatch rule.
    async fn route(&self, call: Incoming) -> (Decision, Option<CallTag>) {
        let refuse = |reason: &'static str, status: u16| {
            metrics::counter!("continuum_sip_calls_refused_total", "reason" => reason).increment(1);
            (Decision::Reject(status), None)
        };
        let Some(called) = call.called.as_deref().and_then(|n| normalize_phone(n).ok()) else {
            return refuse("unknown_number", 404);
        };
        let trunk = match self.store.inbound_trunk_for(&called).await {
            Ok(Some(t)) => t,
            Ok(None) => return refuse("unknown_number", 404),
            Err(e) => {
                tracing::warn!(error = %e, "no trunk lookup for an incoming call");
                return refuse("store", 503);
            }
        };
        let TrunkSpec::Inbound {
            allowed_sources, ..
        } = &trunk.trunk.spec
        else {
            return refuse("unknown_number", 404);
        };
        if !allowed_sources.is_empty()
            && !allowed_sources.iter().any(|c| {
                c.parse::<continuum_turn::policy::Cidr>()
                    .is_ok_and(|c| c.contains(call.source.ip()))
            })
        {
            return refuse("source", 403);
        }
        if let (Some(user), Some(password)) = (&trunk.trunk.username, &trunk.password)
            && !self
                .voice
                .authenticate(call.call, user.clone(), password.clone())
                .await
        {
            metrics::counter!("continuum_sip_calls_refused_total", "reason" => "challenged")
                .increment(1);
            return (Decision::Reject(401), None);
        }
        if !call.offers_g711 {
            return refuse("no_common_codec", 488);
        }
        if call.media_refusal.is_some() {
            // RTP/SAVP without a crypto suite we speak, DTLS-SRTP...: the
            // gateway's 488 carries a Warning saying which.
            let reason = if call.srtp {
                "no_crypto_suite"
            } else {
                "media"
            };
            return refuse(reason, 488);
        }
        let tenant = trunk.tenant_id.clone();
        let rule = match self.store.dispatch_rule_for(&tenant, &called).await {
            Ok(Some(r)) => r,
            Ok(None) => return refuse("no_dispatch_rule", 404),
            Err(_) => return refuse("store", 503),
        };
        match rule.action {
            DispatchAction::Conversation { queue } => {
                match self
                    .caller_conversation(&tenant, call.caller.as_deref(), queue)
                    .await
                {
                    Ok(conversation_id) => {
                        let caller = call.caller.clone().unwrap_or_else(|| "anonymous".into());
                        self.open_call(
                            &tenant,
                            conversation_id,
                            CallDirection::Inbound,
                            caller,
                            Some(trunk.trunk.id.clone()),
                        )
                        .await
                        .map_or_else(
                            |_| refuse("store", 503),
                            |tag| (Decision::Accept, Some(tag)),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no conversation for an incoming call");
                        refuse("store", 503)
                    }
                }
            }
            // Answered, then the caller keys in the visit's PIN.
            DispatchAction::RoomPin => {
                let tag = CallTag {
                    tenant_id: tenant.clone(),
                    call_id: format!("pin-{}", uuid::Uuid::now_v7()),
                    conversation_id: String::new(),
                    direction: CallDirection::Inbound,
                    room: None,
                    remote: call.caller.clone().unwrap_or_else(|| "anonymous".into()),
                    awaiting_pin: true,
                    bridged_to: None,
                    ivr: None,
                };
                (Decision::Accept, Some(tag))
            }
            // The IVR answers: a stored flow or a customer's TwiML URL.
            DispatchAction::Ivr { .. } | DispatchAction::Twiml { .. } => {
                let program = match rule.action {
                    DispatchAction::Ivr { flow } => crate::ivr::IvrProgram::Flow { name: flow },
                    DispatchAction::Twiml { url, method } => crate::ivr::IvrProgram::Twiml {
                        url,
                        method: if method.as_deref() == Some("GET") {
                            continuum_ivr::Method::Get
                        } else {
                            continuum_ivr::Method::Post
                        },
                    },
                    _ => unreachable!("matched above"),
                };
                if let (crate::ivr::IvrProgram::Flow { name }, Some(host)) =
                    (&program, self.ivr.get())
                    && let Err(e) = host.flow(&tenant, name).await
                {
                    tracing::warn!(error = %e, "a call's IVR flow cannot run");
                    return refuse("ivr_flow", 503);
                }
                if self.ivr.get().is_none() {
                    return refuse("no_ivr", 503);
                }
                match self
                    .caller_call(&tenant, call.caller.as_deref(), &trunk.trunk.id)
                    .await
                {
                    Some(mut tag) => {
                        tag.ivr = Some(crate::ivr::IvrCall {
                            program,
                            called: called.clone(),
                        });
                        (Decision::Accept, Some(tag))
                    }
                    None => refuse("store", 503),
                }
            }
            // Rings the target for the caller (B2BUA): the call is the
            // caller's, on their conversation, answered when the target is.
            DispatchAction::Target { name, sip_uri } => {
                let caller = call.caller.clone().unwrap_or_else(|| "anonymous".into());
                let target = match self.target_dial(&sip_uri, &caller).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(target = %name, error = %e, "a dispatch rule's target cannot be called");
                        return refuse("target_unreachable", 503);
                    }
                };
                match self
                    .caller_call(&tenant, call.caller.as_deref(), &trunk.trunk.id)
                    .await
                {
                    Some(mut tag) => {
                        tag.bridged_to = Some(name);
                        (Decision::Bridge(target), Some(tag))
                    }
                    None => refuse("store", 503),
                }
            }
        }
    }

    /// How to ring a dispatch rule's target URI for `caller` (From: the
    /// caller's number at our address): `sip:` over UDP, `sips:` over TLS;
    /// private addresses only with `sip.allow_private_trunks`.
    async fn target_dial(&self, sip_uri: &str, caller: &str) -> Result<DialTarget, DialError> {
        let (rest, kind) = match sip_uri.strip_prefix("sips:") {
            Some(rest) => (rest, TransportKind::Tls),
            None => (
                sip_uri
                    .strip_prefix("sip:")
                    .ok_or_else(|| DialError::Invalid("not a sip: or sips: URI".into()))?,
                TransportKind::Udp,
            ),
        };
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split([';', '?']).next().unwrap_or(host);
        if kind == TransportKind::Tls && self.voice.tls_addr.is_none() {
            return Err(DialError::Invalid(
                "a sips: target needs sip.tls_listen, sip.tls_cert and sip.tls_key".into(),
            ));
        }
        let destination = self.resolve(host, kind).await?;
        // Ringing ourselves would bridge the call to itself, over and over.
        let ours = [
            self.voice.udp_addr,
            self.voice.tcp_addr,
            self.voice.tls_addr,
        ];
        if ours.into_iter().flatten().any(|a| {
            a.port() == destination.port()
                && (a.ip() == destination.ip()
                    || a.ip().is_unspecified()
                    || self.cfg.public_ip == Some(destination.ip()))
        }) {
            return Err(DialError::Invalid(
                "the target is this gateway's own SIP address".into(),
            ));
        }
        let user: String = caller
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/".contains(*c))
            .collect();
        let user = if user.is_empty() {
            "anonymous".into()
        } else {
            user
        };
        Ok(DialTarget {
            target: sip_uri.to_owned(),
            from: format!("sip:{user}@{}", self.local_host()),
            destination,
            transport: kind,
            credentials: None,
            server_name: (kind == TransportKind::Tls)
                .then(|| tls_name(host))
                .flatten(),
            media_encryption: MediaEncryption::None,
        })
    }

    /// The caller's conversation: their contact by phone binding (a new
    /// contact if unknown), then their latest conversation (a closed one
    /// reopens on the call), else a new one.
    async fn caller_conversation(
        &self,
        tenant: &str,
        caller: Option<&str>,
        queue: Option<String>,
    ) -> Result<String, continuum_store::StoreError> {
        let phone = caller.and_then(|c| normalize_phone(c).ok());
        let name = Some(match &phone {
            Some(p) => format!("Caller {p}"),
            None => "Unknown caller".into(),
        });
        crate::routing::conversation_for(
            &self.store,
            tenant,
            BindingKind::Phone,
            phone.as_deref(),
            name,
            queue,
            "system:sip",
        )
        .await
    }

    /// An inbound call's record on the caller's conversation (found by
    /// caller id, else a new contact); `None` when the store failed (logged).
    async fn caller_call(
        &self,
        tenant: &str,
        caller: Option<&str>,
        trunk_id: &str,
    ) -> Option<CallTag> {
        let conversation_id = match self.caller_conversation(tenant, caller, None).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no conversation for an incoming call");
                return None;
            }
        };
        let remote = caller.unwrap_or("anonymous").to_owned();
        self.open_call(
            tenant,
            conversation_id,
            CallDirection::Inbound,
            remote,
            Some(trunk_id.to_owned()),
        )
        .await
        .ok()
    }

    async fn open_call(
        &self,
        tenant: &str,
        conversation_id: String,
        direction: CallDirection,
        remote: String,
        trunk_id: Option<String>,
    ) -> Result<CallTag, continuum_store::StoreError> {
        let call = self
            .store
            .create_call(
                tenant,
                NewCall {
                    conversation_id: conversation_id.clone(),
                    room_id: None,
                    direction,
                    remote,
                    trunk_id,
                },
                "system:sip",
            )
            .await?;
        Ok(CallTag {
            tenant_id: tenant.to_owned(),
            call_id: call.id,
            conversation_id,
            direction,
            room: None,
            remote: call.remote,
            awaiting_pin: false,
            bridged_to: None,
            ivr: None,
        })
    }

    /// A call event onto the call record and the timeline.
    async fn record(&self, tag: &CallTag, event: CallEvent, answered_at: &mut Option<Instant>) {
        let session = serde_json::json!(tag.call_id);
        let direction = match tag.direction {
            CallDirection::Inbound => "inbound",
            CallDirection::Outbound => "outbound",
        };
        let (state, cause, timeline) = match event {
            CallEvent::Ringing { .. } => (Some(CallState::Ringing), None, None),
            CallEvent::Answered { .. } => {
                if answered_at.is_some() {
                    return; // a re-answer (the UAS side reports ACK too)
                }
                *answered_at = Some(Instant::now());
                metrics::counter!("continuum_sip_calls_answered_total", "direction" => direction)
                    .increment(1);
                (
                    Some(CallState::Answered),
                    None,
                    Some((
                        EventKind::CallStarted,
                        serde_json::json!({"session_id": session, "direction": direction, "backend": "self-hosted"}),
                    )),
                )
            }
            CallEvent::Failed { status, reason, .. } => {
                self.active.lock().remove(&tag.call_id);
                metrics::counter!("continuum_sip_calls_failed_total", "direction" => direction)
                    .increment(1);
                let cause = failure_cause(status, &reason);
                (
                    Some(CallState::Failed),
                    Some(cause.to_owned()),
                    Some((
                        EventKind::CallFailed,
                        serde_json::json!({"session_id": session, "direction": direction, "reason": cause, "sip_status": status}),
                    )),
                )
            }
            CallEvent::Ended { cause, .. } => {
                self.active.lock().remove(&tag.call_id);
                let duration = answered_at.take().map_or(0, |t| t.elapsed().as_secs());
                (
                    Some(CallState::Ended),
                    Some(cause.to_owned()),
                    Some((
                        EventKind::CallEnded,
                        serde_json::json!({"session_id": session, "direction": direction, "reason": cause, "duration_secs": duration}),
                    )),
                )
            }
            _ => (None, None, None),
        };
        if let Some(state) = state
            && let Err(e) = self
                .store
                .update_call(&tag.tenant_id, &tag.call_id, state, cause.as_deref())
                .await
        {
            tracing::warn!(error = %e, "could not update a call record");
        }
        if let Some((kind, mut meta)) = timeline {
            if let (Some(target), Some(m)) = (&tag.bridged_to, meta.as_object_mut()) {
                m.insert("bridged_to".into(), serde_json::json!(target));
            }
            let actor = if tag.direction == CallDirection::Inbound && kind == EventKind::CallStarted
            {
                Actor {
                    actor_type: ActorType::Patient,
                    id: None,
                }
            } else {
                Actor::system()
            };
            let ev = NewEvent {
                channel: Channel::Voice,
                kind,
                actor,
                body: None,
                meta: meta.as_object().cloned().unwrap_or_default(),
                idempotency_key: None,
            };
            if let Err(e) = self
                .store
                .append_event(&tag.tenant_id, &tag.conversation_id, ev, "system:sip")
                .await
            {
                tracing::warn!(error = %e, "could not record a call event on the timeline");
            }
        }
    }

    /// A dial-in's PIN: the tenant's open room with it gets the call (a
    /// call record on its conversation, `call.started`, the caller joins by
    /// phone). False for a PIN that names no open room.
    async fn join_by_pin(self: &Arc<Self>, tag: &mut CallTag, pin: &str) -> bool {
        tracing::debug!(digits = pin.len(), "a dial-in keyed in a PIN");
        let room = match self.store.room_by_pin(&tag.tenant_id, pin).await {
            Ok(Some(r)) => r,
            _ => {
                metrics::counter!("continuum_sip_pin_refused_total").increment(1);
                return false;
            }
        };
        let Some(call) = self.active(&tag.call_id) else {
            return false;
        };
        let record = match self
            .store
            .create_call(
                &tag.tenant_id,
                NewCall {
                    conversation_id: room.conversation_id.clone(),
                    room_id: Some(room.id.clone()),
                    direction: CallDirection::Inbound,
                    remote: tag.remote.clone(),
                    trunk_id: None,
                },
                "system:sip",
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no call record for a PIN dial-in");
                return false;
            }
        };
        {
            let mut active = self.active.lock();
            active.remove(&tag.call_id);
            active.insert(record.id.clone(), call);
        }
        tag.call_id = record.id;
        tag.conversation_id = room.conversation_id;
        tag.room = Some(crate::lobby::RoomKey::new(&tag.tenant_id, &room.id));
        tag.awaiting_pin = false;
        let mut answered_at = None;
        self.record(tag, CallEvent::Answered { call }, &mut answered_at)
            .await;
        if let Err(e) = self.bridge(tag).await {
            tracing::warn!(error = %e, "the dial-in could not join its room");
        }
        true
    }

    /// Wires the IVR host in (once, at startup).
    pub fn set_ivr(&self, host: Arc<crate::ivr::IvrHost>) {
        let _ = self.ivr.set(host);
    }

    /// Puts a call waiting in a queue into the room its agent joins.
    pub async fn join_room(self: &Arc<Self>, tag: &CallTag, room_id: &str) -> Result<(), String> {
        let mut tag = tag.clone();
        tag.room = Some(crate::lobby::RoomKey::new(&tag.tenant_id, room_id));
        self.bridge(&tag).await
    }

    /// Takes a call out of its room (the agent transferred it back to a
    /// queue): its participant leaves, the phone hears prompts again.
    pub async fn leave_room(&self, tag: &CallTag) -> Result<(), String> {
        let call = self.active(&tag.call_id).ok_or("the call ended")?;
        if let Some(pid) = self.in_rooms.lock().remove(&tag.call_id)
            && let Some(media) = &self.media
        {
            media.leave(pid);
        }
        self.voice
            .detach_room(call)
            .await
            .map_err(|e| e.to_string())
    }

    /// Puts an answered call into its video room: a WebRTC leg of the
    /// gateway joins the SFU as a phone participant, talks to the room and
    /// hears its mix; the SFU's renegotiation offers are answered by the leg.
    async fn bridge(self: &Arc<Self>, tag: &CallTag) -> Result<(), String> {
        let media = self
            .media
            .clone()
            .ok_or("no SFU on this node (continuum sip): the call stays audio-only")?;
        let key = tag.room.clone().ok_or("no room")?;
        let call = self.active(&tag.call_id).ok_or("the call ended")?;
        let room = self
            .store
            .get_room(&key.tenant_id, &key.room_id)
            .await
            .map_err(|e| e.to_string())?;
        if room.ended_at.is_some() {
            return Err("the visit has ended".into());
        }
        // The roster shows who is on the phone: the patient's name if known.
        let name = match self
            .store
            .get_conversation(&key.tenant_id, &tag.conversation_id)
            .await
        {
            Ok(c) => self
                .store
                .get_contact(&key.tenant_id, &c.contact_id, "system:sip")
                .await
                .ok()
                .map(|c| format!("{} (phone)", c.display_name)),
            Err(_) => None,
        };
        let offer = self
            .voice
            .attach_room(call, tag.remote.clone())
            .await
            .map_err(|e| e.to_string())?;
        let seat = crate::media::Seat {
            room: key.clone(),
            conversation_id: tag.conversation_id.clone(),
            identity: format!("phone:{}", tag.remote),
            name: name.or_else(|| Some(format!("{} (phone)", tag.remote))),
            role: continuum_core::Role::Patient,
            max_participants: room.max_participants.max(0) as usize,
            phone: true,
        };
        let (link, mut from_sfu) = tokio::sync::mpsc::unbounded_channel();
        let (pid, answer) = media
            .join(seat.joining(offer, continuum_sfu::Mode::Full, None), link)
            .await
            .map_err(|e| e.to_string())?;
        self.in_rooms.lock().insert(tag.call_id.clone(), pid);
        self.voice
            .room_answer(call, answer, None)
            .await
            .map_err(|e| e.to_string())?;
        let voice = self.voice.clone();
        tokio::spawn(async move {
            use crate::media::ToClient;
            while let Some(msg) = from_sfu.recv().await {
                match msg {
                    ToClient::Offer(sdp) => match voice.room_offer(call, sdp).await {
                        Ok(answer) => {
                            let _ = media.answer(pid, answer).await;
                        }
                        Err(_) => break,
                    },
                    // The phone hears, never sees: no camera bytes for it.
                    ToClient::Notice(continuum_sfu::Notice::TrackPublished {
                        origin,
                        kind: continuum_sfu::MediaKind::Video,
                        ..
                    }) => {
                        let _ = media
                            .set_subscribed(
                                pid,
                                origin,
                                Some(continuum_sfu::MediaKind::Video),
                                false,
                            )
                            .await;
                    }
                    ToClient::Closed => break,
                    _ => {}
                }
            }
        });
        Ok(())
    }

    /// Calls a number (through the tenant's outbound trunk) or a SIP URI.
    pub async fn dial(
        &self,
        tenant: &str,
        req: DialRequest,
    ) -> Result<continuum_store::Call, DialError> {
        let (
            target,
            from,
            destination,
            transport,
            credentials,
            trunk_id,
            server_name,
            media_encryption,
        ) = if req.to.starts_with("sip:") {
            let host = req.to.rsplit_once('@').map_or(&req.to[4..], |(_, h)| h);
            let host = host.split(';').next().unwrap_or(host);
            let destination = self.resolve(host, TransportKind::Udp).await?;
            let from = format!("sip:continuum@{}", self.local_host());
            (
                req.to.clone(),
                from,
                destination,
                TransportKind::Udp,
                None,
                None,
                None,
                MediaEncryption::None,
            )
        } else {
            let number =
                normalize_phone(&req.to).map_err(|e| DialError::Invalid(format!("to: {e}")))?;
            let trunk = self.outbound_trunk(tenant, req.trunk_id.as_deref()).await?;
            let TrunkSpec::Outbound {
                address,
                transport,
                caller_ids,
                max_concurrent_calls,
                media_encryption,
            } = &trunk.trunk.spec
            else {
                return Err(DialError::Invalid("trunk_id: not an outbound trunk".into()));
            };
            let busy = self
                .store
                .active_calls_on_trunk(tenant, &trunk.trunk.id)
                .await?;
            if busy >= *max_concurrent_calls {
                return Err(DialError::Unavailable(format!(
                    "trunk {} carries {busy} calls, its max_concurrent_calls: try again when one ends",
                    trunk.trunk.name
                )));
            }
            let kind = transport_kind(*transport);
            if kind == TransportKind::Tls && self.voice.tls_addr.is_none() {
                return Err(DialError::Invalid(format!(
                    "trunk {} uses TLS: set sip.tls_listen, sip.tls_cert and sip.tls_key",
                    trunk.trunk.name
                )));
            }
            let destination = self.resolve(address, kind).await?;
            let host = address.clone();
            let caller = caller_ids.first().cloned().unwrap_or_default();
            let credentials = match (&trunk.trunk.username, &trunk.password) {
                (Some(u), Some(p)) => Some(continuum_sip::DigestCredentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                _ => None,
            };
            let uri_transport = if kind == TransportKind::Tls {
                ";transport=tls"
            } else {
                ""
            };
            (
                format!("sip:{number}@{host}{uri_transport}"),
                format!("sip:{caller}@{}", self.local_host()),
                destination,
                kind,
                credentials,
                Some(trunk.trunk.id.clone()),
                tls_name(address),
                match media_encryption {
                    continuum_store::MediaEncryption::None => MediaEncryption::None,
                    continuum_store::MediaEncryption::Sdes => MediaEncryption::Sdes,
                },
            )
        };
        let call = self
            .store
            .create_call(
                tenant,
                NewCall {
                    conversation_id: req.conversation_id.clone(),
                    room_id: req.room_id,
                    direction: CallDirection::Outbound,
                    remote: req.to,
                    trunk_id,
                },
                "system:sip",
            )
            .await?;
        let tag = CallTag {
            tenant_id: tenant.to_owned(),
            call_id: call.id.clone(),
            conversation_id: req.conversation_id,
            direction: CallDirection::Outbound,
            room: call
                .room_id
                .as_ref()
                .map(|r| crate::lobby::RoomKey::new(tenant, r)),
            remote: call.remote.clone(),
            awaiting_pin: false,
            bridged_to: None,
            ivr: None,
        };
        let dial = DialTarget {
            target,
            from,
            destination,
            transport,
            credentials,
            server_name,
            media_encryption,
        };
        match self.voice.dial(tag, dial).await {
            Ok(id) => {
                self.active.lock().insert(call.id.clone(), id);
                Ok(call)
            }
            Err(e) => {
                let _ = self
                    .store
                    .update_call(tenant, &call.id, CallState::Failed, Some("dial_failed"))
                    .await;
                Err(DialError::Unavailable(format!(
                    "the call could not be placed: {e}"
                )))
            }
        }
    }

    pub(crate) async fn outbound_trunk(
        &self,
        tenant: &str,
        id: Option<&str>,
    ) -> Result<TrunkWithSecret, DialError> {
        match id {
            Some(id) => Ok(self.store.trunk_with_secret(tenant, id).await?),
            None => {
                let trunks = self.store.outbound_trunks(tenant).await?;
                let status: Vec<TrunkStatus> = trunks
                    .iter()
                    .map(|t| self.trunk_health(&t.trunk.id).0)
                    .collect();
                // Down trunks are skipped while another is up; all down (a
                // carrier that ignores OPTIONS, an outage of ours): try anyway.
                let pick = if status.contains(&TrunkStatus::Up) {
                    status.iter().position(|s| *s != TrunkStatus::Down)
                } else {
                    (!trunks.is_empty()).then_some(0)
                };
                pick.and_then(|i| trunks.into_iter().nth(i)).ok_or_else(|| {
                    DialError::Invalid("no outbound trunk: add one with POST /v1/sip/trunks".into())
                })
            }
        }
    }

    /// A trunk's `host[:port]` to an address we may send to (port 5060, or
    /// 5061 for TLS, when none is given).
    async fn resolve(&self, host: &str, kind: TransportKind) -> Result<SocketAddr, DialError> {
        let with_port = if host.parse::<SocketAddr>().is_ok()
            || host.rsplit_once(':').is_some_and(|(h, _)| !h.contains(':'))
        {
            host.to_owned()
        } else if kind == TransportKind::Tls {
            format!("{host}:5061")
        } else {
            format!("{host}:5060")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| DialError::Unavailable(format!("cannot resolve `{host}`: {e}")))?
            .next()
            .ok_or_else(|| DialError::Unavailable(format!("`{host}` has no address")))?;
        if !self.cfg.allow_private_trunks
            && continuum_core::netpolicy::is_special_purpose(addr.ip())
        {
            return Err(DialError::Invalid(format!(
                "`{host}` is a private or special-purpose address ({}); set sip.allow_private_trunks = true to allow it",
                addr.ip()
            )));
        }
        Ok(addr)
    }

    fn local_host(&self) -> String {
        self.voice
            .udp_addr
            .or(self.voice.tcp_addr)
            .map(|a| SocketAddr::new(self.cfg.public_ip.unwrap_or(a.ip()), a.port()).to_string())
            .unwrap_or_else(|| "continuum.invalid".into())
    }

    /// The gateway's handle of a call that is up (or being set up).
    pub fn active(&self, call_id: &str) -> Option<CallId> {
        self.active.lock().get(call_id).copied()
    }
}

fn transport_kind(t: SipTransport) -> TransportKind {
    match t {
        SipTransport::Udp => TransportKind::Udp,
        SipTransport::Tcp => TransportKind::Tcp,
        SipTransport::Tls => TransportKind::Tls,
    }
}

/// The name a TLS trunk's certificate must show: the host of its
/// `host[:port]` address (none for an IP address: that is checked instead).
fn tls_name(address: &str) -> Option<String> {
    if address.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let host = match address.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.parse::<std::net::IpAddr>().is_err()).then(|| host.to_owned())
}

/// The documented `reason` of `call.failed` from a SIP final status.
fn failure_cause(status: u16, reason: &str) -> &'static str {
    match status {
        486 | 600 => "busy",
        408 | 480 if reason == "no_answer" => "no_answer",
        408 | 480 => "no_answer",
        487 => "cancelled",
        488 | 606 => "no_common_codec",
        401 | 407 | 403 => "refused",
        404 | 484 | 604 => "not_found",
        603 => "declined",
        _ => "failed",
    }
}
