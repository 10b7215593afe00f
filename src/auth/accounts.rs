//! Accounts: `/v1/auth/register`, `login`, `refresh`, `logout`; password
//! hashing, refresh-token families and the failed-login counters.
//!
//! Everything here runs on an auth worker, so hashing and waiting on
//! store-writer are fine. Identity state, in the kv tables:
//! - `user/<name>`: `{"pw": PHC string or null}` (null: the user signs in
//!   through a provider or a passkey, never with a password).
//! - `refresh/<sha-256 of the token, hex>`: `{"user", "family", "spent",
//!   "exp"}`. The token itself is never stored: a copy of the file does not
//!   hand out sessions.
//! - `family/<id>`: `{"user", "revoked", "n", "exp"}`. A sign-in starts a
//!   family; every refresh spends one token and issues the next in the same
//!   family, in one store-writer job. Spent tokens stay (until the family
//!   expires) so that one presented again is recognised as stolen: the
//!   family is revoked, and the thief's and the owner's tokens all stop
//!   working. A family lives [`REFRESH_TTL`] from its sign-in; its entries
//!   carry that expiry and are pruned in slices by store-writer.
//! - `rate/...`: the counters of [`ratelimit`].
//!
//! Unknown users and wrong passwords must look the same from outside: same
//! status and body, and one argon2id verification each (against a dummy
//! hash for a user that does not exist), so timing does not tell them apart.

use std::time::Duration;

use crate::proto::http::Method;
use crate::store::kv::{self, Kv};
use crate::store::StoreError;

use super::password::{self, Passwords};
use super::ratelimit::{self, Limit, Limited};
use super::service::{AuthReply, AuthRequest, Ctx};

/// Access tokens minted here last this long.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// A refresh-token family (one sign-in) lasts this long, however often it
/// is refreshed; then the user signs in again.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Refreshes one family may do (one every 15 minutes for 30 days is 2880):
/// bounds the spent tokens one sign-in leaves in the store.
pub const MAX_ROTATIONS: u32 = 10_000;

/// Failed logins per account name (known or not, so the answer does not
/// tell which names exist), from any address.
pub const LOGIN_FAILS_PER_USER: Limit = Limit { max: 10, window: Duration::from_secs(15 * 60) };
/// Failed logins per client address (IPv6: per /64).
pub const LOGIN_FAILS_PER_IP: Limit = Limit { max: 10, window: Duration::from_secs(15 * 60) };
/// Registration attempts per client address.
pub const REGISTER_PER_IP: Limit = Limit { max: 20, window: Duration::from_secs(3600) };
/// Refresh and logout requests per client address.
pub const REFRESH_PER_IP: Limit = Limit { max: 120, window: Duration::from_secs(60) };

/// Longest refresh token accepted for lookup (ours are 64 hex digits).
const MAX_REFRESH_TOKEN_BYTES: usize = 256;

const USER: &str = "user";
const REFRESH: &str = "refresh";
const FAMILY: &str = "family";

const SCOPE_LOGIN_USER: &str = "login-user";
const SCOPE_LOGIN_IP: &str = "login-ip";
const SCOPE_REGISTER_IP: &str = "register-ip";
const SCOPE_REFRESH_IP: &str = "refresh-ip";

