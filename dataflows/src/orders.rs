//! Orders as sagas, around the per-sku decider.
//!
//! `order.place` reserves every line; when all lines are reserved the order
//! is confirmed; if any line is rejected, the lines already reserved are
//! released and the order is cancelled with the reason. The coordinator is
//! one state machine per `tenant/order_id`:
//!
//! ```text
//!  order.place ─▶ coordinator ─ line reserves, releases ─▶ sku decider ─┐
//!                    ▲   └─ order.placed / .confirmed / .cancelled       │
//!                    └──────── line outcomes (next epoch) ◀──────────────┘
//! ```
//!
//! The line outcomes come back through a feedback edge, one epoch later, so
//! an order is decided in two epochs. Every id derives from the order:
//! line `i` is command `line:{i}:{order_id}` reserving `{order_id}:{i}`; its
//! release is `release:{i}:{order_id}`; the order's own events are
//! `cmd:{command}:0` (placed) and `cmd:{command}:1` (confirmed or
//! cancelled). So the saga is exactly-once like the decider: on restart the
//! coordinator learns from the event log what was placed, reserved, rejected
//! and finished, re-issues the line commands of an unfinished order (the
//! decider skips those already decided) and finishes it.

use crate::model::command::{caused_event_id, causing_command};
use crate::model::{hash_parts, Command, Event, EventBody, Name, OrderLine, OrderStatus};
use differential_dataflow::VecCollection;
use std::collections::{BTreeMap, HashMap, HashSet};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::{Capability, Concat, ConnectLoop, Feedback};

/// What the coordinator hears.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Heard {
    /// An event from the log, or an outcome of the sku decider.
    Event(Event),
    /// An `order.place` command.
    Command(Command),
}

/// What the coordinator says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Said {
    /// An order event (placed, confirmed, cancelled).
    Event(Event),
    /// A command for the sku decider (a line's reservation, a release).
    Command(Command),
}

/// The line command id of line `line` of `order_id`.
pub fn line_command_id(order_id: &str, line: usize) -> Name {
    Name::from(format!("line:{line}:{order_id}"))
}

/// `(line, order id)` of a line or release command id.
fn parse_line_command(command_id: &str) -> Option<(usize, &str)> {
    let rest = command_id
        .strip_prefix("line:")
        .or_else(|| command_id.strip_prefix("release:"))?;
    let (line, order) = rest.split_once(':')?;
    Some((line.parse().ok()?, order))
}

/// The order an event concerns, for routing and for the coordinator.
fn order_of(event: &Event) -> Option<&str> {
    match &event.body {
        EventBody::OrderPlaced { order_id, .. } | EventBody::OrderStatus { order_id, .. } => {
            Some(order_id)
        }
        EventBody::StockReserved { .. } | EventBody::ReservationRejected { .. } => {
            let command = match &event.body {
                EventBody::ReservationRejected { command_id, .. } => command_id.as_str(),
                _ => causing_command(&event.id)?,
            };
            parse_line_command(command).map(|(_, order)| order)
        }
        _ => None,
    }
}

/// The saga of one order.
#[derive(Default)]
struct Saga {
    /// The command that placed it, its lines, and its time and position
    /// (which the order's later events and releases carry too).
    placed: Option<(Name, Vec<OrderLine>, i64, u64)>,
    /// Line → `Ok` (reserved) or `Err(reason)`.
    lines: BTreeMap<usize, Result<(), String>>,
    /// Confirmed or cancelled.
    finished: bool,
}

#[derive(Default)]
struct Coordinator {
    sagas: HashMap<(Name, Name), Saga>,
    applied: HashSet<(Name, Name)>,
}

