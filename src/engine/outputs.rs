//! What the publisher writes before it publishes, and waits for: the
//! decider's outcomes, new alert transitions and the workers' dead letters
//! ([`Letters`]), on a scoped thread beside the publisher ([`Writer`]).

use crate::metrics::Metrics;
use crate::rows::AlertEvent;
use crate::shutdown::Shutdown;
use crate::source::outbox::{LogOnly, Patience, Unacknowledged, Watch};
use crate::source::{Appender, DeadLetter, Outbox, Outgoing};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use stockflow_dataflows::alerts::{Alert, AlertKind};
use stockflow_dataflows::model::{Epoch, Event, StockKey};

/// One worker's dead letters of one epoch: sent to `<topic>.dlq` as they
/// come, and acknowledged before the publisher publishes the epoch (it
/// waits for them), so no message is skipped without its letter written.
pub struct Letters {
    /// `None`: dead letters are off (counted only).
    outbox: Option<Outbox>,
    /// Letters per (source topic, reason class), counted once acknowledged.
    counts: Vec<((String, &'static str), u64)>,
    /// The epoch they were read in.
    epoch: Epoch,
}

impl Letters {
    /// No letters yet; written through `appender` (`None`: not written).
    pub fn new(appender: Option<Arc<dyn Appender>>) -> Letters {
        Letters {
            outbox: appender.map(Outbox::new),
            counts: Vec::new(),
            epoch: 0,
        }
    }

    /// Adds a letter (it leaves at the next [`Letters::send`]).
    pub fn push(&mut self, letter: &DeadLetter<'_>) {
        let Some(outbox) = self.outbox.as_mut() else {
            return;
        };
        outbox.push(
            &format!("{}.dlq", letter.topic),
            Outgoing::dead_letter(letter, outbox.carries_headers()),
        );
        match self
            .counts
            .iter_mut()
            .find(|((topic, class), _)| topic == letter.topic && *class == letter.class)
        {
            Some((_, count)) => *count += 1,
            None => self
                .counts
                .push(((letter.topic.to_owned(), letter.class), 1)),
        }
    }

    /// Hands the letters pushed so far to the producer, without waiting.
    pub fn send(&mut self) {
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.send();
        }
    }

    /// True when there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.outbox.as_ref().is_none_or(Outbox::is_empty)
    }

    /// Labels the letters with the epoch they were read in.
    pub fn for_epoch(mut self, epoch: Epoch) -> Letters {
        self.epoch = epoch;
        self
    }
}

/// What the publisher's waits for acknowledgements do: count failures by
/// topic, and say in `/ready` which output holds the engine back.
pub(super) struct OutputWatch<'a> {
    pub(super) store: &'a Store,
    pub(super) metrics: &'a Metrics,
}

impl Watch for OutputWatch<'_> {
    fn failed(&self, topic: &str, failed: usize, error: &str, retry_in: std::time::Duration) {
        self.metrics
            .append_failures
            .with_label_values(&[topic])
            .inc_by(failed as u64);
        LogOnly.failed(topic, failed, error, retry_in);
    }

    fn waiting(&self, why: Option<String>) {
        self.store.status.set_held_back("publisher", why);
    }
}

/// Where alert transitions are written: the alerts topic, with the
/// transitions it already holds, so that a transition computed again after a
/// restart (the views are rebuilt from the log) is not written twice.
pub struct AlertsOut {
    /// `alerts.events`.
    pub topic: String,
    /// The highest transition already in the topic per stock row, by kind
    /// (indexed by `AlertKind as usize`).
    pub written: HashMap<StockKey, [u64; 2]>,
}

/// What the publisher writes before it publishes: the decider's outcomes,
/// new alert transitions and the workers' dead letters.
pub(super) struct Writer {
    pub(super) appender: Option<Arc<dyn Appender>>,
    pub(super) letters: std::sync::mpsc::Receiver<Letters>,
    /// Letters of epochs not published yet.
    pub(super) letters_due: Vec<Letters>,
    pub(super) outcomes_to: Option<String>,
    pub(super) alerts_to: Option<AlertsOut>,
}

impl Writer {
    /// Whether a publish of the epochs up to `through` with these
    /// `outcomes` and `alerts` has anything to write or wait for (the
    /// letters the workers sent so far are taken in; those of later epochs
    /// wait for their publish).
    pub(super) fn has_work(
        &mut self,
        outcomes: &[Event],
        alerts: &[(Alert, Epoch)],
        through: Epoch,
    ) -> bool {
        self.letters_due.extend(self.letters.try_iter());
        let writes = self.appender.is_some()
            && ((self.outcomes_to.is_some() && !outcomes.is_empty())
                || (self.alerts_to.is_some() && !alerts.is_empty()));
        writes
            || self
                .letters_due
                .iter()
                .any(|letters| letters.epoch <= through)
    }

