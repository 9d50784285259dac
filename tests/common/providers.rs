//! Stand-ins for messaging providers' HTTP APIs (Twilio's Messages API and
//! Meta's WhatsApp Cloud API shapes), scripted to accept, fail, rate-limit
//! or hang, recording every request they get; and Twilio signatures made by
//! the official `twilio` PyPI package.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Environment for a server whose providers are stand-ins on loopback over
/// plain http (refused by default), plus `extra`.
pub fn local_providers_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "CONTINUUM_MESSAGING__ALLOW_PRIVATE_PROVIDERS".into(),
            "true".into(),
        ),
        (
            "CONTINUUM_MESSAGING__ALLOW_HTTP_HOSTS".into(),
            r#"["127.0.0.1"]"#.into(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// What the stand-in does with one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Accept,
    /// Accept after a pause (to keep requests in flight).
    SlowAccept(Duration),
    /// HTTP 500.
    Fail,
    /// HTTP 429 with `Retry-After`.
    RateLimit(u64),
    /// Twilio's error JSON with this HTTP status and code (e.g. 400, 21211).
    Reject(u16, u32),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub form: Vec<(String, String)>,
    pub json: Option<Value>,
    pub authorization: Option<String>,
    /// What the stand-in answered (`accepted` with the sid, or the failure).
    pub answered: String,
}

impl Request {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Our message id, from the StatusCallback URL (`…?message=<id>`).
    pub fn our_id(&self) -> Option<String> {
        let cb = self.field("StatusCallback")?;
        cb.split_once("message=").map(|(_, v)| v.to_owned())
    }
}

#[derive(Default)]
struct Inner {
    plan: VecDeque<Behaviour>,
    default: Option<Behaviour>,
    requests: Vec<Request>,
    seq: u64,
}

#[derive(Clone)]
pub struct StandIn {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    pub arrived: Arc<Notify>,
}

impl StandIn {
    pub async fn start() -> StandIn {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let arrived = Arc::new(Notify::new());
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                axum::routing::post(twilio),
            )
            .route("/{version}/{phone}/messages", axum::routing::post(meta))
            .with_state((inner.clone(), arrived.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn {
            base,
            inner,
            arrived,
        }
    }

    /// Behaviours for the next requests, in order; then `default` (accept).
    pub fn plan(&self, next: impl IntoIterator<Item = Behaviour>) {
        self.inner.lock().unwrap().plan.extend(next);
    }

    pub fn set_default(&self, b: Behaviour) {
        self.inner.lock().unwrap().default = Some(b);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Requests the stand-in accepted.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.answered.starts_with("accepted"))
            .collect()
    }

    /// Waits until `done(requests)` holds (15 s at most).
    pub async fn wait_for(&self, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let notified = self.arrived.notified();
            let now = self.requests();
            if done(&now) || tokio::time::Instant::now() > deadline {
                return now;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

type Shared = (Arc<Mutex<Inner>>, Arc<Notify>);

fn next_behaviour(inner: &Mutex<Inner>) -> (Behaviour, u64) {
    let mut i = inner.lock().unwrap();
    i.seq += 1;
    let b = i
        .plan
        .pop_front()
        .or_else(|| i.default.clone())
        .unwrap_or(Behaviour::Accept);
    (b, i.seq)
}

async fn answer(state: &Shared, mut req: Request, accepted: impl Fn(u64) -> Value) -> Response {
    let (b, seq) = next_behaviour(&state.0);
    if let Behaviour::SlowAccept(d) = &b {
        tokio::time::sleep(*d).await;
    }
    let (resp, answered) = match b {
        Behaviour::Accept | Behaviour::SlowAccept(_) => (
            (StatusCode::CREATED, axum::Json(accepted(seq))).into_response(),
            format!("accepted {seq}"),
        ),
        Behaviour::Fail => (
            (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            "500".into(),
        ),
        Behaviour::RateLimit(secs) => (
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                axum::Json(json!({"code": 20429, "message": "Too Many Requests", "status": 429})),
            )
                .into_response(),
            "429".into(),
        ),
        Behaviour::Reject(status, code) => (
            (
                StatusCode::from_u16(status).unwrap(),
                axum::Json(json!({"code": code, "message": "refused", "status": status,
                    "error": {"code": code, "message": "refused"}})),
            )
                .into_response(),
            format!("rejected {code}"),
        ),
        Behaviour::Hang => {
            req.answered = "hang".into();
            state.0.lock().unwrap().requests.push(req);
            state.1.notify_waiters();
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    req.answered = answered;
    state.0.lock().unwrap().requests.push(req);
    state.1.notify_waiters();
    resp
}

async fn twilio(
    State(state): State<Shared>,
    Path(_sid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let req = Request {
        form,
        json: None,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        answered: String::new(),
    };
    answer(
        &state,
        req,
        |seq| json!({"sid": format!("SM{seq:032}"), "status": "queued"}),
    )
    .await
}

async fn meta(
    State(state): State<Shared>,
    Path((_v, _phone)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req = Request {
        form: vec![],
        json: serde_json::from_slice(&body).ok(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        answered: String::new(),
    };
    answer(&state, req, |seq| {
        json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.{seq}")}]})
    })
    .await
}

/// `X-Twilio-Signature` for `url` and `params`, computed by the official
/// `twilio` package's `RequestValidator` (an implementation we did not write).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-peers/bin/python");
    let script = r#"
import json, sys
from twilio.request_validator import RequestValidator
req = json.load(sys.stdin)
print(RequestValidator(req["token"]).compute_signature(req["url"], dict(req["params"])))
"#;
    let input = json!({"token": auth_token, "url": url, "params": params}).to_string();
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running .venv-peers/bin/python (scripts/test installs the twilio package there)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "twilio's RequestValidator failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
