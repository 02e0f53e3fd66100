//! Runs that rebuild the views from the sources, act, and exit:
//! `stockflow sink clickhouse` (a backfill), `stockflow export`,
//! `stockflow dump` and `stockflow replay`.
//! Long because the four runs share the catch-up wait, the progress output and the summaries.
//!
//! `export`, `dump` and `replay` are read-only on their source
//! ([`crate::server::start_offline`]): no listener, no webhooks, no lock, no
//! checkpoint (but a replay's result in its own fresh data dir), nothing
//! created, truncated or appended; a missing data dir is an error.

use crate::config::{DumpArgs, DumpFormat, ExportArgs};
use crate::export::{event_batch, view_batch, FileWriter, PositionedEvent};
use crate::server::{Offline, Running};
use crate::settings::Settings;
use crate::source::Source;
use crate::store::Snapshot;
use crate::store::Store;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use stockflow_dataflows::model::Name;

/// A progress bar on stderr when it is a terminal (hidden otherwise).
fn bar(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {human_pos}/{human_len} messages, {per_sec}, ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Starts the engine headless (HTTP on a free loopback port, no demo) and
/// waits until its views cover what the sources held at start.
async fn caught_up(settings: &Settings, what: &str) -> anyhow::Result<Running> {
    let mut settings = settings.clone();
    settings.listen = "127.0.0.1:0".parse().expect("an address");
    settings.demo_rate = None;
    let running = crate::server::start(&settings).await?;
    wait_caught_up(&running.store, &running.shutdown, false, what).await?;
    Ok(running)
}

/// Starts an offline, read-only run ([`crate::server::start_offline`]) and
/// waits until its views cover what the sources held at start.
async fn caught_up_offline(settings: &Settings, what: &str) -> anyhow::Result<Offline> {
    let mut settings = settings.clone();
    settings.offline = true;
    settings.demo_rate = None;
    let offline = crate::server::start_offline(&settings)?;
    // The embedded log is local: a read that fails (damage in an older
    // segment) fails again, so it ends the run instead of being retried.
    let local = settings.kafka.is_none();
    if let Err(error) = wait_caught_up(&offline.store, &offline.shutdown, local, what).await {
        offline.shutdown.trigger();
        let _ = offline.wait().await;
        return Err(error);
    }
    Ok(offline)
}

/// Waits until the views of `store` cover what the sources held at start,
/// with a progress bar; with `fail_on_read_error`, the first failed source
/// read is an error.
async fn wait_caught_up(
    store: &Store,
    shutdown: &crate::shutdown::Shutdown,
    fail_on_read_error: bool,
    what: &str,
) -> anyhow::Result<()> {
    let bar = bar(0, what);
    loop {
        if shutdown.is_triggered() {
            anyhow::bail!("stopped before the views caught up");
        }
        if let Some((source, error)) = store.status.source_failure().filter(|_| fail_on_read_error)
        {
            bar.finish_and_clear();
            anyhow::bail!("reading {source} failed: {error}");
        }
        if let (Some(targets), Some((starts, _))) =
            (store.status.startup_targets(), store.status.start_offsets())
        {
            let snapshot = store.snapshot();
            let (mut total, mut reached) = (0u64, 0u64);
            for (topic, partitions) in &targets {
                for (partition, target) in partitions {
                    let start = starts
                        .get(topic)
                        .and_then(|p| p.get(partition))
                        .copied()
                        .unwrap_or(0)
                        .min(*target);
                    let at = snapshot
                        .as_of
                        .offsets
                        .get(topic)
                        .and_then(|o| o.get(partition))
                        .copied()
                        .unwrap_or(start)
                        .clamp(start, *target);
                    total += target - start;
                    reached += at - start;
                }
            }
            bar.set_length(total);
            bar.set_position(reached);
            if store.caught_up() {
                bar.finish_and_clear();
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `stockflow sink clickhouse`: reads the sources to their end at start,
/// lets the sink write everything, and stops.
pub async fn sink(settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.clickhouse.is_some(),
        "`stockflow sink clickhouse` needs --clickhouse-url (or STOCKFLOW_CLICKHOUSE_URL)"
    );
    let running = caught_up(settings, "reading the sources").await?;
    let epoch = running.store.snapshot().as_of.epoch;
    eprintln!("views caught up at engine epoch {epoch}; writing the last batches to ClickHouse");
    let (store, metrics) = (running.store.clone(), running.metrics.clone());
    running.shutdown.trigger();
    running.wait().await?;
    let state = store
        .status
        .sink_states()
        .remove("clickhouse")
        .unwrap_or_default();
    eprintln!("done: {}; sink {state}", sink_summary(&metrics));
    anyhow::ensure!(
        state == "stopped" && metrics.sink_buffered_rows.get() == 0,
        "ClickHouse did not take every row: run the command again to finish"
    );
    Ok(())
}

/// `stockflow export`.
pub async fn export(settings: &Settings, args: &ExportArgs) -> anyhow::Result<()> {
    let tenant = args.tenant.as_deref().map(Name::from);
    if args.events {
        return export_events(settings, args, tenant);
    }
    let view = args
        .view
        .as_deref()
        .context("say what to export: --view stock|items|kpis, or --events --topic T")?;
    anyhow::ensure!(
        crate::export::VIEWS.contains(&view),
        "view `{view}` cannot be exported (views: {})",
        crate::export::VIEWS.join(", ")
    );
    let mut settings = settings.clone();
    settings.clickhouse = None;
    // Read only (a server may be running on the same data dir); the newest
    // checkpoint is read, which spares re-reading what it holds.
    let running = caught_up_offline(&settings, "rebuilding the views").await?;
    let snapshot = running.store.snapshot();
    let batch = view_batch(&snapshot, view, tenant.as_ref())?;
    let mut writer = FileWriter::create(&args.out, args.format, &batch.schema())?;
    writer.write(&batch)?;
    writer.finish()?;
    eprintln!(
        "{} rows of `{view}` (as of engine epoch {}) written to {}",
        batch.num_rows(),
        snapshot.as_of.epoch,
        args.out.display()
    );
    running.shutdown.trigger();
    running.wait().await
}

/// Rows per record batch of an event export.
const EVENT_CHUNK: usize = 65_536;

fn export_events(
    settings: &Settings,
    args: &ExportArgs,
    tenant: Option<Name>,
) -> anyhow::Result<()> {
    let topic_name = args.topic.as_deref().context("--events needs --topic")?;
    let offset = |text: Option<&str>, default: Option<u64>| -> anyhow::Result<Option<u64>> {
        match text {
            None => Ok(default),
            Some("earliest") => Ok(Some(0)),
            Some("latest") => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| {
                anyhow::anyhow!("`{n}` is not an offset (a number, earliest or latest)")
            }),
        }
    };
    let from = offset(args.from.as_deref(), Some(0))?.unwrap_or(0);
    let to = offset(args.to.as_deref(), None)?;
    let format = settings
        .sources
        .iter()
        .find(|s| s.topic == topic_name)
        .map(|s| s.format)
        .unwrap_or_default();
    let topic: Arc<dyn Source> = match &settings.kafka {
        Some(kafka) => Arc::new(crate::source::kafka::KafkaTopic::open(kafka, topic_name)?),
        None => {
            let dir = &settings.data_dir;
            anyhow::ensure!(dir.is_dir(), "the data dir {} does not exist (give the data dir of a stockflow that ran, with --data-dir)", dir.display());
            let log = crate::log::Log::open_read_only(&dir.join("log")).with_context(|| {
                format!("opening the embedded log in {} read-only", dir.display())
            })?;
            log.existing_topic(topic_name)?.with_context(|| {
                format!(
                    "the embedded log in {} has no topic {topic_name}",
                    dir.display()
                )
            })?
        }
    };
    let mut ranges = Vec::new();
    for partition in 0..topic.partitions() {
        let end = topic.end_offset(partition)?;
        let stop = to.map_or(end, |to| to.min(end));
        ranges.push((partition, from.min(stop), stop));
    }
    let bar = bar(
        ranges.iter().map(|(_, a, b)| b - a).sum(),
        &format!("exporting {topic_name}"),
    );
    let mut writer: Option<FileWriter> = None;
    let (mut rows, mut written, mut undecodable) = (Vec::new(), 0usize, 0u64);
    let mut flush =
        |rows: &mut Vec<PositionedEvent>, writer: &mut Option<FileWriter>| -> anyhow::Result<()> {
            let batch = event_batch(rows);
            if writer.is_none() {
                *writer = Some(FileWriter::create(&args.out, args.format, &batch.schema())?);
            }
            writer.as_mut().expect("just created").write(&batch)?;
            written += rows.len();
            rows.clear();
            Ok(())
        };
    let mut records = Vec::new();
    let mut decoded = Vec::new();
    for (partition, start, stop) in ranges {
        let mut reader = topic.reader(partition, start)?;
        let mut idle = 0;
        while reader.position() < stop {
            records.clear();
            let before = reader.position();
            let read = reader.read(4096, &mut records)?;
            // (A reader that skips a message, a tombstone of the embedded log, moves on without returning it.)
            if read == 0 && reader.position() == before {
                idle += 1;
                anyhow::ensure!(
                    idle < 600,
                    "{topic_name}/{partition}: no message at offset {} of {stop} within a minute",
                    reader.position()
                );
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            idle = 0;
            for record in records.drain(..).filter(|r| r.offset < stop) {
                bar.inc(1);
                decoded.clear();
                if format
                    .decode(topic_name, partition, &record, &mut decoded)
                    .is_err()
                {
                    undecodable += 1;
                    continue;
                }
                for event in decoded.drain(..) {
                    if tenant.as_ref().is_none_or(|t| *t == event.tenant) {
                        rows.push(PositionedEvent {
                            topic: topic_name.to_owned(),
                            partition,
                            offset: record.offset,
                            event,
                        });
                    }
                }
                if rows.len() >= EVENT_CHUNK {
                    flush(&mut rows, &mut writer)?;
                }
            }
        }
    }
    if !rows.is_empty() || writer.is_none() {
        flush(&mut rows, &mut writer)?;
    }
    writer.expect("written above").finish()?;
    bar.finish_and_clear();
    eprintln!("{written} events of {topic_name} written to {} ({undecodable} messages that do not decode left out)", args.out.display());
    Ok(())
}

/// The views `stockflow dump` prints.
pub const DUMP_VIEWS: &[&str] = &[
    "items",
    "stock",
    "stock_totals",
    "low_stock",
    "alerts",
    "orders",
    "kpis",
    "top_skus",
    "gauges",
];

/// The rows of `view` in `snapshot` (of `tenant` only, when given), in key
/// order, shaped as the API shows them: a canonical form, the same for the
/// same input whatever the epoch size or worker count (see docs/replay.md for
/// the alert fields that depend on how input was cut into epochs).
pub fn dump_rows(
    snapshot: &Snapshot,
    view: &str,
    tenant: Option<&Name>,
) -> anyhow::Result<Vec<Value>> {
    use crate::rows;
    let keep = |t: &Name| tenant.is_none_or(|wanted| wanted == t);
    let rows: Vec<Value> = match view {
        "items" => snapshot
            .items
            .iter()
            .filter(|(k, _)| keep(&k.tenant))
            .map(|(k, row)| rows::value(rows::Item::of(k, row)))
            .collect(),
        "stock" => snapshot
            .stock
            .iter()
            .filter(|(k, _)| keep(&k.tenant))
            .map(|(k, row)| rows::value(rows::Stock::of(k, row)))
            .collect(),
        "stock_totals" => snapshot
            .stock_totals
            .iter()
            .filter(|(k, _)| keep(&k.tenant))
            .map(|(k, row)| rows::value(rows::StockTotal::of(k, row)))
            .collect(),
        "low_stock" => snapshot
            .alerts
            .iter()
            .filter(|(k, _)| keep(&k.tenant))
            .filter_map(|(k, pair)| {
                stockflow_dataflows::alert_rows::low_stock_row(pair, snapshot.stock.get(k))
                    .map(|row| rows::value(rows::LowStock::of(k, &row)))
            })
            .collect(),
        "alerts" => snapshot
            .alerts
            .iter()
            .filter(|(k, _)| keep(&k.tenant))
            .flat_map(|(k, pair)| {
                [pair.low_stock.as_ref(), pair.out_of_stock.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(move |a| (k, a))
            })
            .map(|(k, alert)| rows::value(rows::AlertRow::of(alert, snapshot.stock.get(k))))
            .collect(),
        "orders" => {
            let mut orders: Vec<_> = snapshot
                .orders
                .iter()
                .filter(|((t, _), _)| keep(t))
                .collect();
            orders.sort_by(|a, b| a.0.cmp(b.0));
            orders
                .into_iter()
                .map(|((t, id), row)| rows::value(rows::Order::of(t, id, row)))
                .collect()
        }
        "kpis" => snapshot
            .kpis
            .iter()
            .filter(|(k, _)| keep(&k.tenant))
            .map(|(key, value)| rows::value(rows::Kpi::of(key, *value)))
            .collect(),
        "top_skus" => snapshot
            .top_skus
            .iter()
            .filter(|((t, _), _)| keep(t))
            .map(|((t, day), top)| rows::value(rows::TopSkusRow::of(t, *day, Some(top))))
            .collect(),
        "gauges" => snapshot
            .gauges
            .iter()
            .filter(|(t, _)| keep(t))
            .map(|(t, gauges)| {
                let mut row = serde_json::Map::new();
                row.insert("tenant".into(), Value::from(t.as_str()));
                for (metric, value) in gauges.values() {
                    row.insert(metric.into(), value.json());
                }
                Value::Object(row)
            })
            .collect(),
        other => anyhow::bail!(
            "view `{other}` cannot be dumped (views: {})",
            DUMP_VIEWS.join(", ")
        ),
    };
    Ok(rows)
}

/// Rows as NDJSON: one per line, each ending in a newline.
fn ndjson(rows: &[Value]) -> String {
    rows.iter().map(|row| row.to_string() + "\n").collect()
}

/// `stockflow dump`: rebuilds the views (from the data dir's checkpoint with
/// `--use-checkpoint`), prints one as canonical JSON, and stops.
pub async fn dump(settings: &Settings, args: &DumpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        DUMP_VIEWS.contains(&args.view.as_str()),
        "view `{}` cannot be dumped (views: {})",
        args.view,
        DUMP_VIEWS.join(", ")
    );
    let tenant = args.tenant.as_deref().map(Name::from);
    let mut settings = settings.clone();
    settings.clickhouse = None;
    // Read only, and from the sources alone unless told to use the checkpoint.
    if !args.use_checkpoint {
        settings.checkpoints = crate::settings::Checkpoints::Off;
    }
    let running = caught_up_offline(&settings, "rebuilding the views").await?;
    let snapshot = running.store.snapshot();
    running.shutdown.trigger();
    running.wait().await?;
    let rows = dump_rows(&snapshot, &args.view, tenant.as_ref())?;
    let text = match args.format {
        DumpFormat::Ndjson => ndjson(&rows),
        DumpFormat::Json => serde_json::to_string_pretty(&rows)? + "\n",
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} rows of `{}` written to {}",
                rows.len(),
                args.view,
                path.display()
            );
        }
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// `stockflow replay`: rebuilds every view from the range of the sources
/// into a fresh data dir (its checkpoint, which `serve` resumes from), the
/// `--out` files and, with `--clickhouse-url`, ClickHouse; prints a summary.
pub async fn replay(settings: &Settings, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let replay = settings
        .replay
        .as_ref()
        .context("a replay needs its range")?;
    let checkpoints = crate::checkpoint::dir_of(&settings.data_dir);
    if let Some(manifest) = crate::checkpoint::newest_manifest(&checkpoints) {
        anyhow::bail!(
            "{} already holds checkpoint {}: a replay writes into a fresh data dir (choose another --data-dir, or remove it)",
            settings.data_dir.display(),
            manifest.id
        );
    }
    let started = std::time::Instant::now();
    let running = caught_up_offline(settings, "replaying").await?;
    let snapshot = running.store.snapshot();
    let metrics = running.metrics.clone();
    let elapsed = started.elapsed();
    let mut written = Vec::new();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for view in DUMP_VIEWS {
            let rows = dump_rows(&snapshot, view, None)?;
            let path = dir.join(format!("{view}.ndjson"));
            std::fs::write(&path, ndjson(&rows))
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(format!("{view} {}", rows.len()));
        }
    }
    running.shutdown.trigger();
    running.wait().await?;
    let events: u64 = settings
        .sources
        .iter()
        .map(|s| {
            metrics
                .events_in
                .with_label_values(&[s.topic.as_str()])
                .get()
        })
        .sum();
    use prometheus::core::Collector;
    let bad: u64 = metrics
        .decode_errors
        .collect()
        .iter()
        .flat_map(|family| {
            family
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value() as u64)
        })
        .sum();
    let rate = events as f64 / elapsed.as_secs_f64().max(1e-3);
    eprintln!("replayed {events} events in {:.2} s ({rate:.0} events/s); {bad} messages did not decode (left out)", elapsed.as_secs_f64());
    let range = &replay.range;
    eprintln!(
        "  range: from {:?} to {:?} (time bounds compare the {:?} time)",
        range.from, range.to, range.time_field
    );
    for (topic, partitions) in &snapshot.as_of.offsets {
        let reached: Vec<String> = partitions.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        eprintln!("  {topic} read up to {}", reached.join(","));
    }
    eprintln!(
        "  views: items {}, stock {}, stock_totals {}, orders {}, kpis {}, alerts {}",
        snapshot.items.len(),
        snapshot.stock.len(),
        snapshot.stock_totals.len(),
        snapshot.orders.len(),
        snapshot.kpis.len(),
        snapshot.alerts.len()
    );
    match crate::checkpoint::newest_manifest(&checkpoints) {
        Some(manifest) => eprintln!(
            "  data dir {}: checkpoint {} ({} events, {} bytes); `stockflow serve --data-dir {}` with the same sources resumes from it",
            settings.data_dir.display(),
            manifest.id,
            manifest.segments.iter().map(|s| s.records).sum::<u64>(),
            manifest.segments.iter().map(|s| s.bytes).sum::<u64>() + manifest.alerts.bytes,
            settings.data_dir.display()
        ),
        None => anyhow::bail!("no checkpoint was written to {}", settings.data_dir.display()),
    }
    if let Some(dir) = out {
        eprintln!("  files in {}: {}", dir.display(), written.join(", "));
    }
    if settings.clickhouse.is_some() {
        eprintln!("  ClickHouse: {}", sink_summary(&metrics));
        anyhow::ensure!(
            metrics.sink_buffered_rows.get() == 0,
            "ClickHouse did not take every row: run `stockflow sink clickhouse` to finish"
        );
    }
    Ok(())
}

/// What the ClickHouse sink committed, table by table.
fn sink_summary(metrics: &crate::metrics::Metrics) -> String {
    format!(
        "{} events, {} stock changes, {} kpi rows, {} alerts written",
        metrics.sink_rows.with_label_values(&["events"]).get(),
        metrics
            .sink_rows
            .with_label_values(&["stock_changes"])
            .get(),
        metrics.sink_rows.with_label_values(&["kpis"]).get(),
        metrics.sink_rows.with_label_values(&["alerts"]).get()
    )
}
