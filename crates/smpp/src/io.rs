//! Thin tokio host around the sans-IO [`Session`]: one task owns the TCP
//! connection to the SMSC, binds as a transceiver, drives the session's
//! timers, and reconnects with exponential backoff and jitter after a drop
//! or a refused bind (the cause is logged and kept in [`LinkStatus`]).
//!
//! The server talks to it through a cheap cloneable [`Client`]:
//! [`Client::submit`] resolves once every segment is accepted (or with a
//! typed [`SmppError`] saying whether to retry), and the receiver returned
//! by [`Client::start`] yields handset messages and delivery receipts.
//!
//! Submits made while the link is down wait (up to `submit_timeout`) and
//! go out after the next bind; messages a dropped session had not sent yet
//! go out again on the next one. Messages that were on the wire when the
//! link dropped are *not* resent: they fail as [`SmppError::Unconfirmed`]
//! and the caller's durable outbox decides.
//!
//! deliver_sm is acknowledged once its event is handed to the channel;
//! the channel's consumer is where it becomes durable.

use crate::inbound::{Inbound, Reassembler};
use crate::pdu::Status;
use crate::receipt::Receipt;
use crate::session::{
    CloseReason, Config, ConfigError, Event, Session, SubmitError, SubmitRequest,
};
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

/// Where and how to reach the SMSC.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    /// system_id, password, system_type, window, enquire_link interval,
    /// response timeout, max submits per second, throttling backoff ...
    pub session: Config,
    pub connect_timeout: Duration,
    /// The first wait before reconnecting; doubles per failed attempt up
    /// to `reconnect_backoff_max`, and starts over after a bind. Each wait
    /// is jittered down by up to half.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// How long a submit may wait for a bound link before it fails with
    /// [`SmppError::NotSent`].
    pub submit_timeout: Duration,
    /// Handset messages and receipts buffered for the consumer.
    pub incoming_buffer: usize,
}

impl ClientConfig {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        system_id: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        ClientConfig {
            host: host.into(),
            port,
            session: Config::new(system_id, password),
            connect_timeout: Duration::from_secs(10),
            reconnect_backoff_min: Duration::from_millis(500),
            reconnect_backoff_max: Duration::from_secs(60),
            submit_timeout: Duration::from_secs(60),
            incoming_buffer: 1024,
        }
    }
}

/// A message every segment of which the SMSC accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// One per segment, in order; receipts name these.
    pub message_ids: Vec<String>,
}

/// Why a submit did not succeed, and what the caller may do about it
/// ([`SmppError::disposition`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SmppError {
    #[error("submit: the SMSC refused the message with {status}; do not retry")]
    Rejected { status: Status },
    #[error("submit: the SMSC refused the message for now with {status}; retry later")]
    Temporary { status: Status },
    #[error("submit: the link failed after the message went out; the SMSC may or may not have it")]
    Unconfirmed,
    #[error("submit: not sent ({reason}); safe to retry")]
    NotSent { reason: &'static str },
    #[error("submit: {0}")]
    Invalid(#[from] SubmitError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The SMSC did not take it; sending again is safe.
    Retry,
    /// Sending again would fail the same way.
    Permanent,
    /// It may have been sent: resending risks a duplicate, not resending
    /// risks a loss. The outbox's policy decides.
    Unconfirmed,
}

impl SmppError {
    pub fn disposition(&self) -> Disposition {
        match self {
            SmppError::Temporary { .. } | SmppError::NotSent { .. } => Disposition::Retry,
            SmppError::Rejected { .. } | SmppError::Invalid(_) => Disposition::Permanent,
            SmppError::Unconfirmed => Disposition::Unconfirmed,
        }
    }
}

/// What the SMSC delivers to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Message(Inbound),
    Receipt(Receipt),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Binding,
    Bound,
    /// Waiting to reconnect.
    Down,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub state: LinkState,
    /// Successful binds since start.
    pub binds: u64,
    /// Why the link last went down (or a bind or connect failed).
    pub last_error: Option<String>,
}

type Reply = oneshot::Sender<Result<SubmitOutcome, SmppError>>;

enum Command {
    Submit(SubmitRequest, Reply),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on the SMPP link; clones share it. The link is unbound and
/// closed when the last handle is dropped or on [`Client::shutdown`].
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    link: watch::Receiver<LinkStatus>,
    max_segments: usize,
}

impl Client {
    /// Validates the configuration and starts the link's task on the
    /// current tokio runtime.
    pub fn start(config: ClientConfig) -> Result<(Client, mpsc::Receiver<Incoming>), ConfigError> {
        config.session.validate()?;
        let (commands_tx, commands) = mpsc::channel(1024);
        let (incoming_tx, incoming) = mpsc::channel(config.incoming_buffer.max(1));
        let (link_tx, link) = watch::channel(LinkStatus {
            state: LinkState::Connecting,
            binds: 0,
            last_error: None,
        });
        let client = Client {
            commands: commands_tx,
            link,
            max_segments: config.session.max_segments,
        };
        let host = Host {
            config,
            commands,
            commands_open: true,
            incoming: incoming_tx,
            link: link_tx,
            waiting: VecDeque::new(),
            in_session: HashMap::new(),
            next_job: 0,
            stopping: false,
            stop_waiters: Vec::new(),
            reassembly: None,
        };
        tokio::spawn(host.run());
        Ok((client, incoming))
    }

