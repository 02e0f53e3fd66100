//! Decoding and validation of stockflow's JSON events (the `stockflow` format of docs/formats.md).
//! Long because each field's rule and its precise error live together.
//!
//! A message is first split into its fields without interpreting them, then
//! each field is read on its own, so that an error names the field and says
//! what was wrong with it. Unknown fields are ignored (producers may add
//! fields); unknown event types are errors.

use super::{Event, EventBody, EventTime, Money, Name, OrderLine, OrderStatus, DEFAULT_TENANT};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest tenant, sku or location, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest event, command, reservation, order or customer id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest free text (item name, reason), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Largest quantity accepted in one event.
pub const MAX_QTY: i64 = 1_000_000_000;
/// Most lines in one order.
pub const MAX_LINES: usize = 1000;

/// Where a message came from, for what the message itself does not say.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordContext {
    /// Offset of the message in its partition; becomes [`Event::seq`].
    pub offset: u64,
    /// Timestamp the log gave the message (ms); used when the event has no `ts`.
    pub log_time: Option<EventTime>,
}

/// Why a message is not a valid event. The text names the field and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a JSON object.
    #[error("not a JSON object: {0}")]
    Json(String),
    /// The `type` field names no known event type.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// A required field is absent (or null).
    #[error("missing required field `{0}`")]
    Missing(String),
    /// A field is present but breaks a rule.
    #[error("field `{field}`: {reason}")]
    Invalid {
        /// The field, with its path inside arrays (`lines[2].qty`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// A short, stable class for metrics labels: `json`, `unknown_type`, `missing_field`, `invalid_field`.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "json",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::Missing(_) => "missing_field",
            DecodeError::Invalid { .. } => "invalid_field",
        }
    }

    pub(super) fn invalid(field: &str, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The fields of any event, not yet interpreted.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    tenant: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
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
    target_level: Option<&'a RawValue>,
    #[serde(borrow)]
    stock: Option<&'a RawValue>,
    #[serde(borrow)]
    location: Option<&'a RawValue>,
    #[serde(borrow)]
    qty: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
    #[serde(borrow)]
    reservation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    command_id: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    lines: Option<Vec<RawLine<'a>>>,
    #[serde(borrow)]
    total: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    location: Option<&'a RawValue>,
    #[serde(borrow)]
    qty: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
}

