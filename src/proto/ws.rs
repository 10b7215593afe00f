//! Server-side RFC 6455 WebSocket framing: a sans-IO, incremental frame
//! decoder and the helpers that write server frames (and, for the load
//! generator, test peers and benchmarks, masked client frames: one header
//! encoder serves both sides).
//!
//! This module owns frame headers, masking, fragment assembly, UTF-8
//! validation of text messages and close payloads, and the handshake's
//! accept key. It does not own sockets, read buffers, the closing handshake
//! (what to answer to a Close) or any message semantics above the frame.
//!
//! The decoder works on a buffer the caller owns: it unmasks payloads in
//! place and hands back borrowed events, so a single unfragmented frame costs
//! no allocation. Only fragmented messages are copied, into one assembly
//! buffer that is reused from message to message.
//!
//! With permessage-deflate negotiated (RFC 7692, see `proto::deflate`),
//! RSV1 on the first frame of a data message marks it compressed: each of
//! its frames is inflated as it completes, into a buffer bounded by the
//! message limit (a bomb fails with 1009 at the first byte past it), and
//! text is validated as it is inflated. RSV1 anywhere else, and RSV2 and
//! RSV3 always, are protocol errors.
//!
//! Strictness follows what Autobahn|Testsuite checks: every error is reported as soon as the bytes that prove it
//! have arrived (a bad header from its first bytes, an oversized frame from
//! its length field, bad UTF-8 from the first invalid byte even in the middle
//! of a frame), and maps to the close code the caller must send.

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::deflate::{InflateError, Inflater};

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// The largest control frame payload RFC 6455 allows.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A close reason must fit a control frame after the two code bytes.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// After a message larger than this, the assembly buffer's memory is given
/// back instead of being kept for the next message, so that one big message
/// does not pin its memory for the life of the connection.
const KEEP_ASSEMBLY_CAPACITY: usize = 64 * 1024;

/// Why a connection must be failed. Every variant is the peer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The peer broke RFC 6455 framing rules.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason is not valid UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A frame or an assembled message is larger than the configured maximum.
    #[error("message too big")]
    TooBig,
}

impl WsError {
    /// The close code to send before closing the connection.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 => 1007,
            WsError::TooBig => 1009,
        }
    }
}

/// What one decoded frame completed. Payloads borrow either the caller's
/// buffer (unfragmented messages and control frames) or the decoder's
/// assembly buffer (fragmented messages).
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, already validated as UTF-8.
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; the caller answers with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame with a validated code and UTF-8 reason. `code` is `None`
    /// for an empty close payload (the reason is then empty too).
    Close { code: Option<u16>, reason: &'a str },
}

/// Incremental UTF-8 validation across chunks: the bytes of a character cut
/// at a chunk's end are carried over (at most three), everything else is
/// validated by `std::str::from_utf8` where it lies.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8State {
    carry: [u8; 4],
    len: u8,
}

impl Utf8State {
    /// Validates `data` as the continuation of everything fed so far. A
    /// character left incomplete at the end is fine; an invalid one fails now.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), WsError> {
        if self.len > 0 {
            let have = usize::from(self.len);
            let want = utf8_width(self.carry[0]);
            let take = want.saturating_sub(have).min(data.len());
            let (head, rest) = data.split_at(take);
            self.carry[have..have + take].copy_from_slice(head);
            let filled = have + take;
            match std::str::from_utf8(&self.carry[..filled]) {
                Ok(_) => self.len = 0,
                // Still a valid prefix: `data` ran out before the character did.
                Err(e) if e.error_len().is_none() => {
                    self.len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(WsError::InvalidUtf8),
            }
            data = rest;
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = data.get(e.valid_up_to()..).unwrap_or_default();
                // An incomplete character is at most three bytes long.
                let Some(dst) = self.carry.get_mut(..tail.len()) else {
                    return Err(WsError::InvalidUtf8);
                };
                dst.copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(WsError::InvalidUtf8),
        }
    }

    /// Ends the text: a character still incomplete makes it invalid.
    fn finish(&mut self) -> Result<(), WsError> {
        let complete = self.len == 0;
        *self = Self::default();
        if complete {
            Ok(())
        } else {
            Err(WsError::InvalidUtf8)
        }
    }
}

/// The encoded length of the character a valid lead byte starts.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// A parsed, checked frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    /// RSV1: the message this frame starts is compressed.
    rsv1: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Bytes before the payload.
    len: usize,
    payload_len: usize,
}

/// Decodes client frames on a server connection.
///
/// Lifecycle: frames are decoded one at a time from the front of the
/// caller's read buffer. A data frame that has only partly arrived is
/// unmasked and validated as far as it has arrived, and the decoder remembers
/// how far; the caller must therefore call again with the same bytes at the
/// front of the buffer (moved is fine, changed is not) plus whatever arrived
/// since. Non-final fragments are copied into the assembly buffer; the final
/// one returns the whole message borrowed from it, and the buffer is emptied
/// on the next call.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Payload of the fragmented message being assembled.
    assembly: Vec<u8>,
    /// `OP_TEXT` or `OP_BINARY` while a fragmented message is in progress.
    message_opcode: Option<u8>,
    /// UTF-8 state of the text message in flight: the one being assembled,
    /// or the single frame at the front of the buffer.
    utf8: Utf8State,
    /// Payload bytes of the frame at the front of the buffer that are
    /// already unmasked (and validated, for text) in place.
    front_done: usize,
    /// The last event borrowed `assembly`; empty it on the next call. It
    /// cannot be emptied earlier because the event is still borrowed.
    release_assembly: bool,
    /// permessage-deflate was negotiated: `Some(client_no_context_takeover)`.
    deflate: Option<bool>,
    /// The message in flight is compressed (its first frame had RSV1).
    compressed: bool,
    /// Made on the first compressed message (see `proto::deflate`).
    inflater: Option<Box<Inflater>>,
    /// The inflated message in flight; released like `assembly`.
    inflated: Vec<u8>,
}

