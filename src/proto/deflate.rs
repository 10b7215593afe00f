//! RFC 7692 permessage-deflate: the negotiation of the extension in the
//! upgrade, the outbound compressor and the inbound inflater.
//!
//! This module owns the `Sec-WebSocket-Extensions` offer parser, the
//! server's answer to it, and raw DEFLATE in both directions with the
//! `00 00 ff ff` tail of RFC 7692 section 7.2 taken off (outbound) and put
//! back (inbound). It does not own frames (RSV1 and its rules live in
//! `proto::ws`) nor which connection gets which frame (`reactor`).
//!
//! The server always answers `server_no_context_takeover`: every outbound
//! message is compressed on its own, from an empty window, so one compressed
//! copy of a message is valid on every connection that negotiated the
//! extension, whatever that connection received before. That is what lets
//! fan-out compress a message once and share the bytes.
//!
//! `server_max_window_bits=N` (N < 15) is honoured without a smaller
//! compressor window (the pure-Rust backend always uses 32 KiB): a message
//! of at most 2^N bytes cannot refer back further than 2^N bytes, so such a
//! message goes compressed and a longer one goes uncompressed (RSV1 clear)
//! to that connection. See [`Agreed::max_deflated_len`].
//!
//! Inbound, the client may keep its window from message to message (context
//! takeover) unless it offered `client_no_context_takeover`, so the
//! inflater belongs to the connection. It is made on the first compressed
//! message, costs about 43 KiB (miniz_oxide's 32 KiB window and its tables),
//! and inflates into a buffer that never grows past the message limit plus
//! one byte: a decompression bomb is found out at that byte (1009), never
//! allocated whole.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's registered name.
pub const EXTENSION: &str = "permessage-deflate";

/// What RFC 7692 section 7.2.1 takes off the end of every compressed message
/// (an empty stored block from a sync flush) and 7.2.2 puts back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The window the compressor and the inflater use (2^15 bytes).
pub const MAX_WINDOW_BITS: u8 = 15;

/// The inflate buffer grows by at most this much beyond what it holds, so a
/// bomb is refused after a few small steps rather than one large reservation.
const INFLATE_STEP: usize = 16 * 1024;

/// Compressor scratch kept between messages up to this size (larger ones
/// give their memory back, like the decoder's assembly buffer).
const KEEP_SCRATCH_CAPACITY: usize = 64 * 1024;

