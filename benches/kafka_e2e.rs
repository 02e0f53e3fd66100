//! End to end against a real Kafka-compatible broker (Tansu from
//! `scripts/services.sh`, or `STOCKFLOW_KAFKA_BROKERS`), in the configuration
//! a user runs: `stockflow serve` with its defaults (decider, alerts written
//! to the alerts topic, KPIs, change streams, checkpoints, dead letters).
//!
//! 1. produce EVENTS `stock.adjusted` events over KEYS (tenant, sku,
//!    location) keys, LOW_SHARE of them ending at or below the low-stock
//!    threshold (one alert each: a first load of a real catalogue), to a
//!    clean topic and to one where MALFORMED of the messages are broken
//!    JSON, keeping an oracle of the on-hand per tenant;
//! 2. the ceiling of each topic: a bare rdkafka consume + `decode_event` loop;
//! 3. each variant in a fresh process of this bench (so that its peak RSS is
//!    its own): `server::start` from offset 0 with WORKERS workers, timed
//!    until the published views reflect every message, then checked
//!    against the oracle (and, for the headline, the alerts topic against
//!    the transitions counted).
//!
//! Variants: `default` (the headline), `default-malformed` (the topic with
//! malformed messages), `read-only` (`--read-only`), `alerts-off` (a
//! threshold nothing reaches); not run unless named in `VARIANTS`, for the
//! memory breakdown: `changes-off` (`--changes-retention 0`) and
//! `in-flight-100k` (`--max-in-flight-events 100000`).
//!
//! Run: `cargo bench --bench kafka_e2e -- [EVENTS] [WORKERS]` (defaults
//! 1000000 2); knobs in the environment: `KEYS` (630000), `LOW_SHARE` (0.8),
//! `MALFORMED` (0.05), `VARIANTS` (comma separated, default all).

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use stockflow::config::ServeArgs;
use stockflow::settings::Settings;
use stockflow::source::kafka::{client_config, ensure_topics, KafkaSettings};
use stockflow_dataflows::model::{decode_event, RecordContext};

