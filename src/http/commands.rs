//! The write path over HTTP: each command endpoint checks its body, appends
//! one command to `inventory.commands` and answers `202 Accepted` with the
//! command id and a read-your-writes `token`; `GET /v1/commands/{id}` answers
//! the outcome.
//! Long because every command endpoint shares one submit path (validation, idempotency, fingerprint, derived ids).
//!
//! Bodies are checked twice, for precise answers: first their shape here
//! (JSON object, known fields only, size, content type), then every field
//! rule by [`decode_command`], the same decoder the engine applies to the
//! commands topic, so a command accepted here is never a dead letter there.

use super::body::{self, Fields};
use super::error::{ApiError, CommandProblems, Params, Problem, ReadProblems};
use super::reads::{consistent_read, tenant_param};
use super::AppState;
use crate::store::Claim;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stockflow_dataflows::model::command::Command;
use stockflow_dataflows::model::command::MAX_COMMAND_ID_LEN;
use stockflow_dataflows::model::decode::{validate_id, validate_name};
use stockflow_dataflows::model::{decode_command, encode_event, EventBody, Name, RecordContext};
use utoipa::ToSchema;

/// Largest command body accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// `?tenant=` of a command.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
}

/// `?tenant=&after=&wait_ms=` of `GET /v1/commands/{id}`.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OutcomeParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
    /// Read-your-writes: a command's `token` (or `topic:partition:offset`, comma separated); the read waits until the views reflect it.
    after: Option<String>,
    /// How long to wait for `after`, in ms (default 2000, at most 30000); 504 past it.
    wait_ms: Option<u64>,
}

/// The answer to a command: `202 Accepted`, appended (not yet decided).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The command id (the Idempotency-Key, when given).
    pub command_id: String,
    /// The order id (`POST /v1/orders`), given or derived from the command id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The reservation id (`reserve`), given or derived from the command id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    /// Where the outcome is read: `GET /v1/commands/{id}?tenant=`.
    pub status_url: String,
    /// Read-your-writes: pass as `after` to a read (`topic:partition:offset`).
    pub token: String,
}

/// The answer of `GET /v1/commands/{id}`: `pending` (with a token), `accepted`
/// (with its events) or `rejected` (with the reason).
#[derive(Serialize, ToSchema)]
pub struct Outcome<'a> {
    /// What the views reflect.
    pub as_of: &'a crate::rows::AsOf,
    /// The command id.
    pub command_id: &'a str,
    /// The events the command caused, as the events topic carries them (`accepted` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::rows::EventSchema>>)]
    pub events: Option<Vec<Value>>,
    /// Why it was rejected (`rejected` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `pending`, `accepted` or `rejected`.
    pub status: &'static str,
    /// The tenant.
    pub tenant: &'a str,
    /// Where the command was appended (`pending` only): pass as `after` to wait for its outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The answer of `GET /v1/orders/{id}`: the order's row and what the views reflect.
#[derive(Serialize, ToSchema)]
pub struct OrderAnswer<'a> {
    /// What the views reflect.
    pub as_of: &'a crate::rows::AsOf,
    /// The order.
    #[serde(flatten)]
    pub order: crate::rows::Order<'a>,
}

/// One command endpoint: its command type and the body fields it takes.
struct Endpoint {
    command: &'static str,
    fields: &'static [&'static str],
    /// Fields that must be present (besides those the decoder requires).
    at_least_one_of: &'static [&'static str],
}

const CREATE_ITEM: Endpoint = Endpoint {
    command: "item.create",
    fields: &[
        "command_id",
        "sku",
        "name",
        "price",
        "category",
        "reorder_point",
        "target_level",
        "stock",
    ],
    at_least_one_of: &[],
};
const UPDATE_ITEM: Endpoint = Endpoint {
    command: "item.update",
    fields: &[
        "command_id",
        "name",
        "price",
        "category",
        "reorder_point",
        "target_level",
        "expected_version",
    ],
    at_least_one_of: &["name", "price", "category", "reorder_point", "target_level"],
};
const DELETE_ITEM: Endpoint = Endpoint {
    command: "item.delete",
    fields: &["command_id", "expected_version"],
    at_least_one_of: &[],
};
const ADJUST: Endpoint = Endpoint {
    command: "stock.adjust",
    fields: &[
        "command_id",
        "location",
        "qty",
        "reason",
        "expected_version",
    ],
    at_least_one_of: &[],
};
const RESERVE: Endpoint = Endpoint {
    command: "stock.reserve",
    fields: &[
        "command_id",
        "location",
        "qty",
        "reservation_id",
        "order_id",
        "expected_version",
    ],
    at_least_one_of: &[],
};
const RELEASE: Endpoint = Endpoint {
    command: "stock.release",
    fields: &["command_id", "reservation_id", "expected_version"],
    at_least_one_of: &[],
};
const PLACE_ORDER: Endpoint = Endpoint {
    command: "order.place",
    fields: &["command_id", "order_id", "customer_id", "lines"],
    at_least_one_of: &[],
};
const COMMIT: Endpoint = Endpoint {
    command: "stock.commit",
    fields: &["command_id", "reservation_id", "expected_version"],
    at_least_one_of: &[],
};

