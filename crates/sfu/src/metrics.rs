//! SFU figures for `/metrics` (Prometheus via the `metrics` facade), with a
//! `worker` label: each worker exports what changed since its last export,
//! so the workers' counters add up. Per-tenant figures are the host owner's
//! (this crate knows no tenants).

use crate::quality::QualitySample;
use crate::worker::{TIMER_REASONS, Worker, WorkerStats};
use std::time::{Duration, Instant};

/// What one worker exported last.
pub(crate) struct Exported {
    label: String,
    stats: WorkerStats,
    last_gauges: Instant,
}

impl Exported {
    pub(crate) fn new(label: &str, port: u16) -> Self {
        metrics::gauge!("continuum_sfu_udp_port", "worker" => label.to_owned()).set(port as f64);
        Exported {
            label: label.to_owned(),
            stats: WorkerStats::default(),
            last_gauges: Instant::now(),
        }
    }

    /// Datagrams the kernel refused (socket buffer full): the worker is saturated.
    pub(crate) fn send_dropped(&self, dropped: usize) {
        if dropped > 0 {
            metrics::counter!("continuum_sfu_send_dropped_total", "worker" => self.label.clone())
                .increment(dropped as u64);
        }
    }

    /// Counters by delta on every call; gauges once a second.
    pub(crate) fn export(&mut self, worker: &Worker) {
        export_counters(&worker.stats, &mut self.stats);
        if self.last_gauges.elapsed() >= Duration::from_secs(1) {
            self.last_gauges = Instant::now();
            metrics::gauge!("continuum_sfu_rooms", "worker" => self.label.clone())
                .set(worker.room_count() as f64);
            metrics::gauge!("continuum_sfu_participants", "worker" => self.label.clone())
                .set(worker.participant_count() as f64);
        }
    }
}

/// Adds what changed since the last export to the Prometheus counters.
fn export_counters(now: &WorkerStats, reported: &mut WorkerStats) {
    if now == reported {
        return;
    }
    let pairs = [
        (
            "continuum_sfu_datagrams_in_total",
            now.datagrams_in,
            reported.datagrams_in,
        ),
        (
            "continuum_sfu_bytes_in_total",
            now.bytes_in,
            reported.bytes_in,
        ),
        (
            "continuum_sfu_unknown_datagrams_total",
            now.unknown_datagrams,
            reported.unknown_datagrams,
        ),
        (
            "continuum_sfu_packets_forwarded_total",
            now.packets_forwarded,
            reported.packets_forwarded,
        ),
        (
            "continuum_sfu_packets_not_forwarded_total",
            now.packets_not_forwarded,
            reported.packets_not_forwarded,
        ),
        (
            "continuum_sfu_layer_switches_total",
            now.layer_switches,
            reported.layer_switches,
        ),
        (
            "continuum_sfu_rtx_sent_total",
            now.rtx_sent,
            reported.rtx_sent,
        ),
        (
            "continuum_sfu_bytes_forwarded_total",
            now.bytes_forwarded,
            reported.bytes_forwarded,
        ),
        (
            "continuum_sfu_keyframe_requests_total",
            now.keyframe_requests,
            reported.keyframe_requests,
        ),
        (
            "continuum_sfu_layers_paused_total",
            now.layers_paused,
            reported.layers_paused,
        ),
        (
            "continuum_sfu_layers_resumed_total",
            now.layers_resumed,
            reported.layers_resumed,
        ),
        (
            "continuum_sfu_participants_joined_total",
            now.participants_joined,
            reported.participants_joined,
        ),
        (
            "continuum_sfu_joins_refused_total",
            now.joins_refused,
            reported.joins_refused,
        ),
        (
            "continuum_sfu_data_messages_relayed_total",
            now.data_messages_relayed,
            reported.data_messages_relayed,
        ),
        (
            "continuum_sfu_nacks_received_total",
            now.nacks_received,
            reported.nacks_received,
        ),
        (
            "continuum_sfu_plis_received_total",
            now.plis_received,
            reported.plis_received,
        ),
        (
            "continuum_sfu_firs_received_total",
            now.firs_received,
            reported.firs_received,
        ),
        (
            "continuum_sfu_nacks_sent_total",
            now.nacks_sent,
            reported.nacks_sent,
        ),
        (
            "continuum_sfu_plis_sent_total",
            now.plis_sent,
            reported.plis_sent,
        ),
        (
            "continuum_sfu_firs_sent_total",
            now.firs_sent,
            reported.firs_sent,
        ),
    ];
    for (name, value, before) in pairs {
        if value > before {
            metrics::counter!(name).increment(value - before);
        }
    }
    for (i, reason) in TIMER_REASONS.iter().enumerate() {
        let (value, before) = (now.timer_reasons[i], reported.timer_reasons[i]);
        if value > before {
            metrics::counter!("continuum_sfu_timer_wakeups_total", "reason" => *reason)
                .increment(value - before);
        }
    }
    *reported = *now;
}

/// Per-participant quality samples as Prometheus histograms.
pub(crate) fn record_quality(s: &QualitySample) {
    if let Some(rtt) = s.rtt {
        metrics::histogram!("continuum_sfu_rtt_seconds").record(rtt.as_secs_f64());
    }
    if let Some(loss) = s.loss {
        metrics::histogram!("continuum_sfu_loss_ratio").record(loss as f64);
    }
    if let Some(j) = s.jitter {
        metrics::histogram!("continuum_sfu_jitter_seconds").record(j.as_secs_f64());
    }
    if let Some(bps) = s.egress_estimate_bps {
        metrics::histogram!("continuum_sfu_egress_estimate_bps").record(bps as f64);
    }
}
