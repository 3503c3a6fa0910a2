//! Claims of the threat model (`docs/security.md`) that no feature's own
//! tests show: what a stolen runner credential, another tenant, the admin
//! token, a copy of the databases and someone who can write `audit.db` can
//! and cannot do. Fake runners are real WebSocket clients of the real
//! router; the databases are real SQLite files.

use std::path::{Path, PathBuf};

use axum::http::header::{COOKIE, SET_COOKIE};
use tether_server::db::trail::{entry_hash, AuditQuery};

use crate::util::*;

async fn post(router: &Router, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    call(router, "POST", path, Some(token), Some(&body.to_string())).await
}

/// `PUT /api/v1/secrets/NAME` (answered 204, no body).
async fn put_secret(router: &Router, api: &str, name: &str, value: &str) {
    let req = Request::put(format!("/api/v1/secrets/{name}"))
        .header("Authorization", format!("Bearer {api}"))
        .body(Body::from(json!({ "value": value }).to_string()))
        .unwrap();
    let status = router.clone().oneshot(req).await.unwrap().status();
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// The next `job_start` on `ws`, skipping other control messages.
async fn next_job(ws: &mut Ws) -> protocol::JobStart {
    next_job_request(ws).await.1
}

/// The next `job_start` and its request id (to answer it).
async fn next_job_request(ws: &mut Ws) -> (u64, protocol::JobStart) {
    loop {
        let env = next_control(ws).await;
        if let Message::JobStart(s) = env.body {
            return (env.id, s);
        }
    }
}

/// Everything the server sent before a ping round trip, and no job_start
/// among it.
async fn no_job_for(ws: &mut Ws, id: u64) {
    let ping = Message::Ping(protocol::Ping { sent_ms: id });
    ws.send(WsMessage::text(encode_control(id, ping)))
        .await
        .unwrap();
    // The server sends a job to a runner as soon as it is stored: give it
    // that moment, then read up to the pong.
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        let env = next_control(ws).await;
        assert!(
            !matches!(env.body, Message::JobStart(_)),
            "this connection was sent a job: {env:?}"
        );
        if env.id == id && matches!(env.body, Message::Pong(_)) {
            return;
        }
    }
}

