//! The one way the engine writes to a log: records are queued without
//! waiting for each, their acknowledgements are awaited once per batch, and
//! a retry re-sends only the records that have none.
//!
//! An [`Appender`](super::Appender) (Kafka's producer, the embedded log)
//! takes records and reports each one's landing to an [`Acks`]; an
//! [`Outbox`] is the caller's side: it keeps the records until they are
//! acknowledged, so that a record whose delivery failed can be sent again
//! and one that landed never is. A full client queue is the appender's to
//! wait out (backpressure), never an error for the caller.

use super::{Appender, DeadLetter, SourceError};
use crate::shutdown::Shutdown;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One record on its way out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Message key (partitions by it, as Kafka does).
    pub key: Vec<u8>,
    /// Message body.
    pub payload: Vec<u8>,
    /// Kafka headers (the embedded log has none: see [`Outgoing::dead_letter`]).
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl Outgoing {
    /// A record with a key and a payload, no headers.
    pub fn new(key: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> Outgoing {
        Outgoing {
            key: key.into(),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// The record a dead letter becomes. With `headers` (Kafka) the message is
    /// kept byte for byte and the reason and origin travel as headers
    /// (`stockflow-error`, `-error-class`, `-source-topic`, `-source-partition`,
    /// `-source-offset`); without (the embedded log) it is one JSON envelope:
    /// `error`, `error_class`, `source_topic`, `source_partition`,
    /// `source_offset`, `key` and `payload` (both as UTF-8 text, lossy).
    pub fn dead_letter(letter: &DeadLetter<'_>, headers: bool) -> Outgoing {
        let key = letter.record.key.clone().unwrap_or_default();
        if headers {
            let headers = vec![
                ("stockflow-error", letter.reason.as_bytes().to_vec()),
                ("stockflow-error-class", letter.class.as_bytes().to_vec()),
                ("stockflow-source-topic", letter.topic.as_bytes().to_vec()),
                (
                    "stockflow-source-partition",
                    letter.partition.to_string().into_bytes(),
                ),
                (
                    "stockflow-source-offset",
                    letter.record.offset.to_string().into_bytes(),
                ),
            ];
            return Outgoing {
                key,
                payload: letter.record.payload.clone(),
                headers,
            };
        }
        let envelope = DeadLetterEnvelope {
            error: letter.reason,
            error_class: letter.class,
            key: letter.record.key.as_deref().map(String::from_utf8_lossy),
            payload: String::from_utf8_lossy(&letter.record.payload),
            source_offset: letter.record.offset,
            source_partition: letter.partition,
            source_topic: letter.topic,
        };
        Outgoing {
            key,
            payload: serde_json::to_vec(&envelope).expect("dead letters serialize"),
            headers: Vec::new(),
        }
    }
}

/// A dead letter as the embedded log's `<topic>.dlq` carries it (fields in
/// alphabetical order, as the JSON value it replaced wrote them).
#[derive(serde::Serialize)]
struct DeadLetterEnvelope<'a> {
    /// Why the message was rejected.
    error: &'a str,
    /// Short class of the reason (`json`, `missing_field`, ...).
    error_class: &'static str,
    /// The message's key, as UTF-8 text (lossy).
    key: Option<std::borrow::Cow<'a, str>>,
    /// The message, as UTF-8 text (lossy).
    payload: std::borrow::Cow<'a, str>,
    /// Offset it was read at.
    source_offset: u64,
    /// Partition it was read from.
    source_partition: u32,
    /// Topic it was read from.
    source_topic: &'a str,
}

/// Where one record of a batch stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Landing {
    /// Handed to the appender, not yet reported.
    Queued,
    /// Durable at `(partition, offset)`.
    Landed(u32, u64),
    /// Not appended: why. Safe to send again.
    Failed(String),
}

/// The delivery reports of one batch, filled in by the appender (from any
/// thread) and awaited by the batch's owner.
#[derive(Debug, Default)]
pub struct Acks {
    slots: Mutex<Slots>,
    reported: Condvar,
}

#[derive(Debug, Default)]
struct Slots {
    landings: Vec<Landing>,
    /// Slots still [`Landing::Queued`].
    queued: usize,
}

impl Acks {
    /// The slots, also after a panic elsewhere (a report is one assignment).
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records handed over and not reported yet.
    fn queued(&self) -> usize {
        self.lock().queued
    }

    /// The slots whose delivery failed, and the last failure's error.
    fn failures(&self) -> (Vec<usize>, Option<String>) {
        let slots = self.lock();
        let mut failed = Vec::new();
        let mut last_error = None;
        for (slot, landing) in slots.landings.iter().enumerate() {
            if let Landing::Failed(error) = landing {
                failed.push(slot);
                last_error = Some(error);
            }
        }
        (failed, last_error.cloned())
    }

    /// Reports where record `slot` landed, or why it did not.
    pub fn report(&self, slot: usize, landing: Result<(u32, u64), String>) {
        let mut slots = self.lock();
        if slots.landings.get(slot) != Some(&Landing::Queued) {
            return; // a report for a slot not awaited (cannot happen; never double-count)
        }
        slots.landings[slot] = match landing {
            Ok((partition, offset)) => Landing::Landed(partition, offset),
            Err(error) => Landing::Failed(error),
        };
        slots.queued -= 1;
        if slots.queued == 0 {
            self.reported.notify_all();
        }
    }

    /// Marks `slot` queued (growing the batch as needed).
    fn queue(&self, slot: usize) {
        let mut slots = self.lock();
        if slots.landings.len() <= slot {
            slots
                .landings
                .resize(slot + 1, Landing::Failed(String::new()));
        }
        slots.landings[slot] = Landing::Queued;
        slots.queued += 1;
    }

    /// Waits up to `timeout` for every queued slot to be reported; true when none is left.
    fn wait(&self, timeout: Duration) -> bool {
        let slots = self.lock();
        let (slots, _) = self
            .reported
            .wait_timeout_while(slots, timeout, |slots| slots.queued > 0)
            .unwrap_or_else(|p| p.into_inner());
        slots.queued == 0
    }

    fn take(&self) -> Vec<Landing> {
        let mut slots = self.lock();
        slots.queued = 0;
        std::mem::take(&mut slots.landings)
    }
}

/// Each record's `(partition, offset)`, or why it did not land, in push order.
pub type Landings = Vec<Result<(u32, u64), String>>;

/// How long [`Outbox::settle`] keeps trying.
#[derive(Clone, Copy, Debug)]
pub enum Patience<'a> {
    /// Until every record is acknowledged, re-sending failed ones with
    /// backoff; after `shutdown` is triggered, for [`SHUTDOWN_GRACE`] more.
    UntilAcknowledged(&'a Shutdown),
    /// One attempt: each record's first report is its answer.
    Once,
}

/// How long an outbox keeps waiting for acknowledgements once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why [`Outbox::settle`] returned with records not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("{unacknowledged} of {total} records to {topics} not acknowledged ({detail})")]
pub struct Unacknowledged {
    /// Records without an acknowledgement.
    pub unacknowledged: usize,
    /// Records in the batch.
    pub total: usize,
    /// The topics they were for.
    pub topics: String,
    /// The last failure reported, or that shutdown cut the wait.
    pub detail: String,
}

/// What a settled batch did, for metrics and `/ready`.
pub trait Watch {
    /// `failed` records to `topic` were not delivered (the last error:
    /// `error`); they will be sent again after `retry_in`.
    fn failed(&self, topic: &str, failed: usize, error: &str, retry_in: Duration);
    /// Why the batch is still waiting for acknowledgements (`None`: it no longer is).
    fn waiting(&self, why: Option<String>);
}

/// A [`Watch`] that only logs.
pub struct LogOnly;

impl Watch for LogOnly {
    fn failed(&self, topic: &str, failed: usize, error: &str, retry_in: Duration) {
        tracing::warn!(
            topic,
            failed,
            error,
            retry_in_ms = retry_in.as_millis() as u64,
            "records not acknowledged; sending them again"
        );
    }
    fn waiting(&self, _why: Option<String>) {}
}

/// Records for one or more topics, each kept until acknowledged.
pub struct Outbox {
    appender: Arc<dyn Appender>,
    /// The distinct topics of the records.
    topics: Vec<String>,
    /// `(topic index, record)`, slot by slot.
    records: Vec<(usize, Outgoing)>,
    /// Slots pushed but not yet handed to the appender.
    unsent: usize,
    acks: Arc<Acks>,
}

/// After this long without every acknowledgement, the wait is reported to [`Watch::waiting`].
const REPORT_WAIT_AFTER: Duration = Duration::from_secs(1);

impl Outbox {
    /// An empty outbox writing through `appender`.
    pub fn new(appender: Arc<dyn Appender>) -> Outbox {
        Outbox {
            appender,
            topics: Vec::new(),
            records: Vec::new(),
            unsent: 0,
            acks: Arc::default(),
        }
    }

    /// Whether the appender's log carries headers (see [`Outgoing::dead_letter`]).
    pub fn carries_headers(&self) -> bool {
        self.appender.carries_headers()
    }

    /// Records pushed since the last settle.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing was pushed since the last settle.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a record for `topic`; it leaves at the next [`Outbox::send`] or [`Outbox::settle`].
    pub fn push(&mut self, topic: &str, record: Outgoing) {
        let index = match self.topics.iter().position(|t| t == topic) {
            Some(index) => index,
            None => {
                self.topics.push(topic.to_owned());
                self.topics.len() - 1
            }
        };
        self.records.push((index, record));
        self.unsent += 1;
    }

    /// Hands the records pushed since the last send to the appender without
    /// waiting for their acknowledgements (the appender blocks only while
    /// its client's queue is full).
    pub fn send(&mut self) {
        if self.unsent == 0 {
            return;
        }
        let first = self.records.len() - self.unsent;
        let slots: Vec<usize> = (first..self.records.len()).collect();
        self.unsent = 0;
        self.hand_over(&slots);
    }

    fn hand_over(&self, slots: &[usize]) {
        for &slot in slots {
            self.acks.queue(slot);
        }
        // One call per topic, in slot order within it.
        for (index, topic) in self.topics.iter().enumerate() {
            let batch: Vec<(usize, &Outgoing)> = slots
                .iter()
                .filter(|&&slot| self.records[slot].0 == index)
                .map(|&slot| (slot, &self.records[slot].1))
                .collect();
            if !batch.is_empty() {
                self.appender.enqueue(topic, &batch, &self.acks);
            }
        }
    }

    /// Sends what is unsent and waits for every record's acknowledgement;
    /// with [`Patience::UntilAcknowledged`] records whose delivery failed are
    /// sent again (only those) with backoff. Returns each record's
    /// `(partition, offset)` in push order and empties the outbox; with
    /// [`Patience::Once`], a failed record's slot holds its error.
    pub fn settle(
        &mut self,
        patience: Patience<'_>,
        watch: &dyn Watch,
    ) -> Result<Landings, Unacknowledged> {
        self.send();
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut stopping_since: Option<Instant> = None;
        let mut reported_wait = false;
        let result = loop {
            if self.acks.wait(Duration::from_millis(100)) {
                let (failed, last_error) = self.acks.failures();
                match (failed.is_empty(), patience) {
                    (true, _) | (false, Patience::Once) => {
                        let landings = self.acks.take();
                        break Ok(landings
                            .into_iter()
                            .map(|landing| match landing {
                                Landing::Landed(partition, offset) => Ok((partition, offset)),
                                Landing::Failed(error) => Err(error),
                                Landing::Queued => Err("not reported".into()),
                            })
                            .collect());
                    }
                    (false, Patience::UntilAcknowledged(shutdown)) => {
                        let error = last_error.unwrap_or_default();
                        if shutdown.is_triggered() {
                            break Err(self.unacknowledged(failed.len(), error));
                        }
                        attempts += 1;
                        let backoff = stockflow_sinks::backoff::OUTBOX_RESEND.delay(attempts);
                        for (index, topic) in self.topics.iter().enumerate() {
                            let count = failed
                                .iter()
                                .filter(|&&slot| self.records[slot].0 == index)
                                .count();
                            if count > 0 {
                                watch.failed(topic, count, &error, backoff);
                            }
                        }
                        watch.waiting(Some(format!(
                            "{} records to {} not acknowledged: {error}; sending them again (attempt {})",
                            failed.len(),
                            self.topics.join(", "),
                            attempts + 1
                        )));
                        reported_wait = true;
                        sleep_unless(shutdown, backoff);
                        self.hand_over(&failed);
                    }
                }
                continue;
            }
            if let Patience::UntilAcknowledged(shutdown) = patience {
                if shutdown.is_triggered() {
                    let since = *stopping_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > SHUTDOWN_GRACE {
                        let queued = self.acks.queued();
                        break Err(self.unacknowledged(
                            queued,
                            "shutdown came first; their delivery is unknown".into(),
                        ));
                    }
                }
            }
            if started.elapsed() > REPORT_WAIT_AFTER {
                let queued = self.acks.queued();
                watch.waiting(Some(format!(
                    "waiting {:.0?} for the acknowledgement of {queued} records to {}",
                    started.elapsed(),
                    self.topics.join(", ")
                )));
                reported_wait = true;
            }
        };
        if reported_wait {
            watch.waiting(None);
        }
        self.records.clear();
        self.topics.clear();
        self.unsent = 0;
        self.acks.take();
        result
    }

    fn unacknowledged(&self, unacknowledged: usize, detail: String) -> Unacknowledged {
        Unacknowledged {
            unacknowledged,
            total: self.records.len(),
            topics: self.topics.join(", "),
            detail,
        }
    }
}

/// Sleeps `duration`, in short steps that end early once `shutdown` is triggered.
fn sleep_unless(shutdown: &Shutdown, duration: Duration) {
    let until = Instant::now() + duration;
    while !shutdown.is_triggered() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

impl From<Unacknowledged> for SourceError {
    fn from(error: Unacknowledged) -> SourceError {
        SourceError::Broker {
            what: format!("appending to {}", error.topics),
            detail: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Record;

    /// The envelope is the contract of the embedded log's dead-letter
    /// topics: the typed envelope writes what the JSON value always did.
    #[test]
    fn a_dead_letter_envelope_writes_the_documented_fields_in_their_order() {
        for key in [Some(b"acme/A-1".to_vec()), None] {
            let record = Record {
                offset: 41,
                timestamp_ms: 0,
                key: key.clone(),
                payload: b"{\"id\": \xff}".to_vec(),
            };
            let letter = DeadLetter {
                topic: "inventory.events",
                partition: 2,
                record: &record,
                reason: "not JSON: \"quoted\"",
                class: "json",
            };
            let expected = serde_json::json!({
                "error": letter.reason,
                "error_class": letter.class,
                "source_topic": letter.topic,
                "source_partition": letter.partition,
                "source_offset": record.offset,
                "key": key.as_deref().map(String::from_utf8_lossy),
                "payload": String::from_utf8_lossy(&record.payload),
            });
            let written = Outgoing::dead_letter(&letter, false).payload;
            assert_eq!(String::from_utf8(written).unwrap(), expected.to_string());
        }
    }
}
