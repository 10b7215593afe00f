//! The attacks: each opens its connections from its own loopback source
//! addresses (never 127.0.0.1, which the healthy clients use), misbehaves in
//! one way with a bounded number of connections for a bounded time, and then
//! closes every connection it holds.
//!
//! One mio loop runs an attack. A connection's behaviour ([`Beh`]) decides
//! what it writes (an upgrade, a partial head, one byte at a time, a payload
//! once, a ring of frames flat out) and whether it ever reads again.
//! Connections that only sit there still notice the server closing them
//! (EPOLLRDHUP) without reading. Attackers that a real one would restart
//! (floods, garbage, held descriptors, slow members) are reopened when the
//! server drops them, at a bounded rate.
//!
//! Payloads are built once per attack and shared by every connection, so the
//! load generator spends its time in `write`, not in building bytes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use slab::Slab;

use crate::frame;
use crate::net::{self, Target, Upgrade};

/// One kind of hostile traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    Slowloris,
    HalfOpen,
    SilentUpgrades,
    Garbage,
    SlowConsumers,
    Descriptors,
    MessageFlood,
    FragmentFlood,
}

impl Attack {
    pub const ALL: [Attack; 8] = [
        Attack::Slowloris,
        Attack::HalfOpen,
        Attack::SilentUpgrades,
        Attack::Garbage,
        Attack::SlowConsumers,
        Attack::Descriptors,
        Attack::MessageFlood,
        Attack::FragmentFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Slowloris => "slowloris",
            Attack::HalfOpen => "half-open",
            Attack::SilentUpgrades => "silent-upgrades",
            Attack::Garbage => "garbage",
            Attack::SlowConsumers => "slow-consumers",
            Attack::Descriptors => "descriptors",
            Attack::MessageFlood => "message-flood",
            Attack::FragmentFlood => "fragment-flood",
        }
    }

    pub fn parse(s: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == s.trim())
    }

    /// Position in [`Attack::ALL`]: picks the attack's block of source addresses.
    pub fn index(self) -> usize {
        Attack::ALL.iter().position(|&a| a == self).unwrap_or(0)
    }

    /// What the attack does at `scale`, for the report.
    pub fn describe(self, scale: f64) -> String {
        let n = |base: usize| scaled(base, scale);
        match self {
            Attack::Slowloris => format!(
                "{} connections trickling an endless request head, one byte per {} ms each",
                n(SLOWLORIS_CONNS),
                TRICKLE_INTERVAL.as_millis()
            ),
            Attack::HalfOpen => format!(
                "{} connections that send nothing and {} that send a partial head, then go silent",
                n(HALF_OPEN_SILENT),
                n(HALF_OPEN_PARTIAL)
            ),
            Attack::SilentUpgrades => {
                format!("{} connections complete the WebSocket upgrade, then never read or write", n(SILENT_UPGRADES))
            }
            Attack::Garbage => format!(
                "{} connections at a time, each sending one of: 64 KiB of random bytes, 5,000 headers, \
                 a 1 MiB header value, a 1 MiB request line, a head of binary bytes, random bytes after \
                 an upgrade; reopened as the server drops them (at most {}/s)",
                n(GARBAGE_CONCURRENCY),
                n(REOPEN_RATE)
            ),
            Attack::SlowConsumers => format!(
                "{} members with 4 KiB receive buffers join a busy room (fed at {} msg/s of {} KiB by an \
                 attacker publisher) and the healthy clients' room, and never read",
                n(SLOW_MEMBERS),
                PUBLISH_RATE,
                PUBLISH_BODY / 1024
            ),
            Attack::Descriptors => format!(
                "up to {} connections from each of {} addresses opened as fast as possible and held; \
                 reopened when dropped (at most {}/s)",
                n(DESCRIPTORS_PER_SOURCE),
                DESCRIPTOR_SOURCES,
                n(REOPEN_RATE)
            ),
            Attack::MessageFlood => format!(
                "{} authenticated connections writing send, ping, presence, history, join/leave, unknown \
                 ops, bad JSON and binary frames as fast as the socket takes them",
                n(FLOODERS)
            ),
            Attack::FragmentFlood => format!(
                "{} connections writing endless empty and 1-byte continuation fragments with pings and \
                 pongs between them",
                n(FLOODERS)
            ),
        }
    }
}

