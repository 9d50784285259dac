//! Our requests outside a dialog: placing a call (with one digest retry),
//! CANCEL, OPTIONS keepalive probes; and the responses to our requests.

use super::call::{Call, InviteMeta, Owner, SessionTimer, State};
use super::timers::{expiry_wait, parse_session_expires, refresh_wait};
use super::{
    ALLOW, CallId, EndCause, Endpoint, InviteRequest, SUPPORTED, SipError, SipEvent, Transport,
    TransportKind,
};
use crate::auth::DigestClient;
use crate::dialog::Dialog;
use crate::message::{Builder, Headers, Method, Response, reason_phrase};
use crate::sdp::Sdp;
use crate::transaction::{ClientVerdict, TxKey};
use std::net::SocketAddr;
use std::time::Instant;

impl Endpoint {
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

    pub(super) fn on_response(&mut self, now: Instant, res: Response) {
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
}

pub(super) fn sdp_of(res: &Response) -> Option<Sdp> {
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
