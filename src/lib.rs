//! Tether runner library. `protocol` is always built (the server uses it);
//! everything else is the runner and needs the `runner` feature.

pub mod protocol;
