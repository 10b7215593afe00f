//! Inputs the fuzz targets (`fuzz/`) found, replayed through the same public
//! calls the targets make, so that each finding stays fixed without
//! libFuzzer. A test marked `#[ignore]` reproduces a finding whose fix is not
//! in yet: it fails today; un-ignore it with the fix.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast::auth::{Auth, AuthError};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123";

fn signed(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET).expect("an HMAC key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("HS256 signs")
}

fn verify(claims: serde_json::Value) -> Result<String, AuthError> {
    let auth = Auth::from_secret(SECRET, None, None).expect("a valid secret");
    auth.verify(&signed(&claims)).map(|c| c.sub)
}

/// fuzz target `jwt`, input `\x04{"sub":"a\u0007b","exp":4102444800}`: a
/// correctly signed token whose `sub` holds a control character was accepted
/// as that user id.
#[test]
fn jwt_sub_with_a_control_character_is_refused() {
    let got = verify(serde_json::json!({"sub": "a\u{7}b", "exp": 4_102_444_800u64}));
    assert!(matches!(got, Err(AuthError::Invalid(_))), "{got:?}");
    let got = verify(serde_json::json!({"sub": "ann\n", "exp": 4_102_444_800u64}));
    assert!(matches!(got, Err(AuthError::Invalid(_))), "{got:?}");
}

/// fuzz target `jwt`, a signed token with a `sub` of 129 bytes: accepted.
#[test]
fn jwt_sub_longer_than_128_bytes_is_refused() {
    let got = verify(serde_json::json!({"sub": "x".repeat(129), "exp": 4_102_444_800u64}));
    assert!(matches!(got, Err(AuthError::Invalid(_))), "{got:?}");
    // 128 bytes of two-byte characters is still fine.
    let got = verify(serde_json::json!({"sub": "\u{e9}".repeat(64), "exp": 4_102_444_800u64}));
    assert_eq!(got.ok().as_deref(), Some("\u{e9}".repeat(64).as_str()));
}

/// The edges that passed: the shortest and longest ids and a huge `exp`.
#[test]
fn jwt_sub_edges_that_are_accepted() {
    assert_eq!(verify(serde_json::json!({"sub": "a", "exp": 4_102_444_800u64})).ok().as_deref(), Some("a"));
    let long = "x".repeat(128);
    assert_eq!(verify(serde_json::json!({"sub": long, "exp": 4_102_444_800u64})).ok(), Some(long));
    assert!(verify(serde_json::json!({"sub": "ann", "exp": u64::MAX})).is_ok());
    assert!(matches!(verify(serde_json::json!({"sub": "", "exp": 4_102_444_800u64})), Err(AuthError::Invalid(_))));
}
