//! Processes: signals to a pid or a process group, reaping, and what a
//! child does between fork and exec (`pre_exec` closures run in the forked
//! child, where only async-signal-safe calls are allowed).

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `kill(pid, sig)`: one process (or, for pid 0 or below, what kill(2)
/// says: the caller's group, every process, a group). True when sent;
/// errno says why not. A bool, not an `io::Result`: most callers ignore
/// it, and an ignored `io::Error` still costs its drop code at each call.
pub fn kill_pid(pid: libc::pid_t, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// `kill(-pgid, sig)`: every process of the group `pgid` leads. The pgid is
/// a child's pid, so above 0 (0 would name our own group).
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) -> bool {
    debug_assert!(pgid > 0, "kill_group({pgid})");
    kill_pid(-pgid, sig)
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
    kill_pid(pid, 0) || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What `waitpid(pid, WNOHANG)` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Running,
    /// The raw wait status.
    Ended(i32),
    /// The errno (ECHILD: not our child, or already reaped).
    Failed(i32),
}

/// `waitpid(pid, WNOHANG)`.
pub fn wait_nohang(pid: libc::pid_t) -> Wait {
    let mut st = 0;
    // SAFETY: st is a local int that waitpid writes.
    let rc = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    match rc {
        0 => Wait::Running,
        rc if rc < 0 => Wait::Failed(io::Error::last_os_error().raw_os_error().unwrap_or(0)),
        _ => Wait::Ended(st),
    }
}

/// Blocking `waitpid(pid, 0)`, the status ignored.
pub fn wait_blocking(pid: libc::pid_t) {
    let mut st = 0;
    // SAFETY: st is a local int that waitpid writes.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

/// The effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode and touches no memory.
    unsafe { libc::geteuid() }
}

/// Send `sig` to ourselves (tests: a signal handler's path).
pub fn raise(sig: libc::c_int) {
    // SAFETY: raise(3) takes an integer; our handlers are async-signal-safe.
    unsafe { libc::raise(sig) };
}

/// Highest fd number + 1 to sweep when close_range is missing, read in the
/// parent (getrlimit is not on the async-signal-safe list).
fn fd_limit() -> libc::c_int {
    // SAFETY: rlimit is plain old data; getrlimit fills it.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to our struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc != 0 {
        return 1024;
    }
    libc::c_int::try_from(rl.rlim_cur.min(65536)).unwrap_or(1024)
}

/// In the forked child: every fd from 3 up close-on-exec, by close_range
/// or (before Linux 5.11) one fcntl per possible fd below `max_fd`.
/// Close-on-exec, not close: std's own exec-error pipe is in this range
/// and must stay open until the exec.
fn cloexec_from_3(max_fd: libc::c_int) {
    let flag = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
    // SAFETY: close_range and fcntl are async-signal-safe and touch only the
    // child's own fd table.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, flag) != 0 {
            for fd in 3..max_fd {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// In the forked child: an empty signal mask.
fn empty_sigmask() -> io::Result<()> {
    // SAFETY: sigset_t is plain old data; sigemptyset and sigprocmask are
    // async-signal-safe and touch only the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))
    }
}

/// Make `cmd`'s child start clean: an empty signal mask (ours is empty
/// today; a child must never inherit a blocked SIGCHLD or SIGTERM whatever
/// the parent does later) and none of our fds.
pub fn exec_clean(cmd: &mut Command) {
    let max_fd = fd_limit();
    let pre = move || {
        empty_sigmask()?;
        cloexec_from_3(max_fd);
        Ok(())
    };
    // SAFETY: the closure only calls the async-signal-safe helpers above.
    unsafe { cmd.pre_exec(pre) };
}

/// Who a login session switches to: name (for initgroups), uid, gid.
pub struct SwitchUser {
    pub name: CString,
    pub uid: u32,
    pub gid: u32,
}

/// Make `cmd`'s child the leader of a new session whose controlling tty is
/// its fd 0 (the PTY slave), with an empty signal mask, as `user` when
/// given, and none of our fds.
pub fn exec_login_session(cmd: &mut Command, user: Option<SwitchUser>) {
    let max_fd = 1024;
    let pre = move || {
        // SAFETY: setsid, ioctl(TIOCSCTTY), initgroups, setgid and setuid run
        // in the forked child before exec; initgroups reads /etc/group (glibc
        // and musl both do it without locks another thread could hold: the
        // runner's only other thread is the DNS helper, which holds none
        // across fork); the rest are async-signal-safe.
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // fd 0 is the slave now (std dup2'd it): make it our tty.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let _ = empty_sigmask();
            if let Some(u) = &user {
                if libc::initgroups(u.name.as_ptr(), u.gid as _) != 0
                    || libc::setgid(u.gid) != 0
                    || libc::setuid(u.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        cloexec_from_3(max_fd);
        Ok(())
    };
    // SAFETY: the closure does only what its own SAFETY note allows.
    unsafe { cmd.pre_exec(pre) };
}

/// Make `cmd`'s child get SIGKILL when we die (a trial must not outlive us).
pub fn exec_dies_with_parent(cmd: &mut Command) {
    let pre = || {
        // SAFETY: prctl is async-signal-safe and takes integers.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure only calls prctl.
    unsafe { cmd.pre_exec(pre) };
}
