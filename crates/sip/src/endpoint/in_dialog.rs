//! Our requests inside a dialog: BYE, re-INVITE (and glare), REFER,
//! NOTIFY, INFO; and what their failures do to the call.

use super::call::{InviteMeta, Owner, State};
use super::timers::{expiry_wait, parse_session_expires, refresh_wait};
use super::uac::sdp_of;
use super::{ALLOW, CallId, EndCause, Endpoint, SUPPORTED, SipError, SipEvent, Transport};
use crate::dialog::Dialog;
use crate::message::{Builder, Headers, Method, Response, reason_phrase};
use crate::transaction::TxKey;
use rand::Rng;
use std::time::{Duration, Instant};

impl Endpoint {
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

    pub(super) fn send_bye(&mut self, now: Instant, id: CallId) {
        self.send_bye_with(now, id, Owner::Bye(id));
    }

    pub(super) fn send_bye_with(&mut self, now: Instant, id: CallId, owner: Owner) {
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

    pub(super) fn send_reinvite(
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

    pub(super) fn on_reinvite_response(
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

    /// The peer forgot the dialog or stopped answering: BYE and report.
    pub(super) fn lose_call(&mut self, now: Instant, id: CallId) {
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
}

fn b_method(b: &Builder) -> &str {
    b.method_name()
}
