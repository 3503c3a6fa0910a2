//! The edge toward strangers: what a client with no credential can make the
//! server spend, and the bound on each.
//!
//! ```text
//!  TCP accept ─▶ connection cap (total, per address) ──full──▶ closed at once
//!    ─▶ TLS handshake (10 s) ─▶ request headers (10 s, app/serve.rs)
//!    ─▶ per-address rate (login, enroll) ──over──▶ 429 + Retry-After
//!    ─▶ Content-Length over the route's limit ──▶ 413 (body never read)
//!    ─▶ body read under a deadline ──late──▶ 408, connection closed
//!    ─▶ handler (field lengths checked before any lookup; users/mod.rs:
//!       lockout reserved, then the bounded Argon2 queue ──full──▶ 503)
//! ```
//!
//! | what                         | bound (default)                       | option                   |
//! |------------------------------|---------------------------------------|--------------------------|
//! | open connections             | 10,000; 512 per address (IPv6: /64)   | `--max-connections[-per-address]` |
//! | request headers              | 10 s (`app/serve.rs`)                 |                          |
//! | request body                 | 30 s in all                           | `--body-timeout`         |
//! | login / enroll body          | 4 KiB; others 2 MiB (axum's default)  |                          |
//! | logins per address           | 30 a minute, bursts of 10             | `--login-rate`           |
//! | enrollments per address      | 120 a minute, bursts of 60            | `--enroll-rate`          |
//! | password hashes              | 2 at once, 16 waiting, 5 s wait       | `--hash-queue`           |
//!
//! Rates use `governor` (GCRA, one small state per address); its map is
//! swept of idle addresses when it grows, so a spray of addresses costs
//! memory only while their limits still matter. The release upload is the
//! one route whose body may take long: it checks the admin token before
//! reading a byte and then has an idle timeout per chunk instead
//! (`updates/mod.rs`).
//!
//! A connection counts against the caps until it becomes a WebSocket
//! (hyper hands it over then): runners and terminals are authenticated
//! before the upgrade and have limits of their own.
//!
//! A router driven without a socket (unit tests) has no peer address and
//! no per-address limits.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::common::error::ApiError;

/// Largest body of `POST /api/v1/session` and `POST /api/v1/enroll`: their
/// fields are a few hundred bytes at most.
pub const SMALL_BODY: usize = 4 * 1024;

/// The limits of [`Edge`], from `serve`'s flags.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// A request body (all of it) must arrive within this.
    pub body_timeout: Duration,
    /// Logins per minute per client address (0: no limit).
    pub login_per_minute: u32,
    /// Enrollments per minute per client address (0: no limit).
    pub enroll_per_minute: u32,
    /// Password hashes that may wait for one of the hashing slots.
    pub hash_queue: usize,
    /// How long one may wait before it is answered 503.
    pub hash_wait: Duration,
    /// The listener serves TLS (HSTS is sent; a browser Origin must be https).
    pub tls: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            max_connections: 10_000,
            max_connections_per_address: 512,
            body_timeout: Duration::from_secs(30),
            login_per_minute: 30,
            enroll_per_minute: 120,
            hash_queue: 16,
            hash_wait: Duration::from_secs(5),
            // What `serve` does unless told --plain-http.
            tls: true,
        }
    }
}

/// Per-address state of the edge: connection counts and request rates.
pub struct Edge {
    pub config: EdgeConfig,
    pub connections: ConnectionCap,
    login: AddressRate,
    enroll: AddressRate,
}

impl Edge {
    pub fn new(config: EdgeConfig) -> Edge {
        Edge {
            connections: ConnectionCap::new(
                config.max_connections,
                config.max_connections_per_address,
            ),
            login: AddressRate::per_minute(config.login_per_minute, 10),
            enroll: AddressRate::per_minute(config.enroll_per_minute, 60),
            config,
        }
    }
}

impl Default for Edge {
    fn default() -> Self {
        Edge::new(EdgeConfig::default())
    }
}

/// Whom a per-address limit counts: an IPv4 address, or an IPv6 /64 (one
/// host usually has a whole /64 to pick addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6Net(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

// ---- connections -----------------------------------------------------------------

