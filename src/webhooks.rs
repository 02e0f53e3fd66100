//! Webhook subscribers: each registered webhook reads the alerts topic on a
//! thread of its own, from its own cursor, and delivers the alert events it
//! wants, in topic order (so in order per sku: alert events are keyed
//! `tenant/sku`), with `stockflow_sinks::webhooks::deliver`.
//!
//! The cursor (next offset per partition) is persisted in the data dir
//! after every event handled, so delivery is at-least-once across restarts:
//! an event delivered just before a crash is delivered again after it, with
//! the same `X-Stockflow-Delivery` id. A new webhook starts at the end of
//! the alerts topic: it receives the alerts that happen after it was
//! registered.

use crate::metrics::Metrics;
use crate::source::{PartitionReader, Source};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use stockflow_sinks::webhooks::{deliver, write_atomically, Delivery, Outgoing, Policy, Registry, Webhook};

/// Deliveries remembered per webhook for `GET /v1/webhooks/{id}/deliveries`.
const DELIVERIES_KEPT: usize = 200;
/// How long an idle webhook thread waits before reading again.
const IDLE: Duration = Duration::from_millis(20);

/// A webhook's thread and the flag that stops it.
type Running = (Arc<AtomicBool>, std::thread::JoinHandle<()>);

/// The webhooks of one server.
pub struct Webhooks {
    registry: Registry,
    dir: PathBuf,
    policy: Policy,
    metrics: Metrics,
    /// The alerts topic, once the engine has opened it.
    alerts: OnceLock<Arc<dyn Source>>,
    deliveries: Mutex<HashMap<String, VecDeque<Delivery>>>,
    running: Mutex<HashMap<String, Running>>,
    client: stockflow_sinks::webhooks::Client,
}

impl Webhooks {
    /// Opens the registry under `data_dir/webhooks/` and starts a thread per
    /// registered webhook (they wait for [`Webhooks::set_alerts`]).
    pub fn open(data_dir: &std::path::Path, policy: Policy, metrics: Metrics) -> anyhow::Result<Arc<Webhooks>> {
        let dir = data_dir.join("webhooks");
        std::fs::create_dir_all(&dir)?;
        let registry = Registry::open(&dir.join("webhooks.json"))?;
        let client = stockflow_sinks::webhooks::client()?;
        let webhooks = Arc::new(Webhooks {
            registry,
            dir,
            policy,
            metrics,
            alerts: OnceLock::new(),
            deliveries: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            client,
        });
        for hook in webhooks.registry.list() {
            webhooks.spawn(hook);
        }
        Ok(webhooks)
    }

    /// Hands the webhooks the alerts topic (when the engine has opened it).
    pub fn set_alerts(&self, alerts: Arc<dyn Source>) {
        let _ = self.alerts.set(alerts);
    }

    /// Every webhook.
    pub fn list(&self) -> Vec<Webhook> {
        self.registry.list()
    }

    /// One webhook.
    pub fn get(&self, id: &str) -> Option<Webhook> {
        self.registry.get(id)
    }

    /// Registers a webhook (already validated) and starts delivering to it
    /// the alerts that happen from now on.
    pub fn add(self: &Arc<Self>, hook: Webhook) -> anyhow::Result<()> {
        // From the end of the topic as it is now (from its start if the engine has not opened it yet).
        if let Some(alerts) = self.alerts.get() {
            let mut cursor = BTreeMap::new();
            for partition in 0..alerts.partitions() {
                cursor.insert(partition, alerts.end_offset(partition)?);
            }
            self.save_cursor(&hook.id, &cursor)?;
        }
        self.registry.add(hook.clone())?;
        self.spawn(hook);
        Ok(())
    }

