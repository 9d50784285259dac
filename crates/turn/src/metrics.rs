//! TURN figures for `/metrics` (Prometheus via the `metrics` facade), with a
//! `region` label, and per-tenant allocation gauges.

use crate::server::{Server, Stats};

pub(crate) fn export(server: &Server, reported: &mut Stats, region: &str) {
    let s = &server.stats;
    let r = region.to_owned();
    let counters = [
        (
            "continuum_turn_allocations_created_total",
            s.allocations_created,
            reported.allocations_created,
        ),
        (
            "continuum_turn_auth_failures_total",
            s.auth_failures,
            reported.auth_failures,
        ),
        (
            "continuum_turn_packets_to_peers_total",
            s.packets_to_peers,
            reported.packets_to_peers,
        ),
        (
            "continuum_turn_bytes_to_peers_total",
            s.bytes_to_peers,
            reported.bytes_to_peers,
        ),
        (
            "continuum_turn_packets_to_clients_total",
            s.packets_to_clients,
            reported.packets_to_clients,
        ),
        (
            "continuum_turn_bytes_to_clients_total",
            s.bytes_to_clients,
            reported.bytes_to_clients,
        ),
        (
            "continuum_turn_dropped_no_permission_total",
            s.dropped_no_permission,
            reported.dropped_no_permission,
        ),
        (
            "continuum_turn_dropped_over_bandwidth_total",
            s.dropped_over_bandwidth,
            reported.dropped_over_bandwidth,
        ),
        (
            "continuum_turn_malformed_total",
            s.malformed,
            reported.malformed,
        ),
    ];
    for (name, now, before) in counters {
        if now > before {
            metrics::counter!(name, "region" => r.clone()).increment(now - before);
        }
    }
    for (reason, n) in &s.allocations_refused {
        let before = reported
            .allocations_refused
            .get(reason)
            .copied()
            .unwrap_or(0);
        if *n > before {
            metrics::counter!("continuum_turn_allocations_refused_total", "region" => r.clone(), "reason" => *reason)
                .increment(n - before);
        }
    }
    for (reason, n) in &s.policy_denials {
        let before = reported.policy_denials.get(reason).copied().unwrap_or(0);
        if *n > before {
            metrics::counter!("continuum_turn_peer_policy_denials_total", "region" => r.clone(), "reason" => *reason)
                .increment(n - before);
        }
    }
    metrics::gauge!("continuum_turn_allocations", "region" => r.clone())
        .set(server.allocation_count() as f64);
    metrics::gauge!("continuum_turn_permissions", "region" => r.clone())
        .set(server.permission_count() as f64);
    metrics::gauge!("continuum_turn_channels", "region" => r.clone())
        .set(server.channel_count() as f64);
    for (tenant, n) in server.tenants() {
        metrics::gauge!("continuum_turn_tenant_allocations", "region" => r.clone(), "tenant" => tenant.to_owned())
            .set(n as f64);
    }
    *reported = s.clone();
}
