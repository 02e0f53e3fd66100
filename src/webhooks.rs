//! Webhook subscribers: one reader of the alerts topic fans the alert
//! events out to one delivery task per webhook, all on the server's async
//! runtime (no thread per webhook).
//! Long because the fan-out, the per-webhook tails and their bounds are one state machine.
//!
//! - **The tail** (one task) reads the alerts topic from its end at start,
//!   polling every [`POLL`] when it has caught up (the topics have no
//!   append notification; one poll for all webhooks, not one per webhook),
//!   decodes each event once and puts it on the bounded queue
//!   ([`QUEUE`] items) of every live webhook that wants it.
//! - **A webhook's task** takes its queue in topic order (so in order per
//!   sku: alert events are keyed `tenant/sku`) and delivers each event with
//!   `stockflow_sinks::webhooks::deliver`, retries included.
//! - **A webhook that falls behind** (its queue full: a slow or dead
//!   receiver) is dropped from the tail: the tail never waits for it and
//!   holds nothing more for it. Its task finishes the queue, then reads the
//!   topic itself from its own cursor, a chunk at a time, until it is level
//!   with the tail again and rejoins it. Memory stays bounded either way.
//!
//! The cursor (next offset per partition) is persisted in the data dir
//! when a webhook's queue runs empty, at most [`SAVE_EVERY`] apart while it
//! is busy, per chunk while it catches up, and when it stops — not per
//! event (a write and two fsyncs each) — so delivery is at-least-once
//! across restarts: events delivered in the second before a crash are
//! delivered again after it, with the same `X-Stockflow-Delivery` ids. A new webhook starts
//! at the end of the alerts topic: it receives the alerts that happen after
//! it was registered. Blocking work (file writes, reads of the topic) runs
//! on the runtime's blocking pool, at most [`BLOCKING_AT_ONCE`] at a time,
//! so the threads used do not grow with the number of webhooks.

use crate::metrics::Metrics;
use crate::source::{PartitionReader, Record, Source};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stockflow_sinks::fs::write_atomically;
use stockflow_sinks::webhooks::{deliver, Client, Delivery, Outgoing, Policy, Registry, Webhook};
use tokio::sync::{mpsc, watch, Semaphore};

/// Deliveries remembered per webhook for `GET /v1/webhooks/{id}/deliveries`.
const DELIVERIES_KEPT: usize = 200;
/// How long the tail waits before reading again once it has caught up.
pub const POLL: Duration = Duration::from_millis(20);
/// Events (and skip marks) queued per webhook; a webhook with a full queue
/// has fallen behind and reads from its own cursor until it catches up.
pub const QUEUE: usize = 1024;
/// Records read per partition at a time (by the tail and by a webhook catching up).
const CHUNK: usize = 256;
/// Longest a busy webhook goes without saving its cursor (it is saved too
/// when its queue runs empty, when it stops, and per chunk it catches up).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Blocking jobs (cursor writes, topic reads) the webhooks run at once.
pub const BLOCKING_AT_ONCE: usize = 4;

/// A cursor: the next offset to handle, per alerts partition.
type Cursor = BTreeMap<u32, u64>;

/// An alert event as read, decoded once and shared by every queue.
struct Alert {
    partition: u32,
    offset: u64,
    /// The event; `None` when the record is not JSON (skipped by everyone).
    event: Option<serde_json::Value>,
    payload: Vec<u8>,
}

impl Alert {
    fn new(partition: u32, record: Record) -> Alert {
        Alert {
            partition,
            offset: record.offset,
            event: serde_json::from_slice(&record.payload).ok(),
            payload: record.payload,
        }
    }

    fn wanted_by(&self, hook: &Webhook) -> bool {
        self.event.as_ref().is_some_and(|event| hook.wants(event))
    }
}

/// What the tail puts on a webhook's queue.
enum Item {
    /// An event the webhook wants.
    Alert(Arc<Alert>),
    /// The webhook has nothing to deliver in `partition` before `next`.
    Passed { partition: u32, next: u64 },
}

