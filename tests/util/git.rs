//! Git repositories made by the tests, for deployments to build from: a
//! Dockerfile `FROM` the locally imported test image, committed on `main`.

use std::path::Path;
use std::process::Command;

use super::docker::IMAGE;

/// Run `script` with `sh -c` in `dir`, with a fixed git identity; panics
/// with its stderr when it fails.
pub fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository in `dir` whose Dockerfile copies the context to /ctx and
/// sleeps; `version.txt` holds `version`.
pub fn app_repo(dir: &Path, version: &str) {
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY . /ctx\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    std::fs::write(dir.join(".dockerignore"), ".git\n").unwrap();
    std::fs::write(dir.join("version.txt"), format!("{version}\n")).unwrap();
    sh(
        dir,
        "git init -q -b main . && git add -A && git commit -qm v1",
    );
}
