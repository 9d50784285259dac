//! Parsing SIP messages off the wire and building them, on `rsip`.
//!
//! rsip 0.4.0 tokenizes the start line and headers, and its typed headers
//! parse Via, From/To and URIs. It does not cover everything RFC 3261 lets a
//! peer send, so [`parse`] works around it before handing bytes over:
//! - the body is everything after the blank line (rsip ignores
//!   Content-Length): we cut it to Content-Length ourselves (RFC 3261 18.3);
//! - folded header lines (a line starting with a space) fail its tokenizer:
//!   we unfold them;
//! - compact header names (`v:`, `f:`, `i:` ...) come out as unknown
//!   headers: we expand them;
//! - an extension method (anything but the 14 it knows) is a parse error:
//!   we parse such a request as OPTIONS and keep the real name, so the
//!   endpoint can answer 501 instead of dropping it;
//! - `tel:` URIs fail (`tel:+15551234` reads as a host with a bad port):
//!   such messages are rejected as malformed (400), which is what the
//!   trunks we talk to never send us.
//!
//! Errors carry only static reasons: they end up in reason phrases on the
//! wire, and attacker bytes must never be echoed into a header.
//! Fuzzing (proptest and cargo-fuzz) found no panic in rsip's parser for the
//! paths used here.

use rsip::prelude::*;
use std::fmt::Write as _;
use thiserror::Error;

/// Default hard limit for one message: larger is refused (513 when the
/// headers can still be read).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("no end of headers")]
    Incomplete,
    #[error("headers are not UTF-8")]
    NotUtf8,
    #[error("malformed start line")]
    StartLine,
    #[error("malformed message: {0}")]
    Syntax(&'static str),
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("bad {header} header: {reason}")]
    BadHeader {
        header: &'static str,
        reason: &'static str,
    },
    #[error("body shorter than Content-Length")]
    ShortBody,
}

impl ParseError {
    /// A reason phrase for a 400 (or 513) naming the problem; static text
    /// only, so it is safe on the wire.
    pub fn reason_phrase(&self) -> String {
        match self {
            ParseError::TooLarge { .. } => "Message Too Large".into(),
            ParseError::Missing(h) => format!("Missing {h} Header"),
            ParseError::BadHeader { header, reason } => format!("Bad {header} Header ({reason})"),
            ParseError::ShortBody => "Body Shorter Than Content-Length".into(),
            ParseError::Syntax(why) => format!("Malformed Message ({why})"),
            ParseError::Incomplete | ParseError::NotUtf8 | ParseError::StartLine => {
                "Malformed Message".into()
            }
        }
    }
}

/// SIP methods, with extensions kept by name (rsip refuses them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Refer,
    Notify,
    Subscribe,
    Update,
    Prack,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A From or To header: the value without its tag, and the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// The header value as received (tag included): copied into responses.
    pub raw: String,
    /// The URI inside, as text.
    pub uri: String,
    /// The user part of the URI (a phone number for trunks), if any.
    pub user: Option<String>,
    pub tag: Option<String>,
}

/// The top Via: what transactions are keyed and responses routed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopVia {
    pub branch: String,
    /// `host[:port]` as sent.
    pub sent_by: String,
    /// `UDP`, `TCP`, `TLS` ... as sent.
    pub transport: String,
}

/// The headers every request and response must carry (RFC 3261 8.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Every Via value, top first, as received (split at commas).
    pub vias: Vec<String>,
    pub via: TopVia,
    pub from: Party,
    pub to: Party,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The Request-URI, as text.
    pub uri: String,
    /// The user part of the Request-URI (the called number on a trunk).
    pub uri_user: Option<String>,
    pub core: Core,
    /// Absent means 70 (RFC 3261 8.1.1.6 makes it a MUST, but a missing one
    /// is harmless to a UA: we do not forward).
    pub max_forwards: Option<u32>,
    /// Every header (names in full form, values unfolded), in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub core: Core,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Header access shared by requests and responses.
pub trait Headers {
    fn header_list(&self) -> &[(String, String)];

