//! SMPP 3.4 PDUs: the 16-octet header and the operations an ESME speaking
//! transceiver needs (bind_transceiver, submit_sm, deliver_sm, enquire_link,
//! unbind, their responses, and generic_nack). Decoding is total: any input
//! gives a [`Pdu`] or a typed [`DecodeError`], never a panic, and every
//! length is checked against the spec's bound before anything is allocated.
//!
//! C-Octet Strings are carried as `String`s of Latin-1 characters (one char
//! per octet) so that decoding never fails on a stray high octet; the
//! protocol only puts ASCII in them.

use std::fmt;
use thiserror::Error;

/// command_length + command_id + command_status + sequence_number.
pub const HEADER_LEN: usize = 16;
/// The largest PDU we accept or produce. A submit_sm or deliver_sm is at
/// most a few hundred octets even with a 64 KiB message_payload TLV; more
/// than this is a broken or hostile peer.
pub const MAX_PDU_LEN: usize = 64 * 1024;
/// interface_version in bind_transceiver: SMPP 3.4.
pub const INTERFACE_VERSION: u8 = 0x34;
/// The largest sequence_number (3.4: 0x00000001 to 0x7FFFFFFF).
pub const MAX_SEQUENCE: u32 = 0x7FFF_FFFF;
/// short_message is at most 254 octets (sm_length 0..=254).
pub const MAX_SHORT_MESSAGE: usize = 254;

/// command_id values (3.4 section 5.1.2.1).
pub mod command {
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    pub const OUTBIND: u32 = 0x0000_000B;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
    pub const ALERT_NOTIFICATION: u32 = 0x0000_0102;

    /// Responses have the top bit set.
    pub fn is_response(id: u32) -> bool {
        id & 0x8000_0000 != 0
    }
}

/// Optional parameter tags (3.4 section 5.3.2) this crate reads or writes.
pub mod tag {
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    pub const SC_INTERFACE_VERSION: u16 = 0x0210;
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub const MESSAGE_STATE: u16 = 0x0427;
}

/// esm_class bits (3.4 section 5.2.12).
pub mod esm {
    /// UDH Indicator: short_message starts with a User Data Header.
    pub const UDHI: u8 = 0x40;
    /// Message type bits (2..5) in a deliver_sm: receipts and acknowledgements.
    pub const MESSAGE_TYPE_MASK: u8 = 0x3C;
    /// SMSC Delivery Receipt.
    pub const DELIVERY_RECEIPT: u8 = 0x04;
}

/// command_status (3.4 section 5.1.3). Vendors use 0x400..=0x4FF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u32);

