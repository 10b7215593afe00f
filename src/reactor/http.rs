//! HTTP on a connection: one request at a time from the front of the input,
//! answered in order (pipelining), routed to the built-in endpoints, the
//! room endpoints (answered by the room's owner, which pauses parsing until
//! the answer is back) or the WebSocket upgrade.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::rules::{Patterns, Rules};
use crate::metrics::CloseReason;
use crate::proto::deflate;
use crate::proto::http::{self, bearer_token, HttpError, Method, Request, UpgradeError};
use crate::proto::msg;
use crate::proto::ws::{accept_key, Decoder};
use crate::rooms::{RoomName, UserId};

use super::browser;
use super::conn::{Pending, State, TokenBucket, WsKind, WsState};
use super::mail::{Asker, HttpAnswer, Mail};
use super::timer::later;
use super::{Reactor, Step};

#[path = "api.rs"]
mod api;

/// Refused upgrades logged per second per reactor (see `refusal_may_log`).
const REFUSALS_PER_SECOND: u32 = 20;
use crate::rooms::core::{Command, History, Presence, Publish};
pub(super) use api::Gather;

/// The page served at `GET /`.
const PAGE: &str = include_str!("../../static/index.html");
/// The admin page (`/admin`): public like the page, useless without an
/// admin token, which it sends to the server API only.
const ADMIN_PAGE: &str = include_str!("../../static/admin.html");
/// The subprotocol of protocol v1.
const SUBPROTOCOL: &str = "roomcast.v1";

/// An HTTP answer, before it is written.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
}

impl Answer {
    fn json(status: u16, body: Vec<u8>) -> Answer {
        Answer { status, content_type: "application/json", body, extra: Vec::new() }
    }

    fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::json(status, msg::error_json(code, message))
    }
}

/// What a request turns into.
enum Outcome {
    Answer(Answer),
    /// Switched to WebSocket, or handed to a room owner (which answers
    /// through `http_answer`, at once when the owner is this reactor).
    Done,
}

