//! Time: transaction timers (retransmissions, timeouts) and the per-call
//! ones (session refresh or expiry, glare retry, CANCEL deadline).

use super::call::Owner;
use super::{CallId, EndCause, Endpoint, SipEvent};
use crate::message::reason_phrase;
use crate::transaction::{ClientTimeout, ServerState, ServerTimeout, TxKey};
use std::time::{Duration, Instant};

impl Endpoint {
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
    pub(super) fn client_failed(&mut self, now: Instant, owner: Owner, key: &TxKey, failure: u16) {
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
}

/// `Session-Expires: 1800;refresher=uac` → (1800, Some(true)).
pub(super) fn parse_session_expires(v: &str) -> Option<(u32, Option<bool>)> {
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
pub(super) fn refresh_wait(interval: u32) -> Duration {
    Duration::from_secs(u64::from(interval) / 2)
}

/// When the other side gives up: interval - min(32, interval/3).
pub(super) fn expiry_wait(interval: u32) -> Duration {
    let i = u64::from(interval);
    Duration::from_secs(i - (i / 3).min(32))
}
