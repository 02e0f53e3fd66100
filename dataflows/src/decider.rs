//! The decider: one writer per `tenant/sku` turns commands into events.
//!
//! Commands and events are exchanged on `tenant/sku`, so each key has exactly
//! one state machine, on one worker, and no locks. Per completed epoch the
//! state first takes the epoch's events (from the event log: other writers,
//! and on restart the decider's own earlier outcomes), then decides the
//! epoch's commands in log order. Each decision is one event: the event the
//! command asked for, or `reservation.rejected` with the reason. An outcome
//! is applied to the state at once, so the next command of the key sees it.
//!
//! The outcome of command `c` has id `cmd:{c}:0`
//! ([`crate::model::command::caused_event_id`]). Its copy read back from the
//! event log is recognised by that id and not applied twice; a command whose
//! outcome is already in the log (a retry, or a replay after a restart) is not
//! decided again.
//!
//! Reservation ids are unique per tenant (the views match a release to the
//! first reservation of its id). The writer of a sku rejects an id it or
//! another sku *of its worker* already holds; an id reused on a sku of another
//! worker is not seen. stockflow generates reservation ids that cannot
//! collide when the client gives none.

use crate::dedup::Digested;
use crate::model::command::{caused_event_id, causing_command};
use crate::model::{hash_parts, Command, Event, EventBody, Name};
use differential_dataflow::VecCollection;
use std::collections::{BTreeMap, HashMap, HashSet};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Filter};
use timely::dataflow::operators::{Capability, Concat, Exchange};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// The state of one sku, as its single writer knows it.
#[derive(Clone, Debug, Default)]
pub struct SkuState {
    /// Stock changes applied to the sku, counted as the stock view counts
    /// them ([`crate::model::StockDelta::changes`]): what `expected_version`
    /// is compared with, and what reads show as `version`.
    pub version: u64,
    /// Locations with an absolute level, and the newest version applied
    /// (an older one arriving late changes nothing; later versions count 0).
    pub leveled: BTreeMap<Name, u64>,
    /// `Some(true)` while the item exists, `Some(false)` once deleted.
    pub active: Option<bool>,
    /// `(on_hand, reserved)` per location.
    pub locations: BTreeMap<Name, (i64, i64)>,
    /// Reservations of this sku: location, quantity, still open.
    pub reservations: HashMap<Name, (Name, i64, bool)>,
}

/// How a reservation is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Released,
    Committed,
}

/// Every sku state of one worker, and what makes decisions exactly-once.
#[derive(Default)]
pub struct Decider {
    skus: HashMap<(Name, Name), SkuState, Fast>,
    /// Which sku holds a reservation (of the skus on this worker).
    holders: HashMap<(Name, Name), Name, Fast>,
    /// Closings seen before their reservation (they apply when it arrives).
    early_closings: HashMap<(Name, Name), Closing, Fast>,
    /// Digests of the `(tenant, command id)`s decided (here, or before a
    /// restart as the log shows): a command is decided once, and the copy
    /// of an outcome read back from the log is not applied again.
    decided: HashSet<u128, Digested>,
}

/// A fast hasher for keys of strings (the state is not exposed to untrusted
/// hash flooding more than the dataflow's own exchange is).
type Fast = std::hash::BuildHasherDefault<KeyHasher>;

/// FNV-1a over the key's bytes, finished with a multiply: fast for short keys.
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn digest(tenant: &str, id: &str) -> u128 {
    let parts = [tenant, id];
    ((hash_parts(0xdec1_0001, &parts) as u128) << 64) | hash_parts(0xdec1_0002, &parts) as u128
}

impl Decider {
    /// The state of a sku (default: unknown, empty).
    pub fn sku(&self, tenant: &str, sku: &str) -> Option<&SkuState> {
        self.skus.get(&(Name::from(tenant), Name::from(sku)))
    }

