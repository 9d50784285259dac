//! `continuum bench routing`: routing decisions per second with many tasks
//! waiting and many agents (the engine alone, in this process).

use clap::Args;

#[derive(Args)]
pub struct RoutingArgs {
    /// Tasks kept waiting.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    #[arg(long, default_value_t = 1_000)]
    agents: usize,
    /// Decisions timed (agent frees up → reservation → accept).
    #[arg(long, default_value_t = 200_000)]
    decisions: usize,
}

pub fn run(a: RoutingArgs) -> anyhow::Result<()> {
    eprintln!(
        "routing: {} waiting tasks, {} agents, timing {} decisions…",
        a.tasks, a.agents, a.decisions
    );
    let r = continuum_routing::bench::bench(a.tasks, a.agents, a.decisions);
    println!(
        "routing decisions: {:.0}/s (whole loop incl. re-enqueue {:.0}/s); per decision p50 {:?}, p99 {:?}, max {:?}; {} waiting at the end",
        r.decisions_per_sec, r.loop_decisions_per_sec, r.p50, r.p99, r.max, r.waiting_at_end
    );
    println!("goal: ≥ 50,000/s with p99 < 1 ms at 10,000 tasks and 1,000 agents");
    Ok(())
}
