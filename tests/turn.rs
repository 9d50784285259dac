//! The TURN server against coturn's own clients (`turnutils_stunclient`,
//! `turnutils_uclient`, `turnutils_peer`; Debian `coturn`): long-term and
//! REST credentials, UDP and TCP, ChannelData and Send indications, many
//! clients; refusals (bad password, expired REST credentials, quota, peer
//! policy) with the right codes, counted in `/metrics`.

mod common;

use common::{Opts, Server, connect_signaling, tempdir};
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(s: &Server) -> String {
    s.client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits (≤ 10 s; TURN exports once a second) for `name{label}` ≥ `min`.
async fn wait_metric(s: &Server, name: &str, label: &str, min: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(s).await;
        if metric(&m, name, label).unwrap_or(0.0) >= min || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Peer(std::process::Child);
impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// coturn's echo peer on a free loopback port.
fn echo_peer() -> (Peer, u16) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("turnutils_peer (Debian package coturn; scripts/test installs it)");
    (Peer(child), port)
}

/// Test tools talk to an echo peer on loopback, which the default policy refuses.
const WITH_LOOPBACK_PEERS: &str = "[turn]\nrealm = \"test\"\nusers = { u = \"p\" }\n\
    rest_secrets = [\"new-secret\", \"old-secret\"]\nallow_peers = [\"127.0.0.1/32\"]\n\
    max_allocations_per_user = 500\n";

fn start(dir: &std::path::Path, toml: &str) -> Server {
    let config = dir.join("turn.toml");
    std::fs::write(&config, toml).unwrap();
    Server::start_with(
        dir,
        Opts {
            args: vec!["--config".into(), config.display().to_string()],
            ..Default::default()
        },
    )
}

async fn ports(s: &Server) -> (u16, u16) {
    let m = metrics(s).await;
    let udp = metric(&m, "continuum_turn_port", "transport=\"udp\"").expect("udp port exported");
    let tcp = metric(&m, "continuum_turn_port", "transport=\"tcp\"").expect("tcp port exported");
    (udp as u16, tcp as u16)
}

/// Runs uclient; returns (exit ok, sent, received, output).
fn uclient(args: &[&str], turn_port: u16, peer_port: u16) -> (bool, u64, u64, String) {
    let run = uclient_once(args, turn_port, peer_port);
    // uclient binds two channels per client with random numbers and exits
    // when they collide (our 400 names it; coturn answers the same): about
    // 1 run in 300 at -m 50. That is the client's choice, so try once more.
    if run.3.contains("Channel number bound to another peer") {
        return uclient_once(args, turn_port, peer_port);
    }
    run
}

fn uclient_once(args: &[&str], turn_port: u16, peer_port: u16) -> (bool, u64, u64, String) {
    let out = Command::new("turnutils_uclient")
        .args(args)
        .args([
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-p",
            &turn_port.to_string(),
        ])
        .arg("127.0.0.1")
        .output()
        .expect("turnutils_uclient");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let find = |key: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.split(key).nth(1))
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        out.status.success(),
        find("tot_send_msgs="),
        find("tot_recv_msgs="),
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_clients_relay_through_us() {
    let dir = tempdir();
    let s = start(dir.path(), WITH_LOOPBACK_PEERS);
    let (udp, tcp) = ports(&s).await;
    let (_peer, peer_port) = echo_peer();

    let out = Command::new("turnutils_stunclient")
        .args(["-p", &udp.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "binding works:\n{text}"
    );

    let (turn_user, turn_rest) = (["-u", "u", "-w", "p"], ["-u", "t1.p1", "-W", "old-secret"]);
    let cases: Vec<(&str, Vec<&str>, u16)> = vec![
        (
            "UDP, ChannelData, RTP/RTCP pair (EVEN-PORT)",
            [&turn_user[..], &["-n", "30", "-m", "3", "-l", "120"]].concat(),
            udp,
        ),
        (
            "UDP, Send indications",
            [
                &turn_user[..],
                &["-s", "-c", "-n", "30", "-m", "3", "-l", "120"],
            ]
            .concat(),
            udp,
        ),
        (
            "TCP, ChannelData",
            [
                &turn_user[..],
                &["-t", "-c", "-n", "30", "-m", "3", "-l", "120"],
            ]
            .concat(),
            tcp,
        ),
        (
            "TCP, Send indications",
            [
                &turn_user[..],
                &["-t", "-s", "-c", "-n", "30", "-m", "3", "-l", "120"],
            ]
            .concat(),
            tcp,
        ),
        (
            "REST credentials (rotated secret)",
            [&turn_rest[..], &["-c", "-n", "30", "-m", "3", "-l", "120"]].concat(),
            udp,
        ),
        (
            "50 clients",
            [&turn_user[..], &["-c", "-n", "20", "-m", "50", "-l", "170"]].concat(),
            udp,
        ),
        (
            // Client pairs, each relaying to the other's TCP relay: one side
            // Connects, the other hears a ConnectionAttempt; both bind a
            // data connection (on any worker).
            "TCP relays (RFC 6062)",
            [&turn_user[..], &["-T", "-n", "30", "-m", "4", "-l", "120"]].concat(),
            tcp,
        ),
    ];
    for (name, args, port) in cases {
        let (ok, sent, received, text) = uclient(&args, port, peer_port);
        assert!(
            ok && sent > 0 && received == sent,
            "{name}: sent {sent}, echoed {received}\n{}",
            text.lines().rev().take(12).collect::<Vec<_>>().join("\n")
        );
    }
    let m = metrics(&s).await;
    assert!(
        metric(&m, "continuum_turn_allocations_created_total", "region").unwrap_or(0.0) >= 60.0
    );
    assert!(metric(&m, "continuum_turn_packets_to_peers_total", "region").unwrap_or(0.0) >= 1000.0);
    assert!(
        metric(&m, "continuum_turn_packets_to_clients_total", "region").unwrap_or(0.0) >= 1000.0
    );
    assert!(
        metric(&m, "continuum_turn_tenant_allocations", "tenant=\"t1\"").is_some(),
        "REST allocations are counted per tenant:\n{m}"
    );
    let m = wait_metric(&s, "continuum_turn_tcp_connections_total", "region", 4.0).await;
    assert!(
        metric(&m, "continuum_turn_tcp_connections_total", "region").unwrap_or(0.0) >= 4.0,
        "RFC 6062 peer connections are counted:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_relay_and_join_replies_carry_ice_servers() {
    let dir = tempdir();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("turn.crt"), dir.path().join("turn.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = start(
        dir.path(),
        &format!(
            "{WITH_LOOPBACK_PEERS}tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             nodes = [{{ region = \"eu\", urls = [\"turn:turn-eu.example.org:3478?transport=udp\"] }}]\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let m = metrics(&s).await;
    let tls = metric(&m, "continuum_turn_port", "transport=\"tls\"").expect("tls port") as u16;
    let (_peer, peer_port) = echo_peer();
    let (ok, sent, received, text) = uclient(
        &[
            "-u", "u", "-w", "p", "-t", "-S", "-c", "-n", "30", "-m", "3", "-l", "120",
        ],
        tls,
        peer_port,
    );
    assert!(
        ok && sent > 0 && received == sent,
        "TLS: sent {sent}, echoed {received}\n{}",
        text.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
    let (ok, sent, received, text) = uclient(
        &[
            "-u", "u", "-w", "p", "-T", "-S", "-n", "30", "-m", "2", "-l", "120",
        ],
        tls,
        peer_port,
    );
    assert!(
        ok && sent > 0 && received == sent,
        "TCP relays over TLS: sent {sent}, echoed {received}\n{}",
        text.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );

    // The API hands out TURN servers with REST credentials our TURN accepts.
    let (status, token) = s
        .call(
            "POST",
            "/v1/tokens",
            s.key(),
            Some(serde_json::json!({"identity": "dr-who", "role": "clinician", "grants": {"conversations": ["*"], "rooms": ["*"]}})),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let servers = &token["ice_servers"];
    let first = &servers[0];
    let urls: Vec<&str> = first["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        urls.iter()
            .any(|u| u.starts_with("turn:127.0.0.1:") && u.ends_with("transport=udp")),
        "{servers}"
    );
    assert!(urls.iter().any(|u| u.starts_with("turns:")), "{servers}");
    let username = first["username"].as_str().unwrap();
    let (expiry, id) = username.split_once(':').unwrap();
    assert!(expiry.parse::<u64>().unwrap() > continuum_turn::auth::now_unix());
    assert!(
        id.ends_with(".dr-who"),
        "bound to tenant and participant: {username}"
    );
    let udp = metric(&m, "continuum_turn_port", "transport=\"udp\"").unwrap() as u16;
    let out = Command::new("turnutils_uclient")
        .args([
            "-u",
            username,
            "-w",
            first["credential"].as_str().unwrap(),
            "-c",
            "-n",
            "10",
            "-m",
            "1",
        ])
        .args([
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-p",
            &udp.to_string(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the handed-out credentials work: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        servers.as_array().unwrap().len(),
        2,
        "this node and the eu node: {servers}"
    );
    assert_eq!(servers[1]["region"], "eu");

    // A participant in the eu region gets the eu node first.
    let (status, token) = s
        .call(
            "POST",
            "/v1/tokens",
            s.key(),
            Some(
                serde_json::json!({"identity": "patient-7", "role": "clinician", "region": "eu",
                "grants": {"conversations": ["*"], "rooms": ["*"]}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    assert_eq!(token["ice_servers"][0]["region"], "eu", "{token}");
    assert_eq!(token["ice_servers"][1]["region"], "default");

    // The token carries the region, so the signaling `joined` reply orders
    // its ice_servers the same way.
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550871").await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(serde_json::json!({"waiting_room": false})),
        )
        .await;
    let url = format!(
        "{}/v1/rtc?token={}",
        s.base.replacen("http", "ws", 1),
        token["token"].as_str().unwrap()
    );
    let (mut ws, _) = connect_signaling(url).await;
    use futures::{SinkExt, StreamExt};
    let join =
        serde_json::json!({"type": "join", "room": room["id"], "sdp": common::audio_offer()});
    ws.send(join.to_string().into()).await.unwrap();
    let joined: serde_json::Value = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply to join")
            .unwrap()
            .unwrap();
        if let Ok(text) = msg.to_text() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["type"] == "joined" || v["type"] == "error" {
                break v;
            }
        }
    };
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["ice_servers"][0]["region"], "eu", "{joined}");
    assert_eq!(joined["ice_servers"][1]["region"], "default", "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_quota_and_expiry_are_refused() {
    let dir = tempdir();
    let s = start(
        dir.path(),
        &format!("{WITH_LOOPBACK_PEERS}max_allocations_per_tenant = 2\n"),
    );
    let (udp, _) = ports(&s).await;
    let (_peer, peer_port) = echo_peer();

    let (ok, _, _, text) = uclient(&["-u", "u", "-w", "wrong", "-c", "-n", "5"], udp, peer_port);
    assert!(!ok, "wrong password: 401\n{text}");
    let (ok, _, _, text) = uclient(
        &["-u", "t9.p1", "-W", "not-our-secret", "-c", "-n", "5"],
        udp,
        peer_port,
    );
    assert!(!ok, "unknown REST secret: 401\n{text}");

    // Tenant quota 2: a third concurrent allocation of tenant t2 gets 486.
    let (ok, _, _, text) = uclient(
        &[
            "-u",
            "t2.p1",
            "-W",
            "new-secret",
            "-c",
            "-n",
            "5",
            "-m",
            "3",
        ],
        udp,
        peer_port,
    );
    assert!(!ok, "over the tenant quota: 486\n{text}");

    let m = wait_metric(
        &s,
        "continuum_turn_allocations_refused_total",
        "reason=\"quota\"",
        1.0,
    )
    .await;
    assert!(
        metric(&m, "continuum_turn_auth_failures_total", "region").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "continuum_turn_allocations_refused_total",
            "reason=\"quota\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rest_credentials_and_denied_peers_are_refused() {
    use continuum_turn::auth::{long_term_key, rest_password};
    use continuum_turn::policy::DENIED_BY_DEFAULT;
    use continuum_turn::stun::{Builder, Class, Message, attr, method};
    let dir = tempdir();
    // No loopback allowance: the peer policy applies in full.
    let s = start(
        dir.path(),
        "[turn]\nrealm = \"test\"\nusers = { u = \"p\" }\nrest_secrets = [\"new-secret\"]\nallow_own_sfu = false\nrelay_ip_v6 = \"::1\"\n",
    );
    let (udp, _) = ports(&s).await;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.connect(("127.0.0.1", udp)).unwrap();
    let mut buf = [0u8; 1500];
    let mut ask = |b: Vec<u8>| -> Vec<u8> {
        sock.send(&b).unwrap();
        let n = sock.recv(&mut buf).expect("an answer");
        buf[..n].to_vec()
    };
    // Challenge: 401 with realm and nonce.
    let r = ask(Builder::new(Class::Request, method::ALLOCATE, [1; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .fingerprint());
    let m = Message::parse(&r).unwrap();
    assert_eq!(error_code(&m), Some(401));
    let nonce = m.str_attr(attr::NONCE).unwrap().to_owned();

    // Expired REST username: refused.
    let user = "1000:t1.p1";
    let key = long_term_key(user, "test", &rest_password("new-secret", user));
    let r = ask(Builder::new(Class::Request, method::ALLOCATE, [2; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERNAME, user.as_bytes())
        .attr(attr::REALM, b"test")
        .attr(attr::NONCE, nonce.as_bytes())
        .integrity(&key)
        .fingerprint());
    assert_eq!(
        error_code(&Message::parse(&r).unwrap()),
        Some(401),
        "expired REST credentials"
    );

    // A real allocation over IPv4 and one over IPv6 (RFC 6156), then
    // permissions towards every denied range: IPv4 ranges through the IPv4
    // relay, every IPv6 range and every IPv4 range in an IPv6 form through
    // the IPv6 relay.
    let v4 = allocate(udp, "u", "p", &[]);
    v4.relay.expect("IPv4 relay");
    let v6 = allocate(
        udp,
        "u",
        "p",
        &[(attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    let relay = v6.relay.expect("IPv6 relay");
    assert!(relay.is_ipv6(), "{relay}");
    let permission = |tx: u8, peer: std::net::SocketAddr| {
        Builder::new(Class::Request, method::CREATE_PERMISSION, [tx; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
    };
    let denied = DENIED_BY_DEFAULT;
    for (i, ip) in denied.iter().enumerate() {
        let peer = std::net::SocketAddr::new(ip.parse().unwrap(), 9);
        let through = if peer.is_ipv6() { &v6 } else { &v4 };
        assert_eq!(
            through.request(permission(10 + i as u8, peer)),
            403,
            "{ip} must be refused"
        );
    }
    // An allowed public peer works.
    assert_eq!(
        v4.request(permission(99, "8.8.8.8:53".parse().unwrap())),
        200
    );
    let m = wait_metric(
        &s,
        "continuum_turn_peer_policy_denials_total",
        "reason=\"special_purpose\"",
        denied.len() as f64,
    )
    .await;
    assert!(
        metric(
            &m,
            "continuum_turn_peer_policy_denials_total",
            "reason=\"special_purpose\""
        )
        .unwrap_or(0.0)
            >= denied.len() as f64,
        "{m}"
    );
}

/// A STUN error response's code (class × 100 + number).
fn error_code(m: &continuum_turn::stun::Message) -> Option<u16> {
    m.attr(continuum_turn::stun::attr::ERROR_CODE)
        .map(|v| v[2] as u16 * 100 + v[3] as u16)
}

/// A minimal TURN client of our own over UDP (coturn's uclient cannot ask
/// for a RESERVATION-TOKEN from a second client): one authenticated
/// Allocate with `extra` attributes.
fn allocate(port: u16, user: &str, pass: &str, extra: &[(u16, Vec<u8>)]) -> Allocated {
    use continuum_turn::stun::{Builder, Class, Message, attr, method};
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.connect(("127.0.0.1", port)).unwrap();
    let ask = |msg: Vec<u8>| -> Vec<u8> {
        sock.send(&msg).unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).expect("a TURN response");
        buf[..n].to_vec()
    };
    let request = |tx: u8| {
        let mut b = Builder::new(Class::Request, method::ALLOCATE, [tx; 12]);
        if !extra.iter().any(|(k, _)| *k == attr::REQUESTED_TRANSPORT) {
            b = b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }
        for (k, v) in extra {
            b = b.attr(*k, v);
        }
        b
    };
    let challenge = ask(request(1).fingerprint());
    let nonce = Message::parse(&challenge)
        .unwrap()
        .str_attr(attr::NONCE)
        .expect("a 401 with a nonce")
        .to_owned();
    let key = continuum_turn::auth::long_term_key(user, "test", pass);
    let reply = ask(request(2)
        .attr(attr::USERNAME, user.as_bytes())
        .attr(attr::REALM, b"test")
        .attr(attr::NONCE, nonce.as_bytes())
        .integrity(&key)
        .fingerprint());
    let m = Message::parse(&reply).unwrap();
    let relay = if m.class == Class::Success {
        Ok(m.xor_address(m.attr(attr::XOR_RELAYED_ADDRESS).unwrap())
            .unwrap())
    } else {
        Err(error_code(&m).expect("an error code"))
    };
    Allocated {
        relay,
        token: m.attr(attr::RESERVATION_TOKEN).map(<[u8]>::to_vec),
        socket: sock,
        auth: (user.to_owned(), nonce, key),
    }
}

/// An allocation (alive while this is) or the error code that refused it.
struct Allocated {
    relay: Result<std::net::SocketAddr, u16>,
    token: Option<Vec<u8>>,
    socket: UdpSocket,
    /// Username, nonce and key for further requests.
    auth: (String, String, [u8; 16]),
}

impl Allocated {
    /// One more authenticated request on this allocation: 200 or the error code.
    fn request(&self, b: continuum_turn::stun::Builder) -> u16 {
        self.request_with_reason(b).0
    }

    /// As [`Allocated::request`], with the error's reason phrase.
    fn request_with_reason(&self, b: continuum_turn::stun::Builder) -> (u16, String) {
        use continuum_turn::stun::{Class, Message, attr};
        let (user, nonce, key) = &self.auth;
        let msg = b
            .attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, b"test")
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(key)
            .fingerprint();
        self.socket.send(&msg).unwrap();
        let mut buf = [0u8; 1500];
        let n = self.socket.recv(&mut buf).expect("a TURN response");
        let m = Message::parse(&buf[..n]).unwrap();
        match m.class {
            Class::Success => (200, String::new()),
            _ => (
                error_code(&m).expect("an error code"),
                m.attr(attr::ERROR_CODE)
                    .map(|v| String::from_utf8_lossy(&v[4..]).into_owned())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// RFC 8656 §12.2: a channel stays bound to one peer and a peer to one
/// channel for the binding's life; a refresh with the same pair succeeds,
/// and each conflict is a 400 whose reason says which rule it broke
/// (turnutils_uclient meets one by chance when its random channel numbers
/// collide, so operators see it in bench logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_bindings_keep_one_peer_per_channel() {
    use continuum_turn::stun::{Builder, Class, attr, method};
    let dir = tempdir();
    let s = start(dir.path(), WITH_LOOPBACK_PEERS);
    let (udp, _) = ports(&s).await;
    let a = allocate(udp, "u", "p", &[]);
    a.relay.expect("allocation");
    let tx = std::cell::Cell::new(0u8);
    let bind = |channel: u16, port: u16| {
        tx.set(tx.get() + 1);
        Builder::new(Class::Request, method::CHANNEL_BIND, [tx.get(); 12])
            .attr(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, ([127, 0, 0, 1], port).into())
    };
    assert_eq!(a.request(bind(0x4001, 9001)), 200);
    assert_eq!(a.request(bind(0x4001, 9001)), 200, "a refresh");
    let (code, reason) = a.request_with_reason(bind(0x4001, 9002));
    assert_eq!(
        (code, reason.as_str()),
        (400, "Channel number bound to another peer")
    );
    let (code, reason) = a.request_with_reason(bind(0x4002, 9001));
    assert_eq!(
        (code, reason.as_str()),
        (400, "Peer bound to another channel number")
    );
    assert_eq!(a.request(bind(0x4002, 9002)), 200, "a new pair");
    assert_eq!(
        a.request(bind(0x3fff, 9003)),
        400,
        "below the channel range"
    );
    // RFC 5766's last channel, which coturn's client picks now and then.
    assert_eq!(a.request(bind(0x7fff, 9004)), 200, "RFC 5766's upper end");
    assert_eq!(
        a.request(bind(0x8000, 9003)),
        400,
        "above the channel range"
    );
}

/// The relay may reach this node's own SFU, but only its media ports: with
/// the default policy (no loopback allowance), a ChannelBind to the SFU's
/// port works and its data reaches the SFU, while the TURN port on the same
/// address is refused (403) and a Send indication to it is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_reach_our_own_sfu_media_ports_only() {
    use continuum_turn::stun::{Builder, Class, attr, method};
    let dir = tempdir();
    let s = start(
        dir.path(),
        "[turn]\nrealm = \"test\"\nusers = { u = \"p\" }\n",
    );
    let (udp, _) = ports(&s).await;
    let m = metrics(&s).await;
    let sfu = metric(&m, "continuum_sfu_udp_port", "worker=\"0\"").expect("SFU port") as u16;
    let a = allocate(udp, "u", "p", &[]);
    a.relay.expect("allocation");
    let bind = |channel: u16, port: u16| {
        Builder::new(Class::Request, method::CHANNEL_BIND, [channel as u8; 12])
            .attr(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, ([127, 0, 0, 1], port).into())
    };
    assert_eq!(a.request(bind(0x4001, sfu)), 200, "the SFU's media port");
    assert_eq!(a.request(bind(0x4002, udp)), 403, "the TURN port beside it");
    let before = metric(&m, "continuum_sfu_unknown_datagrams_total", "").unwrap_or(0.0);
    // ChannelData to the SFU: a datagram from an address it does not know.
    a.socket.send(&[0x40, 0x01, 0, 4, 1, 2, 3, 4]).unwrap();
    let m = wait_metric(
        &s,
        "continuum_sfu_unknown_datagrams_total",
        "",
        before + 1.0,
    )
    .await;
    assert!(
        metric(&m, "continuum_sfu_unknown_datagrams_total", "").unwrap_or(0.0) >= before + 1.0,
        "relayed data reached the SFU\n{m}"
    );
    // A Send indication to the TURN port is dropped and counted.
    let denied = |m: &str| {
        metric(
            m,
            "continuum_turn_peer_policy_denials_total",
            "special_purpose",
        )
        .unwrap_or(0.0)
    };
    let before = denied(&m);
    let send = Builder::new(Class::Indication, method::SEND, [9; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, ([127, 0, 0, 1], udp).into())
        .attr(attr::DATA, b"knock")
        .fingerprint();
    a.socket.send(&send).unwrap();
    let m = wait_metric(
        &s,
        "continuum_turn_peer_policy_denials_total",
        "special_purpose",
        before + 1.0,
    )
    .await;
    assert!(denied(&m) >= before + 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_workers_share_quotas_and_reservations() {
    use continuum_turn::stun::attr;
    let dir = tempdir();
    // Four relay workers: clients from different ports land on different
    // workers (SO_REUSEPORT hash), yet quotas and reservations are global.
    let s = start(
        dir.path(),
        "[turn]\nrealm = \"test\"\nthreads = 4\nusers = { u = \"p\", v = \"p\" }\n\
         max_allocations_per_user = 3\n",
    );
    let (udp, _) = ports(&s).await;

    let tries: Vec<Allocated> = (0..8).map(|_| allocate(udp, "u", "p", &[])).collect();
    let mut codes: Vec<u16> = tries
        .iter()
        .map(|a| a.relay.map_or_else(|c| c, |_| 200))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [200, 200, 200, 486, 486, 486, 486, 486],
        "per-user quota 3 across workers"
    );
    // Each worker exports its own share; the gauge is their sum.
    let m = wait_metric(&s, "continuum_turn_allocations{", "region", 3.0).await;
    assert_eq!(
        metric(&m, "continuum_turn_allocations{", "region"),
        Some(3.0),
        "{m}"
    );

    // EVEN-PORT with R: the next port is held for whoever brings the token,
    // whichever worker that client lands on.
    let first = allocate(udp, "v", "p", &[(attr::EVEN_PORT, vec![0x80])]);
    let relay = first.relay.expect("even-port allocation");
    assert_eq!(relay.port() % 2, 0, "even port");
    let token = first.token.clone().expect("a RESERVATION-TOKEN");
    let second = allocate(udp, "v", "p", &[(attr::RESERVATION_TOKEN, token.clone())]);
    assert_eq!(
        second.relay.expect("the reserved port").port(),
        relay.port() + 1
    );
    let again = allocate(udp, "v", "p", &[(attr::RESERVATION_TOKEN, token)]);
    assert_eq!(again.relay, Err(508), "a token works once");
    drop(tries);
}

/// A minimal TURN client of our own over one TCP connection (control or
/// data connection, RFC 6062): authenticated requests, raw reads.
struct StreamTurn {
    stream: std::net::TcpStream,
    auth: Option<(String, [u8; 16])>,
    tx: u8,
}

impl StreamTurn {
    fn connect(port: u16) -> Self {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        StreamTurn {
            stream,
            auth: None,
            tx: 0,
        }
    }

    /// The next STUN message on the connection.
    fn read_message(&mut self) -> Vec<u8> {
        use std::io::Read;
        let mut head = [0u8; 20];
        self.stream.read_exact(&mut head).expect("a STUN message");
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut msg = head.to_vec();
        msg.resize(20 + len, 0);
        self.stream.read_exact(&mut msg[20..]).unwrap();
        msg
    }

    /// One request (authenticated after the first 401): the response.
    fn ask(&mut self, method: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        use continuum_turn::stun::{Builder, Class, Message, attr};
        use std::io::Write;
        loop {
            self.tx += 1;
            let mut b = Builder::new(Class::Request, method, [self.tx; 12]);
            for (k, v) in attrs {
                b = b.attr(*k, v);
            }
            if let Some((nonce, key)) = &self.auth {
                b = b
                    .attr(attr::USERNAME, b"u")
                    .attr(attr::REALM, b"test")
                    .attr(attr::NONCE, nonce.as_bytes())
                    .integrity(key);
            }
            self.stream.write_all(&b.fingerprint()).unwrap();
            let reply = self.read_message();
            let m = Message::parse(&reply).unwrap();
            if self.auth.is_none() && error_code(&m) == Some(401) {
                let nonce = m.str_attr(attr::NONCE).unwrap().to_owned();
                self.auth = Some((nonce, continuum_turn::auth::long_term_key("u", "test", "p")));
                continue;
            }
            return reply;
        }
    }

    /// 200 or the error code.
    fn code(&mut self, method: u16, attrs: &[(u16, Vec<u8>)]) -> u16 {
        let reply = self.ask(method, attrs);
        let m = continuum_turn::stun::Message::parse(&reply).unwrap();
        error_code(&m).unwrap_or(200)
    }
}

/// An echo peer on TCP (a thread per connection), for TCP relays.
fn tcp_echo_peer() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An XOR-PEER-ADDRESS value for `addr` (IPv4).
fn xor_peer(addr: std::net::SocketAddr) -> Vec<u8> {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let port = v4.port() ^ 0x2112;
    let ip = u32::from(*v4.ip()) ^ 0x2112_A442;
    let mut v = vec![0, 1];
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&ip.to_be_bytes());
    v
}

/// RFC 6062 step by step with our own client, including what coturn's
/// uclient never sends: refusals (TCP relay over UDP, a second connection
/// to the same peer, an unreachable or denied peer, ChannelBind on a TCP
/// relay, an unknown CONNECTION-ID), both directions of data, an inbound
/// connection announced by ConnectionAttempt, and data connections that
/// close when the allocation ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_allocations_connect_bind_and_refuse() {
    use continuum_turn::stun::{Message, attr, method};
    use std::io::{Read, Write};
    let dir = tempdir();
    let s = start(dir.path(), &format!("{WITH_LOOPBACK_PEERS}threads = 2\n"));
    let (udp, tcp) = ports(&s).await;
    let tcp_transport = (attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0]);

    // A TCP relay needs a TCP or TLS client.
    let over_udp = allocate(udp, "u", "p", std::slice::from_ref(&tcp_transport));
    assert_eq!(over_udp.relay, Err(400));

    let echo_addr = tcp_echo_peer();

    let mut control = StreamTurn::connect(tcp);
    let reply = control.ask(method::ALLOCATE, std::slice::from_ref(&tcp_transport));
    let m = Message::parse(&reply).unwrap();
    let relay = m
        .xor_address(m.attr(attr::XOR_RELAYED_ADDRESS).expect("a TCP relay"))
        .unwrap();
    assert_eq!(
        control.code(
            method::CHANNEL_BIND,
            &[
                (attr::CHANNEL_NUMBER, vec![0x40, 0, 0, 0]),
                (attr::XOR_PEER_ADDRESS, xor_peer(echo_addr)),
            ]
        ),
        400,
        "no channels on TCP relays"
    );
    let denied: std::net::SocketAddr = "10.1.2.3:80".parse().unwrap();
    assert_eq!(
        control.code(
            method::CONNECT,
            &[(attr::XOR_PEER_ADDRESS, xor_peer(denied))]
        ),
        403
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    assert_eq!(
        control.code(
            method::CONNECT,
            &[(attr::XOR_PEER_ADDRESS, xor_peer(closed_addr))]
        ),
        447
    );
    let reply = control.ask(
        method::CONNECT,
        &[(attr::XOR_PEER_ADDRESS, xor_peer(echo_addr))],
    );
    let m = Message::parse(&reply).unwrap();
    let id = m.u32_attr(attr::CONNECTION_ID).expect("a CONNECTION-ID");
    assert_eq!(
        control.code(
            method::CONNECT,
            &[(attr::XOR_PEER_ADDRESS, xor_peer(echo_addr))]
        ),
        446,
        "one connection per peer"
    );

    // At most 64 peer connections per allocation (listeners whose backlog
    // completes the connections hold them open, waiting for their bind).
    let mut capped = StreamTurn::connect(tcp);
    capped.ask(method::ALLOCATE, std::slice::from_ref(&tcp_transport));
    let listeners: Vec<std::net::TcpListener> = (0..65)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let codes: Vec<u16> = listeners
        .iter()
        .map(|l| {
            let peer = xor_peer(l.local_addr().unwrap());
            capped.code(method::CONNECT, &[(attr::XOR_PEER_ADDRESS, peer)])
        })
        .collect();
    assert!(codes[..64].iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(codes[64], 508, "the 65th is refused");

    // The data connection: an unknown id is refused, the right one joins.
    let mut data = StreamTurn::connect(tcp);
    assert_eq!(
        data.code(
            method::CONNECTION_BIND,
            &[(attr::CONNECTION_ID, (id ^ 1).to_be_bytes().to_vec())]
        ),
        400
    );
    assert_eq!(
        data.code(
            method::CONNECTION_BIND,
            &[(attr::CONNECTION_ID, id.to_be_bytes().to_vec())]
        ),
        200
    );
    data.stream.write_all(b"hello, peer").unwrap();
    let mut got = [0u8; 11];
    data.stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello, peer", "echoed through the TCP relay");

    // Inbound: a peer (with a permission: the Connect made one for its IP)
    // connects to the relay; the client hears a ConnectionAttempt.
    let mut inbound = std::net::TcpStream::connect(relay).unwrap();
    inbound
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let attempt = control.read_message();
    let m = Message::parse(&attempt).unwrap();
    assert_eq!(m.method, method::CONNECTION_ATTEMPT);
    assert_eq!(
        m.xor_address(m.attr(attr::XOR_PEER_ADDRESS).unwrap())
            .unwrap(),
        inbound.local_addr().unwrap()
    );
    let id2 = m.u32_attr(attr::CONNECTION_ID).unwrap();
    let mut data2 = StreamTurn::connect(tcp);
    assert_eq!(
        data2.code(
            method::CONNECTION_BIND,
            &[(attr::CONNECTION_ID, id2.to_be_bytes().to_vec())]
        ),
        200
    );
    inbound.write_all(b"from the peer").unwrap();
    let mut got = [0u8; 13];
    data2.stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the peer");
    data2.stream.write_all(b"to the peer").unwrap();
    let mut got = [0u8; 11];
    inbound.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to the peer");

    // The allocation ends with its control connection, and with it every
    // data connection.
    drop(control);
    let mut rest = Vec::new();
    assert!(
        data.stream.read_to_end(&mut rest).is_ok(),
        "closed, not timed out"
    );
    assert!(
        inbound.read_to_end(&mut rest).is_ok(),
        "peer side closed too"
    );
    let m = wait_metric(&s, "continuum_turn_tcp_connections_total", "region", 2.0).await;
    assert!(
        metric(&m, "continuum_turn_tcp_connections_total", "region").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
}

/// The per-allocation bandwidth cap holds on TCP relays too, as one budget
/// for all of an allocation's data connections: capped connections slow
/// their senders (TCP flow control) and lose nothing; their bytes are
/// counted in the relayed-bytes metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relays_keep_to_the_bandwidth_cap() {
    use continuum_turn::stun::{Message, attr, method};
    use std::io::{Read, Write};
    let dir = tempdir();
    // 160 kbit/s = 20,000 bytes/s, both ways together.
    let s = start(
        dir.path(),
        &format!("{WITH_LOOPBACK_PEERS}bandwidth_kbps = 160\n"),
    );
    let (_, tcp) = ports(&s).await;
    let mut control = StreamTurn::connect(tcp);
    control.ask(
        method::ALLOCATE,
        &[(attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
    );
    // Two peers, one data connection each, 20,000 bytes out and echoed
    // back on each: 80,000 bytes through the allocation's cap.
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut data_connections = Vec::new();
    for _ in 0..2 {
        let echo = tcp_echo_peer();
        let reply = control.ask(method::CONNECT, &[(attr::XOR_PEER_ADDRESS, xor_peer(echo))]);
        let m = Message::parse(&reply).unwrap();
        let id = m.u32_attr(attr::CONNECTION_ID).expect("a CONNECTION-ID");
        let mut data = StreamTurn::connect(tcp);
        assert_eq!(
            data.code(
                method::CONNECTION_BIND,
                &[(attr::CONNECTION_ID, id.to_be_bytes().to_vec())]
            ),
            200
        );
        data_connections.push(data);
    }
    let started = std::time::Instant::now();
    let transfers: Vec<_> = data_connections
        .into_iter()
        .map(|data| {
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut writer = data.stream.try_clone().unwrap();
                let sent = payload.clone();
                let sender = std::thread::spawn(move || writer.write_all(&sent).unwrap());
                let mut reader = data.stream;
                reader
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut echoed = vec![0u8; payload.len()];
                reader.read_exact(&mut echoed).unwrap();
                sender.join().unwrap();
                echoed == payload
            })
        })
        .collect();
    for t in transfers {
        assert!(t.join().unwrap(), "every byte arrives, in order");
    }
    let took = started.elapsed();
    // At 20,000 bytes/s for the allocation (reads may overdraw a second by
    // one 8 KiB buffer each, charged to the next), 80,000 bytes need 3 s;
    // a cap per connection would let them through in 1 s.
    assert!(
        took >= Duration::from_millis(2500),
        "80,000 bytes at 20,000 bytes/s took only {took:?}"
    );
    let m = wait_metric(&s, "continuum_turn_bytes_to_clients_total", "", 40_000.0).await;
    for name in [
        "continuum_turn_bytes_to_peers_total",
        "continuum_turn_bytes_to_clients_total",
    ] {
        assert!(
            metric(&m, name, "").unwrap_or(0.0) >= 40_000.0,
            "{name} counts TCP-relayed bytes:\n{m}"
        );
    }
}

/// Browsers that may use nothing but TURN (as behind a network that passes
/// only TURN) get the TURN servers before their first offer, so they connect
/// at once, over UDP, TCP and TLS alike. Prints the time to connect.
#[tokio::test]
async fn browsers_connect_through_turn_alone_over_udp_tcp_and_tls() {
    let dir = tempdir();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("turn.crt"), dir.path().join("turn.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = start(
        dir.path(),
        &format!(
            "[turn]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let key = s.key().to_owned();
    for (i, transport) in ["udp", "tcp", "tls"].into_iter().enumerate() {
        let common::Visit { room, tokens, .. } = s
            .visit(
                &key,
                &format!("+1415555095{i}"),
                &[("dr-relay", "clinician"), ("nurse-relay", "clinician")],
            )
            .await;
        common::browser_scenario(
            "relay.mjs",
            &[&s.base, &room, transport, &tokens[0], &tokens[1]],
            &[format!("{transport}: media flows over relay candidates")],
        )
        .await;
    }
    let m = metrics(&s).await;
    assert!(
        m.lines().any(
            |l| l.starts_with("continuum_turn_allocations_created_total") && !l.ends_with(" 0")
        ),
        "the TURN server saw the allocations:\n{m}"
    );
}

/// A TURN port another server holds (with SO_REUSEPORT, as a second
/// Continuum or a coturn would) fails the start with the cause and the fix,
/// instead of silently sharing the port and splitting clients between both.
#[test]
fn a_turn_port_in_use_fails_the_start() {
    let other = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = other.local_addr().unwrap().as_socket().unwrap().port();
    let dir = tempdir();
    let out = Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("CONTINUUM_LOG", "warn")
        .env("CONTINUUM_RTC__UDP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_TURN__UDP_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONTINUUM_TURN__TCP_LISTEN", "127.0.0.1:0")
        .env("CONTINUUM_TURN__THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running continuum");
    // It must exit; one that is still running has started on the port.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut child = out;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started although the TURN port {port} is in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a port in use:\n{text}");
    assert!(
        text.contains(&port.to_string()) && text.contains("turn.udp_listen"),
        "the error names the port and the setting:\n{text}"
    );
    assert!(text.contains("WARN"), "the log came too: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {text}"
    );
}

/// A network namespace whose UDP goes nowhere (`ip rule … ipproto udp
/// blackhole`), joined to this host by a veth pair: a hospital network that
/// passes only TCP. Removed on drop.
struct UdpBlockedNetwork {
    name: String,
    host_if: String,
    /// This host's address on the link (the server listens there).
    host_ip: String,
}

impl UdpBlockedNetwork {
    fn create() -> UdpBlockedNetwork {
        let n = std::process::id() % 250;
        let (name, host_if, ns_if) = (
            format!("cq-noudp-{n}"),
            format!("cqh{n}"),
            format!("cqn{n}"),
        );
        let host_ip = format!("10.231.{n}.1");
        let net = UdpBlockedNetwork {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect(
                "`ip` (iproute2) runs; this test needs root (CAP_NET_ADMIN) for a network namespace",
            );
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["link", "set", &ns_if, "netns", &name]);
        run(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        let ns_ip = format!("10.231.{n}.2/24");
        run(&["-n", &name, "addr", "add", &ns_ip, "dev", &ns_if]);
        run(&["-n", &name, "link", "set", &ns_if, "up"]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        run(&[
            "-n",
            &name,
            "rule",
            "add",
            "ipproto",
            "udp",
            "priority",
            "100",
            "blackhole",
        ]);
        net
    }
}

impl Drop for UdpBlockedNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Browsers on a network that drops UDP, with every candidate allowed: ICE
/// finds TURN over TCP by itself (the ICE servers came before the offer), and
/// the visit connects within seconds. Prints the time to connect.
#[tokio::test]
async fn browsers_on_a_network_that_drops_udp_connect_over_turn_tcp() {
    let net = UdpBlockedNetwork::create();
    let dir = tempdir();
    let on_link = |port: u16| format!("{}:{port}", net.host_ip);
    let s = Server::start_with(
        dir.path(),
        Opts {
            args: vec!["--listen".into(), on_link(0)],
            env: vec![
                ("CONTINUUM_RTC__UDP_LISTEN".into(), on_link(0)),
                ("CONTINUUM_TURN__UDP_LISTEN".into(), on_link(0)),
                ("CONTINUUM_TURN__TCP_LISTEN".into(), on_link(0)),
            ],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let common::Visit { room, tokens, .. } = s
        .visit(
            &key,
            "+14155550960",
            &[("dr-noudp", "clinician"), ("patient-noudp", "patient")],
        )
        .await;
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let _browsers = common::browsers().await;
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &net.name, "node"])
        .arg(browser.join("relay.mjs"))
        .args([&s.base, &room, "any", &tokens[0], &tokens[1]])
        .output()
        .await
        .expect("node runs the browser scenario in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "UDP-blocked network:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"check\":\"any: media flows over relay candidates\",\"ok\":true"),
        "{stdout}"
    );
}
