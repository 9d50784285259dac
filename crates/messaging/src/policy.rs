//! What the outbox does after a failed send: retry the same provider later,
//! fail over to the next one in the tenant's chain, or dead-letter. A pure
//! function of the chain, the attempts so far, the error, the time and a
//! random source, so every path is testable without a clock or network.
//!
//! The rules:
//! - **Message errors** (invalid recipient, opted out, bad content)
//!   dead-letter at once: no provider will do better.
//! - **Window closed** (WhatsApp 131047 / Twilio 63016): our window record
//!   was wrong. If the message has a template, retry once at once (the
//!   worker re-chooses the form, now a template); else dead-letter.
//! - **Provider errors** (credentials, account, sender, region) take that
//!   provider out for this message and fail over at once.
//! - **Retryable errors** retry the same provider with exponential backoff
//!   and full jitter, honouring `Retry-After`, up to
//!   `attempts_per_provider` consecutive attempts; then fail over to the
//!   next provider in chain order, wrapping around (a second round after
//!   every provider failed temporarily), so a short outage of every
//!   provider is ridden out until `max_attempts` or `max_age`. A provider
//!   whose recent error rate is 100% is passed over while another is
//!   healthy. A `Retry-After` longer than `max_delay` fails over instead of
//!   waiting, when there is somewhere to go.
//! - **Unconfirmed** (the request went out, no answer): neither Twilio nor
//!   Meta deduplicates sends by a client key, so a resend may deliver the
//!   message twice, and a failover certainly would. By default the message
//!   is dead-lettered as `unconfirmed` for staff to check (a status
//!   callback may still arrive and show it was sent). A provider that does
//!   deduplicate by our message id can be configured with
//!   [`UnconfirmedAction::RetrySameProvider`]: retried on that provider
//!   only, never failed over.
//! - A message is never attempted more than `max_attempts` times nor
//!   scheduled past `enqueued_at + max_age` (a reminder is worthless after
//!   its appointment).

use crate::provider::{FailureClass, PermanentCause, ProviderId, SendError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnconfirmedAction {
    /// Dead-letter as `unconfirmed` (the default: no duplicate sends).
    #[default]
    DeadLetter,
    /// Retry on the same provider with the same message id: only for
    /// providers that deduplicate by it.
    RetrySameProvider,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// The first retry waits up to this long; each further one up to twice
    /// as long as the one before.
    pub base_delay: Duration,
    /// No backoff waits longer.
    pub max_delay: Duration,
    /// A provider's `Retry-After` is honoured up to this long.
    pub max_retry_after: Duration,
    /// Consecutive attempts on one provider before failing over.
    pub attempts_per_provider: u32,
    /// Attempts of one message across all providers.
    pub max_attempts: u32,
    /// No attempt is scheduled later than this after the message was queued.
    pub max_age: Duration,
    pub unconfirmed: UnconfirmedAction,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(10 * 60),
            max_retry_after: Duration::from_secs(60 * 60),
            attempts_per_provider: 3,
            max_attempts: 10,
            max_age: Duration::from_secs(24 * 60 * 60),
            unconfirmed: UnconfirmedAction::DeadLetter,
        }
    }
}

/// One earlier failed attempt, as the outbox stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub provider: ProviderId,
    pub failure: FailureClass,
}

