//! The embedded log under damage and the offline tools, run as the release
//! binary: a damaged record followed by valid ones stops `serve` and `dump`
//! naming the file and offset (never a silent truncation), `log check`
//! reports it and `log repair --quarantine` moves it aside keeping every
//! other record at its offset; `dump`, `export` and `replay` write nothing
//! into the data dir they read (no truncation, no topic, webhook, lock or
//! checkpoint file, no listening socket), and a missing data dir is an error.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use stockflow::log::Log;
use stockflow::server::INVENTORY_EVENTS;

/// Events appended: `stock.adjusted` of `qty` 1 to sku `S{n % 7}` at madrid.
const EVENTS: u64 = 300;

fn sku_of(n: u64) -> String {
    format!("S{}", n % 7)
}

/// A data dir whose `inventory.events` has one partition holding [`EVENTS`]
/// events at offsets 0, 1, …; nothing else (no other topic, no webhooks).
fn data_dir_with_events(dir: &Path) {
    let log = Log::open(&dir.join("log")).unwrap();
    let topic = log.topic(INVENTORY_EVENTS, 1).unwrap();
    for n in 0..EVENTS {
        let event = json!({"id": format!("e-{n}"), "tenant": "default", "type": "stock.adjusted", "ts": "2026-11-20T10:00:00.000Z",
            "sku": sku_of(n), "location": "madrid", "qty": 1, "reason": "count"});
        assert_eq!(
            topic
                .append_to(
                    0,
                    sku_of(n).as_bytes(),
                    event.to_string().as_bytes(),
                    1_763_600_000_000
                )
                .unwrap(),
            n
        );
    }
    log.sync().unwrap();
}

fn segment(dir: &Path) -> PathBuf {
    dir.join("log")
        .join(INVENTORY_EVENTS)
        .join("0")
        .join(format!("{:020}.log", 0))
}

/// Where record `index` of a segment begins (walking the length fields).
fn record_start(bytes: &[u8], index: usize) -> usize {
    (0..index).fold(0, |at, _| {
        at + 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
    })
}

/// Every file and directory under `dir`: its path, and its size and SHA-256 for a file.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<(u64, String)>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), None);
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(
                    path,
                    Some((bytes.len() as u64, format!("{:x}", Sha256::digest(&bytes)))),
                );
            }
        }
    }
    out
}

/// Runs the binary to completion (at most 2 minutes).
fn run(args: &[&str]) -> Output {
    run_watched(args).0
}

/// TCP sockets in the listening state that process `pid` holds (from
/// `/proc`: its socket inodes among the listening ones of its namespace).
fn listening_sockets(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3) == Some(&"0A")
                && fields
                    .get(9)
                    .is_some_and(|inode| inodes.iter().any(|i| i == inode))
        })
        .count()
}

