//! Kafka as a source, on rdkafka's bundled librdkafka.
//! Long because every librdkafka setting stockflow relies on is set and explained in one place ([`client_config`]).
//!
//! Every Kafka setting stockflow uses is set in [`client_config`], each with
//! why. Offsets belong to the engine: partitions are assigned by hand (no
//! consumer-group rebalancing), nothing is committed automatically, and a
//! reader starts exactly where the engine asks. The engine commits the
//! offsets its published views reflect under the group id, for lag
//! monitoring only ([`Source::commit`]).

use super::{Acks, Outgoing, PartitionReader, Record, Source, SourceError};
use crate::shutdown::Shutdown;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::cell::Cell;
use std::sync::Arc;
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
    /// librdkafka properties for stockflow's producer, set last
    /// (`--kafka-producer-option KEY=VALUE`): e.g. `compression.type`, or a
    /// small `queue.buffering.max.messages` in tests that force a full queue.
    pub producer_options: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Settings for `brokers` under `group_id`, with no producer options.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.into(),
            group_id: group_id.into(),
            producer_options: Vec::new(),
        }
    }
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
    move |error| SourceError::Broker {
        what,
        detail: error.to_string(),
    }
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
        let consumer: BaseConsumer = client_config(settings)
            .create()
            .map_err(broker("creating a Kafka consumer"))?;
        let metadata = consumer
            .fetch_metadata(Some(name), REQUEST_TIMEOUT)
            .map_err(broker(format!(
                "fetching metadata of {name} from {}",
                settings.brokers
            )))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| SourceError::NotFound(format!("topic {name}")))?;
        if let Some(error) = topic.error() {
            return Err(SourceError::NotFound(format!(
                "topic {name}: {:?}",
                RDKafkaErrorCode::from(error)
            )));
        }
        if topic.partitions().is_empty() {
            return Err(SourceError::NotFound(format!(
                "topic {name} has no partitions"
            )));
        }
        let partitions = topic.partitions().len() as u32;
        Ok(KafkaTopic {
            settings: settings.clone(),
            name: name.to_owned(),
            partitions,
            metadata: consumer,
        })
    }

    /// The first offset a partition holds and the offset after its last message.
    fn watermarks(&self, partition: u32) -> Result<(u64, u64), SourceError> {
        let (low, high) = self
            .metadata
            .fetch_watermarks(&self.name, partition as i32, REQUEST_TIMEOUT)
            .map_err(broker(format!(
                "fetching the watermarks of {}/{partition}",
                self.name
            )))?;
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
        let consumer: BaseConsumer = client_config(&self.settings)
            .create()
            .map_err(broker("creating a Kafka consumer"))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.name, partition as i32, Offset::Offset(from as i64))
            .map_err(broker(format!("assigning {}/{partition}", self.name)))?;
        consumer
            .assign(&assignment)
            .map_err(broker(format!("assigning {}/{partition}", self.name)))?;
        Ok(Box::new(KafkaReader {
            consumer,
            topic: self.name.clone(),
            partition,
            position: from,
            end: Cell::new((from, None)),
        }))
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
        self.metadata
            .commit(&list, CommitMode::Sync)
            .map_err(broker(format!(
                "committing offsets of {} under group {}",
                self.name, self.settings.group_id
            )))
    }

    fn stored_offset(&self, partition: u32) -> Result<Option<u64>, SourceError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.name, partition as i32);
        let what = || {
            format!(
                "reading the committed offset of {}/{partition} for group {}",
                self.name, self.settings.group_id
            )
        };
        let committed = self
            .metadata
            .committed_offsets(list, REQUEST_TIMEOUT)
            .map_err(broker(what()))?;
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
            Some(error) if count == 0 => {
                Err(broker(format!("reading {}/{}", self.topic, self.partition))(error))
            }
            // Messages came after (or between) errors: the connection works.
            _ => Ok(count),
        }
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn wake_on_data(&mut self, wake: super::Wake) -> bool {
        // Called from a librdkafka thread when the consumer's queue turns
        // non-empty (messages or errors): after a `read` that drained it.
        self.consumer.set_nonempty_callback(move || wake());
        true
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
            .map_err(broker(format!(
                "fetching the watermarks of {}/{}",
                self.topic, self.partition
            )))?;
        // Some brokers (Tansu) under-report; never report less than what was read.
        let end = (high.max(0) as u64).max(self.position);
        self.end.set((end, Some(Instant::now())));
        Ok(end)
    }
}

/// Creates the topics that are missing, with `partitions` partitions each.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[String],
    partitions: u32,
) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings)
        .create()
        .map_err(broker("creating a Kafka admin client"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions as i32, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            new.iter(),
            &AdminOptions::new()
                .operation_timeout(Some(REQUEST_TIMEOUT))
                .request_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
        .map_err(broker("creating topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(SourceError::Broker {
                    what: format!("creating topic {topic}"),
                    detail: format!("{code:?}"),
                })
            }
        }
    }
    Ok(())
}

