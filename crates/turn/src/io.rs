//! Thin tokio IO around the sans-IO [`Server`]: a UDP listener, a TCP
//! listener (RFC 8656 §3.1 framing), one UDP socket per relay, and a timer.
//! The core sits behind one mutex that is never held across an await.

use crate::server::{Client, Output, Relays, Server, Transport};
use crate::stun;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// Where the IO layer listens and relays.
#[derive(Debug, Clone)]
pub struct Listen {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS (5349, or 443 for the most restrictive networks).
    pub tls: Option<(SocketAddr, Arc<tokio_rustls::rustls::ServerConfig>)>,
    /// Local addresses relay sockets bind to (port 0: the OS picks): one per
    /// family served (RFC 6156: IPv6 relays when an IPv6 address is given).
    pub relay_ips: Vec<IpAddr>,
    pub region: String,
}

/// A running TURN service.
pub struct Running {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    inner: Arc<Mutex<Inner>>,
}

impl Running {
    /// Current allocation count (for tests and health).
    pub fn allocations(&self) -> usize {
        self.inner
            .lock()
            .expect("turn state")
            .server
            .allocation_count()
    }
}

struct Inner {
    server: Server,
    relays: RelayTable,
    streams: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    next_stream: u64,
}

struct RelayTable {
    ips: Vec<IpAddr>,
    sockets: HashMap<SocketAddr, (Arc<UdpSocket>, tokio::task::AbortHandle)>,
    /// Ports held for a RESERVATION-TOKEN.
    held: HashMap<SocketAddr, std::net::UdpSocket>,
    /// Set once the service runs: relay reader tasks call back into it.
    state: Option<std::sync::Weak<Mutex<Inner>>>,
    udp: Option<Arc<UdpSocket>>,
}

impl RelayTable {
    fn bind(
        &self,
        ipv6: bool,
        even: bool,
        reserve_next: bool,
    ) -> std::io::Result<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        let Some(ip) = self.ips.iter().copied().find(|ip| ip.is_ipv6() == ipv6) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no relay address of that family",
            ));
        };
        for _ in 0..64 {
            let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
            let port = s.local_addr()?.port();
            if even && port % 2 == 1 {
                continue;
            }
            if !reserve_next {
                return Ok((s, None));
            }
            if let Ok(next) = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1)) {
                return Ok((s, Some(next)));
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no even port pair free",
        ))
    }

    fn start(&mut self, std_socket: std::net::UdpSocket) -> std::io::Result<SocketAddr> {
        std_socket.set_nonblocking(true)?;
        let std_socket = with_buffers(std_socket, RELAY_SOCKET_BUFFER);
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let addr = socket.local_addr()?;
        let state = self.state.clone().expect("relays open after start");
        let udp = self.udp.clone();
        let reader = socket.clone();
        // No buffer per relay: the task waits for readiness, then reads into
        // its worker thread's shared buffer (a relay costs a few hundred bytes).
        let task = tokio::spawn(async move {
            loop {
                if reader.readable().await.is_err() {
                    break;
                }
                let Some(state) = state.upgrade() else {
                    break;
                };
                RELAY_BUF.with_borrow_mut(|buf| {
                    let mut out = Vec::new();
                    // Leave 4 bytes in front for a ChannelData header (no copy).
                    while let Ok((n, peer)) = reader.try_recv_from(&mut buf[4..]) {
                        let sends = {
                            let mut g = state.lock().expect("turn state");
                            g.server.handle_peer(
                                Instant::now(),
                                addr,
                                peer,
                                &buf[4..4 + n],
                                &mut out,
                            );
                            collect_sends(&mut g, &mut out)
                        };
                        deliver(sends, buf, n, udp.as_deref());
                    }
                });
            }
        });
        self.sockets.insert(addr, (socket, task.abort_handle()));
        Ok(addr)
    }
}

impl Relays for RelayTable {
    fn open(
        &mut self,
        ipv6: bool,
        even_port: bool,
        reserve_next: bool,
    ) -> std::io::Result<SocketAddr> {
        let (socket, next) = self.bind(ipv6, even_port, reserve_next)?;
        if let Some(next) = next {
            self.held.insert(next.local_addr()?, next);
        }
        self.start(socket)
    }

    fn open_reserved(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let socket = self.held.remove(&addr).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "reservation released")
        })?;
        self.start(socket)
    }

    fn close(&mut self, relay: SocketAddr) {
        self.held.remove(&relay);
        if let Some((_, task)) = self.sockets.remove(&relay) {
            task.abort();
        }
    }
}

/// Kernel socket buffers: bursts from many clients at once must not overflow
/// the defaults (~208 KiB). Memory is only used while packets wait (and
/// capped by net.core.rmem_max / wmem_max).
const LISTENER_SOCKET_BUFFER: usize = 8 << 20;
const RELAY_SOCKET_BUFFER: usize = 512 << 10;

