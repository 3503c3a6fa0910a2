//! A replica's wiring (`--replica-id`): the registry of live connections
//! as the cluster's [`LinkHolder`], so a link another replica took, or a
//! runner revoked there, is closed here; container events sent to the
//! other replicas by the tenant event bus. `app/` joins the two because
//! neither `link/` nor `cluster/` names the other.
//!
//! Tenant events of other replicas (NOTIFY) go to this replica's event
//! streams, and some are acted on here first: alert rules or silences
//! changed there (the engine re-reads them, `alerts/`), the update policy
//! changed there (the runners held here are offered the new version). A
//! runner's own settings (log collection) travel as a nudge to its holder.

use std::sync::Arc;

use async_trait::async_trait;

use crate::alerts::Alerts;
use crate::cluster::config::ClusterConfig;
use crate::cluster::replica::{HealthSink, LinkHolder, Replica};
use crate::common::bus::{Bus, Remote, TenantEvent, POLICY, UPDATE_POLICY};
use crate::common::observe::LinksHere;
use crate::db::cluster::ClusterStore;
use crate::db::HealthRecord;
use crate::db::StorageError;
use crate::link::dispatch::FamilyId;
use crate::link::registry::{CloseOrder, Registry, RemoteNudge};
use crate::runners::health::HealthLog;

use super::AppState;

struct Holder(Arc<Registry>);

#[async_trait]
impl LinkHolder for Holder {
    fn held(&self) -> Vec<(String, u64)> {
        self.0.held()
    }

    async fn fence(&self, runner_id: &str, generation: u64, revoked: bool) {
        let order = if revoked {
            CloseOrder {
                code: tether::protocol::close::REVOKED,
                reason: "runner revoked",
            }
        } else {
            CloseOrder {
                code: tether::protocol::close::REPLACED,
                reason: "linked to another replica",
            }
        };
        if self.0.fence(runner_id, generation, order).await {
            tracing::info!(runner = runner_id, revoked, "link fenced by the cluster");
        }
    }

    fn nudge(&self, runner_id: &str, family: &str) {
        if let Some(family) = FamilyId::from_name(family) {
            self.0.nudge_local(runner_id, family);
        }
    }

    fn nudge_all(&self) {
        for (runner_id, _) in self.0.held() {
            for family in FamilyId::of_bits(u32::MAX) {
                self.0.nudge_local(&runner_id, family);
            }
        }
    }
}

/// The runners linked here, for the alert engine (it owns their
/// report-based alerts: `alerts/mod.rs`).
struct Linked {
    registry: Arc<Registry>,
    replica_id: String,
}

impl LinksHere for Linked {
    fn replica_id(&self) -> &str {
        &self.replica_id
    }

    fn generation(&self, runner: &str) -> Option<u64> {
        self.registry.held_generation(runner)
    }
}

/// Nudges for runners this replica does not hold, sent by NOTIFY (the
/// holder, whichever it is, hears it; a runner linked nowhere looks for
/// its jobs when it connects).
struct Nudges(Arc<dyn ClusterStore>);

impl RemoteNudge for Nudges {
    fn nudge(&self, runner_id: &str, family: FamilyId) {
        let (store, runner) = (self.0.clone(), runner_id.to_owned());
        tokio::spawn(async move {
            // Tried twice: the holder's periodic check is minutes away.
            for attempt in 0..2 {
                match store.nudge(&runner, family.name()).await {
                    Ok(()) => return,
                    Err(e) if attempt == 0 => {
                        tracing::debug!(runner = %runner, "nudge notice: {e}; again in 1 s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => tracing::warn!(runner = %runner, "nudge notice not sent: {e}"),
                }
            }
        });
    }
}

/// Tenant events of this replica, sent to the others by NOTIFY.
struct Events {
    store: Arc<dyn ClusterStore>,
    origin: String,
}

impl Remote for Events {
    fn send(&self, event: &TenantEvent) {
        let (store, origin, event) = (self.store.clone(), self.origin.clone(), event.clone());
        tokio::spawn(async move {
            if let Err(e) = store.publish(&origin, &event).await {
                tracing::debug!("event notice: {e}");
            }
        });
    }
}

/// Where the replica's notices of health and tenant events go.
struct Sinks {
    health: Arc<HealthLog>,
    bus: Arc<Bus>,
    alerts: Arc<Alerts>,
    registry: Arc<Registry>,
}

impl HealthSink for Sinks {
    fn made_here(&self, records: Vec<HealthRecord>) {
        self.health.announce(records);
    }

    fn made_elsewhere(&self, record: HealthRecord) {
        self.health.announce_remote(record);
    }

    fn event_elsewhere(&self, event: TenantEvent) {
        // Rules or silences changed there: for the engine, not the streams.
        if self.alerts.changed_elsewhere(&event) {
            return;
        }
        // The update policy changed there: the runners held here are
        // offered the new version at once, as there (`updates/link.rs`).
        if event.kind == POLICY && update_policy(&event.data) {
            for runner in self.registry.connected(&event.tenant_id) {
                self.registry.nudge_local(&runner, FamilyId::Updates);
            }
        }
        self.bus.announce_remote(event);
    }
}

fn update_policy(data: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| v["policy"] == UPDATE_POLICY)
}

/// Make this server replica `config.replica_id`: links recorded in the
/// table, fence notices heard. Call before `server_restarted` and before
/// accepting connections.
pub async fn join(
    state: &AppState,
    config: &ClusterConfig,
    store: Arc<dyn ClusterStore>,
) -> Result<(Arc<Replica>, Vec<tokio::task::JoinHandle<()>>), StorageError> {
    let replica = Arc::new(Replica::new(config, store.clone()));
    state.health.set_links(replica.clone());
    state.registry.set_remote(Arc::new(Nudges(store.clone())));
    state.containers.tell_elsewhere(state.bus.clone());
    let events = Arc::new(Events {
        store,
        origin: config.replica_id.clone(),
    });
    state.bus.set_remote(events.clone());
    state.alerts.set_remote(events);
    // Alerts on what a runner reports are evaluated where it is linked;
    // health alerts where the once-only lease is (`app/serve.rs` turns
    // them on while it is held here).
    state.alerts.set_links(Arc::new(Linked {
        registry: state.registry.clone(),
        replica_id: config.replica_id.clone(),
    }));
    state.health.evaluate_alerts_here(false);
    let tasks = replica
        .spawn(
            Arc::new(Holder(state.registry.clone())),
            Arc::new(Sinks {
                health: state.health.clone(),
                bus: state.bus.clone(),
                alerts: state.alerts.clone(),
                registry: state.registry.clone(),
            }),
        )
        .await?;
    Ok((replica, tasks))
}
