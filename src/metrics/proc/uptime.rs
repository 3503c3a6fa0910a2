//! `/proc/uptime`: `940.61 1252.88` (seconds up, idle seconds summed over
//! cores). Only the first is used.

use super::{complete_lines, fixed, ParseError};

/// Seconds since boot, fractions dropped.
pub fn parse_uptime(text: &str) -> Result<u64, ParseError> {
    let (n, line) = complete_lines(text)
        .next()
        .ok_or(ParseError::Missing("uptime line"))?;
    line.split_ascii_whitespace()
        .next()
        .and_then(|s| fixed(s, 0))
        .ok_or(ParseError::BadNumber { line: n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::each_prefix;

    #[test]
    fn parses() {
        assert_eq!(parse_uptime("940.61 1252.88\n"), Ok(940));
        assert_eq!(parse_uptime("5 1\n"), Ok(5));
        assert!(parse_uptime("x 1\n").is_err());
        each_prefix("940.61 1252.88\n", |p| {
            let _ = parse_uptime(p);
        });
        assert!(parse_uptime("940.6").is_err());
    }
}
