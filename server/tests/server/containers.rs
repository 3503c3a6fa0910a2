//! Container management end to end: a real WebSocket client plays the
//! runner (answers `docker_request`, sends `docker_state`, snapshots and
//! events) against the real server, and the REST API is called as a client
//! would.

use std::collections::BTreeMap;

use tether::protocol::{
    ContainerEvent, ContainerSnapshot, ContainerSummary, DockerOp, DockerRequest, DockerResponse,
    DockerState, ErrorBody,
};

use crate::util::*;

fn summary(id: &str, name: &str, state: &str) -> ContainerSummary {
    ContainerSummary {
        id: id.into(),
        name: name.into(),
        image: "busybox:local".into(),
        state: state.into(),
        status: if state == "running" {
            "Up 2 seconds".into()
        } else {
            "Exited (0) 1 second ago".into()
        },
        created: 1_700_000_000,
        ports: json!([]),
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
    }
}

fn event(id: &str, action: &str, container: Option<ContainerSummary>) -> Message {
    Message::ContainerEvent(ContainerEvent {
        time_nano: 1_700_000_000_123_456_789,
        action: action.into(),
        container_id: id.into(),
        attributes: BTreeMap::from([("name".to_owned(), format!("name-of-{id}"))]),
        container,
    })
}

async fn send(ws: &mut Ws, id: u64, body: Message) {
    ws.send(WsMessage::text(encode_control(id, body)))
        .await
        .unwrap();
}

fn docker(status: u16, body: Value) -> Message {
    Message::DockerResponse(DockerResponse { status, body })
}

/// Call the API while the fake runner answers the one `docker_request` it
/// causes with `reply`: the request the runner saw, and the API's answer.
async fn through_runner(
    s: &Server,
    ws: &mut Ws,
    api: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    reply: Message,
) -> (DockerRequest, (StatusCode, Value)) {
    let (router, api, method, path, body) = (
        s.router.clone(),
        api.to_owned(),
        method.to_owned(),
        path.to_owned(),
        body.map(str::to_owned),
    );
    let answer =
        tokio::spawn(
            async move { call(&router, &method, &path, Some(&api), body.as_deref()).await },
        );
    let req = loop {
        let env = next_control(ws).await;
        if let Message::DockerRequest(r) = env.body {
            send(ws, env.id, reply).await;
            break r;
        }
    };
    (req, answer.await.unwrap())
}

