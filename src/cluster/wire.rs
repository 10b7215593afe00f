//! The frames cluster nodes send each other, as Rust values, and their
//! Cap'n Proto encoding (`schema/cluster.capnp`, generated code in
//! `cluster_capnp.rs`). Sans-IO: bytes in, values out, and back.
//!
//! Every byte here comes from another process, which may be buggy,
//! outdated or hostile: decoding checks every size and value it relies on
//! and fails with a `WireError`, never a panic, and never hands on a frame
//! half decoded.

use bytes::Bytes;

use crate::rooms::core::{Asked, Reply};
use crate::rooms::{MemberId, RoomName, UserId};

/// Version of these frames; a hello with another one is refused.
pub const VERSION: u16 = 1;
/// The largest encoded frame a node accepts (a history page or join replay
/// may be up to the page budget, plus framing).
pub const MAX_FRAME: usize = 16 << 20;
/// A sender stops adding items to a frame past this many bytes ...
pub const BATCH_BYTES: usize = 64 << 10;
/// ... or this many items (no timer: like group commit, what waits goes).
pub const BATCH_ITEMS: usize = 1024;

/// How an answer is to be encoded where the asker lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireKind {
    Ws,
    Http,
}

/// One link-level hello (see `cluster::link`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The sender's node id.
    pub node: String,
    /// Random per process start: a new one means the peer restarted.
    pub incarnation: u64,
    /// SHA-256 over the configured node list (ids and addresses, in order).
    pub nodes_digest: [u8; 32],
    /// Fresh random nonce of the sender.
    pub nonce: [u8; 16],
    /// The last nonce the sender got from the receiver (zeros if none yet).
    pub echo: [u8; 16],
    /// HMAC-SHA-256 under the shared secret over everything above.
    pub mac: [u8; 32],
}

/// A room command forwarded by a non-owner to the owner. `ticket` names the
/// request at the sender, which keeps the asker: the answer carries it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    Join {
        ticket: u32,
        room: RoomName,
        user: UserId,
        member: MemberId,
        since: Option<u64>,
    },
    Leave {
        room: RoomName,
        user: UserId,
        member: MemberId,
    },
    /// `body`: the message body as JSON text (checked by the sender; the
    /// owner checks it again).
    Publish {
        ticket: u32,
        kind: WireKind,
        room: RoomName,
        user: UserId,
        body: Box<str>,
        id: Option<Box<str>>,
    },
    History {
        ticket: u32,
        kind: WireKind,
        room: RoomName,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    },
    Presence {
        ticket: u32,
        kind: WireKind,
        room: RoomName,
    },
}

/// Everything a frame may carry.
#[derive(Debug, Clone)]
pub enum Item {
    Hello(Hello),
    /// Sent every second. `hears_you`: the sender gets frames from the
    /// receiver (so each side knows whether its own direction works).
    Heartbeat {
        hears_you: bool,
    },
    Forward(Forward),
    /// The owner's answer to a forwarded request.
    Answer {
        ticket: u32,
        reply: Reply,
    },
    /// A frame for every member of `room` on the receiving node: a `msg`
    /// (with its seq) or a `presence_diff` (`seq` none), as the owner
    /// encoded it (WebSocket header and JSON).
    Deliver {
        room: RoomName,
        seq: Option<u64>,
        frame: Bytes,
    },
    /// The owner dropped deliveries for the receiver (its queue overflowed):
    /// the receiver resyncs every room it holds.
    Lagged,
    /// The receiver's members on the sender are about to be sent again
    /// (`SyncStart`), or have all been (`SyncEnd`: those not sent again
    /// since `SyncStart` left).
    SyncStart,
    SyncEnd,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("bad value: {0}")]
    Bad(&'static str),
}

/// Encodes `items` as one frame.
pub fn encode(items: &[Item]) -> Vec<u8> {
    let _ = items;
    todo!()
}

/// Decodes one frame; every item or none.
pub fn decode(bytes: &[u8]) -> Result<Vec<Item>, WireError> {
    let _ = bytes;
    todo!()
}

/// The bytes one item adds to a frame, about (for batching and queue bounds).
pub fn size_hint(item: &Item) -> usize {
    let _ = item;
    todo!()
}

/// `Asked` as on the wire.
pub fn asked_code(a: Asked) -> u8 {
    match a {
        Asked::Join => 0,
        Asked::Publish => 1,
        Asked::History => 2,
        Asked::Presence => 3,
    }
}
