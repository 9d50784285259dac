//! Profiles, capacity files and price books: the shipped examples load, and
//! bad input gives an error naming the field (never a panic).

use continuum_plan::capacity::Capacity;
use continuum_plan::cost::PriceBook;
use continuum_plan::profile::{Arrivals, Profile};
use continuum_plan::{PlanError, plan};
use std::path::Path;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/plan");

const MINIMAL: &str = r#"
[volume]
visits_per_day = 1000
[channels.video]
share = 0.7
mean_minutes = 15
[channels.voice]
share = 0.3
mean_minutes = 6
"#;

fn parse(text: &str) -> Result<Profile, String> {
    Profile::parse(text, "test.toml", None).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

fn plan_err(text: &str) -> String {
    let p = parse(text).unwrap();
    match plan(&p, &Capacity::default(), &PriceBook::default()) {
        Ok(_) => panic!("planned:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_shipped_examples_load_and_plan() {
    let p = Profile::load(&Path::new(EXAMPLES).join("profile.toml")).unwrap();
    let b = PriceBook::load(&Path::new(EXAMPLES).join("prices.toml")).unwrap();
    // The shipped price book is the built-in defaults, written out.
    assert_eq!(b, PriceBook::default());
    let plan = plan(&p, &Capacity::default(), &b).unwrap();
    assert!(plan.media.sfu_nodes >= 2 && plan.media.turn_nodes >= 2);
    assert!(plan.demand.peak_hour_rate > plan.demand.average_rate * 3.0);
    assert!(plan.agents.as_ref().unwrap().peak.service_level >= 0.8);
    assert!(plan.costs.cpaas.monthly > 0.0 && plan.costs.self_hosted.monthly > 0.0);
    // Every default price has its source in the report.
    assert!(plan.price_sources.iter().all(|(_, s)| s.contains("20")));
}

#[test]
fn the_csv_example_loads_as_a_series() {
    let p = Profile::load(&Path::new(EXAMPLES).join("profile-csv.toml")).unwrap();
    let Arrivals::Series { hours, .. } = &p.arrivals else {
        panic!("not a series")
    };
    assert_eq!(*hours, 8760);
    plan(&p, &Capacity::default(), &PriceBook::default()).unwrap();
}

#[test]
fn missing_fields_are_named() {
    let e = err("[channels.video]\nshare = 1\nmean_minutes = 3\n");
    assert!(e.contains("volume"), "{e}");
    let e = err("[volume]\ndays_per_month = 30\n[channels.video]\nshare = 1\nmean_minutes = 3\n");
    assert!(e.contains("volume.visits_per_day"), "{e}");
    let e = err("[volume]\nvisits_per_day = 10\n[channels.video]\nshare = 1\n");
    assert!(
        e.contains("channels.video") && e.contains("mean_minutes"),
        "{e}"
    );
    let e = err("[volume]\nvisits_per_day = 10\n");
    assert!(e.contains("channels"), "{e}");
}

#[test]
fn negative_and_out_of_range_values_are_named() {
    let e = err(&MINIMAL.replace("visits_per_day = 1000", "visits_per_day = -5"));
    assert!(
        e.contains("volume.visits_per_day") && e.contains("≥ 0"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("mean_minutes = 6", "mean_minutes = -6"));
    assert!(e.contains("channels.voice.mean_minutes"), "{e}");
    let e = err(&MINIMAL.replace("share = 0.3", "share = 0.2"));
    assert!(
        e.contains("channels.*.share") && e.contains("sum to 1"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[turn]\nrelay_share = 1.5\n"));
    assert!(e.contains("turn.relay_share"), "{e}");
    let e = err(&format!("{MINIMAL}[shape]\nhourly = [1, 2, 3]\n"));
    assert!(e.contains("shape.hourly") && e.contains("24"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[shape]\nweekday = [1, 1, 1, -1, 1, 1, 1]\n"
    ));
    assert!(e.contains("shape.weekday[3]"), "{e}");
    let e = err(&format!("{MINIMAL}[agents]\nhandle_minutes = 0\n"));
    assert!(e.contains("agents.handle_minutes"), "{e}");
    let e = err(&format!("{MINIMAL}[targets]\ntrunk_blocking = 1.5\n"));
    assert!(e.contains("targets.trunk_blocking"), "{e}");
    let e = err(&format!("{MINIMAL}[regions]\na = 0.5\nb = 0.2\n"));
    assert!(e.contains("regions"), "{e}");
    let e = err(&format!("{MINIMAL}[video]\none_to_one_layer = 3\n"));
    assert!(e.contains("video.one_to_one_layer"), "{e}");
    let e = err(&MINIMAL.replace("mean_minutes = 15", "mean_minutes = 15\nparticipants = 3"));
    assert!(e.contains("channels.video.participants"), "{e}");
    let e = err(&MINIMAL.replace("visits_per_day = 1000", "visits_per_day = nan"));
    assert!(e.contains("volume.visits_per_day"), "{e}");
}

#[test]
fn unknown_channels_and_fields_are_named() {
    let e = err(&format!(
        "{MINIMAL}[channels.fax]\nshare = 0\nmean_minutes = 1\n"
    ));
    assert!(e.contains("channels.fax") && e.contains("whatsapp"), "{e}");
    let e = err(&MINIMAL.replace("mean_minutes = 6", "mean_minutes = 6\nmean_mins = 3"));
    assert!(e.contains("mean_mins"), "{e}");
    let e = err(&format!("{MINIMAL}[turn]\nrelay = 0.2\n"));
    assert!(e.contains("relay"), "{e}");
}

#[test]
fn a_profile_needing_more_than_a_million_agents_is_refused() {
    // 1e9 sessions a day, all queueing for a 10-minute handle: ~2.6M erlangs
    // at the peak hour.
    let text = format!(
        "{}[agents]\nhandle_minutes = 10\n",
        MINIMAL
            .replace("visits_per_day = 1000", "visits_per_day = 1e9")
            .replace("mean_minutes = 15", "mean_minutes = 0.001\nagent_share = 1")
            .replace("mean_minutes = 6", "mean_minutes = 0.001\nagent_share = 1")
    );
    let e = plan_err(&text);
    assert!(
        e.contains("agents") && e.contains("1000000") && e.contains("agents.handle_minutes"),
        "{e}"
    );
}

#[test]
fn a_profile_needing_more_than_a_million_slots_is_refused() {
    let e = plan_err(&MINIMAL.replace("visits_per_day = 1000", "visits_per_day = 1e10"));
    assert!(
        e.contains("session slots") && e.contains("volume.visits_per_day"),
        "{e}"
    );
}

#[test]
fn bad_csv_rows_are_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("hour,arrivals\n");
    for h in 0..30 {
        rows.push_str(&format!(
            "2026-01-01T{:02}:00,{}\n",
            h % 24,
            if h == 7 { -3 } else { 10 }
        ));
    }
    std::fs::write(dir.path().join("a.csv"), rows).unwrap();
    let profile = MINIMAL.replace("visits_per_day = 1000", "arrivals_csv = \"a.csv\"");
    let e = Profile::parse(&profile, "p.toml", Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("a.csv line 9") && e.contains("-3"), "{e}");
    std::fs::write(dir.path().join("a.csv"), "hour,arrivals\nx,1\n").unwrap();
    let e = Profile::parse(&profile, "p.toml", Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("24 hourly rows"), "{e}");
}

#[test]
fn capacity_from_a_bench_result() {
    // As `continuum bench sfu --out` writes it (src/bench/sfu.rs).
    let json = r#"{
      "runs": [
        {"scenario": "20 1:1 visits (A+V simulcast each way)", "participants": 40,
         "egress_rtp_packets_per_sec": 8597.0, "worker_core_share": 0.194,
         "egress_rtp_packets_per_core_sec": 44301.0},
        {"scenario": "1 publisher → 40 subscribers", "participants": 41,
         "egress_rtp_packets_per_core_sec": 73910.0}
      ],
      "visits_per_core_estimate": 103.1,
      "method": "in-process str0m peers"
    }"#;
    let c = Capacity::parse(json, "sfu.json").unwrap();
    assert_eq!(c.sfu_egress_packets_per_core, 44301.0);
    assert_eq!(c.sfu_fanout_egress_packets_per_core, 73910.0);
    assert_eq!(c.sfu_visits_per_core, 103.1);
    assert!(c.source.contains("sfu.json"));
    // Other figures keep their defaults.
    assert_eq!(
        c.turn_cpu_us_per_packet,
        Capacity::default().turn_cpu_us_per_packet
    );
}

#[test]
fn capacity_files_of_our_own() {
    let c = Capacity::parse(
        "sfu_egress_packets_per_core = 60000\ntarget_utilization = 0.6\n",
        "cap.toml",
    )
    .unwrap();
    assert_eq!(c.sfu_egress_packets_per_core, 60000.0);
    assert_eq!(c.target_utilization, 0.6);
    let c = Capacity::parse(r#"{"turn_cpu_us_per_packet": 3.0}"#, "cap.json").unwrap();
    assert_eq!(c.turn_cpu_us_per_packet, 3.0);
    let e = Capacity::parse("sfu_egress_packets_per_core = -1\n", "cap.toml").unwrap_err();
    assert!(e.to_string().contains("sfu_egress_packets_per_core"), "{e}");
    let e = Capacity::parse("sfu_packets = 1\n", "cap.toml").unwrap_err();
    assert!(e.to_string().contains("sfu_packets"), "{e}");
    let e = Capacity::parse(r#"{"runs": [{"scenario": 3}]}"#, "b.json").unwrap_err();
    assert!(e.to_string().contains("bench"), "{e}");
}

#[test]
fn price_book_errors_are_named() {
    let e = PriceBook::parse("[cpaas]\nsms_per_segment = -0.01\n", "p.toml").unwrap_err();
    assert!(e.to_string().contains("cpaas.sms_per_segment"), "{e}");
    let e = PriceBook::parse(
        "[[cloud.egress_tiers]]\nup_to_gb = 10\nper_gb = 0.1\n",
        "p.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("cloud.egress_tiers"), "{e}");
    let e = PriceBook::parse("[cpaas]\nvideo = 1\n", "p.toml").unwrap_err();
    assert!(e.to_string().contains("video"), "{e}");
    // A partial book keeps the other defaults.
    let b = PriceBook::parse("[instance]\nper_hour = 1.0\n", "p.toml").unwrap();
    assert_eq!(b.instance.per_hour, 1.0);
    assert_eq!(b.cpaas, PriceBook::default().cpaas);
}

#[test]
fn errors_are_typed() {
    let p = parse(&MINIMAL.replace("visits_per_day = 1000", "visits_per_day = 1e10")).unwrap();
    let e = plan(&p, &Capacity::default(), &PriceBook::default()).unwrap_err();
    assert!(matches!(e, PlanError::Erlang(_)));
}
