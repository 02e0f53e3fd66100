//! Commands: requests to change stock or the catalogue, decided by the
//! decider (see [`crate::decider`]) into events or a rejection.
//!
//! On the wire (topic `inventory.commands`, key `tenant/sku`) a command is a
//! JSON object like an event: `id` (the command id), `type` (`item.create`,
//! `item.update`, `item.delete`, `stock.adjust`, `stock.reserve`,
//! `stock.release`, `stock.commit`, `order.place`), `tenant`, `ts`, the
//! fields of the event it asks for, `sku` (it routes the command to its
//! single writer; an order is routed by its `order_id`), and optionally
//! `expected_version`.

use super::decode::{decode_event, present, required, text, DecodeError, RecordContext};
use super::{EventBody, EventTime, Name};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest command id: the ids of the events a command causes
/// (`cmd:{command_id}:{n}`) must stay within the 128 bytes of an event id.
pub const MAX_COMMAND_ID_LEN: usize = 120;

/// Longest order id of an `order.place`: the ids its saga derives
/// (`line:{n}:{order_id}`, `cmd:line:{n}:{order_id}:0`) must fit in 128 bytes.
pub const MAX_ORDER_ID_LEN: usize = 100;

/// One decoded, validated command.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Command {
    /// Tenant.
    pub tenant: Name,
    /// Command id: a command id seen twice is decided once.
    pub id: Name,
    /// Position in the commands topic (offset); orders the commands of a key.
    pub seq: u64,
    /// When the command was issued.
    pub ts: EventTime,
    /// The sku whose single writer decides it (for `order.place`: the order
    /// id, which routes it to its saga's coordinator).
    pub sku: Name,
    /// Decide only if the sku's version is this (optimistic concurrency).
    pub expected_version: Option<u64>,
    /// The event the command asks for: one of `ItemCreated`, `ItemUpdated`,
    /// `ItemDeleted`, `StockAdjusted`, `StockReserved`, `StockReleased`,
    /// `StockCommitted`.
    pub intent: EventBody,
}

/// The event type a command type asks for.
fn intended_type(command_type: &str) -> Option<&'static str> {
    Some(match command_type {
        "item.create" => "item.created",
        "item.update" => "item.updated",
        "item.delete" => "item.deleted",
        "stock.adjust" => "stock.adjusted",
        "stock.reserve" => "stock.reserved",
        "stock.release" => "stock.released",
        "stock.commit" => "stock.committed",
        "order.place" => "order.placed",
        _ => return None,
    })
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    expected_version: Option<&'a RawValue>,
}

/// Decodes and validates one command from the commands topic. The fields of
/// the intended event follow the rules of [`decode_event`].
pub fn decode_command(payload: &[u8], ctx: RecordContext) -> Result<Command, DecodeError> {
    let raw: RawCommand<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind = text("type", required("type", raw.kind)?, 64)?;
    let event_type = intended_type(&kind).ok_or_else(|| {
        DecodeError::UnknownType(format!("{kind} (commands: item.create, item.update, item.delete, stock.adjust, stock.reserve, stock.release, stock.commit)"))
    })?;
    let id = required("id", raw.id)?;
    let expected_version = match present(raw.expected_version) {
        Some(v) => {
            Some(
                serde_json::from_str::<u64>(v.get()).map_err(|_| DecodeError::Invalid {
                    field: "expected_version".into(),
                    reason: format!("expected a non-negative integer, got `{}`", v.get()),
                })?,
            )
        }
        None => None,
    };
    // The intended event is the command with its type renamed: every field rule is the event's.
    // Fields stay as their JSON text (numbers are not read into floats: money stays exact).
    let mut object: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    object.insert(
        "type".into(),
        serde_json::value::to_raw_value(event_type).expect("a string serializes"),
    );
    let event = decode_event(&serde_json::to_vec(&object).expect("a map serializes"), ctx)?;
    if event.id.len() > MAX_COMMAND_ID_LEN {
        return Err(DecodeError::Invalid {
            field: "id".into(),
            reason: format!("longer than {MAX_COMMAND_ID_LEN} bytes (`{}`)", id.get()),
        });
    }
    let sku = match (&event.body, event.body.sku()) {
        // An order is routed by its id (to its saga's coordinator).
        (EventBody::OrderPlaced { order_id, .. }, _) => {
            if order_id.len() > MAX_ORDER_ID_LEN {
                return Err(DecodeError::Invalid {
                    field: "order_id".into(),
                    reason: format!("longer than {MAX_ORDER_ID_LEN} bytes"),
                });
            }
            order_id.clone()
        }
        (_, Some(sku)) => sku.clone(),
        // Release and commit name their reservation; the sku routes them.
        (_, None) => {
            let sku = object
                .get("sku")
                .filter(|s| s.get() != "null")
                .ok_or_else(|| DecodeError::Missing("sku".into()))?;
            let sku: Name = serde_json::from_str(sku.get()).map_err(|_| DecodeError::Invalid {
                field: "sku".into(),
                reason: format!("expected a string, got `{}`", sku.get()),
            })?;
            super::decode::validate_name(&sku).map_err(|reason| DecodeError::Invalid {
                field: "sku".into(),
                reason,
            })?;
            sku
        }
    };
    Ok(Command {
        tenant: event.tenant,
        id: event.id,
        seq: event.seq,
        ts: event.ts,
        sku,
        expected_version,
        intent: event.body,
    })
}

