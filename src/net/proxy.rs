//! HTTP CONNECT through a forward proxy, sans-IO: [`connect_request`] makes
//! the request bytes, [`ConnectResponse`] eats whatever the socket produced
//! and says when the tunnel is up. The caller owns the socket (the mio loop
//! for `tether run`, a blocking std socket for `tether enroll`).
//!
//! ```text
//!  NeedMore ──feed──▶ NeedMore ──feed (…\r\n\r\n)──▶ Established{leftover}   (2xx)
//!                                         └────────▶ Err(AuthRequired | Refused | Malformed)
//!  more than 16 KiB without \r\n\r\n ──▶ Err(HeadTooLarge)
//!  a first byte that cannot start "HTTP/1.x" ──▶ Err(Malformed(NotHttp))
//! ```
//!
//! Only the response head is read, by the runner's one HTTP decoder
//! ([`super::http`], [`Expect::Connect`]): a 2xx CONNECT answer has no
//! body, and any byte after the blank line already belongs to the tunnel
//! (`leftover`).

use super::http::{Event, Expect, HttpError, ResponseDecoder};
use std::fmt;

/// Largest proxy response head we accept.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The CONNECT request for `authority` (`host:port`, IPv6 in brackets),
/// with basic proxy authentication when the proxy URL carried credentials.
pub fn connect_request(authority: &str, auth: Option<(&str, &str)>) -> Vec<u8> {
    let mut req = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tether/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, pass)) = auth {
        req.push_str("Proxy-Authorization: Basic ");
        req.push_str(&base64(format!("{user}:{pass}").as_bytes()));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No end of head within [`MAX_RESPONSE_HEAD`] bytes.
    HeadTooLarge,
    /// Not an HTTP response.
    Malformed(HttpError),
    /// 407: the proxy wants (other) credentials.
    AuthRequired,
    /// Any other non-2xx answer.
    Refused { status: u16, reason: String },
    /// The proxy closed the connection before answering.
    Closed,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::HeadTooLarge => {
                write!(f, "proxy answer head exceeds {MAX_RESPONSE_HEAD} bytes")
            }
            ProxyError::Malformed(e) => write!(f, "proxy sent a malformed answer ({e})"),
            ProxyError::AuthRequired => {
                write!(
                    f,
                    "proxy requires authentication (407); put user:password in the proxy URL"
                )
            }
            ProxyError::Refused { status, reason } => {
                write!(f, "proxy refused CONNECT: {status} {reason}")
            }
            ProxyError::Closed => write!(f, "proxy closed the connection before answering CONNECT"),
        }
    }
}

impl std::error::Error for ProxyError {}

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    /// The tunnel is up. `leftover` are bytes after the head: the start of
    /// the tunnelled stream.
    Established {
        leftover: Vec<u8>,
    },
}

/// Reads the proxy's answer to CONNECT.
#[derive(Debug)]
pub struct ConnectResponse {
    dec: ResponseDecoder,
    done: bool,
}

impl Default for ConnectResponse {
    fn default() -> ConnectResponse {
        ConnectResponse {
            dec: ResponseDecoder::with_max_head(Expect::Connect, MAX_RESPONSE_HEAD),
            done: false,
        }
    }
}

impl ConnectResponse {
    pub fn new() -> ConnectResponse {
        ConnectResponse::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Result<Progress, ProxyError> {
        if self.done {
            return Ok(Progress::Established {
                leftover: bytes.to_vec(),
            });
        }
        let mut rest = bytes;
        loop {
            let step = self.dec.feed(rest).map_err(|e| match e {
                HttpError::HeadTooLarge => ProxyError::HeadTooLarge,
                e => ProxyError::Malformed(e),
            })?;
            rest = &rest[step.consumed..];
            match step.item {
                None => return Ok(Progress::NeedMore),
                // A 2xx: `Upgraded` follows without input.
                Some(Event::Head(head)) if head.is_success() => {}
                Some(Event::Head(head)) if head.status == 407 => {
                    return Err(ProxyError::AuthRequired)
                }
                Some(Event::Head(head)) => {
                    return Err(ProxyError::Refused {
                        status: head.status,
                        reason: head.reason,
                    })
                }
                Some(Event::Upgraded) => {
                    self.done = true;
                    return Ok(Progress::Established {
                        leftover: rest.to_vec(),
                    });
                }
                // Only after a 2xx head, which always upgrades.
                Some(Event::Body(_) | Event::End) => {
                    return Err(ProxyError::Malformed(HttpError::BadStatusLine))
                }
            }
        }
    }

    /// The proxy closed the connection: always an error before the tunnel.
    pub fn eof(&self) -> ProxyError {
        ProxyError::Closed
    }
}

/// Standard base64 with padding (RFC 4648), for `Proxy-Authorization`.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_WITH_HEADERS: &[u8] =
        b"HTTP/1.1 200 Connection established\r\nProxy-Agent: squid/6.6\r\nVia: 1.1 proxy\r\n\r\n";
    const NEEDS_AUTH: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 12\r\n\r\naccess denied";
    const FORBIDDEN: &[u8] = b"HTTP/1.0 403 Forbidden\r\n\r\n";
    const GARBAGE: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\nwhat\r\n\r\n";

