//! Replay, checkpoints and crash recovery against real listening servers on
//! the embedded log: the same input gives the same dumps whatever the epoch
//! size and worker count; a restart from a checkpoint (and from the previous
//! one when the newest is damaged) gives the views of a full replay, with no
//! alert transition written twice and no command decided twice; a process
//! killed with SIGKILL mid-ingestion comes back to the views of a replay.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use stockflow::log::Log;
use stockflow::server::{self, INVENTORY_EVENTS, ORDER_EVENTS};
use stockflow::settings::Settings;
use stockflow::source::PartitionReader;

mod common;

use common::{eventually, free_port, stop, Client, Server, EVENTUALLY};

/// Views whose every field is a function of the input alone (see docs/replay.md).
const EXACT_VIEWS: &[&str] = &[
    "items",
    "stock",
    "stock_totals",
    "orders",
    "kpis",
    "top_skus",
    "gauges",
];

/// One message to append: topic, key, payload.
type Message = (&'static str, String, Vec<u8>);

/// A random but reproducible history over two tenants: catalogue changes
/// (updates, a deletion and a revival), adjustments, reservations released
/// or committed (sometimes before they arrive), orders and cancellations,
/// late events (event time going backwards), duplicate deliveries and a few
/// messages that do not decode.
fn history(seed: u64, count: usize) -> Vec<Message> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out: Vec<Message> = Vec::new();
    // Three days up to now: commands over HTTP carry the current time, and
    // KPI buckets 90 days older than the newest are dropped.
    let base = (chrono::Utc::now().timestamp_millis() - 3 * 86_400_000) / 3_600_000 * 3_600_000;
    let ts = |rng: &mut SmallRng| {
        let ms = base + rng.random_range(0..3 * 86_400_000i64);
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let tenants = ["default", "acme"];
    let locations = ["madrid", "lima", "bogota"];
    for tenant in tenants {
        for s in 0..8 {
            let sku = format!("S{s}");
            let mut event = json!({"id": format!("{tenant}-c-{s}"), "tenant": tenant, "type": "item.created", "ts": ts(&mut rng), "sku": sku,
                "name": format!("Item {s}"), "price": format!("{}.{:02}", rng.random_range(1..90), rng.random_range(0..100)),
                "category": if s % 2 == 0 { "home" } else { "garden" }, "stock": {"madrid": rng.random_range(0..30), "lima": rng.random_range(0..30)}});
            if s % 3 == 0 {
                event["reorder_point"] = json!(rng.random_range(3..15));
            }
            out.push((
                INVENTORY_EVENTS,
                format!("{tenant}/{sku}"),
                event.to_string().into_bytes(),
            ));
        }
    }
    let mut reservations: Vec<(String, String, String)> = Vec::new();
    for n in 0..count {
        let tenant = tenants[rng.random_range(0..2)];
        let sku = format!("S{}", rng.random_range(0..8));
        let key = format!("{tenant}/{sku}");
        let location = locations[rng.random_range(0..3)];
        let id = format!("{tenant}-e-{n}");
        let roll = rng.random_range(0..100);
        let (topic, event) = match roll {
            0..=39 => {
                let qty = [-4, -3, -2, -1, 1, 2, 5, 12][rng.random_range(0..8)];
                (
                    INVENTORY_EVENTS,
                    json!({"id": id, "tenant": tenant, "type": "stock.adjusted", "ts": ts(&mut rng), "sku": sku, "location": location,
                        "qty": qty, "reason": "count"}),
                )
            }
            40..=54 => {
                let reservation = format!("{tenant}-r-{n}");
                reservations.push((tenant.to_owned(), sku.clone(), reservation.clone()));
                (
                    INVENTORY_EVENTS,
                    json!({"id": id, "tenant": tenant, "type": "stock.reserved", "ts": ts(&mut rng), "sku": sku, "location": location,
                        "qty": rng.random_range(1..4), "reservation_id": reservation}),
                )
            }
            55..=64 if !reservations.is_empty() => {
                let (tenant, sku, reservation) =
                    reservations.swap_remove(rng.random_range(0..reservations.len()));
                let kind = if rng.random_bool(0.5) {
                    "stock.released"
                } else {
                    "stock.committed"
                };
                let event = json!({"id": id, "tenant": tenant, "type": kind, "ts": ts(&mut rng), "reservation_id": reservation});
                out.push((
                    INVENTORY_EVENTS,
                    format!("{tenant}/{sku}"),
                    event.to_string().into_bytes(),
                ));
                continue;
            }
            65..=74 => {
                let order = format!("{tenant}-o-{n}");
                let qty = rng.random_range(1..4);
                (
                    ORDER_EVENTS,
                    json!({"id": id, "tenant": tenant, "type": "order.placed", "ts": ts(&mut rng), "order_id": order, "customer_id": "ana",
                        "lines": [{"sku": sku, "location": location, "qty": qty, "price": "2.50"}], "total": format!("{}", qty as f64 * 2.5)}),
                )
            }
            75..=78 if n > 10 => {
                let order = format!("{tenant}-o-{}", rng.random_range(0..n));
                (
                    ORDER_EVENTS,
                    json!({"id": id, "tenant": tenant, "type": "order.cancelled", "ts": ts(&mut rng), "order_id": order, "reason": "customer"}),
                )
            }
            79..=84 => (
                INVENTORY_EVENTS,
                json!({"id": id, "tenant": tenant, "type": "item.updated", "ts": ts(&mut rng), "sku": sku, "price": format!("{}.25", rng.random_range(1..50)),
                    "reorder_point": rng.random_range(2..12)}),
            ),
            85 => (
                INVENTORY_EVENTS,
                json!({"id": id, "tenant": tenant, "type": "item.deleted", "ts": ts(&mut rng), "sku": sku}),
            ),
            86 => (
                INVENTORY_EVENTS,
                json!({"id": id, "tenant": tenant, "type": "item.created", "ts": ts(&mut rng), "sku": sku, "name": "Revived", "price": "3.00"}),
            ),
            87..=93 if !out.is_empty() => {
                // A duplicate delivery of an earlier message (same key, same bytes).
                let copy = out[rng.random_range(0..out.len())].clone();
                out.push(copy);
                continue;
            }
            94 => {
                out.push((INVENTORY_EVENTS, key, b"{not json".to_vec()));
                continue;
            }
            _ => (
                INVENTORY_EVENTS,
                json!({"id": id, "tenant": tenant, "type": "stock.adjusted", "ts": ts(&mut rng), "sku": sku, "location": location, "qty": 3, "reason": "restock"}),
            ),
        };
        let key = if topic == ORDER_EVENTS {
            format!("{tenant}/{}", event["order_id"].as_str().unwrap())
        } else {
            key
        };
        out.push((topic, key, event.to_string().into_bytes()));
    }
    out
}

/// Appends messages to the embedded log of `dir` (no server running on it).
fn append(dir: &Path, messages: &[Message]) {
    let log = Log::open(&dir.join("log")).unwrap();
    for (topic, key, payload) in messages {
        log.topic(topic, 3)
            .unwrap()
            .append(key.as_bytes(), payload, 1_763_600_000_000)
            .unwrap();
    }
    log.sync().unwrap();
}

fn settings(dir: &Path, workers: usize, epoch_max_events: usize) -> Settings {
    let mut settings = common::local_settings(dir, workers);
    settings.epoch_max_events = epoch_max_events;
    settings
}

/// Every view of a caught-up server, as `stockflow dump` prints them.
fn dump_all(running: &server::Running) -> BTreeMap<&'static str, Vec<Value>> {
    let snapshot = running.store.snapshot();
    stockflow::offline::DUMP_VIEWS
        .iter()
        .map(|view| {
            (
                *view,
                stockflow::offline::dump_rows(&snapshot, view, None).unwrap(),
            )
        })
        .collect()
}

