//! Fleet operations: naming sets of runners by label selectors, jobs that
//! wait for offline runners up to a deadline, running work on a selector
//! in waves that halt on failure, and schedules.
//!
//! ```text
//! selector.rs  label syntax, selectors parsed once into a matcher (pure)
//! cron.rs      cron expressions, next occurrences, jitter, missed runs (pure)
//! waves.rs     the wave planner, a state machine (pure)
//! labels.rs    labels of runners: set, proposed, accepted; selector → runners
//! deadlines.rs pending jobs expire at their deadline
//! rollout.rs   rollouts: a job or an update per runner of a selector, in waves, driven
//!              from the store by one task (once-only: it moves with the lease)
//! schedule.rs  schedules: the scheduler task, each occurrence claimed once through the store
//! versions.rs  a runner's own desired version; the updater an update rollout asks (Offers)
//! api.rs       REST: labels, fleet policy, rollouts, schedules
//! ```
//!
//! It stands on `jobs/` (a fleet job is an ordinary job, made through
//! `jobs::api`) and `db/` (runners, groups; its own tables behind
//! `db::FleetStore`). The other way, a run's selector
//! and a job's deadline, goes through `jobs::RunnerSets`, implemented in
//! `labels.rs`: jobs never import the fleet.

pub mod api;
pub mod cron;
pub mod deadlines;
pub mod labels;
pub mod link;
pub mod rollout;
pub mod schedule;
pub mod selector;
pub mod versions;
pub mod waves;

use std::sync::Arc;

use crate::db::{Db, FleetStore};
use crate::link::registry::Registry;

/// The fleet's own state: its store, and the wake-up of this process's
/// rollout driver (when it is the one).
pub struct Fleet {
    pub store: Arc<dyn FleetStore>,
    pub rollouts: rollout::Rollouts,
}

impl Fleet {
    pub fn new(store: Arc<dyn FleetStore>) -> Fleet {
        Fleet {
            store,
            rollouts: rollout::Rollouts::default(),
        }
    }
}

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct FleetCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub job_hub: Arc<crate::jobs::JobHub>,
    /// Labels, job deadlines, rollouts.
    pub fleet: Arc<Fleet>,
    /// Labels and selectors, as other features reach them.
    pub labels: labels::LabelsCtx,
    /// A rollout is jobs (the seam to `jobs/`).
    pub jobs: crate::jobs::JobsCtx,
    /// On a replica of several: the links table, where a runner linked to
    /// another replica is found (a job waiting for it does not expire).
    pub links: Option<Arc<dyn crate::db::cluster::ClusterStore>>,
    /// An update rollout offers versions through `updates/` (given by `app/`).
    pub offers: Arc<dyn versions::Offers>,
}

/// The fleet's background tasks that run on every replica: the scheduler
/// (each occurrence is claimed once through the store, so two schedulers
/// never both run one). The caller aborts them at shutdown.
pub fn spawn(state: &FleetCtx) -> Vec<tokio::task::JoinHandle<()>> {
    vec![tokio::spawn(schedule::run(state.clone()))]
}

/// The ones that run on one replica at a time (`app/serve.rs` starts them
/// under the once-only lease): job deadlines and the rollout driver.
/// Expiring is a conditional update (a second replica's would change
/// nothing), but one replica scanning every 500 ms is enough, and it asks
/// the links table, not only its own connections, whether the runner is
/// linked. Rollouts are driven from the store (`rollout.rs`), so the next
/// holder goes on where the last one was.
pub fn spawn_once_only(state: &FleetCtx) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(deadlines::run(state.clone())),
        tokio::spawn(rollout::run(state.clone())),
    ]
}
