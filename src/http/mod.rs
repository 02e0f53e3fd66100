//! The HTTP API (axum): reads of the published views, commands (the write
//! path), health, readiness and metrics. [`app`] builds the router so tests can serve it on any listener.
//!
//! Every read names its tenant (`tenant`, default `default`), answers the
//! `as_of` it reflects, and accepts `after` (read-your-writes tokens) with
//! `wait_ms`. Errors are problem+json ([`error::ApiError`]).

mod commands;
pub mod error;
mod reads;

use crate::metrics::Metrics;
use crate::store::Store;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::Instant;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The published views.
    pub store: Arc<Store>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Where commands go; `None`: the write path is off (405 on commands).
    pub commands: Option<CommandWriter>,
}

/// Appends commands to the commands topic.
#[derive(Clone)]
pub struct CommandWriter {
    /// The log or Kafka.
    pub appender: Arc<dyn crate::source::Appender>,
    /// `inventory.commands`.
    pub topic: String,
}

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The whole API as a router.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/items", get(reads::list_items).post(commands::create_item))
        .route("/items/{sku}", get(reads::get_item).patch(commands::update_item).delete(commands::delete_item))
        .route("/stock", get(reads::list_stock))
        .route("/stock/{sku}", get(reads::get_stock))
        .route("/stock/{sku}/adjust", post(commands::adjust))
        .route("/stock/{sku}/reserve", post(commands::reserve))
        .route("/stock/{sku}/release", post(commands::release))
        .route("/stock/{sku}/commit", post(commands::commit))
        .route("/commands/{id}", get(commands::outcome))
        .route("/views", get(reads::views));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1 (see docs/api.md)") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` fires.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: crate::shutdown::Shutdown) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(async move { shutdown.wait().await }).await
}

/// Counts requests and observes latency by route template and status.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state.metrics.http_requests.with_label_values(&[route.as_str(), method.as_str(), status.as_str()]).inc();
    state.metrics.http_latency.with_label_values(&[route.as_str(), status.as_str()]).observe(start.elapsed().as_secs_f64());
    response
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store.readiness().map_err(ApiError::unavailable)?;
    Ok(axum::Json(serde_json::json!({"ready": true, "as_of": state.store.snapshot().as_of})))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
