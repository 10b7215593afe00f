//! The owner core: every rule of the rooms one owner holds, as a state
//! machine with no I/O. Commands go in (join, leave, publish, history,
//! presence, a commit report, a finished storage read, a tick); effects come
//! out (append this record, deliver this shared frame to that reactor's
//! members, answer that asker, read this from storage, forget this room).
//! It has no sockets, no mail types and no clock: the time comes in with
//! every call, and an asker is an opaque reply address (`A`) that is only
//! cloned and handed back, so a remote node is just another kind of asker.
//!
//! Ordering hazards, all kept here:
//! - A message is visible (tail, delivery, ack) only once its commit is
//!   reported. Commits are reported in the order the appends were made, so
//!   `pending` is a FIFO completed from the front. A duplicate's ack waits
//!   behind everything queued before it, so it never overtakes its
//!   original's commit.
//! - A failed commit takes its seq back, and with it every reservation of
//!   that room queued behind it (storage refuses those: they no longer
//!   follow on); none of their ids stays remembered.
//! - A room waiting on storage (its head loading, a dedup lookup, a replay
//!   read) queues every command for it in arrival order and runs them when
//!   the read is back. Commits keep completing meanwhile; those of a room
//!   whose joiner waits for a replay are added to that joiner's answer,
//!   because it is not yet a member where they are delivered.
//! - The answer to a join goes out after every delivery of a seq at or below
//!   what it reports and before any later one (effects are in order, and the
//!   caller keeps them in order per destination): that is what lets the
//!   replay and the live stream meet without a gap or a duplicate.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{MemberId, OwnedRoom, Replay, Reserved, RoomName, RoomSettings, UserId};
use crate::proto::msg::{self, MsgFrame};
use crate::store::{Record, StoredMsg};

/// Commands one room may have queued while it waits on storage, and the
/// bytes of message bodies among them; past either the asker is told
/// `overloaded`.
pub const MAX_QUEUED: usize = 1024;
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
/// Publishes one core may have waiting for their commit; past it new ones
/// are refused (`overloaded`) until commits catch up.
pub const MAX_PENDING: usize = 64 * 1024;
/// Client ids looked up in storage by one read at most.
pub const DEDUP_KEYS_PER_READ: usize = 256;

/// A connection joins a room (or joins again: `again`, counted once).
#[derive(Debug, Clone)]
pub struct Join<A> {
    pub room: RoomName,
    pub user: UserId,
    /// The reactor where the member lives: deliveries go there.
    pub reactor: usize,
    /// The member connection; a connection joining again counts once.
    pub member: MemberId,
    pub since: Option<u64>,
    pub asker: A,
}

/// A member left (or its connection closed); no answer.
#[derive(Debug, Clone)]
pub struct Leave {
    pub room: RoomName,
    pub user: UserId,
    pub reactor: usize,
    pub member: MemberId,
}

#[derive(Debug, Clone)]
pub struct Publish<A> {
    pub room: RoomName,
    pub user: UserId,
    pub body: Box<RawValue>,
    pub id: Option<Box<str>>,
    pub asker: A,
}

#[derive(Debug, Clone)]
pub struct History<A> {
    pub room: RoomName,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: usize,
    pub asker: A,
}

#[derive(Debug, Clone)]
pub struct Presence<A> {
    pub room: RoomName,
    pub asker: A,
}

/// What askers and members ask of a room.
#[derive(Debug, Clone)]
pub enum Command<A> {
    Join(Join<A>),
    Leave(Leave),
    Publish(Publish<A>),
    History(History<A>),
    Presence(Presence<A>),
}

impl<A> Command<A> {
    pub fn room(&self) -> &RoomName {
        match self {
            Command::Join(j) => &j.room,
            Command::Leave(l) => &l.room,
            Command::Publish(p) => &p.room,
            Command::History(h) => &h.room,
            Command::Presence(p) => &p.room,
        }
    }
}

/// Storage committed (or failed) the next `n` appends this core made.
#[derive(Debug, Clone)]
pub struct Commit {
    pub n: usize,
    pub result: Result<(), String>,
}

/// A read from storage the caller must make. `Head`, `Dedup` and `Replay`
/// come back to the core as [`ReadDone`] with their ticket; `Page` is
/// answered straight to its asker (see [`page_reply`]).
#[derive(Debug, Clone)]
pub enum Read<A> {
    /// The room's last stored seq and its ts.
    Head { room: RoomName, ticket: u64 },
    /// The original `(seq, ts)` of each client id within its dedup window
    /// (the ids of one publish and of those queued behind it, in one read).
    Dedup { room: RoomName, keys: Vec<(UserId, Box<str>)>, ticket: u64 },
    /// Stored messages `after < seq <= upto`, oldest first, at most `max`
    /// of them and about `budget` bytes.
    Replay { room: RoomName, after: u64, upto: u64, max: usize, budget: usize, ticket: u64 },
    /// A history page older than the tail.
    Page { room: RoomName, after: Option<u64>, before: Option<u64>, limit: usize, oldest_first: bool, asker: A },
}

