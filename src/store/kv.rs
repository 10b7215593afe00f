//! Identity state: a small key-value space in the redb file for accounts,
//! refresh tokens, rate counters and single-use ceremony state (OAuth,
//! passkeys), each entry with an optional expiry.
//!
//! Tables:
//! - `auth`: `(kind, key)` -> 8 bytes of expiry (ms since the epoch, little
//!   endian; 0 = never) followed by the value (the owner's encoding, JSON
//!   so far). `kind` names the owner ("user", "refresh", "rate", ...).
//! - `auth_expiry`: `(expires_ms, kind, key)` -> `()`, an index so expired
//!   entries are pruned in slices without a scan.
//!
//! Reads happen on any thread ([`get`]); writes only inside a
//! [`super::WriteJob`] on `store-writer` ([`Kv`]). An entry past its expiry
//! reads as absent whether or not it was pruned yet, so pruning is only
//! about space. Values come back from disk: their owners decode them as
//! untrusted bytes.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError};

pub(crate) const AUTH: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("auth");
pub(crate) const AUTH_EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("auth_expiry");

/// Splits a stored entry into its expiry and value; `None` for an entry
/// too short to hold an expiry (a damaged file).
fn split(raw: &[u8]) -> Option<(u64, &[u8])> {
    let (head, value) = raw.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), value))
}

fn live(raw: &[u8], now_ms: u64) -> Option<Vec<u8>> {
    match split(raw)? {
        (exp, _) if exp != 0 && exp <= now_ms => None,
        (_, value) => Some(value.to_vec()),
    }
}

/// The live value of `(kind, key)`, read in a read transaction of its own.
pub fn get(store: &Store, kind: &str, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = store.db().begin_read()?;
    let table = match txn.open_table(AUTH) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get((kind, key))?.and_then(|v| live(v.value(), now_ms)))
}

/// Takes `(kind, key)` out of the store and returns what it held: a
/// single-use value (OAuth state, a passkey ceremony) can be taken once.
/// A key that is not there is answered from a read, without a write job,
/// so guessing costs no commit.
pub fn take_once(
    store: &Store,
    writer: &crate::wait::Sender<super::WriterCmd>,
    kind: &'static str,
    key: &str,
    now_ms: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    if get(store, kind, key, now_ms)?.is_none() {
        return Ok(None);
    }
    let key = key.to_string();
    super::write_job(writer, move |txn| {
        let mut kv = Kv::open(txn, now_ms)?;
        let value = kv.get(kind, &key)?;
        if value.is_some() {
            kv.remove(kind, &key)?;
        }
        Ok(value)
    })
}

/// The identity tables inside one write transaction.
pub struct Kv<'t> {
    auth: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    expiry: redb::Table<'t, (u64, &'static str, &'static str), ()>,
    now_ms: u64,
}

impl<'t> Kv<'t> {
    pub fn open(txn: &'t WriteTransaction, now_ms: u64) -> Result<Kv<'t>, StoreError> {
        Ok(Kv { auth: txn.open_table(AUTH)?, expiry: txn.open_table(AUTH_EXPIRY)?, now_ms })
    }

    /// The live value of `(kind, key)`.
    pub fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.auth.get((kind, key))?.and_then(|v| live(v.value(), self.now_ms)))
    }

    /// Stores `value` under `(kind, key)` until `expires_ms` (0: never),
    /// replacing any entry there.
    pub fn put(&mut self, kind: &str, key: &str, value: &[u8], expires_ms: u64) -> Result<(), StoreError> {
        self.remove(kind, key)?;
        let mut raw = Vec::with_capacity(8 + value.len());
        raw.extend_from_slice(&expires_ms.to_le_bytes());
        raw.extend_from_slice(value);
        self.auth.insert((kind, key), raw.as_slice())?;
        if expires_ms != 0 {
            self.expiry.insert((expires_ms, kind, key), ())?;
        }
        Ok(())
    }

    /// Removes `(kind, key)` and its expiry entry; true if it was there
    /// (live or not).
    pub fn remove(&mut self, kind: &str, key: &str) -> Result<bool, StoreError> {
        let old = self.auth.remove((kind, key))?.map(|v| split(v.value()).map_or(0, |(exp, _)| exp));
        if let Some(exp) = old.filter(|e| *e != 0) {
            self.expiry.remove((exp, kind, key))?;
        }
        Ok(old.is_some())
    }

    /// Keys of `kind` starting with `prefix`, at most `limit`, live or not
    /// (for listing a user's credentials, say).
    pub fn keys_with_prefix(&self, kind: &str, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.auth.range::<(&str, &str)>((kind, prefix)..)? {
            let (k, _) = item?;
            let (k_kind, k_key) = k.value();
            if k_kind != kind || !k_key.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push(k_key.to_string());
        }
        Ok(out)
    }
}

