//! Passkeys (WebAuthn): the registration and sign-in ceremonies of
//! `/v1/auth/passkey/...`, the credentials they leave per user, and the
//! relying party settings (`--webauthn-rp-id`, `--webauthn-origin`).
//!
//! A ceremony is two requests: `start` answers the options for
//! `navigator.credentials.create()` / `get()` and a ceremony id, and keeps
//! the server half of the ceremony (challenge, user, allowed credentials) in
//! the store for [`CEREMONY_TTL_MS`]; `finish` takes the id and the
//! browser's credential, and consumes that state (get and remove in one
//! write job) before checking anything, so each ceremony is finished at most
//! once, whether the check then passes or not. The signature checks run on
//! this auth worker, outside the write jobs, which stay short.
//!
//! Stored, in the identity key-value space ([`crate::store::kv`]):
//! - `passkey_ceremony` / ceremony id -> [`Ceremony`] (expires);
//! - `passkey_user` / user -> the user handle (a random UUID the
//!   authenticator keeps instead of the name);
//! - `passkey` / `hex(user)/hex(credential id)` -> [`StoredKey`], the
//!   credential with its sign counter (hex so that no user name, which may
//!   hold `/`, can reach into another's prefix);
//! - `passkey_id` / `hex(credential id)` -> user, so a credential is
//!   registered to one user only and a discoverable sign-in finds its owner.
//!
//! Everything in a request and in the store is untrusted: ids are checked
//! for shape before they become keys, stored values are decoded as JSON that
//! may be damaged, and a user holds at most [`MAX_PASSKEYS`] credentials.

use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::config::Config;
use crate::proto::http::Method;
use crate::proto::now_ms;
use crate::store::kv::{self, Kv};
use crate::store::StoreError;

use super::ratelimit;
use super::secret::hex_encode as hex;
use super::service::{AuthReply, AuthRequest, Ctx};
use super::{accounts, check_user_id, AuthError};

/// How long a started ceremony may be finished: enough for a person to find
/// and touch an authenticator, short enough that a leaked id soon expires.
pub const CEREMONY_TTL_MS: u64 = 5 * 60 * 1000;
/// Passkeys one user may register; the sign-in options list them all.
pub const MAX_PASSKEYS: usize = 10;
/// The longest credential id WebAuthn allows (Level 3, 1023 bytes).
const MAX_CREDENTIAL_ID_BYTES: usize = 1023;
/// Random bytes in a ceremony id (shown as hex).
const CEREMONY_ID_BYTES: usize = 16;

const KIND_CEREMONY: &str = "passkey_ceremony";
const KIND_HANDLE: &str = "passkey_user";
const KIND_KEY: &str = "passkey";
const KIND_KEY_OWNER: &str = "passkey_id";

/// The relying party id and origin the settings give, checked: the id is a
/// lower-case domain name, the origin an `http(s)://host[:port]` whose host
/// is the id or a subdomain of it, and plain `http` only for `localhost`
/// (browsers offer passkeys only in a secure context). The error is the
/// problem to show in a config error.
pub fn relying_party(config: &Config) -> Result<(String, Url), String> {
    let rp_id = config.webauthn_rp_id.as_str();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if rp_id.len() > 253 || !rp_id.split('.').all(label_ok) {
        return Err("must be a lower-case domain name such as example.com (no scheme, port or path)".into());
    }
    let origin = match &config.webauthn_origin {
        Some(o) => o.clone(),
        None if rp_id == "localhost" => format!("http://localhost:{}", config.listen.port()),
        None => format!("https://{rp_id}"),
    };
    let url = Url::parse(&origin).map_err(|e| format!("{origin:?} is not a URL: {e}"))?;
    let host = url.host_str().unwrap_or("");
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!("{origin:?} must be scheme://host[:port] with an http or https scheme"));
    }
    if host != rp_id && !host.strip_suffix(rp_id).is_some_and(|head| head.ends_with('.')) {
        return Err(format!("the host of {origin:?} must be {rp_id} (webauthn-rp-id) or under it"));
    }
    if url.scheme() == "http" && host != "localhost" {
        return Err(format!("{origin:?}: browsers offer passkeys over http only on localhost; use https"));
    }
    Ok((rp_id.to_string(), url))
}