    /// The first value of header `name` (full form, case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.header_list()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, comma-separated lists split, in order.
    fn header_values(&self, name: &str) -> Vec<String> {
        self.header_list()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| split_list(v))
            .collect()
    }

    /// Whether a token list header (Supported, Require, Allow) holds `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    fn content_type(&self) -> Option<String> {
        self.header("Content-Type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }
}

impl Headers for Request {
    fn header_list(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl Headers for Response {
    fn header_list(&self) -> &[(String, String)] {
        &self.headers
    }
}

/// Compact forms (RFC 3261 7.3.3 and extensions) to full names.
fn full_name(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'v' => "Via",
        b'f' => "From",
        b't' => "To",
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'k' => "Supported",
        b's' => "Subject",
        b'e' => "Content-Encoding",
        b'r' => "Refer-To",
        b'x' => "Session-Expires",
        b'o' => "Event",
        b'b' => "Referred-By",
        _ => name,
    }
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    out.push(part.to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let part = value[start..].trim();
    if !part.is_empty() {
        out.push(part.to_string());
    }
    out
}

/// Finds the end of the header block: the index of the blank line's CRLF
/// pair start and the body offset.
fn header_end(bytes: &[u8]) -> Option<(usize, usize)> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
}

/// Reads Content-Length from a raw header block (compact `l` included).
fn content_length(head: &str) -> Result<Option<usize>, ParseError> {
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            return value
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| ParseError::BadHeader {
                    header: "Content-Length",
                    reason: "not a number",
                });
        }
    }
    Ok(None)
}

/// Parses one message: a UDP datagram or a frame from [`StreamFramer`].
pub fn parse(bytes: &[u8], limit: usize) -> Result<Message, ParseError> {
    if bytes.len() > limit {
        return Err(ParseError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (head_end, body_start) = header_end(bytes).ok_or(ParseError::Incomplete)?;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let rest = &bytes[body_start..];
    let body = match content_length(head)? {
        Some(n) if n > rest.len() => return Err(ParseError::ShortBody),
        Some(n) => &rest[..n],
        None => rest,
    };

    // Unfold continuation lines and expand compact names into our own header
    // list, and rebuild the block for rsip from it.
    let mut lines = head.split("\r\n");
    let start = lines.next().ok_or(ParseError::StartLine)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some(last) = headers.last_mut() else {
                return Err(ParseError::Syntax("continuation before first header"));
            };
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(ParseError::Syntax("header line without colon"))?;
        let name = name.trim_end();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(ParseError::Syntax("bad header name"));
        }
        headers.push((full_name(name).to_string(), value.trim().to_string()));
    }

    let mut words = start.splitn(3, ' ');
    let (first, second, third) = match (words.next(), words.next(), words.next()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(ParseError::StartLine),
    };
    let is_response = first.starts_with("SIP/");
    let method = if is_response {
        None
    } else {
        if third != "SIP/2.0" || first.is_empty() || !first.bytes().all(is_token_char) {
            return Err(ParseError::StartLine);
        }
        Some(Method::parse(first))
    };

    // rsip sees the normalized block; an extension method is parsed as
    // OPTIONS (see the module doc), Content-Length is already applied.
    let mut text = String::with_capacity(head.len() + 64);
    match &method {
        Some(Method::Other(_)) => {
            let _ = write!(text, "OPTIONS {second} {third}\r\n");
        }
        _ => {
            text.push_str(start);
            text.push_str("\r\n");
        }
    }
    for (n, v) in &headers {
        if n.eq_ignore_ascii_case("CSeq") {
            // CSeq may name an extension method rsip refuses; we parse it.
            continue;
        }
        let _ = write!(text, "{n}: {v}\r\n");
    }
    text.push_str("\r\n");
    let parsed = rsip::SipMessage::try_from(text.as_bytes())
        .map_err(|_| ParseError::Syntax("unparsable start line or header"))?;

    let core = parse_core(&headers)?;
    match (parsed, method) {
        (rsip::SipMessage::Request(req), Some(method)) => {
            let uri_user = req.uri.user().map(str::to_string);
            let max_forwards = match headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("Max-Forwards"))
            {
                Some((_, v)) => Some(v.parse::<u32>().map_err(|_| ParseError::BadHeader {
                    header: "Max-Forwards",
                    reason: "not a number",
                })?),
                None => None,
            };
            if core.cseq_method != method && method != Method::Ack && method != Method::Cancel {
                return Err(ParseError::BadHeader {
                    header: "CSeq",
                    reason: "method differs from request line",
                });
            }
            Ok(Message::Request(Request {
                method,
                uri: second.to_string(),
                uri_user,
                core,
                max_forwards,
                headers,
                body: body.to_vec(),
            }))
        }
        (rsip::SipMessage::Response(res), None) => {
            let status = res.status_code.code();
            if !(100..700).contains(&status) {
                return Err(ParseError::StartLine);
            }
            Ok(Message::Response(Response {
                status,
                reason: third.to_string(),
                core,
                headers,
                body: body.to_vec(),
            }))
        }
        _ => Err(ParseError::StartLine),
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn parse_core(headers: &[(String, String)]) -> Result<Core, ParseError> {
    let vias: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Via"))
        .flat_map(|(_, v)| split_list(v))
        .collect();
    let top = vias.first().ok_or(ParseError::Missing("Via"))?;
    let via = parse_via(top)?;
    let from = parse_party(
        find(headers, "From").ok_or(ParseError::Missing("From"))?,
        "From",
    )?;
    let to = parse_party(find(headers, "To").ok_or(ParseError::Missing("To"))?, "To")?;
    let call_id = find(headers, "Call-ID").ok_or(ParseError::Missing("Call-ID"))?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(ParseError::BadHeader {
            header: "Call-ID",
            reason: "empty or with spaces",
        });
    }
    let cseq = find(headers, "CSeq").ok_or(ParseError::Missing("CSeq"))?;
    let (num, method) = cseq
        .split_once(char::is_whitespace)
        .ok_or(ParseError::BadHeader {
            header: "CSeq",
            reason: "expected number and method",
        })?;
    let num = num.parse::<u32>().map_err(|_| ParseError::BadHeader {
        header: "CSeq",
        reason: "bad sequence number",
    })?;
    let method = method.trim();
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(ParseError::BadHeader {
            header: "CSeq",
            reason: "bad method",
        });
    }
    Ok(Core {
        vias: vias.clone(),
        via,
        from,
        to,
        call_id: call_id.to_string(),
        cseq: num,
        cseq_method: Method::parse(method),
    })
}

