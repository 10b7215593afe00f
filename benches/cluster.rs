//! Cluster frames (`cluster::wire`): encoding and decoding one full batch
//! ([`BATCH_BYTES`], 64 KiB) of deliveries of ~150-byte `msg` frames, the
//! bulk of what an owner sends the other nodes. Throughput is in items, so
//! criterion's time per iteration over the item count is the cost of one.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roomcast::cluster::wire::{decode, encode, size_hint, Item, BATCH_BYTES, BATCH_ITEMS};
use roomcast::rooms::RoomName;

mod common;

/// A WebSocket text frame of a `msg` of about 150 bytes in all.
fn msg_frame(seq: u64) -> Bytes {
    let json = format!(
        r#"{{"op":"msg","room":"lobby","seq":{seq},"ts":1767225600000,"from":"user-0042","id":"m-{seq}","body":{{"text":"hello there, this is a short chat message"}}}}"#
    );
    let mut frame = vec![0x81, json.len() as u8];
    frame.extend_from_slice(json.as_bytes());
    frame.into()
}

/// Deliveries until the frame is as big as a sender lets one grow.
fn batch() -> Vec<Item> {
    let room: RoomName = Arc::from("lobby");
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut seq = 0;
    while bytes < BATCH_BYTES && items.len() < BATCH_ITEMS {
        seq += 1;
        let item = Item::Deliver { room: room.clone(), seq: Some(seq), frame: msg_frame(seq) };
        bytes += size_hint(&item);
        items.push(item);
    }
    items
}

fn bench_frames(c: &mut Criterion) {
    let items = batch();
    let frame = encode(&items);
    // The fixture must be what it says, or the bench would time something else.
    assert!((BATCH_BYTES..BATCH_BYTES + 512).contains(&frame.len()), "{}", frame.len());
    assert_eq!(decode(&frame).map(|d| d.len()), Ok(items.len()));
    println!(
        "cluster frame: {} deliveries of {} B msg frames, {} B encoded",
        items.len(),
        msg_frame(1).len(),
        frame.len()
    );

    let mut g = c.benchmark_group("cluster_frame");
    g.throughput(Throughput::Elements(items.len() as u64));
    g.bench_function("encode_64KiB_deliver", |b| b.iter(|| encode(black_box(&items))));
    g.bench_function("decode_64KiB_deliver", |b| b.iter(|| decode(black_box(&frame))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_frames
}
criterion_main!(benches);
