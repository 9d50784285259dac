//! The price book and the monthly cost of three ways to run the same
//! workload: all on a CPaaS, self-hosted (Continuum on cloud instances, SIP
//! trunks, direct messaging providers), and hybrid (WebRTC self-hosted,
//! PSTN / SMS / WhatsApp still on the CPaaS); and the break-even volume.

use crate::demand::Demand;
use crate::media::{G711_BPS, MediaSizing};
use crate::profile::Profile;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error(transparent)]
    Read(#[from] crate::ReadError),
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
}

/// CPaaS list prices (USD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cpaas {
    pub video_per_participant_minute: f64,
    /// In-app (WebRTC) voice, per participant-minute.
    pub app_voice_per_participant_minute: f64,
    pub pstn_inbound_per_minute: f64,
    pub pstn_outbound_per_minute: f64,
    pub sms_per_segment: f64,
    /// Carrier pass-through fees (US A2P 10DLC), also paid when self-hosted.
    pub sms_carrier_fee_per_segment: f64,
    /// The CPaaS's own fee per WhatsApp message (either direction).
    pub whatsapp_per_message: f64,
    /// Meta's fee per business-initiated (utility) template message, paid
    /// on any route.
    pub whatsapp_meta_per_template: f64,
}

impl Default for Cpaas {
    fn default() -> Self {
        Cpaas {
            video_per_participant_minute: 0.004,
            app_voice_per_participant_minute: 0.004,
            pstn_inbound_per_minute: 0.0085,
            pstn_outbound_per_minute: 0.013,
            sms_per_segment: 0.0083,
            sms_carrier_fee_per_segment: 0.003,
            whatsapp_per_message: 0.005,
            whatsapp_meta_per_template: 0.004,
        }
    }
}

/// What self-hosting pays per unit outside its own nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Direct {
    pub sip_inbound_per_minute: f64,
    pub sip_outbound_per_minute: f64,
    /// An SMS aggregator's per-segment price (carrier fees on top).
    pub sms_per_segment: f64,
}

impl Default for Direct {
    fn default() -> Self {
        Direct {
            sip_inbound_per_minute: 0.0034,
            sip_outbound_per_minute: 0.0047,
            sms_per_segment: 0.004,
        }
    }
}

/// The instance every node runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Instance {
    pub name: String,
    pub vcpus: f64,
    /// Sustained (baseline) network bandwidth, Gbit/s.
    pub network_gbps: f64,
    pub per_hour: f64,
}

impl Default for Instance {
    fn default() -> Self {
        Instance {
            name: "c7i.2xlarge".into(),
            vcpus: 8.0,
            network_gbps: 3.125,
            per_hour: 0.357,
        }
    }
}

/// One egress price tier: GB beyond the previous tier up to `up_to_gb`
/// (the last tier has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressTier {
    pub up_to_gb: Option<f64>,
    pub per_gb: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cloud {
    pub egress_tiers: Vec<EgressTier>,
}

