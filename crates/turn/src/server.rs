//! The TURN allocation core (RFC 8656), sans-IO: fed client and peer
//! datagrams and the time, it answers with datagrams to send. Relay sockets
//! are opened through the [`Relays`] trait the IO layer implements.

use crate::auth::{Credentials, KeyLookup, NonceCheck, Nonces};
use crate::ledger::{Ledger, Quotas};
use crate::policy::PeerPolicy;
use crate::stun::{self, Builder, Class, Message, attr, method};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The per-packet tables: foldhash (seeded per process) instead of SipHash,
/// which showed in relay profiles. Keys come from authenticated requests or
/// from our own relay addresses, so flooding them takes credentials and quota.
type FastMap<K, V> = foldhash::HashMap<K, V>;

const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// TCP peer connections one TCP allocation may have or be making: a client
/// cannot turn the relay into a port scanner or exhaust its sockets.
const MAX_TCP_PEERS: usize = 64;

#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    pub credentials: Credentials,
    pub policy: PeerPolicy,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Per tenant (the REST id's part before the first `.`).
    pub max_allocations_per_tenant: usize,
    /// Relayed bytes per second per allocation, both ways (0 = unlimited).
    pub bandwidth_bytes_per_sec: u64,
    pub nonce_key: [u8; 32],
    pub nonce_lifetime: Duration,
    /// SOFTWARE attribute; none by default (it only helps attackers).
    pub software: Option<String>,
    /// Unauthenticated 401 challenges per source IP per second (a hospital
    /// NAT puts many clients behind one address; a 401 is no larger than the
    /// request, so this bounds reflection volume, not amplification).
    pub challenges_per_sec: u32,
}

impl Config {
    pub fn new(realm: impl Into<String>, credentials: Credentials, nonce_key: [u8; 32]) -> Self {
        Config {
            realm: realm.into(),
            credentials,
            policy: PeerPolicy::default(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations: 100_000,
            max_allocations_per_user: 10,
            max_allocations_per_tenant: 10_000,
            bandwidth_bytes_per_sec: 0,
            nonce_key,
            nonce_lifetime: Duration::from_secs(600),
            software: None,
            challenges_per_sec: 100,
        }
    }
}

/// How a client reached us; with its address, the allocation's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    /// A TCP (or TLS) connection, by the IO layer's id.
    Stream(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Relay sockets, opened and closed by the IO layer.
pub trait Relays {
    /// Opens a relay; with `even_port`, on an even port (RTP), and with
    /// `reserve_next` also binds and holds the port above it (RTCP).
    fn open(
        &mut self,
        ipv6: bool,
        even_port: bool,
        reserve_next: bool,
    ) -> std::io::Result<SocketAddr>;
    /// Starts relaying on a port held by an earlier `reserve_next`.
    fn open_reserved(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr>;
    /// Opens a TCP relay (RFC 6062): a listening socket peers connect to,
    /// and the source of the connections the client asks for.
    fn open_tcp(&mut self, _ipv6: bool) -> std::io::Result<SocketAddr> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    /// Closes a relay or releases a held port.
    fn close(&mut self, relay: SocketAddr);
}

/// A reply the core cannot give at once (it waits on a TCP connection):
/// the IO layer hands it back to [`Server::reply`] with the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReply {
    method: u16,
    transaction: [u8; 12],
    key: [u8; 16],
}

/// How long a reserved port (RESERVATION-TOKEN) is held.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// A STUN message or Data indication for the client.
    ToClient { client: Client, data: Vec<u8> },
    /// Bytes `range` of the datagram just handled, from `relay` to `peer`.
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        range: std::ops::Range<usize>,
    },
    /// The datagram just handled, to the client as ChannelData on `channel`
    /// (the IO layer writes the 4-byte header, and pads on streams).
    ChannelToClient { client: Client, channel: u16 },
    /// RFC 6062 Connect: open a TCP connection from `relay` to `peer` and
    /// answer with [`Server::reply`] (a new CONNECTION-ID, or 447); either
    /// way, report its end with [`Server::tcp_peer_closed`].
    ConnectToPeer {
        client: Client,
        relay: SocketAddr,
        peer: SocketAddr,
        username: String,
        reply: PendingReply,
    },
    /// RFC 6062 ConnectionBind: join this client data connection to peer
    /// data connection `id` if it was made for `username`, then relay raw
    /// bytes both ways; answer with [`Server::reply`] (success, or 400).
    BindConnection {
        client: Client,
        id: u32,
        username: String,
        reply: PendingReply,
    },
}

