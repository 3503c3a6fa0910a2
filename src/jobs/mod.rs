//! Jobs on the event loop: the server's `job_start` becomes a child process
//! whose stdout and stderr stream back as DATA frames on the job's channel,
//! loss-free across disconnects, with its result delivered at least once.
//!
//! ```text
//!  job_start ─▶ seen before? ── yes ─▶ job_accepted (queued | running | finished), nothing run
//!      │ no
//!      ├─ fewer than max running ─▶ spawn ─▶ Running ──pipes readable, channel has room──▶ read,
//!      │                                       │         redact secrets, record ─▶ OutChannel
//!      └─ else ─▶ queue (started as others end) │
//!                                              ├─ deadline / job_cancel ─▶ SIGTERM group, SIGKILL after grace
//!                                              └─ pipes at EOF + reaped ─▶ result ─▶ ledger (disk) ─▶ job_result
//!  OutChannel: memory, then spool file; sent while the window allows;
//!              ACK drops; link up resends from welcome.acks (crate::channel)
//!  job_result: sent on every link until job_result_ack (ledger.rs)
//!  runner restart: jobs that were running are killed and reported failed;
//!                  a deploy's parked old container is put back first (parked.rs)
//! ```
//!
//! Backpressure: a pipe is read only while its job's channel has room
//! (memory cap, then spool cap); a flooding child then blocks on its own
//! writes. Memory per job: the channel's memory cap plus a read buffer.
//! The host owner can switch jobs off (`--no-jobs`); every `job_start` is
//! then refused with the reason.
//!
//! A `job_start` with `deploy` runs [`deploy::Deploy`] instead of a
//! process (git child, image build, container replacement; see there):
//! the same channel, ledger, cancel, timeout and result, each record
//! tagged with its step.

pub mod deploy;
pub mod ledger;
pub mod parked;
pub mod process;
pub mod redact;
pub mod secret_files;
pub mod status;
pub mod tar;

use crate::channel::{Limits, OutChannel};
use crate::link::{Family, Feature, LinkEvent, Outgoing};
use crate::protocol::signed::{job_bytes, Signed};
use crate::protocol::{
    ChannelAck, ErrorBody, JobAccepted, JobResult, JobStart, Message as Control, SecretsLost,
    StreamTag, JOB_RECORD_HEADER, MAX_DATA_PAYLOAD,
};
use crate::reactor::{Ctx, SignalSet, Source, TimerId, TimerKind};
use crate::{debug, info, warn};
use deploy::Deploy;
use ledger::{start_ticks, Ledger, RunningEntry};
use mio::Token;
use process::{Process, Read_};
use redact::Redactor;
use status::{Accepted, JobStatus};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Jobs running at once by default; more wait in a queue.
pub const DEFAULT_MAX_JOBS: usize = 4;
/// Jobs waiting beyond the running ones; more are refused.
const MAX_QUEUED: usize = 256;
/// Bytes read from one job per readiness pass.
const MAX_READ_PER_PASS: usize = 256 * 1024;
/// Output bytes per record: a DATA frame with its record header.
const CHUNK: usize = MAX_DATA_PAYLOAD - JOB_RECORD_HEADER;
/// After the process exited, how long its pipes may stay open (a
/// background child holding them) before the job ends anyway.
const PIPE_LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTimer {
    /// The job's timeout.
    Deadline,
    /// SIGTERM was sent; SIGKILL now.
    Grace,
    /// Check exits and lingering pipes.
    Reap,
    /// A deploy's Docker call deadline or health poll.
    Deploy,
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub max_concurrent: usize,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub kill_grace: Duration,
    pub cwd: PathBuf,
    /// The engine deploy jobs talk to (`None`: deploys fail, saying so).
    pub docker_socket: Option<PathBuf>,
    /// `<run-dir>/secrets`: deployments' secrets kept in memory
    /// (`secret_files.rs`); `None`: files delivery fails, saying so.
    pub secrets_dir: Option<PathBuf>,
}

impl JobsConfig {
    pub fn new(state_dir: &Path) -> JobsConfig {
        JobsConfig {
            max_concurrent: DEFAULT_MAX_JOBS,
            state_dir: state_dir.to_owned(),
            limits: Limits {
                // Frames are sent from memory: this is also what can be in
                // flight, so it sets the relay's throughput (bench: job
                // relay; the server commits each batch to disk before its
                // ACK). Per job: 4 flooding jobs (the default limit) hold
                // 8 MiB at most.
                mem: 2 * 1024 * 1024,
                spool: 64 * 1024 * 1024,
                window: 2 * 1024 * 1024,
            },
            kill_grace: Duration::from_secs(5),
            cwd: PathBuf::from("/"),
            docker_socket: None,
            secrets_dir: None,
        }
    }

    fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }
}

