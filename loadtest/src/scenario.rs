//! The scenarios: turns command-line settings into per-thread plans, runs the
//! workers through setup, warm-up, the measured window and drain, samples
//! /proc around the window, and assembles the result.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{ArgAction, Args};
use serde::Serialize;
use thiserror::Error;

use crate::check::Schedule;
use crate::engine::{self, ConnSpec, Credentials, Plan, Role, Shared, Tally};
use crate::net::{self, Target};
use crate::procfs;
use crate::stats::{percentiles, Resources, RunResult};

/// Why a scenario could not run to the end.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("auth: {0}")]
    Auth(String),
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    if !(0.0..=86_400.0).contains(&(v * mult)) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct Common {
    /// Target WebSocket URL (loopback only). Repeat it, or give a
    /// comma-separated list, to spread connections round-robin over several
    /// servers (the nodes of a cluster).
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws", value_delimiter = ',', action = ArgAction::Append)]
    pub url: Vec<String>,
    /// One token for every connection (wins over --secret).
    #[arg(long, conflicts_with = "anonymous")]
    #[serde(skip)]
    pub token: Option<String>,
    /// HS256 secret: mint a token per user (ignored with --token or --anonymous).
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub secret: Option<String>,
    /// No token; the user id goes in the `user` query parameter.
    #[arg(long)]
    pub anonymous: bool,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub duration: Duration,
    /// Warm-up before the window (default 2s; 0 for connect).
    #[arg(long, value_parser = parse_duration)]
    #[serde(serialize_with = "ser_opt_dur")]
    pub warmup: Option<Duration>,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<String>,
    /// The server's pid, for its CPU time and memory from /proc. Repeat it
    /// for several servers: CPU and memory are then summed, and reported per
    /// pid beside the sums.
    #[arg(long, action = ArgAction::Append)]
    pub server_pid: Vec<u32>,
    /// Spread connections over source addresses 127.0.0.1..127.0.0.N.
    #[arg(long, default_value_t = 1)]
    pub sources: u32,
    /// Load generator threads, each with its own event loop.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Name of this run in reports.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Trust this CA (PEM) for wss:// instead of accepting any certificate.
    #[arg(long)]
    pub ca: Option<String>,
    /// Connections being set up at once, per thread.
    #[arg(long, default_value_t = 256)]
    pub setup_concurrency: usize,
    /// Offer permessage-deflate in every upgrade and inflate the compressed
    /// frames that come back (sends stay uncompressed).
    #[arg(long)]
    pub deflate: bool,
    /// Give up when setup takes longer than this.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub setup_timeout: Duration,
}

impl Common {
    /// The first `--url` (the only one for most runs).
    pub fn primary_url(&self) -> &str {
        self.url.first().map_or("", String::as_str)
    }

    /// The first `--server-pid`, for scenarios that watch one server.
    pub fn primary_pid(&self) -> Option<u32> {
        self.server_pid.first().copied()
    }

    /// Every `--url`, for reports.
    pub fn urls_joined(&self) -> String {
        self.url.join(",")
    }
}

pub(crate) fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// `fanout` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Members per room.
    #[arg(long, default_value_t = 100)]
    pub members: u32,
    /// Publishers per room (separate connections, not members).
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Total messages per second over all publishers; 0 = flat out.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Unacknowledged messages per publisher when flat out.
    #[arg(long, default_value_t = 16)]
    pub window: u32,
    /// Size of each message body in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Give each member its own user id (the server then pushes presence
    /// diffs to the room while members join).
    #[arg(long)]
    pub distinct_users: bool,
    /// Connect publishers here instead of spreading them over `--url` (a
    /// cluster: publish through a chosen node). Repeated (or a list), room
    /// `r`'s publishers use the `r % k`-th, and latency is also reported per
    /// publish URL, measured in the same window.
    #[arg(long, value_delimiter = ',', action = ArgAction::Append)]
    pub publish_url: Vec<String>,
    /// Use these room names (comma-separated) instead of fresh ones; their
    /// number replaces `--rooms` (a cluster: rooms owned by one chosen node).
    #[arg(long, value_delimiter = ',', action = ArgAction::Append)]
    pub room_names: Vec<String>,
}

/// `durable` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct DurableArgs {
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Publishers per room.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// Unacknowledged messages per publisher.
    #[arg(long, default_value_t = 1)]
    pub window: u32,
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
}

/// `echo` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct EchoArgs {
    /// Connections.
    #[arg(long, default_value_t = 200)]
    pub connections: u32,
    /// Pings in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub inflight: u32,
}

/// `connect` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ConnectArgs {
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Use wss:// (TLS) even if the URL says ws://.
    #[arg(long)]
    pub tls: bool,
    /// TLS: keep no sessions, so every connection is a full handshake (by
    /// default the client resumes with the tickets and session ids it got).
    #[arg(long)]
    pub full_handshakes: bool,
}

/// `idle` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: u32,
    /// Join a room (all connections, one user, one room).
    #[arg(long)]
    pub join: bool,
    /// Connections per worker process (each process may hold 20,000 files).
    #[arg(long, default_value_t = 15_000)]
    pub per_worker: u32,
    /// Let the server settle this long before reading its memory.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub settle: Duration,
}

