//! Read handlers over the published views.
//! Long because every listing shares one pagination, filter and token grammar and the Arrow variant.

use super::error::{ApiError, Params, Problem, ReadProblems, Segment};
use super::AppState;
use crate::rows::AsOf;
use crate::rows::{Item, Quantities, Stock};
use crate::store::Snapshot;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;
use stockflow_dataflows::model::decode::{validate_name, MAX_NAME_LEN};
use stockflow_dataflows::model::{Name, SkuKey, StockKey, DEFAULT_TENANT};
use utoipa::ToSchema;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;
/// `wait_ms` when `after` is given without it.
pub const DEFAULT_WAIT_MS: u64 = 2000;
use crate::settings::MAX_WAIT_MS;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    pub(super) tenant: Option<String>,
    /// Read-your-writes: a command's `token` (or `topic:partition:offset`, comma separated); the read waits until the views reflect it.
    pub(super) after: Option<String>,
    /// How long to wait for `after`, in ms (default 2000, at most 30000); 504 past it.
    pub(super) wait_ms: Option<u64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StockListParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
    /// Read-your-writes: a command's `token` (or `topic:partition:offset`, comma separated); the read waits until the views reflect it.
    after: Option<String>,
    /// How long to wait for `after`, in ms (default 2000, at most 30000); 504 past it.
    wait_ms: Option<u64>,
    /// Rows of this location only.
    location: Option<String>,
    /// Rows whose `available` is below this.
    below: Option<i64>,
    /// Rows of items of this category only.
    category: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page (1–1000, default 100).
    limit: Option<usize>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ItemListParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
    /// Read-your-writes: a command's `token` (or `topic:partition:offset`, comma separated); the read waits until the views reflect it.
    after: Option<String>,
    /// How long to wait for `after`, in ms (default 2000, at most 30000); 504 past it.
    wait_ms: Option<u64>,
    /// Items of this category only.
    category: Option<String>,
    /// Active (`true`) or deleted (`false`) items only.
    active: Option<bool>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page (1–1000, default 100).
    limit: Option<usize>,
}

/// The answer of `GET /v1/items/{sku}`.
#[derive(Serialize, ToSchema)]
pub(super) struct ItemAnswer<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// The item.
    item: Item<'a>,
}

/// A page of `GET /v1/items`.
#[derive(Serialize, ToSchema)]
pub(super) struct ItemPage<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// The `cursor` of the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
    /// The items, in sku order.
    rows: Vec<Item<'a>>,
}

/// The answer of `GET /v1/stock/{sku}`: a sku's totals and its rows per location.
#[derive(Serialize, ToSchema)]
pub(super) struct SkuStock<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// The quantities per location, in location order.
    locations: Vec<LocationStock<'a>>,
    /// The sku.
    sku: &'a str,
    /// The tenant.
    tenant: &'a str,
    /// The quantities over every location.
    totals: Quantities,
    /// Stock changes applied to the sku: what a command's `expected_version` is compared with.
    version: i64,
}

/// The quantities of a sku at one location.
#[derive(Serialize, ToSchema)]
pub(super) struct LocationStock<'a> {
    /// `on_hand - reserved`.
    available: i64,
    /// The location.
    location: &'a str,
    /// Physical quantity on the shelf.
    on_hand: i64,
    /// Set aside by open reservations.
    reserved: i64,
    /// Event time of the newest event that touched the row, RFC 3339.
    #[schema(required = true)]
    updated_at: Option<String>,
}

/// A page of `GET /v1/stock`.
#[derive(Serialize, ToSchema)]
pub(super) struct StockPage<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// The `cursor` of the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
    /// The stock rows, in (sku, location) order.
    rows: Vec<Stock<'a>>,
}

/// The answer of `GET /v1/views`.
#[derive(Serialize, ToSchema)]
pub(super) struct Catalogue<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// The views.
    views: Vec<ViewInfo>,
}

