//! The `cold-rooms` scenario: a reactor's worst stall while many rooms that
//! are not in memory load at once.
//!
//! 1. Prepare: one connection per room publishes `--messages` messages into
//!    it (pipelined, `--prep-window` unacknowledged), waiting for every ack,
//!    and closes.
//! 2. Cold: the scenario polls the server's `roomcast_rooms_loaded` gauge
//!    (`GET /metrics`, summed over reactors) until it reads 0, i.e. the
//!    server has forgotten every room (it must run with a short
//!    `--room-idle-timeout`, e.g. 1s). Not cold within `--cold-wait`: the run
//!    fails.
//! 3. Probe: one more connection joins a room of its own (warm from then on)
//!    and sends `ping` back to back, one outstanding at a time, on its own
//!    thread (real-time priority when allowed), logging every round trip.
//! 4. Storm: after a calm window, one fresh connection per cold room sends,
//!    all in the same loop iteration, `join` with `since` (older than what a
//!    freshly loaded room holds in memory, so the replay comes from storage),
//!    one `send` and one `history` with `before`; the scenario waits for
//!    every answer: `joined`, the replay, the `ack`, the `history` page and
//!    the connection's own message.
//! 5. Report: the probe's round trips in the calm window, during the storm
//!    (from the first storm write to the last answer) and in a short window
//!    after it. With one reactor (`--threads 1` on the server) the rooms and
//!    the probe share it, so the probe's worst round trip during the storm is
//!    the reactor's worst stall.
//!
//! Plain `ws://` only: the probe is a blocking socket on its own thread so
//! that nothing else the load generator does sits between a pong's arrival
//! and its timestamp.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::attack::{healthy, http_get, loadavg};
use crate::engine::Credentials;
use crate::frame;
use crate::net::{self, Target, Upgrade};
use crate::procfs;
use crate::scan::{self, Kind};
use crate::scenario::{env, parse_duration, run_tag, ser_dur, Common, Env, RunError};
use crate::stats::{new_hist, percentiles, Percentiles, Resources, RunResult, Violations};

/// Largest server frame accepted (a history page of `--history-limit`
/// messages is far below it).
const MAX_FRAME: usize = 4 << 20;
/// A probe ping unanswered this long ends the probe with an error.
const PROBE_LOST_NS: u64 = 30_000_000_000;
/// Round trips the probe keeps at most (the run is bounded in time; past
/// this the probe stops logging and says so).
const PROBE_MAX_SAMPLES: usize = 4_000_000;
/// The gauge the server reports its loaded rooms in.
const ROOMS_GAUGE: &str = "roomcast_rooms_loaded";
/// Longest poll sleep.
const MAX_SLEEP: Duration = Duration::from_millis(5);
/// Refs of the three storm requests, so an `error` names the one it answers.
const REF_JOIN: u64 = 1;
const REF_SEND: u64 = 2;
const REF_HISTORY: u64 = 3;

/// `cold-rooms` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ColdArgs {
    /// Cold rooms loaded at once (one storm connection each).
    #[arg(long, default_value_t = 100)]
    pub rooms: u32,
    /// Messages stored in each room before it goes cold.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Size of each message body in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// `since` of each storm `join` (default: messages / 2).
    #[arg(long)]
    pub since: Option<u64>,
    /// `before` of each storm `history` (default: messages / 2).
    #[arg(long)]
    pub before: Option<u64>,
    /// `limit` of each storm `history`.
    #[arg(long, default_value_t = 100)]
    pub history_limit: u64,
    /// Unacknowledged sends per prepare connection.
    #[arg(long, default_value_t = 32)]
    pub prep_window: u64,
    /// Longest wait for the server to forget the rooms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub cold_wait: Duration,
    /// Probe window before the storm (the baseline).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub calm: Duration,
    /// Probe window after the last storm answer.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub after: Duration,
    /// Longest wait for every storm answer.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub storm_timeout: Duration,
    /// Leave the probe thread at the normal scheduling policy.
    #[arg(long)]
    pub no_realtime: bool,
}

impl ColdArgs {
    fn since(&self) -> u64 {
        self.since.unwrap_or(self.messages / 2)
    }

    fn before(&self) -> u64 {
        self.before.unwrap_or(self.messages / 2)
    }

    fn check(&self) -> Result<(), RunError> {
        let bad = |m: &str| Err(RunError::Setup(m.to_string()));
        if self.rooms == 0 || self.rooms > 10_000 {
            return bad("--rooms must be 1..=10000");
        }
        if self.messages == 0 || self.messages > 100_000 {
            return bad("--messages must be 1..=100000");
        }
        if self.since() > self.messages {
            return bad("--since must not exceed --messages");
        }
        if self.before() == 0 || self.history_limit == 0 {
            return bad("--before and --history-limit must be at least 1");
        }
        if self.body_bytes > 64 * 1024 {
            return bad("--body-bytes must be at most 65536");
        }
        Ok(())
    }

    /// Messages a storm `history` should return: the newest `limit` below `before`.
    fn history_expected(&self) -> u64 {
        self.history_limit.min(self.before().saturating_sub(1)).min(self.messages)
    }
}

