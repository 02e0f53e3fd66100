//! Resuming from a checkpoint: checking that the sources still hold what it
//! resumes from (the gap policy), then taking it apart for the workers (its
//! events), the `low_stock` operator (alert states) and the publisher (the
//! alerts view's first rows).

use super::{EngineConfig, Input};
use crate::metrics::Metrics;
use crate::source::{Source, Start};
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use stockflow_dataflows::alerts::{AlertState, Restored};
use stockflow_dataflows::kpis::{Cell, KpiKey};
use stockflow_dataflows::model::{Epoch, Event, StockKey};

/// A checkpoint's events on their way into the dataflow.
pub(super) struct RestorePlan {
    /// How many epochs carry them, from the run's first.
    pub(super) epochs: Epoch,
    /// Per worker, per epoch: the events that worker inserts (taken once).
    pub(super) shares: Vec<std::sync::Mutex<Vec<Vec<Event>>>>,
    /// Digests of the ids the checkpoint folded: the de-duplication window
    /// remembers them (worker 0 inserts them, taken once).
    pub(super) ids: std::sync::Mutex<Vec<u128>>,
}

/// A checkpoint taken apart for its three destinations: the workers (its
/// events), the `low_stock` operator (the alert states) and the publisher
/// (the alerts view's first rows).
pub(super) struct Restoring {
    pub(super) id: u64,
    pub(super) events: usize,
    pub(super) plan: RestorePlan,
    pub(super) states: Restored<Epoch>,
    pub(super) rows: Vec<stockflow_dataflows::alerts::Alert>,
    /// The KPI cells of the events the checkpoint folded, for the publisher.
    pub(super) cells: Vec<(KpiKey, Cell)>,
}

impl Restoring {
    /// The run's first `plan.epochs` epochs, from `first_epoch`, carry the
    /// events, `epoch_max_events` each, spread over the workers.
    pub(super) fn new(
        loaded: Arc<crate::checkpoint::Loaded>,
        config: &EngineConfig,
        first_epoch: Epoch,
    ) -> Restoring {
        let crate::checkpoint::Loaded {
            manifest,
            events,
            cells,
            ids,
            alerts,
        } = Arc::try_unwrap(loaded).unwrap_or_else(|shared| (*shared).clone());
        let count = events.len();
        let chunk = config.epoch_max_events.max(1);
        let epochs = count.div_ceil(chunk).max(1) as Epoch;
        let mut shares: Vec<Vec<Vec<Event>>> = (0..config.workers)
            .map(|_| (0..epochs).map(|_| Vec::new()).collect())
            .collect();
        for (n, event) in events.into_iter().enumerate() {
            shares[n % config.workers][n / chunk].push(event);
        }
        let mut states: HashMap<StockKey, [AlertState; 2]> = HashMap::new();
        for alert in &alerts {
            states.entry(alert.key.clone()).or_default()[alert.kind as usize] =
                AlertState::after(alert);
        }
        Restoring {
            id: manifest.id,
            events: count,
            plan: RestorePlan {
                epochs,
                shares: shares.into_iter().map(std::sync::Mutex::new).collect(),
                ids: std::sync::Mutex::new(ids),
            },
            states: Restored {
                epoch: first_epoch + epochs - 1,
                states: Arc::new(states),
            },
            rows: alerts,
            cells,
        }
    }
}

