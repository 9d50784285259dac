//! The rest of the store's SQL on both backends: every call of the modules
//! the other suites do not reach (contacts and their bindings, conversation
//! filters, timeline markers and media sessions, the inbox, tokens and keys,
//! rooms, voice, routing, IVR, attachments, webhooks), each checked for what
//! it returns, so a statement PostgreSQL reads differently fails here.

use continuum_core::{Actor, ActorType, BindingKind, Channel, EventKind, NewEvent, Role};
use continuum_store::{
    AgentSpec, AppointmentInput, AppointmentUpsert, AttachmentFilter, CallDirection, CallState,
    ContactInput, ConversationFilter, DispatchAction, NewAttachment, NewCall, NewConversation,
    NewMessagingProvider, NewOutboundMessage, NewRoutingTask, ProviderKind, QueueSpec,
    ReminderSettings, ReviewState, Store, StoreError, TaskState, TemplateInput, Timestamp,
    TrunkSpec, UpsertOutcome, VisitSettings, WebhookPayload,
};
use std::collections::BTreeSet;
use support::Backend;

mod support;

both!(
    contacts_bindings_and_conversation_filters,
    timeline_markers_media_sessions_and_context,
    the_inbox_counts_unread_patient_messages,
    tokens_keys_staff_and_tenants,
    rooms_and_voice,
    routing_queues_agents_and_tasks,
    ivr_flows_and_calendars,
    attachments_are_recorded_and_reviewed_once,
    webhooks_queue_deliver_and_record,
    reminder_templates_settings_and_a_batch_with_a_bad_row,
    the_remaining_reads_and_writes,
);

const PHONE: &str = "+14155550100";

fn event(kind: EventKind, channel: Channel, actor: ActorType) -> NewEvent {
    NewEvent {
        channel,
        kind,
        actor: Actor {
            actor_type: actor,
            id: None,
        },
        body: Some("x".into()),
        meta: Default::default(),
        idempotency_key: None,
    }
}

fn with_meta(mut ev: NewEvent, key: &str, value: &str) -> NewEvent {
    ev.meta.insert(key.into(), value.into());
    ev
}

