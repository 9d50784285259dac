//! The client against a third-party SMSC: `tests/peers/smsc.mjs`, built on
//! the npm package `smpp` (node-smpp). Its decoding of what we send (GSM
//! 03.38, UCS-2, UDH) and its encoding of what it sends us (receipts,
//! handset messages) are independent of ours.

mod smsc;

use continuum_smpp::{
    Client, ClientConfig, Incoming, LinkState, MessageState, Receipt, SmppError, SubmitRequest,
    io::Disposition,
};
use serde_json::{Value, json};
use smsc::{Smsc, WAIT};
use std::time::Duration;
use tokio::sync::mpsc;

fn config(port: u16) -> ClientConfig {
    let mut c = ClientConfig::new("127.0.0.1", port, "esme", "secret");
    c.reconnect_backoff_min = Duration::from_millis(50);
    c.reconnect_backoff_max = Duration::from_millis(400);
    c.session.response_timeout = Duration::from_secs(3);
    c.session.throttle_backoff = Duration::from_millis(300);
    c
}

fn start(config: ClientConfig) -> (Client, mpsc::Receiver<Incoming>) {
    Client::start(config).expect("valid config")
}

fn req(destination: &str, text: &str) -> SubmitRequest {
    SubmitRequest {
        source: "Clinic".into(),
        destination: destination.into(),
        text: text.into(),
        registered_delivery: true,
    }
}

/// Waits until the client has bound `binds` times and is bound now.
async fn bound(client: &Client, binds: u64) {
    let mut link = client.link();
    tokio::time::timeout(
        WAIT,
        link.wait_for(|s| s.state == LinkState::Bound && s.binds >= binds),
    )
    .await
    .unwrap_or_else(|_| panic!("not bound {binds} times: {:?}", *client.link().borrow()))
    .unwrap();
}

async fn incoming(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("something from the SMSC in time")
        .expect("the client is running")
}

async fn receipt(rx: &mut mpsc::Receiver<Incoming>) -> Receipt {
    match incoming(rx).await {
        Incoming::Receipt(r) => r,
        other => panic!("expected a receipt, got {other:?}"),
    }
}

fn udh_of(v: &Value) -> String {
    v["udh"][0].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn binds_sends_a_short_gsm_message_gets_its_receipt_and_unbinds() {
    let mut smsc = Smsc::start(&[]).await;
    let (client, mut rx) = start(config(smsc.port));
    bound(&client, 1).await;
    let bind = smsc
        .wait_for("bind", |v| v["command"] == "bind_transceiver")
        .await;
    assert_eq!(bind["system_id"], "esme");
    assert_eq!(bind["password"], "secret");
    assert_eq!(bind["interface_version"], 0x34);

    // Extension-table characters (€ { } [ ] ~ ^ | \) count as two septets.
    let text = "Hi Ana, your visit is at 10:30 @ Room 4 {bring ID} [€5 copay] ~^|\\ ¿Ñ?";
    let out = client.submit(req("+15551230000", text)).await.unwrap();
    assert_eq!(out.message_ids.len(), 1);
    let sub = smsc
        .wait_for("submit_sm", |v| v["command"] == "submit_sm")
        .await;
    // node-smpp's GSM 03.38 decoder reads back exactly our text.
    assert_eq!(sub["text"], text);
    assert_eq!(sub["data_coding"], 0);
    assert_eq!(sub["esm_class"], 0);
    assert_eq!(sub["udh"], json!([]));
    assert_eq!(sub["registered_delivery"], 1);
    assert_eq!(
        (
            &sub["destination_addr"],
            &sub["dest_addr_ton"],
            &sub["dest_addr_npi"]
        ),
        (&json!("15551230000"), &json!(1), &json!(1))
    );
    assert_eq!(
        (&sub["source_addr"], &sub["source_addr_ton"]),
        (&json!("Clinic"), &json!(5))
    );
    assert_eq!(sub["message_id"], json!(out.message_ids[0]));

    let r = receipt(&mut rx).await;
    assert_eq!(r.message_id, out.message_ids[0]);
    assert_eq!(r.state, MessageState::Delivered);
    assert_eq!(r.error, None);
    smsc.wait_for("deliver_sm_resp", |v| {
        v["command"] == "deliver_sm_resp" && v["command_status"] == 0
    })
    .await;

    client.shutdown().await;
    smsc.wait_for("unbind", |v| v["command"] == "unbind").await;
    assert_eq!(client.link().borrow().state, LinkState::Stopped);
}

#[tokio::test]
async fn a_refused_bind_is_retried_with_backoff_and_wrong_credentials_never_bind() {
    let mut smsc = Smsc::start(&["--reject-binds", "2"]).await;
    let (client, _rx) = start(config(smsc.port));
    bound(&client, 1).await;
    assert_eq!(smsc.pdus("bind_transceiver").len(), 3);
    let status = client.link().borrow().clone();
    assert_eq!(status.binds, 1);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ESME_RBINDFAIL")),
        "{status:?}"
    );

    let mut smsc = Smsc::start(&["--password", "other"]).await;
    let mut c = config(smsc.port);
    c.submit_timeout = Duration::from_millis(800);
    let (client, _rx) = start(c);
    let err = client.submit(req("+15551230000", "hi")).await.unwrap_err();
    assert_eq!(
        err,
        SmppError::NotSent {
            reason: "no bound SMPP link within submit_timeout"
        }
    );
    assert_eq!(err.disposition(), Disposition::Retry);
    assert!(smsc.pdus("bind_transceiver").len() >= 2, "it keeps trying");
    let status = client.link().borrow().clone();
    assert_eq!(status.binds, 0);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ESME_RINVPASWD")),
        "{status:?}"
    );
    assert!(smsc.pdus("submit_sm").is_empty());
}

