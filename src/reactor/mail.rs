//! What reactors (and the store threads) say to each other, and the
//! mailboxes that carry it.
//!
//! Every reactor has one bounded crossbeam channel in and a `mio::Waker`.
//! Mail from one sender to one receiver stays in order (the channel is FIFO
//! and a sender's overflow queue is drained in order before new mail goes
//! direct): the room ownership design relies on that, see
//! ARCHITECTURE.md "A message's way".

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::proto::msg::Ref;
use crate::rooms::core::{Command, Commit, ReadDone, Reply};
use crate::rooms::RoomName;

/// A connection anywhere in the process: reactor, slab slot and the slot's
/// generation (a reply for a connection that closed and whose slot was
/// reused must not reach the newcomer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub reactor: u16,
    pub key: u32,
    pub gen: u32,
}

/// How an asker wants its answer: WebSocket frames, or one HTTP status and
/// JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskerKind {
    Ws,
    Http,
    /// A request forwarded by cluster peer `n` (its index in the node
    /// list): the answer goes back over the link, and `conn.key` is the
    /// peer's ticket for it (0: the peer wants no answer).
    Peer(u16),
    /// Nobody waits for the answer (the server API's `broadcast`): it is
    /// dropped where it arrives.
    Nobody,
}

/// Who asked, as the room core sees it: an opaque reply address. The
/// request's `ref` travels with it, so every answer can echo it.
#[derive(Debug, Clone)]
pub struct Asker {
    pub kind: AskerKind,
    pub conn: ConnRef,
    pub r#ref: Option<Ref>,
    /// A join's tag (see `conn::Slot`); 0 for other requests.
    pub tag: u32,
}