fn parse_via(value: &str) -> Result<TopVia, ParseError> {
    let bad = |reason| ParseError::BadHeader {
        header: "Via",
        reason,
    };
    let via = rsip::headers::Via::new(value)
        .typed()
        .map_err(|_| bad("unparsable"))?;
    let branch = via
        .branch()
        .map(|b| b.to_string())
        .filter(|b| !b.is_empty())
        .ok_or(bad("no branch"))?;
    Ok(TopVia {
        branch,
        sent_by: via.uri.host_with_port.to_string(),
        transport: via.transport.to_string(),
    })
}

fn parse_party(value: &str, header: &'static str) -> Result<Party, ParseError> {
    let bad = |reason| ParseError::BadHeader { header, reason };
    // rsip's From and To parse the same grammar; use From for both.
    let typed = rsip::headers::From::new(value)
        .typed()
        .map_err(|_| bad("unparsable"))?;
    let tag = typed.params.iter().find_map(|p| match p {
        rsip::Param::Tag(t) => Some(t.value().to_string()),
        _ => None,
    });
    Ok(Party {
        raw: value.to_string(),
        uri: typed.uri.to_string(),
        user: typed.uri.user().map(str::to_string),
        tag,
    })
}

/// The URI inside a name-addr (`"Bob" <sip:bob@x>;p=1`) or addr-spec.
pub fn name_addr_uri(value: &str) -> Option<&str> {
    let value = value.trim();
    if let Some(open) = value.find('<') {
        let close = value[open..].find('>')? + open;
        return Some(value[open + 1..close].trim());
    }
    // addr-spec: parameters after ';' belong to the header, not the URI.
    Some(value.split(';').next()?.trim()).filter(|s| !s.is_empty())
}

/// Where an IP-literal SIP URI points (sans-IO: no DNS here).
pub fn uri_socket_addr(uri: &str) -> Option<std::net::SocketAddr> {
    let parsed = rsip::Uri::try_from(uri).ok()?;
    let ip = match &parsed.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(_) => return None,
    };
    let port = parsed.port().map(|p| *p.value()).unwrap_or(5060);
    Some(std::net::SocketAddr::new(ip, port))
}