macro_rules! statuses {
    ($($name:ident = $value:expr, $text:literal;)*) => {
        impl Status {
            $(pub const $name: Status = Status($value);)*

            /// The spec's name (`ESME_RTHROTTLED`), if this is a 3.4 status.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

statuses! {
    OK = 0x0000_0000, "ESME_ROK";
    INVMSGLEN = 0x0000_0001, "ESME_RINVMSGLEN";
    INVCMDLEN = 0x0000_0002, "ESME_RINVCMDLEN";
    INVCMDID = 0x0000_0003, "ESME_RINVCMDID";
    INVBNDSTS = 0x0000_0004, "ESME_RINVBNDSTS";
    ALYBND = 0x0000_0005, "ESME_RALYBND";
    INVPRTFLG = 0x0000_0006, "ESME_RINVPRTFLG";
    INVREGDLVFLG = 0x0000_0007, "ESME_RINVREGDLVFLG";
    SYSERR = 0x0000_0008, "ESME_RSYSERR";
    INVSRCADR = 0x0000_000A, "ESME_RINVSRCADR";
    INVDSTADR = 0x0000_000B, "ESME_RINVDSTADR";
    INVMSGID = 0x0000_000C, "ESME_RINVMSGID";
    BINDFAIL = 0x0000_000D, "ESME_RBINDFAIL";
    INVPASWD = 0x0000_000E, "ESME_RINVPASWD";
    INVSYSID = 0x0000_000F, "ESME_RINVSYSID";
    CANCELFAIL = 0x0000_0011, "ESME_RCANCELFAIL";
    REPLACEFAIL = 0x0000_0013, "ESME_RREPLACEFAIL";
    MSGQFUL = 0x0000_0014, "ESME_RMSGQFUL";
    INVSERTYP = 0x0000_0015, "ESME_RINVSERTYP";
    INVNUMDESTS = 0x0000_0033, "ESME_RINVNUMDESTS";
    INVDLNAME = 0x0000_0034, "ESME_RINVDLNAME";
    INVDESTFLAG = 0x0000_0040, "ESME_RINVDESTFLAG";
    INVSUBREP = 0x0000_0042, "ESME_RINVSUBREP";
    INVESMCLASS = 0x0000_0043, "ESME_RINVESMCLASS";
    CNTSUBDL = 0x0000_0044, "ESME_RCNTSUBDL";
    SUBMITFAIL = 0x0000_0045, "ESME_RSUBMITFAIL";
    INVSRCTON = 0x0000_0048, "ESME_RINVSRCTON";
    INVSRCNPI = 0x0000_0049, "ESME_RINVSRCNPI";
    INVDSTTON = 0x0000_0050, "ESME_RINVDSTTON";
    INVDSTNPI = 0x0000_0051, "ESME_RINVDSTNPI";
    INVSYSTYP = 0x0000_0053, "ESME_RINVSYSTYP";
    INVREPFLAG = 0x0000_0054, "ESME_RINVREPFLAG";
    INVNUMMSGS = 0x0000_0055, "ESME_RINVNUMMSGS";
    THROTTLED = 0x0000_0058, "ESME_RTHROTTLED";
    INVSCHED = 0x0000_0061, "ESME_RINVSCHED";
    INVEXPIRY = 0x0000_0062, "ESME_RINVEXPIRY";
    INVDFTMSGID = 0x0000_0063, "ESME_RINVDFTMSGID";
    X_T_APPN = 0x0000_0064, "ESME_RX_T_APPN";
    X_P_APPN = 0x0000_0065, "ESME_RX_P_APPN";
    X_R_APPN = 0x0000_0066, "ESME_RX_R_APPN";
    QUERYFAIL = 0x0000_0067, "ESME_RQUERYFAIL";
    INVOPTPARSTREAM = 0x0000_00C0, "ESME_RINVOPTPARSTREAM";
    OPTPARNOTALLWD = 0x0000_00C1, "ESME_ROPTPARNOTALLWD";
    INVPARLEN = 0x0000_00C2, "ESME_RINVPARLEN";
    MISSINGOPTPARAM = 0x0000_00C3, "ESME_RMISSINGOPTPARAM";
    INVOPTPARAMVAL = 0x0000_00C4, "ESME_RINVOPTPARAMVAL";
    DELIVERYFAILURE = 0x0000_00FE, "ESME_RDELIVERYFAILURE";
    UNKNOWNERR = 0x0000_00FF, "ESME_RUNKNOWNERR";
}

impl Status {
    pub fn is_ok(self) -> bool {
        self == Status::OK
    }

    /// The SMSC asks us to slow down: the same PDU may be sent again after
    /// a pause, on the same bind.
    pub fn is_throttling(self) -> bool {
        matches!(self, Status::THROTTLED | Status::MSGQFUL)
    }

    /// Worth trying again later (the SMSC did not take the message, and the
    /// reason is not the message itself): throttling, the SMSC's own
    /// trouble, a temporary application error, a bind not ready yet. Every
    /// other status, vendor ones included, is treated as permanent: an
    /// outbox should not resend what the carrier refused for cause.
    pub fn is_retryable(self) -> bool {
        self.is_throttling()
            || matches!(
                self,
                Status::SYSERR
                    | Status::INVBNDSTS
                    | Status::SUBMITFAIL
                    | Status::X_T_APPN
                    | Status::DELIVERYFAILURE
                    | Status::UNKNOWNERR
            )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#04x})", self.0),
            None => write!(f, "command_status {:#010x}", self.0),
        }
    }
}

/// A decoded PDU. The command_id follows from [`Body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub sequence: u32,
    pub status: Status,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    BindTransceiver(Bind),
    BindTransceiverResp { system_id: String, tlvs: Vec<Tlv> },
    SubmitSm(Sm),
    SubmitSmResp { message_id: String },
    DeliverSm(Sm),
    DeliverSmResp { message_id: String },
    EnquireLink,
    EnquireLinkResp,
    Unbind,
    UnbindResp,
    GenericNack,
}

impl Body {
    pub fn command_id(&self) -> u32 {
        match self {
            Body::BindTransceiver(_) => command::BIND_TRANSCEIVER,
            Body::BindTransceiverResp { .. } => command::BIND_TRANSCEIVER_RESP,
            Body::SubmitSm(_) => command::SUBMIT_SM,
            Body::SubmitSmResp { .. } => command::SUBMIT_SM_RESP,
            Body::DeliverSm(_) => command::DELIVER_SM,
            Body::DeliverSmResp { .. } => command::DELIVER_SM_RESP,
            Body::EnquireLink => command::ENQUIRE_LINK,
            Body::EnquireLinkResp => command::ENQUIRE_LINK_RESP,
            Body::Unbind => command::UNBIND,
            Body::UnbindResp => command::UNBIND_RESP,
            Body::GenericNack => command::GENERIC_NACK,
        }
    }
}

/// bind_transceiver (3.4 section 4.1.5). The password is left out of
/// `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: String,
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("interface_version", &self.interface_version)
            .field("addr_ton", &self.addr_ton)
            .field("addr_npi", &self.addr_npi)
            .field("address_range", &self.address_range)
            .finish()
    }
}