impl Coordinator {
    fn hear(&mut self, event: &Event) {
        if !self
            .applied
            .insert((event.tenant.clone(), event.id.clone()))
        {
            return;
        }
        let Some(order) = order_of(event) else { return };
        let saga = self
            .sagas
            .entry((event.tenant.clone(), Name::from(order)))
            .or_default();
        match &event.body {
            // Only orders placed by a command run as sagas (their placed event is `cmd:…:0`).
            EventBody::OrderPlaced { lines, .. } => {
                if let Some(command) = causing_command(&event.id) {
                    saga.placed.get_or_insert_with(|| {
                        (Name::from(command), lines.clone(), event.ts, event.seq)
                    });
                }
            }
            EventBody::OrderStatus {
                status: OrderStatus::Confirmed | OrderStatus::Cancelled,
                ..
            } => saga.finished = true,
            EventBody::StockReserved { .. } => {
                if let Some((line, _)) = causing_command(&event.id).and_then(parse_line_command) {
                    saga.lines.entry(line).or_insert(Ok(()));
                }
            }
            EventBody::ReservationRejected {
                command_id, reason, ..
            } => {
                if let Some((line, _)) = command_id
                    .strip_prefix("line:")
                    .and(parse_line_command(command_id))
                {
                    saga.lines.entry(line).or_insert(Err(reason.clone()));
                }
            }
            _ => {}
        }
    }

    /// Starts (or resumes, after a restart) the saga of an `order.place`.
    fn place(&mut self, command: &Command, said: &mut Vec<Said>) {
        let EventBody::OrderPlaced {
            order_id, lines, ..
        } = &command.intent
        else {
            return;
        };
        let saga = self
            .sagas
            .entry((command.tenant.clone(), order_id.clone()))
            .or_default();
        if saga.finished {
            return;
        }
        if saga.placed.is_none() {
            saga.placed = Some((command.id.clone(), lines.clone(), command.ts, command.seq));
            let event = Event {
                tenant: command.tenant.clone(),
                id: caused_event_id(&command.id, 0),
                seq: command.seq,
                ts: command.ts,
                body: command.intent.clone(),
            };
            self.applied
                .insert((event.tenant.clone(), event.id.clone()));
            said.push(Said::Event(event));
        }
        // Lines without an outcome yet (all, unless resuming): the decider decides each once.
        for (i, line) in lines.iter().enumerate() {
            if saga.lines.contains_key(&i) {
                continue;
            }
            said.push(Said::Command(Command {
                tenant: command.tenant.clone(),
                id: line_command_id(order_id, i),
                seq: command.seq,
                ts: command.ts,
                sku: line.sku.clone(),
                expected_version: None,
                intent: EventBody::StockReserved {
                    sku: line.sku.clone(),
                    location: line.location.clone(),
                    qty: line.qty,
                    reservation_id: Name::from(format!("{order_id}:{i}")),
                    order_id: Some(order_id.clone()),
                },
            }));
        }
    }

    /// Finishes every saga whose lines all have an outcome.
    fn finish(&mut self, touched: &HashSet<(Name, Name)>, said: &mut Vec<Said>) {
        let mut touched: Vec<&(Name, Name)> = touched.iter().collect();
        touched.sort();
        for key in touched {
            let Some(saga) = self.sagas.get_mut(key) else {
                continue;
            };
            let Some((command, lines, ts, seq)) = &saga.placed else {
                continue;
            };
            let (ts, seq) = (*ts, *seq);
            if saga.finished || saga.lines.len() < lines.len() {
                continue;
            }
            let (tenant, order_id) = key;
            let rejected = saga
                .lines
                .iter()
                .find_map(|(i, outcome)| outcome.as_ref().err().map(|reason| (*i, reason.clone())));
            let (status, reason) = match rejected {
                None => (OrderStatus::Confirmed, None),
                Some((i, reason)) => {
                    for (line, outcome) in &saga.lines {
                        if outcome.is_ok() {
                            said.push(Said::Command(Command {
                                tenant: tenant.clone(),
                                id: Name::from(format!("release:{line}:{order_id}")),
                                seq,
                                ts,
                                sku: lines[*line].sku.clone(),
                                expected_version: None,
                                intent: EventBody::StockReleased {
                                    reservation_id: Name::from(format!("{order_id}:{line}")),
                                },
                            }));
                        }
                    }
                    let l = &lines[i];
                    (
                        OrderStatus::Cancelled,
                        Some(format!("line {i} ({} at {}): {reason}", l.sku, l.location)),
                    )
                }
            };
            saga.finished = true;
            let event = Event {
                tenant: tenant.clone(),
                id: caused_event_id(command, 1),
                seq,
                ts,
                body: EventBody::OrderStatus {
                    order_id: order_id.clone(),
                    status,
                    reason,
                },
            };
            said.push(Said::Event(event));
        }
    }
}

