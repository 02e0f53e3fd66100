//! Commands through the whole write path: HTTP → commands topic (embedded
//! log) → decider → views, on loopback, with CONNECTIONS clients posting as
//! fast as they can for SECONDS.
//!
//! Run: `cargo bench --bench commands -- [SECONDS] [CONNECTIONS] [WORKERS]`
//! (defaults 10 64 2). Prints commands/s accepted (202), p50/p99 latency of
//! the 202, and p50/p99 command-to-visible latency: from sending the POST to
//! a `GET /v1/commands/{id}?after=<token>` answering the outcome (measured on
//! one command in 20, so the reads do not dominate the load).
//!
//! The load generator runs in this process, on the same two cores as the
//! server: the figures are a floor.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow::server::{self, INVENTORY_EVENTS};
use stockflow::settings::{Settings, SourceDecl};
use stockflow::source::Format;

const SKUS: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let workers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(seconds, connections, workers));
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

async fn run(seconds: u64, connections: usize, workers: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        workers,
        rate_limit: None,
        http_limits: stockflow::settings::Limits {
            max_connections: 1024,
            ..Settings::default().http_limits
        },
        sources: vec![SourceDecl::new(INVENTORY_EVENTS, Format::Stockflow)],
        outcomes_topic: INVENTORY_EVENTS.into(),
        ..Settings::default()
    };
    let running = server::start(&settings).await.expect("server starts");
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();

    // Seed: every sku with plenty of stock.
    let mut last = String::new();
    for n in 0..SKUS {
        let body = json!({"sku": format!("B-{n:04}"), "name": "bench", "price": 1, "stock": {"m": 1_000_000}});
        let answer: Value = http
            .post(format!("{base}/v1/items"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last = answer["token"].as_str().unwrap().to_owned();
    }
    let _ = http
        .get(format!(
            "{base}/v1/stock?limit=1&after={last}&wait_ms=30000"
        ))
        .send()
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut visible = Vec::new();
            let mut n = c;
            let mut sent_here = 0usize;
            while !stop.load(Ordering::Relaxed) {
                sent_here += 1;
                let sku = format!("B-{:04}", n.wrapping_mul(2_654_435_761) % SKUS);
                let body = if n % 2 == 0 {
                    json!({"location": "m", "qty": 1})
                } else {
                    json!({"location": "m", "qty": -1, "reason": "sale"})
                };
                let path = if n % 2 == 0 { "reserve" } else { "adjust" };
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/v1/stock/{sku}/{path}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 202);
                let answer: Value = response.json().await.unwrap();
                accepted.push(sent.elapsed());
                if sent_here.is_multiple_of(20) {
                    let url = format!(
                        "{base}/v1/commands/{}?after={}&wait_ms=30000",
                        answer["command_id"].as_str().unwrap(),
                        answer["token"].as_str().unwrap()
                    );
                    let outcome: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                    assert!(
                        outcome["status"] == "accepted" || outcome["status"] == "rejected",
                        "{outcome}"
                    );
                    visible.push(sent.elapsed());
                }
                n += connections;
            }
            (accepted, visible)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    let mut visible = Vec::new();
    for task in tasks {
        let (a, v) = task.await.unwrap();
        accepted.extend(a);
        visible.extend(v);
    }
    let elapsed = started.elapsed().as_secs_f64();
    accepted.sort();
    visible.sort();
    println!(
        "commands {} in {elapsed:.1}s with {connections} connections, {workers} worker(s): {:.0} commands/s; 202 p50 {:.2} ms p99 {:.2} ms; visible p50 {:.2} ms p99 {:.2} ms ({} sampled)",
        accepted.len(),
        accepted.len() as f64 / elapsed,
        percentile(&accepted, 0.5),
        percentile(&accepted, 0.99),
        percentile(&visible, 0.5),
        percentile(&visible, 0.99),
        visible.len()
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}
