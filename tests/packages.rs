//! Distribution packages and the offline source bundle, tested as far as this
//! Debian machine allows:
//! - Alpine: the APKBUILD's `package()` lays out the files (run by busybox
//!   sh, like abuild's ash); the OpenRC script, under busybox sh with
//!   stand-ins for openrc-run's helpers, enrolls from conf.d and starts a
//!   runner that connects to a real server;
//! - OpenWrt: the procd init script reads the UCI config (parsed the way
//!   OpenWrt's `config_load` does: by running it as shell), enrolls, and
//!   hands procd a command line that connects;
//! - Debian: the .deb's contents, and (`make edge`, root) install, upgrade
//!   over itself, remove and purge with dpkg;
//! - `make vendor`: the bundle builds the release runner with no network and
//!   an empty cargo home (`make edge`).
//!
//! The scripts are real; only what the init systems themselves provide
//! (ebegin, checkpath, procd_set_param, uci ...) is replaced by small shell
//! functions, written out below so the test shows what it assumes.

use crate::util::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The static x86_64 runner from build.sh (`make test` builds it).
fn static_runner() -> PathBuf {
    let p = repo().join("dist/x86_64-unknown-linux-musl/tether");
    assert!(p.exists(), "{} missing: run ./build.sh", p.display());
    p
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `busybox sh -c SCRIPT` with busybox's applets first on PATH, so the
/// scripts meet busybox's sed, mkdir, chmod ... as on Alpine and OpenWrt
/// (tools Debian's busybox lacks, like `install`, come from the system).
fn busybox_sh(dir: &Path, script: &str) -> Command {
    let bb = dir.join("bb");
    if !bb.exists() {
        fs::create_dir_all(&bb).unwrap();
        let out = Command::new("busybox")
            .args(["--install", "-s"])
            .arg(&bb)
            .output()
            .expect("busybox (apt-get install busybox-static; make test's set-up does)");
        assert!(out.status.success(), "busybox --install: {}", text(&out));
    }
    let mut c = Command::new("busybox");
    c.args(["sh", "-c", script])
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bb.display()),
        )
        .env("HOME", dir)
        .stdin(Stdio::null());
    c
}

/// A process killed and reaped when the test ends, also when it fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_active_then_stop(tenant: &Tenant, id: &str, child: &mut Child) {
    tenant.wait_health(id, "active", Duration::from_secs(20));
    signal(child, libc::SIGTERM);
    let st = wait_exit(child, Duration::from_secs(15)).expect("runner did not stop on SIGTERM");
    assert!(st.success(), "runner exit: {st}");
    tenant.wait_health(id, "unreachable", Duration::from_secs(10));
}

fn runner_id(state_dir: &Path) -> String {
    let cred: serde_json::Value =
        serde_json::from_slice(&fs::read(state_dir.join("credential.json")).unwrap()).unwrap();
    cred["runner_id"].as_str().unwrap().to_string()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

// ---- Alpine ---------------------------------------------------------------

const OPENRC_STUBS: &str = r#"
# Stand-ins for what openrc-run provides to a service script.
ebegin() { echo "ebegin: $*" >&2; }
eend() { st=$1; shift; [ "$st" -eq 0 ] || echo "eend: $*" >&2; return "$st"; }
eerror() { echo "eerror: $*" >&2; }
einfo() { echo "einfo: $*" >&2; }
ewarn() { echo "ewarn: $*" >&2; }
checkpath() {
    m=
    while [ $# -gt 1 ]; do
        case $1 in -m) m=$2; shift 2 ;; *) shift ;; esac
    done
    mkdir -p "$1" && { [ -z "$m" ] || chmod "$m" "$1"; }
}
need() { echo "need $*"; }
use() { echo "use $*"; }
after() { echo "after $*"; }
before() { echo "before $*"; }
RC_SVCNAME=tether
"#;

