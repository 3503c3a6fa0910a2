//! Embeds the dashboard into the server binary (`src/app/web.rs` serves it).
//!
//! `web/src/` (our own HTML, CSS and JS modules, committed) and `web/dist/`
//! (third-party libraries copied from npm by `web/build.sh`, never
//! committed) become one table of `include_bytes!` entries in
//! `$OUT_DIR/web_assets.rs`. A missing `web/dist/` is not an error: the
//! server builds and serves the dashboard without those libraries and says
//! so on the page (`make web` fills it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("web");
    let mut files = Vec::new();
    for sub in ["src", "dist"] {
        let dir = root.join(sub);
        // Re-run when a file is added or changed; a missing dir is watched too,
        // so building the assets later triggers a rebuild.
        println!("cargo:rerun-if-changed={}", dir.display());
        collect(&dir, &dir, &mut files);
    }
    files.sort();
    let mut out = String::from("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap()).join("web_assets.rs");
    fs::write(dest, out).unwrap();
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect(base, &path, out);
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push((rel.to_string_lossy().replace('\\', "/"), path));
        }
    }
}
