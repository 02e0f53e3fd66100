//! Declarative KPIs: `[[kpis]]` tables of the config, validated once at
//! start and evaluated per event by the `kpis` dataflow.
//! Long because each KPI field's rule and its precise error live beside the field.
//!
//! ```toml
//! [[kpis]]
//! name = "units_damaged"
//! event_type = "stock.adjusted"
//! filter = "reason == 'damage' and qty < 0"
//! group_by = ["location"]
//! aggregate = "sum"
//! field = "qty"
//! window = ["hour", "day"]
//! ```

use super::Window;
use crate::model::{Event, EventBody, Money, Name};
use serde::Deserialize;

/// A `[[kpis]]` table as written in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiSpecConfig {
    /// The metric's name in `GET /v1/kpis` (letters, digits, `_`; not a built-in name).
    pub name: String,
    /// The event type counted (`stock.adjusted`, `order.placed`, ...).
    pub event_type: String,
    /// `field op value` clauses joined by `and` (ops `== != < <= > >=`); strings in quotes.
    #[serde(default)]
    pub filter: Option<String>,
    /// Text fields whose values split the metric into groups.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// `count`, `sum`, `min`, `max` or `avg`.
    pub aggregate: String,
    /// The numeric field aggregated (not for `count`).
    #[serde(default)]
    pub field: Option<String>,
    /// `hour`, `day`, or both as a list [default: both].
    #[serde(default)]
    pub window: Option<WindowsConfig>,
}

/// `window = "hour"` or `window = ["hour", "day"]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum WindowsConfig {
    /// One window.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// How a custom KPI folds its events' values.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize,
)]
pub enum Aggregate {
    /// Number of events.
    Count,
    /// Sum of the field.
    Sum,
    /// Smallest value of the field.
    Min,
    /// Largest value of the field.
    Max,
    /// Mean of the field.
    Avg,
}

/// A field of an event that specs can filter on, group by or aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// Stock keeping unit (text).
    Sku,
    /// Location (text).
    Location,
    /// Adjustment or rejection reason (text).
    Reason,
    /// Item category (text).
    Category,
    /// Order's customer (text).
    CustomerId,
    /// Quantity (integer): adjustments, reservations.
    Qty,
    /// Item price (money).
    Price,
    /// Order total (money).
    Total,
    /// Units over an order's lines (integer).
    Units,
    /// Number of an order's lines (integer).
    Lines,
    /// Absolute on-hand level (integer).
    OnHand,
    /// Absolute reserved level (integer).
    Reserved,
}

/// The kind of a field's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// Integer.
    Int,
    /// Exact money (ten-thousandths inside).
    Money,
}

const FIELDS: &[(&str, Field, Kind)] = &[
    ("sku", Field::Sku, Kind::Text),
    ("location", Field::Location, Kind::Text),
    ("reason", Field::Reason, Kind::Text),
    ("category", Field::Category, Kind::Text),
    ("customer_id", Field::CustomerId, Kind::Text),
    ("qty", Field::Qty, Kind::Int),
    ("price", Field::Price, Kind::Money),
    ("total", Field::Total, Kind::Money),
    ("units", Field::Units, Kind::Int),
    ("lines", Field::Lines, Kind::Int),
    ("on_hand", Field::OnHand, Kind::Int),
    ("reserved", Field::Reserved, Kind::Int),
];

/// The event types a spec may name, with the fields each carries.
const EVENT_FIELDS: &[(&str, &[Field])] = &[
    ("item.created", &[Field::Sku, Field::Category, Field::Price]),
    ("item.updated", &[Field::Sku, Field::Category, Field::Price]),
    ("item.deleted", &[Field::Sku]),
    (
        "stock.adjusted",
        &[Field::Sku, Field::Location, Field::Reason, Field::Qty],
    ),
    ("stock.reserved", &[Field::Sku, Field::Location, Field::Qty]),
    ("stock.released", &[]),
    ("stock.committed", &[]),
    (
        "stock.level",
        &[Field::Sku, Field::Location, Field::OnHand, Field::Reserved],
    ),
    ("reservation.rejected", &[Field::Sku, Field::Reason]),
    (
        "order.placed",
        &[Field::CustomerId, Field::Total, Field::Units, Field::Lines],
    ),
    ("order.confirmed", &[]),
    ("order.cancelled", &[Field::Reason]),
    ("order.shipped", &[]),
];

