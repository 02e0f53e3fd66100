//! The JSON shape of every view row and of alert events: one place, shared by
//! point reads, listings, change streams and the alerts topic, so a row looks
//! the same wherever a client meets it.

use crate::store::{AlertPair, OrderRow};
use serde_json::{json, Value};
use stockflow_dataflows::alerts::Alert;
use stockflow_dataflows::kpis::{KpiRow, TopSkus};
use stockflow_dataflows::model::{Epoch, EventTime, ItemRow, Name, SkuKey, StockDelta, StockKey};

/// RFC 3339 text of an event time, in UTC with milliseconds.
pub fn rfc3339(ms: EventTime) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Quantities of a row; an absent row (an item with no stock yet) is zeros with no `updated_at`.
pub fn quantities_json(delta: Option<&StockDelta>) -> Value {
    let updated_at = delta.and_then(|d| rfc3339(d.updated_at));
    let delta = delta.copied().unwrap_or_default();
    json!({"on_hand": delta.on_hand, "reserved": delta.reserved, "available": delta.available(), "updated_at": updated_at})
}

/// A `stock` row.
pub fn stock_json(key: &StockKey, delta: &StockDelta) -> Value {
    json!({
        "tenant": key.tenant,
        "sku": key.sku,
        "location": key.location,
        "on_hand": delta.on_hand,
        "reserved": delta.reserved,
        "available": delta.available(),
        "updated_at": rfc3339(delta.updated_at),
    })
}

/// A `stock_totals` row.
pub fn total_json(key: &SkuKey, delta: &StockDelta) -> Value {
    json!({
        "tenant": key.tenant,
        "sku": key.sku,
        "on_hand": delta.on_hand,
        "reserved": delta.reserved,
        "available": delta.available(),
        "version": delta.changes,
        "updated_at": rfc3339(delta.updated_at),
    })
}

/// An `items` row.
pub fn item_json(key: &SkuKey, row: &ItemRow) -> Value {
    json!({
        "tenant": key.tenant,
        "sku": key.sku,
        "name": row.name,
        "price": row.price,
        "category": row.category,
        "reorder_point": row.reorder_point,
        "target_level": row.target_level,
        "active": row.active,
        "updated_at": rfc3339(row.updated_at),
    })
}

/// An `orders` row.
pub fn order_json(tenant: &Name, order_id: &Name, row: &OrderRow) -> Value {
    let mut answer = json!({
        "tenant": tenant,
        "order_id": order_id,
        "status": row.status(),
        "updated_at": rfc3339(row.updated_at),
    });
    if let Some((customer_id, lines, total, placed_at)) = &row.placed {
        answer["customer_id"] = json!(customer_id);
        answer["lines"] = json!(lines.iter().map(|l| json!({"sku": l.sku, "location": l.location, "qty": l.qty, "price": l.price})).collect::<Vec<_>>());
        answer["total"] = json!(total);
        answer["placed_at"] = json!(rfc3339(*placed_at));
    }
    if let Some(reason) = &row.cancelled {
        answer["reason"] = json!(reason);
    }
    answer
}

/// An alert event (`alert.low_stock.raised`, ...), as written to the alerts
/// topic, streamed and delivered to webhooks.
pub fn alert_event_json(alert: &Alert, epoch: Epoch) -> Value {
    let mut event = json!({
        "id": alert.id(),
        "type": alert.event_type(),
        "tenant": alert.key.tenant,
        "sku": alert.key.sku,
        "location": alert.key.location,
        "kind": alert.kind.name(),
        "state": if alert.raised { "raised" } else { "cleared" },
        "available": alert.available,
        "threshold": alert.threshold,
        "target_level": alert.target_level,
        "transition": alert.transition,
        "epoch": epoch,
        "ts": rfc3339(alert.ts),
    });
    if alert.raised {
        event["suggested_reorder_qty"] = json!(alert.suggested_reorder_qty);
    }
    event
}

/// A row of the `low_stock` view: a stock row whose low-stock alert is
/// active, with its current quantities (`None` when no such alert).
pub fn low_stock_row(alerts: &AlertPair, stock: Option<&StockDelta>) -> Option<LowStockRow> {
    let low = alerts.low_stock.as_ref().filter(|a| a.raised)?;
    let available = stock.map_or(low.available, |s| s.available());
    Some(LowStockRow {
        available,
        threshold: low.threshold,
        target_level: low.target_level,
        suggested_reorder_qty: low.target_level.saturating_sub(available).max(0),
        out_of_stock: alerts.out_of_stock.as_ref().is_some_and(|a| a.raised),
        since: low.ts,
    })
}

/// A row of the `low_stock` view (see [`low_stock_row`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowStockRow {
    /// Available now.
    pub available: i64,
    /// The threshold it is at or under.
    pub threshold: i64,
    /// Level a replenishment should bring it to.
    pub target_level: i64,
    /// `target_level - available`, at least 0.
    pub suggested_reorder_qty: i64,
    /// The out-of-stock alert is active too.
    pub out_of_stock: bool,
    /// Event time of the stock row when the alert was raised.
    pub since: EventTime,
}

/// A `low_stock` row as JSON.
pub fn low_stock_json(key: &StockKey, row: &LowStockRow) -> Value {
    json!({
        "tenant": key.tenant,
        "sku": key.sku,
        "location": key.location,
        "available": row.available,
        "threshold": row.threshold,
        "target_level": row.target_level,
        "suggested_reorder_qty": row.suggested_reorder_qty,
        "out_of_stock": row.out_of_stock,
        "since": rfc3339(row.since),
    })
}

/// An alert as listed by `GET /v1/alerts`: its latest transition, with the
/// stock row's current `available` (and, while active, the current suggestion).
pub fn alert_row_json(alert: &Alert, stock: Option<&StockDelta>) -> Value {
    let available = stock.map_or(alert.available, |s| s.available());
    let mut row = json!({
        "tenant": alert.key.tenant,
        "sku": alert.key.sku,
        "location": alert.key.location,
        "kind": alert.kind.name(),
        "state": if alert.raised { "active" } else { "cleared" },
        "available": available,
        "threshold": alert.threshold,
        "target_level": alert.target_level,
        "transition": alert.transition,
        "since": rfc3339(alert.ts),
        "last_event": alert.id(),
    });
    if alert.raised {
        row["suggested_reorder_qty"] = json!(alert.target_level.saturating_sub(available).max(0));
    }
    row
}

/// A `kpis` row (`group` only for custom KPIs with `group_by`).
pub fn kpi_json(row: &KpiRow) -> Value {
    let mut answer = json!({
        "tenant": row.key.tenant,
        "window": row.key.window.name(),
        "bucket": rfc3339(row.key.bucket),
        "metric": row.key.metric,
        "value": row.value.json(),
    });
    if !row.key.group.is_empty() {
        answer["group"] = json!(row.key.group);
    }
    answer
}

/// The date (`YYYY-MM-DD`, UTC) of a day bucket.
pub fn day_text(day: EventTime) -> String {
    chrono::DateTime::from_timestamp_millis(day).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// A `top_skus` row: one tenant and day, best first.
pub fn top_skus_json(tenant: &Name, day: EventTime, top: &TopSkus) -> Value {
    json!({
        "tenant": tenant,
        "day": day_text(day),
        "skus": top.skus.iter().enumerate().map(|(i, (sku, units))| json!({"rank": i + 1, "sku": sku, "units": units})).collect::<Vec<_>>(),
    })
}
