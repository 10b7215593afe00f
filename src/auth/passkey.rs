//! Passkeys (WebAuthn): registration and sign-in ceremonies.

use super::service::{AuthReply, AuthRequest, Ctx};

pub fn handle(_ctx: &Ctx, _r: &AuthRequest, _rest: &str) -> AuthReply {
    AuthReply::error(404, "not_found", "no such endpoint")
}
