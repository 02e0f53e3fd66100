//! The `kpis` dataflow: counters and sums per tenant, event-time window
//! (`hour`, `day`, UTC) and bucket, so that a late event corrects the bucket
//! it belongs to.
//!
//! Every metric is a sum, so the dataflow carries it in the difference of a
//! collection ([`Cell`]): an event adds to its buckets, a retraction
//! subtracts, and the view is the accumulation. Each worker folds the
//! contributions of the events it holds per (key, epoch) before they leave
//! (a million adjustments in one hour are one update), so the cost per event
//! is a hash-map addition. Orders are the exception: a cancellation must
//! retract what its order added, whichever arrives first, so orders go
//! through a `reduce` per order id whose output (the order's summary)
//! contributes `placed and not cancelled` to its buckets.
//!
//! Derived values (revenue per order, success rates), retention and the top
//! skus per day are in [`Table`], which accumulates the dataflow's output.
//! The gauges (point in time, per tenant, from the items, stock totals and
//! alerts) are kept by a [`GaugeBook`].

mod gauges;
mod spec;
mod table;

pub use gauges::{raised, GaugeBook, GaugeMove, Gauges, SkuGauge, SkuLookup};
pub use spec::{compile_all, Aggregate, Kind, KpiSpec, KpiSpecConfig, WindowsConfig};
pub use table::{KpiRow, KpiValue, Table, TableChanges, TopChange, TopSkus, TOP_SKUS};

use crate::model::{Event, EventBody, EventTime, Name, OrderStatus};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Partition;
use timely::progress::Timestamp;

/// A bucketing of event time.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Window {
    /// Hours, UTC.
    Hour,
    /// Days, UTC.
    Day,
}

impl Window {
    /// Both windows.
    pub const ALL: [Window; 2] = [Window::Hour, Window::Day];

    /// The window's length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `ts`.
    pub fn bucket(self, ts: EventTime) -> EventTime {
        ts.div_euclid(self.millis()) * self.millis()
    }

    /// `hour` or `day`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Parses [`Window::name`].
    pub fn parse(name: &str) -> Option<Window> {
        name.parse().ok()
    }
}

/// The metrics every engine keeps, as `GET /v1/kpis` names them.
pub const BUILT_IN: &[&str] = &[
    "orders",
    "revenue",
    "units_sold",
    "avg_order_value",
    "orders_cancelled",
    "stock_movements",
    "items_created",
    "reservations_accepted",
    "reservations_rejected",
    "reservation_success_rate",
    // Gauges (point in time, per tenant), and the names of internal cells.
    "low_stock_skus",
    "out_of_stock_skus",
    "inventory_value",
    "skus_active",
    cells::RESERVATIONS,
    cells::UNITS_BY_SKU,
];

/// Names of the accumulated cells behind the built-in metrics.
pub mod cells {
    /// `count` orders placed and not cancelled, `sum` their totals (ten-thousandths).
    pub const ORDERS: &str = "orders";
    /// `sum` units over the lines of orders placed and not cancelled.
    pub const UNITS_SOLD: &str = "units_sold";
    /// `count` orders cancelled (bucketed by the cancellation's time).
    pub const ORDERS_CANCELLED: &str = "orders_cancelled";
    /// `count` stock events.
    pub const STOCK_MOVEMENTS: &str = "stock_movements";
    /// `count` `item.created` events.
    pub const ITEMS_CREATED: &str = "items_created";
    /// `count` decisions (reservations and rejections), `sum` reservations.
    pub const RESERVATIONS: &str = "reservations";
    /// Per sku (the group), `sum` units of orders placed and not cancelled; days only.
    pub const UNITS_BY_SKU: &str = "units_by_sku";
}

/// Key of an accumulated KPI cell.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KpiKey {
    /// Tenant.
    pub tenant: Name,
    /// Window.
    pub window: Window,
    /// Start of the bucket (ms since the Unix epoch, UTC).
    pub bucket: EventTime,
    /// A cell's name (a built-in cell, see [`cells`], or a custom KPI's
    /// name); in a [`KpiRow`], the row's metric name.
    pub metric: Name,
    /// Group of a custom KPI with `group_by`, the sku of `units_by_sku`; else "".
    pub group: Name,
}

