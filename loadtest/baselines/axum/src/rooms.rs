//! Room state: members, presence, the in-memory tail of recent messages and
//! the dedup window, all behind one `std::sync::Mutex<HashMap<..>>`.
//!
//! Every connection task owns a bounded tokio mpsc channel; a room holds the
//! sending halves. Publishing serialises the `msg` JSON once into a
//! `Utf8Bytes` and `try_send`s a clone (a reference count) to each member,
//! under the lock, so every member sees a room's messages in seq order. A
//! member whose channel is full is told to go (close 4000, slow consumer)
//! rather than block the publisher.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

use crate::wire::{MemberOut, MsgItem, Reply};

/// Messages kept per room for `join` `since` and `history` (roomcast's default).
pub const TAIL: usize = 1024;
/// Most messages replayed on `join`; beyond it `recovered: false`.
pub const MAX_REPLAY: u64 = 1000;
pub const DEDUP_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Frames queued per connection before it counts as a slow consumer.
pub const OUTBOUND_CAP: usize = 4096;

pub type UserId = Arc<str>;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A connection's handle as a room sees it.
#[derive(Clone)]
pub struct Member {
    pub user: UserId,
    pub tx: mpsc::Sender<Message>,
    /// Notified when `tx` is full: the connection closes with 4000.
    pub kick: Arc<Notify>,
}

struct Presence {
    conns: u32,
    since: u64,
}

struct Stored {
    item: MsgItem,
    frame: Utf8Bytes,
}

#[derive(Default)]
pub struct Room {
    last_seq: u64,
    last_ts: u64,
    tail: VecDeque<Stored>,
    members: HashMap<u64, Member>,
    users: HashMap<UserId, Presence>,
    dedup: HashMap<(UserId, String), (u64, u64)>,
    /// (expiry, user, id) in the order recorded, so pruning pops the front.
    dedup_order: VecDeque<(u64, UserId, String)>,
}

impl Room {
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn deliver(&self, frame: &Utf8Bytes, except: Option<u64>) {
        for (id, m) in &self.members {
            if Some(*id) == except {
                continue;
            }
            if let Err(TrySendError::Full(_)) = m.tx.try_send(Message::Text(frame.clone())) {
                m.kick.notify_one();
            }
        }
    }

    /// Adds connection `conn`; the other members get a `presence_diff` when
    /// its user was not here yet.
    pub fn join(&mut self, room: &str, conn: u64, member: Member, now: u64) {
        let user = member.user.clone();
        self.members.insert(conn, member);
        match self.users.get_mut(&user) {
            Some(p) => p.conns += 1,
            None => {
                self.users.insert(user.clone(), Presence { conns: 1, since: now });
                let diff = Reply::PresenceDiff { room, joins: vec![&user], leaves: vec![] };
                self.deliver(&Utf8Bytes::from(diff.to_json()), Some(conn));
            }
        }
    }

    pub fn leave(&mut self, room: &str, conn: u64) {
        let Some(m) = self.members.remove(&conn) else {
            return;
        };
        let Some(p) = self.users.get_mut(&m.user) else {
            return;
        };
        p.conns = p.conns.saturating_sub(1);
        if p.conns == 0 {
            self.users.remove(&m.user);
            let diff = Reply::PresenceDiff { room, joins: vec![], leaves: vec![&m.user] };
            self.deliver(&Utf8Bytes::from(diff.to_json()), None);
        }
    }

    /// `(recovered, frames)` for a `join` with `since`.
    pub fn replay(&self, since: u64) -> (bool, Vec<Utf8Bytes>) {
        if since >= self.last_seq {
            return (true, Vec::new());
        }
        let first = self.last_seq + 1 - self.tail.len() as u64;
        if self.last_seq - since > MAX_REPLAY || since + 1 < first {
            return (false, Vec::new());
        }
        let skip = (since + 1 - first) as usize;
        (true, self.tail.iter().skip(skip).map(|s| s.frame.clone()).collect())
    }

    /// A `history` page from the tail, as PROTOCOL.md describes it.
    pub fn history(&self, before: Option<u64>, after: Option<u64>, limit: u64) -> (Vec<&MsgItem>, bool) {
        let first = self.last_seq + 1 - self.tail.len() as u64;
        let lo = after.map_or(first, |a| a.saturating_add(1).max(first));
        let hi = before.map_or(self.last_seq + 1, |b| b.min(self.last_seq + 1));
        if lo >= hi {
            return (Vec::new(), false);
        }
        let idx = |seq: u64| (seq - first) as usize;
        if after.is_some() {
            let end = hi.min(lo.saturating_add(limit));
            let page = self.tail.range(idx(lo)..idx(end)).map(|s| &s.item);
            (page.collect(), end < hi)
        } else {
            let start = lo.max(hi.saturating_sub(limit));
            let page = self.tail.range(idx(start)..idx(hi)).map(|s| &s.item);
            (page.collect(), start > lo)
        }
    }

