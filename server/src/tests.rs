//! Tests of the whole server: the REST API through `app(state)` without a
//! socket, and the runner WebSocket over a real loopback socket (plain HTTP,
//! and once over the dev-CA TLS the runners use).
//!
//! Each test gets its own in-memory databases (control plane and metrics)
//! and short timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tether::protocol::{self, decode_control, encode_control, Decoded, Hello, Message, Pong};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tower::ServiceExt;

use crate::app::{app, AppState, Tuning};
use crate::metrics_store::{MetricStore, Retention};
use crate::registry::CloseOrder;
use crate::storage::Storage;

const ADMIN: &str = "tadm_test-admin-token";
const WAIT: Duration = Duration::from_secs(5);

fn tuning() -> Tuning {
    Tuning {
        hello_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        send_timeout: Duration::from_secs(2),
        close_wait: Duration::from_millis(500),
        metrics_flush: Duration::from_millis(50),
        metrics_ack_every: Duration::from_millis(200),
        docker_timeout: Duration::from_millis(700),
        session_ttl: Duration::from_secs(3600),
    }
}

fn state() -> AppState {
    state_with(Retention::default())
}

fn state_with(retention: Retention) -> AppState {
    AppState::new(
        Arc::new(Storage::open_in_memory().unwrap()),
        Arc::new(MetricStore::open_in_memory(retention).unwrap()),
        Arc::new(crate::log_store::LogStore::open_in_memory(Default::default()).unwrap()),
        Arc::new(crate::job_store::JobStore::open_in_memory().unwrap()),
        Arc::new(crate::secrets::SecretBox::from_key([9; 32])),
        ADMIN,
        tuning(),
    )
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{method} {path}: not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{:?}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{:?}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{:?}",
        got.1
    );
}