/// Everything the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The tenant's chain for the message's channel, in order of preference.
    pub chain: &'a [ProviderId],
    /// Failed attempts before this one, oldest first.
    pub earlier: &'a [Attempt],
    /// The provider of the attempt that just failed.
    pub provider: &'a ProviderId,
    pub error: &'a SendError,
    /// Whether the message has a template (a closed window can be retried).
    pub has_template: bool,
    pub enqueued_at: SystemTime,
    pub now: SystemTime,
    /// Providers whose recent error rate is 100% ([`crate::health`]).
    pub unhealthy: &'a [ProviderId],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try the same provider again at `at`.
    RetryAt {
        provider: ProviderId,
        at: SystemTime,
    },
    /// Try another provider of the chain at `at` (now, unless it already
    /// failed this message temporarily).
    Failover {
        provider: ProviderId,
        at: SystemTime,
    },
    /// Give up: park the message for staff, with the reason.
    DeadLetter { reason: DeadLetterReason },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterReason {
    #[error("refused ({cause}{})", code.as_deref().map(|c| format!(", code {c}")).unwrap_or_default())]
    Rejected {
        cause: PermanentCause,
        code: Option<String>,
    },
    #[error("unconfirmed: the provider may have sent it; not resent to avoid a duplicate")]
    Unconfirmed,
    #[error("every provider in the chain refused it")]
    ChainExhausted,
    #[error("gave up after {attempts} attempts")]
    TooManyAttempts { attempts: u32 },
    #[error("expired: too old to be worth sending")]
    Expired,
}

impl DeadLetterReason {
    /// A short tag for storage and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::Rejected { .. } => "rejected",
            DeadLetterReason::Unconfirmed => "unconfirmed",
            DeadLetterReason::ChainExhausted => "chain_exhausted",
            DeadLetterReason::TooManyAttempts { .. } => "too_many_attempts",
            DeadLetterReason::Expired => "expired",
        }
    }
}

impl RetryPolicy {
    /// The provider for a message's first attempt: the first of the chain
    /// that is not known to be down, or the first if all are.
    pub fn first(&self, chain: &[ProviderId], unhealthy: &[ProviderId]) -> Option<ProviderId> {
        chain
            .iter()
            .find(|p| !unhealthy.contains(p))
            .or(chain.first())
            .cloned()
    }

    /// What to do after `f.provider` failed with `f.error`.
    pub fn next<R: Rng + ?Sized>(&self, f: &Failure<'_>, rng: &mut R) -> Next {
        let dead = |reason| Next::DeadLetter { reason };
        let made = f.earlier.len().saturating_add(1);
        let made_u32 = u32::try_from(made).unwrap_or(u32::MAX);
        let class = FailureClass::of(f.error);

        match f.error {
            SendError::Permanent {
                cause: PermanentCause::WindowClosed,
                code,
                ..
            } => {
                let retried = f
                    .earlier
                    .iter()
                    .any(|a| a.failure == FailureClass::WindowClosed);
                if !f.has_template || retried || !f.chain.contains(f.provider) {
                    return dead(DeadLetterReason::Rejected {
                        cause: PermanentCause::WindowClosed,
                        code: code.clone(),
                    });
                }
                return self.schedule(f, Duration::ZERO, |provider, at| Next::RetryAt {
                    provider,
                    at,
                });
            }
            SendError::Permanent { cause, code, .. } if !cause.is_provider_specific() => {
                return dead(DeadLetterReason::Rejected {
                    cause: *cause,
                    code: code.clone(),
                });
            }
            SendError::Unconfirmed { .. } => {
                if self.unconfirmed == UnconfirmedAction::DeadLetter
                    || !f.chain.contains(f.provider)
                {
                    return dead(DeadLetterReason::Unconfirmed);
                }
                let delay = self.backoff(made_u32, rng);
                return self.schedule(f, delay, |provider, at| Next::RetryAt { provider, at });
            }
            _ => {}
        }

        if made_u32 >= self.max_attempts {
            return dead(DeadLetterReason::TooManyAttempts { attempts: made_u32 });
        }
        let out = |p: &ProviderId| {
            (p == f.provider && class == FailureClass::ProviderRejected)
                || f.earlier
                    .iter()
                    .any(|a| &a.provider == p && a.failure == FailureClass::ProviderRejected)
        };
        let healthy = |p: &ProviderId| !f.unhealthy.contains(p);
        let candidates: Vec<&ProviderId> = f.chain.iter().filter(|p| !out(p)).collect();
        if candidates.is_empty() {
            return dead(DeadLetterReason::ChainExhausted);
        }

        let retry_after = match f.error {
            SendError::Retryable {
                retry_after: Some(d),
                ..
            } => (*d).min(self.max_retry_after),
            _ => Duration::ZERO,
        };
        let delay = self.backoff(made_u32, rng).max(retry_after);
        let consecutive = 1 + f
            .earlier
            .iter()
            .rev()
            .take_while(|a| &a.provider == f.provider)
            .count();
        let others: Vec<&ProviderId> = rotation(f.chain, f.provider)
            .filter(|p| *p != f.provider && !out(p))
            .collect();
        let healthy_other = others.iter().any(|p| healthy(p));
        let stay = class == FailureClass::Retryable
            && candidates.contains(&f.provider)
            && (others.is_empty()
                || (consecutive < self.attempts_per_provider as usize
                    && (healthy(f.provider) || !healthy_other)
                    && retry_after <= self.max_delay));
        if stay {
            return self.schedule(f, delay, |provider, at| Next::RetryAt { provider, at });
        }
        let Some(next) = others
            .iter()
            .find(|p| healthy(p))
            .or(others.first())
            .copied()
        else {
            // Only the failed provider remains, and it is out.
            return dead(DeadLetterReason::ChainExhausted);
        };
        // A provider that has not failed this message goes at once; coming
        // back round to one that has, back off first.
        let tried = f.earlier.iter().any(|a| &a.provider == next);
        let wait = if tried {
            self.backoff(made_u32, rng)
        } else {
            Duration::ZERO
        };
        let next = next.clone();
        self.schedule_on(f, next, wait, |provider, at| Next::Failover {
            provider,
            at,
        })
    }