#[tokio::test]
async fn docker_calls_pass_through_the_runner_unchanged() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (rid, credential) = runner(&s.router, &api).await;
    let base = format!("/api/v1/runners/{rid}");

    // Before any report: unknown, said so.
    let v = get(&s.router, &api, &format!("{base}/docker")).await;
    assert_eq!(
        (v["available"].as_bool(), v["updated_at"].is_null()),
        (Some(false), true)
    );

    let (mut ws, _) = online_as(&s, &credential, "edge-01").await;
    let state = DockerState {
        available: true,
        version: Some("24.0.7".into()),
        api_version: Some("1.43".into()),
        reason: None,
    };
    send(&mut ws, 2, Message::DockerState(state)).await;
    sync(&mut ws, 3).await;
    let v = get(&s.router, &api, &format!("{base}/docker")).await;
    assert_eq!(
        (
            v["available"].as_bool(),
            v["version"].as_str(),
            v["api_version"].as_str(),
            v["reason"].is_null(),
            v["updated_at"].is_string()
        ),
        (Some(true), Some("24.0.7"), Some("1.43"), true, true)
    );
    // Persisted, not only in memory.
    let stored = s
        .state
        .db
        .control
        .docker_state(&rid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state.version.as_deref(), Some("24.0.7"));

    // List: filters pass through, Docker's entries become summaries.
    let list = json!([{ "Id": "c0ffee", "Names": ["/web"], "Image": "nginx:1", "State": "running",
        "Status": "Up 5 minutes", "Created": 1700000001,
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}],
        "Labels": {"app": "web"} }]);
    let (req, (status, v)) = through_runner(
        &s,
        &mut ws,
        &api,
        "GET",
        &format!("{base}/containers?filters=%7B%22label%22%3A%5B%22app%3Dweb%22%5D%7D"),
        None,
        docker(200, list),
    )
    .await;
    assert_eq!(req.op, DockerOp::List);
    assert_eq!(req.filters, Some(json!({"label": ["app=web"]})));
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["cached"], false);
    assert_eq!(
        v["containers"],
        json!([{ "id": "c0ffee", "name": "web", "image": "nginx:1", "state": "running",
            "status": "Up 5 minutes", "created": 1700000001,
            "ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}],
            "labels": {"app": "web"} }])
    );

    // Inspect: Docker's JSON unchanged.
    let inspected =
        json!({"Id": "c0ffee", "Name": "/web", "State": {"Status": "running", "Pid": 42}});
    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "GET",
        &format!("{base}/containers/web"),
        None,
        docker(200, inspected.clone()),
    )
    .await;
    assert_eq!(
        (req.op, req.container.as_deref()),
        (DockerOp::Inspect, Some("web"))
    );
    assert_eq!(got, (StatusCode::OK, inspected));

    // Docker's 404 keeps its status and message, verbatim.
    let (_, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "GET",
        &format!("{base}/containers/nope"),
        None,
        docker(404, json!({"message": "No such container: nope"})),
    )
    .await;
    assert_eq!(
        got,
        (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "docker", "message": "No such container: nope"}, "docker_status": 404})
        )
    );

    // 304: already started.
    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/containers/web/start"),
        None,
        docker(304, Value::Null),
    )
    .await;
    assert_eq!(req.op, DockerOp::Start);
    assert_eq!(
        got,
        (
            StatusCode::OK,
            json!({"status": 304, "changed": false, "result": null})
        )
    );

    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/containers/web/stop?timeout=3"),
        None,
        docker(204, Value::Null),
    )
    .await;
    assert_eq!((req.op, req.timeout_s), (DockerOp::Stop, Some(3)));
    assert_eq!(
        got,
        (
            StatusCode::OK,
            json!({"status": 204, "changed": true, "result": null})
        )
    );

    let (req, _) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/containers/web/restart?timeout=1"),
        None,
        docker(204, Value::Null),
    )
    .await;
    assert_eq!((req.op, req.timeout_s), (DockerOp::Restart, Some(1)));

    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/containers/web/kill?signal=SIGHUP"),
        None,
        docker(204, Value::Null),
    )
    .await;
    assert_eq!(
        (req.op, req.signal.as_deref()),
        (DockerOp::Kill, Some("SIGHUP"))
    );
    assert_eq!(got.0, StatusCode::OK);

    // Docker's 409 (remove a running container) comes back as a 409.
    let conflict = "You cannot remove a running container c0ffee. Stop the container before attempting removal or force remove";
    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "DELETE",
        &format!("{base}/containers/web"),
        None,
        docker(409, json!({ "message": conflict })),
    )
    .await;
    assert_eq!(
        (req.op, req.force, req.volumes),
        (DockerOp::Remove, false, false)
    );
    assert_eq!(got.0, StatusCode::CONFLICT);
    assert_eq!(got.1["error"]["code"], "docker");
    assert_eq!(got.1["error"]["message"], conflict);
    assert_eq!(got.1["docker_status"], 409);

    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "DELETE",
        &format!("{base}/containers/web?force=true&volumes=true"),
        None,
        docker(204, Value::Null),
    )
    .await;
    assert_eq!(
        (req.op, req.force, req.volumes),
        (DockerOp::Remove, true, true)
    );
    assert_eq!(got.0, StatusCode::OK);

    // Prune: filters in, Docker's body out.
    let pruned = json!({"ContainersDeleted": ["a1", "b2"], "SpaceReclaimed": 12345});
    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/containers/prune"),
        Some(r#"{"filters": {"until": ["24h"]}}"#),
        docker(200, pruned.clone()),
    )
    .await;
    assert_eq!(
        (req.op, req.filters),
        (DockerOp::PruneContainers, Some(json!({"until": ["24h"]})))
    );
    assert_eq!(got, (StatusCode::OK, pruned));
    let (req, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/images/prune"),
        None,
        docker(200, json!({"ImagesDeleted": null, "SpaceReclaimed": 0})),
    )
    .await;
    assert_eq!((req.op, req.filters), (DockerOp::PruneImages, None));
    assert_eq!(got.1["SpaceReclaimed"], 0);

    // The runner cannot reach Docker: 503 with its reason.
    let reason = "no socket at /var/run/docker.sock";
    let (_, got) = through_runner(
        &s,
        &mut ws,
        &api,
        "POST",
        &format!("{base}/containers/web/start"),
        None,
        Message::Error(ErrorBody {
            code: "docker_unavailable".into(),
            message: reason.into(),
        }),
    )
    .await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable");
    assert_eq!(got.1["error"]["message"], reason);

    // Bad input never reaches the runner.
    for path in [
        format!("{base}/containers/-web"),
        format!("{base}/containers/we%20b"),
        format!("{base}/containers/{}", "a".repeat(129)),
        format!("{base}/containers/web%2Fx/start"),
        format!("{base}/containers/web/stop?timeout=9999"),
        format!("{base}/containers/web/stop?timeout=-1"),
        format!("{base}/containers/web/kill?signal=KILL%3Brm"),
        format!("{base}/containers?filters=nope"),
        format!("{base}/containers?filters=%5B1%5D"),
        format!("{base}/containers/events?since=yesterday"),
    ] {
        let method = if path.contains("/start") || path.contains("/stop") || path.contains("/kill")
        {
            "POST"
        } else {
            "GET"
        };
        assert_error(
            &call(&s.router, method, &path, Some(&api), None).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_error(
        &call(
            &s.router,
            "POST",
            &format!("{base}/containers/prune"),
            Some(&api),
            Some(r#"{"filters": [1]}"#),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // No answer in time: 504 (the late answer is dropped quietly).
    let router = s.router.clone();
    let (api2, path) = (api.clone(), format!("{base}/containers/web"));
    let late = tokio::spawn(async move { call(&router, "GET", &path, Some(&api2), None).await });
    let env = next_control(&mut ws).await;
    assert!(matches!(env.body, Message::DockerRequest(_)), "{env:?}");
    assert_error(
        &late.await.unwrap(),
        StatusCode::GATEWAY_TIMEOUT,
        "runner_timeout",
    );
    send(&mut ws, env.id, docker(200, json!({}))).await;
    sync(&mut ws, 4).await;
}

#[tokio::test]
async fn snapshots_and_events_keep_the_cached_view_and_history() {
    let s = server().await;
    let (_, api_a) = tenant(&s.router, "a").await;
    let (_, api_b) = tenant(&s.router, "b").await;
    let (rid, credential_a) = runner(&s.router, &api_a).await;
    let (_, credential_b) = runner(&s.router, &api_b).await;
    let base = format!("/api/v1/runners/{rid}");

    // Tenant A follows its events.
    let req = Request::get("/api/v1/events")
        .header("Authorization", format!("Bearer {api_a}"))
        .body(Body::empty())
        .unwrap();
    let resp = s.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = resp.into_body().into_data_stream();

    let (mut ws_b, _) = online_as(&s, &credential_b, "other").await;
    let (mut ws, _) = online_as(&s, &credential_a, "edge-01").await;
    // Nothing cached yet: an empty view, never reported.
    let v = get(&s.router, &api_a, &format!("{base}/containers?cached=true")).await;
    assert_eq!(
        (v["containers"].clone(), v["as_of"].is_null()),
        (json!([]), true)
    );

    send(
        &mut ws,
        2,
        Message::ContainerSnapshot(ContainerSnapshot {
            containers: vec![
                summary("aaa1", "web", "exited"),
                summary("bbb2", "db", "running"),
            ],
        }),
    )
    .await;
    send(
        &mut ws_b,
        2,
        event("zzz9", "start", Some(summary("zzz9", "secret", "running"))),
    )
    .await;
    send(
        &mut ws,
        3,
        event("aaa1", "start", Some(summary("aaa1", "web", "running"))),
    )
    .await;
    send(&mut ws, 4, event("bbb2", "destroy", None)).await;
    sync(&mut ws, 5).await;
    sync(&mut ws_b, 5).await;

    let v = get(&s.router, &api_a, &format!("{base}/containers?cached=true")).await;
    assert_eq!(
        (v["cached"].as_bool(), v["as_of"].is_string()),
        (Some(true), true)
    );
    let containers = v["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{v}");
    assert_eq!(
        (
            containers[0]["name"].as_str(),
            containers[0]["state"].as_str()
        ),
        (Some("web"), Some("running"))
    );

    let history = get(
        &s.router,
        &api_a,
        &format!("{base}/containers/events?since=1h"),
    )
    .await;
    let actions: Vec<(&str, &str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["container_id"].as_str().unwrap(),
                e["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("start", "aaa1", "web"),
            ("destroy", "bbb2", "name-of-bbb2")
        ]
    );
    assert_eq!(history[0]["time_nano"], 1_700_000_000_123_456_789_i64);
    assert_eq!(history[0]["container"]["state"], "running");
    assert!(history[1]["container"].is_null());
    let future =
        tether_server::common::clock::rfc3339(tether_server::common::clock::now_ms() + 3_600_000);
    let later = get(
        &s.router,
        &api_a,
        &format!("{base}/containers/events?since={future}"),
    )
    .await;
    assert_eq!(later, json!([]));

    // SSE: A's two container events, not B's.
    let mut text = String::new();
    while text.matches("event: container").count() < 2 {
        let chunk = tokio::time::timeout(WAIT, sse.next())
            .await
            .expect("container events on the SSE stream")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!text.contains("zzz9") && !text.contains("secret"), "{text}");
    let data: Vec<Value> = text
        .split("\n\n")
        .filter(|block| block.contains("event: container"))
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(data[0]["runner_id"], rid.as_str());
    assert_eq!(
        (data[0]["action"].as_str(), data[0]["name"].as_str()),
        (Some("start"), Some("web"))
    );
    assert_eq!(data[0]["container"]["state"], "running");
    assert_eq!(
        (data[1]["action"].as_str(), data[1]["container"].is_null()),
        (Some("destroy"), true)
    );

    // Offline: live calls are 409, the cached view and state still answer.
    ws.close(None).await.unwrap();
    eventually_health(
        &s,
        &api_a,
        &rid,
        &[
            pair("active", "connected"),
            pair("unreachable", "connection closed"),
        ],
    )
    .await;
    assert_error(
        &call(
            &s.router,
            "GET",
            &format!("{base}/containers"),
            Some(&api_a),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "runner_unreachable",
    );
    assert_error(
        &call(
            &s.router,
            "POST",
            &format!("{base}/containers/web/start"),
            Some(&api_a),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "runner_unreachable",
    );
    let v = get(&s.router, &api_a, &format!("{base}/containers?cached=true")).await;
    assert_eq!(v["containers"][0]["name"], "web");
    get(&s.router, &api_a, &format!("{base}/docker")).await;
    drop(ws_b);
}

#[tokio::test]
async fn container_endpoints_are_tenant_scoped() {
    let s = server().await;
    let (_, api_a) = tenant(&s.router, "a").await;
    let (_, api_b) = tenant(&s.router, "b").await;
    let (rid, credential) = runner(&s.router, &api_a).await;
    // Online, so a leak would reach the runner instead of failing early.
    let (_ws, _) = online_as(&s, &credential, "edge-01").await;
    let base = format!("/api/v1/runners/{rid}");
    let endpoints = [
        ("GET", format!("{base}/docker")),
        ("GET", format!("{base}/containers")),
        ("GET", format!("{base}/containers?cached=true")),
        ("GET", format!("{base}/containers?filters=nope")),
        ("GET", format!("{base}/containers/events")),
        ("GET", format!("{base}/containers/events?since=bad")),
        ("GET", format!("{base}/containers/web")),
        ("GET", format!("{base}/containers/-bad-name")),
        ("DELETE", format!("{base}/containers/web?force=true")),
        ("POST", format!("{base}/containers/web/start")),
        ("POST", format!("{base}/containers/web/stop?timeout=10")),
        ("POST", format!("{base}/containers/web/restart")),
        ("POST", format!("{base}/containers/web/kill?signal=SIGKILL")),
        ("POST", format!("{base}/containers/prune")),
        ("POST", format!("{base}/images/prune")),
    ];
    for (method, path) in &endpoints {
        assert_error(
            &call(&s.router, method, path, Some(&api_b), Some("{not json")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &call(&s.router, method, path, Some(ADMIN), None).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_error(
            &call(&s.router, method, path, None, None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    // An unknown runner of one's own tenant is a 404 too.
    assert_error(
        &call(
            &s.router,
            "GET",
            "/api/v1/runners/rn_nope/containers",
            Some(&api_a),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}
