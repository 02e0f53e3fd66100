//! The publisher thread: applies each run of completed epochs to its working
//! snapshot (stock deltas folded per key first, then alerts, low-stock rows,
//! KPIs and gauges) and publishes it whole, with the row changes for change
//! streams, once its outputs are acknowledged.

use super::outputs::{AlertsOut, Letters, OutputWatch, Writer};
use super::views::{Change, Completed};
use crate::changes::{Batch, Row};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::source::Appender;
use crate::store::{Snapshot, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use stockflow_dataflows::alert_rows::{low_stock_row, LowStockRow};
use stockflow_dataflows::alerts::{Alert, AlertKind};
use stockflow_dataflows::kpis::{raised, Cell, GaugeBook, KpiKey, SkuLookup, Table};
use stockflow_dataflows::model::{Epoch, ItemRow, Name, SkuKey, StockDelta, StockKey};
use stockflow_dataflows::order_rows::order_key;

/// Where the publisher sends what it publishes, besides the store.
pub struct Outputs {
    /// Topic names by source index (for `as_of`).
    pub topics: Vec<String>,
    /// Writes outcomes, alert transitions and dead letters.
    pub appender: Option<Arc<dyn Appender>>,
    /// The workers' dead letters, by epoch: acknowledged before it is published.
    pub letters: std::sync::mpsc::Receiver<Letters>,
    /// Where the decider's outcomes are appended, when there is a decider.
    pub outcomes_to: Option<String>,
    /// Where alert transitions are appended, when they are.
    pub alerts_to: Option<AlertsOut>,
    /// The KPI table, when KPIs are on.
    pub kpis: Option<Table>,
    /// The alerts of the checkpoint resumed from: the view starts with them.
    pub restored_alerts: Vec<Alert>,
    /// The KPI cells of the events the checkpoint folded: added with the first publish.
    pub restored_cells: Vec<(KpiKey, Cell)>,
}

/// The publisher thread: applies completed epochs to its working snapshot
/// and publishes it. Whatever arrived while it was busy is applied before the
/// next publish, so under load it publishes less often, with more epochs
/// each: fewer copy-on-write copies of the maps, never half an epoch.
///
/// Before publishing it appends the decider's outcomes to the event topic and
/// new alert transitions to the alerts topic and waits for them and the
/// epochs' dead letters to be acknowledged (durable before anyone sees the
/// epochs); a scoped `stockflow-outputs` thread does that while this one
/// applies the epochs. When change streams are on, it hands the store the
/// row changes of the publish with the snapshot.
pub fn run_publisher(
    from_workers: std::sync::mpsc::Receiver<Completed>,
    outputs: Outputs,
    store: Arc<Store>,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    let Outputs {
        topics,
        appender,
        letters,
        outcomes_to,
        alerts_to,
        kpis,
        restored_alerts,
        mut restored_cells,
    } = outputs;
    let watch = OutputWatch {
        store: &store,
        metrics: &metrics,
    };
    let mut writer = Writer {
        appender,
        letters,
        letters_due: Vec::new(),
        outcomes_to,
        alerts_to,
    };
    let mut kpis = kpis.map(|table| (table, GaugeBook::default()));
    let mut working = Snapshot::default();
    // A checkpoint's alerts are the view's first rows; their skus' gauges are
    // computed with the first publish (which carries the checkpoint's events).
    let mut restored_skus: Vec<SkuKey> = Vec::new();
    for alert in restored_alerts {
        if alert.raised {
            metrics
                .alerts_active
                .with_label_values(&[alert.kind.name()])
                .inc();
        }
        restored_skus.push(SkuKey {
            tenant: alert.key.tenant.clone(),
            sku: alert.key.sku.clone(),
        });
        working.apply_alert(alert);
    }
    let track = store.changes_enabled();
    while let Ok(first) = from_workers.recv() {
        let mut batches = vec![first];
        batches.extend(from_workers.try_iter());
        let after = working.as_of.epoch;
        let mut closed = Vec::new();
        // Row changes for change streams (only when they are on).
        let mut rows: Vec<(Row, i8)> = Vec::new();
        // Stock deltas commute (sums and a max), so the deltas of every epoch
        // in hand are folded per key first and each row of the B-trees is
        // touched once, in key order, however many epochs changed it.
        let mut stock: HashMap<StockKey, StockDelta, foldhash::fast::RandomState> =
            HashMap::default();
        let mut totals: HashMap<SkuKey, StockDelta, foldhash::fast::RandomState> =
            HashMap::default();
        let mut outcomes = Vec::new();
        let mut decided = Vec::new();
        let mut alerts: Vec<(Alert, Epoch)> = Vec::new();
        let mut kpi_cells = std::mem::take(&mut restored_cells);
        let mut extremes = Vec::new();
        // Skus whose gauges may have moved: their items changed (stock is noted below).
        let mut gauge_skus: Vec<SkuKey> = Vec::new();
        // ...and skus with alert transitions (their alert flags are looked up again).
        let mut alerted_skus: Vec<SkuKey> = std::mem::take(&mut restored_skus);
        for batch in batches {
            for change in batch.changes {
                match change {
                    Change::Stock(key, delta) => fold(&mut stock, key, delta),
                    Change::Total(key, delta) => fold(&mut totals, key, delta),
                    Change::Outcome(event) => outcomes.push(event),
                    Change::Alert(alert, epoch) => alerts.push((alert, epoch)),
                    Change::Command(tenant, command, event) => {
                        decided.push((tenant.clone(), command.clone()));
                        working.apply_command(tenant, command, event);
                    }
                    Change::Kpi(key, cell) => kpi_cells.push((key, cell)),
                    Change::Extreme(key, value, diff) => extremes.push(((key, value), diff)),
                    Change::Item(key, row, diff) => {
                        if kpis.is_some() {
                            gauge_skus.push(key.clone());
                        }
                        if track {
                            rows.push((Row::Item(key.clone(), row.clone()), diff.signum() as i8));
                        }
                        working.apply_item(key, row, diff);
                    }
                    Change::Order(event) if track => {
                        let Some(key) = order_key(&event) else {
                            continue;
                        };
                        let before = working.orders.get(&key).cloned();
                        let row = working.orders.entry(key.clone()).or_default();
                        row.apply(&event);
                        if before.as_ref() != Some(row) {
                            let after = row.clone();
                            let (tenant, id) = key;
                            if let Some(before) = before {
                                rows.push((
                                    Row::Order(tenant.clone(), id.clone(), Box::new(before)),
                                    -1,
                                ));
                            }
                            rows.push((Row::Order(tenant, id, Box::new(after)), 1));
                        }
                    }
                    Change::Order(event) => working.apply_order(&event),
                    Change::Progress(source, partition, offset) => {
                        let topic = topics
                            .get(source as usize)
                            .cloned()
                            .unwrap_or_else(|| format!("source-{source}"));
                        let reached = working
                            .as_of
                            .offsets
                            .entry(topic)
                            .or_default()
                            .entry(partition)
                            .or_insert(0);
                        *reached = (*reached).max(offset);
                    }
                }
            }
            working.as_of.epoch = working.as_of.epoch.max(batch.last_complete);
            closed.extend(batch.closed);
        }
        // low_stock rows depend on the alerts and on the stock row: note them before.
        let low_before: Vec<(StockKey, Option<LowStockRow>)> = if track {
            let mut keys: Vec<&StockKey> = stock
                .keys()
                .filter(|k| working.alerts.contains_key(*k))
                .chain(alerts.iter().map(|(a, _)| &a.key))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter()
                .map(|k| (k.clone(), low_stock_of(&working, k)))
                .collect()
        } else {
            Vec::new()
        };
        if kpis.is_some() {
            gauge_skus.extend(totals.keys().cloned());
            alerted_skus.extend(alerts.iter().map(|(alert, _)| SkuKey {
                tenant: alert.key.tenant.clone(),
                sku: alert.key.sku.clone(),
            }));
        }
        let tracked = track.then_some(&mut rows);
        let tracked = apply_deltas(stock, &mut working.stock, tracked, Row::Stock);
        apply_deltas(totals, &mut working.stock_totals, tracked, Row::Total);
        // Outcomes, alert transitions and the dead letters of these epochs are
        // durable before anyone can see the epochs: queued together and
        // awaited once, by a second thread while this one applies the epochs
        // to the working snapshot (so an alert storm's serialization and
        // acknowledgements overlap its alerts view, low-stock rows and KPIs).
        alerts.sort_by(|a, b| (a.1, &a.0.key, a.0.kind).cmp(&(b.1, &b.0.key, b.0.kind)));
        let through = working.as_of.epoch;
        let written = std::thread::scope(|scope| {
            let writing = writer.has_work(&outcomes, &alerts, through).then(|| {
                let (writer, alerts, outcomes) =
                    (&mut writer, &alerts, std::mem::take(&mut outcomes));
                let (shutdown, watch, metrics) = (&shutdown, &watch, &metrics);
                std::thread::Builder::new()
                    .name("stockflow-outputs".into())
                    .spawn_scoped(scope, move || {
                        writer.write(outcomes, alerts, through, shutdown, watch, metrics)
                    })
                    .expect("a thread starts")
            });
            if !alerts.is_empty() {
                // Counted per kind and state here, set once below: no label lookup per alert.
                let mut counts = [[0u64; 2]; 2];
                for (alert, epoch) in &alerts {
                    counts[alert.kind as usize][alert.raised as usize] += 1;
                    if track {
                        rows.push((Row::Alert(Box::new(alert.clone()), *epoch), 1));
                    }
                    working.apply_alert(alert.clone());
                }
                for kind in AlertKind::ALL {
                    let [cleared, raised] = counts[kind as usize];
                    metrics
                        .alert_transitions
                        .with_label_values(&[kind.name(), "raised"])
                        .inc_by(raised);
                    metrics
                        .alert_transitions
                        .with_label_values(&[kind.name(), "cleared"])
                        .inc_by(cleared);
                    metrics
                        .alerts_active
                        .with_label_values(&[kind.name()])
                        .add(raised as i64 - cleared as i64);
                }
            }
            for (key, before) in low_before {
                let after = low_stock_of(&working, &key);
                if before != after {
                    if let Some(before) = before {
                        rows.push((Row::LowStock(key.clone(), before), -1));
                    }
                    if let Some(after) = after {
                        rows.push((Row::LowStock(key, after), 1));
                    }
                }
            }
            if let Some((table, book)) = kpis.as_mut() {
                let changes = table.apply(kpi_cells, extremes);
                metrics.kpi_too_late.inc_by(changes.too_late);
                for (row, diff) in changes.rows {
                    if diff > 0 {
                        working.kpis.insert(row.key.clone(), row.value);
                    } else if working.kpis.get(&row.key) == Some(&row.value) {
                        working.kpis.remove(&row.key);
                    }
                    if track {
                        rows.push((Row::Kpi(Box::new(row)), diff));
                    }
                }
                for ((tenant, day), before, after) in changes.top {
                    match &after {
                        Some(top) => working.top_skus.insert((tenant.clone(), day), top.clone()),
                        None => working.top_skus.remove(&(tenant.clone(), day)),
                    };
                    if track {
                        if let Some(before) = before {
                            rows.push((Row::TopSkus(tenant.clone(), day, before), -1));
                        }
                        if let Some(after) = after {
                            rows.push((Row::TopSkus(tenant, day, after), 1));
                        }
                    }
                }
                for (tenant, before, after) in book.update(&working, gauge_skus, alerted_skus) {
                    working
                        .gauges
                        .entry(tenant)
                        .or_default()
                        .replace(before, after);
                }
                working.kpi_horizon = table.horizon();
                metrics
                    .view_rows
                    .with_label_values(&["kpis"])
                    .set(working.kpis.len() as i64);
            }
            match writing {
                Some(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                None => Ok(()),
            }
        });
        if let Err(error) = written {
            // Only at shutdown: the epochs stay unpublished (the checkpoint and
            // the committed offsets stay before them), so a restart reads them again.
            tracing::error!(%error, epoch = working.as_of.epoch, "stopping without publishing these epochs: their outputs were not acknowledged");
            return;
        }
        // Metrics first: whoever sees the new snapshot sees metrics at least as new.
        metrics.published_epoch.set(working.as_of.epoch as i64);
        for (view, rows) in [
            ("items", working.items.len()),
            ("stock", working.stock.len()),
            ("stock_totals", working.stock_totals.len()),
            ("orders", working.orders.len()),
        ] {
            metrics
                .view_rows
                .with_label_values(&[view])
                .set(rows as i64);
        }
        let batch = track.then(|| Batch::new(after, working.as_of.epoch, rows));
        store.publish(working.clone(), batch);
        if track {
            metrics
                .changes_retained
                .set(store.changes_retained() as i64);
        }
        // Only now: a reader must see the outcome or still see it pending, never neither.
        for (tenant, command) in decided {
            store.forget_submitted(&tenant, &command);
        }
        let now = Instant::now();
        for at in closed {
            metrics
                .epoch_latency
                .observe(now.duration_since(at).as_secs_f64());
        }
    }
}

/// What the gauge book reads of the working snapshot.
impl SkuLookup for Snapshot {
    fn item(&self, key: &SkuKey) -> Option<&ItemRow> {
        self.items.get(key)
    }

    fn on_hand(&self, key: &SkuKey) -> i64 {
        self.stock_totals.get(key).map_or(0, |total| total.on_hand)
    }

    fn alerts(&self, key: &SkuKey) -> (bool, bool) {
        let first = StockKey {
            tenant: key.tenant.clone(),
            sku: key.sku.clone(),
            location: Name::default(),
        };
        raised(
            self.alerts
                .range(first..)
                .take_while(|(k, _)| k.tenant == key.tenant && k.sku == key.sku)
                .map(|(_, pair)| pair),
        )
    }
}

fn low_stock_of(snapshot: &Snapshot, key: &StockKey) -> Option<LowStockRow> {
    snapshot
        .alerts
        .get(key)
        .and_then(|pair| low_stock_row(pair, snapshot.stock.get(key)))
}

/// Adds folded deltas to a view, in key order (each row of the B-tree is
/// touched once), and, when `rows` is given, records each row's retraction
/// and new value for change streams. Hands `rows` back for the next view.
fn apply_deltas<'a, K: Ord + Clone + std::hash::Hash>(
    deltas: HashMap<K, StockDelta, foldhash::fast::RandomState>,
    view: &mut imbl::OrdMap<K, StockDelta>,
    mut rows: Option<&'a mut Vec<(Row, i8)>>,
    row: impl Fn(K, StockDelta) -> Row,
) -> Option<&'a mut Vec<(Row, i8)>> {
    use differential_dataflow::difference::Semigroup;
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, delta) in deltas {
        let updated = match view.get_mut(&key) {
            Some(current) => {
                if let Some(rows) = rows.as_deref_mut() {
                    rows.push((row(key.clone(), *current), -1));
                }
                current.plus_equals(&delta);
                *current
            }
            None => {
                view.insert(key.clone(), delta);
                delta
            }
        };
        if let Some(rows) = rows.as_deref_mut() {
            rows.push((row(key, updated), 1));
        }
    }
    rows
}

fn fold<K: std::hash::Hash + Eq>(
    deltas: &mut HashMap<K, StockDelta, foldhash::fast::RandomState>,
    key: K,
    delta: StockDelta,
) {
    use differential_dataflow::difference::Semigroup;
    match deltas.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut row) => row.get_mut().plus_equals(&delta),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(delta);
        }
    }
}
