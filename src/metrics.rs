//! Counters per reactor and their Prometheus text rendering.
//!
//! Each reactor counts into plain integers on its own thread and publishes
//! them into its [`Shared`] block once per loop iteration (one writer, relaxed
//! stores, a cache line of its own), so the hot path never touches an atomic
//! read-modify-write and `/metrics` never takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection ended, for `roomcast_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Clean close handshake or HTTP connection finished.
    Normal,
    /// The peer went away without a close handshake, or an I/O error.
    Io,
    /// The peer broke HTTP, WebSocket or TLS rules.
    Protocol,
    /// Request head, idle or close-handshake timeout.
    Timeout,
    /// Outbound queue passed its cap (close 4000).
    SlowConsumer,
    /// Token expired during the session (close 4001).
    TokenExpired,
    /// Server drain.
    Shutdown,
    /// Refused at accept: connection limit.
    Limit,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Normal,
        CloseReason::Io,
        CloseReason::Protocol,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::TokenExpired,
        CloseReason::Shutdown,
        CloseReason::Limit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Io => "io",
            CloseReason::Protocol => "protocol",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Limit => "limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A reactor's own counters, plain integers.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub open: u64,
    pub accepted: u64,
    pub closed: [u64; 8],
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub published: u64,
    pub delivered: u64,
    pub queue_drops: u64,
    pub http_requests: u64,
    pub rooms_loaded: u64,
    pub rate_limited: u64,
    pub origin_refused: u64,
    pub tls_full: u64,
    pub tls_resumed: u64,
    pub tls_not_tls: u64,
    pub tls_handshake_timeouts: u64,
}

impl Counters {
    pub fn closed(&mut self, r: CloseReason) {
        self.closed[r.index()] += 1;
    }
}

/// The published copy, read by `/metrics` on any reactor.
#[repr(align(128))]
#[derive(Default)]
pub struct Shared {
    open: AtomicU64,
    accepted: AtomicU64,
    closed: [AtomicU64; 8],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    queue_drops: AtomicU64,
    http_requests: AtomicU64,
    rooms_loaded: AtomicU64,
    rate_limited: AtomicU64,
    origin_refused: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    tls_not_tls: AtomicU64,
    tls_handshake_timeouts: AtomicU64,
}

impl Shared {
    pub fn publish(&self, c: &Counters) {
        self.open.store(c.open, Relaxed);
        self.accepted.store(c.accepted, Relaxed);
        for (a, v) in self.closed.iter().zip(c.closed) {
            a.store(v, Relaxed);
        }
        self.frames_in.store(c.frames_in, Relaxed);
        self.frames_out.store(c.frames_out, Relaxed);
        self.bytes_in.store(c.bytes_in, Relaxed);
        self.bytes_out.store(c.bytes_out, Relaxed);
        self.published.store(c.published, Relaxed);
        self.delivered.store(c.delivered, Relaxed);
        self.queue_drops.store(c.queue_drops, Relaxed);
        self.http_requests.store(c.http_requests, Relaxed);
        self.rooms_loaded.store(c.rooms_loaded, Relaxed);
        self.rate_limited.store(c.rate_limited, Relaxed);
        self.origin_refused.store(c.origin_refused, Relaxed);
        self.tls_full.store(c.tls_full, Relaxed);
        self.tls_resumed.store(c.tls_resumed, Relaxed);
        self.tls_not_tls.store(c.tls_not_tls, Relaxed);
        self.tls_handshake_timeouts.store(c.tls_handshake_timeouts, Relaxed);
    }
}

