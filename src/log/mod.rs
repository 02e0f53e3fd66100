//! The embedded log: append-only, partitioned, file-backed topics under the
//! data directory, used when no broker is configured.
//! Long because the append path, its undo and start-up recovery share the segment format and the writer's invariants (damage checks and repair are in `check.rs`).
//!
//! Layout: `<dir>/<topic>/topic.json` (partition count) and
//! `<dir>/<topic>/<partition>/<base offset, 20 digits>.log` segments. A
//! record is, little endian:
//!
//! ```text
//! [len u32][crc32 u32][offset u64][timestamp i64][key_len i32, -1 = none][key][payload]
//! ```
//!
//! `len` counts the bytes after the crc; the crc covers the same bytes. A
//! record with `key_len` -2 is a *tombstone*: the placeholder `stockflow log
//! repair --quarantine` leaves at the offset of a damaged record it moved
//! aside, so that later offsets never shift. Readers skip tombstones.
//!
//! Durability: every append is written through to the OS before it is
//! visible to readers, so a crash of the process loses nothing acknowledged;
//! `fsync` happens on [`Topic::sync`], on segment roll and, with
//! [`LogOptions::fsync_every_append`], on every append. A power loss can lose
//! appends since the last fsync.
//!
//! On open, the last segment of every partition is validated. A *torn tail*
//! (an incomplete final record, or damaged bytes with no valid record after
//! them) is what a crash mid-append leaves: it is truncated away with a
//! warning. Damage *followed by valid records* is corruption, not a crash:
//! the open fails naming the file, byte and offset, and nothing is changed
//! ([`check`] finds such damage in every segment, [`check::repair`] moves it
//! aside). [`Log::open_read_only`] opens a log without creating, truncating or
//! appending anything, for the offline tools.

pub mod check;

use crate::source::{partition_for_key, PartitionReader, Record, Source, SourceError, Wake};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Bytes before a record's body: length and checksum.
const HEADER: usize = 8;
/// Fixed part of a body: offset, timestamp, key length.
const BODY_FIXED: usize = 20;
/// Largest record body accepted (16 MiB), so a corrupt length is never trusted.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// The `key_len` of a tombstone: the placeholder of a record moved to quarantine.
const TOMBSTONE_KEY_LEN: i32 = -2;

/// Tunables of the embedded log.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// `fsync` after every append (slow; survives power loss).
    pub fsync_every_append: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            fsync_every_append: false,
        }
    }
}

