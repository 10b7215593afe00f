//! Startup and shutdown of `roomcast serve`: binds one SO_REUSEPORT
//! listener per reactor (plain and TLS), wires the reactors' mailboxes,
//! starts the reactor threads and the signal thread, prints where it
//! listens, and waits for the drain to finish.
//!
//! Everything that can fail at startup (data directory, secret, key files,
//! TLS files, bind) fails here, on the main thread, before any reactor
//! runs. SIGHUP reloads the configuration (`reload`) while the server runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::auth::Auth;
use crate::cluster::node::{Node, NodeParts};
use crate::config::{Config, Durability};
use crate::log::Level;
use crate::metrics;
use crate::reactor::mail::{Inbox, Mail, Mailbox};
use crate::reactor::{Reactor, ReactorParts, Shared};
use crate::rooms::core::Commit;
use crate::store::{spawn_writer, CommitSink, ReaderPool, Store, WriterConfig};

/// Capacity of each reactor's mailbox, in mails (a sender's mail of one loop
/// iteration is one batch). Past it, senders keep mail in their own
/// overflow queue and refuse new publishes (`overloaded`).
const MAILBOX_CAP: usize = 64 * 1024;
/// Listen backlog; the kernel clamps it to somaxconn.
const BACKLOG: i32 = 4096;
/// Capacity of store-writer's queue, in batches (one per reactor per loop
/// iteration). Past it a reactor holds its batches and refuses new
/// publishes; the appends in flight are bounded by each core's
/// `rooms::core::MAX_PENDING`.
const WRITER_CAP: usize = 4096;
/// Threads reading history pages from storage.
const READERS: usize = 2;

/// Reports commits to the owning reactor's mailbox.
struct Sink {
    mailboxes: Vec<Mailbox>,
}

impl CommitSink for Sink {
    fn committed(&self, reactor: u16, n: usize, result: Result<(), String>) {
        if let Some(mb) = self.mailboxes.get(reactor as usize) {
            // Blocking is fine here: reactors never wait on the writer.
            if mb.tx.send(Mail::Committed(Commit { n, result }, std::time::Instant::now())).is_ok() {
                mb.wake();
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Startup(String),
    /// The data directory belongs to another cluster node, or holds rooms
    /// this node does not own (exit status 2).
    #[error("{0}")]
    Identity(String),
    /// A thread of the server panicked: it stopped accepting, drained
    /// briefly and ended. The exit status must say so (non-zero), or a
    /// supervisor that restarts on failure would leave it down.
    #[error("stopped after a fatal error: {0}")]
    Fatal(String),
}

/// A started server: where it listens, and the threads to wait for.
pub struct Running {
    pub plain_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    /// A token for the built-in page, when the secret is the generated one.
    pub page_token: Option<String>,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    writer: thread::JoinHandle<()>,
    /// Ends the cluster's threads once the reactors are done.
    cluster_stop: Arc<AtomicBool>,
    cluster_thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    /// Starts the drain a SIGTERM starts.
    pub fn stop(&self) {
        self.shared.start_drain();
    }

    /// Waits until every reactor and the store-writer have ended. `Err` when
    /// any thread panicked (the drain then was short: `FATAL_DRAIN`).
    pub fn wait(self) -> Result<(), ServerError> {
        for t in self.threads {
            if t.join().is_err() {
                // The hook has already logged it and started the drain.
                self.shared.fatal("a reactor thread panicked");
            }
        }
        self.cluster_stop.store(true, Ordering::SeqCst);
        if let Some(c) = &self.shared.cluster {
            if let Some(mb) = self.shared.mailboxes.get(c.mailbox) {
                let _ = mb.waker.wake();
            }
        }
        // It passes on the reactors' last mail (leaves), briefly.
        if let Some(t) = self.cluster_thread {
            if t.join().is_err() {
                self.shared.fatal("the cluster thread panicked");
            }
        }
        // The auth workers hold senders of the writer's channel too.
        if let Some(pool) = &self.shared.auth_pool {
            pool.stop();
        }
        // Every reactor dropped its sender: the writer commits what is left and ends.
        if self.writer.join().is_err() {
            self.shared.fatal("the store-writer thread panicked");
        }
        match self.shared.fatal_reason() {
            Some(why) => Err(ServerError::Fatal(why)),
            None => Ok(()),
        }
    }
}

/// Makes every panic, on any thread, fatal to the server: it is logged (by
/// the previous hook: message and backtrace), and the server stops
/// accepting and drains briefly, so the process exits non-zero instead of
/// limping on with a dead reactor or writer.
fn install_panic_hook(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if let Some(shared) = weak.upgrade() {
            let thread = thread::current();
            let name = thread.name().unwrap_or("unnamed");
            let msg = format!("fatal: thread {name} panicked; stopping");
            crate::log::event(Level::Error, "panic", &msg, &[("thread", name.into())]);
            shared.fatal(&format!("thread {name} panicked: {info}"));
        }
    }));
}

