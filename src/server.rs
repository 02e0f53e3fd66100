//! Wiring of a `serve` or `demo` run: embedded log, engine, HTTP server and
//! (for `demo`) the generator, sharing one shutdown signal.
//! Long because the start order (data-dir lock, recovery, Kafka wait, engine, sink, HTTP) and the stop order are one sequence, read top to bottom.

use crate::engine::{AlertsPath, CommandPath, EngineConfig};
use crate::http::AppState;
use crate::log::{Log, LogAppender};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::source::SourceSpec;
use crate::source::{kafka, Appender, Source};
use crate::store::Store;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;

/// Topic of inventory events.
pub const INVENTORY_EVENTS: &str = "inventory.events";
/// Topic of order events.
pub const ORDER_EVENTS: &str = "order.events";

/// A started stockflow: listening, reading, publishing.
pub struct Running {
    /// The address the HTTP API actually listens on.
    pub addr: SocketAddr,
    /// The published views.
    pub store: Arc<Store>,
    /// The embedded log.
    pub log: Arc<Log>,
    /// Metrics.
    pub metrics: Metrics,
    /// Triggers an orderly stop.
    pub shutdown: Shutdown,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: tokio::task::JoinHandle<anyhow::Result<Option<crate::engine::EngineHandle>>>,
    /// Alert subscribers.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    demo: Option<std::thread::JoinHandle<()>>,
    /// The ClickHouse sink, once started.
    sink: SinkSlot,
    /// The checkpointer, once started.
    checkpointer: CheckpointSlot,
    /// `<data-dir>/LOCK`, held while this process writes the data dir.
    _lock: Option<std::fs::File>,
}

/// Takes `<dir>/LOCK` (an OS file lock, released by the OS even on `kill -9`):
/// two processes writing one data dir would interleave their log appends and
/// overwrite each other's checkpoints.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))?;
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::Write;
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "the data dir {} is in use by another stockflow process (pid {}, which holds {}); stop it, or give this one another --data-dir",
                dir.display(),
                holder.trim(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Where the sink's handle is kept (it starts with the engine, which may wait for Kafka).
type SinkSlot = Arc<std::sync::Mutex<Option<crate::sink::SinkHandle>>>;

/// The checkpointer's thread and the signal that the engine has stopped.
type CheckpointSlot =
    Arc<std::sync::Mutex<Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>)>>>;

/// The event sources of an engine (Tradex command topics left out): what
/// the sink writes and checkpoints hold.
fn event_sources(config: &EngineConfig) -> Vec<(Arc<dyn Source>, crate::source::Format)> {
    config
        .sources
        .iter()
        .filter(|s| {
            !(s.format == crate::source::Format::Tradex
                && stockflow_dataflows::model::tradex::is_command_topic(s.source.topic()))
        })
        .map(|s| (s.source.clone(), s.format))
        .collect()
}