/// Open connections, in all and per address. A connection over either cap
/// is closed as soon as it is accepted (not left in the backlog, where it
/// would hold the kernel's queue for the clients we do want).
pub struct ConnectionCap {
    total: Arc<Semaphore>,
    per_address: Arc<Mutex<HashMap<AddressKey, usize>>>,
    max_per_address: usize,
    refused: Mutex<RefusalLog>,
}

/// Refused connections are logged once, then counted once a minute.
struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

/// One admitted connection; dropping it gives the slots back.
pub struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    per_address: Arc<Mutex<HashMap<AddressKey, usize>>>,
    key: AddressKey,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.per_address);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnectionCap {
    pub fn new(max_total: usize, max_per_address: usize) -> ConnectionCap {
        ConnectionCap {
            total: Arc::new(Semaphore::new(max_total.max(1))),
            per_address: Default::default(),
            max_per_address: max_per_address.max(1),
            refused: Mutex::new(RefusalLog {
                last: None,
                since: 0,
            }),
        }
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let key = AddressKey::of(ip);
        let slot = self
            .total
            .clone()
            .try_acquire_owned()
            .ok()
            .and_then(|total| {
                let mut map = lock(&self.per_address);
                let n = map.entry(key).or_insert(0);
                (*n < self.max_per_address).then(|| {
                    *n += 1;
                    ConnectionSlot {
                        _total: total,
                        per_address: self.per_address.clone(),
                        key,
                    }
                })
            });
        if slot.is_none() {
            self.log_refusal(ip);
        }
        slot
    }

    /// Open connections now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        lock(&self.per_address).values().sum()
    }

    fn log_refusal(&self, ip: IpAddr) {
        let mut log = lock(&self.refused);
        log.since += 1;
        if log
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                peer = %ip,
                refused = log.since,
                "connection limit reached: closing new connections (--max-connections, --max-connections-per-address)"
            );
            log.last = Some(Instant::now());
            log.since = 0;
        }
    }
}

// ---- request rates ---------------------------------------------------------------

/// A per-address request rate; `None` when switched off (0 per minute).
struct AddressRate {
    limiter: Option<DefaultKeyedRateLimiter<AddressKey>>,
    /// Requests since the last sweep of idle addresses.
    checks: std::sync::atomic::AtomicU32,
}

/// Addresses a rate remembers before it sweeps out those whose limit has
/// fully recovered (each costs tens of bytes).
const RATE_SWEEP_AT: usize = 10_000;

impl AddressRate {
    fn per_minute(n: u32, burst: u32) -> AddressRate {
        let limiter = NonZeroU32::new(n).map(|per_min| {
            let burst = NonZeroU32::new(burst.min(n)).unwrap_or(per_min);
            RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst))
        });
        AddressRate {
            limiter,
            checks: Default::default(),
        }
    }

    /// `Err(wait)` when `ip` is over its rate.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 1024 == 0 && limiter.len() >= RATE_SWEEP_AT {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter
            .check_key(&AddressKey::of(ip))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// 429 with `Retry-After`.
pub fn too_many(wait: Duration, message: &str) -> Response {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .with_retry_after(wait)
        .into_response()
}

fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<PeerAddr>().map(|p| p.0.ip())
}

/// Middleware of `POST /api/v1/session`: the login rate of the client's address.
/// The [`Edge`] is a request extension the app puts on every request, so a
/// feature's `routes()` can name this layer without holding the state.
pub async fn login_rate(
    Extension(edge): Extension<Arc<Edge>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(ip) = peer(&req) {
        if let Err(wait) = edge.login.check(ip) {
            return too_many(wait, "too many logins from this address: slow down");
        }
    }
    next.run(req).await
}

/// Middleware of `POST /api/v1/enroll`: the enrollment rate of the client's address.
pub async fn enroll_rate(
    Extension(edge): Extension<Arc<Edge>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(ip) = peer(&req) {
        if let Err(wait) = edge.enroll.check(ip) {
            return too_many(wait, "too many enrollments from this address: slow down");
        }
    }
    next.run(req).await
}

// ---- addresses -----------------------------------------------------------------

