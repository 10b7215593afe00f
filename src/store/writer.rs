//! `store-writer`: the one thread that writes the database. It owns group
//! commit (every append waiting in the channel goes into one transaction),
//! commit reports back to the reactors, and the pruning of retention and
//! dedup expiry in small slices. Backups are not its work: `Store::backup_to`
//! copies a read snapshot on a thread of its own.
//!
//! Ordering: a reactor learns that its appends are durable only through
//! [`CommitSink::committed`], called after `commit()` returned, in the order
//! the reactor sent them; it must not deliver or ack before. Pruning runs in
//! its own transactions, only between batches, so it never delays a commit by
//! more than one slice.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::wait::{Receiver, RecvTimeoutError, TryRecvError};
use redb::{Durability, ReadableTable};

use crate::proto::now_ms;

use super::{codec, Store, StoreError, DEDUP, DEDUP_EXPIRY, MESSAGES, ROOMS};

/// One message to store. Seq and ts are assigned by the room's owner reactor
/// before it is sent here.
#[derive(Clone)]
pub struct Record {
    pub room: Arc<str>,
    pub seq: u64,
    pub ts: u64,
    pub from: Arc<str>,
    pub id: Option<Box<str>>,
    /// The body as raw JSON bytes.
    pub body: bytes::Bytes,
    /// End of the dedup window for `id` (ms since the epoch); 0 keeps no
    /// dedup entry.
    pub dedup_until_ms: u64,
}

pub enum WriterCmd {
    /// One reactor's appends of one loop iteration, in seq order per room.
    Append { reactor: u16, recs: Vec<Record> },
    /// A write of the identity tables (accounts, refresh tokens, rate
    /// counters, ceremony state), in a transaction of its own, between two
    /// batches of appends. See [`write_job`].
    Job(Box<dyn WriteJob>),
}

