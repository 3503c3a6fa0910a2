//! `/etc/os-release` (or `/usr/lib/os-release`): shell-style `KEY=value`
//! lines, values optionally in double or single quotes, with `\"`, `\\`,
//! `\$` and `` \` `` escaped inside double quotes. Comments and blank lines
//! are skipped, and so is anything that does not look like an assignment.

use serde::{Deserialize, Serialize};

/// The identifying fields. All optional: OpenWrt and Alpine set few.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`, `alpine`, `openwrt`.
    pub id: Option<String>,
    /// `VERSION_ID`, e.g. `12`, `3.19.1`.
    pub version_id: Option<String>,
    /// `PRETTY_NAME`, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub pretty_name: Option<String>,
}

pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let slot = match key {
            "ID" => &mut os.id,
            "VERSION_ID" => &mut os.version_id,
            "PRETTY_NAME" => &mut os.pretty_name,
            _ => continue,
        };
        if let Some(v) = unquote(raw) {
            if !v.is_empty() {
                *slot = Some(v);
            }
        }
    }
    os
}

/// A shell word as os-release allows it; None for an unterminated quote.
fn unquote(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Some(inner) = raw.strip_prefix('\'') {
        return inner.strip_suffix('\'').map(str::to_owned);
    }
    let Some(inner) = raw.strip_prefix('"') else {
        return Some(raw.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return chars.as_str().trim().is_empty().then_some(out),
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::tests::fixture;

    fn os(id: &str, v: Option<&str>, pretty: &str) -> OsRelease {
        OsRelease {
            id: Some(id.into()),
            version_id: v.map(Into::into),
            pretty_name: Some(pretty.into()),
        }
    }

    #[test]
    fn distributions() {
        assert_eq!(
            parse_os_release(&fixture("os-release/debian12")),
            os("debian", Some("12"), "Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_os_release(&fixture("os-release/alpine")),
            os("alpine", Some("3.19.1"), "Alpine Linux v3.19")
        );
        assert_eq!(
            parse_os_release(&fixture("os-release/openwrt")),
            os("openwrt", Some("23.05.2"), "OpenWrt 23.05.2")
        );
        assert_eq!(
            parse_os_release(&fixture("os-release/ubuntu")),
            os("ubuntu", Some("22.04"), "Ubuntu 22.04.4 LTS")
        );
        assert_eq!(
            parse_os_release(&fixture("os-release/arch")),
            os("arch", None, "Arch Linux")
        );
    }

    #[test]
    fn quoting() {
        let o = parse_os_release(
            "# comment\nID='single'\nVERSION_ID=\"a\\\"b\\\\c\\$d\\x\"\nPRETTY_NAME=\"open\n",
        );
        assert_eq!(o.id.as_deref(), Some("single"));
        assert_eq!(o.version_id.as_deref(), Some("a\"b\\c$d\\x"));
        assert_eq!(o.pretty_name, None);
        assert_eq!(parse_os_release("ID=\"x\" trailing\n").id, None);
        assert_eq!(parse_os_release("ID=\n").id, None);
        let t = fixture("os-release/ubuntu");
        for i in 0..=t.len() {
            let _ = parse_os_release(&t[..i]);
        }
    }
}
