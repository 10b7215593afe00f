//! Protocol messages: decoding what clients send (`send`, `join`) and
//! encoding what the server sends most (`msg`, `ack`, `history`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use roomcast::proto::msg::{decode, encode_ack, encode_history, encode_msg, MsgFrame, Op, Ref};
use serde_json::value::RawValue;

mod common;

const SEND: &[u8] = br#"{"op":"send","room":"lobby","body":{"text":"hello"},"ref":"a7","id":"m-1"}"#;
const JOIN: &[u8] = br#"{"op":"join","room":"lobby","since":0,"ref":1}"#;

const ROOM: &str = "lobby";
const FROM: &str = "user-0042";
const TS: u64 = 1_767_225_600_000;

/// A `{"text":"..."}` body of exactly `n` bytes (n >= 11).
fn body(n: usize) -> Box<RawValue> {
    let text = "x".repeat(n - r#"{"text":""}"#.len());
    let json = format!(r#"{{"text":"{text}"}}"#);
    assert_eq!(json.len(), n);
    RawValue::from_string(json).expect("a valid JSON body")
}

/// A `send` like `SEND` whose body is `n` bytes.
fn send_with_body(n: usize) -> Vec<u8> {
    let b = body(n);
    format!(r#"{{"op":"send","room":"lobby","body":{},"ref":"a7","id":"m-1"}}"#, b.get()).into_bytes()
}

fn bench_decode(c: &mut Criterion) {
    let send_1k = send_with_body(1024);
    let cases: [(&str, &[u8]); 3] = [("send", SEND), ("join", JOIN), ("send_1KiB_body", &send_1k)];

    let mut g = c.benchmark_group("msg_decode");
    for (label, text) in cases {
        // The fixture must decode to the op it names, or the bench would
        // time an error path.
        match decode(text) {
            Ok(m) => assert!(matches!(m.op, Op::Send { .. } | Op::Join { .. })),
            Err(e) => panic!("{label} does not decode: {e}"),
        }
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(label), |b| b.iter(|| decode(black_box(text)).is_ok()));
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg_encode");
    let r = Ref(r#""a7""#.into());

    let b100 = body(100);
    let sample = encode_msg(ROOM, 12_345, TS, FROM, &b100, Some("m-1"));
    g.throughput(Throughput::Bytes(sample.frame.len() as u64));
    g.bench_function("msg_100B_body", |b| {
        b.iter(|| encode_msg(black_box(ROOM), black_box(12_345), TS, FROM, &b100, Some("m-1")))
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("ack", |b| b.iter(|| encode_ack(Some(&r), black_box(ROOM), black_box(12_345), TS, Some("m-1"))));

    // A default-sized history page: 50 stored frames copied into one reply.
    let items: Vec<MsgFrame> = (0..50u64).map(|i| encode_msg(ROOM, 1000 + i, TS + i, FROM, &b100, None)).collect();
    let page = encode_history(Some(&r), ROOM, items.iter(), true);
    g.throughput(Throughput::ElementsAndBytes { elements: items.len() as u64, bytes: page.len() as u64 });
    g.bench_function("history_50", |b| b.iter(|| encode_history(Some(&r), black_box(ROOM), items.iter(), true)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_decode, bench_encode
}
criterion_main!(benches);