fn with_buffers(s: std::net::UdpSocket, bytes: usize) -> std::net::UdpSocket {
    let s = socket2::Socket::from(s);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
    s.into()
}

thread_local! {
    /// Receive buffer shared by every relay task on a worker thread.
    static RELAY_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 4 + 65_536]);
}

/// What to send once the lock is released.
enum Send {
    Udp(SocketAddr, Vec<u8>),
    Stream(mpsc::Sender<Vec<u8>>, Vec<u8>),
    /// Part of the input buffer, to a peer through a relay socket.
    Peer(Arc<UdpSocket>, SocketAddr, std::ops::Range<usize>),
    /// The input buffer as ChannelData (header written in front of it).
    Channel(Client, Option<mpsc::Sender<Vec<u8>>>, u16),
}

/// One client datagram or stream frame through the core, under the lock;
/// returns what to send once it is released.
fn from_client(
    inner: &Mutex<Inner>,
    client: Client,
    data: &[u8],
    out: &mut Vec<Output>,
) -> Vec<Send> {
    let mut g = inner.lock().expect("turn state");
    let Inner { server, relays, .. } = &mut *g;
    server.handle_client(
        Instant::now(),
        crate::auth::now_unix(),
        client,
        data,
        relays,
        out,
    );
    collect_sends(&mut g, out)
}

fn collect_sends(g: &mut Inner, out: &mut Vec<Output>) -> Vec<Send> {
    let mut sends = Vec::with_capacity(out.len());
    for o in out.drain(..) {
        match o {
            Output::ToClient { client, data } => match client.transport {
                Transport::Udp => sends.push(Send::Udp(client.addr, data)),
                Transport::Stream(id) => {
                    if let Some(tx) = g.streams.get(&id) {
                        sends.push(Send::Stream(tx.clone(), data));
                    }
                }
            },
            Output::ToPeer { relay, peer, range } => {
                if let Some((s, _)) = g.relays.sockets.get(&relay) {
                    sends.push(Send::Peer(s.clone(), peer, range));
                }
            }
            Output::ChannelToClient { client, channel } => {
                let tx = match client.transport {
                    Transport::Stream(id) => g.streams.get(&id).cloned(),
                    Transport::Udp => None,
                };
                sends.push(Send::Channel(client, tx, channel));
            }
        }
    }
    sends
}

/// `buf[4..4 + n]` holds the datagram the outputs refer to (peer side), or
/// `buf[..n]` when `n` is the client datagram (client side, no headroom).
fn deliver(sends: Vec<Send>, buf: &mut [u8], n: usize, udp: Option<&UdpSocket>) {
    for s in sends {
        match s {
            // UDP is best effort: a full socket buffer drops, like the network would.
            Send::Udp(to, data) => {
                if let Some(u) = udp {
                    let _ = u.try_send_to(&data, to);
                }
            }
            Send::Stream(tx, data) => {
                let _ = tx.try_send(data);
            }
            Send::Peer(sock, peer, range) => {
                let _ = sock.try_send_to(&buf[range], peer);
            }
            Send::Channel(client, tx, channel) => {
                buf[0..2].copy_from_slice(&channel.to_be_bytes());
                buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                match tx {
                    None => {
                        if let Some(u) = udp {
                            let _ = u.try_send_to(&buf[..4 + n], client.addr);
                        }
                    }
                    Some(tx) => {
                        let mut v = buf[..4 + n].to_vec();
                        v.resize(4 + n.div_ceil(4) * 4, 0);
                        let _ = tx.try_send(v);
                    }
                }
            }
        }
    }
}

/// Runs the TURN server on a thread of its own with a single-threaded tokio
/// runtime: every listener and relay task shares that thread, so the core's
/// lock is never contended and no packet crosses threads (the API's runtime
/// is not disturbed either).
pub fn spawn_thread(server: Server, listen: Listen) -> std::io::Result<Running> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("continuum-turn".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let started = start(server, listen).await;
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    std::future::pending::<()>().await;
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the TURN thread ended during start-up"))?
}

