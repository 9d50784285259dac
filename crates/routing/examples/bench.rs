//! `cargo run -p continuum-routing --release --example bench [tasks agents decisions]`
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let tasks = args.first().copied().unwrap_or(10_000);
    let agents = args.get(1).copied().unwrap_or(1_000);
    let decisions = args.get(2).copied().unwrap_or(200_000);
    let r = continuum_routing::bench::bench(tasks, agents, decisions);
    println!(
        "routing: {} waiting, {} agents, {} decisions ({} reserved): {:.0}/s (loop {:.0}/s), p50 {:?}, p99 {:?}, max {:?}; waiting at end {}",
        r.tasks,
        r.agents,
        r.decisions,
        r.reserved,
        r.decisions_per_sec,
        r.loop_decisions_per_sec,
        r.p50,
        r.p99,
        r.max,
        r.waiting_at_end
    );
}
