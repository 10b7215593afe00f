//! The byte pipe under one connection: a non-blocking mio `TcpStream`, plain
//! or wrapped in a rustls `ServerConnection` driven by hand, plus the
//! connection's outbound queue.
//!
//! It owns reading into the connection's read buffer and writing the queue
//! out with vectored writes; it knows nothing of HTTP or WebSocket. Shared
//! frames (`Bytes`) sit in the queue as they are: in plain TCP the very bytes
//! encoded once by a room's owner are handed to `writev`; over TLS they are
//! copied into rustls, which encrypts them per connection anyway.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use bytes::Bytes;
use mio::net::TcpStream;

/// How many queued chunks one `writev` call may carry. Linux accepts 1024;
/// 64 keeps the on-stack slice array small and still batches a burst.
const MAX_IOV: usize = 64;

/// Read at most this much per connection per wake-up, so one busy peer cannot
/// starve the others on the same reactor (the loop comes back to it).
pub const READ_BUDGET: usize = 64 * 1024;

/// Bytes waiting to go out, in order. The front chunk may be partly written.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    /// Bytes of the front chunk already written.
    front_off: usize,
    /// Unwritten bytes in the queue.
    len: usize,
}

impl OutQueue {
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        self.chunks.push_back(b);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes out every chunk that has not started going out, keeping the
    /// one partly written (cutting it would corrupt the frame stream), and
    /// returns them (the caller decides where they are freed). Used before
    /// a slow consumer's close frame.
    pub fn truncate_unstarted(&mut self) -> VecDeque<Bytes> {
        // The whole deque is handed out (no copy of its tens of thousands
        // of entries); only a partly written front chunk comes back.
        let mut dropped = std::mem::take(&mut self.chunks);
        if self.front_off > 0 {
            if let Some(front) = dropped.pop_front() {
                self.chunks.push_back(front);
            }
        }
        self.len = self.chunks.front().map_or(0, |c| c.len() - self.front_off);
        dropped
    }

    /// Takes every chunk out, leaving the queue empty.
    pub fn take_all(&mut self) -> VecDeque<Bytes> {
        self.len = 0;
        self.front_off = 0;
        std::mem::take(&mut self.chunks)
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.front_off;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.front_off = 0;
            } else {
                self.front_off += n;
                n = 0;
            }
        }
    }
}

/// Outcome of one read call.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were put at the front of the buffer.
    Data(usize),
    /// Nothing more for now; the next readiness edge brings us back.
    WouldBlock,
    /// The peer closed its side (for TLS: close_notify or a bare TCP close).
    Eof,
}

/// Outcome of a write pass.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Everything queued went out.
    Done,
    /// The socket is full; a `WRITABLE` edge will bring us back.
    Blocked,
    /// The write budget of this pass is spent with more queued: the caller
    /// comes back next loop iteration, so one pass over many connections
    /// with deep queues stays short.
    Budget,
}

pub enum Transport {
    Plain(TcpStream),
    Tls(TcpStream, Box<TlsConn>),
    /// An in-memory pipe with no socket under it: the test and fuzz harness
    /// (`crate::testkit`) drives a whole connection through it.
    Mem(Box<MemPipe>),
}

/// A rustls server connection and what the reactor tracks beside it.
pub struct TlsConn {
    pub tls: rustls::ServerConnection,
    /// The first byte from the peer was seen to open a TLS handshake record.
    /// Until then every read peeks at it first: plaintext (an `http://`
    /// request sent to the TLS port) is refused at once, not left to wait
    /// for rustls to make sense of it.
    pub opened: bool,
    /// The finished handshake was counted (full or resumed).
    pub counted: bool,
}

impl TlsConn {
    pub fn new(tls: rustls::ServerConnection) -> TlsConn {
        TlsConn { tls, opened: false, counted: false }
    }
}

impl std::ops::Deref for TlsConn {
    type Target = rustls::ServerConnection;
    fn deref(&self) -> &rustls::ServerConnection {
        &self.tls
    }
}

impl std::ops::DerefMut for TlsConn {
    fn deref_mut(&mut self) -> &mut rustls::ServerConnection {
        &mut self.tls
    }
}

/// The content type of a TLS handshake record, the first byte a TLS client
/// sends (RFC 8446 section 5.1; the same in TLS 1.2).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Both directions of an in-memory connection, as the harness sees them.
#[derive(Debug, Default)]
pub struct MemPipe {
    /// Bytes the peer sent that the reactor has not read yet.
    pub input: VecDeque<u8>,
    /// The peer closed its sending side (after `input` is read: EOF).
    pub eof: bool,
    /// Bytes the reactor wrote, not yet taken by the harness.
    pub output: Vec<u8>,
    /// How many more bytes the "socket" accepts before a write would block.
    pub write_room: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The first byte on the TLS port was not a TLS record: plaintext.
    #[error("tls: the peer did not open with a TLS handshake record")]
    NotTls,
}

impl Transport {
    /// The socket under the connection (none for an in-memory pipe).
    pub fn socket(&mut self) -> Option<&mut TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(s, _) => Some(s),
            Transport::Mem(_) => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(..))
    }

    /// Reads some bytes into the front of `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<ReadOutcome, TransportError> {
        match self {
            Transport::Plain(sock) => read_plain(sock, buf),
            Transport::Tls(sock, tls) => read_tls(sock, tls, buf),
            Transport::Mem(pipe) => Ok(read_mem(pipe, buf)),
        }
    }

    /// True when rustls has handshake or alert bytes of its own to send.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) | Transport::Mem(_) => false,
            Transport::Tls(_, tls) => tls.wants_write(),
        }
    }

    /// Writes the queue out until it is empty, the socket is full, or
    /// about `budget` bytes went out.
    pub fn flush(&mut self, q: &mut OutQueue, budget: usize) -> Result<(WriteOutcome, usize), TransportError> {
        match self {
            Transport::Plain(sock) => flush_plain(sock, q, budget),
            Transport::Tls(sock, tls) => flush_tls(sock, tls, q, budget),
            Transport::Mem(pipe) => Ok(flush_mem(pipe, q, budget)),
        }
    }
}