    fn schedule(
        &self,
        f: &Failure<'_>,
        delay: Duration,
        make: impl FnOnce(ProviderId, SystemTime) -> Next,
    ) -> Next {
        self.schedule_on(f, f.provider.clone(), delay, make)
    }

    fn schedule_on(
        &self,
        f: &Failure<'_>,
        provider: ProviderId,
        delay: Duration,
        make: impl FnOnce(ProviderId, SystemTime) -> Next,
    ) -> Next {
        let made = u32::try_from(f.earlier.len().saturating_add(1)).unwrap_or(u32::MAX);
        if made >= self.max_attempts {
            return Next::DeadLetter {
                reason: DeadLetterReason::TooManyAttempts { attempts: made },
            };
        }
        let deadline = f.enqueued_at.checked_add(self.max_age);
        let at = f.now.checked_add(delay);
        match (at, deadline) {
            (Some(at), Some(deadline)) if at <= deadline => make(provider, at),
            _ => Next::DeadLetter {
                reason: DeadLetterReason::Expired,
            },
        }
    }

    /// Full jitter: uniform in `[0, min(max_delay, base_delay · 2^(n-1))]`
    /// for the n-th attempt, so retries of many messages after one outage
    /// spread out instead of arriving together.
    pub fn backoff<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.gen_range(0..=cap_ms))
    }
}

