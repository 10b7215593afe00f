//! Histograms, percentile extraction and the JSON result every scenario writes.
//!
//! Latencies are recorded in nanoseconds into HDR histograms (3 significant
//! digits, 1 ns to 100 s) and reported in microseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest trackable latency: 100 s; anything slower saturates there.
const MAX_NS: u64 = 100_000_000_000;

/// A latency histogram in nanoseconds.
pub fn new_hist() -> Histogram<u64> {
    // The bounds are constants that the crate accepts; fall back to an
    // auto-resizing histogram rather than panic if that ever changes.
    Histogram::new_with_bounds(1, MAX_NS, 3).or_else(|_| Histogram::new(3)).unwrap_or_else(|_| unreachable_hist())
}

#[cold]
fn unreachable_hist() -> Histogram<u64> {
    // `Histogram::new(3)` only fails for sigfig > 5.
    std::process::abort()
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// `[percentile, µs]` pairs from 0 up to 99.9999, evenly spaced on a log
    /// scale of 1/(1-p), for percentile curves.
    pub curve: Vec<(f64, f64)>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The percentile points of the curve: 1 - 10^(-i/10) for i in 0..=60.
pub fn curve_points() -> impl Iterator<Item = f64> {
    (0..=60).map(|i| 1.0 - 10f64.powf(-f64::from(i) / 10.0))
}

/// Extracts the reported percentiles from a histogram of nanoseconds.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        curve: curve_points().map(|q| (q * 100.0, us(h.value_at_quantile(q)))).collect(),
    }
}

/// Server and load-generator resources over the measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// Server CPU (user + system) over the window; `None` without `--server-pid`.
    pub server_cpu_us: Option<f64>,
    pub server_cpu_us_per_unit: Option<f64>,
    /// The two parts of `server_cpu_us`: utime and stime over the window.
    #[serde(default)]
    pub server_user_cpu_us: Option<f64>,
    #[serde(default)]
    pub server_system_cpu_us: Option<f64>,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub loadgen_cpu_us: f64,
    pub loadgen_cpu_us_per_unit: Option<f64>,
}

/// Order violations seen by members.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Violations {
    pub gaps: u64,
    pub missing: u64,
    pub dups: u64,
    /// Frames the server refused or errors it sent.
    pub errors: u64,
}

impl Violations {
    pub fn total(&self) -> u64 {
        self.gaps + self.dups + self.errors
    }
}

/// One scenario's result: what `--json` writes and `report` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub scenario: String,
    pub label: String,
    pub url: String,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    /// What one unit of work is: `delivery`, `round_trip`, `connection`, `publish`.
    pub unit: String,
    /// Units completed in the measured window.
    pub units: u64,
    pub measured_s: f64,
    pub units_per_s: f64,
    /// Named counts (messages sent, acks, connections, ...).
    pub counts: serde_json::Map<String, serde_json::Value>,
    /// The main latency (delivery, round trip, handshake or ack).
    pub latency: Percentiles,
    /// Acknowledgement latency for scenarios that publish.
    pub ack_latency: Option<Percentiles>,
    pub resources: Resources,
    pub violations: Violations,
    /// Memory per connection for `idle`, in bytes.
    pub rss_per_connection_bytes: Option<f64>,
}

impl RunResult {
    /// The human summary printed on stdout.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "== {} [{}] {}", self.scenario, self.label, self.url);
        let _ = writeln!(s, "params: {}", self.params);
        let _ = writeln!(
            s,
            "{} units ({}) in {:.2} s: {:.0} per second",
            self.units, self.unit, self.measured_s, self.units_per_s
        );
        for (k, v) in &self.counts {
            let _ = writeln!(s, "  {k}: {v}");
        }
        let lat = |s: &mut String, name: &str, p: &Percentiles| {
            let _ = writeln!(
                s,
                "{name} (µs, n={}): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
                p.count, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us, p.mean_us
            );
        };
        if self.latency.count > 0 {
            lat(&mut s, "latency", &self.latency);
        }
        if let Some(a) = &self.ack_latency {
            lat(&mut s, "ack latency", a);
        }
        let r = &self.resources;
        if let Some(cpu) = r.server_cpu_us {
            let split = match (r.server_user_cpu_us, r.server_system_cpu_us) {
                (Some(u), Some(k)) => format!(" (user {:.0} ms, system {:.0} ms)", u / 1000.0, k / 1000.0),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "server CPU: {:.0} ms{split}, {:.2} µs per {}",
                cpu / 1000.0,
                r.server_cpu_us_per_unit.unwrap_or(f64::NAN),
                self.unit
            );
        }
        let _ = writeln!(
            s,
            "load generator CPU: {:.0} ms, {:.2} µs per {}",
            r.loadgen_cpu_us / 1000.0,
            r.loadgen_cpu_us_per_unit.unwrap_or(f64::NAN),
            self.unit
        );
        if let (Some(b), Some(a)) = (r.server_rss_before_bytes, r.server_rss_after_bytes) {
            let _ = writeln!(s, "server RSS: {} KiB -> {} KiB", b / 1024, a / 1024);
        }
        if let Some(per) = self.rss_per_connection_bytes {
            let _ = writeln!(s, "server memory per connection: {per:.0} bytes");
        }
        let v = &self.violations;
        let _ = writeln!(
            s,
            "violations: {} (gaps {}, missing {}, dups {}, errors {})",
            v.total(),
            v.gaps,
            v.missing,
            v.dups,
            v.errors
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = new_hist();
        for ns in 1..=100_000u64 {
            h.record(ns * 10).unwrap();
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 100_000);
        // 3 significant digits: within 0.1 %.
        assert!((p.p50_us - 500.0).abs() < 1.0, "{}", p.p50_us);
        assert!((p.p90_us - 900.0).abs() < 1.0, "{}", p.p90_us);
        assert!((p.p99_us - 990.0).abs() < 1.0, "{}", p.p99_us);
        assert!((p.p999_us - 999.0).abs() < 1.0, "{}", p.p999_us);
        assert!((p.max_us - 1000.0).abs() < 1.0, "{}", p.max_us);
        assert_eq!(p.curve.len(), 61);
        assert_eq!(p.curve[0].0, 0.0);
        assert!(p.curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn empty_histogram_reports_zeroes() {
        assert_eq!(percentiles(&new_hist()), Percentiles::default());
    }

    #[test]
    fn outliers_saturate_instead_of_failing() {
        let mut h = new_hist();
        h.saturating_record(u64::MAX);
        assert!(percentiles(&h).max_us >= 99_000_000.0);
    }

    #[test]
    fn result_round_trips_through_json() {
        let r = RunResult { scenario: "fanout".into(), label: "x".into(), units: 5, ..RunResult::default() };
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.summary().contains("fanout"));
    }
}