/// Decodes and validates one stockflow JSON event.
pub fn decode_event(payload: &[u8], ctx: RecordContext) -> Result<Event, DecodeError> {
    let raw: RawEvent<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind: String = text("type", required("type", raw.kind)?, 64)?;
    let id = identifier("id", required("id", raw.id)?)?;
    let tenant = match present(raw.tenant) {
        Some(t) => name("tenant", t)?,
        None => Name::from(DEFAULT_TENANT),
    };
    let ts = match present(raw.ts) {
        Some(t) => event_time(t)?,
        None => ctx
            .log_time
            .ok_or_else(|| DecodeError::Missing("ts".into()))?,
    };
    let sku = || name("sku", required("sku", raw.sku)?);
    let location = || name("location", required("location", raw.location)?);
    let reservation = || {
        identifier(
            "reservation_id",
            required("reservation_id", raw.reservation_id)?,
        )
    };
    let order = || identifier("order_id", required("order_id", raw.order_id)?);
    let reason = || {
        present(raw.reason)
            .map(|r| text("reason", r, MAX_TEXT_LEN))
            .transpose()
    };

    let body = match kind.as_str() {
        "item.created" => EventBody::ItemCreated {
            sku: sku()?,
            name: non_empty(
                "name",
                text("name", required("name", raw.name)?, MAX_TEXT_LEN)?,
            )?,
            price: non_negative_money("price", required("price", raw.price)?)?,
            category: present(raw.category)
                .map(|c| name("category", c))
                .transpose()?
                .unwrap_or_default(),
            reorder_point: present(raw.reorder_point)
                .map(|r| quantity("reorder_point", r, Sign::NonNegative))
                .transpose()?,
            target_level: present(raw.target_level)
                .map(|r| quantity("target_level", r, Sign::NonNegative))
                .transpose()?,
            initial: present(raw.stock)
                .map(initial_stock)
                .transpose()?
                .unwrap_or_default(),
        },
        "item.updated" => {
            let body = EventBody::ItemUpdated {
                sku: sku()?,
                name: present(raw.name)
                    .map(|n| text("name", n, MAX_TEXT_LEN).and_then(|n| non_empty("name", n)))
                    .transpose()?,
                price: present(raw.price)
                    .map(|p| non_negative_money("price", p))
                    .transpose()?,
                category: present(raw.category)
                    .map(|c| name("category", c))
                    .transpose()?,
                reorder_point: present(raw.reorder_point)
                    .map(|r| quantity("reorder_point", r, Sign::NonNegative))
                    .transpose()?,
                target_level: present(raw.target_level)
                    .map(|r| quantity("target_level", r, Sign::NonNegative))
                    .transpose()?,
            };
            if let EventBody::ItemUpdated {
                name: None,
                price: None,
                category: None,
                reorder_point: None,
                target_level: None,
                ..
            } = body
            {
                return Err(DecodeError::invalid(
                    "type",
                    "item.updated changes nothing: give at least one of name, price, category, reorder_point, target_level",
                ));
            }
            body
        }
        "item.deleted" => EventBody::ItemDeleted { sku: sku()? },
        "stock.adjusted" => EventBody::StockAdjusted {
            sku: sku()?,
            location: location()?,
            qty: quantity("qty", required("qty", raw.qty)?, Sign::NonZero)?,
            reason: present(raw.reason)
                .map(|r| name("reason", r))
                .transpose()?
                .unwrap_or_default(),
        },
        "stock.reserved" => EventBody::StockReserved {
            sku: sku()?,
            location: location()?,
            qty: quantity("qty", required("qty", raw.qty)?, Sign::Positive)?,
            reservation_id: reservation()?,
            order_id: present(raw.order_id)
                .map(|o| identifier("order_id", o))
                .transpose()?,
        },
        "stock.released" => EventBody::StockReleased {
            reservation_id: reservation()?,
        },
        "stock.committed" => EventBody::StockCommitted {
            reservation_id: reservation()?,
        },
        "reservation.rejected" => EventBody::ReservationRejected {
            command_id: identifier("command_id", required("command_id", raw.command_id)?)?,
            reason: reason()?.ok_or_else(|| DecodeError::Missing("reason".into()))?,
            sku: present(raw.sku).map(|s| name("sku", s)).transpose()?,
        },
        "order.placed" => {
            let lines = raw
                .lines
                .ok_or_else(|| DecodeError::Missing("lines".into()))?;
            if lines.is_empty() || lines.len() > MAX_LINES {
                return Err(DecodeError::invalid(
                    "lines",
                    format!("must hold 1 to {MAX_LINES} lines, got {}", lines.len()),
                ));
            }
            let lines = lines
                .iter()
                .enumerate()
                .map(|(i, line)| order_line(i, line))
                .collect::<Result<Vec<_>, _>>()?;
            EventBody::OrderPlaced {
                order_id: order()?,
                customer_id: identifier("customer_id", required("customer_id", raw.customer_id)?)?,
                total: match present(raw.total) {
                    Some(t) => non_negative_money("total", t)?,
                    None => line_total(&lines)?,
                },
                lines,
            }
        }
        "order.confirmed" | "order.cancelled" | "order.shipped" => EventBody::OrderStatus {
            order_id: order()?,
            status: match kind.as_str() {
                "order.confirmed" => OrderStatus::Confirmed,
                "order.cancelled" => OrderStatus::Cancelled,
                _ => OrderStatus::Shipped,
            },
            reason: reason()?,
        },
        _ => return Err(DecodeError::UnknownType(kind)),
    };
    Ok(Event {
        tenant,
        id,
        ts,
        seq: ctx.offset,
        body,
    })
}

/// `null` counts as absent.
pub(super) fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

pub(super) fn required<'a>(
    field: &str,
    raw: Option<&'a RawValue>,
) -> Result<&'a RawValue, DecodeError> {
    present(raw).ok_or_else(|| DecodeError::Missing(field.to_owned()))
}

pub(super) fn text(field: &str, raw: &RawValue, max_len: usize) -> Result<String, DecodeError> {
    let value: String = serde_json::from_str(raw.get()).map_err(|_| {
        DecodeError::invalid(
            field,
            format!("expected a string, got `{}`", shorten(raw.get())),
        )
    })?;
    if value.len() > max_len {
        return Err(DecodeError::invalid(
            field,
            format!("longer than {max_len} bytes"),
        ));
    }
    Ok(value)
}

fn non_empty(field: &str, value: String) -> Result<String, DecodeError> {
    if value.trim().is_empty() {
        return Err(DecodeError::invalid(field, "must not be empty"));
    }
    Ok(value)
}

/// Checks a tenant, sku, location or category: 1 to 64 of `A-Z a-z 0-9 . _ -`,
/// not `.` nor `..` (see [`check_chars`]).
pub fn validate_name(value: &str) -> Result<(), String> {
    check_chars(
        value,
        MAX_NAME_LEN,
        |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'),
        "letters, digits, '.', '_' and '-'",
    )
}

