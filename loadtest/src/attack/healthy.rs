//! The healthy clients of an attack run, on their own thread and event loop:
//! a sender that pings and sends into a room on fixed schedules, and a
//! receiver that only listens to that room, both from 127.0.0.1.
//!
//! They log every latency sample, measured from the *intended* send time of
//! the schedule (a stalled loop or server cannot hide behind coordinated
//! omission), and every event a well-behaved client should never see: an
//! error frame, a close, a refused upgrade, a seq gap or duplicate, a reply
//! that never came. The coordinator cuts the log into phases afterwards.
//!
//! A dropped connection is reopened (after a short pause) so later attacks can
//! still be measured; both clients rejoin with `since` = the last seq they saw,
//! so the seq check carries on across the reconnect.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::check::{latency_ns, SeqCheck, SeqVerdict};
use crate::engine::Timer;
use crate::frame;
use crate::net::{self, Target, Upgrade};
use crate::scan::{self, Kind};

/// Largest server frame accepted (a history page is never asked for).
const MAX_FRAME: usize = 4 << 20;
/// A ping or send not answered within this long is logged as lost.
const LOST_AFTER_NS: u64 = 10_000_000_000;
/// Pause before reopening a dropped connection.
const RETRY_NS: u64 = 200_000_000;
/// The receiver pings this often so the server's idle timeout never fires.
const KEEPALIVE_NS: u64 = 5_000_000_000;
/// How long the clients wait for outstanding replies once told to stop.
const DRAIN_NS: u64 = 1_500_000_000;
/// Longest poll sleep, so `stop` is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(5);
const TIMER: usize = usize::MAX;

/// What the healthy clients do.
pub struct Config {
    pub target: Target,
    /// Upgrade requests (with their credentials) for the sender and the receiver.
    pub sender_upgrade: Vec<u8>,
    pub receiver_upgrade: Vec<u8>,
    pub room: String,
    pub ping_interval_ns: u64,
    pub send_interval_ns: u64,
    pub body_bytes: usize,
}

/// Which round trip a sample timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// `ping` → `pong` on the sender.
    Ping,
    /// `send` → `ack` on the sender.
    Ack,
    /// `send` → `msg` on the receiver.
    Delivery,
    /// How late the sender's loop queued a ping after its intended time: the
    /// load generator's own share of the ping figures.
    SendLag,
}

/// One timed round trip.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub intended_ns: u64,
    pub latency_ns: u64,
    pub kind: SampleKind,
}

/// What went wrong for a healthy client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An `error` frame, a refused upgrade, a failed connect, a bad frame.
    Error,
    /// The connection ended (close frame, end of stream, read error).
    Disconnect,
    /// A seq skipped or repeated, or a rejoin the server could not replay.
    Gap,
    /// A ping or send never answered.
    Lost,
}

/// One thing a healthy client should never see.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Nanoseconds since the shared epoch.
    pub at_ns: u64,
    pub conn: &'static str,
    pub kind: EventKind,
    pub detail: String,
}

/// Everything the healthy clients saw.
#[derive(Debug, Default)]
pub struct Log {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    /// Messages the receiver got in order, and sends acknowledged.
    pub delivered: u64,
    pub acked: u64,
}

/// State shared with the coordinator.
pub struct Shared {
    pub epoch: Instant,
    /// Both clients have joined at least once.
    pub ready: AtomicBool,
    pub stop: AtomicBool,
    /// Events so far, for progress lines.
    pub events: AtomicU64,
    pub first_event: Mutex<Option<String>>,
    /// The clients' thread got real-time priority (see [`run`]).
    pub realtime: AtomicBool,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            events: AtomicU64::new(0),
            first_event: Mutex::new(None),
            realtime: AtomicBool::new(false),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    Joining,
    Open,
    /// Dropped; reopened at `retry_at`.
    Down {
        retry_at: u64,
    },
}

struct Client {
    name: &'static str,
    sender: bool,
    sock: Option<TcpStream>,
    phase: Phase,
    out: Vec<u8>,
    out_pos: usize,
    /// The unfinished frame (or response head) from the last read.
    left: Vec<u8>,
    check: SeqCheck,
    /// Intended times of unanswered pings and sends, oldest first.
    pings: VecDeque<u64>,
    sends: VecDeque<u64>,
    next_ping: u64,
    next_send: u64,
    next_keepalive: u64,
    k: u64,
}

impl Client {
    fn new(name: &'static str, sender: bool) -> Client {
        Client {
            name,
            sender,
            sock: None,
            phase: Phase::Down { retry_at: 0 },
            out: Vec::new(),
            out_pos: 0,
            left: Vec::new(),
            check: SeqCheck::default(),
            pings: VecDeque::new(),
            sends: VecDeque::new(),
            next_ping: 0,
            next_send: 0,
            next_keepalive: 0,
            k: 0,
        }
    }
}

