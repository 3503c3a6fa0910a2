//! The runner's only `unsafe`: libc calls std does not offer, each behind
//! a small safe function with a SAFETY note on every `unsafe` block. The
//! rest of the crate is `#![deny(unsafe_code)]` (see `lib.rs`).
//!
//! ```text
//! mod.rs     host facts: `uname -m`/`-r`, hostname, getrandom, CLOCK_BOOTTIME, build target
//! process    kill_pid, kill_group, pid_alive, waitpid; what a child does before exec
//! fd         O_NONBLOCK/FD_CLOEXEC, pipes, raw read, zero-timeout poll
//! signal     the self-pipe's signal handler and sigaction
//! pty        openpty, window size, passwd lookups
//! fs         statfs/statvfs, tmpfs mounts
//! net        netlink sockets
//! ```

use std::ffi::CStr;

pub mod fd;
pub mod fs;
pub mod net;
pub mod process;
pub mod pty;
pub mod signal;

pub use fs::{in_memory_fs, mount_tmpfs};
pub use process::pid_alive;

/// `uname -m` style architecture (`x86_64`, `aarch64`, `armv7l`, `mips`),
/// falling back to the compile-time architecture.
pub fn machine() -> String {
    // SAFETY: utsname is plain old data; zeroed is a valid value for it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we own and NUL-terminates fields.
    let rc = unsafe { libc::uname(&mut uts) };
    if rc == 0 {
        // SAFETY: the kernel NUL-terminates `machine` inside its fixed array.
        let m = unsafe { CStr::from_ptr(uts.machine.as_ptr()) };
        if let Ok(s) = m.to_str() {
            if !s.is_empty() {
                return s.to_owned();
            }
        }
    }
    std::env::consts::ARCH.to_owned()
}

/// The architecture name of this build, as releases name their files
/// (`tether-<arch>`) and their signed comments (`arch=<arch>`). It says
/// what `uname -m` cannot (mips or mipsel; an armv6 build on an armv7l
/// host), so an update is always for the binary that is running.
pub const RELEASE_ARCH: &str = if cfg!(target_arch = "x86_64") {
    "x86_64"
} else if cfg!(target_arch = "aarch64") {
    "aarch64"
} else if cfg!(all(target_arch = "arm", target_abi = "eabihf")) {
    "armv7"
} else if cfg!(target_arch = "arm") {
    "armv6"
} else if cfg!(all(target_arch = "mips", target_endian = "big")) {
    "mips"
} else if cfg!(all(target_arch = "mips", target_endian = "little")) {
    "mipsel"
} else {
    std::env::consts::ARCH
};

/// The host name, or "unknown" when it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for buf.len() bytes; we NUL-terminate below.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len() - 1);
    match std::str::from_utf8(&buf[..end]) {
        Ok(s) if !s.is_empty() => s.to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// Eight bytes from the kernel's `getrandom(2)`, called through `syscall` so
/// it works on old musl and glibc alike. `None` if the kernel lacks it.
pub fn random_u64() -> Option<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: the pointer and length describe our 8-byte buffer.
    let n = unsafe { libc::syscall(libc::SYS_getrandom, buf.as_mut_ptr(), buf.len(), 0) };
    (n == 8).then(|| u64::from_ne_bytes(buf))
}

/// Seconds of CLOCK_BOOTTIME (uptime, suspend included).
pub fn boottime_secs() -> std::io::Result<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // time_t is 32 or 64 bits by target and libc.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(ts.tv_sec))
}

/// `uname -r` ("5.15.0-91-generic"), the whole NUL-padded field; `None` if
/// uname fails.
pub fn kernel_release() -> Option<Vec<u8>> {
    // SAFETY: utsname is plain old data; zeroed is a valid value for it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is ours to write.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    Some(u.release.iter().map(|&c| c as u8).collect())
}

/// A volatile read of `*r`: the compiler may not assume what a static holds
/// (the version slot is patched in the binary after the build).
pub fn read_volatile<T: Copy>(r: &T) -> T {
    // SAFETY: a reference is valid, aligned and initialised for reads.
    unsafe { std::ptr::read_volatile(r) }
}

/// `x86_64-linux-musl`: compile-time arch, OS and C library, for `tether version`.
pub fn build_target() -> String {
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "gnu") {
        "gnu"
    } else {
        "unknown"
    };
    format!(
        "{}-{}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        env
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_plausible() {
        assert!(!machine().is_empty());
        assert!(!hostname().is_empty());
        assert!(random_u64().is_some());
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(build_target().contains("-linux-"));
    }
}
