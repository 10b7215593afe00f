//! Protocol v1 messages: decoding what clients send and encoding what the
//! server sends, as JSON and as complete WebSocket text frames.
//!
//! This module owns the JSON shape of every message in PROTOCOL.md. It does
//! not own the WebSocket codec (it only has `ws::put_header` write a server
//! text frame's header in the room it leaves in front of the JSON it builds),
//! room rules beyond the room-name syntax, or any I/O.
//!
//! Hot path: a `msg` is encoded once by [`encode_msg`] into one immutable
//! [`Bytes`] that holds the whole frame; fan-out clones that `Bytes` (a
//! reference count, no copy) and history reuses its JSON by slicing
//! ([`history_item`]). A message body is kept as the client's raw JSON text
//! ([`RawValue`]) from decode to every frame: never re-parsed, never
//! re-serialised.
//!
//! Decoding choices where the protocol is silent:
//! - A message is one JSON object. Unknown members are ignored. When a member
//!   appears twice, the last one wins (as in most JSON parsers).
//! - An optional member whose value is `null` counts as absent (`ref`,
//!   `since`, `before`, `after`, `limit`, `id`). A `send` `body` of `null` is
//!   a body like any other; a missing `body` is an error.
//! - `ref` is a string of at most 64 bytes (after unescaping) or an integer
//!   (a JSON number without fraction or exponent) of at most 64 characters.
//!   It is kept as the client wrote it and copied verbatim into replies.
//! - `room` and `id` may use JSON escapes; then they are unescaped into an
//!   owned string, otherwise borrowed from the input.
//! - `limit` is any integer, clamped to 1..=1000 (negative gives 1, beyond
//!   u64 gives 1000); a non-integer `limit` is an error.
//! - `refresh`'s `token` is 1 to [`MAX_TOKEN_BYTES`] bytes of printable
//!   ASCII; whether it is a valid token is the verifier's question.
//!
//! Replies to a message without `ref` carry no `ref` member.
//!
//! Decoding never recurses on the input's nesting: serde_json skips and
//! captures raw values with an explicit stack on the heap, so a message of
//! millions of nested arrays costs memory in proportion to its size and no
//! stack. What a body may hold beyond being JSON (how deep it nests, which
//! numbers) is [`check_body`]'s rule, applied by whoever stores it.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{decimal_len, json, push_decimal, ws};

/// Longest `ref` string (bytes after unescaping) or integer (characters).
pub const MAX_REF_BYTES: usize = 64;
/// Longest client message id, in bytes after unescaping.
pub const MAX_ID_BYTES: usize = 64;
/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;
/// Longest `refresh` token, in bytes: as long as a token in the largest
/// request head an upgrade may have.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// `history` page size when the client gives no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Largest `history` page size; larger limits are clamped to it.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// The error code of every decode failure.
const BAD_REQUEST: &str = "bad_request";

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// A client's `ref`, kept as its JSON text (e.g. `"a7"` with quotes, or `12`) so replies copy it verbatim.
///
/// Whoever builds one by hand must put valid JSON text (a string or a
/// number) in it: encoders write it into replies as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref(pub Box<str>);

/// One client request, with its fields checked.
///
/// `room` and `id` borrow from the decoded text unless the client wrote them
/// with JSON escapes, in which case they are owned.
#[derive(Debug)]
pub enum Op<'a> {
    Join {
        room: Cow<'a, str>,
        since: Option<u64>,
    },
    Leave {
        room: Cow<'a, str>,
    },
    Send {
        room: Cow<'a, str>,
        body: &'a RawValue,
        id: Option<Cow<'a, str>>,
    },
    History {
        room: Cow<'a, str>,
        before: Option<u64>,
        after: Option<u64>,
        /// Default 50, clamped to 1..=1000.
        limit: usize,
    },
    Presence {
        room: Cow<'a, str>,
    },
    Ping,
    /// A new token for the connection (same user): borrowed unless written
    /// with JSON escapes.
    Refresh {
        token: Cow<'a, str>,
    },
}

/// A decoded client message.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub r#ref: Option<Ref>,
    pub op: Op<'a>,
}

/// Why a client message was refused. `r#ref` is the message's `ref` when that
/// much was valid, so the `error` reply can carry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    pub r#ref: Option<Ref>,
    /// Always `"bad_request"`.
    pub code: &'static str,
    pub message: String,
}

impl DecodeError {
    fn bad(r#ref: Option<Ref>, message: impl Into<String>) -> Self {
        DecodeError { r#ref, code: BAD_REQUEST, message: message.into() }
    }
}

/// The members of a message object that any decoder here looks at, each as
/// raw JSON borrowed from the input. Collecting raw values first (one pass
/// over the input) and checking them afterwards lets a bad `room` still
/// produce an error that carries the message's `ref`.
#[derive(Default)]
struct Fields<'a> {
    op: Option<&'a RawValue>,
    r#ref: Option<&'a RawValue>,
    room: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    before: Option<&'a RawValue>,
    after: Option<&'a RawValue>,
    limit: Option<&'a RawValue>,
    body: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    token: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Op,
    Ref,
    Room,
    Since,
    Before,
    After,
    Limit,
    Body,
    Id,
    Token,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut f = Fields::default();
                // Assigning (not checking for an earlier value) is what makes
                // the last of duplicate members win.
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Op => &mut f.op,
                        Key::Ref => &mut f.r#ref,
                        Key::Room => &mut f.room,
                        Key::Since => &mut f.since,
                        Key::Before => &mut f.before,
                        Key::After => &mut f.after,
                        Key::Limit => &mut f.limit,
                        Key::Body => &mut f.body,
                        Key::Id => &mut f.id,
                        Key::Token => &mut f.token,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_fields(text: &[u8]) -> Result<Fields<'_>, DecodeError> {
    serde_json::from_slice::<Fields<'_>>(text).map_err(|e| {
        if e.is_data() {
            DecodeError::bad(None, "message must be a JSON object")
        } else {
            DecodeError::bad(None, format!("invalid JSON: {e}"))
        }
    })
}

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// The string a raw JSON value holds, borrowed when it has no escapes.
fn as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    let text = v.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    // The raw value is valid JSON, so a string without a backslash is exactly
    // the text between its quotes.
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// What an integer-valued raw JSON value holds.
enum Int {
    NonNegative(u64),
    /// A non-negative integer beyond u64.
    Huge,
    Negative,
}

/// `None` unless the raw value is a JSON number without fraction or exponent.
fn as_int(v: &RawValue) -> Option<Int> {
    let text = v.get();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        // "-0" is still zero.
        if digits.bytes().all(|b| b == b'0') {
            return Some(Int::NonNegative(0));
        }
        return Some(Int::Negative);
    }
    Some(digits.parse::<u64>().map_or(Int::Huge, Int::NonNegative))
}

fn parse_ref(v: &RawValue) -> Result<Option<Ref>, DecodeError> {
    if is_null(v) {
        return Ok(None);
    }
    let ok = match as_str(v) {
        Some(s) => s.len() <= MAX_REF_BYTES,
        None => as_int(v).is_some() && v.get().len() <= MAX_REF_BYTES,
    };
    if ok {
        Ok(Some(Ref(v.get().into())))
    } else {
        Err(DecodeError::bad(None, "ref must be a string of at most 64 bytes or an integer"))
    }
}

fn required_room(v: Option<&RawValue>) -> Result<Cow<'_, str>, &'static str> {
    let v = v.ok_or("missing room")?;
    let room = as_str(v).ok_or("room must be a string")?;
    if valid_room(&room) {
        Ok(room)
    } else {
        Err("invalid room name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -")
    }
}

/// An optional sequence number: absent, null, or a non-negative integer.
fn optional_seq(v: Option<&RawValue>, not_int: &'static str) -> Result<Option<u64>, &'static str> {
    match v {
        None => Ok(None),
        Some(v) if is_null(v) => Ok(None),
        Some(v) => match as_int(v) {
            Some(Int::NonNegative(n)) => Ok(Some(n)),
            _ => Err(not_int),
        },
    }
}

fn optional_id(v: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, &'static str> {
    match v {
        None => Ok(None),
        Some(v) if is_null(v) => Ok(None),
        Some(v) => {
            let id = as_str(v).ok_or("id must be a string")?;
            if id.is_empty() || id.len() > MAX_ID_BYTES {
                Err("id must be 1 to 64 bytes")
            } else {
                Ok(Some(id))
            }
        }
    }
}

/// A `refresh` token: a string of 1 to [`MAX_TOKEN_BYTES`] printable ASCII
/// bytes (a JWT is base64url and dots); what it says is the verifier's
/// business.
fn required_token(v: Option<&RawValue>) -> Result<Cow<'_, str>, &'static str> {
    let t = as_str(v.ok_or("missing token")?).ok_or("token must be a string")?;
    if t.is_empty() || t.len() > MAX_TOKEN_BYTES || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token must be 1 to 16384 bytes of printable ASCII");
    }
    Ok(t)
}