fn read_plain(sock: &mut TcpStream, buf: &mut [u8]) -> Result<ReadOutcome, TransportError> {
    loop {
        match sock.read(buf) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => return Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_tls(sock: &mut TcpStream, tls: &mut TlsConn, buf: &mut [u8]) -> Result<ReadOutcome, TransportError> {
    if !tls.opened {
        let mut first = [0u8; 1];
        match sock.peek(&mut first) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => tls.opened = true,
            Ok(_) => return Err(TransportError::NotTls),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        // Plaintext rustls already decrypted comes first: the socket will not
        // signal readiness for it again (redis tls.c's pending_list hazard).
        match tls.reader().read(buf) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => return Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadOutcome::Eof),
            Err(e) => return Err(e.into()),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            // On a TLS error rustls queues an alert; the caller flushes once
            // more before closing so the peer learns why.
            Ok(_) => {
                tls.process_new_packets()?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_mem(pipe: &mut MemPipe, buf: &mut [u8]) -> ReadOutcome {
    if pipe.input.is_empty() {
        return if pipe.eof { ReadOutcome::Eof } else { ReadOutcome::WouldBlock };
    }
    let n = buf.len().min(pipe.input.len());
    for (dst, src) in buf.iter_mut().zip(pipe.input.drain(..n)) {
        *dst = src;
    }
    ReadOutcome::Data(n)
}

fn flush_mem(pipe: &mut MemPipe, q: &mut OutQueue, budget: usize) -> (WriteOutcome, usize) {
    let mut total = 0;
    while let Some(front) = q.chunks.front() {
        if total >= budget {
            return (WriteOutcome::Budget, total);
        }
        let chunk = &front[q.front_off..];
        let n = chunk.len().min(pipe.write_room);
        if n == 0 {
            return (WriteOutcome::Blocked, total);
        }
        pipe.output.extend_from_slice(&chunk[..n]);
        pipe.write_room -= n;
        q.advance(n);
        total += n;
    }
    (WriteOutcome::Done, total)
}

fn flush_plain(sock: &mut TcpStream, q: &mut OutQueue, budget: usize) -> Result<(WriteOutcome, usize), TransportError> {
    let mut total = 0;
    while !q.is_empty() {
        if total >= budget {
            return Ok((WriteOutcome::Budget, total));
        }
        let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (i, c) in q.chunks.iter().take(MAX_IOV).enumerate() {
            let s = if i == 0 { &c[q.front_off..] } else { &c[..] };
            iov[i] = IoSlice::new(s);
            n += 1;
        }
        match send_vectored(sock, &iov[..n]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(w) => {
                q.advance(w);
                total += w;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((WriteOutcome::Blocked, total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((WriteOutcome::Done, total))
}

/// Writes `iov` to the socket with `send` (one chunk) or `sendmsg`, not
/// `write`/`writev`: those go through the VFS and take the file-position
/// lock, which a socket has no use for. `MSG_NOSIGNAL`: a peer gone away is
/// an error here, never a SIGPIPE.
#[cfg(unix)]
fn send_vectored(sock: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let n = match iov {
        [one] => {
            // SAFETY: the pointer and length come from a live slice, which
            // the kernel only reads.
            unsafe { libc::send(fd, one.as_ptr().cast(), one.len(), libc::MSG_NOSIGNAL) }
        }
        _ => {
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (a
            // documented guarantee); the array outlives the call and the
            // kernel only reads it. The rest of `msghdr` is zero: no
            // address, no control data.
            unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
            }
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(not(unix))]
fn send_vectored(sock: &mut TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    sock.write_vectored(iov)
}

fn flush_tls(
    sock: &mut TcpStream,
    tls: &mut TlsConn,
    q: &mut OutQueue,
    budget: usize,
) -> Result<(WriteOutcome, usize), TransportError> {
    let mut total = 0;
    loop {
        if total >= budget && !q.is_empty() {
            return Ok((WriteOutcome::Budget, total));
        }
        // Hand plaintext to rustls while it takes it (its buffer limit bounds
        // how far ahead of the socket we encrypt). Several frames at once:
        // rustls seals what one call gives it into as few records as fit
        // (16 KiB each), where a call per frame would cost a record each
        // (a header, a tag and an AEAD pass per delivery).
        while !q.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in q.chunks.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &c[q.front_off..] } else { &c[..] });
                n += 1;
            }
            let took = tls.writer().write_vectored(&iov[..n])?;
            if took == 0 {
                break;
            }
            q.advance(took);
        }
        if !tls.wants_write() {
            return Ok((WriteOutcome::Done, total));
        }
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(w) => total += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((WriteOutcome::Blocked, total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_advance_across_chunks() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b""));
        q.push(Bytes::from_static(b"defg"));
        assert_eq!(q.len(), 7);
        q.advance(4);
        assert_eq!(q.len(), 3);
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.front_off, 1);
        assert_eq!(q.truncate_unstarted().len(), 0);
        assert_eq!(q.len(), 3);
        q.push(Bytes::from_static(b"hi"));
        assert_eq!(q.truncate_unstarted().len(), 1);
        assert_eq!(q.len(), 3);
        q.advance(3);
        assert!(q.is_empty());
    }
}
