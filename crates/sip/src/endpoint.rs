//! The sans-IO user agent: transactions, dialogs, digest and session timers
//! tied together for a B2BUA's legs. Fed datagrams/stream bytes and time,
//! it answers with [`Output`]s; the glue decides about calls through
//! commands ([`Endpoint::answer`], [`Endpoint::invite`] ...).
//!
//! Every command takes `now`: a command may start a transaction, and its
//! timers must run from the real time, not from the last input.
//!
//! Requests inside a dialog go back over the flow the dialog was made on
//! (the source address of the INVITE, or the address we sent ours to), not
//! to a resolved Contact/Route: there is no DNS here, and trunks and NATed
//! phones both expect symmetric signalling. Route headers are still sent.

use crate::auth::{AuthError, DigestClient, DigestCredentials, DigestServer, Secret, Verified};
use crate::dialog::{Dialog, DialogError, parse_dtmf_info, refer_target};
use crate::message::{
    self, Builder, Headers, MAX_MESSAGE_SIZE, Message, Method, ParseError, Request, Response,
    StreamFramer, reason_phrase, response_to,
};
use crate::sdp::Sdp;
use crate::transaction::{
    ClientTimeout, ClientTransaction, ClientVerdict, ServerState, ServerTimeout, ServerTransaction,
    Timers, TxKey,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use thiserror::Error;

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY";
const SUPPORTED: &str = "timer";
/// Extensions we implement, for Require checks (RFC 3261 8.2.2.3).
const EXTENSIONS: &[&str] = &["timer"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Udp,
    Tcp,
    Tls,
}

impl TransportKind {
    pub fn reliable(self) -> bool {
        self != TransportKind::Udp
    }

    fn via_name(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }
}

/// A flow: how bytes came in, or go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transport {
    pub kind: TransportKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Our advertised address per transport (Via, Contact, SDP is the
    /// glue's). Bind addresses are the IO layer's business.
    pub addresses: Vec<(TransportKind, SocketAddr)>,
    pub user_agent: String,
    /// Used in Call-IDs and From of OPTIONS.
    pub domain: String,
    /// Realm for [`Endpoint::challenge`]; none disables challenges.
    pub realm: Option<String>,
    pub nonce_key: [u8; 32],
    pub nonce_lifetime: Duration,
    pub timers: Timers,
    pub max_message_size: usize,
    /// Session-Expires we offer on our INVITEs (RFC 4028); none: we only
    /// honour the peer's.
    pub session_expires: Option<u32>,
    /// Smallest session interval we accept (RFC 4028 Min-SE, >= 90).
    pub min_se: u32,
    /// Seed for tags, branches and glare back-off; none: from the OS.
    pub rng_seed: Option<u64>,
}

impl Config {
    pub fn new(domain: impl Into<String>, addresses: Vec<(TransportKind, SocketAddr)>) -> Self {
        Config {
            addresses,
            user_agent: "Continuum".into(),
            domain: domain.into(),
            realm: None,
            nonce_key: [0; 32],
            nonce_lifetime: Duration::from_secs(300),
            timers: Timers::default(),
            max_message_size: MAX_MESSAGE_SIZE,
            session_expires: Some(1800),
            min_se: 90,
            rng_seed: None,
        }
    }
}

/// An opaque handle for one call leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// A BYE (theirs or ours).
    Bye,
    /// The caller cancelled before the answer.
    Cancelled,
    /// Our 2xx was never ACKed (RFC 3261 13.3.1.4).
    NoAck,
    /// No session refresh came in time (RFC 4028).
    SessionExpired,
    /// An in-dialog request timed out or the peer forgot the dialog (408/481).
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipEvent {
    IncomingCall {
        call: CallId,
        /// From URI, and its user (caller number on a trunk).
        from: String,
        from_user: Option<String>,
        /// Request-URI and its user: the called number.
        to: String,
        called: Option<String>,
        source: SocketAddr,
        transport: TransportKind,
        offer: Option<Sdp>,
        /// Every header, for the glue (P-Asserted-Identity, Diversion ...).
        headers: Vec<(String, String)>,
        /// The Authorization or Proxy-Authorization value, for
        /// [`Endpoint::verify`].
        authorization: Option<String>,
    },
    Ringing {
        call: CallId,
    },
    /// 18x with SDP.
    EarlyMedia {
        call: CallId,
        sdp: Sdp,
    },
    Answered {
        call: CallId,
        answer: Option<Sdp>,
    },
    /// UAS: our 2xx was ACKed.
    Confirmed {
        call: CallId,
    },
    /// Our INVITE failed (or was cancelled: 487).
    CallFailed {
        call: CallId,
        status: u16,
        reason: String,
    },
    Ended {
        call: CallId,
        by_remote: bool,
        cause: EndCause,
    },
    /// A re-INVITE with a new offer: answer with [`Endpoint::answer`] or
    /// refuse with [`Endpoint::reject`] (the call stays up).
    Reinvite {
        call: CallId,
        offer: Option<Sdp>,
        hold: bool,
    },
    /// Our re-INVITE was answered.
    ReinviteDone {
        call: CallId,
        answer: Option<Sdp>,
    },
    ReinviteFailed {
        call: CallId,
        status: u16,
    },
    Refer {
        call: CallId,
        target: String,
    },
    /// The final response to our REFER.
    ReferResult {
        call: CallId,
        status: u16,
    },
    /// A NOTIFY sipfrag about our REFER.
    ReferProgress {
        call: CallId,
        status: u16,
    },
    Dtmf {
        call: CallId,
        digit: char,
        duration_ms: u32,
    },
    /// The outcome of [`Endpoint::options`]: any final response proves the
    /// peer alive (`status`); a timeout or a transport error does not.
    OptionsResult {
        peer: SocketAddr,
        transport: TransportKind,
        alive: bool,
        status: Option<u16>,
    },
    /// A TCP/TLS stream could not be framed: close it.
    StreamError {
        transport: Transport,
    },
}

/// Outputs are drained right after each input, so the queue stays short
/// and the size of the event variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit {
        transport: Transport,
        destination: SocketAddr,
        bytes: Vec<u8>,
    },
    Event(SipEvent),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SipError {
    #[error("unknown call")]
    UnknownCall,
    #[error("not possible in this call state: {0}")]
    State(&'static str),
    #[error("invalid URI")]
    InvalidUri,
    #[error("no local address for this transport")]
    NoLocalAddress,
    #[error("no digest realm configured")]
    NoRealm,
    #[error("invalid status for this command")]
    Status,
}

/// A new outgoing call. `Debug` leaves the SDP out (SDES keys travel in it).
#[derive(Clone)]
pub struct InviteRequest {
    /// Request-URI and To, e.g. `sip:+15550100@trunk.example.com`.
    pub target: String,
    /// From URI, e.g. `sip:+15550199@our.example.com`.
    pub from: String,
    pub from_display: Option<String>,
    pub sdp: Option<String>,
    pub credentials: Option<DigestCredentials>,
    /// Where to send it (outbound proxy or the trunk): no DNS here.
    pub destination: SocketAddr,
    pub transport: TransportKind,
    /// Route headers to put in (e.g. `<sip:proxy.example;lr>`).
    pub route: Vec<String>,
    pub extra_headers: Vec<(String, String)>,
}

impl std::fmt::Debug for InviteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteRequest")
            .field("target", &self.target)
            .field("from", &self.from)
            .field("from_display", &self.from_display)
            .field(
                "sdp",
                &self.sdp.as_ref().map(|s| format!("<{} bytes>", s.len())),
            )
            .field("credentials", &self.credentials)
            .field("destination", &self.destination)
            .field("transport", &self.transport)
            .field("route", &self.route)
            .field("extra_headers", &self.extra_headers)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// UAS: INVITE in, no final response yet.
    Incoming,
    /// UAC: INVITE out, no final response yet.
    Calling,
    /// UAS: 2xx sent, ACK not yet in.
    Answered,
    Confirmed,
    /// BYE sent.
    Terminating,
}

/// What a client INVITE (initial or re-) needs for its ACK and CANCEL.
#[derive(Debug, Clone)]
struct InviteMeta {
    uri: String,
    via: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    routes: Vec<String>,
}

#[derive(Debug, Clone)]
struct SessionTimer {
    interval: u32,
    we_refresh: bool,
    /// Refresh due (we refresh) or expiry (they do).
    at: Instant,
}

#[derive(Debug)]
struct Call {
    state: State,
    uac: bool,
    transport: Transport,
    local_tag: String,
    dialog: Option<Dialog>,
    /// UAS: the INVITE being answered and its transaction.
    invite: Option<Request>,
    invite_tx: Option<TxKey>,
    /// UAC: the initial INVITE's client transaction and how to redo it.
    uac_tx: Option<TxKey>,
    uac_meta: Option<InviteMeta>,
    uac_request: Option<InviteRequest>,
    auth_tried: bool,
    digest: DigestClient,
    provisional_seen: bool,
    cancel_requested: bool,
    cancel_deadline: Option<Instant>,
    local_sdp: Option<String>,
    remote_sdp: Option<Sdp>,
    /// Incoming re-INVITE waiting for the glue.
    reinvite_in: Option<(Request, TxKey)>,
    /// Our re-INVITE in flight: its transaction and whether it is a refresh.
    reinvite_out: Option<(TxKey, bool)>,
    glare_retry: Option<(Instant, String)>,
    /// UAS: the server transaction whose 2xx awaits its ACK.
    ack_wait: Option<TxKey>,
    /// Hang up as soon as the ACK is in (RFC 3261 15).
    bye_after_ack: bool,
    /// Session timer negotiated in the INVITE, applied on answer.
    offered_se: Option<(u32, Option<bool>, bool)>,
    session: Option<SessionTimer>,
    /// UAS: this INVITE's key in `Endpoint::merged` until answered or gone.
    merged_key: Option<(String, String, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Invite(CallId),
    Reinvite(CallId),
    Cancel,
    Bye(CallId),
    Refer(CallId),
    InDialog(CallId),
    Options(SocketAddr, TransportKind),
    /// BYE of a call already reported over.
    Orphan,
}

struct ClientEntry {
    tx: ClientTransaction,
    transport: Transport,
    owner: Owner,
    meta: Option<InviteMeta>,
    /// The ACK for this INVITE's 2xx, re-sent on each retransmitted 2xx;
    /// and the To tag it answered (a 2xx from another fork gets a BYE).
    ack_2xx: Option<(Vec<u8>, String)>,
}

struct ServerEntry {
    tx: ServerTransaction,
    transport: Transport,
    call: Option<CallId>,
}

/// How many entries each of an [`Endpoint`]'s tables holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveState {
    pub calls: usize,
    /// (Call-ID, local tag) to call.
    pub dialogs: usize,
    /// INVITEs being answered, for merged-request detection.
    pub merged: usize,
    pub client_transactions: usize,
    pub server_transactions: usize,
    /// Stream (TCP/TLS) framing state, one per connection.
    pub framers: usize,
    /// Outputs not yet polled.
    pub outputs: usize,
}

