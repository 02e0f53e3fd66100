//! Property test of checkpoint compaction: for a random history cut at a
//! random point, restoring the compacted prefix (its events, the ids it
//! folded, its KPI cells) and reading on gives the views, the KPI cells and
//! the decider's state of the uninterrupted run, on one or two workers.

use differential_dataflow::difference::Semigroup;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use stockflow_dataflows::compact::{compact, Compacted, Rules};
use stockflow_dataflows::decider::Decider;
use stockflow_dataflows::dedup::DedupWindow;
use stockflow_dataflows::kpis::{Cell, KpiKey};
use stockflow_dataflows::model::{Event, ItemRow, Name, SkuKey, StockDelta, StockKey};
use timely::dataflow::operators::probe::Handle;

mod common;

use common::history::{history, split, steps};
use common::Epoch;

/// The final views, accumulated.
#[derive(Debug, Default, PartialEq)]
struct Views {
    stock: BTreeMap<StockKey, StockDelta>,
    totals: BTreeMap<SkuKey, StockDelta>,
    items: BTreeMap<(SkuKey, ItemRow), isize>,
    cells: BTreeMap<KpiKey, Cell>,
    /// The de-duplicated events, as the decider is given them.
    deduped: Vec<Event>,
}

fn run(epochs: Vec<Vec<Event>>, seeds: Vec<u128>, workers: usize) -> Views {
    let output = Arc::new(Mutex::new(Views::default()));
    let shared = output.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let out = shared.clone();
        let probe = Handle::new();
        let index = worker.index();
        let (mut input, mut seen_in) = worker.dataflow::<Epoch, _, _>(|scope| {
            use differential_dataflow::input::Input;
            let (input, events) = scope.new_collection::<Event, isize>();
            let (seen_in, seen) = scope.new_collection::<u128, isize>();
            let events = stockflow_dataflows::dedup(
                events,
                None,
                Some(seen),
                DedupWindow::UNBOUNDED,
                Default::default(),
            );
            let items = stockflow_dataflows::items(events.clone());
            let stock = stockflow_dataflows::stock(events.clone());
            let totals = stockflow_dataflows::stock_totals(stock.clone());
            let kpis = stockflow_dataflows::kpis(events.clone(), Arc::from(Vec::new()));
            let o = out.clone();
            stock
                .inspect(move |(key, _, delta)| {
                    o.lock()
                        .unwrap()
                        .stock
                        .entry(key.clone())
                        .and_modify(|d| d.plus_equals(delta))
                        .or_insert(*delta);
                })
                .probe_with(&probe);
            let o = out.clone();
            totals
                .inspect(move |(key, _, delta)| {
                    o.lock()
                        .unwrap()
                        .totals
                        .entry(key.clone())
                        .and_modify(|d| d.plus_equals(delta))
                        .or_insert(*delta);
                })
                .probe_with(&probe);
            let o = out.clone();
            items
                .inspect(move |(row, _, diff)| {
                    *o.lock().unwrap().items.entry(row.clone()).or_default() += diff;
                })
                .probe_with(&probe);
            let o = out.clone();
            kpis.cells
                .inspect(move |(key, _, cell)| {
                    o.lock()
                        .unwrap()
                        .cells
                        .entry(key.clone())
                        .or_default()
                        .plus_equals(cell);
                })
                .probe_with(&probe);
            let o = out.clone();
            events
                .inspect(move |(event, _, _)| o.lock().unwrap().deduped.push(event.clone()))
                .probe_with(&probe);
            (input, seen_in)
        });
        if index == 0 {
            for digest in &seeds {
                seen_in.insert(*digest);
            }
        }
        // Seeds come first, at time 0, and only then.
        seen_in.close();
        common::feed(worker, &mut input, &probe, &epochs);
    })
    .expect("timely runs");
    let Ok(views) = Arc::try_unwrap(output) else {
        panic!("workers are done")
    };
    let mut views = views.into_inner().unwrap();
    views.items.retain(|_, diff| *diff != 0);
    views
}

