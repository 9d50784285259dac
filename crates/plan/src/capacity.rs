//! Per-core capacity figures: from a `continuum bench sfu --out F` or
//! `continuum bench voice --out F` result, from a small capacity file of
//! their own, or the documented defaults measured on the development machine
//! (docs/benchmarks.md).

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Read(#[from] crate::ReadError),
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: &'static str,
        reason: String,
    },
}

/// What one core (vCPU) of a node carries. Node shape (vCPUs, network) is
/// the priced instance's (`[instance]` in the price book).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Where these figures come from (filled in when loaded).
    pub source: String,
    /// SFU egress RTP packets per second one core forwards (1:1 visits).
    pub sfu_egress_packets_per_core: f64,
    /// The same in a large fan-out (one publisher, many subscribers): for
    /// information; the planner uses the lower 1:1 figure for every room.
    pub sfu_fanout_egress_packets_per_core: f64,
    /// 1:1 visits per core at the benchmark's bitrates (a cross-check).
    pub sfu_visits_per_core: f64,
    /// TURN CPU per relayed packet (one way through the server), µs.
    pub turn_cpu_us_per_packet: f64,
    /// Concurrent G.711 PSTN calls one core of the voice gateway carries.
    pub voice_calls_per_core: f64,
    /// Plan nodes to run at most this share of CPU and network at the peak.
    pub target_utilization: f64,
    /// API, signaling and database nodes, whatever the load (an HA pair).
    pub control_plane_nodes: u32,
}

/// Default source note (figures in docs/benchmarks.md).
pub const DEFAULT_SOURCE: &str = "defaults: docs/benchmarks.md, 2-core dev VM, 2026-11-26 \
     (`continuum bench sfu`: 44,301 egress packets/core-s and ≈103 1:1 visits per core; \
     fan-out 73,910; bench/turn-vs-coturn.sh: 4.35 µs CPU per relayed packet at the \
     bulk load, one relay worker); \
     `continuum bench voice --bridged-only`, 2026-12-01: the gateway's share of a phone call \
     bridged into a room is 1.25–1.7% of a core (Opus encode dominates): 60 calls/core";

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            source: DEFAULT_SOURCE.to_owned(),
            sfu_egress_packets_per_core: 44_301.0,
            sfu_fanout_egress_packets_per_core: 73_910.0,
            sfu_visits_per_core: 103.0,
            turn_cpu_us_per_packet: 4.35,
            // Measured (bench voice --bridged-only, 2026-12-01, Opus
            // complexity 1): the gateway's CPU per bridged call, the
            // conservative end of 0.185–0.223% of a core (≈ 450–540 a core).
            voice_calls_per_core: 450.0,
            target_utilization: 0.7,
            control_plane_nodes: 2,
        }
    }
}

/// The parts of `continuum bench sfu --out` we read.
#[derive(Deserialize)]
struct BenchSfu {
    runs: Vec<BenchRun>,
    visits_per_core_estimate: Option<f64>,
}

/// The parts of `continuum bench voice --out` we read.
#[derive(Deserialize)]
struct BenchVoice {
    /// Bridged phone↔room calls one core of gateway time carries.
    voice_calls_per_core_estimate: f64,
}

#[derive(Deserialize)]
struct BenchRun {
    scenario: String,
    egress_rtp_packets_per_core_sec: f64,
}

