//! The ClickHouse sink's engine side: what to write and when.
//! Long because the step loop, its batching, its retries and the state differences keep one set of invariants (exactly-once, commits in order).
//!
//! The sink is a task of the server's runtime (its steps on the blocking
//! pool) and never holds the engine up. It
//! works in *steps*, each numbered by the next sink epoch:
//!
//! - **events** and **alerts** are read from their topics by the sink's own
//!   readers (the log is the buffer: a sink that falls behind reads on from
//!   where it stopped); events only up to the offsets the published views
//!   reflect, so a step's events are those its state comes from;
//! - **state** (`stock_current`, `stock_changes`, `kpis`) is the difference
//!   between the last snapshot written and the newest published one. The
//!   snapshots' maps are persistent B-trees sharing structure, so the
//!   difference only visits what changed.
//!
//! Steps are batched (`batch_rows` rows or `batch_interval`, whichever is
//! first) and written by [`stockflow_sinks::clickhouse::ClickHouse::write`],
//! whose protocol makes them exactly-once. While ClickHouse is down the sink
//! retries with backoff and keeps computing steps until it holds
//! `max_buffer` rows; then it stops pulling (the HTTP views go on) and
//! catches up from the log and the newest snapshot when ClickHouse is back.
//! After a restart it loads what ClickHouse holds and, once the engine has
//! caught up, writes the difference.

use crate::metrics::Metrics;
use crate::rows::AlertEvent;
use crate::settings::SinkSettings;
use crate::shutdown::Shutdown;
use crate::source::{Format, PartitionReader, Record, Source};
use crate::store::{Snapshot, Store};
use imbl::OrdMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflows::kpis::{KpiKey, KpiValue, Window};
use stockflow_dataflows::model::{Event, EventBody, Name, StockDelta, StockKey};
use stockflow_sinks::clickhouse::{
    datetime, AlertRow, Batch, ClickHouse, EventRow, KpiRow, StockChangeRow, StockCurrentRow,
    StockRow,
};

/// What the sink reads besides the snapshots.
pub struct SinkInputs {
    /// Event topics and their formats (command topics are left out by the caller).
    pub sources: Vec<(Arc<dyn Source>, Format)>,
    /// The alerts topic.
    pub alerts: Option<Arc<dyn Source>>,
}

/// A running sink.
pub struct SinkHandle {
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    /// Asks the sink to write what the published views hold (a few seconds
    /// at most) and stop; waits for it.
    pub async fn stop(self) {
        self.stop.trigger();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the ClickHouse sink's task failed");
        }
    }
}

/// Starts the sink as a task of `runtime` (the server's: one runtime for
/// the process); its steps, which are CPU work over snapshots and log
/// reads, run on the runtime's blocking pool. It stops when `stop` is
/// called on the handle (after the engine, so it can write the last epochs).
pub fn start(
    settings: SinkSettings,
    inputs: SinkInputs,
    store: Arc<Store>,
    metrics: Metrics,
    runtime: &tokio::runtime::Handle,
) -> SinkHandle {
    let stop = Shutdown::new();
    let sink = Arc::new(Sink::new(settings, inputs, store, metrics, stop.clone()));
    let task = runtime.spawn(sink.run());
    SinkHandle { stop, task }
}

/// One topic partition the sink reads.
struct Reader {
    topic: String,
    /// `None` for the alerts topic.
    format: Option<Format>,
    reader: Box<dyn PartitionReader>,
}

/// The state written last: what ClickHouse holds.
#[derive(Default)]
struct Written {
    stock: OrdMap<StockKey, StockDelta>,
    kpis: OrdMap<KpiKey, KpiValue>,
    engine_epoch: u64,
}

struct Sink {
    settings: SinkSettings,
    inputs: SinkInputs,
    store: Arc<Store>,
    metrics: Metrics,
    stop: Shutdown,
    clickhouse: ClickHouse,
}

const NAME: &str = "clickhouse";

/// The longest the sink sleeps without a wake-up: a safety net (every
/// reason to work wakes it at once), not a poll.
const IDLE_CHECK: Duration = Duration::from_millis(200);

