//! The rules of jobs, apart from their I/O: what a script, a secret, a
//! command and a run may be (names, sizes, interpreters, timeouts). The
//! handlers of `api.rs` (and deploys, which become jobs) parse a request,
//! ask these, and map a refusal to a 400; the rules are tested here
//! without a server.

/// Largest script body or command (it travels as one argument: Linux
/// allows 128 KiB per argument).
pub const MAX_SCRIPT: usize = 100 * 1024;
/// Runners one run may name.
pub const MAX_RUNNERS_PER_RUN: usize = 1000;
/// Largest secret value.
pub const MAX_SECRET: usize = 64 * 1024;
/// Longest timeout a job may ask for (a week).
pub const MAX_TIMEOUT_S: u64 = 7 * 86_400;
/// What runs a command or a script without an interpreter of its own.
pub const DEFAULT_INTERPRETER: &str = "/bin/sh";

/// A script or secret name: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An environment variable name (secrets are exported under their name).
pub fn valid_env(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 128
        && b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// An interpreter: an absolute path, bounded, no NUL.
pub fn check_interpreter(s: &str) -> Result<(), String> {
    if s.starts_with('/') && s.len() <= 256 && !s.contains('\0') {
        Ok(())
    } else {
        Err(format!(
            "interpreter {s:?}: an absolute path, e.g. /bin/sh or /usr/bin/python3"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for ok in ["deploy", "a", "backup-db_2.sh", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok:?}");
        }
        for bad in ["", "a b", "../x", "a/b", "ü", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn secret_names_are_environment_variable_names() {
        for ok in ["TOKEN", "_x", "DB_PASSWORD_2"] {
            assert!(valid_env(ok), "{ok:?}");
        }
        for bad in ["", "2X", "A-B", "A B", "A=B", &"A".repeat(129)] {
            assert!(!valid_env(bad), "{bad:?}");
        }
    }

    #[test]
    fn interpreters_are_absolute_paths() {
        assert!(check_interpreter(DEFAULT_INTERPRETER).is_ok());
        assert!(check_interpreter("/usr/bin/python3").is_ok());
        for bad in [
            "sh",
            "",
            "./sh",
            "/bin/sh\0x",
            &format!("/{}", "a".repeat(256)),
        ] {
            let e = check_interpreter(bad).unwrap_err();
            assert!(e.contains("absolute path"), "{bad:?}: {e}");
        }
    }
}
