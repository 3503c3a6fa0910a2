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
//!  SIGUSR1 ──▶ stop the loop with Exit::UpdateFromFile (`tether update --file`)
//!  health deadline, still on probation ──▶ end the loop at once: Exit::Unhealthy
//! ```
//!
//! A feature of the runner like any other (`link::Feature`, `reactor::Source`):
//! its whole wiring is its line in `runner.rs`'s feature list.

use super::record::{Record, TRIAL_OK_FILE};
use super::{now_ms, UpdateConfig, Verdict};
use crate::link::{Exit, Family, Feature, LinkEvent, Outgoing};
use crate::protocol::{update_state, Message as Control, UpdateOffer, UpdateStatus};
use crate::reactor::{Ctx, SignalSet, Source, TimerId, TimerKind};
use crate::{error, info, warn};
use mio::Token;
use std::collections::VecDeque;
use std::time::Duration;

/// Versions remembered as answered, newest last. Past this the oldest is
/// forgotten: a server offering ever new versions gets one more report for
/// a forgotten one now and then, never a runner that grows without bound.
const MAX_ANSWERED: usize = 32;
/// Bytes of a version kept for the comparison (real ones are far shorter;
/// a server's junk may not be).
const MAX_VERSION_KEPT: usize = 64;

/// The versions this process has answered already, bounded in count and
/// in the length of each.
#[derive(Debug, Default)]
struct Answered(VecDeque<String>);

impl Answered {
    /// Remember `version`; false if it was remembered already.
    fn insert(&mut self, version: &str) -> bool {
        let mut end = version.len().min(MAX_VERSION_KEPT);
        while !version.is_char_boundary(end) {
            end -= 1;
        }
        let key = &version[..end];
        if self.0.iter().any(|v| v == key) {
            return false;
        }
        if self.0.len() >= MAX_ANSWERED {
            self.0.pop_front();
        }
        self.0.push_back(key.to_owned());
        true
    }
}

pub struct UpdateFeed {
    cfg: Option<UpdateConfig>,
    /// This process is a trial run of this version.
    trial: Option<String>,
    /// On probation: must connect before the loop's health deadline.
    probation: bool,
    /// How long a version on probation has to connect.
    health_deadline: Option<Duration>,
    /// The health deadline passed (ends the loop if still on probation).
    deadline_passed: bool,
    outbox: VecDeque<UpdateStatus>,
    exit: Option<Exit>,
    /// Versions already answered by this process (no report storm).
    answered: Answered,
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
        health_deadline: Option<Duration>,
    ) -> UpdateFeed {
        UpdateFeed {
            cfg,
            trial,
            probation: health_deadline.is_some(),
            health_deadline,
            deadline_passed: false,
            outbox: VecDeque::new(),
            exit: None,
            answered: Answered::default(),
            off,
        }
    }

    /// Whether the new version still has to prove it can connect.
    pub fn on_probation(&self) -> bool {
        self.probation
    }

    /// The exit asked for; `Unhealthy` once the health deadline passed
    /// with this version still on probation.
    pub fn take_exit(&mut self) -> Option<Exit> {
        if self.deadline_passed && self.probation {
            return Some(Exit::Unhealthy);
        }
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
                if self.answered.insert(&offer.version) {
                    info!("update", "not installing {} now: {why}", offer.version);
                }
            }
            Verdict::Refuse(why) => {
                if !self.answered.insert(&offer.version) {
                    return;
                }
                warn!("update", "not installing {}: {why}", offer.version);
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

/// The update's one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateTimer {
    /// A new version on probation must have connected by now.
    Health,
}

impl TimerKind for UpdateTimer {
    const ALL: &'static [UpdateTimer] = &[UpdateTimer::Health];
}

impl Source for UpdateFeed {
    /// No sockets of its own.
    fn ready(&mut self, _ctx: &mut Ctx<'_>, _token: Token) {}

    fn timer(&mut self, _ctx: &mut Ctx<'_>, _id: TimerId, kind: u8) {
        if UpdateTimer::from_code(kind) == Some(UpdateTimer::Health) {
            self.deadline_passed = true;
        }
    }

    /// SIGUSR1: `tether update --file` left a release in the state dir. A
    /// trial run or a host with self-update off ignores it, and SIGTERM or
    /// SIGINT in the same drain wins.
    fn signals(&mut self, _ctx: &mut Ctx<'_>, set: SignalSet) {
        let stop = set.contains(libc::SIGTERM) || set.contains(libc::SIGINT);
        if set.contains(libc::SIGUSR1) && !stop && self.cfg.is_some() && self.trial.is_none() {
            info!(
                "main",
                "received SIGUSR1: installing the release in the state dir"
            );
            self.exit = Some(Exit::UpdateFromFile);
        }
    }
}

impl Feature for UpdateFeed {
    fn families(&self) -> &'static [Family] {
        &[Family::Update]
    }

    /// A new version on probation must connect by its deadline (mod.rs).
    fn start(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(after) = self.health_deadline {
            ctx.schedule(after, UpdateTimer::Health);
        }
    }

    fn on_link(&mut self, _ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::Up { .. } => self.on_up(),
            LinkEvent::Message { body, .. } => {
                if let Control::Update(offer) = *body {
                    self.on_offer(offer);
                }
            }
            _ => {}
        }
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        UpdateFeed::next_message(self)
    }

    fn take_exit(&mut self) -> Option<Exit> {
        UpdateFeed::take_exit(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_offers_are_bounded_in_count_and_length() {
        let mut a = Answered::default();
        for i in 0..10_000 {
            assert!(a.insert(&format!("1.0.{i}")));
        }
        assert_eq!(a.0.len(), MAX_ANSWERED);
        // The newest are still known; the oldest were forgotten.
        assert!(!a.insert("1.0.9999"));
        assert!(a.insert("1.0.0"));
        let junk = "9".repeat(300 * 1024);
        assert!(a.insert(&junk));
        assert!(!a.insert(&junk), "a long one is still recognised");
        assert!(a.0.iter().all(|v| v.len() <= MAX_VERSION_KEPT));
        // Cut on a character boundary.
        assert!(a.insert(&"é".repeat(100)));
    }

    fn offer(version: &str) -> UpdateOffer {
        UpdateOffer {
            version: version.into(),
            binary: "/releases/x/tether-x86_64".into(),
            signature: "/releases/x/tether-x86_64.minisig".into(),
        }
    }

    #[test]
    fn an_offer_storm_of_new_versions_keeps_the_feed_bounded() {
        let mut feed = UpdateFeed::new(None, None, Some("TETHER_UPDATE=off".into()), None);
        for i in 0..5_000 {
            feed.on_offer(offer(&format!("9.9.{i}")));
            // The link sends the report; the feed keeps nothing more.
            while feed.next_message().is_some() {}
        }
        assert_eq!(feed.answered.0.len(), MAX_ANSWERED);
        // An offer repeated is not answered twice.
        feed.on_offer(offer("9.9.4999"));
        assert!(feed.next_message().is_none());
    }
}
