//! Signed self-update with automatic rollback.
//!
//! The server says which version it wants (`update` message); the runner
//! alone decides whether to take it: the binary must carry a minisign
//! signature by a key installed on this host ([`release`]), for this
//! architecture, newer than the running version (unless downgrades are
//! allowed here), and not a version that already failed here. Then:
//!
//! ```text
//!  offer ──▶ download binary + .minisig (blocking, the loop is stopped; every read has a timeout)
//!              │ verify: key, signature, arch, version     ✗ ─▶ report `rejected`, nothing changed
//!              ▼
//!           Staged: .tether.new written beside the binary, fsync file + dir   ✗ (disk full, read-only) ─▶ `rejected`
//!              │
//!              ▼
//!           Trial: .tether.new runs as our child (PDEATHSIG) with the same arguments;
//!              │   it must connect (write update-trial.ok) within the health deadline
//!              │   ✗ exits / never connects ─▶ kill it, delete it, remember the version as failed,
//!              │                                report `failed`, reconnect as the old version
//!              ▼
//!           Swapped: link tether → .tether.prev, rename .tether.new → tether, fsync dir
//!              │
//!              ▼
//!           exec(tether) (same pid: systemd, OpenRC, procd and no service manager alike)
//!              │
//!              ▼
//!           new binary connects before the deadline ─▶ report `installed`, record cleared
//!              ✗ no connection by the deadline, or 3 starts without one
//!                 ─▶ rename .tether.prev → tether, exec it, report `failed`
//! ```
//!
//! Each step is written to `update.json` ([`record`]) *before* it takes
//! effect, and each rename is atomic, so a SIGKILL or power cut anywhere
//! leaves a valid signed binary at the binary's path, and the next start
//! knows what was going on:
//!
//! | killed in | canonical path holds | next start does |
//! |---|---|---|
//! | Staged / Trial | the old binary | deletes `.tether.new`, reports `interrupted`; the server offers again |
//! | Swapped, before exec | the new binary (it passed its trial) | runs the health check as after exec |
//! | Swapped, before it connected | the new binary | health check again; after 3 starts, rolls back |
//!
//! One trade-off, on purpose: a new version that passed its trial but then
//! cannot reach the server within the deadline after the swap (an outage
//! at that very moment) is rolled back and not tried again on that host.
//! Being reachable is the one thing an agent must be; the operator can
//! publish the same build as a new version.
//!
//! Air-gapped hosts: `tether update --file BIN --sig BIN.minisig` verifies the
//! files, puts them in `<state-dir>/incoming/` and signals the running runner
//! (SIGUSR1), which installs them exactly like a download. With no runner
//! running, the command does the same steps itself and the next start runs
//! the new binary.

pub mod feed;
pub mod record;
pub mod release;

use crate::http::Client;
use crate::protocol::{update_state, UpdateOffer, UpdateStatus};
use crate::url::Url;
use crate::{error, info, warn};
use minisign_verify::PublicKey;
use record::{Pending, Phase, Record, TRIAL_OK_FILE};
use release::{Release, Version};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default health deadline: the new version must connect within this.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of each phase of a download (the whole body: three times this).
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest binary accepted for download.
pub const MAX_BINARY: usize = 64 * 1024 * 1024;
/// A new binary that starts this often without connecting is rolled back.
pub const MAX_BOOTS: u32 = 3;
/// How long a connected trial run gets to close and exit by itself.
const TRIAL_EXIT_WAIT: Duration = Duration::from_secs(5);
/// The environment variable that makes `tether run` a trial run.
pub const TRIAL_ENV: &str = "TETHER_UPDATE_TRIAL";
/// Test-only fault injection: pause (sleep) at the named step so a test can
/// SIGKILL the runner there (`staged`, `trial`, `swapped`, `started`).
pub const PAUSE_ENV: &str = "TETHER_UPDATE_PAUSE_AT";
/// Files of a release copied in by hand, inside the state dir.
pub const INCOMING_DIR: &str = "incoming";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why an update did not happen.
#[derive(Debug)]
pub enum UpdateError {
    /// Refused before anything changed (bad signature, wrong arch, downgrade,
    /// download failed, disk full, read-only binary location ...).
    Rejected(String),
    /// The new version ran and did not come up; it is remembered as failed.
    Failed(String),
    /// Stopped by SIGTERM/SIGINT in the middle; nothing changed.
    Interrupted,
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Rejected(m) => write!(f, "update rejected: {m}"),
            UpdateError::Failed(m) => write!(f, "update failed: {m}"),
            UpdateError::Interrupted => write!(f, "update interrupted by a signal"),
        }
    }
}

