//! What a run is told to do: the resolved [`Settings`] and the plain types
//! they are made of (limits, policies, ranges, formats). Configuration
//! produces them; the engine, the HTTP edge, the sink, checkpoints, replay
//! and export read them. This module depends on none of those, so none of
//! them depends on configuration.

use crate::api_keys::ApiKeys;
use crate::source::{Format, Start};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stockflow_sinks::clickhouse as ch;

/// Resolved settings of a `serve` or `demo` run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Worker threads.
    pub workers: usize,
    /// Epoch length.
    pub epoch: Duration,
    /// Epoch size cap per worker.
    pub epoch_max_events: usize,
    /// Most messages read and not yet published (all workers).
    pub max_in_flight_events: usize,
    /// Event ids remembered for de-duplication (all workers).
    pub dedup_window_ids: usize,
    /// How long an id is remembered after it was read; `None`: no limit by time.
    pub dedup_window: Option<Duration>,
    /// Partitions of created topics.
    pub partitions: u32,
    /// Where commands go and are decided from.
    pub commands_topic: String,
    /// Where the decider's outcomes go.
    pub outcomes_topic: String,
    /// Non-loopback listening allowed.
    pub insecure_listen: bool,
    /// API keys; `None`: auth is off (and the server listens on loopback only, unless `insecure_listen`).
    pub api_keys: Option<Arc<ApiKeys>>,
    /// Requests a second per API key (`None`: unlimited).
    pub rate_limit: Option<u32>,
    /// Longest a handler may run.
    pub request_timeout: Duration,
    /// Connections at once and the header-read timeout.
    pub http_limits: Limits,
    /// Views only: the write path (commands, decider) is off.
    pub read_only: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Demo generator rate (events/s), when running `demo`.
    pub demo_rate: Option<u32>,
    /// Kafka, when configured; else the embedded log.
    pub kafka: Option<crate::source::kafka::KafkaSettings>,
    /// Topics to read, their formats and start positions.
    pub sources: Vec<SourceDecl>,
    /// Low-stock thresholds and hysteresis.
    pub thresholds: stockflow_dataflows::alerts::Thresholds,
    /// Where alert events go.
    pub alerts_topic: String,
    /// Row changes retained for change streams.
    pub changes_retention: usize,
    /// Webhook delivery: retries, the networks it may reach, the per-tenant cap.
    pub webhook_policy: stockflow_sinks::webhooks::Policy,
    /// How long KPI buckets are kept (event time).
    pub kpi_retention: Duration,
    /// Custom KPIs.
    pub kpi_specs: std::sync::Arc<[stockflow_dataflows::kpis::KpiSpec]>,
    /// The ClickHouse sink, when `--clickhouse-url` is given.
    pub clickhouse: Option<SinkSettings>,
    /// When checkpoints are written (and whether one is read at start).
    pub checkpoints: Checkpoints,
    /// What to do when a source no longer holds what the checkpoint resumes from.
    pub on_checkpoint_gap: GapPolicy,
    /// A run that only reads (`dump`, `replay`): nothing is written to the
    /// topics (no alert events, outcomes or dead letters, no commands taken)
    /// and no checkpoint is written (one is read unless checkpoints are off).
    pub offline: bool,
    /// A replay's range and where its embedded log is (`stockflow replay`).
    pub replay: Option<ReplaySettings>,
}

/// When checkpoints are written, and whether one is read at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoints {
    /// None written nor read (`--checkpoint-interval 0`).
    Off,
    /// One every interval, and a last one at shutdown.
    Every(Duration),
    /// Only one, at shutdown: a replay's checkpoint is its result.
    AtShutdown,
}

/// A topic to read, as declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDecl {
    /// Topic name.
    pub topic: String,
    /// Message format.
    pub format: Format,
    /// Where reading begins.
    pub start: Start,
}

impl SourceDecl {
    /// A topic read from the earliest offset.
    pub fn new(topic: impl Into<String>, format: Format) -> SourceDecl {
        SourceDecl {
            topic: topic.into(),
            format,
            start: Start::Earliest,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// What the listener allows a client: connections open at once, and how
/// long a connection may take to send a request head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once (`--max-connections`); more wait in the
    /// kernel's listen backlog until one closes.
    pub max_connections: usize,
    /// Longest a connection may take to send a whole request head, from
    /// its accept or from its previous answer (`--header-read-timeout`);
    /// then it is closed without an answer.
    pub header_read_timeout: Duration,
}

/// Largest `wait_ms` a read may ask; a request timeout must be longer.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Event ids remembered for de-duplication by default (about 42 bytes each).
pub const DEFAULT_DEDUP_WINDOW_IDS: usize = 1_000_000;

/// Row changes retained for change streams by default (see `--changes-retention`).
pub const DEFAULT_CHANGES_RETENTION: usize = 250_000;

/// How the sink batches and where it starts.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    /// Where to write.
    pub clickhouse: ch::Config,
    /// A batch is written once it holds this many rows...
    pub batch_rows: usize,
    /// ...or once its oldest step is this old.
    pub batch_interval: Duration,
    /// Rows held before the sink stops pulling epochs (ClickHouse down or slow).
    pub max_buffer: usize,
    /// Where events are read from when ClickHouse has no progress yet:
    /// `true` from the earliest offset (a backfill), `false` from the end.
    pub from_earliest: bool,
}

impl SinkSettings {
    /// Rows that make a batch unless told otherwise (`--clickhouse-batch-rows`).
    pub const BATCH_ROWS: usize = 100_000;
    /// Age that makes a batch unless told otherwise (`--clickhouse-batch-ms`).
    pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
    /// Rows held unless told otherwise (`--clickhouse-max-buffer`).
    pub const MAX_BUFFER: usize = 1_000_000;

