//! Structured logs: one line per event, as text (the human lines of a
//! terminal), JSON or logfmt, filtered by level. Lines are formatted by the
//! thread that has the event and written by the `log` thread alone, through
//! a bounded queue: a reactor never waits on a slow or full log pipe. When
//! the queue is full the line is dropped and counted
//! (`roomcast_log_dropped_total`), and the `log` thread says how many it
//! lost once it can write again.
//!
//! What goes in a line is the caller's choice, and callers never pass a
//! token, a secret or a query string: paths are logged without their query,
//! refusals by reason code.
//!
//! Before [`init`] (the other subcommands, unit tests) events are written
//! straight to stderr as text.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Deserialize;

use crate::wait::{Receiver, RecvTimeoutError, Sender, TrySendError};

/// Lines waiting for the `log` thread; past this they are dropped.
const QUEUE: usize = 8192;

/// How bad an event is; a logger at level L writes events of L and above.
// No doc comments on the variants: clap would list them under the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Level as ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| format!("{s:?} is not one of off, error, warn, info, debug"))
    }
}

/// The shape of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
    Logfmt,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Logfmt => "logfmt",
        })
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Format as ValueEnum>::from_str(s.trim(), true).map_err(|_| format!("{s:?} is not one of text, json, logfmt"))
    }
}

