//! Per-provider health: Prometheus metrics for dashboards and an in-memory
//! rolling error rate the failover reads.
//!
//! Metrics (the `metrics` crate; the server's exporter publishes them):
//! - `continuum_messaging_provider_requests_total{provider,outcome}`, with
//!   outcome `sent`, `rejected` (the message's fault), `provider_rejected`,
//!   `retryable`, `unconfirmed`;
//! - `continuum_messaging_provider_latency_seconds{provider}`.
//!
//! The rolling window keeps the last [`WINDOW`] outcomes no older than
//! [`MAX_SAMPLE_AGE`]. Samples age out so a provider that was down and is
//! no longer tried (failover passes it over) is probed again after a while
//! instead of being avoided forever.

use crate::provider::{Provider, ProviderId, SendError, SendFuture, Sent};
use crate::types::{MessageChannel, OutboundMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Outcomes kept per provider.
pub const WINDOW: usize = 100;
/// Outcomes older than this are forgotten.
pub const MAX_SAMPLE_AGE: Duration = Duration::from_secs(5 * 60);
/// A provider is "down" only on this many failures in a row at least: one
/// timeout is not an outage.
pub const MIN_SAMPLES_FOR_DOWN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Sent,
    /// Refused for the message's sake (bad number, opted out, content): the
    /// provider is working.
    Rejected,
    ProviderRejected,
    Retryable,
    Unconfirmed,
}

impl Outcome {
    pub fn of(result: &Result<Sent, SendError>) -> Self {
        match result {
            Ok(_) => Outcome::Sent,
            Err(SendError::Retryable { .. }) => Outcome::Retryable,
            Err(SendError::Unconfirmed { .. }) => Outcome::Unconfirmed,
            Err(SendError::Permanent { cause, .. }) if cause.is_provider_specific() => {
                Outcome::ProviderRejected
            }
            Err(SendError::Permanent { .. }) => Outcome::Rejected,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Rejected => "rejected",
            Outcome::ProviderRejected => "provider_rejected",
            Outcome::Retryable => "retryable",
            Outcome::Unconfirmed => "unconfirmed",
        }
    }

    /// Whether it counts against the provider.
    pub fn is_error(self) -> bool {
        !matches!(self, Outcome::Sent | Outcome::Rejected)
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    error: bool,
    latency: Duration,
}

/// A provider's recent outcomes.
#[derive(Debug, Default)]
pub struct Health {
    samples: Mutex<VecDeque<Sample>>,
}

/// What [`Health::snapshot`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSnapshot {
    pub samples: usize,
    pub errors: usize,
    /// `None` with no recent samples.
    pub error_rate: Option<f64>,
    pub mean_latency: Option<Duration>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, at: Instant, outcome: Outcome, latency: Duration) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == WINDOW {
            s.pop_front();
        }
        s.push_back(Sample {
            at,
            error: outcome.is_error(),
            latency,
        });
    }

    pub fn snapshot(&self, now: Instant) -> HealthSnapshot {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let recent = s
            .iter()
            .filter(|x| now.saturating_duration_since(x.at) <= MAX_SAMPLE_AGE);
        let (mut n, mut errors, mut total) = (0usize, 0usize, Duration::ZERO);
        for x in recent {
            n += 1;
            errors += usize::from(x.error);
            total = total.saturating_add(x.latency);
        }
        HealthSnapshot {
            samples: n,
            errors,
            error_rate: (n > 0).then(|| errors as f64 / n as f64),
            mean_latency: u32::try_from(n).ok().filter(|&n| n > 0).map(|n| total / n),
        }
    }

    /// Every recent outcome (at least [`MIN_SAMPLES_FOR_DOWN`]) failed.
    pub fn is_down(&self, now: Instant) -> bool {
        let s = self.snapshot(now);
        s.samples >= MIN_SAMPLES_FOR_DOWN && s.errors == s.samples
    }
}

/// A provider wrapped to record its health and metrics on every send.
#[derive(Clone)]
pub struct Instrumented {
    inner: Arc<dyn Provider>,
    health: Arc<Health>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Provider>) -> Self {
        Instrumented {
            inner,
            health: Arc::new(Health::new()),
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    async fn send_inner(&self, msg: &OutboundMessage) -> Result<Sent, SendError> {
        let start = Instant::now();
        let result = self.inner.send(msg).await;
        let elapsed = start.elapsed();
        let outcome = Outcome::of(&result);
        self.health.record(Instant::now(), outcome, elapsed);
        let provider = self.inner.id().to_string();
        metrics::counter!(
            "continuum_messaging_provider_requests_total",
            "provider" => provider.clone(),
            "outcome" => outcome.as_str(),
        )
        .increment(1);
        metrics::histogram!(
            "continuum_messaging_provider_latency_seconds",
            "provider" => provider,
        )
        .record(elapsed.as_secs_f64());
        result
    }
}

impl Provider for Instrumented {
    fn id(&self) -> &ProviderId {
        self.inner.id()
    }

    fn channels(&self) -> &[MessageChannel] {
        self.inner.channels()
    }

    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.send_inner(msg))
    }
}