    pub fn presence(&self) -> Vec<MemberOut<'_>> {
        self.users.iter().map(|(u, p)| MemberOut { user: u, since: p.since }).collect()
    }

    /// The original `(seq, ts)` when `user` already sent `id` here within
    /// the dedup window.
    pub fn find_dup(&mut self, user: &UserId, id: &str, now: u64) -> Option<(u64, u64)> {
        while let Some((exp, _, _)) = self.dedup_order.front() {
            if *exp > now {
                break;
            }
            if let Some((_, u, i)) = self.dedup_order.pop_front() {
                self.dedup.remove(&(u, i));
            }
        }
        self.dedup.get(&(user.clone(), id.to_string())).copied()
    }

    /// The seq and ts the next message gets; timestamps never go backwards.
    pub fn next(&self, now: u64) -> (u64, u64) {
        (self.last_seq + 1, self.last_ts.max(now))
    }

    /// Records `item` (whose seq is [`next`](Self::next)'s) and delivers it to
    /// every member.
    pub fn append(&mut self, item: MsgItem, user: &UserId) {
        let frame = Utf8Bytes::from(
            Reply::Msg {
                room: &item.room,
                seq: item.seq,
                ts: item.ts,
                from: &item.from,
                body: &item.body,
                id: item.id.as_deref(),
            }
            .to_json(),
        );
        self.deliver(&frame, None);
        self.remember(item, frame, user);
    }

    fn remember(&mut self, item: MsgItem, frame: Utf8Bytes, user: &UserId) {
        self.last_seq = item.seq;
        self.last_ts = self.last_ts.max(item.ts);
        if let Some(id) = &item.id {
            let key = (user.clone(), id.clone());
            self.dedup.insert(key, (item.seq, item.ts));
            self.dedup_order.push_back((item.ts + DEDUP_WINDOW_MS, user.clone(), id.clone()));
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(Stored { item, frame });
    }

    /// Loads a stored message at startup (ascending seq), without delivering.
    pub fn restore(&mut self, item: MsgItem) {
        let user: UserId = Arc::from(item.from.as_str());
        let frame = Utf8Bytes::from(
            Reply::Msg {
                room: &item.room,
                seq: item.seq,
                ts: item.ts,
                from: &item.from,
                body: &item.body,
                id: item.id.as_deref(),
            }
            .to_json(),
        );
        self.remember(item, frame, &user);
    }

    /// Sets the last seq and ts from storage (rooms whose tail was trimmed).
    pub fn restore_last(&mut self, seq: u64, ts: u64) {
        self.last_seq = self.last_seq.max(seq);
        self.last_ts = self.last_ts.max(ts);
    }

    pub fn remember_dup(&mut self, user: &str, id: &str, seq: u64, ts: u64) {
        let user: UserId = Arc::from(user);
        self.dedup.insert((user.clone(), id.to_string()), (seq, ts));
        self.dedup_order.push_back((ts + DEDUP_WINDOW_MS, user, id.to_string()));
    }
}

/// Every room, behind one lock.
#[derive(Default)]
pub struct Rooms(Mutex<HashMap<String, Room>>);

impl Rooms {
    pub fn new(map: HashMap<String, Room>) -> Self {
        Rooms(Mutex::new(map))
    }

    /// The lock. A panic while holding it leaves the maps consistent enough
    /// to go on (every update is a few plain inserts), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn item(seq: u64) -> MsgItem {
        MsgItem { room: "r".into(), seq, ts: seq, from: "u".into(), body: Value::from(seq), id: None }
    }

    #[test]
    fn replay_and_history_follow_the_tail() {
        let mut r = Room::default();
        let u: UserId = Arc::from("u");
        for s in 1..=5 {
            r.append(item(s), &u);
        }
        let (ok, frames) = r.replay(3);
        assert!(ok);
        assert_eq!(frames.len(), 2);
        assert!(r.replay(5).1.is_empty());
        let (page, more) = r.history(None, None, 2);
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(more);
        let (page, more) = r.history(Some(5), Some(1), 10);
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(!more);
    }

    #[test]
    fn dedup_finds_the_original() {
        let mut r = Room::default();
        let u: UserId = Arc::from("u");
        let mut m = item(1);
        m.id = Some("x".into());
        r.append(m, &u);
        assert_eq!(r.find_dup(&u, "x", 2), Some((1, 1)));
        assert_eq!(r.find_dup(&u, "x", 2 + DEDUP_WINDOW_MS), None);
    }
}
