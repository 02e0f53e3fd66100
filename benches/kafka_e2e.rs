//! End to end against a real Kafka-compatible broker (Tansu from
//! `scripts/services.sh`, or `STOCKFLOW_KAFKA_BROKERS`):
//!
//! 1. produce N `stock.adjusted` events (5 tenants, 20,000 SKUs, 10
//!    locations, 4 partitions) to a fresh topic, keeping an oracle of the
//!    final on-hand per tenant;
//! 2. the ceiling: a bare rdkafka consume + `decode_event` loop over the topic;
//! 3. the engine from offset 0 with WORKERS workers, timed until its published
//!    views reflect every event (the published offsets reach N, not the
//!    broker's watermark, which Tansu under-reports), then checked against the
//!    oracle.
//!
//! Run: `cargo bench --bench kafka_e2e -- [EVENTS] [WORKERS] [commands]`
//! (defaults 1000000 2). With `commands` the engine runs the write path too
//! (the decider keeps its per-sku state from every event, as a serving
//! engine does); without, it is read-only (`--read-only`).

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow::engine::{CommandPath, EngineConfig, Format, SourceSpec, Start};
use stockflow::metrics::Metrics;
use stockflow::shutdown::Shutdown;
use stockflow::source::kafka::{client_config, ensure_topics, KafkaSettings, KafkaTopic};
use stockflow::store::Store;
use stockflow_dataflows::model::{decode_event, RecordContext};

const PARTITIONS: u32 = 4;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let events: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let workers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let brokers = std::env::var("STOCKFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let settings = KafkaSettings { brokers: brokers.clone(), group_id: "stockflow-bench".into() };
    let topic = format!("bench-{:08x}", rand::random::<u32>());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(ensure_topics(&settings, std::slice::from_ref(&topic), PARTITIONS)).expect("topic");

    // 1. produce, with the oracle.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .expect("producer");
    let tenants = ["default", "andina", "pacifico", "norte", "sur"];
    let mut oracle: BTreeMap<&str, i64> = BTreeMap::new();
    let start = Instant::now();
    for n in 0..events {
        let tenant = tenants[n % 5];
        let sku = format!("SKU-{:05}", (n.wrapping_mul(2_654_435_761) >> 3) % 20_000);
        let qty: i64 = if n % 4 == 0 { 7 } else { -1 };
        *oracle.entry(tenant).or_default() += qty;
        let payload = format!(
            r#"{{"id":"b{n}","type":"stock.adjusted","tenant":"{tenant}","ts":{},"sku":"{sku}","location":"store-{}","qty":{qty},"reason":"bench"}}"#,
            1_700_000_000_000u64 + n as u64,
            n % 10
        );
        let key = format!("{tenant}/{sku}");
        loop {
            match producer.send(BaseRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err((_, _)) => producer.poll(Duration::from_millis(10)),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let produced = start.elapsed();
    println!("produce  {events} events in {produced:.2?}: {:.0} events/s", events as f64 / produced.as_secs_f64());

    // 2. the ceiling: consume + decode, nothing else.
    let consumer: BaseConsumer = client_config(&settings).create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(&topic, p as i32, Offset::Beginning).expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let start = Instant::now();
    let mut seen = 0usize;
    while seen < events && start.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let event = decode_event(message.payload().unwrap_or_default(), RecordContext { offset: message.offset() as u64, log_time: None }).expect("valid");
            std::hint::black_box(event);
            seen += 1;
        }
    }
    let ceiling = seen as f64 / start.elapsed().as_secs_f64();
    println!("ceiling  consume+decode {seen} events in {:.2?}: {ceiling:.0} events/s", start.elapsed());
    drop(consumer);

    // 3. the engine.
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // reset the peak-RSS mark
    let source = KafkaTopic::open(&settings, &topic).expect("topic");
    let store = Arc::new(Store::new());
    let shutdown = Shutdown::new();
    let with_commands = std::env::args().any(|a| a == "commands");
    let commands_dir = tempfile::tempdir().expect("temp dir");
    let commands = with_commands.then(|| {
        // An empty commands topic in an embedded log: the decider runs, no command arrives.
        let log = Arc::new(stockflow::log::Log::open(commands_dir.path()).expect("log"));
        CommandPath {
            commands: log.topic("inventory.commands", 1).expect("topic"),
            appender: Arc::new(stockflow::log::LogAppender::new(log, 1)),
            events_topic: "outcomes".into(),
        }
    });
    let config = EngineConfig {
        workers,
        epoch: Duration::from_millis(10),
        epoch_max_events: 100_000,
        sources: vec![SourceSpec { source: Arc::new(source), format: Format::Stockflow, start: Start::Earliest }],
        dead_letters: None,
        commands,
        thresholds: Default::default(),
        kpis: Some(Default::default()),
        alerts: None,
        restore: None,
        on_gap: Default::default(),
    };
    let start = Instant::now();
    let engine = stockflow::engine::start(config, store.clone(), Metrics::new(), shutdown.clone()).expect("engine");
    let reached = |store: &Store| -> u64 { store.snapshot().as_of.offsets.get(&topic).map(|p| p.values().sum()).unwrap_or(0) };
    while reached(&store) < events as u64 && start.elapsed() < Duration::from_secs(900) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let snapshot = store.snapshot();
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for (key, delta) in snapshot.stock.iter() {
        let tenant = tenants.iter().find(|t| **t == key.tenant.as_str()).expect("known tenant");
        *totals.entry(tenant).or_default() += delta.on_hand;
    }
    assert_eq!(totals, oracle, "the views equal the oracle");
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "engine   {events} events, {workers} worker(s), {}, {} stock rows: {elapsed:.2?}, {rate:.0} events/s = {:.0}% of the ceiling; peak RSS {:.0} MiB",
        if with_commands { "with the decider" } else { "read-only" },
        snapshot.stock.len(),
        100.0 * rate / ceiling,
        peak_rss_mib()
    );
    shutdown.trigger();
    engine.join().expect("engine stops");
}
