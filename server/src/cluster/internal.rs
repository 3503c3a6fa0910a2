//! The internal channel between replicas: HTTP/1.1 over TLS to a peer's
//! `--internal-addr`, authenticated by the cluster key, carrying requests
//! (and WebSocket upgrades) that another replica must answer because it
//! holds the runner's link (`app/forward.rs` decides which).
//!
//! ```text
//!  entry replica                                   holding replica (--internal-addr)
//!  TCP connect (CONNECT_TIMEOUT) ─▶ TLS ─▶ peer cert C
//!  x-tether-cluster: <ms>.<HMAC(key, "tether-cluster-v1" ms SHA-256(C))>
//!  request as it came (body streamed) ───────────▶ gate: HMAC over ITS OWN cert, |skew| ≤ SKEW,
//!                                                  compared in constant time; else 401, nothing more
//!  ◀─────────── response head (HEAD_TIMEOUT), body streamed (SSE, NDJSON)
//!  101 ─▶ both upgraded sides spliced (terminal WebSocket: bytes both ways)
//! ```
//!
//! Connections are kept for the next request ([`Pool`]): a TCP and TLS
//! handshake per forwarded request cost more than the relay itself (a
//! stored job output came through a second replica at 0.46× of direct).
//! A connection goes back to the pool once its answer was read to the end
//! (an SSE stream holds it as long as it lasts; one dropped half-read is
//! closed, never reused), at most [`MAX_IDLE_PER_PEER`] per peer, each for
//! [`IDLE_TIMEOUT`], below the peer's header-read timeout that closes an
//! idle connection on its side. A request the reused connection could not
//! send (the peer had closed it) is sent again once on a new connection;
//! one that was sent is never repeated. A WebSocket upgrade takes a
//! connection of its own (it is spliced, not returned).
//!
//! A replica's own stream to a peer (`Peers::websocket`: the terminal
//! relay, `terminals/relay.rs`) goes the same way: TLS, the proof and this
//! replica's id as headers of the WebSocket upgrade, to a route the peer
//! serves on its internal listener only.
//!
//! The peer's certificate is not checked against a CA (replicas may each
//! have their own dev certificate): the proof is the key, bound to the
//! certificate the client saw. A man in the middle shows its own
//! certificate, so the proof it could relay names the wrong one and the
//! real replica refuses it; the TLS handshake signature is still checked,
//! so a stolen certificate without its private key does not pass either.
//! The key itself never crosses the wire.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A replica's own WebSocket to a peer (`Peers::websocket`).
pub type PeerSocket = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

use super::config::ClusterKey;

/// The proof of the cluster key on a forwarded request.
pub const AUTH_HEADER: HeaderName = HeaderName::from_static("x-tether-cluster");
/// The caller a single-use ticket stood for, redeemed on the entry replica
/// (honoured only behind the gate).
pub const PRINCIPAL_HEADER: HeaderName = HeaderName::from_static("x-tether-principal");
/// The replica that forwarded a request (for the target's logs).
pub const FROM_HEADER: HeaderName = HeaderName::from_static("x-tether-forwarded-by");
/// How far the proof's time may be from the gate's clock.
pub const SKEW_MS: i64 = 60_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const TLS_TIMEOUT: Duration = Duration::from_secs(5);
/// Until the peer's response head. Requests to runners wait for their
/// answer at most `Tuning`'s limits, well below this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest `x-tether-cluster` value read (13 digits, '.', 64 hex).
const MAX_PROOF: usize = 96;
/// Idle connections kept per peer; more concurrent requests open more
/// connections, which are closed when done instead of kept.
pub const MAX_IDLE_PER_PEER: usize = 16;
/// How long an idle connection is kept: well below the peer's header-read
/// timeout (10 s, `app/serve.rs`), after which it closes the connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Peers with idle connections at once (replicas of one cluster: a few).
const MAX_PEERS: usize = 64;

/// Headers of one connection, not the request's: never passed on.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

