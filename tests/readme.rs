//! The README's curl walkthrough is run as written, so it stays true.

mod common;
use common::*;

fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Five minutes with curl")
        .nth(1)
        .expect("walkthrough section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block.to_owned()
}

#[test]
fn the_readme_walkthrough_works() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walkthrough()])
        .env("API", &s.base)
        .env("CONTINUUM_KEY", s.key())
        .output()
        .expect("bash runs the walkthrough (needs curl and jq)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // curl -m ends the live stream with exit code 28 (timeout): expected.
    assert!(
        out.status.success() || out.status.code() == Some(28),
        "walkthrough failed: {stderr}\n{stdout}"
    );
    assert!(stdout.contains("\"Ada Lovelace\""), "{stdout}");
    assert!(
        stdout.contains("unanswered_messages") && stdout.contains("call_failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("event: timeline"),
        "the live stream replayed the timeline: {stdout}"
    );
    drop(s);
    let (code, out) = cli(dir.path(), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}