#[derive(Debug, Clone)]
pub enum ReadResult {
    Head {
        seq: u64,
        ts: u64,
    },
    /// One answer per key of the read, in its order.
    Dedup(Vec<Option<(u64, u64)>>),
    /// The messages as `msg` frames, encoded where they were read (see
    /// [`replay_frames`]); `cut`: the read stopped early (its byte budget,
    /// or more were there).
    Replay {
        frames: Vec<Bytes>,
        cut: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ReadDone {
    pub room: RoomName,
    pub ticket: u64,
    /// `Err`: why it could not be read (`busy`: the readers' queue was full).
    pub result: Result<ReadResult, ReadError>,
}

#[derive(Debug, Clone)]
pub enum ReadError {
    /// The readers were too busy to take it: the asker may retry.
    Busy,
    Failed(String),
}

pub enum Input<A> {
    Command(Command<A>),
    Committed(Commit),
    ReadDone(ReadDone),
    /// Housekeeping: forget up to `max` rooms idle for `idle_ms`.
    Tick {
        idle_ms: u64,
        max: usize,
    },
}

/// Which request a refusal answers (a WebSocket connection counts its
/// requests in flight by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Join,
    Publish,
    History,
    Presence,
}

#[derive(Debug, Clone)]
pub enum Reply {
    /// The join succeeded: the member is listed where it lives once this is
    /// handled, then gets `replay` (already encoded `msg` frames).
    Joined {
        room: RoomName,
        last: u64,
        recovered: Option<bool>,
        replay: Vec<Bytes>,
    },
    /// A publish is stored (or was, for a duplicate): its seq and ts.
    Ack {
        room: RoomName,
        seq: u64,
        ts: u64,
        id: Option<Box<str>>,
    },
    History {
        room: RoomName,
        page: Vec<MsgFrame>,
        more: bool,
    },
    Presence {
        room: RoomName,
        members: Vec<(UserId, u64)>,
    },
    /// The request failed; `status` is its HTTP status, `code` the
    /// protocol's error code.
    Refused {
        to: Asked,
        room: RoomName,
        status: u16,
        code: &'static str,
        message: String,
    },
}

impl Reply {
    fn refused(to: Asked, room: &RoomName, status: u16, code: &'static str, message: impl Into<String>) -> Reply {
        Reply::Refused { to, room: room.clone(), status, code, message: message.into() }
    }
}

pub enum Effect<A> {
    /// Store this record; its commit comes back as [`Input::Committed`].
    Append(Record),
    /// Queue `frame` on every member of `room` that lives on `reactor`:
    /// a `msg` (its `seq`) or a `presence_diff` (no seq).
    Deliver {
        reactor: usize,
        room: RoomName,
        seq: Option<u64>,
        frame: Bytes,
    },
    /// A message was committed (only with [`Core::tap`] on): for the bus.
    Tap {
        room: RoomName,
        frame: MsgFrame,
    },
    Reply {
        to: A,
        reply: Reply,
    },
    Read(Read<A>),
    /// The room was forgotten; free it where it costs nobody.
    Forget(OwnedRoom),
}

/// A publish waiting for its commit (or a duplicate's ack waiting for the
/// commits queued before it).
struct Pending<A> {
    room: RoomName,
    seq: u64,
    ts: u64,
    /// `None` for a duplicate: nothing to commit, only an ack to send.
    frame: Option<MsgFrame>,
    id: Option<Box<str>>,
    user: UserId,
    /// An earlier reservation in the same room failed to commit: this one
    /// cannot be stored either, and its seq was taken back already.
    doomed: bool,
    asker: A,
}

/// What a room waits for from storage.
enum Wait<A> {
    Head {
        ticket: u64,
    },
    Dedup {
        ticket: u64,
        publish: Publish<A>,
        keys: Vec<(UserId, Box<str>)>,
    },
    /// A joiner's replay older than the tail: `extras` are the frames
    /// committed in the room since the read was asked for.
    /// `again`: the joiner was a member already, so it got those live.
    Replay {
        ticket: u64,
        join: Join<A>,
        again: bool,
        after: u64,
        upto: u64,
        extras: Vec<Bytes>,
    },
}

impl<A> Wait<A> {
    fn ticket(&self) -> u64 {
        match self {
            Wait::Head { ticket } | Wait::Dedup { ticket, .. } | Wait::Replay { ticket, .. } => *ticket,
        }
    }
}

struct Entry<A> {
    /// `None` while its head loads.
    room: Option<OwnedRoom>,
    wait: Option<Wait<A>>,
    queue: VecDeque<Command<A>>,
    /// Body bytes of the publishes in `queue`.
    queued_bytes: usize,
    /// Client ids storage was asked about and does not hold: not asked
    /// again while the commands queued with them run.
    checked: HashSet<(UserId, Box<str>)>,
}

/// One room of [`Core::rooms_page`].
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub name: RoomName,
    pub connections: usize,
    pub users: usize,
    pub last_seq: u64,
}

