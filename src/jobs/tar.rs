//! The build context as a tar stream, made on demand from a directory: the
//! deploy writes it into `POST /build`'s chunked body only as fast as the
//! engine takes it, so memory holds one block of one file at a time, never
//! the context.
//!
//! ```text
//!  Context::scan(dir) ─ walk, .dockerignore applied, ≤ MAX_ENTRIES paths (names only)
//!      └─▶ TarStream::fill(buf, max) ─▶ header ─▶ file bytes ─▶ padding ─▶ next … ─▶ two zero blocks ─▶ done
//! ```
//!
//! `.dockerignore` follows Docker's rules: one pattern per line, `#`
//! comments, `!` re-includes, the last matching pattern wins, a pattern
//! that matches a directory excludes everything under it; `*` and `?` do
//! not cross `/`, `**` does. The Dockerfile and `.dockerignore` are always
//! sent (the engine needs them; the docker CLI does the same).
//!
//! Names longer than ustar's 100 bytes use a GNU long-name entry, which the
//! engine's archive reader understands.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Files and directories in one context; more is refused (a context that
/// large is a mistake, such as a missing `.dockerignore` for `node_modules`).
pub const MAX_ENTRIES: usize = 200_000;
const BLOCK: usize = 512;

// ---------------------------------------------------------------------------
// .dockerignore

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    glob: String,
    negate: bool,
}

/// Parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, p) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let glob = clean(p);
            if glob.is_empty() {
                continue;
            }
            patterns.push(Pattern { glob, negate });
        }
        Ignore { patterns }
    }

    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.negate)
    }

    /// Whether `rel` (a `/`-separated path inside the context) is left out.
    pub fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for p in &self.patterns {
            // A pattern matching a parent directory matches the path too.
            let hit = glob_match(p.glob.as_bytes(), rel.as_bytes())
                || parents(rel).any(|d| glob_match(p.glob.as_bytes(), d.as_bytes()));
            if hit {
                excluded = !p.negate;
            }
        }
        excluded
    }
}

/// `a/b/c` → `a`, `a/b`.
fn parents(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// Docker cleans patterns like paths: no leading `/` or `./`, no `.`
/// segments, no trailing `/`.
fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

/// `*` and `?` within a segment, `**` across segments, `\` escapes.
///
/// Dynamic programming over (pattern suffix, name suffix), pattern from
/// its end: O(pattern × name) time and O(name) memory. The plain recursive
/// matcher is exponential in the number of stars (`a*a*a*…b` against a
/// long run of `a`s), and a `.dockerignore` comes from the repository
/// being deployed: one line of stars held the runner's only thread for
/// good (found by `fuzz/` target `tar_path`).
pub fn glob_match(pat: &[u8], name: &[u8]) -> bool {
    let n = name.len();
    // rows[p % 4][i]: does pat[p..] match name[i..]? A row needs only rows
    // of up to three positions further on (`**/`), so four are kept.
    let mut rows = [
        vec![false; n + 1],
        vec![false; n + 1],
        vec![false; n + 1],
        vec![false; n + 1],
    ];
    rows[pat.len() % 4][n] = true; // empty pattern, empty name
    for p in (0..pat.len()).rev() {
        let mut row = std::mem::take(&mut rows[p % 4]);
        let next = |q: usize, i: usize| rows[q % 4][i];
        match pat[p] {
            b'*' if pat.get(p + 1) == Some(&b'*') => {
                // `**/` also matches no directory at all.
                let rest = p + 2;
                let noslash = if pat.get(rest) == Some(&b'/') {
                    rest + 1
                } else {
                    rest
                };
                // Whether rest or noslash matches name[k..] for some k > i.
                let mut later = false;
                for i in (0..=n).rev() {
                    row[i] = next(noslash, i) || later;
                    later = later || next(rest, i) || next(noslash, i);
                }
            }
            b'*' => {
                // Any run of non-`/` bytes, then the rest.
                row[n] = next(p + 1, n);
                for i in (0..n).rev() {
                    row[i] = next(p + 1, i) || (name[i] != b'/' && row[i + 1]);
                }
            }
            c => {
                let (want, rest) = match c {
                    b'\\' if p + 1 < pat.len() => (Some(pat[p + 1]), p + 2),
                    b'?' => (None, p + 1),
                    c => (Some(c), p + 1),
                };
                row[n] = false;
                for i in 0..n {
                    let ok = match want {
                        Some(w) => name[i] == w,
                        None => name[i] != b'/',
                    };
                    row[i] = ok && next(rest, i + 1);
                }
            }
        }
        rows[p % 4] = row;
    }
    rows[0][0]
}

// ---------------------------------------------------------------------------
// Scan

/// The paths of a build context, in the order they go into the tar.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    entries: Vec<String>,
}

