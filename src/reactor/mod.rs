//! The event loop: one reactor per thread, each with its own `mio::Poll`,
//! SO_REUSEPORT listeners, a slab of connections, a timer wheel, the rooms it
//! owns and its local room members.
//!
//! One iteration, top to bottom (`run`): compute the poll timeout, poll,
//! dispatch readiness by token (accept, read), handle mail from other
//! reactors, fire timers, start draining if asked, write every connection
//! with queued output ("write before you sleep"), pass overflowed mail on and
//! wake the reactors that got mail, publish counters.
//!
//! The poller is edge-triggered and every connection is registered for
//! read and write once, for its whole life: no reregister syscalls on the
//! hot path. The price is that a reader stopped by its budget must be
//! revisited without an edge (`rerun`), and so must the listener.
//!
//! This module knows connections and bytes; room rules live in `rooms`.

pub mod browser;
pub mod coalesce;
mod conn;
mod http;
pub mod limits;
pub mod mail;
mod owner;
pub mod reaper;
pub mod testkit;
pub mod timer;
pub mod transport;
mod ws;

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::auth::rules::{Patterns, Rules};
use crate::auth::Auth;
use crate::config::Config;
use crate::log::Level;
use crate::metrics::{self, CloseReason, Counters};
use crate::proto::ws as wsproto;
use crate::rooms::core::{self as room_core, Core, Effect, Input};
use crate::rooms::{LocalMembers, OwnedRoom, RoomSettings};
use crate::store::{ReaderPool, Record, Store, WriterCmd};

use conn::{Closing, Conn, HttpState, State};
use mail::{Asker, ConnRef, Inbox, Mail, Mailbox};
use timer::{later, Wheel};
use transport::{ReadOutcome, Transport, WriteOutcome, READ_BUDGET};

const WAKER: Token = Token(0);
const LISTENER_BASE: usize = 1; // plain, then TLS
/// The alarm that ends a write hold (see `coalesce`).
const HOLD: Token = Token(3);
const CONN_BASE: usize = 4;

/// Accepts per listener per wake: past it, the loop comes back at once
/// rather than letting a connect storm starve established connections.
const ACCEPT_BUDGET: usize = 64;
/// Mail handled per iteration before sockets get their turn again.
const MAIL_BUDGET: usize = 8192;
/// How long accepting pauses after EMFILE/ENFILE: the loop must not spin on
/// a listener it cannot serve.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Bytes written to one connection per flush pass: a pass over hundreds of
/// connections with deep queues (a busy room whose members fell behind)
/// must not hold the loop for tens of milliseconds in kernel copies; the
/// rest goes out next iteration.
const WRITE_BUDGET: usize = 64 * 1024;
/// Protocol steps (requests, frames) handled per connection per loop
/// iteration; the rest waits in its buffer for the next iteration.
const STEP_BUDGET: usize = 16;
/// How often housekeeping runs.
/// One write in this many has its queue observed in the histogram.
const QUEUE_SAMPLE: u32 = 16;

/// A duration in whole microseconds, for the histograms.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Rooms forgotten per housekeeping round at most, so one round stays short
/// (each forgotten room frees its tail).
const EVICT_PER_ROUND: usize = 4096;
/// After a fatal error (a thread panicked) the drain is this short at most:
/// the process must exit promptly, so a supervisor restarts it.
const FATAL_DRAIN: Duration = Duration::from_secs(2);
/// A WebSocket close handshake we started gets this long to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Size of the shared read buffer.
const SCRATCH: usize = 64 * 1024;
/// While a connection has more than this queued, its input is not read
/// or parsed: the peer must take its answers before it may ask more (TCP
/// pushes back). Fan-out is not held back by it; the cap is for that.
const HIGH_WATER: usize = 64 * 1024;
/// How far past the cap one connection's queue may get: the largest single
/// answer queued while under the high-water mark (a capped history page
/// or replay, an HTTP response).
pub(crate) const OUT_SLACK: usize = HIGH_WATER + (4 << 20);

/// What every reactor shares, read-only after start (plus the drain flag
/// and the counters, which are atomics).
pub struct Shared {
    /// The configuration the server started with. Reactors read
    /// `Reactor::live` instead, which a reload replaces.
    pub config: Config,
    /// The settings in force now, and the TLS config built from them.
    pub live: crate::reload::Live,
    /// Re-reads the configuration (SIGHUP, `POST /v1/api/reload`).
    pub reloader: crate::reload::Reloader,
    pub auth: Auth,
    pub metrics: Vec<metrics::Shared>,
    pub mailboxes: Vec<Mailbox>,
    pub draining: AtomicBool,
    /// Set when a thread panicked: why. The drain that follows is short
    /// (`FATAL_DRAIN`) and the process exits non-zero.
    pub fatal: std::sync::Mutex<Option<String>>,
    pub is_fatal: AtomicBool,
    /// Per reactor, while draining: nothing left to do (no connections, no
    /// publishes waiting, no mail to pass on). A reactor ends only when all
    /// are quiet, since another reactor's in-flight request may still need
    /// it as a room's owner.
    pub quiet: Vec<AtomicBool>,
    pub store: Option<Store>,
    pub readers: Option<ReaderPool>,
    /// `--allowed-origins`, parsed.
    pub origins: browser::Origins,
    /// The threads serving `/v1/auth/*`; `None` without a store.
    pub auth_pool: Option<crate::auth::service::AuthPool>,
    /// Per-IP and per-user limits (see `limits`).
    pub limits: limits::Limits,
    /// Where large buffers of closed connections go to be freed off the
    /// reactor thread (see `reaper`); `None` frees them inline.
    pub reaper: Option<reaper::Reaper>,
    /// This node's place in a cluster; its node thread's mailbox is the
    /// last of `mailboxes`.
    pub cluster: Option<Arc<crate::cluster::Handle>>,
    /// Committed messages of the rooms this node owns, for the bus tap
    /// (`--bus-publish`); full means dropped (best effort).
    pub bus: Option<crate::wait::Sender<(crate::rooms::RoomName, crate::proto::msg::MsgFrame)>>,
}

