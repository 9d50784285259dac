//! Configuration sources, and HTTPS when a certificate is configured.

mod common;
use common::*;

#[test]
fn config_example_is_complete_and_loadable() {
    let dir = tempdir();
    let (code, example) = cli(dir.path(), &["config", "example"]);
    assert_eq!(code, 0);
    let file = dir.path().join("continuum.toml");
    std::fs::write(&file, &example).unwrap();
    let (code, shown) = cli(
        dir.path(),
        &["--config", file.to_str().unwrap(), "config", "show"],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("listen = \"127.0.0.1:7400\""));

    // Environment overrides the file; unknown keys are named in the error.
    let out = std::process::Command::new(BIN)
        .args(["config", "show"])
        .env("CONTINUUM_SERVER__LISTEN", "127.0.0.1:9999")
        .env("CONTINUUM_SECURITY__MASTER_KEY", "ab".repeat(32))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("127.0.0.1:9999") && text.contains("<hidden>"),
        "{text}"
    );
    std::fs::write(&file, "[server]\nlisten_port = 1\n").unwrap();
    let (code, err) = cli(
        dir.path(),
        &["--config", file.to_str().unwrap(), "config", "show"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("listen_port") && err.contains("config example"),
        "{err}"
    );
    let (code, err) = cli(
        dir.path(),
        &["--config", "/nonexistent.toml", "config", "show"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_database_without_its_master_key_is_not_silently_reset() {
    let dir = tempdir();
    let (code, out) = cli(dir.path(), &["tenant", "create", "acme"]);
    assert_eq!(code, 0, "{out}");
    std::fs::remove_file(dir.path().join("master.key")).unwrap();
    let (code, err) = cli(dir.path(), &["tenant", "list"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no master key") && err.contains("CONTINUUM_SECURITY__MASTER_KEY"),
        "{err}"
    );
}

#[tokio::test]
async fn serves_https_with_a_configured_certificate() {
    let dir = tempdir();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        Opts {
            env: vec![
                (
                    "CONTINUUM_SERVER__TLS_CERT".into(),
                    cert_path.display().to_string(),
                ),
                (
                    "CONTINUUM_SERVER__TLS_KEY".into(),
                    key_path.display().to_string(),
                ),
            ],
            ..Default::default()
        },
    );
    assert!(s.base.starts_with("https://"), "{}", s.base);
    // A client that trusts exactly this certificate connects and is served.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/v1/conversations", s.base))
        .bearer_auth(s.key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP to the TLS port does not get an answer it could mistake for ours.
    let plain = s.base.replace("https://", "http://");
    let r = reqwest::get(format!("{plain}/healthz")).await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
}
