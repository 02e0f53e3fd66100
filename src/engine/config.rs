//! What the engine is told at start: the topics and their formats, where
//! its outputs go, how input is cut into epochs, the bound on events in
//! flight, alert thresholds, KPIs, and a checkpoint to resume from.

use crate::source::{Appender, Source, SourceSpec};
use std::sync::Arc;
use std::time::Duration;
use stockflow_dataflows::alerts::Thresholds;
use stockflow_dataflows::kpis::KpiSpec;

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
    /// How long event ids are remembered for de-duplication.
    pub dedup: stockflow_dataflows::dedup::DedupWindow,
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
    pub on_gap: crate::settings::GapPolicy,
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
