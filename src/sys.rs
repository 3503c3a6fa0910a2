//! Facts about the host and small libc calls that std does not offer:
//! hostname, `uname -m`, `getrandom`, "is this pid alive", "is this
//! directory in memory", mounting a tmpfs. Every `unsafe`
//! block of the crate that is not about signals lives here.

use std::ffi::CStr;

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

/// Whether a process with this pid exists. `kill(pid, 0)` sends nothing; EPERM
/// means it exists but belongs to someone else.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether `path` lies on a filesystem kept in memory (tmpfs or ramfs),
/// by `statfs(2)`'s filesystem magic.
pub fn in_memory_fs(path: &std::path::Path) -> std::io::Result<bool> {
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field's width differs by architecture and libc; the magics fit 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    Ok(magic == TMPFS_MAGIC || magic == RAMFS_MAGIC)
}

/// Mount a tmpfs of at most `size_bytes` on `dir` (root only): mode 0700,
/// no devices, no setuid, nothing executable.
pub fn mount_tmpfs(dir: &std::path::Path, size_bytes: u64) -> std::io::Result<()> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let data = std::ffi::CString::new(format!("size={size_bytes},mode=0700,nr_inodes=4096"))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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
