//! The engine's outputs under load, against a real broker (Tansu): an alert
//! storm with most keys below their threshold and some malformed messages,
//! written through a producer whose queue is forced full; and the producer's
//! connections cut mid-append while input keeps arriving. Each run must end
//! with views equal to an oracle kept while producing, one alert event per
//! counted transition, one dead letter per malformed message, and, while the
//! output is stuck, sources that stop reading (events in flight bounded).

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow::server::Running;
use stockflow::settings::Settings;
use stockflow::source::kafka::header_text;
use stockflow_dataflows::model::{Name, StockKey};

mod common;
use common::kafka::{self, brokers, unique, OwnBroker};
use common::{eventually, free_port, stop, Server, EVENTUALLY};

/// The partitions of every topic ([`kafka::settings`]).
const PARTITIONS: u32 = 3;

/// Settings of a server with two workers reading `topic` from `brokers`, in
/// epochs of at most 2,000 events.
fn settings(dir: &std::path::Path, brokers: &str, topic: &str) -> Settings {
    let mut settings = kafka::settings(dir, brokers, topic, 2);
    settings.epoch_max_events = 2_000;
    settings
}

/// What the test produced: the final on-hand per key and the malformed messages.
#[derive(Default)]
struct Oracle {
    on_hand: BTreeMap<String, i64>,
    malformed: usize,
    messages: usize,
}