    /// Appends `outcomes` (to the event topic) and the `alerts` transitions
    /// the alerts topic does not hold yet, and waits until they and the dead
    /// letters of every epoch up to `through` are acknowledged. Fails only
    /// at shutdown (records are retried until then).
    pub(super) fn write(
        &mut self,
        mut outcomes: Vec<Event>,
        alerts: &[(Alert, Epoch)],
        through: Epoch,
        shutdown: &Shutdown,
        watch: &OutputWatch<'_>,
        metrics: &Metrics,
    ) -> Result<(), Unacknowledged> {
        let mut outbox = self.appender.clone().map(Outbox::new);
        let mut outcomes_out = 0;
        if let (Some(topic), Some(outbox)) = (&self.outcomes_to, outbox.as_mut()) {
            outcomes.sort_by(|a, b| (&a.tenant, a.seq, &a.id).cmp(&(&b.tenant, b.seq, &b.id)));
            for event in &outcomes {
                let key = format!(
                    "{}/{}",
                    event.tenant,
                    event.body.sku().map(|s| s.as_str()).unwrap_or("")
                );
                outbox.push(
                    topic,
                    Outgoing::new(
                        key,
                        serde_json::to_vec(&stockflow_dataflows::model::encode_event(event))
                            .expect("JSON values serialize"),
                    ),
                );
            }
            outcomes_out = outcomes.len();
        }
        let fresh = match (self.alerts_to.as_ref(), outbox.as_mut()) {
            (Some(out), Some(outbox)) => out.queue(alerts, outbox),
            _ => Vec::new(),
        };
        if let Some(outbox) = outbox.as_mut() {
            outbox.send();
        }
        let (due, later): (Vec<Letters>, Vec<Letters>) = std::mem::take(&mut self.letters_due)
            .into_iter()
            .partition(|l| l.epoch <= through);
        self.letters_due = later;
        let mut halted = Ok(());
        for mut due in due {
            let Some(letters) = due.outbox.as_mut() else {
                continue;
            };
            match letters.settle(Patience::UntilAcknowledged(shutdown), watch) {
                Ok(_) => {
                    for ((topic, class), count) in due.counts {
                        metrics
                            .dead_letters
                            .with_label_values(&[&topic, class])
                            .inc_by(count);
                        metrics
                            .events_out
                            .with_label_values(&[&format!("{topic}.dlq")])
                            .inc_by(count);
                    }
                }
                Err(error) => halted = Err(error),
            }
        }
        if let Some(outbox) = outbox.as_mut() {
            match outbox.settle(Patience::UntilAcknowledged(shutdown), watch) {
                Ok(_) => {
                    if let Some(topic) = self.outcomes_to.as_ref().filter(|_| outcomes_out > 0) {
                        metrics.outcomes.inc_by(outcomes_out as u64);
                        metrics
                            .events_out
                            .with_label_values(&[topic.as_str()])
                            .inc_by(outcomes_out as u64);
                    }
                    if let Some(out) = self.alerts_to.as_mut() {
                        out.written(&fresh, metrics);
                    }
                }
                Err(error) => halted = Err(error),
            }
        }
        halted
    }
}

impl AlertsOut {
    /// Queues the transitions the alerts topic does not hold yet, keyed
    /// `tenant/sku` (one partition per sku: in order per key); returns them,
    /// to note as written once acknowledged.
    fn queue(
        &self,
        alerts: &[(Alert, Epoch)],
        outbox: &mut Outbox,
    ) -> Vec<(StockKey, AlertKind, u64)> {
        let mut fresh = Vec::new();
        for (alert, epoch) in alerts {
            if self
                .written
                .get(&alert.key)
                .is_some_and(|written| alert.transition <= written[alert.kind as usize])
            {
                continue;
            }
            let key = format!("{}/{}", alert.key.tenant, alert.key.sku);
            outbox.push(
                &self.topic,
                Outgoing::new(
                    key,
                    serde_json::to_vec(&AlertEvent::of(alert, *epoch))
                        .expect("alert events serialize"),
                ),
            );
            fresh.push((alert.key.clone(), alert.kind, alert.transition));
        }
        fresh
    }

    /// Notes `fresh` transitions as written (acknowledged).
    fn written(&mut self, fresh: &[(StockKey, AlertKind, u64)], metrics: &Metrics) {
        if fresh.is_empty() {
            return;
        }
        metrics.alerts_written.inc_by(fresh.len() as u64);
        metrics
            .events_out
            .with_label_values(&[self.topic.as_str()])
            .inc_by(fresh.len() as u64);
        for (key, kind, transition) in fresh {
            self.written.entry(key.clone()).or_default()[*kind as usize] = *transition;
        }
    }
}