impl Sink {
    fn new(
        settings: SinkSettings,
        inputs: SinkInputs,
        store: Arc<Store>,
        metrics: Metrics,
        stop: Shutdown,
    ) -> Sink {
        let clickhouse = ClickHouse::new(&settings.clickhouse);
        Sink {
            settings,
            inputs,
            store,
            metrics,
            stop,
            clickhouse,
        }
    }

    fn state(&self, state: impl Into<String>) {
        self.store.status.set_sink_state(NAME, state.into());
    }

    async fn run(self: Arc<Self>) {
        let Some((mut committed, mut written, mut readers)) = self.connect().await else {
            return;
        };
        let mut pending: Vec<Batch> = Vec::new();
        // A batch whose write failed: written again alone (steps taken since
        // must not join it: had it been committed after all, they would be
        // written twice).
        let mut retry: Option<Batch> = None;
        // The batch being written, on the runtime's worker thread, while this
        // thread takes the next steps: one at a time, so commits stay in order.
        let mut in_flight: Option<(Writing, usize)> = None;
        // Its result, when the wait below saw it end.
        let mut written_now = None;
        let mut oldest: Option<Instant> = None;
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        // After a failed write ClickHouse may hold part of it: discard before the next.
        let mut dirty = false;
        let mut epoch = committed;
        let mut published = self.store.subscribe();
        loop {
            // A finished write: commit or put the batch back in front.
            let done = match written_now.take() {
                Some(done) => Some(done),
                None => match in_flight.take_if(|(handle, _)| handle.is_finished()) {
                    Some((handle, _)) => Some(handle.await),
                    None => None,
                },
            };
            if let Some(done) = done {
                in_flight = None;
                let (batch, result) = match done {
                    Ok(done) => done,
                    Err(panicked) => {
                        tracing::error!(%panicked, "the ClickHouse write task failed");
                        self.state(format!("stopped: the write task failed: {panicked}"));
                        return;
                    }
                };
                match result {
                    Ok(()) => {
                        committed = batch.epoch;
                        failures = 0;
                        dirty = false;
                        self.metrics.sink_epoch.set(committed as i64);
                        for (table, n) in batch.counts() {
                            self.metrics
                                .sink_rows
                                .with_label_values(&[table])
                                .inc_by(n as u64);
                        }
                        self.state(format!(
                            "writing: epoch {committed} committed (engine epoch {})",
                            batch.engine_epoch
                        ));
                    }
                    Err(error) => {
                        failures += 1;
                        dirty = true;
                        self.metrics.sink_failures.inc();
                        let backoff = stockflow_sinks::backoff::CLICKHOUSE_WRITE.delay(failures);
                        tracing::warn!(error = %format!("{error:#}"), retry_in_ms = backoff.as_millis() as u64, rows = batch.rows(), "writing to ClickHouse failed; retrying");
                        self.state(format!("retrying: {error:#}"));
                        retry_at = Instant::now() + backoff;
                        retry = Some(batch);
                    }
                }
            }
            let stopping = self.stop.is_triggered();
            let buffered: usize = pending.iter().map(Batch::rows).sum::<usize>()
                + retry.as_ref().map_or(0, Batch::rows)
                + in_flight.as_ref().map_or(0, |(_, rows)| *rows);
            self.metrics.sink_buffered_rows.set(buffered as i64);
            let paused = buffered >= self.settings.max_buffer;
            self.metrics.sink_paused.set(paused as i64);
            // Take a step when there is room and something new.
            let mut stepped = false;
            let snapshot = self.store.snapshot();
            if !paused {
                let budget = self
                    .settings
                    .batch_rows
                    .min(self.settings.max_buffer - buffered)
                    .max(1);
                let timer = self
                    .metrics
                    .sink_seconds
                    .with_label_values(&["step"])
                    .start_timer();
                // Events flow from the start; state waits until the views have
                // caught up (after a restart the replay's intermediate states
                // are older than what ClickHouse holds).
                let (sink, snapshot) = (self.clone(), snapshot.clone());
                let stepping = tokio::task::spawn_blocking(move || {
                    let with_state = sink.store.caught_up();
                    let step = sink.step(
                        epoch + 1,
                        &snapshot,
                        &mut written,
                        &mut readers,
                        budget,
                        with_state,
                    );
                    (written, readers, step)
                });
                let step = match stepping.await {
                    Ok((now_written, now_readers, step)) => {
                        (written, readers) = (now_written, now_readers);
                        step
                    }
                    Err(panicked) => {
                        tracing::error!(%panicked, "a ClickHouse sink step failed");
                        self.state(format!("stopped: a step failed: {panicked}"));
                        return;
                    }
                };
                timer.observe_duration();
                if let Some(step) = step {
                    epoch += 1;
                    stepped = true;
                    oldest.get_or_insert_with(Instant::now);
                    pending.push(step);
                }
            }
            self.metrics
                .sink_lag_epochs
                .set(snapshot.as_of.epoch.saturating_sub(written.engine_epoch) as i64);
            let rows: usize = pending.iter().map(Batch::rows).sum();
            let due = retry.is_some()
                || (!pending.is_empty()
                    && (rows >= self.settings.batch_rows
                        || oldest.is_some_and(|t| t.elapsed() >= self.settings.batch_interval)
                        || paused
                        || stopping));
            if in_flight.is_none() && due && Instant::now() >= retry_at {
                let batch = match retry.take() {
                    Some(batch) => batch,
                    None => {
                        oldest = None;
                        merge(std::mem::take(&mut pending))
                    }
                };
                let rows = batch.rows();
                let (clickhouse, timer) = (
                    self.clickhouse.clone(),
                    self.metrics.sink_seconds.with_label_values(&["write"]),
                );
                let handle = tokio::spawn(async move {
                    let started = Instant::now();
                    let result = write(&clickhouse, committed, &batch, dirty).await;
                    timer.observe(started.elapsed().as_secs_f64());
                    (batch, result)
                });
                in_flight = Some((handle, rows));
                continue;
            }
            if stopping {
                let done = pending.is_empty() && retry.is_none() && in_flight.is_none() && !stepped;
                if done || (failures >= 3 && in_flight.is_none()) {
                    if !pending.is_empty() || retry.is_some() {
                        tracing::warn!(rows = buffered, "stopping with rows ClickHouse did not take: they are written again from the log at the next start");
                    }
                    self.state("stopped");
                    return;
                }
            }
            if !stepped {
                // Nothing to do until a write ends, something is published,
                // a retry is due, the oldest step ages into a batch, or a stop.
                let deadline = match (&retry, oldest) {
                    _ if in_flight.is_some() => None,
                    (Some(_), _) => Some(retry_at),
                    (None, Some(oldest)) => Some(oldest + self.settings.batch_interval),
                    (None, None) => None,
                };
                let writing = async {
                    match in_flight.as_mut() {
                        Some((handle, _)) => handle.await,
                        None => std::future::pending().await,
                    }
                };
                let due = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = published.changed(), if !stopping => {}
                    done = writing => written_now = Some(done),
                    _ = due => {}
                    _ = self.stop.wait(), if !stopping => {}
                    // A safety net, not a poll: every wake-up above is an event.
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                }
            }
        }
    }

    /// Creates the schema, reads the progress, discards what was never
    /// committed, loads what ClickHouse holds and opens the readers where
    /// the progress says. Retries until it works (or the sink is stopped).
    async fn connect(&self) -> Option<(u64, Written, Vec<Reader>)> {
        let mut failures = 0u32;
        loop {
            match self.try_connect().await {
                Ok(connected) => return Some(connected),
                Err(error) => {
                    failures += 1;
                    let backoff = stockflow_sinks::backoff::CONNECT.delay(failures);
                    tracing::warn!(
                        retry_in_ms = backoff.as_millis() as u64,
                        "connecting to ClickHouse at {}: {error:#}",
                        self.settings.clickhouse.url
                    );
                    self.state(format!(
                        "connecting to {}: {error:#}",
                        self.settings.clickhouse.url
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.wait() => {
                            self.state("stopped");
                            return None;
                        }
                    }
                }
            }
        }
    }

    async fn try_connect(&self) -> anyhow::Result<(u64, Written, Vec<Reader>)> {
        self.clickhouse.ensure_schema().await?;
        let progress = self.clickhouse.progress().await?;
        let discarded = self.clickhouse.discard_uncommitted(progress.epoch).await?;
        if discarded > 0 {
            tracing::info!(
                discarded,
                committed = progress.epoch,
                "discarded rows written after the last committed sink epoch"
            );
        }
        let mut written = Written::default();
        for row in self.clickhouse.stock_current().await? {
            let key = StockKey {
                tenant: Name::from(row.tenant.as_str()),
                sku: Name::from(row.sku.as_str()),
                location: Name::from(row.location.as_str()),
            };
            let delta = StockDelta {
                on_hand: row.on_hand,
                reserved: row.reserved,
                changes: row.version,
                updated_at: i64::from(row.updated_at) * 1000,
            };
            written.stock.insert(key, delta);
        }
        for row in self.clickhouse.kpis().await? {
            if let Some((key, value)) = kpi_of_row(&row) {
                written.kpis.insert(key, value);
            }
        }
        let mut readers = Vec::new();
        let topics = self
            .inputs
            .sources
            .iter()
            .map(|(source, format)| (source, Some(*format)))
            .chain(self.inputs.alerts.iter().map(|source| (source, None)));
        for (source, format) in topics {
            for partition in 0..source.partitions() {
                let from = match progress
                    .offsets
                    .get(source.topic())
                    .and_then(|p| p.get(&partition))
                {
                    Some(offset) => *offset,
                    None if self.settings.from_earliest || format.is_none() => 0,
                    None => source.end_offset(partition)?,
                };
                readers.push(Reader {
                    topic: source.topic().to_owned(),
                    format,
                    reader: source.reader(partition, from)?,
                });
            }
        }
        tracing::info!(
            database = self.clickhouse.database(),
            committed = progress.epoch,
            stock_rows = written.stock.len(),
            kpi_rows = written.kpis.len(),
            "ClickHouse sink connected"
        );
        self.state(format!("connected: epoch {} committed", progress.epoch));
        Ok((progress.epoch, written, readers))
    }

    /// One step: events (and alerts) read up to `snapshot`, at most `budget`
    /// of them, and, once the events reach the snapshot's offsets and when
    /// `with_state`, the state difference. `None` when there is nothing new.
    fn step(
        &self,
        epoch: u64,
        snapshot: &Snapshot,
        written: &mut Written,
        readers: &mut [Reader],
        budget: usize,
        with_state: bool,
    ) -> Option<Batch> {
        let mut batch = Batch {
            epoch,
            ..Batch::default()
        };
        let mut events_done = true;
        let mut records: Vec<Record> = Vec::new();
        let mut decoded: Vec<Event> = Vec::new();
        for reader in readers.iter_mut() {
            let left = budget.saturating_sub(batch.events.len() + batch.alerts.len());
            let target = match reader.format {
                Some(_) => snapshot
                    .as_of
                    .offsets
                    .get(&reader.topic)
                    .and_then(|p| p.get(&reader.reader.partition()))
                    .copied()
                    .unwrap_or(0),
                None => u64::MAX,
            };
            let position = reader.reader.position();
            if position >= target {
                continue;
            }
            if left == 0 {
                events_done &= reader.format.is_none();
                continue;
            }
            records.clear();
            let max = left.min(usize::try_from(target - position).unwrap_or(usize::MAX));
            if let Err(error) = reader.reader.read(max, &mut records) {
                tracing::debug!(%error, topic = %reader.topic, "sink read failed; retrying next step");
                events_done &= reader.format.is_none();
                continue;
            }
            let partition = reader.reader.partition();
            for record in records.drain(..).filter(|r| r.offset < target) {
                match reader.format {
                    Some(format) => {
                        decoded.clear();
                        // Messages that do not decode are in the dead-letter topic, not here.
                        if format
                            .decode(&reader.topic, partition, &record, &mut decoded)
                            .is_ok()
                        {
                            for (idx, event) in decoded.drain(..).enumerate() {
                                batch.events.push(event_row(
                                    &reader.topic,
                                    partition,
                                    &record,
                                    idx,
                                    &event,
                                    epoch,
                                ));
                            }
                        }
                    }
                    None => {
                        if let Some(row) = alert_row(&reader.topic, partition, &record, epoch) {
                            batch.alerts.push(row);
                        }
                    }
                }
            }
            if reader.format.is_some() && reader.reader.position() < target {
                events_done = false;
            }
        }
        for reader in readers.iter() {
            batch
                .offsets
                .entry(reader.topic.clone())
                .or_default()
                .insert(reader.reader.partition(), reader.reader.position());
        }
        if with_state && events_done && snapshot.as_of.epoch > written.engine_epoch {
            diff_stock(&written.stock, &snapshot.stock, epoch, &mut batch);
            diff_kpis(
                &written.kpis,
                &snapshot.kpis,
                snapshot.kpi_horizon,
                epoch,
                &mut batch,
            );
            written.stock = snapshot.stock.clone();
            written.kpis = snapshot.kpis.clone();
            written.engine_epoch = snapshot.as_of.epoch;
        }
        batch.engine_epoch = written.engine_epoch;
        (batch.rows() > 0).then_some(batch)
    }
}

