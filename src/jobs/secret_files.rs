//! Memory-only secret delivery (`secrets_delivery: "files"`): each secret
//! of a deployment is a file `NAME` (mode 0400, owned by root) in
//! `<run-dir>/secrets/<app>/<job>/`, a directory on a filesystem kept in
//! memory, which the container gets read-only at `/run/secrets` (a bind
//! mount in its create call), as Docker Swarm secrets and Kubernetes
//! secret volumes are.
//!
//! Why this shape: an `Env` entry is written by Docker into the
//! container's `config.v2.json` on the host's disk, and a file put into the
//! container (`PUT /archive`) lands in its writable layer, on disk too;
//! `PUT /archive` cannot reach a tmpfs mounted inside the container either.
//! A host tmpfs bound into the container is the one place the Engine API
//! lets a container read from that never touches a disk, and it survives
//! `docker restart` (the bind is made again from the same directory).
//!
//! ```text
//!  prepare: <run-dir>/secrets already in memory (systemd's /run) ─▶ use it
//!           else mount a tmpfs there (root) ─▶ check again ─▶ or refuse the deploy
//!  write:   <app>/<job>/NAME, 0400 ─▶ the create call binds <app>/<job> at /run/secrets (ro)
//!  success: the app's other deployment directories are removed (the old container is gone)
//!  failure: this deployment's directory is removed (the old container keeps its own)
//! ```
//!
//! After a host reboot the memory is gone, and so is the directory: Docker
//! refuses to start the container (a bind whose source does not exist), so
//! the app never runs without its secrets; a deploy or a rollback delivers
//! them again (`docs/api.md`, "Secrets delivery").

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where secrets live in the container.
pub const TARGET: &str = "/run/secrets";
/// The tmpfs' size when the runner mounts one: secrets are small, and the
/// job message that brings them is bounded far below this.
const TMPFS_BYTES: u64 = 16 * 1024 * 1024;

/// Why the secrets could not be kept in memory.
#[derive(Debug)]
pub enum SecretFilesError {
    /// The directory could not be made in memory.
    NotInMemory(String),
    /// A name that cannot be a file name here.
    BadName(String),
    Io(String),
}

impl std::fmt::Display for SecretFilesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretFilesError::NotInMemory(s) | SecretFilesError::Io(s) => f.write_str(s),
            SecretFilesError::BadName(s) => write!(f, "{s:?} cannot name a secret file"),
        }
    }
}

/// A name that is one plain path segment: app names, job ids and secret
/// names (env variable names) all are.
fn segment(s: &str) -> Result<&str, SecretFilesError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(s)
    } else {
        Err(SecretFilesError::BadName(s.chars().take(129).collect()))
    }
}

/// The runner's secrets root, in memory: made (0700) and, unless it
/// already is on a tmpfs, a tmpfs mounted on it.
pub fn prepare(root: &Path) -> Result<(), SecretFilesError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| SecretFilesError::Io(format!("cannot make {}: {e}", root.display())))?;
    let in_memory = |p: &Path| {
        crate::sys::in_memory_fs(p)
            .map_err(|e| SecretFilesError::Io(format!("statfs {}: {e}", p.display())))
    };
    if in_memory(root)? {
        return Ok(());
    }
    if let Err(e) = crate::sys::mount_tmpfs(root, TMPFS_BYTES) {
        return Err(SecretFilesError::NotInMemory(format!(
            "cannot keep secrets in memory: {} is not on a tmpfs and mounting one there failed ({e}); \
             run the runner as root or give it a --run-dir on a tmpfs, or set the app's secrets_delivery to \"env\"",
            root.display()
        )));
    }
    if in_memory(root)? {
        Ok(())
    } else {
        Err(SecretFilesError::NotInMemory(format!(
            "{} is still not in memory after mounting a tmpfs",
            root.display()
        )))
    }
}

/// Left in `<state-dir>/deploy/<app>/` by a files delivery: this host keeps
/// secrets in memory, so a runner start looks for lost ones. Holds nothing.
const MARKER: &str = "secrets-in-memory";

/// Mark the app (its `<state-dir>/deploy/<app>` directory) as one whose
/// secrets live in memory (no secret in it).
pub fn mark(dir: &Path) -> Result<(), SecretFilesError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(MARKER), b""))
        .map_err(|e| SecretFilesError::Io(format!("cannot mark {}: {e}", dir.display())))
}

/// Whether any app of this runner ever had its secrets delivered as files.
pub fn ever_used(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("deploy"))
        .map(|apps| apps.flatten().any(|a| a.path().join(MARKER).exists()))
        .unwrap_or(false)
}

/// The directory of one deployment's secrets.
pub fn dir(root: &Path, app: &str, job: &str) -> Result<PathBuf, SecretFilesError> {
    Ok(root.join(segment(app)?).join(segment(job)?))
}

