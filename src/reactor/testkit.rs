//! An in-memory harness around one real reactor, for tests and fuzzing.
//!
//! It owns a [`Reactor`] built exactly as `serve` builds one, minus the
//! sockets and the storage: connections are in-memory pipes
//! ([`MemPipe`]), the clock moves only when told ([`Harness::advance`]),
//! and with no store every publish counts as committed at once.
//! Each call runs what one loop iteration runs after readiness (mail,
//! timers, writes), so a test sees the same handlers and the same order a
//! socket would drive.
//!
//! Nothing in `serve` constructs this; it exists so the whole connection
//! path (HTTP head, routing, tokens, upgrade, frames, ops) can be driven
//! with arbitrary bytes split at arbitrary points.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics;
use crate::store::{spawn_writer, CommitSink, ReaderPool, Store, WriterConfig};

use super::conn::State;
use super::mail::{Inbox, Mail, Mailbox};
use super::timer::{later, Entry};
use super::transport::{MemPipe, Transport};
use super::{Reactor, ReactorParts, Shared};

/// The secret the harness signs and checks tokens with.
pub const SECRET: &[u8] = b"roomcast-testkit-secret-0123456789";

/// A connection of the harness: its slab key and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    key: u32,
    gen: u32,
}

pub struct Harness {
    reactor: Reactor,
    expired: Vec<Entry>,
}

