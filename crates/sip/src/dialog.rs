//! Dialog state (RFC 3261 12) and the in-dialog requests we send.

use crate::message::{Builder, Headers, Method, Request, Response, name_addr_uri, split_list};

/// Why an in-dialog request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogError {
    /// CSeq lower than the last one (RFC 3261 12.2.2): answer 500.
    OutOfOrder,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our From/To value, without tag.
    pub local_party: String,
    pub remote_party: String,
    pub local_seq: u32,
    pub remote_seq: Option<u32>,
    /// Route set, as name-addrs, in the order we put them in Route.
    pub route_set: Vec<String>,
    /// The remote Contact URI: the Request-URI of our requests.
    pub remote_target: String,
    /// Our Contact (name-addr).
    pub local_contact: String,
}

/// A From/To value with its tag parameter removed.
fn strip_tag(value: &str) -> String {
    // Parameters after the name-addr's '>' (or after the URI when there are
    // no brackets, where they are header parameters too).
    let params_start = value.rfind('>').map(|i| i + 1).unwrap_or(0);
    let (head, params) = value.split_at(params_start);
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| {
            let p = p.trim();
            !p.is_empty() && !p.to_ascii_lowercase().starts_with("tag=")
        })
        .collect();
    let mut out = head.to_string();
    if params_start == 0 {
        // addr-spec form: the first segment is the URI itself.
        let mut parts = kept.into_iter();
        out = parts.next().unwrap_or("").to_string();
        for p in parts {
            out.push(';');
            out.push_str(p);
        }
        return out;
    }
    for p in kept {
        out.push(';');
        out.push_str(p);
    }
    out
}

fn contact_uri(headers: &impl Headers) -> Option<String> {
    headers
        .header_values("Contact")
        .first()
        .and_then(|c| name_addr_uri(c))
        .map(str::to_string)
}

impl Dialog {
    /// The UAS dialog from an INVITE we answer (12.1.1).
    pub fn uas(req: &Request, local_tag: &str, local_contact: &str, local_seq: u32) -> Dialog {
        Dialog {
            call_id: req.core.call_id.clone(),
            local_tag: local_tag.to_string(),
            remote_tag: req.core.from.tag.clone().unwrap_or_default(),
            local_party: strip_tag(&req.core.to.raw),
            remote_party: strip_tag(&req.core.from.raw),
            local_seq,
            remote_seq: Some(req.core.cseq),
            route_set: req.header_values("Record-Route"),
            remote_target: contact_uri(req).unwrap_or_else(|| req.core.from.uri.clone()),
            local_contact: local_contact.to_string(),
        }
    }

    /// The UAC dialog from a 1xx/2xx with a To tag to our INVITE (12.1.2).
    pub fn uac(res: &Response, local_contact: &str) -> Dialog {
        let mut route_set = res.header_values("Record-Route");
        route_set.reverse();
        Dialog {
            call_id: res.core.call_id.clone(),
            local_tag: res.core.from.tag.clone().unwrap_or_default(),
            remote_tag: res.core.to.tag.clone().unwrap_or_default(),
            local_party: strip_tag(&res.core.from.raw),
            remote_party: strip_tag(&res.core.to.raw),
            local_seq: res.core.cseq,
            remote_seq: None,
            route_set,
            remote_target: contact_uri(res).unwrap_or_else(|| res.core.to.uri.clone()),
            local_contact: local_contact.to_string(),
        }
    }

    /// A 2xx or target refresh updates the remote target (12.2.1.2).
    pub fn refresh_target(&mut self, headers: &impl Headers) {
        if let Some(uri) = contact_uri(headers) {
            self.remote_target = uri;
        }
    }

