//! Apps and their deployments: the REST API and the store (in `jobs.db`,
//! beside the jobs they become).

pub mod api;
