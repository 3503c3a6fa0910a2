//! Host terminals: `openpty`, a login shell of a configured user on the
//! slave side as the leader of its own session, resize, hang-up, reaping.
//!
//! ```text
//!  spawn ──▶ Running ──(master readable: output; writable: keystrokes)
//!              │
//!              ├── shell exits ──▶ master read gives EIO (slave closed) ──▶ EOF
//!              └── hang_up() ────▶ SIGHUP to its process group, master closed
//!                                   └─ still there after the grace ──▶ SIGKILL
//!  SIGCHLD or the owner's tick ──▶ try_reap(): waitpid(pid, WNOHANG) ──▶ Exited(status)
//! ```
//!
//! The shell is `setsid()` + `TIOCSCTTY` on the slave, so the terminal is its
//! controlling tty: closing the master or SIGHUP reaches its whole job tree.
//! Every fd of ours is close-on-exec; the slave is closed in the parent right
//! after the spawn, so EOF on the master means the shell (and everything it
//! started on that tty) let go of it. A `Pty` dropped before it was reaped is
//! killed and reaped on the spot: no zombie.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// A passwd entry: whose login shell a host terminal runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Look up `name` in the passwd database, or the user this process runs as.
pub fn lookup_user(name: Option<&str>) -> io::Result<HostUser> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let rc = match name {
        Some(n) => {
            let c = CString::new(n).map_err(|_| io::Error::other("user name has a NUL byte"))?;
            // SAFETY: all pointers are to live locals; buf's length is passed.
            unsafe {
                libc::getpwnam_r(
                    c.as_ptr(),
                    &mut pw,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            }
        }
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
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user {} on this host", name.unwrap_or("for our uid")),
        ));
    }
    let field = |p: *const libc::c_char| -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: getpw*_r filled pw with NUL-terminated strings inside buf.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    let mut shell = field(pw.pw_shell);
    if shell.is_empty() {
        shell = "/bin/sh".into();
    }
    Ok(HostUser {
        name: field(pw.pw_name),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: field(pw.pw_dir),
        shell,
    })
}