/// The remote address of the TCP connection a request came on (a request
/// extension the accept loop sets, `app/serve.rs`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

// ---- bodies ----------------------------------------------------------------------

/// Middleware: a body announced larger than the route's limit (the state)
/// is refused before a byte of it is read. A chunked body is cut at the
/// same limit by `DefaultBodyLimit` as it is read.
pub async fn announced_length(State(max): State<usize>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return too_large(max as u64).into_response();
    }
    next.run(req).await
}

/// The body limit of a stranger's route (enrollment, login).
pub fn small_body() -> DefaultBodyLimit {
    DefaultBodyLimit::max(SMALL_BODY)
}

/// 413 naming the limit.
pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        tether::protocol::api_error::BAD_REQUEST,
        format!("request body is larger than this endpoint's limit of {max} bytes"),
    )
}

/// Middleware on every route: the request body must arrive within
/// `--body-timeout`, so a client trickling a byte now and then cannot hold
/// a connection and a task for ever (slowloris). The release upload is
/// exempt: it is admin-only, checked before its body is read, and has an
/// idle timeout per chunk.
pub async fn body_deadline(State(edge): State<Arc<Edge>>, req: Request, next: Next) -> Response {
    if req.method() == Method::POST && req.uri().path().starts_with("/api/v1/releases/") {
        return next.run(req).await;
    }
    let limit = edge.config.body_timeout;
    let req = req.map(|body| Body::new(DeadlineBody::new(body, limit)));
    next.run(req).await
}

/// The error a body read ends with when its deadline passed.
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether `e` (or what caused it) is a [`BodyTimedOut`].
pub fn timed_out<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
            return Some(t);
        }
        next = e.source();
    }
    None
}

/// A body that fails with [`BodyTimedOut`] once `limit` has passed since
/// it was made. The timer is armed only while someone reads.
pub struct DeadlineBody {
    inner: Body,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    pub fn new(inner: Body, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(f.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- logs ------------------------------------------------------------------------

/// Client input for a log line: at most [`Clip::MAX`] characters, control
/// characters and quotes escaped, and the length said when cut, so a
/// megabyte of tenant name is 64 characters in the log.
pub struct Clip<'a>(pub &'a str);

impl Clip<'_> {
    pub const MAX: usize = 64;
}

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(Self::MAX) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_count_per_ipv4_and_per_ipv6_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddressKey::of(a), AddressKey::of(b));
        assert_ne!(AddressKey::of(a), AddressKey::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(
            AddressKey::of(mapped),
            AddressKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_ne!(
            AddressKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            AddressKey::of(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn connection_cap_counts_total_and_per_address_and_gives_back() {
        let cap = ConnectionCap::new(3, 2);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let a = cap.admit(one).expect("first");
        let b = cap.admit(one).expect("second");
        assert!(cap.admit(one).is_none(), "per-address cap");
        let c = cap.admit(two).expect("another address");
        assert!(
            cap.admit("10.0.0.3".parse().unwrap()).is_none(),
            "total cap"
        );
        assert_eq!(cap.open(), 3);
        drop(a);
        assert!(cap.admit(one).is_some(), "a slot came back");
        drop((b, c));
        assert_eq!(cap.open(), 0);
        assert!(lock(&cap.per_address).is_empty(), "no entry left behind");
    }

    #[test]
    fn rates_refuse_past_the_burst_per_address_and_say_when() {
        let rate = AddressRate::per_minute(6, 3);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(rate.check(one).is_ok());
        }
        let wait = rate.check(one).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert!(rate.check("10.0.0.2".parse().unwrap()).is_ok());
        let off = AddressRate::per_minute(0, 3);
        for _ in 0..100 {
            assert!(off.check(one).is_ok());
        }
    }

    #[test]
    fn clip_bounds_and_escapes_client_input() {
        assert_eq!(Clip("acme").to_string(), "acme");
        assert_eq!(Clip("a\nb\"").to_string(), "a\\nb\\\"");
        let huge = "x".repeat(2_000_000);
        let s = Clip(&huge).to_string();
        assert!(s.len() < 100, "{}", s.len());
        assert!(s.ends_with("…(2000000 bytes)"), "{s}");
    }
}
