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
