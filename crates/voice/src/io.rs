//! The voice gateway's IO host: one tokio task owning the sans-IO
//! [`Gateway`], the SIP sockets (UDP, and TCP and TLS connections read by
//! tasks of their own: one stream code path over any AsyncRead+AsyncWrite),
//! and an RTP/RTCP socket pair per call from a port range. The
//! owner talks to it through [`Voice`] and hears back [`Outcome`]s that
//! carry its own call tags (`T`): the crate knows nothing of tenants or
//! conversations.

use crate::gateway::{
    CallEvent, Dial, Gateway, GatewayConfig, GatewayError, Incoming, MediaEncryption, Output,
    Transmit,
};
use crate::keepalive::{TrunkCheck, TrunkProbe};
use continuum_sip::endpoint::{shrink_sparse, table_bytes};
use continuum_sip::{CallId, DigestCredentials, Transport, TransportKind};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The core's settings; its SIP addresses are filled in from the bound sockets.
    pub gateway: GatewayConfig,
    pub udp_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    /// SIP over TLS, with its certificate ([`tls_server_config`]).
    pub tls_listen: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// How TLS trunks are verified ([`tls_client_config`]); none: no TLS trunks.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
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
    #[error("sip.udp_listen, sip.tcp_listen and sip.tls_listen are all unset: SIP needs one")]
    NoTransport,
    #[error("the SIP listen address is {0}: set sip.public_ip to the address carriers reach")]
    NoPublicIp(SocketAddr),
}

/// Why the TLS settings could not be loaded (each names the file and the fix).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {error}; set sip.{what} to a readable PEM file")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} {path} holds no {expected}; set sip.{what} to a PEM file with one")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("sip.tls_cert {cert} and sip.tls_key {key} do not make a TLS identity: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("sip.tls_ca {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let read = |error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// The SIP TLS listener's identity from PEM files: a certificate chain and
/// its private key.
pub fn tls_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs("tls_cert", cert)?;
    let read = |error| TlsError::Read {
        what: "tls_key",
        path: key.to_owned(),
        error,
    };
    let file = std::fs::File::open(key).map_err(read)?;
    let private = rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .map_err(read)?
        .ok_or_else(|| TlsError::Empty {
            what: "tls_key",
            path: key.to_owned(),
            expected: "PRIVATE KEY block",
        })?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| TlsError::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(cfg))
}

