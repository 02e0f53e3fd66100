//! The `orders` view's rows: each order's state folded from its events
//! (`order.placed`, `order.confirmed`, `order.shipped`, `order.cancelled`),
//! the same whatever order its status events arrive in.

use crate::model::{Event, EventBody, EventTime, Money, Name, OrderLine, OrderStatus};

/// A row of the `orders` view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderRow {
    /// From `order.placed` (absent until it is seen; the first one seen wins).
    pub placed: Option<(Name, Vec<OrderLine>, Money, EventTime)>,
    /// Status events seen (an order may be confirmed, then shipped).
    pub confirmed: bool,
    /// Cancelled, with the reason (the first cancellation seen).
    pub cancelled: Option<Option<String>>,
    /// Shipped.
    pub shipped: bool,
    /// Newest event time of the order's events.
    pub updated_at: EventTime,
}

/// The `(tenant, order id)` an order event belongs to; `None` for other events.
pub fn order_key(event: &Event) -> Option<(Name, Name)> {
    match &event.body {
        EventBody::OrderPlaced { order_id, .. } | EventBody::OrderStatus { order_id, .. } => {
            Some((event.tenant.clone(), order_id.clone()))
        }
        _ => None,
    }
}

impl OrderRow {
    /// Folds one event of this order into the row (other events change nothing).
    pub fn apply(&mut self, event: &Event) {
        if !matches!(
            event.body,
            EventBody::OrderPlaced { .. } | EventBody::OrderStatus { .. }
        ) {
            return;
        }
        self.updated_at = self.updated_at.max(event.ts);
        match &event.body {
            EventBody::OrderPlaced {
                customer_id,
                lines,
                total,
                ..
            } => {
                self.placed
                    .get_or_insert_with(|| (customer_id.clone(), lines.clone(), *total, event.ts));
            }
            EventBody::OrderStatus { status, reason, .. } => match status {
                OrderStatus::Confirmed => self.confirmed = true,
                OrderStatus::Shipped => self.shipped = true,
                OrderStatus::Cancelled => {
                    self.cancelled.get_or_insert_with(|| reason.clone());
                }
            },
            _ => {}
        }
    }

    /// `pending` (placed, not decided), `confirmed`, `shipped` or `cancelled`
    /// (which wins whatever order the events arrived in).
    pub fn status(&self) -> &'static str {
        if self.cancelled.is_some() {
            "cancelled"
        } else if self.shipped {
            "shipped"
        } else if self.confirmed {
            "confirmed"
        } else {
            "pending"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(n: u64, ts: EventTime, body: EventBody) -> Event {
        Event {
            tenant: "acme".into(),
            id: format!("e{n}").into(),
            seq: n,
            ts,
            body,
        }
    }

    fn status(status: OrderStatus, reason: Option<&str>) -> EventBody {
        EventBody::OrderStatus {
            order_id: "o1".into(),
            status,
            reason: reason.map(str::to_owned),
        }
    }

    /// An order's events: one `order.placed`, then any status events.
    fn order_events() -> impl Strategy<Value = Vec<Event>> {
        let statuses = prop::collection::vec((0u8..3, 0i64..1_000, prop::bool::ANY), 0..6);
        (0i64..1_000, statuses).prop_map(|(placed_at, statuses)| {
            let mut events = vec![event(
                0,
                placed_at,
                EventBody::OrderPlaced {
                    order_id: "o1".into(),
                    customer_id: "c1".into(),
                    lines: Vec::new(),
                    total: Money::default(),
                },
            )];
            for (n, (kind, ts, with_reason)) in statuses.into_iter().enumerate() {
                let kind = [
                    OrderStatus::Confirmed,
                    OrderStatus::Shipped,
                    OrderStatus::Cancelled,
                ][kind as usize];
                // One reason per order: a cancellation's reason is the order's.
                events.push(event(
                    n as u64 + 1,
                    ts,
                    status(kind, with_reason.then_some("out of stock")),
                ));
            }
            events
        })
    }

    proptest! {
        /// The publisher applies an epoch's events in any order and many
        /// epochs at once: the row is the same as folding the log in order.
        #[test]
        fn any_arrival_order_gives_the_row_of_the_log_order(
            events in order_events(),
            seed in any::<u64>(),
        ) {
            let mut in_order = OrderRow::default();
            events.iter().for_each(|e| in_order.apply(e));
            let mut shuffled = events.clone();
            // A deterministic shuffle from the seed (Fisher-Yates over a xorshift).
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut row = OrderRow::default();
            shuffled.iter().for_each(|e| row.apply(e));
            // Of several cancellations the first seen gives the reason: compare the rest.
            if in_order.cancelled.is_some() {
                prop_assert!(row.cancelled.is_some());
                row.cancelled = in_order.cancelled.clone();
            }
            prop_assert_eq!(row, in_order);
        }
    }

    #[test]
    fn cancelled_wins_and_other_events_change_nothing() {
        let mut row = OrderRow::default();
        row.apply(&event(1, 5, status(OrderStatus::Shipped, None)));
        row.apply(&event(2, 3, status(OrderStatus::Cancelled, Some("late"))));
        row.apply(&event(3, 9, status(OrderStatus::Confirmed, None)));
        assert_eq!(row.status(), "cancelled");
        assert_eq!(row.cancelled, Some(Some("late".to_owned())));
        assert_eq!(row.updated_at, 9);
        let before = row.clone();
        row.apply(&event(
            4,
            99,
            EventBody::StockAdjusted {
                sku: "A".into(),
                location: "W1".into(),
                qty: 1,
                reason: "sale".into(),
            },
        ));
        assert_eq!(row, before, "not an order event");
        assert_eq!(OrderRow::default().status(), "pending");
    }
}
