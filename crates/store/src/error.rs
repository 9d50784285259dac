use continuum_core::{BindingError, EventValidationError, TransitionError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Also what another tenant's objects look like: existence is never leaked.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// An idempotency key came back with a different request (as payment
    /// APIs do, this is refused rather than answered with the original).
    #[error(
        "idempotency key `{0}` was already used for a different event in this conversation; \
         retry with the same content, or use a new key"
    )]
    IdempotencyMismatch(String),
    #[error(transparent)]
    InvalidTransition(#[from] TransitionError),
    #[error(transparent)]
    InvalidEvent(#[from] EventValidationError),
    #[error(transparent)]
    InvalidBinding(#[from] BindingError),
    #[error("{0}")]
    Invalid(String),
    /// The recipient opted out of the channel from this sender.
    #[error("{0}")]
    Suppressed(String),
    #[error("stored data failed authentication: {0}")]
    Integrity(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("the write could not be committed: {0}")]
    Commit(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The database cannot be reached right now (PostgreSQL restarting, the
    /// network): answered with 503 and Retry-After; nothing was written.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::db::DbError> for StoreError {
    fn from(e: crate::db::DbError) -> Self {
        match e {
            crate::db::DbError::Pg(p) if p.unavailable => StoreError::Unavailable(p.message),
            // PostgreSQL chose this transaction as a deadlock's victim (or
            // could not serialize it): it was rolled back, and the same
            // write tried again goes through.
            crate::db::DbError::Pg(p) if matches!(p.code.as_deref(), Some("40P01" | "40001")) => {
                StoreError::Unavailable(format!("{} (rolled back; retry)", p.message))
            }
            e => StoreError::Database(e.to_string()),
        }
    }
}

impl StoreError {
    /// A unique constraint refusing a row becomes `Conflict(what())`: the
    /// check before the insert found nothing, but a concurrent write (another
    /// node, on PostgreSQL) inserted the same key in the meantime.
    pub(crate) fn unique_as_conflict(
        e: crate::db::DbError,
        what: impl FnOnce() -> String,
    ) -> StoreError {
        if e.is_unique_violation() {
            StoreError::Conflict(what())
        } else {
            e.into()
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<crate::crypto::CryptoError> for StoreError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        StoreError::Integrity(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::StoreError;
    use crate::db::{DbError, pg::PgError};

    fn pg(code: &str) -> StoreError {
        DbError::Pg(PgError {
            code: Some(code.into()),
            message: "m".into(),
            unavailable: false,
        })
        .into()
    }

    #[test]
    fn a_deadlock_victim_is_retried_later_a_constraint_is_not() {
        assert!(matches!(pg("40P01"), StoreError::Unavailable(_)));
        assert!(matches!(pg("40001"), StoreError::Unavailable(_)));
        assert!(matches!(pg("23505"), StoreError::Database(_)));
    }
}
