//! Channels for the helper threads (store-writer, history readers, auth
//! workers, reaper, cluster links and bus): crossbeam's queues, with a
//! receiver that blocks on a condition variable instead of crossbeam's own
//! wait.
//!
//! Why: crossbeam's blocking `recv` backs off with `sched_yield` calls
//! before it parks, and a helper that wakes for every batch (store-writer
//! at hundreds of commits a second) then yields hundreds of times a second
//! on the core a reactor is running on. Here a receiver with nothing to do
//! sleeps in the kernel at once, and a sender pays a fence and a load per
//! message (plus one futex wake when someone sleeps).
//!
//! Ordering hazard (lost wake-up): a sender pushes, then reads `sleepers`;
//! a receiver raises `sleepers`, then tries the queue again. The SeqCst
//! fences on both sides make at least one of them see the other's write,
//! and the receiver holds the lock from that last try until it waits, so a
//! sender that saw it asleep notifies only once it can hear.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crossbeam_channel::{RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};

/// Where receivers of one or more channels sleep, and senders wake them.
#[derive(Default)]
pub struct Bell {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Bell {
    pub fn new() -> Arc<Bell> {
        Arc::new(Bell::default())
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        // The lock guards nothing but the wait itself; a poisoned one is fine.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After something was queued: wakes one sleeper, if any.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            drop(self.guard());
            self.cv.notify_one();
        }
    }

    /// After a sender went away: every sleeper looks again (one of them may
    /// now see its channel disconnected).
    fn ring_all(&self) {
        drop(self.guard());
        self.cv.notify_all();
    }

    /// Calls `attempt` until it returns `Some`, sleeping between tries
    /// until a sender rings; `None` once `timeout` (if any) passed.
    pub fn wait_for<R>(&self, timeout: Option<Duration>, mut attempt: impl FnMut() -> Option<R>) -> Option<R> {
        if let Some(r) = attempt() {
            return Some(r);
        }
        // A timeout too far to represent is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut g = self.guard();
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let got = loop {
            if let Some(r) = attempt() {
                break Some(r);
            }
            match deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break None;
                    }
                    g = self.cv.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(g);
        got
    }
}

/// A bounded channel with its own bell.
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    with_bell(cap, &Bell::new())
}

/// A bounded channel whose receivers sleep on `bell` (shared with other
/// channels, so that one thread can wait on several).
///
/// A capacity of 0 is taken as 1: a rendezvous channel hands a message
/// over only to a receiver blocked in crossbeam's own wait, which these
/// receivers never are.
pub fn with_bell<T>(cap: usize, bell: &Arc<Bell>) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(cap.max(1));
    (Sender { tx: Some(tx), bell: bell.clone() }, Receiver { rx, bell: bell.clone() })
}

/// An unbounded channel: only where something else bounds what is queued.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let bell = Bell::new();
    let (tx, rx) = crossbeam_channel::unbounded();
    (Sender { tx: Some(tx), bell: bell.clone() }, Receiver { rx, bell })
}

pub struct Sender<T> {
    /// `None` only while dropping: the queue's sender goes first, so that a
    /// receiver woken by the drop finds the channel disconnected.
    tx: Option<crossbeam_channel::Sender<T>>,
    bell: Arc<Bell>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender { tx: self.tx.clone(), bell: self.bell.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.bell.ring_all();
    }
}

impl<T> Sender<T> {
    fn inner(&self) -> &crossbeam_channel::Sender<T> {
        // Always `Some` outside `drop`.
        self.tx.as_ref().unwrap_or_else(|| unreachable!("a sender used while dropped"))
    }

    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        self.inner().try_send(v)?;
        self.bell.ring();
        Ok(())
    }

    /// Blocks while the channel is full (crossbeam's wait: senders block
    /// only on rare paths; receivers are the ones that wait all day).
    pub fn send(&self, v: T) -> Result<(), SendError<T>> {
        self.inner().send(v)?;
        self.bell.ring();
        Ok(())
    }

    pub fn send_timeout(&self, v: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.inner().send_timeout(v, timeout)?;
        self.bell.ring();
        Ok(())
    }
}

pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    bell: Arc<Bell>,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver { rx: self.rx.clone(), bell: self.bell.clone() }
    }
}

impl<T> Receiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// `Some` once a message came or every sender is gone.
    fn attempt(&self) -> Option<Result<T, RecvError>> {
        match self.rx.try_recv() {
            Ok(v) => Some(Ok(v)),
            Err(TryRecvError::Disconnected) => Some(Err(RecvError)),
            Err(TryRecvError::Empty) => None,
        }
    }

    pub fn recv(&self) -> Result<T, RecvError> {
        self.bell.wait_for(None, || self.attempt()).unwrap_or(Err(RecvError))
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.bell.wait_for(Some(timeout), || self.attempt()) {
            Some(Ok(v)) => Ok(v),
            Some(Err(RecvError)) => Err(RecvTimeoutError::Disconnected),
            None => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Messages until every sender is gone.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.recv().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_wakes_a_sleeping_receiver() {
        let (tx, rx) = bounded::<u32>(4);
        let t = std::thread::spawn(move || rx.recv());
        std::thread::sleep(Duration::from_millis(20));
        tx.send(7).unwrap();
        assert_eq!(t.join().unwrap(), Ok(7));
    }

    #[test]
    fn the_last_sender_going_wakes_receivers_with_disconnected() {
        let (tx, rx) = bounded::<u32>(4);
        let rx2 = rx.clone();
        let a = std::thread::spawn(move || rx.recv());
        let b = std::thread::spawn(move || rx2.recv_timeout(Duration::from_secs(60)));
        let tx2 = tx.clone();
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        drop(tx2);
        assert_eq!(a.join().unwrap(), Err(RecvError));
        assert_eq!(b.join().unwrap(), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn a_timeout_ends_the_wait_and_queued_messages_come_first() {
        let (tx, rx) = bounded::<u32>(4);
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Err(RecvTimeoutError::Timeout));
        tx.send(1).unwrap();
        drop(tx);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Err(RecvTimeoutError::Disconnected));
        // A timeout past what `Instant` holds waits without one.
        let (tx, rx) = bounded::<u32>(1);
        tx.try_send(2).unwrap();
        assert_eq!(rx.recv_timeout(Duration::MAX), Ok(2));
    }

    /// Many senders and receivers, no message lost or stuck: the lost
    /// wake-up this module guards against would hang a receiver here.
    #[test]
    fn nothing_is_lost_under_contention() {
        let (tx, rx) = bounded::<u64>(8);
        let receivers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || rx.iter().sum::<u64>())
            })
            .collect();
        drop(rx);
        let senders: Vec<_> = (0..4u64)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        tx.send(s * 20_000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for s in senders {
            s.join().unwrap();
        }
        let total: u64 = receivers.into_iter().map(|r| r.join().unwrap()).sum();
        let n = 80_000u64;
        assert_eq!(total, n * (n - 1) / 2);
    }

    /// One thread waiting on two channels through their shared bell.
    #[test]
    fn one_bell_serves_two_channels() {
        let bell = Bell::new();
        let (a_tx, a_rx) = with_bell::<u32>(2, &bell);
        let (b_tx, b_rx) = with_bell::<u32>(2, &bell);
        let t = std::thread::spawn(move || {
            bell.wait_for(Some(Duration::from_secs(30)), || a_rx.try_recv().ok().or_else(|| b_rx.try_recv().ok()))
        });
        std::thread::sleep(Duration::from_millis(20));
        b_tx.send(9).unwrap();
        assert_eq!(t.join().unwrap(), Some(9));
        drop(a_tx);
    }
}
