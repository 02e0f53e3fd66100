//! The ClickHouse sink against real ClickHouse servers (Debian's
//! `clickhouse-server`, 18.16, installed by scripts/services.sh):
//!
//! - a server of the test's own is killed mid-workload and started again,
//!   then stockflow itself restarts: `stock_current FINAL` equals the HTTP
//!   view row for row, `events` holds each event once (plain `count()`, no
//!   FINAL), every alert transition is there once, and the `stock_changes`
//!   diffs sum to the current rows;
//! - `stockflow sink clickhouse` backfills history written before the sink
//!   existed, the serving engine takes over from its progress, and the ten
//!   queries of docs/clickhouse.md run on the shared server and answer rows.
//!
//! ClickHouse is read over its HTTP interface with plain SQL here, not
//! through the sink's own code.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use stockflow::server::{Running, INVENTORY_EVENTS, ORDER_EVENTS};
use stockflow::settings::SinkSettings;
use stockflow::source::PartitionReader;

mod common;

use common::{eventually, eventually_blocking, free_port, stop, Client, Observed, EVENTUALLY};

/// A `clickhouse-server` process of the test's own, on free loopback ports.
struct Server {
    dir: PathBuf,
    http: u16,
    child: Option<Child>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/clickhouse.xml"
        ))
        .unwrap();
        let http = free_port();
        let config = template
            .replace("@DIR@", dir.to_str().unwrap())
            .replace("@HTTP@", &http.to_string())
            .replace("@TCP@", &free_port().to_string());
        std::fs::write(dir.join("config.xml"), config).unwrap();
        let mut server = Server {
            dir: dir.to_path_buf(),
            http,
            child: None,
        };
        server.run();
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn run(&mut self) {
        // Debian installs it in /usr/sbin, not on every user's PATH.
        let binary = if Path::new("/usr/sbin/clickhouse-server").exists() {
            "/usr/sbin/clickhouse-server"
        } else {
            "clickhouse-server"
        };
        let child = Command::new(binary)
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server (scripts/services.sh installs it)");
        self.child = Some(child);
        let what = format!("clickhouse-server listening (see {})", self.dir.display());
        eventually_blocking(what, Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", self.http)).map(drop)
        });
    }

    /// SIGKILL: no goodbye, whatever it was doing.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `sql` on `url`'s database `db`; the rows as tab-separated fields.
async fn query(url: &str, db: &str, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let response = Client::at(url)
        .http
        .post(format!("{url}/?database={db}"))
        .body(format!("{sql} FORMAT TabSeparated"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    Ok(text
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect())
}

/// `tenant/sku/location` → `[on_hand, reserved, available]` of every HTTP
/// `stock` row of the workload's tenants.
async fn http_stock(client: &Client) -> BTreeMap<String, [i64; 3]> {
    let mut rows = BTreeMap::new();
    for tenant in ["acme", "default"] {
        rows.append(&mut http_stock_of(client, tenant).await);
    }
    rows
}

async fn http_stock_of(client: &Client, tenant: &str) -> BTreeMap<String, [i64; 3]> {
    let mut rows = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = client
            .get(&format!("/v1/stock?tenant={tenant}&limit=1000{cursor}"))
            .await;
        assert_eq!(status, 200, "{page}");
        for row in page["rows"].as_array().unwrap() {
            let key = format!(
                "{}/{}/{}",
                row["tenant"].as_str().unwrap(),
                row["sku"].as_str().unwrap(),
                row["location"].as_str().unwrap()
            );
            rows.insert(
                key,
                [
                    row["on_hand"].as_i64().unwrap(),
                    row["reserved"].as_i64().unwrap(),
                    row["available"].as_i64().unwrap(),
                ],
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return rows,
        }
    }
}

async fn clickhouse_stock(url: &str, db: &str) -> Result<BTreeMap<String, [i64; 3]>, String> {
    let rows = query(url, db, "SELECT tenant, sku, location, on_hand, reserved, available FROM stock_current FINAL WHERE deleted = 0").await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                format!("{}/{}/{}", r[0], r[1], r[2]),
                [
                    r[3].parse().unwrap(),
                    r[4].parse().unwrap(),
                    r[5].parse().unwrap(),
                ],
            )
        })
        .collect())
}

