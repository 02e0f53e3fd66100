//! `stockflow replay`: rebuilds every view from a range of topics into a
//! fresh data dir (a checkpoint a later `serve` resumes from), files (one
//! canonical dump per view) and, optionally, ClickHouse.
//!
//! The range is applied at the edge, by wrapping each source in a
//! [`Bounded`] source: partitions begin at `--from` and end at `--to`
//! (offsets), or messages outside a time range are skipped (by the log's
//! timestamp, or by the event's own `ts` with `--time-field event`). The
//! engine itself runs unchanged, offline: it writes nothing to the topics.

use crate::settings::{Range, TimeField};
use crate::source::Format;
use crate::source::{PartitionReader, Record, Source, SourceError};
use std::sync::Arc;

/// A source seen through a replay range: partitions begin at `from` and end
/// at `to` (fixed when it is wrapped, so that "latest" is the end at start),
/// and, with time bounds, messages outside them are skipped.
pub struct Bounded {
    inner: Arc<dyn Source>,
    format: Format,
    starts: Vec<u64>,
    ends: Vec<u64>,
    times: (Option<i64>, Option<i64>),
    time_field: TimeField,
}

impl Bounded {
    /// Wraps `inner` (read with `format`) in `range`.
    pub fn wrap(
        inner: Arc<dyn Source>,
        format: Format,
        range: &Range,
    ) -> Result<Arc<dyn Source>, SourceError> {
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for partition in 0..inner.partitions() {
            let end = inner.end_offset(partition)?;
            let first = inner.start_offset(partition)?;
            let start = range
                .from
                .offset(partition)
                .unwrap_or(first)
                .max(first)
                .min(end);
            starts.push(start);
            ends.push(
                range
                    .to
                    .offset(partition)
                    .unwrap_or(end)
                    .min(end)
                    .max(start),
            );
        }
        Ok(Arc::new(Bounded {
            inner,
            format,
            starts,
            ends,
            times: (range.from.time(), range.to.time()),
            time_field: range.time_field,
        }))
    }
}

impl Source for Bounded {
    fn topic(&self) -> &str {
        self.inner.topic()
    }
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn PartitionReader>, SourceError> {
        let start = from.max(self.starts[partition as usize]);
        let end = self.ends[partition as usize];
        let inner = self.inner.reader(partition, start.min(end))?;
        let keep = TimeFilter {
            topic: self.inner.topic().to_owned(),
            format: self.format,
            times: self.times,
            field: self.time_field,
        };
        Ok(Box::new(BoundedReader {
            inner,
            end,
            keep,
            decoded: Vec::new(),
        }))
    }
    fn end_offset(&self, partition: u32) -> Result<u64, SourceError> {
        Ok(self.ends[partition as usize])
    }
    fn start_offset(&self, partition: u32) -> Result<u64, SourceError> {
        Ok(self.starts[partition as usize])
    }
}

/// Which messages a time range keeps.
struct TimeFilter {
    topic: String,
    format: Format,
    times: (Option<i64>, Option<i64>),
    field: TimeField,
}

impl TimeFilter {
    fn keeps(
        &self,
        partition: u32,
        record: &Record,
        decoded: &mut Vec<stockflow_dataflows::model::Event>,
    ) -> bool {
        let (from, to) = self.times;
        if from.is_none() && to.is_none() {
            return true;
        }
        let time = match self.field {
            TimeField::Log => record.timestamp_ms,
            TimeField::Event => {
                decoded.clear();
                // A message that does not decode is kept: the engine reports it as always.
                if self
                    .format
                    .decode(&self.topic, partition, record, decoded)
                    .is_err()
                {
                    return true;
                }
                match decoded.first() {
                    Some(event) => event.ts,
                    None => return true,
                }
            }
        };
        from.is_none_or(|from| time >= from) && to.is_none_or(|to| time < to)
    }
}

struct BoundedReader {
    inner: Box<dyn PartitionReader>,
    end: u64,
    keep: TimeFilter,
    decoded: Vec<stockflow_dataflows::model::Event>,
}

impl PartitionReader for BoundedReader {
    fn partition(&self) -> u32 {
        self.inner.partition()
    }
    fn read(&mut self, max: usize, out: &mut Vec<Record>) -> Result<usize, SourceError> {
        if self.inner.position() >= self.end {
            return Ok(0);
        }
        let before = out.len();
        self.inner.read(max, out)?;
        let partition = self.inner.partition();
        let read = out.split_off(before);
        out.extend(read.into_iter().filter(|record| {
            record.offset < self.end && self.keep.keeps(partition, record, &mut self.decoded)
        }));
        Ok(out.len() - before)
    }
    fn position(&self) -> u64 {
        self.inner.position().min(self.end)
    }
    fn end_offset(&self) -> Result<u64, SourceError> {
        Ok(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Log;
    use crate::settings::Bound;
    use std::collections::BTreeMap;

    #[test]
    fn bounds_parse_with_precise_errors() {
        assert_eq!(Bound::parse("earliest"), Ok(Bound::Earliest));
        assert_eq!(Bound::parse("latest"), Ok(Bound::Latest));
        assert_eq!(Bound::parse("120"), Ok(Bound::Offset(120)));
        assert_eq!(
            Bound::parse("0:120, 2:98"),
            Ok(Bound::Offsets(BTreeMap::from([(0, 120), (2, 98)])))
        );
        assert_eq!(
            Bound::parse("2026-11-20T10:00:00Z"),
            Ok(Bound::Time(1_795_168_800_000))
        );
        let error = Bound::parse("yesterday").unwrap_err();
        assert!(
            error.starts_with("`yesterday` is not earliest, latest"),
            "{error}"
        );
    }

    #[test]
    fn a_bounded_source_reads_its_range_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let topic = log.topic("t", 1).unwrap();
        for n in 0..10u64 {
            let event = format!(
                r#"{{"id":"e{n}","type":"stock.adjusted","sku":"A","location":"m","qty":1,"ts":"2026-11-20T10:0{n}:00Z"}}"#
            );
            topic
                .append_to(0, b"k", event.as_bytes(), 1_000 * n as i64)
                .unwrap();
        }
        let read = |range: Range| -> Vec<u64> {
            let bounded = Bounded::wrap(topic.clone(), Format::Stockflow, &range).unwrap();
            let mut reader = bounded.reader(0, 0).unwrap();
            let mut out = Vec::new();
            while reader.read(3, &mut out).unwrap() > 0
                || reader.position() < bounded.end_offset(0).unwrap()
            {}
            out.iter().map(|r| r.offset).collect()
        };
        let offsets = |from, to| Range {
            from,
            to,
            time_field: TimeField::Log,
        };
        assert_eq!(read(offsets(Bound::Offset(2), Bound::Offset(5))), [2, 3, 4]);
        assert_eq!(
            read(offsets(
                Bound::Earliest,
                Bound::Offsets(BTreeMap::from([(0, 3)]))
            )),
            [0, 1, 2]
        );
        assert_eq!(read(offsets(Bound::Offset(8), Bound::Latest)), [8, 9]);
        assert_eq!(
            read(offsets(Bound::Time(3_000), Bound::Time(6_000))),
            [3, 4, 5],
            "log time"
        );
        let event_time = |from: &str, to: &str| Range {
            from: Bound::parse(from).unwrap(),
            to: Bound::parse(to).unwrap(),
            time_field: TimeField::Event,
        };
        assert_eq!(
            read(event_time("2026-11-20T10:07:00Z", "latest")),
            [7, 8, 9],
            "event time"
        );
    }
}
