//! `docs/server.md` lists every file under `server/src`: the module map
//! stays true because this test fails when a file is added, moved or
//! removed without the map.

use std::collections::BTreeSet;
use std::path::Path;

/// The first word of each line of the first `text` block after
/// "## Module map" that names a `.rs` file.
fn files_in_map(doc: &str) -> BTreeSet<String> {
    let section = doc
        .split("## Module map")
        .nth(1)
        .expect("docs/server.md has a \"## Module map\" section");
    let block = section
        .split("```text")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the module map is a ```text block");
    block
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.ends_with(".rs"))
        .map(str::to_owned)
        .collect()
}

fn files_under(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap();
            out.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_module_map_in_docs_lists_every_source_file() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(server.join("../docs/server.md")).unwrap();
    let mapped = files_in_map(&doc);
    let src = server.join("src");
    let mut present = BTreeSet::new();
    files_under(&src, &src, &mut present);
    let missing: Vec<_> = present.difference(&mapped).collect();
    let stale: Vec<_> = mapped.difference(&present).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/server.md's module map is out of date:\n  not in the map: {missing:?}\n  \
         in the map, no such file: {stale:?}"
    );
}

// ---- the dependency rule -----------------------------------------------------------

/// Where a top-level module sits in the dependency rule (`docs/server.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// `lib.rs`, `main.rs`, `bin/`: may use anything.
    Root,
    /// `app/`: assembles features; may use anything.
    App,
    /// `runners/`, `jobs/`, ...: may use the plumbing, not each other.
    Feature,
    /// `link/`: the runner WebSocket; may use the plumbing only.
    Link,
    /// `cluster/`: replicas and their links; features (the health log)
    /// use it, it uses storage and common only (never `link/`: `app/`
    /// joins the two).
    Cluster,
    /// `common/`: may use storage only.
    Common,
    /// `storage/` (`db/` after issue 16's storage slice): uses nothing of ours.
    Storage,
    /// `cli/`: a client of the REST API; common's time formats only.
    Cli,
}

fn layer(module: &str) -> Layer {
    match module {
        "" | "bin" => Layer::Root,
        "app" => Layer::App,
        "link" => Layer::Link,
        "cluster" => Layer::Cluster,
        "common" => Layer::Common,
        "storage" | "db" => Layer::Storage,
        "cli" => Layer::Cli,
        "runners" | "telemetry" | "containers" | "logs" | "jobs" | "deploy" | "terminals"
        | "users" | "updates" | "alerts" | "fleet" | "audit" => Layer::Feature,
        // Operator keys and signing: a library of the CLI (and its tests),
        // using nothing of ours.
        "signing" => Layer::Common,
        other => panic!("top-level module {other:?} has no place in the dependency rule: add it to layer() and to docs/server.md"),
    }
}

/// Whether the rule itself lets `from` use `to` (both top-level modules).
fn allowed_by_rule(from: &str, to: &str) -> bool {
    use Layer::*;
    matches!(
        (layer(from), layer(to)),
        (Root | App, _)
            | (Feature | Link | Cluster, Common | Storage)
            | (Feature, Link | Cluster)
            | (Common, Storage)
            | (Cli, Common)
    )
}

