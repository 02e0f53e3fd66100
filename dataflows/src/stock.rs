//! The `stock` and `stock_totals` views.
//!
//! Quantities travel in the difference of the collection ([`StockDelta`]), so
//! the view is an arrangement whose accumulated difference per key *is* the
//! row: no `reduce` over the history of a key.

use crate::model::{Event, EventBody, SkuKey, StockDelta, StockKey};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::VecCollection;
use timely::dataflow::operators::vec::Partition;
use timely::progress::Timestamp;

/// An arranged stock view: keyed by a hash of the key (so that sorting
/// compares one integer, not three strings), the key as value, the row in the
/// difference.
pub type StockArrangement<'scope, T, K> =
    Arranged<'scope, TraceAgent<ValSpine<u64, K, T, StockDelta>>>;

/// The deltas of one event: usually one (no allocation), several for an
/// `item.created` with initial stock in several locations.
enum Deltas {
    One(Option<(StockKey, StockDelta)>),
    Many(std::vec::IntoIter<(StockKey, StockDelta)>),
}

impl Iterator for Deltas {
    type Item = (StockKey, StockDelta);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Deltas::One(one) => one.take(),
            Deltas::Many(many) => many.next(),
        }
    }
}

/// How a reservation ended.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum Closing {
    /// Given back: reserved goes down, on hand stays.
    Released,
    /// Shipped: reserved and on hand both go down.
    Committed,
}

/// Stock per `(tenant, sku, location)`: `on_hand` (initial stock, adjustments,
/// commits), `reserved` (open reservations) and `updated_at`, as the
/// difference of each key.
///
/// A reservation counts once per `reservation_id` (the earliest in the log wins);
/// a release or commit applies to the reservation it names, once, whatever
/// order the two arrive in; a release of an unknown reservation changes nothing.
/// An absolute [`EventBody::StockLevel`] contributes the level of the highest
/// version seen for its key (it adds to deltas of the same key, if any).
pub fn stock<'scope, T>(
    events: VecCollection<'scope, T, Event>,
) -> VecCollection<'scope, T, StockKey, StockDelta>
where
    T: Timestamp + Lattice + Ord,
{
    stock_arranged(events).as_collection(|_hash, key| key.clone())
}

