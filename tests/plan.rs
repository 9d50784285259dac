//! `continuum plan` end to end: the shipped example profile through the
//! real binary (report, JSON, charts, a bench capacity file, the burst
//! simulator, bad input), and `--from-metrics` against a running server.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plan/profile.toml");
const PRICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plan/prices.toml");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CONTINUUM_LOG", "warn")
        .output()
        .expect("running continuum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plan_report_json_charts_and_bench_capacity() {
    let (code, out, err) = run(&["plan", EXAMPLE, "--prices", PRICES]);
    assert_eq!(code, 0, "{err}");
    for section in [
        "Demand",
        "Nodes at the peak",
        "Agents (Erlang C)",
        "Monthly cost",
        "CPaaS",
        "self-hosted",
        "hybrid",
        "break",
        "Assumptions",
        "Price sources",
    ] {
        assert!(out.contains(section), "no `{section}` in:\n{out}");
    }

    let dir = tempdir();
    let bench = dir.path().join("sfu.json");
    // The shape `continuum bench sfu --out` writes, with half our default
    // egress per core: the plan needs more SFU cores for it.
    std::fs::write(
        &bench,
        r#"{"runs": [{"scenario": "20 1:1 visits (A+V simulcast each way)", "egress_rtp_packets_per_core_sec": 22000.0},
                    {"scenario": "1 publisher → 40 subscribers", "egress_rtp_packets_per_core_sec": 40000.0}],
            "visits_per_core_estimate": 51.0, "method": "test"}"#,
    )
    .unwrap();
    let charts = dir.path().join("charts");
    let (code, out, err) = run(&[
        "plan",
        EXAMPLE,
        "--json",
        "--capacity",
        bench.to_str().unwrap(),
        "--charts",
        charts.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(v["capacity"]["sfu_egress_packets_per_core"], 22000.0);
    assert_eq!(v["capacity"]["sfu_visits_per_core"], 51.0);
    assert!(v["media"]["sfu_nodes"].as_u64().unwrap() >= 2);
    assert!(
        v["demand"]["peak_hour_rate"].as_f64().unwrap()
            > v["demand"]["average_rate"].as_f64().unwrap()
    );
    for k in ["cpaas", "self_hosted", "hybrid"] {
        assert!(v["costs"][k]["monthly"].as_f64().unwrap() > 0.0, "{k}");
    }
    assert!(v["cost_curve"].as_array().unwrap().len() > 50);
    assert!(v["self_hosted_break_even"]["note"].is_string());
    assert_eq!(v["charts"].as_array().unwrap().len(), 4);
    for f in ["cost.svg", "cost.png", "demand.svg", "demand.png"] {
        let len = std::fs::metadata(charts.join(f)).unwrap().len();
        assert!(len > 1000, "{f}: {len} bytes");
    }
}

#[test]
fn simulate_reports_against_erlang() {
    let (code, out, err) = run(&["plan", "simulate", EXAMPLE, "--days", "1", "--seed", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Burst simulation: 24 hours"), "{out}");
    assert!(out.contains("Erlang C"), "{out}");
    let (code, out, err) = run(&[
        "plan", "simulate", EXAMPLE, "--days", "1", "--seed", "3", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["arrivals"].as_u64().unwrap() > 1000);
    assert_eq!(v["by_hour"].as_array().unwrap().len(), 24);
    assert!(v["agents"]["servers"].as_u64().unwrap() > 0);
}

#[test]
fn bad_input_names_the_field() {
    let dir = tempdir();
    let p = dir.path().join("p.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    std::fs::write(
        &p,
        example.replace("mean_minutes = 16", "mean_minutes = -16"),
    )
    .unwrap();
    let (code, _, err) = run(&["plan", p.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("channels.video.mean_minutes"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = run(&["plan", "/nonexistent/profile.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/profile.toml"), "{err}");
}

#[test]
fn headroom_from_a_running_servers_metrics() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let url = s.url("/metrics");
    let (code, out, err) = run(&["plan", EXAMPLE, "--from-metrics", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Live metrics vs the plan"), "{out}");
    assert!(
        out.contains("SFU participants") && out.contains("TURN allocations"),
        "{out}"
    );
    let (code, out, err) = run(&["plan", EXAMPLE, "--json", "--from-metrics", &url]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // An idle server: nothing in use, all the node's capacity is headroom.
    assert_eq!(v["headroom"]["observed"]["sfu_participants"], 0.0);
    assert_eq!(v["headroom"]["rows"][0]["headroom"], 1.0);
    // Not a metrics endpoint: a clear error.
    let (code, _, err) = run(&["plan", EXAMPLE, "--from-metrics", &s.url("/healthz")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("continuum_sfu_") || err.contains("metrics"),
        "{err}"
    );
}
