//! The command line and the settings of `roomcast`.
//!
//! This module owns the `roomcast` command line (`serve`, `token`,
//! `dev-cert`), the [`Config`] that `serve` runs with, and the way a setting
//! is found. Every serve setting can come from four places; the first one that
//! has it wins:
//!
//! 1. a command-line flag (`--max-message-bytes 65536`),
//! 2. an environment variable (`ROOMCAST_MAX_MESSAGE_BYTES=65536`),
//! 3. a key in the TOML file named by `--config` or `ROOMCAST_CONFIG`
//!    (`max-message-bytes = 65536`, or `max_message_bytes`),
//! 4. the embedded default ([`Config::default`]).
//!
//! Each setting is declared once, in the `settings!` list below: its name,
//! type, value syntax, default, limit, `--help` line and docs line. The
//! [`Config`] fields, the flags, the environment variables, the TOML keys,
//! the per-setting checks and the settings table of docs/CONFIG.md all come
//! from that list (see `declare`).
//!
//! The layers are parsed into the same all-optional `Settings` shape and
//! applied to the defaults from the lowest layer to the highest, so a layer
//! only overrides what it names. The process environment is never read here
//! directly: callers pass a lookup function, which keeps tests free of global
//! state. The JWT secret is not a setting of any layer: it only ever comes
//! from `ROOMCAST_JWT_SECRET` (at least 32 bytes, else a config error) or
//! the data directory (see `crate::auth`).
//!
//! The `[cluster]` table of the file (see `cluster`) is the one table among
//! the settings. Its `node-id`, `down-after` and `listen` are the file's
//! values of the `cluster-node-id`, `cluster-down-after` and
//! `cluster-listen` settings, so flags and environment override them as any
//! other; its `nodes` and `secret` are the file's alone, except that
//! `ROOMCAST_CLUSTER_SECRET` overrides the secret (never a flag, like the
//! JWT secret). `serve` merges them into [`Config::cluster`].
//!
//! This module does not open sockets or files other than the TOML file.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

pub mod cluster;
mod declare;
pub mod oauth;
mod values;

use declare::Limit;
pub use values::{parse_bool, parse_duration, parse_size};
use values::{show_duration, show_size};

/// Prefix of every environment variable the command line reads.
pub const ENV_PREFIX: &str = "ROOMCAST_";
/// The environment variable holding the HS256 secret.
pub const ENV_JWT_SECRET: &str = "ROOMCAST_JWT_SECRET";
/// The environment variable holding the cluster's shared secret.
pub const ENV_CLUSTER_SECRET: &str = "ROOMCAST_CLUSTER_SECRET";
/// The environment variable naming the TOML settings file.
pub const ENV_CONFIG: &str = "ROOMCAST_CONFIG";
/// The log level, under `ROOMCAST_LOG_LEVEL` and `--log-level`.
pub const ENV_LOG: &str = "ROOMCAST_LOG";
/// Largest settings file read; a real one is a few hundred bytes.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// A problem with the settings. Printed as `roomcast: config: <this>`; the
/// process then exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that cannot be used. `key` names where it came
    /// from: a flag or TOML key (`max-message-bytes`) or an environment
    /// variable (`ROOMCAST_MAX_MESSAGE_BYTES`).
    #[error("{key}: {problem}")]
    Setting { key: String, problem: String },
    /// The settings file cannot be read or is not TOML.
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
}

impl ConfigError {
    fn setting(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Setting { key: key.into(), problem: problem.into() }
    }
}

/// Why the command line did not produce an [`Invocation`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Usage error, `--help` or `--version`: clap has the text and the exit
    /// status (0 for help and version, 2 for errors); call `.exit()` on it.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The settings parsed but cannot be used: print one line and exit 2.
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// When a stored message counts as stored. `Immediate`: a message is
/// acknowledged only after the storage has synced it to disk. `None`: once
/// written; the operating system syncs when it likes.
// The variants carry no doc comments on purpose: clap would turn them into a
// multi-line list under `--durability` in `serve --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Immediate,
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Immediate => "immediate",
            Durability::None => "none",
        })
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        <Durability as ValueEnum>::from_str(s.trim(), true).map_err(|_| format!("{s:?} is not one of immediate, none"))
    }
}

/// The HS256 secret from `ROOMCAST_JWT_SECRET`. Its `Debug` output hides the
/// value so that a logged [`Config`] never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(String);

impl JwtSecret {
    pub fn new(secret: String) -> Self {
        JwtSecret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(..)")
    }
}

/// The number of threads `serve` uses when `--threads` is not given.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

