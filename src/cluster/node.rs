//! The node thread: this process's side of every link. It owns
//! - the link state of each peer (hello, heartbeats, up and down);
//! - as a non-owner: the requests it forwarded (by ticket, answered
//!   `unavailable` if the link breaks first), the local members of rooms
//!   other nodes own (to register them again after a reconnect), and per
//!   such room the last seq handed to the local reactors, so that it never
//!   delivers out of order: on a gap it holds what comes and asks the owner
//!   for the range;
//! - as an owner: each peer's members of the rooms this node owns, so that
//!   a peer that goes down or restarts has its presences leave.
//!
//! Ordering hazards:
//! - A link is FIFO, and an owner emits a joiner's answer after every
//!   delivery it reports and before any later one (see `rooms::core`).
//!   Both reach the member's reactor through this thread in arrival order,
//!   so a remote join meets the live stream as a local one does. While a
//!   room is held for a gap, answers for it are held too, in order.
//! - Registering a member (at forward time) comes before its answer, so
//!   its reactor already gets the room's deliveries when the answer lists
//!   it there.
//! - After a reconnect the owner may or may not still have this node's
//!   members: they are sent again between `SyncStart` and `SyncEnd` (the
//!   owner drops those not sent again), then every room is filled from its
//!   last seq, holding live deliveries until the fill is in.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Poll};
use serde_json::value::RawValue;

use super::link::{self, Outbound};
use super::wire::{self, Forward, Hello, Item, WireKind};
use super::{Handle, LinkState};
use crate::proto::msg::{self, MsgFrame};
use crate::reactor::mail::{Answer, Asker, AskerKind, ClusterMail, Delivery, Inbox, Mail, Mailbox};
use crate::reactor::Shared;
use crate::rooms::core::{self, Asked, Command, Reply};
use crate::rooms::{owner_of, MemberId, RoomName, UserId};

/// Requests forwarded and not yet answered, at most; past it new ones are
/// refused `overloaded`.
const MAX_INFLIGHT: usize = 64 * 1024;
/// Bytes of deliveries held for one room while its gap is filled; past it
/// they are dropped and fetched again by the fill.
const HOLD_BYTES: usize = 4 << 20;
/// Messages asked for per fill request.
const FILL_LIMIT: u32 = msg::MAX_HISTORY_LIMIT as u32;
/// A peer's members of this node's rooms, at most (a join past it is
/// refused `overloaded`).
const MAX_PEER_MEMBERS: usize = 4 << 20;
const TICK: Duration = Duration::from_millis(50);
const HELLO_EVERY: Duration = Duration::from_millis(200);
const BEAT_EVERY: Duration = Duration::from_millis(250);
const FILL_RETRY: Duration = Duration::from_millis(200);
/// Connections to the listener that have not proven themselves, at most.
///
/// Why pipes are unbound rather than closed, save under such a crowd:
/// nng-sys 1.4.0-rc.0 (the newest there is) has a race in its push
/// protocol — a send that completes just as the pipe closes puts the freed
/// pipe back on the socket's ready list — so a node whose pipe the other
/// side closes while it sends can crash (seen within seconds when every
/// refused hello closed its pipe). A peer refused or dropped here keeps its
/// connection, and everything it sends is ignored until a hello proves it;
/// only a crowd of unproven connections (an attack) is closed.
const MAX_UNPROVEN: usize = 64;
/// How long a stopping node waits for its senders to empty their queues.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// One log line per peer (or for strangers) this often at most.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// What `unavailable` tells a client to wait before retrying.
pub const RETRY_AFTER_MS: u64 = 1000;
/// Top bit of a member id the owner gives a peer's member, so it never
/// meets a local one (`reactor << 32 | key`, reactors < 2^16).
const REMOTE_MEMBER: u64 = 1 << 63;

/// How a peer's link is, from this side.
struct Peer {
    idx: u16,
    id: String,
    out: Outbound,
    /// The nonce the peer must echo for its link to be bound.
    my_nonce: [u8; 16],
    /// The last nonce the peer sent: our hellos echo it.
    peer_nonce: [u8; 16],
    /// The pipe its frames come on, once its hello proved it.
    pipe: Option<nng::Pipe>,
    /// Its last heartbeat said it hears us.
    heard: bool,
    up: bool,
    /// When it was last up (or this thread started); not up for
    /// `down_after` since then, it is down.
    up_until: Instant,
    /// Its members here have left and its link starts over (cleared when
    /// it is up again).
    down: bool,
    last_rx: Option<Instant>,
    last_hello: Option<Instant>,
    last_beat: Option<Instant>,
    incarnation: Option<u64>,
    /// Log lines about this peer: when the last went out, and how many
    /// were held back since (at most one per `LOG_EVERY`).
    logged: Option<Instant>,
    quiet: u64,
    /// Bytes the last resync queued (its members named again): they do not
    /// count against `queue-bytes`, or a large resync would mark the peer
    /// lagging, which resyncs again, for ever. Cleared once the queue is
    /// empty.
    sync_bytes: usize,
    /// As owner: the peer's members of our rooms (owner-side member id)
    /// and the sync round that last named them.
    members: HashMap<(RoomName, MemberId), (UserId, u64)>,
    sync_round: u64,
}

/// A local member of a room another node owns.
struct Local {
    user: UserId,
    /// The owner answered its join (a refused first join unregisters it).
    confirmed: bool,
}

/// A room another node owns, with members here.
struct Remote {
    owner: u16,
    members: HashMap<MemberId, Local>,
    /// Members per local reactor (from the member id).
    per_reactor: Vec<u32>,
    /// The last seq handed to the local reactors (by the stream or a fill).
    last: Option<u64>,
    /// The last seq the owner's stream carried: it only ever grows (a fill
    /// may have handed on what the stream brings later, but the stream
    /// itself never goes back).
    live: Option<u64>,
    hold: Option<Hold>,
}

/// What a room waits with while its gap is filled.
#[derive(Default)]
struct Hold {
    items: VecDeque<Held>,
    bytes: usize,
    /// A fill request is out.
    asked: bool,
    retry_at: Option<Instant>,
}

enum Held {
    Deliver { seq: Option<u64>, frame: Bytes },
    Answer { to: Asker, reply: Reply },
}

impl Hold {
    fn with(first: Held) -> Hold {
        let bytes = held_bytes(&first);
        Hold { items: VecDeque::from([first]), bytes, ..Hold::default() }
    }

    fn push(&mut self, item: Held) {
        self.bytes += held_bytes(&item);
        self.items.push_back(item);
    }
}

/// What a held item costs (a join answer carries its replay).
fn held_bytes(h: &Held) -> usize {
    match h {
        Held::Deliver { frame, .. } => frame.len(),
        Held::Answer { reply: Reply::Joined { replay, .. }, .. } => replay.iter().map(Bytes::len).sum(),
        Held::Answer { .. } => 0,
    }
}

