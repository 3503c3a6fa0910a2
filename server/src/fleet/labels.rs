//! Runner labels: who sets them, and turning a selector into runners.
//!
//! ```text
//!  operator ── PATCH /runners/{id}/labels, POST /labels (by selector) ──▶ labels
//!  host     ── tether run --label k=v ─▶ hello.labels ─▶ proposals ──accept──▶ labels
//!                                                     └─ key in the tenant's auto_accept ─▶ labels
//!  PUT /runners/{id}/group (older API) ─▶ update group + label group=…   (and the other way)
//! ```
//!
//! A selector is judged in two steps: the store finds the runners that
//! have the labels it requires (an index, `candidates`), then the whole
//! selector and filter are matched here; so the runners list with
//! `role=db` reads the db runners, not the fleet.
//!
//! The label `group` is the update group of `updates/` (one value kept in
//! two places until the update policy reads labels itself): setting either
//! sets both.

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::error::ApiError;
use crate::db::control::RunnerRow;
use crate::db::fleet::HasLabel;
use crate::db::Db;
use crate::db::FleetStore;
use crate::fleet::selector::{self, Labels, Requirement, Selector};

pub const GROUP: &str = "group";

/// What reading and setting labels needs: the fleet's store and the
/// runners (and update groups) of `db/`. The handle other features hold
/// to name sets of runners (the seam to `fleet/`).
#[derive(Clone)]
pub struct LabelsCtx {
    pub db: Db,
    pub store: Arc<dyn FleetStore>,
}

/// Parse a selector from a request, as a 400 naming the position.
/// Jobs name their runners by selector and wait until deadlines through
/// this (`jobs::RunnerSets`), so `jobs/` never imports the fleet.
#[async_trait::async_trait]
impl crate::jobs::RunnerSets for LabelsCtx {
    async fn select(&self, tenant: &str, selector: &str) -> Result<Vec<String>, ApiError> {
        let sel = parse_selector(selector)?;
        Ok(select(self, tenant, &sel)
            .await?
            .into_iter()
            .map(|(r, _)| r.id)
            .collect())
    }

    async fn deadline_ms(
        &self,
        tenant: &str,
        asked_s: Option<u64>,
    ) -> Result<Option<i64>, ApiError> {
        crate::fleet::deadlines::deadline_ms(self, tenant, asked_s).await
    }

    async fn add_deadlines(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        at_ms: i64,
    ) -> Result<(), ApiError> {
        Ok(self.store.add_deadlines(tenant, jobs, at_ms).await?)
    }
}

pub fn parse_selector(text: &str) -> Result<Selector, ApiError> {
    Selector::parse(text).map_err(|e| ApiError::bad_request(format!("selector: {e}")))
}

/// The runners `sel` can match and their labels. With a requirement
/// that needs a label (`k=v`, `k in (…)`, `k`), only the runners having
/// all such labels are read (the store's (tenant, key, value) index, then
/// those runners by id); else every runner. Read from the store at each
/// call, so a label change counts at once. A superset: callers still
/// match the whole selector (its negations) and the rest of a filter.
async fn candidates(
    state: &LabelsCtx,
    tenant: &str,
    sel: &Selector,
) -> Result<(Vec<RunnerRow>, HashMap<String, Labels>), ApiError> {
    let must: Vec<HasLabel> = sel
        .requirements()
        .iter()
        .filter_map(|r| match r {
            Requirement::Equals(k, v) => Some(HasLabel {
                key: k.clone(),
                values: Some(vec![v.clone()]),
            }),
            Requirement::In(k, set) => Some(HasLabel {
                key: k.clone(),
                values: Some(set.clone()),
            }),
            Requirement::Exists(k) => Some(HasLabel {
                key: k.clone(),
                values: None,
            }),
            Requirement::NotEquals(..) | Requirement::NotIn(..) | Requirement::Absent(_) => None,
        })
        .collect();
    // The narrowest first: the store finds runners by it, then checks the
    // others on each (`k=v` before `k in (…)` before `k`).
    let mut must = must;
    must.sort_by_key(|m| m.values.as_ref().map_or(usize::MAX, Vec::len));
    if must.is_empty() {
        let labels = state.store.tenant_labels(tenant).await?;
        return Ok((state.db.control.list_runners(tenant).await?, labels));
    }
    let labels = state.store.labels_where(tenant, &must).await?;
    if labels.is_empty() {
        return Ok((Vec::new(), labels));
    }
    let ids: Vec<String> = labels.keys().cloned().collect();
    let runners = state.db.control.runners_by_ids(tenant, &ids).await?;
    Ok((runners, labels))
}