/// Link-ups at which a runner tries to ask an engine that was not there.
const LOST_SECRETS_TRIES: u8 = 5;

/// Why a job is being stopped.
#[derive(Debug, Clone)]
struct Stop {
    status: JobStatus,
    reason: String,
}

/// What a job runs, as its state:
///
/// ```text
///  Unstarted ──spawned──▶ Process ──reaped, pipes closed (or lingered)──▶ Done
///      │     ──deploy───▶ Deploy  ──its outcome─────────────────────────▶ Done
///      └──(cannot spawn; the ledger cannot hold it)──────────────────────▶ Done
/// ```
///
/// `Done`: the result is recorded; the job stays until the server has
/// acknowledged all its output (`retire`).
enum Work {
    Unstarted,
    /// `linger`: after the exit, how long the pipes may stay open (or,
    /// pipes closed first, when to look for the exit again).
    Process {
        proc: Process,
        linger: Option<TimerId>,
    },
    /// The deploy's own state machine (`deploy.rs`).
    Deploy(Box<Deploy>),
    Done,
}

/// A job's own timers (a deploy's calls and health polls are its own).
#[derive(Default)]
struct Timers {
    /// The job's timeout.
    deadline: Option<TimerId>,
    /// SIGKILL after SIGTERM.
    grace: Option<TimerId>,
}

struct Job {
    start: JobStart,
    chan: OutChannel,
    work: Work,
    redact: [Redactor; 2],
    started_ms: u64,
    timers: Timers,
    stop: Option<Stop>,
}

impl Job {
    fn is_done(&self) -> bool {
        matches!(self.work, Work::Done)
    }

    fn owns(&self, token: Token) -> bool {
        match &self.work {
            Work::Process { proc, .. } => proc.pipe_of(token).is_some(),
            Work::Deploy(d) => d.owns(token),
            Work::Unstarted | Work::Done => false,
        }
    }

    /// The job's deadline, grace or linger timer (not a deploy's).
    fn owns_timer(&self, id: TimerId) -> bool {
        let linger = match &self.work {
            Work::Process { linger, .. } => *linger,
            _ => None,
        };
        [self.timers.deadline, self.timers.grace, linger].contains(&Some(id))
    }
}

pub struct Jobs {
    cfg: Option<JobsConfig>,
    ledger: Ledger,
    jobs: Vec<Job>,
    queue: VecDeque<(u64, JobStart)>,
    outbox: VecDeque<Outgoing>,
    up: bool,
    /// Round-robin start for sending frames.
    next: usize,
    /// Apps whose in-memory secrets were lost (found at start), told to
    /// the server on each link until a deploy of the app starts.
    secrets_lost: Vec<String>,
    /// Tries left to look for them (0: done, or nothing to look for).
    secrets_check: u8,
    /// The check of signed jobs and deploys (`trust/`), shared with the
    /// gate of terminals and container operations.
    verifier: crate::trust::gate::Shared,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jobs {
    /// `None`: jobs switched off on this host.
    pub fn new(cfg: Option<JobsConfig>, verifier: crate::trust::gate::Shared) -> Jobs {
        let mut ledger = Ledger::default();
        let mut secrets_check = 0;
        if let Some(c) = &cfg {
            ledger = Ledger::load(&c.state_dir.join("jobs.json"));
            // A deploy cut short mid-replacement: its old container first.
            let restored = parked::restore_all(&c.state_dir, c.docker_socket.as_deref());
            let n = ledger.recover(now_ms(), &restored);
            if n > 0 {
                warn!(
                    "jobs",
                    "{n} job(s) were running when the runner stopped; reporting them failed"
                );
                if let Err(e) = ledger.save() {
                    warn!("jobs", "cannot write the job ledger: {e}");
                }
            }
            // Spool files never outlive the process that wrote them.
            let _ = std::fs::remove_dir_all(c.spool_dir());
            // Only a host that ever kept secrets in memory asks the engine.
            if c.docker_socket.is_some() && secret_files::ever_used(&c.state_dir) {
                secrets_check = LOST_SECRETS_TRIES;
            }
        }
        let mut jobs = Jobs {
            verifier,
            cfg,
            ledger,
            jobs: Vec::new(),
            queue: VecDeque::new(),
            outbox: VecDeque::new(),
            up: false,
            next: 0,
            secrets_lost: Vec::new(),
            secrets_check,
        };
        jobs.check_lost_secrets();
        jobs
    }

    /// Look for containers whose in-memory secrets are gone
    /// (`secret_files::lost_apps`). Tried at start and again at each link
    /// up while the engine could not be asked (at boot it may come up
    /// after the runner), a few times at most.
    fn check_lost_secrets(&mut self) {
        if self.secrets_check == 0 {
            return;
        }
        let Some(socket) = self.cfg.as_ref().and_then(|c| c.docker_socket.clone()) else {
            return;
        };
        self.secrets_check -= 1;
        match secret_files::lost_apps(&socket) {
            Ok(apps) => {
                self.secrets_check = 0;
                if !apps.is_empty() {
                    warn!(
                        "jobs",
                        "in-memory secrets of {} are gone (host rebooted?); their containers cannot start until the server delivers them again",
                        apps.join(", ")
                    );
                }
                for a in apps {
                    if !self.secrets_lost.contains(&a) {
                        self.secrets_lost.push(a);
                    }
                }
            }
            Err(e) => debug!(
                "jobs",
                "cannot look for containers without their secrets yet: {e}"
            ),
        }
    }

    pub fn running(&self) -> usize {
        self.jobs.iter().filter(|j| !j.is_done()).count()
    }

    pub fn owns(&self, token: Token) -> bool {
        self.jobs.iter().any(|j| j.owns(token))
    }

    pub fn owns_timer(&self, id: TimerId) -> bool {
        self.jobs
            .iter()
            .any(|j| j.owns_timer(id) || matches!(&j.work, Work::Deploy(d) if d.owns_timer(id)))
    }

    pub fn wants_again(&self) -> bool {
        self.jobs.iter().any(|j| {
            j.chan.has_room()
                && match &j.work {
                    Work::Process { proc, .. } => proc.pending(0) || proc.pending(1),
                    Work::Deploy(d) => d.wants_again(true),
                    Work::Unstarted | Work::Done => false,
                }
        })
    }

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        let Some(i) = self.jobs.iter().position(|j| j.owns(token)) else {
            return;
        };
        let job = &mut self.jobs[i];
        match &mut job.work {
            Work::Deploy(d) => {
                d.on_ready(ctx, &mut job.chan, token);
                self.deploy_progress(ctx, i)
            }
            Work::Process { proc, .. } => {
                if let Some(pipe) = proc.pipe_of(token) {
                    proc.mark_ready(pipe);
                }
                self.read(ctx, i)
            }
            Work::Unstarted | Work::Done => {}
        }
    }

