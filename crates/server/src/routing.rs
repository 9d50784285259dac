//! Which conversation an inbound contact lands on, whatever its channel: the
//! contact by binding (a new contact if the address is unknown), then their
//! latest conversation (a closed one reopens when the inbound event is
//! appended), else a new one.

use continuum_core::BindingKind;
use continuum_store::{ContactInput, ConversationFilter, NewConversation, Store, StoreError};

/// The conversation for an inbound call or message from `address`
/// (normalised E.164 or WhatsApp number; `None` for a withheld caller id).
pub async fn conversation_for(
    store: &Store,
    tenant: &str,
    kind: BindingKind,
    address: Option<&str>,
    display_name: Option<String>,
    queue: Option<String>,
    actor: &str,
) -> Result<String, StoreError> {
    patient_for(store, tenant, kind, address, display_name, queue, actor)
        .await
        .map(|(_, conversation)| conversation)
}

/// Like [`conversation_for`], returning the contact's id too:
/// `(contact, conversation)`.
pub async fn patient_for(
    store: &Store,
    tenant: &str,
    kind: BindingKind,
    address: Option<&str>,
    display_name: Option<String>,
    queue: Option<String>,
    actor: &str,
) -> Result<(String, String), StoreError> {
    let mut found = None;
    if let Some(a) = address {
        // A WhatsApp sender is often known only by the phone number they
        // gave the clinic: fall back to the phone binding.
        let kinds: &[BindingKind] = match kind {
            BindingKind::Whatsapp => &[BindingKind::Whatsapp, BindingKind::Phone],
            _ => std::slice::from_ref(&kind),
        };
        for k in kinds {
            match store.find_contact_by_binding(tenant, *k, a, actor).await {
                Ok(c) => {
                    found = Some(c);
                    break;
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let contact = match found {
        Some(c) => c,
        None => {
            // Named after the address until someone knows better.
            let mut input = ContactInput {
                display_name: Some(display_name.unwrap_or_else(|| match address {
                    Some(a) => format!("Unknown {a}"),
                    None => "Unknown caller".into(),
                })),
                ..Default::default()
            };
            match kind {
                BindingKind::Whatsapp => input.whatsapp = address.map(str::to_owned),
                _ => input.phone = address.map(str::to_owned),
            }
            store.create_contact(tenant, input, actor).await?
        }
    };
    let latest = store
        .list_conversations(
            tenant,
            ConversationFilter {
                contact_id: Some(contact.id.clone()),
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
    if let Some(c) = latest.conversations.into_iter().next() {
        return Ok((contact.id, c.id));
    }
    let new = NewConversation {
        contact_id: contact.id.clone(),
        subject: None,
        queue,
        tags: Vec::new(),
    };
    Ok((
        contact.id,
        store.create_conversation(tenant, new, actor).await?.id,
    ))
}
