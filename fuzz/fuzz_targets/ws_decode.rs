//! Fuzzes the WebSocket frame decoder with arbitrary client bytes, fed in
//! reads of a size the input chooses, so that partial frames and the
//! decoder's resume-after-`Ok(None)` path are exercised as well as whole ones.
//! The first byte also picks permessage-deflate (RSV1 frames are inflated,
//! with or without context takeover), so inflation and its size limit are
//! fuzzed through the same path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::proto::ws::{Decoder, Event};

/// Small enough that `TooBig` is reachable from short inputs.
const MAX_MESSAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let mut dec = Decoder::new(MAX_MESSAGE);
    if step & 0x80 != 0 {
        dec = dec.with_deflate(step & 0x40 != 0);
    }
    let step = usize::from(step & 0x3F) + 1;
    let mut input = rest.to_vec();
    let mut start = 0;
    let mut avail = 0;
    while avail < input.len() {
        // One "read": more bytes become visible behind the unconsumed ones.
        avail = (avail + step).min(input.len());
        loop {
            let window = avail - start;
            match dec.decode(&mut input[start..avail]) {
                Ok(Some((consumed, event))) => {
                    assert!(consumed > 0 && consumed <= window);
                    let close = match event {
                        Some(Event::Text(text)) => {
                            assert!(text.len() <= MAX_MESSAGE);
                            assert!(std::str::from_utf8(text).is_ok());
                            false
                        }
                        Some(Event::Binary(bin)) => {
                            assert!(bin.len() <= MAX_MESSAGE);
                            false
                        }
                        Some(Event::Ping(p) | Event::Pong(p)) => {
                            assert!(p.len() <= 125);
                            false
                        }
                        Some(Event::Close { reason, .. }) => {
                            assert!(reason.len() <= 123);
                            true
                        }
                        None => false,
                    };
                    assert!(dec.buffered() <= MAX_MESSAGE);
                    start += consumed;
                    if close {
                        // The connection stops reading after a close.
                        return;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    assert!(matches!(err.close_code(), 1002 | 1007 | 1009));
                    return;
                }
            }
        }
    }
});
