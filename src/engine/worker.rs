//! A timely worker's loop: reads its share of the source partitions in
//! epochs, decodes each message (a bad one becomes a dead letter), feeds the
//! dataflow, reports how far each partition got, and waits while too many
//! events are in flight.

use super::outputs::Letters;
use super::views::{self, Completed, Publisher};
use super::{EngineConfig, Input, Plan, Progress};
use super::{IDLE_POLL, MAX_EPOCHS_IN_FLIGHT, READ_CHUNK};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::source::{DeadLetter, PartitionReader, SourceError};
use crate::store::Store;
use differential_dataflow::input::InputSession;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflows::model::tradex::decode_tradex_command;
use stockflow_dataflows::model::{decode_command, Command, Epoch, Event, RecordContext};
use timely::dataflow::operators::probe::Handle;
use timely::worker::Worker;

/// The dataflow's inputs.
struct Inputs {
    events: InputSession<Epoch, Event, isize>,
    commands: InputSession<Epoch, Command, isize>,
    /// How far each partition has been read.
    progress: InputSession<Epoch, Progress, isize>,
    /// Worker 0's wall clock (ms) as each epoch closes: what ages the
    /// de-duplication window.
    clock: InputSession<Epoch, i64, isize>,
    /// Ids a checkpoint folded, for the de-duplication window to remember.
    seen: InputSession<Epoch, u128, isize>,
}

impl Inputs {
    /// Moves every input to `epoch` and sends what they hold.
    fn advance_to(&mut self, epoch: Epoch) {
        self.events.advance_to(epoch);
        self.commands.advance_to(epoch);
        self.progress.advance_to(epoch);
        self.clock.advance_to(epoch);
        self.seen.advance_to(epoch);
        self.seen.flush();
        self.events.flush();
        self.commands.flush();
        self.progress.flush();
        self.clock.flush();
    }
}

/// One partition this worker reads.
struct Assigned {
    source: u32,
    topic: String,
    input: Input,
    reader: Box<dyn PartitionReader>,
    /// Position last reported to the publisher.
    reported: Option<u64>,
    /// When to retry after a read error.
    retry_at: Option<Instant>,
    failures: u32,
}

/// What closing an epoch needs besides the inputs.
struct Clock<'a> {
    index: usize,
    closed_at: &'a RefCell<BTreeMap<Epoch, Instant>>,
    probe: &'a Handle<Epoch>,
    shutdown: &'a Shutdown,
}

impl Clock<'_> {
    /// Closes `epoch` (its progress already inserted): notes when, moves
    /// every input to the next epoch, and waits while more than
    /// [`MAX_EPOCHS_IN_FLIGHT`] epochs are not through the dataflow.
    fn close(&self, worker: &mut Worker, inputs: &mut Inputs, epoch: &mut Epoch) {
        if self.index == 0 {
            self.closed_at.borrow_mut().insert(*epoch, Instant::now());
            let wall_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64);
            inputs.clock.insert(wall_ms);
        }
        *epoch += 1;
        inputs.advance_to(*epoch);
        worker.step();
        while self
            .probe
            .less_than(&epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT))
            && !self.shutdown.is_triggered()
        {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
}