// Every serve setting, once: its field of `Config` and of the layers, its
// type, value syntax and default; its flag's value name and `--help` line
// (with the default as `--help` shows it); its limit; and its meaning in the
// table of docs/CONFIG.md, to which the limit is added. The flag, the TOML
// keys and the environment variable are spelled from the field name. See
// `declare` for what is generated, and the tests for what keeps the docs and
// the `--help` defaults true to this list.
declare::settings! {
    listen: SocketAddr [plain] = SocketAddr::from(([127, 0, 0, 1], 8080));
        flag "ADDR", "Address for HTTP and WebSocket", default "127.0.0.1:8080";
        docs "address for HTTP and WebSocket";

    data: PathBuf [plain] = PathBuf::from("./data");
        flag "DIR", "Directory for stored messages and the generated JWT secret", default "./data";
        limit Limit::NotEmpty;
        docs "directory for stored messages and the generated JWT secret";

    threads: usize [plain] = default_threads();
        flag "N", "Event-loop threads", default "number of CPUs";
        limit Limit::Between(1, bounds::THREADS);
        docs "event-loop threads";

    anonymous: bool [switch] = false;
        flag "BOOL", "Accept connections without a token, taking the user id from `?user=`";
        docs "accept connections without a token; the user id comes from the `user` query parameter, or is generated";

    durability: Durability [plain] = Durability::Immediate;
        flag "MODE", "When a message counts as stored: after fsync, or once written", default "immediate";
        docs "`immediate`: a message is acknowledged only once synced to disk; `none`: once written, the operating \
              system syncs later";

    log_format: crate::log::Format [plain] = crate::log::Format::Text;
        flag "FORMAT", "Log lines as text, json or logfmt", default "text";
        docs "`text`: the human lines of a terminal; `json` or `logfmt`: one structured line per event on stderr \
              (`ts`, `level`, `event`, `msg` and the event's fields), see [Logs](#logs)";

    log_level: crate::log::Level [plain] = crate::log::Level::Info;
        flag "LEVEL", "Least severe events logged: off, error, warn, info or debug", default "info";
        docs "least severe events logged: `off`, `error`, `warn`, `info` or `debug` (every refused upgrade and \
              request); also read from `ROOMCAST_LOG` below `ROOMCAST_LOG_LEVEL`; changed by a reload";

    api_keys: String [plain optional] = None;
        flag "HASHES", "SHA-256 hashes of the server API's keys, comma-separated: sha256:<64 hex>,...";
        docs "comma-separated `sha256:<64 hex digits>` entries: the SHA-256 of each key the server API \
              (`/v1/api/`) accepts as `Authorization: apikey <key>`; the keys themselves are never stored \
              (`printf %s \"$KEY\" | sha256sum` makes an entry); changed by a reload";

    metrics_histograms: bool [switch] = true;
        flag "BOOL", "Keep the latency and queue histograms of /metrics", default "true";
        docs "keep the histograms of `/metrics` (publish to commit, commit to first write, outbound queue bytes); \
              they cost well under 1 % of a fan-out's CPU (see BENCHMARKS.md), `false` saves even that";

    tls_listen: SocketAddr [plain optional] = None;
        flag "ADDR", "Address for HTTPS and WebSocket over TLS (needs --tls-cert and --tls-key)";
        docs "address for HTTPS and WebSocket over TLS; needs `--tls-cert` and `--tls-key`, and must differ from \
              `--listen`";

    tls_cert: PathBuf [plain optional] = None;
        flag "PEM", "PEM file with the TLS certificate chain, leaf first";
        docs "PEM certificate chain, leaf first; only with `--tls-listen`";

    tls_key: PathBuf [plain optional] = None;
        flag "PEM", "PEM file with the TLS private key";
        docs "PEM private key; only with `--tls-listen`";

    tls_handshake_timeout: Duration [duration] = Duration::from_secs(5);
        flag "DURATION", "Time allowed for a TLS handshake, from accept", default "5s";
        limit Limit::Positive(bounds::REQUEST_TIMEOUT);
        docs "time from accept to a finished TLS handshake; a connection still handshaking then is closed (the \
              HTTP head then has `request-timeout`, counted from accept too)";

    tls_session_cache: usize [plain] = 16384;
        flag "N", "TLS sessions kept in memory for resumption by session id; 0 keeps none", default "16384";
        limit Limit::AtMost(bounds::TLS_SESSION_CACHE);
        docs "TLS 1.2 sessions (and TLS 1.3 tickets' fallback) kept in memory for resumption by session id, \
              least recently used dropped first; `0` keeps none. Resumption by stateless ticket needs no entry here \
              (see `tls-tickets`)";

    tls_tickets: bool [switch] = true;
        flag "BOOL", "Resume TLS sessions with stateless tickets (keys rotated every 6 hours)", default "true";
        docs "resume TLS sessions with stateless tickets: the session is sealed with a key only this process \
              knows (AES-256-GCM, a new key every 6 hours, the previous one still accepted), so resumption costs \
              no memory per client; `false` resumes by session id from `tls-session-cache` only";

    max_message_bytes: usize [size] = 64 * 1024;
        flag "SIZE", "Largest inbound message or HTTP body, e.g. 65536 or 64KiB", default "64KiB";
        limit Limit::Between(1, bounds::MAX_MESSAGE_BYTES);
        docs "largest inbound WebSocket message (a larger one closes the connection with 1009) and largest HTTP \
              request body (a larger one is answered `413`); at most `max-queue-bytes`";

    permessage_deflate: bool [switch] = true;
        flag "BOOL", "Negotiate permessage-deflate (RFC 7692) with clients that offer it", default "true";
        docs "negotiate permessage-deflate (RFC 7692) with clients that offer it, always with \
              `server_no_context_takeover`: a message is compressed once (per reactor) and the same bytes go to \
              every member that negotiated it; compressed input is inflated up to `max-message-bytes` (past it, \
              1009). Costs about 43 KiB per connection that sends compressed messages (its inflater)";

    deflate_min_bytes: usize [size] = 128;
        flag "SIZE", "Messages shorter than this go uncompressed even where permessage-deflate was negotiated", default "128";
        limit Limit::AtMost(bounds::MAX_MESSAGE_BYTES);
        docs "outbound messages shorter than this go uncompressed (RSV1 clear) even to connections that \
              negotiated permessage-deflate: the same choice for every member, made once per message";

    echo: bool [switch] = false;
        flag "BOOL", "Serve the /v1/echo WebSocket endpoint, for conformance suites";
        docs "serve the `/v1/echo` WebSocket endpoint, for conformance suites";

    jwt_audience: String [plain optional] = None;
        flag "AUD", "Require this `aud` claim in tokens";
        limit Limit::NotEmpty;
        docs "when set, tokens must carry this `aud`; `roomcast token` mints it";

    jwt_issuer: String [plain optional] = None;
        flag "ISS", "Require this `iss` claim in tokens";
        limit Limit::NotEmpty;
        docs "when set, tokens must carry this `iss`; `roomcast token` mints it";

    jwt_public_key: PathBuf [plain optional] = None;
        flag "PEM", "PEM public key (RSA, EC P-256 or Ed25519) that verifies tokens without a kid; re-read on SIGHUP";
        limit Limit::NotEmpty;
        docs "PEM `PUBLIC KEY` (RSA, EC P-256 or Ed25519) that verifies tokens without a `kid`; its type fixes \
              the algorithm (RS256, ES256, EdDSA); re-read on SIGHUP, see [Keys](#keys)";

    jwks: PathBuf [plain optional] = None;
        flag "FILE", "JSON Web Key Set file whose keys verify tokens by kid; re-read on SIGHUP";
        limit Limit::NotEmpty;
        docs "JSON Web Key Set file; a token with a `kid` is verified by that key only; re-read on SIGHUP, see \
              [Keys](#keys)";

    jwt_leeway: Duration [duration] = crate::auth::DEFAULT_LEEWAY;
        flag "DURATION", "Clock skew allowed on a token's exp and nbf (whole seconds)", default "30s";
        limit Limit::AtMost(bounds::JWT_LEEWAY);
        docs "clock skew allowed on a token's `exp` and `nbf`, in whole seconds; a connection is closed with \
              4001 once its token's `exp` plus this has passed";

    default_rooms: String [plain] = "*".to_string();
        flag "PATTERNS", "Rooms a token without a `rooms` claim (or an anonymous user) may use", default "*";
        docs "comma-separated room patterns (a room name, a prefix ending in `*`, or `*` for every room) that a \
              token without a `rooms` claim, and an anonymous user, may join, page, list presence of and send \
              to; empty: none; at most 64 patterns";

    drain_timeout: Duration [duration] = Duration::from_secs(10);
        flag "DURATION", "How long shutdown waits for connections before closing them", default "10s";
        limit Limit::AtMost(bounds::DRAIN_TIMEOUT);
        docs "on SIGINT or SIGTERM, how long to wait for connections to finish before closing them";

    idle_timeout: Duration [duration] = Duration::from_secs(60);
        flag "DURATION", "Close a WebSocket after this long without any traffic", default "60s";
        limit Limit::Positive(bounds::IDLE_TIMEOUT);
        docs "close a WebSocket with no traffic at all for this long";

    ping_interval: Duration [duration] = Duration::from_secs(20);
        flag "DURATION", "Send a ping after this much silence on a WebSocket", default "20s";
        limit Limit::Positive(bounds::PING_INTERVAL);
        docs "send a ping after this much silence on a WebSocket; shorter than `idle-timeout`";

    request_timeout: Duration [duration] = Duration::from_secs(10);
        flag "DURATION", "Time allowed to send a complete HTTP request head", default "10s";
        limit Limit::Positive(bounds::REQUEST_TIMEOUT);
        docs "time from accept to a complete HTTP request head";

    send_rate: f64 [plain] = 50.0;
        flag "RATE", "Sends per second per connection (token bucket); 0 disables the limit", default "50";
        limit Limit::Rate("sends", bounds::RATE);
        docs "WebSocket sends per second per connection (token bucket refill); HTTP \
              `POST /v1/rooms/{room}/messages` are limited with the same numbers per user (token subject); `0` \
              disables the limit; past it a send gets `rate_limited` and a post `429` with `Retry-After`";

    send_burst: u32 [plain] = 100;
        flag "N", "Sends allowed in a burst above the rate", default "100";
        limit Limit::AtMost(bounds::BURST);
        docs "token bucket size: sends allowed at once; at least 1 while `send-rate` is on";

    max_queue_bytes: usize [size] = 4 * 1024 * 1024;
        flag "SIZE", "Outbound bytes queued per connection before closing it as a slow consumer", default "4MiB";
        limit Limit::AtMost(bounds::MAX_QUEUE_BYTES);
        docs "outbound bytes queued per connection (replies, history pages, pongs, HTTP responses and fan-out \
              alike); past it the connection is closed with 4000 (slow consumer); at least `max-message-bytes`";

    max_connections: usize [plain] = 100_000;
        flag "N", "Open connections per process; past it new ones are closed at once", default "100000";
        limit Limit::Between(1, bounds::MAX_CONNECTIONS);
        docs "open connections per process; past it new connections are closed at once";

    history_tail: usize [plain] = 1024;
        flag "N", "Messages kept in memory per room", default "1024";
        limit Limit::AtMost(bounds::HISTORY_TAIL);
        docs "messages kept in memory per room";

    max_replay: usize [plain] = 1000;
        flag "N", "Most messages replayed on join with `since`", default "1000";
        limit Limit::AtMost(bounds::MAX_REPLAY);
        docs "most messages replayed on `join` with `since`; with more missing, `joined` says \
              `\"recovered\": false`";

    dedup_window: Duration [duration] = Duration::from_secs(3600);
        flag "DURATION", "How long a client message id is remembered for deduplication", default "1h";
        limit Limit::AtMost(bounds::DEDUP_WINDOW);
        docs "how long a client message `id` is remembered; `0` turns deduplication off";

    retain_messages: u64 [plain optional] = None;
        flag "N", "Keep at most this many messages per room", default "all";
        limit Limit::AtLeast(1);
        docs "keep at most this many messages per room; older ones are pruned in the background (and never \
              served)";

    retain_age: Duration [duration optional] = None;
        flag "DURATION", "Keep messages at most this long", default "forever";
        limit Limit::Positive(bounds::RETAIN_AGE);
        docs "keep messages at most this long; older ones are pruned in the background (and never served)";

    max_body_depth: usize [plain] = 64;
        flag "N", "Deepest nesting of arrays and objects in a message body", default "64";
        limit Limit::Between(1, bounds::MAX_BODY_DEPTH);
        docs "deepest nesting of arrays and objects in a message body (`[]` is depth 1); a deeper body is \
              refused with `bad_request` (WebSocket) or `400` (HTTP)";

    request_rate: f64 [plain] = 100.0;
        flag "RATE",
            "Requests other than send (join, leave, history, presence, ping) per second per connection; 0 disables",
            default "100";
        limit Limit::Rate("requests", bounds::RATE);
        docs "WebSocket requests other than `send` (`join`, `leave`, `history`, `presence`, `ping`) per second \
              per connection (token bucket refill); past it the answer is `error` `rate_limited` with \
              `retry_after_ms`; `0` disables the limit";

    request_burst: u32 [plain] = 300;
        flag "N", "Such requests allowed in a burst above the rate", default "300";
        limit Limit::AtMost(bounds::BURST);
        docs "token bucket size for those requests; at least 1 while `request-rate` is on";

    max_conns_per_ip: usize [plain] = 1024;
        flag "N", "Open connections per source IP; 0 disables the limit", default "1024";
        limit Limit::AtMost(bounds::MAX_CONNS_PER_IP);
        docs "open connections per source IP; past it a new connection is answered `503` with `Retry-After` and \
              closed; `0` disables the limit";

    connect_rate_per_ip: f64 [plain] = 200.0;
        flag "RATE", "New connections per second per source IP; 0 disables the limit", default "200";
        limit Limit::Rate("connections", bounds::RATE);
        docs "new connections per second per source IP (token bucket refill); past it a new connection gets the \
              same `503`; `0` disables the limit";

    connect_burst_per_ip: u32 [plain] = 1000;
        flag "N", "New connections per source IP allowed in a burst above the rate", default "1000";
        limit Limit::AtMost(bounds::BURST);
        docs "new connections per source IP allowed at once; at least 1 while `connect-rate-per-ip` is on";

    post_rate_per_ip: f64 [plain] = 500.0;
        flag "RATE", "HTTP message posts per second per source IP; 0 disables the limit", default "500";
        limit Limit::Rate("posts", bounds::RATE);
        docs "HTTP `POST /v1/rooms/{room}/messages` per second per source IP (token bucket refill), on top of the \
              per-user `send-rate`; past it a post is answered `429` with `Retry-After` and the JSON error body, \
              code `rate_limited`; `0` disables the limit";

    post_burst_per_ip: u32 [plain] = 1000;
        flag "N", "HTTP message posts per source IP allowed in a burst above the rate", default "1000";
        limit Limit::AtMost(bounds::BURST);
        docs "posts per source IP allowed at once; at least 1 while `post-rate-per-ip` is on";

    room_idle_timeout: Duration [duration] = Duration::from_secs(60);
        flag "DURATION", "Forget a room after this long without members or traffic (reloaded on next use)",
            default "60s";
        limit Limit::Span(bounds::MIN_ROOM_IDLE_TIMEOUT, bounds::ROOM_IDLE_TIMEOUT);
        docs "a room with no members, nothing in flight and no traffic for this long is forgotten from memory and \
              reloaded from storage on next use (its sequence numbers and deduplication stay correct)";

    store_cache_bytes: usize [size] = 64 << 20;
        flag "SIZE", "Memory for the store's page cache, e.g. 64MiB", default "64MiB";
        limit Limit::Between(bounds::MIN_STORE_CACHE_BYTES, bounds::STORE_CACHE_BYTES);
        docs "memory the store's page cache may hold; history older than the in-memory tail is read through it";

    cluster_node_id: String [plain optional] = None;
        flag "ID", "This node's id among the nodes of the [cluster] table (overrides its node-id)";
        limit Limit::NotEmpty;
        docs "this node's id, one of the `nodes` of the [`[cluster]` table](#cluster); overrides `node-id` there; \
              only with that table";

    cluster_down_after: Duration [duration] = Duration::from_secs(5);
        flag "DURATION", "A peer node with no frame for this long is down", default "5s";
        limit Limit::Span(bounds::MIN_CLUSTER_DOWN_AFTER, bounds::CLUSTER_DOWN_AFTER);
        docs "a peer node with no frame from it (heartbeats included) for this long is down; overrides \
              `down-after` in [`[cluster]`](#cluster); only with that table";

    cluster_queue_bytes: usize [size] = 16 << 20;
        flag "SIZE", "Bytes queued for one peer node before it is marked lagging and resynced", default "16MiB";
        limit Limit::Between(bounds::MIN_CLUSTER_QUEUE_BYTES, bounds::CLUSTER_QUEUE_BYTES);
        docs "bytes queued for one peer node; past it the peer is marked lagging, the queue is dropped and both \
              sides resync (members get what they missed from storage); overrides `queue-bytes` in \
              [`[cluster]`](#cluster); only with that table";

    cluster_listen: String [plain optional] = None;
        flag "ADDR", "nng address to listen on for peers, when not this node's own address in [cluster] nodes";
        limit Limit::NotEmpty;
        docs "nng address (`tcp://` or `ipc://`) this node listens on for its peers when that is not its own \
              `addr` in [`[cluster]`](#cluster) (behind a proxy, say); overrides `listen` there; only with that \
              table";

    allowed_origins: String [plain optional] = None;
        flag "ORIGINS", "Web origins (scheme://host[:port], comma-separated, or *) allowed besides the server's own";
        limit Limit::NotEmpty;
        docs "web pages of these origins may open WebSockets and call `/v1/*` (CORS), besides the server's own \
              origin; `*` allows any; a request with another `Origin` gets 403, one without `Origin` (not a \
              browser) is allowed";

    oauth_state_ttl: Duration [duration] = Duration::from_secs(600);
        flag "DURATION", "How long an OAuth sign-in may take between start and callback", default "10m";
        limit Limit::Span(bounds::MIN_OAUTH_STATE_TTL, bounds::OAUTH_STATE_TTL);
        docs "how long the state of an OAuth sign-in (see [`[oauth.NAME]`](#oauth)) stays valid between \
              `/start` and the provider's callback; it is single-use either way";

    oauth_timeout: Duration [duration] = Duration::from_secs(5);
        flag "DURATION", "Time allowed for each request to an OAuth provider, connect to last byte", default "5s";
        limit Limit::Span(bounds::MIN_OAUTH_TIMEOUT, bounds::OAUTH_TIMEOUT);
        docs "time allowed for each request roomcast makes to an OAuth provider (discovery, code exchange, \
              userinfo), from connecting to the last byte of the answer; past it the sign-in fails with `504`";

    auth_workers: usize [plain] = 2;
        flag "N", "Threads that hash passwords and talk to identity providers, off the event loops", default "2";
        limit Limit::Between(1, bounds::AUTH_WORKERS);
        docs "threads for the `/v1/auth/` endpoints (password hashing, refresh tokens, identity providers), so no \
              event loop waits on them; each queues at most 32 requests, and a full queue answers 503";

    webauthn_rp_id: String [plain] = "localhost".to_string();
        flag "DOMAIN", "Relying party id of passkeys: the site's domain, which every passkey is bound to",
            default "localhost";
        limit Limit::NotEmpty;
        docs "relying party id of passkeys (`/v1/auth/passkey/`): the domain of the site, without scheme or port; \
              every registered passkey is bound to it, so changing it later orphans them";

    webauthn_origin: String [plain optional] = None;
        flag "URL", "Origin the browser shows during passkey ceremonies (default: http://localhost:PORT of --listen \
            for rp id localhost, else https://RP-ID)";
        limit Limit::NotEmpty;
        docs "origin (`scheme://host[:port]`) the browser reports in passkey ceremonies, checked on every finish; \
              its host must be `webauthn-rp-id` or under it; unset, it is `http://localhost:PORT` with the port of \
              `--listen` when the rp id is `localhost` (browsers treat that as secure), else `https://RP-ID`";

    bus_publish: String [plain optional] = None;
        flag "ADDR",
            "Publish every committed message of the rooms this node owns on an nng pub socket at ADDR (best effort)";
        limit Limit::NotEmpty;
        docs "publish every committed message of the rooms this node owns on an nng pub socket listening at this \
              address, as `room/<name>`, a zero byte, then the `msg` JSON; best effort: pub/sub drops messages \
              under load";
}