/// Deletes up to `budget` entries whose expiry is before `now_ms`, in
/// `txn`; returns how many it deleted.
pub(crate) fn prune(txn: &WriteTransaction, now_ms: u64, budget: usize) -> Result<usize, StoreError> {
    let mut auth = txn.open_table(AUTH)?;
    let mut expiry = txn.open_table(AUTH_EXPIRY)?;
    let mut dead: Vec<(u64, String, String)> = Vec::new();
    for item in expiry.range::<(u64, &str, &str)>(..(now_ms, "", ""))? {
        if dead.len() == budget {
            break;
        }
        let (k, _) = item?;
        let (exp, kind, key) = k.value();
        dead.push((exp, kind.to_string(), key.to_string()));
    }
    for (exp, kind, key) in &dead {
        expiry.remove((*exp, kind.as_str(), key.as_str()))?;
        // The entry may have been replaced with another expiry.
        let current = auth.get((kind.as_str(), key.as_str()))?.and_then(|v| split(v.value()).map(|(e, _)| e));
        if current == Some(*exp) {
            auth.remove((kind.as_str(), key.as_str()))?;
        }
    }
    Ok(dead.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn write(store: &Store, f: impl FnOnce(&mut Kv) -> Result<(), StoreError>, now: u64) {
        let txn = store.db().begin_write().unwrap();
        {
            let mut kv = Kv::open(&txn, now).unwrap();
            f(&mut kv).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn put_get_expire_prune() {
        let (_d, store) = temp();
        assert_eq!(get(&store, "user", "ann", 0).unwrap(), None);
        write(&store, |kv| kv.put("user", "ann", b"{}", 0), 100);
        write(&store, |kv| kv.put("state", "s1", b"x", 500), 100);
        assert_eq!(get(&store, "user", "ann", 10_000).unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(get(&store, "state", "s1", 499).unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(get(&store, "state", "s1", 500).unwrap(), None, "expired reads as absent");
        // Replaced with a later expiry: an old index entry must not delete it.
        write(&store, |kv| kv.put("state", "s1", b"y", 900), 100);
        let txn = store.db().begin_write().unwrap();
        assert_eq!(prune(&txn, 600, 10).unwrap(), 0, "the index entry moved with the value");
        assert_eq!(prune(&txn, 1000, 10).unwrap(), 1);
        txn.commit().unwrap();
        assert_eq!(get(&store, "state", "s1", 0).unwrap(), None);
        assert_eq!(get(&store, "user", "ann", 0).unwrap().as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn remove_and_prefix() {
        let (_d, store) = temp();
        write(
            &store,
            |kv| {
                kv.put("cred", "ann/1", b"a", 0)?;
                kv.put("cred", "ann/2", b"b", 0)?;
                kv.put("cred", "bo/1", b"c", 0)?;
                kv.put("crex", "ann/9", b"d", 0)
            },
            0,
        );
        let txn = store.db().begin_write().unwrap();
        {
            let mut kv = Kv::open(&txn, 0).unwrap();
            assert_eq!(kv.keys_with_prefix("cred", "ann/", 10).unwrap(), ["ann/1", "ann/2"]);
            assert_eq!(kv.keys_with_prefix("cred", "ann/", 1).unwrap(), ["ann/1"]);
            assert!(kv.remove("cred", "ann/1").unwrap());
            assert!(!kv.remove("cred", "ann/1").unwrap());
        }
        txn.commit().unwrap();
        assert_eq!(get(&store, "cred", "ann/1", 0).unwrap(), None);
    }

    #[test]
    fn a_damaged_entry_reads_as_absent() {
        let (_d, store) = temp();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(AUTH).unwrap().insert(("user", "x"), &b"short"[..]).unwrap();
        txn.commit().unwrap();
        assert_eq!(get(&store, "user", "x", 0).unwrap(), None);
    }
}