/// `POST /v1/items`.
#[utoipa::path(
    post,
    path = "/items",
    tag = "commands",
    params(("Idempotency-Key" = Option<String>, Header, description = "The command id: a retry with the same key is one command"), CommandParams),
    request_body(description = "sku, name, price required; category, reorder_point, target_level, stock {location: qty}", content(("application/json", example = json!({"sku": "A-1", "name": "Widget", "price": "9.99", "category": "tools", "reorder_point": 5, "stock": {"madrid": 10}})))),
    responses(
        (status = 202, description = "Appended: `command_id`, `token` (pass as `after`), `status_url`; `Location` is the status URL", body = Accepted),
        CommandProblems
    )
)]
pub async fn create_item(
    state: State<AppState>,
    params: Params<CommandParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    submit(state, params, headers, &body, None, &CREATE_ITEM).await
}

/// `PATCH /v1/items/{sku}`.
#[utoipa::path(
    patch,
    path = "/items/{sku}",
    tag = "commands",
    params(("sku" = String, Path, description = "The sku"), ("Idempotency-Key" = Option<String>, Header, description = "The command id: a retry with the same key is one command"), CommandParams),
    request_body(description = "at least one of name, price, category, reorder_point, target_level; expected_version", content(("application/json", example = json!({"price": "10.50"})))),
    responses(
        (status = 202, description = "Appended: `command_id`, `token` (pass as `after`), `status_url`; `Location` is the status URL", body = Accepted),
        CommandProblems
    )
)]
pub async fn update_item(
    state: State<AppState>,
    Path(sku): Path<String>,
    params: Params<CommandParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    submit(state, params, headers, &body, Some(sku), &UPDATE_ITEM).await
}

/// `DELETE /v1/items/{sku}` (the body is optional).
#[utoipa::path(
    delete,
    path = "/items/{sku}",
    tag = "commands",
    params(("sku" = String, Path, description = "The sku"), ("Idempotency-Key" = Option<String>, Header, description = "The command id: a retry with the same key is one command"), CommandParams),
    responses(
        (status = 202, description = "Appended: `command_id`, `token` (pass as `after`), `status_url`; `Location` is the status URL", body = Accepted),
        CommandProblems
    )
)]
pub async fn delete_item(
    state: State<AppState>,
    Path(sku): Path<String>,
    params: Params<CommandParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    submit(state, params, headers, &body, Some(sku), &DELETE_ITEM).await
}

/// `POST /v1/stock/{sku}/{adjust|reserve|release|commit}`.
#[utoipa::path(
    post,
    path = "/stock/{sku}/{command}",
    tag = "commands",
    params(("sku" = String, Path, description = "The sku"), ("command" = String, Path, description = "adjust, reserve, release or commit"), ("Idempotency-Key" = Option<String>, Header, description = "The command id: a retry with the same key is one command"), CommandParams),
    request_body(description = "adjust: location, qty (≠ 0), reason; reserve: location, qty (> 0), reservation_id, order_id; release/commit: reservation_id; each: expected_version", content(("application/json", example = json!({"location": "madrid", "qty": -2, "reason": "sale"})))),
    responses(
        (status = 202, description = "Appended: `command_id`, `token` (pass as `after`), `status_url`; `Location` is the status URL", body = Accepted),
        (status = 404, description = "No such stock command", body = Problem, content_type = "application/problem+json"),
        CommandProblems
    )
)]
pub async fn stock_command(
    state: State<AppState>,
    Path((sku, action)): Path<(String, String)>,
    params: Params<CommandParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let endpoint = match action.as_str() {
        "adjust" => &ADJUST,
        "reserve" => &RESERVE,
        "release" => &RELEASE,
        "commit" => &COMMIT,
        other => {
            return Err(ApiError::not_found(format!(
                "no stock command `{other}` (adjust, reserve, release, commit)"
            )))
        }
    };
    submit(state, params, headers, &body, Some(sku), endpoint).await
}