impl Reactor {
    pub(super) fn http_step(&mut self, key: u32, buf: &mut [u8]) -> Step {
        let limits = http::Limits { max_body: self.live.config.max_message_bytes, ..http::Limits::default() };
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return Step::Stop;
        };
        let State::Http(h) = &mut conn.state else {
            return Step::Stop;
        };
        if h.awaiting.is_some() {
            return Step::Stop;
        }
        if h.started.is_none() {
            h.started = Some(now);
        }
        // Parse only once the head is complete (or too long: the parser
        // then says 431); until then, only the new bytes are searched.
        if h.scanned < buf.len() && buf.len() <= limits.max_head {
            let from = h.scanned.saturating_sub(3);
            let ended = buf.get(from..).is_some_and(|b| b.windows(2).any(|w| w == b"\n\n" || w == b"\n\r"));
            if !ended {
                h.scanned = buf.len();
                return Step::NeedMore;
            }
        }
        if h.wanted.is_some_and(|w| buf.len() < w) {
            return Step::NeedMore;
        }
        match http::parse_request(buf, &limits) {
            Ok(None) => {
                // The head is in; a body with a length arrives in pieces.
                h.wanted = http::request_len(buf, &limits);
                Step::NeedMore
            }
            Ok(Some((req, used))) => {
                h.started = None;
                h.scanned = 0;
                h.wanted = None;
                self.counters.http_requests += 1;
                self.request(key, req);
                Step::Consumed(used)
            }
            Err(e) => {
                self.http_fail(key, &e);
                Step::Stop
            }
        }
    }

    fn http_fail(&mut self, key: u32, e: &HttpError) {
        let mut out = Vec::new();
        http::write_error(&mut out, e.status(), e.code(), &e.to_string(), false, &[]);
        self.send(key, Bytes::from(out));
        self.set_closing(key, false, CloseReason::Protocol);
    }

    fn request(&mut self, key: u32, req: Request) {
        let keep_alive = req.keep_alive && !self.draining();
        let head_only = req.method == Method::Head;
        let cors = req.path.starts_with("/v1/");
        let p = Pending { keep_alive, head_only, cors };
        if cors {
            if let Some(a) = self.check_origin(key, &req) {
                self.write_answer(key, a, p);
                return;
            }
        }
        match self.route(key, &req, p) {
            Outcome::Answer(a) => self.write_answer(key, a, p),
            Outcome::Done => {}
        }
    }

    /// The `Origin` rule of `/v1/*` (see `browser`): `Some` answer when
    /// the request stops here (a refused origin, a CORS preflight). An
    /// allowed origin is kept for the answer's CORS headers.
    fn check_origin(&mut self, key: u32, req: &Request) -> Option<Answer> {
        let tls = self.conns.get(key as usize).is_some_and(|c| c.transport.is_tls());
        let origin = match req.header("origin") {
            None => None,
            Some(o) if self.shared.origins.allows(o, req, tls) => Some(String::from_utf8_lossy(o).trim().to_string()),
            Some(_) => {
                self.counters.origin_refused += 1;
                return Some(Answer::error(
                    403,
                    "forbidden",
                    "this origin may not use this server (--allowed-origins)",
                ));
            }
        };
        let preflight = req.method == Method::Options;
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if let State::Http(h) = &mut conn.state {
                h.cors_origin = origin;
            }
        }
        preflight.then(|| {
            let mut a = Answer { status: 204, content_type: "text/plain", body: Vec::new(), extra: Vec::new() };
            a.extra.push(("Allow", format!("{}, OPTIONS", browser::CORS_METHODS)));
            a.extra.push(("Access-Control-Allow-Methods", browser::CORS_METHODS.to_string()));
            a.extra.push(("Access-Control-Allow-Headers", browser::CORS_HEADERS.to_string()));
            a.extra.push(("Access-Control-Max-Age", browser::CORS_MAX_AGE.to_string()));
            a
        })
    }

    fn write_answer(&mut self, key: u32, mut a: Answer, p: Pending) {
        if p.cors {
            a.extra.push(("Vary", "Origin".to_string()));
            a.extra.push(("X-Content-Type-Options", "nosniff".to_string()));
            let origin = self.conns.get_mut(key as usize).and_then(|c| match &mut c.state {
                State::Http(h) => h.cors_origin.take(),
                _ => None,
            });
            if let Some(o) = origin {
                a.extra.push(("Access-Control-Allow-Origin", o));
                a.extra.push(("Access-Control-Expose-Headers", "Retry-After".to_string()));
            }
        }
        let extra: Vec<(&str, &str)> = a.extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut out = Vec::with_capacity(160 + a.body.len());
        http::write_response(&mut out, a.status, a.content_type, &a.body, p.keep_alive, &extra, p.head_only);
        self.send(key, Bytes::from(out));
        if !p.keep_alive {
            self.set_closing(key, false, CloseReason::Normal);
        } else if let Some(conn) = self.conns.get_mut(key as usize) {
            if let State::Http(h) = &mut conn.state {
                h.idle_since = self.now;
            }
        }
    }

    /// Marks the request on `key` as waiting for an answer by mail (parsing
    /// and reading pause until `http_answer`), or clears the mark.
    fn set_awaiting(&mut self, key: u32, p: Option<Pending>) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if let State::Http(h) = &mut conn.state {
                h.awaiting = p;
            }
        }
    }

    /// The answer to a request that waited on a room owner.
    pub(super) fn http_answer(&mut self, key: u32, status: u16, body: Vec<u8>, retry_after: Option<u64>) {
        let mut a = Answer::json(status, body);
        if let Some(s) = retry_after {
            a.extra.push(("Retry-After", s.to_string()));
        }
        self.answer_waiting(key, a);
    }

    /// The answer to a request that waited on another thread.
    pub(super) fn http_mail(&mut self, key: u32, h: HttpAnswer) {
        let mut a = Answer { status: h.status, content_type: h.content_type, body: h.body, extra: h.headers };
        if let Some(s) = h.retry_after {
            a.extra.push(("Retry-After", s.to_string()));
        }
        self.answer_waiting(key, a);
    }

    fn answer_waiting(&mut self, key: u32, a: Answer) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let State::Http(h) = &mut conn.state else {
            return;
        };
        let Some(p) = h.awaiting.take() else { return };
        let p = Pending { keep_alive: p.keep_alive && !self.draining(), ..p };
        self.write_answer(key, a, p);
        // Pipelined requests behind this one may go on now, and the socket
        // is read again (reading paused while the request waited).
        if p.keep_alive {
            self.process_buffered(key);
            self.rerun.push(key);
        }
    }

    fn route(&mut self, key: u32, req: &Request, p: Pending) -> Outcome {
        let path = req.path.as_str();
        let get = matches!(req.method, Method::Get | Method::Head);
        let allow = |methods: &str| {
            let mut a = Answer::error(405, "method_not_allowed", "method not allowed here");
            a.extra.push(("Allow", methods.to_string()));
            Outcome::Answer(a)
        };
        match path {
            "/healthz" if get => {
                if self.draining() {
                    Outcome::Answer(Answer::error(503, "overloaded", "draining"))
                } else {
                    Outcome::Answer(Answer {
                        status: 200,
                        content_type: "text/plain",
                        body: b"ok\n".to_vec(),
                        extra: Vec::new(),
                    })
                }
            }
            "/metrics" if get => Outcome::Answer(Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: {
                    let mut m = crate::metrics::render(&self.shared.metrics);
                    if let Some(c) = &self.shared.cluster {
                        c.render_metrics(&mut m);
                    }
                    m.into_bytes()
                },
                extra: Vec::new(),
            }),
            "/" | "/index.html" if get => html_page(PAGE, browser::page_csp(PAGE)),
            "/admin" if get => html_page(ADMIN_PAGE, browser::admin_csp(ADMIN_PAGE)),
            "/healthz" | "/metrics" | "/" | "/index.html" | "/admin" => allow("GET, HEAD"),
            // Test builds only: the way to make a reactor thread panic.
            #[cfg(test)]
            "/__test/panic" => panic!("test-only panic trigger"),
            "/v1/ws" => self.upgrade(key, req, WsKind::App),
            "/v1/admin/backup" => self.admin_backup(key, req, p),
            "/v1/cluster" => self.cluster_view(req),
            "/v1/echo" if self.live.config.echo => self.upgrade(key, req, WsKind::Echo),
            _ if path.starts_with("/v1/auth/") => self.auth_route(key, req, p),
            _ if path.starts_with("/v1/api/") => {
                let method = path.strip_prefix("/v1/api/").unwrap_or("").to_string();
                self.api_route(key, req, &method, p)
            }
            _ => match path.strip_prefix("/v1/rooms/") {
                Some(rest) => self.room_route(key, req, rest, p),
                None => Outcome::Answer(Answer::error(404, "not_found", "no such endpoint")),
            },
        }
    }

    fn room_route(&mut self, key: u32, req: &Request, rest: &str, p: Pending) -> Outcome {
        let (room, what) = match rest.split_once('/') {
            Some((room, what)) => (room, what),
            None => return Outcome::Answer(Answer::error(404, "not_found", "no such endpoint")),
        };
        let allowed = match what {
            "messages" => "GET, HEAD, POST",
            "presence" => "GET, HEAD",
            _ => return Outcome::Answer(Answer::error(404, "not_found", "no such endpoint")),
        };
        let method_ok = match req.method {
            Method::Get | Method::Head => true,
            Method::Post => what == "messages",
            _ => false,
        };
        if !method_ok {
            let mut a = Answer::error(405, "method_not_allowed", "method not allowed here");
            a.extra.push(("Allow", allowed.to_string()));
            return Outcome::Answer(a);
        }
        // Reads draw on the connection's request bucket before their token is
        // checked: a pipelined flood must not buy one signature check each.
        if req.method != Method::Post {
            let (rate, burst) = (self.live.config.request_rate, self.live.config.request_burst);
            let now = self.now;
            if let Some(State::Http(h)) = self.conns.get_mut(key as usize).map(|c| &mut c.state) {
                if let Err(wait) = h.requests.take(rate, burst, now) {
                    self.counters.rate_limited += 1;
                    let mut a = Answer::error(429, "rate_limited", &format!("too many requests; retry in {wait} ms"));
                    a.extra.push(("Retry-After", wait.div_ceil(1000).max(1).to_string()));
                    return Outcome::Answer(a);
                }
            }
        }
        let (user, rules) = match self.http_user(req) {
            Ok(u) => u,
            Err(a) => return Outcome::Answer(a),
        };
        if !msg::valid_room(room) {
            return Outcome::Answer(Answer::error(
                400,
                "bad_request",
                "room names are 1 to 128 bytes of [A-Za-z0-9_.:-]",
            ));
        }
        // Checked here, before anything goes to the room's owner (in a
        // cluster, another node that trusts this one's checks).
        let refused = match req.method {
            Method::Post if !rules.may_send(room) => Some("this token may not send to this room"),
            Method::Get | Method::Head if !rules.may_read(room) => Some("this token may not read this room"),
            _ => None,
        };
        if let Some(m) = refused {
            return Outcome::Answer(Answer::error(403, "forbidden", m));
        }
        let room: RoomName = RoomName::from(room);
        let asker = Asker::http(self.conn_ref(key));
        let owner = Reactor::owner_at(&self.shared, &room);
        let command = match (what, req.method) {
            ("presence", _) => Command::Presence(Presence { room, asker }),
            ("messages", Method::Post) => {
                let post = match msg::decode_post(&req.body) {
                    Ok(p) => p,
                    Err(e) => return Outcome::Answer(Answer::error(400, e.code, &e.message)),
                };
                if let Err(e) = msg::check_body(post.body.get(), self.live.config.max_body_depth) {
                    return Outcome::Answer(Answer::error(400, "bad_request", &e.to_string()));
                }
                // Posts are limited like WebSocket sends: per user (the send
                // bucket's numbers) and per source address.
                let ip = self.conns.get(key as usize).and_then(|c| c.ip);
                if let Err(why) = self.shared.limits.post(ip, &user, self.now) {
                    self.counters.rate_limited += 1;
                    let m = format!("too many posts; retry in {} ms", why.retry_after_ms());
                    let mut a = Answer::error(429, "rate_limited", &m);
                    a.extra.push(("Retry-After", why.retry_after_secs().to_string()));
                    return Outcome::Answer(a);
                }
                if self.backed_up(owner) {
                    let mut a = Answer::error(503, "overloaded", "the room's owner is busy; retry");
                    a.extra.push(("Retry-After", "1".to_string()));
                    return Outcome::Answer(a);
                }
                Command::Publish(Publish {
                    room,
                    user,
                    body: post.body.to_owned(),
                    id: post.id.map(|c| Box::from(c.as_ref())),
                    asker,
                })
            }
            _ => {
                let num = |name: &str| -> Result<Option<u64>, Answer> {
                    match req.query_param(name) {
                        None => Ok(None),
                        Some(v) if v.is_empty() => Ok(None),
                        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                            Answer::error(400, "bad_request", &format!("`{name}` must be a non-negative integer"))
                        }),
                    }
                };
                let (before, after, limit) = match (num("before"), num("after"), num("limit")) {
                    (Ok(b), Ok(a), Ok(l)) => (b, a, l),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Outcome::Answer(e),
                };
                let limit = limit.unwrap_or(50).clamp(1, 1000) as usize;
                Command::History(History { room, before, after, limit, asker })
            }
        };
        // Waiting is marked before posting: when this reactor owns the room
        // the answer comes back inside `post`.
        self.set_awaiting(key, Some(p));
        self.ask_owner(owner, command);
        Outcome::Done
    }

    /// The request carries a valid token with role admin; else its 401, or
    /// a 403 saying "`what` a token with role admin".
    fn admin(&self, req: &Request, what: &str) -> Result<(), Answer> {
        let claims = match self.credentials(req) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(Answer::error(401, "unauthorized", "an admin token is required")),
            Err(a) => return Err(a),
        };
        if !crate::auth::rules::is_admin(&claims) {
            return Err(Answer::error(403, "forbidden", &format!("{what} a token with role admin")));
        }
        Ok(())
    }

    /// `GET /v1/cluster` (admin token): this node's view of the cluster.
    fn cluster_view(&mut self, req: &Request) -> Outcome {
        if !matches!(req.method, Method::Get | Method::Head) {
            let mut a = Answer::error(405, "method_not_allowed", "use GET");
            a.extra.push(("Allow", "GET, HEAD".to_string()));
            return Outcome::Answer(a);
        }
        if let Err(a) = self.admin(req, "the cluster view needs") {
            return Outcome::Answer(a);
        }
        let Some(c) = &self.shared.cluster else {
            return Outcome::Answer(Answer::error(404, "not_found", "this node is not in a cluster"));
        };
        Outcome::Answer(Answer {
            status: 200,
            content_type: "application/json",
            body: c.view_json(),
            extra: Vec::new(),
        })
    }

    /// `POST /v1/api/reload` (an admin token): what SIGHUP does, answered. The files
    /// are read on a thread of its own, never on the reactor.
    fn api_reload(&mut self, key: u32, req: &Request, p: Pending) -> Outcome {
        if req.method != Method::Post {
            let mut a = Answer::error(405, "method_not_allowed", "use POST");
            a.extra.push(("Allow", "POST".to_string()));
            return Outcome::Answer(a);
        }
        // Admins only: a reload reads the server's files and its answer
        // quotes what is wrong in them.
        if let Err(a) = self.admin(req, "reloads need") {
            return Outcome::Answer(a);
        }
        if self.shared.reloader.busy() {
            return Outcome::Answer(Answer::error(409, "bad_request", "a reload is running; try again when it ends"));
        }
        self.set_awaiting(key, Some(p));
        let shared = self.shared.clone();
        let me = self.conn_ref(key);
        let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
            let mail = match shared.reloader.reload_logged(&shared, "api") {
                Ok(o) => HttpAnswer::json(
                    me,
                    200,
                    serde_json::json!({ "reloaded": true, "changed": o.changed,
                    "restart_needed": o.restart_needed, "keys": o.keys })
                    .to_string()
                    .into_bytes(),
                ),
                Err(e) => HttpAnswer::json(
                    me,
                    422,
                    msg::error_json("bad_config", &format!("not reloaded, the old config stays: {e}")),
                ),
            };
            shared.post_from_thread(me.reactor as usize, Mail::Http(mail));
        });
        if spawned.is_err() {
            self.set_awaiting(key, None);
            return Outcome::Answer(Answer::error(503, "overloaded", "cannot start a reload now"));
        }
        Outcome::Done
    }

    /// `POST /v1/admin/backup`: a consistent copy of the database, taken
    /// from one read transaction on a thread of its own while the server
    /// keeps serving. Body (optional): `{"name": "file.redb"}`, a plain file
    /// name; the copy always lands in `<data>/backups/`, created new (0600),
    /// never replacing a file.
    fn admin_backup(&mut self, key: u32, req: &Request, p: Pending) -> Outcome {
        if req.method != Method::Post {
            let mut a = Answer::error(405, "method_not_allowed", "use POST");
            a.extra.push(("Allow", "POST".to_string()));
            return Outcome::Answer(a);
        }
        if let Err(a) = self.admin(req, "backups need") {
            return Outcome::Answer(a);
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            name: Option<String>,
        }
        let body: Body = if req.body.iter().all(u8::is_ascii_whitespace) {
            Body { name: None }
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => {
                    let m = format!(
                        "bad JSON: {e} (the body is {{\"name\": \"file.redb\"}}, a file name in <data>/backups/)"
                    );
                    return Outcome::Answer(Answer::error(400, "bad_request", &m));
                }
            }
        };
        let name = match body.name {
            Some(n) => match check_backup_name(&n) {
                Ok(()) => n,
                Err(m) => return Outcome::Answer(Answer::error(400, "bad_request", m)),
            },
            None => {
                let ms =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
                format!("roomcast-{ms}.redb")
            }
        };
        let Some(store) = self.shared.store.clone() else {
            return Outcome::Answer(Answer::error(500, "internal", "no storage"));
        };
        let dir = self.live.config.data.join("backups");
        let out = dir.join(&name);
        self.set_awaiting(key, Some(p));
        let shared = self.shared.clone();
        let me = self.conn_ref(key);
        let spawned = std::thread::Builder::new().name("backup".into()).spawn(move || {
            let result = std::fs::create_dir_all(&dir).map_err(crate::store::StoreError::from);
            let mail = match result.and_then(|()| store.backup_to(&out)) {
                Ok(n) => {
                    let body = serde_json::json!({ "path": out.display().to_string(), "messages": n });
                    HttpAnswer::json(me, 200, body.to_string().into_bytes())
                }
                Err(crate::store::StoreError::Exists(_)) => HttpAnswer::json(
                    me,
                    409,
                    msg::error_json("bad_request", &format!("backup {name} exists already; pick another name")),
                ),
                Err(e) => HttpAnswer::json(me, 500, msg::error_json("internal", &format!("backup failed: {e}"))),
            };
            shared.post_from_thread(me.reactor as usize, Mail::Http(mail));
        });
        if spawned.is_err() {
            self.set_awaiting(key, None);
            return Outcome::Answer(Answer::error(503, "overloaded", "cannot start a backup now"));
        }
        Outcome::Done
    }

    /// `/v1/auth/*`: handed to the auth workers (hashing, storage and
    /// providers never run here); the answer comes back as mail.
    fn auth_route(&mut self, key: u32, req: &Request, p: Pending) -> Outcome {
        let Some(pool) = &self.shared.auth_pool else {
            return Outcome::Answer(Answer::error(404, "not_found", "accounts need storage"));
        };
        let me = self.conn_ref(key);
        let (ip, tls) = self.conns.get(key as usize).map_or((None, false), |c| (c.ip, c.transport.is_tls()));
        let job = crate::auth::service::AuthRequest { req: req.clone(), ip, tls };
        let shared = self.shared.clone();
        let queued = pool.submit(move |writer| {
            let reply = match &shared.store {
                Some(store) => {
                    let ctx = crate::auth::service::Ctx { auth: &shared.auth, config: &shared.config, store, writer };
                    crate::auth::service::handle(&ctx, &job)
                }
                None => crate::auth::service::AuthReply::error(404, "not_found", "accounts need storage"),
            };
            let mut headers = reply.headers;
            // Tokens and ceremony state must never sit in a cache.
            headers.push(("Cache-Control", "no-store".to_string()));
            let answer = HttpAnswer {
                conn: me,
                status: reply.status,
                body: reply.body,
                retry_after: None,
                content_type: reply.content_type,
                headers,
            };
            shared.post_from_thread(me.reactor as usize, Mail::Http(answer));
        });
        if !queued {
            let mut a = Answer::error(503, "overloaded", "too many sign-ins at once; try again shortly");
            a.extra.push(("Retry-After", "1".to_string()));
            a.extra.push(("Cache-Control", "no-store".to_string()));
            return Outcome::Answer(a);
        }
        self.set_awaiting(key, Some(p));
        Outcome::Done
    }

    /// The user an HTTP request acts as, and its room rules: the token's
    /// subject and claims, or in anonymous mode the `user` query parameter
    /// (else `anonymous`) and the default rules.
    fn http_user(&self, req: &Request) -> Result<(UserId, Arc<Rules>), Answer> {
        match self.credentials(req)? {
            Some(c) => Ok((UserId::from(c.sub.as_str()), self.rules_of(&c)?)),
            None if self.live.config.anonymous => {
                let u = req.query_param("user").unwrap_or_else(|| "anonymous".to_string());
                crate::auth::check_user_id(&u).map_err(|m| Answer::error(400, "bad_request", m))?;
                Ok((UserId::from(u.as_str()), self.default_rules.clone()))
            }
            None => {
                Err(Answer::error(401, "unauthorized", "a token is required (Authorization: Bearer, or access_token)"))
            }
        }
    }

    /// The room rules of verified `claims`, or the 401 for claims that are
    /// not rules.
    fn rules_of(&self, claims: &crate::auth::Claims) -> Result<Arc<Rules>, Answer> {
        Rules::for_claims(claims, &self.default_rules)
            .map_err(|e| Answer::error(401, "unauthorized", &format!("invalid token: {e}")))
    }

    /// The verified claims of the token a request carries, `None` when it
    /// carries none, or the 401 to answer. The token comes from
    /// `Authorization: Bearer <jwt>` (the scheme in any case), else the
    /// `access_token` query parameter. An `Authorization` header that is
    /// not a bearer token is refused, not ignored: in anonymous mode that
    /// would silently turn a broken client into an anonymous one.
    fn credentials(&self, req: &Request) -> Result<Option<crate::auth::Claims>, Answer> {
        self.credentials_with(req, None)
    }

    /// The token of a request: its `Authorization: Bearer` header, else its
    /// `access_token` query parameter, else (upgrades only) the `bearer.`
    /// subprotocol entry. A bearer entry beside either of the others is
    /// refused as ambiguous rather than one of them silently winning: two
    /// credentials may name two users.
    fn credentials_with(&self, req: &Request, bearer: Option<&str>) -> Result<Option<crate::auth::Claims>, Answer> {
        if let Some(t) = bearer {
            if req.header("authorization").is_some() || req.query_param("access_token").is_some() {
                return Err(Answer::error(
                    400,
                    "bad_request",
                    "a token in the bearer subprotocol and another in Authorization or access_token: give one",
                ));
            }
            return match self.shared.auth.verify(t) {
                Ok(c) => Ok(Some(c)),
                Err(e) => Err(Answer::error(401, "unauthorized", &e.to_string())),
            };
        }
        let token = match req.header("authorization") {
            Some(h) => match bearer_token(h) {
                Some(t) => t.to_string(),
                None => {
                    return Err(Answer::error(401, "unauthorized", "the Authorization header must be `Bearer <token>`"))
                }
            },
            None => match req.query_param("access_token").filter(|t| !t.is_empty()) {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        match self.shared.auth.verify(&token) {
            Ok(c) => Ok(Some(c)),
            Err(e) => Err(Answer::error(401, "unauthorized", &e.to_string())),
        }
    }

    /// [`Self::upgrade_or_refuse`], with a log line for each refusal (its
    /// status and reason; the path without its query, which may hold a
    /// token): at info up to `REFUSALS_PER_SECOND` a second per reactor,
    /// past that at debug (a flood of bad tokens does not crowd the other
    /// lines out of the log queue unless debug lines were asked for).
    fn upgrade(&mut self, key: u32, req: &Request, kind: WsKind) -> Outcome {
        use crate::log::Level;
        let outcome = self.upgrade_or_refuse(key, req, kind);
        let Outcome::Answer(a) = &outcome else { return outcome };
        if !crate::log::enabled(Level::Info) {
            return outcome;
        }
        let level = if self.refusal_may_log() { Level::Info } else { Level::Debug };
        if !crate::log::enabled(level) {
            return outcome;
        }
        let held = if level == Level::Info { std::mem::take(&mut self.refusals_logged.2) } else { 0 };
        let ip = self.conns.get(key as usize).and_then(|c| c.ip).map(|ip| ip.to_string()).unwrap_or_default();
        let err: Option<msg::ErrorBody> = serde_json::from_slice(&a.body).ok();
        let (code, why) = err.map(|e| (e.error.code, e.error.message)).unwrap_or_default();
        let mut line = format!("upgrade refused: {} {why} ({ip} {})", a.status, req.path);
        if held > 0 {
            line.push_str(&format!(" ({held} more refusals held back)"));
        }
        crate::log::event(
            level,
            "upgrade_refused",
            &line,
            &[
                ("status", a.status.into()),
                ("code", (&code).into()),
                ("reason", (&why).into()),
                ("path", crate::log::path_only(&req.path).into()),
                ("ip", (&ip).into()),
                ("held", held.into()),
            ],
        );
        outcome
    }

    /// At most `REFUSALS_PER_SECOND` refusal lines a second per reactor;
    /// the rest are counted and the next line says how many were held.
    fn refusal_may_log(&mut self) -> bool {
        let (since, n, held) = &mut self.refusals_logged;
        if self.now.saturating_duration_since(*since) >= std::time::Duration::from_secs(1) {
            *since = self.now;
            *n = 0;
        }
        if *n >= REFUSALS_PER_SECOND {
            *held += 1;
            return false;
        }
        *n += 1;
        true
    }

    fn upgrade_or_refuse(&mut self, key: u32, req: &Request, kind: WsKind) -> Outcome {
        if req.method != Method::Get {
            let mut a = Answer::error(405, "method_not_allowed", "WebSocket upgrades use GET");
            a.extra.push(("Allow", "GET".to_string()));
            return Outcome::Answer(a);
        }
        let up = match http::websocket_upgrade(req) {
            Ok(Some(up)) => up,
            Ok(None) => {
                let mut a = Answer::error(426, "bad_request", "this endpoint speaks WebSocket only");
                a.extra.push(("Upgrade", "websocket".to_string()));
                return Outcome::Answer(a);
            }
            Err(UpgradeError::Version) => {
                let mut a = Answer::error(426, "bad_request", "unsupported WebSocket version");
                a.extra.push(("Sec-WebSocket-Version", "13".to_string()));
                return Outcome::Answer(a);
            }
            Err(e @ UpgradeError::Bad(_)) => return Outcome::Answer(Answer::error(400, "bad_request", &e.to_string())),
        };
        if self.draining() {
            return Outcome::Answer(Answer::error(503, "overloaded", "draining"));
        }
        // The bearer entry is never echoed: only `roomcast.v1` is. It
        // comes with `roomcast.v1` or not at all (a browser that offered
        // subprotocols fails a handshake that picks none of them).
        let protocol = if up.protocols.iter().any(|p| p == SUBPROTOCOL) {
            Some(SUBPROTOCOL)
        } else if kind == WsKind::Echo {
            None
        } else if up.bearer.is_some() {
            return Outcome::Answer(Answer::error(
                400,
                "bad_request",
                "the bearer subprotocol needs roomcast.v1 offered beside it",
            ));
        } else if up.protocols.is_empty() {
            None
        } else {
            return Outcome::Answer(Answer::error(
                400,
                "bad_request",
                "the only subprotocol spoken here is roomcast.v1",
            ));
        };
        let (user, exp, rules) =
            if kind == WsKind::Echo {
                (UserId::from("echo"), None, Arc::new(Rules::default_from(Patterns::none())))
            } else {
                match self.credentials_with(req, up.bearer.as_deref()) {
                    Err(a) => return Outcome::Answer(a),
                    Ok(Some(c)) => match self.rules_of(&c) {
                        Ok(rules) => (UserId::from(c.sub.as_str()), Some(c.exp), rules),
                        Err(a) => return Outcome::Answer(a),
                    },
                    Ok(None) if self.live.config.anonymous => {
                        let u = req.query_param("user").unwrap_or_else(anonymous_name);
                        if let Err(m) = crate::auth::check_user_id(&u) {
                            return Outcome::Answer(Answer::error(400, "bad_request", m));
                        }
                        (UserId::from(u.as_str()), None, self.default_rules.clone())
                    }
                    Ok(None) => return Outcome::Answer(Answer::error(
                        401,
                        "unauthorized",
                        "a token is required (Authorization: Bearer, the bearer.<token> subprotocol, or access_token)",
                    )),
                }
            };
        let cfg = &self.live.config;
        let deflate = if cfg.permessage_deflate {
            let offers = req.headers.iter().filter(|(n, _)| n == "sec-websocket-extensions").map(|(_, v)| v.as_slice());
            deflate::negotiate(offers)
        } else {
            None
        };
        let mut out = Vec::with_capacity(256);
        let extensions = deflate.map(|a| a.response());
        http::write_upgrade_response(&mut out, &accept_key(&up.key), protocol, extensions.as_deref());
        self.send(key, Bytes::from(out));
        let cfg = &self.live.config;
        let mut decoder = Decoder::new(cfg.max_message_bytes);
        if let Some(a) = deflate {
            decoder = decoder.with_deflate(a.client_no_context_takeover);
        }
        let ws = WsState {
            kind,
            decoder,
            user,
            exp,
            rules,
            rooms: Vec::new(),
            joins: 0,
            bucket: TokenBucket::new(cfg.send_burst, self.now),
            requests: TokenBucket::new(cfg.request_burst, self.now),
            inflight: 0,
            heavy: 0,
            last_rx: self.now,
            ping_sent: false,
        };
        let mut first = later(self.now, cfg.ping_interval.min(cfg.idle_timeout));
        if let Some(exp) = exp {
            // The token's expiry has a deadline of its own (close 4001).
            let left = super::token_left(exp, super::leeway_secs(&self.shared));
            first = first.min(later(self.now, left));
        }
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.state = State::Ws(Box::new(ws));
            conn.deflate_max = deflate.map_or(0, |a| a.max_deflated_len());
        }
        self.schedule(key, first);
        Outcome::Done
    }
}

