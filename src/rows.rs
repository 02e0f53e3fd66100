//! The JSON shape of every view row and of alert events: one place, shared by
//! point reads, listings, change streams and the alerts topic, so a row looks
//! the same wherever a client meets it.
//! Long because every row type and its schema is here, in one place.

use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use stockflow_dataflows::alert_rows::LowStockRow;
use stockflow_dataflows::alerts::{Alert, AlertKind};
use stockflow_dataflows::kpis::{KpiKey, KpiValue, TopSkus};
use stockflow_dataflows::model::{
    Epoch, EventTime, ItemRow, Money, Name, SkuKey, StockDelta, StockKey,
};
use stockflow_dataflows::order_rows::OrderRow;
use utoipa::ToSchema;

/// RFC 3339 text of an event time, in UTC with milliseconds.
pub fn rfc3339(ms: EventTime) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// A row as a JSON value (the typed rows below serialize their fields in
/// alphabetical order, the order a JSON value keeps).
pub fn value(row: impl Serialize) -> Value {
    serde_json::to_value(row).expect("rows serialize")
}

/// Next offset per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<u32, u64>>;

/// Where the views stand: the epoch and, per topic and partition, the next
/// offset not yet reflected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AsOf {
    /// Last completed epoch (0 before the first one).
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// Topic → partition → next offset to be read.
    // JSON object keys are strings: the partition's number as text.
    #[schema(value_type = BTreeMap<String, BTreeMap<String, u64>>)]
    pub offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl AsOf {
    /// True when every position in `targets` has been reached.
    pub fn covers(&self, targets: &BTreeMap<String, BTreeMap<u32, u64>>) -> bool {
        targets.iter().all(|(topic, partitions)| {
            partitions.iter().all(|(partition, offset)| {
                self.offsets
                    .get(topic)
                    .and_then(|p| p.get(partition))
                    .is_some_and(|reached| reached >= offset)
            })
        })
    }
}

/// An event as the events topic carries it and a command's outcome lists
/// it (docs/formats.md): `id`, `type`, `tenant` and `ts` always, the other
/// fields as its type has them. Only a schema: events are written by
/// `stockflow_dataflows::model::encode_event`.
#[derive(ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)] // Never built: it only describes.
pub struct EventSchema {
    /// The event's id (de-duplication key within its tenant).
    id: String,
    /// `item.created`, `item.updated`, `item.deleted`, `stock.adjusted`,
    /// `stock.reserved`, `stock.released`, `stock.committed`, `stock.level`,
    /// `reservation.rejected`, `order.placed`, `order.confirmed`,
    /// `order.cancelled` or `order.shipped`.
    #[schema(
        pattern = r"^(item\.(created|updated|deleted)|stock\.(adjusted|reserved|released|committed|level)|reservation\.rejected|order\.(placed|confirmed|cancelled|shipped))$"
    )]
    r#type: String,
    /// The tenant.
    tenant: String,
    /// Event time, ms since the Unix epoch.
    ts: i64,
    /// The sku (item and stock events).
    sku: Option<String>,
    /// The location (stock events).
    location: Option<String>,
    /// Quantity (`stock.adjusted`: signed; `stock.reserved`: positive).
    qty: Option<i64>,
    /// Item name.
    name: Option<String>,
    /// Item price.
    price: Option<f64>,
    /// Item category.
    category: Option<String>,
    /// Item reorder point.
    reorder_point: Option<i64>,
    /// Item target level.
    target_level: Option<i64>,
    /// `item.created`: initial stock per location.
    stock: Option<BTreeMap<String, i64>>,
    /// Adjustment or rejection reason.
    reason: Option<String>,
    /// Reservation id (`stock.reserved`, `stock.released`, `stock.committed`).
    reservation_id: Option<String>,
    /// Order id (`stock.reserved` and order events).
    order_id: Option<String>,
    /// `reservation.rejected`: the command refused.
    command_id: Option<String>,
    /// `order.placed`: the customer.
    customer_id: Option<String>,
    /// `order.placed`: sku, location, qty and price of each line.
    lines: Option<Vec<serde_json::Value>>,
    /// `stock.level`: quantity on hand.
    on_hand: Option<i64>,
    /// `stock.level`: quantity reserved.
    reserved: Option<i64>,
    /// `stock.level`: the row's version.
    version: Option<i64>,
    /// Order total.
    total: Option<f64>,
}

