//! The auth workers: a small pool of threads that serve `/v1/auth/*`
//! (accounts, refresh tokens, OAuth, passkeys) off the event loops.
//!
//! A reactor hands a request over with [`AuthPool::submit`] and goes on;
//! the worker hashes, reads the store, asks a provider, writes through
//! `store-writer` ([`crate::store::write_job`]) and posts the answer back to
//! the reactor as mail (`Mail::Http`), waking it. The queue is bounded: when
//! it is full the reactor answers 503 at once. Nothing here runs on a
//! reactor thread, so any of it may block.
//!
//! Ordering hazard: the pool holds senders of `store-writer`'s channel, so
//! it must be stopped ([`AuthPool::stop`]) before the writer is joined, or
//! the writer never sees its channel close.

use std::net::IpAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::wait::{Sender, TrySendError};

use crate::config::Config;
use crate::proto::http::Request;
use crate::proto::msg;
use crate::store::{Store, WriterCmd};

use super::Auth;

/// Requests waiting per worker before `submit` refuses.
const QUEUE_PER_WORKER: usize = 32;

/// One request for a worker: the parsed request and where it came from.
pub struct AuthRequest {
    pub req: Request,
    /// The peer's address (rate limits count per IP).
    pub ip: Option<IpAddr>,
    /// Whether it came over TLS (cookies are `Secure` only there).
    pub tls: bool,
}

/// An HTTP answer made by a worker.
#[derive(Debug)]
pub struct AuthReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl AuthReply {
    pub fn json(status: u16, value: &serde_json::Value) -> AuthReply {
        AuthReply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// The error shape of every endpoint: `{"error":{"code","message"}}`.
    pub fn error(status: u16, code: &str, message: &str) -> AuthReply {
        AuthReply {
            status,
            content_type: "application/json",
            body: msg::error_json(code, message),
            headers: Vec::new(),
        }
    }

    /// A `302 Found` to `location`, which the caller has made safe.
    pub fn redirect(location: String) -> AuthReply {
        AuthReply { status: 302, content_type: "text/plain", body: Vec::new(), headers: vec![("Location", location)] }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> AuthReply {
        self.headers.push((name, value));
        self
    }
}

/// What a handler may use.
pub struct Ctx<'a> {
    pub auth: &'a Auth,
    pub config: &'a Config,
    pub store: &'a Store,
    /// `store-writer`'s channel: every write goes through it.
    pub writer: &'a Sender<WriterCmd>,
}

/// Serves one `/v1/auth/...` request.
pub fn handle(ctx: &Ctx, r: &AuthRequest) -> AuthReply {
    let rest = r.req.path.strip_prefix("/v1/auth/").unwrap_or("");
    match rest.split_once('/').map_or(rest, |(head, _)| head) {
        "oauth" => super::oauth::handle(ctx, r, rest),
        "passkey" => super::passkey::handle(ctx, r, rest),
        _ => super::accounts::handle(ctx, r, rest),
    }
}

/// Auth workers run only on CPU time the event loops leave over
/// (`SCHED_IDLE`, else nice 10): a storm of sign-ins, each tens of
/// milliseconds of hashing, then slows sign-ins and not the messages of
/// connected clients. A thread's scheduling policy on Linux is its own.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain integers and a pointer to a local that outlives the call.
        let ok = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        if ok {
            return;
        }
    }
    crate::store::lower_priority();
}

/// A job for a worker: it gets the writer's channel.
type Work = Box<dyn FnOnce(&Sender<WriterCmd>) + Send>;

pub struct AuthPool {
    /// `None` once stopped.
    tx: Mutex<Option<Sender<Work>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl AuthPool {
    /// Starts `n` (at least one) threads named `auth-N`, each with its own
    /// sender of `store-writer`'s channel.
    pub fn new(n: usize, writer: &Sender<WriterCmd>) -> std::io::Result<AuthPool> {
        let n = n.max(1);
        let (tx, rx) = crate::wait::bounded::<Work>(n * QUEUE_PER_WORKER);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rx = rx.clone();
            let writer = writer.clone();
            let spawned = std::thread::Builder::new().name(format!("auth-{i}")).spawn(move || {
                idle_priority();
                for work in rx.iter() {
                    work(&writer);
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Dropping `tx` ends the threads already started.
                    drop(tx);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(AuthPool { tx: Mutex::new(Some(tx)), threads: Mutex::new(threads) })
    }

    /// Queues `work`; `false` when the queue is full or the pool stopped
    /// (the caller answers 503).
    pub fn submit(&self, work: impl FnOnce(&Sender<WriterCmd>) + Send + 'static) -> bool {
        let Ok(guard) = self.tx.lock() else { return false };
        match guard.as_ref().map(|tx| tx.try_send(Box::new(work))) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Closes the queue and waits for the workers to finish what they hold.
    pub fn stop(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        // A job's closure may hold the last handle on what owns the pool, so
        // the pool can be dropped on one of its own threads: never join that.
        let me = std::thread::current().id();
        for t in threads.into_iter().filter(|t| t.thread().id() != me) {
            let _ = t.join();
        }
    }
}

impl Drop for AuthPool {
    fn drop(&mut self) {
        self.stop();
    }
}
