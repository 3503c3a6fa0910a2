//! A deploy job: source, image build and container replacement, run in the
//! event loop as one state machine. Its output goes on the job's channel
//! like any job's, each record tagged with the step it belongs to
//! (`protocol::deploy::step`); cancel, timeout, result delivery and the
//! ledger are the job machinery's (`super`).
//!
//! ```text
//!  Source ── git: /bin/sh running the host's git (fetch ref, checkout, clean) as a child
//!    │       path: the directory as it is
//!    ▼
//!  Ping ── GET /_ping: the engine's API version
//!    ▼
//!  Build ── POST /build (classic builder), tar context streamed from the checkout
//!    │      in chunks as the socket takes them; progress JSON lines → output
//!    ▼                                     (skipped for a rollback: the image exists)
//!  InspectOld ── 404: first deploy ─────────────────────┐
//!    │ found                                            │
//!  RenameOld (name-old-JOB) ───────────────────────────▶ Create (env, secrets, labels, ports, binds)
//!                                                         ▼
//!                                              StopOld (if it ran) ─▶ StartNew
//!                                                                        ▼
//!                              Health: inspect (still running?) ─▶ exec cmd / TCP connect, every 1 s
//!                                │ healthy                    │ exited, timeout, cancel, engine error
//!                                ▼                            ▼
//!                        RemoveOld ─▶ Done          Rollback: remove new ─▶ rename old back
//!                                                        ─▶ start old (if it ran) ─▶ Done (failed)
//! ```
//!
//! The machine is a [`Phase`], what the deploy waits on, and its step: the
//! Docker [`Call`] in flight and what the `Deploy` has learnt (the old
//! container, the new one, the health checks, why it fails). Each call's
//! answer decides the next step (`answer`).
//!
//! ```text
//!  Idle ──begin──▶ Git ──exit 0──▶ Call(Ping) ──answer──▶ Call(next step) ──▶ …
//!    └──(path source, or no build)──▶ Call(Ping)
//!  Call(HealthInspect | ExecCreate/Start/Inspect) ──not healthy yet──▶ Pause ──timer──▶ Call(…)
//!  every end (deployed; failed after the rollback; cancel, timeout) ──▶ Done(Outcome)
//! ```
//!
//! Before RenameOld a small file records what to put back should the
//! runner die during the replacement; the next start restores the old
//! container from it (`parked.rs`).
//!
//! A failure before the old container was touched (git, build, create)
//! leaves it running as it was; once it was renamed every failure goes
//! through Rollback, which restores it. Cancel and timeout cut git (its
//! process group) and the build (closing the socket makes the engine
//! cancel it) at once; during the replacement they take the Rollback path
//! too, so the host is never left without the app.
//!
//! Every Docker call is one Engine call ([`crate::engine::call`]: its own
//! socket; the build's context streamed as chunks) with a deadline ([`CALL_TIMEOUT`]; the build [`BUILD_TIMEOUT`], the stop the
//! grace period plus a margin). Secrets reach the container as the app's
//! `secrets_delivery` says — files on a host tmpfs bound at `/run/secrets`
//! (`secret_files.rs`, written before the first Docker call), the create
//! call's `Env`, or the env file — and are masked in everything this module
//! writes. Containers that carry secrets in `Env` get the label
//! `tether.secrets` (their names), by which every inspect answer masks the
//! values (`protocol::secret_env`).

use super::process::{Process, Read_};
use super::redact::Redactor;
use super::secret_files;
use super::status::JobStatus;
use super::tar::Context;
use super::{push_record, JobTimer};
use crate::channel::OutChannel;
use crate::engine::api::{
    self, Api, ContainerInspect, CreatedContainer, CreatedExec, ExecConfig, ExecInspect,
    ProgressLine,
};
use crate::engine::stream::LineSplitter;
use crate::engine::{self, Answer, CallError, EngineCall, Exchange, Upload};
use crate::net::http::{Request, Response};
use crate::protocol::deploy::{step, DeploySpec, SecretsDelivery};
use crate::protocol::StreamTag;
use crate::reactor::{Ctx, TimerId};
use crate::{debug, info};

use mio::Token;
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deadline of one Docker call other than the build and the stop.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the build (the job's own timeout may be shorter).
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Grace period given to the old container's stop.
const STOP_GRACE_S: u32 = 10;
/// Between health checks.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Largest buffered answer (inspect is the largest, a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;
/// Longest build progress line kept.
const MAX_LINE: usize = 64 * 1024;
const READ_CHUNK: usize = 32 * 1024;
/// Bytes read from one socket or pipe per readiness pass.
const MAX_READ_PER_PASS: usize = 256 * 1024;

/// The git step. Positional: checkout dir, URL, ref. `GIT_TERMINAL_PROMPT=0`
/// keeps git from waiting for a password nobody will type.
const GIT_SCRIPT: &str = r#"set -e
if ! command -v git >/dev/null 2>&1; then
  echo "git is not installed on this host" >&2
  exit 127
fi
dir=$1; url=$2; ref=$3
mkdir -p "$dir"
cd "$dir"
[ -d .git ] || git init -q
echo "fetching $ref from $url"
git -c advice.detachedHead=false fetch --force --no-tags -q "$url" "$ref"
git -c advice.detachedHead=false checkout -q --force --detach FETCH_HEAD
git clean -q -ffdx
git log -1 --format='checked out %H %s'
"#;

/// Which Docker call an exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Ping,
    Build,
    InspectOld,
    RenameOld,
    Create,
    /// The env file into the new container (only if the app asks).
    PutEnvFile,
    StopOld,
    StartNew,
    HealthInspect,
    ExecCreate,
    ExecStart,
    ExecInspect,
    RemoveOld,
    RemoveNew,
    RenameBack,
    StartOld,
}

/// The build's progress stream, read as it comes.
struct BuildStream {
    lines: LineSplitter,
    status: Option<u16>,
    error_body: Vec<u8>,
}

/// The Engine call in flight, and which step it is.
struct InFlight {
    call: Call,
    ec: EngineCall,
    /// `Some` for the build.
    build: Option<BuildStream>,
    /// Left unread for lack of room in the job's channel (or for the next
    /// turn: the read budget was spent).
    stalled: bool,
}

impl Upload for super::tar::TarStream {
    fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<bool> {
        super::tar::TarStream::fill(self, out, max)
    }
}

/// What driving the call in flight gave.
enum Got {
    Wait,
    Answer(Response),
    /// The build stream ended (its lines were handled as they came).
    StreamEnd,
    Failed(String),
}

#[derive(Debug, Clone)]
struct Old {
    id: String,
    running: bool,
    renamed: bool,
    stopped: bool,
}

/// How the deploy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: JobStatus,
    pub reason: String,
}

pub struct Deploy {
    spec: DeploySpec,
    job_id: String,
    /// The container's `Env` (secrets included only for `env` delivery).
    env: Vec<(String, String)>,
    /// The secrets, for files or the env file.
    secrets: Vec<(String, String)>,
    /// `<run-dir>/secrets`, where files delivery keeps them in memory.
    secrets_root: Option<PathBuf>,
    /// This deployment's secrets directory, once written.
    secrets_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    checkout: PathBuf,
    /// The crash-recovery file kept while the old container is parked.
    parked_file: PathBuf,
    redact: Redactor,
    /// What it waits on now.
    phase: Phase,
    api: Option<Api>,
    old: Option<Old>,
    new_id: Option<String>,
    /// The health checks of the new container, from its start.
    health: Option<Health>,
    build_error: Option<String>,
    /// Why we are rolling back.
    failure: Option<String>,
    /// Cancel or timeout asked for.
    stopping: Option<(JobStatus, String)>,
}