/// A counter of `/metrics` (0 when absent).
async fn metric(client: &Client, name: &str) -> u64 {
    let text = client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Appends `events` (keyed by sku or order) to `topic`; returns an `after` token.
fn append(running: &Running, topic: &str, events: &[Value]) -> String {
    let log = running.log.topic(topic, 3).unwrap();
    let mut tokens = Vec::new();
    for event in events {
        let key = format!(
            "{}/{}",
            event["tenant"].as_str().unwrap_or("default"),
            event["sku"]
                .as_str()
                .or(event["order_id"].as_str())
                .unwrap_or("")
        );
        let (partition, offset) = log
            .append(
                key.as_bytes(),
                event.to_string().as_bytes(),
                1_700_000_000_000,
            )
            .unwrap();
        tokens.push(format!("{topic}:{partition}:{offset}"));
    }
    tokens.join(",")
}

/// Round `round` of the workload: items (some below their threshold: alerts),
/// adjustments that raise and clear alerts, orders; `(inventory, orders)`.
fn workload(round: usize) -> (Vec<Value>, Vec<Value>) {
    let mut inventory = Vec::new();
    let mut orders = Vec::new();
    for i in 0..20 {
        let sku = format!("SKU-{round}-{i:02}");
        let tenant = if i % 4 == 0 { "acme" } else { "default" };
        inventory.push(
            json!({"id": format!("i-{sku}"), "tenant": tenant, "type": "item.created", "ts": format!("2026-11-{:02}T{:02}:10:00Z", 20 + round, 8 + i % 10),
            "sku": sku, "name": sku, "price": "2.50", "reorder_point": 5, "stock": {"madrid": 3 + i, "bilbao": 20}}),
        );
        for j in 0..5 {
            // Madrid ends at `i`: rows 0..=5 end below their reorder point (alerts).
            let qty = if j % 2 == 0 { -2 } else { 1 };
            inventory.push(json!({"id": format!("a-{sku}-{j}"), "tenant": tenant, "type": "stock.adjusted", "ts": format!("2026-11-{:02}T{:02}:{:02}:00Z", 20 + round, 9 + j, i),
                "sku": sku, "location": if j < 3 { "madrid" } else { "bilbao" }, "qty": qty, "reason": if j == 0 { "damage" } else { "count" }}));
        }
        orders.push(json!({"id": format!("o-{sku}"), "tenant": tenant, "type": "order.placed", "ts": format!("2026-11-{:02}T{:02}:30:00Z", 20 + round, 10 + i % 8),
            "order_id": format!("ord-{sku}"), "customer_id": format!("c{}", i % 3), "lines": [{"sku": sku, "location": "bilbao", "qty": 1 + i % 3, "price": "2.50"}],
            "total": format!("{}.{}", (1 + i % 3) * 5 / 2, if (1 + i % 3) % 2 == 1 { "50" } else { "00" })}));
    }
    // A duplicate delivery (same id): one event for the views, two messages in the log.
    inventory.push(inventory[1].clone());
    (inventory, orders)
}

/// Alert events in the alerts topic.
fn alert_events(running: &Running) -> u64 {
    let topic = running.log.topic("alerts.events", 3).unwrap();
    let mut count = 0;
    for partition in 0..topic.partitions() {
        let mut reader = topic.reader(partition, 0).unwrap();
        let mut records = Vec::new();
        while reader.read(1000, &mut records).unwrap() > 0 {
            count += records.len() as u64;
            records.clear();
        }
    }
    count
}

/// Events the log holds: every message decodes to one event.
fn events_in(rounds: &[(Vec<Value>, Vec<Value>)]) -> usize {
    rounds.iter().map(|(i, o)| i.len() + o.len()).sum()
}

/// Waits until ClickHouse holds exactly what stockflow's views and topics hold.
async fn wait_synced(running: &Running, url: &str, db: &str, events: usize) {
    let client = &Client::new(running);
    let what = format!("ClickHouse in sync with {events} events");
    eventually(what, Duration::from_secs(90), async || {
        let http = http_stock(client).await;
        let alerts = alert_events(running);
        match (
            clickhouse_stock(url, db).await,
            query(
                url,
                db,
                "SELECT count(), uniqExact(topic, partition, offset, idx) FROM events",
            )
            .await,
            query(url, db, "SELECT count() FROM alerts").await,
        ) {
            (Ok(stock), Ok(counts), Ok(alert_rows)) => {
                let (count, distinct): (usize, usize) =
                    (counts[0][0].parse().unwrap(), counts[0][1].parse().unwrap());
                let alert_rows: u64 = alert_rows[0][0].parse().unwrap();
                assert!(
                    count == distinct,
                    "an event was written twice: {count} rows for {distinct} positions"
                );
                assert!(
                    count <= events,
                    "more event rows ({count}) than events in the log ({events})"
                );
                if stock == http && count == events && alert_rows == alerts {
                    return Ok(());
                }
                let differ: Vec<_> = http
                    .iter()
                    .filter(|(k, v)| stock.get(*k) != Some(*v))
                    .take(3)
                    .map(|(k, v)| format!("{k}: http {v:?} clickhouse {:?}", stock.get(k)))
                    .collect();
                Err(Observed(format!(
                    "stock equal: {} ({} rows vs {}; {differ:?}), {} of {events} events, {alert_rows} of {alerts} alerts",
                    stock == http,
                    http.len(),
                    stock.len(),
                    count
                )))
            }
            (a, b, c) => Err(Observed(format!("{:?} {:?} {:?}", a.err(), b.err(), c.err()))),
        }
    })
    .await
}

fn settings_for(dir: &Path, url: &str, db: &str) -> stockflow::settings::Settings {
    let mut settings = common::local_settings(dir, 2);
    let mut sink = SinkSettings::new(stockflow_sinks::clickhouse::Config {
        url: url.into(),
        database: db.into(),
        user: String::new(),
        password: String::new(),
    });
    sink.batch_interval = Duration::from_millis(100);
    sink.batch_rows = 500;
    settings.clickhouse = Some(sink);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_and_restarts_lose_and_double_nothing() {
    let ch_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut clickhouse = Server::start(ch_dir.path());
    let (url, db) = (clickhouse.url(), "stockflow");
    let settings = settings_for(data.path(), &url, db);
    let running = common::Server::of(settings.clone()).start().await;
    let client = Client::new(&running);
    let mut rounds = Vec::new();

    // 1. Normal operation.
    let (inventory, orders) = workload(0);
    append(&running, INVENTORY_EVENTS, &inventory);
    append(&running, ORDER_EVENTS, &orders);
    rounds.push((inventory, orders));
    wait_synced(&running, &url, db, events_in(&rounds)).await;
    let tables = query(
        &url,
        db,
        "SELECT name FROM system.tables WHERE database = 'stockflow' ORDER BY name",
    )
    .await
    .unwrap();
    let tables: Vec<&str> = tables.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        tables,
        [
            "alerts",
            "events",
            "kpis",
            "sink_progress",
            "stock_changes",
            "stock_current"
        ]
    );

    // 2. ClickHouse is killed while a round is being written; the engine goes on.
    let (inventory, orders) = workload(1);
    append(&running, INVENTORY_EVENTS, &inventory[..60]);
    // A moment for the sink to start writing the round, so the kill lands mid-write.
    tokio::time::sleep(Duration::from_millis(120)).await;
    clickhouse.kill();
    append(&running, INVENTORY_EVENTS, &inventory[60..]);
    let after = append(&running, ORDER_EVENTS, &orders);
    rounds.push((inventory, orders));
    let (status, _) = client.get(&format!("/v1/stock?after={after}")).await;
    assert_eq!(status, 200, "the views go on without ClickHouse");
    eventually(
        "/ready reporting the sink retrying",
        EVENTUALLY,
        async || {
            let (status, ready) = client.get("/ready").await;
            assert_eq!(
                status, 200,
                "ClickHouse down does not make the views unready: {ready}"
            );
            let state = ready["sinks"]["clickhouse"].as_str().unwrap_or_default();
            if state.starts_with("retrying") {
                Ok(())
            } else {
                Err(ready)
            }
        },
    )
    .await;
    assert!(metric(&client, "stockflow_sink_write_failures_total").await > 0);

    // 3. ClickHouse comes back: the sink catches up, nothing lost or doubled.
    clickhouse.run();
    wait_synced(&running, &url, db, events_in(&rounds)).await;

    // 4. stockflow restarts (views rebuilt from the log, engine epochs from 1 again).
    stop(running).await;
    let running = common::Server::of(settings).start().await;
    let client = Client::new(&running);
    let (inventory, orders) = workload(2);
    append(&running, INVENTORY_EVENTS, &inventory);
    append(&running, ORDER_EVENTS, &orders);
    rounds.push((inventory, orders));
    wait_synced(&running, &url, db, events_in(&rounds)).await;

    // The changelog adds up to the current rows, key by key.
    let summed = query(
        &url,
        db,
        "SELECT tenant, sku, location, sum(on_hand * diff), sum(reserved * diff), sum(available * diff) FROM stock_changes GROUP BY tenant, sku, location HAVING sum(diff) != 0",
    )
    .await
    .unwrap();
    let summed: BTreeMap<String, [i64; 3]> = summed
        .into_iter()
        .map(|r| {
            (
                format!("{}/{}/{}", r[0], r[1], r[2]),
                [
                    r[3].parse().unwrap(),
                    r[4].parse().unwrap(),
                    r[5].parse().unwrap(),
                ],
            )
        })
        .collect();
    assert_eq!(
        summed,
        http_stock(&client).await,
        "stock_changes does not add up to the view"
    );
    // Each committed epoch is recorded once per table, after its data.
    let progress = query(&url, db, "SELECT table, count(), uniqExact(epoch), max(epoch) FROM sink_progress GROUP BY table ORDER BY table").await.unwrap();
    assert_eq!(progress.len(), 5, "{progress:?}");
    for row in &progress {
        assert_eq!(row[1], row[2], "an epoch recorded twice: {row:?}");
    }
    let max_epoch: u64 = progress[0][3].parse().unwrap();
    let above = query(
        &url,
        db,
        &format!("SELECT count() FROM events WHERE epoch > {max_epoch}"),
    )
    .await
    .unwrap();
    assert_eq!(above[0][0], "0", "rows above the last committed epoch");
    // KPI rows match the HTTP answer for a day.
    let (status, kpis) = client
        .get("/v1/kpis?window=day&from=2026-11-20T00:00:00Z&to=2026-11-23T00:00:00Z&metric=orders")
        .await;
    assert_eq!(status, 200, "{kpis}");
    let http_orders: BTreeMap<String, i64> = kpis["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["bucket"].as_str().unwrap()[..10].to_owned(),
                r["value"].as_i64().unwrap(),
            )
        })
        .collect();
    let ch_orders = query(&url, db, "SELECT toDate(bucket), toInt64(value) FROM kpis FINAL WHERE deleted = 0 AND tenant = 'default' AND window = 'day' AND metric = 'orders' ORDER BY bucket")
        .await
        .unwrap();
    let ch_orders: BTreeMap<String, i64> = ch_orders
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(ch_orders, http_orders);
    assert_eq!(http_orders.len(), 3, "{http_orders:?}");
    stop(running).await;
}

