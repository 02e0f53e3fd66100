//! Low-stock alerts and live change streams against a real listening server
//! (embedded log) and real HTTP/SSE clients: one alert per crossing, no
//! flapping inside the hysteresis band, exactly once in the alerts topic
//! across a restart, replenishment suggestions, and change streams whose
//! snapshot plus diffs rebuild the view exactly, also when resumed.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use stockflow::server::Running;
use stockflow::source::PartitionReader;

mod common;

use common::{stop, within, Client, Server};

impl Client {
    /// Posts a command, waits until the views reflect it; returns its token.
    async fn command(&self, path: &str, body: Value) -> String {
        let response = within(
            format!("POST {path}"),
            self.http
                .post(format!("{}{}", self.base, path))
                .json(&body)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status().as_u16(), 202, "{path}");
        let answer: Value = within(format!("POST {path}: the body"), response.json())
            .await
            .unwrap();
        let token = answer["token"].as_str().unwrap().to_owned();
        let (status, outcome) = self
            .get(&format!(
                "/v1/commands/{}?after={token}",
                answer["command_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(
            (status, outcome["status"].as_str()),
            (200, Some("accepted")),
            "{outcome}"
        );
        token
    }

    async fn adjust(&self, sku: &str, qty: i64) -> String {
        self.command(
            &format!("/v1/stock/{sku}/adjust"),
            json!({"location": "madrid", "qty": qty, "reason": "count"}),
        )
        .await
    }

    async fn stream(&self, path: &str, accept: &str) -> EventReader {
        let response = within(
            format!("GET {path}"),
            self.http
                .get(format!("{}{}", self.base, path))
                .header("accept", accept)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        EventReader {
            response,
            buffer: String::new(),
        }
    }
}

/// Reads server-sent events off a streaming response.
struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

impl EventReader {
    /// The next `(event, data)`, or `None` if nothing arrives within 5 s.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                return Some((event, serde_json::from_str(&data).unwrap()));
            }
            match tokio::time::timeout(Duration::from_secs(5), self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next event that is not a `progress` or a `heartbeat`.
    async fn next_event(&mut self) -> Option<(String, Value)> {
        loop {
            let (event, data) = self.next().await?;
            if event != "progress" && event != "heartbeat" {
                return Some((event, data));
            }
        }
    }

    /// Events up to and including the next `progress` or `heartbeat` at or after `epoch`.
    async fn until_progress(&mut self, epoch: u64) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        loop {
            let (event, data) = self.next().await.expect("the stream reaches the epoch");
            let done = (event == "progress" || event == "heartbeat")
                && data["epoch"].as_u64().unwrap() >= epoch;
            events.push((event, data));
            if done {
                return events;
            }
        }
    }
}

/// The alert events in the alerts topic, in order per partition.
fn alerts_topic(running: &Running) -> Vec<Value> {
    let topic = running.log.topic("alerts.events", 3).unwrap();
    let mut events = Vec::new();
    for partition in 0..topic.partitions() {
        let mut reader = topic.reader(partition, 0).unwrap();
        let mut records = Vec::new();
        while reader.read(1000, &mut records).unwrap() > 0 {}
        events.extend(
            records
                .iter()
                .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap()),
        );
    }
    events
}

async fn start(dir: &std::path::Path) -> Running {
    Server::local(dir, 2)
        .with(|settings| settings.thresholds.hysteresis = 2)
        .start_ready()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_raises_once_hovering_does_not_flap_recovery_clears_and_a_restart_writes_nothing_twice(
) {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let client = Client::new(&running);
    let mut live = client
        .stream("/v1/alerts/stream", "text/event-stream")
        .await;
    client.command("/v1/items", json!({"sku": "A", "name": "Widget", "price": "2.50", "reorder_point": 5, "target_level": 20, "stock": {"madrid": 10}})).await;
    let (_, alerts) = client.get("/v1/alerts").await;
    assert_eq!(alerts["alerts"], json!([]), "10 > 5: nothing raised");

    // Down to the threshold: raised, with the suggestion up to the target level.
    let token = client.adjust("A", -5).await;
    let (status, alerts) = client.get(&format!("/v1/alerts?after={token}")).await;
    assert_eq!(status, 200);
    let alerts = alerts["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (
            alerts[0]["kind"].as_str(),
            alerts[0]["state"].as_str(),
            alerts[0]["available"].as_i64()
        ),
        (Some("low_stock"), Some("active"), Some(5))
    );
    assert_eq!(
        (
            alerts[0]["threshold"].as_i64(),
            alerts[0]["suggested_reorder_qty"].as_i64()
        ),
        (Some(5), Some(15))
    );
    let (event, raised) = live.next_event().await.expect("the raise is streamed");
    assert_eq!(event, "alert.low_stock.raised");
    assert_eq!(
        (
            raised["sku"].as_str(),
            raised["available"].as_i64(),
            raised["suggested_reorder_qty"].as_i64()
        ),
        (Some("A"), Some(5), Some(15))
    );
    let (_, replenishment) = client.get("/v1/replenishment").await;
    assert_eq!(
        replenishment["suggestions"][0]["suggested_reorder_qty"], 15,
        "{replenishment}"
    );

    // Hovering inside the band (threshold 5, hysteresis 2: clears above 7).
    for qty in [1, -1, 2] {
        client.adjust("A", qty).await;
    }
    let (_, replenishment) = client.get("/v1/replenishment").await;
    assert_eq!(
        replenishment["suggestions"][0]["suggested_reorder_qty"], 13,
        "20 - 7 now: {replenishment}"
    );
    // Above the band: cleared.
    let token = client.adjust("A", 1).await;
    let (event, cleared) = live.next_event().await.expect("the clear is streamed");
    assert_eq!(
        (event.as_str(), cleared["available"].as_i64()),
        ("alert.low_stock.cleared", Some(8))
    );
    let (_, active) = client.get(&format!("/v1/alerts?after={token}")).await;
    assert_eq!(active["alerts"], json!([]));
    let (_, all) = client.get("/v1/alerts?state=all").await;
    assert_eq!(all["alerts"][0]["state"], "cleared");
    assert_eq!(all["alerts"][0]["transition"], 2);
    let (_, replenishment) = client.get("/v1/replenishment").await;
    assert_eq!(replenishment["suggestions"], json!([]));

    // Out of stock: both kinds raise.
    client.adjust("A", -8).await;
    let (_, active) = client.get("/v1/alerts").await;
    let kinds: Vec<&str> = active["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["low_stock", "out_of_stock"]);
    let written: Vec<String> = alerts_topic(&running)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        written,
        [
            "alert.low_stock.raised",
            "alert.low_stock.cleared",
            "alert.low_stock.raised",
            "alert.out_of_stock.raised"
        ]
    );
    stop(running).await;

    // A restart rebuilds the views from the log and computes every transition
    // again: none is written twice; the next one is written once.
    let running = start(dir.path()).await;
    let client = Client::new(&running);
    let (_, active) = client.get("/v1/alerts").await;
    assert_eq!(active["alerts"].as_array().unwrap().len(), 2, "{active}");
    assert_eq!(alerts_topic(&running).len(), 4);
    // Out of stock clears above 0 + hysteresis (2); low stock stays.
    client.adjust("A", 3).await;
    let events = alerts_topic(&running);
    assert_eq!(events.len(), 5);
    assert_eq!(
        (events[4]["type"].as_str(), events[4]["transition"].as_u64()),
        (Some("alert.out_of_stock.cleared"), Some(2))
    );
    let ids: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "ids are unique");