/// Runs the binary to completion (at most 2 minutes), watching it: answers
/// its output and whether it was ever seen holding a listening socket.
fn run_watched(args: &[&str]) -> (Output, bool) {
    let mut listened = false;
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("STOCKFLOW_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!(
                "stockflow {args:?} still runs after 2 minutes: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        listened |= listening_sockets(child.id()) > 0;
        // Sampling, not waiting for a condition: a short run may listen only briefly.
        std::thread::sleep(Duration::from_millis(2));
    }
    (child.wait_with_output().unwrap(), listened)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `on_hand` per sku of a `dump --view stock` output.
fn on_hand(output: &Output) -> BTreeMap<String, i64> {
    assert!(
        output.status.success(),
        "dump failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|row| {
            (
                row["sku"].as_str().unwrap().to_owned(),
                row["on_hand"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// What the views hold when every event but those at `missing` offsets was read.
fn expected_on_hand(missing: &[u64]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for n in (0..EVENTS).filter(|n| !missing.contains(n)) {
        *out.entry(sku_of(n)).or_insert(0) += 1;
    }
    out
}

#[test]
fn a_damaged_record_mid_partition_stops_serve_and_dump_and_is_repaired_into_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_events(&data);
    let data_arg = data.to_str().unwrap();
    assert_eq!(
        on_hand(&run(&["dump", "--view", "stock", "--data-dir", data_arg])),
        expected_on_hand(&[])
    );

    // One flipped bit in the payload of the record at offset 120, in the middle of the last (only) segment.
    let path = segment(&data);
    let mut bytes = std::fs::read(&path).unwrap();
    let byte = record_start(&bytes, 120);
    bytes[byte + 40] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let location = format!("{} at byte {byte} (offset 120)", path.display());

    // serve refuses to start, names the file and offset, and truncates nothing.
    let serve = run(&[
        "serve",
        "--data-dir",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--checkpoint-interval",
        "0",
    ]);
    let stderr = text(&serve.stderr);
    assert!(
        !serve.status.success(),
        "serve started on a damaged log: {stderr}"
    );
    assert!(
        stderr.contains(&location) && stderr.contains("checksum mismatch"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("checksum mismatch").count(),
        1,
        "the error is printed once: {stderr}"
    );
    assert!(
        stderr.contains("stockflow log check")
            && stderr.contains("stockflow log repair --quarantine"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the segment is untouched"
    );

    // dump refuses too, and writes nothing.
    let before = tree(&data);
    let dump = run(&["dump", "--view", "stock", "--data-dir", data_arg]);
    assert!(
        !dump.status.success() && text(&dump.stderr).contains(&location),
        "{}",
        text(&dump.stderr)
    );
    assert_eq!(tree(&data), before, "dump changed the data dir");

    // log check reports it (exit code 1) and writes nothing.
    let check = run(&["log", "check", "--data-dir", data_arg]);
    let report = text(&check.stdout);
    assert_eq!(
        check.status.code(),
        Some(1),
        "{report}{}",
        text(&check.stderr)
    );
    assert!(
        report.contains("inventory.events/0: DAMAGED") && report.contains(&location),
        "{report}"
    );
    assert!(
        report.contains("valid records resume at offset 121"),
        "{report}"
    );
    assert_eq!(tree(&data), before, "log check changed the data dir");

    // log repair --quarantine moves the damaged record aside, bytes kept, offsets kept.
    assert!(
        !run(&["log", "repair", "--data-dir", data_arg])
            .status
            .success(),
        "repair says how: --quarantine"
    );
    let repair = run(&["log", "repair", "--quarantine", "--data-dir", data_arg]);
    assert!(
        repair.status.success(),
        "{}{}",
        text(&repair.stdout),
        text(&repair.stderr)
    );
    assert!(
        text(&repair.stdout).contains("offset 120 is a tombstone"),
        "{}",
        text(&repair.stdout)
    );
    let quarantined: Vec<PathBuf> = tree(&data.join("quarantine"))
        .into_iter()
        .filter(|(_, file)| file.is_some())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    let next = record_start(&bytes, 121);
    assert_eq!(
        std::fs::read(&quarantined[0]).unwrap(),
        bytes[byte..next],
        "the damaged record's bytes, as they were"
    );

    let check = run(&["log", "check", "--data-dir", data_arg]);
    assert!(check.status.success(), "{}", text(&check.stdout));
    assert!(
        text(&check.stdout).contains("inventory.events/0: ok: 299 records, 1 tombstones"),
        "{}",
        text(&check.stdout)
    );
    // Every other record is read, at its own offset: the views lack only offset 120's event.
    assert_eq!(
        on_hand(&run(&["dump", "--view", "stock", "--data-dir", data_arg])),
        expected_on_hand(&[120])
    );
    let log = Log::open_read_only(&data.join("log")).unwrap();
    assert_eq!(
        log.existing_topic(INVENTORY_EVENTS)
            .unwrap()
            .unwrap()
            .end_offset(0),
        EVENTS,
        "no offset shifted"
    );
}

#[test]
fn dump_export_and_replay_read_their_source_without_writing_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_events(&data);
    // A torn tail (half a record, as a crash mid-append leaves): read-only tools leave it in place.
    let path = segment(&data);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, &[60, 0, 0, 0, 9, 9, 9]).unwrap();
    drop(file);
    let before = tree(&data);
    let data_arg = data.to_str().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Each run: it succeeds, the data dir is as it was, and no listening socket was seen.
    let unchanged = |(output, listened): (Output, bool), what: &str| -> Output {
        assert_eq!(
            tree(&data),
            before,
            "{what} changed the data dir ({})",
            text(&output.stderr)
        );
        assert!(!listened, "{what} listened on a TCP port");
        output
    };

    let dump = unchanged(
        run_watched(&["dump", "--view", "stock", "--data-dir", data_arg]),
        "dump",
    );
    assert_eq!(on_hand(&dump), expected_on_hand(&[]));
    let dump = unchanged(
        run_watched(&[
            "dump",
            "--view",
            "stock",
            "--use-checkpoint",
            "--data-dir",
            data_arg,
        ]),
        "dump --use-checkpoint",
    );
    assert_eq!(on_hand(&dump), expected_on_hand(&[]));

    let parquet = out.join("stock.parquet");
    let export = unchanged(
        run_watched(&[
            "export",
            "--view",
            "stock",
            "--out",
            parquet.to_str().unwrap(),
            "--data-dir",
            data_arg,
        ]),
        "export",
    );
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert!(
        text(&export.stderr).contains("7 rows of `stock`"),
        "{}",
        text(&export.stderr)
    );
    let events = out.join("events.arrow");
    let export = run_watched(&[
        "export",
        "--events",
        "--topic",
        INVENTORY_EVENTS,
        "--format",
        "arrow",
        "--out",
        events.to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]);
    let export = unchanged(export, "export --events");
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert!(
        text(&export.stderr).contains(&format!("{EVENTS} events of {INVENTORY_EVENTS}")),
        "{}",
        text(&export.stderr)
    );

    let target = dir.path().join("replayed");
    let replay = unchanged(
        run_watched(&[
            "replay",
            "--source-dir",
            data_arg,
            "--data-dir",
            target.to_str().unwrap(),
        ]),
        "replay",
    );
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(
        stockflow::checkpoint::newest_manifest(&stockflow::checkpoint::dir_of(&target)).is_some(),
        "the replay's result"
    );

    // A data dir that does not exist is an error, and is not created.
    let missing = dir.path().join("typo");
    let missing_arg = missing.to_str().unwrap();
    let parquet_arg = parquet.to_str().unwrap();
    for args in [
        vec!["dump", "--view", "stock", "--data-dir", missing_arg],
        vec![
            "export",
            "--view",
            "stock",
            "--out",
            parquet_arg,
            "--data-dir",
            missing_arg,
        ],
        vec![
            "export",
            "--events",
            "--topic",
            INVENTORY_EVENTS,
            "--out",
            parquet_arg,
            "--data-dir",
            missing_arg,
        ],
        vec![
            "replay",
            "--source-dir",
            missing_arg,
            "--data-dir",
            target.join("again").to_str().unwrap(),
        ],
        vec!["log", "check", "--data-dir", missing_arg],
    ] {
        let output = run(&args);
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} succeeded on a missing data dir: {stderr}"
        );
        assert!(
            stderr.contains(&format!("the data dir {missing_arg} does not exist")),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {missing_arg}");
    }
    assert!(
        !target.join("again").exists(),
        "a replay that could not read its source created its data dir"
    );
}