/// The chain in order starting after `current` and wrapping round (from
/// the start when `current` is no longer in the chain).
fn rotation<'a>(
    chain: &'a [ProviderId],
    current: &ProviderId,
) -> impl Iterator<Item = &'a ProviderId> {
    let start = chain.iter().position(|p| p == current).map_or(0, |i| i + 1);
    chain[start..].iter().chain(chain[..start].iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ids(names: &[&str]) -> Vec<ProviderId> {
        names.iter().map(|n| ProviderId::from(*n)).collect()
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn retryable() -> SendError {
        SendError::retryable("HTTP 500")
    }

    fn decide(
        policy: &RetryPolicy,
        chain: &[ProviderId],
        earlier: &[Attempt],
        provider: &str,
        error: &SendError,
        unhealthy: &[ProviderId],
    ) -> Next {
        let provider = ProviderId::from(provider);
        policy.next(
            &Failure {
                chain,
                earlier,
                provider: &provider,
                error,
                has_template: false,
                enqueued_at: t0(),
                now: t0(),
                unhealthy,
            },
            &mut StdRng::seed_from_u64(7),
        )
    }

    fn attempts(list: &[(&str, FailureClass)]) -> Vec<Attempt> {
        list.iter()
            .map(|(p, c)| Attempt {
                provider: (*p).into(),
                failure: *c,
            })
            .collect()
    }

    #[test]
    fn retries_then_fails_over_then_wraps() {
        let p = RetryPolicy::default();
        let chain = ids(&["twilio", "smpp"]);
        let r = FailureClass::Retryable;
        assert!(matches!(
            decide(&p, &chain, &[], "twilio", &retryable(), &[]),
            Next::RetryAt { provider, .. } if provider.as_str() == "twilio"
        ));
        // Third consecutive failure on twilio: fail over, at once.
        let earlier = attempts(&[("twilio", r), ("twilio", r)]);
        assert_eq!(
            decide(&p, &chain, &earlier, "twilio", &retryable(), &[]),
            Next::Failover {
                provider: "smpp".into(),
                at: t0()
            }
        );
        // smpp fails three times too: back to twilio, after a backoff.
        let earlier = attempts(&[
            ("twilio", r),
            ("twilio", r),
            ("twilio", r),
            ("smpp", r),
            ("smpp", r),
        ]);
        match decide(&p, &chain, &earlier, "smpp", &retryable(), &[]) {
            Next::Failover { provider, at } => {
                assert_eq!(provider.as_str(), "twilio");
                assert!(at >= t0());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permanent_errors() {
        let p = RetryPolicy::default();
        let chain = ids(&["twilio", "smpp"]);
        let invalid = SendError::permanent(PermanentCause::Recipient, Some("21211".into()), "x");
        assert_eq!(
            decide(&p, &chain, &[], "twilio", &invalid, &[]),
            Next::DeadLetter {
                reason: DeadLetterReason::Rejected {
                    cause: PermanentCause::Recipient,
                    code: Some("21211".into())
                }
            }
        );
        let auth = SendError::permanent(PermanentCause::Provider, Some("20003".into()), "x");
        assert_eq!(
            decide(&p, &chain, &[], "twilio", &auth, &[]),
            Next::Failover {
                provider: "smpp".into(),
                at: t0()
            }
        );
        // smpp then fails temporarily for good: never back to twilio.
        let earlier = attempts(&[
            ("twilio", FailureClass::ProviderRejected),
            ("smpp", FailureClass::Retryable),
            ("smpp", FailureClass::Retryable),
        ]);
        assert!(matches!(
            decide(&p, &chain, &earlier, "smpp", &retryable(), &[]),
            Next::RetryAt { provider, .. } if provider.as_str() == "smpp"
        ));
        let earlier = attempts(&[("twilio", FailureClass::ProviderRejected)]);
        assert_eq!(
            decide(&p, &chain, &earlier, "smpp", &auth, &[]),
            Next::DeadLetter {
                reason: DeadLetterReason::ChainExhausted
            }
        );
    }

    #[test]
    fn unconfirmed() {
        let chain = ids(&["twilio", "smpp"]);
        let e = SendError::unconfirmed("timeout");
        assert_eq!(
            decide(&RetryPolicy::default(), &chain, &[], "twilio", &e, &[]),
            Next::DeadLetter {
                reason: DeadLetterReason::Unconfirmed
            }
        );
        let p = RetryPolicy {
            unconfirmed: UnconfirmedAction::RetrySameProvider,
            ..RetryPolicy::default()
        };
        let earlier = attempts(&[
            ("twilio", FailureClass::Unconfirmed),
            ("twilio", FailureClass::Unconfirmed),
            ("twilio", FailureClass::Unconfirmed),
        ]);
        assert!(
            matches!(
                decide(&p, &chain, &earlier, "twilio", &e, &[]),
                Next::RetryAt { provider, .. } if provider.as_str() == "twilio"
            ),
            "never fails over an unconfirmed send"
        );
    }

    #[test]
    fn window_closed_retries_once_with_a_template() {
        let p = RetryPolicy::default();
        let chain = ids(&["meta"]);
        let e = SendError::permanent(PermanentCause::WindowClosed, Some("131047".into()), "x");
        let meta = ProviderId::from("meta");
        let mut f = Failure {
            chain: &chain,
            earlier: &[],
            provider: &meta,
            error: &e,
            has_template: true,
            enqueued_at: t0(),
            now: t0(),
            unhealthy: &[],
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.next(&f, &mut rng),
            Next::RetryAt {
                provider: meta.clone(),
                at: t0()
            }
        );
        let earlier = attempts(&[("meta", FailureClass::WindowClosed)]);
        f.earlier = &earlier;
        assert!(matches!(p.next(&f, &mut rng), Next::DeadLetter { .. }));
        f.earlier = &[];
        f.has_template = false;
        assert!(matches!(p.next(&f, &mut rng), Next::DeadLetter { .. }));
    }

    #[test]
    fn health_and_retry_after() {
        let p = RetryPolicy::default();
        let chain = ids(&["twilio", "smpp", "backup"]);
        // twilio is down: fail over after the first failure, skipping the
        // also-down smpp.
        let down = ids(&["twilio", "smpp"]);
        assert_eq!(
            decide(&p, &chain, &[], "twilio", &retryable(), &down),
            Next::Failover {
                provider: "backup".into(),
                at: t0()
            }
        );
        assert_eq!(p.first(&chain, &down), Some("backup".into()));
        assert_eq!(p.first(&chain, &chain), Some("twilio".into()));
        assert_eq!(p.first(&[], &[]), None);
        // Retry-After within max_delay is honoured on the same provider.
        let e = SendError::Retryable {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(120)),
        };
        match decide(&p, &chain, &[], "twilio", &e, &[]) {
            Next::RetryAt { provider, at } => {
                assert_eq!(provider.as_str(), "twilio");
                assert!(at >= t0() + Duration::from_secs(120));
            }
            other => panic!("{other:?}"),
        }
        // Longer than max_delay: go elsewhere now.
        let e = SendError::Retryable {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert!(matches!(
            decide(&p, &chain, &[], "twilio", &e, &[]),
            Next::Failover { provider, .. } if provider.as_str() == "smpp"
        ));
        // Alone in its chain, it waits (capped at max_retry_after).
        let solo = ids(&["twilio"]);
        let e = SendError::Retryable {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(86_400 * 30)),
        };
        match decide(&p, &solo, &[], "twilio", &e, &[]) {
            Next::RetryAt { at, .. } => {
                assert!(at <= t0() + p.max_retry_after.max(p.max_delay));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn age_and_attempt_caps() {
        let p = RetryPolicy::default();
        let chain = ids(&["twilio"]);
        let provider = ProviderId::from("twilio");
        let e = retryable();
        let f = Failure {
            chain: &chain,
            earlier: &[],
            provider: &provider,
            error: &e,
            has_template: false,
            enqueued_at: t0(),
            now: t0() + p.max_age,
            unhealthy: &[],
        };
        // Any positive delay lands past the deadline (seed gives > 0).
        let mut rng = StdRng::seed_from_u64(3);
        let n = p.next(&f, &mut rng);
        assert!(
            matches!(
                n,
                Next::DeadLetter {
                    reason: DeadLetterReason::Expired
                }
            ) || matches!(n, Next::RetryAt { at, .. } if at == t0() + p.max_age),
            "{n:?}"
        );
        let earlier = attempts(&[("twilio", FailureClass::Retryable); 9]);
        assert_eq!(
            decide(&p, &chain, &earlier, "twilio", &e, &[]),
            Next::DeadLetter {
                reason: DeadLetterReason::TooManyAttempts { attempts: 10 }
            }
        );
        assert_eq!(
            DeadLetterReason::TooManyAttempts { attempts: 10 }.to_string(),
            "gave up after 10 attempts"
        );
    }

    fn error_strategy() -> impl Strategy<Value = SendError> {
        prop_oneof![
            4 => (proptest::option::of(0u64..100_000)).prop_map(|ra| SendError::Retryable {
                reason: "x".into(),
                retry_after: ra.map(Duration::from_secs),
            }),
            1 => Just(SendError::unconfirmed("x")),
            1 => prop::sample::select(vec![
                PermanentCause::Recipient,
                PermanentCause::OptedOut,
                PermanentCause::WindowClosed,
                PermanentCause::Content,
                PermanentCause::Provider,
                PermanentCause::Provider,
            ]).prop_map(|cause| SendError::permanent(cause, None, "x")),
        ]
    }

    proptest! {
        /// Drives a message through a run of random failures until it is
        /// dead-lettered, checking the invariants at every step.
        #[test]
        fn invariants(
            chain_len in 1usize..5,
            errors in prop::collection::vec(error_strategy(), 1..40),
            unhealthy_mask in 0u8..16,
            seed in any::<u64>(),
            retry_same in any::<bool>(),
            has_template in any::<bool>(),
            max_attempts in 1u32..15,
            per_provider in 1u32..5,
        ) {
            let policy = RetryPolicy {
                max_attempts,
                attempts_per_provider: per_provider,
                unconfirmed: if retry_same { UnconfirmedAction::RetrySameProvider } else { UnconfirmedAction::DeadLetter },
                ..RetryPolicy::default()
            };
            let chain: Vec<ProviderId> = (0..chain_len).map(|i| ProviderId::new(format!("p{i}"))).collect();
            let unhealthy: Vec<ProviderId> = chain.iter().enumerate()
                .filter(|(i, _)| unhealthy_mask & (1 << i) != 0)
                .map(|(_, p)| p.clone()).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let enqueued_at = t0();
            let mut now = t0();
            let mut provider = policy.first(&chain, &unhealthy).unwrap();
            let mut earlier: Vec<Attempt> = Vec::new();
            let bound = policy.max_delay.max(policy.max_retry_after);
            let mut finished = false;
            for error in errors.iter().cycle().take(200) {
                prop_assert!(chain.contains(&provider), "provider outside the chain");
                let f = Failure {
                    chain: &chain, earlier: &earlier, provider: &provider, error,
                    has_template, enqueued_at, now, unhealthy: &unhealthy,
                };
                let next = policy.next(&f, &mut rng);
                earlier.push(Attempt { provider: provider.clone(), failure: FailureClass::of(error) });
                prop_assert!(earlier.len() as u32 <= policy.max_attempts, "more attempts than the cap");
                match next {
                    Next::RetryAt { provider: p, at } | Next::Failover { provider: p, at } => {
                        prop_assert!(chain.contains(&p));
                        prop_assert!(at >= now);
                        prop_assert!(at.duration_since(now).unwrap() <= bound, "delay beyond bounds");
                        prop_assert!(at <= enqueued_at + policy.max_age);
                        if matches!(error, SendError::Unconfirmed { .. }) {
                            prop_assert_eq!(&p, &provider, "an unconfirmed send moved provider");
                        }
                        if matches!(error, SendError::Permanent { cause, .. } if !cause.is_provider_specific() && *cause != PermanentCause::WindowClosed) {
                            prop_assert!(false, "a message error was retried");
                        }
                        now = at;
                        provider = p;
                    }
                    Next::DeadLetter { .. } => { finished = true; break; }
                }
            }
            prop_assert!(finished, "never dead-lettered within 200 steps");
        }

        #[test]
        fn backoff_is_bounded(attempt in 0u32..100, seed in any::<u64>()) {
            let p = RetryPolicy::default();
            let d = p.backoff(attempt, &mut StdRng::seed_from_u64(seed));
            prop_assert!(d <= p.max_delay);
            let cap = p.base_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(30));
            prop_assert!(d <= cap);
        }
    }
}
