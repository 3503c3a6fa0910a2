//! Signed self-update with the real programs: releases made by `build.sh
//! sign` with throwaway minisign keys, uploaded to the real server, installed
//! by real runners that swap their own binary, re-exec and roll back.
//!
//! "Different versions" are real, distinct binaries: the test build of the
//! runner, stripped, with its version slot rewritten
//! (`tether::version::patch_slot`, see src/version.rs). A version that exits
//! at start or never connects is a signed shell script: to the updater it is
//! just a signed binary that misbehaves.

use crate::util::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const ARCH: &str = std::env::consts::ARCH;
pub const ARCH_NAME: &str = ARCH;
pub const V0: &str = env!("CARGO_PKG_VERSION");
const WAIT: Duration = Duration::from_secs(60);

/// A throwaway minisign key pair.
pub struct Keys {
    _dir: TempDir,
    pub public: PathBuf,
    pub secret: PathBuf,
}

pub fn keypair(label: &str) -> Keys {
    let dir = TempDir::new(label);
    let public = dir.path().join("k.pub");
    let secret = dir.path().join("k.key");
    let st = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("minisign is installed (make test's set-up installs it)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    Keys {
        _dir: dir,
        public,
        secret,
    }
}

/// The runner binary shipped in test releases: the test build, stripped
/// (the debug info makes it ~45 MB; stripping changes nothing it runs).
pub fn base_binary() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = TempDir::new("strip");
        let out = dir.path().join("tether");
        let st = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(runner_bin())
            .status();
        match st {
            Ok(s) if s.success() => fs::read(&out).unwrap(),
            _ => fs::read(runner_bin()).unwrap(),
        }
    })
}

/// A real runner binary that reports `version`.
pub fn binary_with_version(version: &str) -> Vec<u8> {
    tether::version::patch_slot(base_binary(), version).expect("version slot")
}

/// A "release" that is a shell script (exits at start, or never connects).
pub fn script(body: &str) -> Vec<u8> {
    format!("#!/bin/sh\n{body}\n").into_bytes()
}

/// Sign `bytes` as `tether-<file_arch>` of `version` with `build.sh sign`;
/// returns (binary, signature). `comment_arch` lets a test lie about the arch.
pub fn sign(keys: &Keys, version: &str, comment_arch: &str, bytes: &[u8]) -> (Vec<u8>, String) {
    let dir = TempDir::new("sign");
    let bin = dir.path().join(format!("tether-{comment_arch}"));
    fs::write(&bin, bytes).unwrap();
    build_sh_sign(keys, dir.path(), version, &bin);
    let sig =
        fs::read_to_string(dir.path().join(format!("tether-{comment_arch}.minisig"))).unwrap();
    (fs::read(&bin).unwrap(), sig)
}

