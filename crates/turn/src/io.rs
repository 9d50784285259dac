//! Thin IO around the sans-IO [`Server`]: one relay worker per core.
//!
//! Every worker is a thread with a single-threaded tokio runtime and its own
//! UDP, TCP and TLS listeners on the shared ports (`SO_REUSEPORT`: the kernel
//! hashes each client's 5-tuple to one worker), its own [`Server`] core
//! (allocation table) and the relay sockets of its allocations. A relayed
//! datagram never leaves the thread that received it and takes no lock; only
//! quotas, reservations and 401 rate limits are shared ([`Ledger`]). UDP is
//! read and written in batches ([`Batch`], `crates/udp`: `recvmmsg`,
//! `sendmmsg`, GSO).

use crate::ledger::Ledger;
use crate::server::{Client, Config, Output, PendingReply, Relays, Server, Transport};
use crate::stun;
use continuum_udp::{Batch, HEADROOM};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

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
    /// Relay worker threads; 0 = one per core.
    pub threads: usize,
}

/// A running TURN service (its worker threads live as long as the process).
pub struct Running {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub threads: usize,
    ledger: Arc<Ledger>,
}

impl Running {
    /// Live allocations on all workers (for tests and health).
    pub fn allocations(&self) -> usize {
        self.ledger.allocations()
    }
}

/// Ports held for a RESERVATION-TOKEN: any worker may redeem one.
type Held = Arc<Mutex<HashMap<SocketAddr, std::net::UdpSocket>>>;

/// Peer data connections (RFC 6062) waiting for the client's
/// ConnectionBind, by CONNECTION-ID. Shared: the client's data connection
/// may reach any worker.
type PendingPeers = Arc<Mutex<HashMap<u32, PendingPeer>>>;

/// How long a peer data connection waits for its ConnectionBind (RFC 6062).
const BIND_WAIT: Duration = Duration::from_secs(30);
/// How long a Connect may take before the client hears 447.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Peer data connections waiting at once, all workers (each holds a socket).
const MAX_PENDING_PEERS: usize = 10_000;

struct PendingPeer {
    stream: std::net::TcpStream,
    /// The allocation's user: the ConnectionBind must come with the same.
    username: String,
    expires: Instant,
    share: TcpShare,
    _gone: PeerGone,
}

/// What the data connections of one TCP relay share, on whichever workers
/// they run.
#[derive(Clone)]
struct TcpShare {
    /// Turns true when the allocation ends: its data connections close.
    ended: watch::Receiver<bool>,
    /// The allocation's bandwidth budget, both ways and all its
    /// connections: (one-second window start, bytes spent in it).
    budget: Arc<Mutex<(Instant, u64)>>,
}

/// Dropped when a peer data connection ends (whichever worker ran it): the
/// allocation's worker hears of it and frees that peer's slot.
struct PeerGone {
    relay: SocketAddr,
    peer: SocketAddr,
    notify: mpsc::UnboundedSender<(SocketAddr, SocketAddr)>,
}

impl Drop for PeerGone {
    fn drop(&mut self) {
        let _ = self.notify.send((self.relay, self.peer));
    }
}

/// One worker's state; only its own thread touches it.
struct Worker {
    server: Server,
    relays: RelayTable,
    streams: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    next_stream: u64,
    udp_fd: Option<RawFd>,
    pending: PendingPeers,
    peer_gone: mpsc::UnboundedSender<(SocketAddr, SocketAddr)>,
}

impl Worker {
    /// Queues `data` for a client on a TCP/TLS connection.
    fn to_stream(&self, client: Client, data: Vec<u8>) {
        if let Transport::Stream(id) = client.transport
            && let Some(tx) = self.streams.get(&id)
        {
            let _ = tx.try_send(data);
        }
    }

