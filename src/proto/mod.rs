//! Bytes on the wire: HTTP/1.1 heads, WebSocket frames and protocol messages.
//! Everything here is sans-IO: bytes in, bytes and events out. The one clock
//! read, [`now_ms`], lives here because it defines the unit of the wire's
//! timestamps; no codec calls it.

pub mod http;
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
