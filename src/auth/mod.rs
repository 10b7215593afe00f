//! Identity: the keys tokens are verified with, and the HS256 secret that
//! signs the tokens roomcast mints.
//!
//! This module owns the signing secret (from `ROOMCAST_JWT_SECRET`, or a
//! random one kept in `<data>/jwt-secret`, see `secret`), the public keys
//! of `--jwt-public-key` and `--jwks` (see `keys`), minting tokens for the
//! `token` command and the built-in page, and verifying the tokens clients
//! present. It does not decide where a token is read from (header or query)
//! or what a failed check does to a connection: that is the HTTP layer's
//! business.
//!
//! Which key verifies a token (docs/PROTOCOL.md says the same to clients):
//!
//! - a token with a `kid` is verified by the JWKS key of that `kid` (for its
//!   `iss`, when the `kid` is bound to issuers) and by nothing else: an
//!   unknown `kid` is refused, with no fallback to another key;
//! - a token without a `kid` is verified by the secret when its header says
//!   HS256, by the `--jwt-public-key` key when its header says that key's
//!   algorithm, and is refused otherwise;
//! - the header's `alg` must be the chosen key's algorithm, which the key's
//!   type fixes (`none` is no algorithm at all). An HS256 token is never
//!   checked against public key bytes: that is the "algorithm confusion"
//!   this rule closes.
//!
//! The public keys are re-read by [`Auth::reload`] (on SIGHUP) and swapped
//! whole; a verification takes the current set with one uncontended read
//! lock and an `Arc` clone, and a load that fails leaves the old set in
//! place. The secret is fixed for the life of the process.
//!
//! It also owns the rule for user ids ([`check_user_id`]), which a token's
//! `sub` and an anonymous `?user=` must both follow: every other client sees
//! the id as a message's `from`, so it must be short and printable.
//!
//! Tokens come from anyone: nothing here may panic on any token text or any
//! claim value (a huge `exp` or `nbf`, a number where a string belongs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use crate::config::Config;

pub mod accounts;
mod keys;
pub mod oauth;
pub mod passkey;
pub mod password;
pub mod ratelimit;
pub(crate) mod secret;
pub mod service;
#[doc(hidden)]
pub mod testkeys;
#[cfg(test)]
mod tests;

use keys::{Key, Kid, PublicKeys};
pub use keys::{Loaded, MAX_JWKS_KEYS, MAX_KEY_FILE_BYTES};
pub mod rules;

/// The file, inside the data directory, holding the generated secret as hex.
pub const SECRET_FILE: &str = "jwt-secret";
/// Bytes of randomness in a generated secret.
pub const SECRET_BYTES: usize = 32;
/// Shortest HS256 secret accepted, in bytes (RFC 7518 3.2: at least the
/// hash's size). A shorter one can be found by trying guesses offline
/// against any token.
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp` and `nbf` unless `--jwt-leeway` says
/// otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Whether `u` may be a user id: 1 to [`MAX_USER_ID_BYTES`] bytes without
/// control characters (`char::is_control`: C0, DEL and C1, so no CR, LF or
/// NUL reaches another client's `from` or a log line). The error is the
/// message to show the client.
pub fn check_user_id(u: &str) -> Result<(), &'static str> {
    if u.is_empty() || u.len() > MAX_USER_ID_BYTES || u.chars().any(char::is_control) {
        return Err("user ids are 1 to 128 bytes without control characters");
    }
    Ok(())
}

/// The claims roomcast reads and mints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Room patterns this token may join, page and list presence of (see
    /// [`rules`]); `None`: the server's `--default-rooms`. Bounded and
    /// checked while the token is decoded: a bad one makes it invalid.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "rules::rooms_claim")]
    pub rooms: Option<Vec<String>>,
    /// Room patterns this token may send to; `None`: the `rooms` list.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "rules::send_claim")]
    pub send: Option<Vec<String>>,
}

/// The `aud` claim, which RFC 7519 allows as one string or an array.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, badly signed or fails a claim check: refuse it (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token was valid once and its `exp` has passed: refuse it (401, or close 4001).
    #[error("token expired")]
    Expired,
    /// The secret cannot be loaded, created or used: a startup problem.
    #[error("jwt secret: {0}")]
    Secret(String),
    /// A key file (`--jwt-public-key`, `--jwks`) cannot be read or used: a
    /// startup problem, or a reload that is refused.
    #[error("{0}")]
    Keys(String),
}

/// What tokens are checked against, besides the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--jwt-audience`: tokens must carry it.
    pub audience: Option<String>,
    /// `--jwt-issuer`: tokens must carry it, except those verified by a
    /// JWKS key bound to an issuer of its own.
    pub issuer: Option<String>,
    /// `--jwt-leeway`, in whole seconds (a fraction is dropped).
    pub leeway: Duration,
    /// `--jwt-public-key`: a PEM public key, re-read by [`Auth::reload`].
    pub public_key: Option<PathBuf>,
    /// `--jwks`: a JSON Web Key Set file, re-read by [`Auth::reload`].
    pub jwks: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options { audience: None, issuer: None, leeway: DEFAULT_LEEWAY, public_key: None, jwks: None }
    }
}

