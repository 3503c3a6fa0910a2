//! Dialing the server: resolve (the DNS helper answers through its waker)
//! → TCP connect (next address on failure) → proxy CONNECT → TLS → the
//! WebSocket upgrade. Each step is a drive function that takes its phase by
//! value and returns the next ([`Step`]); a failure goes to `fail`, which
//! backs off (mod.rs). Ends by handing the WebSocket to the session
//! (`start_hello`, session.rs).

use super::*;

/// What a non-101 answer to the upgrade means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// 403 with `runner_revoked`: stop for good.
    Revoked(String),
    /// Anything else: back off and retry.
    Other {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
}

/// Read the JSON error body of a refused upgrade. The body is what arrived
/// with the head (tungstenite hands over the bytes it had read); servers
/// send small error answers in one piece.
pub fn classify_refusal(status: u16, body: Option<&[u8]>) -> UpgradeRefusal {
    let err = body
        .and_then(|b| serde_json::from_slice::<protocol::ApiError>(b).ok())
        .map(|e| e.error);
    match err {
        Some(e) if e.code == protocol::api_error::RUNNER_REVOKED => {
            UpgradeRefusal::Revoked(e.message)
        }
        Some(e) => UpgradeRefusal::Other {
            status,
            code: Some(e.code),
            message: Some(e.message),
        },
        None => UpgradeRefusal::Other {
            status,
            code: None,
            message: None,
        },
    }
}

/// The WebSocket limits: bounded messages, frames and write buffer.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Small: control traffic is tiny, and the buffer is allocated up front.
        .read_buffer_size(8 * 1024)
        // Write each message through at once; we flush after every batch anyway.
        .write_buffer_size(0)
        // Backpressure instead of unbounded queueing behind a slow link.
        .max_write_buffer_size(2 * protocol::MAX_WS_MESSAGE)
        // Reads above the control limit: see `protocol::MAX_RUNNER_READ`.
        .max_message_size(Some(protocol::MAX_RUNNER_READ))
        .max_frame_size(Some(protocol::MAX_RUNNER_READ))
}

impl Connection {
    /// The DNS waker fired.
    pub(super) fn on_dns(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(answer) = self.resolver.try_recv() {
            let current = matches!(self.phase, Phase::Resolving { gen } if gen == answer.gen);
            if !current {
                debug!("conn", "dropping a late DNS answer (lookup {})", answer.gen);
                continue;
            }
            self.phase = Phase::Idle;
            let next = match answer.result {
                Ok(addrs) => self.connect_first(ctx, addrs, None),
                Err(error) => {
                    let host = self.dial_host().to_owned();
                    self.fail(ctx, Failure::Dns { host, error })
                }
            };
            self.run(ctx, next);
        }
        self.sync_interest(ctx);
    }

    /// Host the TCP connection goes to: the proxy, or the server.
    pub(super) fn dial_host(&self) -> &str {
        match &self.endpoint().proxy {
            Some(p) => &p.host,
            None => &self.endpoint().url.host,
        }
    }

