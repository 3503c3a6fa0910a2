//! A network of its own for a test: the browser tests run their server,
//! runner and Chromium in a network namespace with only loopback up.
//! Chromium aborts the requests it has in flight (`ERR_NETWORK_CHANGED`)
//! whenever an interface comes or goes, and the Docker tests running
//! beside them add and remove one (a veth) per container; in a namespace
//! of its own the browser sees none of that. The Docker engine is reached
//! by its unix socket, which crosses namespaces; a dockerd this test has
//! to start is started back in the machine's network ([`in_host_network`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

/// The network namespace the test process started in, once it left it.
static HOST: OnceLock<OwnedFd> = OnceLock::new();

/// Move the calling thread (the test's: what it starts from now on goes
/// with it) into a new network namespace with loopback up. Whether it did:
/// without the right to (not root), it says why and the test runs in the
/// machine's network as before.
pub fn own_network() -> bool {
    if HOST.get().is_some() {
        return true;
    }
    let host = match std::fs::File::open("/proc/thread-self/ns/net") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            eprintln!("netns: cannot keep the machine's network: {e}; not isolating");
            return false;
        }
    };
    // SAFETY: unshare has no memory effects; it moves this thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        eprintln!("netns: unshare(CLONE_NEWNET): {e}; not isolating");
        return false;
    }
    loopback_up().expect("bring lo up in the new network namespace");
    let _ = HOST.set(host);
    true
}

/// `lo` up (a new namespace has it down): SIOCGIFFLAGS, then SIOCSIFFLAGS
/// with IFF_UP.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket; closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a socket, ifr a valid ifreq naming an interface.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            Err(io::Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// Run `cmd` in the machine's network even if this test left it (a daemon
/// that serves every test, such as dockerd).
pub fn in_host_network(cmd: &mut Command) -> &mut Command {
    if let Some(host) = HOST.get() {
        let fd = host.as_raw_fd();
        // SAFETY: setns is async-signal-safe: a single syscall between fork
        // and exec, on a descriptor this process keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
    cmd
}
