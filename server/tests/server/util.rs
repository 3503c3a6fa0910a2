//! Shared helpers of the server's integration tests: an `AppState` with
//! in-memory databases and short timeouts, REST calls through `app(state)`
//! without a socket, and a runner WebSocket over a real loopback socket.
//! Every feature module imports them with `use crate::util::*`.

// Re-exported: each feature module starts with `use crate::util::*`.
pub use std::net::SocketAddr;
pub use std::sync::Arc;
pub use std::time::Duration;

pub use axum::body::Body;
pub use axum::http::{Request, StatusCode};
pub use axum::Router;
pub use futures_util::{SinkExt, StreamExt};
pub use serde_json::{json, Value};
pub use tether::fingerprint::{Fingerprint, Listener};
pub use tether::metrics::wire::{push_to_batch, Encoder, SeriesSource, Unit, Visitor};
pub use tether::protocol::{self, decode_control, encode_control, Decoded, Hello, Message, Pong};
pub use tether::protocol::{FingerprintReport, FrameHeader, FrameKind, StreamTag, Welcome};
pub use tokio::io::{AsyncRead, AsyncWrite};
pub use tokio::net::{TcpListener, TcpStream};
pub use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;
pub use tokio_tungstenite::WebSocketStream;
pub use tower::ServiceExt;

pub use tether_server::app::{app, AppState, Tuning};
pub use tether_server::db::metrics::Retention;
pub use tether_server::link::registry::CloseOrder;

pub const ADMIN: &str = "tadm_test-admin-token";

pub const WAIT: Duration = Duration::from_secs(5);

