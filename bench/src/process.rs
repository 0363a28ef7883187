//! What Linux says about a process: CPU seconds, memory, the machine's load.
//! Each returns `None` where `/proc` does not have it.

/// CPU seconds (user + system) process `pid` has used, from
/// `/proc/<pid>/stat`.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_secs_of_stat(&stat)
}

fn cpu_secs_of_stat(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture.
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of a PostgreSQL cluster: its postmaster (with the children
/// that already exited, which it waited for) and its live backends, wal
/// writer and walsenders; `pid` is the postmaster's.
pub fn cluster_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14 to 17.
    let own: u64 = (11..15)
        .map(|i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()?;
    let mut total = own as f64 / 100.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4 is the parent's pid.
        let parent = stat
            .get(stat.rfind(')').unwrap_or(0) + 2..)
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            total += cpu_secs_of_stat(&stat).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// CPU seconds this process has used.
pub fn own_cpu_secs() -> Option<f64> {
    cpu_secs(std::process::id())
}

/// A `kB` field (`VmRSS`, `VmHWM`, …) of `/proc/<pid>/status`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, field)
}

/// A `kB` field of this process's `/proc/self/status`.
pub fn own_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, field)
}

fn kib_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS; false when
/// the kernel does not allow it.
pub fn reset_own_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages, e.g. `0.52 0.58 0.59`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc() {
        assert!(own_status_kib("VmRSS").is_some_and(|k| k > 0));
        assert!(status_kib(std::process::id(), "VmHWM").is_some_and(|k| k > 0));
        assert!(own_cpu_secs().is_some());
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_secs_of_stat(stat), Some(3.0));
    }
}
