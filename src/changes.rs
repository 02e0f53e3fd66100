//! The changelog behind live change streams: every published epoch's row
//! changes, retained up to a bound, so that a subscriber reads a snapshot at
//! one epoch and then every later change exactly once, and a dropped stream
//! resumes from the last epoch it saw.
//!
//! The publisher appends one [`Batch`] per publish (covering the epochs
//! since the previous one) in the same step as it swaps in the snapshot, so a
//! snapshot at epoch `E` and the batches after `E` fit together without a gap
//! or an overlap. Subscribers pull batches at their own pace: a slow one
//! costs no memory, it only risks falling behind the retained history, and
//! is then told so and disconnected (see `http::changes`).

use crate::rows::{self, ViewRow};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use stockflow_dataflows::alert_rows::LowStockRow;
use stockflow_dataflows::alerts::Alert;
use stockflow_dataflows::kpis::{KpiRow, TopSkus};
use stockflow_dataflows::model::{Epoch, EventTime, ItemRow, Name, SkuKey, StockDelta, StockKey};
use stockflow_dataflows::order_rows::OrderRow;

/// The views a change stream can follow.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum View {
    /// The catalogue.
    Items,
    /// Stock per sku and location.
    Stock,
    /// Stock per sku.
    StockTotals,
    /// Orders.
    Orders,
    /// Stock rows whose low-stock alert is active.
    LowStock,
    /// Alert transitions (append-only: every row is an insertion).
    Alerts,
    /// KPIs per tenant, window, bucket and metric.
    Kpis,
    /// Top skus per tenant and day.
    TopSkus,
}

impl View {
    /// The view's name in URLs.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Parses [`View::name`].
    pub fn parse(name: &str) -> Option<View> {
        name.parse().ok()
    }
}

/// One row of one view.
#[derive(Clone, Debug)]
pub enum Row {
    /// An `items` row.
    Item(SkuKey, ItemRow),
    /// A `stock` row.
    Stock(StockKey, StockDelta),
    /// A `stock_totals` row.
    Total(SkuKey, StockDelta),
    /// An `orders` row: tenant, order id, row.
    Order(Name, Name, Box<OrderRow>),
    /// A `low_stock` row.
    LowStock(StockKey, LowStockRow),
    /// An alert transition, with the epoch it happened in.
    Alert(Box<Alert>, Epoch),
    /// A `kpis` row.
    Kpi(Box<KpiRow>),
    /// A `top_skus` row: tenant, day, the day's top skus.
    TopSkus(Name, EventTime, Arc<TopSkus>),
}

impl Row {
    /// The view the row belongs to.
    pub fn view(&self) -> View {
        match self {
            Row::Item(..) => View::Items,
            Row::Stock(..) => View::Stock,
            Row::Total(..) => View::StockTotals,
            Row::Order(..) => View::Orders,
            Row::LowStock(..) => View::LowStock,
            Row::Alert(..) => View::Alerts,
            Row::Kpi(..) => View::Kpis,
            Row::TopSkus(..) => View::TopSkus,
        }
    }

    /// The row's tenant.
    pub fn tenant(&self) -> &Name {
        match self {
            Row::Item(key, _) | Row::Total(key, _) => &key.tenant,
            Row::Stock(key, _) | Row::LowStock(key, _) => &key.tenant,
            Row::Order(tenant, ..) => tenant,
            Row::Alert(alert, _) => &alert.key.tenant,
            Row::Kpi(row) => &row.key.tenant,
            Row::TopSkus(tenant, ..) => tenant,
        }
    }

    /// The first key part after the tenant (sku, order id, metric; "" for
    /// top skus): what `prefix` filters on.
    pub fn key(&self) -> &str {
        match self {
            Row::Item(key, _) | Row::Total(key, _) => &key.sku,
            Row::Stock(key, _) | Row::LowStock(key, _) => &key.sku,
            Row::Order(_, order_id, _) => order_id,
            Row::Alert(alert, _) => &alert.key.sku,
            Row::Kpi(row) => &row.key.metric,
            Row::TopSkus(..) => "",
        }
    }

    /// The row, shaped as the view's reads show it.
    pub fn shown(&self) -> ViewRow<'_> {
        match self {
            Row::Item(key, row) => ViewRow::Item(rows::Item::of(key, row)),
            Row::Stock(key, delta) => ViewRow::Stock(rows::Stock::of(key, delta)),
            Row::Total(key, delta) => ViewRow::StockTotal(rows::StockTotal::of(key, delta)),
            Row::Order(tenant, id, row) => ViewRow::Order(rows::Order::of(tenant, id, row)),
            Row::LowStock(key, row) => ViewRow::LowStock(rows::LowStock::of(key, row)),
            Row::Alert(alert, epoch) => ViewRow::Alert(rows::AlertEvent::of(alert, *epoch)),
            Row::Kpi(row) => ViewRow::Kpi(rows::Kpi::of(&row.key, row.value)),
            Row::TopSkus(tenant, day, top) => {
                ViewRow::TopSkus(rows::TopSkusRow::of(tenant, *day, Some(top)))
            }
        }
    }

    /// The row as JSON, shaped as the view's reads show it.
    pub fn json(&self) -> Value {
        rows::value(self.shown())
    }
}

