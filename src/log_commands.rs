//! `stockflow log check` and `stockflow log repair --quarantine`: the
//! command-line side of [`crate::log::check`] (what is printed, the lock,
//! where quarantined bytes go).

use crate::log::check::{check, repair, PartitionReport, Report};
use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Where `log repair --quarantine` keeps damaged bytes, inside the data dir.
pub fn quarantine_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("quarantine")
}

fn ensure_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.is_dir(),
        "the data dir {} does not exist (give it with --data-dir)",
        data_dir.display()
    );
    Ok(())
}

/// One line per partition, then a line per damaged stretch or torn tail.
fn print_partition(out: &mut impl Write, p: &PartitionReport) -> std::io::Result<()> {
    let state = if !p.damages.is_empty() {
        "DAMAGED"
    } else if p.torn_tail.is_some() {
        "torn tail"
    } else {
        "ok"
    };
    writeln!(
        out,
        "{}/{}: {state}: {} records, {} tombstones, {} segments, next offset {}",
        p.topic, p.partition, p.records, p.tombstones, p.segments, p.end
    )?;
    for damage in &p.damages {
        let resumes = damage.resumes_at.map_or_else(String::new, |o| {
            format!("; valid records resume at offset {o}")
        });
        writeln!(
            out,
            "  damage: {}: {}; {} bytes{resumes}",
            damage.location(),
            damage.detail,
            damage.bytes
        )?;
    }
    if let Some(tail) = &p.torn_tail {
        writeln!(
            out,
            "  torn tail: {}: {}; {} bytes with no valid record after them (what a crash mid-append leaves; `serve` truncates them)",
            tail.location(),
            tail.detail,
            tail.bytes
        )?;
    }
    Ok(())
}

/// The last line: totals, and what to do.
fn summary(report: &Report, data_dir: &Path) -> String {
    let records: u64 = report.partitions.iter().map(|p| p.records).sum();
    let tombstones: u64 = report.partitions.iter().map(|p| p.tombstones).sum();
    let stretches: usize = report.partitions.iter().map(|p| p.damages.len()).sum();
    let damaged = report
        .partitions
        .iter()
        .filter(|p| !p.damages.is_empty())
        .count();
    let tails = report
        .partitions
        .iter()
        .filter(|p| p.torn_tail.is_some())
        .count();
    let mut line = format!(
        "{} partitions, {records} records, {tombstones} tombstones: {stretches} damaged stretches in {damaged} partitions, {tails} torn tails",
        report.partitions.len()
    );
    if stretches > 0 {
        line.push_str(&format!("; with stockflow stopped, back up the data dir and run `stockflow log repair --quarantine --data-dir {}`", data_dir.display()));
    }
    line
}

/// `stockflow log check`: reads every segment of the data dir's log and
/// prints what it found; writes nothing. Answers whether damage was found.
pub fn log_check(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<bool> {
    ensure_data_dir(data_dir)?;
    let log = data_dir.join("log");
    let report =
        check(&log).with_context(|| format!("checking the embedded log in {}", log.display()))?;
    for partition in &report.partitions {
        print_partition(out, partition)?;
    }
    writeln!(out, "{}", summary(&report, data_dir))?;
    Ok(report.damaged())
}

/// `stockflow log repair --quarantine`: takes the data dir's lock (so no
/// server runs on it), moves every damaged stretch into the quarantine dir
/// with tombstones at its offsets, truncates torn tails (their bytes kept in
/// quarantine too), and checks the log again.
pub fn log_repair(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    ensure_data_dir(data_dir)?;
    let _lock = crate::server::lock_data_dir(data_dir)?;
    let log = data_dir.join("log");
    let quarantine = quarantine_dir(data_dir);
    let done = repair(&log, &quarantine)
        .with_context(|| format!("repairing the embedded log in {}", log.display()))?;
    for item in &done {
        let kept = item.file.as_ref().map_or_else(
            || "no bytes".to_owned(),
            |file| format!("bytes kept in {}", file.display()),
        );
        let offsets = match item.tombstones {
            0 => "no offset".to_owned(),
            1 => format!("offset {} is a tombstone", item.damage.offset),
            n => format!(
                "offsets {}..={} are tombstones",
                item.damage.offset,
                item.damage.offset + n - 1
            ),
        };
        writeln!(
            out,
            "moved aside: {} ({}, {} bytes): {offsets}; {kept}",
            item.damage.location(),
            item.damage.detail,
            item.damage.bytes
        )?;
    }
    let report = check(&log).with_context(|| {
        format!(
            "checking the embedded log in {} after the repair",
            log.display()
        )
    })?;
    writeln!(
        out,
        "{} repaired; now: {}",
        done.len(),
        summary(&report, data_dir)
    )?;
    anyhow::ensure!(
        !report.damaged(),
        "the log still holds damage after the repair: see above"
    );
    Ok(())
}
