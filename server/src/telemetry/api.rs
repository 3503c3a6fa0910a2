//! REST handlers for host telemetry (`docs/api.md`, metrics and
//! fingerprint): range and latest queries, the Prometheus exposition,
//! the stored fingerprint and its drift.
//!
//! Like every tenant endpoint, each looks the runner up in the caller's
//! tenant first: another tenant's runner is a 404, whatever is stored for
//! it. Metrics reads run on the blocking pool (a range is thousands of
//! rows), so they never hold up a runtime thread.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether::fingerprint::Change;
use tether::metrics::wire::Unit;

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::query;
use crate::db::metrics::{tidy, RangeError, Resolution, SeriesFilter, HOUR_MS};
use crate::db::Health;
use crate::telemetry::prometheus;
use crate::telemetry::TelemetryCtx;

/// Most stored rows one range query reads (raw: ~28 h at 5 s; 1m: ~14 days).
const MAX_RANGE_ROWS: usize = 20_000;
/// `resolution=auto`: raw up to this span, 1m up to the next, else 1h.
const AUTO_RAW_SPAN_MS: i64 = 6 * HOUR_MS;
const AUTO_MINUTE_SPAN_MS: i64 = 7 * 24 * HOUR_MS;
const DEFAULT_SINCE: &str = "1h";

// ---- GET /api/v1/runners/{id}/metrics ----------------------------------------------

#[derive(Deserialize)]
pub struct RangeParams {
    since: Option<String>,
    until: Option<String>,
    resolution: Option<String>,
    series: Option<String>,
    /// `false`: summaries only, no points.
    points: Option<bool>,
}

#[derive(Serialize)]
pub struct RangeAnswer {
    runner_id: String,
    resolution: &'static str,
    from: String,
    to: String,
    from_ms: i64,
    to_ms: i64,
    series: Vec<SeriesAnswer>,
}

#[derive(Serialize)]
pub struct SeriesAnswer {
    name: String,
    unit: Unit,
    points: Vec<(i64, f64)>,
    summary: Option<SummaryAnswer>,
}

#[derive(Serialize)]
pub struct SummaryAnswer {
    min: f64,
    avg: f64,
    max: f64,
    /// Raw samples behind the figures.
    count: u64,
}

/// `auto`: the finest resolution whose span limit and retention cover the range.
pub fn pick_resolution(
    asked: Option<&str>,
    from: i64,
    to: i64,
    now: i64,
    retention: crate::db::metrics::Retention,
) -> Result<Resolution, ApiError> {
    match asked.unwrap_or("auto") {
        "auto" => {
            let span = to.saturating_sub(from);
            let kept = |r: Resolution| from >= now.saturating_sub(retention.of(r));
            Ok(if span <= AUTO_RAW_SPAN_MS && kept(Resolution::Raw) {
                Resolution::Raw
            } else if span <= AUTO_MINUTE_SPAN_MS && kept(Resolution::Minute) {
                Resolution::Minute
            } else {
                Resolution::Hour
            })
        }
        other => Resolution::parse(other).ok_or_else(|| {
            ApiError::bad_request(format!("resolution {other:?}: use auto, raw, 1m or 1h"))
        }),
    }
}

pub async fn runner_metrics(
    caller: Caller,
    State(state): State<TelemetryCtx>,
    Path(id): Path<String>,
    params: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Json<RangeAnswer>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let p = query(params)?;
    let now = clock::now_ms();
    let bad = ApiError::bad_request;
    let from = clock::parse_time(p.since.as_deref().unwrap_or(DEFAULT_SINCE), now)
        .map_err(|e| bad(format!("since: {e}")))?;
    let to = match p.until.as_deref() {
        Some(u) => clock::parse_time(u, now).map_err(|e| bad(format!("until: {e}")))?,
        None => now,
    };
    if from > to {
        return Err(bad("since is after until".into()));
    }
    // Before 1970 nothing is stored; the clamps keep bucket arithmetic
    // far from overflow.
    let (from, to) = (from.max(0), to.clamp(0, i64::MAX / 4));
    let resolution = pick_resolution(
        p.resolution.as_deref(),
        from,
        to,
        now,
        state.db.metrics.retention(),
    )?;
    let filter = SeriesFilter::parse(p.series.as_deref().unwrap_or("")).map_err(bad)?;
    let with_points = p.points.unwrap_or(true);
    let found = state
        .db
        .metrics
        .range(&id, from, to, resolution, &filter, MAX_RANGE_ROWS)
        .await;
    let series = match found {
        Ok(s) => s,
        Err(RangeError::TooManyRows(n)) => {
            return Err(bad(format!(
                "more than {n} stored samples in this range at resolution {}: \
                 narrow the range or use a coarser resolution",
                resolution.as_str()
            )))
        }
        Err(RangeError::Storage(e)) => return Err(e.into()),
    };
    Ok(Json(RangeAnswer {
        runner_id: id,
        resolution: resolution.as_str(),
        from: clock::rfc3339(from),
        to: clock::rfc3339(to),
        from_ms: from,
        to_ms: to,
        series: series
            .into_iter()
            .map(|s| SeriesAnswer {
                summary: (s.summary.count > 0).then(|| SummaryAnswer {
                    min: s.summary.min,
                    avg: tidy(s.summary.avg()),
                    max: s.summary.max,
                    count: s.summary.count,
                }),
                name: s.name,
                unit: s.unit,
                points: if with_points { s.points } else { Vec::new() },
            })
            .collect(),
    }))
}

