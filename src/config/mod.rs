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
//! The layers are parsed into the same all-optional [`Settings`] shape and
//! applied to the defaults from the lowest layer to the highest, so a layer
//! only overrides what it names. The process environment is never read here
//! directly: callers pass a lookup function, which keeps tests free of global
//! state. The JWT secret is not a setting of any layer: it only ever comes
//! from `ROOMCAST_JWT_SECRET` (or the data directory, see `crate::auth`).
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

mod values;

use values::{de_duration, de_size, parse_from_str, show_duration, show_size};
pub use values::{parse_bool, parse_duration, parse_size};

/// Prefix of every environment variable the command line reads.
pub const ENV_PREFIX: &str = "ROOMCAST_";
/// The environment variable holding the HS256 secret.
pub const ENV_JWT_SECRET: &str = "ROOMCAST_JWT_SECRET";
/// The environment variable naming the TOML settings file.
pub const ENV_CONFIG: &str = "ROOMCAST_CONFIG";
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

/// Everything `roomcast serve` runs with. [`Config::default`] holds the
/// embedded defaults; docs/CONFIG.md describes each setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address for plain HTTP and WebSocket.
    pub listen: SocketAddr,
    /// Directory for the message store and the generated JWT secret.
    pub data: PathBuf,
    /// Event-loop threads (one per core by default).
    pub threads: usize,
    /// Accept connections without a token.
    pub anonymous: bool,
    /// When a message counts as stored.
    pub durability: Durability,
    /// Address for HTTPS and WebSocket over TLS; needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM file with the certificate chain, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key.
    pub tls_key: Option<PathBuf>,
    /// Largest inbound WebSocket message or HTTP body.
    pub max_message_bytes: usize,
    /// Serve the `/v1/echo` WebSocket endpoint.
    pub echo: bool,
    /// Required `aud` claim of tokens, and the one `token` mints.
    pub jwt_audience: Option<String>,
    /// Required `iss` claim of tokens, and the one `token` mints.
    pub jwt_issuer: Option<String>,
    /// From `ROOMCAST_JWT_SECRET` only; `None` means use the data directory's.
    pub jwt_secret: Option<JwtSecret>,
    /// How long a shutdown waits for connections to finish before closing them.
    pub drain_timeout: Duration,
    /// A WebSocket with no traffic at all for this long is closed.
    pub idle_timeout: Duration,
    /// A ping is sent after this much silence on a WebSocket.
    pub ping_interval: Duration,
    /// Time allowed from accept to a complete HTTP request head.
    pub request_timeout: Duration,
    /// Sends per second per connection (token bucket refill); 0 disables the limit.
    pub send_rate: f64,
    /// Token bucket size: sends allowed in a burst.
    pub send_burst: u32,
    /// Outbound bytes queued per connection before it is closed as a slow consumer (4000).
    pub max_queue_bytes: usize,
    /// Open connections per process; past it new accepts are closed at once.
    pub max_connections: usize,
    /// Messages kept in memory per room.
    pub history_tail: usize,
    /// Most messages replayed on `join` with `since`.
    pub max_replay: usize,
    /// How long a client message `id` is remembered for deduplication.
    pub dedup_window: Duration,
    /// Keep at most this many messages per room.
    pub retain_messages: Option<u64>,
    /// Keep messages at most this long.
    pub retain_age: Option<Duration>,
    /// Deepest nesting of arrays and objects accepted in a message body.
    pub max_body_depth: usize,
    /// Requests other than `send` (join, leave, history, presence, ping) per
    /// second per connection (token bucket refill); 0 disables the limit.
    pub request_rate: f64,
    /// Token bucket size for those requests.
    pub request_burst: u32,
    /// Open connections per source IP; 0 disables the limit.
    pub max_conns_per_ip: usize,
    /// New connections per second per source IP (token bucket refill); 0 disables.
    pub connect_rate_per_ip: f64,
    /// Token bucket size for new connections per source IP.
    pub connect_burst_per_ip: u32,
    /// `POST .../messages` per second per source IP (the per-user limit is
    /// `send_rate`/`send_burst`, as for WebSocket sends); 0 disables.
    pub post_rate_per_ip: f64,
    /// Token bucket size for posts per source IP.
    pub post_burst_per_ip: u32,
    /// A room with no members, nothing in flight and no traffic for this long
    /// is forgotten (reloaded from storage on next use).
    pub room_idle_timeout: Duration,
    /// Memory the store's page cache may hold.
    pub store_cache_bytes: usize,
}

