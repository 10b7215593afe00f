//! The reactor's side of the room core: the one mail router, the loop that
//! feeds the core its inputs and carries out its effects (mail, appends,
//! storage reads on the reader pool), and the one reply path that answers
//! an asker whatever its kind. The rules themselves are in
//! `rooms::core`.
//!
//! Ordering hazards:
//! - Effects are carried out in the order the core made them, and inputs
//!   that arrive while effects are being carried out (a local delivery
//!   closes a slow member, whose leave goes to this reactor's core) wait
//!   until the current ones are done, so the core's order is the order on
//!   every path.
//! - Appends of one iteration go to store-writer as one batch at its end
//!   (`send_appends`), before the mail of that iteration is passed on; the
//!   commit report can only come after.

use std::mem;

use crate::proto::msg::{self, Member};
use crate::rooms::core::{self, Asked, Effect, Input, Read, ReadDone, ReadError, ReadResult, Reply};
use crate::store::WriterCmd;

use super::mail::{Answer, Asker, AskerKind, ClusterMail, Delivery, Mail};
use super::timer::later;
use super::{reaper, Reactor};
use crate::proto::now_ms;

/// Appends held back while store-writer's queue is full, in batches; past
/// the first one new publishes are refused (`overloaded`).
pub(super) type AppendBacklog = std::collections::VecDeque<Vec<crate::store::Record>>;

/// How soon appends held back by a full store-writer queue are offered again.
const APPEND_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Capacity past which the core's effect and input buffers are shrunk back
/// once empty.
const SHRINK_ABOVE: usize = 1024;

impl Reactor {
    /// Every mail this reactor gets, from anyone, goes through here.
    pub(super) fn route_mail(&mut self, m: Mail) {
        match m {
            Mail::Owner(c) => self.owner_command(c),
            Mail::Committed(c, at) => {
                self.note_commit(c.n, at);
                self.feeding_commit = Some(at);
                self.feed_core(Input::Committed(c));
                self.feeding_commit = None;
            }
            Mail::ReadDone(r) => self.feed_core(Input::ReadDone(r)),
            Mail::Deliver(d) => {
                self.note_delivery(&d.room, d.committed);
                self.deliver_local(&d.room, d.frame, d.twin.as_ref())
            }
            Mail::Answer(a) => self.take_answer(a.to, a.reply),
            Mail::Http(h) => {
                if let Some(key) = self.resolve(h.conn) {
                    self.http_mail(key, h);
                }
            }
            Mail::Batch(all) => {
                for m in all {
                    self.route_mail(m);
                }
            }
            // For the cluster node thread only.
            Mail::Cluster(_) => {}
            Mail::Kick(k) => self.kick(k),
            Mail::Unsubscribe { user, room } => self.unsubscribe(&user, &room),
            Mail::RoomsAsk { to, prefix, after, limit } => {
                let (rooms, more) = self.core.rooms_page(&prefix, after.as_deref(), limit);
                self.post(to.reactor as usize, Mail::RoomsPart { to, rooms, more });
            }
            Mail::RoomsPart { to, rooms, more } => self.rooms_part(to, rooms, more),
        }
    }

    /// A command for a room this reactor owns (from mail, or from one of
    /// its own connections directly).
    pub(super) fn owner_command(&mut self, c: core::Command<Asker>) {
        match c {
            core::Command::Publish(p) if !self.append_backlog.is_empty() => {
                // store-writer is behind: push back on the publisher rather
                // than queue without bound.
                let reply = Reply::Refused {
                    to: Asked::Publish,
                    room: p.room,
                    status: 503,
                    code: "overloaded",
                    message: "storage is busy; retry".into(),
                };
                self.answer(p.asker, reply);
            }
            c => self.feed_core(Input::Command(c)),
        }
    }

