//! File descriptors: flags, pipes, raw reads and a zero-timeout poll.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Add `flag` to the flags `get`/`set` (F_GETFL/F_SETFL or F_GETFD/F_SETFD) read and write.
fn add_flag(
    fd: &impl AsRawFd,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd the caller holds open, with integer arguments.
    let old = unsafe { libc::fcntl(raw, get) };
    if old < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, set, old | flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `O_NONBLOCK` on.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    add_flag(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)
}

/// `FD_CLOEXEC` on.
pub fn set_cloexec(fd: &impl AsRawFd) -> io::Result<()> {
    add_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `read(2)` into `buf`: the byte count (0 at EOF).
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into our own buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Whether `poll(POLLPRI)` with a zero timeout reports POLLPRI or POLLERR
/// (or fails): procfs's "mount table changed". Never blocks.
pub fn poll_pri(fd: &impl AsRawFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one pollfd of ours; timeout 0, so this never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0 && (n < 0 || p.revents & (libc::POLLPRI | libc::POLLERR) != 0)
}
