//! The reaper: a thread that frees what closed connections leave behind.
//!
//! A slow consumer closed with 4000 can hold tens of thousands of queued
//! frames. Letting go of them is one atomic decrement each (the frames are
//! shared) plus the free of the queue itself: tens of milliseconds for a
//! few hundred such connections, which would stall every healthy
//! connection on the reactor. The reactor hands such queues here instead,
//! and after a burst of frees the reaper asks the allocator to give the
//! memory back to the system (glibc keeps freed memory otherwise).
//!
//! What counts towards that trim is everything let go of, wherever it was
//! freed: the garbage handed over here, and the small queues a reactor frees
//! inline (it adds their bytes to `Reaper::released`). Counting only the
//! handed-over garbage missed the common case of many connections with
//! short queues of large shared frames, whose memory then stayed with the
//! process.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wait::{Receiver, RecvTimeoutError, Sender};
use bytes::Bytes;

/// What a reactor hands over to be freed.
pub enum Garbage {
    /// Queued output of a closed (or truncated) connection.
    Queue(VecDeque<Bytes>),
    /// Rooms forgotten for being idle, with their tails.
    Rooms(Vec<crate::rooms::OwnedRoom>),
}

impl Garbage {
    /// Roughly how many bytes freeing it gives back.
    fn bytes(&self) -> usize {
        match self {
            Garbage::Queue(q) => queue_bytes(q),
            Garbage::Rooms(r) => r.iter().map(|r| 512 + r.tail_bytes()).sum(),
        }
    }
}

/// Queues with fewer chunks than this are freed inline: handing them over
/// would cost more than freeing them.
pub const INLINE_CHUNKS: usize = 256;
/// Queues waiting for the reaper at most; past it the reactor frees inline.
const CAP: usize = 4096;
/// After this much was freed, and a quiet moment, memory is trimmed. A trim
/// with little to give back costs a walk of the allocator's free lists
/// (well under a millisecond at these heap sizes); `TRIM_EVERY` bounds how
/// often that walk runs.
const TRIM_AFTER_BYTES: usize = 256 << 10;
/// Trims at most this often, however much is freed.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How long the reaper waits for garbage before it looks at what was freed.
const QUIET: Duration = Duration::from_millis(200);

/// The reactors' side of the reaper.
#[derive(Clone)]
pub struct Reaper {
    tx: Sender<Garbage>,
    /// Bytes the reactors freed inline since the reaper last looked.
    released: Arc<AtomicUsize>,
}

impl Reaper {
    /// Hands garbage over. When the reaper is full (or gone) it is freed
    /// here, on the caller's thread, and counted.
    pub fn hand_over(&self, garbage: Garbage) {
        if let Err(e) = self.tx.try_send(garbage) {
            // Freed here after all, when `e` drops.
            self.released(e.into_inner().bytes());
        }
    }

    /// Counts bytes a reactor freed itself.
    pub fn released(&self, bytes: usize) {
        if bytes > 0 {
            self.released.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Bytes a queue of frames gives back (shared frames are counted whole:
/// the trim is a heuristic, and overcounting only trims sooner).
pub fn queue_bytes(q: &VecDeque<Bytes>) -> usize {
    q.iter().map(Bytes::len).sum::<usize>() + q.capacity() * std::mem::size_of::<Bytes>()
}

pub fn spawn() -> std::io::Result<Reaper> {
    let (tx, rx) = crate::wait::bounded(CAP);
    let released = Arc::new(AtomicUsize::new(0));
    let counted = released.clone();
    std::thread::Builder::new().name("reaper".into()).spawn(move || run(&rx, &counted))?;
    Ok(Reaper { tx, released })
}

fn run(rx: &Receiver<Garbage>, released: &AtomicUsize) {
    // Like the history readers: on a shared core the reactors come first.
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours; on Linux, who 0 is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
    let mut freed = 0usize;
    let mut last_trim: Option<Instant> = None;
    loop {
        match rx.recv_timeout(QUIET) {
            Ok(g) => {
                freed = freed.saturating_add(g.bytes());
                drop(g);
            }
            Err(RecvTimeoutError::Timeout) => {
                freed = freed.saturating_add(released.swap(0, Ordering::Relaxed));
                let due = last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY);
                if freed >= TRIM_AFTER_BYTES && due {
                    trim();
                    freed = 0;
                    last_trim = Some(Instant::now());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Allocator settings for a server: buffers of 128 KiB or more (deep
/// output queues, big tails) are mapped on their own and unmapped when
/// freed, and free memory at the top of the heap is given back past 1 MiB.
/// glibc otherwise raises its mapping threshold after such frees and keeps
/// the memory.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's tunables; it is called before the
    // server's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns freed heap memory to the system where the allocator keeps it.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no
    // pointers from us and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(frames: usize, len: usize) -> VecDeque<Bytes> {
        let frame = Bytes::from(vec![7u8; len]);
        (0..frames).map(|_| frame.clone()).collect()
    }

    #[test]
    fn garbage_the_reaper_cannot_take_is_counted_where_it_is_freed() {
        // A channel of one, already full: the next hand-over fails.
        let (tx, _rx) = crate::wait::bounded(1);
        let r = Reaper { tx, released: Arc::new(AtomicUsize::new(0)) };
        r.hand_over(Garbage::Queue(queue(1, 1)));
        assert_eq!(r.released.load(Ordering::Relaxed), 0, "the first one was taken");
        let q = queue(300, 16 << 10);
        let expected = queue_bytes(&q);
        r.hand_over(Garbage::Queue(q));
        assert_eq!(r.released.load(Ordering::Relaxed), expected);
        assert!(expected >= 300 * (16 << 10));
    }

    #[test]
    fn inline_frees_add_up_and_nothing_counts_as_nothing() {
        let (tx, _rx) = crate::wait::bounded(1);
        let r = Reaper { tx, released: Arc::new(AtomicUsize::new(0)) };
        r.released(0);
        assert_eq!(r.released.load(Ordering::Relaxed), 0);
        for _ in 0..20 {
            r.released(queue_bytes(&queue(64, 16 << 10)));
        }
        // Twenty closed slow consumers with 1 MiB queues: past the trim mark.
        assert!(r.released.load(Ordering::Relaxed) >= 20 << 20);
        assert!(r.released.load(Ordering::Relaxed) >= TRIM_AFTER_BYTES);
    }
}