    /// The mailbox a command for `room` goes to: its owner reactor's, or
    /// the cluster node thread's when another node owns the room (so that
    /// `backed_up` looks at the right queue).
    pub(super) fn owner_at(shared: &super::Shared, room: &str) -> usize {
        match &shared.cluster {
            Some(cl) if cl.owner(room).is_some() => cl.mailbox,
            _ => crate::rooms::owner_of(room, shared.reactors()),
        }
    }

    /// Sends `c` to the room's owner: a plain call when that is this
    /// reactor, the cluster node thread when another node owns the room.
    /// `owner` is what [`Reactor::owner_at`] gave for the room.
    pub(super) fn ask_owner(&mut self, owner: usize, c: core::Command<Asker>) {
        if self.shared.cluster.as_ref().is_some_and(|cl| owner == cl.mailbox) {
            return self.post(owner, Mail::Cluster(ClusterMail::Forward(c)));
        }
        if owner == self.id {
            self.owner_command(c);
        } else {
            self.post(owner, Mail::Owner(c));
        }
    }

    /// Feeds the core one input and carries out its effects; inputs that
    /// come up meanwhile are fed after (see the module's ordering hazards).
    pub(super) fn feed_core(&mut self, input: Input<Asker>) {
        self.core_later.push_back(input);
        if self.in_core {
            return;
        }
        self.in_core = true;
        let mut fx = mem::take(&mut self.effects);
        while let Some(input) = self.core_later.pop_front() {
            self.core.handle(input, now_ms(), &mut fx);
            for e in fx.drain(..) {
                self.apply(e);
            }
        }
        // A burst (thousands of slow members closed at once) must not pin
        // its peak in these buffers for the reactor's life.
        if fx.capacity() > SHRINK_ABOVE {
            fx.shrink_to(SHRINK_ABOVE / 4);
        }
        if self.core_later.capacity() > SHRINK_ABOVE {
            self.core_later.shrink_to(SHRINK_ABOVE / 4);
        }
        self.effects = fx;
        self.in_core = false;
    }

    fn apply(&mut self, e: Effect<Asker>) {
        match e {
            Effect::Append(rec) => {
                if self.writer.is_some() {
                    self.appends.push(rec);
                }
            }
            Effect::Deliver { reactor, room, frame, .. } if reactor == self.id => {
                self.note_delivery(&room, self.feeding_commit);
                let twin = self.twin_of(&frame);
                self.deliver_local(&room, frame, twin.as_ref())
            }
            Effect::Deliver { reactor, room, seq, frame } => match self.shared.reactors() {
                n if reactor < n => {
                    let committed = self.feeding_commit;
                    let twin = self.twin_of(&frame);
                    self.post(reactor, Mail::Deliver(Delivery { room, frame, twin, committed }))
                }
                // A peer node's members: once to its node, over the link.
                n => {
                    if let Some(at) = self.shared.cluster.as_ref().map(|c| c.mailbox) {
                        let peer = (reactor - n) as u16;
                        self.post(at, Mail::Cluster(ClusterMail::Deliver { peer, room, seq, frame }));
                    }
                }
            },
            Effect::Tap { room, frame } => {
                if let Some(bus) = &self.shared.bus {
                    // Full: dropped (the bus is best effort).
                    let _ = bus.try_send((room, frame));
                }
            }
            Effect::Reply { to, reply } => self.answer(to, reply),
            Effect::Read(r) => self.read(r),
            Effect::Forget(room) => self.forgotten.push(room),
        }
    }

    /// The shared compressed frame of `frame`: the same one for every
    /// reactor a message goes to (the core emits one `Deliver` per member
    /// reactor, one after another, with clones of the same frame). The
    /// cached clone keeps that frame alive, so its address cannot be reused
    /// by another message while it is the key. Nothing with deflate off.
    fn twin_of(&mut self, frame: &bytes::Bytes) -> Option<super::mail::Twin> {
        // Frames below `deflate-min-bytes` go plain to everyone: no twin.
        if !self.live.config.permessage_deflate || frame.len() < self.live.config.deflate_min_bytes {
            return None;
        }
        if let Some((f, t)) = &self.last_twin {
            if f.as_ptr() == frame.as_ptr() && f.len() == frame.len() {
                return Some(t.clone());
            }
        }
        let t = super::mail::Twin::default();
        self.last_twin = Some((frame.clone(), t.clone()));
        Some(t)
    }

