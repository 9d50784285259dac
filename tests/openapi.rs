//! The API document tells the truth: it is a valid OpenAPI document
//! (`openapi-spec-validator`), every operation is uniquely named and every
//! response described, and a bounded schemathesis run against the live server
//! finds no 5xx and no response that breaks the document.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

fn venv_tool(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv-peers/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/test (it installs schemathesis and openapi-spec-validator into .venv-peers)",
        p.display()
    );
    p
}

async fn document(s: &Server) -> Value {
    s.client
        .get(s.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_document_is_valid_complete_and_unambiguous() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let doc = document(&s).await;
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut ids = std::collections::HashSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "operationId `{id}` is used twice"
            );
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                let d = r["description"].as_str().unwrap_or_default();
                assert!(!d.is_empty(), "{method} {path} {status} has no description");
            }
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if secured {
                for status in ["401", "429"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
            if op["requestBody"]["content"]["application/json"].is_object() {
                for status in ["400", "413", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }
    assert!(operations >= 30, "{operations} operations");
    // Appendable kinds are told apart from those the engine writes.
    let kinds = &doc["components"]["schemas"]["AppendEventRequest"]["properties"]["kind"]["enum"];
    let kinds: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"message") && !kinds.contains(&"state.changed"),
        "{kinds:?}"
    );
    // Chat: every new route, and every status each can answer, documented.
    for (path, method, statuses) in [
        (
            "/v1/conversations/{id}/chat",
            "get",
            &["101", "400", "401", "403", "404", "422", "429"][..],
        ),
        (
            "/v1/conversations/{id}/chat/messages",
            "get",
            &["200", "400", "401", "403", "404", "422", "429"],
        ),
        (
            "/v1/conversations/{id}/chat/receipts",
            "get",
            &["200", "401", "403", "404", "429"],
        ),
        (
            "/v1/conversations/{id}/chat/receipts",
            "post",
            &[
                "200", "400", "401", "403", "404", "413", "415", "422", "429",
            ],
        ),
        (
            "/v1/conversations/{id}/chat/typing",
            "post",
            &[
                "202", "400", "401", "403", "404", "413", "415", "422", "429",
            ],
        ),
    ] {
        let responses = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        let mut have: Vec<&str> = responses.keys().map(String::as_str).collect();
        have.sort();
        assert_eq!(have, statuses, "{method} {path}");
    }
    let stream = &doc["paths"]["/v1/conversations/{id}/events/stream"]["get"];
    let said = stream["responses"]["200"]["description"].as_str().unwrap();
    assert!(
        said.contains("event: receipt") && said.contains("event: typing"),
        "{said}"
    );
    assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
    assert!(
        stream["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Last-Event-ID"),
        "{stream}"
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let dir = tempdir();
    // Schemathesis sends unauthenticated requests on purpose: no refusal
    // budget here (the limiter has tests of its own in tests/security.rs).
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![(
                "CONTINUUM_SECURITY__REFUSALS_PER_MINUTE_PER_SOURCE".into(),
                "0".into(),
            )],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    // Real objects for the path parameters, so generated requests reach the
    // logic behind the 404s: a patient, a conversation with an event, a room.
    let (contact, conv) = s.patient_conversation(&key, "+14155550900").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(serde_json::json!({"channel": "sms", "kind": "message", "body": "hello"})),
    )
    .await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(serde_json::json!({})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[operations]]
include-path-regex = "^/v1/conversations/\\{{id\\}}"
parameters = {{ "path.id" = "{conv}" }}

[[operations]]
include-path-regex = "^/v1/contacts/\\{{id\\}}"
parameters = {{ "path.id" = "{contact}" }}

[[operations]]
include-path-regex = "^/v1/rooms/\\{{room\\}}"
parameters = {{ "path.room" = "{room}" }}
"#
        ),
    )
    .unwrap();
    let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let report = dir.path().join("schemathesis");
    let out = Command::new(venv_tool("schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(s.url("/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "60",
            "--phases",
            "examples,coverage,fuzzing",
            // The live stream never ends by itself; the signaling endpoint is
            // a WebSocket (tests/video.rs and tests/security.rs drive both).
            "--exclude-operation-id",
            "streamEvents",
            "--exclude-operation-id",
            "connectSignaling",
            "--exclude-operation-id",
            "connectChat",
            // Live feeds that never end by themselves (tests/ivr.rs reads them).
            "--exclude-operation-id",
            "streamInbox",
            "--exclude-operation-id",
            "streamAgentEvents",
            "--exclude-operation-id",
            "streamRoutingStats",
            "--generation-with-security-parameters",
            "false",
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        // How to send `application/sdp` bodies (WHIP/WHEP).
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &peers)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    let summary = text
        .lines()
        .find(|l| l.contains("generated"))
        .unwrap_or_default();
    assert!(summary.contains("generated"), "no test cases ran:\n{text}");
}