/// With checkpoints on: loads the newest usable checkpoint of the data dir
/// into `config` (one taken with other sources is not used) and starts the
/// checkpointer (not for `dump`; for `replay` it writes the one checkpoint
/// at the end).
fn recover(
    settings: &Settings,
    config: &mut EngineConfig,
    store: &Arc<Store>,
    metrics: &Metrics,
    slot: &CheckpointSlot,
) -> anyhow::Result<()> {
    let interval = match settings.checkpoints {
        crate::settings::Checkpoints::Off => return Ok(()),
        crate::settings::Checkpoints::Every(interval) => Some(interval),
        crate::settings::Checkpoints::AtShutdown => None,
    };
    // A checkpoint stands for the sources read from their earliest offsets: a
    // source told to begin elsewhere (`latest`, `stored`) begins there at each start.
    if let Some(other) = config
        .sources
        .iter()
        .find(|s| s.start != crate::source::Start::Earliest)
    {
        tracing::info!(topic = other.source.topic(), start = ?other.start, "checkpoints are off: a source does not start from the earliest offset");
        return Ok(());
    }
    let dir = crate::checkpoint::dir_of(&settings.data_dir);
    let sources = event_sources(config);
    let names = crate::checkpoint::source_names(sources.iter().map(|(s, f)| (s.topic(), *f)));
    let started = std::time::Instant::now();
    let (loaded, skipped) = crate::checkpoint::load(&dir);
    let loaded = loaded.filter(|loaded| {
        let same = loaded.manifest.sources == names;
        if !same {
            tracing::warn!(
                checkpoint = loaded.manifest.id,
                taken_with = ?loaded.manifest.sources,
                now = ?names,
                "the newest checkpoint was taken with other sources: not used, the views are rebuilt from the sources"
            );
        }
        same
    });
    if !skipped.is_empty() {
        metrics.checkpoint_failures.inc_by(skipped.len() as u64);
    }
    if let Some(loaded) = &loaded {
        tracing::info!(
            checkpoint = loaded.manifest.id,
            events = loaded.events.len(),
            ms = started.elapsed().as_millis() as u64,
            "checkpoint loaded"
        );
    }
    let manifest = loaded.as_ref().map(|l| l.manifest.clone());
    config.restore = loaded.map(Arc::new);
    // Offline runs write no checkpoint, except a replay: its checkpoint (at
    // the end) is its result.
    if settings.offline && settings.replay.is_none() {
        return Ok(());
    }
    let rules = stockflow_dataflows::compact::Rules {
        specs: settings.kpi_specs.to_vec(),
        kpi_retention_ms: settings.kpi_retention.as_millis() as i64,
        ids: settings.dedup_window_ids,
    };
    let checkpointer = crate::checkpoint::Checkpointer::new(dir, sources, manifest, rules)?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (store, metrics) = (store.clone(), metrics.clone());
    let thread = std::thread::Builder::new()
        .name("stockflow-checkpoint".into())
        .spawn(move || checkpointer.run(store, metrics, interval, done_rx))?;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((thread, done_tx));
    Ok(())
}