    /// Files a peer data connection of `relay` under CONNECTION-ID `id`
    /// for the client's ConnectionBind. Whatever becomes of it (bound and
    /// closed, never bound, or not filed: the table is full), its end frees
    /// the peer's slot in this worker's allocation.
    fn file_pending(
        &self,
        id: u32,
        relay: SocketAddr,
        peer: SocketAddr,
        stream: std::net::TcpStream,
        username: String,
        share: TcpShare,
    ) -> bool {
        let entry = PendingPeer {
            stream,
            username,
            expires: Instant::now() + BIND_WAIT,
            share,
            _gone: PeerGone {
                relay,
                peer,
                notify: self.peer_gone.clone(),
            },
        };
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING_PEERS || pending.contains_key(&id) {
            return false;
        }
        pending.insert(id, entry);
        true
    }
}

/// A CONNECTION-ID not in use (random: ids are not guessable).
fn new_connection_id(pending: &PendingPeers) -> u32 {
    let pending = lock(pending);
    loop {
        let id: u32 = rand::random();
        if id != 0 && !pending.contains_key(&id) {
            return id;
        }
    }
}

struct RelayTable {
    ips: Vec<IpAddr>,
    sockets: foldhash::HashMap<SocketAddr, (Rc<UdpSocket>, tokio::task::AbortHandle)>,
    /// TCP relays: the accept task, the signal that ends their data
    /// connections, and what those share.
    tcp: HashMap<SocketAddr, (tokio::task::AbortHandle, watch::Sender<bool>, TcpShare)>,
    held: Held,
    /// Set once the worker runs: relay reader tasks call back into it.
    worker: Weak<RefCell<Worker>>,
}

impl RelayTable {
    fn ip_for(&self, ipv6: bool) -> std::io::Result<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == ipv6)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "no relay address of that family",
                )
            })
    }

    fn bind(
        &self,
        ipv6: bool,
        even: bool,
        reserve_next: bool,
    ) -> std::io::Result<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        let ip = self.ip_for(ipv6)?;
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
        let socket = Rc::new(UdpSocket::from_std(std_socket)?);
        let addr = socket.local_addr()?;
        let task = tokio::task::spawn_local(relay_loop(socket.clone(), addr, self.worker.clone()));
        self.sockets.insert(addr, (socket, task.abort_handle()));
        Ok(addr)
    }

    fn fd(&self, relay: &SocketAddr) -> Option<RawFd> {
        self.sockets.get(relay).map(|(s, _)| s.as_raw_fd())
    }

    /// What the data connections of a live TCP relay share.
    fn tcp_share(&self, relay: &SocketAddr) -> Option<TcpShare> {
        self.tcp.get(relay).map(|(_, _, share)| share.clone())
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
            lock(&self.held).insert(next.local_addr()?, next);
        }
        self.start(socket)
    }

    fn open_reserved(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let socket = lock(&self.held).remove(&addr).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "reservation released")
        })?;
        self.start(socket)
    }

    fn open_tcp(&mut self, ipv6: bool) -> std::io::Result<SocketAddr> {
        let ip = self.ip_for(ipv6)?;
        let socket = if ipv6 {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, 0))?;
        // Only after the bind (the port is ours alone, not another
        // process's SO_REUSEPORT group): Connect's sockets bind to this
        // address as their source, which Linux allows next to a listener
        // only when both have SO_REUSEPORT.
        socket2::SockRef::from(&socket).set_reuse_port(true)?;
        let listener = socket.listen(128)?;
        let addr = listener.local_addr()?;
        let (ended_tx, ended) = watch::channel(false);
        let share = TcpShare {
            ended,
            budget: Arc::new(Mutex::new((Instant::now(), 0))),
        };
        let task = tokio::task::spawn_local(tcp_relay_accept(
            listener,
            addr,
            self.worker.clone(),
            share.clone(),
        ));
        self.tcp
            .insert(addr, (task.abort_handle(), ended_tx, share));
        Ok(addr)
    }

    fn close(&mut self, relay: SocketAddr) {
        lock(&self.held).remove(&relay);
        if let Some((socket, task)) = self.sockets.remove(&relay) {
            task.abort();
            // Sends queued through this socket leave at the next flush; until
            // then it stays open, so its descriptor cannot be reused by a
            // new socket and a queued datagram leave from the wrong port.
            CLOSING.with_borrow_mut(|c| c.push(socket));
            FLUSH.with_borrow_mut(Flush::request);
        }
        if let Some((task, ended, _)) = self.tcp.remove(&relay) {
            task.abort();
            let _ = ended.send(true);
        }
    }
}

