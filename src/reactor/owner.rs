//! The owner's work for the rooms this reactor owns: joins and leaves,
//! presence, history, and publishes (seq, one encode, durable append,
//! then fan-out and ack once the commit is reported).
//!
//! Ordering hazards:
//! - A message becomes visible (tail, `Deliver`, ack) only after
//!   store-writer reports its commit, so no client sees a message that a
//!   crash can take back. Commits are reported per reactor in the order the
//!   appends were sent, so `pending` is a FIFO and completes from the front.
//! - `joined` reports the last *committed* seq and the replay stops there;
//!   anything committed later reaches the joiner as a `Deliver`, which the
//!   owner sends after `Joined` on the same FIFO path.
//! - A duplicate's ack waits behind everything queued before it, so it never
//!   overtakes its original's commit.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::proto::msg::{self, MsgFrame, Ref};
use crate::rooms::{Replay, Reserved, RoomName, UserId};
use crate::store::{Record, StoredMsg, WriterCmd};

use super::mail::{Asker, ConnRef, Mail};
use super::{now_ms, Reactor, Shared};

/// A publish waiting for its commit (or a duplicate's ack waiting for the
/// commits queued before it).
pub(super) struct PendingPublish {
    room: RoomName,
    seq: u64,
    ts: u64,
    /// `None` for a duplicate: nothing to commit, only an ack to send.
    frame: Option<MsgFrame>,
    id: Option<Box<str>>,
    user: UserId,
    /// An earlier reservation in the same room failed to commit: this one
    /// cannot be stored either (the writer refuses a seq past a hole) and
    /// its seq was taken back already.
    doomed: bool,
    r#ref: Option<Ref>,
    asker: Asker,
}

