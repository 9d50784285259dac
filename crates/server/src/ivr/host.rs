//! One task per IVR call: a `continuum-ivr` session fed the call's digits,
//! the end of each prompt and webhook answers, its actions carried out on
//! the gateway (prompts, recordings), the store (timeline, voicemails,
//! texts) and the queues. After `Enqueue` the same task holds the caller:
//! hold messages until an agent takes the call (it joins the agent's room),
//! an overflow sends it to voicemail or a call back, or the caller hangs up.

use super::IvrHost;
use super::prompts::{Audio, wav_bytes};
use crate::queues::CallOrder;
use crate::voice::{CallTag, VoiceService};
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent};
use continuum_ivr::{
    Action, AudioSource, DialStatus, FetchError, FetchedDoc, Input, IvrEvent, Method, Session,
};
use continuum_store::NewRoutingTask;
use continuum_voice::{CallEvent, CallId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest TwiML document or prompt file fetched.
const MAX_DOC_BYTES: usize = 64 * 1024;
const MAX_AUDIO_BYTES: usize = 8 * 1024 * 1024;
/// A voicemail's beep: 440 Hz for 400 ms.
fn beep() -> Audio {
    (0..3_200)
        .map(|i| ((i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 8_000.0).sin() * 6_000.0) as i16)
        .collect::<Vec<_>>()
        .into()
}

pub(super) struct CallRun {
    pub host: Arc<IvrHost>,
    pub voice: Arc<VoiceService>,
    pub tag: CallTag,
    pub call: CallId,
    pub session: Session,
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    pub written: u32,
    pub playing: Option<u64>,
    pub recording: Option<Recording>,
    pub fetched_tx: mpsc::UnboundedSender<Result<FetchedDoc, FetchError>>,
    pub fetched_rx: mpsc::UnboundedReceiver<Result<FetchedDoc, FetchError>>,
}

pub(super) struct Recording {
    finish_on: String,
    triage: Option<String>,
    started: Instant,
}

/// How the session part ended.
enum Next {
    HungUp,
    Queued { task_id: String },
    Left,
}

impl CallRun {
    pub async fn run(mut self, calendar_problem: Option<String>) {
        if let Some(problem) = calendar_problem {
            self.error(&problem).await;
        }
        let next = self.interpret().await;
        if let Next::Queued { task_id } = next {
            self.hold(task_id).await;
        }
    }

    /// The session until it is done (or the caller hangs up).
    async fn interpret(&mut self) -> Next {
        loop {
            while let Some(action) = self.session.poll_output() {
                if let Some(next) = self.act(action).await {
                    return next;
                }
            }
            if self.session.is_done() {
                return Next::Left;
            }
            let deadline = self.session.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(CallEvent::Dtmf { digit, .. }) => {
                        if let Some(rec) = &self.recording
                            && rec.finish_on.contains(digit)
                        {
                            self.voice.voice.stop_recording(self.call);
                        } else {
                            self.session.handle(Input::Digit(digit), Instant::now());
                        }
                    }
                    Some(CallEvent::PlaybackFinished { .. }) => {
                        if let Some(id) = self.playing.take() {
                            self.session.handle(Input::PlaybackFinished { id }, Instant::now());
                        }
                    }
                    Some(CallEvent::Recorded { samples, .. }) => {
                        let reference = self.store_voicemail(&samples).await;
                        let duration = Duration::from_millis(samples.len() as u64 / 8);
                        self.session.handle(
                            Input::RecordingDone { duration, reference: reference.unwrap_or_default() },
                            Instant::now(),
                        );
                    }
                    Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None => {
                        self.session.handle(Input::HungUp, Instant::now());
                        while let Some(a) = self.session.poll_output() {
                            if let Action::Event(e) = a {
                                self.event(e).await;
                            }
                        }
                        return Next::HungUp;
                    }
                    Some(_) => {}
                },
                got = self.fetched_rx.recv() => {
                    if let Some(got) = got {
                        self.session.handle(Input::Fetched(got), Instant::now());
                    }
                }
                _ = sleep => self.session.handle_timeout(Instant::now()),
            }
        }
    }

    /// Carries out one action; `Some` when the session part is over.
    async fn act(&mut self, action: Action) -> Option<Next> {
        match action {
            Action::Say {
                id, text, language, ..
            } => {
                let audio = self.host.prompts.say(&text, &language).await;
                self.play(id, audio.map_err(|e| e.to_string())).await;
            }
            Action::Play { id, source } => {
                let audio = match source {
                    AudioSource::File(name) => self
                        .host
                        .prompts
                        .file(&name)
                        .await
                        .map_err(|e| e.to_string()),
                    AudioSource::Url(url) => self.fetch_audio(&url).await,
                };
                self.play(id, audio).await;
            }
            Action::SendDigits { id, digits } => {
                let digits: String = digits.chars().filter(|c| *c != 'w' && *c != 'W').collect();
                if !digits.is_empty() {
                    let _ = self.voice.voice.send_dtmf(self.call, digits).await;
                }
                self.session
                    .handle(Input::PlaybackFinished { id }, Instant::now());
            }
            Action::StopPlayback => {
                self.playing = None;
                self.voice.voice.stop_playback(self.call);
            }
            Action::Enqueue {
                queue,
                priority,
                skills,
                triage,
                ..
            } => {
                let new = NewRoutingTask {
                    queue: queue.clone(),
                    conversation_id: self.tag.conversation_id.clone(),
                    channel: "voice".into(),
                    priority,
                    skills,
                    call_id: Some(self.tag.call_id.clone()),
                    triage,
                };
                return Some(
                    match self
                        .host
                        .state
                        .queues
                        .enqueue(&self.tag.tenant_id, new)
                        .await
                    {
                        Ok(task) => {
                            self.timeline(
                                EventKind::IvrRoute,
                                serde_json::json!({"queue": queue, "task_id": task.id}),
                            )
                            .await;
                            Next::Queued { task_id: task.id }
                        }
                        Err(e) => {
                            self.error(&format!("the call could not join queue `{queue}`: {e}"))
                                .await;
                            self.goodbye(None).await;
                            Next::Left
                        }
                    },
                );
            }
            Action::SendSms { template, body, .. } => self.send_sms(template, body).await,
            Action::StartRecording {
                max,
                finish_on_key,
                beep: with_beep,
                triage,
                ..
            } => {
                if with_beep {
                    self.voice.voice.play(self.call, beep());
                }
                self.voice.voice.start_recording(self.call, max);
                self.recording = Some(Recording {
                    finish_on: finish_on_key,
                    triage,
                    started: Instant::now(),
                });
            }
            Action::StopRecording => self.voice.voice.stop_recording(self.call),
            Action::Transfer { to, .. } => {
                self.timeline(EventKind::IvrRoute, serde_json::json!({"transfer": to}))
                    .await;
                if let Err(e) = self.voice.voice.transfer(self.call, to.clone()).await {
                    self.error(&format!("the transfer to {to} failed: {e}"))
                        .await;
                    let _ = self.voice.voice.hangup(self.call).await;
                }
                return Some(Next::Left);
            }
            Action::Dial {
                targets,
                timeout,
                time_limit,
                ..
            } => {
                let (status, duration) = match self.dial(&targets, timeout, time_limit).await {
                    Ok(done) => done,
                    Err(None) => return Some(Next::HungUp),
                    Err(Some(e)) => {
                        self.error(&format!("<Dial> failed: {e}")).await;
                        (DialStatus::Failed, Duration::ZERO)
                    }
                };
                self.session
                    .handle(Input::DialDone { status, duration }, Instant::now());
            }
            Action::Fetch {
                url,
                method,
                params,
            } => self.fetch(url, method, params),
            Action::Hangup => {
                let _ = self.voice.voice.hangup(self.call).await;
                return Some(Next::Left);
            }
            Action::Event(e) => self.event(e).await,
        }
        None
    }

    /// `<Dial>`: the caller and the dialled party meet in a room of the
    /// conversation (the gateway bridges answered calls through rooms), for
    /// at most `time_limit`; the first target only. `Err(None)`: the caller
    /// hung up meanwhile.
    async fn dial(
        &mut self,
        targets: &[continuum_ivr::twiml::DialTarget],
        timeout: Duration,
        time_limit: Duration,
    ) -> Result<(DialStatus, Duration), Option<String>> {
        use continuum_ivr::twiml::DialTarget;
        use continuum_store::CallState;
        let to = match targets.first() {
            Some(DialTarget::Number(n)) => n.clone(),
            Some(DialTarget::Sip(u)) => u.clone(),
            None => return Err(Some("nothing to dial".into())),
        };
        let (tenant, conv) = (self.tag.tenant_id.clone(), self.tag.conversation_id.clone());
        let store = self.host.state.store.clone();
        let room = store
            .create_room(
                &tenant,
                &conv,
                self.host.state.config.rtc.max_participants_per_room as i64,
                false,
                "system:ivr",
            )
            .await
            .map_err(|e| Some(e.to_string()))?;
        self.voice.voice.stop_playback(self.call);
        self.voice
            .join_room(&self.tag, &room.id)
            .await
            .map_err(Some)?;
        let req = crate::voice::DialRequest {
            conversation_id: conv.clone(),
            to,
            trunk_id: None,
            room_id: Some(room.id.clone()),
        };
        let dialled = match self.voice.dial(&tenant, req).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.voice.leave_room(&self.tag).await;
                return Err(Some(e.to_string()));
            }
        };
        let started = Instant::now();
        let mut answered_at: Option<Instant> = None;
        let mut gave_up = false;
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        let hang_up_dialled = |voice: &std::sync::Arc<VoiceService>, id: &str| {
            voice.active(id).map(|c| (voice.voice.clone(), c))
        };
        let outcome = loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None => {
                        if let Some((v, c)) = hang_up_dialled(&self.voice, &dialled.id) {
                            let _ = v.hangup(c).await;
                        }
                        return Err(None);
                    }
                    _ => {}
                },
                _ = poll.tick() => {
                    let Ok(call) = store.get_call(&tenant, &dialled.id).await else { continue };
                    match call.state {
                        CallState::Answered if answered_at.is_none() => answered_at = Some(Instant::now()),
                        CallState::Ended => break (DialStatus::Completed, answered_at.map_or(Duration::ZERO, |a| a.elapsed())),
                        CallState::Failed => {
                            let status = match call.cause.as_deref() {
                                _ if gave_up => DialStatus::NoAnswer,
                                Some("busy") => DialStatus::Busy,
                                Some("no_answer") => DialStatus::NoAnswer,
                                Some("cancelled") => DialStatus::Canceled,
                                _ => DialStatus::Failed,
                            };
                            break (status, Duration::ZERO);
                        }
                        _ => {}
                    }
                    let over = match answered_at {
                        None => started.elapsed() >= timeout,
                        Some(a) => a.elapsed() >= time_limit,
                    };
                    if over && !gave_up && let Some((v, c)) = hang_up_dialled(&self.voice, &dialled.id) {
                        // Unanswered: cancelled (`no-answer`); answered: the limit.
                        gave_up = answered_at.is_none();
                        let _ = v.hangup(c).await;
                    }
                }
            }
        };
        let _ = self.voice.leave_room(&self.tag).await;
        Ok(outcome)
    }

    async fn play(&mut self, id: u64, audio: Result<Audio, String>) {
        match audio {
            Ok(a) => {
                self.playing = Some(id);
                self.voice.voice.play(self.call, a);
            }
            Err(e) => {
                self.error(&format!("a prompt could not be played: {e}"))
                    .await;
                self.session
                    .handle(Input::PlaybackFinished { id }, Instant::now());
            }
        }
    }

    /// Requests a webhook in the background (the call keeps hearing digits
    /// and hang-ups); the answer comes back on `fetched_rx`.
    fn fetch(&self, url: String, method: Method, params: Vec<(String, String)>) {
        let host = self.host.clone();
        let tenant = self.tag.tenant_id.clone();
        let tx = self.fetched_tx.clone();
        tokio::spawn(async move {
            let got = host.fetch_twiml(&tenant, &url, method, &params).await;
            let _ = tx.send(got);
        });
    }

    async fn fetch_audio(&self, url: &str) -> Result<Audio, String> {
        self.host.check_url(url).await.map_err(|e| e.to_string())?;
        let resp = self
            .host
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status().as_u16()));
        }
        let bytes = read_capped(resp, MAX_AUDIO_BYTES).await?;
        super::prompts::decode_wav(&bytes).map_err(|e| format!("{url}: {e}"))
    }

    async fn send_sms(&mut self, template: Option<String>, body: Option<String>) {
        let (tenant, conv) = (self.tag.tenant_id.clone(), self.tag.conversation_id.clone());
        let result = match (template.as_deref(), body) {
            (Some("visit_link"), _) => self
                .host
                .state
                .handoffs
                .send_visit_link(
                    &tenant,
                    &conv,
                    None,
                    None,
                    None,
                    crate::handoff::HandoffKind::VisitLink,
                    Duration::from_secs(24 * 3600),
                    Actor::system(),
                    "system:ivr",
                )
                .await
                .map(|_| ())
                .map_err(|e| e.message),
            (Some("conversation_link"), _) => self
                .host
                .state
                .handoffs
                .send_chat_link(&tenant, &conv, Duration::from_secs(24 * 3600), "system:ivr")
                .await
                .map_err(|e| e.message),
            (None, Some(body)) => self
                .host
                .state
                .handoffs
                .send_text(&tenant, &conv, body, "system:ivr")
                .await
                .map_err(|e| e.message),
            (Some(other), _) => Err(format!(
                "no SMS template `{other}` (the IVR knows visit_link and conversation_link)"
            )),
            (None, None) => Err("an SMS step without a template or a body".into()),
        };
        if let Err(e) = result {
            self.error(&format!("the text to the caller was not sent: {e}"))
                .await;
        }
    }

    /// The recording as a voicemail attachment on the conversation.
    async fn store_voicemail(&mut self, samples: &[i16]) -> Option<String> {
        let rec = self.recording.take();
        let triage = rec.as_ref().and_then(|r| r.triage.clone());
        if samples.len() < 800 {
            // Under 0.1 s: nothing was said.
            return None;
        }
        let Some(attachments) = self.host.state.attachments.clone() else {
            self.error("no attachment store on this node: the voicemail was not kept")
                .await;
            return None;
        };
        let wav = bytes::Bytes::from(wav_bytes(samples));
        let body = futures::stream::iter([Ok::<_, std::io::Error>(wav)]);
        let secs = rec.map_or(0, |r| r.started.elapsed().as_secs());
        let caption = match &triage {
            Some(t) => format!("Voicemail ({t}, {secs} s)"),
            None => format!("Voicemail ({secs} s)"),
        };
        match attachments
            .store_stream(
                &self.tag.tenant_id,
                &self.tag.conversation_id,
                body,
                Some("voicemail.wav".into()),
                "voicemail",
                Channel::Voice,
                Some(caption),
                Actor {
                    actor_type: ActorType::Patient,
                    id: None,
                },
                "system:ivr",
            )
            .await
        {
            Ok(a) => {
                metrics::counter!("continuum_ivr_voicemails_total").increment(1);
                Some(a.id)
            }
            Err(e) => {
                self.error(&format!("the voicemail could not be stored: {e}"))
                    .await;
                None
            }
        }
    }

    async fn event(&mut self, e: IvrEvent) {
        let (kind, meta) = match e {
            IvrEvent::NodeEntered { node } => {
                (EventKind::IvrStep, serde_json::json!({"node": node}))
            }
            IvrEvent::Digit { digit } => (
                EventKind::IvrInput,
                serde_json::json!({"digit": digit.map_or("*masked*".to_owned(), |d| d.to_string())}),
            ),
            IvrEvent::MenuChoice { node, choice, next } => (
                EventKind::IvrInput,
                serde_json::json!({"node": node, "choice": choice.to_string(), "next": next}),
            ),
            IvrEvent::Gathered { node, name, digits } => (
                EventKind::IvrInput,
                serde_json::json!({"node": node, "name": name, "digits": digits}),
            ),
            IvrEvent::Invalid { node, input } => (
                EventKind::IvrStep,
                serde_json::json!({"node": node, "outcome": "invalid", "input": input}),
            ),
            IvrEvent::Timeout { node } => (
                EventKind::IvrStep,
                serde_json::json!({"node": node, "outcome": "timeout"}),
            ),
            IvrEvent::Exhausted { node } => (
                EventKind::IvrStep,
                serde_json::json!({"node": node, "outcome": "exhausted"}),
            ),
            IvrEvent::Triage { label } => {
                metrics::counter!("continuum_ivr_triage_total").increment(1);
                (
                    EventKind::TriageResult,
                    serde_json::json!({"level": label, "summary": format!("IVR triage: {label}"), "source": "ivr"}),
                )
            }
            IvrEvent::Verb { verb, url } => (
                EventKind::IvrStep,
                serde_json::json!({"verb": verb, "url": url}),
            ),
            // The attachment event is the record of it.
            IvrEvent::Recorded { .. } => return,
            IvrEvent::Error { error } => {
                self.error(&error.to_string()).await;
                return;
            }
            IvrEvent::CallerHungUp => (
                EventKind::IvrStep,
                serde_json::json!({"outcome": "caller_hung_up"}),
            ),
        };
        self.timeline(kind, meta).await;
    }

    async fn error(&mut self, message: &str) {
        metrics::counter!("continuum_ivr_errors_total").increment(1);
        tracing::info!(call = %self.tag.call_id, error = %message, "IVR error");
        self.timeline(EventKind::IvrError, serde_json::json!({"error": message}))
            .await;
    }

    async fn timeline(&mut self, kind: EventKind, meta: serde_json::Value) {
        if self.written >= self.host.state.config.ivr.max_events_per_call {
            return;
        }
        self.written += 1;
        let ev = NewEvent {
            channel: Channel::Ivr,
            kind,
            actor: Actor::system(),
            body: None,
            meta: meta.as_object().cloned().unwrap_or_default(),
            idempotency_key: None,
        };
        if let Err(e) = self
            .host
            .state
            .store
            .append_system_event(
                &self.tag.tenant_id,
                &self.tag.conversation_id,
                ev,
                "system:ivr",
            )
            .await
        {
            tracing::warn!(error = %e, "an IVR event could not be recorded");
        }
    }

    /// Says `text` (or nothing), waits for it to play out, and hangs up.
    async fn goodbye(&mut self, text: Option<&str>) {
        if let Some(text) = text
            && let Ok(audio) = self.host.prompts.say(text, "en").await
        {
            self.voice.voice.play(self.call, audio);
            let _ = self.until_played().await;
        }
        let _ = self.voice.voice.hangup(self.call).await;
    }

    /// Waits for the queued audio to finish; false if the caller hung up.
    async fn until_played(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.events.recv()).await {
                Ok(Some(CallEvent::PlaybackFinished { .. })) => return true,
                Ok(Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None) | Err(_) => {
                    return false;
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// In the queue: hold messages until an agent takes the call, an
    /// overflow rule sends it elsewhere, or the caller hangs up. A call an
    /// agent transfers back to a queue waits again.
    async fn hold(mut self, task_id: String) {
        loop {
            let room = match self.wait_in_queue(&task_id).await {
                Some(room) => room,
                None => return,
            };
            if !self.with_agent(&task_id, &room).await {
                return;
            }
        }
    }

    /// Waits in the queue; the room an agent took the call into, if one did.
    async fn wait_in_queue(&mut self, task_id: &str) -> Option<String> {
        let (tx, mut orders) = mpsc::unbounded_channel();
        let queues = self.host.state.queues.clone();
        queues.hold_call(task_id, tx);
        let every = Duration::from_secs(self.host.state.config.ivr.hold_every_secs.max(5));
        let hold_text = self.host.state.config.ivr.hold_message.clone();
        let hold_audio = self.host.prompts.say(&hold_text, "en").await.ok();
        let mut next_hold = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                order = orders.recv() => match order {
                    Some(CallOrder::Join { room_id }) => {
                        self.voice.voice.stop_playback(self.call);
                        if let Err(e) = self.voice.join_room(&self.tag, &room_id).await {
                            self.error(&format!("the call could not reach the agent: {e}")).await;
                        }
                        return Some(room_id);
                    }
                    Some(CallOrder::Voicemail) => {
                        self.voicemail().await;
                        return None;
                    }
                    Some(CallOrder::Callback) => {
                        self.callback().await;
                        return None;
                    }
                    Some(CallOrder::Requeue) | None => return None,
                },
                ev = self.events.recv() => match ev {
                    Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None => {
                        queues.cancel(&self.tag.tenant_id, task_id);
                        return None;
                    }
                    _ => {}
                },
                _ = tokio::time::sleep_until(next_hold) => {
                    next_hold += every;
                    if let Some(a) = &hold_audio {
                        self.voice.voice.play(self.call, a.clone());
                    }
                }
            }
        }
    }

    /// With an agent, in their room, until the call ends (false) or the
    /// agent sends it back to a queue (true: it waits again).
    async fn with_agent(&mut self, task_id: &str, _room: &str) -> bool {
        let (tx, mut orders) = mpsc::unbounded_channel();
        let queues = self.host.state.queues.clone();
        queues.call_joined(task_id, tx);
        loop {
            tokio::select! {
                order = orders.recv() => {
                    if let Some(CallOrder::Requeue) = order {
                        if let Err(e) = self.voice.leave_room(&self.tag).await {
                            self.error(&format!("the call could not leave the agent's room: {e}")).await;
                            return false;
                        }
                        self.timeline(EventKind::IvrStep, serde_json::json!({"outcome": "back_in_queue"})).await;
                        return true;
                    }
                    if order.is_none() {
                        return false;
                    }
                }
                ev = self.events.recv() => match ev {
                    Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None => {
                        queues.call_gone(task_id);
                        return false;
                    }
                    _ => {}
                },
            }
        }
    }

    /// Overflow to voicemail: a prompt, the beep, up to two minutes.
    async fn voicemail(&mut self) {
        let text = "Sorry, no one is available to take your call. Please leave a message after the tone, and press pound when you are done.";
        if let Ok(a) = self.host.prompts.say(text, "en").await {
            self.voice.voice.play(self.call, a);
            if !self.until_played().await {
                return;
            }
        }
        self.voice.voice.play(self.call, beep());
        let max = self
            .host
            .state
            .config
            .ivr
            .voicemail_max_secs
            .clamp(1, 3_600);
        self.voice
            .voice
            .start_recording(self.call, Duration::from_secs(max));
        self.recording = Some(Recording {
            finish_on: "#".into(),
            triage: None,
            started: Instant::now(),
        });
        loop {
            match self.events.recv().await {
                Some(CallEvent::Dtmf { digit: '#', .. }) => {
                    self.voice.voice.stop_recording(self.call)
                }
                Some(CallEvent::Recorded { samples, .. }) => {
                    self.store_voicemail(&samples).await;
                    self.goodbye(Some("Thank you. Goodbye.")).await;
                    return;
                }
                Some(CallEvent::Ended { .. } | CallEvent::Failed { .. }) | None => return,
                Some(_) => {}
            }
        }
    }

    async fn callback(&mut self) {
        let ev = NewEvent {
            channel: Channel::Voice,
            kind: EventKind::CallbackRequested,
            actor: Actor::system(),
            body: None,
            meta: serde_json::json!({"source": "queue_overflow", "phone": self.tag.remote})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            idempotency_key: None,
        };
        let _ = self
            .host
            .state
            .store
            .append_event(
                &self.tag.tenant_id,
                &self.tag.conversation_id,
                ev,
                "system:ivr",
            )
            .await;
        self.goodbye(Some(
            "All of our staff are busy. We will call you back as soon as we can. Goodbye.",
        ))
        .await;
    }
}

/// A response body, refused past `max` bytes.
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(super) const MAX_TWIML_BYTES: usize = MAX_DOC_BYTES;