#[derive(Debug)]
pub enum ForwardError {
    /// The peer could not be reached (TCP, TLS).
    Connect(String),
    /// It did not answer, or the exchange broke.
    Exchange(String),
    Timeout,
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::Connect(e) => write!(f, "connecting: {e}"),
            ForwardError::Exchange(e) => write!(f, "forwarding: {e}"),
            ForwardError::Timeout => f.write_str("no answer in time"),
        }
    }
}

impl std::error::Error for ForwardError {}

/// Counters of the channel, for the metrics.
#[derive(Default)]
pub struct Counters {
    /// Requests sent on to another replica.
    pub forwards: AtomicU64,
    /// Of those, the ones that got no answer from the peer.
    pub forward_errors: AtomicU64,
    /// Requests to the internal address refused (no or a wrong proof).
    pub refused: AtomicU64,
    /// Connections opened to peers (a forward on a kept one opens none).
    pub connections: AtomicU64,
}

/// One connection to a peer, ready for a request.
struct Conn {
    sender: SendRequest<Body>,
    /// SHA-256 of the certificate the peer showed on it: the proof is
    /// bound to it.
    cert: [u8; 32],
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections by peer address, bounded by [`MAX_PEERS`] ×
/// [`MAX_IDLE_PER_PEER`].
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        // Plain values: a panic elsewhere cannot leave them half-changed.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live connection to `addr`; the stale and
    /// closed ones met on the way are dropped.
    fn take(&self, addr: &str) -> Option<Conn> {
        let mut idle = self.lock();
        let list = idle.get_mut(addr)?;
        let mut found = None;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < IDLE_TIMEOUT && i.conn.sender.is_ready() {
                found = Some(i.conn);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(addr);
        }
        found
    }

    /// `conn` answered in full and may carry another request.
    fn put(&self, addr: &str, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() >= MAX_PEERS && !idle.contains_key(addr) {
            idle.retain(|_, l| {
                l.retain(|i| i.since.elapsed() < IDLE_TIMEOUT);
                !l.is_empty()
            });
            if idle.len() >= MAX_PEERS {
                return;
            }
        }
        let list = idle.entry(addr.to_owned()).or_default();
        list.retain(|i| i.since.elapsed() < IDLE_TIMEOUT && !i.conn.sender.is_closed());
        if list.len() < MAX_IDLE_PER_PEER {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// This replica's end of the internal channel.
pub struct Peers {
    id: String,
    key: hmac::Key,
    /// SHA-256 of the certificate the internal listener presents.
    own_cert: [u8; 32],
    tls: TlsConnector,
    pool: Arc<Pool>,
    pub counters: Counters,
}

impl Peers {
    /// `own_cert`: the DER of the internal listener's certificate.
    pub fn new(id: &str, key: &ClusterKey, own_cert: &[u8]) -> Peers {
        let provider = crate::common::tls::provider();
        // Any certificate, its handshake signature checked: who the peer
        // is, the cluster key proves (bound to this certificate: see the
        // module doc).
        let verifier = crate::common::tls::SignatureOnly(provider.clone());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Peers {
            id: id.to_owned(),
            key: key.hmac_key(),
            own_cert: Sha256::digest(own_cert).into(),
            tls: TlsConnector::from(Arc::new(config)),
            pool: Arc::default(),
            counters: Counters::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn message(ms: i64, cert: &[u8; 32]) -> Vec<u8> {
        let mut m = format!("tether-cluster-v1\n{ms}\n").into_bytes();
        m.extend_from_slice(cert);
        m
    }

    /// The proof for a peer that showed certificate `cert` (its SHA-256).
    fn proof(&self, ms: i64, cert: &[u8; 32]) -> String {
        let tag = hmac::sign(&self.key, &Self::message(ms, cert));
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{ms}.{hex}")
    }

    /// Whether `value` proves the key, made for this replica's own
    /// certificate within [`SKEW_MS`] of `now_ms`. Constant time in the
    /// tag (`ring::hmac::verify`).
    pub fn verify(&self, value: Option<&HeaderValue>, now_ms: i64) -> bool {
        let Some(text) = value.map(HeaderValue::as_bytes) else {
            return false;
        };
        if text.len() > MAX_PROOF {
            return false;
        }
        let Some(dot) = text.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (ms, hex) = (&text[..dot], &text[dot + 1..]);
        let Some(ms) = std::str::from_utf8(ms)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            return false;
        };
        if (now_ms - ms).abs() > SKEW_MS || hex.len() != 64 {
            return false;
        }
        let mut tag = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => tag[i] = (h * 16 + l) as u8,
                _ => return false,
            }
        }
        hmac::verify(&self.key, &Self::message(ms, &self.own_cert), &tag).is_ok()
    }

    /// Send `req` to the replica at `addr` and hand back its answer, the
    /// body streamed; a WebSocket upgrade is spliced through once both
    /// sides switched protocols. `principal`: what a ticket redeemed here
    /// stood for.
    pub async fn forward(
        &self,
        addr: &str,
        mut req: Request<Body>,
        principal: Option<String>,
    ) -> Result<Response<Body>, ForwardError> {
        self.counters.forwards.fetch_add(1, Ordering::Relaxed);
        let result = self.exchange(addr, &mut req, principal).await;
        if result.is_err() {
            self.counters.forward_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// TCP and TLS to `addr`, and the SHA-256 of the certificate it showed.
    async fn tls_connect(
        &self,
        addr: &str,
    ) -> Result<(TlsStream<TcpStream>, [u8; 32]), ForwardError> {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ForwardError::Timeout)?
            .map_err(|e| ForwardError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| ForwardError::Connect(format!("{addr}: {e}")))?;
        let tls = tokio::time::timeout(TLS_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ForwardError::Timeout)?
            .map_err(|e| ForwardError::Connect(format!("{addr}: TLS: {e}")))?;
        let cert: [u8; 32] = {
            let (_, conn) = tls.get_ref();
            let der = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| ForwardError::Connect(format!("{addr}: no certificate")))?;
            Sha256::digest(der.as_ref()).into()
        };
        Ok((tls, cert))
    }

    /// A new connection to `addr`: TCP, TLS, the HTTP/1.1 handshake.
    async fn connect(&self, addr: &str) -> Result<Conn, ForwardError> {
        let (tls, cert) = self.tls_connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(tls))
            .await
            .map_err(|e| ForwardError::Exchange(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("forwarded connection: {e}");
            }
        });
        Ok(Conn { sender, cert })
    }