impl std::error::Error for UpdateError {}

/// The host owner's update settings, fixed at install time.
#[derive(Clone)]
pub struct UpdateConfig {
    /// The binary to replace (`/usr/local/bin/tether`).
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    /// Trusted minisign keys (several for rotation); empty = no updates.
    pub keys: Vec<PublicKey>,
    /// Where the keys came from, for messages.
    pub keys_source: String,
    pub allow_downgrade: bool,
    pub health_timeout: Duration,
    /// Arguments of the trial run and of the re-exec (the runner's own).
    pub run_args: Vec<OsString>,
}

/// What the verdict on a version is, before anything is downloaded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Already running it.
    Current,
    Install {
        upgrade: bool,
    },
    Refuse(String),
    /// Rejected a short while ago (already reported): leave it for now.
    Later(String),
}

/// What the start of `tether run` found in the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Run normally; with `Some`, this is a new version that must connect
    /// within the deadline.
    Run { health_deadline: Option<Duration> },
    /// This new version has had its chances: put the previous one back.
    RollBack(String),
}

fn paths(binary: &Path) -> (PathBuf, PathBuf) {
    let dir = binary.parent().unwrap_or(Path::new("/"));
    let name = binary
        .file_name()
        .map_or_else(|| "tether".into(), |n| n.to_string_lossy().into_owned());
    (
        dir.join(format!(".{name}.new")),
        dir.join(format!(".{name}.prev")),
    )
}

/// The path of the running binary, as the kernel knows it.
pub fn current_binary() -> io::Result<PathBuf> {
    let p = std::env::current_exe()?;
    // After a rename over it, /proc/self/exe reads "… (deleted)".
    let s = p.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(t) => PathBuf::from(t),
        None => p,
    })
}

