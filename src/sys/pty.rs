//! Pseudo-terminals and the passwd database, for host terminals.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// `openpty` with this window size (each at least 1): (master, slave).
pub fn openpty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s): (libc::c_int, libc::c_int) = (-1, -1);
    let ws = winsize(cols, rows);
    // SAFETY: out-pointers to locals; name and termios may be null.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) })
}

/// `TIOCSWINSZ` on a PTY master (each at least 1).
pub fn set_winsize(master: &impl AsRawFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ with a pointer to a live winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A passwd entry, its strings copied out.
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub dir: String,
    pub shell: String,
}

/// `getpwnam_r(name)`, or `getpwuid_r(geteuid())` without a name: `None`
/// when there is no such entry.
pub fn getpw(name: Option<&CStr>) -> io::Result<Option<Passwd>> {
    // SAFETY: passwd is plain old data; zeroed is a valid value for it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let rc = match name {
        // SAFETY: all pointers are to live locals; buf's length is passed.
        Some(c) => unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        },
        // SAFETY: as above; geteuid cannot fail.
        None => unsafe {
            libc::getpwuid_r(
                libc::geteuid(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        },
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    let field = |p: *const libc::c_char| -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: getpw*_r filled pw with NUL-terminated strings inside buf.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    Ok(Some(Passwd {
        name: field(pw.pw_name),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        dir: field(pw.pw_dir),
        shell: field(pw.pw_shell),
    }))
}