/// The tenant's runners (not revoked) whose labels match, in name order,
/// each with its labels.
pub async fn select(
    state: &LabelsCtx,
    tenant: &str,
    sel: &Selector,
) -> Result<Vec<(RunnerRow, Labels)>, ApiError> {
    let (runners, mut labels) = candidates(state, tenant, sel).await?;
    let mut out: Vec<(RunnerRow, Labels)> = runners
        .into_iter()
        .filter(|r| r.revoked_at.is_none())
        .map(|r| {
            let l = labels.remove(&r.id).unwrap_or_default();
            (r, l)
        })
        .filter(|(_, l)| sel.matches(l))
        .collect();
    out.sort_by(|a, b| (&a.0.name, &a.0.id).cmp(&(&b.0.name, &b.0.id)));
    Ok(out)
}

/// Every runner's labels of a tenant (for the runners list).
pub async fn all(state: &LabelsCtx, tenant: &str) -> Result<HashMap<String, Labels>, ApiError> {
    Ok(state.store.tenant_labels(tenant).await?)
}

/// Apply `set` and `remove` to one runner's labels, checked as a whole.
pub async fn change(
    state: &LabelsCtx,
    tenant: &str,
    runner: &str,
    set: &Labels,
    remove: &[String],
) -> Result<Labels, ApiError> {
    let (mut labels, _) = state.store.labels(tenant, runner).await?;
    let old_group = labels.get(GROUP).cloned();
    for k in remove {
        labels.remove(k);
    }
    labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    selector::check_labels(&labels).map_err(|e| ApiError::bad_request(format!("labels: {e}")))?;
    state.store.replace_labels(tenant, runner, &labels).await?;
    let new_group = labels.get(GROUP);
    if new_group != old_group.as_ref() {
        state
            .db
            .updates
            .set_runner_group(tenant, runner, new_group.map_or("", String::as_str))
            .await?;
    }
    Ok(labels)
}

/// Check the body of a label change before anything is written.
pub fn check_change(set: &Labels, remove: &[String]) -> Result<(), ApiError> {
    if set.len() > selector::MAX_LABELS || remove.len() > selector::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "at most {} labels set or removed at once",
            selector::MAX_LABELS
        )));
    }
    selector::check_labels(set).map_err(|e| ApiError::bad_request(format!("set: {e}")))?;
    for k in remove {
        selector::check_key(k, 0)
            .map_err(|e| ApiError::bad_request(format!("remove {k:?}: {e}")))?;
    }
    Ok(())
}

/// The labels a host proposes in its hello: invalid ones are dropped
/// (logged; the runner checked them too, an old or odd one may not).
pub async fn on_hello(state: &LabelsCtx, tenant: &str, runner: &str, proposed: &[String]) {
    let mut labels = Labels::new();
    for text in proposed.iter().take(selector::MAX_LABELS) {
        match selector::parse_label(text) {
            Ok((k, v)) => {
                labels.insert(k, v);
            }
            Err(e) => tracing::warn!(runner, "proposed label {text:?} ignored: {e}"),
        }
    }
    let result = match state.store.policy(tenant).await {
        Ok(p) => state.store.propose(tenant, runner, &labels, &p).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::error!(runner, "storing proposed labels: {e}");
    }
    // An auto-accepted group label moves the update group too.
    if let Ok((l, _)) = state.store.labels(tenant, runner).await {
        if let Some(g) = l.get(GROUP) {
            if state
                .db
                .updates
                .runner_group(runner)
                .await
                .ok()
                .flatten()
                .as_ref()
                != Some(g)
            {
                let _ = state.db.updates.set_runner_group(tenant, runner, g).await;
            }
        }
    }
}

/// `PUT /runners/{id}/group` was used: the label follows (if the group
/// is a valid label value; older group names may not be).
pub async fn group_set(state: &LabelsCtx, tenant: &str, runner: &str, group: &str) {
    let (set, remove) = if group.is_empty() {
        (Labels::new(), vec![GROUP.to_owned()])
    } else if selector::check_value(group, 0).is_ok() {
        (
            Labels::from([(GROUP.to_owned(), group.to_owned())]),
            Vec::new(),
        )
    } else {
        tracing::warn!(
            runner,
            group,
            "group is not a valid label value: no group label"
        );
        return;
    };
    if let Err(e) = change(state, tenant, runner, &set, &remove).await {
        tracing::warn!(runner, "setting the group label: {}", e.message);
    }
}

