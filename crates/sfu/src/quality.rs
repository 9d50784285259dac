//! Connection quality per participant, from str0m's periodic stats. This is
//! what decides `quality.degraded` on the timeline, which the voice fallback
//! policy listens to, so the rule is deliberately simple and exact:
//!
//! * A sample is **bad** when any of: packet loss > `max_loss`, round-trip time
//!   > `max_rtt`, jitter > `max_jitter` (missing values never make it bad).
//! * **Degraded** is reported once samples have been bad without interruption
//!   for at least `hold` (measured from the first bad sample).
//! * **Recovered** is reported, after a degradation, once samples have been good
//!   without interruption for at least `hold`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityThresholds {
    /// Fraction of packets lost (0.0–1.0).
    pub max_loss: f32,
    pub max_rtt: Duration,
    pub max_jitter: Duration,
    pub hold: Duration,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        QualityThresholds {
            max_loss: 0.05,
            max_rtt: Duration::from_millis(400),
            max_jitter: Duration::from_millis(50),
            hold: Duration::from_secs(5),
        }
    }
}

/// One measurement of a participant's connection.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QualitySample {
    /// The worse of the loss we see on their media and the loss they report of ours.
    pub loss: Option<f32>,
    pub rtt: Option<Duration>,
    pub jitter: Option<Duration>,
    /// Bits per second received from the participant since the previous sample.
    pub ingress_bps: Option<u64>,
    /// Send-side bandwidth estimate towards the participant.
    pub egress_estimate_bps: Option<u64>,
}

/// A connection-quality indicator for clients (a tile's signal bars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rating {
    Excellent,
    Good,
    Poor,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Excellent => "excellent",
            Rating::Good => "good",
            Rating::Poor => "poor",
        }
    }
}

impl QualitySample {
    /// Poor when the sample exceeds a threshold (what `quality.degraded`
    /// counts, here without the hold), excellent when well inside all of them
    /// (loss ≤ a fifth, RTT ≤ a quarter, jitter ≤ half), good otherwise.
    pub fn rating(&self, t: &QualityThresholds) -> Rating {
        if !self.exceeded(t).is_empty() {
            return Rating::Poor;
        }
        let excellent = self.loss.is_none_or(|l| l <= t.max_loss / 5.0)
            && self.rtt.is_none_or(|r| r <= t.max_rtt / 4)
            && self.jitter.is_none_or(|j| j <= t.max_jitter / 2);
        if excellent {
            Rating::Excellent
        } else {
            Rating::Good
        }
    }

    /// Which thresholds this sample exceeds.
    pub fn exceeded(&self, t: &QualityThresholds) -> Vec<&'static str> {
        let mut why = Vec::new();
        if self.loss.is_some_and(|l| l > t.max_loss) {
            why.push("loss");
        }
        if self.rtt.is_some_and(|r| r > t.max_rtt) {
            why.push("rtt");
        }
        if self.jitter.is_some_and(|j| j > t.max_jitter) {
            why.push("jitter");
        }
        why
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum QualityChange {
    Degraded {
        reasons: Vec<&'static str>,
        held: Duration,
    },
    Recovered {
        held: Duration,
    },
}

#[derive(Debug, Default)]
pub struct QualityMonitor {
    degraded: bool,
    /// When the current run of bad (or, once degraded, good) samples began.
    run_started: Option<Instant>,
}

impl QualityMonitor {
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    pub fn observe(
        &mut self,
        at: Instant,
        sample: &QualitySample,
        t: &QualityThresholds,
    ) -> Option<QualityChange> {
        let reasons = sample.exceeded(t);
        // The run we are timing: bad samples while fine, good samples while degraded.
        let continues_run = reasons.is_empty() == self.degraded;
        if !continues_run {
            self.run_started = None;
            return None;
        }
        let started = *self.run_started.get_or_insert(at);
        let held = at.saturating_duration_since(started);
        if held < t.hold {
            return None;
        }
        self.degraded = !self.degraded;
        self.run_started = None;
        Some(if self.degraded {
            QualityChange::Degraded { reasons, held }
        } else {
            QualityChange::Recovered { held }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(samples: &[(u64, f32)]) -> Vec<(u64, QualityChange)> {
        let t0 = Instant::now();
        let t = QualityThresholds::default();
        let mut m = QualityMonitor::default();
        samples
            .iter()
            .filter_map(|&(secs, loss)| {
                let s = QualitySample {
                    loss: Some(loss),
                    ..Default::default()
                };
                m.observe(t0 + Duration::from_secs(secs), &s, &t)
                    .map(|c| (secs, c))
            })
            .collect()
    }

    #[test]
    fn degraded_only_after_the_hold_time() {
        let changes = run(&[
            (0, 0.0),
            (1, 0.2),
            (2, 0.2),
            (3, 0.2),
            (4, 0.2),
            (5, 0.2),
            (6, 0.2),
            (7, 0.2),
        ]);
        assert_eq!(
            changes,
            vec![(
                6,
                QualityChange::Degraded {
                    reasons: vec!["loss"],
                    held: Duration::from_secs(5)
                }
            )]
        );
    }

    #[test]
    fn a_good_sample_resets_the_clock() {
        let changes = run(&[
            (0, 0.2),
            (1, 0.2),
            (2, 0.2),
            (3, 0.2),
            (4, 0.0),
            (5, 0.2),
            (6, 0.2),
            (7, 0.2),
            (8, 0.2),
            (9, 0.2),
        ]);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn recovers_after_holding_good() {
        let mut samples: Vec<(u64, f32)> = (0..=5).map(|s| (s, 0.3)).collect();
        samples.extend((6..=12).map(|s| (s, 0.01)));
        let changes = run(&samples);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(changes[0], (5, QualityChange::Degraded { .. })));
        assert_eq!(
            changes[1],
            (
                11,
                QualityChange::Recovered {
                    held: Duration::from_secs(5)
                }
            )
        );
    }

    #[test]
    fn each_threshold_counts_and_missing_values_do_not() {
        let t = QualityThresholds::default();
        let s = QualitySample {
            rtt: Some(Duration::from_millis(900)),
            jitter: Some(Duration::from_millis(80)),
            ..Default::default()
        };
        assert_eq!(s.exceeded(&t), vec!["rtt", "jitter"]);
        assert!(QualitySample::default().exceeded(&t).is_empty());
    }

    #[test]
    fn ratings_follow_the_thresholds() {
        let t = QualityThresholds::default(); // 5 %, 400 ms, 50 ms
        let s = |loss: f32, rtt: u64, jitter: u64| QualitySample {
            loss: Some(loss),
            rtt: Some(Duration::from_millis(rtt)),
            jitter: Some(Duration::from_millis(jitter)),
            ..Default::default()
        };
        assert_eq!(s(0.0, 30, 5).rating(&t), Rating::Excellent);
        assert_eq!(s(0.01, 100, 25).rating(&t), Rating::Excellent);
        assert_eq!(s(0.02, 100, 25).rating(&t), Rating::Good);
        assert_eq!(s(0.0, 150, 5).rating(&t), Rating::Good);
        assert_eq!(
            s(0.05, 400, 50).rating(&t),
            Rating::Good,
            "at the thresholds"
        );
        assert_eq!(s(0.06, 30, 5).rating(&t), Rating::Poor);
        assert_eq!(s(0.0, 30, 51).rating(&t), Rating::Poor);
        assert_eq!(QualitySample::default().rating(&t), Rating::Excellent);
    }
}