impl Capacity {
    /// Reads a bench result (JSON with `runs` from `bench sfu`, or with
    /// `"bench": "voice"` from `bench voice`) or a capacity file (TOML, or
    /// JSON with the fields of [`Capacity`]); missing fields keep defaults.
    pub fn load(path: &Path) -> Result<Capacity, CapacityError> {
        Self::parse(&crate::read_input(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, label: &str) -> Result<Capacity, CapacityError> {
        let perr = |message: String| CapacityError::Parse {
            path: label.to_owned(),
            message,
        };
        let mut cap = if text.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| perr(e.to_string()))?;
            if v.get("runs").is_some() {
                let b: BenchSfu = serde_json::from_value(v)
                    .map_err(|e| perr(format!("not a `continuum bench sfu` result: {e}")))?;
                Self::from_bench(b, label)?
            } else if v.get("bench").and_then(|b| b.as_str()) == Some("voice") {
                let b: BenchVoice = serde_json::from_value(v).map_err(|e| {
                    perr(format!(
                        "not a `continuum bench voice` result with bridged calls: {e}"
                    ))
                })?;
                Capacity {
                    source: format!(
                        "{label} (continuum bench voice: bridged calls; other figures: {DEFAULT_SOURCE})"
                    ),
                    voice_calls_per_core: b.voice_calls_per_core_estimate,
                    ..Capacity::default()
                }
            } else {
                serde_json::from_value(v).map_err(|e| perr(e.to_string()))?
            }
        } else {
            toml::from_str(text).map_err(|e| perr(e.to_string().trim_end().to_owned()))?
        };
        if cap.source.is_empty() || cap.source == DEFAULT_SOURCE {
            cap.source = label.to_owned();
        }
        cap.validate(label)?;
        Ok(cap)
    }

    fn from_bench(b: BenchSfu, label: &str) -> Result<Capacity, CapacityError> {
        let one_to_one = b
            .runs
            .iter()
            .find(|r| r.scenario.contains("1:1"))
            .or_else(|| {
                b.runs.iter().min_by(|x, y| {
                    x.egress_rtp_packets_per_core_sec
                        .total_cmp(&y.egress_rtp_packets_per_core_sec)
                })
            })
            .ok_or_else(|| CapacityError::Invalid {
                path: label.to_owned(),
                field: "runs",
                reason: "no runs in the bench result".into(),
            })?;
        let mut cap = Capacity {
            source: format!("{label} (continuum bench sfu: {})", one_to_one.scenario),
            sfu_egress_packets_per_core: one_to_one.egress_rtp_packets_per_core_sec,
            ..Capacity::default()
        };
        if let Some(f) = b.runs.iter().find(|r| r.scenario.contains("subscribers")) {
            cap.sfu_fanout_egress_packets_per_core = f.egress_rtp_packets_per_core_sec;
        }
        if let Some(v) = b.visits_per_core_estimate {
            cap.sfu_visits_per_core = v;
        }
        Ok(cap)
    }

    fn validate(&self, label: &str) -> Result<(), CapacityError> {
        let bad = |field: &'static str, reason: &str| CapacityError::Invalid {
            path: label.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        for (field, v) in [
            (
                "sfu_egress_packets_per_core",
                self.sfu_egress_packets_per_core,
            ),
            (
                "sfu_fanout_egress_packets_per_core",
                self.sfu_fanout_egress_packets_per_core,
            ),
            ("sfu_visits_per_core", self.sfu_visits_per_core),
            ("turn_cpu_us_per_packet", self.turn_cpu_us_per_packet),
            ("voice_calls_per_core", self.voice_calls_per_core),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(field, &format!("must be a number > 0 (got {v})")));
            }
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return Err(bad("target_utilization", "must be in (0, 1]"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_voice_result_gives_the_voice_figure() {
        let text = r#"{"bench": "voice", "cores": 2, "calls_per_sec": 900.0,
            "gateway_cpu_per_bridged_call_pct": 0.25,
            "voice_calls_per_core_estimate": 400.0,
            "bridged": {"calls": 100}}"#;
        let cap = Capacity::parse(text, "voice.json").unwrap();
        assert_eq!(cap.voice_calls_per_core, 400.0);
        assert_eq!(
            cap.sfu_egress_packets_per_core,
            Capacity::default().sfu_egress_packets_per_core
        );
        assert!(cap.source.starts_with("voice.json (continuum bench voice"));
    }

    #[test]
    fn a_bench_voice_result_without_bridged_calls_is_refused() {
        // Signalling only (`--bridged 0`): nothing for the planner.
        let text = r#"{"bench": "voice", "calls_per_sec": 900.0}"#;
        let e = Capacity::parse(text, "voice.json").unwrap_err();
        assert!(e.to_string().contains("bench voice"), "{e}");
        let text = r#"{"bench": "voice", "voice_calls_per_core_estimate": 0.0}"#;
        assert!(matches!(
            Capacity::parse(text, "v.json"),
            Err(CapacityError::Invalid {
                field: "voice_calls_per_core",
                ..
            })
        ));
    }
}
