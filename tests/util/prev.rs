//! Binaries of an earlier revision, for the compatibility test (a runner
//! built before a change still works against the server after it) and for
//! `make bench BENCH_BASE=<rev>` (the same figures before and after).
//!
//! The revision's tree is `git archive`d (no worktree is registered) into
//! `target/bench-base/<rev>/src` and built with its own target directory,
//! `target/bench-base/<rev>/target`, so nothing of this build touches the
//! current one. Both stay: the next run reuses them. Needs the git history
//! (a clone with the revision; CI's full clone has it).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The last commit before the server reshape (issue 16): its runner is the
/// one hosts run today.
pub const PRE_RESHAPE: &str = "d0bbe8d";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/bench-base/<rev>`.
pub fn base_dir(rev: &str) -> PathBuf {
    super::target_dir().join("bench-base").join(rev)
}

/// The source tree of `rev`, extracted once.
pub fn tree(rev: &str) -> PathBuf {
    let base = base_dir(rev);
    let src = base.join("src");
    if src.join("Cargo.toml").exists() {
        return src;
    }
    std::fs::create_dir_all(&base).unwrap();
    let tmp = base.join(format!("src.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"git -C "$1" archive "$2" | tar -x -C "$3""#)
        .args(["sh"])
        .arg(workspace())
        .arg(rev)
        .arg(&tmp)
        .status()
        .expect("run git archive");
    assert!(
        status.success() && tmp.join("Cargo.toml").exists(),
        "cannot extract revision {rev}: this needs the git history \
         (`git fetch --unshallow` in a shallow clone)"
    );
    // Another process may have won the race: its tree is as good.
    if std::fs::rename(&tmp, &src).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    src
}

/// `cargo <args>` in `rev`'s tree with its own target directory; panics
/// with the build's output if it fails.
pub fn cargo(rev: &str, args: &[&str]) {
    let src = tree(rev);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base_dir(rev).join("target"))
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} at {rev} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The runner of `rev`, a debug build like the test's own (built on first
/// use: about two minutes on 2 cores, then reused).
pub fn runner(rev: &str) -> PathBuf {
    let bin = base_dir(rev).join("target/debug/tether");
    if !bin.exists() {
        eprintln!("building the runner of {rev} (first time only) ...");
        cargo(rev, &["build", "--locked", "--bin", "tether"]);
    }
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}
