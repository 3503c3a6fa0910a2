//! The update's part inside the event loop: hears the server's `update`
//! offers, decides, sends `update_status` reports, confirms a new version's
//! health, and asks the loop to stop when there is something to install.
//! Nothing blocking happens here; the download and the swap run in `main`
//! once the loop has closed the connection.
//!
//! ```text
//!  welcome ──▶ trial run?  ──yes──▶ write update-trial.ok, stop the loop (exit 0)
//!                │no
//!                ├─ new version on probation? ──▶ record cleared, report `installed`
//!                └─ queue the reports left in update.json
//!  update offer ──▶ verdict: current ─▶ nothing; refused ─▶ report `rejected` (once);
//!                   install ─▶ stop the loop with Exit::Update
//! ```

use super::record::{Record, TRIAL_OK_FILE};
use super::{now_ms, UpdateConfig, Verdict};
use crate::conn::{Exit, Outgoing};
use crate::protocol::{update_state, Message as Control, UpdateOffer, UpdateStatus};
use crate::{error, info, warn};
use std::collections::VecDeque;

pub struct UpdateFeed {
    cfg: Option<UpdateConfig>,
    /// This process is a trial run of this version.
    trial: Option<String>,
    /// On probation: must connect before the loop's health deadline.
    probation: bool,
    outbox: VecDeque<UpdateStatus>,
    exit: Option<Exit>,
    /// Versions already answered by this process (no report storm).
    answered: Vec<String>,
    /// Self-update is off here, for this reason (see `ConnConfig::update_off`).
    off: Option<String>,
}

impl UpdateFeed {
    /// `cfg` `None`: offers are refused with the `off` reason, or ignored
    /// without one (tests of other parts).
    pub fn new(
        cfg: Option<UpdateConfig>,
        trial: Option<String>,
        off: Option<String>,
        probation: bool,
    ) -> UpdateFeed {
        UpdateFeed {
            cfg,
            trial,
            probation,
            outbox: VecDeque::new(),
            exit: None,
            answered: Vec::new(),
            off,
        }
    }

    /// Whether the new version still has to prove it can connect.
    pub fn on_probation(&self) -> bool {
        self.probation
    }

    pub fn take_exit(&mut self) -> Option<Exit> {
        self.exit.take()
    }

    /// `welcome` arrived.
    pub fn on_up(&mut self) {
        let Some(cfg) = &self.cfg else { return };
        if let Some(version) = &self.trial {
            let path = cfg.state_dir.join(TRIAL_OK_FILE);
            match crate::state::write_atomic(
                &path,
                crate::version::version().as_bytes(),
                0o600,
                true,
            ) {
                Ok(()) => info!("update", "trial run of {version}: connected; handing back"),
                Err(e) => error!("update", "trial run: cannot write {}: {e}", path.display()),
            }
            self.exit = Some(Exit::Shutdown);
            return;
        }
        let mut rec = Record::load(&cfg.state_dir);
        if self.probation {
            self.probation = false;
            if let Some(p) = rec.pending.take() {
                info!("update", "version {} is connected and healthy", p.version);
                rec.add_report(UpdateStatus {
                    version: p.version.clone(),
                    state: update_state::INSTALLED.into(),
                    from_version: p.from_version.clone(),
                    reason: None,
                    at_ms: now_ms(),
                    took_ms: (p.offered_ms > 0).then(|| now_ms().saturating_sub(p.offered_ms)),
                });
            }
        }
        self.outbox.extend(rec.reports.drain(..));
        if let Err(e) = rec.store(&cfg.state_dir) {
            error!("update", "cannot write the update record: {e}");
        }
    }

    /// The server's `update` message.
    pub fn on_offer(&mut self, offer: UpdateOffer) {
        if self.trial.is_some() {
            return;
        }
        let verdict = match (&self.cfg, &self.off) {
            (Some(cfg), _) => cfg.verdict(&offer.version, &Record::load(&cfg.state_dir)),
            (None, Some(why)) if offer.version != crate::version::version() => {
                Verdict::Refuse(format!("self-update is off on this host: {why}"))
            }
            (None, _) => return,
        };
        match verdict {
            Verdict::Current => {}
            Verdict::Later(why) => {
                if !self.answered.contains(&offer.version) {
                    info!("update", "not installing {} now: {why}", offer.version);
                    self.answered.push(offer.version);
                }
            }
            Verdict::Refuse(why) => {
                if self.answered.contains(&offer.version) {
                    return;
                }
                warn!("update", "not installing {}: {why}", offer.version);
                self.answered.push(offer.version.clone());
                self.outbox.push_back(UpdateStatus {
                    version: offer.version,
                    state: update_state::REJECTED.into(),
                    from_version: crate::version::version().to_owned(),
                    reason: Some(why),
                    at_ms: now_ms(),
                    took_ms: None,
                });
            }
            Verdict::Install { upgrade } => {
                info!(
                    "update",
                    "the server wants {} ({}); closing the connection to install it",
                    offer.version,
                    if upgrade {
                        "upgrade"
                    } else {
                        "downgrade, allowed here"
                    }
                );
                self.exit = Some(Exit::Update(offer));
            }
        }
    }

    pub fn next_message(&mut self) -> Option<Outgoing> {
        self.outbox
            .pop_front()
            .map(|s| Outgoing::Control(Box::new(Control::UpdateStatus(s))))
    }
}