#[tokio::test]
async fn a_long_gsm_message_goes_as_three_segments_each_with_a_receipt() {
    let mut smsc = Smsc::start(&[]).await;
    let (client, mut rx) = start(config(smsc.port));
    let text = "Reminder: fast for 8 hours before your procedure tomorrow. ".repeat(7);
    assert!(text.len() > 306 && text.len() <= 459);
    let out = client.submit(req("+15551230000", &text)).await.unwrap();
    assert_eq!(out.message_ids.len(), 3);

    let mut segs = Vec::new();
    for _ in 0..3 {
        segs.push(
            smsc.wait_for("segment", |v| v["command"] == "submit_sm")
                .await,
        );
    }
    // node-smpp lists the UDH's information elements: 00 03 ref total seq.
    let reference = &udh_of(&segs[0])[4..6];
    let mut joined = String::new();
    for (i, seg) in segs.iter().enumerate() {
        assert_eq!(seg["esm_class"].as_u64().unwrap() & 0x40, 0x40);
        assert_eq!(seg["data_coding"], 0);
        assert_eq!(udh_of(seg), format!("0003{reference}030{}", i + 1));
        assert_eq!(seg["message_id"], json!(out.message_ids[i]));
        joined.push_str(seg["text"].as_str().unwrap());
    }
    assert_eq!(segs[0]["text"].as_str().unwrap().chars().count(), 153);
    assert_eq!(joined, text);

    // One receipt per segment, each naming one of the submit's ids.
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..3 {
        let r = receipt(&mut rx).await;
        assert_eq!(r.state, MessageState::Delivered);
        ids.push(r.message_id);
    }
    ids.sort();
    let mut expected = out.message_ids.clone();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_long_ucs2_message_keeps_emoji_and_scripts_whole() {
    let mut smsc = Smsc::start(&[]).await;
    let (client, _rx) = start(config(smsc.port));
    // 2 + 1 UTF-16 units per repetition: 😀 is a surrogate pair.
    let text = format!(
        "Здравствуйте! 您好 👋🏽 {} — ваш визит подтверждён ✅",
        "😀я".repeat(30)
    );
    let units = text.encode_utf16().count();
    assert!(units > 134 && units <= 201, "{units}");
    let out = client.submit(req("15551230000", &text)).await.unwrap();
    assert_eq!(out.message_ids.len(), 3);
    let mut joined = String::new();
    let mut reference = None;
    for i in 1..=3 {
        let seg = smsc
            .wait_for("segment", |v| v["command"] == "submit_sm")
            .await;
        assert_eq!(seg["data_coding"], 8);
        assert_eq!(seg["dest_addr_ton"], 0, "plain digits are left to the SMSC");
        let udh = udh_of(&seg);
        assert_eq!(&udh[..4], "0003");
        assert_eq!(&udh[6..], format!("030{i}"));
        assert_eq!(*reference.get_or_insert(udh[4..6].to_owned()), udh[4..6]);
        // node-smpp decodes each segment alone: no surrogate pair was cut.
        let part = seg["text"].as_str().unwrap();
        assert!(!part.contains('\u{FFFD}'), "segment {i}: {part:?}");
        assert!(part.encode_utf16().count() <= 67);
        joined.push_str(part);
    }
    assert_eq!(joined, text);
}

#[tokio::test]
async fn text_only_receipts_and_failed_deliveries_are_correlated() {
    let mut smsc = Smsc::start(&["--receipts", "text"]).await;
    let (client, mut rx) = start(config(smsc.port));
    let ok = client.submit(req("+15551230000", "one")).await.unwrap();
    let first = receipt(&mut rx).await;
    let failed = client.submit(req("+9995550000", "two")).await.unwrap();
    let second = receipt(&mut rx).await;
    assert_eq!(
        first,
        Receipt {
            message_id: ok.message_ids[0].clone(),
            state: MessageState::Delivered,
            error: None
        }
    );
    assert_eq!(
        second,
        Receipt {
            message_id: failed.message_ids[0].clone(),
            state: MessageState::Undeliverable,
            error: Some("001".into())
        }
    );
    // No receipt was asked for: none comes.
    let mut quiet = req("+15551230000", "three");
    quiet.registered_delivery = false;
    client.submit(quiet).await.unwrap();
    let sub = smsc
        .wait_for("submit_sm", |v| {
            v["command"] == "submit_sm" && v["text"] == "three"
        })
        .await;
    assert_eq!(sub["registered_delivery"], 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn handset_messages_single_and_concatenated_are_delivered_whole() {
    let mut smsc = Smsc::start(&[]).await;
    let (client, mut rx) = start(config(smsc.port));
    bound(&client, 1).await;
    // The stand-in sends on the session once its bind is answered.
    smsc.wait_for("bind answered", |v| v["command"] == "bind_transceiver_resp")
        .await;

    smsc.command(json!({"cmd": "mo", "from": "15557654321", "to": "12345",
        "text": "Running 5 min late, sorry! @ £ §", "coding": "gsm"}))
        .await;
    let Incoming::Message(m) = incoming(&mut rx).await else {
        panic!("expected a message");
    };
    assert_eq!((m.from.as_str(), m.to.as_str()), ("15557654321", "12345"));
    assert_eq!(m.text, "Running 5 min late, sorry! @ £ §");
    assert!(!m.incomplete);

    let long = "Спасибо, доктор! Можно перенести приём на пятницу? 🙏 ".repeat(4);
    smsc.command(json!({"cmd": "mo", "from": "15557654321", "to": "12345",
        "text": long, "coding": "ucs2", "parts": 3, "reverse": true}))
        .await;
    let Incoming::Message(m) = incoming(&mut rx).await else {
        panic!("expected a message");
    };
    assert_eq!(m.text, long);
    assert!(!m.incomplete);

    let gsm = "Line one. ".repeat(40);
    smsc.command(json!({"cmd": "mo", "from": "15550001111", "to": "12345",
        "text": gsm, "coding": "gsm", "parts": 3}))
        .await;
    let Incoming::Message(m) = incoming(&mut rx).await else {
        panic!("expected a message");
    };
    assert_eq!(m.text, gsm);
    // Every deliver_sm was acknowledged.
    for _ in 0..7 {
        smsc.wait_for("deliver_sm_resp", |v| {
            v["command"] == "deliver_sm_resp" && v["command_status"] == 0
        })
        .await;
    }
}

#[tokio::test]
async fn throttled_submits_are_retried_after_a_backoff_and_accepted() {
    let mut smsc = Smsc::start(&["--throttle", "2,3"]).await;
    let (client, _rx) = start(config(smsc.port));
    bound(&client, 1).await;
    let texts = ["first", "second", "third"];
    let outcomes = futures_join(&client, &texts).await;
    for o in &outcomes {
        assert_eq!(o.as_ref().unwrap().message_ids.len(), 1);
    }
    let subs = smsc.pdus("submit_sm");
    let answers: Vec<(&str, &str)> = subs
        .iter()
        .map(|v| (v["text"].as_str().unwrap(), v["answer"].as_str().unwrap()))
        .collect();
    // Submits 2 and 3 were throttled (whichever messages they carried),
    // then both messages went again after the pause.
    assert_eq!(answers.iter().filter(|a| a.1 == "throttled").count(), 2);
    for t in texts {
        assert!(answers.contains(&(t, "ok")), "{t} accepted: {answers:?}");
    }
    assert_eq!(subs.len(), 5);
    // The retry came after the pause, not at once.
    let throttled_at = subs
        .iter()
        .filter(|v| v["answer"] == "throttled")
        .map(|v| v["at"].as_u64().unwrap())
        .max()
        .unwrap();
    let retried_at = subs
        .iter()
        .filter(|v| v["answer"] == "ok")
        .map(|v| v["at"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        retried_at >= throttled_at + 250,
        "retried {} ms after the throttling answer",
        retried_at - throttled_at
    );
}

async fn futures_join(
    client: &Client,
    texts: &[&str],
) -> Vec<Result<continuum_smpp::SubmitOutcome, SmppError>> {
    let mut tasks = Vec::new();
    for t in texts {
        let client = client.clone();
        let r = req("+15551230000", t);
        tasks.push(tokio::spawn(async move { client.submit(r).await }));
        // Keep the order of submission.
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_drop_mid_window_leaves_in_flight_messages_unconfirmed_then_reconnects() {
    let mut smsc = Smsc::start(&["--drop-after", "2", "--drop-hold", "3"]).await;
    let mut c = config(smsc.port);
    c.session.window = 5;
    let (client, _rx) = start(c);
    bound(&client, 1).await;
    let texts = ["m1", "m2", "m3", "m4", "m5"];
    let outcomes = futures_join(&client, &texts).await;
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let unconfirmed: Vec<&SmppError> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(ok, 2, "{outcomes:?}");
    assert_eq!(unconfirmed.len(), 3, "{outcomes:?}");
    for e in unconfirmed {
        assert_eq!(*e, SmppError::Unconfirmed);
        assert_eq!(e.disposition(), Disposition::Unconfirmed);
    }
    smsc.wait_for("drop", |v| v["event"] == "dropped").await;

    // It reconnects, binds again, and later messages go through.
    bound(&client, 2).await;
    let out = client.submit(req("+15551230000", "after")).await.unwrap();
    assert_eq!(out.message_ids.len(), 1);
    assert_eq!(smsc.pdus("bind_transceiver").len(), 2);
    let connects = smsc.seen.iter().filter(|v| v["event"] == "connect").count();
    assert_eq!(connects, 2);
    assert_eq!(
        client.link().borrow().last_error.as_deref(),
        Some("connection lost")
    );
}

#[tokio::test]
async fn messages_submitted_while_down_wait_for_the_next_bind() {
    let mut smsc = Smsc::start(&["--reject-binds", "1"]).await;
    let (client, _rx) = start(config(smsc.port));
    // Submitted before any bind; the first bind is refused.
    let out = client.submit(req("+15551230000", "patient")).await.unwrap();
    assert_eq!(out.message_ids.len(), 1);
    assert_eq!(smsc.pdus("submit_sm").len(), 1);
    assert_eq!(client.link().borrow().binds, 1);
}

#[tokio::test]
async fn enquire_link_keeps_the_link_up_and_a_silent_smsc_is_left() {
    let mut smsc = Smsc::start(&[]).await;
    let mut c = config(smsc.port);
    c.session.enquire_link_interval = Duration::from_millis(150);
    c.session.response_timeout = Duration::from_millis(600);
    let (client, _rx) = start(c);
    bound(&client, 1).await;
    for _ in 0..4 {
        smsc.wait_for("enquire_link", |v| v["command"] == "enquire_link")
            .await;
    }
    assert_eq!(client.link().borrow().binds, 1);
    // The SMSC's own enquire_link is answered.
    smsc.command(json!({"cmd": "enquire_link"})).await;
    smsc.wait_for("enquire_link_resp", |v| v["command"] == "enquire_link_resp")
        .await;
    client
        .submit(req("+15551230000", "still up"))
        .await
        .unwrap();

    // An SMSC that stops answering is declared dead; the client binds anew.
    smsc.command(json!({"cmd": "mute"})).await;
    bound(&client, 2).await;
    assert_eq!(
        client.link().borrow().last_error.as_deref(),
        Some("enquire_link went unanswered")
    );
    client
        .submit(req("+15551230000", "new link"))
        .await
        .unwrap();
}
