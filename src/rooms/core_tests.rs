//! The room core against a model: random interleavings of joins (with and
//! without `since`), leaves, disconnects, publishes with and without client
//! ids, commits and failed commits, storage reads served late, out of order
//! or failing, mail delivered late, time passing, retention pruning storage
//! and rooms forgotten. The
//! driver plays storage (with store-writer's contiguity rule), the reader
//! pool and the member reactors' FIFO mailboxes, and checks what every
//! member and asker sees.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::value::RawValue;

use super::*;
use crate::store::StoredMsg;

const REACTORS: usize = 2;
const CONNS: usize = 4;
const ROOMS: [&str; 2] = ["a", "b"];
const WINDOW_MS: u64 = 1_000;
const RETAIN: usize = 6;
const RETAIN_AGE_MS: u64 = 30_000;

/// `(room, user, id)`, as storage's dedup table keys it.
type DedupKey = (RoomName, UserId, Box<str>);

/// An asker: the connection and its request number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ask {
    conn: usize,
    req: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Join {
        c: usize,
        room: usize,
        back: Option<u8>,
    },
    Leave {
        c: usize,
        room: usize,
    },
    Disconnect {
        c: usize,
    },
    Publish {
        c: usize,
        room: usize,
        id: Option<u8>,
    },
    History {
        c: usize,
        room: usize,
        back: u8,
        limit: u8,
        forward: bool,
    },
    Presence {
        c: usize,
        room: usize,
    },
    /// Store-writer commits the next `n` appends; `ok: false` fails the batch.
    Commit {
        n: u8,
        ok: bool,
    },
    /// A reader serves outstanding read `i`; `fail` 1: busy, 2: error.
    Serve {
        i: u8,
        fail: u8,
    },
    /// Reactor `r` handles `n` mails.
    Mail {
        r: u8,
        n: u8,
    },
    Advance {
        ms: u16,
    },
    Tick,
    /// Storage's retention runs: each room keeps its newest `RETAIN`
    /// messages, none older than `RETAIN_AGE_MS`.
    Prune,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CONNS;
    let room = 0..ROOMS.len();
    prop_oneof![
        3 => (c.clone(), room.clone(), proptest::option::of(0u8..12)).prop_map(|(c, room, back)| Op::Join { c, room, back }),
        1 => (c.clone(), room.clone()).prop_map(|(c, room)| Op::Leave { c, room }),
        1 => c.clone().prop_map(|c| Op::Disconnect { c }),
        6 => (c.clone(), room.clone(), proptest::option::of(0u8..4)).prop_map(|(c, room, id)| Op::Publish { c, room, id }),
        1 => (c.clone(), room.clone(), 0u8..12, 1u8..6, any::<bool>())
            .prop_map(|(c, room, back, limit, forward)| Op::History { c, room, back, limit, forward }),
        1 => (c.clone(), room.clone()).prop_map(|(c, room)| Op::Presence { c, room }),
        4 => (1u8..4, prop_oneof![6 => Just(true), 1 => Just(false)]).prop_map(|(n, ok)| Op::Commit { n, ok }),
        3 => (any::<u8>(), prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)]).prop_map(|(i, fail)| Op::Serve { i, fail }),
        5 => (0u8..REACTORS as u8, 1u8..6).prop_map(|(r, n)| Op::Mail { r, n }),
        1 => (0u16..1500).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Tick),
        1 => Just(Op::Prune),
    ]
}

enum ToMember {
    Deliver { room: RoomName, frame: Bytes },
    Reply { to: Ask, reply: Reply },
}

enum Mem {
    /// The join with request number `req` waits for its answer.
    Pending {
        since: Option<u64>,
        req: u64,
    },
    Member {
        next: u64,
    },
}

struct ConnM {
    user: UserId,
    rooms: HashMap<RoomName, Mem>,
}