/// An SME address: type of number, numbering plan, digits or name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    pub ton: u8,
    pub npi: u8,
    pub addr: String,
}

/// submit_sm and deliver_sm share this layout (3.4 sections 4.4.1, 4.6.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sm {
    pub service_type: String,
    pub source: Address,
    pub destination: Address,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: String,
    pub validity_period: String,
    pub registered_delivery: u8,
    pub replace_if_present: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    pub short_message: Vec<u8>,
    pub tlvs: Vec<Tlv>,
}

impl Sm {
    /// The value of the first TLV with `tag`.
    pub fn tlv(&self, tag: u16) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.value.as_slice())
    }
}

/// An optional parameter, kept as tag and raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u16,
    pub value: Vec<u8>,
}

/// Field bounds, counting the terminating NUL (3.4 section 4).
mod max {
    pub const SYSTEM_ID: usize = 16;
    pub const PASSWORD: usize = 9;
    pub const SYSTEM_TYPE: usize = 13;
    pub const ADDRESS_RANGE: usize = 41;
    pub const SERVICE_TYPE: usize = 6;
    pub const ADDR: usize = 21;
    pub const TIME: usize = 17;
    pub const MESSAGE_ID: usize = 65;
}

/// Why bytes are not a PDU we can use. [`DecodeError::nack_status`] is
/// the command_status a generic_nack answers it with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("command_length {0} is shorter than the 16-octet header")]
    LengthTooShort(u32),
    #[error("command_length {len} exceeds the {max}-octet limit")]
    LengthTooLong { len: u32, max: usize },
    #[error("command_length {declared} does not match the {actual} octets given")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("command_id {0:#010x} is not supported")]
    UnknownCommand(u32),
    #[error("{field}: the PDU ends before the field does")]
    Truncated { field: &'static str },
    #[error("{field}: no NUL terminator within {max} octets")]
    FieldTooLong { field: &'static str, max: usize },
    #[error("sm_length {0} exceeds 254 octets")]
    ShortMessageTooLong(u8),
    #[error("optional parameter {tag:#06x}: length {len} runs past the end of the PDU")]
    TlvOverrun { tag: u16, len: u16 },
}

impl DecodeError {
    /// The command_status for the generic_nack (or response) refusing it.
    pub fn nack_status(&self) -> Status {
        match self {
            DecodeError::UnknownCommand(_) => Status::INVCMDID,
            DecodeError::ShortMessageTooLong(_) => Status::INVMSGLEN,
            DecodeError::FieldTooLong { .. } | DecodeError::TlvOverrun { .. } => Status::INVPARLEN,
            DecodeError::LengthTooShort(_)
            | DecodeError::LengthTooLong { .. }
            | DecodeError::LengthMismatch { .. }
            | DecodeError::Truncated { .. } => Status::INVCMDLEN,
        }
    }
}

/// Why a [`Pdu`] cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{field}: {len} octets exceed the {max}-octet limit (NUL included)")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field}: only Latin-1 characters other than NUL fit a C-Octet String")]
    InvalidChar { field: &'static str },
    #[error("short_message: {0} octets exceed 254")]
    ShortMessageTooLong(usize),
    #[error("optional parameter {tag:#06x}: {len} octets exceed 65535")]
    TlvTooLong { tag: u16, len: usize },
    #[error("PDU: {0} octets exceed the 64 KiB limit")]
    PduTooLong(usize),
    #[error("sequence_number: {0:#x} is outside 1..=0x7FFFFFFF")]
    Sequence(u32),
}

/// The header fields of a buffer that holds at least 16 octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub command_id: u32,
    pub status: Status,
    pub sequence: u32,
}