/// Writes `batch`. After a failure (`dirty`) it first asks ClickHouse
/// what was committed: a failure whose progress row landed (its answer
/// was lost) committed the batch, which is then not written again;
/// otherwise what the failed attempt left above the commit is discarded.
async fn write(
    clickhouse: &ClickHouse,
    committed: u64,
    batch: &Batch,
    dirty: bool,
) -> anyhow::Result<()> {
    if dirty {
        let recorded = clickhouse.progress().await?.epoch.max(committed);
        if recorded >= batch.epoch {
            tracing::info!(
                epoch = batch.epoch,
                "the failed write had been committed: not writing it again"
            );
            return Ok(());
        }
        clickhouse.discard_uncommitted(recorded).await?;
    }
    clickhouse.write(batch).await?;
    Ok(())
}

/// A batch being written: it comes back with the outcome.
type Writing = tokio::task::JoinHandle<(Batch, anyhow::Result<()>)>;

/// Joins consecutive steps into one batch (the last step's epoch and offsets).
fn merge(steps: Vec<Batch>) -> Batch {
    let mut merged = Batch::default();
    for step in steps {
        merged.epoch = step.epoch;
        merged.engine_epoch = step.engine_epoch;
        merged.offsets = step.offsets;
        merged.events.extend(step.events);
        merged.stock_changes.extend(step.stock_changes);
        merged.stock_current.extend(step.stock_current);
        merged.kpis.extend(step.kpis);
        merged.alerts.extend(step.alerts);
    }
    merged
}

