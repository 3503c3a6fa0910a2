//! The storage conformance suite, bulk half: the stores whose PostgreSQL
//! tables are partitioned by time (MetricStore, LogStore), run against the
//! embedded SQLite and a real PostgreSQL (`pg.rs`) by `both!`, as in
//! `storage.rs`. The PostgreSQL runs also check the partitions themselves
//! (made on demand and ahead, dropped whole by retention).

use std::sync::Arc;

use tether::metrics::wire::{SeriesDef, Unit};
use tether_server::common::clock;
use tether_server::db::logs::{
    BlockIn, CollectPolicy, ExpireStats, LogQuery, LogRetention, StreamSel,
};
use tether_server::db::metrics::{
    encode_values, tidy, MaintainStats, RangeError, Resolution, Retention, SampleRows,
    SeriesFilter, HOUR_MS, MINUTE_MS,
};
use tether_server::db::postgres::Postgres;
use tether_server::db::{LogStore, MetricStore};

use crate::pg;

const DAY_MS: i64 = 24 * HOUR_MS;

/// The stores under test, and for PostgreSQL its URL (to look at the
/// partitions).
struct Bulk {
    metrics: Arc<dyn MetricStore>,
    logs: Arc<dyn LogStore>,
    pg: Option<String>,
}

impl Bulk {
    async fn sqlite(retention: Retention) -> Bulk {
        let db = tether_server::db::sqlite::open_in_memory(retention).unwrap();
        Bulk {
            metrics: db.metrics.clone(),
            logs: db.logs.clone(),
            pg: None,
        }
    }

    async fn postgres(retention: Retention) -> Bulk {
        let url = pg::fresh_database().await;
        let db = Postgres::connect(&url).await.unwrap();
        Bulk {
            metrics: db.metrics(retention),
            logs: db.logs(LogRetention::default(), CollectPolicy::All),
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
