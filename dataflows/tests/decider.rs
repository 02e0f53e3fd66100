//! Property test of the decider: for random command histories — duplicate
//! command ids, reservations beyond the stock, releases of unknown or closed
//! reservations, stale `expected_version`s — cut into random epochs and run on
//! one or two workers, the outcomes equal those of a sequential reference
//! model that decides the commands one by one in log order.
//!
//! The model shares no code with the decider.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use stockflow_dataflows::model::{Command, Event, EventBody, Money, Name, OrderStatus};
use timely::dataflow::operators::probe::Handle;

type Epoch = u64;

/// Runs the decider: `seed` events in epoch 0, then the command epochs.
fn run(seed: Vec<Event>, epochs: Vec<Vec<Command>>, workers: usize) -> Vec<(Event, Epoch)> {
    let output = Arc::new(Mutex::new(Vec::new()));
    let shared = output.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let out = shared.clone();
        let probe = Handle::new();
        let (mut events_in, mut commands_in) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (events_in, events) =
                differential_dataflow::input::Input::new_collection::<Event, isize>(&scope);
            let (commands_in, commands) =
                differential_dataflow::input::Input::new_collection::<Command, isize>(&scope);
            stockflow_dataflows::decide(events, commands)
                .inspect(move |(event, time, diff)| {
                    assert_eq!(*diff, 1);
                    out.lock().unwrap().push((event.clone(), *time));
                })
                .probe_with(&probe);
            (events_in, commands_in)
        });
        for (i, event) in seed.iter().enumerate() {
            if i % peers == index {
                events_in.insert(event.clone());
            }
        }
        for (epoch, commands) in epochs.iter().enumerate() {
            for (i, command) in commands.iter().enumerate() {
                if i % peers == index {
                    commands_in.insert(command.clone());
                }
            }
            events_in.advance_to(epoch as Epoch + 1);
            commands_in.advance_to(epoch as Epoch + 1);
            events_in.flush();
            commands_in.flush();
            while probe.less_than(commands_in.time()) {
                worker.step();
            }
        }
    })
    .expect("timely runs");
    let mut outcomes = Arc::try_unwrap(output).ok().unwrap().into_inner().unwrap();
    outcomes.sort();
    outcomes
}

// ---------- the reference model ----------

#[derive(Default)]
struct Sku {
    version: u64,
    active: bool,
    stock: BTreeMap<Name, (i64, i64)>,
    reservations: BTreeMap<Name, (Name, i64, bool)>,
}

/// Decides `commands` one by one; returns `(outcome id, accepted?, reason)` per decided command.
fn model(seed: &[Event], commands: &[Command]) -> BTreeSet<(Name, Name, bool)> {
    let mut skus: BTreeMap<(Name, Name), Sku> = BTreeMap::new();
    for event in seed {
        if let EventBody::ItemCreated { sku, initial, .. } = &event.body {
            let s = skus.entry((event.tenant.clone(), sku.clone())).or_default();
            s.active = true;
            s.version += initial.len() as u64;
            for (location, qty) in initial {
                s.stock.entry(location.clone()).or_default().0 += qty;
            }
        }
    }
    let mut decided: BTreeSet<(Name, Name)> = BTreeSet::new();
    let mut outcomes = BTreeSet::new();
    for command in commands {
        if !decided.insert((command.tenant.clone(), command.id.clone())) {
            continue;
        }
        let s = skus
            .entry((command.tenant.clone(), command.sku.clone()))
            .or_default();
        let version_ok = command.expected_version.is_none_or(|v| v == s.version);
        let accepted = version_ok
            && match &command.intent {
                EventBody::StockAdjusted { location, qty, .. } => {
                    let (on_hand, reserved) = s.stock.get(location).copied().unwrap_or_default();
                    let ok = on_hand + qty >= 0 && on_hand + qty >= reserved;
                    if ok {
                        s.stock.entry(location.clone()).or_default().0 += qty;
                    }
                    ok
                }
                EventBody::StockReserved {
                    location,
                    qty,
                    reservation_id,
                    ..
                } => {
                    let (on_hand, reserved) = s.stock.get(location).copied().unwrap_or_default();
                    let ok =
                        !s.reservations.contains_key(reservation_id) && on_hand - reserved >= *qty;
                    // (Ids are drawn per sku, so "held by another sku" never happens here.)
                    if ok {
                        s.stock.entry(location.clone()).or_default().1 += qty;
                        s.reservations
                            .insert(reservation_id.clone(), (location.clone(), *qty, true));
                    }
                    ok
                }
                EventBody::StockReleased { reservation_id }
                | EventBody::StockCommitted { reservation_id } => {
                    let commit = matches!(command.intent, EventBody::StockCommitted { .. });
                    match s.reservations.get_mut(reservation_id) {
                        Some((location, qty, open)) if *open => {
                            *open = false;
                            let row = s.stock.get_mut(location).unwrap();
                            row.1 -= *qty;
                            if commit {
                                row.0 -= *qty;
                            }
                            true
                        }
                        _ => false,
                    }
                }
                EventBody::ItemDeleted { .. } => {
                    let ok = s.active;
                    s.active = false;
                    ok
                }
                other => unreachable!("{other:?}"),
            };
        // The version counts stock changes (a deletion is not one).
        if accepted && !matches!(command.intent, EventBody::ItemDeleted { .. }) {
            s.version += 1;
        }
        outcomes.insert((
            command.tenant.clone(),
            Name::from(format!("cmd:{}:0", command.id)),
            accepted,
        ));
    }
    outcomes
}

