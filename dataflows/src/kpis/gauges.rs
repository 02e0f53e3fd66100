//! The per-tenant gauges (point in time): what each sku contributes
//! ([`SkuGauge`]), their sums per tenant ([`Gauges`]), and [`GaugeBook`],
//! which keeps the contributions and says how the sums move as skus change.
//!
//! Pure bookkeeping: the engine's publisher owns one book, tells it which
//! skus each publish changed, and applies the moves it hands back to the
//! snapshot's gauges.

use super::KpiValue;
use crate::alert_rows::AlertPair;
use crate::model::{ItemRow, Name, SkuKey};
use std::collections::HashMap;

/// What one sku adds to its tenant's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkuGauge {
    /// 1 when the item is in the catalogue and not deleted.
    pub active: i64,
    /// On hand × price (ten-thousandths), for active items.
    pub value: i128,
    /// 1 when some location of the sku has an active low-stock alert.
    pub low: i64,
    /// 1 when some location has an active out-of-stock alert.
    pub out: i64,
}

impl SkuGauge {
    /// The contribution of a sku with catalogue row `item`, `on_hand` over
    /// its locations, and whether any location has each alert active.
    pub fn of(item: Option<&ItemRow>, on_hand: i64, low: bool, out: bool) -> SkuGauge {
        let active = item.filter(|item| item.active);
        SkuGauge {
            active: active.is_some() as i64,
            value: active.map_or(0, |item| {
                on_hand as i128 * item.price.ten_thousandths() as i128
            }),
            low: low as i64,
            out: out as i64,
        }
    }
}

/// The point-in-time gauges of one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Skus with an active low-stock alert at some location.
    pub low_stock_skus: i64,
    /// Skus with an active out-of-stock alert at some location.
    pub out_of_stock_skus: i64,
    /// Σ on hand × price over active items (ten-thousandths).
    pub inventory_value: i128,
    /// Items in the catalogue and not deleted.
    pub skus_active: i64,
}

impl Gauges {
    /// Replaces a sku's contribution `before` with `after`.
    pub fn replace(&mut self, before: SkuGauge, after: SkuGauge) {
        self.low_stock_skus += after.low - before.low;
        self.out_of_stock_skus += after.out - before.out;
        self.inventory_value += after.value - before.value;
        self.skus_active += after.active - before.active;
    }

    /// The gauges as `(metric, value)` pairs.
    pub fn values(&self) -> [(&'static str, KpiValue); 4] {
        [
            ("low_stock_skus", KpiValue::Int(self.low_stock_skus as i128)),
            (
                "out_of_stock_skus",
                KpiValue::Int(self.out_of_stock_skus as i128),
            ),
            ("inventory_value", KpiValue::Money(self.inventory_value)),
            ("skus_active", KpiValue::Int(self.skus_active as i128)),
        ]
    }
}

/// What the book reads of the current views, one sku at a time.
pub trait SkuLookup {
    /// The sku's row of the `items` view.
    fn item(&self, key: &SkuKey) -> Option<&ItemRow>;
    /// Its on hand over all locations (its `stock_totals` row; 0 without one).
    fn on_hand(&self, key: &SkuKey) -> i64;
    /// Whether some location of the sku has its low-stock alert raised, and
    /// whether some has its out-of-stock alert raised (see [`raised`]).
    fn alerts(&self, key: &SkuKey) -> (bool, bool);
}

/// Whether any of `pairs` (the alerts of one sku's locations) has its
/// low-stock alert raised, and whether any has its out-of-stock alert raised.
pub fn raised<'a>(pairs: impl IntoIterator<Item = &'a AlertPair>) -> (bool, bool) {
    let mut flags = (false, false);
    for pair in pairs {
        flags.0 |= pair.low_stock.as_ref().is_some_and(|a| a.raised);
        flags.1 |= pair.out_of_stock.as_ref().is_some_and(|a| a.raised);
    }
    flags
}

