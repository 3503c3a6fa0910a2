//! Notification channels: what each kind sends, and the delivery workers.
//!
//! Kinds: `webhook` (the JSON of [`Notification`], signed), `slack` and
//! `discord` (their incoming-webhook bodies), `teams` (a MessageCard),
//! `ntfy` (plain text to a topic URL, title and priority headers), `email`
//! (SMTP, STARTTLS required unless `tls: "none"` on a loopback host, AUTH
//! when a user is set).
//!
//! Each channel has one worker task and a bounded queue ([`QUEUE`]): a
//! full queue drops the notification (logged in the delivery log), so a
//! dead or slow channel never holds up the engine or another channel. The
//! worker keeps its HTTP client, so a receiver that keeps connections open
//! costs one TLS handshake, not one per notification.
//! Every attempt has a timeout and is logged; a failed one is retried with
//! exponential backoff and jitter, [`Tuning::attempts`] times at most.
//!
//! ```text
//!  engine ─try_send─▶ [queue of channel A] ─▶ worker A: attempt ─ok─▶ log
//!                                                   └─fail─▶ log, wait base·2ⁿ·(0.5..1.5) ─▶ attempt ...
//!         ─try_send─▶ [queue of channel B] ─▶ worker B ...
//! ```
//!
//! The config (URLs carry their token; SMTP has a password) is sealed
//! (`common/secrets.rs`, associated data `alert-channel:<id>`) and opened
//! only for an attempt. Outbound requests go where a tenant admin said:
//! see [`check_destination`] for what is refused (SSRF).
//!
//! The webhook signature: `X-Tether-Signature: sha256=<hex HMAC-SHA256 of
//! the body with the channel's secret>`; the body carries `at`, so a
//! receiver can refuse old replays.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::common::clock;
use crate::common::secrets::SecretBox;
use crate::db::alerts::{AlertStore, ChannelRow, DeliveryRow};

/// Notifications queued per channel before new ones are dropped.
pub const QUEUE: usize = 64;
/// Longest URL, address, name or password accepted.
const MAX_FIELD: usize = 2048;
/// Largest CA certificate (PEM) an email channel may carry.
const MAX_PEM: usize = 16 * 1024;
/// Recipients of one email channel.
const MAX_RECIPIENTS: usize = 20;
/// Answer bytes kept in the delivery log.
const DETAIL: usize = 300;

/// Retry and timeout settings; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    /// Loopback and private addresses are refused unless this is set
    /// (`serve --alert-private-targets`).
    pub allow_private: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            attempts: 5,
            backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            allow_private: false,
        }
    }
}

