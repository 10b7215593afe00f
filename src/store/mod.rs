//! Durable storage: the redb file under the data directory, its schema, and
//! the reads the gateway makes from it (room heads, history pages, dedup
//! lookups, backups).
//!
//! Writes go through one thread, `store-writer` ([`spawn_writer`]), which owns
//! every write transaction and commits appends in groups; reactors reach it
//! through a bounded channel and never wait for a commit. Large reads go
//! through a small [`ReaderPool`] so a reactor only ever does small bounded
//! reads itself ([`Store::room_head`], [`Store::dedup_get`]).
//!
//! Schema (tables of one redb file, `roomcast.redb`):
//! - `meta`: `"schema_version"` -> [`SCHEMA_VERSION`], checked at open.
//! - `messages`: `(room, seq)` -> compact record (see `codec`): one room's
//!   messages are one range scan.
//! - `rooms`: room -> `(last_seq, last_ts)`. It outlives retention, so seqs are
//!   never reused after old messages are pruned.
//! - `dedup`: `(room, user, client id)` -> `(seq, ts, expires_ms)`.
//! - `dedup_expiry`: `(expires_ms, room, user, client id)` -> `()`, an index
//!   so expired dedup entries are pruned without scanning `dedup`.
//! - `auth`, `auth_expiry`: identity state (accounts, refresh tokens, rate
//!   counters, ceremony state), see [`kv`].

pub(crate) mod codec;
pub mod kv;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

pub(crate) use reader::lower_priority;
pub use reader::{ReadWork, ReaderPool};
pub use writer::{spawn_writer, write_job, CommitSink, Record, WriteJob, WriterCmd, WriterConfig};

/// The database file inside the data directory.
pub const DB_FILE: &str = "roomcast.redb";
/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const SCHEMA_KEY: &str = "schema_version";

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
pub(crate) const ROOMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rooms");
pub(crate) const DEDUP: TableDefinition<(&str, &str, &str), (u64, u64, u64)> = TableDefinition::new("dedup");
pub(crate) const DEDUP_EXPIRY: TableDefinition<(u64, &str, &str, &str), ()> = TableDefinition::new("dedup_expiry");

/// redb's file signature: the first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Records copied per write transaction of a backup: bounds the memory the
/// backup's uncommitted pages take, whatever the size of the database.
const BACKUP_CHUNK: usize = 8192;
/// Page cache of the backup's destination file.
const BACKUP_CACHE: usize = 16 << 20;
/// The page cache of [`Store::open`] (`--store-cache-bytes` for `serve`).
pub const DEFAULT_CACHE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another `Store` in this one) has the file open.
    #[error("data directory {0} is in use by another roomcast process")]
    Locked(PathBuf),
    /// Written by a newer roomcast: refuse rather than misread it.
    #[error("{path}: schema version {found} is newer than this roomcast supports ({supported})")]
    SchemaNewer { path: PathBuf, found: u64, supported: u64 },
    /// Not ours: a non-redb file, or a redb file without our schema version.
    #[error("{0}: not a roomcast database")]
    Foreign(PathBuf),
    /// Any error redb reports (I/O below it, corruption, a failed commit).
    #[error("storage: {0}")]
    Db(String),
    /// A backup's target exists already: backups never replace a file.
    #[error("{0} exists already")]
    Exists(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

/// One message as read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub seq: u64,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    pub from: String,
    pub id: Option<String>,
    /// The body as raw JSON bytes, exactly as published.
    pub body: Vec<u8>,
}