/// `build.sh sign DIR VERSION BIN` with `keys`: BIN's signature and the
/// signed manifest land in `dir`.
fn build_sh_sign(keys: &Keys, dir: &Path, version: &str, bin: &Path) {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh"))
        .arg("sign")
        .arg(dir)
        .arg(version)
        .arg(bin)
        .env("TETHER_SIGNING_KEY", &keys.secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sign `bytes` as release `version` with `keys` (`build.sh sign`: binary,
/// signature, signed manifest) and upload every file to `server`; the
/// files uploaded, by name.
pub fn publish_to(
    server: &Server,
    keys: &Keys,
    version: &str,
    bytes: &[u8],
) -> Vec<(String, Vec<u8>)> {
    let dir = TempDir::new("release");
    let bin = dir.path().join(format!("tether-{ARCH}"));
    fs::write(&bin, bytes).unwrap();
    build_sh_sign(keys, dir.path(), version, &bin);
    let api = server.api();
    let mut files = Vec::new();
    for e in fs::read_dir(dir.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let bytes = fs::read(e.path()).unwrap();
        let (st, v) = api.upload(
            &format!("/api/v1/releases/{version}/{name}"),
            &server.admin_token,
            &bytes,
        );
        assert_eq!(st, 201, "upload {version}/{name}: {v}");
        files.push((name, bytes));
    }
    files.sort();
    files
}

/// A server with release keys, a tenant, and the signing keys.
pub struct Fx {
    pub keys: Keys,
    pub server: Server,
    pub tenant: Tenant,
}

impl Fx {
    pub fn new() -> Fx {
        let keys = keypair("keys");
        let server = Server::start_with(&["--release-keys", keys.public.to_str().unwrap()]);
        let tenant = server.tenant("acme");
        Fx {
            keys,
            server,
            tenant,
        }
    }

    /// Upload `tether-<ARCH>` and its signature as release `version`.
    pub fn upload(&self, version: &str, bin: &[u8], sig: &str) {
        let api = self.server.api();
        let name = format!("tether-{ARCH}");
        for (file, bytes) in [
            (name.clone(), bin),
            (format!("{name}.minisig"), sig.as_bytes()),
        ] {
            let (st, v) = api.upload(
                &format!("/api/v1/releases/{version}/{file}"),
                &self.server.admin_token,
                bytes,
            );
            assert_eq!(st, 201, "upload {version}/{file}: {v}");
        }
    }

    /// Sign and upload a good release of `version` (binary, signature,
    /// signed manifest: everything `build.sh sign` makes).
    pub fn publish(&self, version: &str, bytes: &[u8]) {
        publish_to(&self.server, &self.keys, version, bytes);
    }

    /// The release's manifest as the server serves it.
    pub fn manifest(&self, version: &str) -> String {
        let (st, body) = self
            .server
            .api()
            .get_bytes(&format!("/releases/{version}/manifest.json"));
        assert_eq!(st, 200);
        String::from_utf8(body).unwrap()
    }

    pub fn desire(&self, version: &str) {
        let (st, v) = self.tenant.call(
            "PUT",
            "/api/v1/update-policy",
            Some(json!({ "version": version })),
        );
        assert_eq!(st, 200, "set policy: {v}");
    }

    /// A host: an enrolled runner whose binary is a copy in its own
    /// directory (the updater replaces it), trusting the fixture's keys.
    pub fn host(&self) -> Host {
        self.host_in(None)
    }

    pub fn host_in(&self, install: Option<TempDir>) -> Host {
        let install = install.unwrap_or_else(|| TempDir::new("install"));
        installed_host(&self.server, &self.tenant, &self.keys.public, install)
    }

    pub fn reports(&self, runner: &str) -> Value {
        let (st, v) = self
            .tenant
            .call("GET", &format!("/api/v1/runners/{runner}/updates"), None);
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Wait for an update report `(version, state)`; returns it.
    pub fn wait_report(&self, runner: &str, version: &str, state: &str) -> Value {
        wait_for(WAIT, &format!("report {version} {state}"), || {
            self.reports(runner)["reports"]
                .as_array()?
                .iter()
                .find(|r| r["version"] == version && r["state"] == state)
                .cloned()
        })
    }

    /// Wait until the runner is active and reports `version`.
    pub fn wait_version(&self, runner: &str, version: &str) {
        wait_for(WAIT, &format!("runner at {version}"), || {
            let r = self.tenant.runner(runner);
            (r["health"] == "active" && r["version"] == version).then_some(())
        });
    }
}

pub fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

pub struct Host {
    pub runner: Runner,
    pub install: TempDir,
    pub bin: PathBuf,
}

/// A runner enrolled on `server` whose binary is a copy of this build's
/// in `install` (so it can replace it), trusting the release key `public`.
pub fn installed_host(server: &Server, tenant: &Tenant, public: &Path, install: TempDir) -> Host {
    let mut runner = Runner::enroll(server, tenant);
    let bin = install.path().join("tether");
    fs::write(&bin, base_binary()).unwrap();
    make_executable(&bin);
    runner.bin = bin.clone();
    fs::copy(public, runner.dir.path().join("update-keys.pub")).unwrap();
    Host {
        runner,
        install,
        bin,
    }
}

impl Host {
    pub fn start(&mut self, extra: &[&str]) {
        let mut args = vec![
            "--heartbeat",
            "1s",
            "--metrics-interval",
            "off",
            "--fingerprint-interval",
            "off",
            "--docker-socket",
            "off",
        ];
        args.extend_from_slice(extra);
        self.runner.start(&args);
    }

    /// What `tether version` of the binary at the path says.
    pub fn installed_version(&self) -> String {
        let out = Command::new(&self.bin).arg("version").output().unwrap();
        assert!(out.status.success(), "the installed binary does not run");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned()
    }

    /// Waits until the binary at the path holds `version`. The server
    /// sees a new version first from the trial run, before the runner
    /// has moved the binary into place: the path holds it a moment later.
    pub fn wait_installed(&self, version: &str) {
        wait_for(WAIT, &format!("{version} at the path"), || {
            (self.installed_version() == version).then_some(())
        });
    }

    pub fn leftovers(&self) -> Vec<String> {
        fs::read_dir(self.install.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".new"))
            .collect()
    }
}

#[test]
fn update_installs_a_newer_signed_version_in_place_and_reports_it() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);
    let pid = host.runner.pid();

    fx.publish("0.1.1", &binary_with_version("0.1.1"));
    let t0 = std::time::Instant::now();
    fx.desire("0.1.1");
    fx.wait_version(&host.runner.id, "0.1.1");
    let report = fx.wait_report(&host.runner.id, "0.1.1", "installed");
    eprintln!(
        "update to 0.1.1 connected after {:?}: {report}",
        t0.elapsed()
    );
    assert_eq!(report["from_version"], V0);
    assert!(report["took_ms"].as_u64().is_some(), "{report}");

    // Re-exec in place: the same process, now running the new binary.
    assert_eq!(host.runner.pid(), pid);
    assert!(host.runner.child().try_wait().unwrap().is_none());
    assert_eq!(host.installed_version(), "0.1.1");
    let prev = host.install.path().join(".tether.prev");
    let out = Command::new(&prev).arg("version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(V0),
        "previous binary kept"
    );
    assert!(host.leftovers().is_empty());
    let log = host.runner.log();
    assert!(log.contains("trial run of 0.1.1 connected"), "{log}");

    // The server's view and the CLI agree.
    let v = fx.reports(&host.runner.id);
    assert_eq!(v["desired"], "0.1.1");
    assert_eq!(v["version"], "0.1.1");
}

/// Set `version` as desired and wait for the runner to reject it with a
/// reason containing `why`; then prove nothing changed.
fn rejected(fx: &Fx, host: &mut Host, version: &str, why: &str) {
    let before = fs::read(&host.bin).unwrap();
    let pid = host.runner.pid();
    fx.desire(version);
    let r = fx.wait_report(&host.runner.id, version, "rejected");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(why),
        "{version}: reason {reason:?} lacks {why:?}"
    );
    fx.wait_version(&host.runner.id, V0);
    assert_eq!(
        fs::read(&host.bin).unwrap(),
        before,
        "{version}: binary changed"
    );
    assert_eq!(host.runner.pid(), pid, "{version}: runner restarted");
    assert!(host.runner.child().try_wait().unwrap().is_none());
    assert!(host.leftovers().is_empty(), "{version}: staged file left");
    assert_eq!(host.installed_version(), V0);
}

#[test]
fn bad_releases_are_rejected_and_change_nothing() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);

    // Tampered: one byte changed after signing.
    let (mut bin, sig) = sign(&fx.keys, "0.3.1", ARCH, &binary_with_version("0.3.1"));
    let mid = bin.len() / 2;
    bin[mid] ^= 0xff;
    fx.upload("0.3.1", &bin, &sig);
    rejected(&fx, &mut host, "0.3.1", "does not match");

    // Signed with a key the host does not trust.
    let other = keypair("other");
    let (bin, sig) = sign(&other, "0.3.2", ARCH, &binary_with_version("0.3.2"));
    fx.upload("0.3.2", &bin, &sig);
    rejected(&fx, &mut host, "0.3.2", "does not trust");

    // Truncated download.
    let (bin, sig) = sign(&fx.keys, "0.3.3", ARCH, &binary_with_version("0.3.3"));
    fx.upload("0.3.3", &bin[..bin.len() / 3], &sig);
    rejected(&fx, &mut host, "0.3.3", "truncated");

    // Signed for another architecture, served under this one's name.
    let (bin, sig) = sign(&fx.keys, "0.3.4", "riscv64", &binary_with_version("0.3.4"));
    fx.upload("0.3.4", &bin, &sig);
    rejected(&fx, &mut host, "0.3.4", "is for riscv64");

    // A downgrade, validly signed.
    fx.publish("0.0.9", &binary_with_version("0.0.9"));
    rejected(&fx, &mut host, "0.0.9", "downgrades are not allowed");

    // The signed version differs from the offered one (a server lying).
    let (bin, sig) = sign(&fx.keys, "0.3.9", ARCH, &binary_with_version("0.3.9"));
    fx.upload("0.3.5", &bin, &sig);
    rejected(&fx, &mut host, "0.3.5", "signed release is 0.3.9");
}

