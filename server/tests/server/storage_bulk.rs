//! The storage conformance suite, bulk half: the stores whose PostgreSQL
//! tables are partitioned by time (MetricStore, LogStore, JobStore), run against the
//! embedded SQLite and a real PostgreSQL (`pg.rs`) by `both!`, as in
//! `storage.rs`. The PostgreSQL runs also check the partitions themselves
//! (made on demand and ahead, dropped whole by retention).

use std::sync::Arc;

use tether::metrics::wire::{SeriesDef, Unit};
use tether::protocol::JobResult;
use tether_server::common::clock;
use tether_server::db::jobs::{Deployment, JobSpec, OutputRow, RetainStats, Script, StoredApp};
use tether_server::db::logs::{
    BlockIn, CollectPolicy, ExpireStats, LogQuery, LogRetention, StreamSel,
};
use tether_server::db::metrics::{
    encode_values, tidy, MaintainStats, RangeError, Resolution, Retention, SampleRows,
    SeriesFilter, HOUR_MS, MINUTE_MS,
};
use tether_server::db::postgres::Postgres;
use tether_server::db::{JobStore, LogStore, MetricStore};

use crate::pg;

const DAY_MS: i64 = 24 * HOUR_MS;

/// The stores under test, and for PostgreSQL its URL (to look at the
/// partitions).
struct Bulk {
    metrics: Arc<dyn MetricStore>,
    logs: Arc<dyn LogStore>,
    jobs: Arc<dyn JobStore>,
    pg: Option<String>,
}

impl Bulk {
    async fn sqlite(retention: Retention) -> Bulk {
        let db = tether_server::db::sqlite::open_in_memory(retention).unwrap();
        Bulk {
            metrics: db.metrics.clone(),
            logs: db.logs.clone(),
            jobs: db.jobs.clone(),
            pg: None,
        }
    }

    async fn postgres(retention: Retention) -> Bulk {
        let url = pg::fresh_database().await;
        let db = Postgres::connect(&url).await.unwrap();
        Bulk {
            metrics: db.metrics(retention),
            logs: db.logs(LogRetention::default(), CollectPolicy::All),
            jobs: db.jobs(),
            pg: Some(url),
        }
    }

    /// The partitions of `table`, by name, oldest first (PostgreSQL only).
    async fn partitions(&self, table: &str) -> Option<Vec<String>> {
        let url = self.pg.as_ref()?;
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1::TEXT::regclass ORDER BY 1",
                &[&table],
            )
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        Some(rows.iter().map(|r| r.get(0)).collect())
    }
}

macro_rules! both {
    ($($check:ident ($retention:expr)),* $(,)?) => {$(
        mod $check {
            #[tokio::test]
            async fn sqlite() {
                super::$check(super::Bulk::sqlite($retention).await).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$check(super::Bulk::postgres($retention).await).await
            }
        }
    )*};
}

both!(
    metrics_duplicates_ranges_and_latest(Default::default()),
    metrics_rollups_are_exact_and_late_samples_redo_them(Default::default()),
    metrics_retention_drops_old_data_and_keeps_the_rest(super::short_retention()),
    logs_store_and_query_by_time_text_and_stream(Default::default()),
    logs_retention_by_age_and_bytes_then_whole_days(Default::default()),
    jobs_go_pending_running_final_once_with_output_in_order(Default::default()),
    jobs_over_the_quota_are_refused_all_or_nothing(Default::default()),
    jobs_retention_drops_old_days_and_keeps_tenants_under_their_bytes(Default::default()),
    scripts_secrets_apps_and_deployments_round_trip(Default::default()),
);

fn short_retention() -> Retention {
    Retention {
        raw_ms: HOUR_MS,
        minute_ms: 2 * HOUR_MS,
        hour_ms: 3 * HOUR_MS,
    }
}

fn def(name: &str, unit: Unit, scale: f64) -> SeriesDef {
    SeriesDef {
        name: name.into(),
        unit,
        scale,
    }
}

async fn rows(s: &Bulk, src: i64, schema: i64, samples: &[(i64, Vec<Option<i64>>)]) -> usize {
    let rows = samples
        .iter()
        .map(|(ts, v)| {
            let mut b = Vec::new();
            encode_values(v, &mut b);
            (*ts, b)
        })
        .collect();
    let batch = SampleRows {
        source: src,
        schema,
        rows,
    };
    let now = samples.iter().map(|s| s.0).max().unwrap_or(0);
    s.metrics.insert(vec![batch], now).await.unwrap()
}

