//! JWT verification: `auth::Auth::verify` on a valid token, per algorithm,
//! the check every upgrade and authenticated HTTP request makes.
//!
//! - `jwt_verify/HS256`: the secret (a token minted by roomcast).
//! - `jwt_verify/{RS256,ES256,EdDSA}`: the `--jwt-public-key` key, no `kid`.
//! - `jwt_verify/{RS256,ES256,EdDSA}+kid`: the same keys found in a
//!   `--jwks` set by `kid`.
//!
//! Keys are made at startup (RSA 2048 bits); the key files live in a
//! temporary directory for the run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jsonwebtoken::Algorithm;
use roomcast::auth::testkeys::TestKey;
use roomcast::auth::{now_unix, Auth, Options};

mod common;

const SECRET: &[u8] = b"roomcast-bench-secret-0123456789";

fn bench_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let claims = serde_json::json!({"sub": "user-0042", "exp": now_unix() + 24 * 3600});
    let mut cases = Vec::new();

    let hs = Auth::from_secret(SECRET, None, None).expect("the secret");
    let token = hs.mint("user-0042", Duration::from_secs(24 * 3600), None).expect("a token");
    cases.push(("HS256".to_string(), hs, token));

    let keys: Vec<TestKey> = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        .into_iter()
        .map(|alg| TestKey::generate(alg).expect("a key"))
        .collect();
    let set: Vec<_> = keys.iter().map(|k| k.jwk(&format!("{:?}", k.alg), None)).collect();
    let jwks = dir.path().join("keys.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": set }).to_string()).expect("the JWKS file");
    let by_kid = || Auth::new(SECRET, Options { jwks: Some(jwks.clone()), ..Options::default() }).expect("the JWKS");
    for key in &keys {
        let name = format!("{:?}", key.alg);
        let pem = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pem, key.public_pem()).expect("the PEM file");
        let auth = Auth::new(SECRET, Options { public_key: Some(pem), ..Options::default() }).expect("the key");
        cases.push((name.clone(), auth, key.token(None, &claims).expect("a token")));
        cases.push((format!("{name}+kid"), by_kid(), key.token(Some(&name), &claims).expect("a token")));
    }

    let mut g = c.benchmark_group("jwt_verify");
    g.throughput(Throughput::Elements(1));
    for (name, auth, token) in &cases {
        // A bench of the refusal path would measure nothing useful.
        assert_eq!(auth.verify(token).expect("the token verifies").sub, "user-0042", "{name}");
        g.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(|| auth.verify(black_box(token)).is_ok()));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_verify
}
criterion_main!(benches);
