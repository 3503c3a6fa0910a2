//! `tether enroll`: trade a one-time enrollment token for a runner
//! credential and keep it in the state dir.
//!
//! ```text
//!  check state dir writable ─▶ load CA (if any) ─▶ POST /api/v1/enroll ─▶ 201 ─▶ store credential.json (0600)
//!        │ (before the server, so a         │                          │          + ca.pem copy
//!        ▼  read-only dir burns no token)    ▼                          ▼
//!      exit 3                             exit 1                 401 token_* ─▶ exit 6/7/8/9
//!                                                                 unreachable ─▶ exit 4, bad cert ─▶ exit 5
//!                                                                 anything else ─▶ exit 10
//! ```

use crate::config::{self, ConfigError};
use crate::exit;
use crate::http::{self, Client, ClientError};
use crate::net::tls::{self, TlsConfigError};
use crate::protocol::{self, api_error, EnrollRequest, EnrollResponse};
use crate::state::{Credential, StateDir, StateError};
use crate::{info, warn};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Largest answer body we accept from the enroll endpoint.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub server: String,
    pub token: String,
    pub ca_file: Option<PathBuf>,
    /// `--proxy`; `None` falls back to `HTTPS_PROXY`.
    pub proxy: Option<String>,
    /// Name to register under; defaults to the host name. The protocol has
    /// no separate name field, so it travels as `hostname`.
    pub name: Option<String>,
    pub state_dir: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug)]
pub enum EnrollError {
    Config(ConfigError),
    StateDir(StateError),
    Ca(TlsConfigError),
    Request {
        url: String,
        source: ClientError,
    },
    InvalidToken(String),
    TokenExpired(String),
    TokenUsed(String),
    TokenRevoked(String),
    /// Any other non-2xx answer.
    Refused {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// A 2xx answer we cannot use.
    BadAnswer(String),
    Store(StateError),
}

impl EnrollError {
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::Config(_) => exit::USAGE,
            EnrollError::StateDir(_) => exit::STATE_DIR,
            EnrollError::Ca(_) | EnrollError::Store(_) => exit::OTHER,
            EnrollError::Request { source, .. } if source.is_certificate() => exit::TLS_CERTIFICATE,
            EnrollError::Request { source, .. } if source.is_unreachable() => exit::UNREACHABLE,
            EnrollError::Request { .. } => exit::PROTOCOL,
            EnrollError::InvalidToken(_) => exit::TOKEN_INVALID,
            EnrollError::TokenExpired(_) => exit::TOKEN_EXPIRED,
            EnrollError::TokenUsed(_) => exit::TOKEN_USED,
            EnrollError::TokenRevoked(_) => exit::REVOKED,
            EnrollError::Refused { .. } | EnrollError::BadAnswer(_) => exit::PROTOCOL,
        }
    }
}

const NEW_TOKEN: &str = "create a new one with `tether-server token create`";

impl fmt::Display for EnrollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollError::Config(e) => write!(f, "{e}"),
            EnrollError::StateDir(e) => write!(
                f,
                "state dir check failed before contacting the server: {e}"
            ),
            EnrollError::Ca(e) => write!(f, "{e}"),
            EnrollError::Request { url, .. } => write!(f, "enrollment request to {url} failed"),
            EnrollError::InvalidToken(_) => {
                write!(f, "enrollment token is not valid (the server does not know it); check it or {NEW_TOKEN}")
            }
            EnrollError::TokenExpired(_) => write!(f, "enrollment token has expired; {NEW_TOKEN}"),
            EnrollError::TokenUsed(_) => {
                write!(f, "enrollment token was already used (each token enrolls one runner); {NEW_TOKEN}")
            }
            EnrollError::TokenRevoked(_) => write!(f, "enrollment token was revoked; {NEW_TOKEN}"),
            EnrollError::Refused {
                status,
                code,
                message,
            } => {
                write!(f, "server refused the enrollment: HTTP {status}")?;
                if let Some(c) = code {
                    write!(f, " {c}")?;
                }
                if let Some(m) = message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
            EnrollError::BadAnswer(d) => write!(f, "unexpected answer from the server: {d}"),
            EnrollError::Store(e) => write!(f, "enrolled, but could not save the credential: {e}"),
        }
    }
}

impl std::error::Error for EnrollError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnrollError::StateDir(e) => e.source(),
            EnrollError::Ca(e) => e.source(),
            EnrollError::Request { source, .. } => Some(source),
            EnrollError::Store(e) => e.source(),
            _ => None,
        }
    }
}