/// Checks an id: 1 to 128 of `A-Z a-z 0-9 . _ - : @`, not `.` nor `..`.
pub fn validate_id(value: &str) -> Result<(), String> {
    check_chars(
        value,
        MAX_ID_LEN,
        |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'),
        "letters, digits, '.', '_', '-', ':' and '@'",
    )
}

fn check_chars(
    value: &str,
    max_len: usize,
    allowed: impl Fn(u8) -> bool,
    what: &str,
) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > max_len {
        return Err(format!("longer than {max_len} bytes"));
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii() || !allowed(*c as u8)) {
        return Err(format!("character {bad:?} not allowed (use {what})"));
    }
    // Names and ids become URL path segments (`/v1/stock/{sku}`,
    // `/v1/commands/{id}`), and clients normalise `.` and `..` away: a row
    // named so could never be read again.
    if value == "." || value == ".." {
        return Err(format!(
            "`{value}` is not allowed (a URL path cannot name it)"
        ));
    }
    Ok(())
}

pub(super) fn name(field: &str, raw: &RawValue) -> Result<Name, DecodeError> {
    let value: Name = serde_json::from_str(raw.get()).map_err(|_| {
        DecodeError::invalid(
            field,
            format!("expected a string, got `{}`", shorten(raw.get())),
        )
    })?;
    validate_name(&value).map_err(|reason| DecodeError::invalid(field, reason))?;
    Ok(value)
}

pub(super) fn identifier(field: &str, raw: &RawValue) -> Result<Name, DecodeError> {
    // Numeric ids are common in existing systems: accept them as their text.
    let value: Name = if raw.get().bytes().all(|b| b.is_ascii_digit()) {
        Name::from(raw.get())
    } else {
        serde_json::from_str(raw.get()).map_err(|_| {
            DecodeError::invalid(
                field,
                format!("expected a string, got `{}`", shorten(raw.get())),
            )
        })?
    };
    validate_id(&value).map_err(|reason| DecodeError::invalid(field, reason))?;
    Ok(value)
}

#[derive(Clone, Copy)]
pub(super) enum Sign {
    Positive,
    NonNegative,
    NonZero,
}

pub(super) fn quantity(field: &str, raw: &RawValue, sign: Sign) -> Result<i64, DecodeError> {
    let value: i64 = serde_json::from_str(raw.get()).map_err(|_| {
        DecodeError::invalid(
            field,
            format!("expected an integer, got `{}`", shorten(raw.get())),
        )
    })?;
    if value.abs() > MAX_QTY {
        return Err(DecodeError::invalid(
            field,
            format!("{value} is beyond the limit of ±{MAX_QTY}"),
        ));
    }
    let ok = match sign {
        Sign::Positive => value > 0,
        Sign::NonNegative => value >= 0,
        Sign::NonZero => value != 0,
    };
    if !ok {
        let rule = match sign {
            Sign::Positive => "must be greater than 0",
            Sign::NonNegative => "must not be negative",
            Sign::NonZero => "must not be 0",
        };
        return Err(DecodeError::invalid(field, format!("{rule}, got {value}")));
    }
    Ok(value)
}

/// An amount of money, from a JSON number or a decimal string, read from its
/// text (never through a float), so it is exact or refused.
pub(super) fn non_negative_money(field: &str, raw: &RawValue) -> Result<Money, DecodeError> {
    let text = raw.get();
    let value = if text.starts_with('"') {
        let decimal: String = serde_json::from_str(text)
            .map_err(|e| DecodeError::invalid(field, strip_position(&e.to_string())))?;
        Money::parse(decimal.trim())
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Money::parse_json_number(text)
    } else {
        return Err(DecodeError::invalid(
            field,
            format!(
                "expected a decimal number or decimal string, got `{}`",
                shorten(text)
            ),
        ));
    };
    let value = value.map_err(|error| DecodeError::invalid(field, error.to_string()))?;
    if value.is_negative() {
        return Err(DecodeError::invalid(
            field,
            format!("must not be negative, got {value}"),
        ));
    }
    Ok(value)
}