fn webauthn(config: &Config) -> Result<Webauthn, AuthReply> {
    let internal = |m: String| AuthReply::error(500, "internal", &format!("passkeys are misconfigured: {m}"));
    let (rp_id, origin) = relying_party(config).map_err(internal)?;
    WebauthnBuilder::new(&rp_id, &origin)
        .map(|b| b.rp_name("roomcast"))
        .and_then(|b| b.build())
        .map_err(|e| internal(e.to_string()))
}

/// The server half of a started ceremony, kept until its finish.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Ceremony {
    Register {
        user: String,
        /// No account yet: the finish creates it, if the name is still free.
        new_user: bool,
        handle: Uuid,
        state: PasskeyRegistration,
    },
    Login {
        user: String,
        state: PasskeyAuthentication,
    },
    /// Sign-in without a name: the authenticator says whose credential it is.
    Discover {
        state: DiscoverableAuthentication,
    },
}

/// One registered credential.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    passkey: Passkey,
    /// The highest sign counter seen; 0 while the authenticator keeps none.
    counter: u32,
    created_ms: u64,
    last_used_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Handle {
    handle: Uuid,
}

#[derive(Deserialize)]
struct StartBody {
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct FinishBody<C> {
    ceremony: String,
    credential: C,
}

pub fn handle(ctx: &Ctx, r: &AuthRequest, rest: &str) -> AuthReply {
    let route = rest.strip_prefix("passkey/").unwrap_or("");
    let known = matches!(route, "register/start" | "register/finish" | "login/start" | "login/finish");
    if !known {
        return AuthReply::error(404, "not_found", "no such endpoint");
    }
    if r.req.method != Method::Post {
        return AuthReply::error(405, "method_not_allowed", "use POST").with_header("Allow", "POST".into());
    }
    let out = match route {
        "register/start" => register_start(ctx, r),
        "register/finish" => register_finish(ctx, r),
        "login/start" => login_start(ctx, r),
        _ => login_finish(ctx, r),
    };
    out.unwrap_or_else(|reply| reply)
}

type Reply = Result<AuthReply, AuthReply>;

fn bad_request(message: &str) -> AuthReply {
    AuthReply::error(400, "bad_request", message)
}

fn store_error(e: StoreError) -> AuthReply {
    AuthReply::error(503, "unavailable", &format!("storage: {e}"))
}

/// The ceremony is unknown, expired, already finished or of another kind:
/// one answer for all, so a replay learns nothing.
fn invalid_ceremony() -> AuthReply {
    AuthReply::error(400, "invalid_ceremony", "unknown, expired or already finished ceremony")
}

fn refused(message: &str) -> AuthReply {
    AuthReply::error(401, "passkey_refused", message)
}

fn key_of(user: &str, cred_id: &[u8]) -> String {
    format!("{}/{}", hex(user.as_bytes()), hex(cred_id))
}

fn new_ceremony_id() -> Result<String, AuthReply> {
    super::random_hex(CEREMONY_ID_BYTES).map_err(|e| AuthReply::error(500, "internal", &e))
}

/// Whether `id` has the shape of an id [`new_ceremony_id`] makes.
fn ceremony_id_ok(id: &str) -> bool {
    id.len() == 2 * CEREMONY_ID_BYTES && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, AuthReply> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8], what: &str) -> Result<T, AuthReply> {
    serde_json::from_slice(raw).map_err(|e| AuthReply::error(500, "internal", &format!("damaged {what}: {e}")))
}

/// The user of `Authorization: Bearer <token>`; `None` without the header.
/// A header that is there but does not verify is a 401, not a fallback to
/// signing up.
fn bearer_user(ctx: &Ctx, r: &AuthRequest) -> Result<Option<String>, AuthReply> {
    let Some(h) = r.req.header("authorization") else { return Ok(None) };
    let token = crate::proto::http::bearer_token(h)
        .ok_or_else(|| AuthReply::error(401, "unauthorized", "the Authorization header must be `Bearer <token>`"))?;
    match ctx.auth.verify(token) {
        Ok(claims) => Ok(Some(claims.sub)),
        Err(AuthError::Expired) => Err(AuthReply::error(401, "token_expired", "the token has expired")),
        Err(e) => Err(AuthReply::error(401, "unauthorized", &e.to_string())),
    }
}

