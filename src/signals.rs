//! Signals as events: the self-pipe trick. A `sigaction` handler writes the
//! signal number (one byte) into a non-blocking pipe; the read end is
//! registered with mio, so a signal is just another readable source.
//!
//! ```text
//!  kernel ──SIGTERM──▶ handler: write(pipe_w, [15]) ──▶ pipe_r readable ──▶ loop drains, acts
//! ```
//!
//! The handler only calls `write(2)` (async-signal-safe) and saves/restores
//! errno. If the pipe is full the byte is dropped, which is fine: a full pipe
//! already guarantees the loop will wake and drain.
//! `tether run` installs it for SIGTERM and SIGINT (shut down) and SIGCHLD
//! (a child process ended: the loop reaps it with `waitpid(WNOHANG)`).

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the pipe, for the handler (a static: handlers get no context).
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: errno location is thread-local and valid; saved and restored so
    // the interrupted code does not see our write's errno.
    let saved = unsafe { *libc::__errno_location() };
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is one valid byte.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// The read end of the self-pipe. One per process.
pub struct Signals {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Signals {
    /// Create the pipe and install handlers for `signals`.
    pub fn install(signals: &[libc::c_int]) -> io::Result<Signals> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two-element array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        for &sig in signals {
            // SAFETY: a zeroed sigaction is valid; we set the handler and mask.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            // SAFETY: sa_mask is a valid sigset_t inside our struct.
            unsafe { libc::sigemptyset(&mut sa.sa_mask) };
            // SAFETY: installing a handler that only does async-signal-safe work.
            if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
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
            // SAFETY: reading into our own buffer of buf.len() bytes.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                buf[..n as usize]
                    .iter()
                    .for_each(|&b| f(libc::c_int::from(b)));
                continue;
            }
            if n == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
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
        WRITE_FD.store(-1, Ordering::Relaxed);
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
        // SAFETY: raising a signal we installed a handler for.
        unsafe { libc::raise(libc::SIGUSR2) };
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
