//! The testkit's servers are real: PostgreSQL answers psql, keeps its data
//! across a restart; NATS greets with JetStream on and keeps its streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use continuum_testkit::{Nats, Postgres};

/// `psql URL -c SQL`, run here and not through the testkit, so the URL is
/// what is tested.
fn psql(pg: &Postgres, url: &str, sql: &str) -> String {
    let output = Command::new(pg.psql_path())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {url} -c {sql:?} failed: {}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        pg.log_tail()
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn postgres_starts_serves_restarts_and_goes_away() {
    let started = Instant::now();
    let mut pg = Postgres::start().expect("start PostgreSQL");
    eprintln!(
        "PostgreSQL started in {:?} on port {} (as {:?})",
        started.elapsed(),
        pg.port(),
        pg.os_user()
    );

    let url = pg.create_database("harness").expect("create database");
    assert_eq!(
        url,
        format!("postgres://continuum@127.0.0.1:{}/harness", pg.port())
    );
    assert_eq!(psql(&pg, &url, "select 1"), "1");
    assert_eq!(psql(&pg, &url, "show max_connections"), "300");
    assert_eq!(psql(&pg, &url, "show fsync"), "on");
    assert_eq!(psql(&pg, &url, "show server_encoding"), "UTF8");
    psql(
        &pg,
        &url,
        "create table t (v text); insert into t values ('kept')",
    );
    assert!(
        pg.create_database("harness").is_err(),
        "a second CREATE DATABASE of the same name must fail"
    );

    let restarted = Instant::now();
    pg.stop().expect("stop");
    assert!(!pg.is_running());
    let down = Command::new(pg.psql_path())
        .args(["-X", "-A", "-t", &url, "-c", "select 1"])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("run psql");
    assert!(
        !down.status.success(),
        "psql succeeded against a stopped server"
    );
    pg.start_again().expect("start again");
    eprintln!(
        "PostgreSQL stop + start_again took {:?}",
        restarted.elapsed()
    );
    assert_eq!(psql(&pg, &url, "select 1"), "1");
    assert_eq!(psql(&pg, &url, "select v from t"), "kept");

    // A crash (immediate stop) keeps committed rows too.
    psql(&pg, &url, "insert into t values ('after restart')");
    pg.kill().expect("kill");
    pg.start_again().expect("start again after kill");
    assert_eq!(pg.psql("harness", "select count(*) from t").unwrap(), "2");

    let data = pg.data_dir();
    let port = pg.port();
    drop(pg);
    assert!(!data.exists(), "{} survived the drop", data.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on {port} after the drop"
    );
}

#[test]
fn postgres_without_fsync_and_with_extra_settings() {
    let pg = Postgres::builder()
        .fsync(false)
        .setting("work_mem", "'8MB'")
        .start()
        .expect("start PostgreSQL");
    assert_eq!(pg.psql("postgres", "show fsync").unwrap(), "off");
    assert_eq!(
        pg.psql("postgres", "show synchronous_commit").unwrap(),
        "off"
    );
    assert_eq!(pg.psql("postgres", "show work_mem").unwrap(), "8MB");
    let err = pg.psql("postgres", "select nonsense").unwrap_err();
    assert!(format!("{err:#}").contains("nonsense"), "{err:#}");
}

#[test]
fn two_postgres_at_once_use_different_ports() {
    let a = Postgres::start().expect("start a");
    let b = Postgres::start().expect("start b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_eq!(a.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(b.psql("postgres", "select 2").unwrap(), "2");
}

/// A client connection: the server's INFO line, then the reader for more.
fn nats_connect(nats: &Nats) -> (String, BufReader<TcpStream>) {
    let stream = TcpStream::connect(("127.0.0.1", nats.port())).expect("connect to nats");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut info = String::new();
    reader.read_line(&mut info).expect("read INFO");
    (info, reader)
}

fn assert_jetstream_banner(nats: &Nats) {
    let (info, _) = nats_connect(nats);
    assert!(info.starts_with("INFO {"), "banner: {info}");
    assert!(
        info.contains(r#""jetstream":true"#),
        "banner without JetStream: {info}\nlog:\n{}",
        nats.log_tail()
    );
}

/// One JetStream API request over the raw protocol; returns the reply body.
fn js_request(nats: &Nats, subject: &str, body: &str) -> String {
    let (_, mut reader) = nats_connect(nats);
    let request = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.harness 1\r\nPUB {subject} _INBOX.harness {}\r\n{body}\r\nPING\r\n",
        body.len()
    );
    reader.get_mut().write_all(request.as_bytes()).unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read from nats");
        assert!(!line.is_empty(), "nats closed the connection");
        if let Some(header) = line.strip_prefix("MSG ") {
            let len: usize = header.split_whitespace().last().unwrap().parse().unwrap();
            let mut payload = vec![0; len + 2];
            reader.read_exact(&mut payload).unwrap();
            return String::from_utf8_lossy(&payload[..len]).into_owned();
        }
        assert!(!line.starts_with("-ERR"), "nats said {line}");
    }
}

#[test]
fn nats_starts_with_jetstream_restarts_and_keeps_streams() {
    let started = Instant::now();
    let mut nats = Nats::start().expect("start nats");
    eprintln!(
        "nats-server started in {:?} at {}",
        started.elapsed(),
        nats.url()
    );
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    assert_jetstream_banner(&nats);

    let created = js_request(
        &nats,
        "$JS.API.STREAM.CREATE.HARNESS",
        r#"{"name":"HARNESS","subjects":["harness.>"],"storage":"file"}"#,
    );
    assert!(created.contains(r#""name":"HARNESS""#), "{created}");
    assert!(!created.contains(r#""error""#), "{created}");

    let restarted = Instant::now();
    nats.stop().expect("stop");
    assert!(!nats.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", nats.port())).is_err(),
        "nats still accepts connections after stop"
    );
    nats.start_again().expect("start again");
    eprintln!(
        "nats-server stop + start_again took {:?}",
        restarted.elapsed()
    );
    assert_jetstream_banner(&nats);
    let info = js_request(&nats, "$JS.API.STREAM.INFO.HARNESS", "");
    assert!(
        info.contains(r#""name":"HARNESS""#) && !info.contains(r#""error""#),
        "the stream did not survive the restart: {info}"
    );

    nats.kill().expect("kill");
    nats.start_again().expect("start again after kill");
    assert_jetstream_banner(&nats);

    let store = nats.store_dir();
    let port = nats.port();
    drop(nats);
    assert!(!store.exists(), "{} survived the drop", store.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on {port} after the drop"
    );
}