// ---- GET /api/v1/runners/{id}/metrics/latest ---------------------------------------

#[derive(Serialize)]
pub struct LatestAnswer {
    runner_id: String,
    /// Unix ms of the newest stored sample; null without one.
    ts_ms: Option<i64>,
    at: Option<String>,
    series: Vec<LatestValue>,
}

#[derive(Serialize)]
pub struct LatestValue {
    name: String,
    unit: Unit,
    /// Null: no value in that sample (e.g. the first sample of a rate).
    value: Option<f64>,
}

pub async fn latest_metrics(
    caller: Caller,
    State(state): State<TelemetryCtx>,
    Path(id): Path<String>,
) -> Result<Json<LatestAnswer>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let latest = state.db.metrics.latest(&[id.as_str()]).await?;
    let sample = latest.into_iter().next().map(|(_, s)| s);
    Ok(Json(LatestAnswer {
        runner_id: id,
        ts_ms: sample.as_ref().map(|s| s.ts),
        at: sample.as_ref().map(|s| clock::rfc3339(s.ts)),
        series: sample
            .iter()
            .flat_map(|s| s.series())
            .map(|(d, value)| LatestValue {
                name: d.name.clone(),
                unit: d.unit,
                value,
            })
            .collect(),
    }))
}

// ---- GET /api/v1/metrics/summary?runners=… ------------------------------------------

/// Runners one summary asks for (a page of the runners list).
pub const MAX_SUMMARY_RUNNERS: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    /// Comma-separated runner ids.
    runners: String,
}

/// A host at a glance (the runners page's columns): CPU busy %, memory
/// used %, the fullest filesystem's used %, IP traffic in + out.
#[derive(Debug, Serialize, Default)]
pub struct Glance {
    at: String,
    cpu: Option<f64>,
    mem: Option<f64>,
    disk: Option<f64>,
    net_bps: Option<f64>,
}

fn glance(s: &crate::db::metrics::LatestSample) -> Glance {
    let mut g = Glance {
        at: clock::rfc3339(s.ts),
        ..Glance::default()
    };
    let (mut mem_used, mut mem_total) = (None, None);
    let mut fs: std::collections::HashMap<&str, (Option<f64>, Option<f64>)> =
        std::collections::HashMap::new();
    for (d, v) in s.series() {
        let Some(v) = v else { continue };
        match d.name.as_str() {
            "cpu.busy" => g.cpu = Some(v),
            "mem.used" => mem_used = Some(v),
            "mem.total" => mem_total = Some(v),
            "ip4.in_bps" | "ip4.out_bps" | "ip6.in_bps" | "ip6.out_bps" => {
                g.net_bps = Some(g.net_bps.unwrap_or(0.0) + v)
            }
            n => {
                if let Some(rest) = n.strip_prefix("fs.") {
                    if let Some(m) = rest.strip_suffix(".used") {
                        fs.entry(m).or_default().0 = Some(v);
                    } else if let Some(m) = rest.strip_suffix(".size") {
                        fs.entry(m).or_default().1 = Some(v);
                    }
                }
            }
        }
    }
    if let (Some(u), Some(t)) = (mem_used, mem_total) {
        if t > 0.0 {
            g.mem = Some(u * 100.0 / t);
        }
    }
    g.disk = fs
        .values()
        .filter_map(|(u, t)| match (u, t) {
            (Some(u), Some(t)) if *t > 0.0 => Some(u * 100.0 / t),
            _ => None,
        })
        .reduce(f64::max);
    g
}

/// The latest sample of each runner asked for, at a glance; runners
/// without samples (or not the tenant's) are left out.
pub async fn metrics_summary(
    caller: Caller,
    State(state): State<TelemetryCtx>,
    params: Result<Query<SummaryParams>, QueryRejection>,
) -> Result<Json<std::collections::BTreeMap<String, Glance>>, ApiError> {
    let tenant = caller.tenant()?;
    let p = query(params)?;
    let asked: Vec<&str> = p.runners.split(',').filter(|s| !s.is_empty()).collect();
    if asked.len() > MAX_SUMMARY_RUNNERS {
        return Err(ApiError::bad_request(format!(
            "runners: at most {MAX_SUMMARY_RUNNERS} ids"
        )));
    }
    let mine: std::collections::HashSet<String> = state
        .db
        .control
        .list_runners(tenant)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let ids: Vec<&str> = asked.into_iter().filter(|i| mine.contains(*i)).collect();
    let latest = state.db.metrics.latest(&ids).await?;
    Ok(Json(
        latest
            .iter()
            .map(|(i, s)| (ids[*i].to_owned(), glance(s)))
            .collect(),
    ))
}