/// Why a request is refused; each maps to one answer.
#[derive(Debug)]
enum Refusal {
    /// Malformed input (400).
    Bad(&'static str),
    /// Wrong credentials or an unusable refresh token (401).
    Unauthorized(&'static str),
    /// The username is taken (409).
    Taken,
    /// Over a rate limit (429 with `Retry-After`).
    Limited(Limited),
    /// The store failed (500).
    Store(StoreError),
    /// Anything else on our side (500).
    Internal(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal::Store(e)
    }
}

impl From<Limited> for Refusal {
    fn from(l: Limited) -> Refusal {
        Refusal::Limited(l)
    }
}

impl Refusal {
    fn reply(self) -> AuthReply {
        match self {
            Refusal::Bad(m) => AuthReply::error(400, "bad_request", m),
            Refusal::Unauthorized(m) => AuthReply::error(401, "unauthorized", m),
            Refusal::Taken => AuthReply::error(409, "conflict", "that username is taken"),
            Refusal::Limited(l) => l.reply(),
            Refusal::Store(e) => AuthReply::error(500, "internal", &format!("storage: {e}")),
            Refusal::Internal(m) => AuthReply::error(500, "internal", &m),
        }
    }
}

/// The answer to a failed login, the same whether the user exists or not.
const LOGIN_FAILED: &str = "wrong username or password";

pub fn handle(ctx: &Ctx, r: &AuthRequest, rest: &str) -> AuthReply {
    if !matches!(rest, "register" | "login" | "refresh" | "logout") {
        return AuthReply::error(404, "not_found", "no such endpoint");
    }
    if r.req.method != Method::Post {
        return AuthReply::error(405, "method_not_allowed", "use POST").with_header("Allow", "POST".to_string());
    }
    // JSON only: a cross-site form cannot send it without a preflight.
    let json = r.req.header("content-type").is_some_and(|v| {
        let v = String::from_utf8_lossy(v).to_ascii_lowercase();
        v == "application/json" || v.starts_with("application/json;")
    });
    if !json {
        return Refusal::Bad("send a JSON body with Content-Type: application/json").reply();
    }
    let now = crate::proto::now_ms();
    let pw = password::argon2id();
    let out = match rest {
        "register" => register(ctx, pw, &r.req.body, r.ip, now).map(|v| (201, v)),
        "login" => login(ctx, pw, &r.req.body, r.ip, now).map(|v| (200, v)),
        "refresh" => refresh(ctx, &r.req.body, r.ip, now).map(|v| (200, v)),
        _ => logout(ctx, &r.req.body, r.ip, now).map(|v| (200, v)),
    };
    match out {
        Ok((status, v)) => AuthReply::json(status, &v),
        Err(e) => e.reply(),
    }
}

// --------------------------------------------------------------------------- records

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UserRec {
    #[serde(default)]
    pw: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TokenRec {
    user: String,
    family: String,
    spent: bool,
    /// The family's expiry, ms since the epoch.
    exp: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FamilyRec {
    user: String,
    revoked: bool,
    /// Tokens issued in the family so far.
    n: u32,
    exp: u64,
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Db(format!("encoding an identity record: {e}")))
}

/// A record read back from the file; one that does not decode counts as
/// absent (the file is as untrusted as the network).
fn decode<T: serde::de::DeserializeOwned>(raw: Option<Vec<u8>>) -> Option<T> {
    raw.and_then(|v| serde_json::from_slice(&v).ok())
}

fn random_hex(n: usize) -> Result<String, Refusal> {
    super::random_hex(n).map_err(Refusal::Internal)
}

/// The key a refresh token is stored under.
fn token_hash(token: &str) -> String {
    super::secret::hex_encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// --------------------------------------------------------------------------- sessions

/// A new refresh token, made before its write job (randomness can fail;
/// a job should only fail on storage).
struct NewToken {
    raw: String,
    hash: String,
}

impl NewToken {
    fn make() -> Result<NewToken, Refusal> {
        let raw = random_hex(32)?;
        let hash = token_hash(&raw);
        Ok(NewToken { raw, hash })
    }
}

/// Starts a family for `user` holding `first`, inside a write job.
fn start_family(kv: &mut Kv, user: &str, family: &str, first: &NewToken, now_ms: u64) -> Result<(), StoreError> {
    let exp = now_ms.saturating_add(millis(REFRESH_TTL));
    let fam = FamilyRec { user: user.to_string(), revoked: false, n: 1, exp };
    kv.put(FAMILY, family, &encode(&fam)?, exp)?;
    let tok = TokenRec { user: user.to_string(), family: family.to_string(), spent: false, exp };
    kv.put(REFRESH, &first.hash, &encode(&tok)?, exp)
}

/// Marks `family` revoked; its tokens stay until it expires, and all fail.
fn revoke(kv: &mut Kv, family: &str, fam: &FamilyRec) -> Result<(), StoreError> {
    let dead = FamilyRec { revoked: true, ..fam.clone() };
    kv.put(FAMILY, family, &encode(&dead)?, fam.exp)
}

/// The session body: an access token for `user` and `refresh`.
fn session_json(ctx: &Ctx, user: &str, refresh: &str) -> Result<serde_json::Value, Refusal> {
    let access =
        ctx.auth.mint(user, ACCESS_TTL, None).map_err(|e| Refusal::Internal(format!("cannot sign a token: {e}")))?;
    Ok(serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ACCESS_TTL.as_secs(),
        "refresh_token": refresh,
    }))
}

/// Creates user `name` without a password (one who signs in through a
/// provider or a passkey) unless it exists; inside a write job.
/// A name someone may sign up with: a user id without `:`, which is kept
/// for the names of users signed in by a provider (`<provider>:<sub>`),
/// so nobody can register a name a provider's user will get.
pub fn check_new_name(name: &str) -> Result<(), &'static str> {
    crate::auth::check_user_id(name)?;
    if name.contains(':') {
        return Err("`:` is kept for users of identity providers; pick a name without it");
    }
    Ok(())
}

/// Counts one registration attempt of address `ip` (a sign-up by another
/// route, such as a passkey, counts like a password one): refused without
/// a write when the address is over [`REGISTER_PER_IP`].
pub fn count_registration(
    ctx: &Ctx,
    ip: Option<std::net::IpAddr>,
    now: u64,
) -> Result<Result<(), Limited>, StoreError> {
    ratelimit::count(ctx.store, ctx.writer, (SCOPE_REGISTER_IP, ratelimit::ip_key(ip)), REGISTER_PER_IP, now)
}

/// Whether user `name` exists (with a password or not), inside a write job.
pub fn user_exists(kv: &Kv, name: &str) -> Result<bool, StoreError> {
    Ok(kv.get(USER, name)?.is_some())
}

/// [`user_exists`] in a read of its own, on any thread.
pub fn user_exists_now(store: &crate::store::Store, name: &str, now_ms: u64) -> Result<bool, StoreError> {
    Ok(crate::store::kv::get(store, USER, name, now_ms)?.is_some())
}

pub fn ensure_user(kv: &mut Kv, name: &str) -> Result<(), StoreError> {
    if kv.get(USER, name)?.is_none() {
        kv.put(USER, name, &encode(&UserRec { pw: None })?, 0)?;
    }
    Ok(())
}

/// The tokens a successful sign-in ends with, as the JSON body of the
/// answer: `{"access_token", "token_type", "expires_in", "refresh_token"}`.
/// Starts a refresh-token family (one store-writer job).
pub fn issue_session(ctx: &Ctx, user: &str) -> Result<serde_json::Value, AuthReply> {
    issue(ctx, user, crate::proto::now_ms()).map_err(Refusal::reply)
}

fn issue(ctx: &Ctx, user: &str, now: u64) -> Result<serde_json::Value, Refusal> {
    crate::auth::check_user_id(user).map_err(Refusal::Bad)?;
    let first = NewToken::make()?;
    let family = random_hex(16)?;
    let (u, f, h) = (user.to_string(), family, first.hash.clone());
    crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        start_family(&mut kv, &u, &f, &NewToken { raw: String::new(), hash: h }, now)
    })?;
    session_json(ctx, user, &first.raw)
}