/// The quantities of a stock row or of a sku's totals; an absent row (an
/// item with no stock yet) is zeros with no `updated_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quantities {
    /// `on_hand - reserved`.
    pub available: i64,
    /// Physical quantity on the shelf.
    pub on_hand: i64,
    /// Set aside by open reservations.
    pub reserved: i64,
    /// Event time of the newest event that touched the row, RFC 3339.
    #[schema(required = true)]
    pub updated_at: Option<String>,
}

impl Quantities {
    /// The quantities of `delta` (zeros when absent).
    pub fn of(delta: Option<&StockDelta>) -> Quantities {
        let updated_at = delta.and_then(|d| rfc3339(d.updated_at));
        let delta = delta.copied().unwrap_or_default();
        Quantities {
            available: delta.available(),
            on_hand: delta.on_hand,
            reserved: delta.reserved,
            updated_at,
        }
    }
}

/// A `stock` row.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stock<'a> {
    /// `on_hand - reserved`.
    pub available: i64,
    /// The location.
    pub location: &'a str,
    /// Physical quantity on the shelf.
    pub on_hand: i64,
    /// Set aside by open reservations.
    pub reserved: i64,
    /// The sku.
    pub sku: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Event time of the newest event that touched the row, RFC 3339.
    #[schema(required = true)]
    pub updated_at: Option<String>,
}

impl<'a> Stock<'a> {
    /// The row of `key`.
    pub fn of(key: &'a StockKey, delta: &StockDelta) -> Stock<'a> {
        Stock {
            available: delta.available(),
            location: &key.location,
            on_hand: delta.on_hand,
            reserved: delta.reserved,
            sku: &key.sku,
            tenant: &key.tenant,
            updated_at: rfc3339(delta.updated_at),
        }
    }
}

/// A `stock_totals` row: a sku's quantities over its locations.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockTotal<'a> {
    /// `on_hand - reserved`.
    pub available: i64,
    /// Physical quantity on the shelf.
    pub on_hand: i64,
    /// Set aside by open reservations.
    pub reserved: i64,
    /// The sku.
    pub sku: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Event time of the newest event that touched the sku's stock, RFC 3339.
    #[schema(required = true)]
    pub updated_at: Option<String>,
    /// Stock changes applied to the sku: what a command's `expected_version` is compared with.
    pub version: i64,
}

impl<'a> StockTotal<'a> {
    /// The row of `key`.
    pub fn of(key: &'a SkuKey, delta: &StockDelta) -> StockTotal<'a> {
        StockTotal {
            available: delta.available(),
            on_hand: delta.on_hand,
            reserved: delta.reserved,
            sku: &key.sku,
            tenant: &key.tenant,
            updated_at: rfc3339(delta.updated_at),
            version: delta.changes,
        }
    }
}

/// An `items` row.
#[derive(Debug, Serialize, ToSchema)]
pub struct Item<'a> {
    /// False once the item was deleted (and not re-created).
    pub active: bool,
    /// The category.
    pub category: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Unit price, in major units.
    #[schema(value_type = f64)]
    pub price: Money,
    /// Per-item low-stock threshold, if set.
    #[schema(required = true)]
    pub reorder_point: Option<i64>,
    /// The sku.
    pub sku: &'a str,
    /// Level a replenishment brings the stock back to, if set.
    #[schema(required = true)]
    pub target_level: Option<i64>,
    /// The tenant.
    pub tenant: &'a str,
    /// Event time of the last catalogue event applied, RFC 3339.
    #[schema(required = true)]
    pub updated_at: Option<String>,
}

impl<'a> Item<'a> {
    /// The row of `key`.
    pub fn of(key: &'a SkuKey, row: &'a ItemRow) -> Item<'a> {
        Item {
            active: row.active,
            category: &row.category,
            name: &row.name,
            price: row.price,
            reorder_point: row.reorder_point,
            sku: &key.sku,
            target_level: row.target_level,
            tenant: &key.tenant,
            updated_at: rfc3339(row.updated_at),
        }
    }
}

/// An `orders` row. The fields of `order.placed` (customer, lines, total,
/// placed_at) are absent until it is seen; `reason` only once cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub struct Order<'a> {
    /// The customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<&'a str>,
    /// The order's lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<OrderLineRow<'a>>>,
    /// The order id.
    pub order_id: &'a str,
    /// Event time of `order.placed`, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub placed_at: Option<Option<String>>,
    /// Why it was cancelled (null when no reason was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason: Option<Option<&'a str>>,
    /// `pending`, `confirmed`, `shipped` or `cancelled`.
    pub status: &'static str,
    /// The tenant.
    pub tenant: &'a str,
    /// The order's total, in major units.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub total: Option<Money>,
    /// Event time of the order's newest event, RFC 3339.
    #[schema(required = true)]
    pub updated_at: Option<String>,
}