/// `--api-keys`: each entry `sha256:` and 64 hex digits.
fn parse_api_keys(s: &str) -> Result<Vec<[u8; 32]>, String> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let hex = entry
            .strip_prefix("sha256:")
            .ok_or_else(|| "each entry is sha256:<64 hex digits> (the hash of a key, never the key)".to_string())?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("each entry is sha256:<64 hex digits>".into());
        }
        let mut h = [0u8; 32];
        for (i, byte) in h.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| "each entry is sha256:<64 hex digits>".to_string())?;
        }
        out.push(h);
    }
    Ok(out)
}

impl Config {
    /// The hashes of `--api-keys` (checked by `validate`; a bad entry, which
    /// `validate` refuses, gives none).
    pub fn api_key_hashes(&self) -> Vec<[u8; 32]> {
        self.api_keys.as_deref().map(|k| parse_api_keys(k).unwrap_or_default()).unwrap_or_default()
    }

    /// Parses `roomcast serve ARGS...` (without the program name and `serve`)
    /// against the environment lookup `env`, then validates. This is the same
    /// path `main` takes, minus the process environment.
    pub fn from_args_and_env(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, CliError> {
        let argv = ["roomcast", "serve"].iter().chain(args.iter()).copied();
        match parse_command_line(argv, env)? {
            Invocation::Serve(config) => Ok(config),
            // Unreachable: the argument list starts with `serve`.
            _ => Err(CliError::Config(ConfigError::setting("serve", "not a serve command line"))),
        }
    }

    /// Checks what each setting's type cannot: ranges and combinations.
    ///
    /// Every duration, size and count has an upper bound (see [`bounds`]):
    /// the server adds durations to clock readings, multiplies rates into
    /// token buckets and sizes buffers from these values, and a bound keeps
    /// all of that far from overflow and from absurd allocations, whichever
    /// layer (flag, environment, file) the value came from. Each setting's
    /// own limit is checked first, in the order of the declaration, then
    /// the rules between settings; the first problem is the one reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_each()?;
        if let Some(keys) = &self.api_keys {
            parse_api_keys(keys).map_err(|m| ConfigError::setting("api-keys", m))?;
        }
        check_jwt_secret(self.jwt_secret.as_ref())?;
        self.check_combinations()
    }