/// A channel's full config, as the API takes it and as it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    Webhook {
        url: String,
        /// The HMAC key; without one the body is not signed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    Teams {
        url: String,
    },
    Ntfy {
        /// The topic's URL, e.g. `https://ntfy.sh/my-alerts`.
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Email {
        host: String,
        #[serde(default = "smtp_port")]
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        from: String,
        to: Vec<String>,
        /// Extra CA (PEM) for a server with a private certificate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

fn smtp_port() -> u16 {
    587
}

impl ChannelConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Webhook { .. } => "webhook",
            ChannelConfig::Slack { .. } => "slack",
            ChannelConfig::Discord { .. } => "discord",
            ChannelConfig::Teams { .. } => "teams",
            ChannelConfig::Ntfy { .. } => "ntfy",
            ChannelConfig::Email { .. } => "email",
        }
    }

    /// Bounds and shape; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        let field = |what: &str, s: &str| {
            if s.is_empty() || s.len() > MAX_FIELD || s.chars().any(char::is_control) {
                Err(format!(
                    "{what} must be 1 to {MAX_FIELD} bytes, no control characters"
                ))
            } else {
                Ok(())
            }
        };
        match self {
            ChannelConfig::Webhook { url, secret } => {
                check_url(url)?;
                if let Some(s) = secret {
                    field("secret", s)?;
                }
            }
            ChannelConfig::Slack { url }
            | ChannelConfig::Discord { url }
            | ChannelConfig::Teams { url } => check_url(url)?,
            ChannelConfig::Ntfy { url, token } => {
                check_url(url)?;
                if let Some(t) = token {
                    field("token", t)?;
                }
            }
            ChannelConfig::Email {
                host,
                username,
                password,
                from,
                to,
                ca_pem,
                ..
            } => {
                field("host", host)?;
                for (what, v) in [("username", username), ("password", password)] {
                    if let Some(v) = v {
                        field(what, v)?;
                    }
                }
                if username.is_some() != password.is_some() {
                    return Err("username and password go together".into());
                }
                from.parse::<lettre::message::Mailbox>()
                    .map_err(|e| format!("from: {e}"))?;
                if to.is_empty() || to.len() > MAX_RECIPIENTS {
                    return Err(format!("to must list 1 to {MAX_RECIPIENTS} addresses"));
                }
                for t in to {
                    t.parse::<lettre::message::Mailbox>()
                        .map_err(|e| format!("to: {t:?}: {e}"))?;
                }
                if let Some(pem) = ca_pem {
                    if pem.len() > MAX_PEM {
                        return Err(format!("ca_pem must be at most {MAX_PEM} bytes"));
                    }
                    lettre::transport::smtp::client::Certificate::from_pem(pem.as_bytes())
                        .map_err(|e| format!("ca_pem: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// What the API shows: where it goes, never the token or the password.
    pub fn public(&self) -> serde_json::Value {
        match self {
            ChannelConfig::Webhook { url, secret } => serde_json::json!({
                "host": url_host(url), "signed": secret.is_some()
            }),
            ChannelConfig::Slack { url }
            | ChannelConfig::Discord { url }
            | ChannelConfig::Teams { url }
            | ChannelConfig::Ntfy { url, .. } => serde_json::json!({ "host": url_host(url) }),
            ChannelConfig::Email {
                host,
                port,
                from,
                to,
                username,
                ..
            } => serde_json::json!({
                "host": host, "port": port, "from": from, "to": to, "auth": username.is_some()
            }),
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_FIELD {
        return Err(format!("url must be at most {MAX_FIELD} bytes"));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err("url must be http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    Ok(())
}

fn url_host(url: &str) -> String {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default()
}

/// Where a request may go: every address the name resolves to must be
/// public — not loopback, private (RFC 1918, fc00::/7), link-local (the
/// cloud metadata address 169.254.169.254), CGNAT, unspecified, multicast
/// or broadcast — unless `allow_private`. A name that resolves differently
/// between this check and the connect (DNS rebinding) is not covered; the
/// operator who needs that closed runs the server where such addresses
/// are firewalled for it.
pub async fn check_destination(host: &str, port: u16, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    for ip in addrs {
        if !is_public(ip) {
            return Err(format!(
                "{host} resolves to {ip}, a private or local address: refused (serve --alert-private-targets allows it)"
            ));
        }
    }
    Ok(())
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// What every channel is told, and the webhook's JSON body (`docs/api.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// Always 1 for this shape.
    pub version: u32,
    /// `firing`, `resolved`, or `test`.
    pub state: String,
    pub rule_id: String,
    pub rule_name: String,
    pub runner_id: String,
    pub runner_name: String,
    pub group: String,
    pub subject: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// RFC 3339.
    pub at: String,
    /// The history row (`GET /api/v1/alerts/history`); absent for a test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_seq: Option<i64>,
}

impl Notification {
    pub fn title(&self) -> String {
        let tag = match self.state.as_str() {
            "firing" => "FIRING",
            "resolved" => "RESOLVED",
            _ => "TEST",
        };
        format!("[{tag}] {}", self.rule_name)
    }
}

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// An HTTP POST: url, headers, body.
type Request = (String, Vec<(String, String)>, Vec<u8>);

/// The HTTP request for a URL kind.
fn http_request(cfg: &ChannelConfig, n: &Notification) -> Option<Request> {
    let text = format!("{}\n{}", n.title(), n.summary);
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let ct = ("Content-Type".to_owned(), "application/json".to_owned());
    Some(match cfg {
        ChannelConfig::Webhook { url, secret } => {
            let body = serde_json::to_vec(n).unwrap_or_default();
            let mut h = vec![ct];
            if let Some(s) = secret {
                h.push(("X-Tether-Signature".into(), signature(s, &body)));
            }
            (url.clone(), h, body)
        }
        ChannelConfig::Slack { url } => (
            url.clone(),
            vec![ct],
            json(serde_json::json!({ "text": text })),
        ),
        ChannelConfig::Discord { url } => (
            url.clone(),
            vec![ct],
            // Discord's content is capped at 2,000 characters.
            json(serde_json::json!({ "content": text.chars().take(1900).collect::<String>() })),
        ),
        ChannelConfig::Teams { url } => (
            url.clone(),
            vec![ct],
            json(serde_json::json!({
                "@type": "MessageCard", "@context": "https://schema.org/extensions",
                "summary": n.title(), "title": n.title(), "text": n.summary,
                "themeColor": if n.state == "firing" { "d63333" } else { "2eb886" },
            })),
        ),
        ChannelConfig::Ntfy { url, token } => {
            let mut h = vec![
                // Header values must be ASCII: the title is clipped to it.
                (
                    "Title".to_owned(),
                    n.title()
                        .chars()
                        .filter(char::is_ascii)
                        .filter(|c| !c.is_control())
                        .collect(),
                ),
                (
                    "Priority".to_owned(),
                    if n.state == "firing" {
                        "high"
                    } else {
                        "default"
                    }
                    .to_owned(),
                ),
                ("Tags".to_owned(), n.state.clone()),
            ];
            if let Some(t) = token {
                h.push(("Authorization".into(), format!("Bearer {t}")));
            }
            (url.clone(), h, n.summary.clone().into_bytes())
        }
        ChannelConfig::Email { .. } => return None,
    })
}

/// The HTTP client of one channel's worker. Kept by the worker, so its
/// connections are reused where the receiver keeps them open (a TLS
/// handshake per channel, not per notification).
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // A redirect could lead past the address check.
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into()
}

/// One attempt: `Ok(detail)` on a 2xx answer or an accepted mail. URL
/// kinds go through `agent` ([`http_agent`] with `tuning.timeout`).
pub async fn attempt(
    cfg: &ChannelConfig,
    n: &Notification,
    tuning: Tuning,
    agent: &ureq::Agent,
) -> Result<String, String> {
    if let ChannelConfig::Email {
        host,
        port,
        username,
        password,
        from,
        to,
        ca_pem,
    } = cfg
    {
        check_destination(host, *port, tuning.allow_private).await?;
        return send_email(
            host,
            *port,
            username,
            password,
            from,
            to,
            ca_pem.as_deref(),
            n,
            tuning.timeout,
        )
        .await;
    }
    let Some((url, headers, body)) = http_request(cfg, n) else {
        return Err("no request for this kind".into());
    };
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    check_destination(uri.host().unwrap_or(""), port, tuning.allow_private).await?;
    let timeout = tuning.timeout;
    let agent = agent.clone();
    let work = tokio::task::spawn_blocking(move || {
        let mut req = agent.post(&url);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let mut resp = req.send(&body[..]).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(DETAIL as u64)
            .read_to_string()
            .unwrap_or_default();
        let detail = format!("HTTP {status} {}", clip(&text));
        if (200..300).contains(&status) {
            Ok(detail)
        } else {
            Err(detail)
        }
    });
    // The blocking call has its own timeout; this one also covers DNS.
    match tokio::time::timeout(timeout + Duration::from_secs(1), work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("send task: {e}")),
        Err(_) => Err(format!("timed out after {} s", timeout.as_secs())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_email(
    host: &str,
    port: u16,
    username: &Option<String>,
    password: &Option<String>,
    from: &str,
    to: &[String],
    ca_pem: Option<&str>,
    n: &Notification,
    timeout: Duration,
) -> Result<String, String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let mut msg = Message::builder()
        .from(from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(n.title());
    for t in to {
        msg = msg.to(t.parse().map_err(|e| format!("to: {e}"))?);
    }
    let body = format!(
        "{}\n\nrule: {} ({})\nrunner: {} ({})\nstate: {}\nat: {}\n",
        n.summary, n.rule_name, n.rule_id, n.runner_name, n.runner_id, n.state, n.at
    );
    let msg = msg
        .body(body)
        .map_err(|e| format!("building the mail: {e}"))?;
    let mut tls = TlsParameters::builder(host.to_owned());
    if let Some(pem) = ca_pem {
        tls = tls.add_root_certificate(
            Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("ca_pem: {e}"))?,
        );
    }
    let tls = tls.build_rustls().map_err(|e| format!("tls: {e}"))?;
    // STARTTLS is required: a server that does not offer it gets no password.
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(Tls::Required(tls))
        .timeout(Some(timeout));
    if let (Some(u), Some(p)) = (username, password) {
        transport = transport.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let transport = transport.build();
    match tokio::time::timeout(timeout * 2, transport.send(msg)).await {
        Ok(Ok(r)) => Ok(format!("SMTP {}", r.code())),
        Ok(Err(e)) => Err(format!("SMTP: {e}")),
        Err(_) => Err(format!(
            "SMTP timed out after {} s",
            (timeout * 2).as_secs()
        )),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(DETAIL).filter(|c| !c.is_control()).collect()
}

struct Job {
    tenant: String,
    channel_id: String,
    n: Notification,
}

/// The delivery workers, one per channel, made on first use.
pub struct Notifier {
    store: Arc<dyn AlertStore>,
    secrets: Arc<SecretBox>,
    /// Read at each delivery: `serve` sets it once at start, after the
    /// engine (and this notifier) began with the defaults.
    tuning: Mutex<Tuning>,
    workers: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

/// The associated data a channel's config is sealed with.
pub fn seal_name(channel_id: &str) -> String {
    format!("alert-channel:{channel_id}")
}

impl Notifier {
    pub fn new(store: Arc<dyn AlertStore>, secrets: Arc<SecretBox>, tuning: Tuning) -> Notifier {
        Notifier {
            store,
            secrets,
            tuning: Mutex::new(tuning),
            workers: Mutex::default(),
        }
    }

    /// Retries, timeouts and the address rule of deliveries from now on.
    pub fn set_tuning(&self, tuning: Tuning) {
        *self.tuning.lock().unwrap_or_else(|e| e.into_inner()) = tuning;
    }

    /// Queue `n` for a channel of `tenant`; never waits.
    pub fn send(self: &Arc<Self>, tenant: &str, channel_id: &str, n: Notification) {
        let job = Job {
            tenant: tenant.to_owned(),
            channel_id: channel_id.to_owned(),
            n,
        };
        let tx = {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            let key = format!("{tenant}\0{channel_id}");
            let alive = workers.get(&key).is_some_and(|tx| !tx.is_closed());
            if !alive {
                let (tx, rx) = mpsc::channel(QUEUE);
                let me = self.clone();
                tokio::spawn(async move { me.work(rx).await });
                workers.insert(key.clone(), tx);
            }
            workers.get(&key).cloned()
        };
        let Some(tx) = tx else { return };
        if let Err(mpsc::error::TrySendError::Full(job)) = tx.try_send(job) {
            let me = self.clone();
            tokio::spawn(async move {
                me.log(&job, 0, Err("dropped: the channel's queue is full".into()))
                    .await
            });
        }
    }

    async fn work(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        // This channel's client, made again if the timeout changes.
        let mut agent: Option<(Duration, ureq::Agent)> = None;
        while let Some(job) = rx.recv().await {
            self.deliver(&job, &mut agent).await;
        }
    }

    async fn config(&self, tenant: &str, channel_id: &str) -> Result<ChannelConfig, String> {
        let row: ChannelRow = self
            .store
            .channel(tenant, channel_id)
            .await
            .map_err(|e| format!("reading the channel: {e}"))?
            .ok_or("the channel was deleted")?;
        let plain = self
            .secrets
            .open(tenant, &seal_name(&row.id), &row.nonce, &row.sealed)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| format!("channel config: {e}"))
    }

    async fn deliver(&self, job: &Job, agent: &mut Option<(Duration, ureq::Agent)>) {
        let cfg = match self.config(&job.tenant, &job.channel_id).await {
            Ok(c) => c,
            Err(e) => return self.log(job, 1, Err(e)).await,
        };
        let t = *self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        let agent = match agent {
            Some((timeout, a)) if *timeout == t.timeout => a.clone(),
            _ => agent.insert((t.timeout, http_agent(t.timeout))).1.clone(),
        };
        for n in 1..=t.attempts.max(1) {
            let result = attempt(&cfg, &job.n, t, &agent).await;
            let ok = result.is_ok();
            if !ok && n == 1 {
                tracing::warn!(channel = %job.channel_id, "alert delivery failed: {}", result.as_ref().err().map_or("", |s| s));
            }
            self.log(job, n, result).await;
            if ok || n == t.attempts {
                return;
            }
            let mut r = [0u8; 1];
            let _ = getrandom::fill(&mut r);
            let jitter = 0.5 + f64::from(r[0]) / 255.0;
            let wait = t.backoff.mul_f64(f64::from(2u32.pow(n - 1)) * jitter);
            tokio::time::sleep(wait.min(Duration::from_secs(300))).await;
        }
    }

    async fn log(&self, job: &Job, attempt: u32, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let row = DeliveryRow {
            seq: 0,
            channel_id: job.channel_id.clone(),
            history_seq: job.n.history_seq,
            at_ms: clock::now_ms(),
            attempt: i64::from(attempt),
            ok,
            detail: clip(&detail),
        };
        if let Err(e) = self.store.delivery(&job.tenant, &row).await {
            tracing::error!("storing a delivery: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "100.64.0.1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn private_destinations_are_refused() {
        assert!(check_destination("127.0.0.1", 80, false).await.is_err());
        assert!(check_destination("localhost", 80, false).await.is_err());
        assert!(check_destination("[::1]", 80, false).await.is_err());
        assert!(check_destination("127.0.0.1", 80, true).await.is_ok());
    }

    #[test]
    fn configs_are_checked() {
        let ok: ChannelConfig = serde_json::from_str(
            r#"{"kind":"webhook","url":"https://example.com/h","secret":"k"}"#,
        )
        .unwrap();
        assert!(ok.check().is_ok());
        assert_eq!(ok.public()["host"], "example.com");
        assert!(!ok.public().to_string().contains("/h"));
        let bad: ChannelConfig =
            serde_json::from_str(r#"{"kind":"slack","url":"file:///etc/passwd"}"#).unwrap();
        assert!(bad.check().is_err());
        assert!(serde_json::from_str::<ChannelConfig>(
            r#"{"kind":"slack","url":"https://x","extra":1}"#
        )
        .is_err());
        let mail: ChannelConfig = serde_json::from_str(
            r#"{"kind":"email","host":"smtp.example.com","from":"Tether <t@example.com>","to":["ops@example.com"],"username":"u","password":"p"}"#,
        )
        .unwrap();
        assert!(mail.check().is_ok());
        assert!(!mail.public().to_string().contains("\"p\""));
        let no_to: ChannelConfig =
            serde_json::from_str(r#"{"kind":"email","host":"h","from":"a@b.c","to":[]}"#).unwrap();
        assert!(no_to.check().is_err());
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