/// Hidden `idle-worker` settings: the slice of an idle run one process holds.
#[derive(Debug, Clone, Args)]
pub struct IdleWorkerArgs {
    #[arg(long)]
    pub count: u32,
    #[arg(long)]
    pub offset: u32,
    #[arg(long)]
    pub room: Option<String>,
}

/// Settings shared by every worker, derived from [`Common`].
pub(crate) struct Env {
    /// The first target (the only one for scenarios that drive one server).
    pub(crate) target: Target,
    /// Every target, in `--url` order.
    pub(crate) targets: Vec<Target>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) creds: Arc<Credentials>,
}

pub(crate) fn env(common: &Common, force_tls: bool) -> Result<Env, RunError> {
    env_with(common, force_tls, &[])
}

/// [`env`] with `extra` URLs after the `--url` ones (a fanout's `--publish-url`).
pub(crate) fn env_with(common: &Common, force_tls: bool, extra: &[&str]) -> Result<Env, RunError> {
    let mut targets = Vec::new();
    for url in common.url.iter().map(String::as_str).chain(extra.iter().copied()) {
        let mut t = net::parse_url(url)?;
        if force_tls {
            t.tls = true;
        }
        targets.push(t);
    }
    let Some(target) = targets.first().cloned() else {
        return Err(RunError::Setup("give at least one --url".into()));
    };
    if targets.iter().any(|t| t.tls != target.tls) {
        return Err(RunError::Setup("every --url must use the same scheme (ws:// or wss://)".into()));
    }
    let tls = if target.tls { Some(net::tls_config(common.ca.as_deref())?) } else { None };
    let creds = if let Some(t) = &common.token {
        Credentials::Token(t.clone())
    } else if common.anonymous {
        Credentials::Anonymous
    } else if let Some(s) = &common.secret {
        Credentials::Secret(Arc::new(
            roomcast::auth::Auth::from_secret(s.as_bytes(), None, None).map_err(|e| RunError::Auth(e.to_string()))?,
        ))
    } else {
        return Err(RunError::Auth("give --token, --secret (or ROOMCAST_JWT_SECRET) or --anonymous".into()));
    };
    Ok(Env { target, targets, tls, creds: Arc::new(creds) })
}

/// A tag that keeps one run's rooms apart from earlier runs' history.
pub(crate) fn run_tag() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("lt{}-{}", secs % 1_000_000, std::process::id() % 100_000)
}

/// Splits specs round-robin over `threads` plans.
fn plans(common: &Common, env: &Env, rooms: Vec<String>, body_bytes: usize, specs: Vec<ConnSpec>) -> Vec<Plan> {
    let threads = common.threads.max(1);
    let rooms = Arc::new(rooms);
    let targets = Arc::new(env.targets.clone());
    let mut per: Vec<Vec<ConnSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in specs.into_iter().enumerate() {
        if let Some(v) = per.get_mut(i % threads) {
            v.push(s);
        }
    }
    per.into_iter()
        .map(|specs| Plan {
            targets: targets.clone(),
            tls: env.tls.clone(),
            sources: common.sources.max(1),
            creds: env.creds.clone(),
            rooms: rooms.clone(),
            body_bytes,
            specs,
            room_groups: Arc::new(Vec::new()),
            connect_slots: 0,
            connect_total: 0,
            setup_concurrency: common.setup_concurrency,
            deflate: common.deflate,
        })
        .collect()
}

/// What the coordinator saw around the window.
struct Measured {
    tally: Tally,
    measured_s: f64,
    resources: Resources,
    /// Per server pid (with more than one `--server-pid`): CPU over the
    /// window and RSS at its edges.
    servers: Vec<serde_json::Value>,
}

/// User and system CPU time in µs.
type CpuTimes = (f64, f64);

/// The servers' CPU and memory and the load generator's own CPU at one instant.
struct Sample {
    /// Per pid: CPU µs (user, system) and RSS bytes.
    per_pid: Vec<(u32, Option<CpuTimes>, Option<u64>)>,
    own_cpu: Option<f64>,
}

impl Sample {
    /// CPU summed over the pids; `None` without pids or when one could not be read.
    fn cpu(&self) -> Option<f64> {
        self.cpu_times().map(|(user, system)| user + system)
    }

    /// User and system CPU summed over the pids, like [`Sample::cpu`].
    fn cpu_times(&self) -> Option<CpuTimes> {
        if self.per_pid.is_empty() {
            return None;
        }
        self.per_pid.iter().try_fold((0.0, 0.0), |acc, p| p.1.map(|(u, s)| (acc.0 + u, acc.1 + s)))
    }

    /// RSS summed over the pids, like [`Sample::cpu`].
    fn rss(&self) -> Option<u64> {
        if self.per_pid.is_empty() {
            return None;
        }
        self.per_pid.iter().map(|p| p.2).sum()
    }
}

fn sample(pids: &[u32]) -> Sample {
    Sample {
        per_pid: pids.iter().map(|&p| (p, procfs::cpu_times_us(Some(p), false), procfs::rss_bytes(p))).collect(),
        own_cpu: procfs::cpu_us(None, false),
    }
}

/// The servers' user and system CPU between two samples.
fn split_cpu(before: &Sample, after: &Sample) -> (Option<f64>, Option<f64>) {
    match before.cpu_times().zip(after.cpu_times()) {
        Some((b, a)) => (Some(a.0 - b.0), Some(a.1 - b.1)),
        None => (None, None),
    }
}

