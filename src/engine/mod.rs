//! The engine: timely workers that read the sources in epochs, run the
//! dataflows, and publish the views per completed epoch.
//!
//! Data enters in [`worker`]'s read loop (partition `i` of the flat list of
//! all source partitions goes to worker `i % workers`), is decoded at the
//! edge (a bad message is counted, logged with its position and skipped),
//! flows through `stockflow-dataflows`, and leaves through the publisher in
//! [`publish`]: worker 0 collects each completed epoch and a publisher thread
//! applies it and swaps snapshots into the [`Store`].

mod publish;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::source::{Appender, DeadLetter, PartitionReader, Record, Source, SourceError};
use crate::store::Store;
use anyhow::Context;
use differential_dataflow::input::InputSession;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflows::alerts::{AlertKind, AlertState, Restored, Thresholds};
use stockflow_dataflows::kpis::KpiSpec;
use stockflow_dataflows::model::cqrs::decode_cqrs;
use stockflow_dataflows::model::tradex::{decode_tradex, decode_tradex_command, is_command_topic};
use stockflow_dataflows::model::{
    decode_command, decode_event, Command, DecodeError, Epoch, Event, Name, RecordContext, StockKey,
};
use timely::dataflow::operators::probe::Handle;

/// How the bytes of a topic's messages are read (see docs/formats.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// stockflow's own JSON events (docs/formats.md, `stockflow`).
    #[default]
    Stockflow,
    /// The Latam Tradex topics (`order.created`, `order.updated`, `stock.updated`, `user.registered`).
    Tradex,
    /// The `inventory.items` / `inventory.stock` topics of the command/query/listener design.
    InventoryCqrs,
}

impl Format {
    /// Every format, in the order the docs list them.
    pub const ALL: [Format; 3] = [Format::Stockflow, Format::Tradex, Format::InventoryCqrs];

    /// Parses a format name as written in `--source TOPIC=FORMAT` or the config file.
    pub fn parse(name: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| format!("format `{name}` is not supported (supported: stockflow, tradex, inventory-cqrs)"))
    }

    /// The name [`Format::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Format::Stockflow => "stockflow",
            Format::Tradex => "tradex",
            Format::InventoryCqrs => "inventory-cqrs",
        }
    }

    /// Decodes one message of `topic`/`partition` into the events it means (zero or more).
    pub fn decode(
        self,
        topic: &str,
        partition: u32,
        record: &Record,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let ctx = RecordContext {
            offset: record.offset,
            log_time: Some(record.timestamp_ms),
        };
        match self {
            Format::Stockflow => out.push(decode_event(&record.payload, ctx)?),
            Format::Tradex => out.extend(decode_tradex(topic, partition, &record.payload, ctx)?),
            Format::InventoryCqrs => out.extend(decode_cqrs(topic, &record.payload, ctx)?),
        }
        Ok(())
    }
}

/// Where reading a topic begins when the engine starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// The first message still in the log: the views cover the whole topic.
    #[default]
    Earliest,
    /// The end of the log at start-up: the views cover only what arrives after.
    Latest,
    /// The offsets last committed under the Kafka group id (where a previous
    /// run's published views had got to); `earliest` where none is stored.
    Stored,
}

impl Start {
    /// Parses `earliest`, `latest` or `stored`.
    pub fn parse(name: &str) -> Result<Start, String> {
        match name {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            "stored" => Ok(Start::Stored),
            other => Err(format!(
                "start `{other}` is not one of earliest, latest, stored"
            )),
        }
    }
}

/// A topic to read and how to read it.
#[derive(Clone)]
pub struct SourceSpec {
    /// The topic.
    pub source: Arc<dyn Source>,
    /// Its message format.
    pub format: Format,
    /// Where to begin.
    pub start: Start,
}

/// How the engine cuts input into epochs and spreads it over threads.
#[derive(Clone)]
pub struct EngineConfig {
    /// Timely worker threads.
    pub workers: usize,
    /// An epoch closes after this long...
    pub epoch: Duration,
    /// ...or after this many messages read by one worker, whichever is first.
    pub epoch_max_events: usize,
    /// Topics to read, each from its [`Start`].
    pub sources: Vec<SourceSpec>,
    /// Writes everything the engine produces: the decider's outcomes, alert
    /// transitions and dead letters (one producer; `None`: writes nothing).
    pub appender: Option<Arc<dyn Appender>>,
    /// Undecodable messages go to `<topic>.dlq` through `appender`; false:
    /// counted and skipped only.
    pub dead_letters: bool,
    /// Most events read but not yet published, over all workers: past it the
    /// sources stop reading until the publisher (and the outputs it waits
    /// for) catch up, so a slow or stuck output holds memory flat.
    pub max_in_flight: usize,
    /// The write path, when commands are taken.
    pub commands: Option<CommandPath>,
    /// Low-stock thresholds and hysteresis.
    pub thresholds: Thresholds,
    /// Where alert transitions are written, when they are.
    pub alerts: Option<AlertsPath>,
    /// The KPIs (built-in and custom) and their retention; `None`: no KPIs.
    pub kpis: Option<KpiConfig>,
    /// A checkpoint to resume from: its events are the first epoch, its
    /// alert states the alerts', and its event sources resume at its offsets.
    pub restore: Option<Arc<crate::checkpoint::Loaded>>,
    /// What to do when a source no longer holds what `restore` resumes from.
    pub on_gap: crate::checkpoint::GapPolicy,
}