impl LiveState {
    /// Whether nothing at all is held.
    pub fn is_empty(&self) -> bool {
        *self == LiveState::default()
    }

    /// (kind, count) pairs, for gauges.
    pub fn kinds(&self) -> [(&'static str, usize); 7] {
        [
            ("calls", self.calls),
            ("dialogs", self.dialogs),
            ("merged", self.merged),
            ("client_transactions", self.client_transactions),
            ("server_transactions", self.server_transactions),
            ("framers", self.framers),
            ("outputs", self.outputs),
        ]
    }
}

pub struct Endpoint {
    config: Config,
    rng: StdRng,
    epoch: Option<Instant>,
    next_call: u64,
    /// Boxed: a `Call` is about a kilobyte, and a table keeps its buckets.
    calls: HashMap<CallId, Box<Call>>,
    /// (Call-ID, local tag) to call.
    dialogs: HashMap<(String, String), CallId>,
    /// (Call-ID, From tag, CSeq) of INVITEs being answered: merged requests.
    merged: HashMap<(String, String, u32), CallId>,
    clients: HashMap<TxKey, ClientEntry>,
    servers: HashMap<TxKey, ServerEntry>,
    framers: HashMap<(SocketAddr, SocketAddr), StreamFramer>,
    outputs: VecDeque<Output>,
}

impl Endpoint {
    pub fn new(config: Config) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Endpoint {
            config,
            rng,
            epoch: None,
            next_call: 1,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            merged: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            framers: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Calls alive (for metrics and tests).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Transactions alive (for metrics and tests).
    pub fn transaction_count(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    /// The size of every internal table: all zero once the calls are over
    /// and the transaction timers have run (for leak tests and gauges).
    pub fn live_state(&self) -> LiveState {
        LiveState {
            calls: self.calls.len(),
            dialogs: self.dialogs.len(),
            merged: self.merged.len(),
            client_transactions: self.clients.len(),
            server_transactions: self.servers.len(),
            framers: self.framers.len(),
            outputs: self.outputs.len(),
        }
    }

    /// Bytes the tables hold for their buckets (entries' own heap not
    /// counted): what a burst leaves behind if the tables are not shrunk.
    pub fn table_bytes(&self) -> usize {
        table_bytes(&self.calls)
            + table_bytes(&self.dialogs)
            + table_bytes(&self.merged)
            + table_bytes(&self.clients)
            + table_bytes(&self.servers)
            + table_bytes(&self.framers)
            + self.outputs.capacity() * std::mem::size_of::<Output>()
    }

    /// Gives back the memory of tables a burst left mostly empty.
    fn shrink(&mut self) {
        shrink_sparse(&mut self.calls);
        shrink_sparse(&mut self.dialogs);
        shrink_sparse(&mut self.merged);
        shrink_sparse(&mut self.clients);
        shrink_sparse(&mut self.servers);
        shrink_sparse(&mut self.framers);
        if self.outputs.capacity() > SPARSE_KEEP && self.outputs.len() * 8 < self.outputs.capacity()
        {
            self.outputs
                .shrink_to((self.outputs.len() * 2).max(SPARSE_KEEP / 2));
        }
    }

    /// The earliest timer. A scan: fine for the hundreds of calls a node
    /// runs; a timer wheel would be the next step past that.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let clients = self.clients.values().filter_map(|e| e.tx.next_timeout());
        let servers = self.servers.values().filter_map(|e| e.tx.next_timeout());
        let calls = self.calls.values().flat_map(|c| {
            [
                c.session.as_ref().map(|s| s.at),
                c.glare_retry.as_ref().map(|g| g.0),
                c.cancel_deadline,
            ]
            .into_iter()
            .flatten()
        });
        clients.chain(servers).chain(calls).min()
    }

    fn epoch(&mut self, now: Instant) -> Instant {
        *self.epoch.get_or_insert(now)
    }

    fn digest_server(&mut self, now: Instant) -> Option<DigestServer> {
        let epoch = self.epoch(now);
        let realm = self.config.realm.clone()?;
        Some(DigestServer::new(
            realm,
            self.config.nonce_key,
            self.config.nonce_lifetime,
            epoch,
        ))
    }

    // ---------------------------------------------------------------- input

    /// Bytes from the network: one datagram (UDP) or a stream chunk.
    pub fn handle_input(&mut self, now: Instant, transport: Transport, bytes: &[u8]) {
        self.epoch(now);
        if transport.kind == TransportKind::Udp {
            self.handle_message(now, transport, bytes);
            return;
        }
        let limit = self.config.max_message_size;
        let key = (transport.local, transport.remote);
        let mut frames = Vec::new();
        let mut failed = false;
        let mut pongs = 0;
        {
            let framer = self
                .framers
                .entry(key)
                .or_insert_with(|| StreamFramer::new(limit));
            framer.push(bytes);
            loop {
                match framer.next_frame() {
                    Some(Ok(frame)) => frames.push(frame),
                    Some(Err(_)) => {
                        failed = true;
                        break;
                    }
                    None => break,
                }
            }
            pongs += framer.take_pings();
        }
        for _ in 0..pongs {
            self.send(transport, b"\r\n".to_vec());
        }
        for frame in frames {
            self.handle_message(now, transport, &frame);
        }
        if failed {
            self.framers.remove(&key);
            self.emit(SipEvent::StreamError { transport });
        }
    }

    /// The IO layer closed a stream: forget its framing state.
    pub fn connection_closed(&mut self, transport: Transport) {
        self.framers.remove(&(transport.local, transport.remote));
    }

    /// The IO layer could not reach `remote` over `kind` (a refused or
    /// failed connection): the client transactions waiting on that flow end
    /// now, as if answered 503 (RFC 3261 8.1.3.1), instead of at timer B/F.
    pub fn transport_failed(&mut self, now: Instant, kind: TransportKind, remote: SocketAddr) {
        self.epoch(now);
        let failed: Vec<TxKey> = self
            .clients
            .iter()
            .filter(|(_, e)| e.transport.kind == kind && e.transport.remote == remote)
            .map(|(k, _)| k.clone())
            .collect();
        for key in failed {
            if let Some(entry) = self.clients.remove(&key) {
                self.client_failed(now, entry.owner, &key, 503);
            }
        }
    }

    fn handle_message(&mut self, now: Instant, transport: Transport, bytes: &[u8]) {
        if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
            return; // keepalive
        }
        match message::parse(bytes, self.config.max_message_size) {
            Ok(Message::Request(req)) => self.on_request(now, transport, req),
            Ok(Message::Response(res)) => self.on_response(now, res),
            Err(err) => self.on_parse_error(transport, bytes, &err),
        }
    }

    fn on_parse_error(&mut self, transport: Transport, bytes: &[u8], err: &ParseError) {
        if let Some(resp) = message::error_response(bytes, err) {
            self.send(transport, resp);
        }
    }

    fn send(&mut self, transport: Transport, bytes: Vec<u8>) {
        self.outputs.push_back(Output::Transmit {
            transport,
            destination: transport.remote,
            bytes,
        });
    }

