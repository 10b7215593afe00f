//! `nng_bench`: what nng alone carries between two threads of one process,
//! the ceiling of a cluster link. A Push0 socket sends fixed-size records
//! to a Pull0 socket over `ipc://` and `tcp://127.0.0.1`, either one record
//! per nng message or packed into batches of up to `--batch-bytes` (each
//! record behind a 4-byte length, as a sender would frame them without Cap'n
//! Proto). The receiver splits batches back into records and checks every
//! record's sequence number, so a lost or reordered one fails the run.
//!
//! Each of the four runs stops after `--records` records or `--seconds`,
//! whichever comes first; nothing leaves the machine (loopback and a socket
//! file under the temp directory).
//!
//!     cargo run --release -p roomcast-loadtest --bin nng_bench -- --records 2000000

use std::net::TcpListener;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use nng::options::{Options, RecvBufferSize, RecvMaxSize, RecvTimeout, SendBufferSize, SendTimeout};
use nng::{Protocol, Socket};

#[derive(Parser)]
#[command(name = "nng_bench", about = "Push0/Pull0 throughput over ipc:// and tcp://127.0.0.1, unbatched and batched.")]
struct Args {
    /// Records per run (the unbatched runs stop earlier on --seconds).
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Bytes per record (at least 8: the sequence number).
    #[arg(long, default_value_t = 150)]
    record_bytes: usize,
    /// Largest batch message, in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    batch_bytes: usize,
    /// Time limit of each run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Depth of both sockets' message buffers (nng allows 0 to 8192).
    #[arg(long, default_value_t = 128)]
    buffer: i32,
    /// CPU to pin the sending thread to.
    #[arg(long)]
    sender_cpu: Option<usize>,
    /// CPU to pin the receiving thread to.
    #[arg(long)]
    receiver_cpu: Option<usize>,
    /// Only these transports (`ipc`, `tcp`).
    #[arg(long, value_delimiter = ',', default_value = "ipc,tcp")]
    transports: Vec<String>,
}

