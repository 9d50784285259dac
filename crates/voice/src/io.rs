//! The voice gateway's IO host: one tokio task owning the sans-IO
//! [`Gateway`], the SIP sockets (UDP, and TCP connections read by tasks of
//! their own), and an RTP/RTCP socket pair per call from a port range. The
//! owner talks to it through [`Voice`] and hears back [`Outcome`]s that
//! carry its own call tags (`T`): the crate knows nothing of tenants or
//! conversations.

use crate::gateway::{
    CallEvent, Dial, Gateway, GatewayConfig, GatewayError, Incoming, Output, Transmit,
};
use continuum_sip::endpoint::{shrink_sparse, table_bytes};
use continuum_sip::{CallId, DigestCredentials, Transport, TransportKind};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The core's settings; its SIP addresses are filled in from the bound sockets.
    pub gateway: GatewayConfig,
    pub udp_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    /// What carriers are told (Via, Contact, SDP); default: the listen IP.
    pub public_ip: Option<IpAddr>,
    /// RTP ports (an even port per call, RTCP on the next).
    pub rtp_ports: RangeInclusive<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot bind the SIP {what} port {addr}: {source}; set sip.{what}_listen")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sip.udp_listen and sip.tcp_listen are both unset: SIP needs one")]
    NoTransport,
    #[error("the SIP listen address is {0}: set sip.public_ip to the address carriers reach")]
    NoPublicIp(SocketAddr),
}

/// The owner's answer to an incoming call.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Answer it (check credentials first with [`Voice::authenticate`]).
    Accept,
    /// Refuse with a SIP status (403, 404, 480, 486, 503 ...).
    Reject(u16),
}

/// What the host tells its owner.
#[derive(Debug)]
pub enum Outcome<T> {
    /// An INVITE came in: reply with a decision and, when accepting, the tag
    /// its later events carry.
    Incoming {
        call: Incoming,
        reply: oneshot::Sender<(Decision, Option<T>)>,
    },
    Event {
        tag: T,
        event: CallEvent,
    },
}

/// Where and how to call.
#[derive(Debug, Clone)]
pub struct DialTarget {
    pub target: String,
    pub from: String,
    pub destination: SocketAddr,
    pub transport: TransportKind,
    pub credentials: Option<DigestCredentials>,
}

enum Command<T> {
    Dial(T, DialTarget, oneshot::Sender<Result<CallId, GatewayError>>),
    Decide(CallId, Decision, Option<T>),
    Hangup(CallId, oneshot::Sender<Result<(), GatewayError>>),
    Dtmf(CallId, String, oneshot::Sender<Result<(), GatewayError>>),
    Transfer(CallId, String, oneshot::Sender<Result<(), GatewayError>>),
    Authenticate(
        CallId,
        String,
        String,
        oneshot::Sender<Result<bool, GatewayError>>,
    ),
    AttachRoom(
        CallId,
        String,
        oneshot::Sender<Result<String, GatewayError>>,
    ),
    RoomAnswer(
        CallId,
        String,
        Option<SocketAddr>,
        oneshot::Sender<Result<(), GatewayError>>,
    ),
    RoomOffer(
        CallId,
        String,
        oneshot::Sender<Result<String, GatewayError>>,
    ),
}

/// Handle to the running gateway.
pub struct Voice<T> {
    commands: mpsc::UnboundedSender<Command<T>>,
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
}

impl<T> Clone for Voice<T> {
    fn clone(&self) -> Self {
        Voice {
            commands: self.commands.clone(),
            udp_addr: self.udp_addr,
            tcp_addr: self.tcp_addr,
        }
    }
}

fn gone() -> GatewayError {
    GatewayError::State("the voice gateway is not running")
}