    fn emit(&mut self, event: SipEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    fn random_hex(&mut self, bytes: usize) -> String {
        let v: Vec<u8> = (0..bytes).map(|_| self.rng.r#gen()).collect();
        hex::encode(v)
    }

    fn new_call_id(&mut self) -> CallId {
        let id = CallId(self.next_call);
        self.next_call += 1;
        id
    }

    // ------------------------------------------------------------ requests

    fn on_request(&mut self, now: Instant, transport: Transport, req: Request) {
        let key = TxKey::server(&req.core.via.branch, &req.core.via.sent_by, &req.method);
        if req.method == Method::Ack {
            self.on_ack(now, &key, req);
            return;
        }
        if let Some(entry) = self.servers.get(&key) {
            if let Some(bytes) = entry.tx.on_retransmit() {
                let t = entry.transport;
                self.send(t, bytes);
            }
            return;
        }
        let reliable = transport.kind.reliable();
        self.servers.insert(
            key.clone(),
            ServerEntry {
                tx: ServerTransaction::new(&req.method, reliable, self.config.timers),
                transport,
                call: None,
            },
        );
        if req.max_forwards == Some(0) {
            self.reply(now, &key, &req, 483);
            return;
        }
        let supported = matches!(
            req.method,
            Method::Invite
                | Method::Cancel
                | Method::Bye
                | Method::Options
                | Method::Info
                | Method::Refer
                | Method::Notify
        );
        if !supported {
            let status = if matches!(req.method, Method::Other(_)) {
                501
            } else {
                405
            };
            let b = self.response(&req, status, None).header("Allow", ALLOW);
            self.respond(now, &key, status, b);
            return;
        }
        if req.method != Method::Cancel {
            let unsupported: Vec<String> = req
                .header_values("Require")
                .into_iter()
                .filter(|ext| !EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
                .collect();
            if !unsupported.is_empty() {
                let b = self
                    .response(&req, 420, None)
                    .header("Unsupported", unsupported.join(", "));
                self.respond(now, &key, 420, b);
                return;
            }
        }
        match req.method {
            Method::Cancel => self.on_cancel(now, &key, req),
            Method::Options if req.core.to.tag.is_none() => self.reply_options(now, &key, &req),
            Method::Invite if req.core.to.tag.is_none() => {
                self.on_invite(now, transport, &key, req)
            }
            _ if req.core.to.tag.is_none() => self.reply(now, &key, &req, 481),
            _ => self.on_in_dialog(now, &key, req),
        }
    }

    /// A response builder with a random To tag when the request had none.
    fn response(&mut self, req: &Request, status: u16, tag: Option<&str>) -> Builder {
        let tag = match tag {
            Some(t) => t.to_string(),
            None => self.random_hex(6),
        };
        response_to(req, status, reason_phrase(status), Some(&tag))
    }

    fn reply(&mut self, now: Instant, key: &TxKey, req: &Request, status: u16) {
        let b = self.response(req, status, None);
        self.respond(now, key, status, b);
    }

    fn respond(&mut self, now: Instant, key: &TxKey, status: u16, b: Builder) {
        let bytes = b.header("Server", self.config.user_agent.clone()).build();
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        if entry.tx.send_response(status, bytes.clone(), now) {
            let t = entry.transport;
            self.send(t, bytes);
        }
    }

    fn reply_options(&mut self, now: Instant, key: &TxKey, req: &Request) {
        let b = self
            .response(req, 200, None)
            .header("Allow", ALLOW)
            .header("Accept", "application/sdp")
            .header("Supported", SUPPORTED);
        self.respond(now, key, 200, b);
    }

    fn on_invite(&mut self, now: Instant, transport: Transport, key: &TxKey, req: Request) {
        let merged_key = (
            req.core.call_id.clone(),
            req.core.from.tag.clone().unwrap_or_default(),
            req.core.cseq,
        );
        if self.merged.contains_key(&merged_key) {
            // Same INVITE by another path (RFC 3261 8.2.2.2).
            self.reply(now, key, &req, 482);
            return;
        }
        let offer = if req.body.is_empty() {
            None
        } else if req.content_type().as_deref() != Some("application/sdp") {
            let b = self
                .response(&req, 415, None)
                .header("Accept", "application/sdp");
            self.respond(now, key, 415, b);
            return;
        } else {
            match Sdp::parse(&req.body) {
                Ok(sdp) => Some(sdp),
                Err(_) => {
                    let b = response_to(
                        &req,
                        400,
                        "Bad Request (malformed SDP)",
                        Some(&self.random_hex(6)),
                    );
                    self.respond(now, key, 400, b);
                    return;
                }
            }
        };
        if let Some(sdp) = &offer {
            let g711 = sdp.audio.as_ref().is_some_and(|a| {
                a.port != 0
                    && a.payload_types
                        .iter()
                        .any(|pt| matches!(a.encoding(*pt).as_deref(), Some("PCMU" | "PCMA")))
            });
            if !g711 {
                self.reply(now, key, &req, 488);
                return;
            }
        }
        // Session timer (RFC 4028): (interval, refresher is uac?, uac supports)
        let uac_supports = req.has_token("Supported", "timer");
        let mut offered_se = None;
        if let Some((interval, refresher)) = req
            .header("Session-Expires")
            .and_then(parse_session_expires)
        {
            if interval < self.config.min_se {
                if uac_supports {
                    let b = self
                        .response(&req, 422, None)
                        .header("Min-SE", self.config.min_se.to_string());
                    self.respond(now, key, 422, b);
                    return;
                }
                offered_se = Some((self.config.min_se, refresher, uac_supports));
            } else {
                offered_se = Some((interval, refresher, uac_supports));
            }
        }
        let id = self.new_call_id();
        let local_tag = self.random_hex(6);
        self.dialogs
            .insert((req.core.call_id.clone(), local_tag.clone()), id);
        self.merged.insert(merged_key.clone(), id);
        if let Some(e) = self.servers.get_mut(key) {
            e.call = Some(id);
        }
        // 100 at once: stops the caller's Timer A whatever the glue does.
        let trying = response_to(&req, 100, "Trying", None);
        self.respond(now, key, 100, trying);
        let authorization = authorization(&req).map(str::to_string);
        self.emit(SipEvent::IncomingCall {
            call: id,
            from: req.core.from.uri.clone(),
            from_user: req.core.from.user.clone(),
            to: req.uri.clone(),
            called: req.uri_user.clone(),
            source: transport.remote,
            transport: transport.kind,
            offer: offer.clone(),
            headers: req.headers.clone(),
            authorization,
        });
        self.calls.insert(
            id,
            Box::new(Call {
                state: State::Incoming,
                uac: false,
                transport,
                local_tag,
                dialog: None,
                invite: Some(req),
                invite_tx: Some(key.clone()),
                uac_tx: None,
                uac_meta: None,
                uac_request: None,
                auth_tried: false,
                digest: DigestClient::default(),
                provisional_seen: false,
                cancel_requested: false,
                cancel_deadline: None,
                local_sdp: None,
                remote_sdp: offer,
                reinvite_in: None,
                reinvite_out: None,
                glare_retry: None,
                ack_wait: None,
                bye_after_ack: false,
                offered_se,
                session: None,
                merged_key: Some(merged_key),
            }),
        );
    }

    fn on_cancel(&mut self, now: Instant, key: &TxKey, req: Request) {
        let invite_key = TxKey {
            method: Method::Invite,
            ..key.clone()
        };
        let Some(invite) = self.servers.get(&invite_key) else {
            self.reply(now, key, &req, 481);
            return;
        };
        let pending = !invite.tx.is_final();
        let call = invite.call;
        self.reply(now, key, &req, 200);
        if !pending {
            return; // answered already: the call stays up (RFC 3261 9.2)
        }
        let Some(id) = call else { return };
        let Some(c) = self.calls.get(&id) else { return };
        // A CANCEL of a re-INVITE only ends that re-INVITE.
        if let Some((rereq, rekey)) = c.reinvite_in.clone().filter(|(_, k)| *k == invite_key) {
            let tag = c.local_tag.clone();
            let b = self.response(&rereq, 487, Some(&tag));
            self.respond(now, &rekey, 487, b);
            if let Some(c) = self.calls.get_mut(&id) {
                c.reinvite_in = None;
            }
            return;
        }
        if c.state == State::Incoming {
            self.final_to_invite(now, id, 487);
            self.emit(SipEvent::Ended {
                call: id,
                by_remote: true,
                cause: EndCause::Cancelled,
            });
            self.remove_call(id);
        }
    }

    /// A non-2xx final to the initial INVITE of a UAS call.
    fn final_to_invite(&mut self, now: Instant, id: CallId, status: u16) {
        let Some(c) = self.calls.get(&id) else { return };
        let (Some(req), Some(key)) = (c.invite.clone(), c.invite_tx.clone()) else {
            return;
        };
        let tag = c.local_tag.clone();
        let b = self.response(&req, status, Some(&tag));
        self.respond(now, &key, status, b);
    }

    fn on_ack(&mut self, now: Instant, key: &TxKey, req: Request) {
        // A non-2xx ACK matches the INVITE transaction by branch; a 2xx ACK
        // (new branch) is found through the dialog.
        if let Some(entry) = self.servers.get_mut(key) {
            let accepted = entry.tx.state() == ServerState::Accepted;
            let call = entry.call;
            if !accepted {
                entry.tx.on_ack(now);
                return;
            }
            if let Some(id) = call {
                self.on_2xx_ack(now, id, &req);
            }
            return;
        }
        let Some(tag) = req.core.to.tag.clone() else {
            return;
        };
        let Some(id) = self.dialogs.get(&(req.core.call_id.clone(), tag)).copied() else {
            return; // ACKs are never answered
        };
        self.on_2xx_ack(now, id, &req);
    }

    fn on_2xx_ack(&mut self, now: Instant, id: CallId, req: &Request) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(wait) = c.ack_wait.clone() else {
            return;
        };
        let first = self
            .servers
            .get_mut(&wait)
            .is_some_and(|e| e.tx.on_ack(now));
        if !first {
            return;
        }
        c.ack_wait = None;
        // An offerless INVITE gets its answer in the ACK.
        if !req.body.is_empty()
            && let Ok(sdp) = Sdp::parse(&req.body)
        {
            c.remote_sdp = Some(sdp);
        }
        if c.state == State::Answered {
            c.state = State::Confirmed;
            let bye = c.bye_after_ack;
            self.emit(SipEvent::Confirmed { call: id });
            if bye {
                self.send_bye(now, id);
            }
        }
    }

    fn on_in_dialog(&mut self, now: Instant, key: &TxKey, req: Request) {
        let tag = req.core.to.tag.clone().unwrap_or_default();
        let Some(id) = self.dialogs.get(&(req.core.call_id.clone(), tag)).copied() else {
            self.reply(now, key, &req, 481);
            return;
        };
        let Some(c) = self.calls.get_mut(&id) else {
            self.reply(now, key, &req, 481);
            return;
        };
        if let Some(e) = self.servers.get_mut(key) {
            e.call = Some(id);
        }
        let local_tag = c.local_tag.clone();
        let Some(dialog) = c.dialog.as_mut() else {
            // An early dialog on our side (UAS before 2xx, or UAC early):
            // only BYE/INFO make sense; refuse the rest.
            if req.method == Method::Bye && c.uac {
                // RFC 3261 15: a callee may not BYE before its 2xx; be lenient.
                self.reply(now, key, &req, 200);
                self.emit(SipEvent::Ended {
                    call: id,
                    by_remote: true,
                    cause: EndCause::Bye,
                });
                self.remove_call(id);
            } else {
                self.reply(now, key, &req, 481);
            }
            return;
        };
        if dialog.on_request(&req) == Err(DialogError::OutOfOrder) {
            let b = self.response(&req, 500, Some(&local_tag));
            self.respond(now, key, 500, b);
            return;
        }
        match req.method {
            Method::Bye => {
                let b = self.response(&req, 200, Some(&local_tag));
                self.respond(now, key, 200, b);
                // A re-INVITE still waiting on the glue gets its 487.
                if let Some((rereq, rekey)) =
                    self.calls.get_mut(&id).and_then(|c| c.reinvite_in.take())
                {
                    let b = self.response(&rereq, 487, Some(&local_tag));
                    self.respond(now, &rekey, 487, b);
                }
                self.emit(SipEvent::Ended {
                    call: id,
                    by_remote: true,
                    cause: EndCause::Bye,
                });
                self.remove_call(id);
            }
            Method::Invite => self.on_reinvite(now, id, key, req),
            Method::Info => {
                let ct = req.content_type().unwrap_or_default();
                if req.body.is_empty() {
                    self.reply_tagged(now, key, &req, 200, &local_tag);
                } else if let Some((digit, duration_ms)) = parse_dtmf_info(&ct, &req.body) {
                    self.reply_tagged(now, key, &req, 200, &local_tag);
                    self.emit(SipEvent::Dtmf {
                        call: id,
                        digit,
                        duration_ms,
                    });
                } else {
                    let b = self
                        .response(&req, 415, Some(&local_tag))
                        .header("Accept", "application/dtmf-relay, application/dtmf");
                    self.respond(now, key, 415, b);
                }
            }
            Method::Refer => match refer_target(&req) {
                Some(target) => {
                    let contact = self
                        .calls
                        .get(&id)
                        .and_then(|c| c.dialog.as_ref())
                        .map(|d| d.local_contact.clone());
                    let mut b = self.response(&req, 202, Some(&local_tag));
                    if let Some(contact) = contact {
                        b = b.header("Contact", contact);
                    }
                    self.respond(now, key, 202, b);
                    self.emit(SipEvent::Refer { call: id, target });
                    // RFC 3515 2.4.4: an immediate NOTIFY of the state.
                    let _ = self.refer_progress(now, id, 100);
                }
                None => {
                    let b = response_to(&req, 400, "Missing Refer-To Header", Some(&local_tag));
                    self.respond(now, key, 400, b);
                }
            },
            Method::Notify => {
                self.reply_tagged(now, key, &req, 200, &local_tag);
                let is_refer = req.header("Event").is_some_and(|e| {
                    e.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("refer")
                });
                if is_refer
                    && let Some(status) = std::str::from_utf8(&req.body)
                        .ok()
                        .and_then(|s| s.strip_prefix("SIP/2.0 "))
                        .and_then(|s| s.get(..3))
                        .and_then(|s| s.parse::<u16>().ok())
                {
                    self.emit(SipEvent::ReferProgress { call: id, status });
                }
            }
            Method::Options => {
                let b = self
                    .response(&req, 200, Some(&local_tag))
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Supported", SUPPORTED);
                self.respond(now, key, 200, b);
            }
            _ => self.reply_tagged(now, key, &req, 405, &local_tag),
        }
    }

    fn reply_tagged(&mut self, now: Instant, key: &TxKey, req: &Request, status: u16, tag: &str) {
        let b = self.response(req, status, Some(tag));
        self.respond(now, key, status, b);
    }

    fn on_reinvite(&mut self, now: Instant, id: CallId, key: &TxKey, req: Request) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let local_tag = c.local_tag.clone();
        if let Some(e) = self.servers.get_mut(key) {
            e.call = Some(id);
        }
        let ours_pending = c
            .reinvite_out
            .as_ref()
            .is_some_and(|(k, _)| self.clients.get(k).is_some_and(|e| !e.tx.is_final()));
        if ours_pending {
            // Glare (RFC 3261 14.2): both sides back off.
            self.reply_tagged(now, key, &req, 491, &local_tag);
            return;
        }
        if c.reinvite_in.is_some() || c.ack_wait.is_some() {
            let secs = self.rng.gen_range(0..=10u32);
            let b = self
                .response(&req, 500, Some(&local_tag))
                .header("Retry-After", secs.to_string());
            self.respond(now, key, 500, b);
            return;
        }
        let offer = if req.body.is_empty() {
            None
        } else {
            match Sdp::parse(&req.body) {
                Ok(s) => Some(s),
                Err(_) => {
                    let b = response_to(&req, 400, "Bad Request (malformed SDP)", Some(&local_tag));
                    self.respond(now, key, 400, b);
                    return;
                }
            }
        };
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(d) = c.dialog.as_mut() {
            d.refresh_target(&req);
        }
        // Session refresh: no offer, or the same session version (RFC 4028
        // refreshes re-send the last SDP unchanged, RFC 3264 8).
        let same = match (&offer, &c.remote_sdp) {
            (None, _) => true,
            (Some(o), Some(prev)) => o.origin == prev.origin,
            (Some(_), None) => false,
        };
        if let Some((interval, _)) = req
            .header("Session-Expires")
            .and_then(parse_session_expires)
        {
            // The refresher of this transaction is the UAC: them.
            c.session = Some(SessionTimer {
                interval,
                we_refresh: false,
                at: now + expiry_wait(interval),
            });
        } else if let Some(s) = c.session.as_mut()
            && !s.we_refresh
        {
            s.at = now + expiry_wait(s.interval);
        }
        if same && c.local_sdp.is_some() {
            let sdp = c.local_sdp.clone().unwrap_or_default();
            let session = c.session.clone();
            let contact = c
                .dialog
                .as_ref()
                .map(|d| d.local_contact.clone())
                .unwrap_or_default();
            let mut b = self
                .response(&req, 200, Some(&local_tag))
                .header("Contact", contact)
                .header("Allow", ALLOW)
                .header("Supported", SUPPORTED);
            if let Some(s) = session {
                b = b.header("Session-Expires", format!("{};refresher=uac", s.interval));
            }
            let b = b.body("application/sdp", sdp);
            self.respond(now, key, 200, b);
            if let Some(c) = self.calls.get_mut(&id) {
                c.ack_wait = Some(key.clone());
            }
            return;
        }
        let hold = offer.as_ref().is_some_and(Sdp::is_hold);
        if let Some(o) = &offer {
            c.remote_sdp = Some(o.clone());
        }
        c.reinvite_in = Some((req, key.clone()));
        self.emit(SipEvent::Reinvite {
            call: id,
            offer,
            hold,
        });
    }

    // ----------------------------------------------------------- responses

    fn on_response(&mut self, now: Instant, res: Response) {
        let key = TxKey::client(&res.core.via.branch, &res.core.cseq_method);
        let Some(entry) = self.clients.get_mut(&key) else {
            return; // stray: nothing of ours
        };
        let verdict = entry.tx.on_response(res.status, now);
        let owner = entry.owner;
        let transport = entry.transport;
        match verdict {
            ClientVerdict::Absorb => {}
            ClientVerdict::Resend(bytes) => self.send(transport, bytes),
            ClientVerdict::Retransmitted2xx => {
                let to_tag = res.core.to.tag.clone().unwrap_or_default();
                match &entry.ack_2xx {
                    Some((ack, tag)) if *tag == to_tag => {
                        let ack = ack.clone();
                        self.send(transport, ack);
                    }
                    _ => self.ack_and_bye_stray(now, transport, &res),
                }
            }
            ClientVerdict::DeliverNeedsAck => {
                if let Some(meta) = entry.meta.clone() {
                    let ack = non_2xx_ack(&meta, &res);
                    entry.tx.set_ack(ack.clone());
                    self.send(transport, ack);
                }
                self.deliver_response(now, key, owner, transport, res);
            }
            ClientVerdict::Deliver => self.deliver_response(now, key, owner, transport, res),
        }
    }

    fn deliver_response(
        &mut self,
        now: Instant,
        key: TxKey,
        owner: Owner,
        transport: Transport,
        res: Response,
    ) {
        match owner {
            Owner::Invite(id) => self.on_invite_response(now, id, key, transport, res),
            Owner::Reinvite(id) => self.on_reinvite_response(now, id, key, transport, res),
            Owner::Bye(id) if res.status >= 200 && self.calls.contains_key(&id) => {
                self.emit(SipEvent::Ended {
                    call: id,
                    by_remote: false,
                    cause: EndCause::Bye,
                });
                self.remove_call(id);
            }
            Owner::Refer(id) if res.status >= 200 => {
                self.emit(SipEvent::ReferResult {
                    call: id,
                    status: res.status,
                });
                if matches!(res.status, 408 | 481) {
                    self.lose_call(now, id);
                }
            }
            Owner::InDialog(id) if matches!(res.status, 408 | 481) => self.lose_call(now, id),
            Owner::Options(peer, transport) if res.status >= 200 => {
                self.emit(SipEvent::OptionsResult {
                    peer,
                    transport,
                    alive: true,
                    status: Some(res.status),
                })
            }
            _ => {}
        }
    }

    /// The peer forgot the dialog or stopped answering: BYE and report.
    fn lose_call(&mut self, now: Instant, id: CallId) {
        if !self.calls.contains_key(&id) {
            return;
        }
        self.send_bye_with(now, id, Owner::Orphan);
        self.emit(SipEvent::Ended {
            call: id,
            by_remote: false,
            cause: EndCause::Lost,
        });
        self.remove_call(id);
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        id: CallId,
        key: TxKey,
        transport: Transport,
        res: Response,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            if (200..300).contains(&res.status) {
                self.ack_and_bye_stray(now, transport, &res);
            }
            return;
        };
        if c.uac_tx.as_ref() != Some(&key) {
            return; // an older (challenged) INVITE
        }
        if res.status < 200 {
            c.provisional_seen = true;
            let send_cancel = c.cancel_requested && c.cancel_deadline.is_none();
            if res.status > 100 {
                let sdp = sdp_of(&res);
                if let Some(sdp) = sdp {
                    self.emit(SipEvent::EarlyMedia { call: id, sdp });
                } else {
                    self.emit(SipEvent::Ringing { call: id });
                }
            }
            if send_cancel {
                self.send_cancel(now, id);
            }
            return;
        }
        if (200..300).contains(&res.status) {
            let contact = c.dialog.as_ref().map(|d| d.local_contact.clone());
            let local_contact = contact.unwrap_or_else(|| self.contact(transport));
            let Some(c) = self.calls.get_mut(&id) else {
                return;
            };
            let mut dialog = Dialog::uac(&res, &local_contact);
            dialog.local_tag = c.local_tag.clone();
            let cseq = res.core.cseq;
            let (via, _) = self.via(transport);
            let ack = dialog.ack(cseq, &via).build();
            self.send(transport, ack.clone());
            if let Some(e) = self.clients.get_mut(&key) {
                e.ack_2xx = Some((ack, res.core.to.tag.clone().unwrap_or_default()));
            }
            let Some(c) = self.calls.get_mut(&id) else {
                return;
            };
            c.dialog = Some(dialog);
            c.cancel_deadline = None;
            if c.cancel_requested {
                // CANCEL lost the race with the 2xx: end it at once.
                self.emit(SipEvent::CallFailed {
                    call: id,
                    status: 487,
                    reason: "Request Terminated".into(),
                });
                self.send_bye_with(now, id, Owner::Orphan);
                self.remove_call(id);
                return;
            }
            c.state = State::Confirmed;
            let answer = sdp_of(&res);
            if let Some(a) = &answer {
                c.remote_sdp = Some(a.clone());
            }
            c.session = res
                .header("Session-Expires")
                .and_then(parse_session_expires)
                .map(|(interval, refresher_uac)| {
                    let we_refresh = refresher_uac != Some(false);
                    SessionTimer {
                        interval,
                        we_refresh,
                        at: now
                            + if we_refresh {
                                refresh_wait(interval)
                            } else {
                                expiry_wait(interval)
                            },
                    }
                });
            self.emit(SipEvent::Answered { call: id, answer });
            return;
        }
        // Final failure.
        let challenged = matches!(res.status, 401 | 407);
        if challenged
            && !c.auth_tried
            && !c.cancel_requested
            && c.uac_request
                .as_ref()
                .is_some_and(|r| r.credentials.is_some())
        {
            let header = if res.status == 401 {
                "WWW-Authenticate"
            } else {
                "Proxy-Authenticate"
            };
            if let Some(challenge) = res.header(header).map(str::to_string) {
                c.auth_tried = true;
                if self
                    .retry_with_auth(now, id, &challenge, res.status == 407)
                    .is_ok()
                {
                    return;
                }
            }
        }
        let status = if self.calls.get(&id).is_some_and(|c| c.cancel_requested) {
            487
        } else {
            res.status
        };
        let reason = if status == res.status {
            res.reason.clone()
        } else {
            reason_phrase(status).into()
        };
        self.emit(SipEvent::CallFailed {
            call: id,
            status,
            reason,
        });
        self.remove_call(id);
    }

