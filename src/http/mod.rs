//! The HTTP API (axum): reads of the published views, commands (the write
//! path), health, readiness and metrics. [`app`] builds the router so tests can serve it on any listener.
//!
//! Every read names its tenant (`tenant`, default `default`), answers the
//! `as_of` it reflects, and accepts `after` (read-your-writes tokens) with
//! `wait_ms`. Errors are problem+json ([`error::ApiError`]).

pub mod auth;
mod body;
mod commands;
mod conn;
mod dashboard;
pub mod error;
mod kpis;
mod live;
mod reads;
mod webhooks;

pub use conn::raise_open_files_limit;

use crate::metrics::Metrics;
use crate::store::Store;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The published views.
    pub store: Arc<Store>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Where commands go; `None`: the write path is off (405 on commands).
    pub commands: Option<CommandWriter>,
    /// Alert subscribers; `None`: webhooks are off.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// Fires when the server stops: open change streams end.
    pub shutdown: crate::shutdown::Shutdown,
    /// Names of the custom KPIs (`GET /v1/kpis` accepts them as `metric`).
    pub kpi_metrics: Arc<[stockflow_dataflows::model::Name]>,
    /// API keys and rate limits; `None`: auth is off.
    pub auth: Option<Arc<auth::Auth>>,
    /// Longest a handler may run before a 503.
    pub request_timeout: Duration,
}

/// Appends commands to the commands topic, in groups: a thread of its own
/// takes every command waiting and appends them in one batch (one lock and
/// one write on the embedded log, one round of acknowledgements on Kafka),
/// then answers each request. Under load the batches grow; alone, a command
/// waits for nobody.
#[derive(Clone)]
pub struct CommandWriter {
    to_thread: std::sync::mpsc::Sender<PendingAppend>,
    /// `inventory.commands`.
    pub topic: String,
}

/// A command waiting for its append: key, payload, where to answer.
type PendingAppend = (
    Vec<u8>,
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<(u32, u64), AppendFailed>>,
);

/// Why a command was not appended, and whether it may have been after all.
#[derive(Clone, Debug)]
pub struct AppendFailed {
    /// The error.
    pub detail: String,
    /// True when the record may still have been written (a Kafka delivery
    /// that failed or timed out; a failed append the log could not undo);
    /// false when it certainly was not.
    pub unknown: bool,
}

/// Most commands appended in one batch.
const MAX_APPEND_BATCH: usize = 4096;

impl CommandWriter {
    /// Starts the appending thread; it stops when the last writer is dropped.
    pub fn start(
        appender: Arc<dyn crate::source::Appender>,
        topic: String,
    ) -> std::io::Result<CommandWriter> {
        let (to_thread, from_handlers) = std::sync::mpsc::channel::<PendingAppend>();
        let thread_topic = topic.clone();
        std::thread::Builder::new()
            .name("stockflow-commands".into())
            .spawn(move || {
                while let Ok(first) = from_handlers.recv() {
                    let mut batch = vec![first];
                    batch.extend(from_handlers.try_iter().take(MAX_APPEND_BATCH - 1));
                    let mut outbox = crate::source::Outbox::new(appender.clone());
                    let mut replies = Vec::with_capacity(batch.len());
                    for (key, payload, reply) in batch {
                        outbox.push(&thread_topic, crate::source::Outgoing::new(key, payload));
                        replies.push(reply);
                    }
                    // One attempt: the request is waiting, and its answer says what happened.
                    let certain = appender.failures_are_certain();
                    let failed = |detail: String| AppendFailed {
                        unknown: !certain || crate::source::outcome_unknown(&detail),
                        detail,
                    };
                    let landings: Vec<Result<(u32, u64), AppendFailed>> = match outbox.settle(
                        crate::source::outbox::Patience::Once,
                        &crate::source::outbox::LogOnly,
                    ) {
                        Ok(landings) => landings
                            .into_iter()
                            .map(|landing| landing.map_err(failed))
                            .collect(),
                        // Not acknowledged in time: written or not, nobody knows yet.
                        Err(error) => vec![
                            Err(AppendFailed {
                                detail: error.to_string(),
                                unknown: true
                            });
                            replies.len()
                        ],
                    };
                    for (reply, landing) in replies.into_iter().zip(landings) {
                        let _ = reply.send(landing);
                    }
                }
            })?;
        Ok(CommandWriter { to_thread, topic })
    }