impl Field {
    fn parse(name: &str) -> Result<(Field, Kind), String> {
        FIELDS
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, f, k)| (*f, *k))
            .ok_or_else(|| {
                format!(
                    "unknown field `{name}` (fields: {})",
                    FIELDS
                        .iter()
                        .map(|(n, ..)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, f, _)| *f == self)
            .map(|(n, ..)| *n)
            .expect("every field is listed")
    }
}

/// A field's value in one event.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value<'a> {
    Text(&'a str),
    /// Integers, and money in ten-thousandths.
    Number(i64),
}

fn text(name: &Name) -> Option<Value<'_>> {
    Some(Value::Text(name.as_str()))
}

fn money(amount: &Money) -> Option<Value<'static>> {
    Some(Value::Number(amount.ten_thousandths()))
}

fn value_of(event: &Event, field: Field) -> Option<Value<'_>> {
    use EventBody::*;
    match (&event.body, field) {
        (ItemCreated { sku, .. } | ItemUpdated { sku, .. } | ItemDeleted { sku }, Field::Sku) => {
            text(sku)
        }
        (
            StockAdjusted { sku, .. } | StockReserved { sku, .. } | StockLevel { sku, .. },
            Field::Sku,
        ) => text(sku),
        (ReservationRejected { sku, .. }, Field::Sku) => sku.as_ref().and_then(text),
        (ItemCreated { category, .. }, Field::Category) => text(category),
        (ItemUpdated { category, .. }, Field::Category) => category.as_ref().and_then(text),
        (ItemCreated { price, .. }, Field::Price) => money(price),
        (ItemUpdated { price, .. }, Field::Price) => price.as_ref().and_then(money),
        (
            StockAdjusted { location, .. }
            | StockReserved { location, .. }
            | StockLevel { location, .. },
            Field::Location,
        ) => text(location),
        (StockAdjusted { reason, .. }, Field::Reason) => text(reason),
        (ReservationRejected { reason, .. }, Field::Reason) => Some(Value::Text(reason)),
        (
            OrderStatus {
                status: crate::model::OrderStatus::Cancelled,
                reason,
                ..
            },
            Field::Reason,
        ) => reason.as_deref().map(Value::Text),
        (StockAdjusted { qty, .. } | StockReserved { qty, .. }, Field::Qty) => {
            Some(Value::Number(*qty))
        }
        (StockLevel { on_hand, .. }, Field::OnHand) => Some(Value::Number(*on_hand)),
        (StockLevel { reserved, .. }, Field::Reserved) => Some(Value::Number(*reserved)),
        (OrderPlaced { customer_id, .. }, Field::CustomerId) => text(customer_id),
        (OrderPlaced { total, .. }, Field::Total) => money(total),
        (OrderPlaced { lines, .. }, Field::Units) => {
            Some(Value::Number(lines.iter().map(|l| l.qty).sum()))
        }
        (OrderPlaced { lines, .. }, Field::Lines) => Some(Value::Number(lines.len() as i64)),
        _ => None,
    }
}

/// A comparison of a filter clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The literal a clause compares with.
#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Text(String),
    Number(i64),
}

/// One `field op value` clause.
#[derive(Clone, Debug, PartialEq)]
struct Clause {
    field: Field,
    op: Op,
    value: Literal,
}

impl Clause {
    fn holds(&self, event: &Event) -> bool {
        let ordering = match (value_of(event, self.field), &self.value) {
            (Some(Value::Text(text)), Literal::Text(literal)) => text.cmp(literal.as_str()),
            (Some(Value::Number(number)), Literal::Number(literal)) => number.cmp(literal),
            // An absent field satisfies nothing (not even `!=`).
            _ => return false,
        };
        use std::cmp::Ordering::*;
        match self.op {
            Op::Eq => ordering == Equal,
            Op::Ne => ordering != Equal,
            Op::Lt => ordering == Less,
            Op::Le => ordering != Greater,
            Op::Gt => ordering == Greater,
            Op::Ge => ordering != Less,
        }
    }
}

