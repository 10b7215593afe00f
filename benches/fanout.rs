//! Fan-out of one message to 1000 members of a room on one reactor, and the
//! room owner's per-message work.
//!
//! `fanout_1000` mirrors what a reactor does when a `Deliver` arrives: look
//! up the room's local members, and for each one push a clone of the shared
//! frame (`Bytes`: a reference count, no copy) onto its `OutQueue`, mark it
//! for flushing once, and check its queue cap. Each iteration then empties
//! the queues the way a completed write does (dropping every queued chunk),
//! so the queues stay small and the release of each reference is counted
//! too; no syscall is made. Throughput is deliveries (members) per second.
//!
//! - `share_preencoded`: the frame was encoded by the room's owner; this is
//!   the member reactor's whole cost per delivery.
//! - `encode_once+share`: the same plus the one `encode_msg` per message.
//! - `encode_per_member`: the naive design, one `encode_msg` per member,
//!   for comparison: the ratio to `encode_once+share` is what sharing saves.
//!
//! `reactor_fanout_1000` drives the real reactor (the in-memory harness:
//! the same code as `serve`, over pipes instead of sockets): one publish to
//! a room of 1000 members, every frame written and taken, with the
//! `/metrics` histograms on and off. Their ratio is what the histograms
//! cost per delivery (the queue-bytes one is observed per connection per
//! write; the latency ones once per message or write pass).
//!
//! `room_publish` times `OwnedRoom::publish`: assign seq and ts, encode the
//! frame once, keep it in the tail (and record the dedup id when given).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roomcast::proto::msg::encode_msg;
use roomcast::reactor::transport::OutQueue;
use roomcast::rooms::{LocalMembers, OwnedRoom, Reserved, RoomName, RoomSettings, UserId};
use serde_json::value::RawValue;
use slab::Slab;

mod common;

const MEMBERS: usize = 1000;
const ROOM: &str = "lobby";
const FROM: &str = "user-0042";
const TS: u64 = 1_767_225_600_000;

/// The server's default outbound queue cap per connection.
const MAX_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The per-connection state a delivery touches.
#[derive(Default)]
struct Conn {
    out: OutQueue,
    flush_queued: bool,
}

/// One reactor's connections and its room membership.
struct Reactor {
    conns: Slab<Conn>,
    local: LocalMembers,
    pending_flush: Vec<u32>,
    slow: Vec<u32>,
}

impl Reactor {
    fn with_members(room: &RoomName, n: usize) -> Self {
        let mut conns = Slab::with_capacity(n);
        let mut local = LocalMembers::default();
        for _ in 0..n {
            let key = conns.insert(Conn::default()) as u32;
            local.add(room, key);
        }
        Reactor { conns, local, pending_flush: Vec::with_capacity(n), slow: Vec::new() }
    }

    /// Queues `frame(key)` on every local member of `room`, as the
    /// reactor's delivery loop does.
    fn deliver(&mut self, room: &str, mut frame: impl FnMut() -> Bytes) -> usize {
        let members = self.local.members(room);
        for &key in members {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            conn.out.push(frame());
            if !conn.flush_queued {
                conn.flush_queued = true;
                self.pending_flush.push(key);
            }
            if conn.out.len() > MAX_QUEUE_BYTES {
                self.slow.push(key);
            }
        }
        members.len()
    }

    /// Stands in for the end-of-loop write pass: every queued chunk is
    /// released as if written.
    fn flush(&mut self) {
        for key in self.pending_flush.drain(..) {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                conn.flush_queued = false;
                conn.out.truncate_unstarted();
            }
        }
        self.slow.clear();
    }
}

