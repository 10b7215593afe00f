//! Signing keys made on the spot, for tests and benchmarks: an RS256,
//! ES256 or EdDSA key pair with its public half as PEM and as a JWK, and
//! tokens signed with any header and claims (wrong ones included, which is
//! what the attack tests need). Nothing in the server uses this.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A key pair for one algorithm.
pub struct TestKey {
    pub alg: Algorithm,
    signer: Signer,
    /// The public key as a DER SubjectPublicKeyInfo.
    spki: Vec<u8>,
    /// The public key's JWK members, without `kid` and `alg`.
    jwk: Value,
}

fn failed(what: &str) -> String {
    format!("cannot make a {what} key")
}

impl TestKey {
    /// A new key pair for `alg`: RS256 (2048 bits), ES256 or EdDSA.
    pub fn generate(alg: Algorithm) -> Result<TestKey, String> {
        let (signer, spki, jwk) = match alg {
            Algorithm::RS256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| failed("RSA"))?;
                let spki = pair.public_key().as_der().map_err(|_| failed("RSA"))?.as_ref().to_vec();
                let (n, e) = super::keys::rsa_parts(pair.public_key().as_ref()).ok_or_else(|| failed("RSA"))?;
                let jwk = json!({"kty": "RSA", "n": b64url(n), "e": b64url(e)});
                (Signer::Rsa(pair), spki, jwk)
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| failed("EC"))?;
                let spki = pair.public_key().as_der().map_err(|_| failed("EC"))?.as_ref().to_vec();
                let point = pair.public_key().as_ref();
                let (x, y) = point.get(1..33).zip(point.get(33..65)).ok_or_else(|| failed("EC"))?;
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y)});
                (Signer::Ec(pair), spki, jwk)
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().map_err(|_| failed("Ed25519"))?;
                let spki = pair.public_key().as_der().map_err(|_| failed("Ed25519"))?.as_ref().to_vec();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key().as_ref())});
                (Signer::Ed(pair), spki, jwk)
            }
            other => return Err(format!("no test keys for {other:?}")),
        };
        Ok(TestKey { alg, signer, spki, jwk })
    }

    /// The public key as a PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki)
    }

    /// The public key as a JWK with `kid`, and `alg` when given.
    pub fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = self.jwk.clone();
        if let Value::Object(m) = &mut jwk {
            m.insert("kid".into(), kid.into());
            if let Some(alg) = alg {
                m.insert("alg".into(), alg.into());
            }
        }
        jwk
    }

    /// A token with header `{"alg": <this key's>, "typ": "JWT"}` plus `kid`
    /// when given, and `claims`, signed by this key.
    pub fn token(&self, kid: Option<&str>, claims: &Value) -> Result<String, String> {
        let mut header = json!({"alg": format!("{:?}", self.alg), "typ": "JWT"});
        if let (Some(kid), Value::Object(m)) = (kid, &mut header) {
            m.insert("kid".into(), kid.into());
        }
        self.sign(&header, claims)
    }

    /// Any header and claims, signed by this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let message = signing_input(header, claims);
        let signature = match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message.as_bytes(), &mut sig)
                    .map_err(|_| "cannot sign".to_string())?;
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&SystemRandom::new(), message.as_bytes())
                .map_err(|_| "cannot sign".to_string())?
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(message.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{message}.{}", b64url(&signature)))
    }
}

/// Any header and claims, signed with HMAC-SHA256 under `secret` (which
/// may be anything: a public key's bytes, for the confusion attack).
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    use aws_lc_rs::hmac;
    let message = signing_input(header, claims);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message.as_bytes());
    format!("{message}.{}", b64url(tag.as_ref()))
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
}

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk.first().copied(), chunk.get(1).copied(), chunk.get(2).copied()];
        let n =
            (u32::from(b[0].unwrap_or(0)) << 16) | (u32::from(b[1].unwrap_or(0)) << 8) | u32::from(b[2].unwrap_or(0));
        let digits = 1 + b.iter().filter(|x| x.is_some()).count();
        for i in 0..4 {
            if i < digits {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding, as JWS uses.
pub fn b64url(bytes: &[u8]) -> String {
    base64(bytes, URL_SAFE, false)
}

/// A PEM block of `der` with `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let text = base64(der, STANDARD, true);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
