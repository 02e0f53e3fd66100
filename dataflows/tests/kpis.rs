//! Property test of the `kpis` dataflow: for random histories — late and
//! out-of-order timestamps across hours and days, duplicate deliveries,
//! orders cancelled before or after they are placed, rejected commands —
//! cut into random epochs and run on one or two workers, the KPI rows and
//! the top skus after *every* epoch equal a from-scratch computation over
//! the events seen so far.
//!
//! The oracle is written out per metric and shares no code with the
//! dataflow: custom KPIs are checked through fixed specs whose meaning the
//! oracle spells out by hand.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use stockflow_dataflows::kpis::{
    Cell, KpiKey, KpiSpec, KpiSpecConfig, Table, Window, WindowsConfig,
};
use stockflow_dataflows::model::{Event, EventBody, Money, Name, OrderLine, OrderStatus};
use timely::dataflow::operators::probe::Handle;

mod common;

use common::Epoch;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

#[derive(Default)]
struct Output {
    cells: Vec<(KpiKey, Epoch, Cell)>,
    extremes: Vec<((KpiKey, i64), Epoch, isize)>,
}

fn specs() -> Arc<[KpiSpec]> {
    let spec = |name: &str,
                event_type: &str,
                filter: Option<&str>,
                group_by: &[&str],
                aggregate: &str,
                field: Option<&str>,
                window: &[&str]| {
        KpiSpec::compile(&KpiSpecConfig {
            name: name.into(),
            event_type: event_type.into(),
            filter: filter.map(Into::into),
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            aggregate: aggregate.into(),
            field: field.map(Into::into),
            window: Some(WindowsConfig::Many(
                window.iter().map(|s| s.to_string()).collect(),
            )),
        })
        .unwrap()
    };
    Arc::from(vec![
        spec(
            "units_out",
            "stock.adjusted",
            Some("qty < 0"),
            &["location"],
            "sum",
            Some("qty"),
            &["hour", "day"],
        ),
        spec(
            "biggest_order",
            "order.placed",
            None,
            &["customer_id"],
            "max",
            Some("total"),
            &["day"],
        ),
        spec(
            "smallest_adjustment",
            "stock.adjusted",
            Some("reason == 'count'"),
            &[],
            "min",
            Some("qty"),
            &["hour"],
        ),
        spec(
            "mean_reserved",
            "stock.reserved",
            None,
            &[],
            "avg",
            Some("qty"),
            &["day"],
        ),
    ])
}

fn run(epochs: Vec<Vec<Event>>, workers: usize) -> Output {
    let output = Arc::new(Mutex::new(Output::default()));
    let shared = output.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let out = shared.clone();
        let probe = Handle::new();
        let mut input = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, events) =
                differential_dataflow::input::Input::new_collection::<Event, isize>(&scope);
            let kpis = stockflow_dataflows::kpis(
                stockflow_dataflows::dedup(
                    events,
                    None,
                    None,
                    stockflow_dataflows::dedup::DedupWindow::UNBOUNDED,
                    Default::default(),
                ),
                specs(),
            );
            let o = out.clone();
            kpis.cells
                .inspect(move |(k, t, c)| o.lock().unwrap().cells.push((k.clone(), *t, *c)))
                .probe_with(&probe);
            let o = out.clone();
            kpis.extremes
                .inspect(move |(d, t, r)| o.lock().unwrap().extremes.push((d.clone(), *t, *r)))
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

// ---------- the oracle ----------

