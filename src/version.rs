//! The version this binary reports (hello, status, `tether version`, the
//! update checks).
//!
//! It lives in a fixed-size slot behind a marker, not only in a string
//! constant, for one reason: the update tests need real, distinct binaries
//! that report different versions, and rebuilding the runner per version
//! would take minutes. A test copies the built binary and rewrites the slot
//! (`tests/util::binary_with_version`); the copy is a different file with a
//! different signature, exactly what a release build of another version is
//! to the updater. The slot is read with a volatile read so the optimizer
//! cannot fold the constant into its uses. Nothing else writes it.

use std::sync::OnceLock;

/// Marker that precedes the version in the slot.
pub const SLOT_MARKER: &[u8; 20] = b"TETHER-VERSION-SLOT:";
/// Marker + version + NUL padding.
pub const SLOT_LEN: usize = 64;

const fn make_slot() -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < SLOT_MARKER.len() {
        slot[i] = SLOT_MARKER[i];
        i += 1;
    }
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut j = 0;
    while j < v.len() && SLOT_MARKER.len() + j < SLOT_LEN - 1 {
        slot[SLOT_MARKER.len() + j] = v[j];
        j += 1;
    }
    slot
}

#[used]
static SLOT: [u8; SLOT_LEN] = make_slot();

/// This binary's version, e.g. `0.1.0`.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        // Volatile only to defeat constant folding.
        let slot: [u8; SLOT_LEN] = crate::sys::read_volatile(&SLOT);
        parse_slot(&slot).unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
    })
}

/// The version in a slot, if it is marker + printable version + NUL.
pub fn parse_slot(slot: &[u8]) -> Option<String> {
    let rest = slot.strip_prefix(&SLOT_MARKER[..])?;
    let end = rest.iter().position(|&b| b == 0)?;
    let v = std::str::from_utf8(&rest[..end]).ok()?;
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+');
    ok.then(|| v.to_owned())
}

/// Rewrite the version slot in a copy of a binary (for tests and for
/// nothing else). `None` if the marker is missing or the version too long.
pub fn patch_slot(binary: &[u8], version: &str) -> Option<Vec<u8>> {
    let at = binary
        .windows(SLOT_MARKER.len())
        .position(|w| w == SLOT_MARKER)?;
    let room = SLOT_LEN - SLOT_MARKER.len() - 1;
    if version.is_empty() || version.len() > room || binary.len() < at + SLOT_LEN {
        return None;
    }
    let mut out = binary.to_vec();
    let start = at + SLOT_MARKER.len();
    out[start..at + SLOT_LEN].fill(0);
    out[start..start + version.len()].copy_from_slice(version.as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_holds_the_package_version() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(
            parse_slot(&SLOT).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn patching_changes_only_the_slot() {
        let mut bin = b"head".to_vec();
        bin.extend_from_slice(&SLOT);
        bin.extend_from_slice(b"tail");
        let patched = patch_slot(&bin, "9.8.7").unwrap();
        assert_eq!(patched.len(), bin.len());
        assert_eq!(
            parse_slot(&patched[4..4 + SLOT_LEN]).as_deref(),
            Some("9.8.7")
        );
        assert!(patched.ends_with(b"tail"));
        assert!(patch_slot(b"no marker", "1.0.0").is_none());
        assert!(patch_slot(&bin, &"9".repeat(60)).is_none());
        assert!(parse_slot(b"TETHER-VERSION-SLOT:\0").is_none());
        assert!(parse_slot(b"TETHER-VERSION-SLOT:1 2\0").is_none());
    }
}
