//! OAuth 2.0 authorization code flow with PKCE (S256), roomcast as the
//! client of the providers in the config file (`[oauth.NAME]`, see
//! `crate::config::oauth`).
//!
//! - `GET /v1/auth/oauth/<name>/start?redirect=/path` makes a random state
//!   and PKCE verifier, keeps them in redb (kind `oauth-state`, with the
//!   provider and the sanitised redirect, for `oauth-state-ttl`) and sends
//!   the browser to the provider.
//! - `GET /v1/auth/oauth/<name>/callback?code=..&state=..` spends the
//!   state (read and removed in one write job, so a replay finds nothing),
//!   redeems the code at the token endpoint with the verifier, asks the
//!   userinfo endpoint for the subject, links `issuer + subject` to a
//!   roomcast user (kind `oauth-link`; a new subject gets a new user) and
//!   ends with roomcast's own tokens in the redirect's fragment, never its
//!   query, so they reach no server log.
//!
//! Discovered endpoints are cached in redb (kind `oauth-discovery`) for an
//! hour. Every provider request runs here, on an auth worker, through the
//! small blocking client in [`client`] (one deadline, bounded answers, no
//! redirects followed). Everything the provider and the browser send is
//! hostile; nothing here panics on it.

use std::time::Duration;

use base64::Engine;

use crate::config::oauth::{check_url, ClientAuth, OauthProvider};
use crate::proto::http::Method;
use crate::store::kv::{self, Kv};
use crate::store::StoreError;

use super::ratelimit;
use super::service::{AuthReply, AuthRequest, Ctx};

pub mod client;

/// Kinds of entries in the identity tables.
const STATE_KIND: &str = "oauth-state";
const LINK_KIND: &str = "oauth-link";
const DISCOVERY_KIND: &str = "oauth-discovery";

/// Random bytes in a state and in a PKCE verifier (256 bits each; the
/// verifier's 43 base64url characters are RFC 7636's minimum length).
const RANDOM_BYTES: usize = 32;
/// Length of their base64url text.
const RANDOM_CHARS: usize = 43;
/// Longest redirect kept.
const MAX_REDIRECT_BYTES: usize = 1024;
/// Largest answer read from a provider.
const MAX_ANSWER_BYTES: usize = 256 << 10;
/// Longest subject accepted.
const MAX_SUB_BYTES: usize = 255;
/// How long discovered endpoints are reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// Why a sign-in failed; each is one HTTP status and error code.
#[derive(Debug, thiserror::Error)]
enum OauthError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("only GET is served here")]
    Method,
    /// Unknown, expired, spent, malformed or another provider's state.
    #[error("{0}")]
    State(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
    /// The provider refused (the user said no, or the code or verifier was
    /// wrong).
    #[error("the provider refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Provider(String),
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("too many sign-ins started from this address")]
    Limited(super::ratelimit::Limited),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl OauthError {
    fn reply(&self) -> AuthReply {
        let (status, code) = match self {
            OauthError::NotFound(_) => (404, "not_found"),
            OauthError::Method => (405, "method_not_allowed"),
            OauthError::State(_) => (400, "invalid_state"),
            OauthError::BadRequest(_) => (400, "bad_request"),
            OauthError::Refused(_) => (400, "oauth_refused"),
            OauthError::Provider(_) => (502, "provider_error"),
            OauthError::Timeout(_) => (504, "provider_timeout"),
            OauthError::Limited(l) => return l.reply(),
            OauthError::Store(_) => (500, "internal"),
        };
        let reply = AuthReply::error(status, code, &self.to_string());
        match self {
            OauthError::Method => reply.with_header("Allow", "GET".to_string()),
            _ => reply,
        }
    }
}

/// What a state stands for, as stored (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Pending {
    provider: String,
    verifier: String,
    redirect: String,
    /// The value of the cookie set on the browser that started the
    /// sign-in: only that browser may finish it (see [`binding_cookie`]).
    binding: String,
}

