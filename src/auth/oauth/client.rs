//! A small blocking HTTP/1.1 client for talking to identity providers from
//! an auth worker: one request per connection (`Connection: close`), over
//! plain TCP or rustls, with one deadline for everything from connecting to
//! the last byte, a bound on the answer's size, and no redirects followed
//! (a 3xx comes back to the caller as it is).
//!
//! TLS trusts the Mozilla roots compiled in from `webpki-roots`, so the
//! result does not depend on the host's certificate store; `http://` is
//! only ever used for loopback providers (the config refuses anything else).
//!
//! Everything the provider sends is hostile: the answer is parsed with
//! httparse, its framing (Content-Length, chunked, or until close) is
//! checked, and nothing here panics on any bytes.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Headers read from an answer.
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad provider URL: {0}")]
    Url(String),
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    #[error("TLS with the provider failed: {0}")]
    Tls(String),
    #[error("the provider's answer is not valid HTTP: {0}")]
    Protocol(String),
    #[error("the provider's answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The parts of an `http(s)://` URL this client needs.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    tls: bool,
    /// As written, brackets included for IPv6 (for `Host`).
    authority: &'a str,
    /// Without brackets (for resolving and for TLS's server name).
    host: &'a str,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
}

fn parse_url(url: &str) -> Result<Target<'_>, ClientError> {
    let bad = |why: &str| ClientError::Url(format!("{}: {why}", url.escape_debug()));
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("not printable ASCII"));
    }
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(bad("not http(s)")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at_checked(end).ok_or_else(|| bad("bad authority"))?;
    let tail = tail.split('#').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or user info"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?)),
            None => return Err(bad("unclosed '['")),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("bad port"))?,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let path = if tail.starts_with('/') { tail.to_string() } else { format!("/{tail}") };
    Ok(Target { tls, authority, host, port, path })
}

/// A TCP stream whose every read and write gives up at `deadline`.
struct Deadlined {
    tcp: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        Ok(left)
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, ClientError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let made = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        // The provider is named: with two compiled in, `builder()` panics.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
    });
    made.clone().map_err(ClientError::Tls)
}

fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ClientError::Timeout,
        _ => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => ClientError::Tls(tls.to_string()),
            None => ClientError::Connect(e.to_string()),
        },
    }
}

/// Sends one request and reads its answer. `body` is `(content type,
/// bytes)`. The whole exchange must finish within `timeout`; an answer over
/// `max_bytes` (head and body) is refused. A 3xx is returned, not followed.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Response, ClientError> {
    let target = parse_url(url)?;
    let deadline = Instant::now().checked_add(timeout).ok_or(ClientError::Timeout)?;
    // Name resolution is the system's and has its own timeouts; providers
    // are few and their addresses cached by the resolver.
    let addrs: Vec<_> =
        (target.host, target.port).to_socket_addrs().map_err(|e| ClientError::Connect(e.to_string()))?.collect();
    let mut last = ClientError::Connect(format!("no address for {}", target.host));
    let mut tcp = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = ClientError::Timeout;
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = io_error(e),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    let stream = Deadlined { tcp, deadline };

    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: roomcast\r\nAccept: application/json\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n",
        target.path, target.authority
    );
    for (name, value) in headers {
        if value.bytes().any(|b| b.is_ascii_control()) || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ClientError::Url("a header carries a control character".into()));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut out = head.into_bytes();
    match body {
        Some((ctype, bytes)) => {
            out.extend_from_slice(
                format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n", bytes.len()).as_bytes(),
            );
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
    let head_only = method == "HEAD";
    if target.tls {
        let name = rustls::pki_types::ServerName::try_from(target.host.to_string())
            .map_err(|e| ClientError::Url(format!("bad host name: {e}")))?;
        let conn = rustls::ClientConnection::new(tls_config()?, name).map_err(|e| ClientError::Tls(e.to_string()))?;
        exchange(rustls::StreamOwned::new(conn, stream), &out, max_bytes, head_only)
    } else {
        exchange(stream, &out, max_bytes, head_only)
    }
}

fn exchange<S: Read + Write>(mut s: S, out: &[u8], max: usize, head_only: bool) -> Result<Response, ClientError> {
    s.write_all(out).map_err(io_error)?;
    s.flush().map_err(io_error)?;
    read_response(&mut s, max, head_only)
}

/// An answer's head, once complete.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    /// Where the body starts in the buffer.
    start: usize,
    framing: Framing,
}

/// How the body of an answer ends.
enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

/// Reads one answer from `s`.
/// Reads one answer from `s`: the parser `request` uses, public for the
/// fuzz target of provider answers.
pub fn read_response<R: Read>(s: &mut R, max: usize, head_only: bool) -> Result<Response, ClientError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut parsed: Option<Head> = None;
    loop {
        if let Some(head) = &parsed {
            let body = buf.get(head.start..).unwrap_or(&[]);
            let done = match &head.framing {
                Framing::None => Some(Vec::new()),
                Framing::Length(n) if body.len() >= *n => Some(body.get(..*n).unwrap_or(&[]).to_vec()),
                Framing::Chunked => decode_chunked(body)?,
                _ => None,
            };
            if let Some(body) = done {
                if let Some(head) = parsed.take() {
                    return Ok(Response { status: head.status, headers: head.headers, body });
                }
            }
        }
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: a truncation,
            // unless the framing said where the body ends (handled above).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io_error(e)),
        };
        if n == 0 {
            return match parsed {
                Some(Head { status, headers, start, framing: Framing::Close }) => {
                    Ok(Response { status, headers, body: buf.get(start..).unwrap_or(&[]).to_vec() })
                }
                _ => Err(ClientError::Protocol("the connection closed before the answer was complete".into())),
            };
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        if buf.len() > max {
            return Err(ClientError::TooLarge(max));
        }
        if parsed.is_none() {
            parsed = parse_head(&buf, head_only)?;
        }
    }
}

