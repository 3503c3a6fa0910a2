//! The flags that make a server one replica of several, checked once at
//! start (pure: a bad combination is a usage error, exit 2, before
//! anything is opened).
//!
//! All three go together and need `--database postgres://…`: replicas
//! share their state there. The cluster key authenticates replicas to
//! each other on the internal channel; it is read from a file that only
//! the server's user may read, held in memory only, compared in constant
//! time, and never shown (its `Debug` says `ClusterKey(…)`).

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;

/// Longest replica id (it is a row key and appears in health reasons).
pub const MAX_REPLICA_ID: usize = 63;
/// Bytes of a cluster key (written as 64 hex digits).
pub const KEY_BYTES: usize = 32;

#[derive(Debug, Args, Default)]
pub struct ClusterArgs {
    /// This replica's id, when several servers share one PostgreSQL
    /// database (letters, digits, '-', '_', '.'; at most 63). Needs
    /// --database postgres://…, --internal-addr and --cluster-key
    #[arg(long, env = "TETHER_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// HOST:PORT where the other replicas reach this one
    #[arg(long, env = "TETHER_INTERNAL_ADDR")]
    pub internal_addr: Option<String>,

    /// File with the key every replica of the cluster shares (64 hex
    /// digits; only the server's user may read it)
    #[arg(long, env = "TETHER_CLUSTER_KEY_FILE")]
    pub cluster_key: Option<PathBuf>,
}

/// A replica's identity, checked.
#[derive(Debug)]
pub struct ClusterConfig {
    pub replica_id: String,
    pub internal_addr: String,
    pub key: ClusterKey,
}

/// The shared key: never printed.
pub struct ClusterKey([u8; KEY_BYTES]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(…)")
    }
}

impl ClusterKey {
    pub fn from_bytes(key: [u8; KEY_BYTES]) -> ClusterKey {
        ClusterKey(key)
    }

