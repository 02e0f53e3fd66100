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
use stockflow::server;
use stockflow::settings::{Settings, SourceDecl};
use stockflow::source::kafka::{header_text, KafkaSettings};
use stockflow::source::{Format, Start};

mod common;
use common::kafka::{self, brokers, moto_binary, tansu_binary, unique, OwnBroker};
use common::{eventually, free_port, stop, Client, Server, EVENTUALLY};

/// Settings of a server reading `topic` from the shared broker.
fn settings(dir: &std::path::Path, topic: &str, workers: usize) -> Settings {
    kafka::settings(dir, &brokers(), topic, workers)
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
    let running = Server::of(settings(dir.path(), &topic, 2))
        .start_ready()
        .await;
    let client = Client::new(&running);
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
    let body = client
        .get_until("/v1/stock/K-1", |status, body| {
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

    let (_, metrics) = client.get("/metrics").await;
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
    eventually(
        "committed offsets covering the 6 messages",
        EVENTUALLY,
        async || {
            let committed = committed_offsets(&topic, 3);
            (committed.iter().sum::<i64>() == 6)
                .then_some(())
                .ok_or(committed)
        },
    )
    .await;
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_two_workers_build_the_same_views_from_kafka() {
    let topic = unique("workers");
    let mut answers = Vec::new();
    for workers in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let running = Server::of(settings(dir.path(), &topic, workers))
            .start_ready()
            .await;
        let client = Client::new(&running);
        if workers == 1 {
            let mut messages = Vec::new();
            for i in 0..200 {
                let sku = format!("W-{:03}", i % 40);
                messages
                    .push(event(json!({"id": format!("a{i}"), "type": "stock.adjusted", "sku": sku, "location": format!("l{}", i % 3), "qty": (i % 7) + 1})));
            }
            produce(&topic, &messages);
        }
        let body = client
            .get_until("/v1/stock?limit=1000", |status, body| {
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
        stop(running).await;
    }
    assert_eq!(answers[0], answers[1]);
    // (i % 40, i % 3) repeats every lcm(40, 3) = 120 events: 120 distinct rows.
    assert_eq!(answers[0].as_array().unwrap().len(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_is_waited_for_then_read() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let topic = unique("late");
    let dir = tempfile::tempdir().unwrap();
    let mut late = settings(dir.path(), &topic, 1);
    late.kafka = Some(KafkaSettings::new(brokers.clone(), "stockflow-tests"));
    let running = tokio::time::timeout(Duration::from_secs(10), server::start(&late))
        .await
        .expect("start does not wait for the broker")
        .unwrap();
    let client = Client::new(&running);
    let (status, _) = client.get("/health").await;
    assert_eq!(status, 200, "alive while the broker is down");
    let ready = client
        .get_until("/ready", |status, body| {
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

    let _broker = OwnBroker::memory(port, port);
    client.get_until("/ready", |status, _| status == 200).await;
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
    let body = client
        .get_until("/v1/stock/LATE-1", |status, _| status == 200)
        .await;
    assert_eq!(body["totals"]["on_hand"], 9);
    stop(running).await;
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
    let running = Server::of(tradex).start_ready().await;
    let client = Client::new(&running);
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
    let body = client
        .get_until("/v1/stock/P-1", |status, body| {
            status == 200 && body["totals"]["on_hand"] == 47
        })
        .await;
    assert_eq!(body["locations"][0]["location"], "default");
    let letters = consume_all(&format!("{stock}.dlq"), 3, 1);
    assert_eq!(
        header_text(&letters[0], "stockflow-error").unwrap(),
        "field `operation`: expected `increase` or `decrease`, got `sideways`"
    );
    // Time for a second application of the echo to show, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, again) = client.get("/v1/stock/P-1").await;
    assert_eq!(
        again["totals"]["on_hand"], 47,
        "the catalog's decrease echo is not applied a second time"
    );
    stop(running).await;
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
    let running = Server::of(cqrs).start_ready().await;
    let client = Client::new(&running);
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
    let body = client
        .get_until("/v1/stock/PROD-001", |status, body| {
            status == 200 && body["totals"]["on_hand"] == 90
        })
        .await;
    assert_eq!(body["totals"]["reserved"], 10, "{body}");
    assert_eq!(body["totals"]["available"], 80, "{body}");
    let (status, item) = client.get("/v1/items/PROD-001").await;
    assert_eq!(
        (status, &item["item"]["name"]),
        (200, &json!("Producto de Prueba")),
        "{item}"
    );
    stop(running).await;
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
    let first = Server::of(settings(dir.path(), &topic, 1))
        .start_ready()
        .await;
    let client = Client::new(&first);
    // One batch per message: Tansu reports a partition's high watermark as the
    // base offset of its last batch + 1, which is exact only for one-message batches.
    produce(&topic, &[adjust("a", 100)]);
    produce(&topic, &[adjust("b", 10)]);
    client
        .get_until("/v1/stock/S-1", |status, body| {
            status == 200 && body["totals"]["on_hand"] == 110
        })
        .await;
    stop(first).await;

    let mut latest = settings(dir.path(), &topic, 1);
    latest.sources[0].start = Start::Latest;
    let running = Server::of(latest).start_ready().await;
    let client = Client::new(&running);
    let (status, body) = client.get("/v1/stock/S-1").await;
    assert_eq!(status, 404, "the backlog before start is not read: {body}");
    produce(&topic, &[adjust("c", 7)]);
    client
        .get_until("/v1/stock/S-1", |status, body| {
            status == 200 && body["totals"]["on_hand"] == 7
        })
        .await;
    // Wait until the commit covers all three messages, then stop.
    eventually(
        "committed offsets covering the 3 messages",
        EVENTUALLY,
        async || {
            let committed = committed_offsets(&topic, 3);
            (committed.iter().sum::<i64>() == 3)
                .then_some(())
                .ok_or(committed)
        },
    )
    .await;
    stop(running).await;

    let mut stored = settings(dir.path(), &topic, 1);
    stored.sources[0].start = Start::Stored;
    let running = Server::of(stored).start_ready().await;
    let client = Client::new(&running);
    produce(&topic, &[adjust("d", 5)]);
    let body = client
        .get_until("/v1/stock/S-1", |status, _| status == 200)
        .await;
    assert_eq!(
        body["totals"]["on_hand"], 5,
        "only what came after the stored offsets: {body}"
    );
    stop(running).await;
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
    let running = Server::of(writes).start_ready().await;
    let client = Client::new(&running);
    produce(
        &catalog,
        &[("P-1".into(), br#"{"command":"CREATE_PRODUCT","data":{"name":"Mate","sku":"P-1","price":9.5,"stock":5,"category":"food"}}"#.to_vec())],
    );
    client
        .get_until("/v1/stock/P-1", |status, body| {
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
    let order = client
        .get_until("/v1/orders/T-1", |status, body| {
            status == 200 && body["status"] != "pending"
        })
        .await;
    assert_eq!(order["status"], "confirmed", "{order}");

    // A command over HTTP goes through Kafka too, and its token reads its effect.
    let (_, answer) = client
        .post(
            "/v1/stock/P-1/adjust",
            json!({"location": "default", "qty": 3}),
        )
        .await;
    assert!(
        answer["token"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{prefix}.events.commands:")),
        "{answer}"
    );
    let (status, stock) = client
        .get(&format!(
            "/v1/stock/P-1?after={}",
            answer["token"].as_str().unwrap()
        ))
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
    stop(running).await;
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
    let (broker_port, proxy_port) = (free_port(), free_port());
    // The broker advertises the proxy, so every connection goes through it.
    let _broker = OwnBroker::memory(broker_port, proxy_port);
    let proxy = Proxy::start(proxy_port, broker_port).await;
    let brokers = format!("127.0.0.1:{proxy_port}");
    let topic = unique("outage");
    let dir = tempfile::tempdir().unwrap();
    let mut outage = settings(dir.path(), &topic, 2);
    outage.kafka = Some(KafkaSettings::new(brokers.clone(), "stockflow-tests"));
    let running = Server::of(outage).start_ready().await;
    let client = Client::new(&running);

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
    let ready = client.get_until("/ready", |status, _| status == 503).await;
    let (status, _) = client.get("/health").await;
    assert_eq!(status, 200, "alive during the outage");
    assert!(
        ready["detail"].as_str().unwrap().contains("fails"),
        "{ready}"
    );
    proxy.restore();
    producer.flush(Duration::from_secs(60)).unwrap();
    client.get_until("/ready", |status, _| status == 200).await;
    let total = |body: &Value| {
        body["rows"].as_array().map(|rows| {
            rows.iter()
                .map(|r| r["on_hand"].as_i64().unwrap())
                .sum::<i64>()
        })
    };
    let body = client
        .get_until("/v1/stock?limit=1000", |status, body| {
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
    // Time for anything counted twice to show, were it so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = client.get("/v1/stock?limit=1000").await;
    assert_eq!(
        total(&later),
        Some(expected),
        "nothing counted twice after the reconnect"
    );
    stop(running).await;
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
        let (port, moto_port) = (free_port(), free_port());
        let moto = OwnBroker(
            std::process::Command::new(moto_binary())
                .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("moto_server (installed by scripts/services.sh) starts"),
        );
        let client = Client::at(&format!("http://127.0.0.1:{moto_port}"));
        // The bucket Tansu keeps everything in.
        eventually("moto_server comes up", EVENTUALLY, async || {
            let bucket = client.http.put(format!("{}/tansu", client.base));
            bucket.send().await.map(drop)
        })
        .await;
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
        let port = self.port;
        eventually("tansu comes up", EVENTUALLY, async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(drop)
        })
        .await;
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
    let running = Server::of(restart).start_ready().await;
    let client = Client::new(&running);

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
    let ready = client.get_until("/ready", |status, _| status == 503).await;
    let (status, _) = client.get("/health").await;
    assert_eq!(status, 200, "alive while the broker is down");
    assert!(
        ready["detail"].as_str().unwrap().contains("fails"),
        "{ready}"
    );
    broker.start_tansu().await;
    produce_range(5_000..10_000);

    // Ready again within seconds (idle partitions included: stale connection
    // errors queued during the outage are drained at once).
    client.get_until("/ready", |status, _| status == 200).await;
    let total = |body: &Value| {
        body["rows"].as_array().map(|rows| {
            rows.iter()
                .map(|r| r["on_hand"].as_i64().unwrap())
                .sum::<i64>()
        })
    };
    let body = client
        .get_until("/v1/stock?limit=1000", |status, body| {
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
    // Time for anything counted twice to show, were it so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = client.get("/v1/stock?limit=1000").await;
    assert_eq!(
        total(&later),
        Some(expected),
        "nothing counted twice after the restart"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_alerts_topic_once_also_after_a_restart() {
    let topic = unique("alerts");
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), &topic, 2))
        .start_ready()
        .await;
    let client = Client::new(&running);
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
    let alerts = client
        .get_until("/v1/alerts", |_, body| {
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
    stop(running).await;

    // The restart recomputes the raise from the log; it is not written again
    // (a second raise would come before the clear: one key, one partition), the clear is.
    let running = Server::of(settings(dir.path(), &topic, 2))
        .start_ready()
        .await;
    let client = Client::new(&running);
    produce(
        &topic,
        &[event(
            json!({"id": "e", "type": "stock.adjusted", "sku": "L-1", "location": "m", "qty": 10}),
        )],
    );
    client
        .get_until("/v1/alerts", |_, body| body["alerts"] == json!([]))
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
    stop(running).await;
}

/// Runs `sql` on the ClickHouse of `scripts/services.sh`; the rows as tab-separated fields.
async fn clickhouse(db: &str, sql: &str) -> Vec<Vec<String>> {
    let url = std::env::var("STOCKFLOW_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let client = Client::at(&url);
    let response = client
        .http
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

/// Waits until ClickHouse's `events` hold `count` rows and `stock_current` sums to `on_hand`.
async fn clickhouse_holds(db: &str, count: usize, on_hand: i64) {
    let what = format!("ClickHouse holding {count} events and on_hand {on_hand}");
    eventually(what, EVENTUALLY, async || {
        let tables = clickhouse(
            "default",
            &format!("SELECT count() FROM system.tables WHERE database = '{db}'"),
        )
        .await;
        if tables[0][0] != "6" {
            return Err(format!("{} of 6 tables", tables[0][0]));
        }
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
        let sum = stock[0][0].parse::<i64>().unwrap_or(i64::MIN);
        if rows == count && sum == on_hand {
            Ok(())
        } else {
            Err(format!("{rows} events, on_hand {}", stock[0][0]))
        }
    })
    .await
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
    let mut sink = stockflow::settings::SinkSettings::new(stockflow_sinks::clickhouse::Config {
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

    let running = Server::of(settings.clone()).start_ready().await;
    let mut first = round(0);
    first.push(("default/S-00".into(), b"{not json".to_vec()));
    produce(&topic, &first);
    clickhouse_holds(&db, 40, 20 * 10 - 20).await;
    stop(running).await;

    // Restarted: the views are rebuilt from Kafka; the sink resumes from its progress.
    let running = Server::of(settings).start_ready().await;
    let client = Client::new(&running);
    produce(&topic, &round(20));
    clickhouse_holds(&db, 60, 20 * 10 - 40).await;
    let (_, stock) = client.get("/v1/stock/S-03").await;
    assert_eq!(stock["totals"]["on_hand"], 8, "{stock}");
    stop(running).await;
    clickhouse("default", &format!("DROP DATABASE IF EXISTS {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_kafka_topic_is_a_checkpoint_serve_resumes_from() {
    use stockflow::settings::{Bound, Range, ReplaySettings, TimeField};
    let topic = unique("replay");
    let (dir, replayed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let adjust = |id: &str, qty: i64| {
        event(
            json!({"id": id, "type": "stock.adjusted", "sku": "S-1", "location": "l", "qty": qty}),
        )
    };
    let first = Server::of(settings(dir.path(), &topic, 1))
        .start_ready()
        .await;
    let client = Client::new(&first);
    // One batch per message: Tansu's high watermark is exact only for one-message batches.
    for (id, qty) in [("a", 100), ("b", 10), ("c", -3)] {
        produce(&topic, &[adjust(id, qty)]);
    }
    produce(&topic, &[("default/S-1".into(), b"{not json".to_vec())]);
    client
        .get_until("/v1/stock/S-1", |status, body| {
            status == 200 && body["totals"]["on_hand"] == 107
        })
        .await;
    stop(first).await;

    // `stockflow replay` of the topic into a fresh data dir: its checkpoint holds the three events.
    let mut replay = settings(replayed.path(), &topic, 2);
    replay.offline = true;
    replay.checkpoints = stockflow::settings::Checkpoints::AtShutdown;
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
    let (loaded, _) = stockflow::checkpoint::load(&stockflow::checkpoint::dir_of(replayed.path()));
    let loaded = loaded.expect("the replay's checkpoint");
    let manifest = loaded.manifest.clone();
    // Compacted: the three adjustments of S-1 folded into one state, their ids kept.
    assert_eq!(loaded.events.len(), 1, "{:?}", loaded.events);
    assert!(
        matches!(
            loaded.events[0].body,
            stockflow_dataflows::model::EventBody::StockState {
                on_hand: 107,
                changes: 3,
                ..
            }
        ),
        "three events; the bad message left out: {:?}",
        loaded.events
    );
    assert_eq!(loaded.ids.len(), 3);
    assert_eq!(
        manifest.offsets[&topic].values().sum::<u64>(),
        4,
        "resumes after all four messages"
    );

    // Serving that data dir resumes from the checkpoint: only what came after is read,
    // and a redelivery of an event the checkpoint holds is still one event.
    produce(&topic, &[adjust("d", 5)]);
    produce(&topic, &[adjust("a", 100)]);
    let running = Server::of(settings(replayed.path(), &topic, 1))
        .start_ready()
        .await;
    let client = Client::new(&running);
    assert_eq!(running.metrics.restored_events.get(), 1);
    client
        .get_until("/v1/stock/S-1", |status, body| {
            status == 200 && body["totals"]["on_hand"] == 112
        })
        .await;
    // Time for a second count of the redelivered `a` to show, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = client.get("/v1/stock/S-1").await;
    assert_eq!(
        body["totals"]["on_hand"], 112,
        "the redelivered `a` counted once: {body}"
    );
    stop(running).await;
}
