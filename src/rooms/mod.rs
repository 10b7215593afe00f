//! Room rules: which reactor owns a room, the state its owner keeps for it
//! ([`OwnedRoom`]), the owner's state machine over all its rooms
//! ([`core::Core`]: commands in, effects out), and the local member lists of
//! every reactor ([`LocalMembers`]).
//!
//! The owner alone assigns seqs and timestamps, keeps the tail of recent
//! encoded messages, the presence set, the dedup window and how many members
//! each reactor has. Other reactors keep only their local members. Nothing
//! here touches sockets, mail or clocks: callers get frames and effects back
//! and decide where they go.

pub mod core;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::proto::msg::{self, Member, MsgFrame};

pub type RoomName = Arc<str>;
pub type UserId = Arc<str>;
/// A member connection, as its reactor names it (unique among the live
/// connections of the process).
pub type MemberId = u64;

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
    /// Retention (`--retain-messages`, `--retain-age`): the tail never
    /// holds what storage has pruned or is about to prune.
    pub retain_messages: Option<u64>,
    pub retain_age: Option<Duration>,
}

struct Presence {
    conns: u32,
    since: u64,
}

struct DedupEntry {
    seq: u64,
    ts: u64,
    /// When this record of the id expires (ms): `dedup_order` holds the same
    /// value, so an id forgotten and recorded again (even with the same
    /// seq) is pruned by its own record, not by the older one.
    expires: u64,
}

/// Where a resuming member's missed messages come from.
#[derive(Debug)]
pub enum Replay {
    /// Nothing missed.
    Nothing,
    /// All of them are in the tail.
    Tail(Vec<Bytes>),
    /// Within the cap but older than the tail: read seqs `after < seq <=
    /// upto` from storage.
    Storage { after: u64, upto: u64 },
    /// More missing than the cap: `recovered: false`, nothing replayed.
    TooMany,
}

/// Outcome of a publish at the owner, before its commit.
pub enum Reserved {
    /// A new message with its seq and its frame, encoded once; `body` is
    /// the body inside the frame, shared with it, for storage.
    New { seq: u64, ts: u64, frame: MsgFrame, body: Bytes },
    /// A repeated client id inside the dedup window: the original seq and ts.
    Duplicate { seq: u64, ts: u64 },
}

pub struct OwnedRoom {
    pub name: RoomName,
    /// The last seq handed out, committed or not.
    assigned: u64,
    assigned_ts: u64,
    /// The last seq whose commit is reported. Members, `joined`, replay and
    /// history see only committed messages.
    committed: u64,
    /// Committed messages with their ts, ascending, ending at `committed`.
    tail: VecDeque<(u64, MsgFrame)>,
    /// Members per reactor; a `Deliver` goes to each reactor with any.
    members: Vec<u32>,
    /// Every member connection, so a leave counts only a join that counted.
    joined: HashSet<MemberId>,
    users: HashMap<UserId, Presence>,
    dedup: HashMap<(UserId, Box<str>), DedupEntry>,
    /// Dedup keys in the order they were recorded, with their expiry, so
    /// pruning is a pop from the front.
    dedup_order: VecDeque<(u64, UserId, Box<str>)>,
    /// The in-memory dedup window is complete for ids recorded from this
    /// instant (ms) on; older ones may be known to storage only (a restart,
    /// or the room was forgotten and loaded again).
    dedup_complete_since: u64,
    /// When the room was last asked anything (ms), for forgetting idle rooms.
    last_used: u64,
}

impl OwnedRoom {
    pub fn new(name: RoomName, reactors: usize) -> Self {
        OwnedRoom::with_head(name, reactors, 0, 0, 0)
    }

    /// A room whose stored history ends at `seq` (sent at `ts`).
    pub fn with_head(name: RoomName, reactors: usize, seq: u64, ts: u64, now_ms: u64) -> Self {
        OwnedRoom {
            name,
            assigned: seq,
            assigned_ts: ts,
            committed: seq,
            tail: VecDeque::new(),
            members: vec![0; reactors],
            joined: HashSet::new(),
            users: HashMap::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            dedup_complete_since: if seq == 0 { 0 } else { now_ms },
            last_used: now_ms,
        }
    }

