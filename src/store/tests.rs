//! Tests of the store: schema checks, locking, group commit, paging, dedup,
//! retention, backups and the reader pool, each on a fresh temporary directory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTableMetadata};

use super::*;
use crate::proto::now_ms;

fn rec(room: &str, seq: u64, ts: u64, from: &str, id: Option<&str>) -> Record {
    Record {
        room: room.into(),
        seq,
        ts,
        from: from.into(),
        id: id.map(Into::into),
        body: bytes::Bytes::from(format!(r#"{{"n":{seq}}}"#)),
        dedup_until_ms: 0,
    }
}

fn seqs(msgs: &[StoredMsg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

fn cfg() -> WriterConfig {
    WriterConfig { durable: false, retain_messages: None, retain_age: None, max_batch: 8192 }
}

type Reports = Arc<Mutex<Vec<(u16, usize, Result<(), String>)>>>;

struct VecSink(Reports);

impl CommitSink for VecSink {
    fn committed(&self, reactor: u16, n: usize, result: Result<(), String>) {
        self.0.lock().unwrap().push((reactor, n, result));
    }
}

fn sink() -> (Box<dyn CommitSink>, Reports) {
    let reports = Reports::default();
    (Box::new(VecSink(reports.clone())), reports)
}

/// Polls `f` until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn open_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.room_head("a").unwrap(), (0, 0));
        let recs: Vec<_> = (1..=3).map(|s| rec("a", s, 100 + s, "ann", None)).collect();
        store.write_batch(&recs, true).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.room_head("a").unwrap(), (3, 103));
    let (msgs, more) = store.page("a", None, None, 10, false).unwrap();
    assert!(!more);
    assert_eq!(seqs(&msgs), [1, 2, 3]);
    assert_eq!(msgs[0].from, "ann");
    assert_eq!(msgs[0].body, br#"{"n":1}"#);
    assert_eq!(store.room_head("b").unwrap(), (0, 0));
}

#[test]
fn room_names_are_every_room_with_a_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.room_names().unwrap().is_empty());
    let recs = vec![rec("b", 1, 1, "u", None), rec("a", 1, 1, "u", None), rec("b", 2, 2, "u", None)];
    store.write_batch(&recs, false).unwrap();
    store.write_batch(&[rec("c/d", 1, 3, "u", None)], true).unwrap();
    assert_eq!(store.room_names().unwrap(), ["a", "b", "c/d"]);
    drop(store);
    // And from the file, after a reopen.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.room_names().unwrap(), ["a", "b", "c/d"]);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(META).unwrap().insert(SCHEMA_KEY, SCHEMA_VERSION + 1).unwrap();
        txn.commit().unwrap();
    }
    match Store::open(dir.path()) {
        Err(StoreError::SchemaNewer { found, supported, .. }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION))
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a newer schema"),
    }
}

#[test]
fn foreign_files_are_refused() {
    // A redb file that is not ours.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let other: TableDefinition<u64, u64> = TableDefinition::new("other");
        txn.open_table(other).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(Store::open(dir.path()), Err(StoreError::Foreign(_))));

    // Not a redb file at all, long and short.
    for junk in [&b"{\"hello\": \"world\"}\n"[..], b"x"] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DB_FILE), junk).unwrap();
        let err = Store::open(dir.path()).err().expect("opened junk");
        assert!(matches!(err, StoreError::Foreign(_)), "{err}");
        assert!(err.to_string().contains("not a roomcast database"));
    }

    // An empty file is a database not yet written: it opens.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(DB_FILE), b"").unwrap();
    Store::open(dir.path()).unwrap();
}

#[test]
fn second_open_is_locked_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let start = Instant::now();
    let err = Store::open(dir.path()).err().expect("opened twice");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, StoreError::Locked(ref p) if p == dir.path()), "{err}");
    assert!(err.to_string().contains("in use by another roomcast process"));
    assert!(matches!(backup_offline(dir.path(), &dir.path().join("b.redb")), Err(StoreError::Locked(_))));
    drop(first);
    Store::open(dir.path()).unwrap();
}

