//! The compact binary value of one stored message: what `messages` maps
//! `(room, seq)` to. Owns the layout and nothing else.
//!
//! Layout, little-endian: `ts: u64 | from_len: u32 | from | id_len: u32 | id |
//! body`. `id_len == u32::MAX` means the message has no client id. The body is
//! the rest of the value, so it needs no length of its own.

use super::{StoreError, StoredMsg};

const NO_ID: u32 = u32::MAX;

/// Appends the encoded value to `out` (cleared first). Fails only for a user
/// or id longer than 4 GiB, which the protocol layer never lets through.
pub fn encode(ts: u64, from: &str, id: Option<&str>, body: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.clear();
    out.reserve(8 + 4 + from.len() + 4 + id.map_or(0, str::len) + body.len());
    out.extend_from_slice(&ts.to_le_bytes());
    let from_len = u32::try_from(from.len()).map_err(|_| StoreError::Db("user id too long to store".into()))?;
    out.extend_from_slice(&from_len.to_le_bytes());
    out.extend_from_slice(from.as_bytes());
    match id {
        Some(id) => {
            let id_len = u32::try_from(id.len())
                .ok()
                .filter(|&n| n != NO_ID)
                .ok_or_else(|| StoreError::Db("client id too long to store".into()))?;
            out.extend_from_slice(&id_len.to_le_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        None => out.extend_from_slice(&NO_ID.to_le_bytes()),
    }
    out.extend_from_slice(body);
    Ok(())
}

/// Decodes a stored value. The file is ours, but a damaged one must give an
/// error, never a panic.
pub fn decode(seq: u64, value: &[u8]) -> Result<StoredMsg, StoreError> {
    let mut rest = value;
    let ts = u64::from_le_bytes(take_array(&mut rest, seq)?);
    let from_len = u32::from_le_bytes(take_array(&mut rest, seq)?);
    let from = take_str(&mut rest, from_len, seq)?;
    let id_len = u32::from_le_bytes(take_array(&mut rest, seq)?);
    let id = if id_len == NO_ID { None } else { Some(take_str(&mut rest, id_len, seq)?) };
    Ok(StoredMsg { seq, ts, from, id, body: rest.to_vec() })
}

/// The ts of an encoded value without decoding the rest (0 if damaged):
/// what age retention needs.
pub fn ts_of(value: &[u8]) -> u64 {
    value.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b))
}

fn corrupt(seq: u64) -> StoreError {
    StoreError::Db(format!("corrupt message record at seq {seq}"))
}

fn take_array<const N: usize>(rest: &mut &[u8], seq: u64) -> Result<[u8; N], StoreError> {
    let (head, tail) = rest.split_first_chunk::<N>().ok_or_else(|| corrupt(seq))?;
    *rest = tail;
    Ok(*head)
}

fn take_str(rest: &mut &[u8], len: u32, seq: u64) -> Result<String, StoreError> {
    let len = usize::try_from(len).map_err(|_| corrupt(seq))?;
    if rest.len() < len {
        return Err(corrupt(seq));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(head.to_vec()).map_err(|_| corrupt(seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_and_without_id() {
        let mut buf = Vec::new();
        encode(7, "ann", Some("m-1"), br#"{"t":1}"#, &mut buf).unwrap();
        let m = decode(3, &buf).unwrap();
        assert_eq!(
            m,
            StoredMsg { seq: 3, ts: 7, from: "ann".into(), id: Some("m-1".into()), body: br#"{"t":1}"#.to_vec() }
        );
        encode(9, "", None, b"", &mut buf).unwrap();
        let m = decode(1, &buf).unwrap();
        assert_eq!((m.ts, m.from.as_str(), m.id, m.body.len()), (9, "", None, 0));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(1, &bytes);
        }

        #[test]
        fn round_trip(ts: u64, from in ".{0,8}", id in proptest::option::of(".{0,8}"),
                      body in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut buf = Vec::new();
            encode(ts, &from, id.as_deref(), &body, &mut buf).unwrap();
            let m = decode(5, &buf).unwrap();
            prop_assert_eq!(m, StoredMsg { seq: 5, ts, from, id, body });
        }
    }
}