/// The `stock` view's row as ClickHouse holds it.
pub fn stock_row(key: &StockKey, delta: &StockDelta) -> StockRow {
    StockRow {
        tenant: key.tenant.to_string(),
        sku: key.sku.to_string(),
        location: key.location.to_string(),
        on_hand: delta.on_hand,
        reserved: delta.reserved,
        available: delta.available(),
        version: delta.changes,
        updated_at: datetime(delta.updated_at),
    }
}

/// Rows for what changed between two states of the stock view: a
/// retraction of the old row, an insertion of the new (as ClickHouse
/// columns: a change ClickHouse cannot see, below a second, is none).
fn diff_stock(
    before: &OrdMap<StockKey, StockDelta>,
    after: &OrdMap<StockKey, StockDelta>,
    epoch: u64,
    batch: &mut Batch,
) {
    use imbl::ordmap::DiffItem;
    for item in before.diff(after) {
        let (old, new) = match item {
            DiffItem::Add(key, new) => (None, Some(stock_row(key, new))),
            DiffItem::Update {
                old: (key, old),
                new: (_, new),
            } => (Some(stock_row(key, old)), Some(stock_row(key, new))),
            DiffItem::Remove(key, old) => (Some(stock_row(key, old)), None),
        };
        if old == new {
            continue;
        }
        if let Some(old) = &old {
            batch
                .stock_changes
                .push(StockChangeRow::new(old.clone(), epoch, -1));
        }
        match new {
            Some(new) => {
                batch
                    .stock_changes
                    .push(StockChangeRow::new(new.clone(), epoch, 1));
                batch
                    .stock_current
                    .push(StockCurrentRow::new(new, epoch, false));
            }
            None => batch.stock_current.push(StockCurrentRow::new(
                old.expect("a removed row had a value"),
                epoch,
                true,
            )),
        }
    }
}

