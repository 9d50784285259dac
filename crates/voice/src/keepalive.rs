//! OPTIONS keepalive to outbound trunks: which addresses to probe, when,
//! and what their answers (or their silence) say. Pure state fed time and
//! probe results; the [`Gateway`](crate::Gateway) sends the probes as
//! ordinary non-INVITE client transactions of its SIP endpoint.
//!
//! Any final response proves a trunk alive (a carrier that does not do
//! OPTIONS still answers 405 or 501, and one that wants digest 401/407);
//! [`DOWN_AFTER`] probes in a row that time out (timer F) or fail in
//! transport make it down. Trunks at the same address and transport share
//! one probe: liveness belongs to the address.

use continuum_sip::TransportKind;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Failed probes in a row before a trunk is down.
pub const DOWN_AFTER: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrunkStatus {
    /// Not probed yet (or keepalive is off).
    Unknown,
    Up,
    Down,
}

impl TrunkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkStatus::Unknown => "unknown",
            TrunkStatus::Up => "up",
            TrunkStatus::Down => "down",
        }
    }
}

/// A trunk to keep an eye on: the owner's id for it, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkProbe {
    pub trunk: String,
    pub destination: SocketAddr,
    pub transport: TransportKind,
}

/// What a probe said about the trunks at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkCheck {
    pub trunks: Vec<String>,
    pub status: TrunkStatus,
    /// Whether the status differs from the one before.
    pub changed: bool,
    /// The final response (none: a timeout or a transport error).
    pub sip_status: Option<u16>,
    /// When the probe's result came.
    pub checked_at: Instant,
}

#[derive(Debug)]
struct Target {
    trunks: BTreeSet<String>,
    status: TrunkStatus,
    failures: u32,
    next_probe: Instant,
    last: Option<(Instant, Option<u16>)>,
}

#[derive(Debug)]
pub struct Keepalive {
    interval: Duration,
    targets: HashMap<(SocketAddr, TransportKind), Target>,
}

impl Keepalive {
    /// Probes every `interval` (a new probe goes out on time even while an
    /// earlier one waits for timer F).
    pub fn new(interval: Duration) -> Self {
        Keepalive {
            interval: interval.max(Duration::from_millis(100)),
            targets: HashMap::new(),
        }
    }

    /// The trunks to probe now (the whole set: trunks left out are
    /// forgotten). A new address is probed at once; a trunk joining an
    /// address already probed learns its status (returned).
    pub fn set(&mut self, now: Instant, probes: &[TrunkProbe]) -> Vec<TrunkCheck> {
        let mut wanted: HashMap<(SocketAddr, TransportKind), BTreeSet<String>> = HashMap::new();
        for p in probes {
            wanted
                .entry((p.destination, p.transport))
                .or_default()
                .insert(p.trunk.clone());
        }
        self.targets.retain(|k, _| wanted.contains_key(k));
        let mut reports = Vec::new();
        for (key, trunks) in wanted {
            let target = self.targets.entry(key).or_insert_with(|| Target {
                trunks: BTreeSet::new(),
                status: TrunkStatus::Unknown,
                failures: 0,
                next_probe: now,
                last: None,
            });
            let joined: Vec<String> = trunks.difference(&target.trunks).cloned().collect();
            if let (false, Some((at, sip_status))) = (joined.is_empty(), target.last) {
                reports.push(TrunkCheck {
                    trunks: joined,
                    status: target.status,
                    changed: true,
                    sip_status,
                    checked_at: at,
                });
            }
            target.trunks = trunks;
        }
        reports
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets.values().map(|t| t.next_probe).min()
    }

    /// The addresses to probe now; each is next due an interval later.
    pub fn due(&mut self, now: Instant) -> Vec<(SocketAddr, TransportKind)> {
        let mut due = Vec::new();
        for (key, t) in self.targets.iter_mut() {
            if t.next_probe <= now {
                due.push(*key);
                // Keep the cadence unless we are late by a whole interval.
                t.next_probe += self.interval;
                if t.next_probe <= now {
                    t.next_probe = now + self.interval;
                }
            }
        }
        due.sort_by_key(|(a, _)| *a);
        due
    }

