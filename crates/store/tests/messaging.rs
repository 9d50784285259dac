//! The messaging tables through the store's API: the outbox's life cycle
//! (queue, claim, outcome, receipts out of order, crash recovery), idempotent
//! queueing, opt-out suppression, inbound de-duplication, tenant scoping.

use continuum_core::{Actor, ActorType, Channel, EventKind};
use continuum_store::{
    ConsentChange, ContactInput, FailedAttempt, InboundRecord, MessageRef, MessageState,
    NewConversation, NewMessagingProvider, NewOutboundMessage, ProviderKind, SendOutcome, Store,
    StoreError,
};
use support::Backend;

mod support;

both!(
    outbox_life_cycle_and_receipts_out_of_order,
    retry_requeues_and_failure_dead_letters,
    claimed_messages_become_unconfirmed_after_a_crash,
    opt_out_suppresses_queueing_and_queued_messages,
    inbound_is_stored_once_per_provider_id_and_opens_the_window,
    providers_are_tenant_scoped_and_secrets_sealed,
);

const PATIENT: &str = "+14155550100";
const CLINIC: &str = "+14155559999";

async fn setup(store: &Store, name: &str) -> (String, String) {
    let tenant = store.create_tenant(name, "us", "test").await.unwrap().id;
    let contact = store
        .create_contact(
            &tenant,
            ContactInput {
                display_name: Some("P".into()),
                phone: Some(PATIENT.into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let conv = store
        .create_conversation(
            &tenant,
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
        .id;
    (tenant, conv)
}

fn sms(body: &str, key: Option<&str>) -> NewOutboundMessage {
    NewOutboundMessage {
        channel: Channel::Sms,
        to: PATIENT.into(),
        from: Some(CLINIC.into()),
        body: Some(body.into()),
        media_urls: vec![],
        template: None,
        idempotency_key: key.map(str::to_owned),
        actor: Actor {
            actor_type: ActorType::Staff,
            id: Some("nurse-1".into()),
        },
        meta: Default::default(),
        compliance: false,
    }
}

async fn outbox_life_cycle_and_receipts_out_of_order(backend: Backend) {
    let store = support::open(backend).await;
    let (tenant, conv) = setup(&store, "a").await;
    let (m, appended) = store
        .enqueue_message(&tenant, &conv, sms("hello", Some("k1")), "test")
        .await
        .unwrap();
    assert_eq!(m.state, MessageState::Queued);
    assert_eq!(appended.event.kind, EventKind::Message);
    assert_eq!(appended.event.meta["message_id"], m.id.as_str());

    // The retried request gets the same message, not a second one.
    let (again, a2) = store
        .enqueue_message(&tenant, &conv, sms("hello", Some("k1")), "test")
        .await
        .unwrap();
    assert_eq!(again.id, m.id);
    assert!(!a2.created);
    // Same key, other content: refused.
    let err = store
        .enqueue_message(&tenant, &conv, sms("other", Some("k1")), "test")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyMismatch(_)), "{err}");

    let claimed = store.claim_due_messages(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.to, PATIENT);
    assert_eq!(claimed[0].message.attempts, 1);
    assert!(store.claim_due_messages(10).await.unwrap().is_empty());

    // The delivery receipt beats the API's answer.
    store
        .apply_receipt(
            &tenant,
            MessageRef::Ours(m.id.clone()),
            MessageState::Delivered,
            Default::default(),
        )
        .await
        .unwrap()
        .expect("delivered is news");
    let after = store
        .record_send_outcome(
            &tenant,
            &m.id,
            SendOutcome::Sent {
                provider_id: "p1".into(),
                provider_message_id: "SM1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after.state,
        MessageState::Delivered,
        "a late `sent` must not undo `delivered`"
    );
    // A stale `sent` receipt writes nothing.
    let stale = store
        .apply_receipt(
            &tenant,
            MessageRef::Provider {
                provider_id: "p1".into(),
                provider_message_id: "SM1".into(),
            },
            MessageState::Sent,
            Default::default(),
        )
        .await
        .unwrap();
    assert!(stale.is_none());
    let read = store
        .apply_receipt(
            &tenant,
            MessageRef::Provider {
                provider_id: "p1".into(),
                provider_message_id: "SM1".into(),
            },
            MessageState::Read,
            Default::default(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.kind, EventKind::DeliveryStatus);
    assert_eq!(read.meta["of_seq"], m.event_seq);
    assert_eq!(
        store
            .get_message(&tenant, &m.id, "test")
            .await
            .unwrap()
            .state,
        MessageState::Read
    );
    assert!(store.verify().await.unwrap().is_intact());
}

async fn retry_requeues_and_failure_dead_letters(backend: Backend) {
    let store = support::open(backend).await;
    let (tenant, conv) = setup(&store, "a").await;
    let (m, _) = store
        .enqueue_message(&tenant, &conv, sms("x", None), "test")
        .await
        .unwrap();
    store.claim_due_messages(10).await.unwrap();
    let future = continuum_core::clock::unix_micros() + 3_600_000_000;
    let r = store
        .record_send_outcome(
            &tenant,
            &m.id,
            SendOutcome::Retry {
                provider_id: "p2".into(),
                at: future,
                error: "HTTP 503".into(),
                failed: Some(FailedAttempt {
                    provider: "p1".into(),
                    failure: "retryable".into(),
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.state, MessageState::Queued);
    assert_eq!(r.provider_id.as_deref(), Some("p2"));
    assert_eq!(
        r.attempt_log,
        vec![FailedAttempt {
            provider: "p1".into(),
            failure: "retryable".into()
        }]
    );
    assert!(
        store.claim_due_messages(10).await.unwrap().is_empty(),
        "not due yet"
    );
    assert_eq!(store.next_message_due().await.unwrap(), Some(future));
    let f = store
        .record_send_outcome(
            &tenant,
            &m.id,
            SendOutcome::Failed {
                provider_id: Some("p2".into()),
                error: "21211: invalid To".into(),
                failed: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(f.state, MessageState::Failed);
    let events = store
        .list_events(&tenant, &conv, 0, 100, "test")
        .await
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, EventKind::DeliveryStatus);
    assert_eq!(last.meta["status"], "failed");
}

async fn claimed_messages_become_unconfirmed_after_a_crash(backend: Backend) {
    let first = support::open(backend).await;
    let (tenant, conv, id) = {
        let store = &first.store;
        let (tenant, conv) = setup(store, "a").await;
        let (m, _) = store
            .enqueue_message(&tenant, &conv, sms("x", None), "test")
            .await
            .unwrap();
        store
            .enqueue_message(&tenant, &conv, sms("y", None), "test")
            .await
            .unwrap();
        assert_eq!(store.claim_due_messages(1).await.unwrap().len(), 1);
        store.shutdown();
        (tenant, conv, m.id)
    };
    if backend == Backend::Postgres {
        // Another node, up while this one was away, leaves the claim alone:
        // it could be in flight on its node until the lease runs out.
        let other = continuum_store::Store::connect(
            &first.location,
            first.key.clone(),
            continuum_store::StoreOptions {
                node: "another-node".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(other.recover_claimed_messages().await.unwrap(), 0);
        // Once the claim is older than the lease, its node is taken as dead.
        support::raw_query(
            &first,
            &format!(
                "UPDATE messages SET updated_at = updated_at - {} WHERE state = 'sending'",
                continuum_store::SENDING_LEASE.as_micros() + 1
            ),
        );
        assert_eq!(other.recover_claimed_messages().await.unwrap(), 1);
    }
    // SQLite: the node that claimed it starts again, and its own claims are
    // abandoned (on PostgreSQL the same holds, tested in tests/cluster.rs's
    // neighbour, the messaging end-to-end suite).
    let store = first.reopen().await;
    if backend == Backend::Sqlite {
        assert_eq!(store.recover_claimed_messages().await.unwrap(), 1);
    }
    assert_eq!(
        store.get_message(&tenant, &id, "test").await.unwrap().state,
        MessageState::Unconfirmed
    );
    // The one never claimed is still queued, and is claimed once.
    assert_eq!(store.claim_due_messages(10).await.unwrap().len(), 1);
    // A late receipt shows the provider had the unconfirmed one.
    store
        .apply_receipt(
            &tenant,
            MessageRef::Ours(id.clone()),
            MessageState::Delivered,
            Default::default(),
        )
        .await
        .unwrap()
        .unwrap();
    let all = store.list_messages(&tenant, &conv, "test").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].state, MessageState::Delivered);
}

async fn opt_out_suppresses_queueing_and_queued_messages(backend: Backend) {
    let store = support::open(backend).await;
    let (tenant, conv) = setup(&store, "a").await;
    let (queued, _) = store
        .enqueue_message(&tenant, &conv, sms("before", None), "test")
        .await
        .unwrap();
    let change = |opted_out| ConsentChange {
        channel: Channel::Sms,
        sender: CLINIC.into(),
        recipient: PATIENT.into(),
        opted_out,
        source: if opted_out {
            "STOP".into()
        } else {
            "START".into()
        },
        actor: Actor {
            actor_type: ActorType::Patient,
            id: None,
        },
    };
    let ev = store
        .set_consent(&tenant, &conv, change(true), "test")
        .await
        .unwrap();
    assert_eq!(ev.event.kind, EventKind::OptOut);
    assert!(
        store
            .is_suppressed(&tenant, Channel::Sms, CLINIC, PATIENT)
            .await
            .unwrap()
    );
    let err = store
        .enqueue_message(&tenant, &conv, sms("after", None), "test")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Suppressed(_)), "{err}");
    // Another sender number is not covered by this opt-out.
    let mut other = sms("other sender", None);
    other.from = Some("+14155558888".into());
    store
        .enqueue_message(&tenant, &conv, other, "test")
        .await
        .unwrap();
    // The one queued before the STOP is suppressed at claim time.
    let claimed = store.claim_due_messages(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.body.as_deref(), Some("other sender"));
    assert_eq!(
        store
            .get_message(&tenant, &queued.id, "test")
            .await
            .unwrap()
            .state,
        MessageState::Suppressed
    );
    let ctx = store.context(&tenant, &conv, 10, "test").await.unwrap();
    assert_eq!(ctx.opted_out, vec![Channel::Sms]);
    store
        .set_consent(&tenant, &conv, change(false), "test")
        .await
        .unwrap();
    assert!(
        !store
            .is_suppressed(&tenant, Channel::Sms, CLINIC, PATIENT)
            .await
            .unwrap()
    );
    store
        .enqueue_message(&tenant, &conv, sms("again", None), "test")
        .await
        .unwrap();
}

async fn inbound_is_stored_once_per_provider_id_and_opens_the_window(backend: Backend) {
    let store = support::open(backend).await;
    let (tenant, conv) = setup(&store, "a").await;
    let rec = InboundRecord {
        provider_id: "p1".into(),
        provider_message_id: "SM123".into(),
        channel: Channel::Whatsapp,
        from: PATIENT.into(),
        to: CLINIC.into(),
        body: Some("hi".into()),
        meta: Default::default(),
    };
    assert_eq!(
        store
            .last_inbound_at(&tenant, Channel::Whatsapp, PATIENT)
            .await
            .unwrap(),
        None
    );
    let first = store
        .record_inbound_message(&tenant, &conv, rec.clone(), "test")
        .await
        .unwrap();
    assert!(first.created);
    let second = store
        .record_inbound_message(&tenant, &conv, rec.clone(), "test")
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.event.seq, first.event.seq);
    let events = store
        .list_events(&tenant, &conv, 0, 100, "test")
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Message)
            .count(),
        1
    );
    assert!(
        store
            .last_inbound_at(&tenant, Channel::Whatsapp, PATIENT)
            .await
            .unwrap()
            .is_some()
    );
    // Another tenant cannot replay the id onto its own conversation.
    let (other, other_conv) = setup(&store, "b").await;
    let err = store
        .record_inbound_message(&other, &other_conv, rec, "test")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
}

async fn providers_are_tenant_scoped_and_secrets_sealed(backend: Backend) {
    let store = support::open(backend).await;
    let (a, _) = setup(&store, "a").await;
    let (b, conv_b) = setup(&store, "b").await;
    let mut secret = serde_json::Map::new();
    secret.insert("auth_token".into(), "tok-very-secret".into());
    let p = store
        .create_messaging_provider(
            &a,
            NewMessagingProvider {
                name: "twilio".into(),
                kind: ProviderKind::Twilio,
                priority: 1,
                channels: vec![Channel::Sms],
                senders: vec![CLINIC.into()],
                spec: Default::default(),
                secret,
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(store.list_messaging_providers(&a).await.unwrap().len(), 1);
    assert!(store.list_messaging_providers(&b).await.unwrap().is_empty());
    let found = store.messaging_provider(&p.id).await.unwrap();
    assert_eq!(found.tenant_id, a);
    assert_eq!(found.secret["auth_token"], "tok-very-secret");
    assert!(matches!(
        store.delete_messaging_provider(&b, &p.id, "test").await,
        Err(StoreError::NotFound(_))
    ));
    // Tenant b cannot queue on a's... nor read a's messages by id.
    let (m, _) = store
        .enqueue_message(&b, &conv_b, sms("b's", None), "test")
        .await
        .unwrap();
    assert!(matches!(
        store.get_message(&a, &m.id, "test").await,
        Err(StoreError::NotFound(_))
    ));
    // No secret or phone number in clear in the database (SQLite's file
    // and WAL, or every row PostgreSQL holds).
    store.shutdown();
    let raw = support::raw_bytes(&store);
    assert!(
        support::holds(&raw, &m.id),
        "the check reads the right data"
    );
    assert!(!support::holds(&raw, "tok-very-secret"));
    assert!(!support::holds(&raw, PATIENT));
}
