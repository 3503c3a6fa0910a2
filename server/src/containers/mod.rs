//! What runners tell about Docker: their engine state, their containers, and
//! container events, kept and announced.
//!
//! The runner socket (`link/runner_ws.rs`) hands every `docker_state`,
//! `container_snapshot` and `container_event` to [`ContainerHub`]: it persists
//! them (`db/sqlite/containers.rs`), keeps the Docker state of each runner in
//! memory too (read on every container call), and sends each event on a
//! broadcast channel that the SSE endpoint (`runners/events.rs`) subscribes to, as
//! `event: container`, filtered by tenant. In a cluster each event goes to
//! the other replicas' streams too, by the tenant event bus (NOTIFY,
//! `common/bus.rs`): a dashboard on any replica sees the containers of a
//! runner linked to another. Calls *to* Docker go through the registry
//! (`containers/api.rs`); nothing here talks to a runner.

pub mod api;
pub mod link;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct ContainersCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    /// Docker state and container events of every runner.
    pub containers: Arc<ContainerHub>,
    pub tuning: Tuning,
}

/// Docker state, containers and their events, Docker calls through the runner.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    ContainersCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/runners/{id}/docker", get(api::docker_state))
        .route("/api/v1/runners/{id}/containers", get(api::list))
        .route("/api/v1/runners/{id}/containers/events", get(api::history))
        .route(
            "/api/v1/runners/{id}/containers/prune",
            post(api::prune_containers),
        )
        .route("/api/v1/runners/{id}/images/prune", post(api::prune_images))
        .route(
            "/api/v1/runners/{id}/containers/{cid}",
            get(api::inspect).delete(api::remove),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/start",
            post(api::start),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/stop",
            post(api::stop),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/restart",
            post(api::restart),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/kill",
            post(api::kill),
        )
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use tether::protocol::{ContainerEvent, ContainerSummary, DockerState};
use tokio::sync::broadcast;

use crate::common::bus::{Bus, MAX_DATA};
use crate::common::clock;
use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::db::{ContainerEventRow, ControlStore, DockerStateRow, StorageError};
use crate::link::registry::Registry;

/// Undelivered container events per slow SSE subscriber before it skips ahead.
const EVENT_BACKLOG: usize = 1024;

/// One container event of a runner of `tenant_id`, as broadcast.
#[derive(Debug, Clone)]
pub struct ContainerEventRecord {
    pub tenant_id: String,
    pub runner_id: String,
    pub at: i64,
    pub event: ContainerEvent,
}

/// The JSON of a container event, on the SSE stream and in the history.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerEventView {
    pub runner_id: String,
    /// When the server received it (RFC 3339).
    pub at: String,
    /// Docker's time of the event, nanoseconds since the epoch.
    pub time_nano: i64,
    pub action: String,
    pub container_id: String,
    /// The container's name (from the summary, else Docker's attributes).
    pub name: Option<String>,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The container after the event; `null` once it is destroyed.
    pub container: Option<ContainerSummary>,
}

impl ContainerEventView {
    pub fn new(runner_id: &str, at: i64, event: &ContainerEvent) -> Self {
        let name = event
            .container
            .as_ref()
            .map(|c| c.name.clone())
            .or_else(|| event.attributes.get("name").cloned());
        ContainerEventView {
            runner_id: runner_id.to_owned(),
            at: clock::rfc3339(at),
            time_nano: event.time_nano,
            action: event.action.clone(),
            container_id: event.container_id.clone(),
            name,
            attributes: event.attributes.clone(),
            container: event.container.clone(),
        }
    }
}

impl From<&ContainerEventRecord> for ContainerEventView {
    fn from(r: &ContainerEventRecord) -> Self {
        ContainerEventView::new(&r.runner_id, r.at, &r.event)
    }
}

impl ContainerEventView {
    pub fn from_row(runner_id: &str, row: &ContainerEventRow) -> Self {
        ContainerEventView::new(runner_id, row.at, &row.event)
    }
}

pub struct ContainerHub {
    storage: Arc<dyn ControlStore>,
    /// Docker state per runner that reported one (or was asked about):
    /// one small entry per runner, so bounded by the runner count.
    docker: Mutex<HashMap<String, Option<DockerStateRow>>>,
    events: broadcast::Sender<Arc<ContainerEventRecord>>,
    /// The other replicas of a cluster, told of every event.
    elsewhere: OnceLock<Arc<Bus>>,
}

/// An event as the other replicas' streams show it, within the notice's
/// [`MAX_DATA`]: labels (in Docker's attributes and the summary) and ports
/// are left out of one too long to travel whole; longer still, it is not
/// sent (the history on the holder has it).
fn fitted(view: &ContainerEventView) -> Option<String> {
    let full = serde_json::to_string(view).ok()?;
    if full.len() <= MAX_DATA {
        return Some(full);
    }
    let mut small = view.clone();
    small
        .attributes
        .retain(|k, _| matches!(k.as_str(), "name" | "image" | "exitCode"));
    if let Some(c) = &mut small.container {
        c.labels.clear();
        c.ports = serde_json::Value::Null;
    }
    let small = serde_json::to_string(&small).ok()?;
    (small.len() <= MAX_DATA).then_some(small)
}

