//! Scenario tests: fake time (a base instant plus seconds), no sleeps.

use continuum_routing::*;
use std::time::{Duration, Instant};

struct H {
    e: Engine,
    base: Instant,
}

impl H {
    fn new() -> Self {
        Self::with(EngineConfig {
            wrap_up: Duration::ZERO,
            ..EngineConfig::default()
        })
    }
    fn with(cfg: EngineConfig) -> Self {
        Self {
            e: Engine::new(cfg),
            base: Instant::now(),
        }
    }
    fn at(&self, s: f64) -> Instant {
        self.base + Duration::from_secs_f64(s)
    }
    fn check(&self) {
        if let Err(e) = self.e.check_invariants() {
            panic!("invariant: {e}");
        }
    }
    fn queue(&mut self, cfg: QueueConfig) {
        self.e.upsert_queue(cfg, self.base).unwrap();
        self.check();
    }
    fn simple_queue(&mut self, id: &str, skills: &[&str]) {
        let mut q = QueueConfig::new(id);
        q.skills = skills.iter().map(|s| s.to_string()).collect();
        self.queue(q);
    }
    fn login(&mut self, id: &str, skills: &[&str], s: f64) {
        let mut a = AgentConfig::new(id);
        a.skills = skills.iter().map(|s| s.to_string()).collect();
        self.login_cfg(a, s);
    }
    fn login_cfg(&mut self, a: AgentConfig, s: f64) {
        let now = self.at(s);
        self.e.agent_login(a, now).unwrap();
        self.check();
    }
    fn task(&self, id: &str, queue: &str, channel: Channel, prio: i32, s: f64) -> Task {
        Task {
            id: id.into(),
            queue: queue.into(),
            channel,
            priority: prio,
            skills: vec![],
            conversation_id: format!("conv-{id}"),
            enqueued_at: self.at(s),
        }
    }
    fn enqueue(&mut self, id: &str, queue: &str, channel: Channel, prio: i32, s: f64) {
        let t = self.task(id, queue, channel, prio, s);
        self.enqueue_task(t, s);
    }
    fn enqueue_task(&mut self, t: Task, s: f64) {
        let now = self.at(s);
        self.e.enqueue(t, now).unwrap();
        self.check();
    }
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.e.poll_output()).collect()
    }
    /// The reservations made since the last drain: (reservation, task, agent).
    fn reserved(&mut self) -> Vec<(ReservationId, String, String)> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Reserved {
                    reservation,
                    task,
                    agent,
                    ..
                } => Some((reservation, task.to_string(), agent.to_string())),
                _ => None,
            })
            .collect()
    }
    fn one_reserved(&mut self) -> (ReservationId, String, String) {
        let r = self.reserved();
        assert_eq!(r.len(), 1, "expected one reservation, got {r:?}");
        r.into_iter().next().unwrap()
    }
    fn accept(&mut self, r: ReservationId, s: f64) -> Assignment {
        let now = self.at(s);
        let a = self.e.accept(r, now).unwrap();
        self.check();
        a
    }
    fn complete(&mut self, t: &str, s: f64) {
        let now = self.at(s);
        self.e.complete(t, now).unwrap();
        self.check();
    }
    fn tick(&mut self, s: f64) {
        let now = self.at(s);
        self.e.handle_timeout(now);
        self.check();
    }
    fn set(&mut self, a: &str, p: Presence, s: f64) {
        let now = self.at(s);
        self.e.set_agent_state(a, p, now).unwrap();
        self.check();
    }
    fn status(&self, t: &str) -> TaskStatus {
        self.e.task(t).expect("task").state
    }
}

fn reserved_to(a: &str) -> TaskStatus {
    TaskStatus::Reserved { agent: a.into() }
}

#[test]
fn priority_then_fifo() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.set("a", Presence::Away, 0.0);
    h.enqueue("t1", "q", Channel::Voice, 0, 1.0);
    h.enqueue("t2", "q", Channel::Voice, 0, 2.0);
    h.enqueue("t3", "q", Channel::Voice, 5, 3.0);
    // An older task enqueued later (a re-enqueue keeping its place).
    let t0 = h.task("t0", "q", Channel::Voice, 0, 0.5);
    h.enqueue_task(t0, 4.0);
    assert_eq!(h.e.task("t3").unwrap().position, Some(1));
    assert_eq!(h.e.task("t0").unwrap().position, Some(2));
    assert_eq!(h.e.task("t2").unwrap().position, Some(4));
    h.drain();
    h.set("a", Presence::Available, 5.0);
    let mut order = vec![];
    for i in 0..4 {
        let (r, t, _) = h.one_reserved();
        h.accept(r, 6.0 + i as f64);
        h.complete(&t, 6.5 + i as f64);
        order.push(t);
    }
    assert_eq!(order, ["t3", "t0", "t1", "t2"]);
}

