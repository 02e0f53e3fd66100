//! `POST/GET /v1/webhooks`, `GET/DELETE /v1/webhooks/{id}`,
//! `GET /v1/webhooks/{id}/deliveries`: alert subscribers.

use super::commands::body_object;
use super::error::{ApiError, Params, Problem, Segment, WebhookProblems};
use super::reads::{parameter_name, tenant_param};
use super::AppState;
use crate::api_keys::Grant;
use crate::webhooks::AddError;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use stockflow_dataflows::model::DEFAULT_TENANT;
use stockflow_sinks::webhooks::{
    check_kinds, check_secret, check_url, Networks, Url, Webhook, KINDS,
};
use utoipa::ToSchema;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
}

fn webhooks(state: &AppState) -> Result<&Arc<crate::webhooks::Webhooks>, ApiError> {
    state
        .webhooks
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("webhooks are off on this server"))
}

/// A webhook as shown: everything but the secret.
#[derive(Serialize, ToSchema)]
pub(super) struct Shown<'a> {
    /// When it was registered (RFC 3339).
    created_at: &'a str,
    /// Server-assigned id (`wh_<hex>`).
    id: &'a str,
    /// Only these alert kinds (`low_stock`, `out_of_stock`).
    kinds: &'a [String],
    /// Only alerts of this tenant are delivered.
    tenant: &'a str,
    /// Where deliveries are posted.
    url: &'a str,
}

fn shown(hook: &Webhook) -> Shown<'_> {
    Shown {
        created_at: &hook.created_at,
        id: &hook.id,
        kinds: &hook.kinds,
        tenant: &hook.tenant,
        url: &hook.url,
    }
}

/// The answer of `GET /v1/webhooks`.
#[derive(Serialize, ToSchema)]
pub(super) struct WebhookList<'a> {
    /// The tenant's webhooks.
    webhooks: Vec<Shown<'a>>,
}

/// The answer of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Serialize, ToSchema)]
pub(super) struct Deliveries {
    /// The latest deliveries, newest last.
    deliveries: Vec<DeliveryShown>,
    /// The webhook's id.
    webhook: String,
}

/// What happened to one alert event for one webhook.
#[derive(Serialize, ToSchema)]
pub(super) struct DeliveryShown {
    /// Attempts made.
    attempts: u32,
    /// `X-Stockflow-Delivery`.
    delivery_id: String,
    /// Why the last attempt failed, if it did.
    #[schema(required = true)]
    error: Option<String>,
    /// The alert event's id.
    event_id: String,
    /// The alert event's type.
    event_type: String,
    /// HTTP status of the last answer, if there was one.
    #[schema(required = true)]
    response_status: Option<u16>,
    /// `delivered` or `failed`.
    status: String,
}

impl From<stockflow_sinks::webhooks::Delivery> for DeliveryShown {
    fn from(delivery: stockflow_sinks::webhooks::Delivery) -> DeliveryShown {
        DeliveryShown {
            attempts: delivery.attempts,
            delivery_id: delivery.delivery_id,
            error: delivery.error,
            event_id: delivery.event_id,
            event_type: delivery.event_type,
            response_status: delivery.response_status,
            status: delivery.status,
        }
    }
}

/// `POST /v1/webhooks` with `{"url", "secret", "tenant"?, "kinds"?}`; the
/// tenant is the body's, else the `tenant` parameter's (a tenant key's own).
/// The URL must name a host that is not link-local nor a cloud metadata
/// service and that the operator's network lists allow; a tenant holds at
/// most `--webhooks-per-tenant` webhooks (409 past it).
#[utoipa::path(
    post,
    path = "/webhooks",
    tag = "webhooks",
    params(ListParams),
    request_body(description = "url, secret (signs every delivery), tenant, kinds", content(("application/json", example = json!({"url": "https://example.com/hooks/stock", "secret": "a-long-random-secret", "kinds": ["low_stock"]})))),
    responses(
        (status = 201, description = "Registered; `Location` names it", body = Shown, content_type = "application/json"),
        (status = 409, description = "The tenant holds as many webhooks as `--webhooks-per-tenant` allows", body = Problem, content_type = "application/problem+json"),
        WebhookProblems
    )
)]
pub(super) async fn register(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    Params(params): Params<ListParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hooks = webhooks(&state)?;
    let mut fields = super::body::values(body_object(&headers, &body, false)?);
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["url", "secret", "tenant", "kinds"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "body: unknown field `{unknown}` (fields: url, secret, tenant, kinds)"
        )));
    }
    let text = |fields: &mut serde_json::Map<String, Value>,
                name: &str|
     -> Result<Option<String>, ApiError> {
        match fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::bad_request(format!(
                "{name}: expected a string, got {other}"
            ))),
        }
    };
    let url = text(&mut fields, "url")?.ok_or_else(|| ApiError::bad_request("url: required"))?;
    let parsed = check_url(&url, &hooks.policy().networks)
        .map_err(|reason| ApiError::bad_request(format!("url: {reason}")))?;
    check_resolved(&url, &parsed, &hooks.policy().networks).await?;
    let secret = text(&mut fields, "secret")?
        .ok_or_else(|| ApiError::bad_request("secret: required (signs every delivery)"))?;
    check_secret(&secret).map_err(ApiError::bad_request)?;
    let named = text(&mut fields, "tenant")?;
    if let (Some(Extension(grant)), Some(named)) = (&grant, &named) {
        grant.allows_tenant(named).map_err(|reason| {
            state
                .metrics
                .auth_denied
                .with_label_values(&["tenant"])
                .inc();
            ApiError::forbidden(reason)
        })?;
    }
    if let (Some(body), Some(query)) = (&named, &params.tenant) {
        if body != query {
            return Err(ApiError::bad_request(format!(
                "tenant: the body names `{body}` and the query `{query}`; give one"
            )));
        }
    }
    let tenant = parameter_name(
        "tenant",
        &named
            .or(params.tenant)
            .unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
    )?;
    let kinds: Vec<String> = match fields.remove("kinds") {
        None | Some(Value::Null) => KINDS.iter().map(|k| k.to_string()).collect(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|k| match k {
                Value::String(s) => Ok(s),
                other => Err(ApiError::bad_request(format!(
                    "kinds: expected strings, got {other}"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kinds: expected a list, got {other}"
            )))
        }
    };
    check_kinds(&kinds).map_err(ApiError::bad_request)?;
    let hook = Webhook {
        id: format!("wh_{:024x}", rand::random::<u128>() >> 32),
        url,
        tenant: tenant.to_string(),
        kinds,
        secret,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let (hooks, registered) = (hooks.clone(), hook.clone());
    match tokio::task::spawn_blocking(move || hooks.add(registered))
        .await
        .map_err(ApiError::internal)?
    {
        Ok(()) => {}
        Err(cap @ AddError::Cap { .. }) => return Err(ApiError::conflict(cap.to_string())),
        Err(AddError::Other(error)) => return Err(ApiError::internal(format!("{error:#}"))),
    }
    let location = format!("/v1/webhooks/{}", hook.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(shown(&hook)),
    )
        .into_response())
}