fn startup(what: impl std::fmt::Display) -> ServerError {
    ServerError::Startup(what.to_string())
}

/// How long `serve` waits for the log thread to write what is queued.
const LOG_FLUSH: Duration = Duration::from_secs(2);

/// `roomcast serve`: starts, says where it listens, runs until drained.
/// `args` is the command line, read again on a reload.
pub fn run(config: Config, args: Vec<std::ffi::OsString>) -> Result<(), ServerError> {
    crate::log::init(config.log_format, config.log_level).map_err(|e| startup(format!("log thread: {e}")))?;
    let format = config.log_format;
    let running = match start_with(config, args) {
        Ok(r) => r,
        Err(e) => {
            crate::log::flush(LOG_FLUSH);
            return Err(e);
        }
    };
    // Tools wait for "listening on"; in text mode these lines go to stdout.
    let url = format!("http://{}", running.plain_addr);
    let threads = running.threads.len();
    let msg = format!("listening on {url} ({threads} reactors)");
    crate::log::announce("listening", &msg, &[("url", (&url).into()), ("reactors", threads.into())]);
    if let Some(a) = running.tls_addr {
        let url = format!("https://{a}");
        crate::log::announce("listening", &format!("listening on {url}"), &[("url", (&url).into())]);
    }
    match &running.page_token {
        // The link carries a token: a terminal's user asked for it, a log
        // pipeline must never get it.
        Some(t) if format == crate::log::Format::Text => {
            crate::log::announce("page", &format!("try it: http://{}/#token={t}", running.plain_addr), &[]);
        }
        Some(_) => {
            let msg = format!("the page is at {url}/ (mint a token with `roomcast token --sub USER`)");
            crate::log::announce("page", &msg, &[]);
        }
        None => {}
    }
    crate::log::flush(LOG_FLUSH);
    let draining = running.shared.clone();
    let result = running.wait();
    if result.is_ok() && draining.draining.load(Ordering::SeqCst) {
        crate::log::announce("stopped", "drained, bye", &[]);
    }
    crate::log::flush(LOG_FLUSH);
    result
}

/// Starts every thread of the server and returns once it accepts.
///
/// A reload then re-reads the key files only; [`start_with`] gives it a
/// command line to read again (and the TLS files with it).
pub fn start(config: Config) -> Result<Running, ServerError> {
    start_with(config, Vec::new())
}