/// Counters the caller publishes.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoreStats {
    pub published: u64,
}

/// Everything but the rooms, so a room and the rules can be borrowed apart.
struct Rules<A> {
    settings: RoomSettings,
    reactors: usize,
    /// Storage is configured: rooms load from it and publishes are appended.
    stored: bool,
    /// The most bytes one page, replay or presence list carries.
    budget: usize,
    pending: VecDeque<Pending<A>>,
    next_ticket: u64,
    stats: CoreStats,
    /// Every commit also makes an [`Effect::Tap`].
    tap: bool,
}

pub struct Core<A> {
    rooms: HashMap<RoomName, Entry<A>>,
    rules: Rules<A>,
}

impl<A: Clone> Core<A> {
    /// `stored`: rooms have storage behind them. `budget`: the most bytes one
    /// history page, join replay or presence list may carry.
    pub fn new(settings: RoomSettings, reactors: usize, stored: bool, budget: usize) -> Self {
        Core {
            rooms: HashMap::new(),
            rules: Rules {
                settings,
                reactors: reactors.max(1),
                stored,
                budget,
                pending: VecDeque::new(),
                next_ticket: 0,
                stats: CoreStats::default(),
                tap: false,
            },
        }
    }

    /// Every commit from now on also makes an [`Effect::Tap`].
    pub fn tap(&mut self, on: bool) {
        self.rules.tap = on;
    }

    pub fn stats(&self) -> CoreStats {
        self.rules.stats
    }

