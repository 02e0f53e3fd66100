//! Command line, environment and config file, resolved into [`Settings`].
//! Long by design: every option's flag, variable, file key, default and check are declared here once, side by side.
//!
//! Precedence: command-line flag, then `STOCKFLOW_*` environment variable,
//! then the `--config` TOML file, then the defaults. Every problem is
//! reported at once before exiting.
//!
//! Each option is written once, as a field of [`ServeArgs`] (flag, variable,
//! doc, and the file key, its name) with its default in
//! [`ServeArgs::defaults`]; [`Settings::resolve`] stacks the layers and
//! checks the values. Adding an option: a field there, its default there if
//! it has one, its use and bounds in `resolve_with`, a row in README.md.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{Checkpoints, LogFormat, Settings, SourceDecl};

/// stockflow: a streaming engine for inventory and orders.
#[derive(Debug, Parser)]
#[command(name = "stockflow", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine and the HTTP API.
    Serve(ServeArgs),
    /// `serve` plus a generator of stores, SKUs and sales, so the views move on a fresh machine.
    Demo(DemoArgs),
    /// Write the topics into a sink up to their current end, then exit (a backfill).
    Sink(SinkArgs),
    /// Write a view, or a range of a topic's events, to a Parquet or Arrow IPC file.
    Export(ExportArgs),
    /// Print a view rebuilt from the sources as canonical, sorted JSON: the same input gives the same bytes.
    Dump(DumpArgs),
    /// Rebuild every view from a range of topics into a fresh data dir (a checkpoint), files and/or ClickHouse.
    Replay(ReplayArgs),
    /// Check the embedded log for damage, or move damaged records aside (with the server stopped).
    #[command(subcommand)]
    Log(LogCommand),
}

/// `stockflow log …`: the embedded log's operator commands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Read every segment and report damage; writes nothing. Exit code 1 when damaged.
    Check(LogArgs),
    /// Move every damaged record into `<data-dir>/quarantine/`, a tombstone in its place (offsets are kept), so the log opens again.
    Repair(LogRepairArgs),
}

/// Where the embedded log is.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The data dir whose `log/` to read.
    #[arg(long, env = "STOCKFLOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Options of `log repair`.
#[derive(Debug, Args)]
pub struct LogRepairArgs {
    /// Move each damaged stretch into `<data-dir>/quarantine/<topic>/<partition>/`, keeping its bytes (required: the only way of repair).
    #[arg(long, required = true)]
    pub quarantine: bool,
    /// The data dir.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Options of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A topic to replay, `TOPIC[=FORMAT]` (repeatable) [default: the configured sources].
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Where each partition begins: `earliest`, an offset (`120`), offsets per partition (`0:120,1:98`) or an RFC 3339 time.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Where each partition ends (exclusive): `latest` (the end when the replay starts), offsets, or an RFC 3339 time.
    #[arg(long, default_value = "latest")]
    pub to: String,
    /// What time bounds compare: `log` (the message's timestamp in the log) or `event` (the event's own `ts`).
    #[arg(long, value_enum, default_value = "log")]
    pub time_field: crate::settings::TimeField,
    /// The data dir whose embedded log holds the topics (without --kafka-brokers).
    #[arg(long)]
    pub source_dir: Option<PathBuf>,
    /// Also write every view as `<view>.ndjson` (the canonical form of `stockflow dump`) into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Everything `serve` takes; `--data-dir` is where the result goes (fresh: `./stockflow-replay-<time>` by default).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// How `dump` prints rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    /// One row per line.
    Ndjson,
    /// One JSON array.
    Json,
}

/// Options of `dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The view: items, stock, stock_totals, low_stock, alerts, orders, kpis, top_skus, gauges.
    #[arg(long)]
    pub view: String,
    /// Only this tenant's rows.
    #[arg(long)]
    pub tenant: Option<String>,
    /// `ndjson` (one row per line) or `json` (an array).
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: DumpFormat,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start from the data dir's newest checkpoint (read only: none is written) instead of reading every message.
    #[arg(long)]
    pub use_checkpoint: bool,
    /// Everything `serve` takes (sources, Kafka, epochs, workers, ...).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Sinks `stockflow sink` can fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkTarget {
    /// The ClickHouse sink (`--clickhouse-url` is required).
    Clickhouse,
}

/// Options of `sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// The sink to fill.
    #[arg(value_enum)]
    pub target: SinkTarget,
    /// Where to read events from when the sink has no progress yet: `earliest` (the whole retained topic) or `latest`.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Everything `serve` takes (sources, Kafka, ClickHouse, ...).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Options of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The view to export (`stock`, `items`, `kpis`), as rebuilt from the sources.
    #[arg(long, conflicts_with = "events")]
    pub view: Option<String>,
    /// Export raw events of `--topic` instead of a view.
    #[arg(long, requires = "topic")]
    pub events: bool,
    /// The topic whose events to export (with `--events`).
    #[arg(long)]
    pub topic: Option<String>,
    /// First offset, in every partition (with `--events`): `earliest` or a number [default: earliest].
    #[arg(long)]
    pub from: Option<String>,
    /// Offset to stop before, in every partition (with `--events`): `latest` or a number [default: latest].
    #[arg(long)]
    pub to: Option<String>,
    /// Only this tenant's rows.
    #[arg(long)]
    pub tenant: Option<String>,
    /// File format.
    #[arg(long, value_enum, default_value = "parquet")]
    pub format: crate::settings::FileFormat,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Everything `serve` takes (sources, data dir, Kafka, ...).
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// Parses the command line and the `STOCKFLOW_*` environment, exiting
    /// with clap's message on a bad flag; `--help` shows the defaults.
    pub fn parse_with_defaults() -> Cli {
        let matches = Cli::command_with_defaults().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// The command line, each option's help ending with its default, taken
    /// from [`ServeArgs::defaults`] (not written a second time in the help).
    pub fn command_with_defaults() -> clap::Command {
        let serde_json::Value::Object(mut shown) =
            serde_json::to_value(ServeArgs::defaults()).expect("options serialize")
        else {
            unreachable!("options serialize as a map")
        };
        shown.insert("rate".into(), DEFAULT_DEMO_RATE.into());
        shown.insert("source_dir".into(), DEFAULT_DATA_DIR.into());
        show_defaults(Cli::command(), &shown)
    }
}

/// `command` and its subcommands, with `[default: …]` after the help of
/// each option that has one in `shown` (by the option's id, its field name).
fn show_defaults(
    command: clap::Command,
    shown: &serde_json::Map<String, serde_json::Value>,
) -> clap::Command {
    // A replay writes into a fresh data dir, not the default one.
    let replay = command.get_name() == "replay";
    let command = command.mut_args(|arg| {
        let default = match (replay, arg.get_id().as_str()) {
            (true, "data_dir") => "./stockflow-replay-<time>".to_owned(),
            (_, id) => match shown.get(id) {
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(serde_json::Value::Number(number)) => number.to_string(),
                Some(serde_json::Value::Array(items)) if !items.is_empty() => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map_or_else(|| item.to_string(), str::to_owned)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => return arg,
            },
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.help(format!("{help} [default: {default}]"))
    });
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| show_defaults(sub, shown))
    })
}