/// Sleep at `step` if the test hook asks for it.
pub fn pause_point(step: &str) {
    if crate::config::env(PAUSE_ENV).as_deref() == Some(step) {
        warn!(
            "update",
            "{PAUSE_ENV}: pausing at step '{step}' (test hook)"
        );
        std::thread::sleep(Duration::from_secs(600));
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl UpdateConfig {
    pub fn current_version() -> Version {
        Version::parse(crate::version::version()).unwrap_or(Version {
            parts: vec![0],
            pre: None,
            text: crate::version::version().to_owned(),
        })
    }

    /// Whether `version` would be installed here (keys, downgrade, failed list).
    pub fn verdict(&self, version: &str, record: &Record) -> Verdict {
        let Some(v) = Version::parse(version) else {
            return Verdict::Refuse(format!("{version:?} is not a version"));
        };
        let current = Self::current_version();
        if v == current {
            return Verdict::Current;
        }
        if self.keys.is_empty() {
            return Verdict::Refuse(release::VerifyError::NoKeys.to_string());
        }
        if let Some(f) = record.has_failed(version) {
            return Verdict::Refuse(format!(
                "version {version} failed on this host before ({}); it is not tried again",
                f.reason
            ));
        }
        if let Some(r) = record.recently_rejected(version, now_ms()) {
            return Verdict::Later(format!(
                "{version} was rejected {} s ago ({}); it is retried after 10 minutes",
                now_ms().saturating_sub(r.at_ms) / 1000,
                r.reason
            ));
        }
        if v < current && !self.allow_downgrade {
            return Verdict::Refuse(format!(
                "{version} is older than the running {current}; downgrades are not allowed here (TETHER_UPDATE_ALLOW_DOWNGRADE=1)"
            ));
        }
        Verdict::Install {
            upgrade: v > current,
        }
    }

    /// Verify downloaded or copied files: signature, arch, verdict.
    pub fn check_release(
        &self,
        binary: &[u8],
        signature: &str,
        expected_version: Option<&str>,
    ) -> Result<Release, UpdateError> {
        let rel = release::verify(binary, signature, &self.keys)
            .map_err(|e| UpdateError::Rejected(e.to_string()))?;
        let arch = crate::sys::RELEASE_ARCH;
        if rel.arch != arch {
            return Err(UpdateError::Rejected(format!(
                "the release is for {}, this host is {arch}",
                rel.arch
            )));
        }
        if let Some(want) = expected_version {
            if Version::parse(want).as_ref() != Some(&rel.version) {
                return Err(UpdateError::Rejected(format!(
                    "the server offered {want} but the signed release is {}",
                    rel.version
                )));
            }
        }
        match self.verdict(&rel.version.text, &Record::load(&self.state_dir)) {
            Verdict::Install { .. } => Ok(rel),
            // The rejection backoff is for the server's offers; a release
            // installed by hand is tried when asked.
            Verdict::Later(_) if expected_version.is_none() => Ok(rel),
            Verdict::Current => Err(UpdateError::Rejected(format!(
                "{} is already running",
                rel.version
            ))),
            Verdict::Refuse(why) | Verdict::Later(why) => Err(UpdateError::Rejected(why)),
        }
    }

    /// Start of `tether run`: read the record and decide.
    pub fn on_start(&self) -> Start {
        let mut rec = Record::load(&self.state_dir);
        let Some(mut p) = rec.pending.clone() else {
            return Start::Run {
                health_deadline: None,
            };
        };
        let me = crate::version::version();
        let (staged, _) = paths(&self.binary);
        match p.phase {
            Phase::Staged | Phase::Trial => {
                // The rename never happened: the old binary is in place.
                let _ = fs::remove_file(&staged);
                let _ = fs::remove_file(self.state_dir.join(TRIAL_OK_FILE));
                warn!(
                    "update",
                    "an update to {} was interrupted ({:?}); nothing changed, running {me}",
                    p.version,
                    p.phase
                );
                rec.pending = None;
                rec.add_report(status(
                    &p,
                    update_state::INTERRUPTED,
                    Some(format!("the runner stopped during {:?}", p.phase).to_lowercase()),
                ));
                self.store(&rec);
                Start::Run {
                    health_deadline: None,
                }
            }
            Phase::Swapped if p.version == me => {
                p.boots += 1;
                if p.boots > MAX_BOOTS {
                    return Start::RollBack(format!(
                        "started {MAX_BOOTS} times without connecting"
                    ));
                }
                info!(
                    "update",
                    "running the new version {me} (start {} of {MAX_BOOTS}); it must connect within {:?}",
                    p.boots,
                    self.health_timeout
                );
                rec.pending = Some(p);
                self.store(&rec);
                pause_point("started");
                Start::Run {
                    health_deadline: Some(self.health_timeout),
                }
            }
            Phase::Swapped => {
                // Someone put another binary back (a rollback that finished,
                // or by hand): nothing is pending any more.
                rec.pending = None;
                self.store(&rec);
                Start::Run {
                    health_deadline: None,
                }
            }
        }
    }

    fn store(&self, rec: &Record) {
        if let Err(e) = rec.store(&self.state_dir) {
            error!(
                "update",
                "cannot write {}: {e}",
                Record::path(&self.state_dir).display()
            );
        }
    }

    /// Download the offered release from the server (paths checked by
    /// [`valid_download_path`]).
    pub fn download(
        &self,
        client: &Client,
        server: &Url,
        credential: &str,
        offer: &UpdateOffer,
    ) -> Result<(Vec<u8>, String), UpdateError> {
        let get = |path: &str, max: usize| -> Result<Vec<u8>, UpdateError> {
            if !valid_download_path(path) {
                return Err(UpdateError::Rejected(format!("bad download path {path:?}")));
            }
            let url = server.join(path);
            let auth = format!("Bearer {credential}");
            let resp = client
                .request("GET", &url, &[("Authorization", &auth)], None, max)
                .map_err(|e| UpdateError::Rejected(format!("downloading {url}: {e}")))?;
            if resp.head.status != 200 {
                return Err(UpdateError::Rejected(format!(
                    "downloading {url}: HTTP {}",
                    resp.head.status
                )));
            }
            Ok(resp.body)
        };
        let sig = get(&offer.signature, release::MAX_SIGNATURE)?;
        let bin = get(&offer.binary, MAX_BINARY)?;
        let sig = String::from_utf8(sig)
            .map_err(|_| UpdateError::Rejected("the signature is not text".into()))?;
        Ok((bin, sig))
    }

    /// Install verified bytes: stage, trial, swap, exec. Returns only if the
    /// update did not happen (with `Ok` never). `exec` false (the CLI with
    /// no runner running) stops after the swap.
    pub fn install(
        &self,
        binary: &[u8],
        signature: &str,
        expected_version: Option<&str>,
        offered_ms: u64,
        exec: bool,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<String, UpdateError> {
        let rel = match self.check_release(binary, signature, expected_version) {
            Ok(r) => r,
            Err(e) => {
                if let Some(v) = expected_version {
                    self.report_only(v, update_state::REJECTED, &e.to_string());
                }
                return Err(e);
            }
        };
        let version = rel.version.text.clone();
        let from = crate::version::version().to_owned();
        info!(
            "update",
            "installing {version} (signed by trusted key #{}), replacing {from} at {}",
            rel.key_index + 1,
            self.binary.display()
        );
        let mut pending = Pending {
            version: version.clone(),
            from_version: from,
            phase: Phase::Staged,
            boots: 0,
            offered_ms,
        };
        let (staged, prev) = paths(&self.binary);

        // Staged.
        if let Err(e) = self.stage(&staged, binary) {
            let _ = fs::remove_file(&staged);
            let msg = format!(
                "cannot write the new binary beside {}: {e}",
                self.binary.display()
            );
            self.report_only(&version, update_state::REJECTED, &msg);
            return Err(UpdateError::Rejected(msg));
        }
        let mut rec = Record::load(&self.state_dir);
        rec.pending = Some(pending.clone());
        if let Err(e) = rec.store(&self.state_dir) {
            let _ = fs::remove_file(&staged);
            let msg = format!("cannot write the update record: {e}");
            return Err(UpdateError::Rejected(msg));
        }
        pause_point("staged");

        // Trial.
        pending.phase = Phase::Trial;
        rec.pending = Some(pending.clone());
        self.store(&rec);
        let trial = self.trial(&staged, &version, interrupted);
        let _ = fs::remove_file(self.state_dir.join(TRIAL_OK_FILE));
        if let Err(e) = trial {
            let _ = fs::remove_file(&staged);
            let mut rec = Record::load(&self.state_dir);
            rec.pending = None;
            match &e {
                UpdateError::Failed(why) => {
                    error!(
                        "update",
                        "version {version} failed its trial: {why}; staying on {}",
                        pending.from_version
                    );
                    rec.add_failed(&version, why, now_ms());
                    rec.add_report(status(&pending, update_state::FAILED, Some(why.clone())));
                }
                other => {
                    rec.add_report(status(
                        &pending,
                        update_state::INTERRUPTED,
                        Some(other.to_string()),
                    ));
                }
            }
            self.store(&rec);
            return Err(e);
        }
        pause_point("trial");

        // Swap: keep the previous binary, rename the new one over it.
        if let Err(e) = self.swap(&staged, &prev) {
            let _ = fs::remove_file(&staged);
            let msg = format!("cannot replace {}: {e}", self.binary.display());
            let mut rec = Record::load(&self.state_dir);
            rec.pending = None;
            rec.add_report(status(&pending, update_state::REJECTED, Some(msg.clone())));
            self.store(&rec);
            return Err(UpdateError::Rejected(msg));
        }
        pending.phase = Phase::Swapped;
        let mut rec = Record::load(&self.state_dir);
        rec.pending = Some(pending.clone());
        self.store(&rec);
        info!(
            "update",
            "{} now holds {version}; the previous binary is kept as {}",
            self.binary.display(),
            prev.display()
        );
        pause_point("swapped");
        if !exec {
            return Ok(version);
        }
        let e = Command::new(&self.binary).args(&self.run_args).exec();
        // exec returned: the new binary cannot even be started. Put the old one back.
        let why = format!("cannot exec {}: {e}", self.binary.display());
        self.roll_back_files(&why);
        Err(UpdateError::Failed(why))
    }

    /// A report without any change (a rejection), and the version left
    /// alone for a while.
    pub fn report_only(&self, version: &str, state: &str, reason: &str) {
        let mut rec = Record::load(&self.state_dir);
        if state == update_state::REJECTED {
            rec.add_rejected(version, reason, now_ms());
        }
        let p = Pending {
            version: version.to_owned(),
            from_version: crate::version::version().to_owned(),
            phase: Phase::Staged,
            boots: 0,
            offered_ms: 0,
        };
        rec.add_report(status(&p, state, Some(reason.to_owned())));
        self.store(&rec);
    }

    fn stage(&self, staged: &Path, binary: &[u8]) -> io::Result<()> {
        let _ = fs::remove_file(staged);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(staged)?;
        write_synced(&mut f, binary)?;
        drop(f);
        fsync_dir(staged.parent().unwrap_or(Path::new("/")))
    }

    fn swap(&self, staged: &Path, prev: &Path) -> io::Result<()> {
        let dir = self.binary.parent().unwrap_or(Path::new("/"));
        match fs::remove_file(prev) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // A hard link keeps the old binary without copying it, and the
        // canonical path never goes missing.
        fs::hard_link(&self.binary, prev)?;
        fsync_dir(dir)?;
        fs::rename(staged, &self.binary)?;
        fsync_dir(dir)
    }

    /// Run the staged binary as a child until it says it is connected,
    /// exits, or the deadline passes.
    fn trial(
        &self,
        staged: &Path,
        version: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), UpdateError> {
        let ok_file = self.state_dir.join(TRIAL_OK_FILE);
        let _ = fs::remove_file(&ok_file);
        let mut cmd = Command::new(staged);
        cmd.args(&self.run_args).env(TRIAL_ENV, version);
        // The trial must not outlive us (a SIGKILL of the runner).
        crate::sys::process::exec_dies_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| UpdateError::Failed(format!("cannot start the new binary: {e}")))?;
        info!(
            "update",
            "trial run of {version} started (pid {})",
            child.id()
        );
        let deadline = Instant::now() + self.health_timeout;
        loop {
            if let Ok(text) = fs::read_to_string(&ok_file) {
                if text.trim() == version {
                    info!("update", "trial run of {version} connected");
                    wait_or_kill(&mut child, TRIAL_EXIT_WAIT);
                    return Ok(());
                }
                kill(&mut child);
                return Err(UpdateError::Failed(format!(
                    "the new binary reports version {:?}, its signature says {version}",
                    text.trim()
                )));
            }
            match child.try_wait() {
                Ok(Some(st)) => {
                    return Err(UpdateError::Failed(format!(
                        "the new version exited before connecting ({st})"
                    )))
                }
                Ok(None) => {}
                Err(e) => {
                    kill(&mut child);
                    return Err(UpdateError::Failed(format!(
                        "cannot watch the trial run: {e}"
                    )));
                }
            }
            if interrupted() {
                kill(&mut child);
                return Err(UpdateError::Interrupted);
            }
            if Instant::now() >= deadline {
                kill(&mut child);
                return Err(UpdateError::Failed(format!(
                    "the new version did not connect within {:?}",
                    self.health_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Put `.tether.prev` back (the new version is bad), remember the
    /// version as failed and queue the report. Returns whether the files
    /// were restored.
    pub fn roll_back_files(&self, why: &str) -> bool {
        let (_, prev) = paths(&self.binary);
        let mut rec = Record::load(&self.state_dir);
        let pending = rec.pending.take().unwrap_or(Pending {
            version: crate::version::version().to_owned(),
            from_version: String::new(),
            phase: Phase::Swapped,
            boots: 0,
            offered_ms: 0,
        });
        let restored = fs::rename(&prev, &self.binary)
            .and_then(|()| fsync_dir(self.binary.parent().unwrap_or(Path::new("/"))));
        match &restored {
            Ok(()) => error!(
                "update",
                "version {} failed ({why}); the previous binary {} is back",
                pending.version,
                pending.from_version
            ),
            Err(e) => error!(
                "update",
                "version {} failed ({why}) but {} cannot be restored: {e}",
                pending.version,
                prev.display()
            ),
        }
        rec.add_failed(&pending.version, why, now_ms());
        rec.add_report(status(&pending, update_state::FAILED, Some(why.to_owned())));
        self.store(&rec);
        restored.is_ok()
    }

    /// The new version is unhealthy: restore the previous binary and exec
    /// it. Returns only if that is impossible.
    pub fn roll_back_and_exec(&self, why: &str) -> io::Error {
        if !self.roll_back_files(why) {
            return io::Error::other("no previous binary to roll back to");
        }
        Command::new(&self.binary).args(&self.run_args).exec()
    }
}

/// A path an update offer may name for a download: absolute, no `..`, and
/// only visible ASCII, so nothing (a space, CR, LF) can leave the request
/// line of the runner's GET to its own server.
fn valid_download_path(path: &str) -> bool {
    path.starts_with('/') && !path.contains("..") && path.bytes().all(|b| b.is_ascii_graphic())
}

fn status(p: &Pending, state: &str, reason: Option<String>) -> UpdateStatus {
    UpdateStatus {
        version: p.version.clone(),
        state: state.to_owned(),
        from_version: p.from_version.clone(),
        reason,
        at_ms: now_ms(),
        took_ms: None,
    }
}

/// All of `bytes`, then fsync: a disk that fills up fails here (ENOSPC).
fn write_synced(f: &mut File, bytes: &[u8]) -> io::Result<()> {
    f.write_all(bytes)?;
    f.sync_all()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_or_kill(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child);
}

/// Copy a hand-carried release into `<state-dir>/incoming/` (durably) for
/// the running runner to install.
pub fn put_incoming(state_dir: &Path, binary: &[u8], signature: &str) -> io::Result<()> {
    let dir = state_dir.join(INCOMING_DIR);
    fs::create_dir_all(&dir)?;
    crate::state::write_atomic(
        &dir.join("tether.minisig"),
        signature.as_bytes(),
        0o600,
        true,
    )?;
    crate::state::write_atomic(&dir.join("tether"), binary, 0o600, true)
}

/// Take the hand-carried release (and remove it).
pub fn take_incoming(state_dir: &Path) -> io::Result<(Vec<u8>, String)> {
    let dir = state_dir.join(INCOMING_DIR);
    let bin = fs::read(dir.join("tether"))?;
    let sig = fs::read_to_string(dir.join("tether.minisig"))?;
    let _ = fs::remove_dir_all(&dir);
    Ok((bin, sig))
}

#[cfg(test)]
mod tests;