    /// Nothing but storage needs this room: no members, no reservation
    /// waiting for its commit, and no use for `idle_ms`. Forgetting it then
    /// loses nothing: its head and dedup ids are loaded again on next use.
    pub fn is_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.users.is_empty()
            && self.members.iter().all(|n| *n == 0)
            && self.assigned == self.committed
            && now_ms.saturating_sub(self.last_used) >= idle_ms
    }

    /// The room was asked something at `now_ms` (it is not idle).
    pub fn touch(&mut self, now_ms: u64) {
        self.last_used = self.last_used.max(now_ms);
    }

    /// Bytes held by the tail of encoded messages.
    pub fn tail_bytes(&self) -> usize {
        self.tail.iter().map(|(_, m)| m.frame.len()).sum()
    }

    /// The last committed seq (what `joined` reports).
    pub fn last_seq(&self) -> u64 {
        self.committed
    }

    /// Reactors that currently have members, for fan-out.
    pub fn member_reactors(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, _)| i)
    }

    /// Counts connection `member` of `user` on `reactor` as a member.
    /// Returns whether it is new (a member joining again counts once), and
    /// the `presence_diff` frame for the others when the user is new.
    pub fn join(&mut self, reactor: usize, member: MemberId, user: &UserId, now_ms: u64) -> (bool, Option<Bytes>) {
        if !self.joined.insert(member) {
            return (false, None);
        }
        if let Some(n) = self.members.get_mut(reactor) {
            *n += 1;
        }
        let diff = match self.users.get_mut(user) {
            Some(p) => {
                p.conns += 1;
                None
            }
            None => {
                self.users.insert(user.clone(), Presence { conns: 1, since: now_ms });
                Some(msg::encode_presence_diff(&self.name, &[user], &[]))
            }
        };
        (true, diff)
    }

    /// The reverse of [`join`](Self::join); the diff when the user's last
    /// connection left. A connection that is no member (its join failed,
    /// or never got here) changes nothing.
    pub fn leave(&mut self, reactor: usize, member: MemberId, user: &UserId) -> Option<Bytes> {
        if !self.joined.remove(&member) {
            return None;
        }
        if self.joined.capacity() > 64 && self.joined.len() < self.joined.capacity() / 4 {
            // A room that emptied out gives memory back.
            self.joined.shrink_to(self.joined.len() * 2);
        }
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

    /// Member connections and distinct users now.
    pub fn counts(&self) -> (usize, usize) {
        (self.joined.len(), self.users.len())
    }

    pub fn presence(&self) -> impl Iterator<Item = Member<'_>> {
        self.users.iter().map(|(u, p)| Member { user: u, since: p.since })
    }

    /// The users present with when they arrived, as shared ids (an answer
    /// that outlives the room clones them, never copies them).
    pub fn users(&self) -> impl Iterator<Item = (&UserId, u64)> {
        self.users.iter().map(|(u, p)| (u, p.since))
    }

    /// True when a client id missing from memory may still be a duplicate
    /// known only to storage (recorded before this room was loaded).
    pub fn dedup_needs_storage(&self, settings: &RoomSettings, now_ms: u64) -> bool {
        now_ms.saturating_sub(settings.dedup_window.as_millis() as u64) < self.dedup_complete_since
    }

    /// Assigns the next seq (or finds the original of a duplicate in
    /// memory) and encodes the `msg` frame once. Timestamps never go
    /// backwards in a room. The message is not visible until `commit`.
    pub fn reserve(
        &mut self,
        settings: &RoomSettings,
        from: &UserId,
        body: &RawValue,
        id: Option<&str>,
        now_ms: u64,
    ) -> Reserved {
        self.prune_dedup(now_ms);
        if let Some(id) = id {
            if let Some(e) = self.dedup.get(&(from.clone(), Box::from(id))) {
                return Reserved::Duplicate { seq: e.seq, ts: e.ts };
            }
        }
        self.assigned += 1;
        self.assigned_ts = self.assigned_ts.max(now_ms);
        let (seq, ts) = (self.assigned, self.assigned_ts);
        let (frame, body) = msg::encode_msg_sharing(&self.name, seq, ts, from, body.get().as_bytes(), id);
        if let Some(id) = id {
            self.remember(settings, from, id, seq, ts, now_ms);
        }
        Reserved::New { seq, ts, frame, body }
    }

    /// Whether the in-memory dedup window holds `id` of `from` (unexpired).
    pub fn knows_id(&self, from: &UserId, id: &str, now_ms: u64) -> bool {
        self.dedup.get(&(from.clone(), Box::from(id))).is_some_and(|e| e.expires > now_ms)
    }

    /// Records a client id's original seq (also used for ids found in
    /// storage, so the next retry is answered from memory).
    pub fn remember(&mut self, settings: &RoomSettings, from: &UserId, id: &str, seq: u64, ts: u64, now_ms: u64) {
        let key: Box<str> = Box::from(id);
        let expires = now_ms.saturating_add(u64::try_from(settings.dedup_window.as_millis()).unwrap_or(u64::MAX));
        if self.dedup.insert((from.clone(), key.clone()), DedupEntry { seq, ts, expires }).is_none() {
            self.dedup_order.push_back((expires, from.clone(), key));
        }
    }

    /// The message with `seq` is durable: it joins the tail and becomes
    /// visible. Commits arrive in seq order.
    pub fn commit(&mut self, settings: &RoomSettings, seq: u64, ts: u64, frame: MsgFrame) {
        self.committed = self.committed.max(seq);
        let cap = settings.retain_messages.map_or(settings.tail, |n| settings.tail.min(n as usize));
        if cap > 0 {
            if self.tail.len() >= cap {
                self.tail.pop_front();
            }
            self.tail.push_back((ts, frame));
        }
    }

    /// Drops tail messages older than `--retain-age` (storage prunes them
    /// too), so nobody is served a message past its retention.
    pub fn expire(&mut self, settings: &RoomSettings, now_ms: u64) {
        if let Some(age) = settings.retain_age {
            let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
            while self.tail.front().is_some_and(|(ts, _)| *ts < cutoff) {
                self.tail.pop_front();
            }
        }
    }

    /// The commit of reservation `seq` failed: it and every reservation
    /// after it are taken back (none can be stored in order), so the next
    /// publish gets `seq` again. Everything below `seq` is committed, so the
    /// tail and `committed` stay as they are.
    pub fn take_back(&mut self, seq: u64) {
        let head = seq.saturating_sub(1).max(self.committed);
        self.assigned = self.assigned.min(head);
    }

    /// Forgets the client id of reservation `seq` (it was not stored).
    pub fn forget(&mut self, from: &UserId, id: &str, seq: u64) {
        let key = (from.clone(), Box::<str>::from(id));
        if self.dedup.get(&key).is_some_and(|e| e.seq == seq) {
            self.dedup.remove(&key);
        }
    }

    fn prune_dedup(&mut self, now_ms: u64) {
        while let Some((exp, _, _)) = self.dedup_order.front() {
            if *exp > now_ms {
                break;
            }
            if let Some((exp, user, id)) = self.dedup_order.pop_front() {
                let key = (user, id);
                if self.dedup.get(&key).is_some_and(|e| e.expires == exp) {
                    self.dedup.remove(&key);
                }
            }
        }
    }

    fn first_in_tail(&self) -> u64 {
        self.committed + 1 - self.tail.len() as u64
    }

    /// Where the messages after `since` come from for a resuming member.
    pub fn replay(&self, since: u64, max_replay: usize) -> Replay {
        if since >= self.committed {
            return Replay::Nothing;
        }
        if self.committed - since > max_replay as u64 {
            return Replay::TooMany;
        }
        let first = self.first_in_tail();
        if since + 1 < first {
            return Replay::Storage { after: since, upto: self.committed };
        }
        let skip = (since + 1 - first) as usize;
        Replay::Tail(self.tail.iter().skip(skip).map(|(_, m)| m.frame.clone()).collect())
    }

    /// A page of history, ascending, as PROTOCOL.md's `history` op says —
    /// or `None` when the tail does not reach far enough back and storage
    /// must answer.
    pub fn history(&self, before: Option<u64>, after: Option<u64>, limit: usize) -> Option<(Vec<&MsgFrame>, bool)> {
        let first = self.first_in_tail();
        let hi = before.map_or(self.committed + 1, |b| b.min(self.committed + 1)); // exclusive
        let lo = after.map_or(1, |a| a.saturating_add(1)); // inclusive
        if lo >= hi {
            return Some((Vec::new(), false));
        }
        let idx = |seq: u64| (seq - first) as usize;
        if after.is_some() {
            if lo < first {
                return None;
            }
            let end = hi.min(lo.saturating_add(limit as u64));
            Some((self.tail.range(idx(lo)..idx(end)).map(|(_, m)| m).collect(), end < hi))
        } else {
            let start = lo.max(hi.saturating_sub(limit as u64));
            if start < first {
                return None;
            }
            Some((self.tail.range(idx(start)..idx(hi)).map(|(_, m)| m).collect(), start > lo && start > 1))
        }
    }
}

