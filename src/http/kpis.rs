//! `GET /v1/kpis` and `GET /v1/kpis/top-skus`: the `kpis` and `top_skus`
//! views by tenant, window and event-time range, with the tenant's gauges.

use super::error::{ApiError, Params};
use super::reads::consistent_read;
use super::AppState;
use crate::rows::{day_text, kpi_json, rfc3339, top_skus_json};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_dataflows::kpis::{KpiKey, KpiRow, Window, BUILT_IN};
use stockflow_dataflows::model::{EventTime, Name};

/// Most buckets one `GET /v1/kpis` may span.
pub const MAX_BUCKETS: i64 = 10_000;
/// Buckets answered when neither `from` nor `to` is given: a day of hours, a month of days.
const DEFAULT_BUCKETS: [i64; 2] = [24, 30];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KpiParams {
    tenant: Option<String>,
    after: Option<String>,
    wait_ms: Option<u64>,
    window: Option<String>,
    from: Option<String>,
    to: Option<String>,
    metric: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopSkusParams {
    tenant: Option<String>,
    after: Option<String>,
    wait_ms: Option<u64>,
    day: Option<String>,
}

/// The metrics `GET /v1/kpis` answers: built-in (not the internal cells) and custom.
pub fn metric_names(custom: &[Name]) -> Vec<String> {
    let internal = [stockflow_dataflows::kpis::cells::RESERVATIONS, stockflow_dataflows::kpis::cells::UNITS_BY_SKU];
    BUILT_IN.iter().filter(|m| !internal.contains(m)).map(|m| m.to_string()).chain(custom.iter().map(|m| m.to_string())).collect()
}

/// Parses an RFC 3339 time (or a `YYYY-MM-DD` date, midnight UTC) into ms.
fn parse_time(parameter: &str, text: &str) -> Result<EventTime, ApiError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis());
    }
    Err(ApiError::bad_request(format!("query parameter {parameter}: `{text}` is not an RFC 3339 time (2026-11-23T10:00:00Z) or a date (2026-11-23)")))
}

/// `GET /v1/kpis`
pub(super) async fn list_kpis(State(state): State<AppState>, Params(params): Params<KpiParams>) -> Result<Json<Value>, ApiError> {
    let window = match params.window.as_deref() {
        None => Window::Hour,
        Some(name) => Window::parse(name).ok_or_else(|| ApiError::bad_request(format!("query parameter window: `{name}` is not one of hour, day")))?,
    };
    let known = metric_names(&state.kpi_metrics);
    if let Some(metric) = &params.metric {
        if !known.iter().any(|m| m == metric) {
            return Err(ApiError::bad_request(format!("query parameter metric: unknown metric `{metric}` (metrics: {})", known.join(", "))));
        }
    }
    let from = params.from.as_deref().map(|t| parse_time("from", t)).transpose()?;
    let to = params.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
    let (tenant, snapshot) = consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
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
            let to = newest().unwrap_or_else(|| window.bucket(chrono::Utc::now().timestamp_millis()) + len);
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
    let rows: Vec<Value> = snapshot
        .kpis
        .range(KpiKey::first(&tenant, window, first)..)
        .take_while(|(k, _)| k.tenant == tenant && k.window == window && k.bucket < to)
        .filter(|(k, _)| params.metric.as_deref().is_none_or(|m| k.metric == m))
        .map(|(key, value)| {
            let mut json = kpi_json(&KpiRow { key: key.clone(), value: *value });
            if let Some(object) = json.as_object_mut() {
                object.remove("tenant");
            }
            json
        })
        .collect();
    let gauges = snapshot.gauges.get(&tenant).copied().unwrap_or_default();
    let gauges: serde_json::Map<String, Value> = gauges
        .values()
        .into_iter()
        .filter(|(name, _)| params.metric.as_deref().is_none_or(|m| m == *name))
        .map(|(name, value)| (name.to_owned(), value.json()))
        .collect();
    Ok(Json(json!({
        "as_of": snapshot.as_of,
        "tenant": tenant,
        "window": window.name(),
        "from": rfc3339(first),
        "to": rfc3339(to),
        "rows": rows,
        "gauges": gauges,
    })))
}

/// `GET /v1/kpis/top-skus`
pub(super) async fn top_skus(State(state): State<AppState>, Params(params): Params<TopSkusParams>) -> Result<Json<Value>, ApiError> {
    let day = params.day.as_deref().map(|t| parse_time("day", t).map(|ms| Window::Day.bucket(ms))).transpose()?;
    let (tenant, snapshot) = consistent_read(&state, params.tenant, params.after, params.wait_ms).await?;
    let day = match day {
        Some(day) => day,
        // The newest day with sales.
        None => match snapshot.top_skus.range((tenant.clone(), EventTime::MIN)..).take_while(|(k, _)| k.0 == tenant).last() {
            Some(((_, day), _)) => *day,
            None => return Ok(Json(json!({"as_of": snapshot.as_of, "tenant": tenant, "day": null, "skus": []}))),
        },
    };
    let answer = match snapshot.top_skus.get(&(tenant.clone(), day)) {
        Some(top) => top_skus_json(&tenant, day, top),
        None => json!({"tenant": tenant, "day": day_text(day), "skus": []}),
    };
    let mut answer = answer;
    answer["as_of"] = json!(snapshot.as_of);
    Ok(Json(answer))
}
