//! Secure chat between patients and staff, over the real sockets: a
//! clinician on the visit's signaling WebSocket (`/v1/rtc`) and a patient on
//! the conversation's chat WebSocket (`/v1/conversations/{id}/chat`) trade
//! messages with acks, typing and delivered/read receipts; a burst of 200
//! interleaved messages arrives in one seq order everywhere; a resend is
//! stored once; REST receipts only move forward and are announced on the
//! events stream; tokens reach only their conversation and tenant; patients
//! never see notes; and the patient chat page (/chat) in headless Chromium
//! chats with a clinician's WebSocket, ticks and all, at phone and desktop
//! sizes (screenshots in target/screenshots/).

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The next message of one of `types` (others are skipped), within 15 s.
async fn expect<S>(sock: &mut S, types: &[&str]) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    expect_within(sock, types, Duration::from_secs(15)).await
}

/// Like [`expect`], within `wait` (a browser on a loaded machine is slow).
async fn expect_within<S>(sock: &mut S, types: &[&str], wait: Duration) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, sock.next())
            .await
            .unwrap_or_else(|_| panic!("no {types:?} within {wait:?}"))
            .expect("the socket stays open")
            .expect("a frame");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if types.contains(&v["type"].as_str().unwrap_or("")) {
            return v;
        }
    }
}

/// Nothing of `types` arrives within `wait`.
async fn quiet(sock: &mut Signaling, types: &[&str], wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, sock.next()).await else {
            return;
        };
        let Some(Ok(Message::Text(t))) = next else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert!(
            !types.contains(&v["type"].as_str().unwrap_or("")),
            "unexpected {v}"
        );
    }
}

async fn send(sock: &mut Signaling, v: Value) {
    sock.send(Message::Text(v.to_string().into()))
        .await
        .unwrap();
}

fn ws_base(s: &Server) -> String {
    s.base.replacen("http", "ws", 1)
}

fn rtc_url(s: &Server, token: &str) -> String {
    format!("{}/v1/rtc?token={token}", ws_base(s))
}

fn chat_url(s: &Server, conv: &str, token: &str) -> String {
    format!("{}/v1/conversations/{conv}/chat?token={token}", ws_base(s))
}

struct Chat {
    s: Server,
    key: String,
    conv: String,
    room: String,
    staff: String,
    patient: String,
}

