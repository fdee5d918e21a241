//! What the transfers of `tally load` cost in CPU, and how much CPU the host took away.
//!
//! The CPU time of this process per transfer is what a CPU-bound run's throughput follows, and it
//! moves less between runs than the throughput does on a shared host. Steal is the share of
//! the machine's CPU time that its hypervisor gave to someone else while the vCPUs wanted to
//! run: on the 2-vCPU VM of the README it was 0–2% in fast runs and 10–20% in slow ones of the
//! same build, so a figure reported without it cannot be compared with another.

use std::time::Duration;

/// The process's CPU time and the machine's CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    process: Option<Duration>,
    machine: Option<MachineTicks>,
}

/// The first line of `/proc/stat`: all CPUs' time, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineTicks {
    /// user + nice + system + idle + iowait + irq + softirq + steal.
    total: u64,
    steal: u64,
}

/// What happened between two marks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// User and system CPU time of this process, all its threads.
    pub process_seconds: Option<f64>,
    /// Steal as a percentage of the machine's CPU time.
    pub steal_percent: Option<f64>,
}

impl CpuMark {
    pub fn now() -> Self {
        CpuMark {
            process: process_cpu(),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|stat| machine_ticks(&stat)),
        }
    }

    /// The CPU used from `self` to `later` (`None` where a figure cannot be read, or no tick
    /// passed).
    pub fn until(&self, later: &CpuMark) -> CpuUse {
        let process_seconds = match (self.process, later.process) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start).as_secs_f64()),
            _ => None,
        };
        let steal_percent = match (self.machine, later.machine) {
            (Some(start), Some(end)) => {
                let total = end.total.saturating_sub(start.total);
                let steal = end.steal.saturating_sub(start.steal);
                (total > 0).then(|| 100.0 * steal as f64 / total as f64)
            }
            _ => None,
        };
        CpuUse {
            process_seconds,
            steal_percent,
        }
    }
}

/// User plus system time of every thread of this process so far.
fn process_cpu() -> Option<Duration> {
    // SAFETY: `rusage` is plain integers, for which all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` through the pointer, which points at one we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The all-CPU line of `/proc/stat` ("cpu  user nice system idle iowait irq softirq steal ...").
fn machine_ticks(stat: &str) -> Option<MachineTicks> {
    let fields = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks = fields
        .split_whitespace()
        .take(8)
        .map(|field| field.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let &steal = ticks.get(7)?;
    Some(MachineTicks {
        total: ticks.iter().sum(),
        steal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_all_cpu_line_is_read() {
        let stat = "cpu  100 5 50 800 20 1 4 20 0 0\ncpu0 50 2 25 400 10 1 2 10 0 0\n";
        assert_eq!(
            machine_ticks(stat),
            Some(MachineTicks {
                total: 1_000,
                steal: 20
            })
        );
        assert_eq!(machine_ticks("cpu  1 2 3\n"), None, "no steal field");
        assert_eq!(
            machine_ticks("cpu0 1 2 3 4 5 6 7 8\n"),
            None,
            "not the all-CPU line"
        );
        assert_eq!(machine_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn steal_is_a_share_of_the_ticks_between_marks() {
        let mark = |total, steal, cpu_ms| CpuMark {
            process: Some(Duration::from_millis(cpu_ms)),
            machine: Some(MachineTicks { total, steal }),
        };
        let used = mark(1_000, 20, 300).until(&mark(1_200, 50, 1_800));
        assert_eq!(used.steal_percent, Some(15.0));
        assert_eq!(used.process_seconds, Some(1.5));
        let idle = mark(1_000, 20, 300).until(&mark(1_000, 20, 300));
        assert_eq!(idle.steal_percent, None, "no tick passed");
        let unknown = CpuMark {
            process: None,
            machine: None,
        };
        assert_eq!(unknown.until(&unknown), CpuUse::default());
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let start = CpuMark::now();
        let spun = (0..2_000_000u64).fold(0u64, |sum, n| {
            std::hint::black_box(sum.wrapping_add(n.wrapping_mul(n)))
        });
        assert!(spun > 0);
        let used = start.until(&CpuMark::now());
        assert!(used.process_seconds.is_some_and(|seconds| seconds > 0.0));
    }
}
