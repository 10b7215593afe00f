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

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Queued output of a closed (or truncated) connection.
pub type Garbage = VecDeque<Bytes>;

/// Queues with fewer chunks than this are freed inline: handing them over
/// would cost more than freeing them.
pub const INLINE_CHUNKS: usize = 256;
/// Queues waiting for the reaper at most; past it the reactor frees inline.
const CAP: usize = 4096;
/// After this much was freed, and a quiet moment, memory is trimmed.
const TRIM_AFTER_BYTES: usize = 8 << 20;

pub fn spawn() -> std::io::Result<Sender<Garbage>> {
    let (tx, rx) = crossbeam_channel::bounded(CAP);
    std::thread::Builder::new().name("reaper".into()).spawn(move || run(&rx))?;
    Ok(tx)
}

fn run(rx: &Receiver<Garbage>) {
    let mut freed = 0usize;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(g) => {
                freed = freed.saturating_add(g.iter().map(Bytes::len).sum::<usize>());
                freed = freed.saturating_add(g.capacity() * std::mem::size_of::<Bytes>());
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

/// Returns freed heap memory to the system where the allocator keeps it.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no
    // pointers from us and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
