//! RFC 3261 §17 transaction state machines, with RFC 6026's Accepted
//! state for INVITE 2xx. Pure: fed events and `now`, they answer with what
//! to send; the endpoint owns the bytes' routing and the maps.
//!
//! Retransmission timers (A, E, G) run only on unreliable transports; the
//! wait timers (D, I, J, K) are zero on reliable ones, as the RFC says.

use crate::message::Method;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Cap on non-INVITE and response retransmit intervals (4 s).
    pub t2: Duration,
    /// How long the network keeps a message (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64·T1: timers B, F, H, J, L, M.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// What a transaction is found by: the top Via branch and the method (ACK
/// maps to INVITE; CANCEL has its own transaction with the INVITE's branch).
/// Server keys include sent-by, so two clients reusing a branch do not mix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub branch: String,
    pub method: Method,
    pub sent_by: String,
}

impl TxKey {
    pub fn client(branch: &str, method: &Method) -> TxKey {
        TxKey {
            branch: branch.to_string(),
            method: match method {
                Method::Ack => Method::Invite,
                m => m.clone(),
            },
            sent_by: String::new(),
        }
    }

    pub fn server(branch: &str, sent_by: &str, method: &Method) -> TxKey {
        TxKey {
            sent_by: sent_by.to_ascii_lowercase(),
            ..TxKey::client(branch, method)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing back (Timer A/B running).
    Calling,
    /// Non-INVITE sent, nothing back (Timer E/F running).
    Trying,
    Proceeding,
    /// Final non-2xx seen; absorbing retransmissions (Timer D/K).
    Completed,
    /// INVITE 2xx seen (RFC 6026): 2xx retransmissions go to the TU to
    /// re-ACK (Timer M).
    Accepted,
    Terminated,
}

/// What to do with a response a client transaction matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientVerdict {
    /// Pass it to the TU.
    Deliver,
    /// A final non-2xx to INVITE: pass it on, and the TU must build the ACK
    /// and give it to [`ClientTransaction::set_ack`].
    DeliverNeedsAck,
    /// A retransmitted final: send these bytes (the stored ACK) again.
    Resend(Vec<u8>),
    /// A retransmitted 2xx to INVITE: the TU re-sends its ACK.
    Retransmitted2xx,
    /// Nothing to do.
    Absorb,
}

/// What a client transaction's timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTimeout {
    Retransmit(Vec<u8>),
    /// Timer B or F: no final response; the TU sees a 408.
    TimedOut,
    /// Timer D, K or M: the transaction is gone.
    Terminated,
}

#[derive(Debug, Clone)]
pub struct ClientTransaction {
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ClientState,
    request: Vec<u8>,
    ack: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B/F while waiting; D/K/M once completed or accepted.
    deadline: Option<Instant>,
}

impl ClientTransaction {
    /// Starts after `request` has been sent at `now`.
    pub fn new(
        method: &Method,
        request: Vec<u8>,
        reliable: bool,
        timers: Timers,
        now: Instant,
    ) -> Self {
        let invite = *method == Method::Invite;
        ClientTransaction {
            invite,
            reliable,
            timers,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            request,
            ack: None,
            retransmit_at: (!reliable).then(|| now + timers.t1),
            interval: timers.t1,
            deadline: Some(now + timers.timeout()),
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn request(&self) -> &[u8] {
        &self.request
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// Whether a final response has been seen.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            ClientState::Completed | ClientState::Accepted | ClientState::Terminated
        )
    }

    pub fn on_response(&mut self, status: u16, now: Instant) -> ClientVerdict {
        let provisional = status < 200;
        match self.state {
            ClientState::Calling | ClientState::Trying | ClientState::Proceeding if provisional => {
                self.state = ClientState::Proceeding;
                if self.invite {
                    // Timer A stops on a provisional (17.1.1.2); B too, the
                    // TU waits for the final (or CANCELs).
                    self.retransmit_at = None;
                    self.deadline = None;
                } else if !self.reliable {
                    // Non-INVITE keeps retransmitting at T2 (17.1.2.2).
                    self.interval = self.timers.t2;
                }
                ClientVerdict::Deliver
            }
            ClientState::Calling | ClientState::Proceeding if self.invite => {
                self.retransmit_at = None;
                if (200..300).contains(&status) {
                    self.state = ClientState::Accepted;
                    self.deadline = Some(now + self.timers.timeout());
                    ClientVerdict::Deliver
                } else {
                    self.state = ClientState::Completed;
                    let wait = if self.reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    self.deadline = Some(now + wait);
                    ClientVerdict::DeliverNeedsAck
                }
            }
            ClientState::Trying | ClientState::Proceeding => {
                self.retransmit_at = None;
                self.state = ClientState::Completed;
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    self.timers.t4
                };
                self.deadline = Some(now + wait);
                ClientVerdict::Deliver
            }
            ClientState::Completed if self.invite && !provisional => match &self.ack {
                Some(ack) => ClientVerdict::Resend(ack.clone()),
                None => ClientVerdict::Absorb,
            },
            ClientState::Accepted if (200..300).contains(&status) => {
                ClientVerdict::Retransmitted2xx
            }
            _ => ClientVerdict::Absorb,
        }
    }

