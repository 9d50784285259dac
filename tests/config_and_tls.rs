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

/// `continuum serve` with these settings must fail to start; its stderr.
fn serve_fails(dir: &std::path::Path, env: &[(&str, String)]) -> String {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("CONTINUUM_LOG", "warn")
        .env("CONTINUUM_RTC__UDP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_TURN__UDP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_TURN__TCP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_SIP__UDP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_SIP__TCP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_SIP__TLS_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("continuum serve started despite {env:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sip_tls_with_a_missing_or_bad_certificate_does_not_start() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-cert.pem");
    let key = dir.path().join("key.pem");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let err = serve_fails(
        &dir.path().join("a"),
        &[
            ("CONTINUUM_SIP__TLS_CERT", missing.display().to_string()),
            ("CONTINUUM_SIP__TLS_KEY", key.display().to_string()),
        ],
    );
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("set sip.tls_cert"),
        "{err}"
    );
    // Not PEM at all: the file is named, and what it lacks.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = serve_fails(
        &dir.path().join("b"),
        &[
            ("CONTINUUM_SIP__TLS_CERT", garbage.display().to_string()),
            ("CONTINUUM_SIP__TLS_KEY", key.display().to_string()),
        ],
    );
    assert!(
        err.contains(&garbage.display().to_string()) && err.contains("CERTIFICATE"),
        "{err}"
    );
    // A key that is not the certificate's.
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = serve_fails(
        &dir.path().join("c"),
        &[
            ("CONTINUUM_SIP__TLS_CERT", cert.display().to_string()),
            ("CONTINUUM_SIP__TLS_KEY", other.display().to_string()),
        ],
    );
    assert!(err.contains("do not make a TLS identity"), "{err}");
    // A CA file for TLS trunks that is not there.
    let no_ca = dir.path().join("no-such-ca.pem");
    let err = serve_fails(
        &dir.path().join("e"),
        &[
            ("CONTINUUM_SIP__TLS_CERT", cert.display().to_string()),
            ("CONTINUUM_SIP__TLS_KEY", key.display().to_string()),
            ("CONTINUUM_SIP__TLS_CA", no_ca.display().to_string()),
        ],
    );
    assert!(
        err.contains(&no_ca.display().to_string()) && err.contains("set sip.tls_ca"),
        "{err}"
    );
    // tls_listen without a certificate.
    let err = serve_fails(&dir.path().join("d"), &[]);
    assert!(err.contains("sip.tls_listen needs sip.tls_cert"), "{err}");
}
