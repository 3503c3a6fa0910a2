//! The build context's path handling (`src/jobs/tar.rs`): `.dockerignore`
//! patterns matched against context paths (both from the repository being
//! deployed), and tar headers for any name (long names as GNU long-name
//! entries), e.g. the `env_file` path of a deploy spec.
//!
//! Input: `[which] [bytes …]`. `which` even: `patterns \0 path \n path …`,
//! each path matched (a pattern must not take the runner's single thread
//! for long: libFuzzer's -timeout catches that). `which` odd: a file name
//! and contents for `single_file`; the archive must be whole 512-byte
//! blocks with valid checksums and give the name back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::jobs::tar::{glob_match, single_file, Ignore};
use tether_fuzz::opts;

const BLOCK: usize = 512;

fn octal(field: &[u8]) -> u64 {
    let s = std::str::from_utf8(field).unwrap();
    let s = s.trim_end_matches('\0').trim();
    u64::from_str_radix(s, 8).unwrap_or_else(|_| panic!("bad octal field {field:?}"))
}

fn check_header(h: &[u8]) {
    let stored = octal(&h[148..154]);
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    assert_eq!(stored, sum, "header checksum");
    assert_eq!(&h[257..263], b"ustar\0");
}

/// The name a tar reader sees for the first entry, and that entry's data.
fn read_back(tar: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(tar.len() % BLOCK, 0, "not whole blocks");
    let mut at = 0;
    let mut long: Option<Vec<u8>> = None;
    loop {
        let h = &tar[at..at + BLOCK];
        check_header(h);
        let size = octal(&h[124..136]) as usize;
        let data = &tar[at + BLOCK..at + BLOCK + size];
        let next = at + BLOCK + size.div_ceil(BLOCK) * BLOCK;
        match h[156] {
            b'L' => {
                let name = data.strip_suffix(b"\0").expect("long name ends in NUL");
                long = Some(name.to_vec());
                at = next;
            }
            b'0' => {
                let short = h[..100].split(|&b| b == 0).next().unwrap().to_vec();
                let name = long.unwrap_or(short);
                // Then two zero blocks.
                assert!(tar[next..].iter().all(|&b| b == 0));
                assert_eq!(tar.len() - next, 2 * BLOCK);
                return (name, data.to_vec());
            }
            k => panic!("unexpected entry type {k}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((o, bytes)) = opts(data) else { return };
    let text = String::from_utf8_lossy(bytes);
    if o % 2 == 0 {
        let (patterns, paths) = text.split_once('\0').unwrap_or((&text, ""));
        let ignore = Ignore::parse(patterns);
        let _ = ignore.has_exceptions();
        for p in paths.split('\n') {
            let _ = ignore.excludes(p);
        }
        let (a, b) = patterns.split_once('\n').unwrap_or((patterns, paths));
        let _ = glob_match(a.as_bytes(), b.as_bytes());
        return;
    }
    let (name, contents) = text.split_once('\0').unwrap_or((&text, ""));
    let tar = single_file(name, u32::from(o) << 1, contents.as_bytes());
    let (got, body) = read_back(&tar);
    assert_eq!(body, contents.as_bytes());
    // A name is written whole (a NUL inside would end it for a reader,
    // but a name from a path or a spec has none: split off above).
    assert_eq!(got, name.as_bytes(), "the name does not come back");
});