/// A full replay of `dir`'s log: offline (writes nothing), no checkpoint read.
async fn replay(
    dir: &Path,
    workers: usize,
    epoch_max_events: usize,
) -> BTreeMap<&'static str, Vec<Value>> {
    let mut settings = settings(dir, workers, epoch_max_events);
    settings.offline = true;
    settings.checkpoints = stockflow::settings::Checkpoints::Off;
    let running = Server::of(settings).start_caught_up().await;
    let views = dump_all(&running);
    stop(running).await;
    views
}

/// Asserts the exact views equal, and which alerts are active with their
/// levels (a function of the current levels with the default hysteresis of
/// 0; the threshold, target and `since` are those in force when raised).
fn assert_same_views(
    left: &BTreeMap<&'static str, Vec<Value>>,
    right: &BTreeMap<&'static str, Vec<Value>>,
    what: &str,
) {
    let sizes = |views: &BTreeMap<&'static str, Vec<Value>>| {
        views
            .iter()
            .map(|(v, rows)| (*v, rows.len()))
            .collect::<Vec<_>>()
    };
    eprintln!("{what}: {:?} vs {:?}", sizes(left), sizes(right));
    for view in EXACT_VIEWS {
        assert!(
            !left[view].is_empty(),
            "{what}: `{view}` is empty: the history should fill it"
        );
        assert_eq!(
            left[view].len(),
            right[view].len(),
            "{what}: `{view}` row counts"
        );
        for (l, r) in left[view].iter().zip(&right[view]) {
            assert_eq!(l, r, "{what}: first differing `{view}` row");
        }
    }
    let active = |views: &BTreeMap<&'static str, Vec<Value>>| -> Vec<Value> {
        views["low_stock"]
            .iter()
            .map(|row| {
                let field = |f: &str| row[f].clone();
                json!([
                    field("tenant"),
                    field("sku"),
                    field("location"),
                    field("available"),
                    field("out_of_stock")
                ])
            })
            .collect()
    };
    assert!(
        !active(left).is_empty(),
        "{what}: the history should raise some alerts"
    );
    assert_eq!(
        active(left),
        active(right),
        "{what}: active low-stock alerts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_input_gives_the_same_dump_whatever_the_epochs_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), &history(7, 1_500));
    let fine = replay(dir.path(), 1, 5).await;
    let coarse = replay(dir.path(), 2, 100_000).await;
    assert_same_views(
        &fine,
        &coarse,
        "1 worker, 5-message epochs vs 2 workers, whole-log epochs",
    );
    let bytes = |views: &BTreeMap<&'static str, Vec<Value>>| -> Vec<u8> {
        EXACT_VIEWS
            .iter()
            .flat_map(|v| serde_json::to_vec(&views[v]).unwrap())
            .collect()
    };
    assert_eq!(bytes(&fine), bytes(&coarse), "byte for byte");
}

