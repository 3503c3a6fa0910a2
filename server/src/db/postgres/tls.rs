//! TLS to PostgreSQL, chosen by the database URL's `sslmode` as libpq
//! chooses it (PostgreSQL docs, "SSL Support", table "SSL Mode
//! Descriptions"), so a URL that works with `psql` works here:
//!
//! ```text
//!  sslmode                  TLS                        the server's certificate
//!  disable                  never                      –
//!  allow, prefer (default)  if the server offers it    not checked; with sslrootcert,
//!                                                      the chain (as libpq)
//!  require                  always                     the same
//!  verify-ca                always                     the chain up to sslrootcert
//!  verify-full              always                     the chain and the host name
//! ```
//!
//! `sslrootcert=FILE` names the CA certificates (PEM); `sslrootcert=system`,
//! or none with a `verify-` mode, means the public CAs (webpki-roots).
//! tokio-postgres itself knows only disable, prefer and require and no
//! `sslrootcert`, so both parameters are read and taken out here, and the
//! driver is told `require` for the `verify-` modes; the checks are the
//! rustls client configuration's (`common/tls.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::common::tls::{provider, public_roots, roots_from_pem, ChainOnly, SignatureOnly};

/// libpq's `sslmode`, as far as it means something here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's allow tries without TLS first; the driver cannot, and
            // TLS when offered is the safer of the two.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                "sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
            ))
            }
        })
    }

    /// What the driver is told (it knows only these three).
    fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// Where the CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    None,
    System,
    File(PathBuf),
}

/// A database URL read: the driver's configuration and the TLS to use.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
    /// Whether the database's certificate is checked at all (the chain).
    pub checked: bool,
}

/// Read `url` (the caller scrubs the password out of errors).
pub fn parse(url: &str) -> Result<Target, String> {
    let (rest, mode, root) = take_tls_params(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| super::chain(&e))?;
    config.ssl_mode(mode.driver());
    let tls = client_config(mode, &root)?;
    let checked = match mode {
        SslMode::Disable => false,
        SslMode::Prefer | SslMode::Require => root != RootCert::None,
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new(tls),
        mode,
        checked,
    })
}

/// The rustls client configuration of a mode.
fn client_config(mode: SslMode, root: &RootCert) -> Result<rustls::ClientConfig, String> {
    let roots = match root {
        RootCert::None => None,
        RootCert::System => Some(public_roots()),
        RootCert::File(path) => Some(roots_from_pem(path).map_err(|e| format!("sslrootcert {e}"))?),
    };
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match (mode, roots) {
        (SslMode::VerifyFull, roots) => builder
            .with_root_certificates(roots.unwrap_or_else(public_roots))
            .with_no_client_auth(),
        (SslMode::VerifyCa, roots) | (SslMode::Prefer | SslMode::Require, roots @ Some(_)) => {
            let chain = ChainOnly::new(roots.unwrap_or_else(public_roots), provider)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(chain))
                .with_no_client_auth()
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `url` without `sslmode` and `sslrootcert`, and what they said.
fn take_tls_params(url: &str) -> Result<(String, SslMode, RootCert), String> {
    let mut mode = None;
    let mut root = RootCert::None;
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" if value == "system" => root = RootCert::System,
            "sslrootcert" if value.is_empty() => root = RootCert::None,
            "sslrootcert" => root = RootCert::File(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    // The key=value form goes to the driver as it is (`serve` and
    // `migrate` take URLs only).
    let rest = match url.split_once('?') {
        Some((base, query)) if url.starts_with("postgres") => {
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if !take(k, percent_decode(v)?)? {
                    kept.push(pair);
                }
            }
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        _ => url.to_owned(),
    };
    // With a root certificate and no mode, libpq verifies the chain.
    let mode = mode.unwrap_or(match root {
        RootCert::File(_) => SslMode::VerifyCa,
        RootCert::System => SslMode::VerifyFull,
        RootCert::None => SslMode::Prefer,
    });
    if root == RootCert::System && mode != SslMode::VerifyFull {
        // libpq refuses this too: public CAs say nothing without the name.
        return Err("sslrootcert=system needs sslmode=verify-full".into());
    }
    Ok((rest, mode, root))
}

/// `%XX` escapes of a URL query value, as bytes, read as UTF-8.
fn percent_decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("a bad %-escape in {v:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{v:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(url: &str) -> (String, SslMode, RootCert) {
        take_tls_params(url).unwrap()
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        assert_eq!(
            read("postgres://u:p@h:5/db"),
            (
                "postgres://u:p@h:5/db".into(),
                SslMode::Prefer,
                RootCert::None
            )
        );
        assert_eq!(
            read("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem&application_name=t"),
            (
                "postgres://u@h/db?application_name=t".into(),
                SslMode::VerifyFull,
                RootCert::File("/etc/ca x.pem".into())
            )
        );
        assert_eq!(
            read("postgresql://h/db?sslmode=disable"),
            ("postgresql://h/db".into(), SslMode::Disable, RootCert::None)
        );
        // A root certificate alone verifies the chain, as in libpq.
        assert_eq!(
            read("postgres://h/d?sslrootcert=/ca.pem").1,
            SslMode::VerifyCa
        );
        assert_eq!(read("postgres://h/d?sslmode=allow").1, SslMode::Prefer);
        assert_eq!(
            read("postgres://h/d?sslrootcert=system"),
            (
                "postgres://h/d".into(),
                SslMode::VerifyFull,
                RootCert::System
            )
        );
    }

    #[test]
    fn bad_tls_parameters_are_refused_with_the_reason() {
        for (url, why) in [
            ("postgres://h/d?sslmode=verify", "sslmode \"verify\""),
            (
                "postgres://h/d?sslmode=require&sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            ("postgres://h/d?sslrootcert=%zz", "bad %-escape"),
            (
                "postgres://h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
        ] {
            let err = parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} was taken"));
            assert!(err.contains(why), "{url}: {err}");
        }
        // What the driver itself refuses still comes back as an error.
        assert!(parse("postgres://h/d?nonsense=1").is_err());
    }

    #[test]
    fn the_driver_is_told_what_it_understands() {
        let t = parse("postgres://u@h/d?sslmode=verify-full").unwrap();
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert!(t.checked);
        let t = parse("postgres://u@h/d").unwrap();
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        assert!(!t.checked);
        let t = parse("postgres://u@h/d?sslmode=disable").unwrap();
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }
}