    fn on_reinvite_response(
        &mut self,
        now: Instant,
        id: CallId,
        key: TxKey,
        transport: Transport,
        res: Response,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if res.status < 200 {
            return;
        }
        let refresh = c.reinvite_out.as_ref().is_some_and(|(_, r)| *r);
        c.reinvite_out = None;
        if (200..300).contains(&res.status) {
            let Some(d) = c.dialog.as_mut() else { return };
            d.refresh_target(&res);
            let cseq = res.core.cseq;
            let d = d.clone();
            let (via, _) = self.via(transport);
            let ack = d.ack(cseq, &via).build();
            self.send(transport, ack.clone());
            if let Some(e) = self.clients.get_mut(&key) {
                e.ack_2xx = Some((ack, res.core.to.tag.clone().unwrap_or_default()));
            }
            let Some(c) = self.calls.get_mut(&id) else {
                return;
            };
            let answer = sdp_of(&res);
            if let Some(a) = &answer {
                c.remote_sdp = Some(a.clone());
            }
            let interval = res
                .header("Session-Expires")
                .and_then(parse_session_expires)
                .map(|(i, _)| i);
            if let Some(s) = c.session.as_mut() {
                s.interval = interval.unwrap_or(s.interval);
                s.at = now
                    + if s.we_refresh {
                        refresh_wait(s.interval)
                    } else {
                        expiry_wait(s.interval)
                    };
            }
            if !refresh {
                self.emit(SipEvent::ReinviteDone { call: id, answer });
            }
            return;
        }
        if res.status == 491 {
            // RFC 3261 14.1: the Call-ID owner waits 2.1-4 s, the other 0-2 s.
            let ms = if c.uac {
                self.rng.gen_range(2100..=4000)
            } else {
                self.rng.gen_range(0..=2000)
            };
            let Some(c) = self.calls.get_mut(&id) else {
                return;
            };
            let sdp = c.local_sdp.clone().unwrap_or_default();
            c.glare_retry = Some((now + Duration::from_millis(ms), sdp));
            return;
        }
        if matches!(res.status, 408 | 481) {
            self.lose_call(now, id);
            return;
        }
        if !refresh {
            self.emit(SipEvent::ReinviteFailed {
                call: id,
                status: res.status,
            });
        }
    }

