//! The runner's command line as a host owner meets it: every command's
//! `--help` with its flags, and the usage errors of `run` (exit 2, the
//! flag or variable named) that come before the credential is even read.
//! No server: these all end before a connection.

use crate::util::Runner;
use std::process::Output;

/// Arguments after `run`, and variables set.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
/// A case and what its error says.
type Bad<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_answers_help_with_its_flags_and_exit_0() {
    let r = Runner::new();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &["enroll", "run", "status", "update", "version"],
        ),
        (&["help"], &["enroll", "run"]),
        (
            &["enroll", "--help"],
            &["--server", "--token", "--ca-file", "--proxy", "--name"],
        ),
        (
            &["run", "--help"],
            &[
                "--heartbeat",
                "--metrics-interval",
                "--fingerprint-interval",
                "--docker-socket",
                "--max-jobs",
                "--no-jobs",
                "--server",
                "--ca-file",
                "--proxy",
                "--no-host-terminal",
                "--no-container-terminal",
                "--no-container-control",
                "--label",
                "--require-signed",
                "--operator-keys",
                "--host-terminal-user",
                "--update-keys",
                "--health-timeout",
                "TETHER_HEARTBEAT",
                "TETHER_MAX_JOBS",
                "TETHER_JOBS=off",
                "TETHER_UPDATE=off",
            ],
        ),
        (&["status", "-h"], &["--json"]),
        (
            &["update", "--help"],
            &["--file", "--sig", "--check", "--allow-downgrade"],
        ),
        (&["version", "--help"], &["Usage: tether version"]),
    ];
    for (args, wanted) in cases {
        let out = r.cmd().args(*args).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        for w in *wanted {
            assert!(stdout.contains(w), "{args:?}: {w} missing in\n{stdout}");
        }
    }
    // A flag after --help is not read (it would be an error otherwise).
    let out = r.cmd().args(["run", "--help", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // No command: the help, as a usage error.
    let out = r.cmd().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).0.contains("Usage"));
    for v in [&["version"][..], &["--version"], &["-V"]] {
        let out = r.cmd().args(v).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{v:?}");
        assert!(text(&out).0.starts_with("tether "), "{v:?}");
    }
}

/// Each bad flag or variable of `run` is a usage error (exit 2) naming
/// it, before the credential is read: this runner is not enrolled (which
/// would be exit 11), so an 11 here means the check came too late.
#[test]
fn run_refuses_bad_flags_and_variables_with_exit_2_naming_them() {
    let r = Runner::new();
    let cases: &[Bad] = &[
        (&["--bogus"], &[], "unexpected option '--bogus'"),
        (&["extra"], &[], "unexpected argument 'extra'"),
        (
            &["--max-jobs", "0"],
            &[],
            "--max-jobs \"0\": a number from 1 to 64",
        ),
        (&[], &[("TETHER_MAX_JOBS", "65")], "a number from 1 to 64"),
        (&["--heartbeat", "2h"], &[], "heartbeat"),
        (&["--heartbeat", "10ms"], &[], "out of range"),
        (
            &[],
            &[("TETHER_HEARTBEAT", "soon")],
            "invalid duration 'soon'",
        ),
        (
            &[],
            &[("TETHER_METRICS_INTERVAL", "soon")],
            "invalid duration",
        ),
        (&["--metrics-interval", "1ms"], &[], "metrics interval"),
        (
            &[],
            &[("TETHER_METRICS_INTERVAL", "1ms")],
            "metrics interval",
        ),
        (
            &["--fingerprint-interval", "1ms"],
            &[],
            "fingerprint interval",
        ),
        (
            &[],
            &[("TETHER_FINGERPRINT_INTERVAL", "1ms")],
            "fingerprint interval",
        ),
        (
            &[],
            &[("TETHER_HOST_TERMINAL", "maybe")],
            "TETHER_HOST_TERMINAL must be on or off",
        ),
        (
            &[],
            &[("TETHER_CONTAINER_TERMINAL", "maybe")],
            "TETHER_CONTAINER_TERMINAL must be on or off",
        ),
        (
            &[],
            &[("TETHER_CONTAINER_CONTROL", "maybe")],
            "TETHER_CONTAINER_CONTROL must be on or off",
        ),
        (
            &["--host-terminal-user", "no-such-user-tether"],
            &[],
            "--host-terminal-user no-such-user-tether",
        ),
        (
            &[],
            &[("TETHER_HOST_TERMINAL_USER", "no-such-user-tether")],
            "--host-terminal-user no-such-user-tether",
        ),
        (
            &[],
            &[("DOCKER_HOST", "tcp://127.0.0.1:2375")],
            "is not a unix socket",
        ),
        (&["--log-level", "loud"], &[], "loud"),
        (&[], &[("TETHER_LOG", "loud")], "loud"),
    ];
    for (args, env, wanted) in cases {
        let out = r
            .cmd()
            .arg("run")
            .args(*args)
            .envs(env.iter().copied())
            .env_remove("TETHER_DOCKER_SOCKET")
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?} {env:?}: {stderr}");
        assert!(stderr.starts_with("tether: error: "), "{stderr}");
    }
    // A usage error points at the help.
    let out = r.cmd().args(["run", "--bogus"]).output().unwrap();
    assert!(text(&out).1.contains("run `tether --help` for usage"));
    // The same flags, well formed, pass the checks: then the missing
    // credential is what stops it (exit 11), nothing was written.
    let good: &[Case] = &[
        (
            &[
                "--max-jobs",
                "64",
                "--no-jobs",
                "--no-host-terminal",
                "--no-container-terminal",
                "--no-container-control",
                "--docker-socket",
                "off",
                "--metrics-interval",
                "off",
                "--fingerprint-interval",
                "0",
                "--heartbeat",
                "2s",
                "--label",
                "zone=a",
                "--log-level",
                "warn",
            ],
            &[],
        ),
        (
            &[],
            &[
                ("TETHER_MAX_JOBS", "1"),
                ("TETHER_JOBS", "off"),
                ("TETHER_HOST_TERMINAL", "off"),
                ("TETHER_CONTAINER_TERMINAL", "no"),
                ("TETHER_CONTAINER_CONTROL", "0"),
                ("TETHER_DOCKER_SOCKET", "off"),
                ("TETHER_METRICS_INTERVAL", "10s"),
                ("TETHER_HEARTBEAT", "2s"),
            ],
        ),
    ];
    for (args, env) in good {
        let out = r
            .cmd()
            .arg("run")
            .args(*args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(11), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("enroll"), "{stderr}");
    }
    assert!(
        std::fs::read_dir(r.dir.path()).unwrap().next().is_none(),
        "nothing written to the state dir"
    );
}

#[test]
fn unknown_commands_and_options_are_usage_errors() {
    let r = Runner::new();
    for args in [
        &["frobnicate"][..],
        &["--bogus"],
        &["status", "--bogus"],
        &["enroll", "--bogus"],
        &["update", "--bogus"],
        &["version", "--bogus"],
    ] {
        let out = r.cmd().args(args).output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("tether: error: "), "{args:?}: {stderr}");
    }
    // enroll without its server or token says which (and its variable).
    let out = r
        .cmd()
        .arg("enroll")
        .env_remove("TETHER_SERVER")
        .env_remove("TETHER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--server URL (or TETHER_SERVER)"));
    let out = r
        .cmd()
        .args(["enroll", "--server", "https://127.0.0.1:1"])
        .env_remove("TETHER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--token TOKEN (or TETHER_TOKEN)"));
}