/// One JSON object per pid: CPU over the window and RSS before and after
/// (empty with fewer than two pids: the totals already say it).
fn per_server(before: &Sample, after: &Sample) -> Vec<serde_json::Value> {
    if before.per_pid.len() < 2 {
        return Vec::new();
    }
    before
        .per_pid
        .iter()
        .zip(&after.per_pid)
        .map(|(b, a)| {
            serde_json::json!({
                "pid": b.0,
                "cpu_us": a.1.zip(b.1).map(|(a, b)| (a.0 + a.1) - (b.0 + b.1)),
                "rss_before_bytes": b.2,
                "rss_after_bytes": a.2,
            })
        })
        .collect()
}

fn sleep_until(shared: &Shared, t_ns: u64) {
    let now = shared.now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// Runs plans through setup, warm-up, window and drain.
fn coordinate(
    common: &Common,
    plans: Vec<Plan>,
    warmup: Duration,
    connect_total: Option<u64>,
) -> Result<Measured, RunError> {
    let shared = Shared::new();
    let setup_total: u64 = plans.iter().map(|p| p.specs.len() as u64).sum();
    let mut handles = Vec::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let sh = shared.clone();
        handles.push(
            std::thread::Builder::new().name(format!("lt-worker-{i}")).spawn(move || engine::run_worker(&plan, &sh))?,
        );
    }
    let finish = |shared: &Arc<Shared>, handles: Vec<std::thread::JoinHandle<std::io::Result<Tally>>>| {
        shared.stop.store(true, Ordering::Release);
        let mut tally = Tally::empty();
        let mut err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(t)) => tally.merge(&t),
                Ok(Err(e)) => err = Some(RunError::Io(e)),
                Err(_) => err = Some(RunError::Setup("a worker thread panicked".into())),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(tally),
        }
    };

    // Setup.
    let setup_start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let ready = shared.ready.load(Ordering::Acquire);
        let failed = shared.failed.load(Ordering::Acquire);
        if ready + failed >= setup_total {
            if failed > 0 {
                let first = shared.first_error.lock().ok().and_then(|g| g.clone());
                let _ = finish(&shared, handles);
                return Err(RunError::Setup(format!(
                    "{failed} of {setup_total} connections failed during setup; first error: {}",
                    first.unwrap_or_default()
                )));
            }
            break;
        }
        if setup_start.elapsed() > common.setup_timeout {
            let _ = finish(&shared, handles);
            return Err(RunError::Setup(format!("setup timed out: {ready} of {setup_total} ready")));
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("setup: {ready}/{setup_total} connections ready");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if setup_total > 0 {
        eprintln!("setup: {setup_total} connections ready in {:.2} s", setup_start.elapsed().as_secs_f64());
    }

    // Window: publish the bounds before `go` so no worker sees one without the other.
    let go = shared.now_ns() + 20_000_000;
    let mstart = go + warmup.as_nanos() as u64;
    let mend = mstart + common.duration.as_nanos() as u64;
    shared.measure_start_ns.store(mstart, Ordering::Release);
    shared.measure_end_ns.store(mend, Ordering::Release);
    shared.go_ns.store(go, Ordering::Release);

    sleep_until(&shared, mstart);
    let before = sample(&common.server_pid);
    // The window's edges, for a profiler watching this output.
    eprintln!("window: start");
    let units0 = shared.units.load(Ordering::Relaxed);
    let t_start = shared.now_ns();
    let mut last_units = units0;
    let mut next_tick = t_start + 1_000_000_000;
    let mut end_ns = mend;
    loop {
        let now = shared.now_ns();
        if now >= mend {
            break;
        }
        if let Some(total) = connect_total {
            let done = shared.completed.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
            if done >= total {
                end_ns = now;
                break;
            }
        }
        if now >= next_tick {
            let u = shared.units.load(Ordering::Relaxed);
            eprintln!("[{:>5.1}s] {} /s (total {})", (now - t_start) as f64 / 1e9, u - last_units, u - units0);
            last_units = u;
            next_tick += 1_000_000_000;
        }
        std::thread::sleep(Duration::from_millis(10).min(Duration::from_nanos(mend - now)));
    }
    let after = sample(&common.server_pid);
    eprintln!("window: end");
    let measured_s = (end_ns.saturating_sub(t_start)) as f64 / 1e9;

    // Drain: wait until deliveries stop arriving (at most 2 s).
    let drain_start = Instant::now();
    let mut seen = shared.units.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        let u = shared.units.load(Ordering::Relaxed);
        if u != seen {
            seen = u;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(200) {
            break;
        }
    }
    let tally = finish(&shared, handles)?;
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let (user, system) = split_cpu(&before, &after);
    let resources = Resources {
        server_cpu_us: diff(before.cpu(), after.cpu()),
        server_cpu_us_per_unit: None,
        server_user_cpu_us: user,
        server_system_cpu_us: system,
        server_rss_before_bytes: before.rss(),
        server_rss_after_bytes: after.rss(),
        loadgen_cpu_us: diff(before.own_cpu, after.own_cpu).unwrap_or(0.0),
        loadgen_cpu_us_per_unit: None,
    };
    if let Some(e) = shared.first_error.lock().ok().and_then(|g| g.clone()) {
        eprintln!("first error: {e}");
    }
    Ok(Measured { tally, measured_s, resources, servers: per_server(&before, &after) })
}

