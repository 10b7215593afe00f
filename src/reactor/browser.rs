//! Browser safety: which web origins may open a WebSocket or call `/v1/*`
//! (the `Origin` allow-list and CORS), and the headers the built-in page is
//! served with (its content security policy).
//!
//! A request without an `Origin` header comes from a non-browser client
//! and is allowed: only browsers send `Origin`, and only browsers carry a
//! visitor's ambient credentials to a site the visitor did not choose.
//! roomcast uses no cookies, so CORS never says `Allow-Credentials`; an
//! allowed origin is echoed back (never `*`), with `Vary: Origin` so no
//! cache hands one origin's answer to another.

use std::sync::OnceLock;

use crate::proto::http::Request;

/// Methods and headers a preflight may ask for.
pub const CORS_METHODS: &str = "GET, HEAD, POST";
pub const CORS_HEADERS: &str = "authorization, content-type";
/// How long a browser may cache a preflight answer, in seconds.
pub const CORS_MAX_AGE: &str = "600";

/// The parsed `--allowed-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Empty setting: the server's own origin only (scheme of the
    /// connection, host from the `Host` header).
    Own,
    /// `*`: any origin (the credential is a token the page must hold).
    Any,
    /// The server's own origin and these (lower-cased, no trailing `/`).
    List(Vec<String>),
}

impl Origins {
    /// Parses the comma-separated setting; the error names the bad entry.
    pub fn parse(setting: Option<&str>) -> Result<Origins, String> {
        let Some(s) = setting.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Origins::Own);
        };
        if s == "*" {
            return Ok(Origins::Any);
        }
        let mut list = Vec::new();
        for entry in s.split(',').map(str::trim) {
            list.push(check_origin(entry)?);
        }
        Ok(Origins::List(list))
    }

    /// Whether a request with this `Origin` may go on. `origin` is the
    /// header's raw value; `tls` the connection's transport.
    pub fn allows(&self, origin: &[u8], req: &Request, tls: bool) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else { return false };
        let origin = origin.trim().to_ascii_lowercase();
        if matches!(self, Origins::Any) {
            return check_origin(&origin).is_ok();
        }
        if is_own(&origin, req, tls) {
            return true;
        }
        match self {
            Origins::List(list) => list.contains(&origin),
            Origins::Own | Origins::Any => false,
        }
    }
}

/// `scheme://host[:port]` with scheme http or https, nothing after it:
/// the form browsers send. Returns it lower-cased.
fn check_origin(entry: &str) -> Result<String, String> {
    let lower = entry.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| format!("{entry:?} is not an origin (scheme://host[:port], http or https)"))?;
    let host_ok = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return Err(format!("{entry:?} is not an origin (scheme://host[:port], with no path)"));
    }
    Ok(lower)
}

/// Whether `origin` is the origin the request was sent to: the scheme of
/// this connection and the `Host` header. A forged `Host` only fools the
/// client that forged it.
fn is_own(origin: &str, req: &Request, tls: bool) -> bool {
    let Some(host) = req.header("host").and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let scheme = if tls { "https://" } else { "http://" };
    origin.strip_prefix(scheme).is_some_and(|h| h.eq_ignore_ascii_case(host.trim()))
}

/// The page's `Content-Security-Policy`: nothing but its own inline script
/// and style (by hash, computed from the page itself, so an edit of the
/// page cannot leave the policy stale), WebSocket and fetch to its own
/// origin, no framing, no plugins, no base or form targets elsewhere.
pub fn page_csp(page: &str) -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| csp(page))
}

/// [`page_csp`] for the admin page (its own blocks, its own hashes).
pub fn admin_csp(page: &str) -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| csp(page))
}

fn csp(page: &str) -> String {
    {
        let scripts = hashes(page, "<script>", "</script>");
        let styles = hashes(page, "<style>", "</style>");
        format!(
            "default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    }
}

/// `'sha256-..'` of every block between `open` and `close` in `page`.
fn hashes(page: &str, open: &str, close: &str) -> String {
    let mut out = Vec::new();
    let mut rest = page;
    while let Some((_, after)) = rest.split_once(open) {
        let Some((body, tail)) = after.split_once(close) else { break };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
        out.push(format!("'sha256-{}'", base64_std(digest.as_ref())));
        rest = tail;
    }
    if out.is_empty() {
        "'none'".to_string()
    } else {
        out.join(" ")
    }
}

/// Standard base64 with padding (what CSP hashes use).
fn base64_std(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::{Method, Request};

    fn req(host: &str) -> Request {
        Request {
            method: Method::Get,
            path: "/v1/ws".into(),
            query: String::new(),
            minor_version: 1,
            headers: vec![("host".into(), host.as_bytes().to_vec())],
            body: Vec::new(),
            keep_alive: true,
        }
    }

    #[test]
    fn own_origin_by_default() {
        let o = Origins::parse(None).unwrap();
        let r = req("localhost:8080");
        assert!(o.allows(b"http://localhost:8080", &r, false));
        assert!(o.allows(b"HTTP://LOCALHOST:8080", &r, false));
        assert!(!o.allows(b"https://localhost:8080", &r, false), "another scheme is another origin");
        assert!(o.allows(b"https://localhost:8080", &r, true));
        for evil in
            [&b"http://evil.test"[..], b"null", b"http://localhost:8080.evil.test", b"http://localhost", b"\xff"]
        {
            assert!(!o.allows(evil, &r, false), "{evil:?}");
        }
    }

    #[test]
    fn lists_and_any() {
        let o = Origins::parse(Some("https://app.example, http://127.0.0.1:3000")).unwrap();
        let r = req("gw:1");
        assert!(o.allows(b"https://app.example", &r, false));
        assert!(o.allows(b"http://127.0.0.1:3000", &r, false));
        assert!(o.allows(b"http://gw:1", &r, false), "the own origin stays allowed");
        assert!(!o.allows(b"https://app.example.evil", &r, false));
        let any = Origins::parse(Some("*")).unwrap();
        assert!(any.allows(b"https://whatever.test", &r, false));
        assert!(!any.allows(b"null", &r, false));
        for bad in ["app.example", "https://a/b", "ftp://a", "https://", "*, https://a", "https://a b"] {
            assert!(Origins::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn csp_hashes_match_the_blocks() {
        let page = "<style>a{}</style><script>x()</script><script>y()</script>";
        assert_eq!(hashes(page, "<style>", "</style>").matches("'sha256-").count(), 1);
        assert_eq!(hashes(page, "<script>", "</script>").matches("'sha256-").count(), 2);
        assert_eq!(hashes("", "<script>", "</script>"), "'none'");
        // sha256("") in base64, a known value.
        assert_eq!(hashes("<p></p>", "<p>", "</p>"), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
        assert_eq!(base64_std(b"ab"), "YWI=");
        assert_eq!(base64_std(b"a"), "YQ==");
    }
}
