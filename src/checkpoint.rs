//! Checkpoints: the consolidated input of the dataflows, the alert states and
//! the source offsets, in the data dir, so that a restart (graceful or after
//! `kill -9`) resumes from them instead of reading every topic again.
//! Long because writing, loading, pruning and the gap policy share the manifest format.
//!
//! The dataflows' input is insert-only (decoded events), so its consolidated
//! state is the set of events read, de-duplicated downstream as always.
//! Restoring feeds them to the dataflows in one epoch, which rebuilds every
//! derived state (views, reservations, the decider, KPI cells, the de-dup
//! ids) exactly; only the alert states depend on the order the levels were
//! seen in (hysteresis, transition counts), so they are saved as they were
//! published and handed to the `low_stock` operator
//! ([`stockflow_dataflows::alerts::Restored`]). The sources then resume at
//! the checkpoint's offsets.
//!
//! Layout of `<data-dir>/checkpoints/`:
//! - `events-<id>.bin`: the events read since the previous checkpoint
//!   (bincode), written once, shared by later checkpoints;
//! - `alerts-<id>.bin`: the latest transition of every alert (bincode);
//! - `checkpoint-<id>.json`: the manifest, written last (the commit point):
//!   a first line `stockflow-checkpoint 1 crc32=XXXXXXXX` (CRC-32 of the rest)
//!   then JSON: offsets, epoch, the sources it was taken with, and every
//!   segment with its length and CRC-32.
//!
//! Each file is written to a temporary name, fsynced and renamed, and the
//! directory fsynced (`stockflow_sinks::fs::write_atomically`). A manifest
//! or segment that fails its checksum is skipped for the previous checkpoint.
//! The newest [`KEEP`] checkpoints are kept; segments none of them names are
//! deleted. Once a checkpoint would name more than [`MAX_SEGMENTS`] segments
//! they are merged into one.

use crate::metrics::Metrics;
use crate::source::Format;
use crate::source::Source;
use crate::store::Store;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflows::alerts::Alert;
use stockflow_dataflows::compact::{compact, Compacted, Rules};
use stockflow_dataflows::kpis::{Cell, KpiKey};
use stockflow_dataflows::model::{Epoch, Event};
use stockflow_sinks::fs::write_atomically;

/// Checkpoints kept (the newest first): a corrupt newest one falls back to the next.
pub const KEEP: usize = 3;
/// Segments a checkpoint may name before they are merged into one.
pub const MAX_SEGMENTS: usize = 16;
/// Version of the on-disk format written: 2 adds the compacted state file.
/// Format 1 (events only) is still read; a newer one is refused.
const FORMAT: u32 = 2;
/// The formats this build reads.
const READS: std::ops::RangeInclusive<u32> = 1..=2;
/// First bytes of a segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"SFCKSEG1";
/// First bytes of a state file.
const STATE_MAGIC: &[u8; 8] = b"SFCKSTA1";

pub use crate::rows::Offsets;

/// A file of a checkpoint, as its manifest names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// File name in the checkpoint directory.
    pub file: String,
    /// Records in it (events or alerts).
    pub records: u64,
    /// Length in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// What a checkpoint records; the events and alerts are in the files it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// Grows with every checkpoint of a data dir.
    pub id: u64,
    /// When it was written (ms since the Unix epoch).
    pub created_ms: i64,
    /// The engine epoch of the published views it reflects (informative: epochs restart at 1).
    pub epoch: Epoch,
    /// The event sources (`topic=format`, sorted) it was taken with: another set of sources cannot use it.
    pub sources: Vec<String>,
    /// Where each source partition resumes.
    pub offsets: Offsets,
    /// The compacted history ([`stockflow_dataflows::compact::Compacted`]:
    /// folded stock states, the events kept, the KPI cells and ids of the
    /// folded ones); its events come before the segments'. `None`: none yet
    /// (and in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<FileRef>,
    /// The event segments read since the state, oldest first.
    pub segments: Vec<FileRef>,
    /// The alert states.
    pub alerts: FileRef,
}