// ---- GET /api/v1/metrics/prometheus ------------------------------------------------

pub async fn prometheus(
    caller: Caller,
    State(state): State<TelemetryCtx>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant()?;
    let runners = state.db.control.list_runners(tenant).await?;
    let ids: Vec<&str> = runners.iter().map(|r| r.id.as_str()).collect();
    let latest = state.db.metrics.latest(&ids).await?;
    let samples: Vec<prometheus::RunnerSample<'_>> = latest
        .iter()
        .map(|(i, sample)| {
            let r = &runners[*i];
            prometheus::RunnerSample {
                id: &r.id,
                name: &r.name,
                up: r.health == Health::Active,
                latest: sample,
            }
        })
        .collect();
    let body = prometheus::render(&samples);
    Ok(([(CONTENT_TYPE, prometheus::CONTENT_TYPE)], body).into_response())
}

// ---- GET /api/v1/runners/{id}/fingerprint ------------------------------------------

/// The stored fingerprint's fields (hostname, os, kernel, …, firewall) at
/// the top level, with `runner_id`, `collected_at` (the runner's collection
/// time of its last report), `updated_at` (when the server stored it) and
/// `notes`. Before the first report only those four, the times null.
pub async fn fingerprint(
    caller: Caller,
    State(state): State<TelemetryCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let row = state
        .db
        .control
        .fingerprint(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(&id))?;
    let corrupt = |what: &str, e: String| {
        ApiError::internal(format!("stored fingerprint {what} of {id}: {e}"))
    };
    let mut answer = serde_json::Map::new();
    let (collected_at, updated_at, notes) = match row {
        None => (Value::Null, Value::Null, Value::Array(Vec::new())),
        Some(row) => {
            match serde_json::from_str(&row.body).map_err(|e| corrupt("body", e.to_string()))? {
                Value::Object(fields) => answer = fields,
                other => return Err(corrupt("body", format!("not an object: {other}"))),
            }
            let notes: Value =
                serde_json::from_str(&row.notes).map_err(|e| corrupt("notes", e.to_string()))?;
            (
                Value::String(clock::rfc3339(row.collected_at)),
                Value::String(clock::rfc3339(row.updated_at)),
                notes,
            )
        }
    };
    answer.insert("runner_id".into(), Value::String(id.clone()));
    answer.insert("collected_at".into(), collected_at);
    answer.insert("updated_at".into(), updated_at);
    answer.insert("notes".into(), notes);
    Ok(Json(Value::Object(answer)))
}

// ---- GET /api/v1/runners/{id}/drift ------------------------------------------------

#[derive(Deserialize)]
pub struct DriftParams {
    since: Option<String>,
}

#[derive(Serialize)]
pub struct DriftEvent {
    at: String,
    path: String,
    old: Value,
    new: Value,
    text: String,
}

pub async fn drift(
    caller: Caller,
    State(state): State<TelemetryCtx>,
    Path(id): Path<String>,
    params: Result<Query<DriftParams>, QueryRejection>,
) -> Result<Json<Vec<DriftEvent>>, ApiError> {
    let tenant = caller.tenant()?;
    let p = query(params)?;
    let since = match p.since.as_deref() {
        Some(s) => clock::parse_time(s, clock::now_ms())
            .map_err(|e| ApiError::bad_request(format!("since: {e}")))?,
        None => i64::MIN,
    };
    let rows = state
        .db
        .control
        .drift(tenant, &id, since)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(&id))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let change: Change = serde_json::from_str(&row.change)
            .map_err(|e| ApiError::internal(format!("stored drift event of {id}: {e}")))?;
        out.push(DriftEvent {
            at: clock::rfc3339(row.at),
            text: change.to_string(),
            path: change.path,
            old: change.old,
            new: change.new,
        });
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::metrics::{Retention, MINUTE_MS};

    #[test]
    fn auto_resolution_follows_span_and_retention() {
        let now = 1_000 * 24 * HOUR_MS;
        let r = Retention::default();
        let pick = |from: i64, to: i64, asked: Option<&str>| {
            pick_resolution(asked, from, to, now, r).unwrap()
        };
        assert_eq!(pick(now - HOUR_MS, now, None), Resolution::Raw);
        assert_eq!(pick(now - 6 * HOUR_MS, now, Some("auto")), Resolution::Raw);
        assert_eq!(pick(now - 7 * HOUR_MS, now, None), Resolution::Minute);
        assert_eq!(pick(now - 7 * 24 * HOUR_MS, now, None), Resolution::Minute);
        assert_eq!(pick(now - 8 * 24 * HOUR_MS, now, None), Resolution::Hour);
        // An hour two days back: raw is gone by then, 1m is kept.
        assert_eq!(
            pick(now - 48 * HOUR_MS, now - 47 * HOUR_MS, None),
            Resolution::Minute
        );
        assert_eq!(pick(0, MINUTE_MS, None), Resolution::Hour);
        assert_eq!(pick(0, 1, Some("1m")), Resolution::Minute);
        assert!(pick_resolution(Some("5m"), 0, 1, now, r).is_err());
    }
}
