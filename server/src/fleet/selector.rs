//! Labels and selectors: the one way a set of runners is named (jobs,
//! waves, schedules, the runners list).
//!
//! A label is `key=value`; a selector is a comma-separated list of
//! requirements, all of which must hold:
//!
//! ```text
//!  env=prod          key present with this value   (`==` is the same)
//!  env!=prod         key absent, or another value
//!  region in (eu,us) key present with one of these values
//!  tier notin (a,b)  key absent, or none of these values
//!  canary            key present (any value)
//!  !canary           key absent
//! ```
//!
//! e.g. `env=prod,region in (eu,us),!canary`. The empty selector matches
//! every runner. Text is parsed once into a [`Selector`]; matching is then
//! a walk over its requirements. Errors name the byte position.
//!
//! Self-contained but for the label model (`db::fleet::{Labels,
//! MAX_LABELS}`): the fuzz target `selector` compiles this file as it is,
//! with a stand-in for those two items.

use std::fmt;

/// Longest key and value.
pub const MAX_KEY: usize = 63;
pub const MAX_VALUE: usize = 63;
/// Most labels one runner may carry (the store enforces it too).
pub use crate::db::fleet::MAX_LABELS;
/// Longest selector text, most requirements, most values in one set.
pub const MAX_SELECTOR: usize = 1024;
pub const MAX_REQUIREMENTS: usize = 32;
pub const MAX_SET: usize = 64;

/// A runner's labels, ordered by key.
pub use crate::db::fleet::Labels;

/// Why a label or selector was refused, and where (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: usize,
    pub what: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.pos, self.what)
    }
}

impl std::error::Error for SyntaxError {}

fn err<T>(pos: usize, what: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        pos,
        what: what.into(),
    })
}

/// Key bytes: letters, digits and `._-/`; starts and ends with a letter
/// or digit (so `a.b/c-d` but not `-a` or `a/`).
fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
}

/// Value bytes: letters, digits and `._-` (may be empty).
fn value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Check a label key; `pos` is where it starts in the caller's text.
pub fn check_key(key: &str, pos: usize) -> Result<(), SyntaxError> {
    let b = key.as_bytes();
    if b.is_empty() {
        return err(pos, "a label key is empty");
    }
    if b.len() > MAX_KEY {
        return err(pos, format!("a label key is longer than {MAX_KEY} bytes"));
    }
    if let Some(i) = b.iter().position(|&c| !key_byte(c)) {
        return err(
            pos + i,
            "a label key holds only letters, digits and . _ - /",
        );
    }
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return err(pos, "a label key starts and ends with a letter or digit");
    }
    Ok(())
}

/// Check a label value; `pos` is where it starts in the caller's text.
pub fn check_value(value: &str, pos: usize) -> Result<(), SyntaxError> {
    if value.len() > MAX_VALUE {
        return err(
            pos,
            format!("a label value is longer than {MAX_VALUE} bytes"),
        );
    }
    if let Some(i) = value.bytes().position(|c| !value_byte(c)) {
        return err(
            pos + i,
            "a label value holds only letters, digits and . _ -",
        );
    }
    Ok(())
}