    /// Rooms held (loaded or loading).
    /// The loaded rooms whose names start with `prefix` and sort after
    /// `after`, in name order, at most `limit`, and whether more follow:
    /// (name, member connections, users, last seq) each. A scan of this
    /// core's rooms: for the server API, not for a hot path.
    pub fn rooms_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> (Vec<RoomInfo>, bool) {
        let mut found: Vec<RoomInfo> = self
            .rooms
            .iter()
            .filter(|(name, _)| name.starts_with(prefix) && after.is_none_or(|a| &***name > a))
            .filter_map(|(name, e)| {
                let r = e.room.as_ref()?;
                let (connections, users) = r.counts();
                Some(RoomInfo { name: name.clone(), connections, users, last_seq: r.last_seq() })
            })
            .collect();
        // Only the first `limit` by name are sorted: a selection first keeps
        // a page of a large core at one linear pass.
        let more = found.len() > limit;
        if more {
            found.select_nth_unstable_by(limit, |a, b| a.name.cmp(&b.name));
            found.truncate(limit);
        }
        found.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        (found, more)
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The most bytes one history page, replay or presence list carries.
    pub fn budget(&self) -> usize {
        self.rules.budget
    }

    /// Publishes waiting for their commit.
    pub fn pending(&self) -> usize {
        self.rules.pending.len()
    }

    /// Nothing waits on storage: no commit, no read.
    pub fn is_quiet(&self) -> bool {
        self.rules.pending.is_empty() && self.rooms.values().all(|e| e.wait.is_none())
    }

    /// The room as loaded, for inspection.
    pub fn room(&self, name: &str) -> Option<&OwnedRoom> {
        self.rooms.get(name).and_then(|e| e.room.as_ref())
    }

    /// Handles one input at `now_ms`, appending what should happen to `out`
    /// in the order it must happen.
    pub fn handle(&mut self, input: Input<A>, now_ms: u64, out: &mut Vec<Effect<A>>) {
        match input {
            Input::Command(c) => self.command(c, now_ms, out),
            Input::Committed(c) => self.committed(c, now_ms, out),
            Input::ReadDone(r) => self.read_done(r, now_ms, out),
            Input::Tick { idle_ms, max } => self.tick(now_ms, idle_ms, max, out),
        }
    }

    fn command(&mut self, c: Command<A>, now: u64, out: &mut Vec<Effect<A>>) {
        let Core { rooms, rules } = self;
        if let Some(e) = rooms.get_mut(c.room()) {
            if e.wait.is_some() || !e.queue.is_empty() {
                return rules.queue(e, c, out);
            }
            rules.run(e, c, now, out);
            return;
        }
        // A room not held: reads are answered without loading it (a room
        // with members or reservations is always held), so made-up names
        // cost no memory.
        match c {
            Command::Leave(_) => {}
            Command::Presence(p) => {
                out.push(Effect::Reply { to: p.asker, reply: Reply::Presence { room: p.room, members: Vec::new() } })
            }
            Command::History(h) if rules.stored => {
                // Everything stored is committed: nothing of this room is in
                // flight, so storage alone answers.
                let oldest_first = h.after.is_some();
                out.push(Effect::Read(Read::Page {
                    room: h.room,
                    after: h.after,
                    before: h.before,
                    limit: h.limit,
                    oldest_first,
                    asker: h.asker,
                }));
            }
            Command::History(h) => out.push(Effect::Reply {
                to: h.asker,
                reply: Reply::History { room: h.room, page: Vec::new(), more: false },
            }),
            c @ (Command::Join(_) | Command::Publish(_)) => {
                let name = c.room().clone();
                if rules.stored {
                    let ticket = rules.ticket();
                    let mut queue = VecDeque::new();
                    queue.push_back(c);
                    let queued_bytes = queue.iter().map(body_bytes).sum();
                    let entry = Entry {
                        room: None,
                        wait: Some(Wait::Head { ticket }),
                        queue,
                        queued_bytes,
                        checked: HashSet::new(),
                    };
                    rooms.insert(name.clone(), entry);
                    out.push(Effect::Read(Read::Head { room: name, ticket }));
                } else {
                    let room = OwnedRoom::with_head(name.clone(), rules.reactors, 0, 0, now);
                    let e = rooms.entry(name).or_insert(Entry {
                        room: Some(room),
                        wait: None,
                        queue: VecDeque::new(),
                        queued_bytes: 0,
                        checked: HashSet::new(),
                    });
                    rules.run(e, c, now, out);
                }
            }
        }
    }

    fn read_done(&mut self, r: ReadDone, now: u64, out: &mut Vec<Effect<A>>) {
        let Core { rooms, rules } = self;
        let Some(e) = rooms.get_mut(&r.room) else { return };
        if e.wait.as_ref().map(Wait::ticket) != Some(r.ticket) {
            return; // not what the room waits for (it was answered already)
        }
        let Some(wait) = e.wait.take() else { return };
        match (wait, r.result) {
            // A head at the very end of the seq space (a damaged file) would
            // overflow the next seq: refused like a failed read below.
            (Wait::Head { .. }, Ok(ReadResult::Head { seq, ts })) if seq < u64::MAX => {
                e.room = Some(OwnedRoom::with_head(r.room.clone(), rules.reactors, seq, ts, now));
            }
            (Wait::Head { .. }, res) => {
                // The room cannot be loaded: everything waiting for it is
                // refused, and the room is not held (a later ask tries again).
                // A made-up seq 0 would hand out stored seqs again.
                let (status, code, message) = match res {
                    Err(ReadError::Busy) => (503, "overloaded", "storage readers are busy; retry".to_string()),
                    Err(ReadError::Failed(m)) => (500, "internal", format!("room unavailable: {m}")),
                    Ok(_) => (500, "internal", "room unavailable: unexpected read".to_string()),
                };
                e.queued_bytes = 0;
                for c in std::mem::take(&mut e.queue) {
                    rules.refuse(c, status, code, &message, out);
                }
                rooms.remove(&r.room);
                return;
            }
            (Wait::Dedup { publish, keys, .. }, res) => {
                let Some(room) = e.room.as_mut() else { return };
                match res {
                    Ok(ReadResult::Dedup(found)) if found.len() == keys.len() => {
                        for ((user, id), found) in keys.into_iter().zip(found) {
                            match found {
                                Some((seq, ts)) => room.remember(&rules.settings, &user, &id, seq, ts, now),
                                None => {
                                    e.checked.insert((user, id));
                                }
                            }
                        }
                        rules.publish(room, publish, now, out);
                    }
                    Err(ReadError::Busy) => rules.refuse(
                        Command::Publish(publish),
                        503,
                        "overloaded",
                        "storage readers are busy; retry",
                        out,
                    ),
                    Err(ReadError::Failed(m)) => {
                        rules.refuse(Command::Publish(publish), 500, "internal", &format!("storage: {m}"), out)
                    }
                    Ok(_) => rules.refuse(Command::Publish(publish), 500, "internal", "unexpected read", out),
                }
            }
            (Wait::Replay { join, again, after, upto, extras, .. }, res) => {
                let replay = match res {
                    // Retention may have pruned some: a replay with a hole (or
                    // one cut for size) is no replay; the client pages instead.
                    Ok(ReadResult::Replay { frames, cut: false }) if frames.len() as u64 == upto - after => {
                        fits(&frames, rules.budget).then_some(frames)
                    }
                    _ => None,
                };
                let recovered = Some(replay.is_some());
                let mut frames = replay.unwrap_or_default();
                // A member joining again got those live already.
                if !again {
                    frames.extend(extras);
                }
                let reply = Reply::Joined { room: join.room.clone(), last: upto, recovered, replay: frames };
                out.push(Effect::Reply { to: join.asker, reply });
            }
        }
        rules.drain_queue(e, now, out);
    }

    /// Storage committed (or failed) the next `n` appends: make them
    /// visible, deliver, ack — or take them back and refuse.
    fn committed(&mut self, c: Commit, _now: u64, out: &mut Vec<Effect<A>>) {
        let Core { rooms, rules } = self;
        let mut n = c.n;
        while let Some(front) = rules.pending.front() {
            if front.frame.is_some() {
                if n == 0 {
                    break;
                }
                n -= 1;
            }
            let Some(p) = rules.pending.pop_front() else { break };
            let e = rooms.get_mut(&p.room);
            match (p.frame, &c.result) {
                (Some(frame), Ok(())) if !p.doomed => {
                    if let Some(e) = e {
                        if let Some(r) = e.room.as_mut() {
                            r.commit(&rules.settings, p.seq, p.ts, frame.clone());
                            for reactor in r.member_reactors() {
                                let frame = frame.frame.clone();
                                out.push(Effect::Deliver { reactor, room: p.room.clone(), seq: Some(p.seq), frame });
                            }
                            if rules.tap {
                                out.push(Effect::Tap { room: p.room.clone(), frame: frame.clone() });
                            }
                        }
                        if let Some(Wait::Replay { extras, .. }) = &mut e.wait {
                            extras.push(frame.frame.clone());
                        }
                    }
                    rules.stats.published += 1;
                }
                (Some(_), _) => {
                    if !p.doomed {
                        if let Some(r) = e.and_then(|e| e.room.as_mut()) {
                            abandon(r, &mut rules.pending, p.seq, &p.user, p.id.as_deref());
                        }
                    }
                    let m = match &c.result {
                        Err(e) => format!("storage failed: {e}"),
                        Ok(()) => "storage failed for an earlier message of this room; retry".to_string(),
                    };
                    let reply = Reply::refused(Asked::Publish, &p.room, 500, "internal", m);
                    out.push(Effect::Reply { to: p.asker, reply });
                    continue;
                }
                (None, _) => {
                    // A duplicate whose original was never stored has
                    // nothing to point at.
                    let stored = e.and_then(|e| e.room.as_ref()).is_some_and(|r| p.seq <= r.last_seq());
                    if !stored {
                        let m = "storage failed for the original of this message; retry";
                        let reply = Reply::refused(Asked::Publish, &p.room, 500, "internal", m);
                        out.push(Effect::Reply { to: p.asker, reply });
                        continue;
                    }
                }
            }
            let reply = Reply::Ack { room: p.room, seq: p.seq, ts: p.ts, id: p.id };
            out.push(Effect::Reply { to: p.asker, reply });
        }
    }

    fn tick(&mut self, now: u64, idle_ms: u64, max: usize, out: &mut Vec<Effect<A>>) {
        // A room with a publish still pending (a duplicate's ack waiting
        // behind other rooms' commits) is kept: its answer needs the room.
        let busy: std::collections::HashSet<&RoomName> = self.rules.pending.iter().map(|p| &p.room).collect();
        let idle: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(n, e)| {
                e.wait.is_none()
                    && e.queue.is_empty()
                    && !busy.contains(n)
                    && e.room.as_ref().is_some_and(|r| r.is_idle(now, idle_ms))
            })
            .take(max)
            .map(|(n, _)| n.clone())
            .collect();
        for n in idle {
            if let Some(room) = self.rooms.remove(&n).and_then(|e| e.room) {
                out.push(Effect::Forget(room));
            }
        }
        if self.rooms.capacity() > 64 && self.rooms.len() < self.rooms.capacity() / 4 {
            self.rooms.shrink_to(self.rooms.len() * 2);
        }
    }
}