/// A line of an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineRow<'a> {
    /// Location the line ships from.
    pub location: &'a str,
    /// Unit price, in major units.
    #[schema(value_type = f64)]
    pub price: Money,
    /// Quantity.
    pub qty: i64,
    /// The sku.
    pub sku: &'a str,
}

impl<'a> Order<'a> {
    /// The row of order `order_id` of `tenant`.
    pub fn of(tenant: &'a Name, order_id: &'a Name, row: &'a OrderRow) -> Order<'a> {
        let placed = row.placed.as_ref();
        Order {
            customer_id: placed.map(|(customer_id, ..)| customer_id.as_str()),
            lines: placed.map(|(_, lines, ..)| {
                lines
                    .iter()
                    .map(|l| OrderLineRow {
                        location: &l.location,
                        price: l.price,
                        qty: l.qty,
                        sku: &l.sku,
                    })
                    .collect()
            }),
            order_id,
            placed_at: placed.map(|(.., placed_at)| rfc3339(*placed_at)),
            reason: row.cancelled.as_ref().map(|reason| reason.as_deref()),
            status: row.status(),
            tenant,
            total: placed.map(|(_, _, total, _)| *total),
            updated_at: rfc3339(row.updated_at),
        }
    }
}

/// An alert event: a transition as the alerts topic, change streams and
/// webhooks carry it. Typed rather than built as a JSON value: an alert storm
/// serializes hundreds of thousands of them on the publisher's path. Fields
/// in alphabetical order, the order the JSON has always had. The same type
/// reads them back (the engine at start, the ClickHouse sink), borrowing
/// the strings from the message where it can.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct AlertEvent<'a> {
    /// Available at the transition.
    pub available: i64,
    /// The epoch the transition happened in.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The transition's stable id (see [`Alert::id`]).
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub id: Cow<'a, str>,
    /// `low_stock` or `out_of_stock`.
    #[schema(value_type = String)]
    pub kind: AlertKind,
    /// The stock row's location.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub location: Cow<'a, str>,
    /// The stock row's sku.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub sku: Cow<'a, str>,
    /// `raised` or `cleared`.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub state: Cow<'a, str>,
    /// `target_level - available` (at least 0); only when raised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_reorder_qty: Option<i64>,
    /// The target level in force.
    pub target_level: i64,
    /// The stock row's tenant.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub tenant: Cow<'a, str>,
    /// The threshold in force.
    pub threshold: i64,
    /// How many transitions the row's alert of this kind has had.
    pub transition: u64,
    /// Event time of the row's newest event, RFC 3339.
    #[schema(required = true)]
    pub ts: Option<String>,
    /// `alert.low_stock.raised`, ...
    #[serde(rename = "type", borrow)]
    #[schema(value_type = String)]
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

/// A `low_stock` row: a stock row whose low-stock alert is active (also a
/// suggestion of `GET /v1/replenishment`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LowStock<'a> {
    /// Available now.
    pub available: i64,
    /// The location.
    pub location: &'a str,
    /// The out-of-stock alert is active too.
    pub out_of_stock: bool,
    /// Event time of the stock row when the alert was raised, RFC 3339.
    #[schema(required = true)]
    pub since: Option<String>,
    /// The sku.
    pub sku: &'a str,
    /// `target_level - available`, at least 0.
    pub suggested_reorder_qty: i64,
    /// Level a replenishment should bring it to.
    pub target_level: i64,
    /// The tenant.
    pub tenant: &'a str,
    /// The threshold it is at or under.
    pub threshold: i64,
}

impl<'a> LowStock<'a> {
    /// The row of `key`.
    pub fn of(key: &'a StockKey, row: &LowStockRow) -> LowStock<'a> {
        LowStock {
            available: row.available,
            location: &key.location,
            out_of_stock: row.out_of_stock,
            since: rfc3339(row.since),
            sku: &key.sku,
            suggested_reorder_qty: row.suggested_reorder_qty,
            target_level: row.target_level,
            tenant: &key.tenant,
            threshold: row.threshold,
        }
    }
}

/// An alert as listed by `GET /v1/alerts`: its latest transition, with the
/// stock row's current `available` (and, while active, the current suggestion).
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertRow<'a> {
    /// Available now.
    pub available: i64,
    /// `low_stock` or `out_of_stock`.
    pub kind: &'static str,
    /// The id of the latest transition's event.
    pub last_event: String,
    /// The location.
    pub location: &'a str,
    /// Event time of the latest transition, RFC 3339.
    #[schema(required = true)]
    pub since: Option<String>,
    /// The sku.
    pub sku: &'a str,
    /// `active` or `cleared`.
    pub state: &'static str,
    /// `target_level - available` now, at least 0; only while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_reorder_qty: Option<i64>,
    /// The target level in force.
    pub target_level: i64,
    /// The tenant.
    pub tenant: &'a str,
    /// The threshold in force.
    pub threshold: i64,
    /// How many transitions the alert has had.
    pub transition: u64,
}