/// Once per start: runners with an update group and no `group` label get
/// one (the group predates labels).
pub async fn migrate_groups(state: &LabelsCtx) -> Result<usize, ApiError> {
    let mut n = 0;
    for tenant in state.db.control.list_tenants().await? {
        let labels = state.store.tenant_labels(&tenant.id).await?;
        for r in state.db.control.list_runners(&tenant.id).await? {
            if labels.get(&r.id).is_some_and(|l| l.contains_key(GROUP)) {
                continue;
            }
            let Some(g) = state
                .db
                .updates
                .runner_group(&r.id)
                .await?
                .filter(|g| !g.is_empty())
            else {
                continue;
            };
            group_set(state, &tenant.id, &r.id, &g).await;
            n += 1;
        }
    }
    Ok(n)
}

/// Most runners one page of the list holds.
pub const MAX_PAGE: usize = 10_000;
/// Longest search text, arch and version asked for.
const MAX_FILTER_TEXT: usize = 256;

/// `GET /api/v1/runners` filters (all optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerFilter {
    pub selector: Option<String>,
    /// active, unreachable or revoked.
    pub health: Option<String>,
    /// Exact architecture (`x86_64`, `aarch64`, …) and runner version.
    pub arch: Option<String>,
    pub version: Option<String>,
    /// Update state: none, current, pending or failed (`versions.rs`).
    pub update: Option<String>,
    /// A piece of the name, reported name, id or a label (`key=value`),
    /// case-insensitive.
    pub q: Option<String>,
    /// `name` (default), `health`, `version`, `arch`, `last_seen`,
    /// `created`, `id`; a leading `-` reverses it.
    pub sort: Option<String>,
    /// Paging: `offset`, or `page` (1-based) of `limit` runners.
    pub offset: Option<usize>,
    pub page: Option<usize>,
    pub limit: Option<usize>,
}

/// How the list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Name,
    Health,
    Version,
    Arch,
    LastSeen,
    Created,
    Id,
}

fn sort_key(text: Option<&str>) -> Result<(SortKey, bool), ApiError> {
    let text = text.unwrap_or("name");
    let (desc, key) = match text.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, text),
    };
    let key = match key {
        "name" => SortKey::Name,
        "health" => SortKey::Health,
        "version" => SortKey::Version,
        "arch" => SortKey::Arch,
        "last_seen" => SortKey::LastSeen,
        "created" => SortKey::Created,
        "id" => SortKey::Id,
        _ => return Err(ApiError::bad_request(
            "sort: name, health, version, arch, last_seen, created or id (a leading - reverses)",
        )),
    };
    Ok((key, desc))
}

fn check_text(name: &str, v: &Option<String>) -> Result<(), ApiError> {
    match v {
        Some(t) if t.len() > MAX_FILTER_TEXT => Err(ApiError::bad_request(format!(
            "{name}: at most {MAX_FILTER_TEXT} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Counts of the runners a filter keeps, health aside (what the runners
/// page shows above the list, and its filter choices).
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    pub total: usize,
    pub health: std::collections::BTreeMap<&'static str, usize>,
    pub arch: std::collections::BTreeMap<String, usize>,
    pub version: std::collections::BTreeMap<String, usize>,
}

/// A filter checked: what matching needs.
struct Checked {
    sel: Selector,
    q: Option<String>,
    key: SortKey,
    desc: bool,
    skip: usize,
    limit: usize,
}

fn check_filter(f: &RunnerFilter) -> Result<Checked, ApiError> {
    let sel = match &f.selector {
        Some(s) => parse_selector(s)?,
        None => Selector::all(),
    };
    if let Some(h) = &f.health {
        if !matches!(h.as_str(), "active" | "unreachable" | "revoked") {
            return Err(ApiError::bad_request(
                "health: active, unreachable or revoked",
            ));
        }
    }
    if let Some(u) = &f.update {
        if !crate::fleet::versions::UPDATE_STATES.contains(&u.as_str()) {
            return Err(ApiError::bad_request(format!(
                "update: {}",
                crate::fleet::versions::UPDATE_STATES.join(", ")
            )));
        }
    }
    check_text("q", &f.q)?;
    check_text("arch", &f.arch)?;
    check_text("version", &f.version)?;
    let (key, desc) = sort_key(f.sort.as_deref())?;
    let limit = f.limit.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!("limit: 1 to {MAX_PAGE}")));
    }
    let skip = match (f.offset, f.page) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give offset or page, not both")),
        (Some(o), None) => o,
        (None, Some(0)) => return Err(ApiError::bad_request("page: 1 or more")),
        (None, Some(p)) => (p - 1).saturating_mul(limit),
        (None, None) => 0,
    };
    Ok(Checked {
        sel,
        q: f.q.as_deref().map(str::to_lowercase),
        key,
        desc,
        skip,
        limit,
    })
}

