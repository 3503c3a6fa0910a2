//! `/proc/net/netstat`: pairs of lines, names then values, per group:
//!
//! ```text
//! IpExt: InNoRoutes InTruncatedPkts ... InOctets OutOctets ...
//! IpExt: 0 0 ... 360087963 509652 ...
//! ```
//!
//! Only `IpExt` `InOctets`/`OutOctets` (IPv4 bytes, since 2.6.x) are read.
//! Containers with a partial /proc may lack the group.

use super::{complete_lines, num, ParseError};

/// IP-layer byte counters of one family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpOctets {
    pub in_octets: u64,
    pub out_octets: u64,
}

pub fn parse_netstat_ipext(text: &str) -> Result<IpOctets, ParseError> {
    let mut names: Option<&str> = None;
    for (n, line) in complete_lines(text) {
        let Some(rest) = line.strip_prefix("IpExt:") else {
            names = None;
            continue;
        };
        let Some(header) = names.take() else {
            names = Some(rest);
            continue;
        };
        let (mut inp, mut out) = (None, None);
        let mut values = rest.split_ascii_whitespace();
        for name in header.split_ascii_whitespace() {
            let Some(v) = values.next() else {
                return Err(ParseError::BadLine { line: n });
            };
            match name {
                "InOctets" => inp = Some(num(v, n)?),
                "OutOctets" => out = Some(num(v, n)?),
                _ => {}
            }
        }
        return match (inp, out) {
            (Some(in_octets), Some(out_octets)) => Ok(IpOctets {
                in_octets,
                out_octets,
            }),
            _ => Err(ParseError::Missing("IpExt InOctets/OutOctets")),
        };
    }
    Err(ParseError::Missing("IpExt"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    #[test]
    fn kernel_6() {
        let o = parse_netstat_ipext(&fixture("hosts/x86-6.1/net/netstat")).unwrap();
        assert_eq!(o.in_octets, 360087963);
        assert_eq!(o.out_octets, 509652);
    }

    #[test]
    fn missing_group_and_fields() {
        assert_eq!(
            parse_netstat_ipext("TcpExt: A B\nTcpExt: 1 2\n"),
            Err(ParseError::Missing("IpExt"))
        );
        assert_eq!(
            parse_netstat_ipext("IpExt: InNoRoutes\nIpExt: 0\n"),
            Err(ParseError::Missing("IpExt InOctets/OutOctets"))
        );
        assert_eq!(
            parse_netstat_ipext("IpExt: InOctets OutOctets\nIpExt: 1\n"),
            Err(ParseError::BadLine { line: 2 })
        );
        assert_eq!(
            parse_netstat_ipext("IpExt: InOctets OutOctets\nIpExt: 1 x\n"),
            Err(ParseError::BadNumber { line: 2 })
        );
    }

    #[test]
    fn prefixes() {
        let t = fixture("hosts/x86-6.1/net/netstat");
        let whole = parse_netstat_ipext(&t).unwrap();
        each_prefix(&t, |p| {
            if let Ok(o) = parse_netstat_ipext(p) {
                assert_eq!(o, whole);
            }
        });
    }
}