/// A row as compared: (tenant, window, bucket, metric, group) → value as JSON text.
type Rows = BTreeMap<(String, &'static str, i64, String, String), String>;

fn bucket(window: i64, ts: i64) -> i64 {
    ts.div_euclid(window) * window
}

/// Top skus per (tenant, day).
type Top = BTreeMap<(String, i64), Vec<(String, i64)>>;

/// First placement and first cancellation per order.
type Orders<'a> = BTreeMap<(Name, Name), (Option<&'a Event>, Option<&'a Event>)>;

fn oracle(events: &[Event]) -> (Rows, Top) {
    // First delivery of each (tenant, id) by position.
    let mut first: BTreeMap<(Name, Name), &Event> = BTreeMap::new();
    for event in events {
        let slot = first
            .entry((event.tenant.clone(), event.id.clone()))
            .or_insert(event);
        if event < *slot {
            *slot = event;
        }
    }
    let events: Vec<&Event> = first.into_values().collect();
    let windows = [("hour", HOUR), ("day", DAY)];
    let mut counts: BTreeMap<(String, &'static str, i64, String, String), i128> = BTreeMap::new();
    let mut count = |tenant: &str,
                     metric: &str,
                     group: &str,
                     windows: &[(&'static str, i64)],
                     ts: i64,
                     n: i128| {
        if n == 0 {
            return;
        }
        for (name, len) in windows {
            *counts
                .entry((
                    tenant.to_string(),
                    *name,
                    bucket(*len, ts),
                    metric.to_string(),
                    group.to_string(),
                ))
                .or_default() += n;
        }
    };
    let mut orders: Orders = BTreeMap::new();
    let mut mins: BTreeMap<(String, &'static str, i64, String, String), i64> = BTreeMap::new();
    let mut maxes: BTreeMap<(String, &'static str, i64, String, String), i64> = BTreeMap::new();
    for event in &events {
        let t = event.tenant.as_str();
        match &event.body {
            EventBody::ItemCreated { initial, .. } => {
                count(t, "items_created", "", &windows, event.ts, 1);
                count(
                    t,
                    "stock_movements",
                    "",
                    &windows,
                    event.ts,
                    initial.len() as i128,
                );
            }
            EventBody::StockAdjusted {
                qty,
                location,
                reason,
                ..
            } => {
                count(t, "stock_movements", "", &windows, event.ts, 1);
                if *qty < 0 {
                    count(t, "units_out", location, &windows, event.ts, *qty as i128);
                }
                if reason == "count" {
                    let key = (
                        t.to_string(),
                        "hour",
                        bucket(HOUR, event.ts),
                        "smallest_adjustment".to_string(),
                        String::new(),
                    );
                    let slot = mins.entry(key).or_insert(*qty);
                    *slot = (*slot).min(*qty);
                }
            }
            EventBody::StockReserved { qty, .. } => {
                count(t, "stock_movements", "", &windows, event.ts, 1);
                count(t, "reservations_accepted", "", &windows, event.ts, 1);
                count(t, "decisions", "", &windows, event.ts, 1);
                count(
                    t,
                    "reserved_sum",
                    "",
                    &[("day", DAY)],
                    event.ts,
                    *qty as i128,
                );
                count(t, "reserved_n", "", &[("day", DAY)], event.ts, 1);
            }
            EventBody::StockReleased { .. }
            | EventBody::StockCommitted { .. }
            | EventBody::StockLevel { .. } => {
                count(t, "stock_movements", "", &windows, event.ts, 1)
            }
            EventBody::ReservationRejected { .. } => {
                count(t, "reservations_rejected", "", &windows, event.ts, 1);
                count(t, "decisions", "", &windows, event.ts, 1);
            }
            EventBody::OrderPlaced {
                order_id,
                customer_id,
                total,
                ..
            } => {
                let slot = &mut orders
                    .entry((event.tenant.clone(), order_id.clone()))
                    .or_default()
                    .0;
                if slot.is_none_or(|kept| event.seq < kept.seq) {
                    *slot = Some(event);
                }
                let key = (
                    t.to_string(),
                    "day",
                    bucket(DAY, event.ts),
                    "biggest_order".to_string(),
                    customer_id.to_string(),
                );
                let slot = maxes.entry(key).or_insert(total.ten_thousandths());
                *slot = (*slot).max(total.ten_thousandths());
            }
            EventBody::OrderStatus {
                order_id,
                status: OrderStatus::Cancelled,
                ..
            } => {
                let slot = &mut orders
                    .entry((event.tenant.clone(), order_id.clone()))
                    .or_default()
                    .1;
                if slot.is_none_or(|kept| event.seq < kept.seq) {
                    *slot = Some(event);
                }
            }
            _ => {}
        }
    }
    let mut top: BTreeMap<(String, i64), BTreeMap<String, i64>> = BTreeMap::new();
    let mut revenue: BTreeMap<(String, &'static str, i64), (i128, i128)> = BTreeMap::new();
    for ((tenant, _), (placed, cancelled)) in &orders {
        if let Some(cancel) = cancelled {
            count(tenant, "orders_cancelled", "", &windows, cancel.ts, 1);
        }
        let (Some(placed), None) = (placed, cancelled) else {
            continue;
        };
        let EventBody::OrderPlaced { lines, total, .. } = &placed.body else {
            unreachable!()
        };
        for (name, len) in windows {
            let slot = revenue
                .entry((tenant.to_string(), name, bucket(len, placed.ts)))
                .or_default();
            slot.0 += 1;
            slot.1 += total.ten_thousandths() as i128;
        }
        count(
            tenant,
            "units_sold",
            "",
            &windows,
            placed.ts,
            lines.iter().map(|l| l.qty as i128).sum(),
        );
        for line in lines {
            *top.entry((tenant.to_string(), bucket(DAY, placed.ts)))
                .or_default()
                .entry(line.sku.to_string())
                .or_default() += line.qty;
        }
    }
    let mut rows = Rows::new();
    let money = |ten_thousandths: i128| {
        serde_json::json!(Money::from_ten_thousandths(ten_thousandths as i64)).to_string()
    };
    for ((tenant, window, b), (n, sum)) in revenue {
        let key = |metric: &str| (tenant.clone(), window, b, metric.to_string(), String::new());
        rows.insert(key("orders"), n.to_string());
        rows.insert(key("revenue"), money(sum));
        // Half away from zero, to the ten-thousandth.
        let mean = (2 * sum + n).div_euclid(2 * n);
        rows.insert(key("avg_order_value"), money(mean));
    }
    let decisions: Vec<_> = counts
        .iter()
        .filter(|(k, _)| k.3 == "decisions")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for ((tenant, window, b, _, _), n) in decisions {
        let key = |metric: &str| (tenant.clone(), window, b, metric.to_string(), String::new());
        let accepted = counts
            .get(&key("reservations_accepted"))
            .copied()
            .unwrap_or(0);
        rows.insert(key("reservations_accepted"), accepted.to_string());
        rows.insert(key("reservations_rejected"), (n - accepted).to_string());
        rows.insert(
            key("reservation_success_rate"),
            serde_json::json!(accepted as f64 / n as f64).to_string(),
        );
    }
    let reserved: Vec<_> = counts
        .iter()
        .filter(|(k, _)| k.3 == "reserved_n")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for ((tenant, window, b, _, _), n) in reserved {
        let sum = counts[&(
            tenant.clone(),
            window,
            b,
            "reserved_sum".to_string(),
            String::new(),
        )];
        rows.insert(
            (
                tenant,
                window,
                b,
                "mean_reserved".to_string(),
                String::new(),
            ),
            serde_json::json!(sum as f64 / n as f64).to_string(),
        );
    }
    for (key, value) in counts {
        if matches!(
            key.3.as_str(),
            "decisions"
                | "reservations_accepted"
                | "reservations_rejected"
                | "reserved_sum"
                | "reserved_n"
        ) {
            continue;
        }
        rows.insert(key, value.to_string());
    }
    for (key, value) in mins {
        rows.insert(key, value.to_string());
    }
    for (key, value) in maxes {
        rows.insert(key, money(value as i128));
    }
    let top = top
        .into_iter()
        .map(|(day, units)| {
            let mut ranked: Vec<(String, i64)> = units.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.truncate(10);
            (day, ranked)
        })
        .collect();
    (rows, top)
}

fn table_rows(table: &Table) -> Rows {
    table
        .rows()
        .into_iter()
        .map(|r| {
            (
                (
                    r.key.tenant.to_string(),
                    r.key.window.name(),
                    r.key.bucket,
                    r.key.metric.to_string(),
                    r.key.group.to_string(),
                ),
                r.value.json().to_string(),
            )
        })
        .collect()
}

// ---------- random histories ----------

/// (kind, tenant, sku, location, order, qty, hour, minute)
type Step = (u8, usize, usize, usize, usize, i64, i64, i64);

fn history(steps: &[Step]) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for (n, &(kind, tenant, sku, location, order, qty, hour, minute)) in steps.iter().enumerate() {
        let sku = Name::from(format!("sku-{sku}"));
        let location = Name::from(format!("loc-{location}"));
        let order_id = Name::from(format!("o-{order}"));
        let body = match kind {
            0 => EventBody::ItemCreated {
                sku,
                name: "x".into(),
                price: Money::from_cents(100),
                category: "c".into(),
                reorder_point: None,
                target_level: None,
                initial: if qty > 2 {
                    vec![(location, qty)]
                } else {
                    Vec::new()
                },
            },
            1..=3 => EventBody::StockAdjusted {
                sku,
                location,
                qty: if qty == 0 { 1 } else { qty },
                reason: Name::from(["count", "sale"][n % 2]),
            },
            4 => EventBody::StockReserved {
                sku,
                location,
                qty: qty.abs() + 1,
                reservation_id: Name::from(format!("r{n}")),
                order_id: None,
            },
            5 => EventBody::StockReleased {
                reservation_id: Name::from(format!("r{}", n / 2)),
            },
            6 => EventBody::ReservationRejected {
                command_id: Name::from(format!("c{n}")),
                reason: "no".into(),
                sku: Some(sku),
            },
            7 | 8 => {
                let lines: Vec<OrderLine> = (0..1 + n % 3)
                    .map(|i| OrderLine {
                        sku: Name::from(format!("sku-{}", (sku_index(&sku) + i) % 6)),
                        location: location.clone(),
                        qty: qty.abs() + 1,
                        price: Money::from_cents(123),
                    })
                    .collect();
                let total = Money::from_ten_thousandths(
                    lines.iter().map(|l| l.qty * 12_345 + n as i64).sum(),
                );
                EventBody::OrderPlaced {
                    order_id,
                    customer_id: Name::from(["ana", "bo"][n % 2]),
                    lines,
                    total,
                }
            }
            9 => EventBody::OrderStatus {
                order_id,
                status: OrderStatus::Cancelled,
                reason: None,
            },
            10 => EventBody::OrderStatus {
                order_id,
                status: OrderStatus::Confirmed,
                reason: None,
            },
            _ => {
                // A redelivery of an earlier event, later in the log.
                if let Some(original) = events.get(order * 5 % events.len().max(1)).cloned() {
                    events.push(Event {
                        seq: n as u64,
                        ..original
                    });
                }
                continue;
            }
        };
        events.push(Event {
            tenant: Name::from(["default", "acme"][tenant]),
            id: Name::from(format!("e{n}")),
            ts: hour * HOUR + minute * 60_000 - 2 * HOUR,
            seq: n as u64,
            body,
        });
    }
    events
}

fn sku_index(sku: &Name) -> usize {
    sku.trim_start_matches("sku-").parse().unwrap()
}

fn check(steps: Vec<Step>, cuts: Vec<bool>, workers: usize) -> Result<(), TestCaseError> {
    let events = history(&steps);
    let mut epochs = vec![Vec::new()];
    for (i, event) in events.iter().enumerate() {
        if cuts.get(i).copied().unwrap_or(false) {
            epochs.push(Vec::new());
        }
        epochs.last_mut().unwrap().push(event.clone());
    }
    let output = run(epochs.clone(), workers);
    let mut table = Table::new(specs(), i64::MAX);
    let mut seen = Vec::new();
    for (epoch, events) in epochs.iter().enumerate() {
        let epoch = epoch as Epoch;
        seen.extend(events.iter().cloned());
        let cells = output
            .cells
            .iter()
            .filter(|u| u.1 == epoch)
            .map(|(k, _, c)| (k.clone(), *c))
            .collect();
        let extremes = output
            .extremes
            .iter()
            .filter(|u| u.1 == epoch)
            .map(|(d, _, r)| (d.clone(), *r))
            .collect();
        let changes = table.apply(cells, extremes);
        prop_assert_eq!(changes.too_late, 0);
        let (rows, top) = oracle(&seen);
        prop_assert_eq!(table_rows(&table), rows, "kpis after epoch {}", epoch);
        let table_top: BTreeMap<(String, i64), Vec<(String, i64)>> = table
            .top()
            .iter()
            .map(|((tenant, day), top)| {
                (
                    (tenant.to_string(), *day),
                    top.skus.iter().map(|(s, u)| (s.to_string(), *u)).collect(),
                )
            })
            .collect();
        let expected_top: BTreeMap<_, _> = top
            .into_iter()
            .filter(|(_, skus)| !skus.is_empty())
            .collect();
        prop_assert_eq!(table_top, expected_top, "top skus after epoch {}", epoch);
    }
    // Every cell key the dataflow produced is one the oracle knows of a bucket (no stray windows).
    let windows: BTreeSet<Window> = output.cells.iter().map(|(k, ..)| k.window).collect();
    prop_assert!(windows.iter().all(|w| Window::ALL.contains(w)));
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u8..12,
            0usize..2,
            0usize..6,
            0usize..2,
            0usize..5,
            -4i64..6,
            0i64..60,
            0i64..60,
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn kpis_match_a_batch_computation(steps in steps(), cuts in prop::collection::vec(prop::bool::weighted(0.25), 80), workers in 1usize..3) {
        check(steps, cuts, workers)?;
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
    let line = |sku: &str, qty: i64| OrderLine {
        sku: sku.into(),
        location: "m".into(),
        qty,
        price: Money::from_cents(500),
    };
    let placed = |order: &str, total_cents: i64, lines: Vec<OrderLine>| EventBody::OrderPlaced {
        order_id: order.into(),
        customer_id: "ana".into(),
        lines,
        total: Money::from_cents(total_cents),
    };
    let events = [
        event(
            "1",
            10 * HOUR + 5,
            0,
            placed("o1", 1000, vec![line("A", 2)]),
        ),
        event(
            "2",
            10 * HOUR + 6,
            1,
            placed("o2", 2050, vec![line("A", 1), line("B", 3)]),
        ),
        // Late: an order of hour 9 arrives after hour 10's.
        event("3", 9 * HOUR, 2, placed("o3", 700, vec![line("B", 1)])),
        // o2 is cancelled an hour later: its revenue leaves hour 10.
        event(
            "4",
            11 * HOUR,
            3,
            EventBody::OrderStatus {
                order_id: "o2".into(),
                status: OrderStatus::Cancelled,
                reason: None,
            },
        ),
        // A duplicate delivery of o1 changes nothing.
        event(
            "1",
            10 * HOUR + 5,
            4,
            placed("o1", 1000, vec![line("A", 2)]),
        ),
    ];
    let output = run(vec![events[..2].to_vec(), events[2..].to_vec()], 1);
    let mut table = Table::new(specs(), i64::MAX);
    let all: Vec<(KpiKey, Cell)> = output
        .cells
        .iter()
        .map(|(k, _, c)| (k.clone(), *c))
        .collect();
    table.apply(all, Vec::new());
    let rows = table_rows(&table);
    let get = |window: &'static str, b: i64, metric: &str| {
        rows.get(&(
            "default".to_string(),
            window,
            b,
            metric.to_string(),
            String::new(),
        ))
        .cloned()
    };
    assert_eq!(get("hour", 10 * HOUR, "orders").as_deref(), Some("1"));
    assert_eq!(get("hour", 10 * HOUR, "revenue").as_deref(), Some("10.0"));
    assert_eq!(get("hour", 9 * HOUR, "revenue").as_deref(), Some("7.0"));
    assert_eq!(
        get("hour", 11 * HOUR, "orders_cancelled").as_deref(),
        Some("1")
    );
    assert_eq!(get("day", 0, "orders").as_deref(), Some("2"));
    assert_eq!(get("day", 0, "avg_order_value").as_deref(), Some("8.5"));
    assert_eq!(get("day", 0, "units_sold").as_deref(), Some("3"));
    let top = &table.top()[&(Name::from("default"), 0)];
    assert_eq!(top.skus, vec![(Name::from("A"), 2), (Name::from("B"), 1)]);
}