    /// A 2xx nobody is waiting for (a second fork, or after the call was
    /// gone): ACK it so it stops, then BYE it (RFC 3261 13.2.2.4).
    fn ack_and_bye_stray(&mut self, now: Instant, transport: Transport, res: &Response) {
        if res.core.cseq_method != Method::Invite || res.core.to.tag.is_none() {
            return;
        }
        let contact = self.contact(transport);
        let mut d = Dialog::uac(res, &contact);
        let (via, _) = self.via(transport);
        self.send(transport, d.ack(res.core.cseq, &via).build());
        let (via, branch) = self.via(transport);
        let bye = d.request(Method::Bye, &via).build();
        self.start_client(
            now,
            transport,
            &branch,
            Method::Bye,
            bye,
            Owner::Orphan,
            None,
        );
    }

    // -------------------------------------------------------------- timers

    pub fn handle_timeout(&mut self, now: Instant) {
        self.epoch(now);
        let due: Vec<TxKey> = self
            .clients
            .iter()
            .filter(|(_, e)| e.tx.next_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            while let Some(entry) = self.clients.get_mut(&key) {
                if entry.tx.next_timeout().is_none_or(|t| t > now) {
                    break;
                }
                let t = entry.transport;
                let owner = entry.owner;
                match entry.tx.on_timeout(now) {
                    Some(ClientTimeout::Retransmit(bytes)) => self.send(t, bytes),
                    Some(ClientTimeout::TimedOut) => {
                        self.clients.remove(&key);
                        self.client_timed_out(now, owner, &key);
                    }
                    Some(ClientTimeout::Terminated) => {
                        self.clients.remove(&key);
                    }
                    None => break,
                }
            }
        }
        let due: Vec<TxKey> = self
            .servers
            .iter()
            .filter(|(_, e)| e.tx.next_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            while let Some(entry) = self.servers.get_mut(&key) {
                if entry.tx.next_timeout().is_none_or(|t| t > now) {
                    break;
                }
                let t = entry.transport;
                let call = entry.call;
                let accepted = entry.tx.state() == ServerState::Accepted;
                match entry.tx.on_timeout(now) {
                    Some(ServerTimeout::Retransmit(bytes)) => self.send(t, bytes),
                    Some(ServerTimeout::NoAck) => {
                        self.servers.remove(&key);
                        if accepted && let Some(id) = call {
                            self.no_ack(now, id, &key);
                        }
                    }
                    Some(ServerTimeout::Terminated) => {
                        self.servers.remove(&key);
                    }
                    None => break,
                }
            }
        }
        let due: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                [
                    c.session.as_ref().map(|s| s.at),
                    c.glare_retry.as_ref().map(|g| g.0),
                    c.cancel_deadline,
                ]
                .into_iter()
                .flatten()
                .any(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.call_timers(now, id);
        }
        self.shrink();
    }

    fn client_timed_out(&mut self, now: Instant, owner: Owner, key: &TxKey) {
        self.client_failed(now, owner, key, 408);
    }

