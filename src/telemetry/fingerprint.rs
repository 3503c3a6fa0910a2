//! The fingerprint on the wire: which report to send ([`Sequencer`]), how
//! to keep it within one control message ([`fit`]), and the firewall probe
//! that runs `nft -j list ruleset` (or `iptables-save` and
//! `ip6tables-save`) as child processes of the event loop
//! ([`FirewallProbe`]).
//!
//! ```text
//!            connection up / fingerprint_resync ──▶ full next
//!  collect ─▶ settle boot time ─▶ full next? ──yes──▶ {full: fp, notes}
//!                                     │no
//!                                     ▼
//!                      diff(prev, fp) empty? ──yes──▶ nothing
//!                                     │no
//!                                     ▼
//!                          {changes, notes} (too big for one message: full instead)
//! ```

use crate::child::{self, Child, Output};
use crate::fingerprint::{diff, firewall, Fingerprint, Firewall};
use crate::metrics::Note;
use crate::protocol::{FingerprintReport, MAX_CONTROL_MESSAGE};
use crate::reactor::Ctx;
use mio::{Registry, Token};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Most bytes of a report's JSON, leaving room for the envelope.
pub const MAX_REPORT_JSON: usize = MAX_CONTROL_MESSAGE - 1024;
/// Bounds of one firewall command.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
pub const PROBE_MAX_OUTPUT: usize = 4 << 20;

/// A note as the report carries it: `firewall: unavailable (reason)`.
pub fn report_note(n: &Note) -> String {
    format!("{}: unavailable ({})", n.what, n.reason)
}

/// Decides between a full report, a change list and nothing.
#[derive(Debug, Default)]
pub struct Sequencer {
    /// What the server holds (the last report sent or queued).
    prev: Option<Fingerprint>,
    full_next: bool,
}

impl Sequencer {
    pub fn new() -> Sequencer {
        Sequencer {
            prev: None,
            full_next: true,
        }
    }

    /// The next report is full: a new connection, or the server asked
    /// (`fingerprint_resync`).
    pub fn resync(&mut self) {
        self.full_next = true;
    }

    pub fn full_next(&self) -> bool {
        self.full_next || self.prev.is_none()
    }

    /// The report for a fresh collection, or `None` when nothing changed.
    pub fn report(
        &mut self,
        mut fp: Fingerprint,
        mut notes: Vec<String>,
        ts_ms: u64,
    ) -> Option<FingerprintReport> {
        if let Some(prev) = &self.prev {
            fp.settle_boot_time(prev);
        }
        fit(&mut fp, &mut notes);
        if !self.full_next() {
            let prev = self.prev.as_ref()?;
            let changes = diff(prev, &fp);
            if changes.is_empty() {
                return None;
            }
            let report = FingerprintReport {
                ts_ms,
                full: None,
                changes,
                notes: notes.clone(),
            };
            if json_len(&report) <= MAX_REPORT_JSON {
                self.prev = Some(fp);
                return Some(report);
            }
            // A change list longer than the whole (a firewall reload): the
            // full fingerprint says the same in fewer bytes.
        }
        self.full_next = false;
        self.prev = Some(fp.clone());
        Some(FingerprintReport {
            ts_ms,
            full: Some(Box::new(fp)),
            changes: Vec::new(),
            notes,
        })
    }
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

/// Keep a fingerprint within one control message. Firewall rules are what
/// grows without bound (then listening sockets): the last ones are cut and
/// a note says so. A real host is far below the limit.
pub fn fit(fp: &mut Fingerprint, notes: &mut Vec<String>) {
    let notes_len: usize = notes.iter().map(|n| n.len() + 8).sum();
    let limit = MAX_REPORT_JSON.saturating_sub(notes_len + 512);
    let mut size = json_len(fp);
    if size <= limit {
        return;
    }
    if let Some(fw) = fp.firewall.as_mut() {
        let total = fw.rules.len();
        while size > limit {
            let Some(r) = fw.rules.pop() else { break };
            size = size.saturating_sub(json_len(&r) + 1);
        }
        if fw.rules.len() < total {
            notes.push(format!(
                "firewall: {total} rules, only the first {} fit a report",
                fw.rules.len()
            ));
        }
    }
    let total = fp.listening.len();
    while size > limit {
        let Some(l) = fp.listening.pop() else { break };
        size = size.saturating_sub(json_len(&l) + 1);
    }
    if fp.listening.len() < total {
        notes.push(format!(
            "listening: {total} sockets, only the first {} fit a report",
            fp.listening.len()
        ));
    }
}

/// Which firewall tool a probe ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Nft,
    Iptables,
}