/// What a deploy waits on: one thing at a time (the module doc draws it).
/// The drive functions take the phase out (leaving `Idle`) and put in the
/// next one, so an ended call or an exited git cannot be looked at again.
enum Phase {
    /// Not begun, or between two steps.
    Idle,
    /// The source step: git in its shell.
    Git(Box<Git>),
    /// A Docker call in flight.
    Call(Box<InFlight>),
    /// Before the next health check.
    Pause(TimerId),
    /// Over: the job reads how (`Jobs::deploy_progress`).
    Done(Outcome),
}

/// The git child of the source step and what its output said.
struct Git {
    proc: Process,
    redact: [Redactor; 2],
    /// git's line on stderr naming the cause (masked), for the job's reason.
    tail: String,
}

/// The new container's health checks: until `deadline`, every
/// [`HEALTH_EVERY`].
struct Health {
    deadline: Instant,
    /// The last check's finding, for the reason if it never passes.
    note: String,
    /// The health command's exec, once created.
    exec_id: Option<String>,
    /// The health command still ran at the last look.
    recheck_exec: bool,
}

/// What git said on stderr that best names the cause: its first `fatal:`
/// or `error:` line (later ones are consequences, such as "unpack-objects
/// failed" after "No space left on device"), else its last line; at most
/// 300 bytes.
fn remember_tail(tail: &mut String, out: &[u8]) {
    let cause = |l: &str| l.starts_with("fatal:") || l.starts_with("error:");
    if cause(tail) {
        return;
    }
    let text = String::from_utf8_lossy(out);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let Some(line) = lines.iter().find(|l| cause(l)).or(lines.last()) else {
        return;
    };
    let mut end = line.len().min(300);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    *tail = line[..end].to_owned();
}

fn now_step(chan: &mut OutChannel, redact: &Redactor, tag: StreamTag, step: u8, text: &str) {
    let mut r = redact.clone();
    let mut out = Vec::new();
    r.feed(text.as_bytes(), &mut out);
    r.finish(&mut out);
    push_record(chan, tag, step, &out);
}

impl Deploy {
    pub fn new(
        spec: DeploySpec,
        job_id: &str,
        env: Vec<(String, String)>,
        secrets: &[(String, String)],
        socket: Option<PathBuf>,
        state_dir: &Path,
        secrets_root: Option<PathBuf>,
    ) -> Deploy {
        let redact = Redactor::new(secrets.iter().map(|(_, v)| v.as_bytes().to_vec()));
        let checkout = state_dir.join("deploy").join(&spec.app).join("src");
        let parked_file = super::parked::path(state_dir, &spec.app);
        let mut env = env;
        if spec.secrets_delivery == SecretsDelivery::Env {
            env.extend(secrets.iter().cloned());
        }
        Deploy {
            job_id: job_id.to_owned(),
            env,
            secrets: secrets.to_vec(),
            secrets_root,
            secrets_dir: None,
            socket,
            checkout,
            parked_file,
            redact,
            phase: Phase::Idle,
            api: None,
            old: None,
            new_id: None,
            health: None,
            build_error: None,
            failure: None,
            stopping: None,
            spec,
        }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.phase {
            Phase::Done(o) => Some(o),
            _ => None,
        }
    }

    /// A `[tether]` line of the step.
    fn note(&self, chan: &mut OutChannel, step: u8, text: &str) {
        now_step(
            chan,
            &self.redact,
            StreamTag::System,
            step,
            &format!("[tether] {text}\n"),
        );
    }

    pub fn owns(&self, token: Token) -> bool {
        match &self.phase {
            Phase::Call(x) => x.ec.token() == token,
            Phase::Git(g) => g.proc.pipe_of(token).is_some(),
            _ => false,
        }
    }

    pub fn owns_timer(&self, id: TimerId) -> bool {
        match &self.phase {
            Phase::Pause(t) => *t == id,
            Phase::Call(x) => x.ec.timer() == Some(id),
            _ => false,
        }
    }

    pub fn wants_again(&self, room: bool) -> bool {
        room && match &self.phase {
            Phase::Git(g) => g.proc.pending(0) || g.proc.pending(1),
            Phase::Call(x) => x.stalled,
            _ => false,
        }
    }

    // ---- start -----------------------------------------------------------

    pub fn begin(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        info!(
            "jobs",
            "deploy {} of {} started", self.job_id, self.spec.app
        );
        if let Err(why) = self.write_secret_files(chan) {
            return self.fail(ctx, chan, why);
        }
        if !self.spec.build {
            self.note(
                chan,
                step::BUILD,
                &format!("using image {} (no build)", self.spec.image),
            );
            return self.call(ctx, chan, Call::Ping);
        }
        match (&self.spec.git_url, &self.spec.path) {
            (Some(url), _) => {
                let url = url.clone();
                let r = self.spec.git_ref.clone().unwrap_or_else(|| "HEAD".into());
                self.start_git(ctx, chan, &url, &r);
            }
            (None, Some(p)) => {
                self.note(chan, step::SOURCE, &format!("source: {p} on this host"));
                if !Path::new(p).is_dir() {
                    return self.fail(ctx, chan, format!("source path {p} is not a directory"));
                }
                self.call(ctx, chan, Call::Ping);
            }
            (None, None) => self.fail(ctx, chan, "the app has no source (git_url or path)".into()),
        }
    }

