//! The public keys tokens are verified with: one from `--jwt-public-key`
//! (a PEM file) and those of `--jwks` (a JSON Web Key Set file), read into
//! a [`PublicKeys`] that is replaced whole when the files are read again.
//!
//! Each key has exactly one algorithm, fixed here by the key's type (RSA:
//! RS256, EC P-256: ES256, Ed25519: EdDSA) and never by a token: a token
//! whose header names another algorithm is refused before any signature is
//! checked. A JWKS entry's `alg`, when it has one, must be that algorithm,
//! or the file is refused.
//!
//! JWKS entries are found by `kid`, and a `kid` may be used by several
//! issuers: an entry with an `iss` member is that issuer's key only; an entry
//! without one is the key of the configured issuer (`--jwt-issuer`, or of
//! any issuer when none is configured). A `kid` is either unbound (one entry)
//! or bound (one entry per issuer), never both, so that a lookup finds one
//! key or none and never falls back to another.
//!
//! The files are the operator's, but they are still parsed without trusting
//! them: sizes are capped, DER is read with checked lengths, and a key that
//! does not parse as what it claims to be refuses the whole file.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ED25519};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};

use super::{AuthError, Options};

/// Largest key file read (PEM or JWKS); real ones are a few KiB.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;
/// Most keys in a JWKS file.
pub const MAX_JWKS_KEYS: usize = 1024;
/// Longest `kid` or `iss` of a JWKS entry, in bytes.
pub const MAX_JWKS_NAME_BYTES: usize = 256;
/// RSA moduli accepted, in bytes: 2048 to 8192 bits, what the verifier takes.
const RSA_MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;

/// One verification key and the checks a token verified with it must pass.
pub(crate) struct Key {
    pub alg: Algorithm,
    pub decoding: DecodingKey,
    pub validation: Validation,
}

impl Key {
    /// A key for `alg`. `issuer`: the `iss` tokens must carry (a JWKS
    /// entry's binding, or the configured issuer), or `None` for any.
    pub fn new(alg: Algorithm, decoding: DecodingKey, options: &Options, issuer: Option<&str>) -> Key {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = options.leeway.as_secs();
        validation.validate_nbf = true;
        // `exp` is required by `Validation::new`. `aud` and `iss` are checked,
        // and then required, only when configured; otherwise tokens carrying
        // them are accepted as they are (the library would refuse any `aud`).
        match &options.audience {
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
        Key { alg, decoding, validation }
    }
}

/// The keys of one `kid` in the JWKS.
pub(crate) enum Kid {
    /// One key, for the configured issuer.
    Unbound(Box<Key>),
    /// One key per issuer, by `iss`.
    Bound(Vec<(String, Key)>),
}

/// Everything read from the key files, as one value swapped whole.
#[derive(Default)]
pub(crate) struct PublicKeys {
    /// `--jwt-public-key`: verifies tokens without a `kid`.
    pub pem: Option<Key>,
    /// `--jwks`, by `kid`.
    pub jwks: HashMap<String, Kid>,
}

/// What a load read, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The algorithm of the `--jwt-public-key` key, when one is configured.
    pub public_key: Option<Algorithm>,
    /// Keys in the `--jwks` file, when one is configured.
    pub jwks: Option<usize>,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.public_key, self.jwks) {
            (None, None) => f.write_str("HS256 secret only; no key files"),
            (Some(alg), None) => write!(f, "public key {alg:?}"),
            (None, Some(n)) => write!(f, "{n} JWKS keys"),
            (Some(alg), Some(n)) => write!(f, "public key {alg:?}, {n} JWKS keys"),
        }
    }
}