impl KpiKey {
    /// The smallest key of `tenant`'s `window` buckets from `bucket` on: where a range scan starts.
    pub fn first(tenant: &Name, window: Window, bucket: EventTime) -> KpiKey {
        KpiKey {
            tenant: tenant.clone(),
            window,
            bucket,
            metric: Name::default(),
            group: Name::default(),
        }
    }
}

/// The accumulated value of a cell, and the difference type of the `kpis`
/// collection: summing the differences of a key *is* its value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cell {
    /// Events (or orders) counted.
    pub count: i64,
    /// Sum of their values (money in ten-thousandths).
    pub sum: i128,
}

impl Cell {
    fn new(count: i64, sum: i128) -> Cell {
        Cell { count, sum }
    }

    fn multiply_by(self, diff: isize) -> Cell {
        differential_dataflow::difference::Multiply::multiply(self, &diff)
    }
}

impl differential_dataflow::difference::IsZero for Cell {
    fn is_zero(&self) -> bool {
        self.count == 0 && self.sum == 0
    }
}

impl differential_dataflow::difference::Semigroup for Cell {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.sum += rhs.sum;
    }
}

impl differential_dataflow::difference::Monoid for Cell {
    fn zero() -> Self {
        Cell::default()
    }
}

impl differential_dataflow::difference::Abelian for Cell {
    fn negate(&mut self) {
        self.count = -self.count;
        self.sum = -self.sum;
    }
}

impl differential_dataflow::difference::Multiply<isize> for Cell {
    type Output = Cell;
    fn multiply(self, rhs: &isize) -> Cell {
        Cell {
            count: self.count * *rhs as i64,
            sum: self.sum * *rhs as i128,
        }
    }
}

/// What the `kpis` dataflow produces.
pub struct Kpis<'scope, T: Timestamp> {
    /// Additions to cells (counts and sums).
    pub cells: VecCollection<'scope, T, KpiKey, Cell>,
    /// The current minimum or maximum of each `min`/`max` custom KPI's key.
    pub extremes: VecCollection<'scope, T, (KpiKey, i64)>,
}

/// What an order contributes, whichever order its events arrive in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum OrderFact {
    /// `order.placed`: position, time, total (ten-thousandths), `(sku, qty)` per line.
    Placed(u64, EventTime, i64, Vec<(Name, i64)>),
    /// `order.cancelled`: position, time.
    Cancelled(u64, EventTime),
}

type Placed = (EventTime, i64, Vec<(Name, i64)>);

/// The summary of one order: its first placement and first cancellation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct OrderSummary {
    /// Time, total (ten-thousandths), `(sku, qty)` per line.
    placed: Option<Placed>,
    cancelled: Option<EventTime>,
}

/// What the aggregating operator sends on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Out {
    Cell(KpiKey, Cell),
    Order((Name, Name), OrderFact),
    Extreme(KpiKey, Aggregate, i64),
}

/// Calls `add(cell, group, window, contribution)` for every built-in cell
/// and custom KPI an event adds to (orders aside: see [`OrderFact`]).
fn contributions(
    event: &Event,
    specs: &[KpiSpec],
    mut add: impl FnMut(&str, Name, &[Window], Cell),
    mut extreme: impl FnMut(&KpiSpec, Name, i64),
) {
    let one = Cell::new(1, 0);
    match &event.body {
        EventBody::ItemCreated { initial, .. } => {
            add(cells::ITEMS_CREATED, Name::default(), &Window::ALL, one);
            if !initial.is_empty() {
                add(
                    cells::STOCK_MOVEMENTS,
                    Name::default(),
                    &Window::ALL,
                    Cell::new(initial.len() as i64, 0),
                );
            }
        }
        EventBody::StockReserved { .. } => {
            add(cells::STOCK_MOVEMENTS, Name::default(), &Window::ALL, one);
            add(
                cells::RESERVATIONS,
                Name::default(),
                &Window::ALL,
                Cell::new(1, 1),
            );
        }
        EventBody::StockAdjusted { .. }
        | EventBody::StockReleased { .. }
        | EventBody::StockCommitted { .. }
        | EventBody::StockLevel { .. } => {
            add(cells::STOCK_MOVEMENTS, Name::default(), &Window::ALL, one)
        }
        EventBody::ReservationRejected { .. } => add(
            cells::RESERVATIONS,
            Name::default(),
            &Window::ALL,
            Cell::new(1, 0),
        ),
        _ => {}
    }
    for spec in specs {
        let Some((group, value)) = spec.evaluate(event) else {
            continue;
        };
        match spec.aggregate {
            Aggregate::Count | Aggregate::Sum | Aggregate::Avg => add(
                &spec.name,
                group,
                &spec.windows,
                Cell::new(1, value as i128),
            ),
            Aggregate::Min | Aggregate::Max => extreme(spec, group, value),
        }
    }
}