/// Options of `serve` (and of every command that runs the engine), each
/// written once: its flag, its `STOCKFLOW_*` variable, its doc (the `--help`
/// text) here, and its default in [`ServeArgs::defaults`]. The config file
/// deserializes into the same struct (its keys are the field names), except
/// the few options whose file form differs (see [`FileForms`]). `None`, `false`
/// or an empty list is "not given": the layers stack with [`ServeArgs::over`].
#[derive(Clone, Debug, Args, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "STOCKFLOW_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded log and checkpoints.
    #[arg(long, env = "STOCKFLOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Timely worker threads; partitions are spread over them.
    #[arg(long, env = "STOCKFLOW_WORKERS")]
    pub workers: Option<usize>,
    /// TOML config file; its keys are the long option names with `_` (see README.md, "Configuration").
    #[arg(long, env = "STOCKFLOW_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Close an epoch after this many milliseconds.
    #[arg(long, env = "STOCKFLOW_EPOCH_MS")]
    pub epoch_ms: Option<u64>,
    /// ...or after this many messages read by one worker.
    #[arg(long, env = "STOCKFLOW_EPOCH_MAX_EVENTS")]
    pub epoch_max_events: Option<usize>,
    /// Most messages read and not yet published, over all workers: past it the sources pause until a slow output (the alerts, outcomes or dead-letter topic) catches up.
    #[arg(long, env = "STOCKFLOW_MAX_IN_FLIGHT_EVENTS")]
    pub max_in_flight_events: Option<usize>,
    /// Event ids remembered for de-duplication, over all workers: a copy of an id that many newer ids ago counts again.
    #[arg(long, env = "STOCKFLOW_DEDUP_WINDOW_IDS")]
    pub dedup_window_ids: Option<usize>,
    /// How long an event id is remembered for de-duplication after it was read (`24h`; `0`: no limit by time).
    #[arg(long, env = "STOCKFLOW_DEDUP_WINDOW")]
    pub dedup_window: Option<String>,
    /// Partitions of topics the embedded log creates.
    #[arg(long, env = "STOCKFLOW_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Topic that commands are appended to and decided from.
    #[arg(long, env = "STOCKFLOW_COMMANDS_TOPIC")]
    pub commands_topic: Option<String>,
    /// Topic that the decider appends its outcomes (events) to.
    #[arg(long, env = "STOCKFLOW_OUTCOMES_TOPIC")]
    pub outcomes_topic: Option<String>,
    /// Allow listening on a non-loopback address without API keys (unsafe: anyone can read every tenant).
    #[arg(long, env = "STOCKFLOW_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// API keys, `KEY:TENANT:RIGHT` comma separated (TENANT `*` = every tenant; RIGHT `read`, `write` or `admin`); with keys, every /v1 request needs `Authorization: Bearer KEY`.
    #[arg(long, env = "STOCKFLOW_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Requests a second each API key may make (token bucket, bursts of the same size; 0 = unlimited).
    #[arg(long, env = "STOCKFLOW_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Longest a request's handler may run before a 503 (`30s`, `2m`).
    #[arg(long, env = "STOCKFLOW_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Longest a connection may take to send a request head, new or kept alive, before it is closed (`10s`).
    #[arg(long, env = "STOCKFLOW_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// HTTP connections served at once; more wait in the listen backlog; lowered to fit the open-files limit.
    #[arg(long, env = "STOCKFLOW_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Serve views only: no commands, no decider (its state costs ~20% of ingest throughput).
    #[arg(long, env = "STOCKFLOW_READ_ONLY")]
    pub read_only: bool,
    /// Log output format.
    #[arg(long, env = "STOCKFLOW_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Kafka bootstrap servers (`host:port,…`); read Kafka instead of the embedded log.
    #[arg(long, env = "STOCKFLOW_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Group id that labels stockflow's Kafka clients (nothing is consumed by group).
    #[arg(long, env = "STOCKFLOW_KAFKA_GROUP_ID")]
    pub kafka_group_id: Option<String>,
    /// A librdkafka property for stockflow's producer, `KEY=VALUE` (repeatable; env: comma separated), e.g. `compression.type=lz4`.
    #[arg(
        long = "kafka-producer-option",
        env = "STOCKFLOW_KAFKA_PRODUCER_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_producer_options: Vec<String>,
    /// Low-stock threshold of skus with no `reorder_point` and no tenant threshold.
    #[arg(long, env = "STOCKFLOW_LOW_STOCK_THRESHOLD")]
    pub low_stock_threshold: Option<i64>,
    /// How far above its threshold `available` must rise to clear an alert.
    #[arg(long, env = "STOCKFLOW_ALERT_HYSTERESIS")]
    pub alert_hysteresis: Option<i64>,
    /// Topic alert events are written to.
    #[arg(long, env = "STOCKFLOW_ALERTS_TOPIC")]
    pub alerts_topic: Option<String>,
    /// Row changes kept for change streams to resume from; 0 turns change streams off.
    #[arg(long, env = "STOCKFLOW_CHANGES_RETENTION")]
    pub changes_retention: Option<usize>,
    /// Attempts per webhook delivery before it is recorded as failed.
    #[arg(long, env = "STOCKFLOW_WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<u32>,
    /// Wait after a failed webhook attempt, doubled after each further one (ms).
    #[arg(long, env = "STOCKFLOW_WEBHOOK_BACKOFF_MS")]
    pub webhook_backoff_ms: Option<u64>,
    /// Most webhooks one tenant may register; past it a registration answers 409.
    #[arg(long, env = "STOCKFLOW_WEBHOOKS_PER_TENANT")]
    pub webhooks_per_tenant: Option<usize>,
    /// A network webhooks may be delivered to, CIDR or one address (repeatable; env: comma separated); when any is given, only these, else every network but link-local and cloud metadata addresses.
    #[arg(
        long = "webhook-allow-network",
        env = "STOCKFLOW_WEBHOOK_ALLOW_NETWORKS",
        value_delimiter = ','
    )]
    pub webhook_allow_networks: Vec<String>,
    /// A network webhooks are never delivered to, CIDR or one address (repeatable; env: comma separated); wins over the allowed ones.
    #[arg(
        long = "webhook-deny-network",
        env = "STOCKFLOW_WEBHOOK_DENY_NETWORKS",
        value_delimiter = ','
    )]
    pub webhook_deny_networks: Vec<String>,
    /// KPI buckets are kept while they end within this much event time of the newest hour seen, in whole hours (`90d`, `36h`).
    #[arg(long, env = "STOCKFLOW_KPI_RETENTION")]
    pub kpi_retention: Option<String>,
    /// ClickHouse HTTP endpoint (`http://host:8123`): turns the ClickHouse sink on.
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database, created with its tables if missing.
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_DATABASE")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse user (none: ClickHouse's `default`).
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// ClickHouse password (none: no password).
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// A ClickHouse batch is written once it holds this many rows...
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_BATCH_ROWS")]
    pub clickhouse_batch_rows: Option<usize>,
    /// ...or once it is this old (ms).
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_BATCH_MS")]
    pub clickhouse_batch_ms: Option<u64>,
    /// Rows the sink holds while ClickHouse is down or slow before it stops pulling epochs.
    #[arg(long, env = "STOCKFLOW_CLICKHOUSE_MAX_BUFFER")]
    pub clickhouse_max_buffer: Option<usize>,
    /// How often a checkpoint is written to the data dir (`30s`, `5m`, `1h 30m`; `0` = never; one is also written at shutdown unless 0).
    #[arg(long, env = "STOCKFLOW_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<String>,
    /// When a source no longer holds what the checkpoint resumes from: `fail`, `replay` (ignore the checkpoint) or `accept` (skip what is missing).
    #[arg(long, env = "STOCKFLOW_ON_CHECKPOINT_GAP")]
    pub on_checkpoint_gap: Option<String>,
    /// A topic to read, `TOPIC[=FORMAT][@START]` (repeatable; formats `stockflow`, `tradex`, `inventory-cqrs`; start `earliest`, `latest`, `stored`).
    #[arg(long = "source", env = "STOCKFLOW_SOURCES", value_delimiter = ',')]
    pub sources: Vec<String>,
}

/// The data dir when none is given (also of `log` and `replay --source-dir`).
pub const DEFAULT_DATA_DIR: &str = "./stockflow-data";

/// Events per second of `demo` when `--rate` is not given.
pub const DEFAULT_DEMO_RATE: u32 = 200;

