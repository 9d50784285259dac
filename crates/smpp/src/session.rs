//! The sans-IO ESME session: one bind_transceiver over one connection.
//! Fed the bytes the SMSC sent ([`Session::handle_input`]) and the time
//! ([`Session::handle_timeout`]), it answers with bytes to write
//! ([`Session::poll_transmit`]), events ([`Session::poll_event`]) and when
//! it next wants the time ([`Session::poll_timeout`]). No sockets, no
//! clock reads, no tasks: every command takes `now` from its host.
//!
//! A session lives as long as its connection; the host makes a new one per
//! connection and resubmits what came back as [`Event::NotSent`]. Messages
//! carry an opaque tag `T` (the host's or outbox's id) that comes back in
//! every event about them.
//!
//! Flow control: at most `window` submit_sm are unanswered at a time
//! (enquire_link, bind and unbind are outside the window); an optional
//! `max_submits_per_sec` spaces them; a throttling answer (ESME_RTHROTTLED,
//! ESME_RMSGQFUL) puts that segment back at the head of the queue and
//! pauses all submits for a backoff that doubles while the SMSC keeps
//! throttling.

use crate::inbound::{self, Inbound, Reassembler};
use crate::pdu::{
    self, Address, Bind, Body, DecodeError, EncodeError, Header, INTERFACE_VERSION, MAX_SEQUENCE,
    Pdu, Sm, Status, command, esm,
};
use crate::receipt::{self, Receipt};
use crate::text::{self, SplitError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The password is left out of `Debug`.
#[derive(Clone)]
pub struct Config {
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub address_range: String,
    /// Unanswered submit_sm at most.
    pub window: usize,
    /// How long a request may wait for its response.
    pub response_timeout: Duration,
    /// enquire_link after this long without a byte from the SMSC; the link
    /// is dead if it goes unanswered for `response_timeout`.
    pub enquire_link_interval: Duration,
    /// submit_sm per second at most (0: no limit beyond the window).
    pub max_submits_per_sec: u32,
    /// The first pause after a throttling answer; doubles per further
    /// throttling answer up to `throttle_backoff_max`.
    pub throttle_backoff: Duration,
    pub throttle_backoff_max: Duration,
    /// Throttling answers one message may get before it is reported failed
    /// (retryable).
    pub max_throttle_retries: u32,
    /// Segments a message may be split into (at most 255).
    pub max_segments: usize,
    /// The first concatenation reference (the host picks one at random per
    /// connection so that references do not repeat after a reconnect).
    pub first_reference: u8,
    /// How long the parts of an incoming concatenated message are held.
    pub reassembly_timeout: Duration,
    /// Incoming concatenated messages held at once.
    pub max_reassembly: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("address_range", &self.address_range)
            .field("window", &self.window)
            .field("response_timeout", &self.response_timeout)
            .field("enquire_link_interval", &self.enquire_link_interval)
            .field("max_submits_per_sec", &self.max_submits_per_sec)
            .field("throttle_backoff", &self.throttle_backoff)
            .field("throttle_backoff_max", &self.throttle_backoff_max)
            .field("max_throttle_retries", &self.max_throttle_retries)
            .field("max_segments", &self.max_segments)
            .field("first_reference", &self.first_reference)
            .field("reassembly_timeout", &self.reassembly_timeout)
            .field("max_reassembly", &self.max_reassembly)
            .finish()
    }
}