/// `kpis` rows for what changed; a row dropped by retention (its bucket
/// ended at or before `horizon`) stays in ClickHouse as history.
fn diff_kpis(
    before: &OrdMap<KpiKey, KpiValue>,
    after: &OrdMap<KpiKey, KpiValue>,
    horizon: i64,
    epoch: u64,
    batch: &mut Batch,
) {
    use imbl::ordmap::DiffItem;
    for item in before.diff(after) {
        let row = match item {
            DiffItem::Add(key, value)
            | DiffItem::Update {
                new: (key, value), ..
            } => kpi_row(key, *value, epoch, false),
            DiffItem::Remove(key, value) => {
                if key.bucket.saturating_add(key.window.millis()) <= horizon {
                    continue;
                }
                kpi_row(key, *value, epoch, true)
            }
        };
        if let DiffItem::Update {
            old: (key, old), ..
        } = item
        {
            if kpi_row(key, *old, epoch, false) == row {
                continue;
            }
        }
        batch.kpis.push(row);
    }
}

/// A KPI row as ClickHouse holds it.
pub fn kpi_row(key: &KpiKey, value: KpiValue, epoch: u64, deleted: bool) -> KpiRow {
    let (kind, value) = match value {
        KpiValue::Int(n) => ("int", n.saturating_mul(10_000)),
        KpiValue::Money(m) => ("money", m),
        KpiValue::Ratio(r) => ("ratio", (r * 10_000.0).round() as i128),
    };
    KpiRow {
        tenant: key.tenant.to_string(),
        window: key.window.name().to_owned(),
        bucket: datetime(key.bucket),
        metric: key.metric.to_string(),
        group_key: key.group.to_string(),
        kind: kind.to_owned(),
        value,
        epoch,
        deleted: deleted as u8,
    }
}

