//! Fuzzes the stored-record layout (`store::codec`). A damaged database
//! file hands the history readers arbitrary bytes: decoding them must give a
//! message or an error, never a panic, and a decoded message must encode
//! back to exactly the bytes it came from (the layout has one spelling per
//! message). Structured messages must survive encode then decode unchanged.
//!
//! Input: first byte even: the rest is a raw stored value (seq from the
//! next 8 bytes when there are that many); odd: the rest drives `arbitrary`
//! for a message to round-trip.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use roomcast::fuzz_api::record::{decode, encode, ts_of, StoredMsg};

#[derive(Arbitrary, Debug)]
struct Msg {
    seq: u64,
    ts: u64,
    from: String,
    id: Option<String>,
    body: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut buf = Vec::new();
    if mode & 1 == 0 {
        let (seq, value) = match rest.split_first_chunk::<8>() {
            Some((seq, value)) => (u64::from_le_bytes(*seq), value),
            None => (0, rest),
        };
        let ts = ts_of(value);
        if let Ok(m) = decode(seq, value) {
            assert_eq!(m.seq, seq);
            assert_eq!(m.ts, ts);
            encode(m.ts, &m.from, m.id.as_deref(), &m.body, &mut buf).expect("a decoded message encodes");
            assert_eq!(buf, value, "decode then encode changed the bytes");
        }
        return;
    }
    let Ok(m) = Msg::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    encode(m.ts, &m.from, m.id.as_deref(), &m.body, &mut buf).expect("short fields encode");
    assert_eq!(ts_of(&buf), m.ts);
    let back = decode(m.seq, &buf).expect("an encoded message decodes");
    assert_eq!(back, StoredMsg { seq: m.seq, ts: m.ts, from: m.from, id: m.id, body: m.body });
    // Every cut inside the header is an error, never a shorter message.
    let header = buf.len() - back.body.len();
    let cut = usize::from(rest.first().copied().unwrap_or(0)) % header.max(1);
    assert!(decode(m.seq, &buf[..cut]).is_err());
});
