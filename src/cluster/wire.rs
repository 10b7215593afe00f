//! The frames cluster nodes send each other, as Rust values, and their
//! Cap'n Proto encoding (`schema/cluster.capnp`, generated code in
//! `cluster_capnp.rs`). Sans-IO: bytes in, values out, and back.
//!
//! Every byte here comes from another process, which may be buggy,
//! outdated or hostile: decoding checks every size and value it relies on
//! and fails with a `WireError`, never a panic, and never hands on a frame
//! half decoded.

use bytes::Bytes;

use super::cluster_capnp as cc;
use crate::proto::msg::MsgFrame;
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

/// Most items one frame may carry: far over what a sender batches
/// ([`BATCH_ITEMS`]), and a bound on what a small frame of empty items can
/// make a receiver allocate.
pub const MAX_ITEMS: usize = 64 * BATCH_ITEMS;
/// Longest node id, in bytes (as `[cluster]` settings allow).
pub const MAX_NODE_ID_BYTES: usize = 64;
/// The error codes of the protocol (PROTOCOL.md) and of the gateway's
/// closes: a decoded `Refused` carries one of these, and any other code
/// reads as `internal`.
pub const ERROR_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "not_joined",
    "rate_limited",
    "too_large",
    "overloaded",
    "internal",
    "slow_consumer",
    "unavailable",
];

/// Nesting of the deepest legitimate value (frame, item list, item, answer,
/// reply, page list, msg frame), with room to spare.
const NESTING_LIMIT: i32 = 16;

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Encodes `items` as one frame.
///
/// The caller keeps frames under [`MAX_FRAME`] (batching by [`size_hint`]);
/// a larger one is encoded, and refused by the receiver.
pub fn encode(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = encode_into(items, &mut out);
    out
}

/// [`encode`], written straight into `out` (a link writes it into the nng
/// message it sends, with no copy in between).
pub fn encode_into<W: std::io::Write>(items: &[Item], out: &mut W) -> std::io::Result<()> {
    // One segment sized from the hints: no reallocation while building, and
    // the flat output is that segment plus its 8-byte table.
    let hint = FRAME_OVERHEAD + items.iter().map(size_hint).sum::<usize>();
    let words = u32::try_from(hint / 8 + 1).unwrap_or(u32::MAX).min((MAX_FRAME / 8) as u32);
    let mut message = capnp::message::Builder::new(capnp::message::HeapAllocator::new().first_segment_words(words));
    let frame = message.init_root::<cc::frame::Builder>();
    let mut list = frame.init_items(list_len(items.len()));
    for (i, item) in items.iter().enumerate() {
        encode_item(item, list.reborrow().get(i as u32));
    }
    capnp::serialize::write_message(out, &message).map_err(|e| std::io::Error::other(e.to_string()))
}

/// A list length as Cap'n Proto counts it. Lists here are bounded far below
/// 2^29 elements (the format's limit) by the frame size; past it the
/// builder itself refuses.
fn list_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn wire_kind(k: WireKind) -> cc::WireKind {
    match k {
        WireKind::Ws => cc::WireKind::Ws,
        WireKind::Http => cc::WireKind::Http,
    }
}

fn encode_item(item: &Item, mut b: cc::item::Builder<'_>) {
    match item {
        Item::Hello(h) => {
            let mut o = b.init_hello();
            o.set_version(h.version);
            o.set_node(h.node.as_str());
            o.set_incarnation(h.incarnation);
            o.set_nodes_digest(&h.nodes_digest[..]);
            o.set_nonce(&h.nonce[..]);
            o.set_echo(&h.echo[..]);
            o.set_mac(&h.mac[..]);
        }
        Item::Heartbeat { hears_you } => b.init_heartbeat().set_hears_you(*hears_you),
        Item::Forward(f) => encode_forward(f, b.init_forward()),
        Item::Answer { ticket, reply } => {
            let mut o = b.init_answer();
            o.set_ticket(*ticket);
            encode_reply(reply, o.init_reply());
        }
        Item::Deliver { room, seq, frame } => {
            let mut o = b.init_deliver();
            o.set_room(&**room);
            o.set_has_seq(seq.is_some());
            o.set_seq(seq.unwrap_or(0));
            o.set_frame(&frame[..]);
        }
        Item::Lagged => b.set_lagged(()),
        Item::SyncStart => b.set_sync_start(()),
        Item::SyncEnd => b.set_sync_end(()),
    }
}

fn encode_forward(f: &Forward, b: cc::forward::Builder<'_>) {
    match f {
        Forward::Join { ticket, room, user, member, since } => {
            let mut o = b.init_join();
            o.set_ticket(*ticket);
            o.set_room(&**room);
            o.set_user(&**user);
            o.set_member(*member);
            o.set_has_since(since.is_some());
            o.set_since(since.unwrap_or(0));
        }
        Forward::Leave { room, user, member } => {
            let mut o = b.init_leave();
            o.set_room(&**room);
            o.set_user(&**user);
            o.set_member(*member);
        }
        Forward::Publish { ticket, kind, room, user, body, id } => {
            let mut o = b.init_publish();
            o.set_ticket(*ticket);
            o.set_kind(wire_kind(*kind));
            o.set_room(&**room);
            o.set_user(&**user);
            o.set_body(&**body);
            if let Some(id) = id {
                o.set_id(&**id);
            }
        }
        Forward::History { ticket, kind, room, before, after, limit } => {
            let mut o = b.init_history();
            o.set_ticket(*ticket);
            o.set_kind(wire_kind(*kind));
            o.set_room(&**room);
            o.set_has_before(before.is_some());
            o.set_before(before.unwrap_or(0));
            o.set_has_after(after.is_some());
            o.set_after(after.unwrap_or(0));
            o.set_limit(*limit);
        }
        Forward::Presence { ticket, kind, room } => {
            let mut o = b.init_presence();
            o.set_ticket(*ticket);
            o.set_kind(wire_kind(*kind));
            o.set_room(&**room);
        }
    }
}

