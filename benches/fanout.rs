//! Fan-out of change streams: SUBSCRIBERS SSE clients follow the
//! `stock_totals` view while a generator appends RATE stock events per second
//! to the embedded log, for SECONDS seconds.
//!
//! Run: `cargo bench --bench fanout -- [SUBSCRIBERS] [RATE] [SECONDS] [all|prefix]`
//! (defaults 1000 100000 10 prefix). `all`: every subscriber follows the
//! whole view; `prefix`: subscriber i follows the skus `SKU-0{i % 100}…`,
//! 1% of them (a dashboard watching its department). Prints events/s ingested, diff rows delivered
//! per second (all subscribers), the latency from an epoch's publish to a
//! subscriber's `progress` event for it (p50, p99, max), and the resident
//! memory each subscriber adds (server and client side together: an upper
//! bound for the server's share).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stockflow::config::ServeArgs;
use stockflow::server;
use stockflow::settings::Settings;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let subscribers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rate: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let all = args.get(3).is_some_and(|a| a == "all");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(subscribers, rate, seconds, all));
}

async fn run(subscribers: usize, rate: u64, seconds: u64, all: bool) {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        read_only: true,
        // At 100,000 events/s the views change some 300,000 rows a second: keep
        // several seconds of them, so that a subscriber a little behind is not dropped.
        changes_retention: Some(
            std::env::var("CHANGES_RETENTION")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3_000_000),
        ),
        ..Default::default()
    };
    let settings = Settings::resolve(&args, None).unwrap();
    let running = server::start(&settings).await.unwrap();
    let base = format!("http://{}", running.addr);

    // When each epoch was published.
    let published: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    {
        let (published, mut changes) = (published.clone(), running.store.subscribe());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let epoch = *changes.borrow_and_update();
                published.lock().unwrap().insert(epoch, Instant::now());
            }
        });
    }

    let rss_before = rss_bytes();
    let rows = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let measuring = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::new();
    for i in 0..subscribers {
        let prefix = if all {
            String::new()
        } else {
            format!("SKU-0{:02}", i % 100)
        };
        let (http, url) = (
            http.clone(),
            format!("{base}/v1/views/stock_totals/changes?heartbeat_ms=1000&prefix={prefix}"),
        );
        let (rows, ready, latencies, published, measuring) = (
            rows.clone(),
            ready.clone(),
            latencies.clone(),
            published.clone(),
            measuring.clone(),
        );
        tokio::spawn(async move {
            let mut response = http
                .get(url)
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            let mut carry = String::new();
            let mut first = true;
            while let Ok(Some(chunk)) = response.chunk().await {
                carry.push_str(std::str::from_utf8(&chunk).unwrap());
                let Some(end) = carry.rfind("\n\n") else {
                    continue;
                };
                let complete: String = carry.drain(..end + 2).collect();
                let changes = complete.matches("event: change\n").count() as u64;
                if measuring.load(Ordering::Relaxed) {
                    rows.fetch_add(changes, Ordering::Relaxed);
                }
                for progress in complete.split("event: progress\ndata: {\"epoch\":").skip(1) {
                    let epoch: u64 = progress
                        .split('}')
                        .next()
                        .and_then(|e| e.parse().ok())
                        .unwrap_or(0);
                    if first {
                        first = false;
                        ready.fetch_add(1, Ordering::Relaxed);
                    } else if measuring.load(Ordering::Relaxed) {
                        if let Some(at) = published.lock().unwrap().get(&epoch) {
                            latencies.lock().unwrap().push(at.elapsed());
                        }
                    }
                }
            }
        });
    }
    while ready.load(Ordering::Relaxed) < subscribers {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_connected = rss_bytes();

    // The generator: RATE events/s in 10 ms slices, over 10,000 skus × 10 locations.
    let topic = running
        .log
        .topic("inventory.events", settings.partitions)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let generator = {
        let (stop, appended) = (stop.clone(), appended.clone());
        std::thread::spawn(move || {
            let per_slice = (rate / 100).max(1);
            let started = Instant::now();
            let mut n: u64 = 0;
            let mut slice = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Vec::with_capacity(per_slice as usize);
                for _ in 0..per_slice {
                    let key = n.wrapping_mul(2_654_435_761) % 100_000;
                    let sku = format!("SKU-{:05}", key / 10);
                    let body = format!(
                        r#"{{"id":"e{n}","type":"stock.adjusted","ts":{},"sku":"{sku}","location":"store-{}","qty":{},"reason":"sale"}}"#,
                        1_700_000_000_000u64 + n,
                        key % 10,
                        if n.is_multiple_of(3) { 5 } else { -1 }
                    );
                    batch.push((format!("default/{sku}").into_bytes(), body.into_bytes()));
                    n += 1;
                }
                let records: Vec<(&[u8], &[u8], i64)> = batch
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice(), 0))
                    .collect();
                topic.append_batch(&records).unwrap();
                appended.fetch_add(per_slice, Ordering::Relaxed);
                slice += 1;
                let next = started + Duration::from_millis(10 * slice);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    // Warm up one second, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events_in = |running: &server::Running| -> f64 {
        running
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("stockflow_events_in_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (events_at_start, epoch_at_start, in_at_start) = (
        appended.load(Ordering::Relaxed),
        running.store.snapshot().as_of.epoch,
        events_in(&running),
    );
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let events = appended.load(Ordering::Relaxed) - events_at_start;
    let epochs = running.store.snapshot().as_of.epoch - epoch_at_start;
    let ingested = events_in(&running) - in_at_start;
    stop.store(true, Ordering::Relaxed);
    generator.join().unwrap();

    let delivered = rows.load(Ordering::Relaxed);
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "subscribers {subscribers} ({}), generator {rate} events/s, measured {elapsed:.1} s",
        if all {
            "whole view each"
        } else {
            "1% of the skus each"
        }
    );
    println!("ingested   {:.0} events/s appended, {:.0} events/s through the engine, {} epochs published", events as f64 / elapsed, ingested / elapsed, epochs);
    println!(
        "delivered  {:.0} diff rows/s to all subscribers ({:.0} per subscriber)",
        delivered as f64 / elapsed,
        delivered as f64 / elapsed / subscribers as f64
    );
    println!("latency    publish -> subscriber progress: p50 {:.1?}, p99 {:.1?}, max {:.1?} ({} samples)", at(0.5), at(0.99), at(1.0), latencies.len());
    println!(
        "memory     {:.1} KiB resident per connected subscriber (server + client, idle, before the load)",
        (rss_connected.saturating_sub(rss_before)) as f64 / 1024.0 / subscribers as f64
    );
    let metrics = running.metrics.render();
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("stockflow_change_streams_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("dropped    {dropped} streams fell behind the retained changes");
    running.shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
}
