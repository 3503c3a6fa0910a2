//! Host telemetry: metrics, rollups, Prometheus exposition, fingerprints.

use crate::util::*;

#[tokio::test]
async fn metrics_are_stored_acknowledged_and_resumed() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (mut ws, welcome) = online_as(&s, &credential, "edge-01").await;
    assert_eq!(welcome.metrics_ts, None, "nothing stored yet");

    // Twelve samples a minute ago, 5 s apart, in two frames.
    let t0 = (tether_server::common::clock::now_ms() - 60_000) as u64;
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
    assert_eq!(s.state.db.metrics.count("metrics_raw").await, 13);
    let v = get(&s.router, &api, &path).await;
    assert_eq!(points(&v, "cpu.busy").len(), 13);
}

#[tokio::test]
async fn metrics_queries_filter_series_and_pick_a_resolution() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (mut ws, _) = online_as(&s, &credential, "edge-01").await;
    let t0 = (tether_server::common::clock::now_ms() - 30_000) as u64;
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
    let from = tether_server::common::clock::rfc3339(t0 as i64 - 1000);
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
    let m = &s.state.db.metrics;
    let src = m.source(&runner_id).await.unwrap();
    let defs = vec![tether::metrics::wire::SeriesDef {
        name: "load.1".into(),
        unit: Unit::Load,
        scale: 0.01,
    }];
    let t0: i64 = 1_000_000_800_000; // 2001-09-09T02:00:00Z, an hour boundary
    let schema = m.intern_schema(&defs, t0).await.unwrap();
    // 2 hours at 10 s: load = 100 × (minute % 3) + second / 10 (hundredths).
    let rows = (0..720)
        .map(|i| {
            let ts = t0 + i * 10_000;
            let v = 100 * ((i / 6) % 3) + i % 6;
            let mut b = Vec::new();
            tether_server::db::metrics::encode_values(&[Some(v)], &mut b);
            (ts, b)
        })
        .collect();
    m.insert(
        vec![tether_server::db::metrics::SampleRows {
            source: src,
            schema,
            rows,
        }],
        t0,
    )
    .await
    .unwrap();
    let stats = m.maintain(t0 + 3 * 3_600_000).await.unwrap();
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
    m.maintain(tether_server::common::clock::now_ms())
        .await
        .unwrap();
    assert_eq!(m.count("metrics_raw").await, 0);
    assert_eq!(m.count("metrics_1m").await, 0);
    assert_eq!(m.count("metrics_1h").await, 0);
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
    let t0 = (tether_server::common::clock::now_ms() - 10_000) as u64;
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
    let t = tether_server::common::clock::now_ms() as u64;
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
    assert_eq!(
        v["collected_at"],
        tether_server::common::clock::rfc3339(t as i64)
    );
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
    assert_eq!(
        d[0]["at"],
        tether_server::common::clock::rfc3339(t as i64 + 1000)
    );
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
    let since = tether_server::common::clock::rfc3339(t as i64 + 2000);
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

#[tokio::test]
async fn bad_metrics_close_4004_and_others_keep_going() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (runner_id, credential) = runner(&s.router, &api).await;
    let (_, bystander_cred) = runner(&s.router, &api).await;
    let (mut bystander, _) = online_as(&s, &bystander_cred, "calm").await;
    let t0 = (tether_server::common::clock::now_ms() - 20_000) as u64;

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
    while s.state.db.metrics.count("metrics_raw").await < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A sample from a clock far ahead, or older than raw retention, is
    // acknowledged or skipped but never stored.
    let (mut ws, _) = online_as(&s, &credential, "rogue").await;
    let now = tether_server::common::clock::now_ms() as u64;
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
    assert_eq!(s.state.db.metrics.count("metrics_raw").await, 2);
}