/// The cookie that binds a sign-in to the browser that started it, one per
/// sign-in (named after the first characters of its state, so several
/// sign-ins can run side by side). Without it, a callback URL is a bearer
/// credential: an attacker could send a victim their own callback (the
/// victim is signed in as the attacker), or finish a victim's sign-in from a
/// leaked callback URL. `SameSite=Lax` lets it come back on the provider's
/// top-level redirect; it is `Secure` over TLS.
fn binding_cookie(state: &str) -> String {
    let short: String = state.chars().take(16).collect();
    format!("roomcast-oauth-{short}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(r: &AuthRequest, name: &str) -> Option<String> {
    r.req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A provider's endpoints, configured or discovered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Endpoints {
    authorization: String,
    token: String,
    userinfo: String,
}

/// Serves `/v1/auth/oauth/<name>/start` and `/callback`; `rest` is the path
/// after `/v1/auth/`.
pub fn handle(ctx: &Ctx, r: &AuthRequest, rest: &str) -> AuthReply {
    match route(ctx, r, rest) {
        Ok(reply) => reply,
        Err(e) => e.reply(),
    }
}

fn route(ctx: &Ctx, r: &AuthRequest, rest: &str) -> Result<AuthReply, OauthError> {
    let mut parts = rest.split('/');
    let (Some("oauth"), Some(name), Some(action), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OauthError::NotFound("no such endpoint"));
    };
    let provider =
        ctx.config.oauth.iter().find(|p| p.name == name).ok_or(OauthError::NotFound("no such OAuth provider"))?;
    if !matches!(action, "start" | "callback") {
        return Err(OauthError::NotFound("no such endpoint"));
    }
    if r.req.method != Method::Get {
        return Err(OauthError::Method);
    }
    match action {
        "start" => start(ctx, r, provider),
        _ => callback(ctx, r, provider),
    }
}

fn start(ctx: &Ctx, r: &AuthRequest, p: &OauthProvider) -> Result<AuthReply, OauthError> {
    let redirect = safe_redirect(r.req.query_param("redirect").as_deref());
    let state = random_text()?;
    let verifier = random_text()?;
    let binding = random_text()?;
    let pending = Pending { provider: p.name.clone(), verifier: verifier.clone(), redirect, binding: binding.clone() };
    let value = serde_json::to_vec(&pending).map_err(|e| OauthError::Provider(e.to_string()))?;
    let now = crate::proto::now_ms();
    let ttl = u64::try_from(ctx.config.oauth_state_ttl.as_millis()).unwrap_or(u64::MAX);
    let expires = now.saturating_add(ttl).max(1);
    // Counted first: an address over its limit costs no provider call.
    ratelimit::keep_ceremony(ctx.store, ctx.writer, r.ip, (STATE_KIND, state.clone()), value, expires, now)?
        .map_err(OauthError::Limited)?;
    let endpoints = endpoints(ctx, p)?;
    let mut q = FormBody::default();
    q.add("response_type", "code");
    q.add("client_id", &p.client_id);
    q.add("redirect_uri", &p.redirect_uri);
    q.add("scope", &p.scopes.join(" "));
    q.add("state", &state);
    q.add("code_challenge", &challenge(&verifier));
    q.add("code_challenge_method", "S256");
    let sep = if endpoints.authorization.contains('?') { '&' } else { '?' };
    let secure = if r.tls { "; Secure" } else { "" };
    let set = format!(
        "{}={binding}; Path=/v1/auth/oauth/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        binding_cookie(&state),
        ctx.config.oauth_state_ttl.as_secs().max(1)
    );
    Ok(AuthReply::redirect(format!("{}{sep}{}", endpoints.authorization, q.0)).with_header("Set-Cookie", set))
}

