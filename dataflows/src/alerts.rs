//! The `low_stock` dataflow: alert transitions per `(tenant, sku, location)`.
//!
//! Two alert kinds per stock row: [`AlertKind::LowStock`] with the item's
//! threshold and [`AlertKind::OutOfStock`] with threshold 0. An alert is
//! raised when `available <= threshold` and cleared when
//! `available > threshold + hysteresis`: a level hovering at the threshold
//! raises once and stays raised. A deleted item raises nothing and clears
//! what it had.
//!
//! The rule is evaluated on each epoch's consolidated state, epoch after
//! epoch, per key: a dip that begins and ends inside one epoch is not seen.
//! With the default hysteresis of 0 whether an alert is active is a function
//! of the current state alone; with a hysteresis, a level inside the band
//! keeps the state it had, so it depends on the levels seen before (as the
//! rule intends).

use crate::model::{EventTime, ItemRow, Name, SkuKey, StockDelta, StockKey};
use differential_dataflow::difference::Semigroup;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Where thresholds come from when an item has no `reorder_point`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// The global default (`--low-stock-threshold`).
    pub default: i64,
    /// Per-tenant defaults, over the global one.
    pub tenants: BTreeMap<Name, i64>,
    /// How far above the threshold `available` must rise to clear (`--alert-hysteresis`).
    pub hysteresis: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            default: 10,
            tenants: BTreeMap::new(),
            hysteresis: 0,
        }
    }
}

/// What governs the alerts of one sku.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Low-stock threshold.
    pub threshold: i64,
    /// Level a replenishment should bring the stock to.
    pub target_level: i64,
}

impl Thresholds {
    /// The rule for a sku of `tenant` with catalogue row `item` (`None`: not
    /// in the catalogue). A deleted item has no rule: its alerts clear.
    pub fn rule(&self, tenant: &str, item: Option<&ItemRule>) -> Option<Rule> {
        if item.is_some_and(|item| !item.active) {
            return None;
        }
        let threshold = item
            .and_then(|item| item.reorder_point)
            .unwrap_or_else(|| self.tenants.get(tenant).copied().unwrap_or(self.default));
        let target_level = item
            .and_then(|item| item.target_level)
            .unwrap_or(threshold.saturating_mul(2));
        Some(Rule {
            threshold,
            target_level,
        })
    }
}

/// The catalogue fields the alerts use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemRule {
    /// Per-item threshold.
    pub reorder_point: Option<i64>,
    /// Per-item target level.
    pub target_level: Option<i64>,
    /// False once deleted.
    pub active: bool,
}

impl From<&ItemRow> for ItemRule {
    fn from(row: &ItemRow) -> ItemRule {
        ItemRule {
            reorder_point: row.reorder_point,
            target_level: row.target_level,
            active: row.active,
        }
    }
}

/// The two kinds of alert.
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
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AlertKind {
    /// `available <= threshold`.
    LowStock,
    /// `available <= 0`.
    OutOfStock,
}

impl AlertKind {
    /// Both kinds, in output order.
    pub const ALL: [AlertKind; 2] = [AlertKind::LowStock, AlertKind::OutOfStock];

    /// `low_stock` or `out_of_stock`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Parses [`AlertKind::name`].
    pub fn parse(name: &str) -> Option<AlertKind> {
        name.parse().ok()
    }

    /// The threshold of this kind under `rule`.
    fn threshold(self, rule: &Rule) -> i64 {
        match self {
            AlertKind::LowStock => rule.threshold,
            AlertKind::OutOfStock => 0,
        }
    }
}

/// One transition of one alert: raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Alert {
    /// The stock row.
    pub key: StockKey,
    /// Which alert.
    pub kind: AlertKind,
    /// Raised (true) or cleared (false).
    pub raised: bool,
    /// How many transitions this `(key, kind)` has had, this one included:
    /// odd when raised, even when cleared. With the key it names the
    /// transition, so a transition computed again (a restart replays the
    /// log) is recognised as one already written.
    pub transition: u64,
    /// `available` at the transition.
    pub available: i64,
    /// The threshold in force (for a clear by deletion: the last one).
    pub threshold: i64,
    /// The target level in force.
    pub target_level: i64,
    /// When raised, `target_level - available` (at least 0); 0 when cleared.
    pub suggested_reorder_qty: i64,
    /// Event time of the newest event of the stock row.
    pub ts: EventTime,
}