/// A message being built: the start line and headers in order. Serialized
/// through rsip's generator.
#[derive(Debug, Clone)]
pub struct Builder {
    start: Start,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Start {
    Request(Method, String),
    Response(u16, String),
}

impl Builder {
    pub fn request(method: Method, uri: impl Into<String>) -> Self {
        Builder {
            start: Start::Request(method, uri.into()),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn response(status: u16, reason: impl Into<String>) -> Self {
        Builder {
            start: Start::Response(status, reason.into()),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The request's method name ("" for a response).
    pub fn method_name(&self) -> &str {
        match &self.start {
            Start::Request(m, _) => m.as_str(),
            Start::Response(..) => "",
        }
    }

    pub fn push_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push(("Content-Type".to_string(), content_type.to_string()));
        self.body = body.into();
        self
    }

    /// The bytes to send (Content-Length added last). Values we put in come
    /// from our own state or were parsed as one header line, so they hold no
    /// CR/LF; anything that does is dropped rather than sent.
    pub fn build(self) -> Vec<u8> {
        let mut headers: Vec<rsip::Header> = self
            .headers
            .into_iter()
            .filter(|(n, v)| !n.contains(['\r', '\n']) && !v.contains(['\r', '\n']))
            .map(|(n, v)| rsip::Header::Other(n, v))
            .collect();
        headers.push(rsip::Header::ContentLength(
            rsip::headers::ContentLength::from(self.body.len() as u32),
        ));
        // rsip writes bodies through from_utf8_lossy; ours are text (SDP,
        // sipfrag, dtmf-relay), and we append raw bytes to be exact anyway.
        let head = match self.start {
            Start::Request(method, uri) => {
                // rsip has no extension methods and needs a parsed URI, so the
                // start line is ours; headers go through its generator.
                let headers: rsip::Headers = headers.into();
                format!("{method} {uri} SIP/2.0\r\n{headers}\r\n")
            }
            Start::Response(status, reason) => {
                let res = rsip::Response {
                    status_code: rsip::StatusCode::from(status),
                    version: rsip::Version::V2,
                    headers: headers.into(),
                    body: Vec::new(),
                };
                // rsip prints its own reason phrase; ours may be more
                // specific (400 naming the bad header), so swap the line.
                let text = res.to_string();
                let rest = text.split_once("\r\n").map(|(_, r)| r).unwrap_or("");
                let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
                format!("SIP/2.0 {status} {reason}\r\n{rest}")
            }
        };
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The standard reason phrase for the statuses we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        513 => "Message Too Large",
        603 => "Decline",
        _ => match status / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// A response to `req` (RFC 3261 8.2.6): Via, From, To, Call-ID and CSeq
/// copied; `to_tag` added to To when it has none (not on 100, 8.2.6.2).
pub fn response_to(req: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Builder {
    response_from_core(&req.core, status, reason, to_tag)
}

pub fn response_from_core(core: &Core, status: u16, reason: &str, to_tag: Option<&str>) -> Builder {
    let mut b = Builder::response(status, reason);
    for via in &core.vias {
        b.push_header("Via", via.clone());
    }
    b.push_header("From", core.from.raw.clone());
    let to = match (&core.to.tag, to_tag) {
        (None, Some(tag)) if status > 100 => format!("{};tag={tag}", core.to.raw),
        _ => core.to.raw.clone(),
    };
    b.push_header("To", to);
    b.push_header("Call-ID", core.call_id.clone());
    b.push_header("CSeq", format!("{} {}", core.cseq, core.cseq_method));
    b
}

/// A best-effort response to bytes that failed [`parse`]: when the headers
/// a response needs are readable, a 400 (or 513) naming the problem;
/// otherwise nothing (RFC 3261 says to drop what cannot be answered).
pub fn error_response(bytes: &[u8], err: &ParseError) -> Option<Vec<u8>> {
    let head_end = header_end(bytes).map(|(h, _)| h).unwrap_or(bytes.len());
    // For an oversize message only the first part is read: enough for the
    // headers we copy.
    let head = &bytes[..head_end.min(MAX_MESSAGE_SIZE)];
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let start = lines.next()?;
    if start.starts_with("SIP/") || !start.ends_with(" SIP/2.0") {
        return None; // never answer a response; only SIP/2.0 requests
    }
    let method = start.split(' ').next()?;
    if method == "ACK" {
        return None;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            let n = n.trim();
            if n.bytes().all(is_token_char) && !n.is_empty() {
                headers.push((full_name(n).to_string(), v.trim().to_string()));
            }
        }
    }
    let status = match err {
        ParseError::TooLarge { .. } => 513,
        _ => 400,
    };
    // Copied as received (the bad header may be one of these): only their
    // presence is required, as a response without them reaches nobody.
    let mut b = Builder::response(status, err.reason_phrase());
    let vias: Vec<&(String, String)> = headers.iter().filter(|(n, _)| n == "Via").collect();
    if vias.is_empty() {
        return None;
    }
    for (_, v) in vias {
        b.push_header("Via", v.clone());
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        let (_, v) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        b.push_header(name, v.clone());
    }
    Some(b.build())
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("stream message without a valid Content-Length")]
    NoContentLength,
}

/// Cuts a TCP/TLS byte stream into messages by Content-Length (RFC 3261
/// 18.3, where it is mandatory). CRLFs between messages are keepalives
/// (RFC 5626 4.4.1) and skipped. After an error the stream cannot be
/// resynchronised: the IO layer should close the connection.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    limit: usize,
    /// Double-CRLF pings seen since last asked (each wants a CRLF pong).
    pings: usize,
}

impl StreamFramer {
    pub fn new(limit: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            limit,
            pings: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Keepalive pings (CRLFCRLF) seen since the last call.
    pub fn take_pings(&mut self) -> usize {
        std::mem::take(&mut self.pings)
    }

    /// The next complete message, if buffered.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        let skip = self
            .buf
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(self.buf.len());
        if skip > 0 {
            self.pings += self.buf[..skip]
                .windows(4)
                .filter(|w| w == b"\r\n\r\n")
                .count();
            self.buf.drain(..skip);
        }
        let Some((head_end, body_start)) = header_end(&self.buf) else {
            if self.buf.len() > self.limit {
                return Some(Err(FrameError::TooLarge { limit: self.limit }));
            }
            return None;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]);
        let len = match content_length(&head) {
            Ok(Some(n)) => n,
            _ => return Some(Err(FrameError::NoContentLength)),
        };
        let total = body_start.saturating_add(len);
        if total > self.limit {
            return Some(Err(FrameError::TooLarge { limit: self.limit }));
        }
        if self.buf.len() < total {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..total).collect();
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const INVITE: &str = "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.0.1:5061\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 5\r\n\r\nv=0\r\ntrailing garbage";

    #[test]
    fn parses_sipp_invite_and_cuts_body() {
        let Message::Request(r) = parse(INVITE.as_bytes(), MAX_MESSAGE_SIZE).unwrap() else {
            panic!("request")
        };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri_user.as_deref(), Some("service"));
        assert_eq!(r.core.via.branch, "z9hG4bK-1-1-0");
        assert_eq!(r.core.via.sent_by, "127.0.0.1:5061");
        assert_eq!(r.core.from.tag.as_deref(), Some("1SIPpTag001"));
        assert_eq!(r.core.to.tag, None);
        assert_eq!(r.core.cseq, 1);
        assert_eq!(r.max_forwards, Some(70));
        assert_eq!(r.body, b"v=0\r\n");
    }

    #[test]
    fn compact_folded_and_extension_method() {
        let msg = "FOO sip:a@b.example SIP/2.0\r\nv: SIP/2.0/UDP h.example;branch=z9hG4bKa,\r\n SIP/2.0/UDP g.example;branch=z9hG4bKb\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b.example>\r\ni: abc\r\nCSeq: 7 FOO\r\nl: 0\r\n\r\n";
        let Message::Request(r) = parse(msg.as_bytes(), MAX_MESSAGE_SIZE).unwrap() else {
            panic!("request")
        };
        assert_eq!(r.method, Method::Other("FOO".into()));
        assert_eq!(r.core.vias.len(), 2);
        assert_eq!(r.core.via.branch, "z9hG4bKa");
        assert_eq!(r.core.call_id, "abc");
        assert_eq!(r.core.cseq_method, Method::Other("FOO".into()));
    }

    #[test]
    fn errors_name_the_header() {
        let no_callid = INVITE.replace("Call-ID: 1-1@127.0.0.1\r\n", "");
        let err = parse(no_callid.as_bytes(), MAX_MESSAGE_SIZE).unwrap_err();
        assert_eq!(err, ParseError::Missing("Call-ID"));
        let resp = error_response(no_callid.as_bytes(), &err);
        assert!(resp.is_none(), "cannot answer without Call-ID");

        let bad_cseq = INVITE.replace("CSeq: 1 INVITE", "CSeq: x INVITE");
        let err = parse(bad_cseq.as_bytes(), MAX_MESSAGE_SIZE).unwrap_err();
        assert!(matches!(err, ParseError::BadHeader { header: "CSeq", .. }));
        let no_branch = INVITE.replace(";branch=z9hG4bK-1-1-0", "");
        let err = parse(no_branch.as_bytes(), MAX_MESSAGE_SIZE).unwrap_err();
        assert_eq!(err.reason_phrase(), "Bad Via Header (no branch)");

        let short = INVITE.replace("Content-Length: 5", "Content-Length: 500");
        let err = parse(short.as_bytes(), MAX_MESSAGE_SIZE).unwrap_err();
        let resp = String::from_utf8(error_response(short.as_bytes(), &err).unwrap()).unwrap();
        assert!(
            resp.starts_with("SIP/2.0 400 Body Shorter Than Content-Length\r\n"),
            "{resp}"
        );
        assert!(resp.contains("Call-ID: 1-1@127.0.0.1\r\n"));
    }

    #[test]
    fn oversize_is_513() {
        let big = INVITE.replace(
            "Subject: Performance Test",
            &format!("Subject: {}", "x".repeat(70_000)),
        );
        let err = parse(big.as_bytes(), MAX_MESSAGE_SIZE).unwrap_err();
        assert!(matches!(err, ParseError::TooLarge { .. }));
        let resp = String::from_utf8(error_response(big.as_bytes(), &err).unwrap()).unwrap();
        assert!(resp.starts_with("SIP/2.0 513 Message Too Large\r\n"));
    }

    #[test]
    fn response_copies_and_tags() {
        let Message::Request(r) = parse(INVITE.as_bytes(), MAX_MESSAGE_SIZE).unwrap() else {
            panic!()
        };
        let bytes = response_to(&r, 180, "Ringing", Some("ourtag")).build();
        let Message::Response(resp) = parse(&bytes, MAX_MESSAGE_SIZE).unwrap() else {
            panic!()
        };
        assert_eq!(resp.status, 180);
        assert_eq!(resp.core.to.tag.as_deref(), Some("ourtag"));
        assert_eq!(resp.core.via, r.core.via);
        assert_eq!(resp.header("Content-Length"), Some("0"));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\n"));
    }

    #[test]
    fn framer_splits_and_skips_keepalives() {
        let mut f = StreamFramer::new(MAX_MESSAGE_SIZE);
        let msg = INVITE.replace("trailing garbage", "");
        let all = format!("\r\n\r\n{msg}\r\n{msg}");
        let (a, b) = all.as_bytes().split_at(100);
        f.push(a);
        assert!(f.next_frame().is_none());
        f.push(b);
        assert_eq!(f.next_frame().unwrap().unwrap(), msg.as_bytes());
        assert_eq!(f.next_frame().unwrap().unwrap(), msg.as_bytes());
        assert!(f.next_frame().is_none());
        assert_eq!(f.take_pings(), 1);
        let mut f = StreamFramer::new(MAX_MESSAGE_SIZE);
        f.push(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::NoContentLength)));
    }

    #[test]
    fn split_list_respects_quotes_and_brackets() {
        assert_eq!(
            split_list("\"a, b\" <sip:x;p=1,2>, <sip:y>"),
            vec!["\"a, b\" <sip:x;p=1,2>", "<sip:y>"]
        );
    }
}