impl Default for Cloud {
    fn default() -> Self {
        let t = |up: Option<f64>, p: f64| EgressTier {
            up_to_gb: up,
            per_gb: p,
        };
        Cloud {
            egress_tiers: vec![
                t(Some(10_240.0), 0.09),
                t(Some(51_200.0), 0.085),
                t(Some(153_600.0), 0.07),
                t(None, 0.05),
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Staff {
    /// Fully loaded cost of one engineer per year.
    pub fte_cost_per_year: f64,
    /// Engineers' time to run the platform (media, telephony, messaging).
    pub self_hosted_fte: f64,
    /// Engineers' time to run the WebRTC part only.
    pub hybrid_fte: f64,
    /// Monitoring, backups, load balancers, DNS, per month.
    pub self_hosted_fixed_per_month: f64,
}

impl Default for Staff {
    fn default() -> Self {
        Staff {
            fte_cost_per_year: 172_000.0,
            self_hosted_fte: 1.0,
            hybrid_fte: 0.5,
            self_hosted_fixed_per_month: 300.0,
        }
    }
}

/// The editable price book (`examples/plan/prices.toml`). Every default is
/// documented in [`PRICE_SOURCES`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceBook {
    pub cpaas: Cpaas,
    pub direct: Direct,
    pub instance: Instance,
    pub cloud: Cloud,
    pub staff: Staff,
}

/// Where each default comes from (USD list prices, US, as published on the
/// date given; check them before deciding anything).
pub const PRICE_SOURCES: &[(&str, &str)] = &[
    (
        "cpaas.video_per_participant_minute",
        "Twilio Programmable Video, group rooms, list price, 2024-10",
    ),
    (
        "cpaas.app_voice_per_participant_minute",
        "Twilio Voice SDK (client) minutes, list price, 2024-10",
    ),
    (
        "cpaas.pstn_inbound_per_minute",
        "Twilio Voice US, receive calls (local number), 2024-10",
    ),
    (
        "cpaas.pstn_outbound_per_minute",
        "Twilio Voice US, make calls, 2024-10",
    ),
    (
        "cpaas.sms_per_segment",
        "Twilio Messaging US SMS per segment, 2025-01",
    ),
    (
        "cpaas.sms_carrier_fee_per_segment",
        "US carrier A2P 10DLC pass-through fees, ~$0.002–0.005 by carrier, 2024",
    ),
    (
        "cpaas.whatsapp_per_message",
        "Twilio WhatsApp per-message fee, 2024-10",
    ),
    (
        "cpaas.whatsapp_meta_per_template",
        "Meta WhatsApp Business utility template rate, North America, 2025-07",
    ),
    (
        "direct.sip_inbound_per_minute",
        "Elastic SIP trunking US origination (local), typical list price, 2024",
    ),
    (
        "direct.sip_outbound_per_minute",
        "Elastic SIP trunking US termination, typical list price, 2024",
    ),
    (
        "direct.sms_per_segment",
        "SMS aggregator US long code, typical list price, 2024",
    ),
    (
        "instance",
        "AWS EC2 c7i.2xlarge on-demand, us-east-1, Linux, 2024 (8 vCPU; 3.125 Gbit/s baseline)",
    ),
    (
        "cloud.egress_tiers",
        "AWS data transfer out to the internet, us-east-1: 10 TB $0.09, next 40 TB $0.085, next 100 TB $0.07, beyond $0.05 per GB, 2024",
    ),
    (
        "staff.fte_cost_per_year",
        "US BLS median pay, software developers, May 2023 ($132,270) × 1.3 loaded",
    ),
    (
        "staff.self_hosted_fte / hybrid_fte / self_hosted_fixed_per_month",
        "assumptions of this planner (2026-11): set your own",
    ),
];

impl PriceBook {
    pub fn load(path: &Path) -> Result<PriceBook, PriceError> {
        Self::parse(&crate::read_input(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, label: &str) -> Result<PriceBook, PriceError> {
        let b: PriceBook = toml::from_str(text).map_err(|e| PriceError::Parse {
            path: label.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        b.validate(label)?;
        Ok(b)
    }

    fn validate(&self, label: &str) -> Result<(), PriceError> {
        let bad = |field: &str, reason: String| PriceError::Invalid {
            path: label.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let c = &self.cpaas;
        let d = &self.direct;
        let s = &self.staff;
        for (f, v) in [
            (
                "cpaas.video_per_participant_minute",
                c.video_per_participant_minute,
            ),
            (
                "cpaas.app_voice_per_participant_minute",
                c.app_voice_per_participant_minute,
            ),
            ("cpaas.pstn_inbound_per_minute", c.pstn_inbound_per_minute),
            ("cpaas.pstn_outbound_per_minute", c.pstn_outbound_per_minute),
            ("cpaas.sms_per_segment", c.sms_per_segment),
            (
                "cpaas.sms_carrier_fee_per_segment",
                c.sms_carrier_fee_per_segment,
            ),
            ("cpaas.whatsapp_per_message", c.whatsapp_per_message),
            (
                "cpaas.whatsapp_meta_per_template",
                c.whatsapp_meta_per_template,
            ),
            ("direct.sip_inbound_per_minute", d.sip_inbound_per_minute),
            ("direct.sip_outbound_per_minute", d.sip_outbound_per_minute),
            ("direct.sms_per_segment", d.sms_per_segment),
            ("instance.per_hour", self.instance.per_hour),
            ("staff.fte_cost_per_year", s.fte_cost_per_year),
            ("staff.self_hosted_fte", s.self_hosted_fte),
            ("staff.hybrid_fte", s.hybrid_fte),
            (
                "staff.self_hosted_fixed_per_month",
                s.self_hosted_fixed_per_month,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(f, format!("must be a price ≥ 0 (got {v})")));
            }
        }
        for (f, v) in [
            ("instance.vcpus", self.instance.vcpus),
            ("instance.network_gbps", self.instance.network_gbps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(f, format!("must be > 0 (got {v})")));
            }
        }
        let tiers = &self.cloud.egress_tiers;
        if tiers.is_empty() || tiers.last().is_some_and(|t| t.up_to_gb.is_some()) {
            return Err(bad(
                "cloud.egress_tiers",
                "the last tier must have no up_to_gb (it covers everything beyond)".into(),
            ));
        }
        let mut prev = 0.0;
        for (i, t) in tiers.iter().enumerate() {
            if !(t.per_gb.is_finite() && t.per_gb >= 0.0) {
                return Err(bad(
                    &format!("cloud.egress_tiers[{i}].per_gb"),
                    "must be ≥ 0".into(),
                ));
            }
            if let Some(up) = t.up_to_gb {
                if up <= prev || up.is_nan() || i + 1 == tiers.len() {
                    return Err(bad(
                        &format!("cloud.egress_tiers[{i}].up_to_gb"),
                        format!("must grow tier by tier (got {up} after {prev})"),
                    ));
                }
                prev = up;
            } else if i + 1 != tiers.len() {
                return Err(bad(
                    &format!("cloud.egress_tiers[{i}].up_to_gb"),
                    "only the last tier may leave it out".into(),
                ));
            }
        }
        Ok(())
    }

    /// `(price, where it comes from)` for the report: the documented source
    /// when the value is the default, else "price book".
    pub fn sources(&self) -> Vec<(String, String)> {
        let d = PriceBook::default();
        let same = |key: &str| match key.split('.').next() {
            Some("cpaas") => self.cpaas == d.cpaas,
            Some("direct") => self.direct == d.direct,
            Some("instance") => self.instance == d.instance,
            Some("cloud") => self.cloud == d.cloud,
            _ => self.staff == d.staff,
        };
        PRICE_SOURCES
            .iter()
            .map(|(k, s)| {
                let src = if same(k) {
                    (*s).to_owned()
                } else {
                    "your price book (defaults changed)".to_owned()
                };
                ((*k).to_owned(), src)
            })
            .collect()
    }
}

/// Cloud egress cost of `gb` in one month over the tiers.
pub fn egress_cost(gb: f64, tiers: &[EgressTier]) -> f64 {
    let mut cost = 0.0;
    let mut from = 0.0;
    for t in tiers {
        let to = t.up_to_gb.unwrap_or(f64::INFINITY);
        if gb <= from {
            break;
        }
        cost += (gb.min(to) - from) * t.per_gb;
        from = to;
    }
    cost
}

/// Monthly volumes that are priced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub sessions: f64,
    pub video_participant_minutes: f64,
    pub group_participant_minutes: f64,
    pub app_voice_participant_minutes: f64,
    pub pstn_inbound_minutes: f64,
    pub pstn_outbound_minutes: f64,
    pub sms_segments: f64,
    pub whatsapp_templates: f64,
    pub whatsapp_session_messages: f64,
    /// SFU / TURN media to participants, GB (10⁹ bytes).
    pub webrtc_egress_gb: f64,
    /// G.711 to the SIP trunk provider, GB.
    pub pstn_egress_gb: f64,
}

pub fn usage(p: &Profile, d: &Demand, m: &MediaSizing) -> Usage {
    let mut u = Usage {
        sessions: d.sessions_per_month,
        ..Usage::default()
    };
    let minutes = |ch: &str| {
        d.channel(ch)
            .map_or(0.0, |c| c.sessions_per_month * c.mean_minutes)
    };
    let gb = |bps: f64, minutes: f64| bps * minutes * 60.0 / 8.0 / 1e9;
    for s in &m.per_session {
        let (source, k) = match s.channel {
            "app_voice" => (
                "voice",
                1.0 - p.voice.as_ref().and_then(|v| v.pstn_share).unwrap_or(1.0),
            ),
            other => (other, 1.0),
        };
        let session_minutes = minutes(source) * k;
        let pm = session_minutes * s.participants as f64;
        match s.channel {
            "video" => u.video_participant_minutes += pm,
            "group_video" => u.group_participant_minutes += pm,
            _ => u.app_voice_participant_minutes += pm,
        }
        u.webrtc_egress_gb += gb(s.egress.bps, session_minutes);
    }
    if let Some(v) = &p.voice {
        let pstn = minutes("voice") * v.pstn_share.unwrap_or(1.0);
        let inbound = v.inbound_share.unwrap_or(0.7);
        u.pstn_inbound_minutes = pstn * inbound;
        u.pstn_outbound_minutes = pstn * (1.0 - inbound);
        u.pstn_egress_gb = gb(G711_BPS, pstn);
    }
    if let Some(s) = &p.sms {
        u.sms_segments = s.segments_per_day * p.days_per_month;
    }
    if let Some(w) = &p.whatsapp {
        u.whatsapp_templates = w.templates_per_day * p.days_per_month;
        u.whatsapp_session_messages = w.session_messages_per_day * p.days_per_month;
    }
    u
}

#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    pub item: String,
    pub monthly: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OptionCost {
    pub option: &'static str,
    pub monthly: f64,
    pub lines: Vec<CostLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    pub cpaas: OptionCost,
    pub self_hosted: OptionCost,
    pub hybrid: OptionCost,
}

struct Lines(Vec<CostLine>);

impl Lines {
    fn add(&mut self, item: String, monthly: f64) {
        if monthly > 0.0 {
            self.0.push(CostLine { item, monthly });
        }
    }
    fn done(self, option: &'static str) -> OptionCost {
        OptionCost {
            option,
            monthly: self.0.iter().map(|l| l.monthly).sum(),
            lines: self.0,
        }
    }
}

/// Monthly cost of the three options. Agents' pay is the same in all three
/// and left out.
pub fn costs(
    p: &Profile,
    u: &Usage,
    m: &MediaSizing,
    control_plane_nodes: u32,
    b: &PriceBook,
) -> Costs {
    let c = &b.cpaas;
    let hours = 24.0 * p.days_per_month;
    let node_month = b.instance.per_hour * hours;
    let n = |x: f64| format_count(x);

    let cpaas_webrtc = |l: &mut Lines| {
        l.add(
            format!(
                "video {} participant-min × ${}",
                n(u.video_participant_minutes + u.group_participant_minutes),
                unit(c.video_per_participant_minute)
            ),
            (u.video_participant_minutes + u.group_participant_minutes)
                * c.video_per_participant_minute,
        );
        l.add(
            format!(
                "app voice {} participant-min × ${}",
                n(u.app_voice_participant_minutes),
                unit(c.app_voice_per_participant_minute)
            ),
            u.app_voice_participant_minutes * c.app_voice_per_participant_minute,
        );
    };
    let cpaas_rest = |l: &mut Lines| {
        l.add(
            format!(
                "PSTN inbound {} min × ${}",
                n(u.pstn_inbound_minutes),
                unit(c.pstn_inbound_per_minute)
            ),
            u.pstn_inbound_minutes * c.pstn_inbound_per_minute,
        );
        l.add(
            format!(
                "PSTN outbound {} min × ${}",
                n(u.pstn_outbound_minutes),
                unit(c.pstn_outbound_per_minute)
            ),
            u.pstn_outbound_minutes * c.pstn_outbound_per_minute,
        );
        l.add(
            format!(
                "SMS {} segments × ${} (+ ${} carrier fees)",
                n(u.sms_segments),
                unit(c.sms_per_segment),
                unit(c.sms_carrier_fee_per_segment)
            ),
            u.sms_segments * (c.sms_per_segment + c.sms_carrier_fee_per_segment),
        );
        l.add(
            format!(
                "WhatsApp {} templates × ${} + {} session messages × ${}",
                n(u.whatsapp_templates),
                unit(c.whatsapp_per_message + c.whatsapp_meta_per_template),
                n(u.whatsapp_session_messages),
                unit(c.whatsapp_per_message)
            ),
            u.whatsapp_templates * (c.whatsapp_per_message + c.whatsapp_meta_per_template)
                + u.whatsapp_session_messages * c.whatsapp_per_message,
        );
    };
    let nodes = |l: &mut Lines, count: u64, what: &str| {
        l.add(
            format!(
                "{count} {what} × {} at ${}/h",
                b.instance.name,
                unit(b.instance.per_hour)
            ),
            count as f64 * node_month,
        );
    };

    let mut cp = Lines(Vec::new());
    cpaas_webrtc(&mut cp);
    cpaas_rest(&mut cp);

    let mut sh = Lines(Vec::new());
    let webrtc_nodes = m.sfu_nodes + m.turn_nodes + control_plane_nodes as u64;
    nodes(
        &mut sh,
        webrtc_nodes + m.gateway_nodes,
        "nodes (SFU, TURN, voice gateway, control plane)",
    );
    let gb = u.webrtc_egress_gb + u.pstn_egress_gb;
    sh.add(
        format!("egress {} GB (tiered)", n(gb)),
        egress_cost(gb, &b.cloud.egress_tiers),
    );
    let d = &b.direct;
    sh.add(
        format!(
            "SIP trunk {} in + {} out min",
            n(u.pstn_inbound_minutes),
            n(u.pstn_outbound_minutes)
        ),
        u.pstn_inbound_minutes * d.sip_inbound_per_minute
            + u.pstn_outbound_minutes * d.sip_outbound_per_minute,
    );
    sh.add(
        format!(
            "SMS {} segments × ${} (+ carrier fees)",
            n(u.sms_segments),
            unit(d.sms_per_segment)
        ),
        u.sms_segments * (d.sms_per_segment + c.sms_carrier_fee_per_segment),
    );
    sh.add(
        format!(
            "WhatsApp {} templates × ${} (Meta, direct)",
            n(u.whatsapp_templates),
            unit(c.whatsapp_meta_per_template)
        ),
        u.whatsapp_templates * c.whatsapp_meta_per_template,
    );
    let staff = |l: &mut Lines, fte: f64| {
        l.add(
            format!("staff {fte} FTE × ${}/year", n(b.staff.fte_cost_per_year)),
            fte * b.staff.fte_cost_per_year / 12.0,
        );
        l.add(
            "monitoring, backups, load balancers".into(),
            b.staff.self_hosted_fixed_per_month,
        );
    };
    staff(&mut sh, b.staff.self_hosted_fte);

    let mut hy = Lines(Vec::new());
    nodes(&mut hy, webrtc_nodes, "nodes (SFU, TURN, control plane)");
    hy.add(
        format!("egress {} GB (tiered)", n(u.webrtc_egress_gb)),
        egress_cost(u.webrtc_egress_gb, &b.cloud.egress_tiers),
    );
    cpaas_rest(&mut hy);
    staff(&mut hy, b.staff.hybrid_fte);

    Costs {
        cpaas: cp.done("cpaas"),
        self_hosted: sh.done("self_hosted"),
        hybrid: hy.done("hybrid"),
    }
}

/// A unit price without float noise: 0.009000000000000001 → "0.009".
pub fn unit(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// 1234567 → "1,234,567".
pub fn format_count(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_tiers() {
        let t = Cloud::default().egress_tiers;
        assert_eq!(egress_cost(0.0, &t), 0.0);
        assert!((egress_cost(1000.0, &t) - 90.0).abs() < 1e-9);
        // 10 TB at 0.09, then 5 TB at 0.085.
        let v = 10_240.0 * 0.09 + 5_120.0 * 0.085;
        assert!((egress_cost(15_360.0, &t) - v).abs() < 1e-6);
        // Beyond 150 TB at 0.05.
        let all = 10_240.0 * 0.09 + 40_960.0 * 0.085 + 102_400.0 * 0.07 + 1000.0 * 0.05;
        assert!((egress_cost(154_600.0, &t) - all).abs() < 1e-6);
    }

    #[test]
    fn units() {
        assert_eq!(unit(0.005 + 0.004), "0.009");
        assert_eq!(unit(0.0085), "0.0085");
        assert_eq!(unit(2.0), "2");
    }

    #[test]
    fn counts() {
        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_count(999.4), "999");
        assert_eq!(format_count(1_234_567.0), "1,234,567");
    }
}