impl Decoder {
    /// A decoder that refuses frames and messages longer than `max_message`
    /// payload bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            assembly: Vec::new(),
            message_opcode: None,
            utf8: Utf8State::default(),
            front_done: 0,
            release_assembly: false,
            deflate: None,
            compressed: false,
            inflater: None,
            inflated: Vec::new(),
        }
    }

    /// The same decoder on a connection that negotiated permessage-deflate;
    /// `client_no_context_takeover` says each compressed message inflates
    /// on its own.
    pub fn with_deflate(mut self, client_no_context_takeover: bool) -> Self {
        self.deflate = Some(client_no_context_takeover);
        self
    }

    /// The largest compressed frame payload taken: a compressed message
    /// may be a little longer than its text (stored blocks), and is bounded
    /// anyway by the inflated limit.
    fn compressed_frame_limit(&self) -> usize {
        self.max_message.saturating_add(self.max_message / 8).saturating_add(64)
    }

    /// Bytes held in the fragment-assembly buffer (for memory accounting).
    pub fn buffered(&self) -> usize {
        if self.release_assembly {
            0
        } else {
            self.assembly.len() + self.inflated.len()
        }
    }

    /// Decodes at most one frame from the front of `buf`, unmasking its payload in place.
    ///
    /// `Ok(None)`: incomplete, nothing consumed (call again with more bytes;
    /// the bytes already in `buf` may have been unmasked in place, so they
    /// must be passed again as they are now). `Ok(Some((consumed, Some(ev))))`:
    /// a frame completed an event. `Ok(Some((consumed, None)))`: a non-final
    /// data fragment was absorbed. `Err`: the connection must be closed with
    /// `err.close_code()`; the decoder must not be used again.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Option<(usize, Option<Event<'a>>)>, WsError> {
        if self.release_assembly {
            self.release_assembly = false;
            if self.assembly.capacity() > KEEP_ASSEMBLY_CAPACITY {
                self.assembly = Vec::new();
            } else {
                self.assembly.clear();
            }
            if self.inflated.capacity() > KEEP_ASSEMBLY_CAPACITY {
                self.inflated = Vec::new();
            } else {
                self.inflated.clear();
            }
        }
        let Some(h) = self.parse_header(buf)? else {
            return Ok(None);
        };
        // Cannot overflow on 64-bit targets (the length's top bit is refused),
        // but a 32-bit target could be told a length near `usize::MAX`.
        let end = h.len.checked_add(h.payload_len).ok_or(WsError::TooBig)?;
        if h.opcode >= OP_CLOSE {
            // Control frames are at most 125 bytes: wait for all of them.
            let Some(payload) = buf.get_mut(h.len..end) else {
                return Ok(None);
            };
            unmask(payload, h.mask);
            let event = control_event(h.opcode, payload)?;
            return Ok(Some((end, Some(event))));
        }

        let is_text = h.opcode == OP_TEXT || self.message_opcode == Some(OP_TEXT);
        let compressed = if h.opcode == OP_CONT { self.compressed } else { h.rsv1 };
        let arrived = buf.len().saturating_sub(h.len).min(h.payload_len);
        if arrived > self.front_done {
            if let Some(fresh) = buf.get_mut(h.len + self.front_done..h.len + arrived) {
                unmask(fresh, rotate_mask(h.mask, self.front_done));
                if is_text && !compressed {
                    // Fail fast: bad UTF-8 closes the connection before the
                    // rest of the frame arrives.
                    self.utf8.feed(fresh)?;
                }
                self.front_done = arrived;
            }
        }
        if arrived < h.payload_len {
            return Ok(None);
        }
        self.front_done = 0;
        let Some(payload) = buf.get(h.len..end) else {
            return Ok(None);
        };

        if compressed {
            return self.inflate_frame(h, end, is_text, payload);
        }
        if h.opcode == OP_CONT {
            self.assembly.extend_from_slice(payload);
            if !h.fin {
                return Ok(Some((end, None)));
            }
            self.message_opcode = None;
            self.release_assembly = true;
            let event = if is_text {
                self.utf8.finish()?;
                Event::Text(&self.assembly)
            } else {
                Event::Binary(&self.assembly)
            };
            return Ok(Some((end, Some(event))));
        }
        if !h.fin {
            self.assembly.extend_from_slice(payload);
            self.message_opcode = Some(h.opcode);
            return Ok(Some((end, None)));
        }
        let event = if is_text {
            self.utf8.finish()?;
            Event::Text(payload)
        } else {
            Event::Binary(payload)
        };
        Ok(Some((end, Some(event))))
    }

    /// Inflates the complete data frame `payload` of a compressed message,
    /// and returns the message when the frame is its last.
    fn inflate_frame<'a>(
        &'a mut self,
        h: Header,
        end: usize,
        is_text: bool,
        payload: &[u8],
    ) -> Result<Option<(usize, Option<Event<'a>>)>, WsError> {
        let no_context_takeover = self.deflate.unwrap_or(true);
        let limit = self.max_message;
        let inflater = self.inflater.get_or_insert_with(|| Box::new(Inflater::new(no_context_takeover)));
        let start = self.inflated.len();
        inflater.push(payload, limit, &mut self.inflated).map_err(inflate_error)?;
        if h.fin {
            inflater.finish(limit, &mut self.inflated).map_err(inflate_error)?;
        }
        if is_text {
            // Validated as it is inflated: bad UTF-8 fails at the frame
            // that brings it.
            self.utf8.feed(self.inflated.get(start..).unwrap_or_default())?;
        }
        if !h.fin {
            if h.opcode != OP_CONT {
                self.message_opcode = Some(h.opcode);
                self.compressed = true;
            }
            return Ok(Some((end, None)));
        }
        self.message_opcode = None;
        self.compressed = false;
        self.release_assembly = true;
        let event = if is_text {
            self.utf8.finish()?;
            Event::Text(&self.inflated)
        } else {
            Event::Binary(&self.inflated)
        };
        Ok(Some((end, Some(event))))
    }

    /// Parses and checks the header at the front of `buf`. Each rule is
    /// checked as soon as the byte it depends on has arrived, so a bad frame
    /// fails before the rest of its header (or its payload) is waited for.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, WsError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && self.deflate.is_none()) {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        let opcode = b0 & 0x0F;
        if rsv1 && opcode == OP_CONT {
            return Err(WsError::Protocol("RSV1 on a continuation frame"));
        }
        if rsv1 && opcode >= OP_CLOSE {
            return Err(WsError::Protocol("RSV1 on a control frame"));
        }
        match OpCode::from(opcode) {
            OpCode::Data(Data::Continue) => {
                if self.message_opcode.is_none() {
                    return Err(WsError::Protocol("continuation frame without a message"));
                }
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                if self.message_opcode.is_some() {
                    return Err(WsError::Protocol("new data message inside a fragmented message"));
                }
            }
            OpCode::Control(Control::Close | Control::Ping | Control::Pong) => {
                if !fin {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(WsError::Protocol("reserved opcode"));
            }
        }
        let is_control = opcode >= OP_CLOSE;

        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("client frame is not masked"));
        }
        if is_control && usize::from(b1 & 0x7F) > MAX_CONTROL_PAYLOAD {
            return Err(WsError::Protocol("control frame payload over 125 bytes"));
        }
        let (payload_len, mask_at) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes(b)), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                    return Ok(None);
                };
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(WsError::Protocol("64-bit payload length with the top bit set"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        if !is_control {
            // The limit is known from the length field alone: refuse now
            // rather than buffer a payload that will be refused anyway.
            // A compressed frame is bounded on its own (its inflated bytes
            // are what the message limit counts, checked as it inflates).
            let compressed = if opcode == OP_CONT { self.compressed } else { rsv1 };
            let room = if compressed {
                self.compressed_frame_limit()
            } else {
                let already = if opcode == OP_CONT { self.assembly.len() } else { 0 };
                self.max_message.saturating_sub(already)
            };
            if payload_len > room as u64 {
                return Err(WsError::TooBig);
            }
        }
        let payload_len = usize::try_from(payload_len).map_err(|_| WsError::TooBig)?;
        let Some(mask) = buf.get(mask_at..mask_at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            return Ok(None);
        };
        Ok(Some(Header { fin, rsv1, opcode, mask, len: mask_at + 4, payload_len }))
    }
}

