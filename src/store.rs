//! The read-optimised store: the views as of the last completed epoch.
//!
//! The engine's publisher owns a working copy, applies each completed epoch to
//! it, and swaps in an immutable [`Snapshot`]. Maps are persistent (`imbl`), so
//! a snapshot costs O(1) to take and readers never block the dataflow nor see
//! half an epoch: they hold an `Arc` to one whole, consistent state.

use crate::changes::{Batch, Changelog};
use crate::rows::AsOf;
use crate::settings::DEFAULT_CHANGES_RETENTION;
use crate::status::Status;
use imbl::OrdMap;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use stockflow_dataflows::alert_rows::AlertPair;
use stockflow_dataflows::alerts::Alert;
use stockflow_dataflows::kpis::{Gauges, KpiKey, KpiValue, TopSkus};
use stockflow_dataflows::model::{
    Epoch, Event, EventTime, ItemRow, Name, SkuKey, StockDelta, StockKey,
};
use stockflow_dataflows::order_rows::{order_key, OrderRow};
use tokio::sync::watch;

/// One consistent state of every view.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// What the views reflect.
    pub as_of: AsOf,
    /// The `items` view.
    pub items: OrdMap<SkuKey, ItemRow>,
    /// The `stock` view (accumulated deltas per key).
    pub stock: OrdMap<StockKey, StockDelta>,
    /// The `stock_totals` view.
    pub stock_totals: OrdMap<SkuKey, StockDelta>,
    /// The `orders` view: `(tenant, order id)` → the order.
    pub orders: imbl::HashMap<(Name, Name), OrderRow>,
    /// Decided commands: `(tenant, command id)` → the events they caused
    /// (one `reservation.rejected` for a rejected command).
    pub commands: imbl::HashMap<(Name, Name), Vec<Event>>,
    /// Alerts: the latest transition of each kind per stock row that ever had one.
    pub alerts: OrdMap<StockKey, AlertPair>,
    /// The `kpis` view: (tenant, window, bucket, metric, group) → value.
    pub kpis: OrdMap<KpiKey, KpiValue>,
    /// The `top_skus` view: (tenant, day) → the day's top skus.
    pub top_skus: OrdMap<(Name, EventTime), Arc<TopSkus>>,
    /// Point-in-time gauges per tenant.
    pub gauges: OrdMap<Name, Gauges>,
    /// KPI buckets ending at or before this time have been dropped by
    /// retention (not retracted: a sink keeps them as history).
    pub kpi_horizon: EventTime,
}

/// Command ids remembered for idempotency checks, per process.
pub const MAX_IDEMPOTENCY_RECORDS: usize = 100_000;

/// What [`Store::claim_command`] found for a command id.
#[derive(Debug)]
pub enum Claim {
    /// First seen: append it.
    New,
    /// Seen with the same content and answered: answer the same again.
    Repeat(Arc<serde_json::Value>),
    /// Seen with the same content and still being appended: append it again
    /// (the decider decides one command id once).
    InFlight,
    /// Seen with other content: the first request, as its summary names it.
    Conflict(String),
}

/// One command accepted by this process.
#[derive(Debug)]
struct CommandRecord {
    /// Hash of what the command asks for (type, sku, fields; not its time).
    fingerprint: u64,
    /// The request, named for a conflict's answer.
    summary: String,
    /// The 202 answer's body, once appended.
    answer: Option<Arc<serde_json::Value>>,
    /// Which insertion this is (an id dropped after a failed append may be claimed again).
    generation: u64,
}

/// The last [`MAX_IDEMPOTENCY_RECORDS`] commands accepted, oldest forgotten first.
#[derive(Debug, Default)]
struct IdempotencyRecords {
    by_id: std::collections::HashMap<(Name, Name), CommandRecord>,
    /// Insertion order, with each insertion's generation.
    order: std::collections::VecDeque<((Name, Name), u64)>,
    generations: u64,
}

impl IdempotencyRecords {
    fn insert(&mut self, key: (Name, Name), mut record: CommandRecord) {
        while self.order.len() >= MAX_IDEMPOTENCY_RECORDS {
            if let Some((oldest, generation)) = self.order.pop_front() {
                if self
                    .by_id
                    .get(&oldest)
                    .is_some_and(|r| r.generation == generation)
                {
                    self.by_id.remove(&oldest);
                }
            }
        }
        self.generations += 1;
        record.generation = self.generations;
        self.order.push_back((key.clone(), self.generations));
        self.by_id.insert(key, record);
    }
}