    /// Stops and forgets a webhook; `false` if there was none.
    pub fn remove(&self, id: &str) -> anyhow::Result<bool> {
        if !self.registry.remove(id)? {
            return Ok(false);
        }
        if let Some((stop, thread)) = self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
            stop.store(true, Ordering::Relaxed);
            // The thread ends within one attempt's timeout; do not wait for it here.
            drop(thread);
        }
        let _ = std::fs::remove_file(self.cursor_path(id));
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let _ = self.metrics.webhook_lag.remove_label_values(&[id]);
        Ok(true)
    }

    /// The latest deliveries of a webhook, newest last.
    pub fn deliveries(&self, id: &str) -> Vec<Delivery> {
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).get(id).map(|d| d.iter().cloned().collect()).unwrap_or_default()
    }

    /// Stops every webhook thread and waits for them.
    pub fn stop(&self) {
        let running: Vec<_> = self.running.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, (stop, _)) in &running {
            stop.store(true, Ordering::Relaxed);
        }
        for (_, (_, thread)) in running {
            let _ = thread.join();
        }
    }

    fn cursor_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.cursor.json"))
    }

    fn load_cursor(&self, id: &str) -> BTreeMap<u32, u64> {
        std::fs::read(self.cursor_path(id)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    fn save_cursor(&self, id: &str, cursor: &BTreeMap<u32, u64>) -> std::io::Result<()> {
        write_atomically(&self.cursor_path(id), &serde_json::to_vec(cursor).expect("offsets serialize"))
    }

    fn save_cursor_logged(&self, id: &str, cursor: &BTreeMap<u32, u64>) {
        if let Err(error) = self.save_cursor(id, cursor) {
            tracing::warn!(webhook = %id, %error, "saving the webhook cursor failed");
        }
    }

    fn spawn(self: &Arc<Self>, hook: Webhook) {
        let stop = Arc::new(AtomicBool::new(false));
        let (this, flag) = (self.clone(), stop.clone());
        let id = hook.id.clone();
        let thread = std::thread::Builder::new().name(format!("stockflow-webhook-{id}")).spawn(move || this.run(hook, &flag)).expect("spawning a thread");
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (stop, thread));
    }

    /// A webhook's thread: read, filter, deliver, advance the cursor.
    fn run(&self, hook: Webhook, stop: &AtomicBool) {
        let stopping = || stop.load(Ordering::Relaxed);
        let alerts = loop {
            if stopping() {
                return;
            }
            match self.alerts.get() {
                Some(alerts) => break alerts.clone(),
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let mut cursor = self.load_cursor(&hook.id);
        let mut readers: Vec<Box<dyn PartitionReader>> = Vec::new();
        let mut records = Vec::new();
        while !stopping() {
            if readers.is_empty() {
                match (0..alerts.partitions()).map(|p| alerts.reader(p, cursor.get(&p).copied().unwrap_or(0))).collect::<Result<Vec<_>, _>>() {
                    Ok(opened) => readers = opened,
                    Err(error) => {
                        tracing::warn!(webhook = %hook.id, %error, "opening the alerts topic failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let mut read = 0;
            let mut lag = 0u64;
            for reader in readers.iter_mut() {
                records.clear();
                match reader.read(64, &mut records) {
                    Ok(n) => read += n,
                    Err(error) => {
                        tracing::warn!(webhook = %hook.id, %error, "reading the alerts topic failed; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
                // Saved after each delivery (at least once) and once per chunk for the
                // events this webhook skips: not one synced write per skipped event.
                let mut unsaved = false;
                for record in &records {
                    if stopping() {
                        break;
                    }
                    let mut delivered = false;
                    if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&record.payload) {
                        if hook.wants(&event) {
                            delivered = true;
                            let text = |field: &str| event.get(field).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                            let mut count = |outcome: &str| self.metrics.webhook_attempts.with_label_values(&[&hook.id, outcome]).inc();
                            let (id, event_type) = (text("id"), text("type"));
                            let outgoing = Outgoing { id: &id, event_type: &event_type, body: &record.payload };
                            let Some(delivery) = deliver(&self.client, &hook, outgoing, &self.policy, &stopping, &mut count) else {
                                break;
                            };
                            if delivery.status == "failed" {
                                tracing::warn!(webhook = %hook.id, event = %delivery.event_id, error = ?delivery.error, "webhook delivery failed after every attempt");
                            }
                            let mut deliveries = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
                            let kept = deliveries.entry(hook.id.clone()).or_default();
                            kept.push_back(delivery);
                            if kept.len() > DELIVERIES_KEPT {
                                kept.pop_front();
                            }
                        }
                    }
                    cursor.insert(reader.partition(), record.offset + 1);
                    unsaved = !delivered;
                    if delivered {
                        self.save_cursor_logged(&hook.id, &cursor);
                    }
                }
                if unsaved {
                    self.save_cursor_logged(&hook.id, &cursor);
                }
                if stopping() {
                    return;
                }
                if let Ok(end) = reader.end_offset() {
                    lag += end.saturating_sub(reader.position());
                }
            }
            self.metrics.webhook_lag.with_label_values(&[&hook.id]).set(lag as i64);
            if read == 0 {
                std::thread::sleep(IDLE);
            }
        }
    }
}
