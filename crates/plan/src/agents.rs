//! Agents for the sessions that queue (on-demand visits, nurse lines):
//! Erlang C per hour of the sizing day.

use crate::demand::Demand;
use crate::erlang::{ErlangError, Staffing, agents_for_service_level};
use crate::profile::Profile;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AgentPlan {
    /// Queued sessions per hour at the sizing rate.
    pub arrivals_per_hour: f64,
    pub handle_minutes: f64,
    /// At the sizing rate (peak hour × intra-hour peak).
    pub peak: Staffing,
    /// What Erlang C alone would staff for the peak hour's mean rate, with
    /// no intra-hour bunching (`plan simulate --agents N` shows what it misses).
    pub agents_at_hourly_mean: u64,
    /// Paid agents to roster at the peak: `peak.agents / (1 − shrinkage)`.
    pub scheduled_at_peak: u64,
    /// Each hour of the sizing day (hourly mean rate × intra-hour peak).
    pub by_hour: Vec<Staffing>,
}

const FIELDS: &str =
    "volume.visits_per_day (or the arrivals), channels.*.agent_share and agents.handle_minutes";

/// `None` when the profile has no `[agents]` or nothing queues.
pub fn plan(p: &Profile, d: &Demand) -> Result<Option<AgentPlan>, ErlangError> {
    let Some(a) = &p.agents else { return Ok(None) };
    let queued: f64 = p.sessions().map(|(_, c)| c.share * c.agent_share).sum();
    if queued <= 0.0 {
        return Ok(None);
    }
    let h = a.handle_minutes * 60.0;
    let solve = |rate_per_hour: f64| {
        agents_for_service_level(
            FIELDS,
            rate_per_hour / 3600.0 * h,
            h,
            a.answer_within_secs,
            a.service_level,
            a.max_occupancy,
        )
    };
    let arrivals_per_hour = d.sizing_rate * queued;
    let peak = solve(arrivals_per_hour)?;
    let agents_at_hourly_mean = solve(d.peak_hour_rate * queued)?.agents;
    let by_hour = d
        .peak_day
        .iter()
        .map(|r| solve(r * queued * p.intra_hour_peak))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(AgentPlan {
        arrivals_per_hour,
        handle_minutes: a.handle_minutes,
        scheduled_at_peak: (peak.agents as f64 / (1.0 - a.shrinkage)).ceil() as u64,
        peak,
        agents_at_hourly_mean,
        by_hour,
    }))
}
