//! Capacity planning for peak bursts and the cost curve against a CPaaS.
//!
//! [`plan`] turns a workload [`profile::Profile`], per-core
//! [`capacity::Capacity`] figures and a [`cost::PriceBook`] into a [`Plan`]:
//! peak vs average demand per channel, session slots and SIP trunk channels
//! (Erlang B), agents (Erlang C), SFU / TURN / gateway nodes with
//! redundancy, bandwidth, the monthly cost of three options and where they
//! break even. [`simulate`] checks the steady-state models against a
//! discrete-event simulation of the same profile; [`metrics`] compares a
//! running server with the plan. The formulas are in docs/design-notes.md.

pub mod agents;
pub mod capacity;
pub mod chart;
pub mod cost;
pub mod demand;
pub mod erlang;
pub mod media;
pub mod metrics;
pub mod profile;
pub mod report;
pub mod simulate;

use capacity::Capacity;
use cost::{Costs, PriceBook, Usage};
use demand::Demand;
use media::{MediaSizing, NodeShape};
use profile::Profile;
use serde::Serialize;

/// An input file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    pub path: String,
    pub source: std::io::Error,
}

/// Reads an input file as text (errors name the path).
pub fn read_input(path: &std::path::Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.display().to_string(),
        source,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error(transparent)]
    Capacity(#[from] capacity::CapacityError),
    #[error(transparent)]
    Prices(#[from] cost::PriceError),
    #[error(transparent)]
    Erlang(#[from] erlang::ErlangError),
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// Where self-hosting (or hybrid) becomes cheaper than the CPaaS.
#[derive(Debug, Clone, Serialize)]
pub struct BreakEven {
    /// Sessions per month above which the option is never dearer than the
    /// CPaaS (`None`: see `note`).
    pub sessions_per_month: Option<f64>,
    /// Where it is first cheaper (below `sessions_per_month` when node
    /// steps make the two alternate for a while).
    pub first_cheaper_sessions_per_month: Option<f64>,
    pub note: String,
}

/// One point of the cost curve (monthly USD).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CostPoint {
    pub sessions_per_month: f64,
    pub cpaas: f64,
    pub self_hosted: f64,
    pub hybrid: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub profile: String,
    pub demand: Demand,
    pub media: MediaSizing,
    pub agents: Option<agents::AgentPlan>,
    pub control_plane_nodes: u32,
    /// Share of WebRTC participants relayed by TURN (from the profile).
    pub relay_share: f64,
    pub targets: profile::Targets,
    pub usage: Usage,
    pub costs: Costs,
    pub self_hosted_break_even: BreakEven,
    pub hybrid_break_even: BreakEven,
    pub cost_curve: Vec<CostPoint>,
    pub capacity: Capacity,
    pub prices: PriceBook,
    pub price_sources: Vec<(String, String)>,
    pub assumptions: Vec<String>,
}

/// Volumes the break-even search covers, as multiples of the profile's.
pub const BREAK_EVEN_RANGE: (f64, f64) = (1e-4, 100.0);

struct Eval {
    sessions: f64,
    costs: Costs,
}

fn node_shape(b: &PriceBook) -> NodeShape {
    NodeShape {
        vcpus: b.instance.vcpus,
        network_gbps: b.instance.network_gbps,
    }
}

fn evaluate(
    p: &Profile,
    c: &Capacity,
    b: &PriceBook,
) -> Result<(Demand, MediaSizing, Usage, Costs), PlanError> {
    let d = Demand::of(p);
    let m = media::size(p, &d, c, node_shape(b))?;
    let u = cost::usage(p, &d, &m);
    let k = cost::costs(p, &u, &m, c.control_plane_nodes, b);
    Ok((d, m, u, k))
}

fn evaluate_scaled(p: &Profile, c: &Capacity, b: &PriceBook, k: f64) -> Result<Eval, PlanError> {
    let (d, _, _, costs) = evaluate(&p.scaled(k), c, b)?;
    Ok(Eval {
        sessions: d.sessions_per_month,
        costs,
    })
}

/// The three options' monthly cost with every volume of the profile × `k`
/// (the sizing is redone at that volume).
pub fn cost_at(p: &Profile, c: &Capacity, b: &PriceBook, k: f64) -> Result<CostPoint, PlanError> {
    let e = evaluate_scaled(p, c, b, k)?;
    Ok(CostPoint {
        sessions_per_month: e.sessions,
        cpaas: e.costs.cpaas.monthly,
        self_hosted: e.costs.self_hosted.monthly,
        hybrid: e.costs.hybrid.monthly,
    })
}

pub fn plan(p: &Profile, c: &Capacity, b: &PriceBook) -> Result<Plan, PlanError> {
    let (d, m, u, costs) = evaluate(p, c, b)?;
    let agents = agents::plan(p, &d)?;
    let self_hosted_break_even = break_even(p, c, b, |k| k.self_hosted.monthly, "self-hosted")?;
    let hybrid_break_even = break_even(p, c, b, |k| k.hybrid.monthly, "hybrid")?;
    // The curve: from 0 to twice today's volume, or further to show the
    // break-even points.
    let mut top: f64 = 2.0;
    for be in [&self_hosted_break_even, &hybrid_break_even] {
        if let Some(s) = be.sessions_per_month
            && d.sessions_per_month > 0.0
        {
            top = top.max(1.25 * s / d.sessions_per_month);
        }
    }
    const POINTS: usize = 120;
    let cost_curve = (0..=POINTS)
        .map(|i| cost_at(p, c, b, top * i as f64 / POINTS as f64))
        .collect::<Result<Vec<_>, PlanError>>()?;
    Ok(Plan {
        profile: p.name.clone(),
        assumptions: assumptions(p, c, b),
        demand: d,
        media: m,
        agents,
        control_plane_nodes: c.control_plane_nodes,
        relay_share: p.relay_share,
        targets: p.targets.clone(),
        usage: u,
        costs,
        self_hosted_break_even,
        hybrid_break_even,
        cost_curve,
        capacity: c.clone(),
        price_sources: b.sources(),
        prices: b.clone(),
    })
}

/// The volume (a multiple of the profile's, within [`BREAK_EVEN_RANGE`])
/// above which `option` never costs more than the CPaaS. Node counts step,
/// so near the crossing the curves can cross several times: a log-spaced
/// scan (30 points a decade) brackets the crossings, a linear scan of 400
/// points between the first cheaper and the last dearer scan point finds
/// both edges, and bisection refines each.
fn break_even(
    p: &Profile,
    c: &Capacity,
    b: &PriceBook,
    option: impl Fn(&Costs) -> f64,
    name: &str,
) -> Result<BreakEven, PlanError> {
    let diff = |k: f64| -> Result<(f64, f64), PlanError> {
        let e = evaluate_scaled(p, c, b, k)?;
        Ok((option(&e.costs) - e.costs.cpaas.monthly, e.sessions))
    };
    let (lo, hi) = BREAK_EVEN_RANGE;
    const STEPS: usize = 180;
    let at = |i: usize| lo * (hi / lo).powf(i as f64 / STEPS as f64);
    let x = |k: f64| {
        if k >= 0.1 {
            format!("{k:.2}")
        } else {
            format!("{k:.2e}")
        }
    };
    // Coarse scan. It stops early where the scaled profile needs more than
    // erlang::MAX_SERVERS of something (a very large profile × 100).
    let (mut first_cheaper, mut last_dearer) = (None, None);
    let mut sessions_lo = 0.0;
    let mut top = STEPS;
    for i in 0..=STEPS {
        let (d, sessions) = match diff(at(i)) {
            Err(PlanError::Erlang(erlang::ErlangError::TooManyServers { .. })) if i > 0 => {
                top = i - 1;
                break;
            }
            r => r?,
        };
        if i == 0 {
            sessions_lo = sessions;
        }
        if d > 0.0 {
            last_dearer = Some(i);
        } else if first_cheaper.is_none() {
            first_cheaper = Some(i);
        }
    }
    let (Some(first), Some(last)) = (first_cheaper, last_dearer) else {
        let note = if last_dearer.is_none() {
            format!(
                "{name} is cheaper at every volume from {}× this profile ({} sessions/month) up",
                x(lo),
                cost::format_count(sessions_lo)
            )
        } else {
            format!(
                "{name} stays dearer than the CPaaS up to {}× this profile's volume",
                x(at(top))
            )
        };
        return Ok(BreakEven {
            sessions_per_month: None,
            first_cheaper_sessions_per_month: None,
            note,
        });
    };
    if last == top {
        return Ok(BreakEven {
            sessions_per_month: None,
            first_cheaper_sessions_per_month: None,
            note: format!(
                "{name} is cheaper from about {}× this profile but dearer again at {}× (node steps); no stable break-even",
                x(at(first)),
                x(at(top))
            ),
        });
    }
    // Fine scan between the edges, then bisect each edge: d > 0 on `a`,
    // d ≤ 0 on `z`, or the other way round.
    let (from, to) = (at(first.min(last + 1).saturating_sub(1)), at(last + 1));
    const FINE: usize = 400;
    let fine = |j: usize| from + (to - from) * j as f64 / FINE as f64;
    let (mut f_first, mut f_last) = (None, None);
    for j in 0..=FINE {
        if diff(fine(j))?.0 > 0.0 {
            f_last = Some(j);
        } else if f_first.is_none() {
            f_first = Some(j);
        }
    }
    let edge = |mut dearer: f64, mut cheaper: f64| -> Result<f64, PlanError> {
        for _ in 0..30 {
            let mid = 0.5 * (dearer + cheaper);
            if diff(mid)?.0 > 0.0 {
                dearer = mid;
            } else {
                cheaper = mid;
            }
        }
        Ok(diff(cheaper)?.1)
    };
    let stable_k = f_last.map_or(from, |j| fine(j + 1));
    let stable = match f_last {
        Some(j) => edge(fine(j), fine(j + 1))?,
        None => diff(from)?.1,
    };
    let first_k = f_first.map_or(stable_k, fine);
    let first_s = match f_first {
        Some(j) if j > 0 && diff(fine(j - 1))?.0 > 0.0 => edge(fine(j - 1), fine(j))?,
        _ => diff(first_k)?.1,
    };
    let mut note = format!(
        "{name} is cheaper than the CPaaS above {} sessions/month ({}× this profile)",
        cost::format_count(stable),
        x(stable / sessions_lo * lo)
    );
    if first_s < stable * 0.99 {
        note.push_str(&format!(
            "; first cheaper at {} (node steps make them alternate in between)",
            cost::format_count(first_s)
        ));
    }
    Ok(BreakEven {
        sessions_per_month: Some(stable),
        first_cheaper_sessions_per_month: Some(first_s),
        note,
    })
}

fn assumptions(p: &Profile, c: &Capacity, b: &PriceBook) -> Vec<String> {
    let v = &p.media;
    let r = &p.redundancy;
    vec![
        format!(
            "arrivals Poisson within each hour; sized at the peak hour (busiest weekday × month) × burst {} × intra-hour peak {} (pointwise stationary Erlang)",
            p.burst, p.intra_hour_peak
        ),
        format!(
            "session slots: Erlang B per region at blocking {}; SIP trunks: Erlang B at {}; regions peak at the same hour",
            p.targets.session_blocking, p.targets.trunk_blocking
        ),
        format!(
            "media: publishers send all simulcast layers {:?} kbit/s at {} fps + Opus {} kbit/s; 1:1 subscribers get layer {}, group subscribers layer {}; +{} B/packet IP/UDP/SRTP overhead; RTCP and retransmissions not counted",
            v.layers_kbps,
            v.fps,
            v.audio_kbps,
            v.one_to_one_layer,
            v.group_layer,
            media::PACKET_OVERHEAD_BYTES
        ),
        format!(
            "SFU: {:.0} egress packets/s per core for every room (the 1:1 figure; fan-out is cheaper per packet); TURN: {} µs CPU per relayed packet, {:.0}% of participants relayed; voice gateway: {:.0} G.711 calls per core",
            c.sfu_egress_packets_per_core,
            c.turn_cpu_us_per_packet,
            p.relay_share * 100.0,
            c.voice_calls_per_core
        ),
        format!("capacity figures: {}", c.source),
        format!(
            "nodes: {} ({} vCPU, {} Gbit/s) at ≤ {:.0}% CPU and network; + {} spare per service, spread over {} zone(s){}; {} control-plane nodes",
            b.instance.name,
            b.instance.vcpus,
            b.instance.network_gbps,
            c.target_utilization * 100.0,
            r.spare_nodes,
            r.zones,
            if r.survive_zone_loss {
                ", each zone loss survivable"
            } else {
                ""
            },
            c.control_plane_nodes
        ),
        "cost: nodes run 24/7 at on-demand prices (no autoscaling, no reserved discounts); agents' pay is the same in every option and left out".to_owned(),
    ]
}
