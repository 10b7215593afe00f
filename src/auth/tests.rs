use super::secret::{hex_decode, hex_encode};
use super::testkeys::{sign_hs256, TestKey};
use super::*;
use jsonwebtoken::Validation;
use serde_json::json;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A secret of the shortest length accepted, and another one.
const SECRET: &[u8] = b"roomcast-unit-test-secret-012345";
const OTHER: &[u8] = b"roomcast-unit-test-other-0123456";
const LEEWAY_SECS: u64 = DEFAULT_LEEWAY.as_secs();

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
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

fn claims(sub: &str, exp: u64) -> Claims {
    Claims { sub: sub.to_string(), exp, role: None, aud: None, iss: None, rooms: None, send: None }
}

#[test]
fn roundtrip() {
    let auth = Auth::from_secret(SECRET, None, None).unwrap();
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
    let auth = Auth::from_secret(SECRET, None, None).unwrap();
    let token = encode(SECRET, &claims("ann", now_unix() - LEEWAY_SECS - 5));
    assert!(matches!(auth.verify(&token), Err(AuthError::Expired)));
    // Within the leeway it still passes.
    let token = encode(SECRET, &claims("ann", now_unix()));
    assert!(auth.verify(&token).is_ok());
}

#[test]
fn refuses_bad_tokens() {
    let auth = Auth::from_secret(SECRET, None, None).unwrap();
    let other = Auth::from_secret(OTHER, None, None).unwrap();
    let token = other.mint("ann", Duration::from_secs(60), None).unwrap();
    assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));

    for junk in ["", "abc", "a.b.c", "..", "eyJ0eXAiOiJKV1QifQ.e30."] {
        assert!(matches!(auth.verify(junk), Err(AuthError::Invalid(_))), "{junk}");
    }

    // No `exp` at all.
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "ann"}),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));

    // Another HMAC size is another algorithm.
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims("ann", now_unix() + 60),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));

    let token = encode(SECRET, &claims("", now_unix() + 60));
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
    let auth = Auth::from_secret(SECRET, None, None).unwrap();
    let exp = now_unix() + 60;
    let long = "x".repeat(129);
    let huge = "x".repeat(8000);
    for bad in ["", "a\r\nSet-Cookie: x", "nul\0", "\u{7f}", long.as_str(), huge.as_str()] {
        let token = encode(SECRET, &claims(bad, exp));
        match auth.verify(&token) {
            Err(AuthError::Invalid(m)) => assert!(m.contains("user ids are"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert!(matches!(auth.mint(bad, Duration::from_secs(60), None), Err(AuthError::Invalid(_))), "{bad:?}");
    }
    let ok = "x".repeat(128);
    assert_eq!(auth.verify(&encode(SECRET, &claims(&ok, exp))).unwrap().sub, ok);
    // A sub that is not a string at all.
    for payload in [format!(r#"{{"sub":5,"exp":{exp}}}"#), format!(r#"{{"sub":null,"exp":{exp}}}"#)] {
        assert!(matches!(auth.verify(&encode_raw(SECRET, &payload)), Err(AuthError::Invalid(_))), "{payload}");
    }
}

#[test]
fn odd_time_claims_never_panic() {
    let auth = Auth::from_secret(SECRET, None, None).unwrap();
    let future = now_unix() + 3600;
    // A huge `exp` is a token that never expires.
    let token = encode(SECRET, &claims("ann", u64::MAX));
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
        match auth.verify(&encode_raw(SECRET, payload)) {
            Err(AuthError::Invalid(_)) => {}
            other => panic!("{payload}: {other:?}"),
        }
    }
    // An `nbf` in the past, even zero, is fine.
    let token = encode_raw(SECRET, &format!(r#"{{"sub":"a","exp":{future},"nbf":0}}"#));
    assert_eq!(auth.verify(&token).unwrap().sub, "a");
    // An `exp` at the very start of time is merely expired.
    assert!(matches!(auth.verify(&encode(SECRET, &claims("a", 0))), Err(AuthError::Expired)));
}

#[test]
fn mint_saturates_a_huge_ttl() {
    let auth = Auth::from_secret(SECRET, None, None).unwrap();
    for ttl in [Duration::MAX, Duration::from_secs(u64::MAX - 1)] {
        let token = auth.mint("ann", ttl, None).unwrap();
        assert_eq!(auth.verify(&token).unwrap().exp, u64::MAX);
    }
}

proptest::proptest! {
    #[test]
    fn verify_never_panics(token in ".{0,300}") {
        let auth = Auth::from_secret(SECRET, Some("aud"), Some("iss")).unwrap();
        let _ = auth.verify(&token);
        let lax = Auth::from_secret(SECRET, None, None).unwrap();
        let _ = lax.verify(&token);
    }

    #[test]
    fn verify_never_panics_on_jwt_shaped_text(
        parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,80}", 0..5),
    ) {
        let token = parts.join(".");
        let auth = Auth::from_secret(SECRET, None, None).unwrap();
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
        let token = encode_raw(SECRET, &payload);
        for auth in [
            Auth::from_secret(SECRET, None, None).unwrap(),
            Auth::from_secret(SECRET, Some("aud"), Some("a")).unwrap(),
        ] {
            if let Ok(c) = auth.verify(&token) {
                proptest::prop_assert!(check_user_id(&c.sub).is_ok(), "{payload}");
            }
        }
    }
}

#[test]
fn short_secrets_are_refused() {
    for short in [&b""[..], b"s", &SECRET[..MIN_SECRET_BYTES - 1]] {
        assert!(matches!(Auth::from_secret(short, None, None), Err(AuthError::Secret(_))), "{short:?}");
    }
    assert!(Auth::from_secret(&SECRET[..MIN_SECRET_BYTES], None, None).is_ok());
}

#[test]
fn audience_and_issuer() {
    let strict = Auth::from_secret(SECRET, Some("rc"), Some("me")).unwrap();
    let lax = Auth::from_secret(SECRET, None, None).unwrap();
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
    let wrong_aud = Claims { aud: Some(Audience::One("other".into())), iss: Some("me".into()), ..claims("ann", exp) };
    let wrong_iss = Claims { aud: Some(Audience::One("rc".into())), iss: Some("them".into()), ..claims("ann", exp) };
    let array_aud = Claims {
        aud: Some(Audience::Many(vec!["x".into(), "rc".into()])),
        iss: Some("me".into()),
        ..claims("ann", exp)
    };
    assert!(matches!(strict.verify(&encode(SECRET, &wrong_aud)), Err(AuthError::Invalid(_))));
    assert!(matches!(strict.verify(&encode(SECRET, &wrong_iss)), Err(AuthError::Invalid(_))));
    assert!(strict.verify(&encode(SECRET, &array_aud)).is_ok());
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
    let (env_auth, from_file) =
        Auth::load_or_create(&dir.join("unused"), Some(std::str::from_utf8(OTHER).unwrap()), None, None).unwrap();
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
    // Sixteen bytes of hex: too short to sign with.
    fs::write(dir.join(SECRET_FILE), "00112233445566778899aabbccddeeff\n").unwrap();
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

// ---------------------------------------------------------------------------
// Public keys, and the attacks on the choice of key.

/// One key of each algorithm, made once (RSA generation takes a while).
fn keys() -> &'static [TestKey; 3] {
    static KEYS: std::sync::OnceLock<[TestKey; 3]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA].map(|alg| TestKey::generate(alg).unwrap())
    })
}