    /// Sends a text message: resolves when every segment is accepted.
    /// Dropping the future does not cancel the message.
    pub async fn submit(&self, req: SubmitRequest) -> Result<SubmitOutcome, SmppError> {
        req.check(self.max_segments)?;
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Submit(req, tx))
            .await
            .map_err(|_| SmppError::NotSent {
                reason: "client stopped",
            })?;
        // The task ended without answering: it may have been on the wire.
        rx.await.unwrap_or(Err(SmppError::Unconfirmed))
    }

    /// The link's state, for health checks and tests.
    pub fn link(&self) -> watch::Receiver<LinkStatus> {
        self.link.clone()
    }

    /// Unbinds and stops; submits still waiting fail as not sent.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Job {
    req: SubmitRequest,
    reply: Reply,
    /// Fails as not sent if still waiting for a link then.
    deadline: Instant,
}

struct Host {
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    incoming: mpsc::Sender<Incoming>,
    link: watch::Sender<LinkStatus>,
    /// Submits not in a session (no bound link yet).
    waiting: VecDeque<(u64, Job)>,
    /// Submits the current session holds, by the tag it was given.
    in_session: HashMap<u64, Job>,
    next_job: u64,
    stopping: bool,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Incoming concatenated messages carried across reconnects.
    reassembly: Option<Reassembler>,
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Host {
    async fn run(mut self) {
        let addr = format!("{}:{}", self.config.host, self.config.port);
        let mut backoff = self.config.reconnect_backoff_min;
        while !self.stopping {
            self.set_link(LinkState::Connecting, None);
            let connect = tokio::time::timeout(
                self.config.connect_timeout,
                TcpStream::connect(addr.clone()),
            );
            let Some(connected) = self.idle(connect).await else {
                break;
            };
            let mut bound = false;
            let cause = match connected {
                Ok(Ok(stream)) => {
                    let (b, reason) = self.connection(stream).await;
                    bound = b;
                    reason.to_string()
                }
                Ok(Err(e)) => format!("connect failed: {e}"),
                Err(_) => "connect timed out".to_owned(),
            };
            if self.stopping {
                break;
            }
            if bound {
                backoff = self.config.reconnect_backoff_min;
            }
            let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
            warn!(smsc = %addr, %cause, ?wait, "SMPP link down; reconnecting");
            self.set_link(LinkState::Down, Some(cause));
            if self.idle(tokio::time::sleep(wait)).await.is_none() {
                break;
            }
            backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
        }
        for (_, job) in self.waiting.drain(..) {
            let _ = job.reply.send(Err(SmppError::NotSent {
                reason: "client stopped",
            }));
        }
        self.set_link(LinkState::Stopped, None);
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn set_link(&self, state: LinkState, error: Option<String>) {
        self.link.send_modify(|s| {
            if state == LinkState::Bound && s.state != LinkState::Bound {
                s.binds += 1;
            }
            s.state = state;
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    fn enqueue(&mut self, req: SubmitRequest, reply: Reply) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.waiting.push_back((
            id,
            Job {
                req,
                reply,
                deadline: Instant::now() + self.config.submit_timeout,
            },
        ));
        id
    }

    /// Stop on request, or when every handle is gone.
    fn on_stop(&mut self, done: Option<oneshot::Sender<()>>) {
        self.stopping = true;
        self.stop_waiters.extend(done);
    }

    fn expire_waiting(&mut self) {
        let now = Instant::now();
        let (due, keep): (VecDeque<_>, VecDeque<_>) =
            self.waiting.drain(..).partition(|(_, j)| j.deadline <= now);
        self.waiting = keep;
        for (_, job) in due {
            let _ = job.reply.send(Err(SmppError::NotSent {
                reason: "no bound SMPP link within submit_timeout",
            }));
        }
    }

    /// Runs `fut` while taking commands (submits wait for a link); `None`
    /// when asked to stop.
    async fn idle<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let deadline = self.waiting.iter().map(|(_, j)| j.deadline).min();
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(Command::Submit(req, reply)) => {
                        self.enqueue(req, reply);
                    }
                    Some(Command::Shutdown(done)) => {
                        self.on_stop(Some(done));
                        return None;
                    }
                    None => {
                        self.commands_open = false;
                        self.on_stop(None);
                        return None;
                    }
                },
                _ = sleep_until_opt(deadline) => self.expire_waiting(),
            }
        }
    }