fn history_limit(v: Option<&RawValue>) -> Result<usize, &'static str> {
    let Some(v) = v.filter(|v| !is_null(v)) else {
        return Ok(DEFAULT_HISTORY_LIMIT);
    };
    let n = match as_int(v) {
        Some(Int::NonNegative(n)) => n,
        Some(Int::Negative) => 0,
        Some(Int::Huge) => u64::MAX,
        None => return Err("limit must be an integer"),
    };
    // After the clamp the value fits any usize.
    Ok(n.clamp(1, MAX_HISTORY_LIMIT as u64) as usize)
}

fn decode_op<'a>(f: &Fields<'a>) -> Result<Op<'a>, &'static str> {
    let op = f.op.ok_or("missing op")?;
    let op = as_str(op).ok_or("op must be a string")?;
    Ok(match &*op {
        "join" => Op::Join {
            room: required_room(f.room)?,
            since: optional_seq(f.since, "since must be a non-negative integer")?,
        },
        "leave" => Op::Leave { room: required_room(f.room)? },
        "send" => {
            Op::Send { room: required_room(f.room)?, body: f.body.ok_or("missing body")?, id: optional_id(f.id)? }
        }
        "history" => Op::History {
            room: required_room(f.room)?,
            before: optional_seq(f.before, "before must be a non-negative integer")?,
            after: optional_seq(f.after, "after must be a non-negative integer")?,
            limit: history_limit(f.limit)?,
        },
        "presence" => Op::Presence { room: required_room(f.room)? },
        "ping" => Op::Ping,
        "refresh" => Op::Refresh { token: required_token(f.token)? },
        _ => return Err("unknown op"),
    })
}

/// Parses one text message. Strings are borrowed from `text` unless written
/// with JSON escapes; the `send` body is borrowed raw JSON.
pub fn decode(text: &[u8]) -> Result<Incoming<'_>, DecodeError> {
    let f = parse_fields(text)?;
    let r#ref = match f.r#ref {
        Some(v) => parse_ref(v)?,
        None => None,
    };
    match decode_op(&f) {
        Ok(op) => Ok(Incoming { r#ref, op }),
        Err(message) => Err(DecodeError::bad(r#ref, message)),
    }
}

/// Whether `name` is a valid room name: 1..=128 bytes of `[A-Za-z0-9_.:-]`.
pub fn valid_room(name: &str) -> bool {
    (1..=MAX_ROOM_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// HTTP POST body {"body": any, "id"?: string<=64}
#[derive(Debug)]
pub struct PostBody<'a> {
    pub body: &'a RawValue,
    pub id: Option<Cow<'a, str>>,
}

/// Parses the body of `POST /v1/rooms/{room}/messages`. Same rules as a
/// `send`'s `body` and `id`; other members are ignored. Errors carry no ref.
pub fn decode_post(body: &[u8]) -> Result<PostBody<'_>, DecodeError> {
    let f = parse_fields(body)?;
    let raw = f.body.ok_or_else(|| DecodeError::bad(None, "missing body"))?;
    let id = optional_id(f.id).map_err(|m| DecodeError::bad(None, m))?;
    Ok(PostBody { body: raw, id })
}

// ---------------------------------------------------------------------------
// Body rules
// ---------------------------------------------------------------------------

/// Longest number accepted in a message body, in characters.
pub const MAX_NUMBER_CHARS: usize = 100;

/// Why a message body was refused by [`check_body`]. Its text is the
/// `bad_request` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Arrays and objects nest deeper than the limit it carries.
    #[error("body nests deeper than {0} levels")]
    TooDeep(usize),
    /// A number is longer than [`MAX_NUMBER_CHARS`] or beyond a double's range.
    #[error("numbers must be finite doubles of at most 100 characters")]
    BadNumber,
}

/// Checks that a body (JSON text that serde_json has already accepted, such
/// as a [`RawValue`]'s) is one every client's JSON parser can read: arrays
/// and objects nest at most `max_depth` levels (`[]` is one level, a scalar
/// none), and every number is at most [`MAX_NUMBER_CHARS`] characters and a
/// finite double (`1e400` is not; `1e-400` reads as 0 and is fine).
///
/// One pass over the bytes, without recursion or allocation. On text that
/// is not JSON it still returns, with an answer of no particular meaning.
pub fn check_body(body: &str, max_depth: usize) -> Result<(), BodyError> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i = string_end(bytes, i + 1);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(BodyError::TooDeep(max_depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            // Outside strings, a JSON value starting with these is a number,
            // and it runs to the first byte no number contains.
            b'-' | b'0'..=b'9' => {
                let rest = bytes.get(i..).unwrap_or_default();
                let len = rest.iter().position(|&c| !is_number_byte(c)).unwrap_or(rest.len());
                check_number(rest.get(..len).unwrap_or_default())?;
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn is_number_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// Where the string whose contents start at `from` ends: the index just
/// past its closing quote, or the length of `bytes` if it never closes.
fn string_end(bytes: &[u8], mut from: usize) -> usize {
    loop {
        let rest = bytes.get(from..).unwrap_or_default();
        match rest.iter().position(|&c| c == b'"' || c == b'\\') {
            None => return bytes.len(),
            Some(at) => match rest.get(at) {
                // An escape: the byte after the backslash (a quote, maybe) is
                // part of the string whatever it is.
                Some(b'\\') => from += at + 2,
                _ => return from + at + 1,
            },
        }
    }
}

/// A JSON number's text: short, and finite as a double. Rust's `f64` syntax
/// includes JSON's, so every valid JSON number parses; text that does not
/// parse only comes from input that is not JSON, and is refused too.
fn check_number(text: &[u8]) -> Result<(), BodyError> {
    if text.len() > MAX_NUMBER_CHARS {
        return Err(BodyError::BadNumber);
    }
    match std::str::from_utf8(text).ok().and_then(|t| t.parse::<f64>().ok()) {
        Some(n) if n.is_finite() => Ok(()),
        _ => Err(BodyError::BadNumber),
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Bytes reserved in front of a frame's JSON for the longest server frame
/// header (2 bytes + 8-byte length, no mask).
const HEADER_ROOM: usize = ws::MAX_HEADER_LEN;

/// A JSON document being built in one buffer, optionally with room for a
/// WebSocket frame header in front so the frame needs no second copy.
struct Out {
    buf: Vec<u8>,
}

impl Out {
    /// For a WebSocket frame: `cap` is the expected JSON length.
    fn frame(cap: usize) -> Out {
        let mut buf = Vec::with_capacity(HEADER_ROOM + cap);
        buf.resize(HEADER_ROOM, 0);
        Out { buf }
    }

    /// For bare JSON (HTTP bodies).
    fn plain(cap: usize) -> Out {
        Out { buf: Vec::with_capacity(cap) }
    }

    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        json::push_str(&mut self.buf, s);
    }

    fn u64(&mut self, n: u64) {
        push_decimal(&mut self.buf, n);
    }

    fn bool(&mut self, b: bool) {
        self.raw(if b { b"true" } else { b"false" });
    }

    /// `,"name":` — `name` is a constant that needs no escaping.
    fn key(&mut self, name: &str) {
        self.raw(b",\"");
        self.raw(name.as_bytes());
        self.raw(b"\":");
    }

    /// `{"op":"<op>"` followed by `,"ref":<ref>` when there is one.
    fn open_op(&mut self, op: &str, r: Option<&Ref>) {
        self.raw(b"{\"op\":\"");
        self.raw(op.as_bytes());
        self.buf.push(b'"');
        if let Some(r) = r {
            self.key("ref");
            self.raw(r.0.as_bytes());
        }
    }

    fn str_array<'s>(&mut self, items: impl IntoIterator<Item = &'s str>) {
        self.buf.push(b'[');
        for (i, s) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.str(s);
        }
        self.buf.push(b']');
    }

    fn history_items<'m>(&mut self, items: impl Iterator<Item = &'m MsgFrame>) {
        self.buf.push(b'[');
        for (i, m) in items.enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let (open, rest) = history_item(m);
            self.raw(open);
            self.raw(rest);
        }
        self.buf.push(b']');
    }

    fn members<'a>(&mut self, members: impl Iterator<Item = Member<'a>>) {
        self.buf.push(b'[');
        for (i, m) in members.enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.raw(b"{\"user\":");
            self.str(m.user);
            self.key("since");
            self.u64(m.since);
            self.buf.push(b'}');
        }
        self.buf.push(b']');
    }

    /// Puts the frame header right before the JSON and returns the frame and
    /// the header's length. Only for buffers made by [`Out::frame`].
    fn finish_frame(self) -> (Bytes, usize) {
        let mut buf = self.buf;
        let len = buf.len().saturating_sub(HEADER_ROOM);
        let n = ws::header_len(len);
        let start = HEADER_ROOM - n;
        if let Some(gap) = buf.get_mut(start..HEADER_ROOM) {
            ws::put_header(gap, ws::OP_TEXT, len);
        }
        (Bytes::from(buf).slice(start..), n)
    }

    fn finish_frame_bytes(self) -> Bytes {
        self.finish_frame().0
    }
}