struct Run {
    /// `ip4`/`ip6` for iptables, `nft`.
    family: &'static str,
    command: String,
    child: Option<Child>,
    output: Option<Output>,
}

/// The firewall commands of one fingerprint collection, running.
pub struct FirewallProbe {
    tool: Tool,
    runs: Vec<Run>,
}

impl FirewallProbe {
    /// Start `nft -j list ruleset` if nft exists, else `iptables-save` and
    /// `ip6tables-save` (those that exist). `Err(note)` when none exists or
    /// none could be started.
    pub fn start(ctx: &mut Ctx<'_>) -> Result<FirewallProbe, Note> {
        let env = vec![("LC_ALL".into(), "C".into())];
        let specs: Vec<(&'static str, child::Spec)> = match child::find_program("nft") {
            Some(nft) => vec![("nft", child::Spec::new(nft, &["-j", "list", "ruleset"]))],
            None => [("ip4", "iptables-save"), ("ip6", "ip6tables-save")]
                .into_iter()
                .filter_map(|(fam, name)| {
                    child::find_program(name).map(|p| (fam, child::Spec::new(p, &[])))
                })
                .collect(),
        };
        if specs.is_empty() {
            return Err(Note::new(
                "firewall",
                "no nft, iptables-save or ip6tables-save found",
            ));
        }
        let tool = if specs[0].0 == "nft" {
            Tool::Nft
        } else {
            Tool::Iptables
        };
        let mut runs = Vec::new();
        let mut errors = Vec::new();
        for (family, mut spec) in specs {
            spec.env = env.clone();
            spec.timeout = PROBE_TIMEOUT;
            spec.stdout_limit = PROBE_MAX_OUTPUT;
            let tokens = [ctx.token(), ctx.token()];
            let command = spec.command_line();
            match Child::spawn(&spec, ctx.registry, tokens, ctx.now) {
                Ok(c) => runs.push(Run {
                    family,
                    command,
                    child: Some(c),
                    output: None,
                }),
                Err(e) => errors.push(format!("{command}: {e}")),
            }
        }
        if runs.is_empty() {
            return Err(Note::new("firewall", errors.join("; ")));
        }
        Ok(FirewallProbe { tool, runs })
    }

    fn children(&mut self) -> impl Iterator<Item = &mut Child> {
        self.runs.iter_mut().filter_map(|r| r.child.as_mut())
    }

    pub fn owns(&self, token: Token) -> bool {
        self.runs
            .iter()
            .filter_map(|r| r.child.as_ref())
            .any(|c| c.owns(token))
    }

    pub fn on_ready(&mut self, registry: &Registry, token: Token) {
        for c in self.children() {
            if c.owns(token) {
                c.on_ready(registry, token);
            }
        }
    }

    pub fn wants_again(&self) -> bool {
        self.runs
            .iter()
            .filter_map(|r| r.child.as_ref())
            .any(Child::wants_again)
    }

    pub fn on_again(&mut self, registry: &Registry) {
        for c in self.children() {
            c.on_again(registry);
        }
    }

