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