/// The user's credentials, at most [`MAX_PASSKEYS`] (more can only come
/// from a damaged file, and are left out).
fn load_keys(ctx: &Ctx, user: &str, now: u64) -> Result<Vec<StoredKey>, AuthReply> {
    let prefix = format!("{}/", hex(user.as_bytes()));
    let listed = (|| -> Result<Vec<String>, StoreError> {
        let txn = ctx.store.db().begin_read()?;
        let table = match txn.open_table(kv::AUTH) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.range::<(&str, &str)>((KIND_KEY, prefix.as_str())..)? {
            let (k, _) = item?;
            let (kind, key) = k.value();
            if kind != KIND_KEY || !key.starts_with(&prefix) || out.len() == MAX_PASSKEYS {
                break;
            }
            out.push(key.to_string());
        }
        Ok(out)
    })()
    .map_err(store_error)?;
    let mut keys = Vec::with_capacity(listed.len());
    for key in listed {
        // Read one by one: an entry past its expiry reads as absent.
        if let Some(raw) = kv::get(ctx.store, KIND_KEY, &key, now).map_err(store_error)? {
            keys.push(raw);
        }
    }
    keys.iter().map(|raw| decode::<StoredKey>(raw, "passkey")).collect()
}

fn taken(ctx: &Ctx, user: &str, now: u64) -> Result<bool, AuthReply> {
    Ok(accounts::user_exists_now(ctx.store, user, now).map_err(store_error)?
        || kv::get(ctx.store, KIND_HANDLE, user, now).map_err(store_error)?.is_some())
}

/// Keeps `ceremony` until it expires, counted against the address's
/// ceremony limit (each one is state the store holds).
fn put_ceremony(ctx: &Ctx, ip: Option<std::net::IpAddr>, ceremony: &Ceremony, now: u64) -> Result<String, AuthReply> {
    let id = new_ceremony_id()?;
    let value = serde_json::to_vec(ceremony)
        .map_err(|e| AuthReply::error(500, "internal", &format!("cannot keep the ceremony: {e}")))?;
    let expires = now.saturating_add(CEREMONY_TTL_MS);
    ratelimit::keep_ceremony(ctx.store, ctx.writer, ip, (KIND_CEREMONY, id.clone()), value, expires, now)
        .map_err(store_error)?
        .map_err(ratelimit::Limited::reply)?;
    Ok(id)
}

/// Takes the ceremony `id` out of the store: whatever happens next, it
/// cannot be finished again.
fn take_ceremony(ctx: &Ctx, id: &str, now: u64) -> Result<Ceremony, AuthReply> {
    if !ceremony_id_ok(id) {
        return Err(invalid_ceremony());
    }
    let raw = kv::take_once(ctx.store, ctx.writer, KIND_CEREMONY, id, now)
        .map_err(store_error)?
        .ok_or_else(invalid_ceremony)?;
    decode(&raw, "ceremony")
}