fn callback(ctx: &Ctx, r: &AuthRequest, p: &OauthProvider) -> Result<AuthReply, OauthError> {
    let state = r.req.query_param("state").ok_or(OauthError::State("the callback carries no state"))?;
    if state.len() != RANDOM_CHARS || !state.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(OauthError::State("this state was not made here"));
    }
    let now = crate::proto::now_ms();
    // Spent whatever happens next: a state is good for one callback.
    let spent = kv::take_once(ctx.store, ctx.writer, STATE_KIND, &state, now)?;
    let pending: Pending = spent
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or(OauthError::State("unknown, expired or already used state; start the sign-in again"))?;
    if pending.provider != p.name {
        return Err(OauthError::State("this sign-in was started with another provider"));
    }
    let presented = cookie(r, &binding_cookie(&state)).unwrap_or_default();
    if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), pending.binding.as_bytes()).is_err() {
        return Err(OauthError::State("this sign-in was started in another browser; start it again here"));
    }
    if let Some(error) = r.req.query_param("error") {
        return Err(OauthError::Refused(printable(&error, 100)));
    }
    let code = r.req.query_param("code").filter(|c| !c.is_empty()).ok_or(OauthError::BadRequest("no code"))?;
    let endpoints = endpoints(ctx, p)?;
    let access = redeem(ctx, p, &endpoints, &code, &pending.verifier)?;
    let sub = subject(ctx, &endpoints, &access)?;
    let user = link(ctx, p, &sub)?;
    let session = match super::accounts::issue_session(ctx, &user) {
        Ok(v) => v,
        Err(reply) => return Ok(reply),
    };
    let mut fragment = FormBody::default();
    if let Some(obj) = session.as_object() {
        for (k, v) in obj {
            match v {
                serde_json::Value::String(s) => fragment.add(k, s),
                serde_json::Value::Number(n) => fragment.add(k, &n.to_string()),
                _ => {}
            }
        }
    }
    let clear = format!("{}=; Path=/v1/auth/oauth/; Max-Age=0; HttpOnly; SameSite=Lax", binding_cookie(&state));
    Ok(AuthReply::redirect(format!("{}#{}", pending.redirect, fragment.0)).with_header("Set-Cookie", clear))
}

