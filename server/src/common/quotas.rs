//! Per-tenant limits on what tenants share (terminal sessions, concurrent
//! jobs, job output and `jobs.db`), and the retention pass that keeps
//! `jobs.db` within them.
//!
//! ```text
//!  limit                          checked where                         over it
//!  terminals open per tenant      Terminals::create (before the runner   429 quota_exceeded
//!                                 is asked: an opening one counts)
//!  jobs not final per tenant      JobStore::create_jobs (one write lock  429 quota_exceeded
//!                                 with the count: no race)
//!  output bytes per job           JobChannels::on_data                   the rest is ACKed, not stored;
//!                                                                        a `[tether] output truncated` line
//!  job output age, per-tenant     retention pass (every minute)         oldest finished jobs' output deleted;
//!  output bytes                                                          jobs past the age deleted (deploys
//!                                                                        keep their row: rollback needs it)
//!  terminal recording age         the same pass                         recordings started before it deleted
//!  (per-session bytes: the tenant's recording policy, `terminals/recorder.rs`)
//! ```
//!
//! The server-wide terminal cap (`terminals::MAX_SESSIONS`) stays as the
//! last bound; these make sure one tenant reaches it only with its own
//! share.

use std::time::Duration;

use axum::http::StatusCode;

use crate::common::error::ApiError;
use crate::db::Db;

/// Every limit, from `serve` flags (`app/config.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Terminal sessions open (or opening) per tenant.
    pub terminals_per_tenant: usize,
    /// Jobs (and deploys) pending, queued or running per tenant.
    pub active_jobs_per_tenant: usize,
    /// Output bytes stored per job; the rest is dropped and marked.
    pub job_output_bytes: u64,
    /// Finished jobs' output (and non-deploy jobs) older than this go.
    pub job_retention: Duration,
    /// Stored job output per tenant; the oldest finished jobs' output goes first.
    pub job_bytes_per_tenant: u64,
    /// Terminal recordings started longer ago than this go.
    pub recording_retention: Duration,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            terminals_per_tenant: 64,
            active_jobs_per_tenant: 256,
            job_output_bytes: 64 * 1024 * 1024,
            job_retention: Duration::from_secs(30 * 24 * 3600),
            job_bytes_per_tenant: 1024 * 1024 * 1024,
            recording_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The answer to a request over a tenant's limit: `429 quota_exceeded`,
/// naming the limit and the flag that sets it.
pub fn exceeded(what: &str, limit: u64, flag: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!("this tenant has reached its limit of {limit} {what} (server flag {flag})"),
    )
}

/// How often the retention pass runs at most: once a minute.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// How often the retention pass runs: once a minute, or a tenth of the
/// shortest retention when that is shorter, so a one-minute retention is
/// held to within about 6 s instead of up to a minute late.
fn retention_every(q: &Quotas) -> Duration {
    (q.job_retention.min(q.recording_retention) / 10).clamp(Duration::from_secs(1), RETENTION_EVERY)
}

/// Apply job retention now and then, forever (the caller aborts it).
pub async fn retain_jobs(db: Db, quotas: Quotas) {
    let mut tick = tokio::time::interval(retention_every(&quotas));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let q = quotas;
        let now = crate::common::clock::now_ms();
        let age_ms = i64::try_from(q.job_retention.as_millis()).unwrap_or(i64::MAX);
        let pass = db
            .jobs
            .retain(now.saturating_sub(age_ms), q.job_bytes_per_tenant)
            .await;
        match pass {
            Ok(stats) => {
                failing = false;
                if stats.jobs_deleted + stats.outputs_deleted > 0 {
                    tracing::info!(?stats, "job retention");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("job retention: {e}");
                    failing = true;
                }
            }
        }
        let age_ms = i64::try_from(q.recording_retention.as_millis()).unwrap_or(i64::MAX);
        match db.recordings.prune(now.saturating_sub(age_ms)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("recording retention removed {n} terminal recording(s)"),
            Err(e) => tracing::warn!("recording retention: {e}"),
        }
    }
}