/// Shared handle to the published views.
#[derive(Debug)]
pub struct Store {
    current: RwLock<Arc<Snapshot>>,
    published: watch::Sender<Epoch>,
    /// Commands accepted over HTTP by this process: `(tenant, command id)`
    /// → where the command landed. `pending` until the views hold its outcome.
    submitted: std::sync::Mutex<std::collections::HashMap<(Name, Name), (u32, u64)>>,
    /// The commands this process accepted, by `(tenant, command id)`: what
    /// each one asked for, so that a key reused for another request is refused.
    idempotency: std::sync::Mutex<IdempotencyRecords>,
    /// Retained row changes for change streams.
    changes: std::sync::Mutex<Changelog>,
    /// How the engine and its sinks are doing, for `/ready` and `/health`.
    pub status: Status,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store (epoch 0, no rows) retaining [`DEFAULT_CHANGES_RETENTION`] row changes.
    pub fn new() -> Store {
        Store::with_changes(DEFAULT_CHANGES_RETENTION)
    }

    /// An empty store retaining up to `max_rows` row changes for change streams (0: none).
    pub fn with_changes(max_rows: usize) -> Store {
        Store {
            changes: std::sync::Mutex::new(Changelog::new(max_rows)),
            current: RwLock::new(Arc::new(Snapshot::default())),
            published: watch::channel(0).0,
            submitted: std::sync::Mutex::new(std::collections::HashMap::new()),
            idempotency: std::sync::Mutex::new(IdempotencyRecords::default()),
            status: Status::default(),
        }
    }

    /// The latest published state. Cheap: clones an `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the published state, appends the row changes that led to it
    /// (when change streams are on) in the same step, and wakes waiting
    /// readers: a reader that takes a snapshot at epoch `E` finds every later
    /// batch in the changelog (see [`Store::changes_since`]).
    pub fn publish(&self, snapshot: Snapshot, batch: Option<Batch>) {
        let epoch = snapshot.as_of.epoch;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(batch) = batch {
            self.changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(batch);
        }
        *current = Arc::new(snapshot);
        drop(current);
        self.published.send_replace(epoch);
    }

    /// Before the engine publishes: this run's epochs begin at `first`
    /// (see [`crate::engine::first_epoch_of_run`]); a change stream asked to
    /// resume from an older epoch is refused.
    pub fn start_run(&self, first: Epoch) {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start_at(first);
    }

    /// True when row changes are retained for change streams.
    pub fn changes_enabled(&self) -> bool {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enabled()
    }

    /// The retained batches after `epoch` (see [`Changelog::since`]).
    pub fn changes_since(&self, epoch: Epoch) -> Result<Vec<Arc<Batch>>, crate::changes::Gone> {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(epoch)
    }

    /// The retained batches after `epoch` and, read under the same lock, the
    /// newest epoch published: a stream with no batch left is caught up to it
    /// (publishes without changes leave no batch).
    pub fn changes_and_newest(
        &self,
        epoch: Epoch,
    ) -> Result<(Vec<Arc<Batch>>, Epoch), crate::changes::Gone> {
        let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        Ok((changes.since(epoch)?, changes.newest()))
    }

    /// Row changes retained.
    pub fn changes_retained(&self) -> usize {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rows()
    }

    /// A receiver that changes whenever an epoch is published.
    pub fn subscribe(&self) -> watch::Receiver<Epoch> {
        self.published.subscribe()
    }

    /// The last published epoch (cheaper than a snapshot).
    pub fn published_epoch(&self) -> Epoch {
        *self.published.borrow()
    }

    /// True once the published views cover what the sources held at start.
    pub fn caught_up(&self) -> bool {
        self.status.caught_up(&self.snapshot().as_of)
    }