/// Event time: epoch milliseconds or an RFC 3339 text.
pub(super) fn event_time(raw: &RawValue) -> Result<EventTime, DecodeError> {
    // Year 1970 to 9999: the range ClickHouse DateTime and every dashboard handle.
    const MAX_MS: i64 = 253_402_300_799_999;
    let text = raw.get();
    let ms = if text.starts_with('"') {
        let s: String =
            serde_json::from_str(text).map_err(|e| DecodeError::invalid("ts", e.to_string()))?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| DecodeError::invalid("ts", format!("`{s}` is not RFC 3339 ({e})")))?
            .timestamp_millis()
    } else {
        serde_json::from_str::<i64>(text).map_err(|_| {
            DecodeError::invalid(
                "ts",
                format!(
                    "expected RFC 3339 text or integer epoch milliseconds, got `{}`",
                    shorten(text)
                ),
            )
        })?
    };
    if !(0..=MAX_MS).contains(&ms) {
        return Err(DecodeError::invalid(
            "ts",
            format!("{ms} ms is outside 1970-01-01..9999-12-31"),
        ));
    }
    Ok(ms)
}

fn initial_stock(raw: &RawValue) -> Result<Vec<(Name, i64)>, DecodeError> {
    let map: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| DecodeError::invalid("stock", "expected an object of location: quantity"))?;
    map.into_iter()
        .map(|(location, qty)| {
            let field = format!("stock.{location}");
            validate_name(&location)
                .map_err(|reason| DecodeError::invalid(&field, format!("location {reason}")))?;
            Ok((
                Name::from(location.as_str()),
                quantity(&field, qty, Sign::NonNegative)?,
            ))
        })
        .collect()
}

fn order_line(index: usize, line: &RawLine<'_>) -> Result<OrderLine, DecodeError> {
    let field = |f: &str| format!("lines[{index}].{f}");
    Ok(OrderLine {
        sku: name(&field("sku"), required(&field("sku"), line.sku)?)?,
        location: match present(line.location) {
            Some(l) => name(&field("location"), l)?,
            None => Name::from("default"),
        },
        qty: quantity(
            &field("qty"),
            required(&field("qty"), line.qty)?,
            Sign::Positive,
        )?,
        price: non_negative_money(&field("price"), required(&field("price"), line.price)?)?,
    })
}

pub(super) fn line_total(lines: &[OrderLine]) -> Result<Money, DecodeError> {
    lines
        .iter()
        .map(|l| l.price.checked_mul(l.qty))
        .try_fold(Money::ZERO, |acc, m| m.map(|m| acc + m))
        .ok_or_else(|| DecodeError::invalid("lines", "total overflows"))
}