/// Whoever holds a runner's credential is that runner to the server: the
/// connection replaces the host's (`link::a_newer_connection_replaces_the_older`),
/// receives the jobs meant for that runner with their secret values (a
/// signed job too: signatures protect hosts, not the server), and its word
/// on how they ended is stored, a refusal it claims included. It receives
/// nothing meant for another runner.
#[tokio::test]
async fn a_stolen_runner_credential_gets_its_runners_jobs_and_secrets_and_nothing_else() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (victim, stolen) = runner(&s.router, &api).await;
    let (other, other_cred) = runner(&s.router, &api).await;
    put_secret(&s.router, &api, "DB_PASSWORD", "hunter2-of-acme").await;
    let mut thief = online(&s, &stolen, 60_000).await;
    let mut bystander = online(&s, &other_cred, 60_000).await;

    // Signed by an operator for the victim's host (the server checks only
    // the signature's shape; the host would check the rest).
    let signed = json!({
        "action_id": "sa_00000000000000aa",
        "not_after_ms": tether_server::common::clock::now_ms() + 600_000,
        "signature": "untrusted comment: x\nRWQ=\ntrusted comment: x\nAA==\n",
    });
    let (st, v) = post(
        &s.router,
        &api,
        "/api/v1/jobs",
        json!({ "runners": [victim], "command": "backup", "secrets": ["DB_PASSWORD"],
                "signatures": { victim.clone(): signed } }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let job = v[0]["id"].as_str().unwrap().to_owned();
    let start = next_job(&mut thief).await;
    assert_eq!(start.job_id, job);
    assert_eq!(
        start.secrets,
        [("DB_PASSWORD".to_owned(), "hunter2-of-acme".to_owned())],
        "the secret's value travels inside the job"
    );
    assert_eq!(
        start.signed.as_ref().map(|s| s.action_id.as_str()),
        Some("sa_00000000000000aa"),
        "a signed job reaches the thief like any other"
    );
    no_job_for(&mut bystander, 90).await;

    // Its word on the result is what the server keeps.
    let result = Message::JobResult(protocol::JobResult {
        job_id: start.job_id.clone(),
        channel: start.channel,
        status: "succeeded".into(),
        exit_code: Some(0),
        signal: None,
        reason: String::new(),
        started_ms: 1,
        finished_ms: 2,
        output_bytes: 0,
    });
    thief
        .send(WsMessage::text(encode_control(5, result)))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = get(&s.router, &api, &format!("/api/v1/jobs/{job}")).await;
        if v["status"] == "succeeded" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A refusal it claims is in the trail, under the runner, as if the
    // host had refused a bad signature.
    let (st, v) = post(
        &s.router,
        &api,
        "/api/v1/jobs",
        json!({ "runners": [victim], "command": "true" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let refused = v[0]["id"].as_str().unwrap().to_owned();
    let (req, start) = next_job_request(&mut thief).await;
    assert_eq!(start.job_id, refused);
    let claim = Message::Error(protocol::ErrorBody {
        code: protocol::signed::REFUSED_CODE.into(),
        message: "unknown key: not signed by a key this host trusts".into(),
    });
    thief
        .send(WsMessage::text(encode_control(req, claim)))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let entry = loop {
        let (_, trail) = call(
            &s.router,
            "GET",
            "/api/v1/audit?action=runner%20refused",
            Some(&api),
            None,
        )
        .await;
        if let Some(e) = trail.as_array().and_then(|a| a.first()) {
            break e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{trail}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (entry["actor_kind"].as_str(), entry["actor_id"].as_str()),
        (Some("runner"), Some(victim.as_str())),
        "{entry}"
    );
    assert_eq!(entry["target"], refused.as_str(), "{entry}");
    assert!(entry["detail"].as_str().unwrap().starts_with("unknown key"));

    // A job for the other runner goes to the other runner only.
    let (st, v) = post(
        &s.router,
        &api,
        "/api/v1/jobs",
        json!({ "runners": [other], "command": "true", "secrets": ["DB_PASSWORD"] }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(next_job(&mut bystander).await.job_id, v[0]["id"]);
    no_job_for(&mut thief, 91).await;
}

/// A tenant cannot name another tenant's runner, secret or saved script in
/// a job: each is "not found", and the other tenant's runner is sent
/// nothing.
#[tokio::test]
async fn another_tenant_cannot_run_on_this_tenants_runner_or_use_its_secrets_and_scripts() {
    let s = server().await;
    let (_, api_a) = tenant(&s.router, "a").await;
    let (_, api_b) = tenant(&s.router, "b").await;
    let (runner_a, cred_a) = runner(&s.router, &api_a).await;
    let (runner_b, cred_b) = runner(&s.router, &api_b).await;
    put_secret(&s.router, &api_a, "A_ONLY", "value-of-a").await;
    let (st, v) = call(
        &s.router,
        "PUT",
        "/api/v1/scripts/a-backup",
        Some(&api_a),
        Some(r#"{"body":"echo a"}"#),
    )
    .await;
    assert!(st.is_success(), "{st}: {v}");
    let mut ws_a = online(&s, &cred_a, 60_000).await;
    let mut ws_b = online(&s, &cred_b, 60_000).await;

    for body in [
        json!({ "runners": [runner_a], "command": "id" }),
        json!({ "runners": [runner_b], "command": "env", "secrets": ["A_ONLY"] }),
        json!({ "runners": [runner_b], "script": "a-backup" }),
    ] {
        let got = post(&s.router, &api_b, "/api/v1/jobs", body.clone()).await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found");
        assert!(!got.1.to_string().contains("value-of-a"), "{body}: {got:?}");
    }
    no_job_for(&mut ws_a, 90).await;
    no_job_for(&mut ws_b, 91).await;
    // The same calls by A work (so the refusals above were about tenancy).
    let (st, v) = post(
        &s.router,
        &api_a,
        "/api/v1/jobs",
        json!({ "runners": [runner_a], "script": "a-backup", "secrets": ["A_ONLY"] }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(next_job(&mut ws_a).await.secrets[0].1, "value-of-a");
}

/// One request with the dashboard's cookie and CSRF header.
async fn as_user(
    router: &Router,
    method: &str,
    path: &str,
    session: &(String, String),
    body: Value,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(COOKIE, format!("tether_session={}", session.0))
        .header("X-CSRF-Token", &session.1)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn login(router: &Router, tenant: &str, name: &str, password: &str) -> (String, String) {
    let req = Request::post("/api/v1/session")
        .body(Body::from(
            json!({ "tenant": tenant, "name": name, "password": password }).to_string(),
        ))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let secret = cookie
        .strip_prefix("tether_session=")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    (secret, v["csrf_token"].as_str().unwrap().to_owned())
}

/// The admin token "manages tenants only", yet it may add a user with the
/// admin role to any tenant, and that user holds the tenant: it mints an
/// API token. The trail names the admin as the one who made the user, but
/// only in the admin's view: the tenant's own trail shows the new user's
/// actions, not who made the user.
#[tokio::test]
async fn the_admin_token_takes_a_tenant_by_making_a_user_there() {
    let router = app(state());
    let (tenant_id, api) = tenant(&router, "acme").await;
    // The admin token itself is refused on the tenant's endpoints.
    assert_error(
        &call(&router, "GET", "/api/v1/runners", Some(ADMIN), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (st, v) = post(
        &router,
        ADMIN,
        "/api/v1/tenants/acme/users",
        json!({ "name": "mallory", "password": "pw-of-8-chars", "role": "admin" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let session = login(&router, "acme", "mallory", "pw-of-8-chars").await;
    let (st, v) = as_user(
        &router,
        "POST",
        "/api/v1/api-tokens",
        &session,
        json!({ "label": "backdoor" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let minted = v["token"].as_str().unwrap().to_owned();
    let (st, v) = call(&router, "GET", "/api/v1/runners", Some(&minted), None).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the minted token acts in the tenant: {v}"
    );

    // The admin's view of the trail: who made the user.
    let (_, all) = call(
        &router,
        "GET",
        "/api/v1/audit?action=users",
        Some(ADMIN),
        None,
    )
    .await;
    let made = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "POST /api/v1/tenants/{tenant}/users")
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(made["actor_kind"], "admin", "{made}");
    assert!(made["tenant_id"].is_null(), "{made}");
    // The tenant's view: the user's token, not the admin who made the user.
    let (_, own) = call(&router, "GET", "/api/v1/audit", Some(&api), None).await;
    let own = own.as_array().unwrap();
    assert!(
        own.iter().any(|e| e["action"] == "POST /api/v1/api-tokens"
            && e["actor_label"] == "mallory"
            && e["tenant_id"] == tenant_id.as_str()),
        "{own:?}"
    );
    assert!(
        !own.iter()
            .any(|e| e["action"] == "POST /api/v1/tenants/{tenant}/users"),
        "{own:?}"
    );
}

fn temp_dir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tether-threats-{label}-{}-{}",
        std::process::id(),
        tether_server::common::clock::now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// A copy of the databases (every `*.db` file and its WAL) holds no
/// credential, password, session or secret value in the clear: tokens
/// and sessions as SHA-256 (found there, so the search looks in the right
/// place), passwords as Argon2id, secret values sealed with a key that
/// lives outside them (`common/secrets.rs` tests that another key does
/// not open them).
#[tokio::test]
async fn the_databases_hold_no_token_password_or_secret_value_in_the_clear() {
    let dir = temp_dir("db-copy");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = tether_server::db::sqlite::open(
        &data,
        &tether_server::db::sqlite::Options {
            metrics_retention: Retention::default(),
            log_retention: tether_server::db::logs::LogRetention::default(),
            log_collect: tether_server::db::logs::CollectPolicy::All,
        },
    )
    .unwrap();
    // The key outside the data dir, as README advises.
    let secrets =
        tether_server::common::secrets::SecretBox::load(None, &dir.join("secret.key")).unwrap();
    let state = AppState::new(db, Arc::new(secrets), ADMIN, tuning());
    let router = app(state);

    let (_, api) = tenant(&router, "acme").await;
    let (_, enroll) = enrollment_token(&router, &api, "{}").await;
    let (_, credential) = runner(&router, &api).await;
    let (st, v) = post(&router, &api, "/api/v1/api-tokens", json!({"label": "ci"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let second_api = v["token"].as_str().unwrap().to_owned();
    let password = "correct-horse-battery-staple";
    let (st, v) = post(
        &router,
        ADMIN,
        "/api/v1/tenants/acme/users",
        json!({ "name": "ada", "password": password, "role": "admin" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (session, _) = login(&router, "acme", "ada", password).await;
    let secret_value = "s3cret-value-9a7c41";
    put_secret(&router, &api, "API_KEY", secret_value).await;

    let clear = [
        ("tenant API token", api.as_str()),
        ("API token", second_api.as_str()),
        ("enrollment token", enroll.as_str()),
        ("runner credential", credential.as_str()),
        ("session", session.as_str()),
        ("password", password),
        ("secret value", secret_value),
    ];
    for (what, value) in clear {
        let hits = files_containing(&data, value);
        assert!(hits.is_empty(), "the {what} is in the clear in {hits:?}");
    }
    // What is there instead: the hashes.
    for (what, value) in &clear[..5] {
        let hash = tether_server::common::auth::hash_secret(value);
        assert!(
            !files_containing(&data, &hash).is_empty(),
            "the {what}'s SHA-256 is not stored: the search looked in the wrong place"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Someone who can write `tether.db` (a shared database they reached, a
/// backup they edit and get restored) needs no token: they add the hash
/// of one they made up, and the API takes it as the tenant's.
#[tokio::test]
async fn whoever_writes_the_database_adds_a_token_of_their_own() {
    let dir = temp_dir("db-write");
    let db = tether_server::db::sqlite::open(
        &dir,
        &tether_server::db::sqlite::Options {
            metrics_retention: Retention::default(),
            log_retention: tether_server::db::logs::LogRetention::default(),
            log_collect: tether_server::db::logs::CollectPolicy::All,
        },
    )
    .unwrap();
    let secrets = tether_server::common::secrets::SecretBox::from_key([3; 32]);
    let router = app(AppState::new(db, Arc::new(secrets), ADMIN, tuning()));
    let (tenant_id, _) = tenant(&router, "acme").await;
    let made_up = "tapi_made-up-by-whoever-writes-the-database";
    assert_error(
        &call(&router, "GET", "/api/v1/runners", Some(made_up), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    rusqlite::Connection::open(dir.join("tether.db"))
        .unwrap()
        .execute(
            "INSERT INTO api_tokens (id, tenant_id, token_hash, label, created_at)
             VALUES ('at_forged', ?1, ?2, 'forged', 0)",
            rusqlite::params![tenant_id, tether_server::common::auth::hash_secret(made_up)],
        )
        .unwrap();
    let (st, v) = call(&router, "GET", "/api/v1/runners", Some(made_up), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Without signed actions the database is the truth: a job edited in
/// `jobs.db` while it waits for its runner is sent as edited.
#[tokio::test]
async fn a_job_edited_in_the_database_is_sent_as_edited() {
    let dir = temp_dir("db-edit");
    let db = tether_server::db::sqlite::open(
        &dir,
        &tether_server::db::sqlite::Options {
            metrics_retention: Retention::default(),
            log_retention: tether_server::db::logs::LogRetention::default(),
            log_collect: tether_server::db::logs::CollectPolicy::All,
        },
    )
    .unwrap();
    let secrets = tether_server::common::secrets::SecretBox::from_key([3; 32]);
    let s = server_with(AppState::new(db, Arc::new(secrets), ADMIN, tuning()), None).await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, cred) = runner(&s.router, &api).await;
    // The runner is away: the job waits in the database.
    let (st, v) = post(
        &s.router,
        &api,
        "/api/v1/jobs",
        json!({ "runners": [runner_id], "command": "echo meant" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let job = v[0]["id"].as_str().unwrap().to_owned();
    let changed = rusqlite::Connection::open(dir.join("jobs.db"))
        .unwrap()
        .execute(
            "UPDATE jobs SET spec = replace(spec, 'echo meant', 'echo edited') WHERE id = ?1",
            [&job],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let mut ws = online(&s, &cred, 60_000).await;
    let start = next_job(&mut ws).await;
    assert_eq!(start.job_id, job);
    assert_eq!(start.script.as_deref(), Some("echo edited"));
    let _ = std::fs::remove_dir_all(dir);
}

fn raw(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    conn
}

/// The hash chain is not a signature: whoever can write `audit.db` can
/// edit an entry and recompute every hash after it, or cut the newest
/// entries, and `audit verify` on the file (or a server started on it)
/// finds nothing. Only a head written down elsewhere before the change
/// shows it.
#[tokio::test]
async fn a_rewritten_or_shortened_chain_verifies_and_only_a_head_kept_elsewhere_shows_it() {
    let dir = temp_dir("rewrite");
    let db = dir.join("audit.db");
    let open = tether_server::db::sqlite::open_trail;
    let store = open(&db).unwrap();
    for i in 0..6 {
        store
            .append(tether_server::db::trail::NewEntry {
                at_ms: 1000 + i,
                tenant_id: Some("tn_1".into()),
                actor_kind: "token".into(),
                actor_id: "ak_1".into(),
                actor_label: "mallory".into(),
                client: "10.0.0.9".into(),
                action: "POST /api/v1/jobs".into(),
                target: "/api/v1/jobs".into(),
                params: "{}".into(),
                result: 201,
                detail: String::new(),
            })
            .await
            .unwrap();
    }
    let written_down = store.verify().await.unwrap();
    assert!(written_down.ok);
    assert_eq!(written_down.head_seq, 6);
    drop(store);

    // Edit entry 3 and recompute the chain from there on.
    let conn = raw(&db);
    conn.execute(
        "UPDATE audit_entries SET actor_label = 'alice' WHERE seq = 3",
        [],
    )
    .unwrap();
    let rows = open(&db)
        .unwrap()
        .query(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut prev = rows[1].hash.clone();
    for r in &rows[2..] {
        let hash = entry_hash(r.seq, &r.entry, &prev);
        conn.execute(
            "UPDATE audit_entries SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, r.seq],
        )
        .unwrap();
        prev = hash;
    }
    drop(conn);
    let reopened = open(&db).unwrap();
    let v = reopened.verify().await.unwrap();
    assert!(v.ok, "a recomputed chain holds: {v:?}");
    assert_eq!(v.head_seq, written_down.head_seq);
    assert_ne!(
        v.head_hash, written_down.head_hash,
        "the head written down before is what tells"
    );
    drop(reopened);

    // Cut the two newest entries: a server started on the file reads its
    // head from the table and sees a whole chain.
    raw(&db)
        .execute("DELETE FROM audit_entries WHERE seq > 4", [])
        .unwrap();
    let v = open(&db).unwrap().verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.head_seq, 4, "shorter than the head written down (6)");
    let _ = std::fs::remove_dir_all(dir);
}