/// Peers connecting to one TCP relay (RFC 6062): with a permission, each
/// waits for the client's ConnectionBind under a new CONNECTION-ID.
async fn tcp_relay_accept(
    listener: TcpListener,
    relay: SocketAddr,
    worker: Weak<RefCell<Worker>>,
    share: TcpShare,
) {
    let mut out = Vec::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Some(worker) = worker.upgrade() else {
            return;
        };
        let mut w = worker.borrow_mut();
        let id = new_connection_id(&w.pending);
        // Refused (no permission, policy): dropping the stream closes it.
        let Some(username) = w
            .server
            .tcp_peer_arrived(Instant::now(), relay, peer, id, &mut out)
        else {
            continue;
        };
        let filed = match stream.into_std() {
            Ok(stream) => w.file_pending(id, relay, peer, stream, username, share.clone()),
            Err(_) => {
                w.server.tcp_peer_closed(relay, peer);
                false
            }
        };
        for o in out.drain(..) {
            if let (true, Output::ToClient { client, data }) = (filed, o) {
                w.to_stream(client, data);
            }
        }
    }
}

/// A Connect: a TCP connection from the relay's address to the peer, filed
/// for the client's ConnectionBind, and the answer on the control connection.
async fn connect_to_peer(
    worker: Rc<RefCell<Worker>>,
    client: Client,
    relay: SocketAddr,
    peer: SocketAddr,
    username: String,
    reply: PendingReply,
) {
    // (No relay any more: the allocation ended while this was queued.)
    let share = worker.borrow().relays.tcp_share(&relay);
    let connected = match share {
        Some(share) => tokio::time::timeout(CONNECT_TIMEOUT, connect_from(relay, peer))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|s| s.into_std().ok())
            .map(|s| (s, share)),
        None => None,
    };
    let mut w = worker.borrow_mut();
    let outcome = match connected {
        Some((stream, share)) => {
            let id = new_connection_id(&w.pending);
            if w.file_pending(id, relay, peer, stream, username, share) {
                w.server.tcp_peer_connected();
                Ok(Some(id))
            } else {
                Err((508, "Insufficient Capacity"))
            }
        }
        None => {
            w.server.tcp_peer_closed(relay, peer);
            Err((447, "Connection Timeout or Failure"))
        }
    };
    let data = w.server.reply(&reply, outcome);
    w.to_stream(client, data);
}