/// `d` from now; durations here are bounded by `parse_duration`, and an
/// overflow would mean "now".
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now)
}

/// The upgrade request for a connection of `user`.
fn upgrade_for(env: &Env, user: &str) -> Result<Vec<u8>, RunError> {
    let (query, bearer) = match &*env.creds {
        Credentials::Token(t) => (String::new(), Some(t.clone())),
        Credentials::Secret(auth) => (
            String::new(),
            Some(auth.mint(user, Duration::from_secs(24 * 3600), None).map_err(|e| RunError::Auth(e.to_string()))?),
        ),
        Credentials::Anonymous => (format!("user={user}"), None),
    };
    Ok(net::upgrade_request(&env.target, &query, bearer.as_deref()))
}

/// The sum over every series (every reactor) of gauge `name` in a
/// Prometheus text page; `None` when the page has no such series.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series_name = series.split_once('{').map_or(series, |(n, _)| n);
        if series_name != name {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The server's loaded rooms now, from `GET /metrics`.
fn rooms_loaded(target: &Target) -> Option<f64> {
    let (status, body) = http_get(target.addr, &target.host, "/metrics")?;
    if status != 200 {
        return None;
    }
    gauge(&String::from_utf8_lossy(&body), ROOMS_GAUGE)
}

fn mask_next(state: &mut u32) -> [u8; 4] {
    // xorshift32: masks need not be secret on loopback, only varied.
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x.to_ne_bytes()
}

/// `"op":"send"` of message `k` into `room`, its body padded to `body_bytes`.
fn send_frame(room: &str, r#ref: u64, k: u64, body_bytes: usize) -> String {
    let mut body = format!(r#"{{"t":0,"k":{k},"p":""#);
    let pad = body_bytes.saturating_sub(body.len() + 2);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    format!(r#"{{"op":"send","room":"{room}","ref":{ref},"body":{body}}}"#, ref = r#ref)
}

/// How many messages a `history` page holds (the load generator's bodies
/// carry no `"seq":` of their own).
fn count_seqs(json: &[u8]) -> u64 {
    const KEY: &[u8] = b"\"seq\":";
    json.windows(KEY.len()).filter(|w| *w == KEY).count() as u64
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ------------------------------------------------------------------ probe

/// State shared between the coordinator and the probe thread.
struct ProbeShared {
    epoch: Instant,
    ready: AtomicBool,
    stop: AtomicBool,
    realtime: AtomicBool,
    failed: Mutex<Option<String>>,
}

impl ProbeShared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What the probe saw: `(sent_ns, round_trip_ns)` per ping.
#[derive(Default)]
struct ProbeLog {
    samples: Vec<(u64, u64)>,
    dropped: u64,
    errors: u64,
    first_error: Option<String>,
}

/// A blocking WebSocket client for the probe.
struct BlockingWs {
    s: std::net::TcpStream,
    buf: Vec<u8>,
    tmp: Vec<u8>,
    mask: u32,
}

impl BlockingWs {
    fn connect(target: &Target, upgrade: &[u8]) -> io::Result<BlockingWs> {
        let s = std::net::TcpStream::connect_timeout(&target.addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        // Short read timeouts so a stop is noticed; a ping waits through many.
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut ws = BlockingWs { s, buf: Vec::new(), tmp: vec![0; 64 * 1024], mask: 0x2545_F491 };
        ws.s.write_all(upgrade)?;
        let accept = roomcast::proto::ws::accept_key(net::WS_KEY.as_bytes());
        let deadline = later(Duration::from_secs(5));
        loop {
            match net::parse_upgrade(&ws.buf, &accept) {
                Upgrade::Done(off) => {
                    ws.buf.drain(..off);
                    return Ok(ws);
                }
                Upgrade::Refused(status) => return Err(io::Error::other(format!("upgrade refused: {status}"))),
                Upgrade::Partial => {}
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other("no upgrade answer within 5 s"));
            }
            ws.fill()?;
        }
    }

    /// One read into `buf`; a timeout is not an error.
    fn fill(&mut self) -> io::Result<()> {
        match self.s.read(&mut self.tmp) {
            Ok(0) => Err(io::Error::other("closed by server")),
            Ok(n) => {
                self.buf.extend_from_slice(self.tmp.get(..n).unwrap_or_default());
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        frame::write_masked(&mut out, opcode, payload, mask_next(&mut self.mask));
        self.s.write_all(&out)
    }

    /// The next text message, answering server pings on the way; `None`
    /// when none came by `deadline`.
    fn next_text(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        loop {
            match frame::parse(&self.buf, MAX_FRAME) {
                Ok(Some(f)) => {
                    let start = f.header_len;
                    let payload = self.buf.get(start..start + f.payload_len).unwrap_or_default().to_vec();
                    self.buf.drain(..f.total_len());
                    match f.opcode {
                        frame::OP_TEXT if f.fin => return Ok(Some(payload)),
                        frame::OP_PING => self.send(frame::OP_PONG, &payload)?,
                        frame::OP_CLOSE => return Err(io::Error::other("server closed the probe")),
                        _ => {}
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(format!("bad frame: {e}"))),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.fill()?;
        }
    }
}

/// Connects, joins `room`, then pings back to back until `stop`.
fn probe(target: &Target, upgrade: &[u8], room: &str, sh: &ProbeShared, log: &mut ProbeLog) -> io::Result<()> {
    let mut ws = BlockingWs::connect(target, upgrade)?;
    ws.send(frame::OP_TEXT, format!(r#"{{"op":"join","room":"{room}","ref":1}}"#).as_bytes())?;
    let deadline = later(Duration::from_secs(10));
    loop {
        let Some(m) = ws.next_text(deadline)? else {
            return Err(io::Error::other("probe join unanswered within 10 s"));
        };
        match scan::kind(&m) {
            Kind::Joined => break,
            Kind::Error => return Err(io::Error::other(format!("probe join: {}", String::from_utf8_lossy(&m)))),
            _ => {}
        }
    }
    sh.ready.store(true, Ordering::Release);
    let mut k = 0u64;
    while !sh.stop.load(Ordering::Acquire) {
        k += 1;
        let sent = sh.now_ns();
        let lost_at = later(Duration::from_nanos(PROBE_LOST_NS));
        ws.send(frame::OP_TEXT, format!(r#"{{"op":"ping","ref":{k}}}"#).as_bytes())?;
        loop {
            let Some(m) = ws.next_text(lost_at)? else {
                return Err(io::Error::other(format!("ping unanswered for {} s", PROBE_LOST_NS / 1_000_000_000)));
            };
            match scan::kind(&m) {
                Kind::Pong if scan::int_ref(&m) == Some(k) => {
                    let rtt = sh.now_ns().saturating_sub(sent);
                    if log.samples.len() < PROBE_MAX_SAMPLES {
                        log.samples.push((sent, rtt));
                    } else {
                        log.dropped += 1;
                    }
                    break;
                }
                Kind::Error => {
                    log.errors += 1;
                    log.first_error.get_or_insert_with(|| format!("probe: {}", String::from_utf8_lossy(&m)));
                    if scan::int_ref(&m) == Some(k) {
                        // This ping was refused (rate_limited, say): no
                        // round trip to log, the next one goes out.
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn run_probe(target: Target, upgrade: Vec<u8>, room: String, sh: Arc<ProbeShared>, want_rt: bool) -> ProbeLog {
    sh.realtime.store(healthy::realtime(want_rt), Ordering::Release);
    let mut log = ProbeLog::default();
    if let Err(e) = probe(&target, &upgrade, &room, &sh, &mut log) {
        log.errors += 1;
        let e = format!("probe: {e}");
        log.first_error.get_or_insert(e.clone());
        if let Ok(mut g) = sh.failed.lock() {
            *g = Some(e);
        }
    }
    log
}

// ------------------------------------------------------------------ fleet

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prepare,
    Storm,
}

/// What one storm connection has been answered, with the times (ns since
/// the epoch).
#[derive(Debug, Default)]
struct Storm {
    joined_at: Option<u64>,
    joined_seq: u64,
    recovered: Option<bool>,
    /// The next seq the connection's stream must carry.
    next_seq: u64,
    replayed: u64,
    replay_done_at: Option<u64>,
    /// `None` with `ack_at` set: the send was refused.
    ack_seq: Option<u64>,
    ack_at: Option<u64>,
    history_at: Option<u64>,
    history_msgs: u64,
    done_at: Option<u64>,
}

struct Client {
    sock: TcpStream,
    phase: Phase,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    room: usize,
    closed: Option<String>,
    sent: u64,
    acked: u64,
    storm: Storm,
}

/// What the fleet's settings are.
struct FleetCfg<'a> {
    rooms: &'a [String],
    messages: u64,
    body_bytes: usize,
    since: u64,
    before: u64,
    history_limit: u64,
    history_expected: u64,
    prep_window: u64,
}

/// A set of non-blocking connections on one mio loop: the prepare
/// publishers, then the storm joiners.
struct Fleet<'a> {
    cfg: &'a FleetCfg<'a>,
    epoch: Instant,
    poll: Poll,
    clients: Vec<Client>,
    stage: Stage,
    rbuf: Vec<u8>,
    accept: String,
    mask: u32,
    violations: Violations,
    first_error: Option<String>,
}

impl<'a> Fleet<'a> {
    /// Opens one connection per room, each with its upgrade request queued.
    fn open(
        cfg: &'a FleetCfg<'a>,
        epoch: Instant,
        target: &Target,
        upgrades: Vec<Vec<u8>>,
        stage: Stage,
    ) -> io::Result<Fleet<'a>> {
        let poll = Poll::new()?;
        let mut clients = Vec::with_capacity(upgrades.len());
        for (i, up) in upgrades.into_iter().enumerate() {
            let mut sock = net::connect_from(target, None, None)?;
            poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            clients.push(Client {
                sock,
                phase: Phase::Connecting,
                out: up,
                out_pos: 0,
                inbuf: Vec::new(),
                room: i,
                closed: None,
                sent: 0,
                acked: 0,
                storm: Storm::default(),
            });
        }
        Ok(Fleet {
            cfg,
            epoch,
            poll,
            clients,
            stage,
            rbuf: vec![0; 64 * 1024],
            accept: roomcast::proto::ws::accept_key(net::WS_KEY.as_bytes()),
            mask: 0x9E37_79B9,
            violations: Violations::default(),
            first_error: None,
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn error(&mut self, e: String) {
        self.violations.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn all_open(&self) -> bool {
        self.clients.iter().all(|c| c.phase == Phase::Open)
    }

    fn any_closed(&self) -> Option<String> {
        self.clients.iter().find_map(|c| c.closed.clone())
    }

    fn prepared(&self) -> bool {
        self.clients.iter().all(|c| c.acked >= self.cfg.messages)
    }

    fn storm_done(&self) -> bool {
        self.clients.iter().all(|c| c.storm.done_at.is_some() || c.closed.is_some())
    }

    /// Runs the loop until `done` holds (true), a connection closes or
    /// `until` passes (false).
    fn pump(&mut self, until: Instant, done: impl Fn(&Self) -> bool) -> io::Result<bool> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.stage == Stage::Prepare {
                self.drive_prepare();
            }
            self.flush_all();
            if done(self) {
                return Ok(true);
            }
            if self.any_closed().is_some() {
                return Ok(false);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            self.poll.poll(&mut events, Some(MAX_SLEEP.min(until - now)))?;
            for ev in events.iter() {
                let i = ev.token().0;
                if ev.is_writable() {
                    self.on_writable(i);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i);
                }
            }
        }
    }

    fn queue(&mut self, i: usize, payload: &[u8]) {
        let mask = mask_next(&mut self.mask);
        if let Some(c) = self.clients.get_mut(i) {
            frame::write_masked(&mut c.out, frame::OP_TEXT, payload, mask);
        }
    }

    /// Keeps `prep_window` sends outstanding on every open connection.
    fn drive_prepare(&mut self) {
        for i in 0..self.clients.len() {
            while let Some(c) = self.clients.get(i) {
                if c.phase != Phase::Open
                    || c.closed.is_some()
                    || c.sent >= self.cfg.messages
                    || c.sent - c.acked >= self.cfg.prep_window
                {
                    break;
                }
                let room = self.cfg.rooms.get(c.room).map_or("lt", String::as_str);
                let k = c.sent;
                let msg = send_frame(room, k, k, self.cfg.body_bytes);
                self.queue(i, msg.as_bytes());
                if let Some(c) = self.clients.get_mut(i) {
                    c.sent += 1;
                }
            }
        }
    }

    /// Queues the three storm requests on every connection; returns the
    /// time just before the first write.
    fn start_storm(&mut self) -> u64 {
        self.stage = Stage::Storm;
        let cfg = self.cfg;
        for i in 0..self.clients.len() {
            let room = self.clients.get(i).and_then(|c| cfg.rooms.get(c.room)).map_or("lt", String::as_str);
            let join = format!(r#"{{"op":"join","room":"{room}","since":{},"ref":{REF_JOIN}}}"#, cfg.since);
            let send = send_frame(room, REF_SEND, cfg.messages, cfg.body_bytes);
            let history = format!(
                r#"{{"op":"history","room":"{room}","before":{},"limit":{},"ref":{REF_HISTORY}}}"#,
                cfg.before, cfg.history_limit
            );
            self.queue(i, join.as_bytes());
            self.queue(i, send.as_bytes());
            self.queue(i, history.as_bytes());
        }
        let t0 = self.now_ns();
        self.flush_all();
        t0
    }

    fn flush_all(&mut self) {
        for i in 0..self.clients.len() {
            self.flush(i);
        }
    }

    fn flush(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Connecting || c.closed.is_some() || c.out.is_empty() {
            return;
        }
        let sock = &mut c.sock;
        if let Err(e) = net::write_pending(|b| sock.write(b), &mut c.out, &mut c.out_pos) {
            self.close(i, e);
        }
    }

    fn close(&mut self, i: usize, why: String) {
        if let Some(c) = self.clients.get_mut(i) {
            if c.closed.is_none() {
                let _ = self.poll.registry().deregister(&mut c.sock);
                c.closed = Some(why.clone());
                self.error(format!("connection {i}: {why}"));
            }
        }
    }

    fn on_writable(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Connecting {
            match c.sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.close(i, format!("connect: {e}")),
                Ok(None) => {}
            }
            match c.sock.peer_addr() {
                Ok(_) => c.phase = Phase::Upgrading,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.close(i, format!("connect: {e}")),
            }
        }
        self.flush(i);
    }

    fn on_readable(&mut self, i: usize) {
        loop {
            let Some(c) = self.clients.get_mut(i) else {
                return;
            };
            if c.closed.is_some() {
                return;
            }
            if c.phase == Phase::Connecting {
                // Readable before writable means the connect failed.
                match c.sock.take_error() {
                    Ok(None) => return,
                    Ok(Some(e)) | Err(e) => return self.close(i, format!("connect: {e}")),
                }
            }
            match c.sock.read(&mut self.rbuf) {
                Ok(0) => return self.close(i, "closed by server".into()),
                Ok(n) => c.inbuf.extend_from_slice(self.rbuf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(i, format!("read: {e}")),
            }
        }
        self.process(i);
    }

    /// Handles every complete frame in client `i`'s input.
    fn process(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let mut inbuf = std::mem::take(&mut c.inbuf);
        let mut pos = 0;
        if c.phase == Phase::Upgrading {
            match net::parse_upgrade(&inbuf, &self.accept) {
                Upgrade::Partial => {
                    c.inbuf = inbuf;
                    return;
                }
                Upgrade::Refused(status) => return self.close(i, format!("upgrade refused: {status}")),
                Upgrade::Done(off) => {
                    c.phase = Phase::Open;
                    pos = off;
                }
            }
        }
        let now = self.now_ns();
        loop {
            let f = match frame::parse(inbuf.get(pos..).unwrap_or_default(), MAX_FRAME) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return self.close(i, format!("bad frame: {e}")),
            };
            let start = pos + f.header_len;
            let stop = start + f.payload_len;
            pos += f.total_len();
            let payload = inbuf.get(start..stop).unwrap_or_default();
            match f.opcode {
                frame::OP_TEXT if f.fin => self.on_text(i, payload, now),
                frame::OP_PING => {
                    let mask = mask_next(&mut self.mask);
                    if let Some(c) = self.clients.get_mut(i) {
                        frame::write_masked(&mut c.out, frame::OP_PONG, payload, mask);
                    }
                }
                frame::OP_CLOSE => return self.close(i, "server sent close".into()),
                _ => {}
            }
        }
        inbuf.drain(..pos.min(inbuf.len()));
        if let Some(c) = self.clients.get_mut(i) {
            c.inbuf = inbuf;
        }
    }

    fn on_text(&mut self, i: usize, json: &[u8], now: u64) {
        match self.stage {
            Stage::Prepare => match scan::kind(json) {
                Kind::Ack => {
                    if let Some(c) = self.clients.get_mut(i) {
                        c.acked += 1;
                    }
                }
                Kind::Error => {
                    // A refused send is never acked: count it answered so
                    // the phase ends, and fail the run.
                    if let Some(c) = self.clients.get_mut(i) {
                        c.acked += 1;
                    }
                    self.error(format!("prepare: {}", String::from_utf8_lossy(json)));
                }
                _ => {}
            },
            Stage::Storm => self.on_storm_text(i, json, now),
        }
    }

    fn on_storm_text(&mut self, i: usize, json: &[u8], now: u64) {
        let cfg = self.cfg;
        let mut problems: Vec<String> = Vec::new();
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let s = &mut c.storm;
        match scan::kind(json) {
            Kind::Joined => {
                let seq = scan::u64_field(json, b"\"seq\":").unwrap_or(0);
                let recovered = contains(json, b"\"recovered\":true");
                s.joined_at = Some(now);
                s.joined_seq = seq;
                s.recovered = Some(recovered);
                if seq != cfg.messages {
                    problems.push(format!("joined reports seq {seq}, {} were stored", cfg.messages));
                }
                if !recovered {
                    problems.push(format!("joined with since {} was not recovered", cfg.since));
                }
                // Without a replay the stream goes on live after `seq`.
                s.next_seq = if recovered { cfg.since.min(seq) + 1 } else { seq + 1 };
                if s.next_seq > seq {
                    s.replay_done_at = Some(now);
                }
            }
            Kind::Msg => match (s.joined_at, scan::u64_field(json, b"\"seq\":")) {
                (None, _) => {
                    self.violations.dups += 1;
                    problems.push("msg before joined".into());
                }
                (Some(_), Some(seq)) => {
                    if seq == s.next_seq {
                        s.next_seq += 1;
                    } else if seq > s.next_seq {
                        self.violations.gaps += 1;
                        self.violations.missing += seq - s.next_seq;
                        s.next_seq = seq + 1;
                    } else {
                        self.violations.dups += 1;
                    }
                    if seq <= s.joined_seq {
                        s.replayed += 1;
                    }
                    if s.replay_done_at.is_none() && s.next_seq > s.joined_seq {
                        s.replay_done_at = Some(now);
                    }
                }
                (Some(_), None) => problems.push("msg without seq".into()),
            },
            Kind::Ack => {
                s.ack_at = Some(now);
                s.ack_seq = scan::u64_field(json, b"\"seq\":");
            }
            Kind::Error => {
                problems.push(format!("storm: {}", String::from_utf8_lossy(json)));
                // The failed request is answered: its part of the wait ends.
                match scan::int_ref(json) {
                    Some(REF_JOIN) => {
                        s.joined_at = Some(now);
                        s.replay_done_at = Some(now);
                        s.recovered = Some(false);
                    }
                    Some(REF_SEND) => s.ack_at = Some(now),
                    Some(REF_HISTORY) => s.history_at = Some(now),
                    _ => {}
                }
            }
            Kind::Other if json.starts_with(b"{\"op\":\"history\"") => {
                s.history_at = Some(now);
                s.history_msgs = count_seqs(json);
                if s.history_msgs != cfg.history_expected {
                    problems.push(format!(
                        "history before {} returned {} messages, expected {}",
                        cfg.before, s.history_msgs, cfg.history_expected
                    ));
                }
            }
            _ => {}
        }
        let own_seen = s.ack_seq.is_none_or(|a| s.next_seq > a);
        if s.done_at.is_none() && s.replay_done_at.is_some() && s.ack_at.is_some() && s.history_at.is_some() && own_seen
        {
            s.done_at = Some(now);
        }
        for p in problems {
            self.error(p);
        }
    }
}

// ------------------------------------------------------------------ report

/// Probe round trips in one window.
fn window(samples: &[(u64, u64)], keep: impl Fn(u64, u64) -> bool) -> Percentiles {
    let mut h = new_hist();
    for &(sent, rtt) in samples {
        if keep(sent, sent + rtt) {
            h.saturating_record(rtt.max(1));
        }
    }
    percentiles(&h)
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

fn spread_ms(times: &[u64], t0: u64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = times.iter().map(|&t| t.saturating_sub(t0) as f64 / 1e6).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v.get(((v.len() - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.5), at(0.99), at(1.0))
}

/// Runs the scenario; the second value is the one-line human summary.
pub fn run(common: &Common, a: &ColdArgs) -> Result<(RunResult, String), RunError> {
    a.check()?;
    let env = env(common, false)?;
    if env.target.tls {
        return Err(RunError::Setup("cold-rooms speaks plain ws:// only".into()));
    }
    if env.targets.len() > 1 {
        return Err(RunError::Setup("cold-rooms drives one server: give one --url".into()));
    }
    let target = env.target.clone();
    let loadavg_start = loadavg();
    let Some(loaded_at_start) = rooms_loaded(&target) else {
        return Err(RunError::Setup(format!(
            "GET /metrics has no {ROOMS_GAUGE} gauge: cannot tell when the rooms are cold"
        )));
    };
    let tag = run_tag();
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("{tag}-c{r}")).collect();
    let warm = format!("{tag}-warm");
    let cfg = FleetCfg {
        rooms: &rooms,
        messages: a.messages,
        body_bytes: a.body_bytes,
        since: a.since(),
        before: a.before(),
        history_limit: a.history_limit,
        history_expected: a.history_expected(),
        prep_window: a.prep_window.max(1),
    };
    let epoch = Instant::now();

    // 1. Prepare.
    let t_prep = Instant::now();
    let ups = (0..a.rooms).map(|r| upgrade_for(&env, &format!("lt-cold-p{r}"))).collect::<Result<Vec<_>, _>>()?;
    let mut prep = Fleet::open(&cfg, epoch, &target, ups, Stage::Prepare)?;
    let ok = prep.pump(later(common.setup_timeout), Fleet::prepared)?;
    let prep_errors = prep.violations.errors;
    if !ok || prep_errors > 0 {
        let why = prep.first_error.clone().or_else(|| prep.any_closed()).unwrap_or_else(|| "timed out".into());
        return Err(RunError::Setup(format!("prepare failed: {why}")));
    }
    let prep_s = t_prep.elapsed().as_secs_f64();
    drop(prep);
    let stored = u64::from(a.rooms) * a.messages;
    eprintln!("cold-rooms: stored {stored} messages in {} rooms in {prep_s:.2} s", a.rooms);

    // 2. Cold.
    let t_cold = Instant::now();
    let cold_until = later(a.cold_wait);
    let mut loaded = rooms_loaded(&target);
    while loaded != Some(0.0) {
        if Instant::now() >= cold_until {
            return Err(RunError::Setup(format!(
                "the rooms did not go cold within {:.1} s: {ROOMS_GAUGE} is {} (start the server with a short \
                 --room-idle-timeout, e.g. 1s)",
                a.cold_wait.as_secs_f64(),
                loaded.map_or("unreadable".to_string(), |v| v.to_string())
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
        loaded = rooms_loaded(&target);
    }
    let cold_wait_s = t_cold.elapsed().as_secs_f64();
    eprintln!("cold-rooms: every room cold after {cold_wait_s:.2} s");

    // 3. Storm connections (upgraded, idle) and the probe.
    let ups = (0..a.rooms).map(|r| upgrade_for(&env, &format!("lt-cold-s{r}"))).collect::<Result<Vec<_>, _>>()?;
    let mut storm = Fleet::open(&cfg, epoch, &target, ups, Stage::Storm)?;
    if !storm.pump(later(common.setup_timeout), Fleet::all_open)? {
        let why = storm.any_closed().unwrap_or_else(|| "timed out".into());
        return Err(RunError::Setup(format!("storm connections: {why}")));
    }
    let psh = Arc::new(ProbeShared {
        epoch,
        ready: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        realtime: AtomicBool::new(false),
        failed: Mutex::new(None),
    });
    let probe_up = upgrade_for(&env, "lt-cold-probe")?;
    let handle = {
        let (t, sh, room, rt) = (target.clone(), psh.clone(), warm.clone(), !a.no_realtime);
        std::thread::spawn(move || run_probe(t, probe_up, room, sh, rt))
    };
    let ready_until = later(Duration::from_secs(15));
    while !psh.ready.load(Ordering::Acquire) {
        let failed = psh.failed.lock().ok().and_then(|g| g.clone());
        if failed.is_some() || Instant::now() >= ready_until {
            psh.stop.store(true, Ordering::Release);
            let _ = handle.join();
            return Err(RunError::Setup(failed.unwrap_or_else(|| "probe not ready within 15 s".into())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let loaded_before_storm = rooms_loaded(&target);

    // 4. Calm, then the storm.
    let calm_start = psh.now_ns();
    std::thread::sleep(a.calm);
    let cpu_before = common.primary_pid().and_then(|p| procfs::cpu_us(Some(p), false));
    let t0 = storm.start_storm();
    let complete = storm.pump(later(a.storm_timeout), Fleet::storm_done)?;
    let t_end = storm.now_ns();
    std::thread::sleep(a.after);
    let after_end = psh.now_ns();
    let cpu_after = common.primary_pid().and_then(|p| procfs::cpu_us(Some(p), false));
    psh.stop.store(true, Ordering::Release);
    let log = handle.join().unwrap_or_default();
    let loaded_after_storm = rooms_loaded(&target);
    let loadavg_end = loadavg();

    // 5. Report.
    let mut violations = storm.violations.clone();
    let mut first_error = storm.first_error.clone();
    let unanswered = storm.clients.iter().filter(|c| c.storm.done_at.is_none()).count() as u64;
    if !complete && unanswered > 0 {
        violations.errors += unanswered;
        first_error.get_or_insert_with(|| {
            format!("{unanswered} storm connections not fully answered within {:.1} s", a.storm_timeout.as_secs_f64())
        });
    }
    violations.errors += log.errors;
    if let Some(e) = &log.first_error {
        first_error.get_or_insert(e.clone());
    }
    // Calm: answered before the storm began; a round trip that spans its
    // start belongs to the storm.
    let calm = window(&log.samples, |sent, recv| sent >= calm_start && recv < t0);
    let during = window(&log.samples, |sent, recv| recv >= t0 && sent < t_end);
    let after = window(&log.samples, |sent, _| sent >= t_end && sent < after_end);
    let st: Vec<&Storm> = storm.clients.iter().map(|c| &c.storm).collect();
    let joined: Vec<u64> = st.iter().filter_map(|s| s.joined_at).collect();
    let replays: Vec<u64> = st.iter().filter_map(|s| s.replay_done_at).collect();
    let done: Vec<u64> = st.iter().filter_map(|s| s.done_at).collect();
    let (join_p50, join_p99, join_max) = spread_ms(&joined, t0);
    let (_, _, replays_max) = spread_ms(&replays, t0);
    let (_, _, all_max) = spread_ms(&done, t0);
    let replayed: u64 = st.iter().map(|s| s.replayed).sum();
    let history_msgs: u64 = st.iter().map(|s| s.history_msgs).sum();
    let not_recovered = st.iter().filter(|s| s.recovered == Some(false)).count();
    let measured_s = t_end.saturating_sub(t0) as f64 / 1e9;
    let units = joined.len() as u64;

    let mut counts = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        counts.insert(k.to_string(), v);
    };
    put("rooms", a.rooms.into());
    put("messages_per_room", a.messages.into());
    put("since", a.since().into());
    put("history_before", a.before().into());
    put("prepare_s", prep_s.into());
    put("prepare_publishes_per_s", (stored as f64 / prep_s.max(1e-9)).round().into());
    put("rooms_loaded_at_start", loaded_at_start.into());
    put("cold_wait_s", cold_wait_s.into());
    put("rooms_loaded_before_storm", serde_json::json!(loaded_before_storm));
    put("rooms_loaded_after_storm", serde_json::json!(loaded_after_storm));
    for (name, p) in [("calm", &calm), ("storm", &during), ("after", &after)] {
        put(&format!("{name}_probe_count"), p.count.into());
        put(&format!("{name}_probe_p50_us"), p.p50_us.into());
        put(&format!("{name}_probe_p99_us"), p.p99_us.into());
        put(&format!("{name}_probe_max_us"), p.max_us.into());
    }
    put("probe_realtime", psh.realtime.load(Ordering::Acquire).into());
    put("probe_samples_dropped", log.dropped.into());
    put("joins_answered", units.into());
    put("join_p50_ms", serde_json::json!(join_p50));
    put("join_p99_ms", serde_json::json!(join_p99));
    put("all_joined_ms", serde_json::json!(join_max));
    put("all_replays_done_ms", serde_json::json!(replays_max));
    put("all_answered_ms", serde_json::json!(all_max));
    put("storm_complete", (complete && unanswered == 0).into());
    put("replayed_messages", replayed.into());
    put("history_messages", history_msgs.into());
    put("not_recovered", not_recovered.into());
    put("loadavg_start", loadavg_start.into());
    put("loadavg_end", loadavg_end.into());
    if let Some(e) = &first_error {
        put("first_error", e.clone().into());
        eprintln!("first error: {e}");
    }
    let server_cpu_us = cpu_after.zip(cpu_before).map(|(a, b)| a - b);
    let loadgen_cpu_us = procfs::cpu_us(None, false).unwrap_or(0.0);
    let resources = Resources {
        server_cpu_us,
        // The window holds the probe's pings too: a figure per join would
        // mostly be theirs.
        server_cpu_us_per_unit: None,
        server_rss_before_bytes: None,
        server_rss_after_bytes: common.primary_pid().and_then(procfs::rss_bytes),
        loadgen_cpu_us,
        loadgen_cpu_us_per_unit: None,
        ..Resources::default()
    };
    let mut params = serde_json::to_value(a).unwrap_or_default();
    if let (Some(obj), Ok(serde_json::Value::Object(c))) = (params.as_object_mut(), serde_json::to_value(common)) {
        obj.extend(c);
    }
    let human = format!(
        "cold-rooms: {} cold rooms x {} messages, join since {}: probe round trip during the storm max {:.2} ms, \
         p99 {:.2} ms, p50 {:.3} ms (n={}); calm max {:.2} ms, p99 {:.2} ms, p50 {:.3} ms (n={}); all {} joins \
         answered in {:.1} ms, every answer in {:.1} ms; errors {}\n",
        a.rooms,
        a.messages,
        a.since(),
        ms(during.max_us),
        ms(during.p99_us),
        ms(during.p50_us),
        during.count,
        ms(calm.max_us),
        ms(calm.p99_us),
        ms(calm.p50_us),
        calm.count,
        units,
        join_max,
        all_max,
        violations.total(),
    );
    let result = RunResult {
        scenario: "cold-rooms".into(),
        label: common.label.clone(),
        url: common.primary_url().to_string(),
        params,
        unit: "join".into(),
        units,
        measured_s,
        units_per_s: if measured_s > 0.0 { units as f64 / measured_s } else { 0.0 },
        counts,
        latency: during,
        ack_latency: None,
        resources,
        violations,
        rss_per_connection_bytes: None,
    };
    Ok((result, human))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_sums_reactors_and_ignores_other_families() {
        let text = "# HELP roomcast_rooms_loaded Rooms.\n# TYPE roomcast_rooms_loaded gauge\n\
                    roomcast_rooms_loaded{reactor=\"0\"} 3\nroomcast_rooms_loaded{reactor=\"1\"} 4\n\
                    roomcast_rooms_loaded_total{reactor=\"0\"} 99\nroomcast_connections_open{reactor=\"0\"} 1\n";
        assert_eq!(gauge(text, "roomcast_rooms_loaded"), Some(7.0));
        assert_eq!(gauge("roomcast_rooms_loaded 0\n", "roomcast_rooms_loaded"), Some(0.0));
        assert_eq!(gauge("roomcast_connections_open 2\n", "roomcast_rooms_loaded"), None);
    }

    #[test]
    fn send_bodies_are_padded_json() {
        let s = send_frame("r", 2, 7, 100);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["op"], "send");
        assert_eq!(v["ref"], 2);
        assert_eq!(serde_json::to_string(&v["body"]).unwrap().len(), 100);
        // Shorter than the fixed part: no padding, still valid.
        let v: serde_json::Value = serde_json::from_str(&send_frame("r", 1, 1, 0)).unwrap();
        assert_eq!(v["body"]["p"], "");
    }

    #[test]
    fn history_pages_are_counted_and_expected() {
        let page = br#"{"op":"history","ref":3,"room":"r","messages":[{"room":"r","seq":1,"ts":1,"from":"u","body":{}},{"room":"r","seq":2,"ts":1,"from":"u","body":{}}],"more":false}"#;
        assert_eq!(count_seqs(page), 2);
        assert!(contains(br#"{"op":"joined","ref":1,"room":"r","seq":2,"recovered":true}"#, b"\"recovered\":true"));
        assert!(!contains(br#"{"op":"joined","seq":2,"recovered":false}"#, b"\"recovered\":true"));
        let mut a = ColdArgs {
            rooms: 1,
            messages: 200,
            body_bytes: 100,
            since: None,
            before: None,
            history_limit: 100,
            prep_window: 32,
            cold_wait: Duration::from_secs(1),
            calm: Duration::from_secs(1),
            after: Duration::from_secs(1),
            storm_timeout: Duration::from_secs(1),
            no_realtime: true,
        };
        assert_eq!((a.since(), a.before(), a.history_expected()), (100, 100, 99));
        a.history_limit = 50;
        assert_eq!(a.history_expected(), 50);
        a.since = Some(201);
        assert!(a.check().is_err());
    }

    #[test]
    fn windows_take_overlapping_round_trips() {
        // (sent, rtt): one before the storm, one spanning its start, one inside, one after.
        let samples = [(10, 5), (95, 10), (120, 30), (300, 1)];
        let during = window(&samples, |sent, recv| recv >= 100 && sent < 200);
        assert_eq!(during.count, 2);
        let calm = window(&samples, |_, recv| recv < 100);
        assert_eq!(calm.count, 1);
    }
}
