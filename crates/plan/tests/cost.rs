//! The cost model: break-even where the curves cross, and the cost moving
//! the right way with volume and prices.

use continuum_plan::capacity::Capacity;
use continuum_plan::cost::PriceBook;
use continuum_plan::profile::Profile;
use continuum_plan::{cost_at, plan};
use std::path::Path;

fn example() -> Profile {
    Profile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plan/profile.toml"))
        .unwrap()
}

#[test]
fn break_even_is_where_the_curves_cross() {
    let p = example();
    let (c, b) = (Capacity::default(), PriceBook::default());
    let plan = plan(&p, &c, &b).unwrap();
    let base = plan.demand.sessions_per_month;
    for (be, pick) in [
        (
            &plan.self_hosted_break_even,
            (|x: &continuum_plan::CostPoint| x.self_hosted) as fn(&_) -> f64,
        ),
        (&plan.hybrid_break_even, |x: &continuum_plan::CostPoint| {
            x.hybrid
        }),
    ] {
        let s = be.sessions_per_month.expect(&be.note);
        let k = s / base;
        let below = cost_at(&p, &c, &b, k * 0.97).unwrap();
        let above = cost_at(&p, &c, &b, k * 1.03).unwrap();
        assert!(pick(&below) > below.cpaas, "{}: below {below:?}", be.note);
        assert!(pick(&above) <= above.cpaas, "{}: above {above:?}", be.note);
    }
    // The curve covers the break-even points and today's volume.
    let last = plan.cost_curve.last().unwrap().sessions_per_month;
    assert!(last >= 2.0 * base * 0.999);
    assert!(last >= plan.self_hosted_break_even.sessions_per_month.unwrap());
}

#[test]
fn costs_grow_with_volume_and_cpaas_is_linear() {
    let p = example();
    let (c, b) = (Capacity::default(), PriceBook::default());
    let one = cost_at(&p, &c, &b, 1.0).unwrap();
    let two = cost_at(&p, &c, &b, 2.0).unwrap();
    assert!((two.cpaas / one.cpaas - 2.0).abs() < 1e-9);
    // Fixed staff and node steps: self-hosting grows less than linearly.
    assert!(two.self_hosted > one.self_hosted && two.self_hosted < 2.0 * one.self_hosted);
    assert!(two.hybrid > one.hybrid);
    // Zero volume: the CPaaS costs nothing, self-hosting its fixed part.
    let zero = cost_at(&p, &c, &b, 0.0).unwrap();
    assert_eq!(zero.cpaas, 0.0);
    assert!(zero.self_hosted > 0.0);
}

#[test]
fn cheaper_cpaas_moves_the_break_even_up() {
    let p = example();
    let c = Capacity::default();
    let base = plan(&p, &c, &PriceBook::default()).unwrap();
    let mut cheap = PriceBook::default();
    cheap.cpaas.video_per_participant_minute /= 2.0;
    let cheaper = plan(&p, &c, &cheap).unwrap();
    let (Some(a), Some(b)) = (
        base.self_hosted_break_even.sessions_per_month,
        cheaper.self_hosted_break_even.sessions_per_month,
    ) else {
        panic!("no break-even")
    };
    assert!(b > a, "{b} vs {a}");
    assert!(
        cheaper
            .price_sources
            .iter()
            .any(|(k, s)| k.starts_with("cpaas") && s.contains("your price book"))
    );
}

#[test]
fn slower_cores_need_more_sfu_nodes() {
    let p = example().scaled(10.0);
    let b = PriceBook::default();
    let fast = plan(&p, &Capacity::default(), &b).unwrap();
    let slow = Capacity {
        sfu_egress_packets_per_core: Capacity::default().sfu_egress_packets_per_core / 4.0,
        ..Capacity::default()
    };
    let slow = plan(&p, &slow, &b).unwrap();
    assert!(slow.media.sfu_nodes > fast.media.sfu_nodes);
    assert_eq!(slow.media.session_slots, fast.media.session_slots);
}