/// Starts the ClickHouse sink, when configured, over the engine's event
/// sources (command topics left out) and the alerts topic.
fn start_sink(
    settings: &Settings,
    config: &EngineConfig,
    store: &Arc<Store>,
    metrics: &Metrics,
    slot: &SinkSlot,
) -> anyhow::Result<()> {
    let Some(sink) = &settings.clickhouse else {
        return Ok(());
    };
    let sources = event_sources(config);
    let inputs = crate::sink::SinkInputs {
        sources,
        alerts: config.alerts.as_ref().map(|a| a.source.clone()),
    };
    let handle = crate::sink::start(
        sink.clone(),
        inputs,
        store.clone(),
        metrics.clone(),
        &tokio::runtime::Handle::current(),
    );
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

/// What an engine writes to: one appender for outcomes, alert transitions
/// and dead letters, the command path and the alerts topic.
struct Writers {
    appender: Arc<dyn Appender>,
    commands: CommandPath,
    alerts: AlertsPath,
}

/// The engine's configuration; `writers` is `None` for a run that writes
/// nothing to the topics.
fn engine_config(
    settings: &Settings,
    mut sources: Vec<SourceSpec>,
    writers: Option<Writers>,
) -> anyhow::Result<EngineConfig> {
    // A replay sees its sources through its range.
    if let Some(replay) = &settings.replay {
        for spec in &mut sources {
            spec.source =
                crate::replay::Bounded::wrap(spec.source.clone(), spec.format, &replay.range)
                    .with_context(|| format!("reading the range of {}", spec.source.topic()))?;
        }
    }
    // An offline run (dump, replay) writes nothing to the topics.
    let (appender, commands, alerts) = match writers.filter(|_| !settings.offline) {
        Some(Writers {
            appender,
            commands,
            alerts,
        }) => (Some(appender), Some(commands), Some(alerts)),
        None => (None, None, None),
    };
    let dead_letters = appender.is_some();
    Ok(EngineConfig {
        thresholds: settings.thresholds.clone(),
        alerts,
        kpis: Some(crate::engine::KpiConfig {
            specs: settings.kpi_specs.clone(),
            retention: settings.kpi_retention,
        }),
        workers: settings.workers,
        epoch: settings.epoch,
        epoch_max_events: settings.epoch_max_events,
        sources,
        appender,
        dead_letters,
        max_in_flight: settings.max_in_flight_events,
        dedup: stockflow_dataflows::dedup::DedupWindow {
            ids: settings.dedup_window_ids,
            age_ms: settings.dedup_window.map(|age| age.as_millis() as i64),
        },
        commands: commands.filter(|_| !settings.read_only),
        restore: None,
        on_gap: settings.on_checkpoint_gap,
    })
}

/// Creates missing topics (sources and their `.dlq`; Tansu does not create on
/// produce) and opens every source topic.
async fn connect_kafka(
    settings: &Settings,
    kafka: &kafka::KafkaSettings,
) -> anyhow::Result<(Vec<SourceSpec>, Arc<dyn Source>, Arc<dyn Source>)> {
    let mut topics: Vec<String> = settings.sources.iter().map(|s| s.topic.clone()).collect();
    topics.extend([
        settings.commands_topic.clone(),
        settings.outcomes_topic.clone(),
        settings.alerts_topic.clone(),
    ]);
    topics.sort();
    topics.dedup();
    let dead_letter_topics: Vec<String> = topics.iter().map(|t| format!("{t}.dlq")).collect();
    topics.extend(dead_letter_topics);
    kafka::ensure_topics(kafka, &topics, settings.partitions)
        .await
        .context("creating topics")?;
    let mut sources = Vec::new();
    for decl in &settings.sources {
        let source = kafka::KafkaTopic::open(kafka, &decl.topic)
            .with_context(|| format!("opening topic {}", decl.topic))?;
        sources.push(SourceSpec {
            source: Arc::new(source),
            format: decl.format,
            start: decl.start,
        });
    }
    let commands = kafka::KafkaTopic::open(kafka, &settings.commands_topic)
        .with_context(|| format!("opening topic {}", settings.commands_topic))?;
    let alerts = kafka::KafkaTopic::open(kafka, &settings.alerts_topic)
        .with_context(|| format!("opening topic {}", settings.alerts_topic))?;
    Ok((sources, Arc::new(commands), Arc::new(alerts)))
}

/// An offline run (`dump`, `export`, `replay`): the engine rebuilding the
/// views from the sources, and nothing else.
///
/// Its sources are opened read-only ([`Log::open_read_only`], or Kafka
/// topics that must exist): no listener is bound, no webhook is delivered,
/// no topic, data dir, lock or file is created, nothing is truncated or
/// appended, and no checkpoint is written, except a replay's one checkpoint
/// (its result) into its own fresh `--data-dir`. A newest checkpoint of the
/// data dir is read when checkpoints are on (`export`, `dump
/// --use-checkpoint`).
pub struct Offline {
    /// The published views.
    pub store: Arc<Store>,
    /// Metrics (kept in memory: nothing serves them).
    pub metrics: Metrics,
    /// Triggers an orderly stop.
    pub shutdown: Shutdown,
    engine: crate::engine::EngineHandle,
    sink: SinkSlot,
    checkpointer: CheckpointSlot,
}

/// Starts an [`Offline`] run. The embedded log is read from the replay's
/// source dir, else the data dir; either must exist.
pub fn start_offline(settings: &Settings) -> anyhow::Result<Offline> {
    anyhow::ensure!(
        settings.offline,
        "an offline run needs offline settings (no writes to the topics)"
    );
    let store = Arc::new(Store::with_changes(settings.changes_retention));
    let metrics = Metrics::new();
    let shutdown = Shutdown::new();
    let mut sources = Vec::new();
    match &settings.kafka {
        None => {
            let dir = settings
                .replay
                .as_ref()
                .map_or(settings.data_dir.as_path(), |replay| {
                    replay.source_dir.as_path()
                });
            match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => anyhow::bail!("the data dir {} is not a directory", dir.display()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    anyhow::bail!("the data dir {} does not exist (give the data dir of a stockflow that ran, with --data-dir)", dir.display())
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("reading the data dir {}", dir.display()))
                }
            }
            let log = Log::open_read_only(&dir.join("log")).with_context(|| {
                format!("opening the embedded log in {} read-only", dir.display())
            })?;
            for decl in &settings.sources {
                // A topic never written reads as empty; nothing is created.
                let source = log
                    .topic(&decl.topic, settings.partitions)
                    .with_context(|| format!("opening topic {}", decl.topic))?;
                sources.push(SourceSpec {
                    source,
                    format: decl.format,
                    start: decl.start,
                });
            }
        }
        Some(kafka) => {
            for decl in &settings.sources {
                let source = kafka::KafkaTopic::open(kafka, &decl.topic)
                    .with_context(|| format!("opening topic {}", decl.topic))?;
                sources.push(SourceSpec {
                    source: Arc::new(source),
                    format: decl.format,
                    start: decl.start,
                });
            }
        }
    }
    let sink: SinkSlot = Arc::default();
    let checkpointer: CheckpointSlot = Arc::default();
    let mut config = engine_config(settings, sources, None)?;
    start_sink(settings, &config, &store, &metrics, &sink)?;
    recover(settings, &mut config, &store, &metrics, &checkpointer)?;
    let engine = crate::engine::start(config, store.clone(), metrics.clone(), shutdown.clone())?;
    tracing::info!(data_dir = %settings.data_dir.display(), workers = settings.workers, "offline run: rebuilding the views (read-only)");
    Ok(Offline {
        store,
        metrics,
        shutdown,
        engine,
        sink,
        checkpointer,
    })
}