impl Asker {
    pub fn ws(conn: ConnRef, r#ref: Option<Ref>) -> Asker {
        Asker { kind: AskerKind::Ws, conn, r#ref, tag: 0 }
    }

    /// An asker whose answer is dropped, at reactor `reactor`.
    pub fn nobody(reactor: u16) -> Asker {
        Asker { kind: AskerKind::Nobody, conn: ConnRef { reactor, key: 0, gen: 0 }, r#ref: None, tag: 0 }
    }

    pub fn http(conn: ConnRef) -> Asker {
        Asker { kind: AskerKind::Http, conn, r#ref: None, tag: 0 }
    }

    /// A request cluster peer `peer` forwarded, answered with `ticket`.
    pub fn peer(peer: u16, ticket: u32) -> Asker {
        Asker { kind: AskerKind::Peer(peer), conn: ConnRef { reactor: 0, key: ticket, gen: 0 }, r#ref: None, tag: 0 }
    }

    /// The reactor the answer goes to (for a peer's request: where the
    /// node thread's mailbox is, see [`Asker::peer`]).
    pub fn reactor(&self) -> usize {
        self.conn.reactor as usize
    }
}

/// What reactors hand the cluster node thread (see `cluster::node`).
pub enum ClusterMail {
    /// A command for a room another node owns, from the reactor of the
    /// connection that asked.
    Forward(Command<Asker>),
    /// From an owner: a frame for the members of `room` on `peer`.
    Deliver {
        peer: u16,
        room: RoomName,
        seq: Option<u64>,
        frame: Bytes,
    },
    /// From an owner: the answer to a request `peer` forwarded.
    Answer {
        peer: u16,
        ticket: u32,
        reply: Reply,
    },
    /// From the link's receiver thread: a frame that came on `pipe`.
    Inbound {
        pipe: nng::Pipe,
        items: Result<Vec<crate::cluster::wire::Item>, crate::cluster::wire::WireError>,
    },
    /// A connection to the listener came (not proven yet) or went away.
    PipeAdded(nng::Pipe),
    PipeGone(nng::Pipe),
}

/// One frame for every local member of a room.
/// A message's permessage-deflate frame, made once by whichever reactor
/// needs it first and shared by every reactor the message goes to (`None`
/// inside: it would not be shorter, or the frame is not one data frame).
pub type Twin = std::sync::Arc<std::sync::OnceLock<Option<Bytes>>>;

pub struct Delivery {
    pub room: RoomName,
    pub frame: Bytes,
    /// Shared with the owner's other deliveries of the same message; none
    /// from another node (each reactor then compresses for itself).
    pub twin: Option<Twin>,
    /// When the message was committed (for the commit-to-first-write
    /// histogram); none for deliveries that come of no commit here.
    pub committed: Option<std::time::Instant>,
}

/// The server API's `disconnect`: every connection of `user` closes with
/// `code` and `reason`.
pub struct Kick {
    pub user: Box<str>,
    pub code: u16,
    pub reason: Box<str>,
}

/// An answer for an asker, encoded where the asker lives.
pub struct Answer {
    pub to: Asker,
    pub reply: Reply,
}

/// An HTTP answer made off a reactor (a backup thread, an auth worker).
pub struct HttpAnswer {
    pub conn: ConnRef,
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u64>,
    pub content_type: &'static str,
    /// Headers beyond the usual ones (`Location`, `Cache-Control`, ...).
    pub headers: Vec<(&'static str, String)>,
}

impl HttpAnswer {
    /// A JSON answer with no extra headers.
    pub fn json(conn: ConnRef, status: u16, body: Vec<u8>) -> HttpAnswer {
        HttpAnswer { conn, status, body, retry_after: None, content_type: "application/json", headers: Vec::new() }
    }
}

pub enum Mail {
    /// To a room's owner: a command for its core.
    Owner(Command<Asker>),
    /// To an owner, from store-writer: its next appends are committed (or not).
    /// It carries the instant of the commit.
    Committed(Commit, std::time::Instant),
    /// To an owner, from a reader: a storage read its core asked for.
    ReadDone(ReadDone),
    /// From an owner to a member reactor.
    Deliver(Delivery),
    /// To the asker's reactor.
    Answer(Answer),
    Http(HttpAnswer),
    /// To the cluster node thread.
    Cluster(ClusterMail),
    /// To every reactor: close the connections of a user (`disconnect`).
    Kick(Kick),
    /// To every reactor: take a user's connections out of a room
    /// (`unsubscribe`).
    Unsubscribe {
        user: Box<str>,
        room: RoomName,
    },
    /// To every reactor: its part of a `rooms` listing, for `to`.
    RoomsAsk {
        to: ConnRef,
        prefix: Box<str>,
        after: Option<Box<str>>,
        limit: usize,
    },
    /// The answer to `RoomsAsk`.
    RoomsPart {
        to: ConnRef,
        rooms: Vec<crate::rooms::core::RoomInfo>,
        more: bool,
    },
    /// Everything one reactor had for another at the end of a loop
    /// iteration, in order: one channel send instead of one per message.
    Batch(Vec<Mail>),
}

/// The sending side of one reactor's mailbox.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: Sender<Mail>,
    pub waker: Arc<mio::Waker>,
    /// Set by the receiver just before it blocks in poll; a sender wakes it
    /// only then, so a busy receiver costs no wake-up syscall.
    pub sleeping: Arc<AtomicBool>,
}

impl Mailbox {
    /// Tries to post without blocking: a reactor never waits on another.
    pub fn try_send(&self, m: Mail) -> Result<(), Mail> {
        match self.tx.try_send(m) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Wakes the receiver if it is (about to be) asleep. Call after sending.
    pub fn wake(&self) {
        // Pairs with the fence in `going_to_sleep`: either the receiver sees
        // our mail when it checks its channel, or we see its flag here.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// The receiving side, kept by the reactor.
pub struct Inbox {
    pub rx: Receiver<Mail>,
    pub sleeping: Arc<AtomicBool>,
}

impl Inbox {
    /// Marks the reactor asleep; returns true if mail is already waiting
    /// (then poll must not block).
    pub fn going_to_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        !self.rx.is_empty()
    }

    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}
