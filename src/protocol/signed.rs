//! Signed actions: the canonical bytes an operator signs and a runner
//! checks (issue 19; `docs/security.md`).
//!
//! An action that carries [`Signed`] (`job_start.signed`, `term_open.signed`,
//! `docker_request.signed`) is signed over [`job_bytes`], [`terminal_bytes`]
//! or [`container_bytes`]: everything the
//! runner will act on, in a fixed order, each field `name SP len ':' bytes
//! LF`, lists with their count first. Length prefixes make it unambiguous
//! whatever a value contains (newlines, colons, NUL-free or not), so no two
//! different actions encode to the same bytes. The operator's CLI builds
//! the same bytes from what it asked for; the runner builds them from what
//! arrived: one byte changed on the way and the signature no longer holds.
//!
//! ```text
//! tether-signed-action 1
//! kind 3:job              job | deploy (a job_start with `deploy`)
//! runner 15:rn_…          the runner it is meant for
//! action 19:sa_…          unique; remembered by the runner until not_after
//! not_after 13:1796…      Unix ms
//! program, script (or script.none), args.count + args, env.count + (name,
//! value) sorted by name, secrets.count + names sorted (values are the
//! server's and are not signed), timeout_s; for a deploy every field of the
//! DeploySpec (source, build, container settings, health check)
//!
//! kind 8:terminal … then container (or container.none: the host), command
//! (count + each argument), user (or user.none)
//! kind 9:container … then op, container (or .none), timeout_s, signal
//! (each or .none), force, volumes, filters (compact JSON, keys sorted; or
//! filters.none)
//! ```
//!
//! A terminal's size, idle and detach timeouts and window are not signed:
//! they change how the session is paced, not what runs or where.
//!
//! Plain code with no I/O and no crypto: the runner's verifier
//! (`src/trust/`) and the server's signer (`server/src/signing/`) share it.

use serde::{Deserialize, Serialize};

use super::deploy::DeploySpec;
use super::{DockerRequest, JobStart, TermOpen};

/// The first line of every encoding; bumped if the layout ever changes.
pub const MAGIC: &[u8] = b"tether-signed-action 1\n";
/// The error code of a runner's refusal (`job_start` answered with it).
pub const REFUSED_CODE: &str = "signature_refused";
/// Longest action id.
pub const MAX_ACTION_ID: usize = 64;
/// Longest signature text (a minisign signature is about 300 bytes).
pub const MAX_SIGNATURE: usize = 1024;
/// A runner refuses a not-after further ahead than this (it remembers
/// action ids until their not-after: this bounds how long).
pub const MAX_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

/// An operator's signature over an action, as it rides in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// Chosen by the signer, unique per action (`sa_` and 16 hex digits).
    pub action_id: String,
    /// After this (Unix ms) the runner refuses the action.
    pub not_after_ms: u64,
    /// A minisign signature (the text of a `.minisig` file) over the
    /// canonical bytes.
    pub signature: String,
}

/// What a signed action is, for the host's `--require-signed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Job,
    Deploy,
    Terminal,
    Container,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Deploy => "deploy",
            Kind::Terminal => "terminal",
            Kind::Container => "container",
        }
    }
}

/// The kind of a `job_start`.
pub fn job_kind(start: &JobStart) -> Kind {
    if start.deploy.is_some() {
        Kind::Deploy
    } else {
        Kind::Job
    }
}

/// The bytes being built.
struct Canon(Vec<u8>);

impl Canon {
    fn new(kind: Kind, runner: &str, action_id: &str, not_after_ms: u64) -> Canon {
        let mut c = Canon(MAGIC.to_vec());
        c.field("kind", kind.as_str().as_bytes());
        c.field("runner", runner.as_bytes());
        c.field("action", action_id.as_bytes());
        c.num("not_after", not_after_ms);
        c
    }