#[test]
fn longest_idle_agent_is_chosen() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.login("b", &[], 1.0);
    h.login("c", &[], 2.0);
    h.enqueue("t1", "q", Channel::Voice, 0, 3.0);
    let (r1, _, agent) = h.one_reserved();
    assert_eq!(agent, "a");
    h.accept(r1, 3.5);
    h.enqueue("t2", "q", Channel::Voice, 0, 4.0);
    let (r2, _, agent) = h.one_reserved();
    assert_eq!(agent, "b");
    h.accept(r2, 4.5);
    // a is free again at 10 (no wrap-up): c (idle since 2) is longer idle.
    h.complete("t1", 10.0);
    h.enqueue("t3", "q", Channel::Voice, 0, 11.0);
    assert_eq!(h.one_reserved().2, "c");
    h.enqueue("t4", "q", Channel::Voice, 0, 12.0);
    assert_eq!(h.one_reserved().2, "a");
}

#[test]
fn skills_queue_and_task() {
    let mut h = H::new();
    h.simple_queue("es", &["es"]);
    h.login("en", &["en"], 0.0);
    h.enqueue("t1", "es", Channel::Chat, 0, 1.0);
    assert!(h.reserved().is_empty());
    h.login("es-nurse", &["es"], 2.0);
    assert_eq!(h.one_reserved().2, "es-nurse");
    // A task's own skill on top of the queue's.
    h.login("es-peds", &["es", "peds"], 3.0);
    let mut t = h.task("t2", "es", Channel::Chat, 0, 4.0);
    t.skills = vec!["peds".into()];
    h.enqueue_task(t, 4.0);
    assert_eq!(h.one_reserved().2, "es-peds");
}

#[test]
fn capacity_per_channel_and_exclusive_calls() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    for i in 0..4 {
        h.enqueue(&format!("c{i}"), "q", Channel::Chat, 0, 1.0 + i as f64);
    }
    // One pending reservation at a time; three chats at most.
    for i in 0..3 {
        let (r, t, _) = h.one_reserved();
        assert_eq!(t, format!("c{i}"));
        h.accept(r, 5.0);
    }
    assert!(h.reserved().is_empty());
    assert_eq!(h.status("c3"), TaskStatus::Waiting);
    // Still Available: voice and video room left.
    assert_eq!(h.e.agent_state("a"), Some(AgentState::Available));
    // A fourth chat comes when one ends.
    h.complete("c0", 6.0);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "c3");
    h.accept(r, 6.5);
    // A chatting agent may still be offered a call (voice capacity 1) ...
    h.complete("c1", 7.0);
    h.enqueue("v1", "q", Channel::Voice, 0, 7.5);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "v1");
    h.accept(r, 8.0);
    // ... and while on it gets nothing else, even with chat room left.
    h.enqueue("c4", "q", Channel::Chat, 0, 9.0);
    assert!(h.reserved().is_empty());
    assert_eq!(h.e.agent_state("a"), Some(AgentState::Busy));
    h.complete("v1", 10.0);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "c4");
    h.accept(r, 10.5);

    // An agent on a call gets no chat.
    h.login("b", &[], 11.0);
    h.set("a", Presence::Away, 11.0);
    h.enqueue("v2", "q", Channel::Voice, 0, 12.0);
    let (r, _, agent) = h.one_reserved();
    assert_eq!(agent, "b");
    h.accept(r, 12.0);
    h.enqueue("c5", "q", Channel::Chat, 0, 13.0);
    assert!(h.reserved().is_empty());
    assert_eq!(h.status("c5"), TaskStatus::Waiting);
}

