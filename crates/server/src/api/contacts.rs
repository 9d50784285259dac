//! Patients and the channel bindings that find them.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::{BindingKind, Permission, Principal};
use continuum_store::{Contact, ContactInput, ContactList};
use serde::Deserialize;
use utoipa::IntoParams;

/// Create a patient, optionally with phone, WhatsApp and app-user bindings.
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", operation_id = "createContact", request_body = ContactInput,
    responses((status = 201, body = Contact, description = "the patient"),
        (status = 403, body = ErrorBody, description = "needs the tenant-wide contact grant or the admin role"),
        (status = 409, body = ErrorBody, description = "a binding (phone, WhatsApp, app user id) belongs to another contact")),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(input): Json<ContactInput>,
) -> ApiResult<(StatusCode, Json<Contact>)> {
    s.require(&p, Permission::WriteContacts, "contacts").await?;
    s.require_all_contacts(&p, "contact.create").await?;
    let c = s
        .store
        .create_contact(p.tenant_id(), input, &p.audit_actor())
        .await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    /// Find the contact bound to this phone number (E.164, e.g. `+14155552671`).
    #[param(max_length = 32)]
    pub phone: Option<String>,
    /// Find the contact bound to this WhatsApp id (E.164).
    #[param(max_length = 32)]
    pub whatsapp: Option<String>,
    /// Find the contact bound to this app user id.
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    pub app_user_id: Option<String>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

/// List patients, or look one up by a binding (`?phone=+14155552671`).
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", operation_id = "listContacts", params(ContactQuery),
    responses((status = 200, body = ContactList, description = "a page of patients, or the one matching a binding (zero or one)"),
        (status = 403, body = ErrorBody, description = "listing needs the tenant-wide contact grant or the admin role"),
        (status = 422, body = ErrorBody, description = "limit out of range, cursor not one this endpoint handed out, a binding malformed, or several bindings at once")),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ContactQuery>,
) -> ApiResult<Json<ContactList>> {
    s.require(&p, Permission::ReadContacts, "contacts").await?;
    let lookup = [
        (BindingKind::Phone, q.phone),
        (BindingKind::Whatsapp, q.whatsapp),
        (BindingKind::AppUserId, q.app_user_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect::<Vec<_>>();
    if lookup.len() > 1 {
        return Err(ApiError::invalid("look up by one binding at a time"));
    }
    if let Some((kind, value)) = lookup.into_iter().next() {
        if q.cursor.is_some() || q.limit.is_some() {
            return Err(ApiError::invalid(
                "cursor and limit apply to listing, not to a lookup by binding",
            ));
        }
        // `?phone=+1415...` unescaped arrives as " 1415..." (form decoding turns
        // `+` into a space); that can only have meant the plus sign.
        let value = match value.strip_prefix(' ') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => format!("+{rest}"),
            _ => value,
        };
        // A lookup answers with a list of zero or one, so "no match" is not an error.
        return match s
            .store
            .find_contact_by_binding(p.tenant_id(), kind, &value, &p.audit_actor())
            .await
        {
            // Outside the token's reach it looks exactly like no match.
            Ok(c) if s.contact_within_reach(&p, &c.id).await? => Ok(Json(ContactList {
                contacts: vec![c],
                next_cursor: None,
            })),
            Ok(c) => {
                s.deny_contact(&p, &c.id).await;
                Ok(Json(ContactList {
                    contacts: vec![],
                    next_cursor: None,
                }))
            }
            Err(continuum_store::StoreError::NotFound(_)) => Ok(Json(ContactList {
                contacts: vec![],
                next_cursor: None,
            })),
            Err(e) => Err(e.into()),
        };
    }
    s.require_all_contacts(&p, "contact.list").await?;
    let limit = super::limit(q.limit, 50, 200)?;
    let cursor = q.cursor.map(|c| super::id_cursor(&c)).transpose()?;
    Ok(Json(
        s.store
            .list_contacts(p.tenant_id(), cursor, limit, &p.audit_actor())
            .await?,
    ))
}

/// Get one patient.
#[utoipa::path(get, path = "/v1/contacts/{id}", tag = "contacts", operation_id = "getContact", params(("id" = String, Path, description = "the contact's id")),
    responses((status = 200, body = Contact, description = "the patient")), security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Contact>> {
    s.require(&p, Permission::ReadContacts, &format!("contact/{id}"))
        .await?;
    s.require_contact(&p, &id).await?;
    Ok(Json(
        s.store
            .get_contact(p.tenant_id(), &id, &p.audit_actor())
            .await?,
    ))
}

/// Change a patient. Absent fields stay; an empty string removes a binding.
#[utoipa::path(patch, path = "/v1/contacts/{id}", tag = "contacts", operation_id = "updateContact", params(("id" = String, Path, description = "the contact's id")), request_body = ContactInput,
    responses((status = 200, body = Contact, description = "the patient as changed"),
        (status = 409, body = ErrorBody, description = "a binding belongs to another contact")),
    security(("bearer" = [])))]
pub async fn update(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(input): Json<ContactInput>,
) -> ApiResult<Json<Contact>> {
    let object = format!("contact/{id}");
    s.require(&p, Permission::WriteContacts, &object).await?;
    s.require_contact(&p, &id).await?;
    match s
        .store
        .update_contact(p.tenant_id(), &id, input, &p.audit_actor())
        .await
    {
        Ok(c) => Ok(Json(c)),
        Err(e) => Err(s.audit_failure(&p, "contact.update", &object, e).await),
    }
}

impl AppState {
    /// Whether `p` reaches this contact: the API key, admins and tenant-wide
    /// contact grants reach all; other tokens the patients of their granted
    /// conversations (and contacts granted by id).
    pub async fn contact_within_reach(&self, p: &Principal, contact_id: &str) -> ApiResult<bool> {
        let Principal::Token { grants, .. } = p else {
            return Ok(true);
        };
        if p.sees_all_contacts() || grants.contacts.iter().any(|c| c == contact_id) {
            return Ok(true);
        }
        let conversations =
            (!grants.allows_all_conversations()).then(|| grants.conversations.clone());
        Ok(self
            .store
            .contact_in_conversations(p.tenant_id(), contact_id, conversations)
            .await?)
    }

    async fn deny_contact(&self, p: &Principal, contact_id: &str) {
        self.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "contact.access",
            &format!("contact/{contact_id}"),
            "not in grants",
        )
        .await;
    }

    /// 404 (as if missing, and audited) for a contact out of `p`'s reach.
    pub async fn require_contact(&self, p: &Principal, contact_id: &str) -> ApiResult<()> {
        if self.contact_within_reach(p, contact_id).await? {
            return Ok(());
        }
        self.deny_contact(p, contact_id).await;
        Err(ApiError::not_found("contact"))
    }

    /// 403 (audited) unless `p` reaches every contact of the tenant.
    pub(crate) async fn require_all_contacts(&self, p: &Principal, action: &str) -> ApiResult<()> {
        if p.sees_all_contacts() {
            return Ok(());
        }
        self.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            action,
            "contacts",
            "needs the tenant-wide contact grant",
        )
        .await;
        Err(ApiError::forbidden(
            "listing, creating or looking up contacts across the tenant needs `grants.contacts: [\"*\"]` or the admin role; \
             this token reaches only the patients of its conversations",
        ))
    }
}
