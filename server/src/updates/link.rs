//! Updates on the runner connection (dispatched by `link/dispatch.rs`):
//! after the welcome, the desired version is offered if the policy selects
//! this runner; `update_status` reports are stored and told to the alert
//! engine.

use std::sync::Arc;

use async_trait::async_trait;
use tether::protocol::{Envelope, Hello, Message};

use crate::common::clock;
use crate::common::observe::Observer;
use crate::db::RunnerIdentity;
use crate::link::dispatch::{Ending, Family, FamilyConn, Wire};
use crate::updates::{offer_for, UpdatesCtx};

/// The updates family's handler; it keeps nothing per connection.
pub struct UpdatesLink {
    pub ctx: UpdatesCtx,
    pub observer: Arc<dyn Observer>,
}

#[async_trait]
impl Family for UpdatesLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(UpdatesConn(self))
    }
}

struct UpdatesConn(Arc<UpdatesLink>);

#[async_trait]
impl FamilyConn for UpdatesConn {
    /// The desired version, if the policy selects this runner (updates/mod.rs).
    async fn welcomed(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        self.offer(wire, runner).await
    }

    /// The policy changed on another replica: offer again, as `set_policy`
    /// does for the runners linked where it was changed.
    async fn nudge(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        self.offer(wire, runner).await
    }

    async fn message(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        self.report(wire, runner, envelope).await
    }
}

impl UpdatesConn {
    async fn offer(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        match offer_for(&self.0.ctx, &runner.tenant_id, &runner.id).await {
            Ok(Some(offer)) => {
                tracing::info!(runner = %runner.id, version = offer.version, "offering an update");
                wire.send_control(0, Message::Update(offer)).await
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::error!(runner = %runner.id, "choosing the desired version: {e:?}");
                Ok(())
            }
        }
    }

    async fn report(
        &mut self,
        _wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        let Message::UpdateStatus(report) = &envelope.body else {
            return Ok(());
        };
        tracing::info!(
            runner = %runner.id, version = report.version, state = report.state,
            reason = report.reason.as_deref().unwrap_or(""), "update report"
        );
        if let Err(e) = self
            .0
            .ctx
            .db
            .updates
            .record_update_report(&runner.id, clock::now_ms(), report)
            .await
        {
            tracing::error!(runner = %runner.id, "storing an update report: {e}");
        }
        self.0
            .observer
            .update_report(&runner.tenant_id, &runner.id, report);
        Ok(())
    }
}
