//! What makes a release trustworthy: a minisign signature by one of the keys
//! the host owner installed, whose *trusted comment* names the version and
//! the architecture. The runner never takes a key from the server.
//!
//! `build.sh release` signs each binary with the trusted comment
//! `tether-release version=0.2.0 arch=x86_64`; minisign's global signature
//! covers that comment, so neither the version nor the architecture can be
//! changed without the secret key. Pure functions over bytes: no I/O but
//! [`load_keys`].

use minisign_verify::{PublicKey, Signature};
use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

/// The trusted comment's prefix.
pub const COMMENT_PREFIX: &str = "tether-release";
/// Largest signature file accepted (a minisig is ~300 bytes).
pub const MAX_SIGNATURE: usize = 4096;
/// Most keys read from a key file.
const MAX_KEYS: usize = 16;

/// A dotted numeric version with an optional pre-release tag
/// (`1.2.3`, `1.2.3-rc1`); a pre-release sorts before its release.
/// `1.0` equals `1.0.0`.
#[derive(Debug, Clone)]
pub struct Version {
    pub parts: Vec<u64>,
    pub pre: Option<String>,
    pub text: String,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        let (nums, pre) = match s.split_once('-') {
            Some((n, p)) if !p.is_empty() => (n, Some(p.to_owned())),
            Some(_) => return None,
            None => (s, None),
        };
        let nums = nums.split_once('+').map_or(nums, |(n, _)| n);
        let parts: Option<Vec<u64>> = nums.split('.').map(|p| p.parse().ok()).collect();
        let parts = parts.filter(|p| !p.is_empty() && p.len() <= 4)?;
        Some(Version {
            parts,
            pre,
            text: s.to_owned(),
        })
    }
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        let n = self.parts.len().max(o.parts.len());
        for i in 0..n {
            let (a, b) = (
                self.parts.get(i).copied().unwrap_or(0),
                o.parts.get(i).copied().unwrap_or(0),
            );
            match a.cmp(&b) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        match (&self.pre, &o.pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => a.cmp(b),
        }
    }
}

impl PartialEq for Version {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A verified release: what the signed comment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub arch: String,
    /// Which trusted key signed it (its position in the key list), for logs.
    pub key_index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    NoKeys,
    BadSignatureFile(String),
    /// No trusted key has this signature's key id.
    UnknownKey,
    /// The signature does not match the bytes: tampered or truncated.
    Mismatch,
    BadComment(String),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::NoKeys => write!(
                f,
                "no trusted update keys are configured (TETHER_UPDATE_KEYS or <state-dir>/update-keys.pub)"
            ),
            VerifyError::BadSignatureFile(e) => write!(f, "the signature file is not a minisign signature ({e})"),
            VerifyError::UnknownKey => write!(f, "signed with a key this host does not trust"),
            VerifyError::Mismatch => write!(
                f,
                "signature does not match the binary (tampered or truncated)"
            ),
            VerifyError::BadComment(c) => write!(
                f,
                "the signed comment {c:?} is not `{COMMENT_PREFIX} version=V arch=A`"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Verify `binary` against the minisign `signature` text with the trusted
/// `keys`, and read the version and architecture from the signed comment.
pub fn verify(binary: &[u8], signature: &str, keys: &[PublicKey]) -> Result<Release, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    if signature.len() > MAX_SIGNATURE {
        return Err(VerifyError::BadSignatureFile("too large".into()));
    }
    let sig =
        Signature::decode(signature).map_err(|e| VerifyError::BadSignatureFile(e.to_string()))?;
    let mut saw_key = false;
    for (i, key) in keys.iter().enumerate() {
        match key.verify(binary, &sig, false) {
            Ok(()) => {
                let (version, arch) = parse_comment(sig.trusted_comment())?;
                return Ok(Release {
                    version,
                    arch,
                    key_index: i,
                });
            }
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            Err(_) => saw_key = true,
        }
    }
    Err(if saw_key {
        VerifyError::Mismatch
    } else {
        VerifyError::UnknownKey
    })
}

/// `tether-release version=0.2.0 arch=x86_64` (extra `key=value` words are
/// allowed, for later).
pub fn parse_comment(comment: &str) -> Result<(Version, String), VerifyError> {
    let bad = || VerifyError::BadComment(comment.chars().take(120).collect());
    let mut words = comment.split_whitespace();
    if words.next() != Some(COMMENT_PREFIX) {
        return Err(bad());
    }
    let (mut version, mut arch) = (None, None);
    for w in words {
        match w.split_once('=') {
            Some(("version", v)) => version = Version::parse(v),
            Some(("arch", a)) if !a.is_empty() => arch = Some(a.to_owned()),
            _ => {}
        }
    }
    match (version, arch) {
        (Some(v), Some(a)) => Ok((v, a)),
        _ => Err(bad()),
    }
}

/// Parse trusted public keys: the text of a `.pub` file (an `untrusted
/// comment:` line and a base64 line) or bare base64 keys, one per line,
/// several for key rotation. `#` lines and comments are skipped.
pub fn parse_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
            continue;
        }
        let key = PublicKey::from_base64(line)
            .map_err(|e| format!("line {}: not a minisign public key ({e})", n + 1))?;
        if keys.len() == MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Read trusted keys from a file; a missing file is no keys.
