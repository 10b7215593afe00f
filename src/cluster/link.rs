//! The nng side of the cluster: one `Pull0` listener per node, whose thread
//! decodes every frame and hands it to the node thread with the pipe it came
//! on, and one `Push0` dialer per peer, whose thread takes everything
//! queued for that peer into one frame (up to `wire::BATCH_BYTES` or
//! `wire::BATCH_ITEMS`, no timer: like group commit) and sends it.
//!
//! nng costs tens of microseconds per message whatever its size, so
//! batching is what makes a link fast. Nothing here blocks the node thread
//! or a reactor: the node thread queues into an unbounded channel whose
//! bytes it counts itself, and marks a peer lagging past its bound
//! (`[cluster] queue-bytes`). `Pub0`/`Bus0` are not used for the stream: they
//! drop under load.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::wait::{Receiver, RecvTimeoutError, Sender};
use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize, RecvTimeout, SendTimeout};
use nng::{Protocol, Socket};

use super::wire::{self, Item};
use super::PeerStats;
use crate::reactor::mail::{ClusterMail, Mail, Mailbox};

/// How long one blocked send waits before the sender looks at its stop
/// flag and its queue's generation; it then tries the same frame again.
const SEND_TIMEOUT: Duration = Duration::from_millis(200);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// The queue to one peer.
#[derive(Clone)]
pub struct Outbound {
    tx: Sender<Item>,
    /// The node thread's own handle on the queue, to empty it when the
    /// peer lags.
    rx: Receiver<Item>,
    /// Bytes queued now (by `wire::size_hint`).
    pub queued: Arc<AtomicUsize>,
    /// Bumped by every `clear`: a frame the sender took before it is
    /// dropped rather than sent late (the peer resyncs anyway).
    gen: Arc<AtomicU64>,
}

impl Outbound {
    pub fn push(&self, item: Item) {
        self.queued.fetch_add(wire::size_hint(&item), Ordering::Relaxed);
        // The sender thread holds the other end until the process stops.
        let _ = self.tx.send(item);
    }

    /// Drops everything queued; returns how many items that was.
    pub fn clear(&self) -> usize {
        self.gen.fetch_add(1, Ordering::SeqCst);
        let mut n = 0;
        while let Ok(item) = self.rx.try_recv() {
            self.queued.fetch_sub(wire::size_hint(&item).min(self.queued.load(Ordering::Relaxed)), Ordering::Relaxed);
            n += 1;
        }
        n
    }

    pub fn bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// Starts the sender thread for the peer at `addr` (dialled in the
/// background: any start order works, and nng reconnects).
pub fn dial(addr: &str, stats: Arc<super::Handle>, peer: usize, stop: Arc<AtomicBool>) -> Result<Outbound, String> {
    let socket = Dialer::new(addr)?;
    let (tx, rx) = crate::wait::unbounded();
    let out = Outbound { tx, rx: rx.clone(), queued: Arc::new(AtomicUsize::new(0)), gen: Arc::new(AtomicU64::new(0)) };
    let (queued, gen) = (out.queued.clone(), out.gen.clone());
    thread::Builder::new()
        .name(format!("cluster-send-{peer}"))
        .spawn({
            let addr = addr.to_string();
            move || send_loop(SendLoop { addr, socket, rx, queued, gen, handle: stats, peer, stop })
        })
        .map_err(|e| format!("cluster: cannot start a sender thread: {e}"))?;
    Ok(out)
}

/// One `Push0` socket dialling a peer, and whether one of its pipes went
/// away since it was made.
///
/// nng-sys 1.4.0-rc.0's push protocol has a race: a send that completes
/// just as its pipe closes puts the pipe back on the socket's ready list,
/// after the close took it off, and the pipe is then freed; the next send
/// picks it and crashes the process (seen when a peer was killed while
/// this node sent to it). So a socket that lost a pipe is never sent on
/// again: it is dropped and a new one dials. The pipe-removed callback
/// runs before nng frees the pipe and takes the same lock a send holds, so
/// no send can start on the old socket once the pipe may be freed.
struct Dialer {
    socket: Socket,
    broken: Arc<Mutex<bool>>,
}

impl Dialer {
    fn new(addr: &str) -> Result<Dialer, String> {
        let socket = Socket::new(Protocol::Push0).map_err(|e| format!("cluster: push socket: {e}"))?;
        let _ = socket.set_opt::<ReconnectMinTime>(Some(Duration::from_millis(50)));
        let _ = socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_millis(500)));
        let _ = socket.set_opt::<SendTimeout>(Some(SEND_TIMEOUT));
        let broken = Arc::new(Mutex::new(false));
        let flag = broken.clone();
        socket
            .pipe_notify(move |_, ev| {
                if ev == nng::PipeEvent::RemovePost {
                    // A poisoned lock: a sender panicked (fatal anyway).
                    if let Ok(mut b) = flag.lock() {
                        *b = true;
                    }
                }
            })
            .map_err(|e| format!("cluster: {e}"))?;
        socket.dial_async(addr).map_err(|e| format!("cluster: cannot dial {addr}: {e}"))?;
        Ok(Dialer { socket, broken })
    }
}