/// A built-in page with its CSP and the headers that keep it from being
/// framed, sniffed or cached stale.
fn html_page(page: &'static str, csp: &'static str) -> Outcome {
    Outcome::Answer(Answer {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: page.as_bytes().to_vec(),
        extra: vec![
            ("Cache-Control", "no-cache".to_string()),
            ("Content-Security-Policy", csp.to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("X-Frame-Options", "DENY".to_string()),
            ("Referrer-Policy", "no-referrer".to_string()),
        ],
    })
}

/// A backup's file name: one plain path component, so the copy cannot land
/// outside `<data>/backups/`.
fn check_backup_name(n: &str) -> Result<(), &'static str> {
    let plain = !n.is_empty()
        && n.len() <= 128
        && n != "."
        && n != ".."
        && !n.starts_with('.')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err("`name` is a file name of 1 to 128 bytes of [A-Za-z0-9_.-], not starting with a dot")
    }
}

fn anonymous_name() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    let mut s = String::from("anon-");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn backup_names_are_plain() {
        use super::check_backup_name as c;
        assert!(c("b1.redb").is_ok());
        assert!(c("roomcast-17.redb").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "x\u{0}", "é", &"a".repeat(129)] {
            assert!(c(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_token_is_read_as_bytes() {
        assert_eq!(bearer_token(b"Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token(b"  bEaReR   abc  "), Some("abc"));
        assert_eq!(bearer_token(b"bearer\xC3\xA9"), None);
        assert_eq!(bearer_token("bearer\u{e9}x".as_bytes()), None);
        assert_eq!(bearer_token("bearer \u{e9}".as_bytes()), None);
        assert_eq!(bearer_token("b\u{e9}arer x".as_bytes()), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(&[0xff; 64]), None);
        assert_eq!(bearer_token(b""), None);
    }
}
