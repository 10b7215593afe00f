//! Identity: HS256 JWTs and the secret that signs them.
//!
//! This module owns the signing secret (from `ROOMCAST_JWT_SECRET`, or a
//! random one kept in `<data>/jwt-secret`), minting tokens for the `token`
//! command and the built-in page, and verifying the tokens clients present.
//! It does not decide where a token is read from (header or query) or what a
//! failed check does to a connection: that is the HTTP layer's business.
//!
//! It also owns the rule for user ids ([`check_user_id`]), which a token's
//! `sub` and an anonymous `?user=` must both follow: every other client sees
//! the id as a message's `from`, so it must be short and printable.
//!
//! Tokens come from anyone: nothing here may panic on any token text or any
//! claim value (a huge `exp` or `nbf`, a number where a string belongs).

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::config::Config;

pub mod accounts;
pub mod oauth;
pub mod passkey;
pub mod service;

/// The file, inside the data directory, holding the generated secret as hex.
pub const SECRET_FILE: &str = "jwt-secret";
/// Bytes of randomness in a generated secret.
pub const SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`, in seconds. Kept small so that an
/// expired token stops working promptly.
pub const LEEWAY_SECS: u64 = 2;
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
}

/// Signs and verifies tokens with one HS256 secret.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("audience", &self.audience).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Auth {
    /// The secret from `env_secret` if it is `Some` and non-empty; else the
    /// hex in `<data>/jwt-secret`; else a new random one written there (mode
    /// 0600, creating the data directory). The flag is true when the secret
    /// came from, or was just written to, the file.
    pub fn load_or_create(
        data: &Path,
        env_secret: Option<&str>,
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<(Auth, bool), AuthError> {
        if let Some(secret) = env_secret.filter(|s| !s.is_empty()) {
            return Ok((Auth::from_secret(secret.as_bytes(), audience, issuer)?, false));
        }
        let secret = load_or_create_secret_file(data)?;
        Ok((Auth::from_secret(&secret, audience, issuer)?, true))
    }

    /// [`Auth::load_or_create`] with the settings of `config`.
    pub fn from_config(config: &Config) -> Result<(Auth, bool), AuthError> {
        Auth::load_or_create(
            &config.data,
            config.jwt_secret.as_ref().map(|s| s.expose()),
            config.jwt_audience.as_deref(),
            config.jwt_issuer.as_deref(),
        )
    }

    pub fn from_secret(secret: &[u8], audience: Option<&str>, issuer: Option<&str>) -> Result<Auth, AuthError> {
        let encoding = EncodingKey::from_secret(secret).map_err(|e| AuthError::Secret(e.to_string()))?;
        let decoding = DecodingKey::from_secret(secret).map_err(|e| AuthError::Secret(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // `exp` is required by `Validation::new`. `aud` and `iss` are checked,
        // and then required, only when configured; otherwise tokens carrying
        // them are accepted as they are (the library would refuse any `aud`).
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_string());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_string());
        }
        Ok(Auth {
            encoding,
            decoding,
            validation,
            audience: audience.map(str::to_string),
            issuer: issuer.map(str::to_string),
        })
    }

    /// A token for `sub`, valid for `ttl` from now (an expiry past `u64`
    /// seconds saturates), carrying the configured audience and issuer. A
    /// `sub` that [`check_user_id`] refuses is refused here too: such a token
    /// would never verify.
    pub fn mint(&self, sub: &str, ttl: Duration, role: Option<&str>) -> Result<String, AuthError> {
        check_user_id(sub).map_err(|m| AuthError::Invalid(format!("sub claim: {m}")))?;
        let claims = Claims {
            sub: sub.to_string(),
            exp: now_unix().saturating_add(ttl.as_secs()),
            role: role.map(str::to_string),
            aud: self.audience.clone().map(Audience::One),
            iss: self.issuer.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Secret(format!("cannot sign: {e}")))
    }

    /// Checks signature, algorithm, `exp` (and `nbf` when present), and the
    /// audience and issuer when configured. `exp` must be an integer number
    /// of seconds (any size: `u64::MAX` means never); a fraction, a negative
    /// number or a string is refused, as is an `nbf` that is not a
    /// non-negative number.
    /// The `sub` must pass [`check_user_id`]: it names the user to everyone.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        check_user_id(&data.claims.sub).map_err(|m| AuthError::Invalid(format!("sub claim: {m}")))?;
        Ok(data.claims)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn secret_error(what: &str, path: &Path, e: io::Error) -> AuthError {
    AuthError::Secret(format!("{what} {}: {e}", path.display()))
}

/// Reads `<data>/jwt-secret`, or creates it.
///
/// Creation writes a private temporary file and then hard-links it into
/// place: the link fails if another process got there first, in which case
/// its secret is read instead. A rename would silently replace a secret that
/// a running server already signs with, and writing the final name directly
/// would let a concurrent reader see an empty file.
fn load_or_create_secret_file(data: &Path) -> Result<Vec<u8>, AuthError> {
    let path = data.join(SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => return decode_secret(&text, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(secret_error("cannot read", &path, e)),
    }
    fs::create_dir_all(data).map_err(|e| secret_error("cannot create", data, e))?;

    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| AuthError::Secret(format!("no randomness: {e}")))?;
    let hex = hex_encode(&secret);

    let tmp = data.join(format!(".{SECRET_FILE}.{}.tmp", std::process::id()));
    let written = write_private(&tmp, format!("{hex}\n").as_bytes());
    let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
    // The temporary name is removed whatever happened; the link keeps the data.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(data);
            Ok(secret.to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = fs::read_to_string(&path).map_err(|e| secret_error("cannot read", &path, e))?;
            decode_secret(&text, &path)
        }
        Err(e) => Err(secret_error("cannot write", &path, e)),
    }
}

/// Creates `path` readable by its owner only, and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a new directory entry durable. Best effort: some platforms cannot
/// open a directory, and the secret is still usable without it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn decode_secret(text: &str, path: &Path) -> Result<Vec<u8>, AuthError> {
    let bytes =
        hex_decode(text.trim()).ok_or_else(|| AuthError::Secret(format!("{}: not a hex string", path.display())))?;
    if bytes.is_empty() {
        return Err(AuthError::Secret(format!("{}: empty", path.display())));
    }
    Ok(bytes)
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn temp_dir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "roomcast-auth-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn encode(secret: &[u8], claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret).unwrap())
            .unwrap()
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims { sub: sub.to_string(), exp, role: None, aud: None, iss: None }
    }

    #[test]
    fn roundtrip() {
        let auth = Auth::from_secret(b"secret", None, None).unwrap();
        let token = auth.mint("ann", Duration::from_secs(60), Some("admin")).unwrap();
        let c = auth.verify(&token).unwrap();
        assert_eq!(c.sub, "ann");
        assert_eq!(c.role.as_deref(), Some("admin"));
        assert!(c.exp >= now_unix() + 59 && c.exp <= now_unix() + 60);
        assert_eq!(c.aud, None);

        let token = auth.mint("bo", Duration::from_secs(60), None).unwrap();
        assert_eq!(auth.verify(&token).unwrap().role, None);
    }

    #[test]
    fn expired() {
        let auth = Auth::from_secret(b"secret", None, None).unwrap();
        let token = encode(b"secret", &claims("ann", now_unix() - LEEWAY_SECS - 5));
        assert!(matches!(auth.verify(&token), Err(AuthError::Expired)));
        // Within the leeway it still passes.
        let token = encode(b"secret", &claims("ann", now_unix()));
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn refuses_bad_tokens() {
        let auth = Auth::from_secret(b"secret", None, None).unwrap();
        let other = Auth::from_secret(b"other", None, None).unwrap();
        let token = other.mint("ann", Duration::from_secs(60), None).unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));

        for junk in ["", "abc", "a.b.c", "..", "eyJ0eXAiOiJKV1QifQ.e30."] {
            assert!(matches!(auth.verify(junk), Err(AuthError::Invalid(_))), "{junk}");
        }

        // No `exp` at all.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann"}),
            &EncodingKey::from_secret(b"secret").unwrap(),
        )
        .unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));

        // Another HMAC size is another algorithm.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims("ann", now_unix() + 60),
            &EncodingKey::from_secret(b"secret").unwrap(),
        )
        .unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));

        let token = encode(b"secret", &claims("", now_unix() + 60));
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
    }

    /// A token signed with `secret` whose payload is exactly `payload` (any
    /// JSON text, such as numbers no `serde_json::Value` can hold).
    fn encode_raw(secret: &[u8], payload: &str) -> String {
        let raw = serde_json::value::RawValue::from_string(payload.to_string()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &raw, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    #[test]
    fn user_ids() {
        for good in ["a", "ann", "é", "😀", "with space", "a/b?c=d", &"u".repeat(128), &"é".repeat(64)] {
            assert_eq!(check_user_id(good), Ok(()), "{good:?}");
        }
        for bad in ["", "a\nb", "a\r", "\0", "\t", "\u{1b}[31m", "a\u{7f}", "\u{85}", "\u{9f}", &"u".repeat(129)] {
            assert_eq!(check_user_id(bad), Err("user ids are 1 to 128 bytes without control characters"), "{bad:?}");
        }
        // The limit is in bytes, not characters.
        assert!(check_user_id(&format!("{}a", "é".repeat(64))).is_err());
    }

    #[test]
    fn sub_follows_the_user_id_rule() {
        let auth = Auth::from_secret(b"secret", None, None).unwrap();
        let exp = now_unix() + 60;
        let long = "x".repeat(129);
        let huge = "x".repeat(8000);
        for bad in ["", "a\r\nSet-Cookie: x", "nul\0", "\u{7f}", long.as_str(), huge.as_str()] {
            let token = encode(b"secret", &claims(bad, exp));
            match auth.verify(&token) {
                Err(AuthError::Invalid(m)) => assert!(m.contains("user ids are"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
            assert!(matches!(auth.mint(bad, Duration::from_secs(60), None), Err(AuthError::Invalid(_))), "{bad:?}");
        }
        let ok = "x".repeat(128);
        assert_eq!(auth.verify(&encode(b"secret", &claims(&ok, exp))).unwrap().sub, ok);
        // A sub that is not a string at all.
        for payload in [format!(r#"{{"sub":5,"exp":{exp}}}"#), format!(r#"{{"sub":null,"exp":{exp}}}"#)] {
            assert!(matches!(auth.verify(&encode_raw(b"secret", &payload)), Err(AuthError::Invalid(_))), "{payload}");
        }
    }

    #[test]
    fn odd_time_claims_never_panic() {
        let auth = Auth::from_secret(b"secret", None, None).unwrap();
        let future = now_unix() + 3600;
        // A huge `exp` is a token that never expires.
        let token = encode(b"secret", &claims("ann", u64::MAX));
        assert_eq!(auth.verify(&token).unwrap().exp, u64::MAX);
        let refused = [
            format!(r#"{{"sub":"a","exp":{future}.5}}"#),
            format!(r#"{{"sub":"a","exp":{future}e0}}"#),
            format!(r#"{{"sub":"a","exp":"{future}"}}"#),
            r#"{"sub":"a","exp":-1}"#.to_string(),
            r#"{"sub":"a","exp":-9223372036854775808}"#.to_string(),
            r#"{"sub":"a","exp":18446744073709551616}"#.to_string(),
            r#"{"sub":"a","exp":1e19}"#.to_string(),
            r#"{"sub":"a","exp":1e400}"#.to_string(),
            r#"{"sub":"a","exp":null}"#.to_string(),
            r#"{"sub":"a","exp":[1]}"#.to_string(),
            format!(r#"{{"sub":"a","exp":{future},"nbf":18446744073709551615}}"#),
            format!(r#"{{"sub":"a","exp":{future},"nbf":-1}}"#),
            format!(r#"{{"sub":"a","exp":{future},"nbf":"0"}}"#),
            format!(r#"{{"sub":"a","exp":{future},"nbf":1e400}}"#),
            format!(r#"{{"sub":"a","exp":{future},"role":7}}"#),
            format!(r#"{{"sub":"a","exp":{future},"aud":7}}"#),
            format!(r#"["a",{future}]"#),
            "1".to_string(),
            "null".to_string(),
        ];
        for payload in &refused {
            match auth.verify(&encode_raw(b"secret", payload)) {
                Err(AuthError::Invalid(_)) => {}
                other => panic!("{payload}: {other:?}"),
            }
        }
        // An `nbf` in the past, even zero, is fine.
        let token = encode_raw(b"secret", &format!(r#"{{"sub":"a","exp":{future},"nbf":0}}"#));
        assert_eq!(auth.verify(&token).unwrap().sub, "a");
        // An `exp` at the very start of time is merely expired.
        assert!(matches!(auth.verify(&encode(b"secret", &claims("a", 0))), Err(AuthError::Expired)));
    }

    #[test]
    fn mint_saturates_a_huge_ttl() {
        let auth = Auth::from_secret(b"secret", None, None).unwrap();
        for ttl in [Duration::MAX, Duration::from_secs(u64::MAX - 1)] {
            let token = auth.mint("ann", ttl, None).unwrap();
            assert_eq!(auth.verify(&token).unwrap().exp, u64::MAX);
        }
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(token in ".{0,300}") {
            let auth = Auth::from_secret(b"secret", Some("aud"), Some("iss")).unwrap();
            let _ = auth.verify(&token);
            let lax = Auth::from_secret(b"secret", None, None).unwrap();
            let _ = lax.verify(&token);
        }

        #[test]
        fn verify_never_panics_on_jwt_shaped_text(
            parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,80}", 0..5),
        ) {
            let token = parts.join(".");
            let auth = Auth::from_secret(b"secret", None, None).unwrap();
            proptest::prop_assert!(auth.verify(&token).is_err());
        }

        #[test]
        fn signed_claims_never_panic(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["sub", "exp", "nbf", "aud", "iss", "role", "x"]),
                    proptest::sample::select(vec![
                        "0", "1", "-1", "1.5", "1e400", "-1e400", "18446744073709551615",
                        "18446744073709551616", "9223372036854775807", "-9223372036854775808",
                        "99999999999", "99999999999.9", "\"a\"", "\"\"", "\"\\u0000\"", "\"\\r\\n\"",
                        "null", "true", "[]", "[\"aud\"]", "{}", "[1,[2,[3]]]",
                    ]),
                ),
                0..7,
            ),
        ) {
            let members: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let payload = format!("{{{}}}", members.join(","));
            let token = encode_raw(b"secret", &payload);
            for auth in [
                Auth::from_secret(b"secret", None, None).unwrap(),
                Auth::from_secret(b"secret", Some("aud"), Some("a")).unwrap(),
            ] {
                if let Ok(c) = auth.verify(&token) {
                    proptest::prop_assert!(check_user_id(&c.sub).is_ok(), "{payload}");
                }
            }
        }
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(matches!(Auth::from_secret(b"", None, None), Err(AuthError::Secret(_))));
    }

    #[test]
    fn audience_and_issuer() {
        let strict = Auth::from_secret(b"s", Some("rc"), Some("me")).unwrap();
        let lax = Auth::from_secret(b"s", None, None).unwrap();
        let token = strict.mint("ann", Duration::from_secs(60), None).unwrap();
        let c = strict.verify(&token).unwrap();
        assert_eq!(c.aud, Some(Audience::One("rc".into())));
        assert_eq!(c.iss.as_deref(), Some("me"));
        // Not configured: not checked.
        assert!(lax.verify(&token).is_ok());
        // Configured: required and matched.
        let plain = lax.mint("ann", Duration::from_secs(60), None).unwrap();
        assert!(matches!(strict.verify(&plain), Err(AuthError::Invalid(_))));

        let exp = now_unix() + 60;
        let wrong_aud =
            Claims { aud: Some(Audience::One("other".into())), iss: Some("me".into()), ..claims("ann", exp) };
        let wrong_iss =
            Claims { aud: Some(Audience::One("rc".into())), iss: Some("them".into()), ..claims("ann", exp) };
        let array_aud = Claims {
            aud: Some(Audience::Many(vec!["x".into(), "rc".into()])),
            iss: Some("me".into()),
            ..claims("ann", exp)
        };
        assert!(matches!(strict.verify(&encode(b"s", &wrong_aud)), Err(AuthError::Invalid(_))));
        assert!(matches!(strict.verify(&encode(b"s", &wrong_iss)), Err(AuthError::Invalid(_))));
        assert!(strict.verify(&encode(b"s", &array_aud)).is_ok());
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = temp_dir();
        let data = dir.join("nested").join("data");
        let (first, from_file) = Auth::load_or_create(&data, None, None, None).unwrap();
        assert!(from_file);
        let path = data.join(SECRET_FILE);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), SECRET_BYTES * 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, from_file) = Auth::load_or_create(&data, Some(""), None, None).unwrap();
        assert!(from_file, "an empty variable falls back to the file");
        let token = first.mint("ann", Duration::from_secs(60), None).unwrap();
        assert_eq!(second.verify(&token).unwrap().sub, "ann");
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "not rewritten");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);

        // The environment's secret wins and touches no file.
        let (env_auth, from_file) = Auth::load_or_create(&dir.join("unused"), Some("k"), None, None).unwrap();
        assert!(!from_file);
        assert!(!dir.join("unused").exists());
        assert!(matches!(env_auth.verify(&token), Err(AuthError::Invalid(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_secret_file() {
        let dir = temp_dir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(SECRET_FILE), "not hex\n").unwrap();
        assert!(matches!(Auth::load_or_create(&dir, None, None, None), Err(AuthError::Secret(_))));
        fs::write(dir.join(SECRET_FILE), "\n").unwrap();
        assert!(matches!(Auth::load_or_create(&dir, None, None, None), Err(AuthError::Secret(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex() {
        assert_eq!(hex_encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("é1"), None);
    }
}
