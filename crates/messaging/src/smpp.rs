//! SMS through an SMPP 3.4 carrier or aggregator (`continuum-smpp`) behind
//! the same [`Provider`] trait as the HTTP providers. The bind is long-lived:
//! handset messages and delivery receipts arrive on it, so [`SmppProvider::start`]
//! also hands back the stream of them for the caller to store.

use crate::provider::{PermanentCause, Provider, ProviderId, SendError, SendFuture, Sent};
use crate::types::{DeliveryStatus, MessageChannel, OutboundMessage};
use continuum_smpp::{
    Client, ClientConfig, Incoming, MessageState, SmppError, Status, SubmitRequest,
};
use tokio::sync::mpsc;

const CHANNELS: &[MessageChannel] = &[MessageChannel::Sms];

pub struct SmppProvider {
    id: ProviderId,
    client: Client,
}

impl SmppProvider {
    /// Starts the bind (reconnecting by itself) on the current runtime.
    pub fn start(
        id: ProviderId,
        config: ClientConfig,
    ) -> Result<(SmppProvider, mpsc::Receiver<Incoming>), continuum_smpp::ConfigError> {
        let (client, incoming) = Client::start(config)?;
        Ok((SmppProvider { id, client }, incoming))
    }

    /// Unbinds and stops (the provider was removed or changed).
    pub async fn shutdown(&self) {
        self.client.shutdown().await;
    }

    async fn submit(&self, msg: &OutboundMessage) -> Result<Sent, SendError> {
        let req = SubmitRequest {
            source: msg
                .from
                .as_ref()
                .map(|a| a.number().to_owned())
                .unwrap_or_default(),
            destination: msg.to.number().to_owned(),
            text: msg.body.clone(),
            registered_delivery: true,
        };
        match self.client.submit(req).await {
            // Receipts name each segment's id; the first stands for the message.
            Ok(out) => match out.message_ids.into_iter().next() {
                Some(id) => Ok(Sent {
                    provider_message_id: id,
                }),
                None => Err(SendError::unconfirmed(
                    "the SMSC accepted it without a message id",
                )),
            },
            Err(e) => Err(classify(&e)),
        }
    }
}

/// An SMPP failure in the outbox's terms. Refusals of the destination are
/// the message's fault; other refusals are this link's (bad bind, source,
/// or an SMSC rule), so the next provider may do better.
pub fn classify(e: &SmppError) -> SendError {
    let status_name = |s: &Status| {
        s.name()
            .map_or_else(|| format!("status 0x{:08X}", s.0), str::to_owned)
    };
    match e {
        SmppError::Temporary { status } => {
            SendError::retryable(format!("SMSC busy: {}", status_name(status)))
        }
        SmppError::NotSent { reason } => SendError::retryable(format!("not sent: {reason}")),
        SmppError::Unconfirmed => {
            SendError::unconfirmed("the SMPP link failed after the message went out")
        }
        SmppError::Invalid(err) => {
            SendError::permanent(PermanentCause::Content, None, err.to_string())
        }
        SmppError::Rejected { status } => {
            let cause = match *status {
                Status::INVDSTADR | Status::INVDSTTON | Status::INVDSTNPI => {
                    PermanentCause::Recipient
                }
                Status::INVMSGLEN => PermanentCause::Content,
                _ => PermanentCause::Provider,
            };
            SendError::permanent(
                cause,
                Some(format!("0x{:08X}", status.0)),
                status_name(status),
            )
        }
    }
}

/// A receipt's final state as a delivery status (`None` while still under way).
pub fn receipt_status(state: MessageState) -> Option<DeliveryStatus> {
    match state {
        MessageState::Delivered => Some(DeliveryStatus::Delivered),
        MessageState::Expired | MessageState::Deleted | MessageState::Undeliverable => {
            Some(DeliveryStatus::Undelivered)
        }
        MessageState::Rejected => Some(DeliveryStatus::Failed),
        MessageState::Accepted | MessageState::Enroute => Some(DeliveryStatus::Sent),
        MessageState::Unknown => None,
    }
}

impl Provider for SmppProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }
    fn channels(&self) -> &[MessageChannel] {
        CHANNELS
    }
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.submit(msg))
    }
}
