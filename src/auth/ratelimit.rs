//! Rate limits that outlive the process: fixed windows counted in the
//! identity tables (kind `rate`), so a restart does not hand an attacker a
//! fresh set of guesses.
//!
//! A window opens at the first event counted for a `(scope, key)` and
//! lasts [`Limit::window`]; at most [`Limit::max`] events fit in it. The
//! entry's kv expiry is the window's end, so store-writer prunes old
//! windows in slices and a window past its end reads as absent.
//!
//! [`check`] reads on any thread (to refuse before doing expensive work,
//! such as hashing a password); [`check_kv`], [`record`] and [`hit`] run
//! inside a store-writer job, where a read-then-write is atomic.

use std::time::Duration;

use crate::store::kv::{self, Kv};
use crate::store::{Store, StoreError};

/// The kv kind of every counter.
pub const KIND: &str = "rate";

/// At most `max` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

/// Sign-in ceremonies started (OAuth `start`, passkey `register/start` and
/// `login/start`) per client address: each keeps single-use state in the
/// store until it expires, so this bounds what one address can make the
/// store hold.
pub const CEREMONIES_PER_IP: Limit = Limit { max: 60, window: Duration::from_secs(60) };
pub const SCOPE_CEREMONY_IP: &str = "ceremony-ip";

/// The caller is over the limit and may try again in `retry_after_secs`
/// (at least 1, for a `Retry-After` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Window {
    /// Events counted so far.
    n: u32,
    /// When the window ends, ms since the epoch.
    end: u64,
}

fn entry_key(scope: &str, key: &str) -> String {
    format!("{scope}/{key}")
}

/// The window stored for this key, if live. An entry that does not decode
/// (a damaged file) counts as no window: the limit then starts over, which
/// fails open for one window rather than locking a user out for good.
fn decode(raw: Option<Vec<u8>>, now_ms: u64) -> Option<Window> {
    raw.and_then(|v| serde_json::from_slice::<Window>(&v).ok()).filter(|w| w.end > now_ms)
}

fn verdict(w: Option<Window>, limit: Limit, now_ms: u64) -> Result<(), Limited> {
    match w {
        Some(w) if w.n >= limit.max => {
            Err(Limited { retry_after_secs: w.end.saturating_sub(now_ms).div_ceil(1000).max(1) })
        }
        _ => Ok(()),
    }
}