impl Reactor {
    pub(super) fn handle_mail(&mut self, m: Mail) {
        match m {
            Mail::Join { room, user, conn, since, r#ref, again } => self.join(room, user, conn, since, r#ref, again),
            Mail::Leave { room, user, reactor } => {
                // A room not loaded has no members to take out (a room is
                // forgotten only without members): nothing to load for it.
                if let Some(r) = self.rooms.get_mut(&room) {
                    if let Some(d) = r.leave(reactor as usize, &user) {
                        self.fan_out(&room, d);
                    }
                }
            }
            Mail::Publish { room, user, body, id, r#ref, asker } => self.publish(room, user, body, id, r#ref, asker),
            Mail::History { room, before, after, limit, r#ref, asker } => {
                self.history(room, before, after, limit, r#ref, asker)
            }
            Mail::Presence { room, r#ref, asker } => {
                let reply = {
                    // Capped like a history page: a room of many users answers
                    // the first ones that fit (the answer is bounded before
                    // it is queued).
                    let budget = page_budget(&self.shared.config);
                    let mut size = 0usize;
                    let members: Vec<msg::Member<'_>> = self
                        .rooms
                        .get(&room)
                        .map(|r| {
                            r.presence()
                                .take_while(|m| {
                                    size = size.saturating_add(m.user.len() + 40);
                                    size <= budget
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    match asker {
                        Asker::Ws(c) => Mail::Frame {
                            conn: c,
                            frame: msg::encode_presence(r#ref.as_ref(), &room, members.into_iter()),
                            heavy: true,
                        },
                        Asker::Http(c) => Mail::HttpAnswer {
                            conn: c,
                            status: 200,
                            body: msg::presence_json(&room, members.into_iter()),
                            retry_after: None,
                        },
                    }
                };
                self.post(asker.conn().reactor as usize, reply);
            }
            Mail::Committed { n, result } => self.committed(n, result),
            other => self.member_mail(other),
        }
    }

    fn join(
        &mut self,
        room: RoomName,
        user: UserId,
        conn: ConnRef,
        since: Option<u64>,
        r#ref: Option<Ref>,
        again: bool,
    ) {
        let now = now_ms();
        let settings = self.rooms.settings.clone();
        let max_replay = settings.max_replay;
        let r = match self.rooms.entry(&room, now) {
            Ok(r) => r,
            Err(e) => {
                let f = msg::encode_error(r#ref.as_ref(), "internal", &format!("room unavailable: {e}"), None);
                // `joined: false`: the member reactor drops its pending entry.
                let mail = Mail::Joined { room, conn, frames: vec![f], joined: false };
                return self.post(conn.reactor as usize, mail);
            }
        };
        r.expire(&settings, now);
        let diff = if again { None } else { r.join(conn.reactor as usize, &user, now) };
        let last = r.last_seq();
        let budget = page_budget(&self.shared.config);
        let fits = |frames: &[Bytes]| frames.iter().map(Bytes::len).fold(0usize, usize::saturating_add) <= budget;
        let (recovered, replay) = match since.map(|s| r.replay(s, max_replay)) {
            None => (None, Vec::new()),
            Some(Replay::Nothing) => (Some(true), Vec::new()),
            // Too many bytes to replay at once: the client pages instead.
            Some(Replay::Tail(frames)) if !fits(&frames) => (Some(false), Vec::new()),
            Some(Replay::Tail(frames)) => (Some(true), frames),
            Some(Replay::TooMany) => (Some(false), Vec::new()),
            // Bounded by the replay cap, so read here, inline: the replay
            // must precede `Joined`'s successor `Deliver`s, which a reader
            // thread could not promise.
            Some(Replay::Storage { after, upto }) => match self.rooms.store() {
                // Read at most the byte budget: a replay larger than that is
                // not made, so reading further would be wasted work.
                Some(store) => match store.page_within(&room, Some(after), Some(upto + 1), max_replay, true, budget) {
                    // Retention may have pruned some: a replay with a hole
                    // (or one cut for size) is no replay; the client pages
                    // history instead.
                    Ok((msgs, false)) if msgs.len() as u64 == upto - after => {
                        let frames: Vec<Bytes> = msgs.iter().map(|m| frame_of(&room, m).frame).collect();
                        if fits(&frames) {
                            (Some(true), frames)
                        } else {
                            (Some(false), Vec::new())
                        }
                    }
                    Ok(_) => (Some(false), Vec::new()),
                    Err(_) => (Some(false), Vec::new()),
                },
                None => (Some(false), Vec::new()),
            },
        };
        // The diff goes out before `Joined`, so the joiner (not yet a local
        // member anywhere) does not get its own arrival.
        if let Some(d) = diff {
            self.fan_out(&room, d);
        }
        let mut frames = Vec::with_capacity(1 + replay.len());
        frames.push(msg::encode_joined(r#ref.as_ref(), &room, last, recovered));
        frames.extend(replay);
        self.post(conn.reactor as usize, Mail::Joined { room, conn, frames, joined: true });
    }

    fn publish(
        &mut self,
        room: RoomName,
        user: UserId,
        body: Box<RawValue>,
        id: Option<Box<str>>,
        r#ref: Option<Ref>,
        asker: Asker,
    ) {
        let now = now_ms();
        let settings = self.rooms.settings.clone();
        let store = self.rooms.store().cloned();
        let r = match self.rooms.entry(&room, now) {
            Ok(r) => r,
            Err(e) => return self.refuse(asker, r#ref, 500, "internal", &format!("room unavailable: {e}")),
        };
        // An id recorded before this room was loaded is known to storage only.
        if let (Some(id), Some(store)) = (id.as_deref(), &store) {
            if r.dedup_needs_storage(&settings, now) {
                match store.dedup_get(&room, &user, id, now) {
                    Ok(Some((seq, ts))) => {
                        r.remember(&settings, &user, id, seq, ts, now);
                    }
                    Ok(None) => {}
                    Err(e) => return self.refuse(asker, r#ref, 500, "internal", &format!("storage: {e}")),
                }
            }
        }
        let entry = match r.reserve(&settings, &user, &body, id.as_deref(), now) {
            Reserved::Duplicate { seq, ts } => {
                PendingPublish { room, seq, ts, frame: None, id, user, doomed: false, r#ref, asker }
            }
            Reserved::New { seq, ts, frame } => {
                if let Some(w) = &self.writer {
                    let rec = Record {
                        room: room.clone(),
                        seq,
                        ts,
                        from: user.clone(),
                        id: id.clone(),
                        body: Bytes::copy_from_slice(body.get().as_bytes()),
                        dedup_until_ms: now
                            .saturating_add(u64::try_from(settings.dedup_window.as_millis()).unwrap_or(u64::MAX)),
                    };
                    if w.try_send(WriterCmd::Append { reactor: self.id as u16, rec }).is_err() {
                        // The writer is behind: push back on the publisher
                        // rather than queue without bound.
                        r.unreserve(seq, &user, id.as_deref());
                        return self.refuse(asker, r#ref, 503, "overloaded", "storage is busy; retry");
                    }
                }
                PendingPublish { room, seq, ts, frame: Some(frame), id, user, doomed: false, r#ref, asker }
            }
        };
        self.pending.push_back(entry);
        if self.writer.is_none() {
            // No storage configured: the message is as durable as it gets.
            self.committed(usize::MAX, Ok(()));
        } else if self.pending.front().is_some_and(|p| p.frame.is_none()) {
            // A duplicate with nothing queued before it answers at once.
            self.committed(0, Ok(()));
        }
    }

    /// store-writer committed (or failed) the next `n` appends of this
    /// reactor: make them visible, fan out, ack.
    fn committed(&mut self, mut n: usize, result: Result<(), String>) {
        let settings = self.rooms.settings.clone();
        while let Some(front) = self.pending.front() {
            if front.frame.is_some() {
                if n == 0 {
                    break;
                }
                n -= 1;
            }
            let Some(p) = self.pending.pop_front() else { break };
            let (seq, ts) = (p.seq, p.ts);
            match (p.frame, &result) {
                (Some(frame), Ok(())) if !p.doomed => {
                    if let Some(r) = self.rooms.get_mut(&p.room) {
                        r.commit(&settings, seq, ts, frame.clone());
                    }
                    self.counters.published += 1;
                    self.fan_out(&p.room, frame.frame);
                }
                (Some(_), _) => {
                    // Not stored. The first failure in a room takes its seq
                    // back, and with it every reservation queued behind it in
                    // that room (the writer refuses those: they no longer
                    // follow on); none of their ids stays remembered, so a
                    // retry publishes anew.
                    if !p.doomed {
                        self.abandon(&p.room, seq, &p.user, p.id.as_deref());
                    }
                    let m = match &result {
                        Err(e) => format!("storage failed: {e}"),
                        Ok(()) => "storage failed for an earlier message of this room; retry".to_string(),
                    };
                    self.refuse(p.asker, p.r#ref, 500, "internal", &m);
                    continue;
                }
                (None, _) => {
                    // A duplicate whose original was never stored has
                    // nothing to point at.
                    let stored = self.rooms.get(&p.room).is_some_and(|r| seq <= r.last_seq());
                    if !stored {
                        let m = "storage failed for the original of this message; retry";
                        self.refuse(p.asker, p.r#ref, 500, "internal", m);
                        continue;
                    }
                }
            }
            let reply = match p.asker {
                Asker::Ws(c) => {
                    let frame = msg::encode_ack(p.r#ref.as_ref(), &p.room, seq, ts, p.id.as_deref());
                    Mail::Frame { conn: c, frame, heavy: false }
                }
                Asker::Http(c) => Mail::HttpAnswer {
                    conn: c,
                    status: 201,
                    body: msg::posted_json(&p.room, seq, ts),
                    retry_after: None,
                },
            };
            self.post(p.asker.conn().reactor as usize, reply);
        }
    }

    /// The commit of `seq` in `room` failed: the room goes back to just
    /// before it, and every later reservation of the room still pending is
    /// doomed. Their ids are forgotten now, so a retry is not answered
    /// with a seq that was never stored.
    fn abandon(&mut self, room: &RoomName, seq: u64, user: &UserId, id: Option<&str>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if let Some(id) = id {
            r.forget(user, id, seq);
        }
        for q in self.pending.iter_mut() {
            if q.frame.is_some() && !q.doomed && q.room == *room {
                q.doomed = true;
                if let Some(id) = q.id.as_deref() {
                    r.forget(&q.user, id, q.seq);
                }
            }
        }
        // Everything before `seq` in this room is committed (commits come
        // in order), so its head is `seq - 1`: no storage read needed.
        r.take_back(seq);
    }

    /// Answers a request with an error, over WebSocket or HTTP.
    fn refuse(&mut self, asker: Asker, r#ref: Option<Ref>, status: u16, code: &str, message: &str) {
        self.refuse_as(asker, r#ref, status, code, message, false);
    }

    /// [`refuse`](Self::refuse) for a heavy request (history, presence, join).
    fn refuse_heavy(&mut self, asker: Asker, r#ref: Option<Ref>, status: u16, code: &str, message: &str) {
        self.refuse_as(asker, r#ref, status, code, message, true);
    }

    fn refuse_as(&mut self, asker: Asker, r#ref: Option<Ref>, status: u16, code: &str, message: &str, heavy: bool) {
        let retry = (code == "overloaded").then_some(100);
        let reply = match asker {
            Asker::Ws(c) => {
                Mail::Frame { conn: c, frame: msg::encode_error(r#ref.as_ref(), code, message, retry), heavy }
            }
            Asker::Http(c) => Mail::HttpAnswer {
                conn: c,
                status,
                body: msg::error_json(code, message),
                retry_after: retry.map(|_| 1),
            },
        };
        self.post(asker.conn().reactor as usize, reply);
    }

    fn history(
        &mut self,
        room: RoomName,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        r#ref: Option<Ref>,
        asker: Asker,
    ) {
        let now = now_ms();
        let settings = self.rooms.settings.clone();
        let budget = page_budget(&self.shared.config);
        // A room never written to has an empty history: answered without
        // loading it, so made-up names cost no memory.
        let from_tail = match self.rooms.entry_with_history(&room, now) {
            Ok(None) => {
                let empty: [&MsgFrame; 0] = [];
                let reply = history_reply(&room, empty.into_iter(), false, r#ref.as_ref(), asker);
                return self.post(asker.conn().reactor as usize, reply);
            }
            Ok(Some(r)) => {
                r.expire(&settings, now);
                r.history(before, after, limit).map(|(mut page, more)| {
                    let cut = cap_page(&mut page, |m| m.frame.len(), after.is_some(), budget);
                    history_reply(&room, page.into_iter(), more || cut, r#ref.as_ref(), asker)
                })
            }
            Err(e) => return self.refuse_heavy(asker, r#ref, 500, "internal", &format!("room unavailable: {e}")),
        };
        if let Some(reply) = from_tail {
            return self.post(asker.conn().reactor as usize, reply);
        }
        // Older than the tail: a reader thread pages through storage so a
        // big read never stalls this reactor. Its answer goes straight to
        // the asker's reactor.
        let shared: Arc<Shared> = self.shared.clone();
        let (Some(readers), Some(committed)) = (&shared.readers, self.rooms.get(&room).map(|r| r.last_seq())) else {
            return self.refuse_heavy(asker, r#ref, 500, "internal", "no storage");
        };
        let poster = shared.clone();
        let before = Some(before.map_or(committed + 1, |b| b.min(committed + 1)));
        let oldest_first = after.is_some();
        let name = room.clone();
        let rref = r#ref.clone();
        let reply = Box::new(move |res: Result<(Vec<StoredMsg>, bool), crate::store::StoreError>| {
            let mail = match res {
                Ok((msgs, more)) => {
                    let mut frames: Vec<MsgFrame> = msgs.iter().map(|m| frame_of(&name, m)).collect();
                    let cut = cap_page(&mut frames, |m| m.frame.len(), oldest_first, budget);
                    history_reply(&name, frames.iter(), more || cut, rref.as_ref(), asker)
                }
                Err(e) => {
                    let m = format!("storage: {e}");
                    match asker {
                        Asker::Ws(c) => {
                            let frame = msg::encode_error(rref.as_ref(), "internal", &m, None);
                            Mail::Frame { conn: c, frame, heavy: true }
                        }
                        Asker::Http(c) => Mail::HttpAnswer {
                            conn: c,
                            status: 500,
                            body: msg::error_json("internal", &m),
                            retry_after: None,
                        },
                    }
                }
            };
            poster.post_from_thread(asker.conn().reactor as usize, mail);
        });
        if readers.submit(room, after, before, limit, oldest_first, reply).is_err() {
            self.refuse_heavy(asker, r#ref, 503, "overloaded", "history readers are busy; retry");
        }
    }

    /// Sends one frame to every reactor with members in `room` (this one
    /// included, handled inline): one `Deliver` per reactor, not per member.
    pub(super) fn fan_out(&mut self, room: &RoomName, frame: Bytes) {
        let mut targets = std::mem::take(&mut self.fan_targets);
        targets.clear();
        if let Some(r) = self.rooms.get(room) {
            targets.extend(r.member_reactors());
        }
        for &t in &targets {
            self.post(t, Mail::Deliver { room: room.clone(), frame: frame.clone() });
        }
        self.fan_targets = targets;
    }
}

/// The most bytes of messages one history page or one join replay
/// carries: an eighth of the output cap (a connection may have
/// `ws::MAX_HEAVY` such answers coming), at most 512 KiB. A page that would
/// be larger stops early with `more: true`; a replay that would be larger
/// is not made (`recovered: false`, the client pages instead).
pub(super) fn page_budget(cfg: &crate::config::Config) -> usize {
    (cfg.max_queue_bytes / 8).clamp(16 << 10, 512 << 10)
}

/// Cuts `page` (ascending) to `budget` bytes, keeping at least one message:
/// the oldest when paging forward (`oldest_first`), else the newest. True
/// when something was cut, which the answer reports as `more`.
fn cap_page<T>(page: &mut Vec<T>, size: impl Fn(&T) -> usize, oldest_first: bool, budget: usize) -> bool {
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
fn frame_of(room: &str, m: &StoredMsg) -> MsgFrame {
    msg::encode_msg_raw(room, m.seq, m.ts, &m.from, &m.body, m.id.as_deref())
}

fn history_reply<'m>(
    room: &str,
    page: impl Iterator<Item = &'m MsgFrame>,
    more: bool,
    r#ref: Option<&Ref>,
    asker: Asker,
) -> Mail {
    match asker {
        Asker::Ws(c) => Mail::Frame { conn: c, frame: msg::encode_history(r#ref, room, page, more), heavy: true },
        Asker::Http(c) => {
            Mail::HttpAnswer { conn: c, status: 200, body: msg::history_json(room, page, more), retry_after: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cap_page;

    #[test]
    fn pages_are_cut_to_their_budget_from_the_right_end() {
        let size = |n: &usize| *n;
        let mut p = vec![4, 4, 4, 4];
        assert!(cap_page(&mut p, size, true, 9));
        assert_eq!(p, vec![4, 4]);
        let mut p = vec![1, 2, 3, 4];
        assert!(cap_page(&mut p, size, false, 7));
        assert_eq!(p, vec![3, 4]);
        // At least one message, however large.
        let mut p = vec![100, 1];
        assert!(cap_page(&mut p, size, true, 10));
        assert_eq!(p, vec![100]);
        let mut p = vec![1, 100];
        assert!(cap_page(&mut p, size, false, 10));
        assert_eq!(p, vec![100]);
        let mut p = vec![1, 2];
        assert!(!cap_page(&mut p, size, false, 10));
        assert_eq!(p, vec![1, 2]);
        let mut p: Vec<usize> = Vec::new();
        assert!(!cap_page(&mut p, size, true, 10));
    }
}