/// Counters for `/metrics` (monotonic, plus the current gauges).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub allocations_created: u64,
    pub allocations_refused: HashMap<&'static str, u64>,
    pub auth_failures: u64,
    pub policy_denials: HashMap<&'static str, u64>,
    pub packets_to_peers: u64,
    pub bytes_to_peers: u64,
    pub packets_to_clients: u64,
    pub bytes_to_clients: u64,
    pub dropped_no_permission: u64,
    pub dropped_over_bandwidth: u64,
    pub malformed: u64,
    /// TCP peer connections (RFC 6062) made for clients or accepted from peers.
    pub tcp_connections: u64,
}

struct Allocation {
    client: Client,
    relay: SocketAddr,
    username: String,
    tenant: String,
    expires: Instant,
    permissions: FastMap<IpAddr, Instant>,
    channels: FastMap<u16, (SocketAddr, Instant)>,
    channel_of: FastMap<SocketAddr, u16>,
    /// Bandwidth cap: (window start, bytes in window).
    window: (Instant, u64),
    /// A TCP allocation (RFC 6062), and the peers it has (or is making) a
    /// connection with: one per peer address.
    tcp: bool,
    tcp_peers: std::collections::HashSet<SocketAddr>,
}

pub struct Server {
    cfg: Config,
    nonces: Nonces,
    /// Quotas, reservations and the challenge limiter, shared by workers.
    ledger: Arc<Ledger>,
    allocations: FastMap<Client, Allocation>,
    by_relay: FastMap<SocketAddr, Client>,
    pub stats: Stats,
}

