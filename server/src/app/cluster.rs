//! A replica's wiring (`--replica-id`): the registry of live connections
//! as the cluster's [`LinkHolder`], so a link another replica took, or a
//! runner revoked there, is closed here; container events sent to the
//! other replicas by the tenant event bus. `app/` joins the two because
//! neither `link/` nor `cluster/` names the other.

use std::sync::Arc;

use async_trait::async_trait;

use crate::cluster::config::ClusterConfig;
use crate::cluster::replica::{HealthSink, LinkHolder, Replica};
use crate::common::bus::{Bus, Remote, TenantEvent};
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
}

impl HealthSink for Sinks {
    fn made_here(&self, records: Vec<HealthRecord>) {
        self.health.announce(records);
    }

    fn made_elsewhere(&self, record: HealthRecord) {
        self.health.announce_remote(record);
    }

    fn event_elsewhere(&self, event: TenantEvent) {
        self.bus.announce_remote(event);
    }
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
    state.bus.set_remote(Arc::new(Events {
        store,
        origin: config.replica_id.clone(),
    }));
    let tasks = replica
        .spawn(
            Arc::new(Holder(state.registry.clone())),
            Arc::new(Sinks {
                health: state.health.clone(),
                bus: state.bus.clone(),
            }),
        )
        .await?;
    Ok((replica, tasks))
}
