//! The bus against a real nats-server with JetStream, started by the test.

use bytes::Bytes;
use continuum_bus::Bus;
use continuum_testkit::Nats;
use futures::StreamExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn messages_cross_nodes_and_say_who_sent_them() {
    let nats = Nats::start().unwrap();
    let a = Bus::connect(&nats.url(), "test", "a").await.unwrap();
    let b = Bus::connect(&nats.url(), "test", "b").await.unwrap();
    let mut sub = b.subscribe("events.>").await.unwrap();
    // Another deployment on the same NATS.
    let other = Bus::connect(&nats.url(), "other", "c").await.unwrap();
    let mut overheard = other.subscribe("events.>").await.unwrap();
    b.flush().await.unwrap();
    other.flush().await.unwrap();
    a.publish("events.t1.c1".into(), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject, "events.t1.c1");
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.from.as_deref(), Some("a"));
    // The other deployment hears its own message, and it is the first thing
    // it hears: ours never reached it.
    other
        .publish("events.t1.c1".into(), Bytes::from_static(b"theirs"))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, overheard.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &first.payload[..],
        b"theirs",
        "the other cluster heard ours"
    );
}

#[tokio::test]
async fn members_expire_unless_renewed() {
    let nats = Nats::start().unwrap();
    let a = Bus::connect(&nats.url(), "test", "a").await.unwrap();
    let members = a
        .bucket("test_nodes", Duration::from_secs(2))
        .await
        .unwrap();
    members
        .announce("m1", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    members
        .announce("m2", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let mut names: Vec<String> = members
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    names.sort();
    assert_eq!(names, ["m1", "m2"]);
    members.withdraw("m2").await.unwrap();
    // m1 is renewed, m2 is gone; after the TTL passes without a renewal, m1 goes too.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names: Vec<String> = members
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if names.is_empty() {
            break;
        }
        assert!(
            !names.contains(&"m2".to_owned()),
            "a withdrawn member is gone at once"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "m1 never expired: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_nats_restart_is_announced_and_subscriptions_resume() {
    let mut nats = Nats::start().unwrap();
    let a = Bus::connect(&nats.url(), "test", "a").await.unwrap();
    let b = Bus::connect(&nats.url(), "test", "b").await.unwrap();
    let mut sub = b.subscribe("x.>").await.unwrap();
    let mut reconnects = b.reconnects();
    let before = *reconnects.borrow_and_update();
    nats.stop().unwrap();
    nats.start_again().unwrap();
    tokio::time::timeout(WAIT, reconnects.wait_for(|n| *n > before))
        .await
        .expect("the reconnect is announced")
        .unwrap();
    assert!(b.is_connected());
    // Publish until one arrives: a's own reconnect may come a moment later.
    let got = tokio::time::timeout(WAIT, async {
        loop {
            let _ = a.publish("x.y".into(), Bytes::from_static(b"after")).await;
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(250), sub.next()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("the subscription works again after the restart");
    assert_eq!(&got.payload[..], b"after");
}

#[tokio::test]
async fn placements_change_only_by_compare_and_set() {
    let nats = Nats::start().unwrap();
    let a = Bus::connect(&nats.url(), "test", "a").await.unwrap();
    let b = Bus::connect(&nats.url(), "test", "b").await.unwrap();
    let on_a = a
        .bucket("test_rooms", Duration::from_secs(3600))
        .await
        .unwrap();
    let on_b = b
        .bucket("test_rooms", Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        on_a.create("room1", Bytes::from_static(b"m1"))
            .await
            .unwrap()
    );
    assert!(
        !on_b
            .create("room1", Bytes::from_static(b"m2"))
            .await
            .unwrap(),
        "the first placement wins"
    );
    let (value, rev) = on_b.get("room1").await.unwrap().unwrap();
    assert_eq!(&value[..], b"m1");
    assert!(
        on_b.replace("room1", Bytes::from_static(b"m2"), rev)
            .await
            .unwrap()
    );
    assert!(
        !on_a
            .replace("room1", Bytes::from_static(b"m3"), rev)
            .await
            .unwrap(),
        "a stale revision loses"
    );
    assert_eq!(&on_a.get("room1").await.unwrap().unwrap().0[..], b"m2");
    assert!(on_a.get("nothing").await.unwrap().is_none());
}
