//! Tests only: the dashboard signs what the CLI signs. `server/web/src/signing.js`
//! is run under node and, for the same actions, must make the same
//! canonical bytes as `protocol/signed.rs` fed by the builders the CLI
//! signs with (`deploy::api::job_spec`, `terminals::api::term_open`,
//! `containers::api::action_request` and `prune_request`). A deploy
//! reaches the page as the JSON `GET /apps/{name}/signable` answers with
//! (`deploy::api::signable`); a terminal and a container operation as the
//! page's own inputs, which it builds into the message with its ports of
//! those builders.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tether::protocol::signed::{container_bytes, job_bytes, terminal_bytes};
use tether::protocol::{DockerOp, JobStart};

use crate::containers::api::{action_request, prune_request, ActionParams};
use crate::deploy::api::{job_spec, signed_start, AppDef};
use crate::terminals::api::term_open;

/// Runs every case in signing.js; its bytes, one per case.
fn page_bytes(cases: &[Value]) -> Vec<Vec<u8>> {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/src/signing.js");
    // The page's own functions, as the page calls them (signing.js).
    let script = format!(
        r#"
import * as s from {module:?};
let text = '';
for await (const chunk of process.stdin) text += chunk;
const out = JSON.parse(text).map((c) => {{
  switch (c.kind) {{
    case 'job': return s.jobBytes(c.runner, c.action, c.not_after, c.job);
    case 'deploy': return s.jobBytes(c.signable.runner, c.action, c.not_after, c.signable.job_start);
    case 'terminal': return s.terminalBytes(c.runner, c.action, c.not_after, s.termOpen(c.container, c.command, c.user));
    case 'container': return s.containerBytes(c.runner, c.action, c.not_after, s.containerRequest(c.op, c.container, c.params));
    case 'prune': return s.containerBytes(c.runner, c.action, c.not_after, s.pruneRequest(c.images, c.filters));
    default: throw new Error(`case ${{c.kind}}`);
  }}
}});
console.log(JSON.stringify(out.map((b) => Buffer.from(b).toString('hex'))));
"#,
        module = module.to_str().unwrap()
    );
    let mut node = Command::new("node")
        .args(["--no-warnings", "--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node (apt-get install nodejs)");
    node.stdin
        .take()
        .unwrap()
        .write_all(Value::Array(cases.to_vec()).to_string().as_bytes())
        .unwrap();
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    hex.iter()
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

const NA: u64 = 1_796_000_000_123;

/// App definitions as an operator PUTs them: git and path sources, ports
/// with and without protocol and address, labels, env and secrets out of
/// order, each kind of health check, volumes, the secrets' delivery.
fn apps() -> Vec<(&'static str, Value)> {
    vec![
        (
            "web",
            json!({"runner": "rn_1", "git_url": "https://git.example/web.git", "git_ref": "main",
                "ports": [{"host": 8080, "container": 80},
                          {"host": 5353, "container": 53, "proto": "udp", "host_ip": "127.0.0.1"}],
                "labels": {"tier": "front", "a": "ü", "Z": "x\ny"},
                "env": {"B": "2", "A": "x\ny", "É": "", "🙂": "astral", "ｚ": "bmp"},
                "secrets": ["Z_KEY", "DB"],
                "health": {"cmd": ["wget", "-qO-", "http://127.0.0.1/h"], "timeout_s": 30},
                "volumes": ["/srv/d:/data", "/a:/b:ro"], "restart": "unless-stopped",
                "secrets_delivery": "files", "secrets_uid": 1000, "secrets_gid": 1001,
                "env_file": "/app/.env", "timeout_s": 600}),
        ),
        (
            "Api.v2",
            json!({"runner": "rn_2", "path": "/srv/src/api", "image": "reg.example:5000/ns/api",
                "container": "api-1", "context": "sub", "dockerfile": "Dockerfile.prod",
                "health": {"tcp_port": 8080, "timeout_s": 5}, "secrets_delivery": "env_file"}),
        ),
        ("bare", json!({"runner": "rn_3", "path": "/x"})),
        (
            "both",
            json!({"runner": "rn_4", "git_url": "ssh://git@h/r.git",
                "health": {"cmd": [], "tcp_port": 1}, "secrets_delivery": "env"}),
        ),
    ]
}

#[test]
fn the_page_encodes_jobs_and_deploys_as_the_cli_signs_them() {
    let mut cases = Vec::new();
    let mut want = Vec::new();
    for (name, def) in apps() {
        let def: AppDef = serde_json::from_value(def).unwrap();
        // A deploy of the app's ref, of another ref, and a rollback (an
        // image run again, no build).
        let launches = [
            (None, def.git_ref.clone()),
            (None, Some("0123abcd".to_owned())),
            (Some(format!("{name}:jb_1")), None),
        ];
        for (i, (image, git_ref)) in launches.into_iter().enumerate() {
            let action = format!("sa_00000000000000{i:02}");
            let (spec, _) = job_spec(name, &def, &action, image, git_ref);
            // What the endpoint answers (deploy::api::signable).
            cases.push(json!({"kind": "deploy", "action": action, "not_after": NA,
                "signable": {"runner": def.runner, "job_start": spec}}));
            want.push(job_bytes(&def.runner, &action, NA, &signed_start(spec)));
        }
    }
    // Plain jobs as the scripts page sends them (env as an object).
    let job = |script: Option<&str>, env: &[(&str, &str)], secrets: &[&str], timeout_s| {
        let start = JobStart {
            job_id: "jb_x".into(),
            channel: 3,
            program: "/bin/sh".into(),
            args: vec!["a".into(), "b c".into()],
            script: script.map(str::to_owned),
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            secrets: secrets.iter().map(|n| ((*n).into(), "v".into())).collect(),
            timeout_s,
            deploy: None,
            signed: None,
        };
        let page = json!({"program": start.program, "script": script, "args": start.args,
            "env": env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "secrets": secrets, "timeout_s": timeout_s});
        (start, page)
    };
    for (start, page) in [
        job(Some("echo hi\n"), &[("B", "2"), ("A", "1")], &["T"], 60),
        job(None, &[], &[], 0),
        job(
            Some("ü\u{0}\r\n"),
            &[("🙂", "1"), ("ｚ", "2"), ("a", "")],
            &["𝔸", "Ｚ", "B"],
            7,
        ),
    ] {
        want.push(job_bytes("rn_1", "sa_1", NA, &start));
        cases.push(
            json!({"kind": "job", "runner": "rn_1", "action": "sa_1", "not_after": NA, "job": page}),
        );
    }
    compare(&cases, &want);
}

#[test]
fn the_page_encodes_terminals_and_container_operations_as_the_cli_signs_them() {
    let mut cases = Vec::new();
    let mut want = Vec::new();
    // Host or container, login shell or a command, as someone or not; and
    // commands that are blank to Rust's trim or only to JavaScript's.
    let terminals: [(Option<&str>, Option<&str>, Option<&str>); 8] = [
        (None, None, None),
        (Some("web"), None, None),
        (Some("web"), Some("ls -l; echo ü"), Some("app")),
        (None, Some("id"), Some("root")),
        (Some("db"), Some(" \t\n"), None),
        (None, Some("\u{feff}"), None),
        (Some("db"), Some("\u{85}\u{3000}"), Some("1000:1000")),
        (Some("0123456789ab"), Some("sh -c 'x'"), None),
    ];
    for (container, command, user) in terminals {
        let open = term_open(container, command, user);
        want.push(terminal_bytes("rn_1", "sa_t", NA, &open));
        cases.push(
            json!({"kind": "terminal", "runner": "rn_1", "action": "sa_t", "not_after": NA,
            "container": container, "command": command, "user": user}),
        );
    }
    // Every operation, with and without each of its parameters (and the
    // parameters an operation does not take, which it must ignore).
    let params = [
        (None, None, None, None),
        (Some(5), None, None, None),
        (Some(0), Some("SIGHUP"), Some(true), Some(true)),
        (None, Some("9"), Some(false), Some(true)),
        (None, None, Some(true), None),
    ];
    let ops = [
        ("start", DockerOp::Start),
        ("stop", DockerOp::Stop),
        ("restart", DockerOp::Restart),
        ("kill", DockerOp::Kill),
        ("remove", DockerOp::Remove),
    ];
    for (name, op) in ops {
        for (timeout, signal, force, volumes) in params {
            let p = ActionParams {
                timeout,
                signal: signal.map(str::to_owned),
                force,
                volumes,
                ..ActionParams::default()
            };
            want.push(container_bytes(
                "rn_2",
                "sa_c",
                NA,
                &action_request(op, "web-1", &p),
            ));
            cases.push(json!({"kind": "container", "runner": "rn_2", "action": "sa_c",
                "not_after": NA, "op": name, "container": "web-1",
                "params": {"timeout": timeout, "signal": signal, "force": force, "volumes": volumes}}));
        }
    }
    // Prunes: no filters, and filters with keys out of order, escapes,
    // non-ASCII, nesting and integers (as JSON.parse then serde_json read them).
    let filters: [Option<Value>; 3] = [
        None,
        Some(json!({"until": ["24h"], "label": ["app=web", "x=\"q\""]})),
        Some(serde_json::from_str(
            r#"{"ü": ["\u0001\t/\\"], "a": [1, -2, {"z": null, "b": true, "A": []}], "É": "🙂", "B": {}}"#,
        ).unwrap()),
    ];
    for images in [false, true] {
        for f in &filters {
            let req = prune_request(images, f.clone());
            want.push(container_bytes("rn_2", "sa_p", NA, &req));
            cases.push(json!({"kind": "prune", "runner": "rn_2", "action": "sa_p",
                "not_after": NA, "images": images, "filters": f}));
        }
    }
    compare(&cases, &want);
}

fn compare(cases: &[Value], want: &[Vec<u8>]) {
    let got = page_bytes(cases);
    assert_eq!(got.len(), want.len());
    for ((case, got), want) in cases.iter().zip(&got).zip(want) {
        assert!(
            got == want,
            "signing.js and protocol/signed.rs differ for {case}:\n page: {:?}\n rust: {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want)
        );
    }
}
