//! Broken flow files are refused with the line, the column and the reason.

use continuum_ivr::{Severity, check};

/// The first error's (line, column, message).
fn first_error(src: &str) -> (usize, usize, String) {
    let r = check(src);
    let e = r
        .errors
        .first()
        .unwrap_or_else(|| panic!("no error for:\n{src}"));
    assert_eq!(e.severity, Severity::Error);
    (e.line, e.column, e.message.clone())
}

const HEAD: &str = "name: t\nstart: a\nnodes:\n";

#[test]
fn unknown_field_names_the_node_and_the_expected_fields() {
    let (l, c, m) = first_error(&format!("{HEAD}  a:\n    queu: {{ name: nurse }}\n"));
    assert_eq!((l, c), (5, 5));
    assert!(
        m.starts_with("node \"a\": unknown field \"queu\" (expected one of say, play"),
        "{m}"
    );
}

#[test]
fn unknown_node_in_next_and_in_options() {
    let (l, c, m) = first_error(&format!("{HEAD}  a:\n    say: hi\n    next: nowhere\n"));
    assert_eq!((l, c), (6, 11));
    assert_eq!(m, "node \"a\": \"next\": unknown node \"nowhere\"");
    let src = format!(
        "{HEAD}  a:\n    menu:\n      prompt: p\n      options: {{ \"1\": a, \"2\": ghost }}\n"
    );
    let (l, _, m) = first_error(&src);
    assert_eq!(l, 7);
    assert!(m.contains("option \"2\": unknown node \"ghost\""), "{m}");
}

#[test]
fn missing_start_and_missing_queue_name() {
    let (l, _, m) = first_error("name: t\nnodes:\n  a:\n    hangup: {}\n");
    assert_eq!(l, 1);
    assert_eq!(m, "flow: missing required field \"start\"");
    let (l, _, m) = first_error(&format!("{HEAD}  a:\n    queue: {{ priority: 3 }}\n"));
    assert_eq!(l, 5);
    assert_eq!(m, "node \"a\" queue: missing required field \"name\"");
}

#[test]
fn wrong_types_and_ranges() {
    let (l, _, m) = first_error(&format!(
        "{HEAD}  a:\n    queue: {{ name: q, priority: high }}\n"
    ));
    assert_eq!(l, 5);
    assert!(
        m.contains("\"priority\" must be a whole number, found \"high\""),
        "{m}"
    );
    let src =
        format!("{HEAD}  a:\n    gather:\n      prompt: p\n      timeout: 600s\n      next: a\n");
    let (l, c, m) = first_error(&src);
    assert_eq!((l, c), (7, 16));
    assert!(
        m.contains("\"timeout\" 600s is out of range (1s to 60s)"),
        "{m}"
    );
    let (_, _, m) = first_error(&format!("{HEAD}  a:\n    say: [1, {{ x: y }}]\n"));
    assert!(
        m.contains("\"say\" must be a string, found a mapping"),
        "{m}"
    );
}

#[test]
fn duplicate_keys_are_refused_where_the_second_is() {
    let (l, c, m) = first_error(&format!(
        "{HEAD}  a:\n    hangup: {{}}\n  a:\n    hangup: {{}}\n"
    ));
    assert_eq!((l, c), (6, 3));
    assert!(m.contains("duplicate key \"a\" (first at line 4)"), "{m}");
}

#[test]
fn menu_keys_must_be_phone_keys() {
    let src = format!(
        "{HEAD}  a:\n    menu:\n      prompt: p\n      options: {{ \"1\": a, \"x\": a, \"12\": a }}\n"
    );
    let r = check(&src);
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    assert!(
        r.errors[0]
            .message
            .contains("option \"x\" is not a single phone key (0-9, *, #)")
    );
    assert_eq!(r.errors[0].line, 7);
}

#[test]
fn a_loop_without_input_is_an_error() {
    let src =
        format!("{HEAD}  a:\n    say: one\n    next: b\n  b:\n    branch:\n      - next: a\n");
    let (l, _, m) = first_error(&src);
    assert!(l == 4 || l == 7, "{l}");
    assert!(
        m.contains("is on a loop that never waits for the caller"),
        "{m}"
    );
    // The same loop through a menu is fine.
    let ok = format!(
        "{HEAD}  a:\n    say: one\n    next: b\n  b:\n    menu:\n      prompt: p\n      options: {{ \"1\": a }}\n"
    );
    assert!(check(&ok).errors.is_empty(), "{:?}", check(&ok).errors);
}

