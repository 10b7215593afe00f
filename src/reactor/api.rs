//! The server API under `/v1/api/`, for the backends of the applications
//! that use roomcast: JSON in (`POST`, one object), JSON out, authorised by
//! an API key from the configuration (`Authorization: apikey <key>`; the
//! configuration holds only its SHA-256) or an admin token. Each method is
//! one room command to the room's owner (publish, history, presence), mail
//! to every reactor (disconnect), or read from the shared counters (info).
//!
//! An API caller is a trusted backend: its publishes are not held to the
//! per-user post limits, but the owner's backlog still answers 503.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::reactor::mail::{ConnRef, Kick};

/// `Authorization: apikey <key>`: the scheme, any case, then the key.
fn api_key(req: &Request) -> Option<&[u8]> {
    let v = req.header("authorization")?;
    let scheme = v.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"apikey ") {
        return None;
    }
    let key = v.get(7..)?.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// Compares `key` with the configured hashes without an early exit on the
/// first differing byte (the timing of a refusal says nothing about how
/// close a guess came).
fn key_matches(key: &[u8], hashes: &[[u8; 32]]) -> bool {
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut any = false;
    for want in hashes {
        let diff = want.iter().zip(h.as_ref()).fold(0u8, |d, (a, b)| d | (a ^ b));
        any |= diff == 0;
    }
    any
}

/// A close code the API may send: 1000, 1001, 1008, or one of the
/// application range 3000-4999 (RFC 6455 section 7.4.2).
fn valid_close_code(c: u16) -> bool {
    matches!(c, 1000 | 1001 | 1008 | 3000..=4999)
}