/// One view of the catalogue.
#[derive(Serialize, ToSchema)]
pub(super) struct ViewInfo {
    /// The columns besides the key.
    columns: &'static [&'static str],
    /// The columns of the key.
    key: &'static [&'static str],
    /// The view's name.
    name: &'static str,
    /// Rows of the view (of the key's tenant, for a tenant key).
    rows: usize,
}

/// `GET /v1/items/{sku}`
#[utoipa::path(
    get,
    path = "/items/{sku}",
    tag = "reads",
    params(("sku" = String, Path, description = "The sku"), ReadParams),
    responses(
        (status = 200, description = "The item: `{as_of, item}`", body = ItemAnswer, content_type = "application/json"),
        (status = 404, description = "No such item in the tenant", body = Problem, content_type = "application/problem+json"),
        ReadProblems
    )
)]
pub(super) async fn get_item(
    State(state): State<AppState>,
    Segment(sku): Segment,
    Params(params): Params<ReadParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let sku = parameter_name("path parameter sku", &sku)?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let key = SkuKey {
        tenant: tenant.clone(),
        sku: sku.clone(),
    };
    let row = snapshot
        .items
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("no item `{sku}` in tenant `{tenant}`")))?;
    Ok(Json(ItemAnswer {
        as_of: &snapshot.as_of,
        item: Item::of(&key, row),
    })
    .into_response())
}

/// `GET /v1/items` (an Arrow IPC stream for `Accept: application/vnd.apache.arrow.stream`).
#[utoipa::path(
    get,
    path = "/items",
    tag = "reads",
    params(ItemListParams),
    responses(
        (status = 200, description = "A page of items in sku order: `{as_of, rows, next_cursor}`; Arrow IPC with `Accept: application/vnd.apache.arrow.stream` (the next page's cursor in `X-Next-Cursor`)", content(
            (ItemPage = "application/json"),
            ("application/vnd.apache.arrow.stream")
        )),
        ReadProblems
    )
)]
pub(super) async fn list_items(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Params(params): Params<ItemListParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let category = params
        .category
        .as_deref()
        .map(|c| parameter_name("category", c))
        .transpose()?;
    let limit = page_limit(params.limit)?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let start = match params.cursor.as_deref() {
        Some(cursor) => {
            let parts = decode_cursor(cursor, 1)?;
            Bound::Excluded(SkuKey {
                tenant: tenant.clone(),
                sku: parts[0].clone(),
            })
        }
        None => Bound::Included(SkuKey {
            tenant: tenant.clone(),
            sku: Name::default(),
        }),
    };
    let mut rows = Vec::new();
    let mut last: Option<&SkuKey> = None;
    let mut next_cursor = None;
    for (key, row) in snapshot.items.range((start, Bound::Unbounded)) {
        if key.tenant != tenant {
            break;
        }
        if category.as_ref().is_some_and(|c| *c != row.category)
            || params.active.is_some_and(|a| a != row.active)
        {
            continue;
        }
        if rows.len() == limit {
            if let Some(last) = last {
                next_cursor = Some(encode_cursor(&[&last.sku]));
            }
            break;
        }
        rows.push((key, row));
        last = Some(key);
    }
    if wants_arrow(&headers) {
        return Ok(arrow_page(
            &crate::export::item_batch(rows.into_iter()),
            next_cursor,
        ));
    }
    Ok(Json(ItemPage {
        as_of: &snapshot.as_of,
        next_cursor,
        rows: rows
            .into_iter()
            .map(|(key, row)| Item::of(key, row))
            .collect(),
    })
    .into_response())
}

