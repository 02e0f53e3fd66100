//! The engine: timely workers that read the sources in epochs, run the
//! dataflows, and publish the views per completed epoch. This file plans a
//! run (what each partition starts from, what "caught up" means) and starts
//! its threads; each other job has its file:
//!
//! - [`config`]: what the engine is told at start;
//! - [`worker`]: a worker's read loop (partition `i` of the flat list of all
//!   source partitions goes to worker `i % workers`; messages are decoded at
//!   the edge, a bad one goes to the dead letters);
//! - [`views`]: the dataflow graph, from events to the changes of every view;
//! - [`publish`]: worker 0 collects each completed epoch and a publisher
//!   thread applies it and swaps snapshots into the [`Store`];
//! - [`outputs`]: what the publisher writes before it publishes (outcomes,
//!   alert events, dead letters), beside it;
//! - [`restore`]: resuming from a checkpoint and the gap policy;
//! - [`written`]: the alert transitions already in the alerts topic;
//! - [`commit`]: the offset committer.

mod commit;
mod config;
mod outputs;
mod publish;
mod restore;
mod views;
mod worker;
mod written;

pub use config::{AlertsPath, CommandPath, EngineConfig, KpiConfig};

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::source::{Format, Source, SourceSpec, Start};
use crate::store::Store;
use anyhow::Context;
use commit::commit_offsets;
use restore::{check_gaps, RestorePlan, Restoring};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use stockflow_dataflows::alerts::Restored;
use stockflow_dataflows::model::tradex::is_command_topic;
use stockflow_dataflows::model::Epoch;
use written::read_written_alerts;

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
/// While data flows, how long a worker lingers before reading sources that
/// just ran dry again, so that reads come in chunks (an idle worker sleeps
/// to the end of its epoch instead).
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
    store.status.set_start_offsets(
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
    store.status.set_startup_targets(targets);
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
    let (restore, restored_alerts, restored_alert_rows, restored_cells, restoring) = match restore {
        Some(Restoring {
            id,
            events,
            plan,
            states,
            rows,
            cells,
        }) => (
            Some(plan),
            Some(states),
            rows,
            cells,
            Some(format!(
                "restoring checkpoint {id}: {events} events into the views"
            )),
        ),
        None => (None, None, Vec::new(), Vec::new(), None),
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
        Some(path) => Some(outputs::AlertsOut {
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
            restored_cells,
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
        store.status.set_waiting(Some(restoring));
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
