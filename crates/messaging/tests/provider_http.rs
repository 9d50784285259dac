//! The HTTP providers against a stand-in (axum on 127.0.0.1:0) that
//! accepts, fails, rate-limits, refuses and hangs, chosen by the last three
//! digits of the recipient's number. Checks the requests (Basic auth /
//! bearer, form fields, repeated MediaUrl, Meta's JSON) and the mapping of
//! every answer onto `SendError`, then runs the retry/failover policy over
//! a chain the way the outbox worker will.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use continuum_messaging::policy::{Attempt, Failure, Next, RetryPolicy};
use continuum_messaging::types::{Address, Form, MessageChannel, OutboundMessage, Template};
use continuum_messaging::{
    FailureClass, HttpTimeouts, MetaConfig, MetaWhatsAppProvider, PermanentCause, Provider,
    ProviderId, ProviderSet, SendError, TwilioConfig, TwilioProvider,
};
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

#[derive(Clone, Default)]
struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The behaviour a recipient number asks for.
fn behaviour(to: &str) -> &str {
    &to[to.len().saturating_sub(3)..]
}

async fn twilio(to: String) -> Response {
    let json = |status: StatusCode, body: &str| {
        (
            status,
            [("content-type", "application/json")],
            body.to_owned(),
        )
            .into_response()
    };
    match behaviour(&to) {
        "201" => json(
            StatusCode::CREATED,
            r#"{"sid":"SM0123456789abcdef0123456789abcdef","status":"queued","to":"+15550000201"}"#,
        ),
        "500" => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":20500,"message":"Internal Server Error","status":500}"#,
        ),
        "429" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7"), ("content-type", "application/json")],
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
        )
            .into_response(),
        "400" => json(
            StatusCode::BAD_REQUEST,
            r#"{"code":21211,"message":"The 'To' number +15550000400 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
        ),
        "610" => json(
            StatusCode::BAD_REQUEST,
            r#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#,
        ),
        "401" => json(
            StatusCode::UNAUTHORIZED,
            r#"{"code":20003,"message":"Authenticate","status":401}"#,
        ),
        "999" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            json(StatusCode::CREATED, r#"{"sid":"SMlate"}"#)
        }
        _ => json(StatusCode::CREATED, r#"{"no_sid":true}"#),
    }
}

async fn meta(to: String) -> Response {
    let json = |status: StatusCode, body: &str| {
        (
            status,
            [("content-type", "application/json")],
            body.to_owned(),
        )
            .into_response()
    };
    let error = |status, code: u32, message: &str| {
        json(
            status,
            &format!(
                r#"{{"error":{{"message":"{message}","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"{message}"}},"fbtrace_id":"AbCdEf"}}}}"#
            ),
        )
    };
    match behaviour(&to) {
        "201" => json(
            StatusCode::OK,
            &format!(
                r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"{to}","wa_id":"{to}"}}],"messages":[{{"id":"wamid.OK{to}","message_status":"accepted"}}]}}"#
            ),
        ),
        "500" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            131000,
            "Something went wrong",
        ),
        "429" => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, 130429, "Rate limit hit");
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            r
        }
        "400" => error(StatusCode::BAD_REQUEST, 131026, "Message undeliverable"),
        "047" => error(StatusCode::BAD_REQUEST, 131047, "Re-engagement message"),
        "401" => error(StatusCode::UNAUTHORIZED, 190, "Access token has expired"),
        "999" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            json(StatusCode::OK, r#"{"messages":[{"id":"wamid.late"}]}"#)
        }
        _ => json(StatusCode::OK, r#"{"messaging_product":"whatsapp"}"#),
    }
}

async fn handle(
    State(s): State<StandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    s.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.clone(),
    });
    if uri.path().ends_with("/Messages.json") {
        let to = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        twilio(to).await
    } else if uri.path().ends_with("/messages") {
        let to = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j["to"].as_str().map(str::to_owned))
            .unwrap_or_default();
        meta(to).await
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn start() -> (StandIn, String) {
    let state = StandIn::default();
    let app = Router::new().fallback(handle).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (state, format!("http://{addr}"))
}

const TIMEOUTS: HttpTimeouts = HttpTimeouts {
    connect_ms: 1_000,
    request_ms: 500,
};

fn twilio_provider(id: &str, base: &str) -> TwilioProvider {
    TwilioProvider::new(&TwilioConfig {
        id: id.into(),
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        auth_token: "s3cr3t-token".into(),
        api_base: base.into(),
        messaging_service_sid: None,
        default_from: Some("+15550009999".into()),
        channels: vec![MessageChannel::Sms, MessageChannel::Whatsapp],
        timeouts: TIMEOUTS,
    })
    .unwrap()
}

fn meta_provider(base: &str) -> MetaWhatsAppProvider {
    MetaWhatsAppProvider::new(&MetaConfig {
        id: "meta".into(),
        access_token: "EAAG-token".into(),
        phone_number_id: "106540352242922".into(),
        app_secret: "app".into(),
        verify_token: "verify".into(),
        api_version: "v23.0".into(),
        api_base: base.into(),
        timeouts: TIMEOUTS,
    })
    .unwrap()
}

