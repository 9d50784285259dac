//! Rate limits (GCRA, from the `governor` crate): refused requests per source
//! address, and requests per credential. A source over its refusal budget is
//! answered 429 before any database work, so garbage costs the server O(1).

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

pub struct Limits {
    refusals: Option<DefaultKeyedRateLimiter<IpAddr>>,
    tokens: Option<DefaultKeyedRateLimiter<String>>,
    api_keys: Option<DefaultKeyedRateLimiter<String>>,
    /// Sources told to wait, until when: checked before work that costs a
    /// database read (an unknown API key).
    throttled: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

/// How long to wait before retrying, in whole seconds (`Retry-After`).
pub type RetryAfter = u64;

impl Limits {
    /// `refusals_per_minute`: refused requests a source may cause per minute
    /// (and in a burst); `per_token` / `per_api_key`: requests per second of
    /// one access token or API key (bursts of twice that). 0 turns a limit off.
    pub fn new(refusals_per_minute: u32, per_token: u32, per_api_key: u32) -> Self {
        let per_second = |n: u32| {
            NonZeroU32::new(n).map(|n| {
                let burst = n.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"));
                RateLimiter::keyed(Quota::per_second(n).allow_burst(burst))
            })
        };
        Limits {
            refusals: NonZeroU32::new(refusals_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            tokens: per_second(per_token),
            api_keys: per_second(per_api_key),
            throttled: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Spends one refusal of `source`'s budget; `Err` when it has none left.
    pub fn refusal(&self, source: IpAddr) -> Result<(), RetryAfter> {
        let Some(l) = &self.refusals else {
            return Ok(());
        };
        let key = bucket(source);
        l.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let mut t = self.throttled.lock();
            if t.len() < 100_000 {
                t.insert(key, Instant::now() + wait);
            }
            seconds(wait)
        })
    }

    /// Whether `source` was recently told to wait (and for how much longer).
    pub fn throttled(&self, source: IpAddr) -> Option<RetryAfter> {
        let t = self.throttled.lock();
        let until = *t.get(&bucket(source))?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(seconds(left))
    }

    /// Spends one request of a credential's budget (`api_key`: an API key's
    /// id, else an access token's `jti`).
    pub fn credential(&self, api_key: bool, credential: &str) -> Result<(), RetryAfter> {
        let limiter = if api_key {
            &self.api_keys
        } else {
            &self.tokens
        };
        let Some(l) = limiter else {
            return Ok(());
        };
        // An owned key per check: the limiter's map is keyed by String.
        l.check_key(&credential.to_owned())
            .map_err(|not_until| seconds(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets sources and credentials whose buckets are full again, so the
    /// tables hold only those active in the last moments.
    pub fn sweep(&self) {
        if let Some(l) = &self.refusals {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in [&self.tokens, &self.api_keys].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        self.throttled.lock().retain(|_, until| *until > now);
    }
}

/// The unit a source is limited by: one IPv4 address, or one IPv6 /64 (what
/// a single subscriber usually holds, so rotating addresses inside it gains
/// nothing).
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn seconds(d: Duration) -> RetryAfter {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_runs_out_of_refusals_and_is_told_when_to_retry() {
        let l = Limits::new(3, 0, 0);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert!(l.refusal(ip).is_ok());
        }
        let wait = l.refusal(ip).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(l.throttled(ip).is_some());
        assert!(l.refusal("203.0.113.8".parse().unwrap()).is_ok());
        assert!(l.credential(false, "anything").is_ok(), "0 is off");
    }

    #[test]
    fn ipv6_sources_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert_eq!(bucket(mapped), "198.51.100.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn credentials_have_a_burst_then_wait() {
        let l = Limits::new(0, 5, 0);
        let ok = (0..20)
            .filter(|_| l.credential(false, "j1").is_ok())
            .count();
        assert!((10..=11).contains(&ok), "burst of twice the rate: {ok}");
        assert!(l.credential(false, "j2").is_ok());
        assert!(
            (0..100).all(|_| l.credential(true, "k1").is_ok()),
            "keys: off"
        );
    }
}