/// Counts one event of `(scope, key)` in a write job of its own; refused
/// without a write when the key is over `limit` already.
pub fn count(
    store: &Store,
    writer: &crate::wait::Sender<crate::store::WriterCmd>,
    (scope, key): (&'static str, String),
    limit: Limit,
    now_ms: u64,
) -> Result<Result<(), Limited>, StoreError> {
    if let Err(l) = check(store, scope, &key, limit, now_ms)? {
        return Ok(Err(l));
    }
    crate::store::write_job(writer, move |txn| hit(&mut Kv::open(txn, now_ms)?, scope, &key, limit, now_ms))
}

/// Keeps single-use ceremony state (`kind`, `key`) until `expires_ms`,
/// counted against the address's [`CEREMONIES_PER_IP`]. An address over
/// the limit is refused before anything is written: a refusal costs no
/// commit.
pub fn keep_ceremony(
    store: &Store,
    writer: &crate::wait::Sender<crate::store::WriterCmd>,
    ip: Option<std::net::IpAddr>,
    (kind, key): (&'static str, String),
    value: Vec<u8>,
    expires_ms: u64,
    now_ms: u64,
) -> Result<Result<(), Limited>, StoreError> {
    let ipk = ip_key(ip);
    if let Err(l) = check(store, SCOPE_CEREMONY_IP, &ipk, CEREMONIES_PER_IP, now_ms)? {
        return Ok(Err(l));
    }
    crate::store::write_job(writer, move |txn| {
        let mut kv = Kv::open(txn, now_ms)?;
        if let Err(l) = hit(&mut kv, SCOPE_CEREMONY_IP, &ipk, CEREMONIES_PER_IP, now_ms)? {
            return Ok(Err(l));
        }
        kv.put(kind, &key, &value, expires_ms)?;
        Ok(Ok(()))
    })
}

impl Limited {
    /// The 429 answer, with `Retry-After`.
    pub fn reply(self) -> crate::auth::service::AuthReply {
        crate::auth::service::AuthReply::error(
            429,
            "rate_limited",
            &format!("too many attempts; retry in {} s", self.retry_after_secs),
        )
        .with_header("Retry-After", self.retry_after_secs.to_string())
    }
}

/// Whether one more event of `(scope, key)` fits, read outside a write job
/// (another thread may count one in between: use it to refuse early, and
/// count with [`record`]).
pub fn check(
    store: &Store,
    scope: &str,
    key: &str,
    limit: Limit,
    now_ms: u64,
) -> Result<Result<(), Limited>, StoreError> {
    let w = decode(kv::get(store, KIND, &entry_key(scope, key), now_ms)?, now_ms);
    Ok(verdict(w, limit, now_ms))
}

/// [`check`] inside a write job.
pub fn check_kv(kv: &Kv, scope: &str, key: &str, limit: Limit, now_ms: u64) -> Result<Result<(), Limited>, StoreError> {
    let w = decode(kv.get(KIND, &entry_key(scope, key))?, now_ms);
    Ok(verdict(w, limit, now_ms))
}

/// Counts one event of `(scope, key)`, opening a window if none is live;
/// returns the count in the window. Saturates rather than wraps.
pub fn record(kv: &mut Kv, scope: &str, key: &str, limit: Limit, now_ms: u64) -> Result<u32, StoreError> {
    let k = entry_key(scope, key);
    let w = match decode(kv.get(KIND, &k)?, now_ms) {
        Some(w) => Window { n: w.n.saturating_add(1), end: w.end },
        None => {
            let window_ms = u64::try_from(limit.window.as_millis()).unwrap_or(u64::MAX);
            Window { n: 1, end: now_ms.saturating_add(window_ms.max(1)) }
        }
    };
    let value = serde_json::to_vec(&w).map_err(|e| StoreError::Db(format!("rate window: {e}")))?;
    kv.put(KIND, &k, &value, w.end)?;
    Ok(w.n)
}

/// Check and count in one step: `Err(Limited)` (counting nothing) when the
/// limit is reached, else the event is counted.
pub fn hit(kv: &mut Kv, scope: &str, key: &str, limit: Limit, now_ms: u64) -> Result<Result<(), Limited>, StoreError> {
    if let Err(l) = check_kv(kv, scope, key, limit, now_ms)? {
        return Ok(Err(l));
    }
    record(kv, scope, key, limit, now_ms)?;
    Ok(Ok(()))
}

/// Forgets `(scope, key)`'s window (a successful login clears the
/// account's failures).
pub fn reset(kv: &mut Kv, scope: &str, key: &str) -> Result<(), StoreError> {
    kv.remove(KIND, &entry_key(scope, key))?;
    Ok(())
}

/// The key a peer address counts under: IPv4 whole, IPv6 by its /64 (one
/// host usually holds a whole /64, so counting single addresses would let
/// it rotate through them). `unknown` without an address.
pub fn ip_key(ip: Option<std::net::IpAddr>) -> String {
    match ip {
        Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Some(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limit = Limit { max: 3, window: Duration::from_secs(60) };

    fn with_kv<T>(store: &Store, now: u64, f: impl FnOnce(&mut Kv) -> T) -> T {
        let txn = store.db().begin_write().unwrap();
        let out = {
            let mut kv = Kv::open(&txn, now).unwrap();
            f(&mut kv)
        };
        txn.commit().unwrap();
        out
    }

    #[test]
    fn window_fills_refuses_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = 1_000_000;
        for i in 1..=3 {
            assert_eq!(check(&store, "s", "k", L, t0).unwrap(), Ok(()));
            assert_eq!(with_kv(&store, t0, |kv| record(kv, "s", "k", L, t0).unwrap()), i);
        }
        // Full: refused with the time left in the window, rounded up.
        assert_eq!(check(&store, "s", "k", L, t0 + 500).unwrap(), Err(Limited { retry_after_secs: 60 }));
        assert_eq!(check(&store, "s", "k", L, t0 + 59_001).unwrap(), Err(Limited { retry_after_secs: 1 }));
        assert_eq!(
            with_kv(&store, t0, |kv| hit(kv, "s", "k", L, t0 + 1000).unwrap()),
            Err(Limited { retry_after_secs: 59 })
        );
        // Other keys and scopes are apart.
        assert_eq!(check(&store, "s", "other", L, t0).unwrap(), Ok(()));
        assert_eq!(check(&store, "t", "k", L, t0).unwrap(), Ok(()));
        // The window ends: a fresh one opens.
        let t1 = t0 + 60_000;
        assert_eq!(check(&store, "s", "k", L, t1).unwrap(), Ok(()));
        assert_eq!(with_kv(&store, t1, |kv| hit(kv, "s", "k", L, t1).unwrap()), Ok(()));
        assert_eq!(with_kv(&store, t1, |kv| record(kv, "s", "k", L, t1).unwrap()), 2);
        // Reset forgets it.
        with_kv(&store, t1, |kv| reset(kv, "s", "k").unwrap());
        assert_eq!(with_kv(&store, t1, |kv| record(kv, "s", "k", L, t1).unwrap()), 1);
    }

    #[test]
    fn counts_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 5_000;
        {
            let store = Store::open(dir.path()).unwrap();
            for _ in 0..3 {
                with_kv(&store, t0, |kv| record(kv, "login", "ann", L, t0).unwrap());
            }
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(check(&store, "login", "ann", L, t0 + 1).unwrap().is_err());
    }

    #[test]
    fn a_damaged_window_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        with_kv(&store, 0, |kv| kv.put(KIND, "s/k", b"\xff not json", 0).unwrap());
        assert_eq!(check(&store, "s", "k", L, 10).unwrap(), Ok(()));
        assert_eq!(with_kv(&store, 10, |kv| record(kv, "s", "k", L, 10).unwrap()), 1);
    }

    #[test]
    fn ip_keys() {
        use std::net::IpAddr;
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(ip_key(Some(v4)), "10.1.2.3");
        assert_eq!(ip_key(Some(mapped)), "10.1.2.3");
        assert_eq!(ip_key(Some(a)), ip_key(Some(b)));
        assert_eq!(ip_key(Some(a)), "2001:db8:1:2::/64");
        assert_eq!(ip_key(None), "unknown");
    }
}
