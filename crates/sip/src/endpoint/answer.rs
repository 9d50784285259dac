//! The glue's decisions on an incoming call (or re-INVITE): ring, early
//! media, answer, reject, digest challenge and verification.

use super::call::{SessionTimer, State};
use super::timers::{expiry_wait, refresh_wait};
use super::uas::authorization;
use super::{ALLOW, CallId, Endpoint, SUPPORTED, SipError};
use crate::auth::{AuthError, DigestServer, Secret, Verified};
use crate::dialog::Dialog;
use crate::message::response_to;
use rand::Rng;
use std::time::Instant;

impl Endpoint {
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
}
