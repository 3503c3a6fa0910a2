//! Single sign-on against a real OpenID Connect provider: node-oidc-provider
//! (`tests/oidc/provider.mjs`, pinned by its package-lock.json) on loopback,
//! the server on a real socket, and a small HTTP "browser" that follows
//! redirects, keeps cookies per host and posts the provider's login and
//! consent forms.
//!
//! Needs `node` and `npm ci` in `tests/oidc` (packaging/dev-setup.sh).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::util::*;
use tether_server::common::edge::EdgeConfig;
use tether_server::updates::ReleaseConfig;

const CLIENT_ID: &str = "tether-dashboard";
const CLIENT_SECRET: &str = "s3cret-not-in-any-answer";

/// The provider's process; ends when dropped (its stdin closes, and a kill).
struct Provider {
    child: Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(redirect: &str) -> Provider {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "tests/oidc/node_modules is missing: run packaging/dev-setup.sh (npm ci in tests/oidc)"
    );
    let port = free_port();
    let mut child = Command::new("node")
        .arg(dir.join("provider.mjs"))
        .args([&port.to_string(), redirect, CLIENT_ID, CLIENT_SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // The rest is drained: a closed pipe would kill the provider (EPIPE).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let issuer = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("provider did not start: {line:?}"))
        .to_owned();
    Provider { child, issuer }
}

/// A browser enough for the code flow: cookies per host:port (paths
/// ignored), no automatic redirects.
struct Browser {
    agent: ureq::Agent,
    jar: BTreeMap<(String, String), String>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

fn authority(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest.split('/').next().unwrap().to_owned()
}

fn origin(url: &str) -> String {
    let (scheme, _) = url.split_once("://").unwrap();
    format!("{scheme}://{}", authority(url))
}

impl Browser {
    fn new() -> Browser {
        let config = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build();
        Browser {
            agent: config.into(),
            jar: BTreeMap::new(),
        }
    }

    fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jar.get(&(authority(url), name.to_owned())).cloned()
    }

    fn set_cookie(&mut self, url: &str, name: &str, value: Option<String>) {
        let key = (authority(url), name.to_owned());
        match value {
            Some(v) => self.jar.insert(key, v),
            None => self.jar.remove(&key),
        };
    }

    fn request(&mut self, method: &str, url: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let host = authority(url);
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|((h, _), _)| *h == host)
            .map(|((_, n), v)| format!("{n}={v}"))
            .collect();
        let mut req = axum::http::Request::builder().method(method).uri(url);
        if !cookies.is_empty() {
            req = req.header("Cookie", cookies.join("; "));
        }
        let body = match form {
            Some(fields) => {
                req = req.header("Content-Type", "application/x-www-form-urlencoded");
                fields
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            }
            None => String::new(),
        };
        let res = self.agent.run(req.body(body).unwrap()).unwrap();
        for sc in res.headers().get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let first = sc.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            let gone = value.is_empty() || sc.contains("Max-Age=0") || sc.contains("max-age=0");
            self.set_cookie(url, name.trim(), (!gone).then(|| value.to_owned()));
        }
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        let body = res.into_body().read_to_string().unwrap_or_default();
        Answer {
            status,
            location,
            body,
        }
    }