    fn field(&mut self, name: &str, value: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b' ');
        self.0.extend_from_slice(value.len().to_string().as_bytes());
        self.0.push(b':');
        self.0.extend_from_slice(value);
        self.0.push(b'\n');
    }

    fn num(&mut self, name: &str, n: u64) {
        self.field(name, n.to_string().as_bytes());
    }

    fn opt(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(v) => self.field(name, v.as_bytes()),
            None => self.field(&format!("{name}.none"), b""),
        }
    }

    fn list<'a>(&mut self, name: &str, items: impl ExactSizeIterator<Item = &'a str>) {
        self.num(&format!("{name}.count"), items.len() as u64);
        for i in items {
            self.field(name, i.as_bytes());
        }
    }

    fn pairs(&mut self, name: &str, mut items: Vec<(&str, &str)>) {
        items.sort();
        self.num(&format!("{name}.count"), items.len() as u64);
        for (k, v) in items {
            self.field(&format!("{name}.name"), k.as_bytes());
            self.field(&format!("{name}.value"), v.as_bytes());
        }
    }
}

/// The canonical bytes of a `job_start` (a job or a deploy) meant for
/// `runner`, under the action id and not-after of its signature.
pub fn job_bytes(runner: &str, action_id: &str, not_after_ms: u64, start: &JobStart) -> Vec<u8> {
    let mut c = Canon::new(job_kind(start), runner, action_id, not_after_ms);
    match &start.deploy {
        None => {
            c.field("program", start.program.as_bytes());
            c.opt("script", start.script.as_deref());
            c.list("args", start.args.iter().map(String::as_str));
        }
        Some(d) => deploy_fields(&mut c, d),
    }
    c.pairs(
        "env",
        start
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    );
    let mut secrets: Vec<&str> = start.secrets.iter().map(|(k, _)| k.as_str()).collect();
    secrets.sort();
    c.list("secrets", secrets.into_iter());
    c.num("timeout_s", start.timeout_s);
    c.0
}

fn deploy_fields(c: &mut Canon, d: &DeploySpec) {
    c.field("app", d.app.as_bytes());
    c.opt("git_url", d.git_url.as_deref());
    c.opt("git_ref", d.git_ref.as_deref());
    c.opt("path", d.path.as_deref());
    c.field("context", d.context.as_bytes());
    c.field("dockerfile", d.dockerfile.as_bytes());
    c.field("image", d.image.as_bytes());
    c.field("build", if d.build { b"true" } else { b"false" });
    c.field("container", d.container.as_bytes());
    c.num("ports.count", d.ports.len() as u64);
    for p in &d.ports {
        c.num("port.host", u64::from(p.host));
        c.num("port.container", u64::from(p.container));
        c.field("port.proto", p.proto.as_bytes());
        c.opt("port.host_ip", p.host_ip.as_deref());
    }
    c.list("volumes", d.volumes.iter().map(String::as_str));
    c.field("restart", d.restart.as_bytes());
    // Labels in the order given: Docker keeps them as a map, but the
    // order is what arrived, so it is signed as it is.
    c.num("labels.count", d.labels.len() as u64);
    for (k, v) in &d.labels {
        c.field("label.name", k.as_bytes());
        c.field("label.value", v.as_bytes());
    }
    match &d.health {
        None => c.field("health.none", b""),
        Some(h) => {
            match &h.cmd {
                Some(cmd) => c.list("health.cmd", cmd.iter().map(String::as_str)),
                None => c.field("health.cmd.none", b""),
            }
            c.opt(
                "health.tcp_port",
                h.tcp_port.map(|p| p.to_string()).as_deref(),
            );
            c.num("health.timeout_s", h.timeout_s);
        }
    }
    c.opt("env_file", d.env_file.as_deref());
    c.field("secrets_delivery", d.secrets_delivery.as_str().as_bytes());
    c.opt(
        "secrets_uid",
        d.secrets_uid.map(|u| u.to_string()).as_deref(),
    );
    c.opt(
        "secrets_gid",
        d.secrets_gid.map(|g| g.to_string()).as_deref(),
    );
}

/// The canonical bytes of a `term_open` meant for `runner`: where the
/// shell opens, what runs there, as whom.
pub fn terminal_bytes(
    runner: &str,
    action_id: &str,
    not_after_ms: u64,
    open: &TermOpen,
) -> Vec<u8> {
    let mut c = Canon::new(Kind::Terminal, runner, action_id, not_after_ms);
    c.opt("container", open.container.as_deref());
    c.list("command", open.command.iter().map(String::as_str));
    c.opt("user", open.user.as_deref());
    c.0
}

