//! The `tradex` format: the event topics of the Latam Tradex microservices,
//! whose payloads are camelCase and carry no type or tenant (the topic says
//! what a message is). The mapping, field by field, is in `docs/formats.md`.

use super::decode::{event_time, identifier, name, non_negative_money, present, quantity, required, text, DecodeError, RecordContext, Sign, MAX_LINES};
use super::{Event, EventBody, Name, OrderLine, OrderStatus, DEFAULT_TENANT};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Location that Tradex stock lives in (the system has one stock per product).
pub const TRADEX_LOCATION: &str = "default";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTradex<'a> {
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    items: Option<Vec<RawItem<'a>>>,
    #[serde(borrow)]
    total_amount: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    operation: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    updated_at: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem<'a> {
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
}

/// Decodes one Tradex message read from `topic`/`partition` into the events
/// it means (possibly none: `user.registered` changes no view).
pub fn decode_tradex(topic: &str, partition: u32, payload: &[u8], ctx: RecordContext) -> Result<Vec<Event>, DecodeError> {
    let raw: RawTradex<'_> = serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    // The topic names the message: `order.created`, or any name ending in `.order.created`.
    const KINDS: [&str; 4] = ["order.created", "order.updated", "stock.updated", "user.registered"];
    let kind = KINDS.iter().find(|k| topic == **k || topic.strip_suffix(**k).is_some_and(|p| p.ends_with('.'))).copied().unwrap_or(topic);
    let time = |raw: Option<&RawValue>| -> Result<i64, DecodeError> {
        match present(raw) {
            Some(t) => event_time(t),
            None => ctx.log_time.ok_or_else(|| DecodeError::Missing("createdAt".into())),
        }
    };
    let event = |id: String, ts: i64, body: EventBody| Event { tenant: Name::from(DEFAULT_TENANT), id: Name::from(id), seq: ctx.offset, ts, body };
    match kind {
        "order.created" => {
            let order_id = identifier("orderId", required("orderId", raw.order_id)?)?;
            let customer_id = identifier("userId", required("userId", raw.user_id)?)?;
            let items = raw.items.ok_or_else(|| DecodeError::Missing("items".into()))?;
            if items.is_empty() || items.len() > MAX_LINES {
                return Err(DecodeError::Invalid { field: "items".into(), reason: format!("must hold 1 to {MAX_LINES} items, got {}", items.len()) });
            }
            let mut lines = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let field = |f: &str| format!("items[{i}].{f}");
                lines.push(OrderLine {
                    sku: name(&field("productId"), required(&field("productId"), item.product_id)?)?,
                    location: Name::from(TRADEX_LOCATION),
                    qty: quantity(&field("quantity"), required(&field("quantity"), item.quantity)?, Sign::Positive)?,
                    price: non_negative_money(&field("price"), required(&field("price"), item.price)?)?,
                });
            }
            let total = match present(raw.total_amount) {
                Some(t) => non_negative_money("totalAmount", t)?,
                None => super::decode::line_total(&lines)?,
            };
            let ts = time(raw.created_at)?;
            // As Tradex's catalog service does: each item leaves the stock of its product.
            let mut events: Vec<Event> = lines
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    let body = EventBody::StockAdjusted { sku: line.sku.clone(), location: line.location.clone(), qty: -line.qty, reason: Name::from("order") };
                    event(format!("tradex:{order_id}:{i}"), ts, body)
                })
                .collect();
            events.push(event(format!("tradex:{order_id}"), ts, EventBody::OrderPlaced { order_id, customer_id, lines, total }));
            Ok(events)
        }
        "order.updated" => {
            let order_id = identifier("orderId", required("orderId", raw.order_id)?)?;
            let status = text("status", required("status", raw.status)?, 64)?;
            let status = match status.to_ascii_lowercase().as_str() {
                "confirmed" | "paid" | "completed" => OrderStatus::Confirmed,
                "cancelled" | "canceled" | "rejected" => OrderStatus::Cancelled,
                "shipped" | "delivered" => OrderStatus::Shipped,
                // Pending and other intermediate states change no view.
                _ => return Ok(Vec::new()),
            };
            let ts = time(raw.updated_at)?;
            Ok(vec![event(format!("tradex:{order_id}:{status:?}"), ts, EventBody::OrderStatus { order_id, status, reason: None })])
        }
        "stock.updated" => {
            let sku = name("productId", required("productId", raw.product_id)?)?;
            let qty = quantity("quantity", required("quantity", raw.quantity)?, Sign::Positive)?;
            let operation = text("operation", required("operation", raw.operation)?, 16)?;
            match operation.as_str() {
                "increase" => {
                    let ts = time(raw.updated_at)?;
                    let body = EventBody::StockAdjusted { sku, location: Name::from(TRADEX_LOCATION), qty, reason: Name::from("restock") };
                    // The message carries no id: its position in the log is its identity.
                    Ok(vec![event(format!("tradex:stock:{topic}:{partition}:{}", ctx.offset), ts, body)])
                }
                // Tradex's catalog publishes a decrease after applying an order.created,
                // which stockflow has already applied: reading it again would count twice.
                "decrease" => Ok(Vec::new()),
                other => Err(DecodeError::Invalid { field: "operation".into(), reason: format!("expected `increase` or `decrease`, got `{other}`") }),
            }
        }
        "user.registered" => Ok(Vec::new()),
        other => Err(DecodeError::UnknownType(format!("tradex topic `{other}` (expected order.created, order.updated, stock.updated or user.registered)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Money;

    fn ctx() -> RecordContext {
        RecordContext { offset: 3, log_time: Some(5) }
    }

    #[test]
    fn order_created_places_the_order_and_takes_the_stock() {
        let payload = br#"{"orderId":"7b1c","userId":"u-9","items":[{"productId":"P-1","quantity":2,"price":10.5},{"productId":"P-2","quantity":1,"price":"3"}],"totalAmount":24,"status":"pending","createdAt":"2026-01-01T00:00:00Z"}"#;
        let events = decode_tradex("order.created", 0, payload, ctx()).unwrap();
        assert_eq!(decode_tradex("shop-eu.order.created", 0, payload, ctx()).unwrap(), events, "a prefixed topic is the same kind");
        assert_eq!(events.len(), 3);
        assert!(matches!(&events[0].body, EventBody::StockAdjusted { sku, qty: -2, location, .. } if sku == "P-1" && location == "default"));
        assert!(matches!(&events[1].body, EventBody::StockAdjusted { sku, qty: -1, .. } if sku == "P-2"));
        assert!(matches!(&events[2].body, EventBody::OrderPlaced { total, lines, .. } if *total == Money::parse("24").unwrap() && lines.len() == 2));
        assert_eq!(events[2].ts, 1_767_225_600_000);
        assert_eq!(events[0].id, "tradex:7b1c:0", "ids derive from the order, so a redelivery is one order");
    }

    #[test]
    fn stock_updated_increases_and_ignores_the_echo_of_orders() {
        let up = decode_tradex("stock.updated", 0, br#"{"productId":"P-1","quantity":5,"operation":"increase"}"#, ctx()).unwrap();
        assert!(matches!(&up[0].body, EventBody::StockAdjusted { qty: 5, .. }));
        assert_eq!(up[0].ts, 5, "no updatedAt: the log time");
        assert!(decode_tradex("stock.updated", 0, br#"{"productId":"P-1","quantity":5,"operation":"decrease"}"#, ctx()).unwrap().is_empty());
        let bad = decode_tradex("stock.updated", 0, br#"{"productId":"P-1","quantity":5,"operation":"grow"}"#, ctx()).unwrap_err();
        assert_eq!(bad.to_string(), "field `operation`: expected `increase` or `decrease`, got `grow`");
    }

    #[test]
    fn errors_name_the_camel_case_field() {
        let cases = [
            (
                "order.created",
                r#"{"orderId":"o","userId":"u","items":[{"productId":"P","quantity":0,"price":1}]}"#,
                "field `items[0].quantity`: must be greater than 0",
            ),
            ("order.created", r#"{"orderId":"o","items":[]}"#, "missing required field `userId`"),
            ("order.updated", r#"{"orderId":"o"}"#, "missing required field `status`"),
            ("orders.misc", r#"{}"#, "tradex topic `orders.misc`"),
        ];
        for (topic, payload, expected) in cases {
            let error = decode_tradex(topic, 0, payload.as_bytes(), ctx()).unwrap_err().to_string();
            assert!(error.contains(expected), "{topic} {payload}: {error}");
        }
        assert!(decode_tradex("user.registered", 0, br#"{"userId":"u","email":"a@b"}"#, ctx()).unwrap().is_empty());
        let cancelled = decode_tradex("order.updated", 0, br#"{"orderId":"o","status":"CANCELLED"}"#, ctx()).unwrap();
        assert!(matches!(cancelled[0].body, EventBody::OrderStatus { status: OrderStatus::Cancelled, .. }));
    }
}