#[test]
fn reservation_timeout_goes_to_next_agent_and_counts() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.login("b", &[], 1.0);
    h.enqueue("t", "q", Channel::Voice, 0, 2.0);
    let (r, _, agent) = h.one_reserved();
    assert_eq!(agent, "a");
    assert_eq!(h.e.poll_timeout(), Some(h.at(17.0)));
    h.tick(16.9);
    assert!(h.drain().is_empty());
    h.tick(17.0);
    let out = h.drain();
    assert!(out.contains(&Output::ReservationTimedOut {
        reservation: r,
        task: "t".into(),
        agent: "a".into()
    }));
    // Default: one miss puts the agent Away.
    assert!(out.iter().any(|o| matches!(o, Output::AgentStateChanged { agent, to: AgentState::Away, .. } if agent.as_str() == "a")));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Reserved { agent, .. } if agent.as_str() == "b"))
    );
    assert_eq!(h.status("t"), reserved_to("b"));
    let a = h.e.agent("a").unwrap();
    assert_eq!((a.state, a.missed), (AgentStatus::Away, 1));
}

#[test]
fn missed_reservation_without_away_is_not_reoffered() {
    let mut h = H::with(EngineConfig {
        missed_before_away: 0,
        wrap_up: Duration::ZERO,
        ..EngineConfig::default()
    });
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 1.0);
    h.one_reserved();
    h.tick(16.0);
    let out = h.drain();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::ReservationTimedOut { .. }))
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Reserved { .. })));
    assert_eq!(h.e.agent_state("a"), Some(AgentState::Available));
    assert_eq!(h.e.agent("a").unwrap().missed, 1);
    // Other work still reaches the agent ...
    h.enqueue("u", "q", Channel::Voice, 0, 17.0);
    assert_eq!(h.one_reserved().1, "u");
}

#[test]
fn reject_goes_to_next_agent_and_not_back() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 1.0);
    let (r, _, _) = h.one_reserved();
    h.e.reject(r, h.at(2.0)).unwrap();
    h.check();
    // The only agent refused it: it waits (overflow rules are the remedy).
    assert!(h.reserved().is_empty());
    assert_eq!(h.status("t"), TaskStatus::Waiting);
    assert_eq!(h.e.agent_state("a"), Some(AgentState::Available));
    h.login("b", &[], 3.0);
    assert_eq!(h.one_reserved().2, "b");
    h.set("b", Presence::Away, 4.0);
    assert!(h.reserved().is_empty());
    // Declaring themselves Available again lifts a's refusal.
    h.set("a", Presence::Available, 5.0);
    assert_eq!(h.one_reserved().2, "a");
    assert_eq!(
        h.e.reject(r, h.at(6.0)),
        Err(RoutingError::ReservationRejected(r))
    );
}

#[test]
fn agent_away_or_logout_mid_reservation_reoffers() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.login("b", &[], 1.0);
    h.login("c", &[], 2.0);
    h.set("b", Presence::Away, 2.0);
    h.set("c", Presence::Away, 2.0);
    h.enqueue("t", "q", Channel::Voice, 0, 3.0);
    h.enqueue("u", "q", Channel::Voice, 0, 4.0);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "t");
    h.set("b", Presence::Available, 5.0);
    assert_eq!(h.one_reserved().1, "u");
    h.set("a", Presence::Away, 6.0);
    let out = h.drain();
    assert!(out.contains(&Output::ReservationCancelled {
        reservation: r,
        task: "t".into(),
        agent: "a".into(),
        reason: CancelReason::AgentAway
    }));
    assert_eq!(h.status("t"), TaskStatus::Waiting);
    assert_eq!(h.e.task("t").unwrap().position, Some(1));
    assert_eq!(
        h.e.accept(r, h.at(6.5)),
        Err(RoutingError::ReservationCancelled(r))
    );
    // Offered again when someone is free; a going Away was no refusal.
    h.set("c", Presence::Available, 7.0);
    let (r, _, agent) = h.one_reserved();
    assert_eq!(agent, "c");
    h.e.agent_logout("c", h.at(8.0)).unwrap();
    h.check();
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::ReservationCancelled { reason: CancelReason::AgentLoggedOut, reservation, .. } if *reservation == r)));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::AgentStateChanged {
            to: AgentState::Offline,
            ..
        }
    )));
    h.set("a", Presence::Available, 9.0);
    assert_eq!(h.one_reserved().2, "a");
}