fn finish_result(
    scenario: &str,
    unit: &str,
    common: &Common,
    params: serde_json::Value,
    m: Measured,
    units: u64,
) -> RunResult {
    let mut res = m.resources;
    if units > 0 {
        res.server_cpu_us_per_unit = res.server_cpu_us.map(|c| c / units as f64);
        res.loadgen_cpu_us_per_unit = Some(res.loadgen_cpu_us / units as f64);
    }
    let t = &m.tally;
    let mut counts = serde_json::Map::new();
    counts.insert("sent_in_window".into(), t.sent_in_window.into());
    counts.insert("sent_total".into(), t.sent_total.into());
    counts.insert("acks_in_window".into(), t.acks_in_window.into());
    counts.insert("msgs_received_total".into(), t.msgs_received_total.into());
    counts.insert("bytes_received_total".into(), t.bytes_received_total.into());
    counts.insert("deflated_frames_total".into(), t.deflated_frames_total.into());
    counts.insert("closed_by_server".into(), t.closed_by_server.into());
    if !m.servers.is_empty() {
        counts.insert("servers".into(), m.servers.into());
    }
    RunResult {
        scenario: scenario.into(),
        label: common.label.clone(),
        url: common.urls_joined(),
        params,
        unit: unit.into(),
        units,
        measured_s: m.measured_s,
        units_per_s: if m.measured_s > 0.0 { units as f64 / m.measured_s } else { 0.0 },
        counts,
        latency: percentiles(&t.hist),
        ack_latency: None,
        resources: res,
        violations: t.violations.clone(),
        rss_per_connection_bytes: None,
    }
}

fn params<T: Serialize>(common: &Common, args: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(args).unwrap_or_default();
    if let (Some(obj), Ok(serde_json::Value::Object(c))) = (v.as_object_mut(), serde_json::to_value(common)) {
        obj.extend(c);
    }
    v
}

/// Who connects where in a fanout run.
#[derive(Debug)]
pub struct FanoutLayout {
    pub rooms: Vec<String>,
    pub specs: Vec<ConnSpec>,
    /// The URLs by target index: the `--url`s, then each `--publish-url`
    /// that is not one of them.
    pub urls: Vec<String>,
    /// Per room, the index in `--publish-url` its publishers use (empty
    /// without `--publish-url`).
    pub room_groups: Vec<usize>,
}

/// Rooms and connections of a fanout run. Member `m` of every room goes to
/// URL `m % n` (so each room has members on every server), publishers to
/// `--publish-url` when given, else round-robin over the URLs; with one URL
/// everything goes there, as before.
pub fn fanout_layout(urls: &[String], a: &FanoutArgs, tag: &str) -> FanoutLayout {
    let rooms: Vec<String> = if a.room_names.is_empty() {
        (0..a.rooms).map(|r| format!("{tag}-r{r}")).collect()
    } else {
        a.room_names.clone()
    };
    let mut urls = urls.to_vec();
    let n = urls.len().max(1);
    let mut publish_targets = Vec::new();
    for p in &a.publish_url {
        let t = match urls.iter().position(|u| u == p) {
            Some(i) => i,
            None => {
                urls.push(p.clone());
                urls.len() - 1
            }
        };
        publish_targets.push(t);
    }
    let k = publish_targets.len();
    let room_groups: Vec<usize> = if k == 0 { Vec::new() } else { (0..rooms.len()).map(|r| r % k).collect() };
    let n_rooms = rooms.len() as u32;
    let mut specs = Vec::new();
    for r in 0..n_rooms {
        for m in 0..a.members {
            let user = if a.distinct_users { format!("lt-m{r}-{m}") } else { format!("lt-m{r}") };
            specs.push(ConnSpec { role: Role::Member { room: r }, user, index: specs.len(), target: m as usize % n });
        }
    }
    let total_pubs = u64::from(n_rooms) * u64::from(a.publishers);
    let interval =
        if a.rate > 0.0 && total_pubs > 0 { ((total_pubs as f64) * 1e9 / a.rate).max(1.0) as u64 } else { 0 };
    let mut j = 0u64;
    for r in 0..n_rooms {
        for p in 0..a.publishers {
            // Schedules start relative to `go`, staggered so the total rate is even.
            let schedule =
                (interval > 0).then(|| Schedule { start_ns: j * interval / total_pubs.max(1), interval_ns: interval });
            specs.push(ConnSpec {
                role: Role::Publisher { room: r, schedule, window: a.window.max(1) },
                user: format!("lt-p{r}-{p}"),
                index: specs.len(),
                target: room_groups
                    .get(r as usize)
                    .and_then(|&g| publish_targets.get(g))
                    .copied()
                    .unwrap_or(j as usize % n),
            });
            j += 1;
        }
    }
    FanoutLayout { rooms, specs, urls, room_groups }
}

