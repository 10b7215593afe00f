//! HTTP/1.1 requests and responses, sans-IO.
//!
//! Owns: parsing one request from the front of a connection's read buffer
//! (the head with httparse, the body by Content-Length or chunked coding),
//! the size limits and which error each broken limit answers, response heads
//! (error responses carry [`msg::error_json`]'s body), and the checks on a
//! WebSocket upgrade request.
//! Does not own: sockets, buffers, routing, timeouts, or the
//! Sec-WebSocket-Accept computation; the connection state machine and the
//! WebSocket layer own those.
//!
//! Pipelining: [`parse_request`] looks only at the front of the buffer and
//! says how many bytes the request took; the caller drops those bytes and
//! calls again on the rest. Nothing is remembered between calls, so an
//! incomplete request is parsed again from its start when more bytes arrive.
//! The limits bound that repeated work, and the incomplete case allocates
//! nothing: the head is parsed into a stack array and a chunked body is
//! validated in a first pass before a second pass copies it out.

use httparse::Status;

use super::{msg, push_decimal};

/// Most header fields a request may carry, whatever [`Limits::max_headers`]
/// says: httparse fills an array of this many slots on the stack.
pub const MAX_HEADERS_CAP: usize = 128;

/// Longest chunk-size line (size, extensions and CRLF) in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// Size limits on one request. Breaking one is answered by the
/// [`HttpError`] it names and the connection is closed.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes from the start of the buffer (empty lines before the request
    /// line included) to the end of the blank line closing the head.
    /// Also the budget for chunked framing: chunk-size lines, the CRLFs
    /// after chunk data and the trailer section.
    pub max_head: usize,
    /// Bytes in the request target (path and query together).
    pub max_target: usize,
    /// Header fields in the head; at most [`MAX_HEADERS_CAP`] count.
    pub max_headers: usize,
    /// Bytes of body after any chunked coding is removed.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 16 * 1024, max_target: 8 * 1024, max_headers: 64, max_body: 1024 * 1024 }
    }
}

impl Limits {
    /// The most bytes one request can occupy on the wire under these limits:
    /// [`parse_request`] never answers "need more bytes" for a buffer this
    /// long, so a read buffer of this capacity never stalls.
    pub fn max_request_bytes(&self) -> usize {
        self.max_head.saturating_mul(2).saturating_add(self.max_body)
    }
}

/// Request method. Methods are case-sensitive: `get` is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// One parsed request, owning copies of its parts.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Target up to the first `?`, as sent (not percent-decoded).
    pub path: String,
    /// Target after the first `?`, raw; empty if there is none.
    pub query: String,
    /// 0 or 1.
    pub minor_version: u8,
    /// In the order sent; names lower-cased, values with surrounding
    /// whitespace removed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body with any chunked coding removed.
    pub body: Vec<u8>,
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
}

impl Request {
    /// The first header of this name (give it lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// Whether any header of this name lists `token` in its comma-separated
    /// value, compared case-insensitively (`Connection: keep-alive, Upgrade`).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).any(|(_, v)| list_has_token(v, token))
    }

    /// The first query parameter whose decoded name is `name`, with `%XX`
    /// and `+` decoded. A `%` not followed by two hex digits stays as it is.
    /// None if absent or if the decoded value is not UTF-8.
    pub fn query_param(&self, name: &str) -> Option<String> {
        for pair in self.query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if PercentDecode::new(key.as_bytes()).eq(name.bytes()) {
                return String::from_utf8(PercentDecode::new(value.as_bytes()).collect()).ok();
            }
        }
        None
    }
}

/// The credentials of an `Authorization: Bearer <token>` header value, or
/// `None` when the scheme is another or the rest is not a plausible token
/// (JWTs are ASCII: base64url and dots).
pub fn bearer_token(h: &[u8]) -> Option<&str> {
    let h = h.trim_ascii();
    let (scheme, rest) = h.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    if token.is_empty() || !token.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// Why a request cannot be served. Every variant means: answer
/// [`HttpError::status`] and close, since the framing of what follows is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("a body needs Content-Length")]
    LengthRequired,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("unsupported transfer coding")]
    NotImplemented,
    #[error("HTTP version not supported")]
    VersionNotSupported,
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge(_) => 431,
            HttpError::UriTooLong(_) => 414,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::LengthRequired => 411,
            HttpError::BadRequest(_) => 400,
            HttpError::NotImplemented => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// The error code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge(_) | HttpError::UriTooLong(_) | HttpError::BodyTooLarge(_) => "too_large",
            HttpError::LengthRequired
            | HttpError::BadRequest(_)
            | HttpError::NotImplemented
            | HttpError::VersionNotSupported => "bad_request",
        }
    }
}

/// How the body of a request is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

/// For a request whose head is complete in `buf` and whose body has a
/// `Content-Length`: the bytes the whole request takes. A caller waiting for
/// the body then parses again only once that much is there, instead of
/// re-parsing the head for every piece of a body sent slowly. `None` when
/// the head is not complete, is invalid, or the body is chunked.
pub fn request_len(buf: &[u8], limits: &Limits) -> Option<usize> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let slots = slots.get_mut(..limits.max_headers.min(MAX_HEADERS_CAP)).unwrap_or_default();
    let mut head = httparse::Request::new(slots);
    let window = buf.get(..limits.max_head).unwrap_or(buf);
    let Ok(Status::Complete(head_len)) = head.parse(window) else {
        return None;
    };
    let (Some(method), Some(minor_version)) = (head.method, head.version) else {
        return None;
    };
    match framing(head.headers, Method::from_token(method), minor_version, limits) {
        Ok(Framing::Length(n)) => head_len.checked_add(n),
        _ => None,
    }
}

/// Parses one request from the front of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((req, consumed)))`: the request took
/// the first `consumed` bytes. `Err`: answer `err.status()` and close.
/// Limits are enforced as early as the bytes allow: a long target or an
/// oversized Content-Length fails before the rest of the request arrives.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let slots = slots.get_mut(..limits.max_headers.min(MAX_HEADERS_CAP)).unwrap_or_default();
    let mut head = httparse::Request::new(slots);
    // Parsing only the first max_head bytes keeps the work per call bounded
    // and makes "head not complete within max_head" a plain Partial.
    let window = buf.get(..limits.max_head).unwrap_or(buf);
    let head_len = match head.parse(window) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => {
            // The target check comes first: a target longer than the head
            // budget is better answered 414 than 431.
            if target_len_so_far(buf) > limits.max_target {
                return Err(HttpError::UriTooLong(limits.max_target));
            }
            if buf.len() > limits.max_head {
                return Err(HttpError::HeadTooLarge(limits.max_head));
            }
            return Ok(None);
        }
        Err(e) => return Err(head_error(e, buf, limits)),
    };
    let (Some(method), Some(target), Some(minor_version)) = (head.method, head.path, head.version) else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    if target.len() > limits.max_target {
        return Err(HttpError::UriTooLong(limits.max_target));
    }
    let fields: &[httparse::Header<'_>] = &*head.headers;
    let method = Method::from_token(method);
    let framing = framing(fields, method, minor_version, limits)?;

    // Completeness is decided before anything is allocated.
    let body_bytes = buf.get(head_len..).unwrap_or_default();
    let (body, consumed) = match framing {
        Framing::Length(n) => match body_bytes.get(..n) {
            Some(body) => (body.to_vec(), head_len + n),
            None => return Ok(None),
        },
        Framing::Chunked => match walk_chunked(body_bytes, limits, None)? {
            None => return Ok(None),
            Some(scan) => {
                let mut body = Vec::with_capacity(scan.body_len);
                walk_chunked(body_bytes, limits, Some(&mut body))?;
                (body, head_len + scan.wire_len)
            }
        },
    };

    let close = fields_have_token(fields, "connection", "close");
    let keep_alive =
        if minor_version == 1 { !close } else { !close && fields_have_token(fields, "connection", "keep-alive") };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = fields.iter().map(|h| (h.name.to_ascii_lowercase(), trim_ows(h.value).to_vec())).collect();
    let req =
        Request { method, path: path.to_owned(), query: query.to_owned(), minor_version, headers, body, keep_alive };
    Ok(Some((req, consumed)))
}