pub fn tuning() -> Tuning {
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

pub fn state() -> AppState {
    state_with(Retention::default())
}

pub fn state_with(retention: Retention) -> AppState {
    AppState::new(
        tether_server::db::sqlite::open_in_memory(retention).unwrap(),
        Arc::new(tether_server::common::secrets::SecretBox::from_key([9; 32])),
        ADMIN,
        tuning(),
    )
}

pub async fn call(
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

pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
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
pub async fn tenant(router: &Router, name: &str) -> (String, String) {
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
pub async fn enrollment_token(router: &Router, api: &str, body: &str) -> (String, String) {
    let (status, v) = call(router, "POST", "/api/v1/tokens", Some(api), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

pub fn enroll_body(token: &str) -> String {
    json!({ "token": token, "hostname": "edge-01", "arch": "x86_64", "os": "linux", "version": "0.1.0" }).to_string()
}

/// Enroll a runner: (runner id, credential).
pub async fn runner(router: &Router, api: &str) -> (String, String) {
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

// ---- the runner WebSocket over a socket -----------------------------------------

pub struct Server {
    pub state: AppState,
    pub router: Router,
    pub addr: SocketAddr,
}

pub async fn server() -> Server {
    server_with(state(), None).await
}

pub async fn server_with(state: AppState, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(tether_server::app::serve::accept_loop(
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

pub type Ws<S = TcpStream> = WebSocketStream<S>;

pub async fn ws_connect_over<S: AsyncRead + AsyncWrite + Unpin>(
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

pub async fn ws_connect(
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

pub fn hello(protocols: Vec<u16>, heartbeat_ms: u64) -> String {
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
            labels: vec![],
        }),
    )
}

pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> WsMessage {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next control message (skipping WebSocket pings/pongs).
pub async fn next_control<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> protocol::Envelope {
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
pub async fn closed_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> (u16, String) {
    loop {
        match next(ws).await {
            WsMessage::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            WsMessage::Close(None) => panic!("close frame without a code"),
            _ => {}
        }
    }
}

/// Connect and finish the hello exchange.
pub async fn online(server: &Server, credential: &str, heartbeat_ms: u64) -> Ws {
    let mut ws = ws_connect(server.addr, credential).await.unwrap();
    ws.send(WsMessage::text(hello(vec![1], heartbeat_ms)))
        .await
        .unwrap();
    let welcome = next_control(&mut ws).await;
    assert_eq!(welcome.id, 1);
    assert!(matches!(welcome.body, Message::Welcome(_)), "{welcome:?}");
    ws
}

pub async fn health_of(server: &Server, api: &str, runner_id: &str) -> Vec<(String, String)> {
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

pub fn pair(health: &str, reason: &str) -> (String, String) {
    (health.to_owned(), reason.to_owned())
}

/// Health changes are recorded a moment after the socket event; poll briefly.
pub async fn eventually_health(
    server: &Server,
    api: &str,
    runner_id: &str,
    want: &[(String, String)],
) {
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

// ---- host telemetry: metrics and fingerprints -----------------------------------

/// A sample for the encoder: (name, unit, scale, value) in schema order.
pub struct TestSample {
    pub ts: u64,
    pub series: Vec<(&'static str, Unit, f64, Option<i64>)>,
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
pub fn host_sample(ts: u64, i: i64) -> TestSample {
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
pub fn encode(enc: &mut Encoder, samples: &[TestSample]) -> (Option<String>, Vec<u8>) {
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

pub fn metrics_frame(batch: &[u8]) -> WsMessage {
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
pub async fn send_samples(ws: &mut Ws, enc: &mut Encoder, samples: &[TestSample]) {
    let (schema, batch) = encode(enc, samples);
    if let Some(text) = schema {
        ws.send(WsMessage::text(text)).await.unwrap();
    }
    ws.send(metrics_frame(&batch)).await.unwrap();
}

/// The next `metrics_ack`, skipping anything else.
pub async fn next_ack(ws: &mut Ws) -> u64 {
    loop {
        if let Message::MetricsAck(a) = next_control(ws).await.body {
            return a.ts_ms;
        }
    }
}

/// Connect with a hostname; the welcome message.
pub async fn online_as(server: &Server, credential: &str, hostname: &str) -> (Ws, Welcome) {
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
        labels: Vec::new(),
    });
    ws.send(WsMessage::text(encode_control(1, hello)))
        .await
        .unwrap();
    match next_control(&mut ws).await.body {
        Message::Welcome(w) => (ws, w),
        other => panic!("expected welcome, got {other:?}"),
    }
}

pub async fn get(router: &Router, api: &str, path: &str) -> Value {
    let (status, v) = call(router, "GET", path, Some(api), None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

/// A GET whose answer is text: (status, content type, body).
pub async fn get_text(router: &Router, api: &str, path: &str) -> (StatusCode, String, String) {
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

pub fn points(answer: &Value, series: &str) -> Vec<(i64, f64)> {
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

pub fn names(answer: &Value) -> Vec<String> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// One line of the exposition: (metric, labels, value).
pub fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
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

pub fn listener(proto: &str, addr: &str, port: u16, process: &str) -> Listener {
    Listener {
        proto: proto.into(),
        addr: addr.parse().unwrap(),
        port,
        process: Some(process.into()),
    }
}

pub fn host_fingerprint() -> Fingerprint {
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
pub async fn sync(ws: &mut Ws, id: u64) {
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

pub async fn send_fingerprint(ws: &mut Ws, id: u64, report: FingerprintReport) {
    ws.send(WsMessage::text(encode_control(
        id,
        Message::Fingerprint(report),
    )))
    .await
    .unwrap();
}

/// The fingerprint in an answer (its fields plus runner_id, times, notes).
pub fn fingerprint_of(answer: &Value) -> Fingerprint {
    serde_json::from_value(answer.clone()).unwrap()
}

pub fn host_fingerprint_with_kernel(k: &str) -> Fingerprint {
    let mut fp = host_fingerprint();
    fp.kernel = Some(k.into());
    fp
}

/// A TCP port free on 127.0.0.1 now, and below the kernel's ephemeral
/// range (32768-60999 on Debian): a port from `bind(0)` is one the kernel
/// also hands to other tests' outgoing connections and `bind(0)`s, which
/// can take it before the process this port is for binds it ("Address
/// already in use": CI failed on it). One from 20000-32767 is never
/// handed out; a random pick keeps two tests picking at once apart.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_768) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