#[test]
fn writer_commits_waiting_appends_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, rx) = crate::wait::bounded(2000);
    // Two fake reactors, interleaved, each owning its own room.
    for i in 1..=500u64 {
        for (reactor, room) in [(0u16, "r0"), (1, "r1")] {
            tx.send(WriterCmd::Append { reactor, recs: vec![rec(room, i, i, "u", None)] }).unwrap();
        }
    }
    let (sink, reports) = sink();
    let handle = spawn_writer(store.clone(), rx, cfg(), sink).unwrap();
    drop(tx);
    handle.join().unwrap();
    let reports = reports.lock().unwrap();
    // Everything was waiting: one transaction, one report per reactor.
    assert_eq!(reports.len(), 2, "{reports:?}");
    for reactor in [0u16, 1] {
        let total: usize = reports
            .iter()
            .filter(|r| r.0 == reactor)
            .map(|r| {
                assert!(r.2.is_ok());
                r.1
            })
            .sum();
        assert_eq!(total, 500);
    }
    for room in ["r0", "r1"] {
        assert_eq!(store.room_head(room).unwrap(), (500, 500));
        let (msgs, more) = store.page(room, None, None, 1000, true).unwrap();
        assert!(!more);
        assert_eq!(seqs(&msgs), (1..=500).collect::<Vec<_>>());
    }
}

#[test]
fn writer_batches_are_capped_and_counts_add_up_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, rx) = crate::wait::bounded(2000);
    for i in 1..=500u64 {
        for reactor in [3u16, 7] {
            let room = format!("room{reactor}");
            tx.send(WriterCmd::Append { reactor, recs: vec![rec(&room, i, i, "u", None)] }).unwrap();
        }
    }
    let (sink, reports) = sink();
    let handle = spawn_writer(store.clone(), rx, WriterConfig { max_batch: 300, ..cfg() }, sink).unwrap();
    drop(tx);
    handle.join().unwrap();
    let reports = reports.lock().unwrap();
    // 1000 commands in batches of 300: four commits, each reporting both.
    assert_eq!(reports.len(), 8, "{reports:?}");
    let per: Vec<usize> = reports.iter().filter(|r| r.0 == 3).map(|r| r.1).collect();
    assert_eq!(per, [150, 150, 150, 50]);
    assert_eq!(store.room_head("room7").unwrap().0, 500);
}

#[test]
fn writer_commits_at_once_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, rx) = crate::wait::bounded(16);
    let (sink, reports) = sink();
    let handle = spawn_writer(store.clone(), rx, cfg(), sink).unwrap();
    tx.send(WriterCmd::Append { reactor: 0, recs: vec![rec("a", 1, 1, "u", None)] }).unwrap();
    // The channel stays open: the commit must not wait for more appends.
    assert!(eventually(Duration::from_secs(5), || reports.lock().unwrap().len() == 1));
    assert_eq!(store.room_head("a").unwrap().0, 1);
    drop(tx);
    handle.join().unwrap();
}

#[test]
fn page_both_directions_with_more() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let recs: Vec<_> = (1..=10).map(|s| rec("r", s, s, "u", None)).collect();
    store.write_batch(&recs, false).unwrap();
    // A neighbouring room must never leak into the range.
    let other: Vec<_> = (1..=5).map(|s| rec("r2", s, s, "u", None)).collect();
    store.write_batch(&other, false).unwrap();
    store.write_batch(&[rec("q", 1, 1, "u", None)], false).unwrap();

    let page = |after, before, limit, oldest| {
        let (m, more) = store.page("r", after, before, limit, oldest).unwrap();
        (seqs(&m), more)
    };
    assert_eq!(page(None, None, 3, false), (vec![8, 9, 10], true));
    assert_eq!(page(None, Some(8), 3, false), (vec![5, 6, 7], true));
    assert_eq!(page(None, Some(4), 3, false), (vec![1, 2, 3], false));
    assert_eq!(page(None, Some(3), 3, false), (vec![1, 2], false));
    assert_eq!(page(Some(0), None, 3, true), (vec![1, 2, 3], true));
    assert_eq!(page(Some(7), None, 3, true), (vec![8, 9, 10], false));
    assert_eq!(page(Some(3), Some(8), 3, true), (vec![4, 5, 6], true));
    assert_eq!(page(Some(3), Some(8), 3, false), (vec![5, 6, 7], true));
    assert_eq!(page(Some(3), Some(7), 3, true), (vec![4, 5, 6], false));
    assert_eq!(page(None, None, 100, true), ((1..=10).collect(), false));
    // Empty and inverted ranges, and bounds at the edges.
    assert_eq!(page(Some(5), Some(6), 3, true), (vec![], false));
    assert_eq!(page(Some(6), Some(2), 3, false), (vec![], false));
    assert_eq!(page(Some(u64::MAX), None, 3, true), (vec![], false));
    assert_eq!(page(None, Some(0), 3, false), (vec![], false));
    assert_eq!(page(None, Some(u64::MAX), 2, false), (vec![9, 10], true));
    assert_eq!(page(None, None, 0, false), (vec![], true));
    let (m, more) = store.page("nope", None, None, 10, false).unwrap();
    assert!(m.is_empty() && !more);
}