/// What one sender thread owns.
struct SendLoop {
    addr: String,
    socket: Dialer,
    rx: Receiver<Item>,
    queued: Arc<AtomicUsize>,
    gen: Arc<AtomicU64>,
    handle: Arc<super::Handle>,
    peer: usize,
    stop: Arc<AtomicBool>,
}

fn send_loop(l: SendLoop) {
    let SendLoop { addr, mut socket, rx, queued, gen, handle, peer, stop } = l;
    let stats: &PeerStats = match handle.stats.peers.get(peer) {
        Some(s) => s,
        None => return,
    };
    let mut items = Vec::with_capacity(wire::BATCH_ITEMS);
    loop {
        let first = match rx.recv_timeout(POLL) {
            // After a stop, what is queued still goes (leaves of the members
            // that closed in the drain), until the queue is empty.
            Ok(i) => i,
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let taken_at = gen.load(Ordering::SeqCst);
        let mut bytes = wire::size_hint(&first);
        items.push(first);
        while bytes < wire::BATCH_BYTES && items.len() < wire::BATCH_ITEMS {
            match rx.try_recv() {
                Ok(i) => {
                    bytes += wire::size_hint(&i);
                    items.push(i);
                }
                Err(_) => break,
            }
        }
        // What the node thread counted in (it may have emptied the queue
        // meanwhile, so never below zero).
        let _ = queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
        let mut out = MessageWriter(nng::Message::with_capacity(bytes + 64));
        // Appending to an nng message cannot fail.
        let _ = wire::encode_into(&items, &mut out);
        let mut msg = Some(out.0);
        let n = items.len() as u64;
        items.clear();
        // A frame is never dropped from the middle of a link: a lost leave
        // or delivery would go unnoticed. It is tried until it goes, or the
        // queue was cleared meanwhile (the peer lagged or went down: both
        // sides resync), or the server stops.
        while let Some(m) = msg.take() {
            let sent = {
                // Held for the send (see `Dialer`).
                let broken = socket.broken.lock();
                match broken {
                    Ok(b) if !*b => Ok(socket.socket.send(m)),
                    _ => Err(m),
                }
            };
            match sent {
                Err(m) => {
                    // The socket lost a pipe: a new one dials, and the frame
                    // goes on it (the peer takes nothing from the new pipe
                    // before a hello, and resyncs for what the old one lost).
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match Dialer::new(&addr) {
                        Ok(d) => socket = d,
                        Err(_) => thread::sleep(POLL),
                    }
                    msg = Some(m);
                }
                Ok(Ok(())) => {
                    stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                    stats.records_sent.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Err((back, _))) => {
                    stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
                    if gen.load(Ordering::SeqCst) != taken_at || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    msg = Some(back);
                }
            }
        }
    }
}

/// Writes into an nng message (so a frame is encoded where it is sent).
struct MessageWriter(nng::Message);

impl std::io::Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push_back(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Listens at `addr` and starts the thread that hands every frame (decoded,
/// or why not) to the node thread's mailbox.
pub fn listen(addr: &str, node: Mailbox, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<()>, String> {
    let socket = Socket::new(Protocol::Pull0).map_err(|e| format!("cluster: pull socket: {e}"))?;
    let _ = socket.set_opt::<RecvMaxSize>(wire::MAX_FRAME);
    let _ = socket.set_opt::<RecvTimeout>(Some(POLL));
    let gone = node.clone();
    socket
        .pipe_notify(move |pipe, ev| match ev {
            nng::PipeEvent::AddPost => post(&gone, ClusterMail::PipeAdded(pipe)),
            nng::PipeEvent::RemovePost => post(&gone, ClusterMail::PipeGone(pipe)),
            _ => {}
        })
        .map_err(|e| format!("cluster: {e}"))?;
    socket.listen(addr).map_err(|e| format!("cluster: cannot listen on {addr}: {e}"))?;
    thread::Builder::new()
        .name("cluster-recv".into())
        .spawn(move || loop {
            match socket.recv() {
                Ok(mut msg) => {
                    let Some(pipe) = msg.pipe() else { continue };
                    let items = wire::decode(msg.as_slice());
                    post(&node, ClusterMail::Inbound { pipe, items });
                }
                Err(nng::Error::TimedOut) if !stop.load(Ordering::Relaxed) => {}
                Err(nng::Error::TimedOut) | Err(nng::Error::Closed) => return,
                Err(_) => {}
            }
        })
        .map_err(|e| format!("cluster: cannot start the receiver thread: {e}"))
}

/// Closes `pipe`, whatever state nng has it in. `nng::Pipe::close` asserts
/// that the close worked, but a pipe nng has dropped already (its peer hung
/// up meanwhile) answers ENOENT: that would be a panic, and every panic is
/// fatal to the server.
pub fn close_pipe(pipe: nng::Pipe) {
    // SAFETY: `nng_pipe_close` takes the pipe by value (an id into nng's
    // table); an id that no longer names a pipe gets an error, ignored.
    let _ = unsafe { nng::ffi::nng_pipe_close(pipe.nng_pipe()) };
}

/// Blocking is fine here: this is not a reactor, and a node thread that
/// falls behind pushes back on the peers through TCP.
fn post(node: &Mailbox, m: ClusterMail) {
    if node.tx.send(Mail::Cluster(m)).is_ok() {
        node.wake();
    }
}