pub(super) fn run(
    worker: &mut Worker,
    config: &EngineConfig,
    plan: &Plan,
    store: &Arc<Store>,
    metrics: &Metrics,
    shutdown: &Shutdown,
    (to_publisher, letters_to_publisher): (
        std::sync::mpsc::Sender<Completed>,
        std::sync::mpsc::Sender<Letters>,
    ),
) -> Result<(), SourceError> {
    let index = worker.index();
    let peers = worker.peers();
    let closed_at: Rc<RefCell<BTreeMap<Epoch, Instant>>> = Rc::default();
    let probe = Handle::new();

    let mut inputs: Inputs = worker.dataflow::<Epoch, _, _>(|scope| {
        use differential_dataflow::input::Input as _;
        let (events_in, events) = scope.new_collection();
        let (commands_in, commands) = scope.new_collection();
        let (progress_in, progress) = scope.new_collection();
        let (clock_in, clock) = scope.new_collection();
        let (seen_in, seen) = scope.new_collection();
        let publisher = Publisher::new(index, closed_at.clone(), to_publisher);
        views::views(
            views::Inputs {
                events,
                commands,
                progress,
                clock,
                seen,
            },
            config,
            plan.restored_alerts.clone(),
            metrics.dedup.clone(),
            publisher,
            &probe,
        );
        Inputs {
            events: events_in,
            commands: commands_in,
            progress: progress_in,
            clock: clock_in,
            seen: seen_in,
        }
    });

    let mut assigned = Vec::new();
    let mut flat = 0usize;
    for (source, (topic, input)) in plan.inputs.iter().enumerate() {
        for partition in 0..topic.partitions() {
            if flat % peers == index {
                assigned.push(Assigned {
                    source: source as u32,
                    topic: topic.topic().to_owned(),
                    input: *input,
                    reader: topic.reader(partition, plan.starts[source][partition as usize])?,
                    reported: None,
                    retry_at: None,
                    failures: 0,
                });
            }
            flat += 1;
        }
    }
    tracing::info!(
        worker = index,
        partitions = assigned.len(),
        "worker started"
    );

    let clock = Clock {
        index,
        closed_at: &closed_at,
        probe: &probe,
        shutdown,
    };
    // Epoch 0 stays empty: an `as_of.epoch` of 0 means "nothing published yet".
    let mut epoch: Epoch = plan.first_epoch;
    inputs.advance_to(epoch);
    if let Some(restore) = &plan.restore {
        // The checkpoint's events, alone in their epochs (the `low_stock`
        // operator restores its states there), spread over the workers,
        // in epochs of `epoch_max_events` as the log would be read.
        if index == 0 {
            let ids = std::mem::take(&mut *restore.ids.lock().unwrap_or_else(|p| p.into_inner()));
            for digest in ids {
                inputs.seen.insert(digest);
            }
        }
        let share = std::mem::take(
            &mut *restore.shares[index]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (n, events) in share.into_iter().enumerate() {
            for event in events {
                inputs.events.insert(event);
            }
            if n as Epoch + 1 == restore.epochs {
                // The views reflect the checkpoint's offsets once all of it is in.
                for part in assigned.iter_mut() {
                    let position = part.reader.position();
                    inputs
                        .progress
                        .insert((part.source, part.reader.partition(), position));
                    part.reported = Some(position);
                }
            }
            clock.close(worker, &mut inputs, &mut epoch);
        }
        debug_assert_eq!(epoch, plan.first_epoch + restore.epochs);
        if index == 0 {
            while probe.less_than(&epoch) && !shutdown.is_triggered() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            store.status.set_waiting(None);
        }
    }
    let mut records = Vec::with_capacity(READ_CHUNK);
    let mut events = Vec::new();
    let mut commands_open = false;
    // This epoch's dead letters: sent as they come, acknowledged before
    // the publisher publishes the epoch (it waits for them).
    let new_letters = || Letters::new(config.appender.clone().filter(|_| config.dead_letters));
    let mut letters = new_letters();
    // Messages read per closed epoch not yet published, oldest first, and their sum.
    let budget = (config.max_in_flight / peers).max(1);
    let mut in_flight: std::collections::VecDeque<(Epoch, usize)> =
        std::collections::VecDeque::new();
    let mut in_flight_sum = 0usize;
    while !shutdown.is_triggered() {
        let deadline = Instant::now() + config.epoch;
        let mut read_in_epoch = 0usize;
        loop {
            let mut read_now = 0usize;
            if !commands_open {
                commands_open = store.snapshot().as_of.covers(&plan.event_targets);
            }
            let published = store.published_epoch();
            while let Some(&(_, count)) =
                in_flight.front().filter(|(closed, _)| *closed <= published)
            {
                in_flight.pop_front();
                in_flight_sum -= count;
                metrics.events_in_flight.sub(count as i64);
            }
            for part in assigned.iter_mut() {
                // Room left under the bound on events in flight (0: wait for the publisher).
                let room = budget.saturating_sub(in_flight_sum + read_in_epoch + read_now);
                let is_commands = matches!(part.input, Input::Commands | Input::TradexCommands);
                if room == 0
                    || part.retry_at.is_some_and(|at| Instant::now() < at)
                    || (is_commands && !commands_open)
                {
                    continue;
                }
                records.clear();
                let budget = READ_CHUNK
                    .min(
                        config
                            .epoch_max_events
                            .saturating_sub(read_in_epoch + read_now)
                            .max(1),
                    )
                    .min(room);
                match part.reader.read(budget, &mut records) {
                    Ok(_) => {
                        if part.failures > 0 {
                            tracing::info!(topic = %part.topic, partition = part.reader.partition(), "source reads again");
                            store.status.set_source_failure(
                                &part.topic,
                                part.reader.partition(),
                                None,
                            );
                        }
                        part.failures = 0;
                        part.retry_at = None;
                    }
                    Err(error) => {
                        store.status.set_source_failure(
                            &part.topic,
                            part.reader.partition(),
                            Some(error.to_string()),
                        );
                        part.failures += 1;
                        let backoff = stockflow_sinks::backoff::SOURCE_READ.delay(part.failures);
                        tracing::warn!(%error, topic = %part.topic, partition = part.reader.partition(), retry_in_ms = backoff.as_millis() as u64, "source read failed");
                        metrics
                            .source_errors
                            .with_label_values(&[&part.topic])
                            .inc();
                        part.retry_at = Some(Instant::now() + backoff);
                        continue;
                    }
                }
                let mut decoded = 0u64;
                let partition = part.reader.partition();
                for record in records.drain(..) {
                    let result = match part.input {
                        Input::Events(format) => {
                            format.decode(&part.topic, partition, &record, &mut events)
                        }
                        Input::Commands => decode_command(
                            &record.payload,
                            RecordContext {
                                offset: record.offset,
                                log_time: Some(record.timestamp_ms),
                            },
                        )
                        .map(|command| inputs.commands.insert(command)),
                        Input::TradexCommands => decode_tradex_command(
                            &part.topic,
                            partition,
                            &record.payload,
                            RecordContext {
                                offset: record.offset,
                                log_time: Some(record.timestamp_ms),
                            },
                        )
                        .map(|commands| {
                            commands
                                .into_iter()
                                .for_each(|command| inputs.commands.insert(command))
                        }),
                    };
                    match result {
                        Ok(()) => {
                            for event in events.drain(..) {
                                inputs.events.insert(event);
                                decoded += 1;
                            }
                        }
                        Err(error) => {
                            tracing::debug!(topic = %part.topic, partition, offset = record.offset, %error, "message does not decode: to the dead-letter topic");
                            metrics
                                .decode_errors
                                .with_label_values(&[&part.topic, error.class()])
                                .inc();
                            let reason = error.to_string();
                            let letter = DeadLetter {
                                topic: &part.topic,
                                partition,
                                record: &record,
                                reason: &reason,
                                class: error.class(),
                            };
                            letters.push(&letter);
                        }
                    }
                    read_now += 1;
                }
                if decoded > 0 {
                    metrics
                        .events_in
                        .with_label_values(&[&part.topic])
                        .inc_by(decoded);
                }
                letters.send();
            }
            read_in_epoch += read_now;
            let now = Instant::now();
            if read_in_epoch >= config.epoch_max_events
                || now >= deadline
                || shutdown.is_triggered()
            {
                break;
            }
            if read_now == 0 {
                // Nothing to read right now. While data flows (this epoch had
                // some), linger a moment so that reads come in chunks; when
                // idle, sleep to the epoch's end: what arrives before it is
                // published when the epoch closes, not earlier, so waking
                // sooner would not make it visible sooner.
                let wait = if read_in_epoch > 0 {
                    (deadline - now).min(IDLE_POLL)
                } else {
                    deadline - now
                };
                worker.step_or_park(Some(wait));
            } else {
                worker.step();
            }
        }

        // Close the epoch: record how far each partition got, move time on.
        for part in assigned.iter_mut() {
            let position = part.reader.position();
            if part.reported != Some(position) {
                inputs
                    .progress
                    .insert((part.source, part.reader.partition(), position));
                part.reported = Some(position);
            }
            let partition = part.reader.partition().to_string();
            let labels = [part.topic.as_str(), partition.as_str()];
            metrics
                .source_position
                .with_label_values(&labels)
                .set(position as i64);
            if let Ok(end) = part.reader.end_offset() {
                metrics
                    .source_end
                    .with_label_values(&labels)
                    .set(end as i64);
                metrics
                    .source_lag
                    .with_label_values(&labels)
                    .set(end.saturating_sub(position) as i64);
            }
        }
        if !letters.is_empty() {
            // Before the epoch closes: the publisher has them when it can publish it.
            let _ = letters_to_publisher
                .send(std::mem::replace(&mut letters, new_letters()).for_epoch(epoch));
        }
        if read_in_epoch > 0 {
            in_flight.push_back((epoch, read_in_epoch));
            in_flight_sum += read_in_epoch;
            metrics.events_in_flight.add(read_in_epoch as i64);
        }
        clock.close(worker, &mut inputs, &mut epoch);
    }
    metrics.events_in_flight.sub(in_flight_sum as i64);
    drop(inputs);
    while worker.step_or_park(Some(Duration::from_millis(10))) {}
    tracing::info!(worker = index, epoch, "worker stopped");
    Ok(())
}