impl PublicKeys {
    /// Reads the files `options` names. Any problem refuses the whole load.
    pub fn load(options: &Options) -> Result<(PublicKeys, Loaded), AuthError> {
        let mut keys = PublicKeys::default();
        let mut loaded = Loaded { public_key: None, jwks: None };
        if let Some(path) = &options.public_key {
            let shown = |problem: String| AuthError::Keys(format!("jwt-public-key {}: {problem}", path.display()));
            let text = read_capped(path).map_err(shown)?;
            let (alg, decoding) = pem_key(&text).map_err(shown)?;
            keys.pem = Some(Key::new(alg, decoding, options, options.issuer.as_deref()));
            loaded.public_key = Some(alg);
        }
        if let Some(path) = &options.jwks {
            let shown = |problem: String| AuthError::Keys(format!("jwks {}: {problem}", path.display()));
            let text = read_capped(path).map_err(shown)?;
            let (jwks, n) = jwks(&text, options).map_err(shown)?;
            keys.jwks = jwks;
            loaded.jwks = Some(n);
        }
        Ok((keys, loaded))
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("larger than {MAX_KEY_FILE_BYTES} bytes; not a key file"));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// PEM: a SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).

/// DER object identifiers of the key types accepted.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// The key of a PEM `PUBLIC KEY` file and the algorithm its type fixes.
fn pem_key(text: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::SubjectPublicKeyInfoDer;
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(text)
        .map_err(|e| format!("no `BEGIN PUBLIC KEY` section ({e}); give the public key, not a private key"))?;
    spki_key(spki.as_ref())
}

/// Reads a DER SubjectPublicKeyInfo: RSA, EC on P-256, or Ed25519.
pub(crate) fn spki_key(der: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let bad = || "not a DER SubjectPublicKeyInfo".to_string();
    let (spki, rest) = der_next(der, TAG_SEQUENCE).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let (alg_id, rest) = der_next(spki, TAG_SEQUENCE).ok_or_else(bad)?;
    let (bits, rest) = der_next(rest, TAG_BIT_STRING).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(bad()),
    };
    let (oid, params) = der_next(alg_id, TAG_OID).ok_or_else(bad)?;
    match oid {
        OID_RSA => {
            rsa_modulus_ok(key)?;
            Ok((Algorithm::RS256, DecodingKey::from_rsa_der(key)))
        }
        OID_EC => {
            let curve = der_next(params, TAG_OID).map(|(c, _)| c);
            if curve != Some(OID_P256) {
                return Err("an EC key on a curve other than P-256 (only ES256 is accepted)".into());
            }
            check_parses(&ECDSA_P256_SHA256_FIXED, key, "EC P-256")?;
            Ok((Algorithm::ES256, DecodingKey::from_ec_der(key)))
        }
        OID_ED25519 => {
            ed25519_ok(key)?;
            Ok((Algorithm::EdDSA, DecodingKey::from_ed_der(key)))
        }
        _ => Err("a key type other than RSA, EC P-256 or Ed25519".into()),
    }
}

/// The content of the DER element at the start of `input`, which must have
/// tag `tag`, and what follows it. Definite lengths only, as DER requires.
pub(crate) fn der_next(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    rest.split_at_checked(len)
}