/// A write that runs on `store-writer` in one transaction of its own: a
/// read-check-write (spend a refresh token, count a failed login) is then
/// atomic, since no other thread writes. `run` must be short: every append
/// waits behind it.
pub trait WriteJob: Send {
    /// The transaction's work; an error aborts it.
    fn run(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError>;
    /// Called once after the commit (or the abort) with its outcome.
    fn done(self: Box<Self>, committed: Result<(), StoreError>);
}

/// Runs `f` on `store-writer` in one write transaction and waits for the
/// commit: for threads that may block (the auth workers), never a reactor.
/// `Err(StoreError::Db)` when the writer is gone or its queue stays full.
pub fn write_job<T, F>(writer: &crate::wait::Sender<WriterCmd>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
{
    struct Job<T, F> {
        f: Option<F>,
        value: Option<T>,
        tx: crate::wait::Sender<Result<T, StoreError>>,
    }
    impl<T: Send, F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send> WriteJob for Job<T, F> {
        fn run(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
            let f = self.f.take().ok_or_else(|| StoreError::Db("job ran twice".into()))?;
            self.value = Some(f(txn)?);
            Ok(())
        }
        fn done(self: Box<Self>, committed: Result<(), StoreError>) {
            let Job { value, tx, .. } = *self;
            let out = committed.and_then(|()| value.ok_or_else(|| StoreError::Db("job did not run".into())));
            let _ = tx.send(out);
        }
    }
    let (tx, rx) = crate::wait::bounded(1);
    let job = Box::new(Job { f: Some(f), value: None, tx });
    writer
        .send_timeout(WriterCmd::Job(job), JOB_WAIT)
        .map_err(|_| StoreError::Db("the store writer is not taking writes".into()))?;
    rx.recv_timeout(JOB_WAIT).map_err(|_| StoreError::Db("the store writer did not answer".into()))?
}

/// How long a job waits to be queued, and then for its commit: far more
/// than a commit takes, and short enough that a stuck disk gives the
/// client an error instead of a hung request.
const JOB_WAIT: Duration = Duration::from_secs(10);

/// Where the writer reports commits; implemented by the reactor side (it
/// posts mail and wakes the reactor). `n` is the number of this reactor's
/// appends, in the order it sent them, that the commit covered.
pub trait CommitSink: Send + 'static {
    fn committed(&self, reactor: u16, n: usize, result: Result<(), String>);
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// true: redb `Durability::Immediate` (fsync per commit); false:
    /// `Durability::None` (no fsync; a crash loses recent commits).
    pub durable: bool,
    /// Keep at most this many newest messages per room.
    pub retain_messages: Option<u64>,
    /// Drop messages whose ts is older than this.
    pub retain_age: Option<Duration>,
    /// Most appends taken into one commit (8192 is a good default); a
    /// reactor's batch is never split, so a commit may hold a few more.
    pub max_batch: usize,
}

/// Rooms whose stored head the writer remembers; past it the cache starts
/// over (a head is one read away).
const HEAD_CACHE: usize = 65_536;
/// Deletions per pruning slice: a slice is one short transaction between
/// batches, so this bounds how long an append can wait behind pruning.
const SLICE_DELETES: usize = 1000;
/// Rooms visited per slice by the age pass, so a slice stays short even with
/// many rooms and nothing to delete.
const SLICE_ROOMS: usize = 128;
/// Under a load that never empties the channel, still prune one slice every
/// this many batches, or retention would never catch up.
const FORCE_SLICE_EVERY: u32 = 64;
/// How often expired dedup entries are looked for. Lookups check the expiry
/// themselves, so this only bounds the space dead entries take.
const DEDUP_PRUNE_EVERY_MS: u64 = 10_000;

/// Spawns the `store-writer` thread. It exits when every `Sender` of `rx` is
/// dropped, after committing what it has.
pub fn spawn_writer(
    store: Store,
    rx: Receiver<WriterCmd>,
    cfg: WriterConfig,
    sink: Box<dyn CommitSink>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("store-writer".into()).spawn(move || Writer::new(store, cfg, sink).run(&rx))
}

struct Writer {
    store: Store,
    cfg: WriterConfig,
    sink: Box<dyn CommitSink>,
    pruner: Pruner,
    /// Appends of the batch being gathered, and the reactor of each.
    recs: Vec<Record>,
    reactors: Vec<u16>,
    /// Last stored seq of recently written rooms (bounded: `HEAD_CACHE`).
    heads: HashMap<Arc<str>, u64>,
}

impl Writer {
    fn new(store: Store, cfg: WriterConfig, sink: Box<dyn CommitSink>) -> Writer {
        let pruner = Pruner::new(&cfg, now_ms());
        let cap = cfg.max_batch.clamp(1, 1 << 16);
        Writer {
            store,
            cfg,
            sink,
            pruner,
            recs: Vec::with_capacity(cap),
            reactors: Vec::with_capacity(cap),
            heads: HashMap::new(),
        }
    }