    /// A client transaction ended without a response: timer B/F (408) or a
    /// transport error (503, RFC 3261 8.1.3.1).
    fn client_failed(&mut self, now: Instant, owner: Owner, key: &TxKey, failure: u16) {
        match owner {
            Owner::Invite(id) => {
                if self
                    .calls
                    .get(&id)
                    .is_some_and(|c| c.uac_tx.as_ref() == Some(key))
                {
                    let cancelled = self.calls.get(&id).is_some_and(|c| c.cancel_requested);
                    let status = if cancelled { 487 } else { failure };
                    self.emit(SipEvent::CallFailed {
                        call: id,
                        status,
                        reason: reason_phrase(status).into(),
                    });
                    self.remove_call(id);
                }
            }
            Owner::Reinvite(id) | Owner::InDialog(id) => self.lose_call(now, id),
            Owner::Refer(id) => {
                self.emit(SipEvent::ReferResult {
                    call: id,
                    status: failure,
                });
                self.lose_call(now, id);
            }
            Owner::Bye(id) if self.calls.contains_key(&id) => {
                self.emit(SipEvent::Ended {
                    call: id,
                    by_remote: false,
                    cause: EndCause::Bye,
                });
                self.remove_call(id);
            }
            Owner::Options(peer, transport) => self.emit(SipEvent::OptionsResult {
                peer,
                transport,
                alive: false,
                status: None,
            }),
            Owner::Bye(_) | Owner::Cancel | Owner::Orphan => {}
        }
    }

    fn no_ack(&mut self, now: Instant, id: CallId, key: &TxKey) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.ack_wait.as_ref() != Some(key) {
            return;
        }
        c.ack_wait = None;
        self.send_bye_with(now, id, Owner::Orphan);
        self.emit(SipEvent::Ended {
            call: id,
            by_remote: false,
            cause: EndCause::NoAck,
        });
        self.remove_call(id);
    }

    fn call_timers(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.cancel_deadline.is_some_and(|t| t <= now) {
            // No final response to our CANCELled INVITE within 64*T1
            // (RFC 3261 9.1): give up on it.
            self.emit(SipEvent::CallFailed {
                call: id,
                status: 487,
                reason: "Request Terminated".into(),
            });
            self.remove_call(id);
            return;
        }
        if let Some((at, sdp)) = c.glare_retry.clone()
            && at <= now
        {
            c.glare_retry = None;
            let _ = self.send_reinvite(now, id, sdp, false);
        }
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(s) = c.session.clone().filter(|s| s.at <= now) else {
            return;
        };
        if s.we_refresh {
            // Refresh with the SDP unchanged (RFC 4028 + RFC 3264 8). When a
            // re-INVITE of the glue is in the way, try again shortly.
            let sdp = c.local_sdp.clone().unwrap_or_default();
            let wait = match self.send_reinvite(now, id, sdp, true) {
                Ok(()) => refresh_wait(s.interval),
                Err(_) => Duration::from_secs(2),
            };
            if let Some(sess) = self.calls.get_mut(&id).and_then(|c| c.session.as_mut()) {
                sess.at = now + wait;
            }
            return;
        }
        self.send_bye_with(now, id, Owner::Orphan);
        self.emit(SipEvent::Ended {
            call: id,
            by_remote: false,
            cause: EndCause::SessionExpired,
        });
        self.remove_call(id);
    }

    // ------------------------------------------------------------- helpers

