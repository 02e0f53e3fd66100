//! Where data leaves the dataflow: every view's updates and every partition's
//! progress are sent to worker 0, which applies each *completed* epoch to its
//! working snapshot and publishes it whole.

use crate::metrics::Metrics;
use crate::store::{Snapshot, Store};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use stockflow_dataflows::model::{Epoch, Event, ItemRow, SkuKey, StockDelta, StockKey};
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
}

/// Builds the views over `events` and routes their updates, with `progress`,
/// to `publisher` on worker 0. `probe` tracks how far the views have got.
pub fn views<'scope>(
    events: VecCollection<'scope, Epoch, Event>,
    progress: VecCollection<'scope, Epoch, (u32, u32, u64)>,
    publisher: Publisher,
    probe: &Handle<Epoch>,
) {
    let events = stockflow_dataflows::dedup(events);
    let items = stockflow_dataflows::items(events.clone());
    let stock = stockflow_dataflows::stock(events);
    let totals = stockflow_dataflows::stock_totals(stock.clone());

    let changes = items
        .inner
        .map(|((key, row), time, diff)| (Change::Item(key, row, diff), time))
        .concat(stock.inner.map(|(key, time, delta)| (Change::Stock(key, delta), time)))
        .concat(totals.inner.map(|(key, time, delta)| (Change::Total(key, delta), time)))
        .concat(progress.inner.map(|((source, partition, offset), time, _)| (Change::Progress(source, partition, offset), time)))
        .probe_with(probe);

    let mut publisher = publisher;
    changes.sink(Exchange::new(|_: &(Change, Epoch)| 0), "publish views", move |(input, frontier)| {
        input.for_each(|_time, data| {
            for (change, time) in data.drain(..) {
                publisher.pending.entry(time).or_default().push(change);
            }
        });
        publisher.publish_complete(frontier.frontier().first().copied());
    });
}

/// Worker 0's end of the dataflow: buffers updates per epoch and publishes
/// each epoch once the frontier has passed it.
pub struct Publisher {
    active: bool,
    topics: Vec<String>,
    store: Arc<Store>,
    metrics: Metrics,
    closed_at: Rc<RefCell<BTreeMap<Epoch, Instant>>>,
    pending: BTreeMap<Epoch, Vec<Change>>,
    working: Snapshot,
}

impl Publisher {
    /// A publisher; only the one on worker 0 publishes (it receives everything).
    pub fn new(worker: usize, topics: Vec<String>, store: Arc<Store>, metrics: Metrics, closed_at: Rc<RefCell<BTreeMap<Epoch, Instant>>>) -> Publisher {
        Publisher { active: worker == 0, topics, store, metrics, closed_at, pending: BTreeMap::new(), working: Snapshot::default() }
    }

    /// Applies every epoch before `frontier` (`None`: the input has ended) and
    /// publishes the result if anything moved.
    fn publish_complete(&mut self, frontier: Option<Epoch>) {
        if !self.active {
            return;
        }
        let complete_before = frontier.unwrap_or(Epoch::MAX);
        let mut changed = false;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= complete_before {
                break;
            }
            let mut changes = entry.remove();
            // Retractions first, so a replaced item row is removed before its successor lands.
            changes.sort_by_key(|c| match c {
                Change::Item(_, _, diff) => *diff,
                _ => 0,
            });
            for change in changes {
                self.apply(change);
            }
            changed = true;
        }
        // The last epoch every worker has finished (epochs with no updates count too).
        let last_complete = match frontier {
            Some(0) => return,
            Some(f) => f - 1,
            None => self.closed_at.borrow().keys().next_back().copied().unwrap_or(self.working.as_of.epoch),
        };
        if !changed && last_complete <= self.working.as_of.epoch {
            return;
        }
        self.working.as_of.epoch = self.working.as_of.epoch.max(last_complete);
        self.store.publish(self.working.clone());
        let now = Instant::now();
        let mut closed = self.closed_at.borrow_mut();
        while let Some(entry) = closed.first_entry() {
            if *entry.key() > last_complete {
                break;
            }
            self.metrics.epoch_latency.observe(now.duration_since(entry.remove()).as_secs_f64());
        }
        self.metrics.published_epoch.set(self.working.as_of.epoch as i64);
        self.metrics.view_rows.with_label_values(&["items"]).set(self.working.items.len() as i64);
        self.metrics.view_rows.with_label_values(&["stock"]).set(self.working.stock.len() as i64);
        self.metrics.view_rows.with_label_values(&["stock_totals"]).set(self.working.stock_totals.len() as i64);
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Item(key, row, diff) => self.working.apply_item(key, row, diff),
            Change::Stock(key, delta) => self.working.apply_stock(key, delta),
            Change::Total(key, delta) => self.working.apply_total(key, delta),
            Change::Progress(source, partition, offset) => {
                let topic = self.topics.get(source as usize).cloned().unwrap_or_else(|| format!("source-{source}"));
                let reached = self.working.as_of.offsets.entry(topic).or_default().entry(partition).or_insert(0);
                *reached = (*reached).max(offset);
            }
        }
    }
}
