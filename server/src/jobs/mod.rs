//! Jobs between the API and the runner connections: the live fan-out of
//! output and status to watchers ([`JobHub`]), the `job_start` a stored job
//! becomes (with its secrets opened), and the per-connection bookkeeping
//! of job channels ([`JobChannels`]; `link.rs` drives them on the runner
//! connection, as the jobs family of `link/dispatch.rs`).
//!
//! ```text
//!  API: POST /jobs ─▶ job_store (pending) ─▶ registry nudge (Jobs) ─▶ link.rs: job_start (secrets opened here)
//!  runner: job_accepted ─▶ queued/running;  DATA ─▶ batch ─▶ job_store.store_output ─▶ ACK
//!                                                         └─▶ JobHub ─▶ watchers
//!          job_result ─▶ job_store.record_result (once) ─▶ job_result_ack ─▶ JobHub
//!  reconnect: welcome.acks = stored_bytes of each job whose output is still coming
//! ```

pub mod api;
pub mod link;
pub mod rules;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct JobsCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub secrets: Arc<SecretBox>,
    /// Per-tenant limits (`common/quotas.rs`).
    pub quotas: Quotas,
    /// Live job output and status, for watchers.
    pub job_hub: Arc<JobHub>,
    /// Selectors and deadlines: what a run asks of the fleet.
    pub fleet: Arc<dyn RunnerSets>,
    /// Jobs made or cancelled, for the event stream (`common/bus.rs`).
    pub bus: Arc<crate::common::bus::Bus>,
}

/// What a run asks of the fleet, named here so that jobs never import
/// `fleet/` (which makes its rollouts from jobs): `fleet/labels.rs`
/// implements it, `app/ctx.rs` hands it over. A run may name its runners
/// by a label selector, and a job may wait for an offline runner until a
/// deadline (`fleet/deadlines.rs` expires it).
#[async_trait::async_trait]
pub trait RunnerSets: Send + Sync {
    /// The ids of `tenant`'s runners (not revoked) that `selector` names,
    /// by name; a selector that does not parse is a 400.
    async fn select(&self, tenant: &str, selector: &str) -> Result<Vec<String>, ApiError>;
    /// How long a new job may wait for its runner, in ms: `asked_s` (0: no
    /// deadline; too long: a 400) or else the tenant's fleet policy.
    async fn deadline_ms(
        &self,
        tenant: &str,
        asked_s: Option<u64>,
    ) -> Result<Option<i64>, ApiError>;
    /// Record the deadline of jobs just made (`(job id, runner id)` each).
    async fn add_deadlines(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        at_ms: i64,
    ) -> Result<(), ApiError>;
}