fn sms(to: &str) -> OutboundMessage {
    OutboundMessage {
        id: "msg-1".into(),
        channel: MessageChannel::Sms,
        from: None,
        to: Address::Phone(to.into()),
        body: "Your visit is at 9:00. Reply C to confirm, R to reschedule.".into(),
        media_urls: vec![],
        template: None,
        form: Form::Session,
        status_callback: Some("https://care.example/webhooks/twilio/status?m=msg-1".into()),
    }
}

fn whatsapp(to: &str) -> OutboundMessage {
    OutboundMessage {
        channel: MessageChannel::Whatsapp,
        to: Address::Whatsapp(to.into()),
        status_callback: None,
        ..sms(to)
    }
}

#[tokio::test]
async fn twilio_request_shape_and_answers() {
    let (stand_in, base) = start().await;
    let p = twilio_provider("twilio", &base);

    // Accepted: an MMS with two media.
    let mut m = sms("+15550000201");
    m.media_urls = vec![
        "https://cdn.example/a.png".into(),
        "https://cdn.example/b.pdf".into(),
    ];
    let sent = p.send(&m).await.unwrap();
    assert_eq!(
        sent.provider_message_id,
        "SM0123456789abcdef0123456789abcdef"
    );
    let req = stand_in.requests().pop().unwrap();
    assert_eq!(req.method, Method::POST);
    assert_eq!(
        req.path,
        "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
    );
    let basic = base64::engine::general_purpose::STANDARD
        .encode("AC0123456789abcdef0123456789abcdef:s3cr3t-token");
    assert_eq!(req.authorization, Some(format!("Basic {basic}")));
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |k: &str| -> Vec<&str> {
        form.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(field("To"), ["+15550000201"]);
    assert_eq!(field("From"), ["+15550009999"]);
    assert_eq!(field("Body"), [m.body.as_str()]);
    assert_eq!(
        field("MediaUrl"),
        ["https://cdn.example/a.png", "https://cdn.example/b.pdf"],
        "MediaUrl repeated, in order"
    );
    assert_eq!(
        field("StatusCallback"),
        ["https://care.example/webhooks/twilio/status?m=msg-1"]
    );

    // WhatsApp through Twilio: whatsapp: addresses on both ends.
    p.send(&whatsapp("+15550000201")).await.unwrap();
    let req = stand_in.requests().pop().unwrap();
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    assert!(form.contains(&("To".into(), "whatsapp:+15550000201".into())));
    assert!(form.contains(&("From".into(), "whatsapp:+15550009999".into())));

    // Failures.
    assert!(matches!(
        p.send(&sms("+15550000500")).await,
        Err(SendError::Retryable {
            retry_after: None,
            ..
        })
    ));
    assert!(matches!(
        p.send(&sms("+15550000429")).await,
        Err(SendError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(7)
    ));
    let e = p.send(&sms("+15550000400")).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent { cause: PermanentCause::Recipient, code: Some(c), .. } if c == "21211"),
        "{e:?}"
    );
    assert!(
        !e.to_string().contains("+1555"),
        "the number in Twilio's message is not copied: {e}"
    );
    assert!(matches!(
        p.send(&sms("+15550000610")).await,
        Err(SendError::Permanent {
            cause: PermanentCause::OptedOut,
            ..
        })
    ));
    assert!(matches!(
        p.send(&sms("+15550000401")).await,
        Err(SendError::Permanent {
            cause: PermanentCause::Provider,
            ..
        })
    ));
    assert!(
        matches!(
            p.send(&sms("+15550000777")).await,
            Err(SendError::Unconfirmed { .. })
        ),
        "2xx without a sid"
    );

    // Hangs past the request timeout: the provider may have sent it.
    let start = Instant::now();
    assert!(matches!(
        p.send(&sms("+15550000999")).await,
        Err(SendError::Unconfirmed { .. })
    ));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the timeout fired"
    );
}

