//! Soak: a long history over a fixed catalogue. Memory and checkpoints must
//! follow the keys, not the history.
//!
//! Run: `cargo bench --bench soak -- [MILLIONS] [KEYS] [WORKERS]` (defaults
//! 20 200000 2). The server runs in this process with its defaults
//! (decider, alerts, KPIs, change streams, checkpoints every 5 s) on an
//! embedded log; each round appends one million `stock.adjusted` events
//! spread over KEYS stock keys (KEYS/4 skus at 4 locations, created first),
//! waits until the views reflect them and a checkpoint covers them, and
//! prints a row: events so far, the process's RSS (now and peak), the
//! checkpoint's size and events, and the de-duplication ids remembered.

use serde_json::json;
use std::time::{Duration, Instant};
use stockflow::config::ServeArgs;
use stockflow::server::{self, INVENTORY_EVENTS};
use stockflow::settings::Settings;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let millions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let keys: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let workers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(millions, keys, workers));
}

/// `VmRSS` and `VmHWM` of this process, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn run(millions: usize, keys: usize, workers: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        workers: Some(workers),
        sources: vec![INVENTORY_EVENTS.into()],
        checkpoint_interval: Some("5s".into()),
        ..Default::default()
    };
    let settings = Settings::resolve(&args, None).expect("valid settings");
    let running = server::start(&settings).await.expect("server starts");
    let topic = running
        .log
        .topic(INVENTORY_EVENTS, settings.partitions)
        .expect("topic");
    let locations = ["madrid", "lima", "bogota", "quito"];
    let skus = keys / locations.len();
    let append = |records: Vec<(String, String)>| {
        let batch: Vec<(&[u8], &[u8], i64)> = records
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes(), 1_764_000_000_000))
            .collect();
        topic.append_batch(&batch).expect("append");
    };
    let mut catalogue = Vec::new();
    for n in 0..skus {
        let sku = format!("SKU-{n:07}");
        let stock: serde_json::Map<String, serde_json::Value> = locations
            .iter()
            .map(|l| (l.to_string(), json!(1_000)))
            .collect();
        let event = json!({"id": format!("c{n}"), "type": "item.created", "ts": "2026-11-20T10:00:00Z", "sku": sku, "name": "Item", "price": "9.99", "reorder_point": 10, "stock": stock});
        catalogue.push((format!("default/{sku}"), event.to_string()));
    }
    append(catalogue);
    let ends = |topic: &stockflow::log::Topic| -> Vec<u64> {
        (0..settings.partitions)
            .map(|p| topic.end_offset(p))
            .collect()
    };
    let reached = |store: &stockflow::store::Store, ends: &[u64]| {
        let snapshot = store.snapshot();
        let offsets = snapshot.as_of.offsets.get(INVENTORY_EVENTS);
        ends.iter().enumerate().all(|(p, end)| {
            offsets
                .and_then(|o| o.get(&(p as u32)))
                .is_some_and(|at| at >= end)
        })
    };
    let checkpoint_dir = stockflow::checkpoint::dir_of(dir.path());
    println!("| events | RSS (MiB) | peak RSS (MiB) | checkpoint (MB) | bytes per key | checkpoint events | dedup ids | round (s) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let started = Instant::now();
    let mut n = 0u64;
    for round in 1..=millions {
        let round_started = Instant::now();
        let mut batch = Vec::with_capacity(50_000);
        for _ in 0..1_000_000 {
            let key = (n as usize * 7_919) % (skus * locations.len());
            let (sku, location) = (key / locations.len(), locations[key % locations.len()]);
            // Mostly sales, a restock now and then: the levels wander, alerts come and go.
            let qty = if n.is_multiple_of(10) { 9 } else { -1 };
            let event = json!({"id": format!("a{n}"), "type": "stock.adjusted", "ts": "2026-11-20T11:00:00Z", "sku": format!("SKU-{sku:07}"), "location": location, "qty": qty, "reason": "sale"});
            batch.push((format!("default/SKU-{sku:07}"), event.to_string()));
            n += 1;
            if batch.len() == 50_000 {
                append(std::mem::take(&mut batch));
            }
        }
        append(batch);
        let ends = ends(&topic);
        while !reached(&running.store, &ends) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The checkpoint that covers this round.
        let manifest = loop {
            if let Some(manifest) = stockflow::checkpoint::newest_manifest(&checkpoint_dir) {
                let covered = manifest.offsets.get(INVENTORY_EVENTS).is_some_and(|o| {
                    ends.iter()
                        .enumerate()
                        .all(|(p, end)| o.get(&(p as u32)).is_some_and(|at| at >= end))
                });
                if covered {
                    break manifest;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let bytes: u64 = manifest.files().map(|f| f.bytes).sum();
        let events: u64 =
            manifest.files().map(|f| f.records).sum::<u64>() - manifest.alerts.records;
        let (now, peak) = rss();
        running.metrics.render();
        println!(
            "| {round}M | {now:.0} | {peak:.0} | {:.1} | {:.0} | {events} | {} | {:.1} |",
            bytes as f64 / 1e6,
            bytes as f64 / keys as f64,
            running.metrics.dedup_ids.get(),
            round_started.elapsed().as_secs_f64()
        );
    }
    println!(
        "{millions}M events over {keys} keys in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    running.shutdown.trigger();
    running.wait().await.expect("stops");
}
