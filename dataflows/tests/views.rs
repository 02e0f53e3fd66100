//! Property tests: for random event histories — late timestamps, duplicates,
//! deletions, releases before their reservation, absolute levels whose
//! versions arrive out of order — cut into random epochs and
//! run on one or two workers, the incremental views at the end of *every*
//! epoch equal a from-scratch fold of the events seen so far.
//!
//! The oracle below is deliberately slow and obvious and shares no code with
//! the dataflows. The `low_stock` alerts are checked the same way: after every
//! epoch the oracle applies the raise/clear rule to every stock row of its
//! from-scratch views, in order, and the transitions must be the dataflow's.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use stockflow_dataflows::alerts::{Alert, AlertKind, AlertState, Restored, Thresholds};
use stockflow_dataflows::model::{
    Event, EventBody, ItemRow, Money, Name, SkuKey, StockDelta, StockKey,
};
use timely::dataflow::operators::probe::Handle;

mod common;

use common::history::{history, split, steps, Step};
use common::Epoch;

/// Everything the views emitted, with times.
#[derive(Default)]
struct Output {
    items: Vec<((SkuKey, ItemRow), Epoch, isize)>,
    stock: Vec<(StockKey, Epoch, StockDelta)>,
    totals: Vec<(SkuKey, Epoch, StockDelta)>,
    alerts: Vec<(Alert, Epoch, isize)>,
}

fn run_dataflows(epochs: Vec<Vec<Event>>, workers: usize) -> Output {
    run_with_thresholds(epochs, workers, Thresholds::default())
}

fn run_with_thresholds(epochs: Vec<Vec<Event>>, workers: usize, thresholds: Thresholds) -> Output {
    run_restored(epochs, workers, thresholds, None)
}

fn run_restored(
    epochs: Vec<Vec<Event>>,
    workers: usize,
    thresholds: Thresholds,
    restored: Option<Restored<Epoch>>,
) -> Output {
    let output = Arc::new(Mutex::new(Output::default()));
    let shared = output.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let out = shared.clone();
        let probe = Handle::new();
        let thresholds = thresholds.clone();
        let restored = restored.clone();
        let mut input = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, events) =
                differential_dataflow::input::Input::new_collection::<Event, isize>(&scope);
            let events = stockflow_dataflows::dedup(
                events,
                None,
                None,
                stockflow_dataflows::dedup::DedupWindow::UNBOUNDED,
                Default::default(),
            );
            let items = stockflow_dataflows::items(events.clone());
            let stock = stockflow_dataflows::stock(events);
            let totals = stockflow_dataflows::stock_totals(stock.clone());
            let alerts =
                stockflow_dataflows::low_stock(stock.clone(), items.clone(), thresholds, restored);
            let o = out.clone();
            alerts
                .inspect(move |(d, t, r)| o.lock().unwrap().alerts.push((d.clone(), *t, *r)))
                .probe_with(&probe);
            let o = out.clone();
            items
                .inspect(move |(d, t, r)| o.lock().unwrap().items.push((d.clone(), *t, *r)))
                .probe_with(&probe);
            let o = out.clone();
            stock
                .inspect(move |(d, t, r)| o.lock().unwrap().stock.push((d.clone(), *t, *r)))
                .probe_with(&probe);
            let o = out.clone();
            totals
                .inspect(move |(d, t, r)| o.lock().unwrap().totals.push((d.clone(), *t, *r)))
                .probe_with(&probe);
            input
        });
        common::feed(worker, &mut input, &probe, &epochs);
    })
    .expect("timely runs");
    Arc::try_unwrap(output)
        .ok()
        .expect("workers are done")
        .into_inner()
        .unwrap()
}

// ---------- the oracle: a sequential fold ----------

fn oracle_dedup(events: &[Event]) -> Vec<Event> {
    let mut first: BTreeMap<(Name, Name), Event> = BTreeMap::new();
    for event in events {
        let key = (event.tenant.clone(), event.id.clone());
        match first.get(&key) {
            Some(kept) if kept <= event => {}
            _ => {
                first.insert(key, event.clone());
            }
        }
    }
    first.into_values().collect()
}

