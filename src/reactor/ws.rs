//! WebSocket on a connection, and the room traffic it causes: frames in,
//! protocol ops out to room owners, owners' work, and frames delivered to
//! local members.
//!
//! The connection's room rules (`auth::rules`) are checked here, before an
//! op goes to a room's owner, and again on answers that read a room (a
//! `refresh` may have narrowed them meanwhile); `refresh` itself swaps the
//! rules and the token expiry in place.
//!
//! Ordering hazard: a connection becomes a local member of a room only when
//! the owner's `Joined` is handled here. The owner sends `Joined` after every
//! `Deliver` of a seq at or below the one `joined` reports and before any
//! later one, on the same FIFO path, so the replay and the live stream meet
//! without a gap or a duplicate.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::auth::rules::Rules;
use crate::metrics::CloseReason;
use crate::proto::msg::{self, Member, Op, Ref};
use crate::proto::ws::{self as wsproto, Event};
use crate::rooms::core::{Asked, Command, History, Join, Leave, Presence, Publish, Reply};
use crate::rooms::RoomName;

use super::conn::{Slot, State, WsKind};
use super::mail::Asker;
use super::{Reactor, Step};

/// Rooms one connection may be in at once.
pub(super) const MAX_ROOMS_PER_CONN: usize = 256;
/// `send`s one connection may have waiting for their acks; parsing its
/// input pauses at this many (TCP pushes back on the peer).
pub(super) const MAX_INFLIGHT: u16 = 256;
/// Joins, history pages and presence lists one connection may have
/// waiting for their (possibly large) answers.
pub(super) const MAX_HEAVY: u16 = 8;

/// A decoded frame, owned, so the input buffer can be let go before acting.
enum Action {
    Nothing,
    Reply(Bytes),
    Pong(Bytes),
    PeerClose(Option<u16>),
    Op { r#ref: Option<Ref>, op: OwnedOp },
}

enum OwnedOp {
    Join { room: RoomName, since: Option<u64> },
    Leave { room: RoomName },
    Send { room: RoomName, body: Box<RawValue>, id: Option<Box<str>> },
    History { room: RoomName, before: Option<u64>, after: Option<u64>, limit: usize },
    Presence { room: RoomName },
    Ping,
    Refresh { token: Box<str> },
}

fn own(op: Op<'_>) -> OwnedOp {
    match op {
        Op::Join { room, since } => OwnedOp::Join { room: RoomName::from(room.as_ref()), since },
        Op::Leave { room } => OwnedOp::Leave { room: RoomName::from(room.as_ref()) },
        Op::Send { room, body, id } => OwnedOp::Send {
            room: RoomName::from(room.as_ref()),
            body: body.to_owned(),
            id: id.map(|i| Box::from(i.as_ref())),
        },
        Op::History { room, before, after, limit } => {
            OwnedOp::History { room: RoomName::from(room.as_ref()), before, after, limit }
        }
        Op::Presence { room } => OwnedOp::Presence { room: RoomName::from(room.as_ref()) },
        Op::Ping => OwnedOp::Ping,
        Op::Refresh { token } => OwnedOp::Refresh { token: Box::from(token.as_ref()) },
    }
}

/// Whether `rules` allow `op` (a `leave`, a `ping` and a `refresh` are
/// always allowed: none of them reads or writes a room).
fn permitted(rules: &Rules, op: &OwnedOp) -> bool {
    match op {
        OwnedOp::Join { room, .. } | OwnedOp::History { room, .. } | OwnedOp::Presence { room } => rules.may_read(room),
        OwnedOp::Send { room, .. } => rules.may_send(room),
        OwnedOp::Leave { .. } | OwnedOp::Ping | OwnedOp::Refresh { .. } => true,
    }
}

/// The message of a `forbidden` for `op` (one `permitted` refused).
fn forbidden_message(op: &OwnedOp) -> &'static str {
    match op {
        OwnedOp::Send { .. } => "this token may not send to this room",
        _ => "this token may not read this room",
    }
}

impl Reactor {
    pub(super) fn ws_step(&mut self, key: u32, buf: &mut [u8]) -> Step {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return Step::Stop;
        };
        let State::Ws(ws) = &mut conn.state else {
            return Step::Stop;
        };
        let kind = ws.kind;
        let deflate_max = conn.deflate_max;
        let (used, action) = match ws.decoder.decode(buf) {
            Ok(None) => return Step::NeedMore,
            Ok(Some((used, None))) => (used, Action::Nothing),
            Ok(Some((used, Some(ev)))) => {
                ws.last_rx = now;
                ws.ping_sent = false;
                self.counters.frames_in += 1;
                let deflate =
                    Deflate { deflater: &mut self.deflater, max: deflate_max, min: self.live.config.deflate_min_bytes };
                (used, act(kind, ev, deflate))
            }
            Err(e) => {
                // Failing the connection (RFC 6455 7.1.7): say why in a close
                // frame, then drop TCP once it is written; the peer broke the
                // protocol, so its close frame is not awaited.
                self.send(key, Bytes::from(wsproto::encode_close(e.close_code(), &e.to_string())));
                self.counters.frames_out += 1;
                self.set_closing(key, false, CloseReason::Protocol);
                return Step::Stop;
            }
        };
        match action {
            Action::Nothing => {}
            Action::Reply(b) => {
                self.counters.frames_out += 1;
                self.send(key, b);
            }
            Action::Pong(b) => self.send(key, b),
            Action::PeerClose(code) => {
                // Echo the code (1000 when none came) and close once written.
                let reply = code.unwrap_or(1000);
                self.send(key, Bytes::from(wsproto::encode_close(reply, "")));
                self.set_closing(key, false, CloseReason::Normal);
                return Step::Stop;
            }
            Action::Op { r#ref, op } => self.op(key, r#ref, op),
        }
        Step::Consumed(used)
    }

