//! Each feature's context, cut from [`AppState`] (`FromRef`): a handler
//! takes `State<ItsCtx>`, so no feature names the app's state, and axum
//! builds the context per request from the one state the router holds
//! (clones of `Arc`s and small `Copy` values).

use std::sync::Arc;

use axum::extract::FromRef;

use super::AppState;
use crate::alerts::AlertsCtx;
use crate::audit::AuditCtx;
use crate::common::auth::AuthCtx;
use crate::common::observe::Observer;
use crate::containers::link::ContainersLink;
use crate::containers::ContainersCtx;
use crate::deploy::link::DeployLink;
use crate::deploy::DeployCtx;
use crate::fleet::labels::LabelsCtx;
use crate::fleet::link::FleetLink;
use crate::fleet::FleetCtx;
use crate::jobs::link::JobsLink;
use crate::jobs::JobsCtx;
use crate::link::dispatch::{Families, FamilyId};
use crate::link::LinkCtx;
use crate::logs::link::LogsLink;
use crate::logs::LogsCtx;
use crate::runners::RunnersCtx;
use crate::telemetry::link::TelemetryLink;
use crate::telemetry::TelemetryCtx;
use crate::terminals::link::TerminalsLink;
use crate::terminals::TerminalsCtx;
use crate::updates::link::UpdatesLink;
use crate::updates::UpdatesCtx;
use crate::users::UsersCtx;

impl FromRef<AppState> for AuthCtx {
    fn from_ref(s: &AppState) -> Self {
        AuthCtx {
            db: s.db.clone(),
            admin_token_hash: s.admin_token_hash.clone(),
            edge: s.edge.clone(),
            tickets: s.tickets.clone(),
        }
    }
}

impl FromRef<AppState> for LabelsCtx {
    fn from_ref(s: &AppState) -> Self {
        LabelsCtx {
            db: s.db.clone(),
            store: s.fleet.store.clone(),
        }
    }
}

impl FromRef<AppState> for RunnersCtx {
    fn from_ref(s: &AppState) -> Self {
        RunnersCtx {
            db: s.db.clone(),
            health: s.health.clone(),
            registry: s.registry.clone(),
            containers: s.containers.clone(),
            fleet: LabelsCtx::from_ref(s),
            tuning: s.tuning,
            bus: s.bus.clone(),
        }
    }
}

impl FromRef<AppState> for TelemetryCtx {
    fn from_ref(s: &AppState) -> Self {
        TelemetryCtx { db: s.db.clone() }
    }
}

impl FromRef<AppState> for ContainersCtx {
    fn from_ref(s: &AppState) -> Self {
        ContainersCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            containers: s.containers.clone(),
            tuning: s.tuning,
        }
    }
}

impl FromRef<AppState> for LogsCtx {
    fn from_ref(s: &AppState) -> Self {
        LogsCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            tuning: s.tuning,
            bus: s.bus.clone(),
        }
    }
}

impl FromRef<AppState> for JobsCtx {
    fn from_ref(s: &AppState) -> Self {
        JobsCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            secrets: s.secrets.clone(),
            quotas: s.quotas,
            job_hub: s.job_hub.clone(),
            fleet: Arc::new(LabelsCtx::from_ref(s)),
            bus: s.bus.clone(),
        }
    }
}

impl FromRef<AppState> for DeployCtx {
    fn from_ref(s: &AppState) -> Self {
        DeployCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            jobs: JobsCtx::from_ref(s),
        }
    }
}

impl FromRef<AppState> for TerminalsCtx {
    fn from_ref(s: &AppState) -> Self {
        TerminalsCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            public_url: s.releases.public_url.as_deref().map(Arc::from),
            terminals: s.terminals.clone(),
            replica_id: s.health.replica_id().map(Arc::from),
            cluster: relay_cluster(s),
            tickets: s.tickets.clone(),
            quotas: s.quotas,
            tuning: s.tuning,
            auth: AuthCtx::from_ref(s),
        }
    }
}

