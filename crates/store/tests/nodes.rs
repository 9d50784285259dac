//! Several nodes on one PostgreSQL database: two `Store`s opened on it
//! write at the same moment, as two servers of a cluster do. Queued work
//! (webhook deliveries, outbound messages, due reminders) is claimed by one
//! node only; appends to one conversation stay gap-free; a request retried
//! on another node while the first try runs is done once; writes that read a
//! row to change it do not lose each other's changes.
//!
//! PostgreSQL only: SQLite is one process's file, written by its one writer
//! thread (two stores on one SQLite file are not a supported setup).

use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Role};
use continuum_store::{
    AppointmentInput, AppointmentUpsert, ContactInput, InboundRecord, MessageRef, MessageState,
    NewConversation, NewMessagingProvider, NewOutboundMessage, NewRoutingTask, ProviderKind,
    SendOutcome, Store, StoreError, StoreOptions, TemplateInput, UpsertOutcome, WebhookPayload,
};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
use support::{Backend, TestStore};

mod support;

const PHONE: &str = "+14155550100";
const CLINIC: &str = "+14155559999";
const H: i64 = 3_600_000_000;

/// Noon (UTC) `days` days from now: appointments there have their reminders
/// and their dispatch outside the default quiet hours (21:00-08:00) whatever
/// the time the test runs at.
fn noon_in_days(days: i64) -> i64 {
    let day = 24 * H;
    let today = continuum_core::clock::unix_micros() / day * day;
    today + days * day + 12 * H
}

/// Two nodes on one fresh database.
async fn two_nodes() -> (TestStore, Store) {
    let opts = StoreOptions {
        pg_connections: 16,
        ..Default::default()
    };
    let a = support::open_with(
        Backend::Postgres,
        continuum_store::SecretKey::generate(),
        opts.clone(),
    )
    .await;
    let b = Store::connect(&a.location, a.key.clone(), opts)
        .await
        .unwrap();
    (a, b)
}

