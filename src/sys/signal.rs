//! The signal handler of the self-pipe (see `crate::signals`): it writes the
//! signal number, one byte, into the pipe whose write end is set here.

use std::io;
use std::os::fd::RawFd;
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

/// Where the handler writes from now on; -1: nowhere (the pipe is closing).
pub fn set_pipe(fd: RawFd) {
    WRITE_FD.store(fd, Ordering::Relaxed);
}

/// Install the self-pipe handler for `sig` (SA_RESTART, empty mask).
pub fn install(sig: libc::c_int) -> io::Result<()> {
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
    Ok(())
}