    /// The rules that involve more than one setting.
    fn check_combinations(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, problem: &str) -> Result<(), ConfigError> {
            Err(ConfigError::setting(key, problem))
        }
        match (self.tls_listen, &self.tls_cert, &self.tls_key) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (Some(_), None, _) => return bad("tls-listen", "needs --tls-cert and --tls-key"),
            (Some(_), _, None) => return bad("tls-listen", "needs --tls-key as well"),
            (None, _, _) => return bad("tls-cert", "--tls-cert and --tls-key need --tls-listen"),
        }
        if let Err(e) = crate::reactor::browser::Origins::parse(self.allowed_origins.as_deref()) {
            return bad("allowed-origins", &e);
        }
        // Port 0 asks for any free port, so two port-0 listeners do not clash.
        if let Some(tls) = self.tls_listen {
            if tls == self.listen && tls.port() != 0 {
                return bad("tls-listen", "is the same address as --listen");
            }
        }
        // A connection must be able to queue at least one largest message,
        // or every such message would close its receiver as a slow consumer.
        if self.max_queue_bytes < self.max_message_bytes {
            return bad(
                "max-queue-bytes",
                "must be at least max-message-bytes (a largest message must fit in the queue)",
            );
        }
        if self.jwt_leeway.subsec_nanos() != 0 {
            return bad("jwt-leeway", "must be a whole number of seconds");
        }
        if self.ping_interval >= self.idle_timeout {
            return bad(
                "ping-interval",
                "must be shorter than idle-timeout (the ping is what keeps a quiet connection alive)",
            );
        }
        // A bucket that holds nothing refuses everything.
        for (rate_key, rate, burst_key, burst) in [
            ("send-rate", self.send_rate, "send-burst", self.send_burst),
            ("request-rate", self.request_rate, "request-burst", self.request_burst),
            ("connect-rate-per-ip", self.connect_rate_per_ip, "connect-burst-per-ip", self.connect_burst_per_ip),
            ("post-rate-per-ip", self.post_rate_per_ip, "post-burst-per-ip", self.post_burst_per_ip),
        ] {
            if rate > 0.0 && burst == 0 {
                return Err(ConfigError::setting(burst_key, format!("must be at least 1 while {rate_key} is on")));
            }
        }
        if let Err(e) = crate::auth::rules::Patterns::parse_list(&self.default_rooms) {
            return bad("default-rooms", &e.to_string());
        }
        if let Err(problem) = crate::auth::passkey::relying_party(self) {
            return bad(if self.webauthn_origin.is_some() { "webauthn-origin" } else { "webauthn-rp-id" }, &problem);
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        oauth::validate(&self.oauth)?;
        Ok(())
    }
}

