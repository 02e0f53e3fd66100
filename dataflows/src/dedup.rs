//! De-duplication of events by id.

use crate::model::Event;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Events with one row per `(tenant, id)`: the first delivery of an id stands
/// for all its copies, so a producer that retries (at-least-once delivery)
/// changes no view.
///
/// "First" is in time order (epoch), then in event order (source position
/// first) within an epoch. Copies of one id share a key and therefore a
/// partition, where that is log order: the same copy wins whatever the epoch
/// split or worker count.
///
/// Sources only ever insert events, so this is a streaming operator, not a
/// `reduce`: it remembers a 128-bit digest of each `(tenant, id)` seen (16
/// bytes per id) instead of arranging every event twice, and its output is
/// insert-only too. The input must be insert-only (positive differences).
pub fn dedup<'scope, T>(events: VecCollection<'scope, T, Event>) -> VecCollection<'scope, T, Event>
where
    T: Timestamp + Lattice + Ord + TotalOrder,
{
    let route = |update: &(Event, T, isize)| id_digest(&update.0) as u64;
    let output = events.inner.unary_frontier(Exchange::new(route), "dedup by id", |_capability, _info| {
        let mut seen: HashSet<u128> = HashSet::new();
        let mut stash: BTreeMap<T, (Capability<T>, Vec<Event>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                for (event, time, diff) in data.drain(..) {
                    debug_assert!(diff > 0, "dedup needs insert-only input");
                    let slot = stash.entry(time.clone()).or_insert_with(|| (capability.delayed(&time, 0), Vec::new()));
                    slot.1.push(event);
                }
            });
            while let Some(entry) = stash.first_entry() {
                if frontier.frontier().less_equal(entry.key()) {
                    break;
                }
                let (time, (capability, mut events)) = entry.remove_entry();
                events.sort_unstable();
                let mut session = output.session(&capability);
                for event in events {
                    if seen.insert(id_digest(&event)) {
                        session.give((event, time.clone(), 1isize));
                    }
                }
            }
        }
    });
    VecCollection::new(output)
}

/// 128-bit digest of `(tenant, id)`: two std hashers with different seeds, so
/// that a collision (which would drop an event) is beyond any realistic volume.
fn id_digest(event: &Event) -> u128 {
    let half = |seed: u64| {
        let mut hasher = std::hash::DefaultHasher::new();
        seed.hash(&mut hasher);
        event.tenant.hash(&mut hasher);
        event.id.hash(&mut hasher);
        hasher.finish()
    };
    ((half(0x5eed_0001) as u128) << 64) | half(0x5eed_0002) as u128
}