/// Enroll and store the credential; returns it.
pub fn enroll(opts: &EnrollOptions) -> Result<Credential, EnrollError> {
    let servers = config::server_urls(&opts.server).map_err(EnrollError::Config)?;
    let mut proxies = Vec::with_capacity(servers.len());
    for server in &servers {
        proxies
            .push(config::proxy_for(server, opts.proxy.as_deref()).map_err(EnrollError::Config)?);
    }

    let state = StateDir::new(&opts.state_dir);
    state.ensure_writable().map_err(EnrollError::StateDir)?;

    let ca_pem = match &opts.ca_file {
        Some(p) => Some(tls::load_ca_file(p).map_err(EnrollError::Ca)?.0),
        None => None,
    };
    let tls_config = tls::client_config(opts.ca_file.as_deref()).map_err(EnrollError::Ca)?;

    let hostname = opts.name.clone().unwrap_or_else(crate::sys::hostname);
    let body = EnrollRequest {
        token: opts.token.clone(),
        hostname,
        arch: crate::sys::RELEASE_ARCH.to_owned(),
        os: std::env::consts::OS.to_owned(),
        version: crate::version::version().to_owned(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    // Several URLs (replicas, or load balancers) are tried in turn until one
    // answers; an answer, even a refusal, ends the search (the token is the
    // cluster's, so another replica would refuse it too).
    let mut tried = None;
    for (server, proxy) in servers.iter().zip(proxies) {
        if let Some(p) = &proxy {
            info!("enroll", "using proxy {p}");
        }
        let url = server.join(protocol::ENROLL_PATH);
        let client = Client::new(tls_config.clone(), proxy, opts.timeout);
        match client.request(
            "POST",
            &url,
            &[],
            Some(("application/json", &json)),
            MAX_ANSWER,
        ) {
            Ok(resp) => {
                tried = Some(Ok(resp));
                break;
            }
            Err(source) => {
                if servers.len() > 1 {
                    warn!("enroll", "{url}: {source}; trying the next server");
                }
                tried = Some(Err(EnrollError::Request {
                    url: url.to_string(),
                    source,
                }));
            }
        }
    }
    let resp = match tried {
        Some(answer) => answer?,
        None => {
            return Err(EnrollError::Config(ConfigError::ServerList(
                "no server URL given".into(),
            )))
        }
    };

    if !(200..300).contains(&resp.head.status) {
        return Err(match http::error_body(&resp) {
            Some(e) => match e.code.as_str() {
                api_error::INVALID_TOKEN => EnrollError::InvalidToken(e.message),
                api_error::TOKEN_EXPIRED => EnrollError::TokenExpired(e.message),
                api_error::TOKEN_USED => EnrollError::TokenUsed(e.message),
                api_error::TOKEN_REVOKED => EnrollError::TokenRevoked(e.message),
                _ => EnrollError::Refused {
                    status: resp.head.status,
                    code: Some(e.code),
                    message: Some(e.message),
                },
            },
            None => EnrollError::Refused {
                status: resp.head.status,
                code: None,
                message: None,
            },
        });
    }
    let answer: EnrollResponse = serde_json::from_slice(&resp.body).map_err(|e| {
        EnrollError::BadAnswer(format!(
            "HTTP {} with a body that is not an enrollment answer ({e})",
            resp.head.status
        ))
    })?;
    if answer.credential.is_empty() || answer.runner_id.is_empty() {
        return Err(EnrollError::BadAnswer(
            "empty runner id or credential".into(),
        ));
    }

    let urls: Vec<String> = servers.iter().map(|u| u.to_string()).collect();
    let cred = Credential {
        // Every URL is kept: `run` tries them in turn.
        server: urls.join(","),
        runner_id: answer.runner_id,
        tenant_id: answer.tenant_id,
        credential: answer.credential,
    };
    // The CA first: a credential without its CA would leave `run` unable to
    // connect; a CA without a credential is harmless.
    state
        .store_ca(ca_pem.as_deref())
        .map_err(EnrollError::Store)?;
    if let Ok(old) = state.load_credential() {
        info!(
            "enroll",
            "replacing the credential of runner {}", old.runner_id
        );
    }
    state.store_credential(&cred).map_err(EnrollError::Store)?;
    info!(
        "enroll",
        "enrolled as runner {} (tenant {}) with {}", cred.runner_id, cred.tenant_id, cred.server
    );
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server answering `answer`; returns the request it got.
    fn one_shot(answer: String) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Head, then the body by its Content-Length.
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                if let Some(end) = crate::net::http::find_head_end(&req, 0) {
                    let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if req.len() >= end + len {
                        break;
                    }
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (url, h)
    }

    fn opts(server: &str, dir: &std::path::Path) -> EnrollOptions {
        EnrollOptions {
            server: server.to_owned(),
            token: "tenr_abc".into(),
            ca_file: None,
            proxy: Some("none".into()),
            name: Some("edge-01".into()),
            state_dir: dir.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-enroll-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn api_error(status: &str, code: &str) -> String {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn success_stores_the_credential() {
        let body = r#"{"runner_id":"rn_9","tenant_id":"tn_1","credential":"trun_x"}"#;
        let (url, srv) = one_shot(format!(
            "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ));
        let dir = tempdir("ok");
        let cred = enroll(&opts(&url, &dir)).unwrap();
        assert_eq!(cred.runner_id, "rn_9");
        let req = srv.join().unwrap();
        assert!(req.starts_with("POST /api/v1/enroll HTTP/1.1\r\n"), "{req}");
        let body_start = req.find("\r\n\r\n").unwrap() + 4;
        let sent: EnrollRequest = serde_json::from_str(&req[body_start..]).unwrap();
        assert_eq!(
            (sent.token.as_str(), sent.hostname.as_str()),
            ("tenr_abc", "edge-01")
        );
        let stored = StateDir::new(&dir).load_credential().unwrap();
        assert_eq!(stored, cred);
        assert_eq!(stored.server, url);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_list_is_tried_in_turn_and_stored_whole() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let body = r#"{"runner_id":"rn_9","tenant_id":"tn_1","credential":"trun_x"}"#;
        let (live_url, srv) = one_shot(format!(
            "HTTP/1.1 201 Created\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let dir = tempdir("list");
        let list = format!("{dead_url}, {live_url}");
        let cred = enroll(&opts(&list, &dir)).unwrap();
        assert_eq!(cred.runner_id, "rn_9");
        srv.join().unwrap();
        let stored = StateDir::new(&dir).load_credential().unwrap();
        assert_eq!(stored.server, format!("{dead_url},{live_url}"));
        // `run` reads the stored list back as the same URLs, in order.
        assert_eq!(config::server_urls(&stored.server).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refusal_ends_the_search() {
        let (first, srv) = one_shot(api_error("401 Unauthorized", "invalid_token"));
        // Never contacted: the first server's answer is final.
        let second = TcpListener::bind("127.0.0.1:0").unwrap();
        second.set_nonblocking(true).unwrap();
        let second_url = format!("http://{}", second.local_addr().unwrap());
        let dir = tempdir("list-refused");
        let err = enroll(&opts(&format!("{first},{second_url}"), &dir)).unwrap_err();
        assert!(matches!(err, EnrollError::InvalidToken(_)), "{err}");
        srv.join().unwrap();
        assert!(second.accept().is_err(), "the second server was asked");
        assert!(StateDir::new(&dir).load_credential().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn token_errors_map_to_their_exit_codes() {
        for (code, exit_code) in [
            (api_error::INVALID_TOKEN, exit::TOKEN_INVALID),
            (api_error::TOKEN_EXPIRED, exit::TOKEN_EXPIRED),
            (api_error::TOKEN_USED, exit::TOKEN_USED),
            (api_error::TOKEN_REVOKED, exit::REVOKED),
            (api_error::INTERNAL, exit::PROTOCOL),
        ] {
            let (url, srv) = one_shot(api_error("401 Unauthorized", code));
            let dir = tempdir(code);
            let e = enroll(&opts(&url, &dir)).unwrap_err();
            assert_eq!(e.exit_code(), exit_code, "{code}: {e}");
            srv.join().unwrap();
            assert!(!StateDir::new(&dir).credential_path().exists());
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let e = EnrollError::TokenExpired(String::new());
        assert_eq!(
            e.to_string(),
            "enrollment token has expired; create a new one with `tether-server token create`"
        );
    }

    #[test]
    fn unwritable_state_dir_fails_before_the_server_is_contacted() {
        // Nothing listens on this URL; the state dir check must come first.
        let file = tempdir("ro");
        std::fs::create_dir_all(&file).unwrap();
        std::fs::write(file.join("f"), b"").unwrap();
        let e = enroll(&opts("http://127.0.0.1:9", &file.join("f").join("sub"))).unwrap_err();
        assert_eq!(e.exit_code(), exit::STATE_DIR, "{e}");
        std::fs::remove_dir_all(&file).unwrap();
    }

    #[test]
    fn unreachable_and_garbage_servers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let dir = tempdir("unreach");
        let e = enroll(&opts(&url, &dir)).unwrap_err();
        assert_eq!(e.exit_code(), exit::UNREACHABLE, "{e}");

        let (url, srv) = one_shot("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi".into());
        let e = enroll(&opts(&url, &dir)).unwrap_err();
        assert_eq!(e.exit_code(), exit::PROTOCOL, "{e}");
        srv.join().unwrap();

        let e = enroll(&opts("http://example.com", &dir)).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE, "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
