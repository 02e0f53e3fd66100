//! Compaction of a checkpoint's events: the history of each stock key's
//! adjustments folded into one [`EventBody::StockState`], so that a
//! checkpoint grows with the keys, not with the history.
//!
//! What a folded event contributed elsewhere is carried beside the events:
//! its KPI cells ([`Compacted::cells`], sums, so adding them up is exact)
//! and its id ([`Compacted::ids`], the most recent ones, for the
//! de-duplication window). Restoring the compacted events, the cells and
//! the ids, then reading on, gives every view, decision and KPI the
//! uninterrupted run gives (`tests/compact.rs`).
//!
//! Folded: `stock.adjusted` events that no command caused, of keys that
//! never had an absolute `stock.level` (a level replaces the decider's
//! state, so the order of levels and adjustments matters there), and that
//! no `min`/`max` custom KPI reads (an extreme is not a sum). Everything
//! else is kept as it was read, de-duplicated.

use crate::dedup::id_digest;
use crate::kpis::{event_cells, Cell, KpiKey, KpiSpec, Window};
use crate::model::command::causing_command;
use crate::model::{Event, EventBody, EventTime, Name, StockKey};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// What compaction needs to know of the engine's configuration.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The custom KPIs (their cells are carried; `min`/`max` ones stop folding).
    pub specs: Vec<KpiSpec>,
    /// KPI cells of buckets that ended this long before the newest hour are dropped.
    pub kpi_retention_ms: i64,
    /// Most ids of folded events carried for de-duplication (the newest).
    pub ids: usize,
}

/// A compacted history.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compacted {
    /// The events to restore: every event kept, in log order, with one
    /// `StockState` per folded key after the last kept event of its sku.
    pub events: Vec<Event>,
    /// The KPI cells of the folded events (not of the events kept).
    pub cells: Vec<(KpiKey, Cell)>,
    /// Digests of the `(tenant, id)`s of folded events, oldest first.
    pub ids: Vec<u128>,
}

