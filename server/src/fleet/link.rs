//! The fleet on the runner connection (dispatched by `link/dispatch.rs`):
//! the labels a runner proposes in its hello are stored when it attaches.
//! The fleet takes no runner message after that.

use std::sync::Arc;

use async_trait::async_trait;
use tether::protocol::{Envelope, Hello};

use crate::db::RunnerIdentity;
use crate::fleet::labels::{on_hello, LabelsCtx};
use crate::link::dispatch::{Ending, Family, FamilyConn, Wire};

/// The fleet's handler of the hello.
pub struct FleetLink {
    pub labels: LabelsCtx,
}

#[async_trait]
impl Family for FleetLink {
    async fn attached(
        self: Arc<Self>,
        runner: &RunnerIdentity,
        hello: &Hello,
    ) -> Box<dyn FamilyConn> {
        on_hello(&self.labels, &runner.tenant_id, &runner.id, &hello.labels).await;
        Box::new(FleetConn)
    }
}

/// Nothing per connection (a zero-sized box allocates nothing).
struct FleetConn;

#[async_trait]
impl FamilyConn for FleetConn {
    async fn message(
        &mut self,
        _: &mut Wire,
        _: &RunnerIdentity,
        _: &Envelope,
    ) -> Result<(), Ending> {
        Ok(())
    }
}
