//! Deploys on the runner connection (dispatched by `link/dispatch.rs`): a
//! host that lost its sealed app secrets (`secrets_lost`) gets them again.

use std::sync::Arc;

use async_trait::async_trait;
use tether::protocol::{Envelope, Hello, Message};

use crate::db::RunnerIdentity;
use crate::deploy::api::redeliver_lost;
use crate::deploy::DeployCtx;
use crate::link::dispatch::{Ending, Family, FamilyConn, Wire};

/// The deploy family's handler; it keeps nothing per connection.
pub struct DeployLink {
    pub ctx: DeployCtx,
}

#[async_trait]
impl Family for DeployLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(DeployConn(self))
    }
}

struct DeployConn(Arc<DeployLink>);

#[async_trait]
impl FamilyConn for DeployConn {
    async fn message(
        &mut self,
        _wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        if let Message::SecretsLost(lost) = &envelope.body {
            redeliver_lost(&self.0.ctx, &runner.tenant_id, &runner.id, &lost.apps).await;
        }
        Ok(())
    }
}
