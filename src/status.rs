//! The status registry: how the engine, its sources and its sinks are
//! doing (why it waits, which partition fails, who holds it back, where it
//! started, what counts as caught up), apart from the views it publishes.

use crate::rows::{AsOf, Offsets};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// What `/ready` and `/health` report, written by the engine, the sources'
/// readers, the publisher and the sinks.
#[derive(Debug, Default)]
pub struct Status {
    /// Where the engine began reading each source partition, and the id of
    /// the checkpoint it resumed from.
    start_offsets: RwLock<Option<(Offsets, Option<u64>)>>,
    /// Positions the sources had at start; `/ready` once the views reach them.
    startup_targets: RwLock<Option<Offsets>>,
    /// Why the engine has not started yet (e.g. the broker is unreachable).
    waiting: RwLock<Option<String>>,
    /// Source partitions whose last read failed (`topic/partition` → error).
    failing: RwLock<BTreeMap<String, String>>,
    /// What each sink is doing (`clickhouse` → `writing`, `retrying: ...`), for `/ready`.
    sinks: RwLock<BTreeMap<&'static str, String>>,
    /// Outputs holding the engine back (`publisher` → what it waits for), for `/ready`.
    held_back: RwLock<BTreeMap<&'static str, String>>,
}

impl Status {
    /// Records the source positions that count as "caught up" for `/ready`.
    pub fn set_startup_targets(&self, targets: BTreeMap<String, BTreeMap<u32, u64>>) {
        *self
            .startup_targets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(targets);
    }

    /// Records why the engine is not reading yet (`None` once it is).
    pub fn set_waiting(&self, reason: Option<String>) {
        *self.waiting.write().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Records that `who` holds the engine back, and why (`None`: no longer).
    pub fn set_held_back(&self, who: &'static str, why: Option<String>) {
        let mut held = self.held_back.write().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(why) => held.insert(who, why),
            None => held.remove(who),
        };
    }

    /// Records that reading `topic/partition` failed (`Some`) or works again (`None`).
    pub fn set_source_failure(&self, topic: &str, partition: u32, error: Option<String>) {
        let key = format!("{topic}/{partition}");
        let mut failing = self.failing.write().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(error) => {
                failing.insert(key, error);
            }
            None => {
                failing.remove(&key);
            }
        }
    }

    /// A source partition whose reads fail, and the error, if any.
    pub fn source_failure(&self) -> Option<(String, String)> {
        self.failing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .next()
            .map(|(source, error)| (source.clone(), error.clone()))
    }

    /// Checks that a read-your-writes target names topics and partitions the
    /// engine reads; otherwise says which one it does not.
    pub fn check_known(
        &self,
        targets: &BTreeMap<String, BTreeMap<u32, u64>>,
    ) -> Result<(), String> {
        let known = self
            .startup_targets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(known) = known.as_ref() else {
            return Ok(());
        };
        for (topic, partitions) in targets {
            let Some(sources) = known.get(topic) else {
                return Err(format!(
                    "topic `{topic}` is not a source of this engine (sources: {})",
                    known.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            };
            if let Some(partition) = partitions.keys().find(|p| !sources.contains_key(p)) {
                return Err(format!(
                    "topic `{topic}` has no partition {partition} ({} partitions)",
                    sources.len()
                ));
            }
        }
        Ok(())
    }

    /// Records what sink `name` is doing, for `/ready`.
    pub fn set_sink_state(&self, name: &'static str, state: String) {
        self.sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, state);
    }

    /// What each sink is doing.
    pub fn sink_states(&self) -> BTreeMap<&'static str, String> {
        self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records where the engine began reading each source partition and the
    /// checkpoint it resumed from, if any.
    pub fn set_start_offsets(&self, offsets: Offsets, checkpoint: Option<u64>) {
        *self
            .start_offsets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some((offsets, checkpoint));
    }

    /// Where the engine began reading each source partition and the checkpoint
    /// it resumed from (`None` before it started).
    pub fn start_offsets(&self) -> Option<(Offsets, Option<u64>)> {
        self.start_offsets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The source positions that count as caught up (`None` before the engine started).
    pub fn startup_targets(&self) -> Option<Offsets> {
        self.startup_targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True once the views `as_of` cover what the sources held at start.
    pub fn caught_up(&self, as_of: &AsOf) -> bool {
        let targets = self
            .startup_targets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        targets
            .as_ref()
            .is_some_and(|targets| as_of.covers(targets))
    }

    /// `Ok` when the views `as_of` have caught up with what the sources held at start;
    /// otherwise why not.
    pub fn readiness(&self, as_of: &AsOf) -> Result<(), String> {
        if let Some(reason) = self
            .waiting
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(reason);
        }
        if let Some((source, error)) = self
            .failing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .next()
        {
            return Err(format!("reading {source} fails: {error}"));
        }
        if let Some((who, why)) = self
            .held_back
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .next()
        {
            return Err(format!("held back by the {who}: {why}"));
        }
        let targets = self
            .startup_targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(targets) = targets else {
            return Err("the engine has not started reading its sources yet".into());
        };
        for (topic, partitions) in &targets {
            for (partition, target) in partitions {
                let reached = as_of
                    .offsets
                    .get(topic)
                    .and_then(|p| p.get(partition))
                    .copied()
                    .unwrap_or(0);
                if reached < *target {
                    return Err(format!(
                        "catching up: {topic}/{partition} at offset {reached} of {target}"
                    ));
                }
            }
        }
        Ok(())
    }
}
