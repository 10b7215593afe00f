//! roomcast protocol v1 built the way most Rust teams would build it: axum 0.8
//! and its WebSocket support (tokio-tungstenite) on a multi-threaded tokio
//! runtime, rooms in a `Mutex<HashMap>`, an mpsc channel per connection, and
//! with `--durable` one redb commit per message before the ack.
//!
//! It exists to be measured beside roomcast by the same load generator, so it
//! speaks the same endpoints (`/v1/ws`, `/healthz`), the same JSON and the same
//! authentication; see ../README.md for what it leaves out.

mod rooms;
mod store;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use rooms::{now_ms, Member, Rooms, UserId, OUTBOUND_CAP};
use store::Store;
use wire::{Reply, Request};

const SUBPROTOCOL: &str = "roomcast.v1";
const MAX_MESSAGE_BYTES: usize = 65536;

#[derive(Parser, Debug)]
#[command(about = "roomcast protocol v1 on axum + tokio (a baseline to compare against)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tokio worker threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Accept connections without a token; the user id is the `user` query parameter.
    #[arg(long)]
    anonymous: bool,
    /// Commit every message to redb (one durable write transaction each) before the ack.
    #[arg(long)]
    durable: bool,
    /// Directory for the redb file with --durable.
    #[arg(long, default_value = "data-axum")]
    data: PathBuf,
    /// HS256 secret for access tokens.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

struct AppState {
    rooms: Rooms,
    store: Option<Store>,
    key: Option<DecodingKey>,
    validation: Validation,
    anonymous: bool,
    next_conn: AtomicU64,
}

type Shared = Arc<AppState>;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline-axum: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baseline-axum: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (store, map) = if args.durable {
        let (s, m) = Store::open(&args.data)?;
        (Some(s), m)
    } else {
        (None, HashMap::new())
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 2;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let key = args
        .jwt_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| DecodingKey::from_secret(s.as_bytes()))
        .transpose()?;
    if key.is_none() && !args.anonymous {
        return Err("set ROOMCAST_JWT_SECRET (or pass --anonymous)".into());
    }
    let state = Arc::new(AppState {
        rooms: Rooms::new(map),
        store,
        key,
        validation,
        anonymous: args.anonymous,
        next_conn: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v1/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { http_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "baseline-axum listening on http://{} ({} mode)",
        listener.local_addr()?,
        if args.durable { "durable" } else { "memory" }
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn http_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    State(st): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !offered.is_empty() && !offered.contains(&SUBPROTOCOL) {
        return http_error(StatusCode::BAD_REQUEST, "bad_request", "the only subprotocol spoken here is roomcast.v1");
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = bearer.or(query.get("access_token").map(String::as_str));
    let user: UserId = match token {
        Some(t) => {
            let verified = st
                .key
                .as_ref()
                .ok_or_else(|| "no secret configured".to_string())
                .and_then(|k| jsonwebtoken::decode::<Claims>(t, k, &st.validation).map_err(|e| e.to_string()));
            match verified {
                Ok(data) if !data.claims.sub.is_empty() => Arc::from(data.claims.sub.as_str()),
                Ok(_) => return http_error(StatusCode::UNAUTHORIZED, "unauthorized", "empty sub claim"),
                Err(e) => return http_error(StatusCode::UNAUTHORIZED, "unauthorized", &e),
            }
        }
        None if st.anonymous => match query.get("user") {
            Some(u) if !u.is_empty() && u.len() <= 128 && !u.chars().any(char::is_control) => Arc::from(u.as_str()),
            Some(_) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "user ids are 1 to 128 bytes without control characters",
                )
            }
            None => Arc::from(format!("anon-{}", st.next_conn.fetch_add(1, Ordering::Relaxed))),
        },
        None => {
            return http_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a token is required (Authorization: Bearer, or access_token)",
            )
        }
    };
    ws.protocols([SUBPROTOCOL])
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(socket, st, user))
}

/// What one connection task knows about itself.
struct Conn {
    id: u64,
    member: Member,
    rooms: HashSet<String>,
}

async fn connection(mut socket: WebSocket, st: Shared, user: UserId) {
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOUND_CAP);
    let kick = Arc::new(Notify::new());
    let mut conn = Conn {
        id: st.next_conn.fetch_add(1, Ordering::Relaxed),
        member: Member { user, tx, kick: kick.clone() },
        rooms: HashSet::new(),
    };
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let replies = match incoming {
                    Some(Ok(Message::Text(text))) => handle(&st, &mut conn, text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => one(wire::error(
                        None,
                        "bad_request",
                        "binary frames are not spoken here",
                    )),
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Vec::new(),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                let mut failed = false;
                for r in replies {
                    if socket.send(r).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
            }
            Some(out) = rx.recv() => {
                if socket.send(out).await.is_err() {
                    break;
                }
            }
            _ = kick.notified() => {
                let close = CloseFrame { code: 4000, reason: Utf8Bytes::from("slow consumer") };
                let _ = socket.send(Message::Close(Some(close))).await;
                break;
            }
        }
    }
    let mut rooms = st.rooms.lock();
    for name in conn.rooms.drain() {
        if let Some(r) = rooms.get_mut(&name) {
            r.leave(&name, conn.id);
        }
    }
}

