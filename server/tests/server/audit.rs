//! The audit trail: every mutating route is recorded (the route table is
//! read from the source, so a new route is walked without anyone adding it
//! here), secret values stay out, filters and export work, and an edited or
//! deleted entry makes `audit verify` fail naming it — on the real binary
//! and a real `audit.db`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::util::*;
use tether_server::db::trail::AuditQuery;

/// Every `(METHOD, path)` the router's source names with `.route(`, for
/// methods that can change something. Reads `server/src` as text: the
/// route table may live in `app/mod.rs` or in each feature's `routes()`.
fn mutating_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call ends at the parenthesis that closes `.route(`, so
            // text after a feature's last route is not read as its methods.
            let mut depth = 1usize;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            let path = if let Some(q) = call.trim_start().strip_prefix('"') {
                q.split('"').next().unwrap().to_owned()
            } else if call
                .trim_start()
                .starts_with("tether::protocol::ENROLL_PATH")
            {
                tether::protocol::ENROLL_PATH.to_owned()
            } else {
                continue; // the runner WebSocket: a GET, not an API action
            };
            for m in ["post", "put", "patch", "delete"] {
                let named = call.match_indices(&format!("{m}(")).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                            && call.as_bytes()[i - 1] != b':'
                });
                if named {
                    routes.insert((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    routes
}

fn concrete(path: &str) -> String {
    // `{id}` → a plausible id that names nothing.
    let mut out = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => inside = true,
            '}' => {
                inside = false;
                out.push_str("nosuch1");
            }
            _ if inside => {}
            c => out.push(c),
        }
    }
    out.replace("*path", "")
}