    pub fn on_again(&mut self, ctx: &mut Ctx<'_>) {
        for i in (0..self.jobs.len()).rev() {
            let job = &mut self.jobs[i];
            if let Work::Deploy(d) = &mut job.work {
                if job.chan.has_room() {
                    d.on_again(ctx, &mut job.chan);
                }
                self.deploy_progress(ctx, i);
                continue;
            }
            self.read(ctx, i);
        }
    }

    pub fn on_sigchld(&mut self, ctx: &mut Ctx<'_>) {
        for i in (0..self.jobs.len()).rev() {
            let job = &mut self.jobs[i];
            if let Work::Deploy(d) = &mut job.work {
                d.on_sigchld(ctx, &mut job.chan);
                self.deploy_progress(ctx, i);
                continue;
            }
            self.check_done(ctx, i);
        }
    }

    /// After a deploy moved: once it is over, the job is.
    fn deploy_progress(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let job = &mut self.jobs[i];
        note_spool_error(job);
        let outcome = match &job.work {
            Work::Done => return self.retire(ctx, i),
            Work::Deploy(d) => d.outcome().cloned(),
            Work::Unstarted | Work::Process { .. } => None,
        };
        let Some(outcome) = outcome else {
            return;
        };
        // The deploy's own account wins: a cancel during the replacement
        // is reported with what the rollback did.
        job.stop = Some(Stop {
            status: outcome.status,
            reason: outcome.reason,
        });
        self.finish(ctx, i);
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, timer: JobTimer) {
        if timer == JobTimer::Deploy {
            let Some(i) = self
                .jobs
                .iter()
                .position(|j| matches!(&j.work, Work::Deploy(d) if d.owns_timer(id)))
            else {
                return;
            };
            let job = &mut self.jobs[i];
            if let Work::Deploy(d) = &mut job.work {
                d.on_timer(ctx, &mut job.chan, id);
            }
            return self.deploy_progress(ctx, i);
        }
        let Some(i) = self.jobs.iter().position(|j| j.owns_timer(id)) else {
            return;
        };
        let job = &mut self.jobs[i];
        match timer {
            JobTimer::Deadline => {
                job.timers.deadline = None;
                let why = format!("timed out after {} s", job.start.timeout_s);
                self.stop(ctx, i, JobStatus::TimedOut, why);
            }
            JobTimer::Grace => {
                job.timers.grace = None;
                match &job.work {
                    Work::Process { proc, .. } => proc.signal(libc::SIGKILL),
                    Work::Deploy(d) => d.kill(),
                    Work::Unstarted | Work::Done => {}
                }
            }
            JobTimer::Deploy => {}
            JobTimer::Reap => {
                let Work::Process { proc, linger } = &mut job.work else {
                    return;
                };
                *linger = None;
                if proc.try_reap() {
                    // Whoever holds the pipes now is not the job.
                    self.read(ctx, i);
                    if let Some(Job {
                        work: Work::Process { proc, .. },
                        ..
                    }) = self.jobs.get_mut(i)
                    {
                        proc.close(ctx.registry, 0);
                        proc.close(ctx.registry, 1);
                    }
                }
                if i < self.jobs.len() {
                    self.check_done(ctx, i);
                }
            }
        }
    }

