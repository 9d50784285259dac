//! What the relay workers share: allocation quotas (total, per user, per
//! tenant), RESERVATION-TOKENs and the 401-challenge rate limiter.
//!
//! Each worker owns its allocations outright (the kernel's SO_REUSEPORT hash
//! sends a client's datagrams to one worker, and a relay socket is read only by
//! the worker that opened it), so the relay hot path touches nothing shared.
//! Quotas, reservations and challenges are cross-worker by nature but rare
//! (one Allocate per call, one 401 per client), so one small mutex is enough.

use crate::auth::ChallengeLimiter;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

/// Limits the ledger enforces across all workers.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub total: usize,
    pub per_user: usize,
    pub per_tenant: usize,
}

pub struct Ledger {
    quotas: Quotas,
    state: Mutex<State>,
}

struct State {
    total: usize,
    per_user: HashMap<String, usize>,
    per_tenant: HashMap<String, usize>,
    /// RESERVATION-TOKEN → held relay address and until when.
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    limiter: ChallengeLimiter,
}

impl Ledger {
    pub fn new(quotas: Quotas, challenges_per_sec: u32) -> Self {
        Ledger {
            quotas,
            state: Mutex::new(State {
                total: 0,
                per_user: HashMap::new(),
                per_tenant: HashMap::new(),
                reservations: HashMap::new(),
                limiter: ChallengeLimiter::new(challenges_per_sec),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A worker that panicked mid-update leaves counts that are still sane.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more allocation for `user` / `tenant` if every quota has
    /// room; false (and nothing counted) when one is full.
    pub fn admit(&self, user: &str, tenant: &str) -> bool {
        let mut s = self.state();
        let q = self.quotas;
        if s.total >= q.total
            || s.per_user.get(user).copied().unwrap_or(0) >= q.per_user
            || s.per_tenant.get(tenant).copied().unwrap_or(0) >= q.per_tenant
        {
            return false;
        }
        s.total += 1;
        *s.per_user.entry(user.to_owned()).or_default() += 1;
        *s.per_tenant.entry(tenant.to_owned()).or_default() += 1;
        true
    }

    /// Undoes one [`Ledger::admit`].
    pub fn release(&self, user: &str, tenant: &str) {
        let mut s = self.state();
        s.total = s.total.saturating_sub(1);
        let State {
            per_user,
            per_tenant,
            ..
        } = &mut *s;
        for (map, k) in [(per_user, user), (per_tenant, tenant)] {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }

    /// Live allocations on all workers.
    pub fn allocations(&self) -> usize {
        self.state().total
    }

    /// Live allocations per tenant, on all workers.
    pub fn tenants(&self) -> Vec<(String, usize)> {
        self.state()
            .per_tenant
            .iter()
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }

    /// May we send `ip` one more 401/438 this second?
    pub fn allow_challenge(&self, ip: IpAddr, unix: u64) -> bool {
        self.state().limiter.allow(ip, unix)
    }

    /// Holds `addr` for whoever presents `token` before `until`.
    pub fn hold(&self, token: [u8; 8], addr: SocketAddr, until: Instant) {
        self.state().reservations.insert(token, (addr, until));
    }

    /// The held address for `token`, if still held (it is then no longer held).
    pub fn redeem(&self, token: &[u8], now: Instant) -> Option<SocketAddr> {
        let token: [u8; 8] = token.try_into().ok()?;
        match self.state().reservations.remove(&token) {
            Some((addr, until)) if until > now => Some(addr),
            _ => None,
        }
    }

    /// Reservations that ran out (no longer held; the caller closes them).
    pub fn expired_reservations(&self, now: Instant) -> Vec<SocketAddr> {
        let mut gone = Vec::new();
        self.state().reservations.retain(|_, (addr, until)| {
            let keep = *until > now;
            if !keep {
                gone.push(*addr);
            }
            keep
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quotas_count_across_callers_and_release() {
        let l = Ledger::new(
            Quotas {
                total: 3,
                per_user: 2,
                per_tenant: 3,
            },
            1,
        );
        assert!(l.admit("a", "t"));
        assert!(l.admit("a", "t"));
        assert!(!l.admit("a", "t"), "per-user quota");
        assert!(l.admit("b", "t"));
        assert!(!l.admit("c", "u"), "total quota");
        l.release("a", "t");
        assert!(l.admit("c", "u"));
        assert_eq!(l.allocations(), 3);
        let mut t = l.tenants();
        t.sort();
        assert_eq!(t, vec![("t".to_owned(), 2), ("u".to_owned(), 1)]);
    }

    #[test]
    fn reservations_redeem_once_and_expire() {
        let l = Ledger::new(
            Quotas {
                total: 1,
                per_user: 1,
                per_tenant: 1,
            },
            1,
        );
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.1:50001".parse().unwrap();
        l.hold([1; 8], a, now + Duration::from_secs(30));
        l.hold([2; 8], a, now + Duration::from_secs(1));
        assert_eq!(l.redeem(&[1; 8], now), Some(a));
        assert_eq!(l.redeem(&[1; 8], now), None, "a token works once");
        assert_eq!(l.redeem(&[9; 3], now), None, "malformed token");
        assert_eq!(
            l.expired_reservations(now + Duration::from_secs(2)),
            vec![a]
        );
        assert_eq!(l.redeem(&[2; 8], now), None);
    }
}