/// Decides how the body is delimited from the header fields, refusing the
/// ambiguous combinations that enable request smuggling (RFC 9112 6.1, 6.3).
fn framing(
    fields: &[httparse::Header<'_>],
    method: Method,
    minor_version: u8,
    limits: &Limits,
) -> Result<Framing, HttpError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut other_coding = false;
    let mut hosts = 0usize;
    for field in fields {
        if field.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(field.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in list_items(field.value) {
                // chunked must be the final coding, and applied once.
                if chunked {
                    return Err(HttpError::BadRequest("chunked is not the final transfer coding"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    other_coding = true;
                }
            }
        } else if field.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if minor_version == 1 && hosts == 0 {
        return Err(HttpError::BadRequest("missing Host header"));
    }
    if hosts > 1 {
        return Err(HttpError::BadRequest("more than one Host header"));
    }
    if transfer_encoding {
        if content_length.is_some() {
            return Err(HttpError::BadRequest("both Content-Length and Transfer-Encoding"));
        }
        if minor_version == 0 {
            return Err(HttpError::BadRequest("Transfer-Encoding in HTTP/1.0"));
        }
        if other_coding {
            return Err(HttpError::NotImplemented);
        }
        if !chunked {
            return Err(HttpError::BadRequest("empty Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match content_length {
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= limits.max_body => Ok(Framing::Length(n)),
            _ => Err(HttpError::BodyTooLarge(limits.max_body)),
        },
        None if matches!(method, Method::Post | Method::Put | Method::Patch) => Err(HttpError::LengthRequired),
        None => Ok(Framing::Length(0)),
    }
}

/// A Content-Length value: digits, or a list of identical digit runs
/// (`5, 5`, which RFC 9110 8.6 lets a recipient accept). Numbers too large
/// for u64 saturate, which any body limit refuses.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let mut length = None;
    for item in value.split(|&b| b == b',') {
        let item = trim_ows(item);
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::BadRequest("invalid Content-Length"));
        }
        let n = item.iter().fold(0u64, |acc, &d| acc.saturating_mul(10).saturating_add(u64::from(d - b'0')));
        if length.is_some_and(|prev| prev != n) {
            return Err(HttpError::BadRequest("conflicting Content-Length"));
        }
        length = Some(n);
    }
    length.ok_or(HttpError::BadRequest("invalid Content-Length"))
}

fn head_error(e: httparse::Error, buf: &[u8], limits: &Limits) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::HeadTooLarge(limits.max_head),
        httparse::Error::Version if version_looks_like_http(buf) => HttpError::VersionNotSupported,
        httparse::Error::Version => HttpError::BadRequest("invalid HTTP version"),
        httparse::Error::HeaderName => HttpError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid header value"),
        httparse::Error::NewLine => HttpError::BadRequest("invalid line ending"),
        httparse::Error::Token | httparse::Error::Status => HttpError::BadRequest("invalid request line"),
    }
}

/// The request line, after any empty lines, up to its line ending or the end
/// of the buffer.
fn first_line(buf: &[u8]) -> &[u8] {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let line = buf.get(start..).unwrap_or_default();
    let end = line.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(line.len());
    line.get(..end).unwrap_or_default()
}

/// Whether httparse refused the version of a request line that names some
/// other HTTP version (`HTTP/2.0` of the HTTP/2 preface, `HTTP/1.2`), which
/// deserves 505 rather than 400.
fn version_looks_like_http(buf: &[u8]) -> bool {
    let line = first_line(buf);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', d, ..] if d.is_ascii_digit())
}

/// How many bytes of request target have arrived, complete or not: the
/// bytes after the first space of the request line up to the next space or
/// line ending. Lets a long target fail before the head is complete.
fn target_len_so_far(buf: &[u8]) -> usize {
    let line = first_line(buf);
    match line.iter().position(|&b| b == b' ') {
        Some(sp) => {
            let target = line.get(sp + 1..).unwrap_or_default();
            target.iter().position(|&b| b == b' ').unwrap_or(target.len())
        }
        None => 0,
    }
}

/// Where a complete chunked body ends and how long it decodes to.
struct ChunkedScan {
    wire_len: usize,
    body_len: usize,
}

fn framing_budget(used: usize, limits: &Limits) -> Result<(), HttpError> {
    if used > limits.max_head {
        Err(HttpError::BodyTooLarge(limits.max_body))
    } else {
        Ok(())
    }
}

/// Walks a chunked body at the front of `buf`. With `out` None it only
/// validates and measures (no allocation); with `out` it also appends the
/// decoded data. `Ok(None)`: need more bytes. Limits fail as early as the
/// bytes show them: a chunk size that would pass max_body fails when its
/// size line arrives, not after its data.
fn walk_chunked(buf: &[u8], limits: &Limits, mut out: Option<&mut Vec<u8>>) -> Result<Option<ChunkedScan>, HttpError> {
    let mut pos = 0usize;
    let mut body_len = 0usize;
    // Framing bytes so far: chunk-size lines, CRLFs after data, trailers.
    let mut framing = 0usize;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(&first) = rest.first() else {
            return Ok(None);
        };
        // parse_chunk_size takes an empty size as 0; a size needs a digit.
        if !first.is_ascii_hexdigit() {
            return Err(HttpError::BadRequest("invalid chunk size"));
        }
        let (line_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(Status::Complete(v)) => v,
            Ok(Status::Partial) => {
                if rest.len() >= MAX_CHUNK_LINE {
                    return Err(HttpError::BadRequest("chunk size line too long"));
                }
                framing_budget(framing + rest.len(), limits)?;
                return Ok(None);
            }
            Err(_) => return Err(HttpError::BadRequest("invalid chunk size")),
        };
        if line_len > MAX_CHUNK_LINE {
            return Err(HttpError::BadRequest("chunk size line too long"));
        }
        // parse_chunk_size lets any byte through in chunk extensions, a bare
        // LF included; intermediaries that end lines at LF would then frame
        // the body differently (request smuggling), so refuse control bytes.
        let line = rest.get(..line_len.saturating_sub(2)).unwrap_or_default();
        if line.iter().any(|&b| is_ctl(b)) {
            return Err(HttpError::BadRequest("invalid chunk extension"));
        }
        framing += line_len;
        pos += line_len;
        if size == 0 {
            break;
        }
        // body_len <= max_body holds throughout, so the subtraction is safe.
        let room = limits.max_body - body_len;
        let size = match usize::try_from(size) {
            Ok(size) if size <= room => size,
            _ => return Err(HttpError::BodyTooLarge(limits.max_body)),
        };
        body_len += size;
        // The CRLF after the data is counted before waiting for the data,
        // so a buffer never has to grow past the budget.
        framing += 2;
        framing_budget(framing, limits)?;
        let data_end = pos + size;
        let Some(data) = buf.get(pos..data_end) else {
            return Ok(None);
        };
        match buf.get(data_end..data_end + 2) {
            Some(b"\r\n") => {}
            Some(_) => return Err(HttpError::BadRequest("chunk data not followed by CRLF")),
            None => {
                if buf.get(data_end).is_some_and(|&b| b != b'\r') {
                    return Err(HttpError::BadRequest("chunk data not followed by CRLF"));
                }
                return Ok(None);
            }
        }
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(data);
        }
        pos = data_end + 2;
    }
    // The trailer section: fields are ignored, only their syntax is checked.
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            framing_budget(framing + rest.len(), limits)?;
            return Ok(None);
        };
        framing += nl + 1;
        framing_budget(framing, limits)?;
        pos += nl + 1;
        let Some(line) = rest.get(..nl).and_then(|l| l.strip_suffix(b"\r")) else {
            return Err(HttpError::BadRequest("trailer line without CRLF"));
        };
        if line.is_empty() {
            return Ok(Some(ChunkedScan { wire_len: pos, body_len }));
        }
        if !is_field_line(line) {
            return Err(HttpError::BadRequest("invalid trailer field"));
        }
    }
}

