//! JSON strings as the gateway writes them by hand: the one escaper behind
//! every protocol message, HTTP body and error body, and the exact length of
//! its output, so callers can size a buffer or a Content-Length before
//! writing.
//!
//! The output is byte for byte what serde_json writes for a `&str`: `"` and
//! `\` escaped, `\b \t \n \f \r` for those controls, `\u00xx` (lower-case
//! hex) for the other bytes below 0x20, everything else (DEL and all
//! non-ASCII characters included) as plain UTF-8. Clients and tests compare
//! against serde_json, so this must not drift. Numbers are
//! [`super::push_decimal`]; object layout belongs to the callers.

/// The JSON escape of one byte of a UTF-8 string, if it needs one. Bytes of
/// multi-byte characters are all >= 0x80 and pass through.
fn escape(b: u8) -> Option<&'static [u8]> {
    const CONTROL: [&[u8]; 32] = [
        b"\\u0000", b"\\u0001", b"\\u0002", b"\\u0003", b"\\u0004", b"\\u0005", b"\\u0006", b"\\u0007", b"\\b", b"\\t",
        b"\\n", b"\\u000b", b"\\f", b"\\r", b"\\u000e", b"\\u000f", b"\\u0010", b"\\u0011", b"\\u0012", b"\\u0013",
        b"\\u0014", b"\\u0015", b"\\u0016", b"\\u0017", b"\\u0018", b"\\u0019", b"\\u001a", b"\\u001b", b"\\u001c",
        b"\\u001d", b"\\u001e", b"\\u001f",
    ];
    match b {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        _ => CONTROL.get(usize::from(b)).copied(),
    }
}

/// The length of `s` escaped, without quotes.
pub fn escaped_len(s: &str) -> usize {
    s.bytes().map(|b| escape(b).map_or(1, <[u8]>::len)).sum()
}

/// Appends `s` escaped, without quotes. Runs that need no escape are copied
/// whole.
pub fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(escaped) = escape(b) {
            out.extend_from_slice(bytes.get(plain_from..i).unwrap_or_default());
            out.extend_from_slice(escaped);
            plain_from = i + 1;
        }
    }
    out.extend_from_slice(bytes.get(plain_from..).unwrap_or_default());
}

/// The length of `s` as a JSON string, quotes included.
pub fn str_len(s: &str) -> usize {
    2 + escaped_len(s)
}

/// Appends `s` as a JSON string, quotes included.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_against_serde(s: &str) {
        let want = serde_json::to_vec(s).unwrap();
        let mut out = vec![b'x'];
        push_str(&mut out, s);
        assert_eq!(&out[1..], &want[..], "{s:?}");
        assert_eq!(str_len(s), want.len(), "{s:?}");
        let mut bare = Vec::new();
        push_escaped(&mut bare, s);
        assert_eq!(bare, &want[1..want.len() - 1], "{s:?}");
        assert_eq!(escaped_len(s), bare.len(), "{s:?}");
    }

    #[test]
    fn every_ascii_byte_as_serde_json_writes_it() {
        for b in 0u8..0x80 {
            let one = char::from(b).to_string();
            check_against_serde(&one);
            check_against_serde(&format!("ab{one}cd{one}"));
        }
        let all: String = (0u8..0x80).map(char::from).collect();
        check_against_serde(&all);
        for s in ["", "a", "\"\\", "\u{0}\u{8}\u{c}\n\r\t\u{1f}", "é€😀", "a\u{7f}", "\u{2028}\u{2029}", "</script>"]
        {
            check_against_serde(s);
        }
    }

    proptest! {
        #[test]
        fn any_string_as_serde_json_writes_it(s in any::<String>()) {
            check_against_serde(&s);
        }
    }
}