fn oracle_items(events: &[Event]) -> BTreeMap<SkuKey, ItemRow> {
    let mut by_sku: BTreeMap<SkuKey, Vec<&Event>> = BTreeMap::new();
    for event in events {
        if let EventBody::ItemCreated { sku, .. }
        | EventBody::ItemUpdated { sku, .. }
        | EventBody::ItemDeleted { sku } = &event.body
        {
            by_sku
                .entry(SkuKey {
                    tenant: event.tenant.clone(),
                    sku: sku.clone(),
                })
                .or_default()
                .push(event);
        }
    }
    let mut rows = BTreeMap::new();
    for (key, mut history) in by_sku {
        history.sort_by(|a, b| (a.ts, a.seq, &a.body).cmp(&(b.ts, b.seq, &b.body)));
        let mut row: Option<ItemRow> = None;
        for event in history {
            match &event.body {
                EventBody::ItemCreated {
                    name,
                    price,
                    category,
                    reorder_point,
                    target_level,
                    ..
                } => {
                    row = Some(ItemRow {
                        name: name.clone(),
                        price: *price,
                        category: category.clone(),
                        reorder_point: *reorder_point,
                        target_level: *target_level,
                        active: true,
                        updated_at: event.ts,
                    })
                }
                EventBody::ItemUpdated {
                    name,
                    price,
                    category,
                    reorder_point,
                    target_level,
                    ..
                } => {
                    if let Some(r) = &mut row {
                        r.name = name.clone().unwrap_or(r.name.clone());
                        r.price = price.unwrap_or(r.price);
                        r.category = category.clone().unwrap_or(r.category.clone());
                        r.reorder_point = reorder_point.or(r.reorder_point);
                        r.target_level = target_level.or(r.target_level);
                        r.updated_at = event.ts;
                    }
                }
                EventBody::ItemDeleted { .. } => {
                    if let Some(r) = &mut row {
                        r.active = false;
                        r.updated_at = event.ts;
                    }
                }
                _ => unreachable!(),
            }
        }
        if let Some(row) = row {
            rows.insert(key, row);
        }
    }
    rows
}

/// (on_hand, reserved, updated_at) per key.
/// (on_hand, reserved, changes, updated_at) per key; every touch is one change.
fn oracle_stock(events: &[Event]) -> BTreeMap<StockKey, (i64, i64, i64, i64)> {
    let mut rows: BTreeMap<StockKey, (i64, i64, i64, i64)> = BTreeMap::new();
    let mut touch = |key: StockKey, on_hand: i64, reserved: i64, ts: i64| {
        let row = rows.entry(key).or_insert((0, 0, 0, i64::MIN));
        row.0 += on_hand;
        row.1 += reserved;
        row.2 += 1;
        row.3 = row.3.max(ts);
    };
    // The earliest reservation and the earliest closing of each reservation id.
    let mut reservations: BTreeMap<(Name, Name), &Event> = BTreeMap::new();
    let mut closings: BTreeMap<(Name, Name), &Event> = BTreeMap::new();
    for event in events {
        match &event.body {
            EventBody::StockAdjusted {
                sku, location, qty, ..
            } => touch(
                StockKey {
                    tenant: event.tenant.clone(),
                    sku: sku.clone(),
                    location: location.clone(),
                },
                *qty,
                0,
                event.ts,
            ),
            EventBody::ItemCreated { sku, initial, .. } => {
                for (location, qty) in initial {
                    touch(
                        StockKey {
                            tenant: event.tenant.clone(),
                            sku: sku.clone(),
                            location: location.clone(),
                        },
                        *qty,
                        0,
                        event.ts,
                    )
                }
            }
            EventBody::StockReserved { reservation_id, .. } => {
                let slot = reservations
                    .entry((event.tenant.clone(), reservation_id.clone()))
                    .or_insert(event);
                if (event.seq, event.ts) < (slot.seq, slot.ts) {
                    *slot = event;
                }
            }
            EventBody::StockReleased { reservation_id }
            | EventBody::StockCommitted { reservation_id } => {
                let slot = closings
                    .entry((event.tenant.clone(), reservation_id.clone()))
                    .or_insert(event);
                if (event.seq, event.ts) < (slot.seq, slot.ts) {
                    *slot = event;
                }
            }
            _ => {}
        }
    }
    // Absolute levels: the highest version (then the earliest position) per key;
    // `updated_at` from every level of the key.
    let mut levels: BTreeMap<StockKey, (u64, std::cmp::Reverse<u64>, i64, i64, i64)> =
        BTreeMap::new();
    for event in events {
        if let EventBody::StockLevel {
            sku,
            location,
            on_hand,
            reserved,
            version,
        } = &event.body
        {
            let key = StockKey {
                tenant: event.tenant.clone(),
                sku: sku.clone(),
                location: location.clone(),
            };
            let candidate = (
                *version,
                std::cmp::Reverse(event.seq),
                *on_hand,
                *reserved,
                event.ts,
            );
            let slot = levels.entry(key).or_insert(candidate);
            let newest_ts = slot.4.max(event.ts);
            if (candidate.0, candidate.1) > (slot.0, slot.1) {
                *slot = candidate;
            }
            slot.4 = newest_ts;
        }
    }
    for (key, (_, _, on_hand, reserved, ts)) in levels {
        touch(key, on_hand, reserved, ts);
    }
    for (id, reservation) in &reservations {
        let EventBody::StockReserved {
            sku, location, qty, ..
        } = &reservation.body
        else {
            unreachable!()
        };
        let key = StockKey {
            tenant: reservation.tenant.clone(),
            sku: sku.clone(),
            location: location.clone(),
        };
        touch(key.clone(), 0, *qty, reservation.ts);
        if let Some(closing) = closings.get(id) {
            let on_hand = if matches!(closing.body, EventBody::StockCommitted { .. }) {
                -qty
            } else {
                0
            };
            touch(key, on_hand, -qty, closing.ts);
        }
    }
    rows
}

