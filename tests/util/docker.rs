//! A real Docker engine for the tests: started here when none answers
//! (Debian's `dockerd` in the background), and a test image made locally,
//! because no registry is reachable: `docker import` of a rootfs holding
//! Debian's static busybox.
//!
//! Both steps are idempotent and serialized across parallel test processes
//! with an flock, so one daemon and one image serve every test.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/var/run/docker.sock";
/// The image every Docker test uses: busybox at /bin, `sh` as the command.
pub const IMAGE: &str = "tether-test/busybox:1";

/// Holds an flock on a file until dropped.
pub struct Lock(fs::File);

impl Lock {
    fn take(path: &str) -> Lock {
        Lock::take_as(path, libc::LOCK_EX)
    }

    fn take_as(path: &str, how: i32) -> Lock {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        // SAFETY: flock on a file descriptor we own; blocks until it is ours.
        unsafe {
            libc::flock(f.as_raw_fd(), how);
        }
        Lock(f)
    }
}

/// Every Docker test holds this shared for as long as it runs; a test that
/// restarts the engine holds it exclusively, so no other test sees its
/// engine vanish.
const ENGINE_LOCK: &str = "/tmp/tether-test-docker-engine.lock";

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking our own descriptor.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is installed (make test's set-up installs docker.io)")
}

fn engine_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Make sure a Docker engine answers on [`SOCKET`] and the test image
/// exists; keep the returned guard for the whole test.
#[must_use = "hold the guard for the whole test"]
pub fn ensure() -> Lock {
    let guard = Lock::take_as(ENGINE_LOCK, libc::LOCK_SH);
    prepare();
    guard
}

/// [`ensure`] for a test that stops and starts the engine: no other Docker
/// test runs while it holds the guard.
#[must_use = "hold the guard for the whole test"]
pub fn ensure_exclusive() -> Lock {
    let guard = Lock::take_as(ENGINE_LOCK, libc::LOCK_EX);
    prepare();
    guard
}

fn prepare() {
    let _lock = Lock::take("/tmp/tether-test-docker.lock");
    if !engine_answers() {
        start_dockerd();
    }
    if !docker(&["image", "inspect", IMAGE]).status.success() {
        import_image();
    }
}

/// Stop the engine (SIGTERM, as a service manager would) and start it
/// again; containers with a restart policy come back with it.
pub fn restart_engine() {
    let out = Command::new("pidof").arg("dockerd").output().unwrap();
    let pids = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!pids.is_empty(), "no dockerd to restart");
    for pid in pids.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        // SAFETY: sending a signal to a pid has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let start = Instant::now();
    while Command::new("pidof")
        .arg("dockerd")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dockerd did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start_dockerd();
}

fn start_dockerd() {
    let log = fs::File::create("/tmp/tether-test-dockerd.log").unwrap();
    // `setsid -f` forks the daemon into its own session and returns at once:
    // the daemon outlives this test process, serves the others, and is never
    // our zombie.
    let mut cmd = Command::new("setsid");
    // In the machine's network, even from a browser test's own.
    let st = super::netns::in_host_network(&mut cmd)
        .args(["-f", "dockerd", "--host", &format!("unix://{SOCKET}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("setsid (util-linux) runs");
    assert!(
        st.success(),
        "could not start dockerd (apt-get install docker.io; make test's set-up does)"
    );
    let start = Instant::now();
    while !engine_answers() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dockerd did not come up; see /tmp/tether-test-dockerd.log"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn import_image() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (make test's set-up does)");
    let root = std::env::temp_dir().join(format!("tether-test-rootfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let out = Command::new(root.join("bin/busybox"))
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let tar = root.with_extension("tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the test rootfs failed");
    let out = docker(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        "--change",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        IMAGE,
    ]);
    assert!(
        out.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(&root);
    let _ = fs::remove_file(&tar);
}

/// `docker run -d <args>`: a container started in the background, or the
/// test fails with Docker's reason.
pub fn run_detached(args: &[&str]) {
    let out = Command::new("docker")
        .args(["run", "-d"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