#[test]
fn apkbuild_packages_the_runner_with_its_openrc_files() {
    let tmp = TempDir::new("apk");
    let alpine = repo().join("packaging/alpine");
    // abuild unpacks the source tarball into $srcdir and copies the local
    // sources beside it; package() runs in $builddir after build().
    let src = tmp.path().join("src");
    let build = src.join(format!("tether-{}", env!("CARGO_PKG_VERSION")));
    fs::create_dir_all(build.join("target/release")).unwrap();
    fs::copy(static_runner(), build.join("target/release/tether")).unwrap();
    for f in ["tether.initd", "tether.confd"] {
        fs::copy(alpine.join(f), src.join(f)).unwrap();
    }
    let pkg = tmp.path().join("pkg");
    let script = format!(
        r#"set -e
srcdir='{src}'; pkgdir='{pkg}'
. '{apkbuild}'
echo "pkgname=$pkgname pkgver=$pkgver subpackages=$subpackages"
cd "$builddir"
package
"#,
        src = src.display(),
        pkg = pkg.display(),
        apkbuild = alpine.join("APKBUILD").display()
    );
    let out = busybox_sh(tmp.path(), &script).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "package() failed: {log}");
    assert!(
        log.contains(&format!(
            "pkgname=tether pkgver={} subpackages=tether-openrc",
            env!("CARGO_PKG_VERSION")
        )),
        "APKBUILD metadata out of step with Cargo.toml: {log}"
    );
    assert_eq!(mode(&pkg.join("usr/bin/tether")), 0o755);
    assert_eq!(mode(&pkg.join("etc/init.d/tether")), 0o755);
    assert_eq!(mode(&pkg.join("etc/conf.d/tether")), 0o644);

    // abuild refuses sources whose sums differ from sha512sums=: an edit to
    // the init script without `abuild checksum` would break the package.
    let apkbuild = fs::read_to_string(alpine.join("APKBUILD")).unwrap();
    for f in ["tether.initd", "tether.confd"] {
        let out = Command::new("sha512sum")
            .arg(alpine.join(f))
            .output()
            .unwrap();
        let sum = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        assert!(
            apkbuild.contains(&format!("{sum}  {f}")),
            "APKBUILD's sha512sums for {f} are stale (run `abuild checksum`, or sha512sum {f})"
        );
    }
}

/// Runs the OpenRC script's `depend` and `start_pre` under busybox sh with
/// `conf` as /etc/conf.d/tether, then (if `then_run`) execs the command the
/// way supervise-daemon would: `$command $command_args`, environment inherited.
fn openrc(dir: &Path, conf: &str, then_run: bool) -> Command {
    let confd = dir.join("conf.d-tether");
    fs::write(&confd, conf).unwrap();
    let script = format!(
        r#"{OPENRC_STUBS}
. '{confd}'
. '{initd}'
command='{bin}'
depend
start_pre || exit 1
{run}
"#,
        confd = confd.display(),
        initd = repo().join("packaging/alpine/tether.initd").display(),
        bin = static_runner().display(),
        run = if then_run {
            "exec $command $command_args"
        } else {
            ""
        },
    );
    busybox_sh(dir, &script)
}

