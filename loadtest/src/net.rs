//! Target URLs, sockets and transports: loopback-only `ws://`/`wss://` URLs,
//! non-blocking connects from chosen source addresses, the upgrade request
//! and its answer, and a transport that is plain TCP or rustls over TCP.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use mio::net::TcpStream;
use thiserror::Error;

/// Why a target or its TLS settings were refused.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("bad url {0:?}: {1}")]
    Url(String, &'static str),
    #[error("refusing non-loopback target {0}: the load generator only drives local servers")]
    NotLoopback(String),
    #[error("CA file {0}: {1}")]
    Ca(String, String),
}

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// Path and query, starting with '/'.
    pub path: String,
}

/// Parses `ws://HOST:PORT/PATH` or `wss://...`; HOST must be a loopback
/// address or `localhost`.
/// Writes `out[*pos..]` until it is all out or the socket would block; a
/// buffer written out in full is cleared. `Err` says why a write failed.
pub fn write_pending(
    mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    out: &mut Vec<u8>,
    pos: &mut usize,
) -> Result<(), String> {
    let mut result = Ok(());
    while *pos < out.len() {
        match write(out.get(*pos..).unwrap_or_default()) {
            Ok(0) => {
                result = Err("write returned 0".to_string());
                break;
            }
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                result = Err(format!("write: {e}"));
                break;
            }
        }
    }
    if *pos == out.len() {
        out.clear();
        *pos = 0;
    }
    result
}

pub fn parse_url(url: &str) -> Result<Target, NetError> {
    let bad = |why| NetError::Url(url.to_string(), why);
    let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err(bad("scheme must be ws:// or wss://"));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match v6.get(end + 1..) {
            Some(p) if p.starts_with(':') => p[1..].parse().map_err(|_| bad("bad port"))?,
            _ => default_port,
        };
        (&v6[..end], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (hostport, default_port),
        }
    };
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| bad("host must be an IP address or localhost"))?
    };
    if !ip.is_loopback() {
        return Err(NetError::NotLoopback(url.to_string()));
    }
    Ok(Target { tls, addr: SocketAddr::new(ip, port), host: hostport.to_string(), path: path.to_string() })
}

/// Opens a non-blocking connection to `target`. With `sources > 1` and an
/// IPv4 loopback target, binds to 127.0.0.(1 + index % sources) first so
/// that more connections fit than one address's ephemeral ports allow.
pub fn connect(target: &Target, index: usize, sources: u32) -> io::Result<TcpStream> {
    let source = (sources > 1 && target.addr.is_ipv4()).then(|| {
        let last = 1 + (index as u32 % sources);
        Ipv4Addr::from(0x7F00_0000u32 + last)
    });
    connect_from(target, source, None)
}

/// Opens a non-blocking connection to `target` from `source` (any address
/// when `None`), with the receive buffer capped at `rcvbuf` bytes when given
/// (set before connecting, so the window the peer sees is small from the start).
pub fn connect_from(target: &Target, source: Option<Ipv4Addr>, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let domain = Domain::for_address(target.addr);
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let Some(size) = rcvbuf {
        sock.set_recv_buffer_size(size)?;
    }
    if let (Some(src), true) = (source, target.addr.is_ipv4()) {
        // Let connect() choose the port per destination rather than bind(),
        // or every source address would run out at ~28k ports regardless.
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(src), 0)))?;
    }
    match sock.connect(&SockAddr::from(target.addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(sock)))
}

/// The fixed `Sec-WebSocket-Key` the load generator offers (16 bytes in base64).
pub const WS_KEY: &str = "cm9vbWNhc3QtbGR0ZXN0IQ==";

/// The upgrade request for `target`, with `query` appended to the path and
/// a bearer token when given.
pub fn upgrade_request(target: &Target, query: &str, bearer: Option<&str>) -> Vec<u8> {
    let sep = if target.path.contains('?') { '&' } else { '?' };
    let path = if query.is_empty() { target.path.clone() } else { format!("{}{sep}{query}", target.path) };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: roomcast.v1\r\n",
        target.host
    );
    if let Some(t) = bearer {
        req.push_str("Authorization: Bearer ");
        req.push_str(t);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Adds a permessage-deflate offer to a request from [`upgrade_request`].
pub fn offer_deflate(req: &mut Vec<u8>) {
    if req.ends_with(b"\r\n\r\n") {
        req.truncate(req.len() - 2);
        req.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
    }
}

/// Outcome of looking for the upgrade response at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The head is not complete yet.
    Partial,
    /// 101 with the right accept key; the WebSocket stream starts at this offset.
    Done(usize),
    /// Anything else: the status line, for the error report.
    Refused(String),
}

