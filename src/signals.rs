//! Signals as events: the self-pipe trick. A `sigaction` handler writes the
//! signal number (one byte) into a non-blocking pipe; the read end is
//! registered with mio, so a signal is just another readable source.
//!
//! ```text
//!  kernel ──SIGTERM──▶ handler: write(pipe_w, [15]) ──▶ pipe_r readable ──▶ loop drains, acts
//! ```
//!
//! The handler (in `sys::signal`, with the crate's other `unsafe`) only
//! calls `write(2)` (async-signal-safe) and saves/restores errno. If the
//! pipe is full the byte is dropped, which is fine: a full pipe already
//! guarantees the loop will wake and drain.
//! `tether run` installs it for SIGTERM and SIGINT (shut down), SIGCHLD
//! (a child process ended: the loop reaps it with `waitpid(WNOHANG)`) and
//! SIGUSR1 (`tether update --file` left a release in the state dir).

use crate::sys;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// The read end of the self-pipe. One per process.
pub struct Signals {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Signals {
    /// Create the pipe and install handlers for `signals`.
    pub fn install(signals: &[libc::c_int]) -> io::Result<Signals> {
        let (read, write) = sys::fd::pipe_nonblocking()?;
        sys::signal::set_pipe(write.as_raw_fd());
        for &sig in signals {
            sys::signal::install(sig)?;
        }
        Ok(Signals {
            read,
            _write: write,
        })
    }

    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.read.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Read every pending signal number (edge-triggered: drain to WouldBlock).
    pub fn drain(&self, mut f: impl FnMut(libc::c_int)) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            let err = match sys::fd::read(&self.read, &mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    buf[..n].iter().for_each(|&b| f(libc::c_int::from(b)));
                    continue;
                }
                Err(err) => err,
            };
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // The handler must not write into a closed (and maybe reused) fd.
        sys::signal::set_pipe(-1);
    }
}

pub fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Tests that install handlers share one write fd: they take this lock.
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_raised_signal_wakes_the_poll() {
        let _guard = TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SIGUSR2 so the test harness's own SIGINT/SIGTERM stay untouched.
        let signals = Signals::install(&[libc::SIGUSR2]).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        signals.register(poll.registry(), Token(7)).unwrap();
        // A signal we installed a handler for.
        sys::process::raise(libc::SIGUSR2);
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7)));
        let mut got = vec![];
        signals.drain(|s| got.push(s)).unwrap();
        assert_eq!(got, vec![libc::SIGUSR2]);
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
    }
}