async fn metrics_duplicates_ranges_and_latest(s: Bulk) {
    let m = &s.metrics;
    let src = m.source("rn_1").await.unwrap();
    assert_eq!(m.source("rn_1").await.unwrap(), src);
    assert_ne!(m.source("rn_2").await.unwrap(), src);
    assert_eq!(m.last_ts("rn_1").await.unwrap(), None);
    let schema = m
        .intern_schema(
            &[
                def("cpu.busy", Unit::Percent, 0.01),
                def("mem.used", Unit::Bytes, 1024.0),
            ],
            0,
        )
        .await
        .unwrap();
    // Two days apart: two raw partitions on PostgreSQL, made on demand.
    let t0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS;
    let samples: Vec<_> = (0..10)
        .map(|i| (t0 + i * 5000, vec![Some(i * 100), (i < 9).then_some(2)]))
        .collect();
    assert_eq!(rows(&s, src, schema, &samples).await, 10);
    // Resent (with other values): ignored, and counted as not new.
    let again: Vec<_> = samples
        .iter()
        .map(|(t, _)| (*t, vec![Some(-1), None]))
        .collect();
    assert_eq!(rows(&s, src, schema, &again).await, 0);
    let later = t0 + 2 * DAY_MS;
    assert_eq!(
        rows(&s, src, schema, &[(later, vec![Some(5), None])]).await,
        1
    );
    assert_eq!(m.count("metrics_raw").await, 11);
    assert_eq!(m.last_ts("rn_1").await.unwrap(), Some(later));
    if let Some(parts) = s.partitions("metrics_raw").await {
        let want: Vec<String> = [t0, later]
            .iter()
            .map(|t| format!("metrics_raw_p{}", t / DAY_MS))
            .collect();
        assert_eq!(parts, want);
    }

    let all = SeriesFilter::default();
    assert!(matches!(
        m.range("rn_1", t0, t0 + 50_000, Resolution::Raw, &all, 9)
            .await,
        Err(RangeError::TooManyRows(9))
    ));
    let got = m
        .range("rn_1", t0 + 10_000, t0 + 20_000, Resolution::Raw, &all, 10)
        .await
        .unwrap();
    assert_eq!(
        got[0].points,
        vec![(t0 + 10_000, 2.0), (t0 + 15_000, 3.0), (t0 + 20_000, 4.0)]
    );
    assert_eq!(got[1].points[0], (t0 + 10_000, 2048.0));
    let only = SeriesFilter::parse("mem.*").unwrap();
    let got = m
        .range("rn_1", t0, t0 + 50_000, Resolution::Raw, &only, 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].summary.count, 9);
    assert!(m
        .range("rn_other", 0, 1, Resolution::Raw, &all, 10)
        .await
        .unwrap()
        .is_empty());

    let latest = m.latest(&["rn_none", "rn_1"]).await.unwrap();
    assert_eq!(latest.len(), 1);
    let (i, l) = &latest[0];
    assert_eq!((*i, l.ts), (1, later));
    let vals: Vec<_> = l.series().map(|(d, v)| (d.name.as_str(), v)).collect();
    assert_eq!(vals, [("cpu.busy", Some(0.05)), ("mem.used", None)]);

    // The same series list is one schema, whoever sends it.
    let same = [
        def("cpu.busy", Unit::Percent, 0.01),
        def("mem.used", Unit::Bytes, 1024.0),
    ];
    assert_eq!(m.intern_schema(&same, 5).await.unwrap(), schema);
    assert_ne!(
        m.intern_schema(&[def("a", Unit::Count, 2.0)], 5)
            .await
            .unwrap(),
        schema
    );
}

