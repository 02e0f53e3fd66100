//! The `tradex` format: the event topics of the Latam Tradex microservices,
//! whose payloads are camelCase and carry no type or tenant (the topic says
//! what a message is). The mapping, field by field, is in `docs/formats.md`.

use super::decode::{
    event_time, identifier, name, non_negative_money, present, quantity, required, text,
    DecodeError, RecordContext, Sign, MAX_LINES,
};
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

/// The lines of a Tradex order (`items[{productId, quantity, price}]`, at
/// location `default`); `field` names the array in errors.
fn order_lines(
    field: &str,
    items: Option<Vec<RawItem<'_>>>,
) -> Result<Vec<OrderLine>, DecodeError> {
    let items = items.ok_or_else(|| DecodeError::Missing(field.into()))?;
    if items.is_empty() || items.len() > MAX_LINES {
        return Err(DecodeError::invalid(
            field,
            format!("must hold 1 to {MAX_LINES} items, got {}", items.len()),
        ));
    }
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        lines.push(OrderLine {
            sku: name(
                &at("productId"),
                required(&at("productId"), item.product_id)?,
            )?,
            location: Name::from(TRADEX_LOCATION),
            qty: quantity(
                &at("quantity"),
                required(&at("quantity"), item.quantity)?,
                Sign::Positive,
            )?,
            price: non_negative_money(&at("price"), required(&at("price"), item.price)?)?,
        });
    }
    Ok(lines)
}

