//! Password hashing: argon2id with the OWASP parameters (19 MiB, two
//! passes, one lane), stored as PHC strings.
//!
//! Hashing takes tens of milliseconds on purpose, so it runs on the auth
//! workers only. A stored hash comes from the redb file, which is hostile
//! like any other input: its parameters are bounded before it is used, or
//! a planted `m=4000000` would make each login allocate gigabytes.
//!
//! [`Passwords`] is a trait so that the login logic can be tested for doing
//! the same work whether or not the user exists, without timing anything.

use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// OWASP's first argon2id choice: m = 19456 KiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

/// Bounds on the parameters of a stored hash (a few times the ones used).
const MAX_M_COST_KIB: u32 = 4 * M_COST_KIB;
const MAX_T_COST: u32 = 8;
const MAX_P_COST: u32 = 4;

/// Shortest and longest password, in bytes. The upper bound is checked
/// before hashing so nobody makes a worker hash megabytes.
pub const MIN_BYTES: usize = 8;
pub const MAX_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hasher refused (no randomness for a salt, say): a server fault.
    #[error("password hashing: {0}")]
    Hash(String),
}

/// Hashing and checking passwords.
pub trait Passwords: Sync {
    /// A new PHC string for `password`, with a random salt.
    fn hash(&self, password: &[u8]) -> Result<String, PasswordError>;
    /// Whether `password` matches `phc`; false for a malformed or
    /// out-of-bounds `phc` too.
    fn verify(&self, phc: &str, password: &[u8]) -> bool;
    /// A hash that matches no password anyone sends: verified against when
    /// the user does not exist, so that costs what a wrong password costs.
    fn dummy(&self) -> &str;
}

/// The argon2id hasher.
#[derive(Debug, Default)]
pub struct Argon2id {
    dummy: OnceLock<String>,
}

fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl Passwords for Argon2id {
    fn hash(&self, password: &[u8]) -> Result<String, PasswordError> {
        let h = hasher()?.hash_password(password).map_err(|e| PasswordError::Hash(e.to_string()))?;
        Ok(h.to_string())
    }

    fn verify(&self, phc: &str, password: &[u8]) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else { return false };
        let Ok(params) = Params::try_from(&parsed) else { return false };
        if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST {
            return false;
        }
        // The algorithm, version and parameters come from the stored hash.
        Argon2::default().verify_password(password, &parsed).is_ok()
    }

    fn dummy(&self) -> &str {
        self.dummy.get_or_init(|| {
            // A random password: nothing matches it. Hashed with the same
            // parameters as real ones so verifying against it costs the same.
            let mut secret = [0u8; 32];
            let _ = getrandom::fill(&mut secret);
            match self.hash(&secret) {
                Ok(h) => h,
                // Unreachable in practice; a fixed PHC string with the same
                // parameters still costs one full hash to verify.
                Err(_) => "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$\
                           AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                    .to_string(),
            }
        })
    }
}

/// The process's hasher (its dummy hash is made once).
pub fn argon2id() -> &'static Argon2id {
    static ONE: OnceLock<Argon2id> = OnceLock::new();
    ONE.get_or_init(Argon2id::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let p = Argon2id::default();
        let h = p.hash(b"correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(p.verify(&h, b"correct horse"));
        assert!(!p.verify(&h, b"correct horsf"));
        assert_ne!(h, p.hash(b"correct horse").unwrap(), "salted");
        let d = p.dummy().to_string();
        assert!(d.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{d}");
        assert!(!p.verify(&d, b""));
        assert_eq!(p.dummy(), d, "made once");
    }

    #[test]
    fn hostile_stored_hashes_are_refused_cheaply() {
        let p = Argon2id::default();
        for phc in [
            "",
            "$",
            "not a hash",
            "$argon2id$v=19$m=4000000,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=19456,t=1000,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=19456,t=2,p=64$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=19456,t=2,p=1$$",
        ] {
            assert!(!p.verify(phc, b"password"), "{phc}");
        }
    }

    /// Prints the cost of one hash and one verification (a figure, not a
    /// check): `cargo test --release --lib password::tests::hash_time -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn hash_time() {
        let p = Argon2id::default();
        let mut hashes = Vec::new();
        let mut verifies = Vec::new();
        let h = p.hash(b"a password").unwrap();
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let _ = p.hash(b"a password").unwrap();
            hashes.push(t.elapsed());
            let t = std::time::Instant::now();
            assert!(p.verify(&h, b"a password"));
            verifies.push(t.elapsed());
        }
        hashes.sort();
        verifies.sort();
        println!(
            "argon2id m=19456 t=2 p=1: hash median {:?} min {:?}; verify median {:?} min {:?}",
            hashes[10], hashes[0], verifies[10], verifies[0]
        );
    }
}