/// `name: value` with a token name and no control bytes but tab.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = line.split_at(colon);
    !name.is_empty() && name.iter().all(|&b| is_tchar(b)) && !value.iter().any(|&b| is_ctl(b))
}

fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The non-empty, trimmed elements of a comma-separated field value.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows).filter(|item| !item.is_empty())
}

fn list_has_token(value: &[u8], token: &str) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

fn fields_have_token(fields: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)).any(|f| list_has_token(f.value, token))
}

/// Decodes `%XX` and `+` (application/x-www-form-urlencoded) byte by byte,
/// so a name can be compared without allocating.
struct PercentDecode<'a> {
    rest: &'a [u8],
}

impl<'a> PercentDecode<'a> {
    fn new(rest: &'a [u8]) -> Self {
        PercentDecode { rest }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Iterator for PercentDecode<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        match self.rest {
            [b'%', hi, lo, tail @ ..] if hex_value(*hi).is_some() && hex_value(*lo).is_some() => {
                self.rest = tail;
                Some(hex_value(*hi).unwrap_or(0) << 4 | hex_value(*lo).unwrap_or(0))
            }
            [b'+', tail @ ..] => {
                self.rest = tail;
                Some(b' ')
            }
            [b, tail @ ..] => {
                self.rest = tail;
                Some(*b)
            }
            [] => None,
        }
    }
}

/// The standard reason phrase, or a generic one for the status class.
pub fn reason(status: u16) -> &'static str {
    let known = match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    };
    if !known.is_empty() {
        return known;
    }
    match status {
        100..=199 => "Informational",
        200..=299 => "Success",
        300..=399 => "Redirection",
        400..=499 => "Client Error",
        500..=599 => "Server Error",
        _ => "Unknown",
    }
}

/// Writes text into a head, turning CR, LF and NUL into spaces so that no
/// value can end the line early and inject header fields.
fn push_head_text(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().map(|b| if matches!(b, b'\r' | b'\n' | 0) { b' ' } else { b }));
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_head_text(out, name);
    out.extend_from_slice(b": ");
    push_head_text(out, value);
    out.extend_from_slice(b"\r\n");
}

/// 1xx and 204 responses carry neither Content-Length nor a body
/// (RFC 9110 8.6); 304 carries no body.
fn status_has_length(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204
}

fn status_has_body(status: u16) -> bool {
    status_has_length(status) && status != 304
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
    keep_alive: bool,
    extra: &[(&str, &str)],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nServer: roomcast\r\n");
    if !content_type.is_empty() {
        push_header(out, "Content-Type", content_type);
    }
    if status_has_length(status) {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, content_length as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n" } else { b"Connection: close\r\n" });
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a response: status line, `Server: roomcast`, Content-Type
/// (omitted if empty), Content-Length, `Connection: keep-alive|close`,
/// `extra` headers, blank line, body. With `head_only` (answering HEAD) the
/// body is left out but Content-Length still gives its length. 1xx and 204
/// get no Content-Length and no body, 304 no body.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &[(&str, &str)],
    head_only: bool,
) {
    write_head(out, status, content_type, body.len(), keep_alive, extra);
    if !head_only && status_has_body(status) {
        out.extend_from_slice(body);
    }
}

/// Appends a JSON error response, the body [`msg::error_json`], with
/// Content-Type application/json. The body is measured and then escaped
/// straight into `out`, without a temporary string.
pub fn write_error(
    out: &mut Vec<u8>,
    status: u16,
    code: &str,
    message: &str,
    keep_alive: bool,
    extra: &[(&str, &str)],
) {
    write_head(out, status, "application/json", msg::error_json_len(code, message), keep_alive, extra);
    if status_has_body(status) {
        msg::push_error_json(out, code, message);
    }
}

/// The prefix of the subprotocol entry that carries a token: browsers
/// cannot set headers on a WebSocket, and a token in the URL lands in logs,
/// so a browser offers `bearer.<jwt>` beside the protocol it speaks. A
/// compact JWT (base64url and dots) is made of token characters only.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// A valid WebSocket upgrade request.
#[derive(Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Sec-WebSocket-Key as sent (trimmed), for the accept computation.
    pub key: Vec<u8>,
    /// Offered subprotocols in order, trimmed, without the bearer entry.
    pub protocols: Vec<String>,
    /// The token of a `bearer.<token>` entry, never echoed nor printed.
    pub bearer: Option<String>,
}

// By hand: the bearer entry is a credential and stays out of any output.
impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("protocols", &self.protocols)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Answer 400.
    #[error("{0}")]
    Bad(&'static str),
    /// Answer 426 with `Sec-WebSocket-Version: 13`.
    #[error("unsupported WebSocket version")]
    Version,
}

