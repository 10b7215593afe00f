//! Group commit against one commit per record: small records written through
//! `Store::write_batch` with durable (fsync) commits, on a temporary
//! directory. Throughput is in records, so records/s compare directly.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use roomcast::store::{Record, Store};

fn record(room: &std::sync::Arc<str>, from: &std::sync::Arc<str>, seq: u64) -> Record {
    Record {
        room: room.clone(),
        seq,
        ts: 1_764_441_600_000 + seq,
        from: from.clone(),
        id: None,
        body: bytes::Bytes::from_static(br#"{"text":"hello, room"}"#),
        dedup_until_ms: 0,
    }
}

fn commits(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let room: std::sync::Arc<str> = "bench".into();
    let from: std::sync::Arc<str> = "ann".into();
    let mut seq = 0u64;
    let mut group = c.benchmark_group("store_commit_immediate");
    for n in [1u64, 10, 100, 1000] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("one_commit_per_batch", n), &n, |b, &n| {
            b.iter(|| {
                let recs: Vec<Record> = (0..n)
                    .map(|_| {
                        seq += 1;
                        record(&room, &from, seq)
                    })
                    .collect();
                store.write_batch(&recs, true).expect("commit");
            });
        });
        if n <= 100 {
            group.bench_with_input(BenchmarkId::new("one_commit_per_record", n), &n, |b, &n| {
                b.iter(|| {
                    for _ in 0..n {
                        seq += 1;
                        store.write_batch(&[record(&room, &from, seq)], true).expect("commit");
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = commits
}
criterion_main!(benches);
