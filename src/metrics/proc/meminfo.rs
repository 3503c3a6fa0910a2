//! `/proc/meminfo`: `Key:   value kB` lines. Values are kept in bytes.
//!
//! `MemAvailable` exists since 3.14 (and in some backports); without it the
//! sampler falls back to free + buffers + cache like old `free` did.

use super::{complete_lines, num, ParseError};

/// The meminfo fields the sampler uses, in bytes. `None`: not printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: Option<u64>,
    pub available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub sreclaimable: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut m = MemInfo::default();
    let mut total = None;
    for (n, line) in complete_lines(text) {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemFree" => &mut m.free,
            "MemAvailable" => &mut m.available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "SReclaimable" => &mut m.sreclaimable,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        let mut f = rest.split_ascii_whitespace();
        let v = num(f.next().ok_or(ParseError::BadLine { line: n })?, n)?;
        // Every field we read is in kB ("kB" means KiB here); a unit-less
        // value would be a page count, which none of ours is.
        if f.next() != Some("kB") {
            return Err(ParseError::BadLine { line: n });
        }
        *slot = Some(v.saturating_mul(1024));
    }
    m.total = total.ok_or(ParseError::Missing("MemTotal"))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    #[test]
    fn kernel_6() {
        let m = parse_meminfo(&fixture("hosts/x86-6.1/meminfo")).unwrap();
        assert_eq!(m.total, 24684084 * 1024);
        assert_eq!(m.available, Some(24254380 * 1024));
        assert_eq!(m.swap_total, Some(0));
        assert_eq!(m.sreclaimable, Some(100140 * 1024));
    }

    #[test]
    fn old_kernel_without_memavailable() {
        let m = parse_meminfo(&fixture("hosts/centos5-2.6.18/meminfo")).unwrap();
        assert_eq!(m.available, None);
        assert_eq!(m.sreclaimable, None);
        assert!(m.cached.is_some());
        assert!(m.swap_total.unwrap() > 0);
    }

    #[test]
    fn errors_and_prefixes() {
        assert_eq!(parse_meminfo(""), Err(ParseError::Missing("MemTotal")));
        assert_eq!(
            parse_meminfo("MemTotal: x kB\n"),
            Err(ParseError::BadNumber { line: 1 })
        );
        assert_eq!(
            parse_meminfo("MemTotal: 1\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        let text = fixture("hosts/x86-6.1/meminfo");
        let whole = parse_meminfo(&text).unwrap();
        each_prefix(&text, |p| {
            if let Ok(m) = parse_meminfo(p) {
                assert_eq!(m.total, whole.total);
                assert!(m.available.is_none() || m.available == whole.available);
            }
        });
    }
}