fn start_reply(id: &str, options: serde_json::Value) -> AuthReply {
    AuthReply::json(
        200,
        &serde_json::json!({ "ceremony": id, "expires_in": CEREMONY_TTL_MS / 1000, "options": options }),
    )
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, AuthReply> {
    serde_json::to_value(v).map_err(|e| AuthReply::error(500, "internal", &format!("cannot encode: {e}")))
}

fn register_start(ctx: &Ctx, r: &AuthRequest) -> Reply {
    let now = now_ms();
    let body: StartBody = if r.req.body.is_empty() { StartBody { username: None } } else { parse(&r.req.body)? };
    let (user, new_user) = match (bearer_user(ctx, r)?, body.username) {
        (Some(user), None) => (user, false),
        (Some(user), Some(name)) if name == user => (user, false),
        (Some(_), Some(_)) => return Err(bad_request("a signed-in user registers passkeys for itself only")),
        (None, Some(name)) => {
            accounts::check_new_name(&name).map_err(bad_request)?;
            // A sign-up, taken name or not: counted like a password one, so
            // neither the sign-ups nor the names probed are unbounded.
            accounts::count_registration(ctx, r.ip, now).map_err(store_error)?.map_err(ratelimit::Limited::reply)?;
            if taken(ctx, &name, now)? {
                return Err(AuthReply::error(
                    409,
                    "user_exists",
                    "this name is taken: sign in first to add a passkey to it",
                ));
            }
            (name, true)
        }
        (None, None) => return Err(bad_request("`username` is required without a token")),
    };
    let keys = if new_user { Vec::new() } else { load_keys(ctx, &user, now)? };
    if keys.len() >= MAX_PASSKEYS {
        return Err(AuthReply::error(409, "too_many_passkeys", "this user has the most passkeys allowed"));
    }
    let handle = match kv::get(ctx.store, KIND_HANDLE, &user, now).map_err(store_error)? {
        Some(raw) => decode::<Handle>(&raw, "user handle")?.handle,
        None => {
            let mut b = [0u8; 16];
            getrandom::fill(&mut b).map_err(|e| AuthReply::error(500, "internal", &format!("no randomness: {e}")))?;
            Uuid::from_bytes(b)
        }
    };
    let exclude = keys.iter().map(|k| k.passkey.cred_id().clone()).collect();
    let (options, state) = webauthn(ctx.config)?
        .start_passkey_registration(handle, &user, &user, Some(exclude))
        .map_err(|e| AuthReply::error(500, "internal", &format!("cannot start: {e}")))?;
    let id = put_ceremony(ctx, r.ip, &Ceremony::Register { user, new_user, handle, state }, now)?;
    Ok(start_reply(&id, to_json(&options)?))
}

fn register_finish(ctx: &Ctx, r: &AuthRequest) -> Reply {
    let now = now_ms();
    let body: FinishBody<RegisterPublicKeyCredential> = parse(&r.req.body)?;
    let Ceremony::Register { user, new_user, handle, state } = take_ceremony(ctx, &body.ceremony, now)? else {
        return Err(invalid_ceremony());
    };
    let passkey = webauthn(ctx.config)?
        .finish_passkey_registration(&body.credential, &state)
        .map_err(|e| refused(&format!("the credential does not verify: {e}")))?;
    let cred_id = passkey.cred_id().to_vec();
    if cred_id.is_empty() || cred_id.len() > MAX_CREDENTIAL_ID_BYTES {
        return Err(bad_request("credential ids are 1 to 1023 bytes"));
    }
    let stored = serde_json::to_vec(&StoredKey { passkey, counter: 0, created_ms: now, last_used_ms: 0 })
        .map_err(|e| AuthReply::error(500, "internal", &format!("cannot encode: {e}")))?;
    let handle_json = serde_json::to_vec(&Handle { handle })
        .map_err(|e| AuthReply::error(500, "internal", &format!("cannot encode: {e}")))?;
    let owner = user.clone();
    // Every check that another request could race with happens again here,
    // inside the one transaction that writes.
    let outcome = crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        let known_handle = kv.get(KIND_HANDLE, &owner)?;
        if new_user && (known_handle.is_some() || accounts::user_exists(&kv, &owner)?) {
            return Ok(Err(AuthReply::error(409, "user_exists", "this name was taken meanwhile")));
        }
        // Two first registrations of one existing user each drew a handle;
        // the authenticator of the later one holds a handle that lost.
        let handle_lost = match known_handle.as_deref().map(serde_json::from_slice::<Handle>) {
            Some(Ok(known)) => known.handle != handle,
            Some(Err(_)) => true,
            None => false,
        };
        if handle_lost {
            return Ok(Err(AuthReply::error(
                409,
                "conflict",
                "another registration for this user finished first: start again",
            )));
        }
        if kv.get(KIND_KEY_OWNER, &hex(&cred_id))?.is_some() {
            return Ok(Err(AuthReply::error(409, "credential_exists", "this passkey is registered already")));
        }
        let prefix = format!("{}/", hex(owner.as_bytes()));
        if kv.keys_with_prefix(KIND_KEY, &prefix, MAX_PASSKEYS)?.len() >= MAX_PASSKEYS {
            return Ok(Err(AuthReply::error(409, "too_many_passkeys", "this user has the most passkeys allowed")));
        }
        if new_user {
            accounts::ensure_user(&mut kv, &owner)?;
        }
        if known_handle.is_none() {
            kv.put(KIND_HANDLE, &owner, &handle_json, 0)?;
        }
        kv.put(KIND_KEY, &key_of(&owner, &cred_id), &stored, 0)?;
        kv.put(KIND_KEY_OWNER, &hex(&cred_id), owner.as_bytes(), 0)?;
        Ok(Ok(()))
    })
    .map_err(store_error)?;
    outcome?;
    session(ctx, &user)
}