/// A webhook the tail feeds.
struct Live {
    hook: Arc<Webhook>,
    /// The next offset to put on its queue, per partition (records before are skipped).
    next: Cursor,
    queue: mpsc::Sender<Item>,
}

/// The shared reader's state.
#[derive(Default)]
struct Tail {
    /// The next offset the tail reads, per partition; `None` until the alerts topic is open.
    position: Option<Cursor>,
    /// The end of each partition when last read (for the lag gauges).
    ends: Cursor,
    live: HashMap<String, Live>,
}

/// A registration refused.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The tenant holds as many webhooks as `--webhooks-per-tenant` allows.
    #[error("tenant `{tenant}` has {cap} webhooks, the most one tenant may register (--webhooks-per-tenant, STOCKFLOW_WEBHOOKS_PER_TENANT, webhooks_per_tenant = {cap}); delete one first")]
    Cap {
        /// The tenant.
        tenant: String,
        /// The cap.
        cap: usize,
    },
    /// The registry or a cursor could not be written, or the topic read.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The webhooks of one server.
pub struct Webhooks {
    registry: Registry,
    dir: PathBuf,
    policy: Policy,
    metrics: Metrics,
    client: Client,
    runtime: tokio::runtime::Handle,
    /// The alerts topic, once the engine has opened it.
    alerts: watch::Sender<Option<Arc<dyn Source>>>,
    /// True once the tail knows its position (webhooks wait for it).
    ready: watch::Sender<bool>,
    /// True once the server stops.
    stopping: watch::Sender<bool>,
    tail: Mutex<Tail>,
    /// Registrations one at a time: the per-tenant cap is checked and taken at once.
    registering: Mutex<()>,
    blocking: Semaphore,
    deliveries: Mutex<HashMap<String, VecDeque<Delivery>>>,
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    tail_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Webhooks {
    /// Opens the registry under `data_dir/webhooks/` and starts the tail and
    /// a task per registered webhook on the current runtime (they wait for
    /// [`Webhooks::set_alerts`]).
    pub fn open(
        data_dir: &std::path::Path,
        policy: Policy,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<Webhooks>> {
        let dir = data_dir.join("webhooks");
        std::fs::create_dir_all(&dir)?;
        let registry = Registry::open(&dir.join("webhooks.json"))?;
        let client = stockflow_sinks::webhooks::client(policy.networks.clone())?;
        let webhooks = Arc::new(Webhooks {
            registry,
            dir,
            policy,
            metrics,
            client,
            runtime: tokio::runtime::Handle::try_current()?,
            alerts: watch::channel(None).0,
            ready: watch::channel(false).0,
            stopping: watch::channel(false).0,
            tail: Mutex::default(),
            registering: Mutex::new(()),
            blocking: Semaphore::new(BLOCKING_AT_ONCE),
            deliveries: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            tail_task: Mutex::new(None),
        });
        let tail = webhooks.runtime.spawn(webhooks.clone().run_tail());
        *webhooks.tail_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(tail);
        for hook in webhooks.registry.list() {
            webhooks.spawn(hook);
        }
        Ok(webhooks)
    }

    /// Hands the webhooks the alerts topic (when the engine has opened it).
    pub fn set_alerts(&self, alerts: Arc<dyn Source>) {
        self.alerts
            .send_if_modified(|slot| slot.is_none() && slot.replace(alerts).is_none());
    }

    /// How deliveries are made, where they may go, the per-tenant cap.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every webhook.
    pub fn list(&self) -> Vec<Webhook> {
        self.registry.list()
    }

    /// One webhook.
    pub fn get(&self, id: &str) -> Option<Webhook> {
        self.registry.get(id)
    }

    /// Registers a webhook (already validated) unless its tenant is at the
    /// cap, and starts delivering to it the alerts that happen from now on.
    /// Blocking (writes files, may ask the broker for the topic's end).
    pub fn add(self: &Arc<Self>, hook: Webhook) -> Result<(), AddError> {
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|p| p.into_inner());
        let held = self
            .registry
            .list()
            .iter()
            .filter(|h| h.tenant == hook.tenant)
            .count();
        if held >= self.policy.per_tenant {
            return Err(AddError::Cap {
                tenant: hook.tenant,
                cap: self.policy.per_tenant,
            });
        }
        // From the end of the topic as it is now (from its start if the engine has not opened it yet).
        let alerts = self.alerts.borrow().clone();
        if let Some(alerts) = alerts {
            let mut cursor = Cursor::new();
            for partition in 0..alerts.partitions() {
                cursor.insert(
                    partition,
                    alerts.end_offset(partition).map_err(anyhow::Error::from)?,
                );
            }
            self.save_cursor(&hook.id, &cursor)
                .map_err(anyhow::Error::from)?;
        }
        self.registry
            .add(hook.clone())
            .map_err(anyhow::Error::from)?;
        self.spawn(hook);
        Ok(())
    }

    /// Stops and forgets a webhook; `false` if there was none.
    pub fn remove(&self, id: &str) -> anyhow::Result<bool> {
        if !self.registry.remove(id)? {
            return Ok(false);
        }
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            // A delivery cut short is not recorded; nobody will ask for it.
            task.abort();
        }
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .remove(id);
        let _ = std::fs::remove_file(self.cursor_path(id));
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let _ = self.metrics.webhook_lag.remove_label_values(&[id]);
        Ok(true)
    }