/// Write each secret as `dir/NAME` (0400, root's unless `uid`/`gid` say
/// whose: an app that runs as another user reads them as that user); the
/// directory is made fresh (0755: the container's processes must be able
/// to look into it).
pub fn write(
    dir: &Path,
    secrets: &[(String, String)],
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), SecretFilesError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        SecretFilesError::Io(format!("{what} {}: {e}", p.display()))
    };
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io("cannot make", parent, e))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(|e| io("cannot make", dir, e))?;
    for (name, value) in secrets {
        let path = dir.join(segment(name)?);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| io("cannot create", &path, e))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid).map_err(|e| io("cannot chown", &path, e))?;
        }
        f.write_all(value.as_bytes())
            .map_err(|e| io("cannot write", &path, e))?;
    }
    Ok(())
}

/// Remove one deployment's directory (a failed deploy).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Remove the app's deployment directories other than `keep` (a deploy
/// succeeded: the containers that used them are gone).
pub fn remove_others(keep: &Path) {
    let (Some(app_dir), Some(keep_name)) = (keep.parent(), keep.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(app_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() != keep_name {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// At start: the apps whose container Docker cannot start because its
/// secrets directory is gone (memory lost at a reboot), by blocking calls
/// with deadlines, before the event loop runs (as `parked.rs` does). Only
/// containers Docker starts at boot (restart policy `always` or
/// `unless-stopped`) count: one with `no` or `on-failure` would not run
/// after a reboot either, and stays as it is until the next deploy. The
/// server is asked to deliver again (`secrets_lost`). (The engine API does
/// not say whether an `unless-stopped` container was stopped by hand
/// before the reboot; such a one is started again by the redelivery.)
pub fn lost_apps(socket: &Path) -> Result<Vec<String>, String> {
    use crate::engine::api::{self, Api, Filters};
    use serde_json::Value;
    let ping = super::parked::exchange(socket, Api::ping())?;
    let version = api::engine_version_from_ping(&ping.head).map_err(|e| e.to_string())?;
    let api = Api::new(api::negotiate(version, None).map_err(|e| e.to_string())?);
    let filters = Filters::new().add(
        "label",
        &format!("{}=files", crate::protocol::secret_env::DELIVERY_LABEL),
    );
    let get = |req| -> Result<Value, String> {
        let resp = api::check(super::parked::exchange(socket, req)?).map_err(|e| e.to_string())?;
        serde_json::from_slice(&resp.body).map_err(|e| e.to_string())
    };
    let list = get(api.list_containers(true, &filters))?;
    let mut lost = Vec::new();
    for c in list.as_array().into_iter().flatten() {
        let gone = c["Mounts"].as_array().into_iter().flatten().any(|m| {
            m["Destination"] == TARGET
                && m["Source"].as_str().is_some_and(|s| !Path::new(s).exists())
        });
        let (Some(id), Some(app)) = (c["Id"].as_str(), c["Labels"]["tether.app"].as_str()) else {
            continue;
        };
        if !gone || c["State"] == "running" || lost.iter().any(|a| a == app) {
            continue;
        }
        let inspect = get(api.inspect_container(id))?;
        let policy = inspect["HostConfig"]["RestartPolicy"]["Name"].as_str();
        if matches!(policy, Some("always" | "unless-stopped")) {
            lost.push(app.to_owned());
        }
    }
    lost.truncate(crate::protocol::MAX_SECRETS_LOST);
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn is_root() -> bool {
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    #[test]
    fn names_are_single_path_segments() {
        for ok in ["web", "DB_PW", "jb_1a2b", "a.b-c"] {
            assert!(segment(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\0b",
            "x y",
            &"a".repeat(129),
        ] {
            assert!(segment(bad).is_err(), "{bad:?}");
        }
        assert!(dir(Path::new("/r"), "../etc", "j").is_err());
    }

    #[test]
    fn files_are_0400_and_others_are_removed_on_success() {
        let root = std::env::temp_dir().join(format!("tether-sf-{}", std::process::id()));
        let old = dir(&root, "web", "jb_1").unwrap();
        let new = dir(&root, "web", "jb_2").unwrap();
        write(&old, &[("A".into(), "1".into())], None, None).unwrap();
        let two = [("A".into(), "2".into()), ("B".into(), "x".into())];
        write(&new, &two, None, None).unwrap();
        let meta = std::fs::metadata(new.join("A")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        // Another owner: only root may give files away.
        if is_root() {
            write(&new, &two, Some(1000), Some(1001)).unwrap();
            let meta = std::fs::metadata(new.join("B")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
        }
        assert_eq!(std::fs::read_to_string(new.join("A")).unwrap(), "2");
        assert!(write(&new, &[("../A".into(), "x".into())], None, None).is_err());
        remove_others(&new);
        assert!(!old.exists() && new.exists());
        remove(&new);
        assert!(!new.exists());
        let _ = std::fs::remove_dir_all(root);
    }
}
