//! `continuum bench turn`: user-space memory per TURN allocation. The TURN
//! server runs in this process (its own thread, as in `serve`); N clients each
//! allocate a relay, install a permission and bind a channel over UDP
//! loopback; the heap growth (counting allocator: exact, not RSS) divided by
//! N is the cost of one live allocation. Relaying speed against coturn is
//! `bench/turn-vs-coturn.sh`.

use crate::alloc::live_bytes;
use anyhow::{Context as _, bail};
use clap::Args;
use continuum_turn::auth::{Credentials, long_term_key};
use continuum_turn::stun::{Builder, Class, Message, attr, method};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

#[derive(Args)]
pub struct TurnArgs {
    /// Live allocations to create (each with one permission and one channel).
    #[arg(long, default_value_t = 2_000)]
    pub allocations: usize,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ask(sock: &UdpSocket, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send(msg)?;
        if let Ok(n) = sock.recv(&mut buf) {
            return Ok(buf[..n].to_vec());
        }
    }
    bail!("no answer from the TURN server")
}

pub fn run(args: TurnArgs) -> anyhow::Result<()> {
    let mut cfg = continuum_turn::Config::new(
        "bench",
        Credentials {
            users: [("u".to_owned(), "p".to_owned())].into(),
            rest_secrets: Vec::new(),
        },
        rand::random(),
    );
    cfg.max_allocations_per_user = usize::MAX;
    cfg.policy.allow = vec!["127.0.0.1/32".parse().map_err(anyhow::Error::msg)?];
    cfg.challenges_per_sec = u32::MAX;
    let running = continuum_turn::io::spawn(
        cfg,
        continuum_turn::io::Listen {
            udp: Some("127.0.0.1:0".parse()?),
            tcp: None,
            tls: None,
            relay_ips: vec!["127.0.0.1".parse()?],
            region: "bench".into(),
            threads: 1,
        },
    )
    .context("starting the TURN server")?;
    let turn = running.udp_addr.context("UDP listener")?;
    let key = long_term_key("u", "bench", "p");
    let peer: SocketAddr = "127.0.0.1:9".parse()?;

    // One warm-up allocation so lazily created state is not counted.
    let mut clients = Vec::with_capacity(args.allocations + 1);
    let allocate = |i: usize| -> anyhow::Result<UdpSocket> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.connect(turn)?;
        let tx = |k: u8| {
            let mut t = [k; 12];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            t
        };
        let r = ask(
            &sock,
            &Builder::new(Class::Request, method::ALLOCATE, tx(1))
                .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .fingerprint(),
        )?;
        let challenge = Message::parse(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
        let nonce = challenge
            .str_attr(attr::NONCE)
            .context("a nonce")?
            .to_owned();
        let auth = |b: Builder| {
            b.attr(attr::USERNAME, b"u")
                .attr(attr::REALM, b"bench")
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(&key)
                .fingerprint()
        };
        for (k, b) in [
            (
                2,
                Builder::new(Class::Request, method::ALLOCATE, tx(2))
                    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
            ),
            (
                3,
                Builder::new(Class::Request, method::CREATE_PERMISSION, tx(3))
                    .xor_address(attr::XOR_PEER_ADDRESS, peer),
            ),
            (
                4,
                Builder::new(Class::Request, method::CHANNEL_BIND, tx(4))
                    .attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer),
            ),
        ] {
            let r = ask(&sock, &auth(b))?;
            let m = Message::parse(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
            if m.class != Class::Success {
                bail!(
                    "request {k} of client {i} refused: {:?}",
                    m.attr(attr::ERROR_CODE)
                );
            }
        }
        Ok(sock)
    };
    clients.push(allocate(usize::MAX)?);
    let (heap0, rss0) = (live_bytes(), rss_kib());
    let bar = indicatif::ProgressBar::new(args.allocations as u64);
    for i in 0..args.allocations {
        clients.push(allocate(i)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // The server thread's bookkeeping settles within its 1 s timer.
    std::thread::sleep(Duration::from_millis(1500));
    let (heap1, rss1) = (live_bytes(), rss_kib());
    let n = args.allocations as f64;
    println!(
        "{} live TURN allocations (each with a permission and a channel): {} allocated on the server",
        args.allocations,
        running.allocations()
    );
    println!(
        "user-space heap per allocation: {:.2} KiB (counting allocator; target ≤ 8 KiB)",
        heap1.saturating_sub(heap0) as f64 / 1024.0 / n
    );
    println!(
        "process RSS growth per allocation: {:.2} KiB (includes allocator slack)",
        rss1.saturating_sub(rss0) as f64 / n
    );
    Ok(())
}