    /// The latest deliveries of a webhook, newest last.
    pub fn deliveries(&self, id: &str) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops the tail and every webhook's task and waits for them: a
    /// delivery under way is cut short (not recorded: it is attempted again
    /// after a restart, with the same delivery id); cursors are saved.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, task)| task)
            .collect();
        let tail = self
            .tail_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for task in tasks.into_iter().chain(tail) {
            let _ = task.await;
        }
    }

    fn spawn(self: &Arc<Self>, hook: Webhook) {
        let id = hook.id.clone();
        let task = self.runtime.spawn(self.clone().run_hook(Arc::new(hook)));
        if let Some(old) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, task)
        {
            old.abort();
        }
    }

    fn cursor_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.cursor.json"))
    }

    fn load_cursor(&self, id: &str) -> Cursor {
        std::fs::read(self.cursor_path(id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_cursor(&self, id: &str, cursor: &Cursor) -> std::io::Result<()> {
        write_atomically(
            &self.cursor_path(id),
            &serde_json::to_vec(cursor).expect("offsets serialize"),
        )
    }

    /// Runs `job` on the blocking pool, at most [`BLOCKING_AT_ONCE`] jobs of the webhooks at a time.
    async fn blocking<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let _turn = self
            .blocking
            .acquire()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(job)
            .await
            .expect("a webhook's blocking job panicked")
    }

    async fn save_cursor_logged(self: &Arc<Self>, id: &str, cursor: &Cursor) {
        let (this, owned_id, owned) = (self.clone(), id.to_owned(), cursor.clone());
        if let Err(error) = self
            .blocking(move || this.save_cursor(&owned_id, &owned))
            .await
        {
            tracing::warn!(webhook = %id, %error, "saving the webhook cursor failed");
        }
    }

    /// Resolves once the server stops.
    async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        loop {
            let stopped = *stopping.borrow_and_update();
            if stopped || stopping.changed().await.is_err() {
                return;
            }
        }
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Opens a reader of every partition at `cursor` (0 where it has none).
    async fn open_readers(
        self: &Arc<Self>,
        alerts: &Arc<dyn Source>,
        cursor: &Cursor,
    ) -> Result<Vec<Box<dyn PartitionReader>>, crate::source::SourceError> {
        let (alerts, cursor) = (alerts.clone(), cursor.clone());
        self.blocking(move || {
            (0..alerts.partitions())
                .map(|p| alerts.reader(p, cursor.get(&p).copied().unwrap_or(0)))
                .collect()
        })
        .await
    }

    /// Reads up to [`CHUNK`] records of every partition, and each one's end.
    async fn read_chunk(
        self: &Arc<Self>,
        mut readers: Vec<Box<dyn PartitionReader>>,
    ) -> (
        Vec<Box<dyn PartitionReader>>,
        Result<Vec<(u32, Vec<Record>, Option<u64>)>, crate::source::SourceError>,
    ) {
        self.blocking(move || {
            let mut chunks = Vec::with_capacity(readers.len());
            for reader in readers.iter_mut() {
                let mut records = Vec::new();
                if let Err(error) = reader.read(CHUNK, &mut records) {
                    return (readers, Err(error));
                }
                let end = reader.end_offset().ok();
                chunks.push((reader.partition(), records, end));
            }
            (readers, Ok(chunks))
        })
        .await
    }

    /// Waits `pause` unless the server stops first; `false` if it stopped.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(pause) => !self.is_stopping(),
            _ = self.stopped() => false,
        }
    }

    /// The tail: reads the alerts topic once for every webhook.
    async fn run_tail(self: Arc<Self>) {
        let mut alerts_set = self.alerts.subscribe();
        let alerts = loop {
            let alerts = alerts_set.borrow_and_update().clone();
            if let Some(alerts) = alerts {
                break alerts;
            }
            tokio::select! {
                changed = alerts_set.changed() => if changed.is_err() { return },
                _ = self.stopped() => return,
            }
        };
        // From the end of the topic: a webhook behind it reads from its own cursor.
        let mut readers = loop {
            let source = alerts.clone();
            let opened = self
                .blocking(move || {
                    (0..source.partitions())
                        .map(|p| source.end_offset(p).and_then(|end| source.reader(p, end)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
            match opened {
                Ok(readers) => break readers,
                Err(error) => {
                    tracing::warn!(%error, "opening the alerts topic for the webhooks failed; retrying");
                    if !self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        };
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.position = Some(
                readers
                    .iter()
                    .map(|r| (r.partition(), r.position()))
                    .collect(),
            );
            tail.ends = tail.position.clone().unwrap_or_default();
        }
        self.ready.send_replace(true);
        while !self.is_stopping() {
            let (back, chunks) = self.read_chunk(readers).await;
            readers = back;
            let chunks = match chunks {
                Ok(chunks) => chunks,
                Err(error) => {
                    tracing::warn!(%error, "reading the alerts topic for the webhooks failed; retrying");
                    if !self.pause(Duration::from_millis(200)).await {
                        return;
                    }
                    continue;
                }
            };
            let read: usize = chunks.iter().map(|(_, records, _)| records.len()).sum();
            self.fan_out(chunks);
            if read == 0 && !self.pause(POLL).await {
                return;
            }
        }
    }

    /// Puts what the tail read on the queues of the live webhooks that want
    /// it; a webhook whose queue is full is dropped (it catches up alone).
    fn fan_out(&self, chunks: Vec<(u32, Vec<Record>, Option<u64>)>) {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let Tail {
            position,
            ends,
            live,
        } = &mut *tail;
        let position = position.as_mut().expect("the tail is open");
        let mut behind = Vec::new();
        for (partition, records, end) in chunks {
            let Some(last) = records.last().map(|r| r.offset) else {
                continue;
            };
            let alerts: Vec<Arc<Alert>> = records
                .into_iter()
                .map(|r| Arc::new(Alert::new(partition, r)))
                .collect();
            for (id, hook) in live.iter_mut() {
                let next = hook.next.entry(partition).or_insert(0);
                let mut skipped = false;
                let mut full = false;
                let from = *next;
                for alert in alerts.iter().filter(|a| a.offset >= from) {
                    if alert.wanted_by(&hook.hook) {
                        if hook.queue.try_send(Item::Alert(alert.clone())).is_err() {
                            full = true;
                            break;
                        }
                        skipped = false;
                    } else {
                        skipped = true;
                    }
                    *next = alert.offset + 1;
                }
                if full
                    || (skipped
                        && hook
                            .queue
                            .try_send(Item::Passed {
                                partition,
                                next: *next,
                            })
                            .is_err())
                {
                    behind.push(id.clone());
                }
            }
            for id in behind.drain(..) {
                // Dropping the sender ends its queue: the task reads on from its cursor.
                live.remove(&id);
                tracing::info!(webhook = %id, "webhook fell behind the alerts topic; it reads from its own cursor until it catches up");
                self.metrics.webhook_behind.with_label_values(&[&id]).inc();
            }
            position.insert(partition, last + 1);
            ends.insert(partition, end.unwrap_or(last + 1).max(last + 1));
        }
    }

    /// Makes `hook` live if its cursor is level with (or past) the tail.
    fn join(&self, hook: &Arc<Webhook>, cursor: &Cursor) -> Option<mpsc::Receiver<Item>> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let position = tail.position.as_ref()?;
        if position
            .iter()
            .any(|(p, offset)| cursor.get(p).copied().unwrap_or(0) < *offset)
        {
            return None;
        }
        let next = position
            .keys()
            .map(|p| (*p, cursor.get(p).copied().unwrap_or(0)))
            .collect();
        let (queue, receiver) = mpsc::channel(QUEUE);
        tail.live.insert(
            hook.id.clone(),
            Live {
                hook: hook.clone(),
                next,
                queue,
            },
        );
        Some(receiver)
    }

    fn set_lag(&self, hook: &Webhook, cursor: &Cursor) {
        let lag: u64 = {
            let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.ends
                .iter()
                .map(|(p, end)| end.saturating_sub(cursor.get(p).copied().unwrap_or(0)))
                .sum()
        };
        self.metrics
            .webhook_lag
            .with_label_values(&[&hook.id])
            .set(lag as i64);
    }

    /// A webhook's task: live on the tail's queue while it keeps up, on its
    /// own reader while it catches up.
    async fn run_hook(self: Arc<Self>, hook: Arc<Webhook>) {
        let mut ready = self.ready.subscribe();
        loop {
            let open = *ready.borrow_and_update();
            if open {
                break;
            }
            tokio::select! {
                changed = ready.changed() => if changed.is_err() { return },
                _ = self.stopped() => return,
            }
        }
        let mut cursor = self.load_cursor(&hook.id);
        loop {
            let queue = match self.join(&hook, &cursor) {
                Some(queue) => queue,
                None => match self.catch_up(&hook, &mut cursor).await {
                    Some(queue) => queue,
                    None => return,
                },
            };
            self.set_lag(&hook, &cursor);
            if !self.drain(&hook, &mut cursor, queue).await {
                return;
            }
        }
    }

    /// Handles the queue until the tail drops it (`true`) or the server stops (`false`).
    async fn drain(
        self: &Arc<Self>,
        hook: &Arc<Webhook>,
        cursor: &mut Cursor,
        mut queue: mpsc::Receiver<Item>,
    ) -> bool {
        let mut unsaved = false;
        let mut saved_at = std::time::Instant::now();
        loop {
            let item = match queue.try_recv() {
                Ok(item) => Some(item),
                Err(_) => {
                    // Idle: what was delivered or skipped is saved now, not once per event.
                    if unsaved {
                        self.save_cursor_logged(&hook.id, cursor).await;
                        (unsaved, saved_at) = (false, std::time::Instant::now());
                    }
                    tokio::select! {
                        item = queue.recv() => item,
                        _ = self.stopped() => return false,
                    }
                }
            };
            match item {
                None => return true,
                Some(Item::Passed { partition, next }) => {
                    let at = cursor.entry(partition).or_insert(0);
                    *at = (*at).max(next);
                    unsaved = true;
                }
                Some(Item::Alert(alert)) => {
                    if !self.handle(hook, &alert, cursor).await {
                        if unsaved {
                            self.save_cursor_logged(&hook.id, cursor).await;
                        }
                        return false;
                    }
                    unsaved = true;
                }
            }
            // Busy: saved at most every SAVE_EVERY (two fsyncs per event was the cost).
            if unsaved && saved_at.elapsed() >= SAVE_EVERY {
                self.save_cursor_logged(&hook.id, cursor).await;
                (unsaved, saved_at) = (false, std::time::Instant::now());
            }
            self.set_lag(hook, cursor);
        }
    }

    /// Reads the topic from the webhook's own cursor until it is level with
    /// the tail, then joins it; `None` if the server stops first.
    async fn catch_up(
        self: &Arc<Self>,
        hook: &Arc<Webhook>,
        cursor: &mut Cursor,
    ) -> Option<mpsc::Receiver<Item>> {
        let alerts = self
            .alerts
            .borrow()
            .clone()
            .expect("the tail is open, so the topic is");
        let mut readers = None;
        loop {
            if self.is_stopping() {
                return None;
            }
            if let Some(queue) = self.join(hook, cursor) {
                return Some(queue);
            }
            let opened = match readers.take() {
                Some(readers) => readers,
                None => match self.open_readers(&alerts, cursor).await {
                    Ok(readers) => readers,
                    Err(error) => {
                        tracing::warn!(webhook = %hook.id, %error, "opening the alerts topic failed; retrying");
                        if !self.pause(Duration::from_secs(1)).await {
                            return None;
                        }
                        continue;
                    }
                },
            };
            let (back, chunks) = self.read_chunk(opened).await;
            readers = Some(back);
            let chunks = match chunks {
                Ok(chunks) => chunks,
                Err(error) => {
                    tracing::warn!(webhook = %hook.id, %error, "reading the alerts topic failed; retrying");
                    if !self.pause(Duration::from_millis(200)).await {
                        return None;
                    }
                    continue;
                }
            };
            let mut read = 0;
            let mut unsaved = false;
            for (partition, records, _) in chunks {
                read += records.len();
                for record in records {
                    let alert = Alert::new(partition, record);
                    unsaved = true;
                    if alert.wanted_by(hook) {
                        if !self.handle(hook, &alert, cursor).await {
                            if unsaved {
                                self.save_cursor_logged(&hook.id, cursor).await;
                            }
                            return None;
                        }
                    } else {
                        cursor.insert(partition, alert.offset + 1);
                    }
                }
            }
            if unsaved {
                self.save_cursor_logged(&hook.id, cursor).await;
            }
            self.set_lag(hook, cursor);
            // Level with the end of the topic but not with the tail (it has not read as far): wait for it.
            if read == 0 && !self.pause(POLL).await {
                return None;
            }
        }
    }

    /// Delivers one event (retries included), records it, advances the
    /// cursor (the caller saves it); `false` if the server stopped first
    /// (nothing recorded, the cursor stays).
    async fn handle(
        self: &Arc<Self>,
        hook: &Arc<Webhook>,
        alert: &Alert,
        cursor: &mut Cursor,
    ) -> bool {
        let text = |field: &str| {
            alert
                .event
                .as_ref()
                .and_then(|e| e.get(field))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let (id, event_type) = (text("id"), text("type"));
        let outgoing = Outgoing {
            id: &id,
            event_type: &event_type,
            body: &alert.payload,
        };
        let metrics = self.metrics.clone();
        let mut count = |outcome: &str| {
            metrics
                .webhook_attempts
                .with_label_values(&[&hook.id, outcome])
                .inc()
        };
        let delivery = tokio::select! {
            delivery = deliver(&self.client, hook, outgoing, &self.policy, &mut count) => delivery,
            _ = self.stopped() => return false,
        };
        match delivery.error.as_deref() {
            Some(error) if error.starts_with("refused") => {
                tracing::warn!(webhook = %hook.id, url = %hook.url, event = %delivery.event_id, %error, "webhook delivery refused: its target is not an address deliveries may reach; not retried")
            }
            Some(error) if delivery.status == "failed" => {
                tracing::warn!(webhook = %hook.id, event = %delivery.event_id, %error, "webhook delivery failed after every attempt")
            }
            _ => {}
        }
        {
            let mut deliveries = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
            let kept = deliveries.entry(hook.id.clone()).or_default();
            kept.push_back(delivery);
            if kept.len() > DELIVERIES_KEPT {
                kept.pop_front();
            }
        }
        cursor.insert(alert.partition, alert.offset + 1);
        true
    }
}