impl Shared {
    /// Posts mail from a thread that is not a reactor (store-writer, a
    /// reader): it may block while the mailbox is full, since the reactor
    /// never waits on these threads.
    pub fn post_from_thread(&self, to: usize, m: Mail) {
        if let Some(mb) = self.mailboxes.get(to) {
            if mb.tx.send(m).is_ok() {
                mb.wake();
            }
        }
    }

    /// The reactor count (the cluster node thread's mailbox, when there is
    /// one, comes after theirs).
    pub fn reactors(&self) -> usize {
        self.mailboxes.len() - usize::from(self.cluster.is_some())
    }

    /// Nodes in the cluster (1 alone): the room core has one pseudo-reactor
    /// per node after the real ones, where a peer's members live.
    pub fn nodes(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.config.nodes.len())
    }

    /// Records a fatal error (the first one is kept) and starts the drain.
    pub fn fatal(&self, why: &str) {
        // A poisoned lock means another panic got here first: keep going.
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert_with(|| why.to_string());
        }
        self.is_fatal.store(true, Ordering::SeqCst);
        self.start_drain();
    }

    pub fn fatal_reason(&self) -> Option<String> {
        match self.fatal.lock() {
            Ok(f) => f.clone(),
            Err(_) => Some("a thread panicked".to_string()),
        }
    }

    /// Asks every reactor to drain, waking them.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for m in &self.mailboxes {
            let _ = m.waker.wake();
        }
    }
}

/// Everything a reactor thread needs to start; made on the main thread so
/// that startup errors (bind, poll) surface before any thread runs.
pub struct ReactorParts {
    pub id: usize,
    pub poll: Poll,
    pub inbox: Inbox,
    pub listeners: Vec<(TcpListener, bool)>,
    /// Appends to store-writer. Only reactors hold senders, so the writer
    /// finishes once every reactor has.
    pub writer: Option<crate::wait::Sender<WriterCmd>>,
}

/// How far one input-processing step got.
enum Step {
    /// This many bytes were used; go on with the rest.
    Consumed(usize),
    /// The front of the buffer is incomplete; keep it for later.
    NeedMore,
    /// Stop reading this connection for now (closing, or waiting on an owner).
    Stop,
}

pub struct Reactor {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    inbox: Inbox,
    listeners: Vec<(Option<TcpListener>, bool)>,
    conns: Slab<Conn>,
    next_gen: u32,
    /// Mail for each peer gathered this iteration, sent as one batch at its
    /// end (`pass_mail_on`).
    outbox: Vec<Vec<Mail>>,
    /// Mail that did not fit a peer's channel, per peer, kept in order.
    overflow: Vec<VecDeque<Mail>>,
    to_wake: Vec<bool>,
    wheel: Wheel,
    /// The rules of the rooms this reactor owns (see `owner`).
    core: Core<Asker>,
    /// The core's effects being carried out, and inputs that came up
    /// meanwhile (see `owner::feed_core`).
    effects: Vec<Effect<Asker>>,
    core_later: VecDeque<Input<Asker>>,
    in_core: bool,
    /// This iteration's appends, sent as one batch at its end.
    appends: Vec<Record>,
    append_backlog: owner::AppendBacklog,
    /// The settings in force (see `reload`), and their generation.
    live: Arc<crate::reload::Settings>,
    live_gen: u64,
    /// `rooms` listings of the server API waiting for every reactor's part,
    /// by connection key (at most one per connection: it reads no further
    /// request while one is answered).
    gathers: std::collections::HashMap<u32, http::Gather>,
    /// Refused upgrades logged in the current second (from when), and those
    /// held back since the last line: a flood of bad tokens must not fill
    /// the log queue ahead of the lines that matter.
    refusals_logged: (Instant, u32, u64),
    /// The last message's frame and its shared compressed twin (see
    /// `twin_of`).
    last_twin: Option<(Bytes, mail::Twin)>,
    /// Writes since start, for sampling `roomcast_outbound_queue_bytes`.
    queue_sample: u32,
    /// `--metrics-histograms`: the histograms below are kept.
    hists_on: bool,
    hists: metrics::Hists,
    /// Appends handed towards store-writer and not yet reported committed:
    /// (messages, when), in order, for `roomcast_publish_commit_seconds`.
    /// As bounded as the appends in flight.
    append_stamps: VecDeque<(usize, Instant)>,
    /// While the core takes a commit report: when that commit was made.
    feeding_commit: Option<Instant>,
    /// The earliest commit whose deliveries wait for this reactor's next
    /// write pass, for `roomcast_commit_first_write_seconds`.
    first_write_from: Option<Instant>,
    /// When held-back appends are offered to store-writer again.
    append_retry: Option<Instant>,
    /// Rooms the core forgot, for the reaper.
    forgotten: Vec<OwnedRoom>,
    local: LocalMembers,
    pending_flush: Vec<u32>,
    /// The list being worked through while `pending_flush` or `rerun`
    /// fills again: the two are swapped, the taken one cleared and kept as
    /// the spare, so neither is reallocated on every pass (a fresh list
    /// regrows to the member count each time).
    spare: Vec<u32>,
    rerun: Vec<u32>,
    slow: Vec<u32>,
    /// `deliver_local` is working through `slow` (see there).
    closing_slow: bool,
    /// permessage-deflate's compressor, shared by every connection here:
    /// fan-out compresses a message at most once per reactor with it, and
    /// echo replies go through it (see `proto::deflate`).
    deflater: crate::proto::deflate::Deflater,
    counters: Counters,
    scratch: Vec<u8>,
    now: Instant,
    accept_paused_until: Option<Instant>,
    accept_again: bool,
    mail_backlog: bool,
    drain_deadline: Option<Instant>,
    max_conns: usize,
    /// Whether to hold writes so that members get several frames per write.
    coalescer: coalesce::Coalescer,
    /// Held writes go out at this instant, when `alarm` rings.
    flush_at: Option<Instant>,
    alarm: coalesce::Alarm,
    /// When housekeeping (idle rooms, limiter sweeps) next runs, and how
    /// many rounds ran.
    next_housekeeping: Instant,
    housekeeping_round: usize,
    /// Connections whose write budget ran out last pass: flushed again
    /// next iteration.
    flush_again: Vec<u32>,
    /// Output of in-memory connections closed since the harness last
    /// looked (`testkit`; always empty with sockets).
    mem_closed: Vec<(u32, u32, Vec<u8>)>,
    /// Whether heavy fan-out may hold writes (off in the harness, whose
    /// clock only moves when told).
    coalesce: bool,
    writer: Option<crate::wait::Sender<WriterCmd>>,
    /// The rules of identities without claims of their own
    /// (`--default-rooms`), shared by all their connections.
    default_rules: Arc<Rules>,
}

