//! The load generator's event loop: one mio loop per thread driving many
//! client connections through connect, upgrade, join and the scenario's
//! traffic, and tallying what it measures.
//!
//! Lifecycle of a connection: `Connecting` (TCP in progress) → `Upgrading`
//! (request sent, waiting for 101) → `Open` → closed (dropped from the slab).
//! Setup is paced (`setup_concurrency` connections in flight per thread) so
//! the server's listen backlog never overflows into SYN retransmits.
//!
//! Phases are driven by the coordinating thread through [`Shared`]: workers
//! set connections up and count them ready; the coordinator then publishes
//! `go`, the measured window `[measure_start, measure_end)`, and finally
//! `stop`. Only events whose intended time falls inside the window are
//! recorded, so warm-up and drain are excluded from every figure.
//!
//! Receive path: one thread-wide buffer; a connection's unfinished frame is
//! copied to its front before the next read, frames are parsed where they lie,
//! and the fields needed are scanned out of the bytes. A read that does not
//! fill the buffer drained the socket, so it is the only read per readiness
//! event on plain TCP.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::check::{latency_ns, Schedule, SeqCheck, SeqVerdict};
use crate::frame;
use crate::net::{self, Target, Transport, Upgrade};
use crate::scan::{self, Kind};
use crate::stats::{new_hist, Violations};

/// Largest server frame accepted.
const MAX_FRAME: usize = 1 << 20;
/// Free space guaranteed for each read.
const MIN_READ: usize = 64 * 1024;
/// Longest poll sleep, so stop and phase changes are noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// The poll token of the worker's timer; slab keys never get this high.
const TIMER: usize = usize::MAX;

/// A one-shot timerfd with nanosecond resolution, for publisher schedules.
pub(crate) struct Timer {
    fd: OwnedFd,
}

impl Timer {
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Timer { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Fires once, `after` from now.
    pub(crate) fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: a valid timerfd and a fully initialised itimerspec. A
        // failure only costs precision: the poll timeout still bounds the sleep.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    /// Clears the expiry count so the next expiry is a new edge.
    pub(crate) fn drain(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer.
        unsafe {
            libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len());
        }
    }
}

/// How connections prove who they are.
pub enum Credentials {
    /// One token for every connection.
    Token(String),
    /// Mint an HS256 token per user.
    Secret(Arc<roomcast::auth::Auth>),
    /// No token; the user id goes in the `user` query parameter.
    Anonymous,
}

/// What a connection does once open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Joins `room` and checks and times every message.
    Member { room: u32 },
    /// Sends to `room`: on `schedule`, or flat out with `window` unacked.
    Publisher { room: u32, schedule: Option<Schedule>, window: u32 },
    /// Keeps `inflight` pings outstanding.
    Echo { inflight: u32 },
    /// Upgrades, joins room 0, records the time, and is replaced.
    Connect,
    /// Holds the connection, joined to `room` if given.
    Idle { room: Option<u32> },
}

/// One connection to set up: its role, user id and target.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    pub role: Role,
    pub user: String,
    /// Index for source-address spreading.
    pub index: usize,
    /// Which of the plan's targets it connects to (wraps around).
    pub target: usize,
}

/// Everything a worker thread needs.
pub struct Plan {
    /// Every server URL of the run (at least one); a connection picks one by
    /// its spec's `target`.
    pub targets: Arc<Vec<Target>>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub sources: u32,
    pub creds: Arc<Credentials>,
    pub rooms: Arc<Vec<String>>,
    pub body_bytes: usize,
    /// Connections to set up before `go`.
    pub specs: Vec<ConnSpec>,
    /// Per room, the group its delivery and ack latency is also recorded
    /// under (a fanout's publish URL); empty: no groups.
    pub room_groups: Arc<Vec<usize>>,
    /// Connect scenario: connections cycled concurrently by this thread.
    pub connect_slots: usize,
    /// Connect scenario: total connections over all threads.
    pub connect_total: u64,
    pub setup_concurrency: usize,
    /// Offer permessage-deflate; inflate RSV1 frames.
    pub deflate: bool,
}

impl Plan {
    /// The target for index `i`, wrapping around; `None` only for a plan
    /// built without targets.
    pub fn target(&self, i: usize) -> Option<&Target> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        self.targets.get(i % n)
    }
}