    /// Checks and records an in-dialog request's CSeq (12.2.2).
    pub fn on_request(&mut self, req: &Request) -> Result<(), DialogError> {
        if matches!(req.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        if self.remote_seq.is_some_and(|seq| req.core.cseq < seq) {
            return Err(DialogError::OutOfOrder);
        }
        self.remote_seq = Some(req.core.cseq);
        Ok(())
    }

    /// A new in-dialog request (not ACK/CANCEL) with the next CSeq. `via` is
    /// the full Via value (with branch). Loose routing only: a strict router
    /// (no `;lr` in the first route) is not supported; none of the trunks
    /// we target use one.
    pub fn request(&mut self, method: Method, via: &str) -> Builder {
        self.local_seq = self.local_seq.wrapping_add(1);
        let seq = self.local_seq;
        self.build(method, via, seq)
    }

    /// The ACK for a 2xx (13.2.2.4): the INVITE's CSeq number, new branch.
    pub fn ack(&self, invite_cseq: u32, via: &str) -> Builder {
        self.build(Method::Ack, via, invite_cseq)
    }

    fn build(&self, method: Method, via: &str, seq: u32) -> Builder {
        let mut b = Builder::request(method.clone(), self.remote_target.clone())
            .header("Via", via)
            .header("Max-Forwards", "70")
            .header(
                "From",
                format!("{};tag={}", self.local_party, self.local_tag),
            )
            .header(
                "To",
                format!("{};tag={}", self.remote_party, self.remote_tag),
            )
            .header("Call-ID", self.call_id.clone())
            .header("CSeq", format!("{seq} {method}"));
        for route in &self.route_set {
            b.push_header("Route", route.clone());
        }
        if matches!(
            method,
            Method::Invite | Method::Refer | Method::Notify | Method::Update
        ) {
            b.push_header("Contact", self.local_contact.clone());
        }
        b
    }

    /// The first hop for our requests: the top route's URI, else the
    /// remote target.
    pub fn next_hop_uri(&self) -> String {
        self.route_set
            .first()
            .and_then(|r| name_addr_uri(r))
            .map(str::to_string)
            .unwrap_or_else(|| self.remote_target.clone())
    }

    /// REFER (RFC 3515) asking the peer to call `target`.
    pub fn refer(&mut self, via: &str, target: &str) -> Builder {
        self.request(Method::Refer, via)
            .header("Refer-To", format!("<{target}>"))
            .header("Referred-By", self.local_contact.clone())
    }

    /// NOTIFY with a sipfrag of a REFER's progress (RFC 3515 2.4.4);
    /// `status` >= 200 ends the implicit subscription.
    pub fn notify_refer(&mut self, via: &str, status: u16, reason: &str) -> Builder {
        let state = if status >= 200 {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        self.request(Method::Notify, via)
            .header("Event", "refer")
            .header("Subscription-State", state)
            .body(
                "message/sipfrag;version=2.0",
                format!("SIP/2.0 {status} {reason}\r\n"),
            )
    }

    /// INFO carrying a DTMF digit (`application/dtmf-relay`, the Cisco form
    /// most trunks accept).
    pub fn info_dtmf(&mut self, via: &str, digit: char, duration_ms: u32) -> Builder {
        self.request(Method::Info, via).body(
            "application/dtmf-relay",
            format!("Signal={digit}\r\nDuration={duration_ms}\r\n"),
        )
    }
}

/// A digit from an INFO body (`application/dtmf-relay` or
/// `application/dtmf`): the digit and its duration in ms.
pub fn parse_dtmf_info(content_type: &str, body: &[u8]) -> Option<(char, u32)> {
    let text = std::str::from_utf8(body).ok()?;
    let valid = |c: char| c.is_ascii_digit() || "*#ABCDabcd".contains(c);
    match content_type {
        "application/dtmf-relay" => {
            let mut digit = None;
            let mut duration = 160;
            for line in text.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "signal" => {
                        let v = v.trim();
                        digit = match v {
                            "10" => Some('*'),
                            "11" => Some('#'),
                            _ if v.chars().count() == 1 => v.chars().next().filter(|c| valid(*c)),
                            _ => None,
                        };
                    }
                    "duration" => duration = v.trim().parse().unwrap_or(160),
                    _ => {}
                }
            }
            digit.map(|d| (d.to_ascii_uppercase(), duration))
        }
        "application/dtmf" => {
            let t = text.trim();
            (t.chars().count() == 1)
                .then(|| t.chars().next())
                .flatten()
                .filter(|c| valid(*c))
                .map(|d| (d.to_ascii_uppercase(), 160))
        }
        _ => None,
    }
}