pub fn load_keys(path: &Path) -> Result<Vec<PublicKey>, String> {
    match std::fs::read(path) {
        Ok(b) if b.len() > 64 * 1024 => Err(format!("{} is too large", path.display())),
        Ok(b) => {
            parse_keys(&String::from_utf8_lossy(&b)).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway key pair and a signature made with Debian's minisign:
    //   minisign -G -W -p k.pub -s k.key
    //   minisign -S -s k.key -m bin -t 'tether-release version=0.2.0 arch=x86_64'
    // where `bin` is the five bytes "hello".
    const PUB: &str = include_str!("testdata/k.pub");
    const SIG: &str = include_str!("testdata/hello.minisig");
    const OTHER_PUB: &str = include_str!("testdata/other.pub");

    #[test]
    fn versions_order() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.2.0") > v("0.1.9"));
        assert!(v("0.10.0") > v("0.9.0"));
        assert!(v("1.0.0-rc1") < v("1.0.0"));
        assert_eq!(v("1.0"), v("1.0.0"));
        assert!(Version::parse("").is_none());
        assert!(Version::parse("1.x").is_none());
        assert!(Version::parse("1.0-").is_none());
        assert!(Version::parse("1.2.3.4.5").is_none());
    }

    #[test]
    fn a_good_signature_names_version_and_arch() {
        let keys = parse_keys(PUB).unwrap();
        let r = verify(b"hello", SIG, &keys).unwrap();
        assert_eq!(r.version.text, "0.2.0");
        assert_eq!(r.arch, "x86_64");
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let keys = parse_keys(PUB).unwrap();
        assert_eq!(verify(b"hellO", SIG, &keys), Err(VerifyError::Mismatch));
        assert_eq!(verify(b"hell", SIG, &keys), Err(VerifyError::Mismatch));
        assert_eq!(verify(b"hello", SIG, &[]), Err(VerifyError::NoKeys));
        let other = parse_keys(OTHER_PUB).unwrap();
        assert_eq!(verify(b"hello", SIG, &other), Err(VerifyError::UnknownKey));
        // Rotation: the right key second in the list still verifies.
        let both: Vec<_> = other.into_iter().chain(keys.clone()).collect();
        assert_eq!(verify(b"hello", SIG, &both).unwrap().key_index, 1);
        assert!(matches!(
            verify(b"hello", "garbage", &keys),
            Err(VerifyError::BadSignatureFile(_))
        ));
        // A changed trusted comment breaks the global signature.
        let forged = SIG.replace("version=0.2.0", "version=9.2.0");
        assert_eq!(verify(b"hello", &forged, &keys), Err(VerifyError::Mismatch));
        assert!(parse_keys("not a key").is_err());
    }

    #[test]
    fn comments_parse() {
        let (v, a) = parse_comment("tether-release version=1.2.3 arch=aarch64 x=y").unwrap();
        assert_eq!((v.text.as_str(), a.as_str()), ("1.2.3", "aarch64"));
        assert!(parse_comment("timestamp:1 file:x").is_err());
        assert!(parse_comment("tether-release arch=x86_64").is_err());
    }
}
