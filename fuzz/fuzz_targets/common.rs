//! What the reactor targets (`conn`, `ops`) share: the settings their first
//! input byte picks.

use std::time::Duration;

use roomcast::config::{bounds, Config};

/// The settings: bit 0 anonymous, 1 echo endpoint, 2 small messages and
/// queue, 3 audience and issuer required, 4 tight rate limits, 5 shallow
/// bodies, 6 short timeouts, 7 rooms forgotten after 1 s and the longest
/// timeouts allowed (7 wins over 6).
pub fn config(flags: u8) -> Config {
    let mut c = Config { threads: 1, ..Config::default() };
    c.anonymous = flags & 1 != 0;
    c.echo = flags & 2 != 0;
    if flags & 4 != 0 {
        c.max_message_bytes = 512;
        c.max_queue_bytes = 4096;
    }
    if flags & 8 != 0 {
        c.jwt_audience = Some("rc".into());
        c.jwt_issuer = Some("me".into());
    }
    if flags & 16 != 0 {
        c.send_rate = 1.0;
        c.send_burst = 2;
        c.request_rate = 1.0;
        c.request_burst = 2;
    }
    if flags & 32 != 0 {
        c.max_body_depth = 3;
    }
    if flags & 64 != 0 {
        c.request_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(2);
        c.ping_interval = Duration::from_secs(1);
    }
    if flags & 128 != 0 {
        // Rooms forgotten as soon as allowed, every timeout at its bound.
        c.room_idle_timeout = bounds::MIN_ROOM_IDLE_TIMEOUT;
        c.request_timeout = bounds::REQUEST_TIMEOUT;
        c.idle_timeout = bounds::IDLE_TIMEOUT;
        c.ping_interval = bounds::PING_INTERVAL - Duration::from_secs(1);
        c.drain_timeout = bounds::DRAIN_TIMEOUT;
        c.dedup_window = bounds::DEDUP_WINDOW;
        c.max_queue_bytes = c.max_message_bytes;
    }
    debug_assert!(c.validate().is_ok(), "{flags:#04x}");
    c
}

/// What one peer has received, checked as it arrives. When the stream
/// starts with a `101` (the upgrade was the connection's first request),
/// everything after that head must be WebSocket frames as RFC 6455 has a
/// server send them: whole, unmasked, no reserved bits, known opcodes,
/// control payloads of at most 125 bytes, nothing after a close, text that is
/// UTF-8 and, on `/v1/ws`, one JSON object with an `op` per frame. A stream
/// that starts otherwise is not checked (HTTP answers are the HTTP targets').
#[derive(Default)]
pub struct Peer {
    buf: Vec<u8>,
    state: Stream,
}

#[derive(Default, PartialEq)]
enum Stream {
    /// Not yet known whether the first answer is a `101`.
    #[default]
    Start,
    Frames,
    Closed,
    Unchecked,
}

const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Peer {
    /// Takes in the next bytes the server sent; `json` says text frames
    /// must be protocol messages (false when the echo endpoint is on).
    pub fn absorb(&mut self, out: &[u8], json: bool) -> Result<(), String> {
        if self.state == Stream::Unchecked {
            return Ok(());
        }
        self.buf.extend_from_slice(out);
        if self.state == Stream::Start {
            let n = self.buf.len().min(SWITCHING.len());
            if self.buf[..n] != SWITCHING[..n] {
                self.state = Stream::Unchecked;
                self.buf = Vec::new();
                return Ok(());
            }
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                return Ok(());
            };
            self.buf.drain(..end + 4);
            self.state = Stream::Frames;
        }
        let mut pos = 0;
        while let Some((b0, len, hdr)) = frame_header(&self.buf[pos..])? {
            let Some(end) = hdr.checked_add(len).filter(|&e| e <= self.buf.len() - pos) else {
                break;
            };
            if self.state == Stream::Closed {
                return Err(format!("frame {b0:#04x} after the close frame"));
            }
            check_frame(b0 & 0x0f, &self.buf[pos + hdr..pos + end], json)?;
            if b0 & 0x0f == 8 {
                self.state = Stream::Closed;
            }
            pos += end;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

/// `(first byte, payload length, header length)`, or `None` if more bytes
/// are needed.
fn frame_header(b: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    let [b0, b1, rest @ ..] = b else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 {
        return Err(format!("fragmented server frame {b0:#04x}"));
    }
    if b0 & 0x70 != 0 {
        return Err(format!("reserved bits in server frame {b0:#04x}"));
    }
    if b1 & 0x80 != 0 {
        return Err("masked server frame".into());
    }
    Ok(match b1 & 0x7f {
        126 => rest.first_chunk::<2>().map(|n| (*b0, usize::from(u16::from_be_bytes(*n)), 4)),
        127 => match rest.first_chunk::<8>() {
            Some(n) => {
                let len = usize::try_from(u64::from_be_bytes(*n)).map_err(|_| "frame length past usize")?;
                Some((*b0, len, 10))
            }
            None => None,
        },
        n => Some((*b0, usize::from(n), 2)),
    })
}

fn check_frame(op: u8, payload: &[u8], json: bool) -> Result<(), String> {
    match op {
        1 => {
            let text = std::str::from_utf8(payload).map_err(|e| format!("text frame not UTF-8: {e}"))?;
            if json {
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("text frame not JSON ({e}): {text:.200}"))?;
                if !v.get("op").is_some_and(serde_json::Value::is_string) {
                    return Err(format!("message without an op: {text:.200}"));
                }
            }
        }
        2 => {}
        8..=10 if payload.len() > 125 => return Err(format!("control frame {op} of {} bytes", payload.len())),
        8 => {
            if payload.len() == 1 {
                return Err("close frame with a 1-byte payload".into());
            }
            if payload.len() >= 2 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                // The server's own codes, and 3000-4999 (RFC 6455 7.4.2:
                // registered and private), which it echoes from a peer.
                let known = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                if !known {
                    return Err(format!("close code {code}"));
                }
                std::str::from_utf8(&payload[2..]).map_err(|_| "close reason not UTF-8")?;
            }
        }
        9 | 10 => {}
        _ => return Err(format!("server frame with opcode {op}")),
    }
    Ok(())
}