    /// Whether `other` is this key, in time that does not depend on where
    /// they differ.
    pub fn matches(&self, other: &[u8]) -> bool {
        // Every byte is looked at whatever the others are; the length is
        // not a secret (it is fixed).
        if other.len() != KEY_BYTES {
            return false;
        }
        let diff = self
            .0
            .iter()
            .zip(other)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// The key for the internal channel's proofs (`internal.rs`).
    pub fn hmac_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0)
    }

    /// 64 hex digits (surrounding whitespace allowed).
    pub fn parse_hex(text: &str) -> Option<ClusterKey> {
        let text = text.trim().as_bytes();
        if text.len() != KEY_BYTES * 2 {
            return None;
        }
        let mut key = [0u8; KEY_BYTES];
        for (i, pair) in text.chunks(2).enumerate() {
            let hex = |b: u8| (b as char).to_digit(16);
            key[i] = (hex(pair[0])? * 16 + hex(pair[1])?) as u8;
        }
        Some(ClusterKey(key))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Some of the three flags, not all.
    Incomplete(&'static str),
    /// Replicas share state only through PostgreSQL.
    NeedsPostgres,
    ReplicaId(String),
    InternalAddr(String),
    /// The key file: unreadable, readable by others, or not a key.
    Key(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Incomplete(missing) => write!(
                f,
                "--replica-id, --internal-addr and --cluster-key go together: {missing} is missing"
            ),
            ConfigError::NeedsPostgres => f.write_str(
                "--replica-id needs --database postgres://… (replicas share their state there; \
                 the embedded SQLite serves one server)",
            ),
            ConfigError::ReplicaId(why) => write!(f, "--replica-id: {why}"),
            ConfigError::InternalAddr(why) => write!(f, "--internal-addr: {why}"),
            ConfigError::Key(why) => write!(f, "--cluster-key: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `None` for a single server (none of the flags given).
pub fn resolve(
    args: &ClusterArgs,
    database: Option<&str>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let (id, addr, key) = match (&args.replica_id, &args.internal_addr, &args.cluster_key) {
        (None, None, None) => return Ok(None),
        (Some(i), Some(a), Some(k)) => (i, a, k),
        (None, _, _) => return Err(ConfigError::Incomplete("--replica-id")),
        (_, None, _) => return Err(ConfigError::Incomplete("--internal-addr")),
        (_, _, None) => return Err(ConfigError::Incomplete("--cluster-key")),
    };
    if !database.is_some_and(crate::db::postgres::is_postgres_url) {
        return Err(ConfigError::NeedsPostgres);
    }
    check_replica_id(id)?;
    check_internal_addr(addr)?;
    Ok(Some(ClusterConfig {
        replica_id: id.clone(),
        internal_addr: addr.clone(),
        key: read_key(key)?,
    }))
}

fn check_replica_id(id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_REPLICA_ID {
        return Err(ConfigError::ReplicaId(format!(
            "1 to {MAX_REPLICA_ID} characters"
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ConfigError::ReplicaId(
            "only letters, digits, '-', '_' and '.'".into(),
        ));
    }
    Ok(())
}

fn check_internal_addr(addr: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::InternalAddr(format!("{addr:?} is not HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn read_key(path: &Path) -> Result<ClusterKey, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Key(format!("{shown}: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Key(format!(
            "{shown} is mode {mode:o}: others can read it (chmod 600 {shown})"
        )));
    }
    // Bounded: a key is 64 hex digits; anything much longer is not one.
    let text = std::fs::read(path).map_err(|e| ConfigError::Key(format!("{shown}: {e}")))?;
    if text.len() > 256 {
        return Err(ConfigError::Key(format!(
            "{shown} is not a key (64 hex digits)"
        )));
    }
    std::str::from_utf8(&text)
        .ok()
        .and_then(ClusterKey::parse_hex)
        .ok_or_else(|| ConfigError::Key(format!("{shown} is not a key (64 hex digits)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(id: Option<&str>, addr: Option<&str>, key: Option<&Path>) -> ClusterArgs {
        ClusterArgs {
            replica_id: id.map(str::to_owned),
            internal_addr: addr.map(str::to_owned),
            cluster_key: key.map(Path::to_path_buf),
        }
    }

    #[test]
    fn no_flags_is_a_single_server() {
        assert!(resolve(&args(None, None, None), None).unwrap().is_none());
    }

    #[test]
    fn the_flags_go_together_and_need_postgres() {
        let pg = Some("postgres://u@127.0.0.1/db");
        let k = Path::new("/nonexistent");
        assert_eq!(
            resolve(&args(Some("a"), None, Some(k)), pg).unwrap_err(),
            ConfigError::Incomplete("--internal-addr")
        );
        assert_eq!(
            resolve(&args(None, Some("h:1"), None), pg).unwrap_err(),
            ConfigError::Incomplete("--replica-id")
        );
        assert_eq!(
            resolve(&args(Some("a"), Some("h:1"), Some(k)), None).unwrap_err(),
            ConfigError::NeedsPostgres
        );
    }

    #[test]
    fn ids_and_addresses_are_checked() {
        assert!(check_replica_id("replica-1.eu_west").is_ok());
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(64)] {
            assert!(check_replica_id(bad).is_err(), "{bad:?}");
        }
        for good in ["10.0.0.5:9443", "replica-a.internal:9443", "[::1]:9443"] {
            assert!(check_internal_addr(good).is_ok(), "{good}");
        }
        for bad in ["10.0.0.5", "h:0", "h:99999", ":9443", "h h:1", "h/x:1"] {
            assert!(check_internal_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_is_64_hex_digits_private_and_never_shown() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tether-ckey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.key");
        let hex = "ab".repeat(32);
        std::fs::write(&file, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_key(&file), Err(ConfigError::Key(m)) if m.contains("chmod 600")));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = read_key(&file).unwrap();
        assert!(key.matches(&[0xab; 32]));
        assert!(!key.matches(&[0xab; 31]));
        assert!(!key.matches(&[0xac; 32]));
        assert_eq!(format!("{key:?}"), "ClusterKey(…)");
        std::fs::write(&file, "zz".repeat(32)).unwrap();
        assert!(read_key(&file).is_err());
        let pg = Some("postgres://u@127.0.0.1/db");
        std::fs::write(&file, &hex).unwrap();
        let c = resolve(&args(Some("a"), Some("127.0.0.1:9443"), Some(&file)), pg)
            .unwrap()
            .unwrap();
        assert_eq!(c.replica_id, "a");
        assert!(!format!("{c:?}").contains(&hex));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
