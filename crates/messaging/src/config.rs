//! A tenant's messaging configuration as stored: its HTTP providers and one
//! ordered failover chain per channel. SMPP providers are configured by
//! `crates/smpp`; a server-side enum can wrap [`ProviderConfig`] with them.

use crate::http::ConfigError;
use crate::meta::{MetaConfig, MetaWhatsAppProvider};
use crate::provider::{Provider, ProviderId};
use crate::twilio::{TwilioConfig, TwilioProvider};
use crate::types::MessageChannel;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One HTTP provider, tagged by `kind` (`twilio`, `meta_whatsapp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    Twilio(TwilioConfig),
    MetaWhatsapp(MetaConfig),
}

impl ProviderConfig {
    pub fn id(&self) -> &ProviderId {
        match self {
            ProviderConfig::Twilio(c) => &c.id,
            ProviderConfig::MetaWhatsapp(c) => &c.id,
        }
    }

    /// Builds the provider (and its HTTP client). Once per configuration
    /// change, not per message.
    pub fn build(&self) -> Result<Arc<dyn Provider>, ConfigError> {
        Ok(match self {
            ProviderConfig::Twilio(c) => Arc::new(TwilioProvider::new(c)?),
            ProviderConfig::MetaWhatsapp(c) => Arc::new(MetaWhatsAppProvider::new(c)?),
        })
    }
}

/// Ordered failover chains, e.g. SMS: Twilio first, the SMPP aggregator
/// second. Check them with [`crate::ProviderSet::check_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Chains {
    pub sms: Vec<ProviderId>,
    pub whatsapp: Vec<ProviderId>,
}

impl Chains {
    pub fn for_channel(&self, channel: MessageChannel) -> &[ProviderId] {
        match channel {
            MessageChannel::Sms => &self.sms,
            MessageChannel::Whatsapp => &self.whatsapp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form() {
        let json = r#"[
            {"kind":"twilio","id":"twilio","account_sid":"AC1","auth_token":"tw-SECRET","default_from":"+14155550199"},
            {"kind":"meta_whatsapp","id":"meta","access_token":"at-SECRET","phone_number_id":"106540352242922","app_secret":"as-SECRET","verify_token":"vt-SECRET"}
        ]"#;
        let cfgs: Vec<ProviderConfig> = serde_json::from_str(json).unwrap();
        assert_eq!(cfgs[0].id().as_str(), "twilio");
        let ProviderConfig::Twilio(t) = &cfgs[0] else {
            panic!()
        };
        assert_eq!(t.api_base, crate::twilio::DEFAULT_API_BASE);
        assert_eq!(t.channels, vec![MessageChannel::Sms]);
        let ProviderConfig::MetaWhatsapp(m) = &cfgs[1] else {
            panic!()
        };
        assert_eq!(m.api_version, crate::meta::DEFAULT_API_VERSION);
        // Secrets never reach Debug output.
        assert!(!format!("{cfgs:?}").contains("SECRET"));
        for c in &cfgs {
            let p = c.build().unwrap();
            assert_eq!(p.id(), c.id());
        }
        let chains: Chains =
            serde_json::from_str(r#"{"sms":["twilio","smpp"],"whatsapp":["meta"]}"#).unwrap();
        assert_eq!(chains.for_channel(MessageChannel::Sms).len(), 2);
    }
}
