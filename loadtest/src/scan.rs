//! Reads the few fields the load generator needs out of the server's JSON by
//! scanning bytes, without parsing or allocating.
//!
//! This relies on the server writing its keys in PROTOCOL.md's fixed order
//! (`{"op":"msg","room":..,"seq":N,"ts":..,"from":..,"body":..}`) and on room
//! names never holding a quote; user ids are JSON strings whose quotes are
//! escaped, so a key pattern such as `"body":` cannot appear inside one. The
//! body is the load generator's own `{"t":NS,"k":N,"p":".."}`.

/// What kind of server message a text frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Msg,
    Ack,
    Joined,
    Pong,
    Error,
    Other,
}

/// Classifies a server message by its leading `{"op":"..."`.
pub fn kind(json: &[u8]) -> Kind {
    let rest = match json.strip_prefix(b"{\"op\":\"") {
        Some(r) => r,
        None => return Kind::Other,
    };
    if rest.starts_with(b"msg\"") {
        Kind::Msg
    } else if rest.starts_with(b"ack\"") {
        Kind::Ack
    } else if rest.starts_with(b"joined\"") {
        Kind::Joined
    } else if rest.starts_with(b"pong\"") {
        Kind::Pong
    } else if rest.starts_with(b"error\"") {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// Position just past the first occurrence of `needle` in `hay`.
fn find_after(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle).map(|p| p + needle.len())
}

/// Parses the unsigned integer at the start of `s`; `None` if there is none or it overflows.
fn leading_u64(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut any = false;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// The unsigned integer value of the first `"key":` in `json`.
pub fn u64_field(json: &[u8], key_colon: &[u8]) -> Option<u64> {
    let at = find_after(json, key_colon)?;
    leading_u64(json.get(at..)?)
}

/// `seq` and the body's intended send time `t` of a `msg`.
pub fn msg_seq_and_t(json: &[u8]) -> Option<(u64, u64)> {
    let seq_at = find_after(json, b"\"seq\":")?;
    let rest = json.get(seq_at..)?;
    let seq = leading_u64(rest)?;
    // The body's keys may come in any order: a server that re-serialises
    // bodies through a sorted map writes `{"k":..,"p":..,"t":..}`. The other
    // values are a number and a run of `x`, so `"t":` cannot occur in them.
    let body_at = find_after(rest, b"\"body\":{")?;
    let body = rest.get(body_at..)?;
    let t_at = find_after(body, b"\"t\":")?;
    let t = leading_u64(body.get(t_at..)?)?;
    Some((seq, t))
}

/// The room of a `msg`, `ack` or `joined` (room names hold no quote or escape).
pub fn room(json: &[u8]) -> Option<&[u8]> {
    let at = find_after(json, b"\"room\":\"")?;
    let rest = json.get(at..)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    rest.get(..end)
}

/// An integer `ref`, as the load generator always sends.
pub fn int_ref(json: &[u8]) -> Option<u64> {
    u64_field(json, b"\"ref\":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_server_msg() {
        let frame = roomcast::proto::msg::encode_msg_raw(
            "lt-r0",
            42,
            1_764_441_600_000,
            "m\"seq\":9",
            br#"{"t":123456789,"k":7,"p":"xx"}"#,
            None,
        );
        let json = frame.json();
        assert_eq!(kind(json), Kind::Msg);
        assert_eq!(msg_seq_and_t(json), Some((42, 123456789)));
        assert_eq!(room(json), Some(&b"lt-r0"[..]));
        let sorted = br#"{"op":"msg","room":"r","seq":3,"ts":1,"from":"u","body":{"k":7,"p":"xx","t":55}}"#;
        assert_eq!(msg_seq_and_t(sorted), Some((3, 55)));
    }

    #[test]
    fn reads_ack_joined_pong() {
        let ack = br#"{"op":"ack","ref":99,"room":"r","seq":5,"ts":1}"#;
        assert_eq!(kind(ack), Kind::Ack);
        assert_eq!(int_ref(ack), Some(99));
        assert_eq!(u64_field(ack, b"\"seq\":"), Some(5));
        let joined = br#"{"op":"joined","ref":3,"room":"lobby","seq":0}"#;
        assert_eq!(kind(joined), Kind::Joined);
        assert_eq!(u64_field(joined, b"\"seq\":"), Some(0));
        assert_eq!(kind(br#"{"op":"pong","ref":1}"#), Kind::Pong);
        assert_eq!(kind(br#"{"op":"presence_diff"}"#), Kind::Other);
        assert_eq!(kind(b"garbage"), Kind::Other);
        assert_eq!(int_ref(br#"{"op":"pong","ref":"a"}"#), None);
        assert_eq!(u64_field(b"\"seq\":99999999999999999999999", b"\"seq\":"), None);
    }
}