    /// Applies an event to the state. Events come de-duplicated
    /// ([`crate::dedup`]); the one copy this writer can see twice is its own
    /// outcome read back from the log, recognised by its command's id.
    pub fn apply(&mut self, event: &Event) {
        if let Some(command) = causing_command(&event.id) {
            if !self.decided.insert(digest(&event.tenant, command)) {
                return;
            }
        }
        let tenant = &event.tenant;
        match &event.body {
            EventBody::ReservationRejected { command_id, .. } => {
                self.decided.insert(digest(tenant, command_id));
            }
            EventBody::ItemCreated { sku, initial, .. } => {
                let state = self.skus.entry((tenant.clone(), sku.clone())).or_default();
                state.active = Some(true);
                for (location, qty) in initial {
                    state.locations.entry(location.clone()).or_default().0 += qty;
                }
                state.version += initial.len() as u64;
            }
            EventBody::ItemUpdated { .. } => {}
            EventBody::ItemDeleted { sku } => {
                let state = self.skus.entry((tenant.clone(), sku.clone())).or_default();
                if state.active.is_some() {
                    state.active = Some(false);
                }
            }
            EventBody::StockAdjusted {
                sku, location, qty, ..
            } => {
                let state = self.skus.entry((tenant.clone(), sku.clone())).or_default();
                state.locations.entry(location.clone()).or_default().0 += qty;
                state.version += 1;
            }
            EventBody::StockState {
                sku,
                location,
                on_hand,
                reserved,
                changes,
            } => {
                let state = self.skus.entry((tenant.clone(), sku.clone())).or_default();
                let row = state.locations.entry(location.clone()).or_default();
                row.0 += on_hand;
                row.1 += reserved;
                state.version += changes;
            }
            EventBody::StockLevel {
                sku,
                location,
                on_hand,
                reserved,
                version,
            } => {
                // Absolute states come from another system's writer: take them as they are.
                let state = self.skus.entry((tenant.clone(), sku.clone())).or_default();
                match state.leveled.get(location) {
                    Some(newest) if newest >= version => {}
                    Some(_) => {
                        state
                            .locations
                            .insert(location.clone(), (*on_hand, *reserved));
                        state.leveled.insert(location.clone(), *version);
                    }
                    None => {
                        state
                            .locations
                            .insert(location.clone(), (*on_hand, *reserved));
                        state.leveled.insert(location.clone(), *version);
                        state.version += 1;
                    }
                }
            }
            EventBody::StockReserved {
                sku,
                location,
                qty,
                reservation_id,
                ..
            } => {
                let state = self.skus.entry((tenant.clone(), sku.clone())).or_default();
                if state.reservations.contains_key(reservation_id) {
                    return;
                }
                state
                    .reservations
                    .insert(reservation_id.clone(), (location.clone(), *qty, true));
                state.locations.entry(location.clone()).or_default().1 += qty;
                state.version += 1;
                self.holders
                    .insert((tenant.clone(), reservation_id.clone()), sku.clone());
                if let Some(closing) = self
                    .early_closings
                    .remove(&(tenant.clone(), reservation_id.clone()))
                {
                    self.close(tenant, reservation_id, closing);
                }
            }
            EventBody::StockReleased { reservation_id } => {
                self.close(tenant, reservation_id, Closing::Released)
            }
            EventBody::StockCommitted { reservation_id } => {
                self.close(tenant, reservation_id, Closing::Committed)
            }
            EventBody::OrderPlaced { .. } | EventBody::OrderStatus { .. } => {}
        }
    }

    fn close(&mut self, tenant: &Name, reservation_id: &Name, closing: Closing) {
        let key = (tenant.clone(), reservation_id.clone());
        let Some(sku) = self.holders.get(&key) else {
            // Not (yet) known on this worker: remember the first closing.
            self.early_closings.entry(key).or_insert(closing);
            return;
        };
        let state = self
            .skus
            .get_mut(&(tenant.clone(), sku.clone()))
            .expect("a holder's sku has a state");
        let Some((location, qty, open)) = state.reservations.get_mut(reservation_id) else {
            return;
        };
        if !*open {
            return;
        }
        *open = false;
        let row = state.locations.entry(location.clone()).or_default();
        row.1 -= *qty;
        if closing == Closing::Committed {
            row.0 -= *qty;
        }
        state.version += 1;
    }

