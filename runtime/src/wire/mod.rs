//! Request and response types shared by clients and servers, one definition each.

pub mod ca;
pub mod center;
pub mod station;

use serde::{Deserialize, Serialize};

/// The body of every refusal a certline service sends: a stable machine code
/// and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub error: String,
}
