//! `GET /v1/kpis` and `GET /v1/kpis/top-skus`: the `kpis` and `top_skus`
//! views by tenant, window and event-time range, with the tenant's gauges.

use super::error::{ApiError, Params, ReadProblems};
use super::reads::consistent_read;
use super::AppState;
use crate::rows::AsOf;
use crate::rows::{rfc3339, Kpi, TopSku, TopSkusRow};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use stockflow_dataflows::kpis::{KpiKey, Window, BUILT_IN};
use stockflow_dataflows::model::{EventTime, Name};
use utoipa::ToSchema;

/// Most buckets one `GET /v1/kpis` may span.
pub const MAX_BUCKETS: i64 = 10_000;
/// Buckets answered when neither `from` nor `to` is given: a day of hours, a month of days.
const DEFAULT_BUCKETS: [i64; 2] = [24, 30];

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct KpiParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
    /// Read-your-writes: a command's `token` (or `topic:partition:offset`, comma separated); the read waits until the views reflect it.
    after: Option<String>,
    /// How long to wait for `after`, in ms (default 2000, at most 30000); 504 past it.
    wait_ms: Option<u64>,
    /// `hour` (default) or `day`.
    window: Option<String>,
    /// Start (RFC 3339, or a date meaning its midnight UTC); buckets overlapping `[from, to)`. Default: the 24 hours (30 days) up to the newest bucket with data.
    from: Option<String>,
    /// End, exclusive (RFC 3339 or a date).
    to: Option<String>,
    /// One metric (built-in or custom); default: every metric.
    metric: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TopSkusParams {
    /// The tenant read or written (default `default`; a tenant key's own when absent).
    tenant: Option<String>,
    /// Read-your-writes: a command's `token` (or `topic:partition:offset`, comma separated); the read waits until the views reflect it.
    after: Option<String>,
    /// How long to wait for `after`, in ms (default 2000, at most 30000); 504 past it.
    wait_ms: Option<u64>,
    /// A date or any time within the day (UTC); default: the newest day with sales.
    day: Option<String>,
}

/// The metrics `GET /v1/kpis` answers: built-in (not the internal cells) and custom.
pub fn metric_names(custom: &[Name]) -> Vec<String> {
    let internal = [
        stockflow_dataflows::kpis::cells::RESERVATIONS,
        stockflow_dataflows::kpis::cells::UNITS_BY_SKU,
    ];
    BUILT_IN
        .iter()
        .filter(|m| !internal.contains(m))
        .map(|m| m.to_string())
        .chain(custom.iter().map(|m| m.to_string()))
        .collect()
}

/// The answer of `GET /v1/kpis`.
#[derive(Serialize, ToSchema)]
pub(super) struct KpiAnswer<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// Start of the first bucket answered, RFC 3339.
    #[schema(required = true)]
    from: Option<String>,
    /// The tenant's point-in-time gauges, by name (the asked metric's only, with `metric`).
    #[schema(value_type = BTreeMap<String, f64>)]
    gauges: BTreeMap<&'static str, Value>,
    /// The rows, by bucket then metric (without their tenant: the answer's).
    rows: Vec<Kpi<'a>>,
    /// The tenant.
    tenant: &'a str,
    /// End of the range, exclusive, RFC 3339.
    #[schema(required = true)]
    to: Option<String>,
    /// `hour` or `day`.
    window: &'static str,
}

/// The answer of `GET /v1/kpis/top-skus`.
#[derive(Serialize, ToSchema)]
pub(super) struct TopSkusAnswer<'a> {
    /// What the views reflect.
    as_of: &'a AsOf,
    /// The day, `YYYY-MM-DD` (UTC); null when the tenant has sold nothing yet.
    #[schema(required = true)]
    day: Option<String>,
    /// The skus with the most units sold that day, best first.
    skus: Vec<TopSku<'a>>,
    /// The tenant.
    tenant: &'a str,
}

/// Parses an RFC 3339 time (or a `YYYY-MM-DD` date, midnight UTC) into ms.
fn parse_time(parameter: &str, text: &str) -> Result<EventTime, ApiError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis());
    }
    Err(ApiError::bad_request(format!("query parameter {parameter}: `{text}` is not an RFC 3339 time (2026-11-23T10:00:00Z) or a date (2026-11-23)")))
}

