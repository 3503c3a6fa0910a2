//! What a stranger can make the real `tether-server` spend and see: a
//! login flood with megabyte tenant names, a tenant token posting large
//! "releases", the modes of the data directory, HSTS, and the URL that
//! `install.sh` is given. Requests go through curl (which sends
//! `Expect: 100-continue` for large bodies, as real clients do).

use crate::util::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Peak resident memory of a process so far (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `curl` against the server: the status code and the headers + body.
fn curl(server: &Server, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20", "--cacert"])
        .arg(&server.ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), rest.to_owned())
}

/// The probe: 40 concurrent logins naming a 1.9 MB tenant. Each is
/// refused by its size before the body is read (413), so the server's peak
/// memory hardly moves and its log gains a line or two per request, not
/// the tenant name (before: +278 MiB, 74 MB of log).
#[test]
fn a_login_flood_with_huge_tenant_names_costs_no_memory_and_no_log() {
    // No per-address rate: this probes the size limit, not the rate.
    let server = Server::start_with(&["--login-rate", "0"]);
    let dir = TempDir::new("flood");
    let body = dir.path().join("login.json");
    let tenant = "t".repeat(1_900_000);
    fs::write(
        &body,
        format!(r#"{{"tenant":"{tenant}","name":"ada","password":"pw-of-8-chars"}}"#),
    )
    .unwrap();
    let pid = server.child.id();
    let before = peak_kib(pid);
    let log_before = server.log().len();
    let url = format!("{}/api/v1/session", server.url);
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(|| {
                    let data = format!("@{}", body.display());
                    curl(&server, &["-X", "POST", "--data-binary", &data, &url]).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|c| *c == 413), "{codes:?}");
    let grown_mib = (peak_kib(pid).saturating_sub(before)) as f64 / 1024.0;
    assert!(grown_mib <= 16.0, "peak RSS grew {grown_mib:.1} MiB");
    let log = server.log();
    let log_grown = log.len() - log_before;
    assert!(log_grown < 64 * 1024, "log grew {log_grown} bytes");
    assert!(
        !log.contains(&"t".repeat(100)),
        "the tenant name is in the log"
    );
}

/// The probe: a tenant API token posting six 60 MB "releases" at once is
/// answered 403 before any of the body is read: the server's peak memory
/// stays put (before: +246 MiB), and the answers come at once.
#[test]
fn tenant_token_release_uploads_are_refused_without_reading_them() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let dir = TempDir::new("upload");
    let file = dir.path().join("tether-x86_64");
    fs::write(&file, vec![0x7fu8; 60_000_000]).unwrap();
    let pid = server.child.id();
    let before = peak_kib(pid);
    let url = format!("{}/api/v1/releases/9.9.9/tether-x86_64", server.url);
    let auth = format!("Authorization: Bearer {}", tenant.token);
    let started = std::time::Instant::now();
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let data = format!("@{}", file.display());
                    curl(
                        &server,
                        &["-X", "POST", "-H", &auth, "--data-binary", &data, &url],
                    )
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes, vec![403; 6]);
    // curl alone needs a moment to read 60 MB six times; the server's
    // answer does not wait for curl's 1 s Expect timeout.
    assert!(
        started.elapsed().as_secs_f64() < 5.0,
        "{:?}",
        started.elapsed()
    );
    let grown_mib = (peak_kib(pid).saturating_sub(before)) as f64 / 1024.0;
    assert!(grown_mib <= 16.0, "peak RSS grew {grown_mib:.1} MiB");
    assert!(!server.data.join("releases/9.9.9").exists());
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory the server makes in its data dir is its
/// user's alone from creation: the dir 0700, databases (and their WAL
/// files), keys, the admin token and TLS files 0600. (Before: 0755 and
/// 0644 databases with job output and scripts.)
#[test]
fn the_data_dir_and_its_files_are_private_from_creation() {
    let root = TempDir::new("private");
    let data = root.path().join("data");
    let server = Server::start_on(&data, &[]);
    // Touch the stores so each has been written.
    let tenant = server.tenant("acme");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/scripts/hello",
        Some(serde_json::json!({"body": "echo hi"})),
    );
    assert!(st == 200 || st == 201, "{v}");
    assert_eq!(mode(&data), 0o700);
    let mut seen = Vec::new();
    let mut dirs = vec![data.clone()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = mode(&p);
            assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
            if p.is_dir() {
                dirs.push(p.clone());
            }
            seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    for want in [
        "tether.db",
        "jobs.db",
        "logs.db",
        "metrics.db",
        "secret.key",
        "admin.token",
        "tls",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} missing: {seen:?}");
    }
    assert!(!server.log().contains("group or others can read"));
}

/// A data dir left readable (an older version made it 0755 and its
/// databases 0644) is named in a warning at start, with the fix.
#[test]
fn a_data_dir_readable_by_others_is_warned_about_at_start() {
    let root = TempDir::new("open");
    let data = root.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(data.join("tether.db"), b"").unwrap();
    fs::set_permissions(data.join("tether.db"), fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start_on(&data, &[]);
    let log = server.log();
    for want in [
        format!("{} is mode 755", data.display()),
        format!("{} is mode 644", data.join("tether.db").display()),
        "chmod go-rwx".to_owned(),
    ] {
        assert!(log.contains(&want), "{want:?} not in:\n{log}");
    }
}

/// Over TLS every answer carries HSTS; a plain-HTTP listener (behind a
/// proxy that terminates TLS) sends none.
#[test]
fn hsts_is_sent_when_serving_tls() {
    let server = Server::start();
    let (st, text) = curl(&server, &[&format!("{}/healthz", server.url)]);
    assert_eq!(st, 200);
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    let plain = Server::start_with(&["--plain-http"]);
    let (st, text) = curl(&plain, &[&format!("{}/healthz", plain.url)]);
    assert_eq!(st, 200);
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{text}"
    );
}

/// `install.sh` never takes the server URL from a Host header nobody
/// allowed (a cached or proxied copy would enroll hosts with another
/// server): without --public-url it names the listening address, with
/// --allowed-hosts only the hosts listed.
#[test]
fn install_sh_takes_the_host_header_only_from_the_allowed_list() {
    let server = Server::start();
    let url = format!("{}/install.sh", server.url);
    let (st, text) = curl(&server, &["-H", "Host: evil.example", &url]);
    assert_eq!(st, 200);
    assert!(
        text.contains(&format!("SERVER=\"{}\"", server.url)),
        "{text}"
    );
    assert!(!text.contains("evil.example"));

    let listed = Server::start_with(&["--allowed-hosts", "tether.example,fleet.example:8443"]);
    let url = format!("{}/install.sh", listed.url);
    let (_, text) = curl(&listed, &["-H", "Host: tether.example", &url]);
    assert!(text.contains("SERVER=\"https://tether.example\""), "{text}");
    let (_, text) = curl(&listed, &["-H", "Host: evil.example", &url]);
    assert!(
        text.contains(&format!("SERVER=\"{}\"", listed.url)),
        "{text}"
    );
    assert!(!text.contains("evil.example"));

    let public = Server::start_with(&["--public-url", "https://tether.example:9443"]);
    let url = format!("{}/install.sh", public.url);
    let (_, text) = curl(&public, &["-H", "Host: evil.example", &url]);
    assert!(
        text.contains("SERVER=\"https://tether.example:9443\""),
        "{text}"
    );
}