/// Whether a runner passes the filter's text and label parts (health
/// aside: the counts are by health).
fn keeps(f: &RunnerFilter, c: &Checked, r: &RunnerRow, l: &Labels) -> bool {
    f.arch.as_deref().is_none_or(|a| r.arch == a)
        && f.version.as_deref().is_none_or(|v| r.version == v)
        && c.q.as_deref().is_none_or(|q| {
            [&r.name, &r.reported_name, &r.id]
                .iter()
                .any(|s| s.to_lowercase().contains(q))
                || l.iter()
                    .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(q))
        })
        && c.sel.matches(l)
}

/// The runners a filter keeps (revoked ones included, as the plain list
/// always showed them), sorted and paged, and how many before paging.
pub async fn list(
    state: &LabelsCtx,
    tenant: &str,
    f: &RunnerFilter,
) -> Result<(Vec<(RunnerRow, Labels)>, usize), ApiError> {
    let c = check_filter(f)?;
    let (runners, mut labels) = candidates(state, tenant, &c.sel).await?;
    let mut kept: Vec<(RunnerRow, Labels)> = runners
        .into_iter()
        .filter(|r| f.health.as_deref().is_none_or(|h| r.health.as_str() == h))
        .map(|r| {
            let l = labels.remove(&r.id).unwrap_or_default();
            (r, l)
        })
        .filter(|(r, l)| keeps(f, &c, r, l))
        .collect();
    // The update state costs three more queries: only when asked.
    if let Some(u) = f.update.as_deref() {
        let states = crate::fleet::versions::UpdateStates::read(state, tenant).await?;
        kept.retain(|(r, l)| states.of(r, l) == u);
    }
    let total = kept.len();
    // Ties by name, then id: pages do not overlap.
    kept.sort_unstable_by(|(a, _), (b, _)| {
        let first = match c.key {
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Health => a.health.as_str().cmp(b.health.as_str()),
            SortKey::Version => a.version.cmp(&b.version),
            SortKey::Arch => a.arch.cmp(&b.arch),
            SortKey::LastSeen => a.last_seen.cmp(&b.last_seen),
            SortKey::Created => a.created_at.cmp(&b.created_at),
            SortKey::Id => a.id.cmp(&b.id),
        };
        let o = first.then_with(|| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        if c.desc {
            o.reverse()
        } else {
            o
        }
    });
    let page = kept.into_iter().skip(c.skip).take(c.limit).collect();
    Ok((page, total))
}

/// Counts by health, arch and version of what a filter keeps (its
/// health, sort and paging ignored).
pub async fn counts(state: &LabelsCtx, tenant: &str, f: &RunnerFilter) -> Result<Counts, ApiError> {
    let c = check_filter(f)?;
    let (runners, labels) = candidates(state, tenant, &c.sel).await?;
    let empty = Labels::new();
    let mut out = Counts::default();
    for h in ["active", "unreachable", "revoked"] {
        out.health.insert(h, 0);
    }
    let states = match f.update {
        Some(_) => Some(crate::fleet::versions::UpdateStates::read(state, tenant).await?),
        None => None,
    };
    for r in runners {
        let l = labels.get(&r.id).unwrap_or(&empty);
        if !keeps(f, &c, &r, l) {
            continue;
        }
        if let (Some(s), Some(u)) = (&states, f.update.as_deref()) {
            if s.of(&r, l) != u {
                continue;
            }
        }
        out.total += 1;
        *out.health.entry(r.health.as_str()).or_default() += 1;
        *out.arch.entry(r.arch.clone()).or_default() += 1;
        *out.version.entry(r.version.clone()).or_default() += 1;
    }
    Ok(out)
}