/// `GET /v1/kpis`
#[utoipa::path(
    get,
    path = "/kpis",
    tag = "kpis",
    params(KpiParams),
    responses(
        (status = 200, description = "KPI rows by bucket and metric, and the gauges", body = KpiAnswer, content_type = "application/json"),
        ReadProblems
    )
)]
pub(super) async fn list_kpis(
    State(state): State<AppState>,
    Params(params): Params<KpiParams>,
) -> Result<Response, ApiError> {
    let window = match params.window.as_deref() {
        None => Window::Hour,
        Some(name) => Window::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter window: `{name}` is not one of hour, day"
            ))
        })?,
    };
    let known = metric_names(&state.kpi_metrics);
    if let Some(metric) = &params.metric {
        if !known.iter().any(|m| m == metric) {
            return Err(ApiError::bad_request(format!(
                "query parameter metric: unknown metric `{metric}` (metrics: {})",
                known.join(", ")
            )));
        }
    }
    let from = params
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?;
    let to = params
        .to
        .as_deref()
        .map(|t| parse_time("to", t))
        .transpose()?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let len = window.millis();
    let default_span = DEFAULT_BUCKETS[window as usize] * len;
    // Without bounds: the buckets up to the newest one with data for the tenant.
    let newest = || {
        snapshot
            .kpis
            .range(KpiKey::first(&tenant, window, EventTime::MIN)..)
            .take_while(|(k, _)| k.tenant == tenant && k.window == window)
            .map(|(k, _)| k.bucket + len)
            .last()
    };
    let (from, to) = match (from, to) {
        (Some(from), Some(to)) => (from, to),
        (Some(from), None) => (from, from.saturating_add(default_span)),
        (None, Some(to)) => (to.saturating_sub(default_span), to),
        (None, None) => {
            let to = newest()
                .unwrap_or_else(|| window.bucket(chrono::Utc::now().timestamp_millis()) + len);
            (to - default_span, to)
        }
    };
    if from >= to {
        return Err(ApiError::bad_request(format!(
            "query parameters from/to: from ({}) must be before to ({})",
            rfc3339(from).unwrap_or_default(),
            rfc3339(to).unwrap_or_default()
        )));
    }
    // Buckets that overlap [from, to).
    let first = window.bucket(from);
    let buckets = (to - first + len - 1) / len;
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "query parameters from/to: the range spans {buckets} {} buckets; at most {MAX_BUCKETS} per request (narrow it, or use window=day)",
            window.name()
        )));
    }
    let rows = snapshot
        .kpis
        .range(KpiKey::first(&tenant, window, first)..)
        .take_while(|(k, _)| k.tenant == tenant && k.window == window && k.bucket < to)
        .filter(|(k, _)| params.metric.as_deref().is_none_or(|m| k.metric == m))
        .map(|(key, value)| Kpi {
            tenant: None,
            ..Kpi::of(key, *value)
        })
        .collect();
    let gauges = snapshot.gauges.get(&tenant).copied().unwrap_or_default();
    let gauges = gauges
        .values()
        .into_iter()
        .filter(|(name, _)| params.metric.as_deref().is_none_or(|m| m == *name))
        .map(|(name, value)| (name, value.json()))
        .collect();
    Ok(Json(KpiAnswer {
        as_of: &snapshot.as_of,
        from: rfc3339(first),
        gauges,
        rows,
        tenant: &tenant,
        to: rfc3339(to),
        window: window.name(),
    })
    .into_response())
}

/// `GET /v1/kpis/top-skus`
#[utoipa::path(
    get,
    path = "/kpis/top-skus",
    tag = "kpis",
    params(TopSkusParams),
    responses(
        (status = 200, description = "The ten skus with the most units sold that day", body = TopSkusAnswer, content_type = "application/json"),
        ReadProblems
    )
)]
pub(super) async fn top_skus(
    State(state): State<AppState>,
    Params(params): Params<TopSkusParams>,
) -> Result<Response, ApiError> {
    let day = params
        .day
        .as_deref()
        .map(|t| parse_time("day", t).map(|ms| Window::Day.bucket(ms)))
        .transpose()?;
    let (tenant, snapshot) =
        consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let day = match day {
        Some(day) => day,
        // The newest day with sales.
        None => match snapshot
            .top_skus
            .range((tenant.clone(), EventTime::MIN)..)
            .take_while(|(k, _)| k.0 == tenant)
            .last()
        {
            Some(((_, day), _)) => *day,
            None => {
                return Ok(Json(TopSkusAnswer {
                    as_of: &snapshot.as_of,
                    day: None,
                    skus: Vec::new(),
                    tenant: &tenant,
                })
                .into_response())
            }
        },
    };
    let top = snapshot.top_skus.get(&(tenant.clone(), day));
    let row = TopSkusRow::of(&tenant, day, top.map(|top| &**top));
    Ok(Json(TopSkusAnswer {
        as_of: &snapshot.as_of,
        day: Some(row.day),
        skus: row.skus,
        tenant: &tenant,
    })
    .into_response())
}
