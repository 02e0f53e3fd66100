//! The alerts as the publisher keeps them: the latest transition of each
//! kind per stock row ([`AlertPair`]), and the `low_stock` view's row
//! derived from it and the row's current stock ([`low_stock_row`]).

use crate::alerts::{Alert, AlertKind};
use crate::model::{EventTime, StockDelta};

/// The latest transition of each alert kind of one stock row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertPair {
    /// The low-stock alert.
    pub low_stock: Option<Alert>,
    /// The out-of-stock alert.
    pub out_of_stock: Option<Alert>,
}

impl AlertPair {
    /// The latest transition of `kind`.
    pub fn get(&self, kind: AlertKind) -> Option<&Alert> {
        match kind {
            AlertKind::LowStock => self.low_stock.as_ref(),
            AlertKind::OutOfStock => self.out_of_stock.as_ref(),
        }
    }

    /// Sets the latest transition of `alert.kind`.
    pub fn set(&mut self, alert: Alert) {
        match alert.kind {
            AlertKind::LowStock => self.low_stock = Some(alert),
            AlertKind::OutOfStock => self.out_of_stock = Some(alert),
        }
    }
}

/// A row of the `low_stock` view: a stock row whose low-stock alert is
/// active, with its current quantities (`None` when no such alert).
pub fn low_stock_row(alerts: &AlertPair, stock: Option<&StockDelta>) -> Option<LowStockRow> {
    let low = alerts.low_stock.as_ref().filter(|a| a.raised)?;
    let available = stock.map_or(low.available, |s| s.available());
    Some(LowStockRow {
        available,
        threshold: low.threshold,
        target_level: low.target_level,
        suggested_reorder_qty: low.target_level.saturating_sub(available).max(0),
        out_of_stock: alerts.out_of_stock.as_ref().is_some_and(|a| a.raised),
        since: low.ts,
    })
}

/// A row of the `low_stock` view (see [`low_stock_row`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowStockRow {
    /// Available now.
    pub available: i64,
    /// The threshold it is at or under.
    pub threshold: i64,
    /// Level a replenishment should bring it to.
    pub target_level: i64,
    /// `target_level - available`, at least 0.
    pub suggested_reorder_qty: i64,
    /// The out-of-stock alert is active too.
    pub out_of_stock: bool,
    /// Event time of the stock row when the alert was raised.
    pub since: EventTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StockKey;

    fn alert(kind: AlertKind, raised: bool, available: i64) -> Alert {
        Alert {
            key: StockKey {
                tenant: "acme".into(),
                sku: "A".into(),
                location: "W1".into(),
            },
            kind,
            raised,
            transition: 1,
            available,
            threshold: 5,
            target_level: 12,
            suggested_reorder_qty: 0,
            ts: 42,
        }
    }

    #[test]
    fn a_low_stock_row_exists_while_its_alert_is_raised_and_follows_the_stock() {
        let mut pair = AlertPair::default();
        assert_eq!(low_stock_row(&pair, None), None, "no alert");
        pair.set(alert(AlertKind::LowStock, true, 3));
        let now = StockDelta {
            on_hand: 4,
            reserved: 2,
            changes: 3,
            updated_at: 50,
        };
        assert_eq!(
            low_stock_row(&pair, Some(&now)),
            Some(LowStockRow {
                available: 2,
                threshold: 5,
                target_level: 12,
                suggested_reorder_qty: 10,
                out_of_stock: false,
                since: 42,
            }),
            "quantities now, the rule of the transition"
        );
        assert_eq!(low_stock_row(&pair, None).map(|r| r.available), Some(3));
        pair.set(alert(AlertKind::OutOfStock, true, 0));
        assert_eq!(
            low_stock_row(&pair, Some(&now)).map(|r| r.out_of_stock),
            Some(true)
        );
        assert!(pair.get(AlertKind::OutOfStock).is_some_and(|a| a.raised));
        pair.set(alert(AlertKind::LowStock, false, 20));
        assert_eq!(low_stock_row(&pair, Some(&now)), None, "cleared");
    }
}