impl Header {
    pub fn peek(buf: &[u8]) -> Option<Header> {
        let word = |i: usize| -> Option<u32> {
            let b = buf.get(i..i + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        Some(Header {
            length: word(0)?,
            command_id: word(4)?,
            status: Status(word(8)?),
            sequence: word(12)?,
        })
    }
}

/// The length of the PDU at the start of `buf`: `Ok(None)` until four
/// octets are there, an error when command_length is out of bounds (the
/// stream cannot be resynchronised after that).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(b) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if (len as usize) < HEADER_LEN {
        return Err(DecodeError::LengthTooShort(len));
    }
    if len as usize > MAX_PDU_LEN {
        return Err(DecodeError::LengthTooLong {
            len,
            max: MAX_PDU_LEN,
        });
    }
    Ok(Some(len as usize))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Truncated { field })?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let b = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(DecodeError::Truncated { field })?;
        self.pos += n;
        Ok(b)
    }

    /// A C-Octet String of at most `max` octets, NUL included.
    fn cstr(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let rest = self.rest();
        let window = &rest[..rest.len().min(max)];
        match window.iter().position(|&b| b == 0) {
            Some(n) => {
                self.pos += n + 1;
                Ok(window[..n].iter().map(|&b| b as char).collect())
            }
            None if rest.len() >= max => Err(DecodeError::FieldTooLong { field, max }),
            None => Err(DecodeError::Truncated { field }),
        }
    }

    fn tlvs(&mut self) -> Result<Vec<Tlv>, DecodeError> {
        let mut tlvs = Vec::new();
        while self.pos < self.buf.len() {
            let head = self.bytes("optional parameter header", 4)?;
            let tag = u16::from_be_bytes([head[0], head[1]]);
            let len = u16::from_be_bytes([head[2], head[3]]);
            let value = self
                .bytes("optional parameter", len as usize)
                .map_err(|_| DecodeError::TlvOverrun { tag, len })?;
            tlvs.push(Tlv {
                tag,
                value: value.to_vec(),
            });
        }
        Ok(tlvs)
    }
}

