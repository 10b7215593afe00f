//! Fuzzes the command line and settings resolution
//! (`config::parse_command_line`): arbitrary arguments, an arbitrary
//! environment and an arbitrary TOML settings file. Every input must give an
//! invocation or an error, never a panic; a `serve` configuration that comes
//! back must pass `Config::validate` and lie within `config::bounds`, and the
//! error text must be printable.
//!
//! Input, split at the first two `\0\0`: the arguments after the program name
//! (separated by `\0`, as in a real argv; bytes need not be UTF-8), the
//! environment (`NAME=VALUE` entries separated by `\0`; a name without the
//! `ROOMCAST_` prefix gets it), and the text of the file `c.toml`, which the
//! arguments (`--config c.toml`) or `ROOMCAST_CONFIG=c.toml` can name.
//!
//! The process works in a directory of its own holding only `c.toml`, and
//! every `/` is dropped from arguments and values, so no input can name
//! another file (a device or a FIFO would block or exhaust memory).

#![no_main]

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use roomcast::config::{bounds, parse_command_line, Config, Invocation, ENV_PREFIX};

const FILE: &str = "c.toml";

/// The private working directory, made once per process.
fn workdir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("roomcast-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz working directory");
        std::env::set_current_dir(&dir).expect("enter the fuzz working directory");
        dir
    })
}

fn split2<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}

fn no_slash(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|&b| b != b'/').collect()
}

fuzz_target!(|data: &[u8]| {
    let dir = workdir();
    let (args, rest) = split2(data, b"\0\0");
    let (env, toml) = split2(rest, b"\0\0");

    let mut argv = vec![OsString::from("roomcast")];
    if !args.is_empty() {
        argv.extend(args.split(|&b| b == 0).map(|a| OsString::from_vec(no_slash(a))));
    }
    let mut vars = HashMap::new();
    for entry in env.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        // The gateway reads the environment lossily, as `process_env` does.
        let entry = String::from_utf8_lossy(&no_slash(entry)).into_owned();
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        let name = if name.starts_with(ENV_PREFIX) { name.to_string() } else { format!("{ENV_PREFIX}{name}") };
        vars.insert(name, value.to_string());
    }
    std::fs::write(dir.join(FILE), toml).expect("write the settings file");

    let lookup = |name: &str| vars.get(name).cloned();
    match parse_command_line(argv, &lookup) {
        Ok(Invocation::Serve(config)) => check_serve(&config),
        Ok(Invocation::Token(t)) => {
            assert!(!t.sub.is_empty(), "token request without a sub");
            assert!(t.ttl.as_secs() >= 1, "token request with a ttl under 1s");
            assert!(t.ttl <= bounds::TOKEN_TTL, "token request with a ttl of {:?}", t.ttl);
        }
        Ok(Invocation::DevCert(_) | Invocation::Backup { .. }) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // The arguments as `roomcast serve ARGS`, through the entry point tests use.
    let plain: Vec<String> = args
        .split(|&b| b == 0)
        .filter(|_| !args.is_empty())
        .map(|a| String::from_utf8_lossy(&no_slash(a)).into_owned())
        .collect();
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    if let Ok(config) = Config::from_args_and_env(&plain, &lookup) {
        check_serve(&config);
    }
});

fn check_serve(c: &Config) {
    if let Err(e) = c.validate() {
        panic!("a configuration that fails validate() came back: {e}");
    }
    // What the bounds promise the reactors: deadlines (a clock reading plus
    // a setting) and buffer sizes that cannot overflow.
    let durations = [
        ("drain-timeout", c.drain_timeout, bounds::DRAIN_TIMEOUT),
        ("idle-timeout", c.idle_timeout, bounds::IDLE_TIMEOUT),
        ("ping-interval", c.ping_interval, bounds::PING_INTERVAL),
        ("request-timeout", c.request_timeout, bounds::REQUEST_TIMEOUT),
        ("dedup-window", c.dedup_window, bounds::DEDUP_WINDOW),
        ("retain-age", c.retain_age.unwrap_or_default(), bounds::RETAIN_AGE),
        ("room-idle-timeout", c.room_idle_timeout, bounds::ROOM_IDLE_TIMEOUT),
    ];
    for (key, value, max) in durations {
        assert!(value <= max, "{key} {value:?} passed validate(), bound {max:?}");
    }
    assert!(!c.idle_timeout.is_zero() && c.ping_interval < c.idle_timeout && !c.request_timeout.is_zero());
    assert!(c.room_idle_timeout >= bounds::MIN_ROOM_IDLE_TIMEOUT);
    assert!(c.max_message_bytes >= 1 && c.max_message_bytes <= bounds::MAX_MESSAGE_BYTES);
    assert!(c.max_queue_bytes >= c.max_message_bytes && c.max_queue_bytes <= bounds::MAX_QUEUE_BYTES);
    assert!(c.threads >= 1 && c.threads <= bounds::THREADS);
    assert!(c.max_connections >= 1 && c.max_connections <= bounds::MAX_CONNECTIONS);
    assert!(c.max_body_depth >= 1 && c.max_body_depth <= bounds::MAX_BODY_DEPTH);
    let rates = [
        ("send-rate", c.send_rate, c.send_burst),
        ("request-rate", c.request_rate, c.request_burst),
        ("connect-rate-per-ip", c.connect_rate_per_ip, c.connect_burst_per_ip),
        ("post-rate-per-ip", c.post_rate_per_ip, c.post_burst_per_ip),
    ];
    for (key, rate, burst) in rates {
        assert!(rate.is_finite() && (0.0..=bounds::RATE).contains(&rate), "{key} {rate} passed validate()");
        assert!(burst <= bounds::BURST && (rate == 0.0 || burst >= 1), "{key}'s burst {burst} passed validate()");
    }
    assert_ne!(c.retain_messages, Some(0));
    let _ = format!("{c:?}");
}