    fn run(mut self, rx: &Receiver<WriterCmd>) {
        let max_batch = self.cfg.max_batch.max(1);
        let mut batches_since_slice = 0u32;
        loop {
            let now = now_ms();
            let first = if self.pruner.pending(now) {
                // Prune only while nobody waits: an append that arrives
                // meanwhile waits for at most one slice.
                match rx.try_recv() {
                    Ok(cmd) => cmd,
                    Err(TryRecvError::Empty) => {
                        self.prune_slice();
                        batches_since_slice = 0;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                // Idle: block. An arriving append is committed at once; the
                // timeout only wakes the pruner when age or dedup work is due.
                match rx.recv_timeout(self.pruner.next_due(now)) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            self.take(first);
            while self.recs.len() < max_batch {
                match rx.try_recv() {
                    Ok(cmd) => self.take(cmd),
                    Err(_) => break,
                }
            }
            self.flush();
            batches_since_slice += 1;
            if batches_since_slice >= FORCE_SLICE_EVERY && self.pruner.pending(now_ms()) {
                self.prune_slice();
                batches_since_slice = 0;
            }
        }
        // Disconnected: recv reports it only once the channel is empty, so
        // everything sent has been committed above.
        self.flush();
        // Commits made with `Durability::None` (appends under `--durability
        // none`, and every pruning slice) reach the disk only with a later
        // durable commit: make one, so a clean stop loses nothing.
        if let Err(e) = self.store.sync() {
            let msg = format!("store-writer: final sync: {e}");
            crate::log::event(crate::log::Level::Error, "store_error", &msg, &[]);
        }
    }

    fn take(&mut self, cmd: WriterCmd) {
        match cmd {
            WriterCmd::Append { reactor, recs } => {
                self.reactors.extend(std::iter::repeat_n(reactor, recs.len()));
                if self.recs.is_empty() {
                    // The common case, one reactor's batch per commit: no copy.
                    self.recs = recs;
                } else {
                    self.recs.extend(recs);
                }
            }
            WriterCmd::Job(mut job) => {
                let result = self.store.run_job(job.as_mut(), self.cfg.durable);
                job.done(result);
            }
        }
    }

    /// The last seq stored for `room`, from the cache or the database.
    fn stored_head(&mut self, room: &Arc<str>) -> Result<u64, StoreError> {
        if let Some(h) = self.heads.get(room) {
            return Ok(*h);
        }
        let (seq, _) = self.store.room_head(room)?;
        if self.heads.len() >= HEAD_CACHE {
            self.heads.clear();
        }
        self.heads.insert(room.clone(), seq);
        Ok(seq)
    }

    /// Commits the gathered appends in one transaction and reports them.
    ///
    /// A record is written only if it extends its room's stored history by
    /// exactly one seq. After a failed commit the owner takes the failed seq
    /// back, but appends it sent behind it are already on their way here:
    /// those no longer follow on and are refused (reported failed), so a
    /// hole or a reused seq never reaches the disk.
    fn flush(&mut self) {
        if self.recs.is_empty() {
            return;
        }
        let recs = std::mem::take(&mut self.recs);
        let mut fits = Vec::with_capacity(recs.len());
        let mut next: HashMap<Arc<str>, u64> = HashMap::new();
        for rec in &recs {
            let head = match next.get(&rec.room) {
                Some(h) => Some(*h),
                None => self.stored_head(&rec.room).ok(),
            };
            let ok = head.and_then(|h| h.checked_add(1)) == Some(rec.seq);
            if ok {
                next.insert(rec.room.clone(), rec.seq);
            }
            fits.push(ok);
        }
        let all_fit = fits.iter().all(|f| *f);
        let result = if all_fit {
            self.store.write_batch(&recs, self.cfg.durable)
        } else {
            let good: Vec<Record> = recs.iter().zip(&fits).filter(|(_, f)| **f).map(|(r, _)| r.clone()).collect();
            self.store.write_batch(&good, self.cfg.durable)
        }
        .map_err(|e| e.to_string());
        if result.is_ok() {
            for (rec, _) in recs.iter().zip(&fits).filter(|(_, f)| **f) {
                self.pruner.appended(&rec.room);
            }
            for (room, seq) in next {
                self.heads.insert(room, seq);
            }
        }
        // Per reactor, runs of equal outcome in the order it sent them: the
        // reactor completes its pending publishes front to back, by count.
        let mut runs: Vec<(u16, Vec<(usize, bool)>)> = Vec::new();
        for (&r, &ok) in self.reactors.iter().zip(&fits) {
            let i = match runs.iter().position(|(id, _)| *id == r) {
                Some(i) => i,
                None => {
                    runs.push((r, Vec::new()));
                    runs.len() - 1
                }
            };
            match runs[i].1.last_mut() {
                Some((n, last)) if *last == ok => *n += 1,
                _ => runs[i].1.push((1, ok)),
            }
        }
        self.recs = recs;
        self.recs.clear();
        self.reactors.clear();
        for (reactor, list) in runs {
            for (n, ok) in list {
                let r =
                    if ok { result.clone() } else { Err("the seq does not follow the room's stored history".into()) };
                self.sink.committed(reactor, n, r);
            }
        }
    }

    fn prune_slice(&mut self) {
        if let Err(e) = self.pruner.slice(&self.store, now_ms()) {
            let msg = format!("store-writer: pruning: {e}");
            crate::log::event(crate::log::Level::Error, "store_error", &msg, &[]);
            // Back off instead of retrying in a tight loop.
            self.pruner.give_up(now_ms());
        }
    }
}

/// Retention and dedup-expiry bookkeeping: what is left to prune and when to
/// look again. All deletions happen in [`Pruner::slice`].
struct Pruner {
    retain_messages: Option<u64>,
    retain_age_ms: Option<u64>,
    /// Rooms appended to since their count was last checked.
    dirty: HashSet<Arc<str>>,
    /// The age pass in progress: `Some(None)` starts at the first room,
    /// `Some(Some(r))` resumes after room `r`.
    age_cursor: Option<Option<String>>,
    next_age_pass_ms: u64,
    age_interval_ms: u64,
    next_dedup_ms: u64,
    /// The last dedup slice hit its budget: more expired entries wait.
    dedup_backlog: bool,
}

impl Pruner {
    fn new(cfg: &WriterConfig, now: u64) -> Pruner {
        let retain_age_ms = cfg.retain_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // Look about a hundred times per retention period, between once a
        // second and once a minute.
        let age_interval_ms = retain_age_ms.map_or(60_000, |a| (a / 100).clamp(1_000, 60_000));
        Pruner {
            retain_messages: cfg.retain_messages,
            retain_age_ms,
            dirty: HashSet::new(),
            // A restart may find old messages: start with a pass.
            age_cursor: retain_age_ms.map(|_| None),
            next_age_pass_ms: now,
            age_interval_ms,
            next_dedup_ms: now,
            dedup_backlog: false,
        }
    }

    fn appended(&mut self, room: &Arc<str>) {
        if self.retain_messages.is_some() && !self.dirty.contains(room) {
            self.dirty.insert(room.clone());
        }
    }

    /// Whether a slice has work now.
    fn pending(&self, now: u64) -> bool {
        !self.dirty.is_empty()
            || self.age_cursor.is_some()
            || self.dedup_backlog
            || now >= self.next_dedup_ms
            || (self.retain_age_ms.is_some() && now >= self.next_age_pass_ms)
    }

    /// How long an idle writer may sleep before timed work is due.
    fn next_due(&self, now: u64) -> Duration {
        let mut due = self.next_dedup_ms;
        if self.retain_age_ms.is_some() {
            due = due.min(self.next_age_pass_ms);
        }
        Duration::from_millis(due.saturating_sub(now).max(1))
    }

    fn give_up(&mut self, now: u64) {
        self.dirty.clear();
        self.age_cursor = None;
        self.dedup_backlog = false;
        self.next_age_pass_ms = now + self.age_interval_ms;
        self.next_dedup_ms = now + DEDUP_PRUNE_EVERY_MS;
    }

    /// One pruning transaction of at most [`SLICE_DELETES`] deletions. It
    /// commits only when it deleted something, and without fsync: losing a
    /// prune to a crash is harmless, and the next durable append commit
    /// persists it anyway.
    fn slice(&mut self, store: &Store, now: u64) -> Result<(), StoreError> {
        let mut txn = store.db().begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut budget = SLICE_DELETES;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let rooms = txn.open_table(ROOMS)?;

            // Count retention, over the rooms that grew.
            if let Some(keep) = self.retain_messages {
                let mut visited = 0;
                while budget > 0 && visited < SLICE_ROOMS {
                    visited += 1;
                    let Some(room) = self.dirty.iter().next().cloned() else {
                        break;
                    };
                    self.dirty.remove(&room);
                    let last = rooms.get(&*room)?.map_or(0, |v| v.value().0);
                    let Some(cut) = last.checked_sub(keep) else {
                        continue;
                    };
                    let seqs = collect_seqs(&messages, &room, cut, budget, |_| true)?;
                    budget -= seqs.len();
                    if budget == 0 {
                        // Perhaps more to cut here: look again next slice.
                        self.dirty.insert(room.clone());
                    }
                    for seq in seqs {
                        messages.remove((&*room, seq))?;
                    }
                }
            }

            // Age retention: a pass over all rooms, a few per slice.
            if let Some(age) = self.retain_age_ms {
                if self.age_cursor.is_none() && now >= self.next_age_pass_ms {
                    self.age_cursor = Some(None);
                }
                if let Some(cursor) = self.age_cursor.take() {
                    let cutoff = now.saturating_sub(age);
                    let names: Vec<String> = {
                        let range = match &cursor {
                            Some(after) => rooms.range::<&str>((Bound::Excluded(after.as_str()), Bound::Unbounded))?,
                            None => rooms.range::<&str>(..)?,
                        };
                        let mut names = Vec::new();
                        for item in range.take(SLICE_ROOMS) {
                            names.push(item?.0.value().to_string());
                        }
                        names
                    };
                    let finished = names.len() < SLICE_ROOMS;
                    let mut resume = cursor;
                    let mut cut_short = false;
                    for room in names {
                        if budget == 0 {
                            cut_short = true;
                            break;
                        }
                        // Messages are in seq order and ts grows with seq, so
                        // the old ones are a prefix: stop at the first young one.
                        let seqs = collect_seqs(&messages, &room, u64::MAX, budget, |ts| ts < cutoff)?;
                        budget -= seqs.len();
                        for seq in seqs {
                            messages.remove((room.as_str(), seq))?;
                        }
                        if budget == 0 {
                            // This room may hold more: resume at it.
                            cut_short = true;
                            break;
                        }
                        resume = Some(room);
                    }
                    if finished && !cut_short {
                        self.next_age_pass_ms = now + self.age_interval_ms;
                    } else {
                        self.age_cursor = Some(resume);
                    }
                }
            }

            // Dedup expiry, through the expiry index.
            if budget > 0 && (self.dedup_backlog || now >= self.next_dedup_ms) {
                let mut dedup = txn.open_table(DEDUP)?;
                let mut expiry = txn.open_table(DEDUP_EXPIRY)?;
                let mut dead: Vec<(u64, String, String, String)> = Vec::new();
                for item in expiry.range::<(u64, &str, &str, &str)>(..(now, "", "", ""))? {
                    if dead.len() == budget {
                        break;
                    }
                    let (key, _) = item?;
                    let (exp, room, user, id) = key.value();
                    dead.push((exp, room.to_string(), user.to_string(), id.to_string()));
                }
                self.dedup_backlog = dead.len() == budget;
                budget -= dead.len();
                for (exp, room, user, id) in &dead {
                    expiry.remove((*exp, room.as_str(), user.as_str(), id.as_str()))?;
                    let key = (room.as_str(), user.as_str(), id.as_str());
                    // The entry may have been renewed with a later expiry.
                    let current = dedup.get(key)?.map(|v| v.value().2);
                    if current == Some(*exp) {
                        dedup.remove(key)?;
                    }
                }
                // Expired identity state (spent refresh tokens, old
                // ceremony state, rate windows) on the same schedule.
                let gone = super::kv::prune(&txn, now, budget)?;
                self.dedup_backlog |= gone == budget;
                budget -= gone;
                self.next_dedup_ms = now + DEDUP_PRUNE_EVERY_MS;
            }
        }
        if budget < SLICE_DELETES {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(())
    }
}

/// Seqs of `room` up to `max_seq`, oldest first, while `keep_going(ts)` holds,
/// at most `limit` of them.
fn collect_seqs(
    messages: &redb::Table<(&str, u64), &[u8]>,
    room: &str,
    max_seq: u64,
    limit: usize,
    mut keep_going: impl FnMut(u64) -> bool,
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for item in messages.range::<(&str, u64)>((room, 0)..=(room, max_seq))? {
        if seqs.len() == limit {
            break;
        }
        let (k, v) = item?;
        let ts = codec::ts_of(v.value());
        if !keep_going(ts) {
            break;
        }
        seqs.push(k.value().1);
    }
    Ok(seqs)
}