impl ContainerHub {
    pub fn new(storage: Arc<dyn ControlStore>) -> ContainerHub {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        ContainerHub {
            storage,
            docker: Mutex::new(HashMap::new()),
            events,
            elsewhere: OnceLock::new(),
        }
    }

    /// A replica of several: every event is sent to the others by `bus`.
    pub fn tell_elsewhere(&self, bus: Arc<Bus>) {
        let _ = self.elsewhere.set(bus);
    }

    /// Container events of every tenant; subscribers filter by tenant.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ContainerEventRecord>> {
        self.events.subscribe()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<DockerStateRow>>> {
        // A map of plain values cannot be left half-updated by a panic.
        self.docker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A runner reported its Docker state: store it, then remember it.
    pub async fn set_state(
        &self,
        runner_id: &str,
        state: DockerState,
        now: i64,
    ) -> Result<(), StorageError> {
        let row = DockerStateRow {
            state,
            updated_at: now,
        };
        let changed = self
            .cache()
            .get(runner_id)
            .and_then(Option::as_ref)
            .is_none_or(|old| old.state != row.state);
        if changed {
            tracing::info!(
                runner = runner_id,
                available = row.state.available,
                version = row.state.version.as_deref().unwrap_or("-"),
                reason = row.state.reason.as_deref().unwrap_or("-"),
                "docker state"
            );
        }
        self.storage.set_docker_state(runner_id, &row).await?;
        self.cache().insert(runner_id.to_owned(), Some(row));
        Ok(())
    }

    /// The last reported Docker state of a runner (the caller checked the
    /// tenant), from memory or, once per runner, from storage.
    pub async fn state(&self, runner_id: &str) -> Result<Option<DockerStateRow>, StorageError> {
        if let Some(known) = self.cache().get(runner_id) {
            return Ok(known.clone());
        }
        let stored = self.storage.docker_state(runner_id).await?;
        self.cache()
            .entry(runner_id.to_owned())
            .or_insert_with(|| stored.clone());
        Ok(stored)
    }

    /// A full list of a runner's containers replaces the view.
    pub async fn replace(
        &self,
        runner_id: &str,
        containers: &[ContainerSummary],
        now: i64,
    ) -> Result<(), StorageError> {
        self.storage
            .replace_containers(runner_id, containers, now)
            .await
    }

    /// A container event: update the view, append to the history, announce.
    /// It is announced even if storing failed: live subscribers lose nothing
    /// by a full disk.
    pub async fn event(
        &self,
        tenant_id: &str,
        runner_id: &str,
        event: ContainerEvent,
        now: i64,
    ) -> Result<(), StorageError> {
        let stored = self
            .storage
            .record_container_event(runner_id, &event, now)
            .await;
        let record = ContainerEventRecord {
            tenant_id: tenant_id.to_owned(),
            runner_id: runner_id.to_owned(),
            at: now,
            event,
        };
        if let Some(bus) = self.elsewhere.get() {
            match fitted(&ContainerEventView::from(&record)) {
                Some(data) => bus.publish_elsewhere(tenant_id, "container", data),
                None => tracing::debug!(runner = runner_id, "container event too long to send on"),
            }
        }
        // No subscriber is not an error.
        let _ = self.events.send(Arc::new(record));
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(labels: usize) -> ContainerEventView {
        let many: std::collections::BTreeMap<String, String> = (0..labels)
            .map(|i| (format!("com.example.label{i}"), "x".repeat(40)))
            .collect();
        let mut attributes = many.clone();
        attributes.insert("name".into(), "web".into());
        let event = ContainerEvent {
            time_nano: 1,
            action: "start".into(),
            container_id: "c1".into(),
            attributes,
            container: Some(ContainerSummary {
                id: "c1".into(),
                name: "web".into(),
                image: "nginx".into(),
                state: "running".into(),
                status: "Up".into(),
                created: 0,
                ports: serde_json::Value::Null,
                labels: many,
            }),
        };
        ContainerEventView::new("rn_1", 0, &event)
    }

    #[test]
    fn an_event_for_other_replicas_fits_a_notice() {
        let small = event(2);
        assert_eq!(
            fitted(&small).unwrap(),
            serde_json::to_string(&small).unwrap(),
            "a short event travels whole"
        );
        let big = event(200);
        assert!(serde_json::to_string(&big).unwrap().len() > MAX_DATA);
        let sent: serde_json::Value = serde_json::from_str(&fitted(&big).unwrap()).unwrap();
        assert_eq!(sent["name"], "web");
        assert_eq!(sent["attributes"]["name"], "web");
        assert_eq!(sent["container"]["state"], "running");
        assert!(sent["container"]["labels"].as_object().unwrap().is_empty());
    }
}
