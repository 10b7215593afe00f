//! The scenarios: turns command-line settings into per-thread plans, runs the
//! workers through setup, warm-up, the measured window and drain, samples
//! /proc around the window, and assembles the result.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
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
    /// Target WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    pub url: String,
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
    /// The server's pid, for its CPU time and memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
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
    /// Give up when setup takes longer than this.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub setup_timeout: Duration,
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
    pub(crate) target: Target,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) creds: Arc<Credentials>,
}

pub(crate) fn env(common: &Common, force_tls: bool) -> Result<Env, RunError> {
    let mut target = net::parse_url(&common.url)?;
    if force_tls {
        target.tls = true;
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
    Ok(Env { target, tls, creds: Arc::new(creds) })
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
    let mut per: Vec<Vec<ConnSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in specs.into_iter().enumerate() {
        if let Some(v) = per.get_mut(i % threads) {
            v.push(s);
        }
    }
    per.into_iter()
        .map(|specs| Plan {
            target: env.target.clone(),
            tls: env.tls.clone(),
            sources: common.sources.max(1),
            creds: env.creds.clone(),
            rooms: rooms.clone(),
            body_bytes,
            specs,
            connect_slots: 0,
            connect_total: 0,
            setup_concurrency: common.setup_concurrency,
        })
        .collect()
}

/// What the coordinator saw around the window.
struct Measured {
    tally: Tally,
    measured_s: f64,
    resources: Resources,
}

fn sample(pid: Option<u32>) -> (Option<f64>, Option<u64>, Option<f64>) {
    (pid.and_then(|p| procfs::cpu_us(Some(p), false)), pid.and_then(procfs::rss_bytes), procfs::cpu_us(None, false))
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
    let before = sample(common.server_pid);
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
    let after = sample(common.server_pid);
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
    let resources = Resources {
        server_cpu_us: diff(before.0, after.0),
        server_cpu_us_per_unit: None,
        server_rss_before_bytes: before.1,
        server_rss_after_bytes: after.1,
        loadgen_cpu_us: diff(before.2, after.2).unwrap_or(0.0),
        loadgen_cpu_us_per_unit: None,
    };
    if let Some(e) = shared.first_error.lock().ok().and_then(|g| g.clone()) {
        eprintln!("first error: {e}");
    }
    Ok(Measured { tally, measured_s, resources })
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
    counts.insert("closed_by_server".into(), t.closed_by_server.into());
    RunResult {
        scenario: scenario.into(),
        label: common.label.clone(),
        url: common.url.clone(),
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

/// `fanout`: members per room, publishers on a schedule or flat out.
pub fn fanout(common: &Common, a: &FanoutArgs) -> Result<RunResult, RunError> {
    let env = env(common, false)?;
    let tag = run_tag();
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("{tag}-r{r}")).collect();
    let mut specs = Vec::new();
    for r in 0..a.rooms {
        for m in 0..a.members {
            let user = if a.distinct_users { format!("lt-m{r}-{m}") } else { format!("lt-m{r}") };
            specs.push(ConnSpec { role: Role::Member { room: r }, user, index: specs.len() });
        }
    }
    let total_pubs = u64::from(a.rooms) * u64::from(a.publishers);
    let interval =
        if a.rate > 0.0 && total_pubs > 0 { ((total_pubs as f64) * 1e9 / a.rate).max(1.0) as u64 } else { 0 };
    let mut j = 0u64;
    for r in 0..a.rooms {
        for p in 0..a.publishers {
            // Schedules start relative to `go`, staggered so the total rate is even.
            let schedule =
                (interval > 0).then(|| Schedule { start_ns: j * interval / total_pubs.max(1), interval_ns: interval });
            specs.push(ConnSpec {
                role: Role::Publisher { room: r, schedule, window: a.window.max(1) },
                user: format!("lt-p{r}-{p}"),
                index: specs.len(),
            });
            j += 1;
        }
    }
    let plans = plans(common, &env, rooms, a.body_bytes, specs);
    let m = coordinate(common, plans, common.warmup.unwrap_or(Duration::from_secs(2)), None)?;
    let expected = m.tally.sent_in_window * u64::from(a.members);
    let units = m.tally.units;
    let ack = percentiles(&m.tally.ack_hist);
    let mut r = finish_result("fanout", "delivery", common, params(common, a), m, units);
    r.counts.insert("deliveries_expected".into(), expected.into());
    r.counts.insert("undelivered".into(), expected.saturating_sub(units).into());
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
        })
        .collect();
    let plans = plans(common, &env, Vec::new(), 0, specs);
    let m = coordinate(common, plans, common.warmup.unwrap_or(Duration::from_secs(2)), None)?;
    let units = m.tally.units;
    Ok(finish_result("echo", "round_trip", common, params(common, a), m, units))
}

/// `connect`: N upgrades + joins at concurrency C.
pub fn connect(common: &Common, a: &ConnectArgs) -> Result<RunResult, RunError> {
    let env = env(common, a.tls)?;
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
    let before_rss = common.server_pid.and_then(procfs::rss_bytes);
    let before_cpu = common.server_pid.and_then(|p| procfs::cpu_us(Some(p), false));
    let t0 = Instant::now();
    let per = a.per_worker.clamp(1, 18_000);
    let mut children = Vec::new();
    let mut offset = 0u32;
    while offset < a.connections {
        let count = per.min(a.connections - offset);
        let mut cmd = Command::new(&exe);
        cmd.arg("idle-worker")
            .args(["--count", &count.to_string(), "--offset", &offset.to_string()])
            .args(["--url", &common.url])
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
    let after_rss = common.server_pid.and_then(procfs::rss_bytes);
    let after_cpu = common.server_pid.and_then(|p| procfs::cpu_us(Some(p), false));
    for child in &mut children {
        // Closing stdin tells the worker to let go.
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = child.wait();
    }
    let loadgen_cpu = procfs::cpu_us(None, true).unwrap_or(0.0);
    let mut res = Resources {
        server_cpu_us: after_cpu.zip(before_cpu).map(|(a, b)| a - b),
        server_cpu_us_per_unit: None,
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
    let per_conn = match (before_rss, after_rss) {
        (Some(b), Some(a)) if ready > 0 => Some((a as f64 - b as f64) / ready as f64),
        _ => None,
    };
    let v = crate::stats::Violations { errors: failed, ..Default::default() };
    Ok(RunResult {
        scenario: "idle".into(),
        label: common.label.clone(),
        url: common.url.clone(),
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
}