impl ServeArgs {
    /// The defaults, in one place: the layer under the config file, and
    /// what `--help` shows (see [`Cli::command_with_defaults`]). An option
    /// left out has no default (it is off until given).
    pub fn defaults() -> ServeArgs {
        use crate::settings::SinkSettings as Sink;
        // The engine's and the sinks' own defaults, where they have them.
        let thresholds = stockflow_dataflows::alerts::Thresholds::default();
        let webhooks = stockflow_sinks::webhooks::Policy::default();
        ServeArgs {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: Some(PathBuf::from(DEFAULT_DATA_DIR)),
            workers: Some(1),
            epoch_ms: Some(10),
            epoch_max_events: Some(100_000),
            max_in_flight_events: Some(400_000),
            dedup_window_ids: Some(crate::settings::DEFAULT_DEDUP_WINDOW_IDS),
            dedup_window: Some("24h".into()),
            partitions: Some(4),
            commands_topic: Some("inventory.commands".into()),
            outcomes_topic: Some("inventory.events".into()),
            rate_limit: Some(100),
            // Above the longest `wait_ms` a read may ask.
            request_timeout: Some("40s".into()),
            header_read_timeout: Some("10s".into()),
            max_connections: Some(4096),
            log_format: Some(LogFormat::Pretty),
            kafka_group_id: Some("stockflow".into()),
            low_stock_threshold: Some(thresholds.default),
            alert_hysteresis: Some(thresholds.hysteresis),
            alerts_topic: Some("alerts.events".into()),
            changes_retention: Some(crate::settings::DEFAULT_CHANGES_RETENTION),
            webhook_max_attempts: Some(webhooks.max_attempts),
            webhook_backoff_ms: Some(webhooks.first_backoff.as_millis() as u64),
            webhooks_per_tenant: Some(webhooks.per_tenant),
            kpi_retention: Some("90d".into()),
            clickhouse_database: Some("stockflow".into()),
            clickhouse_batch_rows: Some(Sink::BATCH_ROWS),
            clickhouse_batch_ms: Some(Sink::BATCH_INTERVAL.as_millis() as u64),
            clickhouse_max_buffer: Some(Sink::MAX_BUFFER),
            checkpoint_interval: Some("30s".into()),
            on_checkpoint_gap: Some(<&str>::from(crate::settings::GapPolicy::default()).into()),
            sources: vec!["inventory.events".into(), "order.events".into()],
            ..ServeArgs::default()
        }
    }

    /// These options over `under`: each option not given here (`None`,
    /// `false`, an empty list) is taken from `under`.
    pub fn over(mut self, mut under: ServeArgs) -> ServeArgs {
        // A path need not be UTF-8, which JSON cannot hold: layered apart.
        let data_dir = self.data_dir.take().or(under.data_dir.take());
        let (serde_json::Value::Object(mut top), serde_json::Value::Object(under)) = (
            serde_json::to_value(&self).expect("options serialize"),
            serde_json::to_value(under).expect("options serialize"),
        ) else {
            unreachable!("options serialize as a map")
        };
        for (key, value) in under {
            if !given(&top[&key]) {
                top.insert(key, value);
            }
        }
        let mut layered: ServeArgs = serde_json::from_value(serde_json::Value::Object(top))
            .expect("options deserialize as they serialize");
        layered.config = self.config;
        layered.data_dir = data_dir;
        layered
    }
}

/// Whether a serialized option was given: not `null`, `false` or `[]`.
fn given(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null | serde_json::Value::Bool(false) => false,
        serde_json::Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

/// Options of `demo`.
#[derive(Debug, Args, Default)]
pub struct DemoArgs {
    /// Everything `serve` takes.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Events per second the generator appends after seeding the catalogue.
    #[arg(long, env = "STOCKFLOW_DEMO_RATE")]
    pub rate: Option<u32>,
}

/// The config file (`--config`): the options of [`ServeArgs`] under their
/// field names, and the few whose file form differs from the flag's.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// The options written as the flags take them.
    pub options: ServeArgs,
    /// The options written another way in a file.
    pub forms: FileForms,
}

/// The keys of the config file whose form differs from the flag's (an
/// explicit adapter each, in [`Settings::resolve`]: a flag or variable
/// replaces the file's whole value), and the keys only a file has.
/// Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForms {
    /// `api_keys = ["KEY:TENANT:RIGHT", …]`: a list, where `--api-keys` is comma separated.
    pub api_keys: Option<Vec<String>>,
    /// `[kafka_producer_options]`: a table of librdkafka properties, where
    /// `--kafka-producer-option` is `KEY=VALUE`.
    pub kafka_producer_options: Option<std::collections::BTreeMap<String, String>>,
    /// `[[sources]]` tables, where `--source` is `TOPIC[=FORMAT][@START]`.
    pub sources: Option<Vec<SourceConfig>>,
    /// `[demo] rate`, where the flag is `demo --rate`.
    pub demo: Option<DemoFileConfig>,
    /// `[tenant_thresholds]`, file only: low-stock threshold per tenant (`acme = 5`).
    pub tenant_thresholds: Option<std::collections::BTreeMap<String, i64>>,
    /// `[[kpis]]` tables, file only: custom KPIs (see docs/api.md, "KPIs").
    pub kpis: Option<Vec<stockflow_dataflows::kpis::KpiSpecConfig>>,
}

/// One `[[sources]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Topic name.
    pub topic: String,
    /// Message format [default: stockflow].
    #[serde(default)]
    pub format: Option<String>,
    /// Where reading begins: `earliest`, `latest` or `stored` [default: earliest].
    #[serde(default)]
    pub start: Option<String>,
}

/// `[demo]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoFileConfig {
    /// See `--rate`.
    pub rate: Option<u32>,
}

/// Parses `--checkpoint-interval`: `0` (never) or a duration of 1 s to a day.
pub fn parse_checkpoints(text: &str) -> Result<Checkpoints, String> {
    match parse_duration(text).map_err(|e| format!("{e}; 0 for never"))? {
        Duration::ZERO => Ok(Checkpoints::Off),
        short if short < Duration::from_secs(1) => {
            Err(format!("`{}`: at least 1s (or 0 for never)", text.trim()))
        }
        interval if interval > DAY => Err(format!("`{}`: at most a day", text.trim())),
        interval => Ok(Checkpoints::Every(interval)),
    }
}

/// The longest a timeout or checkpoint interval may be.
const DAY: Duration = Duration::from_secs(86_400);

/// Parses a duration as humantime does (`30s`, `5m`, `1h 30m`, `90d`,
/// `500ms`), or a bare number of seconds (`30`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 30s, 5m, 1h 30m or 90d ({e})"))
}

/// Parses a duration of event time: whole hours from 1h to 100 years (`90d`, `36h`).
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let retention = parse_duration(text)?;
    let text = text.trim();
    if retention.as_secs() % 3600 != 0 || retention.subsec_nanos() != 0 {
        return Err(format!("`{text}`: a whole number of hours (e.g. 90d, 36h)"));
    }
    if retention.is_zero() || retention > Duration::from_secs(100 * 366 * 86_400) {
        return Err(format!("`{text}`: between 1h and 100 years"));
    }
    Ok(retention)
}

/// The value of an option once the defaults are under it: every option
/// [`ServeArgs::defaults`] sets.
fn defaulted<T>(value: Option<T>) -> T {
    value.expect("set by ServeArgs::defaults")
}

impl Default for Settings {
    /// The settings of `serve` with no option given (see [`ServeArgs::defaults`]);
    /// tests change the fields they need.
    fn default() -> Settings {
        Settings::resolve(&ServeArgs::default(), None).expect("the defaults are valid")
    }
}

impl Settings {
    /// Resolves flags, environment, config file and defaults; lists every problem.
    pub fn resolve(
        args: &ServeArgs,
        demo_rate: Option<Option<u32>>,
    ) -> Result<Settings, Vec<String>> {
        let mut errors = Vec::new();
        let (file, file_keys) = match &args.config {
            Some(path) => read_config_file(path, &mut errors),
            None => (FileConfig::default(), FileKeys::default()),
        };
        let result = Settings::resolve_with(args, demo_rate, file, errors);
        result.map_err(|errors| file_keys.locate(args, errors))
    }