    // Bad parameters are precise 400s.
    let (status, problem) = client.get("/v1/alerts?state=open").await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not one of active, all"),
        "{problem}"
    );
    stop(running).await;
}

/// Applies stream rows to a multiset; a retraction of an absent row fails.
fn apply(state: &mut BTreeMap<String, i64>, row: &Value, diff: i64) {
    let count = state.entry(row.to_string()).or_default();
    *count += diff;
    assert!(
        *count == 0 || *count == 1,
        "row {row} counted {count}: a change was applied twice or out of order"
    );
    if *count == 0 {
        state.remove(&row.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_rebuilds_the_view_and_resumes_without_a_gap_or_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let client = Client::new(&running);
    for sku in ["A", "B"] {
        client
            .command(
                "/v1/items",
                json!({"sku": sku, "name": sku, "price": "1", "stock": {"madrid": 50, "lima": 5}}),
            )
            .await;
    }
    client
        .command(
            "/v1/items",
            json!({"sku": "ZZ", "name": "other", "price": "1", "stock": {"madrid": 1}}),
        )
        .await;

    // Snapshot, then changes; the prefix keeps ZZ out.
    let mut stream = client
        .stream(
            "/v1/views/stock/changes?prefix=A&heartbeat_ms=200",
            "text/event-stream",
        )
        .await;
    let mut state = BTreeMap::new();
    let mut snapshot_epoch = None;
    while snapshot_epoch.is_none() {
        let (event, data) = stream.next().await.unwrap();
        match event.as_str() {
            "snapshot" => apply(&mut state, &data["row"], 1),
            "progress" => snapshot_epoch = data["epoch"].as_u64(),
            other => panic!("unexpected {other} before the snapshot's end"),
        }
    }
    assert_eq!(state.len(), 2, "A in two locations: {state:?}");
    let mut last = snapshot_epoch.unwrap();
    for qty in [-3, 4, -1] {
        client.adjust("A", qty).await;
        client.adjust("ZZ", 1).await;
    }
    let (_, reached) = client.get("/v1/stock/A").await;
    let target = reached["as_of"]["epoch"].as_u64().unwrap();
    for (event, data) in stream.until_progress(target).await {
        match event.as_str() {
            "change" => {
                assert!(
                    data["epoch"].as_u64().unwrap() > last,
                    "changes come after the last progress"
                );
                assert_eq!(data["row"]["sku"], "A");
                apply(&mut state, &data["row"], data["diff"].as_i64().unwrap());
            }
            "progress" => last = data["epoch"].as_u64().unwrap(),
            "heartbeat" => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Drop the stream mid-way; changes happen while nobody listens.
    drop(stream);
    client.adjust("A", -2).await;
    client
        .command(
            "/v1/stock/A/reserve",
            json!({"location": "lima", "qty": 2, "reservation_id": "r1"}),
        )
        .await;
    let mut resumed = client
        .stream(
            &format!("/v1/views/stock/changes?prefix=A&from_epoch={last}&heartbeat_ms=200"),
            "application/x-ndjson",
        )
        .await;
    let (_, listing) = client.get("/v1/stock?limit=10").await;
    let target = listing["as_of"]["epoch"].as_u64().unwrap();
    let mut buffer = String::new();
    'read: loop {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resumed.response.chunk())
            .await
            .expect("the stream goes on")
            .unwrap()
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find('\n') {
            let line: Value = serde_json::from_str(&buffer[..end]).unwrap();
            buffer.drain(..=end);
            if line["progress"] == true || line["heartbeat"] == true {
                if line["epoch"].as_u64().unwrap() >= target {
                    break 'read;
                }
            } else {
                assert!(
                    line["epoch"].as_u64().unwrap() > last,
                    "no change at or before the resume point: {line}"
                );
                apply(&mut state, &line["row"], line["diff"].as_i64().unwrap());
            }
        }
    }
    let expected: BTreeMap<String, i64> = listing["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sku"] == "A")
        .map(|r| (r.to_string(), 1))
        .collect();
    assert_eq!(
        state, expected,
        "snapshot + changes + resumed changes = the view"
    );

    // An epoch this server never published, and a view that does not exist.
    let (status, problem) = client
        .get(&format!(
            "/v1/views/stock/changes?from_epoch={}",
            reached["as_of"]["epoch"].as_u64().unwrap() + 1_000_000_000
        ))
        .await;
    assert_eq!(status, 410);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("newer than any this server published"),
        "{problem}"
    );
    let (status, problem) = client.get("/v1/views/nope/changes").await;
    assert_eq!(status, 404);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("items, stock, stock_totals, orders, low_stock, alerts"),
        "{problem}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_the_retained_changes_is_told_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::local(dir.path(), 1)
        .with(|settings| settings.changes_retention = 4)
        .start()
        .await;
    let client = Client::new(&running);
    client
        .command(
            "/v1/items",
            json!({"sku": "A", "name": "A", "price": "1", "stock": {"madrid": 50}}),
        )
        .await;
    let (_, first) = client.get("/v1/stock/A").await;
    let epoch = first["as_of"]["epoch"].as_u64().unwrap();
    for _ in 0..4 {
        client.adjust("A", -1).await;
    }
    // Each adjustment is 4 row changes (stock and totals, retracted and inserted): the early ones are gone.
    let (status, problem) = client
        .get(&format!("/v1/views/stock/changes?from_epoch={epoch}"))
        .await;
    assert_eq!(status, 410);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("compacted away"),
        "{problem}"
    );
    stop(running).await;
}