const PARTITIONS: u32 = 4;
const TENANTS: [&str; 5] = ["default", "andina", "pacifico", "norte", "sur"];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The workload's n-th message: `(key, payload, tenant index, qty)`; qty
/// `None` for a malformed message. Key `k` gets its first event at
/// `n = k`, a second one for `n >= keys` (key `n - keys`).
fn message(
    n: usize,
    keys: usize,
    low_share: f64,
    malformed: f64,
) -> (String, String, usize, Option<i64>) {
    let key = if n < keys { n } else { (n - keys) % keys };
    let tenant = key % TENANTS.len();
    let sku = format!("SKU-{:07}", key / 10);
    let location = key % 10;
    // A fixed pseudo-random order of "low" keys: low_share of them end at 1..=10.
    let low = (key.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0 < low_share;
    let qty: i64 = match (n < keys, low) {
        (true, true) => 12,
        (true, false) => 40,
        (false, true) => -((key % 10) as i64 + 2), // ends at 10..=1: low
        (false, false) => -3,
    };
    let broken = malformed > 0.0 && (n.wrapping_mul(40_503) % 10_000) as f64 / 10_000.0 < malformed;
    let key_text = format!("{}/{sku}", TENANTS[tenant]);
    if broken {
        return (
            key_text,
            format!(r#"{{"id":"bad-{n}","type":"stock.adjusted","sku":"{sku}""#),
            tenant,
            None,
        );
    }
    let payload = format!(
        r#"{{"id":"b{n}","type":"stock.adjusted","tenant":"{}","ts":{},"sku":"{sku}","location":"store-{location}","qty":{qty},"reason":"bench"}}"#,
        TENANTS[tenant],
        1_700_000_000_000u64 + n as u64
    );
    (key_text, payload, tenant, Some(qty))
}

/// Produces the workload to `topic`; returns the on-hand per tenant it leaves.
fn produce(
    brokers: &str,
    topic: &str,
    events: usize,
    keys: usize,
    low_share: f64,
    malformed: f64,
) -> BTreeMap<String, i64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .expect("producer");
    let mut oracle: BTreeMap<String, i64> = BTreeMap::new();
    let start = Instant::now();
    for n in 0..events {
        let (key, payload, tenant, qty) = message(n, keys, low_share, malformed);
        if let Some(qty) = qty {
            *oracle.entry(TENANTS[tenant].to_owned()).or_default() += qty;
        }
        while producer
            .send(BaseRecord::to(topic).key(&key).payload(&payload))
            .is_err()
        {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    let produced = start.elapsed();
    println!(
        "produce  {topic}: {events} messages in {produced:.2?}: {:.0}/s",
        events as f64 / produced.as_secs_f64()
    );
    oracle
}

/// Consume + decode, nothing else: the rate no engine on this broker can beat.
fn ceiling(settings: &KafkaSettings, topic: &str, events: usize) -> f64 {
    let consumer: BaseConsumer = client_config(settings).create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let start = Instant::now();
    let mut seen = 0usize;
    while seen < events && start.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let event = decode_event(
                message.payload().unwrap_or_default(),
                RecordContext {
                    offset: message.offset() as u64,
                    log_time: None,
                },
            );
            std::hint::black_box(event.is_ok());
            seen += 1;
        }
    }
    let rate = seen as f64 / start.elapsed().as_secs_f64();
    println!(
        "ceiling  {topic}: consume+decode {seen} messages in {:.2?}: {rate:.0}/s",
        start.elapsed()
    );
    rate
}

fn main() {
    if let Ok(run) = std::env::var("KAFKA_E2E_RUN") {
        return run_variant(&run);
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let events: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let workers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let keys: usize = env("KEYS", 630_000);
    let low_share: f64 = env("LOW_SHARE", 0.8);
    let malformed: f64 = env("MALFORMED", 0.05);
    let variants: String = env(
        "VARIANTS",
        "default,default-malformed,read-only,alerts-off".to_owned(),
    );
    let brokers =
        std::env::var("STOCKFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let settings = KafkaSettings::new(brokers.clone(), "stockflow-bench");
    let run = format!("bench-{:08x}", rand::random::<u32>());
    let (clean, dirty) = (format!("{run}-clean"), format!("{run}-malformed"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(ensure_topics(
            &settings,
            &[clean.clone(), dirty.clone()],
            PARTITIONS,
        ))
        .expect("topics");
    println!(
        "workload {events} events over {keys} keys, {:.0}% of them ending low, {workers} worker(s)",
        low_share * 100.0
    );

    let oracle_clean = produce(&brokers, &clean, events, keys, low_share, 0.0);
    let ceiling_clean = ceiling(&settings, &clean, events);
    let needs_dirty = variants.split(',').any(|v| v == "default-malformed");
    let (oracle_dirty, ceiling_dirty) = if needs_dirty {
        let oracle = produce(&brokers, &dirty, events, keys, low_share, malformed);
        (oracle, ceiling(&settings, &dirty, events))
    } else {
        (BTreeMap::new(), 0.0)
    };

    let mut rates = BTreeMap::new();
    for variant in variants.split(',') {
        let (topic, oracle, ceiling) = if variant == "default-malformed" {
            (&dirty, &oracle_dirty, ceiling_dirty)
        } else {
            (&clean, &oracle_clean, ceiling_clean)
        };
        let oracle_text: Vec<String> = oracle.iter().map(|(t, v)| format!("{t}={v}")).collect();
        let output = std::process::Command::new(std::env::current_exe().expect("this bench"))
            .env(
                "KAFKA_E2E_RUN",
                format!(
                    "{variant};{topic};{events};{workers};{keys};{brokers};{}",
                    oracle_text.join(",")
                ),
            )
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("a variant runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "variant {variant} failed: {text}");
        let rate: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("rate "))
            .and_then(|r| r.trim().parse().ok())
            .expect("a rate");
        for line in text.lines().filter(|l| !l.starts_with("rate ")) {
            println!("{line}");
        }
        println!(
            "         = {:.0}% of the ceiling of its topic ({ceiling:.0}/s)",
            100.0 * rate / ceiling
        );
        rates.insert(variant.to_owned(), rate);
    }
    if let (Some(clean), Some(dirty)) = (rates.get("default"), rates.get("default-malformed")) {
        println!(
            "malformed {:.0}%: {:.0}% of the clean rate",
            malformed * 100.0,
            100.0 * dirty / clean
        );
    }
}

/// One variant, in its own process: `variant;topic;events;workers;keys;brokers;oracle`.
fn run_variant(run: &str) {
    let parts: Vec<&str> = run.split(';').collect();
    let [variant, topic, events, workers, keys, brokers, oracle] = parts[..] else {
        panic!("bad KAFKA_E2E_RUN {run}")
    };
    let (events, workers, keys): (usize, usize, usize) = (
        events.parse().unwrap(),
        workers.parse().unwrap(),
        keys.parse().unwrap(),
    );
    let oracle: BTreeMap<String, i64> = oracle
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(t, v)| (t.to_owned(), v.parse().unwrap()))
        .collect();
    let dir = tempfile::tempdir().expect("data dir");
    let label = format!(
        "{topic}-{variant}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    );
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        workers: Some(workers),
        kafka_brokers: Some(brokers.to_owned()),
        sources: vec![topic.to_owned()],
        // Outputs of this run alone (a second run would find its alerts written).
        commands_topic: Some(format!("{label}.commands")),
        outcomes_topic: Some(format!("{label}.outcomes")),
        alerts_topic: Some(format!("{label}.alerts")),
        read_only: variant == "read-only",
        // Every on-hand of the workload stays at 1 or more: threshold 0 raises nothing.
        low_stock_threshold: (variant == "alerts-off").then_some(0),
        changes_retention: (variant == "changes-off").then_some(0),
        max_in_flight_events: (variant == "in-flight-100k").then_some(100_000),
        ..Default::default()
    };
    let settings = Settings::resolve(&args, None).expect("settings");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let start = Instant::now();
        let running = stockflow::server::start(&settings).await.expect("server");
        let reached = || -> u64 { running.store.snapshot().as_of.offsets.get(topic).map(|p| p.values().sum()).unwrap_or(0) };
        let mut first_publish = None;
        while reached() < events as u64 && start.elapsed() < Duration::from_secs(1800) {
            if first_publish.is_none() && reached() > 0 {
                first_publish = Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        let snapshot = running.store.snapshot();
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for (key, row) in snapshot.stock.iter() {
            *totals.entry(key.tenant.as_str().to_owned()).or_default() += row.on_hand;
        }
        assert_eq!(totals, oracle, "{variant}: the views equal the oracle");
        let rate = events as f64 / elapsed.as_secs_f64();
        let rows = snapshot.stock.len();
        let transitions: u64 = ["low_stock", "out_of_stock"]
            .iter()
            .flat_map(|kind| ["raised", "cleared"].map(|state| running.metrics.alert_transitions.with_label_values(&[kind, state]).get()))
            .sum();
        let peak = peak_rss_mib();
        println!(
            "engine   {variant}: {events} messages, {rows} stock rows, {transitions} alert transitions ({} written), {} dead letters: {elapsed:.2?}, {rate:.0}/s; first publish after {:.2?}; peak RSS {peak:.0} MiB = {:.0} bytes per key",
            running.metrics.alerts_written.get(),
            running.metrics.dead_letters.with_label_values(&[topic, "json"]).get(),
            first_publish.unwrap_or(elapsed),
            peak * 1024.0 * 1024.0 / keys as f64,
        );
        if variant == "default" {
            assert_eq!(running.metrics.alerts_written.get(), transitions, "one alert event per transition");
        }
        println!("rate {rate}");
        running.shutdown.trigger();
        running.wait().await.expect("a clean stop");
    });
}