impl<T: Clone + Send + 'static> Voice<T> {
    /// Binds the SIP sockets and starts the host task.
    pub async fn start(
        mut cfg: HostConfig,
    ) -> Result<(Voice<T>, mpsc::UnboundedReceiver<Outcome<T>>), HostError> {
        let udp = match cfg.udp_listen {
            Some(addr) => Some(Arc::new(UdpSocket::bind(addr).await.map_err(|source| {
                HostError::Bind {
                    what: "udp",
                    addr,
                    source,
                }
            })?)),
            None => None,
        };
        let tcp = match cfg.tcp_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| HostError::Bind {
                            what: "tcp",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let udp_addr = udp.as_ref().and_then(|s| s.local_addr().ok());
        let tcp_addr = tcp.as_ref().and_then(|s| s.local_addr().ok());
        let bound = udp_addr.or(tcp_addr).ok_or(HostError::NoTransport)?;
        let public_ip = match (cfg.public_ip, bound.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if ip.is_unspecified() => return Err(HostError::NoPublicIp(bound)),
            (None, ip) => ip,
        };
        let advertise = |a: SocketAddr| SocketAddr::new(public_ip, a.port());
        cfg.gateway.sip.addresses = udp_addr
            .map(|a| (TransportKind::Udp, advertise(a)))
            .into_iter()
            .chain(tcp_addr.map(|a| (TransportKind::Tcp, advertise(a))))
            .collect();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        let (net_tx, net_rx) = mpsc::channel(4096);
        if let Some(listener) = tcp {
            tokio::spawn(accept_tcp(listener, net_tx.clone()));
        }
        if let Some(sock) = &udp {
            tokio::spawn(read_udp(sock.clone(), Source::Sip, net_tx.clone()));
        }
        let host = Host {
            gateway: Gateway::new(cfg.gateway.clone()),
            udp,
            tcp_writers: HashMap::new(),
            media: HashMap::new(),
            rooms: HashMap::new(),
            ports: Ports::new(cfg.rtp_ports.clone()),
            rtp_ip: bound.ip(),
            public_ip,
            tags: HashMap::new(),
            outcomes,
            commands: commands.clone(),
            net_tx,
        };
        tokio::spawn(host.run(commands_rx, net_rx));
        Ok((
            Voice {
                commands,
                udp_addr,
                tcp_addr,
            },
            outcomes_rx,
        ))
    }

    async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<R, GatewayError>>) -> Command<T>,
    ) -> Result<R, GatewayError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Places a call; its events carry `tag`.
    pub async fn dial(&self, tag: T, target: DialTarget) -> Result<CallId, GatewayError> {
        self.ask(|tx| Command::Dial(tag, target, tx)).await
    }

    pub async fn hangup(&self, call: CallId) -> Result<(), GatewayError> {
        self.ask(|tx| Command::Hangup(call, tx)).await
    }

    pub async fn send_dtmf(&self, call: CallId, digits: String) -> Result<(), GatewayError> {
        self.ask(|tx| Command::Dtmf(call, digits, tx)).await
    }

    pub async fn transfer(&self, call: CallId, target: String) -> Result<(), GatewayError> {
        self.ask(|tx| Command::Transfer(call, target, tx)).await
    }

    /// Bridges an answered call into a video room: a WebRTC leg for the SFU.
    /// Returns its join offer (`identity` only labels logs).
    pub async fn attach_room(
        &self,
        call: CallId,
        identity: String,
    ) -> Result<String, GatewayError> {
        self.ask(|tx| Command::AttachRoom(call, identity, tx)).await
    }

    /// The SFU's answer to the leg's join offer (`sfu`: an address it is
    /// surely reachable at, e.g. its bound one on this node).
    pub async fn room_answer(
        &self,
        call: CallId,
        sdp: String,
        sfu: Option<SocketAddr>,
    ) -> Result<(), GatewayError> {
        self.ask(|tx| Command::RoomAnswer(call, sdp, sfu, tx)).await
    }

    /// A renegotiation offer from the SFU for the leg; returns the answer.
    pub async fn room_offer(&self, call: CallId, sdp: String) -> Result<String, GatewayError> {
        self.ask(|tx| Command::RoomOffer(call, sdp, tx)).await
    }

    /// Whether an incoming call shows valid digest credentials; if not, it
    /// is challenged (401) and its retry arrives as a new incoming call.
    pub async fn authenticate(&self, call: CallId, username: String, password: String) -> bool {
        self.ask(|tx| Command::Authenticate(call, username, password, tx))
            .await
            .unwrap_or(false)
    }
}

/// Where a datagram or stream chunk came in.
#[derive(Debug, Clone, Copy)]
enum Source {
    Sip,
    /// A call's RTP socket (its address) or RTCP socket.
    Media(SocketAddr),
    /// A call's room leg socket.
    Room(CallId),
}

enum Net {
    Datagram {
        source: Source,
        local: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    TcpOpened(Transport, mpsc::UnboundedSender<Vec<u8>>),
    TcpData(Transport, Vec<u8>),
    TcpClosed(Transport),
}

async fn read_udp(sock: Arc<UdpSocket>, source: Source, tx: mpsc::Sender<Net>) {
    let Ok(local) = sock.local_addr() else { return };
    // SIP datagrams may be large; RTP and RTCP fit an Ethernet frame
    // (a media socket per call: its buffer is most of a call's memory).
    let size = match source {
        Source::Sip => 65_536,
        Source::Media(_) | Source::Room(_) => 2_048,
    };
    let mut buf = vec![0u8; size];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let msg = Net::Datagram {
                    source,
                    local,
                    from,
                    bytes: buf[..n].to_vec(),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            // ICMP port unreachable and the like: keep reading.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => return,
        }
    }
}

