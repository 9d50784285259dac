//! The store on its own: group commit under concurrency, isolation of failing
//! writes inside a batch, tenant scoping, and verification.

use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Transition};
use continuum_store::{
    ContactInput, ConversationFilter, NewConversation, SecretKey, Store, StoreError, StoreOptions,
    TransitionParams,
};
use std::collections::HashSet;
use support::Backend;

mod support;

both!(
    concurrent_appends_get_gap_free_seqs,
    a_failing_write_does_not_spoil_its_batch,
    everything_is_scoped_to_its_tenant,
    idempotent_appends_return_the_original,
    a_wrong_master_key_cannot_read_anything,
    queue_assignee_and_tags_are_sealed_at_rest,
    verifying_while_appends_commit_finds_nothing_wrong,
    a_burst_of_mixed_appends_is_answered_as_one_by_one,
    a_row_that_cannot_be_written_fails_only_its_own_appends,
);

fn message(body: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        channel: Channel::Chat,
        kind: EventKind::Message,
        actor: Actor {
            actor_type: ActorType::Patient,
            id: None,
        },
        body: Some(body.into()),
        meta: Default::default(),
        idempotency_key: key.map(str::to_owned),
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

async fn concurrent_appends_get_gap_free_seqs(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap();
    let conv = conversation(&store, &t.id).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (store, t, conv) = (store.clone(), t.id.clone(), conv.clone());
            tokio::spawn(async move {
                store
                    .append_event(&t, &conv, message(&format!("m{i}"), None), "test")
                    .await
                    .unwrap()
                    .event
                    .seq
            })
        })
        .collect();
    let mut seqs = HashSet::new();
    for task in tasks {
        assert!(seqs.insert(task.await.unwrap()));
    }
    assert_eq!(seqs, (1..=200).collect::<HashSet<i64>>());
    assert!(store.verify().await.unwrap().is_intact());
}

async fn a_failing_write_does_not_spoil_its_batch(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap();
    let conv = conversation(&store, &t.id).await;
    store
        .transition(
            &t.id,
            &conv,
            Transition::Close,
            TransitionParams::default(),
            Actor::system(),
            "test",
        )
        .await
        .unwrap();
    // Interleave writes that fail inside the writer (invalid transition after
    // the state is read, missing conversation) with good ones.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (s, t, c) = (store.clone(), t.id.clone(), conv.clone());
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => s
                    .transition(
                        &t,
                        &c,
                        Transition::Close,
                        TransitionParams::default(),
                        Actor::system(),
                        "test",
                    )
                    .await
                    .map(|_| ()),
                1 => s
                    .append_event(&t, "no-such-conversation", message("x", None), "test")
                    .await
                    .map(|_| ()),
                _ => s
                    .append_event(
                        &t,
                        &c,
                        NewEvent {
                            actor: Actor::system(),
                            ..message(&format!("ok {i}"), None)
                        },
                        "test",
                    )
                    .await
                    .map(|_| ()),
            }
        }));
    }
    let mut ok = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match (i % 3, task.await.unwrap()) {
            (0, Err(StoreError::InvalidTransition(_))) | (1, Err(StoreError::NotFound(_))) => {}
            (2, Ok(())) => ok += 1,
            (kind, other) => panic!("job {i} (kind {kind}) gave {other:?}"),
        }
    }
    let conv_now = store.get_conversation(&t.id, &conv).await.unwrap();
    assert_eq!(
        conv_now.last_seq,
        1 + ok,
        "the close plus every good append, nothing else"
    );
    let report = store.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
}

async fn everything_is_scoped_to_its_tenant(backend: Backend) {
    let store = support::open(backend).await;
    let a = store.create_tenant("a", "eu", "test").await.unwrap();
    let b = store.create_tenant("b", "us", "test").await.unwrap();
    let conv = conversation(&store, &a.id).await;
    assert!(matches!(
        store
            .append_event(&b.id, &conv, message("x", None), "test")
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.list_events(&b.id, &conv, 0, 10, "test").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.context(&b.id, &conv, 10, "test").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_conversation(&b.id, &conv).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store.create_tenant("a", "eu", "test").await.is_err(),
        "tenant names are unique"
    );
}

async fn idempotent_appends_return_the_original(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap();
    let conv = conversation(&store, &t.id).await;
    let first = store
        .append_event(&t.id, &conv, message("one", Some("k")), "test")
        .await
        .unwrap();
    let again = store
        .append_event(&t.id, &conv, message("one", Some("k")), "test")
        .await
        .unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.event.seq, first.event.seq);
    assert_eq!(again.event.body.as_deref(), Some("one"));
    // The same key with different content is refused, naming the key.
    let err = store
        .append_event(&t.id, &conv, message("two", Some("k")), "test")
        .await
        .unwrap_err();
    assert!(
        matches!(err, continuum_store::StoreError::IdempotencyMismatch(ref k) if k == "k"),
        "{err}"
    );
    assert!(store.verify().await.unwrap().is_intact());
}

