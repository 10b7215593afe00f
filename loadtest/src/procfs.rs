//! Reads CPU time, resident memory and open descriptors of a process from /proc.
//!
//! CPU figures are user + system time (or each apart) in clock ticks (usually 100 per
//! second), so a window should be seconds long for the per-unit figures to
//! mean much.

use std::fs;

/// CPU ticks per second.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (and, with `children`, cutime + cstime) of a /proc stat line, in ticks.
pub fn parse_stat_cpu(stat: &str, children: bool) -> Option<u64> {
    parse_stat_times(stat, children).map(|(user, system)| user + system)
}

/// User and system time of a /proc stat line, in ticks: (utime, stime), or
/// with `children` (utime + cutime, stime + cstime).
pub fn parse_stat_times(stat: &str, children: bool) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from after its last ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field N is index N-3.
    let get = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (mut user, mut system) = (get(14)?, get(15)?);
    if children {
        user += get(16)?;
        system += get(17)?;
    }
    Some((user, system))
}

/// CPU time of `pid` (or `self`) in microseconds.
pub fn cpu_us(pid: Option<u32>, children: bool) -> Option<f64> {
    cpu_times_us(pid, children).map(|(user, system)| user + system)
}

/// User and system CPU time of `pid` (or `self`) in microseconds, from one read.
pub fn cpu_times_us(pid: Option<u32>, children: bool) -> Option<(f64, f64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = fs::read_to_string(path).ok()?;
    let (user, system) = parse_stat_times(&stat, children)?;
    let us = |ticks: u64| ticks as f64 * 1e6 / ticks_per_s();
    Some((us(user), us(system)))
}

/// `VmRSS` of a /proc status file, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    parse_status_rss(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Open file descriptors of `pid` (entries of /proc/PID/fd); `None` when
/// the process is gone or not ours to read.
pub fn fd_count(pid: u32) -> Option<u64> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.filter(|e| e.is_ok()).count() as u64)
}

/// Whether `pid` is still a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rfind(')').and_then(|i| stat.get(i + 1..)).and_then(|r| r.split_whitespace().next()) != Some("Z")
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "1234 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 150 25 7 3 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat, false), Some(175));
        assert_eq!(parse_stat_cpu(stat, true), Some(185));
        assert_eq!(parse_stat_times(stat, false), Some((150, 25)));
        assert_eq!(parse_stat_times(stat, true), Some((157, 28)));
        assert_eq!(parse_stat_cpu("garbage", false), None);
    }

    #[test]
    fn parses_status_rss() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_rss(s), Some(2 * 1024 * 1024));
        assert!(cpu_us(None, false).is_some());
        assert!(rss_bytes(std::process::id()).is_some());
        assert!(fd_count(std::process::id()).is_some_and(|n| n >= 3));
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
