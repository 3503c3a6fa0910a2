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

use crate::sys;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
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
    let c = match name {
        Some(n) => Some(CString::new(n).map_err(|_| io::Error::other("user name has a NUL byte"))?),
        None => None,
    };
    let Some(pw) = sys::pty::getpw(c.as_deref())? else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user {} on this host", name.unwrap_or("for our uid")),
        ));
    };
    let mut shell = pw.shell;
    if shell.is_empty() {
        shell = "/bin/sh".into();
    }
    Ok(HostUser {
        name: pw.name,
        uid: pw.uid,
        gid: pw.gid,
        home: pw.dir,
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

impl Pty {
    /// Start `user`'s login shell (or `command` through it) on a new PTY.
    pub fn spawn(user: &HostUser, command: &[String], cols: u16, rows: u16) -> io::Result<Pty> {
        let (master, slave) = sys::pty::openpty(cols, rows)?;
        sys::fd::set_cloexec(&master)?;
        sys::fd::set_cloexec(&slave)?;
        sys::fd::set_nonblocking(&master)?;

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
        let switch =
            (sys::process::euid() == 0 && user.uid != 0).then(|| sys::process::SwitchUser {
                name: CString::new(user.name.clone()).unwrap_or_default(),
                uid: user.uid,
                gid: user.gid,
            });
        sys::process::exec_login_session(&mut cmd, switch);
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
        sys::pty::set_winsize(m, cols, rows)
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
            sys::process::kill_group(self.pid, sig);
            // And the leader itself, in case it left its group.
            sys::process::kill_pid(self.pid, sig);
        }
    }

    /// `waitpid(pid, WNOHANG)`: the raw wait status once reaped.
    pub fn try_reap(&mut self) -> Option<i32> {
        if self.status.is_some() {
            return self.status;
        }
        match sys::process::wait_nohang(self.pid) {
            sys::process::Wait::Ended(st) => self.status = Some(st),
            // Someone else reaped it (cannot happen in the runner): done.
            sys::process::Wait::Failed(libc::ECHILD) => self.status = Some(0),
            _ => {}
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
            // Our own child, just killed: a short wait.
            sys::process::wait_blocking(self.pid);
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
