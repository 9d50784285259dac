//! Erlang B and C against published table values, and their properties.
//!
//! Table values: the standard Erlang B table (e.g. the ITU-T "Teletraffic
//! Engineering Handbook", ITU-D SG2, table of the Erlang B formula; the same
//! values as any "Erlang B traffic table" at a given grade of service), and
//! the Erlang C worked examples in the same handbook. Each value asserted
//! here was also recomputed independently with exact rational arithmetic
//! from the closed forms B = (Aᴺ/N!) / Σₖ Aᵏ/k! and
//! C = (Aᴺ/N!·N/(N−A)) / (Σₖ<N Aᵏ/k! + Aᴺ/N!·N/(N−A)).

use continuum_plan::erlang::*;
use proptest::prelude::*;

fn close(got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "got {got}, want {want} ± {tol}");
}

#[test]
fn erlang_b_table_values() {
    close(erlang_b(10.0, 15), 0.036_497, 1e-5); // A = 10, N = 15
    close(erlang_b(2.0, 5), 0.036_697, 1e-5); // A = 2, N = 5
    close(erlang_b(1.0, 2), 0.2, 1e-12); // 1/(1 + 1 + 1/2)·(1/2)
    close(erlang_b(5.0, 10), 0.018_385, 1e-5);
    close(erlang_b(20.0, 30), 0.008_457, 1e-5);
    close(erlang_b(100.0, 117), 0.009_790, 1e-5);
}

#[test]
fn erlang_b_table_lines_at_one_percent() {
    // The 1% column of the Erlang B table: 10 lines carry 4.46 erlangs,
    // 117 lines carry 100 erlangs.
    assert_eq!(servers_for_blocking("trunks", "f", 4.46, 0.01), Ok(10));
    assert_eq!(servers_for_blocking("trunks", "f", 100.0, 0.01), Ok(117));
    close(erlang_b(100.0, 116), 0.011_568, 1e-5);
}

#[test]
fn erlang_c_table_values() {
    close(erlang_c(10.0, 11), 0.682_118, 1e-5); // A = 10, N = 11
    close(erlang_c(10.0, 12), 0.449_388, 1e-5);
    close(erlang_c(10.0, 15), 0.102_042, 1e-5);
    close(erlang_c(2.0, 3), 4.0 / 9.0, 1e-12);
}

#[test]
fn service_level_asa_occupancy() {
    // A = 10 erlangs, h = 180 s, N = 12, answer within 20 s:
    // SL = 1 − 0.449388·e^(−2·20/180) = 0.640158, ASA = 0.449388·180/2 = 40.445 s.
    close(service_level(10.0, 12, 20.0, 180.0), 0.640_158, 1e-5);
    close(asa(10.0, 12, 180.0), 40.444_94, 1e-3);
    close(occupancy(10.0, 12), 10.0 / 12.0, 1e-12);
}

#[test]
fn agents_solver_meets_the_targets_with_the_fewest_agents() {
    // 10 erlangs, 180 s handle, 80/20: N = 12 gives 64% (too few), the
    // solver must find the first N that reaches 80%.
    let s = agents_for_service_level("f", 10.0, 180.0, 20.0, 0.8, 1.0).unwrap();
    assert!(s.service_level >= 0.8);
    assert!(service_level(10.0, s.agents - 1, 20.0, 180.0) < 0.8);
    assert_eq!(s.agents, 14);
    // An occupancy cap binds first for large pools.
    let s = agents_for_service_level("f", 1000.0, 180.0, 20.0, 0.8, 0.85).unwrap();
    assert!(s.occupancy <= 0.85 + 1e-12);
    assert_eq!(s.agents, (1000.0f64 / 0.85).ceil() as u64);
}

#[test]
fn stable_at_ten_thousand_servers() {
    for (a, n) in [
        (9_000.0, 10_000),
        (9_800.0, 10_000),
        (10_000.0, 10_000),
        (12_000.0, 10_000),
    ] {
        for v in [
            erlang_b(a, n),
            erlang_c(a, n),
            service_level(a, n, 20.0, 300.0),
        ] {
            assert!(
                v.is_finite() && (0.0..=1.0).contains(&v),
                "A={a} N={n}: {v}"
            );
        }
    }
    // Far below the load everything blocks a lot; far above, nothing does.
    assert!(erlang_b(9_000.0, 10_000) < 1e-12);
    // Recomputed independently in log space (Σ of k·ln A − ln k!):
    // B(9800, 9770) = 0.010053, B(9800, 9771) = 0.009982, B(12000, 10000) = 0.167081.
    assert_eq!(servers_for_blocking("slots", "f", 9_800.0, 0.01), Ok(9_771));
    close(erlang_b(12_000.0, 10_000), 0.167_081, 1e-5);
}

#[test]
fn more_than_a_million_servers_is_an_error_naming_the_inputs() {
    let e =
        servers_for_blocking("SIP trunk channels", "channels.voice.share", 3e6, 0.01).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("SIP trunk channels") && msg.contains("channels.voice.share"),
        "{msg}"
    );
    let e =
        agents_for_service_level("agents.handle_minutes", 2e6, 300.0, 20.0, 0.8, 0.85).unwrap_err();
    assert!(e.to_string().contains("1000000"), "{e}");
}

proptest! {
    #[test]
    fn b_decreases_in_n(a in 0.01f64..500.0, n in 0u64..600) {
        prop_assert!(erlang_b(a, n + 1) <= erlang_b(a, n));
    }

    #[test]
    fn c_is_at_least_b(a in 0.01f64..500.0, n in 1u64..600) {
        prop_assert!(erlang_c(a, n) >= erlang_b(a, n) - 1e-15);
    }

    #[test]
    fn service_level_increases_with_n(a in 0.01f64..500.0, n in 1u64..600, t in 0.0f64..120.0, h in 10.0f64..1200.0) {
        prop_assert!(service_level(a, n + 1, t, h) >= service_level(a, n, t, h) - 1e-12);
    }

    #[test]
    fn values_stay_in_the_unit_interval(a in 0.0f64..20_000.0, n in 0u64..20_000) {
        for v in [erlang_b(a, n), erlang_c(a, n), service_level(a, n, 20.0, 300.0)] {
            prop_assert!(v.is_finite() && (0.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn solver_returns_the_smallest_n(a in 0.1f64..2_000.0, target in 0.001f64..0.2) {
        let n = servers_for_blocking("x", "f", a, target).unwrap();
        prop_assert!(erlang_b(a, n) <= target);
        prop_assert!(n == 0 || erlang_b(a, n - 1) > target);
    }
}