/// Checks the server's answer to [`upgrade_request`].
pub fn parse_upgrade(buf: &[u8], accept: &str) -> Upgrade {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 16 * 1024 {
            Upgrade::Refused("response head too large".into())
        } else {
            Upgrade::Partial
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head.lines().next().unwrap_or_default().to_string();
    if !status.starts_with("HTTP/1.1 101") {
        return Upgrade::Refused(status);
    }
    let accepted = head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept)
    });
    if !accepted {
        return Upgrade::Refused("bad Sec-WebSocket-Accept".into());
    }
    Upgrade::Done(end + 4)
}

/// Certificate verifier that accepts any server certificate (`--tls`
/// without `--ca`): loopback only, to measure, never to protect.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client settings: trust `ca` (a PEM file) or, without one, any certificate.
pub fn tls_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, NetError> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Ca("-".into(), e.to_string()))?;
    let config = match ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| NetError::Ca(path.into(), e.to_string()))?
            {
                let cert = cert.map_err(|e| NetError::Ca(path.into(), e.to_string()))?;
                roots.add(cert).map_err(|e| NetError::Ca(path.into(), e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// A connection's byte stream: plain TCP, or rustls over TCP.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<(rustls::ClientConnection, TcpStream)>),
}

impl Transport {
    pub fn new(sock: TcpStream, tls: Option<&Arc<rustls::ClientConfig>>, target: &Target) -> io::Result<Transport> {
        let Some(config) = tls else {
            return Ok(Transport::Plain(sock));
        };
        let name = rustls::pki_types::ServerName::IpAddress(target.addr.ip().into());
        let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Transport::Tls(Box::new((conn, sock))))
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(b) => &mut b.1,
        }
    }

    /// Reads plaintext into `buf`. `WouldBlock` when nothing more is there
    /// now; `Ok(0)` at end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(b) => {
                let (conn, sock) = &mut **b;
                loop {
                    match conn.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    // No plaintext buffered: pull more records off the socket.
                    match conn.read_tls(sock) {
                        Ok(0) => return Ok(0),
                        Ok(_) => {
                            conn.process_new_packets().map_err(|e| io::Error::other(e.to_string()))?;
                            // Handshake messages may need answering.
                            Self::write_tls(conn, sock)?;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn write_tls(conn: &mut rustls::ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes as much of `data` as the socket takes now. Over TLS all of it
    /// is taken into rustls's buffer and flushed as far as the socket allows.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(data),
            Transport::Tls(b) => {
                let (conn, sock) = &mut **b;
                if !data.is_empty() {
                    conn.writer().write_all(data)?;
                }
                Self::write_tls(conn, sock)?;
                Ok(data.len())
            }
        }
    }

    /// Flushes what TLS still holds; a no-op for plain TCP.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(b) => {
                let (conn, sock) = &mut **b;
                Self::write_tls(conn, sock)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls_only() {
        let t = parse_url("ws://127.0.0.1:8080/v1/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/v1/ws");
        assert!(!t.tls);
        let t = parse_url("wss://localhost:8443/v1/ws?x=1").unwrap();
        assert!(t.tls);
        assert_eq!(t.path, "/v1/ws?x=1");
        assert!(parse_url("ws://[::1]:80/").unwrap().addr.is_ipv6());
        assert!(parse_url("ws://127.9.9.9:1").is_ok());
        assert!(matches!(parse_url("ws://10.0.0.1:80/"), Err(NetError::NotLoopback(_))));
        assert!(matches!(parse_url("ws://example.com/"), Err(NetError::Url(..))));
        assert!(matches!(parse_url("http://127.0.0.1/"), Err(NetError::Url(..))));
    }

    #[test]
    fn checks_the_upgrade_answer() {
        let accept = roomcast::proto::ws::accept_key(WS_KEY.as_bytes());
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {accept}\r\n\r\n\x01\x00");
        assert_eq!(parse_upgrade(ok.as_bytes(), &accept), Upgrade::Done(ok.len() - 2));
        assert_eq!(parse_upgrade(&ok.as_bytes()[..20], &accept), Upgrade::Partial);
        assert!(matches!(
            parse_upgrade(b"HTTP/1.1 401 Unauthorized\r\n\r\n", &accept),
            Upgrade::Refused(s) if s.contains("401")
        ));
        let t = parse_url("ws://127.0.0.1:1/v1/ws").unwrap();
        let req = String::from_utf8(upgrade_request(&t, "user=a", Some("tok"))).unwrap();
        assert!(req.starts_with("GET /v1/ws?user=a HTTP/1.1\r\n"));
        assert!(req.contains("Authorization: Bearer tok\r\n"));
    }
}
