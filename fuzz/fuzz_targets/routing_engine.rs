//! The routing engine under any sequence of inputs: never a panic, and its
//! invariants (no task with two agents, capacity kept, no qualified agent
//! idle while work waits) hold after every step.
#![no_main]
use continuum_routing::{
    AgentConfig, Channel, Engine, EngineConfig, Output, Presence, QueueConfig, ReservationId, Task,
};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut e = Engine::new(EngineConfig::default());
    for q in ["a", "b"] {
        let mut c = QueueConfig::new(q);
        c.skills = if q == "a" { vec!["x".into()] } else { vec![] };
        let _ = e.upsert_queue(c, now);
    }
    let mut reservations: Vec<u64> = Vec::new();
    for (i, chunk) in data.chunks(3).take(400).enumerate() {
        let [op, x, y] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let agent = format!("g{}", x % 6);
        let task = format!("t{}", y % 12);
        let _ = match op % 9 {
            0 => {
                let mut a = AgentConfig::new(agent.as_str());
                if x % 2 == 0 {
                    a.skills = vec!["x".into()];
                }
                e.agent_login(a, now)
            }
            1 => e.agent_logout(&agent, now),
            2 => e.set_agent_state(&agent, if y % 2 == 0 { Presence::Available } else { Presence::Away }, now),
            3 => e.enqueue(
                Task {
                    id: task.as_str().into(),
                    queue: if y % 2 == 0 { "a".into() } else { "b".into() },
                    channel: Channel::ALL[usize::from(x) % 5],
                    priority: i32::from(x % 3),
                    skills: vec![],
                    conversation_id: task.clone(),
                    enqueued_at: now,
                },
                now,
            ),
            4 => e.cancel(&task, now),
            5 => match reservations.get(usize::from(x) % reservations.len().max(1)) {
                Some(r) => e.accept(ReservationId(*r), now).map(|_| ()),
                None => Ok(()),
            },
            6 => match reservations.get(usize::from(x) % reservations.len().max(1)) {
                Some(r) => e.reject(ReservationId(*r), now),
                None => Ok(()),
            },
            7 => e.complete(&task, now),
            _ => {
                now += Duration::from_millis(u64::from(x) * 500 + u64::from(y));
                e.handle_timeout(now);
                Ok(())
            }
        };
        while let Some(o) = e.poll_output() {
            if let Output::Reserved { reservation, .. } = o {
                reservations.push(reservation.0);
            }
        }
        if let Err(why) = e.check_invariants() {
            panic!("after step {i}: {why}");
        }
    }
});
