//! `make run`'s dev server (packaging/dev-run.sh) as a newcomer meets it:
//! it comes up with a local runner, publishes a signed dev release in the
//! background, and the install one-liner it then prints installs (into a
//! prefix, `--init none`) a runner that enrolls and shows as active.

use crate::util::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The dev script and everything it started; stopped (SIGTERM: its cleanup
/// trap ends the server, the runner and the release build) on drop.
struct DevRun(Child);

impl Drop for DevRun {
    fn drop(&mut self) {
        signal(&self.0, libc::SIGTERM);
        if wait_exit(&mut self.0, Duration::from_secs(10)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The runner the one-liner installed, killed on drop (also on a failed assert).
struct Installed(Child);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn make_run_publishes_a_dev_release_and_its_install_one_liner_works() {
    let tmp = TempDir::new("devrun");
    let dir = tmp.path().join("run");
    let mut cmd = Command::new("sh");
    cmd.arg("packaging/dev-run.sh")
        .current_dir(ROOT)
        .env("TETHER_DEV_PORT", free_port().to_string())
        .env("TETHER_DEV_DIR", &dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // A developer's shell, not the test runner's: cargo's and nextest's
    // variables (CARGO_PKG_*, LD_LIBRARY_PATH, ...) would make the release
    // build's cargo rebuild ring and rustls from scratch.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep = k == "CARGO_HOME" || k == "CARGO_TARGET_DIR";
        if !keep && (k.starts_with("CARGO") || k.starts_with("NEXTEST") || k == "LD_LIBRARY_PATH") {
            cmd.env_remove(&k);
        }
    }
    // If this test is killed (a timeout), the script's cleanup still runs.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let dev = DevRun(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The hints come first and say a release is being built; the one-liner
    // comes when it is published (the static runners are already built by
    // `make test`, so this is signing and uploading).
    let mut seen = Vec::new();
    let one_liner = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| {
                panic!(
                    "no install one-liner from make run; stdout so far:\n{}\nrelease log:\n{}",
                    seen.join("\n"),
                    std::fs::read_to_string(dir.join("release.log")).unwrap_or_default()
                )
            });
        if line.trim_start().starts_with("curl -fsSL") {
            break line.trim().to_string();
        }
        seen.push(line);
    };
    let text = seen.join("\n");
    assert!(text.contains("Tether is running."), "{text}");
    assert!(
        text.contains("Building a dev release of the static runner in the background"),
        "{text}"
    );
    assert!(text.contains("Dev release"), "{text}");
    assert!(text.contains("x86_64"), "{text}");
    assert!(one_liner.contains("--token tenr_"), "{one_liner}");

    let ca = dir.join("server/tls/ca.pem");
    let url = std::fs::read_to_string(dir.join("server/server.url")).unwrap();
    let api = Api::new(url.trim(), &ca);
    // The release is what the server serves as latest, signed with the dev key.
    let (st, body) = api.get_bytes("/releases/latest/manifest.json");
    assert_eq!(st, 200);
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["version"], env!("CARGO_PKG_VERSION"));
    let (st, _) = api.get_bytes("/releases/latest/manifest.json.minisig");
    assert_eq!(st, 200);

    // The one-liner exactly as printed, into a prefix, not started.
    let root = TempDir::new("devrun-root");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{one_liner} --init none --name devrun-host"))
        .env("TETHER_ROOT", root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "install one-liner failed: {err}");
    assert!(err.contains("minisign signatures verified"), "{err}");
    let state = root.path().join("var/lib/tether");
    assert!(
        state.join("credential.json").exists(),
        "not enrolled: {err}"
    );

    // Started by hand (no service manager in a prefix): it connects.
    let bin = root.path().join("usr/local/bin/tether");
    let installed = Command::new(&bin)
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .stderr(std::fs::File::create(tmp.path().join("installed.log")).unwrap())
        .spawn()
        .unwrap();
    let installed = Installed(installed);
    let tenant: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tenant.json")).unwrap()).unwrap();
    let token = tenant["api_token"].as_str().unwrap().to_string();
    let cred: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("credential.json")).unwrap())
            .unwrap();
    let id = cred["runner_id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    wait_for(Duration::from_secs(60), "installed runner active", || {
        let (st, v) = api.call("GET", &format!("/api/v1/runners/{id}"), Some(&token), None);
        assert_eq!(st, 200, "{v}");
        last = v;
        (last["health"] == "active").then_some(())
    });
    assert_eq!(last["version"], env!("CARGO_PKG_VERSION"), "{last}");
    drop(installed);

    // Ctrl-C (here SIGTERM) stops everything make run started.
    drop(dev);
    let addr = url
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the dev server still listens on {addr} after make run was stopped"
    );
}