/// `GET /v1/stock/{sku}`: totals plus one row per location.
#[utoipa::path(
    get,
    path = "/stock/{sku}",
    tag = "reads",
    params(("sku" = String, Path, description = "The sku"), ReadParams),
    responses(
        (status = 200, description = "Totals and per-location rows of the sku, with its `version`", body = SkuStock, content_type = "application/json"),
        (status = 404, description = "No item or stock for the sku in the tenant", body = Problem, content_type = "application/problem+json"),
        ReadProblems
    )
)]
pub(super) async fn get_stock(
    State(state): State<AppState>,
    Segment(sku): Segment,
    Params(params): Params<ReadParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let sku = parameter_name("path parameter sku", &sku)?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let key = SkuKey {
        tenant: tenant.clone(),
        sku: sku.clone(),
    };
    let totals = snapshot.stock_totals.get(&key);
    if totals.is_none() && !snapshot.items.contains_key(&key) {
        return Err(ApiError::not_found(format!(
            "no item or stock for sku `{sku}` in tenant `{tenant}`"
        )));
    }
    let start = StockKey {
        tenant: tenant.clone(),
        sku: sku.clone(),
        location: Name::default(),
    };
    let locations = snapshot
        .stock
        .range(start..)
        .take_while(|(k, _)| k.tenant == tenant && k.sku == sku)
        .map(|(k, delta)| {
            let quantities = Quantities::of(Some(delta));
            LocationStock {
                available: quantities.available,
                location: &k.location,
                on_hand: quantities.on_hand,
                reserved: quantities.reserved,
                updated_at: quantities.updated_at,
            }
        })
        .collect();
    Ok(Json(SkuStock {
        as_of: &snapshot.as_of,
        locations,
        sku: &sku,
        tenant: &tenant,
        totals: Quantities::of(totals),
        version: totals.map_or(0, |t| t.changes),
    })
    .into_response())
}

/// `GET /v1/stock`: one row per sku and location, filtered and paginated;
/// the page as an Arrow IPC stream for `Accept: application/vnd.apache.arrow.stream`.
#[utoipa::path(
    get,
    path = "/stock",
    tag = "reads",
    params(StockListParams),
    responses(
        (status = 200, description = "A page of stock rows (tenant, sku, location order): `{as_of, rows, next_cursor}`; Arrow IPC with `Accept: application/vnd.apache.arrow.stream` (the next page's cursor in `X-Next-Cursor`)", content(
            (StockPage = "application/json"),
            ("application/vnd.apache.arrow.stream")
        )),
        ReadProblems
    )
)]
pub(super) async fn list_stock(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Params(params): Params<StockListParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let location = params
        .location
        .as_deref()
        .map(|l| parameter_name("location", l))
        .transpose()?;
    let category = params
        .category
        .as_deref()
        .map(|c| parameter_name("category", c))
        .transpose()?;
    let limit = page_limit(params.limit)?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let start = match params.cursor.as_deref() {
        Some(cursor) => {
            let parts = decode_cursor(cursor, 2)?;
            Bound::Excluded(StockKey {
                tenant: tenant.clone(),
                sku: parts[0].clone(),
                location: parts[1].clone(),
            })
        }
        None => Bound::Included(StockKey {
            tenant: tenant.clone(),
            sku: Name::default(),
            location: Name::default(),
        }),
    };
    let mut rows = Vec::new();
    let mut last: Option<&StockKey> = None;
    let mut next_cursor = None;
    for (key, delta) in snapshot.stock.range((start, Bound::Unbounded)) {
        if key.tenant != tenant {
            break;
        }
        if location.as_ref().is_some_and(|l| *l != key.location)
            || params.below.is_some_and(|b| delta.available() >= b)
        {
            continue;
        }
        if let Some(category) = &category {
            let item = snapshot.items.get(&SkuKey {
                tenant: key.tenant.clone(),
                sku: key.sku.clone(),
            });
            if item.is_none_or(|i| i.category != *category) {
                continue;
            }
        }
        if rows.len() == limit {
            if let Some(last) = last {
                next_cursor = Some(encode_cursor(&[&last.sku, &last.location]));
            }
            break;
        }
        rows.push((key, delta));
        last = Some(key);
    }
    if wants_arrow(&headers) {
        return Ok(arrow_page(
            &crate::export::stock_batch(rows.into_iter()),
            next_cursor,
        ));
    }
    Ok(Json(StockPage {
        as_of: &snapshot.as_of,
        next_cursor,
        rows: rows
            .into_iter()
            .map(|(key, delta)| Stock::of(key, delta))
            .collect(),
    })
    .into_response())
}