    /// [`Settings::resolve`] once the config file is read.
    fn resolve_with(
        args: &ServeArgs,
        demo_rate: Option<Option<u32>>,
        file: FileConfig,
        mut errors: Vec<String>,
    ) -> Result<Settings, Vec<String>> {
        let FileConfig { options, forms } = file;
        // Flag (or variable) over file over default.
        let o = args.clone().over(options).over(ServeArgs::defaults());
        let mut settings = Settings {
            listen: defaulted(o.listen),
            data_dir: defaulted(o.data_dir),
            workers: defaulted(o.workers),
            epoch: Duration::from_millis(defaulted(o.epoch_ms)),
            epoch_max_events: defaulted(o.epoch_max_events),
            max_in_flight_events: defaulted(o.max_in_flight_events),
            dedup_window_ids: defaulted(o.dedup_window_ids),
            // Set below from `dedup_window`.
            dedup_window: None,
            partitions: defaulted(o.partitions),
            commands_topic: defaulted(o.commands_topic),
            outcomes_topic: defaulted(o.outcomes_topic),
            insecure_listen: o.insecure_listen,
            api_keys: None,
            rate_limit: Some(defaulted(o.rate_limit)).filter(|rate| *rate > 0),
            // Set below from `request_timeout`.
            request_timeout: Duration::ZERO,
            http_limits: crate::settings::Limits {
                max_connections: defaulted(o.max_connections),
                // Set below from `header_read_timeout`.
                header_read_timeout: Duration::ZERO,
            },
            read_only: o.read_only,
            log_format: defaulted(o.log_format),
            demo_rate: demo_rate.map(|rate| {
                rate.or(forms.demo.and_then(|d| d.rate))
                    .unwrap_or(DEFAULT_DEMO_RATE)
            }),
            kafka: o
                .kafka_brokers
                .filter(|b| !b.trim().is_empty())
                .map(|brokers| crate::source::kafka::KafkaSettings {
                    brokers,
                    group_id: defaulted(o.kafka_group_id),
                    // Adapter: the file's is a table, the flag's `KEY=VALUE`.
                    producer_options: if o.kafka_producer_options.is_empty() {
                        forms
                            .kafka_producer_options
                            .unwrap_or_default()
                            .into_iter()
                            .collect()
                    } else {
                        o.kafka_producer_options
                            .iter()
                            .map(|option| match option.split_once('=') {
                                Some((key, value)) if !key.trim().is_empty() => {
                                    (key.trim().to_owned(), value.trim().to_owned())
                                }
                                _ => {
                                    errors.push(format!(
                                        "kafka_producer_options: `{option}` is not KEY=VALUE"
                                    ));
                                    (String::new(), String::new())
                                }
                            })
                            .filter(|(key, _)| !key.is_empty())
                            .collect()
                    },
                }),
            sources: Vec::new(),
            thresholds: stockflow_dataflows::alerts::Thresholds {
                default: defaulted(o.low_stock_threshold),
                hysteresis: defaulted(o.alert_hysteresis),
                tenants: Default::default(),
            },
            alerts_topic: defaulted(o.alerts_topic),
            changes_retention: defaulted(o.changes_retention),
            webhook_policy: stockflow_sinks::webhooks::Policy {
                max_attempts: defaulted(o.webhook_max_attempts),
                first_backoff: Duration::from_millis(defaulted(o.webhook_backoff_ms)),
                per_tenant: defaulted(o.webhooks_per_tenant),
                ..Default::default()
            },
            // Set below from `kpi_retention`.
            kpi_retention: Duration::ZERO,
            kpi_specs: std::sync::Arc::from(Vec::new()),
            clickhouse: None,
            // Set below from `checkpoint_interval`.
            checkpoints: Checkpoints::Off,
            on_checkpoint_gap: Default::default(),
            offline: false,
            replay: None,
        };
        if !(1..=100).contains(&settings.webhook_policy.max_attempts) {
            errors.push(format!(
                "webhook_max_attempts: must be between 1 and 100, got {}",
                settings.webhook_policy.max_attempts
            ));
        }
        if !(1..=600_000).contains(&settings.webhook_policy.first_backoff.as_millis()) {
            errors.push(format!(
                "webhook_backoff_ms: must be between 1 and 600000, got {}",
                settings.webhook_policy.first_backoff.as_millis()
            ));
        }
        if !(1..=10_000).contains(&settings.webhook_policy.per_tenant) {
            errors.push(format!(
                "webhooks_per_tenant: must be between 1 and 10000, got {}",
                settings.webhook_policy.per_tenant
            ));
        }
        let mut networks = |option: &str, listed: &[String]| {
            listed
                .iter()
                .filter(|text| !text.trim().is_empty())
                .filter_map(|text| {
                    stockflow_sinks::webhooks::parse_network(text)
                        .map_err(|reason| errors.push(format!("{option}: {reason}")))
                        .ok()
                })
                .collect()
        };
        settings.webhook_policy.networks =
            std::sync::Arc::new(stockflow_sinks::webhooks::Networks {
                allow: networks("webhook_allow_networks", &o.webhook_allow_networks),
                deny: networks("webhook_deny_networks", &o.webhook_deny_networks),
            });
        match parse_duration(&defaulted(o.dedup_window)) {
            Ok(Duration::ZERO) => settings.dedup_window = None,
            Ok(window) if window > Duration::from_secs(366 * 86_400) => errors.push(format!(
                "dedup_window: at most a year (366d), got {}",
                humantime::format_duration(window)
            )),
            Ok(window) => settings.dedup_window = Some(window),
            Err(reason) => errors.push(format!("dedup_window: {reason}; 0 for no limit by time")),
        }
        match parse_retention(&defaulted(o.kpi_retention)) {
            Ok(retention) => settings.kpi_retention = retention,
            Err(reason) => errors.push(format!("kpi_retention: {reason}")),
        }
        match parse_checkpoints(&defaulted(o.checkpoint_interval)) {
            Ok(checkpoints) => settings.checkpoints = checkpoints,
            Err(reason) => errors.push(format!("checkpoint_interval: {reason}")),
        }
        // Adapter: the file's keys are a list, the flag's comma separated.
        let keys: Option<Vec<&str>> = match &o.api_keys {
            Some(list) => Some(list.split(',').collect()),
            None => forms
                .api_keys
                .as_ref()
                .map(|keys| keys.iter().map(String::as_str).collect()),
        };
        match keys.map(crate::api_keys::ApiKeys::parse) {
            Some(Ok(keys)) => settings.api_keys = Some(std::sync::Arc::new(keys)),
            Some(Err(problems)) => errors.extend(problems),
            None => {}
        }
        let request_timeout = defaulted(o.request_timeout);
        match parse_duration(&request_timeout) {
            Ok(timeout) if timeout > DAY => errors.push(format!(
                "request_timeout: `{}`: at most a day",
                request_timeout.trim()
            )),
            Ok(timeout) if timeout.as_millis() > u128::from(crate::settings::MAX_WAIT_MS) => {
                settings.request_timeout = timeout
            }
            Ok(_) => errors.push(format!(
                "request_timeout: must be longer than the longest wait_ms a read may ask ({} s)",
                crate::settings::MAX_WAIT_MS / 1000
            )),
            Err(reason) => errors.push(format!("request_timeout: {reason}")),
        }
        let header_read_timeout = defaulted(o.header_read_timeout);
        match parse_duration(&header_read_timeout) {
            Ok(timeout) if timeout > DAY => errors.push(format!(
                "header_read_timeout: `{}`: at most a day",
                header_read_timeout.trim()
            )),
            Ok(timeout) if timeout >= Duration::from_secs(1) => {
                settings.http_limits.header_read_timeout = timeout
            }
            Ok(_) => errors.push("header_read_timeout: must be at least 1s (a connection may not hold the server forever)".into()),
            Err(reason) => errors.push(format!("header_read_timeout: {reason}")),
        }
        if !(1..=1_000_000).contains(&settings.http_limits.max_connections) {
            errors.push(format!(
                "max_connections: must be between 1 and 1000000, got {}",
                settings.http_limits.max_connections
            ));
        }
        match crate::settings::GapPolicy::parse(&defaulted(o.on_checkpoint_gap)) {
            Ok(policy) => settings.on_checkpoint_gap = policy,
            Err(reason) => errors.push(format!("on_checkpoint_gap: {reason}")),
        }
        match stockflow_dataflows::kpis::compile_all(forms.kpis.as_deref().unwrap_or_default()) {
            Ok(specs) => settings.kpi_specs = specs.into(),
            Err(problems) => errors.extend(problems),
        }
        for (tenant, threshold) in forms.tenant_thresholds.unwrap_or_default() {
            if let Err(reason) = stockflow_dataflows::model::decode::validate_name(&tenant) {
                errors.push(format!("tenant_thresholds: `{tenant}`: {reason}"));
            } else if threshold < 0 {
                errors.push(format!(
                    "tenant_thresholds: {tenant}: must be at least 0, got {threshold}"
                ));
            } else {
                settings
                    .thresholds
                    .tenants
                    .insert(tenant.as_str().into(), threshold);
            }
        }
        if settings.thresholds.default < 0 {
            errors.push(format!(
                "low_stock_threshold: must be at least 0, got {}",
                settings.thresholds.default
            ));
        }
        if settings.thresholds.hysteresis < 0 {
            errors.push(format!(
                "alert_hysteresis: must be at least 0, got {}",
                settings.thresholds.hysteresis
            ));
        }
        if let Some(url) = o.clickhouse_url.filter(|u| !u.trim().is_empty()) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(format!("clickhouse_url: `{url}` is not an http:// URL of ClickHouse's HTTP interface (e.g. http://127.0.0.1:8123)"));
            }
            if url.starts_with("https://") {
                errors.push("clickhouse_url: https is not built in yet; put a TLS proxy on loopback in front of ClickHouse".into());
            }
            let database = defaulted(o.clickhouse_database);
            if database.is_empty()
                || database.len() > 128
                || !database
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || database.as_bytes()[0].is_ascii_digit()
            {
                errors.push(format!("clickhouse_database: `{database}` is not a plain identifier (letters, digits, _; not starting with a digit)"));
            }
            let mut sink =
                crate::settings::SinkSettings::new(stockflow_sinks::clickhouse::Config {
                    url,
                    database,
                    user: o.clickhouse_user.unwrap_or_default(),
                    password: o.clickhouse_password.unwrap_or_default(),
                });
            sink.batch_rows = defaulted(o.clickhouse_batch_rows);
            sink.batch_interval = Duration::from_millis(defaulted(o.clickhouse_batch_ms));
            sink.max_buffer = defaulted(o.clickhouse_max_buffer);
            if !(1..=1_000_000).contains(&sink.batch_rows) {
                errors.push(format!(
                    "clickhouse_batch_rows: between 1 and 1000000, got {}",
                    sink.batch_rows
                ));
            }
            if !(1..=600_000).contains(&sink.batch_interval.as_millis()) {
                errors.push(format!(
                    "clickhouse_batch_ms: between 1 and 600000, got {}",
                    sink.batch_interval.as_millis()
                ));
            }
            if sink.max_buffer < sink.batch_rows {
                errors.push(format!(
                    "clickhouse_max_buffer: at least clickhouse_batch_rows ({}), got {}",
                    sink.batch_rows, sink.max_buffer
                ));
            }
            settings.clickhouse = Some(sink);
        }
        if settings.changes_retention > 100_000_000 {
            errors.push(format!(
                "changes_retention: at most 100000000 row changes, got {}",
                settings.changes_retention
            ));
        }
        // (topic, format, start) as written. Adapter: the file's are
        // `[[sources]]` tables, the flag's (and the default's) strings.
        let declared: Vec<(String, Option<String>, Option<String>)> = match forms.sources {
            Some(sources) if args.sources.is_empty() => sources
                .into_iter()
                .map(|s| (s.topic, s.format, s.start))
                .collect(),
            _ => o
                .sources
                .iter()
                .map(|s| {
                    let (rest, start) = match s.split_once('@') {
                        Some((rest, start)) => (rest, Some(start.trim().to_owned())),
                        None => (s.as_str(), None),
                    };
                    match rest.split_once('=') {
                        Some((topic, format)) => (
                            topic.trim().to_owned(),
                            Some(format.trim().to_owned()),
                            start,
                        ),
                        None => (rest.trim().to_owned(), None, start),
                    }
                })
                .collect(),
        };
        for (topic, format, start) in declared {
            let format = match format
                .as_deref()
                .map(crate::source::Format::parse)
                .unwrap_or(Ok(crate::source::Format::Stockflow))
            {
                Ok(format) => format,
                Err(reason) => {
                    errors.push(format!("source {topic}: {reason}"));
                    continue;
                }
            };
            let start = match start
                .as_deref()
                .map(crate::source::Start::parse)
                .unwrap_or(Ok(crate::source::Start::Earliest))
            {
                Ok(start) => start,
                Err(reason) => {
                    errors.push(format!("source {topic}: {reason}"));
                    continue;
                }
            };
            if !crate::source::is_topic_name(&topic) {
                errors.push(format!(
                    "source `{topic}`: not a topic name ({})",
                    crate::source::TOPIC_NAME_RULE
                ));
            } else if topic == settings.commands_topic {
                errors.push(format!(
                    "source {topic}: is the commands topic (commands are read from it already)"
                ));
            } else if settings.sources.iter().any(|s| s.topic == topic) {
                errors.push(format!("source {topic}: declared twice"));
            } else {
                settings.sources.push(SourceDecl {
                    topic,
                    format,
                    start,
                });
            }
        }
        if settings.outcomes_topic == settings.commands_topic {
            errors.push(format!(
                "outcomes_topic `{}`: is also the commands topic; outcomes would be read back as commands (and become dead letters): give each a topic of its own",
                settings.outcomes_topic
            ));
        }
        // A topic that is another's dead-letter topic would mix letters into it, or read them back.
        let read: Vec<&str> = settings
            .sources
            .iter()
            .map(|s| s.topic.as_str())
            .chain([settings.commands_topic.as_str()])
            .collect();
        for (option, topic) in settings
            .sources
            .iter()
            .map(|s| ("source", &s.topic))
            .chain([
                ("commands_topic", &settings.commands_topic),
                ("outcomes_topic", &settings.outcomes_topic),
                ("alerts_topic", &settings.alerts_topic),
            ])
        {
            if let Some(owner) = read.iter().find(|owner| format!("{owner}.dlq") == *topic) {
                errors.push(format!("{option} `{topic}`: is the dead-letter topic of `{owner}`; give it a topic of its own"));
            }
        }
        if settings
            .sources
            .iter()
            .any(|s| s.topic == settings.alerts_topic)
            || settings.alerts_topic == settings.commands_topic
            || settings.alerts_topic == settings.outcomes_topic
        {
            errors.push(format!(
                "alerts_topic `{}`: is also a source, the commands or the outcomes topic; alerts need a topic of their own",
                settings.alerts_topic
            ));
        }
        for (option, topic) in [
            ("commands_topic", &settings.commands_topic),
            ("outcomes_topic", &settings.outcomes_topic),
            ("alerts_topic", &settings.alerts_topic),
        ] {
            if !crate::source::is_topic_name(topic) {
                errors.push(format!(
                    "{option} `{topic}`: not a topic name ({})",
                    crate::source::TOPIC_NAME_RULE
                ));
            }
        }
        if settings.kafka.is_none()
            && settings
                .sources
                .iter()
                .any(|s| s.start == crate::source::Start::Stored)
        {
            errors.push(
                "sources: start `stored` reads offsets committed to Kafka; it needs kafka_brokers"
                    .into(),
            );
        }
        if settings.demo_rate.is_some() && settings.kafka.is_some() {
            errors.push(
                "demo: the generator writes to the embedded log; run demo without kafka_brokers"
                    .into(),
            );
        }
        if settings.sources.is_empty() && errors.is_empty() {
            errors.push("sources: at least one topic is needed".into());
        }
        if !(1..=64).contains(&settings.workers) {
            errors.push(format!(
                "workers: must be between 1 and 64, got {}",
                settings.workers
            ));
        }
        if !(1..=60_000).contains(&settings.epoch.as_millis()) {
            errors.push(format!(
                "epoch_ms: must be between 1 and 60000, got {}",
                settings.epoch.as_millis()
            ));
        }
        if settings.max_in_flight_events == 0 {
            errors.push("max_in_flight_events: must be at least 1".into());
        }
        if !(1_000..=1_000_000_000).contains(&settings.dedup_window_ids) {
            errors.push(format!(
                "dedup_window_ids: must be between 1000 and 1000000000, got {}",
                settings.dedup_window_ids
            ));
        }
        if settings.epoch_max_events == 0 {
            errors.push("epoch_max_events: must be at least 1".into());
        }
        if !(1..=1024).contains(&settings.partitions) {
            errors.push(format!(
                "partitions: must be between 1 and 1024, got {}",
                settings.partitions
            ));
        }
        if settings
            .demo_rate
            .is_some_and(|r| !(1..=1_000_000).contains(&r))
        {
            errors.push("rate: must be between 1 and 1000000 events/s".into());
        }
        if !settings.listen.ip().is_loopback()
            && !settings.insecure_listen
            && settings.api_keys.is_none()
        {
            errors.push(format!(
                "listen: {} is not a loopback address and no API keys are configured; anyone who can reach it could read every tenant. Use 127.0.0.1, or pass --insecure-listen if a proxy in front does authentication",
                settings.listen
            ));
        }
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }
}

