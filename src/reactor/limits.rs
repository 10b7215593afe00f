//! Limits that span reactors: open connections and new connections per
//! source IP, and HTTP message posts per source IP and per user.
//!
//! The kernel spreads one address's connections over every reactor, so
//! these counts cannot live in one reactor. They sit in sharded maps behind
//! mutexes, touched on accept, on close and on an HTTP post only, never per
//! WebSocket message. Every map is bounded: an entry with no open
//! connection and full buckets carries no information and is dropped (at
//! once on the last close, else by the periodic sweep), and a shard that is
//! full even after a sweep refuses newcomers rather than grow.

use std::collections::hash_map::{Entry, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Config;

use super::conn::TokenBucket;

/// Shards per map: enough that reactors rarely meet on one lock.
pub const SHARDS: usize = 64;
/// Entries per shard at most (about a million per map).
const SHARD_CAP: usize = 16_384;

/// Why a new connection or a post is refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many open connections from this address.
    Connections,
    /// Connecting (or posting) faster than the rate allows; retry after
    /// this many milliseconds.
    Rate(u64),
    /// The limiter's table is full.
    Full,
}

impl Refused {
    /// Whole seconds for a `Retry-After` header (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Refused::Rate(ms) => ms.div_ceil(1000).max(1),
            Refused::Connections | Refused::Full => 1,
        }
    }

    pub fn retry_after_ms(self) -> u64 {
        match self {
            Refused::Rate(ms) => ms.max(1),
            Refused::Connections | Refused::Full => 1000,
        }
    }
}

struct IpEntry {
    conns: u32,
    connects: TokenBucket,
    posts: TokenBucket,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    rate: f64,
    burst: u32,
}

impl Rate {
    fn on(self) -> bool {
        self.rate > 0.0
    }
}

/// A [`Rate`] a reload may change while other threads read it. A reader
/// may see a new rate with the old burst for an instant; either is a limit
/// somebody configured.
struct Tunable {
    rate: AtomicU64,
    burst: AtomicU32,
}

impl Tunable {
    fn new(rate: f64, burst: u32) -> Tunable {
        Tunable { rate: AtomicU64::new(rate.to_bits()), burst: AtomicU32::new(burst) }
    }

    fn get(&self) -> Rate {
        Rate { rate: f64::from_bits(self.rate.load(Relaxed)), burst: self.burst.load(Relaxed) }
    }

    fn set(&self, rate: f64, burst: u32) {
        self.rate.store(rate.to_bits(), Relaxed);
        self.burst.store(burst, Relaxed);
    }
}

pub struct Limits {
    /// Picks a shard with a key of this process's own, so nobody can choose
    /// addresses that all land on one shard.
    shard_hash: std::collections::hash_map::RandomState,
    max_conns: AtomicUsize,
    connects: Tunable,
    ip_posts: Tunable,
    user_posts: Tunable,
    ips: Vec<Mutex<HashMap<IpAddr, IpEntry>>>,
    users: Vec<Mutex<HashMap<Box<str>, TokenBucket>>>,
}

/// The address a limit counts: IPv4 as it is, IPv6 by its /64 (one
/// subscriber's network: a host picks any address inside it at will).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1))),
        },
    }
}