    fn start_git(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, url: &str, r: &str) {
        let args: Vec<OsString> = vec![
            "-c".into(),
            GIT_SCRIPT.into(),
            "tether-deploy".into(),
            self.checkout.clone().into(),
            url.into(),
            r.into(),
        ];
        // Not the app's env, not its secrets: git needs neither.
        let env = [
            (OsString::from("GIT_TERMINAL_PROMPT"), OsString::from("0")),
            (OsString::from("LC_ALL"), OsString::from("C")),
        ];
        if let Some(parent) = self.checkout.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                let why = format!("cannot make {}: {e}", parent.display());
                return self.fail(ctx, chan, why);
            }
        }
        let tokens = [ctx.token(), ctx.token()];
        let sh = Path::new("/bin/sh");
        match Process::spawn(sh, &args, &env, Path::new("/"), ctx.registry, tokens) {
            Ok(proc) => {
                self.phase = Phase::Git(Box::new(Git {
                    proc,
                    redact: [self.redact.clone(), self.redact.clone()],
                    tail: String::new(),
                }));
                self.read_git(ctx, chan);
            }
            Err(e) => self.fail(ctx, chan, format!("cannot start /bin/sh for git: {e}")),
        }
    }

    // ---- events ----------------------------------------------------------

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, token: Token) {
        match &mut self.phase {
            Phase::Git(g) => {
                if let Some(pipe) = g.proc.pipe_of(token) {
                    g.proc.mark_ready(pipe);
                    self.read_git(ctx, chan);
                }
            }
            Phase::Call(x) if x.ec.token() == token => self.drive(ctx, chan),
            _ => {}
        }
    }

    pub fn on_again(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        if let Phase::Git(_) = self.phase {
            self.read_git(ctx, chan);
        }
        if matches!(&self.phase, Phase::Call(x) if x.stalled) {
            self.drive(ctx, chan);
        }
    }

    pub fn on_sigchld(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        if let Phase::Git(_) = self.phase {
            self.read_git(ctx, chan);
        }
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, id: TimerId) {
        if self
            .take_phase(|p| matches!(p, Phase::Pause(t) if *t == id))
            .is_some()
        {
            if self.failure.is_some() {
                return self.rollback(ctx, chan);
            }
            let recheck = self
                .health
                .as_mut()
                .is_some_and(|h| std::mem::take(&mut h.recheck_exec));
            if recheck {
                return self.call(ctx, chan, Call::ExecInspect);
            }
            return self.call(ctx, chan, Call::HealthInspect);
        }
        if let Some(Phase::Call(x)) =
            self.take_phase(|p| matches!(p, Phase::Call(x) if x.ec.timer() == Some(id)))
        {
            let call = x.call;
            self.drop_io(ctx, *x);
            let why = format!("the Docker engine did not answer {call:?} in time");
            self.answer(ctx, chan, call, Err(why));
        }
    }

    /// The phase, taken out (leaving `Idle`) if `which` says so.
    fn take_phase(&mut self, which: impl FnOnce(&Phase) -> bool) -> Option<Phase> {
        which(&self.phase).then(|| std::mem::replace(&mut self.phase, Phase::Idle))
    }

    /// Cancel or timeout: cut what can be cut; during the replacement, roll
    /// back.
    pub fn abort(
        &mut self,
        ctx: &mut Ctx<'_>,
        chan: &mut OutChannel,
        status: JobStatus,
        why: String,
    ) {
        if matches!(self.phase, Phase::Done(_)) || self.stopping.is_some() {
            return;
        }
        self.stopping = Some((status, why.clone()));
        let in_flight = match &self.phase {
            Phase::Git(g) => {
                g.proc.signal(libc::SIGTERM);
                g.proc.signal(libc::SIGCONT);
                return; // the exit is handled in read_git
            }
            Phase::Call(x) => Some(x.call),
            _ => None,
        };
        match in_flight {
            Some(Call::Ping | Call::Build | Call::InspectOld) | None if self.old_untouched() => {
                match std::mem::replace(&mut self.phase, Phase::Idle) {
                    // Closing the build socket makes the engine cancel the build.
                    Phase::Call(x) => self.drop_io(ctx, *x),
                    Phase::Pause(t) => ctx.cancel(t),
                    other => self.phase = other,
                }
                self.cleanup_new_then_done(ctx, chan, why);
            }
            _ => {
                // A replacement call is in flight: let it answer, then roll back.
                if self.failure.is_none() {
                    self.failure = Some(why);
                }
                if let Some(Phase::Pause(t)) = self.take_phase(|p| matches!(p, Phase::Pause(_))) {
                    ctx.cancel(t);
                    self.rollback(ctx, chan);
                }
            }
        }
    }

    /// SIGKILL for git after the grace period.
    pub fn kill(&self) {
        if let Phase::Git(g) = &self.phase {
            g.proc.signal(libc::SIGKILL);
        }
    }

    fn old_untouched(&self) -> bool {
        self.old.as_ref().is_none_or(|o| !o.renamed) && self.new_id.is_none()
    }

    /// Files delivery: the secrets into memory before anything else, so a
    /// host that cannot keep them there fails the deploy untouched.
    fn write_secret_files(&mut self, chan: &mut OutChannel) -> Result<(), String> {
        if self.spec.secrets_delivery != SecretsDelivery::Files || self.secrets.is_empty() {
            return Ok(());
        }
        let Some(root) = self.secrets_root.clone() else {
            return Err("this runner has no run dir for in-memory secrets".into());
        };
        let dir = secret_files::dir(&root, &self.spec.app, &self.job_id)
            .map_err(|e| format!("secret files: {e}"))?;
        secret_files::prepare(&root).map_err(|e| e.to_string())?;
        if let Some(app_dir) = self.parked_file.parent() {
            secret_files::mark(app_dir).map_err(|e| format!("secret files: {e}"))?;
        }
        self.secrets_dir = Some(dir.clone());
        let (uid, gid) = (self.spec.secrets_uid, self.spec.secrets_gid);
        secret_files::write(&dir, &self.secrets, uid, gid)
            .map_err(|e| format!("secret files: {e}"))?;
        self.note(
            chan,
            step::SOURCE,
            &format!(
                "{} secret(s) as files in {} (in memory, mode 0400)",
                self.secrets.len(),
                secret_files::TARGET
            ),
        );
        Ok(())
    }

    // ---- git -------------------------------------------------------------

    fn read_git(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut budget = MAX_READ_PER_PASS;
        let Phase::Git(g) = &mut self.phase else {
            return;
        };
        let p = &mut g.proc;
        for pipe in 0..2 {
            while p.pending(pipe) && chan.has_room() && budget > 0 {
                let tag = if pipe == 0 {
                    StreamTag::Stdout
                } else {
                    StreamTag::Stderr
                };
                let mut out = Vec::new();
                match p.read(ctx.registry, pipe, &mut buf) {
                    Read_::Data(n) => {
                        budget = budget.saturating_sub(n);
                        g.redact[pipe].feed(&buf[..n], &mut out);
                    }
                    Read_::Empty => break,
                    Read_::Eof => g.redact[pipe].finish(&mut out),
                }
                if pipe == 1 {
                    remember_tail(&mut g.tail, &out);
                }
                push_record(chan, tag, step::SOURCE, &out);
            }
        }
        if !p.try_reap() || p.pipes_open() {
            return;
        }
        let (code, signal) = p.exit();
        let Phase::Git(mut g) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        g.proc.close(ctx.registry, 0);
        g.proc.close(ctx.registry, 1);
        if let Some((status, why)) = self.stopping.clone() {
            return self.done(chan, status, why);
        }
        match (code, signal) {
            (Some(0), _) => self.call(ctx, chan, Call::Ping),
            (Some(127), _) => self.fail(
                ctx,
                chan,
                "git: not found on this host (exit code 127)".into(),
            ),
            (Some(c), _) => {
                let why = match g.tail.as_str() {
                    "" => format!("git failed (exit code {c}); see its output above"),
                    tail => format!("git failed (exit code {c}): {tail}"),
                };
                self.fail(ctx, chan, why)
            }
            (None, Some(s)) => self.fail(ctx, chan, format!("git was killed by signal {s}")),
            _ => self.fail(ctx, chan, "git ended with an unknown status".into()),
        }
    }

    // ---- Docker calls ----------------------------------------------------

    fn api(&self) -> Api {
        self.api.unwrap_or_else(|| Api::new(api::OLDEST_SUPPORTED))
    }

    fn request(&mut self, call: Call) -> Result<Request, String> {
        let api = self.api();
        let name = self.spec.container.clone();
        let old_id = self.old.as_ref().map(|o| o.id.clone()).unwrap_or_default();
        let new_id = self.new_id.clone().unwrap_or_default();
        Ok(match call {
            Call::Ping => Api::ping(),
            Call::Build => api.build(&api::BuildOptions {
                tag: Some(self.spec.image.clone()),
                dockerfile: Some(self.spec.dockerfile.clone()),
                ..Default::default()
            }),
            Call::InspectOld => api.inspect_container(&name),
            Call::RenameOld => api.rename(&old_id, &self.parked_name()),
            Call::Create => api.create_container(Some(&name), self.create_body()?),
            Call::PutEnvFile => {
                let (dir, tar) = self.env_file_tar()?;
                api.put_archive(&new_id, &dir, tar)
            }
            Call::StopOld => api.stop(&old_id, Some(STOP_GRACE_S)),
            Call::StartNew => api.start(&new_id),
            Call::HealthInspect => api.inspect_container(&new_id),
            Call::ExecCreate => {
                let cmd = self
                    .spec
                    .health
                    .as_ref()
                    .and_then(|h| h.cmd.clone())
                    .unwrap_or_default();
                api.exec_create(
                    &new_id,
                    &ExecConfig {
                        cmd,
                        ..Default::default()
                    },
                )
            }
            Call::ExecStart => api.exec_start_detached(self.exec_id()),
            Call::ExecInspect => api.exec_inspect(self.exec_id()),
            Call::RemoveOld => api.remove(&old_id, true, false),
            Call::RemoveNew => api.remove(&new_id, true, false),
            Call::RenameBack => api.rename(&old_id, &name),
            Call::StartOld => api.start(&old_id),
        })
    }

    fn exec_id(&self) -> &str {
        self.health
            .as_ref()
            .and_then(|h| h.exec_id.as_deref())
            .unwrap_or("")
    }

    /// What the last health check found.
    fn health_note(&mut self, note: String) {
        if let Some(h) = &mut self.health {
            h.note = note;
        }
    }

    fn parked_mark(&self, old_id: &str, old_running: bool) -> super::parked::Parked {
        super::parked::Parked {
            job_id: self.job_id.clone(),
            container: self.spec.container.clone(),
            parked: self.parked_name(),
            old_id: old_id.to_owned(),
            old_running,
            healthy: false,
        }
    }

    fn stop_old_or_start(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        let stop = self.old.as_ref().is_some_and(|o| o.running);
        self.call(ctx, chan, if stop { Call::StopOld } else { Call::StartNew });
    }

    /// The env file as a one-file tar for `PUT /archive`, and the directory
    /// it unpacks into. Put into the created container's own filesystem
    /// rather than bind-mounted from a host file: nothing is written on the
    /// runner's disk, and it survives restarts (a bind source removed after
    /// start breaks the next `docker restart`: runc cannot mount it).
    fn env_file_tar(&self) -> Result<(String, Vec<u8>), String> {
        let path = self.spec.env_file.as_deref().unwrap_or_default();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = if dir.is_empty() { "/" } else { dir };
        let mut text = String::new();
        // The file holds the secrets unless they are delivered as files.
        let secrets: &[(String, String)] = match self.spec.secrets_delivery {
            SecretsDelivery::EnvFile => &self.secrets,
            SecretsDelivery::Env | SecretsDelivery::Files => &[],
        };
        for (k, v) in self.env.iter().chain(secrets) {
            if v.contains('\n') {
                return Err(format!("env file: the value of {k} holds a newline"));
            }
            text.push_str(&format!("{k}={v}\n"));
        }
        Ok((
            dir.to_owned(),
            super::tar::single_file(name, 0o600, text.as_bytes()),
        ))
    }

    /// Where the old container waits while the new one proves itself.
    fn parked_name(&self) -> String {
        let tail: String = self
            .job_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        format!("{}-old-{tail}", self.spec.container)
    }

    fn create_body(&self) -> Result<Vec<u8>, String> {
        let s = &self.spec;
        let mut labels = Map::new();
        for (k, v) in &s.labels {
            labels.insert(k.clone(), json!(v));
        }
        labels.insert("tether.app".into(), json!(s.app));
        labels.insert("tether.deployment".into(), json!(self.job_id));
        labels.insert(
            crate::protocol::secret_env::DELIVERY_LABEL.into(),
            json!(s.secrets_delivery.as_str()),
        );
        if s.secrets_delivery == SecretsDelivery::Env && !self.secrets.is_empty() {
            // Names only: every inspect answer masks these values.
            let names: Vec<&str> = self.secrets.iter().map(|(k, _)| k.as_str()).collect();
            labels.insert(
                crate::protocol::secret_env::SECRETS_LABEL.into(),
                json!(names.join(",")),
            );
        }
        let mut mounts = Vec::new();
        if let Some(dir) = &self.secrets_dir {
            // `Mounts`, not `Binds`: a missing source (memory lost at a
            // reboot) is an error at start, never an empty directory
            // Docker makes on the disk.
            mounts.push(json!({
                "Type": "bind",
                "Source": dir.display().to_string(),
                "Target": secret_files::TARGET,
                "ReadOnly": true,
            }));
        }
        let mut exposed = Map::new();
        let mut bindings = Map::new();
        for p in &s.ports {
            let key = format!("{}/{}", p.container, p.proto);
            exposed.insert(key.clone(), json!({}));
            let entry = bindings.entry(key).or_insert_with(|| json!([]));
            if let Value::Array(a) = entry {
                a.push(json!({"HostIp": p.host_ip.clone().unwrap_or_default(), "HostPort": p.host.to_string()}));
            }
        }
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let body = json!({
            "Image": s.image,
            "Env": env,
            "Labels": labels,
            "ExposedPorts": exposed,
            "HostConfig": {
                "PortBindings": bindings,
                "Binds": s.volumes,
                "Mounts": mounts,
                "RestartPolicy": {"Name": s.restart},
            },
        });
        serde_json::to_vec(&body).map_err(|e| format!("create body: {e}"))
    }

    fn call(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, call: Call) {
        let Some(socket) = self.socket.clone() else {
            let why = "Docker is switched off on this runner (--docker-socket off)".to_owned();
            return self.answer(ctx, chan, call, Err(why));
        };
        let req = match self.request(call) {
            Ok(r) => r,
            Err(e) => return self.answer(ctx, chan, call, Err(e)),
        };
        let (x, build, timeout) = if call == Call::Build {
            let root = self.context_dir();
            let ctx_scan = Context::scan(&root, &self.spec.dockerfile);
            let scan = match ctx_scan {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("reading the build context {}: {e}", root.display());
                    return self.answer(ctx, chan, call, Err(why));
                }
            };
            self.note(
                chan,
                step::BUILD,
                &format!(
                    "building {} from {} ({} files in the context)",
                    self.spec.image,
                    root.display(),
                    scan.len()
                ),
            );
            let x = Exchange::new(&req, "build", Answer::Stream)
                .with_upload(Box::new(scan.into_stream()));
            let build = BuildStream {
                lines: LineSplitter::new(MAX_LINE),
                status: None,
                error_body: Vec::new(),
            };
            (x, Some(build), BUILD_TIMEOUT)
        } else {
            let timeout = if call == Call::StopOld {
                CALL_TIMEOUT + Duration::from_secs(u64::from(STOP_GRACE_S))
            } else {
                CALL_TIMEOUT
            };
            let x = Exchange::new(&req, "deploy call", Answer::Whole(MAX_ANSWER));
            (x, None, timeout)
        };
        let ec = match EngineCall::start(ctx, &socket, x) {
            Ok(ec) => ec.deadline(ctx, timeout, JobTimer::Deploy),
            Err(CallError::Connect(e)) => {
                let why = format!(
                    "cannot reach the Docker engine at {}: {e}",
                    socket.display()
                );
                return self.answer(ctx, chan, call, Err(why));
            }
            Err(e) => {
                let why = format!("cannot watch the Docker socket: {e}");
                return self.answer(ctx, chan, call, Err(why));
            }
        };
        self.phase = Phase::Call(Box::new(InFlight {
            call,
            ec,
            build,
            stalled: false,
        }));
        self.drive(ctx, chan);
    }

    fn context_dir(&self) -> PathBuf {
        let root = match &self.spec.path {
            Some(p) if self.spec.git_url.is_none() => PathBuf::from(p),
            _ => self.checkout.clone(),
        };
        root.join(&self.spec.context)
    }

    fn drop_io(&mut self, ctx: &mut Ctx<'_>, x: InFlight) {
        x.ec.close(ctx);
    }

    /// Write what the socket takes, read what it has.
    fn drive(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        let Some(Phase::Call(mut x)) = self.take_phase(|p| matches!(p, Phase::Call(_))) else {
            return;
        };
        match self.pump(ctx, &mut x, chan) {
            Got::Wait => self.phase = Phase::Call(x),
            Got::Answer(resp) => {
                let call = x.call;
                self.drop_io(ctx, *x);
                self.answer(ctx, chan, call, Ok(resp));
            }
            Got::StreamEnd => {
                self.drop_io(ctx, *x);
                let r = match self.build_error.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                self.built(ctx, chan, r);
            }
            Got::Failed(why) => {
                let call = x.call;
                self.drop_io(ctx, *x);
                self.answer(ctx, chan, call, Err(why));
            }
        }
    }

    fn pump(&mut self, ctx: &mut Ctx<'_>, x: &mut InFlight, chan: &mut OutChannel) -> Got {
        x.stalled = false;
        loop {
            if x.build.is_some() && !chan.has_room() {
                // Backpressure: the engine waits for us.
                x.stalled = true;
                return Got::Wait;
            }
            let got = x.ec.drive(ctx);
            let ended = match (got, x.build.as_mut()) {
                (engine::Got::Wait, _) => return Got::Wait,
                (engine::Got::Again, _) => {
                    x.stalled = true;
                    return Got::Wait;
                }
                (engine::Got::Answer(resp, _), _) => return Got::Answer(resp),
                (engine::Got::Failed(e), build) => {
                    return Got::Failed(match e {
                        CallError::Http(e) if build.is_some() => {
                            format!("the build stream broke: {e}")
                        }
                        CallError::Http(e) => format!("Docker's answer: {e}"),
                        CallError::Io(e) => format!("reading from the Docker engine: {e}"),
                        CallError::WriteZero => "the Docker socket took no bytes".into(),
                        CallError::Upload(e) => format!("reading the build context: {e}"),
                        e => format!("Docker socket: {e}"),
                    })
                }
                (engine::Got::Head(h), Some(b)) => {
                    b.status = Some(h.status);
                    continue;
                }
                (engine::Got::Body(body), Some(b)) => {
                    if b.status.is_some_and(|s| s >= 400) {
                        let take = body
                            .len()
                            .min(MAX_ANSWER.saturating_sub(b.error_body.len()));
                        b.error_body.extend_from_slice(&body[..take]);
                        continue;
                    }
                    let mut input = body;
                    loop {
                        let s = b.lines.feed(input);
                        input = &input[s.consumed..];
                        let Some(line) = s.item else { break };
                        let text = line.bytes.to_vec();
                        build_line(&text, &self.redact, chan, &mut self.build_error);
                    }
                    continue;
                }
                (engine::Got::End, _) => true,
                (engine::Got::Eof, _) => match x.ec.stream_eof() {
                    Ok(ended) => ended,
                    Err(e) => return Got::Failed(format!("the build stream broke: {e}")),
                },
                // Streamed events without a stream: not asked for.
                (engine::Got::Head(_) | engine::Got::Body(_), None) => continue,
            };
            return self.build_ended(x, ended, chan);
        }
    }

    /// The build stream ended (`ended`: its answer was whole) or its
    /// connection closed.
    fn build_ended(&mut self, x: &mut InFlight, ended: bool, chan: &mut OutChannel) -> Got {
        let Some(b) = x.build.as_mut() else {
            return Got::Failed("Docker's answer: truncated response".into());
        };
        if let Some(l) = b.lines.finish() {
            let text = l.bytes.to_vec();
            build_line(&text, &self.redact, chan, &mut self.build_error);
        }
        if let Some(s) = b.status.filter(|s| *s >= 400) {
            let msg = String::from_utf8_lossy(&b.error_body).into_owned();
            let msg = serde_json::from_str::<Value>(&msg)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(msg);
            return Got::Failed(format!("the build was refused ({s}): {}", msg.trim()));
        }
        if !ended {
            return Got::Failed("the Docker engine closed the build stream early".into());
        }
        Got::StreamEnd
    }

    // ---- the sequence ----------------------------------------------------

    /// An exchange ended: decide the next step.
    fn answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        chan: &mut OutChannel,
        call: Call,
        r: Result<Response, String>,
    ) {
        let checked = r.and_then(|resp| api::check(resp).map_err(|e| e.to_string()));
        let rolling_back = matches!(call, Call::RemoveNew | Call::RenameBack | Call::StartOld);
        if self.failure.is_some()
            && !rolling_back
            && !matches!(call, Call::Ping | Call::Build | Call::RemoveOld)
        {
            // Cancel or timeout arrived while this call was in flight:
            // keep what it did, then put the old container back.
            if let Ok(resp) = &checked {
                match call {
                    Call::Create => {
                        if let Ok(c) = serde_json::from_slice::<CreatedContainer>(&resp.body) {
                            self.new_id = Some(c.id);
                        }
                    }
                    Call::RenameOld => {
                        if let Some(o) = &mut self.old {
                            o.renamed = true;
                        }
                    }
                    Call::StopOld => {
                        if let Some(o) = &mut self.old {
                            o.stopped = true;
                        }
                    }
                    _ => {}
                }
            }
            return self.rollback(ctx, chan);
        }
        match call {
            Call::Ping | Call::Build => self.source_answered(ctx, chan, call, checked),
            Call::InspectOld
            | Call::RenameOld
            | Call::Create
            | Call::PutEnvFile
            | Call::StopOld
            | Call::StartNew => self.replace_answered(ctx, chan, call, checked),
            Call::HealthInspect | Call::ExecCreate | Call::ExecStart | Call::ExecInspect => {
                self.health_answered(ctx, chan, call, checked)
            }
            Call::RemoveOld | Call::RemoveNew | Call::RenameBack | Call::StartOld => {
                self.cleanup_answered(ctx, chan, call, checked)
            }
        }
    }

    /// The engine answered (Ping) or built the image (Build).
    fn source_answered(
        &mut self,
        ctx: &mut Ctx<'_>,
        chan: &mut OutChannel,
        call: Call,
        checked: Result<Response, String>,
    ) {
        match call {
            Call::Ping => match checked.and_then(|resp| {
                api::engine_version_from_ping(&resp.head).map_err(|e| e.to_string())
            }) {
                Ok(v) => match api::negotiate(v, None) {
                    Ok(v) => {
                        self.api = Some(Api::new(v));
                        if let Some((status, why)) = self.stopping.clone() {
                            return self.done(chan, status, why);
                        }
                        let next = if self.spec.build {
                            Call::Build
                        } else {
                            Call::InspectOld
                        };
                        self.call(ctx, chan, next);
                    }
                    Err(e) => self.fail(ctx, chan, format!("Docker engine: {e}")),
                },
                Err(e) => self.fail(ctx, chan, format!("Docker engine: {e}")),
            },
            Call::Build => self.built(ctx, chan, checked.map(|_| ())),
            // The other steps are answered by their own group (`answer`).
            _ => {}
        }
    }

    /// A step of the replacement: the old container out of the way, the
    /// new one created, filled and started.
    fn replace_answered(
        &mut self,
        ctx: &mut Ctx<'_>,
        chan: &mut OutChannel,
        call: Call,
        checked: Result<Response, String>,
    ) {
        match call {
            Call::InspectOld => match checked {
                Ok(resp) => match serde_json::from_slice::<ContainerInspect>(&resp.body) {
                    Ok(c) => {
                        self.note(
                            chan,
                            step::REPLACE,
                            &format!("current container {} ({})", short(&c.id), c.state.status),
                        );
                        // Written before the rename: a runner that dies
                        // from here on puts the old one back (parked.rs).
                        let mark = self.parked_mark(&c.id, c.state.running);
                        if let Err(e) = mark.save(&self.parked_file) {
                            let why = format!(
                                "cannot write {} before replacing the container: {e}",
                                self.parked_file.display()
                            );
                            return self.fail(ctx, chan, why);
                        }
                        self.old = Some(Old {
                            id: c.id,
                            running: c.state.running,
                            renamed: false,
                            stopped: false,
                        });
                        self.call(ctx, chan, Call::RenameOld);
                    }
                    Err(e) => self.fail(ctx, chan, format!("inspect {}: {e}", self.spec.container)),
                },
                Err(e) if e.contains("No such container") || e.contains("404") => {
                    self.note(chan, step::REPLACE, "no current container: first deploy");
                    self.call(ctx, chan, Call::Create);
                }
                Err(e) => self.fail(ctx, chan, format!("inspect {}: {e}", self.spec.container)),
            },
            Call::RenameOld => match checked {
                Ok(_) => {
                    if let Some(o) = &mut self.old {
                        o.renamed = true;
                    }
                    self.call(ctx, chan, Call::Create);
                }
                Err(e) => self.fail(ctx, chan, format!("rename the current container: {e}")),
            },
            Call::Create => match checked.and_then(|resp| {
                serde_json::from_slice::<CreatedContainer>(&resp.body).map_err(|e| e.to_string())
            }) {
                Ok(c) => {
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("created {} ({})", self.spec.container, short(&c.id)),
                    );
                    for w in &c.warnings {
                        self.note(chan, step::REPLACE, &format!("engine warning: {w}"));
                    }
                    self.new_id = Some(c.id);
                    if self.spec.env_file.is_some() {
                        return self.call(ctx, chan, Call::PutEnvFile);
                    }
                    self.stop_old_or_start(ctx, chan);
                }
                Err(e) => self.fail(ctx, chan, format!("create the new container: {e}")),
            },
            Call::PutEnvFile => match checked {
                Ok(_) => {
                    let path = self.spec.env_file.clone().unwrap_or_default();
                    let n = self.env.len()
                        + match self.spec.secrets_delivery {
                            SecretsDelivery::EnvFile => self.secrets.len(),
                            SecretsDelivery::Env | SecretsDelivery::Files => 0,
                        };
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("wrote {n} variable(s) to {path} in the container (mode 0600)"),
                    );
                    self.stop_old_or_start(ctx, chan);
                }
                Err(e) => self.fail(ctx, chan, format!("write the env file: {e}")),
            },
            Call::StopOld => match checked {
                Ok(_) => {
                    let mut id = String::new();
                    if let Some(o) = &mut self.old {
                        o.stopped = true;
                        id = short(&o.id).to_owned();
                    }
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("stopped the old container {id}"),
                    );
                    self.call(ctx, chan, Call::StartNew);
                }
                Err(e) => self.fail(ctx, chan, format!("stop the old container: {e}")),
            },
            Call::StartNew => match checked {
                Ok(_) => {
                    let timeout = self.spec.health.as_ref().map_or(30, |h| h.timeout_s.max(1));
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("started; waiting up to {timeout} s for it to be healthy"),
                    );
                    self.health = Some(Health {
                        deadline: Instant::now() + Duration::from_secs(timeout),
                        note: "not checked yet".into(),
                        exec_id: None,
                        recheck_exec: false,
                    });
                    self.wait_health(ctx, chan, HEALTH_EVERY);
                }
                Err(e) => self.fail(ctx, chan, format!("start the new container: {e}")),
            },
            // The other steps are answered by their own group (`answer`).
            _ => {}
        }
    }

    /// A health check of the new container: healthy, not yet (look again),
    /// or failed.
    fn health_answered(
        &mut self,
        ctx: &mut Ctx<'_>,
        chan: &mut OutChannel,
        call: Call,
        checked: Result<Response, String>,
    ) {
        match call {
            Call::HealthInspect => match checked.and_then(|resp| {
                serde_json::from_slice::<ContainerInspect>(&resp.body).map_err(|e| e.to_string())
            }) {
                Ok(c) if !c.state.running => {
                    let why = format!(
                        "the new container is not running ({}, exit code {}{})",
                        c.state.status,
                        c.state.exit_code,
                        if c.state.error.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", c.state.error)
                        }
                    );
                    self.fail(ctx, chan, why);
                }
                Ok(_) => {
                    let h = self.spec.health.clone().unwrap_or_default();
                    if h.cmd.is_some() {
                        self.call(ctx, chan, Call::ExecCreate);
                    } else if let Some(port) = h.tcp_port {
                        // A connect to loopback is answered at once
                        // (accepted or refused), so a short blocking
                        // connect cannot stall the loop.
                        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                        match std::net::TcpStream::connect_timeout(
                            &addr,
                            Duration::from_millis(200),
                        ) {
                            Ok(_) => self.healthy(
                                ctx,
                                chan,
                                &format!("TCP port {port} accepts connections"),
                            ),
                            Err(e) => {
                                self.health_note(format!("TCP port {port}: {e}"));
                                self.wait_health(ctx, chan, HEALTH_EVERY);
                            }
                        }
                    } else {
                        self.healthy(ctx, chan, "running");
                    }
                }
                Err(e) => self.fail(ctx, chan, format!("inspect the new container: {e}")),
            },
            Call::ExecCreate => match checked.and_then(|resp| {
                serde_json::from_slice::<CreatedExec>(&resp.body).map_err(|e| e.to_string())
            }) {
                Ok(e) => {
                    if let Some(h) = &mut self.health {
                        h.exec_id = Some(e.id);
                    }
                    self.call(ctx, chan, Call::ExecStart);
                }
                Err(e) => {
                    self.health_note(format!("health command: {e}"));
                    self.wait_health(ctx, chan, HEALTH_EVERY);
                }
            },
            Call::ExecStart => match checked {
                Ok(_) => self.call(ctx, chan, Call::ExecInspect),
                Err(e) => {
                    self.health_note(format!("health command: {e}"));
                    self.wait_health(ctx, chan, HEALTH_EVERY);
                }
            },
            Call::ExecInspect => match checked.and_then(|resp| {
                serde_json::from_slice::<ExecInspect>(&resp.body).map_err(|e| e.to_string())
            }) {
                Ok(e) if e.running => {
                    // Look again shortly; the health deadline bounds it.
                    if let Some(h) = &mut self.health {
                        h.note = "the health command is still running".into();
                        h.recheck_exec = true;
                    }
                    self.wait_health(ctx, chan, Duration::from_millis(200));
                }
                Ok(ExecInspect {
                    exit_code: Some(0), ..
                }) => self.healthy(ctx, chan, "health command exited 0"),
                Ok(e) => {
                    self.health_note(format!(
                        "health command exited {}",
                        e.exit_code.unwrap_or(-1)
                    ));
                    self.wait_health(ctx, chan, HEALTH_EVERY);
                }
                Err(e) => {
                    self.health_note(format!("health command: {e}"));
                    self.wait_health(ctx, chan, HEALTH_EVERY);
                }
            },
            // The other steps are answered by their own group (`answer`).
            _ => {}
        }
    }

    /// The end: the old container removed after success, or a step of the
    /// rollback (new removed, old renamed back and started).
    fn cleanup_answered(
        &mut self,
        ctx: &mut Ctx<'_>,
        chan: &mut OutChannel,
        call: Call,
        checked: Result<Response, String>,
    ) {
        match call {
            Call::RemoveOld => {
                if let Err(e) = checked {
                    // The new app runs; a leftover old container is only clutter.
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("could not remove the old container: {e}"),
                    );
                } else {
                    self.note(chan, step::REPLACE, "removed the old container");
                }
                self.done(chan, JobStatus::Succeeded, String::new());
            }
            Call::RemoveNew => {
                if let Err(e) = checked {
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("could not remove the new container: {e}"),
                    );
                } else {
                    self.note(chan, step::REPLACE, "removed the new container");
                }
                self.new_id = None;
                self.rollback(ctx, chan);
            }
            Call::RenameBack => {
                if let Err(e) = checked {
                    self.note(
                        chan,
                        step::REPLACE,
                        &format!("could not rename the old container back: {e}"),
                    );
                }
                if let Some(o) = &mut self.old {
                    o.renamed = false;
                }
                self.rollback(ctx, chan);
            }
            Call::StartOld => {
                let why = self.failure.clone().unwrap_or_default();
                match checked {
                    Ok(_) => {
                        self.note(chan, step::REPLACE, "the previous container runs again");
                        self.finish_failed(
                            chan,
                            format!("{why}; the previous container runs again"),
                        );
                    }
                    Err(e) => {
                        self.note(
                            chan,
                            step::REPLACE,
                            &format!("could not restart the previous container: {e}"),
                        );
                        self.finish_failed(
                            chan,
                            format!("{why}; restarting the previous container failed too: {e}"),
                        );
                    }
                }
            }
            // The other steps are answered by their own group (`answer`).
            _ => {}
        }
    }

    fn built(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.note(chan, step::BUILD, &format!("built {}", self.spec.image));
                self.call(ctx, chan, Call::InspectOld);
            }
            Err(e) => self.fail(ctx, chan, format!("build failed: {e}")),
        }
    }

    /// Check again after `after`, unless the health deadline passed.
    fn wait_health(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, after: Duration) {
        if let Some(h) = self
            .health
            .as_ref()
            .filter(|h| Instant::now() >= h.deadline)
        {
            let timeout = self.spec.health.as_ref().map_or(30, |h| h.timeout_s.max(1));
            let why = format!(
                "the new container was not healthy within {timeout} s (last check: {})",
                h.note
            );
            return self.fail(ctx, chan, why);
        }
        self.phase = Phase::Pause(ctx.schedule(after, JobTimer::Deploy));
    }

    fn healthy(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, how: &str) {
        self.note(chan, step::REPLACE, &format!("healthy: {how}"));
        if let Some(o) = self.old.clone() {
            // Proven: a runner dying now keeps the new one (parked.rs).
            let mut mark = self.parked_mark(&o.id, o.running);
            mark.healthy = true;
            if let Err(e) = mark.save(&self.parked_file) {
                debug!("jobs", "{}: {e}", self.parked_file.display());
            }
            return self.call(ctx, chan, Call::RemoveOld);
        }
        self.done(chan, JobStatus::Succeeded, String::new());
    }

    /// Something failed: before the old container was touched, stop here;
    /// after, put it back.
    fn fail(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, why: String) {
        let step_ = if self.old.is_some() || self.new_id.is_some() {
            step::REPLACE
        } else if self.api.is_some() {
            step::BUILD
        } else {
            step::SOURCE
        };
        self.note(chan, step_, &format!("failed: {why}"));
        if self.failure.is_none() {
            self.failure = Some(why);
        }
        self.rollback(ctx, chan);
    }

    fn cleanup_new_then_done(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
        self.rollback(ctx, chan);
    }

    /// The next rollback call, or the end.
    fn rollback(&mut self, ctx: &mut Ctx<'_>, chan: &mut OutChannel) {
        if self.new_id.is_some() {
            return self.call(ctx, chan, Call::RemoveNew);
        }
        let why = self.failure.clone().unwrap_or_else(|| "failed".into());
        match self.old.clone() {
            Some(o) if o.renamed => self.call(ctx, chan, Call::RenameBack),
            Some(o) if o.stopped && o.running => {
                if let Some(old) = &mut self.old {
                    old.stopped = false;
                }
                self.call(ctx, chan, Call::StartOld)
            }
            Some(o) if o.running => {
                self.finish_failed(chan, format!("{why}; the previous container still runs"))
            }
            _ => self.finish_failed(chan, why),
        }
    }

    fn finish_failed(&mut self, chan: &mut OutChannel, why: String) {
        match self.stopping.clone() {
            Some((status, stop_why)) if why == stop_why => self.done(chan, status, why),
            Some((status, stop_why)) => self.done(chan, status, format!("{stop_why} ({why})")),
            None => self.done(chan, JobStatus::Failed, why),
        }
    }

    fn done(&mut self, chan: &mut OutChannel, status: JobStatus, reason: String) {
        if matches!(self.phase, Phase::Done(_)) {
            return;
        }
        if let Some(dir) = &self.secrets_dir {
            if status == JobStatus::Succeeded {
                secret_files::remove_others(dir);
            } else {
                secret_files::remove(dir);
            }
        }
        // Over: the old container was removed or is back under its name
        // (a failed rename back keeps the file, for the next start).
        if status == JobStatus::Succeeded || self.old.as_ref().is_none_or(|o| !o.renamed) {
            let _ = std::fs::remove_file(&self.parked_file);
        }
        if status == JobStatus::Succeeded {
            self.note(
                chan,
                step::REPLACE,
                &format!("deployed {} as {}", self.spec.image, self.spec.container),
            );
        }
        self.phase = Phase::Done(Outcome { status, reason });
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One line of build progress: its text to the log, an error remembered.
fn build_line(line: &[u8], redact: &Redactor, chan: &mut OutChannel, error: &mut Option<String>) {
    match serde_json::from_slice::<ProgressLine>(line) {
        Ok(p) => {
            if let Some(e) = p.error_message() {
                now_step(
                    chan,
                    redact,
                    StreamTag::Stderr,
                    step::BUILD,
                    &format!("{e}\n"),
                );
                if error.is_none() {
                    *error = Some(e.trim().to_owned());
                }
            } else if let Some(s) = &p.stream {
                now_step(chan, redact, StreamTag::Stdout, step::BUILD, s);
            } else if let Some(s) = &p.status {
                now_step(
                    chan,
                    redact,
                    StreamTag::Stdout,
                    step::BUILD,
                    &format!("{s}\n"),
                );
            } else if let Some(id) = p.aux.as_ref().and_then(|a| a["ID"].as_str()) {
                now_step(
                    chan,
                    redact,
                    StreamTag::Stdout,
                    step::BUILD,
                    &format!("image {id}\n"),
                );
            }
        }
        Err(_) => {
            let mut text = String::from_utf8_lossy(line).into_owned();
            text.push('\n');
            now_step(chan, redact, StreamTag::Stdout, step::BUILD, &text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Limits;
    use crate::protocol::deploy::PortMap;

    fn spec() -> DeploySpec {
        DeploySpec {
            app: "web".into(),
            image: "web:jb_1".into(),
            build: true,
            container: "web".into(),
            ports: vec![PortMap {
                host: 8080,
                container: 80,
                proto: "tcp".into(),
                host_ip: None,
            }],
            volumes: vec!["/srv/data:/data:ro".into()],
            restart: "always".into(),
            labels: vec![("tier".into(), "front".into())],
            ..Default::default()
        }
    }

    #[test]
    fn the_create_call_carries_env_secrets_ports_binds_and_labels() {
        let d = Deploy::new(
            spec(),
            "jb_1",
            vec![("A".into(), "1".into())],
            &[("TOKEN".into(), "s3cret".into())],
            None,
            Path::new("/nonexistent"),
            None,
        );
        let body: Value = serde_json::from_slice(&d.create_body().unwrap()).unwrap();
        assert_eq!(body["Image"], "web:jb_1");
        assert_eq!(body["Env"], json!(["A=1", "TOKEN=s3cret"]));
        assert_eq!(body["Labels"]["tier"], "front");
        assert_eq!(body["Labels"]["tether.deployment"], "jb_1");
        assert_eq!(body["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(
            body["HostConfig"]["PortBindings"]["80/tcp"],
            json!([{"HostIp": "", "HostPort": "8080"}])
        );
        assert_eq!(body["HostConfig"]["Binds"], json!(["/srv/data:/data:ro"]));
        assert_eq!(body["HostConfig"]["RestartPolicy"]["Name"], "always");
        assert_eq!(d.parked_name(), "web-old-jb1");
    }

    #[test]
    fn each_delivery_puts_secrets_where_it_says_and_labels_only_names() {
        let secrets = [("TOKEN".to_owned(), "s3cret".to_owned())];
        let body = |delivery, dir: Option<&str>| {
            let mut s = spec();
            s.secrets_delivery = delivery;
            s.env_file = Some("/app/.env".into());
            let mut d = Deploy::new(
                s,
                "jb_1",
                vec![("A".into(), "1".into())],
                &secrets,
                None,
                Path::new("/nonexistent"),
                None,
            );
            d.secrets_dir = dir.map(PathBuf::from);
            let file = String::from_utf8_lossy(&d.env_file_tar().unwrap().1).into_owned();
            let v: Value = serde_json::from_slice(&d.create_body().unwrap()).unwrap();
            (v, file)
        };
        let (v, file) = body(SecretsDelivery::Files, Some("/run/tether/secrets/web/jb_1"));
        assert_eq!(v["Env"], json!(["A=1"]));
        assert!(!v.to_string().contains("s3cret") && !file.contains("s3cret"));
        assert_eq!(
            v["HostConfig"]["Mounts"],
            json!([{"Type": "bind", "Source": "/run/tether/secrets/web/jb_1",
                "Target": "/run/secrets", "ReadOnly": true}])
        );
        assert_eq!(v["Labels"]["tether.secrets_delivery"], "files");
        assert!(v["Labels"]["tether.secrets"].is_null());
        let (v, file) = body(SecretsDelivery::Env, None);
        assert_eq!(v["Env"], json!(["A=1", "TOKEN=s3cret"]));
        assert_eq!(v["Labels"]["tether.secrets"], "TOKEN", "names only");
        assert!(file.contains("TOKEN=s3cret"), "as before the field");
        let (v, file) = body(SecretsDelivery::EnvFile, None);
        assert_eq!(v["Env"], json!(["A=1"]));
        assert!(file.contains("A=1\nTOKEN=s3cret\n"), "{file}");
        assert_eq!(v["HostConfig"]["Mounts"], json!([]));
    }

    fn records(chan: &mut OutChannel) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        while let Some(frame) = chan.next_frame() {
            let payload = &frame[16..];
            out.push((
                payload[8],
                String::from_utf8_lossy(&payload[JOB_RECORD_HEADER_LEN..]).into_owned(),
            ));
        }
        out
    }

    const JOB_RECORD_HEADER_LEN: usize = crate::protocol::JOB_RECORD_HEADER;

    #[test]
    fn build_lines_become_step_2_output_with_secrets_masked_and_errors_kept() {
        let dir = std::env::temp_dir().join(format!("tether-deploy-{}", std::process::id()));
        let limits = Limits {
            mem: 1 << 20,
            spool: 1 << 20,
            window: 1 << 20,
        };
        let mut chan = OutChannel::spooled(7, limits, dir.join("7.spool"));
        chan.link_up(None).unwrap();
        let redact = Redactor::new([b"hunter2".to_vec()]);
        let mut err = None;
        for line in [
            &br#"{"stream":"Step 1/2 : FROM x\n"}"#[..],
            br#"{"stream":"echo hunter2\n"}"#,
            br#"{"errorDetail":{"message":"boom"},"error":"boom"}"#,
            br#"{"error":"later"}"#,
            b"not json",
        ] {
            build_line(line, &redact, &mut chan, &mut err);
        }
        assert_eq!(err.as_deref(), Some("boom"), "the first error is the cause");
        let got = records(&mut chan);
        assert!(got.iter().all(|(s, _)| *s == step::BUILD), "{got:?}");
        let text: String = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(text, "Step 1/2 : FROM x\necho ***\nboom\nlater\nnot json\n");
        let _ = std::fs::remove_dir_all(dir);
    }
}
