//! `/proc/stat`: CPU time counters (total and per core), `btime`,
//! `processes` (forks since boot), `procs_running`, `procs_blocked`.
//!
//! The cpu lines grew columns over the years; all we need is that the first
//! four exist:
//!
//! ```text
//! cpu  user nice system idle [iowait irq softirq (2.6.0)] [steal (2.6.11)] [guest (2.6.24)] [guest_nice (2.6.33)]
//! ```
//!
//! The long `intr` and `softirq` lines are skipped without being split.

use super::{complete_lines, num, ParseError};

/// Column indexes in [`CpuTimes::t`].
pub const USER: usize = 0;
pub const NICE: usize = 1;
pub const SYSTEM: usize = 2;
pub const IDLE: usize = 3;
pub const IOWAIT: usize = 4;
pub const IRQ: usize = 5;
pub const SOFTIRQ: usize = 6;
pub const STEAL: usize = 7;
/// Columns kept; later ones (none so far) are ignored.
pub const CPU_COLUMNS: usize = 10;

/// One cpu line's counters in USER_HZ ticks. Columns at or past
/// `columns` were not printed by this kernel and read as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub t: [u64; CPU_COLUMNS],
    pub columns: u8,
}

impl CpuTimes {
    /// Whether the kernel printed column `i`.
    pub fn has(&self, i: usize) -> bool {
        i < usize::from(self.columns)
    }

    /// All time accounted: user..steal. guest and guest_nice are left out
    /// because the kernel already counts guest time inside user and nice.
    pub fn total(&self) -> u64 {
        self.t[..=STEAL]
            .iter()
            .fold(0u64, |a, &b| a.saturating_add(b))
    }
}

/// The parts of `/proc/stat` the sampler uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// The aggregate `cpu` line.
    pub cpu: CpuTimes,
    /// `cpuN` lines as (N, times), in file order. Offline cores are absent.
    pub cores: Vec<(u32, CpuTimes)>,
    /// Boot time, seconds since the epoch.
    pub btime: Option<u64>,
    /// Forks since boot.
    pub processes: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
}

pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let mut s = Stat::default();
    parse_stat_into(text, &mut s)?;
    Ok(s)
}

/// Parses into `out`, reusing its `cores` vector. On error `out` holds
/// whatever was parsed so far and must not be used.
pub fn parse_stat_into(text: &str, out: &mut Stat) -> Result<(), ParseError> {
    out.cores.clear();
    out.btime = None;
    out.processes = None;
    out.procs_running = None;
    out.procs_blocked = None;
    let mut have_cpu = false;
    for (n, line) in complete_lines(text) {
        if let Some(rest) = line.strip_prefix("cpu") {
            let (label, fields) = rest
                .split_once(' ')
                .ok_or(ParseError::BadLine { line: n })?;
            let times = cpu_times(fields, n)?;
            if label.is_empty() {
                out.cpu = times;
                have_cpu = true;
            } else {
                let core = label
                    .parse::<u32>()
                    .map_err(|_| ParseError::BadLine { line: n })?;
                out.cores.push((core, times));
            }
            continue;
        }
        // Only short lines are interesting; `intr` and `softirq` can be
        // kilobytes long, so look at the key before splitting anything.
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let slot = match key {
            "btime" => &mut out.btime,
            "processes" => &mut out.processes,
            "procs_running" => &mut out.procs_running,
            "procs_blocked" => &mut out.procs_blocked,
            _ => continue,
        };
        *slot = Some(num(value.trim(), n)?);
    }
    if !have_cpu {
        return Err(ParseError::Missing("cpu line"));
    }
    Ok(())
}

fn cpu_times(fields: &str, line: usize) -> Result<CpuTimes, ParseError> {
    let mut c = CpuTimes::default();
    for (i, f) in fields.split_ascii_whitespace().enumerate() {
        if i >= CPU_COLUMNS {
            break;
        }
        c.t[i] = num(f, line)?;
        c.columns += 1;
    }
    // user nice system idle are in every kernel since 2.4.
    if c.columns < 4 {
        return Err(ParseError::BadLine { line });
    }
    Ok(c)
}

/// Just `btime` (boot time, seconds since the epoch), for the fingerprint.
pub fn parse_btime(text: &str) -> Option<u64> {
    complete_lines(text)
        .find_map(|(_, l)| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    #[test]
    fn kernel_6_with_all_columns() {
        let s = parse_stat(&fixture("hosts/x86-6.1/stat")).unwrap();
        assert_eq!(s.cpu.columns, 10);
        assert_eq!(s.cpu.t[USER], 51370);
        assert_eq!(s.cpu.t[STEAL], 2452);
        assert_eq!(s.cores.len(), 2);
        assert_eq!(s.cores[1].0, 1);
        assert_eq!(s.cores[1].1.t[IOWAIT], 607);
        assert_eq!(s.btime, Some(1795869995));
        assert_eq!(s.processes, Some(16055));
        assert_eq!(s.procs_running, Some(2));
        assert_eq!(s.procs_blocked, Some(0));
        assert_eq!(s.cpu.total(), 51370 + 10032 + 169282 + 698 + 216 + 2452);
    }

    #[test]
    fn kernel_2_6_18_without_guest_columns() {
        let s = parse_stat(&fixture("hosts/centos5-2.6.18/stat")).unwrap();
        assert_eq!(s.cpu.columns, 8);
        assert!(s.cpu.has(STEAL));
        assert!(!s.cpu.has(8));
        assert_eq!(s.cores.len(), 4);
    }

    #[test]
    fn kernel_2_6_9_without_steal() {
        let s = parse_stat(&fixture("hosts/rhel4-2.6.9/stat")).unwrap();
        assert_eq!(s.cpu.columns, 7);
        assert!(!s.cpu.has(STEAL));
        assert!(s.cpu.has(IOWAIT));
        assert_eq!(s.procs_running, Some(2));
    }

    #[test]
    fn offline_core_is_absent() {
        let s = parse_stat(&fixture("hosts/rpi-arm-5.10/stat")).unwrap();
        let ids: Vec<u32> = s.cores.iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![0, 1, 3]);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_stat(""), Err(ParseError::Missing("cpu line")));
        assert_eq!(
            parse_stat("cpu  1 2 x 4\n"),
            Err(ParseError::BadNumber { line: 1 })
        );
        assert_eq!(
            parse_stat("cpu  1 2 3\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        assert_eq!(
            parse_stat("cpu  1 2 3 4\ncpuX 1 2 3 4\n"),
            Err(ParseError::BadLine { line: 2 })
        );
        assert_eq!(parse_btime("btime 12\n"), Some(12));
        assert_eq!(parse_btime("btime 12"), None);
    }

    #[test]
    fn every_prefix_of_every_fixture() {
        for host in crate::metrics::sample::tests::HOSTS {
            let Ok(text) = std::fs::read_to_string(crate::metrics::proc::testutil::fixture_path(
                &format!("hosts/{host}/stat"),
            )) else {
                continue;
            };
            let whole = parse_stat(&text).unwrap();
            let mut reuse = Stat::default();
            each_prefix(&text, |p| {
                if let Ok(s) = parse_stat(p) {
                    // A prefix never invents values: whatever it has, the
                    // whole file has too.
                    assert!(s.cores.len() <= whole.cores.len());
                    for (c, w) in s.cores.iter().zip(&whole.cores) {
                        assert_eq!(c, w);
                    }
                    assert!(s.btime.is_none() || s.btime == whole.btime);
                }
                let _ = parse_stat_into(p, &mut reuse);
            });
        }
    }
}
