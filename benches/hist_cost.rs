//! What the `/metrics` histograms cost per delivery, as a ratio measured side
//! by side: two in-memory harnesses (the real reactor over pipes, as in
//! `fanout`'s `reactor_fanout_1000`), one with `--metrics-histograms` on and
//! one off, each with a room of 1000 members. Every round times a batch of
//! publishes on one, then the same batch on the other (the order swaps each
//! round), so drift in the machine's load falls on both sides alike; the
//! figure is the median of the per-round ratios, with its quartiles.
//!
//! `cargo bench --bench hist_cost -- [rounds] [publishes per batch]`
//! (defaults 400 and 20). Criterion's groups run one function after the
//! other, seconds apart, which on a shared machine moves each side by more
//! than the difference being measured; hence this plain timing loop.

use std::hint::black_box;
use std::time::Instant;

use roomcast::config::Config;
use roomcast::testkit::{client_frame, ConnId, Harness};

const MEMBERS: usize = 1000;

struct Side {
    h: Harness,
    members: Vec<ConnId>,
    publisher: ConnId,
}

fn side(histograms: bool) -> Side {
    let config = Config { threads: 1, send_rate: 0.0, metrics_histograms: histograms, ..Config::default() };
    let Ok(mut h) = Harness::new(config) else { panic!("harness") };
    let members = (0..MEMBERS).map(|i| h.member(&format!("m{i}"), "r")).collect();
    let publisher = h.member("pub", "r");
    Side { h, members, publisher }
}

/// Nanoseconds per delivery over `n` publishes.
fn batch(s: &mut Side, frame: &[u8], n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        s.h.input(s.publisher, black_box(frame));
        for c in &s.members {
            s.h.discard_output(*c);
        }
        s.h.discard_output(s.publisher);
    }
    t.elapsed().as_nanos() as f64 / (n * MEMBERS) as f64
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let nums: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = nums.first().copied().unwrap_or(400).max(1);
    let per = nums.get(1).copied().unwrap_or(20).max(1);
    let frame = client_frame(true, 1, br#"{"op":"send","room":"r","body":{"text":"a hundred bytes or so of a chat message, as a load test would send it, give or take"}}"#);
    let (mut on, mut off) = (side(true), side(false));
    // Warm both: caches, the tails, the allocator's free lists.
    for _ in 0..3 {
        batch(&mut on, &frame, per);
        batch(&mut off, &frame, per);
    }
    let (mut ons, mut offs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            let a = batch(&mut on, &frame, per);
            (a, batch(&mut off, &frame, per))
        } else {
            let b = batch(&mut off, &frame, per);
            (batch(&mut on, &frame, per), b)
        };
        ons.push(a);
        offs.push(b);
        ratios.push(a / b);
    }
    for v in [&mut ons, &mut offs, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    println!("hist_cost: {rounds} rounds x {per} publishes x {MEMBERS} members, alternating");
    println!("  ns per delivery, median: on {:.1}, off {:.1}", quantile(&ons, 0.5), quantile(&offs, 0.5));
    println!(
        "  on/off per round: median {:.4} (quartiles {:.4} .. {:.4})",
        quantile(&ratios, 0.5),
        quantile(&ratios, 0.25),
        quantile(&ratios, 0.75)
    );
}
