//! Who may do what. Pure checks over a [`Principal`]; the server resolves the
//! principal from an API key or a JWT and asks here before touching the store.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Patient,
    Clinician,
    Agent,
    Admin,
    /// Reads the audit log; sees no PHI.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Clinician => "clinician",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Clinician | Role::Agent | Role::Admin)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "patient" => Ok(Role::Patient),
            "clinician" => Ok(Role::Clinician),
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!(
                "unknown role `{other}`; expected patient, clinician, agent, admin or auditor"
            )),
        }
    }
}

/// Which conversations, rooms and contacts a token may touch. `"*"` means all
/// of the tenant's. A token reaches the contacts (patients) of the
/// conversations it is granted; reaching every contact of the tenant (listing,
/// creating, looking up by phone) takes `contacts: ["*"]` or the admin role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub conversations: Vec<String>,
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<String>,
}

impl Grants {
    pub fn all() -> Self {
        Grants {
            conversations: vec!["*".into()],
            rooms: vec!["*".into()],
            contacts: vec!["*".into()],
        }
    }
    pub fn allows_conversation(&self, id: &str) -> bool {
        self.conversations.iter().any(|g| g == "*" || g == id)
    }
    pub fn allows_all_conversations(&self) -> bool {
        self.conversations.iter().any(|g| g == "*")
    }
    pub fn allows_room(&self, id: &str) -> bool {
        self.rooms.iter().any(|g| g == "*" || g == id)
    }
    pub fn allows_all_contacts(&self) -> bool {
        self.contacts.iter().any(|g| g == "*")
    }
    /// Whether `self` grants nothing `parent` does not: a token may only hand
    /// on what it holds.
    pub fn within(&self, parent: &Grants) -> bool {
        fn covered(child: &[String], parent: &[String]) -> bool {
            parent.iter().any(|g| g == "*") || child.iter().all(|c| parent.contains(c))
        }
        covered(&self.conversations, &parent.conversations)
            && covered(&self.rooms, &parent.rooms)
            && covered(&self.contacts, &parent.contacts)
    }
}

/// Where an access token came from and when it dies: checked on every use
/// (REST, live streams, signaling), so revoking the token or the API key that
/// minted it ends it everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMeta {
    /// The token's unique id (`jti`), for `POST /v1/tokens/revoke`.
    pub jti: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The API key at the root of the minting chain; `None` for tokens the
    /// server minted itself (the loopback demo).
    pub key_id: Option<String>,
}

/// The authenticated caller of one request; always bound to exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant API key: the customer's backend, trusted with the whole tenant.
    ApiKey { tenant_id: String, key_id: String },
    /// A JWT access token minted through `POST /v1/tokens`.
    Token {
        tenant_id: String,
        identity: String,
        role: Role,
        grants: Grants,
        /// Where the participant is (e.g. `eu`): TURN nodes there first.
        region: Option<String>,
        /// The display name others see (tiles, roster, chat).
        name: Option<String>,
        token: TokenMeta,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ManageTenant,
    MintTokens,
    ReadContacts,
    WriteContacts,
    ManageStaff,
    ListConversations,
    ReadConversation,
    WriteConversation,
    ChangeConversationState,
    ReadTimeline,
    AppendEvent,
    ReadContext,
    ReadAudit,
    ManageWebhooks,
    /// Queues, agents' profiles and IVR flows (admin).
    ManageRouting,
}

impl Principal {
    pub fn tenant_id(&self) -> &str {
        match self {
            Principal::ApiKey { tenant_id, .. } | Principal::Token { tenant_id, .. } => tenant_id,
        }
    }

    /// How this principal appears in the audit log.
    pub fn audit_actor(&self) -> String {
        match self {
            Principal::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
            Principal::Token { identity, role, .. } => format!("{}:{identity}", role.as_str()),
        }
    }