/// The named seams: a use the rule alone forbids, allowed because it is the
/// documented way between two parts (`docs/server.md`, "Seams"). Each is
/// `(from, to, the items it may name)`, `from` `*` for any feature;
/// anything else across is refused.
const SEAMS: &[(&str, &str, &[&str])] = &[
    // The leaves of `common/` (they use nothing of ours: checked in the
    // no-circle test): time formats, which the log area's model
    // (`db/logs.rs`) reads and writes Docker's RFC 3339 stamps with, and
    // what TLS clients trust, which the PostgreSQL backend connects with
    // (`db/postgres/tls.rs`).
    ("db", "common", &["common::clock", "common::tls"]),
    // Labels and selectors name sets of runners wherever a set is named
    // (jobs, the runners list, update groups), and a job's deadline is
    // recorded where jobs are made. One-way: jobs reach the fleet only
    // through `jobs::RunnerSets`, which the fleet implements.
    (
        "*",
        "fleet",
        &[
            "fleet::labels",
            "fleet::selector",
            "fleet::deadlines",
            "fleet::versions",
        ],
    ),
    (
        "fleet",
        "jobs",
        &[
            "jobs::api",
            "jobs::rules",
            "jobs::JobUpdate",
            "jobs::JobHub",
            "jobs::JobsCtx",
            "jobs::RunnerSets",
        ],
    ),
    // Host actions (a job the runner refused) are recorded where the
    // connection hears of them; `audit verify --db` checks a copied file
    // offline with the trail's own store.
    ("jobs", "audit", &["audit::host_event", "audit::AuditCtx"]),
    // A signed action is signed over what the server will send: the CLI
    // builds it with the server's own builder, so the two cannot drift
    // (a drift would make every signed deploy "altered" on the host).
    ("cli", "deploy", &["deploy::api"]),
    ("cli", "terminals", &["terminals::api"]),
    ("cli", "containers", &["containers::api"]),
    ("cli", "db", &["db::sqlite"]),
    // Alerts are evaluated as data arrives: the engine subscribes to the
    // health log's and the container hub's broadcasts.
    ("alerts", "runners", &["runners::health"]),
    (
        "alerts",
        "containers",
        &[
            "containers::ContainerEventRecord",
            "containers::ContainerHub",
        ],
    ),
    // Deploys become jobs: deploy checks and starts them through the jobs
    // feature's rules (`jobs::api`), store and hub.
    (
        "deploy",
        "jobs",
        &["jobs::api", "jobs::rules", "jobs::JobHub", "jobs::JobsCtx"],
    ),
    // The event stream (`runners/events.rs`) carries container events
    // beside health changes: it reads the container hub's records.
    (
        "runners",
        "containers",
        &[
            "containers::ContainerEventRecord",
            "containers::ContainerEventView",
            "containers::ContainerHub",
        ],
    ),
];

/// The top-level module of a file under `src/`, and its module path.
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts
}

/// Code without comments: `//` to the end of the line (doc comments name
/// paths in prose) and `/* */` blocks. Strings are not parsed: a `//` or
/// `crate::` inside a string literal would be misread, and none is there.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        let line_c = rest.find("//");
        let block_c = rest.find("/*");
        match (line_c, block_c) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = &rest[l..];
                rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = &rest[b..];
                rest = &rest[rest.find("*/").map_or(rest.len(), |e| e + 2)..];
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The items of a `{...}` group (text after the `{`), each from its start,
/// up to the closing brace: `a::b, c::{d}, e}` → `a::b`, `c::{d}`, `e`.
fn top_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (j, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(group[start..j].trim());
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(group[start..j].trim());
                start = j + 1;
            }
            _ => {}
        }
    }
    items.retain(|i| !i.is_empty());
    items
}

/// The first identifier of each item of a `{...}` group.
fn top_idents(group: &str) -> Vec<&str> {
    top_items(group).into_iter().map(ident_at).collect()
}