/// Why a set of providers or a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("provider id `{0}` is configured twice")]
    Duplicate(ProviderId),
    #[error("the {channel} chain names `{provider}`, which is not configured")]
    Unknown {
        channel: MessageChannel,
        provider: ProviderId,
    },
    #[error("the {channel} chain names `{provider}`, which does not carry {channel}")]
    WrongChannel {
        channel: MessageChannel,
        provider: ProviderId,
    },
}

/// A tenant's providers, instrumented, by id. Build it once per tenant
/// configuration and share it (it holds the HTTP clients and the health).
#[derive(Clone, Default)]
pub struct ProviderSet {
    by_id: HashMap<ProviderId, Instrumented>,
}

impl ProviderSet {
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Result<Self, ChainError> {
        let mut by_id = HashMap::new();
        for p in providers {
            let id = p.id().clone();
            if by_id.insert(id.clone(), Instrumented::new(p)).is_some() {
                return Err(ChainError::Duplicate(id));
            }
        }
        Ok(ProviderSet { by_id })
    }

    pub fn get(&self, id: &ProviderId) -> Option<&Instrumented> {
        self.by_id.get(id)
    }

    /// Checks a channel's chain: every id configured and carrying it.
    pub fn check_chain(
        &self,
        channel: MessageChannel,
        chain: &[ProviderId],
    ) -> Result<(), ChainError> {
        for id in chain {
            let p = self.by_id.get(id).ok_or_else(|| ChainError::Unknown {
                channel,
                provider: id.clone(),
            })?;
            if !p.channels().contains(&channel) {
                return Err(ChainError::WrongChannel {
                    channel,
                    provider: id.clone(),
                });
            }
        }
        Ok(())
    }

    /// The providers currently down, for [`crate::policy::Failure::unhealthy`].
    pub fn unhealthy(&self, now: Instant) -> Vec<ProviderId> {
        let mut v: Vec<ProviderId> = self
            .by_id
            .iter()
            .filter(|(_, p)| p.health.is_down(now))
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::PermanentCause;

    #[test]
    fn rolling_error_rate() {
        let h = Health::new();
        let t = Instant::now();
        let ms = Duration::from_millis(100);
        assert_eq!(h.snapshot(t).error_rate, None);
        for _ in 0..4 {
            h.record(t, Outcome::Retryable, ms);
        }
        assert!(!h.is_down(t), "four failures are not an outage yet");
        h.record(t, Outcome::Unconfirmed, ms);
        assert!(h.is_down(t));
        assert_eq!(h.snapshot(t).error_rate, Some(1.0));
        assert_eq!(h.snapshot(t).mean_latency, Some(ms));
        h.record(t, Outcome::Rejected, ms);
        assert!(
            !h.is_down(t),
            "a refused number is not the provider's fault"
        );
        // The window keeps the last WINDOW outcomes.
        for _ in 0..WINDOW {
            h.record(t, Outcome::ProviderRejected, ms);
        }
        let s = h.snapshot(t);
        assert_eq!((s.samples, s.errors), (WINDOW, WINDOW));
        // And forgets old ones, so a skipped provider gets probed again.
        assert!(!h.is_down(t + MAX_SAMPLE_AGE + Duration::from_secs(1)));
    }

    /// A recorder that keeps the names and labels of what is registered.
    #[derive(Default)]
    struct Keys(Mutex<Vec<String>>);

    fn render(key: &metrics::Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl metrics::Recorder for Keys {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            self.0.lock().unwrap().push(render(key));
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            self.0.lock().unwrap().push(render(key));
            metrics::Histogram::noop()
        }
    }

    struct Fake(ProviderId, Result<Sent, SendError>);

    impl Provider for Fake {
        fn id(&self) -> &ProviderId {
            &self.0
        }
        fn channels(&self) -> &[MessageChannel] {
            &[MessageChannel::Sms]
        }
        fn send<'a>(&'a self, _: &'a OutboundMessage) -> SendFuture<'a> {
            Box::pin(std::future::ready(self.1.clone()))
        }
    }

    #[test]
    fn metrics_names_and_labels() {
        let keys = Keys::default();
        let p = Instrumented::new(Arc::new(Fake(
            "acme-twilio".into(),
            Err(SendError::retryable("HTTP 503")),
        )));
        let msg = OutboundMessage {
            id: "m".into(),
            channel: MessageChannel::Sms,
            from: None,
            to: crate::types::Address::Phone("+14155550100".into()),
            body: "hi".into(),
            media_urls: vec![],
            template: None,
            form: crate::types::Form::Session,
            status_callback: None,
        };
        metrics::with_local_recorder(&keys, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert!(rt.block_on(p.send(&msg)).is_err());
        });
        let keys = keys.0.lock().unwrap().clone();
        assert_eq!(
            keys,
            [
                "continuum_messaging_provider_requests_total{provider=acme-twilio,outcome=retryable}",
                "continuum_messaging_provider_latency_seconds{provider=acme-twilio}",
            ]
        );
        assert_eq!(p.health().snapshot(Instant::now()).errors, 1);
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            Outcome::of(&Err(SendError::permanent(
                PermanentCause::Provider,
                None,
                "x"
            ))),
            Outcome::ProviderRejected
        );
        assert_eq!(
            Outcome::of(&Err(SendError::permanent(
                PermanentCause::OptedOut,
                None,
                "x"
            ))),
            Outcome::Rejected
        );
    }
}