async fn connect_from(relay: SocketAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if relay.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(relay)?;
    let stream = s.connect(peer).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A bound client data connection and its peer data connection, joined:
/// raw bytes both ways until both sides close, either fails, or the
/// allocation ends.
/// `limit`: the allocation's bandwidth cap in bytes/s (0 = none), one budget
/// for both directions of all its data connections.
async fn pipe<S>(client: S, leftover: Vec<u8>, peer: PendingPeer, limit: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let PendingPeer {
        stream,
        share,
        _gone,
        ..
    } = peer;
    let TcpShare { mut ended, budget } = share;
    let Ok(mut stream) = TcpStream::from_std(stream) else {
        return;
    };
    let relay = async {
        stream.write_all(&leftover).await?;
        count_tcp_relayed(Direction::ToPeer, leftover.len());
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut peer_r, mut peer_w) = stream.split();
        let cap = (limit > 0).then_some((&*budget, limit));
        let up = relay_copy(&mut client_r, &mut peer_w, cap, Direction::ToPeer);
        let down = relay_copy(&mut peer_r, &mut client_w, cap, Direction::ToClient);
        tokio::try_join!(up, down).map(|_| ())
    };
    tokio::select! {
        _ = relay => {}
        _ = ended.wait_for(|e| *e) => {}
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToPeer,
    ToClient,
}

/// Adds TCP-relayed bytes to this worker's counts (exported by its timer
/// with the UDP relays' bytes).
fn count_tcp_relayed(direction: Direction, bytes: usize) {
    TCP_RELAYED.with(|c| {
        let (to_peers, to_clients) = c.get();
        c.set(match direction {
            Direction::ToPeer => (to_peers + bytes as u64, to_clients),
            Direction::ToClient => (to_peers, to_clients + bytes as u64),
        });
    });
}

/// Copies `from` to `to` (then shuts `to` down), counting the bytes. With
/// a cap, reads are charged to the allocation's budget: while a second's
/// budget is spent this side stops reading and TCP flow control slows the
/// sender (nothing is dropped, unlike a capped UDP relay). A read may
/// overdraw by one buffer; the overdraft is charged to the next second, so
/// the rate over time is the cap.
async fn relay_copy<R, W>(
    from: &mut R,
    to: &mut W,
    cap: Option<(&Mutex<(Instant, u64)>, u64)>,
    direction: Direction,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 8 << 10];
    loop {
        if let Some((budget, limit)) = cap {
            let wait = {
                let mut b = lock(budget);
                let seconds = b.0.elapsed().as_secs();
                if seconds > 0 {
                    b.1 = b.1.saturating_sub(limit.saturating_mul(seconds));
                    b.0 += Duration::from_secs(seconds);
                }
                (b.1 >= limit).then(|| Duration::from_secs(1).saturating_sub(b.0.elapsed()))
            };
            if let Some(wait) = wait {
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                continue;
            }
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some((budget, _)) = cap {
            lock(budget).1 += n as u64;
        }
        to.write_all(&buf[..n]).await?;
        count_tcp_relayed(direction, n);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    /// The worker's receive slots and pending sends, shared by its listener
    /// and every relay task (they run one at a time on the worker's thread,
    /// and never hold it across an await): a relay costs no buffer.
    static BATCH: RefCell<Batch> = RefCell::new(Batch::new());
    static FLUSH: RefCell<Flush> = RefCell::new(Flush::default());
    /// Relay sockets closed since the last flush, kept open until it.
    static CLOSING: RefCell<Vec<Rc<UdpSocket>>> = const { RefCell::new(Vec::new()) };
    /// Bytes this worker's TCP data connections relayed (RFC 6062): to
    /// peers, to clients.
    static TCP_RELAYED: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    /// Datagrams the kernel refused (full socket buffers): the worker's
    /// saturation signal, exported by its timer.
    static SEND_DROPPED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The worker's deferred flush: sends queued by every socket task that runs
/// in one wake-up leave together, after them (the flusher is woken behind
/// them in the run queue), so datagrams to one socket share a `sendmmsg`:
/// the client-bound ChannelData of many relays goes out in one call.
#[derive(Default)]
struct Flush {
    requested: bool,
    waker: Option<std::task::Waker>,
}

impl Flush {
    fn request(&mut self) {
        if !self.requested {
            self.requested = true;
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

async fn flusher() {
    loop {
        std::future::poll_fn(|cx| {
            FLUSH.with_borrow_mut(|f| {
                if f.requested {
                    f.requested = false;
                    std::task::Poll::Ready(())
                } else {
                    f.waker = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            })
        })
        .await;
        let dropped = BATCH.with_borrow_mut(Batch::flush) as u64;
        if dropped > 0 {
            SEND_DROPPED.with(|c| c.set(c.get() + dropped));
        }
        CLOSING.with_borrow_mut(Vec::clear);
    }
}

/// Receives batches from `socket` until it is empty, handing each batch to
/// `each` (which returns false to stop reading). A short batch means the socket was drained, so readiness is
/// cleared without the extra empty `recvmmsg` a drain-to-EAGAIN loop costs
/// (every datagram arriving later raises a new readiness event).
async fn read_batches(socket: &UdpSocket, mut each: impl FnMut(&mut Batch, usize) -> bool) {
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        loop {
            let fd = socket.as_raw_fd();
            let mut got = 0;
            let (full, keep_going) = BATCH.with_borrow_mut(|batch| {
                let r = socket.try_io(Interest::READABLE, || {
                    got = batch.recv(fd)?;
                    if batch.drained() {
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    Ok(())
                });
                let keep_going = got == 0 || each(batch, got);
                if batch.has_pending() {
                    FLUSH.with_borrow_mut(Flush::request);
                }
                (r.is_ok(), keep_going)
            });
            if !keep_going {
                return;
            }
            if !full {
                break;
            }
        }
    }
}

/// Peer datagrams arriving on one relay socket.
async fn relay_loop(socket: Rc<UdpSocket>, relay: SocketAddr, worker: Weak<RefCell<Worker>>) {
    let mut out = Vec::new();
    read_batches(&socket, |batch, n| {
        let Some(worker) = worker.upgrade() else {
            return false;
        };
        let mut w = worker.borrow_mut();
        let now = Instant::now();
        for i in 0..n {
            let (peer, slot, len) = batch.slot(i);
            w.server
                .handle_peer(now, relay, peer, &slot[HEADROOM..HEADROOM + len], &mut out);
            for o in out.drain(..) {
                match o {
                    Output::ChannelToClient { client, channel } => {
                        let (_, slot, _) = batch.slot(i);
                        slot[0..2].copy_from_slice(&channel.to_be_bytes());
                        slot[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                        match client.transport {
                            Transport::Udp => {
                                if let Some(fd) = w.udp_fd {
                                    batch.send_slot(fd, client.addr, i, 0..HEADROOM + len);
                                }
                            }
                            Transport::Stream(id) => {
                                if let Some(tx) = w.streams.get(&id) {
                                    // Streams carry ChannelData padded to 4 bytes.
                                    let mut v = slot[..HEADROOM + len].to_vec();
                                    v.resize(HEADROOM + len.div_ceil(4) * 4, 0);
                                    let _ = tx.try_send(v);
                                }
                            }
                        }
                    }
                    o => route(&w, batch, o, None),
                }
            }
        }
        true
    })
    .await;
}

/// Queues an output that is not ChannelData-from-a-slot; `slot` is the slot
/// holding the client datagram a `ToPeer` range refers to.
fn route(w: &Worker, batch: &mut Batch, o: Output, slot: Option<usize>) {
    match o {
        Output::ToClient { client, data } => match client.transport {
            Transport::Udp => {
                if let Some(fd) = w.udp_fd {
                    batch.send_owned(fd, client.addr, data);
                }
            }
            Transport::Stream(id) => {
                if let Some(tx) = w.streams.get(&id) {
                    let _ = tx.try_send(data);
                }
            }
        },
        Output::ToPeer { relay, peer, range } => {
            if let (Some(fd), Some(slot)) = (w.relays.fd(&relay), slot) {
                batch.send_slot(fd, peer, slot, HEADROOM + range.start..HEADROOM + range.end);
            }
        }
        // ChannelData is only for peer data; RFC 6062 requests only come
        // on streams (the core refuses them on UDP).
        Output::ChannelToClient { .. }
        | Output::ConnectToPeer { .. }
        | Output::BindConnection { .. } => {}
    }
}

/// Client datagrams on the worker's UDP listener.
async fn udp_loop(udp: Rc<UdpSocket>, worker: Rc<RefCell<Worker>>) {
    let mut out = Vec::new();
    read_batches(&udp, |batch, n| {
        let mut w = worker.borrow_mut();
        let now = Instant::now();
        let unix = crate::auth::now_unix();
        for i in 0..n {
            let (from, slot, len) = batch.slot(i);
            let client = Client {
                transport: Transport::Udp,
                addr: from,
            };
            let Worker { server, relays, .. } = &mut *w;
            server.handle_client(
                now,
                unix,
                client,
                &slot[HEADROOM..HEADROOM + len],
                relays,
                &mut out,
            );
            for o in out.drain(..) {
                route(&w, batch, o, Some(i));
            }
        }
        true
    })
    .await;
}

/// Binds `n` sockets (UDP, or listening TCP) on `addr`, sharing it by
/// `SO_REUSEPORT` when there is more than one: one per worker.
fn bind_group(
    addr: SocketAddr,
    n: usize,
    ty: socket2::Type,
    protocol: socket2::Protocol,
) -> std::io::Result<Vec<socket2::Socket>> {
    let domain = socket2::Domain::for_address(addr);
    let new = |reuse: bool| -> std::io::Result<socket2::Socket> {
        let s = socket2::Socket::new(domain, ty, Some(protocol))?;
        if ty == socket2::Type::STREAM {
            s.set_reuse_address(true)?;
        }
        if reuse {
            s.set_reuse_port(true)?;
        }
        Ok(s)
    };
    let mut addr = addr;
    if n > 1 {
        // A bind with SO_REUSEPORT joins any group on that port of the same
        // user, another process's included (a second server, a coturn):
        // the kernel would then split clients between the two. Bind once
        // without it first, so a port in use fails here, as the SFU's does
        // (and an ephemeral port is chosen free).
        let probe = new(false)?;
        probe.bind(&addr.into())?;
        addr = probe.local_addr()?.as_socket().expect("IP socket");
    }
    (0..n)
        .map(|_| {
            let s = new(n > 1)?;
            s.bind(&addr.into())?;
            if ty == socket2::Type::STREAM {
                s.listen(1024)?;
            }
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect()
}

/// One worker's listeners, bound on the starting thread so bind errors
/// reach the caller.
struct Sockets {
    udp: Option<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    tls: Option<std::net::TcpListener>,
}

/// Starts `listen.threads` relay workers (one per core by default), each on a
/// thread of its own, and returns once all of them listen. The API's runtime
/// is not disturbed by relaying.
pub fn spawn(cfg: Config, listen: Listen) -> std::io::Result<Running> {
    let threads = match listen.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let group = |addr: Option<SocketAddr>, ty, proto| -> std::io::Result<Vec<Option<_>>> {
        Ok(match addr {
            Some(a) => bind_group(a, threads, ty, proto)?
                .into_iter()
                .map(Some)
                .collect(),
            None => (0..threads).map(|_| None).collect(),
        })
    };
    use socket2::{Protocol, Type};
    let udp = group(listen.udp, Type::DGRAM, Protocol::UDP)?;
    let tcp = group(listen.tcp, Type::STREAM, Protocol::TCP)?;
    let tls = group(
        listen.tls.as_ref().map(|t| t.0),
        Type::STREAM,
        Protocol::TCP,
    )?;
    let local = |s: &Option<socket2::Socket>| -> std::io::Result<Option<SocketAddr>> {
        s.as_ref()
            .map(|s| Ok(s.local_addr()?.as_socket().expect("IP socket")))
            .transpose()
    };
    let ledger = Arc::new(Server::ledger_for(&cfg));
    let running = Running {
        udp_addr: local(&udp[0])?,
        tcp_addr: local(&tcp[0])?,
        tls_addr: local(&tls[0])?,
        threads,
        ledger: ledger.clone(),
    };
    let held: Held = Arc::default();
    let pending: PendingPeers = Arc::default();
    let acceptor = listen
        .tls
        .as_ref()
        .map(|(_, c)| tokio_rustls::TlsAcceptor::from(c.clone()));
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, ((udp, tcp), tls)) in udp.into_iter().zip(tcp).zip(tls).enumerate() {
        let sockets = Sockets {
            udp: udp.map(|s| with_buffers(s.into(), LISTENER_SOCKET_BUFFER)),
            tcp: tcp.map(Into::into),
            tls: tls.map(Into::into),
        };
        let server = Server::sharing(cfg.clone(), ledger.clone());
        let (held, pending, acceptor, listen, tx) = (
            held.clone(),
            pending.clone(),
            acceptor.clone(),
            listen.clone(),
            tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("continuum-turn-{i}"))
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
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let w = WorkerArgs {
                        index: i,
                        server,
                        sockets,
                        acceptor,
                        held,
                        pending,
                        listen,
                    };
                    match run_worker(w) {
                        Ok(()) => {
                            let _ = tx.send(Ok(()));
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
    }
    drop(tx);
    for _ in 0..threads {
        rx.recv()
            .map_err(|_| std::io::Error::other("a TURN worker ended during start-up"))??;
    }
    Ok(running)
}

struct WorkerArgs {
    index: usize,
    server: Server,
    sockets: Sockets,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    held: Held,
    pending: PendingPeers,
    listen: Listen,
}

/// Registers a worker's sockets with its runtime and spawns its tasks.
fn run_worker(a: WorkerArgs) -> std::io::Result<()> {
    let udp = a
        .sockets
        .udp
        .map(UdpSocket::from_std)
        .transpose()?
        .map(Rc::new);
    let (peer_gone, gone_notices) = mpsc::unbounded_channel();
    let worker = Rc::new_cyclic(|me| {
        RefCell::new(Worker {
            server: a.server,
            relays: RelayTable {
                ips: a.listen.relay_ips.clone(),
                sockets: Default::default(),
                tcp: HashMap::new(),
                held: a.held,
                worker: me.clone(),
            },
            streams: HashMap::new(),
            next_stream: 1,
            udp_fd: udp.as_ref().map(|u| u.as_raw_fd()),
            pending: a.pending,
            peer_gone,
        })
    });
    tokio::task::spawn_local(peer_gone_loop(gone_notices, Rc::downgrade(&worker)));
    tokio::task::spawn_local(flusher());
    if let Some(udp) = udp {
        tokio::task::spawn_local(udp_loop(udp, worker.clone()));
    }
    if let Some(tcp) = a.sockets.tcp {
        let listener = TcpListener::from_std(tcp)?;
        tokio::task::spawn_local(tcp_accept(listener, None, worker.clone()));
    }
    if let (Some(tls), Some(acceptor)) = (a.sockets.tls, a.acceptor) {
        let listener = TcpListener::from_std(tls)?;
        tokio::task::spawn_local(tcp_accept(listener, Some(acceptor), worker.clone()));
    }
    tokio::task::spawn_local(timer(worker, a.listen.region, a.index == 0));
    Ok(())
}

/// Accepts TCP (or, with an acceptor, TLS) clients on this worker.
async fn tcp_accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    worker: Rc<RefCell<Worker>>,
) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let worker = worker.clone();
        match tls.clone() {
            None => {
                tokio::task::spawn_local(stream_session(stream, from, worker));
            }
            Some(acceptor) => {
                tokio::task::spawn_local(async move {
                    // A client that never finishes the handshake does not hold a task forever.
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    if let Ok(Ok(tls)) = handshake {
                        stream_session(tls, from, worker).await;
                    }
                });
            }
        }
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
async fn stream_session<S>(stream: S, from: SocketAddr, worker: Rc<RefCell<Worker>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let id = {
        let mut w = worker.borrow_mut();
        let id = w.next_stream;
        w.next_stream += 1;
        w.streams.insert(id, tx.clone());
        id
    };
    let client = Client {
        transport: Transport::Stream(id),
        addr: from,
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Hands the write half back when every sender is gone (a bound data
    // connection then pipes on the whole stream).
    let writer_task = tokio::task::spawn_local(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        writer
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    let mut out = Vec::new();
    let mut replies = Vec::new();
    // Set by a successful ConnectionBind: the connection turns into a pipe.
    let mut joined = None;
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
            {
                let mut w = worker.borrow_mut();
                let Worker { server, relays, .. } = &mut *w;
                server.handle_client(
                    Instant::now(),
                    crate::auth::now_unix(),
                    client,
                    data,
                    relays,
                    &mut out,
                );
                for o in out.drain(..) {
                    match o {
                        Output::ToClient { data, .. } => replies.push(data),
                        Output::ToPeer { relay, peer, range } => {
                            if let Some((s, _)) = w.relays.sockets.get(&relay) {
                                let _ = s.try_send_to(&data[range], peer);
                            }
                        }
                        Output::ChannelToClient { .. } => {}
                        Output::ConnectToPeer {
                            client,
                            relay,
                            peer,
                            username,
                            reply,
                        } => {
                            tokio::task::spawn_local(connect_to_peer(
                                worker.clone(),
                                client,
                                relay,
                                peer,
                                username,
                                reply,
                            ));
                        }
                        Output::BindConnection {
                            id,
                            username,
                            reply,
                            ..
                        } => {
                            let now = Instant::now();
                            let peer = {
                                let mut pending = lock(&w.pending);
                                let valid = pending.get(&id).is_some_and(|p| {
                                    p.username == username
                                        && p.expires > now
                                        && !*p.share.ended.borrow()
                                });
                                if valid { pending.remove(&id) } else { None }
                            };
                            let outcome = match peer {
                                Some(_) => Ok(None),
                                None => Err((400, "Bad Request")),
                            };
                            replies.push(w.server.reply(&reply, outcome));
                            joined = peer;
                        }
                    }
                }
            }
            // Replies wait for room: a stream client is not dropped from.
            for r in replies.drain(..) {
                let _ = tx.send(r).await;
            }
            if joined.is_some() {
                break 'read;
            }
        }
    }
    if let Some(peer) = joined {
        // From here on the connection carries the peer's bytes, not STUN.
        // With the last sender gone, the writer sends the bind's success
        // and hands its half back.
        worker.borrow_mut().streams.remove(&id);
        drop(tx);
        let writer = writer_task.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), writer_task).await {
            Ok(Ok(write_half)) => {
                let limit = worker.borrow().server.bandwidth_limit();
                pipe(
                    reader.unsplit(write_half),
                    std::mem::take(&mut buf),
                    peer,
                    limit,
                )
                .await;
            }
            _ => writer.abort(), // a client that does not read is cut off
        }
        return;
    }
    writer_task.abort();
    let mut w = worker.borrow_mut();
    w.streams.remove(&id);
    let Worker { server, relays, .. } = &mut *w;
    server.client_gone(client, relays);
}

/// Peer data connections that ended (on any worker) free their peer's slot
/// in this worker's allocations.
async fn peer_gone_loop(
    mut notices: mpsc::UnboundedReceiver<(SocketAddr, SocketAddr)>,
    worker: Weak<RefCell<Worker>>,
) {
    while let Some((relay, peer)) = notices.recv().await {
        let Some(worker) = worker.upgrade() else {
            return;
        };
        worker.borrow_mut().server.tcp_peer_closed(relay, peer);
    }
}

/// Expiry and metrics, once a second per worker. The `first` worker also
/// does what is shared: exports the tenant gauges, sweeps unbound peer
/// connections.
async fn timer(worker: Rc<RefCell<Worker>>, region: String, first: bool) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = crate::metrics::Reported::default();
    loop {
        tick.tick().await;
        let mut w = worker.borrow_mut();
        let now = Instant::now();
        // Peer data connections nobody bound in time close (RFC 6062: 30 s).
        if first {
            lock(&w.pending).retain(|_, p| p.expires > now);
        }
        let Worker { server, relays, .. } = &mut *w;
        server.expire(now, relays);
        let (tcp_bytes_to_peers, tcp_bytes_to_clients) = TCP_RELAYED.with(std::cell::Cell::get);
        let io = crate::metrics::IoCounts {
            send_dropped: SEND_DROPPED.with(std::cell::Cell::get),
            tcp_bytes_to_peers,
            tcp_bytes_to_clients,
        };
        crate::metrics::export(server, &mut reported, &region, first, io);
    }
}