async fn a_wrong_master_key_cannot_read_anything(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap();
    let conv = conversation(&store, &t.id).await;
    store
        .append_event(&t.id, &conv, message("secret", None), "test")
        .await
        .unwrap();
    store.shutdown();
    let other = Store::connect(
        &store.location,
        SecretKey::generate(),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    let err = other
        .list_events(&t.id, &conv, 0, 10, "test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("master key"), "{err}");
}

async fn queue_assignee_and_tags_are_sealed_at_rest(backend: Backend) {
    const QUEUE: &str = "psychiatry-crisis";
    const TAG: &str = "hiv-positive";
    const NURSE: &str = "nurse@example.org";
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap();
    let contact = store
        .create_contact(
            &t.id,
            ContactInput {
                display_name: Some("P".into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let created = store
        .create_conversation(
            &t.id,
            NewConversation {
                contact_id: contact.id,
                subject: Some("subject".into()),
                queue: Some(QUEUE.into()),
                tags: vec![TAG.into()],
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(created.queue.as_deref(), Some(QUEUE));
    assert_eq!(created.tags, vec![TAG.to_owned()]);
    let other = conversation(&store, &t.id).await;
    let (assigned, _) = store
        .transition(
            &t.id,
            &created.id,
            Transition::Assign,
            TransitionParams {
                assignee: Some(NURSE.into()),
                ..Default::default()
            },
            Actor::system(),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(assigned.assignee.as_deref(), Some(NURSE));
    assert_eq!(assigned.queue.as_deref(), Some(QUEUE));
    assert_eq!(assigned.tags, vec![TAG.to_owned()]);
    assert_eq!(assigned.subject.as_deref(), Some("subject"));
    // An append (which reads only the conversation's head) leaves them alone.
    store
        .append_event(&t.id, &created.id, message("hello", None), "test")
        .await
        .unwrap();

    let got = store.get_conversation(&t.id, &created.id).await.unwrap();
    assert_eq!(got.queue.as_deref(), Some(QUEUE));
    assert_eq!(got.assignee.as_deref(), Some(NURSE));
    assert_eq!(got.tags, vec![TAG.to_owned()]);
    assert_eq!(got.subject.as_deref(), Some("subject"));
    let context = store.context(&t.id, &created.id, 10, "test").await.unwrap();
    assert_eq!(context.conversation.assignee.as_deref(), Some(NURSE));
    assert_eq!(context.conversation.tags, vec![TAG.to_owned()]);

    let list = |assignee: Option<&str>| {
        store.list_conversations(
            &t.id,
            ConversationFilter {
                assignee: assignee.map(str::to_owned),
                queue: None,
                limit: 10,
                ..Default::default()
            },
        )
    };
    let all = list(None).await.unwrap().conversations;
    assert_eq!(all.len(), 2);
    let listed = all.iter().find(|c| c.id == created.id).unwrap();
    assert_eq!(listed.queue.as_deref(), Some(QUEUE));
    assert_eq!(listed.assignee.as_deref(), Some(NURSE));
    assert_eq!(listed.tags, vec![TAG.to_owned()]);
    assert!(all.iter().any(|c| c.id == other && c.assignee.is_none()));
    let mine = list(Some(NURSE)).await.unwrap().conversations;
    assert_eq!(
        mine.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [created.id.as_str()]
    );
    assert_eq!(mine[0].tags, vec![TAG.to_owned()]);
    assert!(
        list(Some("doctor@example.org"))
            .await
            .unwrap()
            .conversations
            .is_empty()
    );

    // The row itself: clear columns empty, blind indexes set.
    let row = support::raw_query(
        &store,
        &format!(
            "SELECT CASE WHEN queue IS NULL AND assignee IS NULL AND tags = '[]' THEN 1 ELSE 0 END, length(queue_idx), length(assignee_idx)
             FROM conversations WHERE id = '{}'",
            created.id
        ),
    );
    assert_eq!(
        row, "1|32|32",
        "the clear columns stay NULL / '[]', the blind indexes are set"
    );
    let bytes = support::raw_bytes(&store);
    for s in [QUEUE, TAG, NURSE] {
        assert!(
            !support::holds(&bytes, s),
            "`{s}` is on disk in clear while open"
        );
    }
    // A patient writing into the closed conversation reopens it (loaded in
    // full on the append path): unassigned, queue and tags kept.
    store
        .transition(
            &t.id,
            &created.id,
            Transition::Close,
            TransitionParams::default(),
            Actor::system(),
            "test",
        )
        .await
        .unwrap();
    let reopened = store
        .append_event(&t.id, &created.id, message("again", None), "test")
        .await
        .unwrap();
    assert_eq!(reopened.also_written.len(), 1, "the reopen");
    let got = store.get_conversation(&t.id, &created.id).await.unwrap();
    assert_eq!(got.assignee, None);
    assert_eq!(got.queue.as_deref(), Some(QUEUE));
    assert_eq!(got.tags, vec![TAG.to_owned()]);
    assert_eq!(got.subject.as_deref(), Some("subject"));
    assert!(list(Some(NURSE)).await.unwrap().conversations.is_empty());
    assert!(store.verify().await.unwrap().is_intact());
    store.shutdown();
    let bytes = support::raw_bytes(&store);
    assert!(
        support::holds(&bytes, &created.id),
        "the check reads the right files"
    );
    for s in [QUEUE, TAG, NURSE] {
        assert!(
            !support::holds(&bytes, s),
            "`{s}` is on disk in clear after shutdown"
        );
    }
}

async fn verifying_while_appends_commit_finds_nothing_wrong(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap().id;
    let conv = conversation(&store, &t).await;
    // On PostgreSQL the appends come from another node.
    let appender = match backend {
        Backend::Sqlite => store.store.clone(),
        Backend::Postgres => store.reopen().await,
    };
    let writer = {
        let (t, conv) = (t.clone(), conv.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                appender
                    .append_event(&t, &conv, message(&format!("m{i}"), None), "test")
                    .await
                    .unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let report = store.verify().await.unwrap();
        assert!(report.is_intact(), "{report:?}");
    }
    writer.await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 300);
}

/// Many appends at once, of every kind a batch must tell apart (PostgreSQL
/// writes them in batches, SQLite's writer in one transaction): plain ones
/// on several conversations, retries of one key racing each other, one key
/// with two different contents, another tenant's conversation, inbound
/// events on a closed conversation. Each is answered exactly as it would be
/// alone, the timelines stay gap-free, every new event has its webhook
/// delivery, and the audit chain verifies.
async fn a_burst_of_mixed_appends_is_answered_as_one_by_one(backend: Backend) {
    use continuum_store::WebhookPayload;
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap().id;
    let other = store.create_tenant("o", "local", "test").await.unwrap().id;
    store
        .create_webhook(
            &t,
            "https://example.org/hook",
            vec!["event.created".into()],
            WebhookPayload::Thin,
            "test",
        )
        .await
        .unwrap();
    let mut convs = Vec::new();
    for _ in 0..4 {
        convs.push(conversation(&store, &t).await);
    }
    let closed = conversation(&store, &t).await;
    store
        .transition(
            &t,
            &closed,
            Transition::Close,
            TransitionParams::default(),
            Actor::system(),
            "test",
        )
        .await
        .unwrap();

    #[derive(Debug)]
    enum Ask {
        Plain(usize),
        Keyed(usize),
        Mismatch(usize),
        OtherTenant,
        Inbound,
    }
    let mut asks = Vec::new();
    for i in 0..120 {
        asks.push(Ask::Plain(i));
    }
    for k in 0..10 {
        asks.push(Ask::Keyed(k));
        asks.push(Ask::Keyed(k));
    }
    asks.push(Ask::Mismatch(0));
    asks.push(Ask::Mismatch(1));
    for _ in 0..5 {
        asks.push(Ask::OtherTenant);
        asks.push(Ask::Inbound);
    }
    let tasks: Vec<_> = asks
        .into_iter()
        .map(|ask| {
            let (s, t, other, convs, closed) = (
                store.store.clone(),
                t.clone(),
                other.clone(),
                convs.clone(),
                closed.clone(),
            );
            tokio::spawn(async move {
                let staff = |body: String, key: Option<String>| NewEvent {
                    actor: Actor::system(),
                    idempotency_key: key,
                    ..message(&body, None)
                };
                let r = match &ask {
                    Ask::Plain(i) => {
                        s.append_event(&t, &convs[i % 4], staff(format!("plain {i}"), None), "test")
                            .await
                    }
                    Ask::Keyed(k) => {
                        s.append_event(
                            &t,
                            &convs[k % 4],
                            staff(format!("keyed {k}"), Some(format!("key-{k}"))),
                            "test",
                        )
                        .await
                    }
                    Ask::Mismatch(v) => {
                        s.append_event(
                            &t,
                            &convs[0],
                            staff(format!("version {v}"), Some("one-key".into())),
                            "test",
                        )
                        .await
                    }
                    // Another tenant, naming a conversation of `t` and a
                    // key `t` uses there: not found, not a duplicate.
                    Ask::OtherTenant => {
                        s.append_event(
                            &other,
                            &convs[1],
                            staff("keyed 1".into(), Some("key-1".into())),
                            "test",
                        )
                        .await
                    }
                    Ask::Inbound => {
                        s.append_event(&t, &closed, message("I am back", None), "test")
                            .await
                    }
                };
                (ask, r)
            })
        })
        .collect();

    let (mut created, mut keyed, mut mismatch, mut reopened) = (0, Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (ask, r) = task.await.unwrap();
        match (ask, r) {
            (Ask::Plain(_), Ok(a)) => {
                assert!(a.created);
                created += 1;
            }
            (Ask::Keyed(k), Ok(a)) => {
                created += a.created as usize;
                keyed.push((k, a.created, a.event.conversation_id.clone(), a.event.seq));
            }
            (Ask::Mismatch(_), r) => {
                if let Ok(a) = &r {
                    created += a.created as usize;
                }
                mismatch.push(r);
            }
            (Ask::OtherTenant, r) => {
                assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}")
            }
            (Ask::Inbound, Ok(a)) => {
                assert!(a.created);
                created += 1;
                if !a.also_written.is_empty() {
                    reopened += 1;
                }
            }
            (ask, r) => panic!("{ask:?} answered {r:?}"),
        }
    }
    // Each key stored once; its two requests answered with the same event.
    for k in 0..10 {
        let answers: Vec<_> = keyed.iter().filter(|a| a.0 == k).collect();
        assert_eq!(answers.len(), 2);
        assert_eq!(
            answers.iter().filter(|a| a.1).count(),
            1,
            "key-{k} created once"
        );
        assert_eq!((&answers[0].2, answers[0].3), (&answers[1].2, answers[1].3));
    }
    assert_eq!(mismatch.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        mismatch
            .iter()
            .any(|r| matches!(r, Err(StoreError::IdempotencyMismatch(_)))),
        "{mismatch:?}"
    );
    assert_eq!(reopened, 1, "the closed conversation reopened once");
    assert_eq!(created, 120 + 10 + 1 + 5);

    // Gap-free timelines that hold exactly what was acknowledged.
    let mut stored = 0;
    for c in convs.iter().chain([&closed]) {
        let events = store.list_events(&t, c, 0, 1000, "test").await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "{c}");
        let conv = store.get_conversation(&t, c).await.unwrap();
        assert_eq!(conv.last_seq, events.len() as i64);
        stored += events.len();
    }
    // The closed conversation: its close, its reopen and five messages.
    assert_eq!(stored, created + 2);
    // One delivery per event (the webhook came first).
    assert_eq!(store.outbox_depth().await.unwrap(), stored as i64);
    let report = store.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked as usize, stored);
}

/// A conversation whose next `seq` is already taken (a row planted past the
/// store, as a bad manual fix would): its appends fail, each with an error,
/// and the appends to other conversations that share their batch (or, on
/// SQLite, their transaction) are written all the same.
async fn a_row_that_cannot_be_written_fails_only_its_own_appends(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "local", "test").await.unwrap().id;
    let bad = conversation(&store, &t).await;
    let mut good = Vec::new();
    for _ in 0..3 {
        good.push(conversation(&store, &t).await);
    }
    store
        .append_event(&t, &bad, message("first", None), "test")
        .await
        .unwrap();
    let blob = match backend {
        Backend::Sqlite => "X'00'",
        Backend::Postgres => "'\\x00'::bytea",
    };
    let planted = support::raw_query(
        &store,
        &format!(
            "INSERT INTO events (conversation_id, seq, tenant_id, at, channel, kind, actor_type, payload)
             VALUES ('{bad}', 2, '{t}', 0, 'chat', 'message', 'patient', {blob}) RETURNING seq"
        ),
    );
    assert_eq!(planted, "2");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (s, t) = (store.store.clone(), t.clone());
            let conv = if i % 4 == 0 {
                bad.clone()
            } else {
                good[i % 3].clone()
            };
            tokio::spawn(async move {
                let r = s
                    .append_event(&t, &conv, message(&format!("m{i}"), None), "test")
                    .await;
                (conv, r)
            })
        })
        .collect();
    let (mut failed, mut written) = (0, 0);
    for task in tasks {
        let (conv, r) = task.await.unwrap();
        if conv == bad {
            let e = r.expect_err("an append onto a taken seq must fail");
            assert!(matches!(e, StoreError::Database(_)), "{e:?}");
            failed += 1;
        } else {
            r.unwrap();
            written += 1;
        }
    }
    assert_eq!((failed, written), (10, 30));
    for c in &good {
        let events = store.list_events(&t, c, 0, 100, "test").await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    }
    assert_eq!(store.get_conversation(&t, &bad).await.unwrap().last_seq, 1);
}