fn encode_reply(r: &Reply, b: cc::reply::Builder<'_>) {
    match r {
        Reply::Joined { room, last, recovered, replay } => {
            let mut o = b.init_joined();
            o.set_room(&**room);
            o.set_last(*last);
            o.set_has_recovered(recovered.is_some());
            o.set_recovered(recovered.unwrap_or(false));
            let mut list = o.init_replay(list_len(replay.len()));
            for (i, frame) in replay.iter().enumerate() {
                list.set(i as u32, &frame[..]);
            }
        }
        Reply::Ack { room, seq, ts, id } => {
            let mut o = b.init_ack();
            o.set_room(&**room);
            o.set_seq(*seq);
            o.set_ts(*ts);
            if let Some(id) = id {
                o.set_id(&**id);
            }
        }
        Reply::History { room, page, more } => {
            let mut o = b.init_history();
            o.set_room(&**room);
            o.set_more(*more);
            let mut list = o.init_page(list_len(page.len()));
            for (i, m) in page.iter().enumerate() {
                let mut e = list.reborrow().get(i as u32);
                e.set_frame(&m.frame[..]);
                // A header is at most 10 bytes; anything else is a bug the
                // receiver rejects (a json_start past the frame's end).
                e.set_json_start(u32::try_from(m.json_start).unwrap_or(u32::MAX));
            }
        }
        Reply::Presence { room, members } => {
            let mut o = b.init_presence();
            o.set_room(&**room);
            let mut list = o.init_members(list_len(members.len()));
            for (i, (user, since)) in members.iter().enumerate() {
                let mut e = list.reborrow().get(i as u32);
                e.set_user(&**user);
                e.set_since(*since);
            }
        }
        Reply::Refused { to, room, status, code, message } => {
            let mut o = b.init_refused();
            o.set_to(asked_code(*to));
            o.set_room(&**room);
            o.set_status(*status);
            o.set_code(*code);
            o.set_message(message.as_str());
        }
    }
}

// ---------------------------------------------------------------------------
// Size hints
// ---------------------------------------------------------------------------

/// The segment table, root pointer, `Frame` struct and item list tag.
const FRAME_OVERHEAD: usize = 32;
/// An item's list element (discriminant word and pointer).
const ITEM: usize = 16;

/// Bytes of a Text of `n` bytes (NUL and padding included).
fn text(n: usize) -> usize {
    (n + 1).div_ceil(8) * 8
}

