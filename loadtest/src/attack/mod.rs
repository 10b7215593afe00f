//! The `attack` scenario: hostile traffic against a running server while
//! healthy clients measure what it costs them.
//!
//! Two healthy clients from 127.0.0.1 ([`healthy`]) ping and send into a room
//! for the whole run. The attacks ([`hostile`]) run one after another, each
//! from its own block of source addresses (127.0.0.2 and up): a calm window
//! first (the healthy clients' baseline), then the attack, then a settle
//! window after every attacker connection is closed. Server memory and open
//! descriptors come from /proc before the attack, at their peak during it and
//! after the settle window.
//!
//! An attack meets its goal when, for the healthy clients, ping p99 during the
//! attack ≤ 2 × the calm p99 + 5 ms, and nothing went wrong (no error frame,
//! close, gap or lost reply from the calm window to the end of the settle
//! window), and the server's RSS and descriptor count after the settle window
//! are at most 20 % above what they were before the attack.

pub mod healthy;
pub mod hostile;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::net;
use crate::procfs;
use crate::scenario::{parse_duration, run_tag, ser_dur, RunError};
use crate::stats::{new_hist, percentiles, Percentiles};
use healthy::{Event, EventKind, SampleKind};
use hostile::Attack;

/// The goal, in words, for reports.
pub const GOAL: &str = "healthy ping p99 during the attack <= 2 x calm p99 + 5 ms; no error, disconnect, gap or \
                        lost reply for the healthy clients; server RSS and open descriptors after the settle \
                        window <= 1.2 x before the attack";

/// Events of one attack kept in the report (the counts cover all of them).
const EVENTS_KEPT: usize = 20;
/// How often server memory and descriptors are sampled for the peak.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// `attack` settings.
#[derive(Debug, Clone, Args, Serialize)]
pub struct AttackArgs {
    /// Target WebSocket URL (plain ws:// on an IPv4 loopback address).
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    pub url: String,
    /// One token for every connection (wins over --secret).
    #[arg(long, conflicts_with = "anonymous")]
    #[serde(skip)]
    pub token: Option<String>,
    /// HS256 secret: mint a token per user.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub secret: Option<String>,
    /// No token; the user id goes in the `user` query parameter.
    #[arg(long)]
    pub anonymous: bool,
    /// The server's pid: its RSS and open descriptors are read from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Attacks to run, in this order (comma-separated). All by default:
    /// slowloris, half-open, silent-upgrades, garbage, slow-consumers,
    /// descriptors, message-flood, fragment-flood.
    #[arg(long, value_delimiter = ',')]
    pub attacks: Vec<String>,
    /// How long each attack runs.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub duration_per_attack: Duration,
    /// Calm window before each attack: the healthy clients' baseline.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub calm: Duration,
    /// Window after each attack's connections are closed, before "after" is read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_dur")]
    pub settle: Duration,
    /// Multiplies every attack's connection counts and reopen rate (at least 1 each).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Healthy pings per second (keep it under the server's --request-rate).
    #[arg(long, default_value_t = 50.0)]
    pub ping_rate: f64,
    /// Healthy sends per second into the healthy room.
    #[arg(long, default_value_t = 100.0)]
    pub send_rate: f64,
    /// Size of each healthy message body in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Leave the healthy clients' thread at normal priority (by default it
    /// asks for SCHED_FIFO 1 so it never waits for the CPU behind attackers).
    #[arg(long)]
    pub no_realtime: bool,
    /// Most attacker connections open at once (this process may hold 20,000 files).
    #[arg(long, default_value_t = 15_000)]
    pub max_open: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<String>,
    /// Name of this run in reports.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Healthy-client trouble in one window.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Trouble {
    pub errors: u64,
    pub disconnects: u64,
    pub gaps: u64,
    pub lost: u64,
}

impl Trouble {
    pub fn total(&self) -> u64 {
        self.errors + self.disconnects + self.gaps + self.lost
    }

