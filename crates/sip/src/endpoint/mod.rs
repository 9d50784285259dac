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
//!
//! Layout: this file holds the public types, the `Endpoint` itself and the
//! network input; `call` the per-call and per-transaction records; `uas`
//! the requests peers send us; `answer` the glue's decisions on incoming
//! calls; `uac` our INVITE, CANCEL and OPTIONS and the responses to them;
//! `in_dialog` BYE, re-INVITE, REFER, NOTIFY and INFO inside a dialog;
//! `timers` the transaction and session timers; `tables` the table sizes,
//! their shrinking and call removal.

mod answer;
mod call;
mod in_dialog;
mod tables;
mod timers;
mod uac;
mod uas;

pub use tables::{LiveState, shrink_sparse, table_bytes};

use call::{Call, ClientEntry, InviteMeta, Owner, ServerEntry};

use crate::auth::DigestCredentials;
use crate::message::{self, MAX_MESSAGE_SIZE, Message, Method, ParseError, StreamFramer};
use crate::sdp::Sdp;
use crate::transaction::{ClientTransaction, Timers, TxKey};
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

    fn epoch(&mut self, now: Instant) -> Instant {
        *self.epoch.get_or_insert(now)
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
}
