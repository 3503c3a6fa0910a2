//! The unauthenticated edge (`edge.rs`, `users.rs` login, `updates.rs`
//! upload): body limits, field limits, the lockout under concurrency, the
//! Argon2 queue, per-address rates, connection caps, body deadlines. The
//! byte-level cases go over a real loopback socket through `accept_loop`
//! (hyper as in production); the rest through the router.

use std::net::{IpAddr, Ipv4Addr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;
use tether_server::common::edge::EdgeConfig;
use tether_server::common::edge::PeerAddr;

fn edge(f: impl FnOnce(&mut EdgeConfig)) -> EdgeConfig {
    let mut c = EdgeConfig::default();
    f(&mut c);
    c
}

/// A login as a browser from `peer` sends it: (status, Retry-After, JSON).
async fn login_from(
    router: &Router,
    peer: Option<IpAddr>,
    body: String,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri("/api/v1/session")
        .header("Content-Type", "application/json")
        .body(Body::from(body))
        .unwrap();
    if let Some(ip) = peer {
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip, 40000)));
    }
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        retry,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn login_body(tenant: &str, name: &str, password: &str) -> String {
    json!({ "tenant": tenant, "name": name, "password": password }).to_string()
}

/// A tenant `acme` with user `ada` (password `pw-of-8-chars`): its id.
async fn acme_with_ada(router: &Router) -> String {
    let (id, _) = tenant(router, "acme").await;
    let (st, v) = call(
        router,
        "POST",
        "/api/v1/tenants/acme/users",
        Some(ADMIN),
        Some(&json!({"name": "ada", "password": "pw-of-8-chars", "role": "admin"}).to_string()),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    id
}

/// Write `head` (and the start of a body) on a fresh connection, then
/// read the answer for at most `limit`: (status, body text), or `None`
/// when nothing came in time.
async fn raw_exchange(addr: SocketAddr, head: &[u8], limit: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some((status, body)) = parse_response(&got) {
                return Some((status, body));
            }
        }
        parse_response(&got)
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// A complete HTTP/1.1 response with a Content-Length body.
fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= len).then(|| (status, body[..len].to_owned()))
}