/// A host where the owner turned self-update off (`TETHER_UPDATE=off`, as
/// the distro packages do: the package manager owns the binary) answers
/// each offered version `rejected` with the reason, once, instead of
/// leaving the operator with a version pending forever.
#[test]
fn a_host_with_self_update_off_rejects_offers_with_the_reason() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.runner.env.push(("TETHER_UPDATE".into(), "off".into()));
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);
    fx.publish("0.3.7", &binary_with_version("0.3.7"));
    rejected(
        &fx,
        &mut host,
        "0.3.7",
        "self-update is off on this host: TETHER_UPDATE=off",
    );
    // Answered once: no report per heartbeat.
    std::thread::sleep(Duration::from_secs(2));
    let count = |fx: &Fx| {
        fx.reports(&host.runner.id)["reports"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|r| r["version"] == "0.3.7").count())
    };
    assert_eq!(count(&fx), 1);
}

/// Mounts a test sets up, undone (lazily) on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn try_mount(args: &[&str], dir: &Path) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(args)
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_owned()))
}

#[test]
fn a_full_disk_or_a_read_only_binary_location_is_rejected() {
    let fx = Fx::new();
    fx.publish("0.3.6", &binary_with_version("0.3.6"));

    // Full: a tmpfs with room for the current binary only.
    let install = TempDir::new("full");
    let size = format!("size={}", base_binary().len() + 64 * 1024);
    let Some(full) = try_mount(&["-t", "tmpfs", "-o", &size, "tmpfs"], install.path()) else {
        eprintln!("SKIP: cannot mount a tmpfs here (not root?)");
        return;
    };
    let mut host = fx.host_in(Some(install));
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);
    rejected(&fx, &mut host, "0.3.6", "No space left");
    drop(host);
    drop(full);

    // Read-only: the binary's directory bind-mounted read-only.
    let install = TempDir::new("ro");
    let mut host = fx.host_in(Some(install));
    let dir = host.install.path().to_owned();
    let Some(ro) = try_mount(&["--bind", dir.to_str().unwrap()], &dir) else {
        eprintln!("SKIP: cannot bind-mount here");
        return;
    };
    assert!(Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);
    rejected(&fx, &mut host, "0.3.6", "Read-only file system");
    drop(host);
    drop(ro);
}

#[test]
fn a_version_that_exits_at_start_is_rolled_back_reported_and_not_retried() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);
    let before = fs::read(&host.bin).unwrap();

    fx.publish(
        "0.4.0",
        &script("echo 'broken release starting' >&2; exit 3"),
    );
    fx.desire("0.4.0");
    let r = fx.wait_report(&host.runner.id, "0.4.0", "failed");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("exited before connecting"),
        "{r}"
    );
    fx.wait_version(&host.runner.id, V0);
    assert_eq!(fs::read(&host.bin).unwrap(), before);
    assert!(host.leftovers().is_empty());

    // Offered again: refused without another try.
    fx.desire("0.4.0");
    let r = fx.wait_report(&host.runner.id, "0.4.0", "rejected");
    assert!(
        r["reason"].as_str().unwrap().contains("not tried again"),
        "{r}"
    );
    assert_eq!(
        host.runner
            .log()
            .matches("trial run of 0.4.0 started")
            .count(),
        1
    );
}

#[test]
fn a_version_that_never_connects_is_rolled_back_at_the_deadline() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.start(&["--health-timeout", "3s"]);
    fx.wait_version(&host.runner.id, V0);
    let before = fs::read(&host.bin).unwrap();

    fx.publish("0.4.1", &script("exec sleep 600"));
    let t0 = std::time::Instant::now();
    fx.desire("0.4.1");
    let r = fx.wait_report(&host.runner.id, "0.4.1", "failed");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("did not connect within 3s"),
        "{r}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(3));
    fx.wait_version(&host.runner.id, V0);
    assert_eq!(fs::read(&host.bin).unwrap(), before);
    // The trial process was killed, not left behind.
    let out = Command::new("pgrep").args(["-f", "sleep 600"]).output();
    if let Ok(out) = out {
        let ours = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|p| p.trim().parse::<u32>().ok())
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/status"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == format!("PPid:\t{}", host.runner.pid()))
            })
            .count();
        assert_eq!(ours, 0, "trial process left running");
    }
}

#[test]
fn sigkill_at_each_step_of_the_swap_leaves_a_valid_binary_that_reconnects() {
    let fx = Fx::new();
    fx.publish("0.6.0", &binary_with_version("0.6.0"));
    for step in ["staged", "trial", "swapped", "started"] {
        let mut host = fx.host();
        // Start with the fault-injection hook pausing at `step`.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host.runner.dir.path().join("runner.log"))
            .unwrap();
        let child = host
            .runner
            .cmd()
            .args(["run", "--heartbeat", "1s", "--metrics-interval", "off"])
            .args(["--fingerprint-interval", "off", "--docker-socket", "off"])
            .env("TETHER_UPDATE_PAUSE_AT", step)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        host.runner.child = Some(child);
        fx.wait_version(&host.runner.id, V0);
        fx.desire("0.6.0");
        let marker = format!("pausing at step '{step}'");
        wait_for(WAIT, &marker, || {
            host.runner.log().contains(&marker).then_some(())
        });
        signal(host.runner.child(), libc::SIGKILL);
        assert!(wait_exit(host.runner.child(), Duration::from_secs(5)).is_some());

        // Whatever the step, the binary at the path is a valid signed one.
        let v = host.installed_version();
        let expected_at_path = if matches!(step, "swapped" | "started") {
            "0.6.0"
        } else {
            V0
        };
        assert_eq!(v, expected_at_path, "after SIGKILL at {step}");

        // A restart (what systemd/OpenRC/procd do) reconnects, and the
        // update completes.
        host.start(&[]);
        fx.wait_version(&host.runner.id, "0.6.0");
        fx.wait_report(&host.runner.id, "0.6.0", "installed");
        if matches!(step, "staged" | "trial") {
            fx.wait_report(&host.runner.id, "0.6.0", "interrupted");
        }
        assert_eq!(host.installed_version(), "0.6.0");
        assert!(host.leftovers().is_empty(), "{step}: staged file left");
        // The next host starts without a desired version.
        let (st, v) = fx.tenant.call(
            "PUT",
            "/api/v1/update-policy",
            Some(json!({ "version": null })),
        );
        assert_eq!(st, 200, "{v}");
    }
}