    pub(super) fn begin_attempt(&mut self, ctx: &mut Ctx<'_>) {
        self.set_state(RunState::Connecting);
        let (host, port) = match &self.endpoint().proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (self.endpoint().url.host.clone(), self.endpoint().url.port),
        };
        match self.resolver.resolve(&host, port) {
            Ok(gen) => {
                self.phase = Phase::Resolving { gen };
                self.arm_phase_timer(ctx, self.cfg.phase_timeout);
            }
            Err(e) => {
                let step = self.fail(
                    ctx,
                    Failure::Internal(format!("cannot start the DNS lookup: {e}")),
                );
                self.run(ctx, step);
            }
        }
    }

    /// Start a non-blocking connect to the first address that accepts one.
    pub(super) fn connect_first(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut addrs: Vec<SocketAddr>,
        mut last: Option<Failure>,
    ) -> Step {
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            match TcpStream::connect(addr) {
                Ok(mut sock) => {
                    let token = ctx.token();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = ctx.registry.register(&mut sock, token, interest) {
                        return self.fail(
                            ctx,
                            Failure::Internal(format!("cannot register the socket: {e}")),
                        );
                    }
                    self.token = Some(token);
                    self.interest = Some(interest);
                    self.arm_phase_timer(ctx, self.cfg.phase_timeout);
                    return Step::Wait(Phase::Connecting {
                        sock,
                        addr,
                        rest: addrs,
                    });
                }
                Err(error) => last = Some(Failure::Connect { addr, error }),
            }
        }
        let failure = last.unwrap_or_else(|| Failure::Internal("no address to connect to".into()));
        self.fail(ctx, failure)
    }

    pub(super) fn drive_connecting(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut sock: TcpStream,
        addr: SocketAddr,
        rest: Vec<SocketAddr>,
    ) -> Step {
        // mio: on writability check SO_ERROR, then peer_addr; NotConnected
        // means "not yet" (spurious wakeup).
        let error = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return Step::Wait(Phase::Connecting { sock, addr, rest });
                }
                Err(e) => Some(e),
            },
        };
        if let Some(error) = error {
            self.deregister(ctx, &mut sock);
            debug!("conn", "connect to {addr} failed: {error}");
            return self.connect_first(ctx, rest, Some(Failure::Connect { addr, error }));
        }
        let _ = sock.set_nodelay(true);
        debug!("conn", "TCP connected to {addr}");
        match &self.endpoint().proxy {
            Some(p) => {
                let auth = p.userinfo.as_ref().map(|(u, pw)| (u.as_str(), pw.as_str()));
                let request = proxy::connect_request(&self.endpoint().url.authority(), auth);
                self.arm_phase_timer(ctx, self.cfg.phase_timeout);
                Step::Again(Phase::ProxyHandshake {
                    sock,
                    request,
                    written: 0,
                    answer: ConnectResponse::new(),
                })
            }
            None => self.start_tls(ctx, sock, Vec::new()),
        }
    }

    pub(super) fn drive_proxy(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut sock: TcpStream,
        request: Vec<u8>,
        mut written: usize,
        mut answer: ConnectResponse,
    ) -> Step {
        while written < request.len() {
            match sock.write(&request[written..]) {
                Ok(0) => return self.fail_with(ctx, sock, Failure::Proxy(ProxyError::Closed)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Wait(Phase::ProxyHandshake {
                        sock,
                        request,
                        written,
                        answer,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return self.fail_with(
                        ctx,
                        sock,
                        Failure::Io {
                            phase: "proxy CONNECT",
                            error,
                        },
                    )
                }
            }
        }
        let mut buf = [0u8; PROXY_READ_CHUNK];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return self.fail_with(ctx, sock, Failure::Proxy(answer.eof())),
                Ok(n) => match answer.feed(&buf[..n]) {
                    Ok(Progress::NeedMore) => {}
                    Ok(Progress::Established { leftover }) => {
                        debug!(
                            "conn",
                            "proxy tunnel to {} established",
                            self.endpoint().url.authority()
                        );
                        return self.start_tls(ctx, sock, leftover);
                    }
                    Err(e) => return self.fail_with(ctx, sock, Failure::Proxy(e)),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Wait(Phase::ProxyHandshake {
                        sock,
                        request,
                        written,
                        answer,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return self.fail_with(
                        ctx,
                        sock,
                        Failure::Io {
                            phase: "proxy CONNECT",
                            error,
                        },
                    )
                }
            }
        }
    }

    /// TCP (or the tunnel) is up: TLS for https, straight to the upgrade for
    /// loopback http.
    pub(super) fn start_tls(
        &mut self,
        ctx: &mut Ctx<'_>,
        sock: TcpStream,
        leftover: Vec<u8>,
    ) -> Step {
        self.arm_phase_timer(ctx, self.cfg.phase_timeout);
        if !self.endpoint().url.scheme.is_secure() {
            if !leftover.is_empty() {
                return self.fail_with(
                    ctx,
                    sock,
                    Failure::Violation("proxy sent data before the request".into()),
                );
            }
            return self.start_upgrade(ctx, Transport::plain(sock));
        }
        let conn = tls::server_name(&self.endpoint().url.host)
            .and_then(|name| rustls::ClientConnection::new(self.cfg.tls.clone(), name));
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => return self.fail_with(ctx, sock, Failure::Tls(e)),
        };
        if !leftover.is_empty() {
            let fed = conn.read_tls(&mut &leftover[..]).map(|_| ());
            let processed = fed.and_then(|_| {
                conn.process_new_packets()
                    .map(|_| ())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            });
            if let Err(error) = processed {
                return self.fail_with(ctx, sock, io_failure("TLS handshake", error));
            }
        }
        Step::Again(Phase::TlsHandshake {
            transport: Transport::tls(conn, sock),
        })
    }

    pub(super) fn drive_tls(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut transport: Transport<TcpStream>,
    ) -> Step {
        match transport.handshake() {
            Ok(Handshake::WouldBlock) => Step::Wait(Phase::TlsHandshake { transport }),
            Ok(Handshake::Done) => {
                debug!("conn", "TLS established with {}", self.endpoint().url.host);
                self.start_upgrade(ctx, transport)
            }
            Err(error) => {
                let failure = io_failure("TLS handshake", error);
                self.fail_with(ctx, transport.socket_mut(), failure)
            }
        }
    }

    pub(super) fn start_upgrade(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut transport: Transport<TcpStream>,
    ) -> Step {
        use tungstenite::client::IntoClientRequest;
        self.arm_phase_timer(ctx, self.cfg.phase_timeout);
        let url = self
            .endpoint()
            .url
            .to_websocket()
            .join(protocol::RUNNER_CONNECT_PATH)
            .to_string();
        let request = url.as_str().into_client_request().and_then(|mut req| {
            let bearer = format!("Bearer {}", self.cfg.credential);
            let value = bearer.parse().map_err(tungstenite::Error::from)?;
            req.headers_mut().insert("Authorization", value);
            let ua = concat!("tether/", env!("CARGO_PKG_VERSION"));
            req.headers_mut().insert(
                "User-Agent",
                tungstenite::http::HeaderValue::from_static(ua),
            );
            Ok(req)
        });
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return self.fail_with(
                    ctx,
                    transport.socket_mut(),
                    Failure::Internal(format!("bad upgrade request: {e}")),
                )
            }
        };
        match ClientHandshake::start(transport, request, Some(ws_config())) {
            Ok(mid) => Step::Again(Phase::Upgrading { mid }),
            Err(e) => self.fail(ctx, Failure::WebSocket(e.to_string())),
        }
    }

    pub(super) fn drive_upgrade(&mut self, ctx: &mut Ctx<'_>, mid: MidUpgrade) -> Step {
        match mid.handshake() {
            Ok((ws, _response)) => self.start_hello(ctx, ws),
            Err(HandshakeError::Interrupted(mid)) => Step::Wait(Phase::Upgrading { mid }),
            Err(HandshakeError::Failure(e)) => {
                // The stream went down with the handshake; its fd is closed.
                self.forget_socket();
                match e {
                    tungstenite::Error::Http(resp) => {
                        let status = resp.status().as_u16();
                        match classify_refusal(status, resp.body().as_deref()) {
                            UpgradeRefusal::Revoked(message) => {
                                error!(
                                    "conn",
                                    "runner revoked: the server refused the credential ({message})"
                                );
                                Step::Wait(self.stop(ctx, Exit::Revoked(message)))
                            }
                            UpgradeRefusal::Other {
                                status,
                                code,
                                message,
                            } => self.fail(
                                ctx,
                                Failure::Rejected {
                                    status,
                                    code,
                                    message,
                                },
                            ),
                        }
                    }
                    tungstenite::Error::Io(error) => {
                        self.fail(ctx, io_failure("websocket upgrade", error))
                    }
                    other => self.fail(ctx, Failure::WebSocket(other.to_string())),
                }
            }
        }
    }
}
