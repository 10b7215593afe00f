//! A small pool of reader threads for every storage read a reactor needs
//! (room heads, dedup lookups, replays, history pages), so no reactor thread
//! ever waits on redb. The queue is bounded: when it is full the caller
//! answers `overloaded`.

use std::thread::JoinHandle;

use crate::wait::{Sender, TrySendError};

use super::Store;

/// One read, run on a reader thread: it reads and hands the result on (posts
/// it to a reactor and wakes it), and never waits on a reactor.
pub type ReadWork = Box<dyn FnOnce(&Store) + Send>;

/// Pages waiting per reader thread before `submit` refuses.
const QUEUE_PER_THREAD: usize = 64;
/// Reads a room's owner waits on (heads, dedup lookups, replays) per reader
/// thread before `submit_urgent` refuses.
const URGENT_PER_THREAD: usize = 256;

pub struct ReaderPool {
    /// `None` only while dropping: closing the channels stops the threads.
    tx: Option<Sender<ReadWork>>,
    /// Reads a room waits on, served before any history page: a flood of
    /// history requests must not make cold rooms unloadable.
    urgent: Option<Sender<ReadWork>>,
    threads: Vec<JoinHandle<()>>,
}

impl ReaderPool {
    /// Starts `threads` (at least one) threads named `store-reader-N`.
    pub fn new(store: Store, threads: usize) -> std::io::Result<ReaderPool> {
        let n = threads.max(1);
        // One bell for both queues: a reader sleeps until either has work.
        let bell = crate::wait::Bell::new();
        let (tx, rx) = crate::wait::with_bell::<ReadWork>(n * QUEUE_PER_THREAD, &bell);
        let (utx, urx) = crate::wait::with_bell::<ReadWork>(n * URGENT_PER_THREAD, &bell);
        let mut pool = ReaderPool { tx: Some(tx), urgent: Some(utx), threads: Vec::with_capacity(n) };
        for i in 0..n {
            let (pages, urgent) = (rx.clone(), urx.clone());
            let store = store.clone();
            let bell = bell.clone();
            // On a spawn error, dropping `pool` stops the threads already started.
            let handle = std::thread::Builder::new().name(format!("store-reader-{i}")).spawn(move || {
                lower_priority();
                // Urgent reads first. Both queues close together (drop);
                // what is queued on either is still served before the
                // thread ends.
                // `Some(Some(work))`: work; `Some(None)`: both closed and
                // empty; `None`: nothing yet.
                let next = || {
                    let u = match urgent.try_recv() {
                        Ok(work) => return Some(Some(work)),
                        Err(e) => e,
                    };
                    let p = match pages.try_recv() {
                        Ok(work) => return Some(Some(work)),
                        Err(e) => e,
                    };
                    (u.is_disconnected() && p.is_disconnected()).then_some(None)
                };
                while let Some(Some(work)) = bell.wait_for(None, next) {
                    work(&store);
                }
            })?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues one read. `Err(())` when the queue is full (the caller
    /// answers `overloaded`).
    #[allow(clippy::result_unit_err)] // the only failure is "full"; there is nothing to carry
    pub fn submit(&self, work: ReadWork) -> Result<(), ()> {
        offer(&self.tx, work)
    }

    /// Queues a read a room's owner waits on; served before history pages.
    #[allow(clippy::result_unit_err)] // as `submit`
    pub fn submit_urgent(&self, work: ReadWork) -> Result<(), ()> {
        offer(&self.urgent, work)
    }
}

fn offer(tx: &Option<Sender<ReadWork>>, work: ReadWork) -> Result<(), ()> {
    match tx {
        Some(tx) => tx.try_send(work).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => (),
        }),
        None => Err(()),
    }
}

impl Drop for ReaderPool {
    /// Stops the threads after the pages already queued.
    fn drop(&mut self) {
        self.tx = None;
        self.urgent = None;
        for t in self.threads.drain(..) {
            // The last handle may be dropped by a read on one of these
            // threads: a thread cannot wait for itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Readers yield the CPU to reactors: a big history read shares a core with
/// the event loops, and it is the loops' latency that everyone feels. On
/// Linux the nice value of `setpriority(PRIO_PROCESS, 0, ..)` is the calling
/// thread's own. Failure leaves the default priority, which is only slower.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}