/// Parse one `key=value` (as given to `--label`).
pub fn parse_label(text: &str) -> Result<(String, String), SyntaxError> {
    let Some(eq) = text.find('=') else {
        return err(0, "a label is key=value");
    };
    let (k, v) = (&text[..eq], &text[eq + 1..]);
    check_key(k, 0)?;
    check_value(v, eq + 1)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Check a whole label set: each key and value, and the count.
pub fn check_labels(labels: &Labels) -> Result<(), SyntaxError> {
    if labels.len() > MAX_LABELS {
        return err(0, format!("more than {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        check_key(k, 0).map_err(|e| SyntaxError {
            what: format!("{k:?}: {}", e.what),
            ..e
        })?;
        check_value(v, 0).map_err(|e| SyntaxError {
            what: format!("{k:?}: {}", e.what),
            ..e
        })?;
    }
    Ok(())
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::Absent(k) => k,
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match self {
            Requirement::Equals(_, v) => value == Some(v.as_str()),
            Requirement::NotEquals(_, v) => value != Some(v.as_str()),
            Requirement::In(_, set) => value.is_some_and(|x| set.iter().any(|v| v == x)),
            Requirement::NotIn(_, set) => !value.is_some_and(|x| set.iter().any(|v| v == x)),
            Requirement::Exists(_) => value.is_some(),
            Requirement::Absent(_) => value.is_none(),
        }
    }
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every runner.
    pub fn all() -> Selector {
        Selector::default()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    pub fn is_all(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs
            .iter()
            .all(|r| r.matches(labels.get(r.key()).map(String::as_str)))
    }

    pub fn parse(text: &str) -> Result<Selector, SyntaxError> {
        if text.len() > MAX_SELECTOR {
            return err(
                MAX_SELECTOR,
                format!("a selector is longer than {MAX_SELECTOR} bytes"),
            );
        }
        let mut p = Parser {
            s: text.as_bytes(),
            text,
            i: 0,
        };
        let mut reqs = Vec::new();
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector { reqs });
        }
        loop {
            if reqs.len() == MAX_REQUIREMENTS {
                return err(p.i, format!("more than {MAX_REQUIREMENTS} requirements"));
            }
            reqs.push(p.requirement()?);
            p.skip_ws();
            if p.at_end() {
                return Ok(Selector { reqs });
            }
            if !p.eat(b',') {
                return err(p.i, "expected , between requirements");
            }
            p.skip_ws();
        }
    }
}