/// `POST /v1/orders`: a saga that reserves every line (see `GET /v1/orders/{id}`).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "commands",
    params(("Idempotency-Key" = Option<String>, Header, description = "The command id: a retry with the same key is one command"), CommandParams),
    request_body(description = "customer_id, lines [{sku, location, qty, price}] (1–1000), order_id", content(("application/json", example = json!({"customer_id": "c-7", "lines": [{"sku": "A-1", "location": "madrid", "qty": 2, "price": "9.99"}]})))),
    responses(
        (status = 202, description = "Appended: `command_id`, `token` (pass as `after`), `status_url`; `Location` is the status URL", body = Accepted),
        CommandProblems
    )
)]
pub async fn place_order(
    state: State<AppState>,
    params: Params<CommandParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    submit(state, params, headers, &body, None, &PLACE_ORDER).await
}

/// Checks, appends and answers one command.
async fn submit(
    State(state): State<AppState>,
    Params(params): Params<CommandParams>,
    headers: HeaderMap,
    body: &[u8],
    sku: Option<String>,
    endpoint: &Endpoint,
) -> Result<Response, ApiError> {
    let Some(writer) = state.commands.clone() else {
        return Err(ApiError::method_not_allowed_because(
            "this server is read-only (--read-only): it takes no commands",
        ));
    };
    let tenant = tenant_param(params.tenant.as_deref())?;
    if let Some(sku) = &sku {
        // The sku is the path's, not the body's: say so.
        validate_name(sku)
            .map_err(|reason| ApiError::bad_request(format!("path parameter sku: {reason}")))?;
    }
    let mut fields = body_object(&headers, body, endpoint.command == "item.delete")?;
    if let Some(unknown) = fields
        .keys()
        .find(|k| !endpoint.fields.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "body: unknown field `{unknown}` (this command takes {})",
            endpoint.fields.join(", ")
        )));
    }
    if !endpoint.at_least_one_of.is_empty()
        && endpoint
            .at_least_one_of
            .iter()
            .all(|f| body::is_absent(&fields, f))
    {
        return Err(ApiError::bad_request(format!(
            "body: give at least one of {}",
            endpoint.at_least_one_of.join(", ")
        )));
    }
    // The command id: Idempotency-Key, else the body's command_id, else a new one.
    let mut keys = headers.get_all("idempotency-key").iter();
    let from_header = match keys.next() {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("header Idempotency-Key: not visible ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    if keys.next().is_some() {
        return Err(ApiError::bad_request(
            "header Idempotency-Key: given more than once; a command has one key",
        ));
    }
    let from_body = match fields.remove("command_id") {
        Some(id) if id.get() == "null" => None,
        Some(id) => match serde_json::from_str::<String>(id.get()) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "body: field `command_id`: expected a string, got `{}`",
                    body::shorten(id.get())
                )))
            }
        },
        None => None,
    };
    let client_named_id = from_header.is_some() || from_body.is_some();
    let command_id = match (from_header, from_body) {
        (Some(header), Some(body)) if header != body => {
            return Err(ApiError::bad_request(format!("header Idempotency-Key `{header}` and field `command_id` `{body}` differ; give one")));
        }
        (Some(id), _) | (None, Some(id)) => {
            validate_id(&id)
                .map_err(|reason| ApiError::bad_request(format!("command id: {reason}")))?;
            if id.len() > MAX_COMMAND_ID_LEN {
                return Err(ApiError::bad_request(format!(
                    "command id: longer than {MAX_COMMAND_ID_LEN} bytes"
                )));
            }
            id
        }
        (None, None) => new_command_id(),
    };
    if let Some(sku) = sku {
        fields.insert("sku".into(), body::raw(sku));
    }
    if endpoint.command == "order.place" && body::is_absent(&fields, "order_id") {
        // Derived from the command id, so a retry of the same command names the same order.
        fields.insert(
            "order_id".into(),
            body::raw(derived_order_id(&tenant, &command_id)),
        );
    }
    if endpoint.command == "stock.reserve" && body::is_absent(&fields, "reservation_id") {
        // Unique per command, so it cannot collide with another reservation.
        fields.insert(
            "reservation_id".into(),
            body::raw(format!("res-{command_id}")),
        );
    }
    fields.insert("id".into(), body::raw(&command_id));
    fields.insert("type".into(), body::raw(endpoint.command));
    fields.insert("tenant".into(), body::raw(tenant.as_str()));
    fields.insert(
        "ts".into(),
        body::raw(chrono::Utc::now().timestamp_millis()),
    );
    // The fields as the client wrote them: numbers are not read into floats on the way.
    let payload = serde_json::to_vec(&fields).map_err(ApiError::internal)?;
    // Every field rule, exactly as the engine will apply them.
    let command = decode_command(&payload, RecordContext::default())
        .map_err(|error| ApiError::bad_request(format!("body: {error}")))?;

    // A command id the client named is one request: its retries are answered
    // as the first was, and another request under it is refused.
    let claimed = client_named_id
        && match state.store.claim_command(&command.tenant, &command.id, fingerprint(&command), || describe(&command)) {
            Claim::New => true,
            Claim::InFlight => false,
            Claim::Repeat(answer) => return Ok(accepted((*answer).clone())),
            Claim::Conflict(first) => {
                return Err(ApiError::conflict(format!(
                    "command id `{}` (Idempotency-Key or command_id) was already used in tenant `{}` for another request: {first}; \
                     send that request unchanged to retry it, or use a new key for a new command",
                    command.id, command.tenant
                )))
            }
        };
    let key = format!("{}/{}", command.tenant, command.sku).into_bytes();
    let topic = writer.topic.clone();
    let (partition, offset) = match writer.append(key, payload).await {
        Ok(position) => position,
        Err(failed) => {
            tracing::warn!(error = %failed.detail, unknown = failed.unknown, command_id = %command.id, "a command could not be appended");
            if claimed {
                state.store.command_failed(&command.tenant, &command.id);
            }
            let id = &command.id;
            let detail = if failed.unknown {
                format!(
                    "the outcome of command `{id}` is unknown: its append to {topic} failed ({}) but may have been written; \
                     retry with header `Idempotency-Key: {id}` (it is decided once however often it arrives), or read GET /v1/commands/{id}",
                    failed.detail
                )
            } else {
                format!(
                    "command `{id}` was not appended to {topic} ({}); nothing of it was written: retry (with header `Idempotency-Key: {id}` to be safe)",
                    failed.detail
                )
            };
            return Err(ApiError::unavailable(detail).about_command(id.clone()));
        }
    };
    state.store.submit(
        command.tenant.clone(),
        command.id.clone(),
        (partition, offset),
    );
    state
        .metrics
        .commands_in
        .with_label_values(&[endpoint.command])
        .inc();
    state
        .metrics
        .events_out
        .with_label_values(&[topic.as_str()])
        .inc();
    let answer = crate::rows::value(Accepted {
        command_id: command.id.to_string(),
        order_id: match &command.intent {
            EventBody::OrderPlaced { order_id, .. } => Some(order_id.to_string()),
            _ => None,
        },
        reservation_id: match &command.intent {
            EventBody::StockReserved { reservation_id, .. } => Some(reservation_id.to_string()),
            _ => None,
        },
        status_url: format!("/v1/commands/{}?tenant={}", command.id, command.tenant),
        token: format!("{topic}:{partition}:{offset}"),
    });
    if claimed {
        state
            .store
            .command_answered(&command.tenant, &command.id, answer.clone());
    }
    Ok(accepted(answer))
}