// --------------------------------------------------------------------------- endpoints

#[derive(serde::Deserialize)]
struct Creds {
    username: String,
    password: String,
}

#[derive(serde::Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

/// The body as `T`. The parser's message is not passed on: it can quote
/// the input, and the input holds a password.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], shape: &'static str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|_| Refusal::Bad(shape))
}

const CREDS_SHAPE: &str = r#"the body must be {"username": "...", "password": "..."}"#;
const REFRESH_SHAPE: &str = r#"the body must be {"refresh_token": "..."}"#;

fn check_password_len(p: &str) -> Result<(), Refusal> {
    if p.len() < password::MIN_BYTES || p.len() > password::MAX_BYTES {
        return Err(Refusal::Bad("passwords are 8 to 1024 bytes"));
    }
    Ok(())
}

fn register(
    ctx: &Ctx,
    pw: &dyn Passwords,
    body: &[u8],
    ip: Option<std::net::IpAddr>,
    now: u64,
) -> Result<serde_json::Value, Refusal> {
    let c: Creds = parse(body, CREDS_SHAPE)?;
    check_new_name(&c.username).map_err(Refusal::Bad)?;
    check_password_len(&c.password)?;
    let ipk = ratelimit::ip_key(ip);
    ratelimit::check(ctx.store, SCOPE_REGISTER_IP, &ipk, REGISTER_PER_IP, now)??;

    enum Outcome {
        Done,
        Taken,
        Limited(Limited),
    }
    // A taken name is answered before hashing, but still counted.
    let taken = kv::get(ctx.store, USER, &c.username, now)?.is_some();
    let phc =
        if taken { None } else { Some(pw.hash(c.password.as_bytes()).map_err(|e| Refusal::Internal(e.to_string()))?) };
    let first = NewToken::make()?;
    let family = random_hex(16)?;
    let (name, hash) = (c.username.clone(), first.hash.clone());
    let outcome = crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        if let Err(l) = ratelimit::hit(&mut kv, SCOPE_REGISTER_IP, &ipk, REGISTER_PER_IP, now)? {
            return Ok(Outcome::Limited(l));
        }
        let Some(phc) = phc else { return Ok(Outcome::Taken) };
        if kv.get(USER, &name)?.is_some() {
            return Ok(Outcome::Taken);
        }
        kv.put(USER, &name, &encode(&UserRec { pw: Some(phc) })?, 0)?;
        start_family(&mut kv, &name, &family, &NewToken { raw: String::new(), hash }, now)?;
        Ok(Outcome::Done)
    })?;
    match outcome {
        Outcome::Done => session_json(ctx, &c.username, &first.raw),
        Outcome::Taken => Err(Refusal::Taken),
        Outcome::Limited(l) => Err(Refusal::Limited(l)),
    }
}

