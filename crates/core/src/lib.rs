//! The Continuum domain model.
//!
//! Everything here is pure: types, validation and the rules of the conversation
//! engine (state transitions, who may do what, what the next clinician needs to
//! see). Persistence lives in `continuum-store`, IO in `continuum-server`.

pub mod access;
pub mod binding;
pub mod channel;
pub mod clock;
pub mod context;
pub mod conversation;
pub mod event;
pub mod netpolicy;
pub mod room;

pub use access::{Grants, Permission, Principal, Role, TokenMeta};
pub use binding::{BindingError, BindingKind, normalize_app_user_id, normalize_phone};
pub use channel::Channel;
pub use context::{PendingItem, build_pending_items};
pub use conversation::{ConversationState, Transition, TransitionError};
pub use event::{Actor, ActorType, EventKind, EventValidationError, NewEvent};
pub use room::RoomKey;