    /// A WebSocket of this replica's own to the peer at `addr` (`path`:
    /// one of the internal listener's own routes, such as the terminal
    /// relay, `terminals/relay.rs`): the same TLS and proof as a forwarded
    /// request, messages of at most `max_message` bytes.
    pub async fn websocket(
        &self,
        addr: &str,
        path: &str,
        max_message: usize,
    ) -> Result<PeerSocket, ForwardError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        self.counters.forwards.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let (tls, cert) = self.tls_connect(addr).await?;
            let mut req = format!("wss://{addr}{path}")
                .into_client_request()
                .map_err(|e| ForwardError::Exchange(e.to_string()))?;
            let proof = self.proof(crate::common::clock::now_ms(), &cert);
            let headers = req.headers_mut();
            headers.insert(
                AUTH_HEADER,
                HeaderValue::from_str(&proof).map_err(|e| ForwardError::Exchange(e.to_string()))?,
            );
            if let Ok(v) = HeaderValue::from_str(&self.id) {
                headers.insert(FROM_HEADER, v);
            }
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message));
            let (ws, _) = tokio::time::timeout(
                HEAD_TIMEOUT.min(Duration::from_secs(10)),
                tokio_tungstenite::client_async_with_config(req, tls, Some(config)),
            )
            .await
            .map_err(|_| ForwardError::Timeout)?
            .map_err(|e| ForwardError::Exchange(e.to_string()))?;
            Ok(ws)
        }
        .await;
        if result.is_err() {
            self.counters.forward_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The proof for the peer behind `conn`, in `headers`.
    fn prove(&self, headers: &mut axum::http::HeaderMap, conn: &Conn) -> Result<(), ForwardError> {
        let proof = self.proof(crate::common::clock::now_ms(), &conn.cert);
        headers.insert(
            AUTH_HEADER,
            HeaderValue::from_str(&proof).map_err(|e| ForwardError::Exchange(e.to_string()))?,
        );
        Ok(())
    }

    async fn exchange(
        &self,
        addr: &str,
        req: &mut Request<Body>,
        principal: Option<String>,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(path)
            .body(if upgrade {
                Body::empty()
            } else {
                std::mem::take(req.body_mut())
            })
            .map_err(|e| ForwardError::Exchange(e.to_string()))?;
        let headers = out.headers_mut();
        for (name, value) in req.headers() {
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n)
                || *name == AUTH_HEADER
                || *name == PRINCIPAL_HEADER
                || *name == FROM_HEADER
                || (!upgrade && *name == header::UPGRADE)
            {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            headers.insert(FROM_HEADER, v);
        }
        if let Some(p) = principal.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(PRINCIPAL_HEADER, p);
        }

        // A kept connection, except for an upgrade (it is spliced).
        let kept = if upgrade { None } else { self.pool.take(addr) };
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(c) => c,
            None => self.connect(addr).await?,
        };
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut *req));
        self.prove(out.headers_mut(), &conn)?;
        let sent = tokio::time::timeout(HEAD_TIMEOUT, conn.sender.try_send_request(out))
            .await
            .map_err(|_| ForwardError::Timeout)?;
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(mut e) => match (reused, e.take_message()) {
                // The kept connection was closed before the request left:
                // nothing reached the peer, so it is sent once more.
                (true, Some(mut again)) => {
                    conn = self.connect(addr).await?;
                    self.prove(again.headers_mut(), &conn)?;
                    tokio::time::timeout(HEAD_TIMEOUT, conn.sender.send_request(again))
                        .await
                        .map_err(|_| ForwardError::Timeout)?
                        .map_err(|e| ForwardError::Exchange(e.to_string()))?
                }
                _ => return Err(ForwardError::Exchange(e.into_error().to_string())),
            },
        };
        if let (Some(client_side), true) = (
            client_side,
            resp.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS,
        ) {
            let peer_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_side, peer_side) {
                    Ok((a, b)) => {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                    Err(e) => tracing::debug!("forwarded upgrade: {e}"),
                }
            });
            return Ok(resp.map(|_| Body::empty()));
        }
        if !upgrade {
            // Ready again once the answer was read to its end; an error
            // (closed, or the body dropped half-read) drops it.
            let (pool, addr) = (self.pool.clone(), addr.to_owned());
            tokio::spawn(async move {
                if conn.sender.ready().await.is_ok() {
                    pool.put(&addr, conn);
                }
            });
        }
        Ok(resp.map(Body::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_is_bound_to_the_key_the_certificate_and_the_time() {
        let key = ClusterKey::from_bytes([7; 32]);
        let a = Peers::new("a", &key, b"cert of b");
        let b = Peers::new("b", &key, b"cert of b");
        let now = 1_700_000_000_000;
        let b_cert: [u8; 32] = Sha256::digest(b"cert of b").into();
        let good = HeaderValue::from_str(&a.proof(now, &b_cert)).unwrap();
        assert!(b.verify(Some(&good), now));
        assert!(b.verify(Some(&good), now + SKEW_MS));
        assert!(!b.verify(Some(&good), now + SKEW_MS + 1), "too old");
        // Made for another certificate (a man in the middle's).
        let mitm: [u8; 32] = Sha256::digest(b"mitm").into();
        let relayed = HeaderValue::from_str(&a.proof(now, &mitm)).unwrap();
        assert!(!b.verify(Some(&relayed), now));
        // Another key.
        let other = Peers::new("x", &ClusterKey::from_bytes([8; 32]), b"");
        let forged = HeaderValue::from_str(&other.proof(now, &b_cert)).unwrap();
        assert!(!b.verify(Some(&forged), now));
        for bad in [
            "",
            "1.2",
            "x.y",
            &"1".repeat(200),
            &format!("{now}.{}", "g".repeat(64)),
        ] {
            assert!(
                !b.verify(Some(&HeaderValue::from_str(bad).unwrap()), now),
                "{bad}"
            );
        }
        assert!(!b.verify(None, now));
    }
}
