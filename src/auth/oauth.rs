//! OAuth 2.0 authorization code flow with PKCE, roomcast as the client of
//! the providers in the config file.

use super::service::{AuthReply, AuthRequest, Ctx};

pub fn handle(_ctx: &Ctx, _r: &AuthRequest, _rest: &str) -> AuthReply {
    AuthReply::error(404, "not_found", "no such endpoint")
}