type Reply = Result<Builder, (u16, &'static str)>;

impl Server {
    /// A server on its own (one worker).
    pub fn new(cfg: Config) -> Self {
        let ledger = Arc::new(Self::ledger_for(&cfg));
        Self::sharing(cfg, ledger)
    }

    /// The ledger the workers of one TURN service share.
    pub fn ledger_for(cfg: &Config) -> Ledger {
        Ledger::new(
            Quotas {
                total: cfg.max_allocations,
                per_user: cfg.max_allocations_per_user,
                per_tenant: cfg.max_allocations_per_tenant,
            },
            cfg.challenges_per_sec,
        )
    }

    /// One worker of a service whose workers share `ledger`.
    pub fn sharing(cfg: Config, ledger: Arc<Ledger>) -> Self {
        Server {
            nonces: Nonces::new(cfg.nonce_key, cfg.nonce_lifetime),
            cfg,
            ledger,
            allocations: FastMap::default(),
            by_relay: FastMap::default(),
            stats: Stats::default(),
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The per-allocation bandwidth cap, bytes/s both ways (0 = none); the IO
    /// layer applies it to TCP relays' data connections.
    pub fn bandwidth_limit(&self) -> u64 {
        self.cfg.bandwidth_bytes_per_sec
    }

    /// Allocations on this worker.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    pub fn permission_count(&self) -> usize {
        self.allocations.values().map(|a| a.permissions.len()).sum()
    }

    pub fn channel_count(&self) -> usize {
        self.allocations.values().map(|a| a.channels.len()).sum()
    }

    /// A datagram (or a whole stream frame) from a client.
    pub fn handle_client(
        &mut self,
        now: Instant,
        unix: u64,
        client: Client,
        data: &[u8],
        relays: &mut dyn Relays,
        out: &mut Vec<Output>,
    ) {
        if let Some((channel, payload)) = stun::parse_channel_data(data) {
            self.channel_from_client(now, client, channel, payload.len(), out);
            return;
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                // A request we can read the header of gets a 400; the rest is dropped.
                if stun::is_stun(data) && data[0] & 0x01 == 0 && data[1] & 0x10 == 0 {
                    let mut tx = [0u8; 12];
                    tx.copy_from_slice(&data[8..20]);
                    let m = u16::from_be_bytes([data[0], data[1]]);
                    let method = (m & 0x000F) | ((m & 0x00E0) >> 1) | ((m & 0x3E00) >> 2);
                    let b = Builder::new(Class::Error, method, tx).error(400, "Bad Request");
                    out.push(Output::ToClient {
                        client,
                        data: self.finish(b, None),
                    });
                }
                return;
            }
        };
        match (msg.class, msg.method) {
            (Class::Indication, method::SEND) => self.send_indication(now, client, &msg, data, out),
            (Class::Request, _) => {
                let unknown = msg.unknown_required();
                let reply = if !unknown.is_empty() {
                    let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
                    Builder::new(Class::Error, msg.method, msg.transaction)
                        .error(420, "Unknown Attribute")
                        .attr(attr::UNKNOWN_ATTRIBUTES, &list)
                } else if msg.method == method::BINDING {
                    Builder::new(Class::Success, method::BINDING, msg.transaction)
                        .xor_address(attr::XOR_MAPPED_ADDRESS, client.addr)
                } else {
                    match self.authenticate(now, unix, client, &msg) {
                        Err(None) => return, // rate-limited challenge: silence
                        Err(Some(challenge)) => challenge,
                        Ok(auth) => {
                            let wrong_user = msg.method != method::ALLOCATE
                                && self
                                    .allocations
                                    .get(&client)
                                    .is_some_and(|a| a.username != auth.username);
                            let reply = match msg.method {
                                _ if wrong_user => Err((441, "Wrong Credentials")),
                                method::ALLOCATE => self.allocate(now, client, &msg, &auth, relays),
                                method::REFRESH => self.refresh(now, client, &msg, relays),
                                method::CREATE_PERMISSION => {
                                    self.create_permission(now, client, &msg)
                                }
                                method::CHANNEL_BIND => self.channel_bind(now, client, &msg),
                                method::CONNECT | method::CONNECTION_BIND => {
                                    let pending = PendingReply {
                                        method: msg.method,
                                        transaction: msg.transaction,
                                        key: auth.key,
                                    };
                                    let deferred = if msg.method == method::CONNECT {
                                        self.connect(now, client, &msg, &auth, pending)
                                    } else {
                                        self.connection_bind(client, &msg, &auth, pending)
                                    };
                                    match deferred {
                                        Ok(o) => {
                                            out.push(o);
                                            return;
                                        }
                                        Err(e) => Err(e),
                                    }
                                }
                                _ => Err((400, "Bad Request")),
                            };
                            let reply = reply.unwrap_or_else(|(code, reason)| {
                                Builder::new(Class::Error, msg.method, msg.transaction)
                                    .error(code, reason)
                            });
                            out.push(Output::ToClient {
                                client,
                                data: self.finish(reply, Some(&auth.key)),
                            });
                            return;
                        }
                    }
                };
                out.push(Output::ToClient {
                    client,
                    data: self.finish(reply, None),
                });
            }
            _ => {} // responses and other indications: nothing to do
        }
    }

    fn finish(&self, mut b: Builder, key: Option<&[u8; 16]>) -> Vec<u8> {
        if let Some(s) = &self.cfg.software {
            b = b.attr(attr::SOFTWARE, s.as_bytes());
        }
        if let Some(k) = key {
            b = b.integrity(k);
        }
        b.fingerprint()
    }

    /// Long-term credential check. `Err(Some(reply))` is a 401/438 challenge;
    /// `Err(None)` means stay silent (challenge rate exceeded).
    fn authenticate(
        &mut self,
        _now: Instant,
        unix: u64,
        client: Client,
        msg: &Message,
    ) -> Result<Auth, Option<Builder>> {
        let challenge = |s: &mut Self, code: u16, reason: &'static str| {
            if !s.ledger.allow_challenge(client.addr.ip(), unix) {
                return None;
            }
            let nonce = s.nonces.mint(client.addr.ip(), unix);
            Some(
                Builder::new(Class::Error, msg.method, msg.transaction)
                    .error(code, reason)
                    .attr(attr::REALM, s.cfg.realm.as_bytes())
                    .attr(attr::NONCE, nonce.as_bytes()),
            )
        };
        let (Some(username), Some(nonce), true) = (
            msg.str_attr(attr::USERNAME),
            msg.str_attr(attr::NONCE),
            msg.has_integrity(),
        ) else {
            return Err(challenge(self, 401, "Unauthorized"));
        };
        if msg.str_attr(attr::REALM) != Some(self.cfg.realm.as_str()) {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        }
        match self.nonces.check(nonce, client.addr.ip(), unix) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(challenge(self, 438, "Stale Nonce")),
            NonceCheck::Invalid => return Err(challenge(self, 401, "Unauthorized")),
        }
        let keys = match self.cfg.credentials.keys(username, &self.cfg.realm, unix) {
            KeyLookup::Keys(k) => k,
            KeyLookup::Expired | KeyLookup::Unknown => {
                self.stats.auth_failures += 1;
                return Err(challenge(self, 401, "Unauthorized"));
            }
        };
        let Some(key) = keys.into_iter().find(|k| msg.verify_integrity(k)) else {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        };
        Ok(Auth {
            username: username.to_owned(),
            key,
        })
    }

    fn allocate(
        &mut self,
        now: Instant,
        client: Client,
        msg: &Message,
        auth: &Auth,
        relays: &mut dyn Relays,
    ) -> Reply {
        let refuse = |s: &mut Self, why: &'static str, code: u16, reason: &'static str| {
            *s.stats.allocations_refused.entry(why).or_default() += 1;
            Err((code, reason))
        };
        if self.allocations.contains_key(&client) {
            return refuse(self, "mismatch", 437, "Allocation Mismatch");
        }
        let tcp = match msg.attr(attr::REQUESTED_TRANSPORT) {
            Some([17, ..]) => false,
            // RFC 6062: TCP relays for clients on TCP or TLS, without the
            // UDP-only attributes.
            Some([6, ..])
                if matches!(client.transport, Transport::Stream(_))
                    && !msg.has(attr::RESERVATION_TOKEN)
                    && !msg.has(attr::EVEN_PORT)
                    && !msg.has(attr::DONT_FRAGMENT) =>
            {
                true
            }
            Some([6, ..]) => return refuse(self, "bad_request", 400, "Bad Request"),
            Some(_) => return refuse(self, "transport", 442, "Unsupported Transport Protocol"),
            None => return refuse(self, "bad_request", 400, "Bad Request"),
        };
        let token = msg.attr(attr::RESERVATION_TOKEN);
        let even = msg.attr(attr::EVEN_PORT);
        if token.is_some() && (even.is_some() || msg.has(attr::REQUESTED_ADDRESS_FAMILY)) {
            return refuse(self, "bad_request", 400, "Bad Request");
        }
        let ipv6 = match msg.attr(attr::REQUESTED_ADDRESS_FAMILY) {
            None | Some([0x01, ..]) => false,
            Some([0x02, ..]) => true,
            Some(_) => return refuse(self, "family", 440, "Address Family not Supported"),
        };
        let tenant = tenant_of(&auth.username);
        if !self.ledger.admit(&auth.username, &tenant) {
            return refuse(self, "quota", 486, "Allocation Quota Reached");
        }
        let reserve_next = even.is_some_and(|v| v.first().is_some_and(|b| b & 0x80 != 0));
        let opened = match token {
            _ if tcp => relays.open_tcp(ipv6),
            Some(t) => match self.ledger.redeem(t, now) {
                Some(addr) => relays.open_reserved(addr),
                None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
            None => relays.open(ipv6, even.is_some(), reserve_next),
        };
        let relay = match opened {
            Ok(r) => r,
            Err(e) => {
                self.ledger.release(&auth.username, &tenant);
                return match e.kind() {
                    std::io::ErrorKind::Unsupported => {
                        refuse(self, "family", 440, "Address Family not Supported")
                    }
                    std::io::ErrorKind::NotFound => {
                        refuse(self, "reservation", 508, "Insufficient Capacity")
                    }
                    _ => refuse(self, "capacity", 508, "Insufficient Capacity"),
                };
            }
        };
        let mut reservation = None;
        if reserve_next {
            let token: [u8; 8] = rand::random();
            let next = SocketAddr::new(relay.ip(), relay.port() + 1);
            self.ledger.hold(token, next, now + RESERVATION_LIFETIME);
            reservation = Some(token);
        }
        let lifetime = self.lifetime(msg);
        self.allocations.insert(
            client,
            Allocation {
                client,
                relay,
                username: auth.username.clone(),
                tenant: tenant.clone(),
                expires: now + lifetime,
                permissions: FastMap::default(),
                channels: FastMap::default(),
                channel_of: FastMap::default(),
                window: (now, 0),
                tcp,
                tcp_peers: Default::default(),
            },
        );
        self.by_relay.insert(relay, client);
        self.stats.allocations_created += 1;
        let mut b = Builder::new(Class::Success, method::ALLOCATE, msg.transaction)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relay)
            .u32_attr(attr::LIFETIME, lifetime.as_secs() as u32)
            .xor_address(attr::XOR_MAPPED_ADDRESS, client.addr);
        if let Some(t) = reservation {
            b = b.attr(attr::RESERVATION_TOKEN, &t);
        }
        Ok(b)
    }

    fn lifetime(&self, msg: &Message) -> Duration {
        msg.u32_attr(attr::LIFETIME)
            .map_or(self.cfg.default_lifetime, |s| Duration::from_secs(s as u64))
            .max(self.cfg.default_lifetime.min(Duration::from_secs(600)))
            .min(self.cfg.max_lifetime)
    }

    fn refresh(
        &mut self,
        now: Instant,
        client: Client,
        msg: &Message,
        relays: &mut dyn Relays,
    ) -> Reply {
        let requested = msg.u32_attr(attr::LIFETIME);
        let lifetime = self.lifetime(msg);
        let Some(a) = self.allocations.get_mut(&client) else {
            return Err((437, "Allocation Mismatch"));
        };
        if let Some(fam) = msg.attr(attr::REQUESTED_ADDRESS_FAMILY)
            && (fam.first() == Some(&0x02)) != a.relay.is_ipv6()
        {
            return Err((443, "Peer Address Family Mismatch"));
        }
        let granted = if requested == Some(0) {
            self.remove(client, relays);
            0
        } else {
            a.expires = now + lifetime;
            lifetime.as_secs() as u32
        };
        Ok(
            Builder::new(Class::Success, method::REFRESH, msg.transaction)
                .u32_attr(attr::LIFETIME, granted),
        )
    }

    /// Peers named by a request: each must be allowed and of the relay's family.
    /// (`exact`: judged as a transport address, not only by IP: ChannelBind
    /// fixes the peer's port, CreatePermission does not.)
    fn peers(
        &mut self,
        msg: &Message,
        relay_v6: bool,
        exact: bool,
    ) -> Result<Vec<SocketAddr>, (u16, &'static str)> {
        let mut peers = Vec::new();
        for v in msg.attrs(attr::XOR_PEER_ADDRESS) {
            let peer = msg.xor_address(v).map_err(|_| (400, "Bad Request"))?;
            if peer.is_ipv6() != relay_v6 {
                return Err((443, "Peer Address Family Mismatch"));
            }
            let verdict = if exact {
                self.cfg.policy.check_addr(peer)
            } else {
                self.cfg.policy.check(peer.ip())
            };
            if let Err(d) = verdict {
                *self.stats.policy_denials.entry(d.label()).or_default() += 1;
                return Err((403, "Forbidden"));
            }
            peers.push(peer);
        }
        if peers.is_empty() {
            return Err((400, "Bad Request"));
        }
        Ok(peers)
    }

    fn create_permission(&mut self, now: Instant, client: Client, msg: &Message) -> Reply {
        let Some(relay_v6) = self.allocations.get(&client).map(|a| a.relay.is_ipv6()) else {
            return Err((437, "Allocation Mismatch"));
        };
        let peers = self.peers(msg, relay_v6, false)?;
        let a = self.allocations.get_mut(&client).expect("checked");
        for p in peers {
            a.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        Ok(Builder::new(
            Class::Success,
            method::CREATE_PERMISSION,
            msg.transaction,
        ))
    }

    fn channel_bind(&mut self, now: Instant, client: Client, msg: &Message) -> Reply {
        // Channels are for UDP relays.
        let relay_v6 = self.relay_is_v6(client, false)?;
        let Some(channel) = msg
            .attr(attr::CHANNEL_NUMBER)
            .filter(|v| v.len() == 4)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .filter(|c| stun::CHANNELS.contains(c))
        else {
            return Err((400, "Bad Request"));
        };
        let peers = self.peers(msg, relay_v6, true)?;
        let [peer] = peers[..] else {
            return Err((400, "Bad Request"));
        };
        let a = self.allocations.get_mut(&client).expect("checked");
        // A channel stays bound to one peer, and a peer to one channel
        // (RFC 8656 §12.2); the reasons say which, as coturn's do, since a
        // client picking random channel numbers meets this by chance.
        if a.channels.get(&channel).is_some_and(|(p, _)| *p != peer) {
            return Err((400, "Channel number bound to another peer"));
        }
        if a.channel_of.get(&peer).is_some_and(|c| *c != channel) {
            return Err((400, "Peer bound to another channel number"));
        }
        a.channels.insert(channel, (peer, now + CHANNEL_LIFETIME));
        a.channel_of.insert(peer, channel);
        extend_permission(a, peer.ip(), now);
        Ok(Builder::new(
            Class::Success,
            method::CHANNEL_BIND,
            msg.transaction,
        ))
    }

    fn within_bandwidth(cfg: &Config, a: &mut Allocation, now: Instant, bytes: usize) -> bool {
        if cfg.bandwidth_bytes_per_sec == 0 {
            return true;
        }
        if now.saturating_duration_since(a.window.0) >= Duration::from_secs(1) {
            a.window = (now, 0);
        }
        a.window.1 += bytes as u64;
        a.window.1 <= cfg.bandwidth_bytes_per_sec
    }

    fn send_indication(
        &mut self,
        now: Instant,
        client: Client,
        msg: &Message,
        data: &[u8],
        out: &mut Vec<Output>,
    ) {
        let (Some(peer_attr), Some(payload)) =
            (msg.attr(attr::XOR_PEER_ADDRESS), msg.attr(attr::DATA))
        else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(peer) = msg.xor_address(peer_attr) else {
            self.stats.malformed += 1;
            return;
        };
        if let Err(d) = self.cfg.policy.check_addr(peer) {
            *self.stats.policy_denials.entry(d.label()).or_default() += 1;
            return;
        }
        let Some(a) = self.allocations.get_mut(&client).filter(|a| !a.tcp) else {
            return;
        };
        if !admit(&mut self.stats, &self.cfg, a, peer.ip(), now, payload.len()) {
            return;
        }
        let start = payload.as_ptr() as usize - data.as_ptr() as usize;
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += payload.len() as u64;
        out.push(Output::ToPeer {
            relay: a.relay,
            peer,
            range: start..start + payload.len(),
        });
    }

    fn channel_from_client(
        &mut self,
        now: Instant,
        client: Client,
        channel: u16,
        len: usize,
        out: &mut Vec<Output>,
    ) {
        let Some(a) = self.allocations.get_mut(&client) else {
            return;
        };
        let Some((peer, until)) = a.channels.get(&channel).copied() else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        if until <= now {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if !admit(&mut self.stats, &self.cfg, a, peer.ip(), now, len) {
            return;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += len as u64;
        out.push(Output::ToPeer {
            relay: a.relay,
            peer,
            range: 4..4 + len,
        });
    }

    /// A datagram a peer sent to one of our relays.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<Output>,
    ) {
        if let Err(d) = self.cfg.policy.check_addr(peer) {
            *self.stats.policy_denials.entry(d.label()).or_default() += 1;
            return;
        }
        let Some(client) = self.by_relay.get(&relay).copied() else {
            return;
        };
        let Some(a) = self.allocations.get_mut(&client) else {
            return;
        };
        if !admit(&mut self.stats, &self.cfg, a, peer.ip(), now, data.len()) {
            return;
        }
        self.stats.packets_to_clients += 1;
        self.stats.bytes_to_clients += data.len() as u64;
        match a.channel_of.get(&peer).copied() {
            Some(channel) if a.channels.get(&channel).is_some_and(|(_, t)| *t > now) => {
                out.push(Output::ChannelToClient { client, channel });
            }
            _ => {
                let tx: [u8; 12] = rand::random();
                let b = Builder::new(Class::Indication, method::DATA, tx)
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, data);
                out.push(Output::ToClient {
                    client,
                    data: b.finish(),
                });
            }
        }
    }

    /// Whether `client`'s relay is IPv6; 437 without an allocation, 400 when
    /// it is not of the transport the request is for (TCP or UDP).
    fn relay_is_v6(&self, client: Client, tcp: bool) -> Result<bool, (u16, &'static str)> {
        match self.allocations.get(&client) {
            None => Err((437, "Allocation Mismatch")),
            Some(a) if a.tcp != tcp => Err((400, "Bad Request")),
            Some(a) => Ok(a.relay.is_ipv6()),
        }
    }

    /// RFC 6062 Connect (on the control connection of a TCP allocation).
    fn connect(
        &mut self,
        now: Instant,
        client: Client,
        msg: &Message,
        auth: &Auth,
        reply: PendingReply,
    ) -> Result<Output, (u16, &'static str)> {
        let relay_v6 = self.relay_is_v6(client, true)?;
        let peers = self.peers(msg, relay_v6, true)?;
        let [peer] = peers[..] else {
            return Err((400, "Bad Request"));
        };
        let a = self.allocations.get_mut(&client).expect("checked");
        if a.tcp_peers.contains(&peer) {
            return Err((446, "Connection Already Exists"));
        }
        if a.tcp_peers.len() >= MAX_TCP_PEERS {
            return Err((508, "Insufficient Capacity"));
        }
        a.tcp_peers.insert(peer);
        // Asking for a connection lets that peer's data back in.
        extend_permission(a, peer.ip(), now);
        Ok(Output::ConnectToPeer {
            client,
            relay: a.relay,
            peer,
            username: auth.username.clone(),
            reply,
        })
    }

    /// RFC 6062 ConnectionBind (on a new connection of the client's).
    fn connection_bind(
        &mut self,
        client: Client,
        msg: &Message,
        auth: &Auth,
        reply: PendingReply,
    ) -> Result<Output, (u16, &'static str)> {
        // A data connection is a fresh TCP/TLS connection, not a control one.
        if client.transport == Transport::Udp || self.allocations.contains_key(&client) {
            return Err((400, "Bad Request"));
        }
        let Some(id) = msg.u32_attr(attr::CONNECTION_ID) else {
            return Err((400, "Bad Request"));
        };
        Ok(Output::BindConnection {
            client,
            id,
            username: auth.username.clone(),
            reply,
        })
    }

    /// The answer to a deferred request: success (with a CONNECTION-ID for
    /// Connect) or an error.
    pub fn reply(&self, r: &PendingReply, outcome: Result<Option<u32>, (u16, &str)>) -> Vec<u8> {
        let b = match outcome {
            Ok(id) => {
                let b = Builder::new(Class::Success, r.method, r.transaction);
                match id {
                    Some(id) => b.u32_attr(attr::CONNECTION_ID, id),
                    None => b,
                }
            }
            Err((code, reason)) => {
                Builder::new(Class::Error, r.method, r.transaction).error(code, reason)
            }
        };
        self.finish(b, Some(&r.key))
    }

    /// A Connect made its connection (for the metrics).
    pub fn tcp_peer_connected(&mut self) {
        self.stats.tcp_connections += 1;
    }

    /// A peer connected to TCP relay `relay`. With a permission for it (and
    /// the policy's leave), the client is told by a ConnectionAttempt for
    /// CONNECTION-ID `id` and this returns the allocation's username (the
    /// ConnectionBind must come with it); otherwise the IO layer closes it.
    pub fn tcp_peer_arrived(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        id: u32,
        out: &mut Vec<Output>,
    ) -> Option<String> {
        if let Err(d) = self.cfg.policy.check_addr(peer) {
            *self.stats.policy_denials.entry(d.label()).or_default() += 1;
            return None;
        }
        let client = self.by_relay.get(&relay).copied()?;
        let a = self.allocations.get_mut(&client).filter(|a| a.tcp)?;
        if !permitted(a, peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        if a.tcp_peers.len() >= MAX_TCP_PEERS || !a.tcp_peers.insert(peer) {
            return None; // one connection per peer address, and not too many
        }
        self.stats.tcp_connections += 1;
        let tx: [u8; 12] = rand::random();
        let b = Builder::new(Class::Indication, method::CONNECTION_ATTEMPT, tx)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .u32_attr(attr::CONNECTION_ID, id);
        out.push(Output::ToClient {
            client,
            data: b.finish(),
        });
        Some(a.username.clone())
    }

    /// A peer connection of TCP relay `relay` ended (or never started): a
    /// new one with that peer may be made.
    pub fn tcp_peer_closed(&mut self, relay: SocketAddr, peer: SocketAddr) {
        if let Some(a) = self
            .by_relay
            .get(&relay)
            .and_then(|c| self.allocations.get_mut(c))
        {
            a.tcp_peers.remove(&peer);
        }
    }

    /// Ends expired allocations, permissions and channels; returns when to call again.
    pub fn expire(&mut self, now: Instant, relays: &mut dyn Relays) -> Instant {
        let gone: Vec<Client> = self
            .allocations
            .values()
            .filter(|a| a.expires <= now)
            .map(|a| a.client)
            .collect();
        for c in gone {
            self.remove(c, relays);
        }
        for addr in self.ledger.expired_reservations(now) {
            relays.close(addr);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            a.channels.retain(|_, (_, t)| *t > now);
            let channels = &a.channels;
            a.channel_of.retain(|_, c| channels.contains_key(c));
        }
        now + Duration::from_secs(1)
    }

    /// The client's connection closed (TCP/TLS): its allocation ends.
    pub fn client_gone(&mut self, client: Client, relays: &mut dyn Relays) {
        self.remove(client, relays);
    }

    fn remove(&mut self, client: Client, relays: &mut dyn Relays) {
        let Some(a) = self.allocations.remove(&client) else {
            return;
        };
        self.by_relay.remove(&a.relay);
        relays.close(a.relay);
        self.ledger.release(&a.username, &a.tenant);
    }
}

/// A permission for `ip` that lasts at least [`PERMISSION_LIFETIME`] from now.
fn extend_permission(a: &mut Allocation, ip: IpAddr, now: Instant) {
    let until = now + PERMISSION_LIFETIME;
    let p = a.permissions.entry(ip).or_insert(until);
    *p = (*p).max(until);
}

fn permitted(a: &Allocation, ip: IpAddr, now: Instant) -> bool {
    a.permissions.get(&ip).is_some_and(|t| *t > now)
}

/// The gate every relayed datagram passes, both ways: a live permission for
/// the peer and room under the allocation's bandwidth cap (drops counted).
fn admit(
    stats: &mut Stats,
    cfg: &Config,
    a: &mut Allocation,
    peer: IpAddr,
    now: Instant,
    len: usize,
) -> bool {
    if !permitted(a, peer, now) {
        stats.dropped_no_permission += 1;
        return false;
    }
    if !Server::within_bandwidth(cfg, a, now, len) {
        stats.dropped_over_bandwidth += 1;
        return false;
    }
    true
}

struct Auth {
    username: String,
    key: [u8; 16],
}

/// `<expiry>:<tenant>.<participant>` → tenant; static users count as `-`.
fn tenant_of(username: &str) -> String {
    // (REST ids are `tenant.participant`.)
    match username.split_once(':') {
        Some((_, id)) => id.split('.').next().unwrap_or("-").to_owned(),
        None => "-".to_owned(),
    }
}