impl Context {
    /// Walk `root`, leaving out what `.dockerignore` excludes. `dockerfile`
    /// is relative to `root` and always kept.
    pub fn scan(root: &Path, dockerfile: &str) -> io::Result<Context> {
        let ignore = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(t) => Ignore::parse(&t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
            Err(e) => return Err(e),
        };
        let keep = [clean(dockerfile), ".dockerignore".to_owned()];
        let mut entries = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let abs = if dir.is_empty() {
                root.to_owned()
            } else {
                root.join(&dir)
            };
            let mut names: Vec<String> = Vec::new();
            for e in fs::read_dir(&abs)? {
                let e = e?;
                match e.file_name().into_string() {
                    Ok(n) => names.push(n),
                    Err(n) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: a file name that is not UTF-8", abs.join(n).display()),
                        ))
                    }
                }
            }
            // Stable order: the same tree gives the same tar (cache hits).
            names.sort();
            for n in names.into_iter().rev() {
                let rel = if dir.is_empty() {
                    n
                } else {
                    format!("{dir}/{n}")
                };
                let meta = fs::symlink_metadata(root.join(&rel))?;
                let excluded = ignore.excludes(&rel) && !keep.contains(&rel);
                if meta.is_dir() {
                    // An excluded directory is skipped whole unless a `!`
                    // pattern may bring something inside it back.
                    if excluded && !ignore.has_exceptions() {
                        continue;
                    }
                    stack.push(rel.clone());
                }
                if !excluded {
                    entries.push(rel);
                }
                if entries.len() > MAX_ENTRIES {
                    return Err(io::Error::other(format!(
                        "the build context has more than {MAX_ENTRIES} files (a .dockerignore is missing?)"
                    )));
                }
            }
        }
        // Parents before children (the walk above pushes them in stack order).
        entries.sort();
        Ok(Context {
            root: root.to_owned(),
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn into_stream(self) -> TarStream {
        TarStream {
            root: self.root,
            entries: self.entries,
            next: 0,
            file: None,
            pending: Vec::new(),
            finished: false,
            bytes: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Stream

/// A file being copied: bytes left per its header, and padding after.
struct Open {
    file: File,
    left: u64,
    pad: usize,
}

pub struct TarStream {
    root: PathBuf,
    entries: Vec<String>,
    next: usize,
    file: Option<Open>,
    /// Header bytes not yet handed out.
    pending: Vec<u8>,
    finished: bool,
    bytes: u64,
}

impl TarStream {
    /// Tar bytes made so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append up to `max` bytes to `out`. `Ok(false)` once everything,
    /// the end-of-archive blocks too, was handed out.
    pub fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<bool> {
        let start = out.len();
        while out.len() - start < max {
            let room = max - (out.len() - start);
            if !self.pending.is_empty() {
                let n = room.min(self.pending.len());
                out.extend(self.pending.drain(..n));
                continue;
            }
            if let Some(f) = &mut self.file {
                if f.left > 0 {
                    let want = room.min(64 * 1024).min(f.left as usize);
                    let at = out.len();
                    out.resize(at + want, 0);
                    let n = match f.file.read(&mut out[at..]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                        Err(e) => {
                            out.truncate(at);
                            return Err(e);
                        }
                    };
                    if n == 0 {
                        // The file shrank after its header was written: the
                        // size in the header stands, so pad with zeros.
                        f.left -= want as u64;
                    } else {
                        out.truncate(at + n);
                        f.left -= n as u64;
                    }
                    continue;
                }
                self.pending = vec![0; f.pad];
                self.file = None;
                continue;
            }
            if self.next < self.entries.len() {
                let rel = self.entries[self.next].clone();
                self.next += 1;
                self.open(&rel)?;
                continue;
            }
            if !self.finished {
                self.finished = true;
                self.pending = vec![0; 2 * BLOCK];
                continue;
            }
            break;
        }
        self.bytes += (out.len() - start) as u64;
        Ok(!(self.finished && self.pending.is_empty() && self.file.is_none()))
    }

    fn open(&mut self, rel: &str) -> io::Result<()> {
        let path = self.root.join(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone since the scan: leave it out.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o7777;
        let mtime = meta.mtime().max(0) as u64;
        if meta.is_dir() {
            self.pending = header(&format!("{rel}/"), b'5', mode, 0, mtime, "");
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)?;
            let target = target.to_string_lossy();
            self.pending = header(rel, b'2', mode, 0, mtime, &target);
        } else if meta.is_file() {
            let file = File::open(&path)?;
            let size = meta.len();
            self.pending = header(rel, b'0', mode, size, mtime, "");
            let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
            self.file = Some(Open {
                file,
                left: size,
                pad,
            });
        }
        // Sockets, fifos, devices: the engine would refuse them; skip.
        Ok(())
    }
}

/// A tar of one regular file, owned by root (uid and gid 0), with `mode`.
pub fn single_file(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    let mut out = header(name, b'0', mode, data.len() as u64, 0, "");
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0, (BLOCK - data.len() % BLOCK) % BLOCK));
    // Two zero blocks end the archive.
    out.extend(std::iter::repeat_n(0, 2 * BLOCK));
    out
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}", width = field.len() - 1);
    let b = s.as_bytes();
    let take = b.len().min(field.len() - 1);
    field[..take].copy_from_slice(&b[b.len() - take..]);
    field[field.len() - 1] = 0;
}

/// One ustar header block (preceded by a GNU long-name entry when the name
/// or link target does not fit).
fn header(name: &str, kind: u8, mode: u32, size: u64, mtime: u64, link: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if name.len() > 100 {
        let mut long = name.as_bytes().to_vec();
        long.push(0);
        out.extend(header("././@LongLink", b'L', 0, long.len() as u64, 0, ""));
        let pad = (BLOCK - long.len() % BLOCK) % BLOCK;
        out.extend(long);
        out.extend(std::iter::repeat_n(0, pad));
    }
    if link.len() > 100 {
        let mut long = link.as_bytes().to_vec();
        long.push(0);
        out.extend(header("././@LongLink", b'K', 0, long.len() as u64, 0, ""));
        let pad = (BLOCK - long.len() % BLOCK) % BLOCK;
        out.extend(long);
        out.extend(std::iter::repeat_n(0, pad));
    }
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link.as_bytes()[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore::parse("# comment\n/node_modules\n*.log\n!keep.log\nbuild/**/tmp\n");
        assert!(ig.excludes("node_modules"));
        assert!(ig.excludes("node_modules/x/y.js"));
        assert!(ig.excludes("a.log"));
        assert!(!ig.excludes("keep.log"));
        assert!(!ig.excludes("sub/a.log"), "* does not cross /");
        assert!(ig.excludes("build/tmp"));
        assert!(ig.excludes("build/a/b/tmp/x"));
        assert!(!ig.excludes("src/main.rs"));
        let all = Ignore::parse("**\n!app\n");
        assert!(all.excludes("x/y"));
        assert!(!all.excludes("app"));
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"a/c"));
        assert!(glob_match(b"**/*.o", b"x/y/z.o"));
        assert!(glob_match(b"**/*.o", b"z.o"));
        assert!(glob_match(b"\\*", b"*"));
        assert!(!glob_match(b"\\*", b"a"));
    }

    /// The matcher before it became a table: the definition of the rules.
    fn reference(pat: &[u8], name: &[u8]) -> bool {
        match pat.first() {
            None => name.is_empty(),
            Some(b'*') if pat.get(1) == Some(&b'*') => {
                let rest = &pat[2..];
                let rest_noslash = rest.strip_prefix(b"/").unwrap_or(rest);
                reference(rest_noslash, name)
                    || (0..name.len()).any(|i| {
                        reference(rest, &name[i + 1..]) || reference(rest_noslash, &name[i + 1..])
                    })
            }
            Some(b'*') => {
                let rest = &pat[1..];
                let mut i = 0;
                loop {
                    if reference(rest, &name[i..]) {
                        return true;
                    }
                    if i == name.len() || name[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(b'?') => {
                name.first().is_some_and(|&c| c != b'/') && reference(&pat[1..], &name[1..])
            }
            Some(b'\\') if pat.len() > 1 => {
                name.first() == Some(&pat[1]) && reference(&pat[2..], &name[1..])
            }
            Some(&c) => name.first() == Some(&c) && reference(&pat[1..], &name[1..]),
        }
    }

    /// Every pattern of up to 4 bytes over `*?/\a` against every name of
    /// up to 5 bytes over `a/*`: the same answers as the recursive rules.
    #[test]
    fn globs_agree_with_the_recursive_rules() {
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max {
                let mut next = Vec::new();
                for s in &last {
                    for &c in alphabet {
                        let mut t: Vec<u8> = s.clone();
                        t.push(c);
                        next.push(t);
                    }
                }
                out.extend(next.iter().cloned());
                last = next;
            }
            out
        }
        let names = all(b"a/*", 5);
        for pat in all(b"*?/\\a", 4) {
            for name in &names {
                assert_eq!(
                    glob_match(&pat, name),
                    reference(&pat, name),
                    "{:?} against {:?}",
                    String::from_utf8_lossy(&pat),
                    String::from_utf8_lossy(name)
                );
            }
        }
    }

    /// fuzz/ `tar_path` found this: a pattern of many stars against a long
    /// name took exponential time (the runner's only thread, for good).
    /// Now any pattern is linear in the name per pattern byte.
    #[test]
    fn fuzz_many_stars_match_in_linear_time() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The fuzzer's input, as it found it.
            let pat = format!("# co{}mmedd*mo", "*".repeat(86));
            let name = "# comment*nm";
            let stars = format!("a{}b", "*a".repeat(40));
            let long = "a".repeat(4000);
            let ignore = Ignore::parse(&format!("{stars}\n**/**/**/**/**/**/**/x\n"));
            let r = (
                glob_match(pat.as_bytes(), name.as_bytes()),
                glob_match(stars.as_bytes(), long.as_bytes()),
                ignore.excludes(&"a/".repeat(100)),
            );
            let _ = tx.send(r);
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("glob matching took over 5 s");
        assert_eq!(r, (false, false, false));
    }

    /// The stream is a valid tar: the system's tar lists what we expect,
    /// whatever size the pieces are handed out in.
    #[test]
    fn stream_is_a_tar_the_system_reads() {
        let dir = std::env::temp_dir().join(format!("tether-tar-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src/deep")).unwrap();
        fs::create_dir_all(dir.join("node_modules/pkg")).unwrap();
        fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(
            dir.join(".dockerignore"),
            "node_modules\n*.log\nDockerfile\n",
        )
        .unwrap();
        fs::write(dir.join("a.log"), "x").unwrap();
        fs::write(dir.join("node_modules/pkg/i.js"), "x").unwrap();
        let long = "n".repeat(150);
        fs::write(dir.join("src/deep").join(&long), vec![7u8; 1000]).unwrap();
        fs::write(dir.join("src/app.txt"), "hello\n").unwrap();
        std::os::unix::fs::symlink("app.txt", dir.join("src/link")).unwrap();
        for max in [1, 7, 512, 100_000] {
            let mut s = Context::scan(&dir, "Dockerfile").unwrap().into_stream();
            let mut tar = Vec::new();
            while s.fill(&mut tar, max).unwrap() {}
            assert_eq!(tar.len() % BLOCK, 0);
            let path = dir.with_extension(format!("{max}.tar"));
            fs::write(&path, &tar).unwrap();
            let out = std::process::Command::new("tar")
                .arg("-tvf")
                .arg(&path)
                .output()
                .unwrap();
            let list = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(list.contains("Dockerfile"), "{list}");
            assert!(list.contains(".dockerignore"), "{list}");
            assert!(list.contains("src/app.txt"), "{list}");
            assert!(list.contains(&format!("src/deep/{long}")), "{list}");
            assert!(list.contains("src/link -> app.txt"), "{list}");
            assert!(!list.contains("node_modules"), "{list}");
            assert!(!list.contains("a.log"), "{list}");
            let _ = fs::remove_file(path);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
