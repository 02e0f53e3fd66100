//! The Kafka source against a real Kafka-compatible broker over TCP (Tansu,
//! started by `scripts/services.sh`; override with `STOCKFLOW_KAFKA_BROKERS`).
//! The outage and restart tests start brokers of their own. The ClickHouse
//! sink test writes to the ClickHouse of `scripts/services.sh` too.
//! Every test uses fresh topics.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stockflow::config::{LogFormat, Settings, SourceDecl};
use stockflow::server::{self, Running};
use stockflow::source::kafka::{header_text, KafkaSettings};
use stockflow::source::{Format, Start};

fn brokers() -> String {
    std::env::var("STOCKFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(name: &str) -> String {
    format!(
        "it-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn settings(dir: &std::path::Path, topic: &str, workers: usize) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        workers,
        epoch: Duration::from_millis(10),
        epoch_max_events: 10_000,
        max_in_flight_events: 400_000,
        partitions: 3,
        insecure_listen: false,
        api_keys: None,
        rate_limit: None,
        request_timeout: std::time::Duration::from_secs(40),
        http_limits: stockflow::http::Limits {
            max_connections: 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
        },
        read_only: false,
        log_format: LogFormat::Pretty,
        demo_rate: None,
        kafka: Some(KafkaSettings::new(brokers(), "stockflow-tests")),
        sources: vec![SourceDecl::new(topic, Format::Stockflow)],
        // Per test: the broker is shared by every test.
        commands_topic: format!("{topic}.commands"),
        outcomes_topic: topic.to_owned(),
        alerts_topic: format!("{topic}.alerts"),
        thresholds: Default::default(),
        changes_retention: stockflow::store::DEFAULT_CHANGES_RETENTION,
        webhook_policy: Default::default(),
        kpi_retention: Duration::from_secs(90 * 24 * 3600),
        kpi_specs: std::sync::Arc::from(Vec::new()),
        clickhouse: None,
        checkpoint_interval: Some(Duration::from_secs(30)),
        on_checkpoint_gap: Default::default(),
        offline: false,
        replay: None,
    }
}

fn produce(topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()
        .unwrap();
    for (key, payload) in messages {
        producer
            .send(BaseRecord::to(topic).key(key.as_bytes()).payload(payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn event(value: Value) -> (String, Vec<u8>) {
    let key = format!(
        "{}/{}",
        value["tenant"].as_str().unwrap_or("default"),
        value["sku"].as_str().unwrap_or("")
    );
    (key, value.to_string().into_bytes())
}

async fn get(running: &Running, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{}{}", running.addr, path))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls `path` until `done` holds for its answer (at most 30 s).
async fn eventually(running: &Running, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(running, path).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never satisfied the condition; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts stockflow and waits until it has created its topics and caught up,
/// as a producer should before writing to topics it expects stockflow to create.
async fn start_ready(settings: &Settings) -> Running {
    let running = server::start(settings).await.unwrap();
    eventually(&running, "/ready", |status, _| status == 200).await;
    running
}

/// Reads every message of `topic` (all partitions) until `count` have arrived.
fn consume_all(topic: &str, partitions: i32, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "stockflow-tests")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = Vec::new();
    while messages.len() < count && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.detach());
        }
    }
    messages
}

/// The offsets committed under the engine's group id (-1: none), per partition.
fn committed_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "stockflow-tests")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1).max(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_events_reach_the_views_and_bad_ones_the_dead_letter_topic() {
    let topic = unique("events");
    let dir = tempfile::tempdir().unwrap();
    let running = start_ready(&settings(dir.path(), &topic, 2)).await;
    produce(
        &topic,
        &[
            event(
                json!({"id": "e1", "type": "item.created", "sku": "K-1", "name": "Kettle", "price": 25.5, "category": "home", "stock": {"bogota": 10, "lima": 5}}),
            ),
            event(
                json!({"id": "e2", "type": "stock.adjusted", "sku": "K-1", "location": "bogota", "qty": -4, "reason": "sale"}),
            ),
            ("default/K-1".into(), b"{this is not json".to_vec()),
            event(
                json!({"id": "e3", "type": "stock.adjusted", "sku": "K-1", "location": "lima", "qty": 0}),
            ),
            event(
                json!({"id": "e2", "type": "stock.adjusted", "sku": "K-1", "location": "bogota", "qty": -4, "reason": "sale"}),
            ),
            event(
                json!({"id": "e4", "type": "stock.reserved", "sku": "K-1", "location": "lima", "qty": 2, "reservation_id": "r1"}),
            ),
        ],
    );
    let body = eventually(&running, "/v1/stock/K-1", |status, body| {
        status == 200 && body["totals"]["reserved"] == 2
    })
    .await;
    assert_eq!(
        body["totals"]["on_hand"], 11,
        "the redelivered e2 counts once: {body}"
    );
    assert_eq!(body["totals"]["available"], 9);
    assert!(body["as_of"]["offsets"][&topic].is_object());

    let letters = consume_all(&format!("{topic}.dlq"), 3, 2);
    assert_eq!(letters.len(), 2, "both bad messages are dead letters");
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|m| header_text(m, "stockflow-error").unwrap())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].starts_with("field `qty`: must not be 0"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("not a JSON object"), "{reasons:?}");
    for letter in &letters {
        assert_eq!(
            header_text(letter, "stockflow-source-topic").as_deref(),
            Some(topic.as_str())
        );
        let partition: u32 = header_text(letter, "stockflow-source-partition")
            .unwrap()
            .parse()
            .unwrap();
        let offset: u64 = header_text(letter, "stockflow-source-offset")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            partition < 3 && offset < 10,
            "partition {partition} offset {offset}"
        );
    }
    assert!(
        letters
            .iter()
            .any(|m| m.payload() == Some(b"{this is not json".as_slice())),
        "the original bytes are kept"
    );

    let (_, metrics) = get(&running, "/metrics").await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(&format!(
            r#"stockflow_dead_letters_total{{reason="json",topic="{topic}"}} 1"#
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        r#"stockflow_source_lag{{partition="0",topic="{topic}"}}"#
    )));

    // The offsets the views reflect are committed under the group id, for lag tools.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let committed = committed_offsets(&topic, 3);
        if committed.iter().sum::<i64>() == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {committed:?} never covered the 6 messages"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_two_workers_build_the_same_views_from_kafka() {
    let topic = unique("workers");
    let mut answers = Vec::new();
    for workers in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let running = start_ready(&settings(dir.path(), &topic, workers)).await;
        if workers == 1 {
            let mut messages = Vec::new();
            for i in 0..200 {
                let sku = format!("W-{:03}", i % 40);
                messages
                    .push(event(json!({"id": format!("a{i}"), "type": "stock.adjusted", "sku": sku, "location": format!("l{}", i % 3), "qty": (i % 7) + 1})));
            }
            produce(&topic, &messages);
        }
        let body = eventually(&running, "/v1/stock?limit=1000", |status, body| {
            status == 200
                && body["rows"].as_array().is_some_and(|rows| {
                    rows.iter()
                        .map(|r| r["on_hand"].as_i64().unwrap())
                        .sum::<i64>()
                        == (0..200).map(|i| (i % 7) + 1).sum::<i64>()
                })
        })
        .await;
        answers.push(body["rows"].clone());
        running.shutdown.trigger();
        running.wait().await.unwrap();
    }
    assert_eq!(answers[0], answers[1]);
    // (i % 40, i % 3) repeats every lcm(40, 3) = 120 events: 120 distinct rows.
    assert_eq!(answers[0].as_array().unwrap().len(), 120);
}