/// Pages of a listing: follows `next_cursor` from the first page to the
/// last; answers every row in order and the number of pages.
async fn pages(client: &Client, path: &str, rows: &str) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(cursor) => format!("{path}&cursor={cursor}"),
            None => path.to_owned(),
        };
        let (status, body) = client.get(&page).await;
        assert_eq!(status, 200, "{page}: {body}");
        pages += 1;
        all.extend(body[rows].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (all, pages),
        }
        assert!(pages < 100, "{path} never ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_replenishment_are_paged_with_limit_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let client = Client::new(&running);
    let mut token = String::new();
    for sku in ["P1", "P2", "P3"] {
        // Empty at two locations: low_stock and out_of_stock raised at each.
        token = client
            .command("/v1/items", json!({"sku": sku, "name": "Pot", "price": "3", "reorder_point": 5, "target_level": 9, "stock": {"a": 0, "b": 0}}))
            .await;
    }
    let (status, whole) = client
        .get(&format!("/v1/alerts?limit=1000&after={token}"))
        .await;
    assert_eq!(status, 200, "{whole}");
    let whole = whole["alerts"].as_array().unwrap().clone();
    assert_eq!(whole.len(), 12, "3 skus × 2 locations × 2 kinds: {whole:?}");
    for limit in [1, 3, 5, 12] {
        let (rows, count) = pages(&client, &format!("/v1/alerts?limit={limit}"), "alerts").await;
        assert_eq!(rows, whole, "limit={limit}: every alert once, in order");
        assert_eq!(count, 12usize.div_ceil(limit), "limit={limit}");
    }
    let (status, first) = client.get("/v1/alerts?limit=5").await;
    assert_eq!(
        (status, first["alerts"].as_array().unwrap().len()),
        (200, 5),
        "the README's example: {first}"
    );
    let (rows, _) = pages(&client, "/v1/alerts?kind=out_of_stock&limit=2", "alerts").await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["kind"] == "out_of_stock"));

    let (_, whole) = client.get("/v1/replenishment?limit=1000").await;
    let whole = whole["suggestions"].as_array().unwrap().clone();
    assert_eq!(whole.len(), 6, "{whole:?}");
    assert!(whole.iter().all(|s| s["suggested_reorder_qty"] == 9));
    let (rows, count) = pages(&client, "/v1/replenishment?limit=4", "suggestions").await;
    assert_eq!((rows, count), (whole, 2));

    for (path, detail) in [
        ("/v1/alerts?limit=0", "limit: must be between 1 and 1000"),
        (
            "/v1/replenishment?limit=1001",
            "limit: must be between 1 and 1000",
        ),
        ("/v1/alerts?cursor=zzzz", "cursor"),
        ("/v1/replenishment?cursor=zzzz", "cursor"),
    ] {
        let (status, problem) = client.get(path).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{path}: {problem}"
        );
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_from_before_a_restart_is_refused_not_taken_for_one_of_the_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let client = Client::new(&running);
    client.command("/v1/items", json!({"sku": "A", "name": "Widget", "price": "2.50", "reorder_point": 5, "target_level": 20, "stock": {"madrid": 10}})).await;
    let (_, seen) = client.get("/v1/stock/A").await;
    let kept = seen["as_of"]["epoch"].as_u64().unwrap();
    // A change the client has not seen, then a restart.
    client.adjust("A", -7).await;
    stop(running).await;

    let running = start(dir.path()).await;
    let client = Client::new(&running);
    for _ in 0..3 {
        client.adjust("A", 1).await;
    }
    let (_, now) = client.get("/v1/stock/A").await;
    assert!(
        now["as_of"]["epoch"].as_u64().unwrap() > kept,
        "epochs keep growing across a restart: {now}"
    );
    let (status, problem) = client
        .get(&format!("/v1/views/stock/changes?from_epoch={kept}"))
        .await;
    assert_eq!(status, 410, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("comes from before this server's last start"),
        "{problem}"
    );
    // The SSE alert stream's automatic resume (Last-Event-ID) likewise.
    let (status, problem) = client
        .send(
            reqwest::Method::GET,
            "/v1/alerts/stream",
            None,
            &[("last-event-id", &kept.to_string())],
        )
        .await;
    assert_eq!(status, 410, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("comes from before this server's last start"),
        "{problem}"
    );
    // A fresh stream is a snapshot of the view as it is now.
    let mut fresh = client
        .stream("/v1/views/stock/changes?prefix=A", "application/x-ndjson")
        .await;
    let chunk = within("the fresh snapshot", fresh.response.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(
        std::str::from_utf8(&chunk)
            .unwrap()
            .contains("\"on_hand\":6"),
        "{}",
        String::from_utf8_lossy(&chunk)
    );
    stop(running).await;
}