    fn local_addr(&self, kind: TransportKind) -> Option<SocketAddr> {
        self.config
            .addresses
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// A Via for a new request on `transport`, and its branch.
    fn via(&mut self, transport: Transport) -> (String, String) {
        let branch = format!("z9hG4bK{}", self.random_hex(10));
        let addr = self.local_addr(transport.kind).unwrap_or(transport.local);
        (
            format!(
                "SIP/2.0/{} {addr};branch={branch};rport",
                transport.kind.via_name()
            ),
            branch,
        )
    }

    fn contact(&self, transport: Transport) -> String {
        let addr = self.local_addr(transport.kind).unwrap_or(transport.local);
        match transport.kind {
            TransportKind::Udp => format!("<sip:{addr}>"),
            TransportKind::Tcp => format!("<sip:{addr};transport=tcp>"),
            TransportKind::Tls => format!("<sip:{addr};transport=tls>"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_client(
        &mut self,
        now: Instant,
        transport: Transport,
        branch: &str,
        method: Method,
        bytes: Vec<u8>,
        owner: Owner,
        meta: Option<InviteMeta>,
    ) -> TxKey {
        let key = TxKey::client(branch, &method);
        let tx = ClientTransaction::new(
            &method,
            bytes.clone(),
            transport.kind.reliable(),
            self.config.timers,
            now,
        );
        self.clients.insert(
            key.clone(),
            ClientEntry {
                tx,
                transport,
                owner,
                meta,
                ack_2xx: None,
            },
        );
        self.send(transport, bytes);
        key
    }

    fn remove_call(&mut self, id: CallId) {
        if let Some(c) = self.calls.remove(&id) {
            let call_id = c
                .dialog
                .as_ref()
                .map(|d| d.call_id.clone())
                .or_else(|| c.invite.as_ref().map(|r| r.core.call_id.clone()))
                .or_else(|| c.uac_meta.as_ref().map(|m| m.call_id.clone()));
            if let Some(call_id) = call_id {
                self.dialogs.remove(&(call_id, c.local_tag.clone()));
            }
            if let Some(k) = c.merged_key {
                self.merged.remove(&k);
            }
        }
    }

    fn send_bye(&mut self, now: Instant, id: CallId) {
        self.send_bye_with(now, id, Owner::Bye(id));
    }

    fn send_bye_with(&mut self, now: Instant, id: CallId, owner: Owner) {
        let Some(c) = self.calls.get(&id) else { return };
        let Some(mut d) = c.dialog.clone() else {
            return;
        };
        let transport = c.transport;
        let (via, branch) = self.via(transport);
        let bye = d.request(Method::Bye, &via).build();
        if let Some(c) = self.calls.get_mut(&id) {
            c.dialog = Some(d);
            c.state = State::Terminating;
        }
        self.start_client(now, transport, &branch, Method::Bye, bye, owner, None);
    }

    fn send_cancel(&mut self, now: Instant, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(meta) = c.uac_meta.clone() else {
            return;
        };
        c.cancel_deadline = Some(now + self.config.timers.timeout());
        let transport = c.transport;
        let branch = meta
            .via
            .split(";branch=")
            .nth(1)
            .and_then(|b| b.split(';').next())
            .unwrap_or("")
            .to_string();
        // RFC 3261 9.1: same Request-URI, Call-ID, To, From, CSeq number and
        // top Via as the INVITE.
        let mut b = Builder::request(Method::Cancel, meta.uri.clone())
            .header("Via", meta.via.clone())
            .header("Max-Forwards", "70")
            .header("From", meta.from.clone())
            .header("To", meta.to.clone())
            .header("Call-ID", meta.call_id.clone())
            .header("CSeq", format!("{} CANCEL", meta.cseq));
        for r in &meta.routes {
            b.push_header("Route", r.clone());
        }
        let bytes = b
            .header("User-Agent", self.config.user_agent.clone())
            .build();
        self.start_client(
            now,
            transport,
            &branch,
            Method::Cancel,
            bytes,
            Owner::Cancel,
            None,
        );
    }

    fn send_invite(
        &mut self,
        now: Instant,
        id: CallId,
        authorization: Option<(bool, String)>,
    ) -> Result<(), SipError> {
        let (transport, local_tag, req, cseq, call_id) = {
            let c = self.calls.get(&id).ok_or(SipError::UnknownCall)?;
            let req = c
                .uac_request
                .clone()
                .ok_or(SipError::State("not an outgoing call"))?;
            let cseq = c.uac_meta.as_ref().map(|m| m.cseq + 1).unwrap_or(1);
            let call_id = c
                .uac_meta
                .as_ref()
                .map(|m| m.call_id.clone())
                .unwrap_or_default();
            (c.transport, c.local_tag.clone(), req, cseq, call_id)
        };
        let call_id = if call_id.is_empty() {
            format!("{}@{}", self.random_hex(12), self.config.domain)
        } else {
            call_id
        };
        let (via, branch) = self.via(transport);
        let from = match &req.from_display {
            Some(name) => format!(
                "\"{}\" <{}>;tag={local_tag}",
                name.replace(['"', '\\'], ""),
                req.from
            ),
            None => format!("<{}>;tag={local_tag}", req.from),
        };
        let to = format!("<{}>", req.target);
        let contact = self.contact(transport);
        let mut b = Builder::request(Method::Invite, req.target.clone())
            .header("Via", via.clone())
            .header("Max-Forwards", "70")
            .header("From", from.clone())
            .header("To", to.clone())
            .header("Call-ID", call_id.clone())
            .header("CSeq", format!("{cseq} INVITE"))
            .header("Contact", contact.clone());
        for r in &req.route {
            b.push_header("Route", r.clone());
        }
        b.push_header("Allow", ALLOW);
        b.push_header("Supported", SUPPORTED);
        if let Some(se) = self.config.session_expires {
            b.push_header("Session-Expires", se.to_string());
            b.push_header("Min-SE", self.config.min_se.to_string());
        }
        b.push_header("User-Agent", self.config.user_agent.clone());
        if let Some((proxy, value)) = authorization {
            b.push_header(
                if proxy {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                },
                value,
            );
        }
        for (n, v) in &req.extra_headers {
            b.push_header(n, v.clone());
        }
        if let Some(sdp) = &req.sdp {
            b = b.body("application/sdp", sdp.clone());
        }
        let meta = InviteMeta {
            uri: req.target.clone(),
            via,
            from,
            to,
            call_id: call_id.clone(),
            cseq,
            routes: req.route.clone(),
        };
        let key = self.start_client(
            now,
            transport,
            &branch,
            Method::Invite,
            b.build(),
            Owner::Invite(id),
            Some(meta.clone()),
        );
        self.dialogs.insert((call_id, local_tag), id);
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        c.uac_tx = Some(key);
        c.uac_meta = Some(meta);
        c.local_sdp = req.sdp.clone();
        let _ = contact;
        Ok(())
    }

    fn retry_with_auth(
        &mut self,
        now: Instant,
        id: CallId,
        challenge: &str,
        proxy: bool,
    ) -> Result<(), SipError> {
        let cnonce = self.random_hex(8);
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        let req = c
            .uac_request
            .clone()
            .ok_or(SipError::State("not an outgoing call"))?;
        let creds = req
            .credentials
            .clone()
            .ok_or(SipError::State("no credentials"))?;
        let value = c
            .digest
            .authorize(&creds, challenge, "INVITE", &req.target, &cnonce)
            .map_err(|_| SipError::State("unusable challenge"))?;
        c.provisional_seen = false;
        self.send_invite(now, id, Some((proxy, value)))
    }

    fn send_reinvite(
        &mut self,
        now: Instant,
        id: CallId,
        sdp: String,
        refresh: bool,
    ) -> Result<(), SipError> {
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        if c.state != State::Confirmed {
            return Err(SipError::State("call not confirmed"));
        }
        if c.reinvite_in.is_some() || c.reinvite_out.is_some() || c.ack_wait.is_some() {
            return Err(SipError::State("re-INVITE pending"));
        }
        let transport = c.transport;
        let session = c.session.clone();
        let mut d = c.dialog.clone().ok_or(SipError::State("no dialog"))?;
        let (via, branch) = self.via(transport);
        let mut b = d
            .request(Method::Invite, &via)
            .header("Allow", ALLOW)
            .header("Supported", SUPPORTED)
            .header("User-Agent", self.config.user_agent.clone());
        if let Some(s) = session {
            b = b.header("Session-Expires", format!("{};refresher=uac", s.interval));
        }
        let b = b.body("application/sdp", sdp.clone());
        let meta = InviteMeta {
            uri: d.remote_target.clone(),
            via,
            from: format!("{};tag={}", d.local_party, d.local_tag),
            to: format!("{};tag={}", d.remote_party, d.remote_tag),
            call_id: d.call_id.clone(),
            cseq: d.local_seq,
            routes: d.route_set.clone(),
        };
        let key = self.start_client(
            now,
            transport,
            &branch,
            Method::Invite,
            b.build(),
            Owner::Reinvite(id),
            Some(meta),
        );
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        c.dialog = Some(d);
        c.local_sdp = Some(sdp);
        c.reinvite_out = Some((key, refresh));
        Ok(())
    }

    fn in_dialog(
        &mut self,
        now: Instant,
        id: CallId,
        owner: Owner,
        build: impl FnOnce(&mut Dialog, &str) -> Builder,
    ) -> Result<(), SipError> {
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        if !matches!(c.state, State::Confirmed | State::Answered) {
            return Err(SipError::State("no confirmed dialog"));
        }
        let transport = c.transport;
        let mut d = c.dialog.clone().ok_or(SipError::State("no dialog"))?;
        let (via, branch) = self.via(transport);
        let b = build(&mut d, &via).header("User-Agent", self.config.user_agent.clone());
        let method = Method::parse(b_method(&b));
        let bytes = b.build();
        if let Some(c) = self.calls.get_mut(&id) {
            c.dialog = Some(d);
        }
        self.start_client(now, transport, &branch, method, bytes, owner, None);
        Ok(())
    }

    // ------------------------------------------------------------ commands

    /// 180 Ringing.
    pub fn ring(&mut self, now: Instant, call: CallId) -> Result<(), SipError> {
        self.provisional(now, call, 180, None)
    }

    /// 183 Session Progress with early media.
    pub fn progress(&mut self, now: Instant, call: CallId, sdp: &str) -> Result<(), SipError> {
        self.provisional(now, call, 183, Some(sdp))
    }

    fn provisional(
        &mut self,
        now: Instant,
        id: CallId,
        status: u16,
        sdp: Option<&str>,
    ) -> Result<(), SipError> {
        let c = self.calls.get(&id).ok_or(SipError::UnknownCall)?;
        if c.state != State::Incoming {
            return Err(SipError::State("not an unanswered incoming call"));
        }
        let (req, key) = (
            c.invite.clone().ok_or(SipError::UnknownCall)?,
            c.invite_tx.clone().ok_or(SipError::UnknownCall)?,
        );
        let tag = c.local_tag.clone();
        let contact = self.contact(c.transport);
        let mut b = self
            .response(&req, status, Some(&tag))
            .header("Contact", contact);
        if let Some(sdp) = sdp {
            b = b.body("application/sdp", sdp.to_string());
        }
        self.respond(now, &key, status, b);
        Ok(())
    }

    /// 200 OK with our answer (retransmitted until ACKed); also answers a
    /// pending re-INVITE.
    pub fn answer(&mut self, now: Instant, id: CallId, sdp: &str) -> Result<(), SipError> {
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        let transport = c.transport;
        if let Some((req, key)) = c.reinvite_in.take() {
            let tag = c.local_tag.clone();
            let session = c.session.clone();
            let contact = c
                .dialog
                .as_ref()
                .map(|d| d.local_contact.clone())
                .unwrap_or_default();
            c.local_sdp = Some(sdp.to_string());
            c.ack_wait = Some(key.clone());
            let mut b = self
                .response(&req, 200, Some(&tag))
                .header("Contact", contact)
                .header("Allow", ALLOW)
                .header("Supported", SUPPORTED);
            if let Some(s) = session {
                b = b.header("Session-Expires", format!("{};refresher=uac", s.interval));
            }
            self.respond(now, &key, 200, b.body("application/sdp", sdp.to_string()));
            return Ok(());
        }
        if c.state != State::Incoming {
            return Err(SipError::State("not an unanswered incoming call"));
        }
        let req = c.invite.clone().ok_or(SipError::UnknownCall)?;
        let key = c.invite_tx.clone().ok_or(SipError::UnknownCall)?;
        let tag = c.local_tag.clone();
        let contact = self.contact(transport);
        let local_seq = self.rng.gen_range(1..10_000u32);
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        c.dialog = Some(Dialog::uas(&req, &tag, &contact, local_seq));
        c.state = State::Answered;
        c.local_sdp = Some(sdp.to_string());
        c.ack_wait = Some(key.clone());
        let mut b = response_to(&req, 200, "OK", Some(&tag))
            .header("Contact", contact)
            .header("Allow", ALLOW)
            .header("Supported", SUPPORTED);
        if let Some((interval, refresher_uac, uac_supports)) = c.offered_se {
            // The UAC's choice stands; else it refreshes if it can.
            let uac_refreshes = refresher_uac.unwrap_or(uac_supports);
            let who = if uac_refreshes { "uac" } else { "uas" };
            b = b.header("Session-Expires", format!("{interval};refresher={who}"));
            if uac_supports {
                b = b.header("Require", "timer");
            }
            c.session = Some(SessionTimer {
                interval,
                we_refresh: !uac_refreshes,
                at: now
                    + if uac_refreshes {
                        expiry_wait(interval)
                    } else {
                        refresh_wait(interval)
                    },
            });
        }
        if let Some(k) = c.merged_key.take() {
            self.merged.remove(&k);
        }
        self.respond(now, &key, 200, b.body("application/sdp", sdp.to_string()));
        Ok(())
    }

    /// A final failure: the initial INVITE (call gone, no event) or a
    /// pending re-INVITE (call stays).
    pub fn reject(&mut self, now: Instant, id: CallId, status: u16) -> Result<(), SipError> {
        self.reject_inner(now, id, status, None)
    }

    /// [`Endpoint::reject`] with a Warning header (RFC 3261 20.43), e.g. a
    /// 488 saying which part of the offer we cannot take (`code` 3xx).
    pub fn reject_with_warning(
        &mut self,
        now: Instant,
        id: CallId,
        status: u16,
        code: u16,
        text: &str,
    ) -> Result<(), SipError> {
        self.reject_inner(now, id, status, Some((code, text)))
    }

    fn reject_inner(
        &mut self,
        now: Instant,
        id: CallId,
        status: u16,
        warning: Option<(u16, &str)>,
    ) -> Result<(), SipError> {
        if !(300..700).contains(&status) {
            return Err(SipError::Status);
        }
        // warn-text is a quoted-string: no quotes, backslashes or controls.
        let warning = warning.map(|(code, text)| {
            let text: String = text
                .chars()
                .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
                .take(200)
                .collect();
            let agent = if self.config.domain.is_empty() {
                "continuum"
            } else {
                self.config.domain.as_str()
            };
            format!("{code} {agent} \"{text}\"")
        });
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        let (req, key) = if let Some((req, key)) = c.reinvite_in.take() {
            (req, key)
        } else {
            if c.state != State::Incoming {
                return Err(SipError::State("not an unanswered incoming call"));
            }
            let (Some(req), Some(key)) = (c.invite.clone(), c.invite_tx.clone()) else {
                self.remove_call(id);
                return Ok(());
            };
            let tag = c.local_tag.clone();
            let mut b = self.response(&req, status, Some(&tag));
            if let Some(w) = warning {
                b = b.header("Warning", w);
            }
            self.respond(now, &key, status, b);
            self.remove_call(id);
            return Ok(());
        };
        let tag = c.local_tag.clone();
        let mut b = self.response(&req, status, Some(&tag));
        if let Some(w) = warning {
            b = b.header("Warning", w);
        }
        self.respond(now, &key, status, b);
        Ok(())
    }

    /// Answers the INVITE with a Digest challenge (401, or 407 with
    /// `proxy`), with a stateless nonce. The retry comes as a new
    /// IncomingCall; check it with [`verify`].
    ///
    /// [`verify`]: Endpoint::verify
    pub fn challenge(&mut self, now: Instant, id: CallId, proxy: bool) -> Result<(), SipError> {
        let server = self.digest_server(now).ok_or(SipError::NoRealm)?;
        let c = self.calls.get(&id).ok_or(SipError::UnknownCall)?;
        if c.state != State::Incoming {
            return Err(SipError::State("not an unanswered incoming call"));
        }
        let req = c.invite.clone().ok_or(SipError::UnknownCall)?;
        let key = c.invite_tx.clone().ok_or(SipError::UnknownCall)?;
        let tag = c.local_tag.clone();
        // A response on a nonce we no longer accept: say stale, so the
        // client retries without asking its user.
        let stale = authorization(&req).is_some_and(|h| {
            server.verify(h, "INVITE", Secret::Password(""), now) == Err(AuthError::Stale)
        });
        let (status, header) = if proxy {
            (407, "Proxy-Authenticate")
        } else {
            (401, "WWW-Authenticate")
        };
        let b = self
            .response(&req, status, Some(&tag))
            .header(header, server.challenge(now, stale));
        self.respond(now, &key, status, b);
        self.remove_call(id);
        Ok(())
    }

    /// Checks the incoming call's Authorization (or Proxy-Authorization)
    /// against the user's secret.
    pub fn verify(
        &mut self,
        now: Instant,
        id: CallId,
        secret: Secret<'_>,
    ) -> Result<Verified, AuthError> {
        let server = self.digest_server(now).ok_or(AuthError::Realm)?;
        let req = self
            .calls
            .get(&id)
            .and_then(|c| c.invite.as_ref())
            .ok_or(AuthError::Malformed)?;
        let header = authorization(req).ok_or(AuthError::Malformed)?;
        server.verify(header, "INVITE", secret, now)
    }

    /// Places a call (UAC). A 401/407 is answered once with `credentials`.
    pub fn invite(&mut self, now: Instant, request: InviteRequest) -> Result<CallId, SipError> {
        self.epoch(now);
        for uri in [&request.target, &request.from] {
            if rsip::Uri::try_from(uri.as_str()).is_err() || uri.contains(['\r', '\n', '<', '>']) {
                return Err(SipError::InvalidUri);
            }
        }
        let local = self
            .local_addr(request.transport)
            .ok_or(SipError::NoLocalAddress)?;
        let transport = Transport {
            kind: request.transport,
            local,
            remote: request.destination,
        };
        let id = self.new_call_id();
        let local_tag = self.random_hex(6);
        self.calls.insert(
            id,
            Box::new(Call {
                state: State::Calling,
                uac: true,
                transport,
                local_tag,
                dialog: None,
                invite: None,
                invite_tx: None,
                uac_tx: None,
                uac_meta: None,
                uac_request: Some(request),
                auth_tried: false,
                digest: DigestClient::default(),
                provisional_seen: false,
                cancel_requested: false,
                cancel_deadline: None,
                local_sdp: None,
                remote_sdp: None,
                reinvite_in: None,
                reinvite_out: None,
                glare_retry: None,
                ack_wait: None,
                bye_after_ack: false,
                offered_se: None,
                session: None,
                merged_key: None,
            }),
        );
        if let Err(e) = self.send_invite(now, id, None) {
            self.calls.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    /// CANCELs our unanswered INVITE. Before any provisional the CANCEL
    /// waits for one (RFC 3261 9.1). Ends with CallFailed 487 (also when
    /// the 2xx wins the race: we ACK and BYE it).
    pub fn cancel(&mut self, now: Instant, id: CallId) -> Result<(), SipError> {
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        if c.state != State::Calling {
            return Err(SipError::State("not an unanswered outgoing call"));
        }
        if c.cancel_requested {
            return Ok(());
        }
        c.cancel_requested = true;
        if c.provisional_seen {
            self.send_cancel(now, id);
        }
        Ok(())
    }

    /// Ends the call however is right for its state: CANCEL (ours,
    /// unanswered), 480 (theirs, unanswered), BYE (answered; after the ACK
    /// when it is not in yet).
    pub fn hangup(&mut self, now: Instant, id: CallId) -> Result<(), SipError> {
        let c = self.calls.get_mut(&id).ok_or(SipError::UnknownCall)?;
        match c.state {
            State::Calling => self.cancel(now, id),
            State::Incoming => self.reject(now, id, 480),
            State::Answered => {
                c.bye_after_ack = true;
                Ok(())
            }
            State::Confirmed => {
                self.send_bye(now, id);
                Ok(())
            }
            State::Terminating => Ok(()),
        }
    }

    /// A re-INVITE with a new offer (hold, unhold, codec change).
    pub fn reinvite(&mut self, now: Instant, id: CallId, sdp: &str) -> Result<(), SipError> {
        self.send_reinvite(now, id, sdp.to_string(), false)
    }

    /// REFER the peer to `target` (blind transfer).
    pub fn refer(&mut self, now: Instant, id: CallId, target: &str) -> Result<(), SipError> {
        if rsip::Uri::try_from(target).is_err() || target.contains(['\r', '\n', '<', '>']) {
            return Err(SipError::InvalidUri);
        }
        self.in_dialog(now, id, Owner::Refer(id), |d, via| d.refer(via, target))
    }

    /// NOTIFY the referrer of our progress on its REFER (sipfrag status).
    pub fn refer_progress(
        &mut self,
        now: Instant,
        id: CallId,
        status: u16,
    ) -> Result<(), SipError> {
        if !(100..700).contains(&status) {
            return Err(SipError::Status);
        }
        self.in_dialog(now, id, Owner::InDialog(id), |d, via| {
            d.notify_refer(via, status, reason_phrase(status))
        })
    }

    /// A DTMF digit by SIP INFO (160 ms).
    pub fn send_dtmf_info(
        &mut self,
        now: Instant,
        id: CallId,
        digit: char,
    ) -> Result<(), SipError> {
        if !(digit.is_ascii_digit() || "*#ABCD".contains(digit)) {
            return Err(SipError::State("not a DTMF digit"));
        }
        self.in_dialog(now, id, Owner::InDialog(id), |d, via| {
            d.info_dtmf(via, digit, 160)
        })
    }

    /// OPTIONS keepalive to a peer; the result comes as OptionsResult.
    pub fn options(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        kind: TransportKind,
    ) -> Result<(), SipError> {
        self.epoch(now);
        let local = self.local_addr(kind).ok_or(SipError::NoLocalAddress)?;
        let transport = Transport {
            kind,
            local,
            remote: peer,
        };
        let (via, branch) = self.via(transport);
        let tag = self.random_hex(6);
        let call_id = format!("{}@{}", self.random_hex(12), self.config.domain);
        let uri = format!("sip:{peer}");
        let b = Builder::request(Method::Options, uri.clone())
            .header("Via", via)
            .header("Max-Forwards", "70")
            .header(
                "From",
                format!("<sip:keepalive@{}>;tag={tag}", self.config.domain),
            )
            .header("To", format!("<{uri}>"))
            .header("Call-ID", call_id)
            .header("CSeq", "1 OPTIONS")
            .header("Accept", "application/sdp")
            .header("User-Agent", self.config.user_agent.clone());
        self.start_client(
            now,
            transport,
            &branch,
            Method::Options,
            b.build(),
            Owner::Options(peer, kind),
            None,
        );
        Ok(())
    }
}

/// Below this many slots a table is left alone.
const SPARSE_KEEP: usize = 64;

/// Shrinks a hash table that is less than an eighth full to about twice its
/// entries. Hash tables never shrink by themselves: a burst of calls (every
/// transaction lingers 32 s for Timer J/L) would keep its peak allocation
/// for the life of the process, which looks like a leak per call. The
/// hysteresis keeps the rehash amortized O(1) per removed entry.
pub fn shrink_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > SPARSE_KEEP && map.len() * 8 < map.capacity() {
        map.shrink_to((map.len() * 2).max(SPARSE_KEEP / 2));
    }
}

/// The bytes a hash table's buckets take (approximately: slots and control bytes).
pub fn table_bytes<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    map.capacity() * (std::mem::size_of::<(K, V)>() + 1)
}

fn authorization(req: &Request) -> Option<&str> {
    req.header("Authorization")
        .or_else(|| req.header("Proxy-Authorization"))
}

fn b_method(b: &Builder) -> &str {
    b.method_name()
}

fn sdp_of(res: &Response) -> Option<Sdp> {
    if res.body.is_empty() || res.content_type().as_deref() != Some("application/sdp") {
        return None;
    }
    Sdp::parse(&res.body).ok()
}

/// The ACK for a non-2xx (RFC 3261 17.1.1.3): the INVITE's Request-URI,
/// top Via, From, Call-ID, CSeq number and Route, the response's To.
fn non_2xx_ack(meta: &InviteMeta, res: &Response) -> Vec<u8> {
    let mut b = Builder::request(Method::Ack, meta.uri.clone())
        .header("Via", meta.via.clone())
        .header("Max-Forwards", "70")
        .header("From", meta.from.clone())
        .header("To", res.core.to.raw.clone())
        .header("Call-ID", meta.call_id.clone())
        .header("CSeq", format!("{} ACK", meta.cseq));
    for r in &meta.routes {
        b.push_header("Route", r.clone());
    }
    b.build()
}

/// `Session-Expires: 1800;refresher=uac` → (1800, Some(true)).
fn parse_session_expires(v: &str) -> Option<(u32, Option<bool>)> {
    let mut parts = v.split(';');
    let interval = parts.next()?.trim().parse::<u32>().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(true),
            "uas" => Some(false),
            _ => None,
        }
    });
    Some((interval, refresher))
}

/// When the refresher refreshes: half the interval (RFC 4028 10).
fn refresh_wait(interval: u32) -> Duration {
    Duration::from_secs(u64::from(interval) / 2)
}

/// When the other side gives up: interval - min(32, interval/3).
fn expiry_wait(interval: u32) -> Duration {
    let i = u64::from(interval);
    Duration::from_secs(i - (i / 3).min(32))
}