/// The cells `event` adds to, built-in and `specs`' counts and sums, as
/// the `kpis` dataflow adds them; orders and `min`/`max` KPIs aside (they
/// are not per-event sums).
pub fn event_cells(event: &Event, specs: &[KpiSpec]) -> Vec<(KpiKey, Cell)> {
    let mut cells = Vec::new();
    contributions(
        event,
        specs,
        |metric, group, windows, cell| {
            for window in windows {
                cells.push((
                    KpiKey {
                        tenant: event.tenant.clone(),
                        window: *window,
                        bucket: window.bucket(event.ts),
                        metric: Name::from(metric),
                        group: group.clone(),
                    },
                    cell,
                ));
            }
        },
        |_spec, _group, _value| {},
    );
    cells
}

fn order_fact(event: &Event) -> Option<((Name, Name), OrderFact)> {
    match &event.body {
        EventBody::OrderPlaced {
            order_id,
            lines,
            total,
            ..
        } => Some((
            (event.tenant.clone(), order_id.clone()),
            OrderFact::Placed(
                event.seq,
                event.ts,
                total.ten_thousandths(),
                lines.iter().map(|l| (l.sku.clone(), l.qty)).collect(),
            ),
        )),
        EventBody::OrderStatus {
            order_id,
            status: OrderStatus::Cancelled,
            ..
        } => Some((
            (event.tenant.clone(), order_id.clone()),
            OrderFact::Cancelled(event.seq, event.ts),
        )),
        _ => None,
    }
}