/// This reactor's members of each room: connection slots in join order.
#[derive(Default)]
pub struct LocalMembers {
    map: HashMap<RoomName, Vec<u32>>,
}

impl LocalMembers {
    /// Lists `key` in `room`; returns its slot there, which the caller keeps
    /// for [`remove_at`](Self::remove_at).
    pub fn add(&mut self, room: &RoomName, key: u32) -> u32 {
        let v = self.map.entry(room.clone()).or_default();
        v.push(key);
        u32::try_from(v.len() - 1).unwrap_or(u32::MAX)
    }

    /// Takes `key` out of `room` in O(1): the last member moves into its
    /// slot. Returns the member that moved and its new slot, which its
    /// holder must record. A stale slot falls back to a search.
    pub fn remove_at(&mut self, room: &str, slot: u32, key: u32) -> Option<(u32, u32)> {
        let v = self.map.get_mut(room)?;
        let mut i = slot as usize;
        if v.get(i) != Some(&key) {
            i = v.iter().position(|k| *k == key)?;
        }
        v.swap_remove(i);
        let moved = v.get(i).map(|k| (*k, u32::try_from(i).unwrap_or(u32::MAX)));
        if v.is_empty() {
            self.map.remove(room);
        } else if v.capacity() > 64 && v.len() < v.capacity() / 4 {
            // A room that emptied out (slow members closed) gives memory back.
            v.shrink_to(v.len() * 2);
        }
        moved
    }

