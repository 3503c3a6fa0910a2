//! The rustls client configuration shared by `tether run` and the blocking
//! HTTP client: ring provider (set explicitly, no process-wide default),
//! TLS 1.2/1.3, and either the webpki roots or exactly the CAs of one PEM
//! file. Certificate checks cannot be switched off: there is no code path
//! that installs a permissive verifier.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub enum TlsConfigError {
    ReadCa {
        path: PathBuf,
        source: io::Error,
    },
    /// The file holds no usable certificate.
    NoCertificates {
        path: PathBuf,
    },
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    Rustls(rustls::Error),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::ReadCa { path, .. } => {
                write!(f, "cannot read CA file {}", path.display())
            }
            TlsConfigError::NoCertificates { path } => {
                write!(f, "CA file {} holds no PEM certificate", path.display())
            }
            TlsConfigError::BadCertificate { path, .. } => {
                write!(
                    f,
                    "CA file {} holds a certificate that cannot be used",
                    path.display()
                )
            }
            TlsConfigError::Rustls(_) => write!(f, "cannot build the TLS configuration"),
        }
    }
}

impl std::error::Error for TlsConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsConfigError::ReadCa { source, .. } => Some(source),
            TlsConfigError::BadCertificate { source, .. } | TlsConfigError::Rustls(source) => {
                Some(source)
            }
            TlsConfigError::NoCertificates { .. } => None,
        }
    }
}

/// Read and check a PEM CA bundle; returns the raw bytes (to copy into the
/// state dir) and the certificates.
pub fn load_ca_file(
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsConfigError> {
    let pem = std::fs::read(path).map_err(|source| TlsConfigError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok((pem, certs))
}

/// The client config: webpki roots, or only the CAs in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let roots = match ca_file {
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            let (_, certs) = load_ca_file(path)?;
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|source| TlsConfigError::BadCertificate {
                        path: path.to_owned(),
                        source,
                    })?;
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: the WebSocket upgrade and enrollment are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One server: a handful of cached sessions is plenty (the default is 256).
    config.resumption = rustls::client::Resumption::in_memory_sessions(4);
    Ok(Arc::new(config))
}

/// The name the certificate must match: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, rustls::Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| rustls::Error::General(format!("'{host}' is not a valid server name")))
}

/// Whether the server's certificate was what failed (exit code 5).
pub fn is_certificate_error(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(_))
}

/// A short lowercase description for logs and errors.
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let why = match c {
                rustls::CertificateError::UnknownIssuer => {
                    "signed by an unknown authority (pass the server's CA with --ca-file)"
                        .to_owned()
                }
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => "expired".to_owned(),
                rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. } => {
                    "not valid yet (check the clock)".to_owned()
                }
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "not valid for this server name".to_owned()
                }
                rustls::CertificateError::Revoked => "revoked".to_owned(),
                other => format!("{other:?}"),
            };
            format!("TLS certificate rejected: {why}")
        }
        other => format!("TLS error: {other}"),
    }
}

/// The rustls error inside an I/O error, if that is what it is (rustls
/// streams wrap their errors as `InvalidData`).
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_uses_ring_and_webpki_roots() {
        let c = client_config(None).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn ca_file_errors_are_clear() {
        let dir = std::env::temp_dir().join(format!("tether-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsConfigError::ReadCa { .. })
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_names() {
        assert!(server_name("example.com").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn certificate_errors_are_told_apart() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(is_certificate_error(&cert));
        assert!(describe(&cert).contains("unknown authority"));
        assert!(!is_certificate_error(&rustls::Error::HandshakeNotComplete));
        let io = io::Error::new(io::ErrorKind::InvalidData, cert.clone());
        assert_eq!(rustls_error(&io), Some(&cert));
    }
}
