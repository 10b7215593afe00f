//! Reload without restart. SIGHUP and `POST /v1/api/reload` hand a request
//! to the `reload` thread, which re-reads the command line's config file
//! (and the environment), the TLS certificate and key and the JWT key
//! files, checks all of it, and only then swaps in the settings that can
//! change without re-binding. A bad new configuration changes nothing: the
//! old one stays, and the refusal is logged (and answered, over HTTP).
//!
//! What reactors see: [`Live`], an `Arc` of the current [`Settings`] and a
//! generation number. A reactor compares the generation once per loop
//! iteration (one atomic load) and takes the new `Arc` when it moved, so
//! the hot path never locks. Open connections keep the values they were
//! set up with (their token buckets, their message limit); new ones get
//! the new values.
//!
//! Ordering: everything that can fail (parsing, validation, reading the
//! TLS files, reading the key files) happens before anything is swapped;
//! the key files are swapped by `Auth::reload` itself, last but one, and
//! its failure still leaves every other setting as it was.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{Config, Invocation};
use crate::log::{self, Level};
use crate::reactor::Shared;

/// The settings a reload may change, by flag name. Everything else needs a
/// restart: a reload that changes it keeps the old value and says so. The
/// files named by `--jwt-public-key` and `--jwks` are read again on every
/// reload (their paths are kept), as are the TLS certificate and key.
pub const RELOADABLE: &[&str] = &[
    "tls-cert",
    "tls-key",
    "tls-session-cache",
    "tls-tickets",
    "tls-handshake-timeout",
    "log-level",
    "api-keys",
    "send-rate",
    "send-burst",
    "request-rate",
    "request-burst",
    "connect-rate-per-ip",
    "connect-burst-per-ip",
    "post-rate-per-ip",
    "post-burst-per-ip",
    "max-conns-per-ip",
    "max-message-bytes",
    "request-timeout",
    "idle-timeout",
    "ping-interval",
    "drain-timeout",
    "metrics-histograms",
    "permessage-deflate",
    "deflate-min-bytes",
];

/// What every reactor reads: the configuration and what is built from it.
pub struct Settings {
    pub config: Config,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `config.api_keys`, parsed once here rather than on every API call.
    pub api_keys: Vec<[u8; 32]>,
}

impl Settings {
    pub fn new(config: Config, tls: Option<Arc<rustls::ServerConfig>>) -> Settings {
        let api_keys = config.api_key_hashes();
        Settings { config, tls, api_keys }
    }
}

/// The current [`Settings`], swapped whole by a reload.
pub struct Live {
    current: RwLock<Arc<Settings>>,
    gen: AtomicU64,
}

impl Live {
    pub fn new(settings: Settings) -> Live {
        Live { current: RwLock::new(Arc::new(settings)), gen: AtomicU64::new(0) }
    }

    /// Moves on every swap; a reader compares it before it takes [`Live::get`].
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Arc<Settings> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, s: Settings) {
        let new = Arc::new(s);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        // Release: a reactor that sees the new generation finds the new
        // settings under the lock.
        self.gen.fetch_add(1, Ordering::Release);
    }
}

/// What a reload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Settings now in force with new values.
    pub changed: Vec<String>,
    /// Settings whose new values wait for a restart (the old ones stay).
    pub restart_needed: Vec<String>,
    /// What the key files hold now (`Auth::reload`'s summary).
    pub keys: String,
}

/// The new TLS config with the old one's ticket keys and session cache when
/// their settings did not change: a certificate renewal must not send every
/// client back to a full handshake at once.
fn keep_sessions(
    fresh: Arc<rustls::ServerConfig>,
    old: Option<&Arc<rustls::ServerConfig>>,
    opts: &crate::server::TlsOptions,
    old_opts: &crate::server::TlsOptions,
) -> Arc<rustls::ServerConfig> {
    let Some(old) = old else { return fresh };
    if opts.session_cache != old_opts.session_cache || opts.tickets != old_opts.tickets {
        return fresh;
    }
    let mut cfg = Arc::try_unwrap(fresh).unwrap_or_else(|shared| (*shared).clone());
    cfg.ticketer = old.ticketer.clone();
    cfg.session_storage = old.session_storage.clone();
    Arc::new(cfg)
}

/// Why a reload was refused.
#[derive(Debug)]
pub enum Refused {
    /// The command line, config file or TLS files.
    Config(String),
    /// The key files (`--jwt-public-key`, `--jwks`).
    Keys(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Config(e) | Refused::Keys(e) => f.write_str(e),
        }
    }
}

