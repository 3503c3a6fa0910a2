//! Pure parsers for the cgroup files the container sampler reads: the
//! kernel's own accounting of a container, so no Docker stats call is needed.
//!
//! ```text
//! cgroup v2 cpu.stat, memory.stat     usage_usec 31612\nuser_usec 13548\n…   (flat keyed)
//! cgroup v1 memory.stat               cache 192512\nrss 57344\n…             (flat keyed)
//! memory.current, memory.usage_in_bytes, cpuacct.usage   761856\n           (one number)
//! cgroup.procs                        22004\n22051\n                       (pids, init first)
//! ```
//!
//! The rules of [`crate::metrics::proc`] hold: only complete lines count, so
//! a file cut off mid-number yields an error, never a wrong value.

use super::proc::{complete_lines, num, ParseError};

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.stat`).
pub fn parse_keyed(text: &str, key: &'static str) -> Result<u64, ParseError> {
    for (n, line) in complete_lines(text) {
        let mut it = line.split_ascii_whitespace();
        if it.next() == Some(key) {
            return it
                .next()
                .ok_or(ParseError::BadLine { line: n })
                .and_then(|v| num(v, n));
        }
    }
    Err(ParseError::Missing(key))
}

/// A file holding one number (`memory.current`, `cpuacct.usage`).
pub fn parse_single(text: &str, what: &'static str) -> Result<u64, ParseError> {
    let (n, line) = complete_lines(text)
        .next()
        .ok_or(ParseError::Missing(what))?;
    num(line.trim(), n)
}

/// The first pid of `cgroup.procs`. The kernel lists a cgroup's processes
/// in pid order, not by age, so this is some process of the container, not
/// necessarily its init; any one will do, as all share its network
/// namespace unless the container made its own (rare, and then its init's
/// is no better).
pub fn parse_first_pid(text: &str) -> Result<u32, ParseError> {
    let (n, line) = complete_lines(text)
        .next()
        .ok_or(ParseError::Missing("pid"))?;
    let pid = num(line.trim(), n)?;
    u32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or(ParseError::BadNumber { line: n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    const V2: &str = "containers/t0/cgroup/docker/aaaa000000000000000000000000000000000000000000000000000000000001";
    const V1: &str = "containers/t0/cgroup/cpuacct/docker/bbbb000000000000000000000000000000000000000000000000000000000002";

    #[test]
    fn keyed_values() {
        let cpu = fixture(&format!("{V2}/cpu.stat"));
        assert_eq!(parse_keyed(&cpu, "usage_usec"), Ok(31612));
        assert_eq!(parse_keyed(&cpu, "system_usec"), Ok(18064));
        let mem = fixture(&format!("{V2}/memory.stat"));
        assert_eq!(parse_keyed(&mem, "inactive_file"), Ok(110592));
        assert_eq!(
            parse_keyed(&mem, "no_such_key"),
            Err(ParseError::Missing("no_such_key"))
        );
        assert_eq!(
            parse_keyed("usage_usec x\n", "usage_usec"),
            Err(ParseError::BadNumber { line: 1 })
        );
        assert_eq!(
            parse_keyed("usage_usec\n", "usage_usec"),
            Err(ParseError::BadLine { line: 1 })
        );
        // A key that is a prefix of another is not confused with it.
        assert_eq!(
            parse_keyed("usage_usec_x 1\nusage_usec 2\n", "usage_usec"),
            Ok(2)
        );
    }

    #[test]
    fn single_values_and_pids() {
        let cur = fixture(&format!("{V2}/memory.current"));
        assert_eq!(parse_single(&cur, "memory.current"), Ok(761856));
        let usage = fixture(&format!("{V1}/cpuacct.usage"));
        assert_eq!(parse_single(&usage, "cpuacct.usage"), Ok(31612806));
        let procs = fixture(&format!("{V2}/cgroup.procs"));
        assert_eq!(parse_first_pid(&procs), Ok(4242));
        assert_eq!(parse_first_pid(""), Err(ParseError::Missing("pid")));
        assert!(parse_first_pid("0\n").is_err());
        assert!(parse_first_pid("99999999999\n").is_err());
        assert!(parse_single("max\n", "x").is_err());
    }

    /// A file cut anywhere gives the whole value or an error, never a
    /// shorter number.
    #[test]
    fn every_prefix_is_whole_or_error() {
        for (rel, key) in [
            (format!("{V2}/cpu.stat"), "usage_usec"),
            (format!("{V2}/memory.stat"), "inactive_file"),
        ] {
            let text = fixture(&rel);
            let whole = parse_keyed(&text, key).unwrap();
            each_prefix(&text, |p| {
                if let Ok(v) = parse_keyed(p, key) {
                    assert_eq!(v, whole, "{rel}: {p:?}");
                }
            });
        }
        for rel in [
            format!("{V2}/memory.current"),
            format!("{V1}/cpuacct.usage"),
        ] {
            let text = fixture(&rel);
            let whole = parse_single(&text, "x").unwrap();
            each_prefix(&text, |p| {
                if let Ok(v) = parse_single(p, "x") {
                    assert_eq!(v, whole, "{rel}: {p:?}");
                }
            });
        }
        let text = fixture(&format!("{V2}/cgroup.procs"));
        each_prefix(&text, |p| {
            if let Ok(v) = parse_first_pid(p) {
                assert_eq!(v, 4242, "{p:?}");
            }
        });
    }
}