/// Runs the coordinator: `events` (log events and, one epoch late, the sku
/// decider's outcomes) and `orders` (`order.place` commands) in; order events
/// and commands for the sku decider out.
pub(crate) fn coordinate<'scope>(
    events: VecCollection<'scope, u64, Event>,
    orders: VecCollection<'scope, u64, Command>,
    decider_outcomes: impl FnOnce(
        VecCollection<'scope, u64, Command>,
    ) -> VecCollection<'scope, u64, Event>,
) -> (
    VecCollection<'scope, u64, Event>,
    VecCollection<'scope, u64, Event>,
) {
    let scope = events.inner.scope();
    // The decider's outcomes come back one epoch later (a dataflow cannot feed itself at the same time).
    let (handle, fed_back) = scope.feedback::<Vec<(Event, u64, isize)>>(1);
    let fed_back = fed_back.unary(Pipeline, "restamp line outcomes", |_, _| {
        move |input, output| {
            input.for_each(|capability, data| {
                // Messages under no capability make no claims and carry nothing of ours.
                let Some(capability) = capability.retain_least(0) else {
                    return;
                };
                let time = *capability.time();
                let mut session = output.session(&capability);
                for (event, _, diff) in data.drain(..) {
                    session.give((event, time, diff));
                }
            })
        }
    });
    let route = |tenant: &str, order: &str| hash_parts(0x0de5_0001, &[tenant, order]);
    let heard = events
        .inner
        .concat(fed_back)
        .filter(|(event, _, _)| order_of(event).is_some())
        .map(|(event, time, diff)| (Heard::Event(event), time, diff))
        .concat(
            orders
                .inner
                .map(|(command, time, diff)| (Heard::Command(command), time, diff)),
        );
    let said = heard.unary_frontier(
        Exchange::new(move |(heard, _, _): &(Heard, u64, isize)| match heard {
            Heard::Event(event) => route(&event.tenant, order_of(event).unwrap_or("")),
            Heard::Command(command) => route(&command.tenant, &command.sku),
        }),
        "coordinate orders",
        |_capability, _info| {
            let mut coordinator = Coordinator::default();
            let mut stash: BTreeMap<u64, (Option<Capability<u64>>, Vec<Heard>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    for (heard, time, _diff) in data.drain(..) {
                        let slot = stash.entry(time).or_default();
                        if slot.0.is_none() {
                            slot.0 = Some(capability.delayed(&time, 0));
                        }
                        slot.1.push(heard);
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    if frontier.frontier().less_equal(entry.key()) {
                        break;
                    }
                    let (time, (capability, mut heard)) = entry.remove_entry();
                    // Events first (in log order), then commands (in log order).
                    heard.sort_by(|a, b| {
                        let key = |h: &Heard| match h {
                            Heard::Event(e) => (0, e.seq),
                            Heard::Command(c) => (1, c.seq),
                        };
                        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
                    });
                    let mut said = Vec::new();
                    let mut touched = HashSet::new();
                    for item in &heard {
                        match item {
                            Heard::Event(event) => {
                                coordinator.hear(event);
                                if let Some(order) = order_of(event) {
                                    touched.insert((event.tenant.clone(), Name::from(order)));
                                }
                            }
                            Heard::Command(command) => {
                                coordinator.place(command, &mut said);
                                if let EventBody::OrderPlaced { order_id, .. } = &command.intent {
                                    touched.insert((command.tenant.clone(), order_id.clone()));
                                }
                            }
                        }
                    }
                    coordinator.finish(&touched, &mut said);
                    if let Some(capability) = capability {
                        let mut session = output.session(&capability);
                        for s in said {
                            session.give((s, time, 1isize));
                        }
                    }
                }
            }
        },
    );
    let said = VecCollection::new(said);
    let order_events = said.clone().flat_map(|said| match said {
        Said::Event(event) => Some(event),
        Said::Command(_) => None,
    });
    let line_commands = said.flat_map(|said| match said {
        Said::Command(command) => Some(command),
        Said::Event(_) => None,
    });
    let outcomes = decider_outcomes(line_commands);
    outcomes
        .inner
        .clone()
        .filter(|(event, _, _)| order_of(event).is_some())
        .connect_loop(handle);
    (order_events, outcomes)
}
