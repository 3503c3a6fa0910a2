//! `/proc/net/snmp6`: `Name value` lines; absent when IPv6 is disabled
//! (`ipv6.disable=1`) or not built. Only the byte counters are read.

use super::{complete_lines, num, IpOctets, ParseError};

pub fn parse_snmp6(text: &str) -> Result<IpOctets, ParseError> {
    let (mut inp, mut out) = (None, None);
    for (n, line) in complete_lines(text) {
        let mut f = line.split_ascii_whitespace();
        let slot = match f.next() {
            Some("Ip6InOctets") => &mut inp,
            Some("Ip6OutOctets") => &mut out,
            _ => continue,
        };
        *slot = Some(num(f.next().ok_or(ParseError::BadLine { line: n })?, n)?);
        if let (Some(in_octets), Some(out_octets)) = (inp, out) {
            return Ok(IpOctets {
                in_octets,
                out_octets,
            });
        }
    }
    Err(ParseError::Missing("Ip6InOctets/Ip6OutOctets"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    #[test]
    fn kernel_6() {
        let t = fixture("hosts/x86-6.1/net/snmp6");
        assert_eq!(
            parse_snmp6(&t),
            Ok(IpOctets {
                in_octets: 128,
                out_octets: 5564
            })
        );
        each_prefix(&t, |p| {
            if let Ok(o) = parse_snmp6(p) {
                assert_eq!(o.in_octets, 128);
            }
        });
        assert!(parse_snmp6("Ip6InOctets\n").is_err());
        assert!(parse_snmp6("").is_err());
    }
}
