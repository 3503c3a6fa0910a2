//! A job's statuses as named states. The wire keeps its strings
//! (`protocol::JobResult::status`, `protocol::JobAccepted::state`; the
//! server stores and matches them): each enum gives its string only where
//! a message is built, so the runner compares variants, never text.

/// How a job ended (`job_result.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
        }
    }
}

/// Where a `job_start` stands on this host (`job_accepted.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Queued,
    Running,
    /// Done here already; its result is (re)sent on every link.
    Finished,
}

impl Accepted {
    pub fn as_str(self) -> &'static str {
        match self {
            Accepted::Queued => "queued",
            Accepted::Running => "running",
            Accepted::Finished => "finished",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings are the wire's: what the protocol documents and the
    /// server's final statuses hold (`server/src/db/jobs.rs` FINAL).
    #[test]
    fn each_status_writes_the_string_the_server_knows() {
        let statuses = [
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::TimedOut,
        ];
        let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["succeeded", "failed", "cancelled", "timed_out"]);
        let states = [Accepted::Queued, Accepted::Running, Accepted::Finished];
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["queued", "running", "finished"]);
    }
}