#[test]
fn unreachable_nodes_are_a_warning_only() {
    let r = check(&format!(
        "{HEAD}  a:\n    hangup: {{}}\n  lonely:\n    hangup: {{}}\n"
    ));
    assert!(r.errors.is_empty());
    assert_eq!(r.warnings.len(), 1);
    assert_eq!((r.warnings[0].line, r.warnings[0].column), (6, 3));
    assert_eq!(r.warnings[0].message, "node \"lonely\" is never reached");
    assert_eq!(
        r.warnings[0].to_string(),
        "6:3: warning: node \"lonely\" is never reached"
    );
}

#[test]
fn business_hours_are_checked() {
    let src = "name: t\nstart: a\nhours:\n  time_zone: Europe/Atlantis\n  weekly: { mon: \"08:00-18:00\" }\nnodes:\n  a:\n    hangup: {}\n";
    let (l, c, m) = first_error(src);
    assert_eq!((l, c), (4, 14));
    assert!(m.contains("unknown time zone \"Europe/Atlantis\""), "{m}");
    let src = "name: t\nstart: a\nhours:\n  time_zone: UTC\n  weekly:\n    mon-fri: \"08:00-18:60\"\n    fri: closed\n  holidays: [\"2026-13-01\"]\nnodes:\n  a:\n    hangup: {}\n";
    let r = check(src);
    let lines: Vec<usize> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [6, 7, 8], "{:?}", r.errors);
    assert!(r.errors[0].message.contains("\"18:60\" is out of range"));
    assert!(
        r.errors[1]
            .message
            .contains("fri is already given at line 6")
    );
    assert!(r.errors[2].message.contains("not a date"));
}

#[test]
fn time_conditions_need_hours_and_branches_need_a_default() {
    let src = format!(
        "{HEAD}  a:\n    branch:\n      - if: {{ time: \"12:00-13:00\" }}\n        next: b\n  b:\n    hangup: {{}}\n"
    );
    let r = check(&src);
    let msgs: Vec<&str> = r.errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("the last rule must have no \"if\"")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("\"time\" needs the flow's \"hours\"")),
        "{msgs:?}"
    );
}

#[test]
fn webhook_urls_must_parse_and_are_listed_for_the_host() {
    let (l, _, m) = first_error(&format!(
        "{HEAD}  a:\n    webhook: {{ url: \"not a url\" }}\n"
    ));
    assert_eq!(l, 5);
    assert!(m.contains("\"not a url\" is not a URL"), "{m}");
    let (_, _, m) = first_error(&format!(
        "{HEAD}  a:\n    webhook: {{ url: \"ftp://x.example/a\" }}\n"
    ));
    assert!(m.contains("is not an http(s) URL"), "{m}");
    let r = check(&format!(
        "{HEAD}  a:\n    webhook: {{ url: \"http://localhost:8080/ivr\", method: GET }}\n"
    ));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.webhooks, ["http://localhost:8080/ivr"]);
}

#[test]
fn one_action_per_node_and_yaml_syntax_errors() {
    let (l, _, m) = first_error(&format!("{HEAD}  a:\n    hangup: {{}}\n    queue: q\n"));
    assert_eq!(l, 6);
    assert_eq!(
        m,
        "node \"a\": \"hangup\" and \"queue\" cannot both be set (one action per node)"
    );
    let (l, _, m) = first_error("name: t\nstart: a\nnodes:\n  a: [unclosed\n");
    assert!(l >= 4, "{l}");
    assert!(m.starts_with("YAML syntax:"), "{m}");
}

#[test]
fn every_error_is_reported_in_one_pass() {
    let src = format!(
        "{HEAD}  a:\n    queu: x\n    next: b\n  b:\n    sms: {{ template: t, body: b }}\n  c:\n    record: {{ max: 2h }}\n"
    );
    let r = check(&src);
    assert!(r.errors.len() >= 3, "{:?}", r.errors);
}