/// The code and verifier exchanged for the provider's access token.
fn redeem(ctx: &Ctx, p: &OauthProvider, e: &Endpoints, code: &str, verifier: &str) -> Result<String, OauthError> {
    let mut form = FormBody::default();
    form.add("grant_type", "authorization_code");
    form.add("code", code);
    form.add("redirect_uri", &p.redirect_uri);
    form.add("code_verifier", verifier);
    let secret = p.client_secret.as_ref().map_or("", |s| s.0.as_str());
    let mut headers = Vec::new();
    match p.client_auth {
        ClientAuth::SecretBasic => {
            // RFC 6749 2.3.1: each part form-encoded, then Basic.
            let pair = format!("{}:{}", form_encode(&p.client_id), form_encode(secret));
            headers
                .push(("Authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))));
        }
        ClientAuth::SecretPost => {
            form.add("client_id", &p.client_id);
            form.add("client_secret", secret);
        }
        ClientAuth::None => form.add("client_id", &p.client_id),
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = Some(("application/x-www-form-urlencoded", form.0.as_bytes()));
    let resp = call(ctx, "POST", &e.token, &headers, body)?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
    match resp.status {
        200 => {}
        400 | 401 => {
            let error =
                json.as_ref().and_then(|j| j.get("error")).and_then(|v| v.as_str()).unwrap_or("no reason given");
            return Err(OauthError::Refused(printable(error, 100)));
        }
        s => return Err(OauthError::Provider(format!("the token endpoint answered {s}"))),
    }
    json.as_ref()
        .and_then(|j| j.get("access_token"))
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty() && t.len() <= 8192 && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .ok_or_else(|| OauthError::Provider("the token endpoint gave no usable access_token".into()))
}

/// The subject the provider's userinfo endpoint names for `access`.
fn subject(ctx: &Ctx, e: &Endpoints, access: &str) -> Result<String, OauthError> {
    let bearer = format!("Bearer {access}");
    let resp = call(ctx, "GET", &e.userinfo, &[("Authorization", &bearer)], None)?;
    if resp.status != 200 {
        return Err(OauthError::Provider(format!("the userinfo endpoint answered {}", resp.status)));
    }
    let json: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|_| OauthError::Provider("the userinfo endpoint's answer is not JSON".into()))?;
    json.get("sub")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty() && s.len() <= MAX_SUB_BYTES && !s.chars().any(char::is_control))
        .map(str::to_string)
        .ok_or_else(|| OauthError::Provider("the userinfo answer has no usable `sub`".into()))
}

/// The roomcast user of `p`'s subject `sub`, made on first sign-in.
fn link(ctx: &Ctx, p: &OauthProvider, sub: &str) -> Result<String, OauthError> {
    // Keyed by issuer, not by the table's name: renaming a provider keeps
    // its users, and pointing a name at another issuer cannot reach them.
    let key = format!("{} {sub}", p.issuer);
    let preferred = preferred_user(&p.name, sub);
    let fallback = format!("{}:~{}", p.name, crate::auth::secret::hex_encode(&random_bytes::<12>()?));
    let now = crate::proto::now_ms();
    let user = crate::store::write_job(ctx.writer, move |txn| {
        let mut kv = Kv::open(txn, now)?;
        if let Some(name) = kv.get(LINK_KIND, &key)?.and_then(|v| String::from_utf8(v).ok()) {
            if crate::auth::check_user_id(&name).is_ok() {
                return Ok(name);
            }
        }
        let name = match preferred {
            // A name someone holds already (a password account, say) is
            // never taken over.
            Some(name) if !super::accounts::user_exists(&kv, &name)? => name,
            _ => fallback,
        };
        super::accounts::ensure_user(&mut kv, &name)?;
        kv.put(LINK_KIND, &key, name.as_bytes(), 0)?;
        Ok(name)
    })?;
    Ok(user)
}

/// `<provider>:<sub>` when the subject is short and plain; `None` (a random
/// name then) otherwise. `~` is not among the plain characters, so the two
/// forms never meet.
fn preferred_user(provider: &str, sub: &str) -> Option<String> {
    let plain = sub.len() <= 64 && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
    let name = format!("{provider}:{sub}");
    (plain && !sub.is_empty() && crate::auth::check_user_id(&name).is_ok()).then_some(name)
}

/// The provider's endpoints: those configured, the rest discovered (and
/// cached for an hour).
fn endpoints(ctx: &Ctx, p: &OauthProvider) -> Result<Endpoints, OauthError> {
    if let (Some(a), Some(t), Some(u)) = (&p.authorization_endpoint, &p.token_endpoint, &p.userinfo_endpoint) {
        return Ok(Endpoints { authorization: a.clone(), token: t.clone(), userinfo: u.clone() });
    }
    let key = format!("{} {}", p.name, p.issuer);
    let now = crate::proto::now_ms();
    let cached =
        kv::get(ctx.store, DISCOVERY_KIND, &key, now)?.and_then(|v| serde_json::from_slice::<Endpoints>(&v).ok());
    let found = match cached {
        Some(e) => e,
        None => {
            let e = discover(ctx, p)?;
            let value = serde_json::to_vec(&e).map_err(|e| OauthError::Provider(e.to_string()))?;
            let expires = now.saturating_add(DISCOVERY_TTL.as_secs().saturating_mul(1000));
            crate::store::write_job(ctx.writer, move |txn| {
                Kv::open(txn, now)?.put(DISCOVERY_KIND, &key, &value, expires)
            })?;
            e
        }
    };
    Ok(Endpoints {
        authorization: p.authorization_endpoint.clone().unwrap_or(found.authorization),
        token: p.token_endpoint.clone().unwrap_or(found.token),
        userinfo: p.userinfo_endpoint.clone().unwrap_or(found.userinfo),
    })
}

/// Reads `<issuer>/.well-known/openid-configuration`.
fn discover(ctx: &Ctx, p: &OauthProvider) -> Result<Endpoints, OauthError> {
    let url = format!("{}/.well-known/openid-configuration", p.issuer.trim_end_matches('/'));
    let resp = call(ctx, "GET", &url, &[], None)?;
    if resp.status != 200 {
        return Err(OauthError::Provider(format!("discovery at {url} answered {}", resp.status)));
    }
    let doc: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|_| OauthError::Provider(format!("discovery at {url} is not JSON")))?;
    // OpenID Connect Discovery 4.3: the document must name this issuer.
    if doc.get("issuer").and_then(|v| v.as_str()) != Some(p.issuer.as_str()) {
        return Err(OauthError::Provider(format!("discovery at {url} names another issuer")));
    }
    let https = p.issuer.starts_with("https://");
    let field = |name: &str| -> Result<String, OauthError> {
        let v = doc
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| OauthError::Provider(format!("discovery at {url} has no {name}")))?;
        // A provider on https cannot send roomcast to plain http (to a
        // loopback service, say).
        if check_url(v, true).is_err() || (https && !v.starts_with("https://")) {
            return Err(OauthError::Provider(format!("discovery at {url} has an unusable {name}")));
        }
        Ok(v.to_string())
    };
    Ok(Endpoints {
        authorization: field("authorization_endpoint")?,
        token: field("token_endpoint")?,
        userinfo: field("userinfo_endpoint")?,
    })
}