/// A tenant: (id, api token).
async fn tenant(router: &Router, name: &str) -> (String, String) {
    let (status, v) = call(
        router,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(&json!({ "name": name }).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["api_token"].as_str().unwrap().to_owned(),
    )
}

/// An enrollment token: (id, token).
async fn enrollment_token(router: &Router, api: &str, body: &str) -> (String, String) {
    let (status, v) = call(router, "POST", "/api/v1/tokens", Some(api), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

fn enroll_body(token: &str) -> String {
    json!({ "token": token, "hostname": "edge-01", "arch": "x86_64", "os": "linux", "version": "0.1.0" }).to_string()
}

/// Enroll a runner: (runner id, credential).
async fn runner(router: &Router, api: &str) -> (String, String) {
    let (_, token) = enrollment_token(router, api, "{}").await;
    let (status, v) = call(
        router,
        "POST",
        "/api/v1/enroll",
        None,
        Some(&enroll_body(&token)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["runner_id"].as_str().unwrap().to_owned(),
        v["credential"].as_str().unwrap().to_owned(),
    )
}

// ---- REST ------------------------------------------------------------------------

#[tokio::test]
async fn healthz_and_unknown_routes() {
    let router = app(state());
    let (status, v) = call(&router, "GET", "/healthz", None, None).await;
    assert_eq!(
        (status, v),
        (
            StatusCode::OK,
            json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") })
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

// ---- the runner WebSocket over a socket -----------------------------------------

struct Server {
    state: AppState,
    router: Router,
    addr: SocketAddr,
}

async fn server() -> Server {
    server_with(state(), None).await
}

async fn server_with(state: AppState, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(crate::serve::accept_loop(
        listener,
        tls,
        router.clone(),
        state.edge.clone(),
        std::future::pending(),
    ));
    Server {
        state,
        router,
        addr,
    }
}

type Ws<S = TcpStream> = WebSocketStream<S>;

async fn ws_connect_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    scheme: &str,
    addr: SocketAddr,
    credential: &str,
) -> Result<Ws<S>, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{scheme}://{addr}{}", protocol::RUNNER_CONNECT_PATH)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
}

async fn ws_connect(
    addr: SocketAddr,
    credential: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    ws_connect_over(
        TcpStream::connect(addr).await.unwrap(),
        "ws",
        addr,
        credential,
    )
    .await
}

fn hello(protocols: Vec<u16>, heartbeat_ms: u64) -> String {
    encode_control(
        1,
        Message::Hello(Hello {
            protocol: protocols,
            runner_version: "0.9.0".into(),
            arch: "aarch64".into(),
            os: "linux".into(),
            hostname: "edge-07".into(),
            heartbeat_ms,
            capabilities: vec![],
            open_channels: vec![],
            metrics_interval_ms: 5000,
        }),
    )
}

async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> WsMessage {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next control message (skipping WebSocket pings/pongs).
async fn next_control<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> protocol::Envelope {
    loop {
        match next(ws).await {
            WsMessage::Text(t) => match decode_control(t.as_str()) {
                Ok(Decoded::Known(env)) => return env,
                other => panic!("undecodable control message {t}: {other:?}"),
            },
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("expected a control message, got {other:?}"),
        }
    }
}

/// Read until the server's close frame: (code, reason).
async fn closed_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> (u16, String) {
    loop {
        match next(ws).await {
            WsMessage::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            WsMessage::Close(None) => panic!("close frame without a code"),
            _ => {}
        }
    }
}

/// Connect and finish the hello exchange.
async fn online(server: &Server, credential: &str, heartbeat_ms: u64) -> Ws {
    let mut ws = ws_connect(server.addr, credential).await.unwrap();
    ws.send(WsMessage::text(hello(vec![1], heartbeat_ms)))
        .await
        .unwrap();
    let welcome = next_control(&mut ws).await;
    assert_eq!(welcome.id, 1);
    assert!(matches!(welcome.body, Message::Welcome(_)), "{welcome:?}");
    ws
}

async fn health_of(server: &Server, api: &str, runner_id: &str) -> Vec<(String, String)> {
    let (_, v) = call(
        &server.router,
        "GET",
        &format!("/api/v1/runners/{runner_id}/health"),
        Some(api),
        None,
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["health"].as_str().unwrap().to_owned(),
                h["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(health: &str, reason: &str) -> (String, String) {
    (health.to_owned(), reason.to_owned())
}

/// Health changes are recorded a moment after the socket event; poll briefly.
async fn eventually_health(server: &Server, api: &str, runner_id: &str, want: &[(String, String)]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = health_of(server, api, runner_id).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health history {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hello_welcome_ping_and_clean_close() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;

    let mut ws = ws_connect(s.addr, &credential).await.unwrap();
    ws.send(WsMessage::text(hello(vec![0, 1, 7], 5000)))
        .await
        .unwrap();
    let welcome = next_control(&mut ws).await;
    let Message::Welcome(w) = welcome.body else {
        panic!("{welcome:?}")
    };
    assert_eq!(
        (w.protocol, w.runner_id.as_str(), w.acks.len()),
        (1, runner_id.as_str(), 0)
    );
    assert_eq!(w.server_version, env!("CARGO_PKG_VERSION"));

    let (_, r) = call(
        &s.router,
        "GET",
        &format!("/api/v1/runners/{runner_id}"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(r["health"], "active");
    // The hostname in hello is the reported name; the name stays the
    // one given at enrollment.
    assert_eq!(
        (
            r["name"].as_str(),
            r["reported_name"].as_str(),
            r["version"].as_str(),
            r["arch"].as_str()
        ),
        (
            Some("edge-01"),
            Some("edge-07"),
            Some("0.9.0"),
            Some("aarch64")
        )
    );
    assert_eq!(r["protocol"], 1);
    assert!(r["connected_since"].is_string() && r["last_seen"].is_string());

    // A WebSocket Ping is answered with a Pong at once, with nothing else sent.
    ws.send(WsMessage::Ping(b"hb".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::Pong(b"hb".to_vec().into()));

    // The runner's own `ping` gets the server's `pong` with the same id.
    ws.send(WsMessage::text(encode_control(
        42,
        Message::Ping(protocol::Ping { sent_ms: 5 }),
    )))
    .await
    .unwrap();
    let pong = next_control(&mut ws).await;
    assert_eq!(pong.id, 42);
    assert!(
        matches!(pong.body, Message::Pong(Pong { sent_ms: 5, .. })),
        "{pong:?}"
    );

    // Unknown message types and frame kinds are ignored; the connection stays up.
    ws.send(WsMessage::text(
        r#"{"type":"from_the_future","id":3,"x":1}"#,
    ))
    .await
    .unwrap();
    ws.send(WsMessage::binary(vec![99u8; 16])).await.unwrap();

    // POST /ping routes through the connection; the runner answers.
    let router = s.router.clone();
    let path = format!("/api/v1/runners/{runner_id}/ping");
    let api2 = api.clone();
    let ping = tokio::spawn(async move { call(&router, "POST", &path, Some(&api2), None).await });
    let request = next_control(&mut ws).await;
    let Message::Ping(p) = request.body else {
        panic!("{request:?}")
    };
    let pong = Message::Pong(Pong {
        sent_ms: p.sent_ms,
        now_ms: 1234,
        version: "0.9.0".into(),
    });
    ws.send(WsMessage::text(encode_control(request.id, pong)))
        .await
        .unwrap();
    let (status, v) = ping.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["runner_version"].as_str(), v["runner_time_ms"].as_u64()),
        (Some("0.9.0"), Some(1234))
    );
    assert!(v["rtt_ms"].as_u64().is_some());

    // No answer: 504 runner_timeout.
    let ping = call(
        &s.router,
        "POST",
        &format!("/api/v1/runners/{runner_id}/ping"),
        Some(&api),
        None,
    )
    .await;
    assert_error(&ping, StatusCode::GATEWAY_TIMEOUT, "runner_timeout");

    ws.close(None).await.unwrap();
    eventually_health(
        &s,
        &api,
        &runner_id,
        &[
            pair("active", "connected"),
            pair("unreachable", "connection closed"),
        ],
    )
    .await;
    let (_, r) = call(
        &s.router,
        "GET",
        &format!("/api/v1/runners/{runner_id}"),
        Some(&api),
        None,
    )
    .await;
    assert!(r["connected_since"].is_null());
}

#[tokio::test]
async fn a_dropped_tcp_connection_is_unreachable_at_once() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let ws = online(&s, &credential, 60_000).await;
    drop(ws); // no close frame: the TCP connection just goes
    eventually_health(
        &s,
        &api,
        &runner_id,
        &[
            pair("active", "connected"),
            pair("unreachable", "connection lost"),
        ],
    )
    .await;
}

#[tokio::test]
async fn protocol_violations_close_4004_with_an_error() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let violations: Vec<WsMessage> = vec![
        WsMessage::text("not json"),
        WsMessage::text(r#"{"type":"ping","id":2}"#),
        WsMessage::binary(vec![1u8; 5]),
        WsMessage::binary({
            let mut f = vec![1u8, 1, 0, 1];
            f.extend_from_slice(&[0; 12]);
            f
        }),
        WsMessage::text(hello(vec![1], 5000)),
    ];
    for bad in violations {
        let mut ws = online(&s, &credential, 5000).await;
        ws.send(bad.clone()).await.unwrap();
        let err = next_control(&mut ws).await;
        let Message::Error(e) = err.body else {
            panic!("{bad:?}: {err:?}")
        };
        assert_eq!(e.code, "protocol_violation");
        let (code, reason) = closed_with(&mut ws).await;
        assert_eq!(code, protocol::close::PROTOCOL_VIOLATION, "{bad:?}");
        assert!(!reason.is_empty() && reason.len() <= 123, "{reason:?}");
    }
    let history = health_of(&s, &api, &runner_id).await;
    assert_eq!(
        history.last(),
        Some(&pair("unreachable", "protocol violation"))
    );

    // Before hello, too.
    let mut ws = ws_connect(s.addr, &credential).await.unwrap();
    ws.send(WsMessage::text("[]")).await.unwrap();
    assert!(matches!(
        next_control(&mut ws).await.body,
        Message::Error(_)
    ));
    assert_eq!(
        closed_with(&mut ws).await.0,
        protocol::close::PROTOCOL_VIOLATION
    );
}

#[tokio::test]
async fn hello_rules_unsupported_protocol_and_timeout() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;

    let mut ws = ws_connect(s.addr, &credential).await.unwrap();
    ws.send(WsMessage::text(hello(vec![7, 8], 5000)))
        .await
        .unwrap();
    let err = next_control(&mut ws).await;
    let Message::Error(e) = err.body else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, "unsupported_protocol");
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, protocol::close::UNSUPPORTED_PROTOCOL);
    assert!(
        reason.contains('1'),
        "the reason names the versions spoken: {reason}"
    );

    let mut ws = ws_connect(s.addr, &credential).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(closed_with(&mut ws).await.0, protocol::close::HELLO_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Neither ever made the runner active.
    assert!(health_of(&s, &api, &runner_id).await.is_empty());
}

#[tokio::test]
async fn silence_trips_the_watchdog() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let mut ws = online(&s, &credential, 200).await; // limit 2.5 × 200 ms
    let started = std::time::Instant::now();
    assert_eq!(closed_with(&mut ws).await.0, protocol::close::WATCHDOG);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    eventually_health(
        &s,
        &api,
        &runner_id,
        &[
            pair("active", "connected"),
            pair("unreachable", "no heartbeat"),
        ],
    )
    .await;

    // Pinging keeps a connection alive past the limit.
    let mut ws = online(&s, &credential, 200).await;
    for _ in 0..8 {
        ws.send(WsMessage::Ping(Default::default())).await.unwrap();
        assert!(matches!(next(&mut ws).await, WsMessage::Pong(_)));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (_, r) = call(
        &s.router,
        "GET",
        &format!("/api/v1/runners/{runner_id}"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(r["health"], "active");
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let mut first = online(&s, &credential, 60_000).await;
    let mut second = online(&s, &credential, 60_000).await;
    assert_eq!(closed_with(&mut first).await.0, protocol::close::REPLACED);
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The old connection's end did not make the runner unreachable.
    assert_eq!(
        health_of(&s, &api, &runner_id).await,
        [pair("active", "connected")]
    );
    second
        .send(WsMessage::Ping(Default::default()))
        .await
        .unwrap();
    assert!(matches!(next(&mut second).await, WsMessage::Pong(_)));
}

#[tokio::test]
async fn revoking_drops_the_connection_and_refuses_the_next() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let mut ws = online(&s, &credential, 60_000).await;
    let (status, _) = call(
        &s.router,
        "POST",
        &format!("/api/v1/runners/{runner_id}/revoke"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (protocol::close::REVOKED, "runner revoked")
    );
    match ws_connect(s.addr, &credential).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        health_of(&s, &api, &runner_id).await,
        [pair("active", "connected"), pair("revoked", "revoked")]
    );
}

#[tokio::test]
async fn oversized_messages_close_1009() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (_, credential) = runner(&s.router, &api).await;
    let mut ws = online(&s, &credential, 60_000).await;
    let big = format!(
        r#"{{"type":"x","id":1,"pad":"{}"}}"#,
        "y".repeat(protocol::MAX_WS_MESSAGE)
    );
    // The server may close before reading it all; a failed send is fine.
    let _ = ws.send(WsMessage::text(big)).await;
    assert_eq!(closed_with(&mut ws).await.0, protocol::close::TOO_BIG);
}

#[tokio::test]
async fn shutdown_closes_every_runner_with_1001() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (_, credential2) = runner(&s.router, &api).await;
    let mut a = online(&s, &credential, 60_000).await;
    let mut b = online(&s, &credential2, 60_000).await;
    let order = CloseOrder {
        code: protocol::close::GOING_AWAY,
        reason: "server shutting down",
    };
    assert_eq!(s.state.registry.close_all(order), 2);
    assert_eq!(
        closed_with(&mut a).await,
        (1001, "server shutting down".to_owned())
    );
    assert_eq!(closed_with(&mut b).await.0, 1001);
    drop((a, b));
    assert_eq!(s.state.registry.wait_idle(WAIT).await, 0);
    // Health stays as stored; the next start records "server restarted".
    assert_eq!(
        health_of(&s, &api, &runner_id).await,
        [pair("active", "connected")]
    );
    assert_eq!(s.state.health.server_restarted().unwrap(), 2);
}

#[tokio::test]
async fn sse_streams_this_tenants_health_changes() {
    let s = server().await;
    let (_, api_a) = tenant(&s.router, "a").await;
    let (_, api_b) = tenant(&s.router, "b").await;
    let (runner_a, credential_a) = runner(&s.router, &api_a).await;
    let (_, credential_b) = runner(&s.router, &api_b).await;

    let req = Request::get("/api/v1/events")
        .header("Authorization", format!("Bearer {api_a}"))
        .body(Body::empty())
        .unwrap();
    let resp = s.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.into_body().into_data_stream();

    let ws_b = online(&s, &credential_b, 60_000).await; // tenant B: must not show up
    let ws_a = online(&s, &credential_a, 60_000).await;
    let mut text = String::new();
    while !text.contains("\"active\"") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains("event: health"), "{text}");
    assert!(text.contains(&runner_a), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (
            v["runner_id"].as_str(),
            v["health"].as_str(),
            v["reason"].as_str()
        ),
        (Some(runner_a.as_str()), Some("active"), Some("connected"))
    );
    assert!(v["at"].is_string());
    assert_eq!(
        text.matches("event: health").count(),
        1,
        "only tenant A's change: {text}"
    );
    drop((ws_a, ws_b));
}

#[tokio::test]
async fn runners_connect_over_the_dev_ca_tls() {
    let dir = std::env::temp_dir().join(format!("tether-e2e-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = crate::tls::ensure_dev_certs(&dir).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        crate::tls::server_config(&certs.cert, &certs.key).unwrap(),
    );
    let s = server_with(state(), Some(acceptor)).await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (_, credential) = runner(&s.router, &api).await;

    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(&certs.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for name in ["localhost", "127.0.0.1"] {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let tls = connector.connect(server_name, tcp).await.unwrap();
        let mut ws = ws_connect_over(tls, "wss", s.addr, &credential)
            .await
            .unwrap();
        ws.send(WsMessage::text(hello(vec![1], 5000)))
            .await
            .unwrap();
        assert!(matches!(
            next_control(&mut ws).await.body,
            Message::Welcome(_)
        ));
        ws.send(WsMessage::Ping(Default::default())).await.unwrap();
        assert!(matches!(next(&mut ws).await, WsMessage::Pong(_)));
    }
    // A silent client does not hold up anyone else.
    let _silent = TcpStream::connect(s.addr).await.unwrap();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert!(ws_connect_over(tls, "wss", s.addr, &credential)
        .await
        .is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- host telemetry: metrics and fingerprints -----------------------------------

use tether::fingerprint::{Fingerprint, Listener};
use tether::metrics::wire::{push_to_batch, Encoder, SeriesSource, Unit, Visitor};
use tether::protocol::{FingerprintReport, FrameHeader, FrameKind, StreamTag, Welcome};

/// A sample for the encoder: (name, unit, scale, value) in schema order.
struct TestSample {
    ts: u64,
    series: Vec<(&'static str, Unit, f64, Option<i64>)>,
}

impl SeriesSource for TestSample {
    fn timestamp_ms(&self) -> u64 {
        self.ts
    }
    fn for_each_series(&self, f: Visitor<'_>) {
        for (n, u, s, v) in &self.series {
            f(n, *u, *s, *v);
        }
    }
}

/// A small host: cpu.busy = i % 10 + 10 (percent × 100 → 0.10 … 0.19),
/// mem.used = 1000 + i KiB, net.eth0.rx_bps absent on the first sample.
fn host_sample(ts: u64, i: i64) -> TestSample {
    TestSample {
        ts,
        series: vec![
            ("cpu.busy", Unit::Percent, 0.01, Some(i % 10 + 10)),
            ("mem.used", Unit::Bytes, 1024.0, Some(1000 + i)),
            (
                "net.eth0.rx_bps",
                Unit::BytesPerSecond,
                1.0,
                (i > 0).then_some(500),
            ),
        ],
    }
}

/// Encode samples: the schema message (when the encoder made a new one)
/// and the batch of records.
fn encode(enc: &mut Encoder, samples: &[TestSample]) -> (Option<String>, Vec<u8>) {
    let mut schema = None;
    let mut batch = Vec::new();
    let mut rec = Vec::new();
    for s in samples {
        if let Some(sc) = enc.encode(s, &mut rec) {
            schema = Some(encode_control(
                7,
                Message::MetricsSchema(protocol::MetricsSchema { schema: sc.clone() }),
            ));
        }
        push_to_batch(&mut batch, &rec);
    }
    (schema, batch)
}

fn metrics_frame(batch: &[u8]) -> WsMessage {
    WsMessage::binary(protocol::encode_frame(
        FrameHeader {
            kind: FrameKind::Metrics,
            tag: StreamTag::None,
            channel: 0,
            seq: 0,
        },
        batch,
    ))
}

/// Send samples as a runner does: schema if new, then one METRICS frame.
async fn send_samples(ws: &mut Ws, enc: &mut Encoder, samples: &[TestSample]) {
    let (schema, batch) = encode(enc, samples);
    if let Some(text) = schema {
        ws.send(WsMessage::text(text)).await.unwrap();
    }
    ws.send(metrics_frame(&batch)).await.unwrap();
}

/// The next `metrics_ack`, skipping anything else.
async fn next_ack(ws: &mut Ws) -> u64 {
    loop {
        if let Message::MetricsAck(a) = next_control(ws).await.body {
            return a.ts_ms;
        }
    }
}

/// Connect with a hostname; the welcome message.
async fn online_as(server: &Server, credential: &str, hostname: &str) -> (Ws, Welcome) {
    let mut ws = ws_connect(server.addr, credential).await.unwrap();
    let hello = Message::Hello(Hello {
        protocol: vec![1],
        runner_version: "0.9.0".into(),
        arch: "x86_64".into(),
        os: "linux".into(),
        hostname: hostname.into(),
        heartbeat_ms: 60_000,
        capabilities: vec![],
        open_channels: vec![],
        metrics_interval_ms: 5000,
    });
    ws.send(WsMessage::text(encode_control(1, hello)))
        .await
        .unwrap();
    match next_control(&mut ws).await.body {
        Message::Welcome(w) => (ws, w),
        other => panic!("expected welcome, got {other:?}"),
    }
}

async fn get(router: &Router, api: &str, path: &str) -> Value {
    let (status, v) = call(router, "GET", path, Some(api), None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

/// A GET whose answer is text: (status, content type, body).
async fn get_text(router: &Router, api: &str, path: &str) -> (StatusCode, String, String) {
    let req = Request::get(path)
        .header("Authorization", format!("Bearer {api}"))
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, ctype, String::from_utf8(bytes.to_vec()).unwrap())
}

fn points(answer: &Value, series: &str) -> Vec<(i64, f64)> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == series)
        .unwrap_or_else(|| panic!("no {series} in {answer}"))["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn names(answer: &Value) -> Vec<String> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn metrics_are_stored_acknowledged_and_resumed() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (mut ws, welcome) = online_as(&s, &credential, "edge-01").await;
    assert_eq!(welcome.metrics_ts, None, "nothing stored yet");

    // Twelve samples a minute ago, 5 s apart, in two frames.
    let t0 = (crate::clock::now_ms() - 60_000) as u64;
    let samples: Vec<TestSample> = (0..12)
        .map(|i| host_sample(t0 + i * 5000, i as i64))
        .collect();
    let mut enc = Encoder::new();
    send_samples(&mut ws, &mut enc, &samples[..5]).await;
    send_samples(&mut ws, &mut enc, &samples[5..]).await;
    let last = t0 + 11 * 5000;
    let mut acked = next_ack(&mut ws).await;
    while acked < last {
        acked = next_ack(&mut ws).await;
    }
    assert_eq!(acked, last, "acks never pass what was sent");

    // Nothing new: no further ack, however long the connection lives.
    for _ in 0..4 {
        ws.send(WsMessage::Ping(Default::default())).await.unwrap();
        assert!(matches!(next(&mut ws).await, WsMessage::Pong(_)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let path = format!("/api/v1/runners/{runner_id}/metrics?since=5m&resolution=raw");
    let v = get(&s.router, &api, &path).await;
    assert_eq!(v["runner_id"], runner_id.as_str());
    assert_eq!(v["resolution"], "raw");
    assert!(v["from"].as_str().unwrap().ends_with('Z') && v["to_ms"].is_i64());
    assert_eq!(names(&v), ["cpu.busy", "mem.used", "net.eth0.rx_bps"]);
    let cpu = points(&v, "cpu.busy");
    assert_eq!(cpu.len(), 12);
    assert_eq!(cpu[0], (t0 as i64, 0.1));
    assert_eq!(cpu[11], (last as i64, 0.11));
    assert_eq!(
        points(&v, "mem.used")[3],
        (t0 as i64 + 15_000, 1003.0 * 1024.0)
    );
    // Absent values are no points.
    assert_eq!(points(&v, "net.eth0.rx_bps").len(), 11);
    let series = v["series"].as_array().unwrap();
    assert_eq!(series[0]["unit"], "percent");
    assert_eq!(
        series[0]["summary"],
        json!({"min": 0.1, "avg": 0.138333333333, "max": 0.19, "count": 12})
    );
    assert_eq!(series[2]["unit"], "bytes_per_second");

    let latest = get(
        &s.router,
        &api,
        &format!("/api/v1/runners/{runner_id}/metrics/latest"),
    )
    .await;
    assert_eq!(latest["ts_ms"], last);
    assert_eq!(
        latest["series"],
        json!([
            {"name": "cpu.busy", "unit": "percent", "value": 0.11},
            {"name": "mem.used", "unit": "bytes", "value": 1011.0 * 1024.0},
            {"name": "net.eth0.rx_bps", "unit": "bytes_per_second", "value": 500.0},
        ])
    );

    // A new connection: welcome says what is stored. A runner that resends
    // anyway (schema, key record, the same samples) doubles nothing.
    drop(ws);
    let (mut ws, welcome) = online_as(&s, &credential, "edge-01").await;
    assert_eq!(welcome.metrics_ts, Some(last));
    let mut enc = Encoder::new();
    let mut more: Vec<TestSample> = (6..12)
        .map(|i| host_sample(t0 + i * 5000, i as i64))
        .collect();
    more.push(host_sample(last + 5000, 12));
    send_samples(&mut ws, &mut enc, &more).await;
    assert_eq!(next_ack(&mut ws).await, last + 5000);
    assert_eq!(s.state.metrics.count("metrics_raw"), 13);
    let v = get(&s.router, &api, &path).await;
    assert_eq!(points(&v, "cpu.busy").len(), 13);
}

#[tokio::test]
async fn metrics_queries_filter_series_and_pick_a_resolution() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (mut ws, _) = online_as(&s, &credential, "edge-01").await;
    let t0 = (crate::clock::now_ms() - 30_000) as u64;
    let samples: Vec<TestSample> = (0..5)
        .map(|i| host_sample(t0 + i * 5000, i as i64))
        .collect();
    send_samples(&mut ws, &mut Encoder::new(), &samples).await;
    next_ack(&mut ws).await;

    let base = format!("/api/v1/runners/{runner_id}/metrics");
    let q = |query: &str| format!("{base}?{query}");
    for (query, want) in [
        ("series=cpu.busy", vec!["cpu.busy"]),
        ("series=net.*", vec!["net.eth0.rx_bps"]),
        ("series=mem.used,cpu.busy", vec!["cpu.busy", "mem.used"]),
        ("series=*", vec!["cpu.busy", "mem.used", "net.eth0.rx_bps"]),
        ("series=cpu", vec![]),
    ] {
        let v = get(&s.router, &api, &q(query)).await;
        assert_eq!(names(&v), want, "{query}");
    }
    // The default range is the last hour, auto-picked raw.
    let v = get(&s.router, &api, &base).await;
    assert_eq!(v["resolution"], "raw");
    assert_eq!(points(&v, "cpu.busy").len(), 5);
    assert_eq!(
        v["to_ms"].as_i64().unwrap() - v["from_ms"].as_i64().unwrap(),
        3_600_000
    );
    for (since, want) in [
        ("6h", "raw"),
        ("7h", "1m"),
        ("7d", "1m"),
        ("8d", "1h"),
        ("30d", "1h"),
        ("1000000000d", "1h"),
        ("0", "1h"),
    ] {
        let v = get(&s.router, &api, &q(&format!("since={since}"))).await;
        assert_eq!(v["resolution"], want, "since={since}");
    }
    // summaries only
    let v = get(&s.router, &api, &q("points=false")).await;
    assert_eq!(v["series"][0]["points"], json!([]));
    assert_eq!(v["series"][0]["summary"]["count"], 5);
    // Every time form; a range that holds nothing.
    let from = crate::clock::rfc3339(t0 as i64 - 1000);
    let v = get(
        &s.router,
        &api,
        &q(&format!("since={from}&until={}&resolution=raw", t0 + 5000)),
    )
    .await;
    assert_eq!(points(&v, "cpu.busy").len(), 2);
    let v = get(&s.router, &api, &q("since=2h&until=90m")).await;
    assert_eq!(v["series"], json!([]));

    for bad in [
        "since=yesterday",
        "until=1x",
        "since=1m&until=2h",
        "resolution=5m",
        "series=a*b",
        "points=maybe",
    ] {
        assert_error(
            &call(&s.router, "GET", &q(bad), Some(&api), None).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // A runner without data: empty answers, not errors.
    let (other, _) = runner(&s.router, &api).await;
    let v = get(&s.router, &api, &format!("/api/v1/runners/{other}/metrics")).await;
    assert_eq!(v["series"], json!([]));
    let v = get(
        &s.router,
        &api,
        &format!("/api/v1/runners/{other}/metrics/latest"),
    )
    .await;
    assert_eq!(
        (v["ts_ms"].is_null(), v["series"].clone()),
        (true, json!([]))
    );
}

#[tokio::test]
async fn rollups_answer_minute_and_hour_queries() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, _) = runner(&s.router, &api).await;
    // Injected far in the past (2001), written and rolled up directly.
    let m = &s.state.metrics;
    let src = m.source(&runner_id).unwrap();
    let defs = vec![tether::metrics::wire::SeriesDef {
        name: "load.1".into(),
        unit: Unit::Load,
        scale: 0.01,
    }];
    let t0: i64 = 1_000_000_800_000; // 2001-09-09T02:00:00Z, an hour boundary
    let schema = m.intern_schema(&defs, t0).unwrap();
    // 2 hours at 10 s: load = 100 × (minute % 3) + second / 10 (hundredths).
    let rows = (0..720)
        .map(|i| {
            let ts = t0 + i * 10_000;
            let v = 100 * ((i / 6) % 3) + i % 6;
            let mut b = Vec::new();
            crate::metrics_store::encode_values(&[Some(v)], &mut b);
            (ts, b)
        })
        .collect();
    m.insert(
        &[crate::metrics_store::SampleRows {
            source: src,
            schema,
            rows,
        }],
        t0,
    )
    .unwrap();
    let stats = m.maintain(t0 + 3 * 3_600_000).unwrap();
    assert_eq!((stats.minutes_rolled, stats.hours_rolled), (120, 2));

    let q = |res: &str| {
        format!(
            "/api/v1/runners/{runner_id}/metrics?since={t0}&until={}&resolution={res}",
            t0 + 2 * 3_600_000 - 1
        )
    };
    let v = get(&s.router, &api, &q("1m")).await;
    let p = points(&v, "load.1");
    assert_eq!(p.len(), 120);
    // Minute k: 100 × (k % 3) + 0..5, average + 2.5 (hundredths).
    assert_eq!(
        &p[..4],
        [
            (t0, 0.025),
            (t0 + 60_000, 1.025),
            (t0 + 120_000, 2.025),
            (t0 + 180_000, 0.025)
        ]
    );
    let v = get(&s.router, &api, &q("1h")).await;
    // 60 minutes per hour: 20 of each of 0.025, 1.025, 2.025.
    assert_eq!(points(&v, "load.1"), [(t0, 1.025), (t0 + 3_600_000, 1.025)]);
    assert_eq!(
        v["series"][0]["summary"],
        json!({"min": 0.0, "avg": 1.025, "max": 2.05, "count": 720})
    );
    // Raw was written far past its retention, but is still there until
    // the next pass at real time; `auto` for a range that old picks 1h.
    let v = get(&s.router, &api, &q("auto")).await;
    assert_eq!(v["resolution"], "1h");
    m.maintain(crate::clock::now_ms()).unwrap();
    assert_eq!(m.count("metrics_raw"), 0);
    assert_eq!(m.count("metrics_1m"), 0);
    assert_eq!(m.count("metrics_1h"), 0);
}

/// One line of the exposition: (metric, labels, value).
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let open = line.find('{').unwrap();
    let close = line.rfind('}').unwrap();
    let name = line[..open].to_owned();
    let value: f64 = line[close + 1..].trim().parse().unwrap();
    let mut labels = Vec::new();
    let mut rest = &line[open + 1..close];
    while !rest.is_empty() {
        let eq = rest.find("=\"").unwrap();
        let key = rest[..eq].to_owned();
        let mut val = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().unwrap().1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        labels.push((key, val));
        rest = rest[end..].strip_prefix(',').unwrap_or(&rest[end..]);
    }
    (name, labels, value)
}

#[tokio::test]
async fn prometheus_exposes_this_tenants_latest_values() {
    let s = server().await;
    let (_, api_a) = tenant(&s.router, "a").await;
    let (_, api_b) = tenant(&s.router, "b").await;
    let (runner_a, cred_a) = runner(&s.router, &api_a).await;
    let (quiet_a, _) = runner(&s.router, &api_a).await; // no data: not exposed
    let (runner_b, cred_b) = runner(&s.router, &api_b).await;
    let weird = "lab \"7\" \\ edge";
    // The label is the operator's name for the runner, not its hostname.
    let (st, v) = call(
        &s.router,
        "PUT",
        &format!("/api/v1/runners/{runner_a}/name"),
        Some(&api_a),
        Some(&json!({ "name": weird }).to_string()),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (mut ws_a, _) = online_as(&s, &cred_a, "hostname-is-not-the-label").await;
    // Reported, not its name (that stays the enrolled edge-01).
    let (mut ws_b, _) = online_as(&s, &cred_b, "tenant-b-box").await;
    let t0 = (crate::clock::now_ms() - 10_000) as u64;
    let a = TestSample {
        ts: t0,
        series: vec![
            ("uptime", Unit::Seconds, 1.0, Some(3600)),
            ("cpu.busy", Unit::Percent, 0.01, Some(1234)),
            ("cpu1.busy", Unit::Percent, 0.01, Some(50)),
            ("fs./var/l\"ib.used", Unit::Bytes, 1024.0, Some(2)),
            ("net.eth0.100.rx_bps", Unit::BytesPerSecond, 1.0, Some(77)),
            ("net.eth0.100.tx_bps", Unit::BytesPerSecond, 1.0, None),
        ],
    };
    send_samples(&mut ws_a, &mut Encoder::new(), &[a]).await;
    send_samples(&mut ws_b, &mut Encoder::new(), &[host_sample(t0, 1)]).await;
    next_ack(&mut ws_a).await;
    next_ack(&mut ws_b).await;

    let (status, ctype, text) = get_text(&s.router, &api_a, "/api/v1/metrics/prometheus").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains(&runner_b) && !text.contains("tenant-b-box"),
        "{text}"
    );
    assert!(!text.contains(&quiet_a), "{text}");

    let mut described = std::collections::HashSet::new();
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            described.insert(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge");
            assert!(described.contains(name), "TYPE before HELP: {line}");
            typed.insert(name.to_owned());
        } else {
            let (name, labels, value) = parse_sample(line);
            assert!(typed.contains(&name), "sample before its TYPE: {line}");
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{name}"
            );
            assert_eq!(labels[0], ("runner_id".to_owned(), runner_a.clone()));
            assert_eq!(labels[1], ("runner".to_owned(), weird.to_owned()));
            samples.push((name, labels[2..].to_vec(), value));
        }
    }
    let find = |name: &str, extra: &[(&str, &str)]| {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == extra)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no {name} {extra:?} in\n{text}"))
    };
    assert_eq!(find("tether_runner_up", &[]), 1.0);
    assert_eq!(
        find("tether_metrics_timestamp_seconds", &[]),
        t0 as f64 / 1000.0
    );
    assert_eq!(find("tether_uptime_seconds", &[]), 3600.0);
    assert_eq!(find("tether_cpu_busy_percent", &[("cpu", "total")]), 12.34);
    assert_eq!(find("tether_cpu_busy_percent", &[("cpu", "1")]), 0.5);
    assert_eq!(
        find("tether_fs_used_bytes", &[("mount", "/var/l\"ib")]),
        2048.0
    );
    assert_eq!(
        find("tether_net_rx_bytes_per_second", &[("iface", "eth0.100")]),
        77.0
    );
    // No value, no sample.
    assert!(!text.contains("tether_net_tx_bytes_per_second{"), "{text}");
    assert_eq!(samples.len(), 7);

    // Tenant B sees only its own; after B's runner goes, it is down.
    drop(ws_b);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, text) = get_text(&s.router, &api_b, "/api/v1/metrics/prometheus").await;
        assert!(!text.contains(&runner_a));
        if text.contains(&format!(
            "tether_runner_up{{runner_id=\"{runner_b}\",runner=\"edge-01\"}} 0"
        )) {
            assert!(text.contains("tether_mem_used_bytes{"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The admin token manages tenants only.
    assert_error(
        &call(
            &s.router,
            "GET",
            "/api/v1/metrics/prometheus",
            Some(ADMIN),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

fn listener(proto: &str, addr: &str, port: u16, process: &str) -> Listener {
    Listener {
        proto: proto.into(),
        addr: addr.parse().unwrap(),
        port,
        process: Some(process.into()),
    }
}

fn host_fingerprint() -> Fingerprint {
    Fingerprint {
        hostname: Some("web-1".into()),
        kernel: Some("6.1.0".into()),
        arch: Some("x86_64".into()),
        cpu_count: Some(4),
        mem_total: Some(8 << 30),
        boot_time: Some(1_700_000_000),
        listening: vec![listener("tcp", "0.0.0.0", 22, "sshd")],
        ..Fingerprint::default()
    }
}

/// A ping round trip: everything sent before it was handled (and no
/// `fingerprint_resync` came back).
async fn sync(ws: &mut Ws, id: u64) {
    let ping = Message::Ping(protocol::Ping { sent_ms: id });
    ws.send(WsMessage::text(encode_control(id, ping)))
        .await
        .unwrap();
    loop {
        let env = next_control(ws).await;
        if env.id == id && matches!(env.body, Message::Pong(_)) {
            return;
        }
        assert!(
            !matches!(env.body, Message::FingerprintResync(_)),
            "unexpected resync"
        );
    }
}

async fn send_fingerprint(ws: &mut Ws, id: u64, report: FingerprintReport) {
    ws.send(WsMessage::text(encode_control(
        id,
        Message::Fingerprint(report),
    )))
    .await
    .unwrap();
}

#[tokio::test]
async fn fingerprints_are_stored_and_changes_become_drift() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let fp_path = format!("/api/v1/runners/{runner_id}/fingerprint");
    let drift_path = format!("/api/v1/runners/{runner_id}/drift");
    let v = get(&s.router, &api, &fp_path).await;
    assert_eq!(
        v,
        json!({"runner_id": runner_id, "collected_at": null, "updated_at": null, "notes": []})
    );

    // The first full report is the baseline: no drift.
    let (mut ws, _) = online_as(&s, &credential, "web-1").await;
    let base = host_fingerprint();
    let t = crate::clock::now_ms() as u64;
    send_fingerprint(
        &mut ws,
        10,
        FingerprintReport {
            ts_ms: t,
            full: Some(Box::new(base.clone())),
            changes: vec![],
            notes: vec!["firewall: unavailable (no nft or iptables-save)".into()],
        },
    )
    .await;
    sync(&mut ws, 11).await;
    let v = get(&s.router, &api, &fp_path).await;
    assert_eq!(fingerprint_of(&v), base);
    assert_eq!(v["runner_id"], runner_id.as_str());
    assert_eq!(v["kernel"], "6.1.0");
    assert_eq!(
        v["notes"][0],
        "firewall: unavailable (no nft or iptables-save)"
    );
    assert_eq!(v["collected_at"], crate::clock::rfc3339(t as i64));
    assert!(v["updated_at"].is_string());
    assert_eq!(get(&s.router, &api, &drift_path).await, json!([]));

    // Offline, nginx started, and the clock rounded boot time by a second:
    // the next connection's full report shows one change.
    drop(ws);
    let (mut ws, _) = online_as(&s, &credential, "web-1").await;
    let mut now_fp = base.clone();
    now_fp
        .listening
        .push(listener("tcp", "0.0.0.0", 8080, "nginx"));
    now_fp.listening.sort();
    now_fp.boot_time = Some(1_700_000_001);
    send_fingerprint(
        &mut ws,
        12,
        FingerprintReport {
            ts_ms: t + 1000,
            full: Some(Box::new(now_fp.clone())),
            changes: vec![],
            notes: vec![],
        },
    )
    .await;
    sync(&mut ws, 13).await;
    let d = get(&s.router, &api, &drift_path).await;
    assert_eq!(d.as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d[0]["text"], "listening: +tcp 0.0.0.0:8080 (nginx)");
    assert_eq!(d[0]["path"], "listening");
    assert!(d[0]["old"].is_null());
    assert_eq!(d[0]["new"]["port"], 8080);
    assert_eq!(d[0]["at"], crate::clock::rfc3339(t as i64 + 1000));
    assert_eq!(get(&s.router, &api, &fp_path).await["notes"], json!([]));

    // A change list applies to the stored copy.
    let mut next_fp = now_fp.clone();
    next_fp.kernel = Some("6.1.2".into());
    next_fp.listening.retain(|l| l.port != 22);
    let changes = tether::fingerprint::diff(&now_fp, &next_fp);
    send_fingerprint(
        &mut ws,
        14,
        FingerprintReport {
            ts_ms: t + 2000,
            full: None,
            changes,
            notes: vec![],
        },
    )
    .await;
    sync(&mut ws, 15).await;
    let v = get(&s.router, &api, &fp_path).await;
    assert_eq!(fingerprint_of(&v), next_fp);
    let d = get(&s.router, &api, &drift_path).await;
    let texts: Vec<&str> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "listening: +tcp 0.0.0.0:8080 (nginx)",
            "kernel: 6.1.0 → 6.1.2",
            "listening: -tcp 0.0.0.0:22 (sshd)",
        ]
    );
    // `since` keeps the newer ones.
    let since = crate::clock::rfc3339(t as i64 + 2000);
    let d = get(&s.router, &api, &format!("{drift_path}?since={since}")).await;
    assert_eq!(d.as_array().unwrap().len(), 2);
    assert_error(
        &call(
            &s.router,
            "GET",
            &format!("{drift_path}?since=never"),
            Some(&api),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // A change list that does not fit the stored copy: resync, nothing stored.
    let stale = tether::fingerprint::diff(&base, &host_fingerprint_with_kernel("7.0"));
    send_fingerprint(
        &mut ws,
        16,
        FingerprintReport {
            ts_ms: t + 3000,
            full: None,
            changes: stale,
            notes: vec![],
        },
    )
    .await;
    let reply = next_control(&mut ws).await;
    assert_eq!(reply.id, 16);
    assert!(
        matches!(reply.body, Message::FingerprintResync(_)),
        "{reply:?}"
    );
    assert_eq!(
        fingerprint_of(&get(&s.router, &api, &fp_path).await),
        next_fp
    );
    assert_eq!(
        get(&s.router, &api, &drift_path)
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A change list from a runner the server has no copy of: resync too.
    let (_, cred2) = runner(&s.router, &api).await;
    let (mut ws2, _) = online_as(&s, &cred2, "new").await;
    send_fingerprint(
        &mut ws2,
        3,
        FingerprintReport {
            ts_ms: t,
            full: None,
            changes: vec![],
            notes: vec![],
        },
    )
    .await;
    assert!(matches!(
        next_control(&mut ws2).await.body,
        Message::FingerprintResync(_)
    ));
}

/// The fingerprint in an answer (its fields plus runner_id, times, notes).
fn fingerprint_of(answer: &Value) -> Fingerprint {
    serde_json::from_value(answer.clone()).unwrap()
}

fn host_fingerprint_with_kernel(k: &str) -> Fingerprint {
    let mut fp = host_fingerprint();
    fp.kernel = Some(k.into());
    fp
}

#[tokio::test]
async fn bad_metrics_close_4004_and_others_keep_going() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (_, bystander_cred) = runner(&s.router, &api).await;
    let (mut bystander, _) = online_as(&s, &bystander_cred, "calm").await;
    let t0 = (crate::clock::now_ms() - 20_000) as u64;

    let dup_schema = r#"{"type":"metrics_schema","id":4,"schema":{"id":1,"series":[
        {"name":"a","unit":"count","scale":1},{"name":"a","unit":"count","scale":1}]}}"#;
    let bad_unit = r#"{"type":"metrics_schema","id":4,"schema":{"id":1,"series":[
        {"name":"a","unit":"furlongs","scale":1}]}}"#;
    let (schema, batch) = encode(&mut Encoder::new(), &[host_sample(t0, 0)]);
    let schema = schema.unwrap();
    let mut truncated = Vec::new();
    let (_, one) = encode(&mut Encoder::new(), &[host_sample(t0, 0)]);
    push_to_batch(&mut truncated, &one[1..one.len() - 1]);
    let cases: Vec<(&str, Vec<WsMessage>)> = vec![
        ("duplicate series", vec![WsMessage::text(dup_schema)]),
        ("unknown unit", vec![WsMessage::text(bad_unit)]),
        ("records before a schema", vec![metrics_frame(&batch)]),
        (
            "a truncated record",
            vec![WsMessage::text(schema.clone()), metrics_frame(&truncated)],
        ),
        (
            "a cut batch",
            vec![
                WsMessage::text(schema.clone()),
                metrics_frame(&batch[..batch.len() - 1]),
            ],
        ),
        (
            "a record of another schema",
            vec![
                WsMessage::text(schema.replace(r#""schema":{"id":1"#, r#""schema":{"id":2"#)),
                metrics_frame(&batch),
            ],
        ),
        (
            "a metrics frame on a channel",
            vec![WsMessage::binary({
                let mut f = protocol::encode_frame(
                    FrameHeader {
                        kind: FrameKind::Metrics,
                        tag: StreamTag::None,
                        channel: 3,
                        seq: 0,
                    },
                    &batch,
                );
                f.truncate(16 + batch.len());
                f
            })],
        ),
    ];
    for (what, messages) in cases {
        let (mut ws, _) = online_as(&s, &credential, "rogue").await;
        for m in messages {
            ws.send(m).await.unwrap();
        }
        let err = loop {
            let env = next_control(&mut ws).await;
            if let Message::Error(e) = env.body {
                break e;
            }
        };
        assert_eq!(err.code, "protocol_violation", "{what}");
        let (code, reason) = closed_with(&mut ws).await;
        assert_eq!(code, protocol::close::PROTOCOL_VIOLATION, "{what}");
        assert!(!reason.is_empty(), "{what}");
        // The others are untouched.
        bystander
            .send(WsMessage::Ping(Default::default()))
            .await
            .unwrap();
        assert!(matches!(next(&mut bystander).await, WsMessage::Pong(_)));
    }
    let history = health_of(&s, &api, &runner_id).await;
    assert_eq!(history.len(), 14, "{history:?}");
    assert_eq!(
        history.last(),
        Some(&pair("unreachable", "protocol violation"))
    );
    // Good records before a bad one in the same frame are kept.
    let (mut ws, _) = online_as(&s, &credential, "rogue").await;
    let (schema, mut batch) = encode(
        &mut Encoder::new(),
        &[host_sample(t0, 0), host_sample(t0 + 5000, 1)],
    );
    push_to_batch(&mut batch, &[0x09, 0x01]);
    ws.send(WsMessage::text(schema.unwrap())).await.unwrap();
    ws.send(metrics_frame(&batch)).await.unwrap();
    assert_eq!(
        closed_with(&mut ws).await.0,
        protocol::close::PROTOCOL_VIOLATION
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.state.metrics.count("metrics_raw") < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A sample from a clock far ahead, or older than raw retention, is
    // acknowledged or skipped but never stored.
    let (mut ws, _) = online_as(&s, &credential, "rogue").await;
    let now = crate::clock::now_ms() as u64;
    let mut enc = Encoder::new();
    send_samples(
        &mut ws,
        &mut enc,
        &[
            host_sample(now - 25 * 3_600_000, 0),
            host_sample(now + 2 * 3_600_000, 1),
        ],
    )
    .await;
    assert_eq!(next_ack(&mut ws).await, now - 25 * 3_600_000);
    assert_eq!(s.state.metrics.count("metrics_raw"), 2);
}

mod containers;
mod edge;
mod fuzz_seeds;
mod tokens;
mod users;

// ---- releases and update policy -------------------------------------------

#[tokio::test]
async fn release_uploads_policies_and_groups_refuse_bad_input() {
    let dir = std::env::temp_dir().join(format!("tether-releases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = state().with_releases(crate::updates::ReleaseConfig {
        dir: Some(dir.clone()),
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
    assert!(!dir.exists() || crate::updates::list(&dir).is_empty());

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
    let state = state().with_releases(crate::updates::ReleaseConfig {
        dir: Some(dir.clone()),
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
    let chosen: Vec<bool> = ids
        .iter()
        .map(|id| {
            crate::updates::desired_version(&state, &tenant_id, id)
                .unwrap()
                .is_some()
        })
        .collect();
    let n = chosen.iter().filter(|c| **c).count();
    assert!(n > 0 && n < 40, "25% of 40 runners, got {n}");
    for (id, c) in ids.iter().zip(&chosen) {
        assert_eq!(*c, crate::updates::bucket(id) < 25);
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
    assert!(ids
        .iter()
        .all(|id| crate::updates::desired_version(&state, &tenant_id, id)
            .unwrap()
            .is_some()));
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
    assert!(crate::updates::desired_version(&state, &tenant_id, &ids[0])
        .unwrap()
        .is_none());
    assert!(crate::updates::desired_version(&state, &tenant_id, &ids[1])
        .unwrap()
        .is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
