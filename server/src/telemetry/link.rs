//! Telemetry's runner messages (dispatched by `link/dispatch.rs`):
//! `metrics_schema` and METRICS frames are decoded here and queued for the
//! metrics writer, and a `metrics_ack` (id 0, it answers no request) goes
//! out when the writer has stored something new; `fingerprint` reports are
//! stored at once, and one that cannot be applied is answered with
//! `fingerprint_resync` (its id).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use tether::protocol::{Empty, Envelope, FrameHeader, Hello, Message, MetricsAck};
use tokio::time::Instant;

use crate::common::clock;
use crate::common::observe::Observer;
use crate::common::tuning::Tuning;
use crate::db::{Db, RunnerIdentity};
use crate::link::dispatch::{note_ignored, Ending, Family, FamilyConn, Wire};
use crate::telemetry::{
    record_fingerprint, FingerprintOutcome, MetricsError, MetricsStream, MetricsWriter,
};

/// The telemetry family's handler (one, shared by every connection).
pub struct TelemetryLink {
    pub db: Db,
    pub writer: MetricsWriter,
    pub observer: Arc<dyn Observer>,
    pub tuning: Tuning,
}

#[async_trait]
impl Family for TelemetryLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(TelemetryConn {
            link: self,
            metrics: None,
        })
    }
}

/// One connection's telemetry.
struct TelemetryConn {
    link: Arc<TelemetryLink>,
    /// Made on the first `metrics_schema` (boxed: most of the time a
    /// connection without metrics carries one pointer).
    metrics: Option<Box<MetricsStream>>,
}

#[async_trait]
impl FamilyConn for TelemetryConn {
    async fn message(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        match &envelope.body {
            Message::MetricsSchema(m) => {
                let stream = self.metrics.get_or_insert_with(Box::default);
                match stream
                    .set_schema(
                        &*self.link.db.metrics,
                        &runner.id,
                        &m.schema,
                        clock::now_ms(),
                    )
                    .await
                {
                    Ok(()) => {
                        self.link.observer.metrics_schema(&runner.id, &m.schema);
                        Ok(())
                    }
                    Err(MetricsError::Violation(why)) => {
                        tracing::warn!(runner = %runner.id, "bad metrics schema: {why}");
                        Err(Ending::violation(envelope.id, why))
                    }
                    Err(MetricsError::Storage(e)) => {
                        tracing::error!(runner = %runner.id, "storing a metrics schema: {e}");
                        Err(Ending::internal())
                    }
                }
            }
            Message::Fingerprint(report) => {
                let outcome =
                    record_fingerprint(&*self.link.db.control, &runner.id, report, clock::now_ms())
                        .await;
                match outcome {
                    Ok(FingerprintOutcome::Resync(why)) => {
                        tracing::info!(runner = %runner.id, "fingerprint changes do not apply ({why}): asking for a full report");
                        wire.send_control(envelope.id, Message::FingerprintResync(Empty {}))
                            .await
                    }
                    Ok(FingerprintOutcome::Baseline) => {
                        tracing::info!(runner = %runner.id, "first fingerprint stored");
                        Ok(())
                    }
                    Ok(FingerprintOutcome::Updated { drift }) => {
                        if !drift.is_empty() {
                            tracing::info!(runner = %runner.id, drift = drift.len(), "fingerprint drift recorded");
                        }
                        self.link
                            .observer
                            .drift(&runner.tenant_id, &runner.id, &drift);
                        Ok(())
                    }
                    Err(e) => {
                        // The runner's next full report (next connection)
                        // catches up whatever this one would have recorded.
                        tracing::error!(runner = %runner.id, "storing a fingerprint: {e}");
                        Ok(())
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// A METRICS frame: decode, queue for the writer, plan the ack.
    async fn frame(
        &mut self,
        _wire: &mut Wire,
        runner: &RunnerIdentity,
        _header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        let Some(stream) = self.metrics.as_deref_mut() else {
            return Err(Ending::violation(
                0,
                "metrics records before any metrics_schema",
            ));
        };
        let retention = self.link.db.metrics.retention().raw_ms;
        let out = stream.on_frame(&payload, clock::now_ms(), retention, &runner.id);
        if let Some(queued) = out.queued {
            let observer = &self.link.observer;
            observer.metrics(&runner.tenant_id, &runner.id, &queued.rows.rows);
            match self.link.writer.queue(queued).await {
                Ok(()) => stream.queued(
                    Instant::now(),
                    self.link.tuning.metrics_flush,
                    self.link.tuning.metrics_ack_every,
                ),
                Err(e) => note_ignored(&format!("metrics samples: {e}"), &runner.id),
            }
        }
        match out.error {
            None => Ok(()),
            Some(MetricsError::Violation(why)) => {
                tracing::warn!(runner = %runner.id, "undecodable metrics: {why}");
                Err(Ending::violation(0, why))
            }
            Some(MetricsError::Storage(e)) => {
                tracing::error!(runner = %runner.id, "storing metrics: {e}");
                Err(Ending::internal())
            }
        }
    }

    fn due(&self) -> Option<Instant> {
        self.metrics.as_ref().and_then(|m| m.ack_due)
    }

    /// Send a `metrics_ack` if one is due and something new is stored.
    async fn tick(
        &mut self,
        wire: &mut Wire,
        _runner: &RunnerIdentity,
        now: Instant,
    ) -> Result<(), Ending> {
        let tuning = self.link.tuning;
        let Some(stream) = self.metrics.as_deref_mut() else {
            return Ok(());
        };
        if stream.ack_due.is_none_or(|due| now < due) {
            return Ok(());
        }
        match stream.take_ack(now, tuning.metrics_flush, tuning.metrics_ack_every) {
            Some(ts_ms) => {
                wire.send_control(0, Message::MetricsAck(MetricsAck { ts_ms }))
                    .await
            }
            None => Ok(()),
        }
    }
}