/// One request to a provider, with the configured timeout; a redirect is an
/// error (never followed).
fn call(
    ctx: &Ctx,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Result<client::Response, OauthError> {
    let timeout = ctx.config.oauth_timeout;
    let resp = client::request(method, url, headers, body, timeout, MAX_ANSWER_BYTES).map_err(|e| match e {
        client::ClientError::Timeout => OauthError::Timeout(timeout),
        other => OauthError::Provider(other.to_string()),
    })?;
    if (300..400).contains(&resp.status) {
        return Err(OauthError::Provider(format!(
            "the provider answered {} with a redirect (not followed)",
            resp.status
        )));
    }
    Ok(resp)
}

/// `redirect` if it is a local path (see [`is_local_path`]), else `/`.
pub fn safe_redirect(redirect: Option<&str>) -> String {
    match redirect {
        Some(r) if is_local_path(r) => r.to_string(),
        _ => "/".to_string(),
    }
}

/// Whether `p` (the `redirect` parameter, decoded once) is a path on this
/// server: printable ASCII without `#`, at most 1 KiB, and, as given and
/// after each further round of percent-decoding, starting with one `/` not
/// followed by `/` or `\`, with no `\`, space or control character anywhere
/// (browsers read `\` as `/`, and drop tabs and newlines). Starting with
/// `/` it has no scheme. Text still encoded after four rounds is refused,
/// and so is anything under `/v1/`: the page is where a sign-in ends.
pub fn is_local_path(p: &str) -> bool {
    if p.len() > MAX_REDIRECT_BYTES || p.contains('#') || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let mut level = p.as_bytes().to_vec();
    for _ in 0..4 {
        let local = level.first() == Some(&b'/')
            && !matches!(level.get(1), Some(b'/' | b'\\'))
            && !level.iter().any(|b| *b == b'\\' || *b == b' ' || b.is_ascii_control());
        if !local {
            return false;
        }
        let next = percent_decode(&level);
        if next == level {
            // Not back into the API: a redirect to another `/v1/` endpoint
            // (a second `start`, say) would carry the tokens in the
            // fragment on to wherever that one sends the browser.
            return !level.starts_with(b"/v1/") && level != b"/v1";
        }
        level = next;
    }
    false
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        if let [b'%', hi, lo, after @ ..] = rest {
            if let (Some(h), Some(l)) = (hex(*hi), hex(*lo)) {
                out.push(h * 16 + l);
                rest = after;
                continue;
            }
        }
        out.push(b);
        rest = tail;
    }
    out
}

/// `application/x-www-form-urlencoded` text, built pair by pair.
#[derive(Default)]
struct FormBody(String);

