//! Kafka as a source, on rdkafka's bundled librdkafka.
//!
//! Every Kafka setting stockflow uses is set in [`client_config`], each with
//! why. Offsets belong to the engine: partitions are assigned by hand (no
//! consumer-group rebalancing), nothing is committed automatically, and a
//! reader starts exactly where the engine asks. The engine commits the
//! offsets its published views reflect under the group id, for lag
//! monitoring only ([`Source::commit`]).

use super::{PartitionReader, Record, Source, SourceError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port,…` bootstrap servers.
    pub brokers: String,
    /// Group id under which nothing is consumed by group: the engine commits
    /// the offsets its views reflect under it, so that `kafka-consumer-groups`
    /// and lag exporters see its progress. Never read back.
    pub group_id: String,
}

/// Timeout of metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of a watermark request (made from the engine's read loop).
const WATERMARK_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a reader refreshes its partition's high watermark (a network round trip).
const WATERMARK_REFRESH: Duration = Duration::from_secs(1);

/// The one place where librdkafka is configured.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "stockflow")
        // A group id is required by librdkafka's consumer; the engine never
        // subscribes, so no rebalancing happens under it.
        .set("group.id", &settings.group_id)
        // Offsets are the engine's (recorded per epoch); the broker never moves them.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only reached when an assigned offset is out of range: read what is there.
        .set("auto.offset.reset", "earliest")
        // Tansu (our test broker) needs these shorter than librdkafka's defaults.
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "10000")
        // The default 1000 ms backoff of the fetch queue stalls a fast consumer:
        // a consume+decode loop ran ~5x faster here with 10 ms.
        .set("fetch.queue.backoff.ms", "10")
        // Idle partitions answer within an epoch or two instead of 500 ms.
        .set("fetch.wait.max.ms", "50")
        // Bigger fetches from a backlog: fewer round trips per message (default 1 MiB).
        .set("max.partition.fetch.bytes", "4194304")
        // A broker that went away is retried quickly at first, then every 5 s.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        // Librdkafka's own logs go through its default logger at warning and above.
        .set("log_level", "4");
    config
}

fn broker(what: impl Into<String>) -> impl FnOnce(KafkaError) -> SourceError {
    let what = what.into();
    move |error| SourceError::Broker { what, detail: error.to_string() }
}

/// One Kafka topic, read partition by partition.
pub struct KafkaTopic {
    settings: KafkaSettings,
    name: String,
    partitions: u32,
    /// The consumer that looked the topic up; answers watermark requests too.
    metadata: BaseConsumer,
}

impl KafkaTopic {
    /// Looks the topic up; fails if the cluster cannot be reached or the topic does not exist.
    pub fn open(settings: &KafkaSettings, name: &str) -> Result<KafkaTopic, SourceError> {
        let consumer: BaseConsumer = client_config(settings).create().map_err(broker("creating a Kafka consumer"))?;
        let metadata =
            consumer.fetch_metadata(Some(name), REQUEST_TIMEOUT).map_err(broker(format!("fetching metadata of {name} from {}", settings.brokers)))?;
        let topic = metadata.topics().iter().find(|t| t.name() == name).ok_or_else(|| SourceError::NotFound(format!("topic {name}")))?;
        if let Some(error) = topic.error() {
            return Err(SourceError::NotFound(format!("topic {name}: {:?}", RDKafkaErrorCode::from(error))));
        }
        if topic.partitions().is_empty() {
            return Err(SourceError::NotFound(format!("topic {name} has no partitions")));
        }
        let partitions = topic.partitions().len() as u32;
        Ok(KafkaTopic { settings: settings.clone(), name: name.to_owned(), partitions, metadata: consumer })
    }

    /// The first offset a partition holds and the offset after its last message.
    fn watermarks(&self, partition: u32) -> Result<(u64, u64), SourceError> {
        let (low, high) = self
            .metadata
            .fetch_watermarks(&self.name, partition as i32, REQUEST_TIMEOUT)
            .map_err(broker(format!("fetching the watermarks of {}/{partition}", self.name)))?;
        Ok((low.max(0) as u64, high.max(0) as u64))
    }
}

impl Source for KafkaTopic {
    fn topic(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn PartitionReader>, SourceError> {
        let consumer: BaseConsumer = client_config(&self.settings).create().map_err(broker("creating a Kafka consumer"))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.name, partition as i32, Offset::Offset(from as i64))
            .map_err(broker(format!("assigning {}/{partition}", self.name)))?;
        consumer.assign(&assignment).map_err(broker(format!("assigning {}/{partition}", self.name)))?;
        Ok(Box::new(KafkaReader { consumer, topic: self.name.clone(), partition, position: from, end: Cell::new((from, None)) }))
    }

    fn end_offset(&self, partition: u32) -> Result<u64, SourceError> {
        Ok(self.watermarks(partition)?.1)
    }

    fn start_offset(&self, partition: u32) -> Result<u64, SourceError> {
        Ok(self.watermarks(partition)?.0)
    }

    fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for &(partition, next) in offsets {
            list.add_partition_offset(&self.name, partition as i32, Offset::Offset(next as i64))
                .map_err(broker(format!("committing {}/{partition}", self.name)))?;
        }
        // Synchronous: the caller is the engine's committer thread, never a reader.
        self.metadata.commit(&list, CommitMode::Sync).map_err(broker(format!("committing offsets of {} under group {}", self.name, self.settings.group_id)))
    }

    fn stored_offset(&self, partition: u32) -> Result<Option<u64>, SourceError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.name, partition as i32);
        let what = || format!("reading the committed offset of {}/{partition} for group {}", self.name, self.settings.group_id);
        let committed = self.metadata.committed_offsets(list, REQUEST_TIMEOUT).map_err(broker(what()))?;
        let element = committed.find_partition(&self.name, partition as i32);
        Ok(element.and_then(|e| match e.offset() {
            Offset::Offset(offset) if offset >= 0 => Some(offset as u64),
            _ => None,
        }))
    }
}

/// Reader of one Kafka partition: its own consumer, assigned by hand.
pub struct KafkaReader {
    consumer: BaseConsumer,
    topic: String,
    partition: u32,
    position: u64,
    /// Last known high watermark and when it was fetched.
    end: Cell<(u64, Option<Instant>)>,
}

impl PartitionReader for KafkaReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    fn read(&mut self, max: usize, out: &mut Vec<Record>) -> Result<usize, SourceError> {
        let mut count = 0;
        // librdkafka queues an error event per failed connection attempt while
        // a broker is away; they are drained in one call, so that once the
        // broker is back a reader recovers on its next read instead of
        // spending one retry backoff per stale event.
        let mut last_error = None;
        while count < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    let offset = message.offset() as u64;
                    if offset < self.position {
                        // A re-fetch after a reconnect: already read.
                        continue;
                    }
                    out.push(Record {
                        offset,
                        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                    self.position = offset + 1;
                    count += 1;
                }
                Some(Err(error)) => last_error = Some(error),
            }
        }
        match last_error {
            // Only errors, no message: the partition cannot be read right now.
            Some(error) if count == 0 => Err(broker(format!("reading {}/{}", self.topic, self.partition))(error)),
            // Messages came after (or between) errors: the connection works.
            _ => Ok(count),
        }
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn end_offset(&self) -> Result<u64, SourceError> {
        let (end, fetched) = self.end.get();
        if fetched.is_some_and(|at| at.elapsed() < WATERMARK_REFRESH) {
            return Ok(end.max(self.position));
        }
        // Asked once per refresh interval even when it fails, and briefly: the
        // engine asks every epoch and must not stall on a broker that is away.
        self.end.set((end, Some(Instant::now())));
        let (_low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, self.partition as i32, WATERMARK_TIMEOUT)
            .map_err(broker(format!("fetching the watermarks of {}/{}", self.topic, self.partition)))?;
        // Some brokers (Tansu) under-report; never report less than what was read.
        let end = (high.max(0) as u64).max(self.position);
        self.end.set((end, Some(Instant::now())));
        Ok(end)
    }
}

/// Creates the topics that are missing, with `partitions` partitions each.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String], partitions: u32) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create().map_err(broker("creating a Kafka admin client"))?;
    let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, partitions as i32, TopicReplication::Fixed(1))).collect();
    let results = admin
        .create_topics(new.iter(), &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)).request_timeout(Some(REQUEST_TIMEOUT)))
        .await
        .map_err(broker("creating topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(SourceError::Broker { what: format!("creating topic {topic}"), detail: format!("{code:?}") }),
        }
    }
    Ok(())
}

/// Collects delivery failures of the dead-letter producer.
#[derive(Default)]
struct AckContext {
    failures: Mutex<Vec<String>>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((error, _)) = result {
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(error.to_string());
        }
    }
}

/// Writes undecodable messages to `<topic>.dlq` and waits for the broker's acknowledgement.
pub struct KafkaDeadLetters {
    producer: BaseProducer<AckContext>,
}

/// The producer configuration: `acks=all`, so an acknowledged record is durable.
fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config.set("acks", "all").set("enable.idempotence", "false").set("message.timeout.ms", "10000");
    // Consumer-only settings are ignored (with a warning) by a producer; drop them.
    for key in [
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "session.timeout.ms",
        "max.poll.interval.ms",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
    ] {
        config.remove(key);
    }
    config
}

impl KafkaDeadLetters {
    /// A producer for dead letters.
    pub fn new(settings: &KafkaSettings) -> Result<KafkaDeadLetters, SourceError> {
        let producer = producer_config(settings).create_with_context(AckContext::default()).map_err(broker("creating the dead-letter producer"))?;
        Ok(KafkaDeadLetters { producer })
    }
}

/// Where each record of a batch landed, reported by the delivery callback.
type Landings = Mutex<Vec<Option<Result<(u32, u64), String>>>>;

/// Delivery reports of the appender: each record carries (batch, index).
struct LandingContext;

impl ClientContext for LandingContext {}

impl ProducerContext for LandingContext {
    type DeliveryOpaque = Box<(std::sync::Arc<Landings>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (landings, index) = *opaque;
        let landing = match result {
            Ok(message) => Ok((message.partition() as u32, message.offset() as u64)),
            Err((error, _)) => Err(error.to_string()),
        };
        landings.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(landing);
    }
}

/// Appends to Kafka topics (`acks=all`) and reports where each record landed.
pub struct KafkaAppender {
    producer: BaseProducer<LandingContext>,
}

impl KafkaAppender {
    /// A producer for commands and outcomes.
    pub fn new(settings: &KafkaSettings) -> Result<KafkaAppender, SourceError> {
        let mut config = producer_config(settings);
        // Commands are small and latency-bound: send at once.
        config.set("linger.ms", "0");
        let producer = config.create_with_context(LandingContext).map_err(broker("creating the producer"))?;
        Ok(KafkaAppender { producer })
    }
}

impl super::Appender for KafkaAppender {
    fn append(&self, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<(u32, u64)>, SourceError> {
        let landings: std::sync::Arc<Landings> = std::sync::Arc::new(Mutex::new(vec![None; records.len()]));
        for (index, (key, payload)) in records.iter().enumerate() {
            let record = BaseRecord::with_opaque_to(topic, Box::new((landings.clone(), index))).key(key.as_slice()).payload(payload.as_slice());
            self.producer.send(record).map_err(|(error, _)| broker(format!("producing to {topic}"))(error))?;
        }
        // Serve delivery reports until every record of this batch has one
        // (other threads' batches may be served here too: each report goes to its own batch).
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if landings.lock().unwrap_or_else(|p| p.into_inner()).iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SourceError::Broker { what: format!("producing to {topic}"), detail: "no acknowledgement within 10 s".into() });
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let landings = std::mem::take(&mut *landings.lock().unwrap_or_else(|p| p.into_inner()));
        landings
            .into_iter()
            .map(|landing| landing.expect("every record reported").map_err(|detail| SourceError::Broker { what: format!("producing to {topic}"), detail }))
            .collect()
    }
}

impl super::DeadLetters for KafkaDeadLetters {
    fn send(&self, letter: &super::DeadLetter<'_>) -> Result<(), SourceError> {
        let dlq = format!("{}.dlq", letter.topic);
        let partition = letter.partition.to_string();
        let offset = letter.record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "stockflow-error", value: Some(letter.reason) })
            .insert(Header { key: "stockflow-error-class", value: Some(letter.class) })
            .insert(Header { key: "stockflow-source-topic", value: Some(letter.topic) })
            .insert(Header { key: "stockflow-source-partition", value: Some(&partition) })
            .insert(Header { key: "stockflow-source-offset", value: Some(&offset) });
        let mut record = BaseRecord::<[u8], [u8]>::to(&dlq).payload(&letter.record.payload).headers(headers);
        if let Some(key) = &letter.record.key {
            record = record.key(key);
        }
        self.producer.send(record).map_err(|(error, _)| broker(format!("producing to {dlq}"))(error))?;
        self.producer.flush(REQUEST_TIMEOUT).map_err(broker(format!("flushing {dlq}")))?;
        let failures: Vec<String> = std::mem::take(&mut *self.producer.context().failures.lock().unwrap_or_else(|p| p.into_inner()));
        match failures.first() {
            None => Ok(()),
            Some(failure) => Err(SourceError::Broker { what: format!("producing to {dlq}"), detail: failure.clone() }),
        }
    }
}

/// Reads a header of a message as text (for tests and tools).
pub fn header_text<M: Message>(message: &M, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
