//! The source interface: partitioned, offset-addressed logs that the engine
//! reads in epochs. The embedded log implements it today; the Kafka source
//! implements the same traits, so nothing above this module knows which runs.

pub mod kafka;
pub mod outbox;
mod spec;

pub use outbox::{Acks, Outbox, Outgoing};
pub use spec::{names, Format, SourceSpec, Start};

/// One message read from a source partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Offset of the message within its partition.
    pub offset: u64,
    /// Timestamp the log gave the message, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Message key (`tenant/sku` for inventory topics), if any.
    pub key: Option<Vec<u8>>,
    /// Message body (one JSON event for the `stockflow` format).
    pub payload: Vec<u8>,
}

/// Why a source could not be read. Sources retry what is worth retrying
/// themselves; what reaches the engine is reported in `/ready` and logs.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The underlying storage or connection failed.
    #[error("I/O error on {what}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data read is damaged in a way that cannot be skipped safely.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt {
        /// Where.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The broker could not be reached or refused a request.
    #[error("broker error {what}: {detail}")]
    Broker {
        /// What was being done.
        what: String,
        /// The broker's or client's error.
        detail: String,
    },
    /// The caller asked for something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller asked for something invalid (e.g. an offset beyond the end).
    #[error("{0}")]
    Invalid(String),
    /// An append failed and whether its records were written is not known:
    /// they may still be read (e.g. a delivery that timed out; a failed
    /// append of the embedded log that could not be undone).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// Whether an append error's text (as an [`Acks`] slot reports it) says
/// that its records may have been written after all.
pub fn outcome_unknown(error: &str) -> bool {
    error.starts_with("outcome unknown: ")
}

/// Kafka's topic name rule, which the embedded log follows too, as the
/// errors that refuse a name state it.
pub const TOPIC_NAME_RULE: &str = "1 to 249 of letters, digits, '.', '_', '-'; not '.' nor '..'";

/// Whether `name` is a topic name: [`TOPIC_NAME_RULE`]. The one check,
/// for the configuration and the embedded log alike.
pub fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A named, partitioned log (a topic).
pub trait Source: Send + Sync {
    /// Topic name.
    fn topic(&self) -> &str;
    /// Number of partitions, numbered `0..partitions()`.
    fn partitions(&self) -> u32;
    /// A reader of one partition that starts at offset `from`.
    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn PartitionReader>, SourceError>;
    /// The offset after the last message currently in `partition`.
    fn end_offset(&self, partition: u32) -> Result<u64, SourceError>;
    /// The offset of the first message `partition` still holds (Kafka's low
    /// watermark: retention deletes from the front). Default: 0, nothing deleted.
    fn start_offset(&self, _partition: u32) -> Result<u64, SourceError> {
        Ok(0)
    }
    /// Records, for monitoring only, that the views reflect `partition` up to
    /// `next_offset` (Kafka: an offset commit under the group id, so that lag
    /// tools see the engine's progress). Never read back: the engine's own
    /// epochs say where to resume. Default: nothing to record.
    fn commit(&self, _offsets: &[(u32, u64)]) -> Result<(), SourceError> {
        Ok(())
    }
    /// The offset last recorded with [`Source::commit`] for `partition`, if
    /// any (read only when a source is told to start from `stored`).
    fn stored_offset(&self, _partition: u32) -> Result<Option<u64>, SourceError> {
        Ok(None)
    }
}

/// Sequential reader of one partition.
pub trait PartitionReader: Send {
    /// The partition read.
    fn partition(&self) -> u32;
    /// Appends up to `max` records to `out`, in offset order, and returns how
    /// many; 0 means caught up for now (not end of stream: logs grow).
    fn read(&mut self, max: usize, out: &mut Vec<Record>) -> Result<usize, SourceError>;
    /// Offset of the next record `read` will return.
    fn position(&self) -> u64;
    /// The offset after the last record currently in the partition.
    fn end_offset(&self) -> Result<u64, SourceError>;
    /// Asks the reader to call `wake` whenever records may have arrived
    /// (for as long as the reader lives), so that a thread with nothing to
    /// read can sleep until then instead of polling. Spurious calls are
    /// allowed. `false`: this reader cannot, and must be polled.
    fn wake_on_data(&mut self, _wake: Wake) -> bool {
        false
    }
}

/// What [`PartitionReader::wake_on_data`] calls: typically unparks a thread
/// (timely workers park with `std::thread::park_timeout`).
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A [`Wake`] that unparks the calling thread.
pub fn wake_this_thread() -> Wake {
    let thread = std::thread::current();
    std::sync::Arc::new(move || thread.unpark())
}

/// A message that could not be decoded, on its way to the dead-letter topic.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// Topic it was read from; the letter goes to `<topic>.dlq`.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: u32,
    /// The message as read.
    pub record: &'a Record,
    /// Why it was rejected (precise: names the field and the rule).
    pub reason: &'a str,
    /// Short class of the reason (`json`, `missing_field`, ...).
    pub class: &'static str,
}

/// Writes records to topics and reports where each landed: how commands
/// enter `inventory.commands`, how the decider's outcomes reach the event
/// topic, alert transitions `alerts.events` and dead letters `<topic>.dlq`.
/// Callers go through an [`Outbox`], which waits for the reports and sends
/// again only what failed.
pub trait Appender: Send + Sync {
    /// Hands `records` (each with its slot in `acks`) to `topic`, partitioned
    /// by key as Kafka does, without waiting for their acknowledgements:
    /// each one's landing, or why it failed, is reported to `acks` once
    /// known. Blocks only while the client's queue is full (backpressure);
    /// a record that could not even be queued is reported failed at once.
    fn enqueue(&self, topic: &str, records: &[(usize, &Outgoing)], acks: &std::sync::Arc<Acks>);
    /// Whether records keep their headers (Kafka) or not (the embedded log).
    fn carries_headers(&self) -> bool;
    /// Whether a record reported failed is certainly not written (the
    /// embedded log undoes a failed append, except an error that says
    /// [`outcome_unknown`]); with Kafka a failed or timed-out delivery may
    /// still have landed.
    fn failures_are_certain(&self) -> bool {
        false
    }
}

/// Kafka's default partitioner: murmur2 of the key, positive, modulo the
/// partition count. The embedded log uses it too, so that a key lands in the
/// same partition number on both.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Murmur2, as in Kafka's `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for name in [
            "a",
            "inventory.events",
            "orders.dlq",
            "a_b-c.9",
            "...",
            ".a",
            "a..",
        ] {
            assert!(is_topic_name(name), "{name} is a topic name");
        }
        assert!(
            is_topic_name(&"x".repeat(249)),
            "249 characters are allowed"
        );
        for name in ["", ".", "..", "a/b", "a b", "a:b", "é", "a\0"] {
            assert!(!is_topic_name(name), "{name:?} is not a topic name");
        }
        assert!(
            !is_topic_name(&"x".repeat(250)),
            "250 characters are too many"
        );
        // Length counts bytes: a multi-byte character is refused anyway, not counted short.
        assert!(!is_topic_name(&format!("{}é", "x".repeat(247))));
    }
}