/// The Tansu binary that `scripts/services.sh` installs (or `STOCKFLOW_TANSU`).
fn tansu_binary() -> String {
    std::env::var("STOCKFLOW_TANSU").unwrap_or_else(|_| {
        let cache = std::env::var("STOCKFLOW_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/stockflow", std::env::var("HOME").unwrap()));
        format!("{cache}/bin/tansu")
    })
}

/// A broker of the test's own on a free port, stopped when dropped.
struct OwnBroker(std::process::Child);

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_own_broker(port: u16) -> OwnBroker {
    let tansu = tansu_binary();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = std::process::Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tansu (installed by scripts/services.sh) starts");
    OwnBroker(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_is_waited_for_then_read() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let topic = unique("late");
    let dir = tempfile::tempdir().unwrap();
    let mut late = settings(dir.path(), &topic, 1);
    late.kafka = Some(KafkaSettings::new(brokers.clone(), "stockflow-tests"));
    let running = tokio::time::timeout(Duration::from_secs(10), server::start(&late))
        .await
        .expect("start does not wait for the broker")
        .unwrap();
    let (status, _) = get(&running, "/health").await;
    assert_eq!(status, 200, "alive while the broker is down");
    let ready = eventually(&running, "/ready", |status, body| {
        status == 503
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("waiting for the Kafka cluster"))
    })
    .await;
    assert!(
        ready["detail"].as_str().unwrap().contains(&brokers),
        "{ready}"
    );

    let _broker = start_own_broker(port);
    eventually(&running, "/ready", |status, _| status == 200).await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let (key, payload) = event(
        json!({"id": "x1", "type": "stock.adjusted", "sku": "LATE-1", "location": "m", "qty": 9}),
    );
    producer
        .send(BaseRecord::to(&topic).key(&key).payload(&payload))
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let body = eventually(&running, "/v1/stock/LATE-1", |status, _| status == 200).await;
    assert_eq!(body["totals"]["on_hand"], 9);
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tradex_topics_plug_in_unchanged() {
    let prefix = unique("tradex");
    let (orders, stock, users) = (
        format!("{prefix}.order.created"),
        format!("{prefix}.stock.updated"),
        format!("{prefix}.user.registered"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut tradex = settings(dir.path(), &orders, 1);
    tradex.sources = [&orders, &stock, &users]
        .iter()
        .map(|t| SourceDecl::new(t.as_str(), Format::Tradex))
        .collect();
    let running = start_ready(&tradex).await;
    produce(&stock, &[("P-1".into(), br#"{"productId":"P-1","quantity":50,"operation":"increase","updatedAt":"2026-01-01T10:00:00Z"}"#.to_vec())]);
    produce(&users, &[("u-1".into(), br#"{"userId":"u-1","email":"ana@example.com","role":"buyer","createdAt":"2026-01-01T09:00:00Z"}"#.to_vec())]);
    let order = br#"{"orderId":"0f8e","userId":"u-1","items":[{"productId":"P-1","quantity":3,"price":19.99}],"totalAmount":59.97,"status":"pending","createdAt":"2026-01-01T11:00:00Z"}"#;
    // Delivered twice (at-least-once): one order.
    produce(
        &orders,
        &[
            ("0f8e".into(), order.to_vec()),
            ("0f8e".into(), order.to_vec()),
        ],
    );
    produce(
        &stock,
        &[(
            "P-1".into(),
            br#"{"productId":"P-1","quantity":3,"operation":"decrease"}"#.to_vec(),
        )],
    );
    produce(
        &stock,
        &[(
            "P-1".into(),
            br#"{"productId":"P-1","quantity":3,"operation":"sideways"}"#.to_vec(),
        )],
    );
    let body = eventually(&running, "/v1/stock/P-1", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 47
    })
    .await;
    assert_eq!(body["locations"][0]["location"], "default");
    let letters = consume_all(&format!("{stock}.dlq"), 3, 1);
    assert_eq!(
        header_text(&letters[0], "stockflow-error").unwrap(),
        "field `operation`: expected `increase` or `decrease`, got `sideways`"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, again) = get(&running, "/v1/stock/P-1").await;
    assert_eq!(
        again["totals"]["on_hand"], 47,
        "the catalog's decrease echo is not applied a second time"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_cqrs_states_keep_the_newest_version() {
    let prefix = unique("cqrs");
    let (items, stock) = (
        format!("{prefix}.inventory.items"),
        format!("{prefix}.inventory.stock"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cqrs = settings(dir.path(), &items, 2);
    cqrs.sources = [&items, &stock]
        .iter()
        .map(|t| SourceDecl::new(t.as_str(), Format::InventoryCqrs))
        .collect();
    let running = start_ready(&cqrs).await;
    let state = |value: Value| ("0b6e".to_string(), value.to_string().into_bytes());
    produce(
        &items,
        &[state(
            json!({"event_type": "inventory.items.created", "item_id": "0b6e", "sku": "PROD-001", "name": "Producto de Prueba",
            "description": "x", "quantity": 100, "reserved_quantity": 0, "version": 1, "timestamp": "2026-01-01T10:00:00Z"}),
        )],
    );
    let reserved = state(
        json!({"event_type": "inventory.stock.reserved", "sku": "PROD-001", "quantity": 100, "reserved_quantity": 10, "version": 2}),
    );
    produce(
        &stock,
        &[
            reserved.clone(),
            reserved,
            state(
                json!({"event_type": "inventory.stock.adjusted", "sku": "PROD-001", "quantity": 90, "reserved_quantity": 10, "version": 4}),
            ),
            // Late: an older version arrives after a newer one and changes nothing.
            state(
                json!({"event_type": "inventory.stock.reserved", "sku": "PROD-001", "quantity": 100, "reserved_quantity": 30, "version": 3}),
            ),
            state(
                json!({"event_type": "inventory.stock.reserved", "sku": "PROD-001", "quantity": 5, "reserved_quantity": 6, "version": 5}),
            ),
        ],
    );
    let letters = consume_all(&format!("{stock}.dlq"), 3, 1);
    assert_eq!(
        header_text(&letters[0], "stockflow-error").unwrap(),
        "field `reserved_quantity`: 6 exceeds `quantity` 5"
    );
    let body = eventually(&running, "/v1/stock/PROD-001", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 90
    })
    .await;
    assert_eq!(body["totals"]["reserved"], 10, "{body}");
    assert_eq!(body["totals"]["available"], 80, "{body}");
    let (status, item) = get(&running, "/v1/items/PROD-001").await;
    assert_eq!(
        (status, &item["item"]["name"]),
        (200, &json!("Producto de Prueba")),
        "{item}"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_skips_the_backlog_and_stored_resumes_from_the_commits() {
    let topic = unique("start");
    let dir = tempfile::tempdir().unwrap();
    let adjust = |id: &str, qty: i64| {
        event(
            json!({"id": id, "type": "stock.adjusted", "sku": "S-1", "location": "l", "qty": qty}),
        )
    };
    // The topic exists (stockflow creates it) and holds a backlog before the `latest` run starts.
    let first = start_ready(&settings(dir.path(), &topic, 1)).await;
    // One batch per message: Tansu reports a partition's high watermark as the
    // base offset of its last batch + 1, which is exact only for one-message batches.
    produce(&topic, &[adjust("a", 100)]);
    produce(&topic, &[adjust("b", 10)]);
    eventually(&first, "/v1/stock/S-1", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 110
    })
    .await;
    first.shutdown.trigger();
    first.wait().await.unwrap();

    let mut latest = settings(dir.path(), &topic, 1);
    latest.sources[0].start = Start::Latest;
    let running = start_ready(&latest).await;
    let (status, body) = get(&running, "/v1/stock/S-1").await;
    assert_eq!(status, 404, "the backlog before start is not read: {body}");
    produce(&topic, &[adjust("c", 7)]);
    eventually(&running, "/v1/stock/S-1", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 7
    })
    .await;
    // Wait until the commit covers all three messages, then stop.
    let deadline = Instant::now() + Duration::from_secs(15);
    while committed_offsets(&topic, 3).iter().sum::<i64>() != 3 {
        assert!(
            Instant::now() < deadline,
            "offsets never committed: {:?}",
            committed_offsets(&topic, 3)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.shutdown.trigger();
    running.wait().await.unwrap();

    let mut stored = settings(dir.path(), &topic, 1);
    stored.sources[0].start = Start::Stored;
    let running = start_ready(&stored).await;
    produce(&topic, &[adjust("d", 5)]);
    let body = eventually(&running, "/v1/stock/S-1", |status, _| status == 200).await;
    assert_eq!(
        body["totals"]["on_hand"], 5,
        "only what came after the stored offsets: {body}"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_kafka_tradex_and_http_are_decided_once() {
    let prefix = unique("writes");
    let (catalog, orders) = (
        format!("{prefix}.catalog.commands"),
        format!("{prefix}.order.commands"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut writes = settings(dir.path(), &format!("{prefix}.events"), 2);
    writes
        .sources
        .push(SourceDecl::new(catalog.as_str(), Format::Tradex));
    writes
        .sources
        .push(SourceDecl::new(orders.as_str(), Format::Tradex));
    let running = start_ready(&writes).await;
    produce(
        &catalog,
        &[("P-1".into(), br#"{"command":"CREATE_PRODUCT","data":{"name":"Mate","sku":"P-1","price":9.5,"stock":5,"category":"food"}}"#.to_vec())],
    );
    eventually(&running, "/v1/stock/P-1", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 5
    })
    .await;
    produce(
        &orders,
        &[(
            "u-1".into(),
            br#"{"command":"CREATE_ORDER","data":{"orderId":"T-1","userId":"u-1","items":[{"productId":"P-1","quantity":2,"price":9.5}]}}"#.to_vec(),
        )],
    );
    let order = eventually(&running, "/v1/orders/T-1", |status, body| {
        status == 200 && body["status"] != "pending"
    })
    .await;
    assert_eq!(order["status"], "confirmed", "{order}");

    // A command over HTTP goes through Kafka too, and its token reads its effect.
    let client = reqwest::Client::new();
    let answer: Value = client
        .post(format!("http://{}/v1/stock/P-1/adjust", running.addr))
        .header("content-type", "application/json")
        .body(json!({"location": "default", "qty": 3}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        answer["token"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{prefix}.events.commands:")),
        "{answer}"
    );
    let (status, stock) = get(
        &running,
        &format!("/v1/stock/P-1?after={}", answer["token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{stock}");
    assert_eq!(
        (
            stock["totals"]["on_hand"].as_i64(),
            stock["totals"]["reserved"].as_i64()
        ),
        (Some(8), Some(2)),
        "{stock}"
    );
    // The outcomes are in the event topic: the source of truth.
    let outcomes = consume_all(&format!("{prefix}.events"), 3, 5);
    let types: std::collections::BTreeSet<String> = outcomes
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(m.payload().unwrap()).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        [
            "item.created",
            "order.placed",
            "stock.reserved",
            "order.confirmed",
            "stock.adjusted"
        ]
        .iter()
        .all(|t| types.contains(*t)),
        "{types:?}"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

/// A TCP proxy in front of a broker that the test can cut and restore.
struct Proxy {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(listen: u16, target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap();
        let (up2, generation2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let mut cut = generation2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { up, generation }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_and_doubles_nothing() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (broker_port, proxy_port) = (free(), free());
    // The broker advertises the proxy, so every connection goes through it.
    let tansu = tansu_binary();
    let _broker = OwnBroker(
        std::process::Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{broker_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{proxy_port}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let proxy = Proxy::start(proxy_port, broker_port).await;
    let brokers = format!("127.0.0.1:{proxy_port}");
    let topic = unique("outage");
    let dir = tempfile::tempdir().unwrap();
    let mut outage = settings(dir.path(), &topic, 2);
    outage.kafka = Some(KafkaSettings::new(brokers.clone(), "stockflow-tests"));
    let running = server::start(&outage).await.unwrap();
    eventually(&running, "/ready", |status, _| status == 200).await;

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut expected = 0i64;
    let mut produce_range = |range: std::ops::Range<i64>| {
        for i in range {
            let qty = (i % 5) + 1;
            expected += qty;
            let (key, payload) = event(
                json!({"id": format!("o{i}"), "type": "stock.adjusted", "sku": format!("O-{}", i % 50), "location": "m", "qty": qty}),
            );
            while producer
                .send(BaseRecord::to(&topic).key(&key).payload(&payload))
                .is_err()
            {
                producer.poll(Duration::from_millis(5));
            }
        }
    };
    produce_range(0..20_000);
    producer.flush(Duration::from_secs(60)).unwrap();
    // Cut the broker away: the second half waits in the producer, the engine
    // loses its connections mid-stream; then bring the broker back.
    proxy.cut();
    produce_range(20_000..40_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = get(&running, "/health").await;
    assert_eq!(status, 200, "alive during the outage");
    let ready = eventually(&running, "/ready", |status, _| status == 503).await;
    assert!(
        ready["detail"].as_str().unwrap().contains("fails"),
        "{ready}"
    );
    proxy.restore();
    producer.flush(Duration::from_secs(60)).unwrap();
    eventually(&running, "/ready", |status, _| status == 200).await;
    let total = |body: &Value| {
        body["rows"].as_array().map(|rows| {
            rows.iter()
                .map(|r| r["on_hand"].as_i64().unwrap())
                .sum::<i64>()
        })
    };
    let body = eventually(&running, "/v1/stock?limit=1000", |status, body| {
        status == 200 && total(body) == Some(expected)
    })
    .await;
    assert_eq!(body["rows"].as_array().unwrap().len(), 50);
    let reached: u64 = body["as_of"]["offsets"][&topic]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(reached, 40_000, "every offset read exactly once: {body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = get(&running, "/v1/stock?limit=1000").await;
    assert_eq!(
        total(&later),
        Some(expected),
        "nothing counted twice after the reconnect"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

/// A Tansu whose storage is S3 (moto's server, installed by
/// `scripts/services.sh`), so that it can be stopped and started again with
/// its topics, records and offsets intact.
struct DurableBroker {
    port: u16,
    moto_port: u16,
    /// Held for its `Drop`: the S3 server lives as long as the broker.
    _moto: OwnBroker,
    tansu: Option<OwnBroker>,
}

impl DurableBroker {
    async fn start() -> DurableBroker {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, moto_port) = (free(), free());
        let moto_server = std::env::var("STOCKFLOW_MOTO")
            .unwrap_or_else(|_| tansu_binary().replace("/bin/tansu", "/bin/moto_server"));
        let moto = OwnBroker(
            std::process::Command::new(moto_server)
                .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("moto_server (installed by scripts/services.sh) starts"),
        );
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The bucket Tansu keeps everything in.
        while client
            .put(format!("http://127.0.0.1:{moto_port}/tansu"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut broker = DurableBroker {
            port,
            moto_port,
            _moto: moto,
            tansu: None,
        };
        broker.start_tansu().await;
        broker
    }

    async fn start_tansu(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "s3://tansu/",
            ])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env(
                "AWS_ENDPOINT",
                format!("http://127.0.0.1:{}", self.moto_port),
            )
            .env("AWS_ALLOW_HTTP", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.tansu = Some(OwnBroker(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop_tansu(&mut self) {
        self.tansu = None;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_and_doubles_nothing() {
    let mut broker = DurableBroker::start().await;
    let brokers = format!("127.0.0.1:{}", broker.port);
    let topic = unique("restart");
    let dir = tempfile::tempdir().unwrap();
    let mut restart = settings(dir.path(), &topic, 2);
    restart.kafka = Some(KafkaSettings::new(brokers.clone(), "stockflow-tests"));
    let running = start_ready(&restart).await;

    let mut expected = 0i64;
    let mut produce_range = |range: std::ops::Range<i64>| {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "5")
            .set("acks", "all")
            .create()
            .unwrap();
        for i in range {
            let qty = (i % 5) + 1;
            expected += qty;
            let (key, payload) = event(
                json!({"id": format!("r{i}"), "type": "stock.adjusted", "sku": format!("R-{}", i % 50), "location": "m", "qty": qty}),
            );
            while producer
                .send(BaseRecord::to(&topic).key(&key).payload(&payload))
                .is_err()
            {
                producer.poll(Duration::from_millis(5));
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    };
    produce_range(0..5_000);
    // Stop the broker process while the engine is reading, then start it again.
    broker.stop_tansu();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = get(&running, "/health").await;
    assert_eq!(status, 200, "alive while the broker is down");
    let ready = eventually(&running, "/ready", |status, _| status == 503).await;
    assert!(
        ready["detail"].as_str().unwrap().contains("fails"),
        "{ready}"
    );
    broker.start_tansu().await;
    produce_range(5_000..10_000);

    // Ready again within seconds (idle partitions included: stale connection
    // errors queued during the outage are drained at once).
    eventually(&running, "/ready", |status, _| status == 200).await;
    let total = |body: &Value| {
        body["rows"].as_array().map(|rows| {
            rows.iter()
                .map(|r| r["on_hand"].as_i64().unwrap())
                .sum::<i64>()
        })
    };
    let body = eventually(&running, "/v1/stock?limit=1000", |status, body| {
        status == 200 && total(body) == Some(expected)
    })
    .await;
    let reached: u64 = body["as_of"]["offsets"][&topic]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(reached, 10_000, "every offset read exactly once: {body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = get(&running, "/v1/stock?limit=1000").await;
    assert_eq!(
        total(&later),
        Some(expected),
        "nothing counted twice after the restart"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_alerts_topic_once_also_after_a_restart() {
    let topic = unique("alerts");
    let dir = tempfile::tempdir().unwrap();
    let running = start_ready(&settings(dir.path(), &topic, 2)).await;
    produce(
        &topic,
        &[
            event(
                json!({"id": "c", "type": "item.created", "sku": "L-1", "name": "Low", "price": 1, "reorder_point": 5, "stock": {"m": 8}}),
            ),
            event(
                json!({"id": "d", "type": "stock.adjusted", "sku": "L-1", "location": "m", "qty": -4}),
            ),
        ],
    );
    let alerts = eventually(&running, "/v1/alerts", |_, body| {
        body["alerts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(alerts["alerts"][0]["available"], 4, "{alerts}");
    let written = consume_all(&format!("{topic}.alerts"), 3, 1);
    let raised: Value =
        serde_json::from_slice(rdkafka::Message::payload(&written[0]).unwrap()).unwrap();
    assert_eq!(
        (
            raised["type"].as_str(),
            raised["sku"].as_str(),
            raised["transition"].as_u64()
        ),
        (Some("alert.low_stock.raised"), Some("L-1"), Some(1))
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();

    // The restart recomputes the raise from the log; it is not written again
    // (a second raise would come before the clear: one key, one partition), the clear is.
    let running = start_ready(&settings(dir.path(), &topic, 2)).await;
    produce(
        &topic,
        &[event(
            json!({"id": "e", "type": "stock.adjusted", "sku": "L-1", "location": "m", "qty": 10}),
        )],
    );
    eventually(&running, "/v1/alerts", |_, body| {
        body["alerts"] == json!([])
    })
    .await;
    let written = consume_all(&format!("{topic}.alerts"), 3, 2);
    let types: Vec<String> = written
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(rdkafka::Message::payload(m).unwrap()).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["alert.low_stock.raised", "alert.low_stock.cleared"]);
    running.shutdown.trigger();
    running.wait().await.unwrap();
}

/// Runs `sql` on the ClickHouse of `scripts/services.sh`; the rows as tab-separated fields.
async fn clickhouse(db: &str, sql: &str) -> Vec<Vec<String>> {
    let url = std::env::var("STOCKFLOW_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let response = reqwest::Client::new()
        .post(format!("{url}/?database={db}"))
        .body(format!("{sql} FORMAT TabSeparated"))
        .send()
        .await
        .unwrap();
    let (status, text) = (response.status(), response.text().await.unwrap());
    assert!(status.is_success(), "{sql}: {status} {text}");
    text.lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Polls ClickHouse until `events` hold `count` rows and `stock_current` sums to `on_hand` (at most 60 s).
async fn clickhouse_holds(db: &str, count: usize, on_hand: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tables = clickhouse(
            "default",
            &format!("SELECT count() FROM system.tables WHERE database = '{db}'"),
        )
        .await;
        if tables[0][0] == "6" {
            let events = clickhouse(
                db,
                "SELECT count(), uniqExact(topic, partition, offset, idx) FROM events",
            )
            .await;
            let stock = clickhouse(
                db,
                "SELECT sum(on_hand) FROM stock_current FINAL WHERE deleted = 0",
            )
            .await;
            let (rows, distinct): (usize, usize) =
                (events[0][0].parse().unwrap(), events[0][1].parse().unwrap());
            assert_eq!(rows, distinct, "an event written twice");
            assert!(rows <= count, "{rows} event rows for {count} events");
            if rows == count && stock[0][0].parse::<i64>().unwrap_or(i64::MIN) == on_hand {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "ClickHouse never held {count} events and on_hand {on_hand}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_sink_writes_kafka_events_once_across_a_restart() {
    let topic = unique("sink");
    let db = format!(
        "it_sink_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), &topic, 2);
    let mut sink = stockflow::sink::SinkSettings::new(stockflow_sinks::clickhouse::Config {
        url: std::env::var("STOCKFLOW_CLICKHOUSE_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: db.clone(),
        user: String::new(),
        password: String::new(),
    });
    sink.batch_interval = Duration::from_millis(100);
    settings.clickhouse = Some(sink);
    let round = |from: usize| -> Vec<(String, Vec<u8>)> {
        let mut messages = Vec::new();
        for i in from..from + 20 {
            let sku = format!("S-{i:02}");
            if from == 0 {
                messages.push(event(json!({"id": format!("c{i}"), "type": "item.created", "sku": sku, "name": sku, "price": 1, "stock": {"lima": 10}})));
            }
            messages
                .push(event(json!({"id": format!("a{from}-{i}"), "type": "stock.adjusted", "sku": format!("S-{:02}", i % 20), "location": "lima", "qty": -1})));
        }
        messages
    };

    let running = start_ready(&settings).await;
    let mut first = round(0);
    first.push(("default/S-00".into(), b"{not json".to_vec()));
    produce(&topic, &first);
    clickhouse_holds(&db, 40, 20 * 10 - 20).await;
    running.shutdown.trigger();
    running.wait().await.unwrap();

    // Restarted: the views are rebuilt from Kafka; the sink resumes from its progress.
    let running = start_ready(&settings).await;
    produce(&topic, &round(20));
    clickhouse_holds(&db, 60, 20 * 10 - 40).await;
    let (_, stock) = get(&running, "/v1/stock/S-03").await;
    assert_eq!(stock["totals"]["on_hand"], 8, "{stock}");
    running.shutdown.trigger();
    running.wait().await.unwrap();
    clickhouse("default", &format!("DROP DATABASE IF EXISTS {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_kafka_topic_is_a_checkpoint_serve_resumes_from() {
    use stockflow::replay::{Bound, Range, ReplaySettings, TimeField};
    let topic = unique("replay");
    let (dir, replayed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let adjust = |id: &str, qty: i64| {
        event(
            json!({"id": id, "type": "stock.adjusted", "sku": "S-1", "location": "l", "qty": qty}),
        )
    };
    let first = start_ready(&settings(dir.path(), &topic, 1)).await;
    // One batch per message: Tansu's high watermark is exact only for one-message batches.
    for (id, qty) in [("a", 100), ("b", 10), ("c", -3)] {
        produce(&topic, &[adjust(id, qty)]);
    }
    produce(&topic, &[("default/S-1".into(), b"{not json".to_vec())]);
    eventually(&first, "/v1/stock/S-1", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 107
    })
    .await;
    first.shutdown.trigger();
    first.wait().await.unwrap();

    // `stockflow replay` of the topic into a fresh data dir: its checkpoint holds the three events.
    let mut replay = settings(replayed.path(), &topic, 2);
    replay.offline = true;
    replay.checkpoint_interval = Some(Duration::from_secs(3600));
    let range = Range {
        from: Bound::Earliest,
        to: Bound::Latest,
        time_field: TimeField::Log,
    };
    replay.replay = Some(ReplaySettings {
        range,
        source_dir: dir.path().to_path_buf(),
    });
    stockflow::offline::replay(&replay, None).await.unwrap();
    let manifest =
        stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(replayed.path()))
            .expect("the replay's checkpoint");
    assert_eq!(
        manifest.segments.iter().map(|s| s.records).sum::<u64>(),
        3,
        "three events; the bad message left out"
    );
    assert_eq!(
        manifest.offsets[&topic].values().sum::<u64>(),
        4,
        "resumes after all four messages"
    );

    // Serving that data dir resumes from the checkpoint: only what came after is read,
    // and a redelivery of an event the checkpoint holds is still one event.
    produce(&topic, &[adjust("d", 5)]);
    produce(&topic, &[adjust("a", 100)]);
    let running = start_ready(&settings(replayed.path(), &topic, 1)).await;
    assert_eq!(running.metrics.restored_events.get(), 3);
    eventually(&running, "/v1/stock/S-1", |status, body| {
        status == 200 && body["totals"]["on_hand"] == 112
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = get(&running, "/v1/stock/S-1").await;
    assert_eq!(
        body["totals"]["on_hand"], 112,
        "the redelivered `a` counted once: {body}"
    );
    running.shutdown.trigger();
    running.wait().await.unwrap();
}