/// A sku's contribution moving in its tenant's gauges: `(tenant, before,
/// after)`, to apply with [`Gauges::replace`].
pub type GaugeMove = (Name, SkuGauge, SkuGauge);

/// The gauges' bookkeeping: what each sku contributes now (a sku that
/// contributes nothing is not kept).
#[derive(Debug, Default)]
pub struct GaugeBook {
    skus: HashMap<SkuKey, SkuGauge, foldhash::fast::RandomState>,
}

impl GaugeBook {
    /// Recomputes from `views` the contribution of every sku whose item or
    /// stock changed (`touched`) or that had an alert transition (`alerted`),
    /// and returns those that moved, in sku order (none with `before ==
    /// after`). Only alerted skus look their alerts up; the others keep the
    /// alert flags they had, so a publish of stock changes costs two lookups
    /// per sku.
    pub fn update(
        &mut self,
        views: &impl SkuLookup,
        mut touched: Vec<SkuKey>,
        mut alerted: Vec<SkuKey>,
    ) -> Vec<GaugeMove> {
        alerted.sort_unstable();
        alerted.dedup();
        touched.extend(alerted.iter().cloned());
        touched.sort_unstable();
        touched.dedup();
        let mut moves = Vec::new();
        for key in touched {
            let before = self.skus.get(&key).copied().unwrap_or_default();
            let (low, out) = if alerted.binary_search(&key).is_ok() {
                views.alerts(&key)
            } else {
                (before.low == 1, before.out == 1)
            };
            let after = SkuGauge::of(views.item(&key), views.on_hand(&key), low, out);
            if before == after {
                continue;
            }
            if after == SkuGauge::default() {
                self.skus.remove(&key);
            } else {
                self.skus.insert(key.clone(), after);
            }
            moves.push((key.tenant, before, after));
        }
        moves
    }

    /// How many skus contribute something (the book's size).
    pub fn contributing(&self) -> usize {
        self.skus.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Alert, AlertKind};
    use crate::model::{Money, StockKey};

    #[test]
    fn gauges_replace_contributions() {
        let item = ItemRow {
            name: "x".into(),
            price: Money::from_cents(250),
            category: "".into(),
            reorder_point: None,
            target_level: None,
            active: true,
            updated_at: 0,
        };
        let mut gauges = Gauges::default();
        let a = SkuGauge::of(Some(&item), 4, true, false);
        gauges.replace(SkuGauge::default(), a);
        assert_eq!(
            gauges,
            Gauges {
                low_stock_skus: 1,
                out_of_stock_skus: 0,
                inventory_value: 100_000,
                skus_active: 1
            }
        );
        let deleted = ItemRow {
            active: false,
            ..item
        };
        gauges.replace(a, SkuGauge::of(Some(&deleted), 4, false, false));
        assert_eq!(gauges, Gauges::default());
    }

    #[test]
    fn a_sku_is_flagged_when_any_location_has_the_alert_raised() {
        let alert = |kind, raised| Alert {
            key: StockKey {
                tenant: "t".into(),
                sku: "A".into(),
                location: "W1".into(),
            },
            kind,
            raised,
            transition: 1,
            available: 0,
            threshold: 5,
            target_level: 10,
            suggested_reorder_qty: 10,
            ts: 0,
        };
        let cleared = AlertPair {
            low_stock: Some(alert(AlertKind::LowStock, false)),
            out_of_stock: Some(alert(AlertKind::OutOfStock, false)),
        };
        let low = AlertPair {
            low_stock: Some(alert(AlertKind::LowStock, true)),
            out_of_stock: None,
        };
        assert_eq!(raised([]), (false, false));
        assert_eq!(raised([&cleared]), (false, false));
        assert_eq!(raised([&cleared, &low]), (true, false));
        let out = AlertPair {
            low_stock: None,
            out_of_stock: Some(alert(AlertKind::OutOfStock, true)),
        };
        assert_eq!(raised([&low, &cleared, &out]), (true, true));
    }
}