#[test]
fn air_gapped_update_from_files_with_and_without_a_running_runner() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);
    let files = TempDir::new("carried");
    let write = |v: &str, keys: &Keys| -> (PathBuf, PathBuf) {
        let (bin, sig) = sign(keys, v, ARCH, &binary_with_version(v));
        let b = files.path().join(format!("tether-{v}"));
        let s = files.path().join(format!("tether-{v}.minisig"));
        fs::write(&b, bin).unwrap();
        fs::write(&s, sig).unwrap();
        (b, s)
    };
    let (bin_path, state_dir) = (host.bin.clone(), host.runner.dir.path().to_owned());
    let update = |args: &[&str], b: &Path, s: &Path| {
        let mut c = Command::new(&bin_path);
        c.arg("--state-dir")
            .arg(&state_dir)
            .arg("update")
            .args(args)
            .arg("--file")
            .arg(b)
            .arg("--sig")
            .arg(s);
        c.output().unwrap()
    };

    // --check says what would happen and changes nothing.
    let (b, s) = write("0.5.0", &fx.keys);
    let out = update(&["--check"], &b, &s);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("would install:    0.5.0 (upgrade"), "{text}");
    let other = keypair("other");
    let (bw, sw) = write("0.5.9", &other);
    let out = update(&["--check"], &bw, &sw);
    assert_eq!(out.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would refuse"));
    let out = update(&[], &bw, &sw);
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.installed_version(), V0);

    // With the runner running: handed over, swapped in place.
    let pid = host.runner.pid();
    let out = update(&[], &b, &s);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fx.wait_version(&host.runner.id, "0.5.0");
    assert_eq!(host.runner.pid(), pid);
    host.wait_installed("0.5.0");

    // With no runner running: the command swaps; the next start runs it.
    signal(host.runner.child(), libc::SIGTERM);
    assert!(wait_exit(host.runner.child(), Duration::from_secs(10)).is_some());
    let (b, s) = write("0.5.1", &fx.keys);
    let out = update(&[], &b, &s);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("installed 0.5.1"));
    assert_eq!(host.installed_version(), "0.5.1");
    host.start(&[]);
    fx.wait_version(&host.runner.id, "0.5.1");
    fx.wait_report(&host.runner.id, "0.5.1", "installed");
}

#[test]
fn a_swapped_version_that_cannot_connect_by_the_deadline_puts_the_previous_back() {
    let mut fx = Fx::new();
    fx.publish("0.7.0", &binary_with_version("0.7.0"));
    let mut host = fx.host();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.runner.dir.path().join("runner.log"))
        .unwrap();
    // Stop right after the swap, before the re-exec.
    let child = host
        .runner
        .cmd()
        .args(["run", "--heartbeat", "1s", "--metrics-interval", "off"])
        .args(["--fingerprint-interval", "off", "--docker-socket", "off"])
        .env("TETHER_UPDATE_PAUSE_AT", "swapped")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    host.runner.child = Some(child);
    fx.wait_version(&host.runner.id, V0);
    fx.desire("0.7.0");
    wait_for(WAIT, "pause after the swap", || {
        host.runner
            .log()
            .contains("pausing at step 'swapped'")
            .then_some(())
    });
    signal(host.runner.child(), libc::SIGKILL);
    assert!(wait_exit(host.runner.child(), Duration::from_secs(5)).is_some());
    assert_eq!(host.installed_version(), "0.7.0");

    // The new version starts while the server is down: it cannot connect
    // within its deadline, so it puts the previous binary back and execs it.
    fx.server.stop();
    host.start(&["--health-timeout", "2s"]);
    wait_for(WAIT, "rollback to the previous binary", || {
        // The log line comes right after the rename: wait for both.
        (host.installed_version() == V0 && host.runner.log().contains("is back")).then_some(())
    });
    let pid = host.runner.pid();
    assert!(
        host.runner.child().try_wait().unwrap().is_none(),
        "runner still running"
    );
    let log = host.runner.log();
    assert!(log.contains("did not connect within 2s"), "{log}");

    // Back online: the old version connects and reports the failure.
    fx.server.restart();
    fx.wait_version(&host.runner.id, V0);
    let r = fx.wait_report(&host.runner.id, "0.7.0", "failed");
    assert!(
        r["reason"].as_str().unwrap().contains("did not connect"),
        "{r}"
    );
    assert_eq!(
        host.runner.pid(),
        pid,
        "rolled back in place (same process)"
    );
    // Not tried again.
    let r = fx.wait_report(&host.runner.id, "0.7.0", "rejected");
    assert!(
        r["reason"].as_str().unwrap().contains("not tried again"),
        "{r}"
    );
}