impl Limits {
    pub fn new(cfg: &Config) -> Limits {
        Limits {
            shard_hash: std::collections::hash_map::RandomState::new(),
            max_conns: AtomicUsize::new(cfg.max_conns_per_ip),
            connects: Tunable::new(cfg.connect_rate_per_ip, cfg.connect_burst_per_ip),
            ip_posts: Tunable::new(cfg.post_rate_per_ip, cfg.post_burst_per_ip),
            user_posts: Tunable::new(cfg.send_rate, cfg.send_burst),
            ips: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// A reload's new limits. Whether connections are tracked at all must
    /// not change (see [`Limits::tracks`]): the reload keeps that for a
    /// restart.
    pub fn retune(&self, cfg: &Config) {
        self.max_conns.store(cfg.max_conns_per_ip, Relaxed);
        self.connects.set(cfg.connect_rate_per_ip, cfg.connect_burst_per_ip);
        self.ip_posts.set(cfg.post_rate_per_ip, cfg.post_burst_per_ip);
        self.user_posts.set(cfg.send_rate, cfg.send_burst);
    }

    /// Whether `cfg` has connections counted per address: a reload that
    /// turns this on or off would leave counts unmatched.
    pub fn tracks(cfg: &Config) -> bool {
        cfg.max_conns_per_ip > 0 || cfg.connect_rate_per_ip > 0.0
    }

    fn shard<T: std::hash::Hash + ?Sized>(&self, what: &T) -> usize {
        use std::hash::BuildHasher;
        (self.shard_hash.hash_one(what) % SHARDS as u64) as usize
    }

    fn tracks_connections(&self) -> bool {
        self.max_conns.load(Relaxed) > 0 || self.connects.get().on()
    }

    /// Counts a new connection from `ip`, or says why it is refused.
    /// Every `Ok` must be matched by one [`release`](Self::release).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if !self.tracks_connections() {
            return Ok(());
        }
        let ip = limit_key(ip);
        let Ok(mut map) = self.ips[self.shard(&ip)].lock() else {
            return Ok(()); // a panic elsewhere is already fatal
        };
        let e = match self.entry(&mut map, ip, now) {
            Some(e) => e,
            None => return Err(Refused::Full),
        };
        let max_conns = self.max_conns.load(Relaxed);
        if max_conns > 0 && e.conns as usize >= max_conns {
            return Err(Refused::Connections);
        }
        let c = self.connects.get();
        e.connects.take(c.rate, c.burst, now).map_err(Refused::Rate)?;
        e.conns += 1;
        Ok(())
    }

    /// A connection counted by [`admit`](Self::admit) closed.
    pub fn release(&self, ip: IpAddr, now: Instant) {
        if !self.tracks_connections() {
            return;
        }
        let ip = limit_key(ip);
        let Ok(mut map) = self.ips[self.shard(&ip)].lock() else { return };
        if let Entry::Occupied(mut o) = map.entry(ip) {
            let e = o.get_mut();
            e.conns = e.conns.saturating_sub(1);
            if self.idle(e, now) {
                o.remove();
            }
        }
    }

    /// An HTTP post by `user` from `ip` (when known): both buckets must
    /// have a token.
    pub fn post(&self, ip: Option<IpAddr>, user: &str, now: Instant) -> Result<(), Refused> {
        let rate = self.user_posts.get();
        if rate.on() {
            let Ok(mut map) = self.users[self.shard(user)].lock() else { return Ok(()) };
            if !map.contains_key(user) {
                if map.len() >= SHARD_CAP {
                    map.retain(|_, b| !b.is_full(rate.rate, rate.burst, now));
                }
                if map.len() >= SHARD_CAP {
                    return Err(Refused::Full);
                }
                map.insert(Box::from(user), TokenBucket::new(rate.burst, now));
            }
            if let Some(b) = map.get_mut(user) {
                b.take(rate.rate, rate.burst, now).map_err(Refused::Rate)?;
            }
        }
        let rate = self.ip_posts.get();
        if let (Some(ip), true) = (ip.map(limit_key), rate.on()) {
            let Ok(mut map) = self.ips[self.shard(&ip)].lock() else { return Ok(()) };
            match self.entry(&mut map, ip, now) {
                Some(e) => e.posts.take(rate.rate, rate.burst, now).map_err(Refused::Rate)?,
                None => return Err(Refused::Full),
            }
        }
        Ok(())
    }

    /// Drops the idle entries of shard `shard` of both maps.
    pub fn sweep(&self, shard: usize, now: Instant) {
        if let Some(Ok(mut map)) = self.ips.get(shard).map(Mutex::lock) {
            map.retain(|_, e| !self.idle(e, now));
            shrink(&mut map);
        }
        let rate = self.user_posts.get();
        if let Some(Ok(mut map)) = self.users.get(shard).map(Mutex::lock) {
            map.retain(|_, b| !b.is_full(rate.rate, rate.burst, now));
            shrink(&mut map);
        }
    }

    /// Entries held: (addresses, users).
    pub fn len(&self) -> (usize, usize) {
        fn count<K, V>(maps: &[Mutex<HashMap<K, V>>]) -> usize {
            maps.iter().map(|m| m.lock().map_or(0, |m| m.len())).sum()
        }
        (count(&self.ips), count(&self.users))
    }

