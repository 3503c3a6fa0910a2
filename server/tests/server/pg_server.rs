//! The server on PostgreSQL: `/healthz` through a database outage (the test
//! process's own cluster stopped and started), and the real binary with
//! `serve --database postgres://…`: its state in the database, and a bad or
//! unreachable URL refused at start-up without showing the password; TLS to
//! PostgreSQL as the URL's sslmode says (a cluster that takes TLS only).

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

/// `Postgres::connect` to `url`: its error text, or `None` when it
/// connected (and migrated, over the pool).
async fn connect_error(url: &str) -> Option<String> {
    Postgres::connect(url).await.err().map(|e| e.to_string())
}

#[tokio::test]
async fn postgres_over_tls_checks_the_certificate_as_sslmode_says() {
    use tether_server::db::cluster::Notice;
    let c = pg::TlsCluster::start();
    let (ca, other) = (c.ca.display(), c.other_ca.display());
    // The cluster refuses plain connections: each success below is TLS.
    let err = connect_error(&c.url("127.0.0.1", "sslmode=disable")).await;
    assert!(
        err.as_deref().is_some_and(|e| e.contains("no encryption")),
        "{err:?}"
    );
    // The certificate is for localhost, signed by `ca`.
    for params in [
        String::new(), // prefer: TLS when offered, nothing checked (libpq)
        "sslmode=require".into(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslrootcert={ca}"), // libpq: a root certificate means verify-ca
    ] {
        let err = connect_error(&c.url("127.0.0.1", &params)).await;
        assert_eq!(err, None, "127.0.0.1 ?{params}");
    }
    let full = c.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_eq!(connect_error(&full).await, None, "{full}");
    for (host, params, why) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "not valid for name",
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        (
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            format!("sslmode=prefer&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        // The public CAs did not sign a private database's certificate.
        ("localhost", "sslmode=verify-full".into(), "UnknownIssuer"),
    ] {
        let err = connect_error(&c.url(host, &params)).await;
        assert!(
            err.as_deref().is_some_and(|e| e.contains(why)),
            "{host} ?{params}: {err:?}"
        );
    }

    // The notice connection (outside the pool) takes the same TLS.
    let db = Postgres::connect(&full).await.unwrap();
    let cluster = db.cluster();
    let mut heard = cluster.listen().await.unwrap();
    cluster.nudge("rn_tls", "jobs").await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, heard.recv()).await {
            Ok(Some(Notice::Nudge { runner_id, .. })) if runner_id == "rn_tls" => break,
            Ok(Some(_)) => continue,
            other => panic!("no nudge over TLS: {other:?}"),
        }
    }

    // And the server binary: its state over verify-full.
    let tmp = TempDir::new("tls");
    let data = tmp.path().join("d");
    let (mut child, api) = serve(&data, &full).unwrap();
    cli(&data, &api, &["tenant", "create", "acme-tls"]);
    assert!(cli(&data, &api, &["tenant", "list"]).contains("acme-tls"));
    child.kill().unwrap();
    child.wait().unwrap();
    let wrong = c.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let err = serve(&tmp.path().join("e"), &wrong).unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
}