/// The changes of one publish: every epoch in `(after, epoch]`.
#[derive(Debug)]
pub struct Batch {
    /// The epoch published before.
    pub after: Epoch,
    /// The epoch this batch brings the views to.
    pub epoch: Epoch,
    /// Row changes: `+1` insertion, `-1` retraction; retractions of a key
    /// come before its insertion.
    pub changes: Vec<(Row, i8)>,
    /// When the batch was published (for latency measurements).
    pub published_at: Instant,
    /// Each change as a stream line's JSON, rendered once for all the
    /// streams that send it (see [`Batch::line`]).
    lines: Vec<std::sync::OnceLock<String>>,
    /// Per view, the indices of its changes sorted by (tenant, key, index):
    /// a stream finds its rows by binary search, not by a scan of the batch.
    index: std::sync::OnceLock<std::collections::HashMap<View, Vec<u32>>>,
}

impl Batch {
    /// The changes of the epochs `(after, epoch]`.
    pub fn new(after: Epoch, epoch: Epoch, changes: Vec<(Row, i8)>) -> Batch {
        let lines = (0..changes.len())
            .map(|_| std::sync::OnceLock::new())
            .collect();
        Batch {
            after,
            epoch,
            changes,
            published_at: Instant::now(),
            lines,
            index: std::sync::OnceLock::new(),
        }
    }

    /// The indices of the changes of `view` for `tenant` whose key starts
    /// with `prefix`, grouped by key, in batch order within a key (so a
    /// row's retraction still comes before its insertion).
    pub fn matching(&self, view: View, tenant: &str, prefix: &str) -> &[u32] {
        let index = self.index.get_or_init(|| {
            let mut by_view: std::collections::HashMap<View, Vec<u32>> =
                std::collections::HashMap::new();
            for (i, (row, _)) in self.changes.iter().enumerate() {
                by_view.entry(row.view()).or_default().push(i as u32);
            }
            for indices in by_view.values_mut() {
                indices.sort_by(|a, b| {
                    let (ra, rb) = (&self.changes[*a as usize].0, &self.changes[*b as usize].0);
                    (ra.tenant().as_str(), ra.key(), a).cmp(&(rb.tenant().as_str(), rb.key(), b))
                });
            }
            by_view
        });
        let Some(indices) = index.get(&view) else {
            return &[];
        };
        let row = |i: &u32| &self.changes[*i as usize].0;
        let start = indices
            .partition_point(|i| (row(i).tenant().as_str(), row(i).key()) < (tenant, prefix));
        let len = indices[start..]
            .partition_point(|i| row(i).tenant() == tenant && row(i).key().starts_with(prefix));
        &indices[start..start + len]
    }

    /// Change `index` as `{"epoch", "row", "diff"}` JSON text, rendered on
    /// first use: a thousand streams of one view serialize each row once.
    pub fn line(&self, index: usize) -> &str {
        self.lines[index].get_or_init(|| {
            let (row, diff) = &self.changes[index];
            let change = rows::Change {
                diff: *diff,
                epoch: self.epoch,
                row: row.shown(),
            };
            serde_json::to_string(&change).expect("changes serialize")
        })
    }
}

/// Why a stream cannot resume from an epoch.
#[derive(Debug, PartialEq, Eq)]
pub enum Gone {
    /// Changes after this epoch were compacted away: the oldest epoch to resume from is given.
    Compacted {
        /// The oldest epoch a stream can resume from.
        horizon: Epoch,
    },
    /// The epoch is newer than any this run published.
    Unknown {
        /// The newest published epoch.
        newest: Epoch,
    },
    /// The epoch comes from an earlier run (epochs keep growing across
    /// restarts): the changes between it and this run's start are not here.
    BeforeStart {
        /// This run's first epoch.
        first: Epoch,
    },
}

/// Retained batches, oldest first, bounded by rows and by batches.
#[derive(Debug)]
pub struct Changelog {
    batches: VecDeque<Arc<Batch>>,
    rows: usize,
    max_rows: usize,
    /// The oldest epoch whose later changes are all retained.
    horizon: Epoch,
    newest: Epoch,
    /// The run's first epoch (see [`Changelog::start_at`]).
    first: Epoch,
}

/// Most batches retained, however small.
const MAX_BATCHES: usize = 100_000;

impl Changelog {
    /// A changelog retaining at most `max_rows` row changes (0: none).
    pub fn new(max_rows: usize) -> Changelog {
        Changelog {
            batches: VecDeque::new(),
            rows: 0,
            max_rows,
            horizon: 0,
            newest: 0,
            first: 1,
        }
    }

    /// Before anything is published: this run's epochs begin at `first`, so
    /// an older epoch is one a client kept from an earlier run.
    pub fn start_at(&mut self, first: Epoch) {
        let first = first.max(1);
        (self.first, self.horizon, self.newest) = (first, first - 1, first - 1);
    }

