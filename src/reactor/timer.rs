//! A hashed timer wheel for one reactor: coarse ticks, O(1) insert, entries
//! fired by walking the slots that have come due.
//!
//! Entries are never cancelled. Each names a connection slot, its generation
//! and the tick it was filed for; the owner keeps the tick of its live entry
//! and ignores any other (stale) entry when it fires. A deadline beyond the
//! wheel's horizon is filed at the horizon and simply re-filed when it fires.

use std::time::{Duration, Instant};

/// Tick length. Timeouts here are seconds-scale (request head, idle, ping,
/// token expiry, close handshake), so 50 ms is ample precision.
pub const TICK: Duration = Duration::from_millis(50);
const SLOTS: usize = 1024; // 51.2 s horizon
/// The furthest any deadline is ever put: a duration from outside (a
/// setting, a token's `exp`) past this is "far away", never an overflow.
pub const FAR: Duration = Duration::from_secs(400 * 86_400);

/// `now + d` that cannot panic, whatever `d` is: `d` is capped at [`FAR`].
pub fn later(now: Instant, d: Duration) -> Instant {
    // Adding 400 days to a monotonic clock reading cannot overflow on any
    // supported platform; the fallback only keeps this total.
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    pub gen: u32,
    pub tick: u64,
}

pub struct Wheel {
    start: Instant,
    slots: Vec<Vec<Entry>>,
    /// The next tick not yet fired.
    next: u64,
    /// No entry is filed before this tick (a lower bound, kept so that
    /// `timeout` need not walk empty slots on every loop iteration).
    earliest: u64,
    len: usize,
}

impl Wheel {
    pub fn new(now: Instant) -> Self {
        Wheel { start: now, slots: (0..SLOTS).map(|_| Vec::new()).collect(), next: 0, earliest: 0, len: 0 }
    }

    /// The tick at which a deadline fires (rounded up, never in the past).
    pub fn tick_for(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        let t = d.as_nanos().div_ceil(TICK.as_nanos()) as u64;
        t.max(self.next).min(self.next + SLOTS as u64 - 1)
    }

    /// Files an entry for `at` (clamped to the horizon); returns its tick.
    pub fn insert(&mut self, key: u32, gen: u32, at: Instant) -> u64 {
        let tick = self.tick_for(at);
        self.slots[(tick % SLOTS as u64) as usize].push(Entry { key, gen, tick });
        self.len += 1;
        self.earliest = self.earliest.min(tick);
        tick
    }

    /// How long poll may sleep before the next non-empty slot comes due.
    pub fn timeout(&mut self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let now_tick = now.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos();
        let now_tick = now_tick as u64;
        let mut t = self.earliest.max(self.next);
        while t < self.next + SLOTS as u64 {
            if !self.slots[(t % SLOTS as u64) as usize].is_empty() {
                self.earliest = t;
                if t <= now_tick {
                    return Some(Duration::ZERO);
                }
                let tick_ms = u64::try_from(TICK.as_millis()).unwrap_or(u64::MAX);
                let at = later(self.start, Duration::from_millis(t.saturating_mul(tick_ms)));
                return Some(at.saturating_duration_since(now));
            }
            t += 1;
        }
        None
    }

    /// Moves every entry that has come due by `now` into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Entry>) {
        let now_tick = (now.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos()) as u64;
        if self.len == 0 {
            // Nothing filed: jump rather than walk every idle tick.
            self.next = self.next.max(now_tick + 1);
            self.earliest = self.next;
            return;
        }
        if now_tick >= self.next + SLOTS as u64 {
            // A whole lap or more is due (the clock jumped, or the loop
            // stalled): every entry is, since none lies past the horizon.
            for slot in &mut self.slots {
                out.append(slot);
            }
            self.len = 0;
            self.next = now_tick + 1;
            self.earliest = self.next;
            return;
        }
        while self.next <= now_tick {
            let slot = &mut self.slots[(self.next % SLOTS as u64) as usize];
            let before = out.len();
            // Entries in a slot all share its tick (the horizon clamp keeps a
            // slot from holding two laps), so the whole slot is due.
            out.append(slot);
            self.len -= out.len() - before;
            self.next += 1;
        }
        self.earliest = self.earliest.max(self.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_clamps() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let a = w.insert(1, 0, t0 + Duration::from_millis(120));
        let b = w.insert(2, 0, t0 + Duration::from_secs(3600));
        assert_eq!(a, 3);
        assert_eq!(b, SLOTS as u64 - 1);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(100), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_millis(160), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, 1);
        assert!(w.timeout(t0 + Duration::from_millis(160)).is_some());
        out.clear();
        w.expire(t0 + Duration::from_secs(60), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(w.timeout(t0), None);
    }

    #[test]
    fn a_clock_jump_fires_everything_at_once() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.insert(1, 0, t0 + Duration::from_secs(1));
        w.insert(2, 0, t0 + Duration::from_secs(3600));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(86_400), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(w.timeout(t0 + Duration::from_secs(86_400)), None);
        w.insert(3, 0, t0 + Duration::from_secs(86_401));
        out.clear();
        w.expire(t0 + Duration::from_secs(86_402), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn later_never_overflows() {
        let t0 = Instant::now();
        assert_eq!(later(t0, Duration::from_secs(5)), t0 + Duration::from_secs(5));
        assert_eq!(later(t0, Duration::MAX), t0 + FAR);
        assert_eq!(later(t0, Duration::from_secs(u64::MAX)), t0 + FAR);
    }
}
