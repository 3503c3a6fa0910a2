//! Tenants, enrollment tokens and runners through the REST API.

use crate::util::*;

#[tokio::test]
async fn healthz_and_unknown_routes() {
    let router = app(state());
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
    assert_error(
        &call(&router, "GET", "/api/v1/nope", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        // `/` is the dashboard now; any other unknown path is a JSON 404.
        &call(&router, "GET", "/nope", Some(ADMIN), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let wrong_method = call(&router, "PUT", "/api/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(wrong_method.0, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.1["error"]["code"].is_string());
}

#[tokio::test]
async fn tokens_are_checked_and_kept_in_their_lane() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    let tenant_paths = [
        ("GET", "/api/v1/runners"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/metrics/prometheus"),
    ];
    for (method, path) in tenant_paths {
        assert_error(
            &call(&router, method, path, None, None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &call(&router, method, path, Some("tapi_nope"), None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &call(&router, method, path, Some("garbage"), None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &call(&router, method, path, Some(ADMIN), None).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    for (method, path) in [("GET", "/api/v1/tenants"), ("POST", "/api/v1/tenants")] {
        assert_error(
            &call(&router, method, path, None, None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &call(&router, method, path, Some(&api), Some(r#"{"name":"x"}"#)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    // A runner credential is not an API token.
    let (_, credential) = runner(&router, &api).await;
    assert_error(
        &call(&router, "GET", "/api/v1/runners", Some(&credential), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    for body in ["{nope", "[1]", r#"{"name": 5}"#, "{}"] {
        assert_error(
            &call(&router, "POST", "/api/v1/tenants", Some(ADMIN), Some(body)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_error(
        &call(
            &router,
            "POST",
            "/api/v1/tenants",
            Some(ADMIN),
            Some(r#"{"name":"  "}"#),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    for body in [
        r#"{"ttl_secs": -1}"#,
        r#"{"ttl_secs": 0}"#,
        r#"{"ttl_secs": "1h"}"#,
        "{",
    ] {
        assert_error(
            &call(&router, "POST", "/api/v1/tokens", Some(&api), Some(body)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    for body in ["", "{}", r#"{"token": "tenr_x"}"#, "not json"] {
        assert_error(
            &call(&router, "POST", "/api/v1/enroll", None, Some(body)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // Bodies are optional where every field is.
    let (status, v) = call(&router, "POST", "/api/v1/tokens", Some(&api), None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = call(&router, "POST", "/api/v1/api-tokens", Some(&api), None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert!(v["token"].as_str().unwrap().starts_with("tapi_"));
}

#[tokio::test]
async fn tenants_are_created_once_per_name() {
    let router = app(state());
    let (id, api) = tenant(&router, "acme").await;
    assert!(id.starts_with("tn_") && api.starts_with("tapi_"));
    assert_error(
        &call(
            &router,
            "POST",
            "/api/v1/tenants",
            Some(ADMIN),
            Some(r#"{"name":"acme"}"#),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    let (status, v) = call(&router, "GET", "/api/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "acme");
    assert!(v[0]["created_at"].as_str().unwrap().ends_with('Z'));
    // A second API token works like the first.
    let (_, v) = call(
        &router,
        "POST",
        "/api/v1/api-tokens",
        Some(&api),
        Some(r#"{"label":"ci"}"#),
    )
    .await;
    assert_eq!(v["label"], "ci");
    let (status, _) = call(&router, "GET", "/api/v1/runners", v["token"].as_str(), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn enrollment_tokens_are_one_time_and_revocable() {
    let router = app(state());
    let (tenant_id, api) = tenant(&router, "acme").await;
    let (token_id, token) =
        enrollment_token(&router, &api, r#"{"ttl_secs": 600, "label": "rack 4"}"#).await;
    assert!(token.starts_with("tenr_") && token_id.starts_with("et_"));

    let (status, v) = call(
        &router,
        "POST",
        "/api/v1/enroll",
        None,
        Some(&enroll_body(&token)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["tenant_id"], tenant_id.as_str());
    assert!(v["runner_id"].as_str().unwrap().starts_with("rn_"));
    assert!(v["credential"].as_str().unwrap().starts_with("trun_"));
    let again = call(
        &router,
        "POST",
        "/api/v1/enroll",
        None,
        Some(&enroll_body(&token)),
    )
    .await;
    assert_error(&again, StatusCode::UNAUTHORIZED, "token_used");
    assert_error(
        &call(
            &router,
            "POST",
            "/api/v1/enroll",
            None,
            Some(&enroll_body("tenr_unknown")),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    let (revoked_id, revoked) = enrollment_token(&router, &api, "{}").await;
    let (status, v) = call(
        &router,
        "DELETE",
        &format!("/api/v1/tokens/{revoked_id}"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("revoked")),
        "{v}"
    );
    assert!(v["revoked_at"].is_string());
    assert_error(
        &call(
            &router,
            "POST",
            "/api/v1/enroll",
            None,
            Some(&enroll_body(&revoked)),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "token_revoked",
    );

    let (_, short) = enrollment_token(&router, &api, r#"{"ttl_secs": 1}"#).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_error(
        &call(
            &router,
            "POST",
            "/api/v1/enroll",
            None,
            Some(&enroll_body(&short)),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    );

    let (_, list) = call(&router, "GET", "/api/v1/tokens", Some(&api), None).await;
    let states: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["used", "revoked", "expired"]);
    assert_eq!(list[0]["label"], "rack 4");
    for key in [
        "id",
        "label",
        "created_at",
        "expires_at",
        "used_at",
        "revoked_at",
        "state",
    ] {
        assert!(
            list[0].get(key).is_some(),
            "token object lacks {key}: {}",
            list[0]
        );
    }
}

#[tokio::test]
async fn concurrent_enrollments_with_one_token_admit_one_runner() {
    let router = app(state());
    let (_, api) = tenant(&router, "acme").await;
    let (_, token) = enrollment_token(&router, &api, "{}").await;
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let router = router.clone();
            let body = enroll_body(&token);
            tokio::spawn(async move {
                call(&router, "POST", "/api/v1/enroll", None, Some(&body))
                    .await
                    .0
            })
        })
        .collect();
    let mut created = 0;
    for a in attempts {
        if a.await.unwrap() == StatusCode::CREATED {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let (_, runners) = call(&router, "GET", "/api/v1/runners", Some(&api), None).await;
    assert_eq!(runners.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn another_tenant_gets_not_found_everywhere() {
    let router = app(state());
    let (_, api_a) = tenant(&router, "a").await;
    let (_, api_b) = tenant(&router, "b").await;
    let (runner_id, _) = runner(&router, &api_a).await;
    let (token_id, _) = enrollment_token(&router, &api_a, "{}").await;

    for (method, path) in [
        ("GET", format!("/api/v1/runners/{runner_id}")),
        ("GET", format!("/api/v1/runners/{runner_id}/health")),
        ("POST", format!("/api/v1/runners/{runner_id}/revoke")),
        ("POST", format!("/api/v1/runners/{runner_id}/ping")),
        ("DELETE", format!("/api/v1/tokens/{token_id}")),
        ("GET", format!("/api/v1/runners/{runner_id}/metrics")),
        (
            "GET",
            format!("/api/v1/runners/{runner_id}/metrics?since=7d&resolution=1h"),
        ),
        ("GET", format!("/api/v1/runners/{runner_id}/metrics/latest")),
        ("GET", format!("/api/v1/runners/{runner_id}/fingerprint")),
        ("GET", format!("/api/v1/runners/{runner_id}/drift")),
        ("GET", format!("/api/v1/runners/{runner_id}/drift?since=1h")),
    ] {
        assert_error(
            &call(&router, method, &path, Some(&api_b), None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    for path in ["/api/v1/runners", "/api/v1/tokens"] {
        let (status, v) = call(&router, "GET", path, Some(&api_b), None).await;
        assert_eq!((status, v), (StatusCode::OK, json!([])));
    }
    // Nothing B tried changed A's objects.
    let (_, r) = call(
        &router,
        "GET",
        &format!("/api/v1/runners/{runner_id}"),
        Some(&api_a),
        None,
    )
    .await;
    assert_eq!(
        (r["health"].as_str(), r["revoked_at"].is_null()),
        (Some("unreachable"), true)
    );
    let (_, tokens) = call(&router, "GET", "/api/v1/tokens", Some(&api_a), None).await;
    let token = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(token["state"], "unused");
}

#[tokio::test]
async fn runner_object_and_offline_behaviour() {
    let router = app(state());
    let (tenant_id, api) = tenant(&router, "acme").await;
    let (runner_id, credential) = runner(&router, &api).await;
    let (status, r) = call(
        &router,
        "GET",
        &format!("/api/v1/runners/{runner_id}"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for key in [
        "id",
        "tenant_id",
        "name",
        "health",
        "version",
        "arch",
        "os",
        "protocol",
        "created_at",
        "last_seen",
        "connected_since",
        "revoked_at",
    ] {
        assert!(r.get(key).is_some(), "runner lacks {key}: {r}");
    }
    assert_eq!(r["tenant_id"], tenant_id.as_str());
    assert_eq!(
        (r["name"].as_str(), r["health"].as_str()),
        (Some("edge-01"), Some("unreachable"))
    );
    assert_error(
        &call(
            &router,
            "POST",
            &format!("/api/v1/runners/{runner_id}/ping"),
            Some(&api),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "runner_unreachable",
    );
    let (_, history) = call(
        &router,
        "GET",
        &format!("/api/v1/runners/{runner_id}/health"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(history, json!([]));

    // The connect endpoint authenticates before any upgrade.
    let connect = |token: Option<String>| {
        let router = router.clone();
        async move {
            call(
                &router,
                "GET",
                protocol::RUNNER_CONNECT_PATH,
                token.as_deref(),
                None,
            )
            .await
        }
    };
    assert_error(
        &connect(None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &connect(Some("trun_unknown".into())).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &connect(Some(credential.clone())).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    let (status, r) = call(
        &router,
        "POST",
        &format!("/api/v1/runners/{runner_id}/revoke"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(
        (status, r["health"].as_str()),
        (StatusCode::OK, Some("revoked"))
    );
    assert!(r["revoked_at"].is_string());
    assert_error(
        &connect(Some(credential)).await,
        StatusCode::FORBIDDEN,
        "runner_revoked",
    );
    let (_, history) = call(
        &router,
        "GET",
        &format!("/api/v1/runners/{runner_id}/health"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(history[0]["health"], "revoked");
    assert!(history[0]["at"].is_string() && history[0]["reason"].is_string());
}
