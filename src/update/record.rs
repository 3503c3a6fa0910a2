//! `<state-dir>/update.json`: the one place an update's progress lives, so
//! that whichever binary starts next (old or new, after a crash, a SIGKILL
//! or a power cut) knows what was going on. Written whole and durably
//! (temp file, fsync, rename, fsync of the directory) before each step it
//! describes takes effect.
//!
//! It also keeps the versions that failed on this host (never tried again)
//! and the reports the server has not been sent yet (sent after the next
//! `welcome`, by whichever binary runs then).

use crate::protocol::UpdateStatus;
use crate::state::write_atomic;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

pub const RECORD_FILE: &str = "update.json";
/// Written by a trial run once it is connected: its version.
pub const TRIAL_OK_FILE: &str = "update-trial.ok";
/// Bounds, so a host that fails every version cannot grow the file forever.
const MAX_FAILED: usize = 32;
const MAX_REPORTS: usize = 16;

/// Where an update in progress stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The verified binary is written beside the current one (`.tether.new`).
    Staged,
    /// The staged binary runs as a trial child of the current process.
    Trial,
    /// The staged binary was renamed over the current one (the old one kept
    /// as `.tether.prev`); the new one must connect before its deadline.
    Swapped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    pub from_version: String,
    pub phase: Phase,
    /// Starts of the new binary in the `Swapped` phase: a binary that keeps
    /// dying before it connects is rolled back after a few.
    #[serde(default)]
    pub boots: u32,
    /// When the runner first heard of this version (Unix ms), for `took_ms`.
    pub offered_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub version: String,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub failed: Vec<Failed>,
    #[serde(default)]
    pub reports: Vec<UpdateStatus>,
    /// Versions refused recently (download failed, bad signature ...): not
    /// fetched again for [`REJECT_BACKOFF_MS`], so a broken release does not
    /// make the runner download it on every reconnect.
    #[serde(default)]
    pub rejected: Vec<Failed>,
}

/// How long a rejected version is left alone.
pub const REJECT_BACKOFF_MS: u64 = 10 * 60 * 1000;

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(RECORD_FILE)
    }

    /// The record, or an empty one if there is none. A corrupt file is
    /// reported and treated as empty: refusing to start would leave the host
    /// dark, and the binary that starts is valid either way (every rename
    /// is atomic).
    pub fn load(state_dir: &Path) -> Record {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                crate::warn!("update", "ignoring corrupt {}: {e}", path.display());
                Record::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Record::default(),
            Err(e) => {
                crate::warn!("update", "cannot read {}: {e}", path.display());
                Record::default()
            }
        }
    }

    pub fn store(&self, state_dir: &Path) -> io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        write_atomic(&Self::path(state_dir), &json, 0o600, true)
    }

    pub fn has_failed(&self, version: &str) -> Option<&Failed> {
        self.failed.iter().find(|f| f.version == version)
    }

    pub fn add_failed(&mut self, version: &str, reason: &str, at_ms: u64) {
        self.failed.retain(|f| f.version != version);
        self.failed.push(Failed {
            version: version.to_owned(),
            reason: reason.to_owned(),
            at_ms,
        });
        if self.failed.len() > MAX_FAILED {
            self.failed.remove(0);
        }
    }

    pub fn add_rejected(&mut self, version: &str, reason: &str, at_ms: u64) {
        self.rejected.retain(|f| f.version != version);
        self.rejected.push(Failed {
            version: version.to_owned(),
            reason: reason.to_owned(),
            at_ms,
        });
        if self.rejected.len() > MAX_FAILED {
            self.rejected.remove(0);
        }
    }

    /// A rejection of `version` younger than the backoff.
    pub fn recently_rejected(&self, version: &str, now_ms: u64) -> Option<&Failed> {
        self.rejected
            .iter()
            .find(|f| f.version == version && now_ms.saturating_sub(f.at_ms) < REJECT_BACKOFF_MS)
    }

    pub fn add_report(&mut self, report: UpdateStatus) {
        self.reports.push(report);
        if self.reports.len() > MAX_REPORTS {
            self.reports.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bounds_and_corruption() {
        let dir = std::env::temp_dir().join(format!("tether-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Record::load(&dir), Record::default());
        let mut r = Record {
            pending: Some(Pending {
                version: "0.2.0".into(),
                from_version: "0.1.0".into(),
                phase: Phase::Swapped,
                boots: 1,
                offered_ms: 5,
            }),
            ..Record::default()
        };
        for i in 0..40 {
            r.add_failed(&format!("0.{i}.0"), "x", i);
        }
        r.add_failed("0.39.0", "again", 99);
        assert_eq!(r.failed.len(), MAX_FAILED);
        assert_eq!(r.has_failed("0.39.0").unwrap().reason, "again");
        r.store(&dir).unwrap();
        assert_eq!(Record::load(&dir), r);
        std::fs::write(Record::path(&dir), b"{not json").unwrap();
        assert_eq!(Record::load(&dir), Record::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
