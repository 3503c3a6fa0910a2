//! What the runner keeps on disk.
//!
//! * state dir (`--state-dir`, default `/var/lib/tether`, mode 0700):
//!   `credential.json` (0600) from `tether enroll`, and `ca.pem`, a copy of
//!   `--ca-file` so that `tether run` needs no flags.
//! * run dir (`--run-dir`, default the state dir; systemd uses `/run/tether`):
//!   `status.json`, rewritten on every state change and every pong, read by
//!   `tether status`.
//!
//! Every file is written whole: temp file, (fsync,) rename. A reader never
//! sees half a file, and a crash leaves either the old or the new one.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const CREDENTIAL_FILE: &str = "credential.json";
pub const CA_FILE: &str = "ca.pem";
pub const STATUS_FILE: &str = "status.json";

/// What enrollment produced; everything `tether run` needs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub server: String,
    pub runner_id: String,
    pub tenant_id: String,
    pub credential: String,
}

// Debug must not leak the secret into a log line.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("server", &self.server)
            .field("runner_id", &self.runner_id)
            .field("tenant_id", &self.tenant_id)
            .field("credential", &"<redacted>")
            .finish()
    }
}

#[derive(Debug)]
pub enum StateError {
    /// The directory cannot be created or written.
    NotWritable {
        path: PathBuf,
        source: io::Error,
    },
    /// No `credential.json`: `tether enroll` has not run (here).
    NotEnrolled {
        path: PathBuf,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Corrupt {
        path: PathBuf,
        detail: String,
    },
    Write {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::NotWritable { path, .. } => write!(f, "directory {} is not writable", path.display()),
            StateError::NotEnrolled { path } => write!(
                f,
                "not enrolled: {} does not exist; run `tether enroll --server URL --token TOKEN` first",
                path.display()
            ),
            StateError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            StateError::Corrupt { path, detail } => write!(f, "{} is corrupt: {detail}", path.display()),
            StateError::Write { path, .. } => write!(f, "cannot write {}", path.display()),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::NotWritable { source, .. }
            | StateError::Read { source, .. }
            | StateError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Create `dir` (0700 if new) and prove it is writable by creating and
/// removing a probe file. Done before enrollment so a read-only state dir
/// does not burn a one-time token.
pub fn ensure_writable_dir(dir: &Path) -> Result<(), StateError> {
    let not_writable = |source| StateError::NotWritable {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(not_writable)?;
    let probe = dir.join(format!(".probe.{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&probe)
        .map_err(not_writable)?;
    fs::remove_file(&probe).map_err(not_writable)?;
    Ok(())
}

/// Write `bytes` to `path` atomically with `mode`. `durable` adds the fsyncs
/// (file and directory) that survive a power cut; status.json skips them: it
/// lives in /run, changes every few seconds, and flash wears out.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // Created with the final mode: the secret is never world-readable,
        // not even for a moment.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The state dir and the files in it.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn credential_path(&self) -> PathBuf {
        self.path.join(CREDENTIAL_FILE)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path.join(CA_FILE)
    }

    pub fn ensure_writable(&self) -> Result<(), StateError> {
        ensure_writable_dir(&self.path)
    }

    pub fn load_credential(&self) -> Result<Credential, StateError> {
        let path = self.credential_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotEnrolled { path })
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let cred: Credential = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if cred.credential.is_empty() || cred.server.is_empty() {
            return Err(StateError::Corrupt {
                path,
                detail: "empty server or credential".into(),
            });
        }
        Ok(cred)
    }

    pub fn store_credential(&self, cred: &Credential) -> Result<(), StateError> {
        let path = self.credential_path();
        let mut json = serde_json::to_vec_pretty(cred).unwrap_or_default();
        json.push(b'\n');
        write_atomic(&path, &json, 0o600, true).map_err(|source| StateError::Write { path, source })
    }

    /// Keep a copy of the CA bundle; with `None`, remove a stale copy from
    /// an earlier enrollment (a server with a public certificate needs none).
    pub fn store_ca(&self, pem: Option<&[u8]>) -> Result<(), StateError> {
        let path = self.ca_path();
        match pem {
            Some(pem) => write_atomic(&path, pem, 0o644, true)
                .map_err(|source| StateError::Write { path, source }),
            None => match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StateError::Write { path, source }),
            },
        }
    }

    /// The stored CA copy, if there is one.
    pub fn stored_ca(&self) -> Option<PathBuf> {
        let p = self.ca_path();
        p.is_file().then_some(p)
    }
}

/// The coarse state shown by `tether status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    #[serde(rename = "connecting")]
    Connecting,
    #[serde(rename = "connected")]
    Connected,
    #[serde(rename = "backing off")]
    BackingOff,
    #[serde(rename = "stopped")]
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Connecting => "connecting",
            RunState::Connected => "connected",
            RunState::BackingOff => "backing off",
            RunState::Stopped => "stopped",
        }
    }
}