/// The URI a REFER's Refer-To names.
pub fn refer_target(req: &Request) -> Option<String> {
    let v = req.header("Refer-To")?;
    split_list(v)
        .first()
        .and_then(|v| name_addr_uri(v))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MAX_MESSAGE_SIZE, Message, parse, response_to};

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 2 INVITE\r\n\
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";

    fn req(s: &str) -> Request {
        match parse(s.as_bytes(), MAX_MESSAGE_SIZE).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => panic!(),
        }
    }

    #[test]
    fn uas_dialog_and_bye() {
        let r = req(INVITE);
        let mut d = Dialog::uas(&r, "t1", "<sip:us@10.0.0.1:5060>", 100);
        assert_eq!(
            d.remote_target,
            "sip:alice@client.atlanta.example.com;transport=udp"
        );
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(d.local_party, "Bob <sip:bob@biloxi.example.com>");
        let bye = d
            .request(Method::Bye, "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx")
            .build();
        let Message::Request(bye) = parse(&bye, MAX_MESSAGE_SIZE).unwrap() else {
            panic!()
        };
        assert_eq!(bye.core.cseq, 101);
        assert_eq!(bye.core.from.tag.as_deref(), Some("t1"));
        assert_eq!(bye.core.to.tag.as_deref(), Some("9fxced76sl"));
        assert_eq!(
            bye.header_values("Route"),
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(d.next_hop_uri(), "sip:p1.example.com;lr");
        // CSeq ordering
        let mut old = r.clone();
        old.core.cseq = 1;
        assert_eq!(d.on_request(&old), Err(DialogError::OutOfOrder));
    }

    #[test]
    fn uac_dialog_reverses_route_set() {
        let r = req(INVITE);
        let res = response_to(&r, 200, "OK", Some("bobtag"))
            .header(
                "Record-Route",
                "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            )
            .header("Contact", "<sip:bob@192.0.2.4>")
            .build();
        let Message::Response(res) = parse(&res, MAX_MESSAGE_SIZE).unwrap() else {
            panic!()
        };
        let d = Dialog::uac(&res, "<sip:alice@x>");
        assert_eq!(
            d.route_set,
            vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        );
        assert_eq!(d.remote_target, "sip:bob@192.0.2.4");
        assert_eq!(d.remote_tag, "bobtag");
        assert_eq!(d.local_tag, "9fxced76sl");
        let ack = String::from_utf8(d.ack(2, "SIP/2.0/UDP x;branch=z9hG4bKa").build()).unwrap();
        assert!(ack.starts_with("ACK sip:bob@192.0.2.4 SIP/2.0\r\n"));
        assert!(ack.contains("CSeq: 2 ACK\r\n"));
    }

    #[test]
    fn strip_tag_forms() {
        assert_eq!(
            strip_tag("Bob <sip:b@x>;tag=1;foo=2"),
            "Bob <sip:b@x>;foo=2"
        );
        assert_eq!(strip_tag("sip:b@x;tag=1"), "sip:b@x");
        assert_eq!(strip_tag("<sip:b@x;tag=inuri>"), "<sip:b@x;tag=inuri>");
    }

    #[test]
    fn dtmf_bodies() {
        assert_eq!(
            parse_dtmf_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Some(('5', 160))
        );
        assert_eq!(
            parse_dtmf_info("application/dtmf-relay", b"Signal= 11\r\n"),
            Some(('#', 160))
        );
        assert_eq!(parse_dtmf_info("application/dtmf", b"*"), Some(('*', 160)));
        assert_eq!(parse_dtmf_info("application/dtmf-relay", b"Signal=X"), None);
        assert_eq!(parse_dtmf_info("text/plain", b"Signal=1"), None);
    }

    #[test]
    fn refer_and_notify() {
        let r = req(INVITE);
        let mut d = Dialog::uas(&r, "t1", "<sip:us@10.0.0.1>", 1);
        let refer = d
            .refer(
                "SIP/2.0/UDP h;branch=z9hG4bKr",
                "sip:+15550100@trunk.example",
            )
            .build();
        let refer = req(std::str::from_utf8(&refer).unwrap());
        assert_eq!(
            refer_target(&refer).as_deref(),
            Some("sip:+15550100@trunk.example")
        );
        let n = String::from_utf8(
            d.notify_refer("SIP/2.0/UDP h;branch=z9hG4bKn", 200, "OK")
                .build(),
        )
        .unwrap();
        assert!(n.contains("Subscription-State: terminated;reason=noresource\r\n"));
        assert!(n.ends_with("SIP/2.0 200 OK\r\n"));
        assert!(n.contains("CSeq: 3 NOTIFY\r\n"));
    }
}