/// Where each top-level key of the config file is: its path and the line of
/// each key, to say where an error comes from.
#[derive(Debug, Default)]
struct FileKeys {
    path: Option<PathBuf>,
    lines: std::collections::BTreeMap<String, usize>,
}

impl FileKeys {
    /// `errors`, each once, in order; an error about a key the file sets
    /// (and the command line or environment does not) is prefixed with the
    /// file and the key's line: `config file stockflow.toml:7: workers: …`.
    fn locate(&self, args: &ServeArgs, errors: Vec<String>) -> Vec<String> {
        let args = serde_json::to_value(args).unwrap_or_default();
        let by_args = |key: &str| given(&args[key]);
        let mut seen = std::collections::HashSet::new();
        let mut located = Vec::new();
        for error in errors {
            if !seen.insert(error.clone()) {
                continue;
            }
            let word: String = error
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // "source X: …" is about the key `sources`, "rate: …" about `[demo]`.
            let key = match word.as_str() {
                "source" => "sources",
                "rate" => "demo",
                other => other,
            };
            match (&self.path, self.lines.get(key)) {
                (Some(path), Some(line)) if !by_args(key) && !error.starts_with("config file ") => {
                    located.push(format!("config file {}:{line}: {error}", path.display()))
                }
                _ => located.push(error),
            }
        }
        located
    }
}

