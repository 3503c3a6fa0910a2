//! Child processes inside the event loop: spawn with pipes, read their
//! output without blocking, bound it, time it out, reap it. Used for the
//! firewall probes of the fingerprint now; jobs and scripts build on it.
//!
//! ```text
//!  spawn ──▶ Running ──(stdout/stderr readable: drain to WouldBlock, ≤ 64 KiB per pass)──┐
//!              │  ▲                                                                    │
//!              │  └────────────────────────────────────────────────────────────────────┘
//!              ├── stdout past its limit ──▶ SIGKILL the group, stop reading ──┐
//!              ├── deadline passed ────────▶ SIGKILL the group, stop reading ──┤
//!              └── both pipes at EOF ──────────────────────────────────────────┤
//!                                                                              ▼
//!              SIGCHLD (self-pipe) or the owner's poll ──▶ waitpid(WNOHANG) ──▶ done ──▶ finish() → Output
//! ```
//!
//! The child gets its own process group (so a timeout kills what it
//! started too), an empty signal mask, stdin from /dev/null, and no fd of
//! ours: every fd this process opens is `O_CLOEXEC` (std's pipes, mio's
//! sockets and epoll, the signal self-pipe), and fds we inherited without
//! it (a careless parent, a test harness) are marked close-on-exec in the
//! child before exec. The read ends are made
//! non-blocking and registered with mio by the owner's tokens; stdout is
//! bounded (past the limit the child is killed), stderr keeps its first
//! bytes and the rest is read and thrown away so the child never blocks on
//! it. Timers belong to the owner: it asks [`Child::deadline`], and calls
//! [`Child::check_deadline`] and [`Child::try_reap`] when its timer or a
//! SIGCHLD fires. A child dropped before it was reaped is killed and reaped
//! on the spot, so none is left a zombie.

use crate::sys;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bytes read from one pipe per readiness pass; more waits for the next
/// turn of the loop so one chatty child cannot starve the connection.
const MAX_READ_PER_PASS: usize = 64 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// What to run and within which bounds.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to (or replacing in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Most stdout bytes kept; past this the child is killed.
    pub stdout_limit: usize,
    /// Most stderr bytes kept; the rest is discarded.
    pub stderr_limit: usize,
    pub timeout: Duration,
}

impl Spec {
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Spec {
        Spec {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            env: Vec::new(),
            stdout_limit: 4 << 20,
            stderr_limit: 4 << 10,
            timeout: Duration::from_secs(10),
        }
    }

    /// `nft -j list ruleset`, for messages.
    pub fn command_line(&self) -> String {
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let mut s = name.into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// Why the child was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    Timeout(Duration),
    /// Its stdout passed the limit.
    OutputLimit(usize),
}

/// What a finished child left.
#[derive(Debug)]
pub struct Output {
    /// `None` only if the process could not be waited for (never in practice).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub killed: Option<Killed>,
}

impl Output {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.killed.is_none() && self.status.is_some_and(|s| s.success())
    }

    /// Why it did not succeed, in a few words: `timed out after 10s`,
    /// `exit status 1: Operation not permitted`.
    pub fn failure(&self) -> String {
        let mut s = match (self.killed, self.status) {
            (Some(Killed::Timeout(d)), _) => format!("timed out after {d:?}"),
            (Some(Killed::OutputLimit(n)), _) => format!("output larger than {n} bytes"),
            (None, Some(st)) => match (st.code(), st.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "ended".to_owned(),
            },
            (None, None) => "could not be waited for".to_owned(),
        };
        let err = String::from_utf8_lossy(&self.stderr);
        if let Some(line) = err.lines().map(str::trim).find(|l| !l.is_empty()) {
            s.push_str(": ");
            s.extend(line.chars().take(200));
        }
        s
    }
}

/// One read end, registered with mio.
struct Pipe {
    file: File,
    token: Token,
    buf: Vec<u8>,
    limit: usize,
    /// Past `limit`: kill the child (stdout) or discard (stderr).
    kill_past_limit: bool,
    /// Stopped at the pass cap with data maybe left.
    again: bool,
}

enum Drained {
    /// WouldBlock (or the pass cap: see `again`).
    Open,
    Eof,
    OverLimit,
}

impl Pipe {
    fn new(fd: OwnedFd, token: Token, limit: usize, kill: bool) -> io::Result<Pipe> {
        set_nonblocking(&fd)?;
        Ok(Pipe {
            file: File::from(fd),
            token,
            buf: Vec::new(),
            limit,
            kill_past_limit: kill,
            again: false,
        })
    }