/// Compacts `events` (as read, in log order, copies included), continuing
/// an earlier compaction `base` (whose events come first in `events`'
/// place: pass `base` and the events read since).
pub fn compact(base: Compacted, events: Vec<Event>, rules: &Rules) -> Compacted {
    let mut seen: HashSet<u128> = base.ids.iter().copied().collect();
    let mut ids: VecDeque<u128> = base.ids.into_iter().collect();
    let mut cells: HashMap<KpiKey, Cell> = HashMap::new();
    for (key, cell) in base.cells {
        use differential_dataflow::difference::Semigroup;
        cells.entry(key).or_default().plus_equals(&cell);
    }
    let all: Vec<Event> = base.events.into_iter().chain(events).collect();
    // Keys with a level anywhere are not folded.
    let leveled: HashSet<(Name, Name, Name)> = all
        .iter()
        .filter_map(|event| match &event.body {
            EventBody::StockLevel { sku, location, .. } => {
                Some((event.tenant.clone(), sku.clone(), location.clone()))
            }
            _ => None,
        })
        .collect();
    let extremes: Vec<&KpiSpec> = rules
        .specs
        .iter()
        .filter(|spec| {
            matches!(
                spec.aggregate,
                crate::kpis::Aggregate::Min | crate::kpis::Aggregate::Max
            )
        })
        .collect();

    let mut states: BTreeMap<StockKey, (i64, i64, u64, EventTime)> = BTreeMap::new();
    let mut kept = Vec::new();
    for event in all {
        if let EventBody::StockState {
            sku,
            location,
            on_hand,
            reserved,
            changes,
        } = &event.body
        {
            let key = StockKey {
                tenant: event.tenant.clone(),
                sku: sku.clone(),
                location: location.clone(),
            };
            let state = states.entry(key).or_insert((0, 0, 0, EventTime::MIN));
            state.0 += on_hand;
            state.1 += reserved;
            state.2 += changes;
            state.3 = state.3.max(event.ts);
            continue;
        }
        // One copy per id: the first in the log, as the dataflow keeps.
        let digest = id_digest(&event);
        if !seen.insert(digest) {
            continue;
        }
        let folded = match &event.body {
            EventBody::StockAdjusted {
                sku, location, qty, ..
            } if causing_command(&event.id).is_none()
                && !leveled.contains(&(event.tenant.clone(), sku.clone(), location.clone()))
                && extremes.iter().all(|spec| spec.evaluate(&event).is_none()) =>
            {
                Some((
                    StockKey {
                        tenant: event.tenant.clone(),
                        sku: sku.clone(),
                        location: location.clone(),
                    },
                    *qty,
                ))
            }
            _ => None,
        };
        match folded {
            Some((key, qty)) => {
                let state = states.entry(key).or_insert((0, 0, 0, EventTime::MIN));
                state.0 += qty;
                state.2 += 1;
                state.3 = state.3.max(event.ts);
                for (key, cell) in event_cells(&event, &rules.specs) {
                    use differential_dataflow::difference::Semigroup;
                    cells.entry(key).or_default().plus_equals(&cell);
                }
                ids.push_back(digest);
            }
            None => kept.push(event),
        }
    }
    while ids.len() > rules.ids {
        ids.pop_front();
    }

    // KPI cells past retention are dropped, as the KPI table drops them
    // (counted from the newest hour of these cells: never past the table's).
    let newest_hour = cells
        .keys()
        .filter(|key| key.window == Window::Hour)
        .map(|key| key.bucket)
        .max();
    let mut cells: Vec<(KpiKey, Cell)> = cells
        .into_iter()
        .filter(|(key, cell)| {
            use differential_dataflow::difference::IsZero;
            let ends = key.bucket + key.window.millis();
            !cell.is_zero()
                && newest_hour.is_none_or(|newest| ends > newest - rules.kpi_retention_ms)
        })
        .collect();
    cells.sort();

    // Each sku's states go right after the last event kept for it (its
    // catalogue entry, usually), so that a restore meets a row's parts in
    // one epoch and the views change once; states of other skus go last.
    let mut by_sku: BTreeMap<(Name, Name), Vec<Event>> = BTreeMap::new();
    for (key, (on_hand, reserved, changes, ts)) in states {
        by_sku
            .entry((key.tenant.clone(), key.sku.clone()))
            .or_default()
            .push(Event {
                tenant: key.tenant,
                id: Name::default(),
                seq: 0,
                ts,
                body: EventBody::StockState {
                    sku: key.sku,
                    location: key.location,
                    on_hand,
                    reserved,
                    changes,
                },
            });
    }
    let mut last_kept: HashMap<(Name, Name), usize> = HashMap::new();
    for (index, event) in kept.iter().enumerate() {
        if let Some(sku) = event.body.sku() {
            last_kept.insert((event.tenant.clone(), sku.clone()), index);
        }
    }
    let mut after: HashMap<usize, Vec<Event>> = HashMap::new();
    for (index, sku) in last_kept.into_iter().map(|(sku, index)| (index, sku)) {
        if let Some(states) = by_sku.remove(&sku) {
            after.insert(index, states);
        }
    }
    let mut events = Vec::with_capacity(kept.len() + after.len() + by_sku.len());
    for (index, event) in kept.into_iter().enumerate() {
        events.push(event);
        events.extend(after.remove(&index).unwrap_or_default());
    }
    events.extend(by_sku.into_values().flatten());
    Compacted {
        events,
        cells,
        ids: ids.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adjusted(id: &str, ts: EventTime, location: &str) -> Event {
        Event {
            tenant: Name::from("t"),
            id: Name::from(id),
            seq: 0,
            ts,
            body: EventBody::StockAdjusted {
                sku: Name::from("s"),
                location: Name::from(location),
                qty: -2,
                reason: Name::from("sale"),
            },
        }
    }

    #[test]
    fn cells_past_retention_are_dropped_and_ids_kept_to_the_window() {
        let day = 86_400_000;
        let rules = Rules {
            specs: Vec::new(),
            kpi_retention_ms: day,
            ids: 2,
        };
        let events = vec![
            adjusted("old", 0, "a"),
            adjusted("new", 10 * day, "a"),
            adjusted("newer", 10 * day + 1, "b"),
            // A copy: dropped, not folded twice.
            adjusted("new", 10 * day, "a"),
        ];
        let compacted = compact(Compacted::default(), events, &rules);
        assert_eq!(compacted.events.len(), 2, "one state per key");
        let EventBody::StockState {
            on_hand, changes, ..
        } = &compacted.events[0].body
        else {
            panic!("a state first")
        };
        assert_eq!((*on_hand, *changes), (-4, 2));
        assert_eq!(compacted.events[0].ts, 10 * day);
        assert!(compacted.cells.iter().all(|(key, _)| key.bucket >= 9 * day));
        assert!(!compacted.cells.is_empty());
        assert_eq!(compacted.ids.len(), 2, "the newest two");
    }
}