/// The number of threads `serve` uses when `--threads` is not given.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("./data"),
            threads: default_threads(),
            anonymous: false,
            durability: Durability::Immediate,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            max_message_bytes: 64 * 1024,
            echo: false,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_secret: None,
            drain_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            send_rate: 50.0,
            send_burst: 100,
            max_queue_bytes: 4 * 1024 * 1024,
            max_connections: 100_000,
            history_tail: 1024,
            max_replay: 1000,
            dedup_window: Duration::from_secs(3600),
            retain_messages: None,
            retain_age: None,
            max_body_depth: 64,
            request_rate: 100.0,
            request_burst: 300,
            max_conns_per_ip: 1024,
            connect_rate_per_ip: 200.0,
            connect_burst_per_ip: 1000,
            post_rate_per_ip: 500.0,
            post_burst_per_ip: 1000,
            room_idle_timeout: Duration::from_secs(60),
            store_cache_bytes: 64 << 20,
        }
    }
}

impl Config {
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
    /// layer (flag, environment, file) the value came from.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, problem: &str) -> Result<(), ConfigError> {
            Err(ConfigError::setting(key, problem))
        }
        if self.data.as_os_str().is_empty() {
            return bad("data", "must not be empty");
        }
        if self.threads == 0 {
            return bad("threads", "must be at least 1");
        }
        count_at_most("threads", self.threads, bounds::THREADS)?;
        match (self.tls_listen, &self.tls_cert, &self.tls_key) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (Some(_), None, _) => return bad("tls-listen", "needs --tls-cert and --tls-key"),
            (Some(_), _, None) => return bad("tls-listen", "needs --tls-key as well"),
            (None, _, _) => return bad("tls-cert", "--tls-cert and --tls-key need --tls-listen"),
        }
        // Port 0 asks for any free port, so two port-0 listeners do not clash.
        if let Some(tls) = self.tls_listen {
            if tls == self.listen && tls.port() != 0 {
                return bad("tls-listen", "is the same address as --listen");
            }
        }
        if self.max_message_bytes == 0 {
            return bad("max-message-bytes", "must be at least 1");
        }
        size_at_most("max-message-bytes", self.max_message_bytes, bounds::MAX_MESSAGE_BYTES)?;
        size_at_most("max-queue-bytes", self.max_queue_bytes, bounds::MAX_QUEUE_BYTES)?;
        // A connection must be able to queue at least one largest message,
        // or every such message would close its receiver as a slow consumer.
        if self.max_queue_bytes < self.max_message_bytes {
            return bad(
                "max-queue-bytes",
                "must be at least max-message-bytes (a largest message must fit in the queue)",
            );
        }
        if let Some(aud) = &self.jwt_audience {
            if aud.is_empty() {
                return bad("jwt-audience", "must not be empty");
            }
        }
        if let Some(iss) = &self.jwt_issuer {
            if iss.is_empty() {
                return bad("jwt-issuer", "must not be empty");
            }
        }
        duration_at_most("drain-timeout", self.drain_timeout, bounds::DRAIN_TIMEOUT)?;
        if self.idle_timeout.is_zero() {
            return bad("idle-timeout", "must be more than 0");
        }
        duration_at_most("idle-timeout", self.idle_timeout, bounds::IDLE_TIMEOUT)?;
        if self.ping_interval.is_zero() {
            return bad("ping-interval", "must be more than 0");
        }
        duration_at_most("ping-interval", self.ping_interval, bounds::PING_INTERVAL)?;
        if self.ping_interval >= self.idle_timeout {
            return bad(
                "ping-interval",
                "must be shorter than idle-timeout (the ping is what keeps a quiet connection alive)",
            );
        }
        if self.request_timeout.is_zero() {
            return bad("request-timeout", "must be more than 0");
        }
        duration_at_most("request-timeout", self.request_timeout, bounds::REQUEST_TIMEOUT)?;
        bucket("send-rate", self.send_rate, "send-burst", self.send_burst, "sends")?;
        bucket("request-rate", self.request_rate, "request-burst", self.request_burst, "requests")?;
        bucket(
            "connect-rate-per-ip",
            self.connect_rate_per_ip,
            "connect-burst-per-ip",
            self.connect_burst_per_ip,
            "connections",
        )?;
        bucket("post-rate-per-ip", self.post_rate_per_ip, "post-burst-per-ip", self.post_burst_per_ip, "posts")?;
        if self.max_connections == 0 {
            return bad("max-connections", "must be at least 1");
        }
        count_at_most("max-connections", self.max_connections, bounds::MAX_CONNECTIONS)?;
        count_at_most("max-conns-per-ip", self.max_conns_per_ip, bounds::MAX_CONNS_PER_IP)?;
        count_at_most("history-tail", self.history_tail, bounds::HISTORY_TAIL)?;
        count_at_most("max-replay", self.max_replay, bounds::MAX_REPLAY)?;
        duration_at_most("dedup-window", self.dedup_window, bounds::DEDUP_WINDOW)?;
        if self.retain_messages == Some(0) {
            return bad("retain-messages", "must be at least 1");
        }
        if let Some(age) = self.retain_age {
            if age.is_zero() {
                return bad("retain-age", "must be more than 0");
            }
            duration_at_most("retain-age", age, bounds::RETAIN_AGE)?;
        }
        if self.max_body_depth == 0 {
            return bad("max-body-depth", "must be at least 1");
        }
        count_at_most("max-body-depth", self.max_body_depth, bounds::MAX_BODY_DEPTH)?;
        if self.store_cache_bytes < bounds::MIN_STORE_CACHE_BYTES {
            return bad("store-cache-bytes", "must be at least 1MiB");
        }
        size_at_most("store-cache-bytes", self.store_cache_bytes, bounds::STORE_CACHE_BYTES)?;
        if self.room_idle_timeout < bounds::MIN_ROOM_IDLE_TIMEOUT || self.room_idle_timeout > bounds::ROOM_IDLE_TIMEOUT
        {
            return bad(
                "room-idle-timeout",
                &format!(
                    "must be from {} to {}",
                    show_duration(bounds::MIN_ROOM_IDLE_TIMEOUT),
                    show_duration(bounds::ROOM_IDLE_TIMEOUT)
                ),
            );
        }
        Ok(())
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
    pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
    pub const MAX_QUEUE_BYTES: usize = 1 << 30;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(HOUR);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(DAY);
    pub const PING_INTERVAL: Duration = Duration::from_secs(DAY);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(HOUR);
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
    /// Longest lifetime `roomcast token --ttl` mints: ten years.
    pub const TOKEN_TTL: Duration = Duration::from_secs(3650 * DAY);
}

