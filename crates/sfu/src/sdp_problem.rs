//! What to tell a client whose SDP (or candidate) was refused. str0m's parse
//! errors print the parser's internal state (`PointerOffset(0x7f…)`, a heap
//! address), which is neither useful to the client nor ours to disclose, so
//! the message is built here from the input's shape instead: it names the
//! line and the rule, never echoes the input, never carries Debug output.

/// A description of why `sdp` is not acceptable SDP.
pub fn sdp_problem(sdp: &str) -> String {
    if sdp.trim().is_empty() {
        return "the SDP is empty".into();
    }
    let lines: Vec<&str> = sdp.lines().collect();
    if lines.first().map(|l| l.trim_end()) != Some("v=0") {
        return "line 1 must be `v=0` (an SDP starts with its version line)".into();
    }
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let b = line.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_lowercase() || b[1] != b'=' {
            return format!("line {} is not of the form `<letter>=<value>`", i + 1);
        }
    }
    if !lines.iter().any(|l| l.starts_with("m=")) {
        return "the SDP has no media section (no `m=` line)".into();
    }
    if !lines.iter().any(|l| l.starts_with("a=fingerprint:")) {
        return "the SDP has no `a=fingerprint` line (DTLS is required)".into();
    }
    if !lines.iter().any(|l| l.starts_with("a=ice-ufrag:")) {
        return "the SDP has no `a=ice-ufrag` line (ICE is required)".into();
    }
    "the SDP could not be parsed: check its `m=`, `a=rtpmap`, `a=fingerprint` and `a=ice-*` lines"
        .into()
}

/// A refusal reason from the WebRTC stack, passed on only when it is plain
/// text (no addresses or Debug-formatted internals).
pub fn plain_reason(reason: String, fallback: &str) -> String {
    let looks_internal = reason.contains("0x")
        || reason.contains('{')
        || reason.contains("Offset(")
        || reason.len() > 300;
    if looks_internal {
        fallback.to_owned()
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_line_and_rule_without_echoing_input() {
        assert_eq!(sdp_problem(""), "the SDP is empty");
        assert!(sdp_problem("hello").contains("line 1"));
        let bad = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nsecret stuff\r\n";
        let m = sdp_problem(bad);
        assert!(m.contains("line 3") && !m.contains("secret"), "{m}");
        assert!(sdp_problem("v=0\r\ns=-\r\n").contains("no media"));
    }

    #[test]
    fn internals_never_pass() {
        let leak = "Parse error at PointerOffset(0x20001881f78)".to_owned();
        assert_eq!(plain_reason(leak, "refused"), "refused");
        assert_eq!(
            plain_reason("no matching codec".into(), "x"),
            "no matching codec"
        );
    }
}
