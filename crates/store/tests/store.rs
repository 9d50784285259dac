//! The store on its own: group commit under concurrency, isolation of failing
//! writes inside a batch, tenant scoping, and verification.

use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Transition};
use continuum_store::{
    ContactInput, NewConversation, SecretKey, Store, StoreError, StoreOptions, TransitionParams,
};
use std::collections::HashSet;

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, SecretKey::generate(), StoreOptions::default()).unwrap()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_gap_free_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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
    assert!(store.verify().unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_does_not_spoil_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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
    let report = store.verify().unwrap();
    assert!(report.is_intact(), "{report:?}");
}

#[tokio::test]
async fn everything_is_scoped_to_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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

#[tokio::test]
async fn idempotent_appends_return_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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
    assert!(store.verify().unwrap().is_intact());
}

#[tokio::test]
async fn a_wrong_master_key_cannot_read_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = store.create_tenant("t", "local", "test").await.unwrap();
    let conv = conversation(&store, &t.id).await;
    store
        .append_event(&t.id, &conv, message("secret", None), "test")
        .await
        .unwrap();
    store.shutdown();
    let other = open(dir.path());
    let err = other
        .list_events(&t.id, &conv, 0, 10, "test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("master key"), "{err}");
}