async fn accept_tcp(listener: TcpListener, tx: mpsc::Sender<Net>) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let transport = Transport {
            kind: TransportKind::Tcp,
            local,
            remote,
        };
        tokio::spawn(serve_tcp(stream, transport, tx.clone()));
    }
}

/// Reads a SIP TCP connection into the host and writes what the host sends.
async fn serve_tcp(stream: TcpStream, transport: Transport, tx: mpsc::Sender<Net>) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if tx.send(Net::TcpOpened(transport, out_tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send(Net::TcpData(transport, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    writer.abort();
    let _ = tx.send(Net::TcpClosed(transport)).await;
}

/// RTP port pairs in use.
struct Ports {
    range: RangeInclusive<u16>,
    used: BTreeSet<u16>,
    next: u16,
}

impl Ports {
    fn new(range: RangeInclusive<u16>) -> Self {
        let next = *range.start() & !1;
        Ports {
            range,
            used: BTreeSet::new(),
            next,
        }
    }
}

/// A call's media sockets and their reader tasks.
struct MediaSockets {
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    readers: [JoinHandle<()>; 2],
}

struct Host<T> {
    gateway: Gateway,
    udp: Option<Arc<UdpSocket>>,
    /// Open SIP TCP connections by peer address.
    tcp_writers: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>,
    /// Media sockets by the RTP address the core knows the call by.
    media: HashMap<SocketAddr, MediaSockets>,
    /// Room leg sockets by call, with their reader task.
    rooms: HashMap<CallId, (Arc<UdpSocket>, JoinHandle<()>)>,
    ports: Ports,
    rtp_ip: IpAddr,
    public_ip: IpAddr,
    tags: HashMap<CallId, (T, SocketAddr)>,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
    commands: mpsc::UnboundedSender<Command<T>>,
    net_tx: mpsc::Sender<Net>,
}

impl<T: Clone + Send + 'static> Host<T> {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command<T>>,
        mut net: mpsc::Receiver<Net>,
    ) {
        // Once a second: gauges of every table, and the memory of tables a
        // burst left mostly empty back to the allocator.
        let mut housekeeping = tokio::time::interval(std::time::Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.gateway.poll_timeout();
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                },
                msg = net.recv() => match msg {
                    Some(msg) => self.net(msg),
                    None => return,
                },
                _ = sleep => self.gateway.handle_timeout(Instant::now()),
                _ = housekeeping.tick() => self.housekeeping(),
            }
            self.flush();
        }
    }

    fn net(&mut self, msg: Net) {
        let now = Instant::now();
        match msg {
            Net::Datagram {
                source: Source::Sip,
                local,
                from,
                bytes,
            } => {
                let transport = Transport {
                    kind: TransportKind::Udp,
                    local,
                    remote: from,
                };
                self.gateway.handle_sip(now, transport, &bytes);
            }
            Net::Datagram {
                source: Source::Media(rtp),
                local,
                from,
                bytes,
            } => {
                // The core knows the call by its advertised address.
                let local = SocketAddr::new(rtp.ip(), local.port());
                self.gateway.handle_media(now, local, from, &bytes);
            }
            Net::Datagram {
                source: Source::Room(call),
                from,
                bytes,
                ..
            } => self.gateway.handle_room(now, call, from, &bytes),
            Net::TcpOpened(t, writer) => {
                self.tcp_writers.insert(t.remote, writer);
            }
            Net::TcpData(t, bytes) => self.gateway.handle_sip(now, t, &bytes),
            Net::TcpClosed(t) => {
                self.tcp_writers.remove(&t.remote);
                self.gateway.sip_closed(now, t);
            }
        }
    }

    async fn command(&mut self, cmd: Command<T>) {
        let now = Instant::now();
        match cmd {
            Command::Dial(tag, target, reply) => {
                let local_rtp = match self.bind_media().await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = reply.send(Err(GatewayError::State(e)));
                        return;
                    }
                };
                let dial = Dial {
                    target: target.target,
                    from: target.from,
                    destination: target.destination,
                    transport: target.transport,
                    credentials: target.credentials,
                    local_rtp: self.advertised(local_rtp),
                };
                let result = self.gateway.dial(now, dial);
                match &result {
                    Ok(call) => {
                        self.tags.insert(*call, (tag, local_rtp));
                    }
                    Err(_) => self.release_media(local_rtp),
                }
                let _ = reply.send(result);
            }
            Command::Decide(call, Decision::Reject(status), _) => {
                let _ = self.gateway.reject(now, call, status);
            }
            Command::Authenticate(call, user, password, reply) => {
                let ok = self.gateway.authenticate(now, call, &user, &password);
                let _ = reply.send(Ok(ok));
            }
            Command::Decide(call, Decision::Accept, tag) => {
                let Some(tag) = tag else {
                    let _ = self.gateway.reject(now, call, 500);
                    return;
                };
                let local_rtp = match self.bind_media().await {
                    Ok(a) => a,
                    Err(_) => {
                        let _ = self.gateway.reject(now, call, 503);
                        return;
                    }
                };
                let advertised = self.advertised(local_rtp);
                match self.gateway.accept(now, call, advertised, true) {
                    Ok(()) => {
                        self.tags.insert(call, (tag, local_rtp));
                    }
                    Err(_) => self.release_media(local_rtp),
                }
            }
            Command::AttachRoom(call, identity, reply) => {
                // Same host as the SFU: a loopback-or-listen address it reaches.
                let ip = if self.rtp_ip.is_unspecified() {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    self.rtp_ip
                };
                let sock = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        let _ = reply.send(Err(GatewayError::Room(format!(
                            "cannot bind a room leg socket: {e}"
                        ))));
                        return;
                    }
                };
                let local = sock.local_addr().unwrap_or(SocketAddr::new(ip, 0));
                let result = self.gateway.attach_room(now, call, local, &identity);
                if result.is_ok() {
                    let reader = tokio::spawn(read_udp(
                        sock.clone(),
                        Source::Room(call),
                        self.net_tx.clone(),
                    ));
                    self.rooms.insert(call, (sock, reader));
                }
                let _ = reply.send(result);
            }
            Command::RoomAnswer(call, sdp, sfu, reply) => {
                let _ = reply.send(self.gateway.room_answer(now, call, &sdp, sfu));
            }
            Command::RoomOffer(call, sdp, reply) => {
                let _ = reply.send(self.gateway.room_offer(now, call, &sdp));
            }
            Command::Hangup(call, reply) => {
                let _ = reply.send(self.gateway.hangup(now, call));
            }
            Command::Dtmf(call, digits, reply) => {
                let _ = reply.send(self.gateway.send_dtmf(now, call, &digits));
            }
            Command::Transfer(call, target, reply) => {
                let _ = reply.send(self.gateway.transfer(now, call, &target));
            }
        }
    }

    fn housekeeping(&mut self) {
        shrink_sparse(&mut self.tcp_writers);
        shrink_sparse(&mut self.media);
        shrink_sparse(&mut self.rooms);
        shrink_sparse(&mut self.tags);
        let live = self.gateway.live_state();
        for (kind, n) in live.sip.kinds() {
            metrics::gauge!("continuum_sip_live", "kind" => kind).set(n as f64);
        }
        for (kind, n) in [
            ("legs", live.legs),
            ("pending", live.pending),
            ("media_sockets", self.media.len()),
            ("tags", self.tags.len()),
            ("rooms", self.rooms.len()),
            ("tcp_connections", self.tcp_writers.len()),
            ("rtp_ports", self.ports.used.len()),
        ] {
            metrics::gauge!("continuum_voice_live", "kind" => kind).set(n as f64);
        }
        let bytes = self.gateway.table_bytes()
            + table_bytes(&self.tcp_writers)
            + table_bytes(&self.media)
            + table_bytes(&self.rooms)
            + table_bytes(&self.tags);
        metrics::gauge!("continuum_voice_table_bytes").set(bytes as f64);
    }

    /// The address the core puts in SDP for a bound RTP socket.
    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.public_ip, local.port())
    }

    /// Binds the next free RTP/RTCP pair of the range.
    async fn bind_media(&mut self) -> Result<SocketAddr, &'static str> {
        let (start, end) = (*self.ports.range.start(), *self.ports.range.end());
        let pairs = (end.saturating_sub(start) / 2 + 1) as usize;
        for _ in 0..pairs {
            let port = self.ports.next;
            self.ports.next = if port.saturating_add(3) > end {
                start & !1
            } else {
                port + 2
            };
            if port < start || self.ports.used.contains(&port) {
                continue;
            }
            let rtp = SocketAddr::new(self.rtp_ip, port);
            let rtcp = SocketAddr::new(self.rtp_ip, port + 1);
            let (Ok(a), Ok(b)) = (UdpSocket::bind(rtp).await, UdpSocket::bind(rtcp).await) else {
                continue;
            };
            let (a, b) = (Arc::new(a), Arc::new(b));
            let key = self.advertised(rtp);
            let readers = [
                tokio::spawn(read_udp(a.clone(), Source::Media(key), self.net_tx.clone())),
                tokio::spawn(read_udp(b.clone(), Source::Media(key), self.net_tx.clone())),
            ];
            self.ports.used.insert(port);
            self.media.insert(
                key,
                MediaSockets {
                    rtp: a,
                    rtcp: b,
                    readers,
                },
            );
            return Ok(rtp);
        }
        Err("no free RTP port pair in sip.rtp_port_min..=sip.rtp_port_max")
    }

    fn release_media(&mut self, local_rtp: SocketAddr) {
        if let Some(m) = self.media.remove(&self.advertised(local_rtp)) {
            for r in m.readers {
                r.abort();
            }
        }
        self.ports.used.remove(&local_rtp.port());
    }

    /// Sends what the core wants sent, and passes its events on.
    fn flush(&mut self) {
        while let Some(out) = self.gateway.poll_output() {
            match out {
                Output::Transmit(Transmit::Sip {
                    transport,
                    destination,
                    bytes,
                }) => match transport.kind {
                    TransportKind::Udp => {
                        if let Some(sock) = &self.udp {
                            let _ = sock.try_send_to(&bytes, destination);
                        }
                    }
                    _ => match self.tcp_writers.get(&destination) {
                        Some(w) => {
                            let _ = w.send(bytes);
                        }
                        None => self.connect_tcp(transport, destination, bytes),
                    },
                },
                Output::Transmit(Transmit::Room {
                    call,
                    destination,
                    bytes,
                }) => {
                    if let Some((sock, _)) = self.rooms.get(&call) {
                        let _ = sock.try_send_to(&bytes, destination);
                    }
                }
                Output::Transmit(Transmit::Media {
                    local,
                    rtcp,
                    destination,
                    bytes,
                }) => {
                    if let Some(m) = self.media.get(&local) {
                        let sock = if rtcp { &m.rtcp } else { &m.rtp };
                        let _ = sock.try_send_to(&bytes, destination);
                    }
                }
                Output::Event(CallEvent::Incoming(call)) => self.incoming(call),
                Output::Event(event) => {
                    let call = match &event {
                        CallEvent::Ringing { call }
                        | CallEvent::Answered { call }
                        | CallEvent::Failed { call, .. }
                        | CallEvent::Ended { call, .. }
                        | CallEvent::Dtmf { call, .. }
                        | CallEvent::Hold { call, .. }
                        | CallEvent::Refer { call, .. }
                        | CallEvent::Transferred { call, .. } => *call,
                        CallEvent::Incoming(i) => i.call,
                    };
                    let last = matches!(event, CallEvent::Failed { .. } | CallEvent::Ended { .. });
                    let tag = if last {
                        if let Some((_, reader)) = self.rooms.remove(&call) {
                            reader.abort();
                        }
                        self.tags.remove(&call).map(|(tag, rtp)| {
                            self.release_media(rtp);
                            tag
                        })
                    } else {
                        self.tags.get(&call).map(|(tag, _)| tag.clone())
                    };
                    if let Some(tag) = tag {
                        let _ = self.outcomes.send(Outcome::Event { tag, event });
                    }
                }
            }
        }
    }

    /// Asks the owner about an incoming call; its decision comes back as a command.
    fn incoming(&mut self, call: Incoming) {
        let (reply, rx) = oneshot::channel();
        let id = call.call;
        if self
            .outcomes
            .send(Outcome::Incoming { call, reply })
            .is_err()
        {
            let _ = self.gateway.reject(Instant::now(), id, 503);
            return;
        }
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let (decision, tag) = rx.await.unwrap_or((Decision::Reject(503), None));
            let _ = commands.send(Command::Decide(id, decision, tag));
        });
    }

    /// A message for a TCP peer we have no connection to: connect, then send.
    fn connect_tcp(&mut self, transport: Transport, destination: SocketAddr, bytes: Vec<u8>) {
        let net = self.net_tx.clone();
        tokio::spawn(async move {
            let Ok(stream) = TcpStream::connect(destination).await else {
                let _ = net.send(Net::TcpClosed(transport)).await;
                return;
            };
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let t = Transport {
                kind: transport.kind,
                local,
                remote: destination,
            };
            let (read, mut write) = stream.into_split();
            if write.write_all(&bytes).await.is_err() {
                return;
            }
            let stream = match read.reunite(write) {
                Ok(s) => s,
                Err(_) => return,
            };
            serve_tcp(stream, t, net).await;
        });
    }
}
