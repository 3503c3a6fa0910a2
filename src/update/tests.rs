//! Unit tests of the staging and verdict logic; the whole flow with real
//! processes is in tests/update.rs.

use super::*;

fn cfg(dir: &Path, keys: &str) -> UpdateConfig {
    UpdateConfig {
        binary: dir.join("tether"),
        state_dir: dir.join("state"),
        keys: release::parse_keys(keys).unwrap(),
        keys_source: "test".into(),
        allow_downgrade: false,
        health_timeout: Duration::from_secs(1),
        run_args: vec![],
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-upd-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("state")).unwrap();
    d
}

#[test]
fn verdicts() {
    let dir = tempdir("verdict");
    let c = cfg(&dir, include_str!("testdata/k.pub"));
    let mut rec = Record::default();
    let me = crate::version::version();
    assert_eq!(c.verdict(me, &rec), Verdict::Current);
    assert_eq!(
        c.verdict("999.0.0", &rec),
        Verdict::Install { upgrade: true }
    );
    assert!(matches!(c.verdict("0.0.1", &rec), Verdict::Refuse(r) if r.contains("downgrade")));
    assert!(matches!(c.verdict("nope", &rec), Verdict::Refuse(_)));
    rec.add_failed("999.0.0", "exited", 1);
    assert!(
        matches!(c.verdict("999.0.0", &rec), Verdict::Refuse(r) if r.contains("failed on this host"))
    );
    rec.add_rejected("998.0.0", "HTTP 404", now_ms());
    assert!(matches!(c.verdict("998.0.0", &rec), Verdict::Later(_)));
    let mut down = c.clone();
    down.allow_downgrade = true;
    assert_eq!(
        down.verdict("0.0.1", &rec),
        Verdict::Install { upgrade: false }
    );
    let none = cfg(&dir, "");
    assert!(
        matches!(none.verdict("999.0.0", &rec), Verdict::Refuse(r) if r.contains("no trusted"))
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_is_an_error() {
    // /dev/full answers every write with ENOSPC, like a full disk.
    let mut f = OpenOptions::new().write(true).open("/dev/full").unwrap();
    let e = write_synced(&mut f, &[0u8; 64 * 1024]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e:?}");
}

#[test]
fn staging_into_a_missing_or_read_only_dir_fails_and_leaves_nothing() {
    let dir = tempdir("ro");
    let c = cfg(&dir, include_str!("testdata/k.pub"));
    let staged = dir.join("no-such-dir").join(".tether.new");
    assert!(c.stage(&staged, b"binary").is_err());
    assert!(!staged.exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interrupted_staging_is_cleaned_up_at_start() {
    let dir = tempdir("start");
    let c = cfg(&dir, include_str!("testdata/k.pub"));
    let (staged, _) = paths(&c.binary);
    fs::write(&staged, b"half").unwrap();
    let rec = Record {
        pending: Some(Pending {
            version: "999.0.0".into(),
            from_version: "0.1.0".into(),
            phase: Phase::Trial,
            boots: 0,
            offered_ms: 1,
        }),
        ..Record::default()
    };
    rec.store(&c.state_dir).unwrap();
    assert_eq!(
        c.on_start(),
        Start::Run {
            health_deadline: None
        }
    );
    assert!(!staged.exists());
    let rec = Record::load(&c.state_dir);
    assert!(rec.pending.is_none());
    assert_eq!(rec.reports[0].state, update_state::INTERRUPTED);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_new_version_that_keeps_dying_is_rolled_back() {
    let dir = tempdir("boots");
    let c = cfg(&dir, include_str!("testdata/k.pub"));
    let mut rec = Record {
        pending: Some(Pending {
            version: crate::version::version().into(),
            from_version: "0.0.9".into(),
            phase: Phase::Swapped,
            boots: 0,
            offered_ms: 1,
        }),
        ..Record::default()
    };
    rec.store(&c.state_dir).unwrap();
    for _ in 0..MAX_BOOTS {
        assert_eq!(
            c.on_start(),
            Start::Run {
                health_deadline: Some(c.health_timeout)
            }
        );
    }
    assert!(matches!(c.on_start(), Start::RollBack(_)));
    // Roll back the files: .tether.prev comes back at the binary's path.
    let (_, prev) = paths(&c.binary);
    fs::write(&c.binary, b"new").unwrap();
    fs::write(&prev, b"old").unwrap();
    assert!(c.roll_back_files("test"));
    assert_eq!(fs::read(&c.binary).unwrap(), b"old");
    assert!(!prev.exists());
    rec = Record::load(&c.state_dir);
    assert!(rec.pending.is_none());
    assert!(rec.has_failed(crate::version::version()).is_some());
    assert_eq!(rec.reports.last().unwrap().state, update_state::FAILED);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn offered_download_paths_cannot_leave_the_request_line() {
    assert!(valid_download_path("/releases/0.2.0/tether-x86_64"));
    assert!(valid_download_path("/releases/0.2.0/tether-x86_64.minisig"));
    for bad in [
        "releases/0.2.0/tether-x86_64",
        "/releases/../admin",
        "/releases/0.2.0/x HTTP/1.1\r\nX-Evil: 1",
        "/releases/0.2.0/x\nHost: elsewhere",
        "/releases/0.2.0/a b",
        "/releases/0.2.0/\u{e9}",
        "",
    ] {
        assert!(!valid_download_path(bad), "{bad:?}");
    }
}
