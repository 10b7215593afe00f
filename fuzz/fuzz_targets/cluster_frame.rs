//! Fuzzes the decoder of the frames cluster nodes exchange
//! (`cluster::wire`, schema/cluster.capnp): every input, however damaged,
//! must give the frame's items or an error, never a panic. What decodes
//! must encode and decode again to as many items, and the second encoding
//! must be the first one's bytes (one spelling per list of items).
//!
//! Input: one frame as a peer's nng message carries it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::cluster::wire::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(items) = decode(data) else {
        return;
    };
    let bytes = encode(&items);
    let again = decode(&bytes).expect("an encoded frame decodes");
    assert_eq!(again.len(), items.len());
    assert_eq!(encode(&again), bytes, "decode then encode changed the bytes");
});