#[test]
fn logout_with_assigned_tasks_releases_them() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Chat, 0, 1.0);
    let (r, _, _) = h.one_reserved();
    h.accept(r, 2.0);
    h.e.agent_logout("a", h.at(3.0)).unwrap();
    h.check();
    assert!(h.drain().iter().any(|o| matches!(
        o,
        Output::TaskLeft {
            reason: TaskLeftReason::AgentLoggedOut,
            ..
        }
    )));
    assert!(h.e.task("t").is_none());
    assert_eq!(
        h.e.agent_logout("a", h.at(4.0)),
        Err(RoutingError::UnknownAgent("a".into()))
    );
}

#[test]
fn double_accept_and_late_accept() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.login("b", &[], 1.0);
    h.enqueue("t", "q", Channel::Voice, 0, 2.0);
    let (r, _, _) = h.one_reserved();
    let asg = h.accept(r, 3.0);
    assert_eq!((asg.task.as_str(), asg.agent.as_str()), ("t", "a"));
    assert_eq!(
        h.e.accept(r, h.at(3.0)),
        Err(RoutingError::ReservationAlreadyAccepted(r))
    );
    assert_eq!(
        h.e.reject(r, h.at(3.0)),
        Err(RoutingError::ReservationAlreadyAccepted(r))
    );
    let assigned = h
        .drain()
        .into_iter()
        .filter(|o| matches!(o, Output::Assigned { .. }))
        .count();
    assert_eq!(assigned, 1);

    // Late accept: a lets "u" time out; b gets it; a's accept fails.
    h.enqueue("u", "q", Channel::Voice, 0, 4.0);
    let (ru, _, agent) = h.one_reserved();
    assert_eq!(agent, "b");
    h.set("a", Presence::Away, 4.0);
    h.login("c", &[], 5.0);
    h.tick(19.0);
    assert_eq!(h.status("u"), reserved_to("c"));
    let rc = h.reservations_of("c");
    // b's accept at or after expiry is refused, even before handle_timeout.
    assert_eq!(
        h.e.accept(ru, h.at(20.0)),
        Err(RoutingError::ReservationExpired(ru))
    );
    h.drain();
    let asg = h.accept(rc, 21.0);
    assert_eq!(asg.agent.as_str(), "c");
    assert_eq!(h.status("u"), TaskStatus::Assigned { agent: "c".into() });
    assert_eq!(
        h.e.accept(ReservationId(999), h.at(22.0)),
        Err(RoutingError::UnknownReservation(ReservationId(999)))
    );
}

impl H {
    fn reservations_of(&self, agent: &str) -> ReservationId {
        self.e
            .reservations()
            .into_iter()
            .find(|r| r.agent.as_str() == agent)
            .expect("a reservation")
            .reservation
    }
}

#[test]
fn expiry_is_processed_before_an_accept_at_the_same_time() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.login("b", &[], 1.0);
    h.enqueue("t", "q", Channel::Voice, 0, 2.0);
    let (r, _, _) = h.one_reserved();
    // No handle_timeout: the accept itself runs the due expiry first.
    assert_eq!(
        h.e.accept(r, h.at(17.0)),
        Err(RoutingError::ReservationExpired(r))
    );
    h.check();
    assert_eq!(h.status("t"), reserved_to("b"));
}

#[test]
fn overflow_widens_skills() {
    let mut h = H::new();
    let mut q = QueueConfig::new("q");
    q.skills = vec!["triage".into(), "es".into()];
    q.overflow = vec![OverflowRule {
        after: Duration::from_secs(30),
        action: Overflow::WidenSkills {
            drop: vec!["es".into()],
        },
    }];
    h.queue(q);
    h.login("en-nurse", &["triage"], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 1.0);
    assert!(h.reserved().is_empty());
    assert_eq!(h.e.poll_timeout(), Some(h.at(31.0)));
    h.tick(30.0);
    assert!(h.reserved().is_empty());
    h.tick(31.0);
    let out = h.drain();
    assert!(matches!(
        &out[0],
        Output::Overflowed {
            rule: 0,
            action: Overflow::WidenSkills { .. },
            ..
        }
    ));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Reserved { agent, .. } if agent.as_str() == "en-nurse"))
    );
}