impl<A: Clone> Rules<A> {
    fn ticket(&mut self) -> u64 {
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.next_ticket
    }

    /// Queues `c` behind the room's wait, or refuses it when the queue is full.
    fn queue(&mut self, e: &mut Entry<A>, c: Command<A>, out: &mut Vec<Effect<A>>) {
        let bytes = body_bytes(&c);
        let full = e.queue.len() >= MAX_QUEUED || e.queued_bytes.saturating_add(bytes) > MAX_QUEUED_BYTES;
        if full && !matches!(c, Command::Leave(_)) {
            return self.refuse(c, 503, "overloaded", "the room waits on storage; retry", out);
        }
        // A leave is never refused: it must reach the member count. It is
        // bounded by the joins its connection sent (a connection's requests
        // are rate limited and capped in flight).
        e.queued_bytes = e.queued_bytes.saturating_add(bytes);
        e.queue.push_back(c);
    }

    /// Runs queued commands until the room waits again.
    fn drain_queue(&mut self, e: &mut Entry<A>, now: u64, out: &mut Vec<Effect<A>>) {
        while e.wait.is_none() {
            let Some(c) = e.queue.pop_front() else { break };
            e.queued_bytes = e.queued_bytes.saturating_sub(body_bytes(&c));
            self.run(e, c, now, out);
        }
        if e.queue.is_empty() && e.wait.is_none() {
            e.checked = HashSet::new();
        }
    }