fn bad(m: &str) -> Outcome {
    Outcome::Answer(Answer::error(400, "bad_request", m))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], shape: &str) -> Result<T, Outcome> {
    serde_json::from_slice(body).map_err(|e| bad(&format!("bad JSON: {e} (the body is {shape})")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq<'a> {
    room: String,
    #[serde(borrow)]
    body: &'a RawValue,
    id: Option<String>,
    from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastReq<'a> {
    rooms: Vec<String>,
    #[serde(borrow)]
    body: &'a RawValue,
    id: Option<String>,
    from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeReq {
    user: String,
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomsReq {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A `rooms` listing waiting for the parts of every reactor.
pub struct Gather {
    gen: u32,
    remaining: usize,
    limit: usize,
    rooms: Vec<crate::rooms::core::RoomInfo>,
    more: bool,
}

/// Rooms one `broadcast` may name.
pub const MAX_BROADCAST_ROOMS: usize = 1000;
/// Body bytes one `broadcast` may put in flight (rooms × body): each room's
/// publish carries its own copy to its owner.
pub const MAX_BROADCAST_BYTES: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomReq {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryReq {
    room: String,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectReq {
    user: String,
    code: Option<u16>,
    reason: Option<String>,
}

/// The close code of `disconnect` when the request names none.
pub const DISCONNECT_CODE: u16 = 4002;

impl Reactor {
    /// The request carries one of the configured API keys or an admin
    /// token; else its 401 or 403.
    pub(super) fn api_authorised(&self, req: &Request) -> Result<(), Answer> {
        if let Some(key) = api_key(req) {
            if key_matches(key, &self.live.api_keys) {
                return Ok(());
            }
            return Err(Answer::error(401, "unauthorized", "unknown API key"));
        }
        self.admin(req, "the server API needs an API key (Authorization: apikey <key>) or")
    }

    /// `/v1/api/{method}`.
    pub(super) fn api_route(&mut self, key: u32, req: &Request, method: &str, p: Pending) -> Outcome {
        if method == "reload" {
            if api_key(req).is_some() {
                return Outcome::Answer(Answer::error(403, "forbidden", "reloads need an admin token, not an API key"));
            }
            return self.api_reload(key, req, p);
        }
        let known = ["publish", "broadcast", "history", "presence", "info", "disconnect", "unsubscribe", "rooms"];
        if !known.contains(&method) {
            return Outcome::Answer(Answer::error(404, "not_found", "no such API method"));
        }
        if req.method != Method::Post {
            let mut a = Answer::error(405, "method_not_allowed", "API methods take POST with a JSON object");
            a.extra.push(("Allow", "POST".to_string()));
            return Outcome::Answer(a);
        }
        if let Err(a) = self.api_authorised(req) {
            return Outcome::Answer(a);
        }
        let body: &[u8] = if req.body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &req.body };
        let result = match method {
            "publish" => self.api_publish(key, body, p),
            "broadcast" => self.api_broadcast(body),
            "unsubscribe" => self.api_unsubscribe(body),
            "rooms" => self.api_rooms(key, body, p),
            "history" => self.api_history(key, body, p),
            "presence" => self.api_presence(key, body, p),
            "disconnect" => self.api_disconnect(body),
            _ => Ok(self.api_info()),
        };
        result.unwrap_or_else(|o| o)
    }

    fn api_room(&self, room: &str) -> Result<RoomName, Outcome> {
        if !msg::valid_room(room) {
            return Err(bad("room names are 1 to 128 bytes of [A-Za-z0-9_.:-]"));
        }
        Ok(RoomName::from(room))
    }

    fn api_publish(&mut self, key: u32, body: &[u8], p: Pending) -> Result<Outcome, Outcome> {
        let r: PublishReq = parse(body, r#"{"room": "...", "body": <JSON>, "id"?: "...", "from"?: "user"}"#)?;
        let room = self.api_room(&r.room)?;
        let from = r.from.unwrap_or_else(|| "api".to_string());
        crate::auth::check_user_id(&from).map_err(|m| bad(&format!("from: {m}")))?;
        msg::check_body(r.body.get(), self.live.config.max_body_depth).map_err(|e| bad(&e.to_string()))?;
        let id = match r.id {
            Some(id) if id.is_empty() || id.len() > 128 => return Err(bad("id is 1 to 128 bytes")),
            other => other.map(String::into_boxed_str),
        };
        let owner = Reactor::owner_at(&self.shared, &room);
        if self.backed_up(owner) {
            let mut a = Answer::error(503, "overloaded", "the room's owner is busy; retry");
            a.extra.push(("Retry-After", "1".to_string()));
            return Err(Outcome::Answer(a));
        }
        let asker = Asker::http(self.conn_ref(key));
        let command =
            Command::Publish(Publish { room, user: UserId::from(from.as_str()), body: r.body.to_owned(), id, asker });
        self.set_awaiting(key, Some(p));
        self.ask_owner(owner, command);
        Ok(Outcome::Done)
    }

    /// One message to many rooms: each room's owner publishes it as if
    /// `publish` had been called once per room, with nobody waiting for the
    /// seqs (202; `history` shows them). All or nothing at the door: a
    /// bad room name, or an owner backed up, refuses the whole call before
    /// any room gets it.
    fn api_broadcast(&mut self, body: &[u8]) -> Result<Outcome, Outcome> {
        let r: BroadcastReq = parse(body, r#"{"rooms": ["..."], "body": <JSON>, "id"?: "...", "from"?: "user"}"#)?;
        if r.rooms.is_empty() || r.rooms.len() > MAX_BROADCAST_ROOMS {
            return Err(bad(&format!("rooms lists 1 to {MAX_BROADCAST_ROOMS} rooms")));
        }
        let from = r.from.unwrap_or_else(|| "api".to_string());
        crate::auth::check_user_id(&from).map_err(|m| bad(&format!("from: {m}")))?;
        msg::check_body(r.body.get(), self.live.config.max_body_depth).map_err(|e| bad(&e.to_string()))?;
        if r.id.as_ref().is_some_and(|id| id.is_empty() || id.len() > 128) {
            return Err(bad("id is 1 to 128 bytes"));
        }
        let mut seen = std::collections::HashSet::with_capacity(r.rooms.len());
        let mut rooms: Vec<RoomName> = Vec::with_capacity(r.rooms.len());
        for name in &r.rooms {
            let room = self.api_room(name)?;
            if seen.insert(room.clone()) {
                rooms.push(room);
            }
        }
        if rooms.len().saturating_mul(r.body.get().len()) > MAX_BROADCAST_BYTES {
            let m = format!("rooms × body bytes is at most {MAX_BROADCAST_BYTES}; split the broadcast");
            return Err(Outcome::Answer(Answer::error(413, "too_large", &m)));
        }
        if rooms.iter().any(|room| self.backed_up(Reactor::owner_at(&self.shared, room))) {
            let mut a = Answer::error(503, "overloaded", "a room's owner is busy; retry");
            a.extra.push(("Retry-After", "1".to_string()));
            return Err(Outcome::Answer(a));
        }
        let user = UserId::from(from.as_str());
        let n = rooms.len();
        for room in rooms {
            let owner = Reactor::owner_at(&self.shared, &room);
            let publish = Publish {
                room,
                user: user.clone(),
                body: r.body.to_owned(),
                id: r.id.clone().map(String::into_boxed_str),
                asker: Asker::nobody(self.id as u16),
            };
            self.ask_owner(owner, Command::Publish(publish));
        }
        let body = serde_json::json!({ "rooms": n });
        Ok(Outcome::Answer(Answer::json(202, body.to_string().into_bytes())))
    }

    /// Takes every connection of `user` on this node out of `room`, as a
    /// `leave` would; each gets `{"op":"left","room":..,"reason":"unsubscribed"}`.
    fn api_unsubscribe(&mut self, body: &[u8]) -> Result<Outcome, Outcome> {
        let r: UnsubscribeReq = parse(body, r#"{"user": "...", "room": "..."}"#)?;
        crate::auth::check_user_id(&r.user).map_err(|m| bad(&format!("user: {m}")))?;
        let room = self.api_room(&r.room)?;
        let n = self.shared.reactors();
        for to in 0..n {
            self.post(to, Mail::Unsubscribe { user: r.user.clone().into(), room: room.clone() });
        }
        let body = serde_json::json!({ "user": r.user, "room": &*room, "reactors": n });
        Ok(Outcome::Answer(Answer::json(200, body.to_string().into_bytes())))
    }

    /// The rooms in memory on this node (every room with members is), in
    /// name order, a page at a time: each reactor sends its first `limit`
    /// after the cursor and this one merges them.
    fn api_rooms(&mut self, key: u32, body: &[u8], p: Pending) -> Result<Outcome, Outcome> {
        let r: RoomsReq = parse(body, r#"{"prefix"?: "...", "after"?: "room", "limit"?: 1..1000}"#)?;
        let limit = r.limit.unwrap_or(100).clamp(1, 1000);
        let prefix = r.prefix.unwrap_or_default();
        if prefix.len() > 128 || r.after.as_ref().is_some_and(|a| a.len() > 128) {
            return Err(bad("prefix and after are at most 128 bytes"));
        }
        let to = self.conn_ref(key);
        let n = self.shared.reactors();
        self.gathers.insert(key, Gather { gen: to.gen, remaining: n, limit, rooms: Vec::new(), more: false });
        self.set_awaiting(key, Some(p));
        for reactor in 0..n {
            let after = r.after.clone().map(String::into_boxed_str);
            self.post(reactor, Mail::RoomsAsk { to, prefix: prefix.clone().into(), after, limit });
        }
        Ok(Outcome::Done)
    }

    fn api_history(&mut self, key: u32, body: &[u8], p: Pending) -> Result<Outcome, Outcome> {
        let r: HistoryReq = parse(body, r#"{"room": "...", "before"?: seq, "after"?: seq, "limit"?: n}"#)?;
        let room = self.api_room(&r.room)?;
        let limit = r.limit.unwrap_or(50).clamp(1, 1000) as usize;
        let asker = Asker::http(self.conn_ref(key));
        let owner = Reactor::owner_at(&self.shared, &room);
        self.set_awaiting(key, Some(p));
        self.ask_owner(owner, Command::History(History { room, before: r.before, after: r.after, limit, asker }));
        Ok(Outcome::Done)
    }

    fn api_presence(&mut self, key: u32, body: &[u8], p: Pending) -> Result<Outcome, Outcome> {
        let r: RoomReq = parse(body, r#"{"room": "..."}"#)?;
        let room = self.api_room(&r.room)?;
        let asker = Asker::http(self.conn_ref(key));
        let owner = Reactor::owner_at(&self.shared, &room);
        self.set_awaiting(key, Some(p));
        self.ask_owner(owner, Command::Presence(Presence { room, asker }));
        Ok(Outcome::Done)
    }

    /// Every connection of `user` on this node is closed with the code and
    /// reason given; the answer says the request went to every reactor
    /// (each closes its own at once).
    fn api_disconnect(&mut self, body: &[u8]) -> Result<Outcome, Outcome> {
        let r: DisconnectReq = parse(body, r#"{"user": "...", "code"?: 4002, "reason"?: "..."}"#)?;
        crate::auth::check_user_id(&r.user).map_err(|m| bad(&format!("user: {m}")))?;
        let code = r.code.unwrap_or(DISCONNECT_CODE);
        if !valid_close_code(code) {
            return Err(bad("code is 1000, 1001, 1008 or 3000 to 4999"));
        }
        let reason = r.reason.unwrap_or_else(|| "disconnected by the server".to_string());
        // A close frame's reason is at most 123 bytes.
        if reason.len() > 123 {
            return Err(bad("reason is at most 123 bytes"));
        }
        let n = self.shared.reactors();
        for to in 0..n {
            let kick = Kick { user: r.user.clone().into(), code, reason: reason.clone().into() };
            self.post(to, Mail::Kick(kick));
        }
        let body = serde_json::json!({ "user": r.user, "code": code, "reactors": n });
        Ok(Outcome::Answer(Answer::json(200, body.to_string().into_bytes())))
    }

    /// Per reactor: connections, rooms in memory, and the totals of
    /// messages, deliveries and bytes (rates are their differences over
    /// time, as `/metrics` gives them).
    fn api_info(&self) -> Outcome {
        let reactors: Vec<serde_json::Value> = self
            .shared
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = m.snapshot();
                serde_json::json!({
                    "reactor": i,
                    "connections": s.open,
                    "accepted": s.accepted,
                    "rooms": s.rooms_loaded,
                    "published": s.published,
                    "delivered": s.delivered,
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                })
            })
            .collect();
        let body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "draining": self.shared.draining.load(std::sync::atomic::Ordering::Relaxed),
            "reactors": reactors,
        });
        Outcome::Answer(Answer::json(200, body.to_string().into_bytes()))
    }

    /// A `disconnect` reached this reactor: close every connection of the
    /// user here (a linear pass over the connections; an API call, not a
    /// hot path).
    pub(in crate::reactor) fn kick(&mut self, k: Kick) {
        let keys: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.state, State::Ws(ws) if *ws.user == *k.user))
            .map(|(key, _)| key as u32)
            .collect();
        for key in keys {
            self.ws_close(key, k.code, &k.reason, CloseReason::Normal);
        }
    }
}

impl Reactor {
    /// One reactor's part of a `rooms` listing; the last part answers.
    pub(in crate::reactor) fn rooms_part(&mut self, to: ConnRef, rooms: Vec<crate::rooms::core::RoomInfo>, more: bool) {
        let key = to.key;
        let done = match self.gathers.get_mut(&key) {
            Some(g) if g.gen == to.gen => {
                g.rooms.extend(rooms);
                g.more |= more;
                g.remaining = g.remaining.saturating_sub(1);
                g.remaining == 0
            }
            _ => return,
        };
        if !done {
            return;
        }
        let Some(mut g) = self.gathers.remove(&key) else { return };
        g.rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let more = g.more || g.rooms.len() > g.limit;
        g.rooms.truncate(g.limit);
        let next = if more { g.rooms.last().map(|r| r.name.to_string()) } else { None };
        let list: Vec<serde_json::Value> = g
            .rooms
            .iter()
            .map(|r| {
                serde_json::json!({ "room": &*r.name, "connections": r.connections, "users": r.users,
                    "last_seq": r.last_seq })
            })
            .collect();
        let body = serde_json::json!({ "rooms": list, "next": next });
        if let Some(key) = self.resolve(to) {
            self.http_answer(key, 200, body.to_string().into_bytes(), None);
        }
    }

    /// An `unsubscribe` reached this reactor.
    pub(in crate::reactor) fn unsubscribe(&mut self, user: &str, room: &RoomName) {
        let mut found: Vec<(u32, crate::rooms::UserId, super::super::conn::Slot)> = Vec::new();
        for (key, c) in self.conns.iter_mut() {
            if let State::Ws(ws) = &mut c.state {
                if &*ws.user == user {
                    if let Some(i) = ws.rooms.iter().position(|(r, _)| r == room) {
                        let (_, slot) = ws.rooms.remove(i);
                        found.push((key as u32, ws.user.clone(), slot));
                    }
                }
            }
        }
        for (key, u, slot) in found {
            let left = msg::encode_left(None, room, Some("unsubscribed"));
            self.leave_room(key, u, (room.clone(), slot), left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_their_hash_only() {
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"s3cret-key");
        let mut want = [0u8; 32];
        want.copy_from_slice(h.as_ref());
        assert!(key_matches(b"s3cret-key", &[[0u8; 32], want]));
        assert!(!key_matches(b"s3cret-kez", &[want]));
        assert!(!key_matches(b"", &[want]));
        assert!(!key_matches(b"s3cret-key", &[]));
    }

    #[test]
    fn close_codes() {
        assert!(valid_close_code(1000) && valid_close_code(4002) && valid_close_code(3000));
        assert!(!valid_close_code(1005) && !valid_close_code(1006) && !valid_close_code(5000) && !valid_close_code(0));
    }
}