#[test]
fn overflow_moves_queue_keeping_age() {
    let mut h = H::new();
    h.simple_queue("q2", &["b"]);
    let mut q1 = QueueConfig::new("q1");
    q1.skills = vec!["a".into()];
    q1.overflow = vec![OverflowRule {
        after: Duration::from_secs(10),
        action: Overflow::Queue { to: "q2".into() },
    }];
    h.queue(q1);
    h.enqueue("old", "q1", Channel::Voice, 0, 0.0);
    h.enqueue("new", "q2", Channel::Voice, 0, 5.0);
    h.tick(10.0);
    let out = h.drain();
    assert!(
        matches!(&out[0], Output::Overflowed { queue, action: Overflow::Queue { .. }, .. } if queue.as_str() == "q1")
    );
    let v = h.e.task("old").unwrap();
    assert_eq!((v.queue.as_str(), v.position), ("q2", Some(1)));
    assert_eq!(v.waiting_for, Duration::from_secs(10));
    h.login("b-agent", &["b"], 20.0);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "old");
    h.accept(r, 21.0);
    // Service level counts from the original enqueue: 21 s > 20 s target.
    let s = h.e.snapshot(h.at(22.0));
    let q2 = s.queues.iter().find(|q| q.id.as_str() == "q2").unwrap();
    assert_eq!((q2.answered_15m, q2.answered_within_target_15m), (1, 0));
}

#[test]
fn overflow_to_voicemail_and_callback() {
    let mut h = H::new();
    let mut q = QueueConfig::new("q");
    q.skills = vec!["x".into()];
    q.overflow = vec![OverflowRule {
        after: Duration::from_secs(60),
        action: Overflow::Callback,
    }];
    h.queue(q);
    let mut vm = QueueConfig::new("vm");
    vm.overflow = vec![OverflowRule {
        after: Duration::from_secs(30),
        action: Overflow::Voicemail,
    }];
    vm.skills = vec!["x".into()];
    h.queue(vm);
    h.enqueue("t", "q", Channel::Voice, 0, 0.0);
    h.enqueue("v", "vm", Channel::Voice, 0, 0.0);
    h.tick(30.0);
    let out = h.drain();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        matches!(&out[1], Output::TaskLeft { task, reason: TaskLeftReason::Voicemail, .. } if task.as_str() == "v")
    );
    h.tick(60.0);
    let out = h.drain();
    assert!(matches!(
        &out[0],
        Output::Overflowed {
            action: Overflow::Callback,
            ..
        }
    ));
    assert!(
        matches!(&out[1], Output::TaskLeft { task, reason: TaskLeftReason::Callback, conversation_id, .. } if task.as_str() == "t" && &**conversation_id == "conv-t")
    );
    assert!(h.e.task("t").is_none());
    assert_eq!(h.e.poll_timeout(), None);
    let s = h.e.snapshot(h.at(61.0));
    assert!(
        s.queues
            .iter()
            .all(|q| q.overflowed_15m == 1 && q.service_level_15m == Some(0.0))
    );
}

#[test]
fn overflow_waits_while_reserved() {
    let mut h = H::new();
    let mut q = QueueConfig::new("q");
    q.overflow = vec![OverflowRule {
        after: Duration::from_secs(10),
        action: Overflow::Voicemail,
    }];
    h.queue(q);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 5.0);
    let (r, _, _) = h.one_reserved();
    h.tick(16.0);
    assert_eq!(h.status("t"), reserved_to("a"));
    // Rejected after the rule came due: it fires now.
    h.e.reject(r, h.at(18.0)).unwrap();
    h.check();
    assert!(h.drain().iter().any(|o| matches!(
        o,
        Output::TaskLeft {
            reason: TaskLeftReason::Voicemail,
            ..
        }
    )));
}

#[test]
fn cancel_while_reserved() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 1.0);
    h.enqueue("u", "q", Channel::Voice, 0, 2.0);
    let (r, _, _) = h.one_reserved();
    h.e.cancel("t", h.at(3.0)).unwrap();
    h.check();
    let out = h.drain();
    assert!(matches!(
        &out[0],
        Output::ReservationCancelled {
            reason: CancelReason::TaskCancelled,
            ..
        }
    ));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::TaskLeft {
            reason: TaskLeftReason::Abandoned,
            ..
        }
    )));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Reserved { task, .. } if task.as_str() == "u"))
    );
    assert_eq!(
        h.e.accept(r, h.at(4.0)),
        Err(RoutingError::ReservationCancelled(r))
    );
    assert_eq!(
        h.e.cancel("t", h.at(4.0)),
        Err(RoutingError::UnknownTask("t".into()))
    );
    let s = h.e.snapshot(h.at(5.0));
    assert_eq!(s.queues[0].abandoned_15m, 1);
}

