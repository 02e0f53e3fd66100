//! [`Table`]: the accumulation of the `kpis` dataflow's output, its derived
//! rows, the top skus per day, retention (the gauges are in `gauges.rs`).
//!
//! Pure state and arithmetic: the engine's publisher owns one table and
//! applies each publish's updates to it; what changed comes back as row
//! retractions and insertions for the snapshot and the change streams.

use super::{cells, Aggregate, Cell, Kind, KpiKey, KpiSpec, Window};
use crate::model::{EventTime, Money, Name};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A metric's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KpiValue {
    /// A count or a sum of integers.
    Int(i128),
    /// Money, exact, in ten-thousandths of the major unit (shown in major units).
    Money(i128),
    /// A ratio or a mean of integers.
    Ratio(f64),
}

impl KpiValue {
    /// The value as JSON: integers as integers, money in major units, ratios as numbers.
    pub fn json(self) -> serde_json::Value {
        match self {
            KpiValue::Int(n) => match i64::try_from(n) {
                Ok(n) => n.into(),
                Err(_) => serde_json::json!(n as f64),
            },
            KpiValue::Money(m) => match i64::try_from(m) {
                Ok(m) => serde_json::json!(Money::from_ten_thousandths(m)),
                Err(_) => serde_json::json!(m as f64 / 10_000.0),
            },
            KpiValue::Ratio(r) => serde_json::json!(r),
        }
    }
}

/// One row of the `kpis` view: its key (whose `metric` is the row's metric
/// name, e.g. `revenue`, not the cell it derives from) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct KpiRow {
    /// Tenant, window, bucket, metric, group.
    pub key: KpiKey,
    /// Value.
    pub value: KpiValue,
}

/// The top skus by units sold of one tenant and day, best first (at most 10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopSkus {
    /// `(sku, units)`, by units descending then sku.
    pub skus: Vec<(Name, i64)>,
}

/// How many skus a `top_skus` row lists.
pub const TOP_SKUS: usize = 10;

/// A `top_skus` row of `(tenant, day)`: before and after (`None`: no row).
pub type TopChange = (
    (Name, EventTime),
    Option<Arc<TopSkus>>,
    Option<Arc<TopSkus>>,
);

/// What one [`Table::apply`] changed.
#[derive(Debug, Default)]
pub struct TableChanges {
    /// `kpis` rows retracted (-1) and inserted (+1); a key's retraction comes first.
    pub rows: Vec<(KpiRow, i8)>,
    /// `top_skus` rows per `(tenant, day)`: before and after (`None`: no row).
    pub top: Vec<TopChange>,
    /// Cell updates ignored because their bucket was already past retention.
    pub too_late: u64,
}

/// The KPI state of one engine (see the module documentation).
#[derive(Debug)]
pub struct Table {
    specs: Arc<[KpiSpec]>,
    retention_ms: i64,
    cells: HashMap<KpiKey, Cell>,
    extremes: HashMap<KpiKey, i64>,
    /// `(tenant, day, Reverse(units), sku)` of every sku with units sold: the ranking.
    ranking: BTreeSet<(Name, EventTime, std::cmp::Reverse<i128>, Name)>,
    top: HashMap<(Name, EventTime), Arc<TopSkus>>,
    /// Keys by the end of their bucket, for retention.
    expiry: BTreeMap<EventTime, Vec<KpiKey>>,
    /// End of the newest hour bucket seen.
    newest: EventTime,
    /// Cells and extremes whose bucket ends at or before this are gone.
    horizon: EventTime,
}

impl Table {
    /// An empty table for `specs`, keeping buckets that end within
    /// `retention_ms` of the newest hour seen.
    pub fn new(specs: Arc<[KpiSpec]>, retention_ms: i64) -> Table {
        Table {
            specs,
            retention_ms,
            cells: HashMap::new(),
            extremes: HashMap::new(),
            ranking: BTreeSet::new(),
            top: HashMap::new(),
            expiry: BTreeMap::new(),
            newest: EventTime::MIN,
            horizon: EventTime::MIN,
        }
    }

