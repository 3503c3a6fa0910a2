//! Fleet operations: naming sets of runners by label selectors, running
//! work on them in waves that halt on failure, and schedules.
//!
//! ```text
//! selector.rs  label syntax, selectors parsed once into a matcher (pure)
//! cron.rs      cron expressions, next occurrences, jitter, missed runs (pure)
//! waves.rs     the wave planner, a state machine (pure)
//! ```

pub mod cron;
pub mod selector;
pub mod waves;