/// Reads the config file at `path`: the keys that are valid, and an error
/// for each key that is not (every one, not only the first), with the file,
/// the key's line and the key.
fn read_config_file(path: &std::path::Path, errors: &mut Vec<String>) -> (FileConfig, FileKeys) {
    let mut keys = FileKeys {
        path: Some(path.to_path_buf()),
        lines: Default::default(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(format!("config file {}: {e}", path.display()));
            return (FileConfig::default(), keys);
        }
    };
    let table = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table,
        Err(e) => {
            // Not TOML: one error, where the parser stopped.
            let line = e
                .span()
                .map(|span| {
                    format!(
                        ":{}",
                        1 + text[..span.start.min(text.len())].matches('\n').count()
                    )
                })
                .unwrap_or_default();
            errors.push(format!(
                "config file {}{line}: {}",
                path.display(),
                e.message().trim()
            ));
            return (FileConfig::default(), keys);
        }
    };
    // Each key alone: the ones whose file form differs go to `FileForms`, the
    // rest to `ServeArgs`; a key neither knows is reported with the nearest known one.
    let (mut forms, mut options) = (toml::Table::new(), toml::Table::new());
    for (key, value) in table {
        let line = key_line(&text, &key);
        let located = || {
            format!(
                "config file {}{}",
                path.display(),
                line.map(|l| format!(":{l}")).unwrap_or_default()
            )
        };
        let alone = || toml::Value::Table(toml::Table::from_iter([(key.clone(), value.clone())]));
        let unknown = |e: &toml::de::Error| e.message().starts_with("unknown field");
        let bad = |e: toml::de::Error| format!("{}: {key}: {}", located(), e.message().trim());
        match FileForms::deserialize(alone()) {
            Ok(_) => {
                forms.insert(key.clone(), value);
            }
            Err(form) if unknown(&form) => match ServeArgs::deserialize(alone()) {
                Ok(_) => {
                    options.insert(key.clone(), value);
                }
                Err(option) if unknown(&option) => {
                    // serde's messages list the known keys: "unknown field `x`, expected one of `a`, `b`".
                    let known = [form.message(), option.message()]
                        .into_iter()
                        .flat_map(|message| {
                            let expected =
                                message.split_once("expected").map_or("", |(_, list)| list);
                            expected.split('`').skip(1).step_by(2)
                        })
                        .min_by_key(|k| strsim::levenshtein(k, &key))
                        .filter(|k| strsim::levenshtein(k, &key) <= 3);
                    let hint = known
                        .map(|k| format!("; did you mean `{k}`?"))
                        .unwrap_or_default();
                    errors.push(format!("{}: `{key}` is not a key of the config file (the keys are the long option names with `_`){hint}", located()));
                }
                Err(e) => errors.push(bad(e)),
            },
            Err(e) => errors.push(bad(e)),
        }
        if let Some(line) = line {
            keys.lines.insert(key, line);
        }
    }
    // Each key deserialized alone above: these cannot fail, but say so if they do.
    let mut whole = |e: toml::de::Error| {
        errors.push(format!(
            "config file {}: {}",
            path.display(),
            e.message().trim()
        ))
    };
    let file = FileConfig {
        options: ServeArgs::deserialize(toml::Value::Table(options))
            .map_err(&mut whole)
            .unwrap_or_default(),
        forms: FileForms::deserialize(toml::Value::Table(forms))
            .map_err(&mut whole)
            .unwrap_or_default(),
    };
    (file, keys)
}

