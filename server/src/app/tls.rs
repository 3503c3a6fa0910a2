//! The server's TLS identity: a configured certificate, or a private dev CA.
//!
//! With `--tls-cert`/`--tls-key` the given PEM files are used as they are.
//! Without them, the first start creates a small private CA and a leaf
//! certificate signed by it under `<data-dir>/tls/`:
//!
//! ```text
//! ca.pem  ca.key     the CA: runners and the CLI trust it with --ca-file
//! cert.pem key.pem   the server's leaf: localhost, 127.0.0.1, ::1, hostname
//! ```
//!
//! Later starts reuse them (a missing leaf is re-issued from the existing CA,
//! so runners keep trusting the server). The leaf is not a CA itself: webpki
//! refuses a CA certificate presented as an end entity. Keys are written 0600.
//!
//! rustls uses the ring provider, set explicitly (never a process default).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::common::files::write_private;

#[derive(Debug)]
pub enum TlsError {
    Io(PathBuf, io::Error),
    /// A PEM file without what it should hold.
    Pem(PathBuf, &'static str),
    Generate(rcgen::Error),
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            TlsError::Pem(p, what) => write!(f, "{}: {what}", p.display()),
            TlsError::Generate(e) => write!(f, "generating dev certificate: {e}"),
            TlsError::Rustls(e) => write!(f, "tls configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Generate(e)
    }
}

/// Where the dev CA and leaf live, and whether they were just made.
pub struct DevCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub created: bool,
}

/// Make sure `<data>/tls/` holds a dev CA and a leaf signed by it.
pub fn ensure_dev_certs(data_dir: &Path) -> Result<DevCerts, TlsError> {
    let dir = data_dir.join("tls");
    fs::create_dir_all(&dir).map_err(|e| TlsError::Io(dir.clone(), e))?;
    let paths = DevCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        created: false,
    };
    let ca_key_path = dir.join("ca.key");
    if paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }

    let (ca_key, ca_params) = if paths.ca.exists() && ca_key_path.exists() {
        let pem =
            fs::read_to_string(&ca_key_path).map_err(|e| TlsError::Io(ca_key_path.clone(), e))?;
        (KeyPair::from_pem(&pem)?, ca_params())
    } else {
        let key = KeyPair::generate()?;
        let params = ca_params();
        let cert = params.self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())
            .map_err(|e| TlsError::Io(ca_key_path.clone(), e))?;
        fs::write(&paths.ca, cert.pem()).map_err(|e| TlsError::Io(paths.ca.clone(), e))?;
        (key, params)
    };
    // The issuer needs only the CA's name and key, so an existing CA file is
    // not parsed: the parameters are the same every time.
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = hostname().filter(|h| !names.contains(h)) {
        names.push(host);
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "tether-server");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    write_private(&paths.key, leaf_key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Io(paths.key.clone(), e))?;
    fs::write(&paths.cert, leaf_cert.pem()).map_err(|e| TlsError::Io(paths.cert.clone(), e))?;
    Ok(DevCerts {
        created: true,
        ..paths
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Tether dev CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tether-server");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The machine's host name, for the leaf's SANs (best effort).
fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = name.trim();
    // Only a name rcgen accepts as a DNS SAN.
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| name.to_owned())
}

/// A rustls server configuration from a PEM chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key_pem = fs::read(key).map_err(|e| TlsError::Io(key.to_owned(), e))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Io(key.to_owned(), e))?
        .ok_or_else(|| TlsError::Pem(key.to_owned(), "no private key found"))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(TlsError::Rustls)?;
    Ok(Arc::new(config))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|e| TlsError::Io(path.to_owned(), e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Io(path.to_owned(), e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(path.to_owned(), "no certificate found"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_are_made_once_and_load() {
        let dir = std::env::temp_dir().join(format!("tether-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = ensure_dev_certs(&dir).unwrap();
        assert!(first.created);
        let ca = fs::read(&first.ca).unwrap();
        let second = ensure_dev_certs(&dir).unwrap();
        assert!(!second.created);
        assert_eq!(fs::read(&second.ca).unwrap(), ca, "the CA is reused");
        server_config(&second.cert, &second.key).unwrap();

        // A lost leaf is re-issued by the same CA.
        fs::remove_file(&second.cert).unwrap();
        let third = ensure_dev_certs(&dir).unwrap();
        assert!(third.created);
        assert_eq!(fs::read(&third.ca).unwrap(), ca);

        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&third.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