async fn metrics_rollups_are_exact_and_late_samples_redo_them(s: Bulk) {
    let m = &s.metrics;
    let src = m.source("rn_1").await.unwrap();
    let schema = m
        .intern_schema(
            &[
                def("cpu.busy", Unit::Percent, 0.01),
                def("x", Unit::Count, 1.0),
            ],
            0,
        )
        .await
        .unwrap();
    let t0 = 1_000_000_800_000; // an hour boundary
    assert_eq!(t0 % HOUR_MS, 0);
    // Two hours of 5 s samples: cpu = minute × 100 + 0..11, x every other.
    let mut samples = Vec::new();
    for i in 0..(2 * 720) {
        let minute = i / 12;
        samples.push((
            t0 + i * 5000,
            vec![Some(minute * 100 + i % 12), (i % 2 == 0).then_some(7)],
        ));
    }
    assert_eq!(rows(&s, src, schema, &samples).await, 1440);
    let st = m.maintain(t0 + 2 * HOUR_MS + 5 * MINUTE_MS).await.unwrap();
    assert_eq!((st.minutes_rolled, st.hours_rolled), (120, 2));
    assert_eq!(m.count("metrics_dirty").await, 0);

    let all = SeriesFilter::default();
    let got = m
        .range("rn_1", t0, t0 + 2 * HOUR_MS, Resolution::Minute, &all, 1000)
        .await
        .unwrap();
    assert_eq!(got[0].name, "cpu.busy");
    assert_eq!(got[0].points.len(), 120);
    assert_eq!(got[0].points[0], (t0, 0.055));
    assert_eq!(got[0].points[3], (t0 + 3 * MINUTE_MS, 3.055));
    assert_eq!(got[1].points[0], (t0, 7.0));
    assert_eq!(got[0].summary.max, 119.11);
    assert_eq!(got[0].summary.count, 1440);
    let h = m
        .range("rn_1", t0, t0 + 2 * HOUR_MS, Resolution::Hour, &all, 1000)
        .await
        .unwrap();
    assert_eq!(h[0].points, vec![(t0, 29.555), (t0 + HOUR_MS, 89.555)]);
    assert_eq!(h[1].summary.count, 720);

    // A late sample in minute 0 redoes that minute and that hour only.
    assert_eq!(
        rows(&s, src, schema, &[(t0 + 1, vec![Some(10_000), None])]).await,
        1
    );
    let st = m.maintain(t0 + 3 * HOUR_MS).await.unwrap();
    assert_eq!((st.minutes_rolled, st.hours_rolled), (1, 1));
    let got = m
        .range("rn_1", t0, t0, Resolution::Minute, &all, 1000)
        .await
        .unwrap();
    assert_eq!(
        got[0].points,
        vec![(t0, tidy((66.0 + 10_000.0) / 13.0 / 100.0))]
    );

    // A schema change inside a bucket merges by name.
    let t1 = t0 + 10 * HOUR_MS;
    let other = m
        .intern_schema(&[def("y", Unit::Count, 1.0), def("x", Unit::Count, 1.0)], 0)
        .await
        .unwrap();
    rows(&s, src, schema, &[(t1, vec![Some(1), Some(1)])]).await;
    rows(&s, src, other, &[(t1 + 5000, vec![Some(9), Some(3)])]).await;
    // Incomplete buckets wait for their grace.
    let st = m.maintain(t1 + MINUTE_MS).await.unwrap();
    assert_eq!(st, MaintainStats::default());
    let st = m.maintain(t1 + 2 * HOUR_MS).await.unwrap();
    assert_eq!((st.minutes_rolled, st.hours_rolled), (1, 1));
    for res in [Resolution::Minute, Resolution::Hour] {
        let got = m.range("rn_1", t1, t1, res, &all, 100).await.unwrap();
        let names: Vec<&str> = got.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["cpu.busy", "x", "y"], "{res:?}");
        assert_eq!(got[1].points, vec![(t1, 2.0)], "{res:?}");
        assert_eq!(got[2].points, vec![(t1, 9.0)], "{res:?}");
    }
}

async fn metrics_retention_drops_old_data_and_keeps_the_rest(s: Bulk) {
    let m = &s.metrics;
    assert_eq!(m.retention(), short_retention());
    let src = m.source("rn_1").await.unwrap();
    let t0 = 100 * DAY_MS;
    let schema = m
        .intern_schema(&[def("x", Unit::Count, 1.0)], t0)
        .await
        .unwrap();
    let samples: Vec<_> = (0..(4 * 60))
        .map(|i| (t0 + i * MINUTE_MS, vec![Some(i)]))
        .collect();
    rows(&s, src, schema, &samples).await;
    let now = t0 + 4 * HOUR_MS + 5 * MINUTE_MS;
    let st = m.maintain(now).await.unwrap();
    assert_eq!((st.minutes_rolled, st.hours_rolled), (240, 4));
    // raw: the last hour (minutes 185..239); 1m: the last 2 h (125..239);
    // 1h: hours starting in the last 3 h (2 and 3). The cut falls inside
    // the day's partition: rows, not partitions, go.
    assert_eq!(st.raw_deleted, 185);
    assert_eq!(m.count("metrics_raw").await, 55);
    assert_eq!(m.count("metrics_1m").await, 115);
    assert_eq!(m.count("metrics_1h").await, 2);
    if let Some(parts) = s.partitions("metrics_raw").await {
        // The sample's day, and today's and tomorrow's made ahead.
        assert!(
            parts.contains(&format!("metrics_raw_p{}", t0 / DAY_MS)),
            "{parts:?}"
        );
        assert!(
            parts.contains(&format!("metrics_raw_p{}", t0 / DAY_MS + 1)),
            "{parts:?}"
        );
    }
    // Much later: everything is gone, the schema with it; on PostgreSQL
    // by dropping the partitions whole.
    let later = now + 10 * DAY_MS;
    let st = m.maintain(later).await.unwrap();
    assert_eq!(st.schemas_deleted, 1);
    assert_eq!(
        (st.raw_deleted, st.minute_deleted, st.hour_deleted),
        (55, 115, 2)
    );
    for t in ["metrics_raw", "metrics_1m", "metrics_1h", "metric_schemas"] {
        assert_eq!(m.count(t).await, 0, "{t}");
    }
    if let Some(parts) = s.partitions("metrics_raw").await {
        let want: Vec<String> = [later / DAY_MS, later / DAY_MS + 1]
            .iter()
            .map(|n| format!("metrics_raw_p{n}"))
            .collect();
        assert_eq!(parts, want, "only the ones made ahead are left");
    }
    // last_ts survives: the runner does not resend what was stored.
    assert_eq!(m.last_ts("rn_1").await.unwrap(), Some(t0 + 239 * MINUTE_MS));
}