/// The embedded log: a directory of topics.
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    /// Opened with [`Log::open_read_only`]: nothing is created, truncated or appended.
    read_only: bool,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io { what, source }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Log, SourceError> {
        Log::open_with(dir, LogOptions::default())
    }

    /// Opens (creating if needed) the log in `dir`.
    pub fn open_with(dir: &Path, options: LogOptions) -> Result<Log, SourceError> {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Log {
            dir: dir.to_path_buf(),
            options,
            read_only: false,
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// Opens the existing log in `dir` for reading only: nothing is created,
    /// truncated, locked or appended (appends fail), so it is safe on a copy,
    /// a read-only mount or beside a running server. Each partition ends
    /// where its records ended at open (a torn tail is left in place and not
    /// read); damage followed by valid records fails the open, as for a
    /// writer. A topic that does not exist reads as empty. A missing `dir`
    /// is an error.
    pub fn open_read_only(dir: &Path) -> Result<Log, SourceError> {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(SourceError::Invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(SourceError::NotFound(format!(
                    "no embedded log at {} (the directory does not exist)",
                    dir.display()
                )))
            }
            Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            options: LogOptions::default(),
            read_only: true,
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the log was opened with [`Log::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Opens a topic, creating it with `partitions` partitions if it does not
    /// exist; an existing topic keeps its own partition count. On a read-only
    /// log a missing topic is not created: it reads as `partitions` empty
    /// partitions.
    pub fn topic(&self, name: &str, partitions: u32) -> Result<Arc<Topic>, SourceError> {
        self.open_topic(name, Some(partitions))?
            .ok_or_else(|| SourceError::NotFound(format!("topic {name}")))
    }

    /// Opens a topic only if it exists.
    pub fn existing_topic(&self, name: &str) -> Result<Option<Arc<Topic>>, SourceError> {
        self.open_topic(name, None)
    }

    fn open_topic(
        &self,
        name: &str,
        create: Option<u32>,
    ) -> Result<Option<Arc<Topic>>, SourceError> {
        validate_topic(name)?;
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(topic) = topics.get(name) {
            return Ok(Some(topic.clone()));
        }
        let dir = self.dir.join(name);
        let meta = dir.join("topic.json");
        let partitions = match fs::read_to_string(&meta) {
            Ok(text) => {
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| SourceError::Corrupt {
                        what: meta.display().to_string(),
                        detail: e.to_string(),
                    })?;
                value["partitions"]
                    .as_u64()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| SourceError::Corrupt {
                        what: meta.display().to_string(),
                        detail: "no partition count".into(),
                    })? as u32
            }
            Err(e) if e.kind() == ErrorKind::NotFound => match create {
                Some(0) => {
                    return Err(SourceError::Invalid(
                        "a topic needs at least one partition".into(),
                    ))
                }
                Some(partitions) if self.read_only => partitions,
                Some(partitions) => {
                    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                    write_atomically(
                        &meta,
                        serde_json::json!({"partitions": partitions})
                            .to_string()
                            .as_bytes(),
                    )?;
                    partitions
                }
                None => return Ok(None),
            },
            Err(e) => return Err(io(format!("reading {}", meta.display()))(e)),
        };
        let partitions = (0..partitions)
            .map(|p| {
                let dir = dir.join(p.to_string());
                if self.read_only {
                    Partition::open_read_only(&dir)
                } else {
                    Partition::open(&dir, p, self.options)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let topic = Arc::new(Topic {
            name: name.to_owned(),
            partitions,
        });
        topics.insert(name.to_owned(), topic.clone());
        Ok(Some(topic))
    }
}

/// [`crate::source::is_topic_name`], as a log error.
fn validate_topic(name: &str) -> Result<(), SourceError> {
    if crate::source::is_topic_name(name) {
        Ok(())
    } else {
        Err(SourceError::Invalid(format!(
            "`{name}` is not a topic name ({})",
            crate::source::TOPIC_NAME_RULE
        )))
    }
}

/// [`stockflow_sinks::fs::write_atomically`], as a log error.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
    stockflow_sinks::fs::write_atomically(path, bytes).map_err(io(format!(
        "writing {} (through a temporary file)",
        path.display()
    )))
}

/// One topic of the embedded log.
pub struct Topic {
    name: String,
    partitions: Vec<Partition>,
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The writer of `partition`, locked; an error on a read-only log.
    fn writer<'a>(
        &self,
        partition: &'a Partition,
    ) -> Result<std::sync::MutexGuard<'a, Writer>, SourceError> {
        match &partition.writer {
            Some(writer) => Ok(writer.lock().unwrap_or_else(|p| p.into_inner())),
            None => Err(SourceError::Invalid(format!(
                "topic {} is open read-only: nothing can be appended",
                self.name
            ))),
        }
    }

    fn partition(&self, partition: u32) -> Result<&Partition, SourceError> {
        self.partitions.get(partition as usize).ok_or_else(|| {
            SourceError::NotFound(format!(
                "partition {partition} of {} ({} partitions)",
                self.name,
                self.partitions.len()
            ))
        })
    }

    /// Appends to the partition of `key` (Kafka's murmur2 partitioner);
    /// returns the partition and the offset given.
    pub fn append(
        &self,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<(u32, u64), SourceError> {
        let partition = partition_for_key(key, self.partitions());
        Ok((
            partition,
            self.append_to(partition, key, payload, timestamp_ms)?,
        ))
    }

    /// Appends to one partition; returns the offset given.
    pub fn append_to(
        &self,
        partition: u32,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<u64, SourceError> {
        let partition = self.partition(partition)?;
        let mut writer = self.writer(partition)?;
        writer.transaction(&partition.end, |writer| {
            writer.append(Some(key), payload, timestamp_ms)
        })
    }

    /// Appends many records, taking each partition's lock once; returns the
    /// partition and offset of each, in order, or a failed partition's
    /// error (the other partitions' records may be appended: see
    /// [`Topic::append_each`] for each record's own outcome).
    pub fn append_batch(
        &self,
        records: &[(&[u8], &[u8], i64)],
    ) -> Result<Vec<(u32, u64)>, SourceError> {
        let (landings, failures) = self.append_partitions(records);
        match failures.into_iter().flatten().next() {
            Some(error) => Err(error),
            None => Ok(landings),
        }
    }

    /// Appends many records, one transaction per partition (all of a
    /// partition's records, or none: [`Writer::transaction`]); answers each
    /// record's own outcome, in order: a partition that failed does not make
    /// the records of one that did look failed, nor the other way round.
    pub fn append_each(&self, records: &[(&[u8], &[u8], i64)]) -> Vec<Result<(u32, u64), String>> {
        let (landings, failures) = self.append_partitions(records);
        let failures: Vec<Option<String>> = failures
            .iter()
            .map(|f| f.as_ref().map(ToString::to_string))
            .collect();
        landings
            .into_iter()
            .map(|(partition, offset)| {
                failures[partition as usize]
                    .clone()
                    .map_or(Ok((partition, offset)), Err)
            })
            .collect()
    }

    /// Each record's `(partition, offset)` (the offset meaningless where its
    /// partition failed), and each partition's failure.
    fn append_partitions(
        &self,
        records: &[(&[u8], &[u8], i64)],
    ) -> (Vec<(u32, u64)>, Vec<Option<SourceError>>) {
        let n = self.partitions();
        let mut landings: Vec<(u32, u64)> = records
            .iter()
            .map(|(key, _, _)| (partition_for_key(key, n), 0))
            .collect();
        let mut failures: Vec<Option<SourceError>> =
            (0..self.partitions.len()).map(|_| None).collect();
        for (index, partition) in self.partitions.iter().enumerate() {
            let index = index as u32;
            if !landings.iter().any(|(p, _)| *p == index) {
                continue;
            }
            let appended = self.writer(partition).and_then(|mut writer| {
                writer.transaction(&partition.end, |writer| {
                    for ((target, offset), (key, payload, ts)) in landings.iter_mut().zip(records) {
                        if *target == index {
                            *offset = writer.append(Some(key), payload, *ts)?;
                        }
                    }
                    Ok(())
                })
            });
            failures[index as usize] = appended.err();
        }
        (landings, failures)
    }

    /// Offset after the last record of `partition` (0 for an unknown partition).
    pub fn end_offset(&self, partition: u32) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, |p| p.end.load())
    }

    /// Flushes and fsyncs every partition (nothing to do when read-only).
    pub fn sync(&self) -> Result<(), SourceError> {
        for writer in self.partitions.iter().filter_map(|p| p.writer.as_ref()) {
            writer.lock().unwrap_or_else(|p| p.into_inner()).sync()?;
        }
        Ok(())
    }

    /// A reader of `partition` starting at offset `from` (at most the end).
    pub fn reader(&self, partition: u32, from: u64) -> Result<LogReader, SourceError> {
        let p = self.partition(partition)?;
        let end = p.end.load();
        if from > end {
            return Err(SourceError::Invalid(format!(
                "offset {from} is beyond the end ({end}) of {}/{partition}",
                self.name
            )));
        }
        Ok(LogReader {
            dir: p.dir.clone(),
            partition,
            end: p.end.clone(),
            segments: p.segments.clone(),
            wake: None,
            armed: Arc::default(),
            position: from,
            current: None,
        })
    }
}

impl Log {
    /// Flushes and fsyncs every open topic.
    pub fn sync(&self) -> Result<(), SourceError> {
        let topics: Vec<Arc<Topic>> = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        topics.iter().try_for_each(|t| t.sync())
    }
}

impl Source for Topic {
    fn topic(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> u32 {
        Topic::partitions(self)
    }

    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn PartitionReader>, SourceError> {
        Ok(Box::new(Topic::reader(self, partition, from)?))
    }

    fn end_offset(&self, partition: u32) -> Result<u64, SourceError> {
        self.partition(partition)?;
        Ok(Topic::end_offset(self, partition))
    }
}

/// Appends to topics of the embedded log (created with `partitions` when missing).
pub struct LogAppender {
    log: Arc<Log>,
    partitions: u32,
}

impl LogAppender {
    /// An appender to `log`.
    pub fn new(log: Arc<Log>, partitions: u32) -> LogAppender {
        LogAppender { log, partitions }
    }
}

impl crate::source::Appender for LogAppender {
    /// Appends at once (one lock and one write per partition) and reports
    /// each record landed, or failed with its partition's error (a failed
    /// partition's records are undone: see [`Topic::append_each`]).
    fn enqueue(
        &self,
        topic: &str,
        records: &[(usize, &crate::source::Outgoing)],
        acks: &Arc<crate::source::Acks>,
    ) {
        let now = chrono::Utc::now().timestamp_millis();
        let batch: Vec<(&[u8], &[u8], i64)> = records
            .iter()
            .map(|(_, record)| (record.key.as_slice(), record.payload.as_slice(), now))
            .collect();
        match self.log.topic(topic, self.partitions) {
            Ok(topic) => records
                .iter()
                .zip(topic.append_each(&batch))
                .for_each(|((slot, _), landing)| acks.report(*slot, landing)),
            Err(error) => records
                .iter()
                .for_each(|(slot, _)| acks.report(*slot, Err(error.to_string()))),
        }
    }

    fn carries_headers(&self) -> bool {
        false
    }

    fn failures_are_certain(&self) -> bool {
        true
    }
}

/// One partition: a writer behind a lock (none when read-only), and what
/// readers share with it.
struct Partition {
    dir: PathBuf,
    writer: Option<Mutex<Writer>>,
    /// Offset after the last record readers may see (published after the write).
    end: Arc<End>,
    /// Base offsets of the segments, ascending.
    segments: Arc<RwLock<Vec<u64>>>,
}

/// A partition's end as readers see it, and the readers to wake when it moves.
struct End {
    offset: AtomicU64,
    /// Readers' wakes, held weakly: a dropped reader's is pruned at the next move.
    waiting: Mutex<Vec<Weak<dyn Fn() + Send + Sync>>>,
    /// `waiting` is not empty: appends skip the lock while nobody waits.
    anyone: AtomicBool,
}

impl End {
    fn new(offset: u64) -> Arc<End> {
        Arc::new(End {
            offset: AtomicU64::new(offset),
            waiting: Mutex::new(Vec::new()),
            anyone: AtomicBool::new(false),
        })
    }

    // SeqCst throughout: a reader that registered, then saw the old end,
    // must be woken by the append that moved it (store-then-load on both sides).
    fn load(&self) -> u64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// Lets readers see records up to `offset`, and wakes those that wait.
    fn advance(&self, offset: u64) {
        self.offset.store(offset, Ordering::SeqCst);
        if self.anyone.load(Ordering::SeqCst) {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.retain(|wake| match wake.upgrade() {
                Some(wake) => {
                    wake();
                    true
                }
                None => false,
            });
            self.anyone.store(!waiting.is_empty(), Ordering::SeqCst);
        }
    }

    fn wake_on_advance(&self, wake: &Wake) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|wake| wake.strong_count() > 0);
        waiting.push(Arc::downgrade(wake));
        self.anyone.store(true, Ordering::SeqCst);
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Base offsets of the segments in a partition directory, ascending.
fn segment_bases(dir: &Path) -> Result<Vec<u64>, SourceError> {
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(io(format!("listing {}", dir.display())))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|b| b.parse().ok())
        })
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

impl Partition {
    fn open(dir: &Path, partition: u32, options: LogOptions) -> Result<Partition, SourceError> {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut bases = segment_bases(dir)?;
        if bases.is_empty() {
            File::create(segment_path(dir, 0))
                .map_err(io(format!("creating a segment in {}", dir.display())))?;
            bases.push(0);
        }
        let base = *bases.last().expect("one segment at least");
        let path = segment_path(dir, base);
        let (next_offset, valid_len) = recover(&path, base, partition)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        // Writer and readers share the one list of segments.
        let segments = Arc::new(RwLock::new(bases));
        Ok(Partition {
            dir: dir.to_path_buf(),
            writer: Some(Mutex::new(Writer {
                dir: dir.to_path_buf(),
                file: BufWriter::with_capacity(256 << 10, file),
                size: valid_len,
                next_offset,
                options,
                segments: segments.clone(),
                committed: Committed {
                    base,
                    size: valid_len,
                    next_offset,
                },
                broken: None,
            })),
            end: End::new(next_offset),
            segments,
        })
    }

    /// Opens a partition for reading only: no file or directory is created
    /// (a missing one reads as empty), a torn tail is left in place and ends
    /// the partition, damage followed by valid records is an error.
    fn open_read_only(dir: &Path) -> Result<Partition, SourceError> {
        let bases = match fs::metadata(dir) {
            Ok(_) => segment_bases(dir)?,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
        };
        let end = match bases.last() {
            None => 0,
            Some(&base) => {
                let scan = scan_segment(&segment_path(dir, base), base)?;
                refuse_damage(&scan)?;
                scan.next_offset
            }
        };
        Ok(Partition {
            dir: dir.to_path_buf(),
            writer: None,
            end: End::new(end),
            segments: Arc::new(RwLock::new(bases)),
        })
    }
}

/// Fails with [`SourceError::Corrupt`] naming the file, byte and offset if a
/// segment holds damage followed by valid records (not a torn tail).
fn refuse_damage(scan: &SegmentScan) -> Result<(), SourceError> {
    let Some(damage) = scan.damages.first() else {
        return Ok(());
    };
    Err(SourceError::Corrupt {
        what: damage.location(),
        detail: format!(
            "{}, and valid records follow it (from offset {}): this is damage, not a torn tail, and nothing was changed{}. \
             `stockflow log check` lists the damage; `stockflow log repair --quarantine` moves the damaged bytes aside (kept in the \
             data dir's quarantine/) and keeps every other record",
            damage.detail,
            damage.resumes_at.unwrap_or(damage.offset),
            if scan.damages.len() > 1 { format!(" ({} damaged stretches in this segment)", scan.damages.len()) } else { String::new() }
        ),
    })
}

/// Validates the last segment: truncates a torn tail (an incomplete final
/// record, or damaged bytes with nothing valid after them), refuses damage
/// followed by valid records. Returns the next offset and the valid length.
fn recover(path: &Path, base: u64, partition: u32) -> Result<(u64, u64), SourceError> {
    let scan = scan_segment(path, base)?;
    refuse_damage(&scan)?;
    let mut valid = scan.len;
    if let Some(tail) = &scan.tail {
        valid = tail.byte;
        tracing::warn!(path = %path.display(), partition, offset = tail.offset, bytes_dropped = tail.bytes, detail = %tail.detail, "embedded log: truncating a torn tail");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(format!("opening {}", path.display())))?;
        file.set_len(valid)
            .and_then(|_| file.sync_all())
            .map_err(io(format!("truncating {}", path.display())))?;
    }
    Ok((scan.next_offset, valid))
}

/// A stretch of a segment that does not hold valid records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// Where the damage begins, in bytes from the start of the segment.
    pub byte: u64,
    /// How many bytes are damaged: up to the next valid record, or the end of the segment.
    pub bytes: u64,
    /// The offset the first damaged record should have had.
    pub offset: u64,
    /// The offset of the first valid record after the damage, in this
    /// segment; `None` when nothing valid follows in this segment.
    pub resumes_at: Option<u64>,
    /// What was wrong with the first bad record (`checksum mismatch`, …).
    pub detail: String,
}

impl Damage {
    /// `<segment> at byte B (offset O)`: where an operator finds it.
    pub fn location(&self) -> String {
        format!(
            "{} at byte {} (offset {})",
            self.segment.display(),
            self.byte,
            self.offset
        )
    }
}

/// What one pass over a segment found.
struct SegmentScan {
    /// The segment's bytes.
    bytes: Vec<u8>,
    /// Its length.
    len: u64,
    /// Valid records (tombstones included).
    entries: u64,
    /// Tombstones among them.
    tombstones: u64,
    /// The offset after the last valid record.
    next_offset: u64,
    /// Damaged stretches followed by a valid record of this segment.
    damages: Vec<Damage>,
    /// Damaged bytes that run to the end of the segment.
    tail: Option<Damage>,
}

/// Reads a whole segment and sorts its bytes into valid records and damage.
/// After a bad record the scan looks, byte by byte, for the next position
/// holding a valid record (length in bounds, checksum right, offset not
/// below the one expected and not more than the damaged bytes could hold).
fn scan_segment(path: &Path, base: u64) -> Result<SegmentScan, SourceError> {
    let bytes = fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let mut scan = SegmentScan {
        len: bytes.len() as u64,
        bytes: Vec::new(),
        entries: 0,
        tombstones: 0,
        next_offset: base,
        damages: Vec::new(),
        tail: None,
    };
    let mut at = 0usize;
    loop {
        let detail = match parse_entry(&bytes, at) {
            Ok(None) => break,
            Ok(Some((entry, size))) if entry.offset() == scan.next_offset => {
                at += size;
                scan.next_offset += 1;
                scan.entries += 1;
                scan.tombstones += u64::from(matches!(entry, Entry::Tombstone(_)));
                continue;
            }
            Ok(Some((entry, _))) => format!(
                "a record with offset {} where offset {} belongs",
                entry.offset(),
                scan.next_offset
            ),
            Err(detail) => detail,
        };
        let mut damage = Damage {
            segment: path.to_path_buf(),
            byte: at as u64,
            bytes: (bytes.len() - at) as u64,
            offset: scan.next_offset,
            resumes_at: None,
            detail,
        };
        match resync(&bytes, at, scan.next_offset) {
            Some((next, offset)) => {
                damage.bytes = (next - at) as u64;
                damage.resumes_at = Some(offset);
                scan.damages.push(damage);
                at = next;
                scan.next_offset = offset;
            }
            None => {
                scan.tail = Some(damage);
                break;
            }
        }
    }
    scan.bytes = bytes;
    Ok(scan)
}

/// The first position after `from` that holds a valid record whose offset
/// is at least `expected` and at most what the bytes in between could have
/// held: its position and offset.
fn resync(bytes: &[u8], from: usize, expected: u64) -> Option<(usize, u64)> {
    const SMALLEST: usize = HEADER + BODY_FIXED;
    (from + 1..bytes.len().saturating_sub(SMALLEST - 1)).find_map(|at| {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if !(BODY_FIXED..=MAX_RECORD_BYTES).contains(&len) || at + HEADER + len > bytes.len() {
            return None;
        }
        let offset = u64::from_le_bytes(
            bytes[at + HEADER..at + HEADER + 8]
                .try_into()
                .expect("8 bytes"),
        );
        let most = expected + ((at - from) / SMALLEST) as u64;
        if offset < expected || offset > most {
            return None;
        }
        match parse_entry(bytes, at) {
            Ok(Some((entry, _))) => Some((at, entry.offset())),
            _ => None,
        }
    })
}

/// One valid entry of a segment.
enum Entry {
    /// A record.
    Record(Record),
    /// The placeholder of a record moved to quarantine, at this offset.
    Tombstone(u64),
}

impl Entry {
    fn offset(&self) -> u64 {
        match self {
            Entry::Record(record) => record.offset,
            Entry::Tombstone(offset) => *offset,
        }
    }
}

/// The bytes of a tombstone at `offset`.
fn tombstone(offset: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_FIXED);
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&0i64.to_le_bytes());
    body.extend_from_slice(&TOMBSTONE_KEY_LEN.to_le_bytes());
    let mut bytes = Vec::with_capacity(HEADER + BODY_FIXED);
    bytes.extend_from_slice(&(BODY_FIXED as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Decodes a body whose checksum matched.
fn decode_body(body: &[u8]) -> Result<Entry, String> {
    let offset = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let timestamp_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let key_len = i32::from_le_bytes(body[16..20].try_into().expect("4 bytes"));
    if key_len == TOMBSTONE_KEY_LEN {
        return Ok(Entry::Tombstone(offset));
    }
    if key_len < -1 {
        return Err(format!("key length {key_len}"));
    }
    let key_end = BODY_FIXED + key_len.max(0) as usize;
    if key_end > body.len() {
        return Err(format!("key length {key_len} beyond the record"));
    }
    let key = (key_len >= 0).then(|| body[BODY_FIXED..key_end].to_vec());
    Ok(Entry::Record(Record {
        offset,
        timestamp_ms,
        key,
        payload: body[key_end..].to_vec(),
    }))
}

/// Parses the entry at `bytes[at..]`: `Ok(None)` at the end, else the entry
/// and its size, or what is wrong with it.
fn parse_entry(bytes: &[u8], at: usize) -> Result<Option<(Entry, usize)>, String> {
    let rest = &bytes[at..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < HEADER {
        return Err(format!("truncated header ({} bytes)", rest.len()));
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if !(BODY_FIXED..=MAX_RECORD_BYTES).contains(&len) {
        return Err(format!("impossible record length {len}"));
    }
    if rest.len() < HEADER + len {
        return Err(format!(
            "truncated record ({} of {len} bytes)",
            rest.len() - HEADER
        ));
    }
    let body = &rest[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(Some((decode_body(body)?, HEADER + len)))
}

/// Why a record could not be read.
enum RecordError {
    /// The bytes are damaged.
    Corrupt(String),
    /// The file could not be read.
    Io(std::io::Error),
}

/// Reads one entry; `Ok(None)` at a clean end of file. A partial record at
/// the end of the file is `Corrupt("truncated …")`.
fn read_record(reader: &mut impl Read, body: &mut Vec<u8>) -> Result<Option<Entry>, RecordError> {
    let mut header = [0u8; HEADER];
    match read_full(reader, &mut header) {
        Ok(0) => return Ok(None),
        Ok(n) if n < HEADER => {
            return Err(RecordError::Corrupt(format!(
                "truncated header ({n} bytes)"
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(RecordError::Io(e)),
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(BODY_FIXED..=MAX_RECORD_BYTES).contains(&len) {
        return Err(RecordError::Corrupt(format!(
            "impossible record length {len}"
        )));
    }
    body.resize(len, 0);
    match read_full(reader, body) {
        Ok(n) if n < len => {
            return Err(RecordError::Corrupt(format!(
                "truncated record ({n} of {len} bytes)"
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(RecordError::Io(e)),
    }
    if crc32fast::hash(body) != crc {
        return Err(RecordError::Corrupt("checksum mismatch".into()));
    }
    decode_body(body).map(Some).map_err(RecordError::Corrupt)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The appending side of a partition.
struct Writer {
    dir: PathBuf,
    file: BufWriter<File>,
    size: u64,
    next_offset: u64,
    options: LogOptions,
    segments: Arc<RwLock<Vec<u64>>>,
    /// Where the last commit left the partition: what a failed append is undone to.
    committed: Committed,
    /// Why a failed append could not be undone: nothing more is appended
    /// (the next start checks the tail).
    broken: Option<String>,
}

/// The partition's state at its last commit.
#[derive(Clone, Copy, Debug)]
struct Committed {
    /// The active segment's base offset.
    base: u64,
    /// Its length.
    size: u64,
    next_offset: u64,
}

impl Writer {
    /// Runs `append` (any number of [`Writer::append`]s) and commits; on
    /// any failure undoes every record of it — buffered bytes dropped,
    /// segments cut back to the last commit's length, segments it opened
    /// removed — so that an append that answered an error is never read
    /// (not even once the disk has room again and a later append flushes).
    /// If the undo itself fails the writer refuses every later append and
    /// the error says that the outcome is unknown.
    fn transaction<T>(
        &mut self,
        end: &End,
        append: impl FnOnce(&mut Writer) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if let Some(why) = &self.broken {
            return Err(SourceError::Invalid(format!(
                "{}: nothing is appended since a failed append could not be undone ({why}); restart stockflow (the start checks the tail)",
                self.dir.display()
            )));
        }
        let done = append(self).and_then(|value| self.commit(end).map(|()| value));
        match done {
            Ok(value) => {
                let base = *self
                    .segments
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .last()
                    .expect("one segment at least");
                self.committed = Committed {
                    base,
                    size: self.size,
                    next_offset: self.next_offset,
                };
                Ok(value)
            }
            Err(error) => match self.undo() {
                Ok(()) => Err(error),
                Err(undo) => {
                    let why = undo.to_string();
                    self.broken = Some(why.clone());
                    Err(SourceError::OutcomeUnknown(format!("{error}; undoing it failed too ({why}): the records may be read after a restart")))
                }
            },
        }
    }

    /// Back to the last commit (see [`Writer::transaction`]).
    fn undo(&mut self) -> Result<(), SourceError> {
        let Committed {
            base,
            size,
            next_offset,
        } = self.committed;
        let what = |path: &Path| format!("undoing a failed append to {}", path.display());
        // Drop what is buffered, unwritten: a later flush must not write it.
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(what(&path)))?;
        let (_, _unwritten) =
            std::mem::replace(&mut self.file, BufWriter::with_capacity(256 << 10, file))
                .into_parts();
        // Segments opened since the commit go; the commit's own is cut back.
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        while segments.last().is_some_and(|last| *last > base) {
            let newer = segment_path(&self.dir, segments.pop().expect("a newer segment"));
            match std::fs::remove_file(&newer) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(what(&newer))(e)),
            }
        }
        drop(segments);
        self.file.get_ref().set_len(size).map_err(io(what(&path)))?;
        (self.size, self.next_offset) = (size, next_offset);
        Ok(())
    }

    /// Buffers one record; visible to readers after [`Writer::commit`].
    fn append(
        &mut self,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<u64, SourceError> {
        let key_len = key.map_or(0, <[u8]>::len);
        let len = BODY_FIXED + key_len + payload.len();
        if len > MAX_RECORD_BYTES {
            return Err(SourceError::Invalid(format!(
                "record of {len} bytes exceeds the limit of {MAX_RECORD_BYTES}"
            )));
        }
        if self.size > 0 && self.size + (HEADER + len) as u64 > self.options.segment_bytes {
            self.roll()?;
        }
        let offset = self.next_offset;
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&timestamp_ms.to_le_bytes());
        body.extend_from_slice(&key.map_or(-1i32, |k| k.len() as i32).to_le_bytes());
        if let Some(key) = key {
            body.extend_from_slice(key);
        }
        body.extend_from_slice(payload);
        let what = || format!("appending to {}", self.dir.display());
        self.file
            .write_all(&(len as u32).to_le_bytes())
            .map_err(io(what()))?;
        self.file
            .write_all(&crc32fast::hash(&body).to_le_bytes())
            .map_err(io(what()))?;
        self.file.write_all(&body).map_err(io(what()))?;
        self.size += (HEADER + len) as u64;
        self.next_offset += 1;
        Ok(offset)
    }

    /// Writes buffered records through to the OS, then lets readers see them.
    fn commit(&mut self, end: &End) -> Result<(), SourceError> {
        self.file
            .flush()
            .map_err(io(format!("flushing {}", self.dir.display())))?;
        if self.options.fsync_every_append {
            self.file
                .get_ref()
                .sync_data()
                .map_err(io(format!("syncing {}", self.dir.display())))?;
        }
        end.advance(self.next_offset);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SourceError> {
        self.file
            .flush()
            .and_then(|_| self.file.get_ref().sync_data())
            .map_err(io(format!("syncing {}", self.dir.display())))
    }

    /// Closes the active segment (fsynced) and starts one at the next offset.
    fn roll(&mut self) -> Result<(), SourceError> {
        self.sync()?;
        let path = segment_path(&self.dir, self.next_offset);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        self.file = BufWriter::with_capacity(256 << 10, file);
        self.size = 0;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.next_offset);
        Ok(())
    }
}

/// Sequential reader of one partition of the embedded log.
pub struct LogReader {
    dir: PathBuf,
    partition: u32,
    end: Arc<End>,
    segments: Arc<RwLock<Vec<u64>>>,
    /// Held for `end` (which holds it weakly), see [`PartitionReader::wake_on_data`].
    wake: Option<Wake>,
    /// Whether the next append should call `wake` (set by every read).
    armed: Arc<AtomicBool>,
    position: u64,
    /// Open segment: its base, the reader, and the offset it is positioned at.
    current: Option<(u64, BufReader<File>, u64)>,
}

impl LogReader {
    /// Opens the segment holding `position` and skips to it.
    fn open_segment(&mut self) -> Result<(), SourceError> {
        let base = {
            let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
            let index = segments.partition_point(|b| *b <= self.position);
            segments[index.saturating_sub(1)]
        };
        let path = segment_path(&self.dir, base);
        let file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut at = base;
        let mut body = Vec::new();
        // Skip the records before `position` (the segment's sparse index is its start).
        while at < self.position {
            match read_record(&mut reader, &mut body) {
                Ok(Some(_)) => at += 1, // a record or a tombstone: each holds one offset
                Ok(None) => break,
                Err(RecordError::Io(e)) => {
                    return Err(io(format!("reading {}", path.display()))(e))
                }
                Err(RecordError::Corrupt(detail)) => {
                    return Err(SourceError::Corrupt {
                        what: format!("{} at offset {at}", path.display()),
                        detail,
                    })
                }
            }
        }
        self.current = Some((base, reader, at));
        Ok(())
    }
}

impl PartitionReader for LogReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    fn read(&mut self, max: usize, out: &mut Vec<Record>) -> Result<usize, SourceError> {
        // Before the end is read: an append after it wakes whoever waits.
        self.armed.store(true, Ordering::SeqCst);
        let end = self.end.load();
        let mut count = 0;
        let mut body = Vec::new();
        while count < max && self.position < end {
            if self
                .current
                .as_ref()
                .is_none_or(|(_, _, at)| *at != self.position)
            {
                self.open_segment()?;
            }
            let (base, reader, at) = self.current.as_mut().expect("segment open");
            let path = || segment_path(&self.dir, *base);
            match read_record(reader, &mut body) {
                Ok(Some(entry)) => {
                    if entry.offset() != self.position {
                        return Err(SourceError::Corrupt {
                            what: path().display().to_string(),
                            detail: format!(
                                "expected offset {}, found {}",
                                self.position,
                                entry.offset()
                            ),
                        });
                    }
                    *at += 1;
                    self.position += 1;
                    // A tombstone holds its offset and nothing to read: skipped.
                    if let Entry::Record(record) = entry {
                        out.push(record);
                        count += 1;
                    }
                }
                Ok(None) => {
                    // End of this segment: the next one starts at `position`.
                    let next_exists = self
                        .segments
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&self.position);
                    if !next_exists {
                        return Err(SourceError::Corrupt {
                            what: path().display().to_string(),
                            detail: format!(
                                "ends before offset {} that the log holds",
                                self.position
                            ),
                        });
                    }
                    self.current = None;
                }
                Err(RecordError::Io(e)) => {
                    return Err(io(format!("reading {}", path().display()))(e))
                }
                Err(RecordError::Corrupt(detail)) => {
                    return Err(SourceError::Corrupt {
                        what: format!("{} at offset {}", path().display(), self.position),
                        detail,
                    })
                }
            }
        }
        Ok(count)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn end_offset(&self) -> Result<u64, SourceError> {
        Ok(self.end.load())
    }

    fn wake_on_data(&mut self, wake: Wake) -> bool {
        // Armed by each read, fired once: a fast producer wakes a reader once
        // per read it did, not once per append.
        let armed = self.armed.clone();
        let wake: Wake = Arc::new(move || {
            if armed.swap(false, Ordering::SeqCst) {
                wake()
            }
        });
        self.end.wake_on_advance(&wake);
        self.wake = Some(wake);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(topic: &Topic, partition: u32, from: u64) -> Vec<Record> {
        let mut reader = topic.reader(partition, from).unwrap();
        let mut out = Vec::new();
        while PartitionReader::read(&mut reader, 7, &mut out).unwrap() > 0 {}
        out
    }

    /// The file-size limit stands in for a full disk: a write past it
    /// writes what fits, then fails (EFBIG), as a write to a full disk does.
    #[tokio::test(flavor = "current_thread")]
    async fn an_append_that_failed_for_want_of_space_is_undone_and_never_read() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit, Signal};
        // A handler, so that SIGXFSZ does not end the test's process (it runs in one of its own under nextest).
        let _handled = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
            Signal::XFSZ.as_raw(),
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let payloads = |topic: &Topic| -> Vec<String> {
            read_all(topic, 0, 0)
                .iter()
                .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
                .collect()
        };
        let mut expected: Vec<String> = (0..10).map(|i| format!("ok {i}")).collect();
        {
            let log = Log::open_with(
                dir.path(),
                LogOptions {
                    segment_bytes: 4096,
                    fsync_every_append: false,
                },
            )
            .unwrap();
            let topic = log.topic("t", 1).unwrap();
            for (i, payload) in expected.iter().enumerate() {
                topic
                    .append_to(0, b"k", payload.as_bytes(), i as i64)
                    .unwrap();
            }
            let written: u64 = fs::read_dir(dir.path().join("t/0"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            let limit = getrlimit(Resource::Fsize);
            setrlimit(
                Resource::Fsize,
                Rlimit {
                    current: Some(written + 10),
                    maximum: limit.maximum,
                },
            )
            .unwrap();
            let big = vec![b'x'; 1000];
            assert!(
                topic.append_to(0, b"k", &big, 99).is_err(),
                "no room for it"
            );
            // A batch that rolls into a new segment on the way, then fails.
            let batch: Vec<(&[u8], &[u8], i64)> =
                (0..6).map(|i| (&b"k"[..], &big[..], i)).collect();
            assert!(topic.append_batch(&batch).is_err(), "no room for them");
            assert_eq!(
                topic.end_offset(0),
                10,
                "nothing of the failed appends is visible"
            );

            // Two partitions, one with room and one without: each record is told its own outcome.
            let two = log.topic("two", 2).unwrap();
            let full_key: &[u8] = b"a";
            let roomy_key: &[u8] = [&b"b"[..], b"c", b"d", b"e", b"f"]
                .into_iter()
                .find(|k| partition_for_key(k, 2) != partition_for_key(full_key, 2))
                .expect("a key of the other partition");
            setrlimit(Resource::Fsize, limit).unwrap();
            two.append(full_key, &vec![b'y'; 3000], 0).unwrap();
            two.append(roomy_key, b"small", 0).unwrap();
            setrlimit(
                Resource::Fsize,
                Rlimit {
                    current: Some(1000),
                    maximum: limit.maximum,
                },
            )
            .unwrap();
            let outcomes = two.append_each(&[
                (full_key, &b"to the full one"[..], 1),
                (roomy_key, &b"to the roomy one"[..], 1),
            ]);
            assert!(outcomes[0].is_err(), "{outcomes:?}");
            assert_eq!(
                outcomes[1],
                Ok((partition_for_key(roomy_key, 2), 1)),
                "the other partition's record landed and says so"
            );
            setrlimit(Resource::Fsize, limit).unwrap();

            // Room again: the next append takes the next offset, and the failed ones never appear.
            assert_eq!(
                topic.append_to(0, b"k", b"after", 100).unwrap(),
                10,
                "the failed records took no offset"
            );
            expected.push("after".into());
            assert_eq!(payloads(&topic), expected);
        }
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(
            payloads(&log.topic("t", 1).unwrap()),
            expected,
            "nor after a restart"
        );
    }

    #[test]
    fn survives_restart_with_identical_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        {
            let log = Log::open_with(
                dir.path(),
                LogOptions {
                    segment_bytes: 300,
                    fsync_every_append: false,
                },
            )
            .unwrap();
            let topic = log.topic("t", 3).unwrap();
            for i in 0..50 {
                let key = format!("k{}", i % 7);
                written.push((
                    topic
                        .append(key.as_bytes(), format!("payload {i}").as_bytes(), i)
                        .unwrap(),
                    key,
                    i,
                ));
            }
        }
        let log = Log::open(dir.path()).unwrap();
        let topic = log.topic("t", 9).unwrap();
        assert_eq!(topic.partitions(), 3, "the stored partition count wins");
        for ((partition, offset), key, i) in written {
            let record = &read_all(&topic, partition, offset)[0];
            assert_eq!(
                (
                    record.offset,
                    record.key.as_deref(),
                    record.payload.as_slice(),
                    record.timestamp_ms
                ),
                (
                    offset,
                    Some(key.as_bytes()),
                    format!("payload {i}").as_bytes(),
                    i
                )
            );
        }
        let next = topic.append_to(0, b"k", b"after restart", 0).unwrap();
        assert_eq!(next, topic.end_offset(0) - 1);
        assert!(
            fs::read_dir(dir.path().join("t/0")).unwrap().count() >= 2,
            "tiny segments rolled"
        );
    }

    #[test]
    fn reads_from_the_middle_across_segments_and_tails_new_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open_with(
            dir.path(),
            LogOptions {
                segment_bytes: 200,
                fsync_every_append: false,
            },
        )
        .unwrap();
        let topic = log.topic("t", 1).unwrap();
        for i in 0..30 {
            topic
                .append_to(0, b"k", format!("{i:03}").as_bytes(), 0)
                .unwrap();
        }
        let bases = topic.partitions[0].segments.read().unwrap().clone();
        assert!(bases.len() > 3);
        for from in [0, 13, bases[2], 29, 30] {
            let records = read_all(&topic, 0, from);
            assert_eq!(records.len() as u64, 30 - from, "from {from}");
            assert!(records
                .iter()
                .zip(from..)
                .all(|(r, o)| r.offset == o && r.payload == format!("{o:03}").as_bytes()));
        }
        let mut tail = topic.reader(0, 30).unwrap();
        let mut out = Vec::new();
        assert_eq!(PartitionReader::read(&mut tail, 10, &mut out).unwrap(), 0);
        topic.append_to(0, b"k", b"new", 0).unwrap();
        assert_eq!(PartitionReader::read(&mut tail, 10, &mut out).unwrap(), 1);
        assert_eq!(out[0].payload, b"new");
        assert!(matches!(topic.reader(0, 32), Err(SourceError::Invalid(_))));
    }

    #[test]
    fn torn_or_corrupt_tails_are_truncated_never_returned() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 3] = [
            ("garbage appended", |p| {
                let mut f = OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(&[0xff, 0x01, 0x00]).unwrap();
            }),
            ("cut mid-record", |p| {
                let len = fs::metadata(p).unwrap().len();
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len - 5)
                    .unwrap();
            }),
            ("flipped byte in the last record", |p| {
                let mut bytes = fs::read(p).unwrap();
                let last = bytes.len() - 2;
                bytes[last] ^= 0x55;
                fs::write(p, bytes).unwrap();
            }),
        ];
        for (name, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            {
                let log = Log::open(dir.path()).unwrap();
                let topic = log.topic("t", 1).unwrap();
                for i in 0..5 {
                    topic
                        .append_to(0, b"k", format!("r{i}").as_bytes(), 0)
                        .unwrap();
                }
            }
            damage(&segment_path(&dir.path().join("t/0"), 0));
            let log = Log::open(dir.path()).unwrap();
            let topic = log.topic("t", 1).unwrap();
            let records = read_all(&topic, 0, 0);
            let expected = if name == "garbage appended" { 5 } else { 4 };
            assert_eq!(records.len(), expected, "{name}");
            assert!(
                records
                    .iter()
                    .enumerate()
                    .all(|(i, r)| r.payload == format!("r{i}").as_bytes()),
                "{name}"
            );
            assert_eq!(
                topic.append_to(0, b"k", b"next", 0).unwrap(),
                expected as u64,
                "{name}: offsets stay dense"
            );
            assert_eq!(read_all(&topic, 0, 0).len(), expected + 1, "{name}");
        }
    }

    #[test]
    fn a_reader_tails_a_concurrent_writer_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open_with(
            dir.path(),
            LogOptions {
                segment_bytes: 4096,
                fsync_every_append: false,
            },
        )
        .unwrap();
        let topic = log.topic("t", 1).unwrap();
        let writer = {
            let topic = topic.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    topic.append_to(0, b"k", &i.to_le_bytes(), 0).unwrap();
                }
            })
        };
        let mut reader = topic.reader(0, 0).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seen.len() < 10_000 && std::time::Instant::now() < deadline {
            PartitionReader::read(&mut reader, 500, &mut seen).unwrap();
        }
        writer.join().unwrap();
        assert_eq!(seen.len(), 10_000);
        assert!(seen
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as u64 && r.payload == (i as u32).to_le_bytes()));
    }

    #[test]
    fn an_append_wakes_a_waiting_reader_once_per_read_and_forgets_a_dropped_one() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let topic = log.topic("t", 1).unwrap();
        let woken = Arc::new(AtomicUsize::new(0));
        let mut reader = topic.reader(0, 0).unwrap();
        let count = woken.clone();
        assert!(reader.wake_on_data(Arc::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
        })));
        // Not armed before the first read.
        topic.append_to(0, b"k", b"1", 0).unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        let mut out = Vec::new();
        assert_eq!(reader.read(10, &mut out).unwrap(), 1);
        assert_eq!(reader.read(10, &mut out).unwrap(), 0, "caught up");
        topic.append_to(0, b"k", b"2", 0).unwrap();
        topic.append_to(0, b"k", b"3", 0).unwrap();
        assert_eq!(
            woken.load(Ordering::SeqCst),
            1,
            "once per read, not per append"
        );
        assert_eq!(reader.read(10, &mut out).unwrap(), 2);
        topic.append_to(0, b"k", b"4", 0).unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        drop(reader);
        topic.append_to(0, b"k", b"5", 0).unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        let waiting = topic
            .partition(0)
            .unwrap()
            .end
            .waiting
            .lock()
            .unwrap()
            .len();
        assert_eq!(waiting, 0, "a dropped reader's wake is pruned");
    }

    #[test]
    fn rejects_bad_topic_names_and_missing_topics() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        assert!(matches!(log.topic("a/b", 1), Err(SourceError::Invalid(_))));
        assert!(matches!(log.topic("..", 1), Err(SourceError::Invalid(_))));
        assert!(log.existing_topic("nope").unwrap().is_none());
        let batch = log
            .topic("t", 2)
            .unwrap()
            .append_batch(&[(b"a", b"1", 0), (b"b", b"2", 0), (b"a", b"3", 0)])
            .unwrap();
        assert_eq!(batch[0].0, batch[2].0, "one key, one partition");
        assert!(
            batch[2].1 > batch[0].1,
            "later in the batch, later in the partition"
        );
    }
}