struct Runner<'a> {
    cfg: &'a Config,
    shared: &'a Shared,
    poll: Poll,
    timer: Timer,
    clients: [Client; 2],
    rbuf: Vec<u8>,
    log: Log,
    accept: String,
    mask_state: u32,
    draining_until: Option<u64>,
}

/// Gives the calling thread the lowest real-time priority (SCHED_FIFO 1)
/// when `want` and allowed; returns whether it has it.
///
/// The healthy clients stand for clients on other machines: they must not
/// wait for the CPU behind the attackers (or anything else on this core),
/// or the figures would be the load generator's. The thread sleeps between
/// its few sends, so it takes little CPU; the kernel's real-time throttling
/// bounds it even if it did not. Without the privilege the thread keeps the
/// normal policy, and the reported send lag shows what that cost.
pub(crate) fn realtime(want: bool) -> bool {
    if !want {
        return false;
    }
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// Runs the healthy clients until `shared.stop`, then waits briefly for
/// outstanding replies; returns the log. With `want_realtime` the thread
/// asks for real-time priority first.
pub fn run(cfg: &Config, shared: &Shared, want_realtime: bool) -> io::Result<Log> {
    shared.realtime.store(realtime(want_realtime), Ordering::Release);
    let poll = Poll::new()?;
    let timer = Timer::new()?;
    poll.registry().register(&mut mio::unix::SourceFd(&timer.fd()), Token(TIMER), Interest::READABLE)?;
    let mut r = Runner {
        cfg,
        shared,
        poll,
        timer,
        clients: [Client::new("sender", true), Client::new("receiver", false)],
        rbuf: vec![0; 256 * 1024],
        log: Log::default(),
        accept: roomcast::proto::ws::accept_key(net::WS_KEY.as_bytes()),
        mask_state: 0x1234_5679,
        draining_until: None,
    };
    r.run()?;
    Ok(r.log)
}

impl Runner<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let now = self.shared.now_ns();
            if self.draining_until.is_none() && self.shared.stop.load(Ordering::Acquire) {
                self.draining_until = Some(now + DRAIN_NS);
            }
            if let Some(until) = self.draining_until {
                let quiet = self.clients.iter().all(|c| c.pings.is_empty() && c.sends.is_empty());
                if quiet || now >= until {
                    self.finish(now);
                    return Ok(());
                }
            }
            let next = self.drive(now);
            for i in 0..2 {
                self.flush(i);
            }
            let sleep = Duration::from_nanos(next.saturating_sub(self.shared.now_ns()));
            let timeout = if sleep >= MAX_SLEEP {
                MAX_SLEEP
            } else {
                // epoll sleeps in whole milliseconds: a timerfd wakes the loop
                // on time for the next scheduled send.
                self.timer.arm(sleep);
                MAX_SLEEP
            };
            self.poll.poll(&mut events, Some(timeout))?;
            for ev in events.iter() {
                let i = ev.token().0;
                if i == TIMER {
                    self.timer.drain();
                    continue;
                }
                if i >= 2 {
                    continue;
                }
                if ev.is_writable() {
                    self.on_writable(i);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i);
                }
            }
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_ne_bytes()
    }

    fn event(&mut self, i: usize, kind: EventKind, detail: String) {
        let at_ns = self.shared.now_ns();
        self.event_at(i, at_ns, kind, detail);
    }

    /// Logs an event at `at_ns` (a lost request is dated by its intended time,
    /// so it lands in the phase that lost it).
    fn event_at(&mut self, i: usize, at_ns: u64, kind: EventKind, detail: String) {
        let conn = self.clients.get(i).map_or("?", |c| c.name);
        if self.shared.events.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Ok(mut g) = self.shared.first_event.lock() {
                *g = Some(format!("{conn}: {detail}"));
            }
        }
        self.log.events.push(Event { at_ns, conn, kind, detail });
    }

    /// Reopens dropped clients and queues what the schedules say is due;
    /// returns when something is next due.
    fn drive(&mut self, now: u64) -> u64 {
        let mut next = now + MAX_SLEEP.as_nanos() as u64;
        let draining = self.draining_until.is_some();
        for i in 0..2 {
            let phase = self.clients[i].phase;
            match phase {
                Phase::Down { retry_at } if !draining => {
                    if now >= retry_at {
                        self.open(i, now);
                    } else {
                        next = next.min(retry_at);
                    }
                }
                Phase::Open if !draining => {
                    next = next.min(self.due(i, now));
                }
                _ => {}
            }
            self.check_lost(i, now);
        }
        next
    }

    /// Queues the pings, sends and keep-alives due by `now` on client `i`.
    fn due(&mut self, i: usize, now: u64) -> u64 {
        let cfg = self.cfg;
        let mut next = u64::MAX;
        if self.clients[i].sender {
            // Every scheduled ping and send goes out, however late the loop
            // is: each is timed from its own intended time.
            while self.clients[i].next_ping <= now {
                let t = self.clients[i].next_ping;
                let msg = format!(r#"{{"op":"ping","ref":{t}}}"#);
                self.queue_text(i, msg.as_bytes());
                self.log.samples.push(Sample {
                    intended_ns: t,
                    latency_ns: latency_ns(t, now),
                    kind: SampleKind::SendLag,
                });
                let c = &mut self.clients[i];
                c.pings.push_back(t);
                c.next_ping = t + cfg.ping_interval_ns;
            }
            while self.clients[i].next_send <= now {
                let t = self.clients[i].next_send;
                let k = self.clients[i].k;
                let mut msg =
                    format!(r#"{{"op":"send","room":"{}","ref":{t},"body":{{"t":{t},"k":{k},"p":""#, cfg.room);
                let pad = cfg.body_bytes.saturating_sub(msg.len() + 3);
                msg.extend(std::iter::repeat_n('x', pad));
                msg.push_str("\"}}");
                self.queue_text(i, msg.as_bytes());
                let c = &mut self.clients[i];
                c.sends.push_back(t);
                c.k += 1;
                c.next_send = t + cfg.send_interval_ns;
            }
            let c = &self.clients[i];
            next = next.min(c.next_ping).min(c.next_send);
        } else {
            if self.clients[i].next_keepalive <= now {
                self.queue_text(i, br#"{"op":"ping","ref":"keepalive"}"#);
                self.clients[i].next_keepalive = now + KEEPALIVE_NS;
            }
            next = next.min(self.clients[i].next_keepalive);
        }
        next
    }

    fn check_lost(&mut self, i: usize, now: u64) {
        let cutoff = now.saturating_sub(LOST_AFTER_NS);
        while let Some(&t) = self.clients[i].pings.front() {
            if t >= cutoff {
                break;
            }
            self.clients[i].pings.pop_front();
            self.event_at(i, t, EventKind::Lost, format!("ping intended at {:.3} s unanswered", t as f64 / 1e9));
        }
        while let Some(&t) = self.clients[i].sends.front() {
            if t >= cutoff {
                break;
            }
            self.clients[i].sends.pop_front();
            self.event_at(i, t, EventKind::Lost, format!("send intended at {:.3} s not acknowledged", t as f64 / 1e9));
        }
    }

    /// Whatever is still unanswered when the run ends is lost.
    fn finish(&mut self, _now: u64) {
        for i in 0..2 {
            let pings: Vec<u64> = self.clients[i].pings.drain(..).collect();
            let sends: Vec<u64> = self.clients[i].sends.drain(..).collect();
            for t in pings {
                self.event_at(
                    i,
                    t,
                    EventKind::Lost,
                    format!("ping intended at {:.3} s unanswered at the end", t as f64 / 1e9),
                );
            }
            for t in sends {
                self.event_at(
                    i,
                    t,
                    EventKind::Lost,
                    format!("send intended at {:.3} s unacknowledged at the end", t as f64 / 1e9),
                );
            }
            if let Some(mut s) = self.clients[i].sock.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    fn open(&mut self, i: usize, now: u64) {
        let upgrade = if self.clients[i].sender { &self.cfg.sender_upgrade } else { &self.cfg.receiver_upgrade };
        match net::connect_from(&self.cfg.target, Some(Ipv4Addr::LOCALHOST), None) {
            Ok(mut sock) => {
                if let Err(e) =
                    self.poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                {
                    self.down(i, now, EventKind::Error, format!("register: {e}"));
                    return;
                }
                let c = &mut self.clients[i];
                c.sock = Some(sock);
                c.phase = Phase::Connecting;
                c.out.clear();
                c.out.extend_from_slice(upgrade);
                c.out_pos = 0;
                c.left.clear();
            }
            Err(e) => self.down(i, now, EventKind::Error, format!("connect: {e}")),
        }
    }

    /// Drops client `i` after an unplanned end and schedules its reopening.
    fn down(&mut self, i: usize, now: u64, kind: EventKind, detail: String) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let unanswered = c.pings.len() + c.sends.len();
        // What was in flight on the dead connection is covered by this event.
        c.pings.clear();
        c.sends.clear();
        c.phase = Phase::Down { retry_at: now + RETRY_NS };
        let detail = if unanswered > 0 { format!("{detail} ({unanswered} requests in flight)") } else { detail };
        if self.draining_until.is_none() || kind != EventKind::Disconnect {
            self.event(i, kind, detail);
        }
    }

    fn queue_text(&mut self, i: usize, payload: &[u8]) {
        let mask = self.mask();
        frame::write_masked(&mut self.clients[i].out, frame::OP_TEXT, payload, mask);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if matches!(c.phase, Phase::Connecting | Phase::Down { .. }) {
            return;
        }
        let Some(sock) = c.sock.as_mut() else {
            return;
        };
        let err = crate::net::write_pending(|b| sock.write(b), &mut c.out, &mut c.out_pos).err();
        if let Some(e) = err {
            let now = self.shared.now_ns();
            self.down(i, now, EventKind::Disconnect, e);
        }
    }

    fn on_writable(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.phase == Phase::Connecting {
            let Some(sock) = c.sock.as_mut() else {
                return;
            };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    let now = self.shared.now_ns();
                    self.down(i, now, EventKind::Error, format!("connect: {e}"));
                    return;
                }
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => c.phase = Phase::Upgrading,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let now = self.shared.now_ns();
                    self.down(i, now, EventKind::Error, format!("connect: {e}"));
                    return;
                }
            }
        }
        self.flush(i);
    }

    fn on_readable(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            if matches!(c.phase, Phase::Down { .. }) {
                return;
            }
            let Some(sock) = c.sock.as_mut() else {
                return;
            };
            if c.phase == Phase::Connecting {
                match sock.take_error() {
                    Ok(None) => return,
                    Ok(Some(e)) | Err(e) => {
                        let now = self.shared.now_ns();
                        self.down(i, now, EventKind::Error, format!("connect: {e}"));
                        return;
                    }
                }
            }
            let left = c.left.len();
            if self.rbuf.len() < left + 64 * 1024 {
                self.rbuf.resize((left + 64 * 1024).next_power_of_two(), 0);
            }
            if let Some(dst) = self.rbuf.get_mut(..left) {
                dst.copy_from_slice(&c.left);
            }
            c.left.clear();
            let space = self.rbuf.len() - left;
            let n = match sock.read(self.rbuf.get_mut(left..).unwrap_or_default()) {
                Ok(0) => {
                    let now = self.shared.now_ns();
                    self.down(i, now, EventKind::Disconnect, "closed by server".into());
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.left.extend_from_slice(self.rbuf.get(..left).unwrap_or_default());
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    c.left.extend_from_slice(self.rbuf.get(..left).unwrap_or_default());
                    continue;
                }
                Err(e) => {
                    let now = self.shared.now_ns();
                    self.down(i, now, EventKind::Disconnect, format!("read: {e}"));
                    return;
                }
            };
            let end = left + n;
            let now = self.shared.now_ns();
            let Some(consumed) = self.process(i, end, now) else {
                return;
            };
            if let Some(rest) = self.rbuf.get(consumed..end) {
                self.clients[i].left.extend_from_slice(rest);
            }
            self.flush(i);
            if n < space {
                return;
            }
        }
    }

    /// Handles `rbuf[..end]` for client `i`; returns how much was consumed,
    /// or `None` when the client was dropped.
    fn process(&mut self, i: usize, end: usize, now: u64) -> Option<usize> {
        let mut pos = 0;
        if self.clients[i].phase == Phase::Upgrading {
            match net::parse_upgrade(self.rbuf.get(..end).unwrap_or_default(), &self.accept) {
                Upgrade::Partial => return Some(0),
                Upgrade::Refused(status) => {
                    self.down(i, now, EventKind::Error, format!("upgrade refused: {status}"));
                    return None;
                }
                Upgrade::Done(off) => {
                    pos = off;
                    self.clients[i].phase = Phase::Joining;
                    let msg = match self.clients[i].check.last() {
                        Some(last) => format!(r#"{{"op":"join","room":"{}","since":{last},"ref":"j"}}"#, self.cfg.room),
                        None => format!(r#"{{"op":"join","room":"{}","ref":"j"}}"#, self.cfg.room),
                    };
                    self.queue_text(i, msg.as_bytes());
                }
            }
        }
        loop {
            let f = match frame::parse(self.rbuf.get(pos..end).unwrap_or_default(), MAX_FRAME) {
                Ok(Some(f)) => f,
                Ok(None) => return Some(pos),
                Err(e) => {
                    self.down(i, now, EventKind::Error, format!("bad frame: {e}"));
                    return None;
                }
            };
            let start = pos + f.header_len;
            let stop = start + f.payload_len;
            pos += f.total_len();
            match f.opcode {
                frame::OP_TEXT if f.fin => {
                    if !self.on_text(i, start, stop, now) {
                        return None;
                    }
                }
                frame::OP_PING => {
                    let payload = self.rbuf.get(start..stop).unwrap_or_default().to_vec();
                    let mask = self.mask();
                    frame::write_masked(&mut self.clients[i].out, frame::OP_PONG, &payload, mask);
                }
                frame::OP_CLOSE => {
                    let code = self
                        .rbuf
                        .get(start..stop)
                        .and_then(|p| p.get(..2))
                        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    self.down(i, now, EventKind::Disconnect, format!("server closed with {code}"));
                    return None;
                }
                frame::OP_PONG => {}
                other => {
                    self.event(i, EventKind::Error, format!("unexpected frame opcode {other} (fin {})", f.fin));
                }
            }
        }
    }

    /// One text message at `rbuf[start..stop]`; false when the client was dropped.
    fn on_text(&mut self, i: usize, start: usize, stop: usize, now: u64) -> bool {
        let Some(json) = self.rbuf.get(start..stop) else {
            return true;
        };
        match scan::kind(json) {
            Kind::Msg => {
                let Some((seq, t)) = scan::msg_seq_and_t(json) else {
                    // Not one of ours (no `t`): its seq still counts for order.
                    if let Some(seq) = scan::u64_field(json, b"\"seq\":") {
                        self.observe(i, seq);
                    }
                    return true;
                };
                if self.observe(i, seq) && !self.clients[i].sender {
                    self.log.delivered += 1;
                    self.log.samples.push(Sample {
                        intended_ns: t,
                        latency_ns: latency_ns(t, now),
                        kind: SampleKind::Delivery,
                    });
                }
            }
            Kind::Pong => {
                if let Some(t) = scan::int_ref(json) {
                    let c = &mut self.clients[i];
                    if let Some(p) = c.pings.iter().position(|&x| x == t) {
                        c.pings.remove(p);
                        self.log.samples.push(Sample {
                            intended_ns: t,
                            latency_ns: latency_ns(t, now),
                            kind: SampleKind::Ping,
                        });
                    }
                }
            }
            Kind::Ack => {
                if let Some(t) = scan::int_ref(json) {
                    let c = &mut self.clients[i];
                    if let Some(p) = c.sends.iter().position(|&x| x == t) {
                        c.sends.remove(p);
                        self.log.acked += 1;
                        self.log.samples.push(Sample {
                            intended_ns: t,
                            latency_ns: latency_ns(t, now),
                            kind: SampleKind::Ack,
                        });
                    }
                }
            }
            Kind::Joined => {
                let seq = scan::u64_field(json, b"\"seq\":").unwrap_or(0);
                let not_recovered = contains(json, b"\"recovered\":false");
                let c = &mut self.clients[i];
                if !c.check.is_joined() {
                    c.check.joined(seq);
                } else if not_recovered {
                    c.check.joined(seq);
                    self.event(i, EventKind::Gap, "rejoin could not replay the missed messages".into());
                }
                let c = &mut self.clients[i];
                if c.phase == Phase::Joining {
                    c.phase = Phase::Open;
                    c.next_ping = now;
                    c.next_send = now;
                    c.next_keepalive = now + KEEPALIVE_NS;
                }
                if self.clients.iter().all(|c| c.phase == Phase::Open) {
                    self.shared.ready.store(true, Ordering::Release);
                }
            }
            Kind::Error => {
                let text = String::from_utf8_lossy(json).into_owned();
                // The error answers the request its `ref` names: forget that
                // request so it is not reported lost as well.
                if let Some(r) = scan::int_ref(json) {
                    let c = &mut self.clients[i];
                    c.pings.retain(|&x| x != r);
                    c.sends.retain(|&x| x != r);
                }
                self.event(i, EventKind::Error, format!("server error: {text}"));
            }
            Kind::Other => {}
        }
        true
    }

    /// Checks one seq on client `i`; true when it came in order.
    fn observe(&mut self, i: usize, seq: u64) -> bool {
        match self.clients[i].check.observe(seq) {
            SeqVerdict::InOrder => true,
            SeqVerdict::Gap(n) => {
                self.event(i, EventKind::Gap, format!("seq {seq}: {n} skipped"));
                false
            }
            SeqVerdict::Dup | SeqVerdict::BeforeJoin => {
                self.event(i, EventKind::Gap, format!("seq {seq} repeated or out of order"));
                false
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