/// A handle on the open database; clones share it. Reads may run on any
/// thread; writes belong to `store-writer` alone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// Test builds only: the next this many batch commits fail, as a full
    /// disk or an I/O error would make them.
    #[cfg(test)]
    pub(crate) fail_commits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store {
    /// Opens or creates `<data>/roomcast.redb`, creates tables, writes/checks
    /// the schema version.
    ///
    /// Another process holding the file gives [`StoreError::Locked`] at once
    /// (redb takes a non-blocking lock). A newer schema gives
    /// [`StoreError::SchemaNewer`]; a redb file without our meta table or
    /// version, or a non-redb file, gives [`StoreError::Foreign`].
    pub fn open(data: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(data, DEFAULT_CACHE)
    }

    /// [`Store::open`] with a page cache of `cache_bytes` (redb's own
    /// default is 1 GiB, which a busy server fills and keeps).
    pub fn open_with_cache(data: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        fs::create_dir_all(data)?;
        let path = data.join(DB_FILE);
        // Check the signature ourselves first: redb would report a foreign
        // file as corruption, which reads like damage to our own data.
        let existed = match fs::File::open(&path) {
            Ok(mut f) => {
                let mut head = [0u8; REDB_MAGIC.len()];
                let len = f.metadata()?.len();
                if len > 0 && (f.read_exact(&mut head).is_err() || head != REDB_MAGIC) {
                    return Err(StoreError::Foreign(path));
                }
                len > 0
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        let db = match redb::Builder::new().set_cache_size(cache_bytes).create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked(data.to_path_buf())),
            Err(e) => return Err(e.into()),
        };
        if existed {
            check_schema(&db, &path)?;
        }
        // Create every table (a no-op for those that exist) and stamp the
        // version, durably, before anyone writes a message.
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(ROOMS)?;
            txn.open_table(DEDUP)?;
            txn.open_table(DEDUP_EXPIRY)?;
            txn.open_table(kv::AUTH)?;
            txn.open_table(kv::AUTH_EXPIRY)?;
        }
        txn.commit()?;
        Ok(Store {
            db: Arc::new(db),
            #[cfg(test)]
            fail_commits: Arc::default(),
        })
    }

    /// Last seq and its ts for a room (0, 0 if none). One read transaction.
    pub fn room_head(&self, room: &str) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let rooms = txn.open_table(ROOMS)?;
        Ok(rooms.get(room)?.map_or((0, 0), |v| v.value()))
    }

    /// The name of every room the store has a head for, in name order:
    /// every room that ever committed a message, its messages pruned or not
    /// (its seqs live on). One read transaction; the names are the whole
    /// answer, a few bytes per room.
    pub fn room_names(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let rooms = txn.open_table(ROOMS)?;
        let mut names = Vec::new();
        for item in rooms.iter()? {
            let (room, _) = item?;
            names.push(room.value().to_string());
        }
        Ok(names)
    }

    /// Messages with `after < seq < before` (either bound optional),
    /// ascending. `oldest_first == false`: the newest `limit` of that range,
    /// and `more` says older ones exist in it; `oldest_first == true`: the
    /// oldest `limit`, and `more` says newer ones exist.
    pub fn page(
        &self,
        room: &str,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
        oldest_first: bool,
    ) -> Result<(Vec<StoredMsg>, bool), StoreError> {
        self.page_within(room, after, before, limit, oldest_first, usize::MAX)
    }

    /// [`Store::page`] that also stops once the messages read hold more
    /// than `max_bytes` of stored values (the one that crosses it is kept,
    /// so a page is never empty for size alone); `more` is then true. What
    /// a peer can make one read cost is bounded by bytes, not only by count.
    pub fn page_within(
        &self,
        room: &str,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
        oldest_first: bool,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMsg>, bool), StoreError> {
        let lo = match after {
            Some(a) => match a.checked_add(1) {
                Some(lo) => lo,
                None => return Ok((Vec::new(), false)),
            },
            None => 0,
        };
        let hi = match before {
            // An empty or inverted range: answer it here, never hand redb one.
            Some(b) if b <= lo => return Ok((Vec::new(), false)),
            Some(b) => Bound::Excluded((room, b)),
            None => Bound::Included((room, u64::MAX)),
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let range = table.range::<(&str, u64)>((Bound::Included((room, lo)), hi))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        let mut bytes = 0usize;
        let mut push = |item: Result<_, redb::StorageError>| -> Result<bool, StoreError> {
            let (k, v): (redb::AccessGuard<(&str, u64)>, redb::AccessGuard<&[u8]>) = item?;
            if out.len() == limit || bytes > max_bytes {
                more = true;
                return Ok(false);
            }
            let value = v.value();
            bytes = bytes.saturating_add(value.len());
            out.push(codec::decode(k.value().1, value)?);
            Ok(true)
        };
        if oldest_first {
            for item in range {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in range.rev() {
                if !push(item)? {
                    break;
                }
            }
            out.reverse();
        }
        Ok((out, more))
    }

    /// The original `(seq, ts)` of a client message id within its dedup
    /// window (`now_ms < expiry`), if any.
    pub fn dedup_get(&self, room: &str, user: &str, id: &str, now_ms: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEDUP)?;
        Ok(table
            .get((room, user, id))?
            .map(|v| v.value())
            .filter(|&(_, _, expires)| now_ms < expires)
            .map(|(seq, ts, _)| (seq, ts)))
    }

    /// A consistent copy of the whole database, taken from ONE read
    /// transaction, into a new redb file at `out`, while the writer keeps
    /// committing. Returns the number of messages copied.
    ///
    /// The copy is written to a private (0600) temporary file created new
    /// beside `out`, then hard-linked into place: the link fails if `out`
    /// exists, so a backup never replaces a file (the live database
    /// included) and a half-written copy never appears under `out`.
    pub fn backup_to(&self, out: &Path) -> Result<u64, StoreError> {
        if out.exists() {
            return Err(StoreError::Exists(out.display().to_string()));
        }
        // A name of its own per backup: two backups to the same name never
        // share (or remove) each other's temporary file.
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Db(format!("no randomness: {e}")))?;
        let mut tmp_name = out.as_os_str().to_owned();
        tmp_name.push(format!(".{:016x}.tmp", u64::from_le_bytes(nonce)));
        let tmp = PathBuf::from(tmp_name);
        let result = self.copy_into(&tmp);
        let placed = result.and_then(|n| match fs::hard_link(&tmp, out) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::Exists(out.display().to_string()))
            }
            Err(e) => Err(e.into()),
        });
        // The temporary name goes whatever happened; the link keeps the data.
        let _ = fs::remove_file(&tmp);
        let n = placed?;
        sync_parent(out)?;
        Ok(n)
    }

    fn copy_into(&self, tmp: &Path) -> Result<u64, StoreError> {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(tmp)?;
        let snapshot = self.db.begin_read()?;
        let copied = {
            // A small cache: the copy is written once and never read back.
            let backend = redb::backends::FileBackend::new(file)?;
            let dst = redb::Builder::new().set_cache_size(BACKUP_CACHE).create_with_backend(backend)?;
            let copied = copy_table(&snapshot, &dst, MESSAGES)?;
            copy_table(&snapshot, &dst, ROOMS)?;
            copy_table(&snapshot, &dst, DEDUP)?;
            copy_table(&snapshot, &dst, DEDUP_EXPIRY)?;
            copy_table(&snapshot, &dst, kv::AUTH)?;
            copy_table(&snapshot, &dst, kv::AUTH_EXPIRY)?;
            // The meta table goes last, in the one durable commit: a copy cut
            // short by a crash has no schema version and opens as Foreign.
            let mut txn = dst.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let src = snapshot.open_table(META)?;
                let mut meta = txn.open_table(META)?;
                for item in src.iter()? {
                    let (k, v) = item?;
                    meta.insert(k.value(), v.value())?;
                }
            }
            txn.commit()?;
            copied
        };
        drop(snapshot);
        Ok(copied)
    }

    /// Writes one group of appends in one write transaction and commits it:
    /// the core of `store-writer`, public so benchmarks can time it. Only one
    /// thread may write at a time (redb serialises write transactions).
    ///
    /// `rooms` moves once per room per call, and only forward.
    pub fn write_batch(&self, recs: &[Record], durable: bool) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let fail = self.fail_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if fail.is_ok() {
                return Err(StoreError::Db("injected commit failure".into()));
            }
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut dedup = txn.open_table(DEDUP)?;
            let mut expiry = txn.open_table(DEDUP_EXPIRY)?;
            let mut heads: HashMap<&str, (u64, u64)> = HashMap::new();
            let mut buf = Vec::with_capacity(256);
            for rec in recs {
                codec::encode(rec.ts, &rec.from, rec.id.as_deref(), &rec.body, &mut buf)?;
                messages.insert((&*rec.room, rec.seq), buf.as_slice())?;
                let head = heads.entry(&rec.room).or_insert((0, 0));
                if rec.seq >= head.0 {
                    *head = (rec.seq, rec.ts);
                }
                if let Some(id) = rec.id.as_deref() {
                    if rec.dedup_until_ms > 0 {
                        let key = (&*rec.room, &*rec.from, id);
                        dedup.insert(key, (rec.seq, rec.ts, rec.dedup_until_ms))?;
                        expiry.insert((rec.dedup_until_ms, &*rec.room, &*rec.from, id), ())?;
                    }
                }
            }
            let mut rooms = txn.open_table(ROOMS)?;
            for (room, head) in heads {
                let old = rooms.get(room)?.map(|v| v.value());
                if old.is_none_or(|(seq, _)| head.0 > seq) {
                    rooms.insert(room, head)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// One [`WriteJob`] in a transaction of its own (store-writer only).
    pub(crate) fn run_job(&self, job: &mut dyn WriteJob, durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        match job.run(&txn) {
            Ok(()) => Ok(txn.commit()?),
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    /// An empty durable commit: persists every earlier non-durable one.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }
}

/// `roomcast backup --data DIR --out FILE` with the server stopped: opens the
/// data directory ([`StoreError::Locked`] if a server has it) and copies it.
pub fn backup_offline(data: &Path, out: &Path) -> Result<u64, StoreError> {
    let path = data.join(DB_FILE);
    // Opening would create an empty database; a missing one is an error.
    fs::metadata(&path)?;
    Store::open(data)?.backup_to(out)
}

fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    // A redb file with no tables at all is one we created and crashed before
    // stamping: treat it as new.
    if txn.list_tables()?.next().is_none() {
        return Ok(());
    }
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_) | redb::TableError::TableTypeMismatch { .. }) => {
            return Err(StoreError::Foreign(path.to_path_buf()))
        }
        Err(e) => return Err(e.into()),
    };
    match meta.get(SCHEMA_KEY)?.map(|v| v.value()) {
        None => Err(StoreError::Foreign(path.to_path_buf())),
        Some(v) if v > SCHEMA_VERSION => {
            Err(StoreError::SchemaNewer { path: path.to_path_buf(), found: v, supported: SCHEMA_VERSION })
        }
        // No older schema exists yet, so nothing to migrate from.
        Some(v) if v < SCHEMA_VERSION => Err(StoreError::Foreign(path.to_path_buf())),
        Some(_) => Ok(()),
    }
}

/// Copies one table from the snapshot into `dst`, [`BACKUP_CHUNK`] records
/// per non-durable commit (the final commit of the backup makes them all
/// durable). Returns the number of records copied.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    snapshot: &redb::ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let src = snapshot.open_table(def)?;
    let mut iter = src.iter()?;
    let mut copied = 0u64;
    loop {
        let mut txn = dst.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut done = false;
        {
            let mut table = txn.open_table(def)?;
            for _ in 0..BACKUP_CHUNK {
                match iter.next() {
                    Some(item) => {
                        let (k, v) = item?;
                        table.insert(k.value(), v.value())?;
                        copied += 1;
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
        }
        txn.commit()?;
        if done {
            return Ok(copied);
        }
    }
}

/// Makes a rename durable: fsync the directory that holds the new name.
fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()?;
    Ok(())
}