// ---------- random histories ----------

/// (kind, tenant, sku, location, reservation, qty, expected version, id reuse)
type Step = (
    u8,
    usize,
    usize,
    usize,
    usize,
    i64,
    Option<u64>,
    Option<usize>,
);

fn seed() -> Vec<Event> {
    let mut events = Vec::new();
    for tenant in ["default", "acme"] {
        for sku in 0..3 {
            events.push(Event {
                tenant: Name::from(tenant),
                id: Name::from(format!("seed-{tenant}-{sku}")),
                seq: sku as u64,
                ts: 0,
                body: EventBody::ItemCreated {
                    sku: Name::from(format!("s{sku}")),
                    name: "x".into(),
                    price: Money::ZERO,
                    category: Name::from(""),
                    reorder_point: None,
                    target_level: None,
                    initial: vec![(Name::from("l0"), 5 + sku as i64), (Name::from("l1"), 2)],
                },
            });
        }
    }
    events
}

fn commands(steps: &[Step]) -> Vec<Command> {
    steps
        .iter()
        .enumerate()
        .map(
            |(n, &(kind, tenant, sku, location, reservation, qty, expected_version, reuse))| {
                let location = Name::from(format!("l{location}"));
                // Reservation ids are unique per tenant (see the decider's docs): one pool per sku.
                let reservation_id = Name::from(format!("r{sku}.{reservation}"));
                let intent = match kind {
                    0..=2 => EventBody::StockAdjusted {
                        sku: Name::from(format!("s{sku}")),
                        location,
                        qty: if qty == 0 { 1 } else { qty },
                        reason: Name::from(""),
                    },
                    3..=6 => EventBody::StockReserved {
                        sku: Name::from(format!("s{sku}")),
                        location,
                        qty: qty.abs() + 1,
                        reservation_id,
                        order_id: None,
                    },
                    7 => EventBody::StockReleased { reservation_id },
                    8 => EventBody::StockCommitted { reservation_id },
                    _ => EventBody::ItemDeleted {
                        sku: Name::from(format!("s{sku}")),
                    },
                };
                // A reused id is a retry: same command again (same sku, so the same partition).
                let id = reuse
                    .map(|r| format!("c{}", r.min(n)))
                    .unwrap_or_else(|| format!("c{n}"));
                Command {
                    tenant: Name::from(["default", "acme"][tenant]),
                    id: Name::from(id),
                    seq: n as u64,
                    ts: n as i64,
                    sku: Name::from(format!("s{sku}")),
                    expected_version,
                    intent,
                }
            },
        )
        .collect()
}

fn split(commands: Vec<Command>, cuts: &[bool]) -> Vec<Vec<Command>> {
    let mut epochs = vec![Vec::new()];
    for (i, command) in commands.into_iter().enumerate() {
        if cuts.get(i).copied().unwrap_or(false) {
            epochs.push(Vec::new());
        }
        epochs.last_mut().unwrap().push(command);
    }
    epochs
}