impl Offline {
    /// Waits for shutdown, then stops the engine, writes a replay's
    /// checkpoint and lets the sink write what the last epochs published.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.wait().await;
        let engine = self.engine;
        let joined = tokio::task::spawn_blocking(move || engine.join())
            .await
            .context("engine thread")
            .and_then(|r| r);
        stop_after_engine(&self.checkpointer, &self.sink).await;
        joined
    }
}

/// Open files kept for the engine (log segments, checkpoints, broker
/// sockets) when the connection cap is fitted to the open-files limit.
const FILES_FOR_THE_ENGINE: u64 = 256;

/// `limits` once the process may hold them: the soft open-files limit raised
/// to the hard one, and the connection cap lowered, with a warning, when
/// the files left beside the engine's cannot hold it.
fn http_limits(mut limits: crate::settings::Limits) -> crate::settings::Limits {
    match crate::http::raise_open_files_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!(
                    before,
                    after,
                    "raised the soft limit of open files to the hard limit"
                );
            }
            let fits = after.saturating_sub(FILES_FOR_THE_ENGINE).max(1) as usize;
            if limits.max_connections > fits {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    open_files_limit = after,
                    lowered_to = fits,
                    "--max-connections does not fit in the open-files limit (raise LimitNOFILE / ulimit -n); the cap is lowered"
                );
                limits.max_connections = fits;
            }
        }
        Err(error) => tracing::warn!(%error, "could not read or raise the open-files limit"),
    }
    limits
}

