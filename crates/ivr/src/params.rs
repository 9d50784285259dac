//! The Twilio-style parameters of a webhook request, in Twilio's names, as
//! an ordered list; the host form-encodes them, signs them the way Twilio
//! signs (X-Twilio-Signature over the URL and the sorted parameters) and
//! sends them.

/// Twilio's API version string, sent as `ApiVersion`.
pub const API_VERSION: &str = "2010-04-01";

/// The call as the webhook sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    pub call_sid: String,
    pub account_sid: String,
    /// The caller (E.164 or a SIP URI).
    pub from: String,
    /// The number called.
    pub to: String,
    /// `inbound` (or `outbound-api`, `outbound-dial`).
    pub direction: String,
    pub caller_name: Option<String>,
    pub forwarded_from: Option<String>,
}

/// The parameters every request carries; `status` is Twilio's CallStatus
/// (`ringing` on the first request of a call, `in-progress` after).
pub fn call_params(call: &CallInfo, status: &str) -> Vec<(String, String)> {
    let direction = if call.direction.is_empty() {
        "inbound"
    } else {
        call.direction.as_str()
    };
    let mut p = vec![
        ("CallSid", call.call_sid.as_str()),
        ("AccountSid", call.account_sid.as_str()),
        ("From", call.from.as_str()),
        ("To", call.to.as_str()),
        ("Caller", call.from.as_str()),
        ("Called", call.to.as_str()),
        ("CallStatus", status),
        ("Direction", direction),
        ("ApiVersion", API_VERSION),
    ];
    if let Some(n) = &call.caller_name {
        p.push(("CallerName", n));
    }
    if let Some(f) = &call.forwarded_from {
        p.push(("ForwardedFrom", f));
    }
    p.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order_are_twilios() {
        let call = CallInfo {
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            from: "+15551230000".into(),
            to: "+15559870000".into(),
            ..CallInfo::default()
        };
        let p = call_params(&call, "ringing");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "CallSid",
                "AccountSid",
                "From",
                "To",
                "Caller",
                "Called",
                "CallStatus",
                "Direction",
                "ApiVersion"
            ]
        );
        assert!(p.contains(&("Direction".into(), "inbound".into())));
        assert!(p.contains(&("ApiVersion".into(), "2010-04-01".into())));
    }
}