fn duration_at_most(key: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::setting(key, format!("must be at most {}", show_duration(max))));
    }
    Ok(())
}

fn size_at_most(key: &str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::setting(key, format!("must be at most {}", show_size(max))));
    }
    Ok(())
}

fn count_at_most(key: &str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::setting(key, format!("must be at most {max}")));
    }
    Ok(())
}

/// One token bucket's pair of settings: a finite rate from 0 (off) to
/// [`bounds::RATE`], and a burst of at least 1 while the rate is on (a bucket
/// that holds nothing refuses everything) and at most [`bounds::BURST`].
fn bucket(rate_key: &str, rate: f64, burst_key: &str, burst: u32, what: &str) -> Result<(), ConfigError> {
    // `contains` is false for NaN, so this refuses it too.
    if !(0.0..=bounds::RATE).contains(&rate) {
        return Err(ConfigError::setting(
            rate_key,
            format!("must be a number of {what} per second from 0 to {}", bounds::RATE),
        ));
    }
    if rate > 0.0 && burst == 0 {
        return Err(ConfigError::setting(burst_key, format!("must be at least 1 while {rate_key} is on")));
    }
    if burst > bounds::BURST {
        return Err(ConfigError::setting(burst_key, format!("must be at most {}", bounds::BURST)));
    }
    Ok(())
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
            let config = resolve(serve.settings, serve.config, env)?;
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
            let config = resolve(flags, token.config, env)?;
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
            let config = resolve(flags, b.config, env)?;
            Ok(Invocation::Backup { data: config.data, out: b.out })
        }
    }
}

