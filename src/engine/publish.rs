//! Where data leaves the dataflow: every view's updates and every partition's
//! progress are sent to worker 0, which hands each *completed* epoch to the
//! publisher thread; that thread applies it to its working snapshot and
//! publishes it whole.

use crate::changes::{Batch, Row};
use crate::metrics::Metrics;
use crate::rows::{low_stock_row, AlertEvent, LowStockRow};
use crate::shutdown::Shutdown;
use crate::source::outbox::{LogOnly, Patience, Watch};
use crate::source::{Appender, DeadLetter, Outbox, Outgoing};
use crate::store::{Snapshot, Store};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use stockflow_dataflows::alerts::{Alert, AlertKind};
use stockflow_dataflows::kpis::{Cell, KpiKey, SkuGauge, Table};
use stockflow_dataflows::model::command::causing_command;
use stockflow_dataflows::model::{
    Command, Epoch, Event, EventBody, ItemRow, Name, SkuKey, StockDelta, StockKey,
};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};

/// One update travelling to the publisher.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Change {
    /// An `items` row inserted (+1) or retracted (-1).
    Item(SkuKey, ItemRow, isize),
    /// A `stock` row delta.
    Stock(StockKey, StockDelta),
    /// A `stock_totals` row delta.
    Total(SkuKey, StockDelta),
    /// Source `(index, partition)` has been read up to this next offset.
    Progress(u32, u32, u64),
    /// An event the decider produced: to append to the event topic before
    /// the epoch is published.
    Outcome(Event),
    /// An order event, for the `orders` view.
    Order(Event),
    /// An event caused by command `(tenant, command id)`: its outcome, for
    /// `GET /v1/commands/{id}` (from the decider or read back from the log).
    Command(Name, Name, Event),
    /// An alert transition and the epoch it happened in.
    Alert(Alert, Epoch),
    /// An addition to a KPI cell.
    Kpi(KpiKey, Cell),
    /// The min or max of a custom KPI's key, inserted (+1) or retracted (-1).
    Extreme(KpiKey, i64, isize),
}

/// Builds the views over `events` and routes their updates, with `progress`,
/// to `publisher` on worker 0. `probe` tracks how far the views have got.
///
/// `commands` go through the decider, whose outcomes join the events in the
/// same epoch (so a command's effects are visible when its position is) and
/// are appended to the event topic by the publisher. Without a command path
/// (a read-only engine) there is no decider: its state would cost ingest
/// throughput for nothing.
pub fn views<'scope>(
    events: VecCollection<'scope, Epoch, Event>,
    commands: VecCollection<'scope, Epoch, Command>,
    config: &super::EngineConfig,
    restored_alerts: Option<stockflow_dataflows::alerts::Restored<Epoch>>,
    progress: VecCollection<'scope, Epoch, (u32, u32, u64)>,
    publisher: Publisher,
    probe: &Handle<Epoch>,
) {
    let outcomes = if config.commands.is_some() {
        stockflow_dataflows::decide(events.clone(), commands)
    } else {
        commands.flat_map(|_| None::<Event>)
    };
    // The log copy of an outcome comes back later with the same id: dedup keeps the first.
    let events = stockflow_dataflows::dedup(events.concat(outcomes.clone()));
    let caused = events.clone().flat_map(|event| {
        let command = match &event.body {
            EventBody::ReservationRejected { command_id, .. } => Some(command_id.clone()),
            _ => causing_command(&event.id).map(Name::from),
        };
        command.map(|command| (event.tenant.clone(), command, event))
    });
    let orders = events.clone().filter(|event| {
        matches!(
            event.body,
            EventBody::OrderPlaced { .. } | EventBody::OrderStatus { .. }
        )
    });
    let items = stockflow_dataflows::items(events.clone());
    let stock = stockflow_dataflows::stock(events.clone());
    let totals = stockflow_dataflows::stock_totals(stock.clone());
    let alerts = stockflow_dataflows::low_stock(
        stock.clone(),
        items.clone(),
        config.thresholds.clone(),
        restored_alerts,
    );
    let kpis = config
        .kpis
        .as_ref()
        .map(|kpis| stockflow_dataflows::kpis(events.clone(), kpis.specs.clone()));

    let changes = items
        .inner
        .map(|((key, row), time, diff)| (Change::Item(key, row, diff), time))
        .concat(
            stock
                .inner
                .map(|(key, time, delta)| (Change::Stock(key, delta), time)),
        )
        .concat(
            totals
                .inner
                .map(|(key, time, delta)| (Change::Total(key, delta), time)),
        )
        .concat(
            progress
                .inner
                .map(|((source, partition, offset), time, _)| {
                    (Change::Progress(source, partition, offset), time)
                }),
        )
        .concat(
            outcomes
                .inner
                .map(|(event, time, _)| (Change::Outcome(event), time)),
        )
        .concat(caused.inner.map(|((tenant, command, event), time, _)| {
            (Change::Command(tenant, command, event), time)
        }))
        .concat(
            orders
                .inner
                .map(|(event, time, _)| (Change::Order(event), time)),
        )
        .concat(
            alerts
                .inner
                .map(|(alert, time, _)| (Change::Alert(alert, time), time)),
        );
    let changes = match kpis {
        Some(kpis) => changes
            .concat(
                kpis.cells
                    .inner
                    .map(|(key, time, cell)| (Change::Kpi(key, cell), time)),
            )
            .concat(
                kpis.extremes
                    .inner
                    .map(|((key, value), time, diff)| (Change::Extreme(key, value, diff), time)),
            ),
        None => changes,
    }
    .probe_with(probe);

    let mut publisher = publisher;
    changes.sink(
        Exchange::new(|_: &(Change, Epoch)| 0),
        "publish views",
        move |(input, frontier)| {
            input.for_each(|_time, data| {
                for (change, time) in data.drain(..) {
                    publisher.pending.entry(time).or_default().push(change);
                }
            });
            publisher.publish_complete(frontier.frontier().first().copied());
        },
    );
}

