//! The `inventory-cqrs` format: the `inventory.items` / `inventory.stock`
//! topics of the command/query/listener design (seed 002), whose messages
//! carry the *state* of an item after a change — absolute `quantity` and
//! `reserved_quantity` with the row's optimistic-locking `version` — rather
//! than the change itself. The mapping, field by field, is in `docs/formats.md`.
//!
//! A state becomes an [`EventBody::StockLevel`]; the `stock` view keeps, per
//! sku, the level with the highest version (see [`crate::stock`]), so late,
//! duplicated and re-ordered messages leave the newest state standing.

use super::decode::{
    event_time, name, present, quantity, required, text, DecodeError, RecordContext, Sign,
    MAX_TEXT_LEN,
};
use super::{Event, EventBody, Money, Name, DEFAULT_TENANT};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Location of the stock of this design (it keeps one quantity per item).
pub const CQRS_LOCATION: &str = "default";

#[derive(Deserialize)]
struct RawCqrs<'a> {
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    category: Option<&'a RawValue>,
    #[serde(borrow)]
    reorder_point: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    reserved_quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    updated_at: Option<&'a RawValue>,
}

/// What a message says happened, from its `event_type` (or `type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Created,
    Updated,
    Deleted,
    /// `inventory.stock.*` (adjusted, reserved, released, committed): a new stock state.
    Stock,
}

fn kind(type_name: &str) -> Option<Kind> {
    let short = type_name.strip_prefix("inventory.").unwrap_or(type_name);
    // Accept both the dotted names of the design and the class names of its code.
    match short {
        "items.created" | "item.created" | "ItemCreated" => Some(Kind::Created),
        "items.updated" | "item.updated" | "ItemUpdated" => Some(Kind::Updated),
        "items.deleted" | "item.deleted" | "ItemDeleted" => Some(Kind::Deleted),
        _ if short.starts_with("stock.") || short.starts_with("Stock") => Some(Kind::Stock),
        _ => None,
    }
}

