//! The routing benchmark behind `continuum bench routing`: decisions per
//! second with many waiting tasks and many busy agents.
//!
//! Setup: four queues (skills `en`/`es` × `triage`/`billing`/`rx`, one
//! overflow rule each so every waiting task carries a timer), `agents`
//! agents with mixed skills (every agent qualifies for at least one queue),
//! all made busy on voice/video calls, then `tasks` tasks waiting on top
//! (10 % needing an extra skill, mixed priorities, voice and video).
//!
//! One decision = an agent finishes its call (`complete`, no wrap-up) →
//! the engine picks the best waiting task the agent qualifies for and
//! reserves it → the agent accepts. Each decision is timed alone (host
//! clock); after it, untimed, a fresh task is enqueued into the same queue
//! to keep the backlog steady.

use crate::{AgentConfig, Channel, Engine, EngineConfig, Output, QueueConfig, Task};
use crate::{Overflow, OverflowRule};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub tasks: usize,
    pub agents: usize,
    pub decisions: usize,
    /// Decisions per second of time spent inside the timed decisions.
    pub decisions_per_sec: f64,
    /// Decisions per second of the whole loop, re-enqueuing included.
    pub loop_decisions_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Decisions where the freed agent found a task (the rest found none
    /// it qualified for).
    pub reserved: usize,
    pub waiting_at_end: usize,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const QUEUES: [(&str, [&str; 2]); 4] = [
    ("triage", ["en", "triage"]),
    ("billing", ["en", "billing"]),
    ("rx", ["en", "rx"]),
    ("triage-es", ["es", "triage"]),
];

fn agent_skills(i: usize) -> Vec<String> {
    let mut s = vec!["en".to_string()];
    if i.is_multiple_of(4) {
        s.push("es".into());
    }
    if i.is_multiple_of(2) {
        s.push("triage".into());
    }
    if i.is_multiple_of(3) {
        s.push("billing".into());
    }
    if !i.is_multiple_of(3) && !i.is_multiple_of(2) {
        s.push("rx".into());
    }
    if i.is_multiple_of(5) {
        s.push("peds".into());
    }
    s
}

struct Maker {
    rng: Rng,
    n: u64,
}

impl Maker {
    fn task(&mut self, queue: usize, now: Instant) -> Task {
        self.n += 1;
        let extra = if self.rng.below(10) == 0 {
            vec!["peds".to_string()]
        } else {
            Vec::new()
        };
        Task {
            id: format!("t{}", self.n).into(),
            queue: QUEUES[queue].0.into(),
            channel: if self.rng.below(10) < 7 {
                Channel::Voice
            } else {
                Channel::Video
            },
            priority: self.rng.below(3) as i32,
            skills: extra,
            conversation_id: format!("c{}", self.n),
            enqueued_at: now,
        }
    }
}

/// Accepts every pending reservation the outputs announce; returns the
/// queue of the last one.
fn accept_all(
    engine: &mut Engine,
    now: Instant,
    assigned: &mut Vec<(String, usize)>,
) -> Option<usize> {
    let mut last = None;
    while let Some(o) = engine.poll_output() {
        if let Output::Reserved {
            reservation,
            task,
            queue,
            ..
        } = o
        {
            let q = QUEUES
                .iter()
                .position(|(n, _)| *n == &*queue)
                .expect("bench queue");
            engine.accept(reservation, now).expect("fresh reservation");
            assigned.push((task.to_string(), q));
            last = Some(q);
        }
    }
    last
}

/// Runs the benchmark: `tasks` waiting, `agents` busy, `decisions` timed.
pub fn bench(tasks: usize, agents: usize, decisions: usize) -> BenchReport {
    let base = Instant::now();
    let mut now = base;
    let mut engine = Engine::new(EngineConfig {
        wrap_up: Duration::ZERO,
        ..EngineConfig::default()
    });
    for (id, skills) in QUEUES {
        let mut q = QueueConfig::new(id);
        q.skills = skills.iter().map(|s| s.to_string()).collect();
        q.overflow = vec![OverflowRule {
            after: Duration::from_secs(3600),
            action: Overflow::Voicemail,
        }];
        engine.upsert_queue(q, now).expect("queue");
    }
    let mut mk = Maker {
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        n: 0,
    };
    let mut assigned: Vec<(String, usize)> = Vec::with_capacity(agents);
    for i in 0..agents {
        let mut a = AgentConfig::new(format!("a{i}"));
        a.skills = agent_skills(i);
        engine.agent_login(a, now).expect("login");
        // A task this agent qualifies for (no extra skill) makes it busy.
        let q = if i.is_multiple_of(2) {
            0
        } else if i.is_multiple_of(3) {
            1
        } else {
            2
        };
        let mut t = mk.task(q, now);
        t.skills.clear();
        engine.enqueue(t, now).expect("enqueue");
        accept_all(&mut engine, now, &mut assigned);
    }
    for _ in 0..tasks {
        let q = mk.rng.below(QUEUES.len());
        let t = mk.task(q, now);
        engine.enqueue(t, now).expect("enqueue");
        accept_all(&mut engine, now, &mut assigned);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut timed = Duration::ZERO;
    let mut reserved = 0;
    let started = Instant::now();
    for _ in 0..decisions {
        now += Duration::from_millis(1);
        if assigned.is_empty() {
            break;
        }
        let (task, _) = assigned.swap_remove(mk.rng.below(assigned.len()));
        let t0 = Instant::now();
        engine.complete(&task, now).expect("complete");
        let got = accept_all(&mut engine, now, &mut assigned);
        let dt = t0.elapsed();
        reserved += usize::from(got.is_some());
        timed += dt;
        hist.record((dt.as_nanos() as u64).max(1)).ok();
        // Keep the backlog: a fresh task in the queue just served (so no
        // queue drains and leaves its agents idle), else a random one.
        if engine.waiting() < tasks {
            let q = got.unwrap_or_else(|| mk.rng.below(QUEUES.len()));
            let t = mk.task(q, now);
            engine.enqueue(t, now).expect("enqueue");
            accept_all(&mut engine, now, &mut assigned);
        }
    }
    let wall = started.elapsed();
    let n = hist.len() as usize;
    BenchReport {
        tasks,
        agents,
        decisions: n,
        decisions_per_sec: n as f64 / timed.as_secs_f64().max(1e-9),
        loop_decisions_per_sec: n as f64 / wall.as_secs_f64().max(1e-9),
        p50: Duration::from_nanos(hist.value_at_quantile(0.5)),
        p99: Duration::from_nanos(hist.value_at_quantile(0.99)),
        max: Duration::from_nanos(hist.max()),
        reserved,
        waiting_at_end: engine.waiting(),
    }
}