    /// Feed `input` split at `at`, as two reads, and return the outcome.
    fn feed_split(input: &[u8], at: usize) -> Result<Progress, ProxyError> {
        let mut r = ConnectResponse::new();
        match r.feed(&input[..at])? {
            Progress::NeedMore => r.feed(&input[at..]),
            Progress::Established { mut leftover } => {
                // Head ended inside the first part: the rest is tunnel data.
                leftover.extend_from_slice(&input[at..]);
                Ok(Progress::Established { leftover })
            }
        }
    }

    #[test]
    fn request_has_host_and_optional_basic_auth() {
        let r = String::from_utf8(connect_request("[::1]:443", None)).unwrap();
        assert!(
            r.starts_with("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"));
        assert!(!r.contains("Proxy-Authorization"));
        let r =
            String::from_utf8(connect_request("h:443", Some(("Aladdin", "open sesame")))).unwrap();
        assert!(
            r.contains("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"),
            "{r}"
        );
    }

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn established_at_every_split_point() {
        let mut input = OK_WITH_HEADERS.to_vec();
        input.extend_from_slice(b"\x16\x03\x01tls");
        for at in 0..=input.len() {
            assert_eq!(
                feed_split(&input, at),
                Ok(Progress::Established {
                    leftover: b"\x16\x03\x01tls".to_vec()
                }),
                "split at {at}"
            );
        }
        // Byte by byte, too.
        let mut r = ConnectResponse::new();
        for (i, b) in OK_WITH_HEADERS.iter().enumerate() {
            let p = r.feed(std::slice::from_ref(b)).unwrap();
            if i + 1 < OK_WITH_HEADERS.len() {
                assert_eq!(p, Progress::NeedMore, "byte {i}");
            } else {
                assert_eq!(p, Progress::Established { leftover: vec![] });
            }
        }
    }

    #[test]
    fn auth_required_at_every_split_point() {
        for at in 0..=NEEDS_AUTH.len() {
            assert_eq!(
                feed_split(NEEDS_AUTH, at),
                Err(ProxyError::AuthRequired),
                "split at {at}"
            );
        }
    }

    #[test]
    fn refusal_carries_status_and_reason() {
        for at in 0..=FORBIDDEN.len() {
            assert_eq!(
                feed_split(FORBIDDEN, at),
                Err(ProxyError::Refused {
                    status: 403,
                    reason: "Forbidden".into()
                }),
                "split at {at}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed_at_every_split_point() {
        for at in 0..=GARBAGE.len() {
            assert!(
                matches!(feed_split(GARBAGE, at), Err(ProxyError::Malformed(_))),
                "split at {at}"
            );
        }
    }

    #[test]
    fn oversized_head_is_refused_whatever_the_split() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_RESPONSE_HEAD + 100 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        for at in (0..=big.len()).step_by(997).chain([big.len()]) {
            assert_eq!(
                feed_split(&big, at),
                Err(ProxyError::HeadTooLarge),
                "split at {at}"
            );
        }
        // Endless headers without a blank line stop at the cap, not at EOF.
        // (Bytes that cannot start a status line stop at the first byte:
        // `garbage_is_malformed_at_every_split_point`.)
        let mut r = ConnectResponse::new();
        assert_eq!(r.feed(b"HTTP/1.1 200 OK\r\n"), Ok(Progress::NeedMore));
        let line = [b'a'; 1024];
        let mut out = Ok(Progress::NeedMore);
        for _ in 0..20 {
            out = r.feed(&line);
            if out.is_err() {
                break;
            }
        }
        assert_eq!(out, Err(ProxyError::HeadTooLarge));
    }
}
