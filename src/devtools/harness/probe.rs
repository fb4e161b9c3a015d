//! Readings of this machine and its processes from `/proc`, for the benches' CPU and memory
//! columns: what each process cost, and how much the rest of a shared machine disturbed a run.
//! And the one percentile over exact samples that the benches and the drill report, so their
//! figures mean the same thing.

pub fn clock_ticks_per_sec() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        t => t as f64,
    }
}

/// utime + stime of every thread of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name sits in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of the man page (state) is index 0 here; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Cores used over one phase (CPU time / wall time): by the routers (summed), by their
/// nats-server(s), by this process (load generator, stand-ins), and by everything else on the
/// machine, the gauge of how much a shared machine disturbed the phase. NaN for a process that
/// was gone at the end.
#[derive(Debug, Clone, Copy)]
pub struct Cores {
    pub routers: f64,
    pub nats: f64,
    pub bench: f64,
    pub other: f64,
}

/// CPU of a fixed set of processes, from [`start`](Self::start) to [`stop`](Self::stop).
#[derive(Debug)]
pub struct CpuProbe {
    at: std::time::Instant,
    routers: Vec<(u32, u64)>,
    nats: Vec<(u32, u64)>,
    bench: u64,
    machine: u64,
}

impl CpuProbe {
    pub fn start(router_pids: &[u32], nats_pids: &[u32]) -> CpuProbe {
        let ticks = |pids: &[u32]| {
            pids.iter()
                .map(|p| (*p, cpu_ticks(*p).unwrap_or(0)))
                .collect()
        };
        CpuProbe {
            at: std::time::Instant::now(),
            routers: ticks(router_pids),
            nats: ticks(nats_pids),
            bench: cpu_ticks(std::process::id()).unwrap_or(0),
            machine: machine_busy_ticks().unwrap_or(0),
        }
    }

    pub fn stop(self) -> Cores {
        let secs = self.at.elapsed().as_secs_f64();
        let tck = clock_ticks_per_sec();
        let cores = |now: Option<u64>, then: u64| {
            now.map_or(f64::NAN, |n| n.saturating_sub(then) as f64 / tck / secs)
        };
        let sum = |procs: &[(u32, u64)]| {
            procs
                .iter()
                .map(|(pid, then)| cores(cpu_ticks(*pid), *then))
                .sum::<f64>()
        };
        let routers = sum(&self.routers);
        let nats = sum(&self.nats);
        let bench = cores(cpu_ticks(std::process::id()), self.bench);
        // The per-process and machine counters are sampled microseconds apart and tick at
        // 100 Hz, so a quiet machine can come out slightly negative: clamp.
        let other = (cores(machine_busy_ticks(), self.machine) - routers - nats - bench).max(0.0);
        Cores {
            routers,
            nats,
            bench,
            other,
        }
    }
}

/// Peak resident set size (`VmHWM`) in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Busy time of the whole machine (all CPUs), in clock ticks: the first line of `/proc/stat`
/// minus idle and iowait.
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<u64> = cpu
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    Some(t.get(..8)?.iter().sum::<u64>() - t[3] - t[4])
}

/// `N cores, CPU model, RAM`, for a report's header.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| format!("{:.0}", kib / 1024.0 / 1024.0));
    format!("{cpus} cores (`available_parallelism`), {model}, {mem_gib} GiB RAM")
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// The `p` (0..=1) percentile of `sorted` (ascending), nearest-rank: the smallest sample with at
/// least a share `p` of all samples at or below it. Always a value that was measured (no
/// interpolation), so a p99 of a few hundred samples is an actual lead's latency. `None` when
/// there are no samples.
///
/// The service's own percentiles (`leadrouter latency`, the console) come from bucketed
/// windows instead (`telemetry::windows`): they keep no samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let n = sorted.len();
    let rank = ((n as f64) * p.clamp(0.0, 1.0)).ceil().max(1.0) as usize;
    sorted.get(rank.min(n).checked_sub(1)?).copied()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&v, 0.999), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[7.5], 0.99), Some(7.5));
        assert_eq!(percentile::<f64>(&[], 0.5), None);
    }
}
