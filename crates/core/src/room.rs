//! Which room, across tenants: room ids are unique per tenant only, so
//! everything that keeps rooms of several tenants side by side (the SFU's
//! workers, the lobby, the voice bridge) keys them by tenant and room.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub tenant_id: String,
    pub room_id: String,
}

impl RoomKey {
    pub fn new(tenant_id: impl Into<String>, room_id: impl Into<String>) -> Self {
        RoomKey {
            tenant_id: tenant_id.into(),
            room_id: room_id.into(),
        }
    }
}

/// `tenant/room`: the opaque room name protocol cores (the SFU) are given.
/// Tenant ids never contain `/`, so two keys never print the same.
impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant_id, self.room_id)
    }
}