    /// Appends one command; answers its `(partition, offset)` once durable.
    pub async fn append(&self, key: Vec<u8>, payload: Vec<u8>) -> Result<(u32, u64), AppendFailed> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = |unknown| AppendFailed {
            detail: "the command writer has stopped".into(),
            unknown,
        };
        self.to_thread
            .send((key, payload, reply))
            .map_err(|_| stopped(false))?;
        answer.await.map_err(|_| stopped(true))?
    }
}

/// The request id header, read from the client and always answered.
const REQUEST_ID: &str = "x-request-id";

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The OpenAPI document's frame; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "stockflow", description = "Live stock, alerts and KPIs over Kafka or the embedded log. Every error is application/problem+json."),
    components(schemas(error::Problem)),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    tags(
        (name = "reads", description = "The published views"),
        (name = "commands", description = "The write path: each command is appended, then decided by the sku's single writer"),
        (name = "live", description = "Alerts and change streams"),
        (name = "kpis", description = "KPIs by hour and day"),
        (name = "webhooks", description = "Alert subscribers (admin keys)"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

/// `Authorization: Bearer <key>`, required on `/v1` when keys are configured.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key (`KEY` of `KEY:TENANT:RIGHT`); see docs/security.md",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// The routes and their OpenAPI document, both built from the handlers'
/// `#[utoipa::path]` annotations: a route cannot be served undocumented.
fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::{router::OpenApiRouter, routes};
    let v1 = OpenApiRouter::new()
        .routes(routes!(reads::list_items, commands::create_item))
        .routes(routes!(
            reads::get_item,
            commands::update_item,
            commands::delete_item
        ))
        .routes(routes!(reads::list_stock))
        .routes(routes!(reads::get_stock))
        .routes(routes!(commands::stock_command))
        .routes(routes!(commands::outcome))
        .routes(routes!(commands::place_order))
        .routes(routes!(commands::order))
        .routes(routes!(reads::views))
        .routes(routes!(live::view_changes))
        .routes(routes!(live::list_alerts))
        .routes(routes!(live::alert_stream))
        .routes(routes!(live::replenishment))
        .routes(routes!(kpis::list_kpis))
        .routes(routes!(kpis::top_skus))
        .routes(routes!(webhooks::list, webhooks::register))
        .routes(routes!(webhooks::get, webhooks::delete))
        .routes(routes!(webhooks::deliveries));
    let v1 = match &state.auth {
        Some(auth) => v1.route_layer(axum::middleware::from_fn_with_state(
            (auth.clone(), state.metrics.clone()),
            auth::authorize,
        )),
        None => v1,
    };
    let (router, mut document) =
        OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
            .nest("/v1", v1)
            .routes(routes!(health))
            .routes(routes!(ready))
            .routes(routes!(metrics))
            .routes(routes!(openapi))
            .split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    (router, document)
}

/// The OpenAPI document served at `/openapi.json` (rendered once).
#[derive(Clone)]
struct OpenApiJson(axum::body::Bytes);

/// The whole API as a router.
pub fn app(state: AppState) -> Router {
    let (router, document) = routes(&state);
    let document = OpenApiJson(
        document
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
            .into(),
    );
    let router = router
        .route("/", get(dashboard::page))
        .route("/dashboard/{asset}", get(dashboard::asset))
        .fallback(|| async {
            ApiError::not_found("no such route; the API lives under /v1 (see docs/api.md)")
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    every_request(router, &state)
        .layer(axum::Extension(document))
        .with_state(state)
}

/// Serves `app` on `listener` under `limits` until `shutdown` fires (see
/// [`conn::serve`]): even a request hyper refuses before routing (a URI
/// over 64 KiB, over 100 headers) is answered with a problem and a request
/// id.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: crate::settings::Limits,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let metrics = state.metrics.clone();
    conn::serve(listener, app(state), limits, metrics, shutdown).await
}

/// What every request goes through, outermost first: a request id (the
/// client's `X-Request-Id` when it is a sane one, else a new one, answered
/// back); a span carrying it over every log line written while answering;
/// [`track`]; and the handler's deadline, `--request-timeout`.
fn every_request<S>(router: Router<S>, state: &AppState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let request_id = header::HeaderName::from_static(REQUEST_ID);
    // The last layer added is the outermost.
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_answer)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(request_id, NewRequestId))
        .layer(axum::middleware::map_request(drop_unsafe_request_id))
}

