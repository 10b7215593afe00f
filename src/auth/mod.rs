//! Identity: HS256 JWTs and the secret that signs them.
//!
//! This module owns the signing secret (from `ROOMCAST_JWT_SECRET`, or a
//! random one kept in `<data>/jwt-secret`), minting tokens for the `token`
//! command and the built-in page, and verifying the tokens clients present.
//! It does not decide where a token is read from (header or query) or what a
//! failed check does to a connection: that is the HTTP layer's business.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::config::Config;

/// The file, inside the data directory, holding the generated secret as hex.
pub const SECRET_FILE: &str = "jwt-secret";
/// Bytes of randomness in a generated secret.
pub const SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`, in seconds. Kept small so that an
/// expired token stops working promptly.
pub const LEEWAY_SECS: u64 = 2;

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

    /// A token for `sub`, valid for `ttl` from now, carrying the configured
    /// audience and issuer.
    pub fn mint(&self, sub: &str, ttl: Duration, role: Option<&str>) -> Result<String, AuthError> {
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
    /// audience and issuer when configured. An empty `sub` is refused: it
    /// cannot name a user.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub claim".to_string()));
        }
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
    if bytes.len() % 2 != 0 {
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
