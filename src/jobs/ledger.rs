//! What the runner must remember about jobs across its own restarts, in
//! `<state-dir>/jobs.json` (written atomically, fsynced):
//!
//! * the ids it has accepted (the last [`MAX_SEEN`]), so a `job_start` the
//!   server repeats after a reconnect is never run twice;
//! * the jobs running now, with their process group and its start time, so
//!   a runner that restarts can end them and report them failed ("cut
//!   short by a runner restart") instead of leaving orphans;
//! * results the server has not acknowledged (sent again on every link).
//!
//! Never a secret: environment values stay in memory.

use crate::protocol::JobResult;
use crate::state::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// Job ids remembered for deduplication.
pub const MAX_SEEN: usize = 4096;
/// Unacknowledged results kept (oldest dropped beyond: the server marks a
/// job it never hears of again as lost).
const MAX_RESULTS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningEntry {
    pub job_id: String,
    pub channel: u32,
    pub pid: u32,
    /// Field 22 of /proc/PID/stat when it started: tells our process from
    /// a later one that reused the pid.
    pub start_ticks: u64,
    pub started_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    seen: VecDeque<String>,
    #[serde(default)]
    pub running: Vec<RunningEntry>,
    #[serde(default)]
    pub results: Vec<JobResult>,
    #[serde(skip)]
    path: PathBuf,
}

impl Ledger {
    /// The ledger at `path`; a missing or unreadable file is an empty one
    /// (the server then repeats what it needs, and duplicates are cheap to
    /// refuse there).
    pub fn load(path: &Path) -> Ledger {
        let mut l: Ledger = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        l.path = path.to_owned();
        l
    }

    pub fn save(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes, 0o600, true)
    }

    pub fn has_seen(&self, job_id: &str) -> bool {
        self.seen.iter().any(|s| s == job_id)
    }

    pub fn started(&mut self, entry: RunningEntry) {
        self.remember(&entry.job_id);
        self.running.push(entry);
    }

    /// The process of a job recorded before it was spawned.
    pub fn set_process(&mut self, job_id: &str, pid: u32, start_ticks: u64) {
        if let Some(r) = self.running.iter_mut().find(|r| r.job_id == job_id) {
            r.pid = pid;
            r.start_ticks = start_ticks;
        }
    }

    pub fn remember(&mut self, job_id: &str) {
        if !self.has_seen(job_id) {
            if self.seen.len() >= MAX_SEEN {
                self.seen.pop_front();
            }
            self.seen.push_back(job_id.to_owned());
        }
    }

    pub fn finished(&mut self, result: JobResult) {
        self.running.retain(|r| r.job_id != result.job_id);
        self.remember(&result.job_id);
        self.results.retain(|r| r.job_id != result.job_id);
        if self.results.len() >= MAX_RESULTS {
            self.results.remove(0);
        }
        self.results.push(result);
    }

    pub fn acked(&mut self, job_id: &str) -> bool {
        let before = self.results.len();
        self.results.retain(|r| r.job_id != job_id);
        before != self.results.len()
    }

    /// After a restart: end what was running (if it is still our process
    /// group) and turn it into failed results.
    ///
    /// `notes`: per job id, what was done to the host for it (a deploy's
    /// container put back), added to the reason.
    pub fn recover(&mut self, now_ms: u64, notes: &[(String, String)]) -> usize {
        let running = std::mem::take(&mut self.running);
        let n = running.len();
        for r in running {
            if start_ticks(r.pid) == Some(r.start_ticks) {
                if let Ok(pid) = libc::pid_t::try_from(r.pid) {
                    // The group we started, its start time checked above.
                    crate::sys::process::kill_group(pid, libc::SIGKILL);
                }
            }
            let mut reason =
                "cut short by a runner restart (output after what the server stored is lost)"
                    .to_owned();
            for (_, note) in notes.iter().filter(|(id, _)| *id == r.job_id) {
                reason.push_str("; ");
                reason.push_str(note);
            }
            self.finished(JobResult {
                job_id: r.job_id,
                channel: r.channel,
                status: super::status::JobStatus::Failed.as_str().into(),
                exit_code: None,
                signal: None,
                reason,
                started_ms: r.started_ms,
                finished_ms: now_ms,
                output_bytes: 0,
            });
        }
        n
    }
}

/// Start time of a process in clock ticks since boot (/proc/PID/stat, 22nd
/// field, counted after the command name, which may hold spaces).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_reports_what_was_running() {
        let dir = std::env::temp_dir().join(format!("tether-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.json");
        let mut l = Ledger::load(&path);
        l.started(RunningEntry {
            job_id: "jb_1".into(),
            channel: 1,
            pid: u32::MAX - 1,
            start_ticks: 1,
            started_ms: 5,
        });
        l.save().unwrap();
        let mut again = Ledger::load(&path);
        assert!(again.has_seen("jb_1"));
        assert_eq!(again.recover(9, &[]), 1);
        assert_eq!(again.results[0].status, "failed");
        assert!(again.running.is_empty());
        assert!(again.acked("jb_1"));
        assert!(!again.acked("jb_1"));
        assert!(again.has_seen("jb_1"), "still refused if repeated");
        assert!(start_ticks(std::process::id()).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
