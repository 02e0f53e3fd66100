//! The HTTP API against a real listening server, fed through the embedded log.

use serde_json::{json, Value};
use std::time::Duration;
use stockflow::server::{self, Running, INVENTORY_EVENTS};
use stockflow::settings::Settings;

mod common;
use common::{append_events, eventually, stop, Client, Server, EVENTUALLY};

fn settings(dir: &std::path::Path, workers: usize) -> Settings {
    common::local_settings(dir, workers)
}

/// Appends JSON events to inventory.events, keyed `tenant/sku`; returns an `after` token covering them.
fn append(running: &Running, events: &[Value]) -> String {
    let key = |event: &Value| {
        let tenant = event["tenant"].as_str().unwrap_or("default");
        format!("{tenant}/{}", event["sku"].as_str().unwrap_or(""))
    };
    append_events(
        running,
        INVENTORY_EVENTS,
        events.iter().map(|e| (key(e), e)),
    )
}

fn append_raw(running: &Running, payload: &[u8]) -> String {
    let topic = running.log.topic(INVENTORY_EVENTS, 3).unwrap();
    let (partition, offset) = topic
        .append(b"default/x", payload, 1_700_000_000_000)
        .unwrap();
    format!("{INVENTORY_EVENTS}:{partition}:{offset}")
}