impl Alert {
    /// `alert.low_stock.raised`, `alert.out_of_stock.cleared`, ...
    pub fn event_type(&self) -> &'static str {
        match (self.kind, self.raised) {
            (AlertKind::LowStock, true) => "alert.low_stock.raised",
            (AlertKind::LowStock, false) => "alert.low_stock.cleared",
            (AlertKind::OutOfStock, true) => "alert.out_of_stock.raised",
            (AlertKind::OutOfStock, false) => "alert.out_of_stock.cleared",
        }
    }

    /// A stable id of the transition: the same whenever it is computed again.
    pub fn id(&self) -> String {
        format!(
            "alert:{}:{}:{}/{}/{}",
            self.kind.name(),
            self.transition,
            self.key.tenant,
            self.key.sku,
            self.key.location
        )
    }
}

/// The state of one alert: what [`step`] needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertState {
    /// Raised and not cleared since.
    pub active: bool,
    /// Transitions so far.
    pub transitions: u64,
    /// Threshold and target when last raised.
    pub last_rule: Option<Rule>,
}

/// Applies the rule to one alert: `Some(raised)` on a transition.
pub fn step(
    state: &mut AlertState,
    kind: AlertKind,
    rule: Option<Rule>,
    hysteresis: i64,
    available: i64,
) -> Option<bool> {
    let transition = match (state.active, rule) {
        (false, Some(rule)) if available <= kind.threshold(&rule) => Some(true),
        (true, None) => Some(false),
        (true, Some(rule)) if available > kind.threshold(&rule).saturating_add(hysteresis) => {
            Some(false)
        }
        _ => None,
    };
    // An active (or now raised) alert follows its rule; a clear by deletion keeps the last one.
    if state.active || transition.is_some() {
        state.last_rule = rule.or(state.last_rule);
    }
    if let Some(raised) = transition {
        state.active = raised;
        state.transitions += 1;
    }
    transition
}

/// Builds the [`Alert`] of a transition.
pub fn alert(key: StockKey, kind: AlertKind, state: &AlertState, row: &StockDelta) -> Alert {
    let rule = state.last_rule.unwrap_or(Rule {
        threshold: 0,
        target_level: 0,
    });
    let available = row.available();
    Alert {
        key,
        kind,
        raised: state.active,
        transition: state.transitions,
        available,
        threshold: kind.threshold(&rule),
        target_level: rule.target_level,
        suggested_reorder_qty: if state.active {
            rule.target_level.saturating_sub(available).max(0)
        } else {
            0
        },
        ts: row.updated_at,
    }
}

/// Alert states to resume from (a checkpoint's alerts) and the last epoch
/// of those that restore the rest of the state (a checkpoint's events).
///
/// A stock row first seen by the operator takes its restored state instead
/// of the default; up to `epoch` no rule is applied (the levels being
/// rebuilt are older than or equal to the states, which already reflect
/// them): an active alert only follows its rule to the current catalogue,
/// as a step would have. After it the rule applies as always.
#[derive(Clone, Debug)]
pub struct Restored<T> {
    /// The last epoch that carries restored input.
    pub epoch: T,
    /// The states, per stock row and kind.
    pub states: Arc<HashMap<StockKey, [AlertState; 2]>>,
}

impl AlertState {
    /// The state that `alert`, the latest transition of its `(key, kind)`, left.
    pub fn after(alert: &Alert) -> AlertState {
        AlertState {
            active: alert.raised,
            transitions: alert.transition,
            last_rule: Some(Rule {
                threshold: alert.threshold,
                target_level: alert.target_level,
            }),
        }
    }
}

/// foldhash: keys are hashed per touched row per epoch; SipHash showed in profiles.
type FastHash = foldhash::fast::RandomState;

/// An epoch's input at one worker: stock deltas and item row changes.
type Pending<T> = (
    Option<Capability<T>>,
    Vec<(StockKey, StockDelta)>,
    Vec<(SkuKey, ItemRow, isize)>,
);

