//! Requests from peers: the transaction layer's checks, new INVITEs,
//! CANCEL, ACK, and requests inside a dialog (BYE, re-INVITE, INFO, REFER,
//! NOTIFY, OPTIONS).

use super::call::{Call, ServerEntry, SessionTimer, State};
use super::timers::{expiry_wait, parse_session_expires};
use super::{ALLOW, CallId, EXTENSIONS, EndCause, Endpoint, SUPPORTED, SipEvent, Transport};
use crate::auth::DigestClient;
use crate::dialog::{DialogError, parse_dtmf_info, refer_target};
use crate::message::{Builder, Headers, Method, Request, reason_phrase, response_to};
use crate::sdp::Sdp;
use crate::transaction::{ServerState, ServerTransaction, TxKey};
use rand::Rng;
use std::time::Instant;

impl Endpoint {
    pub(super) fn on_request(&mut self, now: Instant, transport: Transport, req: Request) {
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
    pub(super) fn response(&mut self, req: &Request, status: u16, tag: Option<&str>) -> Builder {
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

    pub(super) fn respond(&mut self, now: Instant, key: &TxKey, status: u16, b: Builder) {
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
}

pub(super) fn authorization(req: &Request) -> Option<&str> {
    req.header("Authorization")
        .or_else(|| req.header("Proxy-Authorization"))
}
