//! What stands between the network and the handlers: where a request comes
//! from ([`request`]), how fast a source or credential may go ([`limits`]),
//! how refusals are recorded at bounded cost ([`refusals`]), and which
//! tokens and keys are revoked ([`revocations`]).

pub mod limits;
pub mod refusals;
pub mod request;
pub mod revocations;

pub use limits::Limits;
pub use refusals::Refusals;
pub use request::{RequestInfo, request_context};
pub use revocations::Revocations;