/// Decodes one message of an `inventory.items` or `inventory.stock` topic into
/// the events it means: a catalogue event, a stock level, or both.
///
/// Ids derive from `(sku, version)`, so a redelivered message is one event and
/// two messages of one version are one state (the earliest in the log wins).
pub fn decode_cqrs(
    topic: &str,
    payload: &[u8],
    ctx: RecordContext,
) -> Result<Vec<Event>, DecodeError> {
    let raw: RawCqrs<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind = match present(raw.event_type).or(present(raw.kind)) {
        Some(t) => {
            let type_name = text("event_type", t, 128)?;
            kind(&type_name)
                .ok_or_else(|| DecodeError::UnknownType(format!("{type_name} (expected inventory.items.created|updated|deleted or inventory.stock.*)")))?
        }
        // Untyped: the topic says which.
        None if topic.ends_with("stock") => Kind::Stock,
        None => {
            return Err(DecodeError::Missing("event_type".into()));
        }
    };
    let sku = name("sku", required("sku", raw.sku)?)?;
    let version = required("version", raw.version)?;
    let version: u64 = match serde_json::from_str::<u64>(version.get()) {
        Ok(v) if (1..=i64::MAX as u64).contains(&v) => v,
        _ => {
            return Err(DecodeError::invalid(
                "version",
                format!("expected an integer of at least 1, got `{}`", version.get()),
            ))
        }
    };
    let ts = match present(raw.timestamp).or(present(raw.updated_at)) {
        Some(t) => event_time(t)?,
        None => ctx
            .log_time
            .ok_or_else(|| DecodeError::Missing("timestamp".into()))?,
    };
    let event = |suffix: &str, body: EventBody| Event {
        tenant: Name::from(DEFAULT_TENANT),
        id: Name::from(format!("cqrs:{sku}@{version}{suffix}")),
        seq: ctx.offset,
        ts,
        body,
    };
    let mut events = Vec::with_capacity(2);
    let display_name = present(raw.name)
        .map(|n| text("name", n, MAX_TEXT_LEN))
        .transpose()?;
    let price = present(raw.price)
        .map(|p| super::decode::non_negative_money("price", p))
        .transpose()?;
    let category = present(raw.category)
        .map(|c| name("category", c))
        .transpose()?;
    let reorder_point = present(raw.reorder_point)
        .map(|r| quantity("reorder_point", r, Sign::NonNegative))
        .transpose()?;
    match kind {
        Kind::Created => {
            let name = display_name.ok_or_else(|| DecodeError::Missing("name".into()))?;
            let body = EventBody::ItemCreated {
                sku: sku.clone(),
                name,
                price: price.unwrap_or(Money::ZERO),
                category: category.unwrap_or_default(),
                reorder_point,
                target_level: None,
                initial: Vec::new(),
            };
            events.push(event(":item", body));
        }
        Kind::Updated => {
            events.push(event(
                ":item",
                EventBody::ItemUpdated {
                    sku: sku.clone(),
                    name: display_name,
                    price,
                    category,
                    reorder_point,
                    target_level: None,
                },
            ));
        }
        Kind::Deleted => events.push(event(":item", EventBody::ItemDeleted { sku: sku.clone() })),
        Kind::Stock => {}
    }
    // Every message that carries the quantities is a stock state; a stock
    // message must carry them.
    let on_hand = match (present(raw.quantity), kind) {
        (Some(q), _) => Some(quantity("quantity", q, Sign::NonNegative)?),
        (None, Kind::Stock) => return Err(DecodeError::Missing("quantity".into())),
        (None, _) => None,
    };
    if let Some(on_hand) = on_hand {
        let reserved = match present(raw.reserved_quantity) {
            Some(r) => quantity("reserved_quantity", r, Sign::NonNegative)?,
            None => 0,
        };
        if reserved > on_hand {
            return Err(DecodeError::invalid(
                "reserved_quantity",
                format!("{reserved} exceeds `quantity` {on_hand}"),
            ));
        }
        let body = EventBody::StockLevel {
            sku: sku.clone(),
            location: Name::from(CQRS_LOCATION),
            on_hand,
            reserved,
            version,
        };
        events.push(event(":stock", body));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RecordContext {
        RecordContext {
            offset: 7,
            log_time: Some(5),
        }
    }

    #[test]
    fn created_with_quantity_is_an_item_and_a_level() {
        let payload = br#"{"event_type":"inventory.items.created","item_id":"0b6e","sku":"PROD-001","name":"Producto","description":"x","quantity":100,"reserved_quantity":0,"version":1,"timestamp":"2026-01-01T00:00:00Z"}"#;
        let events = decode_cqrs("inventory.items", payload, ctx()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0].body, EventBody::ItemCreated { name, initial, .. } if name == "Producto" && initial.is_empty())
        );
        assert!(
            matches!(&events[1].body, EventBody::StockLevel { on_hand: 100, reserved: 0, version: 1, location, .. } if location == "default")
        );
        assert_eq!(events[1].id, "cqrs:PROD-001@1:stock");
        assert_eq!(events[0].ts, 1_767_225_600_000);
    }

    #[test]
    fn stock_messages_are_levels_typed_or_not() {
        let typed =
            decode_cqrs("inventory.stock", br#"{"event_type":"inventory.stock.reserved","sku":"P","quantity":100,"reserved_quantity":10,"version":2}"#, ctx())
                .unwrap();
        assert!(matches!(
            &typed[..],
            [Event {
                body: EventBody::StockLevel {
                    on_hand: 100,
                    reserved: 10,
                    version: 2,
                    ..
                },
                ts: 5,
                ..
            }]
        ));
        let untyped = decode_cqrs(
            "inventory.stock",
            br#"{"sku":"P","quantity":100,"reserved_quantity":10,"version":2}"#,
            ctx(),
        )
        .unwrap();
        assert_eq!(untyped, typed);
        let renamed = decode_cqrs(
            "inventory.items",
            br#"{"event_type":"ItemUpdated","sku":"P","name":"N","version":3}"#,
            ctx(),
        )
        .unwrap();
        assert!(matches!(
            &renamed[..],
            [Event {
                body: EventBody::ItemUpdated {
                    name: Some(_),
                    price: None,
                    ..
                },
                ..
            }]
        ));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"event_type":"inventory.stock.adjusted","sku":"P","quantity":5,"reserved_quantity":6,"version":2}"#,
                "field `reserved_quantity`: 6 exceeds `quantity` 5",
            ),
            (
                r#"{"event_type":"inventory.stock.adjusted","sku":"P","quantity":-1,"version":2}"#,
                "field `quantity`: must not be negative, got -1",
            ),
            (
                r#"{"event_type":"inventory.stock.adjusted","sku":"P","quantity":1,"version":0}"#,
                "field `version`: expected an integer of at least 1, got `0`",
            ),
            (
                r#"{"event_type":"inventory.stock.adjusted","sku":"P","version":2}"#,
                "missing required field `quantity`",
            ),
            (
                r#"{"event_type":"inventory.items.created","sku":"P","version":2}"#,
                "missing required field `name`",
            ),
            (
                r#"{"event_type":"inventory.orders.created","sku":"P","version":2}"#,
                "unknown event type `inventory.orders.created",
            ),
            (
                r#"{"event_type":"inventory.stock.adjusted","quantity":1,"version":2}"#,
                "missing required field `sku`",
            ),
        ];
        for (payload, expected) in cases {
            let error = decode_cqrs("inventory.stock", payload.as_bytes(), ctx())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{payload}: {error}");
        }
        let untyped_item =
            decode_cqrs("inventory.items", br#"{"sku":"P","version":2}"#, ctx()).unwrap_err();
        assert_eq!(
            untyped_item.to_string(),
            "missing required field `event_type`"
        );
    }
}