fn accumulate<K: Ord + Clone>(
    updates: &[(K, Epoch, StockDelta)],
    upto: Epoch,
) -> BTreeMap<K, (i64, i64, i64, i64)> {
    let mut rows: BTreeMap<K, StockDelta> = BTreeMap::new();
    for (key, _time, delta) in updates.iter().filter(|u| u.1 <= upto) {
        differential_dataflow::difference::Semigroup::plus_equals(
            rows.entry(key.clone()).or_insert(StockDelta {
                updated_at: i64::MIN,
                ..Default::default()
            }),
            delta,
        );
    }
    rows.into_iter()
        .map(|(k, d)| (k, (d.on_hand, d.reserved, d.changes, d.updated_at)))
        .collect()
}

/// The oracle's alert state per `(key, kind)`: (active, transitions, threshold, target).
type AlertStates = BTreeMap<(StockKey, AlertKind), (bool, u64, i64, i64)>;

/// Applies the alert rule to every stock row after an epoch; returns the transitions.
fn oracle_alerts(
    states: &mut AlertStates,
    stock: &BTreeMap<StockKey, (i64, i64, i64, i64)>,
    items: &BTreeMap<SkuKey, ItemRow>,
    thresholds: &Thresholds,
) -> Vec<Alert> {
    let mut transitions = Vec::new();
    for (key, (on_hand, reserved, _changes, ts)) in stock {
        let available = on_hand - reserved;
        let item = items.get(&SkuKey {
            tenant: key.tenant.clone(),
            sku: key.sku.clone(),
        });
        // (threshold, target) or none for a deleted item.
        let rule = match item {
            Some(row) if !row.active => None,
            _ => {
                let threshold = item
                    .and_then(|r| r.reorder_point)
                    .or(thresholds.tenants.get(&key.tenant).copied())
                    .unwrap_or(thresholds.default);
                Some((
                    threshold,
                    item.and_then(|r| r.target_level).unwrap_or(2 * threshold),
                ))
            }
        };
        for kind in [AlertKind::LowStock, AlertKind::OutOfStock] {
            let state = states
                .entry((key.clone(), kind))
                .or_insert((false, 0, 0, 0));
            let limit = |threshold: i64| {
                if kind == AlertKind::LowStock {
                    threshold
                } else {
                    0
                }
            };
            let raise =
                !state.0 && rule.is_some_and(|(threshold, _)| available <= limit(threshold));
            let clear = state.0
                && rule.is_none_or(|(threshold, _)| {
                    available > limit(threshold) + thresholds.hysteresis
                });
            if let Some((threshold, target)) = rule {
                if state.0 || raise {
                    (state.2, state.3) = (threshold, target);
                }
            }
            if raise || clear {
                state.0 = raise;
                state.1 += 1;
                transitions.push(Alert {
                    key: key.clone(),
                    kind,
                    raised: raise,
                    transition: state.1,
                    available,
                    threshold: limit(state.2),
                    target_level: state.3,
                    suggested_reorder_qty: if raise {
                        (state.3 - available).max(0)
                    } else {
                        0
                    },
                    ts: *ts,
                });
            }
        }
    }
    transitions
}

fn check(steps: Vec<Step>, cuts: Vec<bool>, workers: usize) -> Result<(), TestCaseError> {
    check_with(steps, cuts, workers, Thresholds::default())
}