    /// Decides a command: `None` if its id was decided before, else its one
    /// outcome event (already applied to the state).
    pub fn decide(&mut self, command: &Command) -> Option<Event> {
        if self.decided.contains(&digest(&command.tenant, &command.id)) {
            return None;
        }
        let body = match self.check(command) {
            Ok(()) => command.intent.clone(),
            Err(reason) => EventBody::ReservationRejected {
                command_id: command.id.clone(),
                reason,
                sku: Some(command.sku.clone()),
            },
        };
        let event = Event {
            tenant: command.tenant.clone(),
            id: caused_event_id(&command.id, 0),
            seq: command.seq,
            ts: command.ts,
            body,
        };
        self.apply(&event);
        self.decided.insert(digest(&command.tenant, &command.id));
        Some(event)
    }

    /// Why the command cannot apply, if it cannot.
    fn check(&self, command: &Command) -> Result<(), String> {
        let empty = SkuState::default();
        let state = self
            .skus
            .get(&(command.tenant.clone(), command.sku.clone()))
            .unwrap_or(&empty);
        let sku = &command.sku;
        if let Some(expected) = command.expected_version {
            if expected != state.version {
                return Err(format!(
                    "version mismatch on {sku}: expected {expected}, current {}",
                    state.version
                ));
            }
        }
        let stock = |location: &Name| state.locations.get(location).copied().unwrap_or_default();
        match &command.intent {
            EventBody::ItemCreated { .. } if state.active == Some(true) => {
                Err(format!("item {sku} already exists"))
            }
            EventBody::ItemUpdated { .. } | EventBody::ItemDeleted { .. }
                if state.active != Some(true) =>
            {
                Err(format!("item {sku} does not exist"))
            }
            EventBody::StockAdjusted { location, qty, .. } => {
                let (on_hand, reserved) = stock(location);
                let after = on_hand + qty;
                if after < 0 {
                    Err(format!("adjusting {sku} at {location} by {qty} would leave on_hand {after} (on_hand {on_hand})"))
                } else if after < reserved {
                    Err(format!("adjusting {sku} at {location} by {qty} would leave on_hand {after} below reserved {reserved}"))
                } else {
                    Ok(())
                }
            }
            EventBody::StockReserved {
                location,
                qty,
                reservation_id,
                ..
            } => {
                let (on_hand, reserved) = stock(location);
                if state.reservations.contains_key(reservation_id)
                    || self
                        .holders
                        .contains_key(&(command.tenant.clone(), reservation_id.clone()))
                {
                    Err(format!("reservation {reservation_id} already exists"))
                } else if on_hand - reserved < *qty {
                    Err(format!(
                        "insufficient stock of {sku} at {location}: available {}, requested {qty}",
                        on_hand - reserved
                    ))
                } else {
                    Ok(())
                }
            }
            EventBody::StockReleased { reservation_id }
            | EventBody::StockCommitted { reservation_id } => {
                match state.reservations.get(reservation_id) {
                    None => Err(format!("unknown reservation {reservation_id} of {sku}")),
                    Some((_, _, false)) => {
                        Err(format!("reservation {reservation_id} is already closed"))
                    }
                    Some(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// What an epoch brought the decider: a capability to answer with (only
/// when it brought commands), its events and its commands.
type Pending<T> = (Option<Capability<T>>, Vec<Event>, Vec<Command>);

/// The decider as a timely operator: `events` (from the event log) and
/// `commands` in, outcome events out (one per command decided).
///
/// Events that name a sku go to its key's worker; releases and commits name
/// only a reservation and go to every worker (the holder applies them). Per
/// epoch, events are applied before commands are decided, each in position
/// order (`seq`, then the whole record), so the outcomes do not depend on the
/// number of workers or on how the input was cut into epochs, given the
/// commands of a key in one partition (they are keyed `tenant/sku`).
///
/// `order.place` commands run as sagas around it (see [`crate::orders`]).
pub fn decide<'scope>(
    events: VecCollection<'scope, u64, Event>,
    commands: VecCollection<'scope, u64, Command>,
) -> VecCollection<'scope, u64, Event> {
    let is_order = |command: &Command| matches!(command.intent, EventBody::OrderPlaced { .. });
    let orders = commands.clone().filter(move |c| is_order(c));
    let stock = commands.filter(move |c| !is_order(c));
    let (order_events, outcomes) =
        crate::orders::coordinate(events.clone(), orders, |line_commands| {
            decide_skus(events, stock.concat(line_commands))
        });
    outcomes.concat(order_events)
}

/// The per-sku decider alone.
fn decide_skus<'scope, T>(
    events: VecCollection<'scope, T, Event>,
    commands: VecCollection<'scope, T, Command>,
) -> VecCollection<'scope, T, Event>
where
    T: Timestamp + TotalOrder,
{
    let route = |tenant: &str, sku: &str| hash_parts(0xdec1_de00, &[tenant, sku]);
    let relevant = events.inner.filter(|(event, _, _)| {
        !matches!(
            event.body,
            EventBody::OrderPlaced { .. } | EventBody::OrderStatus { .. }
        )
    });
    let keyed = relevant
        .clone()
        .filter(|(event, _, _)| {
            event.body.sku().is_some()
                || !matches!(
                    event.body,
                    EventBody::StockReleased { .. } | EventBody::StockCommitted { .. }
                )
        })
        .exchange(
            move |(event, _, _): &(Event, T, isize)| match event.body.sku() {
                Some(sku) => route(&event.tenant, sku),
                None => hash_parts(0xdec1_de01, &[&event.tenant, &event.id]),
            },
        );
    let unkeyed = relevant
        .filter(|(event, _, _)| {
            event.body.sku().is_none()
                && matches!(
                    event.body,
                    EventBody::StockReleased { .. } | EventBody::StockCommitted { .. }
                )
        })
        .broadcast();
    let events = keyed.concat(unkeyed);
    let commands = commands
        .inner
        .exchange(move |(command, _, _): &(Command, T, isize)| {
            route(&command.tenant, &command.sku)
        });

    let outcomes = events.binary_frontier(
        commands,
        Pipeline,
        Pipeline,
        "decide per sku",
        |_capability, _info| {
            let mut decider = Decider::default();
            let mut stash: BTreeMap<T, Pending<T>> = BTreeMap::new();
            move |(events, events_frontier), (commands, commands_frontier), output| {
                events.for_each(|_capability, data| {
                    for (event, time, _diff) in data.drain(..) {
                        stash.entry(time).or_default().1.push(event);
                    }
                });
                commands.for_each(|capability, data| {
                    for (command, time, _diff) in data.drain(..) {
                        let slot = stash.entry(time.clone()).or_default();
                        if slot.0.is_none() {
                            slot.0 = Some(capability.delayed(&time, 0));
                        }
                        slot.2.push(command);
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    let time = entry.key();
                    if events_frontier.frontier().less_equal(time)
                        || commands_frontier.frontier().less_equal(time)
                    {
                        break;
                    }
                    let (_time, (capability, mut events, mut commands)) = entry.remove_entry();
                    events.sort_by(|a, b| (a.seq, a).cmp(&(b.seq, b)));
                    for event in &events {
                        decider.apply(event);
                    }
                    commands.sort_by(|a, b| (a.seq, a).cmp(&(b.seq, b)));
                    if let Some(capability) = capability {
                        let mut session = output.session(&capability);
                        for command in &commands {
                            if let Some(outcome) = decider.decide(command) {
                                session.give((outcome, capability.time().clone(), 1isize));
                            }
                        }
                    }
                }
            }
        },
    );
    VecCollection::new(outcomes)
}