/// Checks a WebSocket upgrade request (RFC 6455 4.2.1). `Ok(None)` if the
/// request does not ask for one at all (no `Upgrade: websocket`).
pub fn websocket_upgrade(req: &Request) -> Result<Option<Upgrade>, UpgradeError> {
    if !req.header_has_token("upgrade", "websocket") {
        return Ok(None);
    }
    if req.method != Method::Get {
        return Err(UpgradeError::Bad("a WebSocket upgrade must be a GET"));
    }
    if req.minor_version != 1 {
        return Err(UpgradeError::Bad("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(UpgradeError::Bad("Connection must include upgrade"));
    }
    match req.header("sec-websocket-version").map(trim_ows) {
        None => return Err(UpgradeError::Bad("missing Sec-WebSocket-Version")),
        Some(b"13") => {}
        Some(_) => return Err(UpgradeError::Version),
    }
    let mut keys = req.headers.iter().filter(|(n, _)| n == "sec-websocket-key").map(|(_, v)| trim_ows(v));
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        (None, _) => return Err(UpgradeError::Bad("missing Sec-WebSocket-Key")),
        (Some(_), Some(_)) => return Err(UpgradeError::Bad("more than one Sec-WebSocket-Key")),
    };
    if !is_base64_of_16_bytes(key) {
        return Err(UpgradeError::Bad("Sec-WebSocket-Key is not 16 bytes in base64"));
    }
    let mut protocols = Vec::new();
    let mut bearer = None;
    for (_, value) in req.headers.iter().filter(|(n, _)| n == "sec-websocket-protocol") {
        for item in list_items(value) {
            let p = match std::str::from_utf8(item) {
                Ok(p) if item.iter().all(|&b| is_tchar(b)) => p,
                _ => return Err(UpgradeError::Bad("invalid Sec-WebSocket-Protocol")),
            };
            match p.strip_prefix(BEARER_PROTOCOL_PREFIX) {
                None => protocols.push(p.to_owned()),
                Some("") => return Err(UpgradeError::Bad("the bearer subprotocol carries no token")),
                Some(_) if bearer.is_some() => {
                    return Err(UpgradeError::Bad("more than one bearer subprotocol"));
                }
                Some(t) => bearer = Some(t.to_owned()),
            }
        }
    }
    Ok(Some(Upgrade { key: key.to_vec(), protocols, bearer }))
}

/// 16 bytes in padded base64: 22 alphabet characters and `==`. The unused
/// low bits of the last character are not checked, as lenient decoders
/// ignore them too.
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    match key {
        [chars @ .., b'=', b'='] => {
            chars.len() == 22 && chars.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        }
        _ => false,
    }
}

