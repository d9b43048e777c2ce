//! The process's own cost, under the names every Prometheus client uses (`process_*`), read
//! from `/proc/self` at each scrape. Parsing apart from reading, so it is tested on text.

use std::time::Duration;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    /// User and system CPU time.
    pub cpu: Duration,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Since the epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// Reads it; what cannot be read stays 0.
pub fn usage() -> Usage {
    use nix::unistd::{SysconfVar, sysconf};
    let tick = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).unwrap_or(100);
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().filter(|p| *p > 0).unwrap_or(4096);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let mut u = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s, tick as u64, page as u64, boot.unwrap_or(0)))
        .unwrap_or_default();
    u.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    u.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    u
}

/// `btime` of /proc/stat: boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Fields of /proc/self/stat (proc(5)): utime (14), stime (15) and starttime (22) in clock
/// ticks, vsize (23) in bytes, rss (24) in pages. The command name (2) is in parentheses and
/// may hold spaces and parentheses itself: the fields are counted after the last `)`.
fn parse_stat(stat: &str, tick: u64, page: u64, boot: u64) -> Option<Usage> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = field(14)? + field(15)?;
    let start = field(22)?;
    Some(Usage {
        cpu: Duration::from_secs_f64(ticks as f64 / tick as f64),
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        start_time_seconds: boot as f64 + start as f64 / tick as f64,
        open_fds: 0,
        max_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn now() -> f64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }

    // /proc/self/stat of a process named "a) b" on Linux 6.18 (fields 2-52).
    const STAT: &str = "4242 (a) b) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 50 0 0 20 0 3 0 \
        123456 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 \
        0 0 0 0\n";

    #[test]
    fn parses_stat_with_a_name_holding_parentheses() {
        let u = parse_stat(STAT, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(u.cpu, Duration::from_secs(3)); // (250 + 50) ticks at 100 Hz
        assert_eq!(u.resident_bytes, 2560 * 4096);
        assert_eq!(u.virtual_bytes, 10_485_760);
        assert!((u.start_time_seconds - 1_700_001_234.56).abs() < 1e-6);
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("4242 (x) S 1 2", 100, 4096, 0), None);
        assert_eq!(parse_stat("no parenthesis", 100, 4096, 0), None);
    }

    #[test]
    fn reads_this_process() {
        let u = usage();
        assert!(u.resident_bytes > 0 && u.open_fds >= 3 && u.max_fds >= u.open_fds, "{u:?}");
        assert!(u.start_time_seconds > 1e9 && u.start_time_seconds <= now() + 1.0, "{u:?}");
    }

    #[test]
    fn boot_time_from_proc_stat() {
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1764480000\nprocesses 9\n"), Some(1_764_480_000));
    }
}