impl FormBody {
    fn add(&mut self, k: &str, v: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(&form_encode(k));
        self.0.push('=');
        self.0.push_str(&form_encode(v));
    }
}

/// Everything but the unreserved characters of RFC 3986 as `%XX`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most `max` characters of `s`, without control characters (for
/// echoing a provider's error code).
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], OauthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| OauthError::Provider(format!("no randomness: {e}")))?;
    Ok(b)
}

/// 256 random bits as unpadded base64url (43 characters).
fn random_text() -> Result<String, OauthError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<RANDOM_BYTES>()?))
}

/// The S256 code challenge of `verifier` (RFC 7636 4.2).
fn challenge(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_redirects() {
        for evil in [
            "//evil.test",
            "https://evil.test",
            "/\\evil.test",
            "/%2F%2Fevil.test",
            "/%2f/evil.test",
            "/%5Cevil.test",
            "/%255Cevil.test",
            "/%25252F%25252F%25252F%25252Fevil.test",
            "\\\\evil.test",
            "evil.test",
            "javascript:alert(1)",
            "/ok\tpath",
            "/ok\npath",
            "/%0a",
            "/%09/evil.test",
            "/a b",
            "/a#b",
            "/a%20b",
            "",
            "/é",
        ] {
            assert_eq!(safe_redirect(Some(evil)), "/", "{evil:?}");
        }
        for ok in ["/", "/rooms/lobby?x=1&y=2", "/a:b", "/%E2%82%AC", "/a%2Fb"] {
            assert_eq!(safe_redirect(Some(ok)), ok);
        }
        assert_eq!(safe_redirect(None), "/");
        assert_eq!(safe_redirect(Some(&format!("/{}", "a".repeat(2000)))), "/");
    }

    proptest::proptest! {
        #[test]
        fn a_kept_redirect_is_always_a_local_path(s in "\\PC{0,40}", prefix in proptest::sample::select(vec![
            "", "/", "//", "/\\", "\\", "/%2F", "/%5C", "/%252F", "https:", "/%0A", "%2F",
        ])) {
            let input = format!("{prefix}{s}");
            let out = safe_redirect(Some(&input));
            proptest::prop_assert!(out == "/" || out == input);
            // What a browser would see, however many times it decodes.
            let mut level = out.clone().into_bytes();
            for _ in 0..5 {
                proptest::prop_assert_eq!(level.first(), Some(&b'/'));
                proptest::prop_assert!(!matches!(level.get(1), Some(b'/' | b'\\')), "{}", out);
                proptest::prop_assert!(!level.iter().any(|b| *b == b'\\' || b.is_ascii_control() || *b == b' '));
                level = percent_decode(&level);
            }
        }

        #[test]
        fn percent_decoding_never_panics(s in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = percent_decode(&s);
        }
    }

    #[test]
    fn pkce_challenge_is_s256() {
        // base64url(SHA-256(verifier)) without padding, as Python's hashlib has it.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r7wW1gFWFOEjXk"),
            "bwWFMyPfdG9qreDhH2lmftFx_dFeLDalzcT1gb_j68g"
        );
        let (a, b) = (random_text().unwrap(), random_text().unwrap());
        assert_eq!(a.len(), RANDOM_CHARS);
        assert_ne!(a, b);
    }

    #[test]
    fn user_names() {
        assert_eq!(preferred_user("op", "alice").as_deref(), Some("op:alice"));
        assert_eq!(preferred_user("op", "a~b"), None);
        assert_eq!(preferred_user("op", "a b"), None);
        assert_eq!(preferred_user("op", ""), None);
        assert_eq!(preferred_user("op", &"x".repeat(65)), None);
    }

    #[test]
    fn form_encoding() {
        let mut f = FormBody::default();
        f.add("a b", "x&y=z/é");
        f.add("k", "");
        assert_eq!(f.0, "a%20b=x%26y%3Dz%2F%C3%A9&k=");
    }
}
