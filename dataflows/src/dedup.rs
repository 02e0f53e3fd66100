//! De-duplication of events by id, within a window, and the removal of the
//! decider's outcomes when they come back from the event log.

use crate::model::command::causing_command;
use crate::model::{hash_parts, Event};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Partition};
use timely::dataflow::operators::InputCapability;
use timely::dataflow::operators::{Capability, Concat, Exchange as _};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// How long [`dedup`] remembers an id: an id is forgotten once `ids` newer
/// ids have been remembered (over all workers: each keeps its share), or
/// once the clock moved `age_ms` past the epoch it was first seen in. A
/// copy of a forgotten id is taken as a new event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupWindow {
    /// Most ids remembered, over all workers.
    pub ids: usize,
    /// Ids first seen this long (milliseconds of the clock given to
    /// [`dedup`]) before the newest reading are forgotten; `None`: no limit
    /// by time.
    pub age_ms: Option<i64>,
}

impl DedupWindow {
    /// Remembers every id for ever (tests, benches of the dataflow alone).
    pub const UNBOUNDED: DedupWindow = DedupWindow {
        ids: usize::MAX,
        age_ms: None,
    };

    /// This worker's share of `ids` (digests are spread evenly over workers).
    fn per_worker(self, peers: usize) -> usize {
        self.ids.div_ceil(peers.max(1)).max(1)
    }
}

/// What [`dedup`] holds, summed over workers: for metrics.
#[derive(Debug, Default)]
pub struct DedupStats {
    /// Ids remembered now.
    pub remembered: AtomicI64,
    /// Ids forgotten since start (by count or by age).
    pub forgotten: AtomicU64,
}

/// What [`dedup`] reads beside the events.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
enum Side {
    /// A wall clock reading (ms).
    Clock(i64),
    /// The digest of an id to remember (from a checkpoint).
    Seen(u128),
}

/// The ids one worker remembers, oldest first: a set for lookups, a queue
/// in the order they were remembered (with the clock reading then) for
/// forgetting.
struct Remembered {
    ids: HashSet<u128, Digested>,
    order: VecDeque<(u128, i64)>,
    limit: usize,
}

impl Remembered {
    fn new(limit: usize) -> Remembered {
        Remembered {
            ids: HashSet::default(),
            order: VecDeque::new(),
            limit,
        }
    }

    fn contains(&self, id: u128) -> bool {
        self.ids.contains(&id)
    }

    /// Remembers `id`, first seen at clock reading `now`; false if it was already.
    fn insert(&mut self, id: u128, now: i64) -> bool {
        let new = self.ids.insert(id);
        if new {
            self.order.push_back((id, now));
        }
        new
    }

    /// Forgets the oldest ids beyond the limit, and those seen before
    /// `before`. Returns how many were forgotten.
    fn forget(&mut self, before: Option<i64>) -> usize {
        let mut forgotten = 0;
        while let Some(&(id, seen)) = self.order.front() {
            let too_many = self.ids.len() > self.limit;
            let too_old = before.is_some_and(|before| seen < before);
            if !too_many && !too_old {
                break;
            }
            self.order.pop_front();
            if self.ids.remove(&id) {
                forgotten += 1;
            }
        }
        forgotten
    }
}