fn check_with(
    steps: Vec<Step>,
    cuts: Vec<bool>,
    workers: usize,
    thresholds: Thresholds,
) -> Result<(), TestCaseError> {
    let events = history(&steps);
    let epochs = split(events, &cuts);
    let output = run_with_thresholds(epochs.clone(), workers, thresholds.clone());
    let mut seen: Vec<Event> = Vec::new();
    let mut alert_states = AlertStates::new();
    for (epoch, batch) in epochs.iter().enumerate() {
        seen.extend(batch.iter().cloned());
        let epoch = epoch as Epoch;
        let deduped = oracle_dedup(&seen);

        let mut alerts: Vec<Alert> = output
            .alerts
            .iter()
            .filter(|u| u.1 == epoch)
            .map(|u| u.0.clone())
            .collect();
        prop_assert!(
            output.alerts.iter().all(|u| u.2 == 1),
            "alert transitions are insertions"
        );
        alerts.sort();
        let mut expected = oracle_alerts(
            &mut alert_states,
            &oracle_stock(&deduped),
            &oracle_items(&deduped),
            &thresholds,
        );
        expected.sort();
        prop_assert_eq!(alerts, expected, "alert transitions at epoch {}", epoch);

        let mut items: HashMap<(SkuKey, ItemRow), isize> = HashMap::new();
        for (row, _, diff) in output.items.iter().filter(|u| u.1 <= epoch) {
            *items.entry(row.clone()).or_default() += diff;
        }
        items.retain(|_, count| *count != 0);
        prop_assert!(
            items.values().all(|c| *c == 1),
            "item rows with multiplicity other than 1 at epoch {epoch}"
        );
        let items: BTreeMap<SkuKey, ItemRow> = items.into_keys().collect();
        prop_assert_eq!(items, oracle_items(&deduped), "items at epoch {}", epoch);

        let stock = accumulate(&output.stock, epoch);
        let expected = oracle_stock(&deduped);
        prop_assert_eq!(&stock, &expected, "stock at epoch {}", epoch);

        let mut expected_totals: BTreeMap<SkuKey, (i64, i64, i64, i64)> = BTreeMap::new();
        for (key, (on_hand, reserved, changes, ts)) in &expected {
            let total = expected_totals
                .entry(SkuKey {
                    tenant: key.tenant.clone(),
                    sku: key.sku.clone(),
                })
                .or_insert((0, 0, 0, i64::MIN));
            total.0 += on_hand;
            total.1 += reserved;
            total.2 += changes;
            total.3 = total.3.max(*ts);
        }
        prop_assert_eq!(
            accumulate(&output.totals, epoch),
            expected_totals,
            "stock_totals at epoch {}",
            epoch
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn views_match_a_sequential_fold_on_one_worker(steps in steps(), cuts in prop::collection::vec(prop::bool::weighted(0.2), 80)) {
        check(steps, cuts, 1)?;
    }

    #[test]
    fn views_match_a_sequential_fold_on_two_workers(steps in steps(), cuts in prop::collection::vec(prop::bool::weighted(0.2), 80)) {
        check(steps, cuts, 2)?;
    }

    #[test]
    fn alerts_match_a_sequential_rule_with_hysteresis(
        steps in steps(),
        cuts in prop::collection::vec(prop::bool::weighted(0.3), 80),
        default in 0i64..6,
        acme in prop::option::of(0i64..6),
        hysteresis in 0i64..4,
        workers in 1usize..3,
    ) {
        let thresholds = Thresholds { default, tenants: acme.map(|t| (Name::from("acme"), t)).into_iter().collect(), hysteresis };
        check_with(steps, cuts, workers, thresholds)?;
    }
}

/// Resuming from a checkpoint: the events of epochs `0..=at` fed again (as
/// one epoch when `merge`, else in their own epochs) with the alert states
/// of the full run at that point must give the full run's transitions for
/// every later epoch, and none while restoring.
fn check_resume(
    steps: Vec<Step>,
    cuts: Vec<bool>,
    at: usize,
    merge: bool,
    workers: usize,
    thresholds: Thresholds,
) -> Result<(), TestCaseError> {
    let epochs = split(history(&steps), &cuts);
    let at = at % epochs.len();
    let full = run_with_thresholds(epochs.clone(), workers, thresholds.clone());
    // The latest transition of each alert up to `at`: what a checkpoint saves.
    let mut latest: BTreeMap<(StockKey, AlertKind), Alert> = BTreeMap::new();
    for (alert, _, _) in full.alerts.iter().filter(|u| u.1 <= at as Epoch) {
        let slot = latest
            .entry((alert.key.clone(), alert.kind))
            .or_insert_with(|| alert.clone());
        if alert.transition > slot.transition {
            *slot = alert.clone();
        }
    }
    let mut states: HashMap<StockKey, [AlertState; 2]> = HashMap::new();
    for alert in latest.values() {
        states.entry(alert.key.clone()).or_default()[alert.kind as usize] =
            AlertState::after(alert);
    }
    let (resumed, last_restoring) = if merge {
        let mut resumed = vec![epochs[..=at].concat()];
        resumed.extend(epochs[at + 1..].iter().cloned());
        (resumed, 0)
    } else {
        (epochs.clone(), at)
    };
    let shift = at - last_restoring;
    let restored = Restored {
        epoch: last_restoring as Epoch,
        states: Arc::new(states),
    };
    let output = run_restored(resumed, workers, thresholds, Some(restored));
    prop_assert!(
        output.alerts.iter().all(|u| u.1 > last_restoring as Epoch),
        "no transition while restoring"
    );
    for epoch in at + 1..epochs.len() {
        let mut expected: Vec<Alert> = full
            .alerts
            .iter()
            .filter(|u| u.1 == epoch as Epoch)
            .map(|u| u.0.clone())
            .collect();
        let mut got: Vec<Alert> = output
            .alerts
            .iter()
            .filter(|u| u.1 == (epoch - shift) as Epoch)
            .map(|u| u.0.clone())
            .collect();
        expected.sort();
        got.sort();
        prop_assert_eq!(
            got,
            expected,
            "transitions at epoch {} after resuming at {}",
            epoch,
            at
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn alerts_resumed_from_a_checkpoint_continue_as_the_full_run(
        steps in steps(),
        cuts in prop::collection::vec(prop::bool::weighted(0.3), 80),
        at in 0usize..40,
        merge in any::<bool>(),
        hysteresis in 0i64..4,
        workers in 1usize..3,
    ) {
        check_resume(steps, cuts, at, merge, workers, Thresholds { hysteresis, ..Thresholds::default() })?;
    }
}

/// A hand-written history whose answer is known, so a broken oracle cannot hide a broken view.
#[test]
fn known_history() {
    let event = |id: &str, ts: i64, seq: u64, body: EventBody| Event {
        tenant: Name::from("default"),
        id: Name::from(id),
        ts,
        seq,
        body,
    };
    let sku = || Name::from("A");
    let loc = || Name::from("m");
    let events = [
        event(
            "1",
            10,
            0,
            EventBody::ItemCreated {
                sku: sku(),
                name: "Widget".into(),
                price: Money::from_cents(250),
                category: Name::from("tools"),
                reorder_point: Some(3),
                target_level: None,
                initial: vec![(loc(), 10)],
            },
        ),
        event(
            "2",
            11,
            1,
            EventBody::StockAdjusted {
                sku: sku(),
                location: loc(),
                qty: -4,
                reason: Name::from("sale"),
            },
        ),
        event(
            "2",
            11,
            2,
            EventBody::StockAdjusted {
                sku: sku(),
                location: loc(),
                qty: -4,
                reason: Name::from("sale"),
            },
        ),
        // Release arrives before the reservation it names.
        event(
            "3",
            12,
            3,
            EventBody::StockCommitted {
                reservation_id: Name::from("r"),
            },
        ),
        event(
            "4",
            9,
            4,
            EventBody::StockReserved {
                sku: sku(),
                location: loc(),
                qty: 2,
                reservation_id: Name::from("r"),
                order_id: None,
            },
        ),
        event(
            "5",
            13,
            5,
            EventBody::StockReserved {
                sku: sku(),
                location: Name::from("n"),
                qty: 1,
                reservation_id: Name::from("s"),
                order_id: None,
            },
        ),
    ];
    let output = run_dataflows(vec![events[..4].to_vec(), events[4..].to_vec()], 2);
    let stock = accumulate(&output.stock, 1);
    // Changes: created, adjusted once (the copy of e2 is one event), reserved, committed.
    assert_eq!(
        stock[&StockKey {
            tenant: Name::from("default"),
            sku: sku(),
            location: loc()
        }],
        (10 - 4 - 2, 0, 4, 12)
    );
    assert_eq!(
        stock[&StockKey {
            tenant: Name::from("default"),
            sku: sku(),
            location: Name::from("n")
        }],
        (0, 1, 1, 13)
    );
    let totals = accumulate(&output.totals, 1);
    assert_eq!(
        totals[&SkuKey {
            tenant: Name::from("default"),
            sku: sku()
        }],
        (4, 1, 5, 13)
    );
    let before_reservation = accumulate(&output.stock, 0);
    assert_eq!(
        before_reservation[&StockKey {
            tenant: Name::from("default"),
            sku: sku(),
            location: loc()
        }],
        (6, 0, 2, 11)
    );
}