    /// The ACK for a non-2xx final (sent by the caller once; kept to answer
    /// retransmissions).
    pub fn set_ack(&mut self, ack: Vec<u8>) {
        self.ack = Some(ack);
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.retransmit_at, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_timeout(&mut self, now: Instant) -> Option<ClientTimeout> {
        if let Some(deadline) = self.deadline.filter(|d| *d <= now) {
            let _ = deadline;
            let waiting = matches!(
                self.state,
                ClientState::Calling | ClientState::Trying | ClientState::Proceeding
            );
            self.state = ClientState::Terminated;
            self.retransmit_at = None;
            self.deadline = None;
            return Some(if waiting {
                ClientTimeout::TimedOut
            } else {
                ClientTimeout::Terminated
            });
        }
        let at = self.retransmit_at.filter(|a| *a <= now)?;
        let _ = at;
        self.interval = if self.invite {
            self.interval * 2
        } else {
            (self.interval * 2).min(self.timers.t2)
        };
        self.retransmit_at = Some(now + self.interval);
        Some(ClientTimeout::Retransmit(self.request.clone()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, no response yet.
    Trying,
    Proceeding,
    /// Final non-2xx sent (Timer G/H for INVITE, J for non-INVITE).
    Completed,
    /// INVITE: ACK for the non-2xx received (Timer I).
    Confirmed,
    /// INVITE: 2xx sent (RFC 6026), retransmitted until its ACK (Timer L).
    Accepted,
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTimeout {
    Retransmit(Vec<u8>),
    /// Timer H: no ACK for our non-2xx; or Timer L with the 2xx never
    /// ACKed (the TU ends the call with a BYE, RFC 3261 13.3.1.4).
    NoAck,
    Terminated,
}

#[derive(Debug, Clone)]
pub struct ServerTransaction {
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    deadline: Option<Instant>,
    acked: bool,
}

impl ServerTransaction {
    pub fn new(method: &Method, reliable: bool, timers: Timers) -> Self {
        let invite = *method == Method::Invite;
        ServerTransaction {
            invite,
            reliable,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            retransmit_at: None,
            interval: timers.t1,
            deadline: None,
            acked: false,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Whether a final response has been sent.
    pub fn is_final(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }

    /// Records a response the TU sends now. Returns false (and records
    /// nothing) when the transaction is past accepting one.
    pub fn send_response(&mut self, status: u16, bytes: Vec<u8>, now: Instant) -> bool {
        if self.is_final() {
            return false;
        }
        self.last_response = Some(bytes);
        if status < 200 {
            self.state = ServerState::Proceeding;
            return true;
        }
        if self.invite && status < 300 {
            // 2xx retransmission is end to end (13.3.1.4): on every transport.
            self.state = ServerState::Accepted;
            self.interval = self.timers.t1;
            self.retransmit_at = Some(now + self.interval);
            self.deadline = Some(now + self.timers.timeout());
        } else if self.invite {
            self.state = ServerState::Completed;
            self.interval = self.timers.t1;
            self.retransmit_at = (!self.reliable).then(|| now + self.interval);
            self.deadline = Some(now + self.timers.timeout());
        } else {
            self.state = ServerState::Completed;
            let wait = if self.reliable {
                Duration::ZERO
            } else {
                self.timers.timeout()
            };
            self.deadline = Some(now + wait);
        }
        true
    }

    /// A retransmission of the request arrived: the bytes to send again.
    pub fn on_retransmit(&self) -> Option<Vec<u8>> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            // Accepted: the INVITE is absorbed (RFC 6026 8.5); the 2xx timer
            // keeps running.
            _ => None,
        }
    }

    /// An ACK for this INVITE: for a non-2xx, matched by branch; for the
    /// 2xx, the endpoint finds it through the dialog. Returns true for the
    /// first ACK of a 2xx (the call is confirmed).
    pub fn on_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.retransmit_at = None;
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    self.timers.t4
                };
                self.deadline = Some(now + wait);
                false
            }
            ServerState::Accepted if !self.acked => {
                // Stay until L to absorb INVITE retransmissions.
                self.acked = true;
                self.retransmit_at = None;
                true
            }
            _ => false,
        }
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.retransmit_at, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_timeout(&mut self, now: Instant) -> Option<ServerTimeout> {
        if self.deadline.is_some_and(|d| d <= now) {
            let no_ack = match self.state {
                ServerState::Completed => self.invite,
                ServerState::Accepted => !self.acked,
                _ => false,
            };
            self.state = ServerState::Terminated;
            self.retransmit_at = None;
            self.deadline = None;
            return Some(if no_ack {
                ServerTimeout::NoAck
            } else {
                ServerTimeout::Terminated
            });
        }
        if self.retransmit_at.is_none_or(|a| a > now) {
            return None;
        }
        self.interval = (self.interval * 2).min(self.timers.t2);
        self.retransmit_at = Some(now + self.interval);
        self.last_response.clone().map(ServerTimeout::Retransmit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_client_timer_a_doubles_until_b() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            &Method::Invite,
            b"INVITE".to_vec(),
            false,
            Timers::default(),
            t0,
        );
        let mut sends = Vec::new();
        let now = loop {
            let now = tx.next_timeout().unwrap();
            match tx.on_timeout(now).unwrap() {
                ClientTimeout::Retransmit(_) => sends.push((now - t0).as_millis()),
                ClientTimeout::TimedOut => break now,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now - t0, Duration::from_secs(32));
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_client_non2xx_acks_and_waits_timer_d() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            &Method::Invite,
            b"INVITE".to_vec(),
            false,
            Timers::default(),
            t0,
        );
        assert_eq!(tx.on_response(100, t0), ClientVerdict::Deliver);
        assert_eq!(tx.next_timeout(), None, "A and B stop on 1xx");
        assert_eq!(tx.on_response(486, t0), ClientVerdict::DeliverNeedsAck);
        tx.set_ack(b"ACK".to_vec());
        assert_eq!(
            tx.on_response(486, t0),
            ClientVerdict::Resend(b"ACK".to_vec())
        );
        assert_eq!(tx.next_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(
            tx.on_timeout(t0 + Duration::from_secs(32)),
            Some(ClientTimeout::Terminated)
        );
    }

    #[test]
    fn invite_client_2xx_accepted_passes_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            &Method::Invite,
            b"INVITE".to_vec(),
            true,
            Timers::default(),
            t0,
        );
        assert_eq!(
            tx.next_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "no Timer A on TCP"
        );
        assert_eq!(tx.on_response(200, t0), ClientVerdict::Deliver);
        assert_eq!(tx.on_response(200, t0), ClientVerdict::Retransmitted2xx);
        assert_eq!(
            tx.on_timeout(t0 + Duration::from_secs(32)),
            Some(ClientTimeout::Terminated)
        );
    }

    #[test]
    fn non_invite_client_timer_e_caps_at_t2_and_k() {
        let t0 = Instant::now();
        let mut tx =
            ClientTransaction::new(&Method::Bye, b"BYE".to_vec(), false, Timers::default(), t0);
        let mut sends = Vec::new();
        for _ in 0..6 {
            let at = tx.next_timeout().unwrap();
            assert!(matches!(
                tx.on_timeout(at),
                Some(ClientTimeout::Retransmit(_))
            ));
            sends.push((at - t0).as_millis());
        }
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 11500, 15500]);
        let now = t0 + Duration::from_secs(16);
        assert_eq!(tx.on_response(200, now), ClientVerdict::Deliver);
        assert_eq!(tx.on_response(200, now), ClientVerdict::Absorb);
        assert_eq!(
            tx.next_timeout(),
            Some(now + Duration::from_secs(5)),
            "Timer K = T4"
        );
        assert_eq!(
            tx.on_timeout(now + Duration::from_secs(5)),
            Some(ClientTimeout::Terminated)
        );
    }

    #[test]
    fn non_invite_client_timer_f() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(&Method::Options, vec![], false, Timers::default(), t0);
        let mut last = None;
        while let Some(at) = tx.next_timeout() {
            last = tx.on_timeout(at).map(|e| (at, e));
        }
        assert_eq!(
            last,
            Some((t0 + Duration::from_secs(32), ClientTimeout::TimedOut))
        );
    }

    #[test]
    fn invite_server_non2xx_timer_g_h_and_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(&Method::Invite, false, Timers::default());
        assert!(tx.send_response(100, b"100".to_vec(), t0));
        assert_eq!(tx.on_retransmit(), Some(b"100".to_vec()));
        assert!(tx.send_response(486, b"486".to_vec(), t0));
        assert!(
            !tx.send_response(200, b"200".to_vec(), t0),
            "no second final"
        );
        assert_eq!(tx.on_retransmit(), Some(b"486".to_vec()));
        let at = tx.next_timeout().unwrap();
        assert_eq!(at - t0, Duration::from_millis(500));
        assert_eq!(
            tx.on_timeout(at),
            Some(ServerTimeout::Retransmit(b"486".to_vec()))
        );
        assert_eq!(tx.next_timeout().unwrap() - t0, Duration::from_millis(1500));
        assert!(!tx.on_ack(at));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(
            tx.next_timeout(),
            Some(at + Duration::from_secs(5)),
            "Timer I = T4"
        );
        assert_eq!(
            tx.on_timeout(at + Duration::from_secs(5)),
            Some(ServerTimeout::Terminated)
        );
    }

    #[test]
    fn invite_server_timer_h_without_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(&Method::Invite, false, Timers::default());
        tx.send_response(503, b"503".to_vec(), t0);
        let mut retrans = 0;
        let end = loop {
            let at = tx.next_timeout().unwrap();
            match tx.on_timeout(at) {
                Some(ServerTimeout::Retransmit(_)) => retrans += 1,
                Some(ServerTimeout::NoAck) => break at,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(end - t0, Duration::from_secs(32));
        // 0.5, 1.5, 3.5, 7.5, then every 4 s up to 31.5
        assert_eq!(retrans, 10);
    }

    #[test]
    fn invite_server_2xx_accepted_until_ack_then_l() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(&Method::Invite, true, Timers::default());
        tx.send_response(200, b"200".to_vec(), t0);
        assert_eq!(tx.state(), ServerState::Accepted);
        assert_eq!(tx.on_retransmit(), None, "INVITE retransmissions absorbed");
        let at = tx.next_timeout().unwrap();
        assert_eq!(
            tx.on_timeout(at),
            Some(ServerTimeout::Retransmit(b"200".to_vec()))
        );
        assert!(tx.on_ack(at));
        assert!(!tx.on_ack(at), "second ACK absorbed");
        assert_eq!(tx.next_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(
            tx.on_timeout(t0 + Duration::from_secs(32)),
            Some(ServerTimeout::Terminated)
        );

        let mut tx = ServerTransaction::new(&Method::Invite, false, Timers::default());
        tx.send_response(200, b"200".to_vec(), t0);
        let mut last = None;
        while let Some(at) = tx.next_timeout() {
            last = tx.on_timeout(at);
        }
        assert_eq!(last, Some(ServerTimeout::NoAck));
    }

    #[test]
    fn non_invite_server_timer_j() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(&Method::Bye, false, Timers::default());
        assert_eq!(tx.on_retransmit(), None, "Trying: nothing to resend");
        tx.send_response(200, b"200".to_vec(), t0);
        assert_eq!(tx.on_retransmit(), Some(b"200".to_vec()));
        assert_eq!(tx.next_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(
            tx.on_timeout(t0 + Duration::from_secs(32)),
            Some(ServerTimeout::Terminated)
        );
        let mut tx = ServerTransaction::new(&Method::Bye, true, Timers::default());
        tx.send_response(200, b"200".to_vec(), t0);
        assert_eq!(tx.next_timeout(), Some(t0), "J = 0 on TCP");
    }

    #[test]
    fn keys_map_ack_to_invite_and_keep_cancel_apart() {
        let inv = TxKey::server("z9hG4bK1", "Host:5060", &Method::Invite);
        assert_eq!(inv, TxKey::server("z9hG4bK1", "host:5060", &Method::Ack));
        assert_ne!(inv, TxKey::server("z9hG4bK1", "host:5060", &Method::Cancel));
    }
}