/// The longer of two refusals, if any.
fn either(a: Result<(), Limited>, b: Result<(), Limited>) -> Result<(), Limited> {
    match (a, b) {
        (Err(x), Err(y)) => Err(if x.retry_after_secs >= y.retry_after_secs { x } else { y }),
        (Err(x), _) | (_, Err(x)) => Err(x),
        _ => Ok(()),
    }
}

fn login(
    ctx: &Ctx,
    pw: &dyn Passwords,
    body: &[u8],
    ip: Option<std::net::IpAddr>,
    now: u64,
) -> Result<serde_json::Value, Refusal> {
    let c: Creds = parse(body, CREDS_SHAPE)?;
    // No such user can exist: saying so tells nothing.
    crate::auth::check_user_id(&c.username).map_err(Refusal::Bad)?;
    if c.password.len() > password::MAX_BYTES {
        return Err(Refusal::Bad("passwords are 8 to 1024 bytes"));
    }
    let ipk = ratelimit::ip_key(ip);
    // Refused before hashing, whether or not the password is right.
    either(
        ratelimit::check(ctx.store, SCOPE_LOGIN_USER, &c.username, LOGIN_FAILS_PER_USER, now)?,
        ratelimit::check(ctx.store, SCOPE_LOGIN_IP, &ipk, LOGIN_FAILS_PER_IP, now)?,
    )?;

    let stored: Option<UserRec> = decode(kv::get(ctx.store, USER, &c.username, now)?);
    // One verification on every path: a missing user or one without a
    // password costs the same as a wrong password.
    let ok = match stored.and_then(|u| u.pw) {
        Some(phc) => pw.verify(&phc, c.password.as_bytes()),
        None => {
            let _ = pw.verify(pw.dummy(), c.password.as_bytes());
            false
        }
    };

    let name = c.username.clone();
    if !ok {
        crate::store::write_job(ctx.writer, move |txn| {
            let mut kv = Kv::open(txn, now)?;
            ratelimit::record(&mut kv, SCOPE_LOGIN_USER, &name, LOGIN_FAILS_PER_USER, now)?;
            ratelimit::record(&mut kv, SCOPE_LOGIN_IP, &ipk, LOGIN_FAILS_PER_IP, now)?;
            Ok(())
        })?;
        return Err(Refusal::Unauthorized(LOGIN_FAILED));
    }

    let first = NewToken::make()?;
    let family = random_hex(16)?;
    let hash = first.hash.clone();
    let verdict = crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        // Failures counted by other workers while this one hashed.
        let limited = either(
            ratelimit::check_kv(&kv, SCOPE_LOGIN_USER, &name, LOGIN_FAILS_PER_USER, now)?,
            ratelimit::check_kv(&kv, SCOPE_LOGIN_IP, &ipk, LOGIN_FAILS_PER_IP, now)?,
        );
        if limited.is_err() {
            return Ok(limited);
        }
        // The account's failures are forgiven; the address's are not.
        ratelimit::reset(&mut kv, SCOPE_LOGIN_USER, &name)?;
        start_family(&mut kv, &name, &family, &NewToken { raw: String::new(), hash }, now)?;
        Ok(Ok(()))
    })?;
    verdict?;
    session_json(ctx, &c.username, &first.raw)
}

/// What presenting a refresh token found.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// Live and unspent: spent now, and `next` issued in its family.
    Rotated {
        user: String,
    },
    /// Unknown, expired, or of a revoked or exhausted family.
    Dead,
    /// Spent already: the family is revoked now.
    Reused,
    Limited(Limited),
}