impl fmt::Display for Selector {
    /// The canonical text: parses back to the same selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, r) in self.reqs.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, s) => write!(f, "{k} in ({})", s.join(","))?,
                Requirement::NotIn(k, s) => write!(f, "{k} notin ({})", s.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::Absent(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// A run of bytes that may form a key or value (checked after).
    fn word(&mut self, ok: fn(u8) -> bool) -> (usize, &str) {
        let start = self.i;
        while self.peek().is_some_and(ok) {
            self.i += 1;
        }
        // Only ASCII bytes were taken: slicing at these bounds is safe.
        (start, &self.text[start..self.i])
    }

    fn key(&mut self) -> Result<String, SyntaxError> {
        let (start, k) = self.word(key_byte);
        if k.is_empty() {
            return match self.peek() {
                None => err(start, "expected a label key, found the end"),
                Some(_) => err(start, "expected a label key"),
            };
        }
        check_key(k, start)?;
        Ok(k.to_owned())
    }

    fn value(&mut self) -> Result<String, SyntaxError> {
        let (start, v) = self.word(value_byte);
        check_value(v, start)?;
        Ok(v.to_owned())
    }

    fn requirement(&mut self) -> Result<Requirement, SyntaxError> {
        if self.eat(b'!') {
            self.skip_ws();
            return Ok(Requirement::Absent(self.key()?));
        }
        let key = self.key()?;
        self.skip_ws();
        match self.peek() {
            None | Some(b',') => Ok(Requirement::Exists(key)),
            Some(b'=') => {
                self.i += 1;
                self.eat(b'=');
                self.skip_ws();
                Ok(Requirement::Equals(key, self.value()?))
            }
            Some(b'!') => {
                self.i += 1;
                if !self.eat(b'=') {
                    return err(self.i, "expected = after !");
                }
                self.skip_ws();
                Ok(Requirement::NotEquals(key, self.value()?))
            }
            Some(_) => {
                let at = self.i;
                let (_, op) = self.word(|b| b.is_ascii_alphabetic());
                let not = match op {
                    "in" => false,
                    "notin" => true,
                    _ => return err(at, "expected =, !=, in or notin"),
                };
                let set = self.set()?;
                Ok(if not {
                    Requirement::NotIn(key, set)
                } else {
                    Requirement::In(key, set)
                })
            }
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SyntaxError> {
        self.skip_ws();
        if !self.eat(b'(') {
            return err(self.i, "expected ( to open a set");
        }
        let mut set = Vec::new();
        loop {
            self.skip_ws();
            if set.len() == MAX_SET {
                return err(self.i, format!("more than {MAX_SET} values in a set"));
            }
            let at = self.i;
            let v = self.value()?;
            if v.is_empty() {
                return err(at, "expected a value");
            }
            set.push(v);
            self.skip_ws();
            if self.eat(b')') {
                return Ok(set);
            }
            if !self.eat(b',') {
                return err(self.i, "expected , or ) in a set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_issue_example_parses_and_matches() {
        let s = Selector::parse("env=prod, region in (eu, us) ,!canary").unwrap();
        assert_eq!(s.to_string(), "env=prod,region in (eu,us),!canary");
        assert!(s.matches(&labels(&[("env", "prod"), ("region", "eu")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("region", "asia")])));
        assert!(!s.matches(&labels(&[
            ("env", "prod"),
            ("region", "us"),
            ("canary", "")
        ])));
        assert!(!s.matches(&labels(&[("region", "us")])));
    }

    #[test]
    fn each_operator_means_what_its_table_says() {
        let l = labels(&[("a", "1"), ("b", "")]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(&l);
        assert!(m("a=1") && m("a==1") && !m("a=2"));
        assert!(m("a!=2") && !m("a!=1") && m("zz!=1"));
        assert!(m("a in (0,1)") && !m("a in (2)") && !m("zz in (1)"));
        assert!(m("a notin (2)") && !m("a notin (1,2)") && m("zz notin (1)"));
        assert!(m("a") && m("b") && !m("zz"));
        assert!(m("!zz") && !m("!a") && !m("!b"));
        assert!(m("b=") && m(""), "empty value and the empty selector");
    }

    #[test]
    fn bad_selectors_name_the_position() {
        for (text, pos, what) in [
            ("env=prod,", 9, "found the end"),
            ("env=prod region=x", 9, "expected , between"),
            ("env>3", 3, "expected =, !=, in or notin"),
            ("env in eu", 7, "expected ("),
            ("env in (eu", 10, "expected , or )"),
            ("env in ()", 8, "expected a value"),
            ("-env", 0, "starts and ends"),
            ("env=a b", 6, "expected , between"),
            ("env=é", 4, "expected , between"),
            ("é", 0, "expected a label key"),
            ("a!b", 2, "expected = after !"),
        ] {
            let e = Selector::parse(text).expect_err(text);
            assert_eq!(e.pos, pos, "{text}: {e}");
            assert!(e.what.contains(what), "{text}: {e}");
        }
        // `env==` is env = "" (`==`, then an empty value).
        assert!(Selector::parse("env==").is_ok());
    }

    #[test]
    fn sizes_are_bounded() {
        let long = "a".repeat(MAX_KEY + 1);
        assert!(Selector::parse(&long).unwrap_err().what.contains("longer"));
        let many = vec!["a"; MAX_REQUIREMENTS + 1].join(",");
        assert!(Selector::parse(&many)
            .unwrap_err()
            .what
            .contains("more than"));
        let set = format!("a in ({})", vec!["x"; MAX_SET + 1].join(","));
        assert!(Selector::parse(&set)
            .unwrap_err()
            .what
            .contains("more than"));
        let huge = "a,".repeat(MAX_SELECTOR);
        assert_eq!(Selector::parse(&huge).unwrap_err().pos, MAX_SELECTOR);
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(
            parse_label("role=db").unwrap(),
            ("role".into(), "db".into())
        );
        assert_eq!(parse_label("k8s.io/zone=").unwrap().1, "");
        assert_eq!(parse_label("role").unwrap_err().pos, 0);
        assert_eq!(parse_label("role=d b").unwrap_err().pos, 6);
        assert!(parse_label("a/=b").is_err());
        assert!(parse_label(&format!("a={}", "v".repeat(MAX_VALUE + 1))).is_err());
        let many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(check_labels(&many).is_err());
        assert!(check_labels(&labels(&[("ok", "1")])).is_ok());
        assert!(check_labels(&labels(&[("ok", "a b")])).is_err());
    }

    #[test]
    fn canonical_text_parses_back_to_the_same_selector() {
        for text in ["a", "!a", "a=b,c!=d", "x in (1,2),y notin (3)", " a = b "] {
            let s = Selector::parse(text).unwrap();
            assert_eq!(Selector::parse(&s.to_string()).unwrap(), s, "{text}");
        }
    }
}