/// A validated custom KPI (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct KpiSpec {
    /// The metric's name.
    pub name: Name,
    /// The event type it counts.
    event_type: &'static str,
    filter: Vec<Clause>,
    group_by: Vec<Field>,
    /// How values are folded.
    pub aggregate: Aggregate,
    field: Option<Field>,
    /// The kind of the aggregated field's values (`Int` for `count`).
    pub kind: Kind,
    /// The windows it is kept for.
    pub windows: Vec<Window>,
}

impl KpiSpec {
    /// Validates a `[[kpis]]` table; the error names the rule broken.
    pub fn compile(config: &KpiSpecConfig) -> Result<KpiSpec, String> {
        let name = config.name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("name `{name}`: 1 to 64 of letters, digits and `_`"));
        }
        if super::BUILT_IN.contains(&name) {
            return Err(format!("name `{name}`: is a built-in metric"));
        }
        let Some((event_type, carried)) =
            EVENT_FIELDS.iter().find(|(t, _)| *t == config.event_type)
        else {
            return Err(format!(
                "event_type `{}`: unknown (event types: {})",
                config.event_type,
                EVENT_FIELDS
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let field_of = |name: &str| -> Result<(Field, Kind), String> {
            let (field, kind) = Field::parse(name)?;
            if !carried.contains(&field) {
                let names: Vec<&str> = carried.iter().map(|f| f.name()).collect();
                return Err(format!(
                    "field `{name}`: `{event_type}` events do not carry it (they carry: {})",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ));
            }
            Ok((field, kind))
        };
        let aggregate = match config.aggregate.as_str() {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "avg" => Aggregate::Avg,
            other => {
                return Err(format!(
                    "aggregate `{other}`: one of count, sum, min, max, avg"
                ))
            }
        };
        let (field, kind) = match (aggregate, config.field.as_deref()) {
            (Aggregate::Count, None) => (None, Kind::Int),
            (Aggregate::Count, Some(field)) => {
                return Err(format!(
                    "field `{field}`: `count` counts events and takes no field"
                ))
            }
            (_, None) => {
                return Err(format!(
                    "field: `{}` needs the numeric field it aggregates",
                    config.aggregate
                ))
            }
            (_, Some(name)) => {
                let (field, kind) = field_of(name)?;
                if kind == Kind::Text {
                    return Err(format!(
                        "field `{name}`: is text; `{}` needs a number",
                        config.aggregate
                    ));
                }
                (Some(field), kind)
            }
        };
        let mut group_by = Vec::new();
        for name in &config.group_by {
            let (field, kind) = field_of(name).map_err(|e| format!("group_by: {e}"))?;
            if kind != Kind::Text {
                return Err(format!(
                    "group_by: field `{name}` is a number; group by text fields"
                ));
            }
            group_by.push(field);
        }
        let filter = match &config.filter {
            Some(text) => {
                parse_filter(text, &field_of).map_err(|e| format!("filter `{text}`: {e}"))?
            }
            None => Vec::new(),
        };
        let names = match &config.window {
            None => vec!["hour".to_owned(), "day".to_owned()],
            Some(WindowsConfig::One(one)) => vec![one.clone()],
            Some(WindowsConfig::Many(many)) => many.clone(),
        };
        let mut windows = Vec::new();
        for name in names {
            let window =
                Window::parse(&name).ok_or_else(|| format!("window `{name}`: one of hour, day"))?;
            if !windows.contains(&window) {
                windows.push(window);
            }
        }
        if windows.is_empty() {
            return Err("window: at least one of hour, day".into());
        }
        Ok(KpiSpec {
            name: Name::from(name),
            event_type,
            filter,
            group_by,
            aggregate,
            field,
            kind,
            windows,
        })
    }

    /// `(group, value)` of `event` when the spec counts it: the group is the
    /// `group_by` values joined by `/` ("" without `group_by`); the value is
    /// the field's (1 for `count`).
    pub fn evaluate(&self, event: &Event) -> Option<(Name, i64)> {
        if event.body.type_name() != self.event_type
            || !self.filter.iter().all(|clause| clause.holds(event))
        {
            return None;
        }
        let value = match self.field {
            None => 1,
            Some(field) => match value_of(event, field)? {
                Value::Number(number) => number,
                Value::Text(_) => return None,
            },
        };
        let mut group = Name::default();
        for (i, field) in self.group_by.iter().enumerate() {
            let Some(Value::Text(text)) = value_of(event, *field) else {
                return None;
            };
            if i > 0 {
                group.push('/');
            }
            group.push_str(text);
        }
        Some((group, value))
    }
}

/// Validates every spec; the errors name the spec (`kpis[2] (name)`).
pub fn compile_all(configs: &[KpiSpecConfig]) -> Result<Vec<KpiSpec>, Vec<String>> {
    let mut specs: Vec<KpiSpec> = Vec::new();
    let mut errors = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        match KpiSpec::compile(config) {
            Ok(spec) if specs.iter().any(|s| s.name == spec.name) => {
                errors.push(format!("kpis[{i}] ({}): name declared twice", spec.name))
            }
            Ok(spec) => specs.push(spec),
            Err(error) => errors.push(format!("kpis[{i}] ({}): {error}", config.name)),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Looks a field name up for the spec's event type.
type FieldOf<'a> = dyn Fn(&str) -> Result<(Field, Kind), String> + 'a;

fn parse_filter(text: &str, field_of: &FieldOf<'_>) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("is empty".into());
    }
    loop {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return Err(format!("expected a field name at `{rest}`"));
        }
        let (field, kind) = field_of(&rest[..name_len])?;
        rest = rest[name_len..].trim_start();
        let (op, len) = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find(|(token, _)| rest.starts_with(token))
        .map(|(token, op)| (op, token.len()))
        .ok_or_else(|| format!("expected one of == != < <= > >= at `{rest}`"))?;
        rest = rest[len..].trim_start();
        let value = if let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let end = rest[1..]
                .find(quote)
                .ok_or_else(|| format!("unterminated string at `{rest}`"))?;
            let literal = rest[1..1 + end].to_owned();
            rest = &rest[end + 2..];
            if kind != Kind::Text {
                return Err(format!(
                    "`{}` is a number; compare it with a number, not '{literal}'",
                    field.name()
                ));
            }
            Literal::Text(literal)
        } else {
            let len = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            let token = &rest[..len];
            rest = &rest[len..];
            let number = match kind {
                Kind::Text => {
                    return Err(format!(
                        "`{}` is text; quote the value ('{token}')",
                        field.name()
                    ))
                }
                Kind::Int => token
                    .parse::<i64>()
                    .map_err(|_| format!("`{token}` is not an integer"))?,
                Kind::Money => Money::parse(token)
                    .map_err(|e| e.to_string())?
                    .ten_thousandths(),
            };
            Literal::Number(number)
        };
        if kind == Kind::Text && !matches!(op, Op::Eq | Op::Ne) {
            return Err(format!(
                "`{}` is text: only == and != compare it",
                field.name()
            ));
        }
        clauses.push(Clause { field, op, value });
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(clauses);
        }
        rest = rest
            .strip_prefix("and")
            .filter(|r| r.starts_with(char::is_whitespace))
            .ok_or_else(|| format!("expected `and` at `{rest}`"))?
            .trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OrderStatus;

    fn config(
        event_type: &str,
        filter: Option<&str>,
        group_by: &[&str],
        aggregate: &str,
        field: Option<&str>,
    ) -> KpiSpecConfig {
        KpiSpecConfig {
            name: "custom".into(),
            event_type: event_type.into(),
            filter: filter.map(Into::into),
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            aggregate: aggregate.into(),
            field: field.map(Into::into),
            window: None,
        }
    }

    fn adjusted(qty: i64, reason: &str) -> Event {
        Event {
            tenant: "t".into(),
            id: "e".into(),
            seq: 0,
            ts: 0,
            body: EventBody::StockAdjusted {
                sku: "A".into(),
                location: "m".into(),
                qty,
                reason: reason.into(),
            },
        }
    }

    #[test]
    fn filters_group_and_fields_evaluate() {
        let spec = KpiSpec::compile(&config(
            "stock.adjusted",
            Some("reason == 'damage' and qty < 0"),
            &["location", "sku"],
            "sum",
            Some("qty"),
        ))
        .unwrap();
        assert_eq!(
            spec.evaluate(&adjusted(-3, "damage")),
            Some(("m/A".into(), -3))
        );
        assert_eq!(spec.evaluate(&adjusted(3, "damage")), None);
        assert_eq!(spec.evaluate(&adjusted(-3, "sale")), None);
        let count = KpiSpec::compile(&config(
            "stock.adjusted",
            Some("qty >= 2"),
            &[],
            "count",
            None,
        ))
        .unwrap();
        assert_eq!(count.evaluate(&adjusted(2, "x")), Some(("".into(), 1)));
        assert_eq!(count.evaluate(&adjusted(1, "x")), None);
        let money = KpiSpec::compile(&config(
            "order.placed",
            Some("total > 10.5"),
            &["customer_id"],
            "max",
            Some("total"),
        ))
        .unwrap();
        assert_eq!(money.kind, Kind::Money);
        assert_eq!(money.windows, vec![Window::Hour, Window::Day]);
    }

    #[test]
    fn errors_name_the_rule() {
        let error = |c: KpiSpecConfig| KpiSpec::compile(&c).unwrap_err();
        assert!(error(config("stock.moved", None, &[], "count", None))
            .starts_with("event_type `stock.moved`: unknown"));
        assert!(error(config("stock.adjusted", None, &[], "median", None))
            .starts_with("aggregate `median`"));
        assert!(error(config("stock.adjusted", None, &[], "sum", None))
            .contains("needs the numeric field"));
        assert!(
            error(config("stock.adjusted", None, &[], "sum", Some("reason"))).contains("is text")
        );
        assert!(
            error(config("order.placed", None, &["location"], "count", None))
                .contains("`order.placed` events do not carry it")
        );
        assert!(error(config(
            "stock.adjusted",
            Some("reason < 'a'"),
            &[],
            "count",
            None
        ))
        .contains("only == and != compare it"));
        assert!(error(config(
            "stock.adjusted",
            Some("qty == 'a'"),
            &[],
            "count",
            None
        ))
        .contains("is a number"));
        assert!(error(config(
            "stock.adjusted",
            Some("qty = 3"),
            &[],
            "count",
            None
        ))
        .contains("expected one of"));
        assert!(error(config(
            "stock.adjusted",
            Some("qty == 3 or qty == 4"),
            &[],
            "count",
            None
        ))
        .contains("expected `and`"));
        assert!(error(config(
            "stock.adjusted",
            Some("reason == 'x"),
            &[],
            "count",
            None
        ))
        .contains("unterminated"));
        assert!(error(config(
            "stock.adjusted",
            Some("color == 'x'"),
            &[],
            "count",
            None
        ))
        .contains("unknown field `color`"));
        let mut builtin = config("stock.adjusted", None, &[], "count", None);
        builtin.name = "orders".into();
        assert!(error(builtin).contains("built-in"));
        let mut window = config("stock.adjusted", None, &[], "count", None);
        window.window = Some(WindowsConfig::One("week".into()));
        assert!(error(window).starts_with("window `week`"));
        let twice = compile_all(&[
            config("stock.adjusted", None, &[], "count", None),
            config("stock.reserved", None, &[], "count", None),
        ])
        .unwrap_err();
        assert_eq!(
            twice,
            vec!["kpis[1] (custom): name declared twice".to_string()]
        );
    }

    #[test]
    fn absent_fields_match_nothing() {
        let spec = KpiSpec::compile(&config(
            "order.cancelled",
            Some("reason != 'x'"),
            &[],
            "count",
            None,
        ))
        .unwrap();
        let cancelled = |reason: Option<&str>| Event {
            tenant: "t".into(),
            id: "e".into(),
            seq: 0,
            ts: 0,
            body: EventBody::OrderStatus {
                order_id: "o".into(),
                status: OrderStatus::Cancelled,
                reason: reason.map(Into::into),
            },
        };
        assert!(spec.evaluate(&cancelled(Some("late"))).is_some());
        assert!(spec.evaluate(&cancelled(None)).is_none());
    }
}