/// Removes a client's `X-Request-Id` that is not 1 to 64 characters of
/// letters, digits and `-_.:`, so that a new one replaces it: an id goes
/// into every log line of the request.
async fn drop_unsafe_request_id(mut request: Request) -> Request {
    let sane = |id: &header::HeaderValue| {
        (1..=64).contains(&id.len())
            && id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    if request
        .headers()
        .get(REQUEST_ID)
        .is_some_and(|id| !sane(id))
    {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// New request ids: `req_` and 16 random hex digits.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("req_{:016x}", rand::random::<u64>());
        Some(RequestId::new(header::HeaderValue::from_str(&id).ok()?))
    }
}

/// The span of a request: its id, method and path.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
}

/// The last log line of a request (at debug): its status and latency.
fn log_answer<B>(response: &Response<B>, latency: Duration, _: &tracing::Span) {
    tracing::debug!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1e3,
        "answered"
    );
}

/// Counts every request and its latency by route template and status, and
/// answers every error as a problem: the deadline's bare 503 (and the
/// `stockflow_http_timeouts_total` count), an extractor's plain-text
/// rejection.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let mut response = next.run(request).await;
    let problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t == "application/problem+json");
    if response.status() == StatusCode::SERVICE_UNAVAILABLE && !problem {
        // Every 503 of a handler is a problem: a bare one is the deadline's.
        state
            .metrics
            .http_timeouts
            .with_label_values(&[route.as_str()])
            .inc();
        tracing::warn!(
            timeout_s = state.request_timeout.as_secs(),
            "the handler ran past the request timeout"
        );
        response = ApiError::unavailable(format!(
            "the request took longer than {} s, the server's --request-timeout",
            state.request_timeout.as_secs()
        ))
        .into_response();
    } else if response.status().as_u16() >= 400 && !problem {
        // An extractor's rejection (e.g. the body limit) is plain text: answer a problem like every other error.
        let status = response.status();
        let text = axum::body::to_bytes(std::mem::take(response.body_mut()), 64 * 1024)
            .await
            .unwrap_or_default();
        response =
            ApiError::from_rejection(status, String::from_utf8_lossy(&text).trim()).into_response();
    }
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), method, status.as_str()])
        .inc();
    state
        .metrics
        .http_latency
        .with_label_values(&[route.as_str(), status.as_str()])
        .observe(start.elapsed().as_secs_f64());
    response
}

/// The `method` label of a request: one of the methods HTTP defines, else
/// `other`. Labels come from a closed set: a label per made-up method would
/// be a metric series kept forever, for any client to add.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Alive: answers as long as the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Health)))]
async fn health() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

/// The answer of `GET /health`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
}

/// The answer of `GET /ready` when ready.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Readiness {
    /// What the views reflect.
    as_of: crate::rows::AsOf,
    /// `true`.
    ready: bool,
    /// What each sink is doing, by sink name (reported, not waited for).
    sinks: std::collections::BTreeMap<&'static str, String>,
}

/// The OpenAPI document's schema, as far as `/openapi.json` promises it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documentation only: the handler answers the rendered document.
struct OpenApiDocument {
    /// `3.1.0`.
    openapi: String,
    /// Title, description, version.
    info: utoipa::openapi::Object,
    /// Every route, by path.
    paths: utoipa::openapi::Object,
    /// The schemas the answers name, and the security schemes.
    components: Option<utoipa::openapi::Object>,
}

/// Ready: caught up with the sources; says what is not ready otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "`{ready, as_of, sinks}`: the sinks' states are reported, not waited for", body = Readiness),
        (status = 503, description = "Not ready: the detail says why (catching up, restoring a checkpoint, waiting for Kafka)", body = error::Problem, content_type = "application/problem+json")
    )
)]
async fn ready(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store.readiness().map_err(ApiError::unavailable)?;
    // Sinks are reported, not waited for: the views serve reads whatever ClickHouse does.
    Ok(axum::Json(Readiness {
        as_of: state.store.snapshot().as_of.clone(),
        ready: true,
        sinks: state.store.status.sink_states(),
    }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, description = "Every metric (docs/operations.md)", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This document: every route of the API, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()), responses((status = 200, description = "The OpenAPI 3.1 document", body = OpenApiDocument)))]
async fn openapi(
    axum::Extension(OpenApiJson(document)): axum::Extension<OpenApiJson>,
) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document)
}
