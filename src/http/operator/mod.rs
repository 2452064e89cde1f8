//! The operator's API, under `/v1/admin` and behind the admin token: what
//! an operator does to accounts, sees of every user's jobs, and sees and
//! does of the fleet.

use admedia_actors::domain::ids::UserId;

use crate::http::problem::ApiError;

pub mod accounts;
pub mod fleet;
pub mod jobs;

/// A user id from a path: one that does not parse names no user.
fn user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("user"))
}