/// GETs `path`: the status, the content type and the body (as JSON, or a JSON
/// string when it is not JSON); bounded as every request of [`Client`].
async fn get(running: &Running, path: &str) -> (u16, String, Value) {
    let client = Client::new(running);
    let (status, content_type, text) = client.exchange(reqwest::Method::GET, path, None, &[]).await;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

fn created(id: &str, tenant: &str, sku: &str, category: &str, stock: Value) -> Value {
    json!({"id": id, "type": "item.created", "tenant": tenant, "sku": sku, "name": format!("Item {sku}"), "price": "9.99", "category": category, "reorder_point": 5, "stock": stock})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_reads_reflect_events_with_totals_equal_to_locations() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let token = append(
        &running,
        &[
            created(
                "e1",
                "default",
                "A-1",
                "tools",
                json!({"madrid": 10, "lima": 4}),
            ),
            json!({"id": "e2", "type": "stock.adjusted", "sku": "A-1", "location": "madrid", "qty": -3, "reason": "sale"}),
            json!({"id": "e2", "type": "stock.adjusted", "sku": "A-1", "location": "madrid", "qty": -3, "reason": "sale"}),
            json!({"id": "e3", "type": "stock.reserved", "sku": "A-1", "location": "lima", "qty": 2, "reservation_id": "r1"}),
            created("e4", "acme", "A-1", "tools", json!({"madrid": 100})),
        ],
    );
    let (status, _, body) = get(&running, &format!("/v1/stock/A-1?after={token}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["totals"]["on_hand"], 11,
        "duplicate e2 counted once: {body}"
    );
    assert_eq!(body["totals"]["reserved"], 2);
    assert_eq!(body["totals"]["available"], 9);
    let locations = body["locations"].as_array().unwrap();
    assert_eq!(locations.len(), 2);
    let sum: i64 = locations
        .iter()
        .map(|l| l["on_hand"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, body["totals"]["on_hand"].as_i64().unwrap());
    assert!(body["as_of"]["epoch"].as_u64().unwrap() > 0);
    assert!(body["as_of"]["offsets"][INVENTORY_EVENTS].is_object());

    let (status, _, acme) = get(
        &running,
        &format!("/v1/stock/A-1?tenant=acme&after={token}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        acme["totals"]["on_hand"], 100,
        "tenants are separate: {acme}"
    );

    let (status, _, item) = get(&running, "/v1/items/A-1").await;
    assert_eq!(status, 200);
    assert_eq!(item["item"]["price"], 9.99);
    assert_eq!(item["item"]["active"], true);

    let (status, _, views) = get(&running, "/v1/views").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = views["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "items",
            "stock",
            "stock_totals",
            "orders",
            "kpis",
            "top_skus"
        ]
    );
    assert_eq!(views["views"][1]["rows"], 3);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_paginate_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let mut events = Vec::new();
    for i in 0..25 {
        let category = if i % 2 == 0 { "even" } else { "odd" };
        events.push(created(
            &format!("c{i}"),
            "default",
            &format!("S-{i:02}"),
            category,
            json!({"north": i, "south": 100}),
        ));
    }
    let token = append(&running, &events);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/stock?limit=10&after={token}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, _, body) = get(&running, &path).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for row in body["rows"].as_array().unwrap() {
            seen.push(format!(
                "{}/{}",
                row["sku"].as_str().unwrap(),
                row["location"].as_str().unwrap()
            ));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 50);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are ordered and never repeat a row");

    let (_, _, below) = get(&running, "/v1/stock?location=north&below=5").await;
    let skus: Vec<&str> = below["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["S-00", "S-01", "S-02", "S-03", "S-04"]);
    let (_, _, odd) = get(&running, "/v1/stock?category=odd&location=south&limit=1000").await;
    assert_eq!(odd["rows"].as_array().unwrap().len(), 12);
    let (_, _, items) = get(&running, "/v1/items?category=even&limit=5").await;
    assert_eq!(items["rows"].as_array().unwrap().len(), 5);
    assert!(items["next_cursor"].is_string());
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_problems() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let cases = [
        ("/v1/stock?limit=abc", 400, "limit"),
        (
            "/v1/stock?limit=5000",
            400,
            "limit: must be between 1 and 1000",
        ),
        ("/v1/stock?limt=5", 400, "limt"),
        ("/v1/stock?below=x", 400, "below"),
        ("/v1/stock?cursor=zzzz", 400, "cursor"),
        (
            "/v1/stock?tenant=a%2Fb",
            400,
            "tenant: character '/' not allowed",
        ),
        ("/v1/stock/NOPE", 404, "no item or stock for sku `NOPE`"),
        ("/v1/items/NOPE", 404, "no item `NOPE`"),
        ("/v1/items/bad%20sku", 400, "sku: character ' ' not allowed"),
        ("/v1/stock?after=garbage", 400, "after"),
        (
            "/v1/stock?after=inventory.events:0:999999&wait_ms=50",
            504,
            "did not reach",
        ),
        ("/v1/nothing", 404, "no such route"),
        (
            "/v1/stock?after=orders:0:1",
            400,
            "topic `orders` is not a source",
        ),
        (
            "/v1/stock?after=inventory.events:7:1",
            400,
            "has no partition 7",
        ),
    ];
    for (path, status, detail) in cases {
        let (got, content_type, body) = get(&running, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["status"], status);
        let text = body["detail"].as_str().unwrap();
        assert!(
            text.contains(detail),
            "{path}: detail `{text}` lacks `{detail}`"
        );
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let bad_json = append_raw(&running, b"{not json");
    let bad_qty = append_raw(
        &running,
        br#"{"id":"x","type":"stock.adjusted","sku":"B","location":"m","qty":0}"#,
    );
    let good = append(
        &running,
        &[created("ok", "default", "B", "misc", json!({"m": 7}))],
    );
    let token = format!("{bad_json},{bad_qty},{good}");
    let (status, _, body) = get(&running, &format!("/v1/stock/B?after={token}")).await;
    assert_eq!(status, 200, "ingestion continued past bad messages: {body}");
    assert_eq!(body["totals"]["on_hand"], 7);
    let (status, content_type, metrics) = get(&running, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"));
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics
            .contains(r#"stockflow_decode_errors_total{reason="json",topic="inventory.events"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"stockflow_decode_errors_total{reason="invalid_field",topic="inventory.events"} 1"#
    ));
    assert!(metrics.contains(r#"stockflow_events_in_total{topic="inventory.events"} 1"#));
    assert!(metrics.contains("stockflow_epoch_latency_seconds_bucket"));
    assert!(metrics.contains(r#"stockflow_view_rows{view="stock"} 1"#));
    let dlq = running
        .log
        .existing_topic("inventory.events.dlq")
        .unwrap()
        .expect("dead letters were written");
    let mut letters = Vec::new();
    for partition in 0..dlq.partitions() {
        let mut reader = dlq.reader(partition, 0).unwrap();
        stockflow::source::PartitionReader::read(&mut reader, 100, &mut letters).unwrap();
    }
    let letters: Vec<Value> = letters
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().any(|l| l["error"]
        .as_str()
        .unwrap()
        .starts_with("not a JSON object")
        && l["payload"] == "{not json"));
    assert!(letters
        .iter()
        .any(|l| l["error"] == "field `qty`: must not be 0, got 0"
            && l["source_topic"] == INVENTORY_EVENTS));
    let (status, _, health) = get(&running, "/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, _, ready) = get(&running, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rebuilds_the_same_views_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::of(settings(dir.path(), 2)).start().await;
    let mut events = Vec::new();
    for i in 0..40 {
        events.push(created(
            &format!("c{i}"),
            "default",
            &format!("R-{i:02}"),
            "misc",
            json!({"x": i, "y": 2 * i}),
        ));
        events.push(json!({"id": format!("a{i}"), "type": "stock.adjusted", "sku": format!("R-{i:02}"), "location": "x", "qty": 1}));
    }
    let token = append(&first, &events);
    let (_, _, before) = get(&first, &format!("/v1/stock?limit=1000&after={token}")).await;
    // One process per data dir: a second is refused while the first runs.
    let refused = server::start(&settings(dir.path(), 1))
        .await
        .err()
        .expect("a second server on the same data dir is refused");
    assert!(
        format!("{refused:#}").contains(&format!(
            "is in use by another stockflow process (pid {}",
            std::process::id()
        )),
        "{refused:#}"
    );
    stop(first).await;

    let second = Server::of(settings(dir.path(), 1)).start().await;
    let (_, _, after) = get(&second, &format!("/v1/stock?limit=1000&after={token}")).await;
    assert_eq!(before["rows"], after["rows"]);
    assert_eq!(after["rows"].as_array().unwrap().len(), 80);
    stop(second).await;
}

/// The demo's promise: rows move between two reads, and every answer is one
/// whole epoch (totals equal the sum of their locations) while the generator
/// writes as fast as it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_views_move_and_stay_consistent_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = settings(dir.path(), 2);
    demo.partitions = 4;
    demo.demo_rate = Some(5_000);
    let running = Server::of(demo).start().await;
    // Partitions are read at their own pace: wait until the seeded skus read below are all there.
    eventually("the demo seeding its first skus", EVENTUALLY, async || {
        let mut missing = Vec::new();
        for sku in 0..7 {
            let sku = format!("SKU-{sku:05}");
            if get(&running, &format!("/v1/stock/{sku}")).await.0 != 200 {
                missing.push(sku);
            }
        }
        let (_, _, page) = get(&running, "/v1/stock?limit=100").await;
        let rows = page["rows"].as_array().map_or(0, Vec::len);
        if missing.is_empty() && rows == 100 {
            Ok(())
        } else {
            Err(format!("missing {missing:?}, {rows} rows of 100"))
        }
    })
    .await;
    let (_, _, first) = get(&running, "/v1/stock?limit=100").await;
    let mut checked = 0;
    for round in 0..60 {
        let sku = format!("SKU-{:05}", round % 7);
        let (status, _, body) = get(&running, &format!("/v1/stock/{sku}")).await;
        assert_eq!(status, 200, "{body}");
        let locations = body["locations"].as_array().unwrap();
        for field in ["on_hand", "reserved", "available"] {
            let sum: i64 = locations.iter().map(|l| l[field].as_i64().unwrap()).sum();
            assert_eq!(
                sum,
                body["totals"][field].as_i64().unwrap(),
                "{field} of {sku} at {}",
                body["as_of"]
            );
        }
        checked += 1;
        // Reads spread over time, so that they meet many epochs of the generator.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, _, second) = get(&running, "/v1/stock?limit=100").await;
    assert_eq!(checked, 60);
    assert!(second["as_of"]["epoch"].as_u64() > first["as_of"]["epoch"].as_u64());
    assert_ne!(
        first["rows"], second["rows"],
        "the first page moved between two reads"
    );
    stop(running).await;
}

/// `GET /openapi.json` against the real router: every documented operation
/// is served (not the fallback 404, not 405), every method a path does not
/// document is 405, every operation documents its problem answers, and the
/// reads, commands and streams of docs/api.md are all in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_served() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let (status, content_type, document) = get(&running, "/openapi.json").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let paths = document["paths"].as_object().unwrap();
    let http = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{sku}", "A-1")
            .replace("{command}", "adjust")
            .replace("{id}", "x1")
            .replace("{view}", "stock");
        assert!(
            !concrete.contains('{'),
            "a path parameter the test does not know: {path}"
        );
        for method in ["get", "post", "patch", "delete", "put"] {
            let request = http.request(
                method.to_uppercase().parse().unwrap(),
                format!("http://{}{concrete}", running.addr),
            );
            let request = if method == "get" {
                request
            } else {
                request
                    .header("content-type", "application/json")
                    .body("{}")
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = if path.ends_with("/changes") || path.ends_with("/stream") {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            match item.get(method) {
                Some(operation) => {
                    operations += 1;
                    assert!(
                        status != 405 && !body.contains("no such route"),
                        "{method} {path} is documented but answered {status} {body}"
                    );
                    let responses = operation["responses"].as_object().unwrap();
                    if path.starts_with("/v1") {
                        assert!(
                            responses.contains_key("400")
                                && responses.contains_key("401")
                                && responses.contains_key("403"),
                            "{method} {path}: {responses:?}"
                        );
                        assert_eq!(
                            responses["400"]["content"]["application/problem+json"]["schema"]
                                ["$ref"],
                            "#/components/schemas/Problem"
                        );
                    }
                    assert!(
                        operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                        "{method} {path} has no summary"
                    );
                }
                None => assert_eq!(
                    status, 405,
                    "{method} {path} is not documented but answered {status} {body}"
                ),
            }
        }
    }
    assert!(operations >= 25, "{operations} operations");
    // Every route docs/api.md names is in the document.
    let api = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    for line in api.lines().filter(|l| l.starts_with("### `")) {
        for route in line.split('`').filter(|part| part.contains(" /v1/")) {
            let (method, path) = route.split_once(' ').unwrap();
            let path = path.split('?').next().unwrap();
            assert!(
                paths
                    .get(path)
                    .and_then(|item| item.get(method.to_lowercase()))
                    .is_some(),
                "docs/api.md's {method} {path} is not in /openapi.json"
            );
        }
    }
    let params: Vec<&str> = paths["/v1/stock"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        ["tenant", "after", "wait_ms", "location", "below", "category", "cursor", "limit"]
    );
    stop(running).await;
}

/// One `curl` of the README, as a request: method, path (and query),
/// headers, body; `assign` names the shell variable its answer is kept in
/// (`answer=$(curl …)`), read back by later examples with
/// `$(echo "$answer" | jq -r .field)`.
#[derive(Debug)]
struct Curl {
    line: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    streams: bool,
    assign: Option<String>,
}

/// Splits a shell command into words (quotes removed), ending at the first
/// unquoted `|`, `;`, `>` or `)`: what follows is not curl's.
fn shell_words(text: &str) -> (Vec<String>, &str) {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for (_, c) in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next().map(|(_, c)| c)),
                        c => w.push(c),
                    }
                }
            }
            '|' | ';' | '>' | ')' => {
                words.extend(word.take());
                return (words, &text[at..]);
            }
            // A comment: the rest of the line is not the command's.
            '#' if word.is_none() => return (words, ""),
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    (words, "")
}

/// Every `curl … localhost:8080…` of the README's ```sh blocks.
fn readme_curls() -> Vec<Curl> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    let mut curls = Vec::new();
    for line in lines {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("curl ") {
            let before = &rest[..at];
            let assign = before
                .trim_end()
                .strip_suffix("=$(")
                .map(|name| name.rsplit(' ').next().unwrap().trim().to_owned());
            let (words, after) = shell_words(&rest[at..]);
            rest = after;
            if !words.iter().any(|w| w.contains("localhost:8080")) {
                continue;
            }
            let mut curl = Curl {
                line: line.clone(),
                method: "GET".into(),
                path: String::new(),
                headers: Vec::new(),
                body: None,
                streams: false,
                assign: assign.clone(),
            };
            let mut args = words.into_iter().skip(1);
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "-X" => curl.method = args.next().unwrap(),
                    "-H" => {
                        let header = args.next().unwrap();
                        let (name, value) = header.split_once(':').unwrap();
                        curl.headers
                            .push((name.trim().to_owned(), value.trim().to_owned()));
                    }
                    "-d" => {
                        curl.body = args.next();
                        if curl.method == "GET" {
                            curl.method = "POST".into();
                        }
                    }
                    flags if flags.starts_with('-') => {
                        assert!(
                            flags.chars().skip(1).all(|f| "sN".contains(f)),
                            "a curl option this test does not know: {flags} in `{line}`"
                        );
                        curl.streams |= flags.contains('N');
                    }
                    url => {
                        curl.path = url
                            .split_once("localhost:8080")
                            .unwrap_or_else(|| panic!("not a local URL: {url} in `{line}`"))
                            .1
                            .to_owned()
                    }
                }
            }
            curls.push(curl);
        }
    }
    curls
}

/// The README's examples cannot drift from the API: every `curl` against
/// `localhost:8080` in its ```sh blocks is sent, as written, to a running
/// demo, and answers 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_curl_of_the_readme_answers_2xx_against_the_demo() {
    let curls = readme_curls();
    assert!(
        curls.len() >= 20,
        "the README's curl examples were not found: {curls:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut demo = settings(dir.path(), 2);
    demo.partitions = 4;
    demo.demo_rate = Some(2_000);
    let running = Server::of(demo).start().await;
    // The examples name SKU-00042 (at madrid-centro).
    eventually("the demo seeding SKU-00042", EVENTUALLY, async || {
        get(&running, "/v1/stock/SKU-00042").await.0 == 200
    })
    .await;
    let http = reqwest::Client::new();
    let mut answers: std::collections::BTreeMap<String, Value> = Default::default();
    for curl in &curls {
        // `$(echo "$answer" | jq -r .field)`: a field of an earlier answer.
        let mut path = curl.path.clone();
        while let Some(at) = path.find("$(echo $") {
            let end = at + path[at..].find(')').unwrap();
            let (variable, field) = path[at + 8..end]
                .split_once(" | jq -r .")
                .unwrap_or_else(|| panic!("unknown substitution in `{}`", curl.line));
            let value = answers[variable][field]
                .as_str()
                .unwrap_or_else(|| panic!("{variable} has no {field}: {}", answers[variable]))
                .to_owned();
            path.replace_range(at..=end, &value);
        }
        let mut request = http.request(
            curl.method.parse().unwrap(),
            format!("http://{}{path}", running.addr),
        );
        for (name, value) in &curl.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &curl.body {
            request = request.body(body.clone());
        }
        let response = tokio::time::timeout(Duration::from_secs(10), request.send())
            .await
            .unwrap_or_else(|_| panic!("no answer to `{}`", curl.line))
            .unwrap();
        let status = response.status();
        let text = if curl.streams {
            String::new()
        } else {
            response.text().await.unwrap()
        };
        assert!(
            status.is_success(),
            "`{}` ({} {path}) answered {status}: {text}",
            curl.line,
            curl.method
        );
        if let Some(variable) = &curl.assign {
            answers.insert(variable.clone(), serde_json::from_str(&text).unwrap());
        }
    }
    stop(running).await;
}

/// Metric labels come from a closed set: made-up methods are counted as
/// `other` and unknown paths as `unmatched`, so requests anyone can send
/// (no key needed to be answered 404 or 405) cannot grow `/metrics` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let http = reqwest::Client::new();
    let send = |method: String, path: String| {
        let request = http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{}{path}", running.addr),
        );
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Warm-up: the series a normal client creates.
    assert_eq!(send("GET".into(), "/v1/stock".into()).await, 200);
    assert_eq!(send("GET".into(), "/v1/nothing".into()).await, 404);
    assert_eq!(send("FOO".into(), "/v1/stock".into()).await, 405);
    // The HTTP series (labels without their values) that exist before.
    let series = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with("stockflow_http_"))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
            .collect()
    };
    get(&running, "/metrics").await;
    let before = series(get(&running, "/metrics").await.2.as_str().unwrap());
    for i in 0..300 {
        let status = send(
            format!("M{i:03}{}", "X".repeat(i * 10)),
            format!("/v1/made-up-{i}"),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(send(format!("FOO{i}"), "/v1/stock".into()).await, 405);
    }
    let (_, _, metrics) = get(&running, "/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        !metrics.contains("M000") && !metrics.contains("FOO1") && !metrics.contains("made-up"),
        "a client's text became a label"
    );
    assert!(
        metrics.contains(
            r#"stockflow_http_requests_total{method="other",route="unmatched",status="404"} 300"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"stockflow_http_requests_total{method="other",route="/v1/stock",status="405"} 301"#
        ),
        "{metrics}"
    );
    // 600 requests with 600 made-up methods and 300 made-up paths: one new series.
    let new: Vec<String> = series(metrics).difference(&before).cloned().collect();
    assert_eq!(
        new,
        [r#"stockflow_http_requests_total{method="other",route="unmatched",status="404"}"#],
        "new series"
    );
    stop(running).await;
}

/// Sends `request` (a whole HTTP/1.1 request head) on a connection of its
/// own and reads the answer to its end: status, headers (lower-case names),
/// body. Raw, because HTTP clients refuse to send what these tests send.
async fn raw_exchange(
    running: &Running,
    request: &[u8],
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in `{answer}`"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Requests hyper refuses before any route runs (a URI over its 64 KiB, over
/// 100 headers) are answered like every other error: problem+json with a
/// request id, and counted under closed labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_refused_before_routing_are_problems_with_a_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let long_uri = format!(
        "GET /v1/stock?cursor={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    let headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many_headers = format!("GET /v1/stock HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
    let cases = [
        (long_uri, 414, "URI is longer than the 65534 bytes"),
        (many_headers, 431, "more than 100 headers"),
    ];
    for (request, status, detail) in cases {
        let (got, headers, body) = raw_exchange(&running, request.as_bytes()).await;
        assert_eq!(got, status, "{headers:?} {body}");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "{headers:?}"
        );
        assert!(
            headers
                .get("x-request-id")
                .is_some_and(|id| id.starts_with("req_")),
            "{headers:?}"
        );
        assert_eq!(headers.get("content-length"), Some(&body.len().to_string()));
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], status, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{problem}"
        );
    }
    // A head that is not HTTP at all: hyper's 400, also a problem.
    let (got, headers, _) = raw_exchange(&running, b"NOT HTTP\r\n\r\n").await;
    assert_eq!(
        (got, headers.get("content-type").map(String::as_str)),
        (400, Some("application/problem+json"))
    );
    // Our own answers are left as they are.
    let (got, headers, body) = raw_exchange(
        &running,
        b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got, 404, "{body}");
    assert!(
        body.contains("no such route") && headers.contains_key("x-request-id"),
        "{headers:?} {body}"
    );
    let (_, _, metrics) = get(&running, "/metrics").await;
    let metrics = metrics.as_str().unwrap();
    for status in [400, 414, 431] {
        let series = format!(
            r#"stockflow_http_requests_total{{method="other",route="unmatched",status="{status}"}} 1"#
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    stop(running).await;
}

/// Reads `stream` until the server closes it (end of stream or reset);
/// answers what it read.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return read,
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_the_cap_keeps_the_api_reachable() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), 1);
    settings.http_limits = stockflow::settings::Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(1),
    };
    let running = Server::of(settings).start().await;

    // A kept-alive connection answered once, then silent: closed like a new one.
    let mut kept = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = common::within(
        "a kept-alive connection is closed after its answer",
        read_until_closed(&mut kept),
    )
    .await;
    assert!(
        answered.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answered)
    );

    // Three times the cap of sockets that send nothing, and one that sends half a head.
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(tokio::net::TcpStream::connect(running.addr).await.unwrap());
    }
    let mut slow = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A client behind them is answered: the idle ones are closed and their slots freed.
    // No pooled connections: a kept-alive one idle past the timeout is closed by the server (as the test shows).
    let client = reqwest::Client::builder()
        .timeout(common::PATIENCE)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = common::within(
        "GET /health behind the idle sockets",
        client.get(format!("http://{}/health", running.addr)).send(),
    )
    .await
    .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for (n, socket) in idle.iter_mut().enumerate() {
        let read = common::within(
            format!("idle socket {n} is closed"),
            read_until_closed(socket),
        )
        .await;
        assert!(
            read.is_empty(),
            "a socket that sent nothing is closed without an answer"
        );
    }
    let read = common::within(
        "the half head's socket is closed",
        read_until_closed(&mut slow),
    )
    .await;
    assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));

    let metrics = client
        .get(format!("http://{}/metrics", running.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("stockflow_http_connection_cap_reached_total ") >= 1.0,
        "the cap was reached: {metrics}"
    );
    let open = value("stockflow_http_connections ");
    assert!(
        (1.0..=8.0).contains(&open),
        "open connections within the cap: {open}"
    );
    stop(running).await;
}