    /// Sends this iteration's appends to store-writer as one batch (or keeps
    /// them, in order, while its queue is full).
    pub(super) fn send_appends(&mut self) {
        let Some(w) = &self.writer else {
            self.appends.clear();
            return;
        };
        if !self.appends.is_empty() {
            let batch = mem::take(&mut self.appends);
            // Kept whether or not the histograms are on: a reload that
            // turns them on must find every batch in flight stamped.
            self.append_stamps.push_back((batch.len(), std::time::Instant::now()));
            self.append_backlog.push_back(batch);
        }
        self.append_retry = None;
        while let Some(recs) = self.append_backlog.pop_front() {
            if let Err(e) = w.try_send(WriterCmd::Append { reactor: self.id as u16, recs }) {
                let (crate::wait::TrySendError::Full(cmd) | crate::wait::TrySendError::Disconnected(cmd)) = e;
                if let WriterCmd::Append { recs, .. } = cmd {
                    self.append_backlog.push_front(recs);
                }
                // Try again shortly, without spinning: store-writer needs
                // the CPU to catch up.
                self.append_retry = Some(later(self.now, APPEND_RETRY));
                return;
            }
        }
    }

    /// Hands the forgotten rooms to the reaper (their tails may be large).
    pub(super) fn free_forgotten(&mut self) {
        if !self.forgotten.is_empty() {
            let gone = mem::take(&mut self.forgotten);
            self.hand_over(reaper::Garbage::Rooms(gone));
        }
    }

    /// A storage read the core asked for, on the reader pool. Its result
    /// comes back as mail: to this reactor's core, or for a history page
    /// straight to the asker.
    fn read(&mut self, r: Read<Asker>) {
        let shared = self.shared.clone();
        let me = self.id;
        let Some(readers) = &self.shared.readers else {
            return self.read_failed(r, ReadError::Failed("no storage".into()));
        };
        let back = r.clone();
        let urgent = !matches!(r, Read::Page { .. });
        let work: crate::store::ReadWork = match r {
            Read::Page { room, after, before, limit, oldest_first, asker } => {
                let budget = self.core.budget();
                Box::new(move |store| {
                    let page = store.page(&room, after, before, limit, oldest_first).map_err(|e| e.to_string());
                    let reply = core::page_reply(&room, page, oldest_first, budget);
                    // A peer's page goes back through this owner: its node
                    // then gets it after every delivery the page holds (the
                    // page stops at what was delivered when it was asked
                    // for), on the same FIFO link (see `cluster::node`).
                    let to = if matches!(asker.kind, AskerKind::Peer(_)) { me } else { asker.reactor() };
                    shared.post_from_thread(to, Mail::Answer(Answer { to: asker, reply }));
                })
            }
            Read::Head { room, ticket } => Box::new(move |store| {
                let result = store
                    .room_head(&room)
                    .map(|(seq, ts)| ReadResult::Head { seq, ts })
                    .map_err(|e| ReadError::Failed(e.to_string()));
                shared.post_from_thread(me, Mail::ReadDone(ReadDone { room, ticket, result }));
            }),
            Read::Dedup { room, keys, ticket } => Box::new(move |store| {
                let now = now_ms();
                let result = keys
                    .iter()
                    .map(|(user, id)| store.dedup_get(&room, user, id, now))
                    .collect::<Result<Vec<_>, _>>()
                    .map(ReadResult::Dedup)
                    .map_err(|e| ReadError::Failed(e.to_string()));
                shared.post_from_thread(me, Mail::ReadDone(ReadDone { room, ticket, result }));
            }),
            Read::Replay { room, after, upto, max, budget, ticket } => Box::new(move |store| {
                let result = store
                    .page_within(&room, Some(after), Some(upto.saturating_add(1)), max, true, budget)
                    .map(|(msgs, cut)| ReadResult::Replay { frames: core::replay_frames(&room, &msgs), cut })
                    .map_err(|e| ReadError::Failed(e.to_string()));
                shared.post_from_thread(me, Mail::ReadDone(ReadDone { room, ticket, result }));
            }),
        };
        let queued = if urgent { readers.submit_urgent(work) } else { readers.submit(work) };
        if queued.is_err() {
            self.read_failed(back, ReadError::Busy);
        }
    }