/// Every path of another top-level module that `code` names, as
/// `(module, path)` where path is the first two segments (`jobs::store`):
/// `crate::a::b`, the groups of `use crate::{a::b, c}`, and `super::`
/// chains that climb out of the file's top-level module.
fn uses(code: &str, path: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // `first` and what follows it: `::b`, `::{b, c}` (one path each) or nothing.
    let mut push = |first: &str, after: &str| {
        if first.is_empty() || first == "self" || first == "super" {
            return;
        }
        let seconds = match after.strip_prefix("::") {
            Some(group) if group.starts_with('{') => top_idents(&group[1..]),
            Some(rest) => vec![ident_at(rest)],
            None => vec![""],
        };
        for second in seconds {
            let p = if second.is_empty() {
                first.to_owned()
            } else {
                format!("{first}::{second}")
            };
            out.push((first.to_owned(), p));
        }
    };
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `tether_server::` has no `crate::`; `foocrate::` is not ours
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c::{d, e}, f}`: each item's path.
            for item in top_items(group) {
                let first = ident_at(item);
                push(first, &item[first.len()..]);
            }
        } else {
            let first = ident_at(rest);
            push(first, &rest[first.len()..]);
        }
    }
    // `super::` from a file nested k deep climbs out after k+... levels:
    // count the chain and resolve it against the file's module path.
    for (i, _) in code.match_indices("super::") {
        if i >= 7 && &code[i - 7..i] == "super::" {
            continue; // inside a chain: counted from its start
        }
        let mut rest = &code[i..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups >= path.len() {
            let first = ident_at(rest);
            push(first, &rest[first.len()..]);
        }
    }
    out
}

/// `(from, to) → the paths named`, over every file under `src/`.
fn dependency_graph() -> std::collections::BTreeMap<(String, String), BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeSet::new();
    files_under(&src, &src, &mut files);
    let mut graph = std::collections::BTreeMap::<(String, String), BTreeSet<String>>::new();
    for rel in files {
        let path = module_path(&rel);
        let from = path.first().cloned().unwrap_or_default();
        let code = strip_comments(&std::fs::read_to_string(src.join(&rel)).unwrap());
        for (to, named) in uses(&code, &path) {
            if to != from {
                graph
                    .entry((from.clone(), to))
                    .or_default()
                    .insert(format!("{named} (in {rel})"));
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_depend_on_each_other_by_the_rule() {
    let graph = dependency_graph();
    let mut broken = Vec::new();
    for ((from, to), named) in &graph {
        if allowed_by_rule(from, to) {
            continue;
        }
        let seam = SEAMS.iter().find(|(f, t, _)| {
            (*f == from || (*f == "*" && layer(from) == Layer::Feature)) && t == to
        });
        if let Some((_, _, items)) = seam {
            let outside: Vec<_> = named
                .iter()
                .filter(|n| !items.iter().any(|i| n.starts_with(&format!("{i} "))))
                .collect();
            if !outside.is_empty() {
                broken.push(format!(
                    "{from} → {to} outside the seam {items:?}: {outside:?}"
                ));
            }
            continue;
        }
        broken.push(format!("{from} → {to}: {named:?}"));
    }
    assert!(
        broken.is_empty(),
        "the dependency rule of docs/server.md:\n  refused:\n    {}",
        broken.join("\n    ")
    );
}

/// The seams go one way: the graph of top-level modules has no cycle (two
/// seams that point at each other would pass the rule's check one edge at
/// a time).
#[test]
fn top_level_modules_import_each_other_in_no_circle() {
    let graph = dependency_graph();
    let mut next = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    // `common/clock.rs` and `common/tls.rs` are leaves (checked here):
    // `db/` naming only them closes no circle through `common/`'s other
    // files.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    const LEAVES: [&str; 2] = ["clock", "tls"];
    for leaf in LEAVES {
        let path = src.join(format!("common/{leaf}.rs"));
        let text = strip_comments(&std::fs::read_to_string(path).unwrap());
        assert!(
            uses(&text, &["common".into(), leaf.into()]).is_empty() && !text.contains("crate::"),
            "common/{leaf}.rs uses other modules: it is no longer a leaf"
        );
    }
    for ((from, to), named) in &graph {
        let leaves_only = named.iter().all(|n| {
            LEAVES
                .iter()
                .any(|leaf| n.starts_with(&format!("common::{leaf} ")))
        });
        if from == "db" && to == "common" && leaves_only {
            continue;
        }
        next.entry(from.as_str()).or_default().push(to.as_str());
    }
    // Depth-first, colouring: a module met again while on the path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        next: &std::collections::BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|p| *p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m);
            return Some(cycle);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for to in next.get(m).into_iter().flatten() {
            if let Some(c) = visit(to, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in next.keys() {
        let cycle = visit(m, &next, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "a circle of imports: {}",
            cycle.unwrap().join(" → ")
        );
    }
}

/// The parser finds what the rule is checked on (so a change in the
/// project's `use` style cannot make the rule check nothing).
#[test]
fn the_dependency_parser_reads_paths_groups_and_super_chains() {
    let code = strip_comments(
        "use crate::app::AppState; // crate::logs in a comment\n\
         use crate::{common::clock, jobs::{store, JobHub}, users};\n\
         /* crate::deploy */ fn f() { crate::updates::offer(); super::super::link::x(); }",
    );
    let got: BTreeSet<_> = uses(&code, &["runners".into(), "api".into()])
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let want: BTreeSet<String> = [
        "app::AppState",
        "common::clock",
        "jobs::JobHub",
        "jobs::store",
        "users",
        "updates::offer",
        "link::x",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(got, want);
    assert!(!dependency_graph().is_empty());
}