impl<'a> AlertRow<'a> {
    /// The row of `alert`, with the stock row's current quantities if known.
    pub fn of(alert: &'a Alert, stock: Option<&StockDelta>) -> AlertRow<'a> {
        let available = stock.map_or(alert.available, |s| s.available());
        AlertRow {
            available,
            kind: alert.kind.name(),
            last_event: alert.id(),
            location: &alert.key.location,
            since: rfc3339(alert.ts),
            sku: &alert.key.sku,
            state: if alert.raised { "active" } else { "cleared" },
            suggested_reorder_qty: alert
                .raised
                .then(|| alert.target_level.saturating_sub(available).max(0)),
            target_level: alert.target_level,
            tenant: &alert.key.tenant,
            threshold: alert.threshold,
            transition: alert.transition,
        }
    }
}

/// A `kpis` row.
#[derive(Debug, Serialize, ToSchema)]
pub struct Kpi<'a> {
    /// Start of the bucket, RFC 3339.
    #[schema(required = true)]
    pub bucket: Option<String>,
    /// The group, for custom KPIs with `group_by` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
    /// The metric.
    pub metric: &'a str,
    /// The tenant (absent from `GET /v1/kpis`, which answers one tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// Counts and sums of integers as integers, money in major units, ratios as numbers.
    #[schema(value_type = f64)]
    pub value: Value,
    /// `hour` or `day`.
    pub window: &'static str,
}

impl<'a> Kpi<'a> {
    /// The row of `key`, with its tenant.
    pub fn of(key: &'a KpiKey, value: KpiValue) -> Kpi<'a> {
        Kpi {
            bucket: rfc3339(key.bucket),
            group: (!key.group.is_empty()).then_some(key.group.as_str()),
            metric: &key.metric,
            tenant: Some(&key.tenant),
            value: value.json(),
            window: key.window.name(),
        }
    }
}

/// The date (`YYYY-MM-DD`, UTC) of a day bucket.
pub fn day_text(day: EventTime) -> String {
    chrono::DateTime::from_timestamp_millis(day)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// A `top_skus` row: one tenant and day, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopSkusRow<'a> {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The skus with the most units sold that day, best first.
    pub skus: Vec<TopSku<'a>>,
    /// The tenant.
    pub tenant: &'a str,
}

/// One sku of a `top_skus` row.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopSku<'a> {
    /// 1 for the best seller.
    pub rank: usize,
    /// The sku.
    pub sku: &'a str,
    /// Units sold that day.
    pub units: i64,
}

impl<'a> TopSkusRow<'a> {
    /// The row of `tenant`'s `day` (no skus when `top` is `None`).
    pub fn of(tenant: &'a Name, day: EventTime, top: Option<&'a TopSkus>) -> TopSkusRow<'a> {
        TopSkusRow {
            day: day_text(day),
            skus: top
                .into_iter()
                .flat_map(|top| &top.skus)
                .enumerate()
                .map(|(i, (sku, units))| TopSku {
                    rank: i + 1,
                    sku,
                    units: *units,
                })
                .collect(),
            tenant,
        }
    }
}

/// A row of any view, as change streams carry it (`row` of a change).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ViewRow<'a> {
    /// An `items` row.
    Item(Item<'a>),
    /// A `stock` row.
    Stock(Stock<'a>),
    /// A `stock_totals` row.
    StockTotal(StockTotal<'a>),
    /// An `orders` row.
    Order(Order<'a>),
    /// A `low_stock` row.
    LowStock(LowStock<'a>),
    /// An alert transition.
    Alert(AlertEvent<'a>),
    /// A `kpis` row.
    Kpi(Kpi<'a>),
    /// A `top_skus` row.
    TopSkus(TopSkusRow<'a>),
}

/// A change of a view's row, as a change stream sends it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Change<'a> {
    /// `1`: the row is inserted (or is part of the snapshot); `-1`: retracted.
    pub diff: i8,
    /// The epoch of the change (of the snapshot, for snapshot rows).
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The row.
    pub row: ViewRow<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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