/// How long a registration waits for the URL's host name to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A host name that resolves, now, only to addresses deliveries may not
/// reach is refused at once (a name that does not resolve yet is accepted:
/// every delivery checks the addresses it connects to anyway).
async fn check_resolved(url: &str, parsed: &Url, networks: &Networks) -> Result<(), ApiError> {
    let Some(name) = parsed.host_str().filter(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_err()
    }) else {
        return Ok(());
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let Ok(Ok(resolved)) =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await
    else {
        return Ok(());
    };
    let checks: Vec<_> = resolved
        .map(|address| networks.check(address.ip()))
        .collect();
    match checks.iter().find_map(|check| check.as_ref().err()) {
        Some(refusal) if checks.iter().all(Result::is_err) => Err(ApiError::bad_request(format!(
            "url: `{url}`: `{name}` resolves only to addresses webhooks may not reach ({refusal})"
        ))),
        _ => Ok(()),
    }
}

/// `GET /v1/webhooks?tenant=`
#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    params(ListParams),
    responses(
        (status = 200, description = "The tenant's webhooks (never their secrets)", body = WebhookList, content_type = "application/json"),
        WebhookProblems
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
) -> Result<Response, ApiError> {
    let tenant = tenant_param(params.tenant.as_deref())?;
    let hooks = webhooks(&state)?.list();
    let webhooks = hooks
        .iter()
        .filter(|h| h.tenant == tenant.as_str())
        .map(shown)
        .collect();
    Ok(Json(WebhookList { webhooks }).into_response())
}

fn find(state: &AppState, id: &str, tenant: Option<String>) -> Result<Webhook, ApiError> {
    let tenant = tenant_param(tenant.as_deref())?;
    webhooks(state)?
        .get(id)
        .filter(|h| h.tenant == tenant.as_str())
        .ok_or_else(|| ApiError::not_found(format!("no webhook `{id}` of tenant `{tenant}`")))
}

/// `GET /v1/webhooks/{id}`
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id"), ListParams),
    responses(
        (status = 200, description = "The webhook", body = Shown, content_type = "application/json"),
        (status = 404, description = "No such webhook in the tenant", body = Problem, content_type = "application/problem+json"),
        WebhookProblems
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Segment(id): Segment,
    Params(params): Params<ListParams>,
) -> Result<Response, ApiError> {
    Ok(Json(shown(&find(&state, &id, params.tenant)?)).into_response())
}

/// `DELETE /v1/webhooks/{id}`
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id"), ListParams),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook in the tenant", body = Problem, content_type = "application/problem+json"),
        WebhookProblems
    )
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    Segment(id): Segment,
    Params(params): Params<ListParams>,
) -> Result<StatusCode, ApiError> {
    let hook = find(&state, &id, params.tenant)?;
    let hooks = webhooks(&state)?.clone();
    tokio::task::spawn_blocking(move || hooks.remove(&hook.id))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/webhooks/{id}/deliveries`: the latest deliveries, newest last.
#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id"), ListParams),
    responses(
        (status = 200, description = "The latest deliveries, newest last", body = Deliveries, content_type = "application/json"),
        (status = 404, description = "No such webhook in the tenant", body = Problem, content_type = "application/problem+json"),
        WebhookProblems
    )
)]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    Segment(id): Segment,
    Params(params): Params<ListParams>,
) -> Result<Json<Deliveries>, ApiError> {
    let hook = find(&state, &id, params.tenant)?;
    Ok(Json(Deliveries {
        deliveries: webhooks(&state)?
            .deliveries(&hook.id)
            .into_iter()
            .map(DeliveryShown::from)
            .collect(),
        webhook: hook.id,
    }))
}