impl Pdu {
    /// Decodes one whole PDU: `frame` must be exactly command_length octets
    /// (see [`frame_len`]).
    pub fn decode(frame: &[u8]) -> Result<Pdu, DecodeError> {
        let Some(len) = frame_len(frame)? else {
            return Err(DecodeError::Truncated {
                field: "command_length",
            });
        };
        if len != frame.len() {
            return Err(DecodeError::LengthMismatch {
                declared: len as u32,
                actual: frame.len(),
            });
        }
        let header = Header::peek(frame).ok_or(DecodeError::LengthTooShort(len as u32))?;
        let mut r = Reader {
            buf: &frame[HEADER_LEN..],
            pos: 0,
        };
        let failed = !header.status.is_ok();
        let body = match header.command_id {
            command::BIND_TRANSCEIVER => Body::BindTransceiver(decode_bind(&mut r)?),
            command::BIND_TRANSCEIVER_RESP => {
                // A refused bind may come without a body.
                let system_id = if failed && r.rest().is_empty() {
                    String::new()
                } else {
                    r.cstr("system_id", max::SYSTEM_ID)?
                };
                // sc_interface_version is the only TLV defined here; a
                // malformed one does not make the bind fail.
                let tlvs = r.tlvs().unwrap_or_default();
                Body::BindTransceiverResp { system_id, tlvs }
            }
            command::SUBMIT_SM => Body::SubmitSm(decode_sm(&mut r)?),
            command::DELIVER_SM => Body::DeliverSm(decode_sm(&mut r)?),
            command::SUBMIT_SM_RESP => Body::SubmitSmResp {
                message_id: resp_message_id(&mut r, failed)?,
            },
            command::DELIVER_SM_RESP => Body::DeliverSmResp {
                message_id: resp_message_id(&mut r, failed)?,
            },
            command::ENQUIRE_LINK => Body::EnquireLink,
            command::ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
            command::UNBIND => Body::Unbind,
            command::UNBIND_RESP => Body::UnbindResp,
            command::GENERIC_NACK => Body::GenericNack,
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        Ok(Pdu {
            sequence: header.sequence,
            status: header.status,
            body,
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.sequence > MAX_SEQUENCE {
            return Err(EncodeError::Sequence(self.sequence));
        }
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.body.command_id().to_be_bytes());
        out.extend_from_slice(&self.status.0.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        match &self.body {
            Body::BindTransceiver(b) => {
                put_cstr(&mut out, "system_id", &b.system_id, max::SYSTEM_ID)?;
                put_cstr(&mut out, "password", &b.password, max::PASSWORD)?;
                put_cstr(&mut out, "system_type", &b.system_type, max::SYSTEM_TYPE)?;
                out.extend_from_slice(&[b.interface_version, b.addr_ton, b.addr_npi]);
                put_cstr(
                    &mut out,
                    "address_range",
                    &b.address_range,
                    max::ADDRESS_RANGE,
                )?;
            }
            Body::BindTransceiverResp { system_id, tlvs } => {
                put_cstr(&mut out, "system_id", system_id, max::SYSTEM_ID)?;
                put_tlvs(&mut out, tlvs)?;
            }
            Body::SubmitSm(sm) | Body::DeliverSm(sm) => put_sm(&mut out, sm)?,
            Body::SubmitSmResp { message_id } | Body::DeliverSmResp { message_id } => {
                put_cstr(&mut out, "message_id", message_id, max::MESSAGE_ID)?;
            }
            Body::EnquireLink
            | Body::EnquireLinkResp
            | Body::Unbind
            | Body::UnbindResp
            | Body::GenericNack => {}
        }
        if out.len() > MAX_PDU_LEN {
            return Err(EncodeError::PduTooLong(out.len()));
        }
        let len = (out.len() as u32).to_be_bytes();
        out[..4].copy_from_slice(&len);
        Ok(out)
    }
}

/// The message_id of a submit_sm_resp or deliver_sm_resp. 3.4 says a
/// response with an error status has no body; some SMSCs send one anyway,
/// and some send none even on success (deliver_sm_resp's is unused).
fn resp_message_id(r: &mut Reader<'_>, failed: bool) -> Result<String, DecodeError> {
    if r.rest().is_empty() {
        return Ok(String::new());
    }
    match r.cstr("message_id", max::MESSAGE_ID) {
        Ok(id) => Ok(id),
        Err(_) if failed => Ok(String::new()),
        Err(e) => Err(e),
    }
}

fn decode_bind(r: &mut Reader<'_>) -> Result<Bind, DecodeError> {
    Ok(Bind {
        system_id: r.cstr("system_id", max::SYSTEM_ID)?,
        password: r.cstr("password", max::PASSWORD)?,
        system_type: r.cstr("system_type", max::SYSTEM_TYPE)?,
        interface_version: r.u8("interface_version")?,
        addr_ton: r.u8("addr_ton")?,
        addr_npi: r.u8("addr_npi")?,
        address_range: r.cstr("address_range", max::ADDRESS_RANGE)?,
    })
}

fn decode_sm(r: &mut Reader<'_>) -> Result<Sm, DecodeError> {
    let service_type = r.cstr("service_type", max::SERVICE_TYPE)?;
    let source = Address {
        ton: r.u8("source_addr_ton")?,
        npi: r.u8("source_addr_npi")?,
        addr: r.cstr("source_addr", max::ADDR)?,
    };
    let destination = Address {
        ton: r.u8("dest_addr_ton")?,
        npi: r.u8("dest_addr_npi")?,
        addr: r.cstr("destination_addr", max::ADDR)?,
    };
    let esm_class = r.u8("esm_class")?;
    let protocol_id = r.u8("protocol_id")?;
    let priority_flag = r.u8("priority_flag")?;
    let schedule_delivery_time = r.cstr("schedule_delivery_time", max::TIME)?;
    let validity_period = r.cstr("validity_period", max::TIME)?;
    let registered_delivery = r.u8("registered_delivery")?;
    let replace_if_present = r.u8("replace_if_present_flag")?;
    let data_coding = r.u8("data_coding")?;
    let sm_default_msg_id = r.u8("sm_default_msg_id")?;
    let sm_length = r.u8("sm_length")?;
    if sm_length as usize > MAX_SHORT_MESSAGE {
        return Err(DecodeError::ShortMessageTooLong(sm_length));
    }
    let short_message = r.bytes("short_message", sm_length as usize)?.to_vec();
    let tlvs = r.tlvs()?;
    Ok(Sm {
        service_type,
        source,
        destination,
        esm_class,
        protocol_id,
        priority_flag,
        schedule_delivery_time,
        validity_period,
        registered_delivery,
        replace_if_present,
        data_coding,
        sm_default_msg_id,
        short_message,
        tlvs,
    })
}

fn put_cstr(
    out: &mut Vec<u8>,
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), EncodeError> {
    let len = value.chars().count() + 1;
    if len > max {
        return Err(EncodeError::FieldTooLong { field, len, max });
    }
    for c in value.chars() {
        let code = c as u32;
        if code == 0 || code > 0xFF {
            return Err(EncodeError::InvalidChar { field });
        }
        out.push(code as u8);
    }
    out.push(0);
    Ok(())
}

fn put_tlvs(out: &mut Vec<u8>, tlvs: &[Tlv]) -> Result<(), EncodeError> {
    for t in tlvs {
        let len = u16::try_from(t.value.len()).map_err(|_| EncodeError::TlvTooLong {
            tag: t.tag,
            len: t.value.len(),
        })?;
        out.extend_from_slice(&t.tag.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&t.value);
        if out.len() > MAX_PDU_LEN {
            return Err(EncodeError::PduTooLong(out.len()));
        }
    }
    Ok(())
}

fn put_sm(out: &mut Vec<u8>, sm: &Sm) -> Result<(), EncodeError> {
    put_cstr(out, "service_type", &sm.service_type, max::SERVICE_TYPE)?;
    out.extend_from_slice(&[sm.source.ton, sm.source.npi]);
    put_cstr(out, "source_addr", &sm.source.addr, max::ADDR)?;
    out.extend_from_slice(&[sm.destination.ton, sm.destination.npi]);
    put_cstr(out, "destination_addr", &sm.destination.addr, max::ADDR)?;
    out.extend_from_slice(&[sm.esm_class, sm.protocol_id, sm.priority_flag]);
    put_cstr(
        out,
        "schedule_delivery_time",
        &sm.schedule_delivery_time,
        max::TIME,
    )?;
    put_cstr(out, "validity_period", &sm.validity_period, max::TIME)?;
    if sm.short_message.len() > MAX_SHORT_MESSAGE {
        return Err(EncodeError::ShortMessageTooLong(sm.short_message.len()));
    }
    out.extend_from_slice(&[
        sm.registered_delivery,
        sm.replace_if_present,
        sm.data_coding,
        sm.sm_default_msg_id,
        sm.short_message.len() as u8,
    ]);
    out.extend_from_slice(&sm.short_message);
    put_tlvs(out, &sm.tlvs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn enquire_link_matches_the_spec_bytes() {
        let pdu = Pdu {
            sequence: 7,
            status: Status::OK,
            body: Body::EnquireLink,
        };
        let bytes = pdu.encode().unwrap();
        assert_eq!(bytes, hex("00000010 00000015 00000000 00000007"));
        assert_eq!(Pdu::decode(&bytes).unwrap(), pdu);
    }

    #[test]
    fn bind_transceiver_bytes() {
        let pdu = Pdu {
            sequence: 1,
            status: Status::OK,
            body: Body::BindTransceiver(Bind {
                system_id: "ab".into(),
                password: "pw".into(),
                system_type: String::new(),
                interface_version: INTERFACE_VERSION,
                addr_ton: 0,
                addr_npi: 0,
                address_range: String::new(),
            }),
        };
        let bytes = pdu.encode().unwrap();
        assert_eq!(
            bytes,
            hex("0000001b 00000009 00000000 00000001 616200 707700 00 34 00 00 00")
        );
        assert_eq!(Pdu::decode(&bytes).unwrap(), pdu);
    }

    #[test]
    fn command_length_bounds_are_typed_errors() {
        assert_eq!(frame_len(&[0, 0, 0]), Ok(None));
        assert_eq!(
            frame_len(&hex("0000000f")),
            Err(DecodeError::LengthTooShort(15))
        );
        assert!(matches!(
            frame_len(&hex("00010001")),
            Err(DecodeError::LengthTooLong { len: 65537, .. })
        ));
        assert_eq!(frame_len(&hex("00010000")), Ok(Some(65536)));
        assert_eq!(
            DecodeError::LengthTooShort(3).nack_status(),
            Status::INVCMDLEN
        );
    }

    #[test]
    fn unknown_command_and_bad_fields() {
        let frame = hex("00000010 00000103 00000000 00000002");
        assert_eq!(Pdu::decode(&frame), Err(DecodeError::UnknownCommand(0x103)));
        assert_eq!(
            DecodeError::UnknownCommand(0x103).nack_status(),
            Status::INVCMDID
        );
        // submit_sm_resp whose message_id has no NUL.
        let frame = hex("00000013 80000004 00000000 00000002 616263");
        assert_eq!(
            Pdu::decode(&frame),
            Err(DecodeError::Truncated {
                field: "message_id"
            })
        );
        // A 17-octet system_id without NUL.
        let mut frame = hex("00000000 00000009 00000000 00000001");
        frame.extend_from_slice(&[b'a'; 17]);
        frame.extend_from_slice(&[0; 8]);
        let len = frame.len() as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let err = Pdu::decode(&frame).unwrap_err();
        assert_eq!(
            err,
            DecodeError::FieldTooLong {
                field: "system_id",
                max: 16
            }
        );
        assert_eq!(
            err.to_string(),
            "system_id: no NUL terminator within 16 octets"
        );
    }

    #[test]
    fn error_responses_may_lack_a_body() {
        let frame = hex("00000010 80000004 00000058 00000009");
        let pdu = Pdu::decode(&frame).unwrap();
        assert_eq!(pdu.status, Status::THROTTLED);
        assert_eq!(
            pdu.body,
            Body::SubmitSmResp {
                message_id: String::new()
            }
        );
        let frame = hex("00000010 80000009 0000000e 00000001");
        assert!(matches!(
            Pdu::decode(&frame).unwrap().body,
            Body::BindTransceiverResp { .. }
        ));
    }

    #[test]
    fn tlv_overrun_is_rejected() {
        let mut sm = Pdu {
            sequence: 3,
            status: Status::OK,
            body: Body::DeliverSm(Sm::default()),
        }
        .encode()
        .unwrap();
        sm.extend_from_slice(&hex("001e 0005 6162"));
        let len = sm.len() as u32;
        sm[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Pdu::decode(&sm),
            Err(DecodeError::TlvOverrun { tag: 0x1e, len: 5 })
        );
    }

    #[test]
    fn status_display_names_the_status() {
        assert_eq!(Status::THROTTLED.to_string(), "ESME_RTHROTTLED (0x58)");
        assert_eq!(Status(0x401).to_string(), "command_status 0x00000401");
        assert!(Status::MSGQFUL.is_retryable());
        assert!(!Status::INVDSTADR.is_retryable());
    }

    fn cstring(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(1u8..=0xff, 0..max)
            .prop_map(|v| v.into_iter().map(|b| b as char).collect())
    }

    fn address() -> impl Strategy<Value = Address> {
        (any::<u8>(), any::<u8>(), cstring(max::ADDR)).prop_map(|(ton, npi, addr)| Address {
            ton,
            npi,
            addr,
        })
    }

    fn tlvs() -> impl Strategy<Value = Vec<Tlv>> {
        proptest::collection::vec(
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(tag, value)| Tlv { tag, value }),
            0..4,
        )
    }

    fn sm() -> impl Strategy<Value = Sm> {
        (
            (cstring(max::SERVICE_TYPE), address(), address()),
            proptest::array::uniform8(any::<u8>()),
            (cstring(max::TIME), cstring(max::TIME)),
            proptest::collection::vec(any::<u8>(), 0..=MAX_SHORT_MESSAGE),
            tlvs(),
        )
            .prop_map(
                |((service_type, source, destination), b, (s, v), short_message, tlvs)| Sm {
                    service_type,
                    source,
                    destination,
                    esm_class: b[0],
                    protocol_id: b[1],
                    priority_flag: b[2],
                    schedule_delivery_time: s,
                    validity_period: v,
                    registered_delivery: b[3],
                    replace_if_present: b[4],
                    data_coding: b[5],
                    sm_default_msg_id: b[6],
                    short_message,
                    tlvs,
                },
            )
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (
                cstring(max::SYSTEM_ID),
                cstring(max::PASSWORD),
                cstring(max::SYSTEM_TYPE),
                any::<(u8, u8, u8)>(),
                cstring(max::ADDRESS_RANGE)
            )
                .prop_map(
                    |(system_id, password, system_type, (v, ton, npi), range)| {
                        Body::BindTransceiver(Bind {
                            system_id,
                            password,
                            system_type,
                            interface_version: v,
                            addr_ton: ton,
                            addr_npi: npi,
                            address_range: range,
                        })
                    }
                ),
            (cstring(max::SYSTEM_ID), tlvs())
                .prop_map(|(system_id, tlvs)| Body::BindTransceiverResp { system_id, tlvs }),
            sm().prop_map(Body::SubmitSm),
            sm().prop_map(Body::DeliverSm),
            cstring(max::MESSAGE_ID).prop_map(|message_id| Body::SubmitSmResp { message_id }),
            cstring(max::MESSAGE_ID).prop_map(|message_id| Body::DeliverSmResp { message_id }),
            Just(Body::EnquireLink),
            Just(Body::EnquireLinkResp),
            Just(Body::Unbind),
            Just(Body::UnbindResp),
            Just(Body::GenericNack),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_roundtrips(
            body in body(),
            sequence in 0..=MAX_SEQUENCE,
            status in prop_oneof![Just(0u32), any::<u32>()],
        ) {
            // An empty message_id in an error response decodes the same.
            let pdu = Pdu { sequence, status: Status(status), body };
            let bytes = pdu.encode().unwrap();
            prop_assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
            prop_assert_eq!(Pdu::decode(&bytes).unwrap(), pdu);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = frame_len(&bytes);
            let _ = Pdu::decode(&bytes);
        }

        #[test]
        fn arbitrary_bodies_behind_a_valid_header_never_panic(
            id in prop_oneof![
                Just(command::BIND_TRANSCEIVER), Just(command::BIND_TRANSCEIVER_RESP),
                Just(command::SUBMIT_SM), Just(command::SUBMIT_SM_RESP),
                Just(command::DELIVER_SM), Just(command::DELIVER_SM_RESP),
                any::<u32>(),
            ],
            status in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut frame = Vec::new();
            frame.extend_from_slice(&((body.len() + HEADER_LEN) as u32).to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&status.to_be_bytes());
            frame.extend_from_slice(&1u32.to_be_bytes());
            frame.extend_from_slice(&body);
            if let Ok(pdu) = Pdu::decode(&frame) {
                // Whatever decodes encodes again.
                prop_assert!(pdu.encode().is_ok());
            }
        }
    }
}