/// The KPI cells of `events` (deduplicated upstream), built-in and `specs`.
///
/// Orders: `orders` counts orders placed and not cancelled with their
/// totals in the sum, `units_sold` their units, both in the buckets of the
/// placement; `orders_cancelled` counts cancellations in the buckets of the
/// cancellation. Of several placements or cancellations of one order id the
/// earliest in the log counts. Custom KPIs see events as they are (a
/// cancellation does not retract a custom KPI over `order.placed`).
pub fn kpis<'scope, T>(
    events: VecCollection<'scope, T, Event>,
    specs: Arc<[KpiSpec]>,
) -> Kpis<'scope, T>
where
    T: Timestamp + Lattice + Ord + std::hash::Hash,
{
    let aggregated = events
        .inner
        .unary(Pipeline, "kpis: fold per bucket", move |_, _| {
            let mut folded: HashMap<(KpiKey, T), Cell, foldhash::fast::RandomState> =
                HashMap::default();
            move |input, output| {
                input.for_each(|capability, data| {
                    let mut session = output.session(&capability);
                    for (event, time, diff) in data.drain(..) {
                        if let Some((key, fact)) = order_fact(&event) {
                            session.give((Out::Order(key, fact), time.clone(), diff));
                        }
                        let tenant = &event.tenant;
                        let ts = event.ts;
                        contributions(
                            &event,
                            &specs,
                            |metric, group, windows, cell| {
                                for window in windows {
                                    let key = KpiKey {
                                        tenant: tenant.clone(),
                                        window: *window,
                                        bucket: window.bucket(ts),
                                        metric: Name::from(metric),
                                        group: group.clone(),
                                    };
                                    use differential_dataflow::difference::Semigroup;
                                    folded
                                        .entry((key, time.clone()))
                                        .or_default()
                                        .plus_equals(&cell.multiply_by(diff));
                                }
                            },
                            |spec, group, value| {
                                for window in &spec.windows {
                                    let key = KpiKey {
                                        tenant: tenant.clone(),
                                        window: *window,
                                        bucket: window.bucket(ts),
                                        metric: spec.name.clone(),
                                        group: group.clone(),
                                    };
                                    session.give((
                                        Out::Extreme(key, spec.aggregate, value),
                                        time.clone(),
                                        diff,
                                    ));
                                }
                            },
                        );
                    }
                    for ((key, time), cell) in folded.drain() {
                        if cell != Cell::default() {
                            session.give((Out::Cell(key, cell), time, 1));
                        }
                    }
                });
            }
        });
    let mut parts = aggregated
        .partition(3, |(out, time, diff)| {
            let part = match out {
                Out::Cell(..) => 0,
                Out::Order(..) => 1,
                Out::Extreme(..) => 2,
            };
            (part, (out, time, diff))
        })
        .into_iter()
        .map(VecCollection::new);
    let (folded, orders, extremes) = (
        parts.next().expect("part 0"),
        parts.next().expect("part 1"),
        parts.next().expect("part 2"),
    );

    let folded = folded.explode(|out| match out {
        Out::Cell(key, cell) => Some((key, cell)),
        _ => None,
    });
    let orders = orders
        .flat_map(|out| match out {
            Out::Order(key, fact) => Some((key, fact)),
            _ => None,
        })
        .reduce_named("kpis: orders by id", |_order, facts, output| {
            // Facts are sorted: placements (by position) before cancellations.
            let placed = facts.iter().find_map(|(fact, _)| match fact {
                OrderFact::Placed(_, ts, total, lines) => Some((*ts, *total, lines.clone())),
                _ => None,
            });
            let cancelled = facts.iter().find_map(|(fact, _)| match fact {
                OrderFact::Cancelled(_, ts) => Some(*ts),
                _ => None,
            });
            output.push((OrderSummary { placed, cancelled }, 1));
        })
        .explode(|((tenant, _order), summary)| {
            let mut cells = Vec::new();
            let mut add =
                |metric: &str, group: &Name, windows: &[Window], ts: EventTime, cell: Cell| {
                    for window in windows {
                        let key = KpiKey {
                            tenant: tenant.clone(),
                            window: *window,
                            bucket: window.bucket(ts),
                            metric: Name::from(metric),
                            group: group.clone(),
                        };
                        cells.push((key, cell));
                    }
                };
            if let (Some((ts, total, lines)), None) = (&summary.placed, summary.cancelled) {
                add(
                    cells::ORDERS,
                    &Name::default(),
                    &Window::ALL,
                    *ts,
                    Cell::new(1, *total as i128),
                );
                let units: i64 = lines.iter().map(|(_, qty)| qty).sum();
                add(
                    cells::UNITS_SOLD,
                    &Name::default(),
                    &Window::ALL,
                    *ts,
                    Cell::new(lines.len() as i64, units as i128),
                );
                for (sku, qty) in lines {
                    add(
                        cells::UNITS_BY_SKU,
                        sku,
                        &[Window::Day],
                        *ts,
                        Cell::new(1, *qty as i128),
                    );
                }
            }
            if let Some(ts) = summary.cancelled {
                add(
                    cells::ORDERS_CANCELLED,
                    &Name::default(),
                    &Window::ALL,
                    ts,
                    Cell::new(1, 0),
                );
            }
            cells
        });
    let extremes = extremes
        .flat_map(|out| match out {
            Out::Extreme(key, aggregate, value) => Some((key, (aggregate, value))),
            _ => None,
        })
        .reduce_named("kpis: min and max", |_key, values, output| {
            // Values are sorted: the first is the minimum, the last the maximum.
            let (aggregate, min) = *values[0].0;
            let value = if aggregate == Aggregate::Min {
                min
            } else {
                values[values.len() - 1].0 .1
            };
            output.push((value, 1));
        });
    Kpis {
        cells: folded.concat(orders),
        extremes,
    }
}
