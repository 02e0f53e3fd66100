//! Restart time: a full replay of the log vs resuming from a checkpoint.
//!
//! Run: `cargo bench --bench restart -- [KEYS] [WORKERS]` (defaults 1000000 1);
//! `READ_ONLY=1` runs without the command path (no decider).
//! Appends KEYS/4 `item.created` events with stock at 4 locations (KEYS
//! stock rows) and KEYS `stock.adjusted` events (one per stock row) to an
//! embedded log, then starts the server three times on it:
//! 1. no checkpoint: time to `/ready` is a full replay of the log; the
//!    graceful stop writes a checkpoint (its time and size are printed);
//! 2. from that checkpoint: time to `/ready`;
//! 3. checkpoints off (`--checkpoint-interval 0`): a full replay again, for the ratio.
//!
//! In-process (the server's own `start`), on the machine's cores; "ready"
//! is `store.caught_up()`, what `/ready` answers 200 on.

use serde_json::json;
use std::time::{Duration, Instant};
use stockflow::config::ServeArgs;
use stockflow::log::Log;
use stockflow::server::{self, INVENTORY_EVENTS};
use stockflow::settings::Settings;

fn main() {
    // `RUST_LOG=info` shows the engine's own timings (checkpoint loaded, written).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let keys: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let workers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(keys, workers));
}

fn settings(dir: &std::path::Path, workers: usize, checkpoints: bool) -> Settings {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.to_path_buf()),
        workers: Some(workers),
        sources: vec![INVENTORY_EVENTS.into()],
        changes_retention: Some(0),
        read_only: std::env::var("READ_ONLY").is_ok(),
        checkpoint_interval: Some(if checkpoints { "30s" } else { "0" }.into()),
        ..Default::default()
    };
    Settings::resolve(&args, None).expect("valid settings")
}

/// Starts the server, waits until it has caught up; answers it and the time taken.
async fn ready(settings: &Settings) -> (server::Running, Duration) {
    let started = Instant::now();
    let running = server::start(settings).await.expect("server starts");
    while !running.store.caught_up() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (running, started.elapsed())
}

