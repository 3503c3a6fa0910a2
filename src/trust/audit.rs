//! The host's own record of the jobs and deploys it was asked to run:
//! `<state-dir>/audit.log`, one line per action, written at the signature
//! check (`jobs/` calls [`super::Verifier::record`]) and read by
//! `tether audit`. The server keeps its own trail; this one is the host's,
//! so a host owner can see what ran here and on whose signature without
//! trusting the server.
//!
//! ```text
//! 2026-12-06T15:04:05Z job=jb_… kind=job action=sa_… signer=E3C0…9A1F ran
//! 2026-12-06T15:04:09Z job=jb_… kind=deploy action=- signer=unsigned refused: unsigned: …
//! ```
//!
//! `signer` is the key id the signature names (as in the key's
//! `minisign public key ID` comment, zero-padded) or `unsigned`; `ran` means let through
//! to run (started, or queued behind others); `ran unchecked` is a signed
//! action on a host that does not require signatures for its kind (the
//! signature was not verified). Bounded: past [`MAX_BYTES`] the file
//! becomes `audit.log.1` (the older one is dropped), so the last
//! 64–128 KiB of actions are kept. Lines are cut at [`MAX_LINE`] bytes and
//! carry no newline or control byte from the message, so a line is one
//! action whatever the server sent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The record in the state dir.
pub const FILE: &str = "audit.log";
/// `audit.log` is rotated to `audit.log.1` once it would grow past this.
pub const MAX_BYTES: u64 = 64 * 1024;
/// Longest line written (a refusal's reason is the long part).
pub const MAX_LINE: usize = 512;

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Append one line to `dir/audit.log`, rotating first if it would grow
/// past `max` bytes.
pub fn append(dir: &Path, line: &str, max: u64) -> std::io::Result<()> {
    let path = dir.join(FILE);
    let mut line: String = line.chars().take(MAX_LINE - 1).collect();
    while line.len() > MAX_LINE - 1 {
        line.pop();
    }
    line.push('\n');
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    if size > 0 && size + line.len() as u64 > max {
        std::fs::rename(&path, rotated(&path))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    f.write_all(line.as_bytes())
}

/// The record, oldest line first (`audit.log.1`, then `audit.log`); `None`
/// when nothing was ever recorded.
pub fn read(dir: &Path) -> std::io::Result<Option<String>> {
    let path = dir.join(FILE);
    let mut out = None::<String>;
    for p in [rotated(&path), path] {
        match std::fs::File::open(&p) {
            Ok(f) => {
                // Bounded even if something else made the file huge.
                let mut b = Vec::new();
                f.take(2 * MAX_BYTES).read_to_end(&mut b)?;
                let text = out.get_or_insert_with(String::new);
                text.push_str(&String::from_utf8_lossy(&b));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A field as written: no whitespace or control bytes, at most `max` chars.
pub fn field(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// The message part (a refusal's reason): control bytes become spaces.
pub fn text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The key id a minisign signature names, as minisign prints it
/// (16 upper-case hex digits); `None` if it is not a signature.
pub fn key_id(signature: &str) -> Option<String> {
    let line = signature
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains(':'))?;
    // Two bytes of algorithm, then the 8-byte key id: 16 base64 chars.
    let mut bytes = Vec::with_capacity(12);
    for chunk in line.as_bytes().get(..16)?.chunks(4) {
        let mut n = 0u32;
        for &c in chunk {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            };
            n = n << 6 | u32::from(v);
        }
        bytes.extend_from_slice(&n.to_be_bytes()[1..]);
    }
    let id: [u8; 8] = bytes[2..10].try_into().ok()?;
    Some(format!("{:016X}", u64::from_le_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_record_is_bounded_and_keeps_the_newest_lines() {
        let d = dir("bound");
        assert_eq!(read(&d).unwrap(), None);
        let max = 1000;
        for i in 0..200 {
            append(&d, &format!("line {i:03} {}", "x".repeat(40)), max).unwrap();
        }
        let now = std::fs::metadata(d.join(FILE)).unwrap().len();
        let old = std::fs::metadata(d.join("audit.log.1")).unwrap().len();
        assert!(now <= max && old <= max, "{now} {old}");
        let text = read(&d).unwrap().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The newest is last, the ones kept are consecutive, old ones gone.
        assert!(lines.last().unwrap().starts_with("line 199 "));
        assert!(lines.len() >= 1000 / 50, "{}", lines.len());
        assert!(!text.contains("line 000 "));
        for w in lines.windows(2) {
            let n = |l: &str| l[5..8].parse::<u32>().unwrap();
            assert_eq!(n(w[0]) + 1, n(w[1]), "{text}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_line_is_cut_and_stays_one_line() {
        let d = dir("cut");
        append(&d, &"y".repeat(5000), MAX_BYTES).unwrap();
        append(&d, &format!("é{}", "é".repeat(600)), MAX_BYTES).unwrap();
        let text = read(&d).unwrap().unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.len() < MAX_LINE));
        assert_eq!(field("a b\nc\u{1b}", 4), "a?b?");
        assert_eq!(super::text("x\ny"), "x y");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_key_id_is_read_from_a_signature() {
        // The test keys (trust/testdata): minisign's own comment drops
        // leading zeros, `tether-server key generate`'s does not.
        let id = |pubkey: &str| {
            let c = pubkey.lines().next().unwrap().rsplit(' ').next().unwrap();
            format!("{c:0>16}")
        };
        let sig = include_str!("testdata/valid.minisig");
        assert_eq!(key_id(sig), Some(id(include_str!("testdata/operator.pub"))));
        let sig = include_str!("testdata/other-key.minisig");
        assert_eq!(key_id(sig), Some(id(include_str!("testdata/other.pub"))));
        assert_eq!(key_id("untrusted comment: x\n!!!!not base64!!!!"), None);
        assert_eq!(key_id(""), None);
    }
}