/// The head once it is complete; `None` while it is not.
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<Head>, ClientError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let start = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    // httparse takes any three digits; a status below 100 is no answer.
    let status = resp.code.filter(|c| *c >= 100).ok_or_else(|| ClientError::Protocol("no valid status code".into()))?;
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_string()))
        .collect();
    let get = |name: &str| headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    let framing = if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if let Some(te) = get("transfer-encoding").first() {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(ClientError::Protocol(format!("unsupported transfer coding {}", te.escape_debug())));
        }
        Framing::Chunked
    } else {
        match get("content-length").as_slice() {
            [] => Framing::Close,
            [one] => {
                Framing::Length(one.parse::<usize>().map_err(|_| ClientError::Protocol("bad Content-Length".into()))?)
            }
            _ => return Err(ClientError::Protocol("more than one Content-Length".into())),
        }
    };
    Ok(Some(Head { status, headers, start, framing }))
}

/// The decoded body once `raw` holds all of a chunked body (trailers
/// ignored); `None` while it is incomplete.
fn decode_chunked(raw: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let (used, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ClientError::Protocol("bad chunk size".into())),
        };
        rest = rest.get(used..).unwrap_or(&[]);
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
                if end == 0 {
                    return Ok(Some(out));
                }
                rest = rest.get(end + 2..).unwrap_or(&[]);
            }
        }
        let size = usize::try_from(size).map_err(|_| ClientError::Protocol("chunk too large".into()))?;
        let Some(data) = rest.get(..size) else { return Ok(None) };
        out.extend_from_slice(data);
        rest = rest.get(size..).unwrap_or(&[]);
        match rest {
            [b'\r', b'\n', tail @ ..] => rest = tail,
            [] | [b'\r'] => return Ok(None),
            _ => return Err(ClientError::Protocol("chunk not followed by CRLF".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        let t = parse_url("https://idp.example/a/b?x=1#f").unwrap();
        assert_eq!(
            t,
            Target { tls: true, authority: "idp.example", host: "idp.example", port: 443, path: "/a/b?x=1".into() }
        );
        let t = parse_url("http://[::1]:8080").unwrap();
        assert_eq!((t.host, t.port, t.path.as_str(), t.authority), ("::1", 8080, "/", "[::1]:8080"));
        let t = parse_url("http://h?q").unwrap();
        assert_eq!(t.path, "/?q");
        for bad in
            ["ftp://x/", "http://", "http://u@h/", "http://h:0/", "http://h:99999/", "http://[::1/", "http://h /"]
        {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    fn read(raw: &[u8]) -> Result<Response, ClientError> {
        read_response(&mut io::Cursor::new(raw.to_vec()), 1 << 16, false)
    }

    #[test]
    fn framings() {
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r =
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nT: 1\r\n\r\n")
                .unwrap();
        assert_eq!(r.body, b"hello");
        let r = read(b"HTTP/1.0 200 OK\r\n\r\nuntil close").unwrap();
        assert_eq!(r.body, b"until close");
        let r = read(b"HTTP/1.1 302 Found\r\nLocation: http://evil.test/\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.header("location")), (302, Some("http://evil.test/")));
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(read(b"garbage\r\n\r\n").is_err());
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}", "a".repeat(100_000));
        assert!(matches!(read(big.as_bytes()), Err(ClientError::TooLarge(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_answer_never_panics(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = read(&raw);
            let mut with_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            with_head.extend_from_slice(&raw);
            let _ = read(&with_head);
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let started = Instant::now();
        let e = request("GET", &url, &[], None, Duration::from_millis(300), 1 << 16).unwrap_err();
        assert!(matches!(e, ClientError::Timeout), "{e}");
        // Generous: the point is that it ends at all.
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(listener);
    }

    #[test]
    fn a_request_and_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token?a=1", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while !got.ends_with(b"x=1") {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = request(
            "POST",
            &url,
            &[("Authorization", "Basic eDp5")],
            Some(("application/x-www-form-urlencoded", b"x=1")),
            Duration::from_secs(10),
            1 << 16,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let sent = server.join().unwrap();
        assert!(sent.starts_with("POST /token?a=1 HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nAuthorization: Basic eDp5\r\n"));
        assert!(sent.contains("\r\nContent-Length: 3\r\n"));
        assert!(request("GET", &url, &[("X", "a\r\nInjected: 1")], None, Duration::from_secs(1), 10).is_err());
    }

    /// https goes through rustls, and a certificate outside the compiled-in
    /// roots (a self-signed one) fails the handshake.
    #[test]
    fn an_untrusted_certificate_is_refused() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://localhost:{}/x", listener.local_addr().unwrap().port());
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut b = [0u8; 64];
            // The client gives up during the handshake.
            tls.read(&mut b).is_err()
        });
        let e = request("GET", &url, &[], None, Duration::from_secs(10), 1 << 16).unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
        assert!(server.join().unwrap());
    }
}
