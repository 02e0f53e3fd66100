//! The de-duplication window: a copy of a remembered id is dropped, a copy
//! of a forgotten one (by count or by age) counts again; the decider's
//! outcomes are not counted twice when they come back from the log.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use stockflow_dataflows::dedup::{DedupStats, DedupWindow};
use stockflow_dataflows::model::{Event, EventBody, Name};
use timely::dataflow::operators::probe::Handle;

type Epoch = u64;

fn adjusted(id: &str, seq: u64) -> Event {
    Event {
        tenant: Name::from("t"),
        id: Name::from(id),
        seq,
        ts: 0,
        body: EventBody::StockAdjusted {
            sku: Name::from("sku"),
            location: Name::from("loc"),
            qty: 1,
            reason: Name::from("count"),
        },
    }
}

/// One epoch of input: the clock reading, the events, the outcomes.
struct Step {
    clock: Option<i64>,
    events: Vec<Event>,
    outcomes: Vec<Event>,
}

/// Runs `dedup` then `without_echoes` over `steps` on `workers` workers;
/// the ids that come out, per epoch, and the window's statistics.
fn run(steps: Vec<Step>, window: DedupWindow, workers: usize) -> (Vec<Vec<String>>, (i64, u64)) {
    let output = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(DedupStats::default());
    let (shared, shared_stats) = (output.clone(), stats.clone());
    let epochs = steps.len();
    let steps = Arc::new(steps);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let out = shared.clone();
        let stats = shared_stats.clone();
        let probe = Handle::new();
        let (mut events_in, mut clock_in, mut outcomes_in) =
            worker.dataflow::<Epoch, _, _>(|scope| {
                use differential_dataflow::input::Input;
                let (events_in, events) = scope.new_collection::<Event, isize>();
                let (clock_in, clock) = scope.new_collection::<i64, isize>();
                let (outcomes_in, outcomes) = scope.new_collection::<Event, isize>();
                let deduped = stockflow_dataflows::dedup(events, Some(clock), None, window, stats);
                stockflow_dataflows::dedup::without_echoes(deduped, outcomes, window.ids)
                    .inspect(move |(event, time, diff)| {
                        assert_eq!(*diff, 1);
                        out.lock().unwrap().push((*time, event.id.to_string()));
                    })
                    .probe_with(&probe);
                (events_in, clock_in, outcomes_in)
            });
        for (epoch, step) in steps.iter().enumerate() {
            let epoch = epoch as Epoch;
            for (i, event) in step.events.iter().enumerate() {
                if i % peers == index {
                    events_in.insert(event.clone());
                }
            }
            for (i, event) in step.outcomes.iter().enumerate() {
                if i % peers == index {
                    outcomes_in.insert(event.clone());
                }
            }
            if let (Some(reading), 0) = (step.clock, index) {
                clock_in.insert(reading);
            }
            events_in.advance_to(epoch + 1);
            clock_in.advance_to(epoch + 1);
            outcomes_in.advance_to(epoch + 1);
            events_in.flush();
            clock_in.flush();
            outcomes_in.flush();
            while probe.less_than(events_in.time()) {
                worker.step();
            }
        }
    })
    .expect("timely runs");
    let mut per_epoch = vec![Vec::new(); epochs];
    for (time, id) in Arc::try_unwrap(output).ok().unwrap().into_inner().unwrap() {
        per_epoch[time as usize].push(id);
    }
    per_epoch.iter_mut().for_each(|ids| ids.sort());
    let stats = (
        stats.remembered.load(Ordering::Relaxed),
        stats.forgotten.load(Ordering::Relaxed),
    );
    (per_epoch, stats)
}

fn step(clock: Option<i64>, ids: &[String], seq: u64) -> Step {
    Step {
        clock,
        events: ids
            .iter()
            .enumerate()
            .map(|(i, id)| adjusted(id, seq + i as u64))
            .collect(),
        outcomes: Vec::new(),
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("e{n:05}")).collect()
}

#[test]
fn a_copy_counts_again_once_enough_newer_ids_were_remembered() {
    for workers in [1, 2] {
        let window = DedupWindow {
            ids: 1_000,
            age_ms: None,
        };
        let steps = vec![
            step(None, &ids(0..1_000), 0),
            step(None, &ids(1_000..2_000), 1_000),
            step(None, &ids(2_000..2_300), 2_000),
            // e00001 was forgotten long ago; e02299 is among the last 300.
            step(None, &["e00001".to_owned(), "e02299".to_owned()], 3_000),
        ];
        let (out, (remembered, forgotten)) = run(steps, window, workers);
        assert_eq!(out[3], vec!["e00001"], "workers: {workers}");
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), 2_301);
        // Each worker keeps its share (ids / workers) of the window.
        assert_eq!(remembered, 1_000);
        assert_eq!(remembered as u64 + forgotten, 2_301);
    }
}

#[test]
fn a_copy_counts_again_once_the_clock_moved_past_the_window() {
    let window = DedupWindow {
        ids: usize::MAX,
        age_ms: Some(1_000),
    };
    let a = vec!["a".to_owned()];
    let steps = vec![
        step(Some(10_000), &a, 0),
        // Within the window: dropped.
        step(Some(10_900), &a, 1),
        // An epoch with no events moves the clock too.
        step(Some(11_500), &[], 2),
        // 1,500 ms after "a" was read: forgotten, counts again, remembered anew.
        step(Some(11_600), &a, 3),
        step(Some(11_700), &a, 4),
    ];
    let (out, (remembered, forgotten)) = run(steps, window, 1);
    assert_eq!(
        out,
        vec![vec!["a"], vec![], vec![], vec!["a"], vec![]]
            .into_iter()
            .map(|v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert_eq!((remembered, forgotten), (1, 1));
}

#[test]
fn copies_within_an_epoch_keep_the_first_position() {
    let mut late = adjusted("x", 9);
    late.ts = 9;
    let mut early = adjusted("x", 2);
    early.ts = 2;
    let steps = vec![Step {
        clock: None,
        events: vec![late, early],
        outcomes: Vec::new(),
    }];
    let (out, _) = run(steps, DedupWindow::UNBOUNDED, 2);
    assert_eq!(out, vec![vec!["x".to_owned()]]);
}

#[test]
fn an_outcome_read_back_from_the_log_is_dropped_once() {
    let outcome = adjusted("cmd:c1:0", 0);
    let steps = vec![
        Step {
            clock: None,
            events: Vec::new(),
            outcomes: vec![outcome.clone()],
        },
        // Its copy from the log, and an unrelated event.
        step(None, &["cmd:c1:0".to_owned(), "other".to_owned()], 10),
    ];
    // The outcomes stream is not part of the output: only the log's events are.
    let (out, _) = run(steps, DedupWindow::UNBOUNDED, 2);
    assert_eq!(out, vec![vec![], vec!["other".to_owned()]]);
}
