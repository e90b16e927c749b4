//! CPU time and memory from /proc (Linux): this process's, the
//! nats-server's the bench started and the hosts' it ran.

use super::report::SystemResult;

/// CPU time of this process and of the server (its /proc name and its
/// time), at the start of a phase.
pub(super) struct Cpu {
    process: f64,
    server: Option<(String, f64)>,
}

impl Cpu {
    pub(super) fn now(server: Option<u32>) -> Self {
        Cpu {
            process: cpu_seconds("self"),
            server: server.map(|pid| {
                let pid = pid.to_string();
                let spent = cpu_seconds(&pid);
                (pid, spent)
            }),
        }
    }

    /// The CPU spent since `self`, in total and per settled message.
    pub(super) fn fill(&self, result: &mut SystemResult) {
        let per_msg = |s: f64| s / result.processed.max(1) as f64 * 1e6;
        result.cpu_seconds = cpu_seconds("self") - self.process;
        result.cpu_us_per_msg = per_msg(result.cpu_seconds);
        if let Some((pid, before)) = &self.server {
            let spent = cpu_seconds(pid) - before;
            result.server_cpu_seconds = Some(spent);
            result.server_cpu_us_per_msg = Some(per_msg(spent));
        }
    }
}

/// User plus system CPU time of process `pid` ("self" for this one), from
/// /proc (Linux); 0 where it cannot be read.
pub(super) fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at
    // the last ')'; utime and stime are fields 14 and 15, in clock ticks of
    // 1/100 s on Linux.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// Peak resident set size of this process, MiB (VmHWM).
pub(super) fn peak_rss_mib() -> f64 {
    status_mib("self", "VmHWM:")
}

/// Resident set size of process `pid` ("self" for this one) now, MiB
/// (VmRSS); 0 where it cannot be read.
pub(super) fn rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A `kB` field of /proc/PID/status, in MiB.
fn status_mib(pid: &str, field: &str) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU use of one process over a span of wall time, from /proc.
pub(super) struct Usage {
    pid: String,
    cpu: f64,
    since: std::time::Instant,
}

impl Usage {
    /// Start counting for process `pid` ("self" for this one).
    pub(super) fn start(pid: &str) -> Self {
        Usage {
            pid: pid.to_owned(),
            cpu: cpu_seconds(pid),
            since: std::time::Instant::now(),
        }
    }

    /// CPU time since the start as a share of one core's wall time, %.
    pub(super) fn percent(&self) -> f64 {
        let wall = self.since.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (cpu_seconds(&self.pid) - self.cpu) / wall * 100.0
    }

    /// CPU seconds since the start.
    pub(super) fn seconds(&self) -> f64 {
        cpu_seconds(&self.pid) - self.cpu
    }
}