impl Options {
    /// The audience and issuer given, the rest default.
    pub fn with(audience: Option<&str>, issuer: Option<&str>) -> Options {
        Options { audience: audience.map(str::to_string), issuer: issuer.map(str::to_string), ..Options::default() }
    }

    /// The options `config` sets.
    pub fn from_config(config: &Config) -> Options {
        Options {
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway: config.jwt_leeway,
            public_key: config.jwt_public_key.clone(),
            jwks: config.jwks.clone(),
        }
    }
}

/// Signs tokens with the HS256 secret and verifies them with it and with
/// the public keys, which [`Auth::reload`] can replace while it is shared.
pub struct Auth {
    encoding: EncodingKey,
    /// The secret's key, fixed for the life of the process.
    hmac: Key,
    options: Options,
    /// The public keys; replaced whole, never changed in place.
    keys: RwLock<Arc<PublicKeys>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("options", &self.options).finish_non_exhaustive()
    }
}

/// The one claim read before the signature is checked: it picks the key of
/// a `kid` bound to several issuers. Nothing else trusts it.
#[derive(serde::Deserialize)]
struct Issuer {
    #[serde(default)]
    iss: Option<String>,
}

impl Auth {
    /// The secret from `env_secret` if it is `Some` and non-empty; else the
    /// hex in `<data>/jwt-secret`; else a new random one written there (mode
    /// 0600, creating the data directory). The flag is true when the secret
    /// came from, or was just written to, the file. No key files.
    pub fn load_or_create(
        data: &Path,
        env_secret: Option<&str>,
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<(Auth, bool), AuthError> {
        Auth::load_with(data, env_secret, Options::with(audience, issuer))
    }

    /// [`Auth::load_or_create`] with the settings of `config`, key files
    /// included.
    pub fn from_config(config: &Config) -> Result<(Auth, bool), AuthError> {
        Auth::load_with(&config.data, config.jwt_secret.as_ref().map(|s| s.expose()), Options::from_config(config))
    }

    fn load_with(data: &Path, env_secret: Option<&str>, options: Options) -> Result<(Auth, bool), AuthError> {
        if let Some(secret) = env_secret.filter(|s| !s.is_empty()) {
            return Ok((Auth::new(secret.as_bytes(), options)?, false));
        }
        let secret = secret::load_or_create_secret_file(data)?;
        Ok((Auth::new(&secret, options)?, true))
    }

    /// The secret alone, with the audience and issuer given.
    pub fn from_secret(secret: &[u8], audience: Option<&str>, issuer: Option<&str>) -> Result<Auth, AuthError> {
        Auth::new(secret, Options::with(audience, issuer))
    }

    /// The secret, and the key files `options` names, read now.
    pub fn new(secret: &[u8], options: Options) -> Result<Auth, AuthError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::Secret(format!("{} bytes; at least {MIN_SECRET_BYTES} are needed", secret.len())));
        }
        let encoding = EncodingKey::from_secret(secret).map_err(|e| AuthError::Secret(e.to_string()))?;
        let decoding = DecodingKey::from_secret(secret).map_err(|e| AuthError::Secret(e.to_string()))?;
        let hmac = Key::new(Algorithm::HS256, decoding, &options, options.issuer.as_deref());
        let (keys, _) = PublicKeys::load(&options)?;
        Ok(Auth { encoding, hmac, options, keys: RwLock::new(Arc::new(keys)) })
    }

    /// Reads the key files again and, if they are good, verifies with them
    /// from now on; if not, the keys stay as they were. Connections are not
    /// touched: a token is checked when it is presented.
    pub fn reload(&self) -> Result<Loaded, AuthError> {
        let (keys, loaded) = PublicKeys::load(&self.options)?;
        // A panic cannot happen while the lock is held (an assignment), so a
        // poisoned lock still holds a whole set.
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(loaded)
    }

    /// The clock skew allowed on `exp` and `nbf`: a connection whose token
    /// expired is to be closed at `exp` plus this.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.options.leeway.as_secs())
    }

    fn current(&self) -> Arc<PublicKeys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A token for `sub`, valid for `ttl` from now (an expiry past `u64`
    /// seconds saturates), carrying the configured audience and issuer,
    /// signed HS256 with the secret. A `sub` that [`check_user_id`] refuses
    /// is refused here too: such a token would never verify.
    pub fn mint(&self, sub: &str, ttl: Duration, role: Option<&str>) -> Result<String, AuthError> {
        check_user_id(sub).map_err(|m| AuthError::Invalid(format!("sub claim: {m}")))?;
        let claims = Claims {
            sub: sub.to_string(),
            exp: now_unix().saturating_add(ttl.as_secs()),
            role: role.map(str::to_string),
            aud: self.options.audience.clone().map(Audience::One),
            iss: self.options.issuer.clone(),
            rooms: None,
            send: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Secret(format!("cannot sign: {e}")))
    }

    /// Picks the key (see the module comment), then checks signature,
    /// algorithm, `exp` (and `nbf` when present) with the leeway, and the
    /// audience and issuer when configured. `exp` must be an integer number
    /// of seconds (any size: `u64::MAX` means never); a fraction, a negative
    /// number or a string is refused, as is an `nbf` that is not a
    /// non-negative number.
    /// The `sub` must pass [`check_user_id`]: it names the user to everyone.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| AuthError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let keys = self.current();
        let key = match header.kid.as_deref() {
            Some(kid) => match keys.jwks.get(kid) {
                None => return Err(AuthError::Invalid("unknown kid".into())),
                Some(Kid::Unbound(key)) => key.as_ref(),
                Some(Kid::Bound(list)) => {
                    let iss = match list.as_slice() {
                        // One issuer: its key; the issuer check below refuses others.
                        [(iss, _)] => Some(iss.as_str()),
                        _ => None,
                    };
                    let claimed = match iss {
                        Some(_) => None,
                        None => jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token).map_err(invalid)?.iss,
                    };
                    let wanted = iss.or(claimed.as_deref());
                    match list.iter().find(|(i, _)| Some(i.as_str()) == wanted) {
                        Some((_, key)) => key,
                        None => return Err(AuthError::Invalid("unknown kid for this issuer".into())),
                    }
                }
            },
            None if header.alg == Algorithm::HS256 => &self.hmac,
            None => match &keys.pem {
                Some(key) if key.alg == header.alg => key,
                _ => return Err(AuthError::Invalid(format!("no key for {:?} tokens without a kid", header.alg))),
            },
        };
        if header.alg != key.alg {
            return Err(AuthError::Invalid(format!("alg {:?} is not the key's, which is {:?}", header.alg, key.alg)));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        check_user_id(&data.claims.sub).map_err(|m| AuthError::Invalid(format!("sub claim: {m}")))?;
        Ok(data.claims)
    }
}

/// `n` random bytes as lower-case hex: ids and opaque tokens. The error
/// is the message to report (the system has no randomness to give).
pub(crate) fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(secret::hex_encode(&buf))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