fn login_start(ctx: &Ctx, r: &AuthRequest) -> Reply {
    let now = now_ms();
    let body: StartBody = if r.req.body.is_empty() { StartBody { username: None } } else { parse(&r.req.body)? };
    let wa = webauthn(ctx.config)?;
    let start_error =
        |e: webauthn_rs::prelude::WebauthnError| AuthReply::error(500, "internal", &format!("cannot start: {e}"));
    let (mut options, ceremony) = match body.username {
        Some(user) => {
            check_user_id(&user).map_err(bad_request)?;
            let keys = load_keys(ctx, &user, now)?;
            if keys.is_empty() {
                // Counted like a ceremony, so names cannot be probed for free.
                let scope = (ratelimit::SCOPE_CEREMONY_IP, ratelimit::ip_key(r.ip));
                ratelimit::count(ctx.store, ctx.writer, scope, ratelimit::CEREMONIES_PER_IP, now)
                    .map_err(store_error)?
                    .map_err(ratelimit::Limited::reply)?;
                return Err(AuthReply::error(404, "no_passkey", "this user has no passkey"));
            }
            let passkeys: Vec<Passkey> = keys.into_iter().map(|k| k.passkey).collect();
            let (options, state) = wa.start_passkey_authentication(&passkeys).map_err(start_error)?;
            (options, Ceremony::Login { user, state })
        }
        None => {
            let (options, state) = wa.start_discoverable_authentication().map_err(start_error)?;
            (options, Ceremony::Discover { state })
        }
    };
    // The library asks for conditional mediation (autofill) on discoverable
    // sign-in; a button on a page wants the ordinary modal prompt.
    options.mediation = None;
    let id = put_ceremony(ctx, r.ip, &ceremony, now)?;
    Ok(start_reply(&id, to_json(&options)?))
}

