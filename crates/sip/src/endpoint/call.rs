//! What the endpoint keeps per call and per transaction.

use super::{CallId, InviteRequest, Transport, TransportKind};
use crate::auth::DigestClient;
use crate::dialog::Dialog;
use crate::message::Request;
use crate::sdp::Sdp;
use crate::transaction::{ClientTransaction, ServerTransaction, TxKey};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// UAS: INVITE in, no final response yet.
    Incoming,
    /// UAC: INVITE out, no final response yet.
    Calling,
    /// UAS: 2xx sent, ACK not yet in.
    Answered,
    Confirmed,
    /// BYE sent.
    Terminating,
}

/// What a client INVITE (initial or re-) needs for its ACK and CANCEL.
#[derive(Debug, Clone)]
pub(super) struct InviteMeta {
    pub(super) uri: String,
    pub(super) via: String,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) call_id: String,
    pub(super) cseq: u32,
    pub(super) routes: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct SessionTimer {
    pub(super) interval: u32,
    pub(super) we_refresh: bool,
    /// Refresh due (we refresh) or expiry (they do).
    pub(super) at: Instant,
}

#[derive(Debug)]
pub(super) struct Call {
    pub(super) state: State,
    pub(super) uac: bool,
    pub(super) transport: Transport,
    pub(super) local_tag: String,
    pub(super) dialog: Option<Dialog>,
    /// UAS: the INVITE being answered and its transaction.
    pub(super) invite: Option<Request>,
    pub(super) invite_tx: Option<TxKey>,
    /// UAC: the initial INVITE's client transaction and how to redo it.
    pub(super) uac_tx: Option<TxKey>,
    pub(super) uac_meta: Option<InviteMeta>,
    pub(super) uac_request: Option<InviteRequest>,
    pub(super) auth_tried: bool,
    pub(super) digest: DigestClient,
    pub(super) provisional_seen: bool,
    pub(super) cancel_requested: bool,
    pub(super) cancel_deadline: Option<Instant>,
    pub(super) local_sdp: Option<String>,
    pub(super) remote_sdp: Option<Sdp>,
    /// Incoming re-INVITE waiting for the glue.
    pub(super) reinvite_in: Option<(Request, TxKey)>,
    /// Our re-INVITE in flight: its transaction and whether it is a refresh.
    pub(super) reinvite_out: Option<(TxKey, bool)>,
    pub(super) glare_retry: Option<(Instant, String)>,
    /// UAS: the server transaction whose 2xx awaits its ACK.
    pub(super) ack_wait: Option<TxKey>,
    /// Hang up as soon as the ACK is in (RFC 3261 15).
    pub(super) bye_after_ack: bool,
    /// Session timer negotiated in the INVITE, applied on answer.
    pub(super) offered_se: Option<(u32, Option<bool>, bool)>,
    pub(super) session: Option<SessionTimer>,
    /// UAS: this INVITE's key in `Endpoint::merged` until answered or gone.
    pub(super) merged_key: Option<(String, String, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Invite(CallId),
    Reinvite(CallId),
    Cancel,
    Bye(CallId),
    Refer(CallId),
    InDialog(CallId),
    Options(SocketAddr, TransportKind),
    /// BYE of a call already reported over.
    Orphan,
}

pub(super) struct ClientEntry {
    pub(super) tx: ClientTransaction,
    pub(super) transport: Transport,
    pub(super) owner: Owner,
    pub(super) meta: Option<InviteMeta>,
    /// The ACK for this INVITE's 2xx, re-sent on each retransmitted 2xx;
    /// and the To tag it answered (a 2xx from another fork gets a BYE).
    pub(super) ack_2xx: Option<(Vec<u8>, String)>,
}

pub(super) struct ServerEntry {
    pub(super) tx: ServerTransaction,
    pub(super) transport: Transport,
    pub(super) call: Option<CallId>,
}