    /// Link changes and the server's job messages.
    pub fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::Up { acks, .. } => {
                self.up = true;
                self.outbox.clear();
                for j in &mut self.jobs {
                    let ack = acks.iter().find(|a| a.channel == j.chan.channel());
                    if let Err(e) = j.chan.link_up(ack.map(|a: &ChannelAck| a.seq)) {
                        warn!("jobs", "job {}: reading its spool: {e}", j.start.job_id);
                    }
                }
                for r in self.ledger.results.clone() {
                    self.outbox.push_back(result_message(r));
                }
                self.check_lost_secrets();
                if !self.secrets_lost.is_empty() {
                    let lost = SecretsLost {
                        apps: self.secrets_lost.clone(),
                    };
                    self.outbox
                        .push_back(Outgoing::Control(Box::new(Control::SecretsLost(lost))));
                }
            }
            LinkEvent::Down => {
                self.up = false;
                self.outbox.clear();
                for j in &mut self.jobs {
                    j.chan.link_down();
                }
            }
            LinkEvent::Message { id, body } => match *body {
                Control::JobStart(start) => self.start(ctx, id, start),
                Control::JobCancel(r) => self.cancel(ctx, &r.job_id),
                Control::JobResultAck(r) if self.ledger.acked(&r.job_id) => self.save(),
                _ => {}
            },
            LinkEvent::ChannelAck { channel, kind, seq } => {
                if let Some(i) = self.jobs.iter().position(|j| j.chan.channel() == channel) {
                    if let Err(e) = self.jobs[i].chan.on_frame(kind, seq) {
                        warn!(
                            "jobs",
                            "job {}: reading its spool: {e}", self.jobs[i].start.job_id
                        );
                    }
                    self.retire(ctx, i);
                }
            }
            _ => {}
        }
    }

    /// The next message for the server: replies and results, then output
    /// frames, one job after another.
    pub fn next_message(&mut self) -> Option<Outgoing> {
        if let Some(m) = self.outbox.pop_front() {
            return Some(m);
        }
        if !self.up || self.jobs.is_empty() {
            return None;
        }
        let n = self.jobs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(frame) = self.jobs[i].chan.next_frame() {
                self.next = (i + 1) % n;
                return Some(Outgoing::Binary(frame));
            }
        }
        None
    }

    // ---- starting and stopping ---------------------------------------------

    fn reply(&mut self, id: u64, body: Control) {
        if self.up {
            self.outbox.push_back(Outgoing::Reply {
                id,
                body: Box::new(body),
            });
        }
    }

    fn refuse(&mut self, id: u64, code: &str, message: String) {
        debug!("jobs", "job_start refused: {code}: {message}");
        self.reply(
            id,
            Control::Error(ErrorBody {
                code: code.into(),
                message,
            }),
        );
    }

    fn accepted(&mut self, id: u64, job_id: &str, state: Accepted) {
        self.reply(
            id,
            Control::JobAccepted(JobAccepted {
                job_id: job_id.to_owned(),
                state: state.as_str().into(),
            }),
        );
    }

    fn start(&mut self, ctx: &mut Ctx<'_>, id: u64, start: JobStart) {
        if self.cfg.is_none() {
            let why = "jobs are switched off on this runner (--no-jobs)".to_owned();
            return self.refuse(id, "jobs_disabled", why);
        }
        if let Some(d) = &start.deploy {
            // It becomes a path under the state dir: checked here too.
            if let Err(why) = crate::protocol::deploy::check_app_name(&d.app) {
                return self.refuse(id, crate::protocol::api_error::BAD_REQUEST, why);
            }
        }
        let job_id = start.job_id.clone();
        if self
            .jobs
            .iter()
            .any(|j| j.start.job_id == job_id && !j.is_done())
        {
            return self.accepted(id, &job_id, Accepted::Running);
        }
        if self.queue.iter().any(|(_, q)| q.job_id == job_id) {
            return self.accepted(id, &job_id, Accepted::Queued);
        }
        if self.ledger.has_seen(&job_id) {
            // Done here already; its result is (re)sent on every link.
            return self.accepted(id, &job_id, Accepted::Finished);
        }
        // New to this host: the owner's signature rule (`trust/`).
        let mut verifier = self.verifier.borrow_mut();
        let runner = verifier.runner_id().to_owned();
        let kind = crate::protocol::signed::job_kind(&start);
        let bytes = |s: &Signed| job_bytes(&runner, &s.action_id, s.not_after_ms, &start);
        let verdict = verifier.check(kind, start.signed.as_ref(), bytes, now_ms());
        let subject = format!("job={}", crate::trust::audit::field(&job_id, 64));
        verifier.record(&subject, kind, start.signed.as_ref(), &verdict, now_ms());
        drop(verifier);
        if let Err(why) = verdict {
            warn!("jobs", "job {job_id} refused: {why}");
            return self.refuse(id, crate::trust::REFUSED_CODE, why.to_string());
        }
        let max = self.cfg.as_ref().map_or(0, |c| c.max_concurrent);
        if self.running() >= max {
            if self.queue.len() >= MAX_QUEUED {
                let why = format!("{MAX_QUEUED} jobs are queued on this runner already");
                return self.refuse(id, "busy", why);
            }
            self.queue.push_back((id, start));
            return self.accepted(id, &job_id, Accepted::Queued);
        }
        self.accepted(id, &job_id, Accepted::Running);
        self.spawn(ctx, start);
    }

    fn spawn(&mut self, ctx: &mut Ctx<'_>, start: JobStart) {
        let Some(cfg) = self.cfg.clone() else { return };
        let spill = cfg.spool_dir().join(format!("{}.spool", start.channel));
        let mut chan = OutChannel::spooled(start.channel, cfg.limits, spill);
        if self.up {
            // A new channel: nothing to resend, only the pacing to set.
            if let Err(e) = chan.link_up(None) {
                warn!("jobs", "job {}: {e}", start.job_id);
            }
        }
        let secrets = start.secrets.iter().map(|(_, v)| v.as_bytes().to_vec());
        let redact = Redactor::new(secrets);
        let mut job = Job {
            chan,
            work: Work::Unstarted,
            redact: [redact.clone(), redact],
            started_ms: now_ms(),
            timers: Timers::default(),
            stop: None,
            start,
        };
        if let Some(spec) = job.start.deploy.clone() {
            return self.spawn_deploy(ctx, job, *spec, &cfg);
        }
        let mut args: Vec<OsString> = Vec::new();
        if let Some(script) = &job.start.script {
            args.push("-c".into());
            args.push(script.into());
            args.push("tether-job".into());
        }
        args.extend(job.start.args.iter().map(OsString::from));
        let env: Vec<(OsString, OsString)> = job
            .start
            .env
            .iter()
            .chain(&job.start.secrets)
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Recorded before it runs: a job the ledger cannot hold would be
        // orphaned (and could run twice) after a runner restart, so a
        // ledger that cannot be written (disk full) refuses the job.
        if let Err(why) = self.record_start(&job) {
            return self.fail_at_start(ctx, job, why);
        }
        let tokens = [ctx.token(), ctx.token()];
        let program = PathBuf::from(&job.start.program);
        match Process::spawn(&program, &args, &env, &cfg.cwd, ctx.registry, tokens) {
            Ok(p) => {
                info!(
                    "jobs",
                    "job {} started: {} (pid {})",
                    job.start.job_id,
                    job.start.program,
                    p.pid()
                );
                let ticks = start_ticks(p.pid()).unwrap_or(0);
                self.ledger.set_process(&job.start.job_id, p.pid(), ticks);
                if let Err(why) = self.save_for_start() {
                    // The disk filled in between: same reason, cut at once.
                    p.signal(libc::SIGKILL);
                    job.work = Work::Process {
                        proc: p,
                        linger: None,
                    };
                    return self.fail_at_start(ctx, job, why);
                }
                if job.start.timeout_s > 0 {
                    let after = Duration::from_secs(job.start.timeout_s);
                    job.timers.deadline = Some(ctx.schedule(after, JobTimer::Deadline));
                }
                job.work = Work::Process {
                    proc: p,
                    linger: None,
                };
                self.jobs.push(job);
                let i = self.jobs.len() - 1;
                self.read(ctx, i);
            }
            Err(e) => {
                let why = format!("cannot start {}: {e}", job.start.program);
                warn!("jobs", "job {}: {why}", job.start.job_id);
                job.stop = Some(Stop {
                    status: JobStatus::Failed,
                    reason: why.clone(),
                });
                system_note(&mut job, &why);
                self.ledger.remember(&job.start.job_id);
                self.jobs.push(job);
                let i = self.jobs.len() - 1;
                self.finish(ctx, i);
            }
        }
    }

    fn spawn_deploy(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut job: Job,
        spec: crate::protocol::deploy::DeploySpec,
        cfg: &JobsConfig,
    ) {
        // This deploy brings the app's secrets: no need to ask again.
        self.secrets_lost.retain(|a| *a != spec.app);
        let d = Deploy::new(
            spec,
            &job.start.job_id,
            job.start.env.clone(),
            &job.start.secrets,
            cfg.docker_socket.clone(),
            &cfg.state_dir,
            cfg.secrets_dir.clone(),
        );
        // No process of its own: pid 0 in the ledger is never signalled
        // after a restart (no /proc/0), but the job is still reported cut
        // short.
        if let Err(why) = self.record_start(&job) {
            return self.fail_at_start(ctx, job, why);
        }
        if job.start.timeout_s > 0 {
            let after = Duration::from_secs(job.start.timeout_s);
            job.timers.deadline = Some(ctx.schedule(after, JobTimer::Deadline));
        }
        job.work = Work::Deploy(Box::new(d));
        self.jobs.push(job);
        let i = self.jobs.len() - 1;
        let job = &mut self.jobs[i];
        if let Work::Deploy(d) = &mut job.work {
            d.begin(ctx, &mut job.chan);
        }
        self.deploy_progress(ctx, i);
    }

    /// A job that may not run (its ledger entry cannot be written): failed
    /// with the reason; a process already spawned was sent SIGKILL and is
    /// reaped as usual.
    fn fail_at_start(&mut self, ctx: &mut Ctx<'_>, mut job: Job, why: String) {
        warn!("jobs", "job {}: {why}", job.start.job_id);
        system_note(&mut job, &why);
        job.stop = Some(Stop {
            status: JobStatus::Failed,
            reason: why,
        });
        let spawned = matches!(job.work, Work::Process { .. });
        self.jobs.push(job);
        let i = self.jobs.len() - 1;
        if spawned {
            self.read(ctx, i)
        } else {
            self.finish(ctx, i)
        }
    }

    fn cancel(&mut self, ctx: &mut Ctx<'_>, job_id: &str) {
        if let Some(pos) = self.queue.iter().position(|(_, q)| q.job_id == job_id) {
            if let Some((_, start)) = self.queue.remove(pos) {
                let r = JobResult {
                    job_id: start.job_id.clone(),
                    channel: start.channel,
                    status: JobStatus::Cancelled.as_str().into(),
                    exit_code: None,
                    signal: None,
                    reason: "cancelled before it started".into(),
                    started_ms: 0,
                    finished_ms: now_ms(),
                    output_bytes: 0,
                };
                self.record(r);
            }
            return;
        }
        if let Some(i) = self
            .jobs
            .iter()
            .position(|j| j.start.job_id == job_id && !j.is_done())
        {
            let why = "cancelled by the server".into();
            self.stop(ctx, i, JobStatus::Cancelled, why);
        }
    }

    /// SIGTERM to the group now, SIGKILL after the grace period.
    fn stop(&mut self, ctx: &mut Ctx<'_>, i: usize, status: JobStatus, reason: String) {
        let grace = self.cfg.as_ref().map_or(Duration::ZERO, |c| c.kill_grace);
        let job = &mut self.jobs[i];
        if job.stop.is_some() || job.is_done() {
            return;
        }
        info!("jobs", "job {}: {reason}", job.start.job_id);
        system_note(job, &format!("{reason}; stopping it"));
        job.stop = Some(Stop {
            status,
            reason: reason.clone(),
        });
        match &mut job.work {
            Work::Deploy(d) => {
                d.abort(ctx, &mut job.chan, status, reason);
                job.timers.grace = Some(ctx.schedule(grace, JobTimer::Grace));
                return self.deploy_progress(ctx, i);
            }
            Work::Process { proc, .. } => {
                proc.signal(libc::SIGTERM);
                proc.signal(libc::SIGCONT);
            }
            Work::Unstarted | Work::Done => {}
        }
        job.timers.grace = Some(ctx.schedule(grace, JobTimer::Grace));
    }

    // ---- output --------------------------------------------------------------

    /// Read job `i`'s pipes while its channel has room.
    fn read(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let job = &mut self.jobs[i];
        let p = match &mut job.work {
            Work::Deploy(_) => return self.deploy_progress(ctx, i),
            Work::Process { proc, .. } => proc,
            Work::Unstarted | Work::Done => return self.check_done(ctx, i),
        };
        let mut buf = vec![0u8; CHUNK];
        let mut budget = MAX_READ_PER_PASS;
        for pipe in 0..2 {
            while p.pending(pipe) && job.chan.has_room() && budget > 0 {
                let tag = if pipe == 0 {
                    StreamTag::Stdout
                } else {
                    StreamTag::Stderr
                };
                let mut out = Vec::new();
                match p.read(ctx.registry, pipe, &mut buf) {
                    Read_::Data(n) => {
                        budget = budget.saturating_sub(n);
                        job.redact[pipe].feed(&buf[..n], &mut out);
                    }
                    Read_::Empty => break,
                    Read_::Eof => job.redact[pipe].finish(&mut out),
                }
                push_output(&mut job.chan, tag, &out);
            }
        }
        note_spool_error(job);
        self.check_done(ctx, i);
    }

    /// Over once reaped with both pipes closed (or closed after lingering).
    fn check_done(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let (p, linger) = match &mut self.jobs[i].work {
            Work::Deploy(_) => return self.deploy_progress(ctx, i),
            Work::Done => return self.retire(ctx, i),
            Work::Unstarted => return,
            Work::Process { proc, linger } => (proc, linger),
        };
        let reaped = p.try_reap();
        match (reaped, p.pipes_open()) {
            (true, false) => self.finish(ctx, i),
            (true, true) if linger.is_none() => {
                *linger = Some(ctx.schedule(PIPE_LINGER, JobTimer::Reap));
            }
            (false, false) if linger.is_none() => {
                // Pipes closed first; SIGCHLD should come, but look again soon.
                let soon = Duration::from_millis(200);
                *linger = Some(ctx.schedule(soon, JobTimer::Reap));
            }
            _ => {}
        }
    }

    /// The process is over: record the result, start the next queued job.
    fn finish(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let job = &mut self.jobs[i];
        let (linger, (code, signal)) = match &mut job.work {
            Work::Process { proc, linger } => (linger.take(), proc.exit()),
            _ => (None, (None, None)),
        };
        for t in [job.timers.deadline.take(), job.timers.grace.take(), linger]
            .into_iter()
            .flatten()
        {
            ctx.cancel(t);
        }
        let (status, reason) = match (&job.stop, code, signal) {
            (Some(s), _, _) => (s.status, s.reason.clone()),
            (None, Some(0), _) => (JobStatus::Succeeded, String::new()),
            (None, Some(c), _) => (JobStatus::Failed, format!("exit code {c}")),
            (None, None, Some(s)) => (JobStatus::Failed, format!("killed by signal {s}")),
            (None, None, None) => (JobStatus::Failed, "exit status unknown".to_owned()),
        };
        let status = status.as_str();
        let tail = match (code, signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => String::new(),
        };
        if !tail.is_empty() {
            system_note(job, &format!("{status}: {tail}"));
        }
        // A deploy's sockets and git process go with it.
        if let Work::Process { mut proc, .. } = std::mem::replace(&mut job.work, Work::Done) {
            proc.close(ctx.registry, 0);
            proc.close(ctx.registry, 1);
        }
        let r = JobResult {
            job_id: job.start.job_id.clone(),
            channel: job.start.channel,
            status: status.into(),
            exit_code: code,
            signal,
            reason,
            started_ms: job.started_ms,
            finished_ms: now_ms(),
            output_bytes: job.chan.produced(),
        };
        info!(
            "jobs",
            "job {} {status}{}",
            r.job_id,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            }
        );
        self.record(r);
        self.retire(ctx, i);
        let max = self.cfg.as_ref().map_or(0, |c| c.max_concurrent);
        while self.running() < max {
            let Some((_, next)) = self.queue.pop_front() else {
                break;
            };
            self.spawn(ctx, next);
        }
    }

    fn record(&mut self, r: JobResult) {
        self.ledger.finished(r.clone());
        self.save();
        if self.up {
            self.outbox.push_back(result_message(r));
        }
    }

    /// A finished job whose output is all acknowledged goes.
    fn retire(&mut self, _ctx: &mut Ctx<'_>, i: usize) {
        if i < self.jobs.len() && self.jobs[i].is_done() && self.jobs[i].chan.is_drained() {
            self.jobs.swap_remove(i);
        }
    }

    /// The ledger must hold a job before it runs (a restart then reports
    /// it): the reason to refuse it when it cannot be written.
    /// The job in the ledger as running (pid 0 until it has one), saved.
    fn record_start(&mut self, job: &Job) -> Result<(), String> {
        self.ledger.started(RunningEntry {
            job_id: job.start.job_id.clone(),
            channel: job.start.channel,
            pid: 0,
            start_ticks: 0,
            started_ms: job.started_ms,
        });
        self.save_for_start()
    }

    fn save_for_start(&self) -> Result<(), String> {
        let Some(cfg) = &self.cfg else { return Ok(()) };
        self.ledger.save().map_err(|e| {
            let path = cfg.state_dir.join("jobs.json");
            format!("cannot write the job ledger {}: {e}", path.display())
        })
    }

    fn save(&self) {
        if self.cfg.is_some() {
            if let Err(e) = self.ledger.save() {
                warn!("jobs", "cannot write the job ledger: {e}");
            }
        }
    }
}