fn login_finish(ctx: &Ctx, r: &AuthRequest) -> Reply {
    let now = now_ms();
    let body: FinishBody<PublicKeyCredential> = parse(&r.req.body)?;
    let ceremony = take_ceremony(ctx, &body.ceremony, now)?;
    let cred = &body.credential;
    let wa = webauthn(ctx.config)?;
    let cred_id = cred.get_credential_id();
    if cred_id.is_empty() || cred_id.len() > MAX_CREDENTIAL_ID_BYTES {
        return Err(refused("no such passkey"));
    }
    let (user, result) = match ceremony {
        Ceremony::Login { user, state } => {
            let result = wa.finish_passkey_authentication(cred, &state).map_err(|e| refused(&e.to_string()))?;
            (user, result)
        }
        Ceremony::Discover { state } => {
            let (handle, _) = wa.identify_discoverable_authentication(cred).map_err(|e| refused(&e.to_string()))?;
            let owner = kv::get(ctx.store, KIND_KEY_OWNER, &hex(cred_id), now).map_err(store_error)?;
            let user = owner.and_then(|o| String::from_utf8(o).ok()).ok_or_else(|| refused("no such passkey"))?;
            let known = kv::get(ctx.store, KIND_HANDLE, &user, now).map_err(store_error)?;
            let known = known.map(|raw| decode::<Handle>(&raw, "user handle")).transpose()?;
            if known.map(|h| h.handle) != Some(handle) {
                return Err(refused("the passkey does not belong to its user handle"));
            }
            let raw = kv::get(ctx.store, KIND_KEY, &key_of(&user, cred_id), now).map_err(store_error)?;
            let key: StoredKey = decode(&raw.ok_or_else(|| refused("no such passkey"))?, "passkey")?;
            let result = wa
                .finish_discoverable_authentication_v2(cred, state, &key.passkey)
                .map_err(|e| refused(&e.to_string()))?;
            (user, result)
        }
        Ceremony::Register { .. } => return Err(invalid_ceremony()),
    };
    // The library compared the counter with the one the ceremony started
    // from; compare again with the stored one, in the writing transaction,
    // so two sign-ins racing with one cloned key cannot both pass.
    let key = key_of(&user, result.cred_id());
    let counter = result.counter();
    let outcome = crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        let Some(raw) = kv.get(KIND_KEY, &key)? else {
            return Ok(Err(refused("no such passkey")));
        };
        let mut stored: StoredKey = match serde_json::from_slice(&raw) {
            Ok(s) => s,
            Err(e) => return Ok(Err(AuthReply::error(500, "internal", &format!("damaged passkey: {e}")))),
        };
        if (counter > 0 || stored.counter > 0) && counter <= stored.counter {
            return Ok(Err(refused("the sign counter went backwards: the passkey may have been copied")));
        }
        stored.passkey.update_credential(&result);
        stored.counter = counter;
        stored.last_used_ms = now;
        match serde_json::to_vec(&stored) {
            Ok(v) => kv.put(KIND_KEY, &key, &v, 0)?,
            Err(e) => return Ok(Err(AuthReply::error(500, "internal", &format!("cannot encode: {e}")))),
        }
        Ok(Ok(()))
    })
    .map_err(store_error)?;
    outcome?;
    session(ctx, &user)
}

/// Roomcast's own tokens for `user`, with the name for the page.
fn session(ctx: &Ctx, user: &str) -> Reply {
    let mut tokens = accounts::issue_session(ctx, user)?;
    if let Some(map) = tokens.as_object_mut() {
        map.insert("user".into(), serde_json::Value::String(user.to_string()));
    }
    Ok(AuthReply::json(200, &tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rp_id: &str, origin: Option<&str>) -> Config {
        Config { webauthn_rp_id: rp_id.to_string(), webauthn_origin: origin.map(str::to_string), ..Config::default() }
    }

    #[test]
    fn relying_party_defaults_and_refusals() {
        let (id, origin) = relying_party(&config("localhost", None)).unwrap();
        assert_eq!((id.as_str(), origin.as_str()), ("localhost", "http://localhost:8080/"));
        let (_, origin) = relying_party(&config("example.com", None)).unwrap();
        assert_eq!(origin.as_str(), "https://example.com/");
        assert!(relying_party(&config("example.com", Some("https://chat.example.com:8443"))).is_ok());
        for (rp, origin) in [
            ("Example.com", None),
            ("https://example.com", None),
            ("example.com:443", None),
            ("", None),
            ("a..b", None),
            ("example.com", Some("https://evilexample.com")),
            ("example.com", Some("https://example.org")),
            ("example.com", Some("http://example.com")),
            ("example.com", Some("https://example.com/path")),
            ("example.com", Some("https://u@example.com")),
            ("example.com", Some("ftp://example.com")),
            ("example.com", Some("not a url")),
        ] {
            assert!(relying_party(&config(rp, origin)).is_err(), "{rp:?} {origin:?}");
        }
    }

    #[test]
    fn ceremony_ids_have_one_shape() {
        let id = new_ceremony_id().unwrap();
        assert!(ceremony_id_ok(&id), "{id}");
        assert_ne!(id, new_ceremony_id().unwrap());
        for bad in ["", "00", &id.to_uppercase(), &format!("{id}0"), &format!("{}é", &id[..30])] {
            assert!(!ceremony_id_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn keys_of_one_user_do_not_share_a_prefix_with_another() {
        // "a/b" must not list under "a/": names are hex, which holds no '/'.
        let a = key_of("a", &[1]);
        let ab = key_of("a/b", &[1]);
        let prefix = format!("{}/", hex(b"a"));
        assert!(a.starts_with(&prefix));
        assert!(!ab.starts_with(&prefix));
    }
}