/// A field's value: numbers stay numbers in JSON.
#[derive(Clone, Copy)]
pub enum Val<'a> {
    Str(&'a str),
    Num(u64),
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(s: &'a str) -> Val<'a> {
        Val::Str(s)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(s: &'a String) -> Val<'a> {
        Val::Str(s)
    }
}

macro_rules! num_val {
    ($($t:ty),*) => {$(
        impl From<$t> for Val<'_> {
            fn from(n: $t) -> Self {
                Val::Num(n as u64)
            }
        }
    )*};
}
num_val!(u64, u32, u16, u8, usize);

enum Msg {
    /// A formatted line, and whether text mode sends it to stdout (the lines
    /// that say where the server listens, which tools wait for).
    Line(String, bool),
    Flush(Sender<()>),
}

struct Logger {
    tx: Sender<Msg>,
    format: Format,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
/// The level, apart from the logger so that a reload can change it.
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Starts the `log` thread (once per process; later calls only set the
/// level). Returns an error when the thread cannot be started.
pub fn init(format: Format, level: Level) -> std::io::Result<()> {
    set_level(level);
    if LOGGER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = crate::wait::bounded(QUEUE);
    std::thread::Builder::new().name("log".into()).spawn(move || write_lines(rx, format))?;
    let _ = LOGGER.set(Logger { tx, format });
    Ok(())
}

/// Changes the level of a running logger (a reload).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Relaxed);
}

/// Whether an event of `level` would be written: callers with costly
/// fields check first.
pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 <= LEVEL.load(Relaxed)
}

/// Lines dropped because the queue was full, for `/metrics`.
pub fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

/// Logs one event: `event` is a stable name (`listening`, `upgrade_refused`,
/// ...), `msg` the human sentence (the whole line in text mode), `fields`
/// its facts.
pub fn event(level: Level, event: &str, msg: &str, fields: &[(&str, Val<'_>)]) {
    emit(level, event, msg, fields, false);
}

/// [`event`] for the lines that say where the server listens (and that it
/// stopped): in text mode they go to stdout, as they always have, and they
/// are written whatever the level, since tools wait for them.
pub fn announce(event: &str, msg: &str, fields: &[(&str, Val<'_>)]) {
    emit(Level::Info, event, msg, fields, true);
}

fn emit(level: Level, event: &str, msg: &str, fields: &[(&str, Val<'_>)], stdout: bool) {
    // Where the server listens is said at every level: tools wait for it.
    if !stdout && !enabled(level) {
        return;
    }
    let Some(logger) = LOGGER.get() else {
        eprintln!("roomcast: {msg}");
        return;
    };
    let line = format_line(logger.format, SystemTime::now(), level, event, msg, fields);
    match logger.tx.try_send(Msg::Line(line, stdout)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Relaxed);
        }
    }
}

/// A last error before the process exits: through the logger when `serve`
/// started it (so that it is JSON or logfmt like the rest), else as a plain
/// line on stderr.
pub fn fatal(msg: &str) {
    if LOGGER.get().is_some() && enabled(Level::Error) {
        event(Level::Error, "fatal", msg, &[]);
        flush(Duration::from_secs(2));
    } else {
        eprintln!("roomcast: {msg}");
    }
}

/// Waits (up to `timeout`) until every line logged before it is written:
/// the last thing `serve` does before the process exits.
pub fn flush(timeout: Duration) {
    let Some(logger) = LOGGER.get() else { return };
    let (tx, rx) = crate::wait::bounded(1);
    if logger.tx.send_timeout(Msg::Flush(tx), timeout).is_ok() {
        let _ = rx.recv_timeout(timeout);
    }
}

fn write_lines(rx: Receiver<Msg>, format: Format) {
    let mut reported = 0;
    loop {
        let msg = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let lost = DROPPED.load(Relaxed);
        if lost > reported {
            let msg = format!("{} log lines dropped: the log output did not keep up", lost - reported);
            let line = format_line(
                format,
                SystemTime::now(),
                Level::Warn,
                "log_dropped",
                &msg,
                &[("dropped", Val::Num(lost - reported))],
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            reported = lost;
        }
        // What else is queued goes out in the same write (up to a bound):
        // a burst of events costs a few writes, not one each.
        let mut batch = String::new();
        let mut next = msg;
        while let Some(m) = next.take() {
            match m {
                Msg::Line(line, stdout) if stdout && format == Format::Text => {
                    write_out(&mut batch, false);
                    batch.push_str(&line);
                    write_out(&mut batch, true);
                }
                Msg::Line(line, _) => batch.push_str(&line),
                Msg::Flush(done) => {
                    write_out(&mut batch, false);
                    let _ = std::io::stdout().flush();
                    let _ = done.try_send(());
                }
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        write_out(&mut batch, false);
    }
}

/// Bytes of lines gathered into one write.
const BATCH: usize = 64 * 1024;

/// Writes `batch` to stdout or stderr and empties it. A write that fails
/// (a closed pipe) loses the lines; there is nowhere better to say so.
fn write_out(batch: &mut String, stdout: bool) {
    if batch.is_empty() {
        return;
    }
    if stdout {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(batch.as_bytes());
        let _ = out.flush();
    } else {
        let _ = std::io::stderr().lock().write_all(batch.as_bytes());
    }
    batch.clear();
}

/// One line, newline included.
pub fn format_line(
    format: Format,
    at: SystemTime,
    level: Level,
    event: &str,
    msg: &str,
    fields: &[(&str, Val<'_>)],
) -> String {
    let mut out = String::with_capacity(96 + msg.len());
    match format {
        Format::Text => {
            out.push_str("roomcast: ");
            push_clean(&mut out, msg);
        }
        Format::Json => {
            out.push_str("{\"ts\":\"");
            push_timestamp(&mut out, at);
            out.push_str("\",\"level\":\"");
            out.push_str(level.label());
            out.push_str("\",\"event\":");
            push_json_str(&mut out, event);
            out.push_str(",\"msg\":");
            push_json_str(&mut out, msg);
            for (k, v) in fields {
                out.push(',');
                push_json_str(&mut out, k);
                out.push(':');
                match v {
                    Val::Str(s) => push_json_str(&mut out, s),
                    Val::Num(n) => {
                        let _ = write!(out, "{n}");
                    }
                }
            }
            out.push('}');
        }
        Format::Logfmt => {
            out.push_str("ts=");
            push_timestamp(&mut out, at);
            out.push_str(" level=");
            out.push_str(level.label());
            out.push_str(" event=");
            push_logfmt(&mut out, event);
            out.push_str(" msg=");
            push_logfmt(&mut out, msg);
            for (k, v) in fields {
                out.push(' ');
                push_logfmt_key(&mut out, k);
                out.push('=');
                match v {
                    Val::Str(s) => push_logfmt(&mut out, s),
                    Val::Num(n) => {
                        let _ = write!(out, "{n}");
                    }
                }
            }
        }
    }
    out.push('\n');
    out
}

/// Text mode: control characters (a newline in an error from outside)
/// would split or forge lines; they are written as `\u{..}`.
fn push_clean(out: &mut String, s: &str) {
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A logfmt value: bare when it is a plain word, else quoted with `"` and
/// `\` escaped and control characters written as escapes.
fn push_logfmt(out: &mut String, s: &str) {
    let bare = !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(s);
    } else {
        push_json_str(out, s);
    }
}

/// Keys are ours, but stay safe anyway: anything but `[A-Za-z0-9_.-]`
/// becomes `_`.
fn push_logfmt_key(out: &mut String, k: &str) {
    for c in k.chars() {
        out.push(if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' });
    }
}

/// RFC 3339 in UTC with milliseconds, from the civil-from-days algorithm
/// (H. Hinnant), so no date library is needed.
fn push_timestamp(out: &mut String, at: SystemTime) {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// A path for a log line: never its query string (it may carry a token).
pub fn path_only(target: &str) -> &str {
    match target.find(['?', '#']) {
        Some(i) => target.get(..i).unwrap_or(""),
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, ms * 1_000_000)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        push_timestamp(&mut s, at(0, 0));
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2024-02-29 (a leap day) 12:34:56.789
        push_timestamp(&mut s, at(1_709_210_096, 789));
        assert_eq!(s, "2024-02-29T12:34:56.789Z");
        s.clear();
        push_timestamp(&mut s, at(4_102_444_799, 999));
        assert_eq!(s, "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn json_lines_parse_and_keep_numbers() {
        let line = format_line(
            Format::Json,
            at(0, 0),
            Level::Warn,
            "upgrade_refused",
            "a \"quoted\"\nline",
            &[("status", Val::Num(401)), ("path", Val::Str("/v1/ws")), ("odd", Val::Str("\u{0}\u{2028}"))],
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["event"], "upgrade_refused");
        assert_eq!(v["msg"], "a \"quoted\"\nline");
        assert_eq!(v["status"], 401);
        assert_eq!(v["odd"], "\u{0}\u{2028}");
    }

    #[test]
    fn logfmt_quotes_what_is_not_a_word() {
        let line = format_line(
            Format::Logfmt,
            at(0, 0),
            Level::Info,
            "start",
            "two words",
            &[
                ("n", Val::Num(3)),
                ("bare", Val::Str("http://127.0.0.1:1/")),
                ("eq", Val::Str("a=b")),
                ("bad key", Val::Str("")),
            ],
        );
        assert_eq!(
            line,
            "ts=1970-01-01T00:00:00.000Z level=info event=start msg=\"two words\" n=3 bare=http://127.0.0.1:1/ \
             eq=\"a=b\" bad_key=\"\"\n"
        );
    }

    #[test]
    fn text_lines_cannot_be_split() {
        let line = format_line(Format::Text, at(0, 0), Level::Info, "x", "one\ntwo\r", &[]);
        assert_eq!(line, "roomcast: one\\u{a}two\\u{d}\n");
    }

    #[test]
    fn levels_order_and_parse() {
        assert!(Level::Error < Level::Warn && Level::Info < Level::Debug);
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert!("loud".parse::<Level>().is_err());
        assert_eq!("logfmt".parse::<Format>(), Ok(Format::Logfmt));
    }

    #[test]
    fn paths_lose_their_query() {
        assert_eq!(path_only("/v1/ws?token=abc"), "/v1/ws");
        assert_eq!(path_only("/x#frag"), "/x");
        assert_eq!(path_only("/plain"), "/plain");
    }
}