enum Pending {
    Client { peer: u16, asker: Asker, asked: Asked, room: RoomName, member: Option<MemberId> },
    Fill { peer: u16, room: RoomName },
}

pub struct Node {
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    reactors: usize,
    peers: Vec<Option<Peer>>,
    pipes: HashMap<nng::Pipe, u16>,
    /// Connections that have not bound yet, since when (closed after
    /// `down_after`, or at once past `MAX_UNPROVEN`).
    unproven: HashMap<nng::Pipe, Instant>,
    remotes: HashMap<RoomName, Remote>,
    inflight: HashMap<u32, Pending>,
    /// Tickets in the order they were given, for timeouts.
    inflight_order: VecDeque<(Instant, u32)>,
    next_ticket: u32,
    outbox: Vec<Vec<Mail>>,
    digest: [u8; 32],
    key: aws_lc_rs::hmac::Key,
    poll: Poll,
    inbox: Inbox,
    stop: Arc<AtomicBool>,
    /// Log lines about pipes no peer has proven (see `Peer::logged`).
    strangers_logged: Option<Instant>,
    strangers_quiet: u64,
}

/// The parts made on the main thread (so that a bad address fails startup).
pub struct NodeParts {
    pub poll: Poll,
    pub inbox: Inbox,
    pub mailbox: Mailbox,
}

/// SHA-256 over the node list, in order: nodes configured differently
/// refuse each other's links.
pub fn nodes_digest(nodes: &[crate::config::cluster::NodeSpec]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for n in nodes {
        ctx.update(&(n.id.len() as u32).to_le_bytes());
        ctx.update(n.id.as_bytes());
        ctx.update(&(n.addr.len() as u32).to_le_bytes());
        ctx.update(n.addr.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What a hello's MAC covers: every field, and who it is for (a hello for
/// one node is no good at another).
pub fn hello_input(h: &Hello, to: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend_from_slice(b"roomcast-cluster-hello\0");
    v.extend_from_slice(&h.version.to_le_bytes());
    v.extend_from_slice(&(h.node.len() as u32).to_le_bytes());
    v.extend_from_slice(h.node.as_bytes());
    v.extend_from_slice(&(to.len() as u32).to_le_bytes());
    v.extend_from_slice(to.as_bytes());
    v.extend_from_slice(&h.incarnation.to_le_bytes());
    v.extend_from_slice(&h.nodes_digest);
    v.extend_from_slice(&h.nonce);
    v.extend_from_slice(&h.echo);
    v
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    let _ = getrandom::fill(&mut n);
    n
}

/// The owner-side id of a peer's member (see `REMOTE_MEMBER`).
fn remote_member(peer: u16, member: MemberId) -> Option<MemberId> {
    (member < (1 << 48)).then(|| REMOTE_MEMBER | (u64::from(peer) << 48) | member)
}

fn refused(to: Asked, room: RoomName, status: u16, code: &'static str, message: impl Into<String>) -> Reply {
    Reply::Refused { to, room, status, code, message: message.into() }
}

fn unavailable(to: Asked, room: &RoomName, why: &str) -> Reply {
    refused(to, room.clone(), 503, "unavailable", why)
}

/// The JSON of `frame` if it is exactly one complete, unmasked WebSocket
/// text frame of valid UTF-8, as an owner encodes every frame it delivers.
fn text_frame(frame: &[u8]) -> Option<&[u8]> {
    let (&b0, &b1) = (frame.first()?, frame.get(1)?);
    if b0 != 0x81 || b1 & 0x80 != 0 {
        return None;
    }
    let (len, at) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])), 4),
        127 => (u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let json = frame.get(at..)?;
    (json.len() as u64 == len && std::str::from_utf8(json).is_ok()).then_some(json)
}

/// A peer's answer is of the kind, and for the room, of what was asked.
fn fits(asked: Asked, room: &RoomName, reply: &Reply) -> bool {
    match (asked, reply) {
        (_, Reply::Refused { to, room: r, .. }) => *to == asked && r == room,
        (Asked::Join, Reply::Joined { room: r, .. })
        | (Asked::Publish, Reply::Ack { room: r, .. })
        | (Asked::History, Reply::History { room: r, .. })
        | (Asked::Presence, Reply::Presence { room: r, .. }) => r == room,
        _ => false,
    }
}

/// Every frame an answer carries to clients is a `msg` frame.
fn frames_ok(reply: &Reply) -> bool {
    let msg = |f: &[u8]| text_frame(f).is_some_and(|j| j.starts_with(b"{\"op\":\"msg\","));
    match reply {
        Reply::Joined { replay, .. } => replay.iter().all(|f| msg(f)),
        Reply::History { page, .. } => page.iter().all(|m| msg(&m.frame)),
        _ => true,
    }
}

/// A `msg` frame's seq (only fills read it, so a full parse is fine).
fn seq_of(m: &MsgFrame) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(m.json()).ok().map(|s| s.seq)
}

