//! Signed actions on the host: the host owner's trusted operator keys and
//! which capabilities need a signature, and the check of each action
//! (`protocol/signed.rs` says what is signed; `docs/security.md` why).
//!
//! ```text
//! action ─▶ required for its kind? ──no──▶ run (a signature is not checked)
//!             │ yes
//!             ▼
//!           signed? ─no─▶ refuse: unsigned
//!           by a trusted key? ─no─▶ refuse: unknown key
//!           signature over the canonical bytes holds? ─no─▶ refuse: altered
//!           not_after passed? ─yes─▶ refuse: expired
//!           action id seen before? ─yes─▶ refuse: replayed
//!             ▼
//!           remember the id until not_after (memory + <state-dir>/signed-actions),
//!           run
//! ```
//!
//! The host owner's choice is local (`--require-signed`, the keys file):
//! the server can neither switch it off nor add a key. Ids are remembered
//! in a file so a restart does not open a replay window; at most
//! [`MAX_REMEMBERED`] live ids, and a not-after at most [`MAX_VALIDITY_MS`]
//! ahead, so the memory is bounded in size and time.
//!
//! [`Verifier::check`] takes the time and the bytes as arguments: pure apart
//! from appending to the id file, and tested without a server. Jobs and
//! deploys are checked by `jobs/`, terminals and container operations by
//! the gate (`gate.rs`) before their feature sees them; one verifier for
//! all, so an action id is remembered once.
//! [`Verifier::record`] then writes the verdict to the host's own record,
//! `<state-dir>/audit.log` (`audit.rs`, read by `tether audit`).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};

use crate::protocol::signed::{Kind, Signed, MAX_ACTION_ID, MAX_SIGNATURE, MAX_VALIDITY_MS};

pub use crate::protocol::signed::REFUSED_CODE;

pub mod audit;
pub mod gate;
/// Live action ids remembered at most; beyond, signed actions are refused
/// until some expire (never forgotten early: that would allow a replay).
pub const MAX_REMEMBERED: usize = 4096;
/// The keys file in the state dir.
pub const KEYS_FILE: &str = "operator-keys.pub";
/// Remembered action ids in the state dir.
const SEEN_FILE: &str = "signed-actions";

/// Which kinds need a signature on this host: jobs, deploys (and
/// rollbacks), terminals (host and container), container operations (those
/// that change a container or image; listing and inspecting never do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Require {
    pub jobs: bool,
    pub deploys: bool,
    pub terminals: bool,
    pub containers: bool,
}

impl Require {
    /// `jobs,deploys,terminals,containers`, `all` or `none`.
    pub fn parse(s: &str) -> Result<Require, String> {
        let mut r = Require::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "jobs" => r.jobs = true,
                "deploys" => r.deploys = true,
                "terminals" => r.terminals = true,
                "containers" => r.containers = true,
                "all" => {
                    r = Require {
                        jobs: true,
                        deploys: true,
                        terminals: true,
                        containers: true,
                    }
                }
                "none" => r = Require::default(),
                other => {
                    return Err(format!(
                        "--require-signed: unknown {other:?} (jobs, deploys, terminals, \
                         containers, all or none)"
                    ))
                }
            }
        }
        Ok(r)
    }

    pub fn any(self) -> bool {
        self.jobs || self.deploys || self.terminals || self.containers
    }

    pub fn of(self, kind: Kind) -> bool {
        match kind {
            Kind::Job => self.jobs,
            Kind::Deploy => self.deploys,
            Kind::Terminal => self.terminals,
            Kind::Container => self.containers,
        }
    }
}

/// What the host owner configured (cheap to clone into each loop).
#[derive(Debug, Clone, Default)]
pub struct TrustConfig {
    pub require: Require,
    /// The text of the keys file, read at start.
    pub keys: Vec<String>,
    pub runner_id: String,
    /// Where the remembered ids live (`None`: memory only, for tests).
    pub state_dir: Option<PathBuf>,
}