/// The canonical bytes of a `docker_request` that changes a container or
/// image, meant for `runner`: the operation, its container and parameters.
pub fn container_bytes(
    runner: &str,
    action_id: &str,
    not_after_ms: u64,
    r: &DockerRequest,
) -> Vec<u8> {
    let mut c = Canon::new(Kind::Container, runner, action_id, not_after_ms);
    c.field("op", r.op.as_str().as_bytes());
    c.opt("container", r.container.as_deref());
    c.opt("timeout_s", r.timeout_s.map(|t| t.to_string()).as_deref());
    c.opt("signal", r.signal.as_deref());
    c.field("force", if r.force { b"true" } else { b"false" });
    c.field("volumes", if r.volumes { b"true" } else { b"false" });
    // serde_json's maps are sorted by key (no `preserve_order` in this
    // tree), so the compact text is the same wherever it is made.
    let filters = r.filters.as_ref().map(|f| f.to_string());
    c.opt("filters", filters.as_deref());
    c.0
}

/// The trusted comment a signature carries: the action id again, so a
/// signature file read alone says what it is for.
pub fn trusted_comment(kind: Kind, action_id: &str) -> String {
    format!("tether-action {} {action_id}", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn job() -> JobStart {
        JobStart {
            job_id: "jb_1".into(),
            channel: 7,
            program: "/bin/sh".into(),
            args: vec!["a".into(), "b c".into()],
            script: Some("echo hi > /tmp/x\n".into()),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            secrets: vec![("TOKEN".into(), "s3cret".into())],
            timeout_s: 60,
            deploy: None,
            signed: None,
        }
    }

    #[test]
    fn the_encoding_is_exact_and_leaves_out_secret_values_and_transport_fields() {
        let j = job();
        let got = job_bytes("rn_1", "sa_1", 1000, &j);
        let want = "tether-signed-action 1\nkind 3:job\nrunner 4:rn_1\naction 4:sa_1\n\
                    not_after 4:1000\nprogram 7:/bin/sh\nscript 17:echo hi > /tmp/x\n\n\
                    args.count 1:2\nargs 1:a\nargs 3:b c\nenv.count 1:2\nenv.name 1:A\n\
                    env.value 1:1\nenv.name 1:B\nenv.value 1:2\nsecrets.count 1:1\n\
                    secrets 5:TOKEN\ntimeout_s 2:60\n";
        assert_eq!(String::from_utf8(got.clone()).unwrap(), want);
        assert!(!got.windows(6).any(|w| w == b"s3cret"));
        // The server's job id and channel are its own business.
        let mut moved = j.clone();
        moved.job_id = "jb_2".into();
        moved.channel = 9;
        assert_eq!(job_bytes("rn_1", "sa_1", 1000, &moved), got);
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = job_bytes("rn_1", "sa_1", 1000, &job());
        type Change = Box<dyn Fn(&mut JobStart)>;
        let changes: Vec<Change> = vec![
            Box::new(|j| j.program = "/bin/bash".into()),
            Box::new(|j| j.script = Some("echo hi > /tmp/y\n".into())),
            Box::new(|j| j.script = None),
            Box::new(|j| j.args.push("x".into())),
            Box::new(|j| j.args = vec!["a b".into(), "c".into()]),
            Box::new(|j| j.env[0].1 = "3".into()),
            Box::new(|j| j.env.push(("C".into(), String::new()))),
            Box::new(|j| j.secrets[0].0 = "OTHER".into()),
            Box::new(|j| j.timeout_s = 0),
            Box::new(|j| j.deploy = Some(Box::default())),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut j = job();
            change(&mut j);
            assert_ne!(job_bytes("rn_1", "sa_1", 1000, &j), base, "change {i}");
        }
        assert_ne!(job_bytes("rn_2", "sa_1", 1000, &job()), base);
        assert_ne!(job_bytes("rn_1", "sa_2", 1000, &job()), base);
        assert_ne!(job_bytes("rn_1", "sa_1", 1001, &job()), base);
        // A secret's value is not signed: the server may rotate it.
        let mut j = job();
        j.secrets[0].1 = "rotated".into();
        assert_eq!(job_bytes("rn_1", "sa_1", 1000, &j), base);
    }

    #[test]
    fn terminal_and_container_fields_are_signed() {
        let open = TermOpen {
            channel: 0x8000_0001,
            container: Some("web".into()),
            command: vec!["sh".into(), "-c".into(), "id".into()],
            user: Some("app".into()),
            cols: 80,
            rows: 24,
            idle_timeout_s: 60,
            detach_timeout_s: 0,
            window: 0,
            signed: None,
        };
        let base = terminal_bytes("rn_1", "sa_1", 1000, &open);
        assert_eq!(
            String::from_utf8(base.clone()).unwrap(),
            "tether-signed-action 1\nkind 8:terminal\nrunner 4:rn_1\naction 4:sa_1\n\
             not_after 4:1000\ncontainer 3:web\ncommand.count 1:3\ncommand 2:sh\n\
             command 2:-c\ncommand 2:id\nuser 3:app\n"
        );
        let mut paced = open.clone();
        (paced.cols, paced.rows, paced.idle_timeout_s, paced.channel) = (200, 50, 0, 9);
        assert_eq!(terminal_bytes("rn_1", "sa_1", 1000, &paced), base);
        type TermChange = Box<dyn Fn(&mut TermOpen)>;
        let changes: Vec<TermChange> = vec![
            Box::new(|o| o.container = None),
            Box::new(|o| o.container = Some("db".into())),
            Box::new(|o| o.command.clear()),
            Box::new(|o| o.command[2] = "reboot".into()),
            Box::new(|o| o.user = None),
            Box::new(|o| o.user = Some("root".into())),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut o = open.clone();
            change(&mut o);
            assert_ne!(terminal_bytes("rn_1", "sa_1", 1000, &o), base, "change {i}");
        }

        let stop = DockerRequest {
            op: super::super::DockerOp::Stop,
            container: Some("web".into()),
            timeout_s: Some(5),
            signal: None,
            force: false,
            volumes: false,
            filters: None,
            signed: None,
        };
        let base = container_bytes("rn_1", "sa_1", 1000, &stop);
        assert!(base.starts_with(b"tether-signed-action 1\nkind 9:container\n"));
        type OpChange = Box<dyn Fn(&mut DockerRequest)>;
        let changes: Vec<OpChange> = vec![
            Box::new(|r| r.op = super::super::DockerOp::Remove),
            Box::new(|r| r.container = Some("db".into())),
            Box::new(|r| r.timeout_s = None),
            Box::new(|r| r.signal = Some("KILL".into())),
            Box::new(|r| r.force = true),
            Box::new(|r| r.volumes = true),
            Box::new(|r| r.filters = Some(serde_json::json!({"label": ["a"]}))),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut r = stop.clone();
            change(&mut r);
            assert_ne!(
                container_bytes("rn_1", "sa_1", 1000, &r),
                base,
                "change {i}"
            );
        }
        // Filters: the same object whatever order its keys came in.
        let a: serde_json::Value =
            serde_json::from_str(r#"{"until":["1h"],"label":["x"]}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"label":["x"],"until":["1h"]}"#).unwrap();
        let (mut ra, mut rb) = (stop.clone(), stop.clone());
        (ra.filters, rb.filters) = (Some(a), Some(b));
        assert_eq!(
            container_bytes("rn_1", "sa_1", 1000, &ra),
            container_bytes("rn_1", "sa_1", 1000, &rb)
        );
    }

    #[test]
    fn deploy_fields_are_signed() {
        let mut j = job();
        j.deploy = Some(Box::new(DeploySpec {
            app: "web".into(),
            git_url: Some("https://git.example/web.git".into()),
            git_ref: Some("0123abcd".into()),
            image: "web:1".into(),
            container: "web".into(),
            ..DeploySpec::default()
        }));
        let base = job_bytes("rn_1", "sa_1", 1000, &j);
        assert!(base.starts_with(b"tether-signed-action 1\nkind 6:deploy\n"));
        let mut other = j.clone();
        other.deploy.as_mut().unwrap().git_ref = Some("0123abce".into());
        assert_ne!(job_bytes("rn_1", "sa_1", 1000, &other), base);
        let mut other = j.clone();
        other
            .deploy
            .as_mut()
            .unwrap()
            .volumes
            .push("/:/host".into());
        assert_ne!(job_bytes("rn_1", "sa_1", 1000, &other), base);
    }
}