#[derive(Debug, Clone)]
struct Req {
    room: RoomName,
    user: UserId,
    kind: Asked,
    /// For a publish: its body and client id.
    body: Option<String>,
    id: Option<Box<str>>,
}

struct World {
    core: Core<Ask>,
    now: u64,
    conns: Vec<ConnM>,
    /// What storage holds now (retention prunes it) ...
    stored: HashMap<RoomName, BTreeMap<u64, StoredMsg>>,
    /// ... and everything it ever stored: what is visible must be in here,
    /// and a room's head (seqs are never reused) comes from it.
    ever: HashMap<RoomName, BTreeMap<u64, StoredMsg>>,
    /// `(room, user, id)` → `(seq, ts, expires)`, as storage's dedup table.
    dedup: HashMap<DedupKey, (u64, u64, u64)>,
    appends: VecDeque<crate::store::Record>,
    reads: Vec<Read<Ask>>,
    mail: Vec<VecDeque<ToMember>>,
    open: HashMap<u64, Req>,
    next_req: u64,
    next_body: u64,
    /// Requests the core must not see yet: none (the member→owner path is
    /// modelled as immediate, which is one of the orders a channel allows).
    out: Vec<Effect<Ask>>,
}

fn settings() -> RoomSettings {
    RoomSettings {
        tail: 4,
        max_replay: 8,
        dedup_window: Duration::from_millis(WINDOW_MS),
        retain_messages: Some(RETAIN as u64),
        retain_age: Some(Duration::from_millis(RETAIN_AGE_MS)),
    }
}

