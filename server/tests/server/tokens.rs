//! API tokens through the router: listed with who made them and their last
//! use, revoked, expiring, dying with the user who minted them; WebSocket
//! tickets single-use; the token in the URL gone.

use axum::http::header::{COOKIE, SET_COOKIE};

use crate::util::*;

/// One request with a bearer token or a cookie (+ CSRF); (status, JSON or Null).
async fn send(
    router: &Router,
    method: &str,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    match auth {
        Auth::Token(t) => req = req.header("Authorization", format!("Bearer {t}")),
        Auth::Cookie(c, csrf) => {
            req = req
                .header(COOKIE, format!("tether_session={c}"))
                .header("X-CSRF-Token", csrf)
        }
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
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

#[derive(Clone, Copy)]
enum Auth<'a> {
    Token(&'a str),
    Cookie(&'a str, &'a str),
}

async fn add_user(router: &Router, tenant: &str, name: &str, role: &str) {
    let body = json!({ "name": name, "password": "pw-of-8-chars", "role": role });
    let path = format!("/api/v1/tenants/{tenant}/users");
    let (st, v) = send(router, "POST", &path, Auth::Token(ADMIN), Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

/// (cookie secret, csrf token)
async fn login(router: &Router, tenant: &str, name: &str) -> (String, String) {
    let body = json!({ "tenant": tenant, "name": name, "password": "pw-of-8-chars" });
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/session")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let secret = cookie
        .strip_prefix("tether_session=")
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_owned();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    (secret, v["csrf_token"].as_str().unwrap().to_owned())
}

async fn mint(router: &Router, auth: Auth<'_>, body: Value) -> (String, String) {
    let (st, v) = send(router, "POST", "/api/v1/api-tokens", auth, Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn works(router: &Router, token: &str) -> (StatusCode, Value) {
    send(router, "GET", "/api/v1/runners", Auth::Token(token), None).await
}

fn listed<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

/// The probe of issue 15: API tokens could not be listed (405) or revoked
/// (404), and one minted by an admin user still worked after that user
/// was deleted.
#[tokio::test]
async fn api_tokens_are_listed_revoked_and_die_with_the_user_who_made_them() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    add_user(&router, "acme", "ada", "admin").await;
    let (cookie, csrf) = login(&router, "acme", "ada").await;
    let ada = Auth::Cookie(&cookie, &csrf);
    let (ada_id, ada_token) = mint(&router, ada, json!({ "label": "ci" })).await;
    // A token ada's token mints carries ada's authority too.
    let (child_id, child) = mint(&router, Auth::Token(&ada_token), json!({})).await;
    let (keep_id, keep) = mint(&router, Auth::Token(&api), json!({"label": "keep"})).await;
    for t in [&ada_token, &child, &keep] {
        assert_eq!(works(&router, t).await.0, StatusCode::OK);
    }

    let (st, list) = send(
        &router,
        "GET",
        "/api/v1/api-tokens",
        Auth::Token(&api),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let row = listed(&list, &ada_id);
    assert_eq!(row["created_by"], "user ada");
    assert_eq!(row["label"], "ci");
    assert_eq!(row["state"], "active");
    assert!(
        row["created_at"].is_string() && row["last_used_at"].is_string(),
        "{row}"
    );
    assert!(row.get("token").is_none(), "never the secret: {row}");
    assert!(listed(&list, &child_id)["created_by"]
        .as_str()
        .unwrap()
        .starts_with(&format!("token {ada_id}")));
    assert!(listed(&list, &keep_id)["last_used_at"].is_string());
    let initial = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "initial")
        .unwrap();
    assert_eq!(initial["created_by"], "admin token");

    // ada is deleted: both tokens behind her die, the tenant's do not.
    let (st, v) = send(
        &router,
        "DELETE",
        "/api/v1/users/ada",
        Auth::Token(&api),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    for t in [&ada_token, &child] {
        let got = works(&router, t).await;
        assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
        let msg = got.1["error"]["message"].as_str().unwrap();
        assert!(msg.contains("deleted"), "{msg}");
    }
    assert_eq!(works(&router, &keep).await.0, StatusCode::OK);
    let (_, list) = send(
        &router,
        "GET",
        "/api/v1/api-tokens",
        Auth::Token(&api),
        None,
    )
    .await;
    assert_eq!(listed(&list, &ada_id)["state"], "creator_gone");

    // Revoke: refused at once, shown as revoked, by whom.
    let path = format!("/api/v1/api-tokens/{keep_id}");
    let (st, v) = send(&router, "DELETE", &path, Auth::Token(&api), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "revoked");
    assert!(v["revoked_reason"]
        .as_str()
        .unwrap()
        .starts_with("revoked by token"));
    let got = works(&router, &keep).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(got.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let got = send(
        &router,
        "DELETE",
        "/api/v1/api-tokens/at_nope",
        Auth::Token(&api),
        None,
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");

    // Another tenant neither sees nor revokes them.
    let (_, other) = tenant(&router, "globex").await;
    let (_, list) = send(
        &router,
        "GET",
        "/api/v1/api-tokens",
        Auth::Token(&other),
        None,
    )
    .await;
    assert!(!list.to_string().contains(&keep_id), "{list}");
    let path = format!("/api/v1/api-tokens/{ada_id}");
    let got = send(&router, "DELETE", &path, Auth::Token(&other), None).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");

    // An operator may neither list nor mint.
    add_user(&router, "acme", "otto", "operator").await;
    let (c, x) = login(&router, "acme", "otto").await;
    let got = send(
        &router,
        "GET",
        "/api/v1/api-tokens",
        Auth::Cookie(&c, &x),
        None,
    )
    .await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn an_api_token_can_expire() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    for bad in [json!({"ttl_secs": 0}), json!({"ttl_secs": 400 * 86_400})] {
        let got = send(
            &router,
            "POST",
            "/api/v1/api-tokens",
            Auth::Token(&api),
            Some(bad),
        )
        .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (st, v) = send(
        &router,
        "POST",
        "/api/v1/api-tokens",
        Auth::Token(&api),
        Some(json!({"ttl_secs": 1})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    let short = v["token"].as_str().unwrap().to_owned();
    assert_eq!(works(&router, &short).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = works(&router, &short).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(got.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

/// `access_token=` is no longer taken; a ticket is, once.
#[tokio::test]
async fn websocket_tickets_are_single_use_and_replace_the_token_in_the_url() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    let path = format!("/api/v1/terminals/tm_000000000000/attach?access_token={api}");
    let req = Request::builder().uri(&path).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "access_token refused"
    );

    let (st, v) = send(
        &router,
        "POST",
        "/api/v1/ws-tickets",
        Auth::Token(&api),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    assert!(ticket.starts_with("twst_"), "{v}");
    assert_eq!(v["expires_in_s"], 10);
    let path = format!("/api/v1/terminals/tm_000000000000/attach?ticket={ticket}");
    // The ticket is good (the terminal is what is missing) ...
    let got = call(&router, "GET", &path, None, None).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");
    // ... once.
    let got = call(&router, "GET", &path, None, None).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    // A ticket of a token revoked since it was minted is refused.
    let (id, token) = mint(&router, Auth::Token(&api), json!({})).await;
    let (_, v) = send(
        &router,
        "POST",
        "/api/v1/ws-tickets",
        Auth::Token(&token),
        None,
    )
    .await;
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    let revoke = format!("/api/v1/api-tokens/{id}");
    let (st, _) = send(&router, "DELETE", &revoke, Auth::Token(&api), None).await;
    assert_eq!(st, StatusCode::OK);
    let path = format!("/api/v1/terminals/tm_000000000000/attach?ticket={ticket}");
    let got = call(&router, "GET", &path, None, None).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    // No minting without a credential; the admin token manages tenants only.
    let got = call(&router, "POST", "/api/v1/ws-tickets", None, None).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    let got = call(&router, "POST", "/api/v1/ws-tickets", Some(ADMIN), None).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
}

/// SSE, in process: a revoked token's stream ends with `event: end`
/// within a second (the real-server tests cover the other streams and
/// revocation kinds).
#[tokio::test]
async fn an_sse_stream_ends_when_its_token_is_revoked() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    let (id, token) = mint(&router, Auth::Token(&api), json!({})).await;
    let req = Request::builder()
        .uri("/api/v1/events")
        .header("Authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("subscribed"));
    let revoke = format!("/api/v1/api-tokens/{id}");
    let (st, _) = send(&router, "DELETE", &revoke, Auth::Token(&api), None).await;
    assert_eq!(st, StatusCode::OK);
    let started = tokio::time::Instant::now();
    let mut seen = String::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(WAIT, body.next()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(seen.contains("event: end"), "{seen:?}");
    assert!(seen.contains("revoked"), "{seen:?}");
}

/// Expiry needs no write to wake the guard: it sleeps until then.
#[tokio::test]
async fn an_sse_stream_ends_when_its_token_expires() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    let (_, token) = mint(&router, Auth::Token(&api), json!({"ttl_secs": 1})).await;
    let req = Request::builder()
        .uri("/api/v1/events")
        .header("Authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let started = tokio::time::Instant::now();
    let resp = router.clone().oneshot(req).await.unwrap();
    let mut body = resp.into_body().into_data_stream();
    let mut seen = String::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(WAIT, body.next()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let took = started.elapsed();
    assert!(
        seen.contains("event: end") && seen.contains("expired"),
        "{seen:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "ended {took:?} after it began (ttl 1 s)"
    );
}
