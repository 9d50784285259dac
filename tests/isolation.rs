//! A second tenant can neither read, list, append to, nor learn of the first
//! tenant's data, and every such attempt is in its audit chain.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn tenants_cannot_see_each_other() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let a = s.key().to_owned();
    let b = common::second_tenant(dir.path(), "clinic-b");

    let (contact_a, conv_a) = s.patient_conversation(&a, "+14155550200").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv_a}/events"),
        &a,
        Some(json!({"channel": "sms", "kind": "message", "body": "private"})),
    )
    .await;

    // Everything of A's answers B exactly as a conversation that does not exist.
    let missing = "01a00000-0000-7000-8000-000000000000";
    for (method, path, body) in [
        ("GET", format!("/v1/conversations/{conv_a}"), None),
        ("GET", format!("/v1/conversations/{conv_a}/events"), None),
        ("GET", format!("/v1/conversations/{conv_a}/context"), None),
        (
            "GET",
            format!("/v1/conversations/{conv_a}/events/stream"),
            None,
        ),
        (
            "POST",
            format!("/v1/conversations/{conv_a}/events"),
            Some(json!({"channel": "sms", "kind": "message", "body": "injected"})),
        ),
        ("POST", format!("/v1/conversations/{conv_a}/close"), None),
        ("GET", format!("/v1/contacts/{contact_a}"), None),
        (
            "PATCH",
            format!("/v1/contacts/{contact_a}"),
            Some(json!({"display_name": "renamed"})),
        ),
        (
            "POST",
            "/v1/conversations".to_owned(),
            Some(json!({"contact_id": contact_a})),
        ),
    ] {
        let (st_a, v_a) = s.call(method, &path, &b, body.clone()).await;
        let (st_m, v_m) = s
            .call(
                method,
                &path.replace(&conv_a, missing).replace(&contact_a, missing),
                &b,
                body,
            )
            .await;
        assert_eq!(st_a, 404, "{method} {path}: {v_a}");
        assert_eq!(
            (st_a, &v_a),
            (st_m, &v_m),
            "{method} {path} must look exactly like a missing object"
        );
    }
    // Lists and lookups show nothing of A's.
    assert_eq!(
        s.ok("GET", "/v1/conversations", &b, None).await["conversations"],
        json!([])
    );
    assert_eq!(
        s.ok("GET", "/v1/contacts", &b, None).await["contacts"],
        json!([])
    );
    assert_eq!(
        s.ok("GET", "/v1/contacts?phone=%2B14155550200", &b, None)
            .await["contacts"],
        json!([])
    );
    // The same phone number can belong to a patient of each tenant.
    let (st, _) = s
        .call(
            "POST",
            "/v1/contacts",
            &b,
            Some(json!({"display_name": "B's patient", "phone": "+14155550200"})),
        )
        .await;
    assert_eq!(st, 201);

    // B's tokens, even naming A's conversation in their grants, reach nothing.
    let b_token = s.mint(&b, "dr-b", "clinician", &[&conv_a]).await;
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/conversations/{conv_a}/events"),
            &b_token,
            None,
        )
        .await;
    assert_eq!(st, 404);
    let b_admin = s.mint(&b, "admin-b", "admin", &[]).await;
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/conversations/{conv_a}/context"),
            &b_admin,
            None,
        )
        .await;
    assert_eq!(st, 404);

    // A's data is untouched.
    let page = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv_a}/events"),
            &a,
            None,
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.ok("GET", &format!("/v1/conversations/{conv_a}"), &a, None)
            .await["state"],
        "open"
    );

    // B's attempts are in B's audit chain; A's chain has none of B's actors.
    let b_audit = s.ok("GET", "/v1/audit?limit=1000", &b, None).await;
    let failed = b_audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "not_found" || r["outcome"] == "denied")
        .count();
    assert!(failed >= 9, "B's failed attempts are audited: {failed}");
    let a_audit = s.ok("GET", "/v1/audit?limit=1000", &a, None).await;
    assert!(!a_audit.to_string().contains("dr-b"));

    // And the chains verify.
    let (code, out) = cli(dir.path(), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}
