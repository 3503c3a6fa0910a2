//! What changed between two fingerprints, as a list the server can store as
//! history and apply to its copy to get the new one.
//!
//! ```text
//! scalar field   {"path":"kernel","old":"6.1.0","new":"6.1.2"}          kernel: 6.1.0 → 6.1.2
//! listening      {"path":"listening","new":{…}}                          listening: +tcp 0.0.0.0:8080 (nginx)
//!                {"path":"listening","old":{…}}                          listening: -udp [::]:546
//! firewall rules {"path":"firewall.rules","at":3,"new":"ip4 filter: …"}  firewall: rule added: ip4 filter: …
//!                {"path":"firewall.rules","at":3,"old":"…"}              firewall: rule removed: …
//! ```
//!
//! `listening` is a set (kept sorted); firewall rules are an ordered list,
//! diffed with Myers' algorithm into removals and insertions whose `at` is
//! the position in the list as it is when that change is applied, in order.
//! Every change names the old value, and [`apply`] refuses a change whose
//! old value does not match: the server's copy has drifted and it should
//! ask for a full fingerprint.

use crate::fingerprint::{Fingerprint, Firewall, Listener};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// One change. `old`/`new` are null (and left out of the JSON) for an
/// absent value, an added item (`old`) or a removed one (`new`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub old: Value,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub new: Value,
    /// Position, for changes to an ordered list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// A path this build does not know (a newer runner).
    UnknownPath(String),
    /// The current value is not the change's `old`: the copies diverged.
    Conflict(String),
    /// A value of the wrong shape for its path.
    BadValue(String),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::UnknownPath(p) => write!(f, "unknown fingerprint field {p}"),
            ApplyError::Conflict(p) => {
                write!(f, "fingerprint {p} differs from the change's old value")
            }
            ApplyError::BadValue(p) => write!(f, "bad value for fingerprint {p}"),
        }
    }
}

impl std::error::Error for ApplyError {}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Longest edit (removals + insertions) computed exactly; past it the
/// firewall diff removes the old differing block and inserts the new one.
const MAX_EDIT: usize = 2000;

/// Scalar fields: (path, getter). Kept in struct order.
macro_rules! scalars {
    ($m:ident) => {
        $m!("hostname", hostname);
        $m!("os.id", os.id);
        $m!("os.version_id", os.version_id);
        $m!("os.pretty_name", os.pretty_name);
        $m!("kernel", kernel);
        $m!("kernel_version", kernel_version);
        $m!("arch", arch);
        $m!("cpu_model", cpu_model);
        $m!("board", board);
        $m!("cpu_count", cpu_count);
        $m!("mem_total", mem_total);
        $m!("boot_time", boot_time);
        $m!("virtualization", virtualization);
        $m!("container", container);
        $m!("docker_version", docker_version);
        $m!("runner_version", runner_version);
    };
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &Fingerprint, new: &Fingerprint) -> Vec<Change> {
    let mut out = Vec::new();
    macro_rules! scalar {
        ($path:literal, $($f:ident).+) => {
            if old.$($f).+ != new.$($f).+ {
                out.push(Change {
                    path: $path.into(),
                    old: json(&old.$($f).+),
                    new: json(&new.$($f).+),
                    at: None,
                });
            }
        };
    }
    scalars!(scalar);

    // Both lists are sorted: merge.
    let (a, b) = (&old.listening, &new.listening);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let (x, y) = (a.get(i), b.get(j));
        if x.is_some() && x == y {
            i += 1;
            j += 1;
        } else if let Some(x) = x.filter(|x| y.is_none_or(|y| *x < y)) {
            out.push(Change {
                path: "listening".into(),
                old: json(x),
                new: Value::Null,
                at: None,
            });
            i += 1;
        } else if let Some(y) = y {
            out.push(Change {
                path: "listening".into(),
                old: Value::Null,
                new: json(y),
                at: None,
            });
            j += 1;
        }
    }

    match (&old.firewall, &new.firewall) {
        (Some(a), Some(b)) => {
            if a.source != b.source {
                out.push(Change {
                    path: "firewall.source".into(),
                    old: json(&a.source),
                    new: json(&b.source),
                    at: None,
                });
            }
            for (at, op) in list_edits(&a.rules, &b.rules) {
                let (old, new) = match op {
                    Edit::Remove(r) => (json(r), Value::Null),
                    Edit::Insert(r) => (Value::Null, json(r)),
                };
                out.push(Change {
                    path: "firewall.rules".into(),
                    old,
                    new,
                    at: Some(at),
                });
            }
        }
        (a, b) if a != b => out.push(Change {
            path: "firewall".into(),
            old: json(a),
            new: json(b),
            at: None,
        }),
        _ => {}
    }
    out
}