impl Manifest {
    /// Every file it names: the state, the segments, the alerts.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.state
            .iter()
            .chain(&self.segments)
            .chain(std::iter::once(&self.alerts))
    }
}

/// A checkpoint read back and verified.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// Every event it holds: the state's, then segment after segment.
    pub events: Vec<Event>,
    /// The KPI cells of the events folded into the state.
    pub cells: Vec<(KpiKey, Cell)>,
    /// Digests of the ids of the events folded into the state, for the
    /// de-duplication window.
    pub ids: Vec<u128>,
    /// The latest transition of every alert.
    pub alerts: Vec<Alert>,
}

/// The `sources` line of a manifest for event sources `(topic, format)`.
pub fn source_names<'a>(sources: impl IntoIterator<Item = (&'a str, Format)>) -> Vec<String> {
    let mut names: Vec<String> = sources
        .into_iter()
        .map(|(topic, format)| format!("{topic}={}", format.name()))
        .collect();
    names.sort();
    names
}

/// The checkpoint directory of a data dir.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

/// Encodes records as a segment: magic, then bincode.
fn encode<T: Serialize>(records: &[T]) -> Vec<u8> {
    let mut bytes = SEGMENT_MAGIC.to_vec();
    bincode::serialize_into(&mut bytes, records).expect("events and alerts serialize");
    bytes
}

/// Reads and verifies a file a manifest names.
fn read_records<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    file: &FileRef,
) -> anyhow::Result<Vec<T>> {
    let bytes = read_verified(dir, file)?;
    anyhow::ensure!(
        bytes.starts_with(SEGMENT_MAGIC),
        "{} is not a checkpoint segment",
        file.file
    );
    let records: Vec<T> = bincode::deserialize(&bytes[SEGMENT_MAGIC.len()..])
        .with_context(|| format!("decoding {}", file.file))?;
    anyhow::ensure!(
        records.len() as u64 == file.records,
        "{} holds {} records, the manifest says {}",
        file.file,
        records.len(),
        file.records
    );
    Ok(records)
}

/// A file a manifest names, read whole, its length and checksum verified.
fn read_verified(dir: &Path, file: &FileRef) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(&file.file);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 == file.bytes,
        "{} is {} bytes long, the manifest says {}",
        file.file,
        bytes.len(),
        file.bytes
    );
    let crc = crc32fast::hash(&bytes);
    anyhow::ensure!(
        crc == file.crc32,
        "{} fails its checksum (crc32 {crc:08x}, manifest {:08x})",
        file.file,
        file.crc32
    );
    Ok(bytes)
}

/// Writes the compacted state file and returns its reference (`records`:
/// its events).
fn write_state(dir: &Path, name: String, state: &Compacted) -> std::io::Result<FileRef> {
    use bincode::Options;
    let mut bytes = STATE_MAGIC.to_vec();
    // Variable-length integers: a folded key is mostly small numbers.
    bincode::DefaultOptions::new()
        .serialize_into(&mut bytes, state)
        .expect("states serialize");
    write_atomically(&dir.join(&name), &bytes)?;
    Ok(FileRef {
        file: name,
        records: state.events.len() as u64,
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    })
}

/// Reads and verifies the compacted state file a manifest names.
fn read_state(dir: &Path, file: &FileRef) -> anyhow::Result<Compacted> {
    let bytes = read_verified(dir, file)?;
    anyhow::ensure!(
        bytes.starts_with(STATE_MAGIC),
        "{} is not a checkpoint state",
        file.file
    );
    use bincode::Options;
    let state: Compacted = bincode::DefaultOptions::new()
        .deserialize(&bytes[STATE_MAGIC.len()..])
        .with_context(|| format!("decoding {}", file.file))?;
    anyhow::ensure!(
        state.events.len() as u64 == file.records,
        "{} holds {} events, the manifest says {}",
        file.file,
        state.events.len(),
        file.records
    );
    Ok(state)
}

