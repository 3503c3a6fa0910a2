//! Filesystems: statfs/statvfs, tmpfs mounts (and, for tests, a private
//! mount namespace).

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `statvfs(path)`. Blocks on a hung network filesystem.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = c_path(path)?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is ours to write.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `statfs(path)`.
pub fn statfs(path: &Path) -> io::Result<libc::statfs> {
    let c = c_path(path)?;
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstatfs(fd)`.
pub fn fstatfs(fd: &impl AsRawFd) -> io::Result<libc::statfs> {
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call; `st` is ours.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether `path` lies on a filesystem kept in memory (tmpfs or ramfs),
/// by `statfs(2)`'s filesystem magic.
pub fn in_memory_fs(path: &Path) -> io::Result<bool> {
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let st = statfs(path)?;
    // The field's width differs by architecture and libc; the magics fit 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    Ok(magic == TMPFS_MAGIC || magic == RAMFS_MAGIC)
}

/// Mount a tmpfs of at most `size_bytes` on `dir` (root only): mode 0700,
/// no devices, no setuid, nothing executable.
pub fn mount_tmpfs(dir: &Path, size_bytes: u64) -> io::Result<()> {
    let target = c_path(dir)?;
    let data = CString::new(format!("size={size_bytes},mode=0700,nr_inodes=4096"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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
        Err(io::Error::last_os_error())
    }
}

/// Tests: this thread in a mount namespace of its own, every mount private
/// (nothing leaks to the host). Err without CAP_SYS_ADMIN.
#[cfg(test)]
pub fn unshare_private_mounts() -> io::Result<()> {
    // SAFETY: unshare takes a flag; it changes only this thread's view.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let none = std::ptr::null();
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    // SAFETY: "/" is NUL-terminated; the other pointers may be null.
    if unsafe { libc::mount(none, c"/".as_ptr(), none, flags, none.cast()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tests: a plain tmpfs named `source` on `target`.
#[cfg(test)]
pub fn mount_plain_tmpfs(source: &str, target: &Path) -> io::Result<()> {
    let (s, t) = (c_path(Path::new(source))?, c_path(target)?);
    // SAFETY: NUL-terminated strings that outlive the call; data may be null.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Tests: `umount(target)`.
#[cfg(test)]
pub fn umount(target: &Path) -> io::Result<()> {
    let t = c_path(target)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount(t.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
