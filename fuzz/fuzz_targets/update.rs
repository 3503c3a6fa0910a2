//! Self-update checks (`src/update/`): what decides whether bytes from the
//! server become the running binary. The minisign signature and its
//! trusted comment (version, architecture), the trusted key file, version
//! ordering, the update record on disk, and the verdict on an offer.
//!
//! Input: `[which] [bytes …]`:
//! 0 `signature \0 binary` verified with the test key (must never verify:
//!   the fuzzer has no secret key; only the seed's own pair may);
//! 1 a key file; 2 a trusted comment; 3 three versions (`\n`): `Ord` must
//! be a total order (antisymmetric, transitive, consistent with `==`);
//! 4 `record JSON \0 offered version`: the verdict, as `on_offer` asks it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cmp::Ordering;
use std::time::Duration;
use tether::update::record::Record;
use tether::update::release::{parse_comment, parse_keys, verify, Version};
use tether::update::UpdateConfig;
use tether_fuzz::{opts, quiet};

const PUB: &str = include_str!("../../src/update/testdata/k.pub");
const SIG: &str = include_str!("../../src/update/testdata/hello.minisig");

fn versions(text: &str) {
    let v: Vec<Version> = text
        .split('\n')
        .take(3)
        .filter_map(Version::parse)
        .collect();
    for a in &v {
        assert_eq!(a.cmp(a), Ordering::Equal);
        let _ = a.to_string();
        for b in &v {
            assert_eq!(a.cmp(b), b.cmp(a).reverse(), "{a:?} {b:?}");
            assert_eq!(a == b, a.cmp(b) == Ordering::Equal);
            for c in &v {
                if a <= b && b <= c {
                    assert!(a <= c, "not transitive: {a:?} {b:?} {c:?}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    quiet();
    let Some((o, bytes)) = opts(data) else { return };
    let text = String::from_utf8_lossy(bytes);
    match o % 5 {
        0 => {
            let keys = parse_keys(PUB).unwrap();
            let (sig, bin) = text.split_once('\0').unwrap_or((&text, ""));
            if let Ok(r) = verify(bin.as_bytes(), sig, &keys) {
                // Only the committed test signature over "hello" can verify.
                assert_eq!(bin, "hello", "a forged signature verified");
                assert_eq!(r.key_index, 0);
            }
            let _ = verify(bin.as_bytes(), SIG, &keys);
        }
        1 => {
            if let Ok(keys) = parse_keys(&text) {
                assert!(keys.len() <= 16);
            }
        }
        2 => {
            if let Ok((v, arch)) = parse_comment(&text) {
                assert!(!arch.is_empty());
                assert!(!v.parts.is_empty() && v.parts.len() <= 4);
            }
        }
        3 => versions(&text),
        _ => {
            let (record, offered) = text.split_once('\0').unwrap_or((&text, "0.2.0"));
            let record: Record = serde_json::from_str(record).unwrap_or_default();
            let cfg = UpdateConfig {
                binary: "/nonexistent/tether".into(),
                state_dir: "/nonexistent".into(),
                keys: parse_keys(PUB).unwrap(),
                keys_source: "fuzz".into(),
                allow_downgrade: o & 8 != 0,
                health_timeout: Duration::from_secs(1),
                run_args: Vec::new(),
            };
            let _ = cfg.verdict(offered, &record);
            let mut r = record;
            r.add_failed(offered, "fuzz", 1);
            r.add_rejected(offered, "fuzz", 1);
            let _ = serde_json::to_string(&r).unwrap();
        }
    }
});