/// `<run-dir>/status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub server: String,
    pub runner_id: String,
    /// When `state` was entered (RFC 3339 UTC).
    pub since: String,
    /// When the last pong arrived (RFC 3339 UTC).
    pub last_heartbeat: Option<String>,
    pub pid: u32,
    pub version: String,
    pub last_error: Option<String>,
    /// The metrics backlog; absent with metrics off (and in files written
    /// by older runners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsStatus>,
    /// Terminals open on this host (shells and container execs); absent
    /// when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub terminals: u32,
    /// What the host owner switched off (`jobs`, `docker`, `host terminal`,
    /// `container terminal`, `container control`); absent when nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switched_off: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The metrics part of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsStatus {
    /// Records held: not yet acknowledged by the server.
    pub backlog_records: u64,
    /// Bytes they take (within the 256 KiB budget).
    pub backlog_bytes: u64,
    /// Records dropped, oldest first, to stay within the budget.
    pub dropped: u64,
    /// Time of the last sample (RFC 3339 UTC).
    pub last_sample: Option<String>,
}

pub fn status_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATUS_FILE)
}

pub fn write_status(run_dir: &Path, status: &Status) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(status).unwrap_or_default();
    json.push(b'\n');
    write_atomic(&status_path(run_dir), &json, 0o644, false)
}

/// `Ok(None)` when there is no status file (never ran here).
pub fn read_status(run_dir: &Path) -> Result<Option<Status>, StateError> {
    let path = status_path(run_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn credential_round_trip_with_0600() {
        let dir = tempdir("cred");
        let sd = StateDir::new(dir.join("nested"));
        assert!(matches!(
            sd.load_credential(),
            Err(StateError::NotEnrolled { .. })
        ));
        sd.ensure_writable().unwrap();
        let cred = Credential {
            server: "https://s".into(),
            runner_id: "rn_1".into(),
            tenant_id: "tn_1".into(),
            credential: "trun_secret".into(),
        };
        sd.store_credential(&cred).unwrap();
        assert_eq!(sd.load_credential().unwrap(), cred);
        let mode = fs::metadata(sd.credential_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::metadata(&sd.path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(!format!("{cred:?}").contains("trun_secret"));
        // No temp files left behind.
        assert_eq!(fs::read_dir(&sd.path).unwrap().count(), 1);

        sd.store_ca(Some(b"pem")).unwrap();
        assert_eq!(sd.stored_ca(), Some(sd.ca_path()));
        sd.store_ca(None).unwrap();
        assert_eq!(sd.stored_ca(), None);
        sd.store_ca(None).unwrap();

        fs::write(sd.credential_path(), b"{nope").unwrap();
        assert!(matches!(
            sd.load_credential(),
            Err(StateError::Corrupt { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_round_trip() {
        let dir = tempdir("status");
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_status(&dir).unwrap(), None);
        let st = Status {
            state: RunState::BackingOff,
            server: "https://s".into(),
            runner_id: "rn_1".into(),
            since: "2026-11-28T12:00:00Z".into(),
            last_heartbeat: None,
            pid: 42,
            version: "0.1.0".into(),
            last_error: Some("cannot connect".into()),
            metrics: None,
            terminals: 0,
            switched_off: Vec::new(),
        };
        write_status(&dir, &st).unwrap();
        assert_eq!(read_status(&dir).unwrap(), Some(st.clone()));
        let raw = fs::read_to_string(status_path(&dir)).unwrap();
        assert!(raw.contains("\"state\": \"backing off\""), "{raw}");
        assert!(!raw.contains("terminals"), "{raw}");
        let st2 = Status {
            state: RunState::Connected,
            last_heartbeat: Some("x".into()),
            ..st
        };
        write_status(&dir, &st2).unwrap();
        assert_eq!(read_status(&dir).unwrap(), Some(st2.clone()));
        let st3 = Status {
            metrics: Some(MetricsStatus {
                backlog_records: 3,
                backlog_bytes: 310,
                dropped: 0,
                last_sample: Some("2026-11-28T12:00:05Z".into()),
            }),
            terminals: 2,
            ..st2
        };
        write_status(&dir, &st3).unwrap();
        assert_eq!(read_status(&dir).unwrap(), Some(st3));
        let raw = fs::read_to_string(status_path(&dir)).unwrap();
        assert!(raw.contains("\"backlog_records\": 3"), "{raw}");
        assert!(raw.contains("\"terminals\": 2"), "{raw}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_dir_is_reported() {
        // A path under a regular file can never be created, even as root.
        let dir = tempdir("ro");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        fs::write(&file, b"x").unwrap();
        let e = ensure_writable_dir(&file.join("sub")).unwrap_err();
        assert!(matches!(e, StateError::NotWritable { .. }));
        fs::remove_dir_all(&dir).unwrap();
    }
}