/// Decodes one Tradex message read from `topic`/`partition` into the events
/// it means (possibly none: `user.registered` changes no view).
pub fn decode_tradex(
    topic: &str,
    partition: u32,
    payload: &[u8],
    ctx: RecordContext,
) -> Result<Vec<Event>, DecodeError> {
    let raw: RawTradex<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    // The topic names the message: `order.created`, or any name ending in `.order.created`.
    const KINDS: [&str; 4] = [
        "order.created",
        "order.updated",
        "stock.updated",
        "user.registered",
    ];
    let kind = KINDS
        .iter()
        .find(|k| topic == **k || topic.strip_suffix(**k).is_some_and(|p| p.ends_with('.')))
        .copied()
        .unwrap_or(topic);
    let time = |raw: Option<&RawValue>| -> Result<i64, DecodeError> {
        match present(raw) {
            Some(t) => event_time(t),
            None => ctx
                .log_time
                .ok_or_else(|| DecodeError::Missing("createdAt".into())),
        }
    };
    let event = |id: String, ts: i64, body: EventBody| Event {
        tenant: Name::from(DEFAULT_TENANT),
        id: Name::from(id),
        seq: ctx.offset,
        ts,
        body,
    };
    match kind {
        "order.created" => {
            let order_id = identifier("orderId", required("orderId", raw.order_id)?)?;
            let customer_id = identifier("userId", required("userId", raw.user_id)?)?;
            let lines = order_lines("items", raw.items)?;
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

/// True for the Tradex command topics (`auth.commands`, `catalog.commands`,
/// `order.commands`, or a name ending in one of them).
pub fn is_command_topic(topic: &str) -> bool {
    ["auth.commands", "catalog.commands", "order.commands"]
        .iter()
        .any(|k| topic == *k || topic.strip_suffix(k).is_some_and(|p| p.ends_with('.')))
}

#[derive(Deserialize)]
struct RawTradexCommand<'a> {
    #[serde(borrow)]
    command: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCommandData<'a> {
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    stock: Option<&'a RawValue>,
    #[serde(borrow)]
    category: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    items: Option<Vec<RawItem<'a>>>,
}

/// Decodes one message of a Tradex command topic into the stockflow
/// commands it means: `CREATE_PRODUCT` → `item.create` (its `stock` at
/// location `default`), `CREATE_ORDER` → `order.place` (a saga reserving each
/// item). Reads and user commands (`GET_PRODUCT`, `REGISTER_USER`,
/// `LOGIN_USER`) change no stock and mean nothing here. The messages carry
/// no id: a command's id is its position (`tradex:{topic hash}:{partition}:{offset}`),
/// so a re-read of the same message is one command, while a producer's
/// retry that lands at a new offset is another.
pub fn decode_tradex_command(
    topic: &str,
    partition: u32,
    payload: &[u8],
    ctx: RecordContext,
) -> Result<Vec<super::Command>, DecodeError> {
    let raw: RawTradexCommand<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let command = text("command", required("command", raw.command)?, 64)?;
    let ts = ctx
        .log_time
        .ok_or_else(|| DecodeError::Missing("timestamp".into()))?;
    // Unique across the command topics (the topic is hashed: ids stay short).
    let id = Name::from(format!(
        "tradex:{:08x}:{partition}:{}",
        super::hash_parts(0, &[topic]) & 0xffff_ffff,
        ctx.offset
    ));
    let tenant = Name::from(DEFAULT_TENANT);
    let data = || -> Result<RawCommandData<'_>, DecodeError> {
        serde_json::from_str(required("data", raw.data)?.get())
            .map_err(|e| DecodeError::invalid("data", e.to_string()))
    };
    match command.as_str() {
        "CREATE_PRODUCT" => {
            let data = data()?;
            let sku = name("data.sku", required("data.sku", data.sku)?)?;
            let stock = match present(data.stock) {
                Some(s) => quantity("data.stock", s, Sign::NonNegative)?,
                None => 0,
            };
            let intent = EventBody::ItemCreated {
                sku: sku.clone(),
                name: text("data.name", required("data.name", data.name)?, super::decode::MAX_TEXT_LEN)?,
                price: non_negative_money("data.price", required("data.price", data.price)?)?,
                category: present(data.category).map(|c| name("data.category", c)).transpose()?.unwrap_or_default(),
                reorder_point: None,
                target_level: None,
                initial: vec![(Name::from(TRADEX_LOCATION), stock)],
            };
            Ok(vec![super::Command { tenant, id, seq: ctx.offset, ts, sku, expected_version: None, intent }])
        }
        "CREATE_ORDER" => {
            let data = data()?;
            let customer_id = identifier("data.userId", required("data.userId", data.user_id)?)?;
            let order_id = match present(data.order_id) {
                Some(o) => identifier("data.orderId", o)?,
                None => Name::from(format!("tradex-{:08x}-{partition}-{}", super::hash_parts(0, &[topic]) & 0xffff_ffff, ctx.offset)),
            };
            if order_id.len() > super::command::MAX_ORDER_ID_LEN {
                return Err(DecodeError::invalid("data.orderId", format!("longer than {} bytes", super::command::MAX_ORDER_ID_LEN)));
            }
            let lines = order_lines("data.items", data.items)?;
            let total = super::decode::line_total(&lines)?;
            let intent = EventBody::OrderPlaced { order_id: order_id.clone(), customer_id, lines, total };
            Ok(vec![super::Command { tenant, id, seq: ctx.offset, ts, sku: order_id, expected_version: None, intent }])
        }
        "GET_PRODUCT" | "REGISTER_USER" | "LOGIN_USER" => Ok(Vec::new()),
        other => {
            Err(DecodeError::UnknownType(format!("tradex command `{other}` (expected CREATE_PRODUCT, CREATE_ORDER, GET_PRODUCT, REGISTER_USER or LOGIN_USER)")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Money;

    fn ctx() -> RecordContext {
        RecordContext {
            offset: 3,
            log_time: Some(5),
        }
    }

    #[test]
    fn order_created_places_the_order_and_takes_the_stock() {
        let payload = br#"{"orderId":"7b1c","userId":"u-9","items":[{"productId":"P-1","quantity":2,"price":10.5},{"productId":"P-2","quantity":1,"price":"3"}],"totalAmount":24,"status":"pending","createdAt":"2026-01-01T00:00:00Z"}"#;
        let events = decode_tradex("order.created", 0, payload, ctx()).unwrap();
        assert_eq!(
            decode_tradex("shop-eu.order.created", 0, payload, ctx()).unwrap(),
            events,
            "a prefixed topic is the same kind"
        );
        assert_eq!(events.len(), 3);
        assert!(
            matches!(&events[0].body, EventBody::StockAdjusted { sku, qty: -2, location, .. } if sku == "P-1" && location == "default")
        );
        assert!(
            matches!(&events[1].body, EventBody::StockAdjusted { sku, qty: -1, .. } if sku == "P-2")
        );
        assert!(
            matches!(&events[2].body, EventBody::OrderPlaced { total, lines, .. } if *total == Money::parse("24").unwrap() && lines.len() == 2)
        );
        assert_eq!(events[2].ts, 1_767_225_600_000);
        assert_eq!(
            events[0].id, "tradex:7b1c:0",
            "ids derive from the order, so a redelivery is one order"
        );
    }

    #[test]
    fn stock_updated_increases_and_ignores_the_echo_of_orders() {
        let up = decode_tradex(
            "stock.updated",
            0,
            br#"{"productId":"P-1","quantity":5,"operation":"increase"}"#,
            ctx(),
        )
        .unwrap();
        assert!(matches!(
            &up[0].body,
            EventBody::StockAdjusted { qty: 5, .. }
        ));
        assert_eq!(up[0].ts, 5, "no updatedAt: the log time");
        assert!(decode_tradex(
            "stock.updated",
            0,
            br#"{"productId":"P-1","quantity":5,"operation":"decrease"}"#,
            ctx()
        )
        .unwrap()
        .is_empty());
        let bad = decode_tradex(
            "stock.updated",
            0,
            br#"{"productId":"P-1","quantity":5,"operation":"grow"}"#,
            ctx(),
        )
        .unwrap_err();
        assert_eq!(
            bad.to_string(),
            "field `operation`: expected `increase` or `decrease`, got `grow`"
        );
    }

    #[test]
    fn commands_become_stockflow_commands() {
        assert!(
            is_command_topic("catalog.commands")
                && is_command_topic("eu.order.commands")
                && !is_command_topic("order.created")
        );
        let product = decode_tradex_command(
            "catalog.commands",
            1,
            br#"{"command":"CREATE_PRODUCT","data":{"name":"Mate","description":"x","sku":"P-1","price":9.5,"stock":12,"category":"food"}}"#,
            ctx(),
        )
        .unwrap();
        assert!(
            matches!(&product[0].intent, EventBody::ItemCreated { initial, .. } if initial == &vec![(Name::from("default"), 12)])
        );
        assert!(
            product[0].id.starts_with("tradex:") && product[0].id.ends_with(":1:3"),
            "{}",
            product[0].id
        );
        let other = decode_tradex_command(
            "order.commands",
            1,
            br#"{"command":"CREATE_ORDER","data":{"userId":"u","items":[{"productId":"P","quantity":1,"price":1}]}}"#,
            ctx(),
        )
        .unwrap();
        assert_ne!(
            other[0].id, product[0].id,
            "same position in another topic is another command"
        );
        let order = decode_tradex_command(
            "order.commands",
            0,
            br#"{"command":"CREATE_ORDER","data":{"userId":"u-1","items":[{"productId":"P-1","quantity":2,"price":9.5}]}}"#,
            ctx(),
        )
        .unwrap();
        assert!(
            matches!(&order[0].intent, EventBody::OrderPlaced { lines, total, .. } if lines.len() == 1 && *total == Money::parse("19").unwrap())
        );
        assert_eq!(
            order[0].sku,
            match &order[0].intent {
                EventBody::OrderPlaced { order_id, .. } => order_id.clone(),
                _ => unreachable!(),
            }
        );
        assert!(decode_tradex_command(
            "auth.commands",
            0,
            br#"{"command":"LOGIN_USER","data":{}}"#,
            ctx()
        )
        .unwrap()
        .is_empty());
        let bad = decode_tradex_command(
            "order.commands",
            0,
            br#"{"command":"CREATE_ORDER","data":{"userId":"u","items":[{"productId":"P","quantity":0,"price":1}]}}"#,
            ctx(),
        );
        assert_eq!(
            bad.unwrap_err().to_string(),
            "field `data.items[0].quantity`: must be greater than 0, got 0"
        );
    }

    #[test]
    fn errors_name_the_camel_case_field() {
        let cases = [
            (
                "order.created",
                r#"{"orderId":"o","userId":"u","items":[{"productId":"P","quantity":0,"price":1}]}"#,
                "field `items[0].quantity`: must be greater than 0",
            ),
            (
                "order.created",
                r#"{"orderId":"o","items":[]}"#,
                "missing required field `userId`",
            ),
            (
                "order.updated",
                r#"{"orderId":"o"}"#,
                "missing required field `status`",
            ),
            ("orders.misc", r#"{}"#, "tradex topic `orders.misc`"),
        ];
        for (topic, payload, expected) in cases {
            let error = decode_tradex(topic, 0, payload.as_bytes(), ctx())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{topic} {payload}: {error}");
        }
        assert!(decode_tradex(
            "user.registered",
            0,
            br#"{"userId":"u","email":"a@b"}"#,
            ctx()
        )
        .unwrap()
        .is_empty());
        let cancelled = decode_tradex(
            "order.updated",
            0,
            br#"{"orderId":"o","status":"CANCELLED"}"#,
            ctx(),
        )
        .unwrap();
        assert!(matches!(
            cancelled[0].body,
            EventBody::OrderStatus {
                status: OrderStatus::Cancelled,
                ..
            }
        ));
    }
}
