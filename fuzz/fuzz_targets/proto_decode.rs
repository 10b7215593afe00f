//! Fuzzes the protocol message decoders with arbitrary bytes: they must
//! answer every input with a message or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = roomcast::proto::msg::decode(data);
    let _ = roomcast::proto::msg::decode_post(data);
});
