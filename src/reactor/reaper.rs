//! The reaper: a thread that frees what closed connections leave behind.
//!
//! A slow consumer closed with 4000 can hold tens of thousands of queued
//! frames. Letting go of them is one atomic decrement each (the frames are
//! shared) plus the free of the queue itself: tens of milliseconds for a
//! few hundred such connections, which would stall every healthy
//! connection on the reactor. The reactor hands such queues here instead,
//! and after a burst of frees the reaper asks the allocator to give the
//! memory back to the system (glibc keeps freed memory otherwise).

use std::collections::VecDeque;
use std::time::Duration;

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
            Garbage::Queue(q) => q.iter().map(Bytes::len).sum::<usize>() + q.capacity() * std::mem::size_of::<Bytes>(),
            Garbage::Rooms(r) => r.iter().map(|r| 512 + r.tail_bytes()).sum(),
        }
    }
}

/// Queues with fewer chunks than this are freed inline: handing them over
/// would cost more than freeing them.
pub const INLINE_CHUNKS: usize = 256;
/// Queues waiting for the reaper at most; past it the reactor frees inline.
const CAP: usize = 4096;
/// After this much was freed, and a quiet moment, memory is trimmed.
const TRIM_AFTER_BYTES: usize = 8 << 20;

pub fn spawn() -> std::io::Result<Sender<Garbage>> {
    let (tx, rx) = crate::wait::bounded(CAP);
    std::thread::Builder::new().name("reaper".into()).spawn(move || run(&rx))?;
    Ok(tx)
}

fn run(rx: &Receiver<Garbage>) {
    // Like the history readers: on a shared core the reactors come first.
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours; on Linux, who 0 is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
    let mut freed = 0usize;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(g) => {
                freed = freed.saturating_add(g.bytes());
                drop(g);
            }
            Err(RecvTimeoutError::Timeout) => {
                if freed >= TRIM_AFTER_BYTES {
                    trim();
                    freed = 0;
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