/// `GET /v1/views`: the catalogue of views. Row counts are of every tenant,
/// except for a tenant key: its own tenant's (counted, so slower on big views).
#[utoipa::path(
    get,
    path = "/views",
    tag = "reads",
    params(ReadParams),
    responses(
        (status = 200, description = "The catalogue: each view's name, key, columns and row count", body = Catalogue, content_type = "application/json"),
        ReadProblems
    )
)]
pub(super) async fn views(
    State(state): State<AppState>,
    grant: Option<axum::extract::Extension<crate::api_keys::Grant>>,
    Params(params): Params<ReadParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let counts = match grant.is_some_and(|grant| grant.tenant.is_some()) {
        false => [
            snapshot.items.len(),
            snapshot.stock.len(),
            snapshot.stock_totals.len(),
            snapshot.orders.len(),
            snapshot.kpis.len(),
            snapshot.top_skus.len(),
        ],
        true => {
            let sku = SkuKey {
                tenant: tenant.clone(),
                sku: Name::default(),
            };
            let stock = StockKey {
                tenant: tenant.clone(),
                sku: Name::default(),
                location: Name::default(),
            };
            let first_kpi = stockflow_dataflows::kpis::KpiKey::first(
                &tenant,
                stockflow_dataflows::kpis::Window::Hour,
                stockflow_dataflows::model::EventTime::MIN,
            );
            [
                snapshot
                    .items
                    .range(sku.clone()..)
                    .take_while(|(k, _)| k.tenant == tenant)
                    .count(),
                snapshot
                    .stock
                    .range(stock..)
                    .take_while(|(k, _)| k.tenant == tenant)
                    .count(),
                snapshot
                    .stock_totals
                    .range(sku..)
                    .take_while(|(k, _)| k.tenant == tenant)
                    .count(),
                snapshot.orders.keys().filter(|(t, _)| *t == tenant).count(),
                snapshot
                    .kpis
                    .range(first_kpi..)
                    .take_while(|(k, _)| k.tenant == tenant)
                    .count(),
                snapshot
                    .top_skus
                    .range((tenant.clone(), stockflow_dataflows::model::EventTime::MIN)..)
                    .take_while(|(k, _)| k.0 == tenant)
                    .count(),
            ]
        }
    };
    let view = |name, key, columns, rows| ViewInfo {
        columns,
        key,
        name,
        rows,
    };
    let views = vec![
        view(
            "items",
            &["tenant", "sku"],
            &[
                "name",
                "price",
                "category",
                "reorder_point",
                "target_level",
                "active",
                "updated_at",
            ],
            counts[0],
        ),
        view(
            "stock",
            &["tenant", "sku", "location"],
            &["on_hand", "reserved", "available", "updated_at"],
            counts[1],
        ),
        view(
            "stock_totals",
            &["tenant", "sku"],
            &["on_hand", "reserved", "available", "updated_at"],
            counts[2],
        ),
        view(
            "orders",
            &["tenant", "order_id"],
            &[
                "customer_id",
                "status",
                "reason",
                "lines",
                "total",
                "placed_at",
                "updated_at",
            ],
            counts[3],
        ),
        view(
            "kpis",
            &["tenant", "window", "bucket", "metric", "group"],
            &["value"],
            counts[4],
        ),
        view("top_skus", &["tenant", "day"], &["skus"], counts[5]),
    ];
    Ok(Json(Catalogue {
        as_of: &snapshot.as_of,
        views,
    })
    .into_response())
}

/// The `tenant` parameter, checked; `default` when absent.
pub(super) fn tenant_param(tenant: Option<&str>) -> Result<Name, ApiError> {
    parameter_name("tenant", tenant.unwrap_or(DEFAULT_TENANT))
}

