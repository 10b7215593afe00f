//! What reactors say to each other, and the mailboxes that carry it.
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
use serde_json::value::RawValue;

use crate::proto::msg::Ref;
use crate::rooms::{RoomName, UserId};

/// A connection anywhere in the process: reactor, slab slot and the slot's
/// generation (a reply for a connection that closed and whose slot was
/// reused must not reach the newcomer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub reactor: u16,
    pub key: u32,
    pub gen: u32,
}

/// Who asked: a WebSocket connection (answer with frames) or an HTTP request
/// on a connection (answer with one status and JSON body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Ws(ConnRef),
    Http(ConnRef),
}

impl Asker {
    pub fn conn(&self) -> ConnRef {
        match self {
            Asker::Ws(c) | Asker::Http(c) => *c,
        }
    }
}

pub enum Mail {
    // ---- to a room's owner ----
    /// A connection joins (or re-joins: `again`, counted once).
    Join {
        room: RoomName,
        user: UserId,
        conn: ConnRef,
        since: Option<u64>,
        r#ref: Option<Ref>,
        again: bool,
    },
    /// A member left or its connection closed; no answer.
    Leave {
        room: RoomName,
        user: UserId,
        reactor: u16,
    },
    Publish {
        room: RoomName,
        user: UserId,
        body: Box<RawValue>,
        id: Option<Box<str>>,
        r#ref: Option<Ref>,
        asker: Asker,
    },
    History {
        room: RoomName,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        r#ref: Option<Ref>,
        asker: Asker,
    },
    Presence {
        room: RoomName,
        r#ref: Option<Ref>,
        asker: Asker,
    },

    // ---- from an owner to member reactors ----
    /// One frame for every local member of the room.
    Deliver {
        room: RoomName,
        frame: Bytes,
    },
    /// The answer to `Join`: the `joined` frame and any replay. The
    /// connection becomes a local member when this is handled, which is
    /// what keeps the replay and the live stream free of gaps and dups.
    Joined {
        room: RoomName,
        conn: ConnRef,
        frames: Vec<Bytes>,
    },
    /// The answer to one request of a WebSocket connection: an ack or an
    /// error for a `send` (`heavy: false`), or the answer to a history or
    /// presence request, or an error for a join (`heavy: true`). The
    /// connection counts its requests in flight by these.
    Frame {
        conn: ConnRef,
        frame: Bytes,
        heavy: bool,
    },
    /// store-writer committed (or failed) this reactor's next `n` appends.
    Committed {
        n: usize,
        result: Result<(), String>,
    },
    /// An HTTP answer for a request that waited on an owner.
    HttpAnswer {
        conn: ConnRef,
        status: u16,
        body: Vec<u8>,
        retry_after: Option<u64>,
    },
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