#[test]
fn wrap_up_returns_agent_to_available() {
    let mut h = H::with(EngineConfig::default());
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 1.0);
    let (r, _, _) = h.one_reserved();
    h.accept(r, 2.0);
    h.complete("t", 10.0);
    assert_eq!(
        h.e.agent_state("a"),
        Some(AgentState::WrapUp { until: h.at(40.0) })
    );
    h.enqueue("u", "q", Channel::Voice, 0, 11.0);
    assert!(h.reserved().is_empty());
    assert_eq!(h.e.poll_timeout(), Some(h.at(40.0)));
    let v = h.e.agent("a").unwrap();
    assert_eq!(v.wrap_up_remaining, Some(Duration::from_secs(29)));
    h.tick(40.0);
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::AgentStateChanged {
            to: AgentState::Available,
            ..
        }
    )));
    let r = out
        .iter()
        .find_map(|o| match o {
            Output::Reserved {
                task, reservation, ..
            } if task.as_str() == "u" => Some(*reservation),
            _ => None,
        })
        .expect("u offered");
    h.accept(r, 40.5);
    // An agent's own wrap-up wins over the engine's; zero = none.
    let mut b = AgentConfig::new("b");
    b.wrap_up = Some(Duration::ZERO);
    h.login_cfg(b, 41.0);
    h.set("a", Presence::Away, 41.0);
    h.drain();
    h.enqueue("w", "q", Channel::Voice, 0, 42.0);
    let (r, _, agent) = h.one_reserved();
    assert_eq!(agent, "b");
    h.accept(r, 43.0);
    h.complete("w", 44.0);
    assert_eq!(h.e.agent_state("b"), Some(AgentState::Available));
}

#[test]
fn service_level_over_the_last_15_minutes() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    h.login("a", &[], 0.0);
    h.set("a", Presence::Away, 0.0);
    h.enqueue("fast", "q", Channel::Voice, 0, 0.0);
    h.enqueue("slow", "q", Channel::Voice, 0, 1.0);
    h.enqueue("gone", "q", Channel::Voice, 0, 2.0);
    h.e.cancel("gone", h.at(5.0)).unwrap();
    h.set("a", Presence::Available, 10.0);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "fast");
    h.accept(r, 10.0);
    h.complete("fast", 20.0);
    let (r, t, _) = h.one_reserved();
    assert_eq!(t, "slow");
    h.accept(r, 30.0);
    let s = h.e.snapshot(h.at(31.0));
    let q = &s.queues[0];
    assert_eq!(
        (
            q.answered_15m,
            q.answered_within_target_15m,
            q.abandoned_15m
        ),
        (2, 1, 1)
    );
    let sl = q.service_level_15m.unwrap();
    assert!((sl - 1.0 / 3.0).abs() < 1e-9, "{sl}");
    assert_eq!(q.assigned, 1);
    assert_eq!(s.agents_by_state.busy, 1);
    // Out of the window after 15 minutes.
    let s = h.e.snapshot(h.at(31.0 + 15.0 * 60.0));
    assert_eq!(s.queues[0].service_level_15m, None);
    let json = serde_json::to_value(h.e.snapshot(h.at(32.0))).unwrap();
    assert_eq!(json["queues"][0]["id"], "q");
    assert_eq!(json["agents"][0]["state"], "busy");
}

#[test]
fn snapshot_counts_waiting_and_longest_wait() {
    let mut h = H::new();
    h.simple_queue("q", &["x"]);
    h.enqueue("t1", "q", Channel::Sms, 0, 0.0);
    h.enqueue("t2", "q", Channel::Sms, 9, 5.0);
    let s = h.e.snapshot(h.at(12.0));
    assert_eq!(s.queues[0].waiting, 2);
    assert_eq!(s.queues[0].longest_wait, Duration::from_secs(12));
    let v = serde_json::to_value(h.e.task("t1").unwrap()).unwrap();
    assert_eq!(v["state"], "waiting");
    assert_eq!(v["position"], 2);
}

