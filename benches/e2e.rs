//! End-to-end throughput on the embedded log: append N JSON events, start the
//! engine, and time until the published views reflect every one of them
//! (decode + dedup + items + stock + stock_totals + publish).
//!
//! Run: `cargo bench --bench e2e -- [EVENTS] [WORKERS]` (defaults 1000000 1).
//! The engine runs as `serve` does (decider, alerts written to the log, dead
//! letters, change streams, KPIs); `READ_ONLY=1` writes nothing (no decider,
//! no alert events). Environment: `CHANGES_RETENTION=0` turns the changelog of change streams
//! off; `LOW_STOCK_THRESHOLD=-1000000` keeps the alert operator from raising
//! anything (this workload's levels hover around 0: with the default 10
//! nearly every row raises and clears alerts); `KPIS=off` runs without the
//! `kpis` dataflow; `CLICKHOUSE=http://127.0.0.1:8123` runs the ClickHouse
//! sink too (database `stockflow_bench`, dropped first) and also times until
//! ClickHouse holds every event (`CLICKHOUSE_BATCH_MS`: the sink's batch age,
//! default 1000).
//! Prints one line per phase with events/s.

use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow::engine::{AlertsPath, CommandPath, EngineConfig};
use stockflow::log::Log;
use stockflow::metrics::Metrics;
use stockflow::shutdown::Shutdown;
use stockflow::source::{Format, SourceSpec, Start};
use stockflow::store::Store;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let events: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let workers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let keys = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(Log::open(dir.path()).expect("log"));
    let topic = log.topic("inventory.events", 4).expect("topic");

    let start = Instant::now();
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(10_000);
    for n in 0..events {
        let key = n.wrapping_mul(2_654_435_761) % keys;
        let sku = format!("SKU-{:06}", key / 10);
        let body = format!(
            r#"{{"id":"e{n}","type":"stock.adjusted","tenant":"default","ts":{},"sku":"{sku}","location":"store-{:02}","qty":{},"reason":"sale"}}"#,
            1_700_000_000_000u64 + n as u64,
            key % 10,
            if n % 3 == 0 { 5 } else { -1 }
        );
        batch.push((format!("default/{sku}").into_bytes(), body.into_bytes()));
        if batch.len() == 10_000 || n + 1 == events {
            let records: Vec<(&[u8], &[u8], i64)> = batch
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice(), 0))
                .collect();
            topic.append_batch(&records).expect("append");
            batch.clear();
        }
    }
    let appended = start.elapsed();
    println!(
        "append   {events} events in {:.2?}: {:.0} events/s",
        appended,
        events as f64 / appended.as_secs_f64()
    );

    let store = Arc::new(Store::with_changes(
        std::env::var("CHANGES_RETENTION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(stockflow::settings::DEFAULT_CHANGES_RETENTION),
    ));
    let shutdown = Shutdown::new();
    // The default configuration: the decider (an empty commands topic),
    // alert transitions written to `alerts.events`, dead letters, all
    // through the log's appender; `READ_ONLY=1`: views only, nothing written.
    let read_only = std::env::var("READ_ONLY").is_ok_and(|v| v == "1");
    let appender: Arc<dyn stockflow::source::Appender> =
        Arc::new(stockflow::log::LogAppender::new(log.clone(), 4));
    let commands = CommandPath {
        commands: log.topic("inventory.commands", 4).expect("topic"),
        events_topic: "inventory.events".into(),
    };
    let alerts = AlertsPath {
        source: log.topic("alerts.events", 4).expect("topic"),
    };
    let config = EngineConfig {
        workers,
        epoch: Duration::from_millis(10),
        epoch_max_events: 100_000,
        sources: vec![SourceSpec {
            source: topic.clone(),
            format: Format::Stockflow,
            start: Start::Earliest,
        }],
        appender: (!read_only).then_some(appender),
        dead_letters: !read_only,
        max_in_flight: 400_000,
        dedup: stockflow_dataflows::dedup::DedupWindow {
            ids: stockflow::settings::DEFAULT_DEDUP_WINDOW_IDS,
            age_ms: Some(86_400_000),
        },
        commands: (!read_only).then_some(commands),
        // LOW_STOCK_THRESHOLD=-1000000: the alert operator runs but nothing is ever raised.
        // `KPIS=off`: the engine without the kpis dataflow, for the A/B of its cost.
        kpis: (std::env::var("KPIS").as_deref() != Ok("off")).then(Default::default),
        thresholds: stockflow_dataflows::alerts::Thresholds {
            default: std::env::var("LOW_STOCK_THRESHOLD")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10),
            ..Default::default()
        },
        alerts: (!read_only).then_some(alerts),
        restore: None,
        on_gap: Default::default(),
    };
    let metrics = Metrics::new();
    let clickhouse = std::env::var("CLICKHOUSE")
        .ok()
        .filter(|url| !url.is_empty());
    // The sink runs as a task of a runtime, as in the server.
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let sink = clickhouse.as_ref().map(|url| {
        let config = stockflow_sinks::clickhouse::Config {
            url: url.clone(),
            database: "stockflow_bench".into(),
            user: String::new(),
            password: String::new(),
        };
        let client = stockflow_sinks::clickhouse::ClickHouse::new(&config);
        runtime
            .block_on(client.execute("DROP DATABASE IF EXISTS stockflow_bench"))
            .expect("dropping the bench database");
        let inputs = stockflow::sink::SinkInputs {
            sources: vec![(
                topic.clone() as Arc<dyn stockflow::source::Source>,
                Format::Stockflow,
            )],
            alerts: None,
        };
        let mut settings = stockflow::settings::SinkSettings::new(config);
        // CLICKHOUSE_BATCH_MS: the age at which a partial batch is written (default 1000).
        if let Some(ms) = std::env::var("CLICKHOUSE_BATCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            settings.batch_interval = Duration::from_millis(ms);
        }
        stockflow::sink::start(
            settings,
            inputs,
            store.clone(),
            metrics.clone(),
            runtime.handle(),
        )
    });
    let start = Instant::now();
    let engine = stockflow::engine::start(config, store.clone(), metrics.clone(), shutdown.clone())
        .expect("engine");
    while store.readiness().is_err() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let caught_up = start.elapsed();
    let snapshot = store.snapshot();
    let on_hand: i64 = snapshot.stock.values().map(|d| d.on_hand).sum();
    let expected: i64 = (0..events).map(|n| if n % 3 == 0 { 5 } else { -1 }).sum();
    assert_eq!(
        on_hand, expected,
        "the views reflect every event exactly once"
    );
    println!(
        "ingest   {events} events, {workers} worker(s), {} stock rows, epoch {}: {:.2?}, {:.0} events/s",
        snapshot.stock.len(),
        snapshot.as_of.epoch,
        caught_up,
        events as f64 / caught_up.as_secs_f64()
    );
    if let Some(sink) = sink {
        while metrics.sink_rows.with_label_values(&["events"]).get() < events as u64 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let written = start.elapsed();
        let rows: u64 = ["events", "stock_changes", "stock_current"]
            .iter()
            .map(|t| metrics.sink_rows.with_label_values(&[t]).get())
            .sum();
        println!(
            "sink     {events} events in ClickHouse after {:.2?}: {:.0} events/s; {rows} rows in all, {:.0} rows/s",
            written,
            events as f64 / written.as_secs_f64(),
            rows as f64 / written.as_secs_f64()
        );
        let phase = |p: &str| {
            let h = metrics.sink_seconds.with_label_values(&[p]);
            format!(
                "{p} {:.2} s in {} calls",
                h.get_sample_sum(),
                h.get_sample_count()
            )
        };
        println!("sink     time spent: {}, {}", phase("step"), phase("write"));
        shutdown.trigger();
        engine.join().expect("engine stops");
        runtime.block_on(sink.stop());
        return;
    }
    shutdown.trigger();
    engine.join().expect("engine stops");
}
