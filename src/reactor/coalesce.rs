//! When a reactor holds its writes back so that several frames go to each
//! member in one `sendmsg` (sans-IO: instants in, a decision out).
//!
//! On loopback and on a busy edge most of a delivery's cost is the kernel's
//! per-write work, so writing two frames in one call costs little more than
//! one. Holding writes pays only when, within the hold, more frames arrive
//! for the same connections; otherwise it is pure latency. So the hold
//! follows the load:
//!
//! - `rate`: frames per connection per second, measured at every flush
//!   (deliveries since the last flush ÷ connections written ÷ time since
//!   the last flush), smoothed. It does not depend on the hold itself.
//! - `cost`: how long a flush pass that carried deliveries took, smoothed.
//! - The window is `HOLD_PER_COST` × `cost`, at most `MAX_HOLD`: the hold
//!   stays within a few times what writing takes anyway, and a fast flush
//!   (few members, or a quiet machine) means a short hold. Four was chosen
//!   by measurement: at 1 room × 100 members and 3,500 msg/s, two flush
//!   costs barely batched (the window was shorter than the gap between
//!   messages), four cut CPU per delivery by about a quarter at a lower
//!   p99 than a fixed 500 µs hold.
//! - Writes are held only while `rate` × window ≥ `MIN_GAIN`, i.e. each
//!   connection is expected to get another frame before the window closes.
//!   At light load (a member gets a frame every few milliseconds) nothing
//!   ever waits; under heavy fan-out writes carry several frames each.
//!
//! Replies alone (no delivery since the last flush) never wait.

use std::time::{Duration, Instant};

/// The longest a write is held after the previous flush began.
pub const MAX_HOLD: Duration = Duration::from_millis(1);
/// The window, in flush costs.
const HOLD_PER_COST: u32 = 4;
/// Holds shorter than this are not worth a timer.
const MIN_HOLD: Duration = Duration::from_micros(50);
/// Frames each connection is expected to get within the window, at least,
/// for a hold to pay (in thousandths).
const MIN_GAIN_MILLI: u64 = 1000;
/// Smoothing: each sample moves the average by 1/2^SHIFT of the difference.
const SHIFT: u32 = 3;

#[derive(Debug)]
pub struct Coalescer {
    /// When the last flush pass began, and the delivery count then.
    last_flush: Instant,
    delivered_at_flush: u64,
    /// Frames per connection per second, in thousandths (smoothed).
    rate_milli: u64,
    /// Duration of a flush pass with deliveries, in nanoseconds (smoothed).
    cost_ns: u64,
}

/// Moves `avg` toward `sample`.
fn smooth(avg: u64, sample: u64) -> u64 {
    if sample >= avg {
        avg + ((sample - avg) >> SHIFT)
    } else {
        avg - ((avg - sample) >> SHIFT)
    }
}

impl Coalescer {
    pub fn new(now: Instant) -> Coalescer {
        Coalescer { last_flush: now, delivered_at_flush: 0, rate_milli: 0, cost_ns: 0 }
    }

    /// The current hold window (zero: no hold is worth it).
    pub fn window(&self) -> Duration {
        let w = Duration::from_nanos(self.cost_ns.saturating_mul(u64::from(HOLD_PER_COST))).min(MAX_HOLD);
        if w < MIN_HOLD {
            return Duration::ZERO;
        }
        // Frames per connection expected within the window.
        let gain_milli = u128::from(self.rate_milli) * w.as_nanos() / 1_000_000_000;
        if gain_milli < u128::from(MIN_GAIN_MILLI) {
            return Duration::ZERO;
        }
        w
    }

    /// Whether writes queued now should wait, and until when. `delivered`
    /// is the reactor's delivery count so far.
    pub fn hold(&self, now: Instant, delivered: u64) -> Option<Instant> {
        if delivered == self.delivered_at_flush {
            return None;
        }
        let w = self.window();
        if w.is_zero() {
            return None;
        }
        let until = self.last_flush.checked_add(w)?;
        (now < until).then_some(until)
    }