fn rsa() -> &'static TestKey {
    &keys()[0]
}

fn ec() -> &'static TestKey {
    &keys()[1]
}

fn ed() -> &'static TestKey {
    &keys()[2]
}

/// A second RSA key, for "signed by another key".
fn other_rsa() -> &'static TestKey {
    static KEY: std::sync::OnceLock<TestKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| TestKey::generate(Algorithm::RS256).unwrap())
}

/// A file holding `text` in a fresh directory (kept until the test ends).
struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeyFile {
    fn new(name: &str, text: &str) -> KeyFile {
        let dir = temp_dir();
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        KeyFile { dir, path }
    }

    fn write(&self, text: &str) {
        fs::write(&self.path, text).unwrap();
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn jwks_text(keys: &[serde_json::Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn with_pem(key: &TestKey) -> (Auth, KeyFile) {
    let file = KeyFile::new("key.pem", &key.public_pem());
    let auth = Auth::new(SECRET, Options { public_key: Some(file.path.clone()), ..Options::default() }).unwrap();
    (auth, file)
}

fn with_jwks(keys: &[serde_json::Value], options: Options) -> (Auth, KeyFile) {
    let file = KeyFile::new("keys.json", &jwks_text(keys));
    let auth = Auth::new(SECRET, Options { jwks: Some(file.path.clone()), ..options }).unwrap();
    (auth, file)
}

fn good(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "exp": now_unix() + 600})
}

fn refused(auth: &Auth, token: &str) -> String {
    match auth.verify(token) {
        Err(AuthError::Invalid(m)) => m,
        other => panic!("not refused as invalid: {other:?}"),
    }
}

#[test]
fn each_algorithm_verifies_with_its_public_key() {
    for key in keys() {
        let (auth, _file) = with_pem(key);
        let token = key.token(None, &good("ann")).unwrap();
        assert_eq!(auth.verify(&token).unwrap().sub, "ann", "{:?}", key.alg);
        // HS256 tokens minted by the same server still verify beside it.
        let minted = auth.mint("bo", Duration::from_secs(60), None).unwrap();
        assert_eq!(auth.verify(&minted).unwrap().sub, "bo");
        // Another key of the same type is not this one.
        if key.alg == Algorithm::RS256 {
            let forged = other_rsa().token(None, &good("ann")).unwrap();
            assert!(refused(&auth, &forged).contains("InvalidSignature"), "{}", refused(&auth, &forged));
        }
    }
    let set: Vec<_> = keys().iter().enumerate().map(|(i, k)| k.jwk(&format!("k{i}"), None)).collect();
    let (auth, _file) = with_jwks(&set, Options::default());
    for (i, key) in keys().iter().enumerate() {
        let token = key.token(Some(&format!("k{i}")), &good("cy")).unwrap();
        assert_eq!(auth.verify(&token).unwrap().sub, "cy", "{:?}", key.alg);
    }
}

#[test]
fn alg_none_is_refused() {
    let set = [rsa().jwk("k1", None)];
    let (auth, _jwks) = with_jwks(&set, Options::default());
    let (with_key, _pem) = with_pem(ed());
    let claims = good("ann");
    for alg in ["none", "None", "NONE", ""] {
        for header in [json!({"alg": alg}), json!({"alg": alg, "kid": "k1"}), json!({"typ": "JWT"})] {
            let unsigned = format!(
                "{}.{}.",
                super::testkeys::b64url(header.to_string().as_bytes()),
                super::testkeys::b64url(claims.to_string().as_bytes())
            );
            // Unsigned, and "signed" with the secret: neither passes.
            let hmac = sign_hs256(SECRET, &header, &claims);
            for a in [&auth, &with_key] {
                refused(a, &unsigned);
                refused(a, &hmac);
            }
        }
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // The classic confusion: the verifier is given the public key, and an
    // HS256 token is "signed" with that key's bytes as the HMAC secret.
    for key in keys() {
        let (auth, _pem) = with_pem(key);
        let pem = key.public_pem();
        let set = [key.jwk("k1", None)];
        let (by_kid, _jwks) = with_jwks(&set, Options::default());
        let secrets: [&[u8]; 3] =
            [pem.as_bytes(), pem.trim_end().as_bytes(), &key.jwk("k1", None).to_string().into_bytes()];
        for secret in secrets {
            let token = sign_hs256(secret, &json!({"alg": "HS256", "typ": "JWT"}), &good("ann"));
            assert!(refused(&auth, &token).contains("InvalidSignature"));
            let token = sign_hs256(secret, &json!({"alg": "HS256", "kid": "k1"}), &good("ann"));
            assert!(refused(&by_kid, &token).contains("not the key's"), "{}", refused(&by_kid, &token));
        }
    }
}

#[test]
fn unknown_kid_is_refused_without_falling_back() {
    // The PEM key and the secret could both verify this token; its kid
    // says which key it wants, and that key does not exist.
    let pem = KeyFile::new("key.pem", &rsa().public_pem());
    let jwks = KeyFile::new("keys.json", &jwks_text(&[ed().jwk("k1", None)]));
    let options = Options { public_key: Some(pem.path.clone()), jwks: Some(jwks.path.clone()), ..Options::default() };
    let auth = Auth::new(SECRET, options).unwrap();
    assert_eq!(refused(&auth, &rsa().token(Some("nope"), &good("ann")).unwrap()), "unknown kid");
    let hs = jsonwebtoken::encode(
        &Header { kid: Some("nope".into()), ..Header::new(Algorithm::HS256) },
        &good("ann"),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    assert_eq!(refused(&auth, &hs), "unknown kid");
    // Without a kid, the same tokens pass.
    assert!(auth.verify(&rsa().token(None, &good("ann")).unwrap()).is_ok());
    assert!(auth.verify(&encode(SECRET, &claims("ann", now_unix() + 60))).is_ok());
    // A server with no JWKS knows no kid at all.
    let (plain, _pem) = with_pem(rsa());
    assert_eq!(refused(&plain, &rsa().token(Some("k1"), &good("ann")).unwrap()), "unknown kid");
}

#[test]
fn wrong_kid_is_refused() {
    let set = [rsa().jwk("r", None), other_rsa().jwk("o", None), ed().jwk("e", None)];
    let (auth, _f) = with_jwks(&set, Options::default());
    // Signed by one key, naming another of the same type.
    assert!(refused(&auth, &rsa().token(Some("o"), &good("ann")).unwrap()).contains("InvalidSignature"));
    // Naming a key of another type.
    assert!(refused(&auth, &rsa().token(Some("e"), &good("ann")).unwrap()).contains("not the key's"));
    assert!(auth.verify(&rsa().token(Some("r"), &good("ann")).unwrap()).is_ok());
}

#[test]
fn header_alg_must_be_the_keys() {
    let (auth, _pem) = with_pem(rsa());
    // The RSA key signs only RS256: a header naming another RSA algorithm,
    // or another family, finds no key.
    for alg in ["RS384", "RS512", "PS256", "ES256", "EdDSA", "HS512"] {
        let token = rsa().sign(&json!({"alg": alg}), &good("ann")).unwrap();
        assert!(refused(&auth, &token).contains("no key for"), "{alg}: {}", refused(&auth, &token));
    }
    let set = [ec().jwk("k", None)];
    let (by_kid, _jwks) = with_jwks(&set, Options::default());
    for alg in ["RS256", "ES384", "EdDSA", "HS256"] {
        let token = ec().sign(&json!({"alg": alg, "kid": "k"}), &good("ann")).unwrap();
        assert!(refused(&by_kid, &token).contains("not the key's"), "{alg}: {}", refused(&by_kid, &token));
    }
    assert!(by_kid.verify(&ec().token(Some("k"), &good("ann")).unwrap()).is_ok());
}

#[test]
fn a_jwks_alg_must_match_its_key_type() {
    let file = KeyFile::new("keys.json", "{}");
    let options = Options { jwks: Some(file.path.clone()), ..Options::default() };
    for (jwk, needle) in [
        (rsa().jwk("k", Some("RS512")), "does not match"),
        (rsa().jwk("k", Some("HS256")), "does not match"),
        (rsa().jwk("k", Some("ES256")), "does not match"),
        (ec().jwk("k", Some("ES384")), "does not match"),
        (ed().jwk("k", Some("ES256")), "does not match"),
        (json!({"kty": "oct", "kid": "k", "k": "c2VjcmV0", "alg": "HS256"}), "shared secrets never"),
        (json!({"kty": "EC", "kid": "k", "crv": "P-384", "x": "AA", "y": "AA"}), "P-256"),
        (json!({"kty": "EC", "kid": "k", "crv": "P-256", "x": "AAAA", "y": "AAAA"}), "32 bytes"),
        (json!({"kty": "OKP", "kid": "k", "crv": "Ed25519", "x": "AAAA"}), "32 bytes"),
        (json!({"kty": "OKP", "kid": "k", "crv": "X25519", "x": "AAAA"}), "Ed25519"),
        (json!({"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}), "2048 to 8192"),
        (json!({"kty": "RSA", "kid": "k", "e": "AQAB"}), "without `n`"),
        (json!({"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}), "base64"),
        (rsa().jwk("", None), "needs a `kid`"),
        (json!({"kty": "RSA"}), "needs a `kid`"),
        (json!({"kid": "k"}), "kty"),
        (json!("k"), "key 0"),
    ] {
        file.write(&jwks_text(&[jwk]));
        match Auth::new(SECRET, options.clone()) {
            Err(AuthError::Keys(m)) => assert!(m.contains(needle) && m.contains("jwks"), "{needle}: {m}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    for (text, needle) in [
        ("", "not a JSON Web Key Set"),
        ("[]", "not a JSON Web Key Set"),
        ("{\"keys\": 1}", "not a JSON Web Key Set"),
        (&jwks_text(&[rsa().jwk("k", None), ed().jwk("k", None)]), "given twice"),
        (&jwks_text(&[with_iss(rsa().jwk("k", None), "a"), with_iss(ed().jwk("k", None), "a")]), "twice for issuer"),
        (&jwks_text(&[with_iss(rsa().jwk("k", None), "a"), ed().jwk("k", None)]), "with and without"),
        (&jwks_text(&[rsa().jwk("k", None), with_iss(ed().jwk("k", None), "a")]), "with and without"),
        (&jwks_text(&[with_iss(rsa().jwk("k", None), "")]), "`iss`"),
    ] {
        file.write(text);
        match Auth::new(SECRET, options.clone()) {
            Err(AuthError::Keys(m)) => assert!(m.contains(needle), "{needle}: {m}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    // A matching `alg` is fine, an encryption key is skipped, an empty set
    // is a set that knows no kid.
    let enc = json!({"kty": "oct", "kid": "x", "use": "enc", "k": "c2VjcmV0"});
    file.write(&jwks_text(&[rsa().jwk("k", Some("RS256")), ed().jwk("e", Some("EdDSA")), enc]));
    let auth = Auth::new(SECRET, options.clone()).unwrap();
    assert_eq!(auth.reload().unwrap(), Loaded { public_key: None, jwks: Some(2) });
    file.write(&jwks_text(&[]));
    assert_eq!(auth.reload().unwrap().jwks, Some(0));
    assert_eq!(refused(&auth, &rsa().token(Some("k"), &good("ann")).unwrap()), "unknown kid");
}

fn with_iss(mut jwk: serde_json::Value, iss: &str) -> serde_json::Value {
    if let serde_json::Value::Object(m) = &mut jwk {
        m.insert("iss".into(), iss.into());
    }
    jwk
}

#[test]
fn bad_pem_files_are_refused() {
    let file = KeyFile::new("key.pem", "");
    let options = Options { public_key: Some(file.path.clone()), ..Options::default() };
    let private = super::testkeys::pem("PRIVATE KEY", b"\x30\x03\x02\x01\x00");
    let p384 = super::testkeys::pem(
        "PUBLIC KEY",
        &[
            &[0x30, 0x16, 0x30, 0x10, 0x06, 0x07][..],
            &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
            &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            &[0x03, 0x02, 0x00, 0x04],
        ]
        .concat(),
    );
    for (text, needle) in [
        ("", "BEGIN PUBLIC KEY"),
        ("hello", "BEGIN PUBLIC KEY"),
        (private.as_str(), "BEGIN PUBLIC KEY"),
        (&super::testkeys::pem("PUBLIC KEY", b"\x30\x00"), "SubjectPublicKeyInfo"),
        (&super::testkeys::pem("PUBLIC KEY", b"\x30\x84\xff\xff\xff\xff"), "SubjectPublicKeyInfo"),
        (&p384, "P-256"),
    ] {
        file.write(text);
        match Auth::new(SECRET, options.clone()) {
            Err(AuthError::Keys(m)) => assert!(m.contains(needle) && m.contains("jwt-public-key"), "{needle}: {m}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    let missing = Options { public_key: Some(file.dir.join("absent.pem")), ..Options::default() };
    assert!(matches!(Auth::new(SECRET, missing), Err(AuthError::Keys(m)) if m.contains("cannot read")));
}

#[test]
fn expiry_and_nbf_use_the_leeway() {
    let (auth, _pem) = with_pem(rsa());
    assert_eq!(auth.leeway(), DEFAULT_LEEWAY);
    let now = now_unix();
    // Expired ten seconds ago: inside the default 30 s leeway.
    let recent = rsa().token(None, &json!({"sub": "ann", "exp": now - 10})).unwrap();
    assert_eq!(auth.verify(&recent).unwrap().sub, "ann");
    let hs_recent = encode(SECRET, &claims("ann", now - 10));
    assert!(auth.verify(&hs_recent).is_ok());
    // Past the leeway.
    let old = rsa().token(None, &json!({"sub": "ann", "exp": now - LEEWAY_SECS - 5})).unwrap();
    assert!(matches!(auth.verify(&old), Err(AuthError::Expired)));
    // A shorter leeway refuses what the default let through.
    let file = KeyFile::new("key.pem", &rsa().public_pem());
    let strict = Auth::new(
        SECRET,
        Options { public_key: Some(file.path.clone()), leeway: Duration::from_secs(5), ..Options::default() },
    )
    .unwrap();
    assert_eq!(strict.leeway(), Duration::from_secs(5));
    assert!(matches!(strict.verify(&recent), Err(AuthError::Expired)));
    assert!(matches!(strict.verify(&hs_recent), Err(AuthError::Expired)));
    // `exp` is required, whatever the key.
    let no_exp = rsa().token(None, &json!({"sub": "ann"})).unwrap();
    refused(&auth, &no_exp);
    // `nbf` ahead of the clock by more than the leeway: not yet.
    let early = rsa().token(None, &json!({"sub": "ann", "exp": now + 600, "nbf": now + 120})).unwrap();
    assert!(refused(&auth, &early).contains("ImmatureSignature"), "{}", refused(&auth, &early));
    let early_hs = encode_raw(SECRET, &format!(r#"{{"sub":"a","exp":{},"nbf":{}}}"#, now + 600, now + 120));
    refused(&auth, &early_hs);
    // Within it: accepted.
    let soon = rsa().token(None, &json!({"sub": "ann", "exp": now + 600, "nbf": now + 10})).unwrap();
    assert!(auth.verify(&soon).is_ok());
    assert!(matches!(strict.verify(&soon), Err(AuthError::Invalid(_))));
}

#[test]
fn audience_and_issuer_bind_public_keys_too() {
    let options = Options::with(Some("rc"), Some("me"));
    let pem = KeyFile::new("key.pem", &ed().public_pem());
    let set = [rsa().jwk("plain", None), with_iss(ec().jwk("theirs", None), "them")];
    let jwks = KeyFile::new("keys.json", &jwks_text(&set));
    let auth =
        Auth::new(SECRET, Options { public_key: Some(pem.path.clone()), jwks: Some(jwks.path.clone()), ..options })
            .unwrap();
    let exp = now_unix() + 600;
    let c = |aud: &str, iss: &str| json!({"sub": "ann", "exp": exp, "aud": aud, "iss": iss});
    assert!(auth.verify(&ed().token(None, &c("rc", "me")).unwrap()).is_ok());
    assert!(refused(&auth, &ed().token(None, &c("other", "me")).unwrap()).contains("InvalidAudience"));
    assert!(refused(&auth, &ed().token(None, &c("rc", "them")).unwrap()).contains("InvalidIssuer"));
    assert!(refused(&auth, &ed().token(None, &json!({"sub": "a", "exp": exp})).unwrap()).contains("Missing"));
    // An unbound JWKS key belongs to the configured issuer.
    assert!(auth.verify(&rsa().token(Some("plain"), &c("rc", "me")).unwrap()).is_ok());
    assert!(refused(&auth, &rsa().token(Some("plain"), &c("rc", "them")).unwrap()).contains("InvalidIssuer"));
    assert!(refused(&auth, &rsa().token(Some("plain"), &c("x", "me")).unwrap()).contains("InvalidAudience"));
    // A bound one to its own issuer only; the audience still applies.
    assert!(auth.verify(&ec().token(Some("theirs"), &c("rc", "them")).unwrap()).is_ok());
    assert!(refused(&auth, &ec().token(Some("theirs"), &c("rc", "me")).unwrap()).contains("InvalidIssuer"));
    assert!(refused(&auth, &ec().token(Some("theirs"), &c("x", "them")).unwrap()).contains("InvalidAudience"));
}

#[test]
fn one_kid_for_several_issuers() {
    let set = [with_iss(rsa().jwk("k", None), "a"), with_iss(ed().jwk("k", None), "b")];
    let (auth, _f) = with_jwks(&set, Options::default());
    let c = |iss: &str| json!({"sub": "ann", "exp": now_unix() + 600, "iss": iss});
    assert!(auth.verify(&rsa().token(Some("k"), &c("a")).unwrap()).is_ok());
    assert!(auth.verify(&ed().token(Some("k"), &c("b")).unwrap()).is_ok());
    // The issuer picks the key; it is not a way to reach the other one.
    assert!(refused(&auth, &rsa().token(Some("k"), &c("b")).unwrap()).contains("not the key's"));
    assert_eq!(refused(&auth, &rsa().token(Some("k"), &c("z")).unwrap()), "unknown kid for this issuer");
    let no_iss = rsa().token(Some("k"), &json!({"sub": "ann", "exp": now_unix() + 600})).unwrap();
    assert_eq!(refused(&auth, &no_iss), "unknown kid for this issuer");
    let odd_iss = rsa().token(Some("k"), &json!({"sub": "ann", "exp": now_unix() + 600, "iss": 5})).unwrap();
    refused(&auth, &odd_iss);
}

#[test]
fn reload_swaps_the_set_and_keeps_it_when_the_new_one_is_bad() {
    let (auth, file) = with_jwks(&[rsa().jwk("old", None)], Options::default());
    let old = rsa().token(Some("old"), &good("ann")).unwrap();
    let new = ed().token(Some("new"), &good("ann")).unwrap();
    assert!(auth.verify(&old).is_ok());
    assert_eq!(refused(&auth, &new), "unknown kid");

    file.write(&jwks_text(&[ed().jwk("new", None)]));
    assert_eq!(auth.reload().unwrap(), Loaded { public_key: None, jwks: Some(1) });
    assert!(auth.verify(&new).is_ok());
    assert_eq!(refused(&auth, &old), "unknown kid");

    // A bad file, or none, is refused and the keys stay.
    for bad in ["{\"keys\": [", "", &jwks_text(&[json!({"kty": "oct", "kid": "x", "k": "AA"})])] {
        file.write(bad);
        assert!(matches!(auth.reload(), Err(AuthError::Keys(_))));
        assert!(auth.verify(&new).is_ok());
    }
    fs::remove_file(&file.path).unwrap();
    assert!(matches!(auth.reload(), Err(AuthError::Keys(m)) if m.contains("cannot read")));
    assert!(auth.verify(&new).is_ok());
    // The secret is not reloaded: minted tokens keep working throughout.
    assert!(auth.verify(&auth.mint("ann", Duration::from_secs(60), None).unwrap()).is_ok());
}

#[test]
fn reload_is_seen_by_every_thread_sharing_the_auth() {
    let (auth, file) = with_jwks(&[rsa().jwk("a", None)], Options::default());
    let auth = Arc::new(auth);
    let token = ed().token(Some("b"), &good("ann")).unwrap();
    file.write(&jwks_text(&[ed().jwk("b", None)]));
    let reader = {
        let auth = auth.clone();
        std::thread::spawn(move || (0..200).map(|_| auth.verify(&token).is_ok()).collect::<Vec<_>>())
    };
    auth.reload().unwrap();
    let seen = reader.join().unwrap();
    // Each verification saw one whole set: once the new one, never again the old.
    let first_new = seen.iter().position(|ok| *ok).unwrap_or(seen.len());
    assert!(seen[first_new..].iter().all(|ok| *ok), "{seen:?}");
    let after = ed().token(Some("b"), &good("ann")).unwrap();
    assert!(auth.verify(&after).is_ok());
}

#[test]
fn the_validation_of_a_key_names_one_algorithm() {
    // What the library is handed: one algorithm, exp required, nbf checked.
    let key = keys::Key::new(Algorithm::ES256, DecodingKey::from_secret(SECRET).unwrap(), &Options::default(), None);
    let v: &Validation = &key.validation;
    assert_eq!(v.algorithms, vec![Algorithm::ES256]);
    assert!(v.required_spec_claims.contains("exp") && v.validate_exp && v.validate_nbf);
    assert_eq!(v.leeway, 30);
}
