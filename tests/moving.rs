//! Moving a server's data, with a real runner: `tether-server backup` of a
//! running server restored into a fresh data dir, and `tether-server
//! migrate` of a stopped one into a real PostgreSQL. Either way the new
//! server has the same runners, jobs, output and users, the runner
//! reconnects by itself with its old credential, and a sealed secret still
//! opens (the sealing key travels as the file `secret.key`). `migrate`
//! carries the uploaded releases into the database too (checked by count
//! and SHA-256), and the server on PostgreSQL serves them from there.

use crate::util::*;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn run_job(tenant: &Tenant, body: Value) -> String {
    let (st, v) = tenant.call("POST", "/api/v1/jobs", Some(body));
    assert_eq!(st, 201, "run: {v}");
    v[0]["id"].as_str().unwrap().to_owned()
}

fn wait_complete(tenant: &Tenant, id: &str) -> Value {
    wait_for(Duration::from_secs(30), &format!("job {id}"), || {
        let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
        assert_eq!(st, 200, "{v}");
        (v["complete"] == true).then_some(v)
    })
}

fn output(tenant: &Tenant, id: &str) -> Vec<u8> {
    let mut r = tenant.api.stream(
        &format!("/api/v1/jobs/{id}/output?stream=all"),
        &tenant.token,
    );
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// `tether-server ARGS…`: (exit code, stdout, stderr).
fn admin(args: &[&str], paths: &[&Path]) -> (i32, String, String) {
    let out = Command::new(server_bin())
        .args(args)
        .args(paths)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A populated server: a tenant, a real runner, a finished job with
/// output, a sealed secret and a dashboard user.
struct Populated {
    server: Server,
    tenant: Tenant,
    runner: Runner,
    job: String,
    job_output: Vec<u8>,
}

const SECRET: &str = "moving-s3cret-41d2";

fn populate() -> Populated {
    let server = Server::start();
    let tenant = server.tenant("moving");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--docker-socket", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let job = run_job(
        &tenant,
        json!({ "runners": [runner.id], "command": "seq 1 2000; echo done >&2" }),
    );
    let v = wait_complete(&tenant, &job);
    assert_eq!(v["status"], "succeeded", "{v}");
    let job_output = output(&tenant, &job);
    assert!(job_output.len() > 8000, "{}", job_output.len());
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/secrets/MOVED",
        Some(json!({ "value": SECRET })),
    );
    assert_eq!(st, 204, "{v}");
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/users",
        Some(json!({ "name": "ada", "password": "correct horse battery", "role": "admin" })),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = tenant.call(
        "PATCH",
        &format!("/api/v1/runners/{}/labels", runner.id),
        Some(json!({ "set": { "role": "db" } })),
    );
    assert_eq!(st, 200, "{v}");
    // Alerts (alerts.db), a schedule and the fleet policy (fleet.db): the
    // newer tables move too.
    let (st, ch) = tenant.call(
        "POST",
        "/api/v1/alerts/channels",
        Some(json!({ "name": "ops", "config": { "kind": "webhook", "url": "https://hooks.example.com/tether", "secret": "moving-secret" } })),
    );
    assert_eq!(st, 201, "{ch}");
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/alerts/rules",
        Some(json!({ "name": "down", "kind": "unreachable", "for_s": 60, "channels": [ch["id"]] })),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/alerts/silences",
        Some(json!({ "runner": runner.id, "starts_ms": 0, "ends_ms": 4_102_444_800_000i64, "comment": "moving" })),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/schedules/nightly",
        Some(json!({ "cron": "0 3 * * *", "selector": "role=db", "job": { "command": "true" } })),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/fleet-policy",
        Some(json!({ "job_deadline_s": 600 })),
    );
    assert_eq!(st, 200, "{v}");
    Populated {
        server,
        tenant,
        runner,
        job,
        job_output,
    }
}

/// After the move: the same runner reconnects on its own with its old
/// credential, the old job and its output are there, and a job using the
/// sealed secret gets its value (it opens with the carried key).
fn check_moved(p: &Populated) {
    p.tenant
        .wait_health(&p.runner.id, "active", Duration::from_secs(30));
    let (st, list) = p.tenant.call("GET", "/api/v1/runners", None);
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(output(&p.tenant, &p.job), p.job_output);
    let (st, v) = p.tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/labels", p.runner.id),
        None,
    );
    assert_eq!((st, &v["labels"]), (200, &json!({ "role": "db" })), "{v}");
    let (st, users) = p.tenant.call("GET", "/api/v1/users", None);
    assert_eq!(st, 200);
    assert!(users.to_string().contains("\"ada\""), "{users}");
    let id = run_job(
        &p.tenant,
        json!({
            "runners": [p.runner.id],
            "command": "printf '%s\\n' \"$MOVED\" | rev",
            "secrets": ["MOVED"],
        }),
    );
    let v = wait_complete(&p.tenant, &id);
    assert_eq!(v["status"], "succeeded", "{v}");
    // Reversed, so the mask (the whole value) does not hide it.
    let want: String = SECRET.chars().rev().collect();
    let got = String::from_utf8(output(&p.tenant, &id)).unwrap();
    assert!(got.contains(&want), "{got} vs {want}");
}