/// State shared between the coordinator and the workers.
pub struct Shared {
    pub epoch: Instant,
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub go_ns: AtomicU64,
    pub measure_start_ns: AtomicU64,
    pub measure_end_ns: AtomicU64,
    pub stop: AtomicBool,
    /// Units recorded so far (for the progress line).
    pub units: AtomicU64,
    /// Connect scenario: connections claimed and completed.
    pub claimed: AtomicU64,
    pub completed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            go_ns: AtomicU64::new(0),
            measure_start_ns: AtomicU64::new(u64::MAX),
            measure_end_ns: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            units: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    /// Nanoseconds since the shared epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn note_error(&self, e: String) {
        if let Ok(mut g) = self.first_error.lock() {
            g.get_or_insert(e);
        }
    }
}

/// What one worker measured.
pub struct Tally {
    /// Delivery, round-trip or handshake latency (ns).
    pub hist: Histogram<u64>,
    /// Ack latency (ns).
    pub ack_hist: Histogram<u64>,
    /// Time to the 101 answer (connect scenario, ns).
    pub upgrade_hist: Histogram<u64>,
    /// Members' delivery latency (ns) by the index of the target they are
    /// connected to (grown on first use; empty for other scenarios).
    pub hist_by_target: Vec<Histogram<u64>>,
    /// Delivery and ack latency (ns) by the room's group (`Plan::room_groups`).
    pub hist_by_group: Vec<Histogram<u64>>,
    pub ack_hist_by_group: Vec<Histogram<u64>>,
    pub violations: Violations,
    /// Units inside the window (deliveries, round trips, connections, acks).
    pub units: u64,
    pub sent_in_window: u64,
    pub acks_in_window: u64,
    pub sent_total: u64,
    pub msgs_received_total: u64,
    /// Bytes read from the sockets (after TLS), upgrade answers included.
    pub bytes_received_total: u64,
    /// Frames that came compressed (RSV1) and were inflated.
    pub deflated_frames_total: u64,
    pub closed_by_server: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_hist(),
            ack_hist: new_hist(),
            upgrade_hist: new_hist(),
            hist_by_target: Vec::new(),
            hist_by_group: Vec::new(),
            ack_hist_by_group: Vec::new(),
            violations: Violations::default(),
            units: 0,
            sent_in_window: 0,
            acks_in_window: 0,
            sent_total: 0,
            msgs_received_total: 0,
            bytes_received_total: 0,
            deflated_frames_total: 0,
            closed_by_server: 0,
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, so adding cannot fail; a failure would
        // only lose that worker's samples.
        let _ = self.hist.add(&other.hist);
        let _ = self.ack_hist.add(&other.ack_hist);
        let _ = self.upgrade_hist.add(&other.upgrade_hist);
        for (mine, theirs) in [
            (&mut self.hist_by_target, &other.hist_by_target),
            (&mut self.hist_by_group, &other.hist_by_group),
            (&mut self.ack_hist_by_group, &other.ack_hist_by_group),
        ] {
            for (i, h) in theirs.iter().enumerate() {
                if let Some(m) = grown(mine, i) {
                    let _ = m.add(h);
                }
            }
        }
        self.violations.gaps += other.violations.gaps;
        self.violations.missing += other.violations.missing;
        self.violations.dups += other.violations.dups;
        self.violations.errors += other.violations.errors;
        self.units += other.units;
        self.sent_in_window += other.sent_in_window;
        self.acks_in_window += other.acks_in_window;
        self.sent_total += other.sent_total;
        self.msgs_received_total += other.msgs_received_total;
        self.bytes_received_total += other.bytes_received_total;
        self.deflated_frames_total += other.deflated_frames_total;
        self.closed_by_server += other.closed_by_server;
    }

    pub fn empty() -> Tally {
        Tally::new()
    }

    /// The histogram of target `i`, grown to it.
    fn target_hist(&mut self, i: usize) -> Option<&mut Histogram<u64>> {
        grown(&mut self.hist_by_target, i)
    }
}

/// The latency group of a member's or publisher's room, if the plan has groups.
fn room_group(plan: &Plan, role: Role) -> Option<usize> {
    match role {
        Role::Member { room } | Role::Publisher { room, .. } => plan.room_groups.get(room as usize).copied(),
        _ => None,
    }
}

/// Histogram `i` of `v`, growing `v` to it; `None` past 64 (the vectors are
/// sized by what the plan names, never by what a server sends).
fn grown(v: &mut Vec<Histogram<u64>>, i: usize) -> Option<&mut Histogram<u64>> {
    if i >= 64 {
        return None;
    }
    while v.len() <= i {
        v.push(new_hist());
    }
    v.get_mut(i)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    Open,
}