/// A shell on a pseudo-terminal, as the event loop sees it.
#[derive(Debug)]
pub struct Pty {
    /// Non-blocking master; `None` once hung up.
    master: Option<File>,
    pid: libc::pid_t,
    status: Option<i32>,
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_flag(fd: RawFd, get: libc::c_int, set: libc::c_int, flag: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments.
    unsafe {
        let old = libc::fcntl(fd, get);
        if old < 0 || libc::fcntl(fd, set, old | flag) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Pty {
    /// Start `user`'s login shell (or `command` through it) on a new PTY.
    pub fn spawn(user: &HostUser, command: &[String], cols: u16, rows: u16) -> io::Result<Pty> {
        let (mut m, mut s): (libc::c_int, libc::c_int) = (-1, -1);
        let ws = winsize(cols, rows);
        // SAFETY: out-pointers to locals; name and termios may be null.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openpty returned two fresh fds that nothing else owns.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        set_flag(m, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)?;
        set_flag(s, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)?;
        set_flag(m, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)?;

        let shell = user.shell.clone();
        let base = shell.rsplit('/').next().unwrap_or("sh").to_owned();
        let mut cmd = Command::new(&shell);
        // A leading dash makes it a login shell (profile, motd, cd ~).
        cmd.arg0(format!("-{base}"));
        if !command.is_empty() {
            cmd.arg("-c").arg(command.join(" "));
        }
        let home = if user.home.is_empty() {
            "/".to_owned()
        } else {
            user.home.clone()
        };
        cmd.env_clear()
            .env("TERM", "xterm-256color")
            .env("HOME", &home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("SHELL", &shell)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(if std::path::Path::new(&home).is_dir() {
                home.as_str()
            } else {
                "/"
            })
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: geteuid has no failure mode.
        let switch = unsafe { libc::geteuid() } == 0 && user.uid != 0;
        let (uid, gid) = (user.uid, user.gid);
        let cname = CString::new(user.name.clone()).unwrap_or_default();
        let max_fd = 1024;
        // SAFETY: runs in the forked child before exec: setsid, ioctl,
        // sigprocmask, setgroups/setgid/setuid, close_range and fcntl are
        // async-signal-safe; initgroups reads /etc/group (glibc and musl
        // both do it without locks another thread could hold: the runner's
        // only other thread is the DNS helper, which holds none across fork).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // fd 0 is the slave now (std dup2'd it): make it our tty.
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                if switch
                    && (libc::initgroups(cname.as_ptr(), gid as _) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                let flag = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
                if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, flag) != 0 {
                    for fd in 3..max_fd {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // `cmd` (holding the slave dups) drops here: the master alone stays.
        drop(cmd);
        Ok(Pty {
            master: Some(File::from(master)),
            pid: child.id() as libc::pid_t,
            status: None,
        })
    }

    pub fn pid(&self) -> i64 {
        i64::from(self.pid)
    }

    /// The master, while not hung up.
    pub fn master(&self) -> Option<&File> {
        self.master.as_ref()
    }

    pub fn raw_fd(&self) -> Option<RawFd> {
        self.master.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let Some(m) = &self.master else {
            return Ok(());
        };
        let ws = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ with a pointer to a live winsize.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGHUP to the shell's process group and close the master. The
    /// caller deregisters the master from the poll first.
    pub fn hang_up(&mut self) {
        self.signal(libc::SIGHUP);
        self.master = None;
    }

    /// Signal the whole session's process group (the shell leads it).
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill with a negative pid signals that group only.
            unsafe { libc::kill(-self.pid, sig) };
            // SAFETY: and the leader itself, in case it left its group.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// `waitpid(pid, WNOHANG)`: the raw wait status once reaped.
    pub fn try_reap(&mut self) -> Option<i32> {
        if self.status.is_some() {
            return self.status;
        }
        let mut st = 0;
        // SAFETY: waitpid on our own child with WNOHANG; st is a local.
        let rc = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
        if rc == self.pid {
            self.status = Some(st);
        } else if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            // Someone else reaped it (cannot happen in the runner): done.
            self.status = Some(0);
        }
        self.status
    }
}

/// "exited 0" / "killed by signal 9" from a raw wait status.
pub fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exited {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("ended (status {st})")
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.master = None;
            self.signal(libc::SIGKILL);
            let mut st = 0;
            // SAFETY: blocking waitpid on our own child, just killed.
            unsafe { libc::waitpid(self.pid, &mut st, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    fn read_until(p: &Pty, want: &str, limit: Duration) -> String {
        let mut got = Vec::new();
        let end = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            match p.master().unwrap().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => break,
            }
            if String::from_utf8_lossy(&got).contains(want) {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn a_shell_on_a_pty_answers_resizes_and_hangs_up() {
        let mut user = lookup_user(None).unwrap();
        user.shell = "/bin/sh".into();
        let mut p = Pty::spawn(&user, &[], 80, 24).unwrap();
        p.master()
            .unwrap()
            .write_all(b"echo $((6*7)); stty size\n")
            .unwrap();
        let out = read_until(&p, "24 80", Duration::from_secs(10));
        assert!(out.contains("42"), "{out:?}");
        p.resize(100, 30).unwrap();
        p.master().unwrap().write_all(b"stty size\n").unwrap();
        let out = read_until(&p, "30 100", Duration::from_secs(10));
        assert!(out.contains("30 100"), "{out:?}");
        p.hang_up();
        let end = Instant::now() + Duration::from_secs(10);
        while p.try_reap().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let st = p.try_reap().expect("the shell is reaped after a hang-up");
        assert!(!describe_status(st).is_empty());
    }

    #[test]
    fn an_unknown_user_is_a_clear_error() {
        let e = lookup_user(Some("no-such-user-here")).unwrap_err();
        assert!(e.to_string().contains("no-such-user-here"), "{e}");
    }
}