/// As [`stock`], arranged for operators that want to share the index.
pub fn stock_arranged<'scope, T>(
    events: VecCollection<'scope, T, Event>,
) -> StockArrangement<'scope, T, StockKey>
where
    T: Timestamp + Lattice + Ord,
{
    // Route each event to the one branch that uses it: no copies of events.
    let mut branches = events
        .inner
        .partition(5, |(event, time, diff)| {
            let branch = match event.body {
                EventBody::StockAdjusted { .. }
                | EventBody::StockState { .. }
                | EventBody::ItemCreated { .. } => 0,
                EventBody::StockReserved { .. } => 1,
                EventBody::StockReleased { .. } | EventBody::StockCommitted { .. } => 2,
                EventBody::StockLevel { .. } => 3,
                _ => 4,
            };
            (branch, (event, time, diff))
        })
        .into_iter()
        .map(VecCollection::new);
    let (direct, reservations, closings, levels) = (
        branches.next().expect("branch 0"),
        branches.next().expect("branch 1"),
        branches.next().expect("branch 2"),
        branches.next().expect("branch 3"),
    );

    let direct = direct.explode(|event| {
        let tenant = event.tenant;
        let updated_at = event.ts;
        match event.body {
            EventBody::StockAdjusted {
                sku, location, qty, ..
            } => Deltas::One(Some((
                StockKey {
                    tenant,
                    sku,
                    location,
                },
                StockDelta {
                    on_hand: qty,
                    reserved: 0,
                    changes: 1,
                    updated_at,
                },
            ))),
            EventBody::StockState {
                sku,
                location,
                on_hand,
                reserved,
                changes,
            } => Deltas::One(Some((
                StockKey {
                    tenant,
                    sku,
                    location,
                },
                StockDelta {
                    on_hand,
                    reserved,
                    changes: changes as i64,
                    updated_at,
                },
            ))),
            EventBody::ItemCreated { sku, initial, .. } => Deltas::Many(
                initial
                    .into_iter()
                    .map(|(location, qty)| {
                        let key = StockKey {
                            tenant: tenant.clone(),
                            sku: sku.clone(),
                            location,
                        };
                        (
                            key,
                            StockDelta {
                                on_hand: qty,
                                reserved: 0,
                                changes: 1,
                                updated_at,
                            },
                        )
                    })
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
            _ => Deltas::One(None),
        }
    });

    let reservations = reservations
        .flat_map(|event| match event.body {
            EventBody::StockReserved {
                sku,
                location,
                qty,
                reservation_id,
                ..
            } => Some((
                (event.tenant, reservation_id),
                (event.seq, event.ts, sku, location, qty),
            )),
            _ => None,
        })
        .reduce_named("reservations by id", |_id, copies, output| {
            output.push((copies[0].0.clone(), 1))
        });

    let closings = closings
        .flat_map(|event| {
            let closing = match event.body {
                EventBody::StockReleased { reservation_id } => (reservation_id, Closing::Released),
                EventBody::StockCommitted { reservation_id } => {
                    (reservation_id, Closing::Committed)
                }
                _ => return None,
            };
            Some(((event.tenant, closing.0), (event.seq, event.ts, closing.1)))
        })
        .reduce_named("reservation closings by id", |_id, copies, output| {
            output.push((*copies[0].0, 1))
        });

    let reserved =
        reservations
            .clone()
            .explode(|((tenant, _id), (_seq, ts, sku, location, qty))| {
                Some((
                    StockKey {
                        tenant,
                        sku,
                        location,
                    },
                    StockDelta {
                        on_hand: 0,
                        reserved: qty,
                        changes: 1,
                        updated_at: ts,
                    },
                ))
            });

    let closed = reservations
        .join_map(
            closings,
            |(tenant, _id), (_seq, _ts, sku, location, qty), (_seq2, closed_at, closing)| {
                let key = StockKey {
                    tenant: tenant.clone(),
                    sku: sku.clone(),
                    location: location.clone(),
                };
                let on_hand = if *closing == Closing::Committed {
                    -qty
                } else {
                    0
                };
                (
                    key,
                    StockDelta {
                        on_hand,
                        reserved: -qty,
                        changes: 1,
                        updated_at: *closed_at,
                    },
                )
            },
        )
        .explode(|(key, delta)| Some((key, delta)));

    // Absolute levels: the highest version of each key stands (of equal
    // versions, the earliest in the log). When a newer version arrives the
    // reduce retracts the old level and asserts the new one, so the difference
    // moves by new - old. `updated_at` is the newest event time of any level of
    // the key, so that it does not depend on which versions an epoch saw.
    let levels = levels
        .flat_map(|event| match event.body {
            EventBody::StockLevel {
                sku,
                location,
                on_hand,
                reserved,
                version,
            } => Some((
                StockKey {
                    tenant: event.tenant,
                    sku,
                    location,
                },
                (
                    version,
                    std::cmp::Reverse(event.seq),
                    on_hand,
                    reserved,
                    event.ts,
                ),
            )),
            _ => None,
        })
        .reduce_named("stock levels by version", |_key, levels, output| {
            let newest = levels
                .iter()
                .map(|(level, _)| *level)
                .max_by_key(|(version, seq, ..)| (*version, *seq))
                .expect("reduce input is not empty");
            let updated_at = levels
                .iter()
                .map(|(level, _)| level.4)
                .max()
                .expect("reduce input is not empty");
            output.push(((newest.2, newest.3, updated_at), 1));
        })
        .explode(|(key, (on_hand, reserved, updated_at))| {
            Some((
                key,
                StockDelta {
                    on_hand,
                    reserved,
                    changes: 1,
                    updated_at,
                },
            ))
        });

    direct
        .concat(reserved)
        .concat(closed)
        .concat(levels)
        .map(|key| (key_hash(&[&key.tenant, &key.sku, &key.location]), key))
        .arrange_by_key_named("stock by sku and location")
}

/// Stock per `(tenant, sku)`: the [`stock`] rows summed over locations.
pub fn stock_totals<'scope, T>(
    stock: VecCollection<'scope, T, StockKey, StockDelta>,
) -> VecCollection<'scope, T, SkuKey, StockDelta>
where
    T: Timestamp + Lattice + Ord,
{
    stock
        .map(|key| {
            (
                key_hash(&[&key.tenant, &key.sku]),
                SkuKey {
                    tenant: key.tenant,
                    sku: key.sku,
                },
            )
        })
        .arrange_by_key_named("stock totals by sku")
        .as_collection(|_hash, key| key.clone())
}

/// Hash of a key's parts, for arranging by an integer (see [`crate::model::hash_parts`]).
pub fn key_hash(parts: &[&str]) -> u64 {
    crate::model::hash_parts(0, parts)
}