const SLOWLORIS_CONNS: usize = 1000;
const TRICKLE_INTERVAL: Duration = Duration::from_millis(200);
const HALF_OPEN_SILENT: usize = 1000;
const HALF_OPEN_PARTIAL: usize = 500;
const SILENT_UPGRADES: usize = 1000;
const GARBAGE_CONCURRENCY: usize = 32;
const SLOW_MEMBERS: usize = 200;
const PUBLISH_RATE: u64 = 400;
const PUBLISH_BODY: usize = 16 * 1024;
const DESCRIPTOR_SOURCES: usize = 5;
const DESCRIPTORS_PER_SOURCE: usize = 3000;
const FLOODERS: usize = 16;
/// Reopened connections per second (all of an attack's together).
const REOPEN_RATE: usize = 1000;
/// A garbage connection the server has not dropped this long after its
/// payload went out is closed and replaced.
const GARBAGE_LINGER: Duration = Duration::from_secs(1);
/// Bytes written to one connection before others get a turn.
const WRITE_TURN: usize = 256 * 1024;
/// Distinct answers kept in [`Stats::answers`]; the rest count as "other".
const MAX_ANSWER_KINDS: usize = 48;

/// `base` times `scale`, at least 1.
pub fn scaled(base: usize, scale: f64) -> usize {
    ((base as f64 * scale).round() as usize).max(1)
}

/// What an attack needs from the coordinator.
pub struct Setup {
    pub target: Target,
    /// The attack's own source addresses.
    pub sources: Vec<Ipv4Addr>,
    /// An authenticated upgrade request for the attacker's connections.
    pub upgrade: Vec<u8>,
    pub healthy_room: String,
    /// Prefix for the attacker's own rooms.
    pub tag: String,
    pub scale: f64,
    pub duration: Duration,
    /// Most connections open at once (the load generator's descriptor budget).
    pub max_open: usize,
}

/// What an attack did and what the server answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Connects issued (first opens and reopens).
    pub connections: u64,
    pub connect_failed: u64,
    pub upgraded: u64,
    pub closed_by_server: u64,
    pub reopened: u64,
    pub peak_open: u64,
    pub open_at_end: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// What the server answered, counted: `http 431`, `close 1009`,
    /// `error rate_limited`, `closed without answer`, `reset`, ...
    pub answers: BTreeMap<String, u64>,
    pub first_error: Option<String>,
}

impl Stats {
    fn answer(&mut self, what: String) {
        let key = if self.answers.len() < MAX_ANSWER_KINDS || self.answers.contains_key(&what) {
            what
        } else {
            "other".to_string()
        };
        *self.answers.entry(key).or_insert(0) += 1;
    }
}

/// What a connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beh {
    /// Connects and sends nothing (reads only to notice the end).
    Hold,
    /// Writes the start of a request head once, then nothing.
    Partial,
    /// Writes an endless request head one byte at a time.
    Trickle,
    /// Upgrades, then never reads or writes.
    SilentUpgrade,
    /// Writes garbage variant N once and reads until dropped.
    Garbage(usize),
    /// Upgrades with a tiny receive buffer, joins, never reads.
    SlowMember,
    /// Upgrades and publishes into the busy room on a schedule.
    Publisher,
    /// Upgrades and writes a ring of op frames flat out.
    Flood,
    /// Upgrades and writes endless fragments flat out.
    Fragments,
}

impl Beh {
    fn upgrades(self) -> bool {
        matches!(
            self,
            Beh::SilentUpgrade
                | Beh::SlowMember
                | Beh::Publisher
                | Beh::Flood
                | Beh::Fragments
                | Beh::Garbage(WS_GARBAGE)
        )
    }
}

/// Garbage variants: 0..=4 are raw bytes on a fresh connection, the last
/// one is random bytes after a completed upgrade.
const RAW_GARBAGE: usize = 5;
const WS_GARBAGE: usize = RAW_GARBAGE;

#[derive(Debug, Clone, Copy)]
struct Spec {
    beh: Beh,
    source: Ipv4Addr,
    reopen: bool,
    rcvbuf: Option<usize>,
}

/// A byte source a connection writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Garbage(usize),
    Flood,
    Fragments,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    None,
    /// Written once from the start.
    Once(Src, usize),
    /// Written round and round (the source is whole frames).
    Ring(Src, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Connecting,
    Upgrading,
    Active,
}

struct Conn {
    sock: TcpStream,
    spec: Spec,
    st: St,
    gen: u64,
    pending: Vec<u8>,
    pending_pos: usize,
    stream: Stream,
    /// Keeps reading (and scanning answers) once active.
    reading: bool,
    ws: bool,
    answered: bool,
    head: Vec<u8>,
    scan: FrameScan,
    trickle_pos: usize,
    published: u64,
    started: u64,
    in_rerun: bool,
}

/// Payloads shared by an attack's connections.
struct Payloads {
    upgrade: Vec<u8>,
    partial: Vec<u8>,
    trickle: Vec<u8>,
    garbage: Vec<Vec<u8>>,
    flood: Vec<u8>,
    frag_open: Vec<u8>,
    frag_ring: Vec<u8>,
    joins: Vec<u8>,
    publish: Vec<u8>,
}

fn src(p: &Payloads, s: Src) -> &[u8] {
    match s {
        Src::Garbage(v) => p.garbage.get(v).map_or(&[][..], Vec::as_slice),
        Src::Flood => &p.flood,
        Src::Fragments => &p.frag_ring,
    }
}

