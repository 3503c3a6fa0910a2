//! What the features tell the alert engine as a runner's data arrives: a
//! trait `alerts/` implements and `app/` hands to the features, so the
//! features that receive the data (telemetry, jobs, logs, updates) and the
//! link do not name the alert feature.

/// Runner data as it arrives; each call only queues (never blocks).
pub trait Observer: Send + Sync {
    /// A runner's metrics schema: series names and scales.
    fn metrics_schema(&self, runner: &str, schema: &tether::metrics::wire::Schema);
    /// Decoded records of a METRICS frame, in the stored form.
    fn metrics(&self, tenant: &str, runner: &str, rows: &[(i64, Vec<u8>)]);
    /// A stored block of a container's log lines.
    fn log_lines(&self, tenant: &str, runner: &str, container: &str, data: &[u8]);
    /// A job's result.
    fn job_ended(&self, tenant: &str, runner: &str, r: &tether::protocol::JobResult);
    /// Fingerprint changes recorded as drift.
    fn drift(&self, tenant: &str, runner: &str, changes: &[tether::fingerprint::Change]);
    /// An `update_status` report.
    fn update_report(&self, tenant: &str, runner: &str, r: &tether::protocol::UpdateStatus);
}

/// Which runners are linked to this process (a replica of several): the
/// alert engine owns the report-based alerts of those, and only those.
pub trait LinksHere: Send + Sync {
    /// This replica's id (the live-links table names the holder by it).
    fn replica_id(&self) -> &str;
    /// The generation of `runner`'s link held here, if it is held here.
    fn generation(&self, runner: &str) -> Option<u64>;
}