/// The line (from 1) where top-level `key` of a TOML `text` is set: `key =`,
/// `key.sub =`, `[key]`, `[key.sub]` or `[[key]]`, bare or quoted.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches('[').trim_start();
            [key, quoted.as_str()].iter().any(|k| {
                line.strip_prefix(k)
                    .is_some_and(|rest| rest.trim_start().starts_with(['=', '.', ']']))
            })
        })
        .map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_options_parse_with_precise_errors() {
        let every = |seconds| Ok(Checkpoints::Every(Duration::from_secs(seconds)));
        assert_eq!(parse_checkpoints("30s"), every(30));
        assert_eq!(parse_checkpoints("45"), every(45));
        assert_eq!(parse_checkpoints("5m"), every(300));
        assert_eq!(parse_checkpoints("1h 30m"), every(5400));
        assert_eq!(parse_checkpoints("0"), Ok(Checkpoints::Off));
        assert_eq!(parse_checkpoints("2d"), Err("`2d`: at most a day".into()));
        assert_eq!(
            parse_checkpoints("2000m"),
            Err("`2000m`: at most a day".into())
        );
        assert_eq!(
            parse_checkpoints("500ms"),
            Err("`500ms`: at least 1s (or 0 for never)".into())
        );
        assert_eq!(
            parse_checkpoints("often"),
            Err(
                "`often` is not a duration like 30s, 5m, 1h 30m or 90d (expected number at 0); 0 for never"
                    .into()
            )
        );
        let defaults = Settings::resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(
            defaults.checkpoints,
            Checkpoints::Every(Duration::from_secs(30))
        );
        assert_eq!(defaults.on_checkpoint_gap, crate::settings::GapPolicy::Fail);
        let args = ServeArgs {
            checkpoint_interval: Some("often".into()),
            on_checkpoint_gap: Some("skip".into()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("checkpoint_interval: `often` is not")),
            "{errors:?}"
        );
        assert!(
            errors.contains(
                &"on_checkpoint_gap: `skip` is not one of fail, replay, accept".to_owned()
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn reports_every_error_at_once() {
        let args = ServeArgs {
            workers: Some(0),
            partitions: Some(0),
            listen: Some("0.0.0.0:80".parse().unwrap()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("workers"));
        assert!(errors[2].starts_with("listen"));
    }

    #[test]
    fn file_values_sit_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stockflow.toml");
        std::fs::write(&path, "workers = 3\nepoch_ms = 50\n[demo]\nrate = 7\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            epoch_ms: Some(20),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, Some(None)).unwrap();
        assert_eq!(settings.workers, 3);
        assert_eq!(settings.epoch, Duration::from_millis(20));
        assert_eq!(settings.demo_rate, Some(7));
        std::fs::write(&path, "wrokers = 3\n").unwrap();
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert_eq!(
            errors,
            [format!(
                "config file {}:1: `wrokers` is not a key of the config file (the keys are the long option names with `_`); did you mean `workers`?",
                path.display()
            )]
        );
    }

    #[test]
    fn a_config_file_reports_every_error_once_with_its_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stockflow.toml");
        let text = "# stockflow\nworkers = \"two\"\nwrokers = 3\nrequest_timeout = \"often\"\noutcomes_topic = \"inventory.commands\"\n\n[[sources]]\ntopic = \"a\"\nformat = \"xml\"\n\n[demo]\nrate = 0\n";
        std::fs::write(&path, text).unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, Some(None)).unwrap_err();
        let at = |line: usize| format!("config file {}:{line}: ", path.display());
        let expected = [
            (2, "workers: invalid type: string \"two\", expected usize"),
            (3, "`wrokers` is not a key of the config file"),
            (4, "request_timeout: `often` is not a duration"),
            (
                5,
                "outcomes_topic `inventory.commands`: is also the commands topic",
            ),
            (7, "source a: format `xml` is not supported"),
            (11, "rate: must be between 1 and 1000000"),
        ];
        for (line, start) in expected {
            let wanted = format!("{}{start}", at(line));
            assert_eq!(
                errors.iter().filter(|e| e.starts_with(&wanted)).count(),
                1,
                "{wanted} once in {errors:#?}"
            );
        }
        assert_eq!(
            errors.len(),
            expected.len(),
            "nothing else, nothing twice: {errors:#?}"
        );

        // A flag that replaces the file's value: its error is the flag's, without the file's line.
        let args = ServeArgs {
            config: Some(path.clone()),
            request_timeout: Some("soon".into()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, Some(None)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("request_timeout: `soon`")),
            "{errors:#?}"
        );

        // Not TOML at all: where the parser stopped.
        std::fs::write(&path, "workers = 2\nepoch_ms = = 5\n").unwrap();
        let errors = Settings::resolve(
            &ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(&at(2)), "{errors:?}");
    }

    #[test]
    fn topics_that_would_feed_each_other_are_refused() {
        let args = ServeArgs {
            outcomes_topic: Some("inventory.commands".into()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("outcomes_topic `inventory.commands`: is also the commands topic"),
            "{errors:?}"
        );
        let args = ServeArgs {
            alerts_topic: Some("inventory.events.dlq".into()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert_eq!(errors, ["alerts_topic `inventory.events.dlq`: is the dead-letter topic of `inventory.events`; give it a topic of its own"]);
        let args = ServeArgs {
            sources: vec!["a".into(), "a.dlq".into()],
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert_eq!(
            errors,
            ["source `a.dlq`: is the dead-letter topic of `a`; give it a topic of its own"]
        );
    }

    #[test]
    fn the_dedup_window_is_validated_at_start() {
        let settings = Settings::resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(settings.dedup_window_ids, 1_000_000);
        assert_eq!(settings.dedup_window, Some(Duration::from_secs(86_400)));
        let args = ServeArgs {
            dedup_window: Some("0".into()),
            dedup_window_ids: Some(5_000),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(
            (settings.dedup_window_ids, settings.dedup_window),
            (5_000, None)
        );
        let args = ServeArgs {
            dedup_window: Some("a day".into()),
            dedup_window_ids: Some(10),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("dedup_window: `a day`")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e == "dedup_window_ids: must be between 1000 and 1000000000, got 10"),
            "{errors:?}"
        );
    }

    #[test]
    fn kpi_specs_and_retention_are_validated_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stockflow.toml");
        std::fs::write(
            &path,
            "kpi_retention = \"36h\"\n[[kpis]]\nname = \"damaged\"\nevent_type = \"stock.adjusted\"\nfilter = \"reason == 'damage'\"\ngroup_by = [\"location\"]\naggregate = \"sum\"\nfield = \"qty\"\nwindow = \"day\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(settings.kpi_retention, Duration::from_secs(36 * 3600));
        assert_eq!(settings.kpi_specs.len(), 1);
        assert_eq!(
            settings.kpi_specs[0].windows,
            vec![stockflow_dataflows::kpis::Window::Day]
        );
        std::fs::write(
            &path,
            "[[kpis]]\nname = \"x\"\nevent_type = \"stock.adjusted\"\naggregate = \"avg\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            kpi_retention: Some("ninety days".into()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("kpi_retention: `ninety days` is not")),
            "the flag's value, not the file's: {errors:?}"
        );
        let kpi = format!(
            "config file {}:1: kpis[0] (x): field: `avg` needs the numeric field it aggregates",
            path.display()
        );
        assert!(errors.contains(&kpi), "{errors:?}");
        assert_eq!(
            parse_retention("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(
            parse_retention("1d 12h").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        assert!(parse_retention("0h").is_err());
        assert_eq!(
            parse_retention("90m"),
            Err("`90m`: a whole number of hours (e.g. 90d, 36h)".into())
        );
    }

    #[test]
    fn clickhouse_options_are_validated_at_start() {
        let args = ServeArgs {
            clickhouse_url: Some("http://ch:8123".into()),
            clickhouse_batch_rows: Some(500),
            clickhouse_batch_ms: Some(250),
            clickhouse_user: Some("writer".into()),
            ..Default::default()
        };
        let sink = Settings::resolve(&args, None)
            .unwrap()
            .clickhouse
            .expect("the sink is on");
        assert_eq!(
            (
                sink.clickhouse.url.as_str(),
                sink.clickhouse.database.as_str(),
                sink.clickhouse.user.as_str()
            ),
            ("http://ch:8123", "stockflow", "writer")
        );
        assert_eq!(
            (sink.batch_rows, sink.batch_interval, sink.max_buffer),
            (500, Duration::from_millis(250), 1_000_000)
        );
        assert!(
            Settings::resolve(&ServeArgs::default(), None)
                .unwrap()
                .clickhouse
                .is_none(),
            "off without a URL"
        );
        let args = ServeArgs {
            clickhouse_url: Some("ch:8123".into()),
            clickhouse_database: Some("stock flow".into()),
            clickhouse_batch_rows: Some(0),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("clickhouse_url: `ch:8123` is not an http:// URL")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e
                    .starts_with("clickhouse_database: `stock flow` is not a plain identifier")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e == "clickhouse_batch_rows: between 1 and 1000000, got 0"),
            "{errors:?}"
        );
        let args = ServeArgs {
            clickhouse_url: Some("http://ch:8123".into()),
            clickhouse_batch_rows: Some(500),
            clickhouse_max_buffer: Some(100),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert_eq!(
            errors,
            ["clickhouse_max_buffer: at least clickhouse_batch_rows (500), got 100"]
        );
    }

    #[test]
    fn webhook_cap_and_networks_come_from_flags_or_the_file() {
        let defaults = Settings::resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(defaults.webhook_policy.per_tenant, 20);
        assert_eq!(
            *defaults.webhook_policy.networks,
            stockflow_sinks::webhooks::Networks::default(),
            "no lists: every network but the refused ones"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stockflow.toml");
        std::fs::write(&path, "webhooks_per_tenant = 3\nwebhook_allow_networks = [\"10.0.0.0/8\"]\nwebhook_deny_networks = [\"10.9.0.0/16\", \"192.0.2.7\"]\n")
            .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(settings.webhook_policy.per_tenant, 3);
        let shown = |nets: &[stockflow_sinks::webhooks::IpNet]| {
            nets.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&settings.webhook_policy.networks.allow),
            ["10.0.0.0/8"]
        );
        assert_eq!(
            shown(&settings.webhook_policy.networks.deny),
            ["10.9.0.0/16", "192.0.2.7/32"]
        );
        let args = ServeArgs {
            config: Some(path),
            webhooks_per_tenant: Some(0),
            webhook_allow_networks: vec!["127.0.0.1/32".into()],
            webhook_deny_networks: vec!["10.0.0.0/40".into()],
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors.contains(&"webhooks_per_tenant: must be between 1 and 10000, got 0".to_owned()),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("webhook_deny_networks: `10.0.0.0/40` is not a network")),
            "{errors:?}"
        );
        assert_eq!(
            errors.len(),
            2,
            "the flag's allow list replaced the file's and is valid: {errors:?}"
        );
    }

    #[test]
    fn sources_from_flags_with_formats_checked() {
        let args = ServeArgs {
            sources: vec!["a.events".into(), "b=stockflow".into()],
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(
            settings
                .sources
                .iter()
                .map(|s| s.topic.as_str())
                .collect::<Vec<_>>(),
            ["a.events", "b"]
        );
        let args = ServeArgs {
            sources: vec!["a@latest".into(), "b=tradex@stored".into()],
            kafka_brokers: Some("k:9092".into()),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(settings.sources[0].start, crate::source::Start::Latest);
        assert_eq!(
            (settings.sources[1].format, settings.sources[1].start),
            (crate::source::Format::Tradex, crate::source::Start::Stored)
        );
        let args = ServeArgs {
            sources: vec!["a@soon".into(), "b@stored".into()],
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e == "source a: start `soon` is not one of earliest, latest, stored"),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("start `stored` reads offsets committed to Kafka")),
            "{errors:?}"
        );
        let args = ServeArgs {
            sources: vec!["a=avro".into(), "bad/name".into(), "a".into()],
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors[0].contains("format `avro` is not supported"),
            "{errors:?}"
        );
        assert!(errors[1].contains("not a topic name"), "{errors:?}");
        // The rule the embedded log applies: `.` and `..` are refused here too, not at the first append.
        let args = ServeArgs {
            sources: vec!["..".into()],
            alerts_topic: Some(".".into()),
            ..Default::default()
        };
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("source `..`: not a topic name")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("alerts_topic `.`: not a topic name")),
            "{errors:?}"
        );
        let defaults = Settings::resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(defaults.sources.len(), 2);
        assert!(defaults.kafka.is_none());
    }

    #[test]
    fn the_defaults_are_written_once_and_shown_in_the_help() {
        let settings = Settings::default();
        assert_eq!(
            (settings.listen, settings.workers, settings.partitions),
            ("127.0.0.1:8080".parse().unwrap(), 1, 4)
        );
        assert_eq!(settings.rate_limit, Some(100));
        assert_eq!(settings.request_timeout, Duration::from_secs(40));
        assert_eq!(settings.kpi_retention, Duration::from_secs(90 * 86_400));
        assert_eq!(settings.thresholds.default, 10);
        let command = Cli::command_with_defaults();
        command.clone().debug_assert();
        let help = |path: &[&str], id: &str| {
            let sub = path.iter().fold(&command, |command, name| {
                command.find_subcommand(name).expect("a subcommand")
            });
            let arg = sub.get_arguments().find(|a| a.get_id() == id);
            arg.and_then(|a| a.get_help()).expect("help").to_string()
        };
        assert!(
            help(&["serve"], "checkpoint_interval").ends_with("unless 0) [default: 30s]"),
            "{}",
            help(&["serve"], "checkpoint_interval")
        );
        assert!(help(&["serve"], "sources").ends_with("[default: inventory.events, order.events]"));
        assert!(help(&["serve"], "listen").ends_with("[default: 127.0.0.1:8080]"));
        assert!(help(&["serve"], "log_format").ends_with("[default: pretty]"));
        assert!(help(&["demo"], "rate").ends_with("[default: 200]"));
        assert!(help(&["log", "check"], "data_dir").ends_with("[default: ./stockflow-data]"));
        assert!(help(&["replay"], "data_dir").ends_with("[default: ./stockflow-replay-<time>]"));
        assert!(!help(&["serve"], "kafka_brokers").contains("[default"));
        assert!(!help(&["serve"], "insecure_listen").contains("[default"));
    }

    #[test]
    fn file_forms_that_differ_from_the_flags_are_read_and_replaced_by_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stockflow.toml");
        std::fs::write(
            &path,
            "kafka_brokers = \"k:9092\"\nlog_format = \"json\"\nread_only = true\nheader_read_timeout = \"1m 30s\"\napi_keys = [\"0123456789abcdef:acme:read\"]\n[kafka_producer_options]\n\"compression.type\" = \"lz4\"\n[[sources]]\ntopic = \"a\"\nstart = \"stored\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(settings.log_format, LogFormat::Json);
        assert!(settings.read_only);
        assert_eq!(
            settings.http_limits.header_read_timeout,
            Duration::from_secs(90)
        );
        assert!(settings.api_keys.is_some());
        let kafka = settings.kafka.expect("kafka from the file");
        assert_eq!(kafka.brokers, "k:9092");
        assert_eq!(
            kafka.producer_options,
            [("compression.type".to_owned(), "lz4".to_owned())]
        );
        assert_eq!(settings.sources[0].start, crate::source::Start::Stored);
        let args = ServeArgs {
            config: Some(path.clone()),
            kafka_producer_options: vec!["acks=all".into()],
            sources: vec!["b".into()],
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        assert_eq!(
            settings.kafka.unwrap().producer_options,
            [("acks".to_owned(), "all".to_owned())]
        );
        assert_eq!(
            settings.sources,
            [SourceDecl::new("b", crate::source::Format::Stockflow)]
        );
        // `config` is a flag, not a key of the file; a flag form in the file is a type error.
        std::fs::write(&path, "config = \"other.toml\"\nsources = [\"a\"]\n").unwrap();
        let errors = Settings::resolve(&args, None).unwrap_err();
        assert!(
            errors[0].ends_with("`config` is not a key of the config file (the keys are the long option names with `_`)"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with(&format!(
                "config file {}:2: sources: invalid type",
                path.display()
            )),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn the_readme_table_matches_the_options() {
        let readme = include_str!("../README.md");
        let command = Cli::command_with_defaults();
        let serve = command.find_subcommand("serve").expect("serve");
        let defaults = serde_json::to_value(ServeArgs::defaults()).unwrap();
        // The first `code` of a cell.
        let code = |cell: &str| cell.split('`').nth(1).map(str::to_owned);
        let (mut documented, mut checked) = (std::collections::BTreeSet::new(), 0);
        for row in readme.lines().filter(|line| line.starts_with("| `--")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (flags, env, key, default) = (cells[1], cells[2], cells[3], cells[4]);
            for flag in flags.split(", ") {
                documented.insert(code(flag).unwrap().split(' ').next().unwrap().to_owned());
            }
            if flags.contains(", ") || flags.contains("(demo)") {
                continue;
            }
            let long = code(flags).unwrap();
            let long = long.split(' ').next().unwrap().trim_start_matches("--");
            let arg = serve
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("README names --{long}, which serve does not take"));
            let id = arg.get_id().as_str();
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()).map(str::to_owned),
                code(env),
                "the variable of --{long}"
            );
            if key.starts_with('`') && !key.starts_with("`[") {
                assert_eq!(code(key).as_deref(), Some(id), "the file key of --{long}");
            }
            let shown = match &defaults[id] {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Number(number) => number.to_string(),
                serde_json::Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|item| item.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                serde_json::Value::Bool(_) => continue,
                _ => {
                    assert!(!default.starts_with('`'), "--{long} has no default: {row}");
                    continue;
                }
            };
            assert_eq!(default.replace('`', ""), shown, "the default of --{long}");
            checked += 1;
        }
        assert!(checked >= 25, "only {checked} defaults checked");
        for arg in serve.get_arguments() {
            if let Some(long) = arg.get_long().filter(|long| *long != "config") {
                assert!(
                    documented.contains(&format!("--{long}")),
                    "--{long} is missing from README.md's table"
                );
            }
        }
    }
}