    /// A probe's result: `status` is its final response, none for a
    /// timeout or a transport error. None when nobody probes that address.
    pub fn result(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        transport: TransportKind,
        status: Option<u16>,
    ) -> Option<TrunkCheck> {
        let t = self.targets.get_mut(&(peer, transport))?;
        let before = t.status;
        match status {
            Some(_) => {
                t.failures = 0;
                t.status = TrunkStatus::Up;
            }
            None => {
                t.failures = t.failures.saturating_add(1);
                if t.failures >= DOWN_AFTER {
                    t.status = TrunkStatus::Down;
                }
            }
        }
        t.last = Some((now, status));
        Some(TrunkCheck {
            trunks: t.trunks.iter().cloned().collect(),
            status: t.status,
            changed: t.status != before,
            sip_status: status,
            checked_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(trunk: &str, port: u16) -> TrunkProbe {
        TrunkProbe {
            trunk: trunk.into(),
            destination: SocketAddr::from(([192, 0, 2, 1], port)),
            transport: TransportKind::Udp,
        }
    }

    #[test]
    fn up_on_any_final_response_down_after_two_failures() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Duration::from_secs(30));
        let a = probe("a", 5060);
        assert!(k.set(t0, std::slice::from_ref(&a)).is_empty());
        assert_eq!(k.poll_timeout(), Some(t0), "a new trunk is probed at once");
        assert_eq!(k.due(t0), vec![(a.destination, a.transport)]);
        assert!(k.due(t0).is_empty(), "not twice");
        assert_eq!(k.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        for status in [200, 404, 405, 501, 401, 407] {
            let c = k
                .result(t0, a.destination, a.transport, Some(status))
                .unwrap();
            assert_eq!(c.status, TrunkStatus::Up, "{status}");
            assert_eq!(c.trunks, vec!["a".to_owned()]);
        }
        let t1 = t0 + Duration::from_secs(62);
        let c = k.result(t1, a.destination, a.transport, None).unwrap();
        assert_eq!((c.status, c.changed), (TrunkStatus::Up, false), "one miss");
        let c = k.result(t1, a.destination, a.transport, Some(200)).unwrap();
        assert_eq!(c.status, TrunkStatus::Up, "a success resets the count");
        k.result(t1, a.destination, a.transport, None).unwrap();
        let c = k.result(t1, a.destination, a.transport, None).unwrap();
        assert_eq!((c.status, c.changed), (TrunkStatus::Down, true));
        assert_eq!(c.checked_at, t1);
        let c = k.result(t1, a.destination, a.transport, Some(503)).unwrap();
        assert_eq!((c.status, c.changed), (TrunkStatus::Up, true));
        // Another address, or the same address over TCP, is nobody's.
        assert!(
            k.result(t1, probe("x", 5070).destination, a.transport, None)
                .is_none()
        );
        assert!(
            k.result(t1, a.destination, TransportKind::Tcp, None)
                .is_none()
        );
    }

    #[test]
    fn trunks_at_one_address_share_a_probe_and_the_set_replaces() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Duration::from_secs(30));
        k.set(t0, &[probe("a", 5060)]);
        k.due(t0);
        k.result(
            t0,
            probe("a", 5060).destination,
            TransportKind::Udp,
            Some(200),
        );
        // b joins a's address: it learns a's status at once, no new probe.
        let r = k.set(t0, &[probe("a", 5060), probe("b", 5060)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].trunks, vec!["b".to_owned()]);
        assert_eq!(r[0].status, TrunkStatus::Up);
        assert!(k.due(t0).is_empty());
        let c = k
            .result(
                t0,
                probe("a", 5060).destination,
                TransportKind::Udp,
                Some(200),
            )
            .unwrap();
        assert_eq!(c.trunks, vec!["a".to_owned(), "b".to_owned()]);
        // a trunk moved away: its old address is dropped, the new one probed.
        k.set(t0, &[probe("a", 5070)]);
        assert!(
            k.result(t0, probe("a", 5060).destination, TransportKind::Udp, None)
                .is_none()
        );
        assert_eq!(
            k.due(t0),
            vec![(probe("a", 5070).destination, TransportKind::Udp)]
        );
        k.set(t0, &[]);
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn the_cadence_holds_and_a_late_wake_does_not_burst() {
        let t0 = Instant::now();
        let i = Duration::from_secs(30);
        let mut k = Keepalive::new(i);
        k.set(t0, &[probe("a", 5060)]);
        k.due(t0);
        // Woken 1 s late: the next probe is still on the 30 s grid.
        assert_eq!(k.due(t0 + i + Duration::from_secs(1)).len(), 1);
        assert_eq!(k.poll_timeout(), Some(t0 + 2 * i));
        // Woken five intervals late: one probe, then a fresh interval.
        let late = t0 + 7 * i;
        assert_eq!(k.due(late).len(), 1);
        assert!(k.due(late).is_empty());
        assert_eq!(k.poll_timeout(), Some(late + i));
    }
}