/// A checked new configuration, not yet in force.
struct Prepared {
    out: Outcome,
    merged: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Prepared {
    fn apply(mut self, shared: &Shared) -> Result<Outcome, Refused> {
        // The keys swap themselves: after this nothing can fail.
        self.out.keys = shared.auth.reload().map_err(|e| Refused::Keys(e.to_string()))?.to_string();
        shared.limits.retune(&self.merged);
        log::set_level(self.merged.log_level);
        shared.live.swap(Settings::new(self.merged, self.tls));
        Ok(self.out)
    }
}

/// The command line to read again, and one reload at a time.
pub struct Reloader {
    /// The command line `serve` was started with (program name included);
    /// empty: reloads re-read only the key and TLS files.
    args: Vec<OsString>,
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    pub fn new(args: Vec<OsString>) -> Reloader {
        Reloader { args, one_at_a_time: Mutex::new(()) }
    }

    /// Re-reads and applies the configuration; `Err` says why the new one
    /// was refused (nothing changed then). Off the reactors only: it reads
    /// files.
    pub fn reload(&self, shared: &Shared) -> Result<Outcome, Refused> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.prepare(shared).map_err(Refused::Config)?.apply(shared)
    }

    /// Whether a reload runs now (the API answers 409 rather than queue
    /// another behind it).
    pub fn busy(&self) -> bool {
        self.one_at_a_time.try_lock().is_err()
    }

    fn prepare(&self, shared: &Shared) -> Result<Prepared, String> {
        let old = shared.live.get();
        if self.args.is_empty() {
            let tls = old.tls.clone();
            return Ok(Prepared { out: Outcome::default(), merged: old.config.clone(), tls });
        }
        let new = match crate::config::parse_command_line(self.args.iter().cloned(), &crate::config::process_env) {
            Ok(Invocation::Serve(c)) => c,
            Ok(_) => return Err("the command line is no longer a serve command line".into()),
            Err(crate::config::CliError::Usage(e)) => return Err(e.to_string().trim().to_string()),
            Err(crate::config::CliError::Config(e)) => return Err(e.to_string()),
        };
        let mut merged = old.config.clone();
        let mut out = Outcome::default();
        for name in old.config.changed_settings(&new) {
            if RELOADABLE.contains(&name.as_str()) && merged.take_setting(&new, &name) {
                out.changed.push(name);
            } else {
                out.restart_needed.push(name);
            }
        }
        if old.config.cluster != new.cluster {
            out.restart_needed.push("[cluster]".into());
        }
        if old.config.oauth != new.oauth {
            out.restart_needed.push("[oauth]".into());
        }
        if crate::reactor::limits::Limits::tracks(&old.config) != crate::reactor::limits::Limits::tracks(&merged) {
            // Counting connections per address cannot start or stop under
            // open connections (their counts would not match).
            for name in ["max-conns-per-ip", "connect-rate-per-ip"] {
                if out.changed.iter().any(|c| c == name) {
                    merged.take_setting(&old.config, name);
                    out.changed.retain(|c| c != name);
                    out.restart_needed.push(name.to_string());
                }
            }
        }
        // Settings kept at their old values may not fit the new ones (a
        // message limit above a queue cap that waits for a restart).
        merged.validate().map_err(|e| format!("{e} (with the settings that wait for a restart kept)"))?;
        // The TLS files are read again whatever changed: a renewed
        // certificate keeps its path.
        let tls = match (&merged.tls_listen, &merged.tls_cert, &merged.tls_key) {
            (Some(_), Some(cert), Some(key)) => {
                let opts = crate::server::TlsOptions::of(&merged);
                let fresh = crate::server::load_tls(cert, key, &opts).map_err(|e| e.to_string())?;
                Some(keep_sessions(fresh, old.tls.as_ref(), &opts, &crate::server::TlsOptions::of(&old.config)))
            }
            _ => None,
        };
        Ok(Prepared { out, merged, tls })
    }

    /// [`Reloader::reload`] with its log line.
    pub fn reload_logged(&self, shared: &Shared, via: &str) -> Result<Outcome, Refused> {
        let r = self.reload(shared);
        match &r {
            Ok(o) => {
                let mut msg = format!("keys reloaded ({}), config reloaded ({via})", o.keys);
                if !o.changed.is_empty() {
                    msg.push_str(&format!("; changed: {}", o.changed.join(", ")));
                }
                if !o.restart_needed.is_empty() {
                    msg.push_str(&format!("; kept until a restart: {}", o.restart_needed.join(", ")));
                }
                let (changed, kept) = (o.changed.join(","), o.restart_needed.join(","));
                log::event(
                    Level::Info,
                    "reload",
                    &msg,
                    &[("via", via.into()), ("changed", (&changed).into()), ("restart_needed", (&kept).into())],
                );
            }
            Err(e) => {
                let msg = match e {
                    Refused::Keys(e) => format!("keys not reloaded ({via}), the old ones and the old config stay: {e}"),
                    Refused::Config(e) => format!("config not reloaded ({via}), the old one stays: {e}"),
                };
                log::event(Level::Error, "reload_refused", &msg, &[("via", via.into())]);
            }
        }
        r
    }
}
