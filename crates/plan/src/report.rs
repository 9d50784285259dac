//! The terminal report (JSON is the serde form of the same structs).

use crate::Plan;
use crate::cost::{OptionCost, format_count as n};
use crate::metrics::Headroom;
use crate::simulate::SimResult;
use std::fmt::Write;

fn gbps(bps: f64) -> String {
    format!("{:.2}", bps / 1e9)
}

fn money(v: f64) -> String {
    format!("${}", n(v))
}

/// The plan as text.
pub fn plan(p: &Plan) -> String {
    let mut s = String::new();
    let d = &p.demand;
    let m = &p.media;
    let _ = writeln!(s, "Continuum capacity plan: {}", p.profile);
    let _ = writeln!(s, "{}", "=".repeat(26 + p.profile.chars().count()));
    let _ = writeln!(s);
    let _ = writeln!(s, "Demand (sessions per hour, all session channels)");
    let _ = writeln!(
        s,
        "  average {}/h · sizing-day peak {}/h at {:02}:00 · sized for {}/h · {} sessions/month",
        n(d.average_rate),
        n(d.peak_hour_rate),
        d.peak_hour,
        n(d.sizing_rate),
        n(d.sessions_per_month)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  {:<12} {:>15} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "channel", "sessions/month", "mean min", "avg conc.", "peak conc.", "sized erl.", "slots"
    );
    for c in &d.channels {
        let slots: u64 = m
            .regions
            .iter()
            .flat_map(|r| &r.slots)
            .filter(|x| {
                x.channel == c.channel || (c.channel == "voice" && x.channel == "app_voice")
            })
            .map(|x| x.slots)
            .sum();
        let _ = writeln!(
            s,
            "  {:<12} {:>15} {:>9.1} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            c.channel,
            n(c.sessions_per_month),
            c.mean_minutes,
            c.average_erlangs,
            c.peak_hour_erlangs,
            c.sizing_erlangs,
            n(slots as f64)
        );
    }
    if m.trunk_channels > 0 {
        let _ = writeln!(
            s,
            "  PSTN voice: {} SIP trunk channels (Erlang B, {:.1}% blocking); voice slots above are in-app calls",
            n(m.trunk_channels as f64),
            p.targets.trunk_blocking * 100.0
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Per session at the SFU (on the wire)");
    for x in &m.per_session {
        let _ = writeln!(
            s,
            "  {:<12} {} participants · in {:.0} pkt/s {:.2} Mbit/s · out {:.0} pkt/s {:.2} Mbit/s",
            x.channel,
            x.participants,
            x.ingress.pps,
            x.ingress.bps / 1e6,
            x.egress.pps,
            x.egress.bps / 1e6
        );
    }
    if let Some(v) = m.visits_per_core {
        let _ = writeln!(
            s,
            "  1:1 visits per core at these bitrates: {v:.0} (capacity file: {:.0})",
            p.capacity.sfu_visits_per_core
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Nodes at the peak ({} each)", p.prices.instance.name);
    let _ = writeln!(
        s,
        "  {:<12} {:>5} {:>9} {:>10} {:>8} {:>14} {:>13} {:>7}",
        "region", "share", "SFU", "TURN", "voice gw", "SFU out Gbit/s", "TURN Gbit/s", "trunks"
    );
    for r in &m.regions {
        let _ = writeln!(
            s,
            "  {:<12} {:>5.2} {:>4} ({:>2}) {:>5} ({:>2}) {:>4} ({:>1}) {:>14} {:>13} {:>7}",
            r.region,
            r.share,
            r.sfu.nodes,
            r.sfu.nodes_needed,
            r.turn.nodes,
            r.turn.nodes_needed,
            r.gateway.nodes,
            r.gateway.nodes_needed,
            gbps(r.sfu_egress_bps),
            gbps(r.turn.network_bps),
            r.trunk_channels
        );
    }
    let total = m.sfu_nodes + m.turn_nodes + m.gateway_nodes + p.control_plane_nodes as u64;
    let _ = writeln!(
        s,
        "  total: {} SFU + {} TURN + {} voice gateway + {} control plane = {} nodes  (in brackets: needed before spares and zones)",
        m.sfu_nodes, m.turn_nodes, m.gateway_nodes, p.control_plane_nodes, total
    );
    let _ = writeln!(
        s,
        "  bandwidth at the peak: SFU out {} Gbit/s, in {} Gbit/s; TURN relay {} Gbit/s each way; PSTN {} Gbit/s",
        gbps(m.sfu_egress_bps),
        gbps(m.sfu_ingress_bps),
        gbps(m.turn_relay_bps),
        gbps(m.pstn_bps)
    );
    let _ = writeln!(s);
    if let Some(a) = &p.agents {
        let k = &a.peak;
        let _ = writeln!(s, "Agents (Erlang C)");
        let _ = writeln!(
            s,
            "  peak: {:.0} queued sessions/h × {} min = {:.1} erlangs → {} agents on the queue (service level {:.1}%, ASA {:.1} s, P(wait) {:.1}%, occupancy {:.1}%) → {} rostered with shrinkage",
            a.arrivals_per_hour,
            a.handle_minutes,
            k.offered_erlangs,
            k.agents,
            k.service_level * 100.0,
            k.asa_secs,
            k.prob_wait * 100.0,
            k.occupancy * 100.0,
            a.scheduled_at_peak
        );
        if a.agents_at_hourly_mean != k.agents {
            let _ = writeln!(
                s,
                "  (Erlang C at the peak hour's mean rate, no intra-hour bunching: {} agents; `continuum plan simulate --agents {}` shows what that misses)",
                a.agents_at_hourly_mean, a.agents_at_hourly_mean
            );
        }
        let hours: Vec<String> = a
            .by_hour
            .iter()
            .enumerate()
            .map(|(h, x)| format!("{h:02}:{}", x.agents))
            .collect();
        let _ = writeln!(
            s,
            "  on the queue by hour (sizing day): {}",
            hours.join(" ")
        );
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Monthly cost (USD; agents' pay left out, the same everywhere)"
    );
    for o in [&p.costs.cpaas, &p.costs.self_hosted, &p.costs.hybrid] {
        option(&mut s, o);
    }
    let _ = writeln!(s, "  break-even: {}", p.self_hosted_break_even.note);
    let _ = writeln!(s, "  break-even: {}", p.hybrid_break_even.note);
    let _ = writeln!(s);
    let _ = writeln!(s, "Assumptions");
    for a in &p.assumptions {
        let _ = writeln!(s, "  - {a}");
    }
    let _ = writeln!(s, "Price sources");
    for (k, v) in &p.price_sources {
        let _ = writeln!(s, "  - {k}: {v}");
    }
    s
}

fn option(s: &mut String, o: &OptionCost) {
    let label = match o.option {
        "cpaas" => "CPaaS",
        "self_hosted" => "self-hosted",
        _ => "hybrid",
    };
    let _ = writeln!(s, "  {:<12} {:>12}", label, money(o.monthly));
    for l in &o.lines {
        let _ = writeln!(s, "      {:>12}  {}", money(l.monthly), l.item);
    }
}

/// The simulator's result against Erlang.
/// `hint`: a note to print after the figures (e.g. another agent count to try).
pub fn simulation(r: &SimResult, planned_peak_hour_erlangs: f64, hint: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Burst simulation: {} hours, {} arrivals (seed {})",
        r.hours,
        n(r.arrivals as f64),
        r.seed
    );
    let _ = writeln!(
        s,
        "  observed peak concurrency, all session channels: {} (Erlang mean at the sized peak hour: {:.1})",
        n(r.peak_concurrency as f64),
        planned_peak_hour_erlangs
    );
    let _ = writeln!(
        s,
        "  {:<12} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "channel", "arrivals", "peak conc.", "slots", "blocked", "blocking"
    );
    for c in &r.channels {
        let _ = writeln!(
            s,
            "  {:<12} {:>10} {:>10} {:>8} {:>10} {:>9.3}%",
            c.name,
            n(c.arrivals as f64),
            n(c.peak_concurrency as f64),
            n(c.slots as f64),
            n(c.blocked as f64),
            c.blocking * 100.0
        );
    }
    if let Some(a) = &r.agents {
        let _ = writeln!(
            s,
            "  agents: {} on the queue, {} queued arrivals",
            a.servers,
            n(a.arrivals as f64)
        );
        let _ = writeln!(
            s,
            "    whole run: answered in {:.0} s {:.1}% (Erlang C {:.1}%), ASA {:.1} s (Erlang C {:.1} s), P(wait) {:.1}%, longest wait {:.0} s",
            a.answer_within_secs,
            a.service_level * 100.0,
            a.erlang_service_level * 100.0,
            a.asa_secs,
            a.erlang_asa_secs,
            a.prob_wait * 100.0,
            a.max_wait_secs
        );
        for (label, h) in [
            ("busiest hour", r.busiest_hour()),
            ("worst hour", r.worst_hour()),
        ] {
            if let Some((i, h)) = h {
                let _ = writeln!(
                    s,
                    "    {label} (day {} {:02}:00, {} queued): answered in time {:.1}% (Erlang C {:.1}%), ASA {:.1} s (Erlang C {:.1} s)",
                    i / 24 + 1,
                    i % 24,
                    h.agent_arrivals,
                    h.service_level() * 100.0,
                    h.erlang_service_level * 100.0,
                    h.asa_secs(),
                    h.erlang_asa_secs
                );
            }
        }
    }
    if let Some(h) = hint {
        let _ = writeln!(s, "  {h}");
    }
    s
}

/// Live headroom against the plan.
pub fn headroom(h: &Headroom) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Live metrics vs the plan (this node)");
    let _ = writeln!(
        s,
        "  {:<24} {:>10} {:>14} {:>9} {:>12} {:>11}",
        "", "now", "node capacity", "headroom", "plan peak", "of peak"
    );
    for r in &h.rows {
        let _ = writeln!(
            s,
            "  {:<24} {:>10} {:>14} {:>8.1}% {:>12} {:>10.2}%",
            r.what,
            n(r.observed),
            n(r.node_capacity),
            r.headroom * 100.0,
            n(r.plan_peak),
            r.share_of_plan_peak * 100.0
        );
    }
    if h.observed.sfu_egress_packets_per_sec.is_none() {
        let _ = writeln!(
            s,
            "  (packet rates need two scrapes: --metrics-interval SECS)"
        );
    }
    s
}
