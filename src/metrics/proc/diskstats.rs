//! `/proc/diskstats`: per block device I/O counters.
//!
//! ```text
//!  254  0 vda  45133 7134 4913474 61662 14630 26497 7884416 43372 0 12828 106698 [discard 4 (4.18)] [flush 2 (5.5)]
//!    8  1 sda1 35486 38030 8 16          ← partitions on kernels before 2.6.25: 4 fields
//! ```
//!
//! Sectors are always 512 bytes here, whatever the device's sector size.
//!
//! Which devices are reported (see [`is_reported`]): whole disks only —
//! partitions would count the same bytes twice — and no `loop*`, `ram*` or
//! `zram*` devices (memory- and file-backed, not hardware), and no device
//! that never did any I/O (empty `nbd*`, `sr0` without a disc), so an idle
//! host does not carry dozens of all-zero series. Device-mapper and md
//! devices are kept: they are the volumes people name.

use super::{complete_lines, num, ParseError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub name: String,
    pub reads: u64,
    pub sectors_read: u64,
    pub writes: u64,
    pub sectors_written: u64,
}

impl DiskStats {
    fn idle_since_boot(&self) -> bool {
        self.reads == 0 && self.writes == 0 && self.sectors_read == 0 && self.sectors_written == 0
    }
}

pub fn parse_diskstats(text: &str) -> Result<Vec<DiskStats>, ParseError> {
    let mut v = Vec::new();
    parse_diskstats_into(text, &mut v)?;
    Ok(v)
}

/// Parses into `out`, reusing its elements' name strings.
pub fn parse_diskstats_into(text: &str, out: &mut Vec<DiskStats>) -> Result<(), ParseError> {
    let mut len = 0;
    for (n, line) in complete_lines(text) {
        let mut f = line.split_ascii_whitespace();
        let (Some(_major), Some(_minor), Some(name)) = (f.next(), f.next(), f.next()) else {
            return Err(ParseError::BadLine { line: n });
        };
        let mut vals = [0u64; 7];
        let mut count = 0;
        for (slot, s) in vals.iter_mut().zip(&mut f) {
            *slot = num(s, n)?;
            count += 1;
        }
        let (reads, sectors_read, writes, sectors_written) = match count {
            // Old partition format: reads, sectors read, writes, sectors written.
            4 => (vals[0], vals[1], vals[2], vals[3]),
            7 => (vals[0], vals[2], vals[4], vals[6]),
            _ => return Err(ParseError::BadLine { line: n }),
        };
        if len == out.len() {
            out.push(DiskStats::default());
        }
        let d = &mut out[len];
        d.name.clear();
        d.name.push_str(name);
        d.reads = reads;
        d.sectors_read = sectors_read;
        d.writes = writes;
        d.sectors_written = sectors_written;
        len += 1;
    }
    out.truncate(len);
    Ok(())
}

/// Whether `d` is a device to report, given all devices in the file (to
/// recognise partitions by their parent). See the module doc.
pub fn is_reported(d: &DiskStats, all: &[DiskStats]) -> bool {
    let name = d.name.as_str();
    if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) || d.idle_since_boot() {
        return false;
    }
    !all.iter().any(|p| is_partition_of(name, &p.name))
}

/// `sda1` of `sda`, `nvme0n1p2` of `nvme0n1`, `mmcblk0p1` of `mmcblk0`;
/// but not `dm-10` of `dm-1` nor `md12` of `md1`.
pub fn is_partition_of(name: &str, parent: &str) -> bool {
    let Some(rest) = name.strip_prefix(parent) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parent.bytes().last() {
        Some(b'0'..=b'9') => rest.strip_prefix('p').is_some_and(digits),
        Some(_) => digits(rest),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    fn reported(text: &str) -> Vec<String> {
        let all = parse_diskstats(text).unwrap();
        all.iter()
            .filter(|d| is_reported(d, &all))
            .map(|d| d.name.clone())
            .collect()
    }

    #[test]
    fn kernel_6_with_17_columns() {
        let t = fixture("hosts/x86-6.1/diskstats");
        let all = parse_diskstats(&t).unwrap();
        let vda = all.iter().find(|d| d.name == "vda").unwrap();
        assert_eq!((vda.reads, vda.sectors_read), (66688, 5529898));
        assert_eq!((vda.writes, vda.sectors_written), (18566, 7957848));
        assert_eq!(reported(&t), vec!["vda"]);
    }

    #[test]
    fn old_partition_format() {
        let t = fixture("hosts/centos5-2.6.18/diskstats");
        let all = parse_diskstats(&t).unwrap();
        let p = all.iter().find(|d| d.name == "sda1").unwrap();
        assert_eq!(
            (p.reads, p.sectors_read, p.writes, p.sectors_written),
            (35486, 38030, 8, 16)
        );
        assert_eq!(reported(&t), vec!["hdc", "sda", "dm-0", "dm-1"]);
    }

    #[test]
    fn nvme_mmc_and_friends() {
        let t = fixture("hosts/docker-host-5.15/diskstats");
        assert_eq!(reported(&t), vec!["nvme0n1", "sdb", "dm-0", "dm-10"]);
        let t = fixture("hosts/rpi-arm-5.10/diskstats");
        assert_eq!(reported(&t), vec!["mmcblk0"]);
    }

    #[test]
    fn partitions() {
        assert!(is_partition_of("sda1", "sda"));
        assert!(is_partition_of("nvme0n1p12", "nvme0n1"));
        assert!(is_partition_of("mmcblk0p1", "mmcblk0"));
        assert!(!is_partition_of("dm-10", "dm-1"));
        assert!(!is_partition_of("md12", "md1"));
        assert!(!is_partition_of("sda", "sda"));
        assert!(!is_partition_of("sdab", "sda"));
        assert!(!is_partition_of("mmcblk0boot0", "mmcblk0"));
    }

    #[test]
    fn errors_and_prefixes() {
        assert_eq!(
            parse_diskstats("8 0\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        assert_eq!(
            parse_diskstats("8 0 sda 1 2 3 4 5\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        assert_eq!(
            parse_diskstats("8 0 sda 1 2 x 4\n"),
            Err(ParseError::BadNumber { line: 1 })
        );
        let t = fixture("hosts/docker-host-5.15/diskstats");
        let mut reuse = Vec::new();
        each_prefix(&t, |p| {
            let _ = parse_diskstats_into(p, &mut reuse);
            if let Ok(v) = parse_diskstats(p) {
                assert!(v.len() <= t.lines().count());
            }
        });
    }
}