/// Checks that the sources still hold what `restore` resumes from: a
/// partition whose first message is past the checkpoint's offset (retention
/// deleted the rest) or that is empty while the checkpoint resumes past 0
/// (the topic was recreated) is a gap, handled by `policy`. Returns the
/// checkpoint to resume from (`None` when the policy says to replay); under
/// `accept`, a partition with deleted messages resumes at its first one held.
pub(super) fn check_gaps(
    restore: Option<Arc<crate::checkpoint::Loaded>>,
    inputs: &[(Arc<dyn Source>, Input, Start)],
    policy: crate::settings::GapPolicy,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<crate::checkpoint::Loaded>>> {
    use crate::settings::GapPolicy;
    let Some(mut loaded) = restore else {
        return Ok(None);
    };
    let mut gaps = Vec::new();
    let mut missing = 0u64;
    // Where each partition resumes under `accept`: its first message still held.
    let mut held: Vec<(String, u32, u64)> = Vec::new();
    for (source, input, _) in inputs {
        let Input::Events(_) = input else { continue };
        let Some(offsets) = loaded.manifest.offsets.get(source.topic()) else {
            continue;
        };
        for partition in 0..source.partitions() {
            let resume = offsets.get(&partition).copied().unwrap_or(0);
            let first = source.start_offset(partition).with_context(|| {
                format!("reading the first offset of {}/{partition}", source.topic())
            })?;
            let end = source
                .end_offset(partition)
                .with_context(|| format!("reading the end of {}/{partition}", source.topic()))?;
            if resume < first {
                gaps.push(format!("{}/{partition} resumes at offset {resume} but its first message is {first} ({} deleted)", source.topic(), first - resume));
                missing += first - resume;
                held.push((source.topic().to_owned(), partition, first));
            } else if end == 0 && resume > 0 {
                gaps.push(format!("{}/{partition} resumes at offset {resume} but holds no message (was the topic recreated?)", source.topic()));
            }
        }
    }
    if gaps.is_empty() {
        return Ok(Some(loaded));
    }
    let id = loaded.manifest.id;
    let listed = gaps.join("; ");
    match policy {
        GapPolicy::Fail => anyhow::bail!(
            "the sources no longer hold what checkpoint {id} resumes from: {listed}. Choose: `--on-checkpoint-gap replay` (ignore the checkpoint, rebuild the views from the messages still held) or `--on-checkpoint-gap accept` (resume from the checkpoint and skip the missing messages)"
        ),
        GapPolicy::Replay => {
            tracing::warn!(checkpoint = id, "{listed}: ignoring the checkpoint, rebuilding from the messages still held (--on-checkpoint-gap replay)");
            Ok(None)
        }
        GapPolicy::Accept => {
            let offsets = &mut Arc::make_mut(&mut loaded).manifest.offsets;
            for (topic, partition, first) in held {
                offsets.entry(topic).or_default().insert(partition, first);
            }
            metrics.checkpoint_gap.set(missing as i64);
            tracing::warn!(checkpoint = id, missing, "{listed}: resuming from the checkpoint without them (--on-checkpoint-gap accept)");
            Ok(Some(loaded))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{FileRef, Loaded, Manifest};
    use crate::settings::GapPolicy;
    use crate::source::{Format, PartitionReader, SourceError};
    use std::collections::BTreeMap;

    /// A topic whose partitions begin and end where the test says (retention at work).
    struct Retained {
        first: Vec<u64>,
        end: Vec<u64>,
    }

    impl Source for Retained {
        fn topic(&self) -> &str {
            "t"
        }
        fn partitions(&self) -> u32 {
            self.first.len() as u32
        }
        fn reader(
            &self,
            _partition: u32,
            _from: u64,
        ) -> Result<Box<dyn PartitionReader>, SourceError> {
            Err(SourceError::Invalid("not read in this test".into()))
        }
        fn end_offset(&self, partition: u32) -> Result<u64, SourceError> {
            Ok(self.end[partition as usize])
        }
        fn start_offset(&self, partition: u32) -> Result<u64, SourceError> {
            Ok(self.first[partition as usize])
        }
    }

    fn checkpoint(offsets: [u64; 2]) -> Arc<Loaded> {
        let file = FileRef {
            file: String::new(),
            records: 0,
            bytes: 0,
            crc32: 0,
        };
        let manifest = Manifest {
            format: 1,
            id: 7,
            created_ms: 0,
            epoch: 1,
            sources: vec!["t=stockflow".into()],
            offsets: BTreeMap::from([(
                "t".to_owned(),
                BTreeMap::from([(0, offsets[0]), (1, offsets[1])]),
            )]),
            state: None,
            segments: Vec::new(),
            alerts: file,
        };
        Arc::new(Loaded {
            manifest,
            events: Vec::new(),
            cells: Vec::new(),
            ids: Vec::new(),
            alerts: Vec::new(),
        })
    }

    fn inputs(first: [u64; 2], end: [u64; 2]) -> Vec<(Arc<dyn Source>, Input, Start)> {
        vec![(
            Arc::new(Retained {
                first: first.to_vec(),
                end: end.to_vec(),
            }),
            Input::Events(Format::Stockflow),
            Start::Earliest,
        )]
    }

    #[test]
    fn a_checkpoint_the_source_still_holds_is_resumed() {
        let metrics = Metrics::new();
        let kept = check_gaps(
            Some(checkpoint([10, 20])),
            &inputs([0, 20], [100, 100]),
            GapPolicy::Fail,
            &metrics,
        )
        .unwrap();
        assert_eq!(kept.unwrap().manifest.id, 7);
        assert_eq!(metrics.checkpoint_gap.get(), 0);
    }

    #[test]
    fn retention_gaps_fail_or_replay_or_are_accepted_and_counted() {
        let metrics = Metrics::new();
        let gap = inputs([0, 50], [100, 100]);
        let error = check_gaps(Some(checkpoint([10, 20])), &gap, GapPolicy::Fail, &metrics)
            .unwrap_err()
            .to_string();
        assert!(error.contains("checkpoint 7"), "{error}");
        assert!(
            error.contains("t/1 resumes at offset 20 but its first message is 50 (30 deleted)"),
            "{error}"
        );
        assert!(
            error.contains("--on-checkpoint-gap replay")
                && error.contains("--on-checkpoint-gap accept"),
            "{error}"
        );
        assert!(
            check_gaps(
                Some(checkpoint([10, 20])),
                &gap,
                GapPolicy::Replay,
                &metrics
            )
            .unwrap()
            .is_none(),
            "replay ignores the checkpoint"
        );
        assert_eq!(metrics.checkpoint_gap.get(), 0);
        assert!(check_gaps(
            Some(checkpoint([10, 20])),
            &gap,
            GapPolicy::Accept,
            &metrics
        )
        .unwrap()
        .is_some());
        assert_eq!(
            metrics.checkpoint_gap.get(),
            30,
            "the missing messages are counted"
        );
    }

    #[test]
    fn an_emptied_topic_is_a_gap() {
        let metrics = Metrics::new();
        let error = check_gaps(
            Some(checkpoint([10, 0])),
            &inputs([0, 0], [0, 0]),
            GapPolicy::Fail,
            &metrics,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(
                "t/0 resumes at offset 10 but holds no message (was the topic recreated?)"
            ),
            "{error}"
        );
    }
}