/// What the terminal relay between replicas needs (`terminals/relay.rs`),
/// on a replica of several.
fn relay_cluster(s: &AppState) -> Option<crate::terminals::relay::Cluster> {
    s.forward
        .as_ref()
        .map(|f| crate::terminals::relay::Cluster {
            id: Arc::from(f.peers.id()),
            peers: f.peers.clone(),
            store: f.store.clone(),
        })
}

impl FromRef<AppState> for UsersCtx {
    fn from_ref(s: &AppState) -> Self {
        UsersCtx {
            db: s.db.clone(),
            passwords: s.passwords.clone(),
            tuning: s.tuning,
            secrets: s.secrets.clone(),
            sso: s.sso.clone(),
            base_url: s.releases.install_url(None).into(),
        }
    }
}

impl FromRef<AppState> for UpdatesCtx {
    fn from_ref(s: &AppState) -> Self {
        UpdatesCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            releases: s.releases.clone(),
            fleet: LabelsCtx::from_ref(s),
            bus: s.bus.clone(),
        }
    }
}

impl FromRef<AppState> for AlertsCtx {
    fn from_ref(s: &AppState) -> Self {
        AlertsCtx {
            alerts: s.alerts.clone(),
            secrets: s.secrets.clone(),
        }
    }
}

impl FromRef<AppState> for FleetCtx {
    fn from_ref(s: &AppState) -> Self {
        FleetCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            job_hub: s.job_hub.clone(),
            fleet: s.fleet.clone(),
            labels: LabelsCtx::from_ref(s),
            jobs: JobsCtx::from_ref(s),
            links: s.forward.as_ref().map(|f| f.store.clone()),
            offers: Arc::new(UpdatesCtx::from_ref(s)),
        }
    }
}

impl FromRef<AppState> for AuditCtx {
    fn from_ref(s: &AppState) -> Self {
        AuditCtx {
            audit: s.audit.clone(),
        }
    }
}

impl FromRef<AppState> for LinkCtx {
    fn from_ref(s: &AppState) -> Self {
        LinkCtx {
            db: s.db.clone(),
            registry: s.registry.clone(),
            tuning: s.tuning,
            families: families(s),
        }
    }
}

/// The link's table: which feature handles each family of runner messages
/// (`link/dispatch.rs`; each feature's `link.rs`). Table order is the order
/// of the attach and welcome hooks (the labels are stored before anything
/// is sent, the update offer follows the welcome) and of the replies
/// offered to each); the jobs come last, so the jobs waiting for a runner
/// follow the other families' first words.
fn families(s: &AppState) -> Families {
    let observer: Arc<dyn Observer> = s.alerts.clone();
    Families::new(vec![
        (
            FamilyId::Fleet,
            Arc::new(FleetLink {
                labels: LabelsCtx::from_ref(s),
            }),
        ),
        (
            FamilyId::Telemetry,
            Arc::new(TelemetryLink {
                db: s.db.clone(),
                writer: s.metrics_writer.clone(),
                observer: observer.clone(),
                tuning: s.tuning,
            }),
        ),
        (
            FamilyId::Containers,
            Arc::new(ContainersLink {
                hub: s.containers.clone(),
            }),
        ),
        (
            FamilyId::Updates,
            Arc::new(UpdatesLink {
                ctx: UpdatesCtx::from_ref(s),
                observer: observer.clone(),
            }),
        ),
        (
            FamilyId::Terminals,
            Arc::new(TerminalsLink {
                db: s.db.clone(),
                registry: s.registry.clone(),
                terminals: s.terminals.clone(),
                cluster: relay_cluster(s),
            }),
        ),
        (
            FamilyId::Deploy,
            Arc::new(DeployLink {
                ctx: DeployCtx::from_ref(s),
            }),
        ),
        (
            FamilyId::Logs,
            Arc::new(LogsLink {
                logs: s.db.logs.clone(),
                control: s.db.control.clone(),
                observer: observer.clone(),
            }),
        ),
        (
            FamilyId::Jobs,
            Arc::new(JobsLink {
                jobs: s.db.jobs.clone(),
                secrets: s.secrets.clone(),
                hub: s.job_hub.clone(),
                observer,
                audit: AuditCtx::from_ref(s),
                output_cap: s.quotas.job_output_bytes,
            }),
        ),
    ])
}