    /// The defaults above, from the earliest offset.
    pub fn new(clickhouse: ch::Config) -> SinkSettings {
        SinkSettings {
            clickhouse,
            batch_rows: SinkSettings::BATCH_ROWS,
            batch_interval: SinkSettings::BATCH_INTERVAL,
            max_buffer: SinkSettings::MAX_BUFFER,
            from_earliest: true,
        }
    }
}

/// What the engine does when a source no longer holds messages a checkpoint
/// resumes from (Kafka retention deleted them, or the topic was emptied).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum GapPolicy {
    /// Refuse to start and say what is missing and what the choices are.
    #[default]
    Fail,
    /// Ignore the checkpoint: rebuild from the earliest messages still held.
    Replay,
    /// Resume from the checkpoint, skipping the missing messages (logged and
    /// counted in `stockflow_checkpoint_gap_messages`).
    Accept,
}

impl GapPolicy {
    /// Parses `fail`, `replay` or `accept`.
    pub fn parse(name: &str) -> Result<GapPolicy, String> {
        name.parse().map_err(|_| {
            format!(
                "`{name}` is not one of {}",
                crate::source::names::<GapPolicy>()
            )
        })
    }
}

/// What a replay reads, besides the range: where the embedded log is (when
/// the topics are not on Kafka).
#[derive(Clone, Debug)]
pub struct ReplaySettings {
    /// The range.
    pub range: Range,
    /// The data dir whose embedded log holds the topics.
    pub source_dir: std::path::PathBuf,
}

/// The range of a replay: `[from, to)`.
#[derive(Clone, Debug)]
pub struct Range {
    /// Where each partition begins.
    pub from: Bound,
    /// Where each partition ends (exclusive).
    pub to: Bound,
    /// What time bounds compare.
    pub time_field: TimeField,
}

/// One end of a replay range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The first message still held (for `--from`).
    Earliest,
    /// The end of each partition when the replay starts (for `--to`).
    Latest,
    /// The same offset in every partition.
    Offset(u64),
    /// An offset per partition (`0:120,1:98`); partitions not named are not bounded.
    Offsets(BTreeMap<u32, u64>),
    /// A time, ms since the Unix epoch (RFC 3339 on the command line).
    Time(i64),
}

impl Bound {
    /// Parses `earliest`, `latest`, `N`, `P:N,P:N` or an RFC 3339 time.
    pub fn parse(text: &str) -> Result<Bound, String> {
        let text = text.trim();
        match text {
            "earliest" => return Ok(Bound::Earliest),
            "latest" => return Ok(Bound::Latest),
            _ => {}
        }
        if let Ok(offset) = text.parse::<u64>() {
            return Ok(Bound::Offset(offset));
        }
        if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(Bound::Time(time.timestamp_millis()));
        }
        let mut offsets = BTreeMap::new();
        for part in text.split(',') {
            let parsed = part.split_once(':').and_then(|(p, o)| {
                Some((p.trim().parse::<u32>().ok()?, o.trim().parse::<u64>().ok()?))
            });
            match parsed {
                Some((partition, offset)) => {
                    offsets.insert(partition, offset);
                }
                None => {
                    return Err(format!(
                        "`{text}` is not earliest, latest, an offset (120), offsets per partition (0:120,1:98) or an RFC 3339 time (2026-11-20T10:00:00Z)"
                    ))
                }
            }
        }
        Ok(Bound::Offsets(offsets))
    }

    pub(crate) fn offset(&self, partition: u32) -> Option<u64> {
        match self {
            Bound::Offset(offset) => Some(*offset),
            Bound::Offsets(offsets) => offsets.get(&partition).copied(),
            _ => None,
        }
    }

    pub(crate) fn time(&self) -> Option<i64> {
        match self {
            Bound::Time(ms) => Some(*ms),
            _ => None,
        }
    }
}

/// Which time a time bound compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeField {
    /// The timestamp the log gave the message (Kafka's message timestamp).
    #[default]
    Log,
    /// The event's own `ts` (decoded with the topic's format).
    Event,
}

/// File formats of `stockflow export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC file.
    Arrow,
}
