//! Minimal URL parsing for the few URLs the runner handles: the server
//! (`https://host[:port][/prefix]`, or `wss://`), and a proxy
//! (`http://[user:pass@]host:port`). Host may be a name, IPv4, or `[IPv6]`.
//!
//! Deliberately small: no query manipulation, no IDNA, no relative
//! references. What it does not understand it refuses with a clear message.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    Ws,
    Wss,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http | Scheme::Ws => 80,
            Scheme::Https | Scheme::Wss => 443,
        }
    }

    /// Whether the scheme means TLS.
    pub fn is_secure(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Wss)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Lower-cased name, dotted IPv4, or IPv6 **without** brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
    /// Percent-decoded `user:password` (only meaningful for a proxy).
    pub userinfo: Option<(String, String)>,
}

// Debug must not print a proxy password.
impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Url({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    pub input: String,
    pub reason: &'static str,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid URL '{}': {}", self.input, self.reason)
    }
}

impl std::error::Error for UrlError {}

impl Url {
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let err = |reason| UrlError {
            input: redact(input),
            reason,
        };
        let s = input.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| err("missing scheme (https://...)"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return Err(err("unsupported scheme (expected https, http, wss or ws)")),
        };
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let tail = tail.split('#').next().unwrap_or("");
        let path = if tail.is_empty() {
            "/".to_owned()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_owned()
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(err("path contains spaces or control characters"));
        }

        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((ui, hp)) => {
                let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
                let u = percent_decode(u).ok_or_else(|| err("bad percent-encoding in user"))?;
                let p = percent_decode(p).ok_or_else(|| err("bad percent-encoding in password"))?;
                (Some((u, p)), hp)
            }
            None => (None, authority),
        };

        let (host, port_str) = if let Some(after) = hostport.strip_prefix('[') {
            let (v6, after) = after
                .split_once(']')
                .ok_or_else(|| err("unclosed '[' in host"))?;
            v6.parse::<Ipv6Addr>()
                .map_err(|_| err("bad IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("junk after ']'"))?),
            };
            (v6.to_ascii_lowercase(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (hostport.to_ascii_lowercase(), None),
            }
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if !host.contains(':')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(err("host has characters that are not allowed"));
        }
        let port = match port_str {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('+') => n,
                _ => return Err(err("bad port")),
            },
        };
        Ok(Url {
            scheme,
            host,
            port,
            path,
            userinfo,
        })
    }

    /// `host:port` with brackets around IPv6, for CONNECT and socket lookups.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host_for_uri(), self.port)
    }

    /// The `Host` header value: the port only when it is not the default.
    pub fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host_for_uri()
        } else {
            self.authority()
        }
    }

    fn host_for_uri(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// 127.0.0.0/8, ::1 or `localhost`: the only hosts allowed without TLS.
    pub fn is_loopback(&self) -> bool {
        match self.ip() {
            Some(ip) => ip.is_loopback(),
            None => self.host == "localhost" || self.host.ends_with(".localhost"),
        }
    }

    /// This URL with `suffix` appended to its path (a server given as
    /// `https://host/prefix` keeps the prefix). Query and fragment dropped.
    pub fn join(&self, suffix: &str) -> Url {
        let base = self
            .path
            .split('?')
            .next()
            .unwrap_or("/")
            .trim_end_matches('/');
        Url {
            path: format!("{base}{suffix}"),
            userinfo: None,
            ..self.clone()
        }
    }

    /// The same place with the WebSocket scheme (https → wss, http → ws).
    pub fn to_websocket(&self) -> Url {
        let scheme = match self.scheme {
            Scheme::Http | Scheme::Ws => Scheme::Ws,
            Scheme::Https | Scheme::Wss => Scheme::Wss,
        };
        Url {
            scheme,
            ..self.clone()
        }
    }
}

impl fmt::Display for Url {
    /// Never prints the userinfo (a proxy password has no place in logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path == "/" { "" } else { &self.path };
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_header(),
            path
        )
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The input with any `user:password@` cut out, for error messages.
fn redact(input: &str) -> String {
    if let Some((scheme, rest)) = input.split_once("://") {
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    input.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_server_urls() {
        let u = Url::parse("https://Tether.Example.com").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Https, "tether.example.com", 443, "/")
        );
        assert_eq!(u.to_string(), "https://tether.example.com");

        let u = Url::parse("https://10.0.0.1:8443/base/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 8443));
        assert_eq!(u.join("/api/v1/enroll").path, "/base/api/v1/enroll");
        assert_eq!(
            u.to_websocket().join("/v1/runner/connect").to_string(),
            "wss://10.0.0.1:8443/base/v1/runner/connect"
        );

        let u = Url::parse("wss://h/x?y=1#frag").unwrap();
        assert_eq!(u.path, "/x?y=1");
        assert_eq!(u.join("/z").path, "/x/z");
    }

    #[test]
    fn ipv6_hosts_keep_brackets_where_they_belong() {
        let u = Url::parse("https://[::1]:9443/").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority(), "[::1]:9443");
        assert_eq!(u.host_header(), "[::1]:9443");
        assert!(u.is_loopback());
        let u = Url::parse("https://[2001:DB8::1]").unwrap();
        assert_eq!(u.host_header(), "[2001:db8::1]");
        assert_eq!(u.port, 443);
        assert!(!u.is_loopback());
    }

    #[test]
    fn loopback_detection() {
        for ok in [
            "http://127.0.0.1:1",
            "http://127.8.9.10",
            "http://localhost:3000",
            "http://[::1]",
        ] {
            assert!(Url::parse(ok).unwrap().is_loopback(), "{ok}");
        }
        for no in [
            "http://128.0.0.1",
            "http://localhost.example.com",
            "http://[::2]",
            "http://10.1.1.1",
        ] {
            assert!(!Url::parse(no).unwrap().is_loopback(), "{no}");
        }
    }

    #[test]
    fn proxy_userinfo_is_decoded_and_never_shown() {
        let u = Url::parse("http://al%40ice:p%3Ass@proxy:3128").unwrap();
        assert_eq!(u.userinfo, Some(("al@ice".into(), "p:ss".into())));
        assert_eq!(u.to_string(), "http://proxy:3128");
        assert!(!format!("{u:?}").contains("p:ss"));
        let e = Url::parse("http://u:secret@proxy:99999").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://:443",
            "https://h:0",
            "https://h:65536",
            "https://h:",
            "https://h:+1",
            "https://[::1",
            "https://[zz]",
            "https://[::1]x",
            "https://ho st",
            "https://h/a b",
            "https://h%41",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