/// Starts the listeners, relays and timer on the current tokio runtime.
pub async fn start(server: Server, listen: Listen) -> std::io::Result<Running> {
    let udp = match listen.udp {
        Some(a) => {
            let s = with_buffers(std::net::UdpSocket::bind(a)?, LISTENER_SOCKET_BUFFER);
            s.set_nonblocking(true)?;
            Some(Arc::new(UdpSocket::from_std(s)?))
        }
        None => None,
    };
    let tcp = match listen.tcp {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let tls = match listen.tls {
        Some((a, cfg)) => Some((
            TcpListener::bind(a).await?,
            tokio_rustls::TlsAcceptor::from(cfg),
        )),
        None => None,
    };
    let inner = Arc::new(Mutex::new(Inner {
        server,
        relays: RelayTable {
            ips: listen.relay_ips.clone(),
            sockets: HashMap::new(),
            held: HashMap::new(),
            state: None,
            udp: udp.clone(),
        },
        streams: HashMap::new(),
        next_stream: 1,
    }));
    inner.lock().expect("turn state").relays.state = Some(Arc::downgrade(&inner));
    let running = Running {
        udp_addr: udp.as_ref().map(|u| u.local_addr()).transpose()?,
        tcp_addr: tcp.as_ref().map(|t| t.local_addr()).transpose()?,
        tls_addr: tls.as_ref().map(|(t, _)| t.local_addr()).transpose()?,
        inner: inner.clone(),
    };
    if let Some((listener, acceptor)) = tls {
        tokio::spawn(tls_accept(listener, acceptor, inner.clone()));
    }
    if let Some(udp) = udp {
        tokio::spawn(udp_loop(udp, inner.clone()));
    }
    if let Some(tcp) = tcp {
        tokio::spawn(tcp_accept(tcp, inner.clone()));
    }
    tokio::spawn(timer(inner.clone(), listen.region.clone()));
    Ok(running)
}

async fn udp_loop(udp: Arc<UdpSocket>, inner: Arc<Mutex<Inner>>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    loop {
        // Readiness once, then drain without further wake-ups.
        if udp.readable().await.is_err() {
            continue;
        }
        while let Ok((n, from)) = udp.try_recv_from(&mut buf) {
            let client = Client {
                transport: Transport::Udp,
                addr: from,
            };
            let sends = from_client(&inner, client, &buf[..n], &mut out);
            deliver_client(sends, &buf[..n], &udp);
        }
    }
}

/// Sends for a client datagram: relayed slices come from `data` itself.
fn deliver_client(sends: Vec<Send>, data: &[u8], udp: &UdpSocket) {
    for s in sends {
        match s {
            Send::Udp(to, d) => {
                let _ = udp.try_send_to(&d, to);
            }
            Send::Stream(tx, d) => {
                let _ = tx.try_send(d);
            }
            Send::Peer(sock, peer, range) => {
                let _ = sock.try_send_to(&data[range], peer);
            }
            Send::Channel(..) => {} // only produced for peer data
        }
    }
}

async fn tcp_accept(listener: TcpListener, inner: Arc<Mutex<Inner>>) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(stream_session(stream, from, inner.clone()));
    }
}

async fn tls_accept(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: Arc<Mutex<Inner>>,
) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, inner) = (acceptor.clone(), inner.clone());
        tokio::spawn(async move {
            // A client that never finishes the handshake does not hold a task forever.
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            if let Ok(Ok(tls)) = handshake {
                stream_session(tls, from, inner).await;
            }
        });
    }
}

/// TLS settings from PEM files (certificate chain and private key).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use std::io::{BufReader, Error, ErrorKind};
    let certs = rustls_pemfile::certs(&mut BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(std::fs::File::open(key)?))?
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no private key in the PEM file"))?;
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
    Ok(Arc::new(cfg))
}

/// One TCP (or TLS) client connection: frames in, frames out; the
/// allocation ends with the connection.
async fn stream_session<S>(stream: S, from: SocketAddr, inner: Arc<Mutex<Inner>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::marker::Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let id = {
        let mut g = inner.lock().expect("turn state");
        let id = g.next_stream;
        g.next_stream += 1;
        g.streams.insert(id, tx);
        id
    };
    let client = Client {
        transport: Transport::Stream(id),
        addr: from,
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    let mut out = Vec::new();
    'read: loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = stun::stream_frame_len(&buf) {
            if len > 4 + 65_536 {
                break 'read; // not TURN framing: drop the connection
            }
            if buf.len() < len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            // ChannelData over TCP carries padding the length field excludes.
            let data = match stun::parse_channel_data(&frame) {
                Some((_, d)) => &frame[..4 + d.len()],
                None => &frame[..],
            };
            let sends = from_client(&inner, client, data, &mut out);
            for s in sends {
                match s {
                    Send::Stream(tx, d) => {
                        let _ = tx.send(d).await;
                    }
                    Send::Peer(sock, peer, range) => {
                        let _ = sock.try_send_to(&data[range], peer);
                    }
                    Send::Udp(..) | Send::Channel(..) => {}
                }
            }
        }
    }
    writer_task.abort();
    let mut g = inner.lock().expect("turn state");
    g.streams.remove(&id);
    let Inner { server, relays, .. } = &mut *g;
    server.client_gone(client, relays);
}

async fn timer(inner: Arc<Mutex<Inner>>, region: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = crate::server::Stats::default();
    loop {
        tick.tick().await;
        let mut g = inner.lock().expect("turn state");
        let Inner { server, relays, .. } = &mut *g;
        server.expire(Instant::now(), relays);
        crate::metrics::export(server, &mut reported, &region);
    }
}