fn result_message(r: JobResult) -> Outgoing {
    Outgoing::Control(Box::new(Control::JobResult(r)))
}

/// Output bytes as records: `ts_ms, step 0, bytes`, at most a frame each.
fn push_output(chan: &mut OutChannel, tag: StreamTag, bytes: &[u8]) {
    push_record(chan, tag, 0, bytes)
}

/// Output bytes of one step as records, at most a frame each. The channel
/// never drops them (a full disk stops the source instead; crate::channel).
fn push_record(chan: &mut OutChannel, tag: StreamTag, step: u8, bytes: &[u8]) {
    let ts = now_ms().to_be_bytes();
    for chunk in bytes.chunks(CHUNK) {
        let mut payload = Vec::with_capacity(JOB_RECORD_HEADER + chunk.len());
        payload.extend_from_slice(&ts);
        payload.push(step);
        payload.extend_from_slice(chunk);
        chan.push(tag, payload);
    }
}

/// A line of our own in the job's log (tag system).
fn system_note(job: &mut Job, text: &str) {
    let line = format!("[tether] {text}\n");
    push_output(&mut job.chan, StreamTag::System, line.as_bytes());
}

/// Say once per stall, in the job's log, why its output paused.
fn note_spool_error(job: &mut Job) {
    if let Some(e) = job.chan.take_spool_error() {
        let why = format!(
            "the output spool cannot grow ({e}); output paused until the server has stored what is pending"
        );
        warn!("jobs", "job {}: {why}", job.start.job_id);
        system_note(job, &why);
    }
}

