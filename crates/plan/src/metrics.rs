//! A running server's `/metrics` (Prometheus text format) against the plan:
//! what one node carries now and how much headroom the plan leaves.

use crate::Plan;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error(
        "no continuum_sfu_* or continuum_turn_* metrics found (is this a Continuum /metrics endpoint?)"
    )]
    NotContinuum,
}

/// Parses the text exposition format and sums each metric over its label
/// sets (e.g. `continuum_sfu_participants{worker="0"}` + `{worker="1"}`).
/// Histogram/summary series (`_bucket`, `_sum`, `_count`) are kept by
/// their own names.
pub fn parse(text: &str) -> Result<BTreeMap<String, f64>, MetricsError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| MetricsError::Parse {
            line: i + 1,
            reason: reason.to_owned(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            // Skip the label set, honouring quoted values with escapes.
            let mut in_quotes = false;
            let mut escaped = false;
            let mut end = None;
            for (j, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if in_quotes => escaped = true,
                    '"' => in_quotes = !in_quotes,
                    '}' if !in_quotes => {
                        end = Some(j);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| err("unterminated label set"))?;
            rest = &rest[end + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        let v: f64 = value
            .parse()
            .map_err(|_| err(&format!("value `{value}` is not a number")))?;
        if name.is_empty() {
            return Err(err("no metric name"));
        }
        *out.entry(name.to_owned()).or_insert(0.0) += v;
    }
    Ok(out)
}

/// What the server reports (gauges now; rates when two scrapes were taken).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub sfu_participants: f64,
    pub sfu_rooms: f64,
    pub turn_allocations: f64,
    /// From two scrapes `interval` apart.
    pub sfu_egress_packets_per_sec: Option<f64>,
    pub turn_relayed_packets_per_sec: Option<f64>,
}

/// `before` is an earlier scrape (`interval_secs` earlier) for counter rates.
pub fn observe(
    now: &BTreeMap<String, f64>,
    before: Option<(&BTreeMap<String, f64>, f64)>,
) -> Result<Observed, MetricsError> {
    if !now
        .keys()
        .any(|k| k.starts_with("continuum_sfu_") || k.starts_with("continuum_turn_"))
    {
        return Err(MetricsError::NotContinuum);
    }
    let g = |k: &str| now.get(k).copied().unwrap_or(0.0);
    let rate = |names: &[&str]| {
        before.and_then(|(b, secs)| {
            (secs > 0.0).then(|| {
                names
                    .iter()
                    .map(|k| (g(k) - b.get(*k).copied().unwrap_or(0.0)).max(0.0))
                    .sum::<f64>()
                    / secs
            })
        })
    };
    Ok(Observed {
        sfu_participants: g("continuum_sfu_participants"),
        sfu_rooms: g("continuum_sfu_rooms"),
        turn_allocations: g("continuum_turn_allocations"),
        sfu_egress_packets_per_sec: rate(&[
            "continuum_sfu_packets_forwarded_total",
            "continuum_sfu_rtx_sent_total",
        ]),
        turn_relayed_packets_per_sec: rate(&[
            "continuum_turn_packets_to_peers_total",
            "continuum_turn_packets_to_clients_total",
        ]),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct HeadroomRow {
    pub what: String,
    pub observed: f64,
    /// What one node of the plan carries at its target utilisation.
    pub node_capacity: f64,
    /// 1 − observed / node_capacity.
    pub headroom: f64,
    /// The plan's peak for the whole deployment.
    pub plan_peak: f64,
    /// observed / plan_peak.
    pub share_of_plan_peak: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Headroom {
    pub observed: Observed,
    pub rows: Vec<HeadroomRow>,
}

pub fn headroom(plan: &Plan, o: &Observed) -> Headroom {
    let m = &plan.media;
    let c = &plan.capacity;
    let node_pps =
        c.sfu_egress_packets_per_core * plan.prices.instance.vcpus * c.target_utilization;
    // The plan's peak: slots × participants, packets at the sized load.
    let mut participants = 0.0;
    let mut egress_pps = 0.0;
    for r in &m.regions {
        for s in &r.slots {
            if let Some(sm) = m.per_session.iter().find(|x| x.channel == s.channel) {
                participants += s.slots as f64 * sm.participants as f64;
                egress_pps += s.slots as f64 * sm.egress.pps;
            }
        }
    }
    let sessions: f64 = m
        .regions
        .iter()
        .flat_map(|r| &r.slots)
        .map(|s| s.slots as f64)
        .sum();
    let per_node = |total: f64| {
        let nodes: u64 = m.regions.iter().map(|r| r.sfu.nodes_needed).sum();
        if nodes == 0 {
            total
        } else {
            total / nodes as f64
        }
    };
    // At the node's packet capacity, with this profile's mix.
    let scale = if egress_pps > 0.0 {
        node_pps / egress_pps
    } else {
        0.0
    };
    let turn_node_pps =
        plan.prices.instance.vcpus * c.target_utilization * 1e6 / c.turn_cpu_us_per_packet;
    let turn_pps: f64 = m.regions.iter().map(|r| r.turn.packets_per_sec).sum();
    let relayed = participants * plan.relay_share;
    let mut rows = vec![
        row(
            "SFU participants",
            o.sfu_participants,
            participants * scale,
            participants,
        ),
        row(
            "SFU rooms (sessions)",
            o.sfu_rooms,
            sessions * scale,
            sessions,
        ),
        row(
            "TURN allocations",
            o.turn_allocations,
            if turn_pps > 0.0 {
                relayed * turn_node_pps / turn_pps
            } else {
                per_node(relayed)
            },
            relayed,
        ),
    ];
    if let Some(e) = o.sfu_egress_packets_per_sec {
        rows.push(row("SFU egress packets/s", e, node_pps, egress_pps));
    }
    if let Some(t) = o.turn_relayed_packets_per_sec {
        rows.push(row("TURN relayed packets/s", t, turn_node_pps, turn_pps));
    }
    Headroom {
        observed: o.clone(),
        rows,
    }
}

fn row(what: &str, observed: f64, node_capacity: f64, plan_peak: f64) -> HeadroomRow {
    HeadroomRow {
        what: what.to_owned(),
        observed,
        node_capacity,
        headroom: if node_capacity > 0.0 {
            1.0 - observed / node_capacity
        } else {
            0.0
        },
        plan_peak,
        share_of_plan_peak: if plan_peak > 0.0 {
            observed / plan_peak
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums_label_sets() {
        let text = r#"
# HELP continuum_sfu_participants Participants
# TYPE continuum_sfu_participants gauge
continuum_sfu_participants{worker="0"} 3
continuum_sfu_participants{worker="1"} 4
continuum_turn_allocations 2 1700000000000
odd{label="a}\"b"} +Inf
"#;
        let m = parse(text).unwrap();
        assert_eq!(m["continuum_sfu_participants"], 7.0);
        assert_eq!(m["continuum_turn_allocations"], 2.0);
        assert!(m["odd"].is_infinite());
        let o = observe(&m, None).unwrap();
        assert_eq!(o.sfu_participants, 7.0);
        assert!(o.sfu_egress_packets_per_sec.is_none());
    }

    #[test]
    fn rates_from_two_scrapes() {
        let a = parse("continuum_sfu_packets_forwarded_total 100\n").unwrap();
        let b = parse("continuum_sfu_packets_forwarded_total 1100\n").unwrap();
        let o = observe(&b, Some((&a, 10.0))).unwrap();
        assert_eq!(o.sfu_egress_packets_per_sec, Some(100.0));
    }

    #[test]
    fn bad_input() {
        assert!(matches!(
            parse("x{a=\"1\" 3"),
            Err(MetricsError::Parse { .. })
        ));
        assert!(matches!(
            parse("x abc"),
            Err(MetricsError::Parse { line: 1, .. })
        ));
        let m = parse("http_requests_total 3").unwrap();
        assert!(matches!(observe(&m, None), Err(MetricsError::NotContinuum)));
    }
}
