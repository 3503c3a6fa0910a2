//! Exit codes of the `tether` binary, one table for the CLI help, the docs and
//! the integration tests.
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | ok (`status`: connected) |
//! | 1 | other error |
//! | 2 | usage error (bad flag, missing argument) |
//! | 3 | `enroll`/`run`: state dir not writable; `status`: not connected or not running |
//! | 4 | server unreachable (DNS, TCP, proxy, timeout) |
//! | 5 | TLS certificate rejected |
//! | 6 | enrollment token invalid (unknown to the server) |
//! | 7 | enrollment token expired |
//! | 8 | enrollment token already used |
//! | 9 | enrollment token revoked, or this runner was revoked |
//! | 10 | protocol or server error (an unexpected answer) |
//! | 11 | not enrolled (`run` without `credential.json`) |
//! | 12 | `update`: release refused, nothing changed |
//! | 13 | `update`: the new version failed and was rolled back |

pub const OK: u8 = 0;
pub const OTHER: u8 = 1;
pub const USAGE: u8 = 2;
/// `enroll`/`run`: the state (or run) dir cannot be written.
pub const STATE_DIR: u8 = 3;
/// `status`: the runner is not connected, or not running at all. Same number
/// as [`STATE_DIR`]; the commands never share it.
pub const NOT_CONNECTED: u8 = 3;
pub const UNREACHABLE: u8 = 4;
pub const TLS_CERTIFICATE: u8 = 5;
pub const TOKEN_INVALID: u8 = 6;
pub const TOKEN_EXPIRED: u8 = 7;
pub const TOKEN_USED: u8 = 8;
/// Enrollment token revoked, or the runner itself revoked.
pub const REVOKED: u8 = 9;
pub const PROTOCOL: u8 = 10;
pub const NOT_ENROLLED: u8 = 11;
/// `update`: the release was refused (signature, key, arch, downgrade, disk).
pub const UPDATE_REJECTED: u8 = 12;
/// `update`: the new version did not come up; the previous one runs.
pub const UPDATE_FAILED: u8 = 13;

/// The table as printed by `tether --help`.
pub const HELP_TABLE: &str = "\
Exit codes:
  0   ok (status: connected)
  1   other error
  2   usage error
  3   enroll/run: state dir not writable; status: not connected or not running
  4   server unreachable (DNS, TCP, proxy, timeout)
  5   TLS certificate rejected
  6   enrollment token invalid
  7   enrollment token expired
  8   enrollment token already used
  9   enrollment token revoked, or runner revoked
  10  protocol or server error (unexpected answer)
  11  not enrolled (run without credential.json)
  12  update: release refused, nothing changed
  13  update: the new version failed and was rolled back
";