    /// Accumulated cells (for tests and the oracle).
    pub fn cells(&self) -> &HashMap<KpiKey, Cell> {
        &self.cells
    }

    /// The retention horizon: buckets ending at or before it are compacted away.
    pub fn horizon(&self) -> EventTime {
        self.horizon
    }

    /// Applies cell additions and extreme changes (retractions and
    /// insertions of the current min/max per key), then retention.
    pub fn apply(
        &mut self,
        cells: Vec<(KpiKey, Cell)>,
        extremes: Vec<((KpiKey, i64), isize)>,
    ) -> TableChanges {
        use differential_dataflow::difference::Semigroup;
        let mut changes = TableChanges::default();
        // Fold per key first: each row is retracted and inserted once per apply.
        let mut folded: HashMap<KpiKey, Cell> = HashMap::new();
        for (key, cell) in cells {
            self.note_newest(&key);
            folded.entry(key).or_default().plus_equals(&cell);
        }
        let mut extreme_diffs: HashMap<KpiKey, BTreeMap<i64, isize>> = HashMap::new();
        for ((key, value), diff) in extremes {
            self.note_newest(&key);
            *extreme_diffs
                .entry(key)
                .or_default()
                .entry(value)
                .or_default() += diff;
        }
        let mut folded: Vec<(KpiKey, Cell)> = folded
            .into_iter()
            .filter(|(_, c)| *c != Cell::default())
            .collect();
        folded.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut touched_days: BTreeSet<(Name, EventTime)> = BTreeSet::new();
        for (key, delta) in folded {
            if self.expired(&key) {
                changes.too_late += 1;
                continue;
            }
            let before = self.cells.get(&key).copied();
            let mut after = before.unwrap_or_default();
            after.plus_equals(&delta);
            if key.metric == cells::UNITS_BY_SKU {
                if let Some(before) = before {
                    self.ranking.remove(&(
                        key.tenant.clone(),
                        key.bucket,
                        std::cmp::Reverse(before.sum),
                        key.group.clone(),
                    ));
                }
                if after.sum != 0 {
                    self.ranking.insert((
                        key.tenant.clone(),
                        key.bucket,
                        std::cmp::Reverse(after.sum),
                        key.group.clone(),
                    ));
                }
                touched_days.insert((key.tenant.clone(), key.bucket));
            } else {
                self.row_changes(
                    &key,
                    before,
                    Some(after).filter(|c| *c != Cell::default()),
                    &mut changes.rows,
                );
            }
            if after == Cell::default() {
                self.cells.remove(&key);
            } else {
                if before.is_none() {
                    self.expiry
                        .entry(key.bucket + key.window.millis())
                        .or_default()
                        .push(key.clone());
                }
                self.cells.insert(key, after);
            }
        }
        let mut extreme_diffs: Vec<(KpiKey, BTreeMap<i64, isize>)> =
            extreme_diffs.into_iter().collect();
        extreme_diffs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, mut diffs) in extreme_diffs {
            if self.expired(&key) {
                changes.too_late += 1;
                continue;
            }
            let before = self.extremes.get(&key).copied();
            if let Some(before) = before {
                *diffs.entry(before).or_default() += 1;
            }
            let after = diffs
                .into_iter()
                .find(|(_, count)| *count > 0)
                .map(|(value, _)| value);
            if before != after {
                let spec = self.spec(&key.metric);
                if let (Some(before), Some(spec)) = (before, spec) {
                    changes
                        .rows
                        .push((KpiRow::of(&key, extreme_value(spec, before)), -1));
                }
                if let (Some(after), Some(spec)) = (after, spec) {
                    changes
                        .rows
                        .push((KpiRow::of(&key, extreme_value(spec, after)), 1));
                }
            }
            match after {
                Some(value) => {
                    if before.is_none() {
                        self.expiry
                            .entry(key.bucket + key.window.millis())
                            .or_default()
                            .push(key.clone());
                    }
                    self.extremes.insert(key, value);
                }
                None => {
                    self.extremes.remove(&key);
                }
            }
        }
        self.compact(&mut changes, &mut touched_days);
        for day in touched_days {
            let skus: Vec<(Name, i64)> = self
                .ranking
                .range(
                    (
                        day.0.clone(),
                        day.1,
                        std::cmp::Reverse(i128::MAX),
                        Name::default(),
                    )..,
                )
                .take_while(|(tenant, bucket, ..)| *tenant == day.0 && *bucket == day.1)
                .take(TOP_SKUS)
                .map(|(_, _, units, sku)| (sku.clone(), i64::try_from(units.0).unwrap_or(i64::MAX)))
                .collect();
            let after = (!skus.is_empty()).then(|| Arc::new(TopSkus { skus }));
            let before = match &after {
                Some(after) => self.top.insert(day.clone(), after.clone()),
                None => self.top.remove(&day),
            };
            if before != after {
                changes.top.push((day, before, after));
            }
        }
        changes
    }

    /// Moves the newest hour seen (what retention counts from) to `key`'s,
    /// if it is an hour bucket (the built-in cells of every counted event include one).
    fn note_newest(&mut self, key: &KpiKey) {
        if key.window == Window::Hour {
            self.newest = self
                .newest
                .max(key.bucket.saturating_add(Window::Hour.millis()));
        }
    }

    fn spec(&self, name: &str) -> Option<&KpiSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    fn expired(&self, key: &KpiKey) -> bool {
        key.bucket.saturating_add(key.window.millis()) <= self.horizon
    }

    /// Drops the buckets that ended `retention_ms` or more before the newest hour.
    fn compact(
        &mut self,
        changes: &mut TableChanges,
        touched_days: &mut BTreeSet<(Name, EventTime)>,
    ) {
        let horizon = self.newest.saturating_sub(self.retention_ms);
        if horizon <= self.horizon {
            return;
        }
        self.horizon = horizon;
        let keep = self.expiry.split_off(&(horizon + 1));
        let gone = std::mem::replace(&mut self.expiry, keep);
        for key in gone.into_values().flatten() {
            if let Some(cell) = self.cells.remove(&key) {
                if key.metric == cells::UNITS_BY_SKU {
                    self.ranking.remove(&(
                        key.tenant.clone(),
                        key.bucket,
                        std::cmp::Reverse(cell.sum),
                        key.group.clone(),
                    ));
                    touched_days.insert((key.tenant.clone(), key.bucket));
                } else {
                    self.row_changes(&key, Some(cell), None, &mut changes.rows);
                }
            }
            if let Some(value) = self.extremes.remove(&key) {
                if let Some(spec) = self.spec(&key.metric) {
                    changes
                        .rows
                        .push((KpiRow::of(&key, extreme_value(spec, value)), -1));
                }
            }
        }
    }

    fn row_changes(
        &self,
        key: &KpiKey,
        before: Option<Cell>,
        after: Option<Cell>,
        rows: &mut Vec<(KpiRow, i8)>,
    ) {
        let before = before
            .map(|cell| self.rows_of(key, cell))
            .unwrap_or_default();
        let after = after
            .map(|cell| self.rows_of(key, cell))
            .unwrap_or_default();
        for row in &before {
            if !after.contains(row) {
                rows.push((row.clone(), -1));
            }
        }
        for row in after {
            if !before.contains(&row) {
                rows.push((row, 1));
            }
        }
    }

    /// The rows a cell shows as (built-in cells show one to three metrics).
    pub fn rows_of(&self, key: &KpiKey, cell: Cell) -> Vec<KpiRow> {
        let row = |metric: &str, value: KpiValue| KpiRow {
            key: KpiKey {
                metric: Name::from(metric),
                ..key.clone()
            },
            value,
        };
        let count = KpiValue::Int(cell.count as i128);
        match key.metric.as_str() {
            cells::ORDERS => {
                let mut rows = vec![
                    row("orders", count),
                    row("revenue", KpiValue::Money(cell.sum)),
                ];
                if cell.count > 0 {
                    rows.push(row(
                        "avg_order_value",
                        KpiValue::Money(rounded_div(cell.sum, cell.count as i128)),
                    ));
                }
                rows
            }
            cells::UNITS_SOLD => vec![row("units_sold", KpiValue::Int(cell.sum))],
            cells::ORDERS_CANCELLED | cells::STOCK_MOVEMENTS | cells::ITEMS_CREATED => {
                vec![row(key.metric.as_str(), count)]
            }
            cells::RESERVATIONS => {
                let mut rows = vec![
                    row("reservations_accepted", KpiValue::Int(cell.sum)),
                    row(
                        "reservations_rejected",
                        KpiValue::Int(cell.count as i128 - cell.sum),
                    ),
                ];
                if cell.count > 0 {
                    rows.push(row(
                        "reservation_success_rate",
                        KpiValue::Ratio(cell.sum as f64 / cell.count as f64),
                    ));
                }
                rows
            }
            cells::UNITS_BY_SKU => Vec::new(),
            custom => {
                let Some(spec) = self.spec(custom) else {
                    return Vec::new();
                };
                let value = match (spec.aggregate, spec.kind) {
                    (Aggregate::Count, _) => count,
                    (Aggregate::Sum, Kind::Money) => KpiValue::Money(cell.sum),
                    (Aggregate::Sum, _) => KpiValue::Int(cell.sum),
                    (Aggregate::Avg, _) if cell.count == 0 => return Vec::new(),
                    (Aggregate::Avg, Kind::Money) => {
                        KpiValue::Money(rounded_div(cell.sum, cell.count as i128))
                    }
                    (Aggregate::Avg, _) => KpiValue::Ratio(cell.sum as f64 / cell.count as f64),
                    (Aggregate::Min | Aggregate::Max, _) => return Vec::new(),
                };
                vec![KpiRow::of(key, value)]
            }
        }
    }

    /// Every current row of the `kpis` view, in no particular order.
    pub fn rows(&self) -> Vec<KpiRow> {
        let mut rows: Vec<KpiRow> = self
            .cells
            .iter()
            .flat_map(|(key, cell)| self.rows_of(key, *cell))
            .collect();
        for (key, value) in &self.extremes {
            if let Some(spec) = self.spec(&key.metric) {
                rows.push(KpiRow::of(key, extreme_value(spec, *value)));
            }
        }
        rows
    }

    /// The current top skus of every tenant and day.
    pub fn top(&self) -> &HashMap<(Name, EventTime), Arc<TopSkus>> {
        &self.top
    }
}