    /// `Ok` when the views have caught up with what the sources held at start;
    /// otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.status.readiness(&self.snapshot().as_of)
    }

    /// Remembers a command appended by this process (see [`Store::submitted`]).
    pub fn submit(&self, tenant: Name, command_id: Name, position: (u32, u64)) {
        self.submitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tenant, command_id), position);
    }

    /// Where a command appended by this process landed, if it was.
    pub fn submitted(&self, tenant: &Name, command_id: &Name) -> Option<(u32, u64)> {
        self.submitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.clone(), command_id.clone()))
            .copied()
    }

    /// Claims a command id for a request whose content hashes to
    /// `fingerprint` (see [`Claim`]); `summary` names the request in a later
    /// conflict. A new claim must be [`Store::command_answered`] or
    /// [`Store::command_failed`].
    pub fn claim_command(
        &self,
        tenant: &Name,
        command_id: &Name,
        fingerprint: u64,
        summary: impl FnOnce() -> String,
    ) -> Claim {
        let mut records = self.idempotency.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.clone(), command_id.clone());
        match records.by_id.get(&key) {
            Some(first) if first.fingerprint != fingerprint => {
                Claim::Conflict(first.summary.clone())
            }
            Some(first) => match &first.answer {
                Some(answer) => Claim::Repeat(answer.clone()),
                None => Claim::InFlight,
            },
            None => {
                records.insert(
                    key,
                    CommandRecord {
                        fingerprint,
                        summary: summary(),
                        answer: None,
                        generation: 0,
                    },
                );
                Claim::New
            }
        }
    }

    /// Keeps the answer given to a claimed command, for its retries.
    pub fn command_answered(&self, tenant: &Name, command_id: &Name, answer: serde_json::Value) {
        let mut records = self.idempotency.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = records.by_id.get_mut(&(tenant.clone(), command_id.clone())) {
            record.answer = Some(Arc::new(answer));
        }
    }

    /// Drops the claim of a command that was not appended: it may be sent again, as anything.
    pub fn command_failed(&self, tenant: &Name, command_id: &Name) {
        let mut records = self.idempotency.lock().unwrap_or_else(|p| p.into_inner());
        if records
            .by_id
            .get(&(tenant.clone(), command_id.clone()))
            .is_some_and(|r| r.answer.is_none())
        {
            records.by_id.remove(&(tenant.clone(), command_id.clone()));
        }
    }

    /// Forgets a submitted command once its outcome is in the views.
    pub fn forget_submitted(&self, tenant: &Name, command_id: &Name) {
        self.submitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant.clone(), command_id.clone()));
    }

    /// Waits until the published views cover `targets`, at most `wait`.
    /// Returns the snapshot that covers them, or `None` on timeout.
    pub async fn wait_for(
        &self,
        targets: &BTreeMap<String, BTreeMap<u32, u64>>,
        wait: std::time::Duration,
    ) -> Option<Arc<Snapshot>> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let snapshot = self.snapshot();
            if snapshot.as_of.covers(targets) {
                return Some(snapshot);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

/// Applies updates of one epoch to a working snapshot.
impl Snapshot {
    /// Applies an order event to the `orders` view (the view does not depend
    /// on the order the events arrive in).
    pub fn apply_order(&mut self, event: &Event) {
        if let Some(key) = order_key(event) {
            self.orders.entry(key).or_default().apply(event);
        }
    }

    /// Records an alert transition.
    pub fn apply_alert(&mut self, alert: Alert) {
        self.alerts.entry(alert.key.clone()).or_default().set(alert);
    }

    /// Records an event caused by a command (its outcome).
    pub fn apply_command(&mut self, tenant: Name, command_id: Name, event: Event) {
        self.commands
            .entry((tenant, command_id))
            .or_default()
            .push(event);
    }

    /// Applies an item row insertion (`diff > 0`) or retraction (`diff < 0`).
    /// Retractions are applied before insertions by the caller.
    pub fn apply_item(&mut self, key: SkuKey, row: ItemRow, diff: isize) {
        if diff > 0 {
            self.items.insert(key, row);
        } else if self.items.get(&key) == Some(&row) {
            self.items.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_needs_every_partition() {
        let mut as_of = AsOf::default();
        as_of.offsets.entry("t".into()).or_default().insert(0, 5);
        let mut target = BTreeMap::new();
        target.insert("t".to_string(), BTreeMap::from([(0, 5)]));
        assert!(as_of.covers(&target));
        target.get_mut("t").unwrap().insert(1, 1);
        assert!(!as_of.covers(&target));
    }

    #[test]
    fn item_retraction_then_insertion_replaces() {
        let mut s = Snapshot::default();
        let key = SkuKey {
            tenant: "t".into(),
            sku: "a".into(),
        };
        let row = |name: &str| ItemRow {
            name: name.into(),
            price: Default::default(),
            category: "".into(),
            reorder_point: None,
            target_level: None,
            active: true,
            updated_at: 0,
        };
        s.apply_item(key.clone(), row("old"), 1);
        s.apply_item(key.clone(), row("old"), -1);
        s.apply_item(key.clone(), row("new"), 1);
        assert_eq!(s.items.get(&key).unwrap().name, "new");
        s.apply_item(key.clone(), row("old"), -1);
        assert_eq!(
            s.items.get(&key).unwrap().name,
            "new",
            "a stale retraction leaves the current row"
        );
    }
}
