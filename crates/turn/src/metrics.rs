//! TURN figures for `/metrics` (Prometheus via the `metrics` facade), with a
//! `region` label, and per-tenant allocation gauges. Every relay worker
//! exports what changed on it since its last export (counters and gauges by
//! delta, so the workers' figures add up); one worker exports the tenants.

use crate::server::{Server, Stats};

/// What a worker exported last time.
#[derive(Default)]
pub(crate) struct Reported {
    stats: Stats,
    allocations: usize,
    permissions: usize,
    channels: usize,
    tenants: Vec<String>,
    io: IoCounts,
}

/// What a worker's IO layer counts itself (running totals).
#[derive(Default, Clone, Copy)]
pub(crate) struct IoCounts {
    /// Datagrams the kernel refused (full socket buffers).
    pub send_dropped: u64,
    /// Bytes TCP data connections (RFC 6062) relayed, to peers and to
    /// clients: added to the relayed-bytes counters.
    pub tcp_bytes_to_peers: u64,
    pub tcp_bytes_to_clients: u64,
}

pub(crate) fn export(
    server: &Server,
    last: &mut Reported,
    region: &str,
    tenants: bool,
    io: IoCounts,
) {
    let s = &server.stats;
    let reported = &last.stats;
    let r = region.to_owned();
    for (name, now, before) in [
        (
            "continuum_turn_send_dropped_total",
            io.send_dropped,
            last.io.send_dropped,
        ),
        (
            "continuum_turn_bytes_to_peers_total",
            io.tcp_bytes_to_peers,
            last.io.tcp_bytes_to_peers,
        ),
        (
            "continuum_turn_bytes_to_clients_total",
            io.tcp_bytes_to_clients,
            last.io.tcp_bytes_to_clients,
        ),
    ] {
        if now > before {
            metrics::counter!(name, "region" => r.clone()).increment(now - before);
        }
    }
    last.io = io;
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
        (
            "continuum_turn_tcp_connections_total",
            s.tcp_connections,
            reported.tcp_connections,
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
    for (name, now, before) in [
        (
            "continuum_turn_allocations",
            server.allocation_count(),
            &mut last.allocations,
        ),
        (
            "continuum_turn_permissions",
            server.permission_count(),
            &mut last.permissions,
        ),
        (
            "continuum_turn_channels",
            server.channel_count(),
            &mut last.channels,
        ),
    ] {
        let g = metrics::gauge!(name, "region" => r.clone());
        if now >= *before {
            g.increment((now - *before) as f64);
        } else {
            g.decrement((*before - now) as f64);
        }
        *before = now;
    }
    if tenants {
        let now = server.ledger().tenants();
        // A tenant whose last allocation ended goes to 0, not stale.
        for gone in last
            .tenants
            .iter()
            .filter(|t| !now.iter().any(|(n, _)| n == *t))
        {
            metrics::gauge!("continuum_turn_tenant_allocations", "region" => r.clone(), "tenant" => gone.clone())
                .set(0.0);
        }
        for (tenant, n) in &now {
            metrics::gauge!("continuum_turn_tenant_allocations", "region" => r.clone(), "tenant" => tenant.clone())
                .set(*n as f64);
        }
        last.tenants = now.into_iter().map(|(t, _)| t).collect();
    }
    last.stats = s.clone();
}
