//! De-duplication of events by id.

use crate::model::{hash_parts, Event};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Events with one row per `(tenant, id)`: the first delivery of an id stands
/// for all its copies, so a producer that retries (at-least-once delivery)
/// changes no view.
///
/// "First" is in time order (epoch), then by source position within an epoch
/// (ties broken by the whole event). Copies of one id share a key and so a
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
    let output =
        events
            .inner
            .unary_frontier(Exchange::new(route), "dedup by id", |_capability, _info| {
                let mut seen: HashSet<u128, Digested> = HashSet::default();
                let mut stash: BTreeMap<T, (Capability<T>, Vec<Event>)> = BTreeMap::new();
                let mut first: HashMap<u128, Event, Digested> = HashMap::default();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (event, time, diff) in data.drain(..) {
                            debug_assert!(diff > 0, "dedup needs insert-only input");
                            let slot = stash
                                .entry(time.clone())
                                .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()));
                            slot.1.push(event);
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        if frontier.frontier().less_equal(entry.key()) {
                            break;
                        }
                        let (time, (capability, events)) = entry.remove_entry();
                        // The first copy of each new id in this epoch, whatever the arrival order.
                        for event in events {
                            let digest = id_digest(&event);
                            if seen.contains(&digest) {
                                continue;
                            }
                            match first.get_mut(&digest) {
                                Some(kept) if (kept.seq, &*kept) <= (event.seq, &event) => {}
                                Some(kept) => *kept = event,
                                None => {
                                    first.insert(digest, event);
                                }
                            }
                        }
                        let mut session = output.session(&capability);
                        for (digest, event) in first.drain() {
                            seen.insert(digest);
                            session.give((event, time.clone(), 1isize));
                        }
                    }
                }
            });
    VecCollection::new(output)
}

/// 128-bit digest of `(tenant, id)`: a collision (which would drop an event)
/// is beyond any realistic volume.
fn id_digest(event: &Event) -> u128 {
    let parts = [event.tenant.as_str(), event.id.as_str()];
    ((hash_parts(0x5eed_0001, &parts) as u128) << 64) | hash_parts(0x5eed_0002, &parts) as u128
}

/// Digests are already uniform: hash tables use their low bits as they are.
pub(crate) type Digested = BuildHasherDefault<DigestHasher>;

/// A `Hasher` that passes a digest through.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ b as u64 ^ (self.0 >> 56);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}
