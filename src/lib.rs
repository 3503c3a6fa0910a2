//! Tether runner library. `protocol` is always built (the server uses it);
//! everything else is the runner and needs the `runner` feature.
//!
//! The runner holds one outbound TLS WebSocket to tether-server, driven by one
//! single-threaded mio event loop ([`reactor`], driven by [`runner`]). The only other thread is
//! the DNS helper ([`net::dns`]), because `getaddrinfo` blocks.
//!
//! Module map (what owns what; `module_map_lists_every_module` checks it
//! against the files under `src/`):
//!
//! ```text
//! main.rs        CLI (lexopt), prints the error chain once, maps it to an exit code
//! protocol       the wire messages, shared with the server (always built; protocol/: deploy, secret env,
//!                signed: the canonical bytes of a signed action)
//! exit           the exit code table
//! log            leveled logger to stderr, UTC timestamps
//! config         durations, environment lookups, proxy selection
//! url            https/wss URL parsing (host incl. [ipv6], port, path)
//! rand           small PRNG for jitter, seeded from getrandom (always built, as conn/backoff.rs is:
//!                tether-sim reconnects by the runner's policy)
//! state          state dir (credential, CA copy) and run dir (status.json)
//! sys/           every `unsafe` of the runner: small safe libc wrappers (processes, fds,
//!                the signal handler, PTYs, filesystems, netlink, host facts)
//! signals        self-pipe for SIGTERM/SIGINT/SIGCHLD/SIGUSR1
//! reactor/       the mio Poll, tokens that name their source, timers keyed by source, the
//!                `Source` trait; names no feature
//! link           what the connection and the features exchange: link events, outgoing
//!                messages, message families and the `Feature` trait
//! runner         `tether run` in the loop: the connection and the feature list (the only
//!                place that names every feature)
//! net/           plumbing without a feature: the one sans-IO HTTP/1.1 codec, proxy CONNECT,
//!                rustls config, the TLS transport over a non-blocking socket, the DNS thread
//! conn/          the control connection: dial (resolve → TCP → proxy → TLS → upgrade) and
//!                session (hello, liveness, closing, status); backoff
//! child          child processes in the loop: pipes, bounds, timeout, reaping
//! telemetry/     metrics and fingerprint on timers: sampler → backlog (acked), firewall probe, reports
//! http           small blocking HTTPS client (enroll, release downloads) on net's codec
//! enroll         `tether enroll`
//! metrics/       /proc parsers, sampler, compact wire encoding, backfill backlog (wire is shared with the server)
//! fingerprint/   host fingerprint: collectors, diff and apply (shared with the server)
//! trust/         signed actions: the host's trusted operator keys, what needs a signature,
//!                the check of each action and the ids it remembers against replay;
//!                gate.rs: terminals and container operations checked before their feature;
//!                audit.rs: the host's own bounded record of it (`tether audit`)
//! update/        signed self-update: verify, stage, trial, swap, re-exec, roll back
//! version        the version this binary reports (a patchable slot, for the update tests)
//! channel/       the sending half of a data channel, once for jobs, logs and terminals: window,
//!                ACK and CREDIT, memory then a bounded spool file, resend from the server's offset
//! engine/        the Docker Engine API: request builders, body streams, the one Engine call
//!                (sans-IO exchange + driver) every feature uses
//! docker/        container management (probe, docker_request, events, snapshots) and log
//!                collection, on the engine
//! terminal/      interactive terminals: host login shells on PTYs, TTY execs in containers
//! jobs/          jobs: processes with their output on a spooled channel, deploys through the
//!                engine, secret files on tmpfs, the ledger that survives a restart
//! ```

// Every `unsafe` block lives in `sys` (small safe functions, each with a
// SAFETY note); the rest of the crate may not add one.
#![deny(unsafe_code)]

pub mod fingerprint;
pub mod metrics;
pub mod protocol;

#[cfg(feature = "runner")]
pub mod log;

#[cfg(feature = "runner")]
pub mod channel;
#[cfg(feature = "runner")]
pub mod child;
#[cfg(feature = "runner")]
pub mod config;
#[cfg(feature = "runner")]
pub mod conn;
/// Without the runner (the server's build), the reconnect policy alone: it
/// is pure, and tether-sim draws its simulated runners' waits from it.
#[cfg(not(feature = "runner"))]
pub mod conn {
    pub mod backoff;
}
#[cfg(feature = "runner")]
pub mod docker;
#[cfg(feature = "runner")]
pub mod engine;
#[cfg(feature = "runner")]
pub mod enroll;
#[cfg(feature = "runner")]
pub mod exit;
#[cfg(feature = "runner")]
pub mod http;
#[cfg(feature = "runner")]
pub mod jobs;
#[cfg(feature = "runner")]
pub mod link;
#[cfg(feature = "runner")]
pub mod net;
pub mod rand;
#[cfg(feature = "runner")]
pub mod reactor;
#[cfg(feature = "runner")]
pub mod runner;
#[cfg(feature = "runner")]
pub mod signals;
#[cfg(feature = "runner")]
pub mod state;
#[cfg(feature = "runner")]
#[allow(unsafe_code)]
pub mod sys;
#[cfg(feature = "runner")]
pub mod telemetry;
#[cfg(feature = "runner")]
pub mod terminal;
#[cfg(feature = "runner")]
pub mod trust;
#[cfg(feature = "runner")]
pub mod update;
#[cfg(feature = "runner")]
pub mod url;
#[cfg(feature = "runner")]
pub mod version;

