//! Tests of the whole server: the REST API through `app(state)` without a
//! socket, and the runner WebSocket over a real loopback socket (plain HTTP,
//! and once over the dev-CA TLS the runners use).
//!
//! Each test gets its own in-memory database and short timeouts.

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
    }
}

fn state() -> AppState {
    AppState::new(
        Arc::new(Storage::open_in_memory().unwrap()),
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
        &call(&router, "GET", "/", Some(ADMIN), None).await,
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
    assert_eq!(
        (
            r["name"].as_str(),
            r["version"].as_str(),
            r["arch"].as_str()
        ),
        (Some("edge-07"), Some("0.9.0"), Some("aarch64"))
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