    pub fn members(&self, room: &str) -> &[u32] {
        self.map.get(room).map_or(&[], |v| v.as_slice())
    }

    /// Memberships held (a connection in two rooms counts twice).
    pub fn len(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every `(room, connection)` membership.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomName, u32)> + '_ {
        self.map.iter().flat_map(|(room, keys)| keys.iter().map(move |k| (room, *k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seq of an encoded message, read back from its JSON.
    fn msg_seq(m: &MsgFrame) -> u64 {
        let json = m.json();
        let key = b"\"seq\":";
        json.windows(key.len())
            .position(|w| w == key)
            .map(|i| {
                json[i + key.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
            })
            .unwrap_or(0)
    }

    fn settings() -> RoomSettings {
        RoomSettings {
            tail: 4,
            max_replay: 3,
            dedup_window: Duration::from_secs(60),
            retain_messages: None,
            retain_age: None,
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

    fn publish(r: &mut OwnedRoom, s: &RoomSettings, u: &UserId, id: Option<&str>, now: u64) -> Reserved {
        let out = r.reserve(s, u, &body(), id, now);
        if let Reserved::New { seq, ts, frame, .. } = &out {
            r.commit(s, *seq, *ts, frame.clone());
        }
        out
    }

    #[test]
    fn seqs_tail_replay_history_dedup() {
        let s = settings();
        let mut r = OwnedRoom::new("r".into(), 2);
        let u: UserId = "ann".into();
        for i in 0..6 {
            let id = format!("m{i}");
            assert!(matches!(publish(&mut r, &s, &u, Some(&id), 1000 + i), Reserved::New { .. }));
        }
        assert_eq!(r.last_seq(), 6);
        match publish(&mut r, &s, &u, Some("m2"), 2000) {
            Reserved::Duplicate { seq, ts } => assert_eq!((seq, ts), (3, 1002)),
            Reserved::New { .. } => panic!("dup expected"),
        }
        // Dedup expires with its window.
        assert!(matches!(publish(&mut r, &s, &u, Some("m2"), 1002 + 60_000), Reserved::New { .. }));
        assert_eq!(r.last_seq(), 7);
        // Tail holds 4..=7.
        assert!(matches!(r.replay(7, 3), Replay::Nothing));
        assert!(matches!(r.replay(5, 3), Replay::Tail(f) if f.len() == 2));
        assert!(matches!(r.replay(3, 3), Replay::TooMany)); // 4 missing > cap 3
        assert!(matches!(r.replay(2, 10), Replay::Storage { after: 2, upto: 7 }));
        let (page, more) = r.history(None, None, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert!(more);
        assert_eq!(msg_seq(page[0]), 6);
        let (page, more) = r.history(None, Some(4), 10).unwrap();
        assert_eq!(page.len(), 3);
        assert!(!more);
        let (page, more) = r.history(Some(6), Some(3), 1).unwrap();
        assert_eq!(msg_seq(page[0]), 4);
        assert!(more);
        assert!(r.history(None, Some(1), 2).is_none()); // reaches below the tail
        assert!(r.history(None, None, 10).is_none());
    }

    #[test]
    fn taken_back_and_pending_are_invisible() {
        let s = settings();
        let mut r = OwnedRoom::new("r".into(), 1);
        let u: UserId = "ann".into();
        let Reserved::New { seq, .. } = r.reserve(&s, &u, &body(), Some("a"), 1) else { panic!() };
        assert_eq!(r.last_seq(), 0); // not committed yet
        r.forget(&u, "a", seq);
        r.take_back(seq);
        let Reserved::New { seq: again, ts, frame, .. } = r.reserve(&s, &u, &body(), Some("a"), 2) else { panic!() };
        assert_eq!(again, seq);
        r.commit(&s, again, ts, frame);
        assert_eq!(r.last_seq(), 1);
        // Seq 2 and 3 reserved, 2 fails: both are taken back, 2's id forgotten.
        let Reserved::New { seq: two, .. } = r.reserve(&s, &u, &body(), Some("b"), 3) else { panic!() };
        let Reserved::New { seq: three, .. } = r.reserve(&s, &u, &body(), Some("c"), 3) else { panic!() };
        assert_eq!((two, three), (2, 3));
        r.forget(&u, "b", two);
        r.forget(&u, "c", three);
        r.take_back(two);
        assert_eq!(r.last_seq(), 1);
        assert!(matches!(r.reserve(&s, &u, &body(), Some("b"), 4), Reserved::New { seq: 2, .. }));
        assert!(matches!(r.reserve(&s, &u, &body(), Some("a"), 4), Reserved::Duplicate { seq: 1, .. }));
        let loaded = OwnedRoom::with_head("r".into(), 1, 9, 5, 1_000_000);
        assert!(loaded.dedup_needs_storage(&s, 1_000_000 + 1));
        assert!(!loaded.dedup_needs_storage(&s, 1_000_000 + 61_000));
    }

    #[test]
    fn presence_counts_connections() {
        let mut r = OwnedRoom::new("r".into(), 2);
        let u: UserId = "ann".into();
        assert!(r.join(0, 10, &u, 1).1.is_some());
        assert_eq!(r.join(0, 10, &u, 1), (false, None), "a member joining again counts once");
        assert!(r.join(1, 11, &u, 2).1.is_none());
        assert_eq!(r.member_reactors().count(), 2);
        assert!(r.leave(0, 12, &u).is_none(), "no member: nothing changes");
        assert_eq!(r.member_reactors().count(), 2);
        assert!(r.leave(0, 10, &u).is_none());
        assert!(r.leave(1, 11, &u).is_some());
        assert_eq!(r.member_reactors().count(), 0);
        assert_eq!(r.presence().count(), 0);
    }
}