async fn contact(store: &Store, tenant: &str, phone: Option<&str>) -> String {
    store
        .create_contact(
            tenant,
            ContactInput {
                display_name: Some("P".into()),
                phone: phone.map(str::to_owned),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap()
        .id
}

async fn conversation(store: &Store, tenant: &str, contact: &str) -> String {
    store
        .create_conversation(
            tenant,
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

fn ids(list: &[continuum_store::Conversation]) -> BTreeSet<String> {
    list.iter().map(|c| c.id.clone()).collect()
}

fn set<const N: usize>(items: [&String; N]) -> BTreeSet<String> {
    items.into_iter().cloned().collect()
}

async fn contacts_bindings_and_conversation_filters(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let a = contact(&store, &t, Some(PHONE)).await;
    let b = contact(&store, &t, None).await;
    // A number binds one contact of the tenant.
    let taken = store
        .create_contact(
            &t,
            ContactInput {
                display_name: Some("Q".into()),
                phone: Some(PHONE.into()),
                ..Default::default()
            },
            "test",
        )
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let updated = store
        .update_contact(
            &t,
            &a,
            ContactInput {
                time_zone: Some("Europe/Berlin".into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(updated.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(updated.bindings.phone.as_deref(), Some(PHONE));
    let found = store
        .find_contact_by_binding(&t, BindingKind::Phone, PHONE, "test")
        .await
        .unwrap();
    assert_eq!(found.id, a);
    // Pages of one, in id order, each contact once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_contacts(&t, cursor, 1, "test").await.unwrap();
        seen.extend(page.contacts.iter().map(|c| c.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut sorted = vec![a.clone(), b.clone()];
    sorted.sort();
    assert_eq!(seen, sorted);

    let c1 = conversation(&store, &t, &a).await;
    let c2 = conversation(&store, &t, &a).await;
    let c3 = conversation(&store, &t, &b).await;
    let within = |contact: &String, only: Option<Vec<&String>>| {
        let only = only.map(|v| v.into_iter().cloned().collect());
        let (store, t, contact) = (store.store.clone(), t.clone(), contact.clone());
        async move { store.contact_in_conversations(&t, &contact, only).await }
    };
    assert!(within(&a, None).await.unwrap());
    assert!(within(&a, Some(vec![&c1])).await.unwrap());
    assert!(within(&a, Some(vec![&c3, &c2])).await.unwrap());
    assert!(!within(&a, Some(vec![&c3])).await.unwrap());
    assert!(!within(&b, Some(vec![&c1, &c2])).await.unwrap());
    assert!(!within(&b, Some(vec![])).await.unwrap());

    let list = |f: ConversationFilter| store.list_conversations(&t, f);
    let all = list(ConversationFilter {
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(ids(&all.conversations), set([&c1, &c2, &c3]));
    let of_a = list(ConversationFilter {
        contact_id: Some(a.clone()),
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(ids(&of_a.conversations), set([&c1, &c2]));
    let only = list(ConversationFilter {
        only: Some(vec![c1.clone(), c3.clone()]),
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(ids(&only.conversations), set([&c1, &c3]));
    let both = list(ConversationFilter {
        contact_id: Some(a.clone()),
        only: Some(vec![c2.clone(), c3.clone()]),
        state: Some(continuum_core::ConversationState::Open),
        updated_since: Some(Timestamp(0)),
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(ids(&both.conversations), set([&c2]));
    // Newest first, a page at a time.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = list(ConversationFilter {
            cursor,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        paged.extend(page.conversations.iter().map(|c| c.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(paged, [c3, c2, c1]);
}

async fn timeline_markers_media_sessions_and_context(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    let append = |ev: NewEvent| store.append_event(&t, &conv, ev, "test");
    let patient = |kind| event(kind, Channel::Sms, ActorType::Patient);
    // Opted out twice (the marker is replaced), then back in.
    append(patient(EventKind::OptOut)).await.unwrap();
    let second = append(patient(EventKind::OptOut)).await.unwrap().event.seq;
    let ctx = store.context(&t, &conv, 10, "test").await.unwrap();
    assert_eq!(ctx.opted_out, vec![Channel::Sms]);
    append(patient(EventKind::OptIn)).await.unwrap();
    let ctx = store.context(&t, &conv, 10, "test").await.unwrap();
    assert!(ctx.opted_out.is_empty(), "{:?}", ctx.opted_out);
    assert!(second > 0);
    // The latest triage wins.
    let triage = |level: &str| {
        with_meta(
            event(EventKind::TriageResult, Channel::System, ActorType::Bot),
            "level",
            level,
        )
    };
    append(triage("low")).await.unwrap();
    let last = append(triage("high")).await.unwrap().event.seq;
    // A session started twice (a retried webhook) is one session.
    let call = |kind| {
        with_meta(
            event(kind, Channel::Voice, ActorType::System),
            "session_id",
            "s1",
        )
    };
    let started = append(call(EventKind::CallStarted))
        .await
        .unwrap()
        .event
        .seq;
    append(call(EventKind::CallStarted)).await.unwrap();
    let ctx = store.context(&t, &conv, 100, "test").await.unwrap();
    assert_eq!(ctx.last_triage.as_ref().map(|e| e.seq), Some(last));
    assert_eq!(ctx.open_media_sessions.len(), 1);
    assert_eq!(ctx.open_media_sessions[0].started_seq, started);
    let sms = ctx
        .channels
        .iter()
        .find(|c| c.channel == Channel::Sms)
        .unwrap();
    assert_eq!(sms.events, 3);
    assert_eq!(ctx.recent_events.len(), 7);
    append(call(EventKind::CallEnded)).await.unwrap();
    let ctx = store.context(&t, &conv, 3, "test").await.unwrap();
    assert!(ctx.open_media_sessions.is_empty());
    assert_eq!(ctx.recent_events.len(), 3);
    let page = store
        .list_events(&t, &conv, started, 100, "test")
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let audit = store.list_audit(&t, 0, 1000).await.unwrap();
    let page = store
        .list_audit(&t, audit[audit.len() - 3].position, 1000)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert!(store.verify().await.unwrap().is_intact());
}

async fn the_inbox_counts_unread_patient_messages(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    for kind in [ActorType::Patient, ActorType::Staff, ActorType::Patient] {
        store
            .append_event(
                &t,
                &conv,
                event(EventKind::Message, Channel::Chat, kind),
                "test",
            )
            .await
            .unwrap();
    }
    store
        .mark_chat_receipt(&t, &conv, "dr", Role::Clinician, None, Some(1))
        .await
        .unwrap();
    let page = store
        .inbox(
            &t,
            ConversationFilter {
                limit: 10,
                ..Default::default()
            },
            "dr",
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let item = &page.items[0];
    assert_eq!(item.unread, 1, "the patient's message after seq 1");
    assert_eq!(item.last_event.as_ref().map(|e| e.seq), Some(3));
    let other = store.inbox_item(&t, &conv, "nobody").await.unwrap();
    assert_eq!(other.unread, 2);
}

async fn tokens_keys_staff_and_tenants(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap();
    assert!(matches!(
        store.create_tenant("t", "eu", "test").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.find_tenant("t").await.unwrap().id, t.id);
    assert_eq!(store.find_tenant(&t.id).await.unwrap().name, "t");
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
    // A revocation keeps the latest expiry it was given.
    let far = 4_000_000_000u64;
    store
        .revoke_token(&t.id, "j1", far - 10, "test")
        .await
        .unwrap();
    store.revoke_token(&t.id, "j1", far, "test").await.unwrap();
    store
        .revoke_token(&t.id, "j1", far - 20, "test")
        .await
        .unwrap();
    let revoked = store.revoked_tokens(far - 100).await.unwrap();
    assert_eq!(revoked, vec![(t.id.clone(), "j1".to_owned(), far)]);
    assert!(store.revoked_tokens(far + 1).await.unwrap().is_empty());

    let (key, secret) = store.create_api_key(&t.id, "ci", "test").await.unwrap();
    assert_eq!(
        store.verify_api_key(&secret).await.unwrap(),
        Some((t.id.clone(), key.id.clone()))
    );
    store.revoke_api_key(&t.id, &key.id, "test").await.unwrap();
    assert_eq!(store.verify_api_key(&secret).await.unwrap(), None);
    assert_eq!(store.revoked_key_ids().await.unwrap(), vec![key.id.clone()]);
    let keys = store.list_api_keys(&t.id).await.unwrap();
    assert!(keys[0].revoked_at.is_some());
    let staff = store
        .create_staff(&t.id, Role::Clinician, "Dr Lee", None, "test")
        .await
        .unwrap();
    let all = store.list_staff(&t.id).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].id.as_str(), all[0].display_name.as_str()),
        (staff.id.as_str(), "Dr Lee")
    );
}

async fn rooms_and_voice(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    let room = store.create_room(&t, &conv, 4, true, "test").await.unwrap();
    let pin = room.pin.clone().unwrap();
    let got = store.get_room(&t, &room.id).await.unwrap();
    assert!(got.waiting_room);
    assert_eq!(got.pin.as_deref(), Some(pin.as_str()));
    let open = store.latest_open_room(&t, &conv).await.unwrap().unwrap();
    assert_eq!(open.id, room.id);
    assert_eq!(
        store.room_by_pin(&t, &pin).await.unwrap().map(|r| r.id),
        Some(room.id.clone())
    );
    let ended = store.end_room(&t, &room.id, "test").await.unwrap();
    let again = store.end_room(&t, &room.id, "test").await.unwrap();
    assert_eq!(ended.ended_at.map(|t| t.0), again.ended_at.map(|t| t.0));
    assert!(store.latest_open_room(&t, &conv).await.unwrap().is_none());
    assert!(store.room_by_pin(&t, &pin).await.unwrap().is_none());
    let settings = VisitSettings {
        waiting_room: true,
        support_contact: Some("the front desk".into()),
        ..Default::default()
    };
    store
        .set_visit_settings(&t, &settings, "test")
        .await
        .unwrap();
    store
        .set_visit_settings(&t, &settings, "test")
        .await
        .unwrap();
    assert_eq!(store.visit_settings(&t).await.unwrap(), settings);

    let inbound = TrunkSpec::Inbound {
        numbers: vec!["+14155559999".into()],
        allowed_sources: vec![],
    };
    let trunk = store
        .create_trunk(&t, "in", inbound.clone(), None, "test")
        .await
        .unwrap();
    assert!(matches!(
        store.create_trunk(&t, "in2", inbound, None, "test").await,
        Err(StoreError::Conflict(_))
    ));
    let found = store
        .inbound_trunk_for("+14155559999")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.trunk.id, trunk.id);
    let out = store
        .create_trunk(
            &t,
            "out",
            TrunkSpec::Outbound {
                address: "sip.example.org".into(),
                transport: Default::default(),
                caller_ids: vec!["+14155559999".into()],
                max_concurrent_calls: 2,
                media_encryption: Default::default(),
            },
            Some(("user".into(), "pass".into())),
            "test",
        )
        .await
        .unwrap();
    let outs = store.outbound_trunks(&t).await.unwrap();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].password.as_deref(), Some("pass"));
    assert_eq!(store.all_outbound_trunks().await.unwrap().len(), 1);
    assert_eq!(store.list_trunks(&t).await.unwrap().len(), 2);
    store.delete_trunk(&t, &trunk.id, "test").await.unwrap();
    assert!(
        store
            .inbound_trunk_for("+14155559999")
            .await
            .unwrap()
            .is_none()
    );

    let rule = store
        .create_dispatch_rule(&t, "+14155559999", DispatchAction::RoomPin, "test")
        .await
        .unwrap();
    store
        .create_dispatch_rule(
            &t,
            "*",
            DispatchAction::Conversation { queue: None },
            "test",
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_dispatch_rule(&t, "+14155559999", DispatchAction::RoomPin, "test")
            .await,
        Err(StoreError::Conflict(_))
    ));
    let own = store.dispatch_rule_for(&t, "+14155559999").await.unwrap();
    assert_eq!(own.map(|r| r.id), Some(rule.id.clone()));
    let fallback = store.dispatch_rule_for(&t, "+14155558888").await.unwrap();
    assert_eq!(fallback.map(|r| r.number), Some("*".to_owned()));
    assert_eq!(store.list_dispatch_rules(&t).await.unwrap().len(), 2);
    store
        .delete_dispatch_rule(&t, &rule.id, "test")
        .await
        .unwrap();

    let call = store
        .create_call(
            &t,
            NewCall {
                conversation_id: conv.clone(),
                room_id: None,
                direction: CallDirection::Outbound,
                remote: PHONE.into(),
                trunk_id: Some(out.id.clone()),
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(store.active_calls_on_trunk(&t, &out.id).await.unwrap(), 1);
    let answered = store
        .update_call(&t, &call.id, CallState::Answered, None)
        .await
        .unwrap();
    assert!(answered.answered_at.is_some() && answered.ended_at.is_none());
    let ended = store
        .update_call(&t, &call.id, CallState::Ended, Some("hangup"))
        .await
        .unwrap();
    assert_eq!(ended.state, CallState::Ended);
    assert_eq!(ended.cause.as_deref(), Some("hangup"));
    assert_eq!(
        ended.answered_at.map(|t| t.0),
        answered.answered_at.map(|t| t.0)
    );
    // A final state is never left.
    let after = store
        .update_call(&t, &call.id, CallState::Ringing, None)
        .await
        .unwrap();
    assert_eq!(after.state, CallState::Ended);
    assert_eq!(store.active_calls_on_trunk(&t, &out.id).await.unwrap(), 0);
    let calls = store.list_calls(&t, &conv).await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].remote, PHONE);
}

async fn routing_queues_agents_and_tasks(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    let (_, created) = store
        .put_queue(&t, "front", &QueueSpec::default(), "test")
        .await
        .unwrap();
    assert!(created);
    let (q, created) = store
        .put_queue(
            &t,
            "front",
            &QueueSpec {
                wrap_up_secs: 5,
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(q.wrap_up_secs, 5);
    store
        .put_queue(&t, "nurses", &QueueSpec::default(), "test")
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_queues(&t)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["front", "nurses"]);
    assert_eq!(store.all_queues().await.unwrap().len(), 2);
    assert!(store.get_queue(&t, "front").await.unwrap().is_some());
    let spec = AgentSpec {
        display_name: "Ann".into(),
        skills: vec![],
        capacity: Default::default(),
    };
    assert!(store.put_agent(&t, "ann", &spec, "test").await.unwrap().1);
    assert!(!store.put_agent(&t, "ann", &spec, "test").await.unwrap().1);
    assert_eq!(store.list_agents(&t).await.unwrap().len(), 1);
    assert!(store.get_agent(&t, "ann").await.unwrap().is_some());

    let new = || NewRoutingTask {
        queue: "front".into(),
        conversation_id: conv.clone(),
        channel: "voice".into(),
        priority: 1,
        skills: vec![],
        call_id: None,
        triage: Some("urgent".into()),
    };
    let task = store.create_routing_task(&t, new()).await.unwrap();
    assert!(matches!(
        store.create_routing_task(&t, new()).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .set_task_state(&t, &task.id, TaskState::Reserved, Some("ann"), None)
        .await
        .unwrap();
    store
        .set_task_state(&t, &task.id, TaskState::Assigned, None, Some("nurses"))
        .await
        .unwrap();
    let got = store.get_routing_task(&t, &task.id).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.agent.as_deref(), got.queue.as_str()),
        (TaskState::Assigned, Some("ann"), "nurses")
    );
    assert_eq!(got.triage.as_deref(), Some("urgent"));
    assert_eq!(store.agent_tasks(&t, "ann").await.unwrap().len(), 1);
    assert_eq!(
        store.open_task_of(&t, &conv).await.unwrap().map(|t| t.id),
        Some(task.id.clone())
    );
    assert_eq!(store.open_routing_tasks().await.unwrap().len(), 1);
    assert!(matches!(
        store.delete_queue(&t, "nurses", "test").await,
        Err(StoreError::Conflict(_))
    ));
    store
        .set_task_state(&t, &task.id, TaskState::Waiting, None, None)
        .await
        .unwrap();
    let waiting = store.get_routing_task(&t, &task.id).await.unwrap().unwrap();
    assert_eq!(waiting.agent, None, "waiting again: no agent");
    store
        .set_task_state(&t, &task.id, TaskState::Completed, None, None)
        .await
        .unwrap();
    assert!(store.open_routing_tasks().await.unwrap().is_empty());
    store.delete_queue(&t, "nurses", "test").await.unwrap();
    store.delete_agent(&t, "ann", "test").await.unwrap();
    assert!(store.list_agents(&t).await.unwrap().is_empty());
    // The next task of the conversation may be created now.
    store.create_routing_task(&t, new()).await.unwrap();
}

async fn ivr_flows_and_calendars(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    assert!(
        store
            .put_ivr_flow(&t, "main", "a: 1", "test")
            .await
            .unwrap()
            .1
    );
    let (flow, new) = store
        .put_ivr_flow(&t, "main", "a: 2", "test")
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(flow.source, "a: 2");
    store
        .put_ivr_flow(&t, "after", "b: 1", "test")
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_ivr_flows(&t)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["after", "main"]);
    store.delete_ivr_flow(&t, "main", "test").await.unwrap();
    assert!(store.get_ivr_flow(&t, "main").await.unwrap().is_none());
    assert!(
        store
            .put_calendar(&t, "hours", "c: 1", "test")
            .await
            .unwrap()
            .1
    );
    assert!(
        !store
            .put_calendar(&t, "hours", "c: 2", "test")
            .await
            .unwrap()
            .1
    );
    assert_eq!(store.list_calendars(&t).await.unwrap().len(), 1);
    assert_eq!(
        store
            .get_calendar(&t, "hours")
            .await
            .unwrap()
            .unwrap()
            .source,
        "c: 2"
    );
    store.delete_calendar(&t, "hours", "test").await.unwrap();
    assert!(store.list_calendars(&t).await.unwrap().is_empty());
}

async fn attachments_are_recorded_and_reviewed_once(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = uuid::Uuid::now_v7().to_string();
        let (a, appended) = store
            .record_attachment(
                &t,
                &conv,
                NewAttachment {
                    id: id.clone(),
                    blob_key: format!("blob/{i}"),
                    content_type: "image/png".into(),
                    size: 10 + i,
                    sha256: "00".repeat(32),
                    filename: Some(format!("scan-{i}.png")),
                    metadata_stripped: i % 2 == 0,
                    source: "upload".into(),
                    channel: Channel::Async,
                    actor: Actor {
                        actor_type: ActorType::Patient,
                        id: None,
                    },
                    caption: None,
                },
                "test",
            )
            .await
            .unwrap();
        assert_eq!(a.event_seq, appended.event.seq);
        assert_eq!(a.metadata_stripped, i % 2 == 0);
        ids.push(id);
    }
    assert_eq!(
        store.attachment_conversation(&t, &ids[0]).await.unwrap(),
        conv
    );
    let list = |f: AttachmentFilter| store.list_attachments(&t, f, "test");
    let all = list(AttachmentFilter {
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(all.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), ids);
    let after = list(AttachmentFilter {
        conversation_id: Some(conv.clone()),
        after: Some(ids[0].clone()),
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(after.len(), 2);
    let reviewer = Actor {
        actor_type: ActorType::Staff,
        id: Some("dr".into()),
    };
    let (reviewed, _) = store
        .review_attachment(&t, &ids[1], Some("fine".into()), reviewer.clone(), "test")
        .await
        .unwrap();
    assert_eq!(reviewed.review, ReviewState::Reviewed);
    assert_eq!(reviewed.review_note.as_deref(), Some("fine"));
    assert!(matches!(
        store
            .review_attachment(&t, &ids[1], None, reviewer, "test")
            .await,
        Err(StoreError::Conflict(_))
    ));
    let pending = list(AttachmentFilter {
        review: Some(ReviewState::Pending),
        limit: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(pending.len(), 2);
    let got = store
        .get_attachment(&t, &ids[1], "attachment.read", "test")
        .await
        .unwrap();
    assert_eq!(got.reviewed_by.as_deref(), Some("dr"));
    assert_eq!(got.filename.as_deref(), Some("scan-1.png"));
}

async fn webhooks_queue_deliver_and_record(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let (hook, _) = store
        .create_webhook(
            &t,
            "https://example.org/hook",
            vec!["event.created".into()],
            WebhookPayload::Thin,
            "test",
        )
        .await
        .unwrap();
    assert_eq!(store.list_webhooks(&t).await.unwrap().len(), 1);
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    for _ in 0..3 {
        store
            .append_event(
                &t,
                &conv,
                event(EventKind::Message, Channel::Chat, ActorType::Patient),
                "test",
            )
            .await
            .unwrap();
    }
    assert_eq!(store.outbox_depth().await.unwrap(), 3);
    assert!(store.next_delivery_due().await.unwrap().is_some());
    let due = store.due_deliveries(10).await.unwrap();
    assert_eq!(due.len(), 3);
    let body: serde_json::Value = serde_json::from_slice(&due[0].body).unwrap();
    assert_eq!(body["type"], "event.created");
    assert_eq!(body["data"]["seq"], 1);
    assert!(body["data"].get("body").is_none(), "a thin payload");
    // Delivered, retried later, dead.
    let later = continuum_core::clock::unix_micros() + 3_600_000_000;
    store
        .record_delivery(&due[0], Some(200), None, 5, None)
        .await
        .unwrap();
    store
        .record_delivery(&due[1], Some(503), Some("503".into()), 5, Some(later))
        .await
        .unwrap();
    store
        .record_delivery(&due[2], None, Some("refused".into()), 5, None)
        .await
        .unwrap();
    assert!(store.due_deliveries(10).await.unwrap().is_empty());
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
    assert_eq!(store.next_delivery_due().await.unwrap(), Some(later));
    let log = store.list_deliveries(&t, &hook.id, 10).await.unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].status, Some(200));
    assert!(matches!(
        store.list_deliveries(&t, "nope", 10).await,
        Err(StoreError::NotFound(_))
    ));
    store.delete_webhook(&t, &hook.id, "test").await.unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    assert!(store.list_webhooks(&t).await.unwrap().is_empty());
    let audit = store.list_audit(&t, 0, 1000).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == "webhook.deliver")
            .count(),
        1
    );
}

async fn reminder_templates_settings_and_a_batch_with_a_bad_row(backend: Backend) {
    let store = support::open(backend).await;
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    let conv = conversation(&store, &t, &p).await;
    let settings = ReminderSettings {
        clinic_name: Some("Northside".into()),
        ..Default::default()
    };
    store
        .set_reminder_settings(&t, &settings, "test")
        .await
        .unwrap();
    store
        .set_reminder_settings(&t, &settings, "test")
        .await
        .unwrap();
    assert_eq!(
        store
            .reminder_settings(&t)
            .await
            .unwrap()
            .clinic_name
            .as_deref(),
        Some("Northside")
    );
    let input = |name: &str| TemplateInput {
        name: name.into(),
        offsets: vec!["-24h".into()],
        body: "See you {{date}}".into(),
        channel: Default::default(),
        whatsapp: None,
        from: None,
    };
    let a = store
        .create_reminder_template(&t, input("a"), "test")
        .await
        .unwrap();
    let b = store
        .create_reminder_template(&t, input("b"), "test")
        .await
        .unwrap();
    assert!(matches!(
        store.create_reminder_template(&t, input("a"), "test").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .update_reminder_template(&t, &b.id, input("a"), "test")
            .await,
        Err(StoreError::Conflict(_))
    ));
    let renamed = store
        .update_reminder_template(&t, &b.id, input("c"), "test")
        .await
        .unwrap();
    assert_eq!(renamed.name, "c");
    store
        .delete_reminder_template(&t, &b.id, "test")
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_reminder_templates(&t)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a"]);
    // The name of a deleted template is free again.
    store
        .create_reminder_template(&t, input("c"), "test")
        .await
        .unwrap();

    // One write, three rows: the middle one names no conversation the
    // database knows (its insert fails), and fails alone.
    let start = continuum_core::clock::unix_micros() + 72 * 3_600_000_000;
    let up = |ext: &str, conversation: &str| AppointmentUpsert {
        conversation_id: conversation.to_owned(),
        contact_id: p.clone(),
        input: AppointmentInput {
            external_id: Some(ext.into()),
            start_at: start,
            template_id: a.id.clone(),
            ..Default::default()
        },
    };
    let out = store
        .upsert_appointments(
            &t,
            vec![
                up("E1", &conv),
                up("E2", "no-such-conversation"),
                up("E3", &conv),
            ],
            "test",
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_ref().unwrap().1, UpsertOutcome::Created);
    assert!(out[1].is_err(), "{:?}", out[1]);
    assert_eq!(out[2].as_ref().unwrap().1, UpsertOutcome::Created);
    let again = store
        .upsert_appointments(&t, vec![up("E1", &conv), up("E3", &conv)], "test")
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|r| r.as_ref().unwrap().1 == UpsertOutcome::Unchanged)
    );
    assert_eq!(
        store
            .list_appointments(&t, &conv, "test")
            .await
            .unwrap()
            .len(),
        2
    );
    let counts = store.reminder_counts().await.unwrap();
    assert_eq!(counts, vec![("pending".to_owned(), 2)]);
    assert!(store.next_reminder_due().await.unwrap().is_some());
    assert!(store.verify().await.unwrap().is_intact());
}

async fn the_remaining_reads_and_writes(backend: Backend) {
    let store = support::open(backend).await;
    store.ping().await.unwrap();
    let t = store.create_tenant("t", "us", "test").await.unwrap().id;
    let p = contact(&store, &t, Some(PHONE)).await;
    assert_eq!(store.get_contact(&t, &p, "test").await.unwrap().id, p);
    let conv = conversation(&store, &t, &p).await;
    let n = store
        .append_events_bulk(
            &t,
            &conv,
            (0..5)
                .map(|_| event(EventKind::Message, Channel::Chat, ActorType::Patient))
                .collect(),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(n, 5);
    let routed = store
        .append_system_event(
            &t,
            &conv,
            event(EventKind::Routing, Channel::System, ActorType::System),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(routed.event.seq, 6);
    store.open_stream(&t, &conv, 0, "test").await.unwrap();
    assert_eq!(store.stream_page(&t, &conv, 2, 100).await.unwrap().len(), 4);

    let mut secret = serde_json::Map::new();
    secret.insert("auth_token".into(), "tok".into());
    store
        .create_messaging_provider(
            &t,
            NewMessagingProvider {
                name: "twilio".into(),
                kind: ProviderKind::Twilio,
                priority: 1,
                channels: vec![Channel::Sms],
                senders: vec!["+14155559999".into()],
                spec: Default::default(),
                secret,
            },
            "test",
        )
        .await
        .unwrap();
    let chain = store.messaging_chain(&t).await.unwrap();
    assert_eq!(chain[0].secret["auth_token"], "tok");
    let (m, _) = store
        .enqueue_message(
            &t,
            &conv,
            NewOutboundMessage {
                channel: Channel::Sms,
                to: PHONE.into(),
                from: Some("+14155559999".into()),
                body: Some("hi".into()),
                media_urls: vec![],
                template: None,
                idempotency_key: None,
                actor: Actor::system(),
                meta: Default::default(),
                compliance: false,
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(store.message_conversation(&t, &m.id).await.unwrap(), conv);
    assert_eq!(
        store.message_counts().await.unwrap(),
        vec![("queued".to_owned(), 1)]
    );

    let trunk = store
        .create_trunk(
            &t,
            "out",
            TrunkSpec::Outbound {
                address: "sip.example.org".into(),
                transport: Default::default(),
                caller_ids: vec![],
                max_concurrent_calls: 1,
                media_encryption: Default::default(),
            },
            Some(("u".into(), "secret-pass".into())),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(store.get_trunk(&t, &trunk.id).await.unwrap().name, "out");
    let with = store.trunk_with_secret(&t, &trunk.id).await.unwrap();
    assert_eq!(with.password.as_deref(), Some("secret-pass"));
    let call = store
        .create_call(
            &t,
            NewCall {
                conversation_id: conv.clone(),
                room_id: None,
                direction: CallDirection::Inbound,
                remote: PHONE.into(),
                trunk_id: None,
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(store.get_call(&t, &call.id).await.unwrap().remote, PHONE);
    assert!(store.verify().await.unwrap().is_intact());
}