const TRICKLE: u8 = 0;
const PUBLISH: u8 = 1;
const EXPIRE: u8 = 2;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The attack let it go.
    Planned,
    /// The server closed or reset it.
    ByServer,
    /// The connect failed.
    Failed,
    /// The upgrade was answered with something other than 101.
    Refused,
}

struct Engine<'a> {
    setup: &'a Setup,
    stop: &'a AtomicBool,
    poll: Poll,
    conns: Slab<Conn>,
    payloads: Payloads,
    initial: VecDeque<Spec>,
    reopen: VecDeque<Spec>,
    reopen_tokens: f64,
    reopen_rate: f64,
    last_refill: u64,
    timers: BinaryHeap<Reverse<(u64, usize, u64, u8)>>,
    rerun: Vec<usize>,
    rbuf: Vec<u8>,
    stats: Stats,
    accept: String,
    epoch: Instant,
    deadline: u64,
    pending: usize,
    setup_concurrency: usize,
    next_gen: u64,
    garbage_turn: usize,
    open_paused_until: u64,
}

/// Runs `attack` for `setup.duration` (or until `stop`), then closes every
/// connection it opened.
pub fn run(attack: Attack, setup: &Setup, stop: &AtomicBool) -> io::Result<Stats> {
    let (specs, setup_concurrency) = plan(attack, setup);
    let mut e = Engine {
        setup,
        stop,
        poll: Poll::new()?,
        conns: Slab::with_capacity(specs.len().min(setup.max_open)),
        payloads: payloads(setup),
        initial: specs.into(),
        reopen: VecDeque::new(),
        reopen_tokens: 0.0,
        reopen_rate: scaled(REOPEN_RATE, setup.scale) as f64,
        last_refill: 0,
        timers: BinaryHeap::new(),
        rerun: Vec::new(),
        rbuf: vec![0; 256 * 1024],
        stats: Stats::default(),
        accept: roomcast::proto::ws::accept_key(net::WS_KEY.as_bytes()),
        epoch: Instant::now(),
        deadline: setup.duration.as_nanos() as u64,
        pending: 0,
        setup_concurrency,
        next_gen: 0,
        garbage_turn: 0,
        open_paused_until: 0,
    };
    e.run()?;
    Ok(e.stats)
}

/// The connections of an attack, and how many may be setting up at once.
fn plan(attack: Attack, setup: &Setup) -> (Vec<Spec>, usize) {
    let n = |base: usize| scaled(base, setup.scale);
    let src =
        |i: usize| setup.sources.get(i % setup.sources.len().max(1)).copied().unwrap_or(Ipv4Addr::new(127, 0, 0, 2));
    let spec = |beh, i, reopen| Spec { beh, source: src(i), reopen, rcvbuf: None };
    let mut specs = Vec::new();
    let concurrency = match attack {
        Attack::Slowloris => {
            specs.extend((0..n(SLOWLORIS_CONNS)).map(|i| spec(Beh::Trickle, i % 4, true)));
            256
        }
        Attack::HalfOpen => {
            specs.extend((0..n(HALF_OPEN_SILENT)).map(|i| spec(Beh::Hold, i % 4, false)));
            specs.extend((0..n(HALF_OPEN_PARTIAL)).map(|i| spec(Beh::Partial, i % 4, false)));
            256
        }
        Attack::SilentUpgrades => {
            specs.extend((0..n(SILENT_UPGRADES)).map(|i| spec(Beh::SilentUpgrade, i % 4, false)));
            256
        }
        Attack::Garbage => {
            specs.extend((0..n(GARBAGE_CONCURRENCY)).map(|i| spec(Beh::Garbage(i % (RAW_GARBAGE + 1)), i % 4, true)));
            usize::MAX
        }
        Attack::SlowConsumers => {
            specs.push(spec(Beh::Publisher, 0, true));
            // Members are not reopened: one that never reads cannot see the
            // server close it (the FIN waits behind the data it did not take).
            specs.extend(
                (0..n(SLOW_MEMBERS)).map(|i| Spec { rcvbuf: Some(4096), ..spec(Beh::SlowMember, 1 + i % 2, false) }),
            );
            256
        }
        Attack::Descriptors => {
            let per = n(DESCRIPTORS_PER_SOURCE);
            // Interleave the addresses so each fills at the same pace.
            specs.extend((0..per * DESCRIPTOR_SOURCES).map(|i| spec(Beh::Hold, i % DESCRIPTOR_SOURCES, true)));
            1024
        }
        Attack::MessageFlood => {
            specs.extend((0..n(FLOODERS)).map(|i| spec(Beh::Flood, i % 2, true)));
            usize::MAX
        }
        Attack::FragmentFlood => {
            specs.extend((0..n(FLOODERS)).map(|i| spec(Beh::Fragments, i % 2, true)));
            usize::MAX
        }
    };
    specs.truncate(setup.max_open);
    (specs, concurrency)
}