#[test]
fn dedup_within_and_after_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = rec("r", 4, 1000, "ann", Some("m-1"));
    r.dedup_until_ms = 5000;
    let mut no_window = rec("r", 5, 1001, "ann", Some("m-2"));
    no_window.dedup_until_ms = 0;
    store.write_batch(&[r, no_window], true).unwrap();
    assert_eq!(store.dedup_get("r", "ann", "m-1", 4999).unwrap(), Some((4, 1000)));
    assert_eq!(store.dedup_get("r", "ann", "m-1", 5000).unwrap(), None);
    assert_eq!(store.dedup_get("r", "bob", "m-1", 10).unwrap(), None);
    assert_eq!(store.dedup_get("r2", "ann", "m-1", 10).unwrap(), None);
    assert_eq!(store.dedup_get("r", "ann", "m-2", 10).unwrap(), None);
    // The stored message keeps its id.
    let (m, _) = store.page("r", None, None, 10, true).unwrap();
    assert_eq!(m[0].id.as_deref(), Some("m-1"));
}

#[test]
fn dedup_entries_expire_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = now_ms();
    let (tx, rx) = crate::wait::bounded(16);
    for (seq, until) in [(1, now - 1), (2, now + 3_600_000)] {
        let mut r = rec("r", seq, now, "ann", Some(&format!("m{seq}")));
        r.dedup_until_ms = until;
        tx.send(WriterCmd::Append { reactor: 0, recs: vec![r] }).unwrap();
    }
    let (sink, _) = sink();
    let handle = spawn_writer(store.clone(), rx, cfg(), sink).unwrap();
    let dedup_len = || {
        let txn = store.db().begin_read().unwrap();
        let a = txn.open_table(DEDUP).unwrap().len().unwrap();
        let b = txn.open_table(DEDUP_EXPIRY).unwrap().len().unwrap();
        (a, b)
    };
    assert!(eventually(Duration::from_secs(5), || dedup_len() == (1, 1)));
    assert_eq!(store.dedup_get("r", "ann", "m2", now).unwrap(), Some((2, now)));
    drop(tx);
    handle.join().unwrap();
}

#[test]
fn retention_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, rx) = crate::wait::bounded(4096);
    // More than one slice's worth of deletions in room a.
    for seq in 1..=2500 {
        tx.send(WriterCmd::Append { reactor: 0, recs: vec![rec("a", seq, seq, "u", None)] }).unwrap();
    }
    for seq in 1..=5 {
        tx.send(WriterCmd::Append { reactor: 1, recs: vec![rec("b", seq, seq, "u", None)] }).unwrap();
    }
    let (sink, _) = sink();
    let cfg = WriterConfig { retain_messages: Some(10), ..cfg() };
    let handle = spawn_writer(store.clone(), rx, cfg, sink).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        let (m, more) = store.page("a", None, None, 100, true).unwrap();
        seqs(&m) == (2491..=2500).collect::<Vec<_>>() && !more
    }));
    assert_eq!(store.room_head("a").unwrap().0, 2500);
    let (m, _) = store.page("b", None, None, 100, true).unwrap();
    assert_eq!(seqs(&m), [1, 2, 3, 4, 5]);
    drop(tx);
    handle.join().unwrap();
}

#[test]
fn retention_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = now_ms();
    let old = now - 3_600_000;
    let (tx, rx) = crate::wait::bounded(4096);
    for seq in 1..=1500 {
        let ts = if seq <= 1490 { old + seq } else { now };
        tx.send(WriterCmd::Append { reactor: 0, recs: vec![rec("a", seq, ts, "u", None)] }).unwrap();
    }
    for seq in 1..=3 {
        tx.send(WriterCmd::Append { reactor: 0, recs: vec![rec("b", seq, now, "u", None)] }).unwrap();
    }
    let (sink, _) = sink();
    let cfg = WriterConfig { retain_age: Some(Duration::from_secs(60)), ..cfg() };
    let handle = spawn_writer(store.clone(), rx, cfg, sink).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        let (m, _) = store.page("a", None, None, 100, true).unwrap();
        seqs(&m) == (1491..=1500).collect::<Vec<_>>()
    }));
    assert_eq!(store.room_head("a").unwrap(), (1500, now));
    let (m, _) = store.page("b", None, None, 100, true).unwrap();
    assert_eq!(seqs(&m), [1, 2, 3]);
    drop(tx);
    handle.join().unwrap();
}

