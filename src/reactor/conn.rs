//! One connection's state machine.
//!
//! Lifecycle: `Http` (requests parsed with keep-alive and pipelining; a
//! request may wait on a room owner, which pauses parsing) → either stays
//! `Http` or becomes `Ws` through the upgrade (a `mem::replace` of the
//! variant) → `Closing` (a final response or close frame is queued; the
//! connection is dropped once it is written and, for WebSocket, the peer's
//! close frame has arrived or the close deadline has passed).

use std::sync::Arc;
use std::time::Instant;

use crate::auth::rules::Rules;
use crate::metrics::CloseReason;
use crate::proto::ws::Decoder;
use crate::rooms::{RoomName, UserId};

use super::transport::{OutQueue, Transport};

pub struct Conn {
    pub transport: Transport,
    /// Generation of this slab slot, carried in `ConnRef`s.
    pub gen: u32,
    /// Input not consumed yet (a partial request or frame). Empty, with no
    /// allocation, on an idle connection: reads go through the reactor's
    /// scratch buffer and only leftovers are kept here.
    pub rbuf: Vec<u8>,
    pub out: OutQueue,
    pub state: State,
    /// Already on the reactor's list of connections to flush.
    pub flush_queued: bool,
    /// Tick of this connection's live timer entry, if any.
    pub timer_tick: Option<u64>,
    /// The peer's address, counted against its per-IP limits until close.
    pub ip: Option<std::net::IpAddr>,
    /// Input is not read or parsed while the queue is over the high-water
    /// mark; set when that stopped it, so the drain below it resumes it.
    pub paused: bool,
    /// When bytes last went out (or the connection opened).
    pub last_write: Instant,
    /// The last write found the socket full and no writable edge came
    /// since: another write now would only say so again.
    pub write_blocked: bool,
    /// Found past its cap by fan-out and listed to be closed with 4000.
    pub slow: bool,
    /// permessage-deflate: the longest message that goes to this connection
    /// compressed (`Agreed::max_deflated_len`); 0 when not negotiated. Kept
    /// here, not in the boxed `WsState`, so fan-out reads it from the slot
    /// it touches anyway.
    pub deflate_max: usize,
}

pub enum State {
    Http(HttpState),
    Ws(Box<WsState>),
    Closing(Closing),
}

pub struct HttpState {
    /// When the request now being received started (first byte seen).
    pub started: Option<Instant>,
    /// When the connection last finished a request (or opened).
    pub idle_since: Instant,
    /// A request waits on a room owner; parsing is paused so that answers
    /// go out in request order.
    pub awaiting: Option<Pending>,
    /// Bytes at the front of the input already searched for the end of the
    /// request head: a head trickled in byte by byte is parsed once, when
    /// it is complete, not once per byte (which would cost the square of
    /// its length).
    pub scanned: usize,
    /// The whole request's length once its head is in and its body has a
    /// `Content-Length`: nothing is parsed again before that much is here.
    pub wanted: Option<usize>,
    /// The allowed `Origin` of the request being answered, echoed in its
    /// CORS headers (`None`: no `Origin`, or not a `/v1/` request).
    pub cors_origin: Option<String>,
    /// Limiter of room reads (`GET .../messages`, `.../presence`), like the
    /// request bucket of a WebSocket.
    pub requests: TokenBucket,
}

/// What the answer to a waiting request needs from its request.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub keep_alive: bool,
    pub head_only: bool,
    /// A `/v1/` request: its answer says `Vary: Origin` (and echoes an
    /// allowed origin, see `HttpState::cors_origin`).
    pub cors: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsKind {
    /// `/v1/ws`: the room protocol.
    App,
    /// `/v1/echo`: echoes every message (conformance suites).
    Echo,
}

/// A room membership of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Joins wait for the owner's answer: `waiting` of them, the first
    /// tagged `first` (answers to joins tagged before it belong to an
    /// earlier membership, given up by a leave). The first `joined` lists
    /// the connection; it is given up only when every one was refused.
    Joining { first: u32, waiting: u16 },
    /// Confirmed: the connection's slot in the reactor's local member list
    /// of the room (so leaving costs O(1), not a search through the room).
    Listed(u32),
}

impl Slot {
    /// Whether the answer to the join tagged `tag` belongs to this
    /// membership (tags wrap; a connection has far fewer than 2^31 joins in
    /// flight).
    pub fn answers(&self, tag: u32) -> bool {
        match self {
            Slot::Joining { first, .. } => tag.wrapping_sub(*first) < 1 << 31,
            Slot::Listed(_) => true,
        }
    }
}

pub struct WsState {
    pub kind: WsKind,
    pub decoder: Decoder,
    pub user: UserId,
    /// Token expiry (Unix seconds), if the connection authenticated; a
    /// `refresh` moves it.
    pub exp: Option<u64>,
    /// Which rooms it may read and send to (the token's claims, else the
    /// default); a `refresh` replaces them.
    pub rules: Arc<Rules>,
    /// Rooms joined, each with where its join stands (see [`Slot`]).
    pub rooms: Vec<(RoomName, Slot)>,
    /// Tags joins, so an answer to a join made before a leave is not taken
    /// for the answer to the join made after it.
    pub joins: u32,
    /// `send` limiter.
    pub bucket: TokenBucket,
    /// Limiter of every other request (join, leave, history, presence, ping).
    pub requests: TokenBucket,
    /// Requests posted to room owners and not answered yet: `send`s, and
    /// the heavy ones (join, history, presence) whose answers can be large.
    /// Parsing pauses at `MAX_INFLIGHT` / `MAX_HEAVY`, so the answers one
    /// peer has coming are bounded before they are queued.
    pub inflight: u16,
    pub heavy: u16,
    pub last_rx: Instant,
    pub ping_sent: bool,
}

pub struct Closing {
    /// Drop the connection at this instant whatever else happens.
    pub until: Instant,
    /// A WebSocket close frame was sent: wait for the peer's.
    pub await_peer_close: bool,
    pub reason: CloseReason,
}

/// Per-connection send limiter: `rate` tokens a second up to `burst`.
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, now: Instant) -> Self {
        TokenBucket { tokens: f64::from(burst), last: now }
    }

    /// Whether the bucket has refilled to `burst` by `now` (an idle limiter
    /// that can be forgotten); always true for a disabled limit.
    pub fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * rate >= f64::from(burst.max(1))
    }

    /// Takes one token, or says how many milliseconds until one is there.
    pub fn take(&mut self, rate: f64, burst: u32, now: Instant) -> Result<(), u64> {
        if rate <= 0.0 {
            return Ok(());
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(f64::from(burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate) * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_limits_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        assert!(b.take(10.0, 2, t0).is_ok());
        assert!(b.take(10.0, 2, t0).is_ok());
        let wait = b.take(10.0, 2, t0).unwrap_err();
        assert_eq!(wait, 100);
        assert!(b.take(10.0, 2, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(0.0, 2, t0).is_ok());
    }
}
