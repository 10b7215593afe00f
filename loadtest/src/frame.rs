//! Client side of the WebSocket framing: reads the server's unmasked frames
//! in place and writes masked client frames.
//!
//! The gateway's own decoder (`roomcast::proto::ws::Decoder`) is the server
//! side and insists on masked frames, so the load generator carries this small
//! mirror image of it; the writing side is the gateway's one header encoder
//! (`roomcast::proto::ws::write_masked_frame`). It owns no buffers: the caller reads into its own buffer and
//! asks for one frame at a time, which keeps the receive path free of
//! allocation per frame.

use thiserror::Error;

// The opcodes are the server codec's own: one definition for both sides.
pub use roomcast::proto::ws::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// Why a server's frame was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("server frame is masked")]
    Masked,
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
    #[error("reserved bits set")]
    Reserved,
}

/// One complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a permessage-deflate message (only if the upgrade offered it;
    /// the server sets it on nothing else).
    pub rsv1: bool,
    pub opcode: u8,
    /// Offset of the payload from the frame's start.
    pub header_len: usize,
    pub payload_len: usize,
}

impl Frame {
    /// Header plus payload: how far to advance past this frame.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the frame at the start of `buf`: `Ok(None)` when it is not all
/// there yet. `max` bounds the payload so a broken peer cannot make the caller
/// buffer without end.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    if b0 & 0x30 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (header_len, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (10, u64::from_be_bytes(b)),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let payload_len = len as usize;
    if buf.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(Frame { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode: b0 & 0x0F, header_len, payload_len }))
}

/// Appends a FIN, masked client frame carrying `payload` to `out`, with
/// the gateway's own header encoder.
///
/// The mask need not be secret here (RFC 6455 wants it unpredictable to
/// protect intermediaries; on loopback there are none), so callers pass a
/// cheap counter-derived value.
pub fn write_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    roomcast::proto::ws::write_masked_frame(out, true, opcode, payload, mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_header_sizes() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let frame = roomcast::proto::ws::encode_frame(OP_TEXT, &vec![b'a'; len]);
            let f = parse(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(f.payload_len, len);
            assert_eq!(f.total_len(), frame.len());
            assert!(f.fin);
            assert_eq!(f.opcode, OP_TEXT);
            // Every strict prefix is incomplete, never an error.
            for cut in [0, 1, frame.len() / 2, frame.len() - 1] {
                if cut < frame.len() {
                    assert_eq!(parse(&frame[..cut], 1 << 20), Ok(None), "len {len} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn refuses_masked_oversized_and_reserved() {
        assert_eq!(parse(&[0x81, 0x85, 0, 0, 0, 0], 100), Err(FrameError::Masked));
        assert_eq!(parse(&[0xA1, 0x00], 100), Err(FrameError::Reserved));
        assert_eq!(parse(&[0x91, 0x00], 100), Err(FrameError::Reserved));
        assert!(parse(&[0xC1, 0x00], 100).unwrap().unwrap().rsv1);
        assert_eq!(parse(&[0x81, 126, 0x01, 0x00], 100), Err(FrameError::TooLarge(256)));
    }

    #[test]
    fn masked_frames_decode_on_the_server_side() {
        let payload = br#"{"op":"ping","ref":7}"#.repeat(20);
        let mut out = Vec::new();
        write_masked(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
        let mut dec = roomcast::proto::ws::Decoder::new(1 << 20);
        let mut buf = out.clone();
        let got = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.0, out.len());
        match got.1 {
            Some(roomcast::proto::ws::Event::Text(t)) => assert_eq!(t, &payload[..]),
            other => panic!("unexpected {other:?}"),
        }
    }
}
