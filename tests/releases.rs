//! Releases shared by every replica (issue 18,
//! `server/src/db/postgres/releases.rs`): two `tether-server` replicas on
//! one real PostgreSQL, each with its own data dir. A release signed with
//! real minisign keys and uploaded through A is listed and downloaded
//! byte-identical through B; a real runner linked to B, with the update
//! policy set on B, is offered it and updates to it. Missing files are 404
//! on both; an upload cut mid-body leaves nothing (and no transaction
//! open); four concurrent downloads of a 32 MiB file through B do not
//! hold it in B's memory.

use crate::replicas::{pair_with, through};
use crate::update::{binary_with_version, installed_host, keypair, publish_to, V0};
use crate::util::pg::Postgres;
use crate::util::*;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// `len` bytes that differ from MiB to MiB.
fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// POST `size` bytes to `url` with curl at 256 KiB/s and give up after
/// 2 s: the body is cut mid-way, the connection closed.
fn cut_upload(server: &Server, path: &str, size: usize) {
    let dir = TempDir::new("cut");
    let file = dir.path().join("body");
    std::fs::write(&file, bytes_of(size, 9)).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--limit-rate",
            "256k",
            "--max-time",
            "2",
            "-X",
            "POST",
        ])
        .arg("--cacert")
        .arg(&server.ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", server.admin_token),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}{path}", server.url))
        .output()
        .unwrap();
    // 28: the time limit, mid-body.
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_release_uploaded_through_a_is_served_and_offered_by_b() {
    let pg = Postgres::start();
    let url = pg.database("rel");
    let keys = keypair("keys");
    let p = pair_with(&url, &["--release-keys", keys.public.to_str().unwrap()]);
    let on_a = p.a.tenant("rel");
    let on_b = through(&on_a, &p.b);
    let missing = |path: &str| {
        for s in [&p.a, &p.b] {
            let (st, _) = s.api().get_bytes(path);
            assert_eq!(st, 404, "{path} on {}", s.url);
        }
    };
    missing("/releases/0.1.1/manifest.json");
    missing("/releases/latest/manifest.json");
    // No release yet: a policy naming it is refused on B.
    let (st, v) = on_b.call(
        "PUT",
        "/api/v1/update-policy",
        Some(json!({ "version": "0.1.1" })),
    );
    assert_eq!(st, 400, "{v}");

    // Signed and uploaded through A; B lists it and serves every file
    // byte for byte (B's data dir holds no release).
    let files = publish_to(&p.a, &keys, "0.1.1", &binary_with_version("0.1.1"));
    assert!(
        files.len() >= 4,
        "binary, signature, manifest and its signature"
    );
    let (st, list) = on_b.call("GET", "/api/v1/releases", None);
    assert_eq!(st, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["version"], "0.1.1");
    assert_eq!(list[0]["signed_manifest"], true);
    let listed: Vec<(String, u64)> = list[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let uploaded: Vec<(String, u64)> = files
        .iter()
        .map(|(n, b)| (n.clone(), b.len() as u64))
        .collect();
    assert_eq!(listed, uploaded);
    for (name, bytes) in &files {
        let (st, got) = p.b.api().get_bytes(&format!("/releases/0.1.1/{name}"));
        assert_eq!(st, 200, "{name}");
        assert!(&got == bytes, "{name} through B differs");
    }
    let (st, got) = p.b.api().get_bytes("/releases/latest/manifest.json");
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&got).contains("0.1.1"));
    assert!(!p.b.data.join("releases").exists());
    missing("/releases/0.1.1/tether-sparc64");
    missing("/releases/0.9.9/manifest.json");

    // Uploads cut mid-body, through B: a new release and a replacement.
    // Neither is seen by anyone; the old file stays whole.
    let binary = format!("tether-{}", std::env::consts::ARCH);
    let old = &files.iter().find(|(n, _)| *n == binary).unwrap().1;
    cut_upload(&p.b, "/api/v1/releases/0.2.0/tether-x86_64", 4 << 20);
    cut_upload(&p.b, &format!("/api/v1/releases/0.1.1/{binary}"), 4 << 20);
    missing("/releases/0.2.0/tether-x86_64");
    let (_, list) = on_a.call("GET", "/api/v1/releases", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (st, got) = p.a.api().get_bytes(&format!("/releases/0.1.1/{binary}"));
    assert_eq!(st, 200);
    assert!(&got == old, "a cut replacement changed the file");
    // The cut uploads' transactions were rolled back, not left open.
    wait_for(Duration::from_secs(20), "no transaction left open", || {
        (pg.query(
            "rel",
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
        ) == "0")
            .then_some(())
    });
    assert_eq!(
        pg.query(
            "rel",
            "SELECT count(*) FROM release_files WHERE version = '0.2.0'"
        ),
        "0"
    );

    // A real runner linked to B; the policy set on B: offered, updated.
    let mut host = installed_host(&p.b, &on_b, &keys.public, TempDir::new("install"));
    host.start(&["--server", &p.b.url]);
    let runner = &host.runner;
    let id = runner.id.clone();
    wait_for(WAIT, &format!("runner at {V0}"), || {
        let r = on_b.runner(&id);
        (r["health"] == "active" && r["version"] == V0).then_some(())
    });
    let (st, v) = on_b.call(
        "PUT",
        "/api/v1/update-policy",
        Some(json!({ "version": "0.1.1" })),
    );
    assert_eq!(st, 200, "{v}");
    wait_for(WAIT, "runner at 0.1.1", || {
        let r = on_b.runner(&id);
        (r["health"] == "active" && r["version"] == "0.1.1").then_some(())
    });
    wait_for(WAIT, "report 0.1.1 installed", || {
        let (st, v) = on_b.call("GET", &format!("/api/v1/runners/{id}/updates"), None);
        assert_eq!(st, 200, "{v}");
        v["reports"]
            .as_array()?
            .iter()
            .any(|r| r["version"] == "0.1.1" && r["state"] == "installed")
            .then_some(())
    });
    let log = runner.log();
    assert!(log.contains("trial run of 0.1.1 connected"), "{log}");

    // Memory: a 32 MiB file through A, four concurrent downloads through B.
    // B's peak RSS (reset first) must not grow by the file's size: it
    // streams chunk by chunk, it never holds the file.
    let big = bytes_of(32 << 20, 5);
    let (st, v) =
        p.a.api()
            .upload("/api/v1/releases/0.9.0/big.bin", &p.a.admin_token, &big);
    assert_eq!(st, 201, "{v}");
    let pid = p.b.child.id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = status_kib(pid, "VmRSS");
    let started = std::time::Instant::now();
    let downloads: Vec<_> = (0..4)
        .map(|_| {
            let api = p.b.api();
            std::thread::spawn(move || api.get_bytes("/releases/0.9.0/big.bin"))
        })
        .collect();
    for d in downloads {
        let (st, got) = d.join().unwrap();
        assert_eq!(st, 200);
        assert!(got == big, "the 32 MiB download differs");
    }
    let took = started.elapsed();
    let peak = status_kib(pid, "VmHWM");
    eprintln!(
        "4 concurrent 32 MiB downloads through B in {took:?}: RSS {before} KiB before, \
         peak {peak} KiB (+{} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "B's peak RSS grew by {} KiB: a download held the file",
        peak - before
    );
}
