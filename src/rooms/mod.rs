//! Room rules: which reactor owns a room, and the state its owner keeps.
//!
//! The owner alone assigns seqs and timestamps, keeps the tail of recent
//! encoded messages, the presence set, the dedup window and how many members
//! each reactor has. Other reactors keep only their local members (see
//! [`LocalMembers`]). Nothing here touches sockets: callers get frames back
//! and decide where they go.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::proto::msg::{self, Member, MsgFrame};

pub type RoomName = Arc<str>;
pub type UserId = Arc<str>;

/// The reactor that owns `room`: a stable hash (FNV-1a) of the name modulo
/// the reactor count, so every reactor computes the same answer.
pub fn owner_of(room: &str, reactors: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % reactors.max(1) as u64) as usize
}

/// Settings the owner applies to every room.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    pub tail: usize,
    pub max_replay: usize,
    pub dedup_window: Duration,
}

struct Presence {
    conns: u32,
    since: u64,
}

struct DedupEntry {
    seq: u64,
    ts: u64,
}

/// Answer to a `join` with `since`.
pub struct Replay {
    pub recovered: bool,
    pub frames: Vec<Bytes>,
}

/// Outcome of a publish at the owner.
pub enum Published {
    /// A new message: its frame, to be delivered to every member.
    New(MsgFrame),
    /// A repeated client id inside the dedup window: the original seq and ts.
    Duplicate { seq: u64, ts: u64 },
}

pub struct OwnedRoom {
    pub name: RoomName,
    last_seq: u64,
    last_ts: u64,
    tail: VecDeque<MsgFrame>,
    /// Members per reactor; a `Deliver` goes to each reactor with any.
    members: Vec<u32>,
    users: HashMap<UserId, Presence>,
    dedup: HashMap<(UserId, Box<str>), DedupEntry>,
    /// Dedup keys in the order they were recorded, with their expiry, so
    /// pruning is a pop from the front.
    dedup_order: VecDeque<(u64, UserId, Box<str>)>,
}

impl OwnedRoom {
    pub fn new(name: RoomName, reactors: usize) -> Self {
        OwnedRoom {
            name,
            last_seq: 0,
            last_ts: 0,
            tail: VecDeque::new(),
            members: vec![0; reactors],
            users: HashMap::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }

    /// Reactors that currently have members, for fan-out.
    pub fn member_reactors(&self) -> impl Iterator<Item = usize> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, _)| i)
    }

    /// Counts a connection of `user` on `reactor` as a member. Returns the
    /// `presence_diff` frame for the other members when the user is new.
    pub fn join(&mut self, reactor: usize, user: &UserId, now_ms: u64) -> Option<Bytes> {
        if let Some(n) = self.members.get_mut(reactor) {
            *n += 1;
        }
        match self.users.get_mut(user) {
            Some(p) => {
                p.conns += 1;
                None
            }
            None => {
                self.users.insert(
                    user.clone(),
                    Presence {
                        conns: 1,
                        since: now_ms,
                    },
                );
                Some(msg::encode_presence_diff(&self.name, &[user], &[]))
            }
        }
    }

    /// The reverse of [`join`](Self::join); the diff when the user's last
    /// connection left.
    pub fn leave(&mut self, reactor: usize, user: &UserId) -> Option<Bytes> {
        if let Some(n) = self.members.get_mut(reactor) {
            *n = n.saturating_sub(1);
        }
        let p = self.users.get_mut(user)?;
        p.conns = p.conns.saturating_sub(1);
        if p.conns > 0 {
            return None;
        }
        self.users.remove(user);
        Some(msg::encode_presence_diff(&self.name, &[], &[user]))
    }

    pub fn presence(&self) -> impl Iterator<Item = Member<'_>> {
        self.users.iter().map(|(u, p)| Member {
            user: u,
            since: p.since,
        })
    }

    /// Assigns the next seq (or finds the original of a duplicate) and
    /// encodes the `msg` frame once. Timestamps never go backwards in a room.
    pub fn publish(
        &mut self,
        settings: &RoomSettings,
        from: &UserId,
        body: &RawValue,
        id: Option<&str>,
        now_ms: u64,
    ) -> Published {
        self.prune_dedup(now_ms);
        if let Some(id) = id {
            if let Some(e) = self.dedup.get(&(from.clone(), Box::from(id))) {
                return Published::Duplicate {
                    seq: e.seq,
                    ts: e.ts,
                };
            }
        }
        self.last_seq += 1;
        self.last_ts = self.last_ts.max(now_ms);
        let (seq, ts) = (self.last_seq, self.last_ts);
        let frame = msg::encode_msg(&self.name, seq, ts, from, body, id);
        if let Some(id) = id {
            let key: Box<str> = Box::from(id);
            let expires = now_ms + settings.dedup_window.as_millis() as u64;
            self.dedup
                .insert((from.clone(), key.clone()), DedupEntry { seq, ts });
            self.dedup_order.push_back((expires, from.clone(), key));
        }
        if settings.tail > 0 {
            if self.tail.len() == settings.tail {
                self.tail.pop_front();
            }
            self.tail.push_back(frame.clone());
        }
        Published::New(frame)
    }

    fn prune_dedup(&mut self, now_ms: u64) {
        while let Some((exp, _, _)) = self.dedup_order.front() {
            if *exp > now_ms {
                break;
            }
            if let Some((_, user, id)) = self.dedup_order.pop_front() {
                self.dedup.remove(&(user, id));
            }
        }
    }

    /// The messages after `since` for a resuming member, or `recovered:
    /// false` when more are missing than the cap or the tail reaches back.
    pub fn replay(&self, since: u64, max_replay: usize) -> Replay {
        if since >= self.last_seq {
            return Replay {
                recovered: true,
                frames: Vec::new(),
            };
        }
        let missing = self.last_seq - since;
        let first_in_tail = self.tail.front().map_or(self.last_seq + 1, |_| {
            self.last_seq + 1 - self.tail.len() as u64
        });
        if missing > max_replay as u64 || since + 1 < first_in_tail {
            return Replay {
                recovered: false,
                frames: Vec::new(),
            };
        }
        let skip = (since + 1 - first_in_tail) as usize;
        let frames = self
            .tail
            .iter()
            .skip(skip)
            .map(|m| m.frame.clone())
            .collect();
        Replay {
            recovered: true,
            frames,
        }
    }

    /// A page of history, ascending, as PROTOCOL.md's `history` op says.
    /// Until messages are stored, only the in-memory tail is searched.
    pub fn history(
        &self,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<&MsgFrame>, bool) {
        let first = self.last_seq + 1 - self.tail.len() as u64;
        let lo = after.map_or(first, |a| (a + 1).max(first)); // inclusive
        let hi = before.map_or(self.last_seq + 1, |b| b.min(self.last_seq + 1)); // exclusive
        if lo >= hi {
            return (Vec::new(), false);
        }
        let idx = |seq: u64| (seq - first) as usize;
        if after.is_some() {
            let end = hi.min(lo.saturating_add(limit as u64));
            let page = self.tail.range(idx(lo)..idx(end)).collect();
            (page, end < hi)
        } else {
            let start = lo.max(hi.saturating_sub(limit as u64));
            let page = self.tail.range(idx(start)..idx(hi)).collect();
            (page, start > lo)
        }
    }
}

