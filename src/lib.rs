//! Tether runner library. `protocol` is always built (the server uses it);
//! everything else is the runner and needs the `runner` feature.
//!
//! The runner holds one outbound TLS WebSocket to tether-server, driven by one
//! single-threaded mio event loop ([`event_loop`]). The only other thread is
//! the DNS helper ([`conn::dns`]), because `getaddrinfo` blocks.
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
//! rand           small PRNG for jitter, seeded from getrandom
//! state          state dir (credential, CA copy) and run dir (status.json)
//! sys/           every `unsafe` of the runner: small safe libc wrappers (processes, fds,
//!                the signal handler, PTYs, filesystems, netlink, host facts)
//! signals        self-pipe for SIGTERM/SIGINT/SIGCHLD/SIGUSR1
//! event_loop     Poll, tokens, timer heap, dispatch
//! conn/          the control connection: state machine, backoff, dns, proxy, tls, transport;
//!                sends the telemetry feed at the lowest priority
//! child          child processes in the loop: pipes, bounds, timeout, reaping
//! telemetry/     metrics and fingerprint on timers: sampler → backlog (acked), firewall probe, reports
//! http           sans-IO HTTP/1.1 response parser + small blocking HTTPS client
//! enroll         `tether enroll`
//! metrics/       /proc parsers, sampler, compact wire encoding, backfill backlog (wire is shared with the server)
//! fingerprint/   host fingerprint: collectors, diff and apply (shared with the server)
//! trust/         signed actions: the host's trusted operator keys, what needs a signature,
//!                the check of each action and the ids it remembers against replay
//! update/        signed self-update: verify, stage, trial, swap, re-exec, roll back
//! version        the version this binary reports (a patchable slot, for the update tests)
//! docker/        sans-IO Docker Engine HTTP/1.1 codec and API request builders; client: the
//!                engine in the loop (probe, docker_request, events, snapshots)
//! terminal/      interactive terminals: host login shells on PTYs, TTY execs in containers
//! jobs/          jobs: processes with their output spooled and acked, deploys through the
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
pub mod child;
#[cfg(feature = "runner")]
pub mod config;
#[cfg(feature = "runner")]
pub mod conn;
#[cfg(feature = "runner")]
pub mod docker;
#[cfg(feature = "runner")]
pub mod enroll;
#[cfg(feature = "runner")]
pub mod event_loop;
#[cfg(feature = "runner")]
pub mod exit;
#[cfg(feature = "runner")]
pub mod http;
#[cfg(feature = "runner")]
pub mod jobs;
#[cfg(feature = "runner")]
pub mod rand;
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
}