    /// An entry says nothing a fresh one would not: no connection open and
    /// both buckets refilled.
    fn idle(&self, e: &IpEntry, now: Instant) -> bool {
        let (c, p) = (self.connects.get(), self.ip_posts.get());
        e.conns == 0 && e.connects.is_full(c.rate, c.burst, now) && e.posts.is_full(p.rate, p.burst, now)
    }

    /// The entry of `ip`, made if needed; `None` when the shard is full
    /// even after dropping its idle entries.
    fn entry<'m>(&self, map: &'m mut HashMap<IpAddr, IpEntry>, ip: IpAddr, now: Instant) -> Option<&'m mut IpEntry> {
        if !map.contains_key(&ip) {
            if map.len() >= SHARD_CAP {
                map.retain(|_, e| !self.idle(e, now));
            }
            if map.len() >= SHARD_CAP {
                return None;
            }
            let fresh = IpEntry {
                conns: 0,
                connects: TokenBucket::new(self.connects.get().burst, now),
                posts: TokenBucket::new(self.ip_posts.get().burst, now),
            };
            map.insert(ip, fresh);
        }
        map.get_mut(&ip)
    }
}

fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(max: usize, rate: f64, burst: u32) -> Config {
        Config {
            max_conns_per_ip: max,
            connect_rate_per_ip: rate,
            connect_burst_per_ip: burst,
            post_rate_per_ip: 1.0,
            post_burst_per_ip: 3,
            send_rate: 1.0,
            send_burst: 2,
            ..Config::default()
        }
    }

    #[test]
    fn connections_per_ip_are_capped_and_released() {
        let l = Limits::new(&cfg(2, 0.0, 0));
        let t = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.admit(a, t).is_ok());
        assert!(l.admit(a, t).is_ok());
        assert_eq!(l.admit(a, t), Err(Refused::Connections));
        assert!(l.admit(b, t).is_ok());
        l.release(a, t);
        assert!(l.admit(a, t).is_ok());
        for _ in 0..2 {
            l.release(a, t);
        }
        l.release(b, t);
        assert_eq!(l.len(), (0, 0), "idle entries go at the last close");
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let l = Limits::new(&cfg(2, 0.0, 0));
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.admit(a, t).is_ok());
        assert!(l.admit(b, t).is_ok());
        assert_eq!(l.admit(a, t), Err(Refused::Connections), "same /64");
        assert!(l.admit(c, t).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(limit_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connect_rate_refills_and_idle_entries_are_swept() {
        let l = Limits::new(&cfg(0, 10.0, 2));
        let t = Instant::now();
        let a: IpAddr = "::1".parse().unwrap();
        assert!(l.admit(a, t).is_ok());
        assert!(l.admit(a, t).is_ok());
        let Err(Refused::Rate(ms)) = l.admit(a, t) else { panic!("rate limit expected") };
        assert_eq!(ms, 100);
        assert!(l.admit(a, t + Duration::from_millis(100)).is_ok());
        for _ in 0..3 {
            l.release(a, t + Duration::from_millis(100));
        }
        assert_eq!(l.len().0, 1, "buckets not refilled yet");
        for s in 0..SHARDS {
            l.sweep(s, t + Duration::from_secs(1));
        }
        assert_eq!(l.len().0, 0);
    }

    #[test]
    fn posts_are_limited_per_user_and_per_ip() {
        let l = Limits::new(&cfg(0, 0.0, 0));
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.post(Some(a), "ann", t).is_ok());
        assert!(l.post(Some(a), "ann", t).is_ok());
        assert!(matches!(l.post(Some(a), "ann", t), Err(Refused::Rate(_))), "user bucket: burst 2");
        assert!(l.post(Some(a), "bo", t).is_ok());
        assert!(matches!(l.post(Some(a), "cy", t), Err(Refused::Rate(_))), "ip bucket: burst 3");
        assert!(l.post(None, "dee", t).is_ok(), "no address: only the user bucket");
        for s in 0..SHARDS {
            l.sweep(s, t + Duration::from_secs(10));
        }
        assert_eq!(l.len(), (0, 0));
    }
}