/// The KPI a ClickHouse row holds (`None` for a row this version cannot read).
fn kpi_of_row(row: &KpiRow) -> Option<(KpiKey, KpiValue)> {
    let value = match row.kind.as_str() {
        "int" => KpiValue::Int(row.value / 10_000),
        "money" => KpiValue::Money(row.value),
        "ratio" => KpiValue::Ratio(row.value as f64 / 10_000.0),
        _ => return None,
    };
    let key = KpiKey {
        tenant: Name::from(row.tenant.as_str()),
        window: Window::parse(&row.window)?,
        bucket: i64::from(row.bucket) * 1000,
        metric: Name::from(row.metric.as_str()),
        group: Name::from(row.group_key.as_str()),
    };
    Some((key, value))
}

/// An `events` row: the decoded event's columns and the message as read.
fn event_row(
    topic: &str,
    partition: u32,
    record: &Record,
    idx: usize,
    event: &Event,
    epoch: u64,
) -> EventRow {
    let (location, qty, amount) = match &event.body {
        EventBody::ItemCreated { initial, .. } => {
            (String::new(), initial.iter().map(|(_, q)| q).sum(), 0)
        }
        EventBody::StockAdjusted { location, qty, .. }
        | EventBody::StockReserved { location, qty, .. } => (location.to_string(), *qty, 0),
        EventBody::StockLevel {
            location, on_hand, ..
        } => (location.to_string(), *on_hand, 0),
        EventBody::OrderPlaced { lines, total, .. } => (
            String::new(),
            lines.iter().map(|l| l.qty).sum(),
            i128::from(total.ten_thousandths()),
        ),
        _ => (String::new(), 0, 0),
    };
    EventRow {
        topic: topic.to_owned(),
        partition,
        offset: record.offset,
        idx: u16::try_from(idx).unwrap_or(u16::MAX),
        tenant: event.tenant.to_string(),
        id: event.id.to_string(),
        r#type: event.body.type_name().to_owned(),
        sku: event.body.sku().map(|s| s.to_string()).unwrap_or_default(),
        location,
        qty,
        amount,
        ts: datetime(event.ts),
        epoch,
        // The message as it is in the topic (what an audit wants; re-encoding
        // the event as JSON cost the sink a third of its time).
        payload: String::from_utf8_lossy(&record.payload).into_owned(),
    }
}

