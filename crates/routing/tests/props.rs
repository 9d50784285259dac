//! Property tests: random sequences of inputs over a few queues, skills and
//! agents; after every step the engine's invariants hold (no task with two
//! agents, no task both waiting and held, capacity respected, one pending
//! reservation per agent, work-conserving) and the outputs tell a
//! consistent story (never two assignments of one task, accepts succeed
//! exactly for pending unexpired reservations).

use continuum_routing::*;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        queue: u8,
        channel: u8,
        prio: u8,
        extra: Option<u8>,
        age: u8,
    },
    Cancel(u16),
    Login {
        agent: u8,
        skills: u8,
        cap: u8,
    },
    Logout(u8),
    Set {
        agent: u8,
        available: bool,
    },
    Accept(u16),
    AcceptStale(u16),
    Reject(u16),
    Complete(u16),
    Transfer(u16, u8),
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 0..5u8, 0..3u8, proptest::option::weighted(0.2, 0..4u8), 0..20u8)
            .prop_map(|(queue, channel, prio, extra, age)| Op::Enqueue { queue, channel, prio, extra, age }),
        1 => any::<u16>().prop_map(Op::Cancel),
        2 => (0..6u8, 0..16u8, 0..3u8).prop_map(|(agent, skills, cap)| Op::Login { agent, skills, cap }),
        1 => (0..6u8).prop_map(Op::Logout),
        2 => (0..6u8, any::<bool>()).prop_map(|(agent, available)| Op::Set { agent, available }),
        4 => any::<u16>().prop_map(Op::Accept),
        1 => any::<u16>().prop_map(Op::AcceptStale),
        2 => any::<u16>().prop_map(Op::Reject),
        3 => any::<u16>().prop_map(Op::Complete),
        1 => (any::<u16>(), 0..3u8).prop_map(|(t, q)| Op::Transfer(t, q)),
        3 => (0..30u8).prop_map(Op::Advance),
    ]
}

const SKILLS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const CHANNELS: [Channel; 5] = [
    Channel::Voice,
    Channel::Video,
    Channel::Chat,
    Channel::Sms,
    Channel::WhatsApp,
];

fn queues() -> Vec<QueueConfig> {
    let mut q0 = QueueConfig::new("q0");
    q0.skills = vec!["s0".into()];
    q0.wrap_up = Some(Duration::ZERO);
    let mut q1 = QueueConfig::new("q1");
    q1.skills = vec!["s1".into(), "s2".into()];
    q1.overflow = vec![
        OverflowRule {
            after: Duration::from_secs(10),
            action: Overflow::WidenSkills {
                drop: vec!["s2".into()],
            },
        },
        OverflowRule {
            after: Duration::from_secs(20),
            action: Overflow::Queue { to: "q2".into() },
        },
    ];
    let mut q2 = QueueConfig::new("q2");
    q2.reservation_timeout = Duration::from_secs(5);
    q2.overflow = vec![OverflowRule {
        after: Duration::from_secs(40),
        action: Overflow::Callback,
    }];
    vec![q0, q1, q2]
}

/// What the outputs have said so far.
#[derive(Default)]
struct Model {
    pending: HashMap<ReservationId, (TaskId, AgentId, Instant)>,
    assigned: HashMap<TaskId, AgentId>,
    issued: Vec<ReservationId>,
    /// (task, agent) pairs the agent rejected or missed: not to be offered
    /// again until the agent declares themselves Available or logs out.
    refused: HashSet<(TaskId, AgentId)>,
}

impl Model {
    fn absorb(&mut self, e: &mut Engine) -> Result<(), TestCaseError> {
        while let Some(o) = e.poll_output() {
            match o {
                Output::Reserved {
                    reservation,
                    task,
                    agent,
                    expires_at,
                    ..
                } => {
                    prop_assert!(
                        !self
                            .pending
                            .values()
                            .any(|(t, a, _)| *t == task || *a == agent),
                        "{task} or {agent} already has a pending reservation"
                    );
                    prop_assert!(
                        !self.assigned.contains_key(&task),
                        "{task} reserved while assigned"
                    );
                    prop_assert!(
                        !self.refused.contains(&(task.clone(), agent.clone())),
                        "{task} offered again to {agent}, who refused it"
                    );
                    self.pending.insert(reservation, (task, agent, expires_at));
                    self.issued.push(reservation);
                }
                Output::ReservationTimedOut {
                    reservation,
                    task,
                    agent,
                } => {
                    prop_assert!(self.pending.remove(&reservation).is_some());
                    self.refused.insert((task, agent));
                }
                Output::ReservationCancelled { reservation, .. } => {
                    prop_assert!(self.pending.remove(&reservation).is_some());
                }
                Output::Assigned {
                    reservation,
                    task,
                    agent,
                    ..
                } => {
                    prop_assert!(
                        self.pending.remove(&reservation).is_some(),
                        "assigned without a pending reservation"
                    );
                    prop_assert!(
                        self.assigned.insert(task.clone(), agent).is_none(),
                        "{task} assigned twice"
                    );
                }
                Output::TaskLeft { task, .. } => {
                    self.assigned.remove(&task);
                    prop_assert!(
                        !self.pending.values().any(|(t, _, _)| *t == task),
                        "{task} left with a pending reservation"
                    );
                }
                Output::Overflowed { .. } | Output::AgentStateChanged { .. } => {}
            }
        }
        Ok(())
    }
}