/// Bytes of a Data of `n` bytes (padding included).
fn data(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The bytes one item adds to a frame, about (for batching and queue bounds).
/// Exact for the items' own structs, texts and data; what it leaves out is
/// the frame's fixed overhead (32 bytes).
pub fn size_hint(item: &Item) -> usize {
    ITEM + match item {
        Item::Hello(h) => 56 + text(h.node.len()) + 32 + 16 + 16 + 32,
        Item::Heartbeat { .. } => 8,
        Item::Forward(f) => {
            64 + match f {
                Forward::Join { room, user, .. } | Forward::Leave { room, user, .. } => {
                    text(room.len()) + text(user.len())
                }
                Forward::Publish { room, user, body, id, .. } => {
                    text(room.len()) + text(user.len()) + text(body.len()) + id.as_ref().map_or(0, |i| text(i.len()))
                }
                Forward::History { room, .. } | Forward::Presence { room, .. } => text(room.len()),
            }
        }
        Item::Answer { reply, .. } => {
            16 + 48
                + match reply {
                    Reply::Joined { room, replay, .. } => {
                        text(room.len()) + replay.iter().map(|f| 8 + data(f.len())).sum::<usize>()
                    }
                    Reply::Ack { room, id, .. } => text(room.len()) + id.as_ref().map_or(0, |i| text(i.len())),
                    Reply::History { room, page, .. } => {
                        text(room.len()) + 8 + page.iter().map(|m| 16 + data(m.frame.len())).sum::<usize>()
                    }
                    Reply::Presence { room, members } => {
                        text(room.len()) + 8 + members.iter().map(|(u, _)| 16 + text(u.len())).sum::<usize>()
                    }
                    Reply::Refused { room, code, message, .. } => {
                        text(room.len()) + text(code.len()) + text(message.len())
                    }
                }
        }
        Item::Deliver { room, frame, .. } => 32 + text(room.len()) + data(frame.len()),
        Item::Lagged | Item::SyncStart | Item::SyncEnd => 0,
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes one frame; every item or none.
pub fn decode(bytes: &[u8]) -> Result<Vec<Item>, WireError> {
    if bytes.len() > MAX_FRAME {
        return Err(WireError::TooLarge(bytes.len()));
    }
    // The reader wants 8-byte aligned words; an nng body or a fuzzer's
    // input need not be.
    let copy;
    let aligned: &[u8] = if bytes.as_ptr().align_offset(8) == 0 {
        bytes
    } else {
        let mut words = capnp::Word::allocate_zeroed_vec(bytes.len().div_ceil(8));
        let buf = capnp::Word::words_to_bytes_mut(&mut words);
        buf[..bytes.len()].copy_from_slice(bytes);
        copy = words;
        &capnp::Word::words_to_bytes(&copy)[..bytes.len()]
    };
    // Reading each object once costs at most the frame's own size: a frame
    // whose pointers overlap (to look bigger than it is) runs out.
    let options = capnp::message::ReaderOptions {
        traversal_limit_in_words: Some(bytes.len() / 8 + 64),
        nesting_limit: NESTING_LIMIT,
    };
    let mut rest = aligned;
    let message = capnp::serialize::read_message_from_flat_slice(&mut rest, options).map_err(capnp_error)?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} bytes after the message", rest.len())));
    }
    let frame = message.get_root::<cc::frame::Reader>().map_err(capnp_error)?;
    let list = frame.get_items().map_err(capnp_error)?;
    let n = list.len() as usize;
    if n > MAX_ITEMS {
        return Err(WireError::Bad("too many items"));
    }
    let mut d = Decoder { room: None };
    let mut items = Vec::with_capacity(n);
    for item in list.iter() {
        items.push(d.item(item)?);
    }
    Ok(items)
}

fn capnp_error(e: capnp::Error) -> WireError {
    WireError::Decode(e.to_string())
}

fn not_in_schema(e: capnp::NotInSchema) -> WireError {
    WireError::Decode(format!("unknown discriminant or enumerant {}", e.0))
}

fn text_of(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<&str, WireError> {
    t.map_err(capnp_error)?.to_str().map_err(|_| WireError::Bad("text is not UTF-8"))
}

fn user_of(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<UserId, WireError> {
    let u = text_of(t)?;
    crate::auth::check_user_id(u).map_err(|_| WireError::Bad("bad user id"))?;
    Ok(u.into())
}

/// A client message id: null is none; a present one is 1 to
/// `MAX_ID_BYTES` bytes, as the protocol allows.
fn client_id_of(has: bool, t: capnp::Result<capnp::text::Reader<'_>>) -> Result<Option<Box<str>>, WireError> {
    if !has {
        return Ok(None);
    }
    let id = text_of(t)?;
    if id.is_empty() || id.len() > crate::proto::msg::MAX_ID_BYTES {
        return Err(WireError::Bad("bad client message id"));
    }
    Ok(Some(id.into()))
}

fn kind_of(k: Result<cc::WireKind, capnp::NotInSchema>) -> Result<WireKind, WireError> {
    Ok(match k.map_err(not_in_schema)? {
        cc::WireKind::Ws => WireKind::Ws,
        cc::WireKind::Http => WireKind::Http,
    })
}

fn option(has: bool, v: u64) -> Option<u64> {
    has.then_some(v)
}

fn fixed<const N: usize>(d: capnp::Result<capnp::data::Reader<'_>>, what: &'static str) -> Result<[u8; N], WireError> {
    d.map_err(capnp_error)?.try_into().map_err(|_| WireError::Bad(what))
}

/// Whether `id` may be a node id: 1 to [`MAX_NODE_ID_BYTES`] bytes of
/// `[A-Za-z0-9._-]`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_BYTES).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `&'static` spelling of a decoded error code: one of [`ERROR_CODES`],
/// or `internal` for any other.
pub fn error_code(code: &str) -> &'static str {
    ERROR_CODES.iter().copied().find(|c| *c == code).unwrap_or("internal")
}

/// `Asked` from its wire code (see [`asked_code`]).
pub fn asked_of(code: u8) -> Option<Asked> {
    Some(match code {
        0 => Asked::Join,
        1 => Asked::Publish,
        2 => Asked::History,
        3 => Asked::Presence,
        _ => return None,
    })
}

/// State kept across one frame's items.
struct Decoder {
    /// The last room name decoded: deliveries of one frame are mostly for a
    /// few rooms, so consecutive ones share one allocation.
    room: Option<RoomName>,
}

impl Decoder {
    fn room(&mut self, t: capnp::Result<capnp::text::Reader<'_>>) -> Result<RoomName, WireError> {
        let name = text_of(t)?;
        if let Some(r) = self.room.as_ref().filter(|r| ***r == *name) {
            return Ok(r.clone());
        }
        if !crate::proto::msg::valid_room(name) {
            return Err(WireError::Bad("bad room name"));
        }
        let r: RoomName = name.into();
        self.room = Some(r.clone());
        Ok(r)
    }

    fn item(&mut self, item: cc::item::Reader<'_>) -> Result<Item, WireError> {
        use cc::item::Which;
        Ok(match item.which().map_err(not_in_schema)? {
            Which::Hello(h) => {
                let h = h.map_err(capnp_error)?;
                let node = text_of(h.get_node())?;
                if !valid_node_id(node) {
                    return Err(WireError::Bad("bad node id"));
                }
                Item::Hello(Hello {
                    version: h.get_version(),
                    node: node.to_owned(),
                    incarnation: h.get_incarnation(),
                    nodes_digest: fixed(h.get_nodes_digest(), "nodes digest is not 32 bytes")?,
                    nonce: fixed(h.get_nonce(), "nonce is not 16 bytes")?,
                    echo: fixed(h.get_echo(), "echo is not 16 bytes")?,
                    mac: fixed(h.get_mac(), "mac is not 32 bytes")?,
                })
            }
            Which::Heartbeat(h) => Item::Heartbeat { hears_you: h.map_err(capnp_error)?.get_hears_you() },
            Which::Forward(f) => Item::Forward(self.forward(f.map_err(capnp_error)?)?),
            Which::Answer(a) => {
                let a = a.map_err(capnp_error)?;
                Item::Answer { ticket: a.get_ticket(), reply: self.reply(a.get_reply().map_err(capnp_error)?)? }
            }
            Which::Deliver(d) => {
                let d = d.map_err(capnp_error)?;
                Item::Deliver {
                    room: self.room(d.get_room())?,
                    seq: option(d.get_has_seq(), d.get_seq()),
                    frame: Bytes::copy_from_slice(d.get_frame().map_err(capnp_error)?),
                }
            }
            Which::Lagged(()) => Item::Lagged,
            Which::SyncStart(()) => Item::SyncStart,
            Which::SyncEnd(()) => Item::SyncEnd,
        })
    }

    fn forward(&mut self, f: cc::forward::Reader<'_>) -> Result<Forward, WireError> {
        use cc::forward::Which;
        Ok(match f.which().map_err(not_in_schema)? {
            Which::Join(j) => Forward::Join {
                ticket: j.get_ticket(),
                room: self.room(j.get_room())?,
                user: user_of(j.get_user())?,
                member: j.get_member(),
                since: option(j.get_has_since(), j.get_since()),
            },
            Which::Leave(l) => {
                Forward::Leave { room: self.room(l.get_room())?, user: user_of(l.get_user())?, member: l.get_member() }
            }
            Which::Publish(p) => {
                let body = text_of(p.get_body())?;
                // The owner stores and sends it on as JSON text.
                if serde_json::from_str::<&serde_json::value::RawValue>(body).is_err() {
                    return Err(WireError::Bad("body is not JSON"));
                }
                Forward::Publish {
                    ticket: p.get_ticket(),
                    kind: kind_of(p.get_kind())?,
                    room: self.room(p.get_room())?,
                    user: user_of(p.get_user())?,
                    body: body.into(),
                    id: client_id_of(p.has_id(), p.get_id())?,
                }
            }
            Which::History(h) => {
                let limit = h.get_limit();
                if !(1..=crate::proto::msg::MAX_HISTORY_LIMIT).contains(&(limit as usize)) {
                    return Err(WireError::Bad("history limit out of range"));
                }
                Forward::History {
                    ticket: h.get_ticket(),
                    kind: kind_of(h.get_kind())?,
                    room: self.room(h.get_room())?,
                    before: option(h.get_has_before(), h.get_before()),
                    after: option(h.get_has_after(), h.get_after()),
                    limit,
                }
            }
            Which::Presence(p) => Forward::Presence {
                ticket: p.get_ticket(),
                kind: kind_of(p.get_kind())?,
                room: self.room(p.get_room())?,
            },
        })
    }

    fn reply(&mut self, r: cc::reply::Reader<'_>) -> Result<Reply, WireError> {
        use cc::reply::Which;
        Ok(match r.which().map_err(not_in_schema)? {
            Which::Joined(j) => {
                let room = self.room(j.get_room())?;
                let list = j.get_replay().map_err(capnp_error)?;
                let mut replay = Vec::with_capacity(list.len() as usize);
                for f in list.iter() {
                    let f = f.map_err(capnp_error)?;
                    // An empty element costs the sender a pointer and the
                    // receiver a `Bytes`: no such frame exists.
                    if f.is_empty() {
                        return Err(WireError::Bad("empty replay frame"));
                    }
                    replay.push(Bytes::copy_from_slice(f));
                }
                let recovered = j.get_has_recovered().then(|| j.get_recovered());
                Reply::Joined { room, last: j.get_last(), recovered, replay }
            }
            Which::Ack(a) => Reply::Ack {
                room: self.room(a.get_room())?,
                seq: a.get_seq(),
                ts: a.get_ts(),
                id: client_id_of(a.has_id(), a.get_id())?,
            },
            Which::History(h) => {
                let room = self.room(h.get_room())?;
                let list = h.get_page().map_err(capnp_error)?;
                let mut page = Vec::with_capacity((list.len() as usize).min(crate::proto::msg::MAX_HISTORY_LIMIT));
                for m in list.iter() {
                    let frame = m.get_frame().map_err(capnp_error)?;
                    let json_start = m.get_json_start() as usize;
                    if frame.is_empty() {
                        return Err(WireError::Bad("empty msg frame"));
                    }
                    if json_start > frame.len() {
                        return Err(WireError::Bad("msg frame's json start is past its end"));
                    }
                    page.push(MsgFrame { frame: Bytes::copy_from_slice(frame), json_start });
                }
                Reply::History { room, page, more: h.get_more() }
            }
            Which::Presence(p) => {
                let room = self.room(p.get_room())?;
                let list = p.get_members().map_err(capnp_error)?;
                let mut members = Vec::with_capacity((list.len() as usize).min(MAX_ITEMS));
                for m in list.iter() {
                    members.push((user_of(m.get_user())?, m.get_since()));
                }
                Reply::Presence { room, members }
            }
            Which::Refused(f) => {
                let to = asked_of(f.get_to()).ok_or(WireError::Bad("unknown asked code"))?;
                let status = f.get_status();
                if !(100..=599).contains(&status) {
                    return Err(WireError::Bad("status out of range"));
                }
                Reply::Refused {
                    to,
                    room: self.room(f.get_room())?,
                    status,
                    code: error_code(text_of(f.get_code())?),
                    message: text_of(f.get_message())?.to_owned(),
                }
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn room(s: &str) -> RoomName {
        Arc::from(s)
    }

    /// Items are compared by their `Debug` text (`Reply` has no `PartialEq`).
    fn same(a: &[Item], b: &[Item]) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    fn round_trip(items: &[Item]) -> Vec<Item> {
        let bytes = encode(items);
        let back = decode(&bytes).unwrap_or_else(|e| panic!("{e}: {items:?}"));
        assert!(same(items, &back), "{items:?}\n!=\n{back:?}");
        back
    }

    fn msg_frame(seq: u64) -> MsgFrame {
        let json = format!(r#"{{"op":"msg","room":"lobby","seq":{seq},"ts":1,"from":"ann","body":"hi"}}"#);
        let mut frame = vec![0x81, json.len() as u8];
        frame.extend_from_slice(json.as_bytes());
        MsgFrame { frame: frame.into(), json_start: 2 }
    }

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            node: "node-a.1".into(),
            incarnation: 0x0123_4567_89ab_cdef,
            nodes_digest: [7; 32],
            nonce: [1; 16],
            echo: [0; 16],
            mac: [0xee; 32],
        }
    }

    /// One of every item, forward and reply, with options both ways.
    fn every_variant() -> Vec<Item> {
        let r = room("lobby");
        let u: UserId = Arc::from("ann");
        let mut items = vec![
            Item::Hello(hello()),
            Item::Heartbeat { hears_you: true },
            Item::Heartbeat { hears_you: false },
            Item::Lagged,
            Item::SyncStart,
            Item::SyncEnd,
            Item::Deliver { room: r.clone(), seq: Some(42), frame: msg_frame(42).frame },
            Item::Deliver { room: room("other"), seq: None, frame: Bytes::from_static(b"\x81\x02{}") },
            Item::Deliver { room: r.clone(), seq: Some(0), frame: Bytes::new() },
        ];
        let forwards = [
            Forward::Join { ticket: 1, room: r.clone(), user: u.clone(), member: 9, since: None },
            Forward::Join { ticket: u32::MAX, room: r.clone(), user: u.clone(), member: u64::MAX, since: Some(0) },
            Forward::Leave { room: r.clone(), user: Arc::from("bö"), member: 3 },
            Forward::Publish {
                ticket: 2,
                kind: WireKind::Ws,
                room: r.clone(),
                user: u.clone(),
                body: r#"{"text":"hello","n":[1,2.5,null]}"#.into(),
                id: Some("m-1".into()),
            },
            Forward::Publish {
                ticket: 3,
                kind: WireKind::Http,
                room: r.clone(),
                user: u.clone(),
                body: "null".into(),
                id: None,
            },
            Forward::History {
                ticket: 4,
                kind: WireKind::Ws,
                room: r.clone(),
                before: Some(10),
                after: None,
                limit: 50,
            },
            Forward::History {
                ticket: 5,
                kind: WireKind::Http,
                room: r.clone(),
                before: None,
                after: Some(0),
                limit: 1000,
            },
            Forward::Presence { ticket: 6, kind: WireKind::Http, room: r.clone() },
        ];
        items.extend(forwards.into_iter().map(Item::Forward));
        let replies = [
            Reply::Joined { room: r.clone(), last: 7, recovered: None, replay: vec![] },
            Reply::Joined {
                room: r.clone(),
                last: 7,
                recovered: Some(true),
                replay: vec![msg_frame(6).frame, msg_frame(7).frame],
            },
            Reply::Joined { room: r.clone(), last: 0, recovered: Some(false), replay: vec![] },
            Reply::Ack { room: r.clone(), seq: 8, ts: 1_700_000_000_000, id: Some("m-1".into()) },
            Reply::Ack { room: r.clone(), seq: 9, ts: 1, id: None },
            Reply::History { room: r.clone(), page: vec![msg_frame(1), msg_frame(2)], more: true },
            Reply::History { room: r.clone(), page: vec![], more: false },
            Reply::Presence { room: r.clone(), members: vec![(u.clone(), 5), (Arc::from("bo"), 6)] },
            Reply::Presence { room: r.clone(), members: vec![] },
            Reply::Refused { to: Asked::Join, room: r.clone(), status: 403, code: "forbidden", message: "no".into() },
            Reply::Refused {
                to: Asked::Publish,
                room: r.clone(),
                status: 503,
                code: "overloaded",
                message: "storage is busy; retry".into(),
            },
            Reply::Refused { to: Asked::History, room: r.clone(), status: 500, code: "internal", message: "".into() },
            Reply::Refused { to: Asked::Presence, room: r, status: 429, code: "rate_limited", message: "x".into() },
        ];
        items.extend(replies.into_iter().enumerate().map(|(i, reply)| Item::Answer { ticket: i as u32, reply }));
        items
    }

    #[test]
    fn every_variant_round_trips() {
        let items = every_variant();
        round_trip(&items);
        for item in &items {
            round_trip(std::slice::from_ref(item));
        }
        round_trip(&[]);
    }

    #[test]
    fn consecutive_deliveries_share_their_room() {
        let r = room("lobby");
        let d = |seq| Item::Deliver { room: r.clone(), seq: Some(seq), frame: msg_frame(seq).frame };
        let back = round_trip(&[d(1), d(2), d(3)]);
        let rooms: Vec<&RoomName> = back
            .iter()
            .map(|i| match i {
                Item::Deliver { room, .. } => room,
                _ => unreachable!(),
            })
            .collect();
        assert!(Arc::ptr_eq(rooms[0], rooms[1]) && Arc::ptr_eq(rooms[1], rooms[2]));
    }

    #[test]
    fn unaligned_input_decodes() {
        let bytes = encode(&every_variant());
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        assert!(same(&decode(&shifted[1..]).unwrap(), &every_variant()));
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(decode(&big).unwrap_err(), WireError::TooLarge(MAX_FRAME + 1));
    }

    #[test]
    fn truncated_or_extended_frames_are_refused() {
        let bytes = encode(&every_variant());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(matches!(decode(&longer), Err(WireError::Decode(_))));
    }

    #[test]
    fn garbage_is_refused() {
        for g in [&b""[..], b"hello, world!!!!", &[0xff; 64], &[0; 8], &[0; 16], &[1, 0, 0, 0, 0, 0, 0, 0]] {
            assert!(decode(g).is_err(), "{g:?}");
        }
    }

    #[test]
    fn unknown_discriminants_are_refused() {
        let mut bytes = encode(&[Item::Lagged]);
        // Segment table, root pointer, `Frame`, list tag: the item's
        // discriminant is the first u16 after them.
        assert_eq!(bytes[32..34], [5, 0]);
        bytes[32] = 99;
        assert!(matches!(decode(&bytes), Err(WireError::Decode(_))));
    }

    fn decode_one(item: Item) -> Result<Vec<Item>, WireError> {
        decode(&encode(&[Item::SyncStart, item]))
    }

    #[test]
    fn bad_values_are_refused() {
        let r = room("lobby");
        let u: UserId = Arc::from("ann");
        let deliver = |room: &str| Item::Deliver { room: Arc::from(room), seq: None, frame: Bytes::from_static(b"x") };
        for bad in ["", "a b", "é", &"r".repeat(129)] {
            assert_eq!(decode_one(deliver(bad)).unwrap_err(), WireError::Bad("bad room name"), "{bad:?}");
        }
        for bad in ["", "a\nb", &"u".repeat(129)] {
            let join = Forward::Join { ticket: 1, room: r.clone(), user: Arc::from(bad), member: 1, since: None };
            assert_eq!(decode_one(Item::Forward(join)).unwrap_err(), WireError::Bad("bad user id"), "{bad:?}");
        }
        let publish = |body: &str, id: Option<&str>| {
            Item::Forward(Forward::Publish {
                ticket: 1,
                kind: WireKind::Ws,
                room: r.clone(),
                user: u.clone(),
                body: body.into(),
                id: id.map(Into::into),
            })
        };
        for bad in ["", "{", "nul", "1 2", "{\"a\":}", "'x'"] {
            assert_eq!(decode_one(publish(bad, None)).unwrap_err(), WireError::Bad("body is not JSON"), "{bad:?}");
        }
        for bad in ["", &"i".repeat(65)] {
            let e = decode_one(publish("1", Some(bad))).unwrap_err();
            assert_eq!(e, WireError::Bad("bad client message id"), "{bad:?}");
        }
        assert!(decode_one(publish("1", Some(&"i".repeat(64)))).is_ok());
        for limit in [0, 1001, u32::MAX] {
            let h =
                Forward::History { ticket: 1, kind: WireKind::Ws, room: r.clone(), before: None, after: None, limit };
            assert_eq!(decode_one(Item::Forward(h)).unwrap_err(), WireError::Bad("history limit out of range"));
        }
        let page = |m: MsgFrame| Item::Answer {
            ticket: 1,
            reply: Reply::History { room: r.clone(), page: vec![msg_frame(1), m], more: false },
        };
        let m = msg_frame(2);
        let past = MsgFrame { json_start: m.frame.len() + 1, ..m.clone() };
        assert_eq!(decode_one(page(past)).unwrap_err(), WireError::Bad("msg frame's json start is past its end"));
        let huge = MsgFrame { json_start: usize::MAX, ..m.clone() };
        assert_eq!(decode_one(page(huge)).unwrap_err(), WireError::Bad("msg frame's json start is past its end"));
        let at_end = MsgFrame { json_start: m.frame.len(), ..m };
        assert!(decode_one(page(at_end)).is_ok());
        let refused = |status: u16| Item::Answer {
            ticket: 1,
            reply: Reply::Refused { to: Asked::Join, room: r.clone(), status, code: "internal", message: "m".into() },
        };
        for status in [0, 99, 600, u16::MAX] {
            assert_eq!(decode_one(refused(status)).unwrap_err(), WireError::Bad("status out of range"));
        }
        let members = Reply::Presence { room: r.clone(), members: vec![(u.clone(), 1), (Arc::from(""), 2)] };
        assert_eq!(decode_one(Item::Answer { ticket: 1, reply: members }).unwrap_err(), WireError::Bad("bad user id"));
        let replay = Reply::Joined { room: r, last: 1, recovered: None, replay: vec![Bytes::new()] };
        assert_eq!(
            decode_one(Item::Answer { ticket: 1, reply: replay }).unwrap_err(),
            WireError::Bad("empty replay frame")
        );
        let mut bad_node = hello();
        bad_node.node = "a/b".into();
        assert_eq!(decode_one(Item::Hello(bad_node)).unwrap_err(), WireError::Bad("bad node id"));
    }

    #[test]
    fn unknown_error_codes_read_as_internal() {
        let refused = |code: &'static str| Item::Answer {
            ticket: 1,
            reply: Reply::Refused { to: Asked::Publish, room: room("r"), status: 400, code, message: "m".into() },
        };
        for &code in ERROR_CODES {
            round_trip(&[refused(code)]);
        }
        let back = decode(&encode(&[refused("teapot")])).unwrap();
        assert!(same(&back, &[refused("internal")]));
        assert_eq!(error_code("bad_request"), "bad_request");
        assert_eq!(error_code(""), "internal");
    }

    /// A frame built field by field, for what `encode` cannot write.
    fn raw(build: impl FnOnce(cc::item::Builder<'_>)) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        let frame = message.init_root::<cc::frame::Builder>();
        build(frame.init_items(1).get(0));
        capnp::serialize::write_message_to_words(&message)
    }

    #[test]
    fn hello_sizes_are_exact() {
        let ok = raw(|b| {
            let mut h = b.init_hello();
            h.set_node("n");
            h.set_nodes_digest(&[0; 32][..]);
            h.set_nonce(&[0; 16][..]);
            h.set_echo(&[0; 16][..]);
            h.set_mac(&[0; 32][..]);
        });
        assert!(matches!(decode(&ok).unwrap()[..], [Item::Hello(_)]));
        let short = raw(|b| {
            let mut h = b.init_hello();
            h.set_node("n");
            h.set_nodes_digest(&[0; 32][..]);
            h.set_nonce(&[0; 15][..]);
            h.set_echo(&[0; 16][..]);
            h.set_mac(&[0; 32][..]);
        });
        assert_eq!(decode(&short).unwrap_err(), WireError::Bad("nonce is not 16 bytes"));
        let empty = raw(|b| {
            b.init_hello();
        });
        assert!(decode(&empty).is_err());
    }

    #[test]
    fn bad_asked_codes_and_text_are_refused() {
        let to = raw(|b| {
            let mut r = b.init_answer().init_reply().init_refused();
            r.set_to(4);
            r.set_room("r");
            r.set_status(500);
        });
        assert_eq!(decode(&to).unwrap_err(), WireError::Bad("unknown asked code"));
        let not_utf8 = raw(|b| {
            let mut d = b.init_deliver();
            d.reborrow().init_room(2).as_bytes_mut().copy_from_slice(b"\xff\xfe");
            d.set_frame(&b"x"[..]);
        });
        assert_eq!(decode(&not_utf8).unwrap_err(), WireError::Bad("text is not UTF-8"));
    }

    #[test]
    fn the_item_count_is_bounded() {
        let many = vec![Item::Lagged; MAX_ITEMS + 1];
        assert_eq!(decode(&encode(&many)).unwrap_err(), WireError::Bad("too many items"));
        assert_eq!(decode(&encode(&many[1..])).unwrap().len(), MAX_ITEMS);
    }

    /// A 64 KiB batch of ~150-byte deliveries: what the hint predicts is
    /// what it takes.
    #[test]
    fn size_hints_add_up_to_the_frame() {
        let r = room("lobby");
        let mut items = Vec::new();
        let mut hint = FRAME_OVERHEAD;
        let mut seq = 0;
        while hint < BATCH_BYTES {
            seq += 1;
            let item = Item::Deliver { room: r.clone(), seq: Some(seq), frame: msg_frame(seq).frame };
            hint += size_hint(&item);
            items.push(item);
        }
        assert_eq!(encode(&items).len(), hint);
        let all = every_variant();
        let hint = FRAME_OVERHEAD + all.iter().map(size_hint).sum::<usize>();
        let len = encode(&all).len();
        assert!(hint <= len * 5 / 4 && len <= hint * 5 / 4, "hint {hint}, encoded {len}");
    }

    fn arb_room() -> impl Strategy<Value = RoomName> {
        "[A-Za-z0-9_.:-]{1,128}".prop_map(|s| Arc::from(s.as_str()))
    }

    fn arb_user() -> impl Strategy<Value = UserId> {
        "[^\\p{Cc}]{1,32}".prop_map(|s| Arc::from(s.as_str()))
    }

    fn arb_id() -> impl Strategy<Value = Option<Box<str>>> {
        proptest::option::of("[ -~]{1,64}".prop_map(|s| s.into_boxed_str()))
    }

    fn arb_body() -> impl Strategy<Value = Box<str>> {
        prop_oneof![
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap().into_boxed_str()),
            any::<i64>().prop_map(|n| n.to_string().into_boxed_str()),
            proptest::collection::vec(any::<u32>(), 0..8).prop_map(|v| serde_json::to_string(
                &serde_json::json!({ "v": v })
            )
            .unwrap()
            .into_boxed_str()),
            Just("null".into()),
        ]
    }

    fn arb_kind() -> impl Strategy<Value = WireKind> {
        prop_oneof![Just(WireKind::Ws), Just(WireKind::Http)]
    }

    fn arb_bytes(min: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), min..300).prop_map(Bytes::from)
    }

    fn arb_asked() -> impl Strategy<Value = Asked> {
        (0u8..4).prop_map(|c| asked_of(c).unwrap())
    }

    fn arb_forward() -> impl Strategy<Value = Forward> {
        prop_oneof![
            (any::<u32>(), arb_room(), arb_user(), any::<u64>(), any::<Option<u64>>())
                .prop_map(|(ticket, room, user, member, since)| Forward::Join { ticket, room, user, member, since }),
            (arb_room(), arb_user(), any::<u64>()).prop_map(|(room, user, member)| Forward::Leave {
                room,
                user,
                member
            }),
            (any::<u32>(), arb_kind(), arb_room(), arb_user(), arb_body(), arb_id()).prop_map(
                |(ticket, kind, room, user, body, id)| Forward::Publish { ticket, kind, room, user, body, id }
            ),
            (any::<u32>(), arb_kind(), arb_room(), any::<Option<u64>>(), any::<Option<u64>>(), 1u32..=1000).prop_map(
                |(ticket, kind, room, before, after, limit)| Forward::History {
                    ticket,
                    kind,
                    room,
                    before,
                    after,
                    limit
                }
            ),
            (any::<u32>(), arb_kind(), arb_room()).prop_map(|(ticket, kind, room)| Forward::Presence {
                ticket,
                kind,
                room
            }),
        ]
    }

    fn arb_msg_frame() -> impl Strategy<Value = MsgFrame> {
        arb_bytes(1).prop_flat_map(|frame| {
            let len = frame.len();
            (Just(frame), 0..=len).prop_map(|(frame, json_start)| MsgFrame { frame, json_start })
        })
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            (arb_room(), any::<u64>(), any::<Option<bool>>(), proptest::collection::vec(arb_bytes(1), 0..4))
                .prop_map(|(room, last, recovered, replay)| Reply::Joined { room, last, recovered, replay }),
            (arb_room(), any::<u64>(), any::<u64>(), arb_id()).prop_map(|(room, seq, ts, id)| Reply::Ack {
                room,
                seq,
                ts,
                id
            }),
            (arb_room(), proptest::collection::vec(arb_msg_frame(), 0..4), any::<bool>())
                .prop_map(|(room, page, more)| Reply::History { room, page, more }),
            (arb_room(), proptest::collection::vec((arb_user(), any::<u64>()), 0..4))
                .prop_map(|(room, members)| Reply::Presence { room, members }),
            (arb_asked(), arb_room(), 100u16..=599, proptest::sample::select(ERROR_CODES), any::<String>())
                .prop_map(|(to, room, status, code, message)| Reply::Refused { to, room, status, code, message }),
        ]
    }

    fn arb_item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (
                "[A-Za-z0-9._-]{1,64}",
                any::<u16>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<[u8; 16]>(),
                any::<[u8; 16]>()
            )
                .prop_map(|(node, version, incarnation, nodes_digest, nonce, echo)| {
                    Item::Hello(Hello { version, node, incarnation, nodes_digest, nonce, echo, mac: nodes_digest })
                }),
            any::<bool>().prop_map(|hears_you| Item::Heartbeat { hears_you }),
            arb_forward().prop_map(Item::Forward),
            (any::<u32>(), arb_reply()).prop_map(|(ticket, reply)| Item::Answer { ticket, reply }),
            (arb_room(), any::<Option<u64>>(), arb_bytes(0)).prop_map(|(room, seq, frame)| Item::Deliver {
                room,
                seq,
                frame
            }),
            Just(Item::Lagged),
            Just(Item::SyncStart),
            Just(Item::SyncEnd),
        ]
    }

    proptest! {
        #[test]
        fn random_frames_round_trip(items in proptest::collection::vec(arb_item(), 0..24)) {
            let bytes = encode(&items);
            let back = decode(&bytes).unwrap();
            prop_assert!(same(&items, &back), "{items:?}\n!=\n{back:?}");
            let hint = FRAME_OVERHEAD + items.iter().map(size_hint).sum::<usize>();
            // Exact up to the rounding of the few sizes it does not model.
            prop_assert!(bytes.len() <= hint * 5 / 4 + 64 && hint <= bytes.len() * 5 / 4 + 64,
                "hint {hint}, encoded {}", bytes.len());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        /// Flipping bytes of a valid frame gives an error or a frame that
        /// encodes and decodes again.
        #[test]
        fn damaged_frames_fail_cleanly(
            items in proptest::collection::vec(arb_item(), 1..8),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode(&items);
            for (at, v) in flips {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            if let Ok(back) = decode(&bytes) {
                let again = decode(&encode(&back)).unwrap();
                prop_assert!(same(&back, &again));
            }
        }
    }

    /// The generated module, relative to the crate root.
    const GENERATED: &str = "src/cluster/cluster_capnp.rs";

    /// `src/cluster/cluster_capnp.rs` is what `capnp` makes of
    /// `schema/cluster.capnp`.
    /// `ROOMCAST_BLESS=1 cargo test --release --lib cluster::wire::tests::the_generated_code_is_current`
    /// writes it there instead (and passes). Without the `capnp` compiler
    /// the check is skipped, except under `CI`, where it fails.
    #[test]
    fn the_generated_code_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if std::process::Command::new("capnp").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "no capnp compiler (Debian package capnproto) under CI");
            eprintln!("skipped: no capnp compiler (Debian package capnproto) to check {GENERATED} with");
            return;
        }
        let out = tempfile::tempdir().unwrap();
        capnpc::CompilerCommand::new()
            .src_prefix(root.join("schema"))
            .file(root.join("schema/cluster.capnp"))
            .output_path(out.path())
            .default_parent_module(vec!["cluster".into()])
            .run()
            .unwrap();
        let fresh = std::fs::read_to_string(out.path().join("cluster_capnp.rs")).unwrap();
        let path = root.join(GENERATED);
        if std::env::var_os("ROOMCAST_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, fresh).unwrap();
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap();
        for (line, (want, have)) in fresh.lines().zip(current.lines()).enumerate() {
            assert_eq!(have, want, "{GENERATED}, line {}; rerun with ROOMCAST_BLESS=1", line + 1);
        }
        assert_eq!(current, fresh, "{GENERATED} is not what schema/cluster.capnp gives; rerun with ROOMCAST_BLESS=1");
    }
}