    /// A flush pass began at `started`, wrote `conns` connections and took
    /// `took`; `delivered` is the delivery count when it began. Passes that
    /// carried no delivery (replies only, or nothing) are ignored: the rate
    /// is per interval between delivering passes, and after a quiet spell
    /// longer than the window the next delivery goes out at once (the
    /// window counts from the last delivering pass).
    pub fn flushed(&mut self, started: Instant, took: Duration, conns: usize, delivered: u64) {
        let frames = delivered.saturating_sub(self.delivered_at_flush);
        if frames == 0 {
            return;
        }
        let since = started.saturating_duration_since(self.last_flush);
        if conns > 0 {
            let ns = since.as_nanos().max(1);
            let per_conn_milli = u128::from(frames) * 1_000 * 1_000_000_000 / ns.saturating_mul(conns as u128);
            self.rate_milli = smooth(self.rate_milli, u64::try_from(per_conn_milli).unwrap_or(u64::MAX));
            self.cost_ns = smooth(self.cost_ns, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        }
        self.last_flush = started;
        self.delivered_at_flush = delivered;
    }
}

/// A one-shot alarm with microsecond precision for the end of a hold: the
/// poller's own timeout is in whole milliseconds (mio rounds up), which
/// would turn a 300 µs hold into a millisecond whenever nothing else
/// wakes the loop. A Linux `timerfd` registered with the poller; elsewhere
/// (or when it cannot be made) holds end on the poll timeout.
pub struct Alarm {
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
}

impl Alarm {
    /// Makes the alarm and registers it under `token`; without one, holds
    /// end on the poll timeout.
    pub fn new(registry: &mio::Registry, token: mio::Token) -> Alarm {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            // SAFETY: timerfd_create takes plain flags and returns a new
            // descriptor (or -1), which we then own.
            let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
            if raw < 0 {
                return Alarm { fd: None };
            }
            // SAFETY: `raw` is a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let src = &mut mio::unix::SourceFd(&fd.as_raw_fd());
            if registry.register(src, token, mio::Interest::READABLE).is_err() {
                return Alarm { fd: None };
            }
            Alarm { fd: Some(fd) }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (registry, token);
            Alarm {}
        }
    }

    /// Rings `after` from now (at least a microsecond), replacing any
    /// earlier setting. Re-arming also resets the expiry count, so the
    /// descriptor never needs reading: each expiry is a new edge.
    pub fn set(&self, after: Duration) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            let after = after.max(Duration::from_micros(1)).min(MAX_HOLD.saturating_mul(16));
            let spec = libc::itimerspec {
                it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: libc::timespec {
                    tv_sec: after.as_secs() as libc::time_t,
                    tv_nsec: after.subsec_nanos() as _,
                },
            };
            // SAFETY: `spec` is a valid itimerspec on our stack; a null old
            // value is allowed. A failure only leaves the poll timeout.
            unsafe {
                libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a coalescer as a reactor would: `per_flush` deliveries over
    /// `conns` connections every `every`, each flush taking `took`.
    fn steady(every: Duration, per_flush: u64, conns: usize, took: Duration) -> Coalescer {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0);
        let mut delivered = 0;
        for i in 1..200u32 {
            delivered += per_flush;
            c.flushed(t0 + every * i, took, conns, delivered);
        }
        c
    }

    #[test]
    fn light_fan_out_never_waits() {
        // A member gets a frame every 20 ms (10 rooms × 100 at 500 msg/s):
        // nothing arrives for it within a millisecond.
        let c = steady(Duration::from_millis(2), 100, 100, Duration::from_micros(400));
        assert_eq!(c.window(), Duration::ZERO);
        let now = c.last_flush + Duration::from_micros(100);
        assert_eq!(c.hold(now, c.delivered_at_flush + 100), None);
    }

    #[test]
    fn heavy_fan_out_holds_for_a_few_flushes() {
        // 1 room × 100 at 3,500 msg/s, flushing each message (286 µs
        // apart), a flush taking 300 µs.
        let c = steady(Duration::from_micros(286), 100, 100, Duration::from_micros(300));
        let w = c.window();
        assert!(w > Duration::from_micros(500) && w <= MAX_HOLD, "{w:?}");
        let now = c.last_flush + Duration::from_micros(100);
        assert_eq!(c.hold(now, c.delivered_at_flush + 100), Some(c.last_flush + w));
        // Replies alone do not wait, and nothing waits past the window.
        assert_eq!(c.hold(now, c.delivered_at_flush), None);
        assert_eq!(c.hold(c.last_flush + w, c.delivered_at_flush + 100), None);
    }

    #[test]
    fn the_hold_is_capped_and_a_quiet_spell_ends_it() {
        let mut c = steady(Duration::from_micros(100), 1000, 1000, Duration::from_millis(5));
        assert_eq!(c.window(), MAX_HOLD);
        // After a pause longer than the window, the next delivery goes at once.
        let later = c.last_flush + MAX_HOLD + Duration::from_micros(1);
        assert_eq!(c.hold(later, c.delivered_at_flush + 1), None);
        // Deliveries far apart: the learnt rate decays to nothing.
        let mut t = c.last_flush;
        for _ in 0..100 {
            t += Duration::from_millis(50);
            let d = c.delivered_at_flush + 1;
            c.flushed(t, Duration::from_millis(5), 1000, d);
        }
        assert_eq!(c.window(), Duration::ZERO);
    }

    #[test]
    fn a_fast_flush_is_not_worth_a_timer() {
        let c = steady(Duration::from_micros(50), 10, 10, Duration::from_micros(10));
        assert_eq!(c.window(), Duration::ZERO);
    }

    #[test]
    fn extreme_samples_do_not_overflow() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(t0);
        c.flushed(t0, Duration::MAX, 1, u64::MAX);
        c.flushed(t0, Duration::MAX, usize::MAX, u64::MAX);
        let _ = c.window();
        let _ = c.hold(t0, 0);
    }
}