/// Appends `101 Switching Protocols` with the given Sec-WebSocket-Accept
/// and, if chosen, Sec-WebSocket-Protocol and Sec-WebSocket-Extensions.
pub fn write_upgrade_response(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>, extensions: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nServer: roomcast\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    push_header(out, "Sec-WebSocket-Accept", accept);
    if let Some(protocol) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", protocol);
    }
    if let Some(extensions) = extensions {
        push_header(out, "Sec-WebSocket-Extensions", extensions);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod request_len_tests {
    use super::*;

    #[test]
    fn request_len_knows_a_length_framed_body() {
        let l = Limits::default();
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(request_len(head, &l), Some(head.len() + 10));
        assert_eq!(request_len(&head[..head.len() - 1], &l), None, "head not complete");
        let chunked = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(request_len(chunked, &l), None);
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(request_len(get, &l), Some(get.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits { max_head: 256, max_target: 64, max_headers: 8, max_body: 100 }
    }

    fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(buf, &Limits::default())
    }

    fn parse_ok(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Ok(Some(done)) => done,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn parse_err(buf: &[u8], limits: &Limits) -> HttpError {
        match parse_request(buf, limits) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Parses every proper prefix (each must need more bytes, or fail the
    /// same way as the whole when the whole fails), then the whole.
    fn parse_split(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, HttpError> {
        let whole = parse_request(buf, limits);
        for i in 0..buf.len() {
            match (parse_request(&buf[..i], limits), &whole) {
                (Ok(None), _) => {}
                (Err(e), Err(w)) if &e == w => {}
                (got, _) => panic!("prefix {i} of {:?}: {got:?}, whole: {whole:?}", String::from_utf8_lossy(buf)),
            }
        }
        whole
    }

    fn get_with_target(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    /// A GET whose head is exactly `len` bytes, padded with one header.
    fn head_of_len(len: usize) -> Vec<u8> {
        let base = "GET / HTTP/1.1\r\nHost: x\r\nPad: \r\n\r\n".len();
        let pad = "p".repeat(len - base);
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\nPad: {pad}\r\n\r\n");
        assert_eq!(head.len(), len);
        head.into_bytes()
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /rooms/a?x=1&y=2 HTTP/1.1\r\nHost: example\r\nX-Thing:  v a l  \r\n\r\n";
        let (req, used) = parse_ok(buf);
        assert_eq!(used, buf.len());
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/rooms/a");
        assert_eq!(req.query, "x=1&y=2");
        assert_eq!(req.minor_version, 1);
        assert!(req.keep_alive);
        assert!(req.body.is_empty());
        assert_eq!(
            req.headers,
            vec![("host".to_owned(), b"example".to_vec()), ("x-thing".to_owned(), b"v a l".to_vec())]
        );
        assert_eq!(req.header("x-thing"), Some(&b"v a l"[..]));
        assert_eq!(req.header("X-Thing"), Some(&b"v a l"[..]));
        assert_eq!(req.header("missing"), None);
    }

    #[test]
    fn target_kept_as_sent() {
        let (req, _) = parse_ok(b"GET /a%20b?q=%41?b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req.path, "/a%20b");
        assert_eq!(req.query, "q=%41?b");
        let (req, _) = parse_ok(b"GET /a? HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req.path, "/a");
        assert_eq!(req.query, "");
        let (req, _) = parse_ok(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req.method, Method::Options);
        assert_eq!(req.path, "*");
    }

    #[test]
    fn methods() {
        for (token, method) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("TRACE", Method::Other),
            ("get", Method::Other),
        ] {
            let buf = format!("{token} / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(parse_ok(buf.as_bytes()).0.method, method, "{token}");
        }
        for (token, method) in [("POST", Method::Post), ("PUT", Method::Put), ("PATCH", Method::Patch)] {
            let buf = format!("{token} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(parse_ok(buf.as_bytes()).0.method, method, "{token}");
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (req, used) = parse_ok(buf);
        assert_eq!(used, buf.len());
        assert_eq!(req.path, "/");
        assert!(matches!(parse(b"\r\n"), Ok(None)));
        assert!(matches!(parse(b""), Ok(None)));
    }

    #[test]
    fn bare_lf_head_accepted() {
        let (req, _) = parse_ok(b"GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(req.header("host"), Some(&b"x"[..]));
    }

    #[test]
    fn every_split_of_a_get() {
        let buf = b"\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (req, used) = parse_split(buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(req.query, "b=c");
        assert!(!req.keep_alive);
    }

    #[test]
    fn every_split_of_a_content_length_body() {
        let buf = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
        let (req, used) = parse_split(buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(req.body, b"hello world");
    }

    #[test]
    fn every_split_of_a_chunked_body() {
        let buf = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n1 \r\n \r\nA\r\n0123456789\r\n0\r\nExpires: never\r\n\r\n";
        let (req, used) = parse_split(buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(req.body, b"hello 0123456789");
        // The trailer is ignored, not merged into the headers.
        assert_eq!(req.header("expires"), None);
    }

    #[test]
    fn every_split_of_errors_is_consistent() {
        let limits = small();
        for buf in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_split(buf, &limits).is_err());
        }
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
            POST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n\
            GET /four HTTP/1.0\r\n\r\n\
            GET /partial HTTP/1.1\r\nHo";
        let mut rest = &buf[..];
        let mut seen = Vec::new();
        while let Some((req, used)) = parse(rest).unwrap() {
            seen.push((req.path, req.body, req.keep_alive));
            rest = &rest[used..];
        }
        assert_eq!(
            seen,
            vec![
                ("/one".to_owned(), vec![], true),
                ("/two".to_owned(), b"abc".to_vec(), true),
                ("/three".to_owned(), b"de".to_vec(), true),
                ("/four".to_owned(), vec![], false),
            ]
        );
        assert_eq!(rest, b"GET /partial HTTP/1.1\r\nHo");
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, CLOSE\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: upgrade\r\n\r\n", false),
        ];
        for (buf, want) in cases {
            let (req, _) = parse_ok(buf);
            assert_eq!(req.keep_alive, *want, "{}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn host_rules() {
        let limits = Limits::default();
        assert_eq!(parse_err(b"GET / HTTP/1.1\r\n\r\n", &limits), HttpError::BadRequest("missing Host header"));
        assert_eq!(
            parse_err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &limits),
            HttpError::BadRequest("more than one Host header")
        );
        let (req, _) = parse_ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(req.minor_version, 0);
        parse_ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
    }

    #[test]
    fn head_limit_boundary() {
        let limits = small();
        let exact = head_of_len(limits.max_head);
        let (_, used) = parse_request(&exact, &limits).unwrap().unwrap();
        assert_eq!(used, limits.max_head);
        // A body after a head of exactly max_head is not part of the head.
        let mut with_more = exact.clone();
        with_more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert!(parse_request(&with_more, &limits).unwrap().is_some());

        let over = head_of_len(limits.max_head + 1);
        assert_eq!(parse_err(&over, &limits), HttpError::HeadTooLarge(limits.max_head));
        // Detected as soon as max_head bytes pass without the end of head.
        assert!(matches!(parse_request(&over[..limits.max_head], &limits), Ok(None)));
        assert_eq!(parse_err(&over[..limits.max_head + 1], &limits), HttpError::HeadTooLarge(limits.max_head));
        // Leading empty lines count towards the head.
        let mut led = b"\r\n".to_vec();
        led.extend_from_slice(&head_of_len(limits.max_head - 1));
        assert_eq!(parse_err(&led, &limits), HttpError::HeadTooLarge(limits.max_head));
        let endless = vec![b'\n'; limits.max_head + 1];
        assert_eq!(parse_err(&endless, &limits), HttpError::HeadTooLarge(limits.max_head));
    }

    #[test]
    fn head_limit_default() {
        let limits = Limits::default();
        assert!(parse_request(&head_of_len(16 * 1024), &limits).unwrap().is_some());
        assert_eq!(parse_err(&head_of_len(16 * 1024 + 1), &limits), HttpError::HeadTooLarge(16 * 1024));
    }

    #[test]
    fn header_count_boundary() {
        let limits = small();
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 1..limits.max_headers {
            head.push_str(&format!("H{i}: v\r\n"));
        }
        let exact = format!("{head}\r\n");
        let (req, _) = parse_request(exact.as_bytes(), &limits).unwrap().unwrap();
        assert_eq!(req.headers.len(), limits.max_headers);
        let over = format!("{head}Extra: v\r\n\r\n");
        assert_eq!(parse_err(over.as_bytes(), &limits), HttpError::HeadTooLarge(limits.max_head));
        // Too many headers fail before the head is complete.
        let partial = format!("{head}Extra: v\r\n");
        assert_eq!(parse_err(partial.as_bytes(), &limits), HttpError::HeadTooLarge(limits.max_head));
    }

    #[test]
    fn header_count_is_capped() {
        let limits = Limits { max_headers: 1000, ..Limits::default() };
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 1..MAX_HEADERS_CAP {
            head.push_str(&format!("H{i}: v\r\n"));
        }
        assert!(parse_request(format!("{head}\r\n").as_bytes(), &limits).unwrap().is_some());
        assert!(parse_request(format!("{head}X: v\r\n\r\n").as_bytes(), &limits).is_err());
    }

    #[test]
    fn target_limit_boundary() {
        let limits = small();
        let exact = format!("/{}", "a".repeat(limits.max_target - 1));
        let (req, _) = parse_request(&get_with_target(&exact), &limits).unwrap().unwrap();
        assert_eq!(req.path, exact);
        let with_query = format!("/?{}", "a".repeat(limits.max_target - 2));
        assert!(parse_request(&get_with_target(&with_query), &limits).unwrap().is_some());

        let over = format!("{exact}a");
        let buf = get_with_target(&over);
        assert_eq!(parse_err(&buf, &limits), HttpError::UriTooLong(limits.max_target));
        // Before the head is complete: request line visible but no headers.
        let line = format!("GET {over} HTTP/1.1\r\n");
        assert_eq!(parse_err(line.as_bytes(), &limits), HttpError::UriTooLong(limits.max_target));
        // And before the target itself is complete.
        let start = format!("GET {over}");
        assert_eq!(parse_err(start.as_bytes(), &limits), HttpError::UriTooLong(limits.max_target));
        let start = format!("GET {exact}");
        assert!(matches!(parse_request(start.as_bytes(), &limits), Ok(None)));
    }

    #[test]
    fn target_longer_than_head_is_414() {
        let limits = small();
        let huge = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(limits.max_head * 2));
        assert_eq!(parse_err(huge.as_bytes(), &limits), HttpError::UriTooLong(limits.max_target));
    }

    #[test]
    fn target_limit_default() {
        let limits = Limits::default();
        let exact = format!("/{}", "a".repeat(8 * 1024 - 1));
        assert!(parse_request(&get_with_target(&exact), &limits).unwrap().is_some());
        let over = format!("{exact}a");
        assert_eq!(parse_err(&get_with_target(&over), &limits), HttpError::UriTooLong(8 * 1024));
    }

    fn post_with_length(n: usize, body: &[u8]) -> Vec<u8> {
        let mut buf = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn body_limit_content_length() {
        let limits = small();
        let body = vec![b'b'; limits.max_body];
        let (req, used) = parse_request(&post_with_length(limits.max_body, &body), &limits).unwrap().unwrap();
        assert_eq!(req.body, body);
        assert_eq!(used, post_with_length(limits.max_body, &body).len());
        // Refused on the head alone, before any of the body arrives.
        assert_eq!(
            parse_err(&post_with_length(limits.max_body + 1, b""), &limits),
            HttpError::BodyTooLarge(limits.max_body)
        );
        let overflow = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
        assert_eq!(parse_err(overflow, &limits), HttpError::BodyTooLarge(limits.max_body));
    }

    #[test]
    fn body_limit_default() {
        let limits = Limits::default();
        assert!(matches!(parse_request(&post_with_length(1024 * 1024, b""), &limits), Ok(None)));
        assert_eq!(parse_err(&post_with_length(1024 * 1024 + 1, b""), &limits), HttpError::BodyTooLarge(1024 * 1024));
    }

    fn chunked_post(encoded: &[u8]) -> Vec<u8> {
        let mut buf = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        buf.extend_from_slice(encoded);
        buf
    }

    fn encode_chunks(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn body_limit_chunked() {
        let limits = small();
        let body = vec![b'c'; limits.max_body];
        let buf = chunked_post(&encode_chunks(&body, &[30]));
        let (req, used) = parse_split(&buf, &limits).unwrap().unwrap();
        assert_eq!(req.body, body);
        assert_eq!(used, buf.len());

        let body = vec![b'c'; limits.max_body + 1];
        let buf = chunked_post(&encode_chunks(&body, &[30]));
        assert_eq!(parse_split(&buf, &limits).unwrap_err(), HttpError::BodyTooLarge(limits.max_body));
        // One chunk size over the limit fails as soon as its line arrives.
        assert_eq!(parse_err(&chunked_post(b"65\r\n"), &limits), HttpError::BodyTooLarge(limits.max_body));
        assert!(matches!(parse_request(&chunked_post(b"64\r\n"), &limits), Ok(None)));
        assert_eq!(
            parse_err(&chunked_post(b"ffffffffffffffff\r\n"), &limits),
            HttpError::BodyTooLarge(limits.max_body)
        );
    }

    #[test]
    fn chunked_framing_is_bounded() {
        let limits = small();
        // One-byte chunks: 100 bytes of body but 500 bytes of framing.
        let body = vec![b'c'; limits.max_body];
        let buf = chunked_post(&encode_chunks(&body, &[1]));
        assert_eq!(parse_err(&buf, &limits), HttpError::BodyTooLarge(limits.max_body));
        // An endless trailer section.
        let mut enc = b"0\r\n".to_vec();
        while enc.len() <= limits.max_head {
            enc.extend_from_slice(b"T: v\r\n");
        }
        assert_eq!(parse_err(&chunked_post(&enc), &limits), HttpError::BodyTooLarge(limits.max_body));
    }

    #[test]
    fn need_more_means_under_max_request_bytes() {
        let limits = small();
        let cap = limits.max_request_bytes();
        let body = vec![b'c'; limits.max_body];
        let encodings = [
            post_with_length(limits.max_body, &body),
            chunked_post(&encode_chunks(&body, &[7])),
            chunked_post(&encode_chunks(&body, &[2])),
        ];
        for buf in encodings {
            for i in 0..buf.len() {
                if let Ok(None) = parse_request(&buf[..i], &limits) {
                    assert!(i < cap);
                }
            }
        }
    }

    #[test]
    fn chunked_variants() {
        let (req, _) = parse_ok(&chunked_post(b"0\r\n\r\n"));
        assert!(req.body.is_empty());
        let (req, _) = parse_ok(&chunked_post(b"3\r\nabc\r\n0\r\n\r\n"));
        assert_eq!(req.body, b"abc");
        let (req, _) = parse_ok(&chunked_post(b"0000000003;a=\"b c\"\r\nabc\r\n0;x\r\n\r\n"));
        assert_eq!(req.body, b"abc");
        let buf = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n";
        assert_eq!(parse_ok(buf).0.body, b"a");
        // GET may carry a body too.
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(parse_ok(buf).0.body, b"hi");
    }

    #[test]
    fn chunked_malformed() {
        let limits = Limits::default();
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        let cases: &[&[u8]] = &[
            b"zz\r\n",
            b"\r\n",
            b";ext\r\n",
            b"-1\r\n",
            b"1 2\r\n",
            b"1\na\r\n",
            b"1;a\nb\r\na\r\n0\r\n\r\n",
            b"3\r\nabcX",
            b"3\r\nabc\rX",
            b"3\r\nabc\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nBad Name: v\r\n\r\n",
            b"0\r\nT: v\n\r\n",
            b"0\r\n\n",
            b"00000000000000001\r\n",
            long_ext.as_bytes(),
        ];
        for enc in cases {
            let buf = chunked_post(enc);
            match parse_request(&buf, &limits) {
                Err(HttpError::BadRequest(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(enc)),
            }
        }
    }

    #[test]
    fn every_chunk_split() {
        let body: Vec<u8> = (0..40u8).collect();
        for sizes in [&[1usize][..], &[3, 5, 7], &[16], &[40]] {
            let buf = chunked_post(&encode_chunks(&body, sizes));
            let (req, used) = parse_split(&buf, &Limits::default()).unwrap().unwrap();
            assert_eq!(req.body, body);
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn content_length_rules() {
        let limits = Limits::default();
        let head = |cl: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{cl}\r\n\r\nabcde").into_bytes();
        for bad in [
            "Content-Length: abc",
            "Content-Length: -1",
            "Content-Length: +5",
            "Content-Length: 0x5",
            "Content-Length: 5 5",
            "Content-Length:",
            "Content-Length: 5,",
            "Content-Length: 5, 6",
            "Content-Length: 5\r\nContent-Length: 6",
        ] {
            match parse_request(&head(bad), &limits) {
                Err(HttpError::BadRequest(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        for good in [
            "Content-Length: 5",
            "Content-Length:  5 ",
            "Content-Length: 005",
            "Content-Length: 5, 5",
            "Content-Length: 5\r\nContent-Length: 5",
        ] {
            let (req, _) = parse_request(&head(good), &limits).unwrap().unwrap();
            assert_eq!(req.body, b"abcde", "{good}");
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let limits = Limits::default();
        let with = |fields: &str, version: &str| {
            format!("POST / HTTP/{version}\r\nHost: x\r\n{fields}\r\n\r\n0\r\n\r\n").into_bytes()
        };
        let cases = [
            ("Transfer-Encoding: gzip", "1.1", HttpError::NotImplemented),
            ("Transfer-Encoding: gzip, chunked", "1.1", HttpError::NotImplemented),
            ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", "1.1", HttpError::NotImplemented),
            (
                "Transfer-Encoding: chunked, gzip",
                "1.1",
                HttpError::BadRequest("chunked is not the final transfer coding"),
            ),
            (
                "Transfer-Encoding: chunked, chunked",
                "1.1",
                HttpError::BadRequest("chunked is not the final transfer coding"),
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                "1.1",
                HttpError::BadRequest("chunked is not the final transfer coding"),
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5",
                "1.1",
                HttpError::BadRequest("both Content-Length and Transfer-Encoding"),
            ),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                "1.1",
                HttpError::BadRequest("both Content-Length and Transfer-Encoding"),
            ),
            ("Transfer-Encoding: chunked", "1.0", HttpError::BadRequest("Transfer-Encoding in HTTP/1.0")),
            ("Transfer-Encoding: ,", "1.1", HttpError::BadRequest("empty Transfer-Encoding")),
        ];
        for (fields, version, want) in cases {
            assert_eq!(parse_err(&with(fields, version), &limits), want, "{fields}");
        }
        assert!(parse_request(&with("Transfer-Encoding: , chunked", "1.1"), &limits).unwrap().is_some());
    }

    #[test]
    fn length_required() {
        let limits = Limits::default();
        for method in ["POST", "PUT", "PATCH"] {
            let buf = format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(parse_err(buf.as_bytes(), &limits), HttpError::LengthRequired);
        }
        assert_eq!(parse_err(b"POST / HTTP/1.0\r\n\r\n", &limits), HttpError::LengthRequired);
        for method in ["GET", "DELETE", "HEAD", "OPTIONS", "FOO"] {
            let buf = format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n");
            let (req, used) = parse_ok(buf.as_bytes());
            assert!(req.body.is_empty());
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn versions() {
        let limits = Limits::default();
        for buf in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"PRI * HTTP/2",
            b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/3\r\n\r\n",
        ] {
            assert_eq!(parse_err(buf, &limits), HttpError::VersionNotSupported, "{}", String::from_utf8_lossy(buf));
        }
        for buf in [
            &b"GET / HTXP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / http/1.1\r\nHost: x\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n",
        ] {
            match parse_request(buf, &limits) {
                Err(HttpError::BadRequest(_)) => {}
                other => panic!("{}: {other:?}", String::from_utf8_lossy(buf)),
            }
        }
    }

    #[test]
    fn malformed_heads() {
        let limits = Limits::default();
        for buf in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nName : v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n Folded: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA: b\x00c\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\rHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b" GET / HTTP/1.1\r\n\r\n",
            b"\r\r\n",
        ] {
            match parse_request(buf, &limits) {
                Err(HttpError::BadRequest(_)) => {}
                other => panic!("{}: {other:?}", String::from_utf8_lossy(buf)),
            }
        }
    }

    #[test]
    fn error_status_and_code() {
        let cases = [
            (HttpError::HeadTooLarge(1), 431, "too_large"),
            (HttpError::UriTooLong(1), 414, "too_large"),
            (HttpError::BodyTooLarge(1), 413, "too_large"),
            (HttpError::LengthRequired, 411, "bad_request"),
            (HttpError::BadRequest("x"), 400, "bad_request"),
            (HttpError::NotImplemented, 501, "bad_request"),
            (HttpError::VersionNotSupported, 505, "bad_request"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status(), status);
            assert_eq!(err.code(), code);
        }
        assert_eq!(HttpError::BodyTooLarge(100).to_string(), "body larger than 100 bytes");
        assert_eq!(HttpError::BadRequest("nope").to_string(), "bad request: nope");
    }

    fn req_with_query(query: &str) -> Request {
        let buf = format!("GET /?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        parse_ok(buf.as_bytes()).0
    }

    #[test]
    fn query_param_decoding() {
        let req =
            req_with_query("a=1&b=hello+world&c=%41%42%2b&d&e=&f=%zz%4&g=%E2%82%AC&h=%FF&%61%62=x&a=2&&i=a=b&j=%");
        assert_eq!(req.query_param("a").as_deref(), Some("1"));
        assert_eq!(req.query_param("b").as_deref(), Some("hello world"));
        assert_eq!(req.query_param("c").as_deref(), Some("AB+"));
        assert_eq!(req.query_param("d").as_deref(), Some(""));
        assert_eq!(req.query_param("e").as_deref(), Some(""));
        assert_eq!(req.query_param("f").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("g").as_deref(), Some("€"));
        assert_eq!(req.query_param("h"), None);
        assert_eq!(req.query_param("ab").as_deref(), Some("x"));
        assert_eq!(req.query_param("i").as_deref(), Some("a=b"));
        assert_eq!(req.query_param("j").as_deref(), Some("%"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.query_param(""), None);
        let req = req_with_query("access_token=ey.J+%2F%3D&user=al%20ice");
        assert_eq!(req.query_param("access_token").as_deref(), Some("ey.J /="));
        assert_eq!(req.query_param("user").as_deref(), Some("al ice"));
        let req = parse_ok(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").0;
        assert_eq!(req.query_param("a"), None);
    }

    #[test]
    fn header_tokens() {
        let (req, _) =
            parse_ok(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive,  Upgrade \r\nConnection: ,x,\r\n\r\n");
        assert!(req.header_has_token("connection", "upgrade"));
        assert!(req.header_has_token("connection", "KEEP-ALIVE"));
        assert!(req.header_has_token("connection", "x"));
        assert!(!req.header_has_token("connection", "keep"));
        assert!(!req.header_has_token("connection", ""));
        assert!(!req.header_has_token("upgrade", "websocket"));
    }

    fn upgrade_req(fields: &str) -> Request {
        let buf = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        parse_ok(buf.as_bytes()).0
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const GOOD: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn upgrade_valid() {
        let up = websocket_upgrade(&upgrade_req(GOOD)).unwrap().unwrap();
        assert_eq!(up.key, KEY.as_bytes());
        assert!(up.protocols.is_empty());

        let fields = format!(
            "{}Sec-WebSocket-Protocol: roomcast.v1 , chat\r\nSec-WebSocket-Protocol: ,other\r\n",
            GOOD.replace("Upgrade: websocket", "Upgrade: WebSocket")
                .replace("Connection: Upgrade", "Connection: keep-alive, upgrade")
        );
        let up = websocket_upgrade(&upgrade_req(&fields)).unwrap().unwrap();
        assert_eq!(up.protocols, vec!["roomcast.v1", "chat", "other"]);
        assert_eq!(up.bearer, None);
    }

    #[test]
    fn upgrade_bearer_subprotocol() {
        let fields = format!("{GOOD}Sec-WebSocket-Protocol: roomcast.v1, bearer.aGk.e30.c2ln\r\n");
        let up = websocket_upgrade(&upgrade_req(&fields)).unwrap().unwrap();
        assert_eq!(up.protocols, vec!["roomcast.v1"]);
        assert_eq!(up.bearer.as_deref(), Some("aGk.e30.c2ln"));
        // The token never reaches Debug output.
        let shown = format!("{up:?}");
        assert!(!shown.contains("aGk") && shown.contains("redacted"), "{shown}");

        // Only the exact lowercase prefix is a bearer entry.
        let fields = format!("{GOOD}Sec-WebSocket-Protocol: Bearer.x, bearer\r\n");
        let up = websocket_upgrade(&upgrade_req(&fields)).unwrap().unwrap();
        assert_eq!(up.protocols, vec!["Bearer.x", "bearer"]);
        assert_eq!(up.bearer, None);

        for bad in ["bearer.", "bearer.a, bearer.b", "roomcast.v1, bearer.a\r\nSec-WebSocket-Protocol: bearer.b"] {
            let fields = format!("{GOOD}Sec-WebSocket-Protocol: {bad}\r\n");
            assert!(matches!(websocket_upgrade(&upgrade_req(&fields)), Err(UpgradeError::Bad(_))), "{bad}");
        }
    }

    #[test]
    fn upgrade_absent() {
        assert_eq!(websocket_upgrade(&upgrade_req("")), Ok(None));
        let no_upgrade = GOOD.replace("Upgrade: websocket\r\n", "");
        assert_eq!(websocket_upgrade(&upgrade_req(&no_upgrade)), Ok(None));
        let h2c = GOOD.replace("Upgrade: websocket", "Upgrade: h2c");
        assert_eq!(websocket_upgrade(&upgrade_req(&h2c)), Ok(None));
    }

    #[test]
    fn upgrade_refused() {
        let bad = |fields: String| match websocket_upgrade(&upgrade_req(&fields)) {
            Err(UpgradeError::Bad(_)) => {}
            other => panic!("{fields}: {other:?}"),
        };
        bad(GOOD.replace("Connection: Upgrade", "Connection: keep-alive"));
        bad(GOOD.replace("Connection: Upgrade\r\n", ""));
        bad(GOOD.replace("Sec-WebSocket-Version: 13\r\n", ""));
        bad(GOOD.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""));
        bad(format!("{GOOD}Sec-WebSocket-Key: {KEY}\r\n"));
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25jZ===",
            "dGhlIHNhbXBsZSBub25jZQA=",
            "dGhlIHNhbXBsZSBub25j-Q==",
            "",
            "short==",
        ] {
            bad(GOOD.replace(KEY, key));
        }
        bad(format!("{GOOD}Sec-WebSocket-Protocol: a b\r\n"));
        bad(format!("{GOOD}Sec-WebSocket-Protocol: a;b\r\n"));

        let post = format!("POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{GOOD}\r\n");
        assert!(matches!(websocket_upgrade(&parse_ok(post.as_bytes()).0), Err(UpgradeError::Bad(_))));
        let old = format!("GET /ws HTTP/1.0\r\n{GOOD}\r\n");
        assert!(matches!(websocket_upgrade(&parse_ok(old.as_bytes()).0), Err(UpgradeError::Bad(_))));
        for version in ["8", "14", "13, 8", ""] {
            let fields = GOOD.replace("Version: 13", &format!("Version: {version}"));
            assert_eq!(websocket_upgrade(&upgrade_req(&fields)), Err(UpgradeError::Version), "{version}");
        }
    }

    #[test]
    fn response_format() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "application/json", b"{}", true, &[("Cache-Control", "no-store")], false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: roomcast\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\nConnection: keep-alive\r\nCache-Control: no-store\r\n\r\n{}"
        );

        out.clear();
        write_response(&mut out, 404, "", b"gone", false, &[], true);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nServer: roomcast\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        );

        out.clear();
        write_response(&mut out, 204, "", b"ignored", true, &[], false);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nServer: roomcast\r\nConnection: keep-alive\r\n\r\n");

        // Appends rather than overwrites, so responses can be pipelined.
        let mut out = b"earlier".to_vec();
        write_response(&mut out, 200, "text/plain", b"", true, &[], false);
        assert!(out.starts_with(b"earlierHTTP/1.1 200 OK\r\n"));
        assert!(out.ends_with(b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn response_headers_cannot_be_injected() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain\r\nX-Evil: 1", b"", true, &[("Location", "/a\r\n\r\nbody")], false);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\n\r\n").count(), 1);
        assert!(text.ends_with("\r\n\r\n"));
        assert!(text.contains("Content-Type: text/plain  X-Evil: 1\r\n"));
    }

    #[test]
    fn error_format() {
        let mut out = Vec::new();
        let message = "bad \"thing\" \\ \n\t\u{1} é €";
        write_error(&mut out, 429, "rate_limited", message, true, &[("Retry-After", "3")]);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let (head, body) = (&out[..split + 4], &out[split + 4..]);
        let head = std::str::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\nServer: roomcast\r\n"));
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(head.contains("Connection: keep-alive\r\nRetry-After: 3\r\n\r\n"));
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["error"]["code"], "rate_limited");
        assert_eq!(json["error"]["message"], message);
        assert_eq!(json.as_object().unwrap().len(), 1);

        out.clear();
        write_error(&mut out, 400, "bad_request", "x", false, &[]);
        assert_eq!(
            out,
            &b"HTTP/1.1 400 Bad Request\r\nServer: roomcast\r\nContent-Type: application/json\r\n\
               Content-Length: 46\r\nConnection: close\r\n\r\n\
               {\"error\":{\"code\":\"bad_request\",\"message\":\"x\"}}"[..]
        );
    }

    #[test]
    fn upgrade_response_format() {
        let mut out = Vec::new();
        write_upgrade_response(&mut out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None, None);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nServer: roomcast\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        out.clear();
        write_upgrade_response(&mut out, "abc=", Some("roomcast.v1"), Some("permessage-deflate"));
        assert!(out.ends_with(
            b"Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: roomcast.v1\r\n\
              Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ));
    }

    #[test]
    fn reasons() {
        assert_eq!(reason(200), "OK");
        assert_eq!(reason(413), "Content Too Large");
        assert_eq!(reason(431), "Request Header Fields Too Large");
        assert_eq!(reason(426), "Upgrade Required");
        assert_eq!(reason(299), "Success");
        assert_eq!(reason(499), "Client Error");
        assert_eq!(reason(42), "Unknown");
        let mut out = Vec::new();
        write_response(&mut out, 599, "", b"", false, &[], false);
        assert!(out.starts_with(b"HTTP/1.1 599 Server Error\r\n"));
    }

    #[test]
    fn limits_default() {
        let l = Limits::default();
        assert_eq!((l.max_head, l.max_target, l.max_headers, l.max_body), (16384, 8192, 64, 1 << 20));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const FRAGMENTS: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"POST /p?a=1 HTTP/1.1\r\n",
            b"GET / HTTP/1.0\r\n",
            b"Host: x\r\n",
            b"Content-Length: 3\r\n",
            b"Content-Length: 0\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Connection: close\r\n",
            b"\r\n",
            b"\n",
            b"abc",
            b"3\r\n",
            b"3;e=1\r\n",
            b"0\r\n",
            b"T: v\r\n",
            b"ff\r\n",
            b"x",
            b" ",
        ];

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                let limits = small();
                let mut rest = &data[..];
                while let Ok(Some((req, used))) = parse_request(rest, &limits) {
                    prop_assert!(used > 0 && used <= rest.len());
                    prop_assert!(req.body.len() <= limits.max_body);
                    let _ = websocket_upgrade(&req);
                    rest = &rest[used..];
                }
            }

            /// Request-shaped input built from fragments that reach the
            /// framing rules, with the invariants the fuzz target checks.
            #[test]
            fn pipelined_fragments(parts in proptest::collection::vec(0usize..FRAGMENTS.len(), 0..40)) {
                let limits = small();
                let data: Vec<u8> = parts.iter().flat_map(|&i| FRAGMENTS[i].iter().copied()).collect();
                let mut rest = &data[..];
                loop {
                    match parse_request(rest, &limits) {
                        Ok(Some((req, used))) => {
                            prop_assert!(used > 0 && used <= rest.len());
                            prop_assert!(req.body.len() <= limits.max_body);
                            for cut in 0..used {
                                prop_assert!(matches!(parse_request(&rest[..cut], &limits), Ok(None)));
                            }
                            rest = &rest[used..];
                        }
                        Ok(None) => {
                            prop_assert!(rest.len() < limits.max_request_bytes());
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }

            #[test]
            fn chunked_round_trip(
                body in proptest::collection::vec(any::<u8>(), 0..300),
                sizes in proptest::collection::vec(1usize..64, 1..8),
                split in any::<prop::sample::Index>(),
            ) {
                let buf = chunked_post(&encode_chunks(&body, &sizes));
                let (req, used) = parse(&buf).unwrap().unwrap();
                prop_assert_eq!(&req.body, &body);
                prop_assert_eq!(used, buf.len());
                let at = split.index(buf.len());
                prop_assert!(matches!(parse(&buf[..at]), Ok(None)));
            }

            #[test]
            fn query_round_trip(value in "\\PC{0,20}") {
                let mut encoded = String::new();
                for b in value.bytes() {
                    encoded.push_str(&format!("%{b:02X}"));
                }
                let req = req_with_query(&format!("x=1&v={encoded}"));
                prop_assert_eq!(req.query_param("v"), Some(value));
            }
        }
    }
}