/// The transitions written to the alerts topic: none twice, none missing
/// (each `(row, kind)` numbers its transitions 1, 2, 3, ...), and the last
/// one written of each alert is the one the `alerts` view of the last run
/// shows (subscribers were told the state the view holds).
fn assert_alerts_written_once(dir: &Path, view: &[Value]) -> usize {
    let log = Log::open(&dir.join("log")).unwrap();
    let topic = log.topic("alerts.events", 3).unwrap();
    let mut seen: BTreeMap<(String, String, String, String), Vec<u64>> = BTreeMap::new();
    let mut records = Vec::new();
    for partition in 0..topic.partitions() {
        let mut reader = topic.reader(partition, 0).unwrap();
        while reader.read(4096, &mut records).unwrap() > 0 {}
    }
    for record in &records {
        let event: Value = serde_json::from_slice(&record.payload).unwrap();
        let key = |f: &str| event[f].as_str().unwrap_or_default().to_owned();
        let kind = event["type"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        seen.entry((key("tenant"), key("sku"), key("location"), kind))
            .or_default()
            .push(event["transition"].as_u64().unwrap());
    }
    for (key, transitions) in &mut seen {
        transitions.sort_unstable();
        let expected: Vec<u64> = (1..=transitions.len() as u64).collect();
        assert_eq!(
            *transitions, expected,
            "alert transitions of {key:?}: each once, none missing"
        );
    }
    assert!(!view.is_empty());
    for row in view {
        let field = |f: &str| row[f].as_str().unwrap().to_owned();
        let key = (
            field("tenant"),
            field("sku"),
            field("location"),
            field("kind"),
        );
        let written = seen.get(&key).map_or(0, |t| t.len() as u64);
        assert_eq!(
            row["transition"].as_u64().unwrap(),
            written,
            "the view's alert {key:?} is the last one written"
        );
    }
    records.len()
}

/// Event ids written to the event topic by the decider: each once.
fn assert_decided_once(dir: &Path) -> usize {
    let log = Log::open(&dir.join("log")).unwrap();
    let topic = log.topic(INVENTORY_EVENTS, 3).unwrap();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for partition in 0..topic.partitions() {
        let mut reader = topic.reader(partition, 0).unwrap();
        let mut records = Vec::new();
        while reader.read(4096, &mut records).unwrap() > 0 {}
        for record in records {
            let Ok(event) = serde_json::from_slice::<Value>(&record.payload) else {
                continue;
            };
            let id = event["id"].as_str().unwrap_or_default();
            if id.starts_with("cmd:") || event["type"] == "reservation.rejected" {
                *ids.entry(format!(
                    "{}/{id}",
                    event["tenant"].as_str().unwrap_or("default")
                ))
                .or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "outcomes written more than once: {twice:?}"
    );
    ids.len()
}

/// Posts commands: new items and reservations, some of which are rejected.
async fn commands(client: &Client, round: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..6 {
        let sku = format!("C{round}-{n}");
        let (status, answer) = client
            .post(
                "/v1/items",
                json!({"sku": sku, "name": "Cmd", "price": "1.00", "stock": {"madrid": 6}}),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["command_id"].as_str().unwrap().to_owned());
        for qty in [4, 3] {
            let (status, answer) = client
                .post(
                    &format!("/v1/stock/{sku}/reserve"),
                    json!({"location": "madrid", "qty": qty}),
                )
                .await;
            assert_eq!(status, 202, "{answer}");
            ids.push(answer["command_id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

/// Waits until every command has an outcome.
async fn decided(client: &Client, ids: &[String]) {
    for id in ids {
        let path = format!("/v1/commands/{id}");
        client
            .get_until(&path, |status, outcome| {
                assert_eq!(status, 200, "{outcome}");
                outcome["status"] != "pending"
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_checkpoint_equals_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let all = history(11, 1_200);
    let (first, second) = all.split_at(700);
    append(dir.path(), first);

    // Run 1: reads the first part, takes commands, checkpoints at shutdown.
    let run = Server::of(settings(dir.path(), 2, 50))
        .start_caught_up()
        .await;
    let client = Client::new(&run);
    decided(&client, &commands(&client, 1).await).await;
    assert_eq!(
        run.metrics.restored_events.get(),
        0,
        "nothing to restore from yet"
    );
    stop(run).await;
    let manifest =
        stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(dir.path()))
            .expect("a checkpoint at shutdown");

    // More history while it is down, with redeliveries of messages the checkpoint holds.
    let mut later = second.to_vec();
    later.extend(first.iter().step_by(25).cloned());
    append(dir.path(), &later);

    // Run 2 resumes from the checkpoint: its views equal a full replay.
    let run = Server::of(settings(dir.path(), 1, 1_000))
        .start_caught_up()
        .await;
    // The checkpoint's compacted events: fewer than the 700 read, some.
    assert!(
        (1..700).contains(&run.metrics.restored_events.get()),
        "restored {} events",
        run.metrics.restored_events.get()
    );
    let client = Client::new(&run);
    decided(&client, &commands(&client, 2).await).await;
    let restored = dump_all(&run);
    stop(run).await;
    let newest =
        stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(dir.path())).unwrap();
    assert!(
        newest.id > manifest.id,
        "run 2 checkpointed on top of run 1's"
    );
    let full = replay(dir.path(), 2, 100).await;
    assert_same_views(
        &restored,
        &full,
        "restored from a checkpoint vs full replay",
    );
    assert!(
        assert_alerts_written_once(dir.path(), &restored["alerts"]) > 0,
        "alerts were written"
    );
    assert!(
        assert_decided_once(dir.path()) >= 36,
        "every command decided once"
    );

    // The newest checkpoint damaged: run 3 falls back to the previous one, and the views are still exact.
    let dir_of = stockflow::checkpoint::dir_of(dir.path());
    let damaged = newest.segments.last().or(newest.state.as_ref()).unwrap();
    let segment = dir_of.join(&damaged.file);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let run = Server::of(settings(dir.path(), 2, 100))
        .start_caught_up()
        .await;
    assert!(
        run.metrics.checkpoint_failures.get() >= 1,
        "the damaged checkpoint is reported"
    );
    assert!(
        run.metrics.restored_events.get() > 0,
        "the previous checkpoint is used"
    );
    let fallen_back = dump_all(&run);
    stop(run).await;
    assert_same_views(
        &fallen_back,
        &full,
        "restored from the previous checkpoint vs full replay",
    );
    assert_alerts_written_once(dir.path(), &fallen_back["alerts"]);
}

/// Waits until `GET base/ready` answers 200 (the server still running).
async fn ready(http: &reqwest::Client, base: &str, child: &mut std::process::Child) {
    eventually(
        format!("{base}/ready answering 200"),
        EVENTUALLY,
        async || {
            let answer = http.get(format!("{base}/ready")).send().await;
            if answer.as_ref().is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            assert!(child.try_wait().unwrap().is_none(), "the server exited");
            Err(answer.map(|r| r.status()))
        },
    )
    .await
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Every row of a listing, page after page.
async fn listing(http: &reqwest::Client, base: &str, path: &str, tenant: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}{path}?tenant={tenant}&limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        rows.extend(page["rows"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return rows,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_mid_ingestion_a_restart_equals_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_stockflow");
    let http = common::http_client();
    let data_dir = dir.path().to_str().unwrap();
    let (port, port2) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let spawn = |command: &str, port: u16, extra: &[&str]| {
        std::process::Command::new(binary)
            .args([
                command,
                "--data-dir",
                data_dir,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--checkpoint-interval",
                "1",
                "--epoch-ms",
                "5",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The demo generator appends events all the time; commands come over HTTP too.
    let mut child = spawn("demo", port, &["--rate", "3000"]);
    ready(&http, &base, &mut child).await;
    eventually("two checkpoints written", EVENTUALLY, async || {
        let written = metric(&http, &base, "stockflow_checkpoints_total").await;
        if written >= 2.0 {
            Ok(())
        } else {
            Err(written)
        }
    })
    .await;
    let client = Client {
        http: http.clone(),
        base: base.clone(),
    };
    commands(&client, 1).await;
    // Mid-ingestion, between checkpoints: a pause so the kill lands there.
    tokio::time::sleep(Duration::from_millis(650)).await;
    let events_before = metric(
        &http,
        &base,
        "stockflow_events_in_total{topic=\"inventory.events\"}",
    )
    .await;
    assert!(events_before > 0.0, "the demo was ingesting");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");

    // Restart: resumes from the last checkpoint written before the kill.
    let base2 = format!("http://127.0.0.1:{port2}");
    let mut child = spawn("serve", port2, &[]);
    ready(&http, &base2, &mut child).await;
    assert!(
        metric(&http, &base2, "stockflow_checkpoint_restored_events").await > 0.0,
        "restarted from a checkpoint"
    );
    let alerts = listing_alerts(&http, &base2).await;
    let mut served: BTreeMap<(&str, String), Vec<Value>> = BTreeMap::new();
    for tenant in ["default", "andina", "pacifico"] {
        for path in ["/v1/stock", "/v1/items"] {
            served.insert(
                (path, tenant.to_owned()),
                listing(&http, &base2, path, tenant).await,
            );
        }
    }
    // Stop it (SIGKILL again: the replay below must not depend on a graceful stop).
    child.kill().unwrap();
    child.wait().unwrap();

    let full = replay(dir.path(), 2, 10_000).await;
    let mut compared = 0;
    for ((path, tenant), rows) in served {
        let view = if path == "/v1/stock" {
            "stock"
        } else {
            "items"
        };
        let expected: Vec<Value> = full[view]
            .iter()
            .filter(|row| row["tenant"] == tenant.as_str())
            .cloned()
            .collect();
        assert_eq!(rows.len(), expected.len(), "{view} rows of {tenant}");
        assert_eq!(
            rows, expected,
            "{view} of {tenant}: restarted after kill -9 vs replay"
        );
        compared += rows.len();
    }
    assert!(compared > 100, "compared {compared} rows");
    assert_alerts_written_once(dir.path(), &alerts);
    assert_decided_once(dir.path());
}

/// Every alert (active or cleared) of the demo's tenants, as `GET /v1/alerts?state=all` lists them.
async fn listing_alerts(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for tenant in ["default", "andina", "pacifico"] {
        let page: Value = http
            .get(format!("{base}/v1/alerts?tenant={tenant}&state=all"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows.extend(
            page["alerts"]
                .as_array()
                .or(page["rows"].as_array())
                .expect("a list of alerts")
                .iter()
                .cloned(),
        );
    }
    rows
}

/// Runs the binary to completion; answers its status and stderr.
fn run(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_range_into_a_fresh_data_dir_and_files() {
    let (source, first_half, target, out) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let all = history(5, 900);
    let (first, second) = all.split_at(500);
    append(source.path(), first);
    append(first_half.path(), first);
    // Where the first half ends, per partition, in both logs.
    let ends: Vec<String> = {
        let log = Log::open(&source.path().join("log")).unwrap();
        let topic = log.topic(INVENTORY_EVENTS, 3).unwrap();
        (0..3)
            .map(|p| {
                format!(
                    "{p}:{}",
                    stockflow::source::Source::end_offset(topic.as_ref(), p).unwrap()
                )
            })
            .collect()
    };
    append(source.path(), second);

    // The whole log: the files are the dumps of a full replay.
    let src = source.path().to_str().unwrap();
    let whole = target.path().join("whole");
    let (ok, stderr) = run(&[
        "replay",
        "--source-dir",
        src,
        "--data-dir",
        whole.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("replayed ") && stderr.contains("checkpoint 1"),
        "a summary: {stderr}"
    );
    let full = replay(source.path(), 1, 1_000).await;
    for view in EXACT_VIEWS {
        assert_eq!(
            ndjson(&out.path().join(format!("{view}.ndjson"))),
            full[view],
            "{view}.ndjson"
        );
    }
    let manifest = stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(&whole))
        .expect("the replay's checkpoint");
    assert!(
        manifest
            .offsets
            .values()
            .flat_map(|p| p.values())
            .sum::<u64>()
            > 800,
        "the whole log"
    );
    let (loaded, _) = stockflow::checkpoint::load(&stockflow::checkpoint::dir_of(&whole));
    let loaded = loaded.expect("it loads");
    assert!(
        !loaded.events.is_empty() && loaded.events.len() < 800,
        "compacted: {} events",
        loaded.events.len()
    );

    // Up to offsets: the views of the first half alone.
    let (ok, stderr) = run(&[
        "replay",
        "--source-dir",
        src,
        "--topic",
        INVENTORY_EVENTS,
        "--topic",
        &format!("{ORDER_EVENTS}=stockflow"),
        "--to",
        &ends.join(","),
        "--data-dir",
        target.path().join("half").to_str().unwrap(),
        "--out",
        out.path().join("half").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // (order.events is bounded by the same partition offsets: compare inventory views only.)
    let half = replay(first_half.path(), 2, 50).await;
    assert_eq!(ndjson(&out.path().join("half/items.ndjson")), half["items"]);
    let stock: Vec<Value> = ndjson(&out.path().join("half/stock.ndjson"));
    assert_eq!(
        stock, half["stock"],
        "stock up to the offsets = stock of the first half"
    );
    assert_ne!(stock, full["stock"], "and not the whole log's");

    // From an event time: no KPI bucket before it.
    let hours: Vec<String> = full["kpis"]
        .iter()
        .filter(|r| r["window"] == "hour")
        .map(|r| r["bucket"].as_str().unwrap().to_owned())
        .collect();
    let cut = hours
        .iter()
        .min()
        .unwrap()
        .clone()
        .max(hours[hours.len() / 2].clone());
    let (ok, stderr) = run(&[
        "replay",
        "--source-dir",
        src,
        "--from",
        &cut,
        "--time-field",
        "event",
        "--data-dir",
        target.path().join("late").to_str().unwrap(),
        "--out",
        out.path().join("late").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let kpis = ndjson(&out.path().join("late/kpis.ndjson"));
    assert!(!kpis.is_empty());
    for row in kpis.iter().filter(|r| r["window"] == "hour") {
        assert!(
            row["bucket"].as_str().unwrap() >= cut.as_str(),
            "bucket {} before {cut}",
            row["bucket"]
        );
    }

    // A data dir that holds a checkpoint is not written over.
    let (ok, stderr) = run(&[
        "replay",
        "--source-dir",
        src,
        "--data-dir",
        whole.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("already holds checkpoint 1"),
        "{stderr}"
    );
    // Bad bounds are refused with the reason.
    let (ok, stderr) = run(&["replay", "--source-dir", src, "--from", "yesterday"]);
    assert!(
        !ok && stderr.contains("--from: `yesterday` is not earliest, latest"),
        "{stderr}"
    );

    // Serving the replay's data dir without the log it read: the checkpoint
    // resumes at offsets this (empty) log does not hold: refused, choices named.
    let (ok, stderr) = run(&[
        "serve",
        "--data-dir",
        whole.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("holds no message") && stderr.contains("--on-checkpoint-gap replay"),
        "{stderr}"
    );
}