/// [`start`], with the command line a reload reads again.
pub fn start_with(config: Config, args: Vec<std::ffi::OsString>) -> Result<Running, ServerError> {
    crate::reactor::reaper::tune_allocator();
    std::fs::create_dir_all(&config.data)
        .map_err(|e| startup(format!("data directory {}: {e}", config.data.display())))?;
    let (auth, secret_from_file) = Auth::from_config(&config).map_err(startup)?;
    if (config.jwks.is_some() || config.jwt_public_key.is_some()) && config.jwt_audience.is_none() {
        // An identity provider's tokens for other applications (its ID
        // tokens too) verify with the same keys: only `aud` tells them apart.
        crate::log::event(
            Level::Warn,
            "config_warning",
            "warning: public keys without --jwt-audience accept any token their issuer signs, whatever \
             application it was made for",
            &[],
        );
    }

    let store = Store::open_with_cache(&config.data, config.store_cache_bytes).map_err(startup)?;
    if let Some(c) = &config.cluster {
        let rooms = store.room_names().map_err(|e| startup(format!("store: {e}")))?;
        crate::cluster::identity::check(c, &config.data, rooms.into_iter()).map_err(ServerError::Identity)?;
    }
    let readers = ReaderPool::new(store.clone(), READERS).map_err(|e| startup(format!("reader threads: {e}")))?;
    let (writer_tx, writer_rx) = crate::wait::bounded(WRITER_CAP);

    let tls = match (&config.tls_listen, &config.tls_cert, &config.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(load_tls(cert, key, &TlsOptions::of(&config))?),
        (Some(_), _, _) => return Err(startup("--tls-listen needs --tls-cert and --tls-key")),
        _ => None,
    };

    let n = config.threads.max(1);
    let plain = bind_group(config.listen, n)?;
    let plain_addr = local_addr(&plain[0])?;
    let tls_group = match config.tls_listen {
        Some(a) => Some(bind_group(a, n)?),
        None => None,
    };
    let tls_addr = match &tls_group {
        Some(g) => Some(local_addr(&g[0])?),
        None => None,
    };

    let mut mailboxes = Vec::with_capacity(n);
    let mut parts = Vec::with_capacity(n);
    let mut tls_iter = tls_group.map(|g| g.into_iter());
    for (id, l) in plain.into_iter().enumerate() {
        let poll = Poll::new().map_err(|e| startup(format!("poll: {e}")))?;
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).map_err(|e| startup(format!("waker: {e}")))?);
        let (tx, rx) = crossbeam_channel::bounded(MAILBOX_CAP);
        let sleeping = Arc::new(AtomicBool::new(false));
        mailboxes.push(Mailbox { tx, waker, sleeping: sleeping.clone() });
        let mut listeners = vec![(l, false)];
        if let Some(t) = tls_iter.as_mut().and_then(|i| i.next()) {
            listeners.push((t, true));
        }
        parts.push(ReactorParts {
            id,
            poll,
            inbox: Inbox { rx, sleeping },
            listeners,
            writer: Some(writer_tx.clone()),
        });
    }

    // The cluster's node thread gets the mailbox after the reactors'.
    let node_parts = match &config.cluster {
        Some(_) => {
            let poll = Poll::new().map_err(|e| startup(format!("poll: {e}")))?;
            let waker =
                Arc::new(Waker::new(poll.registry(), mio::Token(0)).map_err(|e| startup(format!("waker: {e}")))?);
            let (tx, rx) = crossbeam_channel::bounded(MAILBOX_CAP);
            let sleeping = Arc::new(AtomicBool::new(false));
            let mailbox = Mailbox { tx, waker, sleeping: sleeping.clone() };
            mailboxes.push(mailbox.clone());
            Some(NodeParts { poll, inbox: Inbox { rx, sleeping }, mailbox })
        }
        None => None,
    };
    let cluster = config.cluster.clone().map(|c| Arc::new(crate::cluster::Handle::new(c, n)));
    let bus = match bus_address(&config) {
        Some(addr) => Some(crate::cluster::bus::spawn(&addr).map_err(startup)?),
        None => None,
    };

    let page_token = if secret_from_file { auth.mint("dev", Duration::from_secs(24 * 3600), None).ok() } else { None };
    let shared = Arc::new(Shared {
        metrics: (0..n).map(|_| metrics::Shared::default()).collect(),
        mailboxes,
        draining: AtomicBool::new(false),
        fatal: std::sync::Mutex::new(None),
        is_fatal: AtomicBool::new(false),
        quiet: (0..n).map(|_| AtomicBool::new(false)).collect(),
        live: crate::reload::Live::new(crate::reload::Settings::new(config.clone(), tls)),
        reloader: crate::reload::Reloader::new(args),
        auth,
        store: Some(store.clone()),
        readers: Some(readers),
        origins: crate::reactor::browser::Origins::parse(config.allowed_origins.as_deref()).map_err(startup)?,
        auth_pool: Some(
            crate::auth::service::AuthPool::new(config.auth_workers, &writer_tx)
                .map_err(|e| startup(format!("auth threads: {e}")))?,
        ),
        limits: crate::reactor::limits::Limits::new(&config),
        reaper: Some(crate::reactor::reaper::spawn().map_err(|e| startup(format!("reaper thread: {e}")))?),
        cluster: cluster.clone(),
        bus,
        config,
    });
    // Before any thread runs: a panic anywhere from here on is fatal.
    install_panic_hook(&shared);
    drop(writer_tx);
    let writer_cfg = WriterConfig {
        durable: shared.config.durability == Durability::Immediate,
        retain_messages: shared.config.retain_messages,
        retain_age: shared.config.retain_age,
        max_batch: 8192,
    };
    let sink = Box::new(Sink { mailboxes: shared.mailboxes.clone() });
    let writer = spawn_writer(store, writer_rx, writer_cfg, sink).map_err(|e| startup(format!("store-writer: {e}")))?;

    let cluster_stop = Arc::new(AtomicBool::new(false));
    let mut cluster_thread = None;
    if let (Some(handle), Some(np)) = (cluster, node_parts) {
        // The receiver thread is not joined: it ends at its next poll
        // after the stop, and holds nothing that needs saving.
        let (node, _receiver) = Node::new(shared.clone(), handle, np, cluster_stop.clone()).map_err(startup)?;
        let t = thread::Builder::new()
            .name("cluster".into())
            .spawn(move || node.run())
            .map_err(|e| startup(format!("thread: {e}")))?;
        cluster_thread = Some(t);
    }

    let mut threads = Vec::with_capacity(n);
    for p in parts {
        let id = p.id;
        let reactor = Reactor::new(p, shared.clone()).map_err(|e| startup(format!("reactor {id}: {e}")))?;
        let t = thread::Builder::new()
            .name(format!("reactor-{id}"))
            .spawn(move || reactor.run())
            .map_err(|e| startup(format!("thread: {e}")))?;
        threads.push(t);
    }
    spawn_signal_thread(shared.clone())?;
    Ok(Running { plain_addr, tls_addr, page_token, shared, threads, writer, cluster_stop, cluster_thread })
}