struct Conn {
    t: Transport,
    phase: Phase,
    role: Role,
    /// Index of its target in the plan.
    target: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// The unfinished frame (or response head) from the last read.
    left: Vec<u8>,
    check: SeqCheck,
    /// Next message number (publisher) and unanswered requests.
    next_k: u64,
    inflight: u32,
    /// When the connect began (ns).
    t0: u64,
    ready_counted: bool,
    queued: bool,
}

/// What handling a read decided for its connection.
enum Verdict {
    Keep,
    Close(String),
    /// Connect scenario: the connection did its work.
    Done,
}

struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    poll: Poll,
    conns: Slab<Conn>,
    rbuf: Vec<u8>,
    /// permessage-deflate: the server compresses every message on its own
    /// (`server_no_context_takeover`), so one inflater serves every
    /// connection, reset after each message.
    inflater: roomcast::proto::deflate::Inflater,
    inflated: Vec<u8>,
    scratch: Vec<u8>,
    tally: Tally,
    /// Connections with output to flush at the end of this iteration.
    dirty: Vec<usize>,
    next_spec: usize,
    setting_up: usize,
    publishers: Vec<usize>,
    mask_state: u32,
    timer: Timer,
    has_echo: bool,
    has_members: bool,
    accept: String,
    unreported_units: u64,
    // Window bounds cached per iteration.
    mstart: u64,
    mend: u64,
}

/// Runs one worker until `shared.stop`; returns what it measured.
pub fn run_worker(plan: &Plan, shared: &Shared) -> io::Result<Tally> {
    let poll = Poll::new()?;
    let timer = Timer::new()?;
    poll.registry().register(&mut mio::unix::SourceFd(&timer.fd.as_raw_fd()), Token(TIMER), Interest::READABLE)?;
    let mut w = Worker {
        plan,
        shared,
        poll,
        timer,
        conns: Slab::with_capacity(plan.specs.len().max(plan.connect_slots)),
        rbuf: vec![0; 4 * MIN_READ],
        inflater: roomcast::proto::deflate::Inflater::new(true),
        inflated: Vec::new(),
        scratch: Vec::with_capacity(256 + plan.body_bytes),
        tally: Tally::new(),
        dirty: Vec::new(),
        next_spec: 0,
        setting_up: 0,
        publishers: Vec::new(),
        mask_state: 0x9E37_79B9,
        has_echo: plan.specs.iter().any(|s| matches!(s.role, Role::Echo { .. })),
        has_members: plan.specs.iter().any(|s| matches!(s.role, Role::Member { .. })),
        accept: roomcast::proto::ws::accept_key(net::WS_KEY.as_bytes()),
        unreported_units: 0,
        mstart: u64::MAX,
        mend: u64::MAX,
    };
    w.run()?;
    Ok(w.tally)
}

