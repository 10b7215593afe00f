//! WebSocket framing: masked client frame decode, unmask alone, and server
//! frame encode.
//!
//! `Decoder::decode` unmasks in place, so a buffer decodes correctly only
//! once. Each decode iteration therefore first restores the masked bytes
//! with `copy_from_slice` from a pristine copy; `copy_only` times that copy
//! by itself, in the same group and with the same throughput, so that
//! decode alone is `copy+decode` minus `copy_only`.
//!
//! Payloads are text frames of JSON-like ASCII, as the protocol sends: text
//! decode includes UTF-8 validation.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use roomcast::proto::ws::{encode_frame, unmask, write_header, write_masked_frame, Decoder, Event, OP_TEXT};

mod common;

const SIZES: [(usize, &str); 4] = [(16, "16B"), (128, "128B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The server's default message limit; the largest payload fits it exactly.
const MAX_MESSAGE: usize = 64 * 1024;

/// `n` bytes of printable ASCII that look like a JSON message body.
fn payload(n: usize) -> Vec<u8> {
    b"{\"op\":\"send\",\"room\":\"lobby\",\"body\":{\"text\":\"hello there\"}}"
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

/// A FIN text frame as a client sends it: masked, with the shortest length
/// encoding.
fn masked_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    write_masked_frame(&mut out, true, OP_TEXT, payload, mask);
    out
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_decode");
    for (size, label) in SIZES {
        let body = payload(size);
        let pristine = masked_frame(&body, MASK);
        let mut work = pristine.clone();
        let mut dec = Decoder::new(MAX_MESSAGE);

        // The decoded payload must be the original text: otherwise the
        // bench would time an error path.
        match dec.decode(&mut work) {
            Ok(Some((used, Some(Event::Text(p))))) => {
                assert_eq!(used, pristine.len());
                assert_eq!(p, &body[..]);
            }
            other => panic!("{label} frame does not decode: {other:?}"),
        }

        g.throughput(Throughput::Bytes(pristine.len() as u64));
        g.bench_function(BenchmarkId::new("copy+decode", label), |b| {
            b.iter(|| {
                work.copy_from_slice(&pristine);
                match dec.decode(black_box(&mut work)) {
                    Ok(Some((used, Some(Event::Text(p))))) => used + p.len(),
                    _ => 0,
                }
            })
        });
        g.bench_function(BenchmarkId::new("copy_only", label), |b| {
            b.iter(|| {
                work.copy_from_slice(&pristine);
                black_box(&mut work);
            })
        });
    }
    g.finish();
}

fn bench_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_unmask");
    for (size, label) in SIZES {
        // XOR is its own inverse: unmasking the same buffer over and over
        // toggles it between two states, each as costly as the other.
        let mut buf = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| unmask(black_box(&mut buf), black_box(MASK)))
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_encode");
    for (size, label) in SIZES {
        let body = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("encode_frame", label), |b| {
            b.iter(|| encode_frame(OP_TEXT, black_box(&body)))
        });
    }

    // Header alone, into a reused buffer (no allocation), one length per
    // encoding: 7-bit, 16-bit and 64-bit.
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(16);
    for (len, label) in [(100usize, "len7"), (1024, "len16"), (70_000, "len64")] {
        g.bench_function(BenchmarkId::new("write_header", label), |b| {
            b.iter(|| {
                out.clear();
                write_header(&mut out, OP_TEXT, black_box(len));
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_decode, bench_unmask, bench_encode
}
criterion_main!(benches);