/// A run of completed epochs, in order, on its way to the publisher thread.
pub struct Completed {
    /// Their changes, epoch after epoch (retractions first within an epoch).
    changes: Vec<Change>,
    /// The last epoch every worker has finished.
    last_complete: Epoch,
    /// When each of these epochs was closed, for the latency histogram.
    closed: Vec<Instant>,
}

/// Worker 0's end of the dataflow: buffers updates per epoch and hands each
/// run of completed epochs to the publisher thread ([`run_publisher`]), so
/// that applying them to the store never slows the worker down.
pub struct Publisher {
    active: bool,
    closed_at: Rc<RefCell<BTreeMap<Epoch, Instant>>>,
    pending: BTreeMap<Epoch, Vec<Change>>,
    sent_epoch: Epoch,
    to_publisher: std::sync::mpsc::Sender<Completed>,
}

impl Publisher {
    /// The sink of worker `worker`; only worker 0's receives anything.
    pub fn new(
        worker: usize,
        closed_at: Rc<RefCell<BTreeMap<Epoch, Instant>>>,
        to_publisher: std::sync::mpsc::Sender<Completed>,
    ) -> Publisher {
        Publisher {
            active: worker == 0,
            closed_at,
            pending: BTreeMap::new(),
            sent_epoch: 0,
            to_publisher,
        }
    }

    /// Sends every epoch before `frontier` (`None`: the input has ended).
    fn publish_complete(&mut self, frontier: Option<Epoch>) {
        if !self.active {
            return;
        }
        let complete_before = frontier.unwrap_or(Epoch::MAX);
        let mut changes = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= complete_before {
                break;
            }
            let mut epoch = entry.remove();
            // Retractions first, so a replaced item row is removed before its successor lands.
            epoch.sort_by_key(|c| match c {
                Change::Item(_, _, diff) => *diff,
                _ => 0,
            });
            changes.extend(epoch);
        }
        // The last epoch every worker has finished (epochs with no updates count too).
        let last_complete = match frontier {
            Some(0) => return,
            Some(f) => f - 1,
            None => self
                .closed_at
                .borrow()
                .keys()
                .next_back()
                .copied()
                .unwrap_or(self.sent_epoch),
        };
        if changes.is_empty() && last_complete <= self.sent_epoch {
            return;
        }
        self.sent_epoch = self.sent_epoch.max(last_complete);
        let mut closed_at = self.closed_at.borrow_mut();
        let mut closed = Vec::new();
        while let Some(entry) = closed_at.first_entry() {
            if *entry.key() > last_complete {
                break;
            }
            closed.push(entry.remove());
        }
        // The publisher thread only stops after the workers; a send cannot fail before.
        let _ = self.to_publisher.send(Completed {
            changes,
            last_complete,
            closed,
        });
    }
}