#[test]
fn backup_of_a_running_server_restores_into_a_fresh_dir_with_its_runners_and_jobs() {
    let mut p = populate();
    let tmp = TempDir::new("backup");
    let to = tmp.path().join("bk");
    // Online: the server and the runner keep going (heartbeats, metrics).
    let (code, out, err) = admin(&["backup", "--data-dir"], &[&p.server.data]);
    assert_eq!(code, 2, "--to is required: {out}{err}");
    let (code, out, err) = admin(
        &[
            "backup",
            "--data-dir",
            p.server.data.to_str().unwrap(),
            "--to",
        ],
        &[&to],
    );
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("{out}{err}");
    for f in [
        "tether.db",
        "jobs.db",
        "metrics.db",
        "audit.db",
        "fleet.db",
        "secret.key",
        "admin.token",
        "tls/ca.pem",
    ] {
        assert!(out.contains(f), "{f} not listed: {out}");
        assert!(to.join(f).is_file(), "{f} not copied");
    }
    assert!(
        !to.join("tether.db-wal").exists(),
        "a copy is one plain file"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&to).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the backup is private: {mode:o}");

    // Again into the same place: refused (3), nothing changed.
    let before = std::fs::read(to.join("tether.db")).unwrap();
    let (code, out, err) = admin(
        &[
            "backup",
            "--data-dir",
            p.server.data.to_str().unwrap(),
            "--to",
        ],
        &[&to],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(to.join("tether.db")).unwrap(), before);
    // Not a data dir: 1, and no target made.
    let (code, _, err) = admin(
        &["backup", "--data-dir", tmp.path().to_str().unwrap(), "--to"],
        &[&tmp.path().join("none")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a data directory"), "{err}");
    assert!(!tmp.path().join("none").exists());

    // Restore (README): the backup's files into a fresh data dir, served on
    // the old address (where the runner dials), the old server stopped.
    let restored = tmp.path().join("restored");
    copy_dir(&to, &restored);
    p.server.data = restored.clone();
    p.server.ca = restored.join("tls/ca.pem");
    p.server.restart();
    check_moved(&p);
}

/// `len` bytes of a "release" that differ from MiB to MiB.
fn release_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

/// The SHA-256 (hex) of `bytes`, by coreutils' `sha256sum`.
fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Every table line of `migrate`'s output: (table, sqlite, postgres).
fn migrate_counts(out: &str) -> Vec<(String, u64, String)> {
    out.lines()
        .skip_while(|l| !l.starts_with("file"))
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 4 && w[0].ends_with(".db"))
                .then(|| (w[1].to_owned(), w[2].parse().unwrap(), w[3].to_owned()))
        })
        .collect()
}