    fn add(&mut self, kind: EventKind) {
        match kind {
            EventKind::Error => self.errors += 1,
            EventKind::Disconnect => self.disconnects += 1,
            EventKind::Gap => self.gaps += 1,
            EventKind::Lost => self.lost += 1,
        }
    }
}

/// What the healthy clients saw around one attack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthyFigures {
    /// Ping round trips in the calm window, during the attack and in the settle window.
    pub calm_ping: Percentiles,
    pub ping: Percentiles,
    pub after_ping: Percentiles,
    /// Send → msg at the receiver, and send → ack, during the attack.
    pub delivery: Percentiles,
    pub ack: Percentiles,
    /// How late the load generator queued each ping during the attack (its
    /// own delay, included in `ping`; large values mean the load generator,
    /// not the server, was short of CPU).
    pub ping_send_lag: Percentiles,
    pub calm: Trouble,
    pub during: Trouble,
    pub after: Trouble,
    /// The first events (time in seconds from the start of the run).
    pub events: Vec<ReportedEvent>,
}

/// An event as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ReportedEvent {
    pub at_s: f64,
    pub conn: &'static str,
    pub kind: EventKind,
    pub detail: String,
}

/// The server around one attack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    pub rss_before_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub fds_before: Option<u64>,
    pub fds_peak: Option<u64>,
    pub fds_after: Option<u64>,
    /// The process still ran after the settle window (`None` without --server-pid).
    pub alive_after: Option<bool>,
    /// `GET /healthz` answered 200 after the settle window.
    pub healthz_after: bool,
    /// Server counters (`GET /metrics`, `*_total`, summed over reactors)
    /// that moved from before the attack to after the settle window: how
    /// many connections it closed and why, frames dropped, ... Empty when
    /// the server has no such page or did not answer in time.
    pub counters_moved: BTreeMap<String, f64>,
}

/// The goal check of one attack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Goal {
    pub p99_limit_us: f64,
    pub latency_ok: bool,
    pub healthy_ok: bool,
    /// `None` when the figure could not be read (no --server-pid).
    pub rss_ok: Option<bool>,
    pub fds_ok: Option<bool>,
    pub server_ok: bool,
    pub met: bool,
    /// Which parts failed: `p99`, `healthy`, `rss`, `fds`, `server`.
    pub failed: Vec<&'static str>,
}

/// One attack's result.
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    pub name: &'static str,
    pub description: String,
    /// Window edges in seconds from the start of the run.
    pub calm_start_s: f64,
    pub attack_start_s: f64,
    pub attack_end_s: f64,
    pub settle_end_s: f64,
    pub attacker: hostile::Stats,
    pub healthy: HealthyFigures,
    pub server: ServerFigures,
    pub goal: Goal,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: serde_json::Value,
    pub goal: &'static str,
    pub healthy_room: String,
    /// The healthy clients ran at real-time priority.
    pub healthy_realtime: bool,
    /// Healthy messages received in order and sends acknowledged, over the run.
    pub healthy_delivered: u64,
    pub healthy_acked: u64,
    /// Healthy-client events outside every attack's windows (setup, the end).
    pub other_events: Vec<ReportedEvent>,
    pub attacks: Vec<AttackResult>,
    pub all_met: bool,
    pub loadgen_cpu_us: f64,
    /// /proc/loadavg at the start and the end: a busy machine makes every
    /// latency figure noisier.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// Edges of one attack's windows (ns since the healthy clients' epoch) and
/// what was measured in them.
struct Run {
    attack: Attack,
    calm_start: u64,
    attack_start: u64,
    attack_end: u64,
    settle_end: u64,
    stats: hostile::Stats,
    server: ServerFigures,
}