impl TrustConfig {
    /// Read `<state-dir>/operator-keys.pub` (or `keys_file`). Requiring
    /// signatures with no key would refuse everything: an error at start.
    pub fn load(
        require: Require,
        keys_file: &Path,
        runner_id: &str,
        state_dir: &Path,
    ) -> Result<TrustConfig, String> {
        let keys = crate::update::release::load_keys(keys_file)?;
        if require.any() && keys.is_empty() {
            return Err(format!(
                "--require-signed needs trusted operator keys in {} (tether-server key generate)",
                keys_file.display()
            ));
        }
        // Kept as text: `PublicKey` is not `Clone`.
        let text = std::fs::read_to_string(keys_file).unwrap_or_default();
        Ok(TrustConfig {
            require,
            keys: vec![text],
            runner_id: runner_id.to_owned(),
            state_dir: Some(state_dir.to_owned()),
        })
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsigned(Kind),
    UnknownKey,
    Altered,
    Malformed(String),
    Expired {
        not_after_ms: u64,
        now_ms: u64,
    },
    TooFarAhead,
    Replayed(String),
    MemoryFull,
    /// The id could not be written down: a restart would forget it.
    Unrecorded(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unsigned(k) => write!(
                f,
                "unsigned: this host requires a signature on every {} (--require-signed)",
                k.as_str()
            ),
            Refusal::UnknownKey => f.write_str("unknown key: not signed by a key this host trusts"),
            Refusal::Altered => f.write_str(
                "altered: the signature does not match what arrived (changed after signing)",
            ),
            Refusal::Malformed(why) => write!(f, "bad signature: {why}"),
            Refusal::Expired {
                not_after_ms,
                now_ms,
            } => write!(
                f,
                "expired: valid until {not_after_ms} (Unix ms), it is {now_ms} here"
            ),
            Refusal::TooFarAhead => write!(
                f,
                "bad signature: not-after more than {} days ahead",
                MAX_VALIDITY_MS / 86_400_000
            ),
            Refusal::Replayed(id) => write!(f, "replayed: action {id} already ran on this host"),
            Refusal::MemoryFull => write!(
                f,
                "refused: {MAX_REMEMBERED} signed actions are still live on this host; \
                 sign with a shorter validity"
            ),
            Refusal::Unrecorded(e) => write!(
                f,
                "refused: cannot record the action id against replay: {e}"
            ),
        }
    }
}

/// The check, with the ids it has let through.
pub struct Verifier {
    cfg: TrustConfig,
    keys: Vec<PublicKey>,
    /// action id → not_after.
    seen: HashMap<String, u64>,
}

impl Verifier {
    pub fn new(cfg: TrustConfig, now_ms: u64) -> Verifier {
        let keys = cfg
            .keys
            .iter()
            .flat_map(|t| crate::update::release::parse_keys(t).unwrap_or_default())
            .collect();
        let mut v = Verifier {
            cfg,
            keys,
            seen: HashMap::new(),
        };
        v.load_seen(now_ms);
        v
    }

    pub fn runner_id(&self) -> &str {
        &self.cfg.runner_id
    }

    fn seen_path(&self) -> Option<PathBuf> {
        self.cfg.state_dir.as_ref().map(|d| d.join(SEEN_FILE))
    }

    /// Ids still live, from the file (rewritten without the expired ones).
    fn load_seen(&mut self, now_ms: u64) {
        let Some(path) = self.seen_path() else { return };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        for line in text.lines() {
            if let Some((id, t)) = line.split_once(' ') {
                if let Ok(t) = t.parse::<u64>() {
                    if t >= now_ms && id.len() <= MAX_ACTION_ID && self.seen.len() < MAX_REMEMBERED
                    {
                        self.seen.insert(id.to_owned(), t);
                    }
                }
            }
        }
        let kept: String = self
            .seen
            .iter()
            .map(|(id, t)| format!("{id} {t}\n"))
            .collect();
        if let Err(e) = crate::state::write_atomic(&path, kept.as_bytes(), 0o600, true) {
            crate::warn!("trust", "cannot rewrite {}: {e}", path.display());
        }
    }

