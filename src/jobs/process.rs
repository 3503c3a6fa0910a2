//! A job's process: spawned in its own group with its stdout and stderr on
//! non-blocking pipes the event loop watches, read only when the job's
//! output channel has room (backpressure: a full pipe blocks the child's
//! writes, never our memory), signalled as a group, and reaped.
//!
//! Readiness is edge-triggered, so each pipe remembers that it may still
//! hold data (`pending`) when the owner stopped reading for lack of room;
//! the owner reads it again once there is room, without waiting for an
//! edge that will not come.

use crate::child;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

/// What reading a pipe gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Read_ {
    Data(usize),
    /// Nothing now; readiness will say when.
    Empty,
    /// The pipe is closed (the child and its children closed it).
    Eof,
}

struct Pipe {
    file: File,
    token: Token,
    /// Readable data may be waiting (an edge came, no WouldBlock since).
    pending: bool,
}

pub struct Process {
    proc: std::process::Child,
    pipes: [Option<Pipe>; 2],
    status: Option<ExitStatus>,
    reaped: bool,
}

impl Process {
    /// Start `program args` with `env` added, stdin from /dev/null, in `cwd`.
    pub fn spawn(
        program: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
        cwd: &Path,
        registry: &Registry,
        tokens: [Token; 2],
    ) -> io::Result<Process> {
        let mut cmd = child::command(program, args, env);
        cmd.current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = cmd.spawn()?;
        let out = proc.stdout.take().map(OwnedFd::from);
        let err = proc.stderr.take().map(OwnedFd::from);
        let mut p = Process {
            proc,
            pipes: [None, None],
            status: None,
            reaped: false,
        };
        // From here a failure drops `p`, which kills and reaps the child.
        for (i, fd) in [out, err].into_iter().enumerate() {
            let Some(fd) = fd else { continue };
            child::set_nonblocking(&fd)?;
            registry.register(
                &mut SourceFd(&fd.as_raw_fd()),
                tokens[i],
                Interest::READABLE,
            )?;
            p.pipes[i] = Some(Pipe {
                file: File::from(fd),
                token: tokens[i],
                pending: true,
            });
        }
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Which pipe (0 stdout, 1 stderr) `token` is.
    pub fn pipe_of(&self, token: Token) -> Option<usize> {
        self.pipes
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.token == token))
    }

    pub fn mark_ready(&mut self, i: usize) {
        if let Some(p) = self.pipes[i].as_mut() {
            p.pending = true;
        }
    }

    /// Whether pipe `i` may hold unread data.
    pub fn pending(&self, i: usize) -> bool {
        self.pipes[i].as_ref().is_some_and(|p| p.pending)
    }

    pub fn pipes_open(&self) -> bool {
        self.pipes.iter().any(Option::is_some)
    }

    /// One read from pipe `i`.
    pub fn read(&mut self, registry: &Registry, i: usize, buf: &mut [u8]) -> Read_ {
        let Some(p) = self.pipes[i].as_mut() else {
            return Read_::Eof;
        };
        loop {
            match p.file.read(buf) {
                Ok(0) => {
                    self.close(registry, i);
                    return Read_::Eof;
                }
                Ok(n) => return Read_::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.pending = false;
                    return Read_::Empty;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(registry, i);
                    return Read_::Eof;
                }
            }
        }
    }

    /// Stop reading pipe `i` for good (the job is over and a grandchild
    /// may hold it open forever).
    pub fn close(&mut self, registry: &Registry, i: usize) {
        if let Some(p) = self.pipes[i].take() {
            let _ = registry.deregister(&mut SourceFd(&p.file.as_raw_fd()));
        }
    }

    /// Signal the whole group.
    pub fn signal(&self, sig: libc::c_int) {
        if self.reaped {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.proc.id()) else {
            return;
        };
        // The group id is the child's pid (process_group(0)); it stays
        // reserved while any member lives, so this cannot hit a stranger.
        crate::sys::process::kill_group(pid, sig);
    }

    /// `waitpid(WNOHANG)`: true once reaped.
    pub fn try_reap(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        match self.proc.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                self.reaped = true;
            }
            Ok(None) => {}
            Err(_) => self.reaped = true,
        }
        self.reaped
    }

    /// Exit code, or the signal that ended it.
    pub fn exit(&self) -> (Option<i32>, Option<i32>) {
        match self.status {
            Some(st) => (st.code(), st.signal()),
            None => (None, None),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_reap() {
            return;
        }
        // Dropped while running (runner shutting down): the group goes too.
        self.signal(libc::SIGKILL);
        let _ = self.proc.wait();
    }
}