/// Seconds a token is still honoured past its `exp`, on connections (the
/// close 4001) as on the upgrade.
fn leeway_secs(shared: &Shared) -> u64 {
    shared.auth.leeway().as_secs()
}

/// How long until a token expiring at `exp` (Unix seconds) is past `exp` +
/// `leeway`, to the millisecond (zero once it is): `exp` is whole seconds,
/// the wall clock is not, and the close should come when it is due rather
/// than up to a second later. Any `exp` is fine (`u64::MAX` is "never").
fn token_left(exp: u64, leeway: u64) -> Duration {
    let due = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(leeway)));
    match due {
        Some(due) => due.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO),
        None => timer::FAR,
    }
}

/// Whether a connection's input may be read and parsed now: its queued
/// output is under the high-water mark and, on WebSocket, its requests in
/// flight are under their limits. This is what bounds what one peer can
/// make the server hold for it.
fn can_read(conn: &Conn) -> bool {
    if conn.out.len() > HIGH_WATER {
        return false;
    }
    match &conn.state {
        State::Ws(ws) => ws.inflight < ws::MAX_INFLIGHT && ws.heavy < ws::MAX_HEAVY,
        _ => true,
    }
}

impl Reactor {
    pub fn new(parts: ReactorParts, shared: Arc<Shared>) -> io::Result<Reactor> {
        let n = shared.reactors();
        let mut listeners = Vec::new();
        for (i, (mut l, tls)) in parts.listeners.into_iter().enumerate() {
            parts.poll.registry().register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
            listeners.push((Some(l), tls));
        }
        let c = &shared.config;
        let settings = RoomSettings {
            tail: c.history_tail,
            max_replay: c.max_replay,
            dedup_window: c.dedup_window,
            retain_messages: c.retain_messages,
            retain_age: c.retain_age,
        };
        let max_conns = c.max_connections.div_ceil(n).max(1);
        let alarm = coalesce::Alarm::new(parts.poll.registry(), HOLD);
        let now = Instant::now();
        // In a cluster, a peer's members of our rooms live on pseudo-reactor
        // `n + peer`: the core delivers to each node once per commit.
        let pseudo = if shared.cluster.is_some() { shared.nodes() } else { 0 };
        let mut core =
            Core::new(settings, n + pseudo, shared.store.is_some(), room_core::page_budget(c.max_queue_bytes));
        core.tap(shared.bus.is_some());
        // The setting was checked when the configuration was; should it
        // still not parse, nothing is allowed rather than everything.
        let default_rooms = Patterns::parse_list(&c.default_rooms).unwrap_or_else(|_| Patterns::none());
        let default_rules = Arc::new(Rules::default_from(default_rooms));
        Ok(Reactor {
            default_rules,
            id: parts.id,
            poll: parts.poll,
            inbox: parts.inbox,
            listeners,
            conns: Slab::new(),
            next_gen: 0,
            outbox: (0..shared.mailboxes.len()).map(|_| Vec::new()).collect(),
            overflow: (0..shared.mailboxes.len()).map(|_| VecDeque::new()).collect(),
            to_wake: vec![false; shared.mailboxes.len()],
            wheel: Wheel::new(now),
            core,
            effects: Vec::new(),
            core_later: VecDeque::new(),
            in_core: false,
            appends: Vec::new(),
            append_backlog: VecDeque::new(),
            live: shared.live.get(),
            live_gen: shared.live.generation(),
            gathers: std::collections::HashMap::new(),
            refusals_logged: (Instant::now(), 0, 0),
            queue_sample: 0,
            last_twin: None,
            hists_on: shared.config.metrics_histograms,
            hists: metrics::Hists::default(),
            append_stamps: VecDeque::new(),
            feeding_commit: None,
            first_write_from: None,
            append_retry: None,
            forgotten: Vec::new(),
            local: LocalMembers::default(),
            pending_flush: Vec::new(),
            spare: Vec::new(),
            rerun: Vec::new(),
            slow: Vec::new(),
            closing_slow: false,
            deflater: crate::proto::deflate::Deflater::new(),
            counters: Counters::default(),
            scratch: vec![0; SCRATCH],
            now,
            accept_paused_until: None,
            accept_again: false,
            mail_backlog: false,
            drain_deadline: None,
            max_conns,
            coalescer: coalesce::Coalescer::new(now),
            flush_at: None,
            alarm,
            coalesce: true,
            mem_closed: Vec::new(),
            flush_again: Vec::new(),
            next_housekeeping: later(now, HOUSEKEEPING),
            housekeeping_round: 0,
            writer: parts.writer,
            shared,
        })
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            let mut timeout = self.wheel.timeout(self.now);
            let busy = !self.rerun.is_empty() || self.accept_again || self.mail_backlog || !self.flush_again.is_empty();
            if busy {
                timeout = Some(Duration::ZERO);
            }
            // While draining, look again soon: the others' progress decides
            // when this reactor may end.
            let drain_check = self.drain_deadline.map(|d| d.min(later(self.now, Duration::from_millis(20))));
            let chores = Some(self.next_housekeeping);
            let waits = [self.accept_paused_until, drain_check, self.flush_at, chores, self.append_retry];
            for at in waits.into_iter().flatten() {
                let d = at.saturating_duration_since(self.now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if self.inbox.going_to_sleep() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.inbox.awake();
            self.now = Instant::now();
            self.take_reload();
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    let msg = format!("reactor {}: poll failed: {e}", self.id);
                    crate::log::event(Level::Error, "poll_failed", &msg, &[("reactor", self.id.into())]);
                    return;
                }
            }

            for ev in events.iter() {
                match ev.token() {
                    WAKER | HOLD => {}
                    Token(t) if t < CONN_BASE => self.accept(t - LISTENER_BASE),
                    Token(t) => {
                        let key = (t - CONN_BASE) as u32;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(key, ev.is_read_closed() || ev.is_error());
                        }
                        if ev.is_writable() {
                            if let Some(conn) = self.conns.get_mut(key as usize) {
                                conn.write_blocked = false;
                            }
                            self.queue_flush(key);
                        }
                    }
                }
            }
            self.after_events(&mut expired);
            if let Some(deadline) = self.drain_deadline {
                // A panic during a normal drain shortens it too.
                if self.shared.is_fatal.load(Ordering::Relaxed) {
                    let fatal = later(self.now, FATAL_DRAIN);
                    if deadline > fatal {
                        self.drain_deadline = Some(fatal);
                    }
                }
                let deadline = self.drain_deadline.unwrap_or(deadline);
                // Publishes waiting on a commit get their answer first.
                let quiet = self.conns.is_empty()
                    && self.core.is_quiet()
                    && self.append_backlog.is_empty()
                    && self.overflow.iter().all(VecDeque::is_empty);
                self.shared.quiet[self.id].store(quiet, Ordering::SeqCst);
                let all_quiet = self.shared.quiet.iter().all(|q| q.load(Ordering::SeqCst));
                if all_quiet || self.now >= deadline {
                    break;
                }
            }
        }
        // Drain deadline passed: whatever is left is cut.
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for k in keys {
            self.close_now(k, CloseReason::Shutdown);
        }
        self.shared.metrics[self.id].publish(&self.counters);
    }

    /// The rest of one loop iteration, after readiness was dispatched:
    /// leftover work, mail, timers, drain, writes, mail to others, counters.
    fn after_events(&mut self, expired: &mut Vec<timer::Entry>) {
        // Writes cut short by their budget last pass go on in this one.
        self.pending_flush.append(&mut self.flush_again);
        self.revisit();
        self.drain_inbox();
        self.fire_timers(expired);
        if self.now >= self.next_housekeeping {
            self.housekeeping();
        }
        if self.drain_deadline.is_none() && self.shared.draining.load(Ordering::Relaxed) {
            self.begin_drain();
        }
        if let Some(hold_until) = self.coalescing() {
            // Writes wait (briefly) for more frames; the alarm wakes the
            // loop in time.
            if self.flush_at != Some(hold_until) {
                self.alarm.set(hold_until.saturating_duration_since(self.now));
            }
            self.flush_at = Some(hold_until);
        } else {
            self.flush_at = None;
            let (conns, delivered, started) = (self.pending_flush.len(), self.counters.delivered, Instant::now());
            if conns > 0 {
                if let Some(t) = self.first_write_from.take() {
                    self.hists.commit_first_write.observe(micros(started.saturating_duration_since(t)));
                    self.hists.dirty = true;
                }
            }
            self.flush_pending();
            self.coalescer.flushed(self.now, started.elapsed(), conns, delivered);
        }
        // Appends first: their commit report comes back as mail, which
        // must find them sent.
        self.send_appends();
        self.pass_mail_on();
        self.core_counters();
        self.shared.metrics[self.id].publish(&self.counters);
        self.shared.metrics[self.id].publish_hists(&mut self.hists);
    }

    /// After a reload, before this iteration's events: new connections and
    /// new requests see its settings (one atomic load when nothing moved).
    fn take_reload(&mut self) {
        let gen = self.shared.live.generation();
        if gen != self.live_gen {
            self.live = self.shared.live.get();
            self.live_gen = gen;
            self.hists_on = self.live.config.metrics_histograms;
        }
    }

    /// A commit report for `n` of this reactor's appends, made at `at`:
    /// their publish-to-commit times.
    fn note_commit(&mut self, mut n: usize, at: Instant) {
        while n > 0 {
            let Some((left, sent)) = self.append_stamps.front_mut() else { break };
            let k = (*left).min(n);
            if self.hists_on {
                self.hists.publish_commit.observe_n(micros(at.saturating_duration_since(*sent)), k as u64);
                self.hists.dirty = true;
            }
            *left -= k;
            n -= k;
            if *left == 0 {
                self.append_stamps.pop_front();
            }
        }
    }

    /// Deliveries of the commit made at `at` (if known) wait for this
    /// reactor's next write pass.
    fn note_delivery(&mut self, room: &str, at: Option<Instant>) {
        // Only deliveries that queue something here wait for a write.
        if !self.hists_on || self.local.members(room).is_empty() {
            return;
        }
        if let Some(at) = at {
            if self.first_write_from.is_none_or(|t| at < t) {
                self.first_write_from = Some(at);
            }
        }
    }

    /// Once a second: forget rooms idle past `--room-idle-timeout`, and
    /// sweep this reactor's share of the limiter tables.
    fn housekeeping(&mut self) {
        self.next_housekeeping = later(self.now, HOUSEKEEPING);
        self.housekeeping_round = self.housekeeping_round.wrapping_add(1);
        let idle_ms = u64::try_from(self.live.config.room_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.feed_core(Input::Tick { idle_ms, max: EVICT_PER_ROUND });
        if self.forgotten.len() >= EVICT_PER_ROUND {
            // More may be idle: come back soon rather than in a second.
            self.next_housekeeping = later(self.now, Duration::from_millis(10));
        }
        // Their tails may be large: freed (and trimmed) off this thread.
        self.free_forgotten();
        let n = self.shared.reactors();
        let shard = (self.housekeeping_round.wrapping_mul(n) + self.id) % limits::SHARDS;
        self.shared.limits.sweep(shard, self.now);
    }

    // ------------------------------------------------------------ accept

    fn accept(&mut self, li: usize) {
        if self.accept_paused_until.is_some() || self.drain_deadline.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some((Some(listener), tls)) = self.listeners.get(li) else {
                return;
            };
            let tls = *tls;
            match listener.accept() {
                Ok((sock, addr)) => self.admit(sock, addr.ip(), tls),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The peer gave up before we got to it, or a signal: next.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection
                    // stays in the backlog; retry after a pause instead of
                    // spinning on a readiness we cannot clear.
                    if e.raw_os_error() != Some(libc::EMFILE) {
                        let msg = format!("reactor {}: accept: {e}", self.id);
                        crate::log::event(Level::Error, "accept_failed", &msg, &[("reactor", self.id.into())]);
                    }
                    self.accept_paused_until = Some(later(self.now, ACCEPT_PAUSE));
                    return;
                }
            }
        }
        // Budget spent with more perhaps waiting: no new edge will say so.
        self.accept_again = true;
    }

    fn admit(&mut self, mut sock: mio::net::TcpStream, ip: std::net::IpAddr, tls: bool) {
        if self.conns.len() >= self.max_conns {
            self.counters.closed(CloseReason::Limit);
            return; // dropping the socket closes it
        }
        if let Err(why) = self.shared.limits.admit(ip, self.now) {
            self.counters.closed(CloseReason::Limit);
            if !tls {
                // One try, never waiting: the answer fits any socket buffer.
                let mut out = Vec::with_capacity(256);
                let retry = why.retry_after_secs().to_string();
                let message = match why {
                    limits::Refused::Connections => "too many connections from this address",
                    limits::Refused::Rate(_) => "connecting too fast from this address",
                    limits::Refused::Full => "too many addresses connecting; retry",
                };
                crate::proto::http::write_error(
                    &mut out,
                    503,
                    "overloaded",
                    message,
                    false,
                    &[("Retry-After", &retry)],
                );
                let _ = io::Write::write(&mut sock, &out);
            }
            return; // dropping the socket closes it
        }
        let _ = sock.set_nodelay(true);
        let key = self.conns.vacant_key();
        if self
            .poll
            .registry()
            .register(&mut sock, Token(key + CONN_BASE), Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.shared.limits.release(ip, self.now);
            self.counters.closed(CloseReason::Io);
            return;
        }
        let transport = match (tls, &self.live.tls) {
            (true, Some(cfg)) => match rustls::ServerConnection::new(cfg.clone()) {
                Ok(c) => Transport::Tls(sock, Box::new(transport::TlsConn::new(c))),
                Err(_) => {
                    if let Some(s) = Transport::Plain(sock).socket() {
                        let _ = self.poll.registry().deregister(s);
                    }
                    self.shared.limits.release(ip, self.now);
                    self.counters.closed(CloseReason::Io);
                    return;
                }
            },
            _ => Transport::Plain(sock),
        };
        let key = self.insert_conn(transport);
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.ip = Some(ip);
        }
    }

    /// Files a new connection over `transport` in the slab, as a fresh
    /// HTTP connection with its request deadline. Returns its key.
    fn insert_conn(&mut self, transport: Transport) -> u32 {
        let requests = conn::TokenBucket::new(self.live.config.request_burst, self.now);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.next_gen = self.next_gen.wrapping_add(1);
        entry.insert(Conn {
            transport,
            gen: self.next_gen,
            rbuf: Vec::new(),
            out: Default::default(),
            state: State::Http(HttpState {
                started: None,
                idle_since: self.now,
                awaiting: None,
                scanned: 0,
                wanted: None,
                requests,
                cors_origin: None,
            }),
            flush_queued: false,
            timer_tick: None,
            ip: None,
            paused: false,
            last_write: self.now,
            write_blocked: false,
            slow: false,
            deflate_max: 0,
        });
        self.counters.accepted += 1;
        self.counters.open += 1;
        let cfg = &self.live.config;
        let mut at = later(self.now, cfg.request_timeout);
        if self.conns.get(key).is_some_and(|c| c.transport.is_tls()) {
            at = at.min(later(self.now, cfg.tls_handshake_timeout));
        }
        self.schedule(key as u32, at);
        key as u32
    }

    /// Work left over from the last iteration that no readiness edge will
    /// bring back: budget-limited readers, accepts, paused accepts.
    fn revisit(&mut self) {
        if !self.rerun.is_empty() {
            let mut keys = mem::replace(&mut self.rerun, mem::take(&mut self.spare));
            for &key in &keys {
                // What is buffered goes first; the socket is read only
                // once it is used up (or stuck on an incomplete frame).
                if self.process_buffered(key) {
                    continue;
                }
                self.on_readable(key, true);
            }
            keys.clear();
            self.spare = keys;
        }
        let resume = self.accept_paused_until.is_some_and(|t| self.now >= t);
        if resume {
            self.accept_paused_until = None;
        }
        if mem::take(&mut self.accept_again) || resume {
            for li in 0..self.listeners.len() {
                self.accept(li);
            }
        }
    }

    // -------------------------------------------------------------- read

    /// `hup`: the peer's FIN may be among what is waiting, so read on to
    /// the end rather than trusting a short read.
    fn on_readable(&mut self, key: u32, hup: bool) {
        let mut scratch = mem::take(&mut self.scratch);
        let mut budget = READ_BUDGET;
        while let Some(conn) = self.conns.get_mut(key as usize) {
            if matches!(&conn.state, State::Http(h) if h.awaiting.is_some()) {
                // A request waits on a room owner: leave further bytes in
                // the socket (TCP pushes back) until it is answered.
                break;
            }
            if !can_read(conn) {
                // The peer has not taken its answers (or has too many
                // coming): leave its bytes in the socket until it does.
                conn.paused = true;
                break;
            }
            let tls = conn.transport.is_tls();
            let r = conn.transport.read(&mut scratch);
            if let Transport::Tls(_, t) = &mut conn.transport {
                if !t.counted && !t.is_handshaking() {
                    t.counted = true;
                    match t.handshake_kind() {
                        Some(rustls::HandshakeKind::Resumed) => self.counters.tls_resumed += 1,
                        _ => self.counters.tls_full += 1,
                    }
                }
            }
            if conn.transport.wants_write() {
                // TLS handshake or alert bytes to send.
                self.queue_flush(key);
            }
            match r {
                Ok(ReadOutcome::Data(n)) => {
                    self.counters.bytes_in += n as u64;
                    // A short read from a plain socket took all it had: the
                    // next arrival raises a new edge, so the read that would
                    // only say WouldBlock is skipped (one syscall less per
                    // wake-up). rustls may hold more plaintext: keep going.
                    let drained = n < scratch.len() && !tls && !hup;
                    if !self.input(key, &mut scratch[..n]) || drained {
                        break;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.rerun.push(key);
                        break;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => break,
                Ok(ReadOutcome::Eof) => {
                    self.peer_closed(key);
                    break;
                }
                Err(transport::TransportError::NotTls) => {
                    // Plaintext on the TLS port, most likely `http://` for
                    // `https://`: one plain answer that says so, then close.
                    // Nothing of it reached rustls, so no alert is owed.
                    // (nginx answers the same mistake with a 400 too.)
                    self.counters.tls_not_tls += 1;
                    let mut out = Vec::new();
                    let why = "this port speaks TLS: use https:// or wss://";
                    crate::proto::http::write_error(&mut out, 400, "bad_request", why, false, &[]);
                    if let Some(sock) = self.conns.get_mut(key as usize).and_then(|c| c.transport.socket()) {
                        // What was sent is read first: a close with unread
                        // bytes is a reset, which can throw the answer away
                        // at the peer before it reads it.
                        let _ = io::Read::read(sock, &mut scratch);
                        let _ = io::Write::write(sock, &out);
                        let _ = sock.shutdown(std::net::Shutdown::Write);
                    }
                    self.close_now(key, CloseReason::Protocol);
                    break;
                }
                Err(e) => {
                    let reason = match e {
                        transport::TransportError::Tls(_) | transport::TransportError::NotTls => CloseReason::Protocol,
                        transport::TransportError::Io(_) => CloseReason::Io,
                    };
                    // One last write carries a TLS alert, if any.
                    if let Some(conn) = self.conns.get_mut(key as usize) {
                        let _ = conn.transport.flush(&mut conn.out, usize::MAX);
                    }
                    self.close_now(key, reason);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Feeds fresh bytes to the connection. Returns false when reading this
    /// connection should stop (closed, or paused).
    fn input(&mut self, key: u32, fresh: &mut [u8]) -> bool {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return false;
        };
        let spent = if conn.rbuf.is_empty() {
            // The common case: process in place from the scratch buffer and
            // keep only a leftover.
            let (used, spent) = self.process(key, fresh);
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return false;
            };
            if used < fresh.len() {
                conn.rbuf.extend_from_slice(&fresh[used..]);
            }
            spent
        } else {
            conn.rbuf.extend_from_slice(fresh);
            self.process_buffered(key)
        };
        !spent && self.conns.get(key as usize).is_some_and(|c| !c.paused && !matches!(c.state, State::Closing(_)))
    }

    /// Input of a paused connection may go on once it drained below the
    /// high-water mark and its answers in flight came back: it is revisited
    /// next iteration (what it kept buffered first, then its socket).
    /// Not parsed here: this runs inside the flush pass, which must not
    /// turn into a loop of parse, answer, write for one busy peer.
    fn maybe_resume(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.paused && can_read(conn) {
            conn.paused = false;
            self.rerun.push(key);
        }
    }

    /// Processes what the connection kept in its own buffer (after fresh
    /// bytes were appended, or when a paused request may go on). True when
    /// the step budget ran out first (the connection is on `rerun`).
    fn process_buffered(&mut self, key: u32) -> bool {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return false;
        };
        if conn.rbuf.is_empty() {
            return false;
        }
        let mut buf = mem::take(&mut conn.rbuf);
        let (used, spent) = self.process(key, &mut buf);
        if let Some(conn) = self.conns.get_mut(key as usize) {
            buf.drain(..used);
            if buf.is_empty() {
                // An idle connection keeps no input buffer.
                buf = Vec::new();
            }
            conn.rbuf = buf;
        }
        spent
    }

    /// Runs protocol steps over `buf` until it is used up, a step stops or
    /// the step budget is spent; returns how much was used, and whether the
    /// budget ran out (then the connection is revisited next iteration, so
    /// a peer sending thousands of tiny frames cannot hold the loop).
    fn process(&mut self, key: u32, buf: &mut [u8]) -> (usize, bool) {
        let mut pos = 0;
        let mut steps = 0;
        while pos < buf.len() {
            if steps == STEP_BUDGET {
                self.rerun.push(key);
                return (pos, true);
            }
            steps += 1;
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return (buf.len(), false);
            };
            if !can_read(conn) {
                // The rest waits in the connection's buffer (see `maybe_resume`).
                conn.paused = true;
                break;
            }
            let step = match conn.state {
                State::Http(_) => self.http_step(key, &mut buf[pos..]),
                State::Ws(_) => self.ws_step(key, &mut buf[pos..]),
                State::Closing(_) => self.closing_step(key, &mut buf[pos..]),
            };
            match step {
                Step::Consumed(n) => pos += n,
                Step::NeedMore | Step::Stop => break,
            }
        }
        (pos, false)
    }

    fn peer_closed(&mut self, key: u32) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        let reason = match &conn.state {
            State::Closing(c) => c.reason,
            State::Http(h) if h.awaiting.is_none() && conn.rbuf.is_empty() => CloseReason::Normal,
            _ => CloseReason::Io,
        };
        // An HTTP client that half-closed after its request still gets the
        // answer if one is queued; anything else ends here.
        if let State::Http(h) = &conn.state {
            if h.awaiting.is_some() || !conn.out.is_empty() {
                self.set_closing(key, false, reason);
                self.queue_flush(key);
                return;
            }
        }
        self.close_now(key, reason);
    }

    // ------------------------------------------------------------- write

    fn queue_flush(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if !conn.flush_queued {
                conn.flush_queued = true;
                self.pending_flush.push(key);
            }
        }
    }

    /// Queues bytes for a connection and makes sure they are written before
    /// the reactor sleeps.
    fn send(&mut self, key: u32, b: Bytes) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.out.push(b);
            if !conn.flush_queued {
                conn.flush_queued = true;
                self.pending_flush.push(key);
            }
        }
    }

    /// Whether to hold this iteration's writes, and until when (see
    /// `coalesce`); never while draining.
    fn coalescing(&self) -> Option<Instant> {
        if !self.coalesce || self.drain_deadline.is_some() || self.pending_flush.is_empty() {
            return None;
        }
        self.coalescer.hold(self.now, self.counters.delivered)
    }

    fn flush_pending(&mut self) {
        // Flushing never queues more flushes, but closing may; loop until quiet.
        while !self.pending_flush.is_empty() {
            let mut keys = mem::replace(&mut self.pending_flush, mem::take(&mut self.spare));
            for &key in &keys {
                self.flush(key);
            }
            keys.clear();
            self.spare = keys;
        }
    }

    fn flush(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.flush_queued = false;
        if conn.out.is_empty() && !conn.transport.wants_write() {
            self.after_flush(key);
            return;
        }
        // Sampled: one write in `QUEUE_SAMPLE`. Every write is one delivery
        // or more, and a bucket search on each was measurable (some
        // 10 ns a delivery, over 10 % of a fan-out's reactor time).
        self.queue_sample = self.queue_sample.wrapping_add(1);
        if self.hists_on && self.queue_sample.is_multiple_of(QUEUE_SAMPLE) {
            self.hists.queue_bytes.observe(conn.out.len() as u64);
            self.hists.dirty = true;
        }
        match conn.transport.flush(&mut conn.out, WRITE_BUDGET) {
            Ok((outcome, n)) => {
                self.counters.bytes_out += n as u64;
                if n > 0 {
                    conn.last_write = self.now;
                }
                conn.write_blocked = outcome == WriteOutcome::Blocked;
                if outcome == WriteOutcome::Budget {
                    // The rest goes next iteration (see `WRITE_BUDGET`).
                    conn.flush_queued = true;
                    self.flush_again.push(key);
                }
                if outcome == WriteOutcome::Done {
                    self.after_flush(key);
                } else {
                    // A partial write may still have brought it under the mark.
                    self.maybe_resume(key);
                }
            }
            Err(_) => self.close_now(key, CloseReason::Io),
        }
    }

    /// The queue is empty: a closing connection may now go, a paused one
    /// may read again.
    fn after_flush(&mut self, key: u32) {
        self.maybe_resume(key);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if let State::Closing(c) = &conn.state {
            if !c.await_peer_close {
                let reason = c.reason;
                self.close_now(key, reason);
            }
        }
    }

    // ------------------------------------------------------------- close

    /// Moves a connection to `Closing`, leaving its rooms first so that no
    /// more frames are queued behind the close.
    fn set_closing(&mut self, key: u32, await_peer_close: bool, reason: CloseReason) {
        self.leave_all(key);
        let grace = if self.drain_deadline.is_some() { self.live.config.drain_timeout } else { CLOSE_GRACE };
        let until = self.drain_deadline.unwrap_or(later(self.now, grace)).min(later(self.now, grace));
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.state = State::Closing(Closing { until, await_peer_close, reason });
            self.schedule(key, until);
        }
    }

    /// Starts the WebSocket close handshake with `code`.
    fn ws_close(&mut self, key: u32, code: u16, why: &str, reason: CloseReason) {
        self.send(key, Bytes::from(wsproto::encode_close(code, why)));
        self.counters.frames_out += 1;
        self.set_closing(key, true, reason);
    }

    /// Drops the connection now.
    fn close_now(&mut self, key: u32, reason: CloseReason) {
        self.leave_all(key);
        if let Some(mut conn) = self.conns.try_remove(key as usize) {
            if let Transport::Tls(sock, tls) = &mut conn.transport {
                // close_notify belongs to a finished handshake; before it,
                // rustls may still queue an alert of its own to send.
                if !tls.is_handshaking() {
                    tls.send_close_notify();
                }
                let _ = tls.write_tls(sock);
            }
            if let Some(sock) = conn.transport.socket() {
                let _ = self.poll.registry().deregister(sock);
            }
            if let Some(ip) = conn.ip {
                self.shared.limits.release(ip, self.now);
            }
            if let Transport::Mem(pipe) = &mut conn.transport {
                // The harness still reads what was written before the close.
                if self.mem_closed.len() >= 64 {
                    self.mem_closed.remove(0);
                }
                self.mem_closed.push((key, conn.gen, mem::take(&mut pipe.output)));
            }
            // A slow consumer's queue can hold tens of thousands of shared
            // frames: let them go off this thread.
            self.reap(conn.out.take_all());
            self.counters.open = self.counters.open.saturating_sub(1);
            self.counters.closed(reason);
        }
    }

    /// Frees a large queue off this thread (see `reaper`), a small one here.
    /// Either way the reaper learns how much was let go of, so that it
    /// trims after many small queues as after one large one.
    fn reap(&mut self, queue: std::collections::VecDeque<Bytes>) {
        if queue.len() >= reaper::INLINE_CHUNKS {
            self.hand_over(reaper::Garbage::Queue(queue));
        } else if let Some(r) = &self.shared.reaper {
            r.released(reaper::queue_bytes(&queue));
        }
    }

    fn hand_over(&mut self, garbage: reaper::Garbage) {
        if let Some(r) = &self.shared.reaper {
            r.hand_over(garbage);
        }
    }

    // ------------------------------------------------------------ timers

    /// Makes sure the connection's timer fires no later than `at`.
    fn schedule(&mut self, key: u32, at: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let tick = self.wheel.tick_for(at);
        if conn.timer_tick.is_some_and(|t| t <= tick) {
            return; // an earlier entry will fire and reschedule
        }
        conn.timer_tick = Some(self.wheel.insert(key, conn.gen, at));
    }

    fn fire_timers(&mut self, expired: &mut Vec<timer::Entry>) {
        self.wheel.expire(self.now, expired);
        for e in expired.drain(..) {
            let Some(conn) = self.conns.get_mut(e.key as usize) else {
                continue;
            };
            if conn.gen != e.gen || conn.timer_tick != Some(e.tick) {
                continue; // stale entry
            }
            conn.timer_tick = None;
            self.on_timer(e.key);
        }
    }

    /// A connection's timer fired: act on whatever is due, then file the
    /// next deadline. Deadlines are computed, not remembered, so activity
    /// never has to touch the wheel.
    fn on_timer(&mut self, key: u32) {
        let now = self.now;
        let cfg = &self.live.config;
        let (request_timeout, idle_timeout, ping_interval) = (cfg.request_timeout, cfg.idle_timeout, cfg.ping_interval);
        let handshake_timeout = cfg.tls_handshake_timeout;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        // Answers still queued: the connection is not idle, the peer is
        // reading them (or not). It gets `idle_timeout` without any write
        // progress before it is dropped, so a slow reader of a large page
        // is served and one that never reads is not kept forever.
        let stalled_since = (!conn.out.is_empty()).then_some(conn.last_write);
        let next = match &mut conn.state {
            State::Http(_) if stalled_since.is_some() => {
                let deadline = later(stalled_since.unwrap_or(now), idle_timeout);
                if now >= deadline {
                    self.close_now(key, CloseReason::Timeout);
                    return;
                }
                deadline
            }
            State::Http(h) if matches!(&conn.transport, Transport::Tls(_, t) if t.is_handshaking()) => {
                let deadline = later(h.idle_since, handshake_timeout);
                if now >= deadline {
                    self.counters.tls_handshake_timeouts += 1;
                    self.close_now(key, CloseReason::Timeout);
                    return;
                }
                deadline.min(later(h.idle_since, request_timeout))
            }
            State::Http(h) => {
                let since = h.started.unwrap_or(h.idle_since);
                if h.awaiting.is_some() {
                    later(now, request_timeout)
                } else if now >= later(since, request_timeout) {
                    if h.started.is_some() {
                        // Slowloris: the head did not complete in time.
                        let mut out = Vec::new();
                        crate::proto::http::write_error(
                            &mut out,
                            408,
                            "bad_request",
                            "request head not complete in time",
                            false,
                            &[],
                        );
                        self.send(key, Bytes::from(out));
                        self.set_closing(key, false, CloseReason::Timeout);
                    } else {
                        self.close_now(key, CloseReason::Timeout);
                    }
                    return;
                } else {
                    later(since, request_timeout)
                }
            }
            State::Ws(ws) => {
                let leeway = leeway_secs(&self.shared);
                let left = ws.exp.map(|exp| token_left(exp, leeway));
                if left == Some(Duration::ZERO) {
                    self.ws_close(key, 4001, "token expired", CloseReason::TokenExpired);
                    return;
                }
                let idle = now.saturating_duration_since(ws.last_rx);
                if idle >= idle_timeout {
                    self.ws_close(key, 1001, "idle timeout", CloseReason::Timeout);
                    return;
                }
                let mut next = later(ws.last_rx, idle_timeout);
                if idle >= ping_interval && !ws.ping_sent {
                    ws.ping_sent = true;
                    self.send(key, Bytes::from_static(&[0x89, 0x00]));
                    self.counters.frames_out += 1;
                } else if !ws.ping_sent {
                    next = next.min(later(ws.last_rx, ping_interval));
                }
                if let Some(left) = left {
                    next = next.min(later(now, left));
                }
                next
            }
            State::Closing(c) => {
                if now >= c.until {
                    let reason = c.reason;
                    self.close_now(key, reason);
                    return;
                }
                c.until
            }
        };
        self.schedule(key, next);
    }

    // -------------------------------------------------------------- mail

    /// Posts mail to reactor `to`. To ourselves it is handled at once, which
    /// keeps the same order a channel would (see `mail`).
    fn post(&mut self, to: usize, m: Mail) {
        if to == self.id {
            self.route_mail(m);
            return;
        }
        if let Some(out) = self.outbox.get_mut(to) {
            out.push(m);
        }
    }

    /// True when mail to `to` is backed up: new publishes are refused with
    /// `overloaded` until it clears, which bounds the overflow queues.
    fn backed_up(&self, to: usize) -> bool {
        to != self.id && !self.overflow[to].is_empty()
    }

    fn drain_inbox(&mut self) {
        self.mail_backlog = false;
        for _ in 0..MAIL_BUDGET {
            match self.inbox.rx.try_recv() {
                Ok(m) => self.route_mail(m),
                Err(_) => return,
            }
        }
        self.mail_backlog = true;
    }

    fn pass_mail_on(&mut self) {
        for to in 0..self.outbox.len() {
            let m = match self.outbox[to].len() {
                0 => continue,
                1 => match self.outbox[to].pop() {
                    Some(m) => m,
                    None => continue,
                },
                _ => Mail::Batch(mem::take(&mut self.outbox[to])),
            };
            let m = if self.overflow[to].is_empty() { self.shared.mailboxes[to].try_send(m) } else { Err(m) };
            if let Err(m) = m {
                self.overflow[to].push_back(m);
            }
            self.to_wake[to] = true;
        }
        for to in 0..self.overflow.len() {
            while let Some(m) = self.overflow[to].pop_front() {
                if let Err(m) = self.shared.mailboxes[to].try_send(m) {
                    self.overflow[to].push_front(m);
                    self.mail_backlog = true; // try again soon
                    break;
                }
            }
        }
        for to in 0..self.to_wake.len() {
            if mem::take(&mut self.to_wake[to]) {
                self.shared.mailboxes[to].wake();
            }
        }
    }

    fn conn_ref(&self, key: u32) -> ConnRef {
        let gen = self.conns.get(key as usize).map_or(0, |c| c.gen);
        ConnRef { reactor: self.id as u16, key, gen }
    }

    /// The live connection a `ConnRef` names, if it is still there.
    fn resolve(&self, c: ConnRef) -> Option<u32> {
        self.conns.get(c.key as usize).filter(|conn| conn.gen == c.gen).map(|_| c.key)
    }

    // ------------------------------------------------------------- drain

    fn begin_drain(&mut self) {
        let mut timeout = self.live.config.drain_timeout;
        if self.shared.is_fatal.load(Ordering::SeqCst) {
            timeout = timeout.min(FATAL_DRAIN);
        }
        let deadline = later(self.now, timeout);
        self.drain_deadline = Some(deadline);
        for (l, _) in &mut self.listeners {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let Some(conn) = self.conns.get(key as usize) else {
                continue;
            };
            match &conn.state {
                State::Ws(_) => self.ws_close(key, 1001, "server shutting down", CloseReason::Shutdown),
                State::Http(h) if h.awaiting.is_none() && h.started.is_none() && conn.out.is_empty() => {
                    self.close_now(key, CloseReason::Shutdown)
                }
                // An HTTP request in flight is answered, then closed (the
                // answer carries `Connection: close` while draining).
                State::Http(_) => self.schedule(key, deadline),
                State::Closing(_) => {}
            }
        }
    }

    fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }
}
