//! A deploy's container replacement, made safe against the runner dying
//! in the middle of it (SIGKILL, power cut, OOM).
//!
//! Before the old container is renamed aside (`NAME-old-JOB`), the deploy
//! writes `<state-dir>/deploy/<app>/parked.json` (atomically, fsynced): the
//! app's container name, the parked name, the old container's id and
//! whether it ran. Once the new one is healthy the file says so; when the
//! deploy is over (the old one removed, or put back) the file goes.
//!
//! A file found when the runner starts means the runner died mid-way; the
//! job is reported failed anyway (ledger.rs), and [`restore_all`] first
//! makes the host right again, with blocking calls (the event loop has not
//! started; each call has a deadline):
//!
//! ```text
//!  parked.json ─▶ healthy? ── yes ─▶ remove the parked old one (the new one runs, proven)
//!                    │ no
//!                    ▼
//!  NAME is a container other than the old one (the unproven new one) ─▶ remove it
//!                    ▼
//!  the old one is not called NAME ─▶ rename it back ─▶ ran before and is stopped ─▶ start it
//!                    ▼
//!  remove parked.json; the job's reason says what was done
//! ```
//!
//! An engine that cannot be reached keeps the file (tried again at the next
//! start) and the reason says so.

use crate::engine::api::{self, Api, ContainerInspect};
use crate::net::http::{BufferedDecoder, Request, Response};
use crate::state::write_atomic;
use crate::{info, warn};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deadline of each call while restoring (stop/start included).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ANSWER: usize = 1024 * 1024;
pub const FILE: &str = "parked.json";

/// What a runner that died mid-replacement needs to put things back. Never
/// a secret: names and ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub job_id: String,
    pub container: String,
    pub parked: String,
    pub old_id: String,
    pub old_running: bool,
    #[serde(default)]
    pub healthy: bool,
}

impl Parked {
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(path, &bytes, 0o600, true)
    }
}

/// Put back every replacement a previous run left half done. Returns, per
/// job id, what was done (for the job's reason).
pub fn restore_all(state_dir: &Path, socket: Option<&Path>) -> Vec<(String, String)> {
    let mut notes = Vec::new();
    let Ok(apps) = std::fs::read_dir(state_dir.join("deploy")) else {
        return notes;
    };
    for app in apps.flatten() {
        let path = app.path().join(FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(p) = serde_json::from_slice::<Parked>(&bytes) else {
            warn!("jobs", "{}: unreadable; removed", path.display());
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let note = match socket.ok_or_else(|| "Docker is switched off".to_owned()) {
            Ok(s) => restore(&p, s),
            Err(e) => Err(e),
        };
        let note = match note {
            Ok(done) => {
                let _ = std::fs::remove_file(&path);
                info!("jobs", "deploy {} was cut short: {done}", p.job_id);
                done
            }
            Err(e) => {
                warn!(
                    "jobs",
                    "deploy {}: cannot restore {}: {e}", p.job_id, p.container
                );
                format!("the old container {} could not be restored yet ({e}); tried again at the next start", p.parked)
            }
        };
        notes.push((p.job_id.clone(), note));
    }
    notes
}

fn restore(p: &Parked, socket: &Path) -> Result<String, String> {
    let ping = exchange(socket, Api::ping())?;
    let version = api::engine_version_from_ping(&ping.head).map_err(|e| e.to_string())?;
    let api = Api::new(api::negotiate(version, None).map_err(|e| e.to_string())?);
    let inspect = |name: &str| -> Result<Option<ContainerInspect>, String> {
        match api::check(exchange(socket, api.inspect_container(name))?) {
            Ok(r) => serde_json::from_slice(&r.body)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    let call = |req: Request| -> Result<(), String> {
        api::check(exchange(socket, req)?)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let Some(old) = inspect(&p.old_id)? else {
        return Ok("the old container is gone; nothing to restore".into());
    };
    if p.healthy {
        if old.name.trim_start_matches('/') != p.container {
            call(api.remove(&p.old_id, true, false))?;
        }
        return Ok("the new container was healthy; the old one was removed".into());
    }
    let mut done = Vec::new();
    if let Some(current) = inspect(&p.container)? {
        if current.id != p.old_id {
            call(api.remove(&current.id, true, false))?;
            done.push("the new container was removed");
        }
    }
    if old.name.trim_start_matches('/') != p.container {
        call(api.rename(&p.old_id, &p.container))?;
    }
    if p.old_running && !old.state.running {
        call(api.start(&p.old_id))?;
        done.push("the old container was restored and runs again");
    } else {
        done.push("the old container was restored");
    }
    Ok(done.join("; "))
}

/// One request on its own connection, answered whole.
pub(super) fn exchange(socket: &Path, req: Request) -> Result<Response, String> {
    let fail = |e: io::Error| format!("Docker engine at {}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(fail)?;
    s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(fail)?;
    s.set_write_timeout(Some(CALL_TIMEOUT)).map_err(fail)?;
    s.write_all(&req.encode()).map_err(fail)?;
    let mut dec = BufferedDecoder::new(req.expect(), MAX_ANSWER);
    let mut buf = vec![0u8; 16 * 1024];
    while !dec.is_done() {
        let n = s.read(&mut buf).map_err(fail)?;
        if n == 0 {
            dec.eof().map_err(|e| format!("Docker's answer: {e}"))?;
            break;
        }
        dec.feed(&buf[..n])
            .map_err(|e| format!("Docker's answer: {e}"))?;
    }
    dec.take()
        .ok_or_else(|| "Docker closed without an answer".into())
}

/// Where a deploy of `app` keeps its file.
pub fn path(state_dir: &Path, app: &str) -> PathBuf {
    state_dir.join("deploy").join(app).join(FILE)
}
