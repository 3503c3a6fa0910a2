//! Dashboard logins, sessions and user management through the router, as
//! the page calls them: cookie + CSRF header, roles enforced server-side.

use axum::http::header::{COOKIE, SET_COOKIE};

use crate::util::*;

/// One request with optional cookie and CSRF header; (status, Set-Cookie, JSON or Null).
async fn send(
    router: &Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(c) = cookie {
        req = req.header(COOKIE, format!("tether_session={c}"));
    }
    if let Some(t) = csrf {
        req = req.header("X-CSRF-Token", t);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let set_cookie = resp
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, set_cookie, value)
}

/// A logged-in user: (cookie secret, csrf token).
async fn login(router: &Router, tenant: &str, name: &str, password: &str) -> (String, String) {
    let (st, set_cookie, v) = send(
        router,
        "POST",
        "/api/v1/session",
        None,
        None,
        Some(json!({ "tenant": tenant, "name": name, "password": password })),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let set_cookie = set_cookie.expect("login sets the cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let secret = set_cookie
        .strip_prefix("tether_session=")
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("tses_"), "{secret}");
    (secret, v["csrf_token"].as_str().unwrap().to_owned())
}

async fn add_user(router: &Router, tenant: &str, name: &str, role: &str) {
    let (st, v) = call(
        router,
        "POST",
        &format!("/api/v1/tenants/{tenant}/users"),
        Some(ADMIN),
        Some(&json!({ "name": name, "password": "pw-of-8-chars", "role": role }).to_string()),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["role"], role);
}

#[tokio::test]
async fn login_session_and_logout() {
    let router = app(state());
    tenant(&router, "acme").await;
    add_user(&router, "acme", "ada", "admin").await;

    // Wrong password, unknown user, unknown tenant: one answer for all.
    for (t, n, p) in [
        ("acme", "ada", "wrong-password"),
        ("acme", "bob", "pw-of-8-chars"),
        ("nope", "ada", "pw-of-8-chars"),
    ] {
        let (st, cookie, v) = send(
            &router,
            "POST",
            "/api/v1/session",
            None,
            None,
            Some(json!({ "tenant": t, "name": n, "password": p })),
        )
        .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"]["message"], "wrong tenant, user name or password");
        assert!(cookie.is_none());
    }
    let (st, _, v) = send(
        &router,
        "POST",
        "/api/v1/session",
        None,
        None,
        Some(json!({"tenant": 1})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    let (cookie, csrf) = login(&router, "acme", "ada", "pw-of-8-chars").await;
    let (st, _, v) = send(&router, "GET", "/api/v1/session", Some(&cookie), None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["tenant"].as_str(), v["user"]["name"].as_str()),
        (Some("acme"), Some("ada"))
    );
    assert_eq!(v["user"]["role"], "admin");
    assert_eq!(v["csrf_token"], csrf.as_str());
    // The cookie works on every tenant endpoint, like an API token.
    let (st, _, v) = send(&router, "GET", "/api/v1/runners", Some(&cookie), None, None).await;
    assert_eq!((st, v), (StatusCode::OK, json!([])));
    // A made-up cookie is refused.
    let (st, _, _) = send(
        &router,
        "GET",
        "/api/v1/runners",
        Some("tses_00"),
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Logout needs the CSRF token, then the cookie is dead and cleared.
    let (st, _, _) = send(
        &router,
        "DELETE",
        "/api/v1/session",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, set_cookie, _) = send(
        &router,
        "DELETE",
        "/api/v1/session",
        Some(&cookie),
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(set_cookie.unwrap().contains("Max-Age=0"));
    let (st, _, v) = send(&router, "GET", "/api/v1/runners", Some(&cookie), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
}

#[tokio::test]
async fn sessions_expire() {
    let mut st = state();
    st.tuning.session_ttl = Duration::from_millis(300);
    let router = app(st);
    tenant(&router, "acme").await;
    add_user(&router, "acme", "ada", "operator").await;
    let (cookie, _) = login(&router, "acme", "ada", "pw-of-8-chars").await;
    let (s, _, _) = send(&router, "GET", "/api/v1/runners", Some(&cookie), None, None).await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, _, v) = send(&router, "GET", "/api/v1/runners", Some(&cookie), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

#[tokio::test]
async fn csrf_and_roles_are_enforced_on_the_api() {
    let router = app(state());
    tenant(&router, "acme").await;
    add_user(&router, "acme", "vic", "viewer").await;
    add_user(&router, "acme", "otto", "operator").await;
    add_user(&router, "acme", "ada", "admin").await;
    let script = json!({ "body": "echo hi" });

    // A viewer may read but not change anything, even with the CSRF token.
    let (vc, vcsrf) = login(&router, "acme", "vic", "pw-of-8-chars").await;
    let (s, _, _) = send(&router, "GET", "/api/v1/scripts", Some(&vc), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, v) = send(
        &router,
        "PUT",
        "/api/v1/scripts/x",
        Some(&vc),
        Some(&vcsrf),
        Some(script.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("viewer"),
        "{v}"
    );
    let (s, _, _) = send(
        &router,
        "POST",
        "/api/v1/tokens",
        Some(&vc),
        Some(&vcsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // An operator acts, but only with the session's CSRF token.
    let (oc, ocsrf) = login(&router, "acme", "otto", "pw-of-8-chars").await;
    let (s, _, v) = send(
        &router,
        "PUT",
        "/api/v1/scripts/x",
        Some(&oc),
        None,
        Some(script.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("CSRF"),
        "{v}"
    );
    let (s, _, _) = send(
        &router,
        "PUT",
        "/api/v1/scripts/x",
        Some(&oc),
        Some(&vcsrf),
        Some(script.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another session's token");
    let (s, _, v) = send(
        &router,
        "PUT",
        "/api/v1/scripts/x",
        Some(&oc),
        Some(&ocsrf),
        Some(script),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = send(
        &router,
        "POST",
        "/api/v1/tokens",
        Some(&oc),
        Some(&ocsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // ...but may not hand out authority.
    let (s, _, _) = send(
        &router,
        "POST",
        "/api/v1/api-tokens",
        Some(&oc),
        Some(&ocsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = send(&router, "GET", "/api/v1/users", Some(&oc), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let body = json!({ "name": "eve", "password": "pw-of-8-chars", "role": "admin" });
    let (s, _, _) = send(
        &router,
        "POST",
        "/api/v1/users",
        Some(&oc),
        Some(&ocsrf),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Nor use the admin-token endpoint.
    let body = json!({ "name": "eve", "password": "pw-of-8-chars", "role": "admin" });
    let (s, _, _) = send(
        &router,
        "POST",
        "/api/v1/tenants/acme/users",
        Some(&oc),
        Some(&ocsrf),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A bearer token needs no CSRF token (no cookie is sent by a browser
    // cross-site with it), and the API token is a tenant admin.
    let (_, api) = tenant(&router, "other").await;
    let (s, v) = call(&router, "GET", "/api/v1/users", Some(&api), None).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn tenant_admins_manage_users() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    add_user(&router, "acme", "ada", "admin").await;
    let (ac, acsrf) = login(&router, "acme", "ada", "pw-of-8-chars").await;
    let post = |body: Value| {
        let (ac, acsrf, router) = (ac.clone(), acsrf.clone(), router.clone());
        async move {
            send(
                &router,
                "POST",
                "/api/v1/users",
                Some(&ac),
                Some(&acsrf),
                Some(body),
            )
            .await
        }
    };

    let (s, _, v) =
        post(json!({ "name": "bob", "password": "pw-of-8-chars", "role": "viewer" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "bob");
    assert!(v.get("password_hash").is_none(), "{v}");
    let (s, _, v) =
        post(json!({ "name": "bob", "password": "pw-of-8-chars", "role": "viewer" })).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    for bad in [
        json!({ "name": "b b", "password": "pw-of-8-chars", "role": "viewer" }),
        json!({ "name": "c", "password": "short", "role": "viewer" }),
        json!({ "name": "c", "password": "pw-of-8-chars", "role": "root" }),
        json!({ "name": "c" }),
    ] {
        let (s, _, v) = post(bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {v}");
        assert_eq!(v["error"]["code"], "bad_request");
    }

    let (s, _, v) = send(&router, "GET", "/api/v1/users", Some(&ac), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].clone(), u["role"].clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            (json!("ada"), json!("admin")),
            (json!("bob"), json!("viewer"))
        ]
    );

    // Promote bob; his session sees the new role at once.
    let (bc, bcsrf) = login(&router, "acme", "bob", "pw-of-8-chars").await;
    let (s, _, v) = send(
        &router,
        "PATCH",
        "/api/v1/users/bob",
        Some(&ac),
        Some(&acsrf),
        Some(json!({"role": "operator"})),
    )
    .await;
    assert_eq!((s, v["role"].clone()), (StatusCode::OK, json!("operator")));
    let (s, _, _) = send(
        &router,
        "POST",
        "/api/v1/tokens",
        Some(&bc),
        Some(&bcsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // A new password ends his sessions and the old password.
    let (s, _, _) = send(
        &router,
        "PATCH",
        "/api/v1/users/bob",
        Some(&ac),
        Some(&acsrf),
        Some(json!({"password": "new-password-1"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = send(&router, "GET", "/api/v1/runners", Some(&bc), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    login(&router, "acme", "bob", "new-password-1").await;
    let (s, _, _) = send(
        &router,
        "PATCH",
        "/api/v1/users/bob",
        Some(&ac),
        Some(&acsrf),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = send(
        &router,
        "PATCH",
        "/api/v1/users/nobody",
        Some(&ac),
        Some(&acsrf),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // An admin cannot lock themself out.
    let (s, _, _) = send(
        &router,
        "PATCH",
        "/api/v1/users/ada",
        Some(&ac),
        Some(&acsrf),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, _) = send(
        &router,
        "DELETE",
        "/api/v1/users/ada",
        Some(&ac),
        Some(&acsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (s, _, _) = send(
        &router,
        "DELETE",
        "/api/v1/users/bob",
        Some(&ac),
        Some(&acsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = send(
        &router,
        "DELETE",
        "/api/v1/users/bob",
        Some(&ac),
        Some(&acsrf),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Users of another tenant are invisible.
    let (_, other) = tenant(&router, "other").await;
    let (s, _) = call(&router, "DELETE", "/api/v1/users/ada", Some(&other), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&router, "GET", "/api/v1/users", Some(&api), None).await;
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 1));
    // The admin-token endpoint: unknown tenant, and API tokens refused.
    let (s, _) = call(
        &router,
        "POST",
        "/api/v1/tenants/nope/users",
        Some(ADMIN),
        Some(r#"{"name":"x","password":"pw-of-8-chars","role":"admin"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &router,
        "POST",
        "/api/v1/tenants/acme/users",
        Some(&api),
        Some(r#"{"name":"x","password":"pw-of-8-chars","role":"admin"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_dashboard_is_served() {
    let router = app(state());
    let resp = router
        .clone()
        .oneshot(Request::builder().uri("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/ui/app.js")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (s, _, v) = send(&router, "GET", "/ui/nope.js", None, None, None).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_the_name_for_a_while() {
    let router = app(state());
    tenant(&router, "acme").await;
    add_user(&router, "acme", "guessme", "viewer").await;
    let attempt = |password: &'static str| {
        let router = router.clone();
        async move {
            let body = json!({ "tenant": "acme", "name": "guessme", "password": password });
            let (st, _, v) = send(&router, "POST", "/api/v1/session", None, None, Some(body)).await;
            (st, v)
        }
    };
    for _ in 0..10 {
        assert_eq!(attempt("wrong-guess").await.0, StatusCode::UNAUTHORIZED);
    }
    // Now even the right password is refused, with a clear reason.
    let (st, v) = attempt("pw-of-8-chars").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    // Other names are not affected.
    add_user(&router, "acme", "other", "viewer").await;
    login(&router, "acme", "other", "pw-of-8-chars").await;
}

/// A terminal WebSocket's upgrade request as a browser sends it: the
/// cookie, `Host` and `Origin`, no token (status, JSON error).
async fn terminal_get(
    router: &Router,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .header("Host", "tether.example:8443");
    if let Some(c) = cookie {
        req = req.header(COOKIE, format!("tether_session={c}"));
    }
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The terminal WebSockets take the session cookie, but only from this
/// server's own page (Origin) and not from a viewer; opening one by POST
/// needs the CSRF header like any change. Past these checks the request
/// reaches the handler: a plain GET is then refused for not being an
/// upgrade, a POST for a runner that is not connected.
#[tokio::test]
async fn terminal_websockets_take_the_cookie_from_this_servers_page_only() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    let (runner_id, _) = runner(&router, &api).await;
    add_user(&router, "acme", "otto", "operator").await;
    add_user(&router, "acme", "vic", "viewer").await;
    let (otto, otto_csrf) = login(&router, "acme", "otto", "pw-of-8-chars").await;
    let (vic, vic_csrf) = login(&router, "acme", "vic", "pw-of-8-chars").await;
    let ours = Some("https://tether.example:8443");

    for path in [
        format!("/api/v1/runners/{runner_id}/terminal"),
        "/api/v1/terminals/tm_000000000000/attach?offset=0".to_owned(),
    ] {
        // The operator's cookie from our page passes authentication.
        let got = terminal_get(&router, &path, Some(&otto), ours).await;
        let want = if path.contains("attach") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(got.0, want, "{path}: {}", got.1);
        // No credential at all.
        let got = terminal_get(&router, &path, None, ours).await;
        assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
        // A viewer: refused with the reason.
        let got = terminal_get(&router, &path, Some(&vic), ours).await;
        assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            got.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("viewer"),
            "{}",
            got.1
        );
        // Another site's page (or none) with the operator's cookie.
        for origin in [
            Some("https://evil.example"),
            Some("https://tether.example.evil.example:8443"),
            Some("null"),
            None,
        ] {
            let got = terminal_get(&router, &path, Some(&otto), origin).await;
            assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
            assert!(
                got.1["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Origin"),
                "{origin:?}: {}",
                got.1
            );
        }
        // An expired or made-up session.
        let got = terminal_get(&router, &path, Some("tses_00"), ours).await;
        assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    }

    // Opening by POST: CSRF header and a role above viewer.
    let path = format!("/api/v1/runners/{runner_id}/terminals");
    let body = json!({"cols": 100, "rows": 30});
    let (st, _, v) = send(
        &router,
        "POST",
        &path,
        Some(&otto),
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, _, v) = send(
        &router,
        "POST",
        &path,
        Some(&vic),
        Some(&vic_csrf),
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, _, v) = send(
        &router,
        "POST",
        &path,
        Some(&otto),
        Some(&otto_csrf),
        Some(body),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "runner_unreachable");
}
