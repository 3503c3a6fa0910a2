//! The runner WebSocket over a socket: hello, liveness, replacement,
//! revocation, shutdown, health events, and the dev-CA TLS.

use crate::util::*;

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
    assert_eq!(s.state.registry.close_all(order).await, 2);
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
    assert_eq!(s.state.health.server_restarted().await.unwrap(), 2);
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
    let certs = tether_server::app::tls::ensure_dev_certs(&dir).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tether_server::app::tls::server_config(&certs.cert, &certs.key).unwrap(),
    );
    let s = server_with(state(), Some(acceptor)).await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (_, credential) = runner(&s.router, &api).await;

    let mut roots = rustls::RootCertStore::empty();
    for c in tether_server::app::tls::load_certs(&certs.ca).unwrap() {
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
