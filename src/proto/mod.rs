//! Bytes on the wire: HTTP/1.1 heads, WebSocket frames and protocol messages.
//! Everything here is sans-IO: bytes in, bytes and events out. The one clock
//! read, [`now_ms`], lives here because it defines the unit of the wire's
//! timestamps; no codec calls it.
//!
//! The writers the formats share have one definition each: JSON strings in
//! [`json`], and, here, the ASCII decimal of HTTP lengths and JSON numbers
//! ([`push_decimal`]).

pub mod deflate;
pub mod http;
pub mod json;
pub mod msg;
pub mod ws;

/// Now, in milliseconds since the Unix epoch: the unit of every timestamp
/// on the wire (`ts`, `since`) and of the dedup windows. A clock before 1970
/// reads 0, one past `u64::MAX` ms reads `u64::MAX`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Appends `n` in ASCII decimal, as JSON numbers and HTTP lengths are
/// written.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// How many bytes [`push_decimal`] writes for `n`.
pub fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0, 1, 9, 10, 99, 100, 12345, 1_764_441_602_000, u64::MAX / 10, u64::MAX - 1, u64::MAX] {
            let mut out = vec![b'x'];
            push_decimal(&mut out, n);
            assert_eq!(&out[1..], n.to_string().as_bytes());
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
        for p in 0..20 {
            let n = 10u64.pow(p);
            assert_eq!(decimal_len(n), p as usize + 1);
            assert_eq!(decimal_len(n - 1), (p as usize).max(1));
        }
    }
}