    /// From the server's login link through the provider's forms to the
    /// moment the provider sends the browser to the callback: that URL.
    fn until_callback(&mut self, server: &str, tenant: &str, login: &str) -> String {
        let start = format!("{server}/api/v1/sso/login?tenant={tenant}&provider=corp");
        let a = self.request("GET", &start, None);
        assert_eq!(a.status, 303, "{}", a.body);
        let mut url = a.location.unwrap();
        for _ in 0..20 {
            if url.starts_with(server) {
                return url;
            }
            let a = self.request("GET", &url, None);
            let next = match (a.status, a.location) {
                (300..=399, Some(l)) => l,
                (200, _) => {
                    // The provider's login or consent form.
                    let action = between(&a.body, "action=\"", "\"");
                    let prompt = between(&a.body, "name=\"prompt\" value=\"", "\"");
                    let post = if action.starts_with("http") {
                        action.to_owned()
                    } else {
                        format!("{}{action}", origin(&url))
                    };
                    let fields: Vec<(&str, &str)> = if prompt == "login" {
                        vec![("prompt", "login"), ("login", login), ("password", "any")]
                    } else {
                        vec![("prompt", "consent")]
                    };
                    let p = self.request("POST", &post, Some(&fields));
                    assert!(
                        (300..400).contains(&p.status),
                        "{prompt} form: {} {}",
                        p.status,
                        p.body
                    );
                    p.location.unwrap()
                }
                (s, _) => panic!("provider answered {s} at {url}: {}", a.body),
            };
            url = if next.starts_with("http") {
                next
            } else {
                format!("{}{next}", origin(&url))
            };
        }
        panic!("no callback after 20 steps");
    }

    /// A whole sign-in: the callback's Location (`/` or `/#sso_error=…`).
    fn sign_in(&mut self, server: &str, tenant: &str, login: &str) -> String {
        let callback = self.until_callback(server, tenant, login);
        let a = self.request("GET", &callback, None);
        assert_eq!(a.status, 303, "{}", a.body);
        a.location.unwrap()
    }

