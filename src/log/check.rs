//! `stockflow log check` and `stockflow log repair --quarantine`: find damage
//! in every segment of the embedded log, and move it aside.
//!
//! [`check`] reads every segment of every partition and writes nothing. It
//! tells two things apart: a *torn tail* (bytes at the end of a partition's
//! last segment with no valid record after them: what a crash mid-append
//! leaves, and what `serve` truncates on start) and *damage* (bad bytes
//! followed by valid records, in any segment, or segments whose offsets do
//! not follow on: `serve` refuses to start on it in the last segment, and a
//! reader stops at it in an older one).
//!
//! [`repair`] keeps every valid record and every offset where it was: each
//! damaged stretch is copied, byte for byte, into
//! `<quarantine>/<topic>/<partition>/`, and replaced in its segment by one
//! *tombstone* per offset it covered (a valid record, `key_len` -2, that
//! readers skip). Offsets never shift, so checkpoints, `as_of` tokens, sink
//! progress and webhook cursors that name later offsets stay right. A torn
//! tail is copied to quarantine and truncated (the offsets it would have held
//! were never readable). Each segment is rewritten atomically (a temporary
//! file, fsynced and renamed over the original: `stockflow_sinks::fs`), after
//! its quarantine files are written the same way: a crash at any point leaves either the old segment (repair again)
//! or the new one, and never loses the damaged bytes.

use super::{
    io, parse_entry, scan_segment, segment_bases, segment_path, tombstone, write_atomically,
    Damage, SegmentScan,
};
use crate::source::SourceError;
use std::fs;
use std::path::{Path, PathBuf};

/// What [`check`] found in one partition.
#[derive(Clone, Debug)]
pub struct PartitionReport {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// How many segment files it has.
    pub segments: usize,
    /// Valid records read (tombstones not counted).
    pub records: u64,
    /// Tombstones read (records an earlier repair moved to quarantine).
    pub tombstones: u64,
    /// The offset after the last valid record.
    pub end: u64,
    /// Damage: bad bytes followed by valid records, or a break in the offsets.
    pub damages: Vec<Damage>,
    /// Bytes at the end of the last segment with nothing valid after them.
    pub torn_tail: Option<Damage>,
}

/// What [`check`] found in the whole log.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One entry per partition of every topic, in topic and partition order.
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// Whether any partition holds damage (a torn tail alone is not damage).
    pub fn damaged(&self) -> bool {
        self.partitions.iter().any(|p| !p.damages.is_empty())
    }
}

/// The topics of the log in `dir` (directories holding a `topic.json`), sorted.
fn topics(dir: &Path) -> Result<Vec<(String, u32)>, SourceError> {
    let mut topics = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let meta = entry.path().join("topic.json");
        let text = match fs::read_to_string(&meta) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("reading {}", meta.display()))(e)),
        };
        let partitions = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| value["partitions"].as_u64())
            .filter(|p| *p >= 1)
            .ok_or_else(|| SourceError::Corrupt {
                what: meta.display().to_string(),
                detail: "no partition count".into(),
            })?;
        topics.push((
            entry.file_name().to_string_lossy().into_owned(),
            partitions as u32,
        ));
    }
    topics.sort();
    Ok(topics)
}