/// The decider's view of every sku after `events` (sorted as an epoch is).
fn decider_state(events: &[Event]) -> BTreeMap<(Name, Name), String> {
    let mut events = events.to_vec();
    // Within an epoch the decider applies in position order; one epoch here.
    events.sort_by(|a, b| (a.seq, a).cmp(&(b.seq, b)));
    let mut decider = Decider::default();
    let mut skus = BTreeSet::new();
    for event in &events {
        decider.apply(event);
        if let Some(sku) = event.body.sku() {
            skus.insert((event.tenant.clone(), sku.clone()));
        }
    }
    skus.into_iter()
        .filter_map(|(tenant, sku)| {
            let state = decider.sku(&tenant, &sku)?;
            let summary = format!(
                "version {} active {:?} locations {:?} leveled {:?}",
                state.version, state.active, state.locations, state.leveled
            );
            Some(((tenant, sku), summary))
        })
        .collect()
}

fn rules() -> Rules {
    Rules {
        specs: Vec::new(),
        kpi_retention_ms: i64::MAX / 4,
        ids: usize::MAX,
    }
}

fn check(
    steps: Vec<common::history::Step>,
    at: usize,
    again: bool,
    cuts: Vec<bool>,
    workers: usize,
) -> Result<(), TestCaseError> {
    let events = history(&steps);
    let at = at % (events.len() + 1);
    let (prefix, suffix) = events.split_at(at);
    let whole = run(split(events.clone(), &cuts), Vec::new(), workers);

    // The prefix compacted once, or in two steps (a compaction of a compaction).
    let compacted = if again {
        let half = prefix.len() / 2;
        let first = compact(Compacted::default(), prefix[..half].to_vec(), &rules());
        compact(first, prefix[half..].to_vec(), &rules())
    } else {
        compact(Compacted::default(), prefix.to_vec(), &rules())
    };
    let mut epochs = vec![compacted.events.clone()];
    epochs.extend(split(suffix.to_vec(), &cuts));
    let mut restored = run(epochs, compacted.ids.clone(), workers);
    for (key, cell) in &compacted.cells {
        restored
            .cells
            .entry(key.clone())
            .or_default()
            .plus_equals(cell);
    }
    whole_cells_nonzero(&mut restored);
    let mut whole = whole;
    whole_cells_nonzero(&mut whole);

    prop_assert_eq!(&restored.stock, &whole.stock);
    prop_assert_eq!(&restored.totals, &whole.totals);
    prop_assert_eq!(&restored.items, &whole.items);
    prop_assert_eq!(&restored.cells, &whole.cells);
    prop_assert_eq!(
        decider_state(&restored.deduped),
        decider_state(&whole.deduped)
    );
    // Fewer or as many events to restore as were read.
    prop_assert!(compacted.events.len() <= prefix.len());
    Ok(())
}

fn whole_cells_nonzero(views: &mut Views) {
    use differential_dataflow::difference::IsZero;
    views.cells.retain(|_, cell| !cell.is_zero());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn restoring_a_compacted_prefix_continues_as_the_uninterrupted_run(
        steps in steps(),
        at in 0usize..100,
        again in any::<bool>(),
        cuts in prop::collection::vec(prop::bool::weighted(0.2), 80),
        workers in 1usize..3,
    ) {
        check(steps, at, again, cuts, workers)?;
    }
}

#[test]
fn a_history_of_adjustments_compacts_to_one_state_per_key() {
    let steps: Vec<common::history::Step> = (0..60)
        .map(|n| (3u8, 0usize, n % 3, n % 2, 0usize, 2i64, n as i64))
        .collect();
    let events = history(&steps);
    let compacted = compact(Compacted::default(), events.clone(), &rules());
    // 3 skus × 2 locations (n % 3, n % 2: all six pairs).
    assert_eq!(compacted.events.len(), 6);
    assert_eq!(compacted.ids.len(), 60);
    check(steps, 60, false, vec![false; 80], 1).unwrap();
}
