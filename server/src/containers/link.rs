//! Docker's runner messages (dispatched by `link/dispatch.rs`):
//! `docker_state`, `container_snapshot` and `container_event` are stored
//! and announced at once. (`docker_response` answers a request, which the
//! link routes by its id.)

use std::sync::Arc;

use async_trait::async_trait;
use tether::protocol::{Envelope, Hello, Message};

use crate::common::clock;
use crate::containers::ContainerHub;
use crate::db::RunnerIdentity;
use crate::link::dispatch::{Ending, Family, FamilyConn, Wire};

/// The containers family's handler; it keeps nothing per connection.
pub struct ContainersLink {
    pub hub: Arc<ContainerHub>,
}

#[async_trait]
impl Family for ContainersLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(ContainersConn(self))
    }
}

struct ContainersConn(Arc<ContainersLink>);

#[async_trait]
impl FamilyConn for ContainersConn {
    async fn message(
        &mut self,
        _wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        let hub = &self.0.hub;
        match &envelope.body {
            Message::DockerState(docker) => {
                if let Err(e) = hub
                    .set_state(&runner.id, docker.clone(), clock::now_ms())
                    .await
                {
                    tracing::error!(runner = %runner.id, "storing the docker state: {e}");
                }
            }
            Message::ContainerSnapshot(snapshot) => {
                if let Err(e) = hub
                    .replace(&runner.id, &snapshot.containers, clock::now_ms())
                    .await
                {
                    tracing::error!(runner = %runner.id, "storing a container snapshot: {e}");
                }
            }
            Message::ContainerEvent(event) => {
                if let Err(e) = hub
                    .event(
                        &runner.tenant_id,
                        &runner.id,
                        event.clone(),
                        clock::now_ms(),
                    )
                    .await
                {
                    // The next snapshot (next connection) repairs the view.
                    tracing::error!(runner = %runner.id, "storing a container event: {e}");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
