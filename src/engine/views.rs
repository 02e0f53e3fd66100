//! The dataflow graph: every view built over the events, and their updates
//! with every partition's progress routed to worker 0, whose [`Publisher`]
//! hands each *completed* epoch to the publisher thread ([`super::publish`]).

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;
use stockflow_dataflows::alerts::Alert;
use stockflow_dataflows::kpis::{Cell, KpiKey};
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

/// The dataflow's inputs, as the worker feeds them.
pub struct Inputs<'scope> {
    /// Decoded events, as read.
    pub events: VecCollection<'scope, Epoch, Event>,
    /// Decoded commands, as read.
    pub commands: VecCollection<'scope, Epoch, Command>,
    /// `(source, partition, next offset)` as each epoch closes.
    pub progress: VecCollection<'scope, Epoch, (u32, u32, u64)>,
    /// Wall clock readings (ms), which age the de-duplication window.
    pub clock: VecCollection<'scope, Epoch, i64>,
    /// Digests of ids a checkpoint folded, for the window to remember.
    pub seen: VecCollection<'scope, Epoch, u128>,
}

/// Builds the views over `inputs.events` and routes their updates, with
/// the read progress, to `publisher` on worker 0. `probe` tracks how far
/// the views have got.
///
/// Events are de-duplicated first (within `config.dedup`); `commands` go
/// through the decider, which sees the de-duplicated events, and whose
/// outcomes join them in the same epoch (so a command's effects are
/// visible when its position is) and are appended to the event topic by
/// the publisher; their copies read back from the log are dropped. Without
/// a command path (a read-only engine) there is no decider: its state
/// would cost ingest throughput for nothing.
pub fn views<'scope>(
    inputs: Inputs<'scope>,
    config: &super::EngineConfig,
    restored_alerts: Option<stockflow_dataflows::alerts::Restored<Epoch>>,
    dedup_stats: std::sync::Arc<stockflow_dataflows::dedup::DedupStats>,
    publisher: Publisher,
    probe: &Handle<Epoch>,
) {
    let Inputs {
        events,
        commands,
        progress,
        clock,
        seen,
    } = inputs;
    let events =
        stockflow_dataflows::dedup(events, Some(clock), Some(seen), config.dedup, dedup_stats);
    let outcomes = if config.commands.is_some() {
        stockflow_dataflows::decide(events.clone(), commands)
    } else {
        commands.flat_map(|_| None::<Event>)
    };
    // The log copy of an outcome comes back later with the same id: it counted already.
    let events =
        stockflow_dataflows::dedup::without_echoes(events, outcomes.clone(), config.dedup.ids)
            .concat(outcomes.clone());
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
    pub(super) changes: Vec<Change>,
    /// The last epoch every worker has finished.
    pub(super) last_complete: Epoch,
    /// When each of these epochs was closed, for the latency histogram.
    pub(super) closed: Vec<Instant>,
}

/// Worker 0's end of the dataflow: buffers updates per epoch and hands each
/// run of completed epochs to the publisher thread ([`super::publish::run_publisher`]), so
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