impl Node {
    /// Makes the node's sockets: fails (at startup) on an address nng refuses.
    pub fn new(
        shared: Arc<Shared>,
        handle: Arc<Handle>,
        parts: NodeParts,
        stop: Arc<AtomicBool>,
    ) -> Result<(Node, std::thread::JoinHandle<()>), String> {
        let cfg = &handle.config;
        let listen_at = cfg.listen_addr().to_string();
        let receiver = link::listen(&listen_at, parts.mailbox.clone(), stop.clone())?;
        let mut peers = Vec::with_capacity(cfg.nodes.len());
        for (i, n) in cfg.nodes.iter().enumerate() {
            if i == handle.me {
                peers.push(None);
                continue;
            }
            let out = link::dial(&n.addr, handle.clone(), i, stop.clone())?;
            peers.push(Some(Peer {
                idx: i as u16,
                id: n.id.clone(),
                out,
                my_nonce: nonce(),
                peer_nonce: [0; 16],
                pipe: None,
                heard: false,
                up: false,
                up_until: Instant::now(),
                down: true,
                last_rx: None,
                last_hello: None,
                last_beat: None,
                incarnation: None,
                logged: None,
                quiet: 0,
                sync_bytes: 0,
                members: HashMap::new(),
                sync_round: 0,
            }));
        }
        let reactors = shared.reactors();
        let node = Node {
            digest: nodes_digest(&cfg.nodes),
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &cfg.secret.0),
            shared,
            reactors,
            peers,
            pipes: HashMap::new(),
            unproven: HashMap::new(),
            remotes: HashMap::new(),
            inflight: HashMap::new(),
            inflight_order: VecDeque::new(),
            next_ticket: 1,
            outbox: (0..reactors).map(|_| Vec::new()).collect(),
            poll: parts.poll,
            inbox: parts.inbox,
            stop,
            strangers_logged: None,
            strangers_quiet: 0,
            handle,
        };
        Ok((node, receiver))
    }

    /// The loop: mail in, a tick every `TICK`, until stopped.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(8);
        let mut next_tick = Instant::now();
        loop {
            if self.stop.load(Relaxed) {
                // The reactors are done: what they left (the leaves of the
                // members closed in the drain) still goes to the senders.
                while let Ok(m) = self.inbox.rx.try_recv() {
                    self.mail(m);
                }
                self.flush();
                // Give the senders a moment to pass it on (not forever: a
                // peer that is down takes nothing).
                let until = Instant::now().checked_add(STOP_GRACE);
                while until.is_some_and(|t| Instant::now() < t)
                    && self.peers.iter().flatten().any(|p| !p.out.is_empty())
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                self.flush();
                next_tick = now.checked_add(TICK).unwrap_or(now);
            }
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if !self.inbox.going_to_sleep() {
                let _ = self.poll.poll(&mut events, Some(timeout));
            }
            self.inbox.awake();
            for _ in 0..4096 {
                match self.inbox.rx.try_recv() {
                    Ok(m) => self.mail(m),
                    Err(_) => break,
                }
            }
            self.flush();
        }
    }

    fn mail(&mut self, m: Mail) {
        match m {
            Mail::Cluster(c) => self.cluster_mail(c),
            Mail::Batch(all) => {
                for m in all {
                    self.mail(m);
                }
            }
            // Nothing else is addressed to this thread.
            _ => {}
        }
    }

    fn cluster_mail(&mut self, c: ClusterMail) {
        match c {
            ClusterMail::Forward(c) => self.forward(c),
            ClusterMail::Deliver { peer, room, seq, frame } => {
                if let Some(p) = self.up_peer(peer) {
                    p.out.push(Item::Deliver { room, seq, frame });
                }
            }
            ClusterMail::Answer { peer, ticket, reply } => {
                if ticket != 0 {
                    if let Some(p) = self.up_peer(peer) {
                        p.out.push(Item::Answer { ticket, reply });
                    }
                }
            }
            ClusterMail::Inbound { pipe, items } => self.inbound(pipe, items),
            ClusterMail::PipeAdded(pipe) => {
                // Anyone may connect; only a few may wait to prove
                // themselves, and not for long (see `tick`).
                if self.unproven.len() >= MAX_UNPROVEN {
                    self.log(u16::MAX, "too many connections that sent no good hello: closing a new one");
                    link::close_pipe(pipe);
                } else {
                    self.unproven.insert(pipe, Instant::now());
                }
            }
            ClusterMail::PipeGone(pipe) => {
                self.unproven.remove(&pipe);
                if let Some(p) = self.pipes.remove(&pipe) {
                    self.link_lost(p, "its connection closed");
                }
            }
        }
        self.check_lag();
    }

    fn up_peer(&mut self, peer: u16) -> Option<&mut Peer> {
        self.peers.get_mut(peer as usize).and_then(|p| p.as_mut()).filter(|p| p.up)
    }

    // ------------------------------------------------------- non-owner

    /// A local reactor's command for a room another node owns.
    fn forward(&mut self, c: Command<Asker>) {
        let room = c.room().clone();
        let Some(owner) = self.handle.owner(&room) else {
            // Ours after all (cannot happen: the reactor asked the ring).
            let at = owner_of(&room, self.reactors);
            self.shared.post_from_thread(at, Mail::Owner(c));
            return;
        };
        if let Command::Leave(l) = &c {
            self.unregister(&room, l.member);
            if let Some(p) = self.up_peer(owner) {
                p.out.push(Item::Forward(Forward::Leave { room, user: l.user.clone(), member: l.member }));
            }
            return;
        }
        let up = self.up_peer(owner).is_some();
        let (asker, asked) = match &c {
            Command::Join(j) => (j.asker.clone(), Asked::Join),
            Command::Publish(p) => (p.asker.clone(), Asked::Publish),
            Command::History(h) => (h.asker.clone(), Asked::History),
            Command::Presence(p) => (p.asker.clone(), Asked::Presence),
            Command::Leave(_) => return,
        };
        if !up {
            let id = self.node_id(owner);
            return self.answer_local(
                asker,
                unavailable(asked, &room, &format!("node {id}, which owns the room, is unreachable")),
            );
        }
        if self.inflight.len() >= MAX_INFLIGHT {
            let reply = refused(asked, room, 503, "overloaded", "too many requests in flight to other nodes; retry");
            return self.answer_local(asker, reply);
        }
        if let Command::Publish(p) = &c {
            // One frame carries it whole; nng drops larger frames.
            if p.body.get().len() > wire::MAX_FRAME / 2 {
                let m = format!("a message for another node's room is at most {} bytes", wire::MAX_FRAME / 2);
                return self.answer_local(asker, refused(asked, room, 413, "too_large", m));
            }
        }
        let kind = match asker.kind {
            AskerKind::Http => WireKind::Http,
            _ => WireKind::Ws,
        };
        let member = match &c {
            Command::Join(j) => Some(j.member),
            _ => None,
        };
        let ticket = self.ticket(Pending::Client { peer: owner, asker, asked, room: room.clone(), member });
        let f = match c {
            Command::Join(j) => {
                self.register(&room, owner, j.member, &j.user);
                Forward::Join { ticket, room, user: j.user, member: j.member, since: j.since }
            }
            Command::Publish(p) => {
                Forward::Publish { ticket, kind, room, user: p.user, body: p.body.get().into(), id: p.id }
            }
            Command::History(h) => Forward::History {
                ticket,
                kind,
                room,
                before: h.before,
                after: h.after,
                limit: h.limit.min(u32::MAX as usize) as u32,
            },
            Command::Presence(_) => Forward::Presence { ticket, kind, room },
            Command::Leave(_) => return,
        };
        if let Some(p) = self.up_peer(owner) {
            p.out.push(Item::Forward(f));
        }
    }

    fn node_id(&self, idx: u16) -> String {
        self.handle.config.nodes.get(idx as usize).map_or_else(|| "?".into(), |n| n.id.clone())
    }

    fn ticket(&mut self, p: Pending) -> u32 {
        loop {
            let t = self.next_ticket;
            self.next_ticket = self.next_ticket.wrapping_add(1).max(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.inflight.entry(t) {
                v.insert(p);
                self.inflight_order.push_back((Instant::now(), t));
                return t;
            }
        }
    }

    fn register(&mut self, room: &RoomName, owner: u16, member: MemberId, user: &UserId) {
        let reactors = self.reactors;
        let r = self.remotes.entry(room.clone()).or_insert_with(|| Remote {
            owner,
            members: HashMap::new(),
            per_reactor: vec![0; reactors],
            last: None,
            live: None,
            hold: None,
        });
        if let std::collections::hash_map::Entry::Vacant(v) = r.members.entry(member) {
            v.insert(Local { user: user.clone(), confirmed: false });
            if let Some(n) = r.per_reactor.get_mut((member >> 32) as usize) {
                *n += 1;
            }
        }
    }

    fn unregister(&mut self, room: &RoomName, member: MemberId) {
        let Some(r) = self.remotes.get_mut(room) else { return };
        if r.members.remove(&member).is_some() {
            if let Some(n) = r.per_reactor.get_mut((member >> 32) as usize) {
                *n = n.saturating_sub(1);
            }
        }
        if r.members.is_empty() {
            // Held answers still go out (their askers wait for them).
            if let Some(r) = self.remotes.remove(room) {
                for h in r.hold.into_iter().flat_map(|h| h.items) {
                    if let Held::Answer { to, reply } = h {
                        self.answer_local(to, reply);
                    }
                }
            }
        }
    }

    fn answer_local(&mut self, to: Asker, reply: Reply) {
        if let Some(out) = self.outbox.get_mut(to.reactor()) {
            out.push(Mail::Answer(Answer { to, reply }));
        }
    }

    /// `frame` for every local member of `room`.
    fn broadcast(outbox: &mut [Vec<Mail>], room: &RoomName, per_reactor: &[u32], frame: &Bytes) {
        for (r, n) in per_reactor.iter().enumerate() {
            if *n > 0 {
                if let Some(out) = outbox.get_mut(r) {
                    out.push(Mail::Deliver(Delivery {
                        room: room.clone(),
                        frame: frame.clone(),
                        twin: None,
                        committed: None,
                    }));
                }
            }
        }
    }

    /// A delivery from `room`'s owner (`check` proved the sender owns it
    /// and the seq grows): the stream's position moves, then it goes on.
    fn remote_deliver(&mut self, room: RoomName, seq: Option<u64>, frame: Bytes) {
        let Some(r) = self.remotes.get_mut(&room) else { return };
        if seq.is_some() {
            r.live = seq;
        }
        self.pass(&room, seq, frame);
    }

    /// A delivery handed on in order, held behind a fill, or the start of
    /// a gap (held, and the range asked for).
    fn pass(&mut self, room: &RoomName, seq: Option<u64>, frame: Bytes) {
        let Some(r) = self.remotes.get_mut(room) else { return };
        if let Some(h) = &mut r.hold {
            h.push(Held::Deliver { seq, frame });
            if h.bytes > HOLD_BYTES {
                // The fill fetches the messages again; answers and
                // presence changes (which no fill brings back) stay.
                h.items.retain(|i| !matches!(i, Held::Deliver { seq: Some(_), .. }));
                h.bytes = h.items.iter().map(held_bytes).sum();
            }
            return;
        }
        match (seq, r.last) {
            // A fill handed it on already.
            (Some(s), Some(last)) if s <= last => {}
            (Some(s), Some(last)) if s > last + 1 => {
                r.hold = Some(Hold::with(Held::Deliver { seq, frame }));
                self.fill(room);
            }
            (Some(s), _) => {
                r.last = Some(s);
                Self::broadcast(&mut self.outbox, room, &r.per_reactor, &frame);
            }
            (None, _) => Self::broadcast(&mut self.outbox, room, &r.per_reactor, &frame),
        }
    }

    /// An answer from the owner for one of our clients, in order with the
    /// room's deliveries.
    fn client_answer(&mut self, to: Asker, member: Option<MemberId>, reply: Reply) {
        let room = match &reply {
            Reply::Joined { room, .. } => room.clone(),
            _ => return self.answer_local(to, reply),
        };
        if let (Some(m), Some(r)) = (member, self.remotes.get_mut(&room)) {
            if let Some(l) = r.members.get_mut(&m) {
                l.confirmed = true;
            }
        }
        let Some(r) = self.remotes.get_mut(&room) else { return self.answer_local(to, reply) };
        if let Some(h) = &mut r.hold {
            return h.push(Held::Answer { to, reply });
        }
        let Reply::Joined { last, .. } = &reply else { return };
        match r.last {
            None => r.last = Some(*last),
            Some(mine) if *last > mine => {
                // Deliveries this node missed: the others are behind the
                // joiner. Fill first; the answer waits its turn.
                r.hold = Some(Hold::with(Held::Answer { to, reply }));
                return self.fill(&room);
            }
            Some(_) => {}
        }
        self.answer_local(to, reply);
    }

    /// Asks the owner for what follows the room's last seq (once at a time).
    fn fill(&mut self, room: &RoomName) {
        let Some(r) = self.remotes.get_mut(room) else { return };
        let (owner, after) = (r.owner, r.last);
        let Some(h) = r.hold.as_mut() else { return };
        if h.asked {
            return;
        }
        let Some(after) = after else {
            // Nothing delivered yet: nothing to fill; let it all out.
            return self.release(room);
        };
        if self.up_peer(owner).is_none() || self.inflight.len() >= MAX_INFLIGHT {
            if let Some(h) = self.remotes.get_mut(room).and_then(|r| r.hold.as_mut()) {
                h.retry_at = Instant::now().checked_add(FILL_RETRY);
            }
            return;
        }
        if let Some(h) = self.remotes.get_mut(room).and_then(|r| r.hold.as_mut()) {
            h.asked = true;
            h.retry_at = None;
        }
        let ticket = self.ticket(Pending::Fill { peer: owner, room: room.clone() });
        let f = Forward::History {
            ticket,
            kind: WireKind::Ws,
            room: room.clone(),
            before: None,
            after: Some(after),
            limit: FILL_LIMIT,
        };
        if let Some(p) = self.up_peer(owner) {
            p.out.push(Item::Forward(f));
        }
    }

    fn fill_answer(&mut self, room: RoomName, reply: Reply) {
        let Some(r) = self.remotes.get_mut(&room) else { return };
        let Some(h) = r.hold.as_mut() else { return };
        h.asked = false;
        match reply {
            Reply::History { page, more, .. } => {
                let got = !page.is_empty();
                for m in page {
                    let Some(seq) = seq_of(&m) else { continue };
                    // What the stream had before this seq goes first: a
                    // joiner answered at `L < seq` must be listed before
                    // `seq` goes out, or it would miss it.
                    self.let_out_before(&room, seq);
                    let Some(r) = self.remotes.get_mut(&room) else { return };
                    if r.last.is_none_or(|l| seq > l) {
                        r.last = Some(seq);
                        Self::broadcast(&mut self.outbox, &room, &r.per_reactor, &m.frame);
                    }
                }
                if more && got {
                    self.fill(&room);
                } else {
                    self.release(&room);
                }
            }
            _ => h.retry_at = Instant::now().checked_add(FILL_RETRY),
        }
    }

    /// Hands on the held items the owner's stream put before `seq`: its
    /// deliveries below it and the joins it answered at a seq below it.
    fn let_out_before(&mut self, room: &RoomName, seq: u64) {
        loop {
            let Some(r) = self.remotes.get_mut(room) else { return };
            let Some(h) = r.hold.as_mut() else { return };
            let before = match h.items.front() {
                Some(Held::Deliver { seq: None, .. }) => true,
                Some(Held::Deliver { seq: Some(s), .. }) => *s < seq,
                Some(Held::Answer { reply: Reply::Joined { last, .. }, .. }) => *last < seq,
                Some(Held::Answer { .. }) => true,
                None => false,
            };
            if !before {
                return;
            }
            let Some(item) = h.items.pop_front() else { return };
            h.bytes = h.bytes.saturating_sub(held_bytes(&item));
            match item {
                Held::Deliver { seq, frame } => {
                    if seq.is_none_or(|s| r.last.is_none_or(|l| s > l)) {
                        if seq.is_some() {
                            r.last = seq;
                        }
                        Self::broadcast(&mut self.outbox, room, &r.per_reactor, &frame);
                    }
                }
                Held::Answer { to, reply } => self.answer_local(to, reply),
            }
        }
    }

    /// The fill is in: what was held goes through in order (and may
    /// find another gap).
    fn release(&mut self, room: &RoomName) {
        let Some(r) = self.remotes.get_mut(room) else { return };
        let Some(h) = r.hold.take() else { return };
        for item in h.items {
            match item {
                Held::Deliver { seq, frame } => self.pass(room, seq, frame),
                Held::Answer { to, reply } => self.client_answer(to, None, reply),
            }
        }
    }

    // ----------------------------------------------------------- owner

    /// A peer's request for a room this node owns.
    fn owner_forward(&mut self, from: u16, f: Forward) {
        // `check` proved the room ours, the member id in range and the
        // body within the limits.
        let room = match &f {
            Forward::Join { room, .. }
            | Forward::Leave { room, .. }
            | Forward::Publish { room, .. }
            | Forward::History { room, .. }
            | Forward::Presence { room, .. } => room.clone(),
        };
        let at = owner_of(&room, self.reactors);
        let pseudo = self.reactors + from as usize;
        let Some(peer) = self.peers.get_mut(from as usize).and_then(|p| p.as_mut()) else { return };
        // How an answer is encoded is the asking node's business (`kind`).
        let c = match f {
            Forward::Join { ticket, room, user, member, since } => {
                let Some(member) = remote_member(from, member) else { return };
                if peer.members.len() >= MAX_PEER_MEMBERS && !peer.members.contains_key(&(room.clone(), member)) {
                    let reply = refused(Asked::Join, room, 503, "overloaded", "too many members from one node");
                    return peer.out.push(Item::Answer { ticket, reply });
                }
                peer.members.insert((room.clone(), member), (user.clone(), peer.sync_round));
                let asker = Asker::peer(from, ticket);
                Command::Join(core::Join { room, user, reactor: pseudo, member, since, asker })
            }
            Forward::Leave { room, user, member } => {
                let Some(member) = remote_member(from, member) else { return };
                peer.members.remove(&(room.clone(), member));
                Command::Leave(core::Leave { room, user, reactor: pseudo, member })
            }
            Forward::Publish { ticket, room, user, body, id, .. } => {
                let Ok(body) = RawValue::from_string(body.into()) else { return };
                Command::Publish(core::Publish { room, user, body, id, asker: Asker::peer(from, ticket) })
            }
            Forward::History { ticket, room, before, after, limit, .. } => Command::History(core::History {
                room,
                before,
                after,
                limit: (limit as usize).clamp(1, msg::MAX_HISTORY_LIMIT),
                asker: Asker::peer(from, ticket),
            }),
            Forward::Presence { ticket, room, .. } => {
                Command::Presence(core::Presence { room, asker: Asker::peer(from, ticket) })
            }
        };
        self.shared.post_from_thread(at, Mail::Owner(c));
    }

    /// The peer is gone (down, restarted): its members of our rooms leave.
    fn drop_members(&mut self, peer: u16, only_before: Option<u64>) {
        let pseudo = self.reactors + peer as usize;
        let Some(p) = self.peers.get_mut(peer as usize).and_then(|p| p.as_mut()) else { return };
        let gone: Vec<_> = match only_before {
            None => p.members.drain().collect(),
            Some(round) => {
                let old: Vec<_> = p.members.iter().filter(|(_, (_, r))| *r < round).map(|(k, _)| k.clone()).collect();
                old.into_iter().filter_map(|k| p.members.remove_entry(&k)).collect()
            }
        };
        for ((room, member), (user, _)) in gone {
            let at = owner_of(&room, self.reactors);
            self.shared
                .post_from_thread(at, Mail::Owner(Command::Leave(core::Leave { room, user, reactor: pseudo, member })));
        }
    }

    // ------------------------------------------------------------ links

    fn inbound(&mut self, pipe: nng::Pipe, items: Result<Vec<Item>, wire::WireError>) {
        let items = match items {
            Ok(i) => i,
            Err(e) => {
                // From a bound pipe: that peer's link drops; from any other,
                // only counted.
                let from = self.pipes.get(&pipe).copied();
                return match from {
                    Some(f) => self.bad(pipe, f, &format!("an undecodable frame ({e})")),
                    None => {
                        self.handle.stats.bad_frames.fetch_add(1, Relaxed);
                    }
                };
            }
        };
        let from = self.pipes.get(&pipe).copied();
        if let Some(p) = from.and_then(|f| self.peers.get(f as usize)).and_then(|p| p.as_ref()) {
            let s = &self.handle.stats.peers[p.idx as usize];
            s.frames_received.fetch_add(1, Relaxed);
            s.records_received.fetch_add(items.len() as u64, Relaxed);
        }
        // Hellos first (one may bind this pipe), then the rest as a whole.
        let (hellos, rest): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| matches!(i, Item::Hello(_)));
        for item in hellos {
            if let Item::Hello(h) = item {
                if self.hello(pipe, h).is_err() {
                    return;
                }
            }
        }
        if !rest.is_empty() {
            // Anything else only from a pipe a hello bound (a frame from an
            // unproven pipe is dropped, not trusted).
            let Some(from) = self.pipes.get(&pipe).copied() else { return };
            // Checked whole before any of it is applied: a bad frame
            // changes nothing.
            if let Err(why) = self.check(from, &rest) {
                return self.bad(pipe, from, why);
            }
            if let Some(p) = self.peers.get_mut(from as usize).and_then(|p| p.as_mut()) {
                p.last_rx = Some(Instant::now());
            }
            for item in rest {
                self.item(from, item);
            }
        }
        self.update_up();
    }

    /// What a frame from `from` may not carry: requests for rooms this node
    /// does not own, deliveries for rooms the sender does not own, a seq
    /// at or below one its stream carried, answers to another node's
    /// requests, member ids out of range, bodies past the depth limit.
    fn check(&self, from: u16, items: &[Item]) -> Result<(), &'static str> {
        let depth = self.shared.config.max_body_depth;
        let mut live: HashMap<&RoomName, u64> = HashMap::new();
        for item in items {
            match item {
                Item::Forward(f) => {
                    let (room, member) = match f {
                        Forward::Join { room, member, .. } | Forward::Leave { room, member, .. } => {
                            (room, Some(*member))
                        }
                        Forward::Publish { room, body, .. } => {
                            if msg::check_body(body, depth).is_err() {
                                return Err("a body past the limits");
                            }
                            (room, None)
                        }
                        Forward::History { room, .. } | Forward::Presence { room, .. } => (room, None),
                    };
                    if self.handle.owner(room).is_some() {
                        return Err("a request for a room this node does not own");
                    }
                    if member.is_some_and(|m| remote_member(from, m).is_none()) {
                        return Err("a member id out of range");
                    }
                }
                Item::Answer { ticket, reply } => match self.inflight.get(ticket) {
                    Some(Pending::Client { peer, .. } | Pending::Fill { peer, .. }) if *peer != from => {
                        return Err("an answer to another node's request");
                    }
                    Some(Pending::Client { asked, room, .. }) if !fits(*asked, room, reply) => {
                        return Err("an answer that does not fit its request");
                    }
                    Some(Pending::Fill { room, .. }) if !fits(Asked::History, room, reply) => {
                        return Err("an answer that does not fit its request");
                    }
                    Some(_) if !frames_ok(reply) => return Err("an answer with frames that are not messages"),
                    _ => {}
                },
                Item::Deliver { room, seq, frame } => {
                    if self.handle.owner(room) != Some(from) {
                        return Err("a delivery for a room the sender does not own");
                    }
                    // These bytes go to clients as they are.
                    let want: &[u8] = if seq.is_some() { b"{\"op\":\"msg\"," } else { b"{\"op\":\"presence_diff\"," };
                    if !text_frame(frame).is_some_and(|j| j.starts_with(want)) {
                        return Err("a delivery that is not a message frame");
                    }
                    if let Some(s) = seq {
                        let last = live.get(room).copied().or_else(|| self.remotes.get(room).and_then(|r| r.live));
                        if last.is_some_and(|l| *s <= l) {
                            return Err("a seq that went backwards");
                        }
                        live.insert(room, *s);
                    }
                }
                Item::Hello(_) | Item::Heartbeat { .. } | Item::Lagged | Item::SyncStart | Item::SyncEnd => {}
            }
        }
        Ok(())
    }

    /// One item of a frame `check` passed.
    fn item(&mut self, from: u16, item: Item) {
        match item {
            Item::Hello(_) => {}
            Item::Heartbeat { hears_you } => {
                if let Some(p) = self.peers.get_mut(from as usize).and_then(|p| p.as_mut()) {
                    p.heard = hears_you;
                }
            }
            Item::Forward(f) => self.owner_forward(from, f),
            // `check` proved the ticket, if still in flight, was this
            // peer's, and the answer fits it; one answered already (timed
            // out) is dropped.
            Item::Answer { ticket, reply } => match self.inflight.remove(&ticket) {
                Some(Pending::Client { asker, member, room, .. }) => {
                    if let (Some(m), Reply::Refused { .. }) = (member, &reply) {
                        // A refused first join leaves no membership.
                        if self.remotes.get(&room).and_then(|r| r.members.get(&m)).is_some_and(|l| !l.confirmed) {
                            self.unregister(&room, m);
                        }
                    }
                    self.client_answer(asker, member, reply);
                }
                Some(Pending::Fill { room, .. }) => self.fill_answer(room, reply),
                None => {}
            },
            Item::Deliver { room, seq, frame } => self.remote_deliver(room, seq, frame),
            Item::Lagged => self.resync(from),
            Item::SyncStart => {
                if let Some(p) = self.peers.get_mut(from as usize).and_then(|p| p.as_mut()) {
                    p.sync_round += 1;
                }
            }
            Item::SyncEnd => {
                let round = self.peers.get(from as usize).and_then(|p| p.as_ref()).map_or(0, |p| p.sync_round);
                self.drop_members(from, Some(round));
            }
        }
    }

    /// Checks a hello; binds its pipe when it echoes our nonce.
    fn hello(&mut self, pipe: nng::Pipe, h: Hello) -> Result<(), ()> {
        let me = self.handle.config.node_id.clone();
        let idx = self.handle.config.nodes.iter().position(|n| n.id == h.node);
        let why = if h.version != wire::VERSION {
            Some(format!("protocol version {} (this node speaks {})", h.version, wire::VERSION))
        } else if idx.is_none_or(|i| i == self.handle.me) {
            Some(format!("node id {:?}, which is not a peer in the node list", h.node))
        } else if h.nodes_digest != self.digest {
            Some("a different node list".to_string())
        } else if aws_lc_rs::hmac::verify(&self.key, &hello_input(&h, &me), &h.mac).is_err() {
            Some("a bad MAC (another secret?)".to_string())
        } else {
            None
        };
        if let Some(why) = &why {
            let who = idx.map_or(u16::MAX, |i| i as u16);
            self.log(who, &format!("refused a hello from {:?}: {why}", h.node));
        }
        // A pipe proven as one node does not speak for another.
        let bound_to = self.pipes.get(&pipe).copied();
        let why = why.or_else(|| {
            bound_to.filter(|b| idx.is_some_and(|i| i != *b as usize)).map(|_| "a pipe bound to another node".into())
        });
        let Some(idx) = idx.filter(|_| why.is_none()) else {
            self.handle.stats.hellos_refused.fetch_add(1, Relaxed);
            self.unproven.remove(&pipe);
            if let Some(p) = self.pipes.remove(&pipe) {
                self.link_lost(p, "it sent a bad hello");
            }
            // Not closed: see `MAX_UNPROVEN`.
            return Err(());
        };
        // Only a hello that echoes our current nonce (or comes on the pipe
        // it proved) is acted on: a replayed one may teach us a stale nonce
        // (the next real hello corrects it) but cannot mark the peer
        // restarted, keep it fresh or bind a pipe.
        let (fresh, restarted) = {
            let Some(p) = self.peers.get_mut(idx).and_then(|p| p.as_mut()) else { return Err(()) };
            let fresh = h.echo == p.my_nonce;
            (fresh, fresh && p.incarnation.is_some_and(|i| i != h.incarnation))
        };
        if restarted {
            self.peer_down(idx as u16, "it restarted");
        }
        let on_bound = bound_to == Some(idx as u16);
        let Some(p) = self.peers.get_mut(idx).and_then(|p| p.as_mut()) else { return Err(()) };
        let news = p.peer_nonce != h.nonce;
        p.peer_nonce = h.nonce;
        if fresh || on_bound {
            p.incarnation = Some(h.incarnation);
            p.last_rx = Some(Instant::now());
        }
        let mut bound = false;
        if p.pipe != Some(pipe) && fresh {
            if let Some(old) = p.pipe.replace(pipe) {
                self.pipes.remove(&old);
            }
            // A captured hello cannot bind another pipe.
            p.my_nonce = nonce();
            self.pipes.insert(pipe, idx as u16);
            self.unproven.remove(&pipe);
            bound = true;
        }
        // Answer at once when the peer learnt something it needs (our
        // echo of its new nonce, our new nonce), so the link comes up
        // without waiting for the next round; never hello for hello.
        if (news || bound) && !p.up {
            self.send_hello(idx as u16);
        }
        Ok(())
    }

    fn send_hello(&mut self, idx: u16) {
        let Some(p) = self.peers.get_mut(idx as usize).and_then(|p| p.as_mut()) else { return };
        let mut h = Hello {
            version: wire::VERSION,
            node: self.handle.config.node_id.clone(),
            incarnation: self.handle.incarnation,
            nodes_digest: self.digest,
            nonce: p.my_nonce,
            echo: p.peer_nonce,
            mac: [0; 32],
        };
        let tag = aws_lc_rs::hmac::sign(&self.key, &hello_input(&h, &p.id));
        h.mac.copy_from_slice(tag.as_ref());
        p.last_hello = Some(Instant::now());
        p.out.push(Item::Hello(h));
        let hears = p.pipe.is_some();
        p.out.push(Item::Heartbeat { hears_you: hears });
    }

    /// One line on stderr about `peer` (`u16::MAX`: a stranger), unless
    /// one went out less than `LOG_EVERY` ago: a peer that misbehaves in
    /// a loop must not flood the log.
    fn log(&mut self, peer: u16, line: &str) {
        let now = Instant::now();
        let (last, quiet) = match self.peers.get_mut(peer as usize).and_then(|p| p.as_mut()) {
            Some(p) => (&mut p.logged, &mut p.quiet),
            None => (&mut self.strangers_logged, &mut self.strangers_quiet),
        };
        if last.is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY) {
            *quiet += 1;
            return;
        }
        let held = std::mem::take(quiet);
        *last = Some(now);
        let msg = if held > 0 {
            format!("cluster: {line} ({held} more such lines held back)")
        } else {
            format!("cluster: {line}")
        };
        crate::log::event(
            crate::log::Level::Warn,
            "peer_trouble",
            &msg,
            &[("peer", peer.into()), ("held", held.into())],
        );
    }

    /// A frame a peer should not have sent: counted, logged, its link
    /// dropped.
    fn bad(&mut self, pipe: nng::Pipe, from: u16, why: &str) {
        self.handle.stats.bad_frames.fetch_add(1, Relaxed);
        let id = self.node_id(from);
        self.log(from, &format!("dropped the link from node {id}: {why}"));
        // Unbound, not closed (see `MAX_UNPROVEN`): nothing else it sends
        // is taken until a new hello proves it again.
        if let Some(p) = self.pipes.remove(&pipe) {
            self.link_lost(p, "it sent a bad frame");
        }
    }

    /// The peer's pipe is gone: not up until a new hello binds one. What
    /// was in flight to it has an unknown outcome.
    fn link_lost(&mut self, peer: u16, why: &str) {
        if let Some(p) = self.peers.get_mut(peer as usize).and_then(|p| p.as_mut()) {
            if let Some(old) = p.pipe.take() {
                self.pipes.remove(&old);
            }
            p.heard = false;
        }
        self.fail_inflight(peer, why);
        self.update_up();
    }

    /// No frame from the peer for `down_after`, or it restarted: its
    /// members here leave and its link starts over.
    fn peer_down(&mut self, peer: u16, why: &str) {
        let id = self.node_id(peer);
        let msg = format!("cluster: node {id} is down ({why}); its members of this node's rooms left");
        crate::log::event(crate::log::Level::Warn, "peer_down", &msg, &[("node", (&*id).into())]);
        self.link_lost(peer, why);
        if let Some(p) = self.peers.get_mut(peer as usize).and_then(|p| p.as_mut()) {
            p.incarnation = None;
            p.last_rx = None;
            p.down = true;
            p.my_nonce = nonce();
            p.peer_nonce = [0; 16];
            p.out.clear();
            p.sync_bytes = 0;
            self.handle.stats.peers[peer as usize].state.store(LinkState::Down as u8, Relaxed);
        }
        // It may come back having lost its newest commits (`--durability
        // none`) and number them again: its stream starts over here, and
        // seqs already handed on are skipped rather than taken as a bad peer.
        for r in self.remotes.values_mut().filter(|r| r.owner == peer) {
            r.live = None;
        }
        self.drop_members(peer, None);
    }

    fn fail_inflight(&mut self, peer: u16, why: &str) {
        let id = self.node_id(peer);
        let mine: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, p)| match p {
                Pending::Client { peer: q, .. } | Pending::Fill { peer: q, .. } => *q == peer,
            })
            .map(|(t, _)| *t)
            .collect();
        for t in mine {
            match self.inflight.remove(&t) {
                Some(Pending::Client { asker, asked, room, member, peer: owner }) => {
                    let m = format!("the link to node {id} broke ({why}); the outcome is unknown, retry");
                    self.join_failed(owner, &room, member);
                    self.answer_local(asker, unavailable(asked, &room, &m));
                }
                Some(Pending::Fill { room, .. }) => {
                    if let Some(h) = self.remotes.get_mut(&room).and_then(|r| r.hold.as_mut()) {
                        h.asked = false;
                        h.retry_at = Instant::now().checked_add(FILL_RETRY);
                    }
                }
                None => {}
            }
        }
    }

    /// A join answered `unavailable` here: if the member was not a member
    /// already it is none now, here and (should the join have got through)
    /// at the owner.
    fn join_failed(&mut self, owner: u16, room: &RoomName, member: Option<MemberId>) {
        let Some(m) = member else { return };
        let Some(l) = self.remotes.get(room).and_then(|r| r.members.get(&m)) else { return };
        if l.confirmed {
            return;
        }
        let user = l.user.clone();
        self.unregister(room, m);
        if let Some(p) = self.up_peer(owner) {
            p.out.push(Item::Forward(Forward::Leave { room: room.clone(), user, member: m }));
        }
    }

    fn update_up(&mut self) {
        let down_after = self.handle.config.down_after;
        let now = Instant::now();
        let mut came_up = Vec::new();
        let mut went = Vec::new();
        for p in self.peers.iter_mut().flatten() {
            let fresh = p.last_rx.is_some_and(|t| now.saturating_duration_since(t) < down_after);
            let up = p.pipe.is_some() && p.heard && fresh;
            if up && !p.up {
                came_up.push(p.idx);
                p.down = false;
                let msg = format!("cluster: node {} is up", p.id);
                crate::log::event(crate::log::Level::Info, "peer_up", &msg, &[("node", (&*p.id).into())]);
            } else if p.up && !up {
                let msg = format!("cluster: lost node {}", p.id);
                crate::log::event(crate::log::Level::Warn, "peer_lost", &msg, &[("node", (&*p.id).into())]);
                went.push(p.idx);
            }
            if up || p.up {
                p.up_until = now;
            }
            p.up = up;
            let s = &self.handle.stats.peers[p.idx as usize];
            if s.state() != LinkState::Lagging || !up {
                s.state.store(if up { LinkState::Up } else { LinkState::Down } as u8, Relaxed);
            }
        }
        // Either direction broke: what was in flight may be lost.
        for p in went {
            self.fail_inflight(p, "the link broke");
        }
        for p in came_up {
            self.resync(p);
        }
    }

    /// After a reconnect or a lagging mark: what was in flight failed, our
    /// members of the peer's rooms are registered again, and every such
    /// room is filled from its last seq.
    fn resync(&mut self, peer: u16) {
        self.handle.stats.peers[peer as usize].resyncs.fetch_add(1, Relaxed);
        self.fail_inflight(peer, "resync");
        let Some(p) = self.peers.get_mut(peer as usize).and_then(|p| p.as_mut()) else { return };
        if !p.up {
            return;
        }
        let before = p.out.bytes();
        p.out.push(Item::SyncStart);
        let mut rooms = Vec::new();
        for (room, r) in self.remotes.iter_mut().filter(|(_, r)| r.owner == peer) {
            for (member, l) in &r.members {
                p.out.push(Item::Forward(Forward::Join {
                    ticket: 0,
                    room: room.clone(),
                    user: l.user.clone(),
                    member: *member,
                    since: None,
                }));
            }
            if r.last.is_some() {
                let h = r.hold.get_or_insert_with(Hold::default);
                h.asked = false;
                rooms.push(room.clone());
            }
        }
        p.out.push(Item::SyncEnd);
        p.sync_bytes += p.out.bytes().saturating_sub(before);
        for room in rooms {
            self.fill(&room);
        }
    }

    /// A queue past its bound: drop it, mark the peer lagging, resync.
    fn check_lag(&mut self) {
        let bound = self.handle.config.queue_bytes;
        let lagging: Vec<u16> = self
            .peers
            .iter()
            .flatten()
            .filter(|p| p.out.bytes() > bound.saturating_add(p.sync_bytes))
            .map(|p| p.idx)
            .collect();
        for idx in lagging {
            if let Some(p) = self.peers.get_mut(idx as usize).and_then(|p| p.as_mut()) {
                p.out.clear();
                p.out.push(Item::Lagged);
            }
            self.handle.stats.peers[idx as usize].state.store(LinkState::Lagging as u8, Relaxed);
            self.resync(idx);
        }
    }

    fn tick(&mut self, now: Instant) {
        let down_after = self.handle.config.down_after;
        // Not up (silent, or one direction broken) for `down_after`: down.
        self.update_up();
        let gone: Vec<u16> = self
            .peers
            .iter()
            .flatten()
            .filter(|p| !p.up && !p.down && now.saturating_duration_since(p.up_until) >= down_after)
            .map(|p| p.idx)
            .collect();
        for idx in gone {
            self.peer_down(idx, "it was unreachable too long");
        }
        let idxs: Vec<u16> = self.peers.iter().flatten().map(|p| p.idx).collect();
        for idx in idxs {
            let Some(p) = self.peers.get_mut(idx as usize).and_then(|p| p.as_mut()) else { continue };
            let due = |t: Option<Instant>, every: Duration| t.is_none_or(|t| now.saturating_duration_since(t) >= every);
            if !p.up && due(p.last_hello, HELLO_EVERY) && p.out.is_empty() {
                self.send_hello(idx);
            } else if p.up && due(p.last_beat, BEAT_EVERY) {
                p.last_beat = Some(now);
                p.out.push(Item::Heartbeat { hears_you: p.pipe.is_some() });
            }
            if let Some(p) = self.peers.get_mut(idx as usize).and_then(|p| p.as_mut()) {
                if p.out.is_empty() {
                    p.sync_bytes = 0;
                }
            }
            let q = self.peers.get(idx as usize).and_then(|p| p.as_ref()).map_or(0, |p| p.out.bytes());
            let s = &self.handle.stats.peers[idx as usize];
            s.queue_bytes.store(q as u64, Relaxed);
            // Lagging ends once the queue has room again.
            if s.state() == LinkState::Lagging && q < self.handle.config.queue_bytes / 4 {
                s.state.store(LinkState::Up as u8, Relaxed);
            }
        }
        // Connections that did not prove themselves in time, once there
        // are many (see `MAX_UNPROVEN`).
        let crowded = self.unproven.len() > MAX_UNPROVEN / 2;
        let late: Vec<nng::Pipe> = self
            .unproven
            .iter()
            .filter(|(_, t)| crowded && now.saturating_duration_since(**t) >= down_after)
            .map(|(p, _)| *p)
            .collect();
        for pipe in late {
            self.unproven.remove(&pipe);
            link::close_pipe(pipe);
        }
        // Requests unanswered for `down_after`: the owner is not answering.
        while let Some(&(at, t)) = self.inflight_order.front() {
            // Answered ones go at once, so the queue stays about as long as
            // what is in flight (a ticket given again later is a new entry).
            let answered = !self.inflight.contains_key(&t);
            if !answered && now.saturating_duration_since(at) < down_after {
                break;
            }
            self.inflight_order.pop_front();
            match self.inflight.remove(&t) {
                Some(Pending::Client { asker, asked, room, member, peer }) => {
                    self.join_failed(peer, &room, member);
                    self.answer_local(asker, unavailable(asked, &room, "the owner did not answer in time; retry"))
                }
                Some(Pending::Fill { room, .. }) => {
                    if let Some(h) = self.remotes.get_mut(&room).and_then(|r| r.hold.as_mut()) {
                        h.asked = false;
                        h.retry_at = Some(now);
                    }
                }
                None => {}
            }
        }
        if self.inflight_order.len() > 2 * MAX_INFLIGHT {
            let inflight = &self.inflight;
            self.inflight_order.retain(|(_, t)| inflight.contains_key(t));
        }
        // Fills to try again.
        let again: Vec<RoomName> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.hold.as_ref().is_some_and(|h| !h.asked && h.retry_at.is_some_and(|t| now >= t)))
            .map(|(k, _)| k.clone())
            .collect();
        for room in again {
            self.fill(&room);
        }
    }

    /// Hands each reactor what this round made for it, as one batch.
    fn flush(&mut self) {
        for (r, out) in self.outbox.iter_mut().enumerate() {
            match out.len() {
                0 => {}
                1 => {
                    if let Some(m) = out.pop() {
                        self.shared.post_from_thread(r, m);
                    }
                }
                _ => self.shared.post_from_thread(r, Mail::Batch(std::mem::take(out))),
            }
        }
    }
}