/// `tether-server` CLI with the fixture's server and `token`.
fn cli(fx: &Fx, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(server_bin())
        .args(args)
        .args(["--api", &fx.server.url, "--token", token, "--ca-file"])
        .arg(&fx.server.ca)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_operator_cli_uploads_a_release_rolls_it_out_and_shows_the_reports() {
    let fx = Fx::new();
    let mut host = fx.host();
    host.start(&[]);
    fx.wait_version(&host.runner.id, V0);

    // A release directory as `build.sh sign` leaves it.
    let dir = TempDir::new("dist");
    let bin = dir.path().join(format!("tether-{ARCH}"));
    fs::write(&bin, binary_with_version("0.8.0")).unwrap();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh"))
        .arg("sign")
        .arg(dir.path())
        .arg("0.8.0")
        .arg(&bin)
        .env("TETHER_SIGNING_KEY", &fx.keys.secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir_s = dir.path().to_str().unwrap();

    // Upload needs the admin token.
    let (ok, text) = cli(&fx, &fx.tenant.token, &["release", "upload", dir_s]);
    assert!(!ok, "{text}");
    assert!(text.contains("admin token"), "{text}");
    let (ok, text) = cli(&fx, &fx.server.admin_token, &["release", "upload", dir_s]);
    assert!(ok, "{text}");
    assert!(
        text.contains("uploaded 0.8.0/manifest.json.minisig"),
        "{text}"
    );
    let (ok, text) = cli(&fx, &fx.tenant.token, &["release", "list"]);
    assert!(
        ok && text.contains("0.8.0") && text.contains("true"),
        "{text}"
    );

    // A canary of 0 % selects nobody; 100 % everyone.
    let (ok, text) = cli(
        &fx,
        &fx.tenant.token,
        &["update", "set", "0.8.0", "--canary", "0"],
    );
    assert!(ok, "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fx.tenant.runner(&host.runner.id)["version"], V0);
    let (ok, text) = cli(&fx, &fx.tenant.token, &["update", "set", "0.8.0"]);
    assert!(ok, "{text}");
    fx.wait_version(&host.runner.id, "0.8.0");
    fx.wait_report(&host.runner.id, "0.8.0", "installed");
    let (ok, text) = cli(
        &fx,
        &fx.tenant.token,
        &["runner", "updates", &host.runner.id],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("installed") && text.contains("desired:  0.8.0"),
        "{text}"
    );
    let (ok, text) = cli(&fx, &fx.tenant.token, &["update", "show"]);
    assert!(ok && text.contains("0.8.0"), "{text}");

    // `tether update --check` on the host shows the settings and the history.
    let out = Command::new(&host.bin)
        .arg("--state-dir")
        .arg(host.runner.dir.path())
        .args(["update", "--check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("version:          0.8.0"), "{text}");
    assert!(text.contains("trusted keys:     1 from"), "{text}");
    assert!(text.contains("downgrades:       refused"), "{text}");
}

/// An update rollout in waves of one over four real runners, the second
/// of which refuses updates (its host has TETHER_UPDATE=off): the CLI
/// follows it and exits 1 when it halts after that wave; the other two
/// are untouched (no offer, no report, no own desired version). Fixed (the
/// host restarted with updates on) and resumed, the rest update; the
/// failed one is then updated by its own desired version.
#[test]
fn an_update_rollout_halts_at_the_wave_that_fails_and_resume_updates_the_rest() {
    let fx = Fx::new();
    let mut hosts: Vec<Host> = Vec::new();
    for n in 1..=4 {
        let mut host = fx.host();
        if n == 2 {
            host.runner.env.push(("TETHER_UPDATE".into(), "off".into()));
        }
        hosts.push(start_rollout_host(&fx, host, &format!("u{n}"), "upd", &[]));
    }
    fx.publish("0.5.0", &binary_with_version("0.5.0"));

    // Bad input: a clear error, nothing started.
    for (body, says) in [
        (
            json!({"selector": "fleet=upd", "update": {"version": "9.9.9"}}),
            "no release",
        ),
        (
            json!({"selector": "fleet=upd", "update": {"version": "0.5.0", "reconnect_s": 1}}),
            "reconnect_s",
        ),
        (
            json!({"selector": "fleet=upd", "soak_s": 100000, "update": {"version": "0.5.0"}}),
            "soak_s",
        ),
        (
            json!({"selector": "fleet=upd", "job": {"command": "true"}, "update": {"version": "0.5.0"}}),
            "one of them",
        ),
    ] {
        let (st, v) = fx
            .tenant
            .call("POST", "/api/v1/rollouts", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }

    let (ok, text, _) =
        rollout_in_waves_of_one(&fx, "upd", &["--soak", "1s", "--reconnect", "60s"]);
    assert!(!ok, "a halted rollout exits non-zero: {text}");
    assert!(
        text.contains("halted: 1 succeeded, 1 failed, 0 skipped, 2 not started of 4"),
        "{text}"
    );
    assert!(text.contains("soaking until"), "{text}");
    assert!(text.contains("self-update is off on this host"), "{text}");

    let (_, list) = fx.tenant.call("GET", "/api/v1/rollouts", None);
    assert_eq!(list[0]["kind"], "update", "{list}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (_, v) = fx
        .tenant
        .call("GET", &format!("/api/v1/rollouts/{id}"), None);
    assert_eq!(
        target_states(&v),
        ["succeeded", "failed", "waiting", "waiting"],
        "{v}"
    );
    assert_eq!(v["targets"][0]["status"], "installed", "{v}");
    assert_eq!(v["targets"][0]["from_version"], V0, "{v}");
    assert!(
        v["targets"][1]["status"]
            .as_str()
            .unwrap()
            .starts_with("rejected: "),
        "{v}"
    );
    assert_eq!(fx.tenant.runner(&hosts[0].runner.id)["version"], "0.5.0");
    // The failed runner is given back to its policy (none): no own version.
    assert!(fx.reports(&hosts[1].runner.id)["desired_version"].is_null());
    // The runners of the waves after it were never touched.
    for h in &hosts[2..] {
        let r = fx.reports(&h.runner.id);
        assert_eq!(r["version"], V0, "{r}");
        assert!(r["desired"].is_null(), "{r}");
        assert_eq!(r["reports"], json!([]), "{r}");
        assert_eq!(h.installed_version(), V0);
    }

    // The runners list by update state (the API and the CLI agree).
    let by_state = |st: &str| -> Vec<String> {
        let (code, v) = fx.tenant.call(
            "GET",
            &format!("/api/v1/runners?update={st}&sort=name"),
            None,
        );
        assert_eq!(code, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(by_state("current"), ["u1"]);
    assert_eq!(by_state("none"), ["u2", "u3", "u4"]);
    assert!(by_state("pending").is_empty());
    let (code, v) = fx
        .tenant
        .call("GET", "/api/v1/runners/counts?update=none", None);
    assert_eq!((code, v["total"].clone()), (200, json!(3)), "{v}");
    let (code, v) = fx.tenant.call("GET", "/api/v1/runners?update=sleepy", None);
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("update:"),
        "{v}"
    );
    let (ok, text) = cli(
        &fx,
        &fx.tenant.token,
        &["runners", "--update", "current", "--json"],
    );
    assert!(ok && text.contains(&hosts[0].runner.id), "{text}");
    assert!(!text.contains(&hosts[2].runner.id), "{text}");
    // Wanting the version it rejected makes it `failed` (its newest report).
    let (ok, text) = cli(
        &fx,
        &fx.tenant.token,
        &["update", "desired", "u2", "--version", "0.5.0"],
    );
    assert!(ok, "{text}");
    assert_eq!(by_state("failed"), ["u2"]);
    let (ok, text) = cli(
        &fx,
        &fx.tenant.token,
        &["update", "desired", "u2", "--version", "none"],
    );
    assert!(ok, "{text}");
    assert_eq!(by_state("none"), ["u2", "u3", "u4"]);

    // Fixed: the host restarts with updates on. Resumed, the rest update.
    signal(hosts[1].runner.child(), libc::SIGTERM);
    assert!(wait_exit(hosts[1].runner.child(), Duration::from_secs(10)).is_some());
    hosts[1].runner.env.retain(|(k, _)| k != "TETHER_UPDATE");
    hosts[1].start(&[]);
    fx.wait_version(&hosts[1].runner.id, V0);
    let (ok, text) = cli(&fx, &fx.tenant.token, &["rollout", "resume", &id]);
    assert!(ok, "{text}");
    let (ok, text) = cli(&fx, &fx.tenant.token, &["rollout", "watch", &id]);
    // One runner failed in the rollout: watch says so with its exit.
    assert!(!ok, "{text}");
    assert!(
        text.contains("done: 3 succeeded, 1 failed, 0 skipped, 0 not started of 4"),
        "{text}"
    );
    for h in [&hosts[2], &hosts[3]] {
        fx.wait_version(&h.runner.id, "0.5.0");
        fx.wait_report(&h.runner.id, "0.5.0", "installed");
        h.wait_installed("0.5.0");
    }
    // The one left behind: its own desired version (the dashboard's
    // bulk action and `update desired` set it).
    // Its own desired version is the one it rejected before: `failed`
    // until it is offered again (it runs updates now: it installs).
    let (ok, text) = cli(
        &fx,
        &fx.tenant.token,
        &["update", "desired", "u2", "--version", "0.5.0"],
    );
    assert!(ok, "{text}");
    fx.wait_version(&hosts[1].runner.id, "0.5.0");
    let r = fx.reports(&hosts[1].runner.id);
    assert_eq!(
        (r["desired"].clone(), r["desired_version"].clone()),
        (json!("0.5.0"), json!("0.5.0")),
        "{r}"
    );
    assert_eq!(by_state("current"), ["u1", "u2", "u3", "u4"]);
    // In bulk, by ids; a bad one changes nothing.
    let (st, v) = fx.tenant.call(
        "POST",
        "/api/v1/desired-version",
        Some(json!({"runners": [hosts[0].runner.id, "rn_nope"], "version": null})),
    );
    assert_eq!(st, 404, "{v}");
    assert_eq!(fx.reports(&hosts[0].runner.id)["desired_version"], "0.5.0");
    let (st, v) = fx.tenant.call(
        "POST",
        "/api/v1/desired-version",
        Some(json!({"selector": "fleet=upd", "version": null})),
    );
    assert_eq!((st, v["changed"].clone()), (200, json!(4)), "{v}");
    assert!(fx.reports(&hosts[0].runner.id)["desired"].is_null());
}

/// A host of an update rollout: named `name`, labelled `fleet=<fleet>`
/// (the selector the test's rollout names), started with `args` and at
/// the version the tests start from.
fn rollout_host(fx: &Fx, name: &str, fleet: &str, args: &[&str]) -> Host {
    start_rollout_host(fx, fx.host(), name, fleet, args)
}

/// [`rollout_host`] of a `host` made beforehand (with its own environment).
fn start_rollout_host(fx: &Fx, mut host: Host, name: &str, fleet: &str, args: &[&str]) -> Host {
    host.start(args);
    fx.wait_version(&host.runner.id, V0);
    let (st, v) = fx.tenant.call(
        "PUT",
        &format!("/api/v1/runners/{}/name", host.runner.id),
        Some(json!({ "name": name })),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = fx.tenant.call(
        "PATCH",
        &format!("/api/v1/runners/{}/labels", host.runner.id),
        Some(json!({"set": {"fleet": fleet}})),
    );
    assert_eq!(st, 200, "{v}");
    host
}

/// `update rollout 0.5.0` with the CLI over the runners labelled
/// `fleet=FLEET`, in waves of one, halting at the first failure, with
/// `extra` arguments: (exited 0, its output, how long it took).
fn rollout_in_waves_of_one(fx: &Fx, fleet: &str, extra: &[&str]) -> (bool, String, Duration) {
    let selector = format!("fleet={fleet}");
    let mut args = vec![
        "update",
        "rollout",
        "0.5.0",
        "--selector",
        &selector,
        "--wave",
        "1",
        "--max-failures",
        "1",
    ];
    args.extend_from_slice(extra);
    let t0 = std::time::Instant::now();
    let (ok, text) = cli(fx, &fx.tenant.token, &args);
    let took = t0.elapsed();
    eprintln!("rollout halted after {took:?}:\n{text}");
    (ok, text, took)
}

/// The state of each target of rollout view `v`, in order.
fn target_states(v: &Value) -> Vec<&str> {
    v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect()
}

/// The runner's own desired version (`None`: its policy's).
fn own_desired(fx: &Fx, runner: &str) -> Option<String> {
    fx.reports(runner)["desired_version"]
        .as_str()
        .map(str::to_owned)
}

/// Set the runner's own desired version through the API.
fn set_own_desired(fx: &Fx, runner: &str, version: Option<&str>) {
    let (st, v) = fx.tenant.call(
        "PUT",
        &format!("/api/v1/runners/{runner}/desired-version"),
        Some(json!({ "version": version })),
    );
    assert_eq!(st, 200, "{v}");
}

fn rollout_view(fx: &Fx, id: &str) -> Value {
    let (st, v) = fx
        .tenant
        .call("GET", &format!("/api/v1/rollouts/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

/// Start an update rollout through the API; its id.
fn start_update_rollout(fx: &Fx, body: Value) -> String {
    let (st, v) = fx.tenant.call("POST", "/api/v1/rollouts", Some(body));
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Nothing of the rollout reached this host: no report, no own desired
/// version, still the version it started at.
fn untouched(fx: &Fx, h: &Host) {
    let r = fx.reports(&h.runner.id);
    assert_eq!(r["version"], V0, "{r}");
    assert!(r["desired_version"].is_null(), "{r}");
    assert_eq!(r["reports"], json!([]), "{r}");
    assert_eq!(h.installed_version(), V0);
}

/// "Did not reconnect": the release is a signed program that starts and
/// never reaches the server (it sleeps), and the first host's health
/// deadline (20 s) is longer than the rollout's `reconnect` (5 s), so no
/// report comes within the bound. The runner fails as not connected at
/// the version in time, the rollout halts (`--max-failures 1`) before
/// the second wave, the summary names the reason, and the runner's
/// previous own desired version (the one it runs) is put back. Later the
/// runner ends the trial itself, reports it, and is not offered the
/// version again.
#[test]
fn an_update_rollout_fails_a_runner_that_does_not_reconnect_within_the_bound() {
    let fx = Fx::new();
    let h1 = rollout_host(&fx, "nr1", "nr", &["--health-timeout", "20s"]);
    let h2 = rollout_host(&fx, "nr2", "nr", &[]);
    // nr1's own desired version before the rollout: the one it runs (a
    // release of it must exist for the server to accept it).
    fx.publish(V0, &script("exit 0"));
    set_own_desired(&fx, &h1.runner.id, Some(V0));
    fx.publish("0.5.0", &script("exec sleep 600"));

    let (ok, text, took) = rollout_in_waves_of_one(&fx, "nr", &["--reconnect", "5s"]);
    assert!(!ok, "a halted rollout exits non-zero: {text}");
    assert!(
        text.contains("halted: 0 succeeded, 1 failed, 0 skipped, 1 not started of 2"),
        "{text}"
    );
    assert!(text.contains("not connected at 0.5.0 within 5 s"), "{text}");
    assert!(took >= Duration::from_secs(5), "failed before the bound");

    let (_, list) = fx.tenant.call("GET", "/api/v1/rollouts", None);
    let v = rollout_view(&fx, list[0]["id"].as_str().unwrap());
    assert_eq!(v["state"], "halted", "{v}");
    assert_eq!(v["targets"][0]["state"], "failed", "{v}");
    assert_eq!(
        v["targets"][0]["status"], "not connected at 0.5.0 within 5 s",
        "{v}"
    );
    assert_eq!(v["targets"][1]["state"], "waiting", "{v}");
    // No report came before the bound: the runner was still in its trial.
    assert!(
        !fx.reports(&h1.runner.id)["reports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["version"] == "0.5.0"),
        "a report came before the bound: the test proves nothing"
    );
    // Its previous own desired version is back; the next wave untouched.
    assert_eq!(own_desired(&fx, &h1.runner.id).as_deref(), Some(V0));
    untouched(&fx, &h2);

    // The runner's own deadline ends the trial: it reports the failure,
    // is back at the old version, and is not offered 0.5.0 again.
    let r = fx.wait_report(&h1.runner.id, "0.5.0", "failed");
    assert!(
        r["reason"].as_str().unwrap().contains("did not connect"),
        "{r}"
    );
    fx.wait_version(&h1.runner.id, V0);
    std::thread::sleep(Duration::from_secs(2));
    let r = fx.reports(&h1.runner.id);
    assert_eq!(r["desired"], V0, "{r}");
    assert_eq!(
        r["reports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["version"] == "0.5.0")
            .count(),
        1,
        "offered again after the rollout gave it back: {r}"
    );
    assert_eq!(h1.installed_version(), V0);
}

/// A failure while a wave soaks, end to end: waves of one with a soak of
/// 60 s over two real runners. The first installs the version; while its
/// wave soaks, its host owner puts the previous binary back and turns
/// self-update off (the package manager owns the binary now). The runner
/// comes back at the old version and rejects the version when offered
/// again: the rollout halts before the second wave starts (which is never
/// offered anything), naming the reason, and the runner gets its previous
/// desired version (none: its policy) back.
#[test]
fn an_update_rollout_halts_when_a_runner_of_the_soaking_wave_goes_back() {
    let fx = Fx::new();
    let mut h1 = rollout_host(&fx, "sk1", "sk", &[]);
    let h2 = rollout_host(&fx, "sk2", "sk", &[]);
    fx.publish("0.5.0", &binary_with_version("0.5.0"));
    let id = start_update_rollout(
        &fx,
        json!({"selector": "fleet=sk", "wave": "1", "max_failures": 1, "soak_s": 60,
               "update": {"version": "0.5.0", "reconnect_s": 60}}),
    );
    let v = wait_for(WAIT, "the first wave installed and soaking", || {
        let v = rollout_view(&fx, &id);
        (v["targets"][0]["state"] == "succeeded" && v["soaking_until"].is_string()).then_some(v)
    });
    let soaked_from = std::time::Instant::now();
    assert_eq!(v["targets"][0]["status"], "installed", "{v}");
    assert_eq!(v["targets"][1]["state"], "waiting", "{v}");
    h1.wait_installed("0.5.0");

    // The host owner goes back to the previous binary, self-update off.
    signal(h1.runner.child(), libc::SIGTERM);
    assert!(wait_exit(h1.runner.child(), Duration::from_secs(10)).is_some());
    fs::rename(h1.install.path().join(".tether.prev"), &h1.bin).unwrap();
    assert_eq!(h1.installed_version(), V0);
    h1.runner.env.push(("TETHER_UPDATE".into(), "off".into()));
    h1.start(&[]);

    let v = wait_for(WAIT, "the rollout halted", || {
        let v = rollout_view(&fx, &id);
        (v["state"] == "halted").then_some(v)
    });
    let halted_after = soaked_from.elapsed();
    eprintln!("halted {halted_after:?} into the soak: {v}");
    assert!(
        halted_after < Duration::from_secs(60),
        "not halted within the soak"
    );
    assert_eq!(v["over"], true, "{v}");
    assert_eq!(target_states(&v), ["failed", "waiting"], "{v}");
    // Found back at the old version, or its rejection read first: either
    // way the reason is named.
    let why = v["targets"][0]["status"].as_str().unwrap();
    assert!(
        why == format!("back at {V0} while its wave soaked")
            || why.starts_with("rejected: self-update is off on this host"),
        "{why}"
    );
    let t = &v["totals"];
    assert_eq!(
        (
            t["succeeded"].clone(),
            t["failed"].clone(),
            t["waiting"].clone()
        ),
        (json!(0), json!(1), json!(1)),
        "{v}"
    );
    fx.wait_version(&h1.runner.id, V0);
    assert!(own_desired(&fx, &h1.runner.id).is_none());
    // The soak is over by now for a rollout that had not halted: the
    // second wave was never started.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rollout_view(&fx, &id)["targets"][1]["state"], "waiting");
    untouched(&fx, &h2);
}

/// A runner of the soaking wave that goes away: back within the
/// reconnect bound, it is forgiven (its away time starts again); away
/// longer, its target fails late and the rollout halts, naming why.
#[test]
fn an_update_rollout_halts_when_a_soaking_runner_stays_away_past_the_reconnect_bound() {
    let fx = Fx::new();
    let mut h1 = rollout_host(&fx, "sa1", "sa", &[]);
    let h2 = rollout_host(&fx, "sa2", "sa", &[]);
    fx.publish("0.5.0", &binary_with_version("0.5.0"));
    let id = start_update_rollout(
        &fx,
        json!({"selector": "fleet=sa", "wave": "1", "max_failures": 1, "soak_s": 120,
               "update": {"version": "0.5.0", "reconnect_s": 10}}),
    );
    wait_for(WAIT, "the first wave installed and soaking", || {
        let v = rollout_view(&fx, &id);
        (v["targets"][0]["state"] == "succeeded" && v["soaking_until"].is_string()).then_some(())
    });
    h1.wait_installed("0.5.0");
    fx.wait_version(&h1.runner.id, "0.5.0");

    // Away about 6 s, twice, 2 s apart: over 12 s in all, but never the
    // 10 s bound at once (a restart and its connect take well under 4 s).
    let mut away = Duration::ZERO;
    for _ in 0..2 {
        let left = std::time::Instant::now();
        signal(h1.runner.child(), libc::SIGTERM);
        assert!(wait_exit(h1.runner.child(), Duration::from_secs(10)).is_some());
        fx.tenant
            .wait_health(&h1.runner.id, "unreachable", Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(6));
        h1.start(&[]);
        fx.tenant
            .wait_health(&h1.runner.id, "active", Duration::from_secs(20));
        away += left.elapsed();
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(away > Duration::from_secs(12), "{away:?}");
    let v = rollout_view(&fx, &id);
    assert_eq!(
        (v["state"].as_str(), v["targets"][0]["state"].as_str()),
        (Some("running"), Some("succeeded")),
        "short absences are not a failure: {v}"
    );

    // Away for good.
    signal(h1.runner.child(), libc::SIGTERM);
    assert!(wait_exit(h1.runner.child(), Duration::from_secs(10)).is_some());
    let gone = std::time::Instant::now();
    let v = wait_for(WAIT, "the rollout halted", || {
        let v = rollout_view(&fx, &id);
        (v["state"] == "halted").then_some(v)
    });
    let took = gone.elapsed();
    eprintln!("halted {took:?} after the runner went: {v}");
    // Counted from the driver's first look that found it gone (each 2 s),
    // which may come a moment before `gone`.
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(25),
        "10 s bound, looked at each 2 s: {took:?}"
    );
    assert_eq!(target_states(&v), ["failed", "waiting"], "{v}");
    assert_eq!(
        v["targets"][0]["status"], "not connected for 10 s while its wave soaked",
        "{v}"
    );
    untouched(&fx, &h2);
}

/// Abort of an update rollout over three real runners in waves of two,
/// with a release that is slow to come up (a signed script that waits 5 s,
/// then execs the real 0.5.0 runner: a slow host). ab1 takes the offer:
/// its install is under way (its link closed) when the rollout is
/// aborted; ab2 is offline when its wave starts, so the version waits for
/// it; ab3's wave has not started. The abort skips ab3 (never offered
/// anything) and takes the version back from ab1 and ab2 (their previous
/// own desired versions are back at once). What it cannot stop, it counts:
/// ab1's install lands and its target ends succeeded, "already under way
/// at the abort". ab2, started again, connects, is offered nothing new and
/// stays at the old version, and its target ends skipped ("withdrawn by
/// the abort").
#[test]
fn aborting_an_update_rollout_takes_the_version_back_from_runners_not_at_it() {
    let fx = Fx::new();
    let h1 = rollout_host(&fx, "ab1", "ab", &[]);
    let mut h2 = rollout_host(&fx, "ab2", "ab", &[]);
    let h3 = rollout_host(&fx, "ab3", "ab", &[]);
    fx.publish(V0, &script("exit 0"));
    set_own_desired(&fx, &h2.runner.id, Some(V0));
    signal(h2.runner.child(), libc::SIGTERM);
    assert!(wait_exit(h2.runner.child(), Duration::from_secs(10)).is_some());
    fx.tenant
        .wait_health(&h2.runner.id, "unreachable", Duration::from_secs(15));
    let real = TempDir::new("real-0.5.0");
    let real_bin = real.path().join("tether-0.5.0");
    fs::write(&real_bin, binary_with_version("0.5.0")).unwrap();
    make_executable(&real_bin);
    fx.publish(
        "0.5.0",
        &script(&format!("sleep 5; exec {} \"$@\"", real_bin.display())),
    );

    let id = start_update_rollout(
        &fx,
        json!({"selector": "fleet=ab", "wave": "2", "max_failures": 1,
               "update": {"version": "0.5.0", "reconnect_s": 300}}),
    );
    // Both started; ab1 closed its link to install, ab2 is away.
    let v = wait_for(WAIT, "ab1 installing, ab2 waited for", || {
        let v = rollout_view(&fx, &id);
        (v["targets"][0]["status"] == "waiting for the runner"
            && v["targets"][1]["status"] == "waiting for the runner")
            .then_some(v)
    });
    assert_eq!(v["targets"][0]["state"], "running", "{v}");
    assert_eq!(own_desired(&fx, &h2.runner.id).as_deref(), Some("0.5.0"));

    let (ok, text) = cli(&fx, &fx.tenant.token, &["rollout", "abort", &id]);
    assert!(ok, "{text}");
    assert!(text.contains("aborted"), "{text}");
    let v = rollout_view(&fx, &id);
    assert_eq!(v["state"], "aborted", "{v}");
    assert_eq!(v["targets"][1]["status"], "withdrawn by the abort", "{v}");
    assert_eq!(v["targets"][2]["state"], "skipped", "{v}");
    // Taken back at once: their previous own desired versions.
    assert_eq!(own_desired(&fx, &h1.runner.id), None);
    assert_eq!(own_desired(&fx, &h2.runner.id).as_deref(), Some(V0));
    // Aborting again is refused.
    let (st, e) = fx
        .tenant
        .call("POST", &format!("/api/v1/rollouts/{id}/abort"), None);
    assert_eq!(st, 409, "{e}");

    // The install under way lands: counted, and kept.
    fx.wait_version(&h1.runner.id, "0.5.0");
    fx.wait_report(&h1.runner.id, "0.5.0", "installed");
    // ab2 back online: nothing to install, its target settles as withdrawn.
    h2.start(&[]);
    fx.wait_version(&h2.runner.id, V0);
    let (ok, text) = cli(&fx, &fx.tenant.token, &["rollout", "watch", &id]);
    assert!(!ok, "an aborted rollout exits non-zero: {text}");
    assert!(
        text.contains("aborted: 1 succeeded, 0 failed, 2 skipped, 0 not started of 3"),
        "{text}"
    );
    let v = rollout_view(&fx, &id);
    assert_eq!(
        v["targets"][0]["status"], "installed: already under way at the abort",
        "{v}"
    );
    assert_eq!(
        v["targets"][1]["status"], "withdrawn by the abort: not installed",
        "{v}"
    );
    let r = fx.reports(&h2.runner.id);
    assert_eq!(
        (r["version"].clone(), r["reports"].clone()),
        (json!(V0), json!([])),
        "{r}"
    );
    assert_eq!(h2.installed_version(), V0);
    untouched(&fx, &h3);
    // ab1 is not offered anything after (no own desired version, no policy).
    std::thread::sleep(Duration::from_secs(1));
    let r = fx.reports(&h1.runner.id);
    assert_eq!(r["version"], "0.5.0", "{r}");
    assert!(r["desired"].is_null(), "{r}");
}
