//! What handlers parse requests with: JSON bodies and query strings whose
//! errors are our JSON 400 (axum's own answer in plain text), sizes (`64M`,
//! also the serve flags'), container references, an operator's signature
//! given as flat parameters; and the server's version as every answer that
//! names it says it.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Query, Request};
use serde::de::DeserializeOwned;

use crate::common::error::ApiError;

/// Longest container id or name (Docker allows more in theory; no real name
/// comes close, and a bound keeps logs and requests small).
pub const MAX_CONTAINER_REF: usize = 128;

/// This server's version (`/healthz`, the runner's `welcome`).
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An operator's signature given as three flat parameters (a query string
/// or a flat JSON body: terminals, container operations): all or none,
/// bounded. Relayed as it came; the runner checks it.
pub fn signed_param(
    action_id: Option<String>,
    not_after_ms: Option<u64>,
    signature: Option<String>,
) -> Result<Option<tether::protocol::signed::Signed>, ApiError> {
    use tether::protocol::signed::{Signed, MAX_ACTION_ID, MAX_SIGNATURE};
    match (action_id, not_after_ms, signature) {
        (None, None, None) => Ok(None),
        (Some(action_id), Some(not_after_ms), Some(signature))
            if !action_id.is_empty()
                && action_id.len() <= MAX_ACTION_ID
                && signature.len() <= MAX_SIGNATURE =>
        {
            Ok(Some(Signed {
                action_id,
                not_after_ms,
                signature,
            }))
        }
        _ => Err(ApiError::bad_request(format!(
            "a signature is action_id (1 to {MAX_ACTION_ID} bytes), not_after_ms and \
             signature (at most {MAX_SIGNATURE} bytes), all three"
        ))),
    }
}

/// Query-string parameters, with axum's rejection turned into our JSON 400.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// A JSON request body. Malformed JSON is a `bad_request` JSON error (axum's
/// own `Json` answers in plain text), and any content type is accepted so
/// `curl -d` works.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// `512K`, `64M`, `1G` or plain bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1024 * 1024),
        Some((i, 'G' | 'g')) => (&s[..i], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {s:?}: use bytes or a K, M or G suffix (64M)"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if bytes < 64 * 1024 {
        return Err(format!("size {s:?} is smaller than 64K"));
    }
    Ok(bytes)
}

/// Docker's charset for names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), which ids
/// (hex) also satisfy.
pub fn valid_container_ref(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= MAX_CONTAINER_REF
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