/// Delivery reports: each record carries its batch's [`Acks`] and its slot there.
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<(Arc<Acks>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (acks, slot) = *opaque;
        acks.report(
            slot,
            match result {
                Ok(message) => Ok((message.partition() as u32, message.offset() as u64)),
                Err((error, _)) => Err(error.to_string()),
            },
        );
    }
}

/// What a producer is for, which sets how long librdkafka tries a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The engine's outputs (outcomes, alert transitions, dead letters):
    /// librdkafka retries a record until the broker takes it
    /// (`message.timeout.ms=0`), so a record is never reported failed
    /// because the broker was away, and stockflow never sends it a second
    /// time; the engine waits, and `/ready` says for what.
    UntilAcknowledged,
    /// Commands appended for an HTTP request that is waiting: a record not
    /// acknowledged within 10 s is reported failed and the request answered.
    Bounded,
}

/// Writes records to Kafka topics (`acks=all`, idempotent) and reports where
/// each landed: the one producer behind every [`super::Appender`] use on
/// Kafka. Delivery reports are served by rdkafka's polling thread.
pub struct KafkaProducer {
    producer: ThreadedProducer<Reports>,
    /// Ends the wait on a full queue once the process stops.
    shutdown: Shutdown,
}

/// The producer configuration, on top of [`client_config`] and before the
/// operator's `kafka_producer_options`.
fn producer_config(settings: &KafkaSettings, delivery: Delivery) -> ClientConfig {
    let mut config = client_config(settings);
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
        "max.partition.fetch.bytes",
    ] {
        config.remove(key);
    }
    config
        // Told apart from the readers in the broker's logs and quotas.
        .set("client.id", "stockflow-producer")
        // Durable once acknowledged, and librdkafka's own retries (after a
        // lost connection) never write a record twice nor out of order.
        .set("acks", "all")
        .set("enable.idempotence", "true");
    match delivery {
        Delivery::UntilAcknowledged => config.set("message.timeout.ms", "0"),
        // Commands are small and a request waits for each: send at once.
        Delivery::Bounded => config
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "0"),
    };
    for (key, value) in &settings.producer_options {
        config.set(key, value);
    }
    config
}

/// How long a full client queue is waited out after shutdown, before the
/// records that do not fit are reported failed.
const FULL_QUEUE_GRACE: Duration = Duration::from_secs(5);

impl KafkaProducer {
    /// A producer for `delivery`; `shutdown` ends waits on a full queue.
    pub fn new(
        settings: &KafkaSettings,
        delivery: Delivery,
        shutdown: Shutdown,
    ) -> Result<KafkaProducer, SourceError> {
        let producer = producer_config(settings, delivery)
            .create_with_context(Reports)
            .map_err(broker("creating the Kafka producer"))?;
        Ok(KafkaProducer { producer, shutdown })
    }
}

impl super::Appender for KafkaProducer {
    fn enqueue(&self, topic: &str, records: &[(usize, &Outgoing)], acks: &Arc<Acks>) {
        for &(slot, record) in records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_slice()),
                });
            }
            let mut message = BaseRecord::with_opaque_to(topic, Box::new((acks.clone(), slot)))
                .key(record.key.as_slice())
                .payload(record.payload.as_slice());
            if !record.headers.is_empty() {
                message = message.headers(headers);
            }
            // A full queue is waited out: the polling thread serves delivery
            // reports meanwhile, which frees room. Never an error to resend on.
            let mut full_since: Option<Instant> = None;
            let mut waits = 0;
            loop {
                match self.producer.send(message) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        let since = *full_since.get_or_insert_with(Instant::now);
                        if self.shutdown.is_triggered() && since.elapsed() > FULL_QUEUE_GRACE {
                            let (acks, slot) = *returned.delivery_opaque;
                            acks.report(
                                slot,
                                Err("the producer's queue stayed full until shutdown".into()),
                            );
                            break;
                        }
                        std::thread::sleep(
                            stockflow_sinks::backoff::PRODUCER_QUEUE_FULL.delay(waits),
                        );
                        waits += 1;
                        message = returned;
                    }
                    Err((error, returned)) => {
                        let (acks, slot) = *returned.delivery_opaque;
                        acks.report(slot, Err(format!("producing to {topic}: {error}")));
                        break;
                    }
                }
            }
        }
    }

    fn carries_headers(&self) -> bool {
        true
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        // What is still queued gets a last chance; the outboxes already
        // waited for what they needed.
        let _ = self.producer.flush(Duration::from_secs(1));
    }
}

/// Reads a header of a message as text (for tests and tools).
pub fn header_text<M: Message>(message: &M, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