/// What one run measured.
struct Outcome {
    records: u64,
    messages: u64,
    bytes: u64,
    secs: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.record_bytes < 8 || args.record_bytes + 4 > args.batch_bytes || args.records == 0 {
        eprintln!("nng_bench: need 8 <= --record-bytes, --record-bytes + 4 <= --batch-bytes and --records > 0");
        return ExitCode::from(2);
    }
    let per_batch = args.batch_bytes / (args.record_bytes + 4);
    println!(
        "nng_bench: Push0 -> Pull0, {} B records, batches of {} records ({} B), buffers {} messages, at most {} records or {} s a run",
        args.record_bytes,
        per_batch,
        per_batch * (args.record_bytes + 4),
        args.buffer,
        args.records,
        args.seconds
    );
    println!(
        "{:<5} {:<10} {:>10} {:>10} {:>7} {:>12} {:>11} {:>9}",
        "link", "mode", "records", "messages", "secs", "records/s", "messages/s", "MB/s"
    );
    let mut failed = false;
    for transport in &args.transports {
        for batched in [false, true] {
            let url = match url(transport) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("nng_bench: {transport}: {e}");
                    return ExitCode::from(2);
                }
            };
            let mode = if batched { "batch" } else { "one/msg" };
            match run(&args, &url, batched) {
                Ok(o) => println!(
                    "{:<5} {:<10} {:>10} {:>10} {:>7.2} {:>12.0} {:>11.0} {:>9.1}",
                    transport,
                    mode,
                    o.records,
                    o.messages,
                    o.secs,
                    o.records as f64 / o.secs,
                    o.messages as f64 / o.secs,
                    o.bytes as f64 / o.secs / 1e6
                ),
                Err(e) => {
                    eprintln!("nng_bench: {transport} {mode}: {e}");
                    failed = true;
                }
            }
            if let Some(path) = url.strip_prefix("ipc://") {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn url(transport: &str) -> Result<String, String> {
    match transport {
        "ipc" => {
            let path = std::env::temp_dir().join(format!("roomcast-nng-bench-{}.ipc", std::process::id()));
            Ok(format!("ipc://{}", path.display()))
        }
        "tcp" => {
            // A free loopback port: bound, noted, released for nng.
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
            Ok(format!("tcp://127.0.0.1:{port}"))
        }
        other => Err(format!("unknown transport {other:?} (ipc or tcp)")),
    }
}

fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity only read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("nng_bench: cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
}

fn socket(protocol: Protocol, args: &Args, timeout: Duration) -> Result<Socket, nng::Error> {
    let s = Socket::new(protocol)?;
    s.set_opt::<SendBufferSize>(args.buffer)?;
    s.set_opt::<RecvBufferSize>(args.buffer)?;
    s.set_opt::<RecvMaxSize>(args.batch_bytes.max(1 << 20))?;
    s.set_opt::<SendTimeout>(Some(timeout))?;
    s.set_opt::<RecvTimeout>(Some(timeout))?;
    Ok(s)
}

fn run(args: &Args, url: &str, batched: bool) -> Result<Outcome, String> {
    let limit = Duration::from_secs(args.seconds);
    // A stalled peer ends a blocked call in a second, so a run never hangs.
    let timeout = Duration::from_secs(1);
    let pull = socket(Protocol::Pull0, args, timeout).map_err(|e| format!("pull socket: {e}"))?;
    let push = socket(Protocol::Push0, args, timeout).map_err(|e| format!("push socket: {e}"))?;
    pull.listen(url).map_err(|e| format!("listen {url}: {e}"))?;
    push.dial(url).map_err(|e| format!("dial {url}: {e}"))?;
    let record_bytes = args.record_bytes;
    let per_batch = if batched { args.batch_bytes / (record_bytes + 4) } else { 1 };
    let want = args.records;
    let sender_cpu = args.sender_cpu;
    let start = Instant::now();
    let deadline = start.checked_add(limit).ok_or("--seconds is too large")?;

    let sender = thread::spawn(move || -> Result<u64, String> {
        pin(sender_cpu);
        let mut record = vec![0x5a_u8; record_bytes];
        let mut seq = 0u64;
        let mut messages = 0u64;
        while seq < want && Instant::now() < deadline {
            let n = (want - seq).min(per_batch as u64);
            let msg = if batched {
                let mut m = nng::Message::with_capacity(n as usize * (record_bytes + 4));
                for _ in 0..n {
                    record[..8].copy_from_slice(&seq.to_le_bytes());
                    m.push_back(&(record_bytes as u32).to_le_bytes());
                    m.push_back(&record);
                    seq += 1;
                }
                m
            } else {
                record[..8].copy_from_slice(&seq.to_le_bytes());
                seq += 1;
                nng::Message::from(&record[..])
            };
            // A message that timed out is sent again: its records are
            // numbered already.
            let mut msg = msg;
            loop {
                match push.send(msg) {
                    Ok(()) => break,
                    Err((m, nng::Error::TimedOut)) if Instant::now() < deadline => msg = m,
                    Err((_, nng::Error::TimedOut)) => return Ok(messages),
                    Err((_, e)) => return Err(format!("send: {e}")),
                }
            }
            messages += 1;
        }
        // Closing at once could drop what is still buffered: the receiver
        // closes the run.
        thread::sleep(timeout);
        Ok(messages)
    });

    pin(args.receiver_cpu);
    let mut records = 0u64;
    let mut messages = 0u64;
    let mut bytes = 0u64;
    let mut last = start;
    let mut error = None;
    while records < want && Instant::now() < deadline {
        let msg = match pull.recv() {
            Ok(m) => m,
            Err(nng::Error::TimedOut) => continue,
            Err(e) => {
                error = Some(format!("recv: {e}"));
                break;
            }
        };
        last = Instant::now();
        messages += 1;
        bytes += msg.len() as u64;
        let got = if batched { split(msg.as_slice(), records) } else { check(msg.as_slice(), records).map(|()| 1) };
        match got {
            Ok(n) => records += n,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    pull.close();
    let sent = sender.join().map_err(|_| "the sending thread panicked".to_string())??;
    if let Some(e) = error {
        return Err(e);
    }
    if messages > sent {
        return Err(format!("received {messages} messages of {sent} sent"));
    }
    let secs = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok(Outcome { records, messages, bytes, secs })
}

/// Checks that `record` carries sequence number `seq`.
fn check(record: &[u8], seq: u64) -> Result<(), String> {
    let got = record.first_chunk::<8>().map(|b| u64::from_le_bytes(*b));
    if got != Some(seq) {
        return Err(format!("record {seq} arrived as {got:?}"));
    }
    Ok(())
}

/// Splits a batch into its records, checking their order; the count.
fn split(mut batch: &[u8], first: u64) -> Result<u64, String> {
    let mut n = 0;
    while !batch.is_empty() {
        let (len, rest) = batch.split_first_chunk::<4>().ok_or("a torn record length")?;
        let len = u32::from_le_bytes(*len) as usize;
        let record = rest.get(..len).ok_or("a record past its batch's end")?;
        check(record, first + n)?;
        batch = &rest[len..];
        n += 1;
    }
    Ok(n)
}