fn check(steps: Vec<Step>, cuts: Vec<bool>, workers: usize) -> Result<(), TestCaseError> {
    let mut commands = commands(&steps);
    // A retried id must be the same command (a client retries the same request).
    let mut first: BTreeMap<(Name, Name), Command> = BTreeMap::new();
    for command in &mut commands {
        let original = first
            .entry((command.tenant.clone(), command.id.clone()))
            .or_insert_with(|| command.clone());
        *command = Command {
            seq: command.seq,
            ts: command.ts,
            ..original.clone()
        };
    }
    let expected = model(&seed(), &commands);
    let epochs = split(commands.clone(), &cuts);
    let outcomes = run(seed(), epochs.clone(), workers);
    let got: BTreeSet<(Name, Name, bool)> = outcomes
        .iter()
        .map(|(e, _)| {
            (
                e.tenant.clone(),
                e.id.clone(),
                !matches!(e.body, EventBody::ReservationRejected { .. }),
            )
        })
        .collect();
    prop_assert_eq!(outcomes.len(), got.len(), "one outcome per decided command");
    prop_assert_eq!(&got, &expected);
    // Each outcome comes out in the epoch of its command (+1: epoch 0 holds the seed).
    for (event, time) in &outcomes {
        let epoch = epochs
            .iter()
            .position(|e| {
                e.iter().any(|c| {
                    format!("cmd:{}:0", c.id) == event.id.as_str() && c.tenant == event.tenant
                })
            })
            .unwrap();
        prop_assert_eq!(
            *time,
            epoch as Epoch,
            "outcome {} at epoch {}",
            event.id,
            time
        );
    }
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u8..10,
            0usize..2,
            0usize..3,
            0usize..2,
            0usize..4,
            -6i64..6,
            prop::option::weighted(0.15, 0u64..6),
            prop::option::weighted(0.1, 0usize..40),
        ),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decisions_match_a_sequential_model_on_one_worker(steps in steps(), cuts in prop::collection::vec(prop::bool::weighted(0.2), 60)) {
        check(steps, cuts, 1)?;
    }

    #[test]
    fn decisions_match_a_sequential_model_on_two_workers(steps in steps(), cuts in prop::collection::vec(prop::bool::weighted(0.2), 60)) {
        check(steps, cuts, 2)?;
    }
}

/// A known history: the second of two reservations that together exceed the stock is rejected.
#[test]
fn no_oversell() {
    let reserve = |n: u64, qty: i64| Command {
        tenant: Name::from("default"),
        id: Name::from(format!("c{n}")),
        seq: n,
        ts: 0,
        sku: Name::from("s0"),
        expected_version: None,
        intent: EventBody::StockReserved {
            sku: Name::from("s0"),
            location: Name::from("l0"),
            qty,
            reservation_id: Name::from(format!("r{n}")),
            order_id: None,
        },
    };
    let outcomes = run(
        seed(),
        vec![vec![reserve(0, 3), reserve(1, 3), reserve(2, 2)]],
        2,
    );
    let kinds: Vec<&str> = outcomes.iter().map(|(e, _)| e.body.type_name()).collect();
    assert_eq!(
        kinds,
        ["stock.reserved", "reservation.rejected", "stock.reserved"]
    );
    assert!(
        matches!(&outcomes[1].0.body, EventBody::ReservationRejected { reason, .. } if reason == "insufficient stock of s0 at l0: available 2, requested 3")
    );
}

// ---------- orders (sagas) ----------

/// (lines: (sku, location, qty)…, or a competing reservation when empty)
type OrderStep = (Vec<(usize, usize, i64)>, usize, usize, i64);

fn order_commands(steps: &[OrderStep]) -> Vec<Command> {
    steps
        .iter()
        .enumerate()
        .map(|(n, (lines, sku, location, qty))| {
            let tenant = Name::from("default");
            if lines.is_empty() {
                let sku = Name::from(format!("s{sku}"));
                return Command {
                    tenant,
                    id: Name::from(format!("c{n}")),
                    seq: n as u64,
                    ts: n as i64,
                    sku: sku.clone(),
                    expected_version: None,
                    intent: EventBody::StockReserved {
                        sku,
                        location: Name::from(format!("l{location}")),
                        qty: *qty,
                        reservation_id: Name::from(format!("r{n}")),
                        order_id: None,
                    },
                };
            }
            let order_id = Name::from(format!("o{n}"));
            let lines: Vec<_> = lines
                .iter()
                .map(
                    |(sku, location, qty)| stockflow_dataflows::model::OrderLine {
                        sku: Name::from(format!("s{sku}")),
                        location: Name::from(format!("l{location}")),
                        qty: *qty,
                        price: Money::from_cents(100),
                    },
                )
                .collect();
            Command {
                tenant,
                id: Name::from(format!("c{n}")),
                seq: n as u64,
                ts: n as i64,
                sku: order_id.clone(),
                expected_version: None,
                intent: EventBody::OrderPlaced {
                    order_id,
                    customer_id: Name::from("u"),
                    lines,
                    total: Money::ZERO,
                },
            }
        })
        .collect()
}