/// An HS256 secret from `ROOMCAST_JWT_SECRET` must be at least
/// [`crate::auth::MIN_SECRET_BYTES`] long: a shorter one can be guessed
/// offline from any token it signed.
fn check_jwt_secret(secret: Option<&JwtSecret>) -> Result<(), ConfigError> {
    let min = crate::auth::MIN_SECRET_BYTES;
    match secret {
        Some(s) if s.expose().len() < min => Err(ConfigError::setting(
            ENV_JWT_SECRET,
            format!("must be at least {min} bytes (it is {}); 32 random bytes as hex will do", s.expose().len()),
        )),
        _ => Ok(()),
    }
}

/// The largest (and, where named `MIN_`, smallest) values the settings
/// take; [`Config::validate`] refuses anything past them. They are far above
/// any sensible use and far below where time arithmetic (a deadline is a
/// clock reading plus a setting) or sizing buffers would overflow.
pub mod bounds {
    use std::time::Duration;

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    pub const THREADS: usize = 1024;
    pub const AUTH_WORKERS: usize = 64;
    pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
    pub const MAX_QUEUE_BYTES: usize = 1 << 30;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(HOUR);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(DAY);
    pub const PING_INTERVAL: Duration = Duration::from_secs(DAY);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(HOUR);
    /// Entries of the TLS session cache (each a few hundred bytes).
    pub const TLS_SESSION_CACHE: usize = 10_000_000;
    /// Every token bucket refill rate, per second.
    pub const RATE: f64 = 1e6;
    /// Every token bucket size.
    pub const BURST: u32 = 1_000_000;
    pub const MAX_CONNECTIONS: usize = 10_000_000;
    pub const MAX_CONNS_PER_IP: usize = 10_000_000;
    pub const HISTORY_TAIL: usize = 1_000_000;
    pub const MAX_REPLAY: usize = 100_000;
    pub const DEDUP_WINDOW: Duration = Duration::from_secs(30 * DAY);
    /// About a hundred years.
    pub const RETAIN_AGE: Duration = Duration::from_secs(36_500 * DAY);
    pub const MAX_BODY_DEPTH: usize = 1024;
    pub const MIN_ROOM_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const MIN_STORE_CACHE_BYTES: usize = 1 << 20;
    pub const STORE_CACHE_BYTES: usize = 64 << 30;
    pub const ROOM_IDLE_TIMEOUT: Duration = Duration::from_secs(DAY);
    pub const MIN_CLUSTER_DOWN_AFTER: Duration = Duration::from_millis(100);
    pub const CLUSTER_DOWN_AFTER: Duration = Duration::from_secs(HOUR);
    pub const MIN_CLUSTER_QUEUE_BYTES: usize = 64 << 10;
    pub const CLUSTER_QUEUE_BYTES: usize = 1 << 30;
    pub const MIN_OAUTH_STATE_TTL: Duration = Duration::from_secs(1);
    pub const OAUTH_STATE_TTL: Duration = Duration::from_secs(HOUR);
    pub const MIN_OAUTH_TIMEOUT: Duration = Duration::from_millis(100);
    pub const OAUTH_TIMEOUT: Duration = Duration::from_secs(60);
    /// Nodes in `[cluster]`.
    pub const CLUSTER_NODES: usize = 64;
    /// Longest node id.
    pub const NODE_ID_BYTES: usize = 64;
    /// Longest nng address of a node.
    pub const NODE_ADDR_BYTES: usize = 256;
    /// Shortest cluster secret.
    pub const MIN_CLUSTER_SECRET_BYTES: usize = 16;
    pub const JWT_LEEWAY: Duration = Duration::from_secs(HOUR);
    /// Longest lifetime `roomcast token --ttl` mints: ten years.
    pub const TOKEN_TTL: Duration = Duration::from_secs(3650 * DAY);
}