/// Saved scripts, sealed secrets, jobs and their output.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    JobsCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route("/api/v1/scripts", get(api::list_scripts))
        .route(
            "/api/v1/scripts/{name}",
            get(api::get_script)
                .put(api::put_script)
                .delete(api::delete_script),
        )
        .route("/api/v1/secrets", get(api::list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            put(api::put_secret).delete(api::delete_secret),
        )
        .route("/api/v1/jobs", get(api::list_jobs).post(api::run))
        .route("/api/v1/jobs/{id}", get(api::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/api/v1/jobs/{id}/output", get(api::output))
}

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tether::protocol::{encode_control_checked, JobStart, Message, TooLarge, JOB_RECORD_HEADER};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::common::error::ApiError;
use crate::common::quotas::Quotas;
use crate::db::jobs::{JobRow, JobSpec, JobStore, OutputRow};
use crate::db::Db;
use crate::link::registry::Registry;

/// Job output is stored (and ACKed) once this much waits, so the runner's
/// window (its memory cap, 2 MiB) keeps a batch arriving while one is
/// being committed (`link.rs`).
const FLUSH_BYTES: usize = 512 * 1024;
/// ...or once the oldest waiting output is this old (as logs: `logs/mod.rs`).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
use crate::common::secrets::SecretBox;

/// Updates a slow watcher may fall behind by before it re-reads storage.
const HUB_BACKLOG: usize = 4096;

/// One thing that happened to a job.
#[derive(Debug, Clone)]
pub enum JobUpdate {
    Output {
        seq: i64,
        row: OutputRow,
    },
    /// Its status changed, or more of its output is stored (read it from
    /// storage).
    Status {
        seq: i64,
    },
}

impl JobUpdate {
    pub fn seq(&self) -> i64 {
        match self {
            JobUpdate::Output { seq, .. } | JobUpdate::Status { seq } => *seq,
        }
    }
}

pub struct JobHub {
    tx: broadcast::Sender<Arc<JobUpdate>>,
}

impl Default for JobHub {
    fn default() -> Self {
        JobHub {
            tx: broadcast::channel(HUB_BACKLOG).0,
        }
    }
}

impl JobHub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobUpdate>> {
        self.tx.subscribe()
    }

    pub fn send(&self, u: JobUpdate) {
        // Nobody watching is fine.
        let _ = self.tx.send(Arc::new(u));
    }
}

/// The `job_start` of a stored job, its secrets opened. `Err` says why it
/// cannot run (a secret was deleted, or does not open with this key).
pub async fn start_message(
    job: &JobRow,
    store: &dyn JobStore,
    secrets: &SecretBox,
) -> Result<JobStart, String> {
    let mut values = Vec::new();
    for name in &job.spec.secrets {
        let sealed = store
            .secret(&job.tenant_id, name)
            .await
            .map_err(|e| format!("reading secret {name}: {e}"))?
            .ok_or_else(|| format!("secret {name} does not exist"))?;
        let plain = secrets
            .open(&job.tenant_id, name, &sealed.0, &sealed.1)
            .map_err(|e| format!("secret {name}: {e}"))?;
        let value = String::from_utf8(plain).map_err(|_| format!("secret {name} is not UTF-8"))?;
        values.push((name.clone(), value));
    }
    Ok(JobStart {
        job_id: job.id.clone(),
        channel: u32::try_from(job.seq).map_err(|_| "job sequence out of range".to_owned())?,
        program: job.spec.program.clone(),
        args: job.spec.args.clone(),
        script: job.spec.script.clone(),
        env: job.spec.env.clone(),
        secrets: values,
        timeout_s: job.spec.timeout_s,
        deploy: job.spec.deploy.clone().map(Box::new),
        // Each runner's own: the runner id is in what was signed.
        signed: job.spec.signed.get(&job.runner_id).cloned(),
    })
}

/// Why a job cannot be sent as it stands.
#[derive(Debug)]
pub enum Unfit {
    /// Its `job_start` would be larger than a runner takes.
    TooLarge(TooLarge),
    /// A secret cannot be opened (deleted, wrong key, not UTF-8).
    Secret(String),
}

/// Check, before a job is made, that its `job_start` fits in one message
/// to the runner ([`tether::protocol::MAX_CONTROL_MESSAGE`]): built as it
/// will be sent, secrets opened, with the longest job id, channel and
/// request id, so a job accepted here is never refused for its size.
/// (Secrets changed later are caught again when it is sent.)
pub async fn check_fits(
    tenant: &str,
    spec: &JobSpec,
    store: &dyn JobStore,
    secrets: &SecretBox,
) -> Result<(), Unfit> {
    let row = JobRow {
        seq: i64::from(u32::MAX),
        // The shape of `jobs_api::new_job_id`.
        id: format!("jb_{}", "f".repeat(16)),
        tenant_id: tenant.to_owned(),
        runner_id: String::new(),
        label: String::new(),
        status: "pending".into(),
        exit_code: None,
        signal: None,
        reason: String::new(),
        created_ms: 0,
        started_ms: None,
        finished_ms: None,
        stored_bytes: 0,
        output_bytes: None,
        output_pruned: false,
        cancel_requested: false,
        spec: spec.clone(),
    };
    let start = start_message(&row, store, secrets)
        .await
        .map_err(Unfit::Secret)?;
    encode_control_checked(u64::MAX, Message::JobStart(start)).map_err(Unfit::TooLarge)?;
    Ok(())
}

/// One job channel of a connection.
struct Channel {
    seq: i64,
    /// The next offset expected.
    next: u64,
    /// Output bytes kept so far (after a reconnect: the stored end, which
    /// counts record headers too, so the cap errs on the safe side).
    kept: u64,
    /// Past the cap: the rest is acknowledged, not stored.
    cut: bool,
}

/// Job channels of one runner connection.
pub struct JobChannels {
    known: HashMap<u32, Channel>,
    /// Output bytes stored per job (`common/quotas.rs`).
    output_cap: u64,
    /// Channels that are not this runner's jobs (ignored, logged once).
    strangers: HashSet<u32>,
    /// `job_start`s sent on this connection: request id → job id.
    pub requests: HashMap<u64, String>,
    pub started: HashSet<String>,
    pub cancels: HashSet<String>,
    batch: Vec<(i64, OutputRow)>,
    batch_bytes: usize,
    batch_since: Option<Instant>,
}

/// What a DATA frame on a job channel was.
pub enum Frame {
    /// Queued for storing; the row, for live watchers.
    Queued(i64, OutputRow),
    /// Already stored (a resend); nothing to do.
    Duplicate,
    /// Past the job's output cap: queued only to move the stored end.
    Dropped,
    /// Not a job of this runner.
    Stranger,
}

/// The line that marks where a job's output was cut.
pub fn truncation_note(cap: u64) -> String {
    format!("\n[tether] output truncated at {cap} bytes (server limit --job-output-max-bytes)\n")
}

impl JobChannels {
    /// Output past `output_cap` bytes per job is dropped (and marked).
    pub fn new(output_cap: u64) -> JobChannels {
        JobChannels {
            known: HashMap::new(),
            output_cap,
            strangers: HashSet::new(),
            requests: HashMap::new(),
            started: HashSet::new(),
            cancels: HashSet::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            batch_since: None,
        }
    }

    /// Learn a channel (from storage) the first time it is seen.
    pub fn learn(&mut self, channel: u32, seq: i64, stored: i64) {
        let stored = stored.max(0) as u64;
        let cap = self.output_cap;
        self.known.entry(channel).or_insert(Channel {
            seq,
            next: stored,
            kept: stored,
            cut: stored > cap,
        });
    }

    pub fn is_known(&self, channel: u32) -> bool {
        self.known.contains_key(&channel)
    }

    pub fn stranger(&mut self, channel: u32) -> bool {
        self.strangers.insert(channel)
    }

    /// A DATA frame at `offset`. Offsets below what is stored are a resend
    /// and dropped; a frame past it (the server lost data, e.g. a restored
    /// backup) is kept, and the gap is logged.
    pub fn on_data(
        &mut self,
        channel: u32,
        offset: u64,
        tag: u8,
        payload: &[u8],
        now: Instant,
    ) -> Result<Frame, String> {
        let Some(ch) = self.known.get_mut(&channel) else {
            return Ok(Frame::Stranger);
        };
        let (seq, next) = (&mut ch.seq, &mut ch.next);
        if payload.len() < JOB_RECORD_HEADER {
            return Err(format!(
                "job channel {channel}: a {}-byte record is shorter than its header",
                payload.len()
            ));
        }
        let end = offset + payload.len() as u64;
        if end <= *next {
            return Ok(Frame::Duplicate);
        }
        if offset != *next {
            if offset < *next {
                return Err(format!(
                    "job channel {channel}: a record at {offset} overlaps what is stored (up to {next})"
                ));
            }
            tracing::warn!(
                channel,
                offset,
                expected = *next,
                "job output has a gap (output before it was lost)"
            );
        }
        *next = end;
        let seq = *seq;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&payload[..8]);
        let data = &payload[JOB_RECORD_HEADER..];
        // Past the cap: the first frame over it becomes the note, the
        // rest rows without data (they only move the stored end).
        let data = if ch.cut {
            Vec::new()
        } else if ch.kept.saturating_add(data.len() as u64) > self.output_cap {
            ch.cut = true;
            tracing::info!(
                channel,
                cap = self.output_cap,
                "job output reached its cap: the rest is not stored"
            );
            truncation_note(self.output_cap).into_bytes()
        } else {
            ch.kept += data.len() as u64;
            data.to_vec()
        };
        let row = OutputRow {
            offset: offset as i64,
            tag,
            ts_ms: i64::try_from(u64::from_be_bytes(ts)).unwrap_or(0),
            step: payload[8],
            data,
            end: end as i64,
        };
        self.batch_bytes += JOB_RECORD_HEADER + row.data.len();
        self.batch_since.get_or_insert(now);
        if !row.is_stored() {
            self.batch.push((seq, row));
            return Ok(Frame::Dropped);
        }
        self.batch.push((seq, row.clone()));
        Ok(Frame::Queued(seq, row))
    }

    pub fn due(&self) -> Option<Instant> {
        self.batch_since.map(|t| t + FLUSH_EVERY)
    }

    pub fn flush_due(&self, now: Instant) -> bool {
        self.batch_bytes >= FLUSH_BYTES || self.batch_since.is_some_and(|t| now >= t + FLUSH_EVERY)
    }

    pub fn take_batch(&mut self) -> Vec<(i64, OutputRow)> {
        self.batch_bytes = 0;
        self.batch_since = None;
        std::mem::take(&mut self.batch)
    }

    /// Storing failed: expect those offsets again (the runner resends them
    /// after the next reconnect, from the stored end).
    pub fn unstored(&mut self, batch: &[(i64, OutputRow)]) {
        for (seq, row) in batch {
            for ch in self.known.values_mut() {
                if ch.seq == *seq {
                    ch.next = ch.next.min(row.offset as u64);
                }
            }
        }
    }

    /// The channel of a job seq.
    pub fn channel_of(&self, seq: i64) -> Option<u32> {
        self.known
            .iter()
            .find(|(_, v)| v.seq == seq)
            .map(|(c, _)| *c)
    }
}
