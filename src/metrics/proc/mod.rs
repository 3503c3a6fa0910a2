//! Pure parsers for the /proc files the sampler reads, one module per file.
//!
//! Each takes the file's text and returns values; none does I/O (except the
//! `statvfs` helper in [`mounts`], which is kept next to the mount table it
//! serves). Shared rules:
//!
//! * Only complete lines count. A last line without `\n` may have been cut
//!   off mid-number, so it is ignored: truncated input yields fewer fields,
//!   never a wrong value.
//! * Unknown lines and extra columns are ignored (newer kernels add both).
//! * A known line whose numbers do not parse is an error naming the line.
//! * No allocation per line where it can be helped: the `*_into` variants
//!   reuse the caller's vectors and strings from the previous tick.

pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod mounts;
pub mod netdev;
pub mod netstat;
pub mod snmp6;
pub mod stat;
pub mod tcp;
pub mod uptime;

pub use netstat::IpOctets;

use std::fmt;

/// Why a /proc file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A required line or field is not in the text (or was cut off).
    Missing(&'static str),
    /// A field on this line (1-based) should be a number and is not.
    BadNumber { line: usize },
    /// This line (1-based) does not have the shape of the file's lines.
    BadLine { line: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Missing(what) => write!(f, "missing {what}"),
            ParseError::BadNumber { line } => write!(f, "line {line}: bad number"),
            ParseError::BadLine { line } => write!(f, "line {line}: unexpected format"),
        }
    }
}

impl std::error::Error for ParseError {}

/// The `\n`-terminated lines of `text`, numbered from 1, without their `\n`.
/// A trailing piece without `\n` is dropped: it may be a cut-off line.
pub(crate) fn complete_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end]
        .split_terminator('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// A decimal `u64`, or `BadNumber` for this line.
pub(crate) fn num(s: &str, line: usize) -> Result<u64, ParseError> {
    // `parse` accepts a leading '+', which /proc never prints; fine either way.
    s.parse::<u64>().map_err(|_| ParseError::BadNumber { line })
}

/// A non-negative decimal with up to `digits` fraction digits ("12.34",
/// "7", "0.5") as an integer scaled by 10^digits, without going through f64.
/// Extra fraction digits are cut off, not rounded.
pub(crate) fn fixed(s: &str, digits: u32) -> Option<u64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scale = 10u64.checked_pow(digits)?;
    let mut v = int.parse::<u64>().ok()?.checked_mul(scale)?;
    let mut place = scale;
    for b in frac.bytes().take(digits as usize) {
        place /= 10;
        v = v.checked_add(u64::from(b - b'0') * place)?;
    }
    Some(v)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// `src/metrics/fixtures/<rel>`, read as text.
    pub fn fixture(rel: &str) -> String {
        let p = fixture_path(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    pub fn fixture_path(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/metrics/fixtures")
            .join(rel)
    }

    /// Calls `f` with every prefix of `text` that ends on a char boundary,
    /// from empty to whole. Large texts are walked with a stride so the
    /// quadratic cost stays small; every prefix near line ends is still fed.
    pub fn each_prefix(text: &str, mut f: impl FnMut(&str)) {
        let stride = (text.len() / 4000).max(1);
        let b = text.as_bytes();
        for i in 0..=text.len() {
            if !text.is_char_boundary(i) {
                continue;
            }
            let near_eol = (i > 0 && b[i - 1] == b'\n')
                || b.get(i) == Some(&b'\n')
                || b.get(i + 1) == Some(&b'\n');
            if i % stride == 0 || near_eol || i == text.len() {
                f(&text[..i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point() {
        assert_eq!(fixed("12.34", 2), Some(1234));
        assert_eq!(fixed("0.5", 2), Some(50));
        assert_eq!(fixed("7", 2), Some(700));
        assert_eq!(fixed("1.239", 2), Some(123));
        assert_eq!(fixed("940.61", 2), Some(94061));
        assert_eq!(fixed("", 2), None);
        assert_eq!(fixed(".5", 2), None);
        assert_eq!(fixed("1.x", 2), None);
        assert_eq!(fixed("-1", 2), None);
        assert_eq!(fixed("99999999999999999999", 2), None);
    }

    #[test]
    fn only_complete_lines() {
        let v: Vec<_> = complete_lines("a\nb\nc").collect();
        assert_eq!(v, vec![(1, "a"), (2, "b")]);
        assert_eq!(complete_lines("abc").count(), 0);
        assert_eq!(complete_lines("").count(), 0);
        let v: Vec<_> = complete_lines("a\n\nb\n").collect();
        assert_eq!(v, vec![(1, "a"), (2, ""), (3, "b")]);
    }
}