/// The probe: a login naming a 1.9 MB tenant is refused by its size
/// (announced or not), and a tenant name within the body limit but past
/// the field's is refused before any lookup, with the limit named.
#[tokio::test]
async fn login_with_a_huge_tenant_name_is_refused_by_size() {
    let router = app(state());
    acme_with_ada(&router).await;
    let huge = login_body(&"t".repeat(1_900_000), "ada", "pw-of-8-chars");
    // No Content-Length (chunked): cut at the limit while reading.
    let (st, _, v) = login_from(&router, None, huge.clone()).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // Announced: refused before reading.
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/session")
        .header("Content-Length", huge.len())
        .body(Body::from(huge))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("4096"),
        "{v}"
    );
    // Within 4 KiB, but longer than any tenant: 400, not 401.
    let (st, _, v) = login_from(
        &router,
        None,
        login_body(&"t".repeat(3000), "ada", "pw-of-8-chars"),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("64"),
        "{v}"
    );
    let (st, _, v) = login_from(
        &router,
        None,
        login_body("acme", &"n".repeat(65), "pw-of-8-chars"),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // Enrollment has the same small limit.
    let (st, v) = call(
        &router,
        "POST",
        "/api/v1/enroll",
        None,
        Some(&enroll_body(&"x".repeat(8000))),
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

/// The probe: 30 concurrent wrong passwords for one user. Each attempt is
/// counted before its hash runs, so at most 10 are evaluated (401) and
/// the rest refused (429 with Retry-After), and the right password is
/// refused too until the window passes.
#[tokio::test]
async fn thirty_concurrent_wrong_passwords_evaluate_at_most_the_limit() {
    let router = app(state());
    acme_with_ada(&router).await;
    let attempts = (0..30).map(|_| {
        let router = router.clone();
        async move { login_from(&router, None, login_body("acme", "ada", "wrong-guess")).await }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let evaluated = answers
        .iter()
        .filter(|a| a.0 == StatusCode::UNAUTHORIZED)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(evaluated, 10, "{answers:?}");
    assert_eq!(refused.len(), 20, "{answers:?}");
    for (_, retry, v) in refused {
        assert_eq!(v["error"]["code"], "rate_limited");
        let secs: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=300).contains(&secs), "{secs}");
    }
    let (st, _, _) = login_from(&router, None, login_body("acme", "ada", "pw-of-8-chars")).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
}

/// A tenant named by id and by name is one tenant to the lockout: five
/// wrong guesses each way use up the ten.
#[tokio::test]
async fn lockout_counts_a_tenant_by_id_and_by_name_together() {
    let router = app(state());
    let id = acme_with_ada(&router).await;
    for tenant in ["acme", id.as_str()] {
        for _ in 0..5 {
            let (st, _, v) =
                login_from(&router, None, login_body(tenant, "ada", "wrong-guess")).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        }
    }
    for tenant in ["acme", id.as_str()] {
        let (st, _, _) =
            login_from(&router, None, login_body(tenant, "ada", "pw-of-8-chars")).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{tenant}");
    }
}

/// More logins than the hash queue holds: the excess is answered 503 with
/// Retry-After at once instead of queueing without bound, and those
/// attempts are not counted against the user.
#[tokio::test]
async fn a_full_argon2_queue_answers_503_with_retry_after() {
    let state = state().with_edge(edge(|c| {
        c.hash_queue = 1;
        c.hash_wait = Duration::from_millis(300);
    }));
    let router = app(state);
    acme_with_ada(&router).await;
    // Distinct unknown names: no lockout in the way, each costs a hash.
    let attempts = (0..12).map(|i| {
        let router = router.clone();
        async move {
            login_from(
                &router,
                None,
                login_body("acme", &format!("nobody{i}"), "wrong-guess"),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(busy.len() >= 8, "{answers:?}");
    for (_, retry, v) in &busy {
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        assert!(retry.is_some(), "Retry-After");
    }
    assert!(answers
        .iter()
        .all(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE || a.0 == StatusCode::UNAUTHORIZED));
    // Once the queue drains, logins work again.
    let (st, _, v) = login_from(&router, None, login_body("acme", "ada", "pw-of-8-chars")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// Logins and enrollments per client address: past the burst, 429 with
/// Retry-After; another address is not affected.
#[tokio::test]
async fn logins_and_enrollments_are_rate_limited_per_address() {
    let router = app(state().with_edge(edge(|c| {
        c.login_per_minute = 6;
        c.enroll_per_minute = 6;
    })));
    acme_with_ada(&router).await;
    let one = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let two = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
    // Burst: min(10, 6) = 6 logins (names differ: no lockout involved).
    for i in 0..6 {
        let (st, _, v) = login_from(&router, one, login_body("acme", &format!("x{i}"), "pw")).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    }
    let (st, retry, v) = login_from(&router, one, login_body("acme", "ada", "pw-of-8-chars")).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(retry.is_some());
    let (st, _, v) = login_from(&router, two, login_body("acme", "ada", "pw-of-8-chars")).await;
    assert_eq!(st, StatusCode::OK, "{v}");

    let enroll = |peer: Option<IpAddr>| {
        let router = router.clone();
        async move {
            let mut req = Request::builder()
                .method("POST")
                .uri("/api/v1/enroll")
                .body(Body::from(enroll_body("tenr_unknown")))
                .unwrap();
            if let Some(ip) = peer {
                req.extensions_mut()
                    .insert(PeerAddr(SocketAddr::new(ip, 40000)));
            }
            router.oneshot(req).await.unwrap().status()
        }
    };
    for _ in 0..6 {
        assert_eq!(enroll(one).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(enroll(one).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(enroll(two).await, StatusCode::UNAUTHORIZED);
}

/// The probe: a tenant API token uploading a 60 MB "release" is answered
/// 403 at once, without the server waiting for (or reading) the body: here
/// the body never comes at all. An admin upload announced over the limit
/// is refused before its body too.
#[tokio::test]
async fn a_release_upload_is_refused_before_its_body_is_read() {
    let dir = std::env::temp_dir().join(format!("tether-edge-releases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = state()
        .with_release_store(tether_server::db::sqlite::release_dir(&dir))
        .with_releases(tether_server::updates::ReleaseConfig {
            ..Default::default()
        });
    let srv = server_with(state, None).await;
    let (_, api) = tenant(&srv.router, "acme").await;
    let head = |token: &str, len: u64| {
        format!(
            "POST /api/v1/releases/0.2.0/tether-x86_64 HTTP/1.1\r\nHost: t\r\n\
             Authorization: Bearer {token}\r\nContent-Length: {len}\r\n\r\nELF"
        )
    };
    let started = std::time::Instant::now();
    let (st, body) = raw_exchange(
        srv.addr,
        head(&api, 60_000_000).as_bytes(),
        Duration::from_secs(3),
    )
    .await
    .expect("answered without the body");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let (st, body) = raw_exchange(
        srv.addr,
        head(ADMIN, 65 * 1024 * 1024).as_bytes(),
        Duration::from_secs(3),
    )
    .await
    .expect("answered without the body");
    assert_eq!(st, 413, "{body}");
    // Refused uploads leave no release behind.
    assert!(!dir.join("0.2.0").exists());
    // A real upload is streamed into place.
    let (st, v) = call(
        &srv.router,
        "POST",
        "/api/v1/releases/0.2.0/tether-x86_64",
        Some(ADMIN),
        Some("binary bytes"),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["size"], 12);
    assert_eq!(
        std::fs::read(dir.join("0.2.0/tether-x86_64")).unwrap(),
        b"binary bytes"
    );
    assert_eq!(
        std::fs::read_dir(dir.join(".partial")).unwrap().count(),
        0,
        "no partial file left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Four admin uploads at once at most: a fifth is answered 429 while they
/// run (each holds a database connection with PostgreSQL); when they end
/// (their clients gone mid-body: nothing kept) uploads go through again.
#[tokio::test]
async fn release_uploads_run_four_at_a_time() {
    let dir = std::env::temp_dir().join(format!("tether-edge-uploads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = state().with_release_store(tether_server::db::sqlite::release_dir(&dir));
    let srv = server_with(state, None).await;
    let head = |version: &str, len: u64| {
        format!(
            "POST /api/v1/releases/{version}/tether-x86_64 HTTP/1.1\r\nHost: t\r\n\
             Authorization: Bearer {ADMIN}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {len}\r\n\r\nELF"
        )
    };
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(head(&format!("0.{i}.0"), 1000).as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    // Each has begun writing (its partial file is there).
    let partials = || {
        std::fs::read_dir(dir.join(".partial"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while partials() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            partials()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, body) = raw_exchange(
        srv.addr,
        head("0.9.0", 3).as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .expect("answered");
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    drop(held);
    let started = std::time::Instant::now();
    loop {
        let (st, body) = raw_exchange(
            srv.addr,
            head("0.9.0", 3).as_bytes(),
            Duration::from_secs(5),
        )
        .await
        .expect("answered");
        if st == 201 {
            break;
        }
        assert_eq!(st, 429, "{body}");
        assert!(started.elapsed() < Duration::from_secs(10), "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read(dir.join("0.9.0/tether-x86_64")).unwrap(),
        b"ELF"
    );
    for i in 0..4 {
        assert!(
            !dir.join(format!("0.{i}.0")).exists(),
            "a cut upload was kept"
        );
    }
    assert_eq!(partials(), 0, "no partial file left");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Slowloris: a body that does not arrive within --body-timeout is
/// answered 408 and the connection closed, instead of holding a task and a
/// connection for ever.
#[tokio::test]
async fn a_body_that_trickles_is_cut_at_the_deadline() {
    let state = state().with_edge(edge(|c| c.body_timeout = Duration::from_secs(1)));
    let srv = server_with(state, None).await;
    let head =
        "POST /api/v1/session HTTP/1.1\r\nHost: t\r\nContent-Length: 200\r\n\r\n{\"tenant\":";
    let started = std::time::Instant::now();
    let (st, body) = raw_exchange(srv.addr, head.as_bytes(), Duration::from_secs(5))
        .await
        .expect("answered at the deadline");
    assert_eq!(st, 408, "{body}");
    assert!(body.contains("did not arrive within 1 s"), "{body}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// Connections over the per-address cap are closed as soon as accepted;
/// a closed one gives its slot back.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let state = state().with_edge(edge(|c| c.max_connections_per_address = 3));
    let srv = server_with(state, None).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        // Served: an answer comes back on a kept-alive connection.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut extra = TcpStream::connect(srv.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    drop(held.pop());
    let again = wait_until(WAIT, || async {
        raw_exchange(
            srv.addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .await
    })
    .await;
    assert_eq!(again.0, 200);
}

async fn wait_until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A terminal WebSocket's Origin must carry this server's scheme: an
/// http:// page on the same host and port is another origin.
#[tokio::test]
async fn websocket_origin_includes_the_scheme() {
    let router = app(state());
    acme_with_ada(&router).await;
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/session")
        .body(Body::from(login_body("acme", "ada", "pw-of-8-chars")))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let get = |origin: &'static str| {
        let router = router.clone();
        let cookie = cookie.clone();
        async move {
            let req = Request::builder()
                .uri("/api/v1/terminals/tm_000000000000/attach?offset=0")
                .header("Host", "tether.example:8443")
                .header("Cookie", cookie)
                .header("Origin", origin)
                .body(Body::empty())
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        }
    };
    // Past the Origin check: no such terminal.
    assert_eq!(
        get("https://tether.example:8443").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("http://tether.example:8443").await,
        StatusCode::FORBIDDEN
    );
}
