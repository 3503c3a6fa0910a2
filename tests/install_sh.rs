//! The one-line installer as the server serves it: run with bash and with
//! busybox sh against a fake root (TETHER_ROOT), with curl and with wget
//! only, for systemd, OpenRC and procd; enrollment against the real server;
//! `--uninstall`; a corrupted download refused; shellcheck clean.

use crate::update::{base_binary, Fx, ARCH_NAME};
use crate::util::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");

/// A PATH with busybox's applets and GNU wget, but no curl and no minisign:
/// the "small box" case (wget download, sha256 only).
fn busybox_path(dir: &Path) -> String {
    let st = Command::new("busybox")
        .arg("--install")
        .arg("-s")
        .arg(dir)
        .status()
        .expect("busybox is installed (make test's set-up installs busybox-static)");
    assert!(st.success());
    let _ = fs::remove_file(dir.join("wget"));
    std::os::unix::fs::symlink("/usr/bin/wget", dir.join("wget")).unwrap();
    dir.display().to_string()
}

fn served_installer(fx: &Fx, dir: &Path) -> std::path::PathBuf {
    let (st, body) = fx.server.api().get_bytes("/install.sh");
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains(&fx.server.url), "server URL filled in");
    assert!(!text.contains("@SYSTEMD_UNIT@") && !text.contains("@RELEASE_KEYS@"));
    let p = dir.join("install.sh");
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn install_sh_is_shellcheck_clean_as_served() {
    let fx = Fx::new();
    let dir = TempDir::new("sc");
    let script = served_installer(&fx, dir.path());
    for f in [
        script.as_path(),
        Path::new(&format!("{PACKAGING}/install.sh")),
        Path::new(&format!("{PACKAGING}/openrc/tether")),
        Path::new(&format!("{PACKAGING}/procd/tether")),
    ] {
        let out = Command::new("shellcheck")
            .args(["-s", "sh"])
            .arg(f)
            .output()
            .expect("shellcheck is installed (make test's set-up installs it)");
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn install_sh_installs_enrolls_and_uninstalls_in_a_fake_root() {
    let fx = Fx::new();
    fx.publish(env!("CARGO_PKG_VERSION"), base_binary());
    let manifest = fx.manifest(env!("CARGO_PKG_VERSION"));
    let dir = TempDir::new("installer");
    let script = served_installer(&fx, dir.path());
    let bb = TempDir::new("bb");
    let bb_path = busybox_path(bb.path());

    let cases = [
        ("bash", "systemd", None),
        ("bash", "openrc", None),
        ("busybox", "procd", Some(bb_path.as_str())),
        ("busybox", "systemd", Some(bb_path.as_str())),
    ];
    for (shell, init, path) in cases {
        let root = TempDir::new("root");
        let (_, token) = fx.tenant.enrollment_token(600);
        let mut cmd = match shell {
            "bash" => Command::new("bash"),
            _ => {
                let mut c = Command::new("busybox");
                c.arg("sh");
                c
            }
        };
        cmd.arg(&script)
            .args([
                "--token",
                &token,
                "--init",
                init,
                "--name",
                &format!("box-{shell}-{init}"),
            ])
            .arg("--ca-file")
            .arg(&fx.server.ca)
            .env("TETHER_ROOT", root.path());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{shell}/{init}: {err}");
        if path.is_some() {
            assert!(err.contains("no minisign tool here"), "{err}");
        } else {
            assert!(err.contains("minisign signatures verified"), "{err}");
        }

        let r = root.path();
        let bin = r.join("usr/local/lib/tether/tether");
        assert_eq!(fs::read(&bin).unwrap(), base_binary(), "{shell}/{init}");
        assert_eq!(
            fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(r.join("usr/local/bin/tether")).unwrap(),
            Path::new("../lib/tether/tether")
        );
        // OpenWrt (procd) keeps its state on flash: /var is RAM there.
        let state = if init == "procd" {
            "etc/tether"
        } else {
            "var/lib/tether"
        };
        let keys = fs::read_to_string(r.join(state).join("update-keys.pub")).unwrap();
        let pubkey = fs::read_to_string(&fx.keys.public).unwrap();
        assert!(keys.contains(pubkey.lines().nth(1).unwrap()), "{keys}");
        let cred = r.join(state).join("credential.json");
        assert!(cred.exists(), "{shell}/{init}: not enrolled");
        assert_eq!(
            fs::metadata(&cred).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (svc, src, mode) = match init {
            "systemd" => (
                "etc/systemd/system/tether.service",
                "systemd/tether.service",
                0o644,
            ),
            "openrc" => ("etc/init.d/tether", "openrc/tether", 0o755),
            _ => ("etc/init.d/tether", "procd/tether", 0o755),
        };
        let installed = fs::read_to_string(r.join(svc)).unwrap();
        let packaged = fs::read_to_string(format!("{PACKAGING}/{src}")).unwrap();
        assert_eq!(installed.trim_end(), packaged.trim_end(), "{shell}/{init}");
        assert_eq!(
            fs::metadata(r.join(svc)).unwrap().permissions().mode() & 0o777,
            mode
        );
        assert!(manifest.contains(&format!("tether-{ARCH_NAME}")));

        // --uninstall takes it all away again.
        let mut un = match shell {
            "bash" => Command::new("bash"),
            _ => {
                let mut c = Command::new("busybox");
                c.arg("sh");
                c
            }
        };
        un.arg(&script)
            .args(["--uninstall", "--init", init])
            .env("TETHER_ROOT", r);
        if let Some(p) = path {
            un.env("PATH", p);
        }
        let out = un.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for gone in ["usr/local/lib/tether", "usr/local/bin/tether", state, svc] {
            assert!(
                !r.join(gone).exists(),
                "{shell}/{init}: {gone} left after --uninstall"
            );
        }
    }
}

#[test]
fn install_sh_refuses_a_corrupted_download() {
    let fx = Fx::new();
    fx.publish(env!("CARGO_PKG_VERSION"), base_binary());
    // Corrupt the stored binary behind the server's back (a bad mirror).
    let stored = fx.server.dir.path().join(format!(
        "releases/{}/tether-{ARCH_NAME}",
        env!("CARGO_PKG_VERSION")
    ));
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&stored, bytes).unwrap();
    let dir = TempDir::new("installer");
    let script = served_installer(&fx, dir.path());
    let root = TempDir::new("root");
    let (_, token) = fx.tenant.enrollment_token(600);
    let out = Command::new("sh")
        .arg(&script)
        .args(["--token", &token, "--init", "systemd"])
        .arg("--ca-file")
        .arg(&fx.server.ca)
        .env("TETHER_ROOT", root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(!root.path().join("usr/local/lib/tether/tether").exists());
    assert!(!root.path().join("var/lib/tether/credential.json").exists());
}

/// `--operator-key FILE|KEY` and `--require-signed LIST` (issue 19): the
/// keys land in `<state-dir>/operator-keys.pub` (mode 0644, each once, also
/// when installed again), the service's command line carries
/// `--require-signed`, and the installed runner starts with that file and
/// that list and connects. What the runner cannot enforce, a bad key, or a
/// requirement without any key is refused before anything is installed.
#[test]
fn install_sh_trusts_operator_keys_and_passes_require_signed() {
    let fx = Fx::new();
    fx.publish(env!("CARGO_PKG_VERSION"), base_binary());
    let dir = TempDir::new("installer");
    let script = served_installer(&fx, dir.path());
    let op = crate::update::keypair("op");
    let other = crate::update::keypair("op2");
    let line = |p: &Path| {
        let text = fs::read_to_string(p).unwrap();
        text.lines().nth(1).unwrap().to_owned()
    };
    let (op_line, other_line) = (line(&op.public), line(&other.public));
    let install = |root: &Path, init: &str, token: bool, extra: &[&str]| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(["--init", init]);
        if token {
            let (_, token) = fx.tenant.enrollment_token(600);
            cmd.args(["--token", &token]);
        }
        let out = cmd
            .arg("--ca-file")
            .arg(&fx.server.ca)
            .args(extra)
            .env("TETHER_ROOT", root)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let op_file = op.public.to_str().unwrap();

    let root = TempDir::new("root");
    let r = root.path();
    for (extra, want) in [
        (
            vec![
                "--operator-key",
                op_file,
                "--require-signed",
                "jobs,terminal",
            ],
            "unknown terminal",
        ),
        (vec!["--require-signed", "jobs"], "needs an operator key"),
        (vec!["--require-signed", "job"], "unknown job"),
        (
            vec!["--operator-key", "RWQnot-a-key"],
            "not a minisign public key",
        ),
    ] {
        let (ok, err) = install(r, "systemd", true, &extra);
        assert!(!ok && err.contains(want), "{extra:?}: {err}");
        assert!(!r.join("usr/local/lib/tether/tether").exists(), "{extra:?}");
    }

    // A .pub file and a bare key; installed again with the same keys (no
    // token: already enrolled), each is in the file once.
    let args = [
        "--operator-key",
        op_file,
        "--operator-key",
        other_line.as_str(),
        "--require-signed",
        "jobs,deploys",
    ];
    let (ok, err) = install(r, "systemd", true, &args);
    assert!(ok, "{err}");
    let (ok, err) = install(r, "systemd", false, &args[..4]);
    assert!(ok, "{err}");
    let state = r.join("var/lib/tether");
    let keys_file = state.join("operator-keys.pub");
    let keys = fs::read_to_string(&keys_file).unwrap();
    for k in [&op_line, &other_line] {
        assert_eq!(keys.lines().filter(|l| l == k).count(), 1, "{keys}");
    }
    assert_eq!(
        fs::metadata(&keys_file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // The second install did not ask for signatures: its unit says so.
    let unit = |r: &Path| fs::read_to_string(r.join("etc/systemd/system/tether.service")).unwrap();
    assert!(!unit(r).contains("--require-signed"), "{}", unit(r));
    let (ok, err) = install(r, "systemd", false, &["--require-signed", "jobs,deploys"]);
    assert!(ok, "{err}");
    assert!(
        unit(r).lines().any(
            |l| l == "ExecStart=/usr/local/lib/tether/tether run --require-signed jobs,deploys"
        ),
        "{}",
        unit(r)
    );

    // OpenRC and procd carry it on their command lines too.
    for (init, svc, want) in [
        (
            "openrc",
            "etc/init.d/tether",
            "command_args=\"run --require-signed all\"",
        ),
        (
            "procd",
            "etc/init.d/tether",
            "\tprocd_set_param command \"$PROG\" run --require-signed all",
        ),
    ] {
        let other_root = TempDir::new("root2");
        let (ok, err) = install(
            other_root.path(),
            init,
            true,
            &["--operator-key", op_file, "--require-signed", "all"],
        );
        assert!(ok, "{init}: {err}");
        let text = fs::read_to_string(other_root.path().join(svc)).unwrap();
        assert!(text.lines().any(|l| l == want), "{init}: {text}");
    }

    // The installed runner reads that file with that list and connects.
    let run_dir = TempDir::new("run");
    let bin = r.join("usr/local/lib/tether/tether");
    let mut child = Command::new(&bin)
        .arg("--state-dir")
        .arg(&state)
        .arg("--run-dir")
        .arg(run_dir.path())
        .args([
            "run",
            "--require-signed",
            "jobs,deploys",
            "--docker-socket",
            "off",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let connected = wait_for(
        std::time::Duration::from_secs(20),
        "the installed runner to connect",
        || {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(Err(format!("exited: {st}")));
            }
            let st = Command::new(&bin)
                .arg("--run-dir")
                .arg(run_dir.path())
                .arg("status")
                .output()
                .unwrap();
            st.status.success().then_some(Ok(()))
        },
    );
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, std::time::Duration::from_secs(10)).is_some());
    connected.unwrap();
}