/// Writes a segment file and returns its reference.
fn write_records<T: Serialize>(
    dir: &Path,
    name: String,
    records: &[T],
) -> std::io::Result<FileRef> {
    let bytes = encode(records);
    write_atomically(&dir.join(&name), &bytes)?;
    Ok(FileRef {
        file: name,
        records: records.len() as u64,
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    })
}

fn manifest_name(id: u64) -> String {
    format!("checkpoint-{id:012}.json")
}

/// Manifests in `dir`, newest first: `(id, path)`.
fn manifests(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name
                .strip_prefix("checkpoint-")?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((id, entry.path()))
        })
        .collect();
    found.sort_by_key(|found| std::cmp::Reverse(found.0));
    found
}

/// Reads and verifies one manifest.
fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .context("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).context("header is not text")?;
    let expected = header
        .strip_prefix("stockflow-checkpoint ")
        .and_then(|rest| rest.split_once(" crc32="))
        .map(|(_format, crc)| crc)
        .with_context(|| format!("header `{header}` is not `stockflow-checkpoint N crc32=…`"))?;
    let expected =
        u32::from_str_radix(expected, 16).with_context(|| format!("bad checksum `{expected}`"))?;
    let body = &bytes[newline + 1..];
    let crc = crc32fast::hash(body);
    anyhow::ensure!(
        crc == expected,
        "manifest fails its checksum (crc32 {crc:08x}, header {expected:08x})"
    );
    let manifest: Manifest = serde_json::from_slice(body).context("manifest is not valid JSON")?;
    anyhow::ensure!(
        READS.contains(&manifest.format),
        "format {} is not one this build reads ({} to {}): written by a newer stockflow?",
        manifest.format,
        READS.start(),
        READS.end()
    );
    Ok(manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(manifest).expect("manifests serialize");
    let mut bytes = format!(
        "stockflow-checkpoint {FORMAT} crc32={:08x}\n",
        crc32fast::hash(&body)
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    write_atomically(&dir.join(manifest_name(manifest.id)), &bytes)
}

/// Loads the newest valid checkpoint of `dir`, if any: a manifest or file
/// that fails its checks is reported (logged and counted in `skipped`) and
/// the previous checkpoint is tried.
pub fn load(dir: &Path) -> (Option<Loaded>, Vec<String>) {
    let mut skipped = Vec::new();
    for (id, path) in manifests(dir) {
        let loaded = read_manifest(&path).and_then(|manifest| {
            let state = match &manifest.state {
                Some(file) => read_state(dir, file)?,
                None => Compacted::default(),
            };
            let mut events = state.events;
            for segment in &manifest.segments {
                events.extend(read_records::<Event>(dir, segment)?);
            }
            let alerts = read_records::<Alert>(dir, &manifest.alerts)?;
            Ok(Loaded {
                manifest,
                events,
                cells: state.cells,
                ids: state.ids,
                alerts,
            })
        });
        match loaded {
            Ok(loaded) => return (Some(loaded), skipped),
            Err(error) => {
                let reason = format!(
                    "checkpoint {id} ({}) is unusable: {error:#}",
                    path.display()
                );
                tracing::warn!("{reason}; trying the previous one");
                skipped.push(reason);
            }
        }
    }
    (None, skipped)
}

/// The manifest of the newest checkpoint that passes its own checksum (files not read).
pub fn newest_manifest(dir: &Path) -> Option<Manifest> {
    manifests(dir)
        .into_iter()
        .find_map(|(_, path)| read_manifest(&path).ok())
}

/// Deletes all but the newest [`KEEP`] manifests and every file none of them names.
fn prune(dir: &Path) -> std::io::Result<()> {
    let all = manifests(dir);
    let mut named = std::collections::HashSet::new();
    for (index, (_, path)) in all.iter().enumerate() {
        if index >= KEEP {
            std::fs::remove_file(path)?;
            continue;
        }
        match read_manifest(path) {
            Ok(manifest) => {
                named.extend(manifest.segments.into_iter().map(|s| s.file));
                named.extend(manifest.state.map(|s| s.file));
                named.insert(manifest.alerts.file);
            }
            // Unreadable: it names nothing we can know; keep what others name.
            Err(_) => continue,
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let data = ["events-", "alerts-", "state-"]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if (data && !named.contains(&name)) || name.ends_with(".tmp") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// What one checkpoint cost.
#[derive(Clone, Debug)]
pub struct Written {
    /// Its id.
    pub id: u64,
    /// Events in the new segment.
    pub new_events: u64,
    /// Events the checkpoint holds in all.
    pub events: u64,
    /// Bytes of every file it names.
    pub bytes: u64,
    /// Time to read the new events back, encode and write.
    pub elapsed: Duration,
}

/// Takes checkpoints of a running engine: reads the events the published
/// views reflect since the last checkpoint from the sources (the engine is
/// never asked for anything), writes them as a segment, the published alerts
/// and the offsets, and commits with the manifest.
pub struct Checkpointer {
    dir: PathBuf,
    sources: Vec<(Arc<dyn Source>, Format)>,
    names: Vec<String>,
    /// The manifest of the last checkpoint (restored or written), if any.
    last: Option<Manifest>,
    /// Where the events already in `last`'s segments end; `None` until the engine has said where it started.
    covered: Option<Offsets>,
    /// The id of the next checkpoint (above every manifest in the directory).
    next_id: u64,
    /// How the history is compacted.
    rules: Rules,
}

impl Checkpointer {
    /// A checkpointer of event `sources` into `dir`, continuing `restored`
    /// (the manifest the engine started from) when there is one.
    pub fn new(
        dir: PathBuf,
        sources: Vec<(Arc<dyn Source>, Format)>,
        restored: Option<Manifest>,
        rules: Rules,
    ) -> anyhow::Result<Checkpointer> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = source_names(sources.iter().map(|(s, f)| (s.topic(), *f)));
        let next_id = manifests(&dir).first().map_or(1, |(id, _)| id + 1);
        Ok(Checkpointer {
            dir,
            sources,
            names,
            last: restored,
            covered: None,
            next_id,
            rules,
        })
    }

    /// Writes a checkpoint of the store's published snapshot, if the engine
    /// has started and its offsets moved since the last checkpoint.
    pub fn checkpoint(&mut self, store: &Store) -> anyhow::Result<Option<Written>> {
        let started = Instant::now();
        let Some((starts, resumed)) = store.status.start_offsets() else {
            return Ok(None);
        };
        if self.covered.is_none() {
            // The views hold nothing before where the engine began; a checkpoint
            // it did not resume from (another policy, or unusable) is not built on.
            if self.last.as_ref().map(|m| m.id) != resumed {
                self.last = None;
            }
            self.covered = Some(starts);
        }
        let snapshot = store.snapshot();
        let covered = self.covered.clone().unwrap_or_default();
        let mut target: Offsets = BTreeMap::new();
        for (source, _) in &self.sources {
            let topic = source.topic();
            let reached = snapshot
                .as_of
                .offsets
                .get(topic)
                .cloned()
                .unwrap_or_default();
            let from = covered.get(topic).cloned().unwrap_or_default();
            let mut partitions = BTreeMap::new();
            for partition in 0..source.partitions() {
                let start = from.get(&partition).copied().unwrap_or(0);
                partitions.insert(
                    partition,
                    reached.get(&partition).copied().unwrap_or(start).max(start),
                );
            }
            target.insert(topic.to_owned(), partitions);
        }
        if self
            .last
            .as_ref()
            .is_some_and(|last| last.offsets == target)
        {
            return Ok(None);
        }
        // The events between what is covered and what the views reflect.
        let mut events = Vec::new();
        for (source, format) in &self.sources {
            let topic = source.topic();
            for (partition, stop) in &target[topic] {
                let start = covered
                    .get(topic)
                    .and_then(|p| p.get(partition))
                    .copied()
                    .unwrap_or(0);
                if start < *stop {
                    read_range(
                        source.as_ref(),
                        *format,
                        *partition,
                        start,
                        *stop,
                        &mut events,
                    )?;
                }
            }
        }
        let id = self.next_id;
        let mut segments = self
            .last
            .as_ref()
            .map(|last| last.segments.clone())
            .unwrap_or_default();
        let new_events = events.len() as u64;
        let mut state = self.last.as_ref().and_then(|last| last.state.clone());
        // Compact once the events since the state reach a quarter of it
        // (so a checkpoint stays within 1.25 times its compacted size, and
        // each event is compacted a bounded number of times), or once they
        // span too many segments.
        let since: u64 = segments.iter().map(|s| s.records).sum::<u64>() + new_events;
        let base = state.as_ref().map_or(0, |s| s.records);
        if since > 0 && (since * 4 >= base || segments.len() >= MAX_SEGMENTS) {
            let base = match &state {
                Some(file) => read_state(&self.dir, file)?,
                None => Compacted::default(),
            };
            let mut all = Vec::new();
            for segment in &segments {
                all.extend(read_records::<Event>(&self.dir, segment)?);
            }
            all.extend(std::mem::take(&mut events));
            let compacted = compact(base, all, &self.rules);
            state = Some(write_state(
                &self.dir,
                format!("state-{id:012}.bin"),
                &compacted,
            )?);
            segments.clear();
        } else if !events.is_empty() {
            segments.push(write_records(
                &self.dir,
                format!("events-{id:012}.bin"),
                &events,
            )?);
        }
        let alerts: Vec<Alert> = snapshot
            .alerts
            .values()
            .flat_map(|pair| [pair.low_stock.clone(), pair.out_of_stock.clone()])
            .flatten()
            .collect();
        let alerts = write_records(&self.dir, format!("alerts-{id:012}.bin"), &alerts)?;
        let manifest = Manifest {
            format: FORMAT,
            id,
            created_ms: chrono::Utc::now().timestamp_millis(),
            epoch: snapshot.as_of.epoch,
            sources: self.names.clone(),
            offsets: target.clone(),
            state,
            segments,
            alerts,
        };
        write_manifest(&self.dir, &manifest)?;
        prune(&self.dir)
            .with_context(|| format!("pruning old checkpoints in {}", self.dir.display()))?;
        let written = Written {
            id,
            new_events,
            events: manifest.files().map(|f| f.records).sum::<u64>() - manifest.alerts.records,
            bytes: manifest.files().map(|f| f.bytes).sum(),
            elapsed: started.elapsed(),
        };
        self.covered = Some(target);
        self.last = Some(manifest);
        self.next_id = id + 1;
        Ok(Some(written))
    }

    /// A checkpoint every `interval` (once the engine has started; `None`:
    /// none before the end), and a last one when `engine_done` says the
    /// engine has published its last epoch (or its sender is gone).
    /// Failures are logged, counted and retried at the next interval.
    pub fn run(
        mut self,
        store: Arc<Store>,
        metrics: Metrics,
        interval: Option<Duration>,
        engine_done: std::sync::mpsc::Receiver<()>,
    ) {
        loop {
            let last = match interval {
                Some(interval) => !matches!(
                    engine_done.recv_timeout(interval),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                ),
                None => {
                    // Done or gone: either way the end.
                    let _ = engine_done.recv();
                    true
                }
            };
            self.checkpoint_logged(&store, &metrics);
            if last {
                return;
            }
        }
    }

    fn checkpoint_logged(&mut self, store: &Store, metrics: &Metrics) {
        match self.checkpoint(store) {
            Ok(Some(written)) => {
                metrics.checkpoints.inc();
                metrics
                    .checkpoint_seconds
                    .observe(written.elapsed.as_secs_f64());
                metrics.checkpoint_bytes.set(written.bytes as i64);
                metrics.checkpoint_events.set(written.events as i64);
                metrics.checkpoint_time.set(chrono::Utc::now().timestamp());
                tracing::info!(
                    id = written.id,
                    new_events = written.new_events,
                    events = written.events,
                    bytes = written.bytes,
                    ms = written.elapsed.as_millis() as u64,
                    "checkpoint written"
                );
            }
            Ok(None) => {}
            Err(error) => {
                metrics.checkpoint_failures.inc();
                tracing::warn!("checkpoint failed (retried at the next interval): {error:#}");
            }
        }
    }
}

/// Reads `[start, stop)` of one partition and decodes it into `events`
/// (messages that do not decode are left out, as the engine left them).
pub fn read_range(
    source: &dyn Source,
    format: Format,
    partition: u32,
    start: u64,
    stop: u64,
    events: &mut Vec<Event>,
) -> anyhow::Result<()> {
    let topic = source.topic();
    let mut reader = source
        .reader(partition, start)
        .with_context(|| format!("reading {topic}/{partition} from {start}"))?;
    let mut records = Vec::new();
    let mut last_progress = Instant::now();
    while reader.position() < stop {
        records.clear();
        let before = reader.position();
        let read = reader
            .read(4096, &mut records)
            .with_context(|| format!("reading {topic}/{partition} at {}", reader.position()))?;
        // (A source that skips messages, a replay's time range, moves on without returning any.)
        if read == 0 && reader.position() == before {
            anyhow::ensure!(
                last_progress.elapsed() < Duration::from_secs(60),
                "{topic}/{partition}: no message at offset {} (of {stop}) within a minute",
                reader.position()
            );
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        last_progress = Instant::now();
        for record in records.iter().filter(|r| r.offset < stop) {
            let _ = format.decode(topic, partition, record, events);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_dataflows::alerts::AlertKind;
    use stockflow_dataflows::model::{decode_event, EventBody, Money, RecordContext, StockKey};

    fn event(n: u64) -> Event {
        let json = format!(
            r#"{{"id":"e{n}","type":"item.created","tenant":"acme","ts":"2026-01-01T00:00:00Z","sku":"S{n}","name":"Ñandú {n}","price":"12.3456","initial":{{"main":{n}}}}}"#
        );
        decode_event(
            json.as_bytes(),
            RecordContext {
                offset: n,
                log_time: None,
            },
        )
        .expect("a valid event")
    }

    fn alert() -> Alert {
        Alert {
            key: StockKey {
                tenant: "acme".into(),
                sku: "S1".into(),
                location: "main".into(),
            },
            kind: AlertKind::LowStock,
            raised: true,
            transition: 3,
            available: 2,
            threshold: 5,
            target_level: 10,
            suggested_reorder_qty: 8,
            ts: 1_700_000_000_000,
        }
    }

    #[test]
    fn events_and_alerts_round_trip_exactly() {
        let events: Vec<Event> = (0..50).map(event).collect();
        let EventBody::ItemCreated { price, .. } = &events[1].body else {
            panic!("an item")
        };
        assert_eq!(*price, Money::parse("12.3456").unwrap());
        let dir = tempfile::tempdir().unwrap();
        let segment = write_records(dir.path(), "events-1.bin".into(), &events).unwrap();
        assert_eq!(read_records::<Event>(dir.path(), &segment).unwrap(), events);
        let alerts = write_records(dir.path(), "alerts-1.bin".into(), &[alert()]).unwrap();
        assert_eq!(
            read_records::<Alert>(dir.path(), &alerts).unwrap(),
            vec![alert()]
        );
    }

    fn manifest(dir: &Path, id: u64, events: &[Event]) -> Manifest {
        let segment = write_records(dir, format!("events-{id:012}.bin"), events).unwrap();
        let alerts = write_records(dir, format!("alerts-{id:012}.bin"), &[alert()]).unwrap();
        let manifest = Manifest {
            format: FORMAT,
            id,
            created_ms: 0,
            epoch: id,
            sources: vec!["t=stockflow".into()],
            offsets: BTreeMap::from([("t".to_owned(), BTreeMap::from([(0, id * 10)]))]),
            state: None,
            segments: vec![segment],
            alerts,
        };
        write_manifest(dir, &manifest).unwrap();
        manifest
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        manifest(dir.path(), 1, &[event(1)]);
        let second = manifest(dir.path(), 2, &[event(1), event(2)]);
        let (loaded, skipped) = load(dir.path());
        assert_eq!(loaded.unwrap().manifest, second);
        assert!(skipped.is_empty());

        // One flipped byte in the newest segment: its checksum catches it.
        let path = dir.path().join(&second.segments[0].file);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let (loaded, skipped) = load(dir.path());
        let loaded = loaded.unwrap();
        assert_eq!(loaded.manifest.id, 1);
        assert_eq!(loaded.events, vec![event(1)]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("fails its checksum"), "{skipped:?}");

        // A truncated manifest is caught too.
        let path = dir.path().join(manifest_name(1));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (loaded, skipped) = load(dir.path());
        assert!(loaded.is_none());
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn a_state_file_loads_before_the_segments_and_older_formats_are_read_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let history: Vec<Event> = (0..10).map(event).collect();
        let rules = Rules {
            specs: Vec::new(),
            kpi_retention_ms: i64::MAX / 4,
            ids: 100,
        };
        let compacted = compact(Compacted::default(), history.clone(), &rules);
        let state = write_state(dir.path(), "state-000000000001.bin".into(), &compacted).unwrap();
        let mut written = manifest(dir.path(), 1, &[event(10)]);
        written.state = Some(state.clone());
        write_manifest(dir.path(), &written).unwrap();
        let (loaded, skipped) = load(dir.path());
        assert!(skipped.is_empty(), "{skipped:?}");
        let loaded = loaded.unwrap();
        let mut expected = compacted.events.clone();
        expected.push(event(10));
        assert_eq!(loaded.events, expected);
        assert_eq!((loaded.cells, loaded.ids), (compacted.cells, compacted.ids));
        prune(dir.path()).unwrap();
        assert!(
            dir.path().join(&state.file).exists(),
            "a named state is kept"
        );

        // A manifest of format 1 (no state) is read as it always was.
        let mut old = manifest(dir.path(), 2, &[event(1)]);
        old.format = 1;
        let body = serde_json::to_vec_pretty(&old).unwrap();
        let mut bytes = format!(
            "stockflow-checkpoint 1 crc32={:08x}\n",
            crc32fast::hash(&body)
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        std::fs::write(dir.path().join(manifest_name(2)), bytes).unwrap();
        let (loaded, _) = load(dir.path());
        assert_eq!(loaded.unwrap().events, vec![event(1)]);

        // A newer format is refused with a message that says so.
        let mut newer = manifest(dir.path(), 3, &[event(1)]);
        newer.format = 9;
        let body = serde_json::to_vec_pretty(&newer).unwrap();
        let mut bytes = format!(
            "stockflow-checkpoint 9 crc32={:08x}\n",
            crc32fast::hash(&body)
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        std::fs::write(dir.path().join(manifest_name(3)), bytes).unwrap();
        let (loaded, skipped) = load(dir.path());
        assert_eq!(loaded.unwrap().manifest.id, 2);
        assert!(
            skipped[0].contains("format 9 is not one this build reads (1 to 2)"),
            "{skipped:?}"
        );
    }

    #[test]
    fn pruning_keeps_the_newest_and_what_they_name() {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=5 {
            manifest(dir.path(), id, &[event(id)]);
        }
        std::fs::write(dir.path().join(".events-000000000009.bin.tmp"), b"half").unwrap();
        prune(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let kept: Vec<u64> = manifests(dir.path())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(kept, vec![5, 4, 3]);
        assert_eq!(
            names.len(),
            9,
            "three manifests, their segments and alerts: {names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.contains("000000000001") || n.ends_with(".tmp")),
            "{names:?}"
        );
    }
}