/// Why a harness could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("poll: {0}")]
    Poll(#[from] std::io::Error),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Commit reports into the harness reactor's mailbox.
struct MailSink(Mailbox);

impl CommitSink for MailSink {
    fn committed(&self, _reactor: u16, n: usize, result: Result<(), String>) {
        let _ = self.0.tx.send(Mail::Committed(crate::rooms::core::Commit { n, result }, std::time::Instant::now()));
    }
}

impl Harness {
    /// One reactor with `config` (its listen address, data directory and
    /// thread count are ignored), no listeners and no storage.
    pub fn new(config: Config) -> Result<Harness, HarnessError> {
        Harness::build(config, None, None)
    }

    fn build(config: Config, store: Option<Store>, readers: Option<ReaderPool>) -> Result<Harness, HarnessError> {
        let auth = Auth::from_secret(SECRET, config.jwt_audience.as_deref(), config.jwt_issuer.as_deref())?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0))?);
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let sleeping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            auth,
            metrics: vec![metrics::Shared::default()],
            mailboxes: vec![Mailbox { tx, waker, sleeping: sleeping.clone() }],
            draining: AtomicBool::new(false),
            fatal: std::sync::Mutex::new(None),
            is_fatal: AtomicBool::new(false),
            quiet: vec![AtomicBool::new(false)],
            live: crate::reload::Live::new(crate::reload::Settings::new(config.clone(), None)),
            reloader: crate::reload::Reloader::new(Vec::new()),
            store,
            readers,
            auth_pool: None,
            origins: super::browser::Origins::Own,
            limits: super::limits::Limits::new(&config),
            reaper: None,
            cluster: None,
            bus: None,
            config,
        });
        let parts = ReactorParts { id: 0, poll, inbox: Inbox { rx, sleeping }, listeners: Vec::new(), writer: None };
        let mut reactor = Reactor::new(parts, shared)?;
        reactor.coalesce = false;
        Ok(Harness { reactor, expired: Vec::new() })
    }

    /// Like [`Harness::new`], with a real store in `data`: a store-writer
    /// thread and history readers as `serve` runs them. Commits then arrive
    /// by mail; [`Harness::settle`] waits for them.
    pub fn with_store(config: Config, data: &Path) -> Result<Harness, HarnessError> {
        let store = Store::open(data)?;
        let readers = ReaderPool::new(store.clone(), 1)?;
        let mut h = Harness::build(config, Some(store.clone()), Some(readers))?;
        let (tx, rx) = crate::wait::bounded(1024);
        let cfg = WriterConfig {
            durable: false,
            retain_messages: h.reactor.shared.config.retain_messages,
            retain_age: h.reactor.shared.config.retain_age,
            max_batch: 8192,
        };
        let sink = Box::new(MailSink(h.reactor.shared.mailboxes[0].clone()));
        spawn_writer(store, rx, cfg, sink)?;
        h.reactor.writer = Some(tx);
        Ok(h)
    }

    /// Handles mail from the store-writer and the readers until publishes
    /// are all answered and no mail came for a short while (10 s at most).
    pub fn settle(&mut self) {
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut quiet_since = Instant::now();
        while Instant::now() < give_up {
            match self.reactor.inbox.rx.recv_timeout(Duration::from_millis(5)) {
                Ok(m) => {
                    self.reactor.route_mail(m);
                    self.iterate();
                    quiet_since = Instant::now();
                }
                Err(_) if self.reactor.core.is_quiet() && quiet_since.elapsed() > Duration::from_millis(50) => break,
                Err(_) => {}
            }
        }
        self.iterate();
    }

    /// The store under a harness made by [`Harness::with_store`].
    pub fn store(&self) -> Option<&Store> {
        self.reactor.shared.store.as_ref()
    }

    /// A token for `sub`, valid for an hour, signed with [`SECRET`].
    pub fn token(&self, sub: &str) -> String {
        self.reactor.shared.auth.mint(sub, Duration::from_secs(3600), None).unwrap_or_default()
    }

    /// A new connection, as if just accepted; its socket takes any amount.
    pub fn connect(&mut self) -> ConnId {
        let pipe = MemPipe { write_room: usize::MAX, ..MemPipe::default() };
        let key = self.reactor.insert_conn(Transport::Mem(Box::new(pipe)));
        let gen = self.reactor.conns.get(key as usize).map_or(0, |c| c.gen);
        self.iterate();
        ConnId { key, gen }
    }

    /// A connection of `user` that has upgraded and joined `room`, with
    /// everything it was sent so far taken.
    pub fn member(&mut self, user: &str, room: &str) -> ConnId {
        let c = self.connect();
        let t = self.token(user);
        self.input(c, &upgrade_request(&t));
        let room = serde_json::Value::from(room);
        self.input(c, &client_frame(true, 1, format!(r#"{{"op":"join","room":{room}}}"#).as_bytes()));
        self.discard_output(c);
        c
    }

    fn pipe(&mut self, c: ConnId) -> Option<&mut MemPipe> {
        let conn = self.reactor.conns.get_mut(c.key as usize).filter(|conn| conn.gen == c.gen)?;
        match &mut conn.transport {
            Transport::Mem(p) => Some(p),
            _ => None,
        }
    }

    /// Bytes arrive from the peer; the reactor reads them as on a readable edge.
    pub fn input(&mut self, c: ConnId, bytes: &[u8]) {
        let Some(pipe) = self.pipe(c) else { return };
        if pipe.eof {
            return;
        }
        pipe.input.extend(bytes);
        self.reactor.on_readable(c.key, false);
        self.iterate();
    }

    /// The peer closes its sending side.
    pub fn peer_close(&mut self, c: ConnId) {
        let Some(pipe) = self.pipe(c) else { return };
        pipe.eof = true;
        self.reactor.on_readable(c.key, true);
        self.iterate();
    }

    /// How many more bytes the connection's socket takes before a write
    /// blocks (`usize::MAX`: any amount). More room raises a writable edge.
    pub fn set_write_room(&mut self, c: ConnId, n: usize) {
        let Some(pipe) = self.pipe(c) else { return };
        let grew = n > pipe.write_room;
        pipe.write_room = n;
        if grew {
            // More room is a writable edge.
            if let Some(conn) = self.reactor.conns.get_mut(c.key as usize) {
                conn.write_blocked = false;
            }
            self.reactor.queue_flush(c.key);
            self.iterate();
        }
    }

    /// What the reactor wrote to this peer since the last call, including
    /// what it wrote just before closing it.
    pub fn take_output(&mut self, c: ConnId) -> Vec<u8> {
        if let Some(p) = self.pipe(c) {
            return std::mem::take(&mut p.output);
        }
        let closed = &mut self.reactor.mem_closed;
        match closed.iter().position(|(k, g, _)| *k == c.key && *g == c.gen) {
            Some(i) => closed.swap_remove(i).2,
            None => Vec::new(),
        }
    }

    /// Forgets what the reactor wrote to this peer, keeping the buffer's
    /// capacity: a peer that reads and drops everything (for counting what
    /// the reactor itself allocates).
    pub fn discard_output(&mut self, c: ConnId) {
        if let Some(p) = self.pipe(c) {
            p.output.clear();
        }
    }

    /// Moves the clock forward by `d`, then runs an iteration (timers fire).
    pub fn advance(&mut self, d: Duration) {
        self.reactor.now = later(self.reactor.now, d);
        self.iterate();
    }

    /// Starts the drain a SIGTERM starts, and runs an iteration.
    pub fn start_drain(&mut self) {
        self.reactor.shared.start_drain();
        self.iterate();
    }

    pub fn is_open(&self, c: ConnId) -> bool {
        self.reactor.conns.get(c.key as usize).is_some_and(|conn| conn.gen == c.gen)
    }

    pub fn open_conns(&self) -> usize {
        self.reactor.conns.len()
    }

    /// Connections open, rooms loaded, publishes pending, local room memberships.
    pub fn census(&self) -> (usize, usize, usize, usize) {
        (self.reactor.conns.len(), self.reactor.core.len(), self.reactor.core.pending(), self.reactor.local.len())
    }

    /// What must hold between any two calls, whatever the peers sent.
    pub fn check_invariants(&self) -> Result<(), String> {
        let r = &self.reactor;
        let cfg = &r.shared.config;
        // The output budget: a connection's queue is bounded by its cap plus
        // what one reply may add past the high-water mark.
        let out_bound = cfg.max_queue_bytes + super::OUT_SLACK;
        for (key, conn) in r.conns.iter() {
            if conn.out.len() > out_bound {
                return Err(format!("conn {key}: {} bytes queued, bound {out_bound}", conn.out.len()));
            }
            let in_bound = super::transport::READ_BUDGET + super::SCRATCH + cfg.max_message_bytes + (64 << 10);
            if conn.rbuf.len() > in_bound {
                return Err(format!("conn {key}: {} bytes buffered in, bound {in_bound}", conn.rbuf.len()));
            }
            if let State::Ws(ws) = &conn.state {
                if ws.rooms.len() > super::ws::MAX_ROOMS_PER_CONN {
                    return Err(format!("conn {key}: in {} rooms", ws.rooms.len()));
                }
                for (room, slot) in &ws.rooms {
                    let slot = match slot {
                        super::conn::Slot::Listed(i) => Some(*i),
                        super::conn::Slot::Joining { .. } => None,
                    };
                    let members = r.local.members(room);
                    let listed = members.contains(&(key as u32));
                    let at_slot = slot.is_some_and(|i| members.get(i as usize) == Some(&(key as u32)));
                    if listed != slot.is_some() || (listed && !at_slot) {
                        return Err(format!("conn {key}: room {room}: slot {slot:?}, listed {listed}"));
                    }
                }
            }
        }
        for (room, key) in r.local.iter() {
            let member = r.conns.get(key as usize).is_some_and(|c| match &c.state {
                State::Ws(ws) => {
                    ws.rooms.iter().any(|(n, slot)| matches!(slot, super::conn::Slot::Listed(_)) && n == room)
                }
                _ => false,
            });
            if !member {
                return Err(format!("room {room}: lists conn {key}, which is not a confirmed member"));
            }
        }
        Ok(())
    }

    /// One loop iteration after readiness, as `Reactor::run` does it.
    /// Like `run`, it goes round again at once while work is left over
    /// that no readiness edge will bring back (budget-limited readers,
    /// resumed connections, mail backlog).
    fn iterate(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        for _ in 0..10_000 {
            self.reactor.after_events(&mut expired);
            if self.reactor.rerun.is_empty() && !self.reactor.mail_backlog && self.reactor.flush_again.is_empty() {
                break;
            }
        }
        self.expired = expired;
    }
}

/// A masked WebSocket frame from a client (`fin`, `opcode`, `payload`),
/// with a fixed mask: what a harness peer sends after the upgrade.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The upgrade request a harness peer sends to `/v1/ws` with `token`.
pub fn upgrade_request(token: &str) -> Vec<u8> {
    format!(
        "GET /v1/ws?access_token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Server frames parsed from `bytes` (unmasked, as the server sends them):
/// `(opcode, payload)` each, and how many bytes were whole frames.
pub fn server_frames(bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &bytes[pos..];
        if rest.len() < 2 {
            break;
        }
        let op = rest[0] & 0x0f;
        let (len, hdr): (usize, usize) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX), 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        let Some(end) = hdr.checked_add(len).filter(|e| *e <= rest.len()) else { break };
        out.push((op, rest[hdr..end].to_vec()));
        pos += end;
    }
    (out, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(h: &mut Harness, c: ConnId) -> String {
        String::from_utf8_lossy(&h.take_output(c)).into_owned()
    }

    /// The text payloads of every whole server frame in `bytes`.
    fn texts(bytes: &[u8]) -> Vec<String> {
        server_frames(bytes).0.into_iter().map(|(_, p)| String::from_utf8_lossy(&p).into_owned()).collect()
    }

    fn ws(h: &mut Harness, user: &str) -> ConnId {
        let c = h.connect();
        let t = h.token(user);
        h.input(c, &upgrade_request(&t));
        let head = text(h, c);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c
    }

    fn op(h: &mut Harness, c: ConnId, json: &str) {
        h.input(c, &client_frame(true, 1, json.as_bytes()));
    }

    #[test]
    fn http_and_websocket_round_trip() {
        let mut h = Harness::new(Config::default()).unwrap();
        let c = h.connect();
        h.input(c, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text(&mut h, c).starts_with("HTTP/1.1 200"));
        let a = ws(&mut h, "ann");
        let b = ws(&mut h, "bo");
        op(&mut h, a, r#"{"op":"join","room":"r","ref":1}"#);
        op(&mut h, b, r#"{"op":"join","room":"r","ref":2}"#);
        op(&mut h, a, r#"{"op":"send","room":"r","body":"hi","ref":3}"#);
        let got = texts(&h.take_output(b));
        assert!(got.iter().any(|f| f.contains(r#""op":"msg""#) && f.contains(r#""body":"hi""#)), "{got:?}");
        h.check_invariants().unwrap();
        h.peer_close(a);
        h.peer_close(b);
        h.advance(Duration::from_secs(5));
        assert_eq!(h.open_conns(), 1);
        h.check_invariants().unwrap();
    }

    /// Regression: a non-ASCII `Authorization` header panicked the reactor
    /// (a `&str` slice inside a UTF-8 character).
    #[test]
    fn non_ascii_authorization_is_refused_not_a_panic() {
        let mut h = Harness::new(Config::default()).unwrap();
        for path in ["/v1/rooms/x/messages", "/v1/ws", "/v1/admin/backup"] {
            for value in [&b"bearer\xC3\xA9"[..], b"Bearer", b"b\xC3\xA9arer xyz", &[0xff; 300]] {
                let c = h.connect();
                let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: ").into_bytes();
                req.extend_from_slice(value);
                req.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
                h.input(c, &req);
                let out = text(&mut h, c);
                assert!(out.starts_with("HTTP/1.1 401") || out.starts_with("HTTP/1.1 405"), "{path}: {out}");
            }
        }
        h.check_invariants().unwrap();
    }

    fn frames_with(h: &mut Harness, c: ConnId, what: &str) -> Vec<String> {
        texts(&h.take_output(c)).into_iter().filter(|f| f.contains(what)).collect()
    }

    /// A failed commit answers `internal` and leaves no trace: the id is not
    /// remembered, seqs stay contiguous, later publishes work, and members
    /// never see the unstored messages.
    #[test]
    fn failed_commit_leaves_no_trace() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let mut h = Harness::with_store(Config::default(), dir.path()).unwrap();
        let a = ws(&mut h, "ann");
        let m = ws(&mut h, "member");
        op(&mut h, m, r#"{"op":"join","room":"r"}"#);
        op(&mut h, a, r#"{"op":"send","room":"r","body":1,"id":"x1","ref":1}"#);
        h.settle();
        assert!(frames_with(&mut h, a, r#""op":"ack""#)[0].contains(r#""seq":1"#));
        // Two publishes and a duplicate of the first go to the writer before
        // the failure is known: all three fail.
        h.store().unwrap().fail_commits.store(1, Ordering::SeqCst);
        let mut burst = client_frame(true, 1, br#"{"op":"send","room":"r","body":2,"id":"x2","ref":2}"#);
        burst.extend(client_frame(true, 1, br#"{"op":"send","room":"r","body":3,"id":"x3","ref":3}"#));
        burst.extend(client_frame(true, 1, br#"{"op":"send","room":"r","body":2,"id":"x2","ref":4}"#));
        h.input(a, &burst);
        h.settle();
        let out = texts(&h.take_output(a));
        let errors: Vec<&String> = out.iter().filter(|f| f.contains(r#""code":"internal""#)).collect();
        assert_eq!(errors.len(), 3, "{out:?}");
        assert!(!out.iter().any(|f| f.contains(r#""op":"ack""#)), "{out:?}");
        // Retries publish anew, at the seqs that were taken back.
        op(&mut h, a, r#"{"op":"send","room":"r","body":2,"id":"x2","ref":5}"#);
        op(&mut h, a, r#"{"op":"send","room":"r","body":3,"id":"x3","ref":6}"#);
        h.settle();
        let acks = frames_with(&mut h, a, r#""op":"ack""#);
        assert_eq!(acks.len(), 2, "{acks:?}");
        assert!(acks[0].contains(r#""seq":2"#) && acks[1].contains(r#""seq":3"#), "{acks:?}");
        // The member saw 1, 2, 3 once each, with the retried bodies.
        let msgs = frames_with(&mut h, m, r#""op":"msg""#);
        let seqs: Vec<bool> = (1..=3).map(|i| msgs[i - 1].contains(&format!(r#""seq":{i},"#))).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(seqs.iter().all(|ok| *ok), "{msgs:?}");
        // And storage holds exactly 1, 2, 3.
        let (stored, _) = h.store().unwrap().page("r", None, None, 10, true).unwrap();
        assert_eq!(stored.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(stored[1].body, b"2");
        h.check_invariants().unwrap();
    }

    fn queued(h: &Harness, c: ConnId) -> usize {
        h.reactor.conns.get(c.key as usize).map_or(0, |conn| conn.out.len())
    }

    /// Regression: answers to a peer that never reads were queued without
    /// bound (60 history pages of 1000 messages grew RSS by 134 MiB).
    #[test]
    fn history_answers_wait_for_a_reader_that_does_not_read() {
        let cfg = Config { send_rate: 0.0, request_rate: 0.0, ..Config::default() };
        let mut h = Harness::new(cfg).unwrap();
        let a = ws(&mut h, "ann");
        let body = format!(r#""{}""#, "x".repeat(1000));
        let mut burst = Vec::new();
        for _ in 0..1000 {
            burst.extend(client_frame(true, 1, format!(r#"{{"op":"send","room":"big","body":{body}}}"#).as_bytes()));
        }
        h.input(a, &burst);
        h.take_output(a);
        let r = ws(&mut h, "reader");
        h.set_write_room(r, 0);
        let mut asks = Vec::new();
        for i in 0..60 {
            asks.extend(client_frame(
                true,
                1,
                format!(r#"{{"op":"history","room":"big","limit":1000,"ref":{i}}}"#).as_bytes(),
            ));
        }
        h.input(r, &asks);
        let bound = 64 * 1024 + 512 * 1024 + 64 * 1024;
        assert!(queued(&h, r) <= bound, "{} queued", queued(&h, r));
        h.check_invariants().unwrap();
        // Once it reads, it gets all 60 pages, in order.
        let mut got = Vec::new();
        for _ in 0..1000 {
            h.set_write_room(r, 256 * 1024);
            got.extend(h.take_output(r));
            h.set_write_room(r, 0);
            assert!(queued(&h, r) <= bound);
        }
        h.set_write_room(r, usize::MAX);
        got.extend(h.take_output(r));
        let pages = texts(&got);
        assert_eq!(pages.len(), 60, "{} pages", pages.len());
        for (i, p) in pages.iter().enumerate() {
            assert!(p.contains(&format!(r#""ref":{i},"#)), "page {i}");
            assert!(p.contains(r#""more":true"#), "page {i} was cut: more");
        }
        h.check_invariants().unwrap();
    }

    /// Regression: 4,000 pipelined `GET /` from a peer that never read grew
    /// RSS by 52 MiB; pongs to unread pings grew too.
    #[test]
    fn pipelined_requests_and_pings_are_parsed_only_as_answers_drain() {
        let mut h = Harness::new(Config { request_rate: 0.0, ..Config::default() }).unwrap();
        let c = h.connect();
        h.set_write_room(c, 0);
        let reqs = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4000);
        h.input(c, &reqs);
        assert!(queued(&h, c) <= 64 * 1024 + 64 * 1024, "{} queued", queued(&h, c));
        h.check_invariants().unwrap();
        let mut got = Vec::new();
        for _ in 0..100_000 {
            if !h.is_open(c)
                || !got.is_empty()
                    && queued(&h, c) == 0
                    && String::from_utf8_lossy(&got).matches("HTTP/1.1 200").count() == 4000
            {
                break;
            }
            h.set_write_room(c, 1 << 20);
            got.extend(h.take_output(c));
        }
        assert_eq!(String::from_utf8_lossy(&got).matches("HTTP/1.1 200").count(), 4000);

        let p = ws(&mut h, "pinger");
        h.set_write_room(p, 0);
        let pings = client_frame(true, 9, b"0123456789").repeat(20_000);
        h.input(p, &pings);
        assert!(queued(&h, p) <= 64 * 1024 + 64, "{} queued", queued(&h, p));
        h.check_invariants().unwrap();
        h.set_write_room(p, usize::MAX);
        let (frames, _) = server_frames(&h.take_output(p));
        assert_eq!(frames.iter().filter(|(op, _)| *op == 10).count(), 20_000);
    }

    /// Thousands of members of one room that never read: each is closed
    /// with 4000 once past its cap, and closing them does not nest a call
    /// per member (it overflowed the stack), on a reactor-sized stack.
    #[test]
    fn thousands_of_slow_members_are_closed_without_nesting() {
        let run = || {
            let cfg = Config {
                send_rate: 0.0,
                request_rate: 0.0,
                max_queue_bytes: 64 * 1024,
                max_message_bytes: 16 * 1024,
                ..Config::default()
            };
            let mut h = Harness::new(cfg).unwrap();
            let members: Vec<ConnId> = (0..3000)
                .map(|i| {
                    let m = ws(&mut h, &format!("m{i}"));
                    op(&mut h, m, r#"{"op":"join","room":"busy"}"#);
                    h.take_output(m);
                    h.set_write_room(m, 0);
                    m
                })
                .collect();
            let p = ws(&mut h, "pub");
            let body = format!(r#""{}""#, "x".repeat(8000));
            let send = client_frame(true, 1, format!(r#"{{"op":"send","room":"busy","body":{body}}}"#).as_bytes());
            for _ in 0..12 {
                h.input(p, &send);
                h.take_output(p);
                h.check_invariants().unwrap();
            }
            h.advance(Duration::from_secs(5));
            let open = members.iter().filter(|m| h.is_open(**m)).count();
            assert_eq!(open, 0, "every slow member is closed");
            assert_eq!(h.reactor.counters.closed[crate::metrics::CloseReason::SlowConsumer as usize], 3000);
            h.check_invariants().unwrap();
        };
        // Reactor threads run on the default 2 MiB stack.
        std::thread::Builder::new().stack_size(2 << 20).spawn(run).unwrap().join().unwrap();
    }

    /// Regression: a validly signed token with a huge `exp` panicked the
    /// upgrade (`Instant + Duration` overflow).
    #[test]
    fn huge_token_expiry_is_no_panic() {
        let mut h = Harness::new(Config::default()).unwrap();
        let t = h.reactor.shared.auth.mint("ann", Duration::from_secs(u64::MAX), None).unwrap();
        let c = h.connect();
        h.input(c, &upgrade_request(&t));
        assert!(text(&mut h, c).starts_with("HTTP/1.1 101"));
        op(&mut h, c, r#"{"op":"ping","ref":1}"#);
        assert!(texts(&h.take_output(c)).iter().any(|f| f.contains("pong")));
        h.advance(Duration::from_secs(30));
        h.check_invariants().unwrap();
    }
}
