//! The decisions of updates, apart from their I/O: which versions and
//! file names are acceptable, how versions order, which runners a canary
//! share selects, and whether a runner is offered an update. `mod.rs` reads
//! the policy and the release store and calls these; they are tested
//! here without a server.

use std::cmp::Ordering;

use tether::protocol::UpdateOffer;

/// Longest group name.
pub const MAX_GROUP_LEN: usize = 64;

/// A dotted version, compared numerically (`0.10.0` > `0.9.0`); a
/// pre-release (`1.0.0-rc1`) sorts before its release.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn key(v: &str) -> (Vec<u64>, bool, String) {
        let (nums, pre) = v.split_once('-').unwrap_or((v, ""));
        let parts = nums.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        (parts, pre.is_empty(), pre.to_owned())
    }
    let (ka, kb) = (key(a), key(b));
    let n = ka.0.len().max(kb.0.len());
    for i in 0..n {
        let (x, y) = (ka.0.get(i).unwrap_or(&0), kb.0.get(i).unwrap_or(&0));
        match x.cmp(y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    ka.1.cmp(&kb.1).then(ka.2.cmp(&kb.2))
}

/// `1.2.3`, `1.2.3-rc1`: digits, dots, letters and `-`, ≤ 32 characters.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !v.contains("..")
}

/// A file name inside a release: no path, no hidden files.
pub fn valid_file_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// Which of 100 buckets a runner falls in (`fleet/versions.rs`, where
/// the runners list's update filter reads it too).
pub use crate::fleet::versions::bucket;

/// A group name as given (a runner's group, a policy's): in bounds.
pub fn check_group(group: &str) -> Result<(), &'static str> {
    if group.len() > MAX_GROUP_LEN {
        return Err("group name too long");
    }
    Ok(())
}

/// A policy change as asked: its group name and canary share in bounds.
pub fn check_request(group: &str, canary_percent: u8) -> Result<(), &'static str> {
    check_group(group)?;
    if canary_percent > 100 {
        return Err("canary_percent must be 0 to 100");
    }
    Ok(())
}

/// What a selected runner is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// It runs the desired version already.
    Current,
    /// The release has no binary and signature for its architecture.
    NoSignedBinary,
    Update(UpdateOffer),
}

/// The offer for a runner of `arch` running `running`, when `desired` is
/// wanted; `has` says whether the release holds a file.
pub fn offer(running: &str, arch: &str, desired: &str, has: impl Fn(&str) -> bool) -> Offer {
    if running == desired {
        return Offer::Current;
    }
    let name = format!("tether-{arch}");
    if !valid_file_name(&name) || !has(&name) || !has(&format!("{name}.minisig")) {
        return Offer::NoSignedBinary;
    }
    Offer::Update(UpdateOffer {
        binary: format!("/releases/{desired}/{name}"),
        signature: format!("/releases/{desired}/{name}.minisig"),
        version: desired.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::versions::selected;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("0.10.0", "0.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0-rc1", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Equal);
        assert!(valid_version("0.2.0") && valid_version("1.0.0-rc1"));
        assert!(!valid_version("../x") && !valid_version("") && !valid_version("v1"));
        assert!(valid_file_name("tether-x86_64.minisig"));
        assert!(
            !valid_file_name("../etc") && !valid_file_name(".hidden") && !valid_file_name("a/b")
        );
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("rn_abc"), bucket("rn_abc"));
        let mut seen = [false; 100];
        for i in 0..2000 {
            seen[bucket(&format!("rn_{i:012x}")) as usize] = true;
        }
        assert!(seen.iter().filter(|s| **s).count() > 90);
    }

    #[test]
    fn a_canary_share_selects_its_buckets_and_grows_monotonically() {
        let ids: Vec<String> = (0..500).map(|i| format!("rn_{i:012x}")).collect();
        let count = |p: u8| ids.iter().filter(|id| selected(id, p)).count();
        assert_eq!(count(0), 0);
        assert_eq!(count(100), ids.len());
        let quarter = count(25);
        assert!((75..=175).contains(&quarter), "25 % of 500 took {quarter}");
        // Raising the share only adds runners.
        for id in &ids {
            if selected(id, 10) {
                assert!(selected(id, 50), "{id}");
            }
        }
    }

    #[test]
    fn policy_requests_are_bounded() {
        assert_eq!(check_request("", 100), Ok(()));
        assert_eq!(check_request(&"g".repeat(MAX_GROUP_LEN), 0), Ok(()));
        assert!(check_request(&"g".repeat(MAX_GROUP_LEN + 1), 10).is_err());
        assert!(check_request("", 101).is_err());
    }

    #[test]
    fn offers_need_another_version_and_a_signed_binary_for_the_arch() {
        let all = |_: &str| true;
        assert_eq!(offer("1.0.0", "x86_64", "1.0.0", all), Offer::Current);
        assert_eq!(
            offer("1.0.0", "x86_64", "1.1.0", all),
            Offer::Update(UpdateOffer {
                binary: "/releases/1.1.0/tether-x86_64".into(),
                signature: "/releases/1.1.0/tether-x86_64.minisig".into(),
                version: "1.1.0".into(),
            })
        );
        // A downgrade is offered too: the policy names the version wanted.
        assert!(matches!(
            offer("1.1.0", "x86_64", "1.0.0", all),
            Offer::Update(_)
        ));
        let unsigned = |n: &str| !n.ends_with(".minisig");
        assert_eq!(
            offer("1.0.0", "x86_64", "1.1.0", unsigned),
            Offer::NoSignedBinary
        );
        let other_arch = |n: &str| n.starts_with("tether-aarch64");
        assert_eq!(
            offer("1.0.0", "x86_64", "1.1.0", other_arch),
            Offer::NoSignedBinary
        );
        // An architecture a runner reported that is no file name: no offer.
        assert_eq!(offer("1.0.0", "../x", "1.1.0", all), Offer::NoSignedBinary);
    }
}