    /// May this principal do `perm` at all (before looking at a specific object)?
    pub fn may(&self, perm: Permission) -> bool {
        use Permission::*;
        let role = match self {
            Principal::ApiKey { .. } => return true,
            Principal::Token { role, .. } => *role,
        };
        match role {
            Role::Admin => true,
            Role::Auditor => matches!(perm, ReadAudit),
            Role::Clinician | Role::Agent => !matches!(
                perm,
                ManageTenant
                    | MintTokens
                    | ReadAudit
                    | ManageWebhooks
                    | ManageStaff
                    | ManageRouting
            ),
            Role::Patient => matches!(perm, ReadConversation | ReadTimeline | AppendEvent),
        }
    }

    /// May this principal touch this particular conversation?
    pub fn may_access_conversation(&self, conversation_id: &str) -> bool {
        match self {
            Principal::ApiKey { .. } => true,
            Principal::Token {
                role: Role::Admin, ..
            } => true,
            Principal::Token { grants, .. } => grants.allows_conversation(conversation_id),
        }
    }

    /// May this principal reach every contact of the tenant (list, create,
    /// look up by binding)? Otherwise only those of its granted conversations.
    pub fn sees_all_contacts(&self) -> bool {
        match self {
            Principal::ApiKey { .. } => true,
            Principal::Token {
                role: Role::Admin, ..
            } => true,
            Principal::Token { grants, .. } => grants.allows_all_contacts(),
        }
    }

    /// Role order for minting: a token may mint only roles at or below its own.
    pub fn may_mint_role(&self, role: Role) -> bool {
        match self {
            Principal::ApiKey { .. } => true,
            Principal::Token { role: mine, .. } => *mine == Role::Admin || *mine == role,
        }
    }

    /// Whether list endpoints may show every conversation (otherwise only granted ones).
    pub fn sees_all_conversations(&self) -> bool {
        match self {
            Principal::ApiKey { .. } => true,
            Principal::Token {
                role: Role::Admin, ..
            } => true,
            Principal::Token { grants, .. } => grants.allows_all_conversations(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, convs: &[&str]) -> Principal {
        Principal::Token {
            tenant_id: "t".into(),
            identity: "u".into(),
            role,
            grants: Grants {
                conversations: convs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            region: None,
            name: None,
            token: TokenMeta {
                jti: "j".into(),
                expires_at: 0,
                key_id: None,
            },
        }
    }

    #[test]
    fn auditors_see_the_log_and_no_phi() {
        let a = token(Role::Auditor, &["*"]);
        assert!(a.may(Permission::ReadAudit));
        assert!(!a.may(Permission::ReadTimeline));
        assert!(!a.may(Permission::ReadContacts));
    }

    #[test]
    fn patients_only_reach_granted_conversations() {
        let p = token(Role::Patient, &["c1"]);
        assert!(p.may(Permission::AppendEvent));
        assert!(!p.may(Permission::ReadContext));
        assert!(!p.may(Permission::ListConversations));
        assert!(p.may_access_conversation("c1"));
        assert!(!p.may_access_conversation("c2"));
    }

    #[test]
    fn clinicians_cannot_mint_tokens_or_read_audit() {
        let c = token(Role::Clinician, &["*"]);
        assert!(c.may(Permission::ReadContext));
        assert!(!c.may(Permission::MintTokens));
        assert!(!c.may(Permission::ReadAudit));
        assert!(c.may_access_conversation("anything"));
        assert!(
            !c.sees_all_contacts(),
            "all conversations is not all contacts"
        );
    }

    #[test]
    fn grants_are_handed_on_only_within_their_holder() {
        let parent = Grants {
            conversations: vec!["c1".into(), "c2".into()],
            rooms: vec!["*".into()],
            contacts: vec![],
        };
        let ok = Grants {
            conversations: vec!["c1".into()],
            rooms: vec!["r9".into()],
            contacts: vec![],
        };
        assert!(ok.within(&parent));
        let wider = Grants {
            conversations: vec!["*".into()],
            ..Default::default()
        };
        assert!(!wider.within(&parent));
        let contacts = Grants {
            contacts: vec!["*".into()],
            ..Default::default()
        };
        assert!(!contacts.within(&parent));
    }
}