/// One `msg`, encoded once as a complete WebSocket text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgFrame {
    /// The WebSocket frame header followed by `{"op":"msg",...}`.
    pub frame: Bytes,
    /// Where the JSON starts in `frame` (the header's length).
    pub json_start: usize,
}

impl MsgFrame {
    /// The message's JSON without the frame header.
    pub fn json(&self) -> &[u8] {
        self.frame.get(self.json_start..).unwrap_or_default()
    }
}

/// The start of every `msg` object; [`history_item`] cuts it off.
const MSG_PREFIX: &[u8] = b"{\"op\":\"msg\",";

/// `{"op":"msg","room":..,"seq":..,"ts":..,"from":..,"body":<raw>,"id":..(if Some)}` as one WS text frame.
pub fn encode_msg(room: &str, seq: u64, ts: u64, from: &str, body: &RawValue, id: Option<&str>) -> MsgFrame {
    encode_msg_raw(room, seq, ts, from, body.get().as_bytes(), id)
}

/// [`encode_msg`] for a body already known to be one valid JSON value, such
/// as the bytes of a [`RawValue`] kept in storage. The body is copied as is,
/// unchecked: bytes that are not valid JSON make an invalid message.
pub fn encode_msg_raw(room: &str, seq: u64, ts: u64, from: &str, body: &[u8], id: Option<&str>) -> MsgFrame {
    encode_msg_sharing(room, seq, ts, from, body, id).0
}

/// [`encode_msg_raw`], also returning the body as a slice of the frame: the
/// stored record shares it, so a published body is copied once, into the
/// frame, and never again for storage.
pub fn encode_msg_sharing(
    room: &str,
    seq: u64,
    ts: u64,
    from: &str,
    body: &[u8],
    id: Option<&str>,
) -> (MsgFrame, Bytes) {
    // The exact JSON length, so the frame takes one allocation with no slack:
    // it may live long in a room's tail of recent messages.
    let len = msg_json_len(room, seq, ts, from, body.len(), id);
    let mut out = Out::frame(len);
    out.raw(MSG_PREFIX);
    out.raw(b"\"room\":");
    out.str(room);
    out.key("seq");
    out.u64(seq);
    out.key("ts");
    out.u64(ts);
    out.key("from");
    out.str(from);
    out.key("body");
    let body_at = out.buf.len();
    out.raw(body);
    if let Some(id) = id {
        out.key("id");
        out.str(id);
    }
    out.raw(b"}");
    let (frame, json_start) = out.finish_frame();
    // `finish_frame` drops the unused front of the header room.
    let at = (body_at + json_start).saturating_sub(HEADER_ROOM);
    let shared = frame
        .get(at..at + body.len())
        .map_or_else(|| Bytes::copy_from_slice(body), |_| frame.slice(at..at + body.len()));
    (MsgFrame { frame, json_start }, shared)
}

/// The exact length of the JSON [`encode_msg_raw`] writes.
fn msg_json_len(room: &str, seq: u64, ts: u64, from: &str, body_len: usize, id: Option<&str>) -> usize {
    MSG_PREFIX.len()
        + "\"room\":".len()
        + json::str_len(room)
        + ",\"seq\":".len()
        + decimal_len(seq)
        + ",\"ts\":".len()
        + decimal_len(ts)
        + ",\"from\":".len()
        + json::str_len(from)
        + ",\"body\":".len()
        + body_len
        + id.map_or(0, |id| ",\"id\":".len() + json::str_len(id))
        + "}".len()
}

/// The same message as a history element: the msg JSON without its `"op":"msg",` member — derive it from MsgFrame
/// by slicing (`{` + rest after the op member), no re-encoding.
///
/// Returns two slices whose concatenation is the object: `(b"{", rest)`. A
/// frame not made by [`encode_msg`] comes back whole as `(b"", json)`.
pub fn history_item(m: &MsgFrame) -> (&[u8], &[u8]) {
    let json = m.json();
    match json.strip_prefix(MSG_PREFIX) {
        Some(rest) => (b"{", rest),
        None => (b"", json),
    }
}

/// `{"op":"ack","ref":..,"room":..,"seq":..,"ts":..,"id":..}`; `id` when given.
pub fn encode_ack(r: Option<&Ref>, room: &str, seq: u64, ts: u64, id: Option<&str>) -> Bytes {
    let mut out = Out::frame(96 + room.len() + id.map_or(0, str::len));
    out.open_op("ack", r);
    out.key("room");
    out.str(room);
    out.key("seq");
    out.u64(seq);
    out.key("ts");
    out.u64(ts);
    if let Some(id) = id {
        out.key("id");
        out.str(id);
    }
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"joined","ref":..,"room":..,"seq":..,"recovered":..}`; `recovered`
/// when the join gave `since`.
pub fn encode_joined(r: Option<&Ref>, room: &str, seq: u64, recovered: Option<bool>) -> Bytes {
    let mut out = Out::frame(112 + room.len());
    out.open_op("joined", r);
    out.key("room");
    out.str(room);
    out.key("seq");
    out.u64(seq);
    if let Some(recovered) = recovered {
        out.key("recovered");
        out.bool(recovered);
    }
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"left","ref":..,"room":..,"reason":..}`: `ref` when answering a
/// `leave`, `reason` when the server left the room for the client (such as
/// `forbidden` after a `refresh` whose token no longer allows it).
pub fn encode_left(r: Option<&Ref>, room: &str, reason: Option<&str>) -> Bytes {
    let mut out = Out::frame(96 + room.len() + reason.map_or(0, str::len));
    out.open_op("left", r);
    out.key("room");
    out.str(room);
    if let Some(reason) = reason {
        out.key("reason");
        out.str(reason);
    }
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"refreshed","ref":..,"exp":..}`: the connection now runs on the
/// new token, which expires at `exp` (seconds since the Unix epoch).
pub fn encode_refreshed(r: Option<&Ref>, exp: u64) -> Bytes {
    let mut out = Out::frame(96);
    out.open_op("refreshed", r);
    out.key("exp");
    out.u64(exp);
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"pong","ref":..}`.
pub fn encode_pong(r: Option<&Ref>) -> Bytes {
    let mut out = Out::frame(96);
    out.open_op("pong", r);
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"error","ref":..,"code":..,"message":..,"retry_after_ms":..}`;
/// `ref` and `retry_after_ms` when given.
pub fn encode_error(r: Option<&Ref>, code: &str, message: &str, retry_after_ms: Option<u64>) -> Bytes {
    let mut out = Out::frame(128 + code.len() + message.len());
    out.open_op("error", r);
    out.key("code");
    out.str(code);
    out.key("message");
    out.str(message);
    if let Some(ms) = retry_after_ms {
        out.key("retry_after_ms");
        out.u64(ms);
    }
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"history","ref":..,"room":..,"messages":[..],"more":..}`, the
/// messages copied from their encoded frames.
pub fn encode_history<'m>(r: Option<&Ref>, room: &str, items: impl Iterator<Item = &'m MsgFrame>, more: bool) -> Bytes {
    let mut out = Out::frame(128 + room.len());
    out.open_op("history", r);
    out.key("room");
    out.str(room);
    out.key("messages");
    out.history_items(items);
    out.key("more");
    out.bool(more);
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// One entry of a presence list: a user and since when (ms since the epoch)
/// it has been in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub user: &'a str,
    pub since: u64,
}