/// Applies the layers to the defaults, lowest first: file, environment, flags.
fn resolve(
    flags: Settings,
    config_flag: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let config_path = config_flag.or_else(|| env_value(env, ENV_CONFIG).map(PathBuf::from));
    let env_layer = Settings::from_env(env)?;
    let mut config = Config::default();
    if let Some(path) = config_path {
        Settings::from_file(&path)?.apply(&mut config);
    }
    env_layer.apply(&mut config);
    flags.apply(&mut config);
    config.jwt_secret = env_value(env, ENV_JWT_SECRET).map(JwtSecret::new);
    Ok(config)
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

/// One layer of serve settings: flags, environment or file. Every field is
/// optional; `None` leaves the lower layer's value in place.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    /// Address for HTTP and WebSocket [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Directory for stored messages and the generated JWT secret [default: ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Event-loop threads [default: number of CPUs]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Accept connections without a token, taking the user id from `?user=`
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    anonymous: Option<bool>,

    /// When a message counts as stored: after fsync, or once written [default: immediate]
    #[arg(long, value_name = "MODE")]
    durability: Option<Durability>,

    /// Address for HTTPS and WebSocket over TLS (needs --tls-cert and --tls-key)
    #[arg(long, value_name = "ADDR")]
    #[serde(alias = "tls_listen")]
    tls_listen: Option<SocketAddr>,

    /// PEM file with the TLS certificate chain, leaf first
    #[arg(long, value_name = "PEM")]
    #[serde(alias = "tls_cert")]
    tls_cert: Option<PathBuf>,

    /// PEM file with the TLS private key
    #[arg(long, value_name = "PEM")]
    #[serde(alias = "tls_key")]
    tls_key: Option<PathBuf>,

    /// Largest inbound message or HTTP body, e.g. 65536 or 64KiB [default: 64KiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(alias = "max_message_bytes", default, deserialize_with = "de_size")]
    max_message_bytes: Option<usize>,

    /// Serve the /v1/echo WebSocket endpoint, for conformance suites
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    echo: Option<bool>,

    /// Require this `aud` claim in tokens
    #[arg(long, value_name = "AUD")]
    #[serde(alias = "jwt_audience")]
    jwt_audience: Option<String>,

    /// Require this `iss` claim in tokens
    #[arg(long, value_name = "ISS")]
    #[serde(alias = "jwt_issuer")]
    jwt_issuer: Option<String>,

    /// How long shutdown waits for connections before closing them [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "drain_timeout", default, deserialize_with = "de_duration")]
    drain_timeout: Option<Duration>,

    /// Close a WebSocket after this long without any traffic [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "idle_timeout", default, deserialize_with = "de_duration")]
    idle_timeout: Option<Duration>,

    /// Send a ping after this much silence on a WebSocket [default: 20s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "ping_interval", default, deserialize_with = "de_duration")]
    ping_interval: Option<Duration>,

    /// Time allowed to send a complete HTTP request head [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "request_timeout", default, deserialize_with = "de_duration")]
    request_timeout: Option<Duration>,

    /// Sends per second per connection (token bucket); 0 disables the limit [default: 50]
    #[arg(long, value_name = "RATE")]
    #[serde(alias = "send_rate")]
    send_rate: Option<f64>,

    /// Sends allowed in a burst above the rate [default: 100]
    #[arg(long, value_name = "N")]
    #[serde(alias = "send_burst")]
    send_burst: Option<u32>,

    /// Outbound bytes queued per connection before closing it as a slow consumer [default: 4MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(alias = "max_queue_bytes", default, deserialize_with = "de_size")]
    max_queue_bytes: Option<usize>,

    /// Open connections per process; past it new ones are closed at once [default: 100000]
    #[arg(long, value_name = "N")]
    #[serde(alias = "max_connections")]
    max_connections: Option<usize>,

    /// Messages kept in memory per room [default: 1024]
    #[arg(long, value_name = "N")]
    #[serde(alias = "history_tail")]
    history_tail: Option<usize>,

    /// Most messages replayed on join with `since` [default: 1000]
    #[arg(long, value_name = "N")]
    #[serde(alias = "max_replay")]
    max_replay: Option<usize>,

    /// How long a client message id is remembered for deduplication [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "dedup_window", default, deserialize_with = "de_duration")]
    dedup_window: Option<Duration>,

    /// Keep at most this many messages per room [default: all]
    #[arg(long, value_name = "N")]
    #[serde(alias = "retain_messages")]
    retain_messages: Option<u64>,

    /// Keep messages at most this long [default: forever]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "retain_age", default, deserialize_with = "de_duration")]
    retain_age: Option<Duration>,

    /// Deepest nesting of arrays and objects in a message body [default: 64]
    #[arg(long, value_name = "N")]
    #[serde(alias = "max_body_depth")]
    max_body_depth: Option<usize>,

    /// Requests other than send (join, leave, history, presence, ping) per second per connection; 0 disables [default: 100]
    #[arg(long, value_name = "RATE")]
    #[serde(alias = "request_rate")]
    request_rate: Option<f64>,

    /// Such requests allowed in a burst above the rate [default: 300]
    #[arg(long, value_name = "N")]
    #[serde(alias = "request_burst")]
    request_burst: Option<u32>,

    /// Open connections per source IP; 0 disables the limit [default: 1024]
    #[arg(long, value_name = "N")]
    #[serde(alias = "max_conns_per_ip")]
    max_conns_per_ip: Option<usize>,

    /// New connections per second per source IP; 0 disables the limit [default: 200]
    #[arg(long, value_name = "RATE")]
    #[serde(alias = "connect_rate_per_ip")]
    connect_rate_per_ip: Option<f64>,

    /// New connections per source IP allowed in a burst above the rate [default: 1000]
    #[arg(long, value_name = "N")]
    #[serde(alias = "connect_burst_per_ip")]
    connect_burst_per_ip: Option<u32>,

    /// HTTP message posts per second per source IP; 0 disables the limit [default: 500]
    #[arg(long, value_name = "RATE")]
    #[serde(alias = "post_rate_per_ip")]
    post_rate_per_ip: Option<f64>,

    /// HTTP message posts per source IP allowed in a burst above the rate [default: 1000]
    #[arg(long, value_name = "N")]
    #[serde(alias = "post_burst_per_ip")]
    post_burst_per_ip: Option<u32>,

    /// Forget a room after this long without members or traffic (reloaded on next use) [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(alias = "room_idle_timeout", default, deserialize_with = "de_duration")]
    room_idle_timeout: Option<Duration>,

    /// Memory for the store's page cache, e.g. 64MiB [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    #[serde(alias = "store_cache_bytes", default, deserialize_with = "de_size")]
    store_cache_bytes: Option<usize>,
}

