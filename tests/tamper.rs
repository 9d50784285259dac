//! Tampering with stored audit records or events is caught by
//! `continuum audit verify`, which names the first broken link.

mod common;
use common::*;
use rusqlite::{Connection, params};
use serde_json::json;

fn verify(dir: &std::path::Path) -> (i32, String) {
    cli(dir, &["audit", "verify"])
}

#[tokio::test]
async fn audit_verify_names_what_was_tampered_with() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550400").await;
    for i in 0..5 {
        s.ok(
            "POST",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            Some(json!({"channel": "chat", "kind": "message", "body": format!("message {i}")})),
        )
        .await;
    }
    s.ok(
        "GET",
        &format!("/v1/conversations/{conv}/context"),
        &key,
        None,
    )
    .await;
    let _ = s.stop();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");

    let db = Connection::open(dir.path().join("continuum.db")).unwrap();
    let tenant: String = db
        .query_row("SELECT id FROM tenants", [], |r| r.get(0))
        .unwrap();

    // 1. Edit an audit record.
    let actor: String = db
        .query_row(
            "SELECT actor FROM audit WHERE tenant_id = ?1 AND seq = 4",
            [&tenant],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE audit SET actor = 'nobody' WHERE tenant_id = ?1 AND seq = 4",
        [&tenant],
    )
    .unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("audit record 4") && out.contains("altered"),
        "{out}"
    );
    db.execute(
        "UPDATE audit SET actor = ?2 WHERE tenant_id = ?1 AND seq = 4",
        params![tenant, actor],
    )
    .unwrap();
    assert_eq!(verify(dir.path()).0, 0);

    // 2. Delete an audit record: the next one's link breaks.
    let row: (i64, String, String, String, String, String, Vec<u8>, Vec<u8>) = db
        .query_row("SELECT at, actor, action, object, outcome, detail, prev, mac FROM audit WHERE tenant_id = ?1 AND seq = 6", [&tenant], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })
        .unwrap();
    db.execute(
        "DELETE FROM audit WHERE tenant_id = ?1 AND seq = 6",
        [&tenant],
    )
    .unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 2);
    assert!(
        out.contains("audit record 7") && out.contains("deleted"),
        "{out}"
    );
    db.execute(
        "INSERT INTO audit (tenant_id, seq, at, actor, action, object, outcome, detail, prev, mac) VALUES (?1, 6, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![tenant, row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7],
    )
    .unwrap();
    assert_eq!(verify(dir.path()).0, 0);

    // 3. Flip a byte of an event's sealed body.
    let payload: Vec<u8> = db
        .query_row(
            "SELECT payload FROM events WHERE conversation_id = ?1 AND seq = 3",
            [&conv],
            |r| r.get(0),
        )
        .unwrap();
    let mut bad = payload.clone();
    bad[30] ^= 0x01;
    db.execute(
        "UPDATE events SET payload = ?2 WHERE conversation_id = ?1 AND seq = 3",
        params![conv, bad],
    )
    .unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 2);
    assert!(
        out.contains(&format!("conversation/{conv}/event/3")),
        "{out}"
    );
    db.execute(
        "UPDATE events SET payload = ?2 WHERE conversation_id = ?1 AND seq = 3",
        params![conv, payload],
    )
    .unwrap();
    assert_eq!(verify(dir.path()).0, 0);

    // 4. Change an event's clear-text columns (who said it).
    db.execute(
        "UPDATE events SET actor_type = 'staff' WHERE conversation_id = ?1 AND seq = 2",
        [&conv],
    )
    .unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 2);
    assert!(
        out.contains(&format!("conversation/{conv}/event/2")) && out.contains("altered"),
        "{out}"
    );
    db.execute(
        "UPDATE events SET actor_type = 'system' WHERE conversation_id = ?1 AND seq = 2",
        [&conv],
    )
    .unwrap();
    assert_eq!(verify(dir.path()).0, 0);

    // 5. Delete an event.
    db.execute(
        "DELETE FROM events WHERE conversation_id = ?1 AND seq = 5",
        [&conv],
    )
    .unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 2);
    assert!(
        out.contains(&format!("conversation/{conv}/event/5")) && out.contains("missing"),
        "{out}"
    );

    // The API refuses to serve a timeline whose stored rows fail authentication.
    db.execute(
        "UPDATE events SET payload = ?2 WHERE conversation_id = ?1 AND seq = 3",
        params![conv, vec![1u8; 60]],
    )
    .unwrap();
    let s = Server::start(dir.path());
    let (st, v) = s
        .call(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
        .await;
    assert_eq!(st, 500, "{v}");
    assert!(
        !v.to_string().contains("message 1"),
        "no partial PHI in the error"
    );
}

#[tokio::test]
async fn phi_is_not_stored_in_clear() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let c = s.ok("POST", "/v1/contacts", &key, Some(json!({"display_name": "Zebulon Quartermaine", "phone": "+14155550499", "date_of_birth": "1961-07-04"}))).await;
    let conv = s
        .ok(
            "POST",
            "/v1/conversations",
            &key,
            Some(json!({"contact_id": c["id"], "subject": "suspected appendicitis"})),
        )
        .await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{}/events", conv["id"].as_str().unwrap()),
        &key,
        Some(
            json!({"channel": "sms", "kind": "message", "body": "sharp pain lower right abdomen"}),
        ),
    )
    .await;
    let _ = s.stop();
    let mut bytes = Vec::new();
    for f in ["continuum.db", "continuum.db-wal"] {
        if let Ok(b) = std::fs::read(dir.path().join(f)) {
            bytes.extend(b);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    for secret in [
        "Zebulon",
        "Quartermaine",
        "4155550499",
        "1961-07-04",
        "appendicitis",
        "lower right abdomen",
    ] {
        assert!(
            !text.contains(secret),
            "`{secret}` found in clear in the database"
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the dev master key is private to its owner"
    );
}
