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