/// One worker's dead letters of one epoch: sent to `<topic>.dlq` as they
/// come, and acknowledged before the publisher publishes the epoch (it
/// waits for them), so no message is skipped without its letter written.
pub struct Letters {
    /// `None`: dead letters are off (counted only).
    outbox: Option<Outbox>,
    /// Letters per (source topic, reason class), counted once acknowledged.
    counts: Vec<((String, &'static str), u64)>,
    /// The epoch they were read in.
    epoch: Epoch,
}

impl Letters {
    /// No letters yet; written through `appender` (`None`: not written).
    pub fn new(appender: Option<Arc<dyn Appender>>) -> Letters {
        Letters {
            outbox: appender.map(Outbox::new),
            counts: Vec::new(),
            epoch: 0,
        }
    }

    /// Adds a letter (it leaves at the next [`Letters::send`]).
    pub fn push(&mut self, letter: &DeadLetter<'_>) {
        let Some(outbox) = self.outbox.as_mut() else {
            return;
        };
        outbox.push(
            &format!("{}.dlq", letter.topic),
            Outgoing::dead_letter(letter, outbox.carries_headers()),
        );
        match self
            .counts
            .iter_mut()
            .find(|((topic, class), _)| topic == letter.topic && *class == letter.class)
        {
            Some((_, count)) => *count += 1,
            None => self
                .counts
                .push(((letter.topic.to_owned(), letter.class), 1)),
        }
    }

    /// Hands the letters pushed so far to the producer, without waiting.
    pub fn send(&mut self) {
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.send();
        }
    }

    /// True when there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.outbox.as_ref().is_none_or(Outbox::is_empty)
    }

    /// Labels the letters with the epoch they were read in.
    pub fn for_epoch(mut self, epoch: Epoch) -> Letters {
        self.epoch = epoch;
        self
    }
}

/// What the publisher's waits for acknowledgements do: count failures by
/// topic, and say in `/ready` which output holds the engine back.
struct OutputWatch<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
}

impl Watch for OutputWatch<'_> {
    fn failed(&self, topic: &str, failed: usize, error: &str, retry_in: std::time::Duration) {
        self.metrics
            .append_failures
            .with_label_values(&[topic])
            .inc_by(failed as u64);
        LogOnly.failed(topic, failed, error, retry_in);
    }

    fn waiting(&self, why: Option<String>) {
        self.store.set_held_back("publisher", why);
    }
}