    /// True when changes are retained at all.
    pub fn enabled(&self) -> bool {
        self.max_rows > 0
    }

    /// Appends a publish, then drops the oldest batches beyond the bounds.
    /// A publish without changes only moves the newest epoch on.
    pub fn push(&mut self, batch: Batch) {
        self.newest = batch.epoch;
        if batch.changes.is_empty() {
            return;
        }
        self.rows += batch.changes.len();
        self.batches.push_back(Arc::new(batch));
        while self.rows > self.max_rows || self.batches.len() > MAX_BATCHES {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.rows -= oldest.changes.len();
            self.horizon = oldest.epoch;
        }
    }

    /// The batches after `epoch`, oldest first.
    /// Epoch 0 is "nothing published yet": the run's start.
    pub fn since(&self, epoch: Epoch) -> Result<Vec<Arc<Batch>>, Gone> {
        let epoch = if epoch == 0 { self.first - 1 } else { epoch };
        if epoch < self.first - 1 {
            return Err(Gone::BeforeStart { first: self.first });
        }
        if epoch < self.horizon {
            return Err(Gone::Compacted {
                horizon: self.horizon,
            });
        }
        if epoch > self.newest {
            return Err(Gone::Unknown {
                newest: self.newest,
            });
        }
        let start = self.batches.partition_point(|b| b.epoch <= epoch);
        Ok(self.batches.range(start..).cloned().collect())
    }

    /// The newest epoch published (with or without changes).
    pub fn newest(&self) -> Epoch {
        self.newest
    }

    /// Row changes retained.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The oldest epoch a stream can resume from.
    pub fn horizon(&self) -> Epoch {
        self.horizon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_of_an_earlier_run_is_refused_and_nothing_published_is_the_start() {
        let mut log = Changelog::new(100);
        log.start_at(1_000);
        assert_eq!(
            log.since(0).unwrap().len(),
            0,
            "a stream opened before the first publish starts at the run's start"
        );
        assert_eq!(
            log.since(998).unwrap_err(),
            Gone::BeforeStart { first: 1_000 }
        );
        assert_eq!(
            log.since(5).unwrap_err(),
            Gone::BeforeStart { first: 1_000 }
        );
        assert!(log.since(999).unwrap().is_empty());
        assert_eq!(log.since(1_000).unwrap_err(), Gone::Unknown { newest: 999 });
    }

    fn batch(after: Epoch, epoch: Epoch, rows: usize) -> Batch {
        let key = SkuKey {
            tenant: "t".into(),
            sku: "s".into(),
        };
        Batch::new(
            after,
            epoch,
            vec![(Row::Total(key, StockDelta::default()), 1); rows],
        )
    }

    #[test]
    fn resumes_inside_the_retained_history_only() {
        let mut log = Changelog::new(5);
        log.push(batch(0, 2, 2));
        log.push(batch(2, 3, 0));
        log.push(batch(3, 5, 3));
        assert_eq!(
            log.since(0)
                .unwrap()
                .iter()
                .map(|b| b.epoch)
                .collect::<Vec<_>>(),
            [2, 5],
            "an empty publish is not kept"
        );
        assert_eq!(
            log.since(3)
                .unwrap()
                .iter()
                .map(|b| b.epoch)
                .collect::<Vec<_>>(),
            [5]
        );
        assert!(log.since(5).unwrap().is_empty());
        assert_eq!(log.since(6).unwrap_err(), Gone::Unknown { newest: 5 });
        log.push(batch(5, 6, 2));
        assert_eq!(log.rows(), 5, "the first batch was dropped");
        assert_eq!(log.horizon(), 2);
        assert_eq!(log.since(1).unwrap_err(), Gone::Compacted { horizon: 2 });
        assert_eq!(
            log.since(2)
                .unwrap()
                .iter()
                .map(|b| b.epoch)
                .collect::<Vec<_>>(),
            [5, 6]
        );
    }

    #[test]
    fn matching_finds_a_prefix_and_keeps_the_order_within_a_key() {
        let total = |tenant: &str, sku: &str, on_hand: i64| {
            Row::Total(
                SkuKey {
                    tenant: tenant.into(),
                    sku: sku.into(),
                },
                StockDelta {
                    on_hand,
                    ..Default::default()
                },
            )
        };
        let batch = Batch::new(
            0,
            1,
            vec![
                (total("t", "B2", 1), -1),
                (total("t", "A1", 5), 1),
                (total("t", "B2", 2), 1),
                (total("u", "B1", 9), 1),
                (total("t", "B1", 3), 1),
                (total("t", "C", 4), 1),
            ],
        );
        assert_eq!(batch.matching(View::StockTotals, "t", "B"), [4, 0, 2]);
        assert_eq!(batch.matching(View::StockTotals, "t", ""), [1, 4, 0, 2, 5]);
        assert_eq!(batch.matching(View::StockTotals, "u", "B"), [3]);
        assert!(batch.matching(View::Stock, "t", "").is_empty());
        assert!(batch.matching(View::StockTotals, "t", "Z").is_empty());
    }
}