impl Settings {
    /// The environment layer. Each variable is `ROOMCAST_` plus the flag name
    /// in upper snake case, parsed exactly as the flag would be.
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let get = |flag: &str| {
            let name = env_name(flag);
            env_value(env, &name).map(|value| (name, value))
        };
        // One helper per value shape keeps the field list below one line each.
        fn with<T>(
            found: Option<(String, String)>,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, ConfigError> {
            match found {
                None => Ok(None),
                Some((name, value)) => parse(&value).map(Some).map_err(|problem| ConfigError::setting(name, problem)),
            }
        }
        Ok(Settings {
            listen: with(get("listen"), parse_from_str)?,
            data: with(get("data"), parse_from_str)?,
            threads: with(get("threads"), parse_from_str)?,
            anonymous: with(get("anonymous"), parse_bool)?,
            durability: with(get("durability"), parse_from_str)?,
            tls_listen: with(get("tls-listen"), parse_from_str)?,
            tls_cert: with(get("tls-cert"), parse_from_str)?,
            tls_key: with(get("tls-key"), parse_from_str)?,
            max_message_bytes: with(get("max-message-bytes"), parse_size)?,
            echo: with(get("echo"), parse_bool)?,
            jwt_audience: with(get("jwt-audience"), parse_from_str)?,
            jwt_issuer: with(get("jwt-issuer"), parse_from_str)?,
            drain_timeout: with(get("drain-timeout"), parse_duration)?,
            idle_timeout: with(get("idle-timeout"), parse_duration)?,
            ping_interval: with(get("ping-interval"), parse_duration)?,
            request_timeout: with(get("request-timeout"), parse_duration)?,
            send_rate: with(get("send-rate"), parse_from_str)?,
            send_burst: with(get("send-burst"), parse_from_str)?,
            max_queue_bytes: with(get("max-queue-bytes"), parse_size)?,
            max_connections: with(get("max-connections"), parse_from_str)?,
            history_tail: with(get("history-tail"), parse_from_str)?,
            max_replay: with(get("max-replay"), parse_from_str)?,
            dedup_window: with(get("dedup-window"), parse_duration)?,
            retain_messages: with(get("retain-messages"), parse_from_str)?,
            retain_age: with(get("retain-age"), parse_duration)?,
            max_body_depth: with(get("max-body-depth"), parse_from_str)?,
            request_rate: with(get("request-rate"), parse_from_str)?,
            request_burst: with(get("request-burst"), parse_from_str)?,
            max_conns_per_ip: with(get("max-conns-per-ip"), parse_from_str)?,
            connect_rate_per_ip: with(get("connect-rate-per-ip"), parse_from_str)?,
            connect_burst_per_ip: with(get("connect-burst-per-ip"), parse_from_str)?,
            post_rate_per_ip: with(get("post-rate-per-ip"), parse_from_str)?,
            post_burst_per_ip: with(get("post-burst-per-ip"), parse_from_str)?,
            room_idle_timeout: with(get("room-idle-timeout"), parse_duration)?,
            store_cache_bytes: with(get("store-cache-bytes"), parse_size)?,
        })
    }

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

