//! Raw sockets std has no type for (netlink).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A close-on-exec `AF_NETLINK` datagram socket for `protocol`.
pub fn netlink_dgram(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) with integer arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `send(fd, buf, 0)`: the bytes sent (an unconnected netlink socket sends
/// to the kernel).
pub fn send(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sends from our buffer of buf.len() bytes.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `recv(fd, buf, flags)`: the length the kernel reports (with MSG_TRUNC,
/// the datagram's real length, which may exceed `buf`).
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: receives into `buf`, at most buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