    /// Check an action of `kind`; `canonical` builds its bytes (called
    /// only when there is a signature to check).
    pub fn check(
        &mut self,
        kind: Kind,
        signed: Option<&Signed>,
        canonical: impl FnOnce(&Signed) -> Vec<u8>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        if !self.cfg.require.of(kind) {
            return Ok(());
        }
        let Some(s) = signed else {
            return Err(Refusal::Unsigned(kind));
        };
        if s.signature.len() > MAX_SIGNATURE
            || s.action_id.is_empty()
            || s.action_id.len() > MAX_ACTION_ID
            || s.action_id.contains(char::is_whitespace)
        {
            return Err(Refusal::Malformed(
                "action id or signature out of bounds".into(),
            ));
        }
        let sig = Signature::decode(&s.signature).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let bytes = canonical(s);
        let mut known = false;
        let mut good = false;
        for key in &self.keys {
            match key.verify(&bytes, &sig, false) {
                Ok(()) => {
                    good = true;
                    break;
                }
                Err(minisign_verify::Error::UnexpectedKeyId) => {}
                Err(_) => known = true,
            }
        }
        if !good {
            return Err(if known {
                Refusal::Altered
            } else {
                Refusal::UnknownKey
            });
        }
        if now_ms > s.not_after_ms {
            return Err(Refusal::Expired {
                not_after_ms: s.not_after_ms,
                now_ms,
            });
        }
        if s.not_after_ms > now_ms.saturating_add(MAX_VALIDITY_MS) {
            return Err(Refusal::TooFarAhead);
        }
        self.seen.retain(|_, t| *t >= now_ms);
        if self.seen.contains_key(&s.action_id) {
            return Err(Refusal::Replayed(s.action_id.clone()));
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(Refusal::MemoryFull);
        }
        self.remember(&s.action_id, s.not_after_ms)
            .map_err(Refusal::Unrecorded)
    }

    /// Write down in `<state-dir>/audit.log` what became of an action and
    /// who signed it (`verdict`: what [`Verifier::check`] said); `subject`
    /// names it (`job=ID`, `terminal=host`, `container=NAME op=stop`, its
    /// values bounded with [`audit::field`]). A record that cannot be
    /// written is a warning, not a refusal: the record serves the host
    /// owner, the check guards the host.
    pub fn record(
        &self,
        subject: &str,
        kind: Kind,
        signed: Option<&Signed>,
        verdict: &Result<(), Refusal>,
        now_ms: u64,
    ) {
        let Some(dir) = &self.cfg.state_dir else {
            return;
        };
        let signer = match signed {
            None => "unsigned".to_owned(),
            Some(s) => audit::key_id(&s.signature).unwrap_or_else(|| "malformed".into()),
        };
        let outcome = match verdict {
            Ok(()) if signed.is_some() && !self.cfg.require.of(kind) => "ran unchecked".into(),
            Ok(()) => "ran".to_owned(),
            Err(why) => format!("refused: {}", audit::text(&why.to_string())),
        };
        let line = format!(
            "{} {} kind={} action={} signer={signer} {outcome}",
            crate::log::format_utc(now_ms / 1000),
            // Built from bounded fields; never more than one line.
            audit::text(subject),
            kind.as_str(),
            signed.map_or("-".into(), |s| audit::field(&s.action_id, MAX_ACTION_ID)),
        );
        if let Err(e) = audit::append(dir, &line, audit::MAX_BYTES) {
            crate::warn!(
                "trust",
                "cannot write {}: {e}",
                dir.join(audit::FILE).display()
            );
        }
    }

    fn remember(&mut self, id: &str, not_after_ms: u64) -> Result<(), String> {
        let Some(path) = self.seen_path() else {
            self.seen.insert(id.to_owned(), not_after_ms);
            return Ok(());
        };
        // Written (and synced) before the action runs: a crash right after
        // must not make the id new again.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(format!("{id} {not_after_ms}\n").as_bytes())?;
                f.sync_data()
            });
        written.map_err(|e| format!("{}: {e}", path.display()))?;
        self.seen.insert(id.to_owned(), not_after_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