#[test]
fn openrc_service_enrolls_from_conf_d_and_starts_a_connected_runner() {
    let server = Server::start();
    let tenant = server.tenant("alpine");
    let tmp = TempDir::new("openrc");
    let state = tmp.path().join("state");
    let run = tmp.path().join("run");

    // Not enrolled and no token: start_pre refuses, saying what to do.
    let conf = format!(
        "TETHER_STATE_DIR='{}'\nTETHER_RUN_DIR='{}'\n",
        state.display(),
        run.display()
    );
    let out = openrc(tmp.path(), &conf, false).output().unwrap();
    let log = text(&out);
    assert!(
        !out.status.success(),
        "start_pre passed without enrollment: {log}"
    );
    assert!(
        log.contains("not enrolled") && log.contains("/etc/conf.d/tether"),
        "{log}"
    );
    assert!(
        log.contains("need net"),
        "depend() lost its network dependency: {log}"
    );
    assert_eq!(mode(&state), 0o700, "state dir must be private");

    // With server and token in conf.d: enrolls, then runs with the settings
    // from conf.d (exported by the script, read by `tether run`).
    let (_, token) = tenant.enrollment_token(600);
    let conf = format!(
        "{conf}TETHER_SERVER='{}'\nTETHER_TOKEN='{token}'\nTETHER_CA_FILE='{}'\n\
         TETHER_HEARTBEAT=1s\nTETHER_DOCKER_SOCKET=off\nTETHER_LOG=debug\n",
        server.url,
        server.ca.display()
    );
    let log_path = tmp.path().join("runner.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = Reaped(
        openrc(tmp.path(), &conf, true)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let id = wait_for(Duration::from_secs(20), "enrollment", || {
        state
            .join("credential.json")
            .exists()
            .then(|| runner_id(&state))
    });
    wait_active_then_stop(&tenant, &id, &mut child.0);
    assert!(
        run.join("status.json").exists(),
        "the run dir was not passed to the runner"
    );
    // conf.d settings reach `tether run` only if the script exports them:
    // TETHER_LOG=debug shows as DEBUG lines.
    let log = fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("DEBUG"),
        "TETHER_LOG from conf.d not applied:\n{log}"
    );

    // A second start reuses the credential: the spent token is not needed.
    let out = openrc(tmp.path(), &conf, false).output().unwrap();
    assert!(out.status.success(), "restart: {}", text(&out));
}

// ---- OpenWrt --------------------------------------------------------------

const PROCD_STUBS: &str = r#"
# Stand-ins for OpenWrt's /lib/functions.sh and procd.sh. config_load works
# like the real one: `uci export` prints the config in the same syntax as the
# file, which functions.sh runs as shell with these config/option functions.
package() { :; }
config() { CONFIG_SECTION=$2; }
option() { eval "CONFIG_${CONFIG_SECTION}_$1=\$2"; }
list() { :; }
config_load() { . "$UCI_FILE"; }
config_get() {
    eval "v=\${CONFIG_$2_$3:-}"
    [ -n "$v" ] || v=$4
    eval "$1=\$v"
}
config_get_bool() {
    config_get "$@"
    eval "v=\$$1"
    case "$v" in 1 | on | true | yes | enabled) v=1 ;; *) v=0 ;; esac
    eval "$1=$v"
}
uci() { echo "uci $*" >>"$OUT/uci"; }
logger() { echo "logger $*" >&2; }
procd_open_instance() { : >"$OUT/command"; : >"$OUT/env"; : >"$OUT/params"; }
procd_set_param() {
    k=$1; shift
    case $k in
    command) for a; do printf '%s\n' "$a"; done >"$OUT/command" ;;
    env) for a; do printf '%s\n' "$a"; done >"$OUT/env" ;;
    *) echo "$k $*" >>"$OUT/params" ;;
    esac
}
procd_append_param() {
    k=$1; shift
    [ "$k" = command ] && for a; do printf '%s\n' "$a"; done >>"$OUT/command"
    return 0
}
procd_close_instance() { echo closed >>"$OUT/params"; }
procd_add_reload_trigger() { :; }
"#;

/// The shipped /etc/config/tether with some options set.
fn uci_config(set: &[(&str, String)]) -> String {
    let mut conf =
        fs::read_to_string(repo().join("packaging/openwrt/tether/files/tether.config")).unwrap();
    for (k, v) in set {
        let from = format!("option {k} ");
        let line = conf
            .lines()
            .find(|l| l.trim_start().starts_with(&from))
            .unwrap_or_else(|| panic!("tether.config has no option {k}"))
            .to_string();
        conf = conf.replace(&line, &format!("\toption {k} '{v}'"));
    }
    conf
}

fn procd_start(dir: &Path, conf: &str) -> Output {
    let uci_file = dir.join("uci-tether");
    fs::write(&uci_file, conf).unwrap();
    let out_dir = dir.join("procd");
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).unwrap();
    let script = format!(
        r#"{PROCD_STUBS}
UCI_FILE='{uci}'; OUT='{out}'
. '{init}'
PROG='{bin}'
start_service
"#,
        uci = uci_file.display(),
        out = out_dir.display(),
        init = repo()
            .join("packaging/openwrt/tether/files/tether.init")
            .display(),
        bin = static_runner().display(),
    );
    busybox_sh(dir, &script).output().unwrap()
}