    fn session(&mut self, server: &str) -> (u16, Value) {
        let a = self.request("GET", &format!("{server}/api/v1/session"), None);
        (
            a.status,
            serde_json::from_str(&a.body).unwrap_or(Value::Null),
        )
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in {s}"))
        + start.len();
    let len = s[from..].find(end).unwrap();
    &s[from..from + len]
}

/// Blocking browser work off the runtime that serves the server.
async fn browse<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_with_a_real_provider() {
    // The server on a socket whose URL it knows (the redirect URI's base).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = state()
        .with_releases(ReleaseConfig {
            public_url: Some(base.clone()),
            ..ReleaseConfig::default()
        })
        .with_edge(EdgeConfig {
            login_per_minute: 6000,
            ..EdgeConfig::default()
        });
    let router = app(state.clone());
    tokio::spawn(tether_server::app::serve::accept_loop(
        listener,
        None,
        router.clone(),
        state.edge.clone(),
        std::future::pending(),
    ));
    let redirect = format!("{base}/api/v1/sso/callback");
    let provider = start_provider(&redirect);

    let (tenant, api) = tenant(&router, "acme").await;
    let (status, _) = call(
        &router,
        "POST",
        &format!("/api/v1/tenants/{tenant}/users"),
        Some(ADMIN),
        Some(r#"{"name":"root","password":"local-password","role":"admin"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Bad configurations are refused and change nothing.
    for (body, what) in [
        (
            json!({"name": "x", "issuer": "http://id.example", "client_id": "c", "client_secret": "s", "default_role": "viewer"}),
            "issuer",
        ),
        (
            json!({"name": "bad name", "issuer": provider.issuer, "client_id": "c", "client_secret": "s", "default_role": "viewer"}),
            "provider name",
        ),
        (
            json!({"name": "x", "issuer": provider.issuer, "client_id": "c", "client_secret": "s"}),
            "role_map",
        ),
        (
            json!({"name": "x", "issuer": provider.issuer, "client_id": "c", "client_secret": "s", "role_map": {"g": "root"}}),
            "role",
        ),
        (
            json!({"name": "x", "issuer": provider.issuer, "client_id": "c", "client_secret": "s".repeat(600), "default_role": "viewer"}),
            "client_secret",
        ),
    ] {
        let got = call(
            &router,
            "POST",
            "/api/v1/sso/providers",
            Some(&api),
            Some(&body.to_string()),
        )
        .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            got.1["error"]["message"].as_str().unwrap().contains(what),
            "{}",
            got.1
        );
    }
    // Password login cannot be switched off before a provider exists.
    let got = call(
        &router,
        "PUT",
        "/api/v1/sso/password-login",
        Some(&api),
        Some(r#"{"password_login":false}"#),
    )
    .await;
    assert_eq!(got.0, StatusCode::CONFLICT, "{}", got.1);

    let body = json!({
        "name": "corp",
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "role_claim": "groups",
        "role_map": {"tether-admins": "admin", "tether-ops": "operator"},
    });
    let (status, v) = call(
        &router,
        "POST",
        "/api/v1/sso/providers",
        Some(&api),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["redirect_uri"], redirect.as_str());
    let (_, listed) = call(&router, "GET", "/api/v1/sso/providers", Some(&api), None).await;
    assert!(!listed.to_string().contains(CLIENT_SECRET), "{listed}");
    let (_, options) = call(
        &router,
        "GET",
        "/api/v1/sso/options?tenant=acme",
        None,
        None,
    )
    .await;
    assert_eq!(
        options,
        json!({"password_login": true, "providers": ["corp"]})
    );

    // Login with role mapping: alice's groups map to admin, bob's to operator.
    let b = base.clone();
    let (alice, after) = browse(move || {
        let mut alice = Browser::new();
        let to = alice.sign_in(&b, "acme", "alice");
        (alice, to)
    })
    .await;
    assert_eq!(after, "/");
    let b = base.clone();
    let (mut alice, (status, me)) = browse(move || {
        let mut alice = alice;
        let s = alice.session(&b);
        (alice, s)
    })
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["name"], "alice");
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["tenant"], "acme");
    assert!(
        alice.cookie(&base, "tether_sso").is_none(),
        "the flow cookie is cleared"
    );

    let b = base.clone();
    let (bob_to, bob_me) = browse(move || {
        let mut bob = Browser::new();
        let to = bob.sign_in(&b, "acme", "bob");
        (to, bob.session(&b))
    })
    .await;
    assert_eq!(bob_to, "/");
    assert_eq!(bob_me.1["user"]["role"], "operator", "{}", bob_me.1);

    // A user without the role claim (and no default role): refused, not made.
    let b = base.clone();
    let (carol_to, carol_me) = browse(move || {
        let mut carol = Browser::new();
        let to = carol.sign_in(&b, "acme", "carol");
        (to, carol.session(&b))
    })
    .await;
    assert!(carol_to.starts_with("/#sso_error=no_role"), "{carol_to}");
    assert_eq!(carol_me.0, 401);
    // A provider user named like an existing local user never becomes it.
    let b = base.clone();
    let (root_to, root_me) = browse(move || {
        let mut r = Browser::new();
        let to = r.sign_in(&b, "acme", "root");
        (to, r.session(&b))
    })
    .await;
    assert!(root_to.starts_with("/#sso_error=name_taken"), "{root_to}");
    assert_eq!(root_me.0, 401);
    let (_, users) = call(&router, "GET", "/api/v1/users", Some(&api), None).await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "root"], "{users}");

    // Attacks on the callback: a forged state, a replay, no flow cookie.
    let b = base.clone();
    let (forged, replayed, cookieless) = browse(move || {
        let mut m = Browser::new();
        let callback = m.until_callback(&b, "acme", "bob");
        let (head, _) = callback.split_once("state=").unwrap();
        let tail = callback.split_once("state=").unwrap().1;
        let rest = tail
            .split_once('&')
            .map(|(_, r)| format!("&{r}"))
            .unwrap_or_default();
        let forged = m
            .request("GET", &format!("{head}state=forged{rest}"), None)
            .location
            .unwrap();
        // A fresh flow, completed, then the same callback again with the same cookie.
        let callback = m.until_callback(&b, "acme", "bob");
        let flow = m.cookie(&b, "tether_sso").unwrap();
        let ok = m.request("GET", &callback, None).location.unwrap();
        assert_eq!(ok, "/");
        m.set_cookie(&b, "tether_sso", Some(flow));
        let replayed = m.request("GET", &callback, None).location.unwrap();
        let mut stranger = Browser::new();
        let cookieless = stranger.request("GET", &callback, None).location.unwrap();
        (forged, replayed, cookieless)
    })
    .await;
    assert!(forged.starts_with("/#sso_error=state_mismatch"), "{forged}");
    assert!(replayed.starts_with("/#sso_error=replayed"), "{replayed}");
    assert!(
        cookieless.starts_with("/#sso_error=no_flow"),
        "{cookieless}"
    );

    // Logout ends alice's session.
    let b = base.clone();
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();
    let (logout, after) = browse(move || {
        let host = authority(&b);
        let cookie = format!(
            "tether_session={}",
            alice.cookie(&b, "tether_session").unwrap()
        );
        let req = axum::http::Request::builder()
            .method("DELETE")
            .uri(format!("{b}/api/v1/session"))
            .header("Cookie", cookie)
            .header("X-CSRF-Token", csrf)
            .header("Origin", format!("http://{host}"))
            .body(String::new())
            .unwrap();
        let status = alice.agent.run(req).unwrap().status().as_u16();
        (status, alice.session(&b).0)
    })
    .await;
    assert_eq!(logout, 204);
    assert_eq!(after, 401);

    // Local password login, then switched off: refused with a clear error,
    // and the password session made before ends.
    let b = base.clone();
    let (login, root_before) = browse(move || {
        let mut r = Browser::new();
        let req = axum::http::Request::builder()
            .method("POST")
            .uri(format!("{b}/api/v1/session"))
            .header("Content-Type", "application/json")
            .body(r#"{"tenant":"acme","name":"root","password":"local-password"}"#.to_owned())
            .unwrap();
        let res = r.agent.run(req).unwrap();
        let sc = res
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let v = sc
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        r.set_cookie(&b, "tether_session", Some(v));
        (res.status().as_u16(), r)
    })
    .await;
    assert_eq!(login, 200);
    let got = call(
        &router,
        "PUT",
        "/api/v1/sso/password-login",
        Some(&api),
        Some(r#"{"password_login":false}"#),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let (_, options) = call(
        &router,
        "GET",
        "/api/v1/sso/options?tenant=acme",
        None,
        None,
    )
    .await;
    assert_eq!(options["password_login"], false);
    let got = call(
        &router,
        "POST",
        "/api/v1/session",
        None,
        Some(r#"{"tenant":"acme","name":"root","password":"local-password"}"#),
    )
    .await;
    assert_error(&got, StatusCode::FORBIDDEN, "password_login_disabled");
    assert!(got.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("single sign-on"));
    let b = base.clone();
    let (ended, sso_still) = browse(move || {
        let mut root_before = root_before;
        let ended = root_before.session(&b).0;
        let mut bob = Browser::new();
        let to = bob.sign_in(&b, "acme", "bob");
        (ended, (to, bob.session(&b).0))
    })
    .await;
    assert_eq!(
        ended, 401,
        "a password session ends when password login is switched off"
    );
    assert_eq!(sso_still, ("/".to_owned(), 200));

    // The trail has the sign-ins, accepted and refused, by name.
    let (status, trail) = call(
        &router,
        "GET",
        "/api/v1/audit?action=sso%20login&limit=100",
        Some(&api),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let text = trail.to_string();
    let entries = trail
        .as_array()
        .or_else(|| trail["entries"].as_array())
        .unwrap_or_else(|| panic!("{trail}"));
    let find = |label: &str, result: u64| {
        entries
            .iter()
            .any(|e| e["actor_label"] == label && e["result"] == result)
    };
    assert!(find("alice", 200), "{text}");
    assert!(find("carol", 403), "{text}");
    assert!(
        entries.iter().any(|e| e["detail"] == "state_mismatch"),
        "{text}"
    );
    assert!(!text.contains(CLIENT_SECRET));
    // The admin token sees every tenant's trail, and the refused password
    // login (nobody authenticated: no tenant) too.
    let (_, trail) = call(&router, "GET", "/api/v1/audit?limit=200", Some(ADMIN), None).await;
    let text = trail.to_string();
    assert!(
        !text.contains(CLIENT_SECRET),
        "the secret is redacted from the trail"
    );
    assert!(text.contains("password_login_disabled"), "{text}");

    drop(provider);
}
