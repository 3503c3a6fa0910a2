//! The server on PostgreSQL: `/healthz` through a database outage (the test
//! process's own cluster stopped and started), and the real binary with
//! `serve --database postgres://…`: its state in the database, and a bad or
//! unreachable URL refused at start-up without showing the password.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether_server::db::postgres::Postgres;

use crate::pg;
use crate::util::*;

fn options() -> tether_server::db::sqlite::Options {
    tether_server::db::sqlite::Options {
        metrics_retention: Default::default(),
        log_retention: Default::default(),
        log_collect: tether_server::db::logs::CollectPolicy::All,
    }
}

/// Poll `/healthz` until it answers `want` (the check is cached for a
/// second, and a restarted cluster takes a moment).
async fn healthz_until(router: &Router, want: StatusCode) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = call(router, "GET", "/healthz", None, None).await;
        if status == want {
            return v;
        }
        assert!(Instant::now() < until, "/healthz stayed {status}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn healthz_is_503_with_a_reason_while_postgres_is_down() {
    let url = pg::fresh_database().await;
    let db = Postgres::open(&url, &options()).await.unwrap();
    let router = app(AppState::new(
        db,
        std::sync::Arc::new(tether_server::common::secrets::SecretBox::from_key([9; 32])),
        ADMIN,
        tuning(),
    ));
    let (status, v) = call(&router, "GET", "/healthz", None, None).await;
    assert_eq!(
        (status, v),
        (
            StatusCode::OK,
            json!({
                "ok": true, "ready": true, "version": env!("CARGO_PKG_VERSION"),
                "database": "reachable", "replica": null, "links": 0,
            })
        )
    );

    pg::stop();
    let down = healthz_until(&router, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(down["ok"], false);
    assert_eq!(down["ready"], false);
    assert_eq!(down["database"], "unreachable");
    assert_eq!(down["version"], env!("CARGO_PKG_VERSION"));
    let reason = down["reason"].as_str().unwrap();
    assert!(reason.starts_with("database unreachable"), "{reason}");
    // Many requests while down: answered from the cache, quickly.
    let t = Instant::now();
    for _ in 0..50 {
        let (status, _) = call(&router, "GET", "/healthz", None, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    pg::restart();
    let up = healthz_until(&router, StatusCode::OK).await;
    assert_eq!(
        up,
        json!({
            "ok": true, "ready": true, "version": env!("CARGO_PKG_VERSION"),
            "database": "reachable", "replica": null, "links": 0,
        })
    );
}

/// `serve` as a child process; `Err` (its stderr) when it exited before listening
fn serve(data: &Path, database: &str) -> Result<(Child, String), String> {
    let _ = std::fs::remove_file(data.join("server.url"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(u) = std::fs::read_to_string(data.join("server.url")) {
            if !u.trim().is_empty() {
                return Ok((child, u.trim().to_owned()));
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "serve exited 0 without listening");
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err(err);
        }
        assert!(Instant::now() < until, "serve neither listened nor exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh directory under the temp dir (removed at the end of the test).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "tether-pgserve-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(data: &Path, url: &str, args: &[&str]) -> String {
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .args(["--api", url, "--token", admin.trim(), "--ca-file"])
        .arg(data.join("tls/ca.pem"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

#[tokio::test]
async fn serve_keeps_its_state_in_postgres_across_restarts() {
    let url = pg::fresh_database().await;
    let tmp = TempDir::new("restart");
    let (first, second) = (tmp.path().join("a"), tmp.path().join("b"));
    let (mut child, api) = serve(&first, &url).unwrap();
    cli(&first, &api, &["tenant", "create", "acme-pg"]);
    child.kill().unwrap();
    child.wait().unwrap();
    // Another data dir (new admin token, new certificate): the tenant is
    // still there, so it lives in the database, not in the files.
    let (mut child, api) = serve(&second, &url).unwrap();
    let listed = cli(&second, &api, &["tenant", "list"]);
    assert!(listed.contains("acme-pg"), "{listed}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!second.join("tether.db").exists(), "no SQLite control db");
}

#[tokio::test]
async fn serve_refuses_a_bad_or_unreachable_database_without_the_password() {
    let tmp = TempDir::new("refuse");
    let data = tmp.path().join("d");
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("postgres://tether:Sekrit-pw-42@127.0.0.1:{port}/x");
    let err = serve(&data, &unreachable).unwrap_err();
    assert!(err.contains("storage: postgres:"), "{err}");
    assert!(!err.contains("Sekrit-pw-42"), "{err}");

    let err = serve(&data, "mysql://u:Sekrit-pw-42@127.0.0.1/x").unwrap_err();
    assert!(err.contains("only postgres://"), "{err}");
    assert!(!err.contains("Sekrit-pw-42"), "{err}");

    let err = serve(&data, "postgres://u:Sekrit-pw-42@127.0.0.1:notaport/x").unwrap_err();
    assert!(err.contains("database URL"), "{err}");
    assert!(!err.contains("Sekrit-pw-42"), "{err}");
}
