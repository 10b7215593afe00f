//! Allocations on the steady fan-out path, counted.
//!
//! A counting global allocator wraps the system one; only the thread that
//! sets `COUNTING` is counted (the harness drives its reactor on the test
//! thread, so that is exactly the reactor's work). One room, N local
//! members, 10,000 messages sent one by one, each delivered and written to
//! every member before the next: the count per message must not grow with
//! N. Per-message work (parsing the send, encoding the frame once, the
//! owner's bookkeeping) is allowed; per-delivery work (queue growth, flush
//! lists, iovec arrays, timers) is not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use roomcast::config::Config;
use roomcast::testkit::{client_frame, server_frames, upgrade_request, ConnId, Harness};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed straight to `System`; counting touches only
// an atomic and a const-initialised thread-local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const MESSAGES: usize = 10_000;
/// Messages sent before counting starts: queues, flush lists and buffers
/// reach their working size.
const WARMUP: usize = 200;

fn member(h: &mut Harness, user: &str) -> ConnId {
    let c = h.connect();
    let t = h.token(user);
    h.input(c, &upgrade_request(&t));
    let head = String::from_utf8_lossy(&h.take_output(c)).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    h.input(c, &client_frame(true, 1, br#"{"op":"join","room":"r"}"#));
    c
}

/// Allocations per message on the reactor's thread with `n` members, and
/// how many `msg` frames one member received while they were counted.
fn per_message(n: usize) -> (f64, usize) {
    let config = Config { threads: 1, send_rate: 0.0, ..Config::default() };
    let mut h = Harness::new(config).expect("harness");
    let members: Vec<ConnId> = (0..n).map(|i| member(&mut h, &format!("m{i}"))).collect();
    let publisher = member(&mut h, "pub");
    let frames: Vec<Vec<u8>> = (0..WARMUP + MESSAGES)
        .map(|i| client_frame(true, 1, format!(r#"{{"op":"send","room":"r","body":{{"n":{i}}}}}"#).as_bytes()))
        .collect();
    for c in &members {
        h.discard_output(*c);
    }
    for (i, f) in frames.iter().enumerate() {
        if i == WARMUP {
            let warm = server_frames(&h.take_output(members[0])).0;
            assert_eq!(warm.len(), WARMUP, "the warm-up was not delivered");
            ALLOCS.store(0, Ordering::Relaxed);
            COUNTING.with(|c| c.set(true));
        }
        h.input(publisher, f);
        if i >= WARMUP && i % 100 == 99 {
            // A member that reads everything; the harness's own buffer
            // keeps its capacity.
            for c in &members[1..] {
                h.discard_output(*c);
            }
            h.discard_output(publisher);
        }
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let out = h.take_output(members[0]);
    let got = server_frames(&out).0.iter().filter(|(_, p)| p.starts_with(br#"{"op":"msg""#)).count();
    (allocs as f64 / MESSAGES as f64, got)
}

#[test]
fn allocations_per_message_do_not_grow_with_members() {
    let (small, got_small) = per_message(10);
    let (large, got_large) = per_message(1000);
    println!("allocations per message: {small:.2} with 10 members, {large:.2} with 1000");
    // Every counted message reached the member.
    assert_eq!((got_small, got_large), (MESSAGES, MESSAGES));
    // Independent of the member count: 100× the members may not add even
    // one allocation per ten messages.
    assert!(large <= small + 0.1, "{large:.2} per message with 1000 members against {small:.2} with 10");
    // And the per-message work itself stays small.
    assert!(small < 40.0, "{small:.2} allocations per message");
}