impl KpiRow {
    fn of(key: &KpiKey, value: KpiValue) -> KpiRow {
        KpiRow {
            key: key.clone(),
            value,
        }
    }
}

fn extreme_value(spec: &KpiSpec, value: i64) -> KpiValue {
    match spec.kind {
        Kind::Money => KpiValue::Money(value as i128),
        _ => KpiValue::Int(value as i128),
    }
}

/// `n / d` rounded half away from zero (money means stay exact to the ten-thousandth).
fn rounded_div(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    if 2 * r.abs() >= d.abs() {
        q + if (n < 0) == (d < 0) { 1 } else { -1 }
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(metric: &str, window: Window, bucket: EventTime, group: &str) -> KpiKey {
        KpiKey {
            tenant: "t".into(),
            window,
            bucket,
            metric: metric.into(),
            group: group.into(),
        }
    }

    #[test]
    fn derived_rows_follow_their_cell() {
        let mut table = Table::new(Arc::from(Vec::new()), i64::MAX);
        let changes = table.apply(
            vec![(
                key(cells::ORDERS, Window::Hour, 0, ""),
                Cell {
                    count: 3,
                    sum: 100_000,
                },
            )],
            Vec::new(),
        );
        let inserted: Vec<(&str, KpiValue)> = changes
            .rows
            .iter()
            .map(|(r, _)| (r.key.metric.as_str(), r.value))
            .collect();
        assert_eq!(
            inserted,
            vec![
                ("orders", KpiValue::Int(3)),
                ("revenue", KpiValue::Money(100_000)),
                ("avg_order_value", KpiValue::Money(33_333))
            ]
        );
        assert!(changes.rows.iter().all(|(_, d)| *d == 1));
        // A cancellation: the order's contribution leaves; unchanged rows are not re-sent.
        let changes = table.apply(
            vec![(
                key(cells::ORDERS, Window::Hour, 0, ""),
                Cell {
                    count: -1,
                    sum: -40_000,
                },
            )],
            Vec::new(),
        );
        assert_eq!(
            changes.rows.len(),
            6,
            "three retractions, three insertions: {:?}",
            changes.rows
        );
        assert_eq!(
            table
                .rows()
                .iter()
                .find(|r| r.key.metric == "avg_order_value")
                .unwrap()
                .value,
            KpiValue::Money(30_000)
        );
        // Back to zero: the cell and its rows are gone.
        let changes = table.apply(
            vec![(
                key(cells::ORDERS, Window::Hour, 0, ""),
                Cell {
                    count: -2,
                    sum: -60_000,
                },
            )],
            Vec::new(),
        );
        assert_eq!(changes.rows.iter().filter(|(_, d)| *d == -1).count(), 3);
        assert!(table.rows().is_empty());
    }

    #[test]
    fn top_skus_rank_by_units_then_sku() {
        let mut table = Table::new(Arc::from(Vec::new()), i64::MAX);
        let units = |sku: &str, n: i128| {
            (
                key(cells::UNITS_BY_SKU, Window::Day, 0, sku),
                Cell { count: 1, sum: n },
            )
        };
        let mut cells: Vec<_> = (0..12).map(|i| units(&format!("s{i:02}"), 5)).collect();
        cells.push(units("s11", 1));
        let changes = table.apply(cells, Vec::new());
        let top = changes.top[0].2.clone().unwrap();
        assert_eq!(top.skus.len(), 10);
        assert_eq!(top.skus[0], ("s11".into(), 6));
        assert_eq!(top.skus[1], ("s00".into(), 5));
        assert_eq!(top.skus[9].0, "s08");
        // s11 falls back: it leaves the top.
        let changes = table.apply(vec![units("s11", -6)], Vec::new());
        let top = changes.top[0].2.clone().unwrap();
        assert!(!top.skus.iter().any(|(sku, _)| sku == "s11"));
        assert_eq!(top.skus[9].0, "s09");
    }

    #[test]
    fn retention_compacts_old_buckets_and_refuses_late_updates() {
        let hour = Window::Hour.millis();
        let mut table = Table::new(Arc::from(Vec::new()), 2 * hour);
        let movement = |bucket: EventTime| {
            (
                key(cells::STOCK_MOVEMENTS, Window::Hour, bucket, ""),
                Cell { count: 1, sum: 0 },
            )
        };
        table.apply(vec![movement(0), movement(hour)], Vec::new());
        assert_eq!(table.rows().len(), 2);
        // Newest hour ends at 4h: buckets ending at or before 2h go.
        let changes = table.apply(vec![movement(3 * hour)], Vec::new());
        assert_eq!(
            changes.rows.iter().filter(|(_, d)| *d == -1).count(),
            2,
            "{:?}",
            changes.rows
        );
        assert_eq!(table.horizon(), 2 * hour);
        let changes = table.apply(vec![movement(hour)], Vec::new());
        assert_eq!((changes.too_late, changes.rows.len()), (1, 0));
        let changes = table.apply(vec![movement(2 * hour)], Vec::new());
        assert_eq!((changes.too_late, changes.rows.len()), (0, 1));
    }

    #[test]
    fn money_means_round_half_away_from_zero() {
        assert_eq!(rounded_div(5, 2), 3);
        assert_eq!(rounded_div(-5, 2), -3);
        assert_eq!(rounded_div(4, 3), 1);
        assert_eq!(rounded_div(100_000, 3), 33_333);
    }
}