fn read_token(kv: &Kv, hash: &str) -> Result<Option<(TokenRec, FamilyRec)>, StoreError> {
    let Some(tok) = decode::<TokenRec>(kv.get(REFRESH, hash)?) else { return Ok(None) };
    let Some(fam) = decode::<FamilyRec>(kv.get(FAMILY, &tok.family)?) else { return Ok(None) };
    // A token must name its own family's user; anything else is damage.
    Ok((fam.user == tok.user).then_some((tok, fam)))
}

fn refresh_token_from(body: &[u8]) -> Result<String, Refusal> {
    let b: RefreshBody = parse(body, REFRESH_SHAPE)?;
    if b.refresh_token.is_empty() || b.refresh_token.len() > MAX_REFRESH_TOKEN_BYTES {
        return Err(Refusal::Unauthorized("unknown or expired refresh token"));
    }
    Ok(b.refresh_token)
}

/// Spends `presented` and issues `next` in its family: one write job, so
/// two workers racing with the same token cannot both rotate it.
fn rotate(
    ctx: &Ctx,
    presented: &str,
    next: &NewToken,
    ip: Option<std::net::IpAddr>,
    now: u64,
) -> Result<Presented, Refusal> {
    let (hash, next_hash, ipk) = (token_hash(presented), next.hash.clone(), ratelimit::ip_key(ip));
    // Refused without a write (a commit) when the address is over its limit.
    if let Err(l) = ratelimit::check(ctx.store, SCOPE_REFRESH_IP, &ipk, REFRESH_PER_IP, now)? {
        return Ok(Presented::Limited(l));
    }
    Ok(crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        if let Err(l) = ratelimit::hit(&mut kv, SCOPE_REFRESH_IP, &ipk, REFRESH_PER_IP, now)? {
            return Ok(Presented::Limited(l));
        }
        let Some((tok, fam)) = read_token(&kv, &hash)? else { return Ok(Presented::Dead) };
        if fam.revoked || fam.n >= MAX_ROTATIONS {
            return Ok(Presented::Dead);
        }
        if tok.spent {
            revoke(&mut kv, &tok.family, &fam)?;
            return Ok(Presented::Reused);
        }
        let spent = TokenRec { spent: true, ..tok.clone() };
        kv.put(REFRESH, &hash, &encode(&spent)?, fam.exp)?;
        let fresh = TokenRec { spent: false, ..tok.clone() };
        kv.put(REFRESH, &next_hash, &encode(&fresh)?, fam.exp)?;
        let grown = FamilyRec { n: fam.n.saturating_add(1), ..fam.clone() };
        kv.put(FAMILY, &tok.family, &encode(&grown)?, fam.exp)?;
        Ok(Presented::Rotated { user: tok.user })
    })?)
}

fn refresh(ctx: &Ctx, body: &[u8], ip: Option<std::net::IpAddr>, now: u64) -> Result<serde_json::Value, Refusal> {
    let presented = refresh_token_from(body)?;
    let next = NewToken::make()?;
    match rotate(ctx, &presented, &next, ip, now)? {
        Presented::Rotated { user } => session_json(ctx, &user, &next.raw),
        Presented::Dead => Err(Refusal::Unauthorized("unknown or expired refresh token")),
        Presented::Reused => {
            Err(Refusal::Unauthorized("refresh token used twice; every token of this sign-in is revoked"))
        }
        Presented::Limited(l) => Err(Refusal::Limited(l)),
    }
}

fn logout(ctx: &Ctx, body: &[u8], ip: Option<std::net::IpAddr>, now: u64) -> Result<serde_json::Value, Refusal> {
    let presented = refresh_token_from(body)?;
    let (hash, ipk) = (token_hash(&presented), ratelimit::ip_key(ip));
    ratelimit::check(ctx.store, SCOPE_REFRESH_IP, &ipk, REFRESH_PER_IP, now)?.map_err(Refusal::Limited)?;
    let revoked = crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        if let Err(l) = ratelimit::hit(&mut kv, SCOPE_REFRESH_IP, &ipk, REFRESH_PER_IP, now)? {
            return Ok(Err(l));
        }
        match read_token(&kv, &hash)? {
            Some((tok, fam)) if !fam.revoked => {
                revoke(&mut kv, &tok.family, &fam)?;
                Ok(Ok(true))
            }
            _ => Ok(Ok(false)),
        }
    })??;
    Ok(serde_json::json!({ "revoked": revoked }))
}

#[cfg(test)]
mod tests;
