//! Voice: a tenant's SIP trunks (inbound: the numbers they carry and who may
//! send from them; outbound: where calls leave), dispatch rules (what a
//! called number does), and call records. All SQL of these tables is here.
//!
//! Digest passwords are sealed with the tenant key like webhook secrets and
//! never leave the store through the API types. The numbers a trunk carries
//! are the clinic's own (not PHI) and stay in clear, because an INVITE must
//! find its tenant from the called number alone. A call's remote party (the
//! patient's number) is PHI: sealed.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, now_micros};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

/// How an outbound trunk's call media is protected.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MediaEncryption {
    /// Plain RTP.
    #[default]
    None,
    /// SDES-SRTP (RFC 4568 keys in the SDP, `RTP/SAVP`): a carrier that
    /// answers without it fails the call.
    Sdes,
}

// By hand, so a bad value names its field (serde's message for a variant
// inside the internally tagged `TrunkSpec` does not).
impl<'de> Deserialize<'de> for MediaEncryption {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(MediaEncryption::None),
            "sdes" => Ok(MediaEncryption::Sdes),
            other => Err(serde::de::Error::custom(format!(
                "media_encryption: `{}` is not one of none, sdes",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

/// What a trunk is for, with the fields of each kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "direction", rename_all = "snake_case", deny_unknown_fields)]
pub enum TrunkSpec {
    /// Calls from a carrier to the clinic's numbers.
    Inbound {
        /// The called numbers (E.164) this trunk carries; each belongs to one tenant.
        numbers: Vec<String>,
        /// Source addresses INVITEs may come from (CIDR, e.g. `203.0.113.0/24`);
        /// anything else gets 403. Empty: only digest credentials decide.
        #[serde(default)]
        allowed_sources: Vec<String>,
    },
    /// Where calls to patients leave (dial-out, PSTN fallback).
    Outbound {
        /// The carrier's SIP address (`host:port`, or `host` for 5060/5061).
        address: String,
        #[serde(default)]
        transport: SipTransport,
        /// Numbers (E.164) shown to the called party; the first is the default.
        caller_ids: Vec<String>,
        /// Calls at once through this trunk; more get refused before dialling.
        max_concurrent_calls: u32,
        /// `sdes`: offer SRTP with SDES keys (`RTP/SAVP`) and require it in
        /// the answer; `none` (default): plain RTP.
        #[serde(default)]
        media_encryption: MediaEncryption,
    },
}

/// What the OPTIONS keepalive says of an outbound trunk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TrunkStatus {
    /// It answered its last probe (any final response, even 404 or 405).
    Up,
    /// Its last two probes timed out or could not be sent.
    Down,
    /// Not probed yet, or the keepalive is off (`sip.trunk_keepalive_secs = 0`).
    Unknown,
}

/// A SIP trunk as the API shows it (the password never).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Trunk {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub spec: TrunkSpec,
    /// Digest user name (inbound: what the carrier must show; outbound: what we show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Whether a digest password is set (it is never shown).
    pub has_password: bool,
    pub created_at: Timestamp,
    /// Outbound: whether the trunk answers the gateway's OPTIONS keepalive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TrunkStatus>,
    /// Outbound: when the last keepalive probe's result came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Timestamp>,
}

/// A trunk with its digest credentials, for the SIP gateway only.
#[derive(Debug, Clone)]
pub struct TrunkWithSecret {
    pub tenant_id: String,
    pub trunk: Trunk,
    pub password: Option<String>,
}

/// What a call to a number does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DispatchAction {
    /// The caller's conversation: found by caller id (the contact's phone
    /// binding, then their open conversation), else a new one.
    Conversation {
        /// The queue a new conversation lands in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
    },
    /// The caller enters a visit's PIN (DTMF) and joins that room.
    RoomPin,
    /// A named target (the IVR will fill these); for now the gateway rings
    /// `sip_uri` for the caller (B2BUA) and answers the caller when it
    /// answers. The call is recorded on the caller's conversation.
    Target {
        /// A label for the target (e.g. `front-desk`), noted as `bridged_to` on the call's events.
        name: String,
        /// `sip:` or `sips:` URI to ring; private addresses need `sip.allow_private_trunks`.
        sip_uri: String,
    },
    /// The call runs the tenant's IVR flow of this name (`PUT /v1/ivr/flows/{name}`).
    Ivr { flow: String },
    /// The call is driven by TwiML from this URL (Twilio-style parameters,
    /// signed as Twilio signs them): a CPaaS customer's call logic as is.
    Twiml {
        url: String,
        /// `POST` (default) or `GET`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DispatchRule {
    pub id: String,
    /// The called number (E.164), or `*` for any number of the tenant without a rule of its own.
    pub number: String,
    pub action: DispatchAction,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CallDirection {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Dialling out, or an inbound call being routed.
    Dialing,
    Ringing,
    Answered,
    /// Hung up after an answer.
    Ended,
    /// Never answered: busy, refused, no answer, no route.
    Failed,
}

impl CallState {
    fn as_str(self) -> &'static str {
        match self {
            CallState::Dialing => "dialing",
            CallState::Ringing => "ringing",
            CallState::Answered => "answered",
            CallState::Ended => "ended",
            CallState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> CallState {
        match s {
            "ringing" => CallState::Ringing,
            "answered" => CallState::Answered,
            "ended" => CallState::Ended,
            "failed" => CallState::Failed,
            _ => CallState::Dialing,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, CallState::Ended | CallState::Failed)
    }
}

/// A phone call leg of a conversation.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Call {
    pub id: String,
    pub conversation_id: String,
    /// The video room the call is bridged into, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    pub direction: CallDirection,
    pub state: CallState,
    /// The other party: an E.164 number or a SIP URI.
    pub remote: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk_id: Option<String>,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Why it ended or failed (`remote_hangup`, `busy`, `no_answer`, `refused`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// A new call record.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub conversation_id: String,
    pub room_id: Option<String>,
    pub direction: CallDirection,
    pub remote: String,
    pub trunk_id: Option<String>,
}

fn secret_aad(trunk_id: &str) -> String {
    format!("trunk-secret:{trunk_id}")
}

fn remote_aad(tenant_id: &str, call_id: &str) -> String {
    format!("call-remote:{tenant_id}:{call_id}")
}

const TRUNK_COLUMNS: &str = "id, tenant_id, name, spec, username, secret, created_at";

fn trunk_row(r: &crate::db::Row<'_>) -> crate::db::Result<(String, Trunk, Option<Vec<u8>>)> {
    let spec: String = r.get(3)?;
    let secret: Option<Vec<u8>> = r.get(5)?;
    let trunk = Trunk {
        id: r.get(0)?,
        name: r.get(2)?,
        spec: serde_json::from_str(&spec).map_err(|e| crate::db::DbError::conversion(3, e))?,
        username: r.get(4)?,
        has_password: secret.is_some(),
        created_at: Timestamp(r.get(6)?),
        status: None,
        last_checked: None,
    };
    Ok((r.get(1)?, trunk, secret))
}

impl Store {
    /// Adds a trunk. Inbound numbers must be free (each number routes to one tenant).
    pub async fn create_trunk(
        &self,
        tenant_id: &str,
        name: &str,
        spec: TrunkSpec,
        credentials: Option<(String, String)>,
        actor: &str,
    ) -> Result<Trunk> {
        let trunk = Trunk {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            spec,
            username: credentials.as_ref().map(|(u, _)| u.clone()),
            has_password: credentials.is_some(),
            created_at: Timestamp(now_micros()),
            status: None,
            last_checked: None,
        };
        let spec_json =
            serde_json::to_string(&trunk.spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (t, tenant_id, actor, store) = (
            trunk.clone(),
            tenant_id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        let password = credentials.map(|(_, p)| p);
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let sealed = password.map(|p| keys.data.seal(p.as_bytes(), secret_aad(&t.id).as_bytes()));
            ctx.conn.execute(
                "INSERT INTO sip_trunks (id, tenant_id, name, spec, username, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.id, tenant_id, t.name, spec_json, t.username, sealed, t.created_at.0],
            )?;
            if let TrunkSpec::Inbound { numbers, .. } = &t.spec {
                for n in numbers {
                    let taken = ctx
                        .conn
                        .query_row("SELECT 1 FROM sip_numbers WHERE number = ?1", [n], |_| Ok(()))
                        .optional()?;
                    let taken_msg = || format!("number {n} is already carried by another inbound trunk");
                    if taken.is_some() {
                        return Err(StoreError::Conflict(taken_msg()));
                    }
                    ctx.conn
                        .execute(
                            "INSERT INTO sip_numbers (number, tenant_id, trunk_id) VALUES (?1, ?2, ?3)",
                            params![n, tenant_id, t.id],
                        )
                        .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
                }
            }
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "trunk.create", format!("trunk/{}", t.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok(trunk)
    }

    pub async fn list_trunks(&self, tenant_id: &str) -> Result<Vec<Trunk>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TRUNK_COLUMNS} FROM sip_trunks WHERE tenant_id = ?1 AND deleted_at IS NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map([t], trunk_row)?;
            Ok(rows
                .map(|r| r.map(|(_, trunk, _)| trunk))
                .collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    pub async fn get_trunk(&self, tenant_id: &str, id: &str) -> Result<Trunk> {
        Ok(self.trunk_with_secret(tenant_id, id).await?.trunk)
    }

    /// A trunk and its digest password, for the SIP gateway.
    pub async fn trunk_with_secret(&self, tenant_id: &str, id: &str) -> Result<TrunkWithSecret> {
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        self.read(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {TRUNK_COLUMNS} FROM sip_trunks WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL"),
                    params![id, t],
                    trunk_row,
                )
                .optional()?
                .ok_or(StoreError::NotFound("trunk"))?;
            store.open_trunk(c, row)
        })
        .await
    }

    /// Removes a trunk; its numbers are free again.
    pub async fn delete_trunk(&self, tenant_id: &str, id: &str, actor: &str) -> Result<()> {
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let n = ctx.conn.execute(
                "UPDATE sip_trunks SET deleted_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL",
                params![id, t, now_micros()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("trunk"));
            }
            ctx.conn.execute("DELETE FROM sip_numbers WHERE trunk_id = ?1", [&id])?;
            ctx.audit(&t, &AuditEntry::new(actor, "trunk.delete", format!("trunk/{id}"), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    /// The inbound trunk carrying a called number (across tenants: the
    /// number decides the tenant).
    pub async fn inbound_trunk_for(&self, number: &str) -> Result<Option<TrunkWithSecret>> {
        let (n, store) = (number.to_owned(), self.clone());
        self.read(move |c| {
            let row = c
                .query_row(
                    &format!(
                        "SELECT {} FROM sip_numbers n JOIN sip_trunks t ON t.id = n.trunk_id
                         WHERE n.number = ?1 AND t.deleted_at IS NULL",
                        TRUNK_COLUMNS
                            .split(", ")
                            .map(|c| format!("t.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    [n],
                    trunk_row,
                )
                .optional()?;
            row.map(|row| store.open_trunk(c, row)).transpose()
        })
        .await
    }

    /// The tenant's outbound trunks (oldest first: the first is the default).
    pub async fn outbound_trunks(&self, tenant_id: &str) -> Result<Vec<TrunkWithSecret>> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TRUNK_COLUMNS} FROM sip_trunks WHERE tenant_id = ?1 AND deleted_at IS NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map([t], trunk_row)?;
            let mut out = Vec::new();
            for row in rows {
                let row = row?;
                if matches!(row.1.spec, TrunkSpec::Outbound { .. }) {
                    out.push(store.open_trunk(c, row)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every tenant's outbound trunks, without their secrets (for the
    /// gateway's keepalive): (tenant id, trunk).
    pub async fn all_outbound_trunks(&self) -> Result<Vec<(String, Trunk)>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TRUNK_COLUMNS} FROM sip_trunks WHERE deleted_at IS NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map(params![], trunk_row)?;
            let mut out = Vec::new();
            for row in rows {
                let (tenant, trunk, _) = row?;
                if matches!(trunk.spec, TrunkSpec::Outbound { .. }) {
                    out.push((tenant, trunk));
                }
            }
            Ok(out)
        })
        .await
    }

    fn open_trunk(
        &self,
        c: &crate::db::Conn,
        (tenant_id, trunk, secret): (String, Trunk, Option<Vec<u8>>),
    ) -> Result<TrunkWithSecret> {
        let password = match secret {
            Some(sealed) => {
                let keys = self.keys_for(c, &tenant_id)?;
                let plain = keys.data.open(&sealed, secret_aad(&trunk.id).as_bytes())?;
                Some(String::from_utf8_lossy(&plain).into_owned())
            }
            None => None,
        };
        Ok(TrunkWithSecret {
            tenant_id,
            trunk,
            password,
        })
    }

    /// Adds a dispatch rule (one per called number per tenant).
    pub async fn create_dispatch_rule(
        &self,
        tenant_id: &str,
        number: &str,
        action: DispatchAction,
        actor: &str,
    ) -> Result<DispatchRule> {
        let rule = DispatchRule {
            id: uuid::Uuid::now_v7().to_string(),
            number: number.to_owned(),
            action,
            created_at: Timestamp(now_micros()),
        };
        let action_json =
            serde_json::to_string(&rule.action).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (r, t, actor) = (rule.clone(), tenant_id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let exists = ctx
                .conn
                .query_row(
                    "SELECT 1 FROM dispatch_rules WHERE tenant_id = ?1 AND number = ?2 AND deleted_at IS NULL",
                    params![t, r.number],
                    |_| Ok(()),
                )
                .optional()?;
            let taken_msg = || format!("number {} already has a dispatch rule: delete it first", r.number);
            if exists.is_some() {
                return Err(StoreError::Conflict(taken_msg()));
            }
            ctx.conn
                .execute(
                    "INSERT INTO dispatch_rules (id, tenant_id, number, action, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![r.id, t, r.number, action_json, r.created_at.0],
                )
                .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
            ctx.audit(&t, &AuditEntry::new(actor, "dispatch_rule.create", format!("dispatch_rule/{}", r.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok(rule)
    }

    pub async fn list_dispatch_rules(&self, tenant_id: &str) -> Result<Vec<DispatchRule>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, number, action, created_at FROM dispatch_rules WHERE tenant_id = ?1 AND deleted_at IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([t], rule_row)?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// The rule for a called number: its own, else the tenant's `*` rule.
    pub async fn dispatch_rule_for(
        &self,
        tenant_id: &str,
        number: &str,
    ) -> Result<Option<DispatchRule>> {
        let (t, n) = (tenant_id.to_owned(), number.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id, number, action, created_at FROM dispatch_rules
                 WHERE tenant_id = ?1 AND number IN (?2, '*') AND deleted_at IS NULL
                 ORDER BY number = '*' LIMIT 1",
                params![t, n],
                rule_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn delete_dispatch_rule(&self, tenant_id: &str, id: &str, actor: &str) -> Result<()> {
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let n = ctx.conn.execute(
                "UPDATE dispatch_rules SET deleted_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL",
                params![id, t, now_micros()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("dispatch rule"));
            }
            ctx.audit(&t, &AuditEntry::new(actor, "dispatch_rule.delete", format!("dispatch_rule/{id}"), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    /// Records a new call (its remote party sealed).
    pub async fn create_call(&self, tenant_id: &str, new: NewCall, actor: &str) -> Result<Call> {
        let call = Call {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: new.conversation_id,
            room_id: new.room_id,
            direction: new.direction,
            state: CallState::Dialing,
            remote: new.remote,
            trunk_id: new.trunk_id,
            created_at: Timestamp(now_micros()),
            answered_at: None,
            ended_at: None,
            cause: None,
        };
        let (c, t, actor, store) = (
            call.clone(),
            tenant_id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        self.write(move |ctx| {
            ctx.conn
                .query_row(
                    "SELECT 1 FROM conversations WHERE id = ?1 AND tenant_id = ?2",
                    params![c.conversation_id, t],
                    |_| Ok(()),
                )
                .optional()?
                .ok_or(StoreError::NotFound("conversation"))?;
            let keys = store.keys_for(ctx.conn, &t)?;
            let remote = keys
                .data
                .seal(c.remote.as_bytes(), remote_aad(&t, &c.id).as_bytes());
            let direction = match c.direction {
                CallDirection::Inbound => "inbound",
                CallDirection::Outbound => "outbound",
            };
            ctx.conn.execute(
                "INSERT INTO calls (id, tenant_id, conversation_id, room_id, direction, state, remote, trunk_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![c.id, t, c.conversation_id, c.room_id, direction, c.state.as_str(), remote, c.trunk_id, c.created_at.0],
            )?;
            ctx.audit(&t, &AuditEntry::new(actor, "call.create", format!("call/{}", c.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok(call)
    }

    /// Moves a call on (a final state is never left); `cause` for ended and failed calls.
    pub async fn update_call(
        &self,
        tenant_id: &str,
        id: &str,
        state: CallState,
        cause: Option<&str>,
    ) -> Result<Call> {
        let (t, cid, cause) = (
            tenant_id.to_owned(),
            id.to_owned(),
            cause.map(str::to_owned),
        );
        self.write(move |ctx| {
            let now = now_micros();
            ctx.conn.execute(
                "UPDATE calls SET state = ?3,
                    answered_at = CASE WHEN ?3 = 'answered' THEN COALESCE(answered_at, ?4) ELSE answered_at END,
                    ended_at = CASE WHEN ?3 IN ('ended', 'failed') THEN ?4 ELSE ended_at END,
                    cause = COALESCE(?5, cause)
                 WHERE id = ?1 AND tenant_id = ?2 AND state NOT IN ('ended', 'failed')",
                params![cid, t, state.as_str(), now, cause],
            )?;
            Ok(())
        })
        .await?;
        self.get_call(tenant_id, id).await
    }

    pub async fn get_call(&self, tenant_id: &str, id: &str) -> Result<Call> {
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        self.read(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1 AND tenant_id = ?2"),
                    params![id, t],
                    call_row,
                )
                .optional()?
                .ok_or(StoreError::NotFound("call"))?;
            store.open_call(c, &t, row)
        })
        .await
    }

    /// The calls of a conversation, oldest first.
    pub async fn list_calls(&self, tenant_id: &str, conversation_id: &str) -> Result<Vec<Call>> {
        let (t, conv, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE tenant_id = ?1 AND conversation_id = ?2 ORDER BY id LIMIT 500"
            ))?;
            let rows = stmt.query_map(params![t, conv], call_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(store.open_call(c, &t, row?)?);
            }
            Ok(out)
        })
        .await
    }

    /// Calls not yet ended through an outbound trunk (its concurrency limit).
    pub async fn active_calls_on_trunk(&self, tenant_id: &str, trunk_id: &str) -> Result<u32> {
        let (t, trunk) = (tenant_id.to_owned(), trunk_id.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM calls WHERE tenant_id = ?1 AND trunk_id = ?2 AND state NOT IN ('ended', 'failed')",
                params![t, trunk],
                |r| r.get(0),
            )?)
        })
        .await
    }

    fn open_call(
        &self,
        c: &crate::db::Conn,
        tenant_id: &str,
        (mut call, sealed): (Call, Vec<u8>),
    ) -> Result<Call> {
        let keys = self.keys_for(c, tenant_id)?;
        let plain = keys
            .data
            .open(&sealed, remote_aad(tenant_id, &call.id).as_bytes())?;
        call.remote = String::from_utf8_lossy(&plain).into_owned();
        Ok(call)
    }

    /// The open room of a tenant with this dial-in PIN.
    pub async fn room_by_pin(&self, tenant_id: &str, pin: &str) -> Result<Option<crate::Room>> {
        let (t, p) = (tenant_id.to_owned(), pin.to_owned());
        let id: Option<String> = self
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT id FROM rooms WHERE tenant_id = ?1 AND pin = ?2 AND ended_at IS NULL",
                    params![t, p],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        match id {
            Some(id) => Ok(Some(self.get_room(tenant_id, &id).await?)),
            None => Ok(None),
        }
    }
}

const CALL_COLUMNS: &str = "id, conversation_id, room_id, direction, state, remote, trunk_id, created_at, answered_at, ended_at, cause";

fn call_row(r: &crate::db::Row<'_>) -> crate::db::Result<(Call, Vec<u8>)> {
    let direction: String = r.get(3)?;
    let state: String = r.get(4)?;
    Ok((
        Call {
            id: r.get(0)?,
            conversation_id: r.get(1)?,
            room_id: r.get(2)?,
            direction: if direction == "inbound" {
                CallDirection::Inbound
            } else {
                CallDirection::Outbound
            },
            state: CallState::parse(&state),
            remote: String::new(),
            trunk_id: r.get(6)?,
            created_at: Timestamp(r.get(7)?),
            answered_at: r.get::<_, Option<i64>>(8)?.map(Timestamp),
            ended_at: r.get::<_, Option<i64>>(9)?.map(Timestamp),
            cause: r.get(10)?,
        },
        r.get(5)?,
    ))
}

fn rule_row(r: &crate::db::Row<'_>) -> crate::db::Result<DispatchRule> {
    let action: String = r.get(2)?;
    Ok(DispatchRule {
        id: r.get(0)?,
        number: r.get(1)?,
        action: serde_json::from_str(&action).map_err(|e| crate::db::DbError::conversion(2, e))?,
        created_at: Timestamp(r.get(3)?),
    })
}