/// What the command line asks for, with its settings resolved.
// Built once per process, so the size of the `Serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Invocation {
    /// `roomcast serve`: the validated configuration.
    Serve(Config),
    /// `roomcast token`: mint one token.
    Token(TokenRequest),
    /// `roomcast dev-cert`: write a self-signed certificate.
    DevCert(DevCertRequest),
    /// `roomcast backup`: copy a stopped server's data to one file.
    Backup { data: PathBuf, out: PathBuf },
}

/// `roomcast token`: who the token is for and how the secret is found.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub ttl: Duration,
    pub role: Option<String>,
    /// Data directory holding the generated secret (when there is no `jwt_secret`).
    pub data: PathBuf,
    pub jwt_secret: Option<JwtSecret>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
}

/// `roomcast dev-cert`: where to write and which name to certify.
#[derive(Debug, Clone)]
pub struct DevCertRequest {
    pub out_cert: PathBuf,
    pub out_key: PathBuf,
    pub names: Vec<String>,
}

/// Reads one variable from the process environment, for `main`. A value that
/// is not UTF-8 is passed on lossily, so it fails to parse rather than being
/// silently ignored.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Parses a full command line (program name first) and resolves its settings
/// from the flags, `env`, the settings file and the defaults.
pub fn parse_command_line<I, T>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = cli_command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        CliCommand::Serve(serve) => {
            let (mut config, cluster) = resolve(serve.settings, serve.config, env)?;
            config.cluster = cluster.build(
                config.cluster_node_id.as_ref(),
                config.cluster_down_after,
                config.cluster_listen.as_ref(),
                config.cluster_queue_bytes,
            )?;
            config.validate()?;
            Ok(Invocation::Serve(config))
        }
        CliCommand::Token(token) => {
            let flags = Settings {
                data: token.data,
                jwt_audience: token.jwt_audience,
                jwt_issuer: token.jwt_issuer,
                ..Settings::default()
            };
            let (config, _) = resolve(flags, token.config, env)?;
            check_jwt_secret(config.jwt_secret.as_ref())?;
            // The same rule the server applies to every token it verifies.
            crate::auth::check_user_id(&token.sub).map_err(|m| ConfigError::setting("sub", m))?;
            if token.ttl.as_secs() == 0 {
                return Err(ConfigError::setting("ttl", "must be at least 1s").into());
            }
            if token.ttl > bounds::TOKEN_TTL {
                let max = show_duration(bounds::TOKEN_TTL);
                return Err(ConfigError::setting("ttl", format!("must be at most {max} (ten years)")).into());
            }
            Ok(Invocation::Token(TokenRequest {
                sub: token.sub,
                ttl: token.ttl,
                role: token.role,
                data: config.data,
                jwt_secret: config.jwt_secret,
                jwt_audience: config.jwt_audience,
                jwt_issuer: config.jwt_issuer,
            }))
        }
        CliCommand::DevCert(dev) => {
            Ok(Invocation::DevCert(DevCertRequest { out_cert: dev.out_cert, out_key: dev.out_key, names: dev.name }))
        }
        CliCommand::Backup(b) => {
            let flags = Settings { data: b.data, ..Settings::default() };
            let (config, _) = resolve(flags, b.config, env)?;
            Ok(Invocation::Backup { data: config.data, out: b.out })
        }
    }
}

