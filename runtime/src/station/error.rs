//! What the station's logic answers when it refuses: a kind (what sort of
//! refusal) and a stable code from [`crate::wire::station::codes`], with a
//! sentence for the operator. No transport here: `serve.rs` maps a kind to an
//! HTTP status, the command line prints the sentence.

use crate::wire::station::codes;

/// The sort of refusal, independent of any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request itself is malformed (an id, a day, a missing reason).
    BadRequest,
    /// No valid admin login or session.
    Unauthorized,
    /// The caller may not do this (another line's pack, a revoked line).
    Forbidden,
    /// Nothing of that name (no plan entry, no pack, no model).
    NotFound,
    /// The request does not fit the current state.
    Conflict,
    /// Too many attempts (lockout, rate limit).
    TooMany,
    /// The station cannot serve this now (no fresh CRL of the CA).
    Unavailable,
}

/// A refusal (its kind and stable code) or a real failure.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    #[error("{message}")]
    Refused {
        kind: Kind,
        code: &'static str,
        message: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StationError {
    pub fn refused(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        StationError::Refused {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> Option<&'static str> {
        match self {
            StationError::Refused { code, .. } => Some(code),
            StationError::Internal(_) => None,
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Kind::Conflict, code, message)
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Kind::NotFound, code, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::refused(Kind::BadRequest, codes::BAD_REQUEST, message)
    }
}

impl From<rusqlite::Error> for StationError {
    fn from(err: rusqlite::Error) -> Self {
        StationError::Internal(err.into())
    }
}