fn shorten(text: &str) -> String {
    if text.len() <= 40 {
        text.to_owned()
    } else {
        let cut = (0..=40)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &text[..cut])
    }
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<Event, DecodeError> {
        decode_event(
            json.as_bytes(),
            RecordContext {
                offset: 7,
                log_time: Some(1_000),
            },
        )
    }

    #[test]
    fn decodes_every_type() {
        let cases = [
            r#"{"id":"e1","type":"item.created","sku":"A-1","name":"Widget","price":"12.34","category":"tools","reorder_point":5,"stock":{"madrid":10}}"#,
            r#"{"id":"e2","type":"item.updated","sku":"A-1","price":13}"#,
            r#"{"id":"e3","type":"item.deleted","sku":"A-1"}"#,
            r#"{"id":"e4","type":"stock.adjusted","sku":"A-1","location":"madrid","qty":-3,"reason":"sale"}"#,
            r#"{"id":"e5","type":"stock.reserved","sku":"A-1","location":"madrid","qty":2,"reservation_id":"r1","order_id":"o1"}"#,
            r#"{"id":"e6","type":"stock.released","reservation_id":"r1"}"#,
            r#"{"id":"e7","type":"stock.committed","reservation_id":"r1"}"#,
            r#"{"id":"e8","type":"reservation.rejected","command_id":"c1","reason":"insufficient stock"}"#,
            r#"{"id":"e9","type":"order.placed","order_id":"o1","customer_id":"c9","lines":[{"sku":"A-1","location":"madrid","qty":2,"price":1.5}]}"#,
            r#"{"id":"e10","type":"order.cancelled","order_id":"o1","reason":"no stock"}"#,
        ];
        for case in cases {
            let event = decode(case).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(event.tenant, "default");
            assert_eq!(event.seq, 7);
            assert_eq!(event.ts, 1_000);
            let kind: serde_json::Value = serde_json::from_str(case).unwrap();
            assert_eq!(event.body.type_name(), kind["type"].as_str().unwrap());
        }
        let placed = decode(cases[8]).unwrap();
        assert!(
            matches!(placed.body, EventBody::OrderPlaced { total, .. } if total == Money::parse("3").unwrap())
        );
    }

    #[test]
    fn reads_both_time_forms() {
        let a =
            decode(r#"{"id":"e","type":"item.deleted","sku":"A","ts":"2026-01-02T03:04:05.678Z"}"#)
                .unwrap();
        let b = decode(r#"{"id":"e","type":"item.deleted","sku":"A","ts":1767323045678}"#).unwrap();
        assert_eq!(a.ts, 1_767_323_045_678);
        assert_eq!(a.ts, b.ts);
    }

    #[test]
    fn errors_name_the_field_and_rule() {
        let cases = [
            ("not json", "not a JSON object"),
            (r#"[1,2]"#, "not a JSON object"),
            (
                r#"{"type":"item.deleted","sku":"A"}"#,
                "missing required field `id`",
            ),
            (
                r#"{"id":"e","type":"teleport","sku":"A"}"#,
                "unknown event type `teleport`",
            ),
            (
                r#"{"id":"e","type":"stock.adjusted","sku":"A","location":"m","qty":0}"#,
                "field `qty`: must not be 0, got 0",
            ),
            (
                r#"{"id":"e","type":"stock.adjusted","sku":"A","location":"m","qty":1.5}"#,
                "field `qty`: expected an integer, got `1.5`",
            ),
            (
                r#"{"id":"e","type":"stock.reserved","sku":"A","location":"m","qty":-1,"reservation_id":"r"}"#,
                "field `qty`: must be greater than 0, got -1",
            ),
            (
                r#"{"id":"e","type":"stock.adjusted","sku":"A/B","location":"m","qty":1}"#,
                "field `sku`: character '/' not allowed",
            ),
            (
                r#"{"id":"e","type":"stock.adjusted","sku":"A","qty":1}"#,
                "missing required field `location`",
            ),
            (
                r#"{"id":"e","type":"item.deleted","sku":"A","ts":"yesterday"}"#,
                "field `ts`: `yesterday` is not RFC 3339",
            ),
            (
                r#"{"id":"e","type":"item.deleted","sku":"A","tenant":""}"#,
                "field `tenant`: must not be empty",
            ),
            (
                r#"{"id":"e","type":"item.created","sku":"A","name":"n","price":-1}"#,
                "field `price`: must not be negative",
            ),
            (
                r#"{"id":"e","type":"item.created","sku":"A","name":"n","price":1.23456}"#,
                "field `price`: `1.23456` has more than 4 decimal places",
            ),
            (
                r#"{"id":"e","type":"item.updated","sku":"A"}"#,
                "changes nothing",
            ),
            (
                r#"{"id":"e","type":"order.placed","order_id":"o","customer_id":"c","lines":[{"sku":"A","qty":1}]}"#,
                "missing required field `lines[0].price`",
            ),
            (
                r#"{"id":"e","type":"stock.adjusted","sku":"A","location":"m","qty":5000000000}"#,
                "beyond the limit",
            ),
            (
                r#"{"id":"e","type":"item.created","sku":"A","name":"n","price":900719925474.0993}"#,
                "field `price`: `900719925474.0993` is beyond",
            ),
            (
                r#"{"id":"e","type":"item.created","sku":"A","name":"n","price":"900719925474.0993"}"#,
                "field `price`: `900719925474.0993` is beyond",
            ),
            (
                r#"{"id":"e","type":"item.created","sku":"A","name":"n","price":true}"#,
                "field `price`: expected a decimal number",
            ),
            (
                r#"{"id":"e","type":"item.deleted","sku":".."}"#,
                "field `sku`: `..` is not allowed",
            ),
            (
                r#"{"id":".","type":"item.deleted","sku":"A"}"#,
                "field `id`: `.` is not allowed",
            ),
        ];
        for (json, expected) in cases {
            let error = decode(json).expect_err(json).to_string();
            assert!(
                error.contains(expected),
                "{json}: got `{error}`, expected `{expected}`"
            );
        }
    }

    #[test]
    fn money_is_read_from_its_text_exactly() {
        let event = decode(
            r#"{"id":"e","type":"item.created","sku":"A","name":"n","price":549755813887.9999}"#,
        )
        .unwrap();
        assert!(
            matches!(event.body, EventBody::ItemCreated { price, .. } if price.ten_thousandths() == 5_497_558_138_879_999),
            "{event:?}"
        );
        let event = decode(r#"{"id":"e","type":"item.updated","sku":"A","price":1.25e2}"#).unwrap();
        assert!(
            matches!(event.body, EventBody::ItemUpdated { price: Some(price), .. } if price == Money::parse("125").unwrap()),
            "{event:?}"
        );
    }

    #[test]
    fn ts_falls_back_to_log_time_or_fails() {
        let no_time = decode_event(
            br#"{"id":"e","type":"item.deleted","sku":"A"}"#,
            RecordContext::default(),
        );
        assert_eq!(no_time, Err(DecodeError::Missing("ts".into())));
    }
}