/// A `{"text":"..."}` body of exactly `n` bytes (n >= 11).
fn body(n: usize) -> Box<RawValue> {
    let text = "x".repeat(n - r#"{"text":""}"#.len());
    RawValue::from_string(format!(r#"{{"text":"{text}"}}"#)).expect("a valid JSON body")
}

fn bench_fanout(c: &mut Criterion) {
    let room: RoomName = Arc::from(ROOM);
    let body = body(100);
    let mut reactor = Reactor::with_members(&room, MEMBERS);
    let shared = encode_msg(ROOM, 1, TS, FROM, &body, Some("m-1")).frame;
    let mut seq = 0u64;

    let mut g = c.benchmark_group("fanout_1000");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("share_preencoded", |b| {
        b.iter(|| {
            let n = reactor.deliver(black_box(ROOM), || shared.clone());
            reactor.flush();
            n
        })
    });
    g.bench_function("encode_once+share", |b| {
        b.iter(|| {
            seq += 1;
            let frame = encode_msg(ROOM, black_box(seq), TS, FROM, &body, Some("m-1")).frame;
            let n = reactor.deliver(black_box(ROOM), || frame.clone());
            reactor.flush();
            n
        })
    });
    g.bench_function("encode_per_member", |b| {
        b.iter(|| {
            seq += 1;
            let s = black_box(seq);
            let n = reactor.deliver(black_box(ROOM), || encode_msg(ROOM, s, TS, FROM, &body, Some("m-1")).frame);
            reactor.flush();
            n
        })
    });
    g.finish();
}

fn bench_reactor(c: &mut Criterion) {
    use roomcast::config::Config;
    use roomcast::testkit::{client_frame, ConnId, Harness};

    let mut g = c.benchmark_group("reactor_fanout_1000");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    for (name, on) in [("histograms_on", true), ("histograms_off", false)] {
        let config = Config { threads: 1, send_rate: 0.0, metrics_histograms: on, ..Config::default() };
        let Ok(mut h) = Harness::new(config) else { panic!("harness") };
        let members: Vec<ConnId> = (0..MEMBERS).map(|i| h.member(&format!("m{i}"), "r")).collect();
        let publisher = h.member("pub", "r");
        let frame = client_frame(true, 1, br#"{"op":"send","room":"r","body":{"text":"a hundred bytes or so of a chat message, as a load test would send it, give or take"}}"#);
        g.bench_function(name, |b| {
            b.iter(|| {
                h.input(publisher, black_box(&frame));
                for c in &members {
                    h.discard_output(*c);
                }
                h.discard_output(publisher);
            })
        });
    }
    g.finish();
}

fn bench_publish(c: &mut Criterion) {
    let room: RoomName = Arc::from(ROOM);
    let from: UserId = Arc::from(FROM);
    let body = body(100);
    // Server defaults, except a dedup window short enough that the dedup
    // map reaches a steady size (about 60k ids at one message per
    // simulated millisecond) within the warm-up.
    let settings = RoomSettings {
        tail: 1024,
        max_replay: 1000,
        dedup_window: Duration::from_secs(60),
        retain_messages: None,
        retain_age: None,
    };
    // More distinct ids than the window holds, so a reused id has always
    // expired and every publish is a new message.
    let ids: Vec<String> = (0..100_000).map(|i| format!("m-{i}")).collect();

    let mut g = c.benchmark_group("room_publish");
    g.throughput(Throughput::Elements(1));

    let mut r = OwnedRoom::new(room.clone(), 2);
    let mut now = TS;
    g.bench_function("no_id", |b| {
        b.iter(|| {
            now += 1;
            match r.reserve(&settings, &from, &body, None, black_box(now)) {
                // Reserve (seq, ts, one encode) then commit (tail): the
                // owner's whole work for a message, storage aside.
                Reserved::New { seq, ts, frame, .. } => {
                    r.commit(&settings, seq, ts, frame);
                    true
                }
                Reserved::Duplicate { .. } => false,
            }
        })
    });

    let mut r = OwnedRoom::new(room, 2);
    let mut now = TS;
    let mut next = ids.iter().cycle();
    g.bench_function("with_id", |b| {
        b.iter(|| {
            now += 1;
            let id = next.next().map(String::as_str);
            match r.reserve(&settings, &from, &body, id, black_box(now)) {
                // Reserve (seq, ts, one encode) then commit (tail): the
                // owner's whole work for a message, storage aside.
                Reserved::New { seq, ts, frame, .. } => {
                    r.commit(&settings, seq, ts, frame);
                    true
                }
                Reserved::Duplicate { .. } => false,
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_fanout, bench_reactor, bench_publish
}
criterion_main!(benches);
