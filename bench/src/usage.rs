//! Resource usage from `/proc` (Linux; `None` elsewhere): the generator's own CPU time and peak
//! memory, and those of the server under load when it runs on this machine (`--server-pid`),
//! to tell which of the two was the limit.

use std::time::Duration;

/// `/proc` counts CPU time in USER_HZ ticks, 100 per second on every Linux architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU time of this process so far.
pub(crate) fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_time_of(&stat)
}

/// User plus system CPU time of process `pid` (all its threads) so far.
pub(crate) fn cpu_time_of_pid(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_time_of(&stat)
}

/// Resident memory (VmRSS) of process `pid`, in MiB.
pub(crate) fn rss_mib_of_pid(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|k| k / 1024.0)
}

fn cpu_time_of(stat: &str) -> Option<Duration> {
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / TICKS_PER_SEC))
}

/// CPU used between two readings over `wall`, in percent of one core.
pub(crate) fn cpu_percent(
    before: Option<Duration>,
    after: Option<Duration>,
    wall: Duration,
) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (wall > Duration::ZERO).then(|| used.as_secs_f64() / wall.as_secs_f64() * 100.0)
}

/// Busy and total time of each core so far, in ticks (`/proc/stat`). Busy counts interrupt and
/// softirq time too: on loopback much of the network work runs there, charged to no process.
pub(crate) fn core_times() -> Option<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(core_times_of(&stat))
}

fn core_times_of(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// How busy each core was between two readings, in percent.
pub(crate) fn core_busy_percent(
    before: Option<&[(u64, u64)]>,
    after: Option<&[(u64, u64)]>,
) -> Vec<f64> {
    let (Some(before), Some(after)) = (before, after) else {
        return Vec::new();
    };
    before
        .iter()
        .zip(after)
        .map(|(&(b0, t0), &(b1, t1))| {
            let total = t1.saturating_sub(t0);
            if total == 0 {
                0.0
            } else {
                b1.saturating_sub(b0) as f64 / total as f64 * 100.0
            }
        })
        .collect()
}

/// Peak resident memory (VmHWM), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kib(&status, "VmHWM:").map(|k| k / 1024.0)
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "123 (a b) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(cpu_time_of(stat), Some(Duration::from_secs(3)));
        assert_eq!(
            cpu_percent(
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Duration::from_secs(4)
            ),
            Some(25.0)
        );
        assert_eq!(
            cpu_percent(None, Some(Duration::ZERO), Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn core_times_count_softirq_as_busy() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 0 5 80 5 0 0 0 0 0\ncpu1 50 0 20 20 0 0 10 0 0 0\nintr 1 2\n";
        let a = core_times_of(stat);
        assert_eq!(a, vec![(15, 100), (80, 100)]);
        let b = vec![(65, 200), (180, 200)];
        assert_eq!(core_busy_percent(Some(&a), Some(&b)), vec![50.0, 100.0]);
        assert!(core_busy_percent(None, Some(&b)).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        assert!(!core_times().unwrap().is_empty());
        assert!(cpu_time().is_some());
        assert!(peak_rss_mib().unwrap() > 0.0);
        let me = std::process::id();
        assert!(cpu_time_of_pid(me).is_some());
        assert!(rss_mib_of_pid(me).unwrap() > 0.0);
        assert_eq!(rss_mib_of_pid(u32::MAX), None);
    }
}
