//! The IVR host: runs `continuum-ivr` sessions on live calls (prompts
//! played through the voice gateway, digits fed back, webhooks fetched and
//! signed, voicemails stored as attachments, calls handed to the queues).
//!
//! - [`prompts`]: espeak-ng speech and prompt files as 8 kHz audio, cached.
//! - [`host`]: one task per call, from the answer to the queue and beyond.

mod host;
pub mod prompts;

use crate::state::AppState;
use crate::voice::{CallTag, VoiceService};
use continuum_ivr::{CallInfo, Facts, FetchError, FetchedDoc, Flow, Method, Program, Session};
use continuum_voice::{CallEvent, CallId};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What drives a call: a stored flow or a customer's TwiML URL.
#[derive(Debug, Clone)]
pub enum IvrProgram {
    Flow { name: String },
    Twiml { url: String, method: Method },
}

/// The call's dialled number, for the webhook's `To`.
#[derive(Debug, Clone)]
pub struct IvrCall {
    pub program: IvrProgram,
    pub called: String,
}

/// A flow's tenant and name.
type FlowKey = (String, String);

pub struct IvrHost {
    pub(crate) state: AppState,
    pub prompts: prompts::Prompts,
    http: reqwest::Client,
    /// Parsed flows by (tenant, name), with the version they were parsed from.
    flows: Mutex<HashMap<FlowKey, (i64, Arc<Flow>)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IvrError {
    #[error("no IVR flow named `{0}`: upload it with PUT /v1/ivr/flows/{{name}}")]
    NoFlow(String),
    #[error("the stored flow `{0}` no longer loads: check it with `continuum ivr check`")]
    BadFlow(String),
    #[error("{0}")]
    Store(#[from] continuum_store::StoreError),
}

impl IvrHost {
    pub fn new(state: AppState) -> Arc<IvrHost> {
        let cfg = &state.config.ivr;
        let data = &state.config.server.data_dir;
        let prompts = prompts::Prompts::new(
            cfg.cache_dir
                .clone()
                .unwrap_or_else(|| data.join("prompt-cache")),
            cfg.prompts_dir
                .clone()
                .unwrap_or_else(|| data.join("prompts")),
        );
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.webhook_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(cfg.webhook_timeout_secs.clamp(1, 5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Continuum-IVR/", env!("CARGO_PKG_VERSION")));
        if !cfg.allow_private_webhooks {
            http = http.dns_resolver(Arc::new(crate::dispatch::PublicOnlyResolver));
        }
        Arc::new(IvrHost {
            http: http.build().expect("building the IVR HTTP client"),
            prompts,
            state,
            flows: Mutex::new(HashMap::new()),
        })
    }

    /// The flow, parsed once per version.
    pub async fn flow(&self, tenant: &str, name: &str) -> Result<Arc<Flow>, IvrError> {
        let stored = self
            .state
            .store
            .get_ivr_flow(tenant, name)
            .await?
            .ok_or_else(|| IvrError::NoFlow(name.to_owned()))?;
        let key = (tenant.to_owned(), name.to_owned());
        if let Some((v, f)) = self.flows.lock().get(&key)
            && *v == stored.updated_at.0
        {
            return Ok(f.clone());
        }
        let flow = Arc::new(
            Flow::from_yaml(&stored.source).map_err(|_| IvrError::BadFlow(name.to_owned()))?,
        );
        self.flows
            .lock()
            .insert(key, (stored.updated_at.0, flow.clone()));
        Ok(flow)
    }

    /// The key TwiML requests are signed with (`X-Twilio-Signature`, as
    /// Twilio signs with an account's auth token): one per tenant, derived
    /// from its key, shown to admins at `GET /v1/ivr/webhook-signing-key`.
    pub async fn signing_key(&self, tenant: &str) -> Result<String, continuum_store::StoreError> {
        Ok(self
            .state
            .store
            .derived_secret(tenant, "ivr-webhook-signing")
            .await?
            .to_hex())
    }

    /// The policy for webhook and `<Play>` URLs: https (http only when
    /// configured), public addresses unless configured.
    pub async fn check_url(&self, url: &str) -> Result<(), FetchError> {
        let cfg = &self.state.config.ivr;
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::Refused(e.to_string()))?;
        if parsed.scheme() == "http" && !cfg.allow_http_webhooks {
            return Err(FetchError::Refused(
                "plain http is refused (the request carries the caller's number): use https, or set ivr.allow_http_webhooks for testing".into(),
            ));
        }
        let allow_http: Vec<String> = parsed.host_str().map(str::to_owned).into_iter().collect();
        crate::dispatch::check_target(url, cfg.allow_private_webhooks, &allow_http)
            .await
            .map_err(|e| FetchError::Refused(e.replace("webhook", "TwiML webhook")))
    }

    /// Requests TwiML the way Twilio does: form-encoded parameters (POST) or
    /// a query (GET), signed with the tenant's key.
    pub async fn fetch_twiml(
        &self,
        tenant: &str,
        url: &str,
        method: Method,
        params: &[(String, String)],
    ) -> Result<FetchedDoc, FetchError> {
        self.check_url(url).await?;
        let key = self
            .signing_key(tenant)
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let started = Instant::now();
        let req = match method {
            Method::Post => {
                let signature =
                    continuum_messaging::twilio::signature::signature(&key, url, params);
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(params)
                    .finish();
                self.http
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-twilio-signature", signature)
                    .body(body)
            }
            Method::Get => {
                let mut full =
                    reqwest::Url::parse(url).map_err(|e| FetchError::Refused(e.to_string()))?;
                full.query_pairs_mut().extend_pairs(params);
                let no_params: [(&str, &str); 0] = [];
                let signature = continuum_messaging::twilio::signature::signature(
                    &key,
                    full.as_str(),
                    &no_params,
                );
                self.http.get(full).header("x-twilio-signature", signature)
            }
        };
        let outcome = async {
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    FetchError::Timeout
                } else {
                    FetchError::Transport(e.without_url().to_string())
                }
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = host::read_capped(resp, host::MAX_TWIML_BYTES)
                .await
                .map_err(|e| {
                    if e.starts_with("larger") {
                        FetchError::TooLarge
                    } else {
                        FetchError::Transport(e)
                    }
                })?;
            Ok(FetchedDoc {
                body: String::from_utf8_lossy(&body).into_owned(),
                content_type,
            })
        }
        .await;
        let label = if outcome.is_ok() { "ok" } else { "error" };
        metrics::counter!("continuum_ivr_webhook_requests_total", "outcome" => label).increment(1);
        metrics::histogram!("continuum_ivr_webhook_seconds")
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// What the conversation already knows, for the flow's conditions.
    async fn facts_context(&self, tag: &CallTag) -> BTreeSet<String> {
        let mut known = BTreeSet::new();
        let Ok(ctx) = self
            .state
            .store
            .context(&tag.tenant_id, &tag.conversation_id, 20, "system:ivr")
            .await
        else {
            return known;
        };
        use continuum_core::{ActorType, Channel, ConversationState, EventKind};
        if ctx.conversation.state != ConversationState::Closed {
            known.insert("open_conversation".to_owned());
        }
        if ctx
            .recent_events
            .iter()
            .any(|e| !matches!(e.channel, Channel::Voice | Channel::Ivr | Channel::System))
        {
            known.insert("known_caller".to_owned());
        }
        // The care team's last message has had no answer from the patient.
        let last_message = ctx
            .recent_events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Message);
        if last_message.is_some_and(|m| m.actor.actor_type != ActorType::Patient) {
            known.insert("unanswered_message".to_owned());
        }
        known
    }

    /// Starts the IVR on an answered call; the caller's events go to the
    /// returned sender.
    pub async fn start(
        self: &Arc<Self>,
        voice: Arc<VoiceService>,
        tag: CallTag,
        call: CallId,
        ivr: IvrCall,
    ) -> Result<mpsc::UnboundedSender<CallEvent>, IvrError> {
        let program = match &ivr.program {
            IvrProgram::Flow { name } => Program::Flow(self.flow(&tag.tenant_id, name).await?),
            IvrProgram::Twiml { url, method } => Program::Webhook {
                url: url.clone(),
                method: *method,
            },
        };
        let info = CallInfo {
            call_sid: format!("CA{}", tag.call_id.replace('-', "")),
            account_sid: format!("AC{}", tag.tenant_id.replace('-', "")),
            from: tag.remote.clone(),
            to: ivr.called.clone(),
            direction: "inbound".into(),
            caller_name: None,
            forwarded_from: None,
        };
        let mut facts = Facts::new(jiff::Timestamp::now(), info);
        facts.context = self.facts_context(&tag).await;
        let mut calendar_problem = None;
        if let Program::Flow(flow) = &program
            && let Some(continuum_ivr::flow::Hours::Named(name)) = &flow.hours
        {
            match self.state.store.get_calendar(&tag.tenant_id, name).await {
                Ok(Some(c)) => match continuum_ivr::load_calendar(&c.source) {
                    Ok(cal) => facts.calendar = Some(Arc::new(cal)),
                    Err(_) => {
                        calendar_problem = Some(format!(
                            "the business-hours calendar `{name}` no longer loads: the clinic counts as open"
                        ))
                    }
                },
                _ => {
                    calendar_problem = Some(format!(
                        "no business-hours calendar `{name}`: the clinic counts as open"
                    ))
                }
            }
        }
        let (tx, events) = mpsc::unbounded_channel();
        let (fetched_tx, fetched_rx) = mpsc::unbounded_channel();
        metrics::counter!("continuum_ivr_calls_total").increment(1);
        let run = host::CallRun {
            host: self.clone(),
            voice,
            session: Session::new(program, facts, Instant::now()),
            tag,
            call,
            events,
            written: 0,
            playing: None,
            recording: None,
            fetched_tx,
            fetched_rx,
        };
        tokio::spawn(async move {
            let _live = LiveCall::new();
            run.run(calendar_problem).await
        });
        Ok(tx)
    }
}

/// Counts calls in the IVR or waiting in a queue (a gauge).
struct LiveCall;

impl LiveCall {
    fn new() -> LiveCall {
        metrics::gauge!("continuum_ivr_calls_active").increment(1.0);
        LiveCall
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        metrics::gauge!("continuum_ivr_calls_active").decrement(1.0);
    }
}