/// The close an inflate failure calls for.
fn inflate_error(e: InflateError) -> WsError {
    match e {
        InflateError::TooBig => WsError::TooBig,
        InflateError::Corrupt => WsError::Protocol("invalid compressed data"),
    }
}

/// Builds the event of a complete, unmasked control frame.
fn control_event(opcode: u8, payload: &[u8]) -> Result<Event<'_>, WsError> {
    match opcode {
        OP_PING => Ok(Event::Ping(payload)),
        OP_PONG => Ok(Event::Pong(payload)),
        _ => parse_close(payload),
    }
}

/// Validates a close payload: empty, or a code that may be sent on the wire
/// followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Event<'_>, WsError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        if payload.is_empty() {
            return Ok(Event::Close { code: None, reason: "" });
        }
        return Err(WsError::Protocol("one-byte close payload"));
    };
    let code = u16::from_be_bytes(*code);
    // tungstenite's table is RFC 6455 section 7.4 plus the IANA registry:
    // 1000-1003, 1007-1013 and 3000-4999 may be sent; 1004-1006, 1014,
    // 1015, other 1xxx, 2xxx, and anything below 1000 or from 5000 may not.
    // That is exactly what Autobahn's cases 7.7 (valid) and 7.9 (invalid)
    // expect.
    if !CloseCode::from(code).is_allowed() {
        return Err(WsError::Protocol("close code not allowed on the wire"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
    Ok(Event::Close { code: Some(code), reason })
}

/// The mask to apply to a payload that starts `offset` bytes into the frame.
fn rotate_mask(mut mask: [u8; 4], offset: usize) -> [u8; 4] {
    mask.rotate_left(offset % 4);
    mask
}

/// The longest server frame header: two bytes and a 64-bit length.
pub const MAX_HEADER_LEN: usize = 10;

/// Length of a server frame header for a payload of `payload_len` bytes: 2, 4 or 10.
pub fn header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// The one frame-header encoder, for both directions: the FIN bit and
/// `opcode`, the shortest length encoding of `payload_len`, and, for a
/// client frame, the mask bit and key. Returns the header and its length
/// ([`header_len`], plus 4 with a mask).
fn encode_header(
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> ([u8; MAX_HEADER_LEN + 4], usize) {
    let mut h = [0u8; MAX_HEADER_LEN + 4];
    h[0] = if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | (opcode & 0x0F);
    let mut n = header_len(payload_len);
    match n {
        2 => h[1] = payload_len as u8,
        4 => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        h[1] |= 0x80;
        h[n..n + 4].copy_from_slice(&mask);
        n += 4;
    }
    (h, n)
}

/// Writes a FIN, unmasked server frame header into the end of `out`.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, payload_len: usize) {
    let (h, n) = encode_header(true, false, opcode, payload_len, None);
    out.extend_from_slice(&h[..n]);
}

/// Writes a FIN, unmasked server frame header with RSV1 set (a message
/// compressed with permessage-deflate) into the end of `out`.
pub fn write_header_rsv1(out: &mut Vec<u8>, opcode: u8, payload_len: usize) {
    let (h, n) = encode_header(true, true, opcode, payload_len, None);
    out.extend_from_slice(&h[..n]);
}

/// Appends a masked client frame whose first byte has RSV1 set (a
/// compressed message's first frame, for test peers and the load generator).
pub fn write_masked_frame_rsv1(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    write_masked_frame(out, fin, opcode, payload, mask);
    if let Some(b0) = out.get_mut(start) {
        *b0 |= 0x40;
    }
}

/// Writes the header into buf[..header_len(payload_len)] (for frames whose payload was built after a reserved gap).
///
/// Returns the header's length.
///
/// # Panics
/// If `buf` is shorter than `header_len(payload_len)`.
pub fn put_header(buf: &mut [u8], opcode: u8, payload_len: usize) -> usize {
    let (h, n) = encode_header(true, false, opcode, payload_len, None);
    buf[..n].copy_from_slice(&h[..n]);
    n
}

/// Appends a masked frame as a client sends it (the load generator, test
/// peers, benchmarks): header with the mask bit and key, then `payload`
/// masked with `mask`.
pub fn write_masked_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let (h, n) = encode_header(fin, false, opcode, payload.len(), Some(mask));
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(body) = out.get_mut(start..) {
        unmask(body, mask);
    }
}

/// A complete FIN, unmasked server frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    write_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A close frame; the reason is truncated on a char boundary to fit 123 bytes.
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = reason.as_bytes().get(..cut).unwrap_or_default();
    let mut out = Vec::with_capacity(2 + 2 + reason.len());
    write_header(&mut out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    out
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(sec_websocket_key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(sec_websocket_key)
}

/// Fast in-place unmask (word at a time), pub so benches can use it.
///
/// `mask` applies from `payload[0]`; to continue a payload part way, rotate
/// the mask left by the offset modulo 4.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    // Eight-byte chunks from the payload's start keep the mask's phase, so
    // the remainder starts again at mask[0].
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(bytes) = <&mut [u8; 8]>::try_from(chunk) {
            *bytes = (u64::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame, masked unless `mask` is `None`; `first` overrides
    /// the first byte when the test needs odd bits.
    fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let n = payload.len();
        if n < 126 {
            out.push(mask_bit | n as u8);
        } else if n <= 0xFFFF {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            out.extend_from_slice(&m);
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        out.extend_from_slice(&body);
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, Some(MASK))
    }

    /// An owned copy of an event, to collect across calls.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn own(ev: &Event<'_>) -> Owned {
        match ev {
            Event::Text(p) => Owned::Text(p.to_vec()),
            Event::Binary(p) => Owned::Binary(p.to_vec()),
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong(p) => Owned::Pong(p.to_vec()),
            Event::Close { code, reason } => Owned::Close(*code, reason.to_string()),
        }
    }

    /// Decodes all of `bytes` in one buffer; stops at the first error.
    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> (Vec<Owned>, Option<WsError>) {
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf[pos..]) {
                Ok(Some((n, ev))) => {
                    if let Some(ev) = ev {
                        out.push(own(&ev));
                    }
                    pos += n;
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    /// Feeds `bytes` in chunks of the given sizes (cycled), as a socket
    /// would, compacting the buffer after each consumed frame.
    fn decode_chunked(dec: &mut Decoder, bytes: &[u8], sizes: &[usize]) -> (Vec<Owned>, Option<WsError>) {
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut out = Vec::new();
        let mut sizes = sizes.iter().copied().cycle();
        while fed < bytes.len() {
            let n = sizes.next().unwrap_or(1).max(1).min(bytes.len() - fed);
            buf.extend_from_slice(&bytes[fed..fed + n]);
            fed += n;
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some((n, ev))) => {
                        if let Some(ev) = ev {
                            out.push(own(&ev));
                        }
                        buf.drain(..n);
                    }
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn one(bytes: &[u8]) -> Result<Option<Owned>, WsError> {
        let mut dec = Decoder::new(1 << 20);
        let mut buf = bytes.to_vec();
        match dec.decode(&mut buf)? {
            Some((n, ev)) => {
                assert_eq!(n, bytes.len());
                Ok(ev.as_ref().map(own))
            }
            None => panic!("incomplete"),
        }
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    #[test]
    fn unmask_matches_bytewise_at_every_length_and_phase() {
        for len in 0..40 {
            let orig: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut fast = orig.clone();
            unmask(&mut fast, MASK);
            let slow: Vec<u8> = orig.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
            assert_eq!(fast, slow, "len {len}");
            for split in 0..=len {
                let mut parts = orig.clone();
                let (a, b) = parts.split_at_mut(split);
                unmask(a, MASK);
                unmask(b, rotate_mask(MASK, split));
                assert_eq!(parts, slow, "len {len} split {split}");
            }
        }
    }

    #[test]
    fn single_frames_of_every_kind() {
        assert_eq!(one(&frame(true, OP_TEXT, b"hello")), Ok(Some(Owned::Text(b"hello".to_vec()))));
        assert_eq!(one(&frame(true, OP_BINARY, &[0, 255, 1])), Ok(Some(Owned::Binary(vec![0, 255, 1]))));
        assert_eq!(one(&frame(true, OP_PING, b"p")), Ok(Some(Owned::Ping(b"p".to_vec()))));
        assert_eq!(one(&frame(true, OP_PONG, b"")), Ok(Some(Owned::Pong(vec![]))));
        assert_eq!(one(&frame(true, OP_CLOSE, b"")), Ok(Some(Owned::Close(None, String::new()))));
        assert_eq!(
            one(&frame(true, OP_CLOSE, &close_payload(1000, "bye ✓".as_bytes()))),
            Ok(Some(Owned::Close(Some(1000), "bye ✓".to_string())))
        );
        assert_eq!(one(&frame(true, OP_TEXT, b"")), Ok(Some(Owned::Text(vec![]))));
    }

    #[test]
    fn extended_lengths_decode() {
        for len in [125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = frame(true, OP_BINARY, &payload);
            assert_eq!(bytes.len(), len + header_len(len) + 4);
            assert_eq!(one(&bytes), Ok(Some(Owned::Binary(payload))));
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let bytes = raw_frame(0x80 | OP_TEXT, b"hi", None);
        assert!(matches!(one(&bytes), Err(WsError::Protocol(_))));
    }

    #[test]
    fn reserved_bits_are_a_protocol_error() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let bytes = raw_frame(0x80 | rsv | OP_TEXT, b"hi", Some(MASK));
            assert!(matches!(one(&bytes), Err(WsError::Protocol(_))), "{rsv:#x}");
        }
    }

    #[test]
    fn reserved_opcodes_are_a_protocol_error() {
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let bytes = raw_frame(0x80 | op, b"", Some(MASK));
            assert!(matches!(one(&bytes), Err(WsError::Protocol(_))), "{op:#x}");
            // Known from the first byte alone.
            let mut dec = Decoder::new(100);
            let mut first = [0x80 | op];
            assert!(matches!(dec.decode(&mut first), Err(WsError::Protocol(_))));
        }
    }

    #[test]
    fn control_frame_rules() {
        for op in [OP_PING, OP_PONG, OP_CLOSE] {
            let bytes = frame(false, op, b"");
            assert!(matches!(one(&bytes), Err(WsError::Protocol(_))), "non-FIN {op}");
            let bytes = frame(true, op, &[b'a'; 126]);
            assert!(matches!(one(&bytes), Err(WsError::Protocol(_))), "126 {op}");
        }
        assert_eq!(one(&frame(true, OP_PING, &[7; 125])), Ok(Some(Owned::Ping(vec![7; 125]))));
        // Control frames are not messages: the message limit does not apply.
        let mut dec = Decoder::new(4);
        let (evs, err) = decode_all(&mut dec, &frame(true, OP_PING, &[1; 100]));
        assert_eq!((evs, err), (vec![Owned::Ping(vec![1; 100])], None));
    }

    #[test]
    fn control_length_over_125_fails_from_the_header_alone() {
        let mut dec = Decoder::new(1 << 20);
        // A ping announcing 126 (16-bit length): the second byte is enough.
        let mut head = [0x80 | OP_PING, 0x80 | 126];
        assert!(matches!(dec.decode(&mut head), Err(WsError::Protocol(_))));
    }

    #[test]
    fn continuation_without_message_is_a_protocol_error() {
        assert!(matches!(one(&frame(true, OP_CONT, b"x")), Err(WsError::Protocol(_))));
        assert!(matches!(one(&frame(false, OP_CONT, b"x")), Err(WsError::Protocol(_))));
    }

    #[test]
    fn new_message_inside_fragmented_one_is_a_protocol_error() {
        for op in [OP_TEXT, OP_BINARY] {
            let mut bytes = frame(false, OP_TEXT, b"a");
            bytes.extend(frame(true, op, b"b"));
            let mut dec = Decoder::new(100);
            let (evs, err) = decode_all(&mut dec, &bytes);
            assert!(evs.is_empty());
            assert!(matches!(err, Some(WsError::Protocol(_))));
        }
    }

    #[test]
    fn top_bit_of_64_bit_length_is_a_protocol_error() {
        let mut bytes = vec![0x80 | OP_BINARY, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let mut dec = Decoder::new(usize::MAX);
        assert!(matches!(dec.decode(&mut bytes), Err(WsError::Protocol(_))));
    }

    #[test]
    fn too_big_frame_fails_from_the_header_alone() {
        // 16-bit length, no mask or payload yet.
        let mut dec = Decoder::new(1000);
        let mut head = vec![0x80 | OP_BINARY, 0x80 | 126];
        head.extend_from_slice(&1001u16.to_be_bytes());
        assert_eq!(dec.decode(&mut head), Err(WsError::TooBig));
        // 64-bit length.
        let mut dec = Decoder::new(1000);
        let mut head = vec![0x80 | OP_TEXT, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(dec.decode(&mut head), Err(WsError::TooBig));
        // 7-bit length over a tiny limit.
        let mut dec = Decoder::new(3);
        let mut head = [0x80 | OP_TEXT, 0x80 | 4];
        assert_eq!(dec.decode(&mut head), Err(WsError::TooBig));
        // Exactly the limit is fine.
        let mut dec = Decoder::new(4);
        let (evs, err) = decode_all(&mut dec, &frame(true, OP_TEXT, b"abcd"));
        assert_eq!((evs, err), (vec![Owned::Text(b"abcd".to_vec())], None));
    }

    #[test]
    fn too_big_assembled_message_fails_at_the_fragment_header() {
        let mut dec = Decoder::new(10);
        let mut first = frame(false, OP_BINARY, b"123456");
        let first_len = first.len();
        assert_eq!(dec.decode(&mut first), Ok(Some((first_len, None))));
        assert_eq!(dec.buffered(), 6);
        // The continuation's header says 5 more: 11 > 10, without its payload.
        let mut head = [OP_CONT, 0x80 | 5];
        assert_eq!(dec.decode(&mut head), Err(WsError::TooBig));

        let mut dec = Decoder::new(10);
        let mut bytes = frame(false, OP_TEXT, b"12345");
        bytes.extend(frame(true, OP_CONT, b"67890"));
        let (evs, err) = decode_all(&mut dec, &bytes);
        assert_eq!((evs, err), (vec![Owned::Text(b"1234567890".to_vec())], None));
    }

    #[test]
    fn fragmented_message_with_interleaved_controls() {
        let mut bytes = frame(false, OP_TEXT, "héllo ".as_bytes());
        bytes.extend(frame(true, OP_PING, b"p1"));
        bytes.extend(frame(false, OP_CONT, b"wor"));
        bytes.extend(frame(true, OP_PONG, b"p2"));
        bytes.extend(frame(false, OP_CONT, b""));
        bytes.extend(frame(true, OP_CONT, b"ld"));
        bytes.extend(frame(true, OP_BINARY, b"next"));
        let expect = vec![
            Owned::Ping(b"p1".to_vec()),
            Owned::Pong(b"p2".to_vec()),
            Owned::Text("héllo world".as_bytes().to_vec()),
            Owned::Binary(b"next".to_vec()),
        ];
        let mut dec = Decoder::new(100);
        assert_eq!(decode_all(&mut dec, &bytes), (expect.clone(), None));
        assert_eq!(dec.buffered(), 0);
        for step in 1..8 {
            let mut dec = Decoder::new(100);
            assert_eq!(decode_chunked(&mut dec, &bytes, &[step]), (expect.clone(), None), "step {step}");
        }
    }

    #[test]
    fn fragment_results_and_buffered() {
        let mut dec = Decoder::new(100);
        let mut f1 = frame(false, OP_BINARY, b"ab");
        let f1_len = f1.len();
        assert_eq!(dec.decode(&mut f1), Ok(Some((f1_len, None))));
        assert_eq!(dec.buffered(), 2);
        let mut ping = frame(true, OP_PING, b"x");
        let ping_len = ping.len();
        assert_eq!(dec.decode(&mut ping), Ok(Some((ping_len, Some(Event::Ping(b"x"))))));
        assert_eq!(dec.buffered(), 2);
        let mut f2 = frame(true, OP_CONT, b"cd");
        let f2_len = f2.len();
        assert_eq!(dec.decode(&mut f2), Ok(Some((f2_len, Some(Event::Binary(b"abcd"))))));
        assert_eq!(dec.buffered(), 0);
        // The next message starts clean.
        let mut f3 = frame(true, OP_TEXT, b"z");
        let f3_len = f3.len();
        assert_eq!(dec.decode(&mut f3), Ok(Some((f3_len, Some(Event::Text(b"z"))))));
    }

    #[test]
    fn big_assembly_memory_is_released() {
        let mut dec = Decoder::new(1 << 20);
        let big = vec![1u8; KEEP_ASSEMBLY_CAPACITY + 1];
        let mut bytes = frame(false, OP_BINARY, &big);
        bytes.extend(frame(true, OP_CONT, b"!"));
        bytes.extend(frame(true, OP_PING, b""));
        let (evs, err) = decode_all(&mut dec, &bytes);
        assert_eq!((evs.len(), err), (2, None));
        assert_eq!(dec.assembly.capacity(), 0);
    }

    #[test]
    fn utf8_split_across_fragments_valid() {
        // "€" is E2 82 AC; "𝄞" is F0 9D 84 9E. Split inside each.
        let text = "a€b𝄞c".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let mut bytes = frame(false, OP_TEXT, &text[..i]);
                bytes.extend(frame(false, OP_CONT, &text[i..j]));
                bytes.extend(frame(true, OP_CONT, &text[j..]));
                let mut dec = Decoder::new(100);
                assert_eq!(decode_all(&mut dec, &bytes), (vec![Owned::Text(text.to_vec())], None), "{i} {j}");
            }
        }
    }

    #[test]
    fn utf8_invalid_fails_at_the_fragment_that_breaks_it() {
        // Autobahn 6.4.1: valid, then 0x110000 encoded (F4 90 80 80), then valid.
        let p1 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
        let p2 = b"\xf4\x90\x80\x80";
        let mut dec = Decoder::new(100);
        let mut f1 = frame(false, OP_TEXT, p1);
        let f1_len = f1.len();
        assert_eq!(dec.decode(&mut f1), Ok(Some((f1_len, None))));
        let mut f2 = frame(false, OP_CONT, p2);
        assert_eq!(dec.decode(&mut f2), Err(WsError::InvalidUtf8));

        // An invalid byte right after an incomplete sequence that ended the
        // previous fragment fails at the continuation.
        let mut dec = Decoder::new(100);
        let mut f1 = frame(false, OP_TEXT, b"ok\xe2\x82");
        let f1_len = f1.len();
        assert_eq!(dec.decode(&mut f1), Ok(Some((f1_len, None))));
        let mut f2 = frame(false, OP_CONT, b"A");
        assert_eq!(dec.decode(&mut f2), Err(WsError::InvalidUtf8));

        // A sequence still incomplete at the final fragment fails there.
        let mut dec = Decoder::new(100);
        let mut bytes = frame(false, OP_TEXT, b"ok");
        bytes.extend(frame(true, OP_CONT, b"\xf0\x9d\x84"));
        assert_eq!(decode_all(&mut dec, &bytes).1, Some(WsError::InvalidUtf8));

        // A lone continuation byte fails in the first fragment.
        let mut dec = Decoder::new(100);
        let mut f1 = frame(false, OP_TEXT, b"\x80");
        assert_eq!(dec.decode(&mut f1), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn utf8_invalid_fails_before_the_frame_is_complete() {
        // Autobahn 6.4.3/6.4.4: one frame sent in chops; the chop carrying
        // the invalid byte must fail without the rest of the frame.
        let payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited";
        let bytes = frame(true, OP_TEXT, payload);
        let hdr = bytes.len() - payload.len();
        let mut buf = bytes.clone();
        let mut dec = Decoder::new(100);
        assert_eq!(dec.decode(&mut buf[..hdr + 11]), Ok(None));
        assert_eq!(dec.decode(&mut buf[..hdr + 13]), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_in_single_frames() {
        for bad in [&b"\xff"[..], b"\xc0\xaf", b"\xed\xa0\x80", b"abc\xe2\x82", b"\xf4\x90\x80\x80"] {
            assert_eq!(one(&frame(true, OP_TEXT, bad)), Err(WsError::InvalidUtf8));
        }
        // Binary is not checked.
        assert_eq!(one(&frame(true, OP_BINARY, b"\xff")), Ok(Some(Owned::Binary(vec![0xff]))));
    }

    #[test]
    fn close_payload_rules() {
        assert!(matches!(one(&frame(true, OP_CLOSE, b"\x03")), Err(WsError::Protocol(_))));
        // Autobahn 7.7.x.
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999] {
            assert_eq!(
                one(&frame(true, OP_CLOSE, &close_payload(code, b"ok"))),
                Ok(Some(Owned::Close(Some(code), "ok".to_string()))),
                "{code}"
            );
        }
        // Autobahn 7.9.x, and more.
        for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(
                matches!(one(&frame(true, OP_CLOSE, &close_payload(code, b""))), Err(WsError::Protocol(_))),
                "{code}"
            );
        }
        assert_eq!(one(&frame(true, OP_CLOSE, &close_payload(1000, b"\xce\xba\xff"))), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn control_frame_does_not_disturb_utf8_state() {
        // A text message cut inside "€", a close with a valid reason between.
        let mut bytes = frame(false, OP_TEXT, b"\xe2");
        bytes.extend(frame(true, OP_PING, b"\xe2"));
        bytes.extend(frame(true, OP_CONT, b"\x82\xac"));
        let mut dec = Decoder::new(100);
        assert_eq!(
            decode_all(&mut dec, &bytes),
            (vec![Owned::Ping(vec![0xe2]), Owned::Text("€".as_bytes().to_vec())], None)
        );
    }

    #[test]
    fn partial_input_at_every_split_point() {
        let frames = [
            frame(true, OP_TEXT, "héllo wörld, this is text".as_bytes()),
            frame(true, OP_BINARY, &[9u8; 300]),
            frame(false, OP_TEXT, "ab€".as_bytes()),
            frame(true, OP_PING, b"ping"),
            frame(true, OP_CLOSE, &close_payload(1001, b"away")),
            frame(true, OP_BINARY, &vec![5u8; 70_000]),
            frame(true, OP_TEXT, b"\xff bad"),
        ];
        for full in &frames {
            let mut reference_buf = full.clone();
            let mut reference_dec = Decoder::new(1 << 20);
            let expected = reference_dec.decode(&mut reference_buf).map(|r| r.map(|(n, ev)| (n, ev.as_ref().map(own))));
            let splits: Vec<usize> = if full.len() > 400 {
                (0..20).chain(full.len() - 20..full.len()).collect()
            } else {
                (0..full.len()).collect()
            };
            for split in splits {
                let mut buf = full.clone();
                let mut dec = Decoder::new(1 << 20);
                let partial = dec.decode(&mut buf[..split]);
                if let Err(e) = partial {
                    // Only bad UTF-8 may fail early, and then the whole frame
                    // fails the same way.
                    assert_eq!(Err(e), expected, "split {split}");
                    continue;
                }
                assert_eq!(partial, Ok(None), "split {split}");
                let got = dec.decode(&mut buf).map(|r| r.map(|(n, ev)| (n, ev.as_ref().map(own))));
                assert_eq!(got, expected, "split {split}");
            }
        }
    }

    #[test]
    fn growing_input_one_byte_at_a_time() {
        let payload = "ünïcödé across many calls".repeat(10);
        let bytes = frame(true, OP_TEXT, payload.as_bytes());
        let mut buf = bytes.clone();
        let mut dec = Decoder::new(1 << 20);
        for end in 0..bytes.len() {
            assert_eq!(dec.decode(&mut buf[..end]), Ok(None), "end {end}");
        }
        assert_eq!(dec.decode(&mut buf), Ok(Some((bytes.len(), Some(Event::Text(payload.as_bytes()))))));
    }

    #[test]
    fn header_helpers() {
        for (len, hl) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            assert_eq!(header_len(len), hl);
            let mut out = vec![0xAA];
            write_header(&mut out, OP_TEXT, len);
            assert_eq!(out.len(), 1 + hl);
            assert_eq!(out[1], 0x80 | OP_TEXT);
            let mut gap = vec![0u8; hl + 3];
            assert_eq!(put_header(&mut gap, OP_TEXT, len), hl);
            assert_eq!(&gap[..hl], &out[1..]);
            assert_eq!(&gap[hl..], &[0, 0, 0]);
        }
        assert_eq!(encode_frame(OP_PONG, b"ab"), vec![0x8A, 2, b'a', b'b']);
        let mut big = vec![0x82, 126];
        big.extend_from_slice(&300u16.to_be_bytes());
        assert_eq!(&encode_frame(OP_BINARY, &[0; 300])[..4], &big[..]);
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(&encode_frame(OP_BINARY, &[0; 70_000])[..10], &huge[..]);
    }

    #[test]
    fn encode_close_truncates_on_a_char_boundary() {
        assert_eq!(encode_close(1000, ""), vec![0x88, 2, 0x03, 0xE8]);
        let f = encode_close(1001, "bye");
        assert_eq!(f, vec![0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        // 61 two-byte chars = 122 bytes, then a three-byte char that would
        // end at 125: it must be dropped whole.
        let reason = format!("{}€tail", "é".repeat(61));
        let f = encode_close(1008, &reason);
        assert_eq!(usize::from(f[1]), f.len() - 2);
        assert!(f.len() - 2 <= 125);
        let text = std::str::from_utf8(&f[4..]).expect("valid reason");
        assert_eq!(text, "é".repeat(61));
        // Exactly 123 ASCII bytes fit.
        let f = encode_close(1000, &"x".repeat(200));
        assert_eq!(f.len(), 2 + 2 + 123);
    }

    #[test]
    fn server_frames_decode_when_masked_by_a_client() {
        // Re-mask our own server encoding to check header compatibility.
        for len in [0, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 200) as u8).collect();
            let server = encode_frame(OP_BINARY, &payload);
            let hl = header_len(len);
            let mut client = server[..hl].to_vec();
            client[1] |= 0x80;
            client.extend_from_slice(&MASK);
            let mut body = server[hl..].to_vec();
            unmask(&mut body, MASK);
            client.extend(body);
            assert_eq!(one(&client), Ok(Some(Owned::Binary(payload))));
        }
    }

    #[test]
    fn masked_client_frames_match_the_reference_and_decode() {
        for len in [0, 1, 5, 125, 126, 127, 65535, 65536, 70_001] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 200) as u8).collect();
            for fin in [true, false] {
                let mut out = vec![0xAA];
                write_masked_frame(&mut out, fin, OP_BINARY, &payload, MASK);
                assert_eq!(out[0], 0xAA);
                assert_eq!(out[1..], frame(fin, OP_BINARY, &payload)[..], "len {len} fin {fin}");
            }
            let mut f = Vec::new();
            write_masked_frame(&mut f, true, OP_BINARY, &payload, MASK);
            assert_eq!(one(&f), Ok(Some(Owned::Binary(payload))));
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// A message compressed as a permessage-deflate peer sends it.
    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::proto::deflate::Deflater::new().compress(payload, &mut out);
        out
    }

    #[test]
    fn rsv_rules_with_and_without_deflate() {
        let text = "a text that compresses, a text that compresses".as_bytes();
        let z = deflated(text);
        // RSV1 without the extension: 1002, as before.
        let mut plain = Decoder::new(100);
        let mut f = raw_frame(0xC0 | OP_TEXT, &z, Some(MASK));
        assert!(matches!(plain.decode(&mut f), Err(WsError::Protocol(_))));
        let dec = || Decoder::new(100).with_deflate(true);
        // RSV1 on the first frame: compressed.
        assert_eq!(one_with(dec(), &raw_frame(0xC0 | OP_TEXT, &z, Some(MASK))), Ok(Some(Owned::Text(text.to_vec()))));
        // RSV2, RSV3: never.
        for first in [0xA0 | OP_TEXT, 0x90 | OP_BINARY, 0xE0 | OP_TEXT] {
            let mut f = raw_frame(first, &z, Some(MASK));
            assert!(matches!(dec().decode(&mut f), Err(WsError::Protocol(_))), "{first:#x}");
        }
        // RSV1 on a control frame or a continuation: 1002.
        for first in [0xC0 | OP_PING, 0xC0 | OP_PONG, 0xC0 | OP_CLOSE] {
            let mut f = raw_frame(first, b"", Some(MASK));
            assert_eq!(dec().decode(&mut f), Err(WsError::Protocol("RSV1 on a control frame")), "{first:#x}");
        }
        let mut bytes = raw_frame(0x40 | OP_TEXT, &z[..3], Some(MASK));
        bytes.extend(raw_frame(0xC0 | OP_CONT, &z[3..], Some(MASK)));
        assert_eq!(decode_all(&mut dec(), &bytes).1, Some(WsError::Protocol("RSV1 on a continuation frame")));
        // Uncompressed messages still pass on a deflate connection.
        assert_eq!(one_with(dec(), &frame(true, OP_TEXT, b"plain")), Ok(Some(Owned::Text(b"plain".to_vec()))));
    }

    fn one_with(mut dec: Decoder, bytes: &[u8]) -> Result<Option<Owned>, WsError> {
        let mut buf = bytes.to_vec();
        dec.decode(&mut buf).map(|r| r.and_then(|(_, ev)| ev.as_ref().map(own)))
    }

    #[test]
    fn compressed_messages_fragmented_and_with_control_frames_between() {
        let text = "ünïcödé JSON {\"a\":1} ".repeat(40);
        let z = deflated(text.as_bytes());
        for cut in [0, 1, z.len() / 2, z.len()] {
            let mut bytes = raw_frame(0x40 | OP_TEXT, &z[..cut], Some(MASK));
            bytes.extend(frame(true, OP_PING, b"p"));
            bytes.extend(frame(true, OP_CONT, &z[cut..]));
            bytes.extend(frame(true, OP_BINARY, b"after"));
            let mut dec = Decoder::new(1 << 16).with_deflate(false);
            let want = vec![
                Owned::Ping(b"p".to_vec()),
                Owned::Text(text.as_bytes().to_vec()),
                Owned::Binary(b"after".to_vec()),
            ];
            assert_eq!(decode_all(&mut dec, &bytes), (want.clone(), None), "cut {cut}");
            let mut dec = Decoder::new(1 << 16).with_deflate(false);
            assert_eq!(decode_chunked(&mut dec, &bytes, &[7, 3, 50]), (want, None), "cut {cut}");
        }
    }

    #[test]
    fn compressed_bomb_is_1009_and_bad_data_1002_bad_utf8_1007() {
        let limit = 64 * 1024;
        let bomb = deflated(&vec![b'a'; 16 << 20]);
        assert!(bomb.len() < limit, "the bomb fits in a frame: {}", bomb.len());
        let mut dec = Decoder::new(limit).with_deflate(true);
        let mut f = raw_frame(0xC0 | OP_TEXT, &bomb, Some(MASK));
        assert_eq!(dec.decode(&mut f), Err(WsError::TooBig));
        assert_eq!(WsError::TooBig.close_code(), 1009);
        assert!(dec.inflated.capacity() <= limit + 1, "{}", dec.inflated.capacity());
        // Exactly at the limit passes; spread over fragments, one over fails.
        let at = deflated(&vec![b'a'; limit]);
        assert_eq!(
            one_with(Decoder::new(limit).with_deflate(true), &raw_frame(0xC0 | OP_BINARY, &at, Some(MASK)))
                .map(|e| e.is_some()),
            Ok(true)
        );
        let over = deflated(&vec![b'a'; limit + 1]);
        let mut bytes = raw_frame(0x40 | OP_BINARY, &over[..over.len() / 2], Some(MASK));
        bytes.extend(frame(true, OP_CONT, &over[over.len() / 2..]));
        assert_eq!(decode_all(&mut Decoder::new(limit).with_deflate(true), &bytes).1, Some(WsError::TooBig));
        // Not DEFLATE.
        let mut f = raw_frame(0xC0 | OP_BINARY, &[0xff, 0xff, 0xff, 0xff], Some(MASK));
        assert_eq!(
            Decoder::new(limit).with_deflate(true).decode(&mut f),
            Err(WsError::Protocol("invalid compressed data"))
        );
        // Bad UTF-8 is found after inflating.
        let mut f = raw_frame(0xC0 | OP_TEXT, &deflated(b"ok \xff not utf-8"), Some(MASK));
        assert_eq!(Decoder::new(limit).with_deflate(true).decode(&mut f), Err(WsError::InvalidUtf8));
        // Binary is not checked.
        let f = raw_frame(0xC0 | OP_BINARY, &deflated(b"\xff"), Some(MASK));
        assert_eq!(one_with(Decoder::new(limit).with_deflate(true), &f), Ok(Some(Owned::Binary(vec![0xff]))));
        // A compressed frame far longer than any message is refused from its header.
        let mut hdr = vec![0xC0 | OP_BINARY, 0x80 | 127];
        hdr.extend_from_slice(&(u64::from(u32::MAX)).to_be_bytes());
        hdr.extend_from_slice(&MASK);
        assert_eq!(Decoder::new(limit).with_deflate(true).decode(&mut hdr), Err(WsError::TooBig));
    }

    #[test]
    fn context_takeover_across_messages() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::default(), false);
        let body = "{\"op\":\"send\",\"room\":\"lobby\",\"body\":\"the same words again\"}".repeat(8);
        let mut bytes = Vec::new();
        for _ in 0..3 {
            let mut z = Vec::with_capacity(4096);
            c.compress_vec(body.as_bytes(), &mut z, FlushCompress::Sync).unwrap();
            z.truncate(z.len() - 4);
            bytes.extend(raw_frame(0xC0 | OP_TEXT, &z, Some(MASK)));
        }
        let mut dec = Decoder::new(1 << 16).with_deflate(false);
        let want = vec![Owned::Text(body.as_bytes().to_vec()); 3];
        assert_eq!(decode_all(&mut dec, &bytes), (want.clone(), None));
        // A decoder told there is no context takeover cannot follow it
        // (what it makes of the later messages is not the text).
        let mut dec = Decoder::new(1 << 16).with_deflate(true);
        assert_ne!(decode_all(&mut dec, &bytes), (want, None));
    }

    #[test]
    fn server_frames_with_rsv1() {
        let mut out = Vec::new();
        write_header_rsv1(&mut out, OP_TEXT, 300);
        assert_eq!(&out[..2], &[0xC1, 126]);
        let mut c = Vec::new();
        write_masked_frame_rsv1(&mut c, true, OP_BINARY, b"xy", MASK);
        assert_eq!(c[0], 0xC2);
    }

    #[test]
    fn close_codes_of_errors() {
        assert_eq!(WsError::Protocol("x").close_code(), 1002);
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WsError::TooBig.close_code(), 1009);
    }

    /// One message of a generated conversation.
    #[derive(Debug, Clone)]
    enum Msg {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        prop_oneof![
            any::<String>().prop_map(Msg::Text),
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(Msg::Binary),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(
            msgs in proptest::collection::vec(msg_strategy(), 0..8),
            cuts in proptest::collection::vec(0usize..700, 0..6),
            pings_between in any::<bool>(),
            mask in any::<[u8; 4]>(),
            chunks in proptest::collection::vec(1usize..200, 1..6),
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for msg in &msgs {
                let (op, payload) = match msg {
                    Msg::Ping(p) => {
                        bytes.extend(raw_frame(0x80 | OP_PING, p, Some(mask)));
                        expected.push(Owned::Ping(p.clone()));
                        continue;
                    }
                    Msg::Text(s) => (OP_TEXT, s.as_bytes().to_vec()),
                    Msg::Binary(b) => (OP_BINARY, b.clone()),
                };
                // Fragment at arbitrary byte offsets, even inside characters.
                let mut points: Vec<usize> =
                    cuts.iter().map(|c| c % (payload.len() + 1)).collect();
                points.push(0);
                points.push(payload.len());
                points.sort_unstable();
                points.dedup();
                let pieces: Vec<&[u8]> = if points.len() <= 2 {
                    vec![&payload[..]]
                } else {
                    points.windows(2).map(|w| &payload[w[0]..w[1]]).collect()
                };
                let mut controls = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
                    let opcode = if i == 0 { op } else { OP_CONT };
                    bytes.extend(raw_frame(fin | opcode, piece, Some(mask)));
                    if pings_between && fin == 0 {
                        let p = vec![i as u8; i % 3];
                        bytes.extend(raw_frame(0x80 | OP_PONG, &p, Some(mask)));
                        controls.push(Owned::Pong(p));
                    }
                }
                expected.extend(controls);
                expected.push(match msg {
                    Msg::Text(s) => Owned::Text(s.as_bytes().to_vec()),
                    _ => Owned::Binary(payload.clone()),
                });
            }
            bytes.extend(raw_frame(0x80 | OP_CLOSE, &close_payload(1000, b"done"), Some(mask)));
            expected.push(Owned::Close(Some(1000), "done".to_string()));

            let mut dec = Decoder::new(1 << 20);
            prop_assert_eq!(decode_all(&mut dec, &bytes), (expected.clone(), None));
            let mut dec = Decoder::new(1 << 20);
            prop_assert_eq!(decode_chunked(&mut dec, &bytes, &chunks), (expected, None));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            chunks in proptest::collection::vec(1usize..50, 1..4),
        ) {
            let mut dec = Decoder::new(256);
            let _ = decode_chunked(&mut dec, &bytes, &chunks);
            let mut dec = Decoder::new(256).with_deflate(false);
            let _ = decode_chunked(&mut dec, &bytes, &chunks);
        }
    }
}
