//! Arrival rates over time and the offered load per channel: hourly shape ×
//! weekday × month (or a measured series) × burst → the sizing peak.

use crate::profile::{Arrivals, Profile, SessionChannel};
use serde::Serialize;

/// The demand a profile puts on the platform. Rates are sessions per hour
/// (all session channels together).
#[derive(Debug, Clone, Serialize)]
pub struct Demand {
    /// The sizing day hour by hour: the busiest weekday of the busiest
    /// month (or the measured series' busiest day) × `shape.burst`.
    pub peak_day: [f64; 24],
    /// An average day hour by hour.
    pub average_day: [f64; 24],
    /// Index into `peak_day` of its busiest hour.
    pub peak_hour: usize,
    /// Arrivals per hour in the busiest hour (× burst).
    pub peak_hour_rate: f64,
    /// The rate sized for: the peak hour × `shape.intra_hour_peak`.
    pub sizing_rate: f64,
    /// Mean arrivals per hour over the whole profile.
    pub average_rate: f64,
    pub sessions_per_month: f64,
    pub channels: Vec<ChannelDemand>,
}

/// Offered load of one session channel, in erlangs (= mean concurrent
/// sessions when nothing is blocked): rate × mean duration.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelDemand {
    pub channel: &'static str,
    pub sessions_per_month: f64,
    pub mean_minutes: f64,
    pub average_erlangs: f64,
    pub peak_hour_erlangs: f64,
    pub sizing_erlangs: f64,
    /// Over the peak day, hour by hour.
    pub peak_day_erlangs: [f64; 24],
    /// Over an average day, hour by hour.
    pub average_day_erlangs: [f64; 24],
}

impl Demand {
    pub fn of(p: &Profile) -> Demand {
        let (peak_day, average_day, average_rate) = match &p.arrivals {
            Arrivals::Shape {
                visits_per_day,
                hourly,
                weekday,
                monthly,
            } => {
                let top = max(weekday) * max(monthly) * p.burst;
                let avg: [f64; 24] = hourly.map(|h| visits_per_day * h);
                (avg.map(|x| x * top), avg, visits_per_day / 24.0)
            }
            Arrivals::Series { hourly, .. } => {
                let start = peak_day_start(hourly);
                let mut peak = [0.0; 24];
                for (h, v) in peak.iter_mut().enumerate() {
                    *v = hourly[start + h] * p.burst;
                }
                let mut avg = [0.0; 24];
                let mut n = [0usize; 24];
                for (i, v) in hourly.iter().enumerate() {
                    avg[i % 24] += v;
                    n[i % 24] += 1;
                }
                for (a, n) in avg.iter_mut().zip(n) {
                    *a /= n.max(1) as f64;
                }
                let mean = hourly.iter().sum::<f64>() / hourly.len() as f64;
                (peak, avg, mean)
            }
        };
        let peak_hour = (0..24)
            .max_by(|a, b| peak_day[*a].total_cmp(&peak_day[*b]))
            .unwrap_or(0);
        let peak_hour_rate = peak_day[peak_hour];
        let sizing_rate = peak_hour_rate * p.intra_hour_peak;
        let sessions_per_month = average_rate * 24.0 * p.days_per_month;
        let channels = p
            .sessions()
            .map(|(name, c)| {
                channel(
                    name,
                    c,
                    (&peak_day, &average_day),
                    average_rate,
                    p,
                    sessions_per_month,
                )
            })
            .collect();
        Demand {
            peak_day,
            average_day,
            peak_hour,
            peak_hour_rate,
            sizing_rate,
            average_rate,
            sessions_per_month,
            channels,
        }
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelDemand> {
        self.channels.iter().find(|c| c.channel == name)
    }
}

fn channel(
    name: &'static str,
    c: &SessionChannel,
    (peak_day, average_day): (&[f64; 24], &[f64; 24]),
    average_rate: f64,
    p: &Profile,
    sessions_per_month: f64,
) -> ChannelDemand {
    let h = c.mean_minutes / 60.0;
    let peak_day_erlangs = peak_day.map(|r| r * c.share * h);
    let peak_hour_erlangs = max(&peak_day_erlangs);
    ChannelDemand {
        channel: name,
        sessions_per_month: sessions_per_month * c.share,
        mean_minutes: c.mean_minutes,
        average_erlangs: average_rate * c.share * h,
        peak_hour_erlangs,
        sizing_erlangs: peak_hour_erlangs * p.intra_hour_peak,
        peak_day_erlangs,
        average_day_erlangs: average_day.map(|r| r * c.share * h),
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// First hour of the 24-hour block (aligned to the series start) holding
/// the series' busiest hour; the last full block if it runs past the end.
fn peak_day_start(hourly: &[f64]) -> usize {
    let i = (0..hourly.len())
        .max_by(|a, b| hourly[*a].total_cmp(&hourly[*b]))
        .unwrap_or(0);
    (i / 24 * 24).min(hourly.len() - 24)
}

/// Sessions per hour for `days` consecutive days, the input of the burst
/// simulator: for a shape profile the busiest month from a Monday on (the
/// weekday factors in order) × burst; for a measured series, from the start
/// of the week (7-day block) holding its busiest hour, wrapping around.
pub fn hourly_series(p: &Profile, days: usize) -> Vec<f64> {
    let hours = days * 24;
    match &p.arrivals {
        Arrivals::Shape {
            visits_per_day,
            hourly,
            weekday,
            monthly,
        } => {
            let month = max(monthly);
            (0..hours)
                .map(|i| visits_per_day * hourly[i % 24] * weekday[i / 24 % 7] * month * p.burst)
                .collect()
        }
        Arrivals::Series { hourly, .. } => {
            let start = peak_day_start(hourly) / (24 * 7) * (24 * 7);
            (0..hours)
                .map(|i| hourly[(start + i) % hourly.len()] * p.burst)
                .collect()
        }
    }
}