/// Resolves the tenant and returns a snapshot that reflects `after`.
pub(super) async fn consistent_read(
    state: &AppState,
    tenant: Option<String>,
    after: Option<String>,
    wait_ms: Option<u64>,
) -> Result<(Name, Arc<Snapshot>), ApiError> {
    let tenant = tenant_param(tenant.as_deref())?;
    if wait_ms.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(ApiError::bad_request(format!(
            "query parameter wait_ms: at most {MAX_WAIT_MS}"
        )));
    }
    let Some(after) = after else {
        return Ok((tenant, state.store.snapshot()));
    };
    let targets = parse_tokens(&after)?;
    state
        .store
        .status
        .check_known(&targets)
        .map_err(|reason| ApiError::bad_request(format!("query parameter after: {reason}")))?;
    let wait = Duration::from_millis(wait_ms.unwrap_or(DEFAULT_WAIT_MS));
    match state.store.wait_for(&targets, wait).await {
        Some(snapshot) => Ok((tenant, snapshot)),
        None => Err(ApiError::timeout(format!(
            "the views did not reach `{after}` within {} ms; retry or raise wait_ms",
            wait.as_millis()
        ))),
    }
}

/// Parses `after`: comma-separated `topic:partition:offset` tokens, as command
/// answers give them. The views must reflect each offset (reach offset + 1).
pub fn parse_tokens(text: &str) -> Result<BTreeMap<String, BTreeMap<u32, u64>>, ApiError> {
    let mut targets: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for token in text.split(',') {
        let bad = || {
            ApiError::bad_request(format!(
                "query parameter after: `{token}` is not a token (topic:partition:offset)"
            ))
        };
        let mut parts = token.rsplitn(3, ':');
        let offset: u64 = parts.next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
        let partition: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let topic = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
        let entry = targets
            .entry(topic.to_owned())
            .or_default()
            .entry(partition)
            .or_insert(0);
        *entry = (*entry).max(offset + 1);
    }
    Ok(targets)
}

pub(super) fn parameter_name(parameter: &str, value: &str) -> Result<Name, ApiError> {
    validate_name(value)
        .map_err(|reason| ApiError::bad_request(format!("{parameter}: {reason}")))?;
    Ok(Name::from(value))
}

/// `limit` of a listing, checked: [`DEFAULT_LIMIT`] when absent, 1–[`MAX_LIMIT`].
pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::bad_request(format!(
            "query parameter limit: must be between 1 and {MAX_LIMIT}, got {l}"
        ))),
    }
}

/// A listing's `next_cursor`: the key of the last row returned, opaque to clients.
pub(super) fn encode_cursor(parts: &[&str]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("/"))
}

/// Reads a cursor of [`encode_cursor`] holding `parts` names; 400 for anything else.
pub(super) fn decode_cursor(cursor: &str, parts: usize) -> Result<Vec<Name>, ApiError> {
    let bad =
        || ApiError::bad_request("query parameter cursor: not a cursor returned by this listing");
    if cursor.len() > 4 * (MAX_NAME_LEN + 1) * parts {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let split: Vec<Name> = text.split('/').map(Name::from).collect();
    if split.len() != parts || split.iter().any(|p| validate_name(p).is_err()) {
        return Err(bad());
    }
    Ok(split)
}

/// Whether a request's `Accept` asks for an Arrow IPC stream.
fn wants_arrow(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all(axum::http::header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains(crate::export::ARROW_STREAM))
    })
}

/// A listing page as an Arrow IPC stream; the next page's cursor, if any, in `x-next-cursor`.
fn arrow_page(
    batch: &arrow_array::RecordBatch,
    next_cursor: Option<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::export::ARROW_STREAM,
        )],
        crate::export::arrow_stream(batch),
    )
        .into_response();
    if let Some(cursor) = next_cursor.and_then(|c| axum::http::HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert("x-next-cursor", cursor);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_reject() {
        let t = parse_tokens("inventory.events:3:41,inventory.events:3:7").unwrap();
        assert_eq!(t["inventory.events"][&3], 42);
        for bad in ["", "x", "t:1", "t:a:1", ":1:2", "t:1:-1"] {
            assert!(parse_tokens(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(&["SKU-1", "madrid"]);
        assert_eq!(
            decode_cursor(&c, 2).unwrap(),
            vec![Name::from("SKU-1"), Name::from("madrid")]
        );
        assert!(decode_cursor(&c, 1).is_err());
        assert!(decode_cursor("!!!", 2).is_err());
    }
}