/// Opens the data dir, starts the engine, binds the listener, and (with a
/// demo rate) starts the generator. Returns once everything runs.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    // Offline runs (dump, export, replay into a fresh dir) write nothing another process reads.
    let lock = if settings.offline {
        None
    } else {
        Some(lock_data_dir(&settings.data_dir)?)
    };
    // A replay reads the embedded log of another data dir.
    let log_dir = settings
        .replay
        .as_ref()
        .map_or(settings.data_dir.as_path(), |replay| {
            replay.source_dir.as_path()
        });
    let log = Arc::new(
        Log::open(&log_dir.join("log"))
            .with_context(|| format!("opening the embedded log in {}", log_dir.display()))?,
    );
    let store = Arc::new(Store::with_changes(settings.changes_retention));
    let metrics = Metrics::new();
    let shutdown = Shutdown::new();
    let webhooks = crate::webhooks::Webhooks::open(
        &settings.data_dir,
        settings.webhook_policy.clone(),
        metrics.clone(),
    )
    .with_context(|| format!("opening the webhooks in {}", settings.data_dir.display()))?;
    let sink: SinkSlot = Arc::default();
    let checkpointer: CheckpointSlot = Arc::default();

    // Commands, outcomes, alert transitions and dead letters are written
    // where the events live: on Kafka by one producer for the engine's
    // outputs (retried until acknowledged) and one for commands (a request
    // waits for each: bounded).
    let (appender, command_appender): (Arc<dyn Appender>, Arc<dyn Appender>) = match &settings.kafka
    {
        None => {
            let log_appender: Arc<dyn Appender> =
                Arc::new(LogAppender::new(log.clone(), settings.partitions));
            (log_appender.clone(), log_appender)
        }
        Some(kafka) => (
            Arc::new(kafka::KafkaProducer::new(
                kafka,
                kafka::Delivery::UntilAcknowledged,
                shutdown.clone(),
            )?),
            Arc::new(kafka::KafkaProducer::new(
                kafka,
                kafka::Delivery::Bounded,
                shutdown.clone(),
            )?),
        ),
    };

    // The embedded log is local: open it now and fail fast. Kafka may be down:
    // connect in the background, retrying, while /health answers and /ready
    // says what it is waiting for.
    let engine = match &settings.kafka {
        None => {
            let mut sources = Vec::new();
            for decl in &settings.sources {
                let source = log
                    .topic(&decl.topic, settings.partitions)
                    .with_context(|| format!("opening topic {}", decl.topic))?;
                sources.push(SourceSpec {
                    source,
                    format: decl.format,
                    start: decl.start,
                });
            }
            let commands = log
                .topic(&settings.commands_topic, settings.partitions)
                .with_context(|| format!("opening topic {}", settings.commands_topic))?;
            let path = CommandPath {
                commands,
                events_topic: settings.outcomes_topic.clone(),
            };
            let alerts = log
                .topic(&settings.alerts_topic, settings.partitions)
                .with_context(|| format!("opening topic {}", settings.alerts_topic))?;
            webhooks.set_alerts(alerts.clone());
            let alerts = AlertsPath { source: alerts };
            let mut config = engine_config(
                settings,
                sources,
                Some(Writers {
                    appender: appender.clone(),
                    commands: path,
                    alerts,
                }),
            )?;
            start_sink(settings, &config, &store, &metrics, &sink)?;
            recover(settings, &mut config, &store, &metrics, &checkpointer)?;
            let handle =
                crate::engine::start(config, store.clone(), metrics.clone(), shutdown.clone())?;
            tokio::spawn(async move { Ok(Some(handle)) })
        }
        Some(kafka) => {
            let (settings, store, metrics, shutdown, kafka) = (
                settings.clone(),
                store.clone(),
                metrics.clone(),
                shutdown.clone(),
                kafka.clone(),
            );
            let webhooks = webhooks.clone();
            let appender = appender.clone();
            let sink = sink.clone();
            let checkpointer = checkpointer.clone();
            tokio::spawn(async move {
                let mut failures = 0u32;
                loop {
                    match connect_kafka(&settings, &kafka).await {
                        Ok((sources, commands, alerts)) => {
                            store.status.set_waiting(None);
                            let path = CommandPath {
                                commands,
                                events_topic: settings.outcomes_topic.clone(),
                            };
                            webhooks.set_alerts(alerts.clone());
                            let alerts = AlertsPath { source: alerts };
                            let writers = Writers {
                                appender: appender.clone(),
                                commands: path,
                                alerts,
                            };
                            let config = engine_config(&settings, sources, Some(writers)).and_then(
                                |mut config| {
                                    start_sink(&settings, &config, &store, &metrics, &sink)?;
                                    recover(
                                        &settings,
                                        &mut config,
                                        &store,
                                        &metrics,
                                        &checkpointer,
                                    )?;
                                    Ok(config)
                                },
                            );
                            let config = match config {
                                Ok(config) => config,
                                Err(error) => {
                                    tracing::error!("{error:#}");
                                    shutdown.trigger();
                                    return Err(error);
                                }
                            };
                            let started =
                                crate::engine::start(config, store, metrics, shutdown.clone());
                            if let Err(error) = &started {
                                tracing::error!("the engine could not start: {error:#}");
                                shutdown.trigger();
                            }
                            return started.map(Some);
                        }
                        Err(error) => {
                            failures += 1;
                            let backoff = stockflow_sinks::backoff::CONNECT.delay(failures);
                            let reason = format!(
                                "waiting for the Kafka cluster at {}: {error:#}",
                                kafka.brokers
                            );
                            tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "{reason}");
                            store.status.set_waiting(Some(reason));
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = shutdown.wait() => return Ok(None),
                            }
                        }
                    }
                }
            })
        }
    };

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        webhooks: Some(webhooks.clone()),
        shutdown: shutdown.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        kpi_metrics: settings
            .kpi_specs
            .iter()
            .map(|spec| spec.name.clone())
            .collect(),
        auth: settings.api_keys.clone().map(|keys| {
            let rate_limit = settings
                .rate_limit
                .and_then(std::num::NonZeroU32::new)
                .map(crate::http::auth::RateLimit::new);
            std::sync::Arc::new(crate::http::auth::Auth { keys, rate_limit })
        }),
        request_timeout: settings.request_timeout,
        commands: if settings.read_only {
            None
        } else {
            Some(crate::http::CommandWriter::start(
                command_appender,
                settings.commands_topic.clone(),
            )?)
        },
    };
    let http = tokio::spawn(crate::http::serve(
        listener,
        state,
        http_limits(settings.http_limits),
        shutdown.clone(),
    ));
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), workers = settings.workers, "stockflow is serving");

    let demo = match settings.demo_rate {
        Some(_) => Some(log.topic(INVENTORY_EVENTS, settings.partitions)?),
        None => None,
    };
    let demo = demo.zip(settings.demo_rate).map(|(inventory, rate)| {
        let (store, metrics, shutdown) = (store.clone(), metrics.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("stockflow-demo".into())
            .spawn(move || crate::demo::run(inventory, store, metrics, shutdown, rate))
            .expect("spawning a thread")
    });
    Ok(Running {
        addr,
        store,
        log,
        metrics,
        shutdown,
        http,
        engine,
        demo,
        webhooks,
        sink,
        checkpointer,
        _lock: lock,
    })
}

impl Running {
    /// Waits for shutdown, then stops the server, the generator and the engine
    /// in that order and syncs the log.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.wait().await;
        self.http
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
        self.webhooks.stop().await;
        if let Some(demo) = self.demo {
            let _ = tokio::task::spawn_blocking(move || demo.join()).await;
        }
        let engine = self.engine.await.context("engine start task");
        let joined = match engine {
            Ok(Ok(Some(engine))) => tokio::task::spawn_blocking(move || engine.join())
                .await
                .context("engine thread")
                .and_then(|r| r),
            Ok(Ok(None)) => Ok(()),
            Ok(Err(error)) | Err(error) => Err(error),
        };
        stop_after_engine(&self.checkpointer, &self.sink).await;
        joined?;
        self.log.sync().context("syncing the embedded log")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Once the engine has stopped: the checkpointer writes its last checkpoint
/// (holding the last published epoch), then the sink writes what the last
/// epochs published.
async fn stop_after_engine(checkpointer: &CheckpointSlot, sink: &SinkSlot) {
    let checkpointer = checkpointer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some((thread, engine_done)) = checkpointer {
        let _ = engine_done.send(());
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let sink = sink.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(sink) = sink {
        sink.stop().await;
    }
}
