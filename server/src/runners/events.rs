//! `GET /api/v1/events`: health changes and container events of the caller's
//! tenant, live, as SSE.
//!
//! Jobs made or cancelled come as `event: job` (`{"id","runner_id",
//! "change"}`), on every replica of several (`common/bus.rs`).
//!
//! Each subscriber gets its own receivers of the health and container
//! broadcasts (health: this replica's and, in a cluster, the other
//! replicas' from `cluster/`) and sees only its tenant's changes (`event: health`,
//! `event: container`). A subscriber too slow to keep up
//! skips ahead and is told so in a comment line; it never holds memory for
//! more than the broadcast backlog. Keep-alive comments every 15 s keep
//! proxies from closing an idle stream. When the caller's authority ends
//! (logout, user deleted, token revoked: `common/stream_auth.rs`) the stream
//! sends `event: end` with `{"reason"}` and closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::common::auth::Caller;
use crate::common::bus::TenantEvent;
use crate::common::error::ApiError;
use crate::common::stream_auth::{until_revoked, AuthGuard};
use crate::containers::{ContainerEventRecord, ContainerEventView};
use crate::db::{HealthRecord, Role};
use crate::runners::health::HealthView;
use crate::runners::RunnersCtx;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn follow(
    caller: Caller,
    State(state): State<RunnersCtx>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant = caller.tenant()?.to_owned();
    let guard = AuthGuard::for_request(&state.db, &headers, Role::Viewer);
    let rx = Receivers {
        health: state.health.subscribe(),
        remote: state.health.subscribe_remote(),
        containers: state.containers.subscribe(),
        bus: state.bus.subscribe(),
    };
    // A first comment flushes the response head at once, so a client knows
    // it is subscribed before anything happens.
    let hello = stream::once(async { Ok(Event::default().comment("subscribed")) });
    let changes = stream::unfold((rx, tenant), |(mut rx, tenant)| async move {
        let event = next_event(&mut rx, &tenant).await?;
        Some((Ok(event), (rx, tenant)))
    });
    let events = until_revoked(hello.chain(changes), guard, |reason| {
        let data = serde_json::json!({ "reason": reason }).to_string();
        Ok(Event::default().event("end").data(data))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

struct Receivers {
    health: broadcast::Receiver<Arc<HealthRecord>>,
    /// Other replicas' health changes (`cluster/`; silent on one server).
    remote: broadcast::Receiver<Arc<HealthRecord>>,
    containers: broadcast::Receiver<Arc<ContainerEventRecord>>,
    /// Jobs made or cancelled, here or on another replica (`common/bus.rs`).
    bus: broadcast::Receiver<Arc<TenantEvent>>,
}

/// The next event for `tenant`, or `None` when the server is going away.
async fn next_event(rx: &mut Receivers, tenant: &str) -> Option<Event> {
    loop {
        let health = |r: Result<Arc<HealthRecord>, RecvError>| match r {
            Ok(record) if record.tenant_id == tenant => {
                let view = HealthView::from(record.as_ref());
                // Serializing strings and a &str cannot fail.
                let data = serde_json::to_string(&view).unwrap_or_default();
                Some(Ok(Event::default().event("health").data(data)))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        let event = tokio::select! {
            r = rx.health.recv() => match health(r) {
                Some(e) => e,
                None => continue,
            },
            r = rx.remote.recv() => match health(r) {
                Some(e) => e,
                None => continue,
            },
            r = rx.containers.recv() => match r {
                Ok(record) if record.tenant_id == tenant => {
                    let view = ContainerEventView::from(record.as_ref());
                    let data = serde_json::to_string(&view).unwrap_or_default();
                    Ok(Event::default().event("container").data(data))
                }
                Ok(_) => continue,
                Err(e) => Err(e),
            },
            r = rx.bus.recv() => match r {
                Ok(e) if e.tenant_id == tenant => {
                    Ok(Event::default().event(e.kind.as_str()).data(e.data.as_str()))
                }
                Ok(_) => continue,
                Err(e) => Err(e),
            },
        };
        return match event {
            Ok(event) => Some(event),
            Err(RecvError::Lagged(n)) => {
                Some(Event::default().comment(format!("skipped {n} events: subscriber too slow")))
            }
            Err(RecvError::Closed) => None,
        };
    }
}