    /// One command on a held room that waits for nothing.
    fn run(&mut self, e: &mut Entry<A>, c: Command<A>, now: u64, out: &mut Vec<Effect<A>>) {
        let Some(r) = e.room.as_mut() else {
            return self.queue(e, c, out);
        };
        r.touch(now);
        match c {
            Command::Join(j) => {
                if let Some(w) = self.join(r, j, now, out) {
                    e.wait = Some(w);
                }
            }
            Command::Leave(l) => {
                if let Some(diff) = r.leave(l.reactor, l.member, &l.user) {
                    self.deliver(r, diff, out);
                }
            }
            Command::Publish(p) => {
                let window = self.stored && r.dedup_needs_storage(&self.settings, now);
                let unknown = |r: &OwnedRoom, checked: &HashSet<(UserId, Box<str>)>, p: &Publish<A>| {
                    p.id.as_deref().is_some_and(|id| {
                        !r.knows_id(&p.user, id, now) && !checked.contains(&(p.user.clone(), Box::from(id)))
                    })
                };
                if !window || e.checked.len() > MAX_QUEUED {
                    // Past the window nothing needs asking; past the queue's
                    // size the set holds ids no queued publish still needs
                    // (asking one again costs a read, never a wrong answer).
                    e.checked.clear();
                }
                if window && unknown(r, &e.checked, &p) {
                    // An id recorded before this room was loaded is known to
                    // storage only: ask it, and hold the room's commands so
                    // none overtakes this publish. The ids of publishes
                    // already queued go in the same read.
                    let ticket = self.ticket();
                    let mut keys = vec![(p.user.clone(), p.id.clone().unwrap_or_default())];
                    for q in e.queue.iter() {
                        if keys.len() >= DEDUP_KEYS_PER_READ {
                            break;
                        }
                        if let Command::Publish(q) = q {
                            if unknown(r, &e.checked, q) {
                                keys.push((q.user.clone(), q.id.clone().unwrap_or_default()));
                            }
                        }
                    }
                    out.push(Effect::Read(Read::Dedup { room: p.room.clone(), keys: keys.clone(), ticket }));
                    e.wait = Some(Wait::Dedup { ticket, publish: p, keys });
                } else {
                    self.publish(r, p, now, out);
                }
            }
            Command::History(h) => self.history(r, h, now, out),
            Command::Presence(p) => {
                // Capped like a history page: a room of many users answers
                // the first ones that fit.
                let mut size = 0usize;
                let budget = self.budget;
                let members: Vec<(UserId, u64)> = r
                    .users()
                    .take_while(|(u, _)| {
                        size = size.saturating_add(u.len() + 40);
                        size <= budget
                    })
                    .map(|(u, since)| (u.clone(), since))
                    .collect();
                out.push(Effect::Reply { to: p.asker, reply: Reply::Presence { room: p.room, members } });
            }
        }
    }

    /// A join: counted, its presence diff delivered, answered — or, when its
    /// replay is older than the tail, a read asked for and the wait returned.
    fn join(&mut self, r: &mut OwnedRoom, j: Join<A>, now: u64, out: &mut Vec<Effect<A>>) -> Option<Wait<A>> {
        r.expire(&self.settings, now);
        let (new, diff) = r.join(j.reactor, j.member, &j.user, now);
        // The diff goes out before the answer, so the joiner (not yet a
        // member where it lives) does not get its own arrival.
        if let Some(d) = diff {
            self.deliver(r, d, out);
        }
        let last = r.last_seq();
        let (recovered, replay) = match j.since.map(|s| r.replay(s, self.settings.max_replay)) {
            None => (None, Vec::new()),
            Some(Replay::Nothing) => (Some(true), Vec::new()),
            // Too many bytes to replay at once: the client pages instead.
            Some(Replay::Tail(frames)) if !fits(&frames, self.budget) => (Some(false), Vec::new()),
            Some(Replay::Tail(frames)) => (Some(true), frames),
            Some(Replay::TooMany) => (Some(false), Vec::new()),
            Some(Replay::Storage { .. }) if !self.stored => (Some(false), Vec::new()),
            Some(Replay::Storage { after, upto }) => {
                let ticket = self.ticket();
                let (max, budget) = (self.settings.max_replay, self.budget);
                out.push(Effect::Read(Read::Replay { room: j.room.clone(), after, upto, max, budget, ticket }));
                return Some(Wait::Replay { ticket, join: j, again: !new, after, upto, extras: Vec::new() });
            }
        };
        out.push(Effect::Reply { to: j.asker, reply: Reply::Joined { room: j.room, last, recovered, replay } });
        None
    }