/// Applies `changes` in order to `fp`. On error `fp` may hold the changes
/// before the failing one; the caller should fetch a full fingerprint.
pub fn apply(fp: &mut Fingerprint, changes: &[Change]) -> Result<(), ApplyError> {
    for c in changes {
        apply_one(fp, c)?;
    }
    Ok(())
}

fn set_scalar<T: Serialize + DeserializeOwned>(
    field: &mut T,
    c: &Change,
) -> Result<(), ApplyError> {
    if json(field) != c.old {
        return Err(ApplyError::Conflict(c.path.clone()));
    }
    *field =
        serde_json::from_value(c.new.clone()).map_err(|_| ApplyError::BadValue(c.path.clone()))?;
    Ok(())
}

fn apply_one(fp: &mut Fingerprint, c: &Change) -> Result<(), ApplyError> {
    macro_rules! scalar {
        ($path:literal, $($f:ident).+) => {
            if c.path == $path {
                return set_scalar(&mut fp.$($f).+, c);
            }
        };
    }
    scalars!(scalar);
    let bad = || ApplyError::BadValue(c.path.clone());
    let conflict = || ApplyError::Conflict(c.path.clone());
    match c.path.as_str() {
        "listening" => {
            if !c.old.is_null() {
                let l: Listener = serde_json::from_value(c.old.clone()).map_err(|_| bad())?;
                let i = fp.listening.binary_search(&l).map_err(|_| conflict())?;
                fp.listening.remove(i);
            }
            if !c.new.is_null() {
                let l: Listener = serde_json::from_value(c.new.clone()).map_err(|_| bad())?;
                match fp.listening.binary_search(&l) {
                    Ok(_) => return Err(conflict()),
                    Err(i) => fp.listening.insert(i, l),
                }
            }
            Ok(())
        }
        "firewall" => set_scalar(&mut fp.firewall, c),
        "firewall.source" => {
            let f = fp.firewall.as_mut().ok_or_else(conflict)?;
            set_scalar(&mut f.source, c)
        }
        "firewall.rules" => {
            let f: &mut Firewall = fp.firewall.as_mut().ok_or_else(conflict)?;
            let at = c.at.ok_or_else(bad)?;
            if !c.old.is_null() {
                if f.rules.get(at).map(json) != Some(c.old.clone()) {
                    return Err(conflict());
                }
                f.rules.remove(at);
            }
            if !c.new.is_null() {
                let r: String = serde_json::from_value(c.new.clone()).map_err(|_| bad())?;
                if at > f.rules.len() {
                    return Err(conflict());
                }
                f.rules.insert(at, r);
            }
            Ok(())
        }
        p => Err(ApplyError::UnknownPath(p.to_owned())),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Value| -> String {
            match v {
                Value::Null => "(none)".into(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            }
        };
        let item = |v: &Value| -> String {
            serde_json::from_value::<Listener>(v.clone())
                .map(|l| l.to_string())
                .unwrap_or_else(|_| show(v))
        };
        match self.path.as_str() {
            "listening" if self.new.is_null() => write!(f, "listening: -{}", item(&self.old)),
            "listening" => write!(f, "listening: +{}", item(&self.new)),
            "firewall.rules" if self.new.is_null() => {
                write!(f, "firewall: rule removed: {}", show(&self.old))
            }
            "firewall.rules" => write!(f, "firewall: rule added: {}", show(&self.new)),
            "firewall" => {
                let fw = |v: &Value| match serde_json::from_value::<Option<Firewall>>(v.clone()) {
                    Ok(Some(fw)) => format!("{}, {} rules", fw.source, fw.rules.len()),
                    _ => "(none)".into(),
                };
                write!(f, "firewall: {} → {}", fw(&self.old), fw(&self.new))
            }
            p => write!(f, "{p}: {} → {}", show(&self.old), show(&self.new)),
        }
    }
}

enum Edit<'a> {
    Remove(&'a String),
    Insert(&'a String),
}

/// Edits turning `a` into `b`, each with its position at the time it is
/// applied (in order).
fn list_edits<'a>(a: &'a [String], b: &'a [String]) -> Vec<(usize, Edit<'a>)> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let script = myers(ma, mb).unwrap_or_else(|| {
        let mut s = vec![Op::Del; ma.len()];
        s.extend(std::iter::repeat_n(Op::Ins, mb.len()));
        s
    });
    let mut out = Vec::new();
    let (mut i, mut j, mut pos) = (0, 0, pre);
    for op in script {
        match op {
            Op::Keep => {
                i += 1;
                j += 1;
                pos += 1;
            }
            Op::Del => {
                out.push((pos, Edit::Remove(&ma[i])));
                i += 1;
            }
            Op::Ins => {
                out.push((pos, Edit::Insert(&mb[j])));
                j += 1;
                pos += 1;
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Del,
    Ins,
}

/// Myers' O((N+M)·D) shortest edit script; None when D > MAX_EDIT.
fn myers(a: &[String], b: &[String]) -> Option<Vec<Op>> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max = (a.len() + b.len()).min(MAX_EDIT) as isize;
    let off = max + 1;
    let mut v = vec![0isize; 2 * max as usize + 3];
    let mut trace: Vec<Vec<isize>> = Vec::new();
    let idx = |k: isize| (k + off) as usize;
    for d in 0..=max {
        trace.push(v.clone());
        let mut k = -d;
        while k <= d {
            let mut x = if k == -d || (k != d && v[idx(k - 1)] < v[idx(k + 1)]) {
                v[idx(k + 1)]
            } else {
                v[idx(k - 1)] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[idx(k)] = x;
            if x >= n && y >= m {
                return Some(backtrack(&trace, n, m, off));
            }
            k += 2;
        }
    }
    None
}

fn backtrack(trace: &[Vec<isize>], n: isize, m: isize, off: isize) -> Vec<Op> {
    let idx = |k: isize| (k + off) as usize;
    let (mut x, mut y) = (n, m);
    let mut ops = Vec::new();
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let k = x - y;
        let prev_k = if k == -d || (k != d && v[idx(k - 1)] < v[idx(k + 1)]) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = v[idx(prev_k)];
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            ops.push(Op::Keep);
            x -= 1;
            y -= 1;
        }
        if d > 0 {
            ops.push(if x == prev_x { Op::Ins } else { Op::Del });
        }
        x = prev_x;
        y = prev_y;
    }
    ops.reverse();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::tests::sample_fingerprint;
    use crate::fingerprint::OsRelease;

    fn check(old: &Fingerprint, new: &Fingerprint) -> Vec<Change> {
        let changes = diff(old, new);
        // Through JSON, as the server receives them.
        let wire = serde_json::to_string(&changes).unwrap();
        let back: Vec<Change> = serde_json::from_str(&wire).unwrap();
        let mut got = old.clone();
        apply(&mut got, &back).unwrap();
        assert_eq!(&got, new);
        assert_eq!(diff(new, new), vec![]);
        changes
    }

    fn rules(s: &str) -> Vec<String> {
        s.chars().map(|c| c.to_string()).collect()
    }

    #[test]
    fn the_examples_read_as_promised() {
        let a = sample_fingerprint();
        let mut b = a.clone();
        b.kernel = Some("6.1.2".into());
        b.listening.push(Listener {
            proto: "tcp".into(),
            addr: "0.0.0.0".parse().unwrap(),
            port: 8080,
            process: Some("nginx".into()),
        });
        b.listening.sort();
        b.listening.retain(|l| l.port != 546);
        let fw = b.firewall.as_mut().unwrap();
        fw.rules.insert(
            2,
            "ip4 filter: -A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT".into(),
        );
        fw.rules.remove(0);
        let shown: Vec<String> = check(&a, &b).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "kernel: 6.1.0 → 6.1.2",
                "listening: +tcp 0.0.0.0:8080 (nginx)",
                "listening: -udp [fe80::1]:546 (dhclient)",
                "firewall: rule removed: ip4 filter: :INPUT DROP",
                "firewall: rule added: ip4 filter: -A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn scalars_options_and_whole_firewall() {
        let a = sample_fingerprint();
        let mut b = a.clone();
        b.os = OsRelease::default();
        b.cpu_count = Some(8);
        b.docker_version = None;
        b.firewall = None;
        let c = check(&a, &b);
        assert!(c
            .iter()
            .any(|c| c.to_string() == "docker_version: 24.0.7 → (none)"));
        assert!(c.iter().any(|c| c.to_string() == "cpu_count: 4 → 8"));
        assert!(c
            .iter()
            .any(|c| c.to_string() == "firewall: iptables, 3 rules → (none)"));
        check(&b, &a);
        check(&Fingerprint::default(), &a);
        check(&a, &Fingerprint::default());
    }

    #[test]
    fn rule_lists() {
        let cases = [
            ("abcdef", "abcdef"),
            ("abcdef", "abXdef"),
            ("abcdef", "bcdefg"),
            ("", "abc"),
            ("abc", ""),
            ("abcabba", "cbabac"),
            ("aaaa", "aa"),
            ("xaxbxc", "abc"),
            ("abc", "cba"),
        ];
        for (x, y) in cases {
            let mut a = sample_fingerprint();
            let mut b = a.clone();
            a.firewall.as_mut().unwrap().rules = rules(x);
            b.firewall.as_mut().unwrap().rules = rules(y);
            let c = check(&a, &b);
            if x == "abcdef" && y == "abXdef" {
                assert_eq!(c.len(), 2);
            }
            if x == "abcabba" {
                // The classic example: 5 edits.
                assert_eq!(c.len(), 5);
            }
        }
    }

    #[test]
    fn random_rule_lists_and_the_fallback() {
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..200 {
            let len = next(30) as usize;
            let x: Vec<String> = (0..len).map(|_| next(6).to_string()).collect();
            let mut y = x.clone();
            for _ in 0..next(6) {
                match next(3) {
                    0 if !y.is_empty() => {
                        let i = next(y.len() as u64) as usize;
                        y.remove(i);
                    }
                    _ => {
                        let i = next(y.len() as u64 + 1) as usize;
                        y.insert(i, format!("n{round}"));
                    }
                }
            }
            let mut a = sample_fingerprint();
            let mut b = a.clone();
            a.firewall.as_mut().unwrap().rules = x;
            b.firewall.as_mut().unwrap().rules = y;
            check(&a, &b);
        }
        // Past MAX_EDIT: still correct, just not minimal.
        let mut a = sample_fingerprint();
        let mut b = a.clone();
        a.firewall.as_mut().unwrap().rules = (0..1500).map(|i| format!("a{i}")).collect();
        b.firewall.as_mut().unwrap().rules = (0..1500).map(|i| format!("b{i}")).collect();
        assert_eq!(check(&a, &b).len(), 3000);
    }

    #[test]
    fn apply_refuses_what_does_not_fit() {
        let a = sample_fingerprint();
        let mut b = a.clone();
        b.kernel = Some("7.0".into());
        let changes = diff(&a, &b);
        let mut other = a.clone();
        other.kernel = Some("5.10".into());
        assert_eq!(
            apply(&mut other, &changes),
            Err(ApplyError::Conflict("kernel".into()))
        );
        let unknown = Change {
            path: "gpu".into(),
            old: Value::Null,
            new: Value::Bool(true),
            at: None,
        };
        assert_eq!(
            apply(&mut a.clone(), &[unknown]),
            Err(ApplyError::UnknownPath("gpu".into()))
        );
        let bad = Change {
            path: "cpu_count".into(),
            old: json(&a.cpu_count),
            new: Value::String("many".into()),
            at: None,
        };
        assert_eq!(
            apply(&mut a.clone(), &[bad]),
            Err(ApplyError::BadValue("cpu_count".into()))
        );
        let far = Change {
            path: "firewall.rules".into(),
            old: Value::Null,
            new: Value::String("x".into()),
            at: Some(99),
        };
        assert_eq!(
            apply(&mut a.clone(), &[far]),
            Err(ApplyError::Conflict("firewall.rules".into()))
        );
        let dup = Change {
            path: "listening".into(),
            old: Value::Null,
            new: json(&a.listening[0]),
            at: None,
        };
        assert_eq!(
            apply(&mut a.clone(), &[dup]),
            Err(ApplyError::Conflict("listening".into()))
        );
    }
}