/// The JSON of a WebSocket text frame (the server's frames are unmasked).
fn frame_json(f: &Bytes) -> serde_json::Value {
    let len = f.get(1).copied().unwrap_or(0) & 0x7f;
    let start = match len {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(f.get(start..).unwrap_or_default()).expect("frame is JSON")
}

impl World {
    fn new() -> World {
        World {
            core: Core::new(settings(), REACTORS, true, 1 << 20),
            now: 1_000_000,
            conns: (0..CONNS)
                .map(|c| ConnM { user: UserId::from(format!("u{}", c % 3)), rooms: HashMap::new() })
                .collect(),
            stored: HashMap::new(),
            ever: HashMap::new(),
            dedup: HashMap::new(),
            appends: VecDeque::new(),
            reads: Vec::new(),
            mail: (0..REACTORS).map(|_| VecDeque::new()).collect(),
            open: HashMap::new(),
            next_req: 0,
            next_body: 0,
            out: Vec::new(),
        }
    }

    fn reactor_of(c: usize) -> usize {
        c % REACTORS
    }

    fn head(&self, room: &str) -> u64 {
        self.ever.get(room).and_then(|m| m.keys().next_back().copied()).unwrap_or(0)
    }

    fn feed(&mut self, input: Input<Ask>) -> Result<(), String> {
        let mut out = std::mem::take(&mut self.out);
        self.core.handle(input, self.now, &mut out);
        for e in out.drain(..) {
            match e {
                Effect::Append(r) => self.appends.push_back(r),
                Effect::Deliver { reactor, room, frame, .. } => {
                    self.mail[reactor].push_back(ToMember::Deliver { room, frame });
                }
                Effect::Reply { to, reply } => {
                    let r = World::reactor_of(to.conn);
                    self.mail[r].push_back(ToMember::Reply { to, reply });
                }
                Effect::Read(r) => self.reads.push(r),
                Effect::Tap { .. } => {}
                Effect::Forget(room) => {
                    if room.presence().count() > 0 {
                        return Err(format!("room {} forgotten with members", room.name));
                    }
                }
            }
        }
        self.out = out;
        Ok(())
    }

    fn ask(&mut self, c: usize, room: &RoomName, kind: Asked) -> Ask {
        self.next_req += 1;
        let user = self.conns[c].user.clone();
        self.open.insert(self.next_req, Req { room: room.clone(), user, kind, body: None, id: None });
        Ask { conn: c, req: self.next_req }
    }

    fn step(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Join { c, room, back } => {
                let room = RoomName::from(ROOMS[room]);
                match self.conns[c].rooms.get(&room) {
                    Some(Mem::Pending { .. }) => return Ok(()),
                    Some(Mem::Member { .. }) => {
                        // Joining again: counted once; its answer is not read
                        // (it replays what the member asked for again).
                        let asker = self.ask(c, &room, Asked::Join);
                        let user = self.conns[c].user.clone();
                        let since = back.map(|b| self.head(&room).saturating_sub(u64::from(b)));
                        let j = Join { room, user, reactor: World::reactor_of(c), member: c as u64, since, asker };
                        return self.feed(Input::Command(Command::Join(j)));
                    }
                    None => {}
                }
                let since = back.map(|b| self.head(&room).saturating_sub(u64::from(b)));
                let asker = self.ask(c, &room, Asked::Join);
                self.conns[c].rooms.insert(room.clone(), Mem::Pending { since, req: asker.req });
                let user = self.conns[c].user.clone();
                let j = Join { room, user, reactor: World::reactor_of(c), member: c as u64, since, asker };
                self.feed(Input::Command(Command::Join(j)))?;
            }
            Op::Leave { c, room } => self.leave(c, &RoomName::from(ROOMS[room]))?,
            Op::Disconnect { c } => {
                let rooms: Vec<RoomName> = self.conns[c].rooms.keys().cloned().collect();
                for r in rooms {
                    self.leave(c, &r)?;
                }
            }
            Op::Publish { c, room, id } => {
                let room = RoomName::from(ROOMS[room]);
                self.next_body += 1;
                let body = format!("{{\"n\":{}}}", self.next_body);
                let id: Option<Box<str>> = id.map(|i| Box::from(format!("m{i}").as_str()));
                let asker = self.ask(c, &room, Asked::Publish);
                if let Some(r) = self.open.get_mut(&asker.req) {
                    r.body = Some(body.clone());
                    r.id = id.clone();
                }
                let user = self.conns[c].user.clone();
                let body = RawValue::from_string(body).map_err(|e| e.to_string())?;
                self.feed(Input::Command(Command::Publish(Publish { room, user, body, id, asker })))?;
            }
            Op::History { c, room, back, limit, forward } => {
                let room = RoomName::from(ROOMS[room]);
                let at = self.head(&room).saturating_sub(u64::from(back));
                let (before, after) = if forward { (None, Some(at)) } else { (Some(at + 1), None) };
                let asker = self.ask(c, &room, Asked::History);
                let h = History { room, before, after, limit: usize::from(limit), asker };
                self.feed(Input::Command(Command::History(h)))?;
            }
            Op::Presence { c, room } => {
                let room = RoomName::from(ROOMS[room]);
                let asker = self.ask(c, &room, Asked::Presence);
                self.feed(Input::Command(Command::Presence(Presence { room, asker })))?;
            }
            Op::Commit { n, ok } => self.commit(usize::from(n), ok)?,
            Op::Serve { i, fail } => {
                if !self.reads.is_empty() {
                    let r = self.reads.remove(usize::from(i) % self.reads.len());
                    self.serve(r, fail)?;
                }
            }
            Op::Mail { r, n } => {
                for _ in 0..n {
                    self.member_mail(usize::from(r))?;
                }
            }
            Op::Advance { ms } => self.now += u64::from(ms),
            Op::Tick => self.feed(Input::Tick { idle_ms: 0, max: 16 })?,
            Op::Prune => {
                let cutoff = self.now.saturating_sub(RETAIN_AGE_MS);
                for msgs in self.stored.values_mut() {
                    while msgs.len() > RETAIN {
                        msgs.pop_first();
                    }
                    msgs.retain(|_, m| m.ts >= cutoff);
                }
            }
        }
        Ok(())
    }

    fn leave(&mut self, c: usize, room: &RoomName) -> Result<(), String> {
        if self.conns[c].rooms.remove(room).is_none() {
            return Ok(());
        }
        let user = self.conns[c].user.clone();
        let l = Leave { room: room.clone(), user, reactor: World::reactor_of(c), member: c as u64 };
        self.feed(Input::Command(Command::Leave(l)))
    }

    /// Store-writer's rules: a record is stored only if it follows its
    /// room's stored head; reports are runs of equal outcome.
    fn commit(&mut self, n: usize, ok: bool) -> Result<(), String> {
        let mut runs: Vec<(usize, bool)> = Vec::new();
        let mut next: HashMap<RoomName, u64> = HashMap::new();
        for _ in 0..n {
            let Some(rec) = self.appends.pop_front() else { break };
            let head = *next.entry(rec.room.clone()).or_insert_with(|| self.head(&rec.room));
            let fits = ok && rec.seq == head + 1;
            if fits {
                next.insert(rec.room.clone(), rec.seq);
                if let Some(id) = &rec.id {
                    let key = (rec.room.clone(), rec.from.clone(), id.clone());
                    if let Some((seq, _, exp)) = self.dedup.get(&key) {
                        if *exp > self.now {
                            return Err(format!("id {id} stored twice in {} (seqs {seq} and {})", rec.room, rec.seq));
                        }
                    }
                    self.dedup.insert(key, (rec.seq, rec.ts, rec.dedup_until_ms));
                }
                let body = String::from_utf8(rec.body.to_vec()).map_err(|e| e.to_string())?;
                let m = StoredMsg {
                    seq: rec.seq,
                    ts: rec.ts,
                    from: rec.from.to_string(),
                    id: rec.id.as_deref().map(str::to_string),
                    body: body.into_bytes(),
                };
                self.stored.entry(rec.room.clone()).or_default().insert(rec.seq, m.clone());
                self.ever.entry(rec.room.clone()).or_default().insert(rec.seq, m);
            }
            match runs.last_mut() {
                Some((k, o)) if *o == fits => *k += 1,
                _ => runs.push((1, fits)),
            }
        }
        for (k, fits) in runs {
            let result = if fits { Ok(()) } else { Err("injected".to_string()) };
            self.feed(Input::Committed(Commit { n: k, result }))?;
        }
        Ok(())
    }

    fn range(&self, room: &str, lo: u64, hi: u64) -> Vec<StoredMsg> {
        self.stored.get(room).map(|m| m.range(lo..hi).map(|(_, v)| v.clone()).collect()).unwrap_or_default()
    }

    fn serve(&mut self, r: Read<Ask>, fail: u8) -> Result<(), String> {
        let err = match fail {
            1 => Some(ReadError::Busy),
            2 => Some(ReadError::Failed("injected".into())),
            _ => None,
        };
        let (room, ticket, result) = match r {
            Read::Page { room, after, before, limit, oldest_first, asker } => {
                let lo = after.map_or(0, |a| a + 1);
                let hi = before.unwrap_or(u64::MAX);
                let all = self.range(&room, lo, hi);
                let page = if err.is_some() {
                    Err("injected".to_string())
                } else if oldest_first {
                    Ok((all.iter().take(limit).cloned().collect(), all.len() > limit))
                } else {
                    let skip = all.len().saturating_sub(limit);
                    Ok((all[skip..].to_vec(), skip > 0))
                };
                let reply = page_reply(&room, page, oldest_first, 1 << 20);
                self.mail[World::reactor_of(asker.conn)].push_back(ToMember::Reply { to: asker, reply });
                return Ok(());
            }
            Read::Head { room, ticket } => {
                let head = self.head(&room);
                let ts = self.ever.get(&room).and_then(|m| m.get(&head)).map_or(0, |m| m.ts);
                (room, ticket, ReadResult::Head { seq: head, ts })
            }
            Read::Dedup { room, keys, ticket } => {
                let found = keys
                    .into_iter()
                    .map(|(user, id)| {
                        self.dedup
                            .get(&(room.clone(), user, id))
                            .filter(|(_, _, exp)| *exp > self.now)
                            .map(|(s, t, _)| (*s, *t))
                    })
                    .collect();
                (room, ticket, ReadResult::Dedup(found))
            }
            Read::Replay { room, after, upto, max, ticket, .. } => {
                let all = self.range(&room, after + 1, upto + 1);
                let cut = all.len() > max;
                let msgs: Vec<StoredMsg> = all.into_iter().take(max).collect();
                let frames = replay_frames(&room, &msgs);
                (room, ticket, ReadResult::Replay { frames, cut })
            }
        };
        let result = match err {
            Some(e) => Err(e),
            None => Ok(result),
        };
        self.feed(Input::ReadDone(ReadDone { room, ticket, result }))
    }

    /// A delivered `msg` must be stored, exactly as sent, and be the next
    /// seq the member expects.
    fn receive(&self, room: &str, next: &mut u64, frame: &Bytes, c: usize) -> Result<(), String> {
        let v = frame_json(frame);
        if v["op"] != "msg" {
            return Ok(());
        }
        let seq = v["seq"].as_u64().ok_or("msg without seq")?;
        if seq != *next {
            return Err(format!("conn {c} in {room}: got seq {seq}, expected {next}"));
        }
        let stored = self.ever.get(room).and_then(|m| m.get(&seq)).ok_or(format!("seq {seq} of {room} not stored"))?;
        let body: serde_json::Value = serde_json::from_slice(&stored.body).map_err(|e| e.to_string())?;
        if v["body"] != body || v["from"] != stored.from.as_str() || v["ts"] != stored.ts {
            return Err(format!("seq {seq} of {room} delivered as {v}, stored differently"));
        }
        *next += 1;
        Ok(())
    }

    fn member_mail(&mut self, r: usize) -> Result<(), String> {
        let Some(m) = self.mail[r].pop_front() else { return Ok(()) };
        match m {
            ToMember::Deliver { room, frame } => {
                for c in (0..CONNS).filter(|c| World::reactor_of(*c) == r) {
                    let mut next = match self.conns[c].rooms.get(&room) {
                        Some(Mem::Member { next }) => *next,
                        _ => continue,
                    };
                    self.receive(&room, &mut next, &frame, c)?;
                    self.conns[c].rooms.insert(room.clone(), Mem::Member { next });
                }
            }
            ToMember::Reply { to, reply } => {
                let req = self.open.remove(&to.req).ok_or(format!("request {} answered twice", to.req))?;
                self.check_reply(to.conn, to.req, &req, reply)?;
            }
        }
        Ok(())
    }

    fn check_reply(&mut self, c: usize, n: u64, req: &Req, reply: Reply) -> Result<(), String> {
        match reply {
            Reply::Joined { room, last, recovered, replay } => {
                if req.kind != Asked::Join {
                    return Err("joined for a request that is no join".into());
                }
                // Only the answer to the join still waiting lists the member;
                // one made before a leave is not read.
                let since = match self.conns[c].rooms.get(&room) {
                    Some(Mem::Pending { since, req }) if *req == n => since,
                    _ => return Ok(()),
                };
                let mut next = match (*since, recovered) {
                    (Some(s), Some(true)) => s + 1,
                    _ => last + 1,
                };
                if last > self.head(&room) {
                    return Err(format!("joined reports {last}, stored head {}", self.head(&room)));
                }
                for f in &replay {
                    self.receive(&room, &mut next, f, c)?;
                }
                self.conns[c].rooms.insert(room, Mem::Member { next });
            }
            Reply::Ack { room, seq, id, .. } => {
                if req.kind != Asked::Publish || room != req.room {
                    return Err("ack for a request that is no publish".into());
                }
                let stored = self
                    .ever
                    .get(&room)
                    .and_then(|m| m.get(&seq))
                    .ok_or(format!("ack of seq {seq} in {room}, not stored"))?;
                let same_body = req.body.as_deref().map(str::as_bytes) == Some(stored.body.as_slice());
                let original =
                    req.id.is_some() && stored.id.as_deref() == req.id.as_deref() && *stored.from == *req.user;
                if !same_body && !original {
                    return Err(format!("ack of seq {seq} in {room} points at another message"));
                }
                if id != req.id {
                    return Err("ack carries another id".into());
                }
            }
            Reply::History { room, page, .. } => {
                let mut prev = None;
                for m in &page {
                    let v = frame_json(&m.frame);
                    let seq = v["seq"].as_u64().ok_or("history item without seq")?;
                    if prev.is_some_and(|p| seq <= p) {
                        return Err("history page out of order".into());
                    }
                    prev = Some(seq);
                    if !self.ever.get(&room).is_some_and(|s| s.contains_key(&seq)) {
                        return Err(format!("history shows seq {seq} of {room}, not stored"));
                    }
                }
            }
            Reply::Presence { .. } => {}
            Reply::Refused { to, room, .. } => {
                if to != req.kind || room != req.room {
                    return Err("refusal for another request".into());
                }
                if to == Asked::Join {
                    if let Some(Mem::Pending { req, .. }) = self.conns[c].rooms.get(&room) {
                        if *req == n {
                            self.conns[c].rooms.remove(&room);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything in flight completes: reads served, appends committed,
    /// mail handled. Then every member has everything stored in its room,
    /// and every request was answered.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            if let Some(r) = self.reads.pop() {
                self.serve(r, 0)?;
            } else if !self.appends.is_empty() {
                self.commit(self.appends.len(), true)?;
            } else if let Some(r) = (0..REACTORS).find(|r| !self.mail[*r].is_empty()) {
                self.member_mail(r)?;
            } else {
                break;
            }
        }
        if !self.core.is_quiet() {
            return Err("core still waits after everything settled".into());
        }
        if let Some((n, r)) = self.open.iter().next() {
            return Err(format!("request {n} ({:?}) never answered", r.kind));
        }
        // The owner counts exactly the members the members think they are.
        for name in ROOMS {
            let mut users: Vec<&str> =
                self.conns.iter().filter(|c| c.rooms.contains_key(name)).map(|c| &*c.user).collect();
            users.sort_unstable();
            users.dedup();
            let mut held: Vec<&str> =
                self.core.room(name).map(|r| r.presence().map(|m| m.user).collect()).unwrap_or_default();
            held.sort_unstable();
            if users != held {
                return Err(format!("room {name}: members {users:?}, the owner's presence {held:?}"));
            }
        }
        for (c, conn) in self.conns.iter().enumerate() {
            for (room, m) in &conn.rooms {
                match m {
                    Mem::Pending { .. } => return Err(format!("conn {c} still joining {room}")),
                    Mem::Member { next } if *next != self.head(room) + 1 => {
                        return Err(format!("conn {c} in {room} is at {next}, head {}", self.head(room)));
                    }
                    Mem::Member { .. } => {}
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn every_member_sees_every_stored_message_once_in_order(ops in proptest::collection::vec(op(), 1..160)) {
        let mut w = World::new();
        for op in ops {
            let what = format!("{op:?}");
            w.step(op).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
        }
        w.settle().map_err(TestCaseError::fail)?;
    }
}

#[test]
fn a_cold_room_queues_what_arrives_while_it_loads() {
    let mut w = World::new();
    // A stored history of 5, the room not held.
    for seq in 1..=5 {
        let m = StoredMsg { seq, ts: seq, from: "u0".into(), id: None, body: b"1".to_vec() };
        w.stored.entry(RoomName::from("a")).or_default().insert(seq, m.clone());
        w.ever.entry(RoomName::from("a")).or_default().insert(seq, m);
    }
    w.step(Op::Join { c: 0, room: 0, back: Some(2) }).unwrap();
    w.step(Op::Publish { c: 1, room: 0, id: None }).unwrap();
    assert_eq!(w.reads.len(), 1, "one head read, nothing else until it is back");
    assert!(w.appends.is_empty(), "the publish waits for the head");
    let r = w.reads.pop().unwrap();
    w.serve(r, 0).unwrap();
    // The join's replay (seqs 4 and 5) is older than the tail of a room
    // just loaded: read too, and the publish waits behind it.
    assert!(matches!(w.reads.as_slice(), [Read::Replay { after: 3, upto: 5, .. }]));
    assert!(w.appends.is_empty());
    let r = w.reads.pop().unwrap();
    w.serve(r, 0).unwrap();
    assert_eq!(w.appends.len(), 1);
    assert_eq!(w.appends[0].seq, 6, "seqs follow the stored head");
    w.settle().unwrap();
    assert_eq!(w.head("a"), 6);
}

#[test]
fn a_replay_from_storage_gets_what_commits_while_it_is_read() {
    let mut w = World::new();
    for seq in 1..=20 {
        let m = StoredMsg { seq, ts: seq, from: "u0".into(), id: None, body: b"1".to_vec() };
        w.stored.entry(RoomName::from("a")).or_default().insert(seq, m.clone());
        w.ever.entry(RoomName::from("a")).or_default().insert(seq, m);
    }
    w.step(Op::Publish { c: 1, room: 0, id: None }).unwrap();
    let r = w.reads.pop().unwrap();
    w.serve(r, 0).unwrap();
    // Seq 21 appended, not committed; a join asks for 16.. (older than the tail).
    w.step(Op::Join { c: 0, room: 0, back: Some(4) }).unwrap();
    let replay = w.reads.pop().unwrap();
    assert!(matches!(replay, Read::Replay { after: 16, upto: 20, .. }));
    w.step(Op::Commit { n: 1, ok: true }).unwrap();
    w.serve(replay, 0).unwrap();
    w.settle().unwrap();
    match w.conns[0].rooms.get("a") {
        Some(Mem::Member { next }) => assert_eq!(*next, 22),
        _ => panic!("not a member"),
    }
}

#[test]
fn a_duplicate_after_a_reload_is_found_in_storage() {
    let mut w = World::new();
    w.step(Op::Publish { c: 0, room: 0, id: Some(1) }).unwrap();
    w.settle().unwrap();
    w.step(Op::Tick).unwrap();
    assert_eq!(w.core.len(), 0, "an idle room is forgotten");
    w.step(Op::Publish { c: 0, room: 0, id: Some(1) }).unwrap();
    let head = w.reads.pop().unwrap();
    w.serve(head, 0).unwrap();
    assert!(matches!(w.reads.last(), Some(Read::Dedup { .. })), "the id is looked up in storage");
    w.settle().unwrap();
    assert_eq!(w.head("a"), 1, "the duplicate was not stored again");
}

#[test]
fn dedup_lookups_of_queued_publishes_share_one_read() {
    let mut w = World::new();
    for seq in 1..=2 {
        let m = StoredMsg { seq, ts: w.now, from: "u0".into(), id: None, body: b"1".to_vec() };
        w.stored.entry(RoomName::from("a")).or_default().insert(seq, m.clone());
        w.ever.entry(RoomName::from("a")).or_default().insert(seq, m);
    }
    for id in 1..=3 {
        w.step(Op::Publish { c: 0, room: 0, id: Some(id) }).unwrap();
    }
    let head = w.reads.pop().unwrap();
    w.serve(head, 0).unwrap();
    match w.reads.as_slice() {
        [Read::Dedup { keys, .. }] => assert_eq!(keys.len(), 3, "one read for the three ids"),
        other => panic!("expected one dedup read, got {}", other.len()),
    }
    let dedup = w.reads.pop().unwrap();
    w.serve(dedup, 0).unwrap();
    assert!(w.reads.is_empty(), "no second lookup");
    w.settle().unwrap();
    assert_eq!(w.head("a"), 5);
}
