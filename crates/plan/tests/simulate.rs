//! The burst simulator against Erlang: it agrees on a steady load, and
//! shows the longer waits Erlang misses when arrivals bunch up inside the
//! hour. Fixed seeds; no timing.

use continuum_plan::erlang;
use continuum_plan::simulate::{SimAgents, SimChannel, SimConfig, run};

/// λ = 120 arrivals/h, 300 s sessions and handle time: A = 10 erlangs.
fn steady(hours: usize, slots: u64, agents: u64, intra_hour_peak: f64, seed: u64) -> SimConfig {
    SimConfig {
        hourly_rates: vec![120.0; hours],
        intra_hour_peak,
        intra_hour_period_secs: 1800.0,
        channels: vec![SimChannel {
            name: "video".into(),
            share: 1.0,
            mean_secs: 300.0,
            slots,
            agent_share: 1.0,
        }],
        agents: Some(SimAgents {
            servers: agents,
            handle_secs: 300.0,
            answer_within_secs: 20.0,
        }),
        seed,
    }
}

#[test]
fn steady_load_agrees_with_erlang_b_and_c() {
    let mut calls = 0;
    let r = run(&steady(2_000, 15, 12, 1.0, 7), &mut |_| calls += 1).unwrap();
    assert_eq!(calls, 2_000, "progress once per simulated hour");
    // ~240,000 arrivals (Poisson: ± 0.5% at 2σ).
    assert!((238_000..242_000).contains(&r.arrivals), "{}", r.arrivals);
    let a = r.agents.as_ref().unwrap();
    eprintln!("steady: {a:?}\nchannel: {:?}", r.channels[0]);
    let c = erlang::erlang_c(10.0, 12); // 0.4494
    let sl = erlang::service_level(10.0, 12, 20.0, 300.0); // 0.6067
    let asa = erlang::asa(10.0, 12, 300.0); // 67.4 s
    assert!(
        (a.prob_wait - c).abs() < 0.025,
        "P(wait) {} vs Erlang C {c}",
        a.prob_wait
    );
    assert!(
        (a.service_level - sl).abs() < 0.025,
        "SL {} vs {sl}",
        a.service_level
    );
    assert!(
        (a.asa_secs / asa - 1.0).abs() < 0.12,
        "ASA {} vs {asa}",
        a.asa_secs
    );
    assert!((a.erlang_service_level - sl).abs() < 1e-9);
    // The loss system with 15 slots: Erlang B(10, 15) = 0.0365.
    let b = erlang::erlang_b(10.0, 15);
    let ch = &r.channels[0];
    assert!(
        (ch.blocking - b).abs() < 0.006,
        "blocking {} vs Erlang B {b}",
        ch.blocking
    );
    // With unlimited servers the peak of a Poisson(10) occupancy over 2,000
    // hours is well above the mean and below 3× it.
    assert!(
        (20..30).contains(&ch.peak_concurrency),
        "{}",
        ch.peak_concurrency
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(&steady(50, 15, 12, 2.0, 42), &mut |_| {}).unwrap();
    let b = run(&steady(50, 15, 12, 2.0, 42), &mut |_| {}).unwrap();
    assert_eq!(a.arrivals, b.arrivals);
    assert_eq!(a.channels[0].blocked, b.channels[0].blocked);
    assert_eq!(a.agents.unwrap().asa_secs, b.agents.unwrap().asa_secs);
}

#[test]
fn bursts_inside_the_hour_wait_longer_than_erlang_says() {
    // The same 120 arrivals per hour, but half of each half hour's arrive in
    // its first 1/(2·3) (appointments on the hour and half hour). Erlang,
    // fed the hourly rate, predicts the same service as the steady load.
    let r = run(&steady(1_000, 15, 14, 3.0, 11), &mut |_| {}).unwrap();
    let a = r.agents.as_ref().unwrap();
    let steady = run(&steady(1_000, 15, 14, 1.0, 11), &mut |_| {}).unwrap();
    let s = steady.agents.as_ref().unwrap();
    eprintln!(
        "bursty: {a:?} {:?}\nsteady: {s:?} {:?}",
        r.channels[0], steady.channels[0]
    );
    assert!((r.arrivals as f64 / steady.arrivals as f64 - 1.0).abs() < 0.02);
    assert!(
        a.asa_secs > 2.0 * a.erlang_asa_secs,
        "bursty ASA {} vs Erlang {}",
        a.asa_secs,
        a.erlang_asa_secs
    );
    assert!(
        a.service_level < a.erlang_service_level - 0.1,
        "{} vs {}",
        a.service_level,
        a.erlang_service_level
    );
    assert!(a.asa_secs > 2.0 * s.asa_secs);
    // Blocking and peak concurrency rise too.
    assert!(r.channels[0].blocking > 2.0 * steady.channels[0].blocking);
    assert!(r.channels[0].peak_concurrency > steady.channels[0].peak_concurrency);
    let (_, worst) = r.worst_hour().unwrap();
    assert!(worst.service_level() < worst.erlang_service_level);
}

#[test]
fn bad_configs_are_errors() {
    let mut c = steady(2, 1, 1, 1.0, 1);
    c.intra_hour_peak = 0.5;
    assert!(run(&c, &mut |_| {}).is_err());
    let mut c = steady(2, 1, 1, 1.0, 1);
    c.hourly_rates[1] = -1.0;
    assert!(run(&c, &mut |_| {}).is_err());
    let mut c = steady(2, 1, 1, 1.0, 1);
    c.hourly_rates = vec![3e9];
    assert!(
        run(&c, &mut |_| {})
            .unwrap_err()
            .to_string()
            .contains("days")
    );
}