fn check_orders(steps: Vec<OrderStep>, cuts: Vec<bool>) -> Result<(), TestCaseError> {
    let commands = order_commands(&steps);
    let epochs = split(commands.clone(), &cuts);
    let one = run(seed(), epochs.clone(), 1);
    let two = run(seed(), epochs, 2);
    prop_assert_eq!(&one, &two, "one and two workers decide the same");
    let ids: BTreeSet<&str> = one.iter().map(|(e, _)| e.id.as_str()).collect();
    prop_assert_eq!(ids.len(), one.len(), "one outcome per id");
    let rejected: BTreeSet<String> = one
        .iter()
        .filter_map(|(e, _)| match &e.body {
            EventBody::ReservationRejected { command_id, .. } => Some(command_id.to_string()),
            _ => None,
        })
        .collect();
    for (n, (lines, _, _, _)) in steps.iter().enumerate() {
        if lines.is_empty() {
            continue;
        }
        let order = format!("o{n}");
        prop_assert!(
            ids.contains(format!("cmd:c{n}:0").as_str()),
            "order {} placed",
            order
        );
        let status = one
            .iter()
            .find(|(e, _)| e.id == format!("cmd:c{n}:1"))
            .map(|(e, _)| e.body.clone());
        let reserved: Vec<usize> = (0..lines.len())
            .filter(|i| {
                ids.contains(format!("cmd:line:{i}:{order}:0").as_str())
                    && !rejected.contains(&format!("line:{i}:{order}"))
            })
            .collect();
        match status {
            Some(EventBody::OrderStatus {
                status: OrderStatus::Confirmed,
                ..
            }) => {
                prop_assert_eq!(
                    reserved.len(),
                    lines.len(),
                    "a confirmed order has every line reserved"
                );
                let suffix = format!(":{order}:0");
                prop_assert!(
                    !ids.iter()
                        .any(|id| id.starts_with("cmd:release:") && id.ends_with(&suffix)),
                    "a confirmed order releases nothing"
                );
            }
            Some(EventBody::OrderStatus {
                status: OrderStatus::Cancelled,
                reason,
                ..
            }) => {
                prop_assert!(reason.is_some());
                prop_assert!(
                    reserved.len() < lines.len(),
                    "a cancelled order has a rejected line"
                );
                for i in reserved {
                    let release = format!("cmd:release:{i}:{order}:0");
                    let accepted = one.iter().any(|(e, _)| {
                        e.id == release && matches!(e.body, EventBody::StockReleased { .. })
                    });
                    prop_assert!(accepted, "line {} of cancelled {} is released", i, order);
                }
            }
            other => prop_assert!(false, "order {} ended {:?}", order, other),
        }
    }
    // No oversell, nothing left reserved by a cancelled order: replay the outcomes on the seed.
    let mut stock: BTreeMap<(Name, Name), (i64, i64)> = BTreeMap::new();
    for event in seed() {
        if let EventBody::ItemCreated { sku, initial, .. } = &event.body {
            for (location, qty) in initial {
                stock.entry((sku.clone(), location.clone())).or_default().0 += qty;
            }
        }
    }
    let mut reservations: BTreeMap<Name, (Name, Name, i64)> = BTreeMap::new();
    let mut outcomes = one.clone();
    outcomes.sort_by_key(|(e, t)| (*t, e.seq));
    for (event, _) in &outcomes {
        match &event.body {
            EventBody::StockReserved {
                sku,
                location,
                qty,
                reservation_id,
                ..
            } => {
                reservations.insert(
                    reservation_id.clone(),
                    (sku.clone(), location.clone(), *qty),
                );
                let row = stock.entry((sku.clone(), location.clone())).or_default();
                row.1 += qty;
                prop_assert!(row.0 >= row.1, "oversold {}/{}", sku, location);
            }
            EventBody::StockReleased { reservation_id } => {
                let (sku, location, qty) = reservations.remove(reservation_id).unwrap();
                stock.get_mut(&(sku, location)).unwrap().1 -= qty;
            }
            _ => {}
        }
    }
    let open: i64 = reservations
        .iter()
        .filter(|(id, _)| id.contains(':'))
        .map(|(_, r)| r.2)
        .sum();
    let confirmed: i64 = steps
        .iter()
        .enumerate()
        .filter(|(n, (lines, ..))| {
            !lines.is_empty()
                && one.iter().any(|(e, _)| {
                    e.id == format!("cmd:c{n}:1")
                        && matches!(
                            e.body,
                            EventBody::OrderStatus {
                                status: OrderStatus::Confirmed,
                                ..
                            }
                        )
                })
        })
        .map(|(_, (lines, ..))| lines.iter().map(|l| l.2).sum::<i64>())
        .sum();
    prop_assert_eq!(
        open,
        confirmed,
        "what stays reserved for orders is exactly the confirmed orders' lines"
    );
    Ok(())
}

fn order_steps() -> impl Strategy<Value = Vec<OrderStep>> {
    prop::collection::vec(
        (
            prop::collection::vec((0usize..3, 0usize..2, 1i64..5), 0..4),
            0usize..3,
            0usize..2,
            1i64..4,
        ),
        1..30,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn orders_end_confirmed_with_every_line_or_cancelled_with_nothing_held(steps in order_steps(), cuts in prop::collection::vec(prop::bool::weighted(0.3), 30)) {
        check_orders(steps, cuts)?;
    }
}