fn nofile_limit() -> usize {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        usize::try_from(r.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// Lowers the calling thread's priority so the healthy clients, sharing the
/// load generator's CPU with the attackers, are not delayed by them: what
/// they measure should be the server's doing.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers; on Linux who = 0 is the
    // calling thread. Failure leaves the default priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// `GET path` on the target over a fresh connection from 127.0.0.1: the
/// status and up to 1 MiB of body, or `None` without an answer within 2 s.
pub(crate) fn http_get(addr: std::net::SocketAddr, host: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let get = || -> std::io::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut out = Vec::new();
        s.take(1 << 20).read_to_end(&mut out)?;
        Ok(out)
    };
    let resp = get().ok()?;
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = resp.get(9..12).and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.parse().ok())?;
    Some((status, resp.get(end + 4..).unwrap_or_default().to_vec()))
}

/// `GET /healthz` answered 200.
fn healthz(addr: std::net::SocketAddr, host: &str) -> bool {
    http_get(addr, host, "/healthz").is_some_and(|(status, _)| status == 200)
}

/// Counters (`*_total`) of a Prometheus text page, summed over the
/// `reactor` label and keyed by name and the other labels.
pub fn counters(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if !name.ends_with("_total") {
            continue;
        }
        let kept: Vec<&str> = labels.split(',').filter(|l| !l.is_empty() && !l.starts_with("reactor=")).collect();
        let key = if kept.is_empty() { name.to_string() } else { format!("{name}{{{}}}", kept.join(",")) };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// The server's counters from `GET /metrics`, when it serves them.
fn scrape(addr: std::net::SocketAddr, host: &str) -> Option<BTreeMap<String, f64>> {
    let (status, body) = http_get(addr, host, "/metrics")?;
    (status == 200).then(|| counters(&String::from_utf8_lossy(&body)))
}

/// Counters that moved between two scrapes.
fn moved(before: &Option<BTreeMap<String, f64>>, after: &Option<BTreeMap<String, f64>>) -> BTreeMap<String, f64> {
    let (Some(b), Some(a)) = (before, after) else {
        return BTreeMap::new();
    };
    a.iter()
        .filter_map(|(k, &v)| {
            let d = v - b.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// `d` from now (durations here are bounded by `parse_duration`; an
/// overflow would mean "now").
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now)
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Reads RSS and descriptors of `pid`.
fn sample(pid: Option<u32>) -> (Option<u64>, Option<u64>) {
    match pid {
        Some(p) => (procfs::rss_bytes(p), procfs::fd_count(p)),
        None => (None, None),
    }
}

/// Runs the attack scenario; the report says which goals were met.
pub fn run(a: &AttackArgs) -> Result<Report, RunError> {
    let target = net::parse_url(&a.url)?;
    if target.tls || !target.addr.is_ipv4() {
        return Err(RunError::Setup(
            "attack drives plain ws:// on an IPv4 loopback address (attackers bind 127.0.0.x)".into(),
        ));
    }
    if !(a.scale > 0.0 && a.scale <= 10.0) {
        return Err(RunError::Setup("--scale must be in (0, 10]".into()));
    }
    let rate_ok = |r: f64| r > 0.0 && r <= 10_000.0;
    if !rate_ok(a.ping_rate) || !rate_ok(a.send_rate) {
        return Err(RunError::Setup("--ping-rate and --send-rate must be in (0, 10000]".into()));
    }
    let attacks: Vec<Attack> = if a.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        a.attacks
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                Attack::parse(s).ok_or_else(|| {
                    let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
                    RunError::Setup(format!("unknown attack {s:?} (known: {})", names.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let auth = if a.token.is_some() || a.anonymous {
        None
    } else if let Some(s) = &a.secret {
        Some(roomcast::auth::Auth::from_secret(s.as_bytes(), None, None).map_err(|e| RunError::Auth(e.to_string()))?)
    } else {
        return Err(RunError::Auth("give --token, --secret (or ROOMCAST_JWT_SECRET) or --anonymous".into()));
    };
    let upgrade_for = |user: &str| -> Result<Vec<u8>, RunError> {
        if let Some(t) = &a.token {
            Ok(net::upgrade_request(&target, "", Some(t)))
        } else if let Some(auth) = &auth {
            let t = auth.mint(user, Duration::from_secs(24 * 3600), None).map_err(|e| RunError::Auth(e.to_string()))?;
            Ok(net::upgrade_request(&target, "", Some(&t)))
        } else {
            Ok(net::upgrade_request(&target, &format!("user={user}"), None))
        }
    };
    // The load generator's own descriptors: the attackers' budget leaves
    // room for the healthy clients, the probe and the process's own files.
    let budget = nofile_limit().saturating_sub(256).min(a.max_open);
    if budget < 64 {
        return Err(RunError::Setup(format!("too few open files allowed ({})", nofile_limit())));
    }
    let tag = run_tag();
    let room = format!("{tag}-healthy");
    let hcfg = healthy::Config {
        target: target.clone(),
        sender_upgrade: upgrade_for("lt-healthy-sender")?,
        receiver_upgrade: upgrade_for("lt-healthy-receiver")?,
        room: room.clone(),
        ping_interval_ns: (1e9 / a.ping_rate) as u64,
        send_interval_ns: (1e9 / a.send_rate) as u64,
        body_bytes: a.body_bytes,
    };
    let hshared = healthy::Shared::new();
    let loadavg_start = loadavg();
    let cpu0 = procfs::cpu_us(None, false).unwrap_or(0.0);
    let hthread = {
        let sh = hshared.clone();
        let rt = !a.no_realtime;
        std::thread::Builder::new().name("lt-healthy".into()).spawn(move || healthy::run(&hcfg, &sh, rt))?
    };
    let stop_healthy = |h: std::thread::JoinHandle<std::io::Result<healthy::Log>>| -> Result<healthy::Log, RunError> {
        hshared.stop.store(true, Ordering::Release);
        match h.join() {
            Ok(r) => Ok(r?),
            Err(_) => Err(RunError::Setup("the healthy clients' thread panicked".into())),
        }
    };
    let t0 = Instant::now();
    while !hshared.ready.load(Ordering::Acquire) {
        if t0.elapsed() > Duration::from_secs(10) || hthread.is_finished() {
            let first = hshared.first_event.lock().ok().and_then(|g| g.clone()).unwrap_or_default();
            let _ = stop_healthy(hthread);
            return Err(RunError::Setup(format!("healthy clients could not join within 10 s: {first}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "attack: healthy clients joined {room} ({} priority); {} attacks",
        if hshared.realtime.load(Ordering::Acquire) { "real-time" } else { "normal" },
        attacks.len()
    );
    // Let the first calm window start from a steady state.
    std::thread::sleep(Duration::from_millis(500));

    let pid = a.server_pid;
    let mut runs = Vec::new();
    for &attack in &attacks {
        if pid.is_some_and(|p| !procfs::alive(p)) {
            eprintln!("attack: the server is gone; {} not run", attack.name());
            break;
        }
        let calm_start = hshared.now_ns();
        std::thread::sleep(a.calm);
        let (rss_before, fds_before) = sample(pid);
        let metrics_before = scrape(target.addr, &target.host);
        let first = 2 + 10 * attack.index() as u32;
        let setup = hostile::Setup {
            target: target.clone(),
            sources: (0..10).map(|i| Ipv4Addr::from(0x7F00_0000u32 + first + i)).collect(),
            upgrade: upgrade_for(&format!("lt-attack-{}", attack.name()))?,
            healthy_room: room.clone(),
            tag: format!("{tag}-{}", attack.name()),
            scale: a.scale,
            duration: a.duration_per_attack,
            max_open: budget,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let attack_start = hshared.now_ns();
        eprintln!(
            "attack: {} for {:.1} s: {}",
            attack.name(),
            a.duration_per_attack.as_secs_f64(),
            attack.describe(a.scale)
        );
        let worker = {
            let stop = stop.clone();
            std::thread::Builder::new().name(format!("lt-{}", attack.name())).spawn(move || {
                lower_priority();
                hostile::run(attack, &setup, &stop)
            })?
        };
        let (mut rss_peak, mut fds_peak) = (rss_before, fds_before);
        let mut next_sample = Instant::now();
        let hard_stop = later(a.duration_per_attack.saturating_add(Duration::from_secs(30)));
        while !worker.is_finished() {
            if Instant::now() >= next_sample {
                let (r, f) = sample(pid);
                rss_peak = max_opt(rss_peak, r);
                fds_peak = max_opt(fds_peak, f);
                next_sample = later(SAMPLE_EVERY);
            }
            if Instant::now() >= hard_stop {
                stop.store(true, Ordering::Release);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let stats = match worker.join() {
            Ok(r) => r?,
            Err(_) => return Err(RunError::Setup(format!("the {} thread panicked", attack.name()))),
        };
        let attack_end = hshared.now_ns();
        let settle_until = later(a.settle);
        while Instant::now() < settle_until {
            let (r, f) = sample(pid);
            rss_peak = max_opt(rss_peak, r);
            fds_peak = max_opt(fds_peak, f);
            std::thread::sleep(SAMPLE_EVERY.min(settle_until.saturating_duration_since(Instant::now())));
        }
        let (rss_after, fds_after) = sample(pid);
        let server = ServerFigures {
            rss_before_bytes: rss_before,
            rss_peak_bytes: max_opt(rss_peak, rss_after),
            rss_after_bytes: rss_after,
            fds_before,
            fds_peak: max_opt(fds_peak, fds_after),
            fds_after,
            alive_after: pid.map(procfs::alive),
            healthz_after: healthz(target.addr, &target.host),
            counters_moved: moved(&metrics_before, &scrape(target.addr, &target.host)),
        };
        let settle_end = hshared.now_ns();
        eprintln!(
            "attack: {} done: {} connections, {} closed by the server, healthy events so far {}",
            attack.name(),
            stats.connections,
            stats.closed_by_server,
            hshared.events.load(Ordering::Acquire)
        );
        runs.push(Run { attack, calm_start, attack_start, attack_end, settle_end, stats, server });
    }
    let log = stop_healthy(hthread)?;
    let cpu = procfs::cpu_us(None, false).unwrap_or(0.0) - cpu0;
    let mut report = assemble(a, &room, runs, &log, cpu);
    report.loadavg_start = loadavg_start;
    report.healthy_realtime = hshared.realtime.load(Ordering::Acquire);
    Ok(report)
}

fn window(log: &healthy::Log, kind: SampleKind, from: u64, to: u64) -> Percentiles {
    let mut h = new_hist();
    for s in log.samples.iter().filter(|s| s.kind == kind && s.intended_ns >= from && s.intended_ns < to) {
        h.saturating_record(s.latency_ns.max(1));
    }
    percentiles(&h)
}

fn reported(e: &Event) -> ReportedEvent {
    ReportedEvent { at_s: e.at_ns as f64 / 1e9, conn: e.conn, kind: e.kind, detail: e.detail.clone() }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn assemble(a: &AttackArgs, room: &str, runs: Vec<Run>, log: &healthy::Log, loadgen_cpu_us: f64) -> Report {
    let mut attacks = Vec::new();
    let mut claimed = vec![false; log.events.len()];
    for r in runs {
        let mut hf = HealthyFigures {
            calm_ping: window(log, SampleKind::Ping, r.calm_start, r.attack_start),
            ping: window(log, SampleKind::Ping, r.attack_start, r.attack_end),
            after_ping: window(log, SampleKind::Ping, r.attack_end, r.settle_end),
            delivery: window(log, SampleKind::Delivery, r.attack_start, r.attack_end),
            ack: window(log, SampleKind::Ack, r.attack_start, r.attack_end),
            ping_send_lag: window(log, SampleKind::SendLag, r.attack_start, r.attack_end),
            ..HealthyFigures::default()
        };
        // Curves only for the ping during the attack: the rest stay readable.
        for p in [&mut hf.calm_ping, &mut hf.after_ping, &mut hf.delivery, &mut hf.ack, &mut hf.ping_send_lag] {
            p.curve.clear();
        }
        for (e, c) in log.events.iter().zip(claimed.iter_mut()) {
            if e.at_ns < r.calm_start || e.at_ns >= r.settle_end {
                continue;
            }
            *c = true;
            if e.at_ns < r.attack_start {
                hf.calm.add(e.kind);
            } else if e.at_ns < r.attack_end {
                hf.during.add(e.kind);
            } else {
                hf.after.add(e.kind);
            }
            if hf.events.len() < EVENTS_KEPT {
                hf.events.push(reported(e));
            }
        }
        let limit_us = 2.0 * hf.calm_ping.p99_us + 5000.0;
        let s = &r.server;
        let within = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) => Some(a as f64 <= b as f64 * 1.2),
            _ => None,
        };
        let mut goal = Goal {
            p99_limit_us: limit_us,
            latency_ok: hf.ping.count > 0 && hf.calm_ping.count > 0 && hf.ping.p99_us <= limit_us,
            healthy_ok: hf.calm.total() + hf.during.total() + hf.after.total() == 0,
            rss_ok: within(s.rss_before_bytes, s.rss_after_bytes),
            fds_ok: within(s.fds_before, s.fds_after),
            server_ok: s.healthz_after && s.alive_after != Some(false),
            ..Goal::default()
        };
        for (ok, name) in [
            (goal.latency_ok, "p99"),
            (goal.healthy_ok, "healthy"),
            (goal.rss_ok != Some(false), "rss"),
            (goal.fds_ok != Some(false), "fds"),
            (goal.server_ok, "server"),
        ] {
            if !ok {
                goal.failed.push(name);
            }
        }
        goal.met = goal.failed.is_empty();
        attacks.push(AttackResult {
            name: r.attack.name(),
            description: r.attack.describe(a.scale),
            calm_start_s: r.calm_start as f64 / 1e9,
            attack_start_s: r.attack_start as f64 / 1e9,
            attack_end_s: r.attack_end as f64 / 1e9,
            settle_end_s: r.settle_end as f64 / 1e9,
            attacker: r.stats,
            healthy: hf,
            server: r.server,
            goal,
        });
    }
    let other_events: Vec<ReportedEvent> =
        log.events.iter().zip(&claimed).filter(|(_, &c)| !c).map(|(e, _)| reported(e)).take(EVENTS_KEPT).collect();
    let expected = if a.attacks.is_empty() { Attack::ALL.len() } else { a.attacks.len() };
    let all_met = attacks.len() == expected && attacks.iter().all(|r| r.goal.met) && other_events.is_empty();
    Report {
        scenario: "attack",
        label: a.label.clone(),
        url: a.url.clone(),
        params: serde_json::to_value(a).unwrap_or_default(),
        goal: GOAL,
        healthy_room: room.to_string(),
        healthy_realtime: false,
        healthy_delivered: log.delivered,
        healthy_acked: log.acked,
        other_events,
        attacks,
        all_met,
        loadgen_cpu_us,
        loadavg_start: String::new(),
        loadavg_end: loadavg(),
    }
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)))
}

fn num(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

impl Report {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "== attack [{}] {}", self.label, self.url);
        let _ = writeln!(s, "goal: {GOAL}");
        let _ = writeln!(
            s,
            "{:<16} {:>9} {:>8} {:>8} {:>8} {:>9} {:>15} {:>20} {:>19}  result",
            "attack",
            "calm p99",
            "p50",
            "p99",
            "max",
            "p99 limit",
            "err/disc/gap/lost",
            "RSS MiB bef/peak/aft",
            "fds bef/peak/aft"
        );
        let _ = writeln!(s, "{:<16} {:>9} {:>8} {:>8} {:>8} {:>9}", "", "(ms)", "(ms)", "(ms)", "(ms)", "(ms)");
        for r in &self.attacks {
            let h = &r.healthy;
            let mut t = h.calm.clone();
            for w in [&h.during, &h.after] {
                t.errors += w.errors;
                t.disconnects += w.disconnects;
                t.gaps += w.gaps;
                t.lost += w.lost;
            }
            let sv = &r.server;
            let result = if r.goal.met { "met".to_string() } else { format!("FAILED: {}", r.goal.failed.join(", ")) };
            let _ = writeln!(
                s,
                "{:<16} {:>9} {:>8} {:>8} {:>8} {:>9} {:>17} {:>20} {:>19}  {}",
                r.name,
                ms(h.calm_ping.p99_us),
                ms(h.ping.p50_us),
                ms(h.ping.p99_us),
                ms(h.ping.max_us),
                ms(r.goal.p99_limit_us),
                format!("{}/{}/{}/{}", t.errors, t.disconnects, t.gaps, t.lost),
                format!("{}/{}/{}", mib(sv.rss_before_bytes), mib(sv.rss_peak_bytes), mib(sv.rss_after_bytes)),
                format!("{}/{}/{}", num(sv.fds_before), num(sv.fds_peak), num(sv.fds_after)),
                result
            );
        }
        for r in &self.attacks {
            let st = &r.attacker;
            let answers: Vec<String> = st.answers.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            let _ = writeln!(
                s,
                "  {}: {} connections ({} failed, {} upgraded, {} closed by server, peak {} open), {:.1} MiB out; \
                 answers: {}",
                r.name,
                st.connections,
                st.connect_failed,
                st.upgraded,
                st.closed_by_server,
                st.peak_open,
                st.bytes_out as f64 / (1024.0 * 1024.0),
                if answers.is_empty() { "none".to_string() } else { answers.join(", ") }
            );
            let lag = &r.healthy.ping_send_lag;
            let _ = writeln!(
                s,
                "    healthy during the attack: delivery p99 {} ms, ack p99 {} ms, load generator's own ping lag p99 {} ms",
                ms(r.healthy.delivery.p99_us),
                ms(r.healthy.ack.p99_us),
                ms(lag.p99_us)
            );
            if let Some(e) = r.healthy.events.first() {
                let _ = writeln!(s, "    first healthy event at {:.2} s ({}): {}", e.at_s, e.conn, e.detail);
            }
            let closes: Vec<String> = r
                .server
                .counters_moved
                .iter()
                .filter(|(k, _)| k.contains("closed") || k.contains("drops"))
                .map(|(k, v)| format!("{k} +{v}"))
                .collect();
            if !closes.is_empty() {
                let _ = writeln!(s, "    server counters: {}", closes.join(", "));
            }
            if !r.server.healthz_after {
                let _ = writeln!(s, "    /healthz did not answer 200 after the settle window");
            }
        }
        for e in &self.other_events {
            let _ = writeln!(s, "  healthy event outside the attacks at {:.2} s ({}): {}", e.at_s, e.conn, e.detail);
        }
        let _ = writeln!(
            s,
            "healthy clients at {} priority; load average: {} at the start, {} at the end",
            if self.healthy_realtime { "real-time" } else { "normal" },
            self.loadavg_start,
            self.loadavg_end
        );
        let met = self.attacks.iter().filter(|r| r.goal.met).count();
        let _ = writeln!(
            s,
            "{met} of {} attacks met the goal; healthy clients: {} messages delivered in order, {} sends acknowledged",
            self.attacks.len(),
            self.healthy_delivered,
            self.healthy_acked
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(samples: &[(u64, u64)], events: &[(u64, EventKind)]) -> healthy::Log {
        healthy::Log {
            samples: samples
                .iter()
                .map(|&(t, l)| healthy::Sample { intended_ns: t, latency_ns: l, kind: SampleKind::Ping })
                .collect(),
            events: events
                .iter()
                .map(|&(at_ns, kind)| Event { at_ns, conn: "sender", kind, detail: "x".into() })
                .collect(),
            delivered: 0,
            acked: 0,
        }
    }

    fn args() -> AttackArgs {
        AttackArgs {
            url: "ws://127.0.0.1:1/v1/ws".into(),
            token: None,
            secret: None,
            anonymous: true,
            server_pid: None,
            attacks: vec!["slowloris".into()],
            duration_per_attack: Duration::from_secs(1),
            calm: Duration::from_secs(1),
            settle: Duration::from_secs(1),
            scale: 1.0,
            ping_rate: 50.0,
            send_rate: 100.0,
            body_bytes: 100,
            max_open: 100,
            no_realtime: false,
            json: None,
            label: String::new(),
        }
    }

    fn run_of(server: ServerFigures) -> Run {
        Run {
            attack: Attack::Slowloris,
            calm_start: 0,
            attack_start: 10,
            attack_end: 20,
            settle_end: 30,
            stats: hostile::Stats::default(),
            server,
        }
    }

    fn healthy_server() -> ServerFigures {
        ServerFigures {
            rss_before_bytes: Some(100),
            rss_peak_bytes: Some(500),
            rss_after_bytes: Some(119),
            fds_before: Some(20),
            fds_peak: Some(2000),
            fds_after: Some(20),
            alive_after: Some(true),
            healthz_after: true,
            counters_moved: BTreeMap::new(),
        }
    }

    #[test]
    fn goal_is_met_within_the_limits() {
        // Calm p99 1 ms, attack p99 6.9 ms: under 2 x 1 + 5.
        let log = log_with(&[(1, 1_000_000), (2, 1_000_000), (11, 6_900_000), (12, 1_000_000)], &[]);
        let r = assemble(&args(), "h", vec![run_of(healthy_server())], &log, 0.0);
        let g = &r.attacks[0].goal;
        assert!(g.met, "{g:?}");
        assert!((g.p99_limit_us - 7000.0).abs() < 10.0);
        assert!(r.all_met);
        assert!(r.table().contains("met"));
    }

    #[test]
    fn each_part_of_the_goal_can_fail() {
        let log = log_with(&[(1, 1_000_000), (11, 7_200_000)], &[(25, EventKind::Disconnect), (40, EventKind::Lost)]);
        let server =
            ServerFigures { rss_after_bytes: Some(121), fds_after: Some(25), healthz_after: false, ..healthy_server() };
        let r = assemble(&args(), "h", vec![run_of(server)], &log, 0.0);
        let a = &r.attacks[0];
        assert_eq!(a.goal.failed, vec!["p99", "healthy", "rss", "fds", "server"]);
        assert_eq!(a.healthy.after, Trouble { disconnects: 1, ..Trouble::default() });
        // The event after the last window is reported on its own.
        assert_eq!(r.other_events.len(), 1);
        assert!(!r.all_met);
        assert!(r.table().contains("FAILED: p99, healthy, rss, fds, server"));
    }

    #[test]
    fn no_samples_during_the_attack_fails_latency() {
        let log = log_with(&[(1, 1_000_000)], &[]);
        let r = assemble(&args(), "h", vec![run_of(healthy_server())], &log, 0.0);
        assert!(!r.attacks[0].goal.latency_ok);
    }

    #[test]
    fn counters_sum_over_reactors() {
        let page = "# HELP x y\n# TYPE a_total counter\na_total{reactor=\"0\"} 2\na_total{reactor=\"1\"} 3\n\
                    c_total{reactor=\"0\",reason=\"slow_consumer\"} 4\nopen{reactor=\"0\"} 9\nbad line\n";
        let c = counters(page);
        assert_eq!(c.get("a_total"), Some(&5.0));
        assert_eq!(c.get("c_total{reason=\"slow_consumer\"}"), Some(&4.0));
        assert_eq!(c.len(), 2);
        let mut later = c.clone();
        later.insert("a_total".into(), 7.0);
        assert_eq!(moved(&Some(c), &Some(later)), BTreeMap::from([("a_total".to_string(), 2.0)]));
    }

    #[test]
    fn attack_names_round_trip() {
        for a in Attack::ALL {
            assert_eq!(Attack::parse(a.name()), Some(a));
            assert!(!a.describe(0.5).is_empty());
        }
        assert_eq!(Attack::parse("nope"), None);
    }
}