/// Renders every reactor's counters in Prometheus text format 0.0.4.
pub fn render(all: &[Shared]) -> String {
    let mut out = String::with_capacity(4096);
    type Get = fn(&Shared) -> &AtomicU64;
    let simple: [(&str, &str, &str, Get); 15] = [
        ("roomcast_connections_open", "gauge", "Connections open now.", |s| &s.open),
        ("roomcast_connections_accepted_total", "counter", "Connections accepted.", |s| &s.accepted),
        ("roomcast_frames_in_total", "counter", "WebSocket frames received.", |s| &s.frames_in),
        ("roomcast_frames_out_total", "counter", "WebSocket frames queued to clients.", |s| &s.frames_out),
        ("roomcast_bytes_in_total", "counter", "Bytes read from sockets.", |s| &s.bytes_in),
        ("roomcast_bytes_out_total", "counter", "Bytes written to sockets.", |s| &s.bytes_out),
        ("roomcast_messages_published_total", "counter", "Messages published by rooms this reactor owns.", |s| {
            &s.published
        }),
        ("roomcast_messages_delivered_total", "counter", "Messages queued to members on this reactor.", |s| {
            &s.delivered
        }),
        ("roomcast_queue_drops_total", "counter", "Frames dropped from the queues of closed slow consumers.", |s| {
            &s.queue_drops
        }),
        ("roomcast_http_requests_total", "counter", "HTTP requests answered.", |s| &s.http_requests),
        ("roomcast_rooms_loaded", "gauge", "Rooms this reactor owns that are in memory now.", |s| &s.rooms_loaded),
        ("roomcast_rate_limited_total", "counter", "Requests answered rate_limited (WebSocket) or 429 (HTTP).", |s| {
            &s.rate_limited
        }),
        ("roomcast_origin_refused_total", "counter", "Requests to /v1/ refused for their Origin (403).", |s| {
            &s.origin_refused
        }),
        (
            "roomcast_tls_not_tls_total",
            "counter",
            "Connections to the TLS port whose first byte was not a TLS handshake record (closed at once).",
            |s| &s.tls_not_tls,
        ),
        (
            "roomcast_tls_handshake_timeouts_total",
            "counter",
            "TLS connections closed for not finishing the handshake within tls-handshake-timeout.",
            |s| &s.tls_handshake_timeouts,
        ),
    ];
    for (name, kind, help, get) in simple {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, s) in all.iter().enumerate() {
            let _ = writeln!(out, "{name}{{reactor=\"{i}\"}} {}", get(s).load(Relaxed));
        }
    }
    let name = "roomcast_log_dropped_total";
    let _ = writeln!(out, "# HELP {name} Log lines dropped because the log output did not keep up.");
    let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", crate::log::dropped());
    let name = "roomcast_tls_handshakes_total";
    let _ = writeln!(out, "# HELP {name} TLS handshakes finished, full or resumed (ticket or session id).");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (i, s) in all.iter().enumerate() {
        let _ = writeln!(out, "{name}{{reactor=\"{i}\",kind=\"full\"}} {}", s.tls_full.load(Relaxed));
        let _ = writeln!(out, "{name}{{reactor=\"{i}\",kind=\"resumed\"}} {}", s.tls_resumed.load(Relaxed));
    }
    let name = "roomcast_connections_closed_total";
    let _ = writeln!(out, "# HELP {name} Connections closed, by reason.\n# TYPE {name} counter");
    for (i, s) in all.iter().enumerate() {
        for r in CloseReason::ALL {
            let v = s.closed[r.index()].load(Relaxed);
            let _ = writeln!(out, "{name}{{reactor=\"{i}\",reason=\"{}\"}} {v}", r.label());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_per_reactor() {
        let shared: Vec<Shared> = (0..2).map(|_| Shared::default()).collect();
        let mut c = Counters { delivered: 7, ..Counters::default() };
        c.closed(CloseReason::SlowConsumer);
        shared[1].publish(&c);
        let text = render(&shared);
        assert!(text.contains("roomcast_messages_delivered_total{reactor=\"1\"} 7"));
        assert!(text.contains("roomcast_connections_closed_total{reactor=\"1\",reason=\"slow_consumer\"} 1"));
        assert!(text.contains("roomcast_connections_open{reactor=\"0\"} 0"));
    }
}