#[test]
fn migrate_moves_a_sqlite_server_to_postgres_and_its_runner_reconnects_with_its_old_credential() {
    let mut p = populate();
    let pg = crate::util::pg::Postgres::start();
    let url = pg.database("moved");
    let data = p.server.data.to_str().unwrap().to_owned();

    // The source server answers: refused, the target not even touched.
    let (code, out, err) = admin(&["migrate", "--from", &data, "--to", &url], &[]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("a server is running"), "{err}");
    assert_eq!(
        pg.query(
            "moved",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'tenants'"
        ),
        "0"
    );
    let (code, _, err) = admin(
        &["migrate", "--from", &data, "--to", "mysql://x@127.0.0.1/y"],
        &[],
    );
    assert_eq!(code, 1, "{err}");

    // A release (files in the data dir with SQLite): 2.5 MiB, three
    // chunks in PostgreSQL, and its signature.
    let bin = release_bytes(2 * 1024 * 1024 + 512 * 1024 + 3);
    let admin_token = p.server.admin_token.clone();
    for (file, bytes) in [
        ("tether-x86_64", bin.as_slice()),
        ("tether-x86_64.minisig", b"signature".as_slice()),
    ] {
        let (st, v) = p.server.api().upload(
            &format!("/api/v1/releases/0.7.0/{file}"),
            &admin_token,
            bytes,
        );
        assert_eq!(st, 201, "upload {file}: {v}");
    }

    p.server.stop();
    let (code, out, err) = admin(&["migrate", "--from", &data, "--to", &url], &[]);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("{out}{err}");
    assert!(out.contains("every count equal"), "{out}");
    let releases_line = format!(
        "releases: 1 versions, 2 files, {} bytes copied; 2 read back with the same sha256",
        bin.len() + 9
    );
    assert!(out.contains(&releases_line), "{out}");
    assert_eq!(pg.query("moved", "SELECT count(*) FROM release_files"), "2");
    assert_eq!(
        pg.query(
            "moved",
            "SELECT sha256 FROM release_files WHERE version = '0.7.0' AND name = 'tether-x86_64'"
        ),
        sha256sum(&bin)
    );
    assert_eq!(
        pg.query(
            "moved",
            "SELECT sum(length(data)) FROM release_chunks c JOIN release_files f USING (blob) \
             WHERE f.name = 'tether-x86_64'"
        ),
        bin.len().to_string()
    );
    let counts = migrate_counts(&out);
    let copied: Vec<_> = counts.iter().collect();
    assert!(copied.len() >= 45, "every table of every file: {out}");
    for (table, sqlite, pg_n) in &copied {
        assert_eq!(pg_n, &sqlite.to_string(), "{table}: {out}");
    }
    let count = |t: &str| counts.iter().find(|c| c.0 == t).map(|c| c.1).unwrap();
    assert_eq!(count("runners"), 1);
    assert_eq!(count("secrets"), 1);
    assert_eq!(count("users"), 1);
    assert_eq!(count("jobs"), 1);
    assert!(
        count("job_output") >= 1 && count("health_events") >= 1,
        "{out}"
    );
    assert_eq!(count("labels"), 1, "{out}");
    for t in [
        "alert_channels",
        "alert_rules",
        "alert_silences",
        "schedules",
        "fleet_policy",
    ] {
        assert_eq!(count(t), 1, "{t}: {out}");
        assert_eq!(
            pg.query("moved", &format!("SELECT count(*) FROM {t}")),
            "1",
            "{t}"
        );
    }
    let trail = count("audit_entries");
    assert!(trail >= 5, "{out}");
    // Independently of the tool's own count: PostgreSQL holds the rows.
    assert_eq!(pg.query("moved", "SELECT count(*) FROM runners"), "1");
    assert_eq!(
        pg.query("moved", "SELECT count(*) FROM job_output"),
        count("job_output").to_string()
    );
    assert_eq!(
        pg.query("moved", "SELECT count(*) FROM audit_entries"),
        trail.to_string()
    );
    // Into a database that holds rows: refused without --force (3); with
    // it, emptied and copied again, the same counts.
    let (code, _, err) = admin(&["migrate", "--from", &data, "--to", &url], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("already holds rows"), "{err}");
    let (code, again, err) = admin(&["migrate", "--from", &data, "--to", &url, "--force"], &[]);
    assert_eq!(code, 0, "{again}{err}");
    assert_eq!(migrate_counts(&again), counts);
    assert!(again.contains(&releases_line), "{again}");
    assert_eq!(pg.query("moved", "SELECT count(*) FROM release_files"), "2");
    // The server on PostgreSQL reads releases from there, not the data dir.
    std::fs::remove_dir_all(p.server.data.join("releases")).unwrap();

    // The server on PostgreSQL, same data dir (its secret.key, tls/,
    // admin.token) and address: the runner comes back by itself.
    p.server
        .extra
        .extend(["--database".to_owned(), url.clone()]);
    p.server.restart();
    check_moved(&p);
    let (st, got) = p.server.api().get_bytes("/releases/0.7.0/tether-x86_64");
    assert_eq!(st, 200);
    assert!(got == bin, "the release comes back byte for byte");
    let (st, v) = p.tenant.call("GET", "/api/v1/releases", None);
    assert_eq!(st, 200);
    assert_eq!(v[0]["version"], "0.7.0", "{v}");
    assert_eq!(v[0]["files"][0]["size"], bin.len(), "{v}");
    assert!(!p.server.data.join("releases").exists());
    // The new job went to PostgreSQL, not to the old file.
    assert_eq!(pg.query("moved", "SELECT count(*) FROM jobs"), "2");
    // The label came along (fleet.db), and the audit trail copied from
    // audit.db verifies there, with the new server's entries chained on.
    let (st, v) = p.tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/labels", p.runner.id),
        None,
    );
    assert_eq!((st, &v["labels"]), (200, &json!({ "role": "db" })), "{v}");
    let (st, v) = p.server.api().call(
        "GET",
        "/api/v1/audit/verify",
        Some(&p.server.admin_token),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["entries"].as_u64().unwrap() > trail, "{v}");
}