// ---- logs -----------------------------------------------------------------------------

/// 2026-11-28T08:00:00Z in nanoseconds.
const T0: i64 = 1_795_867_200_000_000_000;
const DAY_NS: i64 = 86_400 * 1_000_000_000;

fn stamp(ns: i64) -> String {
    let secs = clock::rfc3339(ns.div_euclid(1_000_000_000) * 1000);
    format!("{}.{:09}Z", &secs[..19], ns.rem_euclid(1_000_000_000))
}

fn block(container: &str, tag: u8, first_ns: i64, lines: &[&str]) -> BlockIn {
    let mut data = Vec::new();
    let mut ts = first_ns;
    for l in lines {
        data.extend_from_slice(format!("{} {l}\n", stamp(ts)).as_bytes());
        ts += 1_000_000;
    }
    BlockIn {
        runner_id: "r1".into(),
        container: container.into(),
        container_id: format!("{container}-id"),
        tag,
        ts_first: first_ns,
        ts_last: ts - 1_000_000,
        lines: lines.len() as i64,
        data,
        cursor: Some((ts - 1_000_000, 1)),
    }
}

fn texts(lines: Vec<tether_server::db::logs::LogLine>) -> Vec<String> {
    lines.into_iter().map(|l| l.line).collect()
}

async fn logs_store_and_query_by_time_text_and_stream(s: Bulk) {
    let l = &s.logs;
    l.insert(vec![
        block("web", 1, T0, &["GET /a 200", "GET /b 500"]),
        block("web", 2, T0 + 10_000_000, &["error: disk full"]),
        block("db", 1, T0, &["ready"]),
    ])
    .await
    .unwrap();
    let all = LogQuery {
        limit: 100,
        ..Default::default()
    };
    let lines = l.query("r1", "web", &all).await.unwrap();
    assert_eq!(lines[2].stream, "stderr");
    assert_eq!(lines[0].ts_ns, Some(T0));
    assert_eq!(
        texts(lines),
        ["GET /a 200", "GET /b 500", "error: disk full"]
    );
    let q = LogQuery {
        contains: Some("DISK".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        texts(l.query("r1", "web", &q).await.unwrap()),
        ["error: disk full"]
    );
    let q = LogQuery {
        since_ns: Some(T0 + 1_000_000),
        until_ns: Some(T0 + 5_000_000),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        texts(l.query("r1", "web", &q).await.unwrap()),
        ["GET /b 500"]
    );
    let q = LogQuery {
        streams: StreamSel::Stderr,
        limit: 100,
        ..Default::default()
    };
    assert_eq!(l.query("r1", "web", &q).await.unwrap().len(), 1);
    let q = LogQuery {
        limit: 2,
        from_end: true,
        ..Default::default()
    };
    assert_eq!(
        texts(l.query("r1", "web", &q).await.unwrap()),
        ["GET /b 500", "error: disk full"]
    );
    assert!(l.query("r1", "nope", &all).await.unwrap().is_empty());
    assert!(l.query("r2", "web", &all).await.unwrap().is_empty());
    assert_eq!(
        l.cursor("r1", "web-id").await.unwrap(),
        Some((T0 + 10_000_000, 1))
    );
    assert_eq!(l.cursor("r1", "nope").await.unwrap(), None);

    // More blocks than a query fetches at once, over several days: a
    // tail reads from the newest, a head from the oldest, in order.
    let many: Vec<BlockIn> = (0..150)
        .map(|i| block("big", 1, T0 + i * DAY_NS / 100, &[&format!("line {i}")]))
        .collect();
    l.insert(many).await.unwrap();
    let q = LogQuery {
        limit: 3,
        from_end: true,
        ..Default::default()
    };
    assert_eq!(
        texts(l.query("r1", "big", &q).await.unwrap()),
        ["line 147", "line 148", "line 149"]
    );
    let q = LogQuery {
        limit: 130,
        ..Default::default()
    };
    let head = texts(l.query("r1", "big", &q).await.unwrap());
    assert_eq!(head.len(), 130);
    assert_eq!(
        (head[0].as_str(), head[129].as_str()),
        ("line 0", "line 129")
    );
    if let Some(parts) = s.partitions("log_blocks").await {
        assert_eq!(parts.len(), 2, "one partition a day: {parts:?}");
    }

    // Settings: the runner's own policy, else the server's.
    assert_eq!(l.policy("r1").await.unwrap(), CollectPolicy::All);
    let p = CollectPolicy::parse("label:logs=yes").unwrap();
    l.set_policy("r1", Some(&p)).await.unwrap();
    assert_eq!(l.policy("r1").await.unwrap(), p);
    assert_eq!(l.policy("r2").await.unwrap(), CollectPolicy::All);
    l.set_policy("r1", None).await.unwrap();
    assert_eq!(l.policy("r1").await.unwrap(), CollectPolicy::All);
}

async fn logs_retention_by_age_and_bytes_then_whole_days(s: Bulk) {
    let l = &s.logs;
    let now_ms = T0 / 1_000_000;
    for i in 0..10 {
        l.insert(vec![block("web", 1, T0 - (10 - i) * DAY_NS, &["x"; 100])])
            .await
            .unwrap();
        l.insert(vec![block("db", 1, T0 - (10 - i) * DAY_NS, &["y"; 100])])
            .await
            .unwrap();
    }
    // web: 3 days; db: the runner's setting of 2 blocks' worth of bytes.
    l.set_retention(
        "r1",
        "web",
        Some(LogRetention {
            max_age_s: 3 * 86_400 + 60,
            max_bytes: i64::MAX,
        }),
    )
    .await
    .unwrap();
    let block_bytes = block("db", 1, 0, &["y"; 100]).data.len() as i64;
    l.set_retention(
        "r1",
        "",
        Some(LogRetention {
            max_age_s: 365 * 86_400,
            max_bytes: block_bytes * 2,
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        l.retention("r1", "web").await.unwrap().max_age_s,
        3 * 86_400 + 60
    );
    assert_eq!(
        l.retention("r1", "db").await.unwrap().max_bytes,
        block_bytes * 2
    );
    assert_eq!(
        l.retention("r2", "db").await.unwrap(),
        LogRetention::default()
    );
    let stats = l.expire(now_ms).await.unwrap();
    assert_eq!(stats.blocks, 7 + 8);
    assert_eq!(stats.bytes, 15 * block_bytes);
    let all = LogQuery {
        limit: 10_000,
        ..Default::default()
    };
    assert_eq!(l.query("r1", "web", &all).await.unwrap().len(), 300);
    assert_eq!(l.query("r1", "db", &all).await.unwrap().len(), 200);
    assert_eq!(
        l.containers("r1").await.unwrap(),
        vec![
            ("db".to_owned(), block_bytes * 2),
            ("web".to_owned(), block_bytes * 3)
        ]
    );
    assert_eq!(l.expire(now_ms).await.unwrap(), ExpireStats::default());

    // Without the year-long setting, the server's 7 days hold: a month
    // later every block is past every age, and on PostgreSQL its day's
    // partition goes whole, the counters with it.
    l.set_retention("r1", "", None).await.unwrap();
    l.set_retention("r1", "web", None).await.unwrap();
    let later_ms = now_ms + 30 * 86_400_000;
    let stats = l.expire(later_ms).await.unwrap();
    assert_eq!((stats.blocks, stats.bytes), (5, 5 * block_bytes));
    assert!(l.query("r1", "web", &all).await.unwrap().is_empty());
    assert_eq!(
        l.containers("r1").await.unwrap(),
        vec![("db".to_owned(), 0), ("web".to_owned(), 0)]
    );
    if let Some(parts) = s.partitions("log_blocks").await {
        let later_day = later_ms * 1_000_000 / DAY_NS;
        let want: Vec<String> = [later_day, later_day + 1]
            .iter()
            .map(|n| format!("log_blocks_p{n}"))
            .collect();
        assert_eq!(parts, want, "only the ones made ahead are left");
    }
}

// ---- jobs -----------------------------------------------------------------------------

fn spec() -> JobSpec {
    JobSpec {
        program: "/bin/sh".into(),
        args: vec![],
        script: Some("echo hi".into()),
        env: vec![],
        secrets: vec!["TOKEN".into()],
        timeout_s: 0,
        deploy: None,
        signed: Default::default(),
    }
}

async fn create(s: &Bulk, id: &str, tenant: &str, at: i64) -> tether_server::db::jobs::JobRow {
    let jobs = [(id.to_owned(), "rn".to_owned())];
    s.jobs
        .create_jobs(tenant, &jobs, id, &spec(), at, usize::MAX)
        .await
        .unwrap()
        .unwrap()
        .pop()
        .unwrap()
}

fn out(offset: i64, ts_ms: i64, data: &[u8]) -> OutputRow {
    OutputRow {
        offset,
        tag: 1,
        step: 0,
        ts_ms,
        data: data.to_vec(),
        end: offset + tether::protocol::JOB_RECORD_HEADER as i64 + data.len() as i64,
    }
}

async fn jobs_go_pending_running_final_once_with_output_in_order(s: Bulk) {
    let j = &s.jobs;
    let t = 20_000 * DAY_MS;
    let job = create(&s, "jb_1", "tn", t).await;
    assert_eq!(job.status, "pending");
    let other = create(&s, "jb_2", "tn", t + 1).await;
    assert!(other.seq > job.seq);
    assert_eq!(j.open_jobs("rn").await.unwrap().len(), 2);
    // The sweep's question: of these runners, which have a job not final
    // (more than one statement's worth of ids on SQLite).
    let mut asked: Vec<String> = (0..1200).map(|i| format!("rn_{i}")).collect();
    asked.insert(700, "rn".into());
    assert_eq!(j.runners_with_open_jobs(&asked).await.unwrap(), ["rn"]);
    assert!(j.runners_with_open_jobs(&[]).await.unwrap().is_empty());
    j.accepted("jb_1", "running", t + 2).await.unwrap();
    assert_eq!(j.resumable("rn").await.unwrap(), vec![(job.seq, 0)]);
    // Three frames of one job and one of another in one batch; the third
    // arrives first. A row without data only moves the stored end.
    let a = out(0, t + 3, b"one\n");
    let b = out(a.end, t + 3, b"two\n");
    let mut cut = out(b.end, t + 3, b"");
    cut.end = b.end + 100;
    let rows: Arc<[(i64, OutputRow)]> = vec![
        (job.seq, b.clone()),
        (job.seq, a.clone()),
        (other.seq, out(0, t + 3, b"x")),
        (job.seq, cut.clone()),
    ]
    .into();
    let ends = j.store_output(rows.clone()).await.unwrap();
    assert!(
        ends.contains(&(job.seq, cut.end)) && ends.len() == 2,
        "{ends:?}"
    );
    // Resent: changes nothing.
    j.store_output(rows).await.unwrap();
    let got = j.output(job.seq, 0, 10).await.unwrap();
    let texts: Vec<&[u8]> = got.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(texts, [&b"one\n"[..], b"two\n"]);
    assert_eq!((got[1].offset, got[1].end), (b.offset, b.end));
    assert_eq!(j.output(job.seq, a.end, 10).await.unwrap().len(), 1);
    assert_eq!(j.output(job.seq, 0, 1).await.unwrap().len(), 1);

    let r = JobResult {
        job_id: "jb_1".into(),
        channel: 1,
        status: "succeeded".into(),
        exit_code: Some(0),
        signal: None,
        reason: String::new(),
        started_ms: (t + 2) as u64,
        finished_ms: (t + 4) as u64,
        output_bytes: cut.end as u64,
    };
    assert!(j.record_result("rn", &r).await.unwrap());
    assert!(!j.record_result("rn", &r).await.unwrap(), "stored once");
    assert!(!j.record_result("other", &r).await.unwrap());
    let done = j.job("tn", "jb_1").await.unwrap().unwrap();
    assert!(done.is_complete());
    assert_eq!((done.exit_code, done.started_ms), (Some(0), Some(t + 2)));
    assert_eq!(done.spec.secrets, vec!["TOKEN".to_owned()]);
    assert!(
        j.job("tn2", "jb_1").await.unwrap().is_none(),
        "tenant scoped"
    );
    assert!(j.job_by_seq("rn", job.seq).await.unwrap().is_some());
    assert!(j.job_by_seq("rn2", job.seq).await.unwrap().is_none());
    assert!(!j.request_cancel("tn", "jb_1").await.unwrap(), "final");
    assert!(j.request_cancel("tn", "jb_2").await.unwrap());
    assert!(j.job("tn", "jb_2").await.unwrap().unwrap().cancel_requested);
    assert!(j
        .finish("jb_2", "cancelled", "by you", t + 5)
        .await
        .unwrap());
    assert!(!j.finish("jb_2", "failed", "again", t + 6).await.unwrap());
    assert!(j.open_jobs("rn").await.unwrap().is_empty());
    assert!(j
        .runners_with_open_jobs(&["rn".to_owned()])
        .await
        .unwrap()
        .is_empty());
    // A rollout's driver asks for its running targets' jobs at once: the
    // tenant's only, unknown ids skipped, no spec read.
    let mut asked: Vec<String> = (0..1200).map(|i| format!("jb_x{i}")).collect();
    asked.insert(300, "jb_2".into());
    asked.insert(900, "jb_1".into());
    let mut states = j.job_states("tn", &asked).await.unwrap();
    states.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<_> = states
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.status.as_str(),
                s.exit_code,
                s.started_ms,
                s.finished_ms,
                s.is_final(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("jb_1", "succeeded", Some(0), Some(t + 2), Some(t + 4), true),
            ("jb_2", "cancelled", None, None, Some(t + 5), true)
        ]
    );
    assert!(j.job_states("tn2", &asked).await.unwrap().is_empty());
    assert!(j.job_states("tn", &[]).await.unwrap().is_empty());
    let listed = j.jobs("tn", Some("rn"), 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["jb_2", "jb_1"], "newest first");
    assert_eq!(j.jobs("tn", None, 1).await.unwrap().len(), 1);
}

async fn jobs_over_the_quota_are_refused_all_or_nothing(s: Bulk) {
    let j = &s.jobs;
    let two = [("jb_1".into(), "rn".into()), ("jb_2".into(), "rn".into())];
    assert_eq!(
        j.create_jobs("tn_a", &two, "l", &spec(), 1, 2)
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    let one = [("jb_3".into(), "rn".into())];
    assert_eq!(
        j.create_jobs("tn_a", &one, "l", &spec(), 1, 2)
            .await
            .unwrap()
            .unwrap_err(),
        2
    );
    assert!(
        j.job("tn_a", "jb_3").await.unwrap().is_none(),
        "nothing made"
    );
    assert!(j
        .create_jobs("tn_b", &one, "l", &spec(), 1, 2)
        .await
        .unwrap()
        .is_ok());
    j.finish("jb_1", "cancelled", "", 2).await.unwrap();
    let four = [("jb_4".into(), "rn".into())];
    assert!(j
        .create_jobs("tn_a", &four, "l", &spec(), 3, 2)
        .await
        .unwrap()
        .is_ok());
    // Many at once against a cap of 5: exactly 5 made in all.
    let tries = (0..12).map(|i| {
        let j = j.clone();
        async move {
            let id = [(format!("jb_c{i}"), "rn".to_owned())];
            j.create_jobs("tn_c", &id, "l", &spec(), 4, 5)
                .await
                .unwrap()
                .is_ok()
        }
    });
    let made = futures_util::future::join_all(tries).await;
    assert_eq!(made.iter().filter(|m| **m).count(), 5);
}

async fn finished(s: &Bulk, id: &str, tenant: &str, at: i64, bytes: usize) -> i64 {
    let job = create(s, id, tenant, at).await;
    let rows: Arc<[(i64, OutputRow)]> = vec![(job.seq, out(0, at, &vec![b'x'; bytes]))].into();
    s.jobs.store_output(rows).await.unwrap();
    s.jobs.finish(id, "succeeded", "", at).await.unwrap();
    job.seq
}

async fn jobs_retention_drops_old_days_and_keeps_tenants_under_their_bytes(s: Bulk) {
    let j = &s.jobs;
    let day = |n: i64| 20_000 * DAY_MS + n * DAY_MS + 1_000;
    let old = finished(&s, "jb_old", "tn_a", day(1), 100).await;
    let dep = finished(&s, "jb_dep", "tn_a", day(1), 100).await;
    j.add_deployment(
        "tn_a",
        &Deployment {
            id: "jb_dep".into(),
            app: "web".into(),
            image: "web:1".into(),
            kind: "deploy".into(),
            git_ref: None,
            created_ms: day(1),
        },
    )
    .await
    .unwrap();
    // Made on day 2, finished on day 5: its day stays (not all old).
    let late = create(&s, "jb_late", "tn_b", day(2)).await.seq;
    let rows: Arc<[(i64, OutputRow)]> = vec![(late, out(0, day(2), b"late"))].into();
    j.store_output(rows).await.unwrap();
    assert!(j.finish("jb_late", "succeeded", "", day(5)).await.unwrap());
    let a1 = finished(&s, "jb_a1", "tn_a", day(5), 40_000).await;
    let a2 = finished(&s, "jb_a2", "tn_a", day(6), 40_000).await;
    let b1 = finished(&s, "jb_b1", "tn_b", day(5), 40_000).await;
    // Still running: never touched.
    let run = create(&s, "jb_run", "tn_a", day(4)).await;
    let rows: Arc<[(i64, OutputRow)]> = vec![(run.seq, out(0, day(4), &[b'y'; 10_000]))].into();
    j.store_output(rows).await.unwrap();

    let stats = j.retain(day(3), 64 * 1024).await.unwrap();
    // Past the age: the job is gone; the deploy keeps its row, not its output.
    assert!(j.job("tn_a", "jb_old").await.unwrap().is_none());
    assert!(j.output(old, 0, 10).await.unwrap().is_empty());
    let d = j.job("tn_a", "jb_dep").await.unwrap().unwrap();
    assert!(d.output_pruned && j.output(dep, 0, 10).await.unwrap().is_empty());
    assert_eq!(j.output(late, 0, 10).await.unwrap().len(), 1);
    // tn_a stores 90 KB > 64 KiB: its oldest finished output goes.
    assert!(j.job("tn_a", "jb_a1").await.unwrap().unwrap().output_pruned);
    assert!(j.output(a1, 0, 10).await.unwrap().is_empty());
    assert_eq!(j.output(a2, 0, 10).await.unwrap().len(), 1, "newest kept");
    assert_eq!(
        j.output(run.seq, 0, 10).await.unwrap().len(),
        1,
        "running kept"
    );
    assert_eq!(j.output(b1, 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        stats,
        RetainStats {
            jobs_deleted: 1,
            outputs_deleted: 2
        }
    );
    assert_eq!(
        j.retain(day(3), 64 * 1024).await.unwrap(),
        RetainStats::default(),
        "idempotent"
    );
    if let Some(parts) = s.partitions("job_output").await {
        let name = |n: i64| format!("job_output_p{}", day(n) / DAY_MS);
        assert!(!parts.contains(&name(1)), "day 1 dropped whole: {parts:?}");
        for n in [2, 4, 5, 6] {
            assert!(parts.contains(&name(n)), "day {n} kept: {parts:?}");
        }
    }
    // The deploy's history still names its job.
    let history = j.deployments("tn_a", "web", 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert!(history[0].1.as_ref().unwrap().output_pruned);
}

async fn scripts_secrets_apps_and_deployments_round_trip(s: Bulk) {
    let j = &s.jobs;
    let script = Script {
        name: "hello".into(),
        body: "echo hi".into(),
        interpreter: "/bin/sh".into(),
        args: vec!["-e".into()],
        timeout_s: 30,
        updated_ms: 5,
    };
    j.put_script("tn", &script).await.unwrap();
    assert_eq!(j.script("tn", "hello").await.unwrap(), Some(script.clone()));
    assert_eq!(j.script("tn2", "hello").await.unwrap(), None);
    let newer = Script {
        body: "echo bye".into(),
        updated_ms: 6,
        ..script
    };
    j.put_script("tn", &newer).await.unwrap();
    assert_eq!(j.scripts("tn").await.unwrap(), vec![newer]);
    assert!(j.delete_script("tn", "hello").await.unwrap());
    assert!(!j.delete_script("tn", "hello").await.unwrap());

    j.put_secret("tn", "TOKEN", b"nonce", b"sealed", 7)
        .await
        .unwrap();
    j.put_secret("tn", "TOKEN", b"nonce2", b"sealed2", 8)
        .await
        .unwrap();
    assert_eq!(
        j.secret("tn", "TOKEN").await.unwrap(),
        Some((b"nonce2".to_vec(), b"sealed2".to_vec()))
    );
    assert_eq!(
        j.secrets("tn").await.unwrap(),
        vec![("TOKEN".to_owned(), 8)]
    );
    assert!(j.secret("tn2", "TOKEN").await.unwrap().is_none());
    assert!(j.delete_secret("tn", "TOKEN").await.unwrap());
    assert!(j.secrets("tn").await.unwrap().is_empty());

    let app = StoredApp {
        name: "web".into(),
        def: serde_json::json!({"image": "web", "runner": "rn_1"}),
        updated_ms: 9,
    };
    j.put_app("tn", &app).await.unwrap();
    assert_eq!(j.app("tn", "web").await.unwrap(), Some(app.clone()));
    assert_eq!(j.apps("tn").await.unwrap(), vec![app]);
    for (i, id) in ["jb_d1", "jb_d2"].iter().enumerate() {
        create(&s, id, "tn", 10 + i as i64).await;
        j.add_deployment(
            "tn",
            &Deployment {
                id: (*id).into(),
                app: "web".into(),
                image: format!("web:{i}"),
                kind: "deploy".into(),
                git_ref: Some("main".into()),
                created_ms: 10 + i as i64,
            },
        )
        .await
        .unwrap();
    }
    let history = j.deployments("tn", "web", 10).await.unwrap();
    let ids: Vec<&str> = history.iter().map(|(d, _)| d.id.as_str()).collect();
    assert_eq!(ids, ["jb_d2", "jb_d1"], "newest first");
    assert_eq!(history[0].1.as_ref().unwrap().id, "jb_d2");
    assert_eq!(history[1].0.image, "web:0");
    assert_eq!(j.deployments("tn", "web", 1).await.unwrap().len(), 1);
    assert!(j.delete_app("tn", "web").await.unwrap());
    assert_eq!(
        j.deployments("tn", "web", 10).await.unwrap().len(),
        2,
        "history kept"
    );
}