/// The modulus and exponent of a DER RSAPublicKey (RFC 8017), without the
/// sign byte of the modulus.
pub(crate) fn rsa_parts(pkcs1: &[u8]) -> Option<(&[u8], &[u8])> {
    let (seq, rest) = der_next(pkcs1, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (n, rest) = der_next(seq, TAG_INTEGER)?;
    let (e, rest) = der_next(rest, TAG_INTEGER)?;
    if !rest.is_empty() {
        return None;
    }
    Some((strip_zeros(n), strip_zeros(e)))
}

fn strip_zeros(mut b: &[u8]) -> &[u8] {
    while let Some((0, rest)) = b.split_first() {
        b = rest;
    }
    b
}

fn rsa_modulus_ok(pkcs1: &[u8]) -> Result<(), String> {
    let (n, e) = rsa_parts(pkcs1).ok_or("not a DER RSAPublicKey")?;
    rsa_sizes_ok(n, e)
}

fn rsa_sizes_ok(n: &[u8], e: &[u8]) -> Result<(), String> {
    if !RSA_MODULUS_BYTES.contains(&n.len()) {
        return Err(format!("an RSA key of {} bits; 2048 to 8192 are accepted", n.len() * 8));
    }
    if e.is_empty() || e.len() > 8 {
        return Err("an RSA key with an unusable exponent".into());
    }
    Ok(())
}

fn ed25519_ok(key: &[u8]) -> Result<(), String> {
    if key.len() != 32 {
        return Err("an Ed25519 key that is not 32 bytes".into());
    }
    check_parses(&ED25519, key, "Ed25519")
}

fn check_parses(alg: &'static dyn VerificationAlgorithm, key: &[u8], what: &str) -> Result<(), String> {
    ParsedPublicKey::new(alg, key).map(|_| ()).map_err(|e| format!("not a valid {what} public key ({e})"))
}

// ---------------------------------------------------------------------------
// JWKS.

/// One member of `keys`, with the members roomcast reads; others (`x5c`,
/// `key_ops`, ...) are ignored.
#[derive(serde::Deserialize)]
struct Entry {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    iss: Option<String>,
}

#[derive(serde::Deserialize)]
struct Set {
    keys: Vec<serde_json::Value>,
}

/// Reads a JWKS file into its keys by `kid`, and how many there are.
fn jwks(text: &[u8], options: &Options) -> Result<(HashMap<String, Kid>, usize), String> {
    let set: Set = serde_json::from_slice(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(format!("more than {MAX_JWKS_KEYS} keys"));
    }
    let mut by_kid: HashMap<String, Kid> = HashMap::new();
    let mut count = 0;
    for (i, value) in set.keys.into_iter().enumerate() {
        let entry: Entry = serde_json::from_value(value).map_err(|e| format!("key {i}: {e}"))?;
        // Encryption keys may share a set with signing keys; they sign nothing.
        if entry.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = match &entry.kid {
            Some(k) if !k.is_empty() && k.len() <= MAX_JWKS_NAME_BYTES => k.clone(),
            _ => return Err(format!("key {i}: needs a `kid` of 1 to {MAX_JWKS_NAME_BYTES} bytes")),
        };
        let at = |problem: String| format!("key {kid:?}: {problem}");
        let (alg, decoding) = jwk_key(&entry).map_err(at)?;
        match &entry.iss {
            Some(iss) if iss.is_empty() || iss.len() > MAX_JWKS_NAME_BYTES => {
                return Err(at(format!("`iss` must be 1 to {MAX_JWKS_NAME_BYTES} bytes")));
            }
            Some(iss) => {
                let key = Key::new(alg, decoding, options, Some(iss));
                match by_kid.entry(kid.clone()).or_insert_with(|| Kid::Bound(Vec::new())) {
                    Kid::Unbound(_) => return Err(at("used both with and without `iss`".into())),
                    Kid::Bound(list) if list.iter().any(|(i, _)| i == iss) => {
                        return Err(at(format!("given twice for issuer {iss:?}")))
                    }
                    Kid::Bound(list) => list.push((iss.clone(), key)),
                }
            }
            None => {
                if by_kid.contains_key(&kid) {
                    return Err(at("given twice (or both with and without `iss`)".into()));
                }
                let key = Key::new(alg, decoding, options, options.issuer.as_deref());
                by_kid.insert(kid.clone(), Kid::Unbound(Box::new(key)));
            }
        }
        count += 1;
    }
    Ok((by_kid, count))
}

/// The key of one JWK and its algorithm, which the key type fixes.
fn jwk_key(entry: &Entry) -> Result<(Algorithm, DecodingKey), String> {
    let member =
        |name: &str, v: &Option<String>| v.clone().ok_or_else(|| format!("{} key without `{name}`", entry.kty));
    let b64 = |e: jsonwebtoken::errors::Error| format!("bad base64url: {e}");
    let (alg, decoding) = match entry.kty.as_str() {
        "RSA" => {
            let key =
                DecodingKey::from_rsa_components(&member("n", &entry.n)?, &member("e", &entry.e)?).map_err(b64)?;
            if let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() {
                rsa_sizes_ok(strip_zeros(n), strip_zeros(e))?;
            }
            (Algorithm::RS256, key)
        }
        "EC" => {
            if entry.crv.as_deref() != Some("P-256") {
                return Err("an EC key must be on `crv` P-256 (only ES256 is accepted)".into());
            }
            let x = member("x", &entry.x)?;
            let y = member("y", &entry.y)?;
            let key = DecodingKey::from_ec_components(&x, &y).map_err(b64)?;
            let point = key.try_get_as_bytes().map_err(|e| e.to_string())?;
            if point.len() != 65 {
                return Err("an EC P-256 key whose `x` and `y` are not 32 bytes each".into());
            }
            check_parses(&ECDSA_P256_SHA256_FIXED, point, "EC P-256")?;
            (Algorithm::ES256, key)
        }
        "OKP" => {
            if entry.crv.as_deref() != Some("Ed25519") {
                return Err("an OKP key must be on `crv` Ed25519".into());
            }
            let key = DecodingKey::from_ed_components(&member("x", &entry.x)?).map_err(b64)?;
            ed25519_ok(key.try_get_as_bytes().map_err(|e| e.to_string())?)?;
            (Algorithm::EdDSA, key)
        }
        other => {
            return Err(format!(
                "`kty` {other:?} is not accepted (RSA, EC P-256 and OKP Ed25519 only; shared secrets never)"
            ))
        }
    };
    if let Some(named) = &entry.alg {
        let fixed = format!("{alg:?}");
        if *named != fixed {
            return Err(format!("`alg` {named:?} does not match its {} key, which is {fixed}", entry.kty));
        }
    }
    Ok((alg, decoding))
}
