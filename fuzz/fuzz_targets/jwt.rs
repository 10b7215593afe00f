//! Fuzzes token verification (`auth::Auth::verify`) with and without a
//! configured audience and issuer. Arbitrary strings must be refused without
//! a panic; tokens correctly signed over arbitrary header and claims JSON
//! reach the claim checks, and whatever passes them must be a usable
//! identity: a `sub` of 1 to 128 bytes without control characters, an `exp`
//! not already past (beyond the leeway), the configured `aud`/`iss`, and an
//! expiry the reactor can turn into a timer deadline.
//!
//! Input: the first byte picks the configuration (bits 0-1) and the shape of
//! the rest (bits 2-3): 0 a raw token; 1 claims JSON under an HS256 header,
//! signed with the right secret; 2 header JSON, a newline, claims JSON, signed
//! with the right secret; 3 as 1 but signed with another secret.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use roomcast::auth::{now_unix, Audience, Auth, AuthError, Claims, DEFAULT_LEEWAY};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123";
const OTHER_SECRET: &[u8] = b"fuzz-secret-other-key";
const AUDIENCE: &str = "roomcast-fuzz";
const ISSUER: &str = "fuzz-issuer";
const HS256_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

struct Keys {
    /// No audience or issuer; audience only; issuer only; both.
    auths: [(Auth, bool, bool); 4],
    right: EncodingKey,
    wrong: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let auth = |aud: bool, iss: bool| {
            let a = Auth::from_secret(SECRET, aud.then_some(AUDIENCE), iss.then_some(ISSUER)).expect("a valid secret");
            (a, aud, iss)
        };
        Keys {
            auths: [auth(false, false), auth(true, false), auth(false, true), auth(true, true)],
            right: EncodingKey::from_secret(SECRET).expect("an HMAC key"),
            wrong: EncodingKey::from_secret(OTHER_SECRET).expect("an HMAC key"),
        }
    })
}

/// `base64url(header).base64url(claims).signature`, HS256 over the first two.
fn signed(header: &[u8], claims: &[u8], key: &EncodingKey) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::HS256).expect("HS256 signs");
    format!("{message}.{signature}")
}

/// What passing `verify` promises the HTTP layer and the reactor.
fn check_accepted(c: &Claims, aud: bool, iss: bool) {
    assert!(!c.sub.is_empty() && c.sub.len() <= 128, "sub of {} bytes accepted", c.sub.len());
    assert!(!c.sub.chars().any(char::is_control), "sub with a control character accepted: {:?}", c.sub);
    let now = now_unix();
    assert!(c.exp.saturating_add(DEFAULT_LEEWAY.as_secs()) >= now, "expired token accepted: exp {} now {now}", c.exp);
    if aud {
        let ok = match &c.aud {
            Some(Audience::One(a)) => a == AUDIENCE,
            Some(Audience::Many(v)) => v.iter().any(|a| a == AUDIENCE),
            None => false,
        };
        assert!(ok, "wrong audience accepted: {:?}", c.aud);
    }
    if iss {
        assert_eq!(c.iss.as_deref(), Some(ISSUER), "wrong issuer accepted");
    }
    // The reactor arms a timer at the expiry the way this does: checked, since
    // a huge `exp` is a valid token whose deadline lies past any `Instant`.
    let left = Duration::from_secs(c.exp.saturating_sub(now));
    let start = Instant::now();
    assert!(start.checked_add(left).unwrap_or(start) >= start);
    let _ = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    let (auth, aud, iss) = &keys.auths[usize::from(mode & 3)];
    let token = match (mode >> 2) & 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 | 3 => {
            let key = if (mode >> 2) & 3 == 1 { &keys.right } else { &keys.wrong };
            signed(HS256_HEADER, rest, key)
        }
        _ => {
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (header, claims) = rest.split_at(split);
            signed(header, claims.get(1..).unwrap_or_default(), &keys.right)
        }
    };
    match auth.verify(&token) {
        Ok(claims) => {
            assert_ne!((mode >> 2) & 3, 3, "a token signed with another secret was accepted");
            check_accepted(&claims, *aud, *iss);
        }
        Err(AuthError::Invalid(_) | AuthError::Expired) => {}
        Err(AuthError::Secret(e) | AuthError::Keys(e)) => panic!("verify reported a key problem: {e}"),
    }
});