impl Config {
    pub fn new(system_id: impl Into<String>, password: impl Into<String>) -> Self {
        Config {
            system_id: system_id.into(),
            password: password.into(),
            system_type: String::new(),
            address_range: String::new(),
            window: 10,
            response_timeout: Duration::from_secs(10),
            enquire_link_interval: Duration::from_secs(30),
            max_submits_per_sec: 0,
            throttle_backoff: Duration::from_secs(1),
            throttle_backoff_max: Duration::from_secs(30),
            max_throttle_retries: 10,
            max_segments: 10,
            first_reference: 0,
            reassembly_timeout: Duration::from_secs(120),
            max_reassembly: 256,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value, max) in [
            ("system_id", &self.system_id, 15),
            ("password", &self.password, 8),
            ("system_type", &self.system_type, 12),
            ("address_range", &self.address_range, 40),
        ] {
            if value.chars().count() > max {
                return Err(ConfigError::TooLong { field, max });
            }
            if !value.chars().all(|c| c.is_ascii() && c != '\0') {
                return Err(ConfigError::NotAscii { field });
            }
        }
        for (field, ok) in [
            ("window", self.window >= 1),
            ("max_segments", (1..=255).contains(&self.max_segments)),
            ("response_timeout", !self.response_timeout.is_zero()),
            (
                "enquire_link_interval",
                !self.enquire_link_interval.is_zero(),
            ),
            ("max_reassembly", self.max_reassembly >= 1),
        ] {
            if !ok {
                return Err(ConfigError::OutOfRange { field });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{field}: longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{field}: only ASCII characters other than NUL are allowed")]
    NotAscii { field: &'static str },
    #[error("{field}: out of range")]
    OutOfRange { field: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected, bind not sent yet.
    Unbound,
    Binding,
    Bound,
    /// unbind sent; responses to what is in flight are still taken.
    Unbinding,
    Closed,
}

/// A text message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    /// `+` and digits (international), digits, an alphanumeric sender ID
    /// (up to 11 characters), or empty for the SMSC's default.
    pub source: String,
    /// `+` and digits (international) or digits.
    pub destination: String,
    pub text: String,
    /// Ask for a delivery receipt (registered_delivery 0x01).
    pub registered_delivery: bool,
}

impl SubmitRequest {
    /// Checks the addresses and that the text fits `max_segments`;
    /// returns the segment count.
    pub fn check(&self, max_segments: usize) -> Result<usize, SubmitError> {
        address("source", &self.source, true)?;
        address("destination", &self.destination, false)?;
        Ok(text::split(&self.text, 0, max_segments)?.parts.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubmitError {
    #[error("{field}: {reason}")]
    Address {
        field: &'static str,
        reason: &'static str,
    },
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("session: closed, nothing more can be sent on it")]
    Closed,
    #[error("session: unbinding, nothing more can be sent on it")]
    Unbinding,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// bind_transceiver_resp (or generic_nack) with an error.
    BindRefused(Status),
    BindTimeout,
    /// enquire_link went unanswered.
    LinkDead,
    /// The SMSC sent unbind.
    UnbindByPeer,
    /// We unbound (or the unbind timed out).
    Unbound,
    /// The host reports the connection gone.
    ConnectionLost,
    /// The SMSC sent a command_length we cannot frame past.
    Protocol(DecodeError),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::BindRefused(s) => write!(f, "bind refused with {s}"),
            CloseReason::BindTimeout => f.write_str("bind_transceiver went unanswered"),
            CloseReason::LinkDead => f.write_str("enquire_link went unanswered"),
            CloseReason::UnbindByPeer => f.write_str("the SMSC unbound"),
            CloseReason::Unbound => f.write_str("unbound"),
            CloseReason::ConnectionLost => f.write_str("connection lost"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    Bound {
        system_id: String,
    },
    BindFailed {
        status: Status,
    },
    /// Every segment was accepted; one message_id per segment, in order
    /// (receipts name these).
    Submitted {
        msg_ref: T,
        message_ids: Vec<String>,
    },
    /// A segment was refused. Segments not sent yet are dropped; with more
    /// than one segment, earlier ones may have been accepted.
    SubmitFailed {
        msg_ref: T,
        status: Status,
        retryable: bool,
    },
    /// Some segment went out and its fate is unknown (no response before a
    /// timeout or the end of the session): the SMSC may or may not have
    /// taken it, and the caller's outbox decides.
    Unconfirmed {
        msg_ref: T,
    },
    /// The session ended before any segment went out: safe to send again.
    NotSent {
        msg_ref: T,
    },
    /// The SMSC asked us to slow down; submits pause for `pause`.
    Throttled {
        status: Status,
        pause: Duration,
    },
    Inbound(Inbound),
    Receipt(Receipt),
    /// Last event of a session; the host closes the connection after
    /// writing what [`Session::poll_transmit`] still has.
    Closed {
        reason: CloseReason,
    },
}

struct Message<T> {
    tag: T,
    ids: Vec<Option<String>>,
    acked: usize,
    /// Some segment was written to the connection.
    written: bool,
    throttles: u32,
}

struct Queued {
    msg: u64,
    seg: usize,
    sm: Sm,
}

enum Pending {
    Bind,
    Submit(Box<Queued>),
    EnquireLink,
    Unbind,
}

struct InFlight {
    what: Pending,
    deadline: Instant,
}

pub struct Session<T> {
    config: Config,
    state: State,
    rx: Vec<u8>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event<T>>,
    next_seq: u32,
    next_msg: u64,
    next_ref: u8,
    messages: BTreeMap<u64, Message<T>>,
    queue: VecDeque<Queued>,
    in_flight: HashMap<u32, InFlight>,
    submits_in_flight: usize,
    enquire_outstanding: bool,
    /// Send an enquire_link now (a submit timed out: is the link alive?).
    probe: bool,
    last_rx: Option<Instant>,
    paused_until: Option<Instant>,
    throttle_streak: u32,
    next_submit_at: Option<Instant>,
    reassembler: Reassembler,
}

impl<T> Session<T> {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Session {
            reassembler: Reassembler::new(config.reassembly_timeout, config.max_reassembly),
            next_ref: config.first_reference,
            config,
            state: State::Unbound,
            rx: Vec::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            next_seq: 1,
            next_msg: 0,
            messages: BTreeMap::new(),
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            submits_in_flight: 0,
            enquire_outstanding: false,
            probe: false,
            last_rx: None,
            paused_until: None,
            throttle_streak: 0,
            next_submit_at: None,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// submit_sm awaiting their response.
    pub fn in_flight(&self) -> usize {
        self.submits_in_flight
    }

    /// Segments waiting for room in the window (or the end of a pause).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Hands over the parts of incoming concatenated messages held, so the
    /// next connection's session can finish them
    /// ([`Session::resume_reassembly`]).
    pub fn take_reassembly(&mut self) -> Reassembler {
        let empty = Reassembler::new(self.config.reassembly_timeout, self.config.max_reassembly);
        std::mem::replace(&mut self.reassembler, empty)
    }

    pub fn resume_reassembly(&mut self, reassembler: Reassembler) {
        self.reassembler = reassembler;
    }

    /// Sends bind_transceiver (the connection is open).
    pub fn bind(&mut self, now: Instant) {
        if self.state != State::Unbound {
            return;
        }
        let body = Body::BindTransceiver(Bind {
            system_id: self.config.system_id.clone(),
            password: self.config.password.clone(),
            system_type: self.config.system_type.clone(),
            interface_version: INTERFACE_VERSION,
            addr_ton: 0,
            addr_npi: 0,
            address_range: self.config.address_range.clone(),
        });
        self.state = State::Binding;
        self.last_rx = Some(now);
        // Config::validate bounds every field, so this encodes.
        let _ = self.request(now, body, Pending::Bind);
    }

    /// Splits and queues a message; it goes out once bound, as the window
    /// and throttling allow. Every outcome comes back as an event with
    /// `msg_ref`.
    pub fn submit(
        &mut self,
        now: Instant,
        msg_ref: T,
        req: SubmitRequest,
    ) -> Result<(), SubmitError> {
        match self.state {
            State::Closed => return Err(SubmitError::Closed),
            State::Unbinding => return Err(SubmitError::Unbinding),
            _ => {}
        }
        let source = address("source", &req.source, true)?;
        let destination = address("destination", &req.destination, false)?;
        let segments = text::split(&req.text, self.next_ref, self.config.max_segments)?;
        let esm_class = if segments.udh { esm::UDHI } else { 0 };
        let parts: Vec<Sm> = segments
            .parts
            .into_iter()
            .map(|short_message| Sm {
                source: source.clone(),
                destination: destination.clone(),
                esm_class,
                registered_delivery: u8::from(req.registered_delivery),
                data_coding: segments.coding.data_coding(),
                short_message,
                ..Sm::default()
            })
            .collect();
        // The fields were checked above; this catches the rest before the
        // message is accepted.
        for sm in &parts {
            Pdu {
                sequence: 1,
                status: Status::OK,
                body: Body::SubmitSm(sm.clone()),
            }
            .encode()?;
        }
        if segments.udh {
            self.next_ref = self.next_ref.wrapping_add(1);
        }
        let msg = self.next_msg;
        self.next_msg += 1;
        self.messages.insert(
            msg,
            Message {
                tag: msg_ref,
                ids: vec![None; parts.len()],
                acked: 0,
                written: false,
                throttles: 0,
            },
        );
        for (seg, sm) in parts.into_iter().enumerate() {
            self.queue.push_back(Queued { msg, seg, sm });
        }
        self.pump(now);
        Ok(())
    }

    /// Sends unbind (or ends at once if not bound yet). Queued messages
    /// come back as [`Event::NotSent`] when the session closes.
    pub fn unbind(&mut self, now: Instant) {
        match self.state {
            State::Bound => {
                self.state = State::Unbinding;
                let _ = self.request(now, Body::Unbind, Pending::Unbind);
            }
            State::Unbound | State::Binding => self.close(CloseReason::Unbound),
            State::Unbinding | State::Closed => {}
        }
    }

    /// The host's connection ended (EOF, reset, write error).
    pub fn connection_lost(&mut self) {
        self.transmit.clear();
        self.close(CloseReason::ConnectionLost);
    }

    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.rx.extend_from_slice(bytes);
        self.last_rx = Some(now);
        let mut start = 0;
        while self.state != State::Closed {
            match pdu::frame_len(&self.rx[start..]) {
                Ok(None) => break,
                Ok(Some(len)) if self.rx.len() - start < len => break,
                Ok(Some(len)) => {
                    let frame = self.rx[start..start + len].to_vec();
                    start += len;
                    self.handle_frame(now, &frame);
                }
                Err(e) => {
                    // No way to find the next PDU: refuse this one and end.
                    if let Some(h) = Header::peek(&self.rx[start..]) {
                        self.respond(h.sequence, e.nack_status(), Body::GenericNack);
                    }
                    self.rx.clear();
                    start = 0;
                    self.close(CloseReason::Protocol(e));
                }
            }
        }
        self.rx.drain(..start.min(self.rx.len()));
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let mut due: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        due.sort_unstable();
        for seq in due {
            let Some(entry) = self.in_flight.remove(&seq) else {
                continue;
            };
            match entry.what {
                Pending::Bind => return self.close(CloseReason::BindTimeout),
                Pending::EnquireLink => return self.close(CloseReason::LinkDead),
                Pending::Unbind => return self.close(CloseReason::Unbound),
                Pending::Submit(q) => {
                    self.submits_in_flight -= 1;
                    if let Some(m) = self.drop_message(q.msg) {
                        self.events.push_back(Event::Unconfirmed { msg_ref: m.tag });
                    }
                    // Are responses lost, or is the link gone?
                    self.probe = true;
                }
            }
        }
        for m in self.reassembler.expire(now) {
            self.events.push_back(Event::Inbound(m));
        }
        self.pump(now);
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut next = self.in_flight.values().map(|f| f.deadline).min();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.state == State::Bound {
            if !self.enquire_outstanding {
                consider(self.last_rx.map(|t| t + self.config.enquire_link_interval));
            }
            if !self.queue.is_empty() && self.submits_in_flight < self.config.window {
                match (self.paused_until, self.next_submit_at) {
                    (Some(a), Some(b)) => consider(Some(a.max(b))),
                    (a, b) => consider(a.or(b)),
                }
            }
        }
        consider(self.reassembler.next_expiry());
        next
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    fn next_sequence(&mut self) -> u32 {
        loop {
            let seq = self.next_seq;
            self.next_seq = if seq >= MAX_SEQUENCE { 1 } else { seq + 1 };
            if !self.in_flight.contains_key(&seq) {
                return seq;
            }
        }
    }

    /// Sends a request and waits for its response until the timeout.
    fn request(&mut self, now: Instant, body: Body, what: Pending) -> Result<u32, EncodeError> {
        let sequence = self.next_sequence();
        let bytes = Pdu {
            sequence,
            status: Status::OK,
            body,
        }
        .encode()?;
        self.transmit.push_back(bytes);
        self.in_flight.insert(
            sequence,
            InFlight {
                what,
                deadline: now + self.config.response_timeout,
            },
        );
        Ok(sequence)
    }

    fn respond(&mut self, sequence: u32, status: Status, body: Body) {
        let pdu = Pdu {
            sequence,
            status,
            body,
        };
        // Responses we build always encode (empty or short fields).
        if let Ok(bytes) = pdu.encode() {
            self.transmit.push_back(bytes);
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        let pdu = match Pdu::decode(frame) {
            Ok(pdu) => pdu,
            Err(e) => {
                let Some(h) = Header::peek(frame) else {
                    return;
                };
                let unknown = matches!(e, DecodeError::UnknownCommand(_));
                // Unknown responses and alert_notification (which has none)
                // are dropped; anything else we cannot read is refused.
                if !(unknown && command::is_response(h.command_id))
                    && h.command_id != command::ALERT_NOTIFICATION
                    && h.command_id != command::GENERIC_NACK
                {
                    self.respond(h.sequence, e.nack_status(), Body::GenericNack);
                }
                return;
            }
        };
        let seq = pdu.sequence;
        match pdu.body {
            Body::EnquireLink => self.respond(seq, Status::OK, Body::EnquireLinkResp),
            Body::Unbind => {
                self.respond(seq, Status::OK, Body::UnbindResp);
                self.close(CloseReason::UnbindByPeer);
            }
            Body::DeliverSm(sm) => self.on_deliver(now, seq, sm),
            Body::BindTransceiverResp { system_id, .. } => {
                if self.take(seq, |p| matches!(p, Pending::Bind)).is_some() {
                    self.on_bind_resp(pdu.status, system_id);
                }
            }
            Body::SubmitSmResp { message_id } => {
                if let Some(Pending::Submit(q)) =
                    self.take(seq, |p| matches!(p, Pending::Submit(_)))
                {
                    self.on_submit_resp(now, *q, pdu.status, message_id);
                }
            }
            Body::EnquireLinkResp => {
                if self
                    .take(seq, |p| matches!(p, Pending::EnquireLink))
                    .is_some()
                {
                    self.enquire_outstanding = false;
                }
            }
            Body::UnbindResp => {
                if self.take(seq, |p| matches!(p, Pending::Unbind)).is_some() {
                    self.close(CloseReason::Unbound);
                }
            }
            Body::GenericNack => match self.take(seq, |_| true) {
                Some(Pending::Bind) => {
                    let status = if pdu.status.is_ok() {
                        Status::BINDFAIL
                    } else {
                        pdu.status
                    };
                    self.on_bind_resp(status, String::new());
                }
                Some(Pending::Submit(q)) => {
                    let status = if pdu.status.is_ok() {
                        Status::SYSERR
                    } else {
                        pdu.status
                    };
                    self.on_submit_resp(now, *q, status, String::new());
                }
                // The SMSC does not know enquire_link, but it answered.
                Some(Pending::EnquireLink) => self.enquire_outstanding = false,
                Some(Pending::Unbind) => self.close(CloseReason::Unbound),
                None => {}
            },
            // Requests an SMSC does not send to an ESME.
            Body::BindTransceiver(_) | Body::SubmitSm(_) => {
                self.respond(seq, Status::INVCMDID, Body::GenericNack)
            }
            Body::DeliverSmResp { .. } => {}
        }
    }

    /// Removes the in-flight request `seq` if `kind` accepts it (a response
    /// of another kind with the same sequence is ignored).
    fn take(&mut self, seq: u32, kind: impl Fn(&Pending) -> bool) -> Option<Pending> {
        if !self.in_flight.get(&seq).is_some_and(|f| kind(&f.what)) {
            return None;
        }
        let entry = self.in_flight.remove(&seq)?;
        if let Pending::Submit(_) = entry.what {
            self.submits_in_flight -= 1;
        }
        Some(entry.what)
    }

    fn on_bind_resp(&mut self, status: Status, system_id: String) {
        if self.state != State::Binding {
            return;
        }
        if status.is_ok() {
            self.state = State::Bound;
            self.events.push_back(Event::Bound { system_id });
        } else {
            self.events.push_back(Event::BindFailed { status });
            self.close(CloseReason::BindRefused(status));
        }
    }

    fn on_submit_resp(&mut self, now: Instant, q: Queued, status: Status, message_id: String) {
        let Some(m) = self.messages.get_mut(&q.msg) else {
            // Already failed or timed out.
            return;
        };
        if status.is_ok() {
            self.throttle_streak = 0;
            if m.ids[q.seg].is_none() {
                m.ids[q.seg] = Some(message_id);
                m.acked += 1;
            }
            if m.acked == m.ids.len()
                && let Some(m) = self.messages.remove(&q.msg)
            {
                self.events.push_back(Event::Submitted {
                    msg_ref: m.tag,
                    message_ids: m.ids.into_iter().flatten().collect(),
                });
            }
            return;
        }
        if status.is_throttling() && m.throttles < self.config.max_throttle_retries {
            m.throttles += 1;
            // Back at its place in the queue, ahead of later segments.
            let key = (q.msg, q.seg);
            let at = self
                .queue
                .iter()
                .position(|e| (e.msg, e.seg) > key)
                .unwrap_or(self.queue.len());
            self.queue.insert(at, q);
            if self.paused_until.is_none_or(|t| t <= now) {
                let factor = 1u32 << self.throttle_streak.min(16);
                let pause = self
                    .config
                    .throttle_backoff
                    .saturating_mul(factor)
                    .min(self.config.throttle_backoff_max);
                self.throttle_streak += 1;
                self.paused_until = Some(now + pause);
                self.events.push_back(Event::Throttled { status, pause });
            }
            return;
        }
        if let Some(m) = self.drop_message(q.msg) {
            self.events.push_back(Event::SubmitFailed {
                msg_ref: m.tag,
                status,
                retryable: status.is_retryable(),
            });
        }
    }

    /// Forgets a message and its queued segments (in-flight ones still
    /// hold their window slot until answered or timed out).
    fn drop_message(&mut self, msg: u64) -> Option<Message<T>> {
        let m = self.messages.remove(&msg)?;
        self.queue.retain(|q| q.msg != msg);
        Some(m)
    }

    fn on_deliver(&mut self, now: Instant, seq: u32, sm: Sm) {
        if !matches!(self.state, State::Bound | State::Unbinding) {
            self.respond(
                seq,
                Status::INVBNDSTS,
                Body::DeliverSmResp {
                    message_id: String::new(),
                },
            );
            return;
        }
        if receipt::is_receipt(&sm) {
            if let Some(r) = receipt::from_deliver_sm(&sm) {
                self.events.push_back(Event::Receipt(r));
            }
        } else {
            let part = inbound::part_of(&sm);
            for m in self
                .reassembler
                .push(now, &sm.source.addr, &sm.destination.addr, part)
            {
                self.events.push_back(Event::Inbound(m));
            }
        }
        self.respond(
            seq,
            Status::OK,
            Body::DeliverSmResp {
                message_id: String::new(),
            },
        );
    }

    /// Sends what the window, the pause and the rate allow, and an
    /// enquire_link when the link has been quiet.
    fn pump(&mut self, now: Instant) {
        if self.state != State::Bound {
            return;
        }
        if !self.enquire_outstanding {
            let quiet = self
                .last_rx
                .is_some_and(|t| now >= t + self.config.enquire_link_interval);
            if (self.probe || quiet)
                && self
                    .request(now, Body::EnquireLink, Pending::EnquireLink)
                    .is_ok()
            {
                self.enquire_outstanding = true;
                self.probe = false;
            }
        }
        while self.submits_in_flight < self.config.window && !self.queue.is_empty() {
            if self.paused_until.is_some_and(|t| now < t) {
                break;
            }
            self.paused_until = None;
            if self.next_submit_at.is_some_and(|t| now < t) {
                break;
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let sm = q.sm.clone();
            let msg = q.msg;
            match self.request(now, Body::SubmitSm(sm), Pending::Submit(Box::new(q))) {
                Ok(_) => {
                    self.submits_in_flight += 1;
                    if let Some(m) = self.messages.get_mut(&msg) {
                        m.written = true;
                    }
                }
                Err(_) => {
                    // Checked in submit(); kept total all the same.
                    if let Some(m) = self.drop_message(msg) {
                        self.events.push_back(Event::SubmitFailed {
                            msg_ref: m.tag,
                            status: Status::INVMSGLEN,
                            retryable: false,
                        });
                    }
                }
            }
            if self.config.max_submits_per_sec > 0 {
                let interval = Duration::from_secs(1) / self.config.max_submits_per_sec;
                self.next_submit_at = Some(match self.next_submit_at {
                    Some(prev) if now < prev + interval => prev + interval,
                    _ => now + interval,
                });
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        for (_, m) in std::mem::take(&mut self.messages) {
            self.events.push_back(if m.written {
                Event::Unconfirmed { msg_ref: m.tag }
            } else {
                Event::NotSent { msg_ref: m.tag }
            });
        }
        self.queue.clear();
        self.in_flight.clear();
        self.submits_in_flight = 0;
        self.events.push_back(Event::Closed { reason });
    }

    #[cfg(test)]
    fn set_next_sequence(&mut self, seq: u32) {
        self.next_seq = seq;
    }
}

/// An address for submit_sm: `+digits` is international (TON 1, NPI 1,
/// sent without the `+`); plain digits are left to the SMSC (TON 0, NPI
/// 1); a source may be an alphanumeric sender ID (TON 5, NPI 0).
fn address(field: &'static str, s: &str, source: bool) -> Result<Address, SubmitError> {
    let err = |reason| SubmitError::Address { field, reason };
    if s.is_empty() {
        return if source {
            Ok(Address::default())
        } else {
            Err(err("empty"))
        };
    }
    if let Some(digits) = s.strip_prefix('+') {
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("an international number is + and 1 to 15 digits"));
        }
        return Ok(Address {
            ton: 1,
            npi: 1,
            addr: digits.to_owned(),
        });
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        if s.len() > 20 {
            return Err(err("more than 20 digits"));
        }
        return Ok(Address {
            ton: 0,
            npi: 1,
            addr: s.to_owned(),
        });
    }
    if !source {
        return Err(err("not a phone number (+ and digits, or digits)"));
    }
    if s.chars().count() > 11 || !s.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(err(
            "an alphanumeric sender ID is at most 11 printable ASCII characters",
        ));
    }
    Ok(Address {
        ton: 5,
        npi: 0,
        addr: s.to_owned(),
    })
}

#[cfg(test)]
mod tests;
