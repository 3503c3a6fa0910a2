//! `/proc/loadavg`: `0.02 0.93 0.80 1/88 13710`, one line.
//!
//! Field 4 is "runnable/total" scheduling entities; the total counts threads,
//! and is the cheap process count the sampler reports (no readdir of /proc).

use super::{complete_lines, fixed, num, ParseError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadAvg {
    /// Load averages in hundredths (0.93 → 93).
    pub one: u64,
    pub five: u64,
    pub fifteen: u64,
    /// Runnable tasks right now.
    pub running: u64,
    /// All tasks (processes and their threads).
    pub tasks: u64,
}

pub fn parse_loadavg(text: &str) -> Result<LoadAvg, ParseError> {
    let (n, line) = complete_lines(text)
        .next()
        .ok_or(ParseError::Missing("load line"))?;
    let mut f = line.split_ascii_whitespace();
    let mut load = || {
        f.next()
            .and_then(|s| fixed(s, 2))
            .ok_or(ParseError::BadNumber { line: n })
    };
    let (one, five, fifteen) = (load()?, load()?, load()?);
    let (running, tasks) = f
        .next()
        .and_then(|s| s.split_once('/'))
        .ok_or(ParseError::BadLine { line: n })?;
    Ok(LoadAvg {
        one,
        five,
        fifteen,
        running: num(running, n)?,
        tasks: num(tasks, n)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::each_prefix;

    #[test]
    fn parses() {
        let l = parse_loadavg("0.02 0.93 12.80 1/88 13710\n").unwrap();
        assert_eq!(
            l,
            LoadAvg {
                one: 2,
                five: 93,
                fifteen: 1280,
                running: 1,
                tasks: 88
            }
        );
    }

    #[test]
    fn errors_and_prefixes() {
        assert_eq!(parse_loadavg(""), Err(ParseError::Missing("load line")));
        assert_eq!(
            parse_loadavg("0.02 x 0.80 1/88 1\n"),
            Err(ParseError::BadNumber { line: 1 })
        );
        assert_eq!(
            parse_loadavg("0.02 0.1 0.80 188 1\n"),
            Err(ParseError::BadLine { line: 1 })
        );
        let text = "0.02 0.93 0.80 1/88 13710\n";
        each_prefix(text, |p| {
            let r = parse_loadavg(p);
            if p.len() < text.len() {
                assert!(r.is_err(), "{p:?}");
            }
        });
    }
}