#[tokio::test]
async fn meta_request_shape_and_answers() {
    let (stand_in, base) = start().await;
    let p = meta_provider(&base);

    let sent = p.send(&whatsapp("+15550000201")).await.unwrap();
    assert_eq!(sent.provider_message_id, "wamid.OK15550000201");
    let req = stand_in.requests().pop().unwrap();
    assert_eq!(req.path, "/v23.0/106540352242922/messages");
    assert_eq!(req.authorization.as_deref(), Some("Bearer EAAG-token"));
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    let j: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(j["messaging_product"], "whatsapp");
    assert_eq!(j["to"], "15550000201");
    assert_eq!(j["type"], "text");
    assert_eq!(j["text"]["body"], whatsapp("x").body);

    // Outside the window: the template.
    let mut m = whatsapp("+15550000201");
    m.form = Form::Template;
    m.template = Some(Template {
        name: "appointment_reminder".into(),
        language: "en_US".into(),
        params: vec!["Ana".into(), "9:00".into()],
    });
    p.send(&m).await.unwrap();
    let j: serde_json::Value =
        serde_json::from_slice(&stand_in.requests().pop().unwrap().body).unwrap();
    assert_eq!(j["type"], "template");
    assert_eq!(j["template"]["name"], "appointment_reminder");
    assert_eq!(
        j["template"]["components"][0]["parameters"][1]["text"],
        "9:00"
    );

    assert!(matches!(
        p.send(&whatsapp("+15550000500")).await,
        Err(SendError::Retryable { .. })
    ));
    assert!(matches!(
        p.send(&whatsapp("+15550000429")).await,
        Err(SendError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(7)
    ));
    assert!(matches!(
        p.send(&whatsapp("+15550000400")).await,
        Err(SendError::Permanent { cause: PermanentCause::Recipient, code: Some(c), .. }) if c == "131026"
    ));
    assert!(matches!(
        p.send(&whatsapp("+15550000047")).await,
        Err(SendError::Permanent {
            cause: PermanentCause::WindowClosed,
            ..
        })
    ));
    assert!(matches!(
        p.send(&whatsapp("+15550000401")).await,
        Err(SendError::Permanent {
            cause: PermanentCause::Provider,
            ..
        })
    ));
    assert!(matches!(
        p.send(&whatsapp("+15550000777")).await,
        Err(SendError::Unconfirmed { .. })
    ));
    assert!(matches!(
        p.send(&whatsapp("+15550000999")).await,
        Err(SendError::Unconfirmed { .. })
    ));
    // SMS is not Meta's: refused as this provider's limitation (fail over).
    assert!(matches!(
        p.send(&sms("+15550000201")).await,
        Err(SendError::Permanent {
            cause: PermanentCause::Provider,
            ..
        })
    ));
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let e = twilio_provider("twilio", &base)
        .send(&sms("+15550000201"))
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::Retryable { .. }), "{e:?}");
    let e = meta_provider(&base)
        .send(&whatsapp("+15550000201"))
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::Retryable { .. }), "{e:?}");
}

/// The outbox worker's loop, in miniature: the first provider of the chain
/// is failing, the policy retries it, then fails over to the second, which
/// sends; the health of the first shows it down.
#[tokio::test]
async fn failover_along_a_chain() {
    let (_stand_in, base) = start().await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let set = ProviderSet::new(vec![
        Arc::new(twilio_provider(
            "primary",
            &format!("http://127.0.0.1:{dead_port}"),
        )),
        Arc::new(twilio_provider("secondary", &base)),
        Arc::new(meta_provider(&base)),
    ])
    .unwrap();
    let chain: Vec<ProviderId> = vec!["primary".into(), "secondary".into()];
    set.check_chain(MessageChannel::Sms, &chain).unwrap();
    assert!(
        set.check_chain(MessageChannel::Sms, &["meta".into()])
            .is_err()
    );

    let policy = RetryPolicy {
        base_delay: Duration::from_millis(1),
        ..RetryPolicy::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let msg = sms("+15550000201");
    let enqueued_at = SystemTime::now();
    let mut provider = policy
        .first(&chain, &set.unhealthy(Instant::now()))
        .unwrap();
    let mut earlier: Vec<Attempt> = Vec::new();
    let mut trail = Vec::new();
    let sent = loop {
        trail.push(provider.to_string());
        let p = set.get(&provider).unwrap();
        match p.send(&msg).await {
            Ok(sent) => break sent,
            Err(error) => {
                let unhealthy = set.unhealthy(Instant::now());
                let next = policy.next(
                    &Failure {
                        chain: &chain,
                        earlier: &earlier,
                        provider: &provider,
                        error: &error,
                        has_template: false,
                        enqueued_at,
                        now: SystemTime::now(),
                        unhealthy: &unhealthy,
                    },
                    &mut rng,
                );
                earlier.push(Attempt {
                    provider: provider.clone(),
                    failure: FailureClass::of(&error),
                });
                match next {
                    Next::RetryAt { provider: p, .. } | Next::Failover { provider: p, .. } => {
                        provider = p
                    }
                    Next::DeadLetter { reason } => panic!("dead-lettered: {reason}"),
                }
            }
        }
    };
    assert_eq!(trail, ["primary", "primary", "primary", "secondary"]);
    assert_eq!(
        sent.provider_message_id,
        "SM0123456789abcdef0123456789abcdef"
    );
    let primary = set
        .get(&"primary".into())
        .unwrap()
        .health()
        .snapshot(Instant::now());
    assert_eq!((primary.samples, primary.errors), (3, 3));
    let secondary = set
        .get(&"secondary".into())
        .unwrap()
        .health()
        .snapshot(Instant::now());
    assert_eq!(secondary.error_rate, Some(0.0));

    // Two more failures and the primary is down: new messages start on the
    // secondary.
    for _ in 0..2 {
        let _ = set.get(&"primary".into()).unwrap().send(&msg).await;
    }
    assert_eq!(
        set.unhealthy(Instant::now()),
        vec![ProviderId::from("primary")]
    );
    assert_eq!(
        policy.first(&chain, &set.unhealthy(Instant::now())),
        Some("secondary".into())
    );
}