    /// Reserves a seq (or finds the original of a duplicate), appends the
    /// record, and queues the ack behind the commits before it.
    fn publish(&mut self, r: &mut OwnedRoom, p: Publish<A>, now: u64, out: &mut Vec<Effect<A>>) {
        if self.pending.len() >= MAX_PENDING {
            // Storage is far behind: push back on the publisher rather than
            // hold without bound (also for publishes that were queued).
            let reply = Reply::refused(Asked::Publish, &p.room, 503, "overloaded", "storage is busy; retry");
            return out.push(Effect::Reply { to: p.asker, reply });
        }
        let Publish { room, user, body, id, asker } = p;
        let entry = match r.reserve(&self.settings, &user, &body, id.as_deref(), now) {
            Reserved::Duplicate { seq, ts } => Pending { room, seq, ts, frame: None, id, user, doomed: false, asker },
            Reserved::New { seq, ts, frame, body } => {
                if self.stored {
                    let window = u64::try_from(self.settings.dedup_window.as_millis()).unwrap_or(u64::MAX);
                    out.push(Effect::Append(Record {
                        room: room.clone(),
                        seq,
                        ts,
                        from: user.clone(),
                        id: id.clone(),
                        body,
                        dedup_until_ms: now.saturating_add(window),
                    }));
                }
                Pending { room, seq, ts, frame: Some(frame), id, user, doomed: false, asker }
            }
        };
        let duplicate = entry.frame.is_none();
        self.pending.push_back(entry);
        if !self.stored {
            // No storage: the message is as durable as it gets. The caller
            // sees the same effects a commit report would give.
            self.complete_unstored(r, out);
        } else if duplicate && self.pending.len() == 1 {
            // A duplicate with nothing queued before it answers at once.
            if let Some(p) = self.pending.pop_front() {
                let reply = Reply::Ack { room: p.room, seq: p.seq, ts: p.ts, id: p.id };
                out.push(Effect::Reply { to: p.asker, reply });
            }
        }
    }

    /// Without storage every reservation commits at once (the room is the
    /// only one with anything pending).
    fn complete_unstored(&mut self, r: &mut OwnedRoom, out: &mut Vec<Effect<A>>) {
        while let Some(p) = self.pending.pop_front() {
            if let Some(frame) = p.frame {
                r.commit(&self.settings, p.seq, p.ts, frame.clone());
                for reactor in r.member_reactors() {
                    let frame = frame.frame.clone();
                    out.push(Effect::Deliver { reactor, room: p.room.clone(), seq: Some(p.seq), frame });
                }
                if self.tap {
                    out.push(Effect::Tap { room: p.room.clone(), frame: frame.clone() });
                }
                self.stats.published += 1;
            }
            let reply = Reply::Ack { room: p.room, seq: p.seq, ts: p.ts, id: p.id };
            out.push(Effect::Reply { to: p.asker, reply });
        }
    }

    fn history(&mut self, r: &mut OwnedRoom, h: History<A>, now: u64, out: &mut Vec<Effect<A>>) {
        r.expire(&self.settings, now);
        let oldest_first = h.after.is_some();
        if let Some((page, more)) = r.history(h.before, h.after, h.limit) {
            let mut page: Vec<MsgFrame> = page.into_iter().cloned().collect();
            let cut = cap_page(&mut page, |m| m.frame.len(), oldest_first, self.budget);
            let reply = Reply::History { room: h.room, page, more: more || cut };
            return out.push(Effect::Reply { to: h.asker, reply });
        }
        if !self.stored {
            let reply = Reply::refused(Asked::History, &h.room, 500, "internal", "no storage");
            return out.push(Effect::Reply { to: h.asker, reply });
        }
        // Older than the tail: storage pages it, up to what is committed.
        let end = r.last_seq().saturating_add(1);
        let before = Some(h.before.map_or(end, |b| b.min(end)));
        out.push(Effect::Read(Read::Page {
            room: h.room,
            after: h.after,
            before,
            limit: h.limit,
            oldest_first,
            asker: h.asker,
        }));
    }