    /// Overrides `config` with every setting this layer has.
    fn apply(self, config: &mut Config) {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        fn set_opt<T>(slot: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *slot = value;
            }
        }
        set(&mut config.listen, self.listen);
        set(&mut config.data, self.data);
        set(&mut config.threads, self.threads);
        set(&mut config.anonymous, self.anonymous);
        set(&mut config.durability, self.durability);
        set_opt(&mut config.tls_listen, self.tls_listen);
        set_opt(&mut config.tls_cert, self.tls_cert);
        set_opt(&mut config.tls_key, self.tls_key);
        set(&mut config.max_message_bytes, self.max_message_bytes);
        set(&mut config.echo, self.echo);
        set_opt(&mut config.jwt_audience, self.jwt_audience);
        set_opt(&mut config.jwt_issuer, self.jwt_issuer);
        set(&mut config.drain_timeout, self.drain_timeout);
        set(&mut config.idle_timeout, self.idle_timeout);
        set(&mut config.ping_interval, self.ping_interval);
        set(&mut config.request_timeout, self.request_timeout);
        set(&mut config.send_rate, self.send_rate);
        set(&mut config.send_burst, self.send_burst);
        set(&mut config.max_queue_bytes, self.max_queue_bytes);
        set(&mut config.max_connections, self.max_connections);
        set(&mut config.history_tail, self.history_tail);
        set(&mut config.max_replay, self.max_replay);
        set(&mut config.dedup_window, self.dedup_window);
        set_opt(&mut config.retain_messages, self.retain_messages);
        set_opt(&mut config.retain_age, self.retain_age);
        set(&mut config.max_body_depth, self.max_body_depth);
        set(&mut config.request_rate, self.request_rate);
        set(&mut config.request_burst, self.request_burst);
        set(&mut config.max_conns_per_ip, self.max_conns_per_ip);
        set(&mut config.connect_rate_per_ip, self.connect_rate_per_ip);
        set(&mut config.connect_burst_per_ip, self.connect_burst_per_ip);
        set(&mut config.post_rate_per_ip, self.post_rate_per_ip);
        set(&mut config.post_burst_per_ip, self.post_burst_per_ip);
        set(&mut config.room_idle_timeout, self.room_idle_timeout);
        set(&mut config.store_cache_bytes, self.store_cache_bytes);
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
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(key) => ConfigError::setting(key, format!("{problem} (in {shown}, line {line_no})")),
        None => ConfigError::File { path: shown.to_string(), problem: format!("line {line_no}: {problem}") },
    }
}

#[cfg(test)]
mod tests;