    /// Read to WouldBlock, EOF, the limit or the per-pass cap.
    fn drain(&mut self) -> Drained {
        self.again = false;
        let mut chunk = [0u8; READ_CHUNK];
        let mut this_pass = 0;
        loop {
            if this_pass >= MAX_READ_PER_PASS {
                self.again = true;
                return Drained::Open;
            }
            match self.file.read(&mut chunk) {
                Ok(0) => return Drained::Eof,
                Ok(n) => {
                    this_pass += n;
                    let room = self.limit.saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                    if n > room && self.kill_past_limit {
                        return Drained::OverLimit;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO and friends: nothing more will come.
                Err(_) => return Drained::Eof,
            }
        }
    }
}

/// A running (or finished, not yet collected) child process.
pub struct Child {
    proc: std::process::Child,
    command: String,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
    stdout_buf: Vec<u8>,
    stderr_buf: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    status: Option<ExitStatus>,
    /// waitpid failed for good (ECHILD): nothing left to reap.
    unreapable: bool,
    killed: Option<Killed>,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.proc.id())
            .field("command", &self.command)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Child {
    /// Start `spec` with its stdout and stderr registered under `tokens`.
    /// The owner should have the SIGCHLD self-pipe installed first (else it
    /// must poll [`try_reap`](Self::try_reap)).
    pub fn spawn(
        spec: &Spec,
        registry: &Registry,
        tokens: [Token; 2],
        now: Instant,
    ) -> io::Result<Child> {
        let mut cmd = command(&spec.program, &spec.args, &spec.env);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = cmd.spawn()?;
        let (out, err) = (proc.stdout.take(), proc.stderr.take());
        Child::attach(proc, out, err, spec, registry, tokens, now)
    }

    fn attach(
        proc: std::process::Child,
        out: Option<std::process::ChildStdout>,
        err: Option<std::process::ChildStderr>,
        spec: &Spec,
        registry: &Registry,
        tokens: [Token; 2],
        now: Instant,
    ) -> io::Result<Child> {
        let mut child = Child {
            proc,
            command: spec.command_line(),
            stdout: None,
            stderr: None,
            stdout_buf: Vec::new(),
            stderr_buf: Vec::new(),
            deadline: now + spec.timeout,
            timeout: spec.timeout,
            status: None,
            unreapable: false,
            killed: None,
        };
        // From here a failure drops `child`, which kills and reaps it.
        if let Some(out) = out {
            let mut p = Pipe::new(OwnedFd::from(out), tokens[0], spec.stdout_limit, true)?;
            register(registry, &mut p)?;
            child.stdout = Some(p);
        }
        if let Some(err) = err {
            let mut p = Pipe::new(OwnedFd::from(err), tokens[1], spec.stderr_limit, false)?;
            register(registry, &mut p)?;
            child.stderr = Some(p);
        }
        Ok(child)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// `nft -j list ruleset`, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether `token` is one of this child's pipes.
    pub fn owns(&self, token: Token) -> bool {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .any(|p| p.token == token)
    }

    /// Readiness on one of the pipes: drain it.
    pub fn on_ready(&mut self, registry: &Registry, token: Token) {
        if self.stdout.as_ref().is_some_and(|p| p.token == token) {
            self.drain_stdout(registry);
        } else if self.stderr.as_ref().is_some_and(|p| p.token == token) {
            self.drain_stderr(registry);
        }
    }

    /// A pass stopped at its cap: there may be more to read before the
    /// loop sleeps (edge-triggered, so no new event would come).
    pub fn wants_again(&self) -> bool {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .any(|p| p.again)
    }

    pub fn on_again(&mut self, registry: &Registry) {
        if self.stdout.as_ref().is_some_and(|p| p.again) {
            self.drain_stdout(registry);
        }
        if self.stderr.as_ref().is_some_and(|p| p.again) {
            self.drain_stderr(registry);
        }
    }

    fn drain_stdout(&mut self, registry: &Registry) {
        let Some(p) = self.stdout.as_mut() else {
            return;
        };
        match p.drain() {
            Drained::Open => {}
            Drained::Eof => self.close_stdout(registry),
            Drained::OverLimit => {
                let limit = p.limit;
                self.kill(Killed::OutputLimit(limit));
                self.close_stdout(registry);
            }
        }
    }

    fn drain_stderr(&mut self, registry: &Registry) {
        let Some(p) = self.stderr.as_mut() else {
            return;
        };
        if let Drained::Eof | Drained::OverLimit = p.drain() {
            self.close_stderr(registry);
        }
    }

    fn close_stdout(&mut self, registry: &Registry) {
        if let Some(mut p) = self.stdout.take() {
            deregister(registry, &mut p);
            self.stdout_buf = p.buf;
        }
    }

    fn close_stderr(&mut self, registry: &Registry) {
        if let Some(mut p) = self.stderr.take() {
            deregister(registry, &mut p);
            self.stderr_buf = p.buf;
        }
    }

    /// Kill the child (and its group) once `now` is past the deadline;
    /// stop reading its pipes. True if it was killed now.
    pub fn check_deadline(&mut self, registry: &Registry, now: Instant) -> bool {
        if now < self.deadline || self.is_done() || self.killed.is_some() {
            return false;
        }
        self.kill(Killed::Timeout(self.timeout));
        // Keep what was read; a grandchild may hold the pipes open forever.
        self.drain_stdout(registry);
        self.drain_stderr(registry);
        self.close_stdout(registry);
        self.close_stderr(registry);
        true
    }

    /// SIGKILL the child's process group, once.
    fn kill(&mut self, why: Killed) {
        if self.killed.is_some() {
            return;
        }
        self.killed = Some(why);
        let Ok(pid) = libc::pid_t::try_from(self.proc.id()) else {
            return;
        };
        // The group id is the child's pid (process_group(0)); it stays
        // reserved while any member lives, so this cannot hit a stranger.
        sys::process::kill_group(pid, libc::SIGKILL);
    }

    /// `waitpid(pid, WNOHANG)`: true once the child has been reaped.
    pub fn try_reap(&mut self) -> bool {
        if self.status.is_some() || self.unreapable {
            return true;
        }
        match self.proc.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                true
            }
            Ok(None) => false,
            Err(_) => {
                // ECHILD: nothing to wait for (cannot happen unless someone
                // else reaped it); do not spin on it.
                self.unreapable = true;
                true
            }
        }
    }

    /// Reaped, and both pipes closed: [`finish`](Self::finish) may be called.
    pub fn is_done(&self) -> bool {
        (self.status.is_some() || self.unreapable) && self.stdout.is_none() && self.stderr.is_none()
    }

    /// Both pipes closed but not reaped yet: the owner should poll
    /// [`try_reap`](Self::try_reap) soon in case no SIGCHLD comes.
    pub fn awaiting_exit(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none() && !self.try_reaped()
    }

    fn try_reaped(&self) -> bool {
        self.status.is_some() || self.unreapable
    }

    /// What the child left. Call once [`is_done`](Self::is_done).
    pub fn finish(mut self, registry: &Registry) -> Output {
        self.close_stdout(registry);
        self.close_stderr(registry);
        Output {
            status: self.status,
            stdout: std::mem::take(&mut self.stdout_buf),
            stderr: std::mem::take(&mut self.stderr_buf),
            killed: self.killed,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.try_reaped() || self.try_reap() {
            return;
        }
        // Dropped while running (shutdown, owner gone): kill and reap now.
        // SIGKILL cannot be caught, so the wait is short. Pipes close with
        // their `File`s, which also removes them from epoll.
        self.kill(Killed::Timeout(Duration::ZERO));
        let _ = self.proc.wait();
    }
}

/// A command in its own process group (so killing the group kills what it
/// started too), with an empty signal mask and none of our fds: the base of
/// every child the runner starts (probes here, jobs in `jobs/process.rs`).
pub(crate) fn command(program: &Path, args: &[OsString], env: &[(OsString, OsString)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    sys::process::exec_clean(&mut cmd);
    cmd
}

fn register(registry: &Registry, p: &mut Pipe) -> io::Result<()> {
    registry.register(
        &mut SourceFd(&p.file.as_raw_fd()),
        p.token,
        Interest::READABLE,
    )
}

fn deregister(registry: &Registry, p: &mut Pipe) {
    let _ = registry.deregister(&mut SourceFd(&p.file.as_raw_fd()));
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    sys::fd::set_nonblocking(fd)
}

/// The first executable `name` in `$PATH`, then /usr/sbin and /sbin
/// (service managers often leave the sbin directories out of PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        Path::new("/usr/local/sbin"),
        Path::new("/usr/sbin"),
        Path::new("/sbin"),
    ];
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .chain(extra.iter().map(|p| p.to_path_buf()))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    /// Drive one child with a bare poll, as the event loop would (no
    /// SIGCHLD here: reaping is polled).
    fn run(spec: &Spec) -> (Output, u32, Duration) {
        let t0 = Instant::now();
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(8);
        let mut child = Child::spawn(spec, poll.registry(), [Token(1), Token(2)], t0).unwrap();
        let pid = child.pid();
        while !child.is_done() {
            let timeout = if child.wants_again() {
                Duration::ZERO
            } else {
                Duration::from_millis(20)
            };
            poll.poll(&mut events, Some(timeout)).unwrap();
            for e in events.iter() {
                assert!(child.owns(e.token()));
                child.on_ready(poll.registry(), e.token());
            }
            if child.wants_again() {
                child.on_again(poll.registry());
            }
            child.check_deadline(poll.registry(), Instant::now());
            child.try_reap();
            assert!(t0.elapsed() < Duration::from_secs(20), "child never ended");
        }
        let out = child.finish(poll.registry());
        (out, pid, t0.elapsed())
    }

    fn sh(script: &str) -> Spec {
        Spec::new("/bin/sh", &["-c", script])
    }

    /// Neither a zombie nor alive: waitpid knows nothing of it and it is
    /// no child of any thread of ours.
    fn assert_gone(pid: u32) {
        assert_eq!(
            sys::process::wait_nohang(pid as libc::pid_t),
            sys::process::Wait::Failed(libc::ECHILD),
            "pid {pid} still waitable"
        );
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            assert!(
                !children.split_whitespace().any(|c| c == pid.to_string()),
                "pid {pid} is still our child"
            );
        }
    }