/// Every room this reactor owns.
pub struct OwnedRooms {
    pub settings: RoomSettings,
    reactors: usize,
    map: HashMap<RoomName, OwnedRoom>,
}

impl OwnedRooms {
    pub fn new(settings: RoomSettings, reactors: usize) -> Self {
        OwnedRooms {
            settings,
            reactors,
            map: HashMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&OwnedRoom> {
        self.map.get(name)
    }

    /// The room, made on first use.
    pub fn entry(&mut self, name: &RoomName) -> &mut OwnedRoom {
        let reactors = self.reactors;
        self.map
            .entry(name.clone())
            .or_insert_with(|| OwnedRoom::new(name.clone(), reactors))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// This reactor's members of each room: connection slots in join order.
#[derive(Default)]
pub struct LocalMembers {
    map: HashMap<RoomName, Vec<u32>>,
}

impl LocalMembers {
    pub fn add(&mut self, room: &RoomName, key: u32) {
        self.map.entry(room.clone()).or_default().push(key);
    }

    pub fn remove(&mut self, room: &str, key: u32) {
        if let Some(v) = self.map.get_mut(room) {
            if let Some(i) = v.iter().position(|k| *k == key) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.map.remove(room);
            }
        }
    }

    pub fn members(&self, room: &str) -> &[u32] {
        self.map.get(room).map_or(&[], |v| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RoomSettings {
        RoomSettings {
            tail: 4,
            max_replay: 3,
            dedup_window: Duration::from_secs(60),
        }
    }

    fn body() -> Box<RawValue> {
        RawValue::from_string("\"x\"".to_string()).unwrap()
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        for n in 1..8 {
            let o = owner_of("lobby", n);
            assert!(o < n);
            assert_eq!(o, owner_of("lobby", n));
        }
    }

    #[test]
    fn seqs_tail_replay_history_dedup() {
        let s = settings();
        let mut r = OwnedRoom::new("r".into(), 2);
        let u: UserId = "ann".into();
        for i in 0..6 {
            let id = format!("m{i}");
            match r.publish(&s, &u, &body(), Some(&id), 1000 + i) {
                Published::New(m) => assert!(!m.frame.is_empty()),
                Published::Duplicate { .. } => panic!("not a dup"),
            }
        }
        assert_eq!(r.last_seq(), 6);
        match r.publish(&s, &u, &body(), Some("m2"), 2000) {
            Published::Duplicate { seq, ts } => assert_eq!((seq, ts), (3, 1002)),
            Published::New(_) => panic!("dup expected"),
        }
        // Dedup expires with its window.
        assert!(matches!(
            r.publish(&s, &u, &body(), Some("m2"), 1002 + 60_000),
            Published::New(_)
        ));
        assert_eq!(r.last_seq(), 7);
        // Tail holds 4..=7.
        assert!(r.replay(7, 3).recovered);
        assert_eq!(r.replay(5, 3).frames.len(), 2);
        assert!(!r.replay(3, 3).recovered); // 4 missing > cap 3
        assert!(!r.replay(2, 10).recovered); // tail does not reach back
        let (page, more) = r.history(None, None, 2);
        assert_eq!(page.len(), 2);
        assert!(more);
        let (page, more) = r.history(None, Some(4), 10);
        assert_eq!(page.len(), 3);
        assert!(!more);
        let (page, more) = r.history(Some(6), Some(3), 1);
        assert_eq!(page.len(), 1);
        assert!(more);
    }

    #[test]
    fn presence_counts_connections() {
        let mut r = OwnedRoom::new("r".into(), 2);
        let u: UserId = "ann".into();
        assert!(r.join(0, &u, 1).is_some());
        assert!(r.join(1, &u, 2).is_none());
        assert_eq!(r.member_reactors().count(), 2);
        assert!(r.leave(0, &u).is_none());
        assert!(r.leave(1, &u).is_some());
        assert_eq!(r.member_reactors().count(), 0);
        assert_eq!(r.presence().count(), 0);
    }
}