#[test]
fn procd_init_reads_uci_enrolls_and_gives_procd_a_working_command() {
    let server = Server::start();
    let tenant = server.tenant("openwrt");
    let tmp = TempDir::new("procd");
    let state = tmp.path().join("etc-tether");
    let run = tmp.path().join("var-run-tether");
    let dirs = [
        ("state_dir", state.display().to_string()),
        ("run_dir", run.display().to_string()),
    ];

    // The shipped config (empty server and token): no instance, a clear log line.
    let out = procd_start(tmp.path(), &uci_config(&dirs));
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("not enrolled") && log.contains("tether.main.token"),
        "{log}"
    );
    assert!(
        !tmp.path().join("procd/params").exists(),
        "procd got an instance: {log}"
    );

    // Disabled: nothing at all, successfully.
    let mut off = dirs.to_vec();
    off.push(("enabled", "0".into()));
    let out = procd_start(tmp.path(), &uci_config(&off));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!tmp.path().join("procd/params").exists());

    let (_, token) = tenant.enrollment_token(600);
    let mut set = dirs.to_vec();
    set.extend([
        ("server", server.url.clone()),
        ("token", token),
        ("ca_file", server.ca.display().to_string()),
        ("heartbeat", "1s".into()),
        ("metrics_interval", "1s".into()),
        ("log_level", "debug".into()),
    ]);
    let out = procd_start(tmp.path(), &uci_config(&set));
    assert!(out.status.success(), "start_service: {}", text(&out));
    assert_eq!(mode(&state), 0o700, "state dir must be private");
    let id = runner_id(&state);
    let uci_log = fs::read_to_string(tmp.path().join("procd/uci")).unwrap();
    assert!(
        uci_log.contains("delete tether.main.token") && uci_log.contains("commit tether"),
        "the spent token stays in the config: {uci_log}"
    );
    let params = fs::read_to_string(tmp.path().join("procd/params")).unwrap();
    assert!(params.contains("respawn 3600 5 0"), "{params}");
    assert!(params.contains("term_timeout 10"), "{params}");
    assert!(params.ends_with("closed\n"), "{params}");

    // Run exactly what procd would run.
    let argv: Vec<String> = fs::read_to_string(tmp.path().join("procd/command"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(argv.contains(&"--docker-socket".to_string()), "{argv:?}");
    let env = fs::read_to_string(tmp.path().join("procd/env")).unwrap();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear();
    for kv in env.lines() {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    assert!(env.contains("TETHER_LOG=debug"), "{env}");
    // opkg owns the binary: no self-update unless UCI says so.
    assert!(env.contains("TETHER_UPDATE=off"), "{env}");
    let mut child = Reaped(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_active_then_stop(&tenant, &id, &mut child.0);
    assert!(run.join("status.json").exists(), "run_dir not used");

    // Once enrolled, a start with the token gone from UCI still works.
    let mut again = dirs.to_vec();
    again.push(("server", server.url.clone()));
    let out = procd_start(tmp.path(), &uci_config(&again));
    assert!(out.status.success(), "restart: {}", text(&out));
}

#[test]
fn openwrt_makefile_installs_the_files_that_exist() {
    let dir = repo().join("packaging/openwrt/tether");
    let mk = fs::read_to_string(dir.join("Makefile")).unwrap();
    assert!(
        mk.contains(&format!("PKG_VERSION:={}", env!("CARGO_PKG_VERSION"))),
        "Makefile version out of step with Cargo.toml"
    );
    for f in ["./files/tether.init", "./files/tether.config"] {
        assert!(mk.contains(f), "Makefile does not install {f}");
        assert!(dir.join(f).exists(), "{f} is missing");
    }
    assert!(
        mk.contains("/etc/config/tether\n"),
        "UCI config is not a conffile"
    );
    // Make recipes must start with a tab.
    let install = mk
        .split("define Package/tether/install\n")
        .nth(1)
        .and_then(|s| s.split("endef").next())
        .unwrap();
    assert!(install.lines().all(|l| l.starts_with('\t')), "{install:?}");
}

// ---- Debian ---------------------------------------------------------------

fn build_deb(out_dir: &Path) -> PathBuf {
    static_runner();
    let out = Command::new(repo().join("packaging/debian/build-deb.sh"))
        .arg("x86_64-unknown-linux-musl")
        .env("DEB_OUT_DIR", out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "build-deb.sh: {}", text(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deb_holds_the_static_runner_its_unit_and_maintainer_scripts() {
    let tmp = TempDir::new("deb");
    let deb = build_deb(tmp.path());
    assert!(
        deb.ends_with(format!("tether_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"))),
        "{}",
        deb.display()
    );
    let list = dpkg_deb(&["-c"], &deb);
    for (m, path) in [
        ("-rwxr-xr-x root/root", "./usr/bin/tether"),
        (
            "-rw-r--r-- root/root",
            "./lib/systemd/system/tether.service",
        ),
        ("-rw-r--r-- root/root", "./etc/default/tether"),
        ("-rw-r--r-- root/root", "./usr/share/doc/tether/copyright"),
    ] {
        assert!(
            list.lines().any(|l| l.starts_with(m) && l.ends_with(path)),
            "{path} missing or with the wrong mode/owner:\n{list}"
        );
    }
    let field = |f: &str| {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(f)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Depends"), "", "a static binary depends on nothing");

    let ctrl = tmp.path().join("control");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&ctrl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(ctrl.join("conffiles")).unwrap(),
        "/etc/default/tether\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        assert_eq!(mode(&ctrl.join(s)), 0o755, "{s}");
        let out = Command::new("busybox")
            .args(["sh", "-n"])
            .arg(ctrl.join(s))
            .output()
            .unwrap();
        assert!(out.status.success(), "{s} does not parse: {}", text(&out));
    }
    let unit = fs::read_to_string(repo().join("packaging/debian/tether.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tether run"), "{unit}");
    assert!(unit.contains("ConditionPathExists=/var/lib/tether/credential.json"));
    // systemd's own check of the unit (offline; it wants ExecStart to exist,
    // so point it at the built binary). Unknown keys only warn: no output
    // at all is the pass mark.
    let check = tmp.path().join("tether.service");
    let exec = format!("ExecStart={} run", static_runner().display());
    fs::write(&check, unit.replace("ExecStart=/usr/bin/tether run", &exec)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check)
        .output()
        .expect("systemd-analyze (apt-get install systemd; make test's set-up does)");
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}

fn dpkg(args: &[&str]) -> Output {
    Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap()
}

fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "tether"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty() && !s.ends_with("not-installed")).then_some(s)
}

/// Installs the package on this machine for real: root only, and never over
/// a `tether` package someone else installed.
#[test]
#[ignore = "installs a package on this machine: make edge runs it (as root)"]
fn deb_installs_upgrades_removes_and_purges_cleanly() {
    // SAFETY: geteuid has no side effects.
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root");
    assert_eq!(
        dpkg_status(),
        None,
        "a tether package is already installed here"
    );
    assert!(
        !Path::new("/var/lib/tether").exists(),
        "/var/lib/tether exists already"
    );
    let tmp = TempDir::new("deb-install");
    let deb = build_deb(tmp.path());
    let deb = deb.to_str().unwrap();

    let out = dpkg(&["-i", deb]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    let cleanup = Purge;
    assert_eq!(dpkg_status().as_deref(), Some("install ok installed"));
    let out = Command::new("/usr/bin/tether")
        .arg("version")
        .output()
        .unwrap();
    assert!(
        text(&out).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&out)
    );
    assert_eq!(mode(Path::new("/var/lib/tether")), 0o700);
    assert!(Path::new("/lib/systemd/system/tether.service").exists());

    // Reinstalling the same version runs the upgrade path of the scripts.
    let out = dpkg(&["-i", deb]);
    assert!(out.status.success(), "dpkg -i again: {}", text(&out));

    // remove: files go, the conffile and the state (credential) stay.
    fs::write("/var/lib/tether/credential.json", "{}").unwrap();
    let out = dpkg(&["-r", "tether"]);
    assert!(out.status.success(), "dpkg -r: {}", text(&out));
    assert!(!Path::new("/usr/bin/tether").exists());
    assert!(!Path::new("/lib/systemd/system/tether.service").exists());
    assert!(
        Path::new("/etc/default/tether").exists(),
        "conffile removed by -r"
    );
    assert!(Path::new("/var/lib/tether/credential.json").exists());
    assert_eq!(dpkg_status().as_deref(), Some("deinstall ok config-files"));

    // purge: nothing left.
    let out = dpkg(&["-P", "tether"]);
    assert!(out.status.success(), "dpkg -P: {}", text(&out));
    assert!(!Path::new("/etc/default/tether").exists());
    assert!(!Path::new("/var/lib/tether").exists());
    assert_eq!(dpkg_status(), None);
    drop(cleanup);
}

/// Purges the package if a step above failed half-way.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        if dpkg_status().is_some() {
            let _ = dpkg(&["-P", "tether"]);
        }
    }
}