/// Applies the layers to the defaults, lowest first: file, environment,
/// flags. The cluster's pieces that are no settings come back beside the
/// [`Config`], for `serve` to build [`Config::cluster`] from.
fn resolve(
    flags: Settings,
    config_flag: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, cluster::ClusterSources), ConfigError> {
    let config_path = config_flag.or_else(|| env_value(env, ENV_CONFIG).map(PathBuf::from));
    let env_layer = Settings::from_env(env)?;
    let mut config = Config::default();
    let mut sources = cluster::ClusterSources::default();
    if let Some(path) = config_path {
        let mut file = Settings::from_file(&path)?;
        sources.given = file.cluster_setting();
        sources.table = file.lift_cluster_table(&path.display().to_string())?;
        if let Some(table) = file.oauth.take() {
            config.oauth = table.build(&|name| env_value(env, name));
        }
        file.apply(&mut config);
    }
    sources.given = flags.cluster_setting().or(env_layer.cluster_setting()).or(sources.given);
    // `ROOMCAST_LOG`: the short name log pipelines know, under the
    // setting's own `ROOMCAST_LOG_LEVEL` and the flag.
    if let Some(level) = env_value(env, ENV_LOG) {
        config.log_level = level.parse().map_err(|e: String| ConfigError::setting(ENV_LOG, e))?;
    }
    env_layer.apply(&mut config);
    flags.apply(&mut config);
    config.jwt_secret = env_value(env, ENV_JWT_SECRET).map(JwtSecret::new);
    sources.env_secret = env_value(env, ENV_CLUSTER_SECRET).map(|s| cluster::ClusterSecret(s.into_bytes()));
    Ok((config, sources))
}

/// An environment variable, with an empty value read as unset so that
/// `ROOMCAST_X=` can switch a setting back to the lower layers.
fn env_value(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// `max-message-bytes` -> `ROOMCAST_MAX_MESSAGE_BYTES`.
pub fn env_name(flag: &str) -> String {
    format!("{ENV_PREFIX}{}", flag.to_ascii_uppercase().replace('-', "_"))
}

// ---------------------------------------------------------------------------
// The command line.

#[derive(Debug, Parser)]
#[command(
    name = "roomcast",
    version,
    about = "A real-time messaging gateway: WebSocket rooms with per-room sequence numbers.",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

// Built once per process, so the size of the `Serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Run the gateway (HTTP and WebSocket, and TLS when configured)
    Serve(ServeArgs),
    /// Print a JWT signed with the gateway's secret
    Token(TokenArgs),
    /// Write a self-signed certificate and key for trying TLS locally
    DevCert(DevCertArgs),
    /// Copy the data of a stopped server into one consistent backup file
    Backup(BackupArgs),
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// Data directory of the (stopped) server [default: ./data] [env: ROOMCAST_DATA]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// TOML settings file to read `data` from [env: ROOMCAST_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The backup file to write (a database file a server can use as its data)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file of settings; keys are the flag names, e.g. `max-message-bytes = 65536`
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// User id to put in the `sub` claim
    #[arg(long, value_name = "USER")]
    sub: String,
    /// Lifetime of the token: seconds, or a duration such as 1h
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = parse_duration)]
    ttl: Duration,
    /// Value of the `role` claim
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// Data directory holding the generated secret [default: ./data] [env: ROOMCAST_DATA]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// TOML settings file to read `data`, `jwt-audience` and `jwt-issuer` from [env: ROOMCAST_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Audience (`aud` claim) to mint [env: ROOMCAST_JWT_AUDIENCE]
    #[arg(long, value_name = "AUD")]
    jwt_audience: Option<String>,
    /// Issuer (`iss` claim) to mint [env: ROOMCAST_JWT_ISSUER]
    #[arg(long, value_name = "ISS")]
    jwt_issuer: Option<String>,
}

