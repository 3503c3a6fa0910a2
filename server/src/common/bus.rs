//! Tenant events for the event stream (`GET /api/v1/events`) beyond health:
//! jobs made or cancelled; in a cluster, container events for the other
//! replicas (`containers/` announces them here itself). A feature publishes; the event
//! stream of this server shows it, and on a replica of several every other
//! replica's too (sent by NOTIFY, `app/cluster.rs`), so the dashboard on
//! any replica sees every change.
//!
//! ```text
//!  jobs/api.rs: publish(tenant, "job", {...}) ─▶ local broadcast ─▶ SSE here
//!                                            └▶ remote (a replica) ─▶ NOTIFY
//!  other replica: notice ─▶ announce_remote ─▶ local broadcast ─▶ SSE there
//! ```

use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

/// Events a slow subscriber may fall behind by before it skips ahead.
const BACKLOG: usize = 1024;
/// One event of a tenant (defined with the notice that carries it).
pub use crate::db::cluster::TenantEvent;
/// Longest event data sent to other replicas (NOTIFY takes < 8000 bytes).
pub use crate::db::cluster::MAX_EVENT_DATA as MAX_DATA;

/// Where this server's events go besides its own streams.
pub trait Remote: Send + Sync {
    fn send(&self, event: &TenantEvent);
}

pub struct Bus {
    local: broadcast::Sender<Arc<TenantEvent>>,
    remote: OnceLock<Arc<dyn Remote>>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus {
            local: broadcast::channel(BACKLOG).0,
            remote: OnceLock::new(),
        }
    }
}

impl Bus {
    /// Events go to `remote` too from now on (a replica of several).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    pub fn publish(&self, tenant_id: &str, kind: &str, data: serde_json::Value) {
        let event = TenantEvent {
            tenant_id: tenant_id.to_owned(),
            kind: kind.to_owned(),
            data: data.to_string(),
        };
        if let Some(r) = self.remote.get() {
            if event.data.len() <= MAX_DATA {
                r.send(&event);
            }
        }
        let _ = self.local.send(Arc::new(event));
    }

    /// For the other replicas' streams only: this server's streams have
    /// it already (container events: `containers/`). Dropped if longer
    /// than [`MAX_DATA`] or on a single server.
    pub fn publish_elsewhere(&self, tenant_id: &str, kind: &str, data: String) {
        if let Some(r) = self.remote.get() {
            if data.len() <= MAX_DATA {
                r.send(&TenantEvent {
                    tenant_id: tenant_id.to_owned(),
                    kind: kind.to_owned(),
                    data,
                });
            }
        }
    }

    /// An event another replica published: for this server's streams.
    pub fn announce_remote(&self, event: TenantEvent) {
        let _ = self.local.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TenantEvent>> {
        self.local.subscribe()
    }
}