/// How TLS trunks' certificates are checked: against the CAs in `ca` (a
/// PEM file, e.g. a carrier's private CA or an SBC's self-signed
/// certificate) when given, else against the public web PKI roots.
pub fn tls_client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs("tls_ca", path)? {
                roots.add(cert).map_err(|e| TlsError::Ca {
                    path: path.to_owned(),
                    reason: format!("not a CA certificate rustls accepts: {e}"),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The owner's answer to an incoming call.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Answer it (check credentials first with [`Voice::authenticate`]).
    Accept,
    /// Refuse with a SIP status (403, 404, 480, 486, 503 ...).
    Reject(u16),
    /// Ring the caller and call this target for it (B2BUA,
    /// [`Gateway::bridge`]): the caller is answered when the target is,
    /// and the two hear each other. Events carry the caller's tag; the
    /// target leg reports nothing of its own.
    Bridge(DialTarget),
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
    /// A keepalive probe's result for the trunks at one address.
    Trunk(TrunkCheck),
}

/// Where and how to call.
#[derive(Debug, Clone)]
pub struct DialTarget {
    pub target: String,
    pub from: String,
    pub destination: SocketAddr,
    pub transport: TransportKind,
    pub credentials: Option<DigestCredentials>,
    /// TLS: the name the trunk's certificate must show (its host); none:
    /// the destination's IP address.
    pub server_name: Option<String>,
    pub media_encryption: MediaEncryption,
}

/// An outbound trunk to keep alive, with its TLS name (see [`DialTarget`]).
#[derive(Debug, Clone)]
pub struct KeepaliveTarget {
    pub probe: TrunkProbe,
    pub server_name: Option<String>,
}

enum Command<T> {
    Dial(T, DialTarget, oneshot::Sender<Result<CallId, GatewayError>>),
    SetTrunks(Vec<KeepaliveTarget>),
    Decide(CallId, Decision, Option<T>),
    Hangup(CallId, oneshot::Sender<Result<(), GatewayError>>),
    Dtmf(CallId, String, oneshot::Sender<Result<(), GatewayError>>),
    Transfer(CallId, String, oneshot::Sender<Result<(), GatewayError>>),
    Play(CallId, Arc<[i16]>),
    StopPlayback(CallId),
    StartRecording(CallId, Duration),
    StopRecording(CallId),
    Hold(CallId, bool, oneshot::Sender<Result<(), GatewayError>>),
    DetachRoom(CallId, oneshot::Sender<Result<(), GatewayError>>),
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
    pub tls_addr: Option<SocketAddr>,
}

impl<T> Clone for Voice<T> {
    fn clone(&self) -> Self {
        Voice {
            commands: self.commands.clone(),
            udp_addr: self.udp_addr,
            tcp_addr: self.tcp_addr,
            tls_addr: self.tls_addr,
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
        let tls = match cfg.tls_listen.take() {
            Some((addr, server)) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| HostError::Bind {
                        what: "tls",
                        addr,
                        source,
                    })?,
                tokio_rustls::TlsAcceptor::from(server),
            )),
            None => None,
        };
        let udp_addr = udp.as_ref().and_then(|s| s.local_addr().ok());
        let tcp_addr = tcp.as_ref().and_then(|s| s.local_addr().ok());
        let tls_addr = tls.as_ref().and_then(|(s, _)| s.local_addr().ok());
        let bound = udp_addr
            .or(tcp_addr)
            .or(tls_addr)
            .ok_or(HostError::NoTransport)?;
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
            .chain(tls_addr.map(|a| (TransportKind::Tls, advertise(a))))
            .collect();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        let (net_tx, net_rx) = mpsc::channel(4096);
        if let Some(listener) = tcp {
            tokio::spawn(accept_tcp(listener, None, net_tx.clone()));
        }
        if let Some((listener, acceptor)) = tls {
            tokio::spawn(accept_tcp(listener, Some(acceptor), net_tx.clone()));
        }
        if let Some(sock) = &udp {
            tokio::spawn(read_udp(sock.clone(), Source::Sip, net_tx.clone()));
        }
        let host = Host {
            gateway: Gateway::new(cfg.gateway.clone()),
            udp,
            tls_client: cfg.tls_client.clone().map(tokio_rustls::TlsConnector::from),
            tls_names: HashMap::new(),
            stream_writers: HashMap::new(),
            media: HashMap::new(),
            rooms: HashMap::new(),
            ports: Ports::new(cfg.rtp_ports.clone()),
            rtp_ip: bound.ip(),
            public_ip,
            tags: HashMap::new(),
            bridged: HashMap::new(),
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
                tls_addr,
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

    /// The outbound trunks to keep alive with OPTIONS (the whole set); the
    /// results come as [`Outcome::Trunk`].
    pub fn set_trunks(&self, trunks: Vec<KeepaliveTarget>) -> Result<(), GatewayError> {
        self.commands
            .send(Command::SetTrunks(trunks))
            .map_err(|_| gone())
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

    /// Queues 8 kHz audio for the phone ([`crate::Gateway::play`]);
    /// [`CallEvent::PlaybackFinished`] follows when it has all been sent.
    pub fn play(&self, call: CallId, samples: Arc<[i16]>) {
        let _ = self.commands.send(Command::Play(call, samples));
    }

    /// Drops the rest of what was queued to play (barge-in).
    pub fn stop_playback(&self, call: CallId) {
        let _ = self.commands.send(Command::StopPlayback(call));
    }

    /// Records the caller for at most `max`: [`CallEvent::Recorded`].
    pub fn start_recording(&self, call: CallId, max: Duration) {
        let _ = self.commands.send(Command::StartRecording(call, max));
    }

    /// Ends a recording early: [`CallEvent::Recorded`] with what was kept.
    pub fn stop_recording(&self, call: CallId) {
        let _ = self.commands.send(Command::StopRecording(call));
    }

    /// Puts an answered call on hold or takes it off ([`crate::Gateway::set_hold`]).
    pub async fn hold(&self, call: CallId, held: bool) -> Result<(), GatewayError> {
        self.ask(|tx| Command::Hold(call, held, tx)).await
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

    /// Takes a call out of its room ([`crate::Gateway::detach_room`]).
    pub async fn detach_room(&self, call: CallId) -> Result<(), GatewayError> {
        self.ask(|tx| Command::DetachRoom(call, tx)).await
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
    StreamOpened(Transport, mpsc::UnboundedSender<Vec<u8>>),
    StreamData(Transport, Vec<u8>),
    StreamClosed(Transport),
    /// A connection we tried to open failed (refused, timed out, TLS).
    Unreachable(TransportKind, SocketAddr),
}

/// How long a TCP connect or a TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Accepts SIP connections: plain TCP, or TLS when `tls` is given.
async fn accept_tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Net>,
) {
    let kind = if tls.is_some() {
        TransportKind::Tls
    } else {
        TransportKind::Tcp
    };
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let transport = Transport {
            kind,
            local,
            remote,
        };
        match &tls {
            None => {
                tokio::spawn(serve_stream(stream, transport, tx.clone()));
            }
            Some(acceptor) => {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_stream(tls, transport, tx).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "SIP TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "SIP TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Reads a SIP stream (TCP or TLS) into the host and writes what the host
/// sends; responses go back on the connection the request came in on.
async fn serve_stream<S>(stream: S, transport: Transport, tx: mpsc::Sender<Net>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if tx.send(Net::StreamOpened(transport, out_tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send(Net::StreamData(transport, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    writer.abort();
    let _ = tx.send(Net::StreamClosed(transport)).await;
}

/// Opens a SIP connection (TCP, or TLS with `tls`), sends `first` on it and
/// serves it; a failure is reported as [`Net::Unreachable`].
async fn connect_stream(
    kind: TransportKind,
    destination: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    first: Vec<u8>,
    net: mpsc::Sender<Net>,
) {
    let unreachable = |why: String| {
        tracing::debug!(%destination, ?kind, why, "SIP connection failed");
        Net::Unreachable(kind, destination)
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return drop(net.send(unreachable(e.to_string())).await),
        Err(_) => return drop(net.send(unreachable("connect timed out".into())).await),
    };
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return drop(net.send(unreachable("no local address".into())).await);
    };
    let t = Transport {
        kind,
        local,
        remote: destination,
    };
    match tls {
        None => {
            let mut stream = stream;
            if stream.write_all(&first).await.is_err() {
                return drop(net.send(unreachable("write failed".into())).await);
            }
            serve_stream(stream, t, net).await;
        }
        Some((connector, name)) => {
            let mut stream = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                connector.connect(name, stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return drop(net.send(unreachable(format!("TLS: {e}"))).await);
                }
                Err(_) => {
                    return drop(
                        net.send(unreachable("TLS handshake timed out".into()))
                            .await,
                    );
                }
            };
            if stream.write_all(&first).await.is_err() || stream.flush().await.is_err() {
                return drop(net.send(unreachable("write failed".into())).await);
            }
            serve_stream(stream, t, net).await;
        }
    }
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

/// An open SIP connection: its flow, and the queue its writer task sends.
type StreamWriter = (Transport, mpsc::UnboundedSender<Vec<u8>>);

/// A call's media sockets and their reader tasks.
struct MediaSockets {
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    readers: [JoinHandle<()>; 2],
}

struct Host<T> {
    gateway: Gateway,
    udp: Option<Arc<UdpSocket>>,
    /// How TLS trunks are connected to, and the names their certificates
    /// must show (by address; else the address itself).
    tls_client: Option<tokio_rustls::TlsConnector>,
    tls_names: HashMap<SocketAddr, String>,
    /// Open SIP TCP and TLS connections by transport and peer address.
    /// The flow is kept to tell a connection from a newer one to the same peer.
    stream_writers: HashMap<(TransportKind, SocketAddr), StreamWriter>,
    /// Media sockets by the RTP address the core knows the call by.
    media: HashMap<SocketAddr, MediaSockets>,
    /// Room leg sockets by call, with their reader task.
    rooms: HashMap<CallId, (Arc<UdpSocket>, JoinHandle<()>)>,
    ports: Ports,
    rtp_ip: IpAddr,
    public_ip: IpAddr,
    tags: HashMap<CallId, (T, SocketAddr)>,
    /// Bridged target legs ([`Decision::Bridge`]): their RTP socket.
    bridged: HashMap<CallId, SocketAddr>,
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
                _ = sleep => {
                    let now = Instant::now();
                    // How late the media clock runs (prompts stutter past a
                    // frame): the gateway's load, as callers hear it.
                    if let Some(due) = wake {
                        metrics::histogram!("continuum_sip_timer_lateness_seconds")
                            .record(now.saturating_duration_since(due).as_secs_f64());
                    }
                    self.gateway.handle_timeout(now)
                }
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
            Net::StreamOpened(t, writer) => {
                self.stream_writers.insert((t.kind, t.remote), (t, writer));
            }
            Net::StreamData(t, bytes) => self.gateway.handle_sip(now, t, &bytes),
            Net::StreamClosed(t) => {
                // Only the connection it was (a newer one may have replaced it).
                if self
                    .stream_writers
                    .get(&(t.kind, t.remote))
                    .is_some_and(|(open, _)| *open == t)
                {
                    self.stream_writers.remove(&(t.kind, t.remote));
                }
                self.gateway.sip_closed(now, t);
            }
            Net::Unreachable(kind, remote) => self.gateway.sip_unreachable(now, kind, remote),
        }
    }

    async fn command(&mut self, cmd: Command<T>) {
        let now = Instant::now();
        match cmd {
            Command::SetTrunks(trunks) => {
                let mut probes = Vec::with_capacity(trunks.len());
                for t in trunks {
                    if let Some(name) = t.server_name {
                        self.tls_names.insert(t.probe.destination, name);
                    }
                    probes.push(t.probe);
                }
                self.gateway.set_trunks(now, &probes);
            }
            Command::Dial(tag, target, reply) => {
                if let Some(name) = &target.server_name {
                    self.tls_names.insert(target.destination, name.clone());
                }
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
                    media_encryption: target.media_encryption,
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
                // The owner keeps a record of an accepted call: whatever
                // stops it here is reported with its tag, or it would stay
                // "up" there for good.
                let local_rtp = match self.bind_media().await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = self.gateway.reject(now, call, 503);
                        self.report_failed(tag, call, 503, e);
                        return;
                    }
                };
                let advertised = self.advertised(local_rtp);
                match self.gateway.accept(now, call, advertised, true) {
                    Ok(()) => {
                        self.tags.insert(call, (tag, local_rtp));
                    }
                    // The caller CANCELled (or the INVITE timed out) while
                    // the owner was deciding: the call is gone already.
                    Err(GatewayError::UnknownCall) => {
                        self.release_media(local_rtp);
                        self.report_failed(tag, call, 487, "cancelled");
                    }
                    Err(_) => {
                        self.release_media(local_rtp);
                        self.report_failed(tag, call, 500, "the call could not be answered");
                    }
                }
            }
            Command::Decide(call, Decision::Bridge(target), tag) => {
                let Some(tag) = tag else {
                    let _ = self.gateway.reject(now, call, 500);
                    return;
                };
                let mut sockets = Vec::with_capacity(2);
                for _ in 0..2 {
                    match self.bind_media().await {
                        Ok(a) => sockets.push(a),
                        Err(e) => {
                            for a in sockets {
                                self.release_media(a);
                            }
                            let _ = self.gateway.reject(now, call, 503);
                            self.report_failed(tag, call, 503, e);
                            return;
                        }
                    }
                }
                let (caller_rtp, target_rtp) = (sockets[0], sockets[1]);
                if let Some(name) = &target.server_name {
                    self.tls_names.insert(target.destination, name.clone());
                }
                let dial = Dial {
                    target: target.target,
                    from: target.from,
                    destination: target.destination,
                    transport: target.transport,
                    credentials: target.credentials,
                    local_rtp: self.advertised(target_rtp),
                    media_encryption: target.media_encryption,
                };
                let advertised = self.advertised(caller_rtp);
                match self.gateway.bridge(now, call, advertised, dial) {
                    Ok(leg) => {
                        self.tags.insert(call, (tag, caller_rtp));
                        match leg {
                            Some(leg) => {
                                self.bridged.insert(leg, target_rtp);
                            }
                            // Refused (488, reported): no target leg.
                            None => self.release_media(target_rtp),
                        }
                    }
                    Err(GatewayError::UnknownCall) => {
                        self.release_media(caller_rtp);
                        self.release_media(target_rtp);
                        self.report_failed(tag, call, 487, "cancelled");
                    }
                    Err(e) => {
                        // The caller got 503 from the core.
                        tracing::debug!(error = %e, "the bridged target could not be dialled");
                        self.release_media(caller_rtp);
                        self.release_media(target_rtp);
                        self.report_failed(tag, call, 503, "the target could not be dialled");
                    }
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
            // Fire and forget: a call that ended meanwhile has nothing to play.
            Command::Play(call, samples) => {
                let _ = self.gateway.play(call, samples);
            }
            Command::StopPlayback(call) => {
                let _ = self.gateway.stop_playback(call);
            }
            Command::StartRecording(call, max) => {
                let _ = self.gateway.start_recording(call, max);
            }
            Command::StopRecording(call) => {
                let _ = self.gateway.stop_recording(call);
            }
            Command::Hold(call, held, reply) => {
                let _ = reply.send(self.gateway.set_hold(call, held));
            }
            Command::DetachRoom(call, reply) => {
                let result = self.gateway.detach_room(call);
                if let Some((_, reader)) = self.rooms.remove(&call) {
                    reader.abort();
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Tells the owner that a call it accepted never came up.
    fn report_failed(&mut self, tag: T, call: CallId, status: u16, reason: &str) {
        let event = CallEvent::Failed {
            call,
            status,
            reason: reason.into(),
        };
        let _ = self.outcomes.send(Outcome::Event { tag, event });
    }

    fn housekeeping(&mut self) {
        shrink_sparse(&mut self.stream_writers);
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
            ("stream_connections", self.stream_writers.len()),
            ("rtp_ports", self.ports.used.len()),
        ] {
            metrics::gauge!("continuum_voice_live", "kind" => kind).set(n as f64);
        }
        let bytes = self.gateway.table_bytes()
            + table_bytes(&self.stream_writers)
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
                    kind => match self.stream_writers.get(&(kind, destination)) {
                        Some((_, w)) if !w.is_closed() => {
                            let _ = w.send(bytes);
                        }
                        _ => self.connect(kind, destination, bytes),
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
                Output::Trunk(check) => {
                    let _ = self.outcomes.send(Outcome::Trunk(check));
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
                        | CallEvent::Transferred { call, .. }
                        | CallEvent::PlaybackFinished { call }
                        | CallEvent::Recorded { call, .. } => *call,
                        CallEvent::Incoming(i) => i.call,
                    };
                    let last = matches!(event, CallEvent::Failed { .. } | CallEvent::Ended { .. });
                    // A bridged target leg: its caller's events say it all.
                    if let Some(rtp) = self.bridged.get(&call).copied() {
                        if last {
                            self.bridged.remove(&call);
                            self.release_media(rtp);
                        }
                        continue;
                    }
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

    /// A message for a TCP/TLS peer we have no connection to: connect, then send.
    fn connect(&mut self, kind: TransportKind, destination: SocketAddr, bytes: Vec<u8>) {
        let tls = match kind {
            TransportKind::Tls => {
                let Some(connector) = self.tls_client.clone() else {
                    tracing::warn!(%destination, "a TLS trunk, but no TLS client settings");
                    self.gateway
                        .sip_unreachable(Instant::now(), kind, destination);
                    return;
                };
                let name = match self.tls_names.get(&destination) {
                    Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).ok(),
                    None => None,
                }
                .unwrap_or_else(|| {
                    rustls::pki_types::ServerName::IpAddress(destination.ip().into())
                });
                Some((connector, name))
            }
            _ => None,
        };
        tokio::spawn(connect_stream(
            kind,
            destination,
            tls,
            bytes,
            self.net_tx.clone(),
        ));
    }
}