/// `202 Accepted` with a command's answer (an [`Accepted`], kept as a value
/// by the store for retries), `Location` its status URL.
fn accepted(answer: Value) -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::LOCATION,
            answer["status_url"].as_str().unwrap_or_default().to_owned(),
        )],
        Json(answer),
    )
        .into_response()
}

/// What a command asks for, hashed: its type, sku, fields and expected
/// version, not when it was sent. Equal for a retry of the same request.
fn fingerprint(command: &Command) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        &command.tenant,
        &command.id,
        &command.sku,
        command.expected_version,
        &command.intent,
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// A command as a conflict names it: ``stock.reserve of sku `A` (status: /v1/commands/…)``.
fn describe(command: &Command) -> String {
    let (kind, key) = match &command.intent {
        EventBody::OrderPlaced { .. } => ("order.place", "order"),
        EventBody::ItemCreated { .. } => ("item.create", "sku"),
        EventBody::ItemUpdated { .. } => ("item.update", "sku"),
        EventBody::ItemDeleted { .. } => ("item.delete", "sku"),
        EventBody::StockAdjusted { .. } => ("stock.adjust", "sku"),
        EventBody::StockReserved { .. } => ("stock.reserve", "sku"),
        EventBody::StockReleased { .. } => ("stock.release", "sku"),
        EventBody::StockCommitted { .. } => ("stock.commit", "sku"),
        _ => ("command", "sku"),
    };
    format!(
        "{kind} of {key} `{}` (its status: /v1/commands/{}?tenant={})",
        command.sku, command.id, command.tenant
    )
}

