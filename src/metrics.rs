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
    pub deflated: u64,
}

impl Counters {
    pub fn closed(&mut self, r: CloseReason) {
        self.closed[r.index()] += 1;
    }
}

/// Bucket bounds of the latency histograms, in microseconds: 50 µs to 5 s.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];
/// Bucket bounds of the queue histogram, in bytes: 64 B to 64 MiB.
pub const BYTES_BOUNDS: [u64; 11] =
    [64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];

/// A Prometheus histogram kept by one thread: counts per bucket (the last
/// is `+Inf`), not cumulative, and the sum. `B` is the number of bounds.
#[derive(Debug, Clone)]
pub struct Histogram<const B: usize, const N: usize> {
    bounds: &'static [u64; B],
    counts: [u64; N],
    sum: u64,
}

impl<const B: usize, const N: usize> Histogram<B, N> {
    pub const fn new(bounds: &'static [u64; B]) -> Self {
        Histogram { bounds, counts: [0; N], sum: 0 }
    }

    /// `n` observations of `v`: a bucket found by binary search, two adds.
    pub fn observe_n(&mut self, v: u64, n: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += n;
        }
        self.sum = self.sum.saturating_add(v.saturating_mul(n));
    }

    pub fn observe(&mut self, v: u64) {
        self.observe_n(v, 1);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Latency (µs) and queue (bytes) histograms of one reactor.
pub type LatencyHist = Histogram<16, 17>;
pub type BytesHist = Histogram<11, 12>;

/// A reactor's histograms (see `render` for their meaning).
#[derive(Debug, Clone)]
pub struct Hists {
    pub publish_commit: LatencyHist,
    pub commit_first_write: LatencyHist,
    pub queue_bytes: BytesHist,
    /// Something was observed since the last publish.
    pub dirty: bool,
}

impl Default for Hists {
    fn default() -> Hists {
        Hists {
            publish_commit: Histogram::new(&LATENCY_BOUNDS_US),
            commit_first_write: Histogram::new(&LATENCY_BOUNDS_US),
            queue_bytes: Histogram::new(&BYTES_BOUNDS),
            dirty: false,
        }
    }
}

/// The published copy of one histogram.
struct SharedHist<const N: usize> {
    counts: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for SharedHist<N> {
    fn default() -> Self {
        SharedHist { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) }
    }
}

impl<const N: usize> SharedHist<N> {
    fn publish<const B: usize>(&self, h: &Histogram<B, N>) {
        for (a, v) in self.counts.iter().zip(h.counts) {
            a.store(v, Relaxed);
        }
        self.sum.store(h.sum, Relaxed);
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
    deflated: AtomicU64,
    publish_commit: SharedHist<17>,
    commit_first_write: SharedHist<17>,
    queue_bytes: SharedHist<12>,
}

/// The totals `info` of the server API shows for one reactor.
pub struct Snapshot {
    pub open: u64,
    pub accepted: u64,
    pub rooms_loaded: u64,
    pub published: u64,
    pub delivered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Shared {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            open: self.open.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            rooms_loaded: self.rooms_loaded.load(Relaxed),
            published: self.published.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }

    /// Publishes the histograms (only when something was observed: most
    /// loop iterations of a quiet reactor store nothing).
    pub fn publish_hists(&self, h: &mut Hists) {
        if !h.dirty {
            return;
        }
        h.dirty = false;
        self.publish_commit.publish(&h.publish_commit);
        self.commit_first_write.publish(&h.commit_first_write);
        self.queue_bytes.publish(&h.queue_bytes);
    }

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
        self.deflated.store(c.deflated, Relaxed);
    }
}

/// Renders every reactor's counters in Prometheus text format 0.0.4.
pub fn render(all: &[Shared]) -> String {
    let mut out = String::with_capacity(4096);
    type Get = fn(&Shared) -> &AtomicU64;
    let simple: [(&str, &str, &str, Get); 16] = [
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
            "roomcast_deflate_compressions_total",
            "counter",
            "Messages this reactor compressed for permessage-deflate members (once per message for all reactors).",
            |s| &s.deflated,
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
    render_hist(
        &mut out,
        "roomcast_publish_commit_seconds",
        "Time from a publish reaching its room's owner to its commit (each message).",
        all,
        |s| &s.publish_commit,
        &LATENCY_BOUNDS_US,
        1_000_000,
    );
    render_hist(
        &mut out,
        "roomcast_commit_first_write_seconds",
        "Time from a commit to the first write of its deliveries, per reactor that writes them (one per write pass).",
        all,
        |s| &s.commit_first_write,
        &LATENCY_BOUNDS_US,
        1_000_000,
    );
    render_hist(
        &mut out,
        "roomcast_outbound_queue_bytes",
        "Bytes queued to a connection when a write pass reaches it.",
        all,
        |s| &s.queue_bytes,
        &BYTES_BOUNDS,
        1,
    );
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

/// One histogram family, per reactor: cumulative `_bucket`s with `le` in
/// the family's unit (the stored integers divided by `per_unit`), `_sum`
/// and `_count`.
fn render_hist<const N: usize, const B: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    all: &[Shared],
    get: fn(&Shared) -> &SharedHist<N>,
    bounds: &[u64; B],
    per_unit: u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, s) in all.iter().enumerate() {
        let h = get(s);
        let mut total = 0;
        for (k, c) in h.counts.iter().enumerate() {
            total += c.load(Relaxed);
            match bounds.get(k) {
                Some(b) => {
                    let le = decimal(*b, per_unit);
                    let _ = writeln!(out, "{name}_bucket{{reactor=\"{i}\",le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{reactor=\"{i}\",le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = decimal(h.sum.load(Relaxed), per_unit);
        let _ = writeln!(out, "{name}_sum{{reactor=\"{i}\"}} {sum}\n{name}_count{{reactor=\"{i}\"}} {total}");
    }
}

/// `v / per_unit` written exactly in decimal (`50 / 10^6` is `0.00005`,
/// where a float would print `0.000049999999999999996`). `per_unit` is a
/// power of ten.
fn decimal(v: u64, per_unit: u64) -> String {
    let (whole, frac) = (v / per_unit.max(1), v % per_unit.max(1));
    if frac == 0 {
        return whole.to_string();
    }
    let width = per_unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
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

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(50, 1_000_000), "0.00005");
        assert_eq!(decimal(2_500_000, 1_000_000), "2.5");
        assert_eq!(decimal(5_000_000, 1_000_000), "5");
        assert_eq!(decimal(0, 1_000_000), "0");
        assert_eq!(decimal(1 << 20, 1), "1048576");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let shared: Vec<Shared> = (0..1).map(|_| Shared::default()).collect();
        let mut h = Hists::default();
        h.publish_commit.observe(40); // first bucket (<= 50 µs)
        h.publish_commit.observe_n(50, 2); // still le 50 µs: bounds are inclusive
        h.publish_commit.observe(7_000_000); // past 5 s: +Inf only
        h.queue_bytes.observe(100);
        h.dirty = true;
        shared[0].publish_hists(&mut h);
        assert!(!h.dirty);
        let text = render(&shared);
        let line = |l: &str| text.lines().any(|x| x == l);
        assert!(line("roomcast_publish_commit_seconds_bucket{reactor=\"0\",le=\"0.00005\"} 3"), "{text}");
        assert!(line("roomcast_publish_commit_seconds_bucket{reactor=\"0\",le=\"5\"} 3"), "{text}");
        assert!(line("roomcast_publish_commit_seconds_bucket{reactor=\"0\",le=\"+Inf\"} 4"), "{text}");
        assert!(line("roomcast_publish_commit_seconds_count{reactor=\"0\"} 4"), "{text}");
        assert!(line("roomcast_publish_commit_seconds_sum{reactor=\"0\"} 7.00014"), "{text}");
        assert!(line("roomcast_outbound_queue_bytes_bucket{reactor=\"0\",le=\"64\"} 0"), "{text}");
        assert!(line("roomcast_outbound_queue_bytes_bucket{reactor=\"0\",le=\"256\"} 1"), "{text}");
        assert!(line("roomcast_commit_first_write_seconds_count{reactor=\"0\"} 0"), "{text}");
    }
}
