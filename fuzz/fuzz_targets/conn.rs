//! Fuzzes one whole connection through a real reactor (`testkit::Harness`,
//! in memory, no storage): the HTTP head, routing, tokens, the upgrade,
//! WebSocket frames and the ops they carry, with the bytes arriving in reads
//! the input chooses. After every read the harness invariants must hold
//! (queue and buffer bounds, room membership) and what the server sent must
//! be well formed (`common::Peer`); at the end the peer closes, time passes
//! every timeout, and the connection must be gone.
//!
//! Input: the first byte picks the settings (`common::config`); then chunks,
//! each a length byte and that many bytes that arrive as one read. A length
//! of 0 moves the clock instead, by the next byte times 100 ms. In a chunk,
//! `$TOKEN` becomes a valid token for user `fuzz` (masked frames with the
//! all-zero mask carry their payload in the clear, so the seeds write JSON
//! ops as they are).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use roomcast::testkit::Harness;

mod common;
use common::{config, Peer};

const PLACEHOLDER: &[u8] = b"$TOKEN";
const TEN_S: Duration = Duration::from_secs(10);

fn substitute(chunk: &[u8], token: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + token.len());
    let mut rest = chunk;
    while let Some(i) = rest.windows(PLACEHOLDER.len()).position(|w| w == PLACEHOLDER) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(token);
        rest = &rest[i + PLACEHOLDER.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn check(h: &Harness, step: usize) {
    if let Err(e) = h.check_invariants() {
        panic!("invariant broken after step {step}: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let config = config(flags);
    let json = !config.echo;
    let longest = config.request_timeout.max(config.idle_timeout).max(config.drain_timeout);
    let mut h = Harness::new(config).expect("a harness");
    let token = h.token("fuzz").into_bytes();
    let c = h.connect();
    let mut peer = Peer::default();
    check(&h, 0);
    let mut step = 0;
    while let Some((&len, tail)) = rest.split_first() {
        step += 1;
        if len == 0 {
            let (&tenths, tail) = tail.split_first().unwrap_or((&1, &[]));
            h.advance(Duration::from_millis(u64::from(tenths) * 100));
            rest = tail;
        } else {
            let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
            h.input(c, &substitute(chunk, &token));
            rest = tail;
        }
        check(&h, step);
        if let Err(e) = peer.absorb(&h.take_output(c), json) {
            panic!("bad output after step {step}: {e}");
        }
    }
    h.peer_close(c);
    check(&h, step + 1);
    // Past every deadline a connection can have: the close handshake's
    // grace first, then request, idle and drain, with room for one timer to
    // arm the next. (Long clock moves cost the timer wheel a walk over every
    // tick, so they are made only while something is still open.)
    for d in [TEN_S, TEN_S, longest + TEN_S, longest + TEN_S] {
        if h.open_conns() == 0 {
            break;
        }
        h.advance(d);
        check(&h, step + 2);
    }
    assert!(!h.is_open(c), "the connection is still open after the peer closed and every timeout passed");
    assert_eq!(h.open_conns(), 0, "connections left open");
});
