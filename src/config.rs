//! Settings that come from flags or the environment: durations, the proxy
//! choice (explicit `--proxy`, else `HTTPS_PROXY` minus `NO_PROXY`), and the
//! rule that plain `http://`/`ws://` is for loopback only.

use crate::url::{Scheme, Url, UrlError};
use std::fmt;
use std::time::Duration;

/// Default heartbeat (docs/protocol.md §6).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// Bounds of `--metrics-interval` (the default is the heartbeat).
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(3600);
/// Bounds of `--fingerprint-interval` (default 60 s).
pub const MIN_FINGERPRINT_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_FINGERPRINT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Every connection phase (DNS, TCP, proxy, TLS, upgrade, hello).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tether";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    BadDuration(String),
    HeartbeatOutOfRange(Duration),
    IntervalOutOfRange {
        what: &'static str,
        value: Duration,
        min: Duration,
        max: Duration,
    },
    Url(UrlError),
    /// `http://` or `ws://` to a host that is not loopback.
    PlainToRemote(String),
    /// The proxy URL is not `http://`.
    ProxyScheme(String),
    /// A server list with no URL, or more than [`MAX_SERVERS`].
    ServerList(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadDuration(s) => {
                write!(f, "invalid duration '{s}' (use e.g. 500ms, 5s, 2m, 1h)")
            }
            ConfigError::HeartbeatOutOfRange(d) => write!(
                f,
                "heartbeat {d:?} is out of range ({MIN_HEARTBEAT:?} to {MAX_HEARTBEAT:?})"
            ),
            ConfigError::IntervalOutOfRange {
                what,
                value,
                min,
                max,
            } => write!(
                f,
                "{what} {value:?} is out of range ({min:?} to {max:?}, or 0/off to disable)"
            ),
            ConfigError::Url(e) => write!(f, "{e}"),
            ConfigError::PlainToRemote(u) => write!(
                f,
                "refusing unencrypted {u}: http:// and ws:// are allowed only for loopback hosts; use https://"
            ),
            ConfigError::ProxyScheme(u) => write!(f, "unsupported proxy {u}: only http:// proxies are supported"),
            ConfigError::ServerList(why) => write!(f, "server list: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let t = s.trim();
    let bad = || ConfigError::BadDuration(s.to_owned());
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn check_heartbeat(d: Duration) -> Result<Duration, ConfigError> {
    if d < MIN_HEARTBEAT || d > MAX_HEARTBEAT {
        return Err(ConfigError::HeartbeatOutOfRange(d));
    }
    Ok(d)
}

/// An interval that may be switched off: `0` or `off` give `None`, else a
/// duration within `[min, max]`.
pub fn parse_interval(
    what: &'static str,
    s: &str,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let d = parse_duration(t)?;
    if d.is_zero() {
        return Ok(None);
    }
    if d < min || d > max {
        return Err(ConfigError::IntervalOutOfRange {
            what,
            value: d,
            min,
            max,
        });
    }
    Ok(Some(d))
}

/// Parse a server URL and refuse plain text to anything but loopback.
pub fn server_url(s: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(s).map_err(ConfigError::Url)?;
    if !url.scheme.is_secure() && !url.is_loopback() {
        return Err(ConfigError::PlainToRemote(url.to_string()));
    }
    Ok(url)
}

/// Most URLs in a server list: replicas or load balancers of one cluster,
/// not a directory of servers.
pub const MAX_SERVERS: usize = 16;

/// Parse a list of server URLs, separated by commas (each checked as
/// [`server_url`]); the order is kept, repeats dropped.
pub fn server_urls(s: &str) -> Result<Vec<Url>, ConfigError> {
    let mut urls: Vec<Url> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = server_url(part)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return Err(ConfigError::ServerList("no server URL given".into()));
    }
    if urls.len() > MAX_SERVERS {
        return Err(ConfigError::ServerList(format!(
            "{} URLs, at most {MAX_SERVERS}",
            urls.len()
        )));
    }
    Ok(urls)
}

/// A non-empty environment variable.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The proxy to use for `target`: `explicit` (from `--proxy`) wins; else
/// `HTTPS_PROXY`/`https_proxy` unless `NO_PROXY`/`no_proxy` excludes the host.
/// `--proxy none` (or `""`) turns proxying off.
pub fn proxy_for(target: &Url, explicit: Option<&str>) -> Result<Option<Url>, ConfigError> {
    let chosen = match explicit {
        Some(p) => Some(p.to_owned()),
        None => {
            let from_env = env("HTTPS_PROXY").or_else(|| env("https_proxy"));
            let no_proxy = env("NO_PROXY")
                .or_else(|| env("no_proxy"))
                .unwrap_or_default();
            from_env.filter(|_| !no_proxy_matches(&no_proxy, &target.host))
        }
    };
    let Some(p) = chosen else { return Ok(None) };
    let p = p.trim();
    if p.is_empty() || p.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    // Bare host:port is common in HTTPS_PROXY; treat it as http://.
    let with_scheme = if p.contains("://") {
        p.to_owned()
    } else {
        format!("http://{p}")
    };
    let url = Url::parse(&with_scheme).map_err(ConfigError::Url)?;
    if url.scheme != Scheme::Http {
        return Err(ConfigError::ProxyScheme(url.to_string()));
    }
    Ok(Some(url))
}

/// `NO_PROXY` semantics as curl has them: comma-separated names; `*` is
/// everything; `example.com` and `.example.com` match the name and its
/// subdomains; IP addresses match exactly. Ports are ignored.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_start_matches('[');
            let entry = match entry.split_once(']') {
                Some((v6, _)) => v6.to_owned(),
                // Strip a :port unless the entry is a bare IPv6 address.
                None if entry.matches(':').count() == 1 => {
                    entry.split(':').next().unwrap_or("").to_owned()
                }
                None => entry.to_owned(),
            };
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "5x", "-1s", "1e99", "five"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(check_heartbeat(Duration::from_millis(50)).is_err());
        assert!(check_heartbeat(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn server_lists_keep_order_and_refuse_what_a_single_url_refuses() {
        let urls = server_urls("https://a.example:8443, https://b.example,https://a.example:8443")
            .unwrap();
        let text: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        assert_eq!(text, ["https://a.example:8443", "https://b.example"]);
        assert_eq!(server_urls("http://127.0.0.1:1").unwrap().len(), 1);
        // One plain-text remote URL spoils the list; so does nothing at all.
        assert!(matches!(
            server_urls("https://a.example,http://b.example"),
            Err(ConfigError::PlainToRemote(_))
        ));
        assert!(matches!(
            server_urls(" , "),
            Err(ConfigError::ServerList(_))
        ));
        let many: Vec<String> = (0..=MAX_SERVERS)
            .map(|i| format!("https://r{i}.example"))
            .collect();
        assert!(matches!(
            server_urls(&many.join(",")),
            Err(ConfigError::ServerList(_))
        ));
    }

    #[test]
    fn intervals_can_be_switched_off() {
        let (min, max) = (MIN_METRICS_INTERVAL, MAX_METRICS_INTERVAL);
        let p = |s| parse_interval("metrics interval", s, min, max);
        assert_eq!(p("1s"), Ok(Some(Duration::from_secs(1))));
        assert_eq!(p("0"), Ok(None));
        assert_eq!(p("0s"), Ok(None));
        assert_eq!(p("off"), Ok(None));
        assert_eq!(p("OFF"), Ok(None));
        assert!(matches!(
            p("10ms"),
            Err(ConfigError::IntervalOutOfRange { .. })
        ));
        assert!(matches!(
            p("2h"),
            Err(ConfigError::IntervalOutOfRange { .. })
        ));
        assert!(matches!(p("soon"), Err(ConfigError::BadDuration(_))));
        let e = p("10ms").unwrap_err().to_string();
        assert!(e.contains("0/off to disable"), "{e}");
    }

    #[test]
    fn plain_text_only_to_loopback() {
        assert!(server_url("http://127.0.0.1:8080").is_ok());
        assert!(server_url("ws://[::1]:8080").is_ok());
        assert!(server_url("http://localhost").is_ok());
        assert!(matches!(
            server_url("http://example.com"),
            Err(ConfigError::PlainToRemote(_))
        ));
        assert!(matches!(
            server_url("ws://10.0.0.1"),
            Err(ConfigError::PlainToRemote(_))
        ));
        assert!(server_url("https://example.com").is_ok());
    }

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "example.com"));
        assert!(no_proxy_matches("example.com", "a.example.com"));
        assert!(no_proxy_matches(".example.com", "a.example.com"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("localhost, 127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches("host:8080", "host"));
        assert!(no_proxy_matches("::1", "::1"));
        assert!(no_proxy_matches("[::1]:443", "::1"));
        assert!(!no_proxy_matches("", "x"));
    }

    #[test]
    fn explicit_proxy_wins_and_must_be_http() {
        let target = Url::parse("https://server:443").unwrap();
        let p = proxy_for(&target, Some("proxy.corp:3128"))
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "http://proxy.corp:3128");
        assert_eq!(proxy_for(&target, Some("none")).unwrap(), None);
        assert!(matches!(
            proxy_for(&target, Some("https://p:1")),
            Err(ConfigError::ProxyScheme(_))
        ));
    }
}
