//! Bytes on the wire: HTTP/1.1 heads, WebSocket frames and protocol messages.
//! Everything here is sans-IO: bytes in, bytes and events out.

pub mod http;
pub mod msg;
pub mod ws;
