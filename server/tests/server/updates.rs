//! Releases and the update policy.

use crate::util::*;
use axum::extract::FromRef;

#[tokio::test]
async fn release_uploads_policies_and_groups_refuse_bad_input() {
    let dir = std::env::temp_dir().join(format!("tether-releases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = state()
        .with_release_store(tether_server::db::sqlite::release_dir(&dir))
        .with_releases(tether_server::updates::ReleaseConfig {
            install_keys: None,
            public_url: Some("https://tether.example".into()),
            ..Default::default()
        });
    let router = app(state);
    let (_, api) = tenant(&router, "acme").await;

    // Uploads need the admin token.
    let path = "/api/v1/releases/0.2.0/tether-x86_64";
    assert_error(
        &call(&router, "POST", path, Some(&api), Some("bin")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &call(&router, "POST", path, None, Some("bin")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Bad versions and names change nothing.
    for bad in [
        "/api/v1/releases/v1/tether-x86_64",
        "/api/v1/releases/0.2.0/.hidden",
        "/api/v1/releases/0.2.0/a%2Fb",
        "/api/v1/releases/..%2F..%2Fetc/passwd",
    ] {
        let got = call(&router, "POST", bad, Some(ADMIN), Some("x")).await;
        assert!(
            got.0 == StatusCode::BAD_REQUEST || got.0 == StatusCode::NOT_FOUND,
            "{bad}: {got:?}"
        );
    }
    assert_error(
        &call(
            &router,
            "POST",
            "/api/v1/releases/0.2.0/manifest.json",
            Some(ADMIN),
            Some("{\"version\":\"9.9.9\"}"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let (_, none) = call(&router, "GET", "/api/v1/releases", Some(&api), None).await;
    assert_eq!(
        none,
        serde_json::json!([]),
        "refused uploads leave no release"
    );

    let (st, _) = call(&router, "POST", path, Some(ADMIN), Some("binary")).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, list) = call(&router, "GET", "/api/v1/releases", Some(&api), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list[0]["version"], "0.2.0");
    assert_eq!(list[0]["files"][0]["size"], 6);

    // Policies: only existing releases, canary within 0..=100.
    assert_error(
        &call(
            &router,
            "PUT",
            "/api/v1/update-policy",
            Some(&api),
            Some(r#"{"version":"9.9.9"}"#),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &call(
            &router,
            "PUT",
            "/api/v1/update-policy",
            Some(&api),
            Some(r#"{"version":"0.2.0","canary_percent":101}"#),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &call(
            &router,
            "PUT",
            "/api/v1/update-policy",
            Some(ADMIN),
            Some(r#"{"version":"0.2.0"}"#),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (st, v) = call(
        &router,
        "PUT",
        "/api/v1/update-policy",
        Some(&api),
        Some(r#"{"version":"0.2.0","canary_percent":10,"group":"edge"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v[0]["canary_percent"], 10);
    assert_eq!(v[0]["group"], "edge");
    let (st, v) = call(
        &router,
        "PUT",
        "/api/v1/update-policy",
        Some(&api),
        Some(r#"{"version":null,"group":"edge"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, serde_json::json!([]));

    // Groups: only this tenant's runners.
    assert_error(
        &call(
            &router,
            "PUT",
            "/api/v1/runners/rn_nope/group",
            Some(&api),
            Some(r#"{"group":"edge"}"#),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn canary_share_selects_a_stable_subset() {
    let dir = std::env::temp_dir().join(format!("tether-canary-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("0.2.0")).unwrap();
    let state = state()
        .with_release_store(tether_server::db::sqlite::release_dir(&dir))
        .with_releases(tether_server::updates::ReleaseConfig {
            ..Default::default()
        });
    let router = app(state.clone());
    let (tenant_id, api) = tenant(&router, "acme").await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(runner(&router, &api).await.0);
    }
    let (st, _) = call(
        &router,
        "PUT",
        "/api/v1/update-policy",
        Some(&api),
        Some(r#"{"version":"0.2.0","canary_percent":25}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let mut chosen: Vec<bool> = Vec::new();
    for id in &ids {
        let v = tether_server::updates::desired_version(&FromRef::from_ref(&state), &tenant_id, id)
            .await
            .unwrap();
        chosen.push(v.is_some());
    }
    let n = chosen.iter().filter(|c| **c).count();
    assert!(n > 0 && n < 40, "25% of 40 runners, got {n}");
    for (id, c) in ids.iter().zip(&chosen) {
        assert_eq!(*c, tether_server::updates::bucket(id) < 25);
    }
    // Everyone once the share is 100.
    let (st, _) = call(
        &router,
        "PUT",
        "/api/v1/update-policy",
        Some(&api),
        Some(r#"{"version":"0.2.0"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    for id in &ids {
        assert!(tether_server::updates::desired_version(
            &FromRef::from_ref(&state),
            &tenant_id,
            id
        )
        .await
        .unwrap()
        .is_some());
    }
    // A group policy beats the tenant's.
    let (st, _) = call(
        &router,
        "PUT",
        &format!("/api/v1/runners/{}/group", ids[0]),
        Some(&api),
        Some(r#"{"group":"lab"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(
        &router,
        "PUT",
        "/api/v1/update-policy",
        Some(&api),
        Some(r#"{"version":"0.2.0","group":"lab","canary_percent":0}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(tether_server::updates::desired_version(
        &FromRef::from_ref(&state),
        &tenant_id,
        &ids[0]
    )
    .await
    .unwrap()
    .is_none());
    assert!(tether_server::updates::desired_version(
        &FromRef::from_ref(&state),
        &tenant_id,
        &ids[1]
    )
    .await
    .unwrap()
    .is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
