//! Chat through the store API: the chat view of the timeline (messages on
//! chat channels, never notes), and receipts that only move forward.

use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Role};
use continuum_store::{ContactInput, NewConversation, Store, StoreError};
use support::Backend;

mod support;

both!(
    chat_history_is_the_messages_on_chat_channels_newest_page_oldest_first,
    receipts_only_move_forward_and_reading_implies_delivery,
);

fn event(channel: Channel, kind: EventKind, body: &str) -> NewEvent {
    NewEvent {
        channel,
        kind,
        actor: Actor {
            actor_type: ActorType::Staff,
            id: Some("dr".into()),
        },
        body: Some(body.into()),
        meta: Default::default(),
        idempotency_key: None,
    }
}

async fn conversation(store: &Store, tenant: &str) -> String {
    let contact = store
        .create_contact(
            tenant,
            ContactInput {
                display_name: Some("P".into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    store
        .create_conversation(
            tenant,
            NewConversation {
                contact_id: contact.id,
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

const CHAT: &[Channel] = &[Channel::Chat, Channel::Sms, Channel::Whatsapp];

async fn chat_history_is_the_messages_on_chat_channels_newest_page_oldest_first(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap().id;
    let conv = conversation(&store, &t).await;
    let mut expected = Vec::new();
    for i in 0..10 {
        let (channel, kind) = match i % 5 {
            0 => (Channel::Chat, EventKind::Message),
            1 => (Channel::Sms, EventKind::Message),
            2 => (Channel::Chat, EventKind::Note),
            3 => (Channel::Video, EventKind::Message),
            _ => (Channel::Whatsapp, EventKind::Message),
        };
        let seq = store
            .append_event(&t, &conv, event(channel, kind, &format!("m{i}")), "test")
            .await
            .unwrap()
            .event
            .seq;
        if matches!(i % 5, 0 | 1 | 4) {
            expected.push(seq);
        }
    }
    let seqs =
        |events: Vec<continuum_store::Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let all = store
        .chat_history(&t, &conv, CHAT, None, 100, "test")
        .await
        .unwrap();
    assert_eq!(seqs(all), expected, "no notes, no video-channel messages");
    let newest = store
        .chat_history(&t, &conv, CHAT, None, 2, "test")
        .await
        .unwrap();
    assert_eq!(seqs(newest), expected[expected.len() - 2..]);
    let before = store
        .chat_history(&t, &conv, CHAT, Some(expected[2]), 100, "test")
        .await
        .unwrap();
    assert_eq!(seqs(before), expected[..2]);
    let only_chat = store
        .chat_history(&t, &conv, &[Channel::Chat], None, 100, "test")
        .await
        .unwrap();
    assert!(only_chat.iter().all(|e| e.channel == Channel::Chat));
    // Another tenant's conversation does not exist for this one.
    let other = store.create_tenant("u", "local", "test").await.unwrap().id;
    assert!(matches!(
        store
            .chat_history(&other, &conv, CHAT, None, 10, "test")
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.open_chat(&other, &conv, "test").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.open_chat(&t, &conv, "test").await.unwrap(), 10);
}

async fn receipts_only_move_forward_and_reading_implies_delivery(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap().id;
    let conv = conversation(&store, &t).await;
    for i in 0..5 {
        store
            .append_event(
                &t,
                &conv,
                event(Channel::Chat, EventKind::Message, &format!("m{i}")),
                "test",
            )
            .await
            .unwrap();
    }
    let mark = |d: Option<i64>, r: Option<i64>| {
        let (store, t, conv) = (store.store.clone(), t.clone(), conv.clone());
        async move {
            store
                .mark_chat_receipt(&t, &conv, "pat", Role::Patient, d, r)
                .await
        }
    };
    let u = mark(Some(2), None).await.unwrap();
    assert!(u.changed);
    assert_eq!((u.receipt.delivered_seq, u.receipt.read_seq), (2, 0));
    let u = mark(None, Some(3)).await.unwrap();
    assert!(u.changed);
    assert_eq!(
        (u.receipt.delivered_seq, u.receipt.read_seq),
        (3, 3),
        "read implies delivered"
    );
    let u = mark(Some(1), Some(1)).await.unwrap();
    assert!(!u.changed, "markers never move back");
    assert_eq!((u.receipt.delivered_seq, u.receipt.read_seq), (3, 3));
    let u = mark(Some(5), None).await.unwrap();
    assert_eq!((u.receipt.delivered_seq, u.receipt.read_seq), (5, 3));
    match mark(None, Some(6)).await {
        Err(StoreError::Invalid(m)) => {
            assert!(m.contains("read_seq 6") && m.contains("(seq 5)"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match mark(Some(-1), None).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("delivered_seq"), "{m}"),
        other => panic!("{other:?}"),
    }
    store
        .mark_chat_receipt(&t, &conv, "dr", Role::Clinician, None, Some(4))
        .await
        .unwrap();
    let all = store.chat_receipts(&t, &conv).await.unwrap();
    let view: Vec<_> = all
        .iter()
        .map(|r| (r.identity.as_str(), r.role, r.delivered_seq, r.read_seq))
        .collect();
    assert_eq!(
        view,
        vec![("dr", Role::Clinician, 4, 4), ("pat", Role::Patient, 5, 3)]
    );
    let other = store.create_tenant("u", "local", "test").await.unwrap().id;
    assert!(matches!(
        store.chat_receipts(&other, &conv).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .mark_chat_receipt(&other, &conv, "x", Role::Patient, Some(1), None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}