// ---- make vendor ----------------------------------------------------------

/// The air-gapped path: the bundle from `make vendor`, unpacked elsewhere,
/// builds the size-optimised release runner (std rebuilt from rust-src, its
/// crates from the bundle too) with an empty cargo home and cargo offline
/// (and, where the test may, in a network namespace with no network at all).
#[test]
#[ignore = "builds the runner from scratch (minutes): make edge runs it"]
fn vendor_bundle_builds_the_release_runner_offline_with_an_empty_cargo_home() {
    let out = Command::new(repo().join("packaging/vendor.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "vendor.sh: {}", text(&out));
    let bundle = repo().join(format!(
        "dist/tether-{}-vendored.tar.gz",
        env!("CARGO_PKG_VERSION")
    ));
    let tmp = TempDir::new("vendor");
    let out = Command::new("tar")
        .arg("xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", text(&out));
    let tree = tmp
        .path()
        .join(format!("tether-{}", env!("CARGO_PKG_VERSION")));
    assert!(
        !tree
            .join("vendor/crates/windows-sys-0.61.2/src/Windows")
            .exists(),
        "windows-sys was not filtered out"
    );
    let cargo_home = tmp.path().join("cargo-home");
    fs::create_dir_all(&cargo_home).unwrap();

    let home = std::env::var_os("HOME").unwrap();
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .unwrap_or_else(|| Path::new(&home).join(".rustup").into_os_string());
    let path = std::env::var_os("PATH").unwrap();
    // `unshare -n` (root) runs the build without any network interface.
    let no_net = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if no_net {
        let mut c = Command::new("unshare");
        c.args(["-n", "./build.sh", "x86_64-unknown-linux-musl"]);
        c
    } else {
        eprintln!("vendor test: unshare -n unavailable; relying on CARGO_NET_OFFLINE");
        let mut c = Command::new("./build.sh");
        c.arg("x86_64-unknown-linux-musl");
        c
    };
    let out = cmd
        .current_dir(&tree)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("RUSTUP_HOME", rustup_home)
        .env("CARGO_HOME", &cargo_home)
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "offline build failed:\n{}",
        text(&out)
    );
    let bin = tree.join("dist/x86_64-unknown-linux-musl/tether");
    let out = Command::new(&bin).arg("version").output().unwrap();
    assert!(
        text(&out).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&out)
    );
    // Nothing was downloaded into the empty cargo home.
    assert!(
        !cargo_home.join("registry").exists(),
        "cargo used its registry cache: {:?}",
        fs::read_dir(&cargo_home).unwrap().collect::<Vec<_>>()
    );
}
