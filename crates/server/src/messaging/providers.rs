//! A configured provider (store row: spec in clear, credentials sealed) as
//! a live adapter of `continuum-messaging`.

use crate::config::MessagingConfig;
use continuum_core::Channel;
use continuum_messaging::meta::{MetaConfig, MetaWhatsAppProvider};
use continuum_messaging::smpp::SmppProvider;
use continuum_messaging::twilio::{TwilioConfig, TwilioProvider};
use continuum_messaging::{MessageChannel, Provider, ProviderId, Secret};
use continuum_smpp::{ClientConfig, Incoming};
use continuum_store::{ProviderKind, ProviderWithSecret};
use std::sync::Arc;
use tokio::sync::mpsc;

fn text(map: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<String> {
    map.get(field).and_then(|v| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn need(map: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<String, String> {
    text(map, field).ok_or_else(|| format!("{field} is missing"))
}

/// A built provider; SMPP binds also hand back what arrives on the bind.
pub(crate) struct Built {
    pub provider: Arc<dyn Provider>,
    pub smpp: Option<(Arc<SmppProvider>, mpsc::Receiver<Incoming>)>,
}

impl Built {
    fn http(provider: Arc<dyn Provider>) -> Built {
        Built {
            provider,
            smpp: None,
        }
    }
}

/// The HTTP client providers send with: unless private providers are
/// allowed (tests), names resolving to private or special-purpose addresses
/// are refused at connect time too (a base URL checked at creation could be
/// re-pointed by DNS later).
fn client_builder(
    config: &MessagingConfig,
    timeouts: &continuum_messaging::HttpTimeouts,
) -> reqwest::ClientBuilder {
    let b = continuum_messaging::http::client_builder(timeouts);
    if config.allow_private_providers {
        b
    } else {
        b.dns_resolver(Arc::new(crate::dispatch::PublicOnlyResolver))
    }
}

pub(crate) fn build(p: &ProviderWithSecret, config: &MessagingConfig) -> Result<Built, String> {
    let spec = &p.provider.spec;
    let id = ProviderId::new(p.provider.id.clone());
    let channels: Vec<MessageChannel> = p
        .provider
        .channels
        .iter()
        .filter_map(|c| match c {
            Channel::Sms => Some(MessageChannel::Sms),
            Channel::Whatsapp => Some(MessageChannel::Whatsapp),
            _ => None,
        })
        .collect();
    match p.provider.kind {
        ProviderKind::Twilio => {
            let mut cfg = TwilioConfig {
                id,
                account_sid: need(spec, "account_sid")?,
                auth_token: Secret::new(need(&p.secret, "auth_token")?),
                api_base: continuum_messaging::twilio::DEFAULT_API_BASE.to_owned(),
                messaging_service_sid: text(spec, "messaging_service_sid"),
                default_from: p.provider.senders.first().cloned(),
                channels,
                timeouts: Default::default(),
            };
            if let Some(base) = text(spec, "base_url") {
                cfg.api_base = base;
            }
            Ok(Built::http(Arc::new(
                TwilioProvider::with_client(&cfg, client_builder(config, &cfg.timeouts))
                    .map_err(|e| e.to_string())?,
            )))
        }
        ProviderKind::MetaWhatsapp => {
            let mut cfg = MetaConfig {
                id,
                access_token: Secret::new(need(&p.secret, "access_token")?),
                phone_number_id: need(spec, "phone_number_id")?,
                app_secret: Secret::new(need(&p.secret, "app_secret")?),
                verify_token: Secret::new(need(&p.secret, "verify_token")?),
                api_version: continuum_messaging::meta::DEFAULT_API_VERSION.to_owned(),
                api_base: continuum_messaging::meta::DEFAULT_API_BASE.to_owned(),
                timeouts: Default::default(),
            };
            if let Some(base) = text(spec, "base_url") {
                cfg.api_base = base;
            }
            if let Some(v) = text(spec, "api_version") {
                cfg.api_version = v;
            }
            Ok(Built::http(Arc::new(
                MetaWhatsAppProvider::with_client(&cfg, client_builder(config, &cfg.timeouts))
                    .map_err(|e| e.to_string())?,
            )))
        }
        ProviderKind::Smpp => {
            let port: u16 = need(spec, "port")?
                .parse()
                .map_err(|_| "port must be 1..=65535".to_owned())?;
            let mut cfg = ClientConfig::new(
                need(spec, "host")?,
                port,
                need(spec, "system_id")?,
                need(&p.secret, "password")?,
            );
            if let Some(t) = text(spec, "system_type") {
                cfg.session.system_type = t;
            }
            if let Some(w) = spec.get("window").and_then(|v| v.as_u64()) {
                cfg.session.window = w.clamp(1, 1000) as usize;
            }
            if let Some(r) = spec.get("max_per_second").and_then(|v| v.as_u64()) {
                cfg.session.max_submits_per_sec = r.clamp(1, 100_000) as u32;
            }
            let (provider, incoming) = SmppProvider::start(id, cfg).map_err(|e| e.to_string())?;
            let provider = Arc::new(provider);
            Ok(Built {
                provider: provider.clone(),
                smpp: Some((provider, incoming)),
            })
        }
    }
}