async fn setup(store: &Store) -> (String, String) {
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let contact = store
        .create_contact(
            &t,
            ContactInput {
                display_name: Some("Ada Lovelace".into()),
                phone: Some(PHONE.into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    let conv = conversation(store, &t, &contact).await;
    (t, conv)
}

async fn conversation(store: &Store, t: &str, contact: &str) -> String {
    store
        .create_conversation(
            t,
            NewConversation {
                contact_id: contact.to_owned(),
                subject: None,
                queue: None,
                tags: vec![],
            },
            "test",
        )
        .await
        .unwrap()
        .id
}

fn message(body: String) -> NewEvent {
    NewEvent {
        channel: Channel::Chat,
        kind: EventKind::Message,
        actor: Actor {
            actor_type: ActorType::Patient,
            id: None,
        },
        body: Some(body),
        meta: Default::default(),
        idempotency_key: None,
    }
}

fn sms(body: &str, key: Option<String>) -> NewOutboundMessage {
    NewOutboundMessage {
        channel: Channel::Sms,
        to: PHONE.into(),
        from: Some(CLINIC.into()),
        body: Some(body.into()),
        media_urls: vec![],
        template: None,
        idempotency_key: key,
        actor: Actor::system(),
        meta: Default::default(),
        compliance: false,
    }
}

async fn provider(store: &Store, t: &str) {
    let mut spec = serde_json::Map::new();
    spec.insert("account_sid".into(), "AC1".into());
    store
        .create_messaging_provider(
            t,
            NewMessagingProvider {
                name: "twilio".into(),
                kind: ProviderKind::Twilio,
                priority: 1,
                channels: vec![Channel::Sms],
                senders: vec![CLINIC.into()],
                spec,
                secret: Default::default(),
            },
            "test",
        )
        .await
        .unwrap();
}

/// Runs `workers` claim loops on each node at once, each claiming until a
/// claim comes back empty; returns every id claimed, in claim order.
async fn claim_everywhere<F, Fut>(nodes: [&Store; 2], workers: usize, claim: F) -> Vec<String>
where
    F: Fn(Store) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<String>> + Send,
{
    let mut tasks = Vec::new();
    for node in nodes {
        for _ in 0..workers {
            let (node, claim) = (node.clone(), claim.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = claim(node.clone()).await;
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got);
                }
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn assert_once(claimed: &[String], expected: usize) {
    let mut seen = HashSet::new();
    for id in claimed {
        assert!(seen.insert(id), "{id} was claimed twice");
    }
    assert_eq!(claimed.len(), expected, "every item claimed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_appending_to_one_conversation_get_gap_free_seqs() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    let mut tasks = Vec::new();
    for (n, node) in [a.store.clone(), b.clone()].into_iter().enumerate() {
        for i in 0..100 {
            let (node, t, conv) = (node.clone(), t.clone(), conv.clone());
            tasks.push(tokio::spawn(async move {
                node.append_event(&t, &conv, message(format!("{n}/{i}")), "test")
                    .await
                    .unwrap()
                    .event
                    .seq
            }));
        }
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        assert!(seqs.insert(task.await.unwrap()), "a seq given twice");
    }
    assert_eq!(seqs, (1..=200).collect::<BTreeSet<i64>>());
    let events = b.list_events(&t, &conv, 0, 1000, "test").await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<i64>>()
    );
    assert_eq!(b.get_conversation(&t, &conv).await.unwrap().last_seq, 200);
    for node in [&a.store, &b] {
        let report = node.verify().await.unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.events_checked, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_never_claim_the_same_webhook_delivery() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    a.create_webhook(
        &t,
        "https://example.org/hook",
        vec!["event.created".into()],
        WebhookPayload::Thin,
        "test",
    )
    .await
    .unwrap();
    a.append_events_bulk(
        &t,
        &conv,
        (0..150).map(|i| message(format!("m{i}"))).collect(),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(a.outbox_depth().await.unwrap(), 150);
    let claimed = claim_everywhere([&a.store, &b], 3, |node: Store| async move {
        node.claim_due_deliveries(4, Duration::from_secs(600))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.outbox_id.to_string())
            .collect()
    })
    .await;
    assert_once(&claimed, 150);
    // Claimed for the lease: due again for no node until it runs out.
    for node in [&a.store, &b] {
        assert!(node.due_deliveries(10).await.unwrap().is_empty());
        assert_eq!(node.outbox_depth().await.unwrap(), 150, "still pending");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_delivery_lease_is_claimed_again_and_recorded_once_delivered() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    a.create_webhook(
        &t,
        "https://example.org/hook",
        vec![],
        WebhookPayload::Full,
        "test",
    )
    .await
    .unwrap();
    a.append_event(&t, &conv, message("m".into()), "test")
        .await
        .unwrap();
    // Node a claims with a lease that is over at once (it died mid-send).
    let first = a
        .store
        .claim_due_deliveries(10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let again = b
        .claim_due_deliveries(10, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|d| d.outbox_id).collect::<Vec<_>>(),
        [first[0].outbox_id]
    );
    b.record_delivery(&again[0], Some(204), None, 3, None)
        .await
        .unwrap();
    assert_eq!(a.outbox_depth().await.unwrap(), 0);
    assert!(
        a.store
            .claim_due_deliveries(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_claim_each_due_message_once() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    for i in 0..60 {
        a.enqueue_message(&t, &conv, sms(&format!("m{i}"), None), "test")
            .await
            .unwrap();
    }
    let claimed = claim_everywhere([&a.store, &b], 3, |node: Store| async move {
        node.claim_due_messages(4)
            .await
            .unwrap()
            .into_iter()
            .map(|c| {
                assert_eq!(c.message.attempts, 1);
                c.message.id
            })
            .collect()
    })
    .await;
    assert_once(&claimed, 60);
    assert_eq!(
        a.message_counts().await.unwrap(),
        vec![("sending".to_owned(), 60)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_dispatch_each_due_reminder_once() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    provider(&a, &t).await;
    let contact = a.get_conversation(&t, &conv).await.unwrap().contact_id;
    let template = a
        .create_reminder_template(
            &t,
            TemplateInput {
                name: "default".into(),
                offsets: vec!["-24h".into()],
                body: "See you {{date}}".into(),
                channel: Default::default(),
                whatsapp: None,
                from: None,
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    let start = noon_in_days(3);
    let ups = (0..40)
        .map(|i| AppointmentUpsert {
            conversation_id: conv.clone(),
            contact_id: contact.clone(),
            input: AppointmentInput {
                external_id: Some(format!("E{i}")),
                start_at: start + i * 60_000_000,
                template_id: template.clone(),
                ..Default::default()
            },
        })
        .collect();
    for r in a.upsert_appointments(&t, ups, "test").await.unwrap() {
        r.unwrap();
    }
    let at = start - 23 * H;
    let mut tasks = Vec::new();
    for node in [a.store.clone(), b.clone()] {
        for _ in 0..3 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    let r = node.dispatch_due_reminders(at, 3).await.unwrap();
                    if r.claimed == 0 {
                        return sent;
                    }
                    sent += r.sent;
                }
            }));
        }
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    assert_eq!(sent, 40, "each reminder sent once");
    let messages = b.list_messages(&t, &conv, "test").await.unwrap();
    assert_eq!(messages.len(), 40);
    assert_eq!(
        a.reminder_counts().await.unwrap(),
        vec![("sent".to_owned(), 40)]
    );
    assert!(a.verify().await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_retried_on_another_node_while_the_first_try_runs_is_done_once() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    let nodes = [a.store.clone(), b.clone()];
    // Outbound messages with an idempotency key, sent to both nodes at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        for node in &nodes {
            let (node, t, conv) = (node.clone(), t.clone(), conv.clone());
            tasks.push(tokio::spawn(async move {
                let (m, _) = node
                    .enqueue_message(&t, &conv, sms("hello", Some(format!("k{i}"))), "test")
                    .await
                    .unwrap();
                (i, m.id)
            }));
        }
    }
    let mut by_key = std::collections::HashMap::new();
    for task in tasks {
        let (i, id) = task.await.unwrap();
        if let Some(first) = by_key.insert(i, id.clone()) {
            assert_eq!(first, id, "both tries of k{i} answer with one message");
        }
    }
    assert_eq!(a.list_messages(&t, &conv, "test").await.unwrap().len(), 20);

    // An inbound message whose webhook reaches both nodes at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        for node in &nodes {
            let (node, t, conv) = (node.clone(), t.clone(), conv.clone());
            tasks.push(tokio::spawn(async move {
                let rec = InboundRecord {
                    provider_id: "p1".into(),
                    provider_message_id: format!("SM{i}"),
                    channel: Channel::Sms,
                    from: PHONE.into(),
                    to: CLINIC.into(),
                    body: Some("hi".into()),
                    meta: Default::default(),
                };
                let o = node
                    .record_inbound_message(&t, &conv, rec, "test")
                    .await
                    .unwrap();
                (o.created, o.event.seq)
            }));
        }
    }
    let mut created = 0;
    let mut seqs = HashSet::new();
    for task in tasks {
        let (c, seq) = task.await.unwrap();
        created += c as usize;
        seqs.insert(seq);
    }
    assert_eq!((created, seqs.len()), (20, 20), "each stored once");

    // One appointment imported through both nodes at once.
    let contact = a.get_conversation(&t, &conv).await.unwrap().contact_id;
    let template = a
        .create_reminder_template(
            &t,
            TemplateInput {
                name: "default".into(),
                offsets: vec!["-24h".into()],
                body: "See you {{date}}".into(),
                channel: Default::default(),
                whatsapp: None,
                from: None,
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    let start = noon_in_days(4);
    let mut tasks = Vec::new();
    for i in 0..20 {
        for node in &nodes {
            let (node, t, up) = (
                node.clone(),
                t.clone(),
                AppointmentUpsert {
                    conversation_id: conv.clone(),
                    contact_id: contact.clone(),
                    input: AppointmentInput {
                        external_id: Some(format!("E{i}")),
                        start_at: start,
                        template_id: template.clone(),
                        ..Default::default()
                    },
                },
            );
            tasks.push(tokio::spawn(async move {
                node.upsert_appointment(&t, up, "test").await.unwrap()
            }));
        }
    }
    let mut outcomes = Vec::new();
    let mut ids = HashSet::new();
    for task in tasks {
        let (appt, o) = task.await.unwrap();
        outcomes.push(o);
        ids.insert(appt.id);
    }
    assert_eq!(ids.len(), 20, "one appointment per external id");
    let made = outcomes
        .iter()
        .filter(|o| **o == UpsertOutcome::Created)
        .count();
    assert_eq!(made, 20, "{outcomes:?}");
    assert_eq!(
        a.reminder_counts().await.unwrap(),
        vec![("pending".to_owned(), 20)],
        "the second try planned nothing more"
    );
    assert!(b.verify().await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_read_a_row_to_change_it_see_each_others_changes() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    let nodes = [a.store.clone(), b.clone()];
    // A receipt and the API's late answer racing on two nodes: delivered
    // must win whichever commits first.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            a.enqueue_message(&t, &conv, sms(&format!("m{i}"), None), "test")
                .await
                .unwrap()
                .0
                .id,
        );
    }
    assert_eq!(a.claim_due_messages(100).await.unwrap().len(), 20);
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (receipts, sender) = (nodes[i % 2].clone(), nodes[(i + 1) % 2].clone());
        let (t1, t2, id1, id2) = (t.clone(), t.clone(), id.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            receipts
                .apply_receipt(
                    &t1,
                    MessageRef::Ours(id1),
                    MessageState::Delivered,
                    Default::default(),
                )
                .await
                .unwrap();
        }));
        tasks.push(tokio::spawn(async move {
            sender
                .record_send_outcome(
                    &t2,
                    &id2,
                    SendOutcome::Sent {
                        provider_id: "p1".into(),
                        provider_message_id: format!("SM-{id2}"),
                    },
                )
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for id in &ids {
        let m = b.get_message(&t, id, "test").await.unwrap();
        assert_eq!(m.state, MessageState::Delivered, "{id}");
        assert!(m.provider_message_id.is_some());
    }

    // Two nodes changing different fields of one contact keep both.
    let contact = a.get_conversation(&t, &conv).await.unwrap().contact_id;
    let mut tasks = Vec::new();
    for i in 0..10 {
        for (n, node) in nodes.iter().enumerate() {
            let (node, t, contact) = (node.clone(), t.clone(), contact.clone());
            tasks.push(tokio::spawn(async move {
                let input = if n == 0 {
                    ContactInput {
                        time_zone: Some(["Europe/Berlin", "America/Chicago"][i % 2].to_owned()),
                        ..Default::default()
                    }
                } else {
                    ContactInput {
                        whatsapp: Some(format!("+1415555{:04}", 2000 + i)),
                        ..Default::default()
                    }
                };
                node.update_contact(&t, &contact, input, "test")
                    .await
                    .unwrap();
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let c = a.get_contact(&t, &contact, "test").await.unwrap();
    assert!(
        c.time_zone.is_some() && c.bindings.whatsapp.is_some(),
        "{c:?}"
    );
    assert_eq!(c.bindings.phone.as_deref(), Some(PHONE));

    // Read markers moved on two nodes at once end at the furthest.
    let mut tasks = Vec::new();
    for seq in 1..=20 {
        let node = nodes[seq as usize % 2].clone();
        let (t, conv) = (t.clone(), conv.clone());
        tasks.push(tokio::spawn(async move {
            node.mark_chat_receipt(&t, &conv, "dr", Role::Clinician, None, Some(seq))
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let receipts = b.chat_receipts(&t, &conv).await.unwrap();
    assert_eq!((receipts[0].read_seq, receipts[0].delivered_seq), (20, 20));

    // One open routing task per conversation, whichever node asks.
    let mut convs = Vec::new();
    for _ in 0..10 {
        convs.push(conversation(&a, &t, &contact).await);
    }
    let mut tasks = Vec::new();
    for conv in &convs {
        for node in &nodes {
            let (node, t, conv) = (node.clone(), t.clone(), conv.clone());
            tasks.push(tokio::spawn(async move {
                node.create_routing_task(
                    &t,
                    NewRoutingTask {
                        queue: "front".into(),
                        conversation_id: conv,
                        channel: "voice".into(),
                        priority: 1,
                        skills: vec![],
                        call_id: None,
                        triage: None,
                    },
                )
                .await
            }));
        }
    }
    let (mut made, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => made += 1,
            Err(StoreError::Conflict(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((made, refused), (10, 10));
    assert_eq!(a.open_routing_tasks().await.unwrap().len(), 10);
    assert!(a.verify().await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_name_taken_on_two_nodes_at_once_is_a_conflict_for_one() {
    let (a, b) = two_nodes().await;
    let nodes = [a.store.clone(), b.clone()];
    let mut tasks = Vec::new();
    for i in 0..10 {
        for node in &nodes {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                node.create_tenant(&format!("clinic-{i}"), "us", "test")
                    .await
            }));
        }
    }
    let (mut made, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => made += 1,
            Err(StoreError::Conflict(m)) => {
                assert!(m.contains("already exists"), "{m}");
                refused += 1
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((made, refused), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verifying_while_another_node_appends_finds_nothing_wrong() {
    let (a, b) = two_nodes().await;
    let (t, conv) = setup(&a).await;
    let writer = {
        let (b, t, conv) = (b.clone(), t.clone(), conv.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                b.append_event(&t, &conv, message(format!("m{i}")), "test")
                    .await
                    .unwrap();
            }
        })
    };
    let mut runs = 0;
    while !writer.is_finished() {
        let report = a.verify().await.unwrap();
        assert!(report.is_intact(), "{report:?}");
        runs += 1;
    }
    writer.await.unwrap();
    assert!(runs > 0);
    let report = a.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatchers_on_two_nodes_across_many_conversations_fail_no_reminder() {
    let (a, b) = two_nodes().await;
    let (t, _) = setup(&a).await;
    provider(&a, &t).await;
    let template = a
        .create_reminder_template(
            &t,
            TemplateInput {
                name: "default".into(),
                offsets: vec!["-24h".into()],
                body: "See you {{date}}".into(),
                channel: Default::default(),
                whatsapp: None,
                from: None,
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    // 12 patients, 5 appointments each; due times interleave the patients,
    // so each claim holds reminders of many conversations.
    let start = noon_in_days(3);
    let mut ups = Vec::new();
    for p in 0..12 {
        let contact = a
            .create_contact(
                &t,
                ContactInput {
                    display_name: Some(format!("P{p}")),
                    phone: Some(format!("+1415555{:04}", 3000 + p)),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap()
            .id;
        let conv = conversation(&a, &t, &contact).await;
        for k in 0..5 {
            ups.push(AppointmentUpsert {
                conversation_id: conv.clone(),
                contact_id: contact.clone(),
                input: AppointmentInput {
                    external_id: Some(format!("E{p}-{k}")),
                    start_at: start + (k * 12 + p) * 60_000_000,
                    template_id: template.clone(),
                    ..Default::default()
                },
            });
        }
    }
    for r in a.upsert_appointments(&t, ups, "test").await.unwrap() {
        r.unwrap();
    }
    let at = start - 23 * H;
    let mut tasks = Vec::new();
    for node in [a.store.clone(), b.clone()] {
        for _ in 0..3 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    let r = node.dispatch_due_reminders(at, 7).await.unwrap();
                    assert_eq!(r.failed, 0, "{r:?}");
                    if r.claimed == 0 {
                        return sent;
                    }
                    sent += r.sent;
                }
            }));
        }
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    assert_eq!(sent, 60);
    assert_eq!(
        a.reminder_counts().await.unwrap(),
        vec![("sent".to_owned(), 60)]
    );
}