impl TimerKind for JobTimer {
    const ALL: &'static [JobTimer] = &[
        JobTimer::Deadline,
        JobTimer::Grace,
        JobTimer::Reap,
        JobTimer::Deploy,
    ];
}

impl Source for Jobs {
    fn ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if self.owns(token) {
            self.on_ready(ctx, token);
        }
    }

    fn timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, kind: u8) {
        if let Some(t) = JobTimer::from_code(kind) {
            self.on_timer(ctx, id, t);
        }
    }

    fn signals(&mut self, ctx: &mut Ctx<'_>, set: SignalSet) {
        if set.contains(libc::SIGCHLD) {
            self.on_sigchld(ctx);
        }
    }

    fn wants_again(&self) -> bool {
        Jobs::wants_again(self)
    }

    fn again(&mut self, ctx: &mut Ctx<'_>) {
        self.on_again(ctx);
    }
}

impl Feature for Jobs {
    fn families(&self) -> &'static [Family] {
        &[Family::Jobs]
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        Jobs::on_link(self, ctx, event);
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        Jobs::next_message(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::deploy::DeploySpec;
    use crate::reactor::Reactor as EventLoop;

    fn deploy_start(app: &str) -> Box<JobStart> {
        Box::new(JobStart {
            job_id: "jb_evil".into(),
            channel: 3,
            program: "deploy".into(),
            args: vec![],
            script: None,
            env: vec![],
            secrets: vec![],
            timeout_s: 0,
            deploy: Some(Box::new(DeploySpec {
                app: app.into(),
                path: Some("/nonexistent".into()),
                image: "evil:1".into(),
                container: "evil".into(),
                ..Default::default()
            })),
            signed: None,
        })
    }

    /// Issue 15, item 9: the server checks app names, but the runner does
    /// not trust it with its file system: a name that would leave
    /// `<state-dir>/deploy/` is refused before any path is made.
    #[test]
    fn a_deploy_whose_app_name_is_a_path_is_refused_before_touching_the_disk() {
        let dir = std::env::temp_dir().join(format!("tether-jobs-app-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut el = EventLoop::new().unwrap();
        let verifier = crate::trust::Verifier::new(Default::default(), now_ms());
        let shared = std::rc::Rc::new(std::cell::RefCell::new(verifier));
        let mut jobs = Jobs::new(Some(JobsConfig::new(&dir)), shared);
        let up = LinkEvent::Up {
            metrics_ts: None,
            acks: vec![],
        };
        jobs.on_link(&mut el.test_ctx(), up);
        while jobs.next_message().is_some() {}
        let bad = ["../../escaped", "..", "", "a/b", "/etc", &"x".repeat(65)];
        for (i, app) in bad.iter().enumerate() {
            let id = 40 + i as u64;
            let start = deploy_start(app);
            jobs.on_link(
                &mut el.test_ctx(),
                LinkEvent::Message {
                    id,
                    body: Box::new(Control::JobStart(*start)),
                },
            );
            match jobs.next_message() {
                Some(Outgoing::Reply { id: got, body }) if got == id => match *body {
                    Control::Error(e) => {
                        assert_eq!(e.code, "bad_request", "{app:?}");
                        assert!(e.message.starts_with("app name"), "{}", e.message);
                    }
                    other => panic!("{app:?}: {other:?}"),
                },
                other => panic!("{app:?}: {other:?}"),
            }
        }
        assert!(jobs.jobs.is_empty() && jobs.queue.is_empty());
        assert!(!dir.join("deploy").exists(), "no directory was made");
        assert!(!dir.parent().unwrap().join("escaped").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