#[test]
fn backup_while_writer_commits_is_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, rx) = crate::wait::bounded(1024);
    let (sink, reports) = sink();
    let handle = spawn_writer(store.clone(), rx, cfg(), sink).unwrap();
    let total = 30_000u64;
    let sender = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for seq in 1..=total {
                let mut r = rec("r", seq, seq, "u", Some(&format!("id{seq}")));
                r.dedup_until_ms = u64::MAX;
                tx.send(WriterCmd::Append { reactor: 0, recs: vec![r] }).unwrap();
            }
        })
    };
    // Wait until some but (very likely) not all are committed.
    assert!(eventually(Duration::from_secs(10), || { store.room_head("r").unwrap().0 > 1000 }));
    let out = tempfile::tempdir().unwrap();
    let copied = store.backup_to(&out.path().join(DB_FILE)).unwrap();
    sender.join().unwrap();
    drop(tx);
    handle.join().unwrap();
    let committed: usize = reports.lock().unwrap().iter().map(|r| r.1).sum();
    assert_eq!(committed as u64, total);

    let backup = Store::open(out.path()).unwrap();
    let (head, _) = backup.room_head("r").unwrap();
    assert_eq!(head, copied);
    assert!(copied > 1000);
    let (m, more) = backup.page("r", None, None, usize::try_from(total).unwrap(), true).unwrap();
    assert!(!more);
    assert_eq!(seqs(&m), (1..=copied).collect::<Vec<_>>());
    // Dedup entries come along, consistent with the messages.
    assert_eq!(backup.dedup_get("r", "u", &format!("id{copied}"), 0).unwrap(), Some((copied, copied)));
    assert_eq!(backup.dedup_get("r", "u", &format!("id{}", copied + 1), 0).unwrap(), None);
    assert!(!out.path().join("roomcast.redb.tmp").exists());
}

#[test]
fn offline_backup() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(backup_offline(dir.path(), &dir.path().join("x")), Err(StoreError::Io(_))));
    {
        let store = Store::open(dir.path()).unwrap();
        let recs: Vec<_> = (1..=7).map(|s| rec("r", s, s, "u", None)).collect();
        store.write_batch(&recs, true).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    assert_eq!(backup_offline(dir.path(), &out.path().join(DB_FILE)).unwrap(), 7);
    let restored = Store::open(out.path()).unwrap();
    let (m, _) = restored.page("r", None, None, 50, false).unwrap();
    assert_eq!(seqs(&m), (1..=7).collect::<Vec<_>>());
}

/// Keeps a one-thread pool's reader busy until the returned sender drops.
fn hold_the_only_reader(pool: &ReaderPool) -> crossbeam_channel::Sender<()> {
    let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
    let (entered_tx, entered_rx) = crossbeam_channel::bounded::<()>(1);
    pool.submit(Box::new(move |_: &Store| {
        entered_tx.send(()).unwrap();
        let _ = hold_rx.recv();
    }))
    .unwrap();
    entered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    hold_tx
}

#[test]
fn reader_pool_answers_and_refuses_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let recs: Vec<_> = (1..=20).map(|s| rec("r", s, s, "u", None)).collect();
    store.write_batch(&recs, false).unwrap();
    let pool = ReaderPool::new(store, 1).unwrap();

    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.submit(Box::new(move |s: &Store| tx.send(s.page("r", None, Some(11), 5, false)).unwrap())).unwrap();
    let (m, more) = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((seqs(&m), more), ((6..=10).collect(), true));

    // Hold the only reader inside a reply; the queue then fills.
    let hold_tx = hold_the_only_reader(&pool);
    let mut accepted = 0;
    while pool.submit(Box::new(|_: &Store| {})).is_ok() {
        accepted += 1;
        assert!(accepted <= 1000, "queue is not bounded");
    }
    assert!(accepted > 0);
    drop(hold_tx);
    drop(pool);
}

#[test]
fn reader_pool_serves_what_a_room_waits_on_before_history_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pool = ReaderPool::new(store, 1).unwrap();
    // Hold the only reader; then queue pages, then one urgent read.
    let hold_tx = hold_the_only_reader(&pool);
    let (order_tx, order_rx) = crossbeam_channel::unbounded::<&'static str>();
    for _ in 0..3 {
        let tx = order_tx.clone();
        pool.submit(Box::new(move |_: &Store| tx.send("page").unwrap())).unwrap();
    }
    let tx = order_tx.clone();
    pool.submit_urgent(Box::new(move |_: &Store| tx.send("urgent").unwrap())).unwrap();
    drop(hold_tx);
    let first = order_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(first, "urgent");
    // Dropping the pool still serves what was queued.
    drop(pool);
    assert_eq!(order_rx.try_iter().count(), 3);
}