async fn run(keys: usize, workers: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    {
        let log = Log::open(&dir.path().join("log")).expect("log");
        let topic = log.topic(INVENTORY_EVENTS, 4).expect("topic");
        let locations = ["madrid", "lima", "bogota", "quito"];
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let flush = |batch: &mut Vec<(Vec<u8>, Vec<u8>)>| {
            let records: Vec<(&[u8], &[u8], i64)> = batch
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice(), 1_764_000_000_000))
                .collect();
            topic.append_batch(&records).expect("append");
            batch.clear();
        };
        for n in 0..keys / 4 {
            let sku = format!("SKU-{n:07}");
            let stock: serde_json::Map<String, serde_json::Value> = locations
                .iter()
                .map(|l| (l.to_string(), json!(20 + n % 50)))
                .collect();
            let event = json!({"id": format!("c{n}"), "type": "item.created", "ts": "2026-11-20T10:00:00Z", "sku": sku, "name": "Item", "price": "9.99", "stock": stock});
            batch.push((
                format!("default/{sku}").into_bytes(),
                event.to_string().into_bytes(),
            ));
            for (l, location) in locations.iter().enumerate() {
                let event = json!({"id": format!("a{n}-{l}"), "type": "stock.adjusted", "ts": "2026-11-20T11:00:00Z", "sku": sku, "location": location, "qty": -((n % 7) as i64) - 1, "reason": "sale"});
                batch.push((
                    format!("default/{sku}").into_bytes(),
                    event.to_string().into_bytes(),
                ));
            }
            if batch.len() >= 50_000 {
                flush(&mut batch);
            }
        }
        flush(&mut batch);
        log.sync().expect("sync");
    }
    let messages = keys / 4 * 5;
    println!(
        "log: {messages} messages ({} stock keys) appended in {:.1} s",
        keys / 4 * 4,
        started.elapsed().as_secs_f64()
    );

    let (running, full) = ready(&settings(dir.path(), workers, true)).await;
    let rows = running.store.snapshot().stock.len();
    println!(
        "full replay to ready: {:.2} s ({rows} stock rows, {:.0} messages/s)",
        full.as_secs_f64(),
        messages as f64 / full.as_secs_f64()
    );
    let stopping = Instant::now();
    let metrics = running.metrics.clone();
    running.shutdown.trigger();
    running.wait().await.expect("stops");
    let manifest =
        stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(dir.path()))
            .expect("a checkpoint at shutdown");
    let bytes: u64 = manifest.files().map(|f| f.bytes).sum();
    let events: u64 = manifest.files().map(|f| f.records).sum::<u64>() - manifest.alerts.records;
    println!(
        "checkpoint at shutdown: {:.2} s to write ({:.2} s whole stop), {:.1} MB, {events} events ({:.0} bytes per stock key)",
        metrics.checkpoint_seconds.get_sample_sum(),
        stopping.elapsed().as_secs_f64(),
        bytes as f64 / 1e6,
        bytes as f64 / (keys / 4 * 4) as f64
    );
    let first_bytes = bytes;

    let (running, resumed) = ready(&settings(dir.path(), workers, true)).await;
    assert_eq!(running.store.snapshot().stock.len(), rows, "the same views");
    assert!(
        running.metrics.restored_events.get() > 0,
        "restored from the checkpoint"
    );
    println!(
        "from the checkpoint to ready: {:.2} s",
        resumed.as_secs_f64()
    );
    running.shutdown.trigger();
    running.wait().await.expect("stops");

    let (running, again) = ready(&settings(dir.path(), workers, false)).await;
    println!(
        "full replay, checkpoints off: {:.2} s; checkpoint restart / full replay = {:.2}",
        again.as_secs_f64(),
        resumed.as_secs_f64() / again.as_secs_f64()
    );
    running.shutdown.trigger();
    running.wait().await.expect("stops");

    // The same keys written again: the checkpoint grows with keys, not history.
    let (running, _) = ready(&settings(dir.path(), workers, true)).await;
    let topic = running.log.topic(INVENTORY_EVENTS, 4).expect("topic");
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let locations = ["madrid", "lima", "bogota", "quito"];
    for n in 0..keys / 4 {
        let sku = format!("SKU-{n:07}");
        for (l, location) in locations.iter().enumerate() {
            let event = json!({"id": format!("b{n}-{l}"), "type": "stock.adjusted", "ts": "2026-11-21T11:00:00Z", "sku": sku, "location": location, "qty": 5, "reason": "restock"});
            batch.push((
                format!("default/{sku}").into_bytes(),
                event.to_string().into_bytes(),
            ));
        }
    }
    let records: Vec<(&[u8], &[u8], i64)> = batch
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice(), 1_764_000_000_000))
        .collect();
    topic.append_batch(&records).expect("append");
    let ends: Vec<u64> = (0..4).map(|p| topic.end_offset(p)).collect();
    loop {
        let snapshot = running.store.snapshot();
        let offsets = snapshot.as_of.offsets.get(INVENTORY_EVENTS);
        if ends.iter().enumerate().all(|(p, end)| {
            offsets
                .and_then(|o| o.get(&(p as u32)))
                .is_some_and(|at| at >= end)
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.shutdown.trigger();
    running.wait().await.expect("stops");
    let manifest =
        stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(dir.path()))
            .expect("a checkpoint at shutdown");
    let bytes: u64 = manifest.files().map(|f| f.bytes).sum();
    println!(
        "the same keys adjusted again ({} more events): checkpoint {:.1} MB, {:.2} times the first",
        keys / 4 * 4,
        bytes as f64 / 1e6,
        bytes as f64 / first_bytes as f64
    );
}