    #[test]
    fn echo_hi() {
        let (out, pid, _) = run(&sh("echo hi"));
        assert!(out.success(), "{}", out.failure());
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"");
        assert_gone(pid);
    }

    #[test]
    fn exit_status_and_stderr_are_kept() {
        let mut spec =
            sh("echo out; echo 'first problem' >&2; head -c 100000 /dev/zero >&2; exit 3");
        spec.stderr_limit = 64;
        let (out, pid, _) = run(&spec);
        assert!(!out.success());
        assert_eq!(out.status.unwrap().code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        // Only the first bytes of stderr, the rest read and discarded.
        assert_eq!(out.stderr.len(), 64);
        assert_eq!(out.failure(), "exit status 3: first problem");
        assert_gone(pid);
    }

    #[test]
    fn big_output_is_bounded_and_the_child_killed() {
        let mut spec = sh("exec cat /dev/zero");
        spec.stdout_limit = 1 << 20;
        let (out, pid, took) = run(&spec);
        assert_eq!(out.killed, Some(Killed::OutputLimit(1 << 20)));
        assert_eq!(out.stdout.len(), 1 << 20);
        assert!(!out.success());
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert_gone(pid);
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        // A grandchild holding the pipe open must not keep us waiting.
        let mut spec = sh("sleep 30 & echo $!; wait");
        spec.timeout = Duration::from_millis(300);
        let (out, pid, took) = run(&spec);
        assert_eq!(
            out.killed,
            Some(Killed::Timeout(Duration::from_millis(300)))
        );
        assert!(out.failure().starts_with("timed out after 300ms"));
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_gone(pid);
        // The grandchild got the SIGKILL too. It is init's to reap, and
        // some inits never do: dead is enough, a zombie counts as dead.
        let grandchild: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let t0 = Instant::now();
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            let state = stat
                .as_deref()
                .ok()
                .and_then(|s| s.rsplit(')').next())
                .and_then(|s| s.split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "grandchild {grandchild} lives: {state:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn no_fd_of_ours_leaks_into_the_child() {
        // `ls` sees its own 0, 1, 2 and the fd of the directory it lists.
        let (out, _, _) = run(&Spec::new("/bin/ls", &["/proc/self/fd"]));
        assert!(out.success(), "{}", out.failure());
        let fds: Vec<u32> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(fds.len() <= 4, "{fds:?}");
    }

    #[test]
    fn dropping_a_running_child_kills_and_reaps_it() {
        let poll = Poll::new().unwrap();
        let child = Child::spawn(
            &sh("exec sleep 30"),
            poll.registry(),
            [Token(1), Token(2)],
            Instant::now(),
        )
        .unwrap();
        let pid = child.pid();
        drop(child);
        assert_gone(pid);
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let poll = Poll::new().unwrap();
        let e = Child::spawn(
            &Spec::new("/nonexistent/prog", &[]),
            poll.registry(),
            [Token(1), Token(2)],
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn programs_are_found_in_sbin_too() {
        assert!(find_program("sh").is_some());
        assert_eq!(find_program("no-such-program-here"), None);
    }
}