/// The parameters agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The client offered `client_no_context_takeover` (and the answer
    /// repeats it): each inbound message inflates on its own.
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits` as offered (and answered), when it was.
    pub server_max_window_bits: Option<u8>,
}

impl Agreed {
    /// The longest message that may go compressed on this connection: any,
    /// unless the client limited the server's window, then 2^bits (a
    /// message no longer than the window never refers past it).
    pub fn max_deflated_len(&self) -> usize {
        match self.server_max_window_bits {
            Some(bits) if bits < MAX_WINDOW_BITS => 1usize << bits,
            _ => usize::MAX,
        }
    }

    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn response(&self) -> String {
        let mut s = format!("{EXTENSION}; server_no_context_takeover");
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={bits}"));
        }
        // `client_max_window_bits` is never answered: the inflater has a
        // 32 KiB window anyway, so limiting the client's would save nothing,
        // and RFC 7692 7.1.2.2 lets the server leave it out.
        s
    }
}

/// Picks the first acceptable `permessage-deflate` offer from the
/// `Sec-WebSocket-Extensions` header values, in the order sent.
///
/// An offer with an unknown parameter, a repeated one, a value where none
/// belongs, or a window size that is not 8 to 15 (decimal, no leading
/// zero) is declined (RFC 7692 section 5) and the next one is considered.
/// Other extensions are ignored; so is a list element that does not parse.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    values.into_iter().flat_map(|v| split_outside_quotes(v, b',')).find_map(accept_offer)
}

/// One extension element (`name; p; p=v`) judged as an offer.
fn accept_offer(element: &[u8]) -> Option<Agreed> {
    let mut parts = split_outside_quotes(element, b';').into_iter();
    let name = trim(parts.next()?);
    if !name.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
        return None;
    }
    let mut agreed = Agreed { client_no_context_takeover: false, server_max_window_bits: None };
    let (mut seen_snct, mut seen_cnct, mut seen_smwb, mut seen_cmwb) = (false, false, false, false);
    for param in parts {
        let (pname, value) = parse_param(param)?;
        let seen = match pname {
            b"server_no_context_takeover" => &mut seen_snct,
            b"client_no_context_takeover" => &mut seen_cnct,
            b"server_max_window_bits" => &mut seen_smwb,
            b"client_max_window_bits" => &mut seen_cmwb,
            _ => return None,
        };
        if std::mem::replace(seen, true) {
            return None;
        }
        match pname {
            b"server_no_context_takeover" | b"client_no_context_takeover" => {
                if value.is_some() {
                    return None;
                }
                if pname == b"client_no_context_takeover" {
                    agreed.client_no_context_takeover = true;
                }
            }
            b"server_max_window_bits" => agreed.server_max_window_bits = Some(window_bits(value?)?),
            // Without a value it only says the client could take a limit;
            // with one, the value must still be valid.
            _ => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
            }
        }
    }
    Some(agreed)
}

/// `name` or `name=value` (value a token or a quoted string, unquoted).
fn parse_param(param: &[u8]) -> Option<(&[u8], Option<Vec<u8>>)> {
    let param = trim(param);
    let (name, value) = match param.iter().position(|&b| b == b'=') {
        Some(i) => (trim(param.get(..i)?), Some(trim(param.get(i + 1..)?))),
        None => (param, None),
    };
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let value = match value {
        None => None,
        Some(v) => Some(unquote(v)?),
    };
    Some((name, value))
}

/// A token, or a quoted string whose content (escapes undone) is a token,
/// as RFC 7692 section 5 requires of every parameter value.
fn unquote(v: &[u8]) -> Option<Vec<u8>> {
    let out = match v.strip_prefix(b"\"") {
        None => v.to_vec(),
        Some(rest) => {
            let inner = rest.strip_suffix(b"\"")?;
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => out.push(*bytes.next()?),
                    b'"' => return None,
                    _ => out.push(b),
                }
            }
            out
        }
    };
    (!out.is_empty() && out.iter().all(|&b| is_tchar(b))).then_some(out)
}

/// A window size: 8 to 15 in decimal without a leading zero.
fn window_bits(v: Vec<u8>) -> Option<u8> {
    match v.as_slice() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// Splits `s` at `sep` bytes that are not inside a quoted string.
fn split_outside_quotes(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            out.push(s.get(start..i).unwrap_or_default());
            start = i + 1;
        }
    }
    out.push(s.get(start..).unwrap_or_default());
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The outbound compressor: one per reactor, shared by every connection on
/// it (each message starts from an empty window, see the module docs).
pub struct Deflater {
    c: Compress,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        // Level 6 (zlib's default): the message is compressed once for all
        // of its receivers, so the better ratio is worth the cycles.
        Self { c: Compress::new(Compression::new(6), false), scratch: Vec::new() }
    }

    /// Appends `payload` compressed on its own (empty window, sync flush,
    /// the `00 00 ff ff` tail taken off) to `out`. False if the compressor
    /// failed (then `out` holds a cut-short stream that must not be sent).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        self.c.reset();
        let start_in = self.c.total_in();
        let start_len = out.len();
        // Ordering hazard: a call that fills `out` may leave compressed
        // bytes pending inside the compressor, and the next call then only
        // hands those over: it neither codes the input still in its
        // lookahead nor writes the sync flush. So the message is complete
        // only after a call that leaves room over and that did not follow a
        // call that filled the buffer (an extra call at worst adds one empty
        // stored block, which is legal).
        let mut after_full = false;
        loop {
            let consumed = usize::try_from(self.c.total_in() - start_in).unwrap_or(usize::MAX);
            let rest = payload.get(consumed..).unwrap_or_default();
            out.reserve(rest.len() / 2 + 64);
            // Errors only come from misuse of the stream (none here), but
            // a stream cut short by one must not go out as a message.
            let before = (self.c.total_in(), out.len());
            if self.c.compress_vec(rest, out, FlushCompress::Sync).is_err() {
                return false;
            }
            let consumed = usize::try_from(self.c.total_in() - start_in).unwrap_or(usize::MAX);
            let full = out.len() == out.capacity();
            if consumed >= payload.len() && !full && !after_full {
                break;
            }
            if (self.c.total_in(), out.len()) == before && !full {
                break;
            }
            after_full = full;
        }
        if out.len() >= start_len + TAIL.len() && out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        true
    }

    /// The compressed twin of a complete, unmasked server data frame: the
    /// same opcode with RSV1 set and the payload compressed. `None` if
    /// `frame` is not one FIN text or binary frame, or if compression would
    /// not make it shorter (the plain frame is then as good, and legal).
    pub fn deflate_frame(&mut self, frame: &[u8]) -> Option<Bytes> {
        let (opcode, payload) = split_server_frame(frame)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let out = if self.compress(payload, &mut scratch) && scratch.len() < payload.len() {
            let mut f = Vec::with_capacity(super::ws::header_len(scratch.len()) + scratch.len());
            super::ws::write_header_rsv1(&mut f, opcode, scratch.len());
            f.extend_from_slice(&scratch);
            Some(Bytes::from(f))
        } else {
            None
        };
        if scratch.capacity() <= KEEP_SCRATCH_CAPACITY {
            self.scratch = scratch;
        }
        out
    }
}

/// The opcode and payload of one complete FIN, unmasked server data frame
/// without RSV bits.
pub fn split_server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, _) = frame.split_first()?;
    let opcode = b0 & 0x0F;
    if b0 & 0xF0 != 0x80 || !matches!(opcode, super::ws::OP_TEXT | super::ws::OP_BINARY) {
        return None;
    }
    let (op, payload) = split_server_frame_prefix(frame)?;
    (super::ws::header_len(payload.len()) + payload.len() == frame.len()).then_some((op, payload))
}

/// The opcode and payload of the unmasked server frame at the front of
/// `bytes` (any bits; what follows it is ignored), if it is all there.
pub fn split_server_frame_prefix(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let opcode = b0 & 0x0F;
    if b1 & 0x80 != 0 {
        return None;
    }
    let (len, payload) = match b1 {
        126 => {
            let (n, p) = rest.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*n)), p)
        }
        127 => {
            let (n, p) = rest.split_first_chunk::<8>()?;
            (usize::try_from(u64::from_be_bytes(*n)).ok()?, p)
        }
        n => (usize::from(n), rest),
    };
    Some((opcode, payload.get(..len)?))
}

/// Why inflating failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Not a valid DEFLATE stream.
    Corrupt,
    /// The inflated message would pass the limit.
    TooBig,
}

/// The inbound inflater of one connection.
pub struct Inflater {
    d: Decompress,
    /// Reset after every message (the client agreed not to take its window
    /// over from one message to the next).
    no_context_takeover: bool,
    /// The message's stream ended with a final block (RFC 7692 7.2.3.4
    /// allows one): what is left of the message, and the tail, are not
    /// DEFLATE data of the next stream and are dropped.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("no_context_takeover", &self.no_context_takeover).finish_non_exhaustive()
    }
}

impl Inflater {
    pub fn new(no_context_takeover: bool) -> Self {
        Self { d: Decompress::new(false), no_context_takeover, ended: false }
    }

    /// Inflates one compressed frame payload of a message, appending to
    /// `out`, which must stay at most `limit` bytes long.
    pub fn push(&mut self, input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        self.feed(input, limit, out)
    }

    /// Ends the message: feeds the tail RFC 7692 took off, and forgets the
    /// window when context takeover is off.
    pub fn finish(&mut self, limit: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let r = self.feed(&TAIL, limit, out);
        // Ordering hazard: cleared after the tail went through `feed`, so a
        // stream that ended in a final block never sees the tail.
        self.ended = false;
        if self.no_context_takeover {
            self.d.reset(false);
        }
        r
    }

    fn feed(&mut self, input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        if self.ended {
            return Ok(());
        }
        let start_in = self.d.total_in();
        let mut after_full = false;
        loop {
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if out.len() == out.capacity() {
                // Grow in steps, never past one byte over the limit: that
                // byte is how a message just over the limit is told apart
                // from one exactly at it.
                let step = out.len().clamp(1024, INFLATE_STEP).min(limit + 1 - out.len());
                out.reserve_exact(step);
            }
            let consumed = usize::try_from(self.d.total_in() - start_in).unwrap_or(usize::MAX);
            let rest = input.get(consumed..).unwrap_or_default();
            let before = (self.d.total_in(), out.len());
            // Output only goes into capacity already there: the buffer
            // never grows past `limit + 1` here (a reused one may be larger,
            // which costs no allocation).
            let status = self.d.decompress_vec(rest, out, FlushDecompress::Sync);
            let status = status.map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let consumed = usize::try_from(self.d.total_in() - start_in).unwrap_or(usize::MAX);
            if status == Status::StreamEnd {
                // A final block ends the stream; the next message starts a
                // new one (whatever follows in this one is ignored).
                self.d.reset(false);
                self.ended = true;
                return Ok(());
            }
            let progressed = (self.d.total_in(), out.len()) != before;
            // As in `Deflater::compress`: after a call that filled `out`,
            // the next may only hand over output held back, so one more
            // call is needed before the input counts as done.
            let full = out.len() == out.capacity();
            if consumed >= input.len() && !full && !after_full {
                return Ok(());
            }
            if !progressed && !full {
                if consumed >= input.len() {
                    return Ok(());
                }
                // Input left but nothing moved with room to spare: the
                // stream is stuck (truncated or corrupt).
                return Err(InflateError::Corrupt);
            }
            after_full = full;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Agreed> {
        negotiate([v.as_bytes()])
    }

    const PLAIN: Agreed = Agreed { client_no_context_takeover: false, server_max_window_bits: None };

    #[test]
    fn plain_and_parameterised_offers() {
        assert_eq!(offer("permessage-deflate"), Some(PLAIN));
        assert_eq!(offer("Permessage-Deflate"), Some(PLAIN));
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), Some(PLAIN));
        assert_eq!(offer("permessage-deflate; client_max_window_bits=10"), Some(PLAIN));
        assert_eq!(offer("permessage-deflate; server_no_context_takeover"), Some(PLAIN));
        assert_eq!(
            offer("permessage-deflate;client_no_context_takeover ; server_max_window_bits=\"9\""),
            Some(Agreed { client_no_context_takeover: true, server_max_window_bits: Some(9) })
        );
        assert_eq!(offer("x-webkit-deflate-frame"), None);
        assert_eq!(offer(""), None);
    }

    #[test]
    fn malformed_offers_are_declined_and_the_next_is_taken() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=\"1\\\"5\"",
            "permessage-deflate; =9",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; client_no_context_takeover");
            assert_eq!(
                offer(&two),
                Some(Agreed { client_no_context_takeover: true, server_max_window_bits: None }),
                "{two}"
            );
        }
        // An open quote runs to the end of the header line: nothing is taken from it.
        assert_eq!(offer("permessage-deflate; server_max_window_bits=\"10, permessage-deflate"), None);
        // Offers across several header lines, in order; other extensions skipped.
        let got = negotiate([
            &b"foo; bar=\"a,b\""[..],
            b"permessage-deflate; server_max_window_bits=12",
            b"permessage-deflate",
        ]);
        assert_eq!(got, Some(Agreed { client_no_context_takeover: false, server_max_window_bits: Some(12) }));
    }

    #[test]
    fn responses() {
        assert_eq!(PLAIN.response(), "permessage-deflate; server_no_context_takeover");
        let a = Agreed { client_no_context_takeover: true, server_max_window_bits: Some(9) };
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
        );
        assert_eq!(a.max_deflated_len(), 512);
        assert_eq!(PLAIN.max_deflated_len(), usize::MAX);
        let a15 = Agreed { client_no_context_takeover: false, server_max_window_bits: Some(15) };
        assert_eq!(a15.max_deflated_len(), usize::MAX);
    }

    fn json_body(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!("{{\"user\":\"user{}\",\"text\":\"hello there, message {i}\",\"ok\":true}},", i % 7));
            i += 1;
        }
        s.into_bytes()
    }

    /// What a peer does: inflate with the tail put back.
    fn inflate_all(parts: &[&[u8]], no_ctx: bool, limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut inf = Inflater::new(no_ctx);
        let mut out = Vec::new();
        for p in parts {
            inf.push(p, limit, &mut out)?;
        }
        inf.finish(limit, &mut out)?;
        Ok(out)
    }

    #[test]
    fn incompressible_messages_inflate_whole() {
        // Random bytes a client compressed (stored blocks, longer than the
        // input): every byte comes out, whole or in 256-byte fragments.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let body: Vec<u8> = (0..65_536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut c = Compress::new(Compression::default(), false);
        let mut m = Vec::with_capacity(body.len() * 2);
        c.compress_vec(&body, &mut m, FlushCompress::Sync).unwrap();
        assert!(m.ends_with(&TAIL));
        let m = &m[..m.len() - TAIL.len()];
        assert_eq!(inflate_all(&[m], true, 1 << 20).unwrap(), body);
        let parts: Vec<&[u8]> = m.chunks(256).collect();
        assert_eq!(inflate_all(&parts, true, 1 << 20).unwrap(), body);
        // And ours, compressing the same bytes to send them.
        let mut ours = Vec::new();
        Deflater::new().compress(&body, &mut ours);
        assert_eq!(inflate_all(&[&ours], true, 1 << 20).unwrap(), body);
    }

    /// Bytes of a 7-bit alphabet with short copies of what came before
    /// (`copies` in 256 chance of one per byte): they compress to about
    /// three quarters, like a bitmap image.
    fn image_like(seed: u64, len: usize, copies: u8) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x >> 24) as u8;
            if b < copies && v.len() > 300 {
                let from = v.len() - 1 - (x >> 40) as usize % 256;
                for k in 0..3 + (x >> 50) as usize % 6 {
                    v.push(v[from + k]);
                }
            } else {
                v.push((b & 0x3f) | ((b >> 6) & 1) << 6);
            }
        }
        v.truncate(len);
        v
    }

    #[test]
    fn no_input_is_left_behind_when_the_output_buffer_fills() {
        // Found by Autobahn 12.2.9 (64 KiB slices of a bitmap): when a call
        // filled the output while the compressor still held input in its
        // lookahead, the next call only handed over the held-back bytes, and
        // the message came out a few hundred bytes short. Seeds 22, 392 and
        // 666 hit that case with miniz_oxide 0.9; the sweep keeps the test
        // meaningful if the library's block boundaries move.
        let mut d = Deflater::new();
        let seeds = [22u64, 392, 666, 1036, 1310].into_iter().chain(0..48);
        for seed in seeds {
            let len = 20_000 + (seed as usize * 7919) % 60_000;
            let body = image_like(seed, len, (seed % 7) as u8 * 20 + 10);
            let mut c = Vec::new();
            d.compress(&body, &mut c);
            // An independent inflater, given all the room it wants.
            let mut plain = Decompress::new(false);
            let mut got = Vec::with_capacity(len * 2 + 1024);
            c.extend_from_slice(&TAIL);
            plain.decompress_vec(&c, &mut got, FlushDecompress::Sync).unwrap();
            assert_eq!(got.len(), body.len(), "seed {seed}");
            assert!(got == body, "seed {seed}");
            // Ours, which grows its output in steps.
            c.truncate(c.len() - TAIL.len());
            assert!(inflate_all(&[&c], true, 1 << 20).unwrap() == body, "seed {seed}");
        }
    }

    #[test]
    fn a_message_ending_in_a_final_block_leaves_the_next_one_alone() {
        // RFC 7692 7.2.3.4: a sender may end a message with BFINAL set. The
        // tail `finish` feeds must then not start the next stream, where it
        // read as a stored-block header and swallowed the next message.
        fn finished(body: &[u8], level: u32) -> Vec<u8> {
            let mut c = Compress::new(Compression::new(level), false);
            let mut m = Vec::with_capacity(body.len() + 64);
            c.compress_vec(body, &mut m, FlushCompress::Finish).unwrap();
            m
        }
        fn synced(body: &[u8], level: u32) -> Vec<u8> {
            let mut c = Compress::new(Compression::new(level), false);
            let mut m = Vec::with_capacity(body.len() + 64);
            c.compress_vec(body, &mut m, FlushCompress::Sync).unwrap();
            m.truncate(m.len() - TAIL.len());
            m
        }
        let (a, b) = (json_body(3000), json_body(500));
        for no_ctx in [false, true] {
            // The next message either Huffman-coded or stored (level 0, which
            // starts with the 0x00 byte the stale header waited for).
            for level in [6, 0] {
                let mut inf = Inflater::new(no_ctx);
                let first = finished(&a, 6);
                let (p1, p2) = first.split_at(first.len() / 2);
                let mut out = Vec::new();
                inf.push(p1, 1 << 20, &mut out).unwrap();
                inf.push(p2, 1 << 20, &mut out).unwrap();
                inf.finish(1 << 20, &mut out).unwrap();
                assert!(out == a);
                let mut out = Vec::new();
                inf.push(&synced(&b, level), 1 << 20, &mut out).unwrap();
                inf.finish(1 << 20, &mut out).unwrap();
                assert!(out == b, "no_ctx {no_ctx} level {level}: {} bytes", out.len());
            }
        }
    }

    #[test]
    fn compress_inflate_round_trips() {
        let mut d = Deflater::new();
        for body in
            [Vec::new(), b"a".to_vec(), json_body(1024), json_body(100_000), (0..=255u8).cycle().take(70_000).collect()]
        {
            let mut c = Vec::new();
            d.compress(&body, &mut c);
            assert!(!c.ends_with(&TAIL) || body.is_empty(), "tail stripped");
            assert_eq!(inflate_all(&[&c], true, 1 << 20).unwrap(), body);
            // Fragmented anywhere, too.
            let cut = c.len() / 3;
            assert_eq!(inflate_all(&[&c[..cut], &c[cut..]], true, 1 << 20).unwrap(), body);
        }
        // Compressing again gives the same bytes: nothing is carried over.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        d.compress(&json_body(1024), &mut a);
        d.compress(&json_body(1024), &mut b);
        assert_eq!(a, b);
        assert!(a.len() < 1024 / 3, "JSON compresses: {}", a.len());
    }

    #[test]
    fn context_takeover_inbound() {
        // A client with context takeover: the second message refers to the first.
        let mut c = Compress::new(Compression::default(), false);
        let body = json_body(2000);
        let mut m1 = Vec::with_capacity(4096);
        c.compress_vec(&body, &mut m1, FlushCompress::Sync).unwrap();
        let mut m2 = Vec::with_capacity(4096);
        c.compress_vec(&body, &mut m2, FlushCompress::Sync).unwrap();
        let (m1, m2) = (&m1[..m1.len() - 4], &m2[..m2.len() - 4]);
        assert!(m2.len() < 32, "refers back: {}", m2.len());
        let mut inf = Inflater::new(false);
        for m in [m1, m2] {
            let mut out = Vec::new();
            inf.push(m, 1 << 20, &mut out).unwrap();
            inf.finish(1 << 20, &mut out).unwrap();
            assert_eq!(out, body);
        }
        // Reset between messages, the second cannot be inflated.
        let mut inf = Inflater::new(true);
        let mut out = Vec::new();
        inf.push(m1, 1 << 20, &mut out).unwrap();
        inf.finish(1 << 20, &mut out).unwrap();
        let mut out = Vec::new();
        let r = inf.push(m2, 1 << 20, &mut out).and_then(|()| inf.finish(1 << 20, &mut out));
        assert!(r.is_err() || out != body);
    }

    #[test]
    fn bomb_stops_at_the_limit_without_allocating_it() {
        let mut d = Deflater::new();
        let zeros = vec![0u8; 10 << 20];
        let mut c = Vec::new();
        d.compress(&zeros, &mut c);
        assert!(c.len() < 20_000, "{}", c.len());
        let limit = 64 * 1024;
        let mut inf = Inflater::new(false);
        let mut out = Vec::new();
        assert_eq!(inf.push(&c, limit, &mut out), Err(InflateError::TooBig));
        assert!(out.capacity() <= limit + 1, "capacity {}", out.capacity());
        // Exactly at the limit is fine; one byte over is not.
        let mut c = Vec::new();
        d.compress(&zeros[..limit], &mut c);
        assert_eq!(inflate_all(&[&c], true, limit).map(|v| v.len()), Ok(limit));
        let mut c = Vec::new();
        d.compress(&zeros[..limit + 1], &mut c);
        assert_eq!(inflate_all(&[&c], true, limit), Err(InflateError::TooBig));
    }

    #[test]
    fn corrupt_input_fails() {
        assert_eq!(inflate_all(&[&[0xff, 0xff, 0xff]], true, 1000), Err(InflateError::Corrupt));
        // Stored block claiming more bytes than the length check allows.
        assert_eq!(inflate_all(&[&[0x00, 0x05, 0x00, 0x00, 0x00]], true, 1000), Err(InflateError::Corrupt));
    }

    #[test]
    fn deflated_frames() {
        let mut d = Deflater::new();
        let body = json_body(1024);
        let plain = super::super::ws::encode_frame(super::super::ws::OP_TEXT, &body);
        let f = d.deflate_frame(&plain).unwrap();
        assert_eq!(f[0], 0xC1, "FIN, RSV1, text");
        let (op, payload) = split_server_frame_prefix(&f).unwrap();
        assert_eq!(op, super::super::ws::OP_TEXT);
        assert_eq!(super::super::ws::header_len(payload.len()) + payload.len(), f.len());
        assert_eq!(inflate_all(&[payload], true, 1 << 20).unwrap(), body);
        // Not worth it: none.
        let tiny = super::super::ws::encode_frame(super::super::ws::OP_TEXT, b"ab");
        assert!(d.deflate_frame(&tiny).is_none());
        // Not a data frame: none.
        assert!(d.deflate_frame(&super::super::ws::encode_close(1000, "")).is_none());
        assert!(d.deflate_frame(&plain[..plain.len() - 1]).is_none());
        assert!(d.deflate_frame(&[]).is_none());
    }
}