#[derive(Debug, Args)]
struct DevCertArgs {
    /// Where to write the certificate (PEM)
    #[arg(long, value_name = "PEM")]
    out_cert: PathBuf,
    /// Where to write the private key (PEM, mode 0600)
    #[arg(long, value_name = "PEM")]
    out_key: PathBuf,
    /// DNS name or IP address the certificate is for (repeatable)
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    name: Vec<String>,
}

/// The `clap` command, with each serve flag's help naming its environment
/// variable (derived from the flag, so the two cannot drift apart).
pub fn cli_command() -> clap::Command {
    Cli::command().mut_subcommand("serve", |serve| {
        serve.mut_args(|arg| {
            let Some(long) = arg.get_long() else {
                return arg;
            };
            if long == "help" {
                return arg;
            }
            let name = env_name(long);
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            arg.help(format!("{help} [env: {name}]"))
        })
    })
}

impl Settings {
    /// The file layer.
    ///
    /// At most [`MAX_CONFIG_FILE_BYTES`] are read, so that naming a device
    /// or a huge file by mistake is an error rather than a hang.
    fn from_file(path: &std::path::Path) -> Result<Settings, ConfigError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let cannot_read =
            |e: std::io::Error| ConfigError::File { path: shown.clone(), problem: format!("cannot read: {e}") };
        let file = std::fs::File::open(path).map_err(cannot_read)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_FILE_BYTES + 1).read_to_string(&mut text).map_err(cannot_read)?;
        if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
            let problem = format!("larger than {}; not a settings file", show_size(MAX_CONFIG_FILE_BYTES as usize));
            return Err(ConfigError::File { path: shown, problem });
        }
        Settings::from_toml(&text, &shown)
    }

    fn from_toml(text: &str, shown: &str) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|e| toml_error(&e, text, shown))
    }

    /// The flag of the first `cluster-*` setting this layer has, if any.
    fn cluster_setting(&self) -> Option<&'static str> {
        [
            ("cluster-node-id", self.cluster_node_id.is_some()),
            ("cluster-down-after", self.cluster_down_after.is_some()),
            ("cluster-listen", self.cluster_listen.is_some()),
            ("cluster-queue-bytes", self.cluster_queue_bytes.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, set)| set.then_some(flag))
    }

    /// Moves `node-id`, `down-after` and `listen` of the file's
    /// `[cluster]` table into this (file) layer's `cluster-*` settings and
    /// returns the rest of the table. A setting given both at the top level
    /// and in the table is an error.
    fn lift_cluster_table(&mut self, shown: &str) -> Result<Option<cluster::ClusterTable>, ConfigError> {
        let Some(mut table) = self.cluster.take() else { return Ok(None) };
        fn lift<T>(
            top: &mut Option<T>,
            inner: Option<T>,
            flag: &str,
            key: &str,
            shown: &str,
        ) -> Result<(), ConfigError> {
            if inner.is_some() {
                if top.is_some() {
                    let problem = format!("given both at the top level and as `{key}` in [cluster] (in {shown})");
                    return Err(ConfigError::setting(flag, problem));
                }
                *top = inner;
            }
            Ok(())
        }
        lift(&mut self.cluster_node_id, table.node_id.take(), "cluster-node-id", "node-id", shown)?;
        lift(&mut self.cluster_down_after, table.down_after.take(), "cluster-down-after", "down-after", shown)?;
        lift(&mut self.cluster_listen, table.listen.take(), "cluster-listen", "listen", shown)?;
        lift(&mut self.cluster_queue_bytes, table.queue_bytes.take(), "cluster-queue-bytes", "queue-bytes", shown)?;
        Ok(Some(table))
    }
}

/// Turns a TOML error into one line naming the key when the failing line has
/// one: `threads: invalid type: ... (in FILE, line 3)`.
fn toml_error(e: &toml::de::Error, text: &str, shown: &str) -> ConfigError {
    let mut problem = e.message().trim().replace('\n', " ");
    // serde's own text lists every key in both spellings: too long for one line.
    if problem.starts_with("unknown field") {
        problem = "unknown key; the keys are the `roomcast serve` flag names, \
                   such as max-message-bytes (see docs/CONFIG.md)"
            .to_string();
    }
    let Some(span) = e.span() else {
        return ConfigError::File { path: shown.to_string(), problem };
    };
    let start = span.start.min(text.len());
    let line_no = text.get(..start).map_or(1, |s| s.matches('\n').count() + 1);
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let bare = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    // A key inside a table is named with the table: `cluster.secret`.
    let table = text
        .lines()
        .take(line_no - 1)
        .filter_map(|l| l.trim().strip_prefix('['))
        .last()
        .map(|h| h.trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace()));
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|k| bare(k))
        .map(|k| match table {
            Some(table) if bare(table) => format!("{table}.{k}"),
            _ => k,
        });
    match key {
        Some(key) => ConfigError::setting(key, format!("{problem} (in {shown}, line {line_no})")),
        None => ConfigError::File { path: shown.to_string(), problem: format!("line {line_no}: {problem}") },
    }
}

#[cfg(test)]
mod tests;
