//! Least authority: every request is scoped to one tenant, and each kind of
//! token does only its own job. Errors are JSON with stable codes.

use crate::util::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn tenant_b_gets_not_found_for_tenant_a_on_every_endpoint() {
    let server = Server::start();
    let a = server.tenant("a");
    let b = server.tenant("b");
    let mut runner = Runner::enroll(&server, &a);
    runner.start(&["--heartbeat", "1s"]);
    a.wait_health(&runner.id, "active", Duration::from_secs(15));
    let (token_id, _) = a.enrollment_token(600);

    let id = &runner.id;
    let calls = [
        ("GET", format!("/api/v1/runners/{id}")),
        ("GET", format!("/api/v1/runners/{id}/health")),
        ("POST", format!("/api/v1/runners/{id}/ping")),
        ("POST", format!("/api/v1/runners/{id}/revoke")),
        ("DELETE", format!("/api/v1/tokens/{token_id}")),
    ];
    for (method, path) in &calls {
        let (st, v) = b.call(method, path, None);
        assert_eq!(st, 404, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{method} {path}: {v}");
        assert!(
            !v.to_string().contains("\"a\""),
            "no hint of the other tenant: {v}"
        );
    }
    let (_, list) = b.call("GET", "/api/v1/runners", None);
    assert_eq!(list, json!([]), "tenant b lists no runners");
    let (_, tokens) = b.call("GET", "/api/v1/tokens", None);
    assert_eq!(tokens, json!([]), "tenant b lists no tokens");

    // Nothing b tried changed anything of a's.
    assert_eq!(a.health(id), "active");
    let (_, tokens) = a.call("GET", "/api/v1/tokens", None);
    let t = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(t["state"], "unused", "{t}");
}

#[test]
fn admin_and_tenant_tokens_are_not_interchangeable() {
    let server = Server::start();
    let a = server.tenant("a");
    let api = server.api();

    let (st, v) = api.call("GET", "/api/v1/runners", Some(&server.admin_token), None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (st, v) = api.call(
        "POST",
        "/api/v1/tenants",
        Some(&a.token),
        Some(json!({"name": "evil"})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (_, token) = a.enrollment_token(600);
    let (st, v) = api.call("GET", "/api/v1/runners", Some(&token), None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "an enrollment token is no API token: {v}"
    );
    for bad in [None, Some("tapi_nope")] {
        let (st, v) = api.call("GET", "/api/v1/runners", bad, None);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{v}"
        );
    }
}

#[test]
fn bad_requests_and_unknown_routes_get_json_errors() {
    let server = Server::start();
    let a = server.tenant("a");
    let api = server.api();
    let (st, v) = api.call(
        "POST",
        "/api/v1/tenants",
        Some(&server.admin_token),
        Some(json!({"nom": 1})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, v) = api.call(
        "POST",
        "/api/v1/tenants",
        Some(&server.admin_token),
        Some(json!({"name": "a"})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let (st, v) = a.call("GET", "/api/v1/no-such-thing", None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (st, v) = api.call("POST", "/api/v1/enroll", None, Some(json!({"token": 5})));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, v) = api.call("GET", "/healthz", None, None);
    assert_eq!((st, v["ok"].as_bool()), (200, Some(true)), "{v}");
}