#[tokio::test]
async fn every_mutating_route_is_recorded() {
    let routes = mutating_routes();
    // The reader works: known routes of several features are in it.
    for known in [
        ("POST", "/api/v1/jobs"),
        ("DELETE", "/api/v1/apps/{name}"),
        ("PUT", "/api/v1/secrets/{name}"),
        ("PATCH", "/api/v1/users/{name}"),
        ("POST", "/api/v1/enroll"),
        ("POST", "/api/v1/session"),
    ] {
        assert!(
            routes.contains(&(known.0.to_owned(), known.1.to_owned())),
            "{known:?} not found in {routes:?}"
        );
    }
    assert!(routes.len() >= 30, "{routes:?}");
    let state = state();
    let router = app(state.clone());
    let (tenant, api) = tenant(&router, "acme").await;
    for (method, path) in &routes {
        let uri = concrete(path);
        let req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .header("Authorization", format!("Bearer {api}"))
            .header("Content-Type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let action = format!("{method} {path}");
        let found = state
            .audit
            .query(&AuditQuery {
                action: Some(action.clone()),
                target: Some(uri.clone()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let e = found
            .iter()
            .rev()
            .find(|e| e.entry.action == action)
            .unwrap_or_else(|| panic!("{action} ({status}) is not in the audit trail"));
        assert_eq!(e.entry.result, status, "{action}");
        // Logins and enrollments name no token (they are the doors).
        if !path.ends_with("/session") && !path.ends_with("/enroll") {
            assert_eq!(e.entry.actor_kind, "token", "{action}: {e:?}");
            assert_eq!(
                e.entry.tenant_id.as_deref(),
                Some(tenant.as_str()),
                "{action}"
            );
        }
    }
    assert!(state.audit.verify().await.unwrap().ok);
}

#[tokio::test]
async fn entries_name_actor_and_parameters_but_never_secret_values() {
    let state = state();
    let router = app(state.clone());
    // A labelled token, so the trail can name it.
    let (_, api) = crate::util::tenant(&router, "other").await;
    let (s, v) = call(
        &router,
        "POST",
        "/api/v1/api-tokens",
        Some(&api),
        Some(r#"{"label":"deploy-bot"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let bot = v["token"].as_str().unwrap().to_owned();
    let req = Request::builder()
        .method("PUT")
        .uri("/api/v1/secrets/DB_PASSWORD")
        .header("Authorization", format!("Bearer {bot}"))
        .body(Body::from(r#"{"value":"hunter2-very-secret"}"#))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    assert!(res.status().is_success(), "{:?}", res.status());
    let (_, listed) = call(
        &router,
        "GET",
        "/api/v1/audit?actor=deploy-bot",
        Some(&bot),
        None,
    )
    .await;
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    let e = &entries[0];
    assert_eq!(e["action"], "PUT /api/v1/secrets/{name}");
    assert_eq!(e["target"], "/api/v1/secrets/DB_PASSWORD");
    assert_eq!(e["actor_kind"], "token");
    assert_eq!(e["actor_label"], "deploy-bot");
    assert_eq!(e["params"]["body"]["value"], "***", "{e}");
    assert!(!listed.to_string().contains("hunter2"), "{listed}");
    // Another tenant's trail shows none of it; the admin sees it all.
    let (_, third) = crate::util::tenant(&router, "third").await;
    let (_, theirs) = call(
        &router,
        "GET",
        "/api/v1/audit?action=secrets",
        Some(&third),
        None,
    )
    .await;
    assert_eq!(theirs.as_array().unwrap().len(), 0, "{theirs}");
    let (_, all) = call(
        &router,
        "GET",
        "/api/v1/audit?action=secrets",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    // A bad filter is a clear error.
    let bad = call(
        &router,
        "GET",
        "/api/v1/audit?since=yesterday-ish",
        Some(&bot),
        None,
    )
    .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request");
    // Export: the same entries, one per line.
    let (s, ctype, body) = get_text(&router, &bot, "/api/v1/audit/export").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "application/x-ndjson");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{body}");
    assert!(lines
        .iter()
        .all(|l| l["tenant_id"] == lines[0]["tenant_id"]));
    // Verify is the admin's.
    let refused = call(&router, "GET", "/api/v1/audit/verify", Some(&bot), None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let (_, ok) = call(&router, "GET", "/api/v1/audit/verify", Some(ADMIN), None).await;
    assert_eq!(ok["ok"], true, "{ok}");
}

#[tokio::test]
async fn login_failures_and_successes_are_recorded_without_the_password() {
    let state = state();
    let router = app(state.clone());
    let (tenant, _) = tenant(&router, "acme").await;
    let body =
        json!({"tenant": tenant, "name": "nobody", "password": "wrong-password-1"}).to_string();
    let (s, _) = call(&router, "POST", "/api/v1/session", None, Some(&body)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let found = state
        .audit
        .query(&AuditQuery {
            action: Some("POST /api/v1/session".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].entry.result, 401);
    assert_eq!(found[0].entry.actor_kind, "none");
    assert!(found[0].entry.params.contains("nobody"));
    assert!(!found[0].entry.params.contains("wrong-password-1"));
    // Strangers refused elsewhere fill nothing.
    let (s, _) = call(
        &router,
        "POST",
        "/api/v1/jobs",
        Some("tapi_nope"),
        Some("{}"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let all = state
        .audit
        .query(&AuditQuery {
            action: Some("/api/v1/jobs".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(all.is_empty(), "{all:?}");
}

/// Figure: what recording adds to a mutating call, through the whole
/// router (p50/p99 over 2,000 calls, printed; the bound is generous).
#[tokio::test]
async fn audit_write_cost() {
    let dir = tempdir("cost");
    let store = tether_server::db::sqlite::open_trail(&dir.join("audit.db")).unwrap();
    let entry = tether_server::db::trail::NewEntry {
        at_ms: 1,
        tenant_id: Some("tn_1".into()),
        actor_kind: "token".into(),
        actor_id: "ak_1".into(),
        actor_label: "ci".into(),
        client: "127.0.0.1".into(),
        action: "PUT /api/v1/scripts/{name}".into(),
        target: "/api/v1/scripts/deploy".into(),
        params: r#"{"body":{"interpreter":"/bin/sh","body":"echo hi"}}"#.into(),
        result: 200,
        detail: String::new(),
    };
    let mut took = Vec::with_capacity(2000);
    for i in 0..2000 {
        let t = Instant::now();
        store.append(entry.clone()).await.unwrap();
        took.push(t.elapsed());
        if i % 500 == 499 {
            // What the server's housekeeping does every 5 s.
            store.checkpoint().await.unwrap();
        }
    }
    took.sort();
    let (p50, p90, p99) = (took[1000], took[1800], took[1980]);
    println!(
        "audit append on a file (WAL, synchronous=NORMAL): p50 {p50:?}, p90 {p90:?}, p99 {p99:?}"
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tether-audit-{label}-{}-{}",
        std::process::id(),
        tether_server::common::clock::now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct RealServer {
    child: Child,
    data: PathBuf,
    url: String,
    admin: String,
}

impl RealServer {
    fn start(data: &Path) -> RealServer {
        let _ = std::fs::remove_file(data.join("server.url"));
        let child = Command::new(env!("CARGO_BIN_EXE_tether-server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(u) = std::fs::read_to_string(data.join("server.url")) {
                if !u.trim().is_empty() {
                    break u.trim().to_owned();
                }
            }
            assert!(Instant::now() < until, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let admin = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        RealServer {
            child,
            data: data.to_owned(),
            url,
            admin,
        }
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-server"))
            .args(["--api", &self.url, "--token", &self.admin, "--ca-file"])
            .arg(self.data.join("tls/ca.pem"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn stop(&mut self) {
        unsafe_free_kill(&mut self.child);
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unsafe_free_kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tamper(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn editing_or_deleting_an_entry_makes_verify_name_it() {
    let dir = tempdir("verify");
    let mut server = RealServer::start(&dir);
    for name in ["t1", "t2", "t3", "t4", "t5"] {
        let (ok, out) = server.cli(&["tenant", "create", name]);
        assert!(ok, "{out}");
    }
    let (ok, out) = server.cli(&["audit", "verify"]);
    assert!(ok && out.starts_with("ok: 5 entries"), "{out}");
    let (ok, out) = server.cli(&["audit", "--action", "tenants"]);
    assert!(ok && out.lines().count() == 6, "{out}");
    server.stop();
    let db = dir.join("audit.db");
    // Offline, on the file: intact.
    let offline = |db: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-server"))
            .args(["audit", "verify", "--db"])
            .arg(db)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(offline(&db).0);
    // An edited entry: named.
    let copy = dir.join("edited.db");
    std::fs::copy(&db, &copy).unwrap();
    tamper(&copy, "UPDATE audit_entries SET result = 500 WHERE seq = 3");
    let (ok, out) = offline(&copy);
    assert!(
        !ok && out.contains("BROKEN at entry 3") && out.contains("changed"),
        "{out}"
    );
    // A deleted entry: named.
    tamper(&db, "DELETE FROM audit_entries WHERE seq = 2");
    let (ok, out) = offline(&db);
    assert!(
        !ok && out.contains("BROKEN at entry 2") && out.contains("missing"),
        "{out}"
    );
    // The server, started on the tampered file, says so through the API too.
    server = RealServer::start(&dir);
    let (ok, out) = server.cli(&["audit", "verify"]);
    assert!(!ok && out.contains("BROKEN at entry 2"), "{out}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
