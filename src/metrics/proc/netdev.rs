//! `/proc/net/dev`: per interface counters after two header lines.
//!
//! ```text
//!   eth0: 360261396   12529    0    0    0     0          0         0   601486    6998    0    0 ...
//!  eth0:1234567890 ...      ← old kernels: no space once the number fills its column
//! ```
//!
//! Interface names cannot contain ':', so the first ':' ends the name.
//! Counters are `unsigned long`: 32 bits on 32-bit kernels, so they wrap
//! (the sampler then skips that tick's rate).

use super::{complete_lines, num, ParseError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errs: u64,
    pub rx_drop: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errs: u64,
    pub tx_drop: u64,
}

impl NetDev {
    pub fn idle_since_boot(&self) -> bool {
        self.rx_bytes == 0 && self.tx_bytes == 0 && self.rx_packets == 0 && self.tx_packets == 0
    }
}

pub fn parse_netdev(text: &str) -> Result<Vec<NetDev>, ParseError> {
    let mut v = Vec::new();
    parse_netdev_into(text, &mut v)?;
    Ok(v)
}

/// Parses into `out`, reusing its elements' name strings.
pub fn parse_netdev_into(text: &str, out: &mut Vec<NetDev>) -> Result<(), ParseError> {
    let mut len = 0;
    for (n, line) in complete_lines(text) {
        if line.contains('|') {
            continue; // the two header lines
        }
        let (name, rest) = line
            .split_once(':')
            .ok_or(ParseError::BadLine { line: n })?;
        let mut v = [0u64; 12];
        let mut count = 0;
        for (slot, s) in v.iter_mut().zip(rest.split_ascii_whitespace()) {
            *slot = num(s, n)?;
            count += 1;
        }
        if count < 12 {
            return Err(ParseError::BadLine { line: n });
        }
        if len == out.len() {
            out.push(NetDev::default());
        }
        let d = &mut out[len];
        d.name.clear();
        d.name.push_str(name.trim());
        d.rx_bytes = v[0];
        d.rx_packets = v[1];
        d.rx_errs = v[2];
        d.rx_drop = v[3];
        d.tx_bytes = v[8];
        d.tx_packets = v[9];
        d.tx_errs = v[10];
        d.tx_drop = v[11];
        len += 1;
    }
    out.truncate(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    #[test]
    fn kernel_6() {
        let v = parse_netdev(&fixture("hosts/x86-6.1/net/dev")).unwrap();
        let names: Vec<&str> = v.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["lo", "ifb0", "ifb1", "eth0", "docker0"]);
        assert_eq!(v[3].rx_bytes, 360261396);
        assert_eq!(v[3].tx_packets, 6998);
        assert!(v[1].idle_since_boot());
    }

    #[test]
    fn old_kernel_glued_numbers() {
        let v = parse_netdev(&fixture("hosts/centos5-2.6.18/net/dev")).unwrap();
        let eth0 = v.iter().find(|d| d.name == "eth0").unwrap();
        assert_eq!(eth0.rx_bytes, 3283468520);
        assert_eq!(eth0.tx_bytes, 2147483990);
    }

    #[test]
    fn errors_and_prefixes() {
        assert_eq!(
            parse_netdev("eth0 1 2\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        assert_eq!(
            parse_netdev("eth0: 1 2 3\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        assert_eq!(
            parse_netdev("eth0: 1 2 3 4 5 6 7 8 9 10 11 z\n"),
            Err(ParseError::BadNumber { line: 1 })
        );
        for host in ["x86-6.1", "openwrt-mips-5.10", "docker-host-5.15"] {
            let t = fixture(&format!("hosts/{host}/net/dev"));
            let mut reuse = Vec::new();
            each_prefix(&t, |p| {
                let _ = parse_netdev(p);
                let _ = parse_netdev_into(p, &mut reuse);
            });
        }
    }
}