/// One partition's segments, scanned, with the breaks between them turned
/// into damage: returns the report and the scans (with their bytes).
fn scan_partition(
    dir: &Path,
    topic: &str,
    partition: u32,
) -> Result<(PartitionReport, Vec<(u64, SegmentScan)>), SourceError> {
    let bases = match fs::metadata(dir) {
        Ok(_) => segment_bases(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    let mut report = PartitionReport {
        topic: topic.to_owned(),
        partition,
        segments: bases.len(),
        records: 0,
        tombstones: 0,
        end: bases.first().copied().unwrap_or(0),
        damages: Vec::new(),
        torn_tail: None,
    };
    let mut scans = Vec::new();
    for (index, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let scan = scan_segment(&path, base)?;
        report.records += scan.entries - scan.tombstones;
        report.tombstones += scan.tombstones;
        report.damages.extend(scan.damages.iter().cloned());
        report.end = scan.next_offset;
        match (bases.get(index + 1), &scan.tail) {
            // The last segment: bytes with nothing valid after them are a torn tail.
            (None, tail) => report.torn_tail = tail.clone(),
            // An older segment: whatever is bad at its end is followed by the next segment.
            (Some(&next), Some(tail)) => report.damages.push(Damage {
                resumes_at: Some(next),
                ..tail.clone()
            }),
            (Some(&next), None) if scan.next_offset != next => report.damages.push(Damage {
                segment: path.clone(),
                byte: scan.len,
                bytes: 0,
                offset: scan.next_offset,
                resumes_at: Some(next),
                detail: format!(
                    "the segment ends before offset {} but the next one begins at offset {next}",
                    scan.next_offset
                ),
            }),
            (Some(_), None) => {}
        }
        scans.push((base, scan));
    }
    Ok((report, scans))
}

/// Reads every segment of the log in `dir` and reports what is damaged;
/// writes nothing. A missing `dir` is an error.
pub fn check(dir: &Path) -> Result<Report, SourceError> {
    if !dir.is_dir() {
        return Err(SourceError::NotFound(format!(
            "no embedded log at {} (the directory does not exist)",
            dir.display()
        )));
    }
    let mut report = Report::default();
    for (topic, partitions) in topics(dir)? {
        for partition in 0..partitions {
            report.partitions.push(
                scan_partition(
                    &dir.join(&topic).join(partition.to_string()),
                    &topic,
                    partition,
                )?
                .0,
            );
        }
    }
    Ok(report)
}

/// One damaged stretch (or torn tail) that [`repair`] moved aside.
#[derive(Clone, Debug)]
pub struct Quarantined {
    /// What was damaged, as [`check`] reported it.
    pub damage: Damage,
    /// The file holding the damaged bytes (none for a break between segments, which holds no bytes).
    pub file: Option<PathBuf>,
    /// How many offsets now hold a tombstone (`damage.offset` onwards).
    pub tombstones: u64,
}

/// Moves every damaged stretch of the log in `dir` into `quarantine`
/// (`<quarantine>/<topic>/<partition>/<segment>-byte-<B>-offsets-<first>-<last>.bin`)
/// and puts a tombstone at each offset it covered; truncates torn tails
/// after copying them there too. Every valid record stays at its offset.
/// The caller holds the data dir's lock: nothing else may write the log.
pub fn repair(dir: &Path, quarantine: &Path) -> Result<Vec<Quarantined>, SourceError> {
    if !dir.is_dir() {
        return Err(SourceError::NotFound(format!(
            "no embedded log at {} (the directory does not exist)",
            dir.display()
        )));
    }
    let mut done = Vec::new();
    for (topic, partitions) in topics(dir)? {
        for partition in 0..partitions {
            let partition_dir = dir.join(&topic).join(partition.to_string());
            let (report, scans) = scan_partition(&partition_dir, &topic, partition)?;
            if report.damages.is_empty() && report.torn_tail.is_none() {
                continue;
            }
            let aside = quarantine.join(&topic).join(partition.to_string());
            for (base, scan) in &scans {
                let path = segment_path(&partition_dir, *base);
                let mut stretches: Vec<&Damage> = report
                    .damages
                    .iter()
                    .chain(report.torn_tail.iter())
                    .filter(|damage| damage.segment == path)
                    .collect();
                if stretches.is_empty() {
                    continue;
                }
                stretches.sort_by_key(|damage| damage.byte);
                done.extend(repair_segment(&path, scan, &stretches, &aside)?);
            }
        }
    }
    Ok(done)
}

/// Rewrites one segment without its damaged stretches (tombstones in their
/// place), after copying each into `aside`.
fn repair_segment(
    path: &Path,
    scan: &SegmentScan,
    stretches: &[&Damage],
    aside: &Path,
) -> Result<Vec<Quarantined>, SourceError> {
    let segment_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rewritten = Vec::with_capacity(scan.bytes.len());
    let mut done = Vec::new();
    let mut kept_from = 0usize;
    for damage in stretches {
        let (start, end) = (damage.byte as usize, (damage.byte + damage.bytes) as usize);
        rewritten.extend_from_slice(&scan.bytes[kept_from..start]);
        kept_from = end;
        let tombstones = match damage.resumes_at {
            Some(next) if next < damage.offset => {
                return Err(SourceError::Corrupt {
                    what: damage.location(),
                    detail: format!("{}; offsets go back to {next} after it: not repaired (copy the data dir and inspect it by hand)", damage.detail),
                })
            }
            Some(next) => next - damage.offset,
            None => 0,
        };
        let file = if damage.bytes > 0 {
            let last = if tombstones > 0 {
                (damage.offset + tombstones - 1).to_string()
            } else {
                "none".to_owned()
            };
            let file = aside.join(format!(
                "{segment_name}-byte-{}-offsets-{}-{last}.bin",
                damage.byte, damage.offset
            ));
            fs::create_dir_all(aside).map_err(io(format!("creating {}", aside.display())))?;
            write_atomically(&file, &scan.bytes[start..end])?;
            Some(file)
        } else {
            None
        };
        for offset in damage.offset..damage.offset + tombstones {
            rewritten.extend_from_slice(&tombstone(offset));
        }
        tracing::warn!(damage = %damage.location(), bytes = damage.bytes, tombstones, quarantine = ?file, "embedded log: damaged stretch moved to quarantine");
        done.push(Quarantined {
            damage: (*damage).clone(),
            file,
            tombstones,
        });
    }
    rewritten.extend_from_slice(&scan.bytes[kept_from..]);
    // What is written must read back whole before it replaces the original.
    let mut at = 0;
    while let Some((_, size)) =
        parse_entry(&rewritten, at).map_err(|detail| SourceError::Corrupt {
            what: format!("the repaired copy of {}", path.display()),
            detail: format!("{detail} at byte {at}; the original was left as it was"),
        })?
    {
        at += size;
    }
    write_atomically(path, &rewritten)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Log;
    use crate::source::PartitionReader;
    use std::io::Write;

    /// A one-partition topic `t` of `count` records `r0`, `r1`, … in segments of `segment_bytes`.
    fn log_of(dir: &Path, count: usize, segment_bytes: u64) {
        let log = Log::open_with(
            dir,
            crate::log::LogOptions {
                segment_bytes,
                fsync_every_append: false,
            },
        )
        .unwrap();
        let topic = log.topic("t", 1).unwrap();
        for i in 0..count {
            topic
                .append_to(0, b"k", format!("r{i}").as_bytes(), i as i64)
                .unwrap();
        }
    }

    /// Flips the last byte of record `index` of the segment at `path`; answers where the record begins.
    fn flip_payload(path: &Path, index: usize) -> u64 {
        let mut bytes = fs::read(path).unwrap();
        let mut at = 0;
        for _ in 0..index {
            at += super::super::HEADER
                + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        bytes[at + super::super::HEADER + len - 1] ^= 0x20;
        fs::write(path, bytes).unwrap();
        at as u64
    }

    fn read_all(log: &Log) -> Vec<(u64, Vec<u8>)> {
        let topic = log.existing_topic("t").unwrap().unwrap();
        let mut reader = topic.reader(0, 0).unwrap();
        let mut out = Vec::new();
        while reader.position() < topic.end_offset(0) {
            reader.read(5, &mut out).unwrap();
        }
        out.into_iter().map(|r| (r.offset, r.payload)).collect()
    }

    #[test]
    fn damage_mid_segment_is_refused_reported_and_repaired_keeping_every_other_record_at_its_offset(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        log_of(&log_dir, 40, 1 << 20);
        let segment = segment_path(&log_dir.join("t/0"), 0);
        let before = fs::read(&segment).unwrap();
        let byte = flip_payload(&segment, 17);

        // A writer and a reader both refuse, naming file, byte and offset; nothing changed.
        type Open = fn(&Path) -> Result<Log, SourceError>;
        let opens: [Open; 2] = [Log::open, Log::open_read_only];
        for open in opens {
            let error = open(&log_dir)
                .unwrap()
                .topic("t", 1)
                .err()
                .expect("refused")
                .to_string();
            assert!(
                error.contains(&format!("{} at byte {byte} (offset 17)", segment.display())),
                "{error}"
            );
            assert!(
                error.contains("checksum mismatch") && error.contains("log repair --quarantine"),
                "{error}"
            );
        }
        assert_eq!(
            fs::read(&segment).unwrap().len(),
            before.len(),
            "nothing truncated"
        );

        let report = check(&log_dir).unwrap();
        assert!(report.damaged());
        let p = &report.partitions[0];
        assert_eq!(
            (p.records, p.end, p.damages.len(), p.torn_tail.is_none()),
            (39, 40, 1, true),
            "{p:?}"
        );
        assert_eq!(
            (
                p.damages[0].byte,
                p.damages[0].offset,
                p.damages[0].resumes_at
            ),
            (byte, 17, Some(18))
        );

        let quarantine = dir.path().join("quarantine");
        let done = repair(&log_dir, &quarantine).unwrap();
        assert_eq!(done.len(), 1);
        let file = done[0].file.clone().unwrap();
        assert!(file.starts_with(quarantine.join("t/0")), "{file:?}");
        let stretch = (byte as usize)..(byte + done[0].damage.bytes) as usize;
        let mut damaged = before[stretch.clone()].to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x20;
        assert_eq!(
            fs::read(&file).unwrap(),
            damaged,
            "the damaged bytes are kept, as they were"
        );

        assert!(!check(&log_dir).unwrap().damaged(), "repaired");
        assert_eq!(check(&log_dir).unwrap().partitions[0].tombstones, 1);
        let log = Log::open(&log_dir).unwrap();
        let records = read_all(&log);
        let expected: Vec<(u64, Vec<u8>)> = (0..40u64)
            .filter(|o| *o != 17)
            .map(|o| (o, format!("r{o}").into_bytes()))
            .collect();
        assert_eq!(records, expected, "every other record, at its own offset");
        assert_eq!(
            log.existing_topic("t")
                .unwrap()
                .unwrap()
                .append_to(0, b"k", b"next", 0)
                .unwrap(),
            40,
            "offsets go on"
        );
        assert!(
            repair(&log_dir, &quarantine).unwrap().is_empty(),
            "nothing more to repair"
        );
    }

    #[test]
    fn damage_in_an_older_segment_and_a_torn_tail_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        log_of(&log_dir, 30, 200);
        let partition = log_dir.join("t/0");
        let bases = segment_bases(&partition).unwrap();
        assert!(bases.len() >= 3, "{bases:?}");
        // The last record of the first segment: damage that runs to its end, followed by the next segment.
        let first_count = (bases[1] - bases[0]) as usize;
        flip_payload(&segment_path(&partition, bases[0]), first_count - 1);
        // Half a record at the end of the last segment: a torn tail.
        let last = segment_path(&partition, *bases.last().unwrap());
        let mut file = fs::OpenOptions::new().append(true).open(&last).unwrap();
        file.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();

        let report = check(&log_dir).unwrap();
        let p = &report.partitions[0];
        assert_eq!(p.damages.len(), 1, "{p:?}");
        assert_eq!(
            (p.damages[0].offset, p.damages[0].resumes_at),
            (bases[1] - 1, Some(bases[1]))
        );
        assert_eq!(p.torn_tail.as_ref().map(|t| t.bytes), Some(6));
        assert_eq!(p.end, 30);

        let done = repair(&log_dir, &dir.path().join("quarantine")).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        let report = check(&log_dir).unwrap();
        assert!(
            !report.damaged() && report.partitions[0].torn_tail.is_none(),
            "{report:?}"
        );
        let records = read_all(&Log::open_read_only(&log_dir).unwrap());
        assert_eq!(records.len(), 29);
        assert!(records
            .iter()
            .all(|(o, payload)| *o != bases[1] - 1 && *payload == format!("r{o}").into_bytes()));
    }
}