/// What the `kpis` dataflow computes and how long its buckets live.
#[derive(Clone)]
pub struct KpiConfig {
    /// Custom KPIs from the config file.
    pub specs: Arc<[KpiSpec]>,
    /// Buckets that ended this long before the newest hour of event time are dropped.
    pub retention: Duration,
}

impl Default for KpiConfig {
    /// The built-in KPIs, kept 90 days.
    fn default() -> Self {
        KpiConfig {
            specs: Arc::from(Vec::new()),
            retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// The alerts topic: read at start (which transitions it holds) and
/// appended to through the engine's appender.
#[derive(Clone)]
pub struct AlertsPath {
    /// The alerts topic, to read.
    pub source: Arc<dyn Source>,
}

/// The fields of an alert event (`rows::AlertEvent`) that name its transition.
#[derive(serde::Deserialize)]
struct WrittenAlert {
    tenant: Name,
    sku: Name,
    location: Name,
    kind: AlertKind,
    transition: u64,
}

/// [`written_alerts`], retried with backoff while the topic cannot be read
/// (a topic just created may not be readable at once), saying so in `/ready`.
fn read_written_alerts(
    source: &dyn Source,
    store: &Store,
    shutdown: &Shutdown,
) -> anyhow::Result<HashMap<StockKey, [u64; 2]>> {
    let mut failures = 0u32;
    loop {
        match written_alerts(source) {
            Ok(written) => {
                store.set_waiting(None);
                return Ok(written);
            }
            Err(error) if failures < 30 && !shutdown.is_triggered() => {
                failures += 1;
                let reason = format!("reading the alerts topic {}: {error:#}", source.topic());
                tracing::warn!(retry_in_ms = 500, "{reason}");
                store.set_waiting(Some(reason));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Reads the alerts topic to its end: the highest transition it holds per
/// `(stock row, kind)`. Messages that are not alert events are skipped.
///
/// The end is where reads stop returning messages after the reported end
/// offset (Tansu under-reports high watermarks), for at most a minute.
fn written_alerts(source: &dyn Source) -> anyhow::Result<HashMap<StockKey, [u64; 2]>> {
    let mut written = HashMap::new();
    let mut readers = Vec::new();
    for partition in 0..source.partitions() {
        let end = source
            .end_offset(partition)
            .with_context(|| format!("reading the end of {}/{partition}", source.topic()))?;
        readers.push((source.reader(partition, 0)?, end));
    }
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut last_error: Option<String> = None;
    let mut records = Vec::new();
    loop {
        let mut read = 0;
        for (reader, _) in readers.iter_mut() {
            records.clear();
            // librdkafka reports connection trouble as read errors and recovers by
            // itself: poll again until the deadline below.
            match reader.read(READ_CHUNK, &mut records) {
                Ok(n) => read += n,
                Err(error) => {
                    tracing::debug!(%error, topic = source.topic(), partition = reader.partition(), "reading the alerts topic; retrying");
                    last_error = Some(error.to_string());
                }
            }
            for record in &records {
                let Ok(event) = serde_json::from_slice::<WrittenAlert>(&record.payload) else {
                    continue;
                };
                let slot: &mut [u64; 2] = written
                    .entry(StockKey {
                        tenant: event.tenant,
                        sku: event.sku,
                        location: event.location,
                    })
                    .or_default();
                slot[event.kind as usize] = slot[event.kind as usize].max(event.transition);
            }
        }
        let now = Instant::now();
        if read > 0 {
            last_read = now;
            continue;
        }
        let at_end = readers
            .iter()
            .all(|(reader, end)| reader.position() >= *end);
        if at_end && now.duration_since(last_read) > Duration::from_millis(200) {
            break;
        }
        anyhow::ensure!(
            now.duration_since(started) < Duration::from_secs(60),
            "reading the alerts topic {} to its end took over a minute (last error: {})",
            source.topic(),
            last_error.as_deref().unwrap_or("none")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::info!(
        topic = source.topic(),
        alerts = written.len(),
        "alerts already written"
    );
    Ok(written)
}

/// The write path: commands are read from `commands` (always from the
/// earliest offset: commands already decided are recognised in the event log
/// and not decided again) and their outcomes appended to `events_topic`
/// through the engine's appender.
#[derive(Clone)]
pub struct CommandPath {
    /// The commands topic (`inventory.commands`).
    pub commands: Arc<dyn Source>,
    /// Where outcomes go (`inventory.events`).
    pub events_topic: String,
}

/// What a source partition carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// Events in a format.
    Events(Format),
    /// Commands for the decider.
    Commands,
    /// Commands in the Tradex shape (`catalog.commands`, `order.commands`, ...).
    TradexCommands,
}

/// `(source index, partition, next offset)`: how far a partition has been read.
type Progress = (u32, u32, u64);

/// Epochs a worker may run ahead of the dataflow before it waits (backpressure).
const MAX_EPOCHS_IN_FLIGHT: u64 = 4;
/// How long a worker waits before looking again at sources that just ran dry.
const IDLE_POLL: Duration = Duration::from_millis(1);
/// Messages read from one partition per call.
const READ_CHUNK: usize = 4096;

/// A running engine; join it after triggering shutdown.
pub struct EngineHandle {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl EngineHandle {
    /// Waits for the workers to finish (after shutdown was triggered).
    pub fn join(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("engine thread panicked"))?
    }
}

/// Starts the workers on their own threads and returns at once.
pub fn start(
    config: EngineConfig,
    store: Arc<Store>,
    metrics: Metrics,
    shutdown: Shutdown,
) -> anyhow::Result<EngineHandle> {
    anyhow::ensure!(config.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        config.appender.is_some()
            || (config.alerts.is_none() && config.commands.is_none() && !config.dead_letters),
        "outcomes, alert transitions and dead letters need an appender"
    );
    // What "caught up" means for /ready: the ends of the partitions now.
    // And where each partition begins (`starts[source][partition]`).
    let mut targets: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    let mut starts: Vec<Vec<u64>> = Vec::new();
    // Every topic read: event sources, then the commands topic.
    let mut inputs: Vec<(Arc<dyn Source>, Input, Start)> = config
        .sources
        .iter()
        .map(|s| {
            let input = match s.format {
                Format::Tradex if is_command_topic(s.source.topic()) => Input::TradexCommands,
                format => Input::Events(format),
            };
            (s.source.clone(), input, s.start)
        })
        .collect();
    if let Some(path) = &config.commands {
        inputs.push((path.commands.clone(), Input::Commands, Start::Earliest));
    }
    // Taken out of the config, which the workers keep: the events are handed
    // to the workers and freed once in the dataflow.
    let mut config = config;
    let restore = check_gaps(config.restore.take(), &inputs, config.on_gap, &metrics)?;
    for (source, input, start) in &inputs {
        let spec = SourceSpec {
            source: source.clone(),
            format: Format::Stockflow,
            start: *start,
        };
        let topic = spec.source.topic();
        let mut source_starts = Vec::new();
        for partition in 0..spec.source.partitions() {
            let end = spec
                .source
                .end_offset(partition)
                .with_context(|| format!("reading the end of {topic}/{partition}"))?;
            targets
                .entry(topic.to_owned())
                .or_default()
                .insert(partition, end);
            let resume = match (&restore, input) {
                (Some(loaded), Input::Events(_)) => loaded
                    .manifest
                    .offsets
                    .get(topic)
                    .map(|p| p.get(&partition).copied().unwrap_or(0)),
                _ => None,
            };
            let start = match (resume, spec.start) {
                (Some(resume), _) => resume,
                (None, Start::Earliest) => 0,
                (None, Start::Latest) => end,
                (None, Start::Stored) => {
                    match spec.source.stored_offset(partition).with_context(|| {
                        format!("reading the stored offset of {topic}/{partition}")
                    })? {
                        Some(stored) => stored,
                        None => {
                            tracing::info!(
                                topic,
                                partition,
                                "no stored offset: starting from the earliest"
                            );
                            0
                        }
                    }
                }
            };
            source_starts.push(start);
        }
        tracing::info!(topic, start = ?spec.start, input = ?input, offsets = ?source_starts, "source starts");
        starts.push(source_starts);
    }
    // Commands wait until the events that were in the log at start are in
    // the views (and so in the decider's state): a command already decided
    // before a restart is then recognised, and none is decided on a partial state.
    let mut event_targets = targets.clone();
    for (source, input, _) in &inputs {
        if matches!(input, Input::Commands | Input::TradexCommands) {
            event_targets.remove(source.topic());
        }
    }
    store.set_start_offsets(
        inputs
            .iter()
            .zip(&starts)
            .map(|((source, _, _), starts)| {
                (
                    source.topic().to_owned(),
                    starts
                        .iter()
                        .enumerate()
                        .map(|(p, o)| (p as u32, *o))
                        .collect(),
                )
            })
            .collect(),
        restore.as_ref().map(|loaded| loaded.manifest.id),
    );
    store.set_startup_targets(targets);
    let first_epoch = first_epoch_of_run();
    store.start_run(first_epoch);
    let restore = restore.map(|loaded| Restoring::new(loaded, &config, first_epoch));
    if let Some(restoring) = &restore {
        metrics.restored_events.set(restoring.events as i64);
        tracing::info!(
            checkpoint = restoring.id,
            events = restoring.events,
            alerts = restoring.rows.len(),
            "resuming from a checkpoint"
        );
    }
    let (restore, restored_alerts, restored_alert_rows, restoring) = match restore {
        Some(Restoring {
            id,
            events,
            plan,
            states,
            rows,
        }) => (
            Some(plan),
            Some(states),
            rows,
            Some(format!(
                "restoring checkpoint {id}: {events} events into the views"
            )),
        ),
        None => (None, None, Vec::new(), None),
    };
    let plan = Arc::new(Plan {
        inputs: inputs
            .iter()
            .map(|(source, input, _)| (source.clone(), *input))
            .collect(),
        starts,
        event_targets,
        first_epoch,
        restore,
        restored_alerts,
    });
    let alerts_to = match &config.alerts {
        Some(path) => Some(publish::AlertsOut {
            topic: path.source.topic().to_owned(),
            written: read_written_alerts(path.source.as_ref(), &store, &shutdown)?,
        }),
        None => None,
    };
    let (to_publisher, from_workers) = std::sync::mpsc::channel();
    let (letters_to_publisher, letters) = std::sync::mpsc::channel();
    let publisher = {
        let outputs = publish::Outputs {
            topics: inputs
                .iter()
                .map(|(source, _, _)| source.topic().to_owned())
                .collect(),
            appender: config.appender.clone(),
            letters,
            outcomes_to: config
                .commands
                .as_ref()
                .map(|path| path.events_topic.clone()),
            alerts_to,
            kpis: config.kpis.as_ref().map(|kpis| {
                let retention = i64::try_from(kpis.retention.as_millis()).unwrap_or(i64::MAX);
                stockflow_dataflows::kpis::Table::new(kpis.specs.clone(), retention)
            }),
            restored_alerts: restored_alert_rows,
        };
        let (store, metrics, shutdown) = (store.clone(), metrics.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("stockflow-publish".into())
            .spawn(move || {
                publish::run_publisher(from_workers, outputs, store, metrics, shutdown)
            })?
    };
    {
        let (sources, store, metrics, shutdown) = (
            inputs.iter().map(|(source, _, _)| source.clone()).collect(),
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        std::thread::Builder::new()
            .name("stockflow-commit".into())
            .spawn(move || commit_offsets(sources, &store, &metrics, &shutdown))?;
    }
    if let Some(restoring) = restoring {
        // Until the checkpoint is in the views, /ready says so (the offsets only move once it all is).
        store.set_waiting(Some(restoring));
    }
    let thread = std::thread::Builder::new()
        .name("stockflow-engine".into())
        .spawn(move || {
            let guards = timely::execute(timely::Config::process(config.workers), move |worker| {
                let to_publisher = (to_publisher.clone(), letters_to_publisher.clone());
                if let Err(error) = worker::run(
                    worker,
                    &config,
                    &plan,
                    &store,
                    &metrics,
                    &shutdown,
                    to_publisher,
                ) {
                    tracing::error!(%error, "worker stopped");
                    shutdown.trigger();
                }
            })
            .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?;
            for result in guards.join() {
                result.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
            }
            // The workers (and their senders) are gone: the publisher drains and stops.
            publisher
                .join()
                .map_err(|_| anyhow::anyhow!("publisher thread panicked"))?;
            Ok(())
        })?;
    Ok(EngineHandle { thread })
}

/// The first epoch of a run: the microseconds since 1970 at its start.
/// Epochs keep growing across restarts (a run publishes far fewer than one
/// epoch a microsecond), so an epoch a client kept from an earlier run —
/// a change stream's `from_epoch`, an SSE `Last-Event-ID` — is older than
/// any of this run and refused, never taken for one of this run's. Below
/// 2^53 until the year 2255: exact as a JSON number in a browser too.
pub fn first_epoch_of_run() -> Epoch {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as Epoch)
        .unwrap_or(0);
    micros.max(1)
}

/// Who reads what, decided at start.
struct Plan {
    /// Every topic read, in source-index order.
    inputs: Vec<(Arc<dyn Source>, Input)>,
    /// Where each partition begins: `starts[source][partition]`.
    starts: Vec<Vec<u64>>,
    /// The ends of the event sources at start (commands wait for them).
    event_targets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// The run's first epoch ([`first_epoch_of_run`]).
    first_epoch: Epoch,
    /// The checkpoint resumed from, if any: its events by worker.
    restore: Option<RestorePlan>,
    /// Its alert states, for the `low_stock` operator.
    restored_alerts: Option<Restored<Epoch>>,
}

/// A checkpoint's events on their way into the dataflow.
struct RestorePlan {
    /// How many epochs carry them, from the run's first.
    epochs: Epoch,
    /// Per worker, per epoch: the events that worker inserts (taken once).
    shares: Vec<std::sync::Mutex<Vec<Vec<Event>>>>,
}

/// A checkpoint taken apart for its three destinations: the workers (its
/// events), the `low_stock` operator (the alert states) and the publisher
/// (the alerts view's first rows).
struct Restoring {
    id: u64,
    events: usize,
    plan: RestorePlan,
    states: Restored<Epoch>,
    rows: Vec<stockflow_dataflows::alerts::Alert>,
}

impl Restoring {
    /// The run's first `plan.epochs` epochs, from `first_epoch`, carry the
    /// events, `epoch_max_events` each, spread over the workers.
    fn new(
        loaded: Arc<crate::checkpoint::Loaded>,
        config: &EngineConfig,
        first_epoch: Epoch,
    ) -> Restoring {
        let crate::checkpoint::Loaded {
            manifest,
            events,
            alerts,
        } = Arc::try_unwrap(loaded).unwrap_or_else(|shared| (*shared).clone());
        let count = events.len();
        let chunk = config.epoch_max_events.max(1);
        let epochs = count.div_ceil(chunk).max(1) as Epoch;
        let mut shares: Vec<Vec<Vec<Event>>> = (0..config.workers)
            .map(|_| (0..epochs).map(|_| Vec::new()).collect())
            .collect();
        for (n, event) in events.into_iter().enumerate() {
            shares[n % config.workers][n / chunk].push(event);
        }
        let mut states: HashMap<StockKey, [AlertState; 2]> = HashMap::new();
        for alert in &alerts {
            states.entry(alert.key.clone()).or_default()[alert.kind as usize] =
                AlertState::after(alert);
        }
        Restoring {
            id: manifest.id,
            events: count,
            plan: RestorePlan {
                epochs,
                shares: shares.into_iter().map(std::sync::Mutex::new).collect(),
            },
            states: Restored {
                epoch: first_epoch + epochs - 1,
                states: Arc::new(states),
            },
            rows: alerts,
        }
    }
}

/// Checks that the sources still hold what `restore` resumes from: a
/// partition whose first message is past the checkpoint's offset (retention
/// deleted the rest) or that is empty while the checkpoint resumes past 0
/// (the topic was recreated) is a gap, handled by `policy`. Returns the
/// checkpoint to resume from (`None` when the policy says to replay); under
/// `accept`, a partition with deleted messages resumes at its first one held.
fn check_gaps(
    restore: Option<Arc<crate::checkpoint::Loaded>>,
    inputs: &[(Arc<dyn Source>, Input, Start)],
    policy: crate::checkpoint::GapPolicy,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<crate::checkpoint::Loaded>>> {
    use crate::checkpoint::GapPolicy;
    let Some(mut loaded) = restore else {
        return Ok(None);
    };
    let mut gaps = Vec::new();
    let mut missing = 0u64;
    // Where each partition resumes under `accept`: its first message still held.
    let mut held: Vec<(String, u32, u64)> = Vec::new();
    for (source, input, _) in inputs {
        let Input::Events(_) = input else { continue };
        let Some(offsets) = loaded.manifest.offsets.get(source.topic()) else {
            continue;
        };
        for partition in 0..source.partitions() {
            let resume = offsets.get(&partition).copied().unwrap_or(0);
            let first = source.start_offset(partition).with_context(|| {
                format!("reading the first offset of {}/{partition}", source.topic())
            })?;
            let end = source
                .end_offset(partition)
                .with_context(|| format!("reading the end of {}/{partition}", source.topic()))?;
            if resume < first {
                gaps.push(format!("{}/{partition} resumes at offset {resume} but its first message is {first} ({} deleted)", source.topic(), first - resume));
                missing += first - resume;
                held.push((source.topic().to_owned(), partition, first));
            } else if end == 0 && resume > 0 {
                gaps.push(format!("{}/{partition} resumes at offset {resume} but holds no message (was the topic recreated?)", source.topic()));
            }
        }
    }
    if gaps.is_empty() {
        return Ok(Some(loaded));
    }
    let id = loaded.manifest.id;
    let listed = gaps.join("; ");
    match policy {
        GapPolicy::Fail => anyhow::bail!(
            "the sources no longer hold what checkpoint {id} resumes from: {listed}. Choose: `--on-checkpoint-gap replay` (ignore the checkpoint, rebuild the views from the messages still held) or `--on-checkpoint-gap accept` (resume from the checkpoint and skip the missing messages)"
        ),
        GapPolicy::Replay => {
            tracing::warn!(checkpoint = id, "{listed}: ignoring the checkpoint, rebuilding from the messages still held (--on-checkpoint-gap replay)");
            Ok(None)
        }
        GapPolicy::Accept => {
            let offsets = &mut Arc::make_mut(&mut loaded).manifest.offsets;
            for (topic, partition, first) in held {
                offsets.entry(topic).or_default().insert(partition, first);
            }
            metrics.checkpoint_gap.set(missing as i64);
            tracing::warn!(checkpoint = id, missing, "{listed}: resuming from the checkpoint without them (--on-checkpoint-gap accept)");
            Ok(Some(loaded))
        }
    }
}

/// How often the published offsets are committed for lag monitoring.
const COMMIT_PERIOD: Duration = Duration::from_secs(1);

/// The committer thread: every [`COMMIT_PERIOD`], and once more at shutdown,
/// hands each source the offsets the published views reflect, if they moved
/// ([`Source::commit`]). A failure is counted and logged, then retried next
/// period: commits only serve monitoring, so they never hold anything up.
fn commit_offsets(
    sources: Vec<Arc<dyn Source>>,
    store: &Store,
    metrics: &Metrics,
    shutdown: &Shutdown,
) {
    let mut committed: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    loop {
        let last = shutdown.is_triggered();
        if !last {
            std::thread::sleep(COMMIT_PERIOD);
        }
        let snapshot = store.snapshot();
        for source in &sources {
            let Some(reached) = snapshot.as_of.offsets.get(source.topic()) else {
                continue;
            };
            if committed.get(source.topic()) == Some(reached) {
                continue;
            }
            let offsets: Vec<(u32, u64)> = reached.iter().map(|(p, o)| (*p, *o)).collect();
            match source.commit(&offsets) {
                Ok(()) => {
                    committed.insert(source.topic().to_owned(), reached.clone());
                }
                Err(error) => {
                    metrics
                        .commit_failures
                        .with_label_values(&[source.topic()])
                        .inc();
                    tracing::debug!(%error, "offset commit failed; retrying next period");
                }
            }
        }
        if last {
            return;
        }
    }
}

/// The per-worker read loop.
mod worker {
    use super::*;
    use timely::worker::Worker;

    /// The dataflow's inputs: events, commands, read progress.
    type Inputs = (
        InputSession<Epoch, Event, isize>,
        InputSession<Epoch, Command, isize>,
        InputSession<Epoch, Progress, isize>,
    );

    /// One partition this worker reads.
    struct Assigned {
        source: u32,
        topic: String,
        input: Input,
        reader: Box<dyn PartitionReader>,
        /// Position last reported to the publisher.
        reported: Option<u64>,
        /// When to retry after a read error.
        retry_at: Option<Instant>,
        failures: u32,
    }

    /// What closing an epoch needs besides the inputs.
    struct Clock<'a> {
        index: usize,
        closed_at: &'a RefCell<BTreeMap<Epoch, Instant>>,
        probe: &'a Handle<Epoch>,
        shutdown: &'a Shutdown,
    }

    impl Clock<'_> {
        /// Closes `epoch` (its progress already inserted): notes when, moves
        /// every input to the next epoch, and waits while more than
        /// [`MAX_EPOCHS_IN_FLIGHT`] epochs are not through the dataflow.
        fn close(
            &self,
            worker: &mut Worker,
            events_in: &mut InputSession<Epoch, Event, isize>,
            commands_in: &mut InputSession<Epoch, Command, isize>,
            progress_in: &mut InputSession<Epoch, Progress, isize>,
            epoch: &mut Epoch,
        ) {
            if self.index == 0 {
                self.closed_at.borrow_mut().insert(*epoch, Instant::now());
            }
            *epoch += 1;
            events_in.advance_to(*epoch);
            commands_in.advance_to(*epoch);
            progress_in.advance_to(*epoch);
            events_in.flush();
            commands_in.flush();
            progress_in.flush();
            worker.step();
            while self
                .probe
                .less_than(&epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT))
                && !self.shutdown.is_triggered()
            {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
    }

    pub(super) fn run(
        worker: &mut Worker,
        config: &EngineConfig,
        plan: &Plan,
        store: &Arc<Store>,
        metrics: &Metrics,
        shutdown: &Shutdown,
        (to_publisher, letters_to_publisher): (
            std::sync::mpsc::Sender<publish::Completed>,
            std::sync::mpsc::Sender<publish::Letters>,
        ),
    ) -> Result<(), SourceError> {
        let index = worker.index();
        let peers = worker.peers();
        let closed_at: Rc<RefCell<BTreeMap<Epoch, Instant>>> = Rc::default();
        let probe = Handle::new();

        let (mut events_in, mut commands_in, mut progress_in): Inputs = worker
            .dataflow::<Epoch, _, _>(|scope| {
                let (events_in, events) =
                    differential_dataflow::input::Input::new_collection(&scope);
                let (commands_in, commands) =
                    differential_dataflow::input::Input::new_collection(&scope);
                let (progress_in, progress) =
                    differential_dataflow::input::Input::new_collection(&scope);
                let publisher = publish::Publisher::new(index, closed_at.clone(), to_publisher);
                publish::views(
                    events,
                    commands,
                    config,
                    plan.restored_alerts.clone(),
                    progress,
                    publisher,
                    &probe,
                );
                (events_in, commands_in, progress_in)
            });

        let mut assigned = Vec::new();
        let mut flat = 0usize;
        for (source, (topic, input)) in plan.inputs.iter().enumerate() {
            for partition in 0..topic.partitions() {
                if flat % peers == index {
                    assigned.push(Assigned {
                        source: source as u32,
                        topic: topic.topic().to_owned(),
                        input: *input,
                        reader: topic.reader(partition, plan.starts[source][partition as usize])?,
                        reported: None,
                        retry_at: None,
                        failures: 0,
                    });
                }
                flat += 1;
            }
        }
        tracing::info!(
            worker = index,
            partitions = assigned.len(),
            "worker started"
        );

        let clock = Clock {
            index,
            closed_at: &closed_at,
            probe: &probe,
            shutdown,
        };
        // Epoch 0 stays empty: an `as_of.epoch` of 0 means "nothing published yet".
        let mut epoch: Epoch = plan.first_epoch;
        events_in.advance_to(epoch);
        commands_in.advance_to(epoch);
        progress_in.advance_to(epoch);
        if let Some(restore) = &plan.restore {
            // The checkpoint's events, alone in their epochs (the `low_stock`
            // operator restores its states there), spread over the workers,
            // in epochs of `epoch_max_events` as the log would be read.
            let share = std::mem::take(
                &mut *restore.shares[index]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for (n, events) in share.into_iter().enumerate() {
                for event in events {
                    events_in.insert(event);
                }
                if n as Epoch + 1 == restore.epochs {
                    // The views reflect the checkpoint's offsets once all of it is in.
                    for part in assigned.iter_mut() {
                        let position = part.reader.position();
                        progress_in.insert((part.source, part.reader.partition(), position));
                        part.reported = Some(position);
                    }
                }
                clock.close(
                    worker,
                    &mut events_in,
                    &mut commands_in,
                    &mut progress_in,
                    &mut epoch,
                );
            }
            debug_assert_eq!(epoch, plan.first_epoch + restore.epochs);
            if index == 0 {
                while probe.less_than(&epoch) && !shutdown.is_triggered() {
                    worker.step_or_park(Some(Duration::from_millis(1)));
                }
                store.set_waiting(None);
            }
        }
        let mut records = Vec::with_capacity(READ_CHUNK);
        let mut events = Vec::new();
        let mut commands_open = false;
        // This epoch's dead letters: sent as they come, acknowledged before
        // the publisher publishes the epoch (it waits for them).
        let new_letters =
            || publish::Letters::new(config.appender.clone().filter(|_| config.dead_letters));
        let mut letters = new_letters();
        // Messages read per closed epoch not yet published, oldest first, and their sum.
        let budget = (config.max_in_flight / peers).max(1);
        let mut in_flight: std::collections::VecDeque<(Epoch, usize)> =
            std::collections::VecDeque::new();
        let mut in_flight_sum = 0usize;
        while !shutdown.is_triggered() {
            let deadline = Instant::now() + config.epoch;
            let mut read_in_epoch = 0usize;
            loop {
                let mut read_now = 0usize;
                if !commands_open {
                    commands_open = store.snapshot().as_of.covers(&plan.event_targets);
                }
                let published = store.published_epoch();
                while let Some(&(_, count)) =
                    in_flight.front().filter(|(closed, _)| *closed <= published)
                {
                    in_flight.pop_front();
                    in_flight_sum -= count;
                    metrics.events_in_flight.sub(count as i64);
                }
                for part in assigned.iter_mut() {
                    // Room left under the bound on events in flight (0: wait for the publisher).
                    let room = budget.saturating_sub(in_flight_sum + read_in_epoch + read_now);
                    let is_commands = matches!(part.input, Input::Commands | Input::TradexCommands);
                    if room == 0
                        || part.retry_at.is_some_and(|at| Instant::now() < at)
                        || (is_commands && !commands_open)
                    {
                        continue;
                    }
                    records.clear();
                    let budget = READ_CHUNK
                        .min(
                            config
                                .epoch_max_events
                                .saturating_sub(read_in_epoch + read_now)
                                .max(1),
                        )
                        .min(room);
                    match part.reader.read(budget, &mut records) {
                        Ok(_) => {
                            if part.failures > 0 {
                                tracing::info!(topic = %part.topic, partition = part.reader.partition(), "source reads again");
                                store.set_source_failure(
                                    &part.topic,
                                    part.reader.partition(),
                                    None,
                                );
                            }
                            part.failures = 0;
                            part.retry_at = None;
                        }
                        Err(error) => {
                            store.set_source_failure(
                                &part.topic,
                                part.reader.partition(),
                                Some(error.to_string()),
                            );
                            part.failures += 1;
                            // At most 1.6 s: a reader must notice a returning broker soon.
                            let backoff = Duration::from_millis(100u64 << part.failures.min(4));
                            tracing::warn!(%error, topic = %part.topic, partition = part.reader.partition(), retry_in_ms = backoff.as_millis() as u64, "source read failed");
                            metrics
                                .source_errors
                                .with_label_values(&[&part.topic])
                                .inc();
                            part.retry_at = Some(Instant::now() + backoff);
                            continue;
                        }
                    }
                    let mut decoded = 0u64;
                    let partition = part.reader.partition();
                    for record in records.drain(..) {
                        let result = match part.input {
                            Input::Events(format) => {
                                format.decode(&part.topic, partition, &record, &mut events)
                            }
                            Input::Commands => decode_command(
                                &record.payload,
                                RecordContext {
                                    offset: record.offset,
                                    log_time: Some(record.timestamp_ms),
                                },
                            )
                            .map(|command| commands_in.insert(command)),
                            Input::TradexCommands => decode_tradex_command(
                                &part.topic,
                                partition,
                                &record.payload,
                                RecordContext {
                                    offset: record.offset,
                                    log_time: Some(record.timestamp_ms),
                                },
                            )
                            .map(|commands| {
                                commands
                                    .into_iter()
                                    .for_each(|command| commands_in.insert(command))
                            }),
                        };
                        match result {
                            Ok(()) => {
                                for event in events.drain(..) {
                                    events_in.insert(event);
                                    decoded += 1;
                                }
                            }
                            Err(error) => {
                                tracing::debug!(topic = %part.topic, partition, offset = record.offset, %error, "message does not decode: to the dead-letter topic");
                                metrics
                                    .decode_errors
                                    .with_label_values(&[&part.topic, error.class()])
                                    .inc();
                                let reason = error.to_string();
                                let letter = DeadLetter {
                                    topic: &part.topic,
                                    partition,
                                    record: &record,
                                    reason: &reason,
                                    class: error.class(),
                                };
                                letters.push(&letter);
                            }
                        }
                        read_now += 1;
                    }
                    if decoded > 0 {
                        metrics
                            .events_in
                            .with_label_values(&[&part.topic])
                            .inc_by(decoded);
                    }
                    letters.send();
                }
                read_in_epoch += read_now;
                let now = Instant::now();
                if read_in_epoch >= config.epoch_max_events
                    || now >= deadline
                    || shutdown.is_triggered()
                {
                    break;
                }
                if read_now == 0 {
                    // Nothing to read right now, and sources do not wake us: while data
                    // flows (this epoch had some) look again soon; when idle, at the epoch's end.
                    let wait = if read_in_epoch > 0 {
                        (deadline - now).min(IDLE_POLL)
                    } else {
                        deadline - now
                    };
                    worker.step_or_park(Some(wait));
                } else {
                    worker.step();
                }
            }

            // Close the epoch: record how far each partition got, move time on.
            for part in assigned.iter_mut() {
                let position = part.reader.position();
                if part.reported != Some(position) {
                    progress_in.insert((part.source, part.reader.partition(), position));
                    part.reported = Some(position);
                }
                let partition = part.reader.partition().to_string();
                let labels = [part.topic.as_str(), partition.as_str()];
                metrics
                    .source_position
                    .with_label_values(&labels)
                    .set(position as i64);
                if let Ok(end) = part.reader.end_offset() {
                    metrics
                        .source_end
                        .with_label_values(&labels)
                        .set(end as i64);
                    metrics
                        .source_lag
                        .with_label_values(&labels)
                        .set(end.saturating_sub(position) as i64);
                }
            }
            if !letters.is_empty() {
                // Before the epoch closes: the publisher has them when it can publish it.
                let _ = letters_to_publisher
                    .send(std::mem::replace(&mut letters, new_letters()).for_epoch(epoch));
            }
            if read_in_epoch > 0 {
                in_flight.push_back((epoch, read_in_epoch));
                in_flight_sum += read_in_epoch;
                metrics.events_in_flight.add(read_in_epoch as i64);
            }
            clock.close(
                worker,
                &mut events_in,
                &mut commands_in,
                &mut progress_in,
                &mut epoch,
            );
        }
        metrics.events_in_flight.sub(in_flight_sum as i64);
        drop(events_in);
        drop(commands_in);
        drop(progress_in);
        while worker.step_or_park(Some(Duration::from_millis(10))) {}
        tracing::info!(worker = index, epoch, "worker stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{FileRef, GapPolicy, Loaded, Manifest};

    /// A topic whose partitions begin and end where the test says (retention at work).
    struct Retained {
        first: Vec<u64>,
        end: Vec<u64>,
    }

    impl Source for Retained {
        fn topic(&self) -> &str {
            "t"
        }
        fn partitions(&self) -> u32 {
            self.first.len() as u32
        }
        fn reader(
            &self,
            _partition: u32,
            _from: u64,
        ) -> Result<Box<dyn PartitionReader>, SourceError> {
            Err(SourceError::Invalid("not read in this test".into()))
        }
        fn end_offset(&self, partition: u32) -> Result<u64, SourceError> {
            Ok(self.end[partition as usize])
        }
        fn start_offset(&self, partition: u32) -> Result<u64, SourceError> {
            Ok(self.first[partition as usize])
        }
    }

    fn checkpoint(offsets: [u64; 2]) -> Arc<Loaded> {
        let file = FileRef {
            file: String::new(),
            records: 0,
            bytes: 0,
            crc32: 0,
        };
        let manifest = Manifest {
            format: 1,
            id: 7,
            created_ms: 0,
            epoch: 1,
            sources: vec!["t=stockflow".into()],
            offsets: BTreeMap::from([(
                "t".to_owned(),
                BTreeMap::from([(0, offsets[0]), (1, offsets[1])]),
            )]),
            segments: Vec::new(),
            alerts: file,
        };
        Arc::new(Loaded {
            manifest,
            events: Vec::new(),
            alerts: Vec::new(),
        })
    }

    fn inputs(first: [u64; 2], end: [u64; 2]) -> Vec<(Arc<dyn Source>, Input, Start)> {
        vec![(
            Arc::new(Retained {
                first: first.to_vec(),
                end: end.to_vec(),
            }),
            Input::Events(Format::Stockflow),
            Start::Earliest,
        )]
    }

    #[test]
    fn a_checkpoint_the_source_still_holds_is_resumed() {
        let metrics = Metrics::new();
        let kept = check_gaps(
            Some(checkpoint([10, 20])),
            &inputs([0, 20], [100, 100]),
            GapPolicy::Fail,
            &metrics,
        )
        .unwrap();
        assert_eq!(kept.unwrap().manifest.id, 7);
        assert_eq!(metrics.checkpoint_gap.get(), 0);
    }

    #[test]
    fn retention_gaps_fail_or_replay_or_are_accepted_and_counted() {
        let metrics = Metrics::new();
        let gap = inputs([0, 50], [100, 100]);
        let error = check_gaps(Some(checkpoint([10, 20])), &gap, GapPolicy::Fail, &metrics)
            .unwrap_err()
            .to_string();
        assert!(error.contains("checkpoint 7"), "{error}");
        assert!(
            error.contains("t/1 resumes at offset 20 but its first message is 50 (30 deleted)"),
            "{error}"
        );
        assert!(
            error.contains("--on-checkpoint-gap replay")
                && error.contains("--on-checkpoint-gap accept"),
            "{error}"
        );
        assert!(
            check_gaps(
                Some(checkpoint([10, 20])),
                &gap,
                GapPolicy::Replay,
                &metrics
            )
            .unwrap()
            .is_none(),
            "replay ignores the checkpoint"
        );
        assert_eq!(metrics.checkpoint_gap.get(), 0);
        assert!(check_gaps(
            Some(checkpoint([10, 20])),
            &gap,
            GapPolicy::Accept,
            &metrics
        )
        .unwrap()
        .is_some());
        assert_eq!(
            metrics.checkpoint_gap.get(),
            30,
            "the missing messages are counted"
        );
    }

    #[test]
    fn an_emptied_topic_is_a_gap() {
        let metrics = Metrics::new();
        let error = check_gaps(
            Some(checkpoint([10, 0])),
            &inputs([0, 0], [0, 0]),
            GapPolicy::Fail,
            &metrics,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(
                "t/0 resumes at offset 10 but holds no message (was the topic recreated?)"
            ),
            "{error}"
        );
    }
}