/// Alert transitions from the `stock` view (quantities in the difference)
/// and the `items` view. Each transition is one update with difference +1
/// at the epoch where it happened, in `(key, kind)` order within an epoch.
///
/// Keys are spread over workers by `(tenant, sku)`, so a sku's locations and
/// its catalogue row meet on one worker; the result does not depend on the
/// number of workers.
pub fn low_stock<'scope, T>(
    stock: VecCollection<'scope, T, StockKey, StockDelta>,
    items: VecCollection<'scope, T, (SkuKey, ItemRow)>,
    thresholds: Thresholds,
    restored: Option<Restored<T>>,
) -> VecCollection<'scope, T, Alert>
where
    T: Timestamp + TotalOrder,
{
    let route = |tenant: &str, sku: &str| crate::model::hash_parts(0xa1e7, &[tenant, sku]);
    let stock_pact =
        Exchange::new(move |(key, _, _): &(StockKey, T, StockDelta)| route(&key.tenant, &key.sku));
    let items_pact = Exchange::new(move |((key, _), _, _): &((SkuKey, ItemRow), T, isize)| {
        route(&key.tenant, &key.sku)
    });
    let alerts = stock.inner.binary_frontier(
        items.inner,
        stock_pact,
        items_pact,
        "low stock",
        move |_capability, _info| {
            let mut stash: BTreeMap<T, Pending<T>> = BTreeMap::new();
            // Per stock row: its quantities and the state of its two alerts (one lookup for all three).
            let mut rows: HashMap<StockKey, (StockDelta, [AlertState; 2]), FastHash> =
                HashMap::default();
            let mut locations: HashMap<SkuKey, Vec<Name>, FastHash> = HashMap::default();
            let mut catalogue: HashMap<SkuKey, ItemRule, FastHash> = HashMap::default();
            move |(stock, stock_frontier), (items, items_frontier), output| {
                stock.for_each(|capability, data| {
                    for (key, time, delta) in data.drain(..) {
                        let slot = stash.entry(time.clone()).or_default();
                        slot.0.get_or_insert_with(|| capability.delayed(&time, 0));
                        slot.1.push((key, delta));
                    }
                });
                items.for_each(|capability, data| {
                    for ((key, row), time, diff) in data.drain(..) {
                        let slot = stash.entry(time.clone()).or_default();
                        slot.0.get_or_insert_with(|| capability.delayed(&time, 0));
                        slot.2.push((key, row, diff));
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    let time = entry.key();
                    if stock_frontier.frontier().less_equal(time)
                        || items_frontier.frontier().less_equal(time)
                    {
                        break;
                    }
                    let (time, (capability, deltas, item_changes)) = entry.remove_entry();
                    let restoring = restored.as_ref().is_some_and(|r| time.less_equal(&r.epoch));
                    let mut touched: Vec<StockKey> = Vec::with_capacity(deltas.len());
                    for (key, delta) in deltas {
                        match rows.entry(key.clone()) {
                            std::collections::hash_map::Entry::Occupied(mut row) => {
                                row.get_mut().0.plus_equals(&delta)
                            }
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                locations
                                    .entry(SkuKey {
                                        tenant: key.tenant.clone(),
                                        sku: key.sku.clone(),
                                    })
                                    .or_default()
                                    .push(key.location.clone());
                                let states = restored
                                    .as_ref()
                                    .and_then(|r| r.states.get(&key).copied())
                                    .unwrap_or_default();
                                slot.insert((delta, states));
                            }
                        }
                        touched.push(key);
                    }
                    for (key, rule) in consolidate_items(item_changes) {
                        match rule {
                            Some(rule) => catalogue.insert(key.clone(), rule),
                            None => catalogue.remove(&key),
                        };
                        for location in locations.get(&key).into_iter().flatten() {
                            touched.push(StockKey {
                                tenant: key.tenant.clone(),
                                sku: key.sku.clone(),
                                location: location.clone(),
                            });
                        }
                    }
                    touched.sort_unstable();
                    touched.dedup();
                    let Some(capability) = capability else {
                        continue;
                    };
                    let mut session = output.session(&capability);
                    let mut sku = SkuKey {
                        tenant: Name::default(),
                        sku: Name::default(),
                    };
                    for key in touched {
                        let Some((row, states)) = rows.get_mut(&key) else {
                            continue;
                        };
                        if sku.tenant != key.tenant || sku.sku != key.sku {
                            sku = SkuKey {
                                tenant: key.tenant.clone(),
                                sku: key.sku.clone(),
                            };
                        }
                        let rule = thresholds.rule(&key.tenant, catalogue.get(&sku));
                        if restoring {
                            for state in states.iter_mut().filter(|s| s.active) {
                                state.last_rule = rule.or(state.last_rule);
                            }
                            continue;
                        }
                        for (kind, state) in AlertKind::ALL.into_iter().zip(states.iter_mut()) {
                            if step(state, kind, rule, thresholds.hysteresis, row.available())
                                .is_some()
                            {
                                session.give((
                                    alert(key.clone(), kind, state, row),
                                    capability.time().clone(),
                                    1isize,
                                ));
                            }
                        }
                    }
                }
            }
        },
    );
    VecCollection::new(alerts)
}

/// An epoch's changes of item rows, per sku: the row now (`None`: gone).
fn consolidate_items(changes: Vec<(SkuKey, ItemRow, isize)>) -> BTreeMap<SkuKey, Option<ItemRule>> {
    let mut net: BTreeMap<(SkuKey, ItemRow), isize> = BTreeMap::new();
    for (key, row, diff) in changes {
        *net.entry((key, row)).or_default() += diff;
    }
    let mut rules: BTreeMap<SkuKey, Option<ItemRule>> = BTreeMap::new();
    for ((key, row), diff) in net {
        if diff > 0 {
            rules.insert(key, Some(ItemRule::from(&row)));
        } else if diff < 0 {
            rules.entry(key).or_insert(None);
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: i64) -> Option<Rule> {
        Some(Rule {
            threshold,
            target_level: threshold * 2,
        })
    }

    #[test]
    fn hysteresis_keeps_a_hovering_level_raised() {
        let mut state = AlertState::default();
        let levels = [12, 10, 11, 10, 12, 13, 9];
        let transitions: Vec<Option<bool>> = levels
            .iter()
            .map(|&a| step(&mut state, AlertKind::LowStock, rule(10), 2, a))
            .collect();
        assert_eq!(
            transitions,
            [None, Some(true), None, None, None, Some(false), Some(true)]
        );
        assert_eq!(state.transitions, 3);
    }

    #[test]
    fn out_of_stock_uses_zero_and_deletion_clears() {
        let mut state = AlertState::default();
        assert_eq!(
            step(&mut state, AlertKind::OutOfStock, rule(10), 0, 1),
            None
        );
        assert_eq!(
            step(&mut state, AlertKind::OutOfStock, rule(10), 0, 0),
            Some(true)
        );
        assert_eq!(
            step(&mut state, AlertKind::OutOfStock, None, 0, 0),
            Some(false),
            "deleted item clears"
        );
        assert_eq!(
            step(&mut state, AlertKind::OutOfStock, None, 0, -5),
            None,
            "deleted item raises nothing"
        );
    }

    #[test]
    fn thresholds_fall_back_from_item_to_tenant_to_global() {
        let thresholds = Thresholds {
            default: 10,
            tenants: BTreeMap::from([(Name::from("acme"), 4)]),
            hysteresis: 0,
        };
        let item = ItemRule {
            reorder_point: Some(7),
            target_level: None,
            active: true,
        };
        assert_eq!(
            thresholds.rule("acme", Some(&item)),
            Some(Rule {
                threshold: 7,
                target_level: 14
            })
        );
        assert_eq!(
            thresholds.rule("acme", None),
            Some(Rule {
                threshold: 4,
                target_level: 8
            })
        );
        assert_eq!(
            thresholds.rule("other", None),
            Some(Rule {
                threshold: 10,
                target_level: 20
            })
        );
        let targeted = ItemRule {
            reorder_point: None,
            target_level: Some(50),
            active: true,
        };
        assert_eq!(
            thresholds.rule("other", Some(&targeted)),
            Some(Rule {
                threshold: 10,
                target_level: 50
            })
        );
        assert_eq!(
            thresholds.rule(
                "acme",
                Some(&ItemRule {
                    active: false,
                    ..item
                })
            ),
            None
        );
    }
}
