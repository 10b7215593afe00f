//! A small pool of reader threads for history pages and replays from disk, so
//! a read of a thousand messages never stalls a reactor's other connections.
//! The queue is bounded: when it is full the caller answers `overloaded`.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

use super::{Store, StoreError, StoredMsg};

/// Called on a reader thread with the page; it must only hand the result on
/// (post it to the reactor and wake it), never block.
pub type ReadReply = Box<dyn FnOnce(Result<(Vec<StoredMsg>, bool), StoreError>) + Send>;

/// Pages waiting per reader thread before `submit` refuses.
const QUEUE_PER_THREAD: usize = 64;

struct Job {
    room: Arc<str>,
    after: Option<u64>,
    before: Option<u64>,
    limit: usize,
    oldest_first: bool,
    reply: ReadReply,
}

pub struct ReaderPool {
    /// `None` only while dropping: closing the channel stops the threads.
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl ReaderPool {
    /// Starts `threads` (at least one) threads named `store-reader-N`.
    pub fn new(store: Store, threads: usize) -> std::io::Result<ReaderPool> {
        let n = threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(n * QUEUE_PER_THREAD);
        let mut pool = ReaderPool { tx: Some(tx), threads: Vec::with_capacity(n) };
        for i in 0..n {
            let rx = rx.clone();
            let store = store.clone();
            // On a spawn error, dropping `pool` stops the threads already started.
            let handle = std::thread::Builder::new().name(format!("store-reader-{i}")).spawn(move || {
                lower_priority();
                for job in rx {
                    let page = store.page(&job.room, job.after, job.before, job.limit, job.oldest_first);
                    (job.reply)(page);
                }
            })?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues one page read ([`Store::page`]); `reply` gets the result on a
    /// reader thread. `Err(())` when the queue is full (the caller answers
    /// `overloaded`).
    #[allow(clippy::result_unit_err)] // the only failure is "full"; there is nothing to carry
    pub fn submit(
        &self,
        room: Arc<str>,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
        oldest_first: bool,
        reply: ReadReply,
    ) -> Result<(), ()> {
        let job = Job { room, after, before, limit, oldest_first, reply };
        match &self.tx {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) | TrySendError::Disconnected(_) => (),
            }),
            None => Err(()),
        }
    }
}

impl Drop for ReaderPool {
    /// Stops the threads after the pages already queued.
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Readers yield the CPU to reactors: a big history read shares a core with
/// the event loops, and it is the loops' latency that everyone feels. On
/// Linux the nice value of `setpriority(PRIO_PROCESS, 0, ..)` is the calling
/// thread's own. Failure leaves the default priority, which is only slower.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}
