//! Desired versions of single runners, and what an update rollout needs
//! of `updates/` (the [`Offers`] seam).
//!
//! ```text
//!  PUT /runners/{id}/desired-version, POST /desired-version (by selector),
//!  an update rollout's start of a runner ─▶ runner_versions (db::FleetStore)
//!  updates::desired_version: the runner's own ─▶ else its group's policy ─▶ else the tenant's
//! ```
//!
//! A runner's own desired version wins over its update policy (group,
//! canary share): [`desired_of`] is that rule, for one runner
//! (`updates::desired_version`) and for the runners list's `update=`
//! filter ([`UpdateStates`]: none, current, pending, failed). `updates/` reads it through [`own`]; the fleet reaches
//! the updater only through [`Offers`], which `updates/` implements and
//! `app/` hands in, so the fleet never imports `updates/`.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::common::error::ApiError;
use crate::db::control::RunnerRow;
use crate::db::updates::UpdateReportRow;
use crate::db::UpdatePolicy;
use crate::fleet::labels::LabelsCtx;
use crate::fleet::selector::Labels;

/// What an update rollout asks of the updates feature.
#[async_trait]
pub trait Offers: Send + Sync {
    /// Refuse a version this server has no release of.
    async fn check_release(&self, version: &str) -> Result<(), ApiError>;
    /// Tell the runner, if it is connected, the version it should run now
    /// (after its desired version changed).
    async fn offer(&self, tenant: &str, runner: &str) -> Result<(), ApiError>;
}

/// The runner's own desired version, if it has one.
pub async fn own(
    state: &LabelsCtx,
    tenant: &str,
    runner: &str,
) -> Result<Option<String>, ApiError> {
    Ok(state.store.desired_version(tenant, runner).await?)
}

/// Which of 100 buckets a runner falls in (FNV-1a of its id): stable, so a
/// canary share of 10 always means the same runners.
pub fn bucket(runner_id: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in runner_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % 100) as u8
}

/// Whether a canary share of `canary_percent` selects this runner.
pub fn selected(runner_id: &str, canary_percent: u8) -> bool {
    bucket(runner_id) < canary_percent
}

/// The version a runner should run: its own, else its group's policy
/// (else the tenant's) if the policy's canary share selects it.
pub fn desired_of(
    runner_id: &str,
    own: Option<&str>,
    group: &str,
    policies: &[UpdatePolicy],
) -> Option<String> {
    if let Some(v) = own {
        return Some(v.to_owned());
    }
    let p = policies
        .iter()
        .find(|p| !group.is_empty() && p.group == group)
        .or_else(|| policies.iter().find(|p| p.group.is_empty()))?;
    selected(runner_id, p.canary_percent).then(|| p.version.clone())
}

/// The update states the runners list filters by.
pub const UPDATE_STATES: [&str; 4] = ["none", "current", "pending", "failed"];

/// What the update state of each runner of a tenant is made of, read at
/// once (three queries, whatever the number of runners).
pub struct UpdateStates {
    own: HashMap<String, String>,
    policies: Vec<UpdatePolicy>,
    /// Each runner's newest report.
    latest: HashMap<String, UpdateReportRow>,
}

impl UpdateStates {
    pub async fn read(state: &LabelsCtx, tenant: &str) -> Result<UpdateStates, ApiError> {
        Ok(UpdateStates {
            own: state.store.desired_versions(tenant).await?,
            policies: state.db.updates.update_policies(tenant).await?,
            latest: state.db.updates.latest_update_reports(tenant).await?,
        })
    }

    /// `none` (no desired version), `current` (runs it), `failed` (its
    /// newest report says the desired version failed, was rejected or
    /// interrupted), else `pending`. The group is the `group` label (kept
    /// equal to the update group, `labels.rs`).
    pub fn of(&self, r: &RunnerRow, labels: &Labels) -> &'static str {
        use tether::protocol::update_state::{FAILED, INTERRUPTED, REJECTED};
        let group = labels
            .get(crate::fleet::labels::GROUP)
            .map_or("", String::as_str);
        let own = self.own.get(&r.id).map(String::as_str);
        let Some(desired) = desired_of(&r.id, own, group, &self.policies) else {
            return "none";
        };
        if r.version == desired {
            return "current";
        }
        match self.latest.get(&r.id) {
            Some(rep)
                if rep.status.version == desired
                    && matches!(rep.status.state.as_str(), FAILED | REJECTED | INTERRUPTED) =>
            {
                "failed"
            }
            _ => "pending",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(group: &str, version: &str, canary: u8) -> UpdatePolicy {
        UpdatePolicy {
            group: group.into(),
            version: version.into(),
            canary_percent: canary,
            updated_at: 0,
        }
    }

    #[test]
    fn a_runners_own_version_wins_then_its_group_then_the_tenant() {
        let ps = [policy("", "1.0.0", 100), policy("edge", "1.1.0", 100)];
        assert_eq!(
            desired_of("rn_a", Some("2.0.0"), "edge", &ps).as_deref(),
            Some("2.0.0")
        );
        assert_eq!(
            desired_of("rn_a", None, "edge", &ps).as_deref(),
            Some("1.1.0")
        );
        assert_eq!(
            desired_of("rn_a", None, "other", &ps).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(desired_of("rn_a", None, "", &[]), None);
        // A canary share of 0 selects nobody; the own version still counts.
        let none = [policy("", "1.0.0", 0)];
        assert_eq!(desired_of("rn_a", None, "", &none), None);
        assert_eq!(
            desired_of("rn_a", Some("1.0.0"), "", &none).as_deref(),
            Some("1.0.0")
        );
    }
}
