//! What a deploy job carries to the runner (`job_start.deploy`): where the
//! source is, how to build it, and the container to replace. Environment
//! variables and secrets travel in `job_start.env` / `job_start.secrets`
//! as for any job, but a deploy job gives them to the container (as its
//! `secrets_delivery` says), not to the git process.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeploySpec {
    /// The app's name (labels, checkout directory).
    pub app: String,
    /// Git repository to clone or fetch; or `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    /// Branch, tag or commit (default `HEAD` of the remote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// A directory on the host instead of git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Build context, relative to the source root.
    #[serde(default = "dot")]
    pub context: String,
    /// Dockerfile, relative to the context.
    #[serde(default = "dockerfile")]
    pub dockerfile: String,
    /// Image reference to build (tag) and run.
    pub image: String,
    /// false: run `image` as it is (a rollback), no source, no build.
    #[serde(default = "yes")]
    pub build: bool,
    pub container: String,
    #[serde(default)]
    pub ports: Vec<PortMap>,
    /// Docker binds, `source:target[:options]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    #[serde(default = "restart")]
    pub restart: String,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// An absolute path in the container where the app wants its env as
    /// `KEY=VALUE` lines, mode 0600: the plain env, and the secrets with
    /// `env` or `env_file` delivery. Written into the created container
    /// (its writable layer) before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    /// How the secrets reach the container. Absent (an older server): `env`.
    #[serde(default)]
    pub secrets_delivery: SecretsDelivery,
    /// Owner of the secret files (`files` delivery); absent: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_gid: Option<u32>,
}

/// Where a deployment's secrets are put (`docs/api.md`, "Secrets delivery").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecretsDelivery {
    /// Files `/run/secrets/NAME` (0400) on a host tmpfs bound read-only
    /// into the container: in memory only.
    Files,
    /// `Env` entries of the container (Docker keeps them in the
    /// container's config on the host's disk); also in `env_file` if set.
    #[default]
    Env,
    /// Only in the `env_file` inside the container (its writable layer, on
    /// the host's disk), not in `Env`.
    EnvFile,
}

impl SecretsDelivery {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretsDelivery::Files => "files",
            SecretsDelivery::Env => "env",
            SecretsDelivery::EnvFile => "env_file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    /// Host port.
    pub host: u16,
    pub container: u16,
    /// `tcp` or `udp`.
    #[serde(default = "tcp")]
    pub proto: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// The new container is healthy once `cmd` (run inside it with exec) exits
/// 0, or a TCP connection to host port `tcp_port` succeeds, within
/// `timeout_s`. With neither, it must still be running after a second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    #[serde(default = "health_timeout")]
    pub timeout_s: u64,
}

/// Longest app name (the server's rule, checked again by the runner).
pub const MAX_APP_NAME: usize = 64;

/// An app name becomes a directory on the host (`<state-dir>/deploy/APP`):
/// 1 to [`MAX_APP_NAME`] of `[A-Za-z0-9_.-]`, starting with a letter or
/// digit, so never empty, `.`, `..`, a path with `/`, or an option. The
/// server checks it when the app is defined; the runner checks it again
/// before it touches a path, trusting no server with its file system.
pub fn check_app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_APP_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        return Ok(());
    }
    let mut shown: String = name.chars().take(MAX_APP_NAME).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    Err(format!(
        "app name {shown:?}: 1 to {MAX_APP_NAME} of [A-Za-z0-9_.-], starting with a letter or digit"
    ))
}

fn dot() -> String {
    ".".into()
}
fn dockerfile() -> String {
    "Dockerfile".into()
}
fn yes() -> bool {
    true
}
fn restart() -> String {
    "no".into()
}
fn tcp() -> String {
    "tcp".into()
}
fn health_timeout() -> u64 {
    30
}

/// Step numbers in a deploy job's output records (`JOB_RECORD_HEADER`'s
/// `step` byte). 0 is a plain job's only step.
pub mod step {
    pub const SOURCE: u8 = 1;
    pub const BUILD: u8 = 2;
    pub const REPLACE: u8 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_that_would_leave_their_directory_are_refused() {
        for good in ["web", "Web-1", "a", "app_2.v3", &"x".repeat(MAX_APP_NAME)] {
            assert_eq!(check_app_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "-rf",
            ".hidden",
            "a\0b",
            "a b",
            "ä",
            &"x".repeat(MAX_APP_NAME + 1),
        ] {
            let e = check_app_name(bad).unwrap_err();
            assert!(e.starts_with("app name "), "{bad:?}: {e}");
        }
        // A long one is not echoed whole.
        let e = check_app_name(&"/".repeat(100_000)).unwrap_err();
        assert!(e.len() < 300, "{}", e.len());
    }
}
