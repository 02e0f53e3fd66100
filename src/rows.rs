//! The JSON shape of every view row and of alert events: one place, shared by
//! point reads, listings, change streams and the alerts topic, so a row looks
//! the same wherever a client meets it.

use serde_json::{json, Value};
use std::borrow::Cow;
use stockflow_dataflows::alert_rows::LowStockRow;
use stockflow_dataflows::alerts::{Alert, AlertKind};
use stockflow_dataflows::kpis::{KpiRow, TopSkus};
use stockflow_dataflows::model::{Epoch, EventTime, ItemRow, Name, SkuKey, StockDelta, StockKey};
use stockflow_dataflows::order_rows::OrderRow;

/// RFC 3339 text of an event time, in UTC with milliseconds.
pub fn rfc3339(ms: EventTime) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
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
        answer["lines"] = json!(lines
            .iter()
            .map(|l| json!({"sku": l.sku, "location": l.location, "qty": l.qty, "price": l.price}))
            .collect::<Vec<_>>());
        answer["total"] = json!(total);
        answer["placed_at"] = json!(rfc3339(*placed_at));
    }
    if let Some(reason) = &row.cancelled {
        answer["reason"] = json!(reason);
    }
    answer
}

/// An alert event: a transition as the alerts topic, change streams and
/// webhooks carry it. Typed rather than built as a JSON value: an alert storm
/// serializes hundreds of thousands of them on the publisher's path. Fields
/// in alphabetical order, the order the JSON has always had. The same type
/// reads them back (the engine at start, the ClickHouse sink), borrowing
/// the strings from the message where it can.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertEvent<'a> {
    /// Available at the transition.
    pub available: i64,
    /// The epoch the transition happened in.
    pub epoch: Epoch,
    /// The transition's stable id (see [`Alert::id`]).
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// `low_stock` or `out_of_stock`.
    pub kind: AlertKind,
    /// The stock row's location.
    #[serde(borrow)]
    pub location: Cow<'a, str>,
    /// The stock row's sku.
    #[serde(borrow)]
    pub sku: Cow<'a, str>,
    /// `raised` or `cleared`.
    #[serde(borrow)]
    pub state: Cow<'a, str>,
    /// `target_level - available` (at least 0); only when raised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_reorder_qty: Option<i64>,
    /// The target level in force.
    pub target_level: i64,
    /// The stock row's tenant.
    #[serde(borrow)]
    pub tenant: Cow<'a, str>,
    /// The threshold in force.
    pub threshold: i64,
    /// How many transitions the row's alert of this kind has had.
    pub transition: u64,
    /// Event time of the row's newest event, RFC 3339.
    pub ts: Option<String>,
    /// `alert.low_stock.raised`, ...
    #[serde(rename = "type", borrow)]
    pub event_type: Cow<'a, str>,
}

impl<'a> AlertEvent<'a> {
    /// The event of `alert`, a transition of `epoch`.
    pub fn of(alert: &'a Alert, epoch: Epoch) -> AlertEvent<'a> {
        AlertEvent {
            available: alert.available,
            epoch,
            id: Cow::Owned(alert.id()),
            kind: alert.kind,
            location: Cow::Borrowed(&alert.key.location),
            sku: Cow::Borrowed(&alert.key.sku),
            state: Cow::Borrowed(if alert.raised { "raised" } else { "cleared" }),
            suggested_reorder_qty: alert.raised.then_some(alert.suggested_reorder_qty),
            target_level: alert.target_level,
            tenant: Cow::Borrowed(&alert.key.tenant),
            threshold: alert.threshold,
            transition: alert.transition,
            ts: rfc3339(alert.ts),
            event_type: Cow::Borrowed(alert.event_type()),
        }
    }
}

/// [`AlertEvent`] as a JSON value.
pub fn alert_event_json(alert: &Alert, epoch: Epoch) -> Value {
    serde_json::to_value(AlertEvent::of(alert, epoch)).expect("alert events serialize")
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
    chrono::DateTime::from_timestamp_millis(day)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// A `top_skus` row: one tenant and day, best first.
pub fn top_skus_json(tenant: &Name, day: EventTime, top: &TopSkus) -> Value {
    json!({
        "tenant": tenant,
        "day": day_text(day),
        "skus": top.skus.iter().enumerate().map(|(i, (sku, units))| json!({"rank": i + 1, "sku": sku, "units": units})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_dataflows::alerts::AlertKind;

    /// The alert event's bytes are the contract of the alerts topic: the
    /// typed event writes what the JSON value always did, field for field.
    #[test]
    fn an_alert_event_writes_the_documented_fields_in_their_order() {
        let key = StockKey {
            tenant: "acme".into(),
            sku: "A-1".into(),
            location: "W\"1".into(),
        };
        for (raised, kind) in [(true, AlertKind::LowStock), (false, AlertKind::OutOfStock)] {
            let alert = Alert {
                key: key.clone(),
                kind,
                raised,
                transition: if raised { 3 } else { 4 },
                available: 2,
                threshold: 5,
                target_level: 10,
                suggested_reorder_qty: if raised { 8 } else { 0 },
                ts: 1_700_000_000_500,
            };
            let mut expected = json!({
                "id": alert.id(),
                "type": alert.event_type(),
                "tenant": "acme",
                "sku": "A-1",
                "location": "W\"1",
                "kind": kind.name(),
                "state": if raised { "raised" } else { "cleared" },
                "available": 2,
                "threshold": 5,
                "target_level": 10,
                "transition": alert.transition,
                "epoch": 9,
                "ts": "2023-11-14T22:13:20.500Z",
            });
            if raised {
                expected["suggested_reorder_qty"] = json!(8);
            }
            let written = serde_json::to_string(&AlertEvent::of(&alert, 9)).unwrap();
            assert_eq!(written, serde_json::to_string(&expected).unwrap());
            let read: AlertEvent = serde_json::from_str(&written).unwrap();
            assert_eq!(read, AlertEvent::of(&alert, 9), "read back as written");
            assert_eq!(alert_event_json(&alert, 9), expected);
        }
    }
}