/// The id of the `n`-th event caused by command `command_id`.
pub fn caused_event_id(command_id: &str, n: usize) -> Name {
    Name::from(format!("cmd:{command_id}:{n}"))
}

/// The command that caused an event, read from its id (`cmd:{command_id}:{n}`).
pub fn causing_command(event_id: &str) -> Option<&str> {
    let rest = event_id.strip_prefix("cmd:")?;
    let (command, n) = rest.rsplit_once(':')?;
    n.bytes().all(|b| b.is_ascii_digit()).then_some(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RecordContext {
        RecordContext {
            offset: 4,
            log_time: Some(10),
        }
    }

    #[test]
    fn commands_decode_to_the_event_they_ask_for() {
        let reserve =
            decode_command(br#"{"id":"c1","type":"stock.reserve","sku":"A","location":"m","qty":2,"reservation_id":"r1","expected_version":3}"#, ctx())
                .unwrap();
        assert_eq!(reserve.expected_version, Some(3));
        assert!(matches!(
            reserve.intent,
            EventBody::StockReserved { qty: 2, .. }
        ));
        assert_eq!(
            (reserve.seq, reserve.ts, reserve.sku.as_str()),
            (4, 10, "A")
        );
        let release = decode_command(
            br#"{"id":"c2","type":"stock.release","sku":"A","reservation_id":"r1"}"#,
            ctx(),
        )
        .unwrap();
        assert!(matches!(release.intent, EventBody::StockReleased { .. }));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"id":"c","type":"stock.reserve","sku":"A","location":"m","qty":0,"reservation_id":"r"}"#,
                "field `qty`: must be greater than 0",
            ),
            (
                r#"{"id":"c","type":"stock.release","reservation_id":"r"}"#,
                "missing required field `sku`",
            ),
            (
                r#"{"id":"c","type":"stock.reserved","sku":"A"}"#,
                "unknown event type `stock.reserved (commands:",
            ),
            (
                r#"{"id":"c","type":"stock.adjust","sku":"A","location":"m","qty":1,"expected_version":-1}"#,
                "field `expected_version`",
            ),
        ];
        for (payload, expected) in cases {
            let error = decode_command(payload.as_bytes(), ctx())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{payload}: {error}");
        }
        let long = format!(
            r#"{{"id":"{}","type":"item.delete","sku":"A"}}"#,
            "c".repeat(121)
        );
        assert!(decode_command(long.as_bytes(), ctx())
            .unwrap_err()
            .to_string()
            .contains("longer than 120"));
    }

    #[test]
    fn caused_ids_name_their_command() {
        assert_eq!(causing_command(&caused_event_id("a:b", 0)), Some("a:b"));
        assert_eq!(causing_command("e17"), None);
        assert_eq!(causing_command("cmd:x"), None);
    }
}