/// The order id of an `order.place` that gave none: `ord-` and 16 hex digits
/// of SHA-256 over the tenant and command id, the same for every retry.
fn derived_order_id(tenant: &str, command_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(tenant)
        .chain_update([0u8])
        .chain_update(command_id)
        .finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ord-{hex}")
}

/// The body as a JSON object, after the content-type and size checks (see
/// [`body::object`]: no key twice, numbers as sent).
pub(super) fn body_object(
    headers: &HeaderMap,
    body: &[u8],
    optional: bool,
) -> Result<Fields, ApiError> {
    if body.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::too_large(format!(
            "body: {} bytes, more than the {MAX_COMMAND_BYTES} this route takes",
            body.len()
        )));
    }
    if body.is_empty() && optional {
        return Ok(Fields::new());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        let got = if content_type.is_empty() {
            "none".to_owned()
        } else {
            format!("`{content_type}`")
        };
        return Err(ApiError::unsupported_media_type(format!(
            "header Content-Type: this route takes application/json, got {got}"
        )));
    }
    body::object(body)
}

/// A fresh command id: 128 random bits in hex.
fn new_command_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `GET /v1/orders/{id}`: the order, its lines and its status.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "commands",
    params(("id" = String, Path, description = "The order id"), OutcomeParams),
    responses(
        (status = 200, description = "The order: status, reason, lines, total", body = OrderAnswer, content_type = "application/json"),
        (status = 404, description = "No such order in the tenant", body = Problem, content_type = "application/problem+json"),
        ReadProblems
    )
)]
pub async fn order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Params(params): Params<OutcomeParams>,
) -> Result<Response, ApiError> {
    validate_id(&id).map_err(|reason| {
        ApiError::bad_request(format!("path parameter id (the order id): {reason}"))
    })?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let id = Name::from(id);
    let Some(row) = snapshot.orders.get(&(tenant.clone(), id.clone())) else {
        return Err(ApiError::not_found(format!(
            "no order `{id}` of tenant `{tenant}`"
        )));
    };
    Ok(Json(OrderAnswer {
        as_of: &snapshot.as_of,
        order: crate::rows::Order::of(&tenant, &id, row),
    })
    .into_response())
}

/// `GET /v1/commands/{id}`: `pending`, `accepted` (with its events) or
/// `rejected` (with the reason).
#[utoipa::path(
    get,
    path = "/commands/{id}",
    tag = "commands",
    params(("id" = String, Path, description = "The command id"), OutcomeParams),
    responses(
        (status = 200, description = "`pending`, `accepted` (with the events) or `rejected` (with the reason)", body = Outcome, content_type = "application/json"),
        (status = 404, description = "A command neither decided nor sent to this server", body = Problem, content_type = "application/problem+json"),
        ReadProblems
    )
)]
pub async fn outcome(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Params(params): Params<OutcomeParams>,
) -> Result<Response, ApiError> {
    validate_id(&id).map_err(|reason| {
        ApiError::bad_request(format!("path parameter id (the command id): {reason}"))
    })?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let id = Name::from(id);
    if let Some(events) = snapshot.commands.get(&(tenant.clone(), id.clone())) {
        let rejection = events.iter().find_map(|e| match &e.body {
            EventBody::ReservationRejected { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        let answer = Outcome {
            as_of: &snapshot.as_of,
            command_id: &id,
            events: rejection
                .is_none()
                .then(|| events.iter().map(encode_event).collect()),
            status: if rejection.is_some() {
                "rejected"
            } else {
                "accepted"
            },
            reason: rejection,
            tenant: &tenant,
            token: None,
        };
        return Ok(Json(answer).into_response());
    }
    match state.store.submitted(&tenant, &id) {
        Some((partition, offset)) => Ok(Json(Outcome {
            as_of: &snapshot.as_of,
            command_id: &id,
            events: None,
            reason: None,
            status: "pending",
            tenant: &tenant,
            token: Some(format!(
                "{}:{partition}:{offset}",
                state.commands.as_ref().map(|c| c.topic.as_str()).unwrap_or("")
            )),
        })
        .into_response()),
        None => Err(ApiError::not_found(format!("no command `{id}` of tenant `{tenant}` (decided commands and those sent to this server are known)"))),
    }
}