    /// Input after we sent a close frame: wait for the peer's close, ignore
    /// the rest.
    pub(super) fn closing_step(&mut self, key: u32, buf: &mut [u8]) -> Step {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return Step::Stop;
        };
        let State::Closing(c) = &conn.state else {
            return Step::Stop;
        };
        if !c.await_peer_close {
            return Step::Consumed(buf.len());
        }
        let reason = c.reason;
        // A fresh decoder suffices: a close frame is never fragmented, and
        // a half-received data message before it is of no interest now.
        let mut dec = wsproto::Decoder::new(usize::MAX >> 1);
        match dec.decode(buf) {
            Ok(None) => Step::NeedMore,
            Ok(Some((_, Some(Event::Close { .. })))) | Err(_) => {
                if let Some(conn) = self.conns.get_mut(key as usize) {
                    if let State::Closing(c) = &mut conn.state {
                        c.await_peer_close = false;
                    }
                }
                if self.conns.get(key as usize).is_some_and(|c| c.out.is_empty()) {
                    self.close_now(key, reason);
                }
                Step::Stop
            }
            Ok(Some((used, _))) => Step::Consumed(used),
        }
    }

    fn op(&mut self, key: u32, r#ref: Option<Ref>, op: OwnedOp) {
        let me = self.conn_ref(key);
        let now = self.now;
        let cfg = &self.live.config;
        let (rate, burst) = (cfg.send_rate, cfg.send_burst);
        let (req_rate, req_burst) = (cfg.request_rate, cfg.request_burst);
        let max_depth = cfg.max_body_depth;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        // Every request but `send` draws on the request bucket: joins,
        // history pages and presence cost owners work and answers cost
        // memory, so a peer gets a bounded share of them.
        if !matches!(op, OwnedOp::Send { .. }) {
            if let Err(wait) = ws.requests.take(req_rate, req_burst, now) {
                self.counters.rate_limited += 1;
                let e = msg::encode_error(r#ref.as_ref(), "rate_limited", "too many requests; slow down", Some(wait));
                return self.reply(key, e);
            }
        }
        // The rules are checked here, on the reactor the client is
        // connected to, before anything goes to a room's owner (which, in a
        // cluster, may be another node that trusts this one).
        if !permitted(&ws.rules, &op) {
            let e = msg::encode_error(r#ref.as_ref(), "forbidden", forbidden_message(&op), None);
            return self.reply(key, e);
        }
        let user = ws.user.clone();
        match op {
            OwnedOp::Ping => self.reply(key, msg::encode_pong(r#ref.as_ref())),
            OwnedOp::Refresh { token } => self.refresh(key, r#ref, &token),
            OwnedOp::Join { room, since } => {
                ws.joins = ws.joins.wrapping_add(1);
                let tag = ws.joins;
                match ws.rooms.iter_mut().find(|(r, _)| *r == room) {
                    // Joining again: the owner counts the membership once;
                    // this one more answer is awaited.
                    Some((_, Slot::Joining { waiting, .. })) => *waiting = waiting.saturating_add(1),
                    Some((_, Slot::Listed(_))) => {}
                    None => {
                        if ws.rooms.len() >= MAX_ROOMS_PER_CONN {
                            let m = format!("at most {MAX_ROOMS_PER_CONN} rooms per connection");
                            return self.reply(key, msg::encode_error(r#ref.as_ref(), "forbidden", &m, None));
                        }
                        ws.rooms.push((room.clone(), Slot::Joining { first: tag, waiting: 1 }));
                    }
                }
                ws.heavy += 1;
                let owner = Reactor::owner_at(&self.shared, &room);
                let asker = Asker { tag, ..Asker::ws(me, r#ref) };
                let member = member_id(me);
                let join = Join { room, user, reactor: self.id, member, since, asker };
                self.ask_owner(owner, Command::Join(join));
            }
            OwnedOp::Leave { room } => {
                let Some(i) = ws.rooms.iter().position(|(r, _)| *r == room) else {
                    return self.reply(
                        key,
                        msg::encode_error(r#ref.as_ref(), "not_joined", "not a member of this room", None),
                    );
                };
                let (room, slot) = ws.rooms.swap_remove(i);
                let left = msg::encode_left(r#ref.as_ref(), &room, None);
                self.leave_room(key, user, (room, slot), left);
            }
            OwnedOp::Send { room, body, id } => {
                if let Err(wait) = ws.bucket.take(rate, burst, now) {
                    self.counters.rate_limited += 1;
                    let e = msg::encode_error(r#ref.as_ref(), "rate_limited", "too many sends; slow down", Some(wait));
                    return self.reply(key, e);
                }
                if let Err(e) = msg::check_body(body.get(), max_depth) {
                    return self.reply(key, msg::encode_error(r#ref.as_ref(), "bad_request", &e.to_string(), None));
                }
                let owner = Reactor::owner_at(&self.shared, &room);
                if owner != self.id && !self.overflow[owner].is_empty() {
                    // The owner's mailbox is backed up (see `backed_up`).
                    let e =
                        msg::encode_error(r#ref.as_ref(), "overloaded", "the room's owner is busy; retry", Some(100));
                    return self.reply(key, e);
                }
                ws.inflight += 1;
                let publish = Publish { room, user, body, id, asker: Asker::ws(me, r#ref) };
                self.ask_owner(owner, Command::Publish(publish));
            }
            OwnedOp::History { room, before, after, limit } => {
                ws.heavy += 1;
                let owner = Reactor::owner_at(&self.shared, &room);
                let history = History { room, before, after, limit, asker: Asker::ws(me, r#ref) };
                self.ask_owner(owner, Command::History(history));
            }
            OwnedOp::Presence { room } => {
                ws.heavy += 1;
                let owner = Reactor::owner_at(&self.shared, &room);
                self.ask_owner(owner, Command::Presence(Presence { room, asker: Asker::ws(me, r#ref) }));
            }
        }
    }

    /// `refresh`: the connection goes on with a new token of the same user.
    /// Refused (`unauthorized`, `forbidden`), nothing changes: it stays on
    /// its old token until that one expires. Accepted, the rules and the
    /// expiry are the new token's, and every room those rules no longer
    /// allow is left as a `leave` would leave it, with a `left` frame whose
    /// reason is `forbidden`; those frames come before `refreshed`, so a
    /// client holding the reply has seen every consequence of the swap.
    fn refresh(&mut self, key: u32, r#ref: Option<Ref>, token: &str) {
        let unauthorized = |m: &str| msg::encode_error(r#ref.as_ref(), "unauthorized", m, None);
        let claims = match self.shared.auth.verify(token) {
            Ok(c) => c,
            Err(e) => return self.reply(key, unauthorized(&e.to_string())),
        };
        let rules = match Rules::for_claims(&claims, &self.default_rules) {
            Ok(r) => r,
            Err(e) => return self.reply(key, unauthorized(&format!("invalid token: {e}"))),
        };
        let Some(State::Ws(ws)) = self.conns.get_mut(key as usize).map(|c| &mut c.state) else {
            return;
        };
        if *ws.user != *claims.sub {
            let m = "a refresh token must be for the connection's own user (`sub`)";
            return self.reply(key, msg::encode_error(r#ref.as_ref(), "forbidden", m, None));
        }
        ws.exp = Some(claims.exp);
        ws.rules = rules.clone();
        let (kept, gone): (Vec<_>, Vec<_>) =
            std::mem::take(&mut ws.rooms).into_iter().partition(|(room, _)| rules.may_read(room));
        ws.rooms = kept;
        let user = ws.user.clone();
        for (room, slot) in gone {
            let left = msg::encode_left(None, &room, Some("forbidden"));
            self.leave_room(key, user.clone(), (room, slot), left);
        }
        self.reply(key, msg::encode_refreshed(r#ref.as_ref(), claims.exp));
        // The expiry timer is filed anew: `schedule` keeps the earlier of
        // two deadlines, and a later one is found when the earlier fires
        // (`on_timer` computes deadlines from `exp`, never remembers them).
        let left = super::token_left(claims.exp, super::leeway_secs(&self.shared));
        self.schedule(key, super::timer::later(self.now, left));
    }

    /// Connection `key` (of `user`), just taken off its room list, leaves
    /// `room`: off the local member list, the `left` frame to the client,
    /// and the leave to the room's owner.
    pub(super) fn leave_room(
        &mut self,
        key: u32,
        user: crate::rooms::UserId,
        (room, slot): (RoomName, Slot),
        left: Bytes,
    ) {
        if let Slot::Listed(slot) = slot {
            self.unlist(&room, key, slot);
        }
        self.reply(key, left);
        let owner = Reactor::owner_at(&self.shared, &room);
        let leave = Leave { room, user, reactor: self.id, member: member_id(self.conn_ref(key)) };
        self.ask_owner(owner, Command::Leave(leave));
    }

    /// Takes `key` out of the local member list of `room` (its slot there is
    /// `slot`), and gives the member that moved into that slot its new one.
    pub(super) fn unlist(&mut self, room: &RoomName, key: u32, slot: u32) {
        let Some((moved, new_slot)) = self.local.remove_at(room, slot, key) else {
            return;
        };
        if let Some(State::Ws(ws)) = self.conns.get_mut(moved as usize).map(|c| &mut c.state) {
            if let Some(entry) = ws.rooms.iter_mut().find(|(r, _)| r == room) {
                entry.1 = Slot::Listed(new_slot);
            }
        }
    }

    pub(super) fn reply(&mut self, key: u32, frame: Bytes) {
        self.counters.frames_out += 1;
        self.send(key, frame);
    }

    /// Takes the connection out of every room it is in (it is closing).
    pub(super) fn leave_all(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        if ws.rooms.is_empty() {
            return;
        }
        let rooms = std::mem::take(&mut ws.rooms);
        let user = ws.user.clone();
        let member = member_id(self.conn_ref(key));
        for (room, slot) in rooms {
            if let Slot::Listed(slot) = slot {
                self.unlist(&room, key, slot);
            }
            let owner = Reactor::owner_at(&self.shared, &room);
            let leave = Leave { room, user: user.clone(), reactor: self.id, member };
            self.ask_owner(owner, Command::Leave(leave));
        }
    }

    // ---------------------------------------------------------- answers

    /// An owner's answer to one of this connection's requests, as frames.
    /// A successful join makes the connection a local member here, before
    /// its replay is queued: that is what keeps the replay and the live
    /// stream free of gaps and duplicates (see `rooms::core`).
    pub(super) fn ws_answer(&mut self, key: u32, r#ref: Option<&Ref>, tag: u32, reply: Reply) {
        let Some(c) = self.conns.get_mut(key as usize) else { return };
        let State::Ws(ws) = &mut c.state else { return };
        let asked = match &reply {
            Reply::Ack { .. } => Asked::Publish,
            Reply::Refused { to, .. } => *to,
            Reply::Joined { .. } => Asked::Join,
            Reply::History { .. } => Asked::History,
            Reply::Presence { .. } => Asked::Presence,
        };
        if asked == Asked::Publish {
            ws.inflight = ws.inflight.saturating_sub(1);
        } else {
            ws.heavy = ws.heavy.saturating_sub(1);
        }
        // A `refresh` may have taken the room away while this answer was on
        // its way: nothing read from it reaches the client then (the join,
        // if this is one, was already left at the owner).
        let read = match &reply {
            Reply::Joined { room, .. } | Reply::History { room, .. } | Reply::Presence { room, .. } => Some(room),
            Reply::Ack { .. } | Reply::Refused { .. } => None,
        };
        if read.is_some_and(|room| !ws.rules.may_read(room)) {
            let e = msg::encode_error(r#ref, "forbidden", "this token may not read this room", None);
            self.reply(key, e);
            return self.maybe_resume(key);
        }
        match reply {
            Reply::Joined { room, last, recovered, replay } => {
                // Only an answer to this membership's joins lists it: one
                // made before a leave answers a join the connection gave up.
                if let Some(i) = ws.rooms.iter().position(|(r, s)| *r == room && s.answers(tag)) {
                    if matches!(ws.rooms[i].1, Slot::Joining { .. }) {
                        ws.rooms[i].1 = Slot::Listed(self.local.add(&room, key));
                    }
                }
                self.reply(key, msg::encode_joined(r#ref, &room, last, recovered));
                for f in replay {
                    self.reply(key, f);
                }
                // The replay is capped, but what committed while it was read
                // comes along whole (it is live traffic): past the cap the
                // member is a slow consumer, as it would be had those frames
                // come one by one.
                let cap = self.live.config.max_queue_bytes;
                if self.conns.get(key as usize).is_some_and(|c| c.out.len() > cap) {
                    return self.slow_consumer(key);
                }
            }
            Reply::Ack { room, seq, ts, id } => self.reply(key, msg::encode_ack(r#ref, &room, seq, ts, id.as_deref())),
            Reply::History { room, page, more } => {
                self.reply(key, msg::encode_history(r#ref, &room, page.iter(), more))
            }
            Reply::Presence { room, members } => {
                let members = members.iter().map(|(u, since)| Member { user: u, since: *since });
                self.reply(key, msg::encode_presence(r#ref, &room, members));
            }
            Reply::Refused { to, room, code, message, .. } => {
                if to == Asked::Join {
                    // A failed join leaves no pending membership behind (one
                    // already confirmed stays).
                    if let Some(i) = ws.rooms.iter().position(|(r, s)| *r == room && s.answers(tag)) {
                        if let Slot::Joining { waiting, .. } = &mut ws.rooms[i].1 {
                            *waiting = waiting.saturating_sub(1);
                            if *waiting == 0 {
                                ws.rooms.swap_remove(i);
                            }
                        }
                    }
                }
                let retry = match code {
                    "overloaded" => Some(100),
                    "unavailable" => Some(crate::cluster::node::RETRY_AFTER_MS),
                    _ => None,
                };
                self.reply(key, msg::encode_error(r#ref, code, &message, retry));
            }
        }
        self.maybe_resume(key);
    }

    /// Queues the same frame on every local member: a refcount bump and a
    /// queue push each, no copy. Members past their queue cap are closed
    /// with 4000 afterwards; nobody else waits for them.
    ///
    /// Members that negotiated permessage-deflate get the compressed twin
    /// of the frame instead, made at most once per message: by the first
    /// reactor with a member that takes it, in `twin` (shared by every
    /// reactor the owner sends the message to; a `OnceLock`, so a second
    /// reactor needing it meanwhile waits for that one compression, per
    /// message, never per member), and shared the same way. Whether a message goes
    /// compressed is decided once (`deflate-min-bytes`), not per member;
    /// per member is only the window its client allowed (`deflate_max`).
    pub(super) fn deliver_local(&mut self, room: &str, frame: Bytes, twin: Option<&super::mail::Twin>) {
        let cap = self.live.config.max_queue_bytes;
        // Anything but one data frame (none is expected) goes plain to all.
        let plain_len = crate::proto::deflate::split_server_frame(&frame).map_or(0, |(_, p)| p.len());
        // No permessage-deflate connection has `deflate_max` above 0, so
        // with the setting off no member takes the compressed branch.
        let deflatable = plain_len > 0 && plain_len >= self.live.config.deflate_min_bytes;
        // `None` until the first deflate member; `Some(None)` when the
        // frame cannot or should not be compressed (then all get it plain).
        let mut deflated: Option<Option<Bytes>> = None;
        let members = self.local.members(room);
        self.counters.delivered += members.len() as u64;
        self.counters.frames_out += members.len() as u64;
        for &key in members {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            let compressed = if deflatable && plain_len <= conn.deflate_max {
                // Once per message: the owner's other reactors share it.
                deflated
                    .get_or_insert_with(|| match twin {
                        Some(t) => t
                            .get_or_init(|| {
                                self.counters.deflated += 1;
                                self.deflater.deflate_frame(&frame)
                            })
                            .clone(),
                        None => {
                            self.counters.deflated += 1;
                            self.deflater.deflate_frame(&frame)
                        }
                    })
                    .as_ref()
            } else {
                None
            };
            conn.out.push(compressed.unwrap_or(&frame).clone());
            if !conn.flush_queued {
                conn.flush_queued = true;
                self.pending_flush.push(key);
            }
            if conn.out.len() > cap {
                // Over the cap: write now, and only a member that still
                // cannot take it is a slow consumer (a burst to a fast
                // reader drains into its socket here). A socket already
                // full since its last writable edge is not tried again:
                // closing hundreds of slow members must not cost a write
                // call per member per frame.
                if !conn.write_blocked {
                    match conn.transport.flush(&mut conn.out, usize::MAX) {
                        Ok((outcome, n)) => {
                            self.counters.bytes_out += n as u64;
                            conn.write_blocked = outcome == super::transport::WriteOutcome::Blocked;
                        }
                        Err(_) => conn.write_blocked = true,
                    }
                }
                if conn.out.len() > cap && !conn.slow {
                    conn.slow = true;
                    self.slow.push(key);
                }
            }
        }
        // Closing a slow member posts its leave, whose presence diff is
        // delivered here again and may find more slow members: those join
        // the list the outermost call works through, instead of nesting
        // one call deeper per member (a room of thousands of slow members
        // would otherwise overflow the stack).
        if self.closing_slow {
            return;
        }
        self.closing_slow = true;
        while let Some(key) = self.slow.pop() {
            self.slow_consumer(key);
        }
        self.closing_slow = false;
    }

    fn slow_consumer(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !matches!(conn.state, State::Ws(_)) {
            return;
        }
        let queued = conn.out.len();
        let dropped = conn.out.truncate_unstarted();
        self.counters.queue_drops += dropped.len() as u64;
        if crate::log::enabled(crate::log::Level::Warn) {
            let ip = conn.ip.map(|ip| ip.to_string()).unwrap_or_default();
            let user = match &conn.state {
                State::Ws(ws) => ws.user.to_string(),
                _ => String::new(),
            };
            crate::log::event(
                crate::log::Level::Warn,
                "slow_consumer",
                &format!("slow consumer closed (4000): {user} at {ip}, {queued} bytes queued"),
                &[
                    ("user", (&user).into()),
                    ("ip", (&ip).into()),
                    ("queued_bytes", queued.into()),
                    ("dropped_frames", dropped.len().into()),
                ],
            );
        }
        self.reap(dropped);
        self.ws_close(key, 4000, "slow consumer", CloseReason::SlowConsumer);
    }
}

/// How a connection is named as a room member: its reactor and slab slot,
/// unique among live connections. A slot is reused only after the closed
/// connection's leaves were posted, and the owner gets those first (mail
/// from one reactor stays in order).
fn member_id(c: super::mail::ConnRef) -> crate::rooms::MemberId {
    (u64::from(c.reactor) << 32) | u64::from(c.key)
}

/// What an echo reply needs to go compressed on a permessage-deflate
/// connection.
struct Deflate<'a> {
    deflater: &'a mut crate::proto::deflate::Deflater,
    /// The connection's `deflate_max` (0: not negotiated).
    max: usize,
    /// `deflate-min-bytes`.
    min: usize,
}

impl Deflate<'_> {
    /// The frame an echo sends back: compressed when negotiated and worth it.
    fn echo(self, opcode: u8, payload: &[u8]) -> Bytes {
        let plain = wsproto::encode_frame(opcode, payload);
        if payload.len() >= self.min && payload.len() <= self.max {
            if let Some(f) = self.deflater.deflate_frame(&plain) {
                return f;
            }
        }
        Bytes::from(plain)
    }
}

/// Turns one decoded frame into what should happen next.
fn act(kind: WsKind, ev: Event<'_>, deflate: Deflate<'_>) -> Action {
    match ev {
        Event::Ping(p) => Action::Pong(Bytes::from(wsproto::encode_frame(wsproto::OP_PONG, p))),
        Event::Pong(_) => Action::Nothing,
        Event::Close { code, .. } => Action::PeerClose(code),
        Event::Text(t) if kind == WsKind::Echo => Action::Reply(deflate.echo(wsproto::OP_TEXT, t)),
        Event::Binary(b) if kind == WsKind::Echo => Action::Reply(deflate.echo(wsproto::OP_BINARY, b)),
        Event::Binary(_) => {
            Action::Reply(msg::encode_error(None, "bad_request", "binary frames are not part of the protocol", None))
        }
        Event::Text(t) => match msg::decode(t) {
            Ok(inc) => Action::Op { r#ref: inc.r#ref, op: own(inc.op) },
            Err(e) => Action::Reply(msg::encode_error(e.r#ref.as_ref(), e.code, &e.message, None)),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::config::Config;
    use crate::reactor::testkit::{client_frame, server_frames, upgrade_request, ConnId, Harness, SECRET};

    /// A token signed with the harness's secret carrying `claims` (and a
    /// `sub` and an `exp` an hour away unless `claims` has them).
    fn token(claims: Value) -> String {
        let mut c = json!({"sub": "ann", "exp": crate::auth::now_unix() + 3600});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), claims.as_object()) {
            c.extend(extra.clone());
        }
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &c, &key).unwrap()
    }

    fn ws(h: &mut Harness, token: &str) -> ConnId {
        let c = h.connect();
        h.input(c, &upgrade_request(token));
        let head = String::from_utf8_lossy(&h.take_output(c)).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c
    }

    /// Sends `op` and returns every frame that came back, as JSON.
    fn call(h: &mut Harness, c: ConnId, op: Value) -> Vec<Value> {
        h.input(c, &client_frame(true, 1, op.to_string().as_bytes()));
        frames(h, c)
    }

    fn frames(h: &mut Harness, c: ConnId) -> Vec<Value> {
        let out = h.take_output(c);
        server_frames(&out)
            .0
            .into_iter()
            .filter(|(op, _)| *op == 1)
            .map(|(_, p)| serde_json::from_slice(&p).unwrap())
            .collect()
    }

    fn forbidden(got: &[Value], r: &str) -> bool {
        got.iter().any(|f| f["op"] == "error" && f["code"] == "forbidden" && f["ref"] == r)
    }

    fn op_of(got: &[Value], op: &str, r: &str) -> bool {
        got.iter().any(|f| f["op"] == op && f["ref"] == r)
    }

    fn http(h: &mut Harness, req: &str) -> String {
        let c = h.connect();
        h.input(c, req.as_bytes());
        String::from_utf8_lossy(&h.take_output(c)).into_owned()
    }

    /// Upgrades with `extensions` offered; returns the connection and the
    /// `Sec-WebSocket-Extensions` answer, if any.
    fn ws_offering(h: &mut Harness, token: &str, extensions: &str) -> (ConnId, Option<String>) {
        let c = h.connect();
        let mut req = String::from_utf8(upgrade_request(token)).unwrap();
        req.truncate(req.len() - 2);
        req.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n\r\n"));
        h.input(c, req.as_bytes());
        let head = String::from_utf8_lossy(&h.take_output(c)).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let ext = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: ")).map(str::to_string);
        (c, ext)
    }

    /// Raw server frames: (first byte, payload).
    fn raw_frames(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut rest = out;
        while let Some((op, payload)) = crate::proto::deflate::split_server_frame_prefix(rest) {
            frames.push((rest[0], payload.to_vec()));
            rest = &rest[crate::proto::ws::header_len(payload.len()) + payload.len()..];
            let _ = op;
        }
        frames
    }

    fn inflate(z: &[u8]) -> Vec<u8> {
        let mut inf = crate::proto::deflate::Inflater::new(true);
        let mut out = Vec::new();
        inf.push(z, 1 << 20, &mut out).unwrap();
        inf.finish(1 << 20, &mut out).unwrap();
        out
    }

    #[test]
    fn deflate_members_get_the_compressed_frame_others_the_plain_one() {
        let mut h = Harness::new(Config { send_rate: 0.0, ..Config::default() }).unwrap();
        let (z1, e1) = ws_offering(&mut h, &token(json!({"sub": "z1"})), "permessage-deflate; client_max_window_bits");
        assert_eq!(e1.as_deref(), Some("permessage-deflate; server_no_context_takeover"));
        let (z2, e2) = ws_offering(
            &mut h,
            &token(json!({"sub": "z2"})),
            "foo, permessage-deflate; bad_param, permessage-deflate; client_no_context_takeover",
        );
        assert_eq!(e2.as_deref(), Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"));
        // A 9-bit window: messages over 512 bytes go plain to it.
        let (small, e3) =
            ws_offering(&mut h, &token(json!({"sub": "w9"})), "permessage-deflate; server_max_window_bits=9");
        assert_eq!(e3.as_deref(), Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9"));
        let plain = ws(&mut h, &token(json!({"sub": "p"})));
        for c in [z1, z2, small, plain] {
            call(&mut h, c, json!({"op":"join","room":"r"}));
        }
        for c in [z1, z2, small, plain] {
            h.take_output(c);
        }
        let text: String = (0..40).map(|i| format!("{{\"n\":{i},\"text\":\"hello room\"}},")).collect();
        h.input(
            plain,
            &client_frame(true, 1, json!({"op":"send","room":"r","body":{"t": text}}).to_string().as_bytes()),
        );
        let mut wire = Vec::new();
        for c in [z1, z2, small, plain] {
            let out = h.take_output(c);
            let frames = raw_frames(&out);
            let (b0, payload) = frames
                .iter()
                .find(|(b0, p)| {
                    let body = if b0 & 0x40 != 0 { inflate(p) } else { p.clone() };
                    String::from_utf8_lossy(&body).contains("\"op\":\"msg\"")
                })
                .expect("a msg frame")
                .clone();
            let body = if b0 & 0x40 != 0 { inflate(&payload) } else { payload.clone() };
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["body"]["t"], text.as_str());
            wire.push((b0, payload.len(), body.len()));
        }
        // Compressed (RSV1) to the two deflate members, and the same bytes;
        // plain to the small window and the plain member.
        assert_eq!(wire[0].0, 0xC1);
        assert_eq!(wire[1], wire[0]);
        assert_eq!(wire[2].0, 0x81);
        assert_eq!(wire[3].0, 0x81);
        assert!(wire[0].1 * 3 < wire[3].1, "{wire:?}");
        // Short frames (the ack, under deflate-min-bytes) go plain to deflate members too.
        let got = call(&mut h, z1, json!({"op":"ping","ref":"p"}));
        assert!(op_of(&got, "pong", "p"));
        // Input compressed by the client is understood.
        let mut z = Vec::new();
        crate::proto::deflate::Deflater::new().compress(json!({"op":"ping","ref":"zz"}).to_string().as_bytes(), &mut z);
        let mut f = Vec::new();
        crate::proto::ws::write_masked_frame_rsv1(&mut f, true, 1, &z, [1, 2, 3, 4]);
        h.input(z2, &f);
        assert!(op_of(&frames(&mut h, z2), "pong", "zz"));
        // ... but not from a connection that did not negotiate it: 1002.
        h.input(plain, &f);
        let out = h.take_output(plain);
        assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xEA], "{out:?}");
        h.check_invariants().unwrap();
    }

    #[test]
    fn deflate_off_negotiates_nothing() {
        let mut h = Harness::new(Config { permessage_deflate: false, ..Config::default() }).unwrap();
        let (_, ext) = ws_offering(&mut h, &token(json!({})), "permessage-deflate");
        assert_eq!(ext, None);
    }

    #[test]
    fn rooms_and_send_claims_over_websocket() {
        let mut h = Harness::new(Config { send_rate: 0.0, ..Config::default() }).unwrap();
        let c = ws(&mut h, &token(json!({"rooms": ["a", "t-*"], "send": ["a"]})));
        assert!(op_of(&call(&mut h, c, json!({"op":"join","room":"a","ref":"1"})), "joined", "1"));
        assert!(op_of(&call(&mut h, c, json!({"op":"join","room":"t-1","ref":"2"})), "joined", "2"));
        assert!(forbidden(&call(&mut h, c, json!({"op":"join","room":"b","ref":"3"})), "3"));
        assert!(forbidden(&call(&mut h, c, json!({"op":"join","room":"t","ref":"3b"})), "3b"));
        assert!(forbidden(&call(&mut h, c, json!({"op":"send","room":"t-1","body":1,"ref":"4"})), "4"));
        assert!(forbidden(&call(&mut h, c, json!({"op":"send","room":"b","body":1,"ref":"5"})), "5"));
        assert!(op_of(&call(&mut h, c, json!({"op":"send","room":"a","body":1,"ref":"6"})), "ack", "6"));
        assert!(forbidden(&call(&mut h, c, json!({"op":"history","room":"b","ref":"7"})), "7"));
        assert!(forbidden(&call(&mut h, c, json!({"op":"presence","room":"b","ref":"8"})), "8"));
        assert!(op_of(&call(&mut h, c, json!({"op":"history","room":"t-2","ref":"9"})), "history", "9"));
        assert!(op_of(&call(&mut h, c, json!({"op":"presence","room":"t-1","ref":"10"})), "presence", "10"));
        // Refusals leave the connection as it was.
        assert!(h.is_open(c));
        assert!(op_of(&call(&mut h, c, json!({"op":"ping","ref":"11"})), "pong", "11"));
        h.check_invariants().unwrap();
    }

    #[test]
    fn default_rooms_admin_and_bad_claims() {
        let cfg = Config { default_rooms: "lobby, pub-*".into(), anonymous: true, ..Config::default() };
        let mut h = Harness::new(cfg).unwrap();
        // No claim: the default.
        let plain = ws(&mut h, &token(json!({})));
        assert!(op_of(&call(&mut h, plain, json!({"op":"join","room":"pub-1","ref":"1"})), "joined", "1"));
        assert!(forbidden(&call(&mut h, plain, json!({"op":"join","room":"x","ref":"2"})), "2"));
        // Anonymous: the default too.
        let anon = h.connect();
        let req = "GET /v1/ws?user=zed HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        h.input(anon, req.as_bytes());
        h.take_output(anon);
        assert!(op_of(&call(&mut h, anon, json!({"op":"join","room":"lobby","ref":"1"})), "joined", "1"));
        assert!(forbidden(&call(&mut h, anon, json!({"op":"send","room":"x","body":0,"ref":"2"})), "2"));
        // Admin: everything, whatever its rooms say.
        let admin = ws(&mut h, &token(json!({"role": "admin", "rooms": []})));
        assert!(op_of(&call(&mut h, admin, json!({"op":"join","room":"x","ref":"1"})), "joined", "1"));
        // A claim that is not patterns is an invalid token: 401 before the upgrade.
        for bad in [json!({"rooms": ["a*b"]}), json!({"rooms": "lobby"}), json!({"send": [""]})] {
            let c = h.connect();
            h.input(c, &upgrade_request(&token(bad.clone())));
            let out = String::from_utf8_lossy(&h.take_output(c)).into_owned();
            assert!(out.starts_with("HTTP/1.1 401") && out.contains("claim"), "{bad}: {out}");
        }
        h.check_invariants().unwrap();
    }

    #[test]
    fn room_endpoints_answer_403_outside_the_rules() {
        let mut h = Harness::new(Config::default()).unwrap();
        let t = token(json!({"rooms": ["r"], "send": []}));
        let get = |room: &str| {
            format!("GET /v1/rooms/{room}/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n")
        };
        let post = |room: &str| {
            format!(
                "POST /v1/rooms/{room}/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\
                 Content-Length: 10\r\n\r\n{{\"body\":1}}"
            )
        };
        assert!(http(&mut h, &get("r")).starts_with("HTTP/1.1 200"));
        let out = http(&mut h, &get("s"));
        assert!(out.starts_with("HTTP/1.1 403") && out.contains(r#""code":"forbidden""#), "{out}");
        let presence = format!("GET /v1/rooms/s/presence HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n");
        assert!(http(&mut h, &presence).starts_with("HTTP/1.1 403"));
        assert!(http(&mut h, &post("r")).starts_with("HTTP/1.1 403"));
        let admin = token(json!({"role": "admin"}));
        let req = format!(
            "POST /v1/rooms/s/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\
             Content-Length: 10\r\n\r\n{{\"body\":1}}"
        );
        assert!(http(&mut h, &req).starts_with("HTTP/1.1 201"));
    }

    #[test]
    fn refresh_swaps_rules_and_leaves_rooms() {
        let mut h = Harness::new(Config { send_rate: 0.0, ..Config::default() }).unwrap();
        let c = ws(&mut h, &token(json!({"rooms": ["a", "b", "t-*"]})));
        let other = ws(&mut h, &token(json!({"sub": "bo"})));
        for (i, room) in ["a", "b", "t-1"].iter().enumerate() {
            assert!(op_of(
                &call(&mut h, c, json!({"op":"join","room":room,"ref":i.to_string()})),
                "joined",
                &i.to_string()
            ));
        }
        call(&mut h, other, json!({"op":"join","room":"b"}));
        frames(&mut h, c);

        // Refused refreshes change nothing.
        let got = call(&mut h, c, json!({"op":"refresh","token":token(json!({"sub":"bo"})),"ref":"x1"}));
        assert!(forbidden(&got, "x1"), "{got:?}");
        let expired = token(json!({"exp": crate::auth::now_unix() - 3600}));
        let got = call(&mut h, c, json!({"op":"refresh","token":expired,"ref":"x2"}));
        assert!(got.iter().any(|f| f["code"] == "unauthorized" && f["ref"] == "x2"), "{got:?}");
        let got = call(&mut h, c, json!({"op":"refresh","token":"not.a.jwt","ref":"x3"}));
        assert!(got.iter().any(|f| f["code"] == "unauthorized" && f["ref"] == "x3"), "{got:?}");
        let got = call(&mut h, c, json!({"op":"refresh","token":token(json!({"rooms":["a*b"]})),"ref":"x4"}));
        assert!(got.iter().any(|f| f["code"] == "unauthorized" && f["ref"] == "x4"), "{got:?}");
        assert!(op_of(&call(&mut h, c, json!({"op":"send","room":"b","body":0,"ref":"x5"})), "ack", "x5"));

        // Narrowing: `b` and `t-1` are left (before `refreshed`), `a` kept.
        let exp = crate::auth::now_unix() + 7200;
        let got = call(&mut h, c, json!({"op":"refresh","token":token(json!({"rooms":["a"],"exp":exp})),"ref":"n"}));
        let left: Vec<&Value> = got.iter().filter(|f| f["op"] == "left").collect();
        assert_eq!(left.len(), 2, "{got:?}");
        assert!(left.iter().all(|f| f["reason"] == "forbidden" && f.get("ref").is_none()), "{got:?}");
        let rooms: Vec<&str> = left.iter().filter_map(|f| f["room"].as_str()).collect();
        assert!(rooms.contains(&"b") && rooms.contains(&"t-1"), "{got:?}");
        let at = got.iter().position(|f| f["op"] == "refreshed").unwrap();
        assert_eq!(got[at], json!({"op":"refreshed","ref":"n","exp":exp}));
        assert!(got.iter().take(at).filter(|f| f["op"] == "left").count() == 2, "{got:?}");
        h.check_invariants().unwrap();
        // The other member saw the user leave `b`.
        let seen = frames(&mut h, other);
        assert!(seen.iter().any(|f| f["op"] == "presence_diff" && f["leaves"] == json!(["ann"])), "{seen:?}");
        // Sends there are forbidden now, and its messages no longer arrive.
        assert!(forbidden(&call(&mut h, c, json!({"op":"send","room":"b","body":0,"ref":"s"})), "s"));
        call(&mut h, other, json!({"op":"send","room":"b","body":"after"}));
        assert!(!frames(&mut h, c).iter().any(|f| f["op"] == "msg"));
        assert!(op_of(&call(&mut h, c, json!({"op":"send","room":"a","body":0,"ref":"s2"})), "ack", "s2"));
        // Widening again: the room may be joined again.
        let got = call(&mut h, c, json!({"op":"refresh","token":token(json!({})),"ref":"w"}));
        assert!(op_of(&got, "refreshed", "w") && !got.iter().any(|f| f["op"] == "left"), "{got:?}");
        assert!(op_of(&call(&mut h, c, json!({"op":"join","room":"b","ref":"j"})), "joined", "j"));
        h.advance(Duration::from_secs(1));
        assert!(h.is_open(c));
        h.check_invariants().unwrap();
    }
}