    /// A read that could not be queued answers as a failed read would.
    fn read_failed(&mut self, r: Read<Asker>, why: ReadError) {
        match r {
            Read::Page { room, asker, .. } => {
                let (status, code, message) = match why {
                    ReadError::Busy => (503, "overloaded", "history readers are busy; retry".to_string()),
                    ReadError::Failed(m) => (500, "internal", m),
                };
                self.answer(asker, Reply::Refused { to: Asked::History, room, status, code, message });
            }
            Read::Head { room, ticket } | Read::Dedup { room, ticket, .. } | Read::Replay { room, ticket, .. } => {
                self.feed_core(Input::ReadDone(ReadDone { room, ticket, result: Err(why) }));
            }
        }
    }

    /// The one reply path: answers `to` wherever it lives.
    pub(super) fn answer(&mut self, to: Asker, reply: Reply) {
        if let AskerKind::Peer(peer) = to.kind {
            // Ticket 0: the peer wants no answer (a member registered again).
            if let (Some(at), ticket @ 1..) = (self.shared.cluster.as_ref().map(|c| c.mailbox), to.conn.key) {
                self.post(at, Mail::Cluster(ClusterMail::Answer { peer, ticket, reply }));
            }
            return;
        }
        let at = to.reactor();
        if at == self.id {
            self.take_answer(to, reply);
        } else {
            self.post(at, Mail::Answer(Answer { to, reply }));
        }
    }

    /// An answer for one of this reactor's connections, encoded for its kind.
    fn take_answer(&mut self, to: Asker, reply: Reply) {
        if let AskerKind::Nobody = to.kind {
            return;
        }
        if let AskerKind::Peer(_) = to.kind {
            // A history page read for a peer lands here: pass it on.
            return self.answer(to, reply);
        }
        let Some(key) = self.resolve(to.conn) else { return };
        match to.kind {
            AskerKind::Ws => self.ws_answer(key, to.r#ref.as_ref(), to.tag, reply),
            AskerKind::Http => {
                let (status, body, retry_after) = http_reply(reply);
                self.http_answer(key, status, body, retry_after);
            }
            AskerKind::Peer(_) => {} // answered over the link (`answer`)
            AskerKind::Nobody => {}
        }
    }

    /// The counters the core keeps, for `/metrics`.
    pub(super) fn core_counters(&mut self) {
        let s = self.core.stats();
        self.counters.published = s.published;
        self.counters.rooms_loaded = self.core.len() as u64;
    }
}

/// An answer as one HTTP status, JSON body and `Retry-After` (seconds).
fn http_reply(reply: Reply) -> (u16, Vec<u8>, Option<u64>) {
    match reply {
        Reply::Ack { room, seq, ts, .. } => (201, msg::posted_json(&room, seq, ts), None),
        Reply::History { room, page, more } => (200, msg::history_json(&room, page.iter(), more), None),
        Reply::Presence { room, members } => {
            let members = members.iter().map(|(u, since)| Member { user: u, since: *since });
            (200, msg::presence_json(&room, members), None)
        }
        Reply::Refused { status, code, message, .. } => {
            (status, msg::error_json(code, &message), matches!(code, "overloaded" | "unavailable").then_some(1))
        }
        // Joins are WebSocket only.
        Reply::Joined { .. } => (500, msg::error_json("internal", "unexpected answer"), None),
    }
}
