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
    /// The events to restore: one `StockState` per folded key first, then
    /// every event kept, in log order.
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
    let mut newest_ts = EventTime::MIN;
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
        newest_ts = newest_ts.max(event.ts);
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

    // KPI cells past retention are dropped, as the KPI table drops them.
    let newest_hour = cells
        .keys()
        .filter(|key| key.window == Window::Hour)
        .map(|key| key.bucket)
        .chain((newest_ts != EventTime::MIN).then(|| Window::Hour.bucket(newest_ts)))
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

    let mut events: Vec<Event> = states
        .into_iter()
        .map(|(key, (on_hand, reserved, changes, ts))| Event {
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
        })
        .collect();
    events.extend(kept);
    Compacted {
        events,
        cells,
        ids: ids.into(),
    }
}
