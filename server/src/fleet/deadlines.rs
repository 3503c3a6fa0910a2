//! Jobs that wait for offline runners, up to a deadline.
//!
//! A job for a runner that is not connected stays `pending` (stored, sent
//! when the runner connects, in creation order: `jobs/link.rs`).
//! With a deadline (the request's `deadline_s`, else the tenant's policy)
//! it ends `expired` instead, with the reason, if the runner has not taken
//! it by then:
//!
//! ```text
//!  pending ──runner connects, accepts──▶ queued/running ─▶ …   (deadline dropped)
//!     └──deadline passes, runner not connected──▶ expired ("runner … did not connect within 60s")
//! ```
//!
//! A runner connected at the deadline has been sent the job already; it is
//! left to finish (its acceptance is on the way), and looked at again on
//! the next tick. On a replica of several, "connected" is the links table's
//! answer (the runner may be linked to another replica, which sent the
//! job), and this runs on the replica holding the once-only lease
//! (`fleet::spawn_once_only`).

use std::time::Duration;

use crate::common::clock;
use crate::fleet::FleetCtx;
use crate::jobs::JobUpdate;

/// How often deadlines are checked: a job expires at most this late.
pub const TICK: Duration = Duration::from_millis(500);
/// Deadlines handled per tick.
const BATCH: usize = 500;
/// Longest deadline a request may ask for.
pub const MAX_DEADLINE_S: u64 = 30 * 86_400;

/// Expire what is due, forever (a task of `app/serve.rs`).
pub async fn run(state: FleetCtx) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = expire_due(&state, clock::now_ms()).await {
            tracing::error!("expiring jobs: {e}");
        }
    }
}

/// One pass; returns how many jobs expired.
pub async fn expire_due(state: &FleetCtx, now: i64) -> Result<usize, crate::db::StorageError> {
    let mut expired = 0;
    for (job_id, tenant, runner, expires_ms) in state.fleet.store.due_deadlines(now, BATCH).await? {
        let Some(job) = state.db.jobs.job(&tenant, &job_id).await? else {
            state.fleet.store.drop_deadline(&job_id).await?;
            continue;
        };
        if job.status != "pending" || job.cancel_requested {
            state.fleet.store.drop_deadline(&job_id).await?;
            continue;
        }
        if state.registry.live_last_seen(&tenant, &runner).is_some() {
            continue;
        }
        // Linked to another replica: it was sent the job there. A database
        // error ends the pass (nothing expires on a guess).
        if let Some(links) = &state.links {
            if links.holder_of(&runner).await?.is_some() {
                continue;
            }
        }
        let waited = (expires_ms - job.created_ms).max(0) / 1000;
        let reason =
            format!("runner {runner} did not connect within {waited}s (the job's deadline)");
        if state
            .db
            .jobs
            .finish(&job_id, "expired", &reason, now)
            .await?
        {
            tracing::info!(job = %job_id, runner = %runner, "job expired: {reason}");
            state.job_hub.send(JobUpdate::Status { seq: job.seq });
            expired += 1;
        }
        state.fleet.store.drop_deadline(&job_id).await?;
    }
    Ok(expired)
}

/// The deadline a new job gets, in ms from now: the request's, else the
/// tenant's policy, else none.
pub async fn deadline_ms(
    state: &crate::fleet::labels::LabelsCtx,
    tenant: &str,
    asked_s: Option<u64>,
) -> Result<Option<i64>, crate::common::error::ApiError> {
    let s = match asked_s {
        Some(0) => return Ok(None),
        Some(s) if s > MAX_DEADLINE_S => {
            return Err(crate::common::error::ApiError::bad_request(format!(
                "deadline_s: at most {MAX_DEADLINE_S} (0: no deadline)"
            )))
        }
        Some(s) => Some(s),
        None => state.store.policy(tenant).await?.job_deadline_s,
    };
    Ok(s.map(|s| s as i64 * 1000))
}