/// ```sql blocks of docs/clickhouse.md.
fn documented_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/clickhouse.md"))
        .unwrap();
    let mut queries = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(sql), "```") => {
                queries.push(sql.trim().trim_end_matches(';').to_owned());
                current = None;
            }
            (Some(sql), _) => {
                sql.push_str(line);
                sql.push('\n');
            }
            _ => {}
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_then_the_documented_queries_answer() {
    let url = std::env::var("STOCKFLOW_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let db = format!("stockflow_docs_{}", std::process::id());
    let data = tempfile::tempdir().unwrap();
    let settings = settings_for(data.path(), &url, &db);

    // History written before the sink existed...
    let mut without_sink = settings.clone();
    without_sink.clickhouse = None;
    let running = common::Server::of(without_sink).start().await;
    let rounds: Vec<_> = (0..3).map(workload).collect();
    for (inventory, orders) in &rounds {
        append(&running, INVENTORY_EVENTS, inventory);
        append(&running, ORDER_EVENTS, orders);
    }
    stop(running).await;
    // ...is backfilled by `stockflow sink clickhouse --from earliest`.
    stockflow::offline::sink(&settings).await.unwrap();
    let counts = query(
        &url,
        &db,
        "SELECT count(), uniqExact(topic, partition, offset, idx) FROM events",
    )
    .await
    .unwrap();
    assert_eq!(
        counts[0],
        [
            events_in(&rounds).to_string(),
            events_in(&rounds).to_string()
        ],
        "the backfill wrote each event once"
    );
    let stock = query(
        &url,
        &db,
        "SELECT count() FROM stock_current FINAL WHERE deleted = 0",
    )
    .await
    .unwrap();
    assert_eq!(stock[0][0], (3 * 20 * 2).to_string(), "every stock row");

    // The serving engine takes over from the backfill's progress.
    let running = common::Server::of(settings).start().await;
    wait_synced(&running, &url, &db, events_in(&rounds)).await;
    let queries = documented_queries();
    assert_eq!(
        queries.len(),
        10,
        "docs/clickhouse.md should show ten queries"
    );
    for sql in &queries {
        let rows = query(&url, &db, sql)
            .await
            .unwrap_or_else(|e| panic!("documented query failed: {e}\n{sql}"));
        assert!(
            !rows.is_empty(),
            "documented query answered no rows:\n{sql}"
        );
    }
    stop(running).await;
    query(&url, "default", &format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
}