/// `{"op":"presence","ref":..,"room":..,"members":[{"user":..,"since":..},..]}`.
pub fn encode_presence<'a>(r: Option<&Ref>, room: &str, members: impl Iterator<Item = Member<'a>>) -> Bytes {
    let mut out = Out::frame(128 + room.len());
    out.open_op("presence", r);
    out.key("room");
    out.str(room);
    out.key("members");
    out.members(members);
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"op":"presence_diff","room":..,"joins":[..],"leaves":[..]}`.
pub fn encode_presence_diff<'a>(room: &str, joins: &[&'a str], leaves: &[&'a str]) -> Bytes {
    let users: usize = joins.iter().chain(leaves).map(|u| u.len() + 3).sum();
    let mut out = Out::frame(64 + room.len() + users);
    out.open_op("presence_diff", None);
    out.key("room");
    out.str(room);
    out.key("joins");
    out.str_array(joins.iter().copied());
    out.key("leaves");
    out.str_array(leaves.iter().copied());
    out.raw(b"}");
    out.finish_frame_bytes()
}

/// `{"room":..,"messages":[..],"more":..}`: a history page for HTTP.
pub fn history_json<'m>(room: &str, items: impl Iterator<Item = &'m MsgFrame>, more: bool) -> Vec<u8> {
    let mut out = Out::plain(128 + room.len());
    out.raw(b"{\"room\":");
    out.str(room);
    out.key("messages");
    out.history_items(items);
    out.key("more");
    out.bool(more);
    out.raw(b"}");
    out.buf
}

/// `{"room":..,"members":[..]}`: a presence list for HTTP.
pub fn presence_json<'a>(room: &str, members: impl Iterator<Item = Member<'a>>) -> Vec<u8> {
    let mut out = Out::plain(128 + room.len());
    out.raw(b"{\"room\":");
    out.str(room);
    out.key("members");
    out.members(members);
    out.raw(b"}");
    out.buf
}

/// `{"room":..,"seq":..,"ts":..}`: the answer to an HTTP post.
pub fn posted_json(room: &str, seq: u64, ts: u64) -> Vec<u8> {
    let mut out = Out::plain(64 + room.len());
    out.raw(b"{\"room\":");
    out.str(room);
    out.key("seq");
    out.u64(seq);
    out.key("ts");
    out.u64(ts);
    out.raw(b"}");
    out.buf
}

const ERROR_OPEN: &[u8] = b"{\"error\":{\"code\":";
const ERROR_MIDDLE: &[u8] = b",\"message\":";
const ERROR_CLOSE: &[u8] = b"}}";

/// [`error_json`] read back (for a log line about an answer already made).
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorFields,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorFields {
    pub code: String,
    pub message: String,
}

/// `{"error":{"code":..,"message":..}}`: an HTTP error body.
pub fn error_json(code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(error_json_len(code, message));
    push_error_json(&mut out, code, message);
    out
}

/// The exact length of [`error_json`], for a Content-Length written before
/// the body.
pub fn error_json_len(code: &str, message: &str) -> usize {
    ERROR_OPEN.len() + json::str_len(code) + ERROR_MIDDLE.len() + json::str_len(message) + ERROR_CLOSE.len()
}

/// Appends [`error_json`] to `out`, with no buffer of its own.
pub fn push_error_json(out: &mut Vec<u8>, code: &str, message: &str) {
    out.extend_from_slice(ERROR_OPEN);
    json::push_str(out, code);
    out.extend_from_slice(ERROR_MIDDLE);
    json::push_str(out, message);
    out.extend_from_slice(ERROR_CLOSE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;

    fn ok(text: &str) -> Incoming<'_> {
        match decode(text.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn err(text: &str) -> DecodeError {
        match decode(text.as_bytes()) {
            Ok(m) => panic!("{text}: decoded {m:?}"),
            Err(e) => {
                assert_eq!(e.code, "bad_request");
                e
            }
        }
    }

    fn r(text: &str) -> Option<Ref> {
        Some(Ref(text.into()))
    }

    /// Parses a server frame with tungstenite's own header parser and returns
    /// its JSON payload.
    fn payload(frame: &[u8]) -> Value {
        let mut cur = Cursor::new(frame);
        let (header, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
        assert!(header.is_final);
        assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        assert_eq!(header.mask, None);
        let start = cur.position() as usize;
        assert_eq!(frame.len() - start, len as usize, "payload length");
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    /// The room an op names, if it names one.
    fn op_room<'a>(op: &'a Op<'_>) -> Option<&'a str> {
        match op {
            Op::Join { room, .. }
            | Op::Leave { room }
            | Op::Send { room, .. }
            | Op::History { room, .. }
            | Op::Presence { room } => Some(room),
            Op::Ping | Op::Refresh { .. } => None,
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    // --- decode: each op -------------------------------------------------

    #[test]
    fn decodes_join() {
        let m = ok(r#"{"op":"join","room":"lobby","since":0,"ref":1}"#);
        assert_eq!(m.r#ref, r("1"));
        match m.op {
            Op::Join { room, since } => {
                assert_eq!(room, "lobby");
                assert!(matches!(room, Cow::Borrowed(_)));
                assert_eq!(since, Some(0));
            }
            op => panic!("{op:?}"),
        }
        let m = ok(r#"{"op":"join","room":"a:b.c-d_e"}"#);
        assert_eq!(m.r#ref, None);
        assert!(matches!(m.op, Op::Join { since: None, .. }));
        let m = ok(r#"{"op":"join","room":"x","since":18446744073709551615}"#);
        assert!(matches!(m.op, Op::Join { since: Some(u64::MAX), .. }));
        let m = ok(r#"{"op":"join","room":"x","since":null}"#);
        assert!(matches!(m.op, Op::Join { since: None, .. }));
    }

    #[test]
    fn decodes_leave_presence_ping() {
        let m = ok(r#"{"op":"leave","room":"lobby","ref":"z"}"#);
        assert_eq!(m.r#ref, r(r#""z""#));
        assert!(matches!(m.op, Op::Leave { ref room } if room == "lobby"));
        let m = ok(r#"{"op":"presence","room":"lobby"}"#);
        assert!(matches!(m.op, Op::Presence { ref room } if room == "lobby"));
        let m = ok(r#"{"op":"ping","ref":-7}"#);
        assert_eq!(m.r#ref, r("-7"));
        assert!(matches!(m.op, Op::Ping));
        // Extra members are ignored, whatever they hold.
        let m = ok(r#" { "op" : "ping" , "room" : 5, "x": {"y": [1, 2, {}]} } "#);
        assert!(matches!(m.op, Op::Ping));
    }

    #[test]
    fn decodes_refresh() {
        let m = ok(r#"{"op":"refresh","token":"eyJ.eyJ.sig-_","ref":4}"#);
        assert_eq!(m.r#ref, r("4"));
        match m.op {
            Op::Refresh { token } => {
                assert_eq!(token, "eyJ.eyJ.sig-_");
                assert!(matches!(token, Cow::Borrowed(_)));
            }
            op => panic!("{op:?}"),
        }
        // Escapes are undone (a JWT never needs them, but JSON allows them).
        match ok(r#"{"op":"refresh","token":"a\u002eb"}"#).op {
            Op::Refresh { token } => assert_eq!(token, "a.b"),
            op => panic!("{op:?}"),
        }
        let longest = "t".repeat(MAX_TOKEN_BYTES);
        assert!(matches!(ok(&format!(r#"{{"op":"refresh","token":"{longest}"}}"#)).op, Op::Refresh { .. }));
        let too_long = "t".repeat(MAX_TOKEN_BYTES + 1);
        for (text, why) in [
            (r#"{"op":"refresh","ref":"k"}"#.to_string(), "missing token"),
            (r#"{"op":"refresh","token":null,"ref":"k"}"#.to_string(), "token must be a string"),
            (r#"{"op":"refresh","token":7,"ref":"k"}"#.to_string(), "token must be a string"),
            (
                r#"{"op":"refresh","token":"","ref":"k"}"#.to_string(),
                "token must be 1 to 16384 bytes of printable ASCII",
            ),
            (
                r#"{"op":"refresh","token":"a b","ref":"k"}"#.to_string(),
                "token must be 1 to 16384 bytes of printable ASCII",
            ),
            (
                r#"{"op":"refresh","token":"a\nb","ref":"k"}"#.to_string(),
                "token must be 1 to 16384 bytes of printable ASCII",
            ),
            (
                r#"{"op":"refresh","token":"é","ref":"k"}"#.to_string(),
                "token must be 1 to 16384 bytes of printable ASCII",
            ),
            (
                format!(r#"{{"op":"refresh","token":"{too_long}","ref":"k"}}"#),
                "token must be 1 to 16384 bytes of printable ASCII",
            ),
        ] {
            let e = err(&text);
            assert_eq!(e.message, why, "{text:.80}");
            assert_eq!(e.r#ref, r(r#""k""#), "{text:.80}");
        }
    }

    #[test]
    fn decodes_send() {
        let m = ok(r#"{"op":"send","room":"lobby","body":{"text":"hello"},"ref":"a7","id":"m-1"}"#);
        assert_eq!(m.r#ref, r(r#""a7""#));
        match m.op {
            Op::Send { room, body, id } => {
                assert_eq!(room, "lobby");
                assert_eq!(body.get(), r#"{"text":"hello"}"#);
                assert_eq!(id.as_deref(), Some("m-1"));
            }
            op => panic!("{op:?}"),
        }
        // The body is kept exactly as written, whitespace inside included.
        let m = ok(r#"{"op":"send","room":"r","body": [1, "a" , {"b":null}] }"#);
        match m.op {
            Op::Send { body, id, .. } => {
                assert_eq!(body.get(), r#"[1, "a" , {"b":null}]"#);
                assert_eq!(id, None);
            }
            op => panic!("{op:?}"),
        }
        for body in ["null", "0", "-1.5e3", "\"s\"", "true", "[]", "{}"] {
            let text = format!(r#"{{"op":"send","room":"r","body":{body}}}"#);
            match ok(&text).op {
                Op::Send { body: b, .. } => assert_eq!(b.get(), body),
                op => panic!("{op:?}"),
            }
        }
    }

    #[test]
    fn decodes_history() {
        let m = ok(r#"{"op":"history","room":"lobby"}"#);
        match m.op {
            Op::History { room, before, after, limit } => {
                assert_eq!(room, "lobby");
                assert_eq!((before, after, limit), (None, None, 50));
            }
            op => panic!("{op:?}"),
        }
        let limit_of = |text: &str| match ok(text).op {
            Op::History { limit, .. } => limit,
            op => panic!("{op:?}"),
        };
        let cases = [
            ("7", 7),
            ("0", 1),
            ("-5", 1),
            ("-0", 1),
            ("1000", 1000),
            ("1001", 1000),
            ("99999999999999999999999", 1000),
            ("-99999999999999999999999", 1),
            ("null", 50),
        ];
        for (limit, want) in cases {
            let text = format!(r#"{{"op":"history","room":"r","limit":{limit}}}"#);
            assert_eq!(limit_of(&text), want, "{limit}");
        }
        let m = ok(r#"{"op":"history","room":"r","before":10,"after":3,"limit":2}"#);
        assert!(matches!(m.op, Op::History { before: Some(10), after: Some(3), limit: 2, .. }));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let m = ok(r#"{"op":"send","room":"lob\u0062y","body":1,"id":"\"\u00e9\n"}"#);
        match m.op {
            Op::Send { room, id, .. } => {
                assert_eq!(room, "lobby");
                assert!(matches!(room, Cow::Owned(_)));
                assert_eq!(id.as_deref(), Some("\"é\n"));
            }
            op => panic!("{op:?}"),
        }
        // Escaped member names count too.
        let m = ok(r#"{"\u006fp":"ping"}"#);
        assert!(matches!(m.op, Op::Ping));
        // A ref is copied as the client wrote it, escapes and all.
        let m = ok(r#"{"op":"ping","ref":"a\"b\u00e9"}"#);
        assert_eq!(m.r#ref, r(r#""a\"b\u00e9""#));
    }

    #[test]
    fn duplicate_members_last_wins() {
        let m = ok(r#"{"op":"join","room":"a","room":"b","op":"leave"}"#);
        assert!(matches!(m.op, Op::Leave { ref room } if room == "b"));
    }

    // --- decode: errors --------------------------------------------------

    #[test]
    fn not_an_object() {
        for text in ["", " ", "nul", "[]", "1", "\"op\"", "null", "{", "{}x", "{\"op\":\"ping\"}{}"] {
            let e = err(text);
            assert_eq!(e.r#ref, None, "{text}");
        }
        assert_eq!(err("[1]").message, "message must be a JSON object");
        assert!(err("{").message.starts_with("invalid JSON"));
        // Invalid UTF-8 inside a string.
        assert!(decode(b"{\"op\":\"p\xffing\"}").is_err());
        assert!(decode(b"{\"op\":\"ping\",\"ref\":\"\xc3\"}").is_err());
    }

    #[test]
    fn bad_refs() {
        let long = format!(r#"{{"op":"ping","ref":"{}"}}"#, "a".repeat(65));
        let exact = format!(r#"{{"op":"ping","ref":"{}"}}"#, "a".repeat(64));
        assert_eq!(ok(&exact).r#ref.unwrap().0.len(), 66);
        // 64 bytes after unescaping, longer as written.
        let escaped = format!(r#"{{"op":"ping","ref":"{}"}}"#, "\\u00e9".repeat(32));
        assert!(ok(&escaped).r#ref.is_some());
        for text in [
            long.as_str(),
            r#"{"op":"ping","ref":1.5}"#,
            r#"{"op":"ping","ref":1e3}"#,
            r#"{"op":"ping","ref":true}"#,
            r#"{"op":"ping","ref":[1]}"#,
            r#"{"op":"ping","ref":{}}"#,
            r#"{"op":"nope","ref":{}}"#,
        ] {
            let e = err(text);
            assert_eq!(e.r#ref, None, "{text}");
            assert!(e.message.starts_with("ref must be"), "{text}: {}", e.message);
        }
        let m = ok(r#"{"op":"ping","ref":null}"#);
        assert_eq!(m.r#ref, None);
        let huge = format!(r#"{{"op":"ping","ref":{}}}"#, "9".repeat(65));
        assert!(err(&huge).message.starts_with("ref must be"));
        let big = format!(r#"{{"op":"ping","ref":{}}}"#, "9".repeat(30));
        assert_eq!(ok(&big).r#ref.unwrap().0.len(), 30);
    }

    #[test]
    fn errors_keep_the_ref() {
        let long_id = "i".repeat(65);
        let long_room = "r".repeat(129);
        let cases: Vec<(String, &str)> = vec![
            (r#"{"ref":"k"}"#.into(), "missing op"),
            (r#"{"op":1,"ref":"k"}"#.into(), "op must be a string"),
            (r#"{"op":"jump","ref":"k"}"#.into(), "unknown op"),
            (r#"{"op":"JOIN","room":"a","ref":"k"}"#.into(), "unknown op"),
            (r#"{"op":"join","ref":"k"}"#.into(), "missing room"),
            (r#"{"op":"join","room":null,"ref":"k"}"#.into(), "room must be a string"),
            (r#"{"op":"leave","room":7,"ref":"k"}"#.into(), "room must be a string"),
            (r#"{"op":"presence","room":"","ref":"k"}"#.into(), "invalid room name"),
            (r#"{"op":"join","room":"a b","ref":"k"}"#.into(), "invalid room name"),
            (r#"{"op":"join","room":"a/b","ref":"k"}"#.into(), "invalid room name"),
            (r#"{"op":"join","room":"é","ref":"k"}"#.into(), "invalid room name"),
            (r#"{"op":"join","room":"a\u0000","ref":"k"}"#.into(), "invalid room name"),
            (format!(r#"{{"op":"join","room":"{long_room}","ref":"k"}}"#), "invalid room name"),
            (r#"{"op":"join","room":"a","since":-1,"ref":"k"}"#.into(), "since must be"),
            (r#"{"op":"join","room":"a","since":1.0,"ref":"k"}"#.into(), "since must be"),
            (r#"{"op":"join","room":"a","since":"1","ref":"k"}"#.into(), "since must be"),
            (r#"{"op":"join","room":"a","since":18446744073709551616,"ref":"k"}"#.into(), "since must be"),
            (r#"{"op":"history","room":"a","before":-1,"ref":"k"}"#.into(), "before must be"),
            (r#"{"op":"history","room":"a","after":2.5,"ref":"k"}"#.into(), "after must be"),
            (r#"{"op":"history","room":"a","limit":2.5,"ref":"k"}"#.into(), "limit must be"),
            (r#"{"op":"history","room":"a","limit":"5","ref":"k"}"#.into(), "limit must be"),
            (r#"{"op":"history","room":"a","limit":1e2,"ref":"k"}"#.into(), "limit must be"),
            (r#"{"op":"send","room":"a","ref":"k"}"#.into(), "missing body"),
            (r#"{"op":"send","room":"a","body":1,"id":5,"ref":"k"}"#.into(), "id must be a string"),
            (r#"{"op":"send","room":"a","body":1,"id":"","ref":"k"}"#.into(), "id must be 1 to 64"),
            (format!(r#"{{"op":"send","room":"a","body":1,"id":"{long_id}","ref":"k"}}"#), "id must be 1 to 64"),
            (r#"{"op":"send","body":1,"ref":"k"}"#.into(), "missing room"),
        ];
        for (text, want) in &cases {
            let e = err(text);
            assert_eq!(e.r#ref, r(r#""k""#), "{text}");
            assert!(e.message.starts_with(want), "{text}: {}", e.message);
            // The same error with an integer ref, and with none.
            let int = text.replace(r#""ref":"k""#, r#""ref":42"#);
            assert_eq!(err(&int).r#ref, r("42"), "{int}");
            let none = text.replace(r#","ref":"k""#, "").replace(r#""ref":"k""#, "");
            assert_eq!(err(&none).r#ref, None, "{none}");
        }
        // The error reply carries the ref.
        let e = err(r#"{"op":"jump","ref":"k"}"#);
        let v = payload(&encode_error(e.r#ref.as_ref(), e.code, &e.message, None));
        assert_eq!(v, json!({"op":"error","ref":"k","code":"bad_request","message":"unknown op"}));
        let id64 = "i".repeat(64);
        let text = format!(r#"{{"op":"send","room":"a","body":1,"id":"{id64}"}}"#);
        assert!(matches!(ok(&text).op, Op::Send { id: Some(_), .. }));
    }

    #[test]
    fn room_names() {
        assert!(valid_room("a"));
        assert!(valid_room(&"Z".repeat(128)));
        assert!(valid_room("AZaz09_.:-"));
        assert!(!valid_room(""));
        assert!(!valid_room(&"a".repeat(129)));
        for bad in ["a b", "a/b", "a\"", "é", "a\n", "a,b", "#"] {
            assert!(!valid_room(bad), "{bad:?}");
        }
    }

    #[test]
    fn decodes_post_bodies() {
        let p = decode_post(br#"{"body":{"text":"hi"},"id":"m-1","extra":1}"#).unwrap();
        assert_eq!(p.body.get(), r#"{"text":"hi"}"#);
        assert_eq!(p.id.as_deref(), Some("m-1"));
        let p = decode_post(br#"{"body":null}"#).unwrap();
        assert_eq!(p.body.get(), "null");
        assert_eq!(p.id, None);
        let p = decode_post(br#"{"body":1,"id":"\u00e9"}"#).unwrap();
        assert_eq!(p.id.as_deref(), Some("é"));
        for bad in [&b"{}"[..], b"[]", b"", b"{\"body\":1,\"id\":2}", b"{\"body\":1,\"id\":\"\"}"] {
            let e = decode_post(bad).unwrap_err();
            assert_eq!((e.code, e.r#ref), ("bad_request", None));
        }
    }

    // --- encoding --------------------------------------------------------

    #[test]
    fn frame_header_lengths() {
        let cases: [(usize, &[u8]); 5] = [
            (0, &[0x81, 0]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65535, &[0x81, 126, 0xff, 0xff]),
            (65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for (len, want) in cases {
            let mut out = Out::frame(len);
            out.raw(&vec![b'x'; len]);
            let (frame, n) = out.finish_frame();
            assert_eq!(n, want.len(), "{len}");
            assert_eq!(&frame[..n], want, "{len}");
            assert_eq!(frame.len(), n + len);
            assert!(frame[n..].iter().all(|&b| b == b'x'));
            let (header, plen) = FrameHeader::parse(&mut Cursor::new(&frame[..])).unwrap().unwrap();
            assert_eq!(plen, len as u64);
            assert_eq!(header.len(plen), n);
        }
    }

    #[test]
    fn msg_frame() {
        let body = raw(r#"{"text":"hello"}"#);
        let m = encode_msg("lobby", 3, 1764441602000, "dev", &body, Some("m-1"));
        assert_eq!(m.json_start, 2);
        assert_eq!(
            m.json(),
            br#"{"op":"msg","room":"lobby","seq":3,"ts":1764441602000,"from":"dev","body":{"text":"hello"},"id":"m-1"}"#
        );
        assert_eq!(
            payload(&m.frame),
            json!({"op":"msg","room":"lobby","seq":3,"ts":1764441602000u64,"from":"dev","body":{"text":"hello"},"id":"m-1"})
        );
        let m = encode_msg("r", 0, u64::MAX, "u", &raw("null"), None);
        assert_eq!(payload(&m.frame), json!({"op":"msg","room":"r","seq":0,"ts":u64::MAX,"from":"u","body":null}));
        // Clones share the one buffer.
        let c = m.frame.clone();
        assert_eq!(c.as_ptr(), m.frame.as_ptr());
    }

    #[test]
    fn msg_frame_sizes_and_exact_allocation() {
        for body_len in [0usize, 50, 100, 130, 65_000, 65_600, 200_000] {
            let text = format!("\"{}\"", "b".repeat(body_len));
            let body = raw(&text);
            for id in [None, Some("i\"\u{1}d")] {
                let m = encode_msg("ro\"om\n", 12345, 99, "fr\u{7f}é\u{1f}", &body, id);
                let v = payload(&m.frame);
                assert_eq!(v["body"], Value::String("b".repeat(body_len)));
                assert_eq!(v["room"], "ro\"om\n");
                assert_eq!(v["from"], "fr\u{7f}é\u{1f}");
                assert_eq!(v.get("id").and_then(Value::as_str), id);
                let want_hdr = match m.json().len() {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                };
                assert_eq!(m.json_start, want_hdr);
                let len = msg_json_len("ro\"om\n", 12345, 99, "fr\u{7f}é\u{1f}", text.len(), id);
                assert_eq!(m.json().len(), len);
            }
        }
        // The length estimate is exact, so the frame's buffer has no slack.
        for s in ["", "a", "\"\\", "\u{0}\u{8}\u{c}\n\r\t\u{1f}", "é€😀", "a\u{7f}"] {
            assert_eq!(json::str_len(s), serde_json::to_vec(s).unwrap().len(), "{s:?}");
            let mut out = Out::plain(0);
            out.str(s);
            assert_eq!(out.buf, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for n in [0, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len());
            let mut out = Out::plain(0);
            out.u64(n);
            assert_eq!(out.buf, n.to_string().as_bytes());
        }
    }

    #[test]
    fn history_item_is_msg_without_op() {
        let body = raw(r#"[1,{"a":"b"}]"#);
        let m = encode_msg("lobby", 7, 1000, "ann", &body, Some("x"));
        let (open, rest) = history_item(&m);
        assert_eq!(open, b"{");
        let item: Value = serde_json::from_slice(&[open, rest].concat()).unwrap();
        let mut full = payload(&m.frame);
        full.as_object_mut().unwrap().remove("op");
        assert_eq!(item, full);
        // A hand-made frame that is not a msg comes back whole.
        let odd = MsgFrame { frame: Bytes::from_static(b"\x81\x02{}"), json_start: 2 };
        assert_eq!(history_item(&odd), (&b""[..], &b"{}"[..]));
        let broken = MsgFrame { frame: Bytes::from_static(b"ab"), json_start: 9 };
        assert_eq!(history_item(&broken), (&b""[..], &b""[..]));
    }

    #[test]
    fn replies() {
        let k = Ref("\"a7\"".into());
        let n = Ref("12".into());
        assert_eq!(
            payload(&encode_ack(Some(&k), "lobby", 3, 1764441602000, Some("m-1"))),
            json!({"op":"ack","ref":"a7","room":"lobby","seq":3,"ts":1764441602000u64,"id":"m-1"})
        );
        assert_eq!(payload(&encode_ack(None, "r", 1, 2, None)), json!({"op":"ack","room":"r","seq":1,"ts":2}));
        assert_eq!(
            payload(&encode_joined(Some(&n), "lobby", 2, Some(true))),
            json!({"op":"joined","ref":12,"room":"lobby","seq":2,"recovered":true})
        );
        assert_eq!(payload(&encode_joined(None, "lobby", 0, None)), json!({"op":"joined","room":"lobby","seq":0}));
        assert_eq!(payload(&encode_joined(None, "l", 5, Some(false)))["recovered"], false);
        assert_eq!(payload(&encode_left(Some(&k), "lobby", None)), json!({"op":"left","ref":"a7","room":"lobby"}));
        assert_eq!(
            payload(&encode_left(None, "lobby", Some("forbidden"))),
            json!({"op":"left","room":"lobby","reason":"forbidden"})
        );
        assert_eq!(
            payload(&encode_refreshed(Some(&k), 1_764_441_600)),
            json!({"op":"refreshed","ref":"a7","exp":1_764_441_600u64})
        );
        assert_eq!(payload(&encode_refreshed(None, u64::MAX)), json!({"op":"refreshed","exp":u64::MAX}));
        assert_eq!(payload(&encode_pong(Some(&n))), json!({"op":"pong","ref":12}));
        assert_eq!(payload(&encode_pong(None)), json!({"op":"pong"}));
        assert_eq!(
            payload(&encode_error(Some(&k), "rate_limited", "slow \"down\"\n", Some(250))),
            json!({"op":"error","ref":"a7","code":"rate_limited","message":"slow \"down\"\n","retry_after_ms":250})
        );
        assert_eq!(
            payload(&encode_error(None, "internal", "", None)),
            json!({"op":"error","code":"internal","message":""})
        );
        // A ref taken from decode goes back out verbatim.
        let m = ok(r#"{"op":"ping","ref":"x\"\u00e9\\"}"#);
        assert_eq!(payload(&encode_pong(m.r#ref.as_ref())), json!({"op":"pong","ref":"x\"é\\"}));
    }

    #[test]
    fn history_replies() {
        let msgs: Vec<MsgFrame> = (1..=3)
            .map(|seq| {
                let body = raw(&format!(r#"{{"n":{seq}}}"#));
                encode_msg("lobby", seq, 1000 + seq, "ann", &body, (seq == 2).then_some("x"))
            })
            .collect();
        let want_items = json!([
            {"room":"lobby","seq":1,"ts":1001,"from":"ann","body":{"n":1}},
            {"room":"lobby","seq":2,"ts":1002,"from":"ann","body":{"n":2},"id":"x"},
            {"room":"lobby","seq":3,"ts":1003,"from":"ann","body":{"n":3}},
        ]);
        let k = Ref("1".into());
        assert_eq!(
            payload(&encode_history(Some(&k), "lobby", msgs.iter(), true)),
            json!({"op":"history","ref":1,"room":"lobby","messages":want_items,"more":true})
        );
        assert_eq!(
            payload(&encode_history(None, "lobby", [].iter(), false)),
            json!({"op":"history","room":"lobby","messages":[],"more":false})
        );
        let http: Value = serde_json::from_slice(&history_json("lobby", msgs.iter(), false)).unwrap();
        assert_eq!(http, json!({"room":"lobby","messages":want_items,"more":false}));
        let http: Value = serde_json::from_slice(&history_json("r", msgs[..1].iter(), true)).unwrap();
        assert_eq!(http["messages"].as_array().unwrap().len(), 1);
        // A page past 64 KiB gets the 8-byte length header.
        let big = raw(&format!("\"{}\"", "z".repeat(40_000)));
        let bigs = [encode_msg("r", 1, 1, "u", &big, None), encode_msg("r", 2, 2, "u", &big, None)];
        let frame = encode_history(None, "r", bigs.iter(), false);
        assert_eq!(&frame[..2], &[0x81, 127]);
        assert_eq!(payload(&frame)["messages"][1]["seq"], 2);
    }

    #[test]
    fn presence_replies() {
        let members = [Member { user: "ann", since: 10 }, Member { user: "b\"o\u{1}é", since: 20 }];
        let k = Ref("\"p\"".into());
        assert_eq!(
            payload(&encode_presence(Some(&k), "lobby", members.iter().copied())),
            json!({"op":"presence","ref":"p","room":"lobby","members":[
                {"user":"ann","since":10},{"user":"b\"o\u{1}é","since":20}]})
        );
        assert_eq!(
            payload(&encode_presence(None, "lobby", std::iter::empty())),
            json!({"op":"presence","room":"lobby","members":[]})
        );
        let http: Value = serde_json::from_slice(&presence_json("lobby", members.iter().copied())).unwrap();
        assert_eq!(
            http,
            json!({"room":"lobby","members":[{"user":"ann","since":10},{"user":"b\"o\u{1}é","since":20}]})
        );
        assert_eq!(
            payload(&encode_presence_diff("lobby", &["ann", "c\\d"], &[])),
            json!({"op":"presence_diff","room":"lobby","joins":["ann","c\\d"],"leaves":[]})
        );
        assert_eq!(
            payload(&encode_presence_diff("lobby", &[], &["x", "\u{2028}\t"])),
            json!({"op":"presence_diff","room":"lobby","joins":[],"leaves":["x","\u{2028}\t"]})
        );
    }

    #[test]
    fn http_bodies() {
        let v: Value = serde_json::from_slice(&posted_json("lobby", 9, 1234)).unwrap();
        assert_eq!(v, json!({"room":"lobby","seq":9,"ts":1234}));
        let v: Value = serde_json::from_slice(&error_json("not_found", "no \"room\"")).unwrap();
        assert_eq!(v, json!({"error":{"code":"not_found","message":"no \"room\""}}));
        assert_eq!(error_json("bad_request", "x"), br#"{"error":{"code":"bad_request","message":"x"}}"#);
        for (code, message) in [("", ""), ("c\u{1}", "é \"\\ \n\u{7f}")] {
            let body = error_json(code, message);
            assert_eq!(body.len(), error_json_len(code, message));
            let mut out = b"x".to_vec();
            push_error_json(&mut out, code, message);
            assert_eq!(out[1..], body[..]);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v, json!({"error":{"code":code,"message":message}}));
        }
    }

    #[test]
    fn send_round_trip_keeps_body_bytes() {
        let text = br#"{"op":"send","room":"lobby","body":{"b": [1.0, "\u00e9", 1e400000000000000000]},"id":"q"}"#;
        // serde_json refuses numbers out of f64 range, so keep to valid ones.
        let text = std::str::from_utf8(text).unwrap().replace("1e400000000000000000", "1e300");
        let m = ok(&text);
        let Op::Send { room, body, id } = m.op else {
            panic!("not a send");
        };
        let f = encode_msg(&room, 1, 2, "u", body, id.as_deref());
        let json = std::str::from_utf8(f.json()).unwrap();
        assert!(json.contains(r#""body":{"b": [1.0, "\u00e9", 1e300]}"#), "{json}");
    }

    // --- body rules ------------------------------------------------------

    /// The nesting depth of a JSON value, the obvious recursive way.
    fn depth_of(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(members) => 1 + members.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// `n` opening brackets, a scalar, and `n` closing ones.
    fn nested(n: usize) -> String {
        format!("{}0{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn body_depth() {
        for (body, depth) in [
            ("0", 0),
            ("\"s\"", 0),
            ("null", 0),
            ("[]", 1),
            ("{}", 1),
            ("[1,[2],{\"a\":{\"b\":[]}}]", 4),
            ("[[],[],[]]", 2),
            ("{\"[[[[\":\"]]]]{{{{\"}", 1),
            ("[\"\\\"[[[\"]", 1),
            ("[\"\\\\\",[[1]]]", 3),
            (" [ [ ] , { \"k\" : [ 1 ] } ] ", 3),
        ] {
            assert_eq!(check_body(body, depth), Ok(()), "{body}");
            if depth > 0 {
                assert_eq!(check_body(body, depth - 1), Err(BodyError::TooDeep(depth - 1)), "{body}");
            }
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(depth_of(&v), depth, "{body}");
        }
        assert_eq!(check_body(&nested(64), 64), Ok(()));
        let e = check_body(&nested(65), 64).unwrap_err();
        assert_eq!(e.to_string(), "body nests deeper than 64 levels");
        // The 30,000 nested arrays of the old report.
        assert_eq!(check_body(&nested(30_000), 64), Err(BodyError::TooDeep(64)));
        assert_eq!(check_body(&nested(30_000), 30_000), Ok(()));
    }

    #[test]
    fn body_numbers() {
        let hundred = format!("1{}", "0".repeat(99));
        let long_int = format!("1{}", "0".repeat(100));
        let long_frac = format!("0.{}1", "0".repeat(98));
        for good in [
            "0",
            "-0",
            "1.5",
            "-1.5e3",
            "1E+300",
            "1e-400",
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "18446744073709551616",
            "5e-324",
            hundred.as_str(),
            "[1,2.5,{\"a\":-3e2}]",
            "\"1e400\"",
            "{\"1e400\":\"9999\"}",
            "[\"\\\"\", 1e300]",
        ] {
            assert_eq!(check_body(good, 64), Ok(()), "{good}");
        }
        for bad in [
            "1e400",
            "-1e400",
            "1E+309",
            "1.8e308",
            "[1,1e400]",
            "{\"a\":[0,{\"b\":-1e999999999999999999}]}",
            long_int.as_str(),
            long_frac.as_str(),
            "[\"x\",1e400,\"y\"]",
        ] {
            let e = check_body(bad, 64).unwrap_err();
            assert_eq!(e, BodyError::BadNumber, "{bad}");
            assert_eq!(e.to_string(), "numbers must be finite doubles of at most 100 characters");
        }
        assert_eq!(long_frac.len(), 101);
        // Every body above is JSON that decode lets through as a send body.
        for body in ["1e400", long_int.as_str()] {
            let text = format!(r#"{{"op":"send","room":"r","body":{body}}}"#);
            let Op::Send { body: b, .. } = ok(&text).op else { panic!("not a send") };
            assert_eq!(check_body(b.get(), 64), Err(BodyError::BadNumber));
        }
    }

    #[test]
    fn body_check_takes_any_text() {
        for junk in [
            "",
            "[",
            "]]]]",
            "}",
            "\"",
            "\"\\",
            "\\",
            "-",
            "--",
            "1e",
            "1e+",
            ".5",
            "1..2",
            "-inf",
            "nan",
            "[1,",
            "\u{0}",
            "\"unterminated [[[",
            "é[",
            "[\"é\\",
        ] {
            let _ = check_body(junk, 1);
            let _ = check_body(junk, 0);
        }
        // Closing more than was opened does not go below zero.
        assert_eq!(check_body("]]]][", 1), Ok(()));
        assert_eq!(check_body("]]]][[", 1), Err(BodyError::TooDeep(1)));
    }

    /// Runs `f` on a thread with the standard 2 MiB stack, as the reactor
    /// threads have, and returns its result (a stack overflow would abort
    /// the whole test binary instead).
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        const N: usize = 10_000_000;
        let verdicts = on_small_stack(|| {
            let arrays = nested(N);
            let objects = format!("{}0{}", "{\"a\":".repeat(N), "}".repeat(N));
            let unclosed = "[".repeat(N);
            let mut verdicts = Vec::new();
            for (name, body) in [("arrays", &arrays), ("objects", &objects)] {
                let send = format!(r#"{{"op":"send","room":"r","body":{body},"id":"q"}}"#);
                let got = match decode(send.as_bytes()) {
                    Ok(Incoming { op: Op::Send { body: b, .. }, .. }) => {
                        (b.get().len() == body.len(), check_body(b.get(), 64))
                    }
                    other => panic!("{name}: {other:?}"),
                };
                verdicts.push((name, got));
                let post = format!(r#"{{"body":{body}}}"#);
                let p = decode_post(post.as_bytes()).unwrap();
                verdicts.push((name, (p.body.get().len() == body.len(), check_body(p.body.get(), 64))));
                // Deep values in members that are skipped, or in the ref.
                let skipped = format!(r#"{{"op":"ping","x":{body}}}"#);
                assert!(matches!(decode(skipped.as_bytes()), Ok(Incoming { op: Op::Ping, .. })));
                let deep_ref = format!(r#"{{"op":"ping","ref":{body}}}"#);
                assert!(decode(deep_ref.as_bytes()).is_err());
                // Deep at the top: not an object, refused at once.
                assert!(decode(body.as_bytes()).is_err());
                assert!(decode_post(body.as_bytes()).is_err());
            }
            let send = format!(r#"{{"op":"send","room":"r","body":{unclosed}"#);
            assert!(decode(send.as_bytes()).is_err());
            assert!(decode_post(format!(r#"{{"body":{unclosed}"#).as_bytes()).is_err());
            assert_eq!(check_body(&unclosed, usize::MAX), Ok(()));
            verdicts
        });
        for (name, (whole, verdict)) in verdicts {
            assert!(whole, "{name}: the raw body is kept whole");
            assert_eq!(verdict, Err(BodyError::TooDeep(64)), "{name}");
        }
    }

    /// JSON values with strings made to look like structure and numbers.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[\\[\\]{}\"\\\\0-9eE.+ -]{0,12}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(12, 96, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(("[\\[\\]{}\"\\\\0-9e]{0,6}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn body_check_agrees_with_recursive_depth(v in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let depth = depth_of(&v);
            prop_assert_eq!(check_body(&text, depth), Ok(()), "{}", text);
            if depth > 0 {
                prop_assert_eq!(check_body(&text, depth - 1), Err(BodyError::TooDeep(depth - 1)), "{}", text);
            }
            prop_assert_eq!(check_body(&text, usize::MAX), Ok(()));
            // And the same body travels through decode unchanged.
            let send = format!(r#"{{"op":"send","room":"r","body":{text}}}"#);
            let m = decode(send.as_bytes()).unwrap();
            let Op::Send { body, .. } = m.op else { panic!("not a send") };
            prop_assert_eq!(body.get(), text.as_str());
        }

        #[test]
        fn body_check_never_panics(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..8) {
            let _ = check_body(&text, max);
            let _ = check_body(&String::from_utf8_lossy(&bytes), max);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&data);
            let _ = decode_post(&data);
        }

        #[test]
        fn decode_never_panics_on_near_messages(
            parts in proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "op", "ref", "room", "since", "before", "after", "limit", "body", "id", "token", "x",
                    ]),
                    prop::sample::select(vec![
                        "\"join\"", "\"leave\"", "\"send\"", "\"history\"", "\"presence\"",
                        "\"ping\"", "\"refresh\"", "\"lobby\"", "\"\"", "\"a\\u0062\"", "\"\\ud800\"", "0", "-1",
                        "1.5", "1e3", "18446744073709551616", "null", "true", "[]", "{}",
                        "\"é\"", "{\"a\":[1,{}]}",
                    ]),
                ),
                0..8,
            ),
            cut in 0usize..200,
        ) {
            let members: Vec<String> = parts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{{}}}", members.join(","));
            let whole = decode(text.as_bytes());
            if let Ok(m) = &whole {
                // Anything accepted names a valid room, when it names one.
                if let Some(room) = op_room(&m.op) {
                    prop_assert!(valid_room(room));
                }
                if let Op::Refresh { token } = &m.op {
                    prop_assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
                }
            }
            let cut = cut.min(text.len());
            let _ = decode(&text.as_bytes()[..cut]);
        }

        #[test]
        fn msg_encoding_round_trips(
            room in "\\PC{0,40}",
            from in any::<String>(),
            id in proptest::option::of(any::<String>()),
            seq in any::<u64>(),
            ts in any::<u64>(),
        ) {
            let body = raw(&serde_json::to_string(&from).unwrap());
            let m = encode_msg(&room, seq, ts, &from, &body, id.as_deref());
            prop_assert_eq!(
                m.json().len(),
                msg_json_len(&room, seq, ts, &from, body.get().len(), id.as_deref())
            );
            let v = payload(&m.frame);
            prop_assert_eq!(&v["room"], &Value::String(room.clone()));
            prop_assert_eq!(&v["from"], &Value::String(from.clone()));
            prop_assert_eq!(&v["body"], &Value::String(from.clone()));
            prop_assert_eq!(v["seq"].as_u64(), Some(seq));
            prop_assert_eq!(v["ts"].as_u64(), Some(ts));
            prop_assert_eq!(v.get("id").and_then(Value::as_str), id.as_deref());
            let (open, rest) = history_item(&m);
            let item: Value = serde_json::from_slice(&[open, rest].concat()).unwrap();
            let mut full = v.clone();
            full.as_object_mut().unwrap().remove("op");
            prop_assert_eq!(item, full);
        }
    }
}