/// `fanout`: members per room, publishers on a schedule or flat out.
pub fn fanout(common: &Common, a: &FanoutArgs) -> Result<RunResult, RunError> {
    let tag = run_tag();
    let layout = fanout_layout(&common.url, a, &tag);
    let extra: Vec<&str> = layout.urls.iter().skip(common.url.len()).map(String::as_str).collect();
    let env = env_with(common, false, &extra)?;
    let mut plans = plans(common, &env, layout.rooms, a.body_bytes, layout.specs);
    let groups = Arc::new(layout.room_groups);
    for p in &mut plans {
        p.room_groups = groups.clone();
    }
    let m = coordinate(common, plans, common.warmup.unwrap_or(Duration::from_secs(2)), None)?;
    let expected = m.tally.sent_in_window * u64::from(a.members);
    let units = m.tally.units;
    let ack = percentiles(&m.tally.ack_hist);
    let by_url = (layout.urls.len() > 1).then(|| {
        // Members' delivery latency by the server they are connected to.
        let mut map = serde_json::Map::new();
        for (url, h) in layout.urls.iter().zip(&m.tally.hist_by_target) {
            let p = percentiles(h);
            map.insert(
                url.clone(),
                serde_json::json!({"count": p.count, "p50_us": p.p50_us, "p99_us": p.p99_us,
                                   "p999_us": p.p999_us, "max_us": p.max_us}),
            );
        }
        map
    });
    let by_publish_url = (a.publish_url.len() > 1).then(|| {
        // Delivery and ack latency by the URL the room's publishers use.
        let mut map = serde_json::Map::new();
        for (g, url) in a.publish_url.iter().enumerate() {
            let p = m.tally.hist_by_group.get(g).map(percentiles).unwrap_or_default();
            let ack = m.tally.ack_hist_by_group.get(g).map(percentiles).unwrap_or_default();
            map.insert(
                url.clone(),
                serde_json::json!({"count": p.count, "p50_us": p.p50_us, "p99_us": p.p99_us,
                                   "p999_us": p.p999_us, "max_us": p.max_us,
                                   "ack_count": ack.count, "ack_p50_us": ack.p50_us, "ack_p99_us": ack.p99_us}),
            );
        }
        map
    });
    let mut r = finish_result("fanout", "delivery", common, params(common, a), m, units);
    r.counts.insert("deliveries_expected".into(), expected.into());
    if let Some(map) = by_publish_url {
        r.counts.insert("latency_by_publish_url".into(), map.into());
    }
    r.counts.insert("undelivered".into(), expected.saturating_sub(units).into());
    if let Some(map) = by_url {
        r.counts.insert("latency_by_url".into(), map.into());
    }
    r.ack_latency = Some(ack);
    Ok(r)
}

/// `durable`: publishers only, each waiting for its acks.
pub fn durable(common: &Common, a: &DurableArgs) -> Result<RunResult, RunError> {
    let env = env(common, false)?;
    let tag = run_tag();
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("{tag}-d{r}")).collect();
    let mut specs = Vec::new();
    for r in 0..a.rooms {
        for p in 0..a.publishers {
            specs.push(ConnSpec {
                role: Role::Publisher { room: r, schedule: None, window: a.window.max(1) },
                user: format!("lt-p{r}-{p}"),
                index: specs.len(),
                target: specs.len(),
            });
        }
    }
    let plans = plans(common, &env, rooms, a.body_bytes, specs);
    let m = coordinate(common, plans, common.warmup.unwrap_or(Duration::from_secs(2)), None)?;
    let units = m.tally.acks_in_window;
    let ack = percentiles(&m.tally.ack_hist);
    let mut r = finish_result("durable", "publish", common, params(common, a), m, units);
    r.latency = ack.clone();
    r.ack_latency = Some(ack);
    Ok(r)
}

/// `echo`: pings with K in flight per connection.
pub fn echo(common: &Common, a: &EchoArgs) -> Result<RunResult, RunError> {
    let env = env(common, false)?;
    let specs = (0..a.connections)
        .map(|i| ConnSpec {
            role: Role::Echo { inflight: a.inflight.max(1) },
            user: format!("lt-e{i}"),
            index: i as usize,
            target: i as usize,
        })
        .collect();
    let plans = plans(common, &env, Vec::new(), 0, specs);
    let m = coordinate(common, plans, common.warmup.unwrap_or(Duration::from_secs(2)), None)?;
    let units = m.tally.units;
    Ok(finish_result("echo", "round_trip", common, params(common, a), m, units))
}

/// `connect`: N upgrades + joins at concurrency C.
pub fn connect(common: &Common, a: &ConnectArgs) -> Result<RunResult, RunError> {
    let mut env = env(common, a.tls)?;
    if a.full_handshakes {
        if let Some(cfg) = &env.tls {
            let mut cfg = rustls::ClientConfig::clone(cfg);
            cfg.resumption = rustls::client::Resumption::disabled();
            env.tls = Some(Arc::new(cfg));
        }
    }
    let room = format!("{}-connect", run_tag());
    let mut plans = plans(common, &env, vec![room], 0, Vec::new());
    let n = plans.len().max(1);
    for (i, p) in plans.iter_mut().enumerate() {
        p.connect_slots = a.concurrency / n + usize::from(i < a.concurrency % n);
        p.connect_total = a.connections;
    }
    let m = coordinate(common, plans, common.warmup.unwrap_or(Duration::ZERO), Some(a.connections))?;
    let units = m.tally.units;
    let up = percentiles(&m.tally.upgrade_hist);
    let mut r = finish_result("connect", "connection", common, params(common, a), m, units);
    r.ack_latency = None;
    r.counts.insert("upgrade_p50_us".into(), serde_json::json!(up.p50_us));
    r.counts.insert("upgrade_p99_us".into(), serde_json::json!(up.p99_us));
    Ok(r)
}