/// Produces `keys` keys' events: one key in five ends above the default
/// threshold (10), the rest at or below it (a low-stock alert each), some get
/// a second adjustment, and every `bad_every`-th message is malformed JSON.
fn produce_storm(
    brokers: &str,
    topic: &str,
    keys: usize,
    first_key: usize,
    bad_every: usize,
    oracle: &mut Oracle,
) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "storm-test-input")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let send = |key: &str, payload: &[u8]| {
        while producer
            .send(BaseRecord::to(topic).key(key).payload(payload))
            .is_err()
        {
            producer.poll(Duration::from_millis(5));
        }
    };
    for k in first_key..first_key + keys {
        let sku = format!("S-{k:07}");
        let location = format!("l{}", k % 4);
        let mut quantities = vec![if k % 5 == 0 { 50 } else { (k % 10) as i64 + 1 }];
        if k % 3 == 0 {
            quantities.push(-1);
        }
        for (n, qty) in quantities.into_iter().enumerate() {
            oracle.messages += 1;
            if oracle.messages.is_multiple_of(bad_every) {
                oracle.malformed += 1;
                send(
                    &format!("default/{sku}"),
                    format!(r#"{{"id":"bad-{k}-{n}","type":"stock.adjusted","#).as_bytes(),
                );
                oracle.messages += 1;
            }
            *oracle
                .on_hand
                .entry(format!("{sku}@{location}"))
                .or_default() += qty;
            let event = json!({"id": format!("e-{k}-{n}"), "type": "stock.adjusted", "sku": sku, "location": location, "qty": qty, "reason": "count"});
            send(&format!("default/{sku}"), event.to_string().as_bytes());
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// Every message of `topic`, read until `count` have arrived (at most 60 s).
fn consume(brokers: &str, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "stockflow-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    let mut quiet_since = Instant::now();
    // Read past `count` for a moment: a duplicate would arrive after it.
    while Instant::now() < deadline
        && (messages.len() < count || quiet_since.elapsed() < Duration::from_secs(2))
    {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                messages.push(message.detach());
                quiet_since = Instant::now();
            }
            _ => continue,
        }
    }
    messages
}

fn published(running: &Running, topic: &str) -> u64 {
    running
        .store
        .snapshot()
        .as_of
        .offsets
        .get(topic)
        .map(|p| p.values().sum())
        .unwrap_or(0)
}

/// Waits (within `timeout`) until the views reflect `messages` messages of `topic`.
async fn wait_published(running: &Running, topic: &str, messages: usize, timeout: Duration) {
    let what = format!("{messages} messages of {topic} published");
    eventually(what, timeout, async || {
        let reached = published(running, topic);
        if reached >= messages as u64 {
            Ok(())
        } else {
            Err(format!(
                "published {reached}; /ready: {:?}",
                running.store.readiness()
            ))
        }
    })
    .await
}

/// Waits until the server is ready (its store's readiness, as `/ready` answers it).
async fn ready(running: &Running) {
    eventually("ready", EVENTUALLY, async || running.store.readiness()).await
}

/// The views equal the oracle; the alerts topic holds one event per counted
/// transition (none twice); the dead-letter topic one letter per malformed message.
fn check_outputs(running: &Running, brokers: &str, topic: &str, oracle: &Oracle) {
    let snapshot = running.store.snapshot();
    let mut wrong = Vec::new();
    for (key, expected) in &oracle.on_hand {
        let (sku, location) = key.split_once('@').unwrap();
        let stock_key = StockKey {
            tenant: Name::from("default"),
            sku: Name::from(sku),
            location: Name::from(location),
        };
        let on_hand = snapshot.stock.get(&stock_key).map(|row| row.on_hand);
        if on_hand != Some(*expected) {
            wrong.push(format!("{key}: {on_hand:?} != {expected}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows differ from the oracle, e.g. {:?}",
        wrong.len(),
        oracle.on_hand.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(
        snapshot.stock.len(),
        oracle.on_hand.len(),
        "no row the oracle does not have"
    );

    let transitions: u64 = ["raised", "cleared"]
        .iter()
        .map(|state| {
            running
                .metrics
                .alert_transitions
                .with_label_values(&["low_stock", state])
                .get()
        })
        .sum::<u64>()
        + ["raised", "cleared"]
            .iter()
            .map(|state| {
                running
                    .metrics
                    .alert_transitions
                    .with_label_values(&["out_of_stock", state])
                    .get()
            })
            .sum::<u64>();
    let low = oracle.on_hand.values().filter(|qty| **qty <= 10).count() as u64;
    assert!(
        transitions >= low,
        "every low row raised once at least: {transitions} transitions, {low} low rows"
    );
    let alerts = consume(brokers, &format!("{topic}.alerts"), transitions as usize);
    let mut seen = BTreeSet::new();
    for message in &alerts {
        let event: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let id = (
            event["sku"].to_string(),
            event["location"].to_string(),
            event["kind"].to_string(),
            event["transition"].as_u64().unwrap(),
        );
        assert!(
            seen.insert(id.clone()),
            "alert transition {id:?} written twice"
        );
    }
    assert_eq!(
        alerts.len() as u64,
        transitions,
        "one alert event per counted transition"
    );

    let letters = consume(brokers, &format!("{topic}.dlq"), oracle.malformed);
    let offsets: BTreeSet<(String, String)> = letters
        .iter()
        .map(|m| {
            (
                header_text(m, "stockflow-source-partition").unwrap(),
                header_text(m, "stockflow-source-offset").unwrap(),
            )
        })
        .collect();
    assert_eq!(offsets.len(), letters.len(), "no dead letter twice");
    assert_eq!(
        letters.len(),
        oracle.malformed,
        "one dead letter per malformed message"
    );
    assert!(letters
        .iter()
        .all(|m| header_text(m, "stockflow-error-class").as_deref() == Some("json")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_storm_through_a_full_producer_queue_writes_each_transition_once() {
    let brokers = brokers();
    let topic = unique("storm");
    let dir = tempfile::tempdir().unwrap();
    let mut storm = settings(dir.path(), &brokers, &topic);
    // A queue of 50 records: nearly every send meets a full queue.
    storm.kafka.as_mut().unwrap().producer_options =
        vec![("queue.buffering.max.messages".into(), "50".into())];
    let running = Server::of(storm).start().await;
    ready(&running).await;
    let mut oracle = Oracle::default();
    produce_storm(&brokers, &topic, 30_000, 0, 20, &mut oracle);
    wait_published(&running, &topic, oracle.messages, Duration::from_secs(240)).await;
    check_outputs(&running, &brokers, &topic, &oracle);
    stop(running).await;
}

/// A TCP proxy in front of a broker that cuts, on demand, only the
/// connections of one Kafka client id (read from the first request's
/// header), so that stockflow's producer loses the broker while its readers,
/// and the test's own producer, keep it.
struct Proxy {
    cut: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(listen: u16, target: u16, client_id: &'static str) -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap();
        let (cut2, generation2) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (cut, mut cuts) = (cut2.clone(), generation2.subscribe());
                tokio::spawn(async move {
                    // Request header: size i32, api_key i16, api_version i16, correlation_id i32, client_id (i16 length + bytes).
                    let mut head = vec![0u8; 14];
                    if client.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let length = i16::from_be_bytes([head[12], head[13]]).max(0) as usize;
                    let mut id = vec![0u8; length];
                    if client.read_exact(&mut id).await.is_err() {
                        return;
                    }
                    let targeted = id == client_id.as_bytes();
                    if targeted && cut.load(Ordering::SeqCst) {
                        return; // refused while cut
                    }
                    let Ok(mut broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    if broker.write_all(&head).await.is_err()
                        || broker.write_all(&id).await.is_err()
                    {
                        return;
                    }
                    if targeted {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                            _ = cuts.changed() => {}
                        }
                    } else {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
        });
        Proxy { cut, generation }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_cut_mid_append_holds_the_sources_then_resumes_exactly() {
    let (broker_port, proxy_port) = (free_port(), free_port());
    // The broker advertises the proxy, so every connection goes through it.
    let _broker = OwnBroker::memory(broker_port, proxy_port);
    let proxy = Proxy::start(proxy_port, broker_port, "stockflow-producer").await;
    let brokers = format!("127.0.0.1:{proxy_port}");
    let topic = unique("stuck");
    let dir = tempfile::tempdir().unwrap();
    let mut stuck = settings(dir.path(), &brokers, &topic);
    const IN_FLIGHT: usize = 20_000;
    stuck.max_in_flight_events = IN_FLIGHT;
    let running = Server::of(stuck).start().await;
    ready(&running).await;

    let mut oracle = Oracle::default();
    produce_storm(&brokers, &topic, 5_000, 0, 50, &mut oracle);
    wait_published(&running, &topic, oracle.messages, Duration::from_secs(120)).await;
    let before_cut = oracle.messages;

    // The producer loses the broker; input keeps arriving: a storm of new keys.
    proxy.cut();
    produce_storm(&brokers, &topic, 60_000, 5_000, 50, &mut oracle);
    // Stuck, not waiting for anything: time for the sources to read on, were
    // they not held back (what the assertions below rule out).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_stuck = resident_mib();
    let position = |running: &Running| -> i64 {
        (0..PARTITIONS)
            .map(|p| {
                running
                    .metrics
                    .source_position
                    .with_label_values(&[&topic, &p.to_string()])
                    .get()
            })
            .sum()
    };
    let (read, reached) = (position(&running), published(&running, &topic));
    assert!(
        reached < oracle.messages as u64,
        "the stuck output holds publishing back (published {reached} of {})",
        oracle.messages
    );
    assert!(
        read <= reached as i64 + IN_FLIGHT as i64,
        "the sources stop reading: read {read}, published {reached}, bound {IN_FLIGHT}"
    );
    assert!(
        running.metrics.events_in_flight.get() <= IN_FLIGHT as i64,
        "{}",
        running.metrics.events_in_flight.get()
    );
    let why = running
        .store
        .readiness()
        .expect_err("not ready while an output is stuck");
    // The alerts topic or the dead-letter topic, whichever the publisher waits on first.
    let names_output =
        why.contains(&format!("{topic}.alerts")) || why.contains(&format!("{topic}.dlq"));
    assert!(
        why.contains("held back by the publisher") && names_output,
        "/ready names the output: {why}"
    );
    // Still stuck: time for reading or memory to grow, were they not bounded.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rss_later = resident_mib();
    assert_eq!(position(&running), read, "still holding");
    assert!(
        rss_later - rss_stuck < 64.0,
        "memory stays flat while stuck: {rss_stuck:.0} MiB then {rss_later:.0} MiB"
    );

    // The broker comes back: everything resumes by itself, exactly.
    proxy.restore();
    wait_published(&running, &topic, oracle.messages, Duration::from_secs(240)).await;
    assert!(oracle.messages > before_cut + IN_FLIGHT);
    ready(&running).await;
    check_outputs(&running, &brokers, &topic, &oracle);
    stop(running).await;
}