/// Where alert transitions are written: the alerts topic, with the
/// transitions it already holds, so that a transition computed again after a
/// restart (the views are rebuilt from the log) is not written twice.
pub struct AlertsOut {
    /// `alerts.events`.
    pub topic: String,
    /// The highest transition already in the topic per stock row, by kind
    /// (indexed by `AlertKind as usize`).
    pub written: HashMap<StockKey, [u64; 2]>,
}

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
    let mut kpis = kpis.map(|table| (table, Gauging::default()));
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
        let mut kpi_cells = Vec::new();
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
                        working.apply_order(&event);
                        let after = working.orders.get(&key).cloned();
                        if before != after {
                            let (tenant, id) = key;
                            if let Some(before) = before {
                                rows.push((
                                    Row::Order(tenant.clone(), id.clone(), Box::new(before)),
                                    -1,
                                ));
                            }
                            if let Some(after) = after {
                                rows.push((Row::Order(tenant, id, Box::new(after)), 1));
                            }
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
            if let Some((table, gauging)) = kpis.as_mut() {
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
                gauging.update(&mut working, gauge_skus, alerted_skus);
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

/// What the publisher writes before it publishes: the decider's outcomes,
/// new alert transitions and the workers' dead letters.
struct Writer {
    appender: Option<Arc<dyn Appender>>,
    letters: std::sync::mpsc::Receiver<Letters>,
    /// Letters of epochs not published yet.
    letters_due: Vec<Letters>,
    outcomes_to: Option<String>,
    alerts_to: Option<AlertsOut>,
}

impl Writer {
    /// Whether a publish of the epochs up to `through` with these
    /// `outcomes` and `alerts` has anything to write or wait for (the
    /// letters the workers sent so far are taken in; those of later epochs
    /// wait for their publish).
    fn has_work(&mut self, outcomes: &[Event], alerts: &[(Alert, Epoch)], through: Epoch) -> bool {
        self.letters_due.extend(self.letters.try_iter());
        let writes = self.appender.is_some()
            && ((self.outcomes_to.is_some() && !outcomes.is_empty())
                || (self.alerts_to.is_some() && !alerts.is_empty()));
        writes
            || self
                .letters_due
                .iter()
                .any(|letters| letters.epoch <= through)
    }

    /// Appends `outcomes` (to the event topic) and the `alerts` transitions
    /// the alerts topic does not hold yet, and waits until they and the dead
    /// letters of every epoch up to `through` are acknowledged. Fails only
    /// at shutdown (records are retried until then).
    fn write(
        &mut self,
        mut outcomes: Vec<Event>,
        alerts: &[(Alert, Epoch)],
        through: Epoch,
        shutdown: &Shutdown,
        watch: &OutputWatch<'_>,
        metrics: &Metrics,
    ) -> Result<(), crate::source::outbox::Unacknowledged> {
        let mut outbox = self.appender.clone().map(Outbox::new);
        let mut outcomes_out = 0;
        if let (Some(topic), Some(outbox)) = (&self.outcomes_to, outbox.as_mut()) {
            outcomes.sort_by(|a, b| (&a.tenant, a.seq, &a.id).cmp(&(&b.tenant, b.seq, &b.id)));
            for event in &outcomes {
                let key = format!(
                    "{}/{}",
                    event.tenant,
                    event.body.sku().map(|s| s.as_str()).unwrap_or("")
                );
                outbox.push(
                    topic,
                    Outgoing::new(
                        key,
                        serde_json::to_vec(&stockflow_dataflows::model::encode_event(event))
                            .expect("JSON values serialize"),
                    ),
                );
            }
            outcomes_out = outcomes.len();
        }
        let fresh = match (self.alerts_to.as_ref(), outbox.as_mut()) {
            (Some(out), Some(outbox)) => out.queue(alerts, outbox),
            _ => Vec::new(),
        };
        if let Some(outbox) = outbox.as_mut() {
            outbox.send();
        }
        let (due, later): (Vec<Letters>, Vec<Letters>) = std::mem::take(&mut self.letters_due)
            .into_iter()
            .partition(|l| l.epoch <= through);
        self.letters_due = later;
        let mut halted = Ok(());
        for mut due in due {
            let Some(letters) = due.outbox.as_mut() else {
                continue;
            };
            match letters.settle(Patience::UntilAcknowledged(shutdown), watch) {
                Ok(_) => {
                    for ((topic, class), count) in due.counts {
                        metrics
                            .dead_letters
                            .with_label_values(&[&topic, class])
                            .inc_by(count);
                        metrics
                            .events_out
                            .with_label_values(&[&format!("{topic}.dlq")])
                            .inc_by(count);
                    }
                }
                Err(error) => halted = Err(error),
            }
        }
        if let Some(outbox) = outbox.as_mut() {
            match outbox.settle(Patience::UntilAcknowledged(shutdown), watch) {
                Ok(_) => {
                    if let Some(topic) = self.outcomes_to.as_ref().filter(|_| outcomes_out > 0) {
                        metrics.outcomes.inc_by(outcomes_out as u64);
                        metrics
                            .events_out
                            .with_label_values(&[topic.as_str()])
                            .inc_by(outcomes_out as u64);
                    }
                    if let Some(out) = self.alerts_to.as_mut() {
                        out.written(&fresh, metrics);
                    }
                }
                Err(error) => halted = Err(error),
            }
        }
        halted
    }
}

/// The gauges' bookkeeping: what each sku contributes now.
#[derive(Default)]
struct Gauging {
    skus: HashMap<SkuKey, SkuGauge, foldhash::fast::RandomState>,
}

impl Gauging {
    /// Recomputes the contribution of every sku whose item or stock changed
    /// (`touched`) or that had an alert transition (`alerted`) from the
    /// working snapshot, and moves its tenant's gauges by the difference.
    /// Only alerted skus look their alerts up; the others keep the alert
    /// flags they had, so a publish of stock changes costs two lookups per sku.
    fn update(
        &mut self,
        working: &mut Snapshot,
        mut touched: Vec<SkuKey>,
        mut alerted: Vec<SkuKey>,
    ) {
        alerted.sort_unstable();
        alerted.dedup();
        touched.extend(alerted.iter().cloned());
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let before = self.skus.get(&key).copied().unwrap_or_default();
            let (low, out) = if alerted.binary_search(&key).is_ok() {
                let first = StockKey {
                    tenant: key.tenant.clone(),
                    sku: key.sku.clone(),
                    location: Name::default(),
                };
                let mut flags = (false, false);
                for (_, pair) in working
                    .alerts
                    .range(first..)
                    .take_while(|(k, _)| k.tenant == key.tenant && k.sku == key.sku)
                {
                    flags.0 |= pair.low_stock.as_ref().is_some_and(|a| a.raised);
                    flags.1 |= pair.out_of_stock.as_ref().is_some_and(|a| a.raised);
                }
                flags
            } else {
                (before.low == 1, before.out == 1)
            };
            let on_hand = working
                .stock_totals
                .get(&key)
                .map_or(0, |total| total.on_hand);
            let after = SkuGauge::of(working.items.get(&key), on_hand, low, out);
            if before == after {
                continue;
            }
            if after == SkuGauge::default() {
                self.skus.remove(&key);
            } else {
                self.skus.insert(key.clone(), after);
            }
            working
                .gauges
                .entry(key.tenant.clone())
                .or_default()
                .replace(before, after);
        }
    }
}

fn order_key(event: &Event) -> Option<(Name, Name)> {
    match &event.body {
        EventBody::OrderPlaced { order_id, .. } | EventBody::OrderStatus { order_id, .. } => {
            Some((event.tenant.clone(), order_id.clone()))
        }
        _ => None,
    }
}

fn low_stock_of(snapshot: &Snapshot, key: &StockKey) -> Option<LowStockRow> {
    snapshot
        .alerts
        .get(key)
        .and_then(|pair| low_stock_row(pair, snapshot.stock.get(key)))
}

impl AlertsOut {
    /// Queues the transitions the alerts topic does not hold yet, keyed
    /// `tenant/sku` (one partition per sku: in order per key); returns them,
    /// to note as written once acknowledged.
    fn queue(
        &self,
        alerts: &[(Alert, Epoch)],
        outbox: &mut Outbox,
    ) -> Vec<(StockKey, AlertKind, u64)> {
        let mut fresh = Vec::new();
        for (alert, epoch) in alerts {
            if self
                .written
                .get(&alert.key)
                .is_some_and(|written| alert.transition <= written[alert.kind as usize])
            {
                continue;
            }
            let key = format!("{}/{}", alert.key.tenant, alert.key.sku);
            outbox.push(
                &self.topic,
                Outgoing::new(
                    key,
                    serde_json::to_vec(&AlertEvent::of(alert, *epoch))
                        .expect("alert events serialize"),
                ),
            );
            fresh.push((alert.key.clone(), alert.kind, alert.transition));
        }
        fresh
    }

    /// Notes `fresh` transitions as written (acknowledged).
    fn written(&mut self, fresh: &[(StockKey, AlertKind, u64)], metrics: &Metrics) {
        if fresh.is_empty() {
            return;
        }
        metrics.alerts_written.inc_by(fresh.len() as u64);
        metrics
            .events_out
            .with_label_values(&[self.topic.as_str()])
            .inc_by(fresh.len() as u64);
        for (key, kind, transition) in fresh {
            self.written.entry(key.clone()).or_default()[*kind as usize] = *transition;
        }
    }
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