/// `--bus-publish`.
fn bus_address(config: &Config) -> Option<String> {
    config.bus_publish.clone()
}

/// SIGINT and SIGTERM drain (a second one exits at once); SIGHUP reloads
/// (`reload`: the config file, the TLS and key files), leaving every
/// connection as it is and the old settings in place when the new ones are
/// bad.
fn spawn_signal_thread(shared: Arc<Shared>) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| startup(format!("signals: {e}")))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    // Reading the files here, off the reactors, is what keeps
                    // them from waiting on a disk.
                    let _ = shared.reloader.reload_logged(&shared, "SIGHUP");
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    crate::log::event(Level::Info, "draining", "draining (again to stop at once)", &[]);
                    shared.start_drain();
                } else {
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| startup(format!("thread: {e}")))?;
    Ok(())
}

/// Binds `n` listeners to the same address with SO_REUSEPORT, so the
/// kernel spreads accepts across reactors. Port 0 picks one port for all.
fn bind_group(addr: SocketAddr, n: usize) -> Result<Vec<mio::net::TcpListener>, ServerError> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let l = bind_one(addr).map_err(|e| startup(format!("bind {addr}: {e}")))?;
        if addr.port() == 0 {
            addr = l.local_addr().map_err(|e| startup(format!("bind {addr}: {e}")))?;
        }
        out.push(mio::net::TcpListener::from_std(l));
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

fn local_addr(l: &mio::net::TcpListener) -> Result<SocketAddr, ServerError> {
    l.local_addr().map_err(|e| startup(format!("listener: {e}")))
}

/// How TLS sessions are resumed: the settings `load_tls` needs beside the
/// certificate and key.
#[derive(Debug, Clone, Copy)]
pub struct TlsOptions {
    /// `--tls-session-cache`: entries kept for resumption by session id.
    pub session_cache: usize,
    /// `--tls-tickets`: stateless tickets.
    pub tickets: bool,
}

impl TlsOptions {
    pub fn of(config: &Config) -> TlsOptions {
        TlsOptions { session_cache: config.tls_session_cache, tickets: config.tls_tickets }
    }
}

/// A rustls server config from PEM files (HTTP/1.1 over TLS).
///
/// Resumption: with tickets on, rustls's aws-lc-rs `Ticketer` seals each
/// session into the ticket the client keeps (a new key every 6 hours, the
/// previous one still opening tickets), so a busy edge resumes any number
/// of clients at no memory cost; the session-id cache (a bounded LRU) is
/// what TLS 1.2 clients without ticket support fall back on.
pub fn load_tls(cert: &Path, key: &Path, opts: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| startup(format!("tls-cert {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| startup(format!("tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(startup(format!("tls-cert {}: no certificate found", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| startup(format!("tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| startup(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| startup(format!("tls: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.session_storage = if opts.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(opts.session_cache)
    };
    if opts.tickets {
        cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| startup(format!("tls tickets: {e}")))?;
        // Two tickets per full handshake (rustls's default for TLS 1.3) let
        // a client open two connections on one handshake; each is good for
        // the ticketer's lifetime.
    }
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A reactor that panics takes the whole server down with an error
    /// (exit status 1 in `main`), promptly, instead of leaving it running
    /// without that reactor's rooms and exiting 0 later.
    #[test]
    fn a_panicking_reactor_stops_the_server_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config { threads: 2, jwt_secret: Some(crate::config::JwtSecret::new("s".repeat(32))), ..Config::default() };
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data = dir.path().to_path_buf();
        let running = start(config).unwrap();
        let addr = running.plain_addr;
        // A healthy request first: the server works.
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(running.wait());
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /__test/panic HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        // The drain after a panic is FATAL_DRAIN (2 s) at most.
        let result = rx.recv_timeout(Duration::from_secs(10)).expect("the server did not stop after a panic");
        assert!(matches!(result, Err(ServerError::Fatal(ref why)) if why.contains("panicked")), "{result:?}");
        // It no longer accepts.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