/// Events with one row per `(tenant, id)` within `window`: the first
/// delivery of an id stands for all its copies, so a producer that retries
/// (at-least-once delivery) changes no view.
///
/// "First" is in time order (epoch), then by source position within an epoch
/// (ties broken by the whole event). Copies of one id share a key and so a
/// partition, where that is log order: the same copy wins whatever the epoch
/// split or worker count.
///
/// Sources only ever insert events, so this is a streaming operator, not a
/// `reduce`: it remembers a 128-bit digest of each `(tenant, id)` and its
/// output is insert-only too. The input must be insert-only (positive
/// differences). An id is remembered as long as `window` says; the clock
/// is a collection of readings (milliseconds), one or more per epoch, that
/// ages them (without one, only the count limit applies). Copies further
/// apart than the window depend on timing: each may count. `seen` are
/// digests ([`id_digest`]) to remember as if their events had been read:
/// the folded events of a compacted checkpoint ([`crate::compact`]).
///
/// Events with an empty id (internal ones) pass and are not remembered.
pub fn dedup<'scope, T>(
    events: VecCollection<'scope, T, Event>,
    clock: Option<VecCollection<'scope, T, i64>>,
    seen: Option<VecCollection<'scope, T, u128>>,
    window: DedupWindow,
    stats: std::sync::Arc<DedupStats>,
) -> VecCollection<'scope, T, Event>
where
    T: Timestamp + Lattice + Ord + TotalOrder,
{
    let scope = events.inner.scope();
    let peers = scope.peers();
    let route = |update: &(Event, T, isize)| id_digest(&update.0) as u64;
    let clock_given = clock.is_some();
    let clock = match clock {
        Some(clock) => clock.map(Side::Clock).inner.broadcast(),
        None => timely::dataflow::operators::generic::operator::empty(scope),
    };
    let seen = match seen {
        Some(seen) => seen
            .map(Side::Seen)
            .inner
            .exchange(|(side, _, _): &(Side, T, isize)| match side {
                Side::Seen(digest) => *digest as u64,
                Side::Clock(_) => 0,
            }),
        None => timely::dataflow::operators::generic::operator::empty(scope),
    };
    let output = events.inner.binary_frontier(
        clock.concat(seen),
        Exchange::new(route),
        Pipeline,
        "dedup by id",
        |_capability, _info| {
            let mut remembered = Remembered::new(window.per_worker(peers));
            let mut stash: Stash<T> = BTreeMap::new();
            let mut readings: BTreeMap<T, (i64, Vec<u128>)> = BTreeMap::new();
            // Digests to remember once the clock has a reading (or has none to give).
            let mut seeds: Vec<u128> = Vec::new();
            let clocked = window.age_ms.is_some() && clock_given;
            let mut now = i64::MIN;
            let mut first: HashMap<u128, Event, Digested> = HashMap::default();
            move |(input, frontier), (clock, clock_frontier), output| {
                input.for_each(|capability, data| stash_by_time(&mut stash, &capability, data));
                clock.for_each(|_capability, data| {
                    for (side, time, _diff) in data.drain(..) {
                        let slot = readings.entry(time).or_insert((i64::MIN, Vec::new()));
                        match side {
                            Side::Clock(reading) => slot.0 = slot.0.max(reading),
                            Side::Seen(digest) => slot.1.push(digest),
                        }
                    }
                });
                let complete = |time: &T| {
                    !frontier.frontier().less_equal(time)
                        && !clock_frontier.frontier().less_equal(time)
                };
                // Readings (and seeds) of an epoch are taken before its events.
                let mut take = |readings: &mut BTreeMap<T, (i64, Vec<u128>)>,
                                upto: &dyn Fn(&T) -> bool,
                                now: &mut i64,
                                remembered: &mut Remembered| {
                    while let Some(entry) = readings.first_entry() {
                        if !upto(entry.key()) {
                            break;
                        }
                        let (reading, digests) = entry.remove();
                        *now = (*now).max(reading);
                        seeds.extend(digests);
                    }
                    if !seeds.is_empty() && (*now != i64::MIN || !clocked) {
                        let mut added = 0;
                        for digest in seeds.drain(..) {
                            added += remembered.insert(digest, *now) as usize;
                        }
                        let forgotten = remembered.forget(None);
                        stats
                            .remembered
                            .fetch_add(added as i64 - forgotten as i64, Ordering::Relaxed);
                        stats
                            .forgotten
                            .fetch_add(forgotten as u64, Ordering::Relaxed);
                    }
                };
                while let Some(entry) = stash.first_entry() {
                    if !complete(entry.key()) {
                        break;
                    }
                    let (time, (capability, events)) = entry.remove_entry();
                    take(
                        &mut readings,
                        &|t: &T| t <= &time,
                        &mut now,
                        &mut remembered,
                    );
                    let before = window
                        .age_ms
                        .filter(|_| now != i64::MIN)
                        .map(|age| now.saturating_sub(age));
                    let mut forgotten = remembered.forget(before);
                    // The first copy of each new id in this epoch, whatever the arrival order.
                    let mut passed = Vec::new();
                    for event in events {
                        // Internal events (a checkpoint's folded states) have no id to share.
                        if event.id.is_empty() {
                            passed.push(event);
                            continue;
                        }
                        let digest = id_digest(&event);
                        if remembered.contains(digest) {
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
                    let added = first.len();
                    if let Some(capability) = capability {
                        let mut session = output.session(&capability);
                        for (digest, event) in first.drain() {
                            remembered.insert(digest, now);
                            session.give((event, time.clone(), 1isize));
                        }
                        for event in passed {
                            session.give((event, time.clone(), 1isize));
                        }
                    }
                    forgotten += remembered.forget(before);
                    stats
                        .remembered
                        .fetch_add(added as i64 - forgotten as i64, Ordering::Relaxed);
                    stats
                        .forgotten
                        .fetch_add(forgotten as u64, Ordering::Relaxed);
                }
                // Readings of completed epochs move the clock, even without events.
                take(&mut readings, &complete, &mut now, &mut remembered);
            }
        },
    );
    VecCollection::new(output)
}

/// `events` without the copies of `outcomes` that come back from the event
/// log: the decider's outcomes reach the views at once, and their copy,
/// read back from the log an epoch or more later, must not count again.
///
/// An outcome is remembered until its copy arrives, and at most `limit`
/// outcomes per worker are (the oldest first forgotten: outcomes that are
/// never written to a topic this engine reads do not come back).
pub fn without_echoes<'scope, T>(
    events: VecCollection<'scope, T, Event>,
    outcomes: VecCollection<'scope, T, Event>,
    limit: usize,
) -> VecCollection<'scope, T, Event>
where
    T: Timestamp + Lattice + Ord + TotalOrder,
{
    let peers = events.inner.scope().peers();
    let limit = limit.div_ceil(peers.max(1)).max(1);
    let route = |update: &(Event, T, isize)| id_digest(&update.0) as u64;
    // Only an event a command caused can be an outcome's copy: the rest
    // pass without being exchanged.
    let mut parts = events
        .inner
        .partition(2, |(event, time, diff)| {
            let caused = causing_command(&event.id).is_some();
            (caused as u64, (event, time, diff))
        })
        .into_iter();
    let (others, caused) = (parts.next().expect("part 0"), parts.next().expect("part 1"));
    let output = caused.binary_frontier(
        outcomes.inner,
        Exchange::new(route),
        Exchange::new(route),
        "without echoes of outcomes",
        |_capability, _info| {
            let mut awaited: HashSet<u128, Digested> = HashSet::default();
            let mut order: VecDeque<u128> = VecDeque::new();
            let mut stash: Stash<T> = BTreeMap::new();
            let mut said: BTreeMap<T, Vec<u128>> = BTreeMap::new();
            move |(input, frontier), (outcomes, outcomes_frontier), output| {
                input.for_each(|capability, data| stash_by_time(&mut stash, &capability, data));
                outcomes.for_each(|_capability, data| {
                    for (event, time, _diff) in data.drain(..) {
                        said.entry(time).or_default().push(id_digest(&event));
                    }
                });
                let complete = |time: &T| {
                    !frontier.frontier().less_equal(time)
                        && !outcomes_frontier.frontier().less_equal(time)
                };
                loop {
                    let next_said = said.keys().next().filter(|t| complete(t)).cloned();
                    let next_events = stash.keys().next().filter(|t| complete(t)).cloned();
                    match (next_said, next_events) {
                        // Outcomes of an epoch before its events (a copy never comes in the same epoch).
                        (Some(s), e) if e.as_ref().is_none_or(|e| s <= *e) => {
                            for digest in said.remove(&s).unwrap_or_default() {
                                if awaited.insert(digest) {
                                    order.push_back(digest);
                                }
                            }
                            while awaited.len() > limit {
                                match order.pop_front() {
                                    Some(oldest) => {
                                        awaited.remove(&oldest);
                                    }
                                    None => break,
                                }
                            }
                        }
                        (_, Some(e)) => {
                            let (capability, events) = stash.remove(&e).unwrap_or_default();
                            if let Some(capability) = capability {
                                let mut session = output.session(&capability);
                                for event in events {
                                    if !awaited.remove(&id_digest(&event)) {
                                        session.give((event, e.clone(), 1isize));
                                    }
                                }
                            }
                            // Drop the queue's entries of copies that came back.
                            if order.len() > 2 * awaited.len() + 1024 {
                                order.retain(|digest| awaited.contains(digest));
                            }
                        }
                        _ => break,
                    }
                }
            }
        },
    );
    VecCollection::new(output.concat(others))
}

/// Events by time, each time with a capability to answer at (once events came).
type Stash<T> = BTreeMap<T, (Option<Capability<T>>, Vec<Event>)>;

/// Moves an input's insert-only events into `stash`.
fn stash_by_time<T: Timestamp>(
    stash: &mut Stash<T>,
    capability: &InputCapability<T>,
    data: &mut Vec<(Event, T, isize)>,
) {
    for (event, time, diff) in data.drain(..) {
        debug_assert!(diff > 0, "insert-only input");
        let slot = stash.entry(time.clone()).or_default();
        if slot.0.is_none() {
            slot.0 = Some(capability.delayed(&time, 0));
        }
        slot.1.push(event);
    }
}

/// 128-bit digest of `(tenant, id)`: a collision (which would drop an event)
/// is beyond any realistic volume.
pub(crate) fn id_digest(event: &Event) -> u128 {
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

#[cfg(test)]
mod tests {
    use super::Remembered;

    #[test]
    fn forgets_the_oldest_beyond_the_limit() {
        let mut window = Remembered::new(3);
        for id in 1..=5u128 {
            window.insert(id, 0);
            window.forget(None);
        }
        assert!(!window.contains(1) && !window.contains(2));
        assert!((3..=5).all(|id| window.contains(id)));
    }

    #[test]
    fn forgets_by_age_only_what_is_older() {
        let mut window = Remembered::new(100);
        window.insert(1, 10);
        window.insert(2, 20);
        window.insert(3, 30);
        assert_eq!(window.forget(Some(20)), 1);
        assert!(!window.contains(1) && window.contains(2) && window.contains(3));
        // A second insert of a remembered id keeps its first reading.
        window.insert(2, 40);
        assert_eq!(window.forget(Some(31)), 2);
        assert!(!window.contains(2));
    }
}