fn run(ops: Vec<Op>, missed_before_away: u32) -> Result<(), TestCaseError> {
    let base = Instant::now();
    let mut now = base + Duration::from_secs(100);
    let mut e = Engine::new(EngineConfig {
        missed_before_away,
        wrap_up: Duration::from_secs(5),
        ..EngineConfig::default()
    });
    for q in queues() {
        e.upsert_queue(q, now).unwrap();
    }
    let mut m = Model::default();
    let mut tasks: Vec<TaskId> = Vec::new();
    let mut n = 0;
    for op in ops {
        match op {
            Op::Enqueue {
                queue,
                channel,
                prio,
                extra,
                age,
            } => {
                n += 1;
                let id = TaskId::new(format!("t{n}"));
                tasks.push(id.clone());
                e.enqueue(
                    Task {
                        id,
                        queue: format!("q{queue}").into(),
                        channel: CHANNELS[channel as usize],
                        priority: prio as i32,
                        skills: extra
                            .map(|s| SKILLS[s as usize].to_string())
                            .into_iter()
                            .collect(),
                        conversation_id: format!("c{n}"),
                        enqueued_at: now - Duration::from_secs(age as u64),
                    },
                    now,
                )
                .unwrap();
            }
            Op::Cancel(i) if !tasks.is_empty() => {
                let t = &tasks[i as usize % tasks.len()];
                let known = e.task(t).is_some();
                prop_assert_eq!(e.cancel(t, now).is_ok(), known);
            }
            Op::Login { agent, skills, cap } => {
                let mut a = AgentConfig::new(format!("a{agent}"));
                a.skills = (0..4)
                    .filter(|b| skills & (1 << b) != 0)
                    .map(|b| SKILLS[b].to_string())
                    .collect();
                a.capacity = match cap {
                    0 => Capacity::default(),
                    1 => Capacity {
                        voice: 1,
                        video: 0,
                        chat: 1,
                        sms: 2,
                        whatsapp: 0,
                    },
                    _ => Capacity {
                        voice: 0,
                        video: 1,
                        chat: 4,
                        sms: 1,
                        whatsapp: 2,
                    },
                };
                let known = e.agent(&a.id).is_some();
                prop_assert_eq!(e.agent_login(a, now).is_err(), known);
            }
            Op::Logout(agent) => {
                let id = format!("a{agent}");
                let known = e.agent(&id).is_some();
                prop_assert_eq!(e.agent_logout(&id, now).is_ok(), known);
                m.refused.retain(|(_, a)| a.as_str() != id);
            }
            Op::Set { agent, available } => {
                let p = if available {
                    Presence::Available
                } else {
                    Presence::Away
                };
                let id = format!("a{agent}");
                let known = e.agent(&id).is_some();
                if available {
                    m.refused.retain(|(_, a)| a.as_str() != id);
                }
                prop_assert_eq!(e.set_agent_state(&id, p, now).is_ok(), known);
            }
            Op::Accept(i) => {
                let pending = e.reservations();
                if !pending.is_empty() {
                    let r = &pending[i as usize % pending.len()];
                    let a = e.accept(r.reservation, now).unwrap();
                    prop_assert_eq!(&a.task, &r.task);
                    prop_assert_eq!(&a.agent, &r.agent);
                }
            }
            Op::AcceptStale(i) if !m.issued.is_empty() => {
                let r = m.issued[i as usize % m.issued.len()];
                let was_pending = e.reservation(r);
                let res = e.accept(r, now);
                match was_pending {
                    Some(v) => prop_assert!(res.is_ok() || v.expires_at <= now),
                    None => prop_assert!(res.is_err()),
                }
            }
            Op::Reject(i) => {
                let pending = e.reservations();
                if !pending.is_empty() {
                    let r = &pending[i as usize % pending.len()];
                    e.reject(r.reservation, now).unwrap();
                    // A reject has no output: the host asked for it.
                    m.pending.remove(&r.reservation);
                    m.refused.insert((r.task.clone(), r.agent.clone()));
                }
            }
            Op::Complete(i) if !tasks.is_empty() => {
                let t = &tasks[i as usize % tasks.len()];
                let assigned = matches!(
                    e.task(t).map(|v| v.state),
                    Some(TaskStatus::Assigned { .. })
                );
                prop_assert_eq!(e.complete(t, now).is_ok(), assigned);
            }
            Op::Transfer(i, q) if !tasks.is_empty() => {
                let t = tasks[i as usize % tasks.len()].clone();
                let known = e.task(&t).is_some();
                prop_assert_eq!(e.transfer(&t, &format!("q{q}"), now).is_ok(), known);
                if known {
                    m.assigned.remove(&t);
                }
            }
            Op::Advance(s) => {
                now += Duration::from_secs(s as u64);
                if let Some(t) = e.poll_timeout() {
                    prop_assert!(t > now - Duration::from_secs(s as u64) || s == 0);
                }
                e.handle_timeout(now);
                prop_assert!(e.poll_timeout().is_none_or(|t| t > now));
            }
            _ => {}
        }
        m.absorb(&mut e)?;
        if let Err(err) = e.check_invariants() {
            return Err(TestCaseError::fail(err));
        }
        // The engine's view matches the outputs'.
        let mut pending: Vec<_> = e
            .reservations()
            .into_iter()
            .map(|r| r.reservation)
            .collect();
        pending.sort();
        let mut told: Vec<_> = m.pending.keys().copied().collect();
        told.sort();
        prop_assert_eq!(pending, told);
        for (t, a) in &m.assigned {
            prop_assert_eq!(
                e.task(t).map(|v| v.state),
                Some(TaskStatus::Assigned { agent: a.clone() })
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(ops in proptest::collection::vec(op(), 1..120), missed in 0..3u32) {
        run(ops, missed)?;
    }
}