    /// `frame` for every reactor with members in `r`.
    fn deliver(&self, r: &OwnedRoom, frame: Bytes, out: &mut Vec<Effect<A>>) {
        for reactor in r.member_reactors() {
            out.push(Effect::Deliver { reactor, room: r.name.clone(), seq: None, frame: frame.clone() });
        }
    }

    /// Answers `c` with an error (a leave has no answer).
    fn refuse(&mut self, c: Command<A>, status: u16, code: &'static str, message: &str, out: &mut Vec<Effect<A>>) {
        let (to, asked, room) = match c {
            Command::Leave(_) => return,
            Command::Join(j) => (j.asker, Asked::Join, j.room),
            Command::Publish(p) => (p.asker, Asked::Publish, p.room),
            Command::History(h) => (h.asker, Asked::History, h.room),
            Command::Presence(p) => (p.asker, Asked::Presence, p.room),
        };
        out.push(Effect::Reply { to, reply: Reply::refused(asked, &room, status, code, message) });
    }
}

/// The commit of `seq` in `r` failed: the room goes back to just before it,
/// and every later reservation of the room still pending is doomed. Their
/// ids are forgotten now, so a retry is not answered with a seq that was
/// never stored.
fn abandon<A>(r: &mut OwnedRoom, pending: &mut VecDeque<Pending<A>>, seq: u64, user: &UserId, id: Option<&str>) {
    if let Some(id) = id {
        r.forget(user, id, seq);
    }
    for q in pending.iter_mut() {
        if q.frame.is_some() && !q.doomed && q.room == r.name {
            q.doomed = true;
            if let Some(id) = q.id.as_deref() {
                r.forget(&q.user, id, q.seq);
            }
        }
    }
    // Everything before `seq` in this room is committed (commits come in
    // order), so its head is `seq - 1`: no storage read needed.
    r.take_back(seq);
}

/// The body bytes a queued command holds.
fn body_bytes<A>(c: &Command<A>) -> usize {
    match c {
        Command::Publish(p) => p.body.get().len(),
        _ => 0,
    }
}

fn fits(frames: &[Bytes], budget: usize) -> bool {
    frames.iter().map(Bytes::len).fold(0usize, usize::saturating_add) <= budget
}

/// The most bytes of messages one history page or one join replay
/// carries: an eighth of the output cap (a connection may have several
/// such answers coming), at most 512 KiB. A page that would be larger
/// stops early with `more: true`; a replay that would be larger is not made
/// (`recovered: false`, the client pages instead).
pub fn page_budget(max_queue_bytes: usize) -> usize {
    (max_queue_bytes / 8).clamp(16 << 10, 512 << 10)
}

/// Cuts `page` (ascending) to `budget` bytes, keeping at least one message:
/// the oldest when paging forward (`oldest_first`), else the newest. True
/// when something was cut, which the answer reports as `more`.
pub fn cap_page<T>(page: &mut Vec<T>, size: impl Fn(&T) -> usize, oldest_first: bool, budget: usize) -> bool {
    let mut total = 0usize;
    let fits = |m: &T, total: &mut usize| {
        *total = total.saturating_add(size(m));
        *total <= budget
    };
    if oldest_first {
        let keep = page.iter().take_while(|m| fits(m, &mut total)).count().max(1);
        let cut = keep < page.len();
        page.truncate(keep);
        cut
    } else {
        let keep = page.iter().rev().take_while(|m| fits(m, &mut total)).count().max(1);
        let drop = page.len().saturating_sub(keep);
        page.drain(..drop);
        drop > 0
    }
}

/// A stored message as a `msg` frame (its body is copied verbatim).
pub fn frame_of(room: &str, m: &StoredMsg) -> MsgFrame {
    msg::encode_msg_raw(room, m.seq, m.ts, &m.from, &m.body, m.id.as_deref())
}

/// A replay read's messages as frames, encoded on the thread that read them
/// (a hundred rooms' replays at once must not be encoded on a reactor).
pub fn replay_frames(room: &str, msgs: &[StoredMsg]) -> Vec<Bytes> {
    msgs.iter().map(|m| frame_of(room, m).frame).collect()
}

/// The answer to a [`Read::Page`], made where the page was read.
pub fn page_reply(
    room: &RoomName,
    read: Result<(Vec<StoredMsg>, bool), String>,
    oldest_first: bool,
    budget: usize,
) -> Reply {
    match read {
        Ok((msgs, more)) => {
            let mut page: Vec<MsgFrame> = msgs.iter().map(|m| frame_of(room, m)).collect();
            let cut = cap_page(&mut page, |m| m.frame.len(), oldest_first, budget);
            Reply::History { room: room.clone(), page, more: more || cut }
        }
        Err(e) => Reply::refused(Asked::History, room, 500, "internal", format!("storage: {e}")),
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