#[test]
fn errors_are_named() {
    let mut h = H::new();
    h.simple_queue("q", &[]);
    let now = h.at(1.0);
    let t = h.task("t", "nope", Channel::Chat, 0, 0.0);
    assert_eq!(
        h.e.enqueue(t, now),
        Err(RoutingError::UnknownQueue("nope".into()))
    );
    h.enqueue("t", "q", Channel::Chat, 0, 1.0);
    let t = h.task("t", "q", Channel::Chat, 0, 0.0);
    assert_eq!(
        h.e.enqueue(t, now),
        Err(RoutingError::DuplicateTask("t".into()))
    );
    assert_eq!(
        h.e.complete("t", now),
        Err(RoutingError::TaskNotAssigned("t".into()))
    );
    assert_eq!(
        h.e.remove_queue("q"),
        Err(RoutingError::QueueNotEmpty("q".into()))
    );
    h.login("a", &[], 1.0);
    assert_eq!(
        h.e.agent_login(AgentConfig::new("a"), now),
        Err(RoutingError::AgentAlreadyLoggedIn("a".into()))
    );
    let mut bad = QueueConfig::new("loop");
    bad.overflow = vec![OverflowRule {
        after: Duration::from_secs(1),
        action: Overflow::Queue { to: "loop".into() },
    }];
    assert!(matches!(
        h.e.upsert_queue(bad, now),
        Err(RoutingError::InvalidQueue { .. })
    ));
    h.simple_queue("empty", &[]);
    h.e.remove_queue("empty").unwrap();
    h.check();
}

#[test]
fn transfer_moves_and_keeps_age() {
    let mut h = H::new();
    h.simple_queue("front", &[]);
    h.simple_queue("billing", &["billing"]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "front", Channel::Chat, 0, 1.0);
    let (r, _, _) = h.one_reserved();
    h.accept(r, 2.0);
    h.e.transfer("t", "billing", h.at(3.0)).unwrap();
    h.check();
    assert_eq!(h.status("t"), TaskStatus::Waiting);
    h.login("b", &["billing"], 4.0);
    let (r, t, agent) = h.one_reserved();
    assert_eq!((t.as_str(), agent.as_str()), ("t", "b"));
    h.accept(r, 5.0);
    // Answered once for the service level.
    let s = h.e.snapshot(h.at(6.0));
    assert_eq!(s.queues.iter().map(|q| q.answered_15m).sum::<usize>(), 1);
}

#[test]
fn queue_change_refiles_waiting_tasks() {
    let mut h = H::new();
    h.simple_queue("q", &["rare"]);
    h.login("a", &[], 0.0);
    h.enqueue("t", "q", Channel::Voice, 0, 1.0);
    assert!(h.reserved().is_empty());
    h.e.upsert_queue(QueueConfig::new("q"), h.at(2.0)).unwrap();
    h.check();
    assert_eq!(h.one_reserved().1, "t");
}

#[test]
fn config_deserializes_with_defaults() {
    let q: QueueConfig = serde_json::from_value(serde_json::json!({
        "id": "triage",
        "skills": ["triage"],
        "overflow": [
            {"after": 60, "action": "widen_skills", "drop": ["es"]},
            {"after": 120, "action": "queue", "to": "general"},
            {"after": 300, "action": "voicemail"}
        ]
    }))
    .unwrap();
    assert_eq!(q.reservation_timeout, Duration::from_secs(15));
    assert_eq!(q.service_level_target, Duration::from_secs(20));
    assert_eq!(
        q.overflow[1].action,
        Overflow::Queue {
            to: "general".into()
        }
    );
    let a: AgentConfig =
        serde_json::from_value(serde_json::json!({"id": "n1", "capacity": {"chat": 5}})).unwrap();
    assert_eq!((a.capacity.chat, a.capacity.voice), (5, 1));
    let e: EngineConfig = serde_json::from_value(serde_json::json!({"wrap_up": 0})).unwrap();
    assert_eq!(e.exclusive, vec![Channel::Voice, Channel::Video]);
    assert_eq!(serde_json::to_value(Channel::WhatsApp).unwrap(), "whatsapp");
}

#[test]
fn bench_runs_small() {
    let r = bench::bench(200, 50, 500);
    assert_eq!(r.decisions, 500);
    assert_eq!(r.reserved, 500);
    assert_eq!(r.waiting_at_end, 200);
}
