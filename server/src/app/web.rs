//! The dashboard's static files, embedded at build time (`build.rs`).
//!
//! `GET /` is the page; `GET /ui/{path}` its modules, styles and the
//! third-party libraries that `web/build.sh` copied from npm. Everything the
//! page shows comes from the REST API with the session cookie (`users/mod.rs`),
//! so nothing here knows about tenants or users.
//!
//! When the libraries were not built (a plain `cargo build` on a machine
//! without npm), `/ui/vendor/...` answers 404 and the page says "run make
//! web" where a chart would be; the rest of the dashboard works.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};

use crate::common::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Only our own origin; styles may be inline because the chart library sets
/// element styles. No inline script at all; WebAssembly compiled from our
/// own scripts may run (`wasm-unsafe-eval`: the recording player's
/// terminal emulator is WebAssembly; it allows no JavaScript `eval`).
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
                   style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

fn serve(path: &str) -> Response {
    match asset(path) {
        Some(body) => (
            [
                (CONTENT_TYPE, content_type(path)),
                // Assets change with the binary; revalidating is cheap on loopback
                // and avoids a stale page after an upgrade.
                (CACHE_CONTROL, "no-cache"),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (X_FRAME_OPTIONS, "DENY"),
                (CONTENT_SECURITY_POLICY, CSP),
            ],
            body,
        )
            .into_response(),
        None if path.starts_with("vendor/") => ApiError::not_found(format!(
            "dashboard library {path} was not built into this server: run `make web` and rebuild"
        ))
        .into_response(),
        None => ApiError::not_found(format!("no dashboard file {path}")).into_response(),
    }
}

/// The dashboard: its page and its files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/ui/{*path}", axum::routing::get(file))
}

/// `GET /`
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{*path}`
pub async fn file(Path(path): Path<String>) -> Response {
    serve(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_modules_are_embedded() {
        let index = std::str::from_utf8(asset("index.html").unwrap()).unwrap();
        assert!(index.contains("/ui/app.js"), "index loads the app module");
        assert!(asset("app.js").is_some());
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x/y.css"), "text/css; charset=utf-8");
        assert!(asset("../Cargo.toml").is_none());
    }
}
