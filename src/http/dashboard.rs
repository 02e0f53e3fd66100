//! The live dashboard: `GET /` and its assets under `/dashboard/`, embedded
//! in the binary (no build step, nothing fetched from elsewhere at run time).
//!
//! The page reads the API as any client would: the `stock`, `low_stock` and
//! `kpis` change streams and `GET /v1/alerts/stream` as NDJSON over `fetch`
//! (so that it can send `Authorization`, which `EventSource` cannot),
//! `GET /v1/kpis` for the gauges and `GET /metrics` for ingestion rate and
//! lag. The assets live in `dashboard/`: `index.html`, `app.js`, `app.css`.

use super::error::{ApiError, Segment};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const FAVICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// Only this origin's scripts, styles, images and connections; no inline
/// script or style, no framing, no forms posted anywhere.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
pub(super) async fn page() -> Response {
    embedded("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/{asset}`: the page's script, style and icon.
pub(super) async fn asset(Segment(name): Segment) -> Result<Response, ApiError> {
    let (content_type, body) = match name.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "favicon.svg" => ("image/svg+xml", FAVICON_SVG),
        _ => return Err(ApiError::not_found(format!("no dashboard asset `{name}`"))),
    };
    Ok(embedded(content_type, body))
}

/// An embedded file with its type; `no-cache`: a browser revalidates, so a
/// new binary's page is never mixed with an old script.
fn embedded(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
