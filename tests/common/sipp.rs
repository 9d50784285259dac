//! sipp (Debian `sip-tester`) as the far end of the SIP gateway's tests: a
//! server with its gateway on a known UDP port, UAC scenarios built from
//! steps (INVITE, re-INVITE, INFO, CANCEL, BYE, waiting for the gateway's
//! BYE), UAS scenarios for dial-out, and helpers to run, wait for and check
//! the sipp processes.

use super::{Opts, Server};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A base port for sipp's media: sipp binds it and the next three (audio
/// RTP/RTCP, video RTP/RTCP), so all four must be free, not only the first
/// (tests run side by side; a taken neighbour failed a call with EADDRINUSE).
pub fn free_media_ports() -> u16 {
    for _ in 0..100 {
        let base = free_udp_port() & !1;
        if base > 65_530 {
            continue;
        }
        let all_free = (0..4).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no four free UDP ports in a row for sipp's media");
}

/// A server whose SIP gateway listens on a UDP port of the OS's choosing
/// (returned: tests start side by side, and a port picked before the server
/// binds it can be taken meanwhile) and may call loopback trunks; `env` adds
/// or overrides settings. The server's log is `server.log` in `dir`.
pub fn voice_server_with(dir: &Path, env: &[(&str, &str)]) -> (Server, u16) {
    let rtp = free_udp_port() & !1;
    let level = std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into());
    let mut vars: Vec<(String, String)> = vec![
        ("CONTINUUM_SIP__UDP_LISTEN".into(), "127.0.0.1:0".into()),
        ("CONTINUUM_SIP__ALLOW_PRIVATE_TRUNKS".into(), "true".into()),
        // The gateway's bound addresses are logged at info.
        (
            "CONTINUUM_LOG".into(),
            format!("{level},continuum_server::voice=info"),
        ),
        // A small range near a free port: tests run side by side.
        ("CONTINUUM_SIP__RTP_PORT_MIN".into(), rtp.to_string()),
        ("CONTINUUM_SIP__RTP_PORT_MAX".into(), (rtp + 19).to_string()),
        // sipp's built-in UAS (`-m 1`) would count a keepalive OPTIONS as its
        // one call: off, but in the keepalive tests (they set it).
        ("CONTINUUM_SIP__TRUNK_KEEPALIVE_SECS".into(), "0".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let log = dir.join("server.log");
    let s = Server::start_with(
        dir,
        Opts {
            env: vars,
            log_file: Some(log.clone()),
            ..Default::default()
        },
    );
    // Logged before the server reports its API address (serve.rs).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let port = text
        .lines()
        .find(|l| l.contains("SIP gateway listening"))
        .and_then(|l| {
            let after = &l[l.find("Some(")? + 5..];
            let addr: String = after.chars().take_while(|c| *c != ')').collect();
            addr.rsplit(':').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no SIP gateway address in the server's log:\n{text}"));
    (s, port)
}

pub fn voice_server(dir: &Path) -> (Server, u16) {
    voice_server_with(dir, &[])
}

/// An audio `m=` line with PCMU and telephone-events on sipp's media port.
pub const PCMU: &str = "m=audio [media_port] RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15";

/// The same, with the media at `port` (a socket of the test's own).
pub fn pcmu_at(port: u16) -> String {
    PCMU.replace("[media_port]", &port.to_string())
}

/// A sipp UAC scenario, step by step. Requests within the dialog carry
/// increasing CSeqs; every step waits for what it expects, so a scenario
/// fails (and sipp exits non-zero) on anything else.
pub struct Uac {
    caller: String,
    xml: String,
    cseq: u32,
    invite_cseq: u32,
    /// The `o=` version of the next SDP (re-INVITEs need a new one).
    sdp_version: u64,
}

impl Uac {
    pub fn new(caller: &str) -> Self {
        Uac {
            caller: caller.to_owned(),
            xml: String::new(),
            cseq: 1,
            invite_cseq: 1,
            sdp_version: 2353687637,
        }
    }

    fn sdp(&mut self, media: &str) -> String {
        let v = self.sdp_version;
        self.sdp_version += 1;
        format!(
            "v=0\no=user1 53655765 {v} IN IP[local_ip_type] [local_ip]\ns=-\nc=IN IP[media_ip_type] [media_ip]\nt=0 0\n{media}\n"
        )
    }

    /// A request of ours; `branch` and `to_tag` default to a new branch
    /// and the dialog's tag.
    fn request_with(
        &mut self,
        method: &str,
        body: Option<(&str, String)>,
        branch: &str,
        to_tag: &str,
    ) {
        let cseq = match method {
            "ACK" | "CANCEL" => self.invite_cseq,
            _ => {
                self.cseq += 1;
                self.cseq - 1
            }
        };
        if method == "INVITE" {
            self.invite_cseq = cseq;
        }
        let (ctype, content) = match body {
            Some((t, c)) => (format!("Content-Type: {t}\n"), c),
            None => (String::new(), String::new()),
        };
        let caller = &self.caller;
        let retrans = if method == "ACK" {
            ""
        } else {
            " retrans=\"500\""
        };
        let _ = write!(
            self.xml,
            r#"<send{retrans}><![CDATA[
{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
From: "Patient" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: sip:{caller}@[local_ip]:[local_port]
Max-Forwards: 70
{ctype}Content-Length: [len]

{content}]]></send>
"#
        );
    }

    fn request(&mut self, method: &str, body: Option<(&str, String)>) {
        let to_tag = if method == "INVITE" && self.cseq == 1 {
            ""
        } else {
            "[peer_tag_param]"
        };
        self.request_with(method, body, "[branch]", to_tag);
    }

    /// The INVITE offering `media` (an `m=` line and its attributes), with
    /// the provisional answers it may get.
    pub fn invite(mut self, media: &str) -> Self {
        let sdp = self.sdp(media);
        self.request("INVITE", Some(("application/sdp", sdp)));
        self.xml.push_str(
            "<recv response=\"100\" optional=\"true\"/>\n<recv response=\"180\" optional=\"true\"/>\n<recv response=\"183\" optional=\"true\"/>\n",
        );
        self
    }

    /// A 200 to the last INVITE (its SDP must match `sdp_regexp` when given), then the ACK.
    pub fn answered_where(mut self, sdp_regexp: Option<&str>) -> Self {
        match sdp_regexp {
            Some(re) => {
                let re = xml_attr(re);
                let _ = writeln!(
                    self.xml,
                    r#"<recv response="200" rtd="true"><action><ereg regexp="{re}" search_in="msg" check_it="true" assign_to="sdp_ok"/></action></recv>
<Reference variables="sdp_ok"/>"#
                );
            }
            None => self.xml.push_str("<recv response=\"200\" rtd=\"true\"/>\n"),
        }
        self.request("ACK", None);
        self
    }

    pub fn answered(self) -> Self {
        self.answered_where(None)
    }

    /// A failure final response to the INVITE (ACKed by sipp).
    pub fn rejected(mut self, status: u16) -> Self {
        let _ = writeln!(self.xml, "<recv response=\"{status}\"/>");
        self.request("ACK", None);
        self
    }

    /// A re-INVITE offering `media`; its 200 must match `sdp_regexp`.
    pub fn reinvite(mut self, media: &str, sdp_regexp: &str) -> Self {
        let sdp = self.sdp(media);
        self.request("INVITE", Some(("application/sdp", sdp)));
        self.xml
            .push_str("<recv response=\"100\" optional=\"true\"/>\n");
        self.answered_where(Some(sdp_regexp))
    }

    /// SIP INFO DTMF digits (application/dtmf-relay), each answered 200.
    pub fn info_dtmf(mut self, digits: &str) -> Self {
        for d in digits.chars() {
            let body = format!("Signal={d}\nDuration=100\n");
            self.request("INFO", Some(("application/dtmf-relay", body)));
            self.xml.push_str("<recv response=\"200\"/>\n");
        }
        self
    }

    pub fn pause(mut self, ms: u64) -> Self {
        let _ = writeln!(self.xml, "<pause milliseconds=\"{ms}\"/>");
        self
    }

    /// Anything else, verbatim.
    pub fn raw(mut self, xml: &str) -> Self {
        self.xml.push_str(xml);
        self.xml.push('\n');
        self
    }

    /// Our BYE, answered 200.
    pub fn bye(mut self) -> Self {
        self.request("BYE", None);
        self.xml
            .push_str("<recv response=\"200\" crlf=\"true\"/>\n");
        self
    }

    /// Waits for the gateway's BYE and answers it.
    pub fn await_bye(mut self) -> Self {
        self.xml.push_str(
            r#"<recv request="BYE"/>
<send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"#,
        );
        self
    }

    /// The INVITE, then a CANCEL as soon as its 100 arrives (RFC 3261 9.1).
    /// Either the CANCEL wins (200 to it, 487 to the INVITE, ACKed), or the
    /// INVITE's 200 crossed it: then the call is ACKed and hung up (BYE).
    pub fn invite_and_cancel(mut self, media: &str) -> Self {
        let sdp = self.sdp(media);
        // Steps: 0 INVITE, 1 its 100, 2 CANCEL (the INVITE's branch),
        // 3 the first 200, 4 the branch, 5 the 487, 6 its ACK (the INVITE's branch).
        self.request("INVITE", Some(("application/sdp", sdp)));
        self.xml.push_str("<recv response=\"100\"/>\n");
        self.request_with("CANCEL", None, "[branch-2]", "");
        self.xml.push_str(
            r#"<recv response="200"><action><ereg regexp="CSeq: *[0-9]+ INVITE" search_in="msg" assign_to="crossed"/><ereg regexp=";tag=[-0-9A-Za-z.~_+]+" search_in="hdr" header="To:" assign_to="dialog_tag"/></action></recv>
<nop next="crossed" test="crossed"/>
<recv response="487"/>
"#,
        );
        self.request_with("ACK", None, "[branch-6]", "[peer_tag_param]");
        self.xml
            .push_str("<nop next=\"done\"/>\n<label id=\"crossed\"/>\n");
        // The 200 crossed the CANCEL: take the CANCEL's 200 (it follows at
        // once: sipp must be waiting for it), ACK the INVITE's, BYE.
        self.xml.push_str("<recv response=\"200\"/>\n");
        self.request_with("ACK", None, "[branch]", "[$dialog_tag]");
        self.request_with("BYE", None, "[branch]", "[$dialog_tag]");
        self.xml
            .push_str("<recv response=\"200\"/>\n<label id=\"done\"/>\n");
        self
    }

    pub fn build(self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"continuum uac\">\n{}</scenario>\n",
            self.xml
        )
    }
}

/// The classic UAC: INVITE with `sdp_media` expecting `expect`; on 200 it
/// ACKs, waits `hold_ms`, and hangs up.
pub fn uac_scenario(caller: &str, sdp_media: &str, expect: u16, hold_ms: u64) -> String {
    let uac = Uac::new(caller).invite(sdp_media);
    if expect == 200 {
        uac.answered().pause(hold_ms).bye().build()
    } else {
        uac.rejected(expect).build()
    }
}

/// A running sipp process.
pub struct Sipp {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
    /// The UAS's SIP port.
    pub port: u16,
}

fn sipp_command(dir: &Path, name: &str, scenario: Option<&str>) -> Command {
    let mut cmd = Command::new("sipp");
    match scenario {
        Some(xml) => {
            let file = dir.join(format!("{name}.xml"));
            std::fs::write(&file, xml).unwrap();
            cmd.args(["-sf", file.to_str().unwrap()]);
        }
        None => {
            cmd.args(["-sn", "uas"]);
        }
    }
    cmd.args([
        "-i",
        "127.0.0.1",
        "-mp",
        &free_media_ports().to_string(),
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        "90s",
        "-timeout_error",
        "-trace_err",
        "-error_file",
        dir.join(format!("{name}.errors.log")).to_str().unwrap(),
    ])
    .current_dir(dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

impl Sipp {
    /// A UAS answering one call: sipp's own `uas` scenario, or `scenario`.
    pub fn uas(dir: &Path, name: &str, scenario: Option<&str>) -> Sipp {
        let port = free_udp_port();
        let child = sipp_command(dir, name, scenario)
            .args(["-p", &port.to_string()])
            .spawn()
            .expect("sipp runs (Debian package sip-tester)");
        Sipp {
            child: Some(child),
            dir: dir.to_owned(),
            name: name.to_owned(),
            port,
        }
    }

    /// A UAC calling `called` at the gateway's `sip_port`, in the background.
    pub fn uac(dir: &Path, name: &str, scenario: &str, sip_port: u16, called: &str) -> Sipp {
        let port = free_udp_port();
        let child = sipp_command(dir, name, Some(scenario))
            .args([
                &format!("127.0.0.1:{sip_port}"),
                "-s",
                called,
                "-p",
                &port.to_string(),
            ])
            .spawn()
            .expect("sipp runs (Debian package sip-tester)");
        Sipp {
            child: Some(child),
            dir: dir.to_owned(),
            name: name.to_owned(),
            port,
        }
    }

    /// Waits for sipp to finish (it has its own `-timeout`).
    pub async fn finish(mut self) -> Output {
        let child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    }

    /// Waits for sipp and asserts it saw its whole scenario.
    pub async fn assert_ok(self) {
        let (dir, name) = (self.dir.clone(), self.name.clone());
        let out = self.finish().await;
        assert_sipp_ok(&out, &dir, &name);
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs sipp as a UAC calling `called` at the gateway; returns its output.
pub fn sipp_call(dir: &Path, name: &str, scenario: &str, sip_port: u16, called: &str) -> Output {
    let mut sipp = Sipp::uac(dir, name, scenario, sip_port, called);
    sipp.child.take().unwrap().wait_with_output().unwrap()
}

pub fn assert_sipp_ok(out: &Output, dir: &Path, name: &str) {
    let errors =
        std::fs::read_to_string(dir.join(format!("{name}.errors.log"))).unwrap_or_default();
    assert!(
        out.status.success(),
        "sipp {name} failed ({}):\n{}\n{}\n{errors}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Polls `GET path` until `done` holds (15 s); returns the last answer.
pub async fn eventually(s: &Server, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = s.ok("GET", path, key, None).await;
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kinds of a page of timeline events.
pub fn kinds(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The server's Prometheus text.
pub async fn metrics(s: &Server) -> String {
    s.client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one counter line (`name{labels}`), 0 when absent.
pub fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An inbound trunk for `number` from loopback with a `conversation` dispatch rule.
pub async fn inbound_number(s: &Server, key: &str, number: &str) {
    inbound_route(
        s,
        key,
        number,
        serde_json::json!({"type": "conversation", "queue": "front-desk"}),
    )
    .await;
}

/// An inbound trunk carrying `number` from loopback, and its dispatch rule.
pub async fn inbound_route(s: &Server, key: &str, number: &str, action: Value) {
    s.ok(
        "POST",
        "/v1/sip/trunks",
        key,
        Some(
            serde_json::json!({"name": format!("carrier {number}"), "direction": "inbound",
            "numbers": [number], "allowed_sources": ["127.0.0.1/32"]}),
        ),
    )
    .await;
    s.ok(
        "POST",
        "/v1/sip/dispatch-rules",
        key,
        Some(serde_json::json!({"number": number, "action": action})),
    )
    .await;
}

/// An outbound trunk to a UAS on loopback `port`; returns the trunk.
pub async fn outbound_trunk(s: &Server, key: &str, port: u16, max_calls: u32) -> Value {
    s.ok(
        "POST",
        "/v1/sip/trunks",
        key,
        Some(
            serde_json::json!({"name": "carrier out", "direction": "outbound",
            "address": format!("127.0.0.1:{port}"), "caller_ids": ["+14155550100"],
            "max_concurrent_calls": max_calls}),
        ),
    )
    .await
}

/// Text for an XML attribute (sipp regexps of URIs in angle brackets).
fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A sipp UAS scenario, step by step (answers the gateway's dial-out).
pub struct Uas {
    xml: String,
}

/// A response echoing the last request; `tag`: add our To tag (responses
/// to the INVITE; requests within the dialog carry it already).
fn uas_response(status: &str, tag: bool, cseq: &str, sdp: bool) -> String {
    let tag = if tag {
        ";tag=[pid]SIPpTag01[call_number]"
    } else {
        ""
    };
    let body = if sdp {
        "Content-Type: application/sdp\nContent-Length: [len]\n\nv=0\no=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]\ns=-\nc=IN IP[media_ip_type] [media_ip]\nt=0 0\nm=audio [media_port] RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
    } else {
        "Content-Length: 0\n\n"
    };
    format!(
        "<![CDATA[\nSIP/2.0 {status}\n[last_Via:]\n[last_From:]\n[last_To:]{tag}\n[last_Call-ID:]\n{cseq}\nContact: <sip:[local_ip]:[local_port];transport=[transport]>\n{body}]]>"
    )
}

impl Uas {
    /// Receives the INVITE and rings (100, 180).
    pub fn ringing() -> Self {
        let mut xml = String::from(
            r#"<recv request="INVITE" crlf="true"><action><ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="invite_cseq"/></action></recv>
<Reference variables="invite_cseq"/>
"#,
        );
        let _ = writeln!(
            xml,
            "<send>{}</send>\n<send>{}</send>",
            uas_response("100 Trying", false, "[last_CSeq:]", false),
            uas_response("180 Ringing", true, "[last_CSeq:]", false)
        );
        Uas { xml }
    }

    /// Receives the INVITE and rings with a 180 alone (no 100 first: a
    /// CANCEL, which waits for a provisional, cannot come before the 180).
    pub fn rings_at_once() -> Self {
        let mut xml = String::from(
            r#"<recv request="INVITE" crlf="true"><action><ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="invite_cseq"/></action></recv>
<Reference variables="invite_cseq"/>
"#,
        );
        let _ = writeln!(
            xml,
            "<send>{}</send>",
            uas_response("180 Ringing", true, "[last_CSeq:]", false)
        );
        Uas { xml }
    }

    /// The 200 (with SDP) to the INVITE, whatever request came last (a
    /// CANCEL has the INVITE's Via, From, To and Call-ID).
    pub fn answer(mut self) -> Self {
        let _ = writeln!(
            self.xml,
            "<send retrans=\"500\">{}</send>",
            uas_response("200 OK", true, "CSeq: [$invite_cseq] INVITE", true)
        );
        self
    }

    /// The 200 (with SDP: PCMU and telephone-events at `port`, a socket of
    /// the test's own) to the INVITE.
    pub fn answer_at(mut self, port: u16) -> Self {
        let _ = writeln!(
            self.xml,
            "<send retrans=\"500\">{}</send>",
            uas_response("200 OK", true, "CSeq: [$invite_cseq] INVITE", true).replace(
                "m=audio [media_port] RTP/AVP 0\na=rtpmap:0 PCMU/8000\n",
                &format!("{}\n", pcmu_at(port))
            )
        );
        self
    }

    /// A final failure (e.g. `486 Busy Here`) to the INVITE, then its ACK.
    pub fn reject(mut self, status: &str) -> Self {
        let _ = writeln!(
            self.xml,
            "<send>{}</send>\n<recv request=\"ACK\"/>",
            uas_response(status, true, "CSeq: [$invite_cseq] INVITE", false)
        );
        self
    }

    /// Receives the ACK to our 200, keeps the call up `ms`, then hangs up
    /// (BYE within the dialog, answered 200).
    pub fn acked_then_bye(mut self, ms: u64) -> Self {
        let _ = writeln!(
            self.xml,
            r#"<recv request="ACK"><action><ereg regexp=";tag=[-0-9A-Za-z.~_+]+" search_in="hdr" header="From:" assign_to="gw_tag"/></action></recv>
<pause milliseconds="{ms}"/>
<send retrans="500"><![CDATA[
BYE sip:continuum@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:desk@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
To: <sip:continuum@[remote_ip]:[remote_port]>[$gw_tag]
[last_Call-ID:]
CSeq: 2 BYE
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
<recv response="200" crlf="true"/>"#
        );
        self
    }

    /// Waits for a request (`check`: a regexp its text must match).
    pub fn receive(mut self, method: &str, check: Option<&str>) -> Self {
        let action = check.map(xml_attr).map_or(String::new(), |re| {
            format!(
                "<action><ereg regexp=\"{re}\" search_in=\"msg\" check_it=\"true\" assign_to=\"checked_{method}\"/></action>"
            )
        });
        let _ = writeln!(self.xml, "<recv request=\"{method}\">{action}</recv>");
        if check.is_some() {
            let _ = writeln!(self.xml, "<Reference variables=\"checked_{method}\"/>");
        }
        self
    }

    /// Answers the last request received with `status` (e.g. `200 OK`).
    pub fn respond(mut self, status: &str) -> Self {
        let _ = writeln!(
            self.xml,
            "<send>{}</send>",
            uas_response(status, false, "[last_CSeq:]", false)
        );
        self
    }

    /// Waits for a request and answers it.
    pub fn respond_to(self, method: &str, status: &str) -> Self {
        self.receive(method, None).respond(status)
    }

    /// Receives a REFER (its Refer-To must match `refer_to`), accepts it
    /// (202) and reports the transfer's outcome: NOTIFY with a sipfrag of
    /// `sipfrag` (e.g. `SIP/2.0 200 OK`), which the gateway must answer 200.
    pub fn referred(mut self, refer_to: &str, sipfrag: &str) -> Self {
        let refer_to = xml_attr(refer_to);
        let _ = writeln!(
            self.xml,
            r#"<recv request="REFER"><action><ereg regexp="Refer-To: *{refer_to}" search_in="msg" check_it="true" assign_to="refer_to"/><ereg regexp=";tag=[-0-9A-Za-z.~_+]+" search_in="hdr" header="From:" assign_to="gw_tag"/></action></recv>
<send>{}</send>
<send retrans="500"><![CDATA[
NOTIFY sip:continuum@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:carrier@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
To: <sip:continuum@[remote_ip]:[remote_port]>[$gw_tag]
[last_Call-ID:]
CSeq: 1 NOTIFY
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Event: refer
Subscription-State: terminated;reason=noresource
Max-Forwards: 70
Content-Type: message/sipfrag;version=2.0
Content-Length: [len]

{sipfrag}
]]></send>
<recv response="200"/>
<Reference variables="refer_to"/>"#,
            uas_response("202 Accepted", false, "[last_CSeq:]", false)
        );
        self
    }

    pub fn raw(mut self, xml: &str) -> Self {
        self.xml.push_str(xml);
        self.xml.push('\n');
        self
    }

    pub fn build(self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"continuum uas\">\n{}</scenario>\n",
            self.xml
        )
    }
}
