//! Per-connection checks on a room's stream and the latency arithmetic.
//!
//! A member learns the room's last seq from `joined`; every later `msg` must
//! carry exactly the next seq. Anything else is a violation: a gap (seqs were
//! skipped: messages lost) or a duplicate/reordering (a seq at or below one
//! already seen). Latency is always taken from the schedule's intended send
//! time, never from when the publisher actually got round to sending, so a
//! stalled publisher cannot hide the stall (no coordinated omission).

/// Order checker for one member's view of one room.
#[derive(Debug, Clone, Default)]
pub struct SeqCheck {
    /// The last seq seen (or the room's seq at `joined`); `None` before `joined`.
    last: Option<u64>,
    pub gaps: u64,
    /// Messages skipped over by gaps.
    pub missing: u64,
    pub dups: u64,
    pub received: u64,
}

/// What one `msg` did to the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    InOrder,
    Gap(u64),
    Dup,
    /// A msg before `joined`: the server broke the join contract.
    BeforeJoin,
}

impl SeqCheck {
    /// `joined` arrived with the room's last seq.
    pub fn joined(&mut self, seq: u64) {
        self.last = Some(seq);
    }

    pub fn is_joined(&self) -> bool {
        self.last.is_some()
    }

    /// A `msg` with `seq` arrived.
    pub fn observe(&mut self, seq: u64) -> SeqVerdict {
        self.received += 1;
        let Some(last) = self.last else {
            self.dups += 1;
            return SeqVerdict::BeforeJoin;
        };
        if seq == last.wrapping_add(1) {
            self.last = Some(seq);
            SeqVerdict::InOrder
        } else if seq > last {
            let skipped = seq - last - 1;
            self.gaps += 1;
            self.missing += skipped;
            self.last = Some(seq);
            SeqVerdict::Gap(skipped)
        } else {
            // Keep `last`: a late duplicate must not rewind the expectation.
            self.dups += 1;
            SeqVerdict::Dup
        }
    }

    pub fn violations(&self) -> u64 {
        self.gaps + self.dups
    }

    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// A fixed-rate schedule: message `k` is due at `start + k * interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub start_ns: u64,
    pub interval_ns: u64,
}

impl Schedule {
    /// When message `k` was meant to be sent.
    pub fn intended(&self, k: u64) -> u64 {
        self.start_ns.saturating_add(k.saturating_mul(self.interval_ns))
    }

    /// How many messages are due by `now` (indices `0..n`).
    pub fn due_by(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns || self.interval_ns == 0 {
            return 0;
        }
        (now_ns - self.start_ns) / self.interval_ns + 1
    }
}

/// Latency of an event observed at `now_ns` for a send intended at
/// `intended_ns`: measured from the intention, never from the actual send.
/// Clamped at zero (a receipt cannot precede its schedule on one clock, but a
/// flat-out publisher stamps the actual time, which may equal `now`).
pub fn latency_ns(intended_ns: u64, now_ns: u64) -> u64 {
    now_ns.saturating_sub(intended_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_violation() {
        let mut c = SeqCheck::default();
        c.joined(10);
        for s in 11..=20 {
            assert_eq!(c.observe(s), SeqVerdict::InOrder);
        }
        assert_eq!(c.violations(), 0);
        assert_eq!(c.received, 10);
        assert_eq!(c.last(), Some(20));
    }

    #[test]
    fn gaps_and_dups_are_counted() {
        let mut c = SeqCheck::default();
        c.joined(0);
        assert_eq!(c.observe(1), SeqVerdict::InOrder);
        assert_eq!(c.observe(4), SeqVerdict::Gap(2));
        assert_eq!(c.observe(4), SeqVerdict::Dup);
        assert_eq!(c.observe(2), SeqVerdict::Dup);
        // The expectation was not rewound by the late duplicates.
        assert_eq!(c.observe(5), SeqVerdict::InOrder);
        assert_eq!((c.gaps, c.missing, c.dups), (1, 2, 2));
        assert_eq!(c.violations(), 3);
    }

    #[test]
    fn msg_before_joined_is_a_violation() {
        let mut c = SeqCheck::default();
        assert!(!c.is_joined());
        assert_eq!(c.observe(1), SeqVerdict::BeforeJoin);
        assert_eq!(c.violations(), 1);
    }

    #[test]
    fn latency_is_taken_from_the_schedule_not_the_send() {
        // 1000 msg/s from t=1s. The publisher stalls for 50 ms and then sends
        // messages 0..50 at once at t=1.050s; each arrives 100 µs later.
        let sched = Schedule { start_ns: 1_000_000_000, interval_ns: 1_000_000 };
        let actual_send = 1_050_000_000;
        let mut lat = Vec::new();
        for k in 0..50 {
            let recv = actual_send + 100_000;
            lat.push(latency_ns(sched.intended(k), recv));
        }
        // Message 0 waited the whole stall: 50.1 ms, not 100 µs.
        assert_eq!(lat[0], 50_100_000);
        assert_eq!(lat[49], 1_100_000);
        // Measured from the actual send, every one would read 100 µs.
        assert!(lat.iter().all(|&l| l >= latency_ns(actual_send, actual_send + 100_000)));
    }

    #[test]
    fn schedule_counts_due_messages() {
        let s = Schedule { start_ns: 100, interval_ns: 10 };
        assert_eq!(s.due_by(99), 0);
        assert_eq!(s.due_by(100), 1);
        assert_eq!(s.due_by(129), 3);
        assert_eq!(s.intended(3), 130);
        assert_eq!(latency_ns(200, 150), 0);
    }
}