    /// Kill children past their deadline, reap those that ended, collect
    /// what finished ones left.
    pub fn poll(&mut self, registry: &Registry, now: Instant) {
        for run in &mut self.runs {
            let Some(c) = run.child.as_mut() else {
                continue;
            };
            c.check_deadline(registry, now);
            c.try_reap();
            if c.is_done() {
                if let Some(c) = run.child.take() {
                    run.output = Some(c.finish(registry));
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.runs.iter().all(|r| r.child.is_none())
    }

    /// When the owner should call [`poll`](Self::poll) next without a
    /// SIGCHLD: soon if a child closed its pipes but was not reaped, else
    /// at the earliest deadline.
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        let live = self.runs.iter().filter_map(|r| r.child.as_ref());
        if live.clone().any(Child::awaiting_exit) {
            return Some(now + Duration::from_millis(50));
        }
        live.map(Child::deadline).min()
    }

    /// The rules, and notes on what could not be read.
    pub fn finish(self) -> (Option<Firewall>, Vec<Note>) {
        let mut notes = Vec::new();
        let mut texts: Vec<(&'static str, String)> = Vec::new();
        for run in self.runs {
            let Some(out) = run.output else { continue };
            let what = format!("firewall ({})", run.command);
            if !out.success() {
                notes.push(Note::new(what, out.failure()));
                continue;
            }
            match String::from_utf8(out.stdout) {
                Ok(t) => texts.push((run.family, t)),
                Err(_) => notes.push(Note::new(what, "output is not UTF-8")),
            }
        }
        let fw = match self.tool {
            Tool::Nft => texts
                .first()
                .and_then(|(_, t)| match firewall::from_nft_json(t) {
                    Ok(fw) => Some(fw),
                    Err(e) => {
                        notes.push(Note::new("firewall (nft -j list ruleset)", e));
                        None
                    }
                }),
            Tool::Iptables if texts.is_empty() => None,
            Tool::Iptables => {
                let get = |fam: &str| {
                    texts
                        .iter()
                        .find(|(f, _)| *f == fam)
                        .map(|(_, t)| t.as_str())
                };
                Some(firewall::from_iptables_save(get("ip4"), get("ip6")))
            }
        };
        (fw, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::tests::sample_fingerprint;
    use crate::fingerprint::Listener;

    #[test]
    fn full_then_changes_then_nothing_then_full_on_resync() {
        let mut seq = Sequencer::new();
        let fp = sample_fingerprint();
        let r = seq.report(fp.clone(), vec!["n".into()], 1).unwrap();
        assert_eq!(r.full.as_deref(), Some(&fp));
        assert!(r.changes.is_empty());
        assert_eq!(r.notes, vec!["n".to_string()]);

        // Unchanged (boot time jitter settles): nothing to send.
        let mut same = fp.clone();
        same.boot_time = same.boot_time.map(|b| b + 1);
        assert_eq!(seq.report(same, vec![], 2), None);

        // A new listening port: only the change.
        let mut opened = fp.clone();
        opened.listening.push(Listener {
            proto: "tcp".into(),
            addr: "0.0.0.0".parse().unwrap(),
            port: 8080,
            process: Some("nginx".into()),
        });
        opened.listening.sort();
        let r = seq.report(opened.clone(), vec![], 3).unwrap();
        assert_eq!(r.full, None);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        assert_eq!(r.changes[0].path, "listening");
        // The server applies it to its copy and gets the new one.
        let mut server = fp.clone();
        crate::fingerprint::apply(&mut server, &r.changes).unwrap();
        assert_eq!(server, opened);

        // A rule added to the firewall.
        let mut ruled = opened.clone();
        if let Some(fw) = ruled.firewall.as_mut() {
            fw.rules
                .push("ip4 filter: -A INPUT -p tcp -m tcp --dport 9999 -j ACCEPT".into());
        }
        let r = seq.report(ruled.clone(), vec![], 4).unwrap();
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].path, "firewall.rules");
        assert_eq!(seq.report(ruled.clone(), vec![], 5), None);

        // Resync (or a new connection): full again, even with no change.
        seq.resync();
        let r = seq.report(ruled.clone(), vec![], 6).unwrap();
        assert_eq!(r.full.as_deref(), Some(&ruled));
        assert_eq!(seq.report(ruled, vec![], 7), None);
    }

    #[test]
    fn a_huge_ruleset_is_cut_to_fit_one_message() {
        let mut fp = sample_fingerprint();
        let rule = format!(
            "ip4 filter: -A INPUT -s 10.0.0.0/8 -m comment --comment {} -j ACCEPT",
            "x".repeat(80)
        );
        fp.firewall.as_mut().unwrap().rules = vec![rule; 5000];
        let mut seq = Sequencer::new();
        let r = seq.report(fp, vec![], 1).unwrap();
        let json = crate::protocol::encode_control(
            u64::MAX,
            crate::protocol::Message::Fingerprint(r.clone()),
        );
        assert!(json.len() <= MAX_CONTROL_MESSAGE, "{}", json.len());
        let kept = r.full.unwrap().firewall.unwrap().rules.len();
        assert!(kept > 1000 && kept < 5000, "{kept}");
        assert!(
            r.notes.iter().any(|n| n.contains("5000 rules")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_change_list_too_big_becomes_a_full_report() {
        let mut fp = sample_fingerprint();
        let rules: Vec<String> = (0..1500)
            .map(|i| {
                format!(
                    "ip4 filter: -A INPUT -s 10.{}.{}.0/24 -m comment --comment {} -j ACCEPT",
                    i / 256,
                    i % 256,
                    "y".repeat(60)
                )
            })
            .collect();
        fp.firewall.as_mut().unwrap().rules = rules.clone();
        let mut seq = Sequencer::new();
        assert!(seq.report(fp.clone(), vec![], 1).unwrap().full.is_some());
        // Every rule replaced: the change list would name each twice.
        fp.firewall.as_mut().unwrap().rules =
            rules.iter().map(|r| r.replace("ACCEPT", "DROP")).collect();
        let r = seq.report(fp.clone(), vec![], 2).unwrap();
        assert_eq!(r.full.as_deref(), Some(&fp));
        assert!(r.changes.is_empty());
    }
}