impl Worker<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            self.mstart = self.shared.measure_start_ns.load(Ordering::Acquire);
            self.mend = self.shared.measure_end_ns.load(Ordering::Acquire);
            self.start_setups();
            let now = self.shared.now_ns();
            let go = self.shared.go_ns.load(Ordering::Acquire);
            let mut sleep = MAX_SLEEP;
            if go != 0 && now >= go {
                sleep = sleep.min(self.drive(now));
                self.flush_dirty();
            }
            // epoll sleeps in whole milliseconds, rounded up, which would make
            // a scheduled send up to a millisecond late: a timerfd armed for
            // the exact time wakes the loop instead (without spinning).
            let timeout = if sleep.is_zero() || sleep >= MAX_SLEEP {
                sleep
            } else {
                self.timer.arm(sleep);
                MAX_SLEEP
            };
            self.poll.poll(&mut events, Some(timeout))?;
            for ev in events.iter() {
                let key = ev.token().0;
                if key == TIMER {
                    self.timer.drain();
                    continue;
                }
                if ev.is_writable() {
                    self.on_writable(key);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(key);
                }
            }
            self.flush_dirty();
            if self.unreported_units > 0 {
                self.shared.units.fetch_add(self.unreported_units, Ordering::Relaxed);
                self.unreported_units = 0;
            }
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need not be secret on loopback, only varied.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_ne_bytes()
    }

    /// Opens connections from the spec list while under the setup limit.
    fn start_setups(&mut self) {
        while self.setting_up < self.plan.setup_concurrency.max(1) {
            let Some(spec) = self.plan.specs.get(self.next_spec) else {
                return;
            };
            self.next_spec += 1;
            let spec = spec.clone();
            match self.open(&spec) {
                Ok(_) => self.setting_up += 1,
                Err(e) => {
                    self.shared.note_error(format!("connect: {e}"));
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Connect scenario: keeps `connect_slots` connections cycling.
    fn refill_connects(&mut self, now: u64) {
        if now >= self.mend {
            return;
        }
        let active = self.conns.len();
        for _ in active..self.plan.connect_slots {
            let n = self.shared.claimed.fetch_add(1, Ordering::AcqRel);
            if n >= self.plan.connect_total {
                return;
            }
            let spec =
                ConnSpec { role: Role::Connect, user: "lt-connect".to_string(), index: n as usize, target: n as usize };
            if let Err(e) = self.open(&spec) {
                self.shared.note_error(format!("connect: {e}"));
                self.shared.failed.fetch_add(1, Ordering::AcqRel);
                self.tally.violations.errors += 1;
            }
        }
    }

    fn open(&mut self, spec: &ConnSpec) -> io::Result<usize> {
        let plan = self.plan;
        let target = plan.target(spec.target).ok_or_else(|| io::Error::other("no target"))?;
        let target_ix = spec.target % plan.targets.len().max(1);
        let mut sock = net::connect(target, spec.index, plan.sources)?;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(&mut sock, Token(key), Interest::READABLE | Interest::WRITABLE)?;
        let (query, bearer) = match &*plan.creds {
            Credentials::Token(t) => (String::new(), Some(t.clone())),
            Credentials::Secret(auth) => (
                String::new(),
                Some(
                    auth.mint(&spec.user, Duration::from_secs(24 * 3600), None)
                        .map_err(|e| io::Error::other(e.to_string()))?,
                ),
            ),
            Credentials::Anonymous => (format!("user={}", spec.user), None),
        };
        let t = Transport::new(sock, plan.tls.as_ref(), target)?;
        entry.insert(Conn {
            t,
            phase: Phase::Connecting,
            role: spec.role,
            target: target_ix,
            out: {
                let mut req = net::upgrade_request(target, &query, bearer.as_deref());
                if plan.deflate {
                    net::offer_deflate(&mut req);
                }
                req
            },
            out_pos: 0,
            left: Vec::new(),
            check: SeqCheck::default(),
            next_k: 0,
            inflight: 0,
            t0: self.shared.now_ns(),
            ready_counted: false,
            queued: false,
        });
        if matches!(spec.role, Role::Publisher { .. }) {
            self.publishers.push(key);
        }
        Ok(key)
    }

    /// Issues what is due: scheduled or windowed publishes, pings, connects.
    /// Returns how long the loop may sleep before the next one is due.
    fn drive(&mut self, now: u64) -> Duration {
        let mut sleep = MAX_SLEEP;
        if self.plan.connect_slots > 0 {
            self.refill_connects(now);
        }
        for i in 0..self.publishers.len() {
            let Some(&key) = self.publishers.get(i) else {
                break;
            };
            if let Some(next) = self.drive_publisher(key, now) {
                sleep = sleep.min(Duration::from_nanos(next.saturating_sub(now)));
            }
        }
        if self.has_echo {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.drive_echo(key, now);
            }
        }
        sleep
    }

    /// Sends what one publisher owes; returns when its next message is due.
    fn drive_publisher(&mut self, key: usize, now: u64) -> Option<u64> {
        let mend = self.mend;
        let conn = self.conns.get(key)?;
        if conn.phase != Phase::Open {
            return None;
        }
        let Role::Publisher { room, schedule, window } = conn.role else {
            return None;
        };
        // Schedules are planned relative to `go`, which is known only now.
        let go = self.shared.go_ns.load(Ordering::Acquire);
        let schedule = schedule.map(|s| Schedule { start_ns: go + s.start_ns, interval_ns: s.interval_ns });
        let mut k = conn.next_k;
        let mut inflight = conn.inflight;
        let mut sent = 0u32;
        let next = loop {
            let intended = match schedule {
                Some(s) => {
                    let due = s.intended(k);
                    if due > now {
                        break Some(due);
                    }
                    due
                }
                None => {
                    if inflight >= window {
                        break None;
                    }
                    now
                }
            };
            if intended >= mend {
                break None;
            }
            self.queue_send(key, room, k, intended);
            if intended >= self.mstart {
                self.tally.sent_in_window += 1;
            }
            k += 1;
            inflight += 1;
            sent += 1;
            // Bound one burst so a long stall cannot starve reads.
            if sent >= 10_000 {
                break Some(now);
            }
        };
        if let Some(conn) = self.conns.get_mut(key) {
            conn.next_k = k;
            conn.inflight = inflight;
        }
        self.tally.sent_total += u64::from(sent);
        next
    }

    fn queue_send(&mut self, key: usize, room: u32, k: u64, intended: u64) {
        use std::io::Write;
        let room_name = self.plan.rooms.get(room as usize).map_or("lt", String::as_str);
        let s = &mut self.scratch;
        s.clear();
        // `ref` carries the intended time back in the ack.
        let _ =
            write!(s, r#"{{"op":"send","room":"{room_name}","ref":{intended},"body":{{"t":{intended},"k":{k},"p":""#);
        let body_start = s.iter().rposition(|&b| b == b'{').unwrap_or(0);
        let body_so_far = s.len() - body_start + 2; // closing `"}`
        let pad = self.plan.body_bytes.saturating_sub(body_so_far);
        chat_text(s, pad, k ^ intended);
        s.extend_from_slice(b"\"}}");
        let mask = self.mask();
        if let Some(conn) = self.conns.get_mut(key) {
            frame::write_masked(&mut conn.out, frame::OP_TEXT, &self.scratch, mask);
            if !conn.queued {
                conn.queued = true;
                self.dirty.push(key);
            }
        }
    }

    fn drive_echo(&mut self, key: usize, now: u64) {
        let mend = self.mend;
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Role::Echo { inflight: want } = conn.role else {
            return;
        };
        if conn.phase != Phase::Open || now >= mend {
            return;
        }
        let mut n = conn.inflight;
        while n < want {
            let msg = format!(r#"{{"op":"ping","ref":{now}}}"#);
            self.queue_frame(key, msg.as_bytes());
            if now >= self.mstart {
                self.tally.sent_in_window += 1;
            }
            self.tally.sent_total += 1;
            n += 1;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.inflight = n;
        }
    }

    fn queue_frame(&mut self, key: usize, payload: &[u8]) {
        let mask = self.mask();
        if let Some(conn) = self.conns.get_mut(key) {
            frame::write_masked(&mut conn.out, frame::OP_TEXT, payload, mask);
            if !conn.queued {
                conn.queued = true;
                self.dirty.push(key);
            }
        }
    }

    fn queue_control(&mut self, key: usize, opcode: u8, payload: &[u8]) {
        let mask = self.mask();
        if let Some(conn) = self.conns.get_mut(key) {
            frame::write_masked(&mut conn.out, opcode, payload, mask);
            if !conn.queued {
                conn.queued = true;
                self.dirty.push(key);
            }
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(c) = self.conns.get_mut(key) {
                c.queued = false;
            }
            self.flush(key);
        }
        let mut dirty = dirty;
        dirty.clear();
        // Keep the allocation; entries pushed while flushing stay queued.
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            return;
        }
        let mut err = crate::net::write_pending(|b| conn.t.write(b), &mut conn.out, &mut conn.out_pos).err();
        if conn.out_pos > 1 << 20 {
            conn.out.drain(..conn.out_pos);
            conn.out_pos = 0;
        }
        if err.is_none() {
            if let Err(e) = conn.t.flush() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    err = Some(format!("tls write: {e}"));
                }
            }
        }
        if let Some(e) = err {
            self.close(key, Some(e));
        }
    }

    fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            let sock = conn.t.socket();
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.close(key, Some(format!("connect: {e}")));
                    return;
                }
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => conn.phase = Phase::Upgrading,
                // Spurious wake-up: still connecting.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.close(key, Some(format!("connect: {e}")));
                    return;
                }
            }
        }
        self.flush(key);
    }

    fn on_readable(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.phase == Phase::Connecting {
                // Readable before writable means the connect failed (RST).
                match conn.t.socket().take_error() {
                    Ok(None) => return,
                    Ok(Some(e)) | Err(e) => {
                        self.close(key, Some(format!("connect: {e}")));
                        return;
                    }
                }
            }
            let left = conn.left.len();
            if self.rbuf.len() < left + MIN_READ {
                self.rbuf.resize((left + MIN_READ).next_power_of_two(), 0);
            }
            if let Some(dst) = self.rbuf.get_mut(..left) {
                dst.copy_from_slice(&conn.left);
            }
            conn.left.clear();
            let space = self.rbuf.len() - left;
            let is_tls = matches!(conn.t, Transport::Tls(_));
            let n = match conn.t.read(self.rbuf.get_mut(left..).unwrap_or_default()) {
                Ok(0) => {
                    self.close(key, Some("closed by server".into()));
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.left.extend_from_slice(self.rbuf.get(..left).unwrap_or_default());
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    conn.left.extend_from_slice(self.rbuf.get(..left).unwrap_or_default());
                    continue;
                }
                Err(e) => {
                    self.close(key, Some(format!("read: {e}")));
                    return;
                }
            };
            let end = left + n;
            self.tally.bytes_received_total += n as u64;
            let now = self.shared.now_ns();
            let (consumed, verdict) = self.process(key, end, now);
            match verdict {
                Verdict::Keep => {}
                Verdict::Close(why) => {
                    self.close(key, Some(why));
                    return;
                }
                Verdict::Done => {
                    self.close(key, None);
                    return;
                }
            }
            if let Some(conn) = self.conns.get_mut(key) {
                conn.left.extend_from_slice(self.rbuf.get(consumed..end).unwrap_or_default());
            }
            if n < space && !is_tls {
                // A short read emptied the socket; the next arrival is a new edge.
                return;
            }
        }
    }

    /// Handles `rbuf[..end]` for `key`; returns how much was consumed.
    fn process(&mut self, key: usize, end: usize, now: u64) -> (usize, Verdict) {
        let mut pos = 0;
        let Some(conn) = self.conns.get_mut(key) else {
            return (0, Verdict::Keep);
        };
        if conn.phase != Phase::Open {
            match net::parse_upgrade(self.rbuf.get(..end).unwrap_or_default(), &self.accept) {
                Upgrade::Partial => return (0, Verdict::Keep),
                Upgrade::Refused(status) => return (end, Verdict::Close(format!("upgrade refused: {status}"))),
                Upgrade::Done(off) => {
                    pos = off;
                    conn.phase = Phase::Open;
                    if let Some(v) = self.on_open(key, now) {
                        return (end, v);
                    }
                }
            }
        }
        loop {
            let buf = self.rbuf.get(pos..end).unwrap_or_default();
            let f = match frame::parse(buf, MAX_FRAME) {
                Ok(Some(f)) => f,
                Ok(None) => return (pos, Verdict::Keep),
                Err(e) => return (end, Verdict::Close(format!("bad frame: {e}"))),
            };
            let start = pos + f.header_len;
            let stop = start + f.payload_len;
            pos += f.total_len();
            match f.opcode {
                frame::OP_TEXT if f.fin && f.rsv1 => {
                    self.inflated.clear();
                    let payload = self.rbuf.get(start..stop).unwrap_or_default();
                    let ok = self.inflater.push(payload, MAX_FRAME, &mut self.inflated).is_ok()
                        && self.inflater.finish(MAX_FRAME, &mut self.inflated).is_ok();
                    if !ok {
                        return (end, Verdict::Close("bad compressed frame".into()));
                    }
                    self.tally.deflated_frames_total += 1;
                    // `on_text` reads its bytes from `rbuf`: lend it the
                    // inflated message for the call.
                    let len = self.inflated.len();
                    let inflated = std::mem::take(&mut self.inflated);
                    let saved = std::mem::replace(&mut self.rbuf, inflated);
                    let v = self.on_text(key, 0, len, now);
                    self.inflated = std::mem::replace(&mut self.rbuf, saved);
                    if let Some(v) = v {
                        return (pos, v);
                    }
                }
                frame::OP_TEXT if f.fin => {
                    if let Some(v) = self.on_text(key, start, stop, now) {
                        return (pos, v);
                    }
                }
                frame::OP_PING => {
                    let payload = self.rbuf.get(start..stop).unwrap_or_default().to_vec();
                    self.queue_control(key, frame::OP_PONG, &payload);
                }
                frame::OP_CLOSE => {
                    let code = self
                        .rbuf
                        .get(start..stop)
                        .and_then(|p| p.get(..2))
                        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    return (pos, Verdict::Close(format!("server closed with {code}")));
                }
                // Binary, fragments and pongs carry nothing the load generator uses.
                _ => {}
            }
        }
    }

    /// The upgrade completed.
    fn on_open(&mut self, key: usize, now: u64) -> Option<Verdict> {
        let conn = self.conns.get_mut(key)?;
        let room = match conn.role {
            Role::Member { room } | Role::Idle { room: Some(room) } => Some(room),
            Role::Connect => {
                if conn.t0 >= self.mstart && conn.t0 < self.mend {
                    self.tally.upgrade_hist.saturating_record(latency_ns(conn.t0, now));
                }
                Some(0)
            }
            Role::Publisher { .. } | Role::Echo { .. } | Role::Idle { room: None } => {
                self.mark_ready(key);
                None
            }
        };
        if let Some(room) = room {
            let name = self.plan.rooms.get(room as usize).map_or("lt", String::as_str);
            let msg = format!(r#"{{"op":"join","room":"{name}","ref":1}}"#);
            self.queue_frame(key, msg.as_bytes());
        }
        None
    }

    fn mark_ready(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.ready_counted && conn.role != Role::Connect {
                conn.ready_counted = true;
                self.setting_up = self.setting_up.saturating_sub(1);
                self.shared.ready.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.mstart && t < self.mend
    }

    /// One complete text message at `rbuf[start..stop]`.
    fn on_text(&mut self, key: usize, start: usize, stop: usize, now: u64) -> Option<Verdict> {
        let json = self.rbuf.get(start..stop)?;
        let kind = scan::kind(json);
        match kind {
            Kind::Msg => {
                self.tally.msgs_received_total += 1;
                let (seq, t) = scan::msg_seq_and_t(json)?;
                let in_window = self.in_window(t);
                let conn = self.conns.get_mut(key)?;
                if !matches!(conn.role, Role::Member { .. }) {
                    return None;
                }
                match conn.check.observe(seq) {
                    SeqVerdict::InOrder => {}
                    SeqVerdict::Gap(n) => {
                        self.tally.violations.gaps += 1;
                        self.tally.violations.missing += n;
                    }
                    SeqVerdict::Dup | SeqVerdict::BeforeJoin => self.tally.violations.dups += 1,
                }
                let target = conn.target;
                let group = room_group(self.plan, conn.role);
                if in_window {
                    let ns = latency_ns(t, now);
                    self.tally.hist.saturating_record(ns);
                    if let Some(h) = self.tally.target_hist(target) {
                        h.saturating_record(ns);
                    }
                    if let Some(h) = group.and_then(|g| grown(&mut self.tally.hist_by_group, g)) {
                        h.saturating_record(ns);
                    }
                    self.tally.units += 1;
                    self.unreported_units += 1;
                }
            }
            Kind::Ack => {
                let intended = scan::int_ref(json)?;
                let in_window = self.in_window(intended);
                let conn = self.conns.get_mut(key)?;
                conn.inflight = conn.inflight.saturating_sub(1);
                let group = room_group(self.plan, conn.role);
                if in_window {
                    let ns = latency_ns(intended, now);
                    self.tally.ack_hist.saturating_record(ns);
                    if let Some(h) = group.and_then(|g| grown(&mut self.tally.ack_hist_by_group, g)) {
                        h.saturating_record(ns);
                    }
                    self.tally.acks_in_window += 1;
                    if !self.has_members {
                        // No members: acks are the unit (durable).
                        self.unreported_units += 1;
                    }
                }
            }
            Kind::Pong => {
                let sent = scan::int_ref(json)?;
                let in_window = self.in_window(sent);
                let conn = self.conns.get_mut(key)?;
                conn.inflight = conn.inflight.saturating_sub(1);
                if in_window {
                    self.tally.hist.saturating_record(latency_ns(sent, now));
                    self.tally.units += 1;
                    self.unreported_units += 1;
                }
            }
            Kind::Joined => {
                let seq = scan::u64_field(json, b"\"seq\":").unwrap_or(0);
                let conn = self.conns.get_mut(key)?;
                match conn.role {
                    Role::Connect => {
                        let t0 = conn.t0;
                        if self.in_window(t0) {
                            self.tally.hist.saturating_record(latency_ns(t0, now));
                            self.tally.units += 1;
                            self.unreported_units += 1;
                        }
                        self.shared.completed.fetch_add(1, Ordering::AcqRel);
                        return Some(Verdict::Done);
                    }
                    Role::Member { .. } => {
                        if !conn.check.is_joined() {
                            conn.check.joined(seq);
                        }
                        self.mark_ready(key);
                    }
                    _ => self.mark_ready(key),
                }
            }
            Kind::Error => {
                self.tally.violations.errors += 1;
                self.shared.note_error(format!("server error: {}", String::from_utf8_lossy(json)));
                let conn = self.conns.get_mut(key)?;
                conn.inflight = conn.inflight.saturating_sub(1);
            }
            Kind::Other => {}
        }
        None
    }

    /// Drops a connection; `why` is `None` for a planned close.
    fn close(&mut self, key: usize, why: Option<String>) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(conn.t.socket());
        if conn.role != Role::Connect && !conn.ready_counted {
            // Failed during setup.
            self.setting_up = self.setting_up.saturating_sub(1);
            self.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(why) = why {
            if !self.shared.stop.load(Ordering::Acquire) {
                self.tally.closed_by_server += 1;
                self.tally.violations.errors += 1;
                self.shared.note_error(why);
            }
        }
        self.publishers.retain(|&k| k != key);
        if conn.role == Role::Connect {
            let now = self.shared.now_ns();
            let go = self.shared.go_ns.load(Ordering::Acquire);
            if go != 0 {
                self.refill_connects(now);
            }
        }
    }
}

/// Words of chat-like text, for message bodies that compress as real chat
/// JSON does (a run of one byte would compress far better than any real
/// message).
const WORDS: [&str; 48] = [
    "the",
    "meeting",
    "moved",
    "to",
    "thursday",
    "can",
    "you",
    "bring",
    "slides",
    "and",
    "notes",
    "from",
    "last",
    "week",
    "sure",
    "I",
    "will",
    "ask",
    "sam",
    "about",
    "budget",
    "numbers",
    "deploy",
    "went",
    "fine",
    "after",
    "lunch",
    "release",
    "candidate",
    "is",
    "ready",
    "for",
    "review",
    "please",
    "check",
    "logs",
    "on",
    "staging",
    "thanks",
    "great",
    "see",
    "tomorrow",
    "morning",
    "coffee",
    "new",
    "design",
    "looks",
    "good",
];

/// Appends `n` bytes of words (no quote or backslash: fits a JSON string),
/// chosen by a small generator seeded with `seed`.
pub fn chat_text(out: &mut Vec<u8>, n: usize, seed: u64) {
    let end = out.len() + n;
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    while out.len() < end {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let w = WORDS.get((x >> 33) as usize % WORDS.len()).copied().unwrap_or("x");
        out.extend_from_slice(w.as_bytes());
        out.push(b' ');
    }
    out.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() {
        let mut a = Tally::empty();
        let mut b = Tally::empty();
        a.hist.saturating_record(10);
        b.hist.saturating_record(20);
        b.units = 3;
        b.violations.gaps = 1;
        a.merge(&b);
        assert_eq!(a.hist.len(), 2);
        assert_eq!(a.units, 3);
        assert_eq!(a.violations.gaps, 1);
    }

    #[test]
    fn per_target_histograms_merge_by_index() {
        let mut a = Tally::empty();
        let mut b = Tally::empty();
        if let Some(h) = a.target_hist(0) {
            h.saturating_record(5);
        }
        if let Some(h) = b.target_hist(2) {
            h.saturating_record(7);
        }
        a.merge(&b);
        let lens: Vec<u64> = a.hist_by_target.iter().map(Histogram::len).collect();
        assert_eq!(lens, vec![1, 0, 1]);
        assert!(a.target_hist(64).is_none());
    }

    #[test]
    fn plan_targets_wrap_around() {
        let t = |port: u16| net::parse_url(&format!("ws://127.0.0.1:{port}/v1/ws")).ok();
        let targets: Vec<Target> = [t(1), t(2), t(3)].into_iter().flatten().collect();
        let plan = Plan {
            targets: Arc::new(targets),
            tls: None,
            sources: 1,
            creds: Arc::new(Credentials::Anonymous),
            rooms: Arc::new(Vec::new()),
            body_bytes: 0,
            specs: Vec::new(),
            room_groups: Arc::new(Vec::new()),
            connect_slots: 0,
            connect_total: 0,
            setup_concurrency: 1,
            deflate: false,
        };
        let port = |i| plan.target(i).map(|t| t.addr.port());
        assert_eq!([port(0), port(1), port(2), port(3), port(7)], [Some(1), Some(2), Some(3), Some(1), Some(2)]);
    }
}