/// The module map above names every module under `src/` and nothing else,
/// and so does `sys/`'s: a module added without its line fails here.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The names in the first ```text block of `file`'s `//!` doc: the first
    /// word of each line that starts in the first column, `/` and `.rs` cut.
    fn map_names(file: &Path) -> BTreeSet<String> {
        let text = std::fs::read_to_string(file).unwrap();
        let doc: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect();
        let start = doc
            .iter()
            .position(|l| *l == "```text")
            .expect("a ```text map")
            + 1;
        doc[start..]
            .iter()
            .take_while(|l| **l != "```")
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .map(|w| w.trim_end_matches('/').trim_end_matches(".rs").to_owned())
            .collect()
    }

    /// Module names under `dir`: `x.rs` and `x/` (folders with Rust in them).
    fn file_names(dir: &Path, skip: &[&str]) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let name = e.file_name().into_string().ok()?;
                if path.is_dir() {
                    let has_rust =
                        path.join("mod.rs").exists() || dir.join(format!("{name}.rs")).exists();
                    return has_rust.then_some(name);
                }
                name.strip_suffix(".rs").map(str::to_owned)
            })
            .filter(|n| !skip.contains(&n.as_str()))
            .collect()
    }

    #[test]
    fn module_map_lists_every_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for (doc, dir, skip) in [
            (src.join("lib.rs"), src.clone(), &["lib"][..]),
            (src.join("sys/mod.rs"), src.join("sys"), &[][..]),
        ] {
            assert_eq!(
                map_names(&doc),
                file_names(&dir, skip),
                "the module map in {} against the files in {}",
                doc.display(),
                dir.display()
            );
        }
    }

    /// The runner's layers (docs/runner.md): plumbing, net, reactor, link,
    /// engine, channel, conn, features, runner. What each may use, by top-level
    /// module; net is `net/` (with `net/dns.rs`, the resolver thread) plus
    /// `http` (the blocking client on its codec). Test code is not counted.
    fn allowed(from: &str, to: &str) -> bool {
        const PLUMBING: &[&str] = &[
            "protocol",
            "sys",
            "signals",
            "log",
            "config",
            "state",
            "url",
            "rand",
            "version",
            "exit",
            "child",
            "metrics",
            "fingerprint",
        ];
        const FEATURES: &[&str] = &["docker", "jobs", "terminal", "telemetry", "update"];
        let plumbing = PLUMBING.contains(&to);
        match from {
            f if PLUMBING.contains(&f) => plumbing,
            "net" => plumbing || to == "net",
            "reactor" => plumbing,
            "link" => plumbing || to == "reactor",
            "engine" => plumbing || ["net", "reactor"].contains(&to),
            // Sans-IO but for its spool file: frames and records only.
            "channel" => plumbing,
            "conn" => plumbing || ["net", "reactor", "link"].contains(&to),
            "enroll" => plumbing || to == "net",
            // The signed-action check: reads its key file with the release
            // key parser of `update/` (the same minisign format); its gate
            // answers a refused request with a link message.
            "trust" => plumbing || ["update", "link"].contains(&to),
            f if FEATURES.contains(&f) => {
                plumbing || ["net", "reactor", "link", "engine", "channel", "trust"].contains(&to)
            }
            "runner" => to != "main",
            other => panic!("{other}: a module the layer rule does not know; place it"),
        }
    }

    /// `crate::x` paths in the non-test code of each top-level module.
    fn crate_deps(src: &Path) -> BTreeSet<(String, String)> {
        let mut deps = BTreeSet::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let test_file = name == "tests.rs" || name.ends_with("_tests.rs");
                if !rel.ends_with(".rs") || test_file || rel == "main.rs" || rel == "lib.rs" {
                    continue;
                }
                let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("\n#[cfg(test)]\nmod tests").next().unwrap();
                for line in code.lines() {
                    let line = line.split("//").next().unwrap();
                    for (i, _) in line.match_indices("crate::") {
                        let mut parts = line[i + 7..]
                            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                            .next()
                            .unwrap()
                            .split("::");
                        let first = parts.next().unwrap_or("");
                        let second = parts.next().unwrap_or("");
                        let from = match top {
                            "http" => "net",
                            _ => top,
                        };
                        let to = match (first, second) {
                            ("info" | "debug" | "warn" | "error", _) => "log",
                            ("http", _) => "net",
                            (t, _) => t,
                        };
                        if !to.is_empty() && to != from && !(from == "net" && to == "net") {
                            deps.insert((from.to_owned(), to.to_owned()));
                        }
                    }
                }
            }
        }
        deps
    }

    #[test]
    fn layers_point_one_way() {
        // The rule itself refuses the arrows that made the old cycle.
        assert!(!allowed("telemetry", "conn") && !allowed("docker", "jobs"));
        assert!(!allowed("conn", "docker") && !allowed("reactor", "link"));
        assert!(!allowed("link", "conn") && !allowed("sys", "reactor"));
        assert!(!allowed("engine", "terminal") && !allowed("engine", "link"));
        assert!(!allowed("channel", "jobs") && !allowed("channel", "reactor"));
        assert!(allowed("terminal", "channel") && !allowed("conn", "channel"));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let deps = crate_deps(&src);
        // No exceptions: the one Engine call removed the last feature →
        // feature arrows (docker ⇄ terminal, jobs → docker).
        let wrong: Vec<String> = deps
            .iter()
            .filter(|(from, to)| !allowed(from, to))
            .map(|(from, to)| format!("{from} uses {to}"))
            .collect();
        assert!(wrong.is_empty(), "against the layer rule: {wrong:?}");
        // The layers alone rule out cycles.
        assert!(deps.contains(&("runner".into(), "conn".into())));
        assert!(!deps.iter().any(|(_, to)| to == "runner"));
        // One data channel, written once: every feature with one sends on it.
        for f in ["jobs", "docker", "terminal"] {
            let uses = deps.contains(&(f.into(), "channel".into()));
            assert!(uses, "{f} sends its output on channel/");
        }
    }
}