/// `idle-worker`: holds its slice of an idle run until stdin closes.
pub fn idle_worker(common: &Common, a: &IdleWorkerArgs) -> Result<(), RunError> {
    let env = env(common, false)?;
    let rooms: Vec<String> = a.room.iter().cloned().collect();
    let joined = a.room.is_some();
    let specs = (0..a.count)
        .map(|i| ConnSpec {
            role: Role::Idle { room: joined.then_some(0) },
            user: "lt-idle".into(),
            index: (a.offset + i) as usize,
            target: (a.offset + i) as usize,
        })
        .collect();
    let plans = plans(common, &env, rooms, 0, specs);
    let shared = Shared::new();
    let mut handles = Vec::new();
    for plan in plans {
        let sh = shared.clone();
        handles.push(std::thread::spawn(move || engine::run_worker(&plan, &sh)));
    }
    let start = Instant::now();
    let total = u64::from(a.count);
    let (ready, failed) = loop {
        let ready = shared.ready.load(Ordering::Acquire);
        let failed = shared.failed.load(Ordering::Acquire);
        if ready + failed >= total || start.elapsed() > common.setup_timeout {
            break (ready, failed);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let first = shared.first_error.lock().ok().and_then(|g| g.clone());
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {ready} {failed} {}", first.unwrap_or_default().replace('\n', " "))?;
    out.flush()?;
    drop(out);
    // Hold until the parent closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    shared.stop.store(true, Ordering::Release);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// `idle`: holds N connections over worker processes and reports the
/// server's memory per connection.
pub fn idle(common: &Common, a: &IdleArgs) -> Result<RunResult, RunError> {
    // Validate settings here rather than in every worker.
    env(common, false)?;
    let exe = std::env::current_exe()?;
    let room = a.join.then(|| format!("{}-idle", run_tag()));
    let before = sample(&common.server_pid);
    let t0 = Instant::now();
    let per = a.per_worker.clamp(1, 18_000);
    let mut children = Vec::new();
    let mut offset = 0u32;
    while offset < a.connections {
        let count = per.min(a.connections - offset);
        let mut cmd = Command::new(&exe);
        cmd.arg("idle-worker")
            .args(["--count", &count.to_string(), "--offset", &offset.to_string()])
            .args(common.url.iter().flat_map(|u| ["--url", u.as_str()]))
            .args(["--sources", &common.sources.to_string()])
            .args(["--threads", &common.threads.to_string()])
            .args(["--setup-concurrency", &common.setup_concurrency.to_string()])
            .args(["--setup-timeout", &format!("{}s", common.setup_timeout.as_secs_f64())]);
        if let Some(r) = &room {
            cmd.args(["--room", r]);
        }
        if let Some(t) = &common.token {
            cmd.args(["--token", t]);
        } else if common.anonymous {
            cmd.arg("--anonymous");
        } else if let Some(s) = &common.secret {
            // Through the environment, not argv, so it stays out of `ps`.
            cmd.env("ROOMCAST_JWT_SECRET", s);
        }
        let child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        children.push(child);
        offset += count;
    }
    let mut ready = 0u64;
    let mut failed = 0u64;
    let mut first_err = String::new();
    for child in &mut children {
        let Some(out) = child.stdout.as_mut() else {
            continue;
        };
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let mut parts = line.trim().splitn(4, ' ');
        if parts.next() != Some("READY") {
            failed += 1;
            continue;
        }
        ready += parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        failed += parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Some(e) = parts.next() {
            if first_err.is_empty() {
                first_err = e.to_string();
            }
        }
    }
    let setup_s = t0.elapsed().as_secs_f64();
    eprintln!("idle: {ready} connections held, {failed} failed, in {setup_s:.2} s");
    std::thread::sleep(a.settle);
    let after = sample(&common.server_pid);
    for child in &mut children {
        // Closing stdin tells the worker to let go.
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = child.wait();
    }
    let loadgen_cpu = procfs::cpu_us(None, true).unwrap_or(0.0);
    let (before_rss, after_rss) = (before.rss(), after.rss());
    let (user, system) = split_cpu(&before, &after);
    let mut res = Resources {
        server_cpu_us: after.cpu().zip(before.cpu()).map(|(a, b)| a - b),
        server_cpu_us_per_unit: None,
        server_user_cpu_us: user,
        server_system_cpu_us: system,
        server_rss_before_bytes: before_rss,
        server_rss_after_bytes: after_rss,
        loadgen_cpu_us: loadgen_cpu,
        loadgen_cpu_us_per_unit: None,
    };
    if ready > 0 {
        res.server_cpu_us_per_unit = res.server_cpu_us.map(|c| c / ready as f64);
        res.loadgen_cpu_us_per_unit = Some(loadgen_cpu / ready as f64);
    }
    let mut counts = serde_json::Map::new();
    counts.insert("held".into(), ready.into());
    counts.insert("failed".into(), failed.into());
    counts.insert("workers".into(), children.len().into());
    if !first_err.is_empty() {
        counts.insert("first_error".into(), first_err.into());
    }
    let servers = per_server(&before, &after);
    if !servers.is_empty() {
        counts.insert("servers".into(), idle_per_server(servers, &common.url, a.connections, failed).into());
    }
    let per_conn = match (before_rss, after_rss) {
        (Some(b), Some(a)) if ready > 0 => Some((a as f64 - b as f64) / ready as f64),
        _ => None,
    };
    let v = crate::stats::Violations { errors: failed, ..Default::default() };
    Ok(RunResult {
        scenario: "idle".into(),
        label: common.label.clone(),
        url: common.urls_joined(),
        params: params(common, a),
        unit: "connection".into(),
        units: ready,
        measured_s: setup_s,
        units_per_s: if setup_s > 0.0 { ready as f64 / setup_s } else { 0.0 },
        counts,
        latency: Default::default(),
        ack_latency: None,
        resources: res,
        violations: v,
        rss_per_connection_bytes: per_conn,
    })
}

/// Connections of an idle run that go to URL `i` of `n`: connection `k`
/// goes to URL `k % n`.
pub fn idle_share(connections: u32, n: usize, i: usize) -> u32 {
    let n = n.max(1) as u32;
    let i = i as u32;
    if i >= n {
        return 0;
    }
    connections / n + u32::from(i < connections % n)
}

/// Adds to each per-pid figure of an idle run its URL, its share of the
/// connections and the memory per connection, when there is one pid per URL
/// (the i-th pid serving the i-th URL) and nothing failed; otherwise only
/// the URL-less figures stay.
fn idle_per_server(
    mut servers: Vec<serde_json::Value>,
    urls: &[String],
    connections: u32,
    failed: u64,
) -> Vec<serde_json::Value> {
    if servers.len() != urls.len() || failed > 0 {
        return servers;
    }
    for (i, (s, url)) in servers.iter_mut().zip(urls).enumerate() {
        let share = idle_share(connections, urls.len(), i);
        let b = s.get("rss_before_bytes").and_then(serde_json::Value::as_f64);
        let a = s.get("rss_after_bytes").and_then(serde_json::Value::as_f64);
        let per = match (b, a) {
            (Some(b), Some(a)) if share > 0 => Some((a - b) / f64::from(share)),
            _ => None,
        };
        if let Some(obj) = s.as_object_mut() {
            obj.insert("url".into(), url.clone().into());
            obj.insert("connections".into(), share.into());
            obj.insert("rss_per_connection_bytes".into(), per.into());
        }
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    /// The fanout command line as `main` flattens it.
    #[derive(clap::Parser)]
    struct FanoutCli {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: FanoutArgs,
    }

    fn parse(argv: &[&str]) -> FanoutCli {
        use clap::Parser;
        match FanoutCli::try_parse_from(std::iter::once("fanout").chain(argv.iter().copied())) {
            Ok(c) => c,
            Err(e) => panic!("{argv:?}: {e}"),
        }
    }

    fn targets(l: &FanoutLayout, role: fn(&Role) -> bool) -> Vec<usize> {
        l.specs.iter().filter(|s| role(&s.role)).map(|s| s.target).collect()
    }

    fn member(r: &Role) -> bool {
        matches!(r, Role::Member { .. })
    }

    fn publisher(r: &Role) -> bool {
        matches!(r, Role::Publisher { .. })
    }

    const A: &str = "ws://127.0.0.1:9001/v1/ws";
    const B: &str = "ws://127.0.0.1:9002/v1/ws";
    const C: &str = "ws://127.0.0.1:9003/v1/ws";

    #[test]
    fn one_url_by_default_and_everything_goes_there() {
        let cli = parse(&["--rooms", "2", "--members", "3", "--publishers", "2"]);
        assert_eq!(cli.common.url, vec!["ws://127.0.0.1:8080/v1/ws".to_string()]);
        assert!(cli.common.server_pid.is_empty());
        assert!(cli.args.publish_url.is_empty());
        let l = fanout_layout(&cli.common.url, &cli.args, "t");
        assert_eq!(l.urls, cli.common.url);
        assert_eq!(l.rooms, vec!["t-r0".to_string(), "t-r1".to_string()]);
        assert_eq!(l.specs.len(), 2 * 3 + 2 * 2);
        assert!(l.specs.iter().all(|s| s.target == 0));
        // Source-address indexes stay the position in the list, as before.
        assert!(l.specs.iter().enumerate().all(|(i, s)| s.index == i));
    }

    #[test]
    fn repeated_and_listed_urls_are_the_same() {
        let repeated = parse(&["--url", A, "--url", B, "--url", C]);
        let listed = parse(&["--url", &format!("{A},{B},{C}")]);
        let mixed = parse(&["--url", &format!("{A},{B}"), "--url", C]);
        let want: Vec<String> = [A, B, C].iter().map(|s| s.to_string()).collect();
        assert_eq!(repeated.common.url, want);
        assert_eq!(listed.common.url, want);
        assert_eq!(mixed.common.url, want);
        assert_eq!(repeated.common.primary_url(), A);
        assert_eq!(repeated.common.urls_joined(), format!("{A},{B},{C}"));
    }

    #[test]
    fn members_spread_round_robin_in_every_room() {
        let cli = parse(&["--url", A, "--url", B, "--url", C, "--rooms", "2", "--members", "4", "--publishers", "2"]);
        let l = fanout_layout(&cli.common.url, &cli.args, "t");
        // Member m of each room goes to URL m % 3: every room has members on every server.
        assert_eq!(targets(&l, member), vec![0, 1, 2, 0, 0, 1, 2, 0]);
        // Without --publish-url, publishers are spread too.
        assert_eq!(targets(&l, publisher), vec![0, 1, 2, 0]);
        assert_eq!(l.urls.len(), 3);
    }

    #[test]
    fn publish_url_takes_every_publisher() {
        let cli = parse(&["--url", A, "--url", B, "--url", C, "--publish-url", B, "--members", "3", "--rooms", "2"]);
        let l = fanout_layout(&cli.common.url, &cli.args, "t");
        // One of the member URLs: no new target.
        assert_eq!(l.urls.len(), 3);
        assert_eq!(targets(&l, publisher), vec![1, 1]);
        assert_eq!(targets(&l, member), vec![0, 1, 2, 0, 1, 2]);

        let other = "ws://127.0.0.1:9004/v1/ws";
        let cli = parse(&["--url", A, "--url", B, "--publish-url", other, "--publishers", "3"]);
        let l = fanout_layout(&cli.common.url, &cli.args, "t");
        // A URL of its own: appended after the member URLs.
        assert_eq!(l.urls, vec![A.to_string(), B.to_string(), other.to_string()]);
        assert_eq!(targets(&l, publisher), vec![2, 2, 2]);
        assert!(targets(&l, member).iter().all(|&t| t < 2));
        assert_eq!(l.room_groups, vec![0]);
    }

    #[test]
    fn several_publish_urls_alternate_by_room() {
        let cli = parse(&[
            "--url",
            A,
            "--url",
            B,
            "--url",
            C,
            "--publish-url",
            &format!("{A},{B}"),
            "--rooms",
            "3",
            "--members",
            "3",
            "--publishers",
            "2",
        ]);
        let l = fanout_layout(&cli.common.url, &cli.args, "t");
        assert_eq!(l.urls.len(), 3);
        // Room r's publishers use publish URL r % 2: rooms 0 and 2 through A, room 1 through B.
        assert_eq!(l.room_groups, vec![0, 1, 0]);
        assert_eq!(targets(&l, publisher), vec![0, 0, 1, 1, 0, 0]);
        // Members are spread as without it.
        assert_eq!(targets(&l, member), vec![0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn room_names_replace_the_room_count() {
        let cli = parse(&["--rooms", "5", "--room-names", "x1,x2", "--room-names", "x3", "--members", "1"]);
        let l = fanout_layout(&cli.common.url, &cli.args, "t");
        assert_eq!(l.rooms, vec!["x1".to_string(), "x2".to_string(), "x3".to_string()]);
        let rooms: Vec<u32> = l
            .specs
            .iter()
            .filter_map(|s| match s.role {
                Role::Member { room } => Some(room),
                _ => None,
            })
            .collect();
        assert_eq!(rooms, vec![0, 1, 2]);
    }

    #[test]
    fn server_pids_repeat() {
        let cli = parse(&["--server-pid", "10", "--server-pid", "11"]);
        assert_eq!(cli.common.server_pid, vec![10, 11]);
        assert_eq!(cli.common.primary_pid(), Some(10));
    }

    #[test]
    fn mixed_schemes_and_remote_urls_are_refused() {
        let cli = parse(&["--url", A, "--url", "wss://127.0.0.1:9443/v1/ws", "--anonymous"]);
        assert!(env(&cli.common, false).is_err());
        let cli = parse(&["--url", A, "--url", "ws://10.0.0.1:9000/v1/ws", "--anonymous"]);
        assert!(env(&cli.common, false).is_err());
        let cli = parse(&["--url", A, "--url", B, "--anonymous"]);
        let e = env_with(&cli.common, false, &[C]).map(|e| e.targets.len());
        assert_eq!(e.ok(), Some(3));
    }

    #[test]
    fn idle_shares_add_up() {
        for (conns, n) in [(90_000u32, 5usize), (10, 3), (2, 5), (7, 1)] {
            let shares: Vec<u32> = (0..n).map(|i| idle_share(conns, n, i)).collect();
            assert_eq!(shares.iter().sum::<u32>(), conns);
            // Connection k goes to k % n.
            for (i, s) in shares.iter().enumerate() {
                assert_eq!(*s as usize, (0..conns as usize).filter(|k| k % n == i).count());
            }
        }
        assert_eq!(idle_share(10, 3, 3), 0);
    }

    #[test]
    fn idle_per_server_divides_by_each_share() {
        let servers = vec![
            serde_json::json!({"pid": 1, "rss_before_bytes": 1000, "rss_after_bytes": 3000}),
            serde_json::json!({"pid": 2, "rss_before_bytes": 1000, "rss_after_bytes": 1500}),
        ];
        let urls = vec![A.to_string(), B.to_string()];
        let out = idle_per_server(servers.clone(), &urls, 3, 0);
        assert_eq!(out[0]["connections"], 2);
        assert_eq!(out[0]["rss_per_connection_bytes"], 1000.0);
        assert_eq!(out[1]["connections"], 1);
        assert_eq!(out[1]["rss_per_connection_bytes"], 500.0);
        assert_eq!(out[1]["url"], B);
        // A failed connection leaves the shares unknown: no per-connection figure.
        assert!(idle_per_server(servers, &urls, 3, 1)[0].get("rss_per_connection_bytes").is_none());
    }
}