/// An `alerts` row from an alert event of the alerts topic (`None` for a
/// message that is not one).
fn alert_row(topic: &str, partition: u32, record: &Record, epoch: u64) -> Option<AlertRow> {
    let alert: AlertEvent = serde_json::from_slice(&record.payload).ok()?;
    let ts = alert
        .ts
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis());
    Some(AlertRow {
        tenant: alert.tenant.into_owned(),
        sku: alert.sku.into_owned(),
        location: alert.location.into_owned(),
        kind: alert.kind.name().to_owned(),
        state: alert.state.into_owned(),
        transition: alert.transition,
        available: alert.available,
        threshold: alert.threshold,
        target_level: alert.target_level,
        suggested_reorder_qty: alert.suggested_reorder_qty.unwrap_or(0),
        ts: datetime(ts),
        id: alert.id.into_owned(),
        topic: topic.to_owned(),
        partition,
        offset: record.offset,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::alert_event_json;
    use stockflow_dataflows::alerts::{Alert, AlertKind};

    #[test]
    fn alert_events_become_alert_rows() {
        let alert = Alert {
            key: StockKey {
                tenant: "acme".into(),
                sku: "A".into(),
                location: "W1".into(),
            },
            kind: AlertKind::LowStock,
            raised: true,
            transition: 3,
            available: 2,
            threshold: 5,
            target_level: 10,
            suggested_reorder_qty: 8,
            ts: 1_700_000_000_500,
        };
        let record = Record {
            offset: 7,
            timestamp_ms: 0,
            key: None,
            payload: serde_json::to_vec(&alert_event_json(&alert, 4)).unwrap(),
        };
        let row = alert_row("alerts.events", 1, &record, 9).expect("an alert event");
        assert_eq!(
            (row.tenant.as_str(), row.kind.as_str(), row.state.as_str()),
            ("acme", "low_stock", "raised")
        );
        assert_eq!(
            (
                row.transition,
                row.available,
                row.threshold,
                row.target_level,
                row.suggested_reorder_qty
            ),
            (3, 2, 5, 10, 8)
        );
        assert_eq!(
            (row.ts, row.offset, row.partition, row.epoch),
            (1_700_000_000, 7, 1, 9)
        );
        let other = Record {
            payload: b"{\"hello\":1}".to_vec(),
            ..record
        };
        assert!(alert_row("alerts.events", 1, &other, 9).is_none());
    }

    #[test]
    fn kpi_rows_read_back_as_the_same_kpi() {
        let key = KpiKey {
            tenant: "acme".into(),
            window: Window::Hour,
            bucket: 3_600_000,
            metric: "revenue".into(),
            group: "".into(),
        };
        for value in [
            KpiValue::Int(42),
            KpiValue::Money(123_456),
            KpiValue::Ratio(0.8125),
        ] {
            let row = kpi_row(&key, value, 1, false);
            assert_eq!(kpi_of_row(&row), Some((key.clone(), value)));
        }
    }

    #[test]
    fn stock_differences_retract_and_insert_and_skip_what_clickhouse_cannot_see() {
        let key = |sku: &str| StockKey {
            tenant: "t".into(),
            sku: sku.into(),
            location: "L".into(),
        };
        let delta = |on_hand, ms| StockDelta {
            on_hand,
            reserved: 1,
            changes: 1,
            updated_at: ms,
        };
        let before: OrdMap<_, _> = [
            (key("A"), delta(5, 1_000)),
            (key("B"), delta(3, 1_000)),
            (key("C"), delta(1, 1_000)),
        ]
        .into_iter()
        .collect();
        let mut after = before.clone();
        after.insert(key("A"), delta(4, 2_000)); // changed
        after.insert(key("B"), delta(3, 1_500)); // same second: nothing to write
        after.remove(&key("C")); // left the view
        after.insert(key("D"), delta(9, 2_000)); // new
        let mut batch = Batch::default();
        diff_stock(&before, &after, 7, &mut batch);
        let changes: Vec<(&str, i64, i8)> = batch
            .stock_changes
            .iter()
            .map(|c| (c.sku.as_str(), c.on_hand, c.diff))
            .collect();
        assert_eq!(
            changes,
            vec![("A", 5, -1), ("A", 4, 1), ("C", 1, -1), ("D", 9, 1)]
        );
        let current: Vec<(&str, i64, u8)> = batch
            .stock_current
            .iter()
            .map(|c| (c.sku.as_str(), c.on_hand, c.deleted))
            .collect();
        assert_eq!(current, vec![("A", 4, 0), ("C", 1, 1), ("D", 9, 0)]);
        assert!(batch.stock_changes.iter().all(|c| c.epoch == 7));
    }
}