/// Answers one client message. Replies to the asker come back as JSON text;
/// deliveries to members (the asker included) go through their channels.
async fn handle(st: &Shared, conn: &mut Conn, text: &str) -> Vec<Message> {
    let (r, req) = match wire::parse(text) {
        Ok(ok) => ok,
        Err((r, message)) => return one(wire::error(r.as_ref(), "bad_request", &message)),
    };
    let r = r.as_ref();
    if let Some(room) = req.room() {
        if !wire::valid_room(room) {
            return one(wire::error(r, "bad_request", "room names are 1 to 128 bytes of [A-Za-z0-9_.:-]"));
        }
    }
    match req {
        Request::Ping => one(Reply::Pong { r }.to_json()),
        Request::Join { room, since } => {
            let mut rooms = st.rooms.lock();
            let entry = rooms.entry(room.clone()).or_default();
            if conn.rooms.insert(room.clone()) {
                entry.join(&room, conn.id, conn.member.clone(), now_ms());
            }
            let (recovered, replay) = match since {
                Some(s) => {
                    let (ok, frames) = entry.replay(s);
                    (Some(ok), frames)
                }
                None => (None, Vec::new()),
            };
            let joined = Reply::Joined { r, room: &room, seq: entry.last_seq(), recovered };
            let mut out = one(joined.to_json());
            out.extend(replay.into_iter().map(Message::Text));
            out
        }
        Request::Leave { room } => {
            if !conn.rooms.remove(&room) {
                return one(wire::error(r, "not_joined", "not a member of this room"));
            }
            if let Some(entry) = st.rooms.lock().get_mut(&room) {
                entry.leave(&room, conn.id);
            }
            one(Reply::Left { r, room: &room }.to_json())
        }
        Request::Send { room, body, id } => {
            if id.as_ref().is_some_and(|i| i.len() > wire::MAX_ID_BYTES) {
                return one(wire::error(r, "bad_request", "id is at most 64 bytes"));
            }
            let user = conn.member.user.clone();
            let published = if st.store.is_some() {
                let st = st.clone();
                let (room, id) = (room.clone(), id.clone());
                tokio::task::spawn_blocking(move || publish_durable(&st, room, user, body, id))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            } else {
                Ok(publish(st, room.clone(), user, body, id.clone()))
            };
            match published {
                Ok((seq, ts)) => one(Reply::Ack { r, room: &room, seq, ts, id: id.as_deref() }.to_json()),
                Err(e) => one(wire::error(r, "internal", &e)),
            }
        }
        Request::History { room, before, after, limit } => {
            let limit = limit.unwrap_or(wire::DEFAULT_HISTORY_LIMIT).clamp(1, wire::MAX_HISTORY_LIMIT) as u64;
            let rooms = st.rooms.lock();
            let (messages, more) = match rooms.get(&room) {
                Some(entry) => entry.history(before, after, limit),
                None => (Vec::new(), false),
            };
            one(Reply::History { r, room: &room, messages, more }.to_json())
        }
        Request::Presence { room } => {
            let rooms = st.rooms.lock();
            let members = rooms.get(&room).map(|e| e.presence()).unwrap_or_default();
            one(Reply::Presence { r, room: &room, members }.to_json())
        }
    }
}

fn one(json: String) -> Vec<Message> {
    vec![Message::Text(Utf8Bytes::from(json))]
}

/// In-memory publish: seq, encode once, deliver, all under the lock.
fn publish(st: &AppState, room: String, user: UserId, body: Value, id: Option<String>) -> (u64, u64) {
    let now = now_ms();
    let mut rooms = st.rooms.lock();
    let entry = rooms.entry(room.clone()).or_default();
    if let Some(id) = &id {
        if let Some(orig) = entry.find_dup(&user, id, now) {
            return orig;
        }
    }
    let (seq, ts) = entry.next(now);
    let item = wire::MsgItem { room, seq, ts, from: user.to_string(), body, id };
    entry.append(item, &user);
    (seq, ts)
}

/// Durable publish, on a blocking thread: the message is committed to redb
/// before anyone hears of it. The store's writer lock spans seq assignment,
/// commit and delivery (ordering hazard: releasing it before delivery would let
/// a later seq reach members first); the rooms lock is not held during the
/// commit, so joins and other rooms' reads go on meanwhile.
fn publish_durable(
    st: &AppState,
    room: String,
    user: UserId,
    body: Value,
    id: Option<String>,
) -> Result<(u64, u64), String> {
    let Some(store) = st.store.as_ref() else {
        return Err("no store".to_string());
    };
    let _writer = store.writer();
    let now = now_ms();
    let (seq, ts) = {
        let mut rooms = st.rooms.lock();
        let entry = rooms.entry(room.clone()).or_default();
        if let Some(id) = &id {
            if let Some(orig) = entry.find_dup(&user, id, now) {
                return Ok(orig);
            }
        }
        entry.next(now)
    };
    let item = wire::MsgItem { room, seq, ts, from: user.to_string(), body, id };
    let json = serde_json::to_string(&item).map_err(|e| e.to_string())?;
    store.commit(&item, &json).map_err(|e| e.to_string())?;
    let mut rooms = st.rooms.lock();
    let entry = rooms.entry(item.room.clone()).or_default();
    entry.append(item, &user);
    Ok((seq, ts))
}
