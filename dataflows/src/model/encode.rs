//! Event → stockflow JSON (docs/formats.md): what the decider appends to the
//! event topic. [`super::decode_event`] reads it back to the same event.

use super::{Event, EventBody, OrderStatus};
use serde_json::{json, Map, Value};

/// The stockflow JSON of an event (`ts` in epoch milliseconds).
///
/// `stock.level` (an absolute state of the `inventory-cqrs` format) has no
/// stockflow wire form; it is written with type `stock.level` for the record
/// and is not read back by `decode_event`.
pub fn encode_event(event: &Event) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(event.id));
    out.insert("type".into(), json!(event.body.type_name()));
    out.insert("tenant".into(), json!(event.tenant));
    out.insert("ts".into(), json!(event.ts));
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            out.insert(key.into(), value);
        }
    };
    match &event.body {
        EventBody::StockState {
            sku,
            location,
            on_hand,
            reserved,
            changes,
        } => {
            put("sku", json!(sku));
            put("location", json!(location));
            put("on_hand", json!(on_hand));
            put("reserved", json!(reserved));
            put("changes", json!(changes));
        }
        EventBody::ItemCreated {
            sku,
            name,
            price,
            category,
            reorder_point,
            target_level,
            initial,
        } => {
            put("sku", json!(sku));
            put("name", json!(name));
            put("price", json!(price));
            if !category.is_empty() {
                put("category", json!(category));
            }
            put("reorder_point", json!(reorder_point));
            put("target_level", json!(target_level));
            if !initial.is_empty() {
                put(
                    "stock",
                    Value::Object(
                        initial
                            .iter()
                            .map(|(location, qty)| (location.to_string(), json!(qty)))
                            .collect(),
                    ),
                );
            }
        }
        EventBody::ItemUpdated {
            sku,
            name,
            price,
            category,
            reorder_point,
            target_level,
        } => {
            put("sku", json!(sku));
            put("name", json!(name));
            put("price", json!(price));
            put("category", json!(category));
            put("reorder_point", json!(reorder_point));
            put("target_level", json!(target_level));
        }
        EventBody::ItemDeleted { sku } => put("sku", json!(sku)),
        EventBody::StockAdjusted {
            sku,
            location,
            qty,
            reason,
        } => {
            put("sku", json!(sku));
            put("location", json!(location));
            put("qty", json!(qty));
            if !reason.is_empty() {
                put("reason", json!(reason));
            }
        }
        EventBody::StockReserved {
            sku,
            location,
            qty,
            reservation_id,
            order_id,
        } => {
            put("sku", json!(sku));
            put("location", json!(location));
            put("qty", json!(qty));
            put("reservation_id", json!(reservation_id));
            put("order_id", json!(order_id));
        }
        EventBody::StockReleased { reservation_id }
        | EventBody::StockCommitted { reservation_id } => {
            put("reservation_id", json!(reservation_id))
        }
        EventBody::StockLevel {
            sku,
            location,
            on_hand,
            reserved,
            version,
        } => {
            put("sku", json!(sku));
            put("location", json!(location));
            put("on_hand", json!(on_hand));
            put("reserved", json!(reserved));
            put("version", json!(version));
        }
        EventBody::ReservationRejected {
            command_id,
            reason,
            sku,
        } => {
            put("command_id", json!(command_id));
            put("reason", json!(reason));
            put("sku", json!(sku));
        }
        EventBody::OrderPlaced {
            order_id,
            customer_id,
            lines,
            total,
        } => {
            put("order_id", json!(order_id));
            put("customer_id", json!(customer_id));
            put("lines", Value::Array(lines.iter().map(|l| json!({"sku": l.sku, "location": l.location, "qty": l.qty, "price": l.price})).collect()));
            put("total", json!(total));
        }
        EventBody::OrderStatus {
            order_id,
            status,
            reason,
        } => {
            debug_assert!(matches!(
                status,
                OrderStatus::Confirmed | OrderStatus::Cancelled | OrderStatus::Shipped
            ));
            put("order_id", json!(order_id));
            put("reason", json!(reason));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{decode_event, Money, Name, OrderLine, RecordContext};

    #[test]
    fn every_event_type_reads_back_the_same() {
        let n = |s: &str| Name::from(s);
        let bodies = vec![
            EventBody::ItemCreated {
                sku: n("A"),
                name: "Kettle \"deluxe\"".into(),
                price: Money::parse("12.3456").unwrap(),
                category: n("home"),
                reorder_point: Some(4),
                target_level: Some(20),
                initial: vec![(n("m"), 3), (n("n"), 0)],
            },
            EventBody::ItemCreated {
                sku: n("B"),
                name: "x".into(),
                price: Money::ZERO,
                category: n(""),
                reorder_point: None,
                target_level: None,
                initial: vec![],
            },
            EventBody::ItemUpdated {
                sku: n("A"),
                name: None,
                price: Some(Money::from_cents(5)),
                category: None,
                reorder_point: Some(0),
                target_level: None,
            },
            EventBody::ItemDeleted { sku: n("A") },
            EventBody::StockAdjusted {
                sku: n("A"),
                location: n("m"),
                qty: -7,
                reason: n("sale"),
            },
            EventBody::StockAdjusted {
                sku: n("A"),
                location: n("m"),
                qty: 7,
                reason: n(""),
            },
            EventBody::StockReserved {
                sku: n("A"),
                location: n("m"),
                qty: 2,
                reservation_id: n("r:1"),
                order_id: Some(n("o@1")),
            },
            EventBody::StockReleased {
                reservation_id: n("r:1"),
            },
            EventBody::StockCommitted {
                reservation_id: n("r:1"),
            },
            EventBody::ReservationRejected {
                command_id: n("c1"),
                reason: "insufficient stock".into(),
                sku: Some(n("A")),
            },
            EventBody::OrderPlaced {
                order_id: n("o1"),
                customer_id: n("c"),
                lines: vec![OrderLine {
                    sku: n("A"),
                    location: n("m"),
                    qty: 2,
                    price: Money::from_cents(150),
                }],
                total: Money::from_cents(300),
            },
            EventBody::OrderStatus {
                order_id: n("o1"),
                status: OrderStatus::Cancelled,
                reason: Some("line 1 rejected".into()),
            },
            EventBody::OrderStatus {
                order_id: n("o1"),
                status: OrderStatus::Shipped,
                reason: None,
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let event = Event {
                tenant: n("acme"),
                id: Name::from(format!("cmd:x:{i}")),
                seq: 9,
                ts: 1_700_000_000_123,
                body,
            };
            let bytes = serde_json::to_vec(&encode_event(&event)).unwrap();
            let back = decode_event(
                &bytes,
                RecordContext {
                    offset: 9,
                    log_time: None,
                },
            )
            .unwrap();
            assert_eq!(back, event, "{}", String::from_utf8_lossy(&bytes));
        }
    }
}