async fn mint(s: &Server, key: &str, body: Value) -> String {
    s.ok("POST", "/v1/tokens", key, Some(body)).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A patient's conversation with a visit room (no waiting room), a
/// clinician's token and the patient's, both granting the two.
async fn setup(dir: &std::path::Path) -> Chat {
    let s = Server::start(dir);
    let key = s.key().to_owned();
    let contact = s
        .ok(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": "Ana Souza", "phone": "+14155550142"})),
        )
        .await;
    let conv = s
        .ok(
            "POST",
            "/v1/conversations",
            &key,
            Some(json!({"contact_id": contact["id"], "subject": "Rash follow-up"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"waiting_room": false})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let grants = json!({"conversations": [conv], "rooms": [room]});
    let staff = mint(
        &s,
        &key,
        json!({"identity": "dr-lee", "role": "clinician", "name": "Dr. Maya Lee", "grants": grants}),
    )
    .await;
    let patient = mint(
        &s,
        &key,
        json!({"identity": "patient-ana", "role": "patient", "name": "Ana Souza", "grants": grants}),
    )
    .await;
    Chat {
        s,
        key,
        conv,
        room,
        staff,
        patient,
    }
}

/// The clinician, seated in the room: chat comes with the seat.
async fn staff_in_room(c: &Chat) -> Signaling {
    let (mut ws, welcome) = connect_signaling(rtc_url(&c.s, &c.staff)).await;
    assert_eq!(welcome["name"], "Dr. Maya Lee");
    send(
        &mut ws,
        json!({"type": "join", "room": c.room, "sdp": audio_offer()}),
    )
    .await;
    let joined = expect(&mut ws, &["joined", "error"]).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let receipts = expect(&mut ws, &["chat_receipts"]).await;
    assert_eq!(receipts["conversation"], c.conv.as_str(), "{receipts}");
    ws
}

/// The patient on the conversation's chat socket; returns the socket and
/// the messages it replayed before `chat_synced` (and that message).
async fn patient_chat(c: &Chat, token: &str) -> (Signaling, Vec<Value>, Value) {
    let (mut ws, welcome) = connect_signaling(chat_url(&c.s, &c.conv, token)).await;
    assert_eq!(welcome["conversation"], c.conv.as_str(), "{welcome}");
    assert_eq!(welcome["protocol"], 1);
    let mut replayed = Vec::new();
    loop {
        let m = expect(&mut ws, &["chat", "chat_receipts", "chat_synced"]).await;
        match m["type"].as_str().unwrap() {
            "chat" => replayed.push(m),
            "chat_synced" => return (ws, replayed, m),
            _ => {}
        }
    }
}

async fn timeline(c: &Chat) -> Vec<Value> {
    c.s.ok(
        "GET",
        &format!("/v1/conversations/{}/events?limit=500", c.conv),
        &c.key,
        None,
    )
    .await["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_and_patient_chat_with_acks_typing_and_receipts() {
    let dir = tempdir();
    let c = setup(dir.path()).await;
    let mut dr = staff_in_room(&c).await;
    let (mut ana, replayed, synced) = patient_chat(&c, &c.patient).await;
    assert!(replayed.is_empty());
    assert_eq!(synced["earlier"], false, "{synced}");

    // The patient writes: her own copy is the ack (with the stored seq),
    // and the clinician gets it with her name and role.
    let text = "Hello, the rash is itchy tonight";
    send(
        &mut ana,
        json!({"type": "chat", "body": text, "client_id": "ana-1"}),
    )
    .await;
    let ack = expect(&mut ana, &["chat", "error"]).await;
    assert_eq!(ack["type"], "chat", "{ack}");
    assert_eq!(ack["client_id"], "ana-1");
    let seq1 = ack["seq"].as_i64().unwrap();
    let got = expect(&mut dr, &["chat"]).await;
    assert_eq!(got["seq"], seq1);
    assert_eq!(got["body"], text);
    assert_eq!(got["conversation"], c.conv.as_str());
    assert_eq!(got["channel"], "chat");
    assert_eq!(
        got["from"],
        json!({"identity": "patient-ana", "name": "Ana Souza", "role": "patient", "type": "patient"})
    );

    // Delivered, then read: the patient sees the clinician's markers move.
    send(&mut dr, json!({"type": "chat_delivered", "seq": seq1})).await;
    let r = expect(&mut ana, &["chat_receipt"]).await;
    assert_eq!(
        (
            r["identity"].as_str(),
            r["role"].as_str(),
            r["delivered_seq"].as_i64(),
            r["read_seq"].as_i64()
        ),
        (Some("dr-lee"), Some("clinician"), Some(seq1), Some(0)),
        "{r}"
    );
    // Repeating a receipt changes nothing and announces nothing.
    send(&mut dr, json!({"type": "chat_delivered", "seq": seq1})).await;
    send(&mut dr, json!({"type": "chat_read", "seq": seq1})).await;
    let r = expect(&mut ana, &["chat_receipt"]).await;
    assert_eq!(
        (r["delivered_seq"].as_i64(), r["read_seq"].as_i64()),
        (Some(seq1), Some(seq1)),
        "{r}"
    );

    // Typing: passed on once, a repeat moments later is not; the typist
    // does not hear themself; a message ends it.
    send(&mut dr, json!({"type": "typing", "active": true})).await;
    let t = expect(&mut ana, &["typing"]).await;
    assert_eq!(t["identity"], "dr-lee");
    assert_eq!(t["name"], "Dr. Maya Lee");
    assert_eq!(t["active"], true);
    assert_eq!(t["conversation"], c.conv.as_str());
    assert!(t["expires_in"].as_u64().unwrap() > 0);
    send(&mut dr, json!({"type": "typing", "active": true})).await;
    send(
        &mut dr,
        json!({"type": "chat", "body": "Is it spreading?", "client_id": "dr-1"}),
    )
    .await;
    let next = expect(&mut ana, &["typing", "chat"]).await;
    assert_eq!(next["type"], "chat", "the repeat was dropped: {next}");
    assert_eq!(next["from"]["name"], "Dr. Maya Lee");
    assert_eq!(next["from"]["role"], "clinician");
    let seq2 = next["seq"].as_i64().unwrap();
    assert!(seq2 > seq1);
    let own = expect(&mut dr, &["typing", "chat"]).await;
    assert_eq!(own["type"], "chat", "no echo of one's own typing: {own}");
    assert_eq!(own["client_id"], "dr-1");
    send(&mut ana, json!({"type": "chat_read", "seq": seq2})).await;
    let r = expect(&mut dr, &["chat_receipt"]).await;
    assert_eq!(r["identity"], "patient-ana");
    assert_eq!(r["read_seq"], seq2);
    assert_eq!(r["delivered_seq"], seq2, "read implies delivered");

    // A resend after a reconnect (same client_id) is stored once: the
    // sender gets the original as its ack, nobody gets it twice.
    let (mut ana2, replayed, _) = patient_chat(&c, &c.patient).await;
    assert_eq!(replayed.len(), 2, "history on connecting: {replayed:?}");
    assert_eq!(replayed[0]["seq"], seq1);
    assert_eq!(replayed[1]["seq"], seq2);
    send(
        &mut ana2,
        json!({"type": "chat", "body": text, "client_id": "ana-1"}),
    )
    .await;
    let again = expect(&mut ana2, &["chat", "error"]).await;
    assert_eq!(again["seq"], seq1, "{again}");
    send(
        &mut ana2,
        json!({"type": "chat", "body": "Yes, to my arms", "client_id": "ana-2"}),
    )
    .await;
    assert_eq!(expect(&mut dr, &["chat"]).await["client_id"], "ana-2");
    // Both of her connections get her new message (one is the ack).
    assert_eq!(expect(&mut ana, &["chat"]).await["client_id"], "ana-2");
    assert_eq!(expect(&mut ana2, &["chat"]).await["client_id"], "ana-2");
    let stored: Vec<Value> = timeline(&c)
        .await
        .into_iter()
        .filter(|e| e["idempotency_key"] == "ana-1")
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let e = &stored[0];
    assert_eq!(
        (&e["channel"], &e["kind"], &e["actor"], &e["body"]),
        (
            &json!("chat"),
            &json!("message"),
            &json!({"type": "patient", "id": "patient-ana"}),
            &json!(text)
        )
    );
    assert_eq!(e["meta"]["sender"]["name"], "Ana Souza");

    // Refusals name the field and the message they refuse.
    send(
        &mut ana2,
        json!({"type": "chat", "body": "something else", "client_id": "ana-1"}),
    )
    .await;
    let err = expect(&mut ana2, &["error"]).await;
    assert_eq!(
        (err["code"].as_str(), err["client_id"].as_str()),
        (Some("client_id_reused"), Some("ana-1")),
        "{err}"
    );
    for (msg, field) in [
        (
            json!({"type": "chat", "body": "  ", "client_id": "x1"}),
            "chat.body",
        ),
        (
            json!({"type": "chat", "body": "hi", "client_id": ""}),
            "chat.client_id",
        ),
        (
            json!({"type": "chat", "body": "x".repeat(64 * 1024 + 1), "client_id": "x2"}),
            "chat.body",
        ),
        (json!({"type": "chat_read", "seq": 9999}), "chat_read.seq"),
        (json!({"type": "chat_delivered", "seq": -1}), "seq"),
        (json!({"type": "chat", "body": "hi"}), "client_id"),
    ] {
        send(&mut ana2, msg.clone()).await;
        let err = expect(&mut ana2, &["error"]).await;
        assert_eq!(err["code"], "bad_message", "{msg} → {err}");
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{msg} → {err}"
        );
    }

    // Receipts over REST too: everyone's markers.
    let all =
        c.s.ok(
            "GET",
            &format!("/v1/conversations/{}/chat/receipts", c.conv),
            &c.patient,
            None,
        )
        .await;
    let mut marks: Vec<(String, i64, i64)> = all["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["identity"].as_str().unwrap().to_owned(),
                r["delivered_seq"].as_i64().unwrap(),
                r["read_seq"].as_i64().unwrap(),
            )
        })
        .collect();
    marks.sort();
    assert_eq!(
        marks,
        vec![
            ("dr-lee".into(), seq1, seq1),
            ("patient-ana".into(), seq2, seq2)
        ]
    );

    // Sealed at rest: the database holds no message text in clear (read
    // from the SQLite file; on PostgreSQL the store suite checks pg_dump).
    if !on_postgres() {
        let db = rusqlite::Connection::open_with_flags(
            dir.path().join("continuum.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let payloads: Vec<Vec<u8>> = db
            .prepare("SELECT payload FROM events")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!payloads.is_empty());
        assert!(
            payloads
                .iter()
                .all(|p| !p.windows(14).any(|w| w == b"rash is itchy ")),
            "a chat body is stored in clear"
        );
    }
    // Audited: the chat's opening (a PHI read) and every message's append.
    let audit = c.s.ok("GET", "/v1/audit?limit=1000", &c.key, None).await;
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (actor, action) in [
        ("patient:patient-ana", "chat.open"),
        ("clinician:dr-lee", "chat.open"),
        ("patient:patient-ana", "event.append"),
        ("clinician:dr-lee", "event.append"),
    ] {
        assert!(
            actions.iter().any(|(a, b)| a == actor && b == action),
            "no {action} by {actor} in {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_interleaved_messages_arrives_in_one_order_for_everyone() {
    let dir = tempdir();
    let c = setup(dir.path()).await;
    let dr = staff_in_room(&c).await;
    let (ana, _, _) = patient_chat(&c, &c.patient).await;
    const EACH: usize = 100;
    let (mut dr_tx, dr_rx) = dr.split();
    let (mut ana_tx, ana_rx) = ana.split();
    let writer = |who: &'static str| {
        move |i: usize| {
            Message::Text(
                json!({"type": "chat", "body": format!("{who} {i}"), "client_id": format!("{who}-{i}")})
                    .to_string()
                    .into(),
            )
        }
    };
    let (dr_msg, ana_msg) = (writer("dr"), writer("ana"));
    let send_dr = async move {
        for i in 0..EACH {
            dr_tx.send(dr_msg(i)).await.unwrap();
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        dr_tx
    };
    let send_ana = async move {
        for i in 0..EACH {
            ana_tx.send(ana_msg(i)).await.unwrap();
            if i % 5 == 0 {
                tokio::task::yield_now().await;
            }
        }
        ana_tx
    };
    /// Every chat message a socket gets until it has `n`: (seq, client_id).
    async fn collect<S>(mut rx: S, n: usize) -> Vec<(i64, String)>
    where
        S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let mut got = Vec::new();
        while got.len() < n {
            let m = expect(&mut rx, &["chat", "error"]).await;
            assert_eq!(m["type"], "chat", "refused in the burst: {m}");
            got.push((
                m["seq"].as_i64().unwrap(),
                m["client_id"].as_str().unwrap().to_owned(),
            ));
        }
        got
    }
    let (_, _, dr_got, ana_got) = tokio::join!(
        tokio::spawn(send_dr),
        tokio::spawn(send_ana),
        tokio::spawn(collect(dr_rx, 2 * EACH)),
        tokio::spawn(collect(ana_rx, 2 * EACH)),
    );
    let (dr_got, ana_got) = (dr_got.unwrap(), ana_got.unwrap());
    assert_eq!(
        dr_got, ana_got,
        "both see the same messages in the same order"
    );
    assert!(
        dr_got.windows(2).all(|w| w[0].0 < w[1].0),
        "in seq order: {dr_got:?}"
    );
    // Each side's messages in the order it sent them, none lost or doubled.
    for who in ["dr", "ana"] {
        let mine: Vec<String> = dr_got
            .iter()
            .filter(|(_, id)| id.starts_with(&format!("{who}-")))
            .map(|(_, id)| id.clone())
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{who}-{i}")).collect();
        assert_eq!(mine, sent);
    }
    // Interleaved, not one side then the other.
    let switches = dr_got
        .windows(2)
        .filter(|w| w[0].1[..2] != w[1].1[..2])
        .count();
    assert!(switches > 1, "{dr_got:?}");
    // And the timeline agrees.
    let stored: Vec<(i64, String)> = timeline(&c)
        .await
        .into_iter()
        .filter(|e| e["channel"] == "chat")
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["idempotency_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(stored, dr_got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_receipts_are_monotonic_and_receipts_and_typing_reach_every_live_path() {
    use eventsource_stream::Eventsource;
    let dir = tempdir();
    let c = setup(dir.path()).await;
    let events = format!("/v1/conversations/{}/events", c.conv);
    // Sending over REST stays the plain append; the chat socket shows it,
    // with the idempotency key as its client_id.
    let (mut ana, _, _) = patient_chat(&c, &c.patient).await;
    let sent = c
        .s
        .ok(
            "POST",
            &events,
            &c.staff,
            Some(json!({"channel": "chat", "kind": "message", "body": "Over REST", "idempotency_key": "rest-1"})),
        )
        .await;
    let got = expect(&mut ana, &["chat"]).await;
    assert_eq!(
        (&got["seq"], &got["client_id"], &got["body"]),
        (&sent["seq"], &json!("rest-1"), &json!("Over REST"))
    );
    assert_eq!(got["from"]["identity"], "dr-lee");
    // An SMS from the patient shows in her chat; a note never does.
    c.s.ok(
        "POST",
        &events,
        &c.key,
        Some(json!({"channel": "sms", "kind": "message", "actor": {"type": "patient"}, "body": "texted"})),
    )
    .await;
    let sms = expect(&mut ana, &["chat"]).await;
    assert_eq!(
        (&sms["channel"], &sms["body"]),
        (&json!("sms"), &json!("texted"))
    );
    c.s.ok(
        "POST",
        &events,
        &c.staff,
        Some(json!({"channel": "chat", "kind": "note", "body": "internal: check labs"})),
    )
    .await;
    let last =
        c.s.ok(
            "POST",
            &events,
            &c.staff,
            Some(json!({"channel": "chat", "kind": "message", "body": "after the note"})),
        )
        .await["seq"]
            .as_i64()
            .unwrap();
    let next = expect(&mut ana, &["chat"]).await;
    assert_eq!(
        next["body"], "after the note",
        "the note is not chat: {next}"
    );

    // The patient follows the events stream too (a page without the socket).
    let resp =
        c.s.client
            .get(c.s.url(&format!("{events}/stream?access_token={}", c.patient)))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream().eventsource();
    let mut next_sse = async |kind: &str| -> Value {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} on the stream"))
                .unwrap()
                .unwrap();
            if ev.event == kind {
                return serde_json::from_str(&ev.data).unwrap();
            }
        }
    };
    // Replayed history first: the note is not among what a patient gets.
    let mut bodies = Vec::new();
    while bodies.last().map(String::as_str) != Some("after the note") {
        bodies.push(
            next_sse("timeline").await["body"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert!(!bodies.iter().any(|b| b.contains("internal")), "{bodies:?}");

    // REST receipts: forward only, read implies delivered, announced live.
    let receipts = format!("/v1/conversations/{}/chat/receipts", c.conv);
    let r =
        c.s.ok("POST", &receipts, &c.staff, Some(json!({"read_seq": 2})))
            .await;
    assert_eq!(
        (r["delivered_seq"].as_i64(), r["read_seq"].as_i64()),
        (Some(2), Some(2)),
        "{r}"
    );
    let live = next_sse("receipt").await;
    assert_eq!(
        (
            live["identity"].as_str(),
            live["read_seq"].as_i64(),
            live["conversation"].as_str()
        ),
        (Some("dr-lee"), Some(2), Some(c.conv.as_str()))
    );
    let on_socket = expect(&mut ana, &["chat_receipt"]).await;
    assert_eq!(on_socket["read_seq"], 2);
    let r =
        c.s.ok(
            "POST",
            &receipts,
            &c.staff,
            Some(json!({"delivered_seq": 1, "read_seq": 1})),
        )
        .await;
    assert_eq!(
        (r["delivered_seq"].as_i64(), r["read_seq"].as_i64()),
        (Some(2), Some(2)),
        "never back: {r}"
    );
    let r =
        c.s.ok(
            "POST",
            &receipts,
            &c.staff,
            Some(json!({"delivered_seq": last})),
        )
        .await;
    assert_eq!(
        (r["delivered_seq"].as_i64(), r["read_seq"].as_i64()),
        (Some(last), Some(2))
    );
    assert_eq!(next_sse("receipt").await["delivered_seq"], last);
    for (body, field) in [
        (json!({}), "delivered_seq, read_seq"),
        (json!({"read_seq": last + 1}), "read_seq"),
        (json!({"delivered_seq": -3}), "delivered_seq"),
        (json!({"read_seq": "soon"}), "read_seq"),
        (json!({"read_seq": 1, "seen": true}), "seen"),
    ] {
        let (status, err) =
            c.s.call("POST", &receipts, &c.staff, Some(body.clone()))
                .await;
        assert_eq!(status, 422, "{body} → {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(field),
            "{body} → {err}"
        );
    }
    // Receipts and typing are a person's: an API key is refused.
    let (status, err) =
        c.s.call("POST", &receipts, &c.key, Some(json!({"read_seq": 1})))
            .await;
    assert_eq!(status, 403, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("access token"),
        "{err}"
    );
    let (status, _) =
        c.s.call(
            "POST",
            &format!("/v1/conversations/{}/chat/typing", c.conv),
            &c.key,
            Some(json!({"active": true})),
        )
        .await;
    assert_eq!(status, 403);
    // The API key reads them all.
    let all = c.s.ok("GET", &receipts, &c.key, None).await;
    assert_eq!(all["receipts"][0]["identity"], "dr-lee", "{all}");

    // Typing over REST: passed on once (stream and socket), a repeat is not.
    let typing = format!("/v1/conversations/{}/chat/typing", c.conv);
    let (status, t) =
        c.s.call("POST", &typing, &c.staff, Some(json!({"active": true})))
            .await;
    assert_eq!((status, &t["forwarded"]), (202, &json!(true)), "{t}");
    let (_, t) =
        c.s.call("POST", &typing, &c.staff, Some(json!({"active": true})))
            .await;
    assert_eq!(t["forwarded"], false, "{t}");
    let live = next_sse("typing").await;
    assert_eq!(
        (live["identity"].as_str(), live["active"].as_bool()),
        (Some("dr-lee"), Some(true))
    );
    let on_socket = expect(&mut ana, &["typing"]).await;
    assert_eq!(on_socket["name"], "Dr. Maya Lee");
    let (status, err) =
        c.s.call("POST", &typing, &c.staff, Some(json!({"active": "yes"})))
            .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("active"),
        "{err}"
    );

    // The chat view over REST: newest first page, oldest first, no notes.
    let page =
        c.s.ok(
            "GET",
            &format!("/v1/conversations/{}/chat/messages?limit=2", c.conv),
            &c.patient,
            None,
        )
        .await;
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["texted", "after the note"], "{page}");
    assert_eq!(page["earlier"], true);
    let first = page["messages"][0]["seq"].as_i64().unwrap();
    let older =
        c.s.ok(
            "GET",
            &format!("/v1/conversations/{}/chat/messages?before={first}", c.conv),
            &c.patient,
            None,
        )
        .await;
    assert_eq!(older["messages"][0]["body"], "Over REST", "{older}");
    assert_eq!(older["earlier"], false);
    for q in ["limit=0", "limit=201", "before=0"] {
        let (status, err) =
            c.s.call(
                "GET",
                &format!("/v1/conversations/{}/chat/messages?{q}", c.conv),
                &c.patient,
                None,
            )
            .await;
        assert_eq!(status, 422, "{q} → {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_only_the_granted_conversation_of_the_tenant() {
    let dir = tempdir();
    let c = setup(dir.path()).await;
    let (_, other_conv) = c.s.patient_conversation(&c.key, "+14155550143").await;
    // A patient token for the first conversation only.
    let only_a = c.s.mint(&c.key, "patient-ana", "patient", &[&c.conv]).await;
    // Another tenant, with a clinician who may see all of *its* conversations.
    let key2 = common::second_tenant(dir.path(), "other-clinic");
    let outsider = mint(
        &c.s,
        &key2,
        json!({"identity": "dr-x", "role": "clinician", "grants": {"conversations": ["*"]}}),
    )
    .await;

    for (token, conv, who) in [
        (&only_a, &other_conv, "a token for another conversation"),
        (&outsider, &c.conv, "another tenant's token"),
    ] {
        // The chat socket is refused before the upgrade.
        let refused = tokio_tungstenite::connect_async(chat_url(&c.s, conv, token)).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 404, "{who}")
            }
            other => panic!("{who}: {other:?}"),
        }
        for (method, path, body) in [
            (
                "GET",
                format!("/v1/conversations/{conv}/chat/messages"),
                None,
            ),
            (
                "GET",
                format!("/v1/conversations/{conv}/chat/receipts"),
                None,
            ),
            (
                "POST",
                format!("/v1/conversations/{conv}/chat/receipts"),
                Some(json!({"read_seq": 0})),
            ),
            (
                "POST",
                format!("/v1/conversations/{conv}/chat/typing"),
                Some(json!({"active": true})),
            ),
            (
                "POST",
                format!("/v1/conversations/{conv}/events"),
                Some(json!({"channel": "chat", "kind": "message", "body": "hi"})),
            ),
        ] {
            let (status, v) = c.s.call(method, &path, token, body).await;
            assert_eq!(status, 404, "{who}: {method} {path} → {v}");
            assert_eq!(v["error"]["code"], "not_found");
        }
    }
    // Messages of one conversation never reach another's socket.
    let (mut on_a, _, _) = patient_chat(&c, &only_a).await;
    c.s.ok(
        "POST",
        &format!("/v1/conversations/{other_conv}/events"),
        &c.key,
        Some(json!({"channel": "chat", "kind": "message", "actor": {"type": "staff", "id": "dr-lee"}, "body": "for someone else"})),
    )
    .await;
    quiet(
        &mut on_a,
        &["chat", "typing", "chat_receipt"],
        Duration::from_millis(800),
    )
    .await;

    // API keys never chat (nobody's); one in the URL is refused outright.
    let r =
        c.s.client
            .get(c.s.url(&format!("/v1/conversations/{}/chat", c.conv)))
            .bearer_auth(&c.key)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 403);
    match tokio_tungstenite::connect_async(chat_url(&c.s, &c.conv, &c.key)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("{other:?}"),
    }
    // Not a WebSocket request: said so.
    let (status, v) =
        c.s.call(
            "GET",
            &format!("/v1/conversations/{}/chat", c.conv),
            &c.patient,
            None,
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket")
    );
    // Auditors read no PHI: no chat.
    let auditor = c.s.mint(&c.key, "aud", "auditor", &["*"]).await;
    match tokio_tungstenite::connect_async(chat_url(&c.s, &c.conv, &auditor)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("{other:?}"),
    }

    // In a visit, chat needs the conversation too: a room-only token sits in
    // the room but neither sends nor hears the chat.
    let room_only = mint(
        &c.s,
        &c.key,
        json!({"identity": "guest", "role": "agent", "grants": {"rooms": [c.room]}}),
    )
    .await;
    let (mut guest, _) = connect_signaling(rtc_url(&c.s, &room_only)).await;
    send(
        &mut guest,
        json!({"type": "chat", "body": "hi", "client_id": "g1"}),
    )
    .await;
    assert_eq!(expect(&mut guest, &["error"]).await["code"], "not_joined");
    send(
        &mut guest,
        json!({"type": "join", "room": c.room, "sdp": audio_offer()}),
    )
    .await;
    assert_eq!(
        expect(&mut guest, &["joined", "error"]).await["type"],
        "joined"
    );
    send(
        &mut guest,
        json!({"type": "chat", "body": "hi", "client_id": "g1"}),
    )
    .await;
    let err = expect(&mut guest, &["error"]).await;
    assert_eq!(
        (err["code"].as_str(), err["client_id"].as_str()),
        (Some("not_found"), Some("g1")),
        "{err}"
    );
    let mut dr = staff_in_room(&c).await;
    send(
        &mut dr,
        json!({"type": "chat", "body": "staff only sees this", "client_id": "d1"}),
    )
    .await;
    assert_eq!(expect(&mut dr, &["chat"]).await["client_id"], "d1");
    quiet(
        &mut guest,
        &["chat", "chat_receipts"],
        Duration::from_millis(800),
    )
    .await;
}

/// The patient chat page in Chromium (tests/browser/chat.mjs) against a
/// clinician on the chat WebSocket, driven from here: the clinician
/// answers what the page sends, marks it delivered and read, and types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patient_chat_page_chats_with_a_clinician() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run scripts/test (it installs playwright-core)"
    );
    let dir = tempdir();
    let c = setup(dir.path()).await;
    c.s.ok(
        "PUT",
        "/v1/settings/visits",
        &c.key,
        Some(json!({"waiting_room": false, "support_contact": "the front desk, +1 415 555 0100"})),
    )
    .await;
    // History: a message from the clinic yesterday, the patient's SMS, and a
    // note the patient must never see.
    let events = format!("/v1/conversations/{}/events", c.conv);
    for body in [
        json!({"channel": "chat", "kind": "message", "actor": {"type": "staff", "id": "dr-lee"}, "body": "Please send a photo of the rash if it changes.", "meta": {"sender": {"name": "Dr. Maya Lee", "role": "clinician"}}}),
        json!({"channel": "sms", "kind": "message", "actor": {"type": "patient"}, "body": "Ok, will do"}),
        json!({"channel": "chat", "kind": "note", "actor": {"type": "staff", "id": "dr-lee"}, "body": "internal: consider biopsy"}),
    ] {
        c.s.ok("POST", &events, &c.key, Some(body)).await;
    }
    let patient_only = c.s.mint(&c.key, "patient-ana", "patient", &[&c.conv]).await;
    // A link that has run out.
    let expired = mint(
        &c.s,
        &c.key,
        json!({"identity": "patient-ana", "role": "patient", "ttl_seconds": 1, "grants": {"conversations": [c.conv]}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let cfg = json!({"base": c.s.base, "conversation": c.conv, "patient": patient_only,
        "expired": expired, "shots": shots});

    // The clinician, on the chat socket, reacting to the page.
    let (mut dr, _, _) = patient_chat(&c, &c.staff).await;
    let clinician = async move {
        let mut seen: Vec<Value> = Vec::new();
        // The patient's messages not handled yet (they may come while we
        // wait for something else).
        let mut stash: std::collections::VecDeque<Value> = Default::default();
        async fn next_of(
            dr: &mut Signaling,
            stash: &mut std::collections::VecDeque<Value>,
            types: &[&str],
        ) -> Value {
            loop {
                let m =
                    expect_within(dr, &["chat", "chat_receipt"], Duration::from_secs(120)).await;
                if types.contains(&m["type"].as_str().unwrap()) {
                    return m;
                }
                if m["type"] == "chat" && m["from"]["identity"] == "patient-ana" {
                    stash.push_back(m);
                }
            }
        }
        async fn from_patient(
            dr: &mut Signaling,
            stash: &mut std::collections::VecDeque<Value>,
        ) -> Value {
            if let Some(m) = stash.pop_front() {
                return m;
            }
            loop {
                let m = next_of(dr, stash, &["chat"]).await;
                if m["from"]["identity"] == "patient-ana" {
                    return m;
                }
            }
        }
        // 1. Hello: delivered at once; typing; read; a reply.
        let hello = from_patient(&mut dr, &mut stash).await;
        assert_eq!(hello["body"], "Hello from the chat page");
        let seq = hello["seq"].as_i64().unwrap();
        send(&mut dr, json!({"type": "chat_delivered", "seq": seq})).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        send(&mut dr, json!({"type": "typing", "active": true})).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        send(&mut dr, json!({"type": "chat_read", "seq": seq})).await;
        send(
            &mut dr,
            json!({"type": "chat", "body": "Thanks, Ana. Is the rash spreading?", "client_id": "dr-reply-1"}),
        )
        .await;
        // The page, on screen, reads the reply.
        let reply_seq = loop {
            let m = next_of(&mut dr, &mut stash, &["chat"]).await;
            if m["client_id"] == "dr-reply-1" {
                break m["seq"].as_i64().unwrap();
            }
        };
        loop {
            let r = next_of(&mut dr, &mut stash, &["chat_receipt"]).await;
            if r["identity"] == "patient-ana" && r["read_seq"].as_i64().unwrap() >= reply_seq {
                break;
            }
        }
        seen.push(hello);
        // 2. Written offline, sent on reconnecting; 3. sent after a retry.
        for _ in 0..2 {
            let m = from_patient(&mut dr, &mut stash).await;
            let seq = m["seq"].as_i64().unwrap();
            send(&mut dr, json!({"type": "chat_read", "seq": seq})).await;
            seen.push(m);
        }
        seen
    };
    let arg = cfg.to_string();
    let checks = [
        "history shows chat and texts, never notes (phone)",
        "own message is acked: Sent",
        "delivered tick",
        "clinician typing shows",
        "read tick",
        "reply arrives and is read",
        "accessibility: chat (phone)",
        "offline is said and the message waits",
        "reconnected: the waiting message is sent",
        "a send without an answer offers a retry",
        "retry sends it",
        "desktop shows the conversation",
        "accessibility: chat (desktop)",
        "an expired link says so and who to contact",
        "a broken link says it is not valid",
        "a link for another conversation says so",
    ]
    .map(String::from);
    let args = [arg.as_str()];
    let page = browser_scenario("chat.mjs", &args, &checks);
    let (seen, _) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(240), clinician)
                .await
                .expect("the clinician's side finishes")
        },
        page
    );
    let bodies: Vec<&str> = seen.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        ["Hello from the chat page", "Sent while offline", "Retry me"]
    );
    for shot in [
        "chat-phone.png",
        "chat-phone-offline.png",
        "chat-phone-failed.png",
        "chat-desktop.png",
        "chat-phone-expired.png",
        "chat-phone-invalid.png",
    ] {
        let png = std::fs::read(shots.join(shot)).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "no screenshot {shot}");
    }
    // What the page sent is stored once each, in order, as the patient's.
    let stored: Vec<String> = timeline(&c)
        .await
        .into_iter()
        .filter(|e| e["channel"] == "chat" && e["actor"]["id"] == "patient-ana")
        .map(|e| e["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored,
        ["Hello from the chat page", "Sent while offline", "Retry me"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_socket_lives_as_long_as_its_token() {
    let dir = tempdir();
    let c = setup(dir.path()).await;
    let token = |ttl: u64, convs: Value| {
        let (s, key) = (&c.s, c.key.clone());
        async move {
            s.ok(
                "POST",
                "/v1/tokens",
                &key,
                Some(json!({"identity": "patient-ana", "role": "patient", "ttl_seconds": ttl, "grants": {"conversations": convs}})),
            )
            .await
        }
    };
    let close_code = |m: Option<Result<Message, _>>| match m {
        Some(Ok(Message::Close(Some(f)))) => u16::from(f.code),
        other => panic!("not a close: {other:?}"),
    };
    // Expiry: told, then closed with 4001 (the page asks /v1/visit-help why).
    let short = token(2, json!([c.conv])).await;
    let (mut ws, _, _) = patient_chat(&c, short["token"].as_str().unwrap()).await;
    let err = expect(&mut ws, &["error"]).await;
    assert_eq!(err["code"], "token_expired", "{err}");
    assert_eq!(close_code(ws.next().await), 4001);

    // A refresh before expiry keeps it open; one for another conversation
    // or another person is refused.
    let short = token(3, json!([c.conv])).await;
    let (mut ws, _, _) = patient_chat(&c, short["token"].as_str().unwrap()).await;
    let elsewhere = token(600, json!(["someone-else"])).await;
    send(
        &mut ws,
        json!({"type": "refresh", "token": elsewhere["token"]}),
    )
    .await;
    let r = expect(&mut ws, &["error", "refreshed"]).await;
    assert_eq!(r["code"], "refresh_refused", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("conversation"),
        "{r}"
    );
    let fresh = token(600, json!([c.conv])).await;
    send(&mut ws, json!({"type": "refresh", "token": fresh["token"]})).await;
    assert_eq!(
        expect(&mut ws, &["error", "refreshed"]).await["type"],
        "refreshed"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(
        expect(&mut ws, &["pong", "error"]).await["type"],
        "pong",
        "still open past the first expiry"
    );

    // Revocation: closed at once with 4003.
    c.s.ok(
        "POST",
        "/v1/tokens/revoke",
        &c.key,
        Some(json!({"jti": short["jti"]})),
    )
    .await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(
        expect(&mut ws, &["pong", "error"]).await["type"],
        "pong",
        "the old token's revocation is not this connection's"
    );
    c.s.ok(
        "POST",
        "/v1/tokens/revoke",
        &c.key,
        Some(json!({"jti": fresh["jti"]})),
    )
    .await;
    let err = expect(&mut ws, &["error"]).await;
    assert_eq!(err["code"], "token_revoked", "{err}");
    assert_eq!(close_code(ws.next().await), 4003);
}