    /// Gives a job to the session.
    fn hand_over(&mut self, session: &mut Session<u64>, id: u64, job: Job) {
        match session.submit(Instant::now().into_std(), id, job.req.clone()) {
            Ok(()) => {
                self.in_session.insert(id, job);
            }
            Err(e) => {
                let _ = job.reply.send(Err(SmppError::Invalid(e)));
            }
        }
    }

    /// One connection: bind, then serve until the session closes. Returns
    /// whether it bound, and why it ended.
    async fn connection(&mut self, stream: TcpStream) -> (bool, CloseReason) {
        let _ = stream.set_nodelay(true);
        let mut config = self.config.session.clone();
        config.first_reference = rand::random();
        let mut session = match Session::new(config) {
            Ok(s) => s,
            // Validated in Client::start.
            Err(_) => return (false, CloseReason::Unbound),
        };
        if let Some(r) = self.reassembly.take() {
            session.resume_reassembly(r);
        }
        session.bind(Instant::now().into_std());
        self.set_link(LinkState::Binding, None);
        while let Some((id, job)) = self.waiting.pop_front() {
            self.hand_over(&mut session, id, job);
        }
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; 16 * 1024];
        let mut bound = false;
        loop {
            while let Some(bytes) = session.poll_transmit() {
                if let Err(e) = wr.write_all(&bytes).await {
                    debug!(error = %e, "SMPP write failed");
                    session.connection_lost();
                }
            }
            let mut closed = None;
            while let Some(event) = session.poll_event() {
                if let Some(reason) = self.on_event(event, &mut bound).await {
                    closed = Some(reason);
                }
            }
            if let Some(reason) = closed {
                let _ = wr.shutdown().await;
                self.reassembly = Some(session.take_reassembly());
                return (bound, reason);
            }
            let timeout = session.poll_timeout().map(Instant::from_std);
            tokio::select! {
                read = rd.read(&mut buf) => match read {
                    Ok(0) => session.connection_lost(),
                    Ok(n) => session.handle_input(Instant::now().into_std(), &buf[..n]),
                    Err(e) => {
                        debug!(error = %e, "SMPP read failed");
                        session.connection_lost();
                    }
                },
                cmd = self.commands.recv(), if self.commands_open && !self.stopping => match cmd {
                    Some(Command::Submit(req, reply)) => {
                        let id = self.next_job;
                        self.next_job += 1;
                        let job = Job { req, reply, deadline: Instant::now() + self.config.submit_timeout };
                        self.hand_over(&mut session, id, job);
                    }
                    Some(Command::Shutdown(done)) => {
                        self.on_stop(Some(done));
                        session.unbind(Instant::now().into_std());
                    }
                    None => {
                        self.commands_open = false;
                        self.on_stop(None);
                        session.unbind(Instant::now().into_std());
                    }
                },
                _ = sleep_until_opt(timeout) => session.handle_timeout(Instant::now().into_std()),
            }
        }
    }

    fn reply(&mut self, id: u64, result: Result<SubmitOutcome, SmppError>) {
        if let Some(job) = self.in_session.remove(&id) {
            let _ = job.reply.send(result);
        }
    }

    async fn on_event(&mut self, event: Event<u64>, bound: &mut bool) -> Option<CloseReason> {
        match event {
            Event::Bound { system_id } => {
                *bound = true;
                info!(smsc = %self.config.host, %system_id, "SMPP bound as transceiver");
                self.set_link(LinkState::Bound, None);
            }
            Event::BindFailed { status } => {
                warn!(smsc = %self.config.host, %status, "SMPP bind refused");
            }
            Event::Submitted {
                msg_ref,
                message_ids,
            } => self.reply(msg_ref, Ok(SubmitOutcome { message_ids })),
            Event::SubmitFailed {
                msg_ref,
                status,
                retryable,
            } => {
                let err = if retryable {
                    SmppError::Temporary { status }
                } else {
                    SmppError::Rejected { status }
                };
                self.reply(msg_ref, Err(err));
            }
            Event::Unconfirmed { msg_ref } => self.reply(msg_ref, Err(SmppError::Unconfirmed)),
            Event::NotSent { msg_ref } => {
                if let Some(job) = self.in_session.remove(&msg_ref) {
                    if self.stopping {
                        let _ = job.reply.send(Err(SmppError::NotSent {
                            reason: "client stopped",
                        }));
                    } else {
                        self.waiting.push_back((msg_ref, job));
                    }
                }
            }
            Event::Throttled { status, pause } => {
                debug!(%status, ?pause, "SMPP submits paused by the SMSC");
            }
            Event::Inbound(m) => {
                let _ = self.incoming.send(Incoming::Message(m)).await;
            }
            Event::Receipt(r) => {
                let _ = self.incoming.send(Incoming::Receipt(r)).await;
            }
            Event::Closed { reason } => return Some(reason),
        }
        None
    }
}