/// xorshift64: cheap bytes that need not be secret, only varied.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Rng(u64::from_ne_bytes(b) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn payloads(setup: &Setup) -> Payloads {
    let host = &setup.target.host;
    let path = &setup.target.path;
    let mut rng = Rng::seeded();
    let mut trickle = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for i in 0..2000 {
        trickle.extend_from_slice(format!("X-Slow-{i}: a\r\n").as_bytes());
    }
    let partial = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConn").into_bytes();

    let mut header_count = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for i in 0..5000 {
        header_count.extend_from_slice(format!("X-Bomb-{i}: v\r\n").as_bytes());
    }
    header_count.extend_from_slice(b"\r\n");
    let mut huge_value = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Bomb: ").into_bytes();
    huge_value.resize(huge_value.len() + (1 << 20), b'a');
    huge_value.extend_from_slice(b"\r\n\r\n");
    let mut huge_line = b"GET /".to_vec();
    huge_line.resize(huge_line.len() + (1 << 20), b'a');
    huge_line.extend_from_slice(format!(" HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    // A head of odd bytes: NULs, lone CRs and LFs, colons, bytes past ASCII.
    let alphabet: &[u8] = b"\0\r\n:\t aZ\x7f\x80\xc3\xa9\xff\xfe";
    let mut binary_head = format!("GET {path} HTTP/1.1\r\n").into_bytes();
    for _ in 0..8192 {
        let b = if rng.next() % 3 == 0 { alphabet[(rng.next() as usize) % alphabet.len()] } else { rng.next() as u8 };
        binary_head.push(b);
    }
    binary_head.extend_from_slice(b"\r\n\r\n");
    let garbage = vec![rng.bytes(64 * 1024), header_count, huge_value, huge_line, binary_head, rng.bytes(64 * 1024)];

    let mask = [0x5a, 0x13, 0xc7, 0x2e];
    let text = |out: &mut Vec<u8>, s: &str| frame::write_masked(out, frame::OP_TEXT, s.as_bytes(), mask);
    let flood_room = format!("{}-flood", setup.tag);
    let flood_room2 = format!("{}-flood2", setup.tag);
    let mut flood = Vec::with_capacity(80 * 1024);
    while flood.len() < 64 * 1024 {
        for _ in 0..6 {
            text(
                &mut flood,
                &format!(r#"{{"op":"send","room":"{flood_room}","body":{{"x":"a flood of small messages"}}}}"#),
            );
        }
        text(&mut flood, r#"{"op":"ping","ref":1}"#);
        text(&mut flood, &format!(r#"{{"op":"presence","room":"{flood_room}"}}"#));
        text(&mut flood, &format!(r#"{{"op":"history","room":"{flood_room}","limit":50}}"#));
        text(&mut flood, &format!(r#"{{"op":"join","room":"{flood_room2}"}}"#));
        text(&mut flood, &format!(r#"{{"op":"leave","room":"{flood_room2}"}}"#));
        text(&mut flood, r#"{"op":"nope","ref":"x"}"#);
        text(&mut flood, r#"{"op":"#);
        frame::write_masked(&mut flood, frame::OP_BINARY, b"\x00\x01binary", mask);
    }

    // A text message that never ends: its first fragment, then a ring of
    // continuations (mostly empty, some one space long) with control frames
    // between them.
    let mut frag_open = Vec::new();
    write_frame(&mut frag_open, false, frame::OP_TEXT, b"{", mask);
    let mut frag_ring = Vec::with_capacity(70 * 1024);
    while frag_ring.len() < 64 * 1024 {
        for _ in 0..6 {
            write_frame(&mut frag_ring, false, frame::OP_CONT, b"", mask);
        }
        frame::write_masked(&mut frag_ring, frame::OP_PING, b"p", mask);
        write_frame(&mut frag_ring, false, frame::OP_CONT, b" ", mask);
        frame::write_masked(&mut frag_ring, frame::OP_PONG, b"", mask);
    }

    let busy = format!("{}-busy", setup.tag);
    let mut joins = Vec::new();
    text(&mut joins, &format!(r#"{{"op":"join","room":"{busy}"}}"#));
    text(&mut joins, &format!(r#"{{"op":"join","room":"{}"}}"#, setup.healthy_room));
    let mut body = format!(r#"{{"op":"send","room":"{busy}","body":{{"p":""#);
    body.extend(std::iter::repeat_n('x', PUBLISH_BODY));
    body.push_str("\"}}");
    let mut publish = Vec::new();
    text(&mut publish, &body);

    Payloads { upgrade: setup.upgrade.clone(), partial, trickle, garbage, flood, frag_open, frag_ring, joins, publish }
}

/// Appends one masked client frame with an explicit FIN bit (fragments).
fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    frame::write_masked(out, opcode, payload, mask);
    if !fin {
        if let Some(b0) = out.get_mut(start) {
            *b0 &= 0x7F;
        }
    }
}

/// Follows the server's frames across reads without keeping their payloads,
/// noting close codes and error codes.
#[derive(Default)]
struct FrameScan {
    hdr: [u8; 10],
    hdr_len: usize,
    in_payload: bool,
    remaining: u64,
    opcode: u8,
    keep: Vec<u8>,
}

/// Payload bytes kept for a text or close frame: enough for `"code"`.
const KEEP: usize = 200;

impl FrameScan {
    fn feed(&mut self, mut data: &[u8], stats: &mut Stats) {
        while !data.is_empty() {
            if !self.in_payload {
                let want = match self.hdr_len {
                    0 | 1 => 2,
                    _ => match self.hdr[1] & 0x7F {
                        126 => 4,
                        127 => 10,
                        _ => 2,
                    },
                };
                let take = (want - self.hdr_len).min(data.len());
                if let (Some(dst), Some(from)) = (self.hdr.get_mut(self.hdr_len..self.hdr_len + take), data.get(..take))
                {
                    dst.copy_from_slice(from);
                }
                self.hdr_len += take;
                data = data.get(take..).unwrap_or_default();
                if self.hdr_len < 2 {
                    continue;
                }
                let (size, len) = match self.hdr[1] & 0x7F {
                    126 => (4, u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]]))),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.hdr[2..10]);
                        (10, u64::from_be_bytes(b))
                    }
                    n => (2, u64::from(n)),
                };
                if self.hdr_len < size {
                    continue;
                }
                self.opcode = self.hdr[0] & 0x0F;
                self.remaining = len;
                self.hdr_len = 0;
                self.in_payload = true;
                self.keep.clear();
                if len == 0 {
                    self.end(stats);
                }
            } else {
                let take = self.remaining.min(data.len() as u64) as usize;
                if matches!(self.opcode, frame::OP_TEXT | frame::OP_CLOSE) && self.keep.len() < KEEP {
                    let room = (KEEP - self.keep.len()).min(take);
                    self.keep.extend_from_slice(data.get(..room).unwrap_or_default());
                }
                self.remaining -= take as u64;
                data = data.get(take..).unwrap_or_default();
                if self.remaining == 0 {
                    self.end(stats);
                }
            }
        }
    }

    fn end(&mut self, stats: &mut Stats) {
        self.in_payload = false;
        match self.opcode {
            frame::OP_CLOSE => {
                let code = self.keep.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                stats.answer(format!("close {code}"));
            }
            frame::OP_TEXT if self.keep.starts_with(b"{\"op\":\"error\"") => {
                let code = error_code(&self.keep).unwrap_or("?");
                stats.answer(format!("error {code}"));
            }
            _ => {}
        }
    }
}

/// The `code` of an error message (codes are plain lowercase words).
fn error_code(json: &[u8]) -> Option<&str> {
    let needle = b"\"code\":\"";
    let at = json.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let rest = json.get(at..)?;
    let end = rest.iter().position(|&b| !(b.is_ascii_lowercase() || b == b'_'))?;
    std::str::from_utf8(rest.get(..end)?).ok()
}

/// `http NNN` for a response starting `HTTP/1.x NNN`.
fn http_status(buf: &[u8]) -> String {
    match (buf.get(..5), buf.get(9..12)) {
        (Some(b"HTTP/"), Some(code)) if code.iter().all(u8::is_ascii_digit) => {
            format!("http {}", String::from_utf8_lossy(code))
        }
        _ => "answer not HTTP".to_string(),
    }
}

impl Engine<'_> {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = self.now();
            if now >= self.deadline || self.stop.load(Ordering::Acquire) {
                break;
            }
            self.open_more(now);
            self.fire_timers(now);
            let rerun = std::mem::take(&mut self.rerun);
            for &key in &rerun {
                if let Some(c) = self.conns.get_mut(key) {
                    c.in_rerun = false;
                }
                self.pump(key);
            }
            let mut timeout = Duration::from_millis(5).min(Duration::from_nanos(self.deadline.saturating_sub(now)));
            if let Some(Reverse((due, ..))) = self.timers.peek() {
                timeout = timeout.min(Duration::from_nanos(due.saturating_sub(now)));
            }
            let waiting =
                !self.initial.is_empty() && self.pending < self.setup_concurrency && now >= self.open_paused_until;
            if !self.rerun.is_empty() || waiting {
                timeout = Duration::ZERO;
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                let key = ev.token().0;
                if ev.is_writable() {
                    self.on_writable(key);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(key, ev.is_read_closed() || ev.is_error());
                }
            }
        }
        self.stats.open_at_end = self.conns.len() as u64;
        // Dropping the sockets closes them; the attack ends here.
        self.conns.clear();
        Ok(())
    }

    fn note_error(&mut self, e: String) {
        self.stats.first_error.get_or_insert(e);
    }

    /// Opens first connections while under the setup limit, and reopens
    /// dropped ones at the reopen rate.
    fn open_more(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_refill) as f64 / 1e9;
        self.last_refill = now;
        self.reopen_tokens = (self.reopen_tokens + dt * self.reopen_rate).min(self.reopen_rate.max(1.0));
        if now < self.open_paused_until {
            return;
        }
        while self.pending < self.setup_concurrency && self.conns.len() < self.setup.max_open {
            let spec = if let Some(s) = self.initial.pop_front() {
                s
            } else if self.reopen_tokens >= 1.0 {
                match self.reopen.pop_front() {
                    Some(s) => {
                        self.reopen_tokens -= 1.0;
                        self.stats.reopened += 1;
                        s
                    }
                    None => return,
                }
            } else {
                return;
            };
            if !self.open(spec, now) {
                return;
            }
        }
    }

    /// Starts one connection; false when opening should pause.
    fn open(&mut self, mut spec: Spec, now: u64) -> bool {
        if let Beh::Garbage(_) = spec.beh {
            // Each new garbage connection takes the next variant.
            spec.beh = Beh::Garbage(self.garbage_turn % (RAW_GARBAGE + 1));
            self.garbage_turn += 1;
        }
        self.stats.connections += 1;
        let mut sock = match net::connect_from(&self.setup.target, Some(spec.source), spec.rcvbuf) {
            Ok(s) => s,
            Err(e) => {
                self.stats.connect_failed += 1;
                self.note_error(format!("connect from {}: {e}", spec.source));
                // Out of descriptors or ports: wait a little, keep the spec.
                self.open_paused_until = now + 50_000_000;
                self.initial.push_front(spec);
                return false;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut sock, Token(key), Interest::READABLE | Interest::WRITABLE) {
            self.stats.connect_failed += 1;
            self.note_error(format!("register: {e}"));
            return false;
        }
        self.next_gen += 1;
        entry.insert(Conn {
            sock,
            spec,
            st: St::Connecting,
            gen: self.next_gen,
            pending: Vec::new(),
            pending_pos: 0,
            stream: Stream::None,
            reading: true,
            ws: false,
            answered: false,
            head: Vec::new(),
            scan: FrameScan::default(),
            trickle_pos: 0,
            published: 0,
            started: now,
            in_rerun: false,
        });
        self.pending += 1;
        self.stats.peak_open = self.stats.peak_open.max(self.conns.len() as u64);
        true
    }

    fn close(&mut self, key: usize, end: End) {
        let Some(c) = self.conns.try_remove(key) else {
            return;
        };
        if c.st != St::Active {
            self.pending = self.pending.saturating_sub(1);
        }
        match end {
            End::ByServer => {
                self.stats.closed_by_server += 1;
                if !c.answered && !c.ws && c.st == St::Active {
                    self.stats.answer("closed without answer".into());
                }
            }
            End::Failed => self.stats.connect_failed += 1,
            End::Planned | End::Refused => {}
        }
        if c.spec.reopen && self.now() < self.deadline {
            self.reopen.push_back(c.spec);
        }
    }

    fn timer(&mut self, due: u64, key: usize, action: u8) {
        if let Some(c) = self.conns.get(key) {
            self.timers.push(Reverse((due, key, c.gen, action)));
        }
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(&Reverse((due, key, gen, action))) = self.timers.peek() {
            if due > now {
                return;
            }
            self.timers.pop();
            if self.conns.get(key).is_none_or(|c| c.gen != gen) {
                continue;
            }
            match action {
                TRICKLE => self.trickle(key, now),
                PUBLISH => self.publish(key, now),
                _ => self.close(key, End::Planned),
            }
        }
    }

    fn trickle(&mut self, key: usize, now: u64) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let Some(byte) = self.payloads.trickle.get(c.trickle_pos..c.trickle_pos + 1) else {
            return;
        };
        match c.sock.write(byte) {
            Ok(n) => {
                c.trickle_pos += n;
                self.stats.bytes_out += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.close(key, End::ByServer);
                return;
            }
        }
        self.timer(now + TRICKLE_INTERVAL.as_nanos() as u64, key, TRICKLE);
    }

    fn publish(&mut self, key: usize, now: u64) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let due = now.saturating_sub(c.started) / (1_000_000_000 / PUBLISH_RATE) + 1;
        // A publisher that fell behind catches up in bounded steps.
        let n = due.saturating_sub(c.published).min(PUBLISH_RATE);
        if c.pending_pos == c.pending.len() {
            c.pending.clear();
            c.pending_pos = 0;
        }
        // Never queue without bound behind a server that stopped reading.
        if c.pending.len() < 1 << 20 {
            for _ in 0..n {
                c.pending.extend_from_slice(&self.payloads.publish);
            }
        }
        c.published += n;
        self.timer(now + 5_000_000, key, PUBLISH);
        self.pump(key);
    }

    /// Writes what `key` has to write until the socket is full or its turn is up.
    fn pump(&mut self, key: usize) {
        let mut budget = WRITE_TURN;
        let mut failed = false;
        let mut once_done = false;
        {
            let Engine { conns, payloads, stats, rerun, .. } = self;
            let Some(c) = conns.get_mut(key) else {
                return;
            };
            if c.st == St::Connecting {
                return;
            }
            while budget > 0 {
                let data: &[u8] = if c.pending_pos < c.pending.len() {
                    c.pending.get(c.pending_pos..).unwrap_or_default()
                } else {
                    match c.stream {
                        Stream::None => break,
                        Stream::Once(s, pos) => {
                            let d = src(payloads, s).get(pos..).unwrap_or_default();
                            if d.is_empty() {
                                c.stream = Stream::None;
                                once_done = true;
                                break;
                            }
                            d
                        }
                        Stream::Ring(s, pos) => {
                            let whole = src(payloads, s);
                            if whole.is_empty() {
                                break;
                            }
                            whole.get(pos..).unwrap_or_default()
                        }
                    }
                };
                let chunk = data.get(..data.len().min(budget)).unwrap_or_default();
                match c.sock.write(chunk) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => {
                        stats.bytes_out += n as u64;
                        budget -= n;
                        if c.pending_pos < c.pending.len() {
                            c.pending_pos += n;
                            if c.pending_pos == c.pending.len() {
                                c.pending.clear();
                                c.pending_pos = 0;
                            }
                        } else {
                            c.stream = match c.stream {
                                Stream::Once(s, pos) => Stream::Once(s, pos + n),
                                Stream::Ring(s, pos) => {
                                    let len = src(payloads, s).len();
                                    Stream::Ring(s, if pos + n >= len { 0 } else { pos + n })
                                }
                                Stream::None => Stream::None,
                            };
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if budget == 0 && !c.in_rerun {
                // More to write and no new edge will come: continue next turn.
                c.in_rerun = true;
                rerun.push(key);
            }
        }
        if failed {
            self.close(key, End::ByServer);
        } else if once_done {
            // The payload is out: give the server a moment to answer, then let go.
            let now = self.now();
            self.timer(now + GARBAGE_LINGER.as_nanos() as u64, key, EXPIRE);
        }
    }

    fn on_writable(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.st == St::Connecting {
            match c.sock.take_error() {
                Ok(Some(_)) | Err(_) => {
                    self.close(key, End::Failed);
                    return;
                }
                Ok(None) => {}
            }
            match c.sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.close(key, End::Failed);
                    return;
                }
            }
            self.on_connected(key);
        }
        self.pump(key);
    }

    fn on_connected(&mut self, key: usize) {
        let now = self.now();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let beh = c.spec.beh;
        if beh.upgrades() {
            c.st = St::Upgrading;
            c.pending.extend_from_slice(&self.payloads.upgrade);
            return;
        }
        c.st = St::Active;
        self.pending = self.pending.saturating_sub(1);
        match beh {
            Beh::Partial => c.pending.extend_from_slice(&self.payloads.partial),
            Beh::Trickle => self.timer(now, key, TRICKLE),
            Beh::Garbage(v) => c.stream = Stream::Once(Src::Garbage(v), 0),
            _ => {}
        }
    }

    fn on_upgraded(&mut self, key: usize) {
        let now = self.now();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.st = St::Active;
        c.ws = true;
        self.pending = self.pending.saturating_sub(1);
        self.stats.upgraded += 1;
        match c.spec.beh {
            Beh::SilentUpgrade => c.reading = false,
            Beh::SlowMember => {
                c.reading = false;
                c.pending.extend_from_slice(&self.payloads.joins);
            }
            Beh::Publisher => {
                c.started = now;
                self.timer(now, key, PUBLISH);
            }
            Beh::Flood => c.stream = Stream::Ring(Src::Flood, 0),
            Beh::Fragments => {
                c.pending.extend_from_slice(&self.payloads.frag_open);
                c.stream = Stream::Ring(Src::Fragments, 0);
            }
            Beh::Garbage(v) => c.stream = Stream::Once(Src::Garbage(v), 0),
            Beh::Hold | Beh::Partial | Beh::Trickle => {}
        }
        self.pump(key);
    }

    fn on_readable(&mut self, key: usize, closed: bool) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match c.st {
                St::Connecting => {
                    if let Ok(Some(_)) | Err(_) = c.sock.take_error() {
                        self.close(key, End::Failed);
                    }
                    return;
                }
                St::Active if !c.reading => {
                    // Never reads: only notices that the server let go.
                    if closed {
                        self.close(key, End::ByServer);
                    }
                    return;
                }
                _ => {}
            }
            let n = match c.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    self.close(key, End::ByServer);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !c.answered && !c.ws {
                        c.answered = true;
                        self.stats.answer(if e.kind() == io::ErrorKind::ConnectionReset {
                            "reset".into()
                        } else {
                            format!("read error {e}")
                        });
                    }
                    self.close(key, End::ByServer);
                    return;
                }
            };
            self.stats.bytes_in += n as u64;
            let data = self.rbuf.get(..n).unwrap_or_default();
            if c.st == St::Upgrading {
                if c.head.len() < 64 * 1024 {
                    c.head.extend_from_slice(data);
                }
                match net::parse_upgrade(&c.head, &self.accept) {
                    Upgrade::Partial => {}
                    Upgrade::Refused(status) => {
                        let what = if status.starts_with("HTTP/") {
                            http_status(status.as_bytes())
                        } else {
                            format!("upgrade refused: {status}")
                        };
                        self.stats.answer(what);
                        self.close(key, End::Refused);
                        return;
                    }
                    Upgrade::Done(off) => {
                        let rest = c.head.split_off(off.min(c.head.len()));
                        c.head = Vec::new();
                        c.scan.feed(&rest, &mut self.stats);
                        self.on_upgraded(key);
                    }
                }
            } else if c.ws {
                c.scan.feed(data, &mut self.stats);
            } else if !c.answered {
                c.answered = true;
                self.stats.answer(http_status(data));
            }
            if n < self.rbuf.len() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_close_and_error_codes_across_reads() {
        let mut stats = Stats::default();
        let mut scan = FrameScan::default();
        let mut bytes = roomcast::proto::ws::encode_frame(
            frame::OP_TEXT,
            br#"{"op":"error","ref":1,"code":"rate_limited","message":"x","retry_after_ms":5}"#,
        );
        bytes.extend(roomcast::proto::ws::encode_frame(frame::OP_TEXT, &vec![b'a'; 70_000]));
        bytes.extend(roomcast::proto::ws::encode_frame(frame::OP_CLOSE, &1009u16.to_be_bytes()));
        // Split at every awkward place: one byte at a time.
        for b in &bytes {
            scan.feed(std::slice::from_ref(b), &mut stats);
        }
        assert_eq!(stats.answers.get("error rate_limited"), Some(&1));
        assert_eq!(stats.answers.get("close 1009"), Some(&1));
        assert_eq!(stats.answers.len(), 2);
    }

    #[test]
    fn answers_are_bounded() {
        let mut stats = Stats::default();
        for i in 0..1000 {
            stats.answer(format!("http {i}"));
        }
        assert_eq!(stats.answers.len(), MAX_ANSWER_KINDS + 1);
        assert_eq!(stats.answers.get("other"), Some(&(1000 - MAX_ANSWER_KINDS as u64)));
        assert_eq!(http_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), "http 431");
        assert_eq!(http_status(b"\x00garbage"), "answer not HTTP");
    }

    #[test]
    fn fragment_ring_is_whole_frames_the_server_accepts() {
        let setup = Setup {
            target: net::parse_url("ws://127.0.0.1:1/v1/ws").unwrap(),
            sources: vec![Ipv4Addr::new(127, 0, 0, 2)],
            upgrade: Vec::new(),
            healthy_room: "h".into(),
            tag: "t".into(),
            scale: 1.0,
            duration: Duration::from_secs(1),
            max_open: 100,
        };
        let p = payloads(&setup);
        // The server's decoder takes the opener and many turns of the ring
        // as one unfinished message, answering only the pings.
        let mut dec = roomcast::proto::ws::Decoder::new(64 * 1024);
        let mut buf = p.frag_open.clone();
        for _ in 0..3 {
            buf.extend_from_slice(&p.frag_ring);
        }
        let mut pings = 0;
        let mut at = 0;
        while at < buf.len() {
            let mut rest = buf[at..].to_vec();
            let Some((used, ev)) = dec.decode(&mut rest).unwrap() else {
                break;
            };
            if let Some(roomcast::proto::ws::Event::Ping(_)) = ev {
                pings += 1;
            }
            assert!(!matches!(ev, Some(roomcast::proto::ws::Event::Text(_))));
            at += used;
        }
        assert_eq!(at, buf.len());
        assert!(pings > 100);
        // The flood ring is whole frames too (walked by their lengths:
        // client frames are masked, with 4 mask bytes after the length).
        let mut at = 0;
        while at < p.flood.len() {
            let (hdr, payload) = match p.flood[at + 1] & 0x7F {
                126 => (8, usize::from(u16::from_be_bytes([p.flood[at + 2], p.flood[at + 3]]))),
                n => (6, usize::from(n)),
            };
            at += hdr + payload;
        }
        assert_eq!(at, p.flood.len());
        assert_eq!(scaled(1000, 0.001), 1);
        assert_eq!(scaled(1000, 0.5), 500);
    }
}
